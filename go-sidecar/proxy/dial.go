package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// DialTimeout bounds a connection attempt through the tunnel.
const DialTimeout = 30 * time.Second

// ErrNotAllowed refuses a destination the proxy never reaches: the
// namespace itself. Programs inside may serve on its loopback for
// themselves alone, and the proxy serves whoever reaches it on the host —
// with no password on a loopback proxy, every local user. SOCKS5 answers
// it with "connection not allowed by ruleset", the HTTP proxy with 403.
var ErrNotAllowed = errors.New("the proxy never reaches the namespace itself")

// checkDestination refuses the addresses that lead back into the
// namespace instead of through the tunnel: loopback (127.0.0.0/8, ::1, and
// IPv4-mapped loopback), the unspecified addresses and the rest of
// 0.0.0.0/8 (Linux connects 0.0.0.0 and :: to the local host), and
// multicast (a datagram to a group is looped back to the namespace's own
// sockets, IP_MULTICAST_LOOP).
func checkDestination(ip netip.Addr) error {
	ip = ip.Unmap()
	if ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() || (ip.Is4() && ip.As4()[0] == 0) {
		return fmt.Errorf("%w (%v)", ErrNotAllowed, ip)
	}
	return nil
}

// controlDestination is the dialer's Control: it sees the address each
// attempt is about to connect to, after names were resolved (a name that
// resolves to 127.0.0.1, like "localhost" through /etc/hosts, is refused
// here), before the socket connects.
func controlDestination(_, address string, _ syscall.RawConn) error {
	dst, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w (%q)", ErrNotAllowed, address)
	}
	return checkDestination(dst.Addr())
}

// dialer dials inside the namespace (where the sidecar lives: names
// resolve through the namespace's own /etc/resolv.conf, through the
// tunnel), never to the namespace itself.
type dialer struct {
	net.Dialer
}

func newDialer(r *net.Resolver) *dialer {
	return &dialer{net.Dialer{Timeout: DialTimeout, Resolver: r, Control: controlDestination}}
}

// dial connects to address (host:port, host a name or an address) until
// ctx is done; a closing server cancels ctx.
func (d *dialer) dial(ctx context.Context, address string) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// lookup resolves a name in a datagram to the first of its addresses the
// proxy may send to.
func (d *dialer) lookup(ctx context.Context, name string) (netip.Addr, error) {
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if err = checkDestination(a); err == nil {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, err
}
