package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"wg-wrap/go-sidecar/forward"
	"wg-wrap/go-sidecar/proxy"
)

// A verb carries out one request with the sockets it came with; undo (nil
// when there is nothing to undo) takes back what it did.
type verb struct {
	run      func(s *Server, req Request, files []*os.File) (reply Reply, undo func(), err error)
	min, max int // how many sockets it takes
	sockets  string
	// alone: it touches nothing the others share, and may take a while
	// (a lookup): it runs without the server's lock.
	alone bool
}

// One handler per verb, as wg's config.c has one per key.
var verbs = map[string]verb{
	"publish":    {(*Server).publish, 1, 1, "the host socket", false},
	"unpublish":  {(*Server).unpublish, 0, 0, "no socket", false},
	"socks":      {(*Server).startSOCKS, 1, 3, "a listener, then optionally a UDP relay socket and a NETLINK_SOCK_DIAG socket", false},
	"http-proxy": {(*Server).startHTTP, 1, 1, "a listener", false},
	"list":       {(*Server).list, 0, 0, "no socket", false},
	"udp-socket": {(*Server).udpSocket, 0, 0, "no socket", true},
	"resolve":    {(*Server).resolve, 0, 0, "no socket", true},
}

// handle decodes and checks one request, then carries it out.
func (s *Server) handle(msg []byte, files []*os.File) (Reply, func()) {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Reply{Error: "malformed request: " + err.Error()}, nil
	}
	v, known := verbs[req.Op]
	switch {
	case !known:
		return Reply{Error: fmt.Sprintf("unknown op %q", req.Op)}, nil
	case len(files) < v.min || len(files) > v.max:
		return Reply{Error: fmt.Sprintf("%s takes %s, got %d socket(s)", req.Op, v.sockets, len(files))}, nil
	case req.DeadlineNS != 0 && now() >= req.DeadlineNS:
		return Reply{Error: fmt.Sprintf("%s came too late: wg-wrap had stopped waiting for the answer", req.Op)}, nil
	}
	if !v.alone {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed {
			return Reply{Error: "shutting down"}, nil
		}
	}
	reply, undo, err := v.run(s, req, files)
	if err != nil {
		return Reply{Error: err.Error()}, nil
	}
	if undo == nil {
		return reply, nil
	}
	return reply, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		undo()
	}
}

// now is CLOCK_MONOTONIC, the clock of the requests' deadlines (the same
// in every process: Python's time.monotonic_ns()).
func now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now().UnixNano() // never: CLOCK_MONOTONIC always exists
	}
	return ts.Nano()
}

// published is one published port.
type published struct {
	proto string
	host  netip.AddrPort
	port  uint16
	srv   server
}

func (s *Server) publish(req Request, files []*os.File) (Reply, func(), error) {
	if req.Port == 0 {
		return Reply{}, nil, errors.New("publish: no port inside")
	}
	logf := s.logger.Errorf
	var p *published
	switch req.Proto {
	case "tcp":
		l, err := tcpListener(files[0])
		if err != nil {
			return Reply{}, nil, fmt.Errorf("publish: %w", err)
		}
		fw := forward.NewTCP(l, req.Port, logf)
		p = &published{proto: "tcp", host: fw.Addr(), port: req.Port, srv: fw}
	case "udp":
		u, err := udpSocket(files[0])
		if err != nil {
			return Reply{}, nil, fmt.Errorf("publish: %w", err)
		}
		fw, err := forward.NewUDP(u, req.Port, 0, logf)
		if err != nil {
			u.Close()
			return Reply{}, nil, err
		}
		p = &published{proto: "udp", host: fw.Addr(), port: req.Port, srv: fw}
	default:
		return Reply{}, nil, fmt.Errorf("publish: unknown protocol %q", req.Proto)
	}
	s.published = append(s.published, p)
	s.run(p.srv, fmt.Sprintf("published port %v/%s", p.host, p.proto))
	s.logger.Verbosef("published %v/%s -> %d", p.host, p.proto, p.port)
	undo := func() { s.remove(p.proto, p.host.Port()) }
	return Reply{Listening: []string{p.host.String()}}, undo, nil
}

