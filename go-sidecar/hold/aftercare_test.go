package hold

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDiedIsEndOfFileWithoutTheCleanMark(t *testing.T) {
	for input, want := range map[string]bool{"": true, "x": false, "?": true} {
		if got := Died(strings.NewReader(input)); got != want {
			t.Errorf("Died(%q) = %v, want %v", input, got, want)
		}
	}
}

// stderrTo points the fake /proc's PID/fd/2 at target.
func stderrTo(t *testing.T, root, pid, target string) {
	t.Helper()
	dir := filepath.Join(root, pid, "fd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "2")); err != nil {
		t.Fatal(err)
	}
}

func TestTellReachesEachStandardErrorOnce(t *testing.T) {
	const mine, host = "net:[4026532291]", "net:[4026531840]"
	root := fakeProc(t, map[string]string{"10": mine, "11": mine, "12": mine, "20": host, "99": mine})
	tmp := t.TempDir()
	terminal, other, outside := filepath.Join(tmp, "tty"), filepath.Join(tmp, "log"), filepath.Join(tmp, "host")
	for _, f := range []string{terminal, other, outside} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	stderrTo(t, root, "10", terminal) // a shell and its job share a terminal
	stderrTo(t, root, "11", terminal)
	stderrTo(t, root, "12", other)
	stderrTo(t, root, "20", outside)  // another namespace: not told
	stderrTo(t, root, "99", terminal) // ourselves: excluded
	a := &Aftercare{ProcRoot: root, Netns: mine, Exclude: []int{99}, Message: "tunnel down\n"}
	told, err := a.Tell()
	if err != nil || told != 2 {
		t.Fatalf("Tell = %d, %v; want 2", told, err)
	}
	for path, want := range map[string]string{terminal: "tunnel down\n", other: "tunnel down\n", outside: ""} {
		if got, _ := os.ReadFile(path); string(got) != want {
			t.Errorf("%s got %q, want %q", path, got, want)
		}
	}
}

func profileDir(t *testing.T, pid string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "wg0")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	state := "name = \"wg0\"\nmode = \"persistent\"\nsidecar_pid = " + pid + "\nsidecar_start = 5\n"
	if err := os.WriteFile(filepath.Join(dir, "state.toml"), []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuryWaitsForTheLastProcessThenRemovesTheProfile(t *testing.T) {
	const mine = "net:[4026532291]"
	root := fakeProc(t, map[string]string{"10": mine})
	dir := profileDir(t, "7")
	a := &Aftercare{ProcRoot: root, Netns: mine, ProfileDir: dir, SidecarPID: 7, Interval: 10 * time.Millisecond}
	done := make(chan error, 1)
	go func() { done <- a.Bury(nil) }()
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("removed while a process was inside: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(root, "10")); err != nil { // it exits
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Bury did not return after the last process left")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("profile directory left: %v", err)
	}
}

func TestBuryLeavesAProfileANewSidecarTookOver(t *testing.T) {
	dir := profileDir(t, "8") // healed: state names another sidecar
	a := &Aftercare{ProcRoot: fakeProc(t, nil), Netns: "net:[1]", ProfileDir: dir, SidecarPID: 7, Interval: time.Millisecond}
	if err := a.Bury(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.toml")); err != nil {
		t.Fatalf("a profile taken over was removed: %v", err)
	}
}

func TestBuryStopsWhenAsked(t *testing.T) {
	const mine = "net:[4026532291]"
	dir := profileDir(t, "7")
	a := &Aftercare{ProcRoot: fakeProc(t, map[string]string{"10": mine}), Netns: mine, ProfileDir: dir, SidecarPID: 7, Interval: time.Millisecond}
	stop := make(chan struct{})
	close(stop)
	if err := a.Bury(stop); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatal("removed although a process is inside")
	}
}
