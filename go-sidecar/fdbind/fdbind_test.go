package fdbind

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const testTimeout = 5 * time.Second

// hostSocket creates a bound UDP socket the way wg-wrap's Python side does:
// AF_INET6 dual-stack, or AF_INET. The Bind built on it owns it.
func hostSocket(t *testing.T, family int, addr netip.Addr) int {
	t.Helper()
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			t.Fatalf("IPV6_V6ONLY: %v", err)
		}
		sa = &unix.SockaddrInet6{Addr: addr.As16()}
	} else {
		sa = &unix.SockaddrInet4{Addr: addr.As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind %s: %v", addr, err)
	}
	// Like the host side, make room for full batches (beyond rmem_max when
	// running as root).
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	return fd
}

// peerSocket is a plain UDP socket on loopback with a receive timeout, to
// talk to a Bind from outside.
type peerSocket struct {
	fd   int
	addr netip.AddrPort
}

func newPeerSocket(t *testing.T, loopback netip.Addr) *peerSocket {
	t.Helper()
	family := unix.AF_INET
	if loopback.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	tv := unix.NsecToTimeval(testTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatalf("SO_RCVTIMEO: %v", err)
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Addr: loopback.As16()}
	} else {
		sa = &unix.SockaddrInet4{Addr: loopback.As4()}
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind: %v", err)
	}
	return &peerSocket{fd: fd, addr: netip.AddrPortFrom(loopback, sockPort(t, fd))}
}

func sockPort(t *testing.T, fd int) uint16 {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(sa.Port)
	case *unix.SockaddrInet6:
		return uint16(sa.Port)
	}
	t.Fatalf("unexpected sockaddr %T", sa)
	return 0
}

func (p *peerSocket) sendTo(t *testing.T, dst netip.AddrPort, payload []byte) {
	t.Helper()
	var sa unix.Sockaddr
	if dst.Addr().Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
	} else {
		sa = &unix.SockaddrInet6{Addr: dst.Addr().As16(), Port: int(dst.Port())}
	}
	if err := unix.Sendto(p.fd, payload, 0, sa); err != nil {
		t.Fatalf("sendto %s: %v", dst, err)
	}
}

func (p *peerSocket) recv(t *testing.T) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	n, _, err := unix.Recvfrom(p.fd, buf, 0)
	if err != nil {
		t.Fatalf("recv on %s: %v", p.addr, err)
	}
	return buf[:n]
}

type received struct {
	packets [][]byte
	eps     []conn.Endpoint
	err     error
}

// receiveOnce calls fn once in a goroutine, bounded by testTimeout.
func receiveOnce(t *testing.T, b *Bind, fn conn.ReceiveFunc) received {
	t.Helper()
	done := make(chan received, 1)
	go func() {
		bufs := make([][]byte, b.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, 65535)
		}
		sizes := make([]int, len(bufs))
		eps := make([]conn.Endpoint, len(bufs))
		n, err := fn(bufs, sizes, eps)
		var r received
		r.err = err
		for i := range n {
			if sizes[i] == 0 {
				continue
			}
			r.packets = append(r.packets, bufs[i][:sizes[i]])
			r.eps = append(r.eps, eps[i])
		}
		done <- r
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(testTimeout):
		b.Close() // unblock the reader
		t.Fatal("receive timed out")
		return received{}
	}
}

// receiveN collects count packets, in as many batches as needed.
func receiveN(t *testing.T, b *Bind, fn conn.ReceiveFunc, count int) received {
	t.Helper()
	var all received
	for i := 0; i < count && len(all.packets) < count; i++ {
		r := receiveOnce(t, b, fn)
		if r.err != nil {
			t.Fatalf("receive: %v", r.err)
		}
		all.packets = append(all.packets, r.packets...)
		all.eps = append(all.eps, r.eps...)
	}
	if len(all.packets) != count {
		t.Fatalf("received %d packets, want %d", len(all.packets), count)
	}
	return all
}

func openBind(t *testing.T, b *Bind) conn.ReceiveFunc {
	t.Helper()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if port != b.Port() {
		t.Fatalf("Open returned port %d, socket is bound to %d", port, b.Port())
	}
	if len(fns) != 1 {
		t.Fatalf("Open returned %d receive functions, want 1", len(fns))
	}
	return fns[0]
}

// forEachOffload runs f with and without UDP GSO/GRO.
func forEachOffload(t *testing.T, f func(t *testing.T, offload bool)) {
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprintf("offload=%v", offload), func(t *testing.T) { f(t, offload) })
	}
}

var (
	lo4  = netip.MustParseAddr("127.0.0.1")
	lo6  = netip.MustParseAddr("::1")
	any6 = netip.IPv6Unspecified()
)

