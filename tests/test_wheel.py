"""Wheels: `pipx install wg-wrap` on a machine with no C compiler and no Go.

`make wheels` builds the sdist and one wheel per architecture (x86_64 here,
aarch64 cross-compiled) whose two helpers are static, so that the one wheel
runs on every Linux of its architecture, glibc or musl. The promises:

- the helpers are static executables of the wheel's architecture (readelf: no
  interpreter, nothing NEEDED), and they run in a root directory that holds
  nothing else at all: no libc, no loader (the aarch64 ones under
  qemu-aarch64-static, which can run nothing else there either);
- each wheel is tagged py3-none, manylinux_2_17 (+ manylinux2014) and
  musllinux_1_1 of its architecture, pip takes it by those tags, and
  `auditwheel show` finds no library or versioned symbol that would ask for
  more;
- two clones (other paths, another umask, other file dates) build the same
  bytes: sdist and wheels; their entries are sorted, dated by the last commit
  and 0644/0755;
- `twine check --strict` passes on the sdist and the wheels;
- the sdist holds the tracked files and builds from source with `pip install`
  where the toolchains are;
- installed with pipx as the unprivileged test user, with every C compiler
  and Go hidden (a mount namespace over them) and no network at all,
  dependencies as wheels only, from a local directory: `wg-wrap --version`,
  `wg-wrap doctor` and a real tunnel to a wg-wrap peer work, and pipx exposes
  the man page and the completions;
- `make release` writes every artefact and a SHA256SUMS that checks.

The wheels are built once (module fixtures), in a world-readable directory below
/var/tmp (the test user installs from there).
"""

from __future__ import annotations

import filecmp
import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import User, as_user_argv, user_env
from peers import Server
from test_install import (
    REPO,
    VERSION,
    assert_helpers_run,
    assert_version_report,
    clean_env,
    copy_source,
    make_venv,
    run,
    runtime_dependencies,
)

from wg_wrap import paths

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(1500)]

ARCHS = ("x86_64", "aarch64")
BINARIES = (paths.LAUNCHER, paths.SIDECAR)
ELF_MACHINE = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}
QEMU = {"x86_64": None, "aarch64": "qemu-aarch64-static"}
SDIST = f"wg_wrap-{VERSION}.tar.gz"
# Tools of the tests themselves (the build's own are pinned in
# packaging/wheel/requirements.txt); auditwheel >= 6.4 knows static executables,
# pipx >= 1.5 links man pages and this one the completions too.
TEST_TOOLS = ("auditwheel==6.8.2", "twine==7.0.0", "pipx==1.18.4")
# X25519 of RFC 7748, section 6.1: Alice's private and public keys.
RFC7748_PRIVATE = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
RFC7748_PUBLIC = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
# Debian packages behind the tools (for the message when one is missing).
NEEDED_TOOLS = {
    "x86_64-linux-gnu-gcc": "gcc",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "qemu-aarch64-static": "qemu-user-static",
    "readelf": "binutils",
    "git": "git",
    "unshare": "util-linux",
    "chroot": "coreutils",
}
STATIC_LIBCS = {
    "/usr/lib/x86_64-linux-gnu/libc.a": "libc6-dev",
    "/usr/aarch64-linux-gnu/lib/libc.a": "libc6-dev-arm64-cross",
}
GO = shutil.which("go") or "/usr/local/go/bin/go"


def which(tool: str) -> str | None:
    """shutil.which, also looking where root's tools are (chroot)."""
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def platform_tags(arch: str) -> set[str]:
    return {f"manylinux_2_17_{arch}", f"manylinux2014_{arch}", f"musllinux_1_1_{arch}"}


def wheel_name(arch: str) -> str:
    return f"wg_wrap-{VERSION}-py3-none-{'.'.join(sorted(platform_tags(arch)))}.whl"


