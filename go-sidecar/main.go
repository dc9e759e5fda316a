// Command wg-wrap-sidecar runs wireguard-go inside a wg-wrap namespace.
//
// The C launcher starts it in fresh user, network and mount namespaces with
// ambient CAP_NET_ADMIN and CAP_SYS_ADMIN (in them only). It makes the
// namespace's view of the host's /etc and /run (package view), creates the
// TUN device, runs a WireGuard device on the host UDP socket it inherits
// (WG_WRAP_HOST_SOCKET_FD), and is then configured only over its UAPI
// socket. wg-wrap's own verbs (published ports, the proxy front) come over a
// separate control socket, with the host sockets they use. Both listening
// sockets are bound on the host and handed over (WG_WRAP_UAPI_FD,
// WG_WRAP_CONTROL_FD); the profile's runtime directory is its working
// directory (WG_WRAP_STATE_DIR_FD), which the programs inside cannot see.
// It also pins the namespaces: they live as long as it does.
//
//	wg-wrap-sidecar [--profile NAME] [--ifname NAME] [--mtu N] [--hold FILE [--remove-state]]
//	                [--view [--resolv-conf FILE] [--hide DIR]...]
//	                [--reresolve PLAN --reresolve-status FILE] [-v]
//	wg-wrap-sidecar --version
//	wg-wrap-sidecar genkey | pubkey     (like wg's; keys.go)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"wg-wrap/go-sidecar/control"
	"wg-wrap/go-sidecar/fdbind"
	"wg-wrap/go-sidecar/hold"
	"wg-wrap/go-sidecar/view"
)

const (
	exitOK      = 0 // stopped by a signal or because the profile became unused
	exitFailure = 1 // setup failed, or the device or UAPI listener died
	exitUsage   = 2 // bad command line
)

const (
	envHostSocketFD = "WG_WRAP_HOST_SOCKET_FD"
	envReadyFD      = "WG_WRAP_READY_FD"
	envStateDirFD   = "WG_WRAP_STATE_DIR_FD"
)

const (
	defaultIfname = "tun0"
	defaultMTU    = 1420
	minMTU        = 576 // IPv4 minimum; IPv6 needs 1280, left to the caller
	maxMTU        = 65535
	holdInterval  = 200 * time.Millisecond
	progName      = "wg-wrap-sidecar"
	viewStatus    = "view.json" // in the profile's runtime directory: for `wg-wrap status`
)

