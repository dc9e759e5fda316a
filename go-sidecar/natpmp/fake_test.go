package natpmp

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock advances only when the Mapper sleeps: a test runs hours of
// renewals in milliseconds and sees every wait the Mapper asked for.
type fakeClock struct {
	mu      sync.Mutex
	t       time.Time
	sleeps  []time.Duration
	onSleep func(n int) // after the n-th sleep (from 1) has advanced the time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.sleeps = append(c.sleeps, d)
	n, hook := len(c.sleeps), c.onSleep
	c.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return ctx.Err() == nil
}

func (c *fakeClock) slept() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// gotRequest is a request as the fake gateway received it.
type gotRequest struct {
	Request
	from netip.AddrPort
	at   time.Time // real time, for the retransmission schedule
	fake time.Time // the fake clock's
}

type fakeMapping struct {
	external uint16
	expires  time.Time
}

// fakeGateway is a NAT-PMP gateway on loopback that keeps its mappings by
// the fake clock, as miniupnpd keeps them by its own. By default it grants
// the suggested port (a fresh one for a suggestion of 0 or 1) and the
// lifetime asked for, and echoes the internal port (ProtonVPN echoes 0).
type fakeGateway struct {
	conn  *net.UDPConn
	clock interface{ Now() time.Time }

	// Behaviour, set before the first request.
	fixedPort   uint16                              // grant this port whatever was suggested (ProtonVPN)
	maxLifetime uint32                              // grant at most this
	move        bool                                // a renewal gets the next port up
	silent      bool                                // never answer
	refuse      func(n int, req Request) ResultCode // non-zero: refuse request number n (from 1)
	rebootAt    int                                 // lose every mapping, and the epoch, before request number rebootAt (from 1)
	answerFrom  int                                 // answer only from try number answerFrom (from 1) of each request
	// before runs before each answer is sent (to send spoofs first).
	before func(to netip.AddrPort, req Request)

	mu       sync.Mutex
	bootedAt time.Time
	mappings map[Protocol]fakeMapping
	nextPort uint16
	requests []gotRequest
	late     []gotRequest // renewals that came after their mapping had expired
	reboots  int
	repeats  map[string]int
	arrived  chan gotRequest
}

// startGateway sets the gateway's behaviour with setup (may be nil), then
// serves.
func startGateway(t *testing.T, clock interface{ Now() time.Time }, setup func(g *fakeGateway)) *fakeGateway {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{conn: conn, clock: clock, bootedAt: clock.Now(),
		mappings: map[Protocol]fakeMapping{}, nextPort: 40000, repeats: map[string]int{},
		arrived: make(chan gotRequest, 4096)}
	t.Cleanup(func() { conn.Close() })
	if setup != nil {
		setup(g)
	}
	go g.serve()
	return g
}

func (g *fakeGateway) addr() netip.AddrPort {
	return netip.MustParseAddrPort(g.conn.LocalAddr().String())
}

func (g *fakeGateway) serve() {
	buf := make([]byte, 64)
	for {
		n, from, err := g.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		req, err := ParseRequest(buf[:n])
		if err != nil {
			continue
		}
		resp, answer := g.handle(req, from)
		if !answer {
			continue
		}
		if g.before != nil {
			g.before(from, req)
		}
		g.conn.WriteToUDPAddrPort(resp.Marshal(), from)
	}
}

func (g *fakeGateway) handle(req Request, from netip.AddrPort) (Response, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.clock.Now()
	got := gotRequest{Request: req, from: from, at: time.Now(), fake: now}
	g.requests = append(g.requests, got)
	select {
	case g.arrived <- got:
	default: // nobody is waiting for this many
	}
	if g.rebootAt == len(g.requests) {
		g.bootedAt, g.reboots = now, g.reboots+1
		clear(g.mappings)
	}
	key := string(req.Marshal())
	g.repeats[key]++
	if g.silent || g.repeats[key] < g.answerFrom {
		return Response{}, false
	}
	g.repeats[key] = 0
	resp := Response{Op: req.Op, Epoch: uint32(now.Sub(g.bootedAt) / time.Second)}
	if g.refuse != nil {
		if resp.Result = g.refuse(len(g.requests), req); resp.Result != ResultSuccess {
			return resp, true
		}
	}
	if req.Op == OpExternalAddress {
		resp.ExternalAddress = netip.MustParseAddr("198.51.100.7")
		return resp, true
	}
	p := Protocol(req.Op)
	resp.InternalPort = req.InternalPort
	if req.Lifetime == 0 {
		delete(g.mappings, p)
		return resp, true
	}
	mp, held := g.mappings[p]
	if held && !now.Before(mp.expires) {
		g.late = append(g.late, got)
		held = false
	}
	switch {
	case held && g.move:
		mp.external++
	case held:
	case g.fixedPort != 0:
		mp.external = g.fixedPort
	case req.ExternalPort > 1:
		mp.external = req.ExternalPort
	default:
		mp.external, g.nextPort = g.nextPort, g.nextPort+1
	}
	lifetime := req.Lifetime
	if g.maxLifetime != 0 {
		lifetime = min(lifetime, g.maxLifetime)
	}
	mp.expires = now.Add(time.Duration(lifetime) * time.Second)
	g.mappings[p] = mp
	resp.ExternalPort, resp.Lifetime = mp.external, lifetime
	return resp, true
}

// holds is the external port of p's mapping if it is live now.
func (g *fakeGateway) holds(p Protocol) (uint16, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	mp, ok := g.mappings[p]
	if !ok || !g.clock.Now().Before(mp.expires) {
		return 0, false
	}
	return mp.external, true
}

func (g *fakeGateway) received() []gotRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]gotRequest(nil), g.requests...)
}

func (g *fakeGateway) lateRenewals() []gotRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]gotRequest(nil), g.late...)
}

// waitRequest waits (in real time, boundedly) for the next request.
func (g *fakeGateway) waitRequest(t *testing.T) gotRequest {
	t.Helper()
	select {
	case got := <-g.arrived:
		return got
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway got no request in 10 s")
		return gotRequest{}
	}
}
