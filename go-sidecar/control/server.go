// Package control serves the sidecar's control socket: wg-wrap's own verbs
// (publish and unpublish a port, start the proxy front, list them), apart
// from UAPI, which stays pure wireguard-go protocol so that wg-style tools
// keep working on it.
//
// The socket is a SOCK_SEQPACKET unix socket wg-wrap binds on the host (an
// abstract address of the host's network namespace) and hands over; only the
// user's own processes are served (peer.AcceptOwn). Each request is one
// message: a JSON object, with the host sockets it hands over attached as
// SCM_RIGHTS; each answer is one JSON object, {"error": "..."} on failure.
//
//	{"op": "publish", "proto": "tcp"|"udp", "port": 80}     + the host socket
//	{"op": "unpublish", "proto": "tcp"|"udp", "host_port": 8080}
//	{"op": "socks", "user": "...", "password": "..."}        + listener [+ UDP relay socket + NETLINK_SOCK_DIAG socket]
//	{"op": "http-proxy", "user": "...", "password": "..."}   + listener
//	{"op": "list"}
//
// A request may say until when its client waits for the answer
// ("deadline_ns", CLOCK_MONOTONIC): one that arrives later is refused, not
// carried out, and one whose answer cannot be delivered (the client gave up
// meanwhile: a sidecar stopped with SIGSTOP and continued, say) is undone. A
// client that was told a request failed never finds it done later.
package control

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/peer"
	"wg-wrap/go-sidecar/proxy"
)

const (
	maxMessage = 64 << 10
	maxFDs     = 4
)

// Request is one control request.
type Request struct {
	Op       string `json:"op"`
	Proto    string `json:"proto,omitempty"`
	Port     uint16 `json:"port,omitempty"`
	HostPort uint16 `json:"host_port,omitempty"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Host     string `json:"host,omitempty"`   // resolve: the name
	Family   string `json:"family,omitempty"` // resolve: "ip4", or both
	// DeadlineNS is when the client stops waiting (CLOCK_MONOTONIC
	// nanoseconds); 0: it waits as long as it takes.
	DeadlineNS int64 `json:"deadline_ns,omitempty"`
}

// Reply is the answer to one request.
type Reply struct {
	Error     string   `json:"error,omitempty"`
	Listening []string `json:"listening,omitempty"` // what a publish or proxy listens on
	Removed   int      `json:"removed,omitempty"`
	Published []string `json:"published,omitempty"` // "tcp 127.0.0.1:8080 80"
	SOCKS     []string `json:"socks,omitempty"`
	HTTP      string   `json:"http,omitempty"`
	Addresses []string `json:"addresses,omitempty"` // what a resolve found

	files []*os.File // sent back with the answer (SCM_RIGHTS), then closed
}

// server is what the sidecar serves on a host socket.
type server interface {
	Serve() error
	Close() error
}

// Server serves the control socket and owns everything it started.
type Server struct {
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

// Start serves the control socket l (a listening SOCK_SEQPACKET unix socket).
func Start(l *net.UnixListener, logger *device.Logger) *Server {
	s := &Server{listener: l, logger: logger, errs: make(chan error, 1),
		conns: make(map[*net.UnixConn]struct{})}
	s.wg.Add(1)
	go s.serve()
	return s
}

// Errs reports the listener's failure.
func (s *Server) Errs() <-chan error { return s.errs }

// Close stops listening and ends every published port and proxy.
func (s *Server) Close() {
	s.listener.Close()
	s.mu.Lock()
	s.closed = true
	for conn := range s.conns {
		conn.Close() // a client that never finishes must not hold up the shutdown
	}
	var servers []server
	for _, p := range s.published {
		servers = append(servers, p.srv)
	}
	if s.socks != nil {
		servers = append(servers, socksServer{s.socks, nil})
	}
	if s.http != nil {
		servers = append(servers, httpServer{s.http, nil})
	}
	s.published, s.socks, s.http = nil, nil, nil
	s.mu.Unlock()
	for _, srv := range servers {
		srv.Close()
	}
	s.wg.Wait()
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		conn, err := peer.AcceptOwn(s.listener, s.logger.Errorf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.errs <- err
			}
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, conn)
				s.mu.Unlock()
				conn.Close()
			}()
			s.serveConn(conn)
		}()
	}
}

// serveConn answers the requests of one connection, one message each. A
// request whose answer cannot be delivered is undone.
func (s *Server) serveConn(conn *net.UnixConn) {
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		// Whatever the message, the descriptors it carried are ours to close.
		files, ferr := receivedFiles(oob[:oobn])
		if err != nil || n == 0 {
			closeAll(files)
			return
		}
		var reply Reply
		var undo func()
		switch {
		case ferr != nil:
			reply.Error = ferr.Error()
		case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
			reply.Error = "request too long, or too many file descriptors"
		default:
			reply, undo = s.handle(buf[:n], files)
		}
		closeAll(files) // servers work on their own duplicates
		out, _ := json.Marshal(reply)
		var rights []byte
		if len(reply.files) > 0 {
			fds := make([]int, len(reply.files))
			for i, f := range reply.files {
				fds[i] = int(f.Fd())
			}
			rights = unix.UnixRights(fds...)
		}
		_, _, err = conn.WriteMsgUnix(out, rights, nil)
		closeAll(reply.files) // the client has its own copies, or none
		if err != nil {
			if undo != nil {
				s.logger.Errorf("control: the client gave up before the answer: undoing the request")
				undo()
			}
			return
		}
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// receivedFiles turns the SCM_RIGHTS of a message into files: every
// descriptor that came, even with an error for the message.
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
