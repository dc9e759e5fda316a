package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// socketpair returns two connected unix stream sockets: unlike net.Pipe
// they can be half-closed, like TCP.
func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return conns[0], conns[1]
}

// runHandshake feeds in to a server connection and returns all it answers.
// What it dials stays in the test's namespace, where only lo is up: a
// CONNECT to anywhere but the peer's address fails at once, and no name
// resolves.
func runHandshake(t testing.TB, auth *Credentials, in []byte) []byte {
	s := &SOCKS5{Auth: auth}
	s.setDefaults()
	s.dialer.Resolver = nowhere
	client, server := socketpair(t)
	defer client.Close()
	done := make(chan struct{})
	go func() { s.handle(server); close(done) }()
	client.SetDeadline(time.Now().Add(HandshakeTimeout + 5*time.Second))
	go func() {
		client.Write(in)
		client.(*net.UnixConn).CloseWrite()
	}()
	out, _ := io.ReadAll(client)
	select {
	case <-done:
	case <-time.After(HandshakeTimeout + 5*time.Second):
		t.Fatalf("the server did not end after %x", in)
	}
	return out
}

// nowhere is a resolver that knows no name and asks no server.
var nowhere = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no nameserver in this test")
}}
