package proxy

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"wg-wrap/go-sidecar/internal/testutil"
)

func startHTTP(t *testing.T, auth *Credentials) (*HTTP, string, *fakeDNS) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	resolver, dns := testResolver(testNames)
	p := &HTTP{Auth: auth, Logf: t.Logf, Resolver: resolver}
	done := make(chan error, 1)
	go func() { done <- p.Serve(l) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, l.Addr().String(), dns
}

// listenPeer listens on the peer's address, the far side of the tunnel.
func listenPeer(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(peer4, 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// origin answers with what it received: the request line and headers.
func origin(t *testing.T) netip.AddrPort {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s host=%s\n", r.Method, r.RequestURI, r.Host)
		for _, h := range []string{"Proxy-Authorization", "Proxy-Connection", "X-Forwarded-For", "Accept-Encoding"} {
			fmt.Fprintf(w, "%s=%q\n", h, r.Header.Get(h))
		}
	}))
	srv.Listener.Close()
	srv.Listener = listenPeer(t)
	srv.Start()
	t.Cleanup(srv.Close)
	return netip.MustParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
}

func basic(c *Credentials) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.User+":"+c.Password))
}

func TestHTTPAbsoluteURIWithBasicAuth(t *testing.T) {
	o := origin(t)
	_, addr, dns := startHTTP(t, testAuth)
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
	if dns.Asked("origin.test") == 0 {
		t.Fatal("the tunnel's DNS was not asked for origin.test: the name must be resolved inside")
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
	testutil.CheckGoroutines(t, base)
}

func TestHTTPRefusals(t *testing.T) {
	_, addr, _ := startHTTP(t, nil)
	l := listenPeer(t)
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

func TestSplitAbsolute(t *testing.T) {
	for target, want := range map[string][3]string{
		"http://origin.test/a?b":          {"origin.test", "origin.test:80", "/a?b"},
		"http://origin.test":              {"origin.test", "origin.test:80", "/"},
		"HTTP://origin.test:8080?x=1":     {"origin.test:8080", "origin.test:8080", "/?x=1"},
		"http://user:pw@origin.test:81/p": {"origin.test:81", "origin.test:81", "/p"},
		"http://[::1]:8080/v6":            {"[::1]:8080", "[::1]:8080", "/v6"},
		"http://[::1]/v6":                 {"[::1]", "[::1]:80", "/v6"},
	} {
		authority, hostport, path, err := splitAbsolute(target)
		if err != nil || [3]string{authority, hostport, path} != want {
			t.Errorf("splitAbsolute(%q) = %q, %q, %q, %v; want %q", target, authority, hostport, path, err, want)
		}
	}
	for _, bad := range []string{"http:///nohost", "http://origin.test:0/", "http://origin.test:99999/"} {
		if _, _, _, err := splitAbsolute(bad); err == nil {
			t.Errorf("splitAbsolute(%q) accepted", bad)
		}
	}
}

// rawOrigin answers one request with what it read (head and body), after an
// optional interim answer.
func rawOrigin(t *testing.T, interim bool) netip.AddrPort {
	t.Helper()
	l := listenPeer(t)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		req, err := readHead(r, true)
		if err != nil {
			return
		}
		body := make([]byte, 0, 64)
		if req.get("Transfer-Encoding") == "chunked" {
			for line, err := r.ReadString('\n'); err == nil; line, err = r.ReadString('\n') {
				body = append(body, line...)
				if line == "0\r\n" {
					r.ReadString('\n')
					break
				}
			}
		}
		if interim {
			io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		text := strings.Join(append([]string{strings.Join(req.first[:], " ")}, req.fields...), "\n") +
			"\nbody=" + strconv.Quote(string(body)) + "\n"
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Origin: yes\r\n\r\n%s", text)
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestHTTPForwardsHeadersBodiesAndInterimAnswers(t *testing.T) {
	o := rawOrigin(t, true)
	_, addr, _ := startHTTP(t, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "POST http://origin.test:%d/up HTTP/1.1\r\nHost: origin.test:%d\r\n"+
		"Connection: keep-alive, X-Hop\r\nX-Hop: gone\r\nProxy-Connection: keep-alive\r\n"+
		"X-Kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", o.Port(), o.Port())
	got, err := io.ReadAll(c) // the proxy closes after the answer
	if err != nil {
		t.Fatal(err)
	}
	text := string(got)
	for _, want := range []string{
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", "X-Origin: yes\r\n", "Connection: close\r\n",
		fmt.Sprintf("POST /up HTTP/1.1\nHost: origin.test:%d\nX-Kept: yes\nTransfer-Encoding: chunked\nConnection: close\n", o.Port()),
		`body="5\r\nhello\r\n0\r\n"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %q in:\n%s", want, text)
		}
	}
	for _, gone := range []string{"X-Hop", "Proxy-Connection", "keep-alive", "Keep-Alive"} {
		if strings.Contains(text, gone) {
			t.Errorf("%q travelled on:\n%s", gone, text)
		}
	}
}

func TestHTTPRefusesMalformedHeads(t *testing.T) {
	_, addr, _ := startHTTP(t, nil)
	for _, request := range []string{
		"GET http://origin.test/\r\n\r\n",                                                   // no version
		"GET http://origin.test/ SPDY/3\r\n\r\n",                                            // not HTTP/1.x
		"GET http://origin.test/ HTTP/1.1\r\n folded: x\r\n\r\n",                            // obsolete line folding
		"GET http://origin.test/ HTTP/1.1\r\nno colon\r\n\r\n",                              // not a header
		"GET http://origin.test/ HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 300) + "\r\n", // too long
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, request)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		c.Close()
		if err != nil || resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%q: %v %v, want 400", request[:min(len(request), 40)], resp, err)
		}
	}
}

func FuzzReadHead(f *testing.F) {
	f.Add([]byte("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nX: y\r\n\r\nbody"), false)
	f.Add([]byte("CONNECT a:1 HTTP/1.0\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, request bool) {
		h, err := readHead(bufio.NewReader(strings.NewReader(string(data))), request)
		if err != nil {
			return
		}
		if !strings.HasPrefix(h.first[map[bool]int{true: 2, false: 0}[request]], "HTTP/1.") {
			t.Fatalf("accepted a head that is not HTTP/1.x: %q", h.first)
		}
		for _, f := range h.fields {
			if strings.ContainsAny(f, "\r\n") || !strings.Contains(f, ":") {
				t.Fatalf("accepted header line %q", f)
			}
		}
		out := string(h.forwarded("X"))
		if !strings.HasSuffix(out, "Connection: close\r\n\r\n") || strings.Count(out, "\r\n\r\n") != 1 {
			t.Fatalf("forwarded head %q", out)
		}
	})
}

// ask sends one raw request to the proxy at addr and returns all it answers
// (the proxy closes after one answer).
func ask(t *testing.T, addr, request string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, request)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

// The origin gets the Host of the URI it is asked for, whatever Host the
// client sent (RFC 9112, section 3.2.2): one Host, first.
func TestHTTPHostIsTheTargetsAuthority(t *testing.T) {
	_, addr, _ := startHTTP(t, nil)
	for _, tc := range []struct{ uri, hosts, want string }{
		{"http://origin.test:PORT/a", "Host: evil.test\r\n", "origin.test:PORT"},
		{"http://u:pw@origin.test:PORT/", "Host: evil.test\r\nHost: other.test\r\n", "origin.test:PORT"},
		{"http://PEER:PORT/", "host: evil.test\r\n", "PEER:PORT"},
		{"http://origin.test:PORT/", "", "origin.test:PORT"},
	} {
		o := rawOrigin(t, false)
		fill := strings.NewReplacer("PORT", strconv.Itoa(int(o.Port())), "PEER", peer4.String()).Replace
		uri := fill(tc.uri)
		text := ask(t, addr, "GET "+uri+" HTTP/1.1\r\nX-Before: 1\r\n"+tc.hosts+"X-After: 2\r\n\r\n")
		want := "\nHost: " + fill(tc.want) + "\nX-Before: 1\nX-After: 2\nConnection: close\n"
		if !strings.Contains(text, want) || strings.Contains(text, "evil") || strings.Contains(text, "other") {
			t.Errorf("%s with %q: the origin saw\n%s\nwant %q", uri, tc.hosts, text, want)
		}
	}
}

// chunkingOrigin answers one request with a chunked body and a trailer,
// announced by a Trailer header, after an interim 100 Continue.
func chunkingOrigin(t *testing.T) netip.AddrPort {
	t.Helper()
	l := listenPeer(t)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := readHead(bufio.NewReader(c), true); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nX-Origin: yes\r\n\r\n"+
			"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: 42\r\n\r\n")
	}()
	return netip.MustParseAddrPort(l.Addr().String())
}

func TestHTTP11ClientsGetTheChunkedBodyAndItsTrailerAsSent(t *testing.T) {
	o := chunkingOrigin(t)
	_, addr, _ := startHTTP(t, nil)
	text := ask(t, addr, fmt.Sprintf("GET http://origin.test:%d/ HTTP/1.1\r\n\r\n", o.Port()))
	want := "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" +
		"Trailer: X-Checksum\r\nX-Origin: yes\r\nConnection: close\r\n\r\n" +
		"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Checksum: 42\r\n\r\n"
	if text != want {
		t.Fatalf("got\n%q\nwant\n%q", text, want)
	}
}

// An HTTP/1.0 client cannot read chunked (RFC 9112, section 6.1) nor
// interim answers: it gets the body de-chunked, ended by the close.
func TestHTTP10ClientsGetTheBodyDechunked(t *testing.T) {
	o := chunkingOrigin(t)
	_, addr, _ := startHTTP(t, nil)
	text := ask(t, addr, fmt.Sprintf("GET http://origin.test:%d/ HTTP/1.0\r\n\r\n", o.Port()))
	want := "HTTP/1.1 200 OK\r\nX-Origin: yes\r\nConnection: close\r\n\r\nhello, world"
	if text != want {
		t.Fatalf("got\n%q\nwant\n%q", text, want)
	}
}

// The same with net/http as the origin, which chunks an answer of unknown
// length to an HTTP/1.1 request, as the proxy sends it.
func TestHTTP10ClientsAndARealChunkingOrigin(t *testing.T) {
	body := strings.Repeat("0123456789abcdef", 4096) // 64 KiB, flushed in pieces
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < len(body); i += 10000 {
			io.WriteString(w, body[i:min(i+10000, len(body))])
			w.(http.Flusher).Flush()
		}
	}))
	srv.Listener.Close()
	srv.Listener = listenPeer(t)
	srv.Start()
	t.Cleanup(srv.Close)
	_, addr, _ := startHTTP(t, nil)
	port := netip.MustParseAddrPort(srv.Listener.Addr().String()).Port()
	for _, version := range []string{"HTTP/1.0", "HTTP/1.1"} {
		text := ask(t, addr, fmt.Sprintf("GET http://origin.test:%d/ %s\r\n\r\n", port, version))
		head, got, _ := strings.Cut(text, "\r\n\r\n")
		chunked := strings.Contains(head, "Transfer-Encoding: chunked")
		switch {
		case version == "HTTP/1.1" && !chunked:
			t.Fatalf("the origin did not chunk: %q", head)
		case version == "HTTP/1.0" && (chunked || got != body):
			t.Fatalf("HTTP/1.0: head %q, %d bytes of body (want %d, not chunked)", head, len(got), len(body))
		}
	}
}

func TestDechunk(t *testing.T) {
	for in, want := range map[string]string{
		"5\r\nhello\r\n0\r\n\r\n":                    "hello",
		"A;name=value\r\n0123456789\r\n0\r\n\r\n":    "0123456789",
		"3 \r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n": "abc",
		"0\r\n\r\nafter":                             "",
	} {
		var out strings.Builder
		if err := dechunk(&out, bufio.NewReader(strings.NewReader(in))); err != nil || out.String() != want {
			t.Errorf("%q: %q, %v; want %q", in, out.String(), err, want)
		}
	}
	for _, bad := range []string{
		"", "zz\r\n", "-1\r\n", "0x5\r\nhello\r\n0\r\n\r\n", "5\r\nhelloX\r\n0\r\n\r\n", "5\r\nhel",
		"FFFFFFFFFFFFFFFFFF\r\n", "0\r\nX-A: 1\r\n",
	} {
		var out strings.Builder
		if err := dechunk(&out, bufio.NewReader(strings.NewReader(bad))); err == nil {
			t.Errorf("%q: accepted, gave %q", bad, out.String())
		}
	}
}
