package hostdns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// fakeServer answers DNS queries on loopback with the records of answers
// (by name and type); unknown names get NXDOMAIN. drop makes it swallow
// questions of that type.
type fakeServer struct {
	conn    *net.UDPConn
	answers map[string][]dnsmessage.Resource
	drop    dnsmessage.Type
	before  func(conn *net.UDPConn, to netip.AddrPort, id uint16) // sent first (spoofs)
	queries atomic.Int32
}

func startServer(t *testing.T, answers map[string][]dnsmessage.Resource) *fakeServer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{conn: conn, answers: answers}
	t.Cleanup(func() { conn.Close() })
	go s.serve()
	return s
}

func (s *fakeServer) addr() netip.AddrPort {
	return netip.MustParseAddrPort(s.conn.LocalAddr().String())
}

func (s *fakeServer) serve() {
	buf := make([]byte, 512)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s.queries.Add(1)
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil || q.Type == s.drop {
			continue
		}
		if s.before != nil {
			s.before(s.conn, from, h.ID)
		}
		records, known := s.answers[q.Name.String()]
		rcode := dnsmessage.RCodeSuccess
		if !known {
			rcode = dnsmessage.RCodeNameError
		}
		reply := dnsmessage.Message{
			Header:    dnsmessage.Header{ID: h.ID, Response: true, RCode: rcode},
			Questions: []dnsmessage.Question{q},
		}
		for _, r := range records {
			if r.Header.Type == q.Type || r.Header.Type == dnsmessage.TypeCNAME {
				reply.Answers = append(reply.Answers, r)
			}
		}
		out, err := reply.Pack()
		if err != nil {
			continue
		}
		s.conn.WriteToUDPAddrPort(out, from)
	}
}

func a(name, ip string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.AResource{A: netip.MustParseAddr(ip).As4()},
	}
}

func aaaa(name, ip string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeAAAA, Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.AAAAResource{AAAA: netip.MustParseAddr(ip).As16()},
	}
}

func cname(name, target string) dnsmessage.Resource {
	return dnsmessage.Resource{
		Header: dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeCNAME, Class: dnsmessage.ClassINET, TTL: 60},
		Body:   &dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName(target)},
	}
}

