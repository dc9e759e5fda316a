"""Distribution packages: the .deb, the .rpm and the PKGBUILD.

Each is built from the `make dist` tarball the way a distribution's builder
does it, offline: the .deb inside a network namespace with nothing but `lo`,
with an empty Go build and module cache and a fresh $HOME. The .deb then
installs with apt-get, works for the unprivileged test user through a real
tunnel, and `apt-get purge` leaves nothing behind. The .rpm and the Arch
package must ship the same files as the .deb (modulo where each distribution
puts them) and their helpers must run.

Other engineers' tools fall back on /usr/libexec/wg-wrap: the package is
installed only for as long as a test needs it, and always purged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Stage, User, run_as_user, user_env
from test_install import assert_version_report, clean_env

import wg_wrap
from wg_wrap import paths

REPO = Path(__file__).resolve().parent.parent
VERSION = wg_wrap.__version__
BUILD_TIMEOUT = 1500  # a cold Go build on a busy 2-core machine
APT_OPTIONS = ("-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600")
PACKAGE = "wg-wrap"
LIBEXEC = Path("/usr/libexec/wg-wrap")
APPARMOR_DIR = Path("/etc/apparmor.d")
PROFILE = APPARMOR_DIR / "wg-wrap-launcher"
# Where the package's files could go besides dpkg's own lists: searched for
# anything named after wg-wrap before the install and after the purge.
SEARCHED = ("/usr", "/etc", "/var/cache", "/var/lib", "/opt")
# (/usr/local is never a package's; other engineers' tools may come and go there.)
NOT_SEARCHED = (
    "/usr/local", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/cache/debconf",
)


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | str = "/",
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env if env is not None else clean_env(),
        capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, (argv, result.stdout[-4000:], result.stderr[-4000:])
    return result


def need(*tools: str) -> None:
    """Package tests run as root with Debian's packaging tools (.ci/run installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root")
    if missing:
        pytest.fail(
            f"package tests need {', '.join(missing)}: run `make test` as root on Debian with "
            "debhelper, dh-python, dh-apparmor, lintian, rpm, cpio and Go >= 1.23 installed "
            "(.ci/run does)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A world-readable scratch directory: apt's sandbox user and the test user
    read what is built there (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="wg-wrap-packages-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def offline_build_env(root: Path) -> dict[str, str]:
    """No Go cache, no module cache, no home directory cache: what the build
    needs must come from the tarball."""
    env = clean_env()
    for name in ("HOME", "GOCACHE", "GOMODCACHE", "GOPATH"):
        directory = root / name.lower()
        directory.mkdir(parents=True)
        env[name] = str(directory)
    env["LC_ALL"] = "C.UTF-8"
    return env


# Run in a new network namespace: only `lo`, and it is down. The interfaces it
# saw are written first, so the test can tell the network really was gone.
OFFLINE = (
    "awk -F: 'NR > 2 { gsub(/ /, \"\", $1); print $1 }' /proc/net/dev > \"$1\" && "
    "shift && exec \"$@\""
)


def make_offline(target: str, distdir: Path, *variables: str) -> list[str]:
    """`make TARGET` in a network namespace of its own; returns the interfaces it had."""
    seen = distdir / f"{target}-interfaces"
    run(
        ["unshare", "--net", "--", "sh", "-c", OFFLINE, "offline", seen,
         "make", "-C", REPO, target, f"DISTDIR={distdir}", *variables],
        env=offline_build_env(distdir / f"{target}-env"), timeout=BUILD_TIMEOUT,
    )
    return seen.read_text().split()


def deb_arch() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


@dataclass(frozen=True)
class DebBuild:
    deb: Path
    changes: Path
    interfaces: list[str]


@pytest.fixture(scope="module")
def deb_build(workdir: Path) -> DebBuild:
    need("dpkg-buildpackage", "dh", "dh_python3", "dh_apparmor", "unshare", "go")
    distdir = workdir / "deb"
    distdir.mkdir()
    interfaces = make_offline("deb", distdir)
    deb = distdir / f"{PACKAGE}_{VERSION}-1_{deb_arch()}.deb"
    assert deb.is_file(), sorted(p.name for p in distdir.iterdir())
    return DebBuild(deb, deb.with_suffix(".changes"), interfaces)


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "--field", deb, field]).stdout.strip()


