// Package forward relays published ports: connections and datagrams that
// arrive on a socket opened on the host are passed on to a port inside the
// sidecar's network namespace.
//
// The sidecar lives inside the namespace, so the sockets it opens itself
// (net.Dial, net.ListenUDP) are inside; the listening sockets it accepts on
// were opened on the host by wg-wrap and handed over, and keep belonging to
// the host's network namespace. Nothing here can open a host socket: the
// only way out of the namespace stays the tunnel.
package forward

import (
	"errors"
	"io"
	"net"
)

// Pipe copies bytes both ways between a and b until both directions have
// ended, then closes both. The end of one direction is passed on as a
// half-close (shutdown(SHUT_WR)), so protocols that send their request and
// then wait for the answer keep working. An error in either direction (a
// reset, a closed connection) ends both at once.
//
// Between two *net.TCPConn, io.Copy lets the kernel move the bytes with
// splice(2), without copying them through user space: callers must pass the
// connections themselves, not wrappers around them.
//
// It returns the bytes copied from a to b and from b to a.
func Pipe(a, b net.Conn) (aToB, bToA int64) {
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := copyHalf(b, a)
		if err != nil {
			a.Close()
			b.Close()
		}
		done <- result{n, err}
	}()
	bToA, err := copyHalf(a, b)
	if err != nil {
		a.Close()
		b.Close()
	}
	aToB = (<-done).n
	a.Close()
	b.Close()
	return aToB, bToA
}

// copyHalf copies src to dst until src's end of stream, then half-closes dst.
func copyHalf(dst, src net.Conn) (int64, error) {
	n, err := io.Copy(dst, src)
	if err != nil {
		return n, err
	}
	return n, CloseWrite(dst)
}

// CloseWrite shuts down the writing half of c where it has one (TCP, unix
// stream sockets), and closes it entirely otherwise.
func CloseWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		err := cw.CloseWrite()
		if errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil // ENOTCONN: the peer is gone; the other direction will say so
	}
	return c.Close()
}
