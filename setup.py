"""Build hook: compile the launcher (C) and the sidecar (Go) into the package.

`pip install .` yields a working tool: the two helper programs land in
``wg_wrap/_libexec/``.  Distribution packaging (``make install``) installs them
under ``$(LIBEXECDIR)/wg-wrap`` instead and sets WG_WRAP_SKIP_BINARIES=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BINARIES = ("wg-wrap-launcher", "wg-wrap-sidecar")


class BuildWithBinaries(build_py):
    def run(self) -> None:
        # Always copy: an in-tree build (pip's --no-build-isolation, `make
        # install`) would otherwise keep a stale build/lib copy of a module
        # whose edit did not make it newer than that copy.
        self.force = True
        super().run()
        if os.environ.get("WG_WRAP_SKIP_BINARIES") == "1":
            return
        subprocess.run(["make", "-C", str(HERE), "binaries"], check=True)
        dest = Path(self.build_lib) / "wg_wrap" / "_libexec"
        dest.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            shutil.copy2(HERE / "build" / name, dest / name)
            (dest / name).chmod(0o755)


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return os.environ.get("WG_WRAP_SKIP_BINARIES") != "1"


setup(cmdclass={"build_py": BuildWithBinaries}, distclass=BinaryDistribution)
