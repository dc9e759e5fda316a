"""Starting, joining and ending profiles: the orchestration of one ``run``.

Setup is a sequence of reversible steps on a ``contextlib.ExitStack``: when
one fails, what was done is undone in reverse order, and nothing is left
running or on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wg_wrap import config as wgconfig
from wg_wrap import dns, hostnet, launch, runtime
from wg_wrap.errors import ConfigError, ProfileError, SetupError
from wg_wrap.launch import Sidecar
from wg_wrap.runtime import Profile, State

DEFAULT_MTU = 1420
IFNAME = "tun0"
# How long the last wrapper waits for an ephemeral sidecar to notice it is
# alone (it checks every 200 ms) before leaving the cleanup to the next command.
EPHEMERAL_EXIT_WAIT = 1.5


def trace(verbose: bool, message: str) -> None:
    if verbose:
        print(f"wg-wrap: [#] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"wg-wrap: warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Request:
    """What the user asked for: a config, a profile name, options."""

    config_path: str
    name: str | None = None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    listen_address: str | None = None
    verbose: bool = False

    @property
    def profile_name(self) -> str:
        return self.name or Path(self.config_path).stem


def load(request: Request) -> wgconfig.Config:
    cfg = wgconfig.load_config(request.config_path)
    for warning in cfg.warnings:
        warn(str(warning))
    perm = wgconfig.permission_warning(request.config_path)
    if perm:
        warn(perm)
    return cfg


def routing_table(cfg: wgconfig.Config, path: str) -> int | None:
    table = cfg.interface.table
    if table is None or table in ("auto", "main"):
        return 254
    if table == "off":
        return None
    try:
        number = int(table)
    except ValueError:
        raise ConfigError(
            path, None, f"Table = {table}: only 'off', 'auto', 'main' or a number are supported"
        ) from None
    if not 0 < number < 2**32:
        raise ConfigError(path, None, f"Table = {table}: out of range")
    return number


def resolv_conf_text(cfg: wgconfig.Config, request: Request) -> str:
    servers = request.dns or cfg.interface.dns_servers
    if servers:
        if len(servers) > dns.MAX_NAMESERVERS:
            warn(f"only the first {dns.MAX_NAMESERVERS} DNS servers are used (glibc's limit)")
        return dns.render_resolv_conf(servers, cfg.interface.dns_search)
    try:
        host = Path(dns.ETC_RESOLV).read_text()
    except OSError:
        host = ""
    unreachable = dns.loopback_nameservers(host)
    if unreachable:
        warn(
            f"the host's resolver {', '.join(unreachable)} is a loopback address, "
            "unreachable inside the tunnel; set DNS = in the config or pass --dns"
        )
    return host


def _write_private(path: Path, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@dataclass
class Attached:
    """A process's claim on a running profile: the sidecar plus our hold.

    The hold is a shared flock on the profile's ``hold`` file: an ephemeral
    sidecar shuts down only when it can take the lock exclusively and no
    process is left in its network namespace.
    """

    profile: Profile
    sidecar: Sidecar
    hold_fd: int
    mode: str

    def release(self) -> None:
        if self.hold_fd >= 0:
            os.close(self.hold_fd)
            self.hold_fd = -1


def _take_hold(profile: Profile) -> int:
    fd = os.open(profile.hold_path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def start_profile(
    request: Request, cfg: wgconfig.Config, profile: Profile, mode: str
) -> Attached:
    """Bring a profile up; the caller holds the runtime lock."""
    verbose = request.verbose
    path = request.config_path
    table = routing_table(cfg, path)
    with contextlib.ExitStack() as undo:
        trace(verbose, f"mkdir {profile.dir}")
        profile.create_dir()
        undo.callback(profile.remove_dir)

        host_socket = hostnet.open_host_socket(cfg.interface.listen_port, request.listen_address)
        undo.callback(host_socket.close)
        trace(verbose, f"host UDP socket bound to port {host_socket.getsockname()[1]}")
        resolved = hostnet.resolve_endpoints(cfg, path, host_socket.family)
        for ep, (ip, port) in resolved.items():
            trace(verbose, f"endpoint {ep} -> {ip}:{port}")

        _write_private(profile.resolv_path, resolv_conf_text(cfg, request))
        _write_private(profile.hold_path, "", 0o600)
        hold_fd = _take_hold(profile)
        undo.callback(os.close, hold_fd)
        mount_ops = dns.mount_ops(str(profile.resolv_path), dns.HostLayout.read())
        mtu = cfg.interface.mtu or DEFAULT_MTU

        trace(verbose, f"wg-wrap-launcher create {' '.join(mount_ops)} -- wg-wrap-sidecar")
        sidecar = launch.start_sidecar(
            profile, host_socket, mount_ops,
            ifname=IFNAME, mtu=mtu, ephemeral=(mode == "ephemeral"), verbose=verbose,
        )
        undo.callback(sidecar.close)
        undo.callback(sidecar.stop)

        from wg_wrap import netns  # pyroute2 is only needed when starting
        from wg_wrap import uapi

        plan = netns.NetworkPlan(
            ifname=IFNAME, mtu=mtu, addresses=cfg.interface.addresses,
            routes=netns.plan_routes([n for p in cfg.peers for n in p.allowed_ips]),
            table=table,
        )
        netns.configure(sidecar.pidfd, plan, verbose)
        trace(verbose, "wg set (UAPI): private key, peers, endpoints, allowed ips")
        uapi.UAPIClient(str(profile.uapi_path)).set(uapi.encode_set(cfg, resolved))

        profile.write_state(State(
            name=profile.name, mode=mode, sidecar_pid=sidecar.pid,
            sidecar_start=sidecar.start_time, config_path=os.path.abspath(path),
            config_digest=wgconfig.config_digest(cfg), ifname=IFNAME,
            created_at=time.time(), addresses=[str(a) for a in cfg.interface.addresses],
            dns=[str(s) for s in (request.dns or cfg.interface.dns_servers)], mtu=mtu,
            endpoints=hostnet.endpoint_strings(resolved),
        ))
        undo.pop_all()
    return Attached(profile, sidecar, hold_fd, mode)


def attach_running(profile: Profile, state: State) -> Attached | None:
    """Join a live profile, or None if its sidecar is gone (or going)."""
    sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
    if sidecar is None:
        return None
    try:
        hold_fd = _take_hold(profile)
    except OSError:
        sidecar.close()
        return None
    # An ephemeral sidecar that was shutting down held the lock exclusively
    # until it exited: check it is still there now that we hold it.
    if sidecar.exited():
        os.close(hold_fd)
        sidecar.close()
        return None
    return Attached(profile, sidecar, hold_fd, state.mode)


def reap_stale(profile: Profile, verbose: bool) -> None:
    """Remove what a crashed sidecar or killed wrapper left behind."""
    if profile.dir.exists():
        trace(verbose, f"removing stale state {profile.dir}")
        profile.remove_dir()


def acquire(request: Request, cfg: wgconfig.Config, mode: str) -> Attached:
    """Join the named profile if it is up with this config, else start it."""
    base = runtime.base_dir()
    profile = Profile.at(base, request.profile_name)
    digest = wgconfig.config_digest(cfg)
    with runtime.locked(base):
        state = profile.read_state()
        if state is not None:
            attached = attach_running(profile, state)
            if attached is not None:
                if state.config_digest != digest:
                    attached.release()
                    attached.sidecar.close()
                    raise ProfileError(
                        f"profile {profile.name!r} is running with a different config "
                        f"({state.config_path})",
                        hint="pick another name with -n NAME, or stop it first",
                    )
                trace(request.verbose, f"joining running profile {profile.name}")
                return attached
        reap_stale(profile, request.verbose)
        return start_profile(request, cfg, profile, mode)


def finish(attached: Attached, verbose: bool) -> None:
    """Let go of a profile; clean up after an ephemeral sidecar that left."""
    attached.release()
    sidecar = attached.sidecar
    try:
        if attached.mode == "ephemeral" and sidecar.exited(EPHEMERAL_EXIT_WAIT):
            base = attached.profile.dir.parent
            with runtime.locked(base):
                state = attached.profile.read_state()
                if state is None or state.sidecar_pid == sidecar.pid:
                    trace(verbose, f"profile {attached.profile.name} ended; removing its state")
                    attached.profile.remove_dir()
    finally:
        sidecar.close()


def run(request: Request, command: Sequence[str]) -> int:
    cfg = load(request)
    attached = acquire(request, cfg, "ephemeral")
    try:
        trace(request.verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
        return launch.run_joined(attached.sidecar, command)
    finally:
        finish(attached, request.verbose)


