"""``wg-wrap ls`` and ``wg-wrap status``: what is running, like ``wg show``."""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any

from wg_wrap import keys, launch, lifetime, portfwd, runtime, sockets, uapi
from wg_wrap.errors import UAPIError
from wg_wrap.runtime import Profile, State

# How long `ls` and `status` wait for a sidecar's answer: a stopped or hung
# one is shown as such instead of holding everything up.
UAPI_TIMEOUT = 0.5


@dataclass
class ProfileStatus:
    profile: Profile
    state: State | None
    alive: bool
    device: uapi.DeviceStatus | None = None  # when the sidecar answered
    members: tuple[int, ...] = ()
    names: dict[str, dict[str, Any]] | None = None  # endpoint names, by hex public key
    view: dict[str, Any] | None = None  # the sidecar's view.json: the namespace's view of the host
    port_forward: dict[str, Any] | None = None  # the sidecar's NAT-PMP status


def _endpoint_names(profile: Profile) -> dict[str, dict[str, Any]]:
    """What the sidecar's re-resolution last found (endpoints.json), if any."""
    try:
        with open(profile.endpoints_path) as f:
            entries = json.load(f)
        return {e["public_key"]: e for e in entries if isinstance(e, dict) and "public_key" in e}
    except (OSError, ValueError, TypeError):
        return {}


def _view(profile: Profile) -> dict[str, Any] | None:
    """What the sidecar says of the namespace's view of the host (view.json)."""
    try:
        with open(profile.view_path) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def collect(profile: Profile, by_netns: dict[str, list[int]] | None = None) -> ProfileStatus:
    """One profile's status; ``by_netns`` (lifetime.processes_by_netns) saves
    a /proc scan per profile when there are several."""
    state = profile.read_state()
    if state is None:
        return ProfileStatus(profile, None, False)
    sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
    if sidecar is None:  # dead: programs may be left in its namespaces
        left = lifetime.stranded(state)
        return ProfileStatus(profile, state, False, members=tuple(left))
    try:
        try:
            # A stopped sidecar would answer only once continued: not asked.
            device = None if runtime.process_stopped(sidecar.pid) else \
                uapi.UAPIClient(state.uapi_address, timeout=UAPI_TIMEOUT).get()
        except UAPIError:
            device = None  # shown as not responding
        members = lifetime.namespace_members(sidecar.pid, scan=by_netns)
        return ProfileStatus(
            profile, state, True, device, tuple(members), _endpoint_names(profile),
            _view(profile), portfwd.read_status(profile),
        )
    finally:
        sidecar.close()


def all_profiles() -> list[ProfileStatus]:
    base = runtime.base_dir(create=False)
    profiles = runtime.list_profiles(base)
    by_netns = lifetime.processes_by_netns() if len(profiles) > 1 else None
    return [collect(p, by_netns) for p in profiles]


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def age(since: float | None, now: float) -> str:
    return f"{duration(now - since)} ago" if since else "never"


def _summary(st: ProfileStatus, now: float) -> list[str]:
    state = st.state
    if state is None:
        return [st.profile.name, "?", "-", "-", "-", "dead", "-", "-", "-", "-", "-"]
    endpoint = ", ".join(state.endpoints) or "-"
    if state.via:
        endpoint += f" via {state.via}"
    if not st.alive:
        return [st.profile.name, state.mode, "-", str(len(st.members)), endpoint, "dead",
                "-", "-", "-", "-", "-"]
    mode = state.mode if state.ready else "starting"
    row = [st.profile.name, mode, str(state.sidecar_pid), str(len(st.members)), endpoint]
    tail = [reach_summary(state), view_summary(st), portfwd.summary(st.port_forward)]
    if st.device is None:
        return [*row, not_responding(state.sidecar_pid), "-", "-", *tail]
    peers = st.device.peers
    last = max((p.last_handshake or 0 for p in peers), default=0)
    rx = sum(p.rx_bytes for p in peers)
    tx = sum(p.tx_bytes for p in peers)
    return [*row, age(last, now), human_bytes(rx), human_bytes(tx), *tail]


def view_summary(st: ProfileStatus) -> str:
    """The VIEW column of ls: whether the namespace's view of the host holds."""
    if st.view is None:
        return "-"
    return "ok" if st.view.get("intact") else "BROKEN"


def not_responding(pid: int) -> str:
    """What a live sidecar that did not answer is shown as."""
    return "not responding (stopped)" if runtime.process_stopped(pid) else "not responding"


def _published(state: State) -> list[dict[str, Any]]:
    """``127.0.0.1:8080:80/tcp`` -> host address, port inside, protocol."""
    found = []
    for entry in state.published:
        body, _, proto = entry.partition("/")
        host, _, port = body.rpartition(":")
        found.append({"host": host, "port": int(port), "proto": proto})
    return found


