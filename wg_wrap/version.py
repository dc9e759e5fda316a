"""Versions of wg-wrap and of the helper programs it runs.

The Python package and the two helpers must come from the same release: a
stale ``/usr/libexec/wg-wrap`` left behind by an upgrade (or a ``pip install``
beside an old ``make install``) would otherwise half work.  A start checks
both helpers' ``--version``; the join path, which must stay cheap, passes
``--expect-version`` to the launcher instead (launch.py), which refuses by
itself.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from wg_wrap import __version__, paths
from wg_wrap.errors import SetupError, WgWrapError


@dataclass(frozen=True)
class Helper:
    name: str
    path: str
    line: str  # its --version output, e.g. "wg-wrap-sidecar 0.1.0 (wireguard-go …)"

    @property
    def version(self) -> str:
        """The version word of ``line`` ("" when it printed nothing usable)."""
        words = self.line.split()
        return words[1] if len(words) > 1 and words[0] == self.name else ""


def _ask(name: str, path: str) -> Helper:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SetupError(f"running {path} --version: {e}") from e
    return Helper(name, path, done.stdout.strip() if done.returncode == 0 else "")


def helpers() -> list[Helper]:
    """Both helpers as found (paths.libexec_dir), with what they say they are."""
    return [_ask(paths.LAUNCHER, paths.launcher()), _ask(paths.SIDECAR, paths.sidecar())]


def check_helpers() -> None:
    """Refuse to start with helpers of another version, naming both."""
    for helper in helpers():
        if helper.version != __version__:
            found = f"version {helper.version}" if helper.version else "an unknown version"
            raise SetupError(
                f"wg-wrap {__version__} found {helper.path} of {found}",
                hint="install wg-wrap and its helpers from the same release "
                "(a stale libexec directory is left from an older install?); "
                "`wg-wrap --version` shows what is found where",
            )


def report() -> str:
    """What ``wg-wrap --version`` prints: ours, then each helper's."""
    lines = [f"wg-wrap {__version__}"]
    try:
        found = helpers()
    except WgWrapError as e:
        return "\n".join([*lines, f"helpers: {e}"])
    for helper in found:
        line = helper.line or f"{helper.name}: no version (not a wg-wrap helper?)"
        mismatch = "" if helper.version == __version__ else "  [another version!]"
        lines.append(f"{line}  [{helper.path}]{mismatch}")
    return "\n".join(lines)