def need_wheel_tools() -> None:
    """Building the wheels needs Debian's x86_64 and aarch64 compilers with
    their static C libraries, qemu-user-static and binutils, Go, and root.

    They are optional tooling: without them the test is skipped, saying so,
    except in CI (CI=true), where .ci/run installs them and a missing tool is
    a failure, never a silent skip.
    """
    missing = [f"{tool} ({package})" for tool, package in NEEDED_TOOLS.items()
               if which(tool) is None]
    missing += [f"{path} ({package})" for path, package in STATIC_LIBCS.items()
                if not os.path.exists(path)]
    if not os.access(GO, os.X_OK):
        missing.append("go (Go >= 1.23)")
    if os.geteuid() != 0:
        missing.append("root")
    if not missing:
        return
    message = (f"wheel tests need {', '.join(missing)}: `apt-get install gcc-aarch64-linux-gnu "
               "libc6-dev-arm64-cross qemu-user-static binutils` (.ci/run does)")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def build_env() -> dict[str, str]:
    env = clean_env()
    env["PATH"] = f"{os.path.dirname(GO)}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def git(tree: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run(["git", "-C", tree, *args], env=env).stdout


# ---- building --------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """World-readable: the test user installs the wheel from here."""
    path = Path(tempfile.mkdtemp(prefix="wg-wrap-wheel-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tools(workdir: Path) -> Path:
    """A venv with auditwheel, twine and pipx; returns its bin directory."""
    python = make_venv(workdir / "tools", *TEST_TOOLS)
    return python.parent


@dataclass(frozen=True)
class Build:
    tree: Path

    @property
    def dist(self) -> Path:
        return self.tree / "dist"

    def wheel(self, arch: str) -> Path:
        return self.dist / wheel_name(arch)

    @property
    def sdist(self) -> Path:
        return self.dist / SDIST

    @property
    def wheel_python(self) -> Path:
        return self.tree / "build" / "wheel-tools" / "bin" / "python"


@pytest.fixture(scope="module")
def build_a(workdir: Path) -> Build:
    """The working tree as a repository of its own (one commit, dated like
    the checkout's last), and `make wheels` in it, with the Makefile's own
    pinned build tools."""
    need_wheel_tools()
    tree = copy_source(workdir / "a")
    epoch = git(REPO, "log", "-1", "--format=%ct").strip()
    env = clean_env(GIT_AUTHOR_DATE=f"@{epoch} +0000", GIT_COMMITTER_DATE=f"@{epoch} +0000")
    git(tree, "init", "-q", env=env)
    git(tree, "add", "-A", env=env)
    git(tree, "-c", "user.name=wg-wrap tests", "-c", "user.email=tests@wg-wrap.invalid",
        "commit", "-q", "-m", "snapshot of the working tree", env=env)
    run(["make", "wheels"], cwd=tree, env=build_env(), timeout=1200)
    return Build(tree)


@pytest.fixture(scope="module")
def build_b(workdir: Path, build_a: Build) -> Build:
    """A clone of the first tree, elsewhere, made and built under umask 002
    (sharing the first tree's pinned build tools)."""
    tree = workdir / "clone" / "at-another-depth" / "b"
    tree.parent.mkdir(parents=True)
    script = 'umask 002 && git clone -q "$1" "$2" && cd "$2" && make wheels WHEEL_PYTHON="$3"'
    run(["sh", "-c", script, "build-b", build_a.tree, tree, build_a.wheel_python],
        env=build_env(), timeout=1200)
    return Build(tree)


@pytest.fixture(scope="module")
def unpacked(workdir: Path, build_a: Build) -> dict[str, Path]:
    """Each wheel's helpers, extracted (by architecture)."""
    out = {}
    for arch in ARCHS:
        directory = workdir / f"unpacked-{arch}"
        with zipfile.ZipFile(build_a.wheel(arch)) as wheel:
            for name in BINARIES:
                target = directory / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(f"wg_wrap/_libexec/{name}"))
                target.chmod(0o755)
        out[arch] = directory
    return out


# ---- static helpers ---------------------------------------------------------------


def readelf(path: Path, *flags: str) -> str:
    return run(["readelf", "--wide", *flags, path]).stdout


@pytest.mark.parametrize("arch", ARCHS)
def test_helpers_are_static_executables_of_the_wheels_architecture(
    unpacked: dict[str, Path], arch: str
) -> None:
    for name in BINARIES:
        binary = unpacked[arch] / name
        header = readelf(binary, "--file-header")
        assert re.search(rf"Machine:\s+{re.escape(ELF_MACHINE[arch])}$", header, re.M), header
        segments = readelf(binary, "--program-headers")
        assert "INTERP" not in segments, f"{name} asks for a dynamic loader"
        assert "NEEDED" not in readelf(binary, "--dynamic"), f"{name} needs shared libraries"
    # The launcher is a static PIE with the hardening of `make`'s (RELRO, BIND_NOW);
    # the sidecar a plain static executable, as `make` builds it.
    launcher = unpacked[arch] / paths.LAUNCHER
    assert re.search(r"Type:\s+DYN", readelf(launcher, "--file-header"))
    assert "GNU_RELRO" in readelf(launcher, "--program-headers")
    assert re.search(r"\(FLAGS_1\)\s+Flags:.*\bNOW\b.*\bPIE\b", readelf(launcher, "--dynamic"))
    sidecar = unpacked[arch] / paths.SIDECAR
    assert re.search(r"Type:\s+EXEC", readelf(sidecar, "--file-header"))
    # The floor under the manylinux_2_17 tag is the kernel: static glibc's ABI
    # note names the oldest Linux it runs on, at most manylinux2014's (CentOS 7: 3.10).
    abi = re.search(r"OS: Linux, ABI: (\d+)\.(\d+)\.(\d+)", readelf(launcher, "--notes"))
    assert abi and tuple(map(int, abi.groups())) <= (3, 10, 0), abi
    # stripped: no symbol table
    for name in BINARIES:
        assert ".symtab" not in readelf(unpacked[arch] / name, "--section-headers"), name


def in_empty_root(root: Path, arch: str, argv: Sequence[str], stdin: str | None = None) -> (
        subprocess.CompletedProcess[str]):
    """argv (a helper's name and its arguments) in a root directory that holds
    only the helpers (and qemu, itself static, for a foreign architecture)."""
    qemu = QEMU[arch]
    prefix = [f"/{qemu}"] if qemu else []
    return subprocess.run(
        [which("chroot") or "chroot", str(root), *prefix, f"/{argv[0]}", *argv[1:]],
        capture_output=True, text=True, timeout=60, env={"PATH": "/"}, cwd="/", input=stdin,
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_static_helpers_run_where_there_is_no_libc_at_all(
    unpacked: dict[str, Path], workdir: Path, arch: str
) -> None:
    """As on a musl system, or any other: nothing of glibc is needed, not even
    its loader. A dynamically linked program cannot even start there."""
    root = workdir / f"empty-root-{arch}"
    root.mkdir()
    for name in BINARIES:
        shutil.copy2(unpacked[arch] / name, root / name)
    qemu = QEMU[arch]
    if qemu:
        found = shutil.which(qemu)
        assert found, qemu
        shutil.copy2(found, root / qemu)
    shutil.copy2("/usr/bin/true", root / "true")  # dynamically linked
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [*BINARIES, "true", *([qemu] if qemu else [])])

    dynamic = in_empty_root(root, "x86_64", ["true"])
    assert dynamic.returncode == 127, dynamic  # its loader is not there

    launcher = in_empty_root(root, arch, [paths.LAUNCHER, "--version"])
    assert (launcher.returncode, launcher.stdout) == (0, f"{paths.LAUNCHER} {VERSION}\n"), launcher
    sidecar = in_empty_root(root, arch, [paths.SIDECAR, "--version"])
    assert sidecar.returncode == 0, sidecar
    assert re.fullmatch(rf"{paths.SIDECAR} {re.escape(VERSION)} \(wireguard-go v\S+, go[\d.]+\)\n",
                        sidecar.stdout), sidecar.stdout
    # Go's X25519 computes RFC 7748's answer on either architecture
    pubkey = in_empty_root(root, arch, [paths.SIDECAR, "pubkey"], RFC7748_PRIVATE + "\n")
    assert (pubkey.returncode, pubkey.stdout.strip()) == (0, RFC7748_PUBLIC), pubkey


# ---- tags ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_wheels_are_tagged_for_glibc_and_musl_of_their_architecture(
    build_a: Build, arch: str
) -> None:
    wheel = build_a.wheel(arch)
    assert wheel.is_file(), sorted(p.name for p in build_a.dist.iterdir())
    with zipfile.ZipFile(wheel) as z:
        info = z.read(f"wg_wrap-{VERSION}.dist-info/WHEEL").decode()
    tags = set(re.findall(r"^Tag: (\S+)$", info, re.M))
    assert tags == {f"py3-none-{p}" for p in platform_tags(arch)}, info
    assert "Root-Is-Purelib: false" in info.splitlines(), info  # the helpers are platlib