def deb_files(deb: Path) -> set[str]:
    """The paths of the files (not directories) in a .deb."""
    listing = run(["dpkg-deb", "--contents", deb]).stdout.splitlines()
    return {
        line.split(None, 5)[5].removeprefix(".").split(" -> ")[0]
        for line in listing if not line.startswith("d")
    }


@pytest.fixture(scope="module")
def make_install_files(workdir: Path) -> set[str]:
    """What `make install` stages for a Debian package, from the dist tarball."""
    root = workdir / "make-install"
    root.mkdir()
    run(["make", "-C", REPO, "dist", f"DISTDIR={root}"])
    run(["tar", "-xzf", root / f"wg-wrap-{VERSION}.tar.gz", "-C", root])
    destdir = root / "destdir"
    run(
        ["make", "install", f"DESTDIR={destdir}", "PREFIX=/usr", "LIBEXECDIR=/usr/libexec",
         "ZSHCOMPDIR=/usr/share/zsh/vendor-completions", "PYTHON=/usr/bin/python3"],
        cwd=root / f"wg-wrap-{VERSION}", timeout=BUILD_TIMEOUT,
    )
    return {"/" + str(p.relative_to(destdir)) for p in destdir.rglob("*") if not p.is_dir()}


SITE = re.compile(r"^/usr/lib/python3[^/]*/(site|dist)-packages/")
# zsh's completions: Debian's zsh reads vendor-completions, the others site-functions
ZSH = re.compile(r"^/usr/share/zsh/(vendor-completions|site-functions)/")
# What packaging adds or rearranges and is no product file: byte code (made at
# install time by Debian, at build time by Fedora and Arch), pip's and rpm's
# bookkeeping, the distributions' documentation, license and lintian directories, rpm's
# build-id links.
BOOKKEEPING = re.compile(
    r"/__pycache__/|\.dist-info/(RECORD|INSTALLER|REQUESTED|direct_url\.json)$"
    r"|^/usr/share/(doc|licenses|lintian/overrides)/|^/usr/lib/\.build-id/"
)


def product_files(files: set[str], libexec: str = "/usr/libexec/wg-wrap") -> set[str]:
    """Files as a distribution-neutral set: one name for the Python site
    directory, zsh's completion directory and the helpers' directory, man
    pages without compression."""
    product = set()
    for name in files:
        if BOOKKEEPING.search(name):
            continue
        name = SITE.sub("<site>/", name)
        name = ZSH.sub("<zsh>/", name)
        name = name.replace(libexec + "/", "<libexec>/")
        if name.startswith("/usr/share/man/"):
            name = name.removesuffix(".gz")
        product.add(name)
    return product


# ---- one version everywhere -----------------------------------------------------------


