"""Starting, joining and ending profiles: the orchestration of one ``run``.

Setup is a sequence of reversible steps on a ``contextlib.ExitStack``: when
one fails, what was done is undone in reverse order, and nothing is left
running or on disk.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from wg_wrap import config as wgconfig
from wg_wrap import (
    dns,
    hop,
    hostnet,
    keys,
    launch,
    notify,
    portfwd,
    publish,
    runtime,
    sockets,
    uapi,
    version,
)
from wg_wrap import netns as netns_mod
from wg_wrap.errors import ProfileError, SetupError, UsageError, WgWrapError
from wg_wrap.join import not_running
from wg_wrap.lifetime import (
    EPHEMERAL_END_WAIT,
    Attached,
    Ending,
    attach_running,
    join_running,
    left_inside,
    live_states,
    namespace_members,
    reap_stale,
    stop_started,
    stranded,
    take_hold,
    trace,
    wait_until_ended,
    warn,
)
from wg_wrap.portfwd import PortForward
from wg_wrap.reach import ReachRequest
from wg_wrap.runtime import Profile, State

DEFAULT_MTU = 1420
NS_GET_PARENT = 0xB702  # <linux/nsfs.h>: _IO(0xb7, 0x2)
PROGRESS_INTERVAL = 5.0  # seconds between STATUS= reports while waiting
MAIN_TABLE = 254
IFNAME = "tun0"


def config_dir() -> str:
    """Where configs are found by name: ``$XDG_CONFIG_HOME/wg-wrap``
    (default ``~/.config/wg-wrap``), as wg-quick finds /etc/wireguard/NAME.conf."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "wg-wrap")
    return os.path.join(os.path.expanduser("~"), ".config", "wg-wrap")


def _stranded_config(name: str) -> str | None:
    """The config a profile whose sidecar died with programs inside was
    started with, as its state records it: shown to the user, never used
    unasked (the state is not where a config path may come from)."""
    base = runtime.base_dir(create=False)
    if not os.path.isdir(base):
        return None
    state = Profile.at(base, name).read_state()
    if state is None or not stranded(state):
        return None
    return state.config_path


def named_config(name: str) -> str:
    """The config of profile NAME when no -c is given: ``NAME.conf`` in config_dir()."""
    runtime.check_profile_name(name)
    path = os.path.join(config_dir(), f"{name}.conf")
    if not os.path.exists(path):
        recorded = _stranded_config(name)
        if recorded:
            raise ProfileError(
                f"profile {name!r} died with programs inside; {path} does not exist",
                hint=f"bring it back in place with the config it was started with: "
                f"`wg-wrap up -n {name} -c {shlex.quote(recorded)}`",
            )
        raise ProfileError(
            f"no config for profile {name!r}: {path} does not exist",
            hint=f"put the wg-quick config there (`install -m 600 -D wg0.conf {path}`), "
            "or give it with -c FILE",
        )
    return path


@dataclass(frozen=True)
class Request:
    """What the user asked for: a config (None: found by name), a profile name, options."""

    config_path: str | None
    name: str | None = None
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()
    listen_address: str | None = None
    verbose: bool = False
    reresolve_after: float = 135.0  # seconds; 0: never re-resolve endpoint names
    reach: ReachRequest | None = None  # published ports, the proxy front
    via: str | None = None  # multi-hop: the profile whose tunnel this one's packets ride
    port_forward: PortForward | None = None  # a forwarded port over NAT-PMP

    @property
    def profile_name(self) -> str:
        if self.name is not None:  # given, even empty: checked as given
            return runtime.check_profile_name(self.name)
        if self.config_path is None:
            raise UsageError(
                "no config: give a config file with -c FILE, or a profile name with -n NAME",
                hint=f"-n NAME reads NAME.conf from {config_dir()}",
            )
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

    @property
    def path(self) -> str:
        """The config file: as given, else found by the profile's name."""
        if self.config_path is not None:
            return self.config_path
        return named_config(self.profile_name)


