package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

const (
	// maxAssociations bounds UDP ASSOCIATE per proxy.
	maxAssociations = 1024
	// associationQueue datagrams wait for their association's sender; more
	// are dropped, as a congested link would.
	associationQueue = 128
	// maxDestinations is how many destinations one association remembers;
	// answers come only from those (see relayAnswers).
	maxDestinations = 1024
	// maxNames is the size of an association's name cache.
	maxNames      = 64
	lookupTimeout = 5 * time.Second
)

// udpRelay serves every association of one proxy over its one relay socket
// on the host. A datagram arriving there belongs to the association of its
// source address: the client's IP (that of its control connection) and the
// port it declared in UDP ASSOCIATE, or, if it declared none (port 0, which
// RFC 1928 allows), the first port that IP sends from — from a socket of
// the control connection's owner. Every datagram, either way, passes only
// while the socket at the client's address belongs to that owner (the
// kernel says who, see Owners): on 127.0.0.1 every local user has the
// client's IP, and any of them could otherwise send first and take the
// association over. Datagrams from any other source are dropped.
type udpRelay struct {
	s      *SOCKS5
	conn   *net.UDPConn
	owners ownerLookup

	mu       sync.Mutex
	bySource map[netip.AddrPort]*association
	pending  []*association // declared no port: waiting for a first datagram
	count    int
}

type association struct {
	relay    *udpRelay
	clientIP netip.Addr
	owner    Owner          // of the control connection's client socket
	relayAt  netip.AddrPort // the relay's address, as announced to the client
	source   netip.AddrPort // zero while pending; guarded by relay.mu
	inside   *net.UDPConn
	queue    chan []byte
	done     chan struct{}
	once     sync.Once

	mu       sync.Mutex
	sent     map[netip.AddrPort]bool // destinations the client has sent to
	names    map[string]netip.Addr   // used by send only
	refused  bool                    // a destination was not allowed (logged once); send only
	stranger bool                    // a socket of someone else was dropped (logged once)
}

func newUDPRelay(s *SOCKS5) *udpRelay {
	return &udpRelay{s: s, conn: s.Relay, owners: s.owners, bySource: make(map[netip.AddrPort]*association)}
}

// associate starts an association for the client of a control connection,
// which owner holds; relayAt is the relay's address as the client was told,
// port the one it declared (0: not known yet).
func (r *udpRelay) associate(client netip.AddrPort, owner Owner, relayAt netip.AddrPort, port uint16) (*association, error) {
	inside, err := r.s.ListenUDP()
	if err != nil {
		return nil, err
	}
	clientIP := client.Addr().Unmap()
	a := &association{
		relay: r, clientIP: clientIP, owner: owner, relayAt: relayAt, inside: inside,
		queue: make(chan []byte, associationQueue), done: make(chan struct{}),
		sent: make(map[netip.AddrPort]bool), names: make(map[string]netip.Addr),
	}
	r.mu.Lock()
	switch {
	case r.count >= maxAssociations:
		err = errors.New("too many UDP associations")
	case port != 0 && r.bySource[netip.AddrPortFrom(clientIP, port)] != nil:
		err = errors.New("that source address already has an association")
	}
	if err != nil {
		r.mu.Unlock()
		inside.Close()
		return nil, err
	}
	r.count++
	if port != 0 {
		a.source = netip.AddrPortFrom(clientIP, port)
		r.bySource[a.source] = a
	} else {
		r.pending = append(r.pending, a)
	}
	r.mu.Unlock()
	if !r.s.group.Add(inside) {
		a.close()
		return nil, net.ErrClosed
	}
	r.s.group.Go(a.send)
	r.s.group.Go(a.relayAnswers)
	return a, nil
}

