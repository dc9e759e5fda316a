// Package proxy is the sidecar's proxy front: a SOCKS5 server (RFC 1928,
// with username/password authentication, RFC 1929) and an HTTP proxy
// (CONNECT and absolute-URI requests), both dialing from inside the
// namespace, so their connections and name lookups go through the tunnel.
//
// They accept on listening sockets opened on the host and handed to the
// sidecar; SOCKS5's UDP relay socket comes from the host the same way,
// since nothing inside can open a socket the host's programs could reach.
package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// Protocol numbers of RFC 1928 and RFC 1929.
const (
	socksVersion    = 0x05
	userPassVersion = 0x01

	methodNoAuth       = 0x00
	methodUserPass     = 0x02
	methodNoAcceptable = 0xff

	cmdConnect      = 0x01
	cmdBind         = 0x02
	cmdUDPAssociate = 0x03

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04

	repSucceeded           = 0x00
	repGeneralFailure      = 0x01
	repNotAllowed          = 0x02
	repNetworkUnreachable  = 0x03
	repHostUnreachable     = 0x04
	repConnectionRefused   = 0x05
	repTTLExpired          = 0x06
	repCommandNotSupported = 0x07
	repAddressNotSupported = 0x08
)

// Addr is a SOCKS address: an IP address or a domain name, and a port.
type Addr struct {
	IP   netip.Addr // when Name is empty
	Name string
	Port uint16
}

// String is the address in the form net.Dial takes.
func (a Addr) String() string {
	if a.Name != "" {
		return net.JoinHostPort(a.Name, strconv.Itoa(int(a.Port)))
	}
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// errProtocol marks a malformed message: the connection is closed.
type errProtocol struct{ what string }

func (e errProtocol) Error() string { return "socks5: " + e.what }

// errAddressType is an address type the request names but RFC 1928 lacks:
// answered with "address type not supported" before closing.
var errAddressType = errProtocol{"unknown address type"}

// readGreeting reads the client's version identifier/method selection
// message and returns the methods it offers.
//
//	VER(5) NMETHODS METHODS...
func readGreeting(r io.Reader) ([]byte, error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	if head[0] != socksVersion {
		return nil, errProtocol{fmt.Sprintf("version %d, not 5", head[0])}
	}
	if head[1] == 0 {
		return nil, errProtocol{"no authentication method offered"}
	}
	methods := make([]byte, head[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return nil, err
	}
	return methods, nil
}

// readUserPass reads an RFC 1929 username/password request.
//
//	VER(1) ULEN UNAME PLEN PASSWD
func readUserPass(r io.Reader) (user, password string, err error) {
	var head [2]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return "", "", err
	}
	if head[0] != userPassVersion {
		return "", "", errProtocol{fmt.Sprintf("username/password version %d, not 1", head[0])}
	}
	u := make([]byte, int(head[1])+1) // the name, then PLEN
	if _, err := io.ReadFull(r, u); err != nil {
		return "", "", err
	}
	p := make([]byte, u[len(u)-1])
	if _, err := io.ReadFull(r, p); err != nil {
		return "", "", err
	}
	return string(u[:len(u)-1]), string(p), nil
}

// readRequest reads a SOCKS request.
//
//	VER(5) CMD RSV(0) ATYP DST.ADDR DST.PORT
func readRequest(r io.Reader) (cmd byte, dst Addr, err error) {
	var head [3]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return 0, Addr{}, err
	}
	if head[0] != socksVersion {
		return 0, Addr{}, errProtocol{fmt.Sprintf("request version %d, not 5", head[0])}
	}
	// RSV must be 0; like most servers, other values are tolerated.
	dst, err = readAddr(r)
	return head[1], dst, err
}

