"""Running as a service: configs found by name, and `up --foreground` with
sd_notify readiness (what `wg-wrap@.service` runs), as the unprivileged user
against a real wg-wrap server peer, with a real notify socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Stage, User, as_user_argv, run_as_user, sidecars_of, user_env
from peers import HTTP_PORT, WgWrapServer

from wg_wrap import notify

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 30.0


@dataclass
class Service:
    """wg-wrap as the test user with a config directory and a notify socket."""

    stage: Stage
    user: User
    runtime: Path
    home: Path
    notify: socket.socket

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "wg-wrap"

    def env(self, **extra: str) -> dict[str, str]:
        return user_env(self.runtime, {"HOME": str(self.home), **extra})

    def add_config(self, name: str, text: str) -> Path:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for d in (self.home / ".config", self.config_dir):
            os.chown(d, self.user.uid, self.user.gid)
        path = self.config_dir / f"{name}.conf"
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.gid)
        path.chmod(0o600)
        return path

    def __call__(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_as_user(self.user, self.stage.wg_wrap(*args), env=self.env(**extra))

    def foreground(self, name: str, *args: str) -> subprocess.Popen[str]:
        argv = self.stage.wg_wrap("up", "--foreground", "-n", name, *args)
        return subprocess.Popen(
            as_user_argv(self.user, argv), cwd="/", text=True,
            env=self.env(NOTIFY_SOCKET=self.notify.getsockname()),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def messages_until(self, wanted: str, timeout: float) -> list[dict[str, str]]:
        """Notify datagrams (as dicts) up to and including the one holding `wanted`."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            seen.append(dict(line.split("=", 1) for line in data.splitlines()))
            if wanted in seen[-1]:
                return seen
        raise AssertionError(f"no {wanted}= within {timeout} s; got {seen}")

    def sidecars(self) -> set[int]:
        return sidecars_of(self.user, self.runtime)

    def profiles(self) -> list[str]:
        state = self.runtime / "wg-wrap"
        return sorted(p.name for p in state.iterdir()) if state.exists() else []


@pytest.fixture
def service(
    stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path
) -> Iterator[Service]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = user_tmp / "notify.sock"
    sock.bind(str(path))
    os.chown(path, test_user.uid, test_user.gid)
    home = user_tmp / "home"
    home.mkdir()
    os.chown(home, test_user.uid, test_user.gid)
    s = Service(stage, test_user, user_runtime_dir, home, sock)
    try:
        yield s
    finally:
        sock.close()
        for name in s.profiles():
            s("down", "--force", name)
        for pid in s.sidecars():
            os.kill(pid, signal.SIGKILL)


def _curl(server: WgWrapServer) -> tuple[str, ...]:
    return ("curl", "-sS", "--max-time", "10", f"http://{server.net.server4}:{HTTP_PORT}/")


@contextlib.contextmanager
def _reaped(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``process``, killed at the end if the test left it running."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _end(process: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, err


# ---- configs by name ---------------------------------------------------------


def test_up_and_run_find_the_config_by_name(
    wgwrap_server: WgWrapServer, service: Service
) -> None:
    service.add_config("office", wgwrap_server.client_config())
    up = service("up", "-n", "office")
    assert up.returncode == 0 and up.stdout == "office\n", up.stderr
    # run -n on a running profile joins it, with no config needed
    run = service("run", "-n", "office", "--", *_curl(wgwrap_server))
    assert run.returncode == 0, run.stderr
    assert f"sees you as {wgwrap_server.net.client4}" in run.stdout
    status = json.loads(service("status", "--json", "office").stdout)
    assert status[0]["config"] == str(service.config_dir / "office.conf")
    assert service("down", "office").returncode == 0

    # XDG_CONFIG_HOME wins over ~/.config; run starts an ephemeral profile from it
    xdg = service.home / "xdg"
    (xdg / "wg-wrap").mkdir(parents=True)
    for d in (xdg, xdg / "wg-wrap"):
        os.chown(d, service.user.uid, service.user.gid)
    (service.config_dir / "office.conf").rename(xdg / "wg-wrap" / "office.conf")
    run = service("run", "-n", "office", "--", *_curl(wgwrap_server),
                  XDG_CONFIG_HOME=str(xdg))
    assert run.returncode == 0, run.stderr
    assert f"sees you as {wgwrap_server.net.client4}" in run.stdout


def test_a_missing_named_config_says_where_it_looked(service: Service) -> None:
    for argv in (("up", "-n", "nosuch"), ("run", "-n", "nosuch", "--", "true"),
                 ("up", "--foreground", "-n", "nosuch")):
        done = service(*argv)
        assert done.returncode == 1, argv
        path = service.config_dir / "nosuch.conf"
        assert done.stderr.splitlines()[0] == (
            f"wg-wrap: error: no config for profile 'nosuch': {path} does not exist"
        ), done.stderr
        assert "Traceback" not in done.stderr
    assert service.profiles() == [] and not service.sidecars()


def test_neither_config_nor_name_is_a_usage_error(service: Service) -> None:
    for argv in (("up",), ("run", "--", "true")):
        done = service(*argv)
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.startswith("wg-wrap: error: no config: give a config file with -c"), (
            done.stderr
        )
        assert str(service.config_dir) in done.stderr  # the hint says where -n looks


# ---- up --foreground ---------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_foreground_is_ready_after_the_handshake_and_stops_on_signal(
    wgwrap_server: WgWrapServer, service: Service, stop: signal.Signals
) -> None:
    service.add_config("wg0", wgwrap_server.client_config())
    process = service.foreground("wg0")
    with _reaped(process):
        messages = service.messages_until("READY", READY_TIMEOUT)
        assert messages[0] == {"STATUS": "starting"}
        assert messages[-1] == {"READY": "1", "STATUS": "profile wg0 is up"}
        # READY means the first handshake is done, and the tunnel carries traffic
        (info,) = json.loads(service("status", "--json", "wg0").stdout)
        assert info["mode"] == "persistent" and info["peers"][0]["latest_handshake"]
        exec_ = service("exec", "wg0", "--", *_curl(wgwrap_server))
        assert exec_.returncode == 0, exec_.stderr
        assert f"sees you as {wgwrap_server.net.client4}" in exec_.stdout
        assert process.poll() is None  # it stays

        process.send_signal(stop)
        assert service.messages_until("STOPPING", 15)[-1]["STOPPING"] == "1"
        status, err = _end(process)
    assert status == 0, err
    assert "profile wg0 is up; SIGTERM or Ctrl-C takes it down" in err
    assert service.profiles() == [] and not service.sidecars()


