// Package natpmp asks a VPN gateway for a forwarded port with NAT-PMP
// (RFC 6886) and keeps the mapping alive.
//
// VPN providers that forward a port to a WireGuard client (ProtonVPN, and
// any gateway running miniupnpd) answer NAT-PMP on their tunnel address. The
// sidecar lives in the profile's network namespace, so its requests go
// through the tunnel like the wrapped program's traffic, and it keeps renewing
// the mapping for profiles that run with no wg-wrap process on the host.
//
// The package has three layers: the wire format (this file), a Client that
// sends one request and waits for its answer with the RFC's retransmissions
// (client.go), and a Mapper that holds mappings for UDP and TCP, renews them,
// notices a gateway that restarted and follows a port that moves (mapper.go).
package natpmp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// GatewayPort is where gateways listen for NAT-PMP requests (RFC 6886 §3).
const GatewayPort = 5351

// version is the only NAT-PMP version; PCP (RFC 6887) is version 2.
const version = 0

// Opcode says what a request asks for; its response carries Opcode+128.
type Opcode uint8

const (
	OpExternalAddress Opcode = 0 // the gateway's external IPv4 address
	OpMapUDP          Opcode = 1
	OpMapTCP          Opcode = 2

	responseBit Opcode = 128
)

// Protocol is what a mapping forwards: its request opcode.
type Protocol Opcode

const (
	UDP = Protocol(OpMapUDP)
	TCP = Protocol(OpMapTCP)
)