def test_every_package_is_of_this_version() -> None:
    changelog = (REPO / "packaging/debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"wg-wrap ({VERSION}-1) "), changelog
    spec = (REPO / "packaging/rpm/wg-wrap.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(VERSION)}$", spec, re.M)
    assert f"\npkgver={VERSION}\n" in (REPO / "packaging/arch/PKGBUILD").read_text()


def test_every_package_carries_the_projects_license() -> None:
    """LICENSE is the Expat text debian/copyright gives for wg-wrap's own files
    (the .rpm and the PKGBUILD install LICENSE itself: tested with their payloads)."""
    def words(text: str) -> list[str]:
        return text.split()

    license_text = (REPO / "LICENSE").read_text()
    assert "Copyright (c) 2026 the wg-wrap authors" in license_text
    copyright_text = (REPO / "packaging/debian/copyright").read_text()
    assert re.search(r"^Files: \*\nCopyright: 2026 the wg-wrap authors\nLicense: Expat$",
                     copyright_text, re.M)
    # the stand-alone paragraph: "License: Expat" and its indented text
    paragraph = re.search(r"^License: Expat\n((?: .*\n?)+)", copyright_text, re.M)
    assert paragraph, "debian/copyright has no Expat text"
    expat = [line for line in paragraph[1].splitlines() if line.strip() != "."]
    permission = license_text[license_text.index("Permission is hereby"):]
    assert words("\n".join(expat)) == words(permission)


# ---- the .deb ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_deb_builds_offline_from_the_dist_tarball(deb_build: DebBuild) -> None:
    assert deb_build.interfaces == ["lo"], "the build had a network"
    assert deb_field(deb_build.deb, "Package") == PACKAGE
    assert deb_field(deb_build.deb, "Version") == f"{VERSION}-1"
    assert deb_field(deb_build.deb, "Architecture") == deb_arch()
    depends = {d.strip().split()[0] for d in deb_field(deb_build.deb, "Depends").split(",")}
    # Debian's own Python libraries (from the package's metadata, by dh_python3)
    assert {"python3-pyroute2", "python3-psutil", "python3-tomli-w"} <= depends, depends
    assert "python3:any" in depends or "python3" in depends, depends


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_lintian_reports_no_errors(deb_build: DebBuild) -> None:
    need("lintian")
    result = subprocess.run(
        ["lintian", "--pedantic", "--fail-on", "error", deb_build.changes],
        capture_output=True, text=True, timeout=600,
    )
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIPXO]: ", line)]
    assert result.returncode == 0 and not [t for t in tags if t.startswith("E: ")], (
        tags, result.stderr)


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_deb_ships_what_make_install_installs(
    deb_build: DebBuild, make_install_files: set[str]
) -> None:
    """Whatever `make install` installs (man page, completions, unit, profile…)
    is in the package, and nothing else but Debian's documentation."""
    shipped = deb_files(deb_build.deb)
    assert product_files(shipped) == product_files(make_install_files)
    for expected in (
        "/usr/bin/wg-wrap",
        f"{LIBEXEC}/{paths.LAUNCHER}",
        f"{LIBEXEC}/{paths.SIDECAR}",
        "/usr/lib/python3/dist-packages/wg_wrap/__init__.py",
        "/usr/lib/systemd/user/wg-wrap@.service",
        "/usr/share/wg-wrap/apparmor/wg-wrap-launcher",
        "/usr/share/doc/wg-wrap/copyright",
    ):
        assert expected in shipped, expected
    # nothing in /etc/apparmor.d: postinst copies the profile only where AppArmor 4 is
    assert not [f for f in shipped if f.startswith("/etc/")]
    assert not [f for f in shipped if "__pycache__" in f]


def tree(roots: Sequence[str] = SEARCHED) -> set[str]:
    """Every path below roots whose name says wg-wrap (dpkg's and apt's own
    databases excepted)."""
    found = set()
    for root in roots:
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(directory, d) not in NOT_SEARCHED]
            for name in dirs + files:
                if "wg-wrap" in name or "wg_wrap" in name:
                    found.add(os.path.join(directory, name))
    return found


def listing(directory: Path) -> set[str]:
    return {str(p) for p in directory.rglob("*")} if directory.exists() else set()