def load(request: Request) -> tuple[Request, wgconfig.Config]:
    """Read and check the config; returns the request with its config path set."""
    runtime.check_profile_name(request.profile_name)  # before a pipe is read
    path = request.path
    request = replace(request, config_path=path)
    cfg = wgconfig.load_config(path)
    for warning in cfg.warnings:
        warn(str(warning))
    perm = wgconfig.permission_warning(path)
    if perm:
        warn(perm)
    return request, cfg


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


def _port_forward_plan(
    request: Request, cfg: wgconfig.Config, profile: Profile, healing: Healing | None,
) -> bool:
    """Write the plan of --port-forward (a heal keeps the dead sidecar's,
    unless it is asked anew); whether there is one."""
    forward = request.port_forward
    if forward is None:
        return healing is not None and os.path.exists(profile.portforward_plan_path)
    gateway = forward.gateway or portfwd.default_gateway(cfg.interface.addresses, request.path)
    trace(request.verbose, f"port forward: NAT-PMP to {gateway}, internal port "
          f"{forward.internal_port or 'any'}")
    text = portfwd.plan_json(forward, gateway, dict(os.environ))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(profile.portforward_plan_path)
    _write_new(profile.portforward_plan_path, text, 0o600)
    return True


def _reresolution(
    request: Request, cfg: wgconfig.Config, profile: Profile, family: int,
    outer: hop.Outer | None,
) -> socket.socket | None:
    """For peers whose Endpoint is a host name: the plan the sidecar follows to
    re-resolve them (written into the profile directory) and the host socket
    it asks the host's nameservers through (with --via: the outer profile's,
    from its namespace). None when there is nothing to do."""
    if outer is not None:
        nameservers = outer.nameservers()
    else:
        try:
            host_resolv = Path(dns.ETC_RESOLV).read_text()
        except OSError:
            host_resolv = ""
        nameservers = dns.host_nameservers(host_resolv)
    plan = hostnet.reresolve_plan(cfg, request.reresolve_after, nameservers, time.time())
    if plan is None:
        return None
    trace(request.verbose, f"re-resolving {', '.join(h for _, h, _ in plan.peers)} through "
          f"{', '.join(plan.nameservers)} when handshakes are older than {plan.after:g} s")
    _write_new(profile.reresolve_path, plan.to_json(), 0o600)
    return hostnet.open_dns_socket(family) if outer is None else outer.udp_socket(None)


@dataclass(frozen=True)
class Healing:
    """A profile whose sidecar died while programs were still inside: the
    new sidecar starts in their namespaces (they get their network back,
    open connections included), in its runtime directory as it was."""

    state: State  # the dead sidecar's
    entry: launch.Entry  # a program left inside, and the namespaces it must be in
    reach_again: bool = False  # reach is the dead sidecar's: a port taken since is left out


def hidden_dirs(profile: Profile) -> list[str]:
    """What the profile's programs see empty: every runtime directory of
    wg-wrap (this one; the one without XDG_RUNTIME_DIR, made now so that it
    can be hidden) and the configs by name, which hold private keys."""
    dirs = [os.path.dirname(profile.dir)]
    fallback = runtime.fallback_base_dir()
    if fallback not in dirs:
        with contextlib.suppress(WgWrapError):
            dirs.append(runtime.make_private_dir(fallback))
    configs = config_dir()
    if os.path.isdir(configs) and configs not in dirs:
        dirs.append(configs)
    return dirs


