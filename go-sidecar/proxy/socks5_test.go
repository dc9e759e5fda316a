package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"wg-wrap/go-sidecar/internal/testutil"
)

// The server runs in the test's own network namespace (netns_test.go),
// where the peer's addresses (the far side of the tunnel) sit on lo beside
// the namespace's loopback, which the proxy must never reach. Names resolve
// through a fake DNS server, as inside they resolve through the tunnel's.

var testAuth = &Credentials{User: "alice", Password: "s3cret:with colon"}

// testNames are what the fake DNS knows: names of the peer, and a name that
// leads back to loopback.
var testNames = map[string][]netip.Addr{
	"echo.test":     {peer4},
	"origin.test":   {peer4},
	"loopback.test": {netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()},
}

type testServer struct {
	*SOCKS5
	addr netip.AddrPort
	dns  *fakeDNS
}

func startSOCKS(t *testing.T, auth *Credentials, udp bool) *testServer {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	resolver, dns := testResolver(testNames)
	ts := &testServer{SOCKS5: &SOCKS5{Auth: auth, Logf: t.Logf, Resolver: resolver},
		addr: l.Addr().(*net.TCPAddr).AddrPort(), dns: dns}
	if udp {
		ts.Relay, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		ts.Owners = testOwners(t)
	}
	done := make(chan error, 1)
	go func() { done <- ts.Serve(l) }()
	t.Cleanup(func() {
		ts.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

// socksDial opens a connection through the proxy, as a client would.
func socksDial(t *testing.T, proxy netip.AddrPort, auth *Credentials, cmd byte, dst Addr) (net.Conn, Addr, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", proxy.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fail := func(err error) (net.Conn, Addr, error) { c.Close(); return nil, Addr{}, err }
	method := byte(methodNoAuth)
	if auth != nil {
		method = methodUserPass
	}
	c.Write([]byte{5, 1, method})
	var sel [2]byte
	if _, err := io.ReadFull(c, sel[:]); err != nil {
		return fail(err)
	}
	if sel[1] != method {
		return fail(fmt.Errorf("method %#x selected", sel[1]))
	}
	if auth != nil {
		msg := append([]byte{1, byte(len(auth.User))}, auth.User...)
		msg = append(append(msg, byte(len(auth.Password))), auth.Password...)
		c.Write(msg)
		var st [2]byte
		if _, err := io.ReadFull(c, st[:]); err != nil {
			return fail(err)
		}
		if st[1] != 0 {
			return fail(errors.New("authentication refused"))
		}
	}
	c.Write(appendAddr([]byte{5, cmd, 0}, dst))
	var head [3]byte
	if _, err := io.ReadFull(c, head[:]); err != nil {
		return fail(err)
	}
	bound, err := readAddr(c)
	if err != nil {
		return fail(err)
	}
	if head[1] != repSucceeded {
		return fail(fmt.Errorf("reply %d", head[1]))
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bound, nil
}

// echoServer echoes each connection on ip (the peer's address unless
// said otherwise); accepted counts the connections.
func echoServer(t *testing.T, ip ...netip.Addr) netip.AddrPort {
	addr, _ := countingEcho(t, ip...)
	return addr
}

func countingEcho(t *testing.T, ip ...netip.Addr) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	on := peer4
	if len(ip) > 0 {
		on = ip[0]
	}
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(on, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := new(atomic.Int32)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort(), accepted
}

func roundTrip(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d of %d bytes: %v", len(got), len(payload), err)
	}
}

func TestConnectByIPAndByNameResolvedInside(t *testing.T) {
	echo := echoServer(t)
	base := runtime.NumGoroutine()
	s := startSOCKS(t, nil, false)
	for _, dst := range []Addr{{IP: echo.Addr(), Port: echo.Port()}, {Name: "echo.test", Port: echo.Port()}} {
		c, _, err := socksDial(t, s.addr, nil, cmdConnect, dst)
		if err != nil {
			t.Fatalf("%v: %v", dst, err)
		}
		roundTrip(t, c, bytes.Repeat([]byte("through the proxy "), 10000))
		c.Close()
	}
	// The name reached the proxy as a name and was resolved inside: the
	// client resolved nothing.
	if s.dns.Asked("echo.test") == 0 {
		t.Fatal("the tunnel's DNS was not asked for echo.test")
	}
	s.Close()
	testutil.CheckGoroutines(t, base)
}

func TestConnectFailuresAreReported(t *testing.T) {
	s := startSOCKS(t, nil, false)
	l, _ := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(peer4, 0)))
	closedPort := l.Addr().(*net.TCPAddr).AddrPort().Port()
	l.Close() // nobody listens there any more
	for dst, want := range map[Addr]string{
		{IP: peer4, Port: closedPort}:    fmt.Sprintf("reply %d", repConnectionRefused),
		{Name: "nowhere.test", Port: 80}: fmt.Sprintf("reply %d", repHostUnreachable),
	} {
		if _, _, err := socksDial(t, s.addr, nil, cmdConnect, dst); err == nil || err.Error() != want {
			t.Errorf("%v: %v, want %s", dst, err, want)
		}
	}
	if _, _, err := socksDial(t, s.addr, nil, cmdBind, Addr{IP: netip.IPv4Unspecified()}); err == nil || err.Error() != fmt.Sprintf("reply %d", repCommandNotSupported) {
		t.Errorf("BIND: %v", err)
	}
	// No relay socket: UDP ASSOCIATE is not offered.
	if _, _, err := socksDial(t, s.addr, nil, cmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()}); err == nil || err.Error() != fmt.Sprintf("reply %d", repCommandNotSupported) {
		t.Errorf("UDP ASSOCIATE without a relay: %v", err)
	}
}

