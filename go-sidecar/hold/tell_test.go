package hold

import (
	"os"
	"path/filepath"
	"testing"
)

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
	told, err := Tell(root, mine, []int{99}, "tunnel down\n")
	if err != nil || told != 2 {
		t.Fatalf("Tell = %d, %v; want 2", told, err)
	}
	for path, want := range map[string]string{terminal: "tunnel down\n", other: "tunnel down\n", outside: ""} {
		if got, _ := os.ReadFile(path); string(got) != want {
			t.Errorf("%s got %q, want %q", path, got, want)
		}
	}
}

// A program started with `2>>log` keeps what its log had: the standard
// error opened anew (where pidfd_getfd is refused) is opened for appending.
func TestTellAppendsToAStandardErrorFile(t *testing.T) {
	const mine = "net:[4026532291]"
	root := fakeProc(t, map[string]string{"10": mine})
	log := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(log, []byte("what the program wrote before\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stderrTo(t, root, "10", log)
	if told, err := Tell(root, mine, nil, "tunnel down\n"); err != nil || told != 1 {
		t.Fatalf("Tell = %d, %v; want 1", told, err)
	}
	if got, _ := os.ReadFile(log); string(got) != "what the program wrote before\ntunnel down\n" {
		t.Errorf("log holds %q", got)
	}
}
