package proxy

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"wg-wrap/go-sidecar/forward"
)

// HTTP is an HTTP/1.1 proxy: CONNECT (to any TCP port; the bytes are then
// relayed as they are) and requests with an absolute http:// URI, one per
// client connection: the request goes to the origin with its path alone and
// `Connection: close`, without the proxy's own headers, and the answer comes
// back as the origin sent it but for `Connection: close`. Bodies, chunked or
// not, pass through untouched. With Auth set, clients must send
// Proxy-Authorization: Basic.
//
// It is written on the socket rather than with net/http, which would cost
// every sidecar ~2.7 MiB of memory from its start, proxy or not
// (docs/benchmarks.md): a proxy only needs to read one request head.
type HTTP struct {
	Auth *Credentials // nil: no authentication
	// Resolver resolves the names in requests; nil: net.DefaultResolver,
	// which inside reads the namespace's resolv.conf.
	Resolver *net.Resolver
	Logf     func(format string, args ...any)

	group  forward.Group
	dialer *dialer
}

const (
	maxHeadBytes = 64 << 10 // a request or response head, all lines together
	maxHeadLines = 200
)

// Serve answers clients on l until Close; it returns nil then, or the
// error that stopped it. It may be called once.
func (p *HTTP) Serve(l *net.TCPListener) error {
	p.dialer = newDialer(p.Resolver)
	if p.Logf == nil {
		p.Logf = func(string, ...any) {}
	}
	if !p.group.Add(l) { // closed before it started
		l.Close()
		return nil
	}
	return p.group.Serve(l, func(c *net.TCPConn) { p.handle(c) }, p.Logf)
}

// Close stops the proxy and ends every connection.
func (p *HTTP) Close() error {
	p.group.Close()
	return nil
}

// head is a request or response head: its first line and header lines.
type head struct {
	first  [3]string // method, target, version; or version, status, reason
	fields []string  // "Name: value", as sent
}

// readHead reads a head up to its blank line; a request's first line has
// three parts, a response's reason phrase may be empty.
func readHead(r *bufio.Reader, request bool) (*head, error) {
	h := &head{}
	size := 0
	for n := 0; ; n++ {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return nil, fmt.Errorf("reading the head: %w", err)
		}
		if size += len(line); size > maxHeadBytes || n > maxHeadLines {
			return nil, errors.New("head too large")
		}
		text := strings.TrimSuffix(strings.TrimSuffix(string(line), "\n"), "\r")
		if strings.ContainsAny(text, "\r\x00") {
			return nil, errors.New("a bare CR or NUL in the head")
		}
		if n == 0 {
			parts := strings.SplitN(text, " ", 3)
			if len(parts) < 2 || (request && (len(parts) != 3 || !isToken(parts[0]))) {
				return nil, fmt.Errorf("malformed first line %q", text)
			}
			copy(h.first[:], parts)
			version := h.first[2]
			if !request {
				version = h.first[0]
			}
			if !strings.HasPrefix(version, "HTTP/1.") {
				return nil, fmt.Errorf("not HTTP/1.x: %q", version)
			}
			continue
		}
		if text == "" {
			return h, nil
		}
		if name, _, ok := strings.Cut(text, ":"); !ok || !isToken(name) {
			// obsolete line folding (a leading space) included
			return nil, fmt.Errorf("malformed header line %q", text)
		}
		h.fields = append(h.fields, text)
	}
}

// isToken reports whether s is an RFC 9110 token: what a header name is.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func fieldName(field string) string {
	name, _, _ := strings.Cut(field, ":")
	return strings.TrimSpace(name)
}

func fieldValue(field string) string {
	_, value, _ := strings.Cut(field, ":")
	return strings.TrimSpace(value)
}

// get is the first value of header name.
func (h *head) get(name string) string {
	for _, f := range h.fields {
		if strings.EqualFold(fieldName(f), name) {
			return fieldValue(f)
		}
	}
	return ""
}

// hopByHop are the headers that concern one connection, not the message,
// and the proxy's own: they never travel on; neither do the ones a
// Connection header names.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "TE", "Trailer", "Upgrade"}

// forwarded writes the head with its first line, its end-to-end headers
// and `Connection: close`.
func (h *head) forwarded(first string) []byte {
	drop := map[string]bool{}
	for _, name := range hopByHop {
		drop[strings.ToLower(name)] = true
	}
	for _, f := range h.fields {
		if strings.EqualFold(fieldName(f), "Connection") {
			for _, token := range strings.Split(fieldValue(f), ",") {
				drop[strings.ToLower(strings.TrimSpace(token))] = true
			}
		}
	}
	var b strings.Builder
	b.WriteString(first + "\r\n")
	for _, f := range h.fields {
		if !drop[strings.ToLower(fieldName(f))] {
			b.WriteString(f + "\r\n")
		}
	}
	b.WriteString("Connection: close\r\n\r\n")
	return []byte(b.String())
}

func (p *HTTP) handle(c net.Conn) {
	defer p.group.Remove(c)
	defer c.Close()
	c.SetDeadline(time.Now().Add(HandshakeTimeout))
	r := bufio.NewReader(c)
	req, err := readHead(r, true)
	if err != nil {
		respond(c, 400, "Bad Request", "wg-wrap proxy: "+err.Error())
		return
	}
	if p.Auth != nil && !p.authorized(req.get("Proxy-Authorization")) {
		respond(c, 407, "Proxy Authentication Required", "proxy authentication required",
			`Proxy-Authenticate: Basic realm="wg-wrap"`)
		return
	}
	method, target := req.first[0], req.first[1]
	switch {
	case method == "CONNECT":
		p.connect(c, r, target)
	case len(target) > 7 && strings.EqualFold(target[:7], "http://"):
		p.forward(c, r, req)
	default:
		respond(c, 400, "Bad Request",
			"this is a proxy: send CONNECT or an absolute http:// URI")
	}
}

