package natpmp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// clients are the two ways to talk to a gateway: the connected socket of
// Dial (the kernel drops what comes from elsewhere) and an unconnected one
// (the Client must drop it itself).
var clients = map[string]func(t *testing.T, gateway netip.AddrPort, retry Retry) *Client{
	"dial": func(t *testing.T, gateway netip.AddrPort, retry Retry) *Client {
		c, err := Dial(gateway, retry)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	},
	"unconnected": func(t *testing.T, gateway netip.AddrPort, retry Retry) *Client {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		c := NewClient(conn, gateway, retry)
		t.Cleanup(func() { c.Close() })
		return c
	},
}

var quick = Retry{First: 200 * time.Millisecond, Tries: 3}

func TestClientMapsAndAcceptsTheEchoOfInternalPortZero(t *testing.T) {
	for name, newClient := range clients {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, newFakeClock(), func(g *fakeGateway) { g.fixedPort = 40000 })
			c := newClient(t, g.addr(), quick)
			resp, err := c.Map(context.Background(), UDP, 0, 1, 60)
			if err != nil {
				t.Fatal(err)
			}
			// ProtonVPN answers internal port 0 for a request of 0.
			if resp.InternalPort != 0 || resp.ExternalPort != 40000 || resp.Lifetime != 60 || resp.Op != OpMapUDP {
				t.Fatalf("%+v", resp)
			}
			resp, err = c.ExternalAddress(context.Background())
			if err != nil || resp.ExternalAddress != netip.MustParseAddr("198.51.100.7") {
				t.Fatalf("%+v, %v", resp, err)
			}
			got := g.received()
			if len(got) != 2 || got[0].Request != (Request{Op: OpMapUDP, ExternalPort: 1, Lifetime: 60}) {
				t.Fatalf("the gateway got %+v", got)
			}
		})
	}
}

func TestClientIgnoresWhatIsNotTheAnswer(t *testing.T) {
	for name, newClient := range clients {
		t.Run(name, func(t *testing.T) {
			otherPort, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer otherPort.Close()
			var otherAddr *net.UDPConn
			g := startGateway(t, newFakeClock(), func(g *fakeGateway) {
				g.fixedPort = 40000
				otherAddr, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: int(g.addr().Port())})
				if err != nil {
					t.Fatal(err)
				}
				// Sent before the answer, all with ports the answer does
				// not have: a client that takes any of them shows its port.
				g.before = func(to netip.AddrPort, req Request) {
					spoof := Response{Op: req.Op, InternalPort: req.InternalPort, ExternalPort: 2222, Lifetime: 60}
					otherPort.WriteToUDPAddrPort(spoof.Marshal(), to)
					spoof.ExternalPort = 3333
					otherAddr.WriteToUDPAddrPort(spoof.Marshal(), to)
					wrongOp := Response{Op: OpMapTCP, InternalPort: req.InternalPort, ExternalPort: 4444, Lifetime: 60}
					g.conn.WriteToUDPAddrPort(wrongOp.Marshal(), to)
					wrongInternal := Response{Op: req.Op, InternalPort: req.InternalPort + 1, ExternalPort: 5555, Lifetime: 60}
					g.conn.WriteToUDPAddrPort(wrongInternal.Marshal(), to)
					pcp := append([]byte{2, 128 | byte(req.Op)}, make([]byte, 22)...)
					g.conn.WriteToUDPAddrPort(pcp, to)
				}
			})
			defer otherAddr.Close()
			c := newClient(t, g.addr(), quick)
			resp, err := c.Map(context.Background(), UDP, 6881, 6881, 60)
			if err != nil {
				t.Fatal(err)
			}
			if resp.ExternalPort != 40000 || resp.InternalPort != 6881 {
				t.Fatalf("took %+v for the answer", resp)
			}
			if n := len(g.received()); n != 1 {
				t.Fatalf("%d requests: the spoofs made the client ask again", n)
			}
		})
	}
}