def sidecar_options(
    profile: Profile, mtu: int, mode: str, dns: bool, reresolve: bool,
    port_forward: bool = False,
) -> list[str]:
    """The sidecar's command line (wg-wrap-sidecar's own options)."""
    options = ["--profile", profile.name, "--ifname", IFNAME, "--mtu", str(mtu), "--view"]
    if dns:
        options += ["--resolv-conf", runtime.RESOLV_CONF]
    for directory in hidden_dirs(profile):
        options += ["--hide", directory]
    if mode == "ephemeral":
        # It removes the runtime directory itself when it ends: no process of
        # ours stays beside the programs to do it.
        options += ["--hold", runtime.HOLD_FILE, "--remove-state"]
    if reresolve:
        options += ["--reresolve", runtime.RERESOLVE_PLAN,
                    "--reresolve-status", runtime.ENDPOINTS_FILE]
    if port_forward:
        options += ["--port-forward", runtime.PORTFORWARD_PLAN]
    return options


def _same_key_elsewhere(profile: Profile, public_key: str) -> list[str]:
    """The other running profiles with this public key (so this private key)."""
    return [other.name for other, state in live_states(os.path.dirname(profile.dir),
                                                      but=profile.name)
            if state.public_key == public_key]


def _keep_log(profile: Profile, kept: list[str]) -> None:
    """A start that failed removes the profile's directory, and its sidecar's
    log with it: that log is kept beside it, as NAME.failed.log (the error
    names it; the next start of NAME replaces it)."""
    path = profile.dir + ".failed.log"
    try:
        if os.path.getsize(profile.log_path) == 0:
            return
        os.replace(profile.log_path, path)
    except OSError:
        return
    kept.append(path)


def start_profile(
    request: Request, cfg: wgconfig.Config, profile: Profile, mode: str,
    healing: Healing | None = None,
) -> Attached:
    """Bring a profile up; the caller holds the runtime lock."""
    version.check_helpers()  # before the sidecar derives the public key
    via = request.via if request.via is not None else \
        (healing.state.via or None if healing is not None else None)
    if via is not None and request.listen_address:
        raise UsageError("--listen-address binds the host socket on the host: with --via "
                         f"{via} it is in profile {via}'s namespace",
                         hint="leave out one of them")
    if via == profile.name:
        raise UsageError(f"profile {via} cannot ride on itself (--via {via})")
    public_key = keys.encode(keys.public_key(cfg.interface.private_key))
    if healing is None:
        for other in _same_key_elsewhere(profile, public_key):
            warn(f"profile {other} runs with the same private key: a peer answers only the "
                 "profile that spoke to it last, and the other's traffic stalls (as with two "
                 "wg-quick interfaces on one key); give each profile its own key")
    outer = hop.Outer.attach(os.path.dirname(profile.dir), via) if via is not None else None
    kept: list[str] = []
    try:
        return _start_profile(request, cfg, profile, mode, healing, kept, public_key, outer)
    except WgWrapError as e:
        if kept:
            e.hint = (e.hint + "; " if e.hint else "") + \
                f"the sidecar's log of this start is kept in {kept[0]}"
        raise
    finally:
        if outer is not None:
            outer.release()  # the new sidecar holds it now, or nothing does


