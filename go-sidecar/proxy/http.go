package proxy

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"time"

	"wg-wrap/go-sidecar/forward"
)

// HTTP is an HTTP proxy: CONNECT (any TCP port, the bytes then relayed
// as they are) and requests with an absolute http:// URI, forwarded with
// net/http's reverse proxy. With Auth set, clients must send
// Proxy-Authorization: Basic.
type HTTP struct {
	Auth *Credentials // nil: no authentication
	Dial DialFunc     // nil: net.Dialer with DialTimeout
	Logf func(format string, args ...any)

	mu        sync.Mutex // guards server and closed
	server    *http.Server
	closed    bool
	forwarder *httputil.ReverseProxy
	transport *http.Transport
	group     forward.Group // tunnels made by CONNECT, which the server no longer tracks
}

// Serve answers clients on l until Close; it returns nil then, or the
// error that stopped it. It may be called once.
func (p *HTTP) Serve(l *net.TCPListener) error {
	if p.Dial == nil {
		p.Dial = (&net.Dialer{Timeout: DialTimeout}).DialContext
	}
	if p.Logf == nil {
		p.Logf = func(string, ...any) {}
	}
	p.transport = &http.Transport{
		DialContext: p.Dial,
		Proxy:       nil, // never a proxy of its own, whatever the environment says
		// The client's Accept-Encoding and the origin's encoding pass
		// through untouched.
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		MaxIdleConns:          64,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: 0, // a slow origin is the client's business
	}
	p.forwarder = &httputil.ReverseProxy{
		// The request goes where its absolute URI says. Rewrite (rather than
		// Director) also drops any X-Forwarded-* header and adds none: the
		// origin learns nothing about the client.
		Rewrite:      func(r *httputil.ProxyRequest) { r.Out.Host = r.In.Host },
		Transport:    p.transport,
		ErrorHandler: p.badGateway,
		ErrorLog:     log.New(io.Discard, "", 0),
	}
	server := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: HandshakeTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.Close()
		return nil
	}
	p.server = server
	p.mu.Unlock()
	err := server.Serve(l) // returns at once if Close came in between
	p.transport.CloseIdleConnections()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops the proxy and ends every connection.
func (p *HTTP) Close() error {
	p.mu.Lock()
	p.closed = true
	server := p.server
	p.mu.Unlock()
	var err error
	if server != nil {
		err = server.Close()
	}
	p.group.Close()
	return err
}

func (p *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.Auth != nil && !p.authorized(r) {
		w.Header().Set("Proxy-Authenticate", `Basic realm="wg-wrap"`)
		http.Error(w, "proxy authentication required", http.StatusProxyAuthRequired)
		return
	}
	switch {
	case r.Method == http.MethodConnect:
		p.connect(w, r)
	case r.URL.IsAbs() && r.URL.Scheme == "http" && r.URL.Host != "":
		r.Header.Del("Proxy-Authorization")
		r.Header.Del("Proxy-Connection")
		p.forwarder.ServeHTTP(w, r)
	default:
		http.Error(w, "this is a proxy: send CONNECT or an absolute http:// URI", http.StatusBadRequest)
	}
}

// authorized checks Proxy-Authorization: Basic base64(user:password).
func (p *HTTP) authorized(r *http.Request) bool {
	scheme, encoded, ok := strings.Cut(r.Header.Get("Proxy-Authorization"), " ")
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

func (p *HTTP) badGateway(w http.ResponseWriter, r *http.Request, err error) {
	p.Logf("http proxy: %s %s: %v", r.Method, r.URL, err)
	http.Error(w, "wg-wrap proxy: "+err.Error(), http.StatusBadGateway)
}

// connect serves CONNECT host:port: a TCP connection from inside, then the
// bytes both ways, spliced by the kernel.
func (p *HTTP) connect(w http.ResponseWriter, r *http.Request) {
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil || host == "" || port == "" {
		http.Error(w, "CONNECT needs host:port", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), DialTimeout)
	out, err := p.Dial(ctx, "tcp", r.Host)
	cancel()
	if err != nil {
		p.badGateway(w, r, err)
		return
	}
	hijacker, ok := w.(http.Hijacker)
	if !ok {
		out.Close()
		http.Error(w, "cannot take over the connection", http.StatusInternalServerError)
		return
	}
	client, buffered, err := hijacker.Hijack()
	if err != nil {
		out.Close()
		return
	}
	if !p.group.Add(client) || !p.group.Add(out) {
		client.Close()
		out.Close()
		return
	}
	p.group.Go(func() {
		defer p.group.Remove(client)
		defer p.group.Remove(out)
		client.SetDeadline(time.Time{})
		if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			client.Close()
			out.Close()
			return
		}
		// Bytes the client sent right after its request (a TLS ClientHello,
		// say) are already read into the server's buffer: pass them on
		// first, then let the kernel move the rest.
		if n := buffered.Reader.Buffered(); n > 0 {
			early, _ := buffered.Reader.Peek(n)
			if _, err := out.Write(early); err != nil {
				client.Close()
				out.Close()
				return
			}
		}
		forward.Pipe(client, out)
	})
}
