package natpmp

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config says which mappings a Mapper holds and whom it tells. The zero
// value asks as ProtonVPN's own clients do: UDP and TCP, internal port 0,
// suggested external port 1, 60 seconds.
type Config struct {
	// InternalPort is the port on this side. 0 asks the gateway to choose
	// a port and forward it to the same port here (ProtonVPN); P asks for
	// a forward to P (miniupnpd and RFC gateways), which the gateway may
	// expose under another external port.
	InternalPort uint16
	// ExternalPort is the port suggested in the first request (renewals
	// suggest the one granted): default 1 with InternalPort 0, as
	// ProtonVPN's clients send, else InternalPort.
	ExternalPort uint16
	// Lifetime is asked for, in seconds: default 60.
	Lifetime uint32
	// Protocols are mapped in this order; the first one mapped gives
	// Status.Port. Default UDP, TCP.
	Protocols []Protocol
	// OnChange is called when the port is first obtained and whenever
	// Port or ExternalPort changes (a gateway that restarted or moved
	// it). It runs on Run's goroutine: start work, do not wait for it.
	OnChange func(Status)
	// OnStatus is called whenever the status may have changed.
	OnStatus func(Status)
	// Logf receives one line per event; nil discards them.
	Logf func(format string, args ...any)
	// ReleaseTimeout bounds the deletion of the mappings when Run's
	// context ends (default 2 s); NoRelease skips it, leaving them to
	// expire.
	ReleaseTimeout time.Duration
	NoRelease      bool
}

// Status is what `wg-wrap status` shows (written as JSON).
type Status struct {
	// State is "requesting" (no mapping yet), "mapped", "expired" (the
	// last mapping lapsed and could not be renewed) or "stopped".
	State   string `json:"state"`
	Gateway string `json:"gateway"`
	// Port is where the program must listen: the internal port the gateway
	// named, or with internal port 0 (ProtonVPN) the external port, which
	// the gateway forwards to the same port. Peers connect to
	// ExternalAddress:ExternalPort. Both stay set when the mapping expires.
	Port            uint16          `json:"port,omitempty"`
	ExternalPort    uint16          `json:"external_port,omitempty"`
	ExternalAddress string          `json:"external_address,omitempty"`
	Protocols       []Protocol      `json:"protocols,omitempty"` // mapped now
	Mappings        []MappingStatus `json:"mappings,omitempty"`  // those, in detail
	Lifetime        uint32          `json:"lifetime,omitempty"`  // granted, seconds (the shortest)
	RenewedAt       string          `json:"renewed_at,omitempty"`
	NextAttempt     string          `json:"next_attempt,omitempty"`
	// LastError is the last attempt's failure, cleared by a success; Hint
	// says what usually causes it.
	LastError       string `json:"last_error,omitempty"`
	Hint            string `json:"hint,omitempty"`
	Failures        int    `json:"failures,omitempty"` // attempts failed in a row
	GatewayRestarts int    `json:"gateway_restarts,omitempty"`
}

// MappingStatus is one protocol's mapping. Times are RFC 3339.
type MappingStatus struct {
	Protocol     Protocol `json:"protocol"`
	InternalPort uint16   `json:"internal_port"`
	ExternalPort uint16   `json:"external_port"`
	Lifetime     uint32   `json:"lifetime"`
	RenewedAt    string   `json:"renewed_at"`
	ExpiresAt    string   `json:"expires_at"`
}

const (
	defaultLifetime       = 60
	defaultReleaseTimeout = 2 * time.Second
	// A gateway that refuses answers at once: wait between attempts, from
	// backoffMin doubling to backoffMax, and never less than minWait
	// between any two, whatever lifetime a gateway grants.
	backoffMin     = time.Second
	backoffMax     = 60 * time.Second
	minWait        = 500 * time.Millisecond
	addressTimeout = 2 * time.Second // the external address is extra: do not wait the whole Retry for it
	// The slack of §3.6 when comparing the gateway's epoch with local time.
	epochSlack = 2
)

// HintNoPortForwarding is the likely cause when a gateway never answers or
// refuses.
const HintNoPortForwarding = "the server may not support port forwarding " +
	"(ProtonVPN: pick a P2P server and a key made with NAT-PMP on)"

type mapping struct {
	internal, external uint16
	lifetime           uint32
	renewedAt          time.Time
}

