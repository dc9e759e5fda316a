package view

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary is also the helper that runs a view: in a user and mount
// namespace of its own (uid mapped to itself, CAP_SYS_ADMIN there, as the
// launcher gives the sidecar), over a fake host tree the test changes.
const envHelper = "WG_WRAP_VIEW_TEST_HELPER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(envHelper); cfg != "" {
		os.Exit(helper(cfg))
	}
	os.Exit(m.Run())
}

// helper builds a view from the JSON config in its environment, prints
// "ready" and its status lines as they change, and follows the host until
// its stdin closes.
func helper(text string) int {
	runtime.LockOSThread() // the main thread stays in the profile's namespace
	var hc helperConfig
	if err := json.Unmarshal([]byte(text), &hc); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	cfg := Config{Etc: hc.Etc, Run: hc.Run, Hide: hc.Hide, ResolvConf: hc.ResolvConf}
	var mu sync.Mutex
	cfg.Report = func(s Status) {
		mu.Lock()
		defer mu.Unlock()
		data, _ := json.Marshal(s)
		fmt.Printf("status %s\n", data)
	}
	cfg.Errorf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	v, err := Build(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		return 1
	}
	fmt.Println("ready")
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	v.Run(stop)
	v.Close()
	return 0
}

type helperConfig struct {
	Etc, Run   string
	Hide       []string
	ResolvConf []byte
}

type fakeHost struct {
	t    *testing.T
	root string // the fake host's /
	cmd  *exec.Cmd
	out  *bufio.Scanner
	in   io.WriteCloser
}

func (h *fakeHost) path(p string) string { return filepath.Join(h.root, p) }

// seen is path as the helper's namespace shows it.
func (h *fakeHost) seen(p string) string {
	return fmt.Sprintf("/proc/%d/root%s", h.cmd.Process.Pid, h.path(p))
}

func (h *fakeHost) write(p, content string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Dir(h.path(p)), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(h.path(p), []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// replace writes p anew by rename, as NetworkManager and dpkg do.
func (h *fakeHost) replace(p, content string) {
	h.t.Helper()
	h.write(p+".new", content)
	if err := os.Rename(h.path(p+".new"), h.path(p)); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) mkdir(p string) {
	h.t.Helper()
	if err := os.MkdirAll(h.path(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) socket(p string) {
	h.t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: h.path(p)}); err != nil {
		h.t.Fatal(err)
	}
}

func newFakeHost(t *testing.T) *fakeHost {
	h := &fakeHost{t: t, root: t.TempDir()}
	os.Chmod(h.root, 0o755)
	h.write("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
	h.write("etc/hosts", "127.0.0.1 localhost\n")
	h.write("etc/resolv.conf", "nameserver 192.0.2.53\n")
	h.write("etc/nsswitch.conf", "passwd: files\nhosts:          files mdns4_minimal [NOTFOUND=return] resolve [!UNAVAIL=return] dns myhostname\n")
	h.write("etc/ssl/certs/ca.pem", "cert\n")
	if err := os.Symlink("/usr/share/zoneinfo/UTC", h.path("etc/localtime")); err != nil {
		t.Fatal(err)
	}
	h.mkdir("run/nscd")
	h.socket("run/nscd/socket")
	h.mkdir("run/dbus")
	h.mkdir("run/systemd/resolve")
	h.socket("run/systemd/resolve/io.systemd.Resolve")
	h.mkdir("run/systemd/journal")
	h.write("run/utmp", "")
	h.mkdir("state/wg-wrap/wg0")
	h.write("state/wg-wrap/wg0/state.toml", "secret\n")
	return h
}

func (h *fakeHost) start(resolv string) {
	t := h.t
	cfg := helperConfig{Etc: h.path("etc"), Run: h.path("run"), Hide: []string{h.path("state/wg-wrap")}}
	if resolv != "" {
		cfg.ResolvConf = []byte(resolv)
	}
	data, _ := json.Marshal(cfg)
	h.cmd = exec.Command(os.Args[0], "-test.run=^$")
	h.cmd.Env = append(os.Environ(), envHelper+"="+string(data))
	uid, gid := os.Getuid(), os.Getgid()
	h.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}},
		AmbientCaps: []uintptr{unix.CAP_SYS_ADMIN},
		Pdeathsig:   syscall.SIGKILL,
	}
	var stderr bytes.Buffer
	h.cmd.Stderr = &stderr
	out, _ := h.cmd.StdoutPipe()
	h.in, _ = h.cmd.StdinPipe()
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("starting the helper in new user+mount namespaces (unprivileged user namespaces must be enabled): %v", err)
	}
	t.Cleanup(func() {
		h.in.Close()
		done := make(chan struct{})
		go func() { h.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			h.cmd.Process.Kill()
			<-done
			t.Errorf("the helper did not stop when asked")
		}
		if t.Failed() {
			t.Logf("helper stderr:\n%s", stderr.String())
		}
	})
	h.out = bufio.NewScanner(out)
	if !h.out.Scan() || h.out.Text() != "ready" {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		t.Fatalf("helper: %q %v\n%s", h.out.Text(), h.out.Err(), stderr.String())
	}
}

