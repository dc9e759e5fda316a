package natpmp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// answered is the retransmission schedule for gateways that answer: long
// enough that loopback never needs a second try, so each request the
// gateway logs is one the Mapper meant to send.
var answered = Retry{First: time.Second, Tries: 3}

type harness struct {
	t     *testing.T
	clock *fakeClock
	g     *fakeGateway
	m     *Mapper

	mu      sync.Mutex
	changes []Status
	logs    []string
}

func newHarness(t *testing.T, cfg Config, retry Retry, setup func(g *fakeGateway)) *harness {
	t.Helper()
	h := &harness{t: t, clock: newFakeClock()}
	h.g = startGateway(t, h.clock, setup)
	c, err := Dial(h.g.addr(), retry)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cfg.OnChange = func(st Status) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.changes = append(h.changes, st)
	}
	cfg.Logf = func(format string, args ...any) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.logs = append(h.logs, fmt.Sprintf(format, args...))
	}
	h.m = NewMapper(c, cfg)
	h.m.clock = h.clock
	return h
}

// run runs the Mapper until its sleep number n, calling check after each
// sleep (on the Mapper's goroutine, with the fake time at its wake-up).
func (h *harness) run(n int, check func(i int)) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.clock.onSleep = func(i int) {
		if check != nil {
			check(i)
		}
		if i >= n {
			cancel()
		}
	}
	done := make(chan struct{})
	go func() {
		h.m.Run(ctx)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		h.t.Fatal("Run still running 30 s on")
	}
}

// checkHeld is the invariant of a working Mapper: whatever its status shows
// as mapped, the gateway holds, under that port, at the time the Mapper
// wakes up to renew it.
func (h *harness) checkHeld(i int) {
	st := h.m.Status()
	if st.State != "mapped" {
		return
	}
	for _, ms := range st.Mappings {
		if ext, ok := h.g.holds(ms.Protocol); !ok || ext != ms.ExternalPort {
			h.t.Errorf("wake-up %d: the status shows %v %d, the gateway holds %d (%v)", i, ms.Protocol, ms.ExternalPort, ext, ok)
		}
	}
}

// runCapturing is run, keeping the status at each wake-up (after Run
// returns, the status says "stopped").
func (h *harness) runCapturing(n int, check func(i int)) []Status {
	var states []Status
	h.run(n, func(i int) {
		if check != nil {
			check(i)
		}
		states = append(states, h.m.Status())
	})
	return states
}

func (h *harness) changedTo() []uint16 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ports []uint16
	for _, st := range h.changes {
		ports = append(ports, st.Port)
	}
	return ports
}

func requests(got []gotRequest) []Request {
	var out []Request
	for _, r := range got {
		out = append(out, r.Request)
	}
	return out
}

func seconds(s ...int) []time.Duration {
	var out []time.Duration
	for _, x := range s {
		out = append(out, time.Duration(x)*time.Second)
	}
	return out
}

func udp(internal, external uint16, lifetime uint32) Request {
	return Request{Op: OpMapUDP, InternalPort: internal, ExternalPort: external, Lifetime: lifetime}
}

func tcp(internal, external uint16, lifetime uint32) Request {
	return Request{Op: OpMapTCP, InternalPort: internal, ExternalPort: external, Lifetime: lifetime}
}

var address = Request{Op: OpExternalAddress}

