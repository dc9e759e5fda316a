package forward

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Group tracks the goroutines and open connections of one server, so that
// closing the server ends every connection it relays and returns only once
// nothing of it runs any more. What its goroutines wait for besides
// connections (dials, name lookups) takes the group's Context, which Close
// cancels: a dial to a destination that never answers must not hold up a
// shutdown for its whole timeout.
type Group struct {
	mu     sync.Mutex
	open   map[io.Closer]struct{}
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// Context is done once the group is closed.
func (g *Group) Context() context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.initContext()
	return g.ctx
}

func (g *Group) initContext() {
	if g.ctx == nil {
		g.ctx, g.cancel = context.WithCancel(context.Background())
	}
}

// Go runs fn in a new goroutine, unless the group is closed.
func (g *Group) Go(fn func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
	return true
}

// Add records c to be closed with the group. It returns false, and leaves
// c alone, when the group is already closed: the caller then closes c.
func (g *Group) Add(c io.Closer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	if g.open == nil {
		g.open = make(map[io.Closer]struct{})
	}
	g.open[c] = struct{}{}
	return true
}

// Remove forgets c (the caller closes it).
func (g *Group) Remove(c io.Closer) {
	g.mu.Lock()
	delete(g.open, c)
	g.mu.Unlock()
}

// Len is the number of open connections.
func (g *Group) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.open)
}

// Close cancels the group's Context, closes every recorded connection and
// waits for the goroutines.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.initContext()
	cancel := g.cancel
	open := g.open
	g.open = nil
	g.mu.Unlock()
	cancel()
	for c := range open {
		c.Close()
	}
	g.wg.Wait()
}

// Serve accepts connections on l until it is closed, and hands each to
// handle in a goroutine of the group, which records the connection (handle
// removes it when done). Accept errors that are a shortage (out of file
// descriptors or memory) are waited out, and told to logf. It returns nil
// when l or the group is closed, or the error that stopped it.
func (g *Group) Serve(l *net.TCPListener, handle func(*net.TCPConn), logf func(string, ...any)) error {
	var delay time.Duration
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var retry bool
			if delay, retry = acceptBackoff(err, delay); retry {
				logf("accepting on %v: %v; retrying", l.Addr(), err)
				continue
			}
			return err
		}
		delay = 0
		if !g.Add(c) {
			c.Close()
			return nil
		}
		if !g.Go(func() { handle(c) }) {
			g.Remove(c)
			c.Close()
			return nil
		}
	}
}

// acceptBackoff reports whether an accept error is one to wait out (the
// process or the system is out of file descriptors or memory: a busy
// server must not spin nor stop) and sleeps for delay if so; it returns the
// next delay to use.
func acceptBackoff(err error, delay time.Duration) (time.Duration, bool) {
	if !errors.Is(err, syscall.EMFILE) && !errors.Is(err, syscall.ENFILE) &&
		!errors.Is(err, syscall.ENOBUFS) && !errors.Is(err, syscall.ENOMEM) {
		return 0, false
	}
	if delay == 0 {
		delay = 5 * time.Millisecond
	}
	time.Sleep(delay)
	return min(2*delay, time.Second), true
}
