package control

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/internal/testutil"
)

// The control socket in the test's own namespace: "inside" and "the host"
// are then the same loopback, which the relaying cannot tell apart.

func startTestControl(t *testing.T) (*Server, string) {
	t.Helper()
	return startLoggedControl(t, &device.Logger{Verbosef: t.Logf, Errorf: t.Logf})
}

func startLoggedControl(t *testing.T, logger *device.Logger) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	c := Start(l, logger)
	t.Cleanup(c.Close)
	return c, path
}

// request sends one control request with files attached, as wg-wrap does.
func request(t *testing.T, path string, req string, files ...*os.File) Reply {
	t.Helper()
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var fds []int
	for _, f := range files {
		fds = append(fds, int(f.Fd()))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := conn.WriteMsgUnix([]byte(req), oob, nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	var reply Reply
	if err := json.Unmarshal(buf[:n], &reply); err != nil {
		t.Fatalf("reply %q: %v", buf[:n], err)
	}
	return reply
}

// hostListener is a listening socket "opened on the host", as a file.
func hostListener(t *testing.T) (*os.File, string) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, l.Addr().String()
}

func TestControlPublishAndUnpublish(t *testing.T) {
	base := runtime.NumGoroutine()
	inside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	go func() {
		for {
			c, err := inside.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from inside")
			c.Close()
		}
	}()
	c, path := startTestControl(t)
	f, addr := hostListener(t)
	port := inside.Addr().(*net.TCPAddr).Port
	reply := request(t, path, `{"op":"publish","proto":"tcp","port":`+itoa(port)+`}`, f)
	if reply.Error != "" || len(reply.Listening) != 1 || reply.Listening[0] != addr {
		t.Fatalf("publish: %+v", reply)
	}
	f.Close() // the sidecar has its own copy now
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(conn)
	conn.Close()
	if string(got) != "hello from inside" {
		t.Fatalf("through the published port: %q", got)
	}
	list := request(t, path, `{"op":"list"}`)
	if want := "tcp " + addr + " " + itoa(port); len(list.Published) != 1 || list.Published[0] != want {
		t.Fatalf("list: %+v, want %s", list, want)
	}
	hostPort := addr[strings.LastIndex(addr, ":")+1:]
	if r := request(t, path, `{"op":"unpublish","proto":"udp","host_port":`+hostPort+`}`); r.Removed != 0 {
		t.Fatalf("unpublish of the wrong protocol removed %d", r.Removed)
	}
	if r := request(t, path, `{"op":"unpublish","proto":"tcp","host_port":`+hostPort+`}`); r.Removed != 1 || r.Error != "" {
		t.Fatalf("unpublish: %+v", r)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Fatal("still published after unpublish")
	}
	c.Close()
	inside.Close()
	testutil.CheckGoroutines(t, base)
}

func TestControlStartsTheProxies(t *testing.T) {
	_, path := startTestControl(t)
	tcp, addr := hostListener(t)
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	rf, _ := relay.File()
	relay.Close()
	defer rf.Close()
	r := request(t, path, `{"op":"socks","user":"u","password":"p"}`, tcp, rf)
	if r.Error != "" || len(r.Listening) != 2 || r.Listening[0] != addr {
		t.Fatalf("socks: %+v", r)
	}
	// A SOCKS5 server answers there, asking for the password.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte{5, 1, 0})
	sel := make([]byte, 2)
	io.ReadFull(conn, sel)
	conn.Close()
	if sel[0] != 5 || sel[1] != 0xff {
		t.Fatalf("method selection %x without credentials", sel)
	}
	again, _ := hostListener(t)
	if r := request(t, path, `{"op":"socks"}`, again); !strings.Contains(r.Error, "already running") {
		t.Fatalf("a second SOCKS5 proxy: %+v", r)
	}
	h, haddr := hostListener(t)
	if r := request(t, path, `{"op":"http-proxy"}`, h); r.Error != "" || r.Listening[0] != haddr {
		t.Fatalf("http-proxy: %+v", r)
	}
	if l := request(t, path, `{"op":"list"}`); l.HTTP != haddr || len(l.SOCKS) != 2 {
		t.Fatalf("list: %+v", l)
	}
}

func TestControlRefusesBadRequests(t *testing.T) {
	_, path := startTestControl(t)
	notListening, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	udpFile, _ := notListening.File()
	notListening.Close()
	defer udpFile.Close()
	pipeR, pipeW, _ := os.Pipe()
	defer pipeR.Close()
	defer pipeW.Close()
	l, _ := hostListener(t)
	for _, tc := range []struct {
		req   string
		files []*os.File
		want  string
	}{
		{`{"op":"format-disk"}`, nil, "unknown op"},
		{`{"op":"list","extra":1}`, nil, "malformed request"},
		{`not json`, nil, "malformed request"},
		{`{"op":"publish","proto":"tcp","port":80}`, nil, "takes the host socket, got 0"},
		{`{"op":"publish","proto":"tcp","port":80}`, []*os.File{udpFile}, "socket type"},
		{`{"op":"publish","proto":"tcp","port":80}`, []*os.File{pipeR}, "not a socket"},
		{`{"op":"publish","proto":"sctp","port":80}`, []*os.File{l}, "unknown protocol"},
		{`{"op":"publish","proto":"tcp"}`, []*os.File{l}, "no port inside"},
		{`{"op":"socks"}`, nil, "takes a listener"},
	} {
		if r := request(t, path, tc.req, tc.files...); !strings.Contains(r.Error, tc.want) {
			t.Errorf("%s: %+v, want %q", tc.req, r, tc.want)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A request that comes after its client stopped waiting is not carried out.
func TestControlRefusesARequestPastItsDeadline(t *testing.T) {
	c, path := startTestControl(t)
	f, _ := hostListener(t)
	late := now() - int64(time.Millisecond)
	reply := request(t, path, fmt.Sprintf(`{"op":"publish","proto":"tcp","port":80,"deadline_ns":%d}`, late), f)
	if !strings.Contains(reply.Error, "came too late") {
		t.Fatalf("reply %+v", reply)
	}
	soon := now() + int64(10*time.Second)
	if reply := request(t, path, fmt.Sprintf(`{"op":"list","deadline_ns":%d}`, soon)); reply.Error != "" {
		t.Fatalf("in time: %+v", reply)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.published) != 0 {
		t.Fatalf("published anyway: %v", c.published)
	}
}

// A request whose answer cannot be delivered (the client gave up and went)
// is undone: no ghost published port, no proxy nobody was told of.
func TestControlUndoesWhatItCouldNotAnswer(t *testing.T) {
	undone := make(chan string, 4)
	c, path := startLoggedControl(t, &device.Logger{Verbosef: t.Logf, Errorf: func(format string, args ...any) {
		undone <- fmt.Sprintf(format, args...)
	}})
	f, _ := hostListener(t)
	proxyListener, _ := hostListener(t)
	for _, tc := range []struct {
		req  string
		file *os.File
	}{
		{`{"op":"publish","proto":"tcp","port":80}`, f},
		{`{"op":"http-proxy"}`, proxyListener},
	} {
		conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		// The client sends, then goes before the answer: the sidecar was
		// stopped, the client timed out.
		c.mu.Lock()
		if _, _, err := conn.WriteMsgUnix([]byte(tc.req), unix.UnixRights(int(tc.file.Fd())), nil); err != nil {
			t.Fatal(err)
		}
		conn.CloseRead()
		conn.Close()
		c.mu.Unlock()
	}
	// Both requests were carried out, then their answers found no one.
	for i := 0; i < 2; i++ {
		select {
		case line := <-undone:
			if !strings.Contains(line, "undoing") {
				t.Fatalf("logged %q", line)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a request nobody waited for was not undone")
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.published) != 0 || c.http != nil {
		t.Fatalf("what nobody was told of is still served: %v, %v", c.published, c.http)
	}
}

// The descriptors that come with any message are closed, whatever becomes
// of it: an empty message, one that is not JSON, an unknown verb.
func TestControlClosesWhatComesWithARefusedMessage(t *testing.T) {
	_, path := startTestControl(t)
	for _, req := range []string{"", "not json", `{"op":"format-disk"}`} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := conn.WriteMsgUnix([]byte(req), unix.UnixRights(int(w.Fd())), nil); err != nil {
			t.Fatal(err)
		}
		w.Close() // the server's copy is then the pipe's last writer
		r.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := r.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("message %q: the descriptor it carried is still open (%v)", req, err)
		}
		r.Close()
		conn.Close()
	}
}

func TestControlCloseDoesNotWaitForIdleClients(t *testing.T) {
	c, path := startTestControl(t)
	idle, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	request(t, path, `{"op":"list"}`) // the server is up and serving
	done := make(chan struct{})
	go func() { c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waits for a client that sends nothing")
	}
}

// The sockets a profile started --via this one uses are made here and
// handed back: bound UDP sockets of this namespace.
func TestControlHandsBackAUDPSocket(t *testing.T) {
	_, path := startTestControl(t)
	conn, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte(`{"op":"udp-socket"}`)); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	var reply Reply
	if err := json.Unmarshal(buf[:n], &reply); err != nil || reply.Error != "" || len(reply.Listening) != 1 {
		t.Fatalf("reply %q: %v", buf[:n], err)
	}
	files, err := receivedFiles(oob[:oobn])
	if err != nil || len(files) != 1 {
		t.Fatalf("%d files: %v", len(files), err)
	}
	defer files[0].Close()
	u, err := udpSocket(files[0])
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if got := u.LocalAddr().(*net.UDPAddr).Port; !strings.HasSuffix(reply.Listening[0], ":"+itoa(got)) {
		t.Fatalf("bound to %d, said %s", got, reply.Listening[0])
	}
	// and it works: a datagram to it arrives
	to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: u.LocalAddr().(*net.UDPAddr).Port}
	sender, err := net.DialUDP("udp", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	sender.Write([]byte("hop"))
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 16)
	if n, _, err := u.ReadFrom(got); err != nil || string(got[:n]) != "hop" {
		t.Fatalf("read %q: %v", got[:n], err)
	}
}

func TestControlResolvesAsAProgramHereWould(t *testing.T) {
	_, path := startTestControl(t)
	r := request(t, path, `{"op":"resolve","host":"localhost","family":"ip4"}`)
	if r.Error != "" || len(r.Addresses) == 0 || r.Addresses[0] != "127.0.0.1" {
		t.Fatalf("%+v", r)
	}
	if r := request(t, path, `{"op":"resolve"}`); r.Error != "resolve: no host" {
		t.Fatalf("%+v", r)
	}
}