func TestMapperAsksLikeProtonVPNsClients(t *testing.T) {
	h := newHarness(t, Config{}, answered, func(g *fakeGateway) { g.fixedPort = 40000 })
	var first Status
	h.run(3, func(i int) {
		h.checkHeld(i)
		if i == 1 {
			first = h.m.Status()
		}
	})
	if first.State != "mapped" || first.Port != 40000 || first.ExternalPort != 40000 ||
		!slices.Equal(first.Protocols, []Protocol{UDP, TCP}) || first.Lifetime != 60 ||
		first.ExternalAddress != "198.51.100.7" || first.LastError != "" || first.Gateway != h.g.addr().String() {
		t.Errorf("status %+v", first)
	}
	want := []Request{
		udp(0, 1, 60), tcp(0, 40000, 60), address, // TCP asks for the port UDP got
		udp(0, 40000, 60), tcp(0, 40000, 60), // renewals ask for the port held
		udp(0, 40000, 60), tcp(0, 40000, 60),
		udp(0, 0, 0), tcp(0, 0, 0), // deleted on stop
	}
	if got := requests(h.g.received()); !slices.Equal(got, want) {
		t.Errorf("requests\n%v\nwant\n%v", got, want)
	}
	if got := h.clock.slept(); !slices.Equal(got, seconds(30, 30, 30)) {
		t.Errorf("slept %v, want half the lifetime each time", got)
	}
	if got := h.changedTo(); !slices.Equal(got, []uint16{40000}) {
		t.Errorf("OnChange got %v", got)
	}
	if st := h.m.Status(); st.State != "stopped" || st.Port != 40000 || len(st.Protocols) != 0 {
		t.Errorf("after Run: %+v", st)
	}
}

func TestMapperWithAnInternalPortListensThere(t *testing.T) {
	// miniupnpd and RFC gateways forward an external port of their choice
	// to the internal port asked for: the program listens on that one.
	h := newHarness(t, Config{InternalPort: 6881, NoRelease: true}, answered,
		func(g *fakeGateway) { g.fixedPort = 50000 })
	states := h.runCapturing(2, h.checkHeld)
	st := states[len(states)-1]
	if st.Port != 6881 || st.ExternalPort != 50000 {
		t.Errorf("status %+v", st)
	}
	want := []Request{udp(6881, 6881, 60), tcp(6881, 50000, 60), address,
		udp(6881, 50000, 60), tcp(6881, 50000, 60)} // and nothing deleted
	if got := requests(h.g.received()); !slices.Equal(got, want) {
		t.Errorf("requests %v, want %v", got, want)
	}
	if got := h.changedTo(); !slices.Equal(got, []uint16{6881}) {
		t.Errorf("OnChange got %v", got)
	}
}

func TestMapperRenewsBeforeAShortLifetimeEnds(t *testing.T) {
	// The gateway grants 4 s of the 60 asked: renewing on the 60 would
	// lose the mapping between renewals.
	h := newHarness(t, Config{}, answered, func(g *fakeGateway) { g.maxLifetime = 4 })
	h.run(10, h.checkHeld)
	if got := h.clock.slept(); !slices.Equal(got, seconds(2, 2, 2, 2, 2, 2, 2, 2, 2, 2)) {
		t.Errorf("slept %v", got)
	}
	if late := h.g.lateRenewals(); len(late) != 0 {
		t.Errorf("renewed after expiry: %v", late)
	}
	if got := h.changedTo(); !slices.Equal(got, []uint16{40000}) {
		t.Errorf("OnChange got %v", got)
	}
	if st := h.m.Status(); st.GatewayRestarts != 0 {
		t.Errorf("a gateway whose epoch kept time was taken for restarted %d times", st.GatewayRestarts)
	}
}

func TestMapperFollowsAPortThatMovesOnRenewal(t *testing.T) {
	h := newHarness(t, Config{}, answered, func(g *fakeGateway) { g.move = true })
	var shown []uint16
	h.run(4, func(i int) {
		h.checkHeld(i)
		shown = append(shown, h.m.Status().Port)
	})
	want := []uint16{40000, 40001, 40002, 40003}
	if !slices.Equal(shown, want) {
		t.Errorf("status showed %v, want %v", shown, want)
	}
	if got := h.changedTo(); !slices.Equal(got, want) {
		t.Errorf("OnChange got %v, want %v", got, want)
	}
}

