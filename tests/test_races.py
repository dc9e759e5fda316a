"""Faults and races, one test for each finding of the issue "Under faults and
races": a request the client gave up on never takes effect later, one stuck
profile holds up no other, a supervised heal keeps its ports, `down` of a
sidecar that had to be killed reports no crash, a start killed early prints
no internal error, two profiles on one key are warned of, an empty name is
invalid. As the unprivileged user, with the real sidecar.

The faults are made by hand, as a user (or a stuck command) would make them:
SIGSTOP, SIGKILL, a lock held by a process that does not let go."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, Tool, User, aftercares_of, as_user_argv, run_as_user, user_env
from peers import LineLog
from reachkit import SERVICE, published_port

pytestmark = pytest.mark.e2e

PRIVATE = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
PRIVATE_2 = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
PEER = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="


def config(private: str = PRIVATE, address: str = "10.77.0.2/32") -> str:
    """A profile whose peer never answers (a port on loopback nobody serves):
    enough for everything here, which is about wg-wrap, not traffic."""
    return (f"[Interface]\nPrivateKey = {private}\nAddress = {address}\n\n"
            f"[Peer]\nPublicKey = {PEER}\nAllowedIPs = 0.0.0.0/0\nEndpoint = 127.0.0.1:9\n")


def timed(tool: Tool, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str],
                                                                  float]:
    start = time.monotonic()
    done = tool(*args, timeout=timeout)
    return done, time.monotonic() - start


def up(tool: Tool, name: str, *extra: str, private: str = PRIVATE) -> Path:
    conf = tool.conf(config(private), f"{name}.conf")
    done = tool("up", "--no-wait", "-n", name, "-c", str(conf), *extra)
    assert done.returncode == 0, done.stderr
    return conf


def recorded_ready(tool: Tool) -> set[int]:
    """The sidecars of profiles whose start is done (state.toml: ready)."""
    found = set()
    for name in tool.profiles():
        try:
            text = (tool.state_dir / name / "state.toml").read_text()
        except OSError:
            continue
        pid = re.search(r"^sidecar_pid = (\d+)$", text, re.MULTILINE)
        if pid and re.search(r"^ready = true$", text, re.MULTILINE):
            found.add(int(pid.group(1)))
    return found


def sidecar_of(tool: Tool, name: str) -> int:
    return int(tool.status(name)["sidecar_pid"])


class Holder:
    """A process of the test user holding a lock (flock) on a path until
    closed: a wg-wrap command that got stuck, an ending sidecar."""

    CODE = ("import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n")

    def __init__(self, stage: Stage, user: User, path: Path) -> None:
        self.proc = subprocess.Popen(
            as_user_argv(user, [str(stage.python), "-c", self.CODE, str(path)]),
            env=user_env(), cwd="/", text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 10)[0] or \
                self.proc.stdout.readline().strip() != "held":
            self.close()
            raise AssertionError(f"could not hold {path}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """Processes a test stops: continued whatever happens."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def stop(pids: list[int], pid: int) -> None:
    pids.append(pid)
    os.kill(pid, signal.SIGSTOP)


# ---- 1. a request given up on ------------------------------------------------------

GIVE_UP = """\
import socket, sys
from wg_wrap import runtime
from wg_wrap.control import ControlClient
state = runtime.Profile.at(runtime.base_dir(create=False), sys.argv[1]).read_state()
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
try:
    ControlClient(state.control_address, timeout=1.0).request(
        {"op": "publish", "proto": "tcp", "port": 8000}, [listener.fileno()])
    print("answered", flush=True)
except Exception as e:
    print("gave up:", e, flush=True)
"""


def test_a_request_the_client_gave_up_on_never_takes_effect(
    tool: Tool, stage: Stage, test_user: User, stopped: list[int],
) -> None:
    up(tool, "wg0")
    sidecar = sidecar_of(tool, "wg0")
    stop(stopped, sidecar)
    # wg-wrap itself does not even ask a stopped sidecar: it says so at once.
    refused, took = timed(tool, "publish", "wg0", "127.0.0.1:0:8000")
    assert refused.returncode == 1 and took < 2, (took, refused)
    assert refused.stderr.splitlines() == [
        f"wg-wrap: error: the sidecar of profile wg0 (pid {sidecar}) is stopped: it answers "
        "nothing",
        f"wg-wrap: hint: `kill -CONT {sidecar}` continues it",
    ]
    # A client that asked anyway (the sidecar stopped after wg-wrap looked)
    # and gave up: the request waits in the socket, with its host socket.
    asked = run_as_user(test_user, [str(stage.python), "-c", GIVE_UP, "wg0"],
                        env=user_env(tool.runtime), timeout=30)
    port_text, outcome = asked.stdout.splitlines()
    assert outcome.startswith("gave up: the sidecar did not answer publish"), asked
    os.kill(sidecar, signal.SIGCONT)
    # The sidecar now reads it, late: it must refuse it, and close the socket.
    later = tool("publish", "wg0", "127.0.0.1:0:8001")
    assert later.returncode == 0, later.stderr
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.1", int(port_text))) != 0, \
                "a request given up on was carried out: a ghost published port"
        time.sleep(0.1)
    assert [p["port"] for p in tool.status("wg0")["published"]] == [8001]


