package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"wg-wrap/go-sidecar/forward"
)

// HandshakeTimeout bounds the negotiation, up to the request; the relayed
// connection itself has no deadline.
const HandshakeTimeout = 10 * time.Second

// SOCKS5 is a SOCKS5 server (RFC 1928): CONNECT and UDP ASSOCIATE, with
// username/password authentication (RFC 1929) when Auth is set. BIND is
// refused: the namespace cannot listen where the host's clients reach.
type SOCKS5 struct {
	Auth *Credentials // nil: no authentication
	// Relay is the UDP socket of UDP ASSOCIATE, opened on the host on the
	// proxy's own address; without it, or without Owners, UDP ASSOCIATE
	// is refused.
	Relay *net.UDPConn
	// Owners tells who holds the host's sockets (NewOwners, over a
	// NETLINK_SOCK_DIAG socket opened on the host); UDP ASSOCIATE needs it
	// besides Relay: datagrams pass only from and to a socket of the user
	// who holds the association's control connection. Serve takes it over.
	Owners *Owners
	// Resolver resolves the names in requests and datagrams; nil:
	// net.DefaultResolver, which inside reads the namespace's resolv.conf.
	Resolver *net.Resolver
	// ListenUDP opens an association's socket inside; nil: net.ListenUDP.
	ListenUDP func() (*net.UDPConn, error)
	Logf      func(format string, args ...any)

	group  forward.Group
	dialer *dialer
	owners ownerLookup // Owners, or a test's stand-in
	relay  *udpRelay
}

// Serve answers clients on l until Close; it returns nil then, or the
// error that stopped it. It may be called once.
func (s *SOCKS5) Serve(l *net.TCPListener) error {
	s.setDefaults()
	if !s.group.Add(l) { // closed before it started
		l.Close()
		if s.Relay != nil {
			s.Relay.Close()
		}
		if s.Owners != nil {
			s.Owners.Close()
		}
		return nil
	}
	if s.Owners != nil {
		s.group.Add(s.Owners)
	}
	if s.Relay != nil {
		s.group.Add(s.Relay)
		if s.owners != nil {
			s.relay = newUDPRelay(s)
			s.group.Go(s.relay.serve)
		}
	}
	return s.group.Serve(l, func(c *net.TCPConn) { s.handle(c) }, s.Logf)
}

// Close stops the server and ends every connection and association.
func (s *SOCKS5) Close() error {
	s.group.Close()
	return nil
}

// Conns is the number of open client and outbound connections.
func (s *SOCKS5) Conns() int { return s.group.Len() }

func (s *SOCKS5) setDefaults() {
	s.dialer = newDialer(s.Resolver)
	if s.owners == nil && s.Owners != nil {
		s.owners = s.Owners
	}
	if s.ListenUDP == nil {
		s.ListenUDP = func() (*net.UDPConn, error) { return net.ListenUDP("udp", &net.UDPAddr{}) }
	}
	if s.Logf == nil {
		s.Logf = func(string, ...any) {}
	}
}

func (s *SOCKS5) handle(c net.Conn) {
	defer s.group.Remove(c)
	defer c.Close()
	c.SetDeadline(time.Now().Add(HandshakeTimeout))
	if err := s.negotiate(c); err != nil {
		return
	}
	cmd, dst, err := readRequest(c)
	if err != nil {
		if errors.Is(err, errAddressType) {
			c.Write(replyMessage(repAddressNotSupported, Addr{}))
		}
		return
	}
	switch cmd {
	case cmdConnect:
		s.connect(c, dst)
	case cmdUDPAssociate:
		s.associate(c, dst)
	default: // BIND, unknown commands
		c.Write(replyMessage(repCommandNotSupported, Addr{}))
	}
}

