// Package fdbind implements wireguard-go's conn.Bind over one inherited,
// already-bound UDP socket.
//
// wg-wrap opens the WireGuard UDP socket on the host before it creates the
// network namespace the tunnel lives in; the socket keeps belonging to the
// host's network namespace whoever uses it later. The sidecar inside the
// namespace receives it as a file descriptor and hands it to wireguard-go
// through a Bind, which therefore can never open or rebind sockets itself.
package fdbind

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

// batchSize matches StdNetBind on Linux.
const batchSize = conn.IdealBatchSize

// Bind is a conn.Bind over an inherited UDP socket: AF_INET6 dual-stack
// (IPV6_V6ONLY=0) or AF_INET on hosts without IPv6.
type Bind struct {
	fd     int // the inherited socket, kept open across Close/Open
	family int // unix.AF_INET or unix.AF_INET6
	v6only bool
	port   uint16

	mu        sync.Mutex // guards the fields below
	conn      *net.UDPConn
	batch     batchConn // ipv4 or ipv6 PacketConn over conn
	txOffload bool      // UDP_SEGMENT usable; cleared on the first EIO/EINVAL
	rxOffload bool      // UDP_GRO enabled on the socket

	msgsPool sync.Pool
}

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common:
// recvmmsg/sendmmsg. ipv4.Message and ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

var _ conn.Bind = (*Bind)(nil)

// New returns a Bind that owns fd, a bound UDP socket. It enables UDP GRO
// on the socket when the kernel supports it.
func New(fd int) (*Bind, error) {
	return newBind(fd, true)
}

// newBind is New with the offloads optional, so tests can cover both paths.
func newBind(fd int, offload bool) (*Bind, error) {
	if fd < 0 {
		return nil, fmt.Errorf("fdbind: invalid file descriptor %d", fd)
	}
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("fdbind: fd %d is not a socket: %w", fd, err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("fdbind: fd %d: reading SO_PROTOCOL: %w", fd, err)
	}
	if sotype != unix.SOCK_DGRAM || proto != unix.IPPROTO_UDP {
		return nil, fmt.Errorf("fdbind: fd %d is not a UDP socket", fd)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("fdbind: fd %d: getsockname: %w", fd, err)
	}
	b := &Bind{fd: fd}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		b.family, b.port = unix.AF_INET, uint16(sa.Port)
	case *unix.SockaddrInet6:
		b.family, b.port = unix.AF_INET6, uint16(sa.Port)
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return nil, fmt.Errorf("fdbind: fd %d: reading IPV6_V6ONLY: %w", fd, err)
		}
		b.v6only = v6only != 0
	default:
		return nil, fmt.Errorf("fdbind: fd %d is neither an IPv4 nor an IPv6 socket", fd)
	}
	if b.port == 0 {
		return nil, fmt.Errorf("fdbind: fd %d is not bound to a port", fd)
	}
	// The sidecar execs nothing, but the socket must not leak if it ever does.
	unix.CloseOnExec(fd)
	if offload {
		b.txOffload, b.rxOffload = enableOffload(fd)
	}
	b.msgsPool.New = func() any {
		msgs := make([]ipv6.Message, batchSize)
		for i := range msgs {
			msgs[i].Buffers = make(net.Buffers, 1)
			msgs[i].OOB = make([]byte, 0, oobSize)
		}
		return &msgs
	}
	return b, nil
}

// enableOffload reports whether UDP_SEGMENT works on fd, and turns UDP_GRO on
// if the kernel can also report it back: before Linux 5.12 getsockopt(UDP_GRO)
// fails, and then we would not know whether reads are coalesced.
func enableOffload(fd int) (tx, rx bool) {
	_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	tx = err == nil
	if unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) != nil {
		return tx, false
	}
	on, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO)
	if err != nil || on != 1 {
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 0)
		return tx, false
	}
	return tx, true
}