def reach_summary(state: State) -> str:
    """The REACH column of ls: published ports and proxies, briefly."""
    parts = [f"{p['host']}->{p['port']}/{p['proto']}" for p in _published(state)]
    if state.socks:
        parts.append(f"socks5:{state.socks}")
    if state.http_proxy:
        parts.append(f"http:{state.http_proxy}")
    return ",".join(parts) or "-"


def format_ls(statuses: list[ProfileStatus]) -> str:
    now = time.time()
    rows = [["NAME", "MODE", "PID", "ATTACHED", "ENDPOINT", "HANDSHAKE", "RX", "TX", "REACH",
             "VIEW", "FWD"]]
    rows += [_summary(st, now) for st in statuses]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _processes(members: tuple[int, ...]) -> list[dict[str, Any]]:
    import psutil

    found = []
    for pid in members:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                found.append({
                    "pid": pid, "name": proc.name(), "cmdline": proc.cmdline(),
                    "started": proc.create_time(),
                })
        except psutil.Error:
            continue
    return found


def as_dict(st: ProfileStatus) -> dict[str, Any]:
    state = st.state
    out: dict[str, Any] = {"name": st.profile.name, "running": st.alive}
    if state is None:
        return out
    if st.alive:
        out["responding"] = st.device is not None
    out.update({
        "mode": state.mode, "config": state.config_path, "sidecar_pid": state.sidecar_pid,
        "created_at": state.created_at, "interface": state.ifname,
        "public_key": state.public_key, "listen_port": state.listen_port,
        "addresses": state.addresses, "dns": state.dns, "mtu": state.mtu,
        "uapi_socket": sockets.shown(state.uapi_address) if state.sockets else None,
        "via": state.via or None,
        "published": _published(state),
        "socks": {"address": state.socks, "udp_relay": state.socks_udp,
                  "auth": state.proxy_auth} if state.socks else None,
        "http_proxy": {"address": state.http_proxy, "auth": state.proxy_auth}
        if state.http_proxy else None,
    })
    if st.view is not None:
        out["view"] = st.view
    if st.port_forward is not None:
        out["port_forward"] = st.port_forward
    if st.device is not None:
        out["peers"] = [_peer_dict(p, (st.names or {}).get(p.public_key.hex()))
                        for p in st.device.peers]
    if st.alive or st.members:
        out["processes"] = _processes(st.members)
    return out


def _peer_dict(peer: uapi.PeerStatus, name: dict[str, Any] | None) -> dict[str, Any]:
    out = {
        "public_key": keys.encode(peer.public_key), "endpoint": peer.endpoint,
        "allowed_ips": [str(n) for n in peer.allowed_ips],
        "latest_handshake": peer.last_handshake, "rx_bytes": peer.rx_bytes,
        "tx_bytes": peer.tx_bytes, "persistent_keepalive": peer.persistent_keepalive,
    }
    if name is not None:  # an Endpoint host name, followed by the sidecar
        out["endpoint_name"] = f"{name.get('host')}:{name.get('port')}"
        out["endpoint_addresses"] = name.get("addresses", [])
        out["resolved_at"] = _timestamp(name.get("resolved_at"))
        out["resolve_error"] = name.get("error")
    return out


def _timestamp(rfc3339: object) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(rfc3339)).timestamp()
    except ValueError:
        return None