func TestAuthentication(t *testing.T) {
	echo, accepted := countingEcho(t)
	dst := Addr{IP: echo.Addr(), Port: echo.Port()}
	s := startSOCKS(t, testAuth, false)
	c, _, err := socksDial(t, s.addr, testAuth, cmdConnect, dst)
	if err != nil {
		t.Fatalf("right credentials: %v", err)
	}
	roundTrip(t, c, []byte("hello"))
	c.Close()
	if _, _, err := socksDial(t, s.addr, &Credentials{User: "alice", Password: "guess"}, cmdConnect, dst); err == nil || err.Error() != "authentication refused" {
		t.Fatalf("wrong password: %v", err)
	}
	// Offering only "no authentication" gets "no acceptable method".
	if _, _, err := socksDial(t, s.addr, nil, cmdConnect, dst); err == nil || !strings.Contains(err.Error(), "0xff") {
		t.Fatalf("no credentials: %v", err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections reached the destination, want only the authenticated one", n)
	}
	// Without Auth, a client that offers only credentials is let in.
	open := startSOCKS(t, nil, false)
	c, _, err = socksDial(t, open.addr, &Credentials{User: "x", Password: "y"}, cmdConnect, dst)
	if err != nil {
		t.Fatalf("credentials to an open proxy: %v", err)
	}
	c.Close()
}

func TestCredentialsMatch(t *testing.T) {
	c := &Credentials{User: "u", Password: "p"}
	for _, tc := range []struct {
		user, pass string
		want       bool
	}{{"u", "p", true}, {"u", "P", false}, {"U", "p", false}, {"u", "p ", false}, {"", "", false}, {"up", "", false}} {
		if got := c.Match(tc.user, tc.pass); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.user, tc.pass, got)
		}
	}
}

func TestTwoHundredConcurrentConnections(t *testing.T) {
	const n = 200
	echo := echoServer(t)
	base := runtime.NumGoroutine()
	s := startSOCKS(t, testAuth, false)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, _, err := socksDial(t, s.addr, testAuth, cmdConnect, Addr{IP: echo.Addr(), Port: echo.Port()})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns[i] = c
	}
	if got := s.Conns(); got < 2*n {
		t.Fatalf("%d open connection ends, want %d (all at once)", got, 2*n)
	}
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			payload := []byte(strings.Repeat(fmt.Sprint(i), 1000))
			go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("connection %d: %d bytes, %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	s.Close()
	testutil.CheckGoroutines(t, base)
}

func udpSocket(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends payload to dst through the relay and waits up to wait for
// an answer; ok is false on timeout.
func exchange(t *testing.T, c *net.UDPConn, relay netip.AddrPort, dst Addr, payload string, wait time.Duration) (Addr, string, bool) {
	t.Helper()
	if _, err := c.WriteToUDPAddrPort(appendDatagram(nil, dst, []byte(payload)), relay); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return Addr{}, "", false
	}
	if from != relay {
		t.Fatalf("answer from %v, not the relay %v", from, relay)
	}
	src, data, err := parseDatagram(buf[:n])
	if err != nil {
		t.Fatalf("answer header: %v", err)
	}
	return src, string(data), true
}