func TestNewRejectsWhatIsNotABoundUDPSocket(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	tcp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tcp)
	unbound, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unbound)
	for name, tc := range map[string]struct {
		fd   int
		want string
	}{
		"negative": {-1, "invalid file descriptor"},
		"closed":   {1 << 20, "not a socket"},
		"pipe":     {p[1], "not a socket"},
		"tcp":      {tcp, "not a UDP socket"},
		"unbound":  {unbound, "not bound"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.fd)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%s) error = %v, want it to mention %q", name, err, tc.want)
			}
		})
	}
}

func TestOpenReturnsTheSocketsRealPort(t *testing.T) {
	fd := hostSocket(t, unix.AF_INET6, any6)
	want := sockPort(t, fd)
	b, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	// wireguard-go asks for the configured listen_port; it cannot be honoured.
	_, got, err := b.Open(want + 1)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("Open port = %d, want %d", got, want)
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Fatalf("second Open error = %v, want ErrBindAlreadyOpen", err)
	}
}

func TestDualStackCarriesIPv4AndIPv6(t *testing.T) {
	forEachOffload(t, func(t *testing.T, offload bool) {
		b, err := newBind(hostSocket(t, unix.AF_INET6, any6), offload)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Release()
		recv := openBind(t, b)
		for _, lo := range []netip.Addr{lo4, lo6} {
			peer := newPeerSocket(t, lo)
			msg := []byte("hello from " + lo.String())
			peer.sendTo(t, netip.AddrPortFrom(lo, b.Port()), msg)
			r := receiveN(t, b, recv, 1)
			if !bytes.Equal(r.packets[0], msg) {
				t.Fatalf("received %q, want %q", r.packets[0], msg)
			}
			// The IPv4 source arrives as ::ffff:127.0.0.1 and must be unmapped.
			if got, want := r.eps[0].DstToString(), peer.addr.String(); got != want {
				t.Fatalf("source endpoint %s, want %s", got, want)
			}
			if got := r.eps[0].DstIP(); got.Is4In6() {
				t.Fatalf("source address %s is still IPv4-mapped", got)
			}
			reply := []byte("reply to " + lo.String())
			if err := b.Send([][]byte{reply}, r.eps[0]); err != nil {
				t.Fatalf("Send to %s: %v", r.eps[0].DstToString(), err)
			}
			if got := peer.recv(t); !bytes.Equal(got, reply) {
				t.Fatalf("peer received %q, want %q", got, reply)
			}
		}
	})
}