def pip_download(tools: Path, find_links: Path, dest: Path, *options: str) -> (
        subprocess.CompletedProcess[str]):
    return subprocess.run(
        [str(tools / "python"), "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--no-index", "--find-links", str(find_links), "--only-binary=:all:",
         "--dest", str(dest), *options, "wg-wrap"],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )


def test_pip_chooses_the_wheel_of_the_machine_by_its_tags(
    build_a: Build, tools: Path, tmp_path: Path
) -> None:
    """This machine (glibc, x86_64) takes the x86_64 wheel; a musl system takes
    the wheel of its architecture by its musllinux tag; manylinux2010
    (CentOS 6, whose kernel Go and static glibc no longer run on) gets none."""
    both = tmp_path / "both"
    both.mkdir()
    for arch in ARCHS:
        shutil.copy2(build_a.wheel(arch), both)
    cases = [
        ((), wheel_name("x86_64")),
        (("--platform", "musllinux_1_1_aarch64", "--python-version", "3.11"),
         wheel_name("aarch64")),
        (("--platform", "musllinux_1_1_x86_64", "--python-version", "3.11"),
         wheel_name("x86_64")),
        (("--platform", "manylinux2014_aarch64", "--python-version", "3.11"),
         wheel_name("aarch64")),
        (("--platform", "manylinux2010_x86_64", "--python-version", "3.11"), None),
    ]
    for n, (options, expected) in enumerate(cases):
        dest = tmp_path / f"dest-{n}"
        done = pip_download(tools, both, dest, *options)
        got = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
        if expected is None:
            assert done.returncode != 0 and got == [], (options, got)
        else:
            assert done.returncode == 0 and got == [expected], (options, got, done.stderr)