def test_foreground_exits_non_zero_when_the_sidecar_dies(
    wgwrap_server: WgWrapServer, service: Service
) -> None:
    service.add_config("wg0", wgwrap_server.client_config())
    process = service.foreground("wg0")
    with _reaped(process):
        service.messages_until("READY", READY_TIMEOUT)
        (sidecar,) = service.sidecars()
        os.kill(sidecar, signal.SIGKILL)
        status, err = _end(process)
    assert status == 1, err
    assert "wg-wrap: error: the sidecar of profile wg0 was killed by signal 9: the tunnel is down" \
        in err.splitlines(), err
    assert "Traceback" not in err
    assert service.profiles() == []  # the next start (systemd's restart) starts afresh


def test_foreground_without_a_handshake_fails_and_leaves_nothing(service: Service) -> None:
    # A peer that never answers: a UDP socket bound here that nobody reads.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        from peers import Keys, client_config, next_net

        config = client_config(Keys(), next_net(), silent.getsockname()[1])
        service.add_config("wg0", config)
        process = service.foreground("wg0", "--timeout", "2")
        status, err = _end(process, timeout=30)
        statuses = [m.get("STATUS", "") for m in service.messages_until("STOPPING", 5)]
    finally:
        silent.close()
    assert status == 1, err
    assert "wg-wrap: error: no handshake with 127.0.0.1:" in err
    assert any(s.startswith("waiting for the first handshake with 127.0.0.1:") for s in statuses)
    assert service.profiles() == [] and not service.sidecars()


def test_foreground_refuses_a_profile_started_elsewhere(
    wgwrap_server: WgWrapServer, service: Service
) -> None:
    service.add_config("wg0", wgwrap_server.client_config())
    assert service("up", "-n", "wg0").returncode == 0
    process = service.foreground("wg0")
    status, err = _end(process)
    assert status == 1
    assert err.splitlines()[0] == (
        "wg-wrap: error: profile 'wg0' is already running, started elsewhere: "
        "--foreground supervises only a tunnel it starts"
    ), err
    assert service.profiles() == ["wg0"]  # and it is left alone


# ---- sd_notify (unit) --------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram_of_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"wg-wrap-test-{os.getpid()}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(tmp_path / "n.sock"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n.sock"))
        assert notify.send(READY="1", STATUS="up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up\n"


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path"])
def test_notify_without_a_usable_socket_does_nothing(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify.status("x") is False


def test_notify_to_a_vanished_manager_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.send(READY="1") is False


# ---- the systemd user unit -----------------------------------------------------


def _installed_unit(stage: Stage) -> Path:
    unit = stage.root / "venv" / "lib" / "systemd" / "user" / "wg-wrap@.service"
    assert unit.is_file(), f"make install did not install {unit}"
    return unit


def test_the_installed_user_unit_verifies_and_runs_up_foreground_by_name(
    wgwrap_server: WgWrapServer, service: Service, tmp_path: Path
) -> None:
    """What `systemctl --user start wg-wrap@wg0` runs: the unit's own ExecStart."""
    text = _installed_unit(service.stage).read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify" and settings["Restart"] == "on-failure"
    exec_start = settings["ExecStart"].split()
    assert exec_start[0] == str(service.stage.root / "venv" / "bin" / "wg-wrap")
    assert exec_start[1:] == ["up", "--foreground", "-n", "%i"]

    # systemd's own checker (systemd-analyze, from Debian's systemd package)
    instance = tmp_path / "wg-wrap@wg0.service"
    instance.write_text(text)
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr

    service.add_config("wg0", wgwrap_server.client_config())
    argv = [a.replace("%i", "wg0") for a in exec_start]
    process = subprocess.Popen(
        as_user_argv(service.user, argv), cwd="/", text=True,
        env=service.env(NOTIFY_SOCKET=service.notify.getsockname()),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    with _reaped(process):
        assert service.messages_until("READY", READY_TIMEOUT)[-1]["READY"] == "1"
        exec_ = service("exec", "wg0", "--", *_curl(wgwrap_server))
        assert f"sees you as {wgwrap_server.net.client4}" in exec_.stdout, exec_.stderr
        process.terminate()  # systemctl stop
        status, err = _end(process)
    assert status == 0, err
    assert service.profiles() == [] and not service.sidecars()