// negotiate picks the authentication method and runs it.
func (s *SOCKS5) negotiate(c net.Conn) error {
	methods, err := readGreeting(c)
	if err != nil {
		return err
	}
	offered := func(m byte) bool {
		for _, o := range methods {
			if o == m {
				return true
			}
		}
		return false
	}
	var method byte = methodNoAcceptable
	switch {
	case s.Auth != nil && offered(methodUserPass):
		method = methodUserPass
	case s.Auth == nil && offered(methodNoAuth):
		method = methodNoAuth
	case s.Auth == nil && offered(methodUserPass):
		// A client configured with credentials for a proxy that needs
		// none: take them and let it in, as it would be anyway.
		method = methodUserPass
	}
	if _, err := c.Write([]byte{socksVersion, method}); err != nil {
		return err
	}
	switch method {
	case methodNoAcceptable:
		return errProtocol{"no acceptable authentication method"}
	case methodUserPass:
		user, password, err := readUserPass(c)
		if err != nil {
			return err
		}
		if s.Auth != nil && !s.Auth.Match(user, password) {
			c.Write([]byte{userPassVersion, 0x01})
			s.Logf("socks5: %v: wrong username or password", c.RemoteAddr())
			return errProtocol{"authentication failed"}
		}
		if _, err := c.Write([]byte{userPassVersion, 0x00}); err != nil {
			return err
		}
	}
	return nil
}

func (s *SOCKS5) connect(c net.Conn, dst Addr) {
	out, err := s.dialer.dial(s.group.Context(), dst.String())
	if err != nil {
		if s.group.Context().Err() == nil { // not merely closing
			s.Logf("socks5: CONNECT %v: %v", dst, err)
		}
		c.Write(replyMessage(replyCode(err), Addr{}))
		return
	}
	if !s.group.Add(out) {
		out.Close()
		return
	}
	defer s.group.Remove(out)
	bound := Addr{}
	if a, ok := out.LocalAddr().(*net.TCPAddr); ok {
		bound = Addr{IP: a.AddrPort().Addr().Unmap(), Port: a.AddrPort().Port()}
	}
	if _, err := c.Write(replyMessage(repSucceeded, bound)); err != nil {
		out.Close()
		return
	}
	c.SetDeadline(time.Time{})
	forward.Pipe(c, out)
}

// replyCode maps a dial error to the closest SOCKS reply.
func replyCode(err error) byte {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, ErrNotAllowed):
		return repNotAllowed
	case errors.As(err, &dnsErr):
		return repHostUnreachable
	case errors.Is(err, syscall.ECONNREFUSED):
		return repConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH):
		return repNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH):
		return repHostUnreachable
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return repTTLExpired
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return repTTLExpired
	}
	return repGeneralFailure
}

// associate serves UDP ASSOCIATE: datagrams from the client's address to the
// relay socket go out from a socket inside, and answers come back, for as
// long as the control connection c stays open (RFC 1928, section 7).
func (s *SOCKS5) associate(c net.Conn, declared Addr) {
	remote, ok := c.RemoteAddr().(*net.TCPAddr)
	local, _ := c.LocalAddr().(*net.TCPAddr)
	if s.relay == nil || !ok || local == nil {
		c.Write(replyMessage(repCommandNotSupported, Addr{}))
		return
	}
	client := remote.AddrPort()
	// The relay's address as the client reached the proxy: the relay socket
	// is bound to the proxy's own address (or the same wildcard).
	bound := s.Relay.LocalAddr().(*net.UDPAddr).AddrPort()
	ip := bound.Addr().Unmap()
	if ip.IsUnspecified() {
		ip = local.AddrPort().Addr().Unmap()
	}
	relayAt := netip.AddrPortFrom(ip, bound.Port())
	// Who holds the client's end of the control connection: its datagrams
	// must come from a socket of the same user.
	owner, err := s.owners.TCP(client, local.AddrPort())
	if err != nil {
		s.Logf("socks5: UDP ASSOCIATE from %v: %v", client, err)
		c.Write(replyMessage(repGeneralFailure, Addr{}))
		return
	}
	a, err := s.relay.associate(client, owner, relayAt, declared.Port)
	if err != nil {
		s.Logf("socks5: UDP ASSOCIATE from %v: %v", client, err)
		c.Write(replyMessage(repGeneralFailure, Addr{}))
		return
	}
	defer a.close()
	if _, err := c.Write(replyMessage(repSucceeded, Addr{IP: ip, Port: bound.Port()})); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	// Whatever the client sends on the control connection is ignored; its
	// end (or reset) ends the association.
	io.Copy(io.Discard, c)
}
