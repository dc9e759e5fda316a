package main

// End-to-end: two real sidecars, each in its own user+network namespace
// (created the way the C launcher does: uid mapped to itself, ambient
// CAP_NET_ADMIN), each on its own host UDP socket on loopback, configured
// over UAPI, links set up from outside with ip(8) run inside by a small Python
// helper (as wg-wrap's Python side will: fork, setns, keep caps), then
// ICMP echo across the tunnel in both directions, IPv4 and IPv6. Runs as root
// or as an ordinary user where unprivileged user namespaces are allowed.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// envTestMode makes the test binary act as a helper instead of running tests:
// "sidecar" runs the sidecar itself, "ping" sends ICMP echo requests (run
// inside the namespace by enterScript; the host may have no ping(8)).
const envTestMode = "WG_WRAP_SIDECAR_TEST_MODE"

func TestMain(m *testing.M) {
	switch os.Getenv(envTestMode) {
	case "sidecar":
		os.Unsetenv(envTestMode)
		os.Exit(run(os.Args[1:], os.Stderr))
	case "ping":
		if err := pingMain(os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "ping: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type sidecarProc struct {
	cmd    *exec.Cmd
	uapi   string
	port   uint16
	key    *ecdh.PrivateKey
	stderr *bytes.Buffer
	exited chan error
}

func startSidecar(t *testing.T, dir, name string, extraArgs ...string) *sidecarProc {
	t.Helper()
	sock, port := loopbackHostSocket(t)
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecarProc{uapi: filepath.Join(dir, name+".sock"), port: port, key: key, stderr: new(bytes.Buffer), exited: make(chan error, 1)}
	// The sockets wg-wrap binds on the host and hands over (here at paths).
	uapi, control := unixListenerFile(t, "unix", s.uapi), unixListenerFile(t, "unixpacket", filepath.Join(dir, name+".ctl"))
	state, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer state.Close()
	args := append([]string{"--ifname", "wgw0", "--mtu", "1380", "-v"}, extraArgs...)
	s.cmd = exec.Command(os.Args[0], args...)
	s.cmd.Env = append(os.Environ(), envTestMode+"=sidecar", envHostSocketFD+"=3", envReadyFD+"=4",
		envUAPIFD+"=5", envControlFD+"=6", envStateDirFD+"=7")
	s.cmd.ExtraFiles = []*os.File{sock, readyW, uapi, control, state}
	s.cmd.Stderr = s.stderr
	uid, gid := os.Getuid(), os.Getgid()
	s.cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}},
		AmbientCaps: []uintptr{unix.CAP_NET_ADMIN},
		Setsid:      true,
		Pdeathsig:   syscall.SIGKILL,
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("cannot start a process in new user+net namespaces (unprivileged user namespaces must be enabled): %v", err)
	}
	// The sidecar owns them now (the socket's O_NONBLOCK is shared anyway).
	sock.Close()
	readyW.Close()
	uapi.Close()
	control.Close()
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, s.stderr)
		}
	})
	readyR.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(readyR).ReadString('\n')
	if line != "READY\n" {
		t.Fatalf("%s: ready pipe said %q (%v); stderr:\n%s", name, line, err, s.stderr)
	}
	return s
}

// unixListenerFile is a listening unix socket at path, as a file to hand over.
func unixListenerFile(t *testing.T, network, path string) *os.File {
	t.Helper()
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: path, Net: network})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// loopbackHostSocket is a dual-stack UDP socket like the one the Python side
// opens on the host.
func loopbackHostSocket(t *testing.T) (*os.File, uint16) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "host-socket"), uint16(sa.(*unix.SockaddrInet6).Port)
}

