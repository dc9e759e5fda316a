"""``wg-wrap check [NAME]``: a leak self-test, one pass/fail line per check.

A probe (``wg_wrap.probe``) runs inside the profile exactly as a wrapped
program does and reports what it sees; ``evaluate`` (pure) holds that report
against what the profile must look like.  Exit status 0 only when every
line passes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from wg_wrap import launch, runtime, uapi
from wg_wrap.errors import ProfileError, SetupError
from wg_wrap.join import not_running
from wg_wrap.lifetime import Attached, join_running, leave, trace
from wg_wrap.runtime import Profile, State

# WireGuard's REJECT_AFTER_TIME: older session keys are not used any more,
# so a handshake older than this means the peer stopped answering.
HANDSHAKE_MAX_AGE = 180.0
# How long to wait for a handshake asked for.
HANDSHAKE_WAIT = 5.0
PROBE_TIMEOUT = 30.0
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Line:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Expected:
    """What the profile must look like."""

    ifname: str
    uid: int
    gid: int
    handshake: float | None  # the latest handshake (UNIX time), None: never
    now: float
    # wg-wrap's directories as the host has them: (path, device, inode).
    hidden: tuple[tuple[str, int, int], ...] = ()


def _loopback(dst: str) -> bool:
    net = ipaddress.ip_network(dst, strict=False)
    return any(net.version == lo.version and net.subnet_of(lo) for lo in LOOPBACK)  # type: ignore[arg-type]


def check_interfaces(report: dict[str, Any], exp: Expected) -> Line:
    names = report["interfaces"]
    extra = [n for n in names if n not in ("lo", exp.ifname)]
    if extra or exp.ifname not in names:
        missing = "" if exp.ifname in names else f"; {exp.ifname} is missing"
        return Line("interfaces", False,
                    f"{', '.join(names)}: {', '.join(extra) or 'none'} besides lo and "
                    f"{exp.ifname}{missing}")
    return Line("interfaces", True, ", ".join(names))


def check_routes(report: dict[str, Any], exp: Expected, version: int) -> Line:
    """Every route with a device goes into the tunnel, or is loopback's own.
    Routes without one (unreachable, blackhole, prohibit) fail closed."""
    name = f"routes (IPv{version})"
    into, wrong = [], []
    for r in report["routes"]:
        if r["version"] != version or r["dev"] is None:
            continue
        if r["dev"] == exp.ifname:
            if r["type"] == "unicast":
                into.append(r["dst"])
        elif not (r["dev"] == "lo" and _loopback(r["dst"])):
            wrong.append(f"{r['dst']} dev {r['dev']} ({r['type']}, table {r['table']})")
    if wrong:
        return Line(name, False, f"outside the tunnel: {'; '.join(wrong)}")
    if not into:
        return Line(name, True, f"none into {exp.ifname}: IPv{version} fails closed")
    shown = ", ".join(into[:4]) + (f" and {len(into) - 4} more" if len(into) > 4 else "")
    return Line(name, True, f"only into {exp.ifname}: {shown}")


def check_resolv_conf(report: dict[str, Any], exp: Expected) -> Line:
    name = "resolv.conf"
    if report.get("resolv_error"):
        return Line(name, False, report["resolv_error"])
    servers = report["nameservers"]
    if not servers:
        return Line(name, False, "no nameserver: glibc would ask 127.0.0.1, which is not the "
                    "tunnel")
    lookups = report["lookups"]
    wrong = [f"{s} -> {lookups.get(s.split('%')[0]) or 'no route'}" for s in servers
             if lookups.get(s.split("%")[0]) != exp.ifname]
    if wrong:
        return Line(name, False, f"nameserver not routed into {exp.ifname}: {', '.join(wrong)}")
    return Line(name, True, f"nameserver {', '.join(servers)} via {exp.ifname}")


def check_resolver_sockets(report: dict[str, Any], exp: Expected) -> Line:
    name = "resolver sockets"
    visible = report["resolver_sockets"]
    if visible:
        return Line(name, False, f"visible (they resolve on the host's network): "
                    f"{', '.join(visible)}")
    return Line(name, True, "systemd-resolved, nscd and avahi sockets hidden")


def check_dns(report: dict[str, Any], exp: Expected) -> Line:
    name = "DNS lookup"
    answers = report["dns"]
    if not answers:
        return Line(name, False, "no nameserver to ask")
    answered = [a for a in answers if a["answered"]]
    silent = [f"{a['server']} ({a.get('error') or 'no answer'})" for a in answers
              if not a["answered"]]
    if not answered:
        return Line(name, False, f"no answer from {', '.join(silent)}")
    a = answered[0]
    more = f"; not from {', '.join(silent)}" if silent else ""
    return Line(name, True, f"{a['server']} answered in {a['ms']:g} ms ({a['rcode']}){more}")


def check_ipv6(report: dict[str, Any], exp: Expected) -> Line:
    name = "IPv6"
    probe = report["ipv6_probe"]
    dev = report["lookups"].get(probe)
    mine = [a for a in report["addresses"].get(exp.ifname, []) if ":" in a
            and not a.startswith("fe80:")]
    if dev is None:
        return Line(name, True, "no route to the IPv6 internet: IPv6 fails closed")
    if dev != exp.ifname:
        return Line(name, False, f"IPv6 to {probe} would leave through {dev}, not {exp.ifname}")
    if not mine:
        return Line(name, True, f"routed into {exp.ifname}, which has no IPv6 address: "
                    "IPv6 fails closed")
    return Line(name, True, f"through the tunnel, as {', '.join(mine)}")


def check_identity(report: dict[str, Any], exp: Expected) -> Line:
    name = "identity"
    ident = report["identity"]
    problems = []
    if (ident["uid"], ident["euid"]) != (exp.uid, exp.uid):
        problems.append(f"uid {ident['uid']} (euid {ident['euid']}), not {exp.uid}")
    if (ident["gid"], ident["egid"]) != (exp.gid, exp.gid):
        problems.append(f"gid {ident['gid']} (egid {ident['egid']}), not {exp.gid}")
    held = [f"{s}={ident[s]:x}" for s in ("CapInh", "CapPrm", "CapEff", "CapAmb")
            if ident.get(s)]
    if held:
        problems.append(f"capabilities {' '.join(held)}")
    if not ident.get("no_new_privs"):
        # Without it, the bounding set (left whole, so that programs with
        # file capabilities start) would let such a program gain them.
        problems.append("no_new_privs is not set")
    if problems:
        return Line(name, False, "; ".join(problems))
    return Line(name, True, f"uid {exp.uid}, gid {exp.gid}, no capabilities (no_new_privs)")


def check_runtime_state(report: dict[str, Any], exp: Expected) -> Line:
    """wg-wrap's directories (runtime state, configs) are another, empty
    directory inside: not the host's."""
    name = "runtime state"
    host = {path: (dev, ino) for path, dev, ino in exp.hidden}
    shown = []
    for seen in report.get("hidden", []):
        path = seen["path"]
        if "error" in seen:
            continue  # not there at all
        if (seen["dev"], seen["ino"]) == host.get(path):
            entries = ", ".join(seen["entries"][:4]) or "empty"
            shown.append(f"{path} ({entries})")
    if shown:
        return Line(name, False, f"wg-wrap's own directories are seen inside: {'; '.join(shown)}")
    return Line(name, True, f"hidden: {', '.join(host) or 'none'}")


