package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/peer"
)

const (
	envUAPIFD    = "WG_WRAP_UAPI_FD"
	envControlFD = "WG_WRAP_CONTROL_FD"
)

// listenerFromEnv wraps the listening unix socket the parent handed over
// in the environment variable name: wg-wrap binds it on the host, in the
// host's network namespace (an abstract address: no file anywhere), so the
// profile's programs, in a network namespace of their own, can never reach
// it, whatever they see of the filesystem. sotype is unix.SOCK_STREAM (UAPI)
// or unix.SOCK_SEQPACKET (control).
func listenerFromEnv(name string, sotype int) (*net.UnixListener, error) {
	fd, err := fdFromEnv(name, true)
	if err != nil {
		return nil, err
	}
	os.Unsetenv(name)
	domain, derr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, terr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	accepting, aerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err := errors.Join(derr, terr, aerr); err != nil || domain != unix.AF_UNIX || typ != sotype || accepting != 1 {
		unix.Close(fd)
		return nil, fmt.Errorf("file descriptor %d is not a listening unix socket of type %d", fd, sotype)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close() // FileListener works on a dup
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, errors.New("not a unix listener")
	}
	return ul, nil
}

// serveUAPI answers each UAPI connection with wireguard-go's protocol
// handler until the listener fails; closing the listener ends it silently.
func serveUAPI(l *net.UnixListener, dev *device.Device, logf func(string, ...any), errs chan<- error) {
	for {
		conn, err := peer.AcceptOwn(l, logf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				errs <- err
			}
			return
		}
		go dev.IpcHandle(conn)
	}
}
