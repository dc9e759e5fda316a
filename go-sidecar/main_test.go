package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseArgs(t *testing.T) {
	opts, err := parseArgs([]string{"--uapi", "/run/x.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ifname != "tun0" || opts.mtu != 1420 || opts.holdPath != "" || opts.verbose {
		t.Fatalf("defaults: %+v", opts)
	}
	opts, err = parseArgs([]string{"--uapi=/s", "--ifname", "wg7", "--mtu", "1280", "--hold", "/h", "-v"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts != (options{uapiPath: "/s", ifname: "wg7", mtu: 1280, holdPath: "/h", verbose: true}) {
		t.Fatalf("parsed %+v", opts)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--uapi PATH is required"},
		{[]string{"--uapi", "/s", "--mtu", "575"}, "out of range"},
		{[]string{"--uapi", "/s", "--mtu", "65536"}, "out of range"},
		{[]string{"--uapi", "/s", "--ifname", "a/b"}, "not a valid interface name"},
		{[]string{"--uapi", "/s", "--ifname", "sixteen-chars-xx"}, "not a valid interface name"},
		{[]string{"--uapi", "/s", "extra"}, "unexpected argument"},
		{[]string{"--private-key", "x"}, "not defined"},
	} {
		if _, err := parseArgs(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseArgs(%q) error = %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestFdFromEnv(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	const name = "WG_WRAP_TEST_FD"
	for value, want := range map[string]string{
		"":        "not set",
		"x":       "not a file descriptor number",
		"-3":      "not a file descriptor number",
		"1":       "standard stream",
		"1048575": "not open",
	} {
		t.Setenv(name, value)
		if _, err := fdFromEnv(name, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s=%q: error = %v, want %q", name, value, err, want)
		}
	}
	t.Setenv(name, "")
	if fd, err := fdFromEnv(name, false); fd != -1 || err != nil {
		t.Errorf("optional and unset: %d, %v", fd, err)
	}
	t.Setenv(name, strconv.Itoa(int(w.Fd())))
	if fd, err := fdFromEnv(name, true); fd != int(w.Fd()) || err != nil {
		t.Errorf("open fd: %d, %v", fd, err)
	}
}

// setReadyPipe makes a pipe and names its write end in WG_WRAP_READY_FD, for
// whoever calls readyFromEnv (and so takes ownership of it) next.
func setReadyPipe(t *testing.T) *os.File {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	fd, err := unix.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Setenv(envReadyFD, strconv.Itoa(fd))
	return r
}

func readyPipeForTest(t *testing.T) (*readyPipe, *os.File) {
	t.Helper()
	r := setReadyPipe(t)
	ready, err := readyFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	return ready, r
}

func TestReadyPipeSaysReadyOnceAndCloses(t *testing.T) {
	ready, r := readyPipeForTest(t)
	if err := ready.ok(); err != nil {
		t.Fatal(err)
	}
	ready.fail("too late")    // ignored: the outcome was already sent
	got, err := io.ReadAll(r) // EOF proves the write end was closed
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "READY\n" {
		t.Fatalf("ready pipe got %q", got)
	}
}

func TestReadyPipeReportsErrorsOnOneLine(t *testing.T) {
	ready, r := readyPipeForTest(t)
	ready.fail("creating TUN: bad\nthings")
	got, _ := io.ReadAll(r)
	if string(got) != "ERROR creating TUN: bad things\n" {
		t.Fatalf("ready pipe got %q", got)
	}
}

func TestReadyFromEnvRefusesAReadOnlyDescriptor(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	t.Setenv(envReadyFD, strconv.Itoa(int(r.Fd())))
	if _, err := readyFromEnv(); err == nil || !strings.Contains(err.Error(), "not open for writing") {
		t.Fatalf("error = %v", err)
	}
}

// TestStartupFailureIsReported drives run() up to the host socket check,
// which fails before anything is created.
func TestStartupFailureIsReported(t *testing.T) {
	for _, tc := range []struct {
		env  string
		args []string
		code int
		want string
	}{
		{"", []string{"--uapi", "/nonexistent/x"}, exitFailure, "ERROR WG_WRAP_HOST_SOCKET_FD: not set"},
		{"0", []string{"--uapi", "/nonexistent/x"}, exitFailure, "ERROR WG_WRAP_HOST_SOCKET_FD: 0 is a standard stream"},
		{"", []string{"--mtu", "9"}, exitUsage, "ERROR usage: "},
	} {
		r := setReadyPipe(t)
		t.Setenv(envHostSocketFD, tc.env)
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != tc.code {
			t.Errorf("%v: exit %d, want %d", tc.args, code, tc.code)
		}
		got, _ := io.ReadAll(r)
		if !strings.HasPrefix(string(got), tc.want) || !strings.HasSuffix(string(got), "\n") {
			t.Errorf("%v: ready pipe got %q, want %q…", tc.args, got, tc.want)
		}
		if !strings.HasPrefix(stderr.String(), "wg-wrap-sidecar: ") {
			t.Errorf("%v: stderr %q", tc.args, stderr.String())
		}
	}
}

func TestListenUAPI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "uapi.sock")
	l, err := listenUAPI(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("UAPI socket mode %v, want a 0600 socket", fi.Mode())
	}
	if _, err := listenUAPI(path); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second listen: %v, want an 'already exists' error", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	c.Close()
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket not unlinked on close: %v", err)
	}
	// Something else at the path (a stale file) is refused too, not replaced.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUAPI(path); err == nil {
		t.Fatal("listenUAPI replaced an existing file")
	}
}

func TestVersionLineNamesTheWireguardModule(t *testing.T) {
	goMod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	pinned := ""
	for _, line := range strings.Split(string(goMod), "\n") {
		if fields := strings.Fields(line); len(fields) == 2 && fields[0] == wireguardModule {
			pinned = fields[1]
		}
	}
	line := versionLine()
	want := "wg-wrap-sidecar " + version + " (wireguard-go " + pinned + ", go"
	if !strings.HasPrefix(line, want) {
		t.Fatalf("versionLine() = %q, want prefix %q", line, want)
	}
}