# ---- 2, 3. one stuck profile holds up no other -----------------------------------------


def test_a_stuck_profile_holds_up_no_other(
    tool: Tool, stage: Stage, test_user: User, stopped: list[int],
) -> None:
    up(tool, "a")
    up(tool, "b", private=PRIVATE_2)
    stop(stopped, sidecar_of(tool, "a"))
    # A command stuck on a, holding a's lock (as a publish to a stopped
    # sidecar once did, with the lock of every profile).
    stuck = Holder(stage, test_user, tool.state_dir / "a")
    try:
        for args in (("exec", "b", "--", "true"), ("publish", "b", "127.0.0.1:0:80"),
                     ("ls",), ("status", "b")):
            done, took = timed(tool, *args)
            assert done.returncode == 0 and took < 2.5, (args, took, done.stderr)
        host_port = published_port(tool.status("b"), 80)
        done, took = timed(tool, "unpublish", "b", str(host_port))
        assert done.returncode == 0 and took < 2.5, (took, done.stderr)
        waited, took = timed(tool, "publish", "a", "127.0.0.1:0:80", timeout=40)
        assert waited.returncode == 1 and 14 < took < 20, (took, waited)
        assert waited.stderr.startswith(
            "wg-wrap: error: the lock of profile a has been held by another wg-wrap command "
            "for 15 s\nwg-wrap: hint: a command stuck or stopped (Ctrl-Z?)"), waited.stderr
    finally:
        stuck.close()
    # check on a stopped sidecar: at once, saying why
    checked, took = timed(tool, "check", "a")
    assert checked.returncode == 1 and took < 2.5, (took, checked)
    assert "is stopped: it answers nothing" in checked.stderr


def test_an_ending_sidecar_that_does_not_end_holds_up_no_one(
    tool: Tool, stage: Stage, test_user: User, stopped: list[int],
) -> None:
    """An ephemeral sidecar holds `hold` exclusively from the moment it finds
    itself unused until it is gone; stopped then, a new `run -n` of its name
    once waited on it, holding the lock every profile needs."""
    up(tool, "b", private=PRIVATE_2)
    conf = tool.conf(config(), "e.conf")
    program = tool.popen("run", "-n", "e", "-c", str(conf), "--",
                         "sh", "-c", "echo in; exec sleep 60")
    assert program.stdout is not None
    assert select.select([program.stdout], [], [], 30)[0], "run did not start"
    assert program.stdout.readline().strip() == "in"
    sidecar = sidecar_of(tool, "e")
    stop(stopped, sidecar)
    program.kill()  # the program is gone: the sidecar is unused, and ending
    program.communicate(timeout=10)
    ending = Holder(stage, test_user, tool.state_dir / "e" / "hold")  # as the sidecar does
    try:
        again = tool.popen("run", "-n", "e", "-c", str(conf), "--", "true")
        time.sleep(0.2)  # it is waiting now (a fault's timing, not readiness)
        for args in (("exec", "b", "--", "true"), ("down", "b")):
            done, took = timed(tool, *args)
            assert done.returncode == 0 and took < 2.5, (args, took, done.stderr)
        out, err = again.communicate(timeout=10)
        assert again.returncode == 1, (out, err)
        assert err.splitlines()[0] == (
            f"wg-wrap: error: profile 'e' is ending, but its sidecar (pid {sidecar}) has "
            "not finished within 2 s"), err
    finally:
        ending.close()


# ---- a supervised heal -----------------------------------------------------------------


def test_a_supervised_heal_keeps_its_ports_and_lives_with_a_taken_one(
    tool: Tool, stage: Stage, test_user: User, stopped: list[int],
) -> None:
    conf = tool.conf(config())
    supervisor = subprocess.Popen(
        as_user_argv(test_user, stage.wg_wrap(
            "up", "--foreground", "--no-wait", "-c", str(conf),
            "-p", "127.0.0.1:0:8000", "-p", "127.0.0.1:0:8001", "--socks", "127.0.0.1:0")),
        env=user_env(tool.runtime), cwd="/", text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    taken: socket.socket | None = None
    try:
        said = LineLog(supervisor.stderr)
        assert said.wait_for("is up", 30), said.drain()
        tool.inside("wg0", SERVICE, "tcp:127.0.0.1:8000")  # a program stays inside
        before = tool.status("wg0")
        port_8000, port_8001 = (published_port(before, p) for p in (8000, 8001))
        old = int(before["sidecar_pid"])

        stop(stopped, supervisor.pid)
        os.kill(old, signal.SIGKILL)
        # Meanwhile, another program takes 8001's host port, as soon as the
        # dead sidecar's last thread has let go of it (its leader is a
        # zombie before that: the supervisor, stopped, reaps it later).
        deadline = time.monotonic() + 10
        while taken is None:
            try:
                taken = socket.create_server(("127.0.0.1", port_8001))
            except OSError:
                assert time.monotonic() < deadline, "the dead sidecar still holds its port"
                time.sleep(0.02)
        os.kill(supervisor.pid, signal.SIGCONT)

        assert said.wait_for("not published again", 30), said.drain()
        heard = said.drain()
        assert any("starting a new one in their namespaces" in line for line in heard), heard
        assert heard[-1] == (f"wg-wrap: warning: 127.0.0.1:{port_8001}/tcp is already in use "
                             "on this host (published port 127.0.0.1:"
                             f"{port_8001}:8001/tcp): not published again"), heard
        # What the heal opened, announced once it is done, as at the start.
        deadline = time.monotonic() + 10
        while sum("SOCKS5 proxy on" in line for line in said.drain()) < 2:
            assert time.monotonic() < deadline and supervisor.poll() is None, said.drain()
            time.sleep(0.05)
        after = tool.status("wg0")
        assert int(after["sidecar_pid"]) != old
        assert published_port(after, 8000) == port_8000  # the same port, not a new random one
        assert [p["port"] for p in after["published"]] == [8000]
        assert after["socks"]["address"] == before["socks"]["address"]
        assert supervisor.poll() is None, "the supervisor must stay"
        with socket.create_connection(("127.0.0.1", port_8000), timeout=10) as sock:
            assert sock.recv(100).startswith(b"from ")
        supervisor.terminate()
        assert supervisor.wait(timeout=20) == 0, said.drain()
    finally:
        if taken is not None:
            taken.close()
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=10)
        assert supervisor.stderr is not None
        supervisor.stderr.close()


