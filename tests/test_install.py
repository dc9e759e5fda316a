"""Packaging: `pip install .`, `make install` and where wg-wrap finds its helpers.

The promises: ``pip install .`` builds the launcher (C) and the sidecar (Go) and
installs them inside the package; ``make install`` honours DESTDIR, PREFIX,
BINDIR and LIBEXECDIR and leaves the binaries out of the package; the tool finds
its binaries in the package, then next to its installation prefix, with
WG_WRAP_LIBEXEC_DIR overriding both; ``wg-wrap`` and ``python -m wg_wrap`` are
the same program; ``make`` is quiet unless V=1.

Every build works on a copy of the source tree made from ``git ls-files``, so
build artefacts of the checkout (build/, wg_wrap/_libexec/, *.egg-info) cannot
leak into what is tested, and into virtual environments made from Debian's
/usr/bin/python3 without system site-packages.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Stage

import wg_wrap
from wg_wrap import paths
from wg_wrap.errors import SetupError

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
BINARIES = (paths.LAUNCHER, paths.SIDECAR)
VERSION = wg_wrap.__version__


def assert_version_report(stdout: str, libexec: Path) -> None:
    """`wg-wrap --version`: ours, then each helper's with where it was found."""
    lines = stdout.splitlines()
    assert lines[0] == f"wg-wrap {VERSION}", stdout
    assert lines[1] == f"wg-wrap-launcher {VERSION}  [{libexec / paths.LAUNCHER}]", stdout
    assert re.fullmatch(
        rf"wg-wrap-sidecar {re.escape(VERSION)} \(wireguard-go v\S+, go[\d.]+\)  "
        rf"\[{re.escape(str(libexec / paths.SIDECAR))}\]",
        lines[2],
    ), stdout
    assert len(lines) == 3, stdout
# Variables of the calling environment that would change what is built or found.
SCRUBBED = (
    "WG_WRAP_LIBEXEC_DIR",
    "WG_WRAP_SKIP_BINARIES",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "V",
    "DESTDIR",
    "PREFIX",
    "BINDIR",
    "LIBEXECDIR",
    "PYTHON",
)
PRINT_LIBEXEC = "import wg_wrap.paths as p; print(p.__file__); print(p.libexec_dir())"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(extra)
    return env


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | str = "/",
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result


def copy_source(dest: Path) -> Path:
    """The source tree as git sees it: tracked files, plus untracked files that are
    not ignored (new modules not committed yet); no build artefacts."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in sorted(set(listed.split("\0")) - {""}):
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    for artefact in ("build", "dist", "wg_wrap/_libexec", "wg_wrap.egg-info"):
        assert not (dest / artefact).exists(), artefact
    assert (dest / "setup.py").is_file() and (dest / "launcher" / "wg-wrap-launcher.c").is_file()
    return dest


def make_venv(venv: Path, *packages: str) -> Path:
    """A fresh virtual environment from Debian's python; returns its interpreter."""
    run([SYSTEM_PYTHON, "-m", "venv", venv])
    python = venv / "bin" / "python"
    if packages:
        run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages])
    return python


def runtime_dependencies() -> list[str]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def assert_executable_file(path: Path, mode: int | None = None) -> None:
    assert path.is_file() and not path.is_symlink(), path
    assert os.access(path, os.X_OK), path
    if mode is not None:
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))


def assert_helpers_run(directory: Path) -> None:
    """Both helpers are the real programs, not just files with the right names."""
    launcher = subprocess.run(
        [str(directory / paths.LAUNCHER), "--version"], capture_output=True, text=True, timeout=30
    )
    assert launcher.returncode == 0 and launcher.stdout.startswith("wg-wrap-launcher "), launcher
    sidecar = subprocess.run(
        [str(directory / paths.SIDECAR), "-h"], capture_output=True, text=True, timeout=30
    )
    assert "usage: wg-wrap-sidecar" in sidecar.stderr, sidecar


# ---- pip install . ----------------------------------------------------------


@dataclass(frozen=True)
class PipInstall:
    source: Path
    venv: Path
    python: Path
    package: Path  # the installed wg_wrap directory