// The main thread stays in the profile's namespaces for good (the view's
// host side runs on a thread of its own in another mount namespace, and
// pidfds and /proc/PID/ns show the main thread's): locking it here keeps
// every other goroutine off it.
func init() { runtime.LockOSThread() }

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	profile         string
	ifname          string
	mtu             int
	holdPath        string // relative to the runtime directory
	removeState     bool   // with holdPath: remove the runtime directory when the profile ends by itself
	verbose         bool
	view            bool
	resolvConf      string // with view: the profile's resolv.conf (else the host's, followed)
	hide            stringList
	reresolvePath   string // JSON plan: peers whose Endpoint is a host name
	reresolveStatus string // where the re-resolution's state is written
	portForward     string // JSON plan: a forwarded port over NAT-PMP (portfwd.go)
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(versionLine())
		return
	}
	if code, ok := keyCommand(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run is the whole program; it returns the exit status.
func run(args []string, stderr io.Writer) (code int) {
	// The ready pipe comes first so that every later failure, usage errors
	// included, reaches the parent.
	ready, err := readyFromEnv()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %s: %v\n", progName, envReadyFD, err)
		return exitFailure
	}
	fail := func(code int, step string, err error) int {
		fmt.Fprintf(stderr, "%s: %s: %v\n", progName, step, err)
		ready.fail(fmt.Sprintf("%s: %v", step, err))
		return code
	}
	life, err := lifeFromEnv()
	if err != nil {
		return fail(exitFailure, envLifeFD, err)
	}
	abandoned, err := abandonedFromEnv()
	if err != nil {
		return fail(exitFailure, envStartFD, err)
	}
	if err := keepOuterHold(); err != nil {
		return fail(exitFailure, envOuterHoldFD, err)
	}
	// Last of all: an end on purpose tells the aftercare process so; any
	// other end (a failure, or no end at all: SIGKILL) leaves it to act.
	defer func() {
		if code == exitOK {
			life.endedOnPurpose()
		}
	}()

	opts, err := parseArgs(args, stderr)
	if err != nil {
		return fail(exitUsage, "usage", err)
	}
	if err := enterStateDir(); err != nil {
		return fail(exitFailure, envStateDirFD, err)
	}
	hostFD, err := fdFromEnv(envHostSocketFD, true)
	if err != nil {
		return fail(exitFailure, envHostSocketFD, err)
	}
	// Nothing started from here on needs them, and they name fds that
	// mean nothing in another process.
	os.Unsetenv(envHostSocketFD)
	os.Unsetenv(envReadyFD)
	uapi, err := listenerFromEnv(envUAPIFD, unix.SOCK_STREAM)
	if err != nil {
		return fail(exitFailure, "UAPI socket", err)
	}
	defer uapi.Close()
	controlListener, err := listenerFromEnv(envControlFD, unix.SOCK_SEQPACKET)
	if err != nil {
		return fail(exitFailure, "control socket", err)
	}

	bind, err := fdbind.New(hostFD)
	if err != nil {
		controlListener.Close()
		return fail(exitFailure, "host socket", err)
	}
	defer bind.Release()

	// Removed last, after the device and the sockets are closed, and only
	// when the profile ended by itself: no process of wg-wrap stays beside
	// the programs to do it. The exclusive hold lock is still held, so a
	// program about to join waits until this process has exited.
	removeState := false
	defer func() {
		if removeState && opts.removeState {
			if err := removeStateDir(opts.profile); err != nil {
				fmt.Fprintf(stderr, "%s: removing the runtime directory of %s: %v\n", progName, opts.profile, err)
			}
		}
	}()

	var holdFile *hold.Hold
	if opts.holdPath != "" {
		// Never closed: once the profile is found unused, the exclusive
		// lock must last until the process (and its namespaces) is gone.
		if holdFile, err = hold.Open(opts.holdPath); err != nil {
			controlListener.Close()
			return fail(exitFailure, "hold file", err)
		}
	}

	logger := newLogger(stderr, opts.verbose)
	stop := make(chan struct{})
	defer close(stop)
	if opts.view {
		v, err := buildView(opts, logger)
		if err != nil {
			controlListener.Close()
			return fail(exitFailure, "the namespace's view of the host", err)
		}
		defer v.Close()
		go v.Run(stop)
	}

	tunDev, err := tun.CreateTUN(opts.ifname, opts.mtu)
	if err != nil {
		controlListener.Close()
		return fail(exitFailure, "creating TUN device "+opts.ifname, err)
	}
	// The device starts when the parent sets the link up: the TUN reports
	// it (netlink RTM_NEWLINK with IFF_RUNNING) and wireguard-go calls Up.
	dev := device.NewDevice(tunDev, bind, logger)
	defer dev.Close()

	uapiErrs := make(chan error, 1)
	go serveUAPI(uapi, dev, logger.Errorf, uapiErrs)

	ctl := control.Start(controlListener, logger)
	defer ctl.Close() // ends published ports and proxies

	// Ignore SIGHUP: the sidecar runs detached in its own session.
	signal.Ignore(unix.SIGHUP)
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, unix.SIGINT)

	var unused <-chan struct{} // nil without --hold: never fires
	if holdFile != nil {
		unused = holdFile.Watch(holdInterval, stop, logger.Errorf)
	}

	if opts.reresolvePath != "" {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := startReresolve(ctx, dev, opts.reresolvePath, opts.reresolveStatus, logger); err != nil {
			return fail(exitFailure, "endpoint re-resolution", err)
		}
	}

	if opts.portForward != "" {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := startPortForward(ctx, opts.portForward, logger, stderr); err != nil {
			return fail(exitFailure, "port forwarding", err)
		}
	}

	// What the start allocated and dropped (reading the host's files, the
	// view's directories) goes back to the kernel now: an idle sidecar is
	// what a profile costs for days.
	debug.FreeOSMemory()
	// Logged first: wg-wrap -v shows the log up to READY.
	logger.Verbosef("ready: %s (MTU %d), host UDP port %d", opts.ifname, opts.mtu, bind.Port())
	if err := ready.ok(); err != nil {
		logger.Errorf("signalling readiness: %v", err)
	}
	go func() {
		time.Sleep(time.Second)
		debug.FreeOSMemory()
	}()

	select {
	case sig := <-term:
		logger.Verbosef("shutting down on %v", sig)
		return exitOK
	case <-abandoned:
		logger.Errorf("wg-wrap went before the start was done: ending")
		return exitFailure
	case <-unused:
		logger.Verbosef("shutting down: no holder of the lock and no process left in the namespace")
		removeState = true
		return exitOK
	case err := <-uapiErrs:
		logger.Errorf("UAPI listener failed: %v", err)
		return exitFailure
	case err := <-ctl.Errs():
		logger.Errorf("control socket listener failed: %v", err)
		return exitFailure
	case <-dev.Wait():
		logger.Errorf("WireGuard device closed unexpectedly")
		return exitFailure
	}
}

