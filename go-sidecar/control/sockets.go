package control

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"wg-wrap/go-sidecar/proxy"
)

// socksServer and httpServer give the proxies the server interface.
type socksServer struct {
	s *proxy.SOCKS5
	l *net.TCPListener
}

func (s socksServer) Serve() error { return s.s.Serve(s.l) }
func (s socksServer) Close() error { return s.s.Close() }

type httpServer struct {
	h *proxy.HTTP
	l *net.TCPListener
}

func (s httpServer) Serve() error { return s.h.Serve(s.l) }
func (s httpServer) Close() error { return s.h.Close() }

// tcpListener checks that f is a listening TCP socket and wraps a dup of it.
func tcpListener(f *os.File) (*net.TCPListener, error) {
	if err := checkSocket(f, unix.SOCK_STREAM, true); err != nil {
		return nil, err
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, errors.New("not a TCP listener")
	}
	return tl, nil
}

// udpSocket checks that f is a bound UDP socket and wraps a dup of it.
func udpSocket(f *os.File) (*net.UDPConn, error) {
	if err := checkSocket(f, unix.SOCK_DGRAM, false); err != nil {
		return nil, err
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	u, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("not a UDP socket")
	}
	if u.LocalAddr().(*net.UDPAddr).Port == 0 {
		u.Close()
		return nil, errors.New("the UDP socket is not bound")
	}
	return u, nil
}

func checkSocket(f *os.File, sotype int, listening bool) error {
	// Through SyscallConn, not Fd(): Fd would make the shared file
	// description blocking.
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var domain, typ, accepting int
	if cerr := rc.Control(func(fd uintptr) {
		domain, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		accepting, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	}); cerr != nil {
		return cerr
	}
	switch {
	case err != nil:
		return fmt.Errorf("not a socket: %w", err)
	case domain != unix.AF_INET && domain != unix.AF_INET6:
		return errors.New("not an IPv4 or IPv6 socket")
	case typ != sotype:
		return fmt.Errorf("socket type %d, want %d", typ, sotype)
	case listening && accepting != 1:
		return errors.New("the socket is not listening")
	}
	return nil
}
