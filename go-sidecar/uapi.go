package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
)

// listenUAPI creates the UAPI socket at path, mode 0600. wireguard-go's own
// ipc.UAPIListen insists on /var/run/wireguard; the sidecar puts it in the
// profile's runtime directory instead.
func listenUAPI(path string) (*net.UnixListener, error) {
	return listenPrivate("unix", path)
}

// listenPrivate creates a unix socket ("unix" or "unixpacket") at path,
// mode 0600. An existing path is refused rather than replaced: it may
// belong to a live sidecar.
func listenPrivate(network, path string) (*net.UnixListener, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%s already exists", path)
	}
	// The socket must never exist with looser permissions, not even between
	// bind and chmod.
	old := unix.Umask(0o077)
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	unix.Umask(old)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("%s already exists", path)
		}
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// serveUAPI answers each UAPI connection with wireguard-go's protocol
// handler until the listener fails; closing the listener ends it silently.
func serveUAPI(l *net.UnixListener, dev *device.Device, errs chan<- error) {
	for {
		conn, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				errs <- err
			}
			return
		}
		go dev.IpcHandle(conn)
	}
}