@pytest.mark.parametrize("arch", ARCHS)
def test_auditwheel_show_finds_nothing_that_asks_for_more(
    build_a: Build, tools: Path, tmp_path: Path, arch: str
) -> None:
    """No external library, no versioned symbol: auditwheel places the wheel
    at its oldest glibc policy (older than or as old as the tags claim), and
    a copy named for musl alone at a musllinux policy."""
    shown = run([tools / "auditwheel", "show", build_a.wheel(arch)])
    assert "requires no external shared libraries" in shown.stdout, shown.stdout
    audit = json.loads(run([tools / "auditwheel", "show", "--json", build_a.wheel(arch)]).stdout)
    assert (audit["external_libs"], audit["versioned_symbols"]) == ({}, {}), audit
    assert not audit["pure"] and not audit["unsupported_isa"], audit
    glibc = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{arch}", audit["overall_tag"])
    assert glibc and (int(glibc[1]), int(glibc[2])) <= (2, 17), audit["overall_tag"]

    musl_only = tmp_path / f"wg_wrap-{VERSION}-py3-none-musllinux_1_1_{arch}.whl"
    shutil.copy2(build_a.wheel(arch), musl_only)
    audit = json.loads(run([tools / "auditwheel", "show", "--json", musl_only]).stdout)
    assert re.fullmatch(rf"musllinux_1_\d+_{arch}", audit["overall_tag"]), audit
    assert (audit["external_libs"], audit["versioned_symbols"]) == ({}, {}), audit


# ---- reproducible --------------------------------------------------------------------


def test_two_clones_build_byte_identical_sdists_and_wheels(build_a: Build, build_b: Build) -> None:
    assert build_a.tree != build_b.tree
    for a, b in [(build_a.sdist, build_b.sdist),
                 *((build_a.wheel(arch), build_b.wheel(arch)) for arch in ARCHS)]:
        assert a.is_file() and b.is_file(), (a, b)
        assert filecmp.cmp(a, b, shallow=False), f"{a.name} differs between the two clones"


def last_commit(build: Build) -> int:
    return int(git(build.tree, "log", "-1", "--format=%ct"))


