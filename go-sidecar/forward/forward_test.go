package forward

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"wg-wrap/go-sidecar/internal/testutil"
)

// These tests run in whatever network namespace `go test` runs in, over
// loopback: "inside" is then the same namespace as "the host", which is all
// the forwarding logic can tell apart anyway.

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0035":                         "0.0.0.0:53",
		"00000000000000000000000001000000:1F90": "[::1]:8080",
		"00000000000000000000000000000000:0050": "[::]:80",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80", // v4-mapped
		"B80D0120000000000000000001000000:01BB": "[2001:db8::1]:443",
	} {
		addr, port, err := parseProcAddr(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := netip.AddrPortFrom(addr, port).String(); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007F:", "zz00007F:0050", "0100:0050", "0100007F:10000"} {
		if _, _, err := parseProcAddr(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

const procTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 100 0 0 10 0
   1: 02004D0A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0 100 0 0 10 0
   3: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4 1 0 100 0 0 10 0
`

const procTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 6 1 0 100 0 0 10 0
`

func TestTargetsFromProcTables(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "tcp"), []byte(procTCP), 0o644)
	os.WriteFile(filepath.Join(dir, "tcp6"), []byte(procTCP6), 0o644)
	old := procNet
	procNet = dir
	t.Cleanup(func() { procNet = old })
	for port, want := range map[uint16]string{
		8080: "127.0.0.1:8080 [::1]:8080 10.77.0.2:8080", // loopback first, IPv4 first; the connected socket is not a listener
		8081: "127.0.0.1:8081",                           // 0.0.0.0 stands for 127.0.0.1
		8082: "[::1]:8082",                               // :: stands for ::1
		9999: "127.0.0.1:9999",                           // nobody: the attempt is refused
	} {
		var got []string
		for _, a := range Targets("tcp", port) {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != want {
			t.Errorf("port %d: got %v, want %s", port, got, want)
		}
	}
}

func listenTCP(t *testing.T, addr string) *net.TCPListener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

func port(l net.Listener) uint16 { return l.Addr().(*net.TCPAddr).AddrPort().Port() }

// serveEcho answers each connection with "from ADDR\n" and then echoes
// everything it reads, half-closing at the end of the client's stream.
func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "from %s\n", c.RemoteAddr())
			io.Copy(c, c)
			c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// serve runs f until the test ends; Serve must then return without error.
func serve(t *testing.T, f interface {
	Serve() error
	Close() error
}) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f.Serve() }()
	t.Cleanup(func() {
		f.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// startTCP forwards a host listener on 127.0.0.1 to port.
func startTCP(t *testing.T, to uint16) *TCP {
	t.Helper()
	f := NewTCP(listenTCP(t, "127.0.0.1:0"), to, t.Logf)
	serve(t, f)
	return f
}

func dial(t *testing.T, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c.(*net.TCPConn)
}

func TestTCPReachesLoopbackV4V6AndWildcardListeners(t *testing.T) {
	base := runtime.NumGoroutine()
	for name, addr := range map[string]string{
		"127.0.0.1": "127.0.0.1:0",
		"::1":       "[::1]:0",
		"any":       "[::]:0",
	} {
		t.Run(name, func(t *testing.T) {
			server := listenTCP(t, addr)
			go serveEcho(server)
			f := startTCP(t, port(server))
			c := dial(t, f.Addr())
			c.Write([]byte("ping"))
			c.CloseWrite()
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			from, echoed, _ := strings.Cut(string(got), "\n")
			if echoed != "ping" {
				t.Fatalf("echo: %q", got)
			}
			// The program sees the sidecar's end of a loopback connection.
			peer, err := netip.ParseAddrPort(strings.TrimPrefix(from, "from "))
			if err != nil || !peer.Addr().Unmap().IsLoopback() {
				t.Fatalf("the server saw %q, not a loopback address", from)
			}
		})
	}
	testutil.CheckGoroutines(t, base)
}

func TestTCPHalfCloseBothWays(t *testing.T) {
	server := listenTCP(t, "127.0.0.1:0")
	serverSaw := make(chan string, 1)
	go func() {
		c, err := server.Accept()
		if err != nil {
			serverSaw <- err.Error()
			return
		}
		defer c.Close()
		c.Write([]byte("hello"))
		c.(*net.TCPConn).CloseWrite() // the server is done talking, still listening
		got, _ := io.ReadAll(c)
		serverSaw <- string(got)
	}()
	f := startTCP(t, port(server))
	c := dial(t, f.Addr())
	defer c.Close()
	got, err := io.ReadAll(c) // up to the server's end of stream
	if err != nil || string(got) != "hello" {
		t.Fatalf("client read %q, %v", got, err)
	}
	c.Write([]byte("still here"))
	c.CloseWrite()
	if s := <-serverSaw; s != "still here" {
		t.Fatalf("server read %q after its own half-close", s)
	}
}

func TestTCPManyConcurrentConnections(t *testing.T) {
	const n = 200
	base := runtime.NumGoroutine()
	server := listenTCP(t, "127.0.0.1:0")
	go serveEcho(server)
	f := startTCP(t, port(server))
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dial(t, f.Addr())
	}
	// All are relayed at once: no cap.
	deadline := time.Now().Add(10 * time.Second)
	for f.Conns() < 2*n {
		if time.Now().After(deadline) {
			t.Fatalf("%d relayed connection ends, want %d", f.Conns(), 2*n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			payload := make([]byte, 32<<10)
			rand.Read(payload)
			go func() { c.Write(payload); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			_, echoed, _ := bytes.Cut(got, []byte("\n"))
			if err != nil || !bytes.Equal(echoed, payload) {
				errs <- fmt.Errorf("connection %d: %d bytes back, %v", i, len(echoed), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f.Close()
	server.Close()
	testutil.CheckGoroutines(t, base)
}

func TestTCPNobodyInsideResetsTheClient(t *testing.T) {
	nobody := listenTCP(t, "127.0.0.1:0")
	to := port(nobody)
	nobody.Close() // nothing listens on that port any more
	f := startTCP(t, to)
	c := dial(t, f.Addr())
	defer c.Close()
	_, err := c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v, want a reset", err)
	}
}

func TestTCPCloseEndsRelayedConnections(t *testing.T) {
	base := runtime.NumGoroutine()
	server := listenTCP(t, "127.0.0.1:0")
	go serveEcho(server)
	f := NewTCP(listenTCP(t, "127.0.0.1:0"), port(server), t.Logf)
	done := make(chan error, 1)
	go func() { done <- f.Serve() }()
	c := dial(t, f.Addr())
	defer c.Close()
	line := make([]byte, 64)
	if _, err := c.Read(line); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if _, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := net.DialTimeout("tcp", f.Addr().String(), time.Second); err == nil {
		t.Fatal("still accepting after Close")
	}
	server.Close()
	testutil.CheckGoroutines(t, base)
}

// A program inside that never answers must not hold up Close (unpublish,
// the sidecar's shutdown) for DialTimeout: Close cancels the dial.
func TestTCPCloseCancelsADialInFlight(t *testing.T) {
	base := runtime.NumGoroutine()
	silent := testutil.SilentListener(t, netip.MustParseAddr("127.0.0.1"))
	f := NewTCP(listenTCP(t, "127.0.0.1:0"), silent.Port(), t.Logf)
	done := make(chan error, 1)
	go func() { done <- f.Serve() }()
	c := dial(t, f.Addr())
	defer c.Close()
	testutil.WaitSynSent(t, silent)
	start := time.Now()
	f.Close()
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Close took %v with a dial in flight", took)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	testutil.CheckGoroutines(t, base)
}

func startUDP(t *testing.T, to uint16, idle time.Duration) *UDP {
	t.Helper()
	host, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := NewUDP(host, to, idle, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, f)
	return f
}

func udpClient(t *testing.T, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func udpPort(c *net.UDPConn) uint16 { return c.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

func TestUDPSessionPerSource(t *testing.T) {
	base := runtime.NumGoroutine()
	for name, addr := range map[string]string{"127.0.0.1": "127.0.0.1:0", "::1": "[::1]:0"} {
		t.Run(name, func(t *testing.T) {
			echo := udpEcho(t, addr)
			f := startUDP(t, udpPort(echo), 0)
			seen := map[string]bool{}
			for _, who := range []string{"alice", "bob"} {
				c := udpClient(t, f.Addr())
				for range 3 { // the same session each time
					c.Write([]byte(who))
					buf := make([]byte, 1500)
					n, err := c.Read(buf)
					if err != nil {
						t.Fatalf("%s: %v", who, err)
					}
					from, data, _ := strings.Cut(string(buf[:n]), " ")
					if data != who {
						t.Fatalf("%s got %q", who, buf[:n])
					}
					seen[from] = true
				}
			}
			// Two sources, two sessions, each with its own address inside.
			if len(seen) != 2 || f.Sessions() != 2 {
				t.Fatalf("inside saw %v, %d sessions; want 2", seen, f.Sessions())
			}
		})
	}
	testutil.CheckGoroutines(t, base)
}

func TestUDPBatchOfDatagramsAllComeBack(t *testing.T) {
	echo := udpEcho(t, "127.0.0.1:0")
	f := startUDP(t, udpPort(echo), 0)
	c := udpClient(t, f.Addr())
	const n = 200
	for i := range n {
		if _, err := fmt.Fprintf(c, "%d", i); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	buf := make([]byte, 1500)
	for len(got) < n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("%d of %d back: %v", len(got), n, err)
		}
		_, data, _ := strings.Cut(string(buf[:k]), " ")
		got[data] = true
	}
}

func TestUDPIdleSessionsEnd(t *testing.T) {
	base := runtime.NumGoroutine()
	echo := udpEcho(t, "127.0.0.1:0")
	f := startUDP(t, udpPort(echo), 200*time.Millisecond)
	c := udpClient(t, f.Addr())
	buf := make([]byte, 100)
	c.Write([]byte("x"))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(buf[:n]), " ")
	deadline := time.Now().Add(5 * time.Second)
	for f.Sessions() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle session did not end")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Write([]byte("y")) // a new session, a new socket inside
	n, err = c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if second, _, _ := strings.Cut(string(buf[:n]), " "); second == first {
		t.Fatalf("same address inside (%s) after the session ended", first)
	}
	f.Close()
	echo.Close()
	testutil.CheckGoroutines(t, base)
}

// udpEcho answers each datagram with "SOURCE DATA".
func udpEcho(t *testing.T, addr string) *net.UDPConn {
	return testutil.UDPEcho(t, netip.MustParseAddrPort(addr), func(from netip.AddrPort, data []byte) []byte {
		return append([]byte(from.String()+" "), data...)
	})
}