func (s *Server) unpublish(req Request, _ []*os.File) (Reply, func(), error) {
	return Reply{Removed: s.remove(req.Proto, req.HostPort)}, nil, nil
}

// remove stops what is published on host port hostPort/proto; it returns
// how many it stopped.
func (s *Server) remove(proto string, hostPort uint16) int {
	kept := s.published[:0]
	var removed []*published
	for _, p := range s.published {
		if p.proto == proto && p.host.Port() == hostPort {
			removed = append(removed, p)
		} else {
			kept = append(kept, p)
		}
	}
	s.published = kept
	for _, p := range removed {
		p.srv.Close() // stops listening, ends its connections and sessions
		s.logger.Verbosef("unpublished %v/%s", p.host, p.proto)
	}
	return len(removed)
}

func (s *Server) startSOCKS(req Request, files []*os.File) (Reply, func(), error) {
	if s.socks != nil {
		return Reply{}, nil, errors.New("the SOCKS5 proxy is already running")
	}
	l, err := tcpListener(files[0])
	if err != nil {
		return Reply{}, nil, fmt.Errorf("socks: %w", err)
	}
	p := &proxy.SOCKS5{Auth: credentials(req), Logf: s.logger.Verbosef}
	at := []string{l.Addr().String()}
	if len(files) >= 2 {
		if p.Relay, err = udpSocket(files[1]); err != nil {
			l.Close()
			return Reply{}, nil, fmt.Errorf("socks relay: %w", err)
		}
		at = append(at, p.Relay.LocalAddr().String())
	}
	if len(files) == 3 { // without it, UDP ASSOCIATE is refused
		if p.Owners, err = proxy.NewOwners(files[2]); err != nil {
			l.Close()
			p.Relay.Close()
			return Reply{}, nil, fmt.Errorf("socks sock_diag socket: %w", err)
		}
	}
	s.socks, s.socksAt = p, at
	s.run(socksServer{p, l}, "SOCKS5 proxy")
	s.logger.Verbosef("SOCKS5 proxy on %v (authentication: %v)", at, p.Auth != nil)
	undo := func() {
		if s.socks == p {
			s.socks, s.socksAt = nil, nil
			p.Close()
		}
	}
	return Reply{Listening: at}, undo, nil
}

func (s *Server) startHTTP(req Request, files []*os.File) (Reply, func(), error) {
	if s.http != nil {
		return Reply{}, nil, errors.New("the HTTP proxy is already running")
	}
	l, err := tcpListener(files[0])
	if err != nil {
		return Reply{}, nil, fmt.Errorf("http-proxy: %w", err)
	}
	h := &proxy.HTTP{Auth: credentials(req), Logf: s.logger.Verbosef}
	s.http, s.httpAt = h, l.Addr().String()
	s.run(httpServer{h, l}, "HTTP proxy")
	s.logger.Verbosef("HTTP proxy on %v (authentication: %v)", s.httpAt, h.Auth != nil)
	undo := func() {
		if s.http == h {
			s.http, s.httpAt = nil, ""
			h.Close()
		}
	}
	return Reply{Listening: []string{s.httpAt}}, undo, nil
}

func (s *Server) list(Request, []*os.File) (Reply, func(), error) {
	var r Reply
	for _, p := range s.published {
		r.Published = append(r.Published, fmt.Sprintf("%s %v %d", p.proto, p.host, p.port))
	}
	sort.Strings(r.Published)
	if s.socks != nil {
		r.SOCKS = s.socksAt
	}
	if s.http != nil {
		r.HTTP = s.httpAt
	}
	return r, nil, nil
}

// run serves srv until it is closed; a server that fails on its own is
// logged (it stays in the list until unpublished).
func (s *Server) run(srv server, what string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(); err != nil {
			s.logger.Errorf("%s stopped: %v", what, err)
		}
	}()
}

func credentials(req Request) *proxy.Credentials {
	if req.User == "" && req.Password == "" {
		return nil
	}
	return &proxy.Credentials{User: req.User, Password: req.Password}
}
