// Package reresolve keeps peers whose Endpoint is a host name pointed at the
// name's current address, as wireguard-tools' reresolve-dns.sh does for
// wg-quick (neither wireguard-go nor boringtun does it by itself).
//
// The rule, per peer: when its latest handshake is older than After (or there
// has been none since the watcher started or since its last attempt), resolve
// the name again; when the answer no longer holds the address in use, move to
// the answer's first address; when it does, and handshakes keep failing
// (bytes were sent since the last attempt but none came back) with several
// addresses to choose from, move to the next one.
//
// Moving a peer re-creates it with its own configuration and the new
// endpoint: a peer that moved is usually a peer that restarted, which has
// forgotten the session; without one, the next packet starts a handshake at
// once, where merely setting the endpoint (what `wg set` does) would keep
// sending on the dead session until wireguard-go's timers give up on it.
package reresolve

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Peer is one peer to watch: its public key (hex, as UAPI spells it) and the
// host name and port of its Endpoint.
type Peer struct {
	PublicKey string `json:"public_key"`
	Host      string `json:"host"`
	Port      uint16 `json:"port"`
}

// Device is the part of wireguard-go's device the watcher uses.
type Device interface {
	IpcGet() (string, error)
	IpcSet(string) error
}

// Resolver looks names up on the host (package hostdns).
type Resolver interface {
	Lookup(ctx context.Context, host string) ([]netip.Addr, error)
}

// Status is what `wg-wrap status` shows of one peer (written as JSON).
type Status struct {
	Peer
	Endpoint   string   `json:"endpoint"`              // in use
	Addresses  []string `json:"addresses,omitempty"`   // the last answer
	ResolvedAt string   `json:"resolved_at,omitempty"` // RFC 3339
	Error      string   `json:"error,omitempty"`       // of the last attempt
}

type peerState struct {
	Peer
	addrs       []netip.Addr
	resolvedAt  time.Time
	lastAttempt time.Time
	lastErr     string
	observed    bool // tx/rx below are set
	txAtAttempt uint64
	rxAtAttempt uint64
}

// Watcher checks its peers every Interval.
type Watcher struct {
	dev        Device
	res        Resolver
	after      time.Duration
	v4Only     bool   // the host socket is IPv4 only: IPv6 answers are unusable
	statusPath string // "" = none
	now        func() time.Time
	started    time.Time
	logf       func(string, ...any)

	mu    sync.Mutex
	peers []*peerState
}

// New watches peers; resolvedAt is when wg-wrap resolved them before the
// start. statusPath, when set, receives the peers' Status after each change.
func New(dev Device, res Resolver, peers []Peer, after time.Duration, v4Only bool, statusPath string, resolvedAt time.Time, logf func(string, ...any)) *Watcher {
	w := &Watcher{dev: dev, res: res, after: after, v4Only: v4Only, statusPath: statusPath,
		now: time.Now, logf: logf}
	w.started = w.now()
	for _, p := range peers {
		w.peers = append(w.peers, &peerState{Peer: p, resolvedAt: resolvedAt})
	}
	return w
}

// Interval is how often Run checks: often enough to act soon after After.
func (w *Watcher) Interval() time.Duration {
	return min(max(w.after/5, 200*time.Millisecond), 30*time.Second)
}

// Run checks every Interval until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	w.writeStatus(nil)
	ticker := time.NewTicker(w.Interval())
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if err := w.Check(ctx); err != nil {
				w.logf("re-resolving endpoints: %v", err)
			}
		}
	}
}

// Check is one pass over the peers.
func (w *Watcher) Check(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	text, err := w.dev.IpcGet()
	if err != nil {
		return err
	}
	live := parseGet(text)
	changed := false
	for _, p := range w.peers {
		info, ok := live[p.PublicKey]
		if !ok {
			continue // removed from the device
		}
		if !p.observed {
			p.observed, p.txAtAttempt, p.rxAtAttempt = true, info.tx, info.rx
		}
		if info.tx < p.txAtAttempt || info.rx < p.rxAtAttempt {
			// The peer was re-created since (removed and added again, by
			// someone else): its counters started again from zero.
			p.txAtAttempt, p.rxAtAttempt = 0, 0
		}
		now := w.now()
		reference := info.handshake
		for _, t := range []time.Time{p.lastAttempt, w.started} {
			if t.After(reference) {
				reference = t
			}
		}
		if now.Sub(reference) <= w.after {
			continue
		}
		if w.attempt(ctx, p, info, now) {
			changed = true
		}
	}
	if changed {
		w.writeStatus(nil) // read again: an endpoint may have moved
	}
	return nil
}