func TestMapperMapsAgainWhenTheGatewayRestarts(t *testing.T) {
	for _, c := range []struct {
		name     string
		rebootAt int
		want     []Request
	}{
		// Before the first renewal: the renewal maps again anyway; the
		// address is asked again (it may have changed too).
		{"between renewals", 4, []Request{
			udp(0, 1, 60), tcp(0, 40000, 60), address,
			udp(0, 40000, 60), tcp(0, 40000, 60), address,
		}},
		// Between UDP's renewal and TCP's: UDP's fresh mapping is lost as
		// well, and only the epoch in TCP's answer says so.
		{"part-way", 5, []Request{
			udp(0, 1, 60), tcp(0, 40000, 60), address,
			udp(0, 40000, 60), tcp(0, 40000, 60),
			udp(0, 40000, 60), tcp(0, 40000, 60), address,
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, Config{NoRelease: true}, answered, func(g *fakeGateway) { g.rebootAt = c.rebootAt })
			states := h.runCapturing(2, h.checkHeld)
			if got := requests(h.g.received()); !slices.Equal(got, c.want) {
				t.Errorf("requests\n%v\nwant\n%v", got, c.want)
			}
			st := states[len(states)-1]
			if st.GatewayRestarts != 1 || st.Port != 40000 {
				t.Errorf("status %+v", st)
			}
			if got := h.changedTo(); !slices.Equal(got, []uint16{40000}) {
				t.Errorf("OnChange got %v: the port came back the same", got)
			}
		})
	}
}

func TestMapperKeepsAskingAGatewayThatNeverAnswers(t *testing.T) {
	retry := Retry{First: 2 * time.Millisecond, Tries: 3}
	h := newHarness(t, Config{}, retry, func(g *fakeGateway) { g.silent = true })
	states := h.runCapturing(9, nil)
	// Backoff doubles to a bound and stays there: never a busy loop, never
	// giving up.
	if got := h.clock.slept(); !slices.Equal(got, seconds(1, 2, 4, 8, 16, 32, 60, 60, 60)) {
		t.Errorf("slept %v", got)
	}
	for i, st := range states {
		if st.State != "requesting" || st.Failures != i+1 || !strings.Contains(st.LastError, "no answer") ||
			!strings.Contains(st.Hint, HintNoPortForwarding) || st.NextAttempt == "" || st.Port != 0 {
			t.Errorf("after attempt %d: %+v", i+1, st)
		}
	}
	// Each attempt: both protocols, each sent Tries times; nothing to delete.
	if n := len(h.g.received()); n != 9*2*3 {
		t.Errorf("%d requests, want %d", n, 9*2*3)
	}
	if got := h.changedTo(); len(got) != 0 {
		t.Errorf("OnChange got %v", got)
	}
}

func TestMapperReportsEachRefusal(t *testing.T) {
	hints := map[ResultCode]string{
		ResultUnsupportedVersion: HintNoPortForwarding,
		ResultNotAuthorized:      HintNoPortForwarding,
		ResultNetworkFailure:     "no external address yet",
		ResultOutOfResources:     "no port to give",
		ResultUnsupportedOpcode:  HintNoPortForwarding,
	}
	for code, hint := range hints {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			h := newHarness(t, Config{}, answered, func(g *fakeGateway) {
				g.refuse = func(int, Request) ResultCode { return code }
			})
			states := h.runCapturing(3, nil)
			st := states[len(states)-1]
			want := "udp mapping request: " + code.String() + "; tcp mapping request: " + code.String()
			if st.LastError != want || !strings.Contains(st.Hint, hint) || st.Failures != 3 || st.State != "requesting" {
				t.Errorf("status %+v", st)
			}
			if got := h.clock.slept(); !slices.Equal(got, seconds(1, 2, 4)) {
				t.Errorf("slept %v", got)
			}
		})
	}
}

func TestMapperRecoversFromRefusals(t *testing.T) {
	h := newHarness(t, Config{}, answered, func(g *fakeGateway) {
		g.refuse = func(n int, _ Request) ResultCode {
			if n <= 4 { // two attempts
				return ResultNetworkFailure
			}
			return ResultSuccess
		}
	})
	states := h.runCapturing(4, h.checkHeld)
	if got := h.clock.slept(); !slices.Equal(got, seconds(1, 2, 30, 30)) {
		t.Errorf("slept %v", got)
	}
	if st := states[1]; st.Failures != 2 || st.LastError == "" {
		t.Errorf("while refused: %+v", st)
	}
	if st := states[2]; st.State != "mapped" || st.Failures != 0 || st.LastError != "" || st.Hint != "" || st.Port != 40000 {
		t.Errorf("once answered: %+v", st)
	}
}

