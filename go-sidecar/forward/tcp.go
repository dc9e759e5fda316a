package forward

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// DialTimeout bounds one connection attempt inside. The targets are local
// (loopback or the namespace's own addresses): an attempt that takes long
// is not going to succeed.
const DialTimeout = 5 * time.Second

// TCP relays the connections accepted on a host listener to a port inside.
//
// The program inside sees them come from the sidecar's end of the local
// connection: 127.0.0.1 (or ::1) and an ephemeral port, not the client's
// address on the host.
type TCP struct {
	ln    *net.TCPListener
	port  uint16
	logf  func(format string, args ...any)
	group Group
}

// NewTCP returns a forwarder from ln, a listening socket on the host, to
// port inside. It takes ownership of ln.
func NewTCP(ln *net.TCPListener, port uint16, logf func(string, ...any)) *TCP {
	return &TCP{ln: ln, port: port, logf: logf}
}

// Addr is the host address the forwarder listens on.
func (f *TCP) Addr() netip.AddrPort {
	return f.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Serve accepts connections until Close; it returns nil then, or the error
// that stopped it.
func (f *TCP) Serve() error {
	return f.group.Serve(f.ln, f.relay, f.logf)
}

// Close stops listening and ends every relayed connection.
func (f *TCP) Close() error {
	err := f.ln.Close()
	f.group.Close()
	return err
}

// Conns is the number of connections being relayed (each counted once per
// side).
func (f *TCP) Conns() int { return f.group.Len() }

func (f *TCP) relay(client *net.TCPConn) {
	defer f.group.Remove(client)
	// Cancelled by Close: a program inside that never answers must not hold
	// up unpublish or the sidecar's shutdown for DialTimeout.
	inside, err := DialInside(f.group.Context(), f.port)
	if err != nil {
		if f.group.Context().Err() == nil { // not merely closing
			f.logf("published port %v: %v", f.Addr(), err)
		}
		// A reset, not an orderly close: the client learns that nobody
		// answered instead of reading an empty reply.
		client.SetLinger(0)
		client.Close()
		return
	}
	if !f.group.Add(inside) {
		client.Close()
		inside.Close()
		return
	}
	defer f.group.Remove(inside)
	Pipe(client, inside)
}

// DialInside connects to TCP port inside the namespace: on 127.0.0.1 first
// (the common case, one attempt), then, if refused, wherever a program
// listens on that port (Targets).
func DialInside(ctx context.Context, port uint16) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: DialTimeout}
	first := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port)
	c, err := d.DialContext(ctx, "tcp", first.String())
	if err == nil {
		return c.(*net.TCPConn), nil
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return nil, err
	}
	for _, target := range Targets("tcp", port) {
		if target == first {
			continue
		}
		c, err2 := d.DialContext(ctx, "tcp", target.String())
		if err2 == nil {
			return c.(*net.TCPConn), nil
		}
		err = err2
	}
	return nil, err
}
