package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"
)

func startHTTP(t *testing.T, auth *Credentials) (*HTTP, string, chan string) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan string, 100)
	p := &HTTP{Auth: auth, Logf: t.Logf}
	p.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		dialed <- address
		host, port, _ := net.SplitHostPort(address)
		if host == "origin.test" {
			address = net.JoinHostPort("127.0.0.1", port)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(l) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, l.Addr().String(), dialed
}

// origin answers with what it received: the request line and headers.
func origin(t *testing.T) netip.AddrPort {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s host=%s\n", r.Method, r.RequestURI, r.Host)
		for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "X-Forwarded-For", "Accept-Encoding"} {
			fmt.Fprintf(w, "%s=%q\n", h, r.Header.Get(h))
		}
	}))
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
}

func basic(c *Credentials) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.User+":"+c.Password))
}

func TestHTTPAbsoluteURIWithBasicAuth(t *testing.T) {
	o := origin(t)
	_, addr, dialed := startHTTP(t, testAuth)
	proxyURL := &url.URL{Scheme: "http", Host: addr, User: url.UserPassword(testAuth.User, testAuth.Password)}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL), DisableCompression: true}, Timeout: 10 * time.Second}
	target := fmt.Sprintf("http://origin.test:%d/path?q=1", o.Port())
	resp, err := client.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	if resp.StatusCode != 200 || !strings.Contains(text, "GET /path?q=1 host=origin.test:") {
		t.Fatalf("%d %s", resp.StatusCode, text)
	}
	// The proxy's own headers stay with the proxy; it adds no X-Forwarded-For.
	for _, h := range []string{`Proxy-Authorization=""`, `X-Forwarded-For=""`, `Accept-Encoding=""`} {
		if !strings.Contains(text, h) {
			t.Errorf("origin saw %s", text)
		}
	}
	if got := <-dialed; got != fmt.Sprintf("origin.test:%d", o.Port()) {
		t.Fatalf("dialed %q: the name must be resolved inside", got)
	}
	// Without credentials, or with wrong ones: 407 and a challenge.
	for _, user := range []*url.Userinfo{nil, url.UserPassword("alice", "wrong")} {
		u := &url.URL{Scheme: "http", Host: addr, User: user}
		c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u)}, Timeout: 10 * time.Second}
		resp, err := c.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusProxyAuthRequired || !strings.HasPrefix(resp.Header.Get("Proxy-Authenticate"), "Basic") {
			t.Fatalf("%v: %d %v", user, resp.StatusCode, resp.Header)
		}
	}
}

func TestHTTPConnect(t *testing.T) {
	echo := echoServer(t)
	base := runtime.NumGoroutine()
	p, addr, _ := startHTTP(t, testAuth)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// The first bytes for the tunnel come in the same write as the request.
	fmt.Fprintf(c, "CONNECT origin.test:%d HTTP/1.1\r\nHost: origin.test:%d\r\nProxy-Authorization: %s\r\n\r\nearly bytes|", echo.Port(), echo.Port(), basic(testAuth))
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	io.WriteString(c, "late bytes")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "early bytes|late bytes" {
		t.Fatalf("echoed %q, %v", got, err)
	}
	c.Close()
	p.Close()
	checkGoroutines(t, base)
}

func TestHTTPRefusals(t *testing.T) {
	_, addr, _ := startHTTP(t, nil)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		request string
		status  int
	}{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", http.StatusBadRequest},                                   // not a proxy request
		{"CONNECT " + closed + " HTTP/1.1\r\nHost: " + closed + "\r\n\r\n", http.StatusBadGateway},     // refused inside
		{"GET http://" + closed + "/ HTTP/1.1\r\nHost: " + closed + "\r\n\r\n", http.StatusBadGateway}, // refused inside
		{"GET ftp://example.test/ HTTP/1.1\r\nHost: example.test\r\n\r\n", http.StatusBadRequest},      // http only
		{"CONNECT nohostport HTTP/1.1\r\nHost: nohostport\r\n\r\n", http.StatusBadRequest},             // needs a port
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, tc.request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != tc.status {
			t.Errorf("%q: %v %v, want %d", tc.request, resp, err, tc.status)
		}
	}
}