func (mp mapping) expiresAt() time.Time {
	return mp.renewedAt.Add(time.Duration(mp.lifetime) * time.Second)
}

// Mapper holds the mappings of Config for as long as Run runs.
type Mapper struct {
	client *Client
	cfg    Config
	clock  clock

	// The gateway's epoch as last seen, and when (Run's goroutine only).
	epochSeen bool
	epoch     uint32
	epochAt   time.Time

	mu          sync.Mutex
	mappings    map[Protocol]mapping
	port        uint16 // as last told to OnChange
	external    uint16
	address     netip.Addr
	askAddress  bool
	lastErr     string
	hint        string
	failures    int
	restarts    int
	nextAttempt time.Time
	stopped     bool
}

// clock is the time a Mapper schedules by; tests replace it.
type clock interface {
	Now() time.Time
	// Sleep waits d; false if ctx ended first.
	Sleep(ctx context.Context, d time.Duration) bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// NewMapper holds cfg's mappings through client (which the caller closes
// after Run returns).
func NewMapper(client *Client, cfg Config) *Mapper {
	if cfg.Lifetime == 0 {
		cfg.Lifetime = defaultLifetime
	}
	if cfg.ExternalPort == 0 {
		cfg.ExternalPort = cfg.InternalPort
		if cfg.InternalPort == 0 {
			cfg.ExternalPort = 1
		}
	}
	if len(cfg.Protocols) == 0 {
		cfg.Protocols = []Protocol{UDP, TCP}
	}
	if cfg.ReleaseTimeout == 0 {
		cfg.ReleaseTimeout = defaultReleaseTimeout
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	return &Mapper{client: client, cfg: cfg, clock: realClock{},
		mappings: map[Protocol]mapping{}, askAddress: true}
}

// Run maps, renews at half the granted lifetime (§3.3) and, when an
// attempt fails, tries again with backoff, for as long as ctx lasts. Then
// it deletes the mappings (best effort, within ReleaseTimeout) and returns.
func (m *Mapper) Run(ctx context.Context) {
	m.publish()
	defer func() {
		m.release()
		m.mu.Lock()
		m.stopped, m.nextAttempt = true, time.Time{}
		m.mu.Unlock()
		m.publish()
	}()
	for {
		wait := m.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.nextAttempt = m.clock.Now().Add(wait)
		m.mu.Unlock()
		m.publish()
		if !m.clock.Sleep(ctx, wait) {
			return
		}
	}
}

// attempt asks for every mapping (and the external address while it is
// unknown) and returns how long to wait before the next attempt.
func (m *Mapper) attempt(ctx context.Context) time.Duration {
	var errs []error
	var renewed []Protocol
	// A gateway found to have restarted after the first exchange of a
	// pass has lost what the pass obtained before: one more pass.
	for pass := 0; pass < 2; pass++ {
		var restartedLate bool
		errs, renewed, restartedLate = m.pass(ctx)
		if ctx.Err() != nil || !restartedLate {
			break
		}
		m.cfg.Logf("NAT-PMP: gateway %v lost its mappings part-way: asking again", m.client.Gateway())
	}
	if ctx.Err() != nil {
		return 0
	}
	now := m.clock.Now()
	m.mu.Lock()
	if len(errs) == 0 {
		m.failures, m.lastErr, m.hint = 0, "", ""
	} else {
		m.failures++
		m.lastErr, m.hint = joinErrors(errs), hintFor(errs[0])
	}
	// The next renewal is due at half the lifetime granted (§3.3), counted
	// from the renewal, for the mappings renewed now; the others are
	// failing and wait for the backoff.
	var next time.Time
	for _, p := range renewed {
		mp := m.mappings[p]
		due := mp.renewedAt.Add(time.Duration(mp.lifetime) * time.Second / 2)
		if next.IsZero() || due.Before(next) {
			next = due
		}
	}
	if m.failures > 0 {
		if b := now.Add(backoff(m.failures)); next.IsZero() || b.Before(next) {
			next = b
		}
	}
	failures, lastErr := m.failures, m.lastErr
	changed, st := m.portChanged(renewed)
	m.mu.Unlock()
	if failures > 0 {
		m.cfg.Logf("NAT-PMP: %s (attempt %d failed in a row)", lastErr, failures)
	}
	if changed && m.cfg.OnChange != nil {
		m.cfg.OnChange(st)
	}
	return max(next.Sub(now), minWait)
}

// pass is one exchange per protocol, then the external address if wanted.
// It returns the failures, the protocols mapped, and whether the gateway
// turned out to have restarted after the pass's first exchange.
func (m *Mapper) pass(ctx context.Context) (errs []error, renewed []Protocol, restartedLate bool) {
	exchanges := 0
	seen := func(resp Response, err error) {
		var re *ResultError
		if err == nil || errors.As(err, &re) {
			if m.sawEpoch(resp.Epoch) && exchanges > 0 {
				restartedLate = true
			}
			exchanges++
		}
	}
	for _, p := range m.cfg.Protocols {
		resp, err := m.client.Map(ctx, p, m.cfg.InternalPort, m.suggest(p, renewed), m.cfg.Lifetime)
		if ctx.Err() != nil {
			return nil, nil, false
		}
		seen(resp, err)
		if err == nil {
			err = m.record(p, resp)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		renewed = append(renewed, p)
	}
	m.mu.Lock()
	ask := m.askAddress && len(renewed) > 0 && !restartedLate // else after the next pass
	m.mu.Unlock()
	defer func() {
		// A restart seen after a protocol was mapped has lost that mapping.
		m.mu.Lock()
		renewed = slices.DeleteFunc(renewed, func(p Protocol) bool { _, ok := m.mappings[p]; return !ok })
		m.mu.Unlock()
	}()
	if ask {
		actx, cancel := context.WithTimeout(ctx, addressTimeout)
		resp, err := m.client.ExternalAddress(actx)
		cancel()
		if ctx.Err() != nil {
			return nil, nil, false
		}
		m.mu.Lock()
		m.askAddress = false // asked again after a restart (which seen may find now)
		if err == nil {
			m.address = resp.ExternalAddress
		}
		m.mu.Unlock()
		seen(resp, err)
		if err != nil {
			// Optional for a mapping: ProtonVPN answers it, others may not.
			m.cfg.Logf("NAT-PMP: external address: %v", err)
		}
	}
	return errs, renewed, restartedLate
}

// suggest is the external port to ask p for: the one p holds, else the
// one a protocol got earlier in this pass (so TCP and UDP match), else the
// last one obtained (a gateway that restarted may give it again), else the
// configured one.
func (m *Mapper) suggest(p Protocol, renewed []Protocol) uint16 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mp, ok := m.mappings[p]; ok {
		return mp.external
	}
	for _, q := range renewed {
		if mp, ok := m.mappings[q]; ok {
			return mp.external
		}
	}
	if m.external != 0 {
		return m.external
	}
	return m.cfg.ExternalPort
}

// record keeps a granted mapping.
func (m *Mapper) record(p Protocol, resp Response) error {
	if resp.ExternalPort == 0 || resp.Lifetime == 0 {
		return fmt.Errorf("%v mapping: the gateway granted port %d for %d s", p, resp.ExternalPort, resp.Lifetime)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.mappings[p]; ok && old.external != resp.ExternalPort {
		m.cfg.Logf("NAT-PMP: %v external port moved from %d to %d", p, old.external, resp.ExternalPort)
	}
	m.mappings[p] = mapping{internal: resp.InternalPort, external: resp.ExternalPort,
		lifetime: resp.Lifetime, renewedAt: m.clock.Now()}
	return nil
}

// sawEpoch checks the gateway's epoch against the last one seen (§3.6): it
// must have advanced by at least 7/8 of the local time elapsed, less the
// slack. If it did not, the gateway restarted and forgot every mapping.
func (m *Mapper) sawEpoch(epoch uint32) (restarted bool) {
	now := m.clock.Now()
	if m.epochSeen {
		elapsed := now.Sub(m.epochAt).Milliseconds()
		expected := int64(m.epoch) + elapsed*7/8/1000
		if int64(epoch)+epochSlack < expected {
			restarted = true
			m.cfg.Logf("NAT-PMP: gateway %v restarted (epoch %d, expected at least %d): mapping again",
				m.client.Gateway(), epoch, expected-epochSlack)
			m.mu.Lock()
			m.restarts++
			clear(m.mappings)
			m.askAddress = true
			m.mu.Unlock()
		}
	}
	m.epochSeen, m.epoch, m.epochAt = true, epoch, now
	return restarted
}

// portChanged updates Port and ExternalPort from the first protocol mapped
// now and says whether they changed (with mu held).
func (m *Mapper) portChanged(renewed []Protocol) (bool, Status) {
	for _, p := range m.cfg.Protocols {
		if !slices.Contains(renewed, p) {
			continue
		}
		mp := m.mappings[p]
		port := mp.internal
		if port == 0 {
			port = mp.external // forwarded to the same port (ProtonVPN)
		}
		if port == m.port && mp.external == m.external {
			return false, Status{}
		}
		if m.port == 0 {
			m.cfg.Logf("NAT-PMP: forwarded port %d (external %d)", port, mp.external)
		} else {
			m.cfg.Logf("NAT-PMP: forwarded port moved from %d (external %d) to %d (external %d)",
				m.port, m.external, port, mp.external)
		}
		m.port, m.external = port, mp.external
		return true, m.status()
	}
	return false, Status{}
}

func backoff(failures int) time.Duration {
	d := backoffMin
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

func joinErrors(errs []error) string {
	parts := make([]string, len(errs))
	for i, err := range errs {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

// hintFor says what usually causes err.
func hintFor(err error) string {
	var re *ResultError
	switch {
	case errors.Is(err, ErrNoAnswer):
		return "no NAT-PMP answer: the tunnel may have no handshake yet, or " + HintNoPortForwarding
	case errors.Is(err, ErrRefused):
		return HintNoPortForwarding
	case errors.As(err, &re):
		switch re.Response.Result {
		case ResultNetworkFailure:
			return "the gateway has no external address yet; asking again"
		case ResultOutOfResources:
			return "the gateway has no port to give now; asking again"
		}
		return HintNoPortForwarding
	}
	return ""
}

// Status is the mappings' state now.
func (m *Mapper) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status()
}

func (m *Mapper) status() Status {
	now := m.clock.Now()
	st := Status{
		State:           "requesting",
		Gateway:         m.client.Gateway().String(),
		Port:            m.port,
		ExternalPort:    m.external,
		LastError:       m.lastErr,
		Hint:            m.hint,
		Failures:        m.failures,
		GatewayRestarts: m.restarts,
	}
	if m.address.IsValid() {
		st.ExternalAddress = m.address.String()
	}
	if !m.nextAttempt.IsZero() {
		st.NextAttempt = m.nextAttempt.Format(time.RFC3339)
	}
	var renewedAt time.Time
	for _, p := range m.cfg.Protocols {
		mp, ok := m.mappings[p]
		if !ok || !now.Before(mp.expiresAt()) {
			continue
		}
		st.Protocols = append(st.Protocols, p)
		st.Mappings = append(st.Mappings, MappingStatus{Protocol: p, InternalPort: mp.internal,
			ExternalPort: mp.external, Lifetime: mp.lifetime,
			RenewedAt: mp.renewedAt.Format(time.RFC3339), ExpiresAt: mp.expiresAt().Format(time.RFC3339)})
		if st.Lifetime == 0 || mp.lifetime < st.Lifetime {
			st.Lifetime = mp.lifetime
		}
		if mp.renewedAt.After(renewedAt) {
			renewedAt = mp.renewedAt
		}
	}
	if !renewedAt.IsZero() {
		st.RenewedAt = renewedAt.Format(time.RFC3339)
	}
	switch {
	case m.stopped:
		st.State = "stopped"
	case len(st.Protocols) > 0:
		st.State = "mapped"
	case m.port != 0:
		st.State = "expired"
	}
	return st
}

func (m *Mapper) publish() {
	if m.cfg.OnStatus != nil {
		m.cfg.OnStatus(m.Status())
	}
}

// release deletes the mappings held (§3.4), within ReleaseTimeout.
func (m *Mapper) release() {
	m.mu.Lock()
	var held []Protocol
	now := m.clock.Now()
	for _, p := range m.cfg.Protocols {
		if mp, ok := m.mappings[p]; ok && now.Before(mp.expiresAt()) {
			held = append(held, p)
		}
	}
	clear(m.mappings)
	m.mu.Unlock()
	if m.cfg.NoRelease || len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ReleaseTimeout)
	defer cancel()
	for _, p := range held {
		// With internal port 0 this deletes all of this client's p
		// mappings, which are the profile's.
		if _, err := m.client.Map(ctx, p, m.cfg.InternalPort, 0, 0); err != nil {
			m.cfg.Logf("NAT-PMP: deleting the %v mapping: %v", p, err)
		}
	}
}