// readAddr reads ATYP DST.ADDR DST.PORT.
func readAddr(r io.Reader) (Addr, error) {
	var atyp [1]byte
	if _, err := io.ReadFull(r, atyp[:]); err != nil {
		return Addr{}, err
	}
	var raw []byte
	switch atyp[0] {
	case atypIPv4:
		raw = make([]byte, 4+2)
	case atypIPv6:
		raw = make([]byte, 16+2)
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return Addr{}, err
		}
		raw = make([]byte, int(n[0])+2)
	default:
		return Addr{}, errAddressType
	}
	if _, err := io.ReadFull(r, raw); err != nil {
		return Addr{}, err
	}
	return decodeAddr(atyp[0], raw)
}

// decodeAddr decodes DST.ADDR DST.PORT once its length is known.
func decodeAddr(atyp byte, raw []byte) (Addr, error) {
	host, port := raw[:len(raw)-2], binary.BigEndian.Uint16(raw[len(raw)-2:])
	switch atyp {
	case atypIPv4, atypIPv6:
		ip, _ := netip.AddrFromSlice(host)
		return Addr{IP: ip.Unmap(), Port: port}, nil
	}
	if err := checkName(host); err != nil {
		return Addr{}, err
	}
	return Addr{Name: string(host), Port: port}, nil
}

// checkName refuses domain names that no resolver would accept and that
// could be misread on the way to one: empty, or with bytes outside
// printable ASCII (clients send internationalized names as punycode).
func checkName(name []byte) error {
	if len(name) == 0 {
		return errProtocol{"empty domain name"}
	}
	for _, c := range name {
		if c <= ' ' || c >= 0x7f {
			return errProtocol{"domain name with a control, space or non-ASCII byte"}
		}
	}
	return nil
}

// appendAddr appends ATYP DST.ADDR DST.PORT.
func appendAddr(b []byte, a Addr) []byte {
	switch {
	case a.Name != "":
		b = append(b, atypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	case a.IP.Is4() || a.IP.Is4In6():
		ip := a.IP.Unmap().As4()
		b = append(b, atypIPv4)
		b = append(b, ip[:]...)
	case a.IP.Is6():
		ip := a.IP.As16()
		b = append(b, atypIPv6)
		b = append(b, ip[:]...)
	default: // no address: 0.0.0.0
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.Port)
}

// replyMessage is a reply to a request.
//
//	VER(5) REP RSV(0) ATYP BND.ADDR BND.PORT
func replyMessage(code byte, bound Addr) []byte {
	return appendAddr([]byte{socksVersion, code, 0}, bound)
}

// UDP request header of RFC 1928 section 7.
//
//	RSV(0, 2 bytes) FRAG ATYP DST.ADDR DST.PORT DATA
var (
	errFragment  = errors.New("socks5: fragmented datagram (not supported, dropped)")
	errShortUDP  = errProtocol{"short UDP datagram"}
	errReserved  = errProtocol{"UDP datagram with non-zero reserved bytes"}
	udpHeaderMax = 4 + 1 + 255 + 2
)

// parseDatagram splits a relayed datagram into its destination and payload.
func parseDatagram(b []byte) (Addr, []byte, error) {
	if len(b) < 4 {
		return Addr{}, nil, errShortUDP
	}
	if b[0] != 0 || b[1] != 0 {
		return Addr{}, nil, errReserved
	}
	if b[2] != 0 {
		return Addr{}, nil, errFragment
	}
	var n int
	switch b[3] {
	case atypIPv4:
		n = 4
	case atypIPv6:
		n = 16
	case atypDomain:
		if len(b) < 5 {
			return Addr{}, nil, errShortUDP
		}
		n = 1 + int(b[4])
	default:
		return Addr{}, nil, errAddressType
	}
	if len(b) < 4+n+2 {
		return Addr{}, nil, errShortUDP
	}
	raw := b[4 : 4+n+2]
	if b[3] == atypDomain {
		raw = raw[1:]
	}
	dst, err := decodeAddr(b[3], raw)
	if err != nil {
		return Addr{}, nil, err
	}
	return dst, b[4+n+2:], nil
}

// appendDatagram appends the UDP request header for src, then payload.
func appendDatagram(b []byte, src Addr, payload []byte) []byte {
	b = appendAddr(append(b, 0, 0, 0), src)
	return append(b, payload...)
}
