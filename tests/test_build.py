"""Building for distributions: vendored Go modules, an offline build from a fresh
tree and from the dist tarball, a byte-identical `make dist`, reproducible and
hardened binaries, the distribution's compiler flags honoured.

"Offline" means in a network namespace of its own (`unshare --net`, as root:
only a loopback that is down), with GOPROXY=off, an empty module cache and no
$HOME: nothing can come from the network, so everything must come from the
tree.
"""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_install import (
    REPO,
    VERSION,
    assert_helpers_run,
    clean_env,
    copy_source,
    make_venv,
    run,
    runtime_dependencies,
)

from wg_wrap import apparmor, paths

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

BINARIES = (paths.LAUNCHER, paths.SIDECAR)
GO = shutil.which("go") or "/usr/local/go/bin/go"
TARBALL = f"wg-wrap-{VERSION}.tar.gz"
# As package builders set it; below /proc so that nothing, not even root (the
# go command creates $HOME/.config/go/telemetry when it can), can create it.
NO_HOME = "/proc/nonexistent-home"


def offline_env(**extra: str) -> dict[str, str]:
    """No $HOME, no proxy, an empty module cache: a distribution's builder."""
    env = {
        "PATH": f"{os.path.dirname(GO)}:/usr/local/bin:/usr/bin:/bin",
        "HOME": NO_HOME,
        "LANG": "C.UTF-8",
        "GOPROXY": "off",
    }
    env.update(extra)
    return env


def offline(argv: Sequence[str | Path], cwd: Path, env: dict[str, str]) -> str:
    """Run argv where no network exists at all; returns its stdout."""
    return run(["unshare", "--net", "--", *argv], cwd=cwd, env=env, timeout=900).stdout


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True,
                          text=True).stdout


# ---- vendor/ ------------------------------------------------------------------