def _start_profile(
    request: Request, cfg: wgconfig.Config, profile: Profile, mode: str,
    healing: Healing | None, kept: list[str], public_key: str, outer: hop.Outer | None,
) -> Attached:
    verbose = request.verbose
    path = request.path
    table = routing_table(cfg)
    with contextlib.ExitStack() as undo:
        if healing is None:
            trace(verbose, f"mkdir {profile.dir}")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(profile.dir + ".failed.log")  # a new start, a new log
            profile.create_dir()
            undo.callback(profile.remove_dir)
            undo.callback(_keep_log, profile, kept)  # runs first
        else:
            # What only a live sidecar may have; hold and resolv.conf stay:
            # the programs inside use them.
            profile.remove_sidecar_files()
            undo.callback(profile.write_state, healing.state)

        forwarding = _port_forward_plan(request, cfg, profile, healing)
        if outer is None:
            host_socket = hostnet.open_host_socket(cfg.interface.listen_port,
                                                   request.listen_address)
        else:
            host_socket = outer.udp_socket(cfg.interface.listen_port)
        undo.callback(host_socket.close)
        listen_port = int(host_socket.getsockname()[1])
        trace(verbose, f"host UDP socket bound to port {listen_port}" +
              (f", in profile {outer.name}'s network namespace" if outer else ""))
        resolved = hostnet.resolve_endpoints(cfg, path, host_socket.family,
                                             outer.resolve if outer else None,
                                             f"in profile {outer.name}" if outer else "")
        for ep, (ip, port) in resolved.items():
            trace(verbose, f"endpoint {ep} -> {ip}:{port}")
        dns_socket = _reresolution(request, cfg, profile, host_socket.family, outer)
        if dns_socket is not None:
            undo.callback(dns_socket.close)
        again = healing is not None and healing.reach_again
        reach_sockets = publish.open_host_sockets(request.reach, again=again)
        undo.callback(reach_sockets.close)

        dns_servers = request.dns or cfg.interface.dns_servers
        resolv_text = resolv_conf_text(cfg, request)  # warns about the host's, without DNS
        if healing is None:
            if dns_servers:
                _write_new(profile.resolv_path, resolv_text, 0o600)
            _write_new(profile.hold_path, "", 0o600)
        hold_fd = take_hold(profile)
        undo.callback(os.close, hold_fd)
        if outer is None:
            mtu = cfg.interface.mtu or DEFAULT_MTU
        else:
            ipv6 = any(a.version == 6 for a in cfg.interface.addresses)
            mtu = outer.inner_mtu(cfg.interface.mtu, ipv6, None if healing else warn)
        outer_hold = outer.hold_fd() if outer is not None else None
        if outer_hold is not None:
            undo.callback(os.close, outer_hold)
        options = sidecar_options(profile, mtu, mode, bool(dns_servers), dns_socket is not None,
                                  forwarding)

        how = "create" if healing is None else \
            "enter (the namespaces of the programs left inside)"
        trace(verbose, f"wg-wrap-launcher {how} -- wg-wrap-sidecar {' '.join(options)}")
        token = sockets.new_token()
        sidecar = launch.start_sidecar(
            profile, host_socket, options, token=token, verbose=verbose,
            dns_socket=dns_socket, detach=(mode == "ephemeral"),
            enter=healing.entry if healing else None, outer_hold=outer_hold,
        )
        undo.callback(sidecar.close)
        undo.callback(sidecar.stop)

        # Recorded now, so that if this process is killed before the end, the
        # next command finds the sidecar and stops it (ready = false).
        userns, netns, mntns = sidecar.namespaces
        state = State(
            name=profile.name, mode=mode, sidecar_pid=sidecar.pid,
            sidecar_start=sidecar.start_time, config_path=os.path.abspath(path),
            config_digest=wgconfig.config_digest(cfg), ifname=IFNAME,
            created_at=time.time(), addresses=[str(a) for a in cfg.interface.addresses],
            dns=[str(s) for s in dns_servers], mtu=mtu,
            endpoints=hostnet.endpoint_strings(resolved),
            public_key=public_key, listen_port=listen_port, ready=False,
            netns=netns, userns=userns, mntns=mntns, sockets=token,
            via=outer.name if outer else "", via_netns=outer.state.netns if outer else "",
        )
        profile.write_state(state)

        plan = netns_mod.NetworkPlan(
            ifname=IFNAME, mtu=mtu, addresses=cfg.interface.addresses,
            routes=netns_mod.plan_routes([n for p in cfg.peers for n in p.allowed_ips]),
            table=table,
        )
        netns_mod.configure(sidecar.pidfd, plan, verbose)
        trace(verbose, "wg set (UAPI): private key, peers, endpoints, allowed ips")
        uapi.UAPIClient(state.uapi_address).set(uapi.encode_set(cfg, resolved))
        if request.reach:
            publish.hand_over(profile, reach_sockets, request.reach, state, verbose)
            for line in publish.announce(state):
                print(f"wg-wrap: {line}", file=sys.stderr, flush=True)

        state.ready = True
        profile.write_state(state)
        launch.start_aftercare(profile, sidecar, state.config_path)
        sidecar.done()  # killed before this, the sidecar would have ended by itself
        undo.pop_all()
    return Attached(profile, sidecar, hold_fd, mode, started=True)