def check_sockets(report: dict[str, Any], exp: Expected) -> Line:
    name = "sidecar sockets"
    tried = report.get("sockets", [])
    reached = [s["address"] for s in tried if s["connected"]]
    if reached:
        return Line(name, False, f"reachable from inside: {', '.join(reached)}")
    if not tried:
        return Line(name, False, "not tried")
    return Line(name, True, "UAPI and control unreachable (they live in the host's network "
                "namespace)")


def check_reach(report: dict[str, Any], exp: Expected) -> Line:
    """Nothing that holds capabilities is within reach: the sidecar's
    descriptors, root and environment are refused (the kernel's ptrace
    check across user namespaces and capability sets)."""
    name = "capabilities in reach"
    sidecar = report.get("sidecar")
    if not sidecar:
        return Line(name, False, "not tried")
    if sidecar["reached"]:
        return Line(name, False, f"the sidecar (pid {sidecar['pid']}) is within reach: "
                    f"{', '.join(sidecar['reached'])}")
    return Line(name, True, f"the sidecar's descriptors, root and environment refused "
                f"({len(sidecar['refused'])} tried)")


def check_handshake(exp: Expected) -> Line:
    name = "handshake"
    if not exp.handshake:
        return Line(name, False, "never: the peer has not answered")
    age = exp.now - exp.handshake
    if age > HANDSHAKE_MAX_AGE:
        return Line(name, False, f"{age:.0f} s ago: the peer stopped answering "
                    f"(keys expire after {HANDSHAKE_MAX_AGE:.0f} s)")
    return Line(name, True, f"{max(age, 0):.0f} s ago")


def evaluate(report: dict[str, Any], exp: Expected) -> list[Line]:
    return [
        check_interfaces(report, exp),
        check_routes(report, exp, 4),
        check_routes(report, exp, 6),
        check_resolv_conf(report, exp),
        check_resolver_sockets(report, exp),
        check_dns(report, exp),
        check_ipv6(report, exp),
        check_identity(report, exp),
        check_runtime_state(report, exp),
        check_sockets(report, exp),
        check_reach(report, exp),
        check_handshake(exp),
    ]


