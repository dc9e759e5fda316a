package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

const (
	// DefaultUDPIdle ends a UDP session after this long without a datagram
	// either way, like a NAT's UDP mapping.
	DefaultUDPIdle = 60 * time.Second
	// MaxUDPSessions bounds the sessions of one published UDP port: each
	// source address costs a socket inside, and sources are cheap to forge
	// on a port published beyond loopback. New sources beyond it are dropped.
	MaxUDPSessions = 4096
	// udpBatch datagrams are read (recvmmsg) and written (sendmmsg) per
	// system call. Buffers take the largest datagram; the kernel touches
	// only the bytes it writes, so short datagrams cost little memory.
	udpBatch    = 32
	maxDatagram = 65535
)

// batchConn is what ipv4.PacketConn and ipv6.PacketConn have in common:
// recvmmsg/sendmmsg. ipv4.Message and ipv6.Message are the same type.
type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

func newBatchConn(c *net.UDPConn) (batchConn, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var family int
	var serr error
	if err := raw.Control(func(fd uintptr) {
		family, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	if family == unix.AF_INET {
		return ipv4.NewPacketConn(c), nil
	}
	return ipv6.NewPacketConn(c), nil
}

func newMessages(n int) []ipv6.Message {
	msgs := make([]ipv6.Message, n)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, maxDatagram)}
	}
	return msgs
}

// UDP relays the datagrams arriving on a host socket to a port inside, in
// one session per source address: each session has its own socket inside,
// connected to the target, and the program's replies on it go back to that
// source. The program sees the datagrams come from 127.0.0.1 (or ::1) and a
// port that stands for the source for the session's lifetime.
type UDP struct {
	conn  *net.UDPConn // on the host
	batch batchConn
	port  uint16
	idle  time.Duration
	logf  func(string, ...any)
	group Group

	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
	dropped  bool // a source was dropped for MaxUDPSessions (logged once)
}

type udpSession struct {
	client *net.UDPAddr // as the host socket reports it (maybe v4-mapped)
	key    netip.AddrPort
	inside *net.UDPConn
	batch  batchConn
	last   time.Time // of the last datagram either way; guarded by UDP.mu
}

// NewUDP returns a forwarder from conn, a bound UDP socket on the host, to
// port inside; sessions end after idle without traffic (0: DefaultUDPIdle).
// It takes ownership of conn.
func NewUDP(conn *net.UDPConn, port uint16, idle time.Duration, logf func(string, ...any)) (*UDP, error) {
	batch, err := newBatchConn(conn)
	if err != nil {
		return nil, fmt.Errorf("published UDP port: %w", err)
	}
	if idle <= 0 {
		idle = DefaultUDPIdle
	}
	return &UDP{conn: conn, batch: batch, port: port, idle: idle, logf: logf,
		sessions: make(map[netip.AddrPort]*udpSession)}, nil
}

// Addr is the host address the forwarder receives on.
func (f *UDP) Addr() netip.AddrPort {
	return f.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// Sessions is the number of live sessions.
func (f *UDP) Sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

// Serve relays until Close; it returns nil then, or the error that stopped it.
func (f *UDP) Serve() error {
	msgs := newMessages(udpBatch)
	out := make(map[*udpSession][]ipv6.Message)
	for {
		for i := range msgs {
			msgs[i].Buffers[0] = msgs[i].Buffers[0][:maxDatagram]
		}
		n, err := f.batch.ReadBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		now := time.Now()
		for i := range msgs[:n] {
			addr, ok := msgs[i].Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			s := f.session(addr, now)
			if s == nil {
				continue
			}
			out[s] = append(out[s], ipv6.Message{Buffers: [][]byte{msgs[i].Buffers[0][:msgs[i].N]}})
		}
		for s, batch := range out {
			writeAll(s.batch, batch) // a program that is not listening: dropped
			delete(out, s)
		}
	}
}

// writeAll sends a batch, going on after a datagram the kernel refused.
func writeAll(b batchConn, msgs []ipv6.Message) {
	for len(msgs) > 0 {
		n, err := b.WriteBatch(msgs, 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			n = 1 // skip the datagram that failed (ECONNREFUSED from an earlier one, EMSGSIZE)
		}
		msgs = msgs[n:]
	}
}

// session finds or starts the session of a source; nil if it cannot.
func (f *UDP) session(client *net.UDPAddr, now time.Time) *udpSession {
	key := client.AddrPort()
	key = netip.AddrPortFrom(key.Addr().Unmap(), key.Port())
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.sessions[key]; s != nil {
		s.last = now
		return s
	}
	if len(f.sessions) >= MaxUDPSessions {
		if !f.dropped {
			f.dropped = true
			f.logf("published port %v/udp: %d sessions, dropping datagrams from new sources", f.Addr(), MaxUDPSessions)
		}
		return nil
	}
	target := Targets("udp", f.port)[0]
	inside, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		f.logf("published port %v/udp: %v", f.Addr(), err)
		return nil
	}
	batch, err := newBatchConn(inside)
	if err != nil {
		inside.Close()
		return nil
	}
	s := &udpSession{client: client, key: key, inside: inside, batch: batch, last: now}
	if !f.group.Add(inside) {
		inside.Close()
		return nil
	}
	if !f.group.Go(func() { f.replies(s) }) {
		f.group.Remove(inside)
		inside.Close()
		return nil
	}
	f.sessions[key] = s
	return s
}

// replies sends what the program answers on a session back to its source,
// until the session has been idle for f.idle.
func (f *UDP) replies(s *udpSession) {
	defer f.group.Remove(s.inside)
	defer s.inside.Close()
	msgs := newMessages(udpBatch / 4)
	deadline := time.Now().Add(f.idle)
	for {
		s.inside.SetReadDeadline(deadline)
		for i := range msgs {
			msgs[i].Buffers[0] = msgs[i].Buffers[0][:maxDatagram]
		}
		n, err := s.batch.ReadBatch(msgs, 0)
		now := time.Now()
		switch {
		case err == nil:
			for i := range msgs[:n] {
				msgs[i].Buffers[0] = msgs[i].Buffers[0][:msgs[i].N]
				msgs[i].Addr = s.client
			}
			writeAll(f.batch, msgs[:n])
			f.mu.Lock()
			s.last = now
			f.mu.Unlock()
			deadline = now.Add(f.idle)
		case errors.Is(err, syscall.ECONNREFUSED):
			// Nobody listens inside (yet): the datagram is lost, as it
			// would be on any network.
		case errors.Is(err, syscall.ETIMEDOUT) || isTimeout(err):
			f.mu.Lock()
			if last := s.last; now.Sub(last) < f.idle {
				f.mu.Unlock()
				deadline = last.Add(f.idle)
				continue
			}
			delete(f.sessions, s.key)
			f.mu.Unlock()
			return
		default: // closed with the forwarder
			f.mu.Lock()
			if f.sessions[s.key] == s {
				delete(f.sessions, s.key)
			}
			f.mu.Unlock()
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Close stops receiving and ends every session.
func (f *UDP) Close() error {
	err := f.conn.Close()
	f.group.Close()
	f.mu.Lock()
	clear(f.sessions)
	f.mu.Unlock()
	return err
}
