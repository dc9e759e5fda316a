package fdbind

import (
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is a peer's address as seen through an FDBind.
//
// The address is always stored unmapped: a peer reached through a dual-stack
// socket as ::ffff:192.0.2.1 is the same peer as 192.0.2.1, and wireguard-go
// feeds DstToBytes to cookie (mac2) and rate-limiting code, which must see one
// address per peer.
type Endpoint struct {
	dst netip.AddrPort
}

var _ conn.Endpoint = (*Endpoint)(nil)

// newEndpoint returns an Endpoint for dst with any IPv4-mapped address unmapped.
func newEndpoint(dst netip.AddrPort) *Endpoint {
	return &Endpoint{dst: netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())}
}

// AddrPort returns the destination address and port.
func (e *Endpoint) AddrPort() netip.AddrPort { return e.dst }

// ClearSrc does nothing: an FDBind never pins a source address (no sticky
// sockets; the host socket chooses its source by routing).
func (e *Endpoint) ClearSrc() {}

// SrcToString returns "": the source is not tracked.
func (e *Endpoint) SrcToString() string { return "" }

// SrcIP returns the zero Addr: the source is not tracked.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }

// DstIP returns the destination address (never IPv4-mapped).
func (e *Endpoint) DstIP() netip.Addr { return e.dst.Addr() }

// DstToString formats the destination as "192.0.2.1:51820" or "[2001:db8::1]:51820".
func (e *Endpoint) DstToString() string { return e.dst.String() }

// DstToBytes returns a stable binary form of the destination, used by
// wireguard-go for mac2 cookies.
func (e *Endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}
