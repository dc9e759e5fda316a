"""Shared fixtures: the staged install and the unprivileged test user.

Tests run as root (CI does), but everything wg-wrap does is run as an
unprivileged user through ``setpriv``: root must never mask a bug.  That user
cannot read a checkout under a 0700 home directory, so ``make test`` first
stages a world-readable install (``scripts/stage.sh``): a virtual environment
with wg-wrap installed by ``make install`` into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STAGE = Path(os.environ.get("WG_WRAP_STAGE", "/var/tmp/wg-wrap-stage"))
TEST_USER = os.environ.get("WG_WRAP_TEST_USER", "wgwrap-test")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test that fails with a WireGuard peer in its fixtures shows that
    peer's state and log (taken before the fixtures are torn down), so that a
    failure seen once, in CI, can be understood from its output."""
    report = yield
    if report.when != "call" or not report.failed:
        return report
    for name, value in getattr(item, "funcargs", {}).items():
        diagnostics = getattr(value, "diagnostics", None)
        if callable(diagnostics) and hasattr(value, "client_config"):
            report.sections.append((f"peer {name} ({value.name})", diagnostics()))
    return report


@dataclass(frozen=True)
class Stage:
    """A world-readable install of wg-wrap that the test user can run."""

    root: Path
    python: Path
    libexec: Path

    @property
    def launcher(self) -> Path:
        return self.libexec / "wg-wrap-launcher"

    @property
    def sidecar(self) -> Path:
        return self.libexec / "wg-wrap-sidecar"

    def wg_wrap(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "wg_wrap", *args]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@pytest.fixture(scope="session")
def stage() -> Stage:
    venv = STAGE / "venv"
    s = Stage(root=STAGE, python=venv / "bin" / "python", libexec=venv / "libexec" / "wg-wrap")
    missing = [p for p in (s.python, s.launcher, s.sidecar) if not p.exists()]
    if missing:
        pytest.fail(
            f"staged install missing ({', '.join(map(str, missing))}): "
            "run the tests with `make test`, which stages it (scripts/stage.sh)",
            pytrace=False,
        )
    return s


@pytest.fixture(scope="session")
def test_user() -> User:
    if os.geteuid() != 0:
        pytest.fail(
            "end-to-end tests run as root and drop to an unprivileged user; "
            "run `make test` as root",
            pytrace=False,
        )
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        pw = pwd.getpwnam(TEST_USER)
    tun = Path("/dev/net/tun")
    if not tun.exists() or stat.S_IMODE(tun.stat().st_mode) & 0o006 != 0o006:
        pytest.fail(
            "/dev/net/tun must exist with mode 0666 as on standard distributions "
            "(`chmod 0666 /dev/net/tun`; .ci/run does it)",
            pytrace=False,
        )
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid)


