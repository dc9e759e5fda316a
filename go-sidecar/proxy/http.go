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
// client connection: the request goes to the origin as HTTP/1.1 with its
// path alone, the Host of its target and `Connection: close`, without the
// proxy's own headers, and the answer comes back as the origin sent it but
// for `Connection: close`. Bodies, chunked or not, pass through untouched,
// but to an HTTP/1.0 client, which cannot read chunked: it gets the body
// de-chunked, ended by the close, and no interim (1xx) answers. With Auth
// set, clients must send Proxy-Authorization: Basic.
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

// values are the comma-separated values of every header name, in order.
func (h *head) values(name string) []string {
	var out []string
	for _, f := range h.fields {
		if strings.EqualFold(fieldName(f), name) {
			for _, v := range strings.Split(fieldValue(f), ",") {
				if v = strings.TrimSpace(v); v != "" {
					out = append(out, v)
				}
			}
		}
	}
	return out
}

// setHost replaces every Host header with one, first.
func (h *head) setHost(authority string) {
	fields := []string{"Host: " + authority}
	for _, f := range h.fields {
		if !strings.EqualFold(fieldName(f), "Host") {
			fields = append(fields, f)
		}
	}
	h.fields = fields
}

// hopByHop are the headers that concern one connection, not the message,
// and the proxy's own: they never travel on; neither do the ones a
// Connection header names. (Trailer is not one: it announces the fields
// of a chunked body's trailer, which pass on with the body.)
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
	"Proxy-Authenticate", "TE", "Upgrade"}

// forwarded writes the head with its first line, its end-to-end headers
// but those named in also, and `Connection: close`.
func (h *head) forwarded(first string, also ...string) []byte {
	drop := map[string]bool{}
	for _, name := range append(hopByHop, also...) {
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

// splitAbsolute takes http://[user@]host[:port]/path?query apart:
// authority is host[:port] as written (the Host the origin gets), hostport
// the address to dial (port 80 by default).
func splitAbsolute(target string) (authority, hostport, path string, err error) {
	rest := target[len("http://"):]
	authority, path = rest, "/"
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
		return "", "", "", fmt.Errorf("no host in %q", target)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", "", fmt.Errorf("bad port in %q", target)
	}
	return authority, net.JoinHostPort(host, port), path, nil
}

// forward sends one request with an absolute URI to its origin, inside, and
// its answer back.
func (p *HTTP) forward(c net.Conn, r *bufio.Reader, req *head) {
	authority, hostport, path, err := splitAbsolute(req.first[1])
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
	// RFC 9112, section 3.2.2: a proxy ignores the Host it received with an
	// absolute URI and sends the URI's own.
	req.setHost(authority)
	c.SetDeadline(time.Time{})
	// Sent as HTTP/1.1 whatever the client's version (RFC 9110, section
	// 2.5: an intermediary sends its own version); what an HTTP/1.0 client
	// cannot read is adapted on the way back.
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
	http10 := req.first[2] == "HTTP/1.0"
	answer := bufio.NewReader(out)
	var resp *head
	for {
		if resp, err = readHead(answer, false); err != nil {
			respond(c, 502, "Bad Gateway", "wg-wrap proxy: the origin's answer: "+err.Error())
			return
		}
		if !strings.HasPrefix(resp.first[1], "1") || resp.first[1] == "101" {
			break
		}
		if http10 {
			continue // HTTP/1.0 has no interim answers (RFC 9110, section 15.2)
		}
		// Interim answers (100 Continue) pass as they are; the final one follows.
		var b strings.Builder
		for _, line := range append([]string{strings.Join(resp.first[:], " ")}, resp.fields...) {
			b.WriteString(line + "\r\n")
		}
		if _, err := io.WriteString(c, b.String()+"\r\n"); err != nil {
			return
		}
	}
	first := strings.TrimRight(strings.Join(resp.first[:], " "), " ")
	codings := resp.values("Transfer-Encoding")
	if !http10 || len(codings) == 0 {
		if _, err := c.Write(resp.forwarded(first)); err != nil {
			return
		}
		if early(answer, c) != nil {
			return
		}
		answer.Discard(answer.Buffered())
		io.Copy(c, answer) // the rest, until the origin closes: spliced from out
		return
	}
	// An HTTP/1.0 client gets no Transfer-Encoding (RFC 9112, section 6.1):
	// the body de-chunked, ended by the close, and without the trailer
	// (nor the Trailer header announcing it).
	withBody := req.first[0] != "HEAD" && resp.first[1] != "204" && resp.first[1] != "304"
	if withBody && (len(codings) != 1 || !strings.EqualFold(codings[0], "chunked")) {
		respond(c, 502, "Bad Gateway", fmt.Sprintf(
			"wg-wrap proxy: the origin sent transfer-coding %q, which an HTTP/1.0 client cannot read",
			strings.Join(codings, ", ")))
		return
	}
	if _, err := c.Write(resp.forwarded(first, "Transfer-Encoding", "Trailer", "Content-Length")); err != nil {
		return
	}
	if withBody {
		if err := dechunk(c, answer); err != nil {
			p.Logf("http proxy: %s %s: the origin's chunked body: %v", req.first[0], req.first[1], err)
		}
	}
}

// dechunk copies a chunked body (RFC 9112, section 7.1) from r to w as the
// bytes it carries; the trailer section is read and dropped.
func dechunk(w io.Writer, r *bufio.Reader) error {
	line := func() (string, error) {
		b, err := r.ReadSlice('\n') // at most the reader's buffer: bounded
		if err != nil {
			return "", err
		}
		return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
	}
	for {
		text, err := line()
		if err != nil {
			return fmt.Errorf("chunk size: %w", err)
		}
		sizeText, _, _ := strings.Cut(text, ";") // chunk extensions are ignored
		size, err := strconv.ParseUint(strings.TrimRight(sizeText, " \t"), 16, 62)
		if err != nil {
			return fmt.Errorf("chunk size %q", text)
		}
		if size == 0 {
			for n := 0; ; n++ { // the trailer section, up to its blank line
				text, err := line()
				if err != nil || n > maxHeadLines {
					return fmt.Errorf("trailer section: %v", err)
				}
				if text == "" {
					return nil
				}
			}
		}
		if _, err := io.CopyN(w, r, int64(size)); err != nil {
			return err
		}
		if text, err := line(); err != nil || text != "" {
			return fmt.Errorf("no CRLF after a chunk's data: %q %v", text, err)
		}
	}
}
