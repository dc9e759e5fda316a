package main

// The control socket carries wg-wrap's own verbs: publish and unpublish a
// port, start the proxy front. The UAPI socket stays pure wireguard-go
// protocol, so that wg-style tools keep working on it.
//
// It is a SOCK_SEQPACKET unix socket wg-wrap binds on the host (an abstract
// address of the host's network namespace) and hands over; only the user's
// own processes are served (acceptOwn). Each request is one message: a JSON object, with the
// host sockets it hands over attached as SCM_RIGHTS; each answer is one
// JSON object, {"error": "..."} on failure.
//
//	{"op": "publish", "proto": "tcp"|"udp", "port": 80}     + the host socket
//	{"op": "unpublish", "proto": "tcp"|"udp", "host_port": 8080}
//	{"op": "socks", "user": "...", "password": "..."}        + listener [+ UDP relay socket + NETLINK_SOCK_DIAG socket]
//	{"op": "http-proxy", "user": "...", "password": "..."}   + listener
//	{"op": "list"}

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/forward"
	"wg-wrap/go-sidecar/proxy"
)

const (
	maxControlMessage = 64 << 10
	maxControlFDs     = 4
)

type controlRequest struct {
	Op       string `json:"op"`
	Proto    string `json:"proto,omitempty"`
	Port     uint16 `json:"port,omitempty"`
	HostPort uint16 `json:"host_port,omitempty"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
}

type controlReply struct {
	Error     string   `json:"error,omitempty"`
	Listening []string `json:"listening,omitempty"` // what a publish or proxy listens on
	Removed   int      `json:"removed,omitempty"`
	Published []string `json:"published,omitempty"` // "tcp 127.0.0.1:8080 80"
	SOCKS     []string `json:"socks,omitempty"`
	HTTP      string   `json:"http,omitempty"`
}

// server is what the sidecar serves on a host socket.
type server interface {
	Serve() error
	Close() error
}

// published is one published port.
type published struct {
	proto string
	host  netip.AddrPort
	port  uint16
	srv   server
}

// control serves the control socket and owns everything it started.
type control struct {
	listener *net.UnixListener
	logger   *device.Logger
	errs     chan error
	wg       sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	conns     map[*net.UnixConn]struct{} // control connections being served
	published []*published
	socks     *proxy.SOCKS5
	socksAt   []string
	http      *proxy.HTTP
	httpAt    string
}

// startControl serves the control socket l (a listening SOCK_SEQPACKET
// unix socket: see listenerFromEnv).
func startControl(l *net.UnixListener, logger *device.Logger) *control {
	c := &control{listener: l, logger: logger, errs: make(chan error, 1),
		conns: make(map[*net.UnixConn]struct{})}
	c.wg.Add(1)
	go c.serve()
	return c
}

// Errs reports the listener's failure; nil (never ready) on a nil control.
func (c *control) Errs() <-chan error {
	if c == nil {
		return nil
	}
	return c.errs
}

// Close stops listening and ends every published port and proxy.
func (c *control) Close() {
	if c == nil {
		return
	}
	c.listener.Close()
	c.mu.Lock()
	c.closed = true
	for conn := range c.conns {
		conn.Close() // a client that never finishes must not hold up the shutdown
	}
	var servers []server
	for _, p := range c.published {
		servers = append(servers, p.srv)
	}
	if c.socks != nil {
		servers = append(servers, socksServer{c.socks, nil})
	}
	if c.http != nil {
		servers = append(servers, httpServer{c.http, nil})
	}
	c.published, c.socks, c.http = nil, nil, nil
	c.mu.Unlock()
	for _, s := range servers {
		s.Close()
	}
	c.wg.Wait()
}

func (c *control) serve() {
	defer c.wg.Done()
	for {
		conn, err := acceptOwn(c.listener, c.logger.Errorf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				c.errs <- err
			}
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			return
		}
		c.conns[conn] = struct{}{}
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			defer func() {
				c.mu.Lock()
				delete(c.conns, conn)
				c.mu.Unlock()
				conn.Close()
			}()
			c.serveConn(conn)
		}()
	}
}

// serveConn answers the requests of one connection, one message each.
func (c *control) serveConn(conn *net.UnixConn) {
	buf := make([]byte, maxControlMessage)
	oob := make([]byte, unix.CmsgSpace(maxControlFDs*4))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return
		}
		files, ferr := receivedFiles(oob[:oobn])
		var reply controlReply
		switch {
		case ferr != nil:
			reply.Error = ferr.Error()
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			reply.Error = "request too long, or too many file descriptors"
		default:
			reply = c.handle(buf[:n], files)
		}
		for _, f := range files {
			f.Close() // servers work on their own duplicates
		}
		out, _ := json.Marshal(reply)
		if _, err := conn.Write(out); err != nil {
			return
		}
	}
}

// receivedFiles turns the SCM_RIGHTS of a message into files.
func receivedFiles(oob []byte) ([]*os.File, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.CloseOnExec(fd)
			files = append(files, os.NewFile(uintptr(fd), "received socket"))
		}
	}
	return files, nil
}

func (c *control) handle(msg []byte, files []*os.File) controlReply {
	var req controlRequest
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return controlReply{Error: "malformed request: " + err.Error()}
	}
	want := map[string]int{"publish": 1, "unpublish": 0, "socks": -1, "http-proxy": 1, "list": 0}
	n, known := want[req.Op]
	switch {
	case !known:
		return controlReply{Error: fmt.Sprintf("unknown op %q", req.Op)}
	case n >= 0 && len(files) != n:
		return controlReply{Error: fmt.Sprintf("%s takes %d socket(s), got %d", req.Op, n, len(files))}
	case n < 0 && (len(files) < 1 || len(files) > 3):
		return controlReply{Error: fmt.Sprintf("%s takes a listener, then optionally a UDP relay socket and a NETLINK_SOCK_DIAG socket, got %d", req.Op, len(files))}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return controlReply{Error: "shutting down"}
	}
	var reply controlReply
	var err error
	switch req.Op {
	case "publish":
		reply, err = c.publish(req, files[0])
	case "unpublish":
		reply, err = c.unpublish(req)
	case "socks":
		reply, err = c.startSOCKS(req, files)
	case "http-proxy":
		reply, err = c.startHTTP(req, files[0])
	case "list":
		reply = c.list()
	}
	if err != nil {
		return controlReply{Error: err.Error()}
	}
	return reply
}

func (c *control) publish(req controlRequest, f *os.File) (controlReply, error) {
	if req.Port == 0 {
		return controlReply{}, errors.New("publish: no port inside")
	}
	logf := c.logger.Errorf
	var p *published
	switch req.Proto {
	case "tcp":
		l, err := tcpListener(f)
		if err != nil {
			return controlReply{}, fmt.Errorf("publish: %w", err)
		}
		fw := forward.NewTCP(l, req.Port, logf)
		p = &published{proto: "tcp", host: fw.Addr(), port: req.Port, srv: fw}
	case "udp":
		u, err := udpSocket(f)
		if err != nil {
			return controlReply{}, fmt.Errorf("publish: %w", err)
		}
		fw, err := forward.NewUDP(u, req.Port, 0, logf)
		if err != nil {
			u.Close()
			return controlReply{}, err
		}
		p = &published{proto: "udp", host: fw.Addr(), port: req.Port, srv: fw}
	default:
		return controlReply{}, fmt.Errorf("publish: unknown protocol %q", req.Proto)
	}
	c.published = append(c.published, p)
	c.run(p.srv, fmt.Sprintf("published port %v/%s", p.host, p.proto))
	c.logger.Verbosef("published %v/%s -> %d", p.host, p.proto, p.port)
	return controlReply{Listening: []string{p.host.String()}}, nil
}

func (c *control) unpublish(req controlRequest) (controlReply, error) {
	kept := c.published[:0]
	var removed []*published
	for _, p := range c.published {
		if p.proto == req.Proto && p.host.Port() == req.HostPort {
			removed = append(removed, p)
		} else {
			kept = append(kept, p)
		}
	}
	c.published = kept
	for _, p := range removed {
		p.srv.Close() // stops listening, ends its connections and sessions
		c.logger.Verbosef("unpublished %v/%s", p.host, p.proto)
	}
	return controlReply{Removed: len(removed)}, nil
}

func (c *control) startSOCKS(req controlRequest, files []*os.File) (controlReply, error) {
	if c.socks != nil {
		return controlReply{}, errors.New("the SOCKS5 proxy is already running")
	}
	l, err := tcpListener(files[0])
	if err != nil {
		return controlReply{}, fmt.Errorf("socks: %w", err)
	}
	s := &proxy.SOCKS5{Auth: credentials(req), Logf: c.logger.Verbosef}
	at := []string{l.Addr().String()}
	if len(files) >= 2 {
		if s.Relay, err = udpSocket(files[1]); err != nil {
			l.Close()
			return controlReply{}, fmt.Errorf("socks relay: %w", err)
		}
		at = append(at, s.Relay.LocalAddr().String())
	}
	if len(files) == 3 { // without it, UDP ASSOCIATE is refused
		if s.Owners, err = proxy.NewOwners(files[2]); err != nil {
			l.Close()
			s.Relay.Close()
			return controlReply{}, fmt.Errorf("socks sock_diag socket: %w", err)
		}
	}
	c.socks, c.socksAt = s, at
	c.run(socksServer{s, l}, "SOCKS5 proxy")
	c.logger.Verbosef("SOCKS5 proxy on %v (authentication: %v)", at, s.Auth != nil)
	return controlReply{Listening: at}, nil
}

func (c *control) startHTTP(req controlRequest, f *os.File) (controlReply, error) {
	if c.http != nil {
		return controlReply{}, errors.New("the HTTP proxy is already running")
	}
	l, err := tcpListener(f)
	if err != nil {
		return controlReply{}, fmt.Errorf("http-proxy: %w", err)
	}
	h := &proxy.HTTP{Auth: credentials(req), Logf: c.logger.Verbosef}
	c.http, c.httpAt = h, l.Addr().String()
	c.run(httpServer{h, l}, "HTTP proxy")
	c.logger.Verbosef("HTTP proxy on %v (authentication: %v)", c.httpAt, h.Auth != nil)
	return controlReply{Listening: []string{c.httpAt}}, nil
}

func (c *control) list() controlReply {
	var r controlReply
	for _, p := range c.published {
		r.Published = append(r.Published, fmt.Sprintf("%s %v %d", p.proto, p.host, p.port))
	}
	sort.Strings(r.Published)
	if c.socks != nil {
		r.SOCKS = c.socksAt
	}
	if c.http != nil {
		r.HTTP = c.httpAt
	}
	return r
}

// run serves s until it is closed; a server that fails on its own is
// logged (it stays in the list until unpublished).
func (c *control) run(s server, what string) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := s.Serve(); err != nil {
			c.logger.Errorf("%s stopped: %v", what, err)
		}
	}()
}

func credentials(req controlRequest) *proxy.Credentials {
	if req.User == "" && req.Password == "" {
		return nil
	}
	return &proxy.Credentials{User: req.User, Password: req.Password}
}

// socksServer and httpServer give the proxies the server interface.
type socksServer struct {
	s *proxy.SOCKS5
	l *net.TCPListener
}

func (s socksServer) Serve() error { return s.s.Serve(s.l) }
func (s socksServer) Close() error { return s.s.Close() }

type httpServer struct {
	h *proxy.HTTP
	l *net.TCPListener
}

func (s httpServer) Serve() error { return s.h.Serve(s.l) }
func (s httpServer) Close() error { return s.h.Close() }

// tcpListener checks that f is a listening TCP socket and wraps a dup of it.
func tcpListener(f *os.File) (*net.TCPListener, error) {
	if err := checkSocket(f, unix.SOCK_STREAM, true); err != nil {
		return nil, err
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, err
	}
	tl, ok := l.(*net.TCPListener)
	if !ok {
		l.Close()
		return nil, errors.New("not a TCP listener")
	}
	return tl, nil
}

// udpSocket checks that f is a bound UDP socket and wraps a dup of it.
func udpSocket(f *os.File) (*net.UDPConn, error) {
	if err := checkSocket(f, unix.SOCK_DGRAM, false); err != nil {
		return nil, err
	}
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, err
	}
	u, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("not a UDP socket")
	}
	if u.LocalAddr().(*net.UDPAddr).Port == 0 {
		u.Close()
		return nil, errors.New("the UDP socket is not bound")
	}
	return u, nil
}

func checkSocket(f *os.File, sotype int, listening bool) error {
	// Through SyscallConn, not Fd(): Fd would make the shared file
	// description blocking.
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var domain, typ, accepting int
	if cerr := rc.Control(func(fd uintptr) {
		domain, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		accepting, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	}); cerr != nil {
		return cerr
	}
	switch {
	case err != nil:
		return fmt.Errorf("not a socket: %w", err)
	case domain != unix.AF_INET && domain != unix.AF_INET6:
		return errors.New("not an IPv4 or IPv6 socket")
	case typ != sotype:
		return fmt.Errorf("socket type %d, want %d", typ, sotype)
	case listening && accepting != 1:
		return errors.New("the socket is not listening")
	}
	return nil
}
