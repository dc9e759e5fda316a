// Package testutil holds what the sidecar's tests share: servers on
// loopback and the goroutine-leak check.
package testutil

import (
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// CheckGoroutines waits for the goroutine count to come back to base (the
// runtime ends finished goroutines asynchronously) and fails otherwise,
// showing every goroutine left.
func CheckGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// UDPEcho answers each datagram on addr with reply(source, datagram) until
// the test ends.
func UDPEcho(t *testing.T, addr netip.AddrPort, reply func(from netip.AddrPort, data []byte) []byte) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(reply(from, buf[:n]), from)
		}
	}()
	return c
}
