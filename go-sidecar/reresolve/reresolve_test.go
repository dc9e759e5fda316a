package reresolve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const key = "e0a5c3d2b1f0e0a5c3d2b1f0e0a5c3d2b1f0e0a5c3d2b1f0e0a5c3d2b1f0e0a5"

// fakeDevice is one peer as UAPI shows it. Like wireguard-go, removing the
// peer and adding it again (what a move does) makes a new peer: its byte
// counters and handshake time start from zero.
type fakeDevice struct {
	endpoint  netip.AddrPort
	handshake time.Time
	tx, rx    uint64
	sets      []string
}

func (d *fakeDevice) IpcGet() (string, error) {
	var sec, nsec int64
	if !d.handshake.IsZero() {
		sec, nsec = d.handshake.Unix(), int64(d.handshake.Nanosecond())
	}
	return fmt.Sprintf("private_key=00\nlisten_port=1\npublic_key=%s\nendpoint=%s\n"+
		"last_handshake_time_sec=%d\nlast_handshake_time_nsec=%d\ntx_bytes=%d\nrx_bytes=%d\n"+
		"preshared_key=%s\npersistent_keepalive_interval=25\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\nprotocol_version=1\n",
		key, d.endpoint, sec, nsec, d.tx, d.rx, strings.Repeat("ab", 32)), nil
}

func (d *fakeDevice) IpcSet(text string) error {
	d.sets = append(d.sets, text)
	for _, line := range strings.Split(text, "\n") {
		if line == "remove=true" {
			d.tx, d.rx, d.handshake = 0, 0, time.Time{}
		}
		if v, ok := strings.CutPrefix(line, "endpoint="); ok {
			d.endpoint = netip.MustParseAddrPort(v)
		}
	}
	return nil
}

type fakeResolver struct {
	answer []netip.Addr
	err    error
	asked  int
}

