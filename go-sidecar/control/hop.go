package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The verbs a profile started `--via` this one asks for: its sockets and its
// endpoint names, made here, in this profile's network namespace, so that
// its encrypted packets travel inside this profile's tunnel (multi-hop).

// socketBuffer is what wg-wrap asks for the host socket (wg_wrap/hostnet.py).
const socketBuffer = 7 << 20

// ResolveTimeout bounds a name lookup for a profile started --via this one:
// wg-wrap waits a little longer (wg_wrap/hop.py).
const ResolveTimeout = 10 * time.Second

// udpSocket: a UDP socket in this namespace, dual-stack where it has IPv6,
// bound to port (0: any), handed back.
func (s *Server) udpSocket(req Request, _ []*os.File) (Reply, func(), error) {
	fd, err := boundUDP(int(req.Port))
	if err != nil {
		return Reply{}, nil, fmt.Errorf("udp-socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "udp-socket")
	sa, err := unix.Getsockname(fd)
	if err != nil {
		f.Close()
		return Reply{}, nil, fmt.Errorf("udp-socket: %w", err)
	}
	return Reply{Listening: []string{sockaddrString(sa)}, files: []*os.File{f}}, nil, nil
}

func boundUDP(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		if err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err == nil {
			err = unix.Bind(fd, &unix.SockaddrInet6{Port: port})
		}
		if err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EADDRINUSE) {
				return -1, err
			}
		}
	}
	if err != nil { // no IPv6 here: IPv4 alone
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return -1, err
		}
		if err = unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	for _, opt := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, socketBuffer) // a request: capped by rmem_max
	}
	return fd, nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return "?"
}

// resolve: the addresses of a name, asked as a program here would (this
// namespace's /etc/hosts and resolv.conf: the profile's DNS, through its
// tunnel). Family "ip4" for IPv4 only, else both.
func (s *Server) resolve(req Request, _ []*os.File) (Reply, func(), error) {
	if req.Host == "" {
		return Reply{}, nil, errors.New("resolve: no host")
	}
	network := "ip"
	if req.Family == "ip4" {
		network = "ip4"
	}
	ctx, cancel := context.WithTimeout(context.Background(), ResolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, network, req.Host)
	if err != nil {
		return Reply{}, nil, fmt.Errorf("resolve %s: %w", req.Host, err)
	}
	var r Reply
	for _, a := range addrs {
		r.Addresses = append(r.Addresses, a.Unmap().String())
	}
	return r, nil, nil
}
