package hold

import (
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// CleanMark is what a sidecar writes on its life pipe when it ends on
// purpose (stopped, or its ephemeral profile unused). The pipe's write end
// is held by the sidecar alone, so end of file without the mark means it
// died: killed, crashed, or its device failed, and its aftercare process
// (wg-wrap-launcher aftercare, launcher/aftercare.c) takes over.
const CleanMark = 'x'

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
