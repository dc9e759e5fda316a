package fdbind_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"wg-wrap/go-sidecar/fdbind"
)

// A tunnelEnd is one wireguard-go device on a channel TUN and an FDBind.
type tunnelEnd struct {
	tun  *tuntest.ChannelTUN
	dev  *device.Device
	bind *fdbind.Bind
	key  *ecdh.PrivateKey
	ip4  netip.Addr
	ip6  netip.Addr
}

func newTunnelEnd(t *testing.T, i int) *tunnelEnd {
	t.Helper()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{}); err != nil {
		t.Fatal(err)
	}
	bind, err := fdbind.New(fd)
	if err != nil {
		t.Fatal(err)
	}
	e := &tunnelEnd{
		tun:  tuntest.NewChannelTUN(), // starts with an EventUp, like a link set up
		bind: bind,
		key:  key,
		ip4:  netip.AddrFrom4([4]byte{10, 77, 0, byte(i)}),
		ip6:  netip.MustParseAddr(fmt.Sprintf("fd77::%d", i)),
	}
	level := device.LogLevelError
	if testing.Verbose() {
		level = device.LogLevelVerbose
	}
	e.dev = device.NewDevice(e.tun.TUN(), bind, device.NewLogger(level, fmt.Sprintf("dev%d: ", i)))
	t.Cleanup(func() {
		e.dev.Close()
		bind.Release()
	})
	return e
}

func (e *tunnelEnd) configure(t *testing.T, peer *tunnelEnd, endpoint netip.AddrPort) {
	t.Helper()
	cfg := strings.Join([]string{
		"private_key=" + hex.EncodeToString(e.key.Bytes()),
		"listen_port=51820", // cannot be honoured; makes wireguard-go Close and Open the Bind
		"replace_peers=true",
		"public_key=" + hex.EncodeToString(peer.key.PublicKey().Bytes()),
		"endpoint=" + endpoint.String(),
		"replace_allowed_ips=true",
		"allowed_ip=" + netip.PrefixFrom(peer.ip4, 32).String(),
		"allowed_ip=" + netip.PrefixFrom(peer.ip6, 128).String(),
		"",
	}, "\n")
	if err := e.dev.IpcSet(cfg); err != nil {
		t.Fatalf("IpcSet: %v", err)
	}
	// The channel TUN's initial EventUp brings the device up asynchronously;
	// a packet read before that is dropped. Up is idempotent and synchronous.
	if err := e.dev.Up(); err != nil {
		t.Fatalf("Up: %v", err)
	}
}

// transit sends pkt into from's TUN and expects it, unchanged, out of to's.
func transit(t *testing.T, from, to *tunnelEnd, pkt []byte) {
	t.Helper()
	select {
	case from.tun.Outbound <- pkt:
	case <-time.After(5 * time.Second):
		t.Fatal("device did not read the packet from its TUN")
	}
	select {
	case got := <-to.tun.Inbound:
		if !bytes.Equal(got, pkt) {
			t.Fatalf("packet changed in transit:\n got %x\nwant %x", got, pkt)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("packet did not come through the tunnel")
	}
}

func TestTwoDevicesThroughFDBinds(t *testing.T) {
	for _, underlay := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")} {
		t.Run("underlay="+underlay.String(), func(t *testing.T) {
			a, b := newTunnelEnd(t, 1), newTunnelEnd(t, 2)
			a.configure(t, b, netip.AddrPortFrom(underlay, b.bind.Port()))
			b.configure(t, a, netip.AddrPortFrom(underlay, a.bind.Port()))

			transit(t, a, b, ping4(a.ip4, b.ip4, 1))
			transit(t, b, a, ping4(b.ip4, a.ip4, 2))
			transit(t, a, b, ping6(a.ip6, b.ip6, 3))
			transit(t, b, a, ping6(b.ip6, a.ip6, 4))

			// get=1 reports the socket's real port and an unmapped endpoint.
			state, err := b.dev.IpcGet()
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				fmt.Sprintf("listen_port=%d\n", b.bind.Port()),
				fmt.Sprintf("endpoint=%s\n", netip.AddrPortFrom(underlay, a.bind.Port())),
			} {
				if !strings.Contains(state, want) {
					t.Errorf("IpcGet lacks %q:\n%s", want, state)
				}
			}

			// Down and up close and reopen the Bind; the tunnel survives.
			if err := a.dev.Down(); err != nil {
				t.Fatal(err)
			}
			// Down drops the session; a new initiation within the same
			// whitened TAI64N tick (~16 ms) is rejected by b as a replay
			// and retried only after 5 s.
			time.Sleep(50 * time.Millisecond)
			if err := a.dev.Up(); err != nil {
				t.Fatal(err)
			}
			transit(t, a, b, ping4(a.ip4, b.ip4, 5))
			transit(t, b, a, ping6(b.ip6, a.ip6, 6))
		})
	}
}

// ping4 builds an IPv4 ICMP echo request.
func ping4(src, dst netip.Addr, seq uint16) []byte {
	icmp := echo(8, seq)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
	pkt := make([]byte, 20, 20+len(icmp))
	pkt[0] = 4<<4 | 5
	binary.BigEndian.PutUint16(pkt[2:], uint16(20+len(icmp)))
	pkt[8], pkt[9] = 64, 1 // TTL, ICMP
	copy(pkt[12:16], src.AsSlice())
	copy(pkt[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], checksum(pkt, 0))
	return append(pkt, icmp...)
}

// ping6 builds an IPv6 ICMPv6 echo request.
func ping6(src, dst netip.Addr, seq uint16) []byte {
	icmp := echo(128, seq)
	pkt := make([]byte, 40, 40+len(icmp))
	pkt[0] = 6 << 4
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(icmp)))
	pkt[6], pkt[7] = 58, 64 // next header ICMPv6, hop limit
	copy(pkt[8:24], src.AsSlice())
	copy(pkt[24:40], dst.AsSlice())
	// ICMPv6 checksum covers a pseudo-header: addresses, length, next header.
	pseudo := append(bytes.Clone(pkt[8:40]), 0, 0, byte(len(icmp)>>8), byte(len(icmp)), 0, 0, 0, 58)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, sum(pseudo)))
	return append(pkt, icmp...)
}

func echo(typ byte, seq uint16) []byte {
	b := []byte{typ, 0, 0, 0, 0x77, 0x77, 0, 0, 'w', 'g', '-', 'w', 'r', 'a', 'p'}
	binary.BigEndian.PutUint16(b[6:], seq)
	return b
}

// sum is the one's-complement sum of b (RFC 1071), not yet inverted.
func sum(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func checksum(b []byte, initial uint32) uint16 {
	s := initial + sum(b)
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