def apt_get(*args: str, timeout: float = 900) -> None:
    env = clean_env(DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", *APT_OPTIONS, *args], env=env, timeout=timeout)


def known_to_dpkg() -> bool:
    """Installed, or removed with its configuration left (both need a purge)."""
    status = subprocess.run(
        ["dpkg-query", "--show", "--showformat=${db:Status-Status}", PACKAGE],
        capture_output=True, text=True, timeout=60,
    )
    return status.stdout.strip() not in ("", "not-installed")


@dataclass(frozen=True)
class Before:
    tree: set[str]
    apparmor: set[str]


@contextlib.contextmanager
def deb_installed(deb: Path) -> Iterator[Before]:
    """The .deb installed with apt-get for the duration, always purged after,
    and what the machine looked like before it."""
    if known_to_dpkg():  # left by an interrupted run
        apt_get("purge", PACKAGE)
    assert not LIBEXEC.exists(), f"{LIBEXEC} exists with no {PACKAGE} package installed"
    before = Before(tree(), listing(APPARMOR_DIR))
    try:
        apt_get("install", str(deb))
        yield before
    finally:
        if known_to_dpkg():
            apt_get("purge", PACKAGE)


def assert_nothing_left(before: Before, shipped: set[str]) -> None:
    assert not known_to_dpkg()
    assert not list(Path("/var/lib/dpkg/info").glob(f"{PACKAGE}.*"))
    assert not LIBEXEC.exists()
    assert [f for f in shipped if os.path.lexists(f) and f not in before.tree] == []
    assert tree() - before.tree == set()
    assert listing(APPARMOR_DIR) == before.apparmor


def write_user_conf(directory: Path, user: User, text: str) -> Path:
    conf = directory / "client.conf"
    conf.write_text(text)
    os.chown(conf, user.uid, user.gid)
    conf.chmod(0o600)
    return conf


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 900)
def test_installed_deb_runs_a_program_through_a_tunnel_and_purge_leaves_nothing(
    deb_build: DebBuild,
    wgwrap_server: object,
    stage: Stage,
    test_user: User,
    user_tmp: Path,
    user_runtime_dir: Path,
) -> None:
    need("apt-get", "curl")
    server = wgwrap_server
    net = server.net  # type: ignore[attr-defined]
    conf = write_user_conf(user_tmp, test_user, server.client_config())  # type: ignore[attr-defined]
    shipped = deb_files(deb_build.deb)
    with deb_installed(deb_build.deb) as before:
        command = Path("/usr/bin/wg-wrap")
        assert command.read_text().startswith("#!/usr/bin/python3\n")
        # nothing of the profile on a machine without AppArmor 4 (Debian 12)
        assert not Path("/etc/apparmor.d/abi/4.0").exists()
        assert listing(APPARMOR_DIR) == before.apparmor

        version = run_as_user(test_user, [str(command), "--version"], env=user_env())
        assert version.returncode == 0, version.stderr
        assert_version_report(version.stdout, LIBEXEC)

        fetched = run_as_user(
            test_user,
            [str(command), "run", "-c", str(conf), "--", "curl", "-sS", "--max-time", "10",
             f"http://{net.server4}:8080/"],
            env=user_env(user_runtime_dir), timeout=90,
        )
        assert fetched.returncode == 0, fetched.stderr
        assert f"the peer sees you as {net.client4}" in fetched.stdout
        assert server.log.wait_for(f"http {net.client4} /", 5)  # type: ignore[attr-defined]
        # dh_python3 compiled the package at install time
        assert list(Path("/usr/lib/python3/dist-packages/wg_wrap/__pycache__").glob("*.pyc"))
    assert_nothing_left(before, shipped)


@contextlib.contextmanager
def apparmor_4_abi() -> Iterator[None]:
    """/etc/apparmor.d/abi/4.0 as on Ubuntu 24.04, for the duration."""
    abi = APPARMOR_DIR / "abi" / "4.0"
    assert not abi.exists(), f"{abi} exists: this test would remove it"
    created = [d for d in (APPARMOR_DIR, abi.parent) if not d.exists()]
    try:
        abi.parent.mkdir(parents=True, exist_ok=True)
        abi.write_text("# AppArmor 4.0 ABI, as far as the wg-wrap package's postinst cares\n")
        yield
    finally:
        abi.unlink(missing_ok=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 900)
def test_deb_installs_the_apparmor_profile_only_where_apparmor_4_is(
    deb_build: DebBuild,
) -> None:
    need("apt-get")
    shipped = deb_files(deb_build.deb)
    local = APPARMOR_DIR / "local" / "wg-wrap-launcher"
    with apparmor_4_abi():
        with deb_installed(deb_build.deb) as before:
            shipped_profile = Path("/usr/share/wg-wrap/apparmor/wg-wrap-launcher").read_text()
            assert PROFILE.read_text() == shipped_profile
            assert re.search(
                rf"^profile wg-wrap-launcher {LIBEXEC}/wg-wrap-launcher ", shipped_profile, re.M)
            assert local.is_file() and local.read_text() == ""  # dh_apparmor's local include
            apt_get("remove", PACKAGE)
            assert not PROFILE.exists()
            assert local.exists()  # site changes are kept until purge
        assert not local.exists()
        assert_nothing_left(before, shipped)


# ---- the .rpm ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rpm_build(workdir: Path) -> Path:
    """`make rpm` with Debian's rpmbuild (--nodeps: Fedora's build dependencies
    are no Debian packages), offline like the .deb."""
    need("rpmbuild", "unshare", "go")
    distdir = workdir / "rpm"
    distdir.mkdir()
    interfaces = make_offline("rpm", distdir, "RPMBUILD_FLAGS=--nodeps")
    assert interfaces == ["lo"], "the build had a network"
    rpms = sorted(distdir.glob(f"{PACKAGE}-{VERSION}-1*.rpm"))
    assert len(rpms) == 1, sorted(p.name for p in distdir.iterdir())
    return rpms[0]


