package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// The tests run in a network namespace of their own, as the sidecar does:
// TestMain starts the test binary again in new user and network namespaces
// (no privilege needed), brings lo up there, and gives lo two more
// addresses that stand for the far side of the tunnel: a destination the
// proxy must reach, unlike the namespace's loopback, which it must never
// reach. Nothing leaves the namespace.
var (
	peer4 = netip.MustParseAddr("10.99.0.1")
	peer6 = netip.MustParseAddr("fd00:99::1")
)

const insideEnv = "WG_WRAP_PROXY_TEST_NETNS"

func TestMain(m *testing.M) {
	if os.Getenv(insideEnv) == "" {
		os.Exit(runInNamespace())
	}
	if err := setUpNamespace(); err != nil {
		fmt.Fprintf(os.Stderr, "setting up the test's network namespace: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// runInNamespace runs this test binary, with the same arguments, in new
// user and network namespaces, as uid 0 there (mapped to the caller), and
// returns its exit status.
func runInNamespace() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), insideEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "cannot run the tests in a network namespace of their own "+
		"(unprivileged user namespaces must be enabled): %v\n", err)
	return 1
}

// setUpNamespace brings lo up and adds the peer's addresses to it. Fuzzing
// workers, started in the same namespace, find them there already.
func setUpNamespace() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return err
	}
	for _, a := range []netip.Addr{peer4, peer6} {
		if err := addAddress(lo.Index, netip.PrefixFrom(a, a.BitLen())); err != nil {
			return fmt.Errorf("adding %v to lo: %w", a, err)
		}
	}
	return nil
}

// addAddress is `ip address add PREFIX dev INDEX nodad` over rtnetlink.
func addAddress(index int, prefix netip.Prefix) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	family := unix.AF_INET
	if prefix.Addr().Is6() {
		family = unix.AF_INET6
	}
	// struct ifaddrmsg, then IFA_LOCAL and IFA_ADDRESS
	msg := []byte{byte(family), byte(prefix.Bits()), unix.IFA_F_NODAD, unix.RT_SCOPE_UNIVERSE}
	msg = binary.NativeEndian.AppendUint32(msg, uint32(index))
	raw := prefix.Addr().AsSlice()
	for _, attr := range []uint16{unix.IFA_LOCAL, unix.IFA_ADDRESS} {
		msg = binary.NativeEndian.AppendUint16(msg, uint16(4+len(raw)))
		msg = binary.NativeEndian.AppendUint16(msg, attr)
		msg = append(msg, raw...) // 4 or 16 bytes: aligned already
	}
	head := binary.NativeEndian.AppendUint32(nil, uint32(unix.NLMSG_HDRLEN+len(msg)))
	head = binary.NativeEndian.AppendUint16(head, unix.RTM_NEWADDR)
	head = binary.NativeEndian.AppendUint16(head, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	head = binary.NativeEndian.AppendUint32(head, 1) // sequence
	head = binary.NativeEndian.AppendUint32(head, 0) // port id: the kernel's
	if err := unix.Sendto(fd, append(head, msg...), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.NLMSG_HDRLEN+4 || binary.NativeEndian.Uint16(buf[4:6]) != unix.NLMSG_ERROR {
		return errors.New("no acknowledgement")
	}
	switch errno := -int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:])); errno {
	case 0, int32(unix.EEXIST):
		return nil
	default:
		return syscall.Errno(errno)
	}
}

// fakeDNS answers A and AAAA questions for the names it knows, NXDOMAIN
// for the others; it stands for the tunnel's DNS server. It answers in
// the resolver's own goroutine, over a connection that is no socket, so it
// leaves no goroutine behind to count.
type fakeDNS struct {
	names map[string][]netip.Addr
	mu    sync.Mutex
	asked map[string]int
}

// testResolver is a resolver that asks a fakeDNS: the proxy's lookups go
// there, as inside they go to the namespace's nameservers. The hosts file
// is still read first ("localhost").
func testResolver(names map[string][]netip.Addr) (*net.Resolver, *fakeDNS) {
	d := &fakeDNS{names: names, asked: map[string]int{}}
	r := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return &dnsConn{dns: d}, nil
	}}
	return r, d
}

// Asked is how many questions were about name.
func (d *fakeDNS) Asked(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked[name]
}

// dnsConn is a datagram connection to a fakeDNS: each query written is
// answered on the next read.
type dnsConn struct {
	dns     *fakeDNS
	answers [][]byte
}

func (c *dnsConn) Write(b []byte) (int, error) {
	answer, err := c.dns.answer(b)
	if err != nil {
		return 0, err
	}
	c.answers = append(c.answers, answer)
	return len(b), nil
}

func (c *dnsConn) Read(b []byte) (int, error) {
	if len(c.answers) == 0 {
		return 0, os.ErrDeadlineExceeded
	}
	n := copy(b, c.answers[0])
	c.answers = c.answers[1:]
	return n, nil
}

func (c *dnsConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, c.RemoteAddr(), err
}
func (c *dnsConn) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }
func (c *dnsConn) Close() error                              { return nil }
func (c *dnsConn) LocalAddr() net.Addr                       { return &net.UDPAddr{} }
func (c *dnsConn) RemoteAddr() net.Addr                      { return &net.UDPAddr{Port: 53} }
func (c *dnsConn) SetDeadline(time.Time) error               { return nil }
func (c *dnsConn) SetReadDeadline(time.Time) error           { return nil }
func (c *dnsConn) SetWriteDeadline(time.Time) error          { return nil }

func (d *fakeDNS) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.TrimSuffix(q.Name.String(), ".")
	d.mu.Lock()
	d.asked[name]++
	d.mu.Unlock()
	addrs, known := d.names[name]
	rcode := dnsmessage.RCodeSuccess
	if !known {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true,
		RecursionDesired: h.RecursionDesired, RecursionAvailable: true, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	for _, a := range addrs {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
		switch {
		case q.Type == dnsmessage.TypeA && a.Is4():
			err = b.AResource(rh, dnsmessage.AResource{A: a.As4()})
		case q.Type == dnsmessage.TypeAAAA && a.Is6():
			err = b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			return nil, err
		}
	}
	return b.Finish()
}
