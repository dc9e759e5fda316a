// Package peer serves a unix socket to the user's own processes only.
//
// The sidecar's UAPI and control sockets are bound by wg-wrap at abstract
// addresses of the host's network namespace (no file, so no file mode):
// every local user may connect there, and the kernel's word on who did
// (SO_PEERCRED) decides, as a socket file's mode 0600 used to.
package peer

import (
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// AcceptOwn accepts the next connection from a process of our own user;
// others are closed at once (and logged).
func AcceptOwn(l *net.UnixListener, logf func(string, ...any)) (*net.UnixConn, error) {
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := UID(conn)
		if err == nil && uid == os.Getuid() {
			return conn, nil
		}
		if err != nil {
			logf("refusing a connection on %v: %v", l.Addr(), err)
		} else {
			logf("refusing a connection on %v from uid %d", l.Addr(), uid)
		}
		conn.Close()
	}
}

// UID is the user of the process at the other end of conn.
func UID(conn *net.UnixConn) (int, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if cerr != nil {
		return -1, cerr
	}
	return int(cred.Uid), nil
}