def user_env(
    runtime_dir: Path | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    if extra:
        env.update(extra)
    return env


def as_user_argv(user: User, argv: Sequence[str]) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--", *argv]


def run_as_user(
    user: User,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path = "/",
    timeout: float = 60,
    check: bool = False,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv as the unprivileged test user and capture its output."""
    return subprocess.run(
        as_user_argv(user, argv),
        env=env if env is not None else user_env(),
        cwd=cwd,
        timeout=timeout,
        check=check,
        input=input,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def wgwrap_server(stage: Stage, test_user: User) -> Iterator[Any]:
    """A second wg-wrap as the WireGuard server peer (tests/peers.py)."""
    from peers import WgWrapServer, next_net

    server = WgWrapServer(stage, test_user, next_net())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["wg-wrap", pytest.param("wireguard-go", marks=pytest.mark.interop)])
def server(request: pytest.FixtureRequest, stage: Stage, test_user: User) -> Iterator[Any]:
    """Each peer in turn: a second wg-wrap, and Debian's wireguard-go (interop)."""
    if request.param == "wg-wrap":
        yield request.getfixturevalue("wgwrap_server")
        return
    from peers import StockServer, next_net

    need_interop_tools()
    srv = StockServer(stage, next_net())
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def private_dir(user: User, prefix: str) -> Iterator[Path]:
    """A fresh 0700 directory owned by the test user, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(path, user.uid, user.gid)
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def user_runtime_dir(test_user: User) -> Iterator[Path]:
    """A fresh XDG_RUNTIME_DIR (0700, owned by the test user)."""
    with private_dir(test_user, "wg-wrap-xdg-") as path:
        yield path


@pytest.fixture
def user_tmp(test_user: User) -> Iterator[Path]:
    """A scratch directory the test user can read and write (configs go here)."""
    with private_dir(test_user, "wg-wrap-test-") as path:
        yield path


def _helpers_of(user: User, runtime_dir: Path, aftercare: bool) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != user.uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if aftercare:
            mine = argv[0].endswith(b"wg-wrap-launcher") and b"aftercare" in argv[1:4]
        else:
            mine = argv[0].endswith(b"wg-wrap-sidecar")
        if mine and any(a.startswith(bytes(runtime_dir)) for a in argv):
            found.add(int(entry))
    return found


def sidecars_of(user: User, runtime_dir: Path) -> set[int]:
    """The user's sidecars serving profiles under runtime_dir.

    Other tests (and the wg-wrap server peer) run sidecars as the same user:
    only those whose arguments name this runtime directory count.
    """
    return _helpers_of(user, runtime_dir, aftercare=False)


def aftercares_of(user: User, runtime_dir: Path) -> set[int]:
    """The aftercare processes (`wg-wrap-launcher aftercare`) of those profiles."""
    return _helpers_of(user, runtime_dir, aftercare=True)


class Tool:
    """wg-wrap as the test user, with one runtime directory and a scratch
    directory for its files."""

    def __init__(self, stage: Stage, user: User, runtime: Path, workdir: Path) -> None:
        self.stage, self.user, self.runtime, self.workdir = stage, user, runtime, workdir
        self.services: list[subprocess.Popen[str]] = []

    def __call__(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_as_user(self.user, self.stage.wg_wrap(*args),
                           env=user_env(self.runtime, env), timeout=timeout)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            as_user_argv(self.user, self.stage.wg_wrap(*args)),
            env=user_env(self.runtime, env), cwd="/",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def file(self, name: str, text: str, mode: int = 0o600) -> Path:
        path = self.workdir / name
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.gid)
        path.chmod(mode)
        return path

    def conf(self, text: str, name: str = "wg0.conf") -> Path:
        return self.file(name, text)

    @property
    def state_dir(self) -> Path:
        return self.runtime / "wg-wrap"

    def profiles(self) -> list[str]:
        return sorted(p.name for p in self.state_dir.iterdir()) if self.state_dir.exists() else []

    def sidecars(self) -> set[int]:
        """Sidecars of this runtime directory's profiles."""
        return sidecars_of(self.user, self.runtime)

    def wait_gone(self, timeout: float) -> bool:
        """True once no sidecar, aftercare or profile directory is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sidecars() and not self.profiles() and \
                    not aftercares_of(self.user, self.runtime):
                return True
            time.sleep(0.05)
        return False

    def status(self, name: str) -> dict[str, Any]:
        result = self("status", "--json", name)
        assert result.returncode == 0, result.stderr
        (info,) = json.loads(result.stdout)
        assert isinstance(info, dict)
        return info

    def inside(self, name: str, code: str, *args: str) -> Any:
        """Run a Python service inside profile NAME; wait for it to print
        'ready'; returns its peers.LineLog."""
        from peers import READY_TIMEOUT, LineLog

        proc = self.popen("exec", name, "--", str(self.stage.python), "-c", code, *args)
        self.services.append(proc)
        log = LineLog(proc.stdout)
        if not log.wait_for("ready", READY_TIMEOUT):
            proc.terminate()
            proc.wait(10)
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the service inside did not start: {err}")
        return log

    def cleanup(self) -> None:
        for proc in self.services:
            if proc.poll() is None:
                proc.terminate()  # the service itself: wg-wrap became it
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for name in self.profiles():
            self("down", "--force", name)
        for pid in self.sidecars():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def tool(stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path) -> Iterator[Tool]:
    t = Tool(stage, test_user, user_runtime_dir, user_tmp)
    try:
        yield t
    finally:
        t.cleanup()


INTEROP_TOOLS = ("wireguard-go", "wg")


def need_interop_tools() -> None:
    """Tests marked `interop` need Debian's wireguard-go and wireguard-tools.

    They are optional tooling: without them the test is skipped, saying so,
    except in CI (CI=true), where .ci/run installs them and a missing tool is
    a failure, never a silent skip.
    """
    missing = [t for t in INTEROP_TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.append("root (the stock peer creates its TUN as root)")
    if not missing:
        return
    message = (f"interop test needs {', '.join(missing)}: "
               "`apt-get install wireguard-go wireguard-tools` (.ci/run does)")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