func TestSendToParsedEndpoints(t *testing.T) {
	b, err := New(hostSocket(t, unix.AF_INET6, any6))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	openBind(t, b)
	for _, lo := range []netip.Addr{lo4, lo6} {
		peer := newPeerSocket(t, lo)
		ep, err := b.ParseEndpoint(peer.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Send([][]byte{[]byte("x")}, ep); err != nil {
			t.Fatalf("Send to %s: %v", peer.addr, err)
		}
		if got := peer.recv(t); string(got) != "x" {
			t.Fatalf("peer received %q", got)
		}
	}
}

func TestParseEndpointUnmapsIPv4(t *testing.T) {
	b := &Bind{}
	mapped, err := b.ParseEndpoint("[::ffff:192.0.2.7]:51820")
	if err != nil {
		t.Fatal(err)
	}
	plain, err := b.ParseEndpoint("192.0.2.7:51820")
	if err != nil {
		t.Fatal(err)
	}
	if got := mapped.DstToString(); got != "192.0.2.7:51820" {
		t.Fatalf("DstToString = %q", got)
	}
	if !bytes.Equal(mapped.DstToBytes(), plain.DstToBytes()) {
		t.Fatal("DstToBytes differs between mapped and plain forms of one address")
	}
	v6, err := b.ParseEndpoint("[2001:db8::1]:51820")
	if err != nil {
		t.Fatal(err)
	}
	if got := v6.DstToString(); got != "[2001:db8::1]:51820" {
		t.Fatalf("DstToString = %q", got)
	}
	if _, err := b.ParseEndpoint("example.com:51820"); err == nil {
		t.Fatal("ParseEndpoint accepted a host name")
	}
}

func TestCloseUnblocksReceive(t *testing.T) {
	b, err := New(hostSocket(t, unix.AF_INET6, any6))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	recv := openBind(t, b)
	errc := make(chan error, 1)
	go func() {
		bufs := [][]byte{make([]byte, 1500)}
		_, err := recv(bufs, make([]int, 1), make([]conn.Endpoint, 1))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it block in recvmmsg
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("receive after Close returned %v, want net.ErrClosed", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("Close did not unblock the receive")
	}
	if err := b.Send([][]byte{[]byte("x")}, newEndpoint(netip.AddrPortFrom(lo4, 9))); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send on a closed Bind returned %v, want net.ErrClosed", err)
	}
}

func TestOpenAgainAfterCloseKeepsTheSocket(t *testing.T) {
	fd := hostSocket(t, unix.AF_INET6, any6)
	b, err := New(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	peer := newPeerSocket(t, lo4)
	for round := range 3 {
		recv := openBind(t, b)
		msg := []byte(fmt.Sprintf("round %d", round))
		peer.sendTo(t, netip.AddrPortFrom(lo4, b.Port()), msg)
		r := receiveN(t, b, recv, 1)
		if !bytes.Equal(r.packets[0], msg) {
			t.Fatalf("round %d: received %q", round, r.packets[0])
		}
		if err := b.Send([][]byte{msg}, r.eps[0]); err != nil {
			t.Fatalf("round %d: Send: %v", round, err)
		}
		if got := peer.recv(t); !bytes.Equal(got, msg) {
			t.Fatalf("round %d: peer received %q", round, got)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("round %d: second Close: %v", round, err)
		}
		// The inherited descriptor itself is untouched.
		if _, err := unix.Getsockname(fd); err != nil {
			t.Fatalf("round %d: original fd unusable after Close: %v", round, err)
		}
	}
}

func TestIPv4OnlySocket(t *testing.T) {
	forEachOffload(t, func(t *testing.T, offload bool) {
		b, err := newBind(hostSocket(t, unix.AF_INET, lo4), offload)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Release()
		recv := openBind(t, b)
		peer := newPeerSocket(t, lo4)
		peer.sendTo(t, netip.AddrPortFrom(lo4, b.Port()), []byte("ping"))
		r := receiveN(t, b, recv, 1)
		if got := r.eps[0].DstToString(); got != peer.addr.String() {
			t.Fatalf("source %s, want %s", got, peer.addr)
		}
		if err := b.Send([][]byte{[]byte("pong")}, r.eps[0]); err != nil {
			t.Fatal(err)
		}
		if got := peer.recv(t); string(got) != "pong" {
			t.Fatalf("peer received %q", got)
		}
		ep6, _ := b.ParseEndpoint("[::1]:9")
		err = b.Send([][]byte{[]byte("x")}, ep6)
		if err == nil || !strings.Contains(err.Error(), "IPv4-only") {
			t.Fatalf("Send to IPv6 over an IPv4 socket: error = %v, want a clear IPv4-only error", err)
		}
	})
}

func TestSendRejectsForeignEndpoints(t *testing.T) {
	b, err := New(hostSocket(t, unix.AF_INET6, any6))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release()
	openBind(t, b)
	foreign := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(lo4, 9)}
	if err := b.Send([][]byte{[]byte("x")}, foreign); !errors.Is(err, conn.ErrWrongEndpointType) {
		t.Fatalf("Send error = %v, want ErrWrongEndpointType", err)
	}
}

func TestSetMarkIsANoOp(t *testing.T) {
	if err := (&Bind{}).SetMark(42); err != nil {
		t.Fatal(err)
	}
}

// TestBatchBetweenBinds sends full batches of same-size packets (with a
// short tail, the GSO edge case) between two Binds, across every offload
// combination, and checks every packet arrives intact and in order.
func TestBatchBetweenBinds(t *testing.T) {
	for _, lo := range []netip.Addr{lo4, lo6} {
		for _, txOff := range []bool{false, true} {
			for _, rxOff := range []bool{false, true} {
				name := fmt.Sprintf("%s/gso=%v/gro=%v", lo, txOff, rxOff)
				t.Run(name, func(t *testing.T) { testBatch(t, lo, txOff, rxOff) })
			}
		}
	}
}

func testBatch(t *testing.T, lo netip.Addr, txOff, rxOff bool) {
	tx, err := newBind(hostSocket(t, unix.AF_INET6, any6), txOff)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Release()
	rx, err := newBind(hostSocket(t, unix.AF_INET6, any6), rxOff)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Release()
	openBind(t, tx)
	recv := openBind(t, rx)
	if txOff && !tx.txOffload {
		t.Log("kernel lacks UDP_SEGMENT; GSO path not exercised")
	}
	if rxOff && !rx.rxOffload {
		t.Log("kernel lacks readable UDP_GRO; GRO path not exercised")
	}
	const count, size = 100, 1200
	bufs := make([][]byte, count)
	var want [][]byte
	for i := range bufs {
		n := size
		if i == count-1 {
			n = size / 3
		}
		bufs[i] = make([]byte, n, 65535)
		for j := range bufs[i] {
			bufs[i][j] = byte(i + j)
		}
		want = append(want, bytes.Clone(bufs[i]))
	}
	ep, err := tx.ParseEndpoint(netip.AddrPortFrom(lo, rx.Port()).String())
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Send(bufs, ep); err != nil {
		t.Fatalf("Send: %v", err)
	}
	r := receiveN(t, rx, recv, count)
	for i := range want {
		if !bytes.Equal(r.packets[i], want[i]) {
			t.Fatalf("packet %d: got %d bytes, want %d (or different content)", i, len(r.packets[i]), len(want[i]))
		}
		if got := r.eps[i].DstToString(); got != netip.AddrPortFrom(lo, tx.Port()).String() {
			t.Fatalf("packet %d from %s, want port %d on %s", i, got, tx.Port(), lo)
		}
	}
}
