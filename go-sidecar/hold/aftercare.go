package hold

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CleanMark is what a sidecar writes on its life pipe when it ends on
// purpose (stopped, or its ephemeral profile unused). The pipe's write end
// is held by the sidecar alone, so end of file without the mark means it
// died: killed, crashed, or its device failed.
const CleanMark = 'x'

// Died blocks until the life pipe ends and reports whether the sidecar died
// (true), rather than ended on purpose.
func Died(life io.Reader) bool {
	var b [1]byte
	for {
		n, err := life.Read(b[:])
		if n == 1 {
			return b[0] != CleanMark
		}
		if err != nil {
			return true
		}
	}
}

// Aftercare looks after a profile whose sidecar died: the programs still in
// its network namespace are told once, on their standard error, that they
// have no network and how to bring it back (they keep running: a sidecar's
// death must never let them out, and wg-wrap can start a new sidecar in the
// same namespace); once the last of them has left, the profile's runtime
// directory is removed, as the sidecar would have done.
type Aftercare struct {
	ProcRoot   string // "/proc"
	Netns      string // the dead sidecar's network namespace, "net:[…]"
	Exclude    []int  // our own pid
	ProfileDir string // $XDG_RUNTIME_DIR/wg-wrap/NAME
	SidecarPID int    // the dead sidecar, as its state.toml records it
	Message    string
	Interval   time.Duration
}

// Tell writes the message once to every distinct standard error of the
// processes in the namespace (a terminal shared by a shell and its jobs is
// told once); it returns how many it reached.
func (a *Aftercare) Tell() (int, error) {
	return Tell(a.ProcRoot, a.Netns, a.Exclude, a.Message)
}

// Tell writes message once to every distinct standard error of the
// processes under procRoot in network namespace netns (but exclude): what
// wg-wrap has to say to the programs of a profile.
func Tell(procRoot, netns string, exclude []int, message string) (int, error) {
	members, err := Members(procRoot, netns, exclude...)
	if err != nil {
		return 0, err
	}
	type key struct{ dev, ino, rdev uint64 }
	told := map[key]bool{}
	for _, pid := range members {
		fd, err := stderrOf(procRoot, pid)
		if err != nil {
			continue // gone, closed, a socket, or not ours
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil {
			k := key{uint64(st.Dev), st.Ino, uint64(st.Rdev)}
			if !told[k] && writable(fd) {
				told[k] = true
				unix.Write(fd, []byte(message))
			}
		}
		unix.Close(fd)
	}
	return len(told), nil
}

// writable waits up to a second for room to write: a copied descriptor
// shares the program's blocking mode, and a full pipe nobody reads must not
// hold the aftercare up. (The message is shorter than PIPE_BUF: with room
// for it, a pipe takes it whole.)
func writable(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds, 1000)
	return err == nil && n == 1 && fds[0].Revents&unix.POLLOUT != 0
}

// stderrOf is a descriptor for what pid's fd 2 refers to: a copy of the
// descriptor itself (pidfd_getfd: no permission on the file is needed, as
// for a pipe another user made), or, where the kernel refuses that (Yama's
// ptrace_scope), the file opened anew through /proc/PID/fd/2 — for
// appending, so that a program's `2>>log` is added to, not overwritten.
func stderrOf(procRoot string, pid int) (int, error) {
	if procRoot == "/proc" {
		if pidfd, err := unix.PidfdOpen(pid, 0); err == nil {
			fd, err := unix.PidfdGetfd(pidfd, 2, 0)
			unix.Close(pidfd)
			if err == nil {
				return fd, nil
			}
		}
	}
	path := filepath.Join(procRoot, strconv.Itoa(pid), "fd", "2")
	return unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
}

// Bury waits until no process is left in the namespace, then removes the
// profile directory, under wg-wrap's lock on the runtime directory and only
// if its state still names the dead sidecar (a new one may have been started
// in the namespace meanwhile: then it returns without removing anything).
// It gives up when stop is closed.
func (a *Aftercare) Bury(stop <-chan struct{}) error {
	ticker := time.NewTicker(a.Interval)
	defer ticker.Stop()
	for {
		done, err := a.buryIfEmpty()
		if done || err != nil {
			return err
		}
		select {
		case <-stop:
			return nil
		case <-ticker.C:
		}
	}
}

func (a *Aftercare) buryIfEmpty() (bool, error) {
	lock, err := os.Open(filepath.Dir(a.ProfileDir))
	if err != nil {
		return true, nil // the runtime directory is gone: nothing to remove
	}
	defer lock.Close()
	if err := flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return false, fmt.Errorf("locking %s: %w", lock.Name(), err)
	}
	if statePID(a.ProfileDir) != a.SidecarPID {
		return true, nil // removed, or taken over by a new sidecar
	}
	members, err := Members(a.ProcRoot, a.Netns, a.Exclude...)
	if err != nil || len(members) > 0 {
		return false, err
	}
	return true, os.RemoveAll(a.ProfileDir)
}

// statePID is the sidecar pid recorded in dir/state.toml (wg-wrap writes it
// as a plain `sidecar_pid = N` line); 0 when there is none.
func statePID(dir string) int {
	f, err := os.Open(filepath.Join(dir, "state.toml"))
	if err != nil {
		return 0
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if value, ok := strings.CutPrefix(scanner.Text(), "sidecar_pid = "); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(value))
			return pid
		}
	}
	return 0
}
