"""The fix for a failure the machine causes, in one line.

Shared by a failed start (launch.py, netns.py) and ``wg-wrap doctor``: both
recognise the failed step in the launcher's or the sidecar's message.
"""

from __future__ import annotations

import os
import sys

TUN = "/dev/net/tun"

USERNS_HINT = (
    "unprivileged user namespaces are disabled or limited: "
    "`sudo sysctl kernel.unprivileged_userns_clone=1` (Debian before 11) or "
    "`sudo sysctl user.max_user_namespaces=15000`; `wg-wrap doctor` checks what is missing"
)
TUN_HINT = (
    f"{TUN} must exist and be readable and writable by everyone, as distributions ship it: "
    f"`sudo modprobe tun; sudo chmod 0666 {TUN}`"
)

# The launcher's and the sidecar's steps that need capabilities inside the new
# user namespace: exactly what the AppArmor restriction takes away.
_NAMESPACE_STEPS = ("creating namespaces", "setgroups", "uid map", "gid map", "mount", "tun",
                    "address")
_DENIED = ("operation not permitted", "permission denied")


def wg_wrap_command() -> str:
    """How the user ran this wg-wrap, to name it in a command to copy."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "__main__.py":
        return f"{_quote(sys.executable)} -m wg_wrap"
    if not os.path.isfile(argv0):
        return "wg-wrap"
    import shutil

    on_path = shutil.which("wg-wrap")
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "wg-wrap"
    return _quote(os.path.abspath(argv0))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def apparmor_hint(root: str = "/", launcher: str | None = None) -> str | None:
    """The AppArmor fix when the restriction is on and no loaded profile
    exempts the launcher; None otherwise."""
    from wg_wrap import apparmor, paths
    from wg_wrap.errors import WgWrapError

    try:
        path = launcher or paths.launcher()
    except WgWrapError:
        return None
    report = apparmor.detect(path, root)
    if not report.restricted or report.profile_loaded:
        return None
    return apparmor.one_line_fix(report, wg_wrap_command())


def hint_for(reason: str, *, root: str = "/", launcher: str | None = None) -> str | None:
    """The fix for a start failure, recognised by its message."""
    lowered = reason.lower()
    if any(e in lowered for e in _DENIED) and any(s in lowered for s in _NAMESPACE_STEPS):
        restricted = apparmor_hint(root, launcher)
        if restricted:
            return restricted
    if any(step in lowered for step in ("creating namespaces", "uid map", "gid map", "setgroups")):
        return USERNS_HINT
    if "tun" in lowered and any(
        e in lowered for e in ("permission denied", "not permitted", "no such file")
    ):
        return TUN_HINT
    return None