def rpm_query(rpm: Path, *args: str) -> list[str]:
    return run(["rpm", "--query", "--package", *args, rpm]).stdout.splitlines()


def rpm_files(rpm: Path) -> set[str]:
    """The paths of the files (not directories) in an .rpm."""
    entries = rpm_query(rpm, "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\n]")
    return {line.split(" ", 1)[1] for line in entries if not line.startswith("d")}


@pytest.mark.e2e
@pytest.mark.timeout(2 * BUILD_TIMEOUT + 300)
def test_rpm_ships_the_same_files_as_the_deb(rpm_build: Path, deb_build: DebBuild) -> None:
    files = rpm_files(rpm_build)
    assert product_files(files) == product_files(deb_files(deb_build.deb))
    # %license's directory: wg-wrap on Fedora, wg-wrap-VERSION under Debian's rpm macros
    licenses = sorted(f for f in files if "/licenses/" in f)
    assert {"/usr/share/licenses/wg-wrap/LICENSE",
            f"/usr/share/licenses/wg-wrap-{VERSION}/LICENSE"} & set(licenses), licenses
    requires = {r.split()[0] for r in rpm_query(rpm_build, "--requires")}
    assert {"python3", "python3-pyroute2", "python3-psutil", "python3-tomli-w"} <= requires
    assert rpm_query(rpm_build, "--queryformat", "%{VERSION}\n") == [VERSION]


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_rpm_payload_is_a_working_wg_wrap(rpm_build: Path, workdir: Path) -> None:
    """Unpacked (rpm2cpio | cpio), its helpers run and its command finds them."""
    need("rpm2cpio", "cpio")
    root = workdir / "rpm-payload"
    root.mkdir()
    run(["sh", "-c", 'rpm2cpio "$1" | cpio --extract --make-directories --quiet', "unpack",
         rpm_build], cwd=root)
    libexec = root / "usr/libexec/wg-wrap"
    launcher = run([libexec / paths.LAUNCHER, "--version"]).stdout
    assert launcher == f"{paths.LAUNCHER} {VERSION}\n"
    sidecar = run([libexec / paths.SIDECAR, "--version"]).stdout
    assert sidecar.startswith(f"{paths.SIDECAR} {VERSION} (wireguard-go v"), sidecar
    packages = [p.parent for p in root.rglob("wg_wrap/__init__.py")]
    assert len(packages) == 1, packages
    env = clean_env(PYTHONPATH=str(packages[0].parent))
    version = run([root / "usr/bin/wg-wrap", "--version"], env=env)
    assert_version_report(version.stdout, libexec)


# ---- the PKGBUILD --------------------------------------------------------------------

PKGBUILD = REPO / "packaging" / "arch" / "PKGBUILD"
# makepkg.conf's flags on Arch (x86_64), plus -frecord-gcc-switches so that
# the launcher tells which flags it was built with.
ARCH_FLAGS = {
    "CPPFLAGS": "",
    "CFLAGS": "-march=x86-64 -mtune=generic -O2 -pipe -fno-plt -fexceptions "
    "-Wp,-D_FORTIFY_SOURCE=3 -Wformat -Werror=format-security -fstack-clash-protection "
    "-frecord-gcc-switches",
    "LDFLAGS": "-Wl,-O1 -Wl,--sort-common -Wl,--as-needed -Wl,-z,relro -Wl,-z,now "
    "-Wl,-z,pack-relative-relocs",
}
# What makepkg does, minus the download and the tarball: source the PKGBUILD,
# then run its functions from $srcdir with errexit.
MAKEPKG = 'set -e; source "$1"; for f in build check package; do cd "$srcdir"; "$f"; done'


def test_pkgbuild_is_valid_bash() -> None:
    run(["bash", "-n", PKGBUILD])


