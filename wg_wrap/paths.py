"""Where the helper programs live.

Order: ``$WG_WRAP_LIBEXEC_DIR`` (development), the package's own
``_libexec/`` (``pip install .``), ``build/`` beside the package when it runs
from a source checkout (after ``make``), then ``libexec/wg-wrap`` or ``lib/wg-wrap``
next to the installation prefix the package sits in (``make install``, also
under a DESTDIR staging root), then the usual system locations.

os.path, not pathlib: this module is on the join path, and pathlib (which
pulls in urllib and ipaddress) is slow to import.
"""

from __future__ import annotations

import os

from wg_wrap.errors import SetupError

LAUNCHER = "wg-wrap-launcher"
SIDECAR = "wg-wrap-sidecar"
_SYSTEM_DIRS = ("/usr/local/libexec/wg-wrap", "/usr/libexec/wg-wrap", "/usr/lib/wg-wrap")


def _candidates() -> list[str]:
    override = os.environ.get("WG_WRAP_LIBEXEC_DIR")
    if override:
        return [override]
    package = os.path.dirname(os.path.realpath(__file__))
    found = [os.path.join(package, "_libexec"), os.path.join(os.path.dirname(package), "build")]
    # <prefix>/lib/pythonX.Y/site-packages/wg_wrap -> <prefix>/libexec/wg-wrap,
    # or <prefix>/lib/wg-wrap (`make install LIBEXECDIR=<prefix>/lib`, Debian and Arch style)
    parent = package
    for _ in range(5):
        parent = os.path.dirname(parent)
        found.append(os.path.join(parent, "libexec", "wg-wrap"))
        found.append(os.path.join(parent, "lib", "wg-wrap"))
    found.extend(_SYSTEM_DIRS)
    return found


def libexec_dir() -> str:
    """The directory holding both helper programs, or a SetupError."""
    candidates = _candidates()
    for directory in candidates:
        if all(os.access(os.path.join(directory, n), os.X_OK) for n in (LAUNCHER, SIDECAR)):
            return directory
    raise SetupError(
        f"cannot find {LAUNCHER} and {SIDECAR} (looked in {', '.join(candidates)})",
        hint="install with `pip install .` or `make install`, "
        "or point WG_WRAP_LIBEXEC_DIR at a directory holding them",
    )


def launcher() -> str:
    return os.path.join(libexec_dir(), LAUNCHER)


def sidecar() -> str:
    return os.path.join(libexec_dir(), SIDECAR)
