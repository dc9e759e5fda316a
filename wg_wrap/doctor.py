"""``wg-wrap doctor``: can this machine run wg-wrap, and if not, what to do.

Each check does the real thing where it can rather than guess from sysctls:
distributions restrict user namespaces in different ways, and on Ubuntu
23.10+ creating one still succeeds while every capability in it is denied.
So the probe starts a real sidecar (``wg-wrap-launcher create``) with no
peer: its view of the host, with a resolv.conf of its own and a hidden
directory, and its TUN device, which gets an address from outside as a
profile's does; then a program joined to it, as a wrapped program is, checks
what it sees.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wg_wrap import __version__, apparmor, dns, hints, paths, runtime, version
from wg_wrap.errors import WgWrapError
from wg_wrap.hints import TUN, TUN_HINT, hint_for

if TYPE_CHECKING:
    from wg_wrap.launch import Sidecar

PROBE_IFNAME = "wgwrapdoctor0"
PROBE_TIMEOUT = 20
# The probe program's own exit status when one of its steps fails (the
# launcher uses 125-127 for its own).
_PROBE_FAILED = 3
_SEE_APPARMOR = "AppArmor blocks it: see the AppArmor fix above"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    note: bool = False  # informational: never a failure
    more: tuple[str, ...] = ()  # further lines of the fix, printed under it


@dataclass(frozen=True)
class Probe:
    """The outcome of running the probe in new namespaces."""

    namespaces: Check  # user+mount+net namespaces, with mounts
    tun: Check  # TUN device, address, link up inside


def _helpers() -> Check:
    try:
        version.check_helpers()
        return Check("helper programs", True, f"{paths.libexec_dir()} (version {__version__})")
    except WgWrapError as e:
        return Check("helper programs", False, e.message, e.hint or "")


def _tun_device() -> Check:
    try:
        st = os.stat(TUN)
    except OSError as e:
        return Check(TUN, False, e.strerror or str(e), TUN_HINT)
    if not stat.S_ISCHR(st.st_mode):
        return Check(TUN, False, "not a character device", TUN_HINT)
    try:
        os.close(os.open(TUN, os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        return Check(TUN, False, f"cannot open it: {e.strerror} "
                     f"(mode {stat.S_IMODE(st.st_mode):04o})", TUN_HINT)
    return Check(TUN, True, f"usable (mode {stat.S_IMODE(st.st_mode):04o})")


# ---- the probe: what wg-wrap does, in new namespaces --------------------

PROBE_ADDRESS = "192.0.2.1"  # a documentation address (RFC 5737), inside only


def inside(argv: Sequence[str]) -> int:
    """The joined program of the probe (see _run_probe): check that the
    namespace shows the probe's resolv.conf and hides its hidden directory,
    and that the TUN device has the address it was given.  Prints what was
    done; on failure one line ``mount: …`` or ``network: …`` on stderr."""
    hidden, expected, ifname = argv
    try:
        with open(dns.ETC_RESOLV) as f:
            seen = f.read()
    except OSError as e:
        return _probe_failed("mount", f"reading {dns.ETC_RESOLV}: {e.strerror}")
    if seen != expected:
        return _probe_failed("mount", f"{dns.ETC_RESOLV} is not the probe's")
    if os.stat(hidden).st_dev == os.stat(os.path.dirname(hidden)).st_dev:
        return _probe_failed("mount", f"{hidden} is not hidden")
    from wg_wrap import netns

    found = netns.inspect([])["addresses"]
    if not isinstance(found, dict) or f"{PROBE_ADDRESS}/24" not in found.get(ifname, []):
        return _probe_failed("network", f"{ifname} does not have the address it was given")
    print(f"created {ifname}, gave it {PROBE_ADDRESS}/24 (RTM_NEWADDR) and set it up")
    return 0


def _probe_failed(step: str, message: str) -> int:
    print(f"{step}: {message}", file=sys.stderr)
    return _PROBE_FAILED


@dataclass(frozen=True)
class ProbeRun:
    """What the probe came to (``status`` None: it could not be run or timed
    out, and ``stderr`` says why; 125: the sidecar did not start)."""

    status: int | None
    stdout: str
    stderr: str


def _run_probe() -> ProbeRun:
    """Start a sidecar as a profile's is started (its namespaces, its view of
    the host, its TUN device, an address given from outside), then run
    ``inside`` joined to it."""
    import ipaddress

    from wg_wrap import launch, netns, sockets
    from wg_wrap.errors import SetupError

    with tempfile.TemporaryDirectory(prefix="wg-wrap-doctor-") as tmp:
        os.chmod(tmp, 0o700)
        content = f"# wg-wrap doctor {os.getpid()}\n"
        with open(os.path.join(tmp, runtime.RESOLV_CONF), "w") as f:
            f.write(content)
        hidden = os.path.join(tmp, "hidden")
        os.mkdir(hidden)
        profile = runtime.Profile("doctor", tmp)
        options = ["--profile", "doctor", "--ifname", PROBE_IFNAME, "--view",
                   "--resolv-conf", runtime.RESOLV_CONF, "--hide", hidden]
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        host.bind(("127.0.0.1", 0))
        try:
            sidecar = launch.start_sidecar(profile, host, options, token=sockets.new_token(),
                                           verbose=False)
        except SetupError as e:
            reason = e.message.removeprefix("starting the sidecar: ")
            if "TUN" in reason:
                return ProbeRun(_PROBE_FAILED, "", f"network: {reason}\n")
            return ProbeRun(125, "", reason + "\n")
        try:
            os.close(sidecar.life_fd)
            sidecar.life_fd = -1
            plan = netns.NetworkPlan(
                ifname=PROBE_IFNAME, mtu=1420,
                addresses=(ipaddress.ip_interface(f"{PROBE_ADDRESS}/24"),), routes=(), table=None)
            try:
                netns.configure(sidecar.pidfd, plan, False)
            except SetupError as e:
                return ProbeRun(_PROBE_FAILED, "", f"network: {e.message}\n")
            return _run_inside(sidecar, [hidden, content, PROBE_IFNAME])
        finally:
            sidecar.stop()
            sidecar.close()


def _run_inside(sidecar: Sidecar, argv: Sequence[str]) -> ProbeRun:
    from wg_wrap import launch

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # -P: nothing from the working directory shadows the package.
    program = [sys.executable, "-P", "-c",
               "import sys; sys.path.insert(0, sys.argv[1]); from wg_wrap import doctor; "
               "sys.exit(doctor.inside(sys.argv[2:]))", package_parent, *argv]
    try:
        done = subprocess.run(launch.join_argv(sidecar, program), capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                              pass_fds=(sidecar.pidfd,), cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        return ProbeRun(None, "", str(e))
    return ProbeRun(done.returncode, done.stdout, done.stderr)


def probe_checks(run: ProbeRun, blocked: bool, launcher: str) -> Probe:
    """The two check lines a probe run gives.  ``blocked``: AppArmor's
    restriction applies to this launcher, and its fix comes first."""
    namespaces = "user namespaces"
    tun = "TUN in a namespace"
    if run.status == 0:
        return Probe(
            Check(namespaces, True, "user, mount and network namespaces, with wg-wrap's "
                  "view of the host in them"),
            Check(tun, True, f"{run.stdout.strip()}, with the sidecar's capabilities only"),
        )
    lines = run.stderr.strip().splitlines()
    reason = lines[-1] if lines else f"exit status {run.status}"
    hint = _SEE_APPARMOR if blocked else hint_for(reason, launcher=launcher) or ""
    if run.status == _PROBE_FAILED and reason.startswith("network: "):
        ok = Check(namespaces, True, "user, mount and network namespaces, with mounts in them")
        return Probe(ok, Check(tun, False, reason.removeprefix("network: "), hint))
    if run.status == _PROBE_FAILED:
        reason = reason.removeprefix("mount: ")
    return Probe(Check(namespaces, False, reason, hint),
                 Check(tun, False, "not tried: the namespaces failed"))


def namespace_checks(report: apparmor.Report, run: ProbeRun, command: str) -> list[Check]:
    """AppArmor, then the probe's two lines: when AppArmor is what blocks the
    namespaces, its fix is the first one printed."""
    probe = probe_checks(run, report.restricted and not report.profile_loaded, report.launcher)
    probe_ok = probe.namespaces.ok and probe.tun.ok
    return [apparmor_check(report, probe_ok, command), probe.namespaces, probe.tun]


# ---- AppArmor ------------------------------------------------------------

def apparmor_check(report: apparmor.Report, probe_ok: bool, command: str) -> Check:
    """The AppArmor line: the restriction, the profile for this launcher,
    and when it is needed, the fix: the profile first, the sysctl last.

    ``command`` is how the user runs wg-wrap (for ``--apparmor-profile``)."""
    name = "AppArmor"
    if not report.enabled:
        return Check(name, True, "not enabled")
    if not report.restriction:
        return Check(name, True, f"enabled; unprivileged user namespaces are not restricted "
                     f"({apparmor.SYSCTL}=0 or absent)")
    said = f"{apparmor.SYSCTL}=1"
    profile, loaded = report.profile, report.profile_loaded
    if profile is not None and (loaded or (loaded is None and probe_ok)):
        state = "loaded" if loaded else "the probe below passes"
        return Check(name, True, f"{said}; the profile {profile.name} ({profile.path}) "
                     f"exempts {report.launcher} ({state})")
    if profile is None:
        problem = f"no profile in {apparmor.PROFILE_DIR} exempts {report.launcher}"
        for other in report.elsewhere:
            problem += f" ({other.path} is for {other.attachment or 'no path'})"
    elif profile.disabled:
        problem = f"the profile {profile.path} for {report.launcher} is disabled"
    elif loaded is False:
        problem = f"the profile {profile.path} for {report.launcher} is not loaded"
    else:
        problem = f"the profile {profile.path} for {report.launcher} seems not loaded"
    detail = (f"{said}: user namespaces get no capabilities (no uid map, mounts or TUN), "
              f"and {problem}")
    last_resort = (f"last resort: `{apparmor.sysctl_command()}` lowers the protection for "
                   "the whole machine: every program may then create user namespaces "
                   "with capabilities")
    if not report.abi_4:
        return Check(
            name, False, detail,
            f"this AppArmor is older than 4.0 (no {apparmor.ABI_4_FILE}): it cannot load a "
            "profile with a `userns` rule; upgrade AppArmor",
            more=(last_resort,),
        )
    commands = tuple(f"  {c}" for c in apparmor.fix_commands(report, command))
    if profile is not None:
        fix = f"load the profile {profile.path} (it exempts this launcher, and only it):"
        return Check(name, probe_ok, detail, fix, note=probe_ok, more=(*commands, last_resort))
    try:
        text = apparmor.render(report.launcher, report.install_name)
    except apparmor.UnrenderablePath as e:
        return Check(name, False, detail, f"{e}: install wg-wrap under a plain path",
                     more=(last_resort,))
    fix = ("give this launcher, and only it, the right to create user namespaces with their "
           f"capabilities, with this AppArmor profile ({report.install_path}):")
    profile_lines = tuple(f"  {line}".rstrip() for line in text.splitlines())
    return Check(
        name, probe_ok, detail, fix, note=probe_ok,
        more=(*profile_lines, "install and load it:", *commands, last_resort),
    )


def print_profile() -> int:
    """``doctor --apparmor-profile``: the profile for the launcher this
    wg-wrap runs, to pipe into ``sudo install``."""
    report = apparmor.detect(paths.launcher())
    try:
        sys.stdout.write(apparmor.render(report.launcher, report.install_name))
    except apparmor.UnrenderablePath as e:
        from wg_wrap.errors import SetupError

        raise SetupError(str(e), hint="install wg-wrap under a plain path") from e
    return 0


# ---- the rest ------------------------------------------------------------

def _runtime_dir() -> Check:
    try:
        path = runtime.base_dir(create=False)  # checked if it exists, not created
        state = "private (0700)" if os.path.exists(path) else "will be created private (0700)"
        return Check("runtime directory", True, f"{path}: {state}")
    except WgWrapError as e:
        return Check("runtime directory", False, e.message, e.hint or "")


def _host_resolver() -> Check:
    try:
        with open(dns.ETC_RESOLV) as f:
            loopback = dns.loopback_nameservers(f.read())
    except OSError as e:
        return Check("host resolver", True, f"{dns.ETC_RESOLV}: {e.strerror}", note=True)
    if loopback:
        return Check(
            "host resolver", True,
            f"{', '.join(loopback)} is a loopback address, unreachable inside the tunnel",
            "configs without DNS = need --dns IP", note=True,
        )
    return Check("host resolver", True, "reachable from inside (not a loopback address)")


def _host_ipv6() -> Check:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
    except OSError:
        return Check("host IPv6", True, "none: IPv4 endpoints only", note=True)
    return Check("host IPv6", True, "dual-stack: IPv4 and IPv6 endpoints")


def collect() -> list[Check]:
    """Every check, in the order printed."""
    helpers = _helpers()
    if not helpers.ok:
        return [helpers]  # the other checks need the helpers
    launcher = paths.launcher()
    return [
        helpers,
        *namespace_checks(apparmor.detect(launcher), _run_probe(),
                          hints.wg_wrap_command()),
        _tun_device(),
        _runtime_dir(),
        _host_resolver(),
        _host_ipv6(),
    ]


def format_checks(results: Sequence[Check]) -> str:
    lines = []
    for result in results:
        label = "note" if result.note and result.hint else "ok" if result.ok else "FAIL"
        lines.append(f"  {label:5} {result.name}: {result.detail}")
        if result.hint:
            lines.append(f"        fix: {result.hint}")
        lines.extend(f"        {line}".rstrip() for line in result.more)
    failed = [r for r in results if not r.ok]
    lines.append("all good: wg-wrap can run here" if not failed else
                 f"{len(failed)} problem{'s' if len(failed) > 1 else ''}: see the fixes above")
    return "\n".join(lines) + "\n"


def main() -> int:
    results = collect()
    sys.stdout.write(format_checks(results))
    return 1 if any(not r.ok for r in results) else 0