// Port returns the port the inherited socket is bound to.
func (b *Bind) Port() uint16 { return b.port }

// Open starts using the socket. The requested port is ignored: the socket was
// bound on the host and cannot be rebound from here; the real port is
// returned. Each Open works on a fresh duplicate of the descriptor, so that
// Close can unblock readers (by closing that duplicate) and a later Open still
// has the socket: wireguard-go closes and reopens its Bind on every
// listen_port change and every device down/up.
func (b *Bind) Open(uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	dup, err := unix.FcntlInt(uintptr(b.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("fdbind: duplicating socket: %w", err)
	}
	f := os.NewFile(uintptr(dup), "wg-wrap-host-socket")
	pc, err := net.FilePacketConn(f) // dups again and registers with the poller
	f.Close()
	if err != nil {
		return nil, 0, fmt.Errorf("fdbind: using socket: %w", err)
	}
	udp, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, 0, fmt.Errorf("fdbind: socket is a %T, not UDP", pc)
	}
	var bc batchConn
	if b.family == unix.AF_INET6 {
		bc = ipv6.NewPacketConn(udp)
	} else {
		bc = ipv4.NewPacketConn(udp)
	}
	b.conn, b.batch = udp, bc
	return []conn.ReceiveFunc{b.makeReceiveFunc(bc, b.rxOffload)}, b.port, nil
}

// Close stops using the socket and unblocks the ReceiveFunc returned by Open,
// which then returns net.ErrClosed. The inherited descriptor stays open.
func (b *Bind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return nil
	}
	err := b.conn.Close()
	b.conn, b.batch = nil, nil
	return err
}

// Release closes the Bind and the inherited descriptor; the Bind is unusable
// afterwards. wireguard-go never calls it.
func (b *Bind) Release() error {
	err := b.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fd >= 0 {
		if cerr := unix.Close(b.fd); err == nil {
			err = cerr
		}
		b.fd = -1
	}
	return err
}

// SetMark does nothing: SO_MARK needs CAP_NET_ADMIN in the host's network
// namespace, which the sidecar does not have.
func (b *Bind) SetMark(uint32) error { return nil }

// BatchSize is the number of packets per receive and maximum per send.
func (b *Bind) BatchSize() int { return batchSize }

// ParseEndpoint parses "ip:port" or "[ip6]:port"; IPv4-mapped addresses are
// unmapped, so a peer has one identity however it was written.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return newEndpoint(ap), nil
}

func (b *Bind) getMessages() *[]ipv6.Message { return b.msgsPool.Get().(*[]ipv6.Message) }

func (b *Bind) putMessages(msgs *[]ipv6.Message) {
	for i := range *msgs {
		m := &(*msgs)[i]
		*m = ipv6.Message{Buffers: m.Buffers, OOB: m.OOB[:0]}
		m.Buffers[0] = nil
	}
	b.msgsPool.Put(msgs)
}

// makeReceiveFunc binds a receive function to the connection of one Open, so
// that a reader left over from before a Close fails instead of reading from
// the next Open's connection.
func (b *Bind) makeReceiveFunc(bc batchConn, rxOffload bool) conn.ReceiveFunc {
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		return b.receive(bc, rxOffload, bufs, sizes, eps)
	}
}