@pytest.fixture(scope="module")
def pip_installed(tmp_path_factory: pytest.TempPathFactory) -> PipInstall:
    """`pip install .` (build isolation, dependencies from PyPI or pip's cache)
    into a fresh venv."""
    root = tmp_path_factory.mktemp("pip-install")
    source = copy_source(root / "src")
    venv = root / "venv"
    python = make_venv(venv)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", source],
        timeout=900,
    )
    where = run([python, "-c", "import wg_wrap; print(wg_wrap.__file__)"], cwd=root)
    package = Path(where.stdout.strip()).parent
    assert package.parent.name == "site-packages" and package.is_relative_to(venv), package
    return PipInstall(source, venv, python, package)


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_pip_install_builds_both_helpers_into_the_package(pip_installed: PipInstall) -> None:
    libexec = pip_installed.package / "_libexec"
    for name in BINARIES:
        assert_executable_file(libexec / name, 0o755)
        # the very programs the Makefile built from this source tree
        assert filecmp.cmp(pip_installed.source / "build" / name, libexec / name, shallow=False)
    assert_helpers_run(libexec)


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_pip_installed_console_script_and_python_m_are_the_same_program(
    pip_installed: PipInstall,
) -> None:
    script = pip_installed.venv / "bin" / "wg-wrap"
    assert_executable_file(script)
    for args in (["--version"], ["--help"], ["run", "--help"]):
        by_script = run([script, *args])
        by_module = run([pip_installed.python, "-m", "wg_wrap", *args])
        assert by_script.stdout == by_module.stdout, args
        assert by_script.stderr == by_module.stderr == "", args
    assert_version_report(run([script, "--version"]).stdout, pip_installed.package / "_libexec")
    # and a usage error is reported the same way, with the same status
    errors = [
        subprocess.run(argv, capture_output=True, text=True, env=clean_env(), timeout=60, cwd="/")
        for argv in (
            [str(script), "--no-such-option"],
            [str(pip_installed.python), "-m", "wg_wrap", "--no-such-option"],
        )
    ]
    assert errors[0].returncode == errors[1].returncode == 2
    assert errors[0].stderr == errors[1].stderr != ""


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_pip_installed_tool_finds_its_helpers_in_the_package(pip_installed: PipInstall) -> None:
    found = run([pip_installed.python, "-c", PRINT_LIBEXEC], cwd=pip_installed.venv)
    module, libexec = found.stdout.splitlines()
    assert Path(module).parent == pip_installed.package
    assert Path(libexec) == pip_installed.package / "_libexec"


# ---- make install -------------------------------------------------------------


@dataclass(frozen=True)
class BuildEnv:
    source: Path
    python: Path  # a venv python with setuptools, wheel and the runtime dependencies


@pytest.fixture(scope="module")
def build_env(tmp_path_factory: pytest.TempPathFactory) -> BuildEnv:
    root = tmp_path_factory.mktemp("make-install")
    source = copy_source(root / "src")
    python = make_venv(root / "venv", "setuptools>=61", "wheel", *runtime_dependencies())
    return BuildEnv(source, python)


def make_install(build: BuildEnv, destdir: Path, **variables: str) -> None:
    argv = ["make", "install", f"DESTDIR={destdir}", f"PYTHON={build.python}"]
    argv += [f"{k}={v}" for k, v in variables.items()]
    run(argv, cwd=build.source, timeout=600)


def staged_package(destdir: Path) -> Path:
    """The one wg_wrap package pip wrote below destdir."""
    found = [p.parent for p in destdir.rglob("wg_wrap/__init__.py")]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.e2e