// find returns the association a datagram from src belongs to: the one
// bound to src, if the socket at src is its owner's, or else a pending one
// from src's IP whose owner holds the socket at src, which is bound to src
// from then on.
func (r *udpRelay) find(src netip.AddrPort) *association {
	r.mu.Lock()
	a := r.bySource[src]
	var candidates []*association
	if a == nil {
		for _, p := range r.pending {
			if p.clientIP == src.Addr() {
				candidates = append(candidates, p)
			}
		}
	}
	r.mu.Unlock()
	if a != nil {
		if !a.owns(src) {
			return nil
		}
		return a
	}
	// The kernel is asked outside the lock; whoever owns src now is
	// checked again, under it, against each candidate.
	owners := map[netip.AddrPort]Owner{}
	for _, p := range candidates {
		if _, done := owners[p.relayAt]; done {
			continue
		}
		owner, err := r.owners.UDP(src, p.relayAt)
		if err != nil {
			r.s.Logf("socks5: UDP from %v: %v", src, err)
			return nil
		}
		owners[p.relayAt] = owner
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bySource[src] != nil {
		return nil // bound meanwhile: the next datagram is checked against it
	}
	for i, p := range r.pending {
		if owner, asked := owners[p.relayAt]; asked && p.clientIP == src.Addr() && owner == p.owner {
			r.pending = append(r.pending[:i:i], r.pending[i+1:]...)
			p.source = src
			r.bySource[src] = p
			return p
		}
	}
	for _, p := range candidates {
		p.dropStranger(src, owners[p.relayAt])
	}
	return nil
}

// owns reports whether the socket at addr, the client's address, belongs
// to the association's owner.
func (a *association) owns(addr netip.AddrPort) bool {
	owner, err := a.relay.owners.UDP(addr, a.relayAt)
	if err != nil {
		a.relay.s.Logf("socks5: UDP association of %v: %v", addr, err)
		return false
	}
	if owner != a.owner {
		a.dropStranger(addr, owner)
		return false
	}
	return true
}

// dropStranger tells, once per association, that a datagram from someone
// else's socket was dropped.
func (a *association) dropStranger(addr netip.AddrPort, owner Owner) {
	a.mu.Lock()
	said := a.stranger
	a.stranger = true
	a.mu.Unlock()
	if !said {
		a.relay.s.Logf("socks5: UDP association held by %v: the socket at %v is held by %v: datagram dropped", a.owner, addr, owner)
	}
}

// serve reads the relay socket until it is closed.
func (r *udpRelay) serve() {
	buf := make([]byte, 65535)
	for {
		n, src, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ECONNREFUSED left by an answer to a client that is gone
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		a := r.find(src)
		if a == nil {
			continue
		}
		select {
		case a.queue <- append([]byte(nil), buf[:n]...):
		default: // the association is behind: drop
		}
	}
}

// close ends the association: its sockets, its goroutines, its entry.
func (a *association) close() {
	a.once.Do(func() {
		r := a.relay
		r.mu.Lock()
		if a.source.IsValid() && r.bySource[a.source] == a {
			delete(r.bySource, a.source)
		}
		for i, p := range r.pending {
			if p == a {
				r.pending = append(r.pending[:i:i], r.pending[i+1:]...)
				break
			}
		}
		r.count--
		r.mu.Unlock()
		close(a.done)
		r.s.group.Remove(a.inside)
		a.inside.Close()
	})
}

// send passes the client's datagrams on to their destinations.
func (a *association) send() {
	for {
		var b []byte
		select {
		case <-a.done:
			return
		case b = <-a.queue:
		}
		dst, payload, err := parseDatagram(b)
		if err != nil {
			continue // fragments and malformed headers are dropped (RFC 1928)
		}
		ip := dst.IP
		if dst.Name != "" {
			ip, err = a.lookup(dst.Name)
		} else {
			err = checkDestination(ip)
		}
		if err != nil {
			if errors.Is(err, ErrNotAllowed) && !a.refused {
				a.refused = true // said once per association
				a.relay.s.Logf("socks5: UDP from %v: %v", a.clientIP, err)
			}
			continue
		}
		to := netip.AddrPortFrom(ip, dst.Port)
		a.mu.Lock()
		if len(a.sent) < maxDestinations {
			a.sent[to] = true
		}
		a.mu.Unlock()
		a.inside.WriteToUDPAddrPort(payload, to)
	}
}

func (a *association) lookup(name string) (netip.Addr, error) {
	if ip, ok := a.names[name]; ok {
		return ip, nil
	}
	ctx, cancel := context.WithTimeout(a.relay.s.group.Context(), lookupTimeout)
	defer cancel()
	ip, err := a.relay.s.dialer.lookup(ctx, name)
	if err != nil {
		return netip.Addr{}, err
	}
	if len(a.names) >= maxNames {
		clear(a.names)
	}
	a.names[name] = ip
	return ip, nil
}

// relayAnswers passes datagrams arriving inside back to the client, with
// the header naming their source. Only answers from destinations the client
// has sent to pass (a NAT's address and port restriction): the association
// is no open port for anyone on the tunnel's side.
func (a *association) relayAnswers() {
	buf := make([]byte, 65535)
	out := make([]byte, 0, udpHeaderMax+len(buf))
	for {
		n, src, err := a.inside.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ECONNREFUSED from an earlier datagram
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		a.mu.Lock()
		known := a.sent[src]
		a.mu.Unlock()
		a.relay.mu.Lock()
		client := a.source
		a.relay.mu.Unlock()
		if !known || !client.IsValid() || !a.owns(client) {
			continue
		}
		out = appendDatagram(out[:0], Addr{IP: src.Addr(), Port: src.Port()}, buf[:n])
		a.relay.conn.WriteToUDPAddrPort(out, client)
	}
}