def _reach_again(state: State) -> ReachRequest | None:
    """What the dead sidecar had published, to publish again on the same host
    ports (their sockets died with it). A proxy that needed a password is not
    started again: the password was never written down."""
    from wg_wrap import reach

    ports = tuple(reach.parse_port_spec(p) for p in state.published)
    socks = http_proxy = None
    if state.proxy_auth:
        warn(f"profile {state.name}'s proxies needed a password and are not started again: "
             f"`wg-wrap down {state.name}`, then `up` it with them")
    else:
        socks = reach.parse_proxy_address(state.socks) if state.socks else None
        http_proxy = reach.parse_proxy_address(state.http_proxy) if state.http_proxy else None
    if not ports and socks is None and http_proxy is None:
        return None
    return reach.ReachRequest(publish=ports, socks=socks, http_proxy=http_proxy)


def _is_child_userns(pid: int) -> bool:
    """Whether pid's user namespace is a child of ours (not one nested
    deeper: a program may make its own, and hold every capability there)."""
    import fcntl

    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        parent = fcntl.ioctl(fd, NS_GET_PARENT)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        return os.fstat(parent).st_ino == os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(parent)


def heal(request: Request, cfg: wgconfig.Config, profile: Profile, state: State,
         members: list[int]) -> Attached | None:
    """Start a new sidecar in the namespaces of a dead one, entered through one
    of the programs left inside (None: all of them are gone by now).

    Only through a program in exactly the namespaces recorded at the start,
    whose user namespace is a child of ours: a program may have made
    namespaces of its own (it holds every capability in them), and a sidecar
    started there, with the host's sockets, would be its to take. The
    launcher checks again once it is in."""
    recorded = (state.userns, state.netns, state.mntns)
    if not all(recorded):
        warn(f"profile {profile.name}: its state does not record its namespaces "
             "(started by an older wg-wrap): it cannot be brought back in place")
        return None
    ways_in = []
    for pid in members:
        links = launch.namespace_links(pid)
        if links is None:
            continue  # gone since the scan
        if links != recorded or not _is_child_userns(pid):
            warn(f"profile {profile.name}: not entering through process {pid}: it is in "
                 "namespaces of its own, not the profile's")
            continue
        ways_in.append(pid)
    for pid in ways_in:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone since
        try:
            # The launcher checks again, through this pidfd, once it is in.
            print(f"wg-wrap: profile {profile.name}: its sidecar died with {len(ways_in)} "
                  f"program{'s' if len(ways_in) != 1 else ''} inside; starting a new one in "
                  "their namespaces", file=sys.stderr, flush=True)
            again = not request.reach
            if again:  # nothing new asked: what the dead sidecar had
                request = replace(request, reach=_reach_again(state))
            return start_profile(request, cfg, profile, state.mode,
                                 Healing(state, launch.Entry(pidfd, recorded), again))
        finally:
            os.close(pidfd)
    return None


def acquire(request: Request, cfg: wgconfig.Config, mode: str) -> Attached:
    """Join the named profile if it is up with this config, else start it.
    A profile whose ephemeral sidecar is ending is waited for without the
    runtime lock (bounded), then started afresh."""
    try:
        return _acquire(request, cfg, mode)
    except Ending as ending:
        wait_until_ended(ending)
    return _acquire(request, cfg, mode)


