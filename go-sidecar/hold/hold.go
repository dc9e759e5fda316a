// Package hold decides when an ephemeral wg-wrap profile is no longer used.
//
// Every program joined to the profile inherits a shared flock on the
// profile's hold file, and so do its children; the kernel drops the lock when
// the last of them closes it, however they end. The sidecar polls for an
// exclusive lock: getting it means no holder is left. Programs may close
// their inherited descriptors (daemons do), so before giving up the sidecar
// also looks for any other process still inside its network namespace.
// The package also looks after a profile whose sidecar died (aftercare.go).
package hold

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Hold is the sidecar's side of a profile's hold file.
type Hold struct {
	file *os.File
	// othersInside reports whether any process other than the sidecar is
	// in its network namespace; replaced in tests.
	othersInside func() (bool, error)
}

// Open opens the hold file at path, which must exist. The sidecar's own
// network namespace is read now, so later scans compare against it.
func Open(path string) (*Hold, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	netns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading own network namespace: %w", err)
	}
	self := os.Getpid()
	return &Hold{
		file:         f,
		othersInside: func() (bool, error) { return OthersInNetns("/proc", self, netns) },
	}, nil
}

// Close closes the hold file, dropping the lock if held.
func (h *Hold) Close() error { return h.file.Close() }

// Unused reports whether the profile is unused: no holder (joined program) holds the file
// and no other process is in the namespace. When it returns true the
// exclusive lock stays held, so that a joiner arriving now blocks on its
// shared lock until the sidecar has exited rather than joining a namespace
// that is being torn down.
func (h *Hold) Unused() (bool, error) {
	fd := int(h.file.Fd())
	if err := flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("locking hold file: %w", err)
	}
	others, err := h.othersInside()
	if err != nil || others {
		if uerr := flock(fd, unix.LOCK_UN); uerr != nil && err == nil {
			err = fmt.Errorf("unlocking hold file: %w", uerr)
		}
		return false, err
	}
	return true, nil
}

// Watch checks Unused every interval until it is true (then it closes the
// returned channel) or stop is closed. Errors are passed to logf and the check is
// retried at the next tick.
func (h *Hold) Watch(interval time.Duration, stop <-chan struct{}, logf func(string, ...any)) <-chan struct{} {
	unused := make(chan struct{})
	go func() {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ticker.C:
			}
			done, err := h.Unused()
			if err != nil {
				logf("hold: %v", err)
			}
			if done {
				close(unused)
				return
			}
		}
	}()
	return unused
}

func flock(fd, how int) error {
	for range 100 { // EINTR is transient; bounded all the same
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
	return unix.EINTR
}

// OthersInNetns reports whether any process under procRoot other than self
// has the network namespace netns (as read from /proc/PID/ns/net, e.g.
// "net:[4026532291]").
func OthersInNetns(procRoot string, self int, netns string) (bool, error) {
	members, err := Members(procRoot, netns, self)
	return len(members) > 0, err
}

// Members lists the processes under procRoot whose network namespace is
// netns, except those in exclude: the programs attached to a profile.
// Processes that vanish or whose namespace link cannot be read (other
// users' processes) are skipped.
func Members(procRoot, netns string, exclude ...int) ([]int, error) {
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var members []int
	for _, e := range entries {
		pid, ok := parsePID(e.Name())
		if !ok || slices.Contains(exclude, pid) {
			continue
		}
		link, err := os.Readlink(filepath.Join(procRoot, e.Name(), "ns", "net"))
		if err != nil {
			continue
		}
		if link == netns {
			members = append(members, pid)
		}
	}
	return members, nil
}

// parsePID accepts the names of /proc's process directories: all digits.
func parsePID(name string) (int, bool) {
	if name == "" || len(name) > 10 {
		return 0, false
	}
	pid := 0
	for _, c := range name {
		if c < '0' || c > '9' {
			return 0, false
		}
		pid = pid*10 + int(c-'0')
	}
	return pid, true
}