@pytest.mark.parametrize("arch", ARCHS)
def test_wheel_entries_are_sorted_dated_by_the_last_commit_and_0644_or_0755(
    build_a: Build, arch: str
) -> None:
    # the date of the last commit, to a zip entry's 2-second resolution
    date_time = time.gmtime(last_commit(build_a) // 2 * 2)[:6]
    dist_info = f"wg_wrap-{VERSION}.dist-info/"
    with zipfile.ZipFile(build_a.wheel(arch)) as wheel:
        infos = wheel.infolist()
        contents = {i.filename: wheel.read(i) for i in infos}
    names = [i.filename for i in infos]
    body = [n for n in names if not n.startswith(dist_info)]
    meta = [n for n in names if n.startswith(dist_info)]
    assert names == body + meta and body == sorted(body), names
    assert meta[-1] == dist_info + "RECORD" and meta[:-1] == sorted(meta[:-1]), meta
    assert {i.date_time for i in infos} == {date_time}
    modes = {i.filename: (i.external_attr >> 16) for i in infos}
    executables = {n for n, mode in modes.items() if mode & 0o111}
    assert executables == {f"wg_wrap/_libexec/{b}" for b in BINARIES} | {
        f"wg_wrap-{VERSION}.data/scripts/wg-wrap"}
    assert set(modes.values()) == {stat.S_IFREG | 0o644, stat.S_IFREG | 0o755}, modes
    # The data directory: the man page and the completions, under the names
    # man and each shell look for.
    data = f"wg_wrap-{VERSION}.data/data/share/"
    for name, committed in (("man/man1/wg-wrap.1", "packaging/man/wg-wrap.1"),
                            ("bash-completion/completions/wg-wrap",
                             "packaging/completions/wg-wrap.bash"),
                            ("zsh/site-functions/_wg-wrap", "packaging/completions/_wg-wrap"),
                            ("fish/vendor_completions.d/wg-wrap.fish",
                             "packaging/completions/wg-wrap.fish")):
        assert contents[data + name] == (build_a.tree / committed).read_bytes(), name
    # No build path: neither the tree's nor the temporary directories'.
    for name, content in contents.items():
        assert bytes(build_a.tree) not in content and b"/wg-wrap-wheel-" not in content, name


def test_the_sdist_holds_the_tracked_files_sorted_owned_by_0_dated_by_the_last_commit(
    build_a: Build,
) -> None:
    data = build_a.sdist.read_bytes()
    assert data[4:8] == b"\0\0\0\0", "the gzip header carries a date"
    assert data[3] & 0x08 == 0, "the gzip header carries a file name"
    # POSIX (pax) headers, as the sdist format asks: ustar magic "ustar\0" + "00"
    assert gzip.decompress(data)[257:265] == b"ustar\x0000"
    with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(data))) as tar:
        members = tar.getmembers()
        pkg_info = tar.extractfile(f"wg_wrap-{VERSION}/PKG-INFO")
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    prefix = f"wg_wrap-{VERSION}/"
    names = [m.name for m in members]
    assert names == sorted(names), "not sorted"
    epoch = last_commit(build_a)
    for m in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", epoch), m.name
        assert m.mode in ((0o755,) if m.isdir() else (0o644, 0o755)), (m.name, oct(m.mode))
    files = {m.name.removeprefix(prefix) for m in members if m.isfile()}
    tracked = set(git(build_a.tree, "ls-files").splitlines())
    assert tracked <= files, f"MANIFEST.in leaves out {sorted(tracked - files)}"
    made = {n for n in files - tracked if not n.startswith("wg_wrap.egg-info/")}
    assert made == {"PKG-INFO", "setup.cfg"}, made
    assert re.search(r"^Name: wg-wrap$", metadata, re.M)
    assert re.search(rf"^Version: {re.escape(VERSION)}$", metadata, re.M)
    assert "Description-Content-Type: text/markdown" in metadata


# ---- the published files ------------------------------------------------------------


def test_twine_check_passes_on_the_sdist_and_the_wheels(build_a: Build, tools: Path) -> None:
    """The README renders as the long description; the metadata is valid."""
    files = [build_a.sdist, *(build_a.wheel(arch) for arch in ARCHS)]
    done = run([tools / "twine", "check", "--strict", *files])
    assert done.stdout.count("PASSED") == len(files), done.stdout