def run_probe(attached: Attached, state: State, hidden: list[str],
              verbose: bool) -> dict[str, Any]:
    """Run wg_wrap.probe inside, joined as a wrapped program is."""
    from wg_wrap import sockets

    sidecar = attached.sidecar
    probe = [sys.executable, "-m", "wg_wrap.probe", "--sidecar", str(sidecar.pid)]
    for path in hidden:
        probe += ["--hidden", path]
    for address in (state.uapi_address, state.control_address):
        probe += ["--socket", sockets.shown(address)]
    argv = launch.join_argv(sidecar, probe)
    env = dict(os.environ)
    env.pop(launch.PROXY_AUTH_VARIABLE, None)
    # The probe imports this very wg_wrap, wherever it comes from.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    trace(verbose, "wg-wrap-launcher join -- python -m wg_wrap.probe")
    try:
        done = subprocess.run(
            argv, pass_fds=(sidecar.pidfd,), env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise SetupError(f"the probe inside did not finish within {PROBE_TIMEOUT:.0f} s") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"the probe inside failed: {last}")
    try:
        report = json.loads(done.stdout)
    except ValueError as e:
        raise SetupError("the probe inside printed no report") from e
    if not isinstance(report, dict):
        raise SetupError("the probe inside printed no report")
    return report


def latest_handshake(profile: Profile, wait: float) -> float | None:
    """The most recent handshake of any peer.  When there is none recent
    enough, one is asked for, as `up` does (persistent keepalive switched on
    sends a keepalive at once), and awaited up to ``wait`` seconds."""
    state = profile.read_state()
    if state is None:
        raise SetupError(f"profile {profile.name} has no state")
    client = uapi.UAPIClient(state.uapi_address)
    deadline = time.monotonic() + wait
    nudged = False
    while True:
        peers = client.get().peers
        latest = max((p.last_handshake or 0 for p in peers), default=0)
        if time.time() - latest <= HANDSHAKE_MAX_AGE or time.monotonic() >= deadline:
            return float(latest) or None
        if not nudged:
            client.nudge([p.public_key for p in peers
                          if p.endpoint and not p.persistent_keepalive])
            nudged = True
        time.sleep(0.1)


def attach(args: argparse.Namespace) -> Attached:
    """The profile to check: a running one, or a fresh one from -c."""
    if args.config:
        from wg_wrap import session

        request = session.Request(
            config_path=args.config, name=args.name, dns=tuple(args.dns),
            listen_address=args.listen_address, verbose=args.verbose, via=args.via,
        )
        request, cfg = session.load(request)
        return session.acquire(request, cfg, "ephemeral")
    base = runtime.base_dir(create=False)
    name = args.name
    if name is None:
        running = [p.name for p in runtime.list_profiles(base)]
        if len(running) != 1:
            raise ProfileError(
                "name the profile to check" if running else "no profile is running",
                hint="`wg-wrap check NAME`, or `wg-wrap check -c FILE` for a fresh one",
            )
        name = running[0]
    profile = Profile.at(base, name)
    if not os.path.isdir(profile.dir):
        raise not_running(name)
    attached = join_running(base, profile)
    if attached is None:
        raise not_running(name)
    try:
        launch.refuse_stopped(name, attached.sidecar.pid)
    except ProfileError:
        attached.release()
        attached.sidecar.close()
        raise
    return attached


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def main(args: argparse.Namespace) -> int:
    from wg_wrap import session

    attached = attach(args)
    try:
        state = attached.profile.read_state()
        if state is None:
            raise not_running(attached.profile.name)
        hidden = [(p, *_identity(p)) for p in session.hidden_dirs(attached.profile)]
        report = run_probe(attached, state, [p for p, _, _ in hidden], args.verbose)
        expected = Expected(
            ifname=state.ifname, uid=os.getuid(), gid=os.getgid(),
            handshake=latest_handshake(attached.profile, HANDSHAKE_WAIT), now=time.time(),
            hidden=tuple(hidden),
        )
    finally:
        leave(attached)
    lines = evaluate(report, expected)
    failed = [line for line in lines if not line.ok]
    if args.json:
        print(json.dumps({"profile": attached.profile.name, "ok": not failed,
                          "checks": [asdict(line) for line in lines]}, indent=2))
    else:
        print(format_table(attached.profile.name, lines))
    return 1 if failed else 0


def format_table(name: str, lines: list[Line]) -> str:
    width = max(len(line.name) for line in lines)
    out = [f"profile {name}:"]
    out += [f"  {'PASS' if line.ok else 'FAIL'}  {line.name.ljust(width)}  {line.detail}"
            for line in lines]
    failed = sum(not line.ok for line in lines)
    out.append(f"{len(lines) - failed} of {len(lines)} checks passed" +
               ("" if not failed else f"; {failed} FAILED"))
    return "\n".join(out)
