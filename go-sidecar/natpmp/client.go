package natpmp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
)

// Retry is the retransmission schedule of §3.1: a request is sent up to
// Tries times; after the first send the client waits First for an answer,
// after each next send twice as long as before.
type Retry struct {
	First time.Duration
	Tries int
}

// RFCRetry is §3.1's schedule: 9 sends, 250 ms doubling to 64 s, so a
// gateway that never answers is given up on 127.75 s after the first send.
var RFCRetry = Retry{First: 250 * time.Millisecond, Tries: 9}

// wait is how long the client listens after send number try (from 0).
func (r Retry) wait(try int) time.Duration { return r.First << try }

// Total is how long a request may wait for its answer in all.
func (r Retry) Total() time.Duration { return r.First<<r.Tries - r.First }

var (
	// ErrNoAnswer: every try of a request went unanswered.
	ErrNoAnswer = errors.New("no answer")
	// ErrRefused: the gateway sent ICMP port unreachable; nothing listens
	// for NAT-PMP there (ProtonVPN does this for a key made without it).
	ErrRefused = errors.New("connection refused")
)

// ResultError is a gateway's refusal: a response with a non-zero result.
type ResultError struct {
	Request  Request
	Response Response
}

func (e *ResultError) Error() string {
	what := "external address request"
	if e.Request.Op != OpExternalAddress {
		what = Protocol(e.Request.Op).String() + " mapping request"
	}
	return fmt.Sprintf("%s: %v", what, e.Response.Result)
}

// Client exchanges requests with one gateway. Its methods may be called
// from several goroutines; exchanges take turns, since answers cannot be
// told apart from answers to an earlier request of the same opcode.
type Client struct {
	conn      net.PacketConn
	gateway   netip.AddrPort
	connected bool // conn is connected to gateway: Write, not WriteTo
	retry     Retry

	mu sync.Mutex
}

// Dial opens a UDP socket connected to gateway (an IPv4 address and
// usually GatewayPort) in the caller's network namespace. Connected, it
// hears only the gateway, and an ICMP port unreachable from it becomes
// ErrRefused at once instead of a silence of two minutes.
func Dial(gateway netip.AddrPort, retry Retry) (*Client, error) {
	if !gateway.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("NAT-PMP gateway %v: NAT-PMP is IPv4 only", gateway)
	}
	gateway = netip.AddrPortFrom(gateway.Addr().Unmap(), gateway.Port())
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(gateway))
	if err != nil {
		return nil, fmt.Errorf("NAT-PMP socket to %v: %w", gateway, err)
	}
	return &Client{conn: conn, gateway: gateway, connected: true, retry: retry}, nil
}

// NewClient exchanges over conn, an unconnected socket the caller owns
// (Close closes it); answers from anywhere but gateway are ignored.
func NewClient(conn net.PacketConn, gateway netip.AddrPort, retry Retry) *Client {
	gateway = netip.AddrPortFrom(gateway.Addr().Unmap(), gateway.Port())
	return &Client{conn: conn, gateway: gateway, retry: retry}
}

// Gateway is the address requests go to.
func (c *Client) Gateway() netip.AddrPort { return c.gateway }

// Close closes the socket.
func (c *Client) Close() error { return c.conn.Close() }

// ExternalAddress asks for the gateway's external IPv4 address.
func (c *Client) ExternalAddress(ctx context.Context) (Response, error) {
	return c.Exchange(ctx, Request{Op: OpExternalAddress})
}

// Map asks for a mapping of proto from external port (suggested) to
// internal port, for lifetime seconds; lifetime 0 deletes it (with
// internal port 0: all of this client's mappings of proto, §3.4).
func (c *Client) Map(ctx context.Context, proto Protocol, internal, external uint16, lifetime uint32) (Response, error) {
	return c.Exchange(ctx, Request{Op: Opcode(proto), InternalPort: internal, ExternalPort: external, Lifetime: lifetime})
}

// Exchange sends req and returns the gateway's answer: a refusal comes
// with a *ResultError (and the response, for its epoch). Datagrams from
// elsewhere, with another opcode, or for another internal port are not
// the answer and are ignored. It gives up with ErrNoAnswer after the Retry
// schedule, or with ctx's error as soon as ctx is done.
func (c *Client) Exchange(ctx context.Context, req Request) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A read blocked in the kernel does not watch ctx: a deadline in the
	// past wakes it up. The deadlines set below come before the check of
	// ctx that follows them, so this one cannot be overwritten unseen.
	stop := context.AfterFunc(ctx, func() { c.conn.SetReadDeadline(time.Now()) })
	defer stop()
	msg := req.Marshal()
	buf := make([]byte, 64)
	start := time.Now()
	for try := 0; try < c.retry.Tries; try++ {
		if err := c.send(msg); err != nil {
			return Response{}, err
		}
		deadline := time.Now().Add(c.retry.wait(try))
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := c.conn.SetReadDeadline(deadline); err != nil {
			return Response{}, fmt.Errorf("NAT-PMP socket: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return Response{}, err
		}
		for {
			n, from, err := c.conn.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := ctx.Err(); err != nil {
					return Response{}, err
				}
				if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
					return Response{}, context.DeadlineExceeded
				}
				break // the next try
			}
			if err != nil {
				return Response{}, c.wrap("reading from", err)
			}
			resp, ok := c.answer(req, buf[:n], from)
			if !ok {
				continue
			}
			if resp.Result != ResultSuccess {
				return resp, &ResultError{Request: req, Response: resp}
			}
			return resp, nil
		}
	}
	return Response{}, fmt.Errorf("%v: %w after %d tries in %v", c.gateway, ErrNoAnswer,
		c.retry.Tries, time.Since(start).Round(time.Millisecond))
}

func (c *Client) send(msg []byte) error {
	var err error
	if c.connected {
		_, err = c.conn.(*net.UDPConn).Write(msg)
	} else {
		_, err = c.conn.WriteTo(msg, net.UDPAddrFromAddrPort(c.gateway))
	}
	if err != nil {
		return c.wrap("sending to", err)
	}
	return nil
}

func (c *Client) wrap(op string, err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%v: %w (ICMP port unreachable: nothing serves NAT-PMP there)", c.gateway, ErrRefused)
	}
	return fmt.Errorf("NAT-PMP %s %v: %w", op, c.gateway, err)
}

// answer reports whether the datagram b from is the gateway's answer to req.
func (c *Client) answer(req Request, b []byte, from net.Addr) (Response, bool) {
	udp, ok := from.(*net.UDPAddr)
	if !ok {
		return Response{}, false
	}
	source := udp.AddrPort()
	if source.Addr().Unmap() != c.gateway.Addr() || source.Port() != c.gateway.Port() {
		return Response{}, false
	}
	resp, err := ParseResponse(b)
	if err != nil || resp.Op != req.Op {
		return Response{}, false
	}
	// A mapping's answer names the internal port asked for; ProtonVPN
	// answers a request for internal port 0 with 0, others may name the
	// port they chose, so 0 accepts any.
	if resp.Result == ResultSuccess && req.Op != OpExternalAddress &&
		req.InternalPort != 0 && resp.InternalPort != req.InternalPort {
		return Response{}, false
	}
	return resp, true
}
