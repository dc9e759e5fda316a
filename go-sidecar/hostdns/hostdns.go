// Package hostdns resolves names the way the host does, from inside a
// namespace whose own DNS goes through the tunnel.
//
// The sidecar lives in the profile's network namespace: its resolv.conf names
// the tunnel's DNS servers, which are only reachable once the tunnel works,
// and the host's resolvers (often 127.0.0.53) are not reachable at all. But a
// socket belongs to the network namespace it was created in: wg-wrap opens a
// UDP socket on the host before the namespace exists and hands it in, and DNS
// exchanged over it goes out on the host's network, to the host's
// nameservers. The host's /etc/hosts is the same file inside (only
// resolv.conf is replaced), so it is consulted first, as glibc's "files dns"
// order does.
package hostdns

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when the name does not exist (NXDOMAIN) or has no
// address.
var ErrNotFound = errors.New("no such host")

const (
	defaultTimeout  = 2 * time.Second // per server and attempt, like resolv.conf's default "timeout:5" but shorter
	defaultAttempts = 2
	maxMessage      = 1232 // EDNS-safe UDP payload; answers for one name fit
)

// Resolver answers from the hosts file, then from the host's nameservers
// over the host socket. It is safe for concurrent use; exchanges are
// serialised since they share one socket.
type Resolver struct {
	conn      *net.UDPConn
	servers   []netip.AddrPort
	hostsPath string
	timeout   time.Duration
	attempts  int
	v4Only    bool // the host socket is AF_INET: IPv6 nameservers are unreachable

	mu sync.Mutex
}

// Option changes a Resolver's defaults (used by tests).
type Option func(*Resolver)

// WithHostsFile reads host names from path instead of /etc/hosts.
func WithHostsFile(path string) Option { return func(r *Resolver) { r.hostsPath = path } }

// WithTimeout sets how long one server is waited for, per attempt.
func WithTimeout(d time.Duration) Option { return func(r *Resolver) { r.timeout = d } }

// New uses a dup of the UDP socket fd (the caller keeps fd) to reach servers.
func New(fd int, servers []netip.AddrPort, opts ...Option) (*Resolver, error) {
	// The os.File must own a descriptor of its own: closing it (or, left
	// open, its finalizer) closes that number, which the caller's fd is not.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("host DNS socket: %w", err)
	}
	f := os.NewFile(uintptr(dup), "host-dns-socket")
	pc, err := net.FilePacketConn(f) // dups again and registers with the poller
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("host DNS socket: %w", err)
	}
	conn, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("host DNS socket: not a UDP socket")
	}
	local, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	r := &Resolver{
		conn:      conn,
		servers:   servers,
		hostsPath: "/etc/hosts",
		timeout:   defaultTimeout,
		attempts:  defaultAttempts,
		v4Only:    local.Addr().Is4(),
	}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Close closes the resolver's dup of the socket.
func (r *Resolver) Close() error { return r.conn.Close() }