func (b *Bind) receive(bc batchConn, rxOffload bool, bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	msgs := b.getMessages()
	defer b.putMessages(msgs)
	count := min(len(bufs), len(*msgs))
	ms := (*msgs)[:count]
	for i := range ms {
		ms[i].Buffers[0] = bufs[i]
		ms[i].OOB = ms[i].OOB[:cap(ms[i].OOB)]
	}
	var n int
	var err error
	if rxOffload {
		// Coalesced reads expand into up to maxSegments packets each: read
		// into the tail, split towards the head.
		readAt := count - max(1, count/maxSegments)
		if _, err = bc.ReadBatch(ms[readAt:], 0); err != nil {
			return 0, err
		}
		if n, err = split(ms, readAt); err != nil {
			return 0, err
		}
	} else if n, err = bc.ReadBatch(ms, 0); err != nil {
		return 0, err
	}
	var last *Endpoint
	for i := range n {
		sizes[i] = ms[i].N
		if sizes[i] == 0 {
			continue
		}
		ua, ok := ms[i].Addr.(*net.UDPAddr)
		if !ok {
			sizes[i] = 0
			continue
		}
		ap := ua.AddrPort()
		// Packets split from one coalesced read share a source.
		if last == nil || last.dst != netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) {
			last = newEndpoint(ap)
		}
		eps[i] = last
	}
	return n, nil
}

// Send writes bufs to ep in as few syscalls as possible.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	bc, offload := b.batch, b.txOffload
	b.mu.Unlock()
	if bc == nil {
		return net.ErrClosed
	}
	addr, maxPayload, err := b.sockaddr(e.dst)
	if err != nil {
		return err
	}
	msgs := b.getMessages()
	defer b.putMessages(msgs)
	if offload {
		n := coalesce(bufs, *msgs, addr, maxPayload)
		err = writeAll(bc, (*msgs)[:n])
		if err == nil || !shouldDisableGSO(err) {
			return err
		}
		b.mu.Lock()
		b.txOffload = false
		b.mu.Unlock()
		// coalesce appended into spare capacity only: bufs still hold
		// their own packets, send them one by one.
		err = writeAll(bc, plainMessages(bufs, *msgs, addr))
		return conn.ErrUDPGSODisabled{RetryErr: err}
	}
	return writeAll(bc, plainMessages(bufs, *msgs, addr))
}

// sockaddr converts dst for this socket: IPv4 destinations on a dual-stack
// socket go out IPv4-mapped; an IPv6 destination on an IPv4 socket is an error.
func (b *Bind) sockaddr(dst netip.AddrPort) (*net.UDPAddr, int, error) {
	ip := dst.Addr().Unmap()
	ua := &net.UDPAddr{Port: int(dst.Port())}
	switch {
	case ip.Is4() && b.family == unix.AF_INET:
		a := ip.As4()
		ua.IP = a[:]
		return ua, maxIPv4Payload, nil
	case ip.Is4() && !b.v6only:
		a := ip.As16() // ::ffff:a.b.c.d
		ua.IP = a[:]
		return ua, maxIPv4Payload, nil
	case ip.Is6() && b.family == unix.AF_INET6:
		a := ip.As16()
		ua.IP, ua.Zone = a[:], ip.Zone()
		return ua, maxIPv6Payload, nil
	case ip.Is4():
		return nil, 0, fmt.Errorf("fdbind: cannot send to IPv4 endpoint %s: the host socket is IPv6-only", dst)
	default:
		return nil, 0, fmt.Errorf("fdbind: cannot send to IPv6 endpoint %s: the host socket is IPv4-only (no IPv6 on the host)", dst)
	}
}

// plainMessages fills msgs with one message per packet.
func plainMessages(bufs [][]byte, msgs []ipv6.Message, addr net.Addr) []ipv6.Message {
	for i, buf := range bufs {
		msgs[i].Buffers[0] = buf
		msgs[i].OOB = msgs[i].OOB[:0]
		msgs[i].Addr = addr
	}
	return msgs[:len(bufs)]
}

// writeAll sends msgs, continuing after partial sendmmsg results. Each round
// sends at least one message or fails, so it ends within len(msgs) rounds.
func writeAll(bc batchConn, msgs []ipv6.Message) error {
	for len(msgs) > 0 {
		n, err := bc.WriteBatch(msgs, 0)
		if err != nil {
			return err
		}
		if n <= 0 {
			return errors.New("fdbind: sendmmsg sent nothing")
		}
		msgs = msgs[n:]
	}
	return nil
}
