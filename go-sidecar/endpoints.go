package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/device"

	"wg-wrap/go-sidecar/hostdns"
	"wg-wrap/go-sidecar/reresolve"
)

const envHostDNSFD = "WG_WRAP_HOST_DNS_FD"

// reresolvePlan is what wg-wrap writes for --reresolve: the peers whose
// Endpoint is a host name, the host's nameservers (read from the host's
// resolv.conf before the namespace existed) and the threshold.
type reresolvePlan struct {
	AfterSeconds float64          `json:"after_seconds"`
	ResolvedAt   float64          `json:"resolved_at"` // Unix time of wg-wrap's own resolution
	Nameservers  []string         `json:"nameservers"`
	Peers        []reresolve.Peer `json:"peers"`
}

// startReresolve starts re-resolving endpoint names over the host DNS socket
// (WG_WRAP_HOST_DNS_FD) until ctx is done. A plan that cannot be used is an
// error: the caller asked for it.
func startReresolve(ctx context.Context, dev *device.Device, planPath, statusPath string, logger *device.Logger) error {
	fd, err := fdFromEnv(envHostDNSFD, true)
	if err != nil {
		return fmt.Errorf("%s: %w", envHostDNSFD, err)
	}
	os.Unsetenv(envHostDNSFD)
	data, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	var plan reresolvePlan
	if err := json.Unmarshal(data, &plan); err != nil {
		return fmt.Errorf("%s: %w", planPath, err)
	}
	if plan.AfterSeconds <= 0 {
		return fmt.Errorf("%s: after_seconds must be positive", planPath)
	}
	var servers []netip.AddrPort
	for _, s := range plan.Nameservers {
		server, err := netip.ParseAddrPort(s)
		if err != nil {
			return fmt.Errorf("%s: nameserver %q: %w", planPath, s, err)
		}
		servers = append(servers, server)
	}
	resolver, err := hostdns.New(fd, servers)
	unix.Close(fd) // the resolver has its own dup
	if err != nil {
		return err
	}
	resolvedAt := time.Unix(0, int64(plan.ResolvedAt*1e9))
	after := time.Duration(plan.AfterSeconds * float64(time.Second))
	watcher := reresolve.New(dev, resolver, plan.Peers, after, resolver.IPv4Only(), statusPath,
		resolvedAt, logger.Errorf)
	go func() {
		defer resolver.Close()
		watcher.Run(ctx)
	}()
	return nil
}