// Lookup returns host's addresses: host itself if it is an address, the
// hosts file's entries if it has any, else the first nameserver's answer
// (A and AAAA, IPv4-mapped addresses unmapped).
func (r *Resolver) Lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if found := lookupHostsFile(r.hostsPath, name); len(found) > 0 {
		return found, nil
	}
	if len(r.servers) == 0 {
		return nil, errors.New("no nameserver on the host")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var lastErr error
	for attempt := 0; attempt < r.attempts; attempt++ {
		for _, server := range r.servers {
			if server.Addr().Is6() && !server.Addr().Is4In6() && r.v4Only {
				continue
			}
			addrs, err := r.exchange(ctx, server, name)
			if err == nil || errors.Is(err, ErrNotFound) {
				return addrs, err
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			lastErr = err
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no usable nameserver on the host")
	}
	return nil, lastErr
}

// exchange asks server for A and AAAA records of name and waits for both
// answers (or the timeout, then keeps what came).
func (r *Resolver) exchange(ctx context.Context, server netip.AddrPort, name string) ([]netip.Addr, error) {
	qname, err := dnsmessage.NewName(name + ".")
	if err != nil {
		return nil, fmt.Errorf("%q is not a valid host name: %w", name, err)
	}
	pending := map[uint16]dnsmessage.Type{}
	for _, qtype := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
		id := randomID()
		query, err := buildQuery(id, qname, qtype)
		if err != nil {
			return nil, err
		}
		if _, err := r.conn.WriteToUDPAddrPort(query, toSocketFamily(server, r.v4Only)); err != nil {
			return nil, fmt.Errorf("asking %s: %w", server, err)
		}
		pending[id] = qtype
	}
	deadline := time.Now().Add(r.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := r.conn.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	var found []netip.Addr
	answered, nxdomain := 0, 0
	buf := make([]byte, maxMessage)
	for len(pending) > 0 {
		n, from, err := r.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if answered > 0 {
				break // one of the two came: use it
			}
			return nil, fmt.Errorf("no answer from %s: %w", server, err)
		}
		if from.Addr().Unmap() != server.Addr().Unmap() || from.Port() != server.Port() {
			continue // not our server: ignore (and never trust) it
		}
		id, addrs, rcode, err := parseAnswer(buf[:n])
		if err != nil {
			continue
		}
		if _, ok := pending[id]; !ok {
			continue // late answer to an earlier question
		}
		delete(pending, id)
		switch rcode {
		case dnsmessage.RCodeSuccess:
			answered++
			found = append(found, addrs...)
		case dnsmessage.RCodeNameError:
			nxdomain++
		default:
			return nil, fmt.Errorf("%s answered %v", server, rcode)
		}
	}
	if len(found) > 0 {
		return found, nil
	}
	if answered > 0 || nxdomain > 0 {
		return nil, ErrNotFound
	}
	return nil, fmt.Errorf("no answer from %s", server)
}

// toSocketFamily writes to an IPv4 server as ::ffff:a.b.c.d on a dual-stack
// socket, and as plain a.b.c.d on an IPv4 one.
func toSocketFamily(server netip.AddrPort, v4Only bool) netip.AddrPort {
	if v4Only || !server.Addr().Is4() {
		return netip.AddrPortFrom(server.Addr().Unmap(), server.Port())
	}
	return netip.AddrPortFrom(netip.AddrFrom16(server.Addr().As16()), server.Port())
}

func randomID() uint16 {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return uint16(time.Now().UnixNano())
	}
	return binary.BigEndian.Uint16(b[:])
}

func buildQuery(id uint16, name dnsmessage.Name, qtype dnsmessage.Type) ([]byte, error) {
	b := dnsmessage.NewBuilder(make([]byte, 0, 64), dnsmessage.Header{ID: id, RecursionDesired: true})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(dnsmessage.Question{Name: name, Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		return nil, err
	}
	return b.Finish()
}

// parseAnswer returns the id, the A/AAAA records of the answer section (a
// recursive resolver's answer holds the CNAME chain of the one name asked,
// so every address record in it is an address of that name) and the rcode.
func parseAnswer(msg []byte) (uint16, []netip.Addr, dnsmessage.RCode, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return 0, nil, 0, err
	}
	if !h.Response {
		return 0, nil, 0, errors.New("not a response")
	}
	if err := p.SkipAllQuestions(); err != nil {
		return 0, nil, 0, err
	}
	var addrs []netip.Addr
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return 0, nil, 0, err
		}
		switch rh.Type {
		case dnsmessage.TypeA:
			rr, err := p.AResource()
			if err != nil {
				return 0, nil, 0, err
			}
			addrs = append(addrs, netip.AddrFrom4(rr.A))
		case dnsmessage.TypeAAAA:
			rr, err := p.AAAAResource()
			if err != nil {
				return 0, nil, 0, err
			}
			addrs = append(addrs, netip.AddrFrom16(rr.AAAA).Unmap())
		default:
			if err := p.SkipAnswer(); err != nil {
				return 0, nil, 0, err
			}
		}
	}
	return h.ID, addrs, h.RCode, nil
}

// lookupHostsFile returns name's addresses in a hosts(5) file, in file
// order; none if the file cannot be read.
func lookupHostsFile(path, name string) []netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []netip.Addr
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		line, _, _ := strings.Cut(scanner.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(fields[0])
		if err != nil {
			continue
		}
		for _, alias := range fields[1:] {
			if strings.TrimSuffix(strings.ToLower(alias), ".") == name {
				found = append(found, ip.WithZone("").Unmap())
				break
			}
		}
	}
	return found
}

// IPv4Only reports whether the host socket is IPv4 only (a host without
// IPv6): IPv6 nameservers and endpoints are out of its reach.
func (r *Resolver) IPv4Only() bool { return r.v4Only }
