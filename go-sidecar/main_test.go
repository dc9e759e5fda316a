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

	"wg-wrap/go-sidecar/peer"
)

func TestParseArgs(t *testing.T) {
	opts, err := parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.ifname != "tun0" || opts.mtu != 1420 || opts.holdPath != "" || opts.verbose || opts.view {
		t.Fatalf("defaults: %+v", opts)
	}
	opts, err = parseArgs([]string{"--profile", "p", "--ifname", "wg7", "--mtu", "1280", "--hold", "h",
		"--remove-state", "--view", "--resolv-conf", "r", "--hide", "/a", "--hide", "/b", "-v"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if opts.profile != "p" || opts.ifname != "wg7" || opts.mtu != 1280 || opts.holdPath != "h" ||
		!opts.removeState || !opts.view || opts.resolvConf != "r" || !opts.verbose ||
		strings.Join(opts.hide, " ") != "/a /b" {
		t.Fatalf("parsed %+v", opts)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mtu", "575"}, "out of range"},
		{[]string{"--mtu", "65536"}, "out of range"},
		{[]string{"--ifname", "a/b"}, "not a valid interface name"},
		{[]string{"--ifname", "sixteen-chars-xx"}, "not a valid interface name"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"--private-key", "x"}, "not defined"},
		{[]string{"--uapi", "/s"}, "not defined"},
		{[]string{"--remove-state", "--hold", "h"}, "needs --hold and --profile"},
		{[]string{"--hide", "/a"}, "need --view"},
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
		{"", nil, exitFailure, "ERROR WG_WRAP_HOST_SOCKET_FD: not set"},
		{"0", nil, exitFailure, "ERROR WG_WRAP_HOST_SOCKET_FD: 0 is a standard stream"},
		{"", []string{"--mtu", "9"}, exitUsage, "ERROR usage: "},
	} {
		r := setReadyPipe(t)
		dir, err := os.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer dir.Close()
		cwd, _ := os.Getwd()
		defer os.Chdir(cwd) // run() makes the runtime directory its working directory
		t.Setenv(envStateDirFD, strconv.Itoa(int(dir.Fd())))
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

func TestListenerFromEnvTakesOnlyAListeningSocketOfItsType(t *testing.T) {
	dir := t.TempDir()
	stream, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	// listenerFromEnv takes ownership of the descriptor it is given (it
	// closes it): each call gets a raw duplicate that nothing else owns.
	handOver := func(fd uintptr) {
		dup, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("WG_WRAP_TEST_LISTENER_FD", strconv.Itoa(dup))
	}
	const name = "WG_WRAP_TEST_LISTENER_FD"
	rc, err := stream.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var raw uintptr
	rc.Control(func(fd uintptr) { raw = fd })
	handOver(raw)
	if _, err := listenerFromEnv(name, unix.SOCK_SEQPACKET); err == nil {
		t.Fatal("a stream socket was taken for a seqpacket one")
	}
	handOver(raw)
	l, err := listenerFromEnv(name, unix.SOCK_STREAM)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, set := os.LookupEnv(name); set {
		t.Error("the variable is left for what the sidecar might start")
	}
	// Our own user is served.
	go func() {
		c, err := net.Dial("unix", filepath.Join(dir, "s"))
		if err == nil {
			c.Close()
		}
	}()
	conn, err := peer.AcceptOwn(l, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if uid, err := peer.UID(conn); err != nil || uid != os.Getuid() {
		t.Errorf("peer uid %d, %v", uid, err)
	}
	conn.Close()
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	handOver(r.Fd())
	if _, err := listenerFromEnv(name, unix.SOCK_STREAM); err == nil {
		t.Error("a pipe was taken for a socket")
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
