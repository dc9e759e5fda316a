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
// RFC 1928 allows), the first port that IP sends from. Datagrams from any
// other source are dropped.
type udpRelay struct {
	s    *SOCKS5
	conn *net.UDPConn

	mu       sync.Mutex
	bySource map[netip.AddrPort]*association
	pending  []*association // declared no port: waiting for a first datagram
	count    int
}

type association struct {
	relay    *udpRelay
	clientIP netip.Addr
	source   netip.AddrPort // zero while pending
	inside   *net.UDPConn
	queue    chan []byte
	done     chan struct{}
	once     sync.Once

	mu      sync.Mutex
	sent    map[netip.AddrPort]bool // destinations the client has sent to
	names   map[string]netip.Addr   // used by send only
	refused bool                    // a destination was not allowed (logged once); send only
}

func newUDPRelay(s *SOCKS5) *udpRelay {
	return &udpRelay{s: s, conn: s.Relay, bySource: make(map[netip.AddrPort]*association)}
}

// associate starts an association for clientIP; port is the one it declared
// (0: not known yet).
func (r *udpRelay) associate(clientIP netip.Addr, port uint16) (*association, error) {
	inside, err := r.s.ListenUDP()
	if err != nil {
		return nil, err
	}
	a := &association{
		relay: r, clientIP: clientIP, inside: inside,
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

// find returns the association a datagram from src belongs to, binding a
// pending one from the same IP if src is new.
func (r *udpRelay) find(src netip.AddrPort) *association {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a := r.bySource[src]; a != nil {
		return a
	}
	for i, a := range r.pending {
		if a.clientIP == src.Addr() {
			r.pending = append(r.pending[:i:i], r.pending[i+1:]...)
			a.source = src
			r.bySource[src] = a
			return a
		}
	}
	return nil
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
		if !known || !client.IsValid() {
			continue
		}
		out = appendDatagram(out[:0], Addr{IP: src.Addr(), Port: src.Port()}, buf[:n])
		a.relay.conn.WriteToUDPAddrPort(out, client)
	}
}