// uapiSet sends one set=1 transaction and checks errno=0.
func (s *sidecarProc) uapiSet(t *testing.T, lines ...string) {
	t.Helper()
	c, err := net.DialTimeout("unix", s.uapi, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "set=1\n%s\n\n", strings.Join(lines, "\n")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || reply != "errno=0\n" {
		t.Fatalf("UAPI set: %q, %v", reply, err)
	}
}

func (s *sidecarProc) configure(t *testing.T, peer *sidecarProc, endpoint string, peerIPs ...string) {
	t.Helper()
	lines := []string{
		"private_key=" + hex.EncodeToString(s.key.Bytes()),
		"replace_peers=true",
		"public_key=" + hex.EncodeToString(peer.key.PublicKey().Bytes()),
		"endpoint=" + endpoint,
		"replace_allowed_ips=true",
	}
	for _, ip := range peerIPs {
		lines = append(lines, "allowed_ip="+ip)
	}
	s.uapiSet(t, lines...)
}

// enterScript runs a command in the user and network namespaces of a
// process; with KEEP_CAPS=1, with CAP_NET_ADMIN and CAP_NET_RAW kept across
// exec as ambient capabilities. nsenter(1) cannot do this for an ordinary user: the exec of a
// non-root uid drops the capabilities setns gave. Python is single-threaded,
// so it may setns into a user namespace (Go may not).
const enterScript = `
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def check(ret, what):
    if ret != 0:
        sys.exit(f"enter: {what}: {os.strerror(ctypes.get_errno())}")
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
check(libc.setns(os.pidfd_open(int(sys.argv[1])), CLONE_NEWUSER | CLONE_NEWNET), "setns")
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()
check(libc.capget(ctypes.byref(header), data), "capget")
CAPS = (12, 13) if os.environ.get("KEEP_CAPS") == "1" else ()  # CAP_NET_ADMIN, CAP_NET_RAW
for cap in CAPS:
    data[0].inheritable |= 1 << cap
check(libc.capset(ctypes.byref(header), data), "capset")
for cap in CAPS:
    check(libc.prctl(47, 2, cap, 0, 0), "raising ambient capability")  # PR_CAP_AMBIENT, RAISE
os.execvp(sys.argv[2], sys.argv[2:])
`

// enterCommand returns a command running argv inside s's namespaces,
// without capabilities, like a wrapped program.
func (s *sidecarProc) enterCommand(ctx context.Context, argv ...string) *exec.Cmd {
	args := append([]string{"-c", enterScript, strconv.Itoa(s.cmd.Process.Pid)}, argv...)
	return exec.CommandContext(ctx, "python3", args...)
}

// inside runs argv in the sidecar's user and network namespaces with the
// capabilities to configure the network and send raw ICMP.
func (s *sidecarProc) inside(t *testing.T, env []string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := s.enterCommand(ctx, argv...)
	cmd.Env = append(append(os.Environ(), "KEEP_CAPS=1"), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

func TestTwoSidecarsPingThroughTheTunnel(t *testing.T) {
	for _, tool := range []string{"python3", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed by this test and missing: %v", tool, err)
		}
	}
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		t.Fatalf("/dev/net/tun must be usable (mode 0666): %v", err)
	} else {
		f.Close()
	}
	dir := t.TempDir()
	holdPath := filepath.Join(dir, "hold")
	if err := os.WriteFile(holdPath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A joined program's shared lock keeps the ephemeral sidecar b alive.
	holder, err := os.Open(holdPath)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}

	a := startSidecar(t, dir, "a")
	b := startSidecar(t, dir, "b", "--hold", "hold") // in its runtime directory: dir

	// Configure WireGuard before the links are up, as the parent does: the
	// devices must start by themselves when the links go up.
	a.configure(t, b, fmt.Sprintf("127.0.0.1:%d", b.port), "10.77.0.2/32", "fd77::2/128")
	b.configure(t, a, fmt.Sprintf("[::1]:%d", a.port), "10.77.0.1/32", "fd77::1/128")
	for i, s := range []*sidecarProc{a, b} {
		n := i + 1
		s.inside(t, nil, "ip", "addr", "add", fmt.Sprintf("10.77.0.%d/24", n), "dev", "wgw0")
		s.inside(t, nil, "ip", "-6", "addr", "add", fmt.Sprintf("fd77::%d/64", n), "dev", "wgw0", "nodad")
		s.inside(t, nil, "ip", "link", "set", "wgw0", "up")
		if out := s.inside(t, nil, "ip", "-o", "link", "show", "wgw0"); !strings.Contains(out, "mtu 1380") {
			t.Fatalf("wgw0 does not have the requested MTU: %s", out)
		}
	}
	ping := []string{envTestMode + "=ping"}
	t.Log(a.inside(t, ping, os.Args[0], "10.77.0.2", "3"))
	t.Log(b.inside(t, ping, os.Args[0], "10.77.0.1", "3"))
	t.Log(a.inside(t, ping, os.Args[0], "fd77::2", "3"))
	t.Log(b.inside(t, ping, os.Args[0], "fd77::1", "3"))

	// SIGTERM: clean exit, UAPI socket closed.
	if err := a.cmd.Process.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	expectExit(t, a, "SIGTERM")

	// Ephemeral: b stays while a program holds the lock, then while a process
	// it left behind is still inside, and leaves by itself after that.
	expectAlive(t, b, "a program holds the lock")
	// Without capabilities: the sidecar can only see processes whose
	// capabilities are a subset of its own (commoncap ptrace rule).
	leftover := b.enterCommand(context.Background(), "sleep", "30")
	if err := leftover.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		leftover.Process.Kill()
		leftover.Wait()
	}()
	waitSameNetns(t, leftover.Process.Pid, b.cmd.Process.Pid)
	holder.Close()
	expectAlive(t, b, "a process is left inside")
	leftover.Process.Kill()
	leftover.Wait()
	expectExit(t, b, "the namespace was left empty")
}

