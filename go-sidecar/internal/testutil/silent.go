package testutil

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// SilentListener returns the address of a TCP listener on ip that never
// answers a new connection attempt, for as long as the test runs: its
// accept queue is full (listen backlog 0, filled by connections nobody
// accepts), so the kernel drops the SYNs of further attempts and a dial
// waits out its whole timeout. Only the test's own loopback or namespace
// sees the attempts.
func SilentListener(t *testing.T, ip netip.Addr) netip.AddrPort {
	t.Helper()
	family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Addr: ip.As4()})
	if ip.Is6() {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: ip.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatalf("bind %v: %v", ip, err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	var port int
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		port = b.Port
	case *unix.SockaddrInet6:
		port = b.Port
	}
	addr := netip.AddrPortFrom(ip, uint16(port))
	for range 8 { // backlog 0 admits one; a few more in case of slack
		c, err := net.DialTimeout("tcp", addr.String(), 300*time.Millisecond)
		if err != nil {
			return addr // this attempt got no answer: the queue is full
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatalf("the accept queue of %v never filled", addr)
	return netip.AddrPort{}
}

// WaitSynSent waits until a socket of this network namespace is trying to
// connect to addr (state SYN_SENT in /proc/net/tcp{,6}): a dial is in flight.
func WaitSynSent(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	forms := procForms(addr)
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			data, _ := os.ReadFile(table)
			for _, line := range strings.Split(string(data), "\n")[1:] {
				// sl local_address rem_address st ...; st 02 is TCP_SYN_SENT
				fields := strings.Fields(line)
				if len(fields) > 3 && fields[3] == "02" && forms[strings.ToUpper(fields[2])] {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection attempt to %v in flight", addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procForms are the ways /proc/net/tcp{,6} print addr: each 32-bit word of
// the address in the host's byte order, then the port; an IPv4 address
// also as its IPv4-mapped IPv6 form.
func procForms(addr netip.AddrPort) map[string]bool {
	words := func(raw []byte) string {
		var b strings.Builder
		for i := 0; i < len(raw); i += 4 {
			fmt.Fprintf(&b, "%08X", binary.NativeEndian.Uint32(raw[i:i+4]))
		}
		return fmt.Sprintf("%s:%04X", b.String(), addr.Port())
	}
	v6 := addr.Addr().As16()
	forms := map[string]bool{words(v6[:]): true}
	if addr.Addr().Is4() {
		v4 := addr.Addr().As4()
		forms[words(v4[:])] = true
	}
	return forms
}