def test_the_sdist_builds_from_source_with_pip(build_a: Build, workdir: Path) -> None:
    """Where a C compiler and Go are: `pip install wg_wrap-VERSION.tar.gz`
    builds both helpers (with this machine's toolchains, as `make` does, debug
    info kept) and installs the man page and the completions into the venv."""
    venv = workdir / "from-sdist"
    python = make_venv(venv)
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", build_a.sdist],
        env=build_env(), timeout=1200)
    package = next(venv.glob("lib/python3*/site-packages/wg_wrap"))
    assert_helpers_run(package / "_libexec")
    # Built here, not copied from a wheel: `make`'s build, its debug info kept.
    for helper in (paths.SIDECAR, paths.LAUNCHER):
        assert ".debug_info" in readelf(package / "_libexec" / helper, "--sections"), helper
    share = venv / "share"
    assert filecmp.cmp(share / "man/man1/wg-wrap.1", REPO / "packaging/man/wg-wrap.1",
                       shallow=False)
    assert filecmp.cmp(share / "bash-completion/completions/wg-wrap",
                       REPO / "packaging/completions/wg-wrap.bash", shallow=False)


def test_make_install_leaves_the_man_page_and_completions_to_the_makefile(
    build_a: Build, tmp_path: Path
) -> None:
    """`make install` (pip with WG_WRAP_SKIP_BINARIES=1 inside) installs them
    once, where ZSHCOMPDIR and friends say: pip's data directory stays empty."""
    destdir = tmp_path / "destdir"
    run(["make", "install", f"DESTDIR={destdir}", "PREFIX=/usr", f"PYTHON={build_a.wheel_python}",
         "ZSHCOMPDIR=/usr/share/zsh/vendor-completions"], cwd=build_a.tree, env=build_env(),
        timeout=600)
    share = destdir / "usr" / "share"
    assert sorted(p.relative_to(share).as_posix() for p in share.rglob("*wg-wrap*")
                  if p.is_file()) == sorted([
        "bash-completion/completions/wg-wrap", "fish/vendor_completions.d/wg-wrap.fish",
        "man/man1/wg-wrap.1", "zsh/vendor-completions/_wg-wrap",
        "wg-wrap/apparmor/wg-wrap-launcher"])


def test_make_release_writes_every_artefact_and_checksums_that_check(
    build_a: Build, workdir: Path
) -> None:
    for tool in ("dpkg-buildpackage", "rpmbuild"):
        if shutil.which(tool) is None:
            pytest.fail(f"make release needs {tool} (.ci/run installs it)", pytrace=False)
    distdir = workdir / "release"
    run(["make", "release", f"DISTDIR={distdir}", "RPMBUILD_FLAGS=--nodeps"], cwd=build_a.tree,
        env=build_env(), timeout=1500)
    deb_arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    rpms = sorted(p.name for p in distdir.glob(f"wg-wrap-{VERSION}-1*.rpm"))
    assert len(rpms) == 1, rpms
    expected = [f"wg-wrap-{VERSION}.tar.gz", SDIST, *(wheel_name(a) for a in ARCHS),
                f"wg-wrap_{VERSION}-1_{deb_arch}.deb", rpms[0], "PKGBUILD"]
    sums = (distdir / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in sums] == expected
    run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=distdir)
    for a in ARCHS:  # the very wheels `make wheels` built
        assert filecmp.cmp(distdir / wheel_name(a), build_a.wheel(a), shallow=False), a


# ---- installed with pipx, with no toolchain -----------------------------------------