func (p Protocol) String() string {
	switch p {
	case UDP:
		return "udp"
	case TCP:
		return "tcp"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// MarshalText makes a Protocol "udp" or "tcp" in JSON.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// ResultCode is a response's verdict; anything but ResultSuccess is a refusal.
type ResultCode uint16

const (
	ResultSuccess            ResultCode = 0
	ResultUnsupportedVersion ResultCode = 1
	ResultNotAuthorized      ResultCode = 2
	ResultNetworkFailure     ResultCode = 3
	ResultOutOfResources     ResultCode = 4
	ResultUnsupportedOpcode  ResultCode = 5
)

// String is the code's meaning in one line (RFC 6886 §3.5), for status and
// logs: users see these when port forwarding does not work.
func (c ResultCode) String() string {
	switch c {
	case ResultSuccess:
		return "success"
	case ResultUnsupportedVersion:
		return "unsupported version: the gateway does not speak NAT-PMP version 0"
	case ResultNotAuthorized:
		return "not authorized or refused: the gateway does not let this client map ports"
	case ResultNetworkFailure:
		return "network failure: the gateway has no working external address yet"
	case ResultOutOfResources:
		return "out of resources: the gateway cannot create more mappings"
	case ResultUnsupportedOpcode:
		return "unsupported opcode: the gateway does not support this request"
	}
	return fmt.Sprintf("unknown result code %d", uint16(c))
}

// Request is a client's message: for OpExternalAddress only Op counts.
type Request struct {
	Op           Opcode
	InternalPort uint16 // the port on the client
	ExternalPort uint16 // suggested; the gateway may grant another
	Lifetime     uint32 // seconds; 0 deletes the mapping
}

// Marshal is the request on the wire: 2 bytes for the external address,
// 12 for a mapping.
func (r Request) Marshal() []byte {
	if r.Op == OpExternalAddress {
		return []byte{version, byte(r.Op)}
	}
	b := make([]byte, 12)
	b[0], b[1] = version, byte(r.Op)
	// b[2:4] is reserved, zero.
	binary.BigEndian.PutUint16(b[4:6], r.InternalPort)
	binary.BigEndian.PutUint16(b[6:8], r.ExternalPort)
	binary.BigEndian.PutUint32(b[8:12], r.Lifetime)
	return b
}

// ParseRequest reads a request (what a gateway does; the tests' fake
// gateway uses it).
func ParseRequest(b []byte) (Request, error) {
	if len(b) < 2 {
		return Request{}, fmt.Errorf("NAT-PMP request of %d bytes", len(b))
	}
	if b[0] != version {
		return Request{}, fmt.Errorf("NAT-PMP request of version %d", b[0])
	}
	r := Request{Op: Opcode(b[1])}
	switch r.Op {
	case OpExternalAddress:
		return r, nil
	case OpMapUDP, OpMapTCP:
		if len(b) < 12 {
			return Request{}, fmt.Errorf("NAT-PMP mapping request of %d bytes", len(b))
		}
		r.InternalPort = binary.BigEndian.Uint16(b[4:6])
		r.ExternalPort = binary.BigEndian.Uint16(b[6:8])
		r.Lifetime = binary.BigEndian.Uint32(b[8:12])
		return r, nil
	}
	return r, fmt.Errorf("NAT-PMP request with opcode %d", r.Op)
}

// Response is a gateway's answer. Op is the opcode of the request it
// answers (without the +128 of the wire).
type Response struct {
	Op     Opcode
	Result ResultCode
	// Epoch is the gateway's seconds since its mappings were last lost
	// (usually its boot): going backwards means they are gone (§3.6).
	Epoch           uint32
	ExternalAddress netip.Addr // OpExternalAddress only
	InternalPort    uint16     // mappings only
	ExternalPort    uint16     // mappings only: the one granted
	Lifetime        uint32     // mappings only: seconds granted
}

// Marshal is the response on the wire (the fake gateway sends these).
func (r Response) Marshal() []byte {
	var b []byte
	if r.Op == OpExternalAddress {
		b = make([]byte, 12)
		addr := r.ExternalAddress
		if !addr.Is4() {
			addr = netip.IPv4Unspecified()
		}
		a := addr.As4()
		copy(b[8:12], a[:])
	} else {
		b = make([]byte, 16)
		binary.BigEndian.PutUint16(b[8:10], r.InternalPort)
		binary.BigEndian.PutUint16(b[10:12], r.ExternalPort)
		binary.BigEndian.PutUint32(b[12:16], r.Lifetime)
	}
	b[0], b[1] = version, byte(r.Op|responseBit)
	binary.BigEndian.PutUint16(b[2:4], uint16(r.Result))
	binary.BigEndian.PutUint32(b[4:8], r.Epoch)
	return b
}

// errNotResponse marks a datagram that is no NAT-PMP response at all.
var errNotResponse = errors.New("not a NAT-PMP response")

// ParseResponse reads a response. A refusal may come short (8 bytes: the
// header and epoch), as some gateways send for opcodes they do not know; a
// success must carry its whole body.
func ParseResponse(b []byte) (Response, error) {
	if len(b) < 8 || b[0] != version || Opcode(b[1])&responseBit == 0 {
		return Response{}, fmt.Errorf("%w (%d bytes)", errNotResponse, len(b))
	}
	r := Response{
		Op:     Opcode(b[1]) &^ responseBit,
		Result: ResultCode(binary.BigEndian.Uint16(b[2:4])),
		Epoch:  binary.BigEndian.Uint32(b[4:8]),
	}
	if r.Result != ResultSuccess {
		return r, nil // the body is undefined in a refusal (§3.5)
	}
	switch r.Op {
	case OpExternalAddress:
		if len(b) < 12 {
			return Response{}, fmt.Errorf("%w: external address answer of %d bytes", errNotResponse, len(b))
		}
		r.ExternalAddress = netip.AddrFrom4([4]byte(b[8:12]))
	default:
		if len(b) < 16 {
			return Response{}, fmt.Errorf("%w: mapping answer of %d bytes", errNotResponse, len(b))
		}
		r.InternalPort = binary.BigEndian.Uint16(b[8:10])
		r.ExternalPort = binary.BigEndian.Uint16(b[10:12])
		r.Lifetime = binary.BigEndian.Uint32(b[12:16])
	}
	return r, nil
}