func TestClientRetransmitsOnTheSchedule(t *testing.T) {
	retry := Retry{First: 30 * time.Millisecond, Tries: 4}
	for name, newClient := range clients {
		t.Run(name, func(t *testing.T) {
			g := startGateway(t, newFakeClock(), func(g *fakeGateway) { g.silent = true })
			c := newClient(t, g.addr(), retry)
			start := time.Now()
			_, err := c.Map(context.Background(), TCP, 0, 1, 60)
			elapsed := time.Since(start)
			if !errors.Is(err, ErrNoAnswer) || !strings.Contains(err.Error(), "after 4 tries") {
				t.Fatalf("%v", err)
			}
			got := g.received()
			if len(got) != 4 {
				t.Fatalf("%d sends, want 4", len(got))
			}
			// Each wait is at least the schedule's: 30, 60, 120 ms between
			// sends, then 240 ms before giving up.
			for i := 1; i < len(got); i++ {
				if gap := got[i].at.Sub(got[i-1].at); gap < retry.wait(i-1) {
					t.Errorf("send %d came %v after the one before, before %v", i+1, gap, retry.wait(i-1))
				}
			}
			if elapsed < retry.Total() {
				t.Errorf("gave up after %v, before %v", elapsed, retry.Total())
			}
		})
	}
}

func TestClientTakesALateAnswer(t *testing.T) {
	g := startGateway(t, newFakeClock(), func(g *fakeGateway) { g.answerFrom = 3 })
	c := clients["dial"](t, g.addr(), Retry{First: 20 * time.Millisecond, Tries: 9})
	resp, err := c.Map(context.Background(), UDP, 0, 1, 60)
	if err != nil || resp.ExternalPort != 40000 {
		t.Fatalf("%+v, %v", resp, err)
	}
	if n := len(g.received()); n != 3 {
		t.Fatalf("%d sends, want 3 (the third was answered)", n)
	}
}

func TestClientReportsRefusals(t *testing.T) {
	for code := ResultCode(1); code <= 5; code++ {
		g := startGateway(t, newFakeClock(), func(g *fakeGateway) {
			g.refuse = func(int, Request) ResultCode { return code }
		})
		c := clients["dial"](t, g.addr(), quick)
		resp, err := c.Map(context.Background(), UDP, 0, 1, 60)
		var re *ResultError
		if !errors.As(err, &re) || re.Response.Result != code || !strings.Contains(err.Error(), code.String()) {
			t.Fatalf("code %d: %v", code, err)
		}
		if resp.Result != code {
			t.Fatalf("code %d: the response is not returned: %+v", code, resp)
		}
		if n := len(g.received()); n != 1 {
			t.Fatalf("code %d: asked %d times; a refusal is an answer", code, n)
		}
	}
}

func TestClientHearsAPortUnreachableAtOnce(t *testing.T) {
	// A socket kept on 127.0.0.1:P leaves 127.0.0.3:P to nobody: the
	// kernel answers a datagram there with ICMP port unreachable, as
	// ProtonVPN's gateway does for a key made without NAT-PMP.
	kept, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	port := netip.MustParseAddrPort(kept.LocalAddr().String()).Port()
	c := clients["dial"](t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), port), RFCRetry)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = c.Map(ctx, UDP, 0, 1, 60)
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("%v", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("took %v to see the refusal", elapsed)
	}
}

func TestClientStopsWithItsContext(t *testing.T) {
	g := startGateway(t, newFakeClock(), func(g *fakeGateway) { g.silent = true })
	c := clients["dial"](t, g.addr(), Retry{First: 30 * time.Second, Tries: 9})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Map(ctx, UDP, 0, 1, 60)
		done <- err
	}()
	g.waitRequest(t) // the client is waiting for the answer to its first send
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still waiting 5 s after its context was cancelled")
	}
	// A deadline ends it too, and without a further send.
	dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer dcancel()
	before := len(g.received())
	if _, err := c.Map(dctx, UDP, 0, 1, 60); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v", err)
	}
	if n := len(g.received()) - before; n != 1 {
		t.Fatalf("%d sends within the deadline", n)
	}
}

func TestDialWantsIPv4(t *testing.T) {
	if _, err := Dial(netip.MustParseAddrPort("[fd00::1]:5351"), RFCRetry); err == nil {
		t.Fatal("dialled an IPv6 gateway")
	}
}