func (h *fakeHost) read(p string) string {
	data, err := os.ReadFile(h.seen(p))
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(data)
}

func (h *fakeHost) exists(p string) bool {
	_, err := os.Lstat(h.seen(p))
	return err == nil
}

// eventually waits (bounded) for cond, failing with what.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5 s: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestViewShowsTheHostButTheResolvers(t *testing.T) {
	h := newFakeHost(t)
	h.start("nameserver 10.9.0.1\n")
	if got := h.read("etc/resolv.conf"); got != "nameserver 10.9.0.1\n" {
		t.Errorf("resolv.conf inside: %q", got)
	}
	if got := h.read("etc/passwd"); got != "root:x:0:0::/root:/bin/sh\n" {
		t.Errorf("passwd inside: %q", got)
	}
	if got := h.read("etc/ssl/certs/ca.pem"); got != "cert\n" {
		t.Errorf("a file in a directory of /etc: %q", got)
	}
	if target, err := os.Readlink(h.seen("etc/localtime")); err != nil || target != "/usr/share/zoneinfo/UTC" {
		t.Errorf("localtime inside: %q %v", target, err)
	}
	ns := h.read("etc/nsswitch.conf")
	if !strings.Contains(ns, "\nhosts: files dns myhostname\n") || !strings.Contains(ns, "passwd: files\n") {
		t.Errorf("nsswitch.conf inside:\n%s", ns)
	}
	for _, p := range []string{"run/nscd", "run/systemd/resolve"} {
		if h.exists(p) {
			t.Errorf("%s is shown", p)
		}
	}
	for _, p := range []string{"run/dbus", "run/systemd/journal", "run/utmp"} {
		if !h.exists(p) {
			t.Errorf("%s is not shown", p)
		}
	}
	if h.exists("state/wg-wrap/wg0") {
		t.Errorf("the hidden directory shows its content")
	}
	// The views are read-only for the programs.
	if err := os.WriteFile(h.seen("etc/new"), nil, 0o644); err == nil {
		t.Errorf("a file could be made in the view of /etc")
	}
}

func TestViewFollowsTheHostWithoutAWindow(t *testing.T) {
	h := newFakeHost(t)
	h.start("nameserver 10.9.0.1\n")
	// Watch the view the whole time, as a lookup loop would.
	var bad []string
	var mu sync.Mutex
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			var seen []string
			if got := h.read("etc/resolv.conf"); got != "nameserver 10.9.0.1\n" {
				seen = append(seen, "resolv.conf: "+got)
			}
			for _, p := range []string{"run/nscd", "run/systemd/resolve", "run/avahi-daemon", "state/wg-wrap/wg0"} {
				if h.exists(p) {
					seen = append(seen, p+" shown")
				}
			}
			if len(seen) > 0 {
				mu.Lock()
				bad = append(bad, seen...)
				mu.Unlock()
			}
		}
	}()
	for i := range 20 {
		h.replace("etc/resolv.conf", fmt.Sprintf("nameserver 192.0.2.%d\n", i))
		os.RemoveAll(h.path("run/nscd"))
		h.mkdir("run/nscd")
		h.socket("run/nscd/socket")
		os.RemoveAll(h.path("run/systemd/resolve"))
		h.mkdir("run/systemd/resolve")
		h.mkdir("run/avahi-daemon")
		h.socket("run/avahi-daemon/socket")
		os.RemoveAll(h.path("run/avahi-daemon"))
	}
	// resolv.conf as a symlink, and back.
	os.Remove(h.path("etc/resolv.conf"))
	os.Symlink("../run/systemd/resolve/stub-resolv.conf", h.path("etc/resolv.conf"))
	h.replace("etc/passwd", "root:x:0:0::/root:/bin/bash\n")
	h.write("etc/added", "new\n")
	os.RemoveAll(h.path("run/dbus"))
	eventually(t, "passwd replaced by rename is followed", func() bool {
		return h.read("etc/passwd") == "root:x:0:0::/root:/bin/bash\n"
	})
	eventually(t, "a new /etc entry is shown", func() bool { return h.read("etc/added") == "new\n" })
	eventually(t, "a removed /run entry goes", func() bool { return !h.exists("run/dbus") })
	close(stop)
	<-done
	if len(bad) > 0 {
		t.Errorf("the view showed what it must not, %d times, e.g. %q", len(bad), bad[0])
	}
}