// attempt resolves p again and moves its endpoint if it should; it reports
// whether anything shown in the status changed.
func (w *Watcher) attempt(ctx context.Context, p *peerState, info peerInfo, now time.Time) bool {
	// Handshake initiations count as sent bytes: sent without an answer
	// means the peer is not answering there. An idle peer sends nothing.
	failing := info.tx > p.txAtAttempt && info.rx == p.rxAtAttempt
	p.lastAttempt, p.txAtAttempt, p.rxAtAttempt = now, info.tx, info.rx
	lookupCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	addrs, err := w.res.Lookup(lookupCtx, p.Host)
	cancel()
	if err != nil {
		p.lastErr = err.Error()
		w.logf("resolving %s: %v", p.Host, err)
		return true
	}
	usable := usableAddrs(addrs, w.v4Only)
	if len(usable) == 0 {
		p.lastErr = "no usable address"
		return true
	}
	p.addrs, p.resolvedAt, p.lastErr = usable, now, ""
	current := info.endpoint.Addr().Unmap()
	next := usable[0]
	if i := slices.Index(usable, current); i >= 0 {
		if !failing || len(usable) == 1 {
			return true // still right (an idle peer, or nowhere else to go)
		}
		next = usable[(i+1)%len(usable)]
	}
	endpoint := netip.AddrPortFrom(next, p.Port)
	if err := w.dev.IpcSet(recreate(p.PublicKey, info.config, endpoint)); err != nil {
		p.lastErr = fmt.Sprintf("setting endpoint %s: %v", endpoint, err)
		return true
	}
	// The re-created peer counts its bytes from zero, as wireguard-go's
	// NewPeer does: whether its handshakes fail is measured from there.
	p.txAtAttempt, p.rxAtAttempt = 0, 0
	w.logf("endpoint of %s: %s -> %s", p.Host, info.endpoint, endpoint)
	return true
}

// usableAddrs puts IPv4 first (like the address wg-wrap picks at start on
// most hosts) and drops IPv6 where the host socket cannot reach it.
func usableAddrs(addrs []netip.Addr, v4Only bool) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		a = a.Unmap()
		switch {
		case slices.Contains(v4, a) || slices.Contains(v6, a):
		case a.Is4():
			v4 = append(v4, a)
		case !v4Only:
			v6 = append(v6, a)
		}
	}
	return append(v4, v6...)
}

type peerInfo struct {
	endpoint  netip.AddrPort
	handshake time.Time
	tx, rx    uint64
	config    []string // its settings as UAPI set lines: preshared key, keepalive, allowed IPs
}

// recreate is the UAPI set that removes a peer and adds it again with the
// same settings and a new endpoint.
func recreate(publicKey string, config []string, endpoint netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nremove=true\npublic_key=%s\nendpoint=%s\n", publicKey, publicKey, endpoint)
	for _, line := range config {
		b.WriteString(line + "\n")
	}
	return b.String()
}

// parseGet reads the peers of a UAPI get=1 answer, keyed by public key.
func parseGet(text string) map[string]peerInfo {
	peers := map[string]peerInfo{}
	var key string
	var cur peerInfo
	var sec, nsec int64
	flush := func() {
		if key != "" {
			if sec != 0 || nsec != 0 {
				cur.handshake = time.Unix(sec, nsec)
			}
			peers[key] = cur
		}
	}
	scanner := bufio.NewScanner(strings.NewReader(text))
	for scanner.Scan() {
		k, v, ok := strings.Cut(scanner.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			key, cur, sec, nsec = v, peerInfo{}, 0, 0
		case "endpoint":
			cur.endpoint, _ = netip.ParseAddrPort(v)
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "tx_bytes":
			cur.tx, _ = strconv.ParseUint(v, 10, 64)
		case "rx_bytes":
			cur.rx, _ = strconv.ParseUint(v, 10, 64)
		case "preshared_key", "persistent_keepalive_interval", "allowed_ip":
			cur.config = append(cur.config, k+"="+v)
		}
	}
	flush()
	return peers
}

// writeStatus replaces the status file (atomically: readers never see half).
func (w *Watcher) writeStatus(live map[string]peerInfo) {
	if w.statusPath == "" {
		return
	}
	if live == nil {
		if text, err := w.dev.IpcGet(); err == nil {
			live = parseGet(text)
		}
	}
	out := make([]Status, 0, len(w.peers))
	for _, p := range w.peers {
		s := Status{Peer: p.Peer, Error: p.lastErr}
		if !p.resolvedAt.IsZero() {
			s.ResolvedAt = p.resolvedAt.UTC().Format(time.RFC3339)
		}
		if info, ok := live[p.PublicKey]; ok && info.endpoint.IsValid() {
			s.Endpoint = netip.AddrPortFrom(info.endpoint.Addr().Unmap(), info.endpoint.Port()).String()
		}
		for _, a := range p.addrs {
			s.Addresses = append(s.Addresses, a.String())
		}
		out = append(out, s)
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return
	}
	tmp := w.statusPath + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		w.logf("writing %s: %v", filepath.Base(w.statusPath), err)
		return
	}
	if err := os.Rename(tmp, w.statusPath); err != nil {
		w.logf("writing %s: %v", filepath.Base(w.statusPath), err)
	}
}
