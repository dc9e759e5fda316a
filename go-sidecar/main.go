// Command wg-wrap-sidecar runs wireguard-go inside a wg-wrap namespace.
//
// The C launcher starts it in fresh user, network and mount namespaces with
// an ambient CAP_NET_ADMIN. It creates the TUN device, runs a WireGuard device
// on the host UDP socket it inherits (WG_WRAP_HOST_SOCKET_FD), and is then
// configured only over its UAPI socket. wg-wrap's own verbs (published
// ports, the proxy front) come over a separate control socket, with the host
// sockets they use. It also pins the namespaces: they live as long as it does.
//
//	wg-wrap-sidecar --uapi PATH [--control PATH] [--ifname NAME] [--mtu N] [--hold PATH [--state-dir DIR]]
//	                [--reresolve PLAN --reresolve-status FILE] [-v]
//	wg-wrap-sidecar --version
//	wg-wrap-sidecar genkey | pubkey     (like wg's; keys.go)
//	wg-wrap-sidecar aftercare --pid PID --profile-dir DIR --life-fd FD   (aftercare.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"wg-wrap/go-sidecar/fdbind"
	"wg-wrap/go-sidecar/hold"
)

const (
	exitOK      = 0 // stopped by a signal or because the profile became unused
	exitFailure = 1 // setup failed, or the device or UAPI listener died
	exitUsage   = 2 // bad command line
)

const (
	envHostSocketFD = "WG_WRAP_HOST_SOCKET_FD"
	envReadyFD      = "WG_WRAP_READY_FD"
)

const (
	defaultIfname = "tun0"
	defaultMTU    = 1420
	minMTU        = 576 // IPv4 minimum; IPv6 needs 1280, left to the caller
	maxMTU        = 65535
	holdInterval  = 200 * time.Millisecond
	progName      = "wg-wrap-sidecar"
)

type options struct {
	uapiPath string
	ifname   string
	mtu      int
	holdPath string
	stateDir string
	verbose  bool
	control  string // path of the control socket

	reresolvePath   string // JSON plan: peers whose Endpoint is a host name
	reresolveStatus string // where the re-resolution's state is written
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(versionLine())
		return
	}
	if code, ok := keyCommand(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); ok {
		os.Exit(code)
	}
	if len(os.Args) >= 2 && os.Args[1] == "aftercare" {
		os.Exit(aftercare(os.Args[2:], os.Stderr))
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
	hostFD, err := fdFromEnv(envHostSocketFD, true)
	if err != nil {
		return fail(exitFailure, envHostSocketFD, err)
	}
	// Nothing started from here on needs them, and they name fds that
	// mean nothing in another process.
	os.Unsetenv(envHostSocketFD)
	os.Unsetenv(envReadyFD)

	bind, err := fdbind.New(hostFD)
	if err != nil {
		return fail(exitFailure, "host socket", err)
	}
	defer bind.Release()

	// Removed last, after the device and the UAPI socket are closed, and
	// only when the profile ended by itself: no process of wg-wrap stays
	// beside the programs to do it. The exclusive hold lock is still held,
	// so a program about to join waits until this process has exited.
	removeState := false
	defer func() {
		if removeState && opts.stateDir != "" {
			if err := os.RemoveAll(opts.stateDir); err != nil {
				fmt.Fprintf(stderr, "%s: removing %s: %v\n", progName, opts.stateDir, err)
			}
		}
	}()

	var holdFile *hold.Hold
	if opts.holdPath != "" {
		// Never closed: once the profile is found unused, the exclusive
		// lock must last until the process (and its namespaces) is gone.
		if holdFile, err = hold.Open(opts.holdPath); err != nil {
			return fail(exitFailure, "hold file", err)
		}
	}

	tunDev, err := tun.CreateTUN(opts.ifname, opts.mtu)
	if err != nil {
		return fail(exitFailure, "creating TUN device "+opts.ifname, err)
	}
	logger := newLogger(stderr, opts.verbose)
	// The device starts when the parent sets the link up: the TUN reports
	// it (netlink RTM_NEWLINK with IFF_RUNNING) and wireguard-go calls Up.
	dev := device.NewDevice(tunDev, bind, logger)
	defer dev.Close()

	uapi, err := listenUAPI(opts.uapiPath)
	if err != nil {
		return fail(exitFailure, "UAPI socket", err)
	}
	defer uapi.Close() // unlinks the socket
	uapiErrs := make(chan error, 1)
	go serveUAPI(uapi, dev, uapiErrs)

	control, err := startControl(opts.control, logger)
	if err != nil {
		return fail(exitFailure, "control socket", err)
	}
	defer control.Close() // unlinks the socket, ends published ports and proxies

	// Ignore SIGHUP: the sidecar runs detached in its own session.
	signal.Ignore(unix.SIGHUP)
	term := make(chan os.Signal, 1)
	signal.Notify(term, unix.SIGTERM, unix.SIGINT)

	stop := make(chan struct{})
	defer close(stop)
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

	if err := ready.ok(); err != nil {
		logger.Errorf("signalling readiness: %v", err)
	}
	logger.Verbosef("ready: %s (MTU %d), host UDP port %d, UAPI on %s", opts.ifname, opts.mtu, bind.Port(), opts.uapiPath)

	select {
	case sig := <-term:
		logger.Verbosef("shutting down on %v", sig)
		return exitOK
	case <-unused:
		logger.Verbosef("shutting down: no holder of the lock and no process left in the namespace")
		removeState = true
		return exitOK
	case err := <-uapiErrs:
		logger.Errorf("UAPI listener failed: %v", err)
		return exitFailure
	case err := <-control.Errs():
		logger.Errorf("control socket listener failed: %v", err)
		return exitFailure
	case <-dev.Wait():
		logger.Errorf("WireGuard device closed unexpectedly")
		return exitFailure
	}
}