// waitSameNetns waits until pid has joined the network namespace of other.
func waitSameNetns(t *testing.T, pid, other int) {
	t.Helper()
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", other))
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); got == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("process %d never joined %s", pid, want)
}

func expectAlive(t *testing.T, s *sidecarProc, why string) {
	t.Helper()
	select {
	case err := <-s.exited:
		s.exited <- err
		t.Fatalf("sidecar exited although %s: %v", why, err)
	case <-time.After(4 * holdInterval):
	}
}

func expectExit(t *testing.T, s *sidecarProc, why string) {
	t.Helper()
	select {
	case err := <-s.exited:
		s.exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("after %s: sidecar exited with %v\n%s", why, err, s.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("sidecar did not exit after %s", why)
	}
	// The listening socket was handed over: nobody serves it any more.
	if c, err := net.Dial("unix", s.uapi); err == nil {
		c.Close()
		t.Fatalf("after %s: the UAPI socket still accepts connections", why)
	}
}

// pingMain sends count ICMP echo requests to dst over a raw socket and
// requires a reply to each, within a second.
func pingMain(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: ping DST COUNT")
	}
	dst, err := netip.ParseAddr(args[0])
	if err != nil {
		return err
	}
	count, err := strconv.Atoi(args[1])
	if err != nil || count < 1 || count > 100 {
		return fmt.Errorf("bad count %q", args[1])
	}
	family, proto, request, reply := unix.AF_INET, unix.IPPROTO_ICMP, byte(8), byte(0)
	var sa unix.Sockaddr
	if dst.Is4() {
		sa = &unix.SockaddrInet4{Addr: dst.As4()}
	} else {
		// The kernel fills in ICMPv6 checksums on raw sockets.
		family, proto, request, reply = unix.AF_INET6, unix.IPPROTO_ICMPV6, 128, 129
		sa = &unix.SockaddrInet6{Addr: dst.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	id := uint16(os.Getpid())
	buf := make([]byte, 1500)
	for seq := 1; seq <= count; seq++ {
		msg := []byte{request, 0, 0, 0, 0, 0, 0, 0, 'w', 'g', '-', 'w', 'r', 'a', 'p'}
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], uint16(seq))
		if !dst.Is6() {
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		}
		start := time.Now()
		if err := unix.Sendto(fd, msg, 0, sa); err != nil {
			return fmt.Errorf("send to %s: %w", dst, err)
		}
		for got := false; !got; {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("no reply from %s to seq %d: %w", dst, seq, err)
			}
			icmp := buf[:n]
			if !dst.Is6() && n >= 20 {
				icmp = icmp[int(buf[0]&0x0f)*4:] // raw IPv4 sockets include the IP header
			}
			got = len(icmp) >= 8 && icmp[0] == reply &&
				binary.BigEndian.Uint16(icmp[4:]) == id && binary.BigEndian.Uint16(icmp[6:]) == uint16(seq)
			if time.Since(start) > 2*time.Second {
				return fmt.Errorf("no matching reply from %s to seq %d", dst, seq)
			}
		}
		fmt.Printf("reply from %s: seq=%d time=%v\n", dst, seq, time.Since(start).Round(time.Microsecond))
	}
	return nil
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
