package hold

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeProc builds a /proc-like tree: pid → network namespace link target.
func fakeProc(t *testing.T, procs map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, netns := range procs {
		dir := filepath.Join(root, pid, "ns")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if netns != "" {
			if err := os.Symlink(netns, filepath.Join(dir, "net")); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Non-process entries of /proc are ignored.
	if err := os.MkdirAll(filepath.Join(root, "sys", "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("net:[1]", filepath.Join(root, "sys", "ns", "net")); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestOthersInNetnsOnAFakeProc(t *testing.T) {
	const mine, host = "net:[4026532291]", "net:[4026531840]"
	for name, tc := range map[string]struct {
		procs map[string]string
		want  bool
	}{
		"only the sidecar":          {map[string]string{"100": mine, "1": host, "200": host}, false},
		"a wrapped process":         {map[string]string{"100": mine, "1": host, "300": mine}, true},
		"unreadable and gone procs": {map[string]string{"100": mine, "400": ""}, false},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := OthersInNetns(fakeProc(t, tc.procs), 100, mine)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("OthersInNetns = %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := OthersInNetns(filepath.Join(t.TempDir(), "missing"), 1, mine); err == nil {
		t.Fatal("OthersInNetns on a missing /proc did not fail")
	}
}

// TestOthersInNetnsOnRealProc puts a child into a fresh network namespace
// (inside a fresh user namespace, so no privilege is needed) and finds it.
func TestOthersInNetnsOnRealProc(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: os.Getuid(), HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: os.Getgid(), HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot create user+net namespaces here (unprivileged user namespaces must be enabled): %v", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	child := cmd.Process.Pid
	netns, err := os.Readlink("/proc/" + strconv.Itoa(child) + "/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if netns == self {
		t.Fatal("child did not get its own network namespace")
	}
	// Seen from anyone else, the child is inside its namespace.
	if got, err := OthersInNetns("/proc", os.Getpid(), netns); err != nil || !got {
		t.Fatalf("child not found in its namespace: %v, %v", got, err)
	}
	// Seen from the child itself, nobody else is.
	if got, err := OthersInNetns("/proc", child, netns); err != nil || got {
		t.Fatalf("found someone besides the child: %v, %v", got, err)
	}
}

func holdFile(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hold")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// holderLock takes a shared lock the way a joined program holds it.
func holderLock(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		t.Fatalf("shared lock: %v", err)
	}
	return f
}

func canLockShared(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func openHold(t *testing.T, path string, others bool) *Hold {
	t.Helper()
	h, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	h.othersInside = func() (bool, error) { return others, nil }
	return h
}

func TestHeldWhileAProgramHoldsTheLock(t *testing.T) {
	path := holdFile(t)
	h := openHold(t, path, false)
	w := holderLock(t, path)
	if unused, err := h.Unused(); err != nil || unused {
		t.Fatalf("Unused = %v, %v with a program attached", unused, err)
	}
	w.Close() // the program exits
	if unused, err := h.Unused(); err != nil || !unused {
		t.Fatalf("Unused = %v, %v after the last program left", unused, err)
	}
	// The exclusive lock is kept: a new joiner must wait for the sidecar to go.
	if canLockShared(t, path) {
		t.Fatal("a program could attach to a profile being torn down")
	}
}

func TestHeldWhileProcessesRemainInside(t *testing.T) {
	path := holdFile(t)
	h := openHold(t, path, true)
	if unused, err := h.Unused(); err != nil || unused {
		t.Fatalf("Unused = %v, %v with processes inside", unused, err)
	}
	// The exclusive lock was given back, so programs can still join.
	if !canLockShared(t, path) {
		t.Fatal("exclusive lock kept although the profile is in use")
	}
}

func TestOpenNeedsAnExistingFile(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open error = %v, want not-exist", err)
	}
}

func TestWatchSignalsWhenUnused(t *testing.T) {
	path := holdFile(t)
	h := openHold(t, path, false)
	w := holderLock(t, path)
	stop := make(chan struct{})
	defer close(stop)
	unused := h.Watch(10*time.Millisecond, stop, t.Logf)
	select {
	case <-unused:
		t.Fatal("Watch fired while a program held the lock")
	case <-time.After(100 * time.Millisecond):
	}
	w.Close()
	select {
	case <-unused:
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not fire after the program left")
	}
}
