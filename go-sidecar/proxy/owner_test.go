package proxy

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testOwners asks the kernel about the sockets of the test's namespace,
// where clients and proxy both are (the sidecar's socket is opened on the
// host, where they are there).
func testOwners(t *testing.T) *Owners {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "sock_diag")
	defer f.Close()
	o, err := NewOwners(f)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestOwnersOfRealSockets(t *testing.T) {
	o := testOwners(t)
	defer o.Close()
	me := Owner{Local: true, UID: uint32(os.Getuid())}
	// TCP: the client's end of a connection, by its address and its peer's.
	for _, ip := range []string{"127.0.0.1", "::1"} {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local, remote := c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()
		if got, err := o.TCP(local, remote); err != nil || got != me {
			t.Errorf("TCP %v -> %v: %v, %v; want %v", local, remote, got, err, me)
		}
		gone := netip.AddrPortFrom(local.Addr(), local.Port()+1) // nobody's (or another test's: not a connection to remote)
		if got, err := o.TCP(netip.AddrPortFrom(remote.Addr(), 1), gone); err != nil || got.Local {
			t.Errorf("TCP to nowhere: %v, %v", got, err)
		}
	}
	// UDP: the socket bound at an address, whether bound to it, to the
	// wildcard (dual-stack: an IPv4 source too), or connected to the relay.
	relay := netip.MustParseAddrPort("127.0.0.1:9")
	for _, bind := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::]:0"} {
		u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(bind)))
		if err != nil {
			t.Fatal(err)
		}
		at := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), u.LocalAddr().(*net.UDPAddr).AddrPort().Port())
		got, err := o.UDP(at, relay)
		u.Close()
		if err != nil || got != me {
			t.Errorf("UDP bound to %s, at %v: %v, %v; want %v", bind, at, got, err, me)
		}
		if got, err := o.UDP(at, relay); err != nil || got.Local {
			t.Errorf("UDP at %v once closed: %v, %v", at, got, err)
		}
	}
	connected, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer connected.Close()
	if got, err := o.UDP(connected.LocalAddr().(*net.UDPAddr).AddrPort(), relay); err != nil || got != me {
		t.Errorf("UDP connected to the relay: %v, %v", got, err)
	}
}

func TestNewOwnersRefusesOtherSockets(t *testing.T) {
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	f, err := u.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := NewOwners(f); err == nil {
		t.Fatal("a UDP socket was taken for a NETLINK_SOCK_DIAG socket")
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	route := os.NewFile(uintptr(fd), "rtnetlink")
	defer route.Close()
	if _, err := NewOwners(route); err == nil {
		t.Fatal("a NETLINK_ROUTE socket was taken for a NETLINK_SOCK_DIAG socket")
	}
}

// strangers stands in for the kernel where the test cannot: every socket
// of the test is its one user's, but those at the ports in others, which
// it says are uid 4242's.
type strangers struct {
	real   *Owners
	others map[uint16]bool
}

func (s strangers) TCP(local, remote netip.AddrPort) (Owner, error) { return s.real.TCP(local, remote) }

func (s strangers) UDP(at, from netip.AddrPort) (Owner, error) {
	if s.others[at.Port()] {
		return Owner{Local: true, UID: 4242}, nil
	}
	return s.real.UDP(at, from)
}

// On 127.0.0.1 every local user has the client's IP: a stranger who sends
// first to the relay must not take over an association whose client
// declared no port, nor get its answers. (tests/test_proxy.py does this with
// a second real user.)
func TestUDPAssociationBelongsToTheOwnerOfItsControlConnection(t *testing.T) {
	echo := udpEchoServer(t).LocalAddr().(*net.UDPAddr).AddrPort()
	dst := Addr{IP: echo.Addr(), Port: echo.Port()}
	s := startSOCKS(t, nil, true)
	stranger, client := udpSocket(t), udpSocket(t)
	s.owners = strangers{real: s.Owners, others: map[uint16]bool{stranger.LocalAddr().(*net.UDPAddr).AddrPort().Port(): true}}
	control, bound, err := socksDial(t, s.addr, nil, cmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()})
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	relay := netip.AddrPortFrom(bound.IP, bound.Port)
	if _, data, ok := exchange(t, stranger, relay, dst, "first!", 500*time.Millisecond); ok {
		t.Fatalf("the stranger's datagram was relayed: %q", data)
	}
	if _, data, ok := exchange(t, client, relay, dst, "mine", 5*time.Second); !ok || data != "ECHO mine" {
		t.Fatalf("the client's datagram: %q %v", data, ok)
	}
	if _, data, ok := exchange(t, stranger, relay, dst, "again", 500*time.Millisecond); ok {
		t.Fatalf("the stranger's second datagram was relayed: %q", data)
	}
}
