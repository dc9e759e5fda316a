package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Owner is who holds a socket of the host: a user, or nobody on this host
// (the address is another machine's, or another network namespace's).
type Owner struct {
	Local bool
	UID   uint32 // when Local
}

func (o Owner) String() string {
	if !o.Local {
		return "nobody on this host"
	}
	return fmt.Sprintf("uid %d", o.UID)
}

// ownerLookup is what the UDP relay asks; *Owners answers it.
type ownerLookup interface {
	// TCP is the owner of the TCP socket whose own address is local and
	// whose peer is remote.
	TCP(local, remote netip.AddrPort) (Owner, error)
	// UDP is the owner of the UDP socket that receives what from sends to
	// at: the socket a datagram from at came from, and where answers to at go.
	UDP(at, from netip.AddrPort) (Owner, error)
}

// Owners asks the kernel who owns a socket of the host, by its exact
// addresses (inet_diag over NETLINK_SOCK_DIAG: what `ss` uses). The
// netlink socket must have been opened on the host, like the proxy's other
// host sockets: it answers about the sockets of the network namespace it
// was created in, and gives uids as its creator's user namespace sees them.
// Any user may ask.
type Owners struct {
	file *os.File
	conn syscall.RawConn

	mu  sync.Mutex
	seq uint32
	buf []byte
}

const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagReqSize  = 56 // struct inet_diag_req_v2
	inetDiagUIDAt    = 64 // idiag_uid in struct inet_diag_msg
	ownerTimeout     = time.Second
)

// NewOwners checks that f is a NETLINK_SOCK_DIAG socket and works on a
// duplicate of it (f stays the caller's to close).
func NewOwners(f *os.File) (*Owners, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var domain, protocol, dup int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		if domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN); serr != nil {
			return
		}
		if protocol, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); serr != nil {
			return
		}
		dup, serr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, fmt.Errorf("not a socket: %w", serr)
	}
	if domain != unix.AF_NETLINK || protocol != unix.NETLINK_SOCK_DIAG {
		unix.Close(dup)
		return nil, errors.New("not a NETLINK_SOCK_DIAG socket")
	}
	// Non-blocking, so that reads wait in Go's poller and honour deadlines.
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, err
	}
	file := os.NewFile(uintptr(dup), "sock_diag")
	conn, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, err
	}
	return &Owners{file: file, conn: conn, buf: make([]byte, 8192)}, nil
}

// Close closes the netlink socket; a lookup in progress fails.
func (o *Owners) Close() error { return o.file.Close() }

func (o *Owners) TCP(local, remote netip.AddrPort) (Owner, error) {
	// inet_diag finds the TCP socket with address src and peer dst.
	return o.lookup(unix.IPPROTO_TCP, local, remote)
}

func (o *Owners) UDP(at, from netip.AddrPort) (Owner, error) {
	// For UDP, inet_diag finds the socket that would receive a datagram
	// from src to dst ("swapped for historical reasons", udp_diag.c).
	return o.lookup(unix.IPPROTO_UDP, from, at)
}

// lookup asks for the one socket of protocol with src and dst as its
// inet_diag_sockid.
func (o *Owners) lookup(protocol byte, src, dst netip.AddrPort) (Owner, error) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	family := byte(unix.AF_INET)
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		family = unix.AF_INET6
		// one side IPv4, the other IPv6: both as IPv6 (IPv4-mapped)
		src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
		dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seq++
	if err := o.send(o.request(family, protocol, src, dst)); err != nil {
		return Owner{}, fmt.Errorf("asking the kernel who owns %v: %w", dst, err)
	}
	return o.receive()
}

// request is struct nlmsghdr, then struct inet_diag_req_v2.
func (o *Owners) request(family, protocol byte, src, dst netip.AddrPort) []byte {
	b := binary.NativeEndian.AppendUint32(nil, unix.NLMSG_HDRLEN+inetDiagReqSize)
	b = binary.NativeEndian.AppendUint16(b, sockDiagByFamily)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST)
	b = binary.NativeEndian.AppendUint32(b, o.seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, family, protocol, 0, 0)               // family, protocol, ext, pad
	b = binary.NativeEndian.AppendUint32(b, ^uint32(0)) // every state
	b = binary.BigEndian.AppendUint16(b, src.Port())
	b = binary.BigEndian.AppendUint16(b, dst.Port())
	for _, a := range []netip.Addr{src.Addr(), dst.Addr()} {
		var raw [16]byte
		copy(raw[:], a.AsSlice()) // IPv4: the first 4 bytes
		b = append(b, raw[:]...)
	}
	b = binary.NativeEndian.AppendUint32(b, 0)          // any interface
	b = binary.NativeEndian.AppendUint32(b, ^uint32(0)) // INET_DIAG_NOCOOKIE
	return binary.NativeEndian.AppendUint32(b, ^uint32(0))
}

func (o *Owners) send(msg []byte) error {
	var serr error
	if err := o.conn.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	}); err != nil {
		return err
	}
	return serr
}

// receive reads up to the answer to the current request: the socket's
// inet_diag_msg, or an error; ENOENT means no such socket on the host.
func (o *Owners) receive() (Owner, error) {
	o.file.SetReadDeadline(time.Now().Add(ownerTimeout))
	for {
		var n int
		var rerr error
		if err := o.conn.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), o.buf, 0)
			return rerr != unix.EAGAIN
		}); err != nil {
			return Owner{}, fmt.Errorf("the kernel's answer: %w", err)
		}
		if rerr != nil {
			return Owner{}, fmt.Errorf("the kernel's answer: %w", rerr)
		}
		for msg := o.buf[:n]; len(msg) >= unix.NLMSG_HDRLEN; {
			size := int(binary.NativeEndian.Uint32(msg[0:4]))
			if size < unix.NLMSG_HDRLEN || size > len(msg) {
				break
			}
			typ, seq, body := binary.NativeEndian.Uint16(msg[4:6]), binary.NativeEndian.Uint32(msg[8:12]), msg[unix.NLMSG_HDRLEN:size]
			msg = msg[min(len(msg), (size+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
			if seq != o.seq {
				continue // the late answer to a request that timed out
			}
			switch {
			case typ == unix.NLMSG_ERROR && len(body) >= 4:
				errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(body[:4])))
				if errno == unix.ENOENT {
					return Owner{}, nil
				}
				return Owner{}, fmt.Errorf("the kernel's answer: %w", errno)
			case typ == sockDiagByFamily && len(body) >= inetDiagUIDAt+4:
				return Owner{Local: true, UID: binary.NativeEndian.Uint32(body[inetDiagUIDAt:])}, nil
			}
			return Owner{}, fmt.Errorf("unexpected answer of type %d", typ)
		}
	}
}