def format_status(st: ProfileStatus) -> str:
    d = as_dict(st)
    now = time.time()
    if "mode" not in d:
        return f"profile: {d['name']} (no state: dead)"
    lines = [
        f"profile: {d['name']} ({d['mode']}, {'running' if d['running'] else 'dead'})",
        f"  config: {d['config']}",
    ]
    if d["running"]:
        answer = "" if "peers" in d else f", {not_responding(d['sidecar_pid'])}"
        lines.append(f"  sidecar: pid {d['sidecar_pid']}, up {duration(now - d['created_at'])}"
                     + answer)
    elif st.members:
        lines.append(f"  sidecar: died; {len(st.members)} program"
                     f"{'s' if len(st.members) != 1 else ''} left inside, with no network: "
                     f"`wg-wrap up -n {d['name']} -c {shlex.quote(d['config'])}` brings the "
                     "tunnel back for them")
    lines += [
        f"  interface: {d['interface']}",
        f"  public key: {d['public_key']}",
        f"  listening port: {d['listen_port']}"
        + (f" (in profile {d['via']}'s network namespace)" if d.get("via") else ""),
        f"  addresses: {', '.join(d['addresses']) or '-'}",
        f"  dns: {', '.join(d['dns']) or '(host resolver)'}",
        f"  mtu: {d['mtu']}",
    ]
    if d.get("via"):
        lines.append(f"  via: profile {d['via']} (this tunnel's packets travel inside its "
                     "tunnel)")
    if d["uapi_socket"]:
        lines.append(f"  uapi socket: {d['uapi_socket']} (the host's network namespace only)")
    if "view" in d:
        lines.append(f"  view of the host: {view_line(d['view'], now)}")
    for p in d["published"]:
        lines.append(f"  published: {p['host']} -> {p['port']}/{p['proto']}")
    password = ", password required" if d["socks"] and d["socks"]["auth"] else ""
    if d["socks"]:
        lines.append(f"  socks5 proxy: {d['socks']['address']} "
                     f"(UDP relay {d['socks']['udp_relay']}{password})")
    if d["http_proxy"]:
        auth = " (password required)" if d["http_proxy"]["auth"] else ""
        lines.append(f"  http proxy: {d['http_proxy']['address']}{auth}")
    if "port_forward" in d:
        lines.append(f"  port forward: {port_forward_line(d['port_forward'], now)}")
    for peer in d.get("peers", []):
        lines += [
            "",
            f"peer: {peer['public_key']}",
            f"  endpoint: {peer['endpoint'] or '-'}",
        ]
        if "endpoint_name" in peer:
            resolved = f"resolved {age(peer['resolved_at'], now)}"
            if peer["resolve_error"]:
                resolved += f"; last attempt failed: {peer['resolve_error']}"
            lines.append(f"  endpoint name: {peer['endpoint_name']} ({resolved})")
        lines += [
            f"  allowed ips: {', '.join(peer['allowed_ips']) or '(none)'}",
            f"  latest handshake: {age(peer['latest_handshake'], now)}",
            f"  transfer: {human_bytes(peer['rx_bytes'])} received, "
            f"{human_bytes(peer['tx_bytes'])} sent",
        ]
        if peer["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {peer['persistent_keepalive']} seconds")
    if "processes" in d:
        lines += ["", f"attached processes: {len(d['processes'])}"]
        for proc in d["processes"]:
            lines.append(f"  {proc['pid']:>7}  {proc['name']}  {' '.join(proc['cmdline'])}")
    return "\n".join(lines)


def port_forward_line(pf: dict[str, Any], now: float) -> str:
    """``port 45678 (udp, tcp) from gateway 10.2.0.1, renewed 20s ago, lifetime 60 s``"""
    gateway = pf.get("gateway") or "?"
    if pf.get("state") == "mapped":
        external = pf.get("external_port")
        at = f" at {pf['external_address']}" if pf.get("external_address") else ""
        outside = f", {external}{at} outside" if external and (external != pf.get("port") or at) \
            else ""
        renewed = _timestamp(pf["renewed_at"]) if pf.get("renewed_at") else None
        line = (f"port {pf.get('port')} ({', '.join(pf.get('protocols') or [])}) from gateway "
                f"{gateway}{outside}, lifetime {pf.get('lifetime')} s")
        return line + (f", renewed {age(renewed, now)}" if renewed else "")
    line = "none yet" if pf.get("state") == "requesting" else str(pf.get("state") or "?")
    line += f", asking gateway {gateway}"
    if pf.get("last_error"):
        line += f"; last error: {pf['last_error']}"
    if pf.get("hint"):
        line += f" ({pf['hint']})"
    return line


def view_line(view: dict[str, Any], now: float) -> str:
    """``intact; resolv.conf: the profile's DNS; 3 host changes followed (2m ago)``"""
    state = "intact" if view.get("intact") else f"NOT INTACT: {view.get('problem') or '?'}"
    dns = "the profile's DNS" if view.get("dns") == "profile" else "the host's, followed"
    absorbed = int(view.get("absorbed") or 0)
    line = f"{state}; resolv.conf: {dns}; {absorbed} host change{'s' if absorbed != 1 else ''} "
    line += "followed"
    last = _timestamp(view.get("last_change")) if view.get("last_change") else None
    return line + (f" (last {age(last, now)})" if last else "")


def format_json(statuses: list[ProfileStatus]) -> str:
    return json.dumps([as_dict(st) for st in statuses], indent=2)


def show_list() -> int:
    """``wg-wrap ls``."""
    print(format_ls(all_profiles()))
    return 0


def show(name: str | None, as_json: bool) -> int:
    """``wg-wrap status [NAME] [--json]``."""
    if name:
        profile = Profile.at(runtime.base_dir(create=False), name)
        if not os.path.isdir(profile.dir):
            from wg_wrap.join import not_running

            raise not_running(name)
        found = [collect(profile)]
    else:
        found = all_profiles()
    if as_json:
        print(format_json(found))
    else:
        print("\n\n".join(format_status(st) for st in found) or "no profiles")
    return 0
