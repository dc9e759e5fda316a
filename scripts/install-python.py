#!/usr/bin/env python3
"""Install the wg_wrap package for `make install`, honouring PREFIX, BINDIR
and DESTDIR with whichever interpreter runs this script.

pip's --prefix means different things to different Pythons: Debian's own
interpreter installs into <prefix>/local/lib/pythonX.Y/dist-packages (its
"posix_local" scheme), so PREFIX=/usr/local would land in /usr/local/local.
For that interpreter, /usr/local maps to its posix_local scheme and any other
prefix to its "deb_system" scheme (<prefix>/lib/python3/dist-packages, what
Debian packages use). Virtual environments and other Pythons use --prefix as
given.  The command ends up in BINDIR.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--bindir", required=True)
    parser.add_argument("--destdir", default="")
    parser.add_argument("source")
    args = parser.parse_args()

    env = dict(os.environ, WG_WRAP_SKIP_BINARIES="1")
    prefix = args.prefix.rstrip("/") or "/"
    scheme = sysconfig.get_preferred_scheme("prefix")
    if scheme == "posix_local":  # Debian's interpreter outside a venv
        if prefix.endswith("/local"):
            prefix = prefix.removesuffix("/local") or "/"
        else:
            scheme = "deb_system"
            env["DEB_PYTHON_INSTALL_LAYOUT"] = "deb_system"
    base = dict.fromkeys(("base", "platbase", "installed_base", "installed_platbase"), prefix)
    scripts = sysconfig.get_path("scripts", scheme, base)

    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--root-user-action=ignore", "--disable-pip-version-check", "--no-cache-dir",
         f"--root={args.destdir or '/'}", f"--prefix={prefix}", args.source],
        env=env, check=True,
    )
    if os.path.normpath(scripts) != os.path.normpath(args.bindir):
        src = args.destdir + os.path.join(scripts, "wg-wrap")
        dst_dir = args.destdir + args.bindir
        os.makedirs(dst_dir, exist_ok=True)
        shutil.move(src, os.path.join(dst_dir, "wg-wrap"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
