"""Build hook: compile the launcher (C) and the sidecar (Go) into the package.

`pip install .` yields a working tool: the two helper programs land in
``wg_wrap/_libexec/``, the man page and the shell completions in the data
directory (``<venv>/share/…``, where pipx finds them).  Distribution packaging
(``make install``) installs the helpers under ``$(LIBEXECDIR)/wg-wrap`` and the
man page and completions itself, and sets WG_WRAP_SKIP_BINARIES=1.
``make wheel`` builds static helpers first and names their directory in
WG_WRAP_HELPERS_DIR: they are copied as they are, nothing is compiled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

from setuptools import Command, Distribution, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BINARIES = ("wg-wrap-launcher", "wg-wrap-sidecar")
# Installed name below the data directory -> committed file (`make docs`):
# the layout `make install` gives them under $(DATADIR).
DATA_FILES = {
    "share/man/man1/wg-wrap.1": "packaging/man/wg-wrap.1",
    "share/bash-completion/completions/wg-wrap": "packaging/completions/wg-wrap.bash",
    "share/zsh/site-functions/_wg-wrap": "packaging/completions/_wg-wrap",
    "share/fish/vendor_completions.d/wg-wrap.fish": "packaging/completions/wg-wrap.fish",
}


def skip_binaries() -> bool:
    return os.environ.get("WG_WRAP_SKIP_BINARIES") == "1"


class BuildWithBinaries(build_py):
    def run(self) -> None:
        # Always copy: an in-tree build (pip's --no-build-isolation, `make
        # install`) would otherwise keep a stale build/lib copy of a module
        # whose edit did not make it newer than that copy.
        self.force = True
        super().run()
        if skip_binaries():
            return
        prebuilt = os.environ.get("WG_WRAP_HELPERS_DIR")
        if prebuilt:
            source = Path(prebuilt)
        else:
            subprocess.run(["make", "-C", str(HERE), "binaries"], check=True)
            source = HERE / "build"
        dest = Path(self.build_lib) / "wg_wrap" / "_libexec"
        dest.mkdir(parents=True, exist_ok=True)
        for name in BINARIES:
            shutil.copy2(source / name, dest / name)
            (dest / name).chmod(0o755)


class InstallData(Command):
    """install_data for DATA_FILES: data_files would keep each file's name,
    and bash wants its completion named after the command."""

    description = "install the man page and the shell completions"
    user_options: ClassVar[list[tuple[str, str | None, str]]] = []

    def initialize_options(self) -> None:
        self.install_dir: str | None = None
        self.outfiles: list[str] = []

    def finalize_options(self) -> None:
        self.set_undefined_options("install", ("install_data", "install_dir"))

    def run(self) -> None:
        if self.install_dir is None:
            raise RuntimeError("install_data: no installation directory")
        for target, source in DATA_FILES.items():
            path = Path(self.install_dir) / target
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HERE / source, path)
            path.chmod(0o644)
            self.outfiles.append(str(path))

    def get_inputs(self) -> list[str]:
        return list(DATA_FILES.values())

    def get_outputs(self) -> list[str]:
        return self.outfiles


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return not skip_binaries()

    def has_data_files(self) -> bool:
        return not skip_binaries()


setup(
    cmdclass={"build_py": BuildWithBinaries, "install_data": InstallData},
    distclass=BinaryDistribution,
    data_files=[],  # InstallData installs DATA_FILES; the sdist has them through MANIFEST.in
)