@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    ("variables", "libexec", "bindir"),
    [
        ({"PREFIX": "/usr"}, "usr/libexec/wg-wrap", "usr/bin"),
        (
            {"PREFIX": "/usr", "LIBEXECDIR": "/usr/lib", "BINDIR": "/usr/sbin",
             "ZSHCOMPDIR": "/usr/share/zsh/vendor-completions"},  # Debian's zsh directory
            "usr/lib/wg-wrap",
            "usr/sbin",
        ),
        ({"PREFIX": "/opt/wg-wrap"}, "opt/wg-wrap/libexec/wg-wrap", "opt/wg-wrap/bin"),
    ],
    ids=["prefix-usr", "libexecdir-bindir", "prefix-opt"],
)
def test_make_install_stages_into_destdir(
    build_env: BuildEnv,
    tmp_path: Path,
    variables: dict[str, str],
    libexec: str,
    bindir: str,
) -> None:
    destdir = tmp_path / "destdir"
    make_install(build_env, destdir, **variables)
    prefix = destdir / variables["PREFIX"].lstrip("/")

    # the helpers in $(LIBEXECDIR)/wg-wrap, 0755, and they run
    for name in BINARIES:
        assert_executable_file(destdir / libexec / name, 0o755)
    assert_helpers_run(destdir / libexec)

    # the package below the prefix, without the helpers (WG_WRAP_SKIP_BINARIES)
    package = staged_package(destdir)
    assert package.is_relative_to(prefix), package
    assert re.fullmatch(
        r"lib/python3\.\d+/(site|dist)-packages", str(package.parent.relative_to(prefix))
    ), package
    assert not (package / "_libexec").exists()
    assert not [p for p in package.rglob("*") if p.name in BINARIES]

    # the console script in $(BINDIR); the only other file of that name is
    # bash's completion
    script = destdir / bindir / "wg-wrap"
    assert_executable_file(script)
    assert script.read_text().startswith(f"#!{build_env.python}\n")
    share = prefix / "share"
    bash_completion = share / "bash-completion" / "completions" / "wg-wrap"
    assert sorted(p for p in destdir.rglob("wg-wrap") if p.is_file()) == sorted(
        [script, bash_completion]
    )

    # the man page and the completions as committed (`make docs`), where
    # man and each shell look for them: $(MANDIR)/man1, $(BASHCOMPDIR), ...
    zsh_dir = (destdir / variables["ZSHCOMPDIR"].lstrip("/") if "ZSHCOMPDIR" in variables
               else share / "zsh" / "site-functions")
    docs = {
        share / "man" / "man1" / "wg-wrap.1": "packaging/man/wg-wrap.1",
        bash_completion: "packaging/completions/wg-wrap.bash",
        zsh_dir / "_wg-wrap": "packaging/completions/_wg-wrap",
        share / "fish" / "vendor_completions.d" / "wg-wrap.fish":
            "packaging/completions/wg-wrap.fish",
    }
    for installed, source in docs.items():
        assert installed.is_file() and stat.S_IMODE(installed.stat().st_mode) == 0o644, installed
        assert filecmp.cmp(build_env.source / source, installed, shallow=False), installed

    # nothing outside the prefix (LIBEXECDIR and BINDIR are below it here)
    assert all(p.is_relative_to(prefix) for p in destdir.rglob("*") if not p.is_dir())

    # Before anything is moved into place: the staged package finds the staged
    # helpers relative to its own location, and the staged script runs.
    site = package.parent
    env = clean_env(PYTHONPATH=str(site))
    found = run([build_env.python, "-c", PRINT_LIBEXEC], cwd=tmp_path, env=env)
    module, found_libexec = found.stdout.splitlines()
    assert Path(module).parent == package
    assert Path(found_libexec) == destdir / libexec
    assert_version_report(run([script, "--version"], env=env).stdout, destdir / libexec)
    assert_version_report(
        run([build_env.python, "-m", "wg_wrap", "--version"], env=env).stdout, destdir / libexec
    )


def test_staged_install_finds_its_helpers(stage: Stage) -> None:
    """`make install` without DESTDIR (scripts/stage.sh, into a venv prefix)."""
    found = run([stage.python, "-c", PRINT_LIBEXEC])
    module, libexec = found.stdout.splitlines()
    assert Path(module).is_relative_to(stage.root)
    assert not (Path(module).parent / "_libexec").exists()
    assert Path(libexec) == stage.libexec
    for name in BINARIES:
        assert_executable_file(stage.libexec / name, 0o755)


# ---- where the helpers are looked for (unit) ----------------------------------


def stubs(directory: Path, names: Sequence[str] = BINARIES, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\nexit 0\n")
        (directory / name).chmod(mode)
    return directory


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """paths.py as if it sat in <tmp>/prefix/lib/python3.11/site-packages/wg_wrap;
    no system directory; returns the prefix."""
    prefix = tmp_path / "prefix"
    package = prefix / "lib" / "python3.11" / "site-packages" / "wg_wrap"
    package.mkdir(parents=True)
    monkeypatch.setattr(paths, "__file__", str(package / "paths.py"))
    monkeypatch.setattr(paths, "_SYSTEM_DIRS", ())
    monkeypatch.delenv("WG_WRAP_LIBEXEC_DIR", raising=False)
    return prefix


def test_override_wins_over_every_other_location(
    fake_install: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stubs(fake_install / "lib" / "python3.11" / "site-packages" / "wg_wrap" / "_libexec")
    stubs(fake_install / "libexec" / "wg-wrap")
    override = stubs(tmp_path / "dev")
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(override))
    assert Path(paths.libexec_dir()) == override
    assert Path(paths.launcher()) == override / "wg-wrap-launcher"
    assert Path(paths.sidecar()) == override / "wg-wrap-sidecar"


@pytest.mark.parametrize(
    ("present", "mode"),
    [
        ([paths.LAUNCHER], 0o755),
        ([paths.SIDECAR], 0o755),
        ([], 0o755),
        (list(BINARIES), 0o644),
    ],
    ids=["no-sidecar", "no-launcher", "empty", "not-executable"],
)
def test_an_override_without_both_helpers_is_an_error_naming_the_variable(
    fake_install: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    present: list[str],
    mode: int,
) -> None:
    """The override is not a hint: a broken one fails even though an install exists."""
    stubs(fake_install / "libexec" / "wg-wrap")
    override = stubs(tmp_path / "dev", present, mode)
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(override))
    with pytest.raises(SetupError) as error:
        paths.libexec_dir()
    assert str(override) in error.value.message
    assert "wg-wrap-launcher" in error.value.message and "wg-wrap-sidecar" in error.value.message
    assert error.value.hint is not None and "WG_WRAP_LIBEXEC_DIR" in error.value.hint


