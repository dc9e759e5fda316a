package forward

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Socket states in /proc/net/{tcp,udp}[6] (include/net/tcp_states.h).
const (
	stateListen = 0x0a // TCP_LISTEN
	stateClose  = 0x07 // TCP_CLOSE: an unconnected UDP socket
)

// procNet is where the namespace's socket tables are read: /proc/net is
// /proc/self/net, the tables of the reading thread's network namespace,
// which for the sidecar is the one inside.
var procNet = "/proc/net"

// Targets returns the addresses inside to try for a connection to port, in
// order: where a program listens on port (a wildcard address stands for the
// loopback address of its family), loopback first, IPv4 first, and
// 127.0.0.1 when nothing is found (the attempt then fails as it should).
func Targets(network string, port uint16) []netip.AddrPort {
	var tables []string
	var state int
	switch network {
	case "tcp":
		tables, state = []string{"tcp", "tcp6"}, stateListen
	case "udp":
		tables, state = []string{"udp", "udp6"}, stateClose
	default:
		panic("forward: unknown network " + network)
	}
	var found []netip.Addr
	for _, table := range tables {
		f, err := os.Open(procNet + "/" + table)
		if err != nil {
			continue // no IPv6 in this kernel
		}
		addrs, _ := listeningOn(f, port, state)
		f.Close()
		found = append(found, addrs...)
	}
	return orderTargets(found, port)
}

// orderTargets maps wildcards to loopback and puts loopback, then IPv4,
// first, without duplicates.
func orderTargets(found []netip.Addr, port uint16) []netip.AddrPort {
	rank := func(a netip.Addr) int {
		r := 0
		if !a.IsLoopback() {
			r += 2
		}
		if a.Is6() {
			r++
		}
		return r
	}
	var out []netip.AddrPort
	seen := map[netip.Addr]bool{}
	for want := 0; want < 4; want++ {
		for _, a := range found {
			switch {
			case a == netip.IPv4Unspecified():
				a = netip.AddrFrom4([4]byte{127, 0, 0, 1})
			case a == netip.IPv6Unspecified():
				a = netip.IPv6Loopback()
			}
			if rank(a) == want && !seen[a] {
				seen[a] = true
				out = append(out, netip.AddrPortFrom(a, port))
			}
		}
	}
	if len(out) == 0 {
		out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port))
	}
	return out
}

// listeningOn parses one /proc/net socket table and returns the local
// addresses of the sockets in state bound to port.
//
//	sl  local_address rem_address   st ...
//	 0: 0100007F:1F90 00000000:0000 0A ...
func listeningOn(r io.Reader, port uint16, state int) ([]netip.Addr, error) {
	var found []netip.Addr
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		st, err := strconv.ParseUint(fields[3], 16, 8)
		if err != nil || int(st) != state {
			continue
		}
		addr, p, err := parseProcAddr(fields[1])
		if err != nil || p != port {
			continue
		}
		found = append(found, addr)
	}
	return found, sc.Err()
}

// parseProcAddr decodes "0100007F:1F90": the address as the kernel prints
// it, each 32-bit word of the network-order address read as a number in the
// host's byte order, then the port.
func parseProcAddr(s string) (netip.Addr, uint16, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("no port in %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, err
	}
	if len(hexAddr) != 8 && len(hexAddr) != 32 {
		return netip.Addr{}, 0, fmt.Errorf("bad address in %q", s)
	}
	raw := make([]byte, len(hexAddr)/2)
	for i := 0; i < len(raw); i += 4 {
		word, err := strconv.ParseUint(hexAddr[2*i:2*i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("bad address in %q", s)
		}
		binary.NativeEndian.PutUint32(raw[i:], uint32(word))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr.Unmap(), uint16(port), nil
}