def _acquire(request: Request, cfg: wgconfig.Config, mode: str) -> Attached:
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
                if request.via is not None and request.via != state.via:
                    attached.release()
                    attached.sidecar.close()
                    now = f"via {state.via}" if state.via else "directly, not via a profile"
                    raise ProfileError(
                        f"profile {profile.name!r} is running {now}",
                        hint="pick another name with -n NAME, or stop it first",
                    )
                if request.reach or (request.port_forward is not None and
                                     not os.path.exists(profile.portforward_plan_path)):
                    attached.release()
                    attached.sidecar.close()
                    raise publish.already_running(profile.name)
                trace(request.verbose, f"joining running profile {profile.name}")
                return attached
        members = left_inside(state) if state is not None and state.ready else []
        if members and state is not None:
            if state.config_digest != digest:
                raise ProfileError(
                    f"profile {profile.name!r} died with programs inside, under a different "
                    f"config ({state.config_path})",
                    hint=f"bring it back with its own config (`wg-wrap up -n {profile.name} "
                    f"-c {state.config_path}`), or pick another name",
                )
            healed = heal(request, cfg, profile, state, members)
            if healed is not None:
                return healed
        reap_stale(profile, state, request.verbose)
        return start_profile(request, cfg, profile, mode)


def wait_for_handshake(
    profile: Profile, cfg: wgconfig.Config, timeout: float, verbose: bool,
    progress: Callable[[str], object] | None = None,
) -> None:
    """Block until some peer with an endpoint has completed a handshake.

    wireguard-go only initiates one when there is something to send: turning
    persistent keepalive on sends a keepalive at once, so it is switched on
    for a moment on peers that have it off.
    """
    peers = [p for p in cfg.peers if p.endpoint is not None]
    if not peers:
        return  # a server waits for its clients, not the other way round
    state = profile.read_state()
    if state is None:
        raise SetupError(f"profile {profile.name} has no state")
    client = uapi.UAPIClient(state.uapi_address)
    quiet = [p for p in peers if not p.persistent_keepalive]
    if quiet:
        trace(verbose, "nudging a handshake: keepalive on and off")
        client.nudge([p.public_key for p in quiet])
    targets = ", ".join(str(p.endpoint) for p in peers)
    mine = state.public_key if state and state.public_key else "see `wg-wrap status`"
    print(f"wg-wrap: waiting for the handshake with {targets} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    deadline, reported = start + timeout, start - PROGRESS_INTERVAL
    while time.monotonic() < deadline:
        if any(p.last_handshake for p in client.get().peers):
            return
        now = time.monotonic()
        if progress is not None and now - reported >= PROGRESS_INTERVAL:
            progress(f"waiting for the first handshake with {targets} "
                     f"({now - start:.0f} s of {timeout:g} s)")
            reported = now
        time.sleep(0.1)
    raise SetupError(
        f"no handshake with {targets} within {timeout:g} s",
        hint="check the Endpoint, the keys, and that the peer knows this client's public key "
        f"({mine}); "
        "--no-wait skips this check",
    )


def join_by_name(request: Request) -> Attached | None:
    """Without -c, a running profile of that name is joined whatever its
    config (None: not running, the config is then looked up by name)."""
    if request.config_path is not None or not request.name:
        return None
    base = runtime.base_dir(create=False)
    if not os.path.isdir(base):
        return None
    profile = Profile.at(base, request.name)
    attached = join_running(base, profile)  # an ending one is then gone: started afresh
    if attached is not None:
        trace(request.verbose, f"joining running profile {profile.name}")
    return attached


def up(request: Request, wait: bool = True, timeout: float = 15.0) -> str:
    """``wg-wrap up``: start a persistent profile (or find it already up)."""
    for _ in range(2):
        attached = join_by_name(request)
        if attached is None:
            request, cfg = load(request)
            attached = acquire(request, cfg, "persistent")
            if attached.started and wait:
                try:
                    wait_for_handshake(attached.profile, cfg, timeout, request.verbose)
                except BaseException:
                    stop_started(attached)
                    raise
        attached.release()
        if attached.mode == "persistent" or attached.started:  # started: maybe healed
            attached.sidecar.close()
            return attached.profile.name
        # An ephemeral profile (`run`) of that name: with nothing left in it, it
        # is ending (its sidecar checks every 200 ms), and a new one can start.
        ending = not namespace_members(attached.sidecar.pid) and \
            attached.sidecar.exited(EPHEMERAL_END_WAIT)
        attached.sidecar.close()
        if not ending:
            break
    raise ProfileError(
        f"profile {request.profile_name!r} is already running, started by `run`: "
        "it ends with its last program",
        hint="use another name (-n NAME) for a persistent profile",
    )


class StopRequested(BaseException):
    """SIGTERM, SIGINT or SIGHUP reached ``up --foreground``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signum)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    previous = {s: signal.signal(s, _raise_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _take_down(attached: Attached, verbose: bool) -> None:
    """Stop a profile this process started, whatever is attached to it."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    notify.send(STOPPING="1", STATUS=f"taking profile {attached.profile.name} down")
    members = namespace_members(attached.sidecar.pid)
    if members:
        warn(f"{len(members)} process{'es' if len(members) != 1 else ''} still attached to "
             f"profile {attached.profile.name} keep running, without any network")
    trace(verbose, f"stopping sidecar {attached.sidecar.pid}")
    stop_started(attached)


def up_foreground(request: Request, wait: bool = True, timeout: float = 15.0) -> int:
    """``wg-wrap up --foreground``: a persistent profile supervised by this
    process (systemd's ``Type=notify`` unit): READY=1 once the tunnel is
    configured and the first handshake is done, then wait.  SIGTERM, SIGINT or
    SIGHUP take the profile down (exit 0).  A sidecar that dies with programs
    inside is replaced at once, in their namespaces; one that dies with none
    is an error (exit 1), so that ``Restart=on-failure`` starts it again."""
    with _stop_on_signals():
        try:
            notify.status("starting")
            request, cfg = load(request)
            attached = acquire(request, cfg, "persistent")
        except StopRequested as stop:
            return 128 + stop.signum
        name = attached.profile.name
        if not attached.started:
            attached.release()
            attached.sidecar.close()
            raise ProfileError(
                f"profile {name!r} is already running, started elsewhere: "
                "--foreground supervises only a tunnel it starts",
                hint=f"stop it first with `wg-wrap down {name}`",
            )
        try:
            if wait:
                wait_for_handshake(attached.profile, cfg, timeout, request.verbose,
                                   progress=notify.status)
            notify.send(READY="1", STATUS=f"profile {name} is up")
            print(f"wg-wrap: profile {name} is up; SIGTERM or Ctrl-C takes it down",
                  file=sys.stderr, flush=True)
            while True:
                attached.sidecar.exited(None)  # blocks until the sidecar ends, or a signal
                healed = _heal_supervised(request, cfg, attached)
                if healed is None:
                    break
                attached = healed
                notify.status(f"profile {name} is up (its sidecar died and was replaced)")
        except StopRequested:
            _take_down(attached, request.verbose)
            return 0
        except HealFailed:
            raise
        except BaseException:
            _take_down(attached, request.verbose)
            raise
    raise _sidecar_died(attached)


def _heal_supervised(
    request: Request, cfg: wgconfig.Config, dead: Attached
) -> Attached | None:
    """The supervised sidecar died: a new one in the same namespaces if
    programs are left in them (None: nobody is, the profile is over)."""
    with runtime.locked(os.path.dirname(dead.profile.dir)):
        state = dead.profile.read_state()
        members = left_inside(state) if state is not None else []
        if state is None or not members:
            return None
        try:
            # What the dead sidecar had, on the same host ports (not the
            # request's again: `-p 0:80` would come back on another port).
            healed = heal(replace(request, reach=None), cfg, dead.profile, state, members)
        except WgWrapError as e:
            # Its directory stays, with the programs inside (`ls` shows the
            # profile dead): a later `up` may bring it back.
            dead.release()
            dead.sidecar.close()
            raise HealFailed(
                f"profile {dead.profile.name}: its sidecar died and a new one did not start: "
                f"{e.message}",
                hint=f"the programs inside have no network; `wg-wrap up -n {dead.profile.name}` "
                     "tries again, `wg-wrap down` ends them",
            ) from e
    if healed is not None:
        dead.release()
        dead.sidecar.close()
    return healed


class HealFailed(SetupError):
    """A supervised profile's sidecar could not be replaced: its directory,
    with programs inside, is left for a later heal."""


def _sidecar_died(attached: Attached) -> SetupError:
    """The supervised sidecar ended by itself: say why and clean up."""
    process = attached.sidecar.process
    status = process.returncode if process is not None else None
    how = (f"was killed by signal {-status}" if status is not None and status < 0
           else f"exited with status {status}")
    log = launch.last_log_lines(attached.profile.log_path, 5)
    with runtime.locked(os.path.dirname(attached.profile.dir)):
        attached.profile.remove_dir()
    attached.release()
    attached.sidecar.close()
    notify.status(f"the sidecar {how}")
    for line in log:
        print(f"wg-wrap: [sidecar.log] {line}", file=sys.stderr)
    return SetupError(
        f"the sidecar of profile {attached.profile.name} {how}: the tunnel is down",
        hint="programs still attached have no network; start the profile again",
    )


def _process_name(pid: int) -> str:
    import psutil

    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return "?"


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
            riding = hop.riders(base, state) if state is not None else []
            if riding and not force:
                raise ProfileError(
                    f"profile {name} carries profile{'s' if len(riding) != 1 else ''} "
                    f"{', '.join(riding)} (started --via {name})",
                    hint=f"take {'them' if len(riding) != 1 else 'it'} down first, or "
                    f"`wg-wrap down --force {name}`: their tunnels then carry nothing",
                )
            members = namespace_members(sidecar.pid)
            if members and not force:
                shown = ", ".join(f"{pid} ({_process_name(pid)})" for pid in members[:8])
                more = f" and {len(members) - 8} more" if len(members) > 8 else ""
                raise ProfileError(
                    f"profile {name} has {len(members)} attached process"
                    f"{'es' if len(members) != 1 else ''}: {shown}{more}",
                    hint=f"stop them first, or `wg-wrap down --force {name}`: "
                    "they keep running without any network",
                )
            trace(verbose, f"stopping sidecar {sidecar.pid}")
            profile.mark_stopping()
            sidecar.stop()
            profile.remove_dir()
        finally:
            sidecar.close()
    return f"profile {name} stopped"


def run(request: Request, command: Sequence[str]) -> NoReturn:
    """``wg-wrap run``: become the command in the profile, started if need be."""
    attached = join_by_name(request)
    if attached is None:
        request, cfg = load(request)
        attached = acquire(request, cfg, "ephemeral")
    if request.port_forward is not None and attached.started:
        _wait_for_forwarded_port(attached.profile)
    trace(request.verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
    launch.exec_joined(attached.sidecar, command, attached.hold_fd, attached.profile.dir)


def _wait_for_forwarded_port(profile: Profile) -> None:
    """`run --port-forward` starts its program with the port, if one comes
    in time; else it says why and starts it anyway."""
    port = portfwd.wait_for_port(profile)
    if port is not None:
        print(f"wg-wrap: forwarded port {port}", file=sys.stderr, flush=True)
        return
    status = portfwd.read_status(profile) or {}
    reason = status.get("last_error") or "no answer yet"
    hint = f" ({status['hint']})" if status.get("hint") else ""
    warn(f"no forwarded port from the gateway within {portfwd.FIRST_MAPPING_WAIT:g} s: "
         f"{reason}{hint}; starting the program without one (the sidecar keeps asking: "
         "`wg-wrap status` shows when it comes)")