// enterStateDir makes the profile's runtime directory, handed over as
// WG_WRAP_STATE_DIR_FD, the working directory: its files (hold, the
// re-resolution's plan and status, view.json) are then reached by relative
// names, although the namespace hides the directory from every path.
func enterStateDir() error {
	fd, err := fdFromEnv(envStateDirFD, true)
	if err != nil {
		return err
	}
	os.Unsetenv(envStateDirFD)
	defer unix.Close(fd)
	return unix.Fchdir(fd)
}

// removeStateDir removes the working directory (the runtime directory of
// profile name), whose files are all plain.
func removeStateDir(name string) error {
	names, err := readDirNames(".")
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := unix.Unlinkat(unix.AT_FDCWD, n, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	if name != "" {
		parent, err := unix.Open("..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		defer unix.Close(parent)
		var here, there unix.Stat_t
		// Only the directory we are in: the name may have been reused.
		if unix.Stat(".", &here) == nil && unix.Fstatat(parent, name, &there, unix.AT_SYMLINK_NOFOLLOW) == nil &&
			here.Dev == there.Dev && here.Ino == there.Ino {
			if err := unix.Unlinkat(parent, name, unix.AT_REMOVEDIR); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// buildView makes the namespace's view of the host, which then reports
// its status into view.json.
func buildView(opts options, logger *device.Logger) (*view.View, error) {
	cfg := view.DefaultConfig()
	if opts.resolvConf != "" {
		data, err := os.ReadFile(opts.resolvConf)
		if err != nil {
			return nil, err
		}
		cfg.ResolvConf = data
	}
	cfg.Hide = opts.hide
	cfg.Logf, cfg.Errorf = logger.Verbosef, logger.Errorf
	reporter := newViewReporter(logger)
	cfg.Report = reporter.report
	v, err := view.Build(cfg)
	if err != nil {
		return nil, err
	}
	reporter.report(v.Status())
	return v, nil
}

// parseArgs parses the command line; errors are reported by the caller.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	opts := options{ifname: defaultIfname, mtu: defaultMTU}
	fs := flag.NewFlagSet(progName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s [--profile NAME] [--ifname NAME] [--mtu N] [--hold FILE [--remove-state]] "+
			"[--view [--resolv-conf FILE] [--hide DIR]...] [--reresolve PLAN --reresolve-status FILE] [--port-forward PLAN] [-v]\n", progName)
		fmt.Fprintf(stderr, "environment: %s, %s, %s, %s=<fd> (required), %s=<fd> (optional)\n",
			envHostSocketFD, envUAPIFD, envControlFD, envStateDirFD, envReadyFD)
		fs.PrintDefaults()
	}
	fs.StringVar(&opts.profile, "profile", "", "the profile's name (its runtime directory's)")
	fs.StringVar(&opts.ifname, "ifname", opts.ifname, "name of the TUN device")
	fs.IntVar(&opts.mtu, "mtu", opts.mtu, fmt.Sprintf("MTU of the TUN device (%d..%d)", minMTU, maxMTU))
	fs.StringVar(&opts.holdPath, "hold", "", "ephemeral mode: exit once no process holds this file (in the runtime directory) locked and none is left in the namespace")
	fs.BoolVar(&opts.removeState, "remove-state", false, "with --hold and --profile: remove the runtime directory when the profile ends by itself")
	fs.BoolVar(&opts.view, "view", false, "make the namespace's view of the host's /etc and /run, and keep it")
	fs.StringVar(&opts.resolvConf, "resolv-conf", "", "with --view: the profile's resolv.conf (in the runtime directory); without, the host's is shown and followed")
	fs.Var(&opts.hide, "hide", "with --view: a directory to show empty (may be given more than once)")
	fs.BoolVar(&opts.verbose, "v", false, "verbose logging")
	fs.StringVar(&opts.reresolvePath, "reresolve", "", "re-resolve endpoint host names per this JSON plan, over the host DNS socket in "+envHostDNSFD)
	fs.StringVar(&opts.reresolveStatus, "reresolve-status", "", "with --reresolve: where to write the endpoints' state (JSON)")
	fs.StringVar(&opts.portForward, "port-forward", "", "keep a forwarded port from the gateway over NAT-PMP, per this JSON plan (in the runtime directory)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return opts, errors.New("help requested")
		}
		return opts, err
	}
	switch {
	case fs.NArg() > 0:
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case opts.mtu < minMTU || opts.mtu > maxMTU:
		return opts, fmt.Errorf("--mtu %d is out of range %d..%d", opts.mtu, minMTU, maxMTU)
	case opts.removeState && (opts.holdPath == "" || opts.profile == ""):
		return opts, errors.New("--remove-state needs --hold and --profile")
	case !opts.view && (opts.resolvConf != "" || len(opts.hide) > 0):
		return opts, errors.New("--resolv-conf and --hide need --view")
	}
	if err := checkIfname(opts.ifname); err != nil {
		return opts, err
	}
	return opts, nil
}

// checkIfname applies the kernel's rules for interface names (dev_valid_name).
func checkIfname(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("--ifname %q is not a valid interface name (1-%d characters, no '/', ':' or whitespace)", name, unix.IFNAMSIZ-1)
	}
	return nil
}

// newLogger writes wireguard-go's log to stderr: errors always, the rest
// with -v.
func newLogger(w io.Writer, verbose bool) *device.Logger {
	l := log.New(w, progName+": ", log.LstdFlags)
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: l.Printf}
	if verbose {
		logger.Verbosef = l.Printf
	}
	return logger
}

// viewReporter writes the view's status into view.json, and tells the
// programs in the namespace, once per problem, when the view could not be
// kept as it should (as the aftercare tells them of a dead sidecar).
type viewReporter struct {
	logger  *device.Logger
	netns   string
	problem string
}

func newViewReporter(logger *device.Logger) *viewReporter {
	netns, _ := os.Readlink("/proc/self/ns/net")
	return &viewReporter{logger: logger, netns: netns}
}

func (r *viewReporter) report(s view.Status) {
	data, err := json.Marshal(s)
	if err == nil {
		err = writeFileAtomic(viewStatus, append(data, '\n'))
	}
	if err != nil {
		r.logger.Errorf("writing %s: %v", viewStatus, err)
	}
	if s.Problem != "" && s.Problem != r.problem && r.netns != "" {
		r.problem = s.Problem
		hold.Tell("/proc", r.netns, []int{os.Getpid()}, fmt.Sprintf(
			"\nwg-wrap: this profile's view of the host could not be kept as it should: %s "+
				"(`wg-wrap status` shows it; restarting the profile makes it anew)\n", s.Problem))
	}
}

// writeFileAtomic replaces name in the working directory in one rename.
func writeFileAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
