package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/natpmp"
)

// A forwarded port from the VPN's gateway (`--port-forward`): the sidecar,
// in the tunnel's namespace, asks for it over NAT-PMP and keeps it, writes
// what it holds for wg-wrap and for scripts, and runs the user's command
// each time the port is obtained or moves.

const (
	portForwardStatus = "portforward-status.json" // natpmp.Status, for `wg-wrap status`
	forwardedPortFile = "forwarded_port"          // just the port, for scripts
	forwardedPortEnv  = "WG_WRAP_FORWARDED_PORT"
	// forwardedExternalEnv: the port peers connect to, when the gateway
	// maps another one to the port here (miniupnpd; ProtonVPN: the same).
	forwardedExternalEnv = "WG_WRAP_FORWARDED_EXTERNAL_PORT"
	// dialRetry: the namespace has no route until wg-wrap has configured
	// it, a moment after the sidecar started.
	dialRetry = 200 * time.Millisecond
)

// portForwardPlan is what wg-wrap writes (wg_wrap/portfwd.py).
type portForwardPlan struct {
	Gateway      string            `json:"gateway"`
	InternalPort uint16            `json:"internal_port"`
	Command      string            `json:"command"`
	Env          map[string]string `json:"env"`
}

// startPortForward reads the plan and keeps a mapping until ctx ends.
func startPortForward(ctx context.Context, planPath string, logger *device.Logger, hookLog io.Writer) error {
	data, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	var plan portForwardPlan
	if err := json.Unmarshal(data, &plan); err != nil {
		return fmt.Errorf("%s: %w", planPath, err)
	}
	gateway, err := netip.ParseAddr(plan.Gateway)
	if err != nil {
		return fmt.Errorf("%s: gateway: %w", planPath, err)
	}
	os.Remove(forwardedPortFile) // a heal: the old port is not ours until the gateway says so
	go func() {
		client := dialGateway(ctx, netip.AddrPortFrom(gateway, natpmp.GatewayPort), logger)
		if client == nil {
			return
		}
		defer client.Close()
		m := natpmp.NewMapper(client, natpmp.Config{
			InternalPort: plan.InternalPort,
			OnStatus:     func(s natpmp.Status) { writePortForwardStatus(s, logger) },
			OnChange: func(s natpmp.Status) {
				logger.Verbosef("port forward: port %d (external %d) from %s", s.Port, s.ExternalPort, s.Gateway)
				if err := writeFileAtomic(forwardedPortFile, []byte(strconv.Itoa(int(s.Port))+"\n")); err != nil {
					logger.Errorf("writing %s: %v", forwardedPortFile, err)
				}
				if plan.Command != "" {
					runHook(plan.Command, s, plan.Env, hookLog, logger)
				}
			},
			Logf: logger.Verbosef,
		})
		m.Run(ctx)
	}()
	return nil
}

// dialGateway opens the client's socket, waiting for the route to the
// gateway (nil once ctx ends first).
func dialGateway(ctx context.Context, gateway netip.AddrPort, logger *device.Logger) *natpmp.Client {
	for {
		client, err := natpmp.Dial(gateway, natpmp.RFCRetry)
		if err == nil {
			return client
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(dialRetry):
		}
	}
}

func writePortForwardStatus(s natpmp.Status, logger *device.Logger) {
	data, err := json.Marshal(s)
	if err == nil {
		err = writeFileAtomic(portForwardStatus, append(data, '\n'))
	}
	if err != nil {
		logger.Errorf("writing %s: %v", portForwardStatus, err)
	}
}

// runHook runs the user's command, `{port}` (where the program listens)
// and `{external_port}` (what peers connect to: the same with ProtonVPN)
// replaced, as a wrapped program: in the profile's namespaces (the
// sidecar's), with the user's uid, no capabilities and no_new_privs, from
// a thread of its own that gives up the sidecar's capabilities first and is
// never used again.
func runHook(command string, s natpmp.Status, env map[string]string, out io.Writer, logger *device.Logger) {
	port := s.Port
	line := strings.NewReplacer("{port}", strconv.Itoa(int(s.Port)),
		"{external_port}", strconv.Itoa(int(s.ExternalPort))).Replace(command)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if err := dropPrivileges(); err != nil {
			logger.Errorf("port forward command: giving up capabilities: %v", err)
			return
		}
		cmd := exec.Command("/bin/sh", "-c", line)
		cmd.Env = hookEnv(env, s)
		cmd.Dir = "/"
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		start := time.Now()
		err := cmd.Run()
		logger.Verbosef("port forward command (port %d) ended after %v: %v", port, time.Since(start).Round(time.Millisecond), err)
		if err != nil {
			logger.Errorf("port forward command %q: %v", line, err)
		}
	}()
}

func hookEnv(env map[string]string, s natpmp.Status) []string {
	var out []string
	for k, v := range env {
		if !strings.HasPrefix(k, "WG_WRAP_") {
			out = append(out, k+"="+v)
		}
	}
	sort.Strings(out)
	return append(out, forwardedPortEnv+"="+strconv.Itoa(int(s.Port)),
		forwardedExternalEnv+"="+strconv.Itoa(int(s.ExternalPort)))
}

// dropPrivileges leaves the calling thread (only: capabilities and
// no_new_privs are per thread) as the launcher leaves a wrapped program:
// no capabilities, none to gain by exec (the bounding set is kept, so that
// programs that carry file capabilities still start, without them).
func dropPrivileges() error {
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clearing ambient capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}