// hostSocket stands for the socket wg-wrap opens on the host: network is
// "udp4" (an IPv4-only host) or "udp" (dual-stack).
func hostSocket(t *testing.T, network string) int {
	t.Helper()
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		t.Fatal(err)
	}
	f, err := conn.File()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func newResolver(t *testing.T, network string, servers []netip.AddrPort, opts ...Option) *Resolver {
	t.Helper()
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts = append([]Option{WithHostsFile(hosts), WithTimeout(300 * time.Millisecond)}, opts...)
	r, err := New(hostSocket(t, network), servers, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func lookup(t *testing.T, r *Resolver, name string) ([]netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.Lookup(ctx, name)
}

func addrs(ips ...string) []netip.Addr {
	var out []netip.Addr
	for _, ip := range ips {
		out = append(out, netip.MustParseAddr(ip))
	}
	return out
}

func sameSet(got, want []netip.Addr) bool {
	g, w := slices.Clone(got), slices.Clone(want)
	slices.SortFunc(g, func(x, y netip.Addr) int { return x.Compare(y) })
	slices.SortFunc(w, func(x, y netip.Addr) int { return x.Compare(y) })
	return slices.Equal(g, w)
}

func TestLookupAsksForAAndAAAA(t *testing.T) {
	for _, network := range []string{"udp4", "udp"} {
		server := startServer(t, map[string][]dnsmessage.Resource{
			"vpn.example.": {a("vpn.example.", "192.0.2.7"), aaaa("vpn.example.", "2001:db8::7")},
		})
		r := newResolver(t, network, []netip.AddrPort{server.addr()})
		got, err := lookup(t, r, "VPN.example.")
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if want := addrs("192.0.2.7", "2001:db8::7"); !sameSet(got, want) {
			t.Fatalf("%s: got %v, want %v", network, got, want)
		}
	}
}

func TestCNAMEChainsGiveTheTargetsAddresses(t *testing.T) {
	server := startServer(t, map[string][]dnsmessage.Resource{
		"vpn.example.": {cname("vpn.example.", "edge.cdn.example."), a("edge.cdn.example.", "198.51.100.3")},
	})
	r := newResolver(t, "udp4", []netip.AddrPort{server.addr()})
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !sameSet(got, addrs("198.51.100.3")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestTheHostsFileComesFirst(t *testing.T) {
	server := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	hosts := filepath.Join(t.TempDir(), "hosts")
	text := "# comment\n127.0.0.1 localhost\n203.0.113.9  other vpn.example  # ours\n::ffff:203.0.113.10 vpn.example.\n"
	if err := os.WriteFile(hosts, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, "udp4", []netip.AddrPort{server.addr()}, WithHostsFile(hosts))
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !slices.Equal(got, addrs("203.0.113.9", "203.0.113.10")) {
		t.Fatalf("got %v, %v", got, err)
	}
	if n := server.queries.Load(); n != 0 {
		t.Fatalf("the nameserver was asked %d times", n)
	}
}

func TestAnAddressIsItsOwnAnswer(t *testing.T) {
	r := newResolver(t, "udp4", nil)
	got, err := lookup(t, r, "::ffff:192.0.2.1")
	if err != nil || !slices.Equal(got, addrs("192.0.2.1")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestNXDOMAINIsNotFoundWithoutAskingFurther(t *testing.T) {
	first := startServer(t, nil)
	second := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	r := newResolver(t, "udp4", []netip.AddrPort{first.addr(), second.addr()})
	if _, err := lookup(t, r, "vpn.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if n := second.queries.Load(); n != 0 {
		t.Fatalf("the second server was asked %d times after an NXDOMAIN", n)
	}
}

func TestASilentServerIsSkipped(t *testing.T) {
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	good := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	r := newResolver(t, "udp4", []netip.AddrPort{netip.MustParseAddrPort(silent.LocalAddr().String()), good.addr()})
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !sameSet(got, addrs("192.0.2.7")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestOneFamilyAnsweringIsEnough(t *testing.T) {
	server := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	server.drop = dnsmessage.TypeAAAA // a broken middlebox eating AAAA questions
	r := newResolver(t, "udp4", []netip.AddrPort{server.addr()})
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !sameSet(got, addrs("192.0.2.7")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestForeignAndMismatchedAnswersAreIgnored(t *testing.T) {
	spoofer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer spoofer.Close()
	lie := func(id uint16) []byte {
		m := dnsmessage.Message{
			Header:    dnsmessage.Header{ID: id, Response: true},
			Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName("vpn.example."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET}},
			Answers:   []dnsmessage.Resource{a("vpn.example.", "6.6.6.6")},
		}
		out, _ := m.Pack()
		return out
	}
	server := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	server.before = func(conn *net.UDPConn, to netip.AddrPort, id uint16) {
		spoofer.WriteToUDPAddrPort(lie(id), to) // right id, wrong source
		conn.WriteToUDPAddrPort(lie(id+1), to)  // right source, wrong id
	}
	r := newResolver(t, "udp4", []netip.AddrPort{server.addr()})
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !sameSet(got, addrs("192.0.2.7")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

func TestIPv6ServersAreSkippedOnAnIPv4Socket(t *testing.T) {
	good := startServer(t, map[string][]dnsmessage.Resource{"vpn.example.": {a("vpn.example.", "192.0.2.7")}})
	r := newResolver(t, "udp4", []netip.AddrPort{netip.MustParseAddrPort("[::1]:53"), good.addr()})
	got, err := lookup(t, r, "vpn.example")
	if err != nil || !sameSet(got, addrs("192.0.2.7")) {
		t.Fatalf("got %v, %v", got, err)
	}
}

// New keeps nothing of the caller's descriptor: once the caller closes it and
// the number is reused, no finalizer of ours may close the new owner's file
// (the sidecar closes its copy at once; a later accept or open gets its number).
func TestTheCallersDescriptorIsNotClosedAgainLater(t *testing.T) {
	fd, err := unix.Dup(hostSocket(t, "udp4")) // the caller's own copy, closed below
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(fd, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	unix.Close(fd)
	reused, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(reused)
	if reused != fd {
		t.Fatalf("descriptor %d not reused (got %d): the test proves nothing", fd, reused)
	}
	for range 5 { // finalizers run after a GC, on their own goroutine
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := unix.FcntlInt(uintptr(reused), unix.F_GETFD, 0); err != nil {
		t.Fatalf("descriptor %d, reused after the caller closed it, was closed behind its owner: %v", reused, err)
	}
}