// respond sends a short answer of the proxy's own, on a connection it closes.
func respond(c net.Conn, status int, reason, body string, fields ...string) {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, reason)
	for _, f := range fields {
		b.WriteString(f + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"+
		"Connection: close\r\n\r\n%s\n", len(body)+1, body)
	io.WriteString(c, b.String())
}

// authorized checks Proxy-Authorization: Basic base64(user:password).
func (p *HTTP) authorized(value string) bool {
	scheme, encoded, ok := strings.Cut(value, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(encoded))
	if err != nil {
		return false
	}
	user, password, ok := strings.Cut(string(raw), ":")
	return ok && p.Auth.Match(user, password)
}

// dial connects to address inside; when it cannot, it answers the client
// (403 for a destination the proxy never reaches, 502 otherwise) and
// returns nil.
func (p *HTTP) dial(c net.Conn, what, address string) *net.TCPConn {
	out, err := p.dialer.dial(p.group.Context(), address)
	if err == nil {
		return out
	}
	if p.group.Context().Err() != nil {
		return nil // closing: the client's connection is being closed too
	}
	p.Logf("http proxy: %s: %v", what, err)
	if errors.Is(err, ErrNotAllowed) {
		respond(c, 403, "Forbidden", "wg-wrap proxy: "+err.Error())
	} else {
		respond(c, 502, "Bad Gateway", "wg-wrap proxy: "+err.Error())
	}
	return nil
}

// early passes on the bytes the client sent after its head, which r has
// already read (a TLS ClientHello, a request body).
func early(r *bufio.Reader, out net.Conn) error {
	if n := r.Buffered(); n > 0 {
		data, _ := r.Peek(n)
		if _, err := out.Write(data); err != nil {
			return err
		}
	}
	return nil
}

// connect serves CONNECT host:port: a TCP connection from inside, then the
// bytes both ways, spliced by the kernel.
func (p *HTTP) connect(c net.Conn, r *bufio.Reader, target string) {
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" || port == "" {
		respond(c, 400, "Bad Request", "CONNECT needs host:port")
		return
	}
	out := p.dial(c, "CONNECT "+target, target)
	if out == nil {
		return
	}
	if !p.group.Add(out) {
		out.Close()
		return
	}
	defer p.group.Remove(out)
	c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		out.Close()
		return
	}
	if early(r, out) != nil {
		out.Close()
		return
	}
	forward.Pipe(c, out)
}

// splitAbsolute takes http://[user@]host[:port]/path?query apart.
func splitAbsolute(target string) (hostport, path string, err error) {
	rest := target[len("http://"):]
	authority, path := rest, "/"
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		authority, path = rest[:i], rest[i:]
		if path[0] == '?' {
			path = "/" + path
		}
	}
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		authority = authority[i+1:]
	}
	host, port, err := net.SplitHostPort(authority)
	if err != nil { // no port
		host, port = strings.TrimSuffix(strings.TrimPrefix(authority, "["), "]"), "80"
	}
	if host == "" {
		return "", "", fmt.Errorf("no host in %q", target)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("bad port in %q", target)
	}
	return net.JoinHostPort(host, port), path, nil
}

// forward sends one request with an absolute URI to its origin, inside, and
// its answer back.
func (p *HTTP) forward(c net.Conn, r *bufio.Reader, req *head) {
	hostport, path, err := splitAbsolute(req.first[1])
	if err != nil {
		respond(c, 400, "Bad Request", "wg-wrap proxy: "+err.Error())
		return
	}
	out := p.dial(c, req.first[0]+" "+req.first[1], hostport)
	if out == nil {
		return
	}
	if !p.group.Add(out) {
		out.Close()
		return
	}
	defer p.group.Remove(out)
	defer out.Close()
	if req.get("Host") == "" {
		req.fields = append(req.fields, "Host: "+hostport)
	}
	c.SetDeadline(time.Time{})
	if _, err := out.Write(req.forwarded(req.first[0] + " " + path + " HTTP/1.1")); err != nil {
		return
	}
	if early(r, out) != nil {
		return
	}
	// The rest of the request (its body) goes on while the answer comes back.
	p.group.Go(func() {
		r.Discard(r.Buffered())
		io.Copy(out, r)
		forward.CloseWrite(out)
	})
	answer := bufio.NewReader(out)
	for {
		resp, err := readHead(answer, false)
		if err != nil {
			respond(c, 502, "Bad Gateway", "wg-wrap proxy: the origin's answer: "+err.Error())
			return
		}
		first := strings.Join(resp.first[:], " ")
		if strings.HasPrefix(resp.first[1], "1") && resp.first[1] != "101" {
			// Interim answers (100 Continue) pass as they are; the final one follows.
			var b strings.Builder
			for _, line := range append([]string{first}, resp.fields...) {
				b.WriteString(line + "\r\n")
			}
			if _, err := io.WriteString(c, b.String()+"\r\n"); err != nil {
				return
			}
			continue
		}
		if _, err := c.Write(resp.forwarded(strings.TrimRight(first, " "))); err != nil {
			return
		}
		break
	}
	if early(answer, c) != nil {
		return
	}
	answer.Discard(answer.Buffered())
	io.Copy(c, answer) // the rest, until the origin closes: spliced from out
}