def test_vendor_matches_go_mod_and_go_sum(tmp_path: Path) -> None:
    """`go mod vendor` from go.mod/go.sum gives exactly the committed vendor/
    (run `make vendor` and commit when this fails)."""
    sidecar = REPO / "go-sidecar"
    env = clean_env(GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    run([GO, "mod", "verify"], cwd=sidecar, env=env)
    fresh = tmp_path / "vendor"
    run([GO, "mod", "vendor", "-o", str(fresh)], cwd=sidecar, env=env)
    diff = subprocess.run(["diff", "-r", str(fresh), str(sidecar / "vendor")],
                          capture_output=True, text=True)
    assert diff.returncode == 0, "vendor/ is stale: run `make vendor`\n" + diff.stdout[:3000]
    tracked = git("ls-files", "go-sidecar/vendor").splitlines()
    on_disk = [str(p.relative_to(REPO)) for p in (sidecar / "vendor").rglob("*") if p.is_file()]
    assert sorted(tracked) == sorted(on_disk), "vendor/ has files that are not committed"


# ---- make dist ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(["make", "-s", "dist", f"DISTDIR={out}"], cwd=REPO)
    return out / TARBALL


def test_make_dist_is_byte_identical_on_every_run(dist: Path, tmp_path: Path) -> None:
    run(["make", "-s", "dist", f"DISTDIR={tmp_path}"], cwd=REPO)
    again = tmp_path / TARBALL
    assert filecmp.cmp(dist, again, shallow=False), "two `make dist` runs differ"
    assert hashlib.sha256(dist.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()


def test_the_tarball_holds_the_tracked_files_sorted_owned_by_0_dated_by_the_last_commit(
    dist: Path,
) -> None:
    data = dist.read_bytes()
    assert data[4:8] == b"\0\0\0\0", "gzip header carries a timestamp (use gzip -n)"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    prefix = f"wg-wrap-{VERSION}/"
    tracked = sorted(git("ls-files").splitlines())
    assert names == [prefix + n for n in tracked]  # sorted like `--sort=name`, nothing else
    last_commit = int(git("log", "-1", "--format=%ct"))
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
        assert m.mtime == last_commit, m.name
        assert m.mode in (0o644, 0o755), (m.name, oct(m.mode))
    for needed in ("go-sidecar/vendor/modules.txt", "packaging/systemd/wg-wrap@.service.in",
                   "packaging/apparmor/wg-wrap-launcher.in", "Makefile", "setup.py"):
        assert prefix + needed in names, needed
    assert not [n for n in names if re.search(r"/(build|dist|_libexec)/|\.egg-info/", n)]


# ---- offline builds -----------------------------------------------------------


@dataclass(frozen=True)
class OfflineBuild:
    source: Path
    destdir: Path  # make install DESTDIR=... PREFIX=/usr


@pytest.fixture(scope="module")
def offline_tree(tmp_path_factory: pytest.TempPathFactory) -> OfflineBuild:
    """A fresh tree (what a clone holds), built with no network: `pip install
    --no-build-isolation` into a venv that has the build tools, then `make
    install`; Go's build cache falls back into build/ (no $HOME)."""
    root = tmp_path_factory.mktemp("offline-tree")
    source = copy_source(root / "src")
    python = make_venv(root / "venv", "setuptools>=61", "wheel", *runtime_dependencies())
    empty = root / "modcache"
    empty.mkdir()
    env = offline_env(GOMODCACHE=str(empty))
    assert offline(["ip", "-o", "link"], source, env).split(":")[1].strip() == "lo"
    offline([python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--quiet",
             "--disable-pip-version-check", "."], source, env)
    destdir = root / "destdir"
    offline(["make", "install", f"DESTDIR={destdir}", "PREFIX=/usr", f"PYTHON={python}"],
            source, env)
    assert (source / "build" / "go-cache").is_dir(), "no $HOME: Go's cache belongs in build/"
    assert not os.path.lexists(NO_HOME), "the build created $HOME"
    assert not any(empty.iterdir()), "the build put modules in the module cache"
    return OfflineBuild(source, destdir)


@pytest.fixture(scope="module")
def offline_tarball(
    tmp_path_factory: pytest.TempPathFactory, dist: Path, offline_tree: OfflineBuild
) -> OfflineBuild:
    """The dist tarball, unpacked elsewhere and built the same way (sharing the
    first build's Go compile cache: a cache of compiled code, not of modules)."""
    root = tmp_path_factory.mktemp("offline-tarball")
    run(["tar", "-xzf", dist, "-C", root])
    source = root / f"wg-wrap-{VERSION}"
    env = offline_env(GOMODCACHE=str(root / "modcache"),
                      GOCACHE=str(offline_tree.source / "build" / "go-cache"))
    (root / "modcache").mkdir()
    offline(["make"], source, env)
    destdir = root / "destdir"
    offline(["make", "install", f"DESTDIR={destdir}", "PREFIX=/usr", "PYTHON=/usr/bin/python3"],
            source, env)
    return OfflineBuild(source, destdir)


def test_a_fresh_tree_builds_and_installs_offline(offline_tree: OfflineBuild) -> None:
    libexec = offline_tree.destdir / "usr" / "libexec" / "wg-wrap"
    assert_helpers_run(libexec)
    assert (offline_tree.destdir / "usr" / "bin" / "wg-wrap").is_file()
    for name in BINARIES:  # pip's copy is the same program as make's
        package = next((offline_tree.source / "build").glob(f"lib*/wg_wrap/_libexec/{name}"))
        assert filecmp.cmp(package, libexec / name, shallow=False), name


def test_the_tarball_builds_and_installs_offline(offline_tarball: OfflineBuild) -> None:
    usr = offline_tarball.destdir / "usr"
    assert_helpers_run(usr / "libexec" / "wg-wrap")
    assert (usr / "bin" / "wg-wrap").is_file()
    assert (usr / "lib" / "systemd" / "user" / "wg-wrap@.service").is_file()
    profile = usr / "share" / "wg-wrap" / "apparmor" / "wg-wrap-launcher"
    assert f" /usr/libexec/wg-wrap/wg-wrap-launcher {apparmor.FLAGS}" in profile.read_text()


def test_binaries_are_reproducible_whatever_the_build_directory(
    offline_tree: OfflineBuild, offline_tarball: OfflineBuild
) -> None:
    """Two trees at different paths give the same bytes; neither path is inside."""
    for name in BINARIES:
        a = (offline_tree.source / "build" / name).read_bytes()
        b = (offline_tarball.source / "build" / name).read_bytes()
        assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), name
        for tree in (offline_tree.source, offline_tarball.source):
            assert bytes(tree) not in a, f"{name} holds its build path {tree}"


def _readelf(path: Path, *flags: str) -> str:
    return run(["readelf", "--wide", *flags, path]).stdout


def test_the_launcher_is_hardened(offline_tarball: OfflineBuild) -> None:
    binary = offline_tarball.source / "build" / paths.LAUNCHER
    assert re.search(r"Type:\s+DYN", _readelf(binary, "-h")), "the launcher is not PIE"
    assert "GNU_RELRO" in _readelf(binary, "-l"), "the launcher has no RELRO segment"
    dynamic = _readelf(binary, "-d")
    assert re.search(r"\(FLAGS\)\s+BIND_NOW|\(FLAGS_1\)\s+Flags:.*\bNOW\b", dynamic), dynamic
    assert re.search(r"\(FLAGS_1\)\s+Flags:.*\bPIE\b", dynamic), dynamic


def test_the_sidecar_is_a_static_executable_with_nothing_writable_and_executable(
    offline_tarball: OfflineBuild,
) -> None:
    """Not PIE (the Makefile says why): no loader, no relocations to apply,
    so its type data and tables are read-only from the start; no segment is
    both writable and executable, nor is the stack."""
    binary = offline_tarball.source / "build" / paths.SIDECAR
    assert re.search(r"Type:\s+EXEC", _readelf(binary, "-h"))
    segments = _readelf(binary, "-l")
    headers, mapping = segments.split("Section to Segment mapping:")
    kinds = re.findall(r"^\s+([A-Z_]+)\s+0x[0-9a-f]+\s+(?:0x[0-9a-f]+\s+){4}([RWE ]+?)\s+0x",
                       headers, re.M)
    rows = re.findall(r"^\s+\d\d(.*)$", mapping, re.M)
    assert kinds and len(rows) == len(kinds), segments
    assert not {"INTERP", "DYNAMIC"} & {kind for kind, _ in kinds}, segments
    assert ("GNU_STACK", "RW") in kinds, segments
    assert not [f for _, f in kinds if "W" in f and "E" in f], segments
    (rodata,) = [f for (_, f), row in zip(kinds, rows, strict=True) if ".typelink" in row.split()]
    assert rodata == "R", segments


def test_the_distributions_flags_are_honoured(tmp_path: Path) -> None:
    """CPPFLAGS/CFLAGS/LDFLAGS as dpkg-buildflags or %optflags give them: they
    reach the compiler after ours, and a _FORTIFY_SOURCE of theirs replaces ours."""
    source = copy_source(tmp_path / "src")
    flags = ["CPPFLAGS=-D_FORTIFY_SOURCE=3", "CFLAGS=-O2 -g -fno-omit-frame-pointer",
             "LDFLAGS=-Wl,-Map=build/launcher.map"]
    loud = run(["make", "V=1", "build/wg-wrap-launcher", *flags], cwd=source).stdout
    command = loud.splitlines()[1]
    assert "-D_FORTIFY_SOURCE=2" not in command
    assert command.index("-D_FORTIFY_SOURCE=3") > command.index("-DWG_WRAP_VERSION")
    assert command.index("-fno-omit-frame-pointer") > command.index("-fstack-protector-strong")
    assert (source / "build" / "launcher.map").is_file()  # the linker saw LDFLAGS
    version = run([source / "build" / paths.LAUNCHER, "--version"])
    assert version.stdout == f"{paths.LAUNCHER} {VERSION}\n"
