package view

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// hostSide is one OS thread in a mount namespace of its own: a copy of the
// profile's, with the views taken off again, so that the host's /etc and
// /run are seen there as they are. Bind mounts can only be cloned from a
// mount namespace one is in, and the profile's own shows the views: so
// every look at the host and every clone of a host entry happens on this
// thread, and the clones are attached to the profile's namespace by the
// others. Programs of the profile cannot enter this namespace (that takes
// capabilities in the profile's user namespace, which they do not have),
// nor reach it through /proc (the sidecar holds more capabilities than
// they do), and it ends with the sidecar.
type hostSide struct {
	calls chan func()
}

// startHostSide starts the thread. roots are the mount points of the views
// and hides: whatever the profile's namespace has mounted on them (a view
// made by an earlier sidecar, when a new one is started among the programs
// it left) is taken off in the copy. Mounts that came from the host are
// locked (they were copied into a less privileged user namespace) and stay.
func startHostSide(roots []string) (*hostSide, error) {
	h := &hostSide{calls: make(chan func())}
	started := make(chan error, 1)
	go func() {
		// Locked for good: when this goroutine ends, so does the thread,
		// and no other goroutine ever runs in its namespace. The Go
		// runtime creates new threads from a clean template thread while
		// one is locked, so none inherits it either.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread's namespaces are the process's, as /proc and
			// pidfds show them: it must stay in the profile's.
			started <- errors.New("the host side would be the main thread")
			return
		}
		// CLONE_FS first: the threads of a process share their root and
		// working directory, and a thread that shares them cannot change
		// mount namespace.
		if err := unix.Unshare(unix.CLONE_FS | unix.CLONE_NEWNS); err != nil {
			started <- fmt.Errorf("a mount namespace for the host side: %w", err)
			return
		}
		for _, root := range roots {
			for range maxStack {
				if unix.Unmount(root, unix.MNT_DETACH) != nil {
					break // not a mount point any more, or a locked one of the host
				}
			}
		}
		started <- nil
		for f := range h.calls {
			f()
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return h, nil
}

// do runs f on the host side and waits for it.
func (h *hostSide) do(f func()) {
	done := make(chan struct{})
	h.calls <- func() {
		defer close(done)
		f()
	}
	<-done
}

// lstat is unix.Lstat on the host side.
func (h *hostSide) lstat(path string) (st unix.Stat_t, err error) {
	h.do(func() { err = unix.Lstat(path, &st) })
	return st, err
}

// stat is unix.Stat on the host side.
func (h *hostSide) stat(path string) (st unix.Stat_t, err error) {
	h.do(func() { err = unix.Stat(path, &st) })
	return st, err
}

// clone is a detached copy of the host's mount tree at path (the mount
// that covers it, from path down), to be attached in the profile's
// namespace.
func (h *hostSide) clone(path string) (fd int, err error) {
	h.do(func() {
		fd, err = unix.OpenTree(unix.AT_FDCWD, path,
			unix.OPEN_TREE_CLONE|unix.AT_RECURSIVE|unix.AT_SYMLINK_NOFOLLOW|unix.O_CLOEXEC)
	})
	return fd, err
}

// readlink is unix.Readlink on the host side.
func (h *hostSide) readlink(path string) (string, error) {
	var target string
	var err error
	h.do(func() {
		buf := make([]byte, unix.PathMax)
		var n int
		if n, err = unix.Readlink(path, buf); err == nil {
			target = string(buf[:n])
		}
	})
	return target, err
}

// readFile reads a host file, following symlinks as a program would.
func (h *hostSide) readFile(path string, limit int) (data []byte, err error) {
	h.do(func() {
		var fd int
		if fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0); err != nil {
			return
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		if err = unix.Fstat(fd, &st); err != nil {
			return
		}
		// Sized from the file (a resolv.conf is a few hundred bytes), with
		// room to notice one that grew meanwhile.
		buf := make([]byte, min(int(max(st.Size, 0))+4096, limit+1))
		total := 0
		for total < len(buf) {
			n, rerr := unix.Read(fd, buf[total:])
			if rerr == unix.EINTR {
				continue
			}
			if rerr != nil {
				err = rerr
				return
			}
			if n == 0 {
				break
			}
			total += n
		}
		if total > limit {
			err = fmt.Errorf("larger than %d bytes", limit)
			return
		}
		data = buf[:total]
	})
	return data, err
}

// realpath resolves a host path's symlinks (at most 40, as the kernel).
func (h *hostSide) realpath(path string) (string, error) {
	var out string
	var err error
	h.do(func() {
		var fd int
		if fd, err = unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0); err != nil {
			return
		}
		defer unix.Close(fd)
		buf := make([]byte, unix.PathMax)
		var n int
		if n, err = unix.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd), buf); err == nil {
			out = string(buf[:n])
		}
	})
	return out, err
}

// watch adds an inotify watch on a host path.
func (h *hostSide) watch(inotify int, path string, mask uint32) (wd int, err error) {
	h.do(func() { wd, err = unix.InotifyAddWatch(inotify, path, mask) })
	return wd, err
}