def test_down_tells_no_one_of_a_crash_when_it_had_to_kill_the_sidecar(
    tool: Tool, stage: Stage, test_user: User, stopped: list[int],
) -> None:
    up(tool, "wg0")
    program = tool.popen("exec", "wg0", "--", "sh", "-c", "echo in; exec sleep 60")
    try:
        assert program.stdout is not None and program.stderr is not None
        assert select.select([program.stdout], [], [], 30)[0]
        assert program.stdout.readline().strip() == "in"
        stop(stopped, sidecar_of(tool, "wg0"))  # SIGTERM cannot end it: down kills it
        down, took = timed(tool, "down", "--force", "wg0")
        assert down.returncode == 0 and took < 6, (took, down.stderr)  # 3 s grace, then SIGKILL
        deadline = time.monotonic() + 5
        while aftercares_of(test_user, tool.runtime):
            assert time.monotonic() < deadline, "the aftercare did not leave"
            time.sleep(0.02)
        told = select.select([program.stderr], [], [], 0)[0]
        assert not told, os.read(program.stderr.fileno(), 4096).decode()
    finally:
        program.kill()
        program.communicate(timeout=10)
    assert tool.wait_gone(3)


# ---- 5, 6: one key twice, a start killed early, an empty name ---------------------------


def test_two_profiles_on_one_key_are_warned_of(tool: Tool) -> None:
    up(tool, "k1")
    conf = tool.conf(config(), "k2.conf")
    second = tool("up", "--no-wait", "-n", "k2", "-c", str(conf))
    assert second.returncode == 0, second.stderr
    assert second.stderr.startswith(
        "wg-wrap: warning: profile k1 runs with the same private key: a peer answers only the "
        "profile that spoke to it last"), second.stderr
    other = tool.conf(config(PRIVATE_2), "k3.conf")
    third = tool("up", "--no-wait", "-n", "k3", "-c", str(other))
    assert "same private key" not in third.stderr


@pytest.mark.parametrize("delay", [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.45])
def test_a_start_killed_early_prints_no_internal_error_and_leaves_no_sidecar(
    tool: Tool, delay: float,
) -> None:
    conf = tool.conf(config())
    start = tool.popen("up", "--no-wait", "-c", str(conf))
    time.sleep(delay)  # the fault's timing
    start.kill()
    _, err = start.communicate(timeout=15)  # to the end: what its helpers wrote too
    assert "internal error" not in err and "Traceback" not in err, err
    # Killed before the start was done, its sidecar ends by itself; killed
    # after (the profile up, the command about to exit), it stays, recorded.
    deadline = time.monotonic() + 3
    while tool.sidecars() - recorded_ready(tool):
        assert time.monotonic() < deadline, "a sidecar outlived the start that made it"
        time.sleep(0.02)
    again = tool("up", "--no-wait", "-c", str(conf))
    assert again.returncode == 0, again.stderr
    assert tool("down", "wg0").returncode == 0
    assert tool.wait_gone(5)


@pytest.mark.parametrize("verb", [["up", "--no-wait", "-n", ""], ["exec", "", "--", "true"],
                                  ["down", ""], ["run", "-n", "", "--", "true"]])
def test_an_empty_name_is_invalid(tool: Tool, verb: list[str]) -> None:
    conf = tool.conf(config())
    args = [*verb, "-c", str(conf)] if verb[0] == "up" else verb
    if verb[0] == "run":
        args = ["run", "-n", "", "-c", str(conf), "--", "true"]
    done = tool(*args)
    assert done.returncode != 0
    assert done.stderr.startswith("wg-wrap: error: invalid profile name ''"), done.stderr
    assert not tool.profiles() and not tool.sidecars()
