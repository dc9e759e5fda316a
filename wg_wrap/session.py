"""Starting, joining and ending profiles: the orchestration of one ``run``.

Setup is a sequence of reversible steps on a ``contextlib.ExitStack``: when
one fails, what was done is undone in reverse order, and nothing is left
running or on disk.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wg_wrap import config as wgconfig
from wg_wrap import dns, hostnet, keys, launch, netns, publish, runtime, uapi, version
from wg_wrap.errors import ProfileError, SetupError
from wg_wrap.join import Attached, attach_running, finish, not_running, take_hold, trace
from wg_wrap.reach import ReachRequest
from wg_wrap.runtime import Profile, State

DEFAULT_MTU = 1420
MAIN_TABLE = 254
IFNAME = "tun0"


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
    reach: ReachRequest | None = None  # published ports, the proxy front

    @property
    def profile_name(self) -> str:
        if self.name:
            return self.name
        try:
            is_file = stat.S_ISREG(os.stat(self.config_path).st_mode)
        except OSError:
            is_file = True  # load() reports what is wrong with it
        if not is_file:
            raise ProfileError(
                f"{self.config_path} is not a file, so it names no profile",
                hint="name the profile with -n NAME, e.g. -n wg0",
            )
        return Path(self.config_path).stem


def load(request: Request) -> wgconfig.Config:
    runtime.check_profile_name(request.profile_name)  # before a pipe is read
    cfg = wgconfig.load_config(request.config_path)
    for warning in cfg.warnings:
        warn(str(warning))
    perm = wgconfig.permission_warning(request.config_path)
    if perm:
        warn(perm)
    return cfg


def routing_table(cfg: wgconfig.Config) -> int | None:
    """The table the AllowedIPs routes go to; None for ``Table = off``.

    The parser allows only off, auto, main and numbers."""
    table = cfg.interface.table
    if table == "off":
        return None
    return MAIN_TABLE if table in (None, "auto", "main") else int(table)


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
    loopback = dns.loopback_nameservers(host)
    if loopback:
        warn(
            f"the host's resolver {', '.join(loopback)} is a loopback address, "
            "unreachable inside the tunnel; set DNS = in the config or pass --dns"
        )
    routed = [a.network for a in cfg.interface.addresses]
    if routing_table(cfg) is not None:
        routed += [n for p in cfg.peers for n in p.allowed_ips]
    unrouted = dns.unrouted_nameservers(host, routed)
    if unrouted:
        warn(
            f"the host's resolver {', '.join(unrouted)} is outside the tunnel's AllowedIPs, "
            "unreachable inside; set DNS = in the config or pass --dns"
        )
    return host


def _write_new(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start_profile(
    request: Request, cfg: wgconfig.Config, profile: Profile, mode: str
) -> Attached:
    """Bring a profile up; the caller holds the runtime lock."""
    verbose = request.verbose
    path = request.config_path
    table = routing_table(cfg)
    version.check_helpers()
    with contextlib.ExitStack() as undo:
        trace(verbose, f"mkdir {profile.dir}")
        profile.create_dir()
        undo.callback(profile.remove_dir)

        host_socket = hostnet.open_host_socket(cfg.interface.listen_port, request.listen_address)
        undo.callback(host_socket.close)
        listen_port = int(host_socket.getsockname()[1])
        trace(verbose, f"host UDP socket bound to port {listen_port}")
        resolved = hostnet.resolve_endpoints(cfg, path, host_socket.family)
        for ep, (ip, port) in resolved.items():
            trace(verbose, f"endpoint {ep} -> {ip}:{port}")
        reach_sockets = publish.open_host_sockets(request.reach)
        undo.callback(reach_sockets.close)

        _write_new(profile.resolv_path, resolv_conf_text(cfg, request), 0o644)
        _write_new(profile.hold_path, "", 0o600)
        hold_fd = take_hold(profile)
        undo.callback(os.close, hold_fd)
        mount_ops = dns.mount_ops(profile.resolv_path, dns.HostLayout.read())
        mtu = cfg.interface.mtu or DEFAULT_MTU

        trace(verbose, f"wg-wrap-launcher create {' '.join(mount_ops)} -- wg-wrap-sidecar")
        sidecar = launch.start_sidecar(
            profile, host_socket, mount_ops,
            ifname=IFNAME, mtu=mtu, ephemeral=(mode == "ephemeral"), verbose=verbose,
        )
        undo.callback(sidecar.close)
        undo.callback(sidecar.stop)

        # Recorded now, so that if this process is killed before the end, the
        # next command finds the sidecar and stops it (ready = false).
        state = State(
            name=profile.name, mode=mode, sidecar_pid=sidecar.pid,
            sidecar_start=sidecar.start_time, config_path=os.path.abspath(path),
            config_digest=wgconfig.config_digest(cfg), ifname=IFNAME,
            created_at=time.time(), addresses=[str(a) for a in cfg.interface.addresses],
            dns=[str(s) for s in (request.dns or cfg.interface.dns_servers)], mtu=mtu,
            endpoints=hostnet.endpoint_strings(resolved),
            public_key=keys.encode(keys.public_key(cfg.interface.private_key)),
            listen_port=listen_port, ready=False,
        )
        profile.write_state(state)

        plan = netns.NetworkPlan(
            ifname=IFNAME, mtu=mtu, addresses=cfg.interface.addresses,
            routes=netns.plan_routes([n for p in cfg.peers for n in p.allowed_ips]),
            table=table,
        )
        netns.configure(sidecar.pidfd, plan, verbose)
        trace(verbose, "wg set (UAPI): private key, peers, endpoints, allowed ips")
        uapi.UAPIClient(profile.uapi_path).set(uapi.encode_set(cfg, resolved))
        if request.reach:
            publish.hand_over(profile, reach_sockets, request.reach, state, verbose)
            for line in publish.announce(state):
                print(f"wg-wrap: {line}", file=sys.stderr, flush=True)

        state.ready = True
        profile.write_state(state)
        undo.pop_all()
    return Attached(profile, sidecar, hold_fd, mode, started=True)


def reap_stale(profile: Profile, state: State | None, verbose: bool) -> None:
    """Remove what a crashed sidecar or killed wrapper left behind; the
    caller holds the runtime lock, so no start is under way."""
    if state is not None and not state.ready:
        # A start killed half-way: its sidecar may still run, unconfigured.
        sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
        if sidecar is not None:
            trace(verbose, f"stopping the sidecar of an unfinished start ({sidecar.pid})")
            sidecar.stop()
            sidecar.close()
    if os.path.exists(profile.dir):
        trace(verbose, f"removing stale state {profile.dir}")
        profile.remove_dir()


def acquire(request: Request, cfg: wgconfig.Config, mode: str) -> Attached:
    """Join the named profile if it is up with this config, else start it."""
    base = runtime.base_dir()
    profile = Profile.at(base, request.profile_name)
    digest = wgconfig.config_digest(cfg)
    with runtime.locked(base):
        state = profile.read_state()
        if state is not None and state.ready:
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
                if request.reach:
                    attached.release()
                    attached.sidecar.close()
                    raise publish.already_running(profile.name)
                trace(request.verbose, f"joining running profile {profile.name}")
                return attached
        reap_stale(profile, state, request.verbose)
        return start_profile(request, cfg, profile, mode)


def stop_started(attached: Attached) -> None:
    """Undo a start whose later step (the handshake) failed."""
    attached.release()
    attached.sidecar.stop()
    with runtime.locked(os.path.dirname(attached.profile.dir)):
        attached.profile.remove_dir()
    attached.sidecar.close()


def wait_for_handshake(
    profile: Profile, cfg: wgconfig.Config, timeout: float, verbose: bool
) -> None:
    """Block until some peer with an endpoint has completed a handshake.

    wireguard-go only initiates one when there is something to send: turning
    persistent keepalive on sends a keepalive at once, so it is switched on
    for a moment on peers that have it off.
    """
    peers = [p for p in cfg.peers if p.endpoint is not None]
    if not peers:
        return  # a server waits for its clients, not the other way round
    client = uapi.UAPIClient(profile.uapi_path)
    quiet = [p for p in peers if not p.persistent_keepalive]
    if quiet:
        trace(verbose, "nudging a handshake: keepalive on and off")
        client.set(uapi.encode_keepalive(quiet, 1))
        client.set(uapi.encode_keepalive(quiet, 0))
    targets = ", ".join(str(p.endpoint) for p in peers)
    print(f"wg-wrap: waiting for the handshake with {targets} ...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.last_handshake for p in client.get().peers):
            return
        time.sleep(0.1)
    raise SetupError(
        f"no handshake with {targets} within {timeout:g} s",
        hint="check the Endpoint, the keys, and that the peer knows this client's public key "
        f"({keys.encode(keys.public_key(cfg.interface.private_key))}); "
        "--no-wait skips this check",
    )


def up(request: Request, wait: bool = True, timeout: float = 15.0) -> str:
    """``wg-wrap up``: start a persistent profile (or find it already up)."""
    cfg = load(request)
    attached = acquire(request, cfg, "persistent")
    if attached.mode != "persistent":
        attached.release()
        attached.sidecar.close()
        raise ProfileError(
            f"profile {attached.profile.name!r} is already running, started by `run`: "
            "it ends with its last program",
            hint="use another name (-n NAME) for a persistent profile",
        )
    if attached.started and wait:
        try:
            wait_for_handshake(attached.profile, cfg, timeout, request.verbose)
        except BaseException:
            stop_started(attached)
            raise
    attached.release()
    attached.sidecar.close()
    return attached.profile.name


def down(name: str, force: bool = False, verbose: bool = False) -> str:
    """``wg-wrap down``: stop a profile; returns what happened, for the user."""
    runtime.check_profile_name(name)
    base = runtime.base_dir(create=False)
    profile = Profile.at(base, name)
    if not os.path.isdir(profile.dir):
        raise not_running(name)
    with runtime.locked(base):
        state = profile.read_state()
        sidecar = (
            launch.open_sidecar(state.sidecar_pid, state.sidecar_start) if state else None
        )
        if sidecar is None:
            profile.remove_dir()
            return f"profile {name} was not running; removed its stale state"
        try:
            members = runtime.namespace_members(sidecar.pid)
            if members and not force:
                shown = ", ".join(f"{pid} ({runtime.process_name(pid)})" for pid in members[:8])
                more = f" and {len(members) - 8} more" if len(members) > 8 else ""
                raise ProfileError(
                    f"profile {name} has {len(members)} attached process"
                    f"{'es' if len(members) != 1 else ''}: {shown}{more}",
                    hint=f"stop them first, or `wg-wrap down --force {name}`: "
                    "they keep running without any network",
                )
            trace(verbose, f"stopping sidecar {sidecar.pid}")
            sidecar.stop()
            profile.remove_dir()
        finally:
            sidecar.close()
    return f"profile {name} stopped"


def run(request: Request, command: Sequence[str]) -> int:
    cfg = load(request)
    attached = acquire(request, cfg, "ephemeral")
    try:
        trace(request.verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
        return launch.run_joined(attached.sidecar, command, attached.hold_fd)
    finally:
        finish(attached, request.verbose)