@pytest.fixture(scope="module")
def arch_package(workdir: Path) -> Path:
    """The PKGBUILD's build(), check() and package() on the extracted dist
    tarball, offline; returns $pkgdir."""
    need("bash", "unshare", "go")
    root = workdir / "arch"
    srcdir, pkgdir = root / "src", root / "pkg"
    srcdir.mkdir(parents=True)
    pkgdir.mkdir()
    run(["make", "-C", REPO, "dist", f"DISTDIR={root}"])
    run(["tar", "-xzf", root / f"wg-wrap-{VERSION}.tar.gz", "-C", srcdir])
    env = offline_build_env(root / "env")
    env.update(ARCH_FLAGS, srcdir=str(srcdir), pkgdir=str(pkgdir), CARCH="x86_64")
    run(["unshare", "--net", "--", "bash", "-c", MAKEPKG, "makepkg",
         srcdir / f"wg-wrap-{VERSION}" / "packaging" / "arch" / "PKGBUILD"],
        cwd=srcdir, env=env, timeout=BUILD_TIMEOUT)
    return pkgdir


@pytest.mark.e2e
@pytest.mark.timeout(2 * BUILD_TIMEOUT + 300)
def test_pkgbuild_packages_the_debs_files_the_arch_way(
    arch_package: Path, deb_build: DebBuild
) -> None:
    files = {"/" + str(p.relative_to(arch_package)) for p in arch_package.rglob("*")
             if not p.is_dir()}
    libexec = "/usr/lib/wg-wrap"  # Arch has no /usr/libexec
    assert product_files(files, libexec) == product_files(deb_files(deb_build.deb))
    license_file = arch_package / "usr/share/licenses/wg-wrap/LICENSE"
    assert license_file.read_text() == (REPO / "LICENSE").read_text()
    profile = (arch_package / "usr/share/wg-wrap/apparmor/wg-wrap-launcher").read_text()
    assert f" {libexec}/wg-wrap-launcher " in profile
    # nothing names the staging directory (pip's byte code would)
    leaks = subprocess.run(["grep", "-rlF", str(arch_package), str(arch_package)],
                           capture_output=True, text=True, timeout=120)
    assert leaks.returncode == 1 and leaks.stdout == "", leaks.stdout
    assert list(arch_package.rglob("wg_wrap/__pycache__/*.pyc"))


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_pkgbuild_stages_a_working_wg_wrap_built_with_arch_flags(arch_package: Path) -> None:
    libexec = arch_package / "usr/lib/wg-wrap"
    launcher, sidecar = libexec / paths.LAUNCHER, libexec / paths.SIDECAR
    assert run([launcher, "--version"]).stdout == f"{paths.LAUNCHER} {VERSION}\n"
    assert run([sidecar, "--version"]).stdout.startswith(f"{paths.SIDECAR} {VERSION} ")
    packages = [p.parent for p in arch_package.rglob("wg_wrap/__init__.py")]
    assert len(packages) == 1, packages
    env = clean_env(PYTHONPATH=str(packages[0].parent))
    assert_version_report(
        run([arch_package / "usr/bin/wg-wrap", "--version"], env=env).stdout, libexec)
    # makepkg's CFLAGS reached the C launcher…
    switches = run(["readelf", "--string-dump=.GCC.command.line", launcher]).stdout
    assert "-fstack-clash-protection" in switches and "-fno-plt" in switches, switches
    # …and Arch's Go flags the sidecar
    build_info = run(["go", "version", "-m", sidecar]).stdout
    assert re.search(r"^\s*build\s+-buildmode=pie$", build_info, re.M), build_info
    assert re.search(r"^\s*build\s+-trimpath=true$", build_info, re.M), build_info
    # a GNU build ID for the debug symbols, derived from the package
    build_id = hashlib.sha1(f"wg-wrap-{VERSION}-1-x86_64".encode()).hexdigest()
    notes = run(["readelf", "--notes", sidecar]).stdout
    assert f"Build ID: {build_id}" in notes, notes


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_make_pkgbuild_puts_the_tarballs_sha256_beside_it(workdir: Path) -> None:
    distdir = workdir / "pkgbuild"
    run(["make", "-C", REPO, "pkgbuild", f"DISTDIR={distdir}"])
    tarball = distdir / f"wg-wrap-{VERSION}.tar.gz"
    digest = run(["sha256sum", tarball]).stdout.split()[0]
    written = (distdir / "PKGBUILD").read_text().splitlines()
    source = PKGBUILD.read_text().splitlines()
    assert "sha256sums=('SKIP')" in source
    assert written == [f"sha256sums=('{digest}')" if line == "sha256sums=('SKIP')" else line
                       for line in source]
    assert f"pkgver={VERSION}" in written
