"""Where the helper programs live.

Order: ``$WG_WRAP_LIBEXEC_DIR`` (development), the package's own
``_libexec/`` (``pip install .``), then ``libexec/wg-wrap`` next to the
installation prefix the package sits in (``make install``, also under a
DESTDIR staging root), then the usual system locations.
"""

from __future__ import annotations

import os
from pathlib import Path

from wg_wrap.errors import SetupError

LAUNCHER = "wg-wrap-launcher"
SIDECAR = "wg-wrap-sidecar"
_SYSTEM_DIRS = ("/usr/local/libexec/wg-wrap", "/usr/libexec/wg-wrap", "/usr/lib/wg-wrap")


def _candidates() -> list[Path]:
    found: list[Path] = []
    override = os.environ.get("WG_WRAP_LIBEXEC_DIR")
    if override:
        return [Path(override)]
    package = Path(__file__).resolve().parent
    found.append(package / "_libexec")
    # <prefix>/lib/pythonX.Y/site-packages/wg_wrap -> <prefix>/libexec/wg-wrap
    for parent in list(package.parents)[:5]:
        found.append(parent / "libexec" / "wg-wrap")
    found.extend(Path(p) for p in _SYSTEM_DIRS)
    return found


def libexec_dir() -> Path:
    """The directory holding both helper programs, or a SetupError."""
    candidates = _candidates()
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in (LAUNCHER, SIDECAR)):
            return directory
    raise SetupError(
        f"cannot find {LAUNCHER} and {SIDECAR} (looked in {', '.join(map(str, candidates))})",
        hint="install with `pip install .` or `make install`, "
        "or point WG_WRAP_LIBEXEC_DIR at a directory holding them",
    )


def launcher() -> Path:
    return libexec_dir() / LAUNCHER


def sidecar() -> Path:
    return libexec_dir() / SIDECAR