func (r *fakeResolver) Lookup(_ context.Context, host string) ([]netip.Addr, error) {
	r.asked++
	if host != "vpn.example" {
		return nil, fmt.Errorf("asked for %q", host)
	}
	return r.answer, r.err
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func ips(s ...string) (out []netip.Addr) { return appendIPs(out, s) }
func appendIPs(out []netip.Addr, s []string) []netip.Addr {
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

const after = 135 * time.Second

func setup(t *testing.T, endpoint string, answer ...string) (*Watcher, *fakeDevice, *fakeResolver, *clock, string) {
	t.Helper()
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	dev := &fakeDevice{endpoint: netip.MustParseAddrPort(endpoint)}
	res := &fakeResolver{answer: ips(answer...)}
	status := filepath.Join(t.TempDir(), "resolved.json")
	w := New(dev, res, []Peer{{PublicKey: key, Host: "vpn.example", Port: 51820}}, after, false,
		status, c.t, t.Logf)
	w.now, w.started = c.now, c.t
	return w, dev, res, c, status
}

func check(t *testing.T, w *Watcher) {
	t.Helper()
	if err := w.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestAFreshHandshakeIsLeftAlone(t *testing.T) {
	w, dev, res, c, _ := setup(t, "192.0.2.1:51820", "198.51.100.1")
	for range 10 {
		c.advance(60 * time.Second)
		dev.handshake = c.t.Add(-time.Second) // handshakes keep happening
		check(t, w)
	}
	if res.asked != 0 || len(dev.sets) != 0 {
		t.Fatalf("asked %d times, set %v", res.asked, dev.sets)
	}
}

func TestAStaleHandshakeMovesToTheNewAddress(t *testing.T) {
	w, dev, res, c, status := setup(t, "192.0.2.1:51820", "198.51.100.1")
	dev.handshake = c.t
	c.advance(after) // not older than After yet
	check(t, w)
	if res.asked != 0 {
		t.Fatal("resolved before the threshold")
	}
	c.advance(time.Second)
	check(t, w)
	if res.asked != 1 || dev.endpoint != netip.MustParseAddrPort("198.51.100.1:51820") {
		t.Fatalf("asked %d, endpoint %v", res.asked, dev.endpoint)
	}
	// removed and added again with its own settings: no stale session is kept
	want := "public_key=" + key + "\nremove=true\npublic_key=" + key + "\nendpoint=198.51.100.1:51820\n" +
		"preshared_key=" + strings.Repeat("ab", 32) + "\npersistent_keepalive_interval=25\n" +
		"allowed_ip=0.0.0.0/0\nallowed_ip=::/0\n"
	if dev.sets[0] != want {
		t.Fatalf("set %q", dev.sets[0])
	}
	var shown []Status
	data, err := os.ReadFile(status)
	if err != nil || json.Unmarshal(data, &shown) != nil {
		t.Fatalf("status file: %v %s", err, data)
	}
	if len(shown) != 1 || shown[0].Host != "vpn.example" || shown[0].Endpoint != "198.51.100.1:51820" ||
		shown[0].ResolvedAt != c.t.UTC().Format(time.RFC3339) || shown[0].Addresses[0] != "198.51.100.1" {
		t.Fatalf("status %+v", shown)
	}
}

func TestNoHandshakeSinceTheLastAttemptTriesAgainAfterTheThreshold(t *testing.T) {
	w, dev, res, c, _ := setup(t, "192.0.2.1:51820", "192.0.2.1")
	c.advance(after + time.Second) // never a handshake since start
	check(t, w)
	c.advance(after / 2)
	check(t, w)
	if res.asked != 1 {
		t.Fatalf("asked %d times within the threshold of the last attempt", res.asked)
	}
	c.advance(after)
	check(t, w)
	if res.asked != 2 || len(dev.sets) != 0 { // same answer, idle peer: nothing to move
		t.Fatalf("asked %d, sets %v", res.asked, dev.sets)
	}
}

func TestFailingHandshakesRotateThroughTheAddresses(t *testing.T) {
	w, dev, _, c, _ := setup(t, "192.0.2.1:51820", "192.0.2.1", "2001:db8::1", "192.0.2.2")
	check(t, w) // first look: tx/rx noted
	want := []string{"192.0.2.2:51820", "[2001:db8::1]:51820", "192.0.2.1:51820"}
	for _, endpoint := range want {
		dev.tx += 148 // a handshake initiation, never answered
		c.advance(after + time.Second)
		check(t, w)
		if dev.endpoint.String() != endpoint {
			t.Fatalf("endpoint %v, want %s", dev.endpoint, endpoint)
		}
	}
}

// A move re-creates the peer, whose counters restart at zero: the next
// "bytes sent, none received" must be measured from there, not from the
// totals of the peer that was removed, or rotation stops after one move.
func TestRotationGoesOnAfterAMoveResetTheCounters(t *testing.T) {
	w, dev, _, c, _ := setup(t, "192.0.2.1:51820", "192.0.2.1", "192.0.2.2", "192.0.2.3")
	dev.tx, dev.rx = 50_000, 40_000 // a session that worked for a while
	check(t, w)
	want := []string{"192.0.2.2:51820", "192.0.2.3:51820", "192.0.2.1:51820", "192.0.2.2:51820"}
	for i, endpoint := range want {
		dev.tx += 148 // one unanswered handshake initiation since the last attempt
		c.advance(after + time.Second)
		check(t, w)
		if dev.endpoint.String() != endpoint {
			t.Fatalf("move %d: endpoint %v, want %s", i+1, dev.endpoint, endpoint)
		}
	}
	// An answer since the last attempt: the peer is reached, it stays.
	dev.tx, dev.rx = 148, 92
	c.advance(after + time.Second)
	check(t, w)
	if dev.endpoint.String() != want[len(want)-1] {
		t.Fatalf("moved away from a peer that answers: %v", dev.endpoint)
	}
}

// Counters that went down mean someone else re-created the peer (`wg set
// ... remove`, then added again): they count from zero as well.
func TestCountersThatWentDownCountFromZero(t *testing.T) {
	w, dev, _, c, _ := setup(t, "192.0.2.1:51820", "192.0.2.1", "192.0.2.2")
	dev.tx, dev.rx = 50_000, 40_000
	check(t, w)
	dev.tx, dev.rx = 296, 0 // re-created behind the watcher's back, never answered since
	c.advance(after + time.Second)
	check(t, w)
	if dev.endpoint.String() != "192.0.2.2:51820" {
		t.Fatalf("endpoint %v, want a move to 192.0.2.2:51820", dev.endpoint)
	}
}

func TestIPv6AnswersAreSkippedOnAnIPv4Host(t *testing.T) {
	w, dev, _, c, _ := setup(t, "192.0.2.9:51820", "2001:db8::1", "198.51.100.1")
	w.v4Only = true
	c.advance(after + time.Second)
	check(t, w)
	if dev.endpoint.String() != "198.51.100.1:51820" {
		t.Fatalf("endpoint %v", dev.endpoint)
	}
}

func TestAFailedLookupKeepsTheEndpointAndSaysWhy(t *testing.T) {
	w, dev, res, c, status := setup(t, "192.0.2.1:51820")
	res.err = errors.New("no answer from 127.0.0.53:53")
	c.advance(after + time.Second)
	check(t, w)
	if len(dev.sets) != 0 {
		t.Fatalf("set %v", dev.sets)
	}
	data, _ := os.ReadFile(status)
	if !strings.Contains(string(data), `"error": "no answer from 127.0.0.53:53"`) ||
		!strings.Contains(string(data), `"endpoint": "192.0.2.1:51820"`) {
		t.Fatalf("status %s", data)
	}
}

func TestParseGetReadsEveryPeer(t *testing.T) {
	text := "private_key=00\npublic_key=aa\nendpoint=[::ffff:192.0.2.1]:5\nlast_handshake_time_sec=7\n" +
		"last_handshake_time_nsec=9\ntx_bytes=3\nrx_bytes=4\npublic_key=bb\nendpoint=[2001:db8::1]:6\n" +
		"last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
	got := parseGet(text)
	if a := got["aa"]; a.endpoint.String() != "[::ffff:192.0.2.1]:5" || !a.handshake.Equal(time.Unix(7, 9)) || a.tx != 3 || a.rx != 4 {
		t.Fatalf("aa: %+v", a)
	}
	if b := got["bb"]; b.endpoint.String() != "[2001:db8::1]:6" || !b.handshake.IsZero() {
		t.Fatalf("bb: %+v", b)
	}
}

func TestIntervalFollowsTheThreshold(t *testing.T) {
	for _, tc := range []struct{ after, want time.Duration }{
		{135 * time.Second, 27 * time.Second},
		{time.Hour, 30 * time.Second},
		{2 * time.Second, 400 * time.Millisecond},
		{100 * time.Millisecond, 200 * time.Millisecond},
	} {
		w := New(&fakeDevice{}, &fakeResolver{}, nil, tc.after, false, "", time.Now(), t.Logf)
		if got := w.Interval(); got != tc.want {
			t.Errorf("Interval(%v) = %v, want %v", tc.after, got, tc.want)
		}
	}
}