// parseArgs parses the command line; errors are reported by the caller.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	opts := options{ifname: defaultIfname, mtu: defaultMTU}
	fs := flag.NewFlagSet(progName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s --uapi PATH [--control PATH] [--ifname NAME] [--mtu N] [--hold PATH [--state-dir DIR]] [-v]\n", progName)
		fmt.Fprintf(stderr, "environment: %s=<fd> (required), %s=<fd> (optional)\n", envHostSocketFD, envReadyFD)
		fs.PrintDefaults()
	}
	fs.StringVar(&opts.uapiPath, "uapi", "", "path of the UAPI unix socket to create (must not exist)")
	fs.StringVar(&opts.control, "control", "", "path of the control socket to create (must not exist): published ports and the proxy front")
	fs.StringVar(&opts.ifname, "ifname", opts.ifname, "name of the TUN device")
	fs.IntVar(&opts.mtu, "mtu", opts.mtu, fmt.Sprintf("MTU of the TUN device (%d..%d)", minMTU, maxMTU))
	fs.StringVar(&opts.holdPath, "hold", "", "ephemeral mode: exit once no process holds this file locked and none is left in the namespace")
	fs.StringVar(&opts.stateDir, "state-dir", "", "with --hold: the profile's runtime directory, removed when the profile ends by itself")
	fs.BoolVar(&opts.verbose, "v", false, "verbose logging")
	fs.StringVar(&opts.reresolvePath, "reresolve", "", "re-resolve endpoint host names per this JSON plan, over the host DNS socket in "+envHostDNSFD)
	fs.StringVar(&opts.reresolveStatus, "reresolve-status", "", "with --reresolve: where to write the endpoints' state (JSON)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return opts, errors.New("help requested")
		}
		return opts, err
	}
	switch {
	case fs.NArg() > 0:
		return opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case opts.uapiPath == "":
		return opts, errors.New("--uapi PATH is required")
	case opts.mtu < minMTU || opts.mtu > maxMTU:
		return opts, fmt.Errorf("--mtu %d is out of range %d..%d", opts.mtu, minMTU, maxMTU)
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