def toolchain() -> tuple[list[str], list[str]]:
    """Every C compiler and Go of this machine: the directories of their
    innards (cc1, Go's tree), and their programs, resolved (a bind mount over a
    symbolic link lands on its target)."""
    compiler = re.compile(r"^(?:[\w.+]+-)*(?:gcc|g\+\+|cc|c\+\+|cpp|c89|c99|clang|clang\+\+|tcc)"
                          r"(?:-[\d.]+)?$|^go(?:fmt)?$")
    directories = {"/usr/lib/gcc", "/usr/libexec/gcc", "/usr/lib/gcc-cross", "/usr/local/go",
                   *map(str, Path("/usr/lib").glob("go-*"))}
    goroot = subprocess.run([GO, "env", "GOROOT"], capture_output=True, text=True, timeout=60)
    if goroot.returncode == 0 and goroot.stdout.strip():
        directories.add(goroot.stdout.strip())
    programs = set()
    for directory in map(Path, ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                "/sbin", "/bin")):
        for entry in directory.iterdir() if directory.is_dir() else ():
            if compiler.match(entry.name) and entry.exists():
                target = os.path.realpath(entry)
                if not any(target.startswith(d + "/") for d in directories):
                    programs.add(target)
    return sorted(d for d in directories if os.path.isdir(d)), sorted(programs)


# Run as root in a new mount namespace before dropping to the user: an empty
# read-only tmpfs over each toolchain directory, an empty file over each
# compiler. $1: that empty file; then "dirs...", "--", "programs...", "--", argv.
HIDE = """set -eu
empty=$1; shift
while [ "$1" != -- ]; do mount -t tmpfs -o ro,mode=0755 no-toolchain "$1"; shift; done; shift
while [ "$1" != -- ]; do mount --bind "$empty" "$1"; shift; done; shift
exec "$@"
"""


@dataclass(frozen=True)
class NoToolchain:
    empty: Path
    directories: list[str]
    programs: list[str]

    def argv(self, user: User, argv: Sequence[str], *, network: bool) -> list[str]:
        unshare = ["unshare", "--mount"] + ([] if network else ["--net"])
        return [*unshare, "--", "sh", "-c", HIDE, "hide", str(self.empty), *self.directories,
                "--", *self.programs, "--", *as_user_argv(user, argv)]


@pytest.fixture(scope="module")
def no_toolchain(workdir: Path) -> NoToolchain:
    directories, programs = toolchain()
    empty = workdir / "empty"
    empty.write_bytes(b"")
    return NoToolchain(empty, directories, programs)


def pipx_env(home: Path) -> dict[str, str]:
    """pipx's directories, all below the test user's ``home``."""
    return {"PIPX_HOME": str(home / "pipx"), "PIPX_BIN_DIR": str(home / "bin"),
            "PIPX_MAN_DIR": str(home / "man"), "PIPX_COMPLETION_DIR": str(home / "share"),
            "XDG_CACHE_HOME": str(home / "cache")}


@dataclass(frozen=True)
class Pipx:
    home: Path  # the test user's: pipx/, bin/, man/, share/ below it
    output: str  # what the user saw before installing, then pipx's report

    @property
    def venv(self) -> Path:
        return self.home / "pipx" / "venvs" / "wg-wrap"

    @property
    def libexec(self) -> Path:
        return next(self.venv.glob("lib/python3*/site-packages/wg_wrap")) / "_libexec"


# What the user sees first: which compiler runs (`go version`, `gcc --version`),
# which network interface there is.
PROBE = """for c in "$@"; do
    if "$c" --version >/dev/null 2>&1 || "$c" version >/dev/null 2>&1; then echo "runs: $c"; fi
done
echo "interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' ')"
"""