def test_no_helpers_anywhere_is_an_error_naming_the_variable(fake_install: Path) -> None:
    stubs(fake_install / "libexec" / "wg-wrap", [paths.LAUNCHER])  # half an install
    with pytest.raises(SetupError) as error:
        paths.launcher()
    assert str(fake_install / "libexec" / "wg-wrap") in error.value.message
    assert error.value.hint is not None and "WG_WRAP_LIBEXEC_DIR" in error.value.hint


@pytest.mark.parametrize(
    "location",
    ["lib/python3.11/site-packages/wg_wrap/_libexec", "libexec/wg-wrap", "lib/wg-wrap"],
)
def test_helpers_are_found_relative_to_the_package(fake_install: Path, location: str) -> None:
    directory = stubs(fake_install / location)
    assert Path(paths.libexec_dir()) == directory


def test_the_package_copy_comes_before_the_prefix_and_the_system(
    fake_install: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = stubs(tmp_path / "system" / "libexec" / "wg-wrap")
    monkeypatch.setattr(paths, "_SYSTEM_DIRS", (str(system),))
    assert Path(paths.libexec_dir()) == system
    libexec = stubs(fake_install / "libexec" / "wg-wrap")
    assert Path(paths.libexec_dir()) == libexec
    package = stubs(fake_install / "lib" / "python3.11" / "site-packages" / "wg_wrap" / "_libexec")
    assert Path(paths.libexec_dir()) == package


# ---- make is quiet unless V=1 -------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_make_is_quiet_unless_v_1(tmp_path: Path) -> None:
    source = copy_source(tmp_path / "src")
    quiet = run(["make", "binaries"], cwd=source, timeout=600)
    assert quiet.stdout == "  CC      build/wg-wrap-launcher\n  GO      build/wg-wrap-sidecar\n"
    assert quiet.stderr == ""  # no compiler warnings either
    for name in BINARIES:
        assert_executable_file(source / "build" / name)

    loud = run(["make", "-B", "V=1", "binaries"], cwd=source, timeout=600)
    lines = loud.stdout.splitlines()
    assert lines[0] == "  CC      build/wg-wrap-launcher"
    assert re.fullmatch(
        r"\S*(cc|gcc) .*-Werror .*-o build/wg-wrap-launcher launcher/wg-wrap-launcher\.c "
        r"launcher/aftercare\.c", lines[1]
    ), lines[1]
    assert lines[2] == "  GO      build/wg-wrap-sidecar"
    assert re.fullmatch(
        r"cd go-sidecar && .*GOPROXY=off .*go build -mod=vendor -trimpath .*"
        r"-o \.\./build/wg-wrap-sidecar \.", lines[3]
    ), lines
    assert len(lines) == 4 and loud.stderr == ""


@pytest.mark.e2e
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("prefix", ["/usr/local", "/usr"])
def test_make_install_with_the_system_interpreter_lands_on_its_sys_path(
    build_env: BuildEnv, tmp_path: Path, prefix: str
) -> None:
    """Debian's /usr/bin/python3 gives --prefix its own meaning (posix_local:
    <prefix>/local/...); the package must still land where that interpreter
    imports from, for a local install (/usr/local) and a package (/usr)."""
    python = "/usr/bin/python3"
    destdir = tmp_path / "destdir"
    run(["make", "install", f"DESTDIR={destdir}", f"PYTHON={python}", f"PREFIX={prefix}"],
        cwd=build_env.source, timeout=600)
    package = staged_package(destdir)
    installed_site = "/" + str(package.parent.relative_to(destdir))
    sys_path = run([python, "-c", "import sys; print('\\n'.join(sys.path))"], cwd=tmp_path)
    assert installed_site in sys_path.stdout.splitlines()
    assert (destdir / prefix.lstrip("/") / "bin" / "wg-wrap").is_file()
    env = clean_env(PYTHONPATH=str(package.parent))
    found = run([python, "-c", PRINT_LIBEXEC], cwd=tmp_path, env=env)
    libexec = destdir / prefix.lstrip("/") / "libexec" / "wg-wrap"
    assert Path(found.stdout.splitlines()[1]) == libexec