func TestUDPAssociate(t *testing.T) {
	echo := udpEchoServer(t).LocalAddr().(*net.UDPAddr).AddrPort()
	base := runtime.NumGoroutine()
	s := startSOCKS(t, testAuth, true)
	client := udpSocket(t)
	port := client.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	control, bound, err := socksDial(t, s.addr, testAuth, cmdUDPAssociate, Addr{IP: netip.IPv4Unspecified(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	// The relay is on the proxy's own address, not on all addresses.
	relay := netip.AddrPortFrom(bound.IP, bound.Port)
	if bound.IP != netip.MustParseAddr("127.0.0.1") || relay != s.Relay.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("relay announced at %v", bound)
	}
	for _, dst := range []Addr{{IP: echo.Addr(), Port: echo.Port()}, {Name: "echo.test", Port: echo.Port()}} {
		src, data, ok := exchange(t, client, relay, dst, "ping", 5*time.Second)
		if !ok || data != "ECHO ping" || src.IP != echo.Addr() || src.Port != echo.Port() {
			t.Fatalf("%v: got %v %q %v", dst, src, data, ok)
		}
	}
	// Another socket (another port) of the same host is not the client.
	intruder := udpSocket(t)
	if _, _, ok := exchange(t, intruder, relay, Addr{IP: echo.Addr(), Port: echo.Port()}, "sneak", 300*time.Millisecond); ok {
		t.Fatal("a datagram from another port was relayed")
	}
	// The association ends with its control connection.
	control.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, ok := exchange(t, client, relay, Addr{IP: echo.Addr(), Port: echo.Port()}, "after", 200*time.Millisecond); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("still relayed after the control connection closed")
		}
	}
	s.Close()
	testutil.CheckGoroutines(t, base)
}

func TestUDPAssociateWithoutDeclaredPort(t *testing.T) {
	echo := udpEchoServer(t).LocalAddr().(*net.UDPAddr).AddrPort()
	s := startSOCKS(t, nil, true)
	control, bound, err := socksDial(t, s.addr, nil, cmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()})
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	relay := netip.AddrPortFrom(bound.IP, bound.Port)
	first, second := udpSocket(t), udpSocket(t)
	// The first port the client's IP sends from becomes the association's.
	if _, data, ok := exchange(t, first, relay, Addr{IP: echo.Addr(), Port: echo.Port()}, "one", 5*time.Second); !ok || data != "ECHO one" {
		t.Fatalf("first datagram: %q %v", data, ok)
	}
	if _, _, ok := exchange(t, second, relay, Addr{IP: echo.Addr(), Port: echo.Port()}, "two", 300*time.Millisecond); ok {
		t.Fatal("a second port rode the same association")
	}
}

func TestUDPAnswersOnlyFromDestinations(t *testing.T) {
	s := startSOCKS(t, nil, true)
	client := udpSocket(t)
	port := client.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	// The association's socket inside is learned from the echo's view.
	var inside netip.AddrPort
	spy, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer4, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	control, bound, err := socksDial(t, s.addr, nil, cmdUDPAssociate, Addr{IP: netip.IPv4Unspecified(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	relay := netip.AddrPortFrom(bound.IP, bound.Port)
	client.WriteToUDPAddrPort(appendDatagram(nil, Addr{IP: peer4, Port: spy.LocalAddr().(*net.UDPAddr).AddrPort().Port()}, []byte("who")), relay)
	spy.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	if _, inside, err = spy.ReadFromUDPAddrPort(buf); err != nil {
		t.Fatal(err)
	}
	// A third party that knows the association's address gets nothing through.
	stranger := udpSocket(t)
	stranger.WriteToUDPAddrPort([]byte("unsolicited"), inside)
	// The spy, which the client did send to, does.
	spy.WriteToUDPAddrPort([]byte("answer"), inside)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := client.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	_, data, _ := parseDatagram(buf[:n])
	if string(data) != "answer" {
		t.Fatalf("got %q first", data)
	}
}

// udpEchoServer answers each datagram with "ECHO " + the datagram, on ip
// (the peer's address unless said otherwise).
func udpEchoServer(t *testing.T, ip ...netip.Addr) *net.UDPConn {
	on := peer4
	if len(ip) > 0 {
		on = ip[0]
	}
	return testutil.UDPEcho(t, netip.AddrPortFrom(on, 0), func(_ netip.AddrPort, data []byte) []byte {
		return append([]byte("ECHO "), data...)
	})
}