@pytest.fixture(scope="module")
def pipx_installed(
    workdir: Path, tools: Path, build_a: Build, test_user: User, no_toolchain: NoToolchain
) -> Pipx:
    """`pipx install` of the x86_64 wheel as the test user, with no compiler,
    no Go and no network: pip may only take wheels, from a local directory
    where root put the wheel and its dependencies (and a pip for pipx's
    shared environment), downloaded beforehand."""
    wheelhouse = workdir / "wheelhouse"
    run([tools / "python", "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--only-binary=:all:", "--dest", wheelhouse, "pip>=23.1", *runtime_dependencies()],
        timeout=600)
    wheel = Path(shutil.copy2(build_a.wheel("x86_64"), wheelhouse))
    home = workdir / "user"
    home.mkdir()
    os.chown(home, test_user.uid, test_user.gid)
    names = ["gcc", "cc", "c++", "cpp", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc",
             "musl-gcc", "clang", "tcc", "go", "/usr/local/go/bin/go", GO, *no_toolchain.programs]
    script = PROBE + ('exec "$0" -m pipx install --python /usr/bin/python3 '
                      '--pip-args="$PIP_ARGS" "$WHEEL"')
    env = user_env(extra={**pipx_env(home), "WHEEL": str(wheel),
                          "PIP_ARGS": f"--no-index --find-links={wheelhouse} --only-binary=:all:"})
    done = subprocess.run(
        no_toolchain.argv(test_user, ["sh", "-c", script, str(tools / "python"), *names],
                          network=False),
        env=env, cwd="/", capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    return Pipx(home, done.stdout)


@pytest.mark.e2e
def test_pipx_installs_the_wheel_with_no_compiler_no_go_and_no_network(
    pipx_installed: Pipx, unpacked: dict[str, Path]
) -> None:
    output = pipx_installed.output
    assert "runs:" not in output and "\ninterfaces: lo \n" in "\n" + output, output
    assert f"installed package wg-wrap {VERSION}" in output, output
    # the wheel's own static helpers, not something built on the way
    for name in BINARIES:
        assert filecmp.cmp(pipx_installed.libexec / name, unpacked["x86_64"] / name,
                           shallow=False), name
    # and its dependencies, from the wheelhouse
    sites = list(pipx_installed.venv.glob("lib/python3*/site-packages"))
    assert sites and {p.name.split("-")[0].lower() for p in sites[0].glob("*.dist-info")} >= {
        "wg_wrap", "pyroute2", "psutil", "tomli_w"}


@pytest.mark.e2e
def test_pipx_exposes_the_man_page_and_the_completions(pipx_installed: Pipx) -> None:
    home = pipx_installed.home
    for exposed, committed in (
        (home / "man/man1/wg-wrap.1", "packaging/man/wg-wrap.1"),
        (home / "share/bash-completion/completions/wg-wrap", "packaging/completions/wg-wrap.bash"),
        (home / "share/zsh/site-functions/_wg-wrap", "packaging/completions/_wg-wrap"),
        (home / "share/fish/vendor_completions.d/wg-wrap.fish",
         "packaging/completions/wg-wrap.fish"),
    ):
        assert exposed.is_symlink(), exposed
        assert Path(os.path.realpath(exposed)).is_relative_to(pipx_installed.venv), exposed
        assert filecmp.cmp(exposed, REPO / committed, shallow=False), exposed


def as_user_without_toolchain(
    no_toolchain: NoToolchain, user: User, pipx: Pipx, argv: Sequence[str],
    runtime: Path | None = None, timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    env = user_env(runtime, {"PATH": f"{pipx.home / 'bin'}:/usr/bin:/bin"})
    return subprocess.run(no_toolchain.argv(user, argv, network=True), env=env, cwd="/",
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_the_pipx_installed_wg_wrap_runs_a_tunnel_with_no_toolchain(
    pipx_installed: Pipx,
    no_toolchain: NoToolchain,
    test_user: User,
    wgwrap_server: Server,
    user_tmp: Path,
    user_runtime_dir: Path,
) -> None:
    """--version, doctor, and a page fetched through a tunnel to a wg-wrap peer."""
    def wg_wrap(*args: str) -> subprocess.CompletedProcess[str]:
        return as_user_without_toolchain(no_toolchain, test_user, pipx_installed,
                                         ["wg-wrap", *args], user_runtime_dir)

    version = wg_wrap("--version")
    assert version.returncode == 0, version.stderr
    assert_version_report(version.stdout, pipx_installed.libexec)

    doctor = wg_wrap("doctor")
    assert doctor.returncode == 0, (doctor.stdout, doctor.stderr)
    assert f"ok    helper programs: {pipx_installed.libexec} (version {VERSION})" in doctor.stdout
    assert "all good" in doctor.stdout

    conf = user_tmp / "client.conf"
    conf.write_text(wgwrap_server.client_config())
    os.chown(conf, test_user.uid, test_user.gid)
    conf.chmod(0o600)
    net = wgwrap_server.net
    fetched = wg_wrap("run", "-c", str(conf), "--", "curl", "-sS", "--max-time", "10",
                      f"http://{net.server4}:8080/")
    assert fetched.returncode == 0, fetched.stderr
    assert f"the peer sees you as {net.client4}" in fetched.stdout
    assert wgwrap_server.log.wait_for(f"http {net.client4} /", 5)