func TestMapperKeepsTheProtocolThatWorks(t *testing.T) {
	// A gateway that maps TCP only: TCP's mapping gives the port and is
	// renewed in time while UDP is asked for again with backoff.
	h := newHarness(t, Config{NoRelease: true}, answered, func(g *fakeGateway) {
		g.maxLifetime = 6
		g.refuse = func(_ int, req Request) ResultCode {
			if req.Op == OpMapUDP {
				return ResultUnsupportedOpcode
			}
			return ResultSuccess
		}
	})
	states := h.runCapturing(4, h.checkHeld)
	st := states[len(states)-1]
	if st.State != "mapped" || !slices.Equal(st.Protocols, []Protocol{TCP}) || st.Port != 40000 ||
		!strings.Contains(st.LastError, "udp mapping request: unsupported opcode") {
		t.Errorf("status %+v", st)
	}
	// min(backoff, half of TCP's 6 s)
	if got := h.clock.slept(); !slices.Equal(got, seconds(1, 2, 3, 3)) {
		t.Errorf("slept %v", got)
	}
	if late := h.g.lateRenewals(); len(late) != 0 {
		t.Errorf("renewed after expiry: %v", late)
	}
}

func TestMapperSaysWhenNothingListens(t *testing.T) {
	kept, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	port := netip.MustParseAddrPort(kept.LocalAddr().String()).Port()
	c, err := Dial(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), port), RFCRetry)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	clock := newFakeClock()
	m := NewMapper(c, Config{})
	m.clock = clock
	ctx, cancel := context.WithCancel(context.Background())
	var st Status
	clock.onSleep = func(int) {
		st = m.Status()
		cancel()
	}
	start := time.Now()
	m.Run(ctx)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("took %v", elapsed)
	}
	if !strings.Contains(st.LastError, "connection refused") || st.Hint != HintNoPortForwarding {
		t.Errorf("status %+v", st)
	}
}

func TestMapperOnTheRealClock(t *testing.T) {
	g := startGateway(t, realClock{}, func(g *fakeGateway) { g.maxLifetime = 2 })
	c, err := Dial(g.addr(), answered)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := NewMapper(c, Config{ReleaseTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Run(ctx)
		close(done)
	}()
	for udpSeen := 0; udpSeen < 3; { // the mapping and two renewals, a second apart
		if g.waitRequest(t).Op == OpMapUDP {
			udpSeen++
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return 5 s after its context ended")
	}
	if late := g.lateRenewals(); len(late) != 0 {
		t.Errorf("renewed after expiry: %v", late)
	}
	if _, held := g.holds(UDP); held {
		t.Error("the UDP mapping was not deleted on stop")
	}
}

func TestStatusAsJSON(t *testing.T) {
	h := newHarness(t, Config{NoRelease: true}, answered, func(g *fakeGateway) { g.fixedPort = 40000 })
	var text []byte
	h.run(1, func(int) {
		var err error
		if text, err = json.Marshal(h.m.Status()); err != nil {
			t.Error(err)
		}
	})
	var got map[string]any
	if err := json.Unmarshal(text, &got); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"state": "mapped", "port": 40000.0, "external_port": 40000.0, "lifetime": 60.0,
		"external_address": "198.51.100.7", "protocols": []any{"udp", "tcp"},
	} {
		if fmt.Sprint(got[key]) != fmt.Sprint(want) {
			t.Errorf("%s: %v, want %v (in %s)", key, got[key], want, text)
		}
	}
	for _, key := range []string{"renewed_at", "next_attempt", "gateway", "mappings"} {
		if _, ok := got[key]; !ok {
			t.Errorf("no %s in %s", key, text)
		}
	}
	if _, ok := got["last_error"]; ok {
		t.Errorf("last_error shown with no error: %s", text)
	}
}
