"""``wg-wrap doctor``: can this machine run wg-wrap, and if not, what to do.

Each check does the real thing where it can (create namespaces, create a TUN
device in them) rather than guess from sysctls: distributions restrict user
namespaces in different ways.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from wg_wrap import __version__, dns, paths, runtime, version
from wg_wrap.errors import WgWrapError
from wg_wrap.hints import TUN, TUN_HINT, USERNS_HINT, hint_for

# A TUN device created inside the namespaces, with only the ambient
# CAP_NET_ADMIN the launcher gives: exactly what the sidecar does.
_TUN_PROBE = """
import fcntl, os, struct
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"wgwrapdoctor0", 0x0001 | 0x1000))
"""  # TUNSETIFF, IFF_TUN | IFF_NO_PI


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    note: bool = False  # informational: never a failure


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


def _in_namespaces(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [paths.launcher(), "create", "--", *argv],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )


def _namespaces() -> Check:
    try:
        done = _in_namespaces(["/bin/sh", "-c", "exit 0"])
    except (WgWrapError, OSError, subprocess.TimeoutExpired) as e:
        return Check("user namespaces", False, str(e), USERNS_HINT)
    if done.returncode != 0:
        return Check("user namespaces", False, done.stderr.strip(), USERNS_HINT)
    return Check("user namespaces", True, "user, network and mount namespaces work unprivileged")


def _tun_inside() -> Check:
    try:
        done = _in_namespaces([sys.executable, "-c", _TUN_PROBE])
    except (WgWrapError, OSError, subprocess.TimeoutExpired) as e:
        return Check("TUN in a namespace", False, str(e))
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        return Check("TUN in a namespace", False, reason, hint_for(f"tun {reason}") or "")
    return Check("TUN in a namespace", True, "created one with CAP_NET_ADMIN only")


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


CHECKS: tuple[Callable[[], Check], ...] = (
    _helpers, _tun_device, _namespaces, _tun_inside, _runtime_dir, _host_resolver, _host_ipv6,
)


def main() -> int:
    results = []
    for check in CHECKS:
        result = check()
        results.append(result)
        label = "note" if result.note and result.hint else "ok" if result.ok else "FAIL"
        print(f"  {label:5} {result.name}: {result.detail}")
        if result.hint:
            print(f"        fix: {result.hint}")
        if check is _helpers and not result.ok:
            break  # the namespace checks need the helpers
    failed = [r for r in results if not r.ok]
    print("all good: wg-wrap can run here" if not failed else
          f"{len(failed)} problem{'s' if len(failed) > 1 else ''}: see the fixes above")
    return 1 if failed else 0