func TestViewFollowsTheHostsResolvConfWithoutDNS(t *testing.T) {
	h := newFakeHost(t)
	h.start("")
	if got := h.read("etc/resolv.conf"); got != "nameserver 192.0.2.53\n" {
		t.Fatalf("resolv.conf inside: %q", got)
	}
	h.replace("etc/resolv.conf", "nameserver 192.0.2.1\n")
	eventually(t, "rename followed", func() bool { return h.read("etc/resolv.conf") == "nameserver 192.0.2.1\n" })
	os.WriteFile(h.path("etc/resolv.conf"), []byte("nameserver 192.0.2.2\n"), 0o644)
	eventually(t, "write in place followed", func() bool { return h.read("etc/resolv.conf") == "nameserver 192.0.2.2\n" })
	h.mkdir("run/resolvconf")
	h.write("run/resolvconf/resolv.conf", "nameserver 192.0.2.3\n")
	os.Remove(h.path("etc/resolv.conf"))
	os.Symlink(h.path("run/resolvconf/resolv.conf"), h.path("etc/resolv.conf"))
	eventually(t, "a symlink followed", func() bool { return h.read("etc/resolv.conf") == "nameserver 192.0.2.3\n" })
	h.replace("run/resolvconf/resolv.conf", "nameserver 192.0.2.4\n")
	eventually(t, "its target replaced by rename followed", func() bool {
		return h.read("etc/resolv.conf") == "nameserver 192.0.2.4\n"
	})
	// The nsswitch.conf of a profile without DNS is the host's.
	if got := h.read("etc/nsswitch.conf"); !strings.Contains(got, "resolve [!UNAVAIL=return]") {
		t.Errorf("nsswitch.conf without DNS: %q", got)
	}
}

func TestRewriteNSSwitch(t *testing.T) {
	for in, want := range map[string]string{
		"hosts: files dns\n": "hosts: files dns\n",
		"hosts: files resolve [!UNAVAIL=return] dns myhostname\n": "hosts: files dns myhostname\n",
		"hosts:\tfiles mdns4_minimal [ NOTFOUND=return ] wins\n":  "hosts: files dns\n",
		"hosts: files # comment\n":                                "hosts: files dns\n",
		"passwd: files systemd\n":                                 "passwd: files systemd\n",
		"hosts: files\nnetworks: files":                           "hosts: files dns\nnetworks: files\n",
	} {
		got := string(rewriteNSSwitch([]byte(in)))
		_, got, _ = strings.Cut(got, "tunnel)\n")
		if got != want {
			t.Errorf("rewriteNSSwitch(%q) = %q, want %q", in, got, want)
		}
	}
}

// Tools write a file beside the one they replace and rename it over
// (`ln -s … x.tmp && mv -T x.tmp x`): the view sees the new name come and,
// often, go before it can show it. That is no problem of the view's.
func TestViewLetsGoOfEntriesThatGoAsItLooks(t *testing.T) {
	h := newFakeHost(t)
	h.start("")
	broken := make(chan string, 1)
	go func() {
		for h.out.Scan() {
			if line := h.out.Text(); strings.Contains(line, `"intact":false`) {
				select {
				case broken <- line:
				default:
				}
			}
		}
	}()
	for i := range 300 {
		link := h.path("etc/resolv.conf.tool-link")
		if err := os.Symlink(fmt.Sprintf("../run/resolv-%d.conf", i), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(link, h.path("etc/resolv.conf")); err != nil {
			t.Fatal(err)
		}
		h.replace("etc/hosts", fmt.Sprintf("127.0.0.1 localhost host-%d\n", i))
	}
	eventually(t, "the last hosts file is shown", func() bool {
		return h.read("etc/hosts") == "127.0.0.1 localhost host-299\n"
	})
	eventually(t, "the link is gone from the view", func() bool {
		return !h.exists("etc/resolv.conf.tool-link")
	})
	select {
	case line := <-broken:
		t.Fatalf("the view broke: %s", line)
	default:
	}
}
