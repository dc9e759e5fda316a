package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"wg-wrap/go-sidecar/internal/testutil"
)

func TestCheckDestination(t *testing.T) {
	for _, refused := range []string{
		"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::", "::ffff:0.0.0.0",
		"0.1.2.3", "224.0.0.251", "ff02::1", "ff05::1:3",
	} {
		if err := checkDestination(netip.MustParseAddr(refused)); err == nil {
			t.Errorf("%s: allowed", refused)
		}
	}
	for _, allowed := range []string{"10.99.0.1", "fd00:99::1", "192.0.2.1", "2001:db8::1", "::127.0.0.1", "1.0.0.0"} {
		if err := checkDestination(netip.MustParseAddr(allowed)); err != nil {
			t.Errorf("%s: %v", allowed, err)
		}
	}
}

// wildcardServer listens on every address of the namespace, loopback
// included, on one port (IPv4 and IPv6): whatever the proxy dials of the
// namespace itself would land here, and accepted counts it. It answers
// each connection with an HTTP response once it has read a request head.
func wildcardServer(t *testing.T) (uint16, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "[::]:0") // dual-stack
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
				c.SetDeadline(time.Now().Add(10 * time.Second))
				readHead(bufio.NewReader(c), true)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
			}()
		}
	}()
	return uint16(l.Addr().(*net.TCPAddr).Port), accepted
}

// toItself are the ways a request can name the namespace itself, on port.
func toItself(port uint16) []Addr {
	var out []Addr
	for _, ip := range []string{"127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"} {
		out = append(out, Addr{IP: netip.MustParseAddr(ip), Port: port})
	}
	// names: through /etc/hosts, and through the tunnel's DNS
	return append(out, Addr{Name: "localhost", Port: port}, Addr{Name: "loopback.test", Port: port})
}

func TestSOCKS5ConnectNeverReachesTheNamespaceItself(t *testing.T) {
	port, accepted := wildcardServer(t)
	s := startSOCKS(t, nil, false)
	for _, dst := range toItself(port) {
		_, _, err := socksDial(t, s.addr, nil, cmdConnect, dst)
		if err == nil || err.Error() != fmt.Sprintf("reply %d", repNotAllowed) {
			t.Errorf("CONNECT %v: %v, want reply %d (not allowed)", dst, err, repNotAllowed)
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections reached the namespace's own listener", n)
	}
	// The same port at the peer's address is reached.
	c, _, err := socksDial(t, s.addr, nil, cmdConnect, Addr{Name: "echo.test", Port: port})
	if err != nil {
		t.Fatalf("CONNECT to the peer: %v", err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" || accepted.Load() != 1 {
		t.Fatalf("through the peer's address: %q, %d connections", got, accepted.Load())
	}
}

func TestHTTPProxyNeverReachesTheNamespaceItself(t *testing.T) {
	port, accepted := wildcardServer(t)
	_, addr, _ := startHTTP(t, nil)
	ask := func(request string) (int, string) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, request)
		r := bufio.NewReader(c)
		method, _, _ := strings.Cut(request, " ")
		resp, err := http.ReadResponse(r, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%q: %v", request, err)
		}
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, dst := range toItself(port) {
		for _, request := range []string{
			fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", dst, dst),
			fmt.Sprintf("GET http://%s/ HTTP/1.1\r\nHost: %s\r\n\r\n", dst, dst),
		} {
			if status, body := ask(request); status != http.StatusForbidden {
				t.Errorf("%q: %d %q, want 403", request, status, body)
			}
		}
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("%d connections reached the namespace's own listener", n)
	}
	peer := net.JoinHostPort("origin.test", strconv.Itoa(int(port)))
	if status, body := ask("GET http://" + peer + "/ HTTP/1.1\r\nHost: x\r\n\r\n"); status != 200 || body != "hello" {
		t.Fatalf("GET through the peer's address: %d %q", status, body)
	}
}

func TestUDPAssociateNeverReachesTheNamespaceItself(t *testing.T) {
	var received atomic.Int32
	echo := testutil.UDPEcho(t, netip.MustParseAddrPort("[::]:0"), func(_ netip.AddrPort, data []byte) []byte {
		received.Add(1)
		return append([]byte("ECHO "), data...)
	})
	port := echo.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	s := startSOCKS(t, nil, true)
	client := udpSocket(t)
	control, bound, err := socksDial(t, s.addr, nil, cmdUDPAssociate,
		Addr{IP: netip.IPv4Unspecified(), Port: client.LocalAddr().(*net.UDPAddr).AddrPort().Port()})
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	relay := netip.AddrPortFrom(bound.IP, bound.Port)
	for _, dst := range toItself(port) {
		if _, data, ok := exchange(t, client, relay, dst, "to itself", 300*time.Millisecond); ok {
			t.Errorf("%v: answered %q", dst, data)
		}
	}
	// Through the peer's address: relayed, and the only datagram that came.
	if _, data, ok := exchange(t, client, relay, Addr{Name: "echo.test", Port: port}, "to the peer", 5*time.Second); !ok || data != "ECHO to the peer" {
		t.Fatalf("through the peer's address: %q %v", data, ok)
	}
	if n := received.Load(); n != 1 {
		t.Fatalf("the namespace's own socket received %d datagrams, want only the one sent to the peer's address", n)
	}
}

// Close cancels a dial in flight: the proxy's shutdown (and wg-wrap down)
// must not wait DialTimeout for a destination that never answers.
func TestCloseCancelsADialInFlight(t *testing.T) {
	silent := testutil.SilentListener(t, peer4)
	for _, proxy := range []string{"socks5", "http"} {
		t.Run(proxy, func(t *testing.T) {
			var closeProxy func()
			var addr string
			var request []byte
			switch proxy {
			case "socks5":
				s := startSOCKS(t, nil, false)
				closeProxy, addr = func() { s.Close() }, s.addr.String()
				// greeting, then CONNECT; the answers are not read
				request = appendAddr([]byte{5, 1, methodNoAuth, 5, cmdConnect, 0}, Addr{IP: silent.Addr(), Port: silent.Port()})
			case "http":
				var p *HTTP
				p, addr, _ = startHTTP(t, nil)
				closeProxy = func() { p.Close() }
				request = fmt.Appendf(nil, "CONNECT %v HTTP/1.1\r\nHost: %v\r\n\r\n", silent, silent)
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(request)
			testutil.WaitSynSent(t, silent)
			start := time.Now()
			closeProxy()
			if took := time.Since(start); took > time.Second {
				t.Fatalf("Close took %v with a dial in flight", took)
			}
		})
	}
}
