"""Multi-hop, `--via PROFILE`: a profile whose encrypted packets travel
inside another profile's tunnel, as the unprivileged user, against real
peers that are reachable only through the outer tunnel (a stock
wireguard-go in the outer peer's network namespace; wg-wrap servers nested
in wg-wrap servers for three hops)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import Stage, Tool, User, as_user_argv, need_interop_tools, user_env
from peers import HTTP_PORT, Server, StockServer, WgWrapServer, next_net
from test_faults import (
    BULK_PORT,
    MIB,
    RECEIVER,
    SOURCE,
    LoopbackCapture,
    expected_digest,
    read_line,
    stop,
)

pytestmark = pytest.mark.e2e


def fetch(tool: Tool, name: str, server: Server, max_time: float = 5) -> bool:
    done = tool("exec", name, "--", "curl", "-sS", "--max-time", str(max_time),
                f"http://{server.net.server4}:{HTTP_PORT}/")
    return f"sees you as {server.net.client4}" in done.stdout


@pytest.fixture
def outer(stage: Stage, test_user: User) -> Iterator[WgWrapServer]:
    server = WgWrapServer(stage, test_user, next_net())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stock_inner(stage: Stage, outer: WgWrapServer) -> Iterator[StockServer]:
    """Debian's wireguard-go, its UDP socket in the outer peer's namespace:
    reachable only through the outer tunnel."""
    need_interop_tools()
    server = StockServer(stage, next_net(), within=outer)
    try:
        yield server
    finally:
        server.stop()


def up(tool: Tool, name: str, server: Server, *extra: str, host: str = "127.0.0.1",
       config_extra: str = "") -> None:
    conf = tool.conf(server.client_config(host=host, extra=config_extra), f"{name}.conf")
    done = tool("up", "-n", name, "-c", str(conf), *extra)
    assert done.returncode == 0, done.stderr


def test_two_hops_reach_a_peer_only_the_outer_tunnel_reaches(
    tool: Tool, outer: WgWrapServer, stock_inner: StockServer,
) -> None:
    up(tool, "entry", outer)
    # Not reachable from the host: its socket is in the outer peer's namespace.
    direct = tool.conf(stock_inner.client_config(host=outer.net.server4), "direct.conf")
    alone = tool("up", "--timeout", "3", "-n", "direct", "-c", str(direct))
    assert alone.returncode == 1 and "no handshake" in alone.stderr, alone.stderr

    up(tool, "exit", stock_inner, "--via", "entry", host=outer.net.server4)
    assert fetch(tool, "exit", stock_inner)
    assert fetch(tool, "entry", outer)  # the outer one still serves its own programs
    status = tool.status("exit")
    assert status["via"] == "entry"
    assert status["mtu"] == tool.status("entry")["mtu"] - 80 == 1340
    ls = tool("ls").stdout
    assert f"{outer.net.server4}:{stock_inner.port} via entry" in ls, ls
    shown = tool("status", "exit").stdout
    assert "  via: profile entry (this tunnel's packets travel inside its tunnel)" in shown
    # run and check take --via too
    assert tool("down", "exit").returncode == 0
    conf = str(tool.workdir / "exit.conf")
    ran = tool("run", "-n", "exit", "-c", conf, "--via", "entry", "--", "curl", "-sS",
               "--max-time", "5", f"http://{stock_inner.net.server4}:{HTTP_PORT}/")
    assert f"sees you as {stock_inner.net.client4}" in ran.stdout, ran.stderr
    checked = tool("check", "-c", conf, "--via", "entry")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # the ephemeral `exit` ends once its program has (its sidecar looks every 200 ms)
    deadline = time.monotonic() + 3
    while tool.profiles() != ["entry"]:
        assert time.monotonic() < deadline, tool.profiles()
        time.sleep(0.05)


def test_three_hops(tool: Tool, stage: Stage, test_user: User, outer: WgWrapServer) -> None:
    second = WgWrapServer(stage, test_user, next_net(), within=outer, listen=outer.net.server4)
    third: WgWrapServer | None = None
    try:
        third = WgWrapServer(stage, test_user, next_net(), within=second,
                             listen=second.net.server4)
        up(tool, "a", outer)
        up(tool, "b", second, "--via", "a", host=outer.net.server4)
        conf = tool.conf(third.client_config(host=second.net.server4), "c.conf")
        c = tool("up", "-n", "c", "-c", str(conf), "--via", "b")
        assert c.returncode == 0, c.stderr
        # Three hops go below IPv6's minimum MTU: the minimum, and a warning.
        assert "warning: what fits in profile b's tunnel (1340 - 80 = 1260) is below IPv6's " \
            "minimum MTU: using 1280" in c.stderr, c.stderr
        assert fetch(tool, "c", third)
        assert [tool.status(n)["mtu"] for n in ("a", "b", "c")] == [1420, 1340, 1280]
        # 16 MiB through all three, intact (full-size packets: fragmented in b's tunnel)
        source = subprocess.Popen(
            as_user_argv(test_user, [*third.inside(), "python3", "-c", SOURCE, "16"]),
            env=user_env(third.runtime_dir), cwd="/", text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert read_line(source, 30) == "ready"
            got = tool("exec", "c", "--", "python3", "-c", RECEIVER, third.net.server4,
                       str(BULK_PORT), "m", "20", timeout=120)
        finally:
            stop(source)
        assert got.stdout.split()[-3:] == ["done", str(16 * MIB), expected_digest(16)], got
        # An explicit MTU larger than fits is used, and warned of.
        conf = tool.conf(third.client_config(host=second.net.server4, extra="MTU = 1400\n"),
                         "big.conf")
        bigger = tool("up", "--no-wait", "-n", "big", "-c", str(conf), "--via", "b")
        assert bigger.returncode == 0
        assert "warning: MTU = 1400 is larger than what fits in profile b's tunnel " \
            "(1340 - 80 = 1260)" in bigger.stderr, bigger.stderr
    finally:
        for name in ("big", "c", "b", "a"):
            tool("down", "--force", name)
        if third is not None:
            third.stop()
        second.stop()


def test_an_outer_profile_lives_as_long_as_what_rides_on_it(
    tool: Tool, outer: WgWrapServer, stock_inner: StockServer,
) -> None:
    # An ephemeral outer (`run`): it ends with its program, unless a profile rides on it.
    conf = tool.conf(outer.client_config(), "entry.conf")
    program = tool.popen("run", "-n", "entry", "-c", str(conf), "--", "sh", "-c",
                         "echo in; exec sleep 600")
    try:
        assert read_line(program, 30) == "in"
        up(tool, "exit", stock_inner, "--via", "entry", host=outer.net.server4)
        program.kill()  # the outer's only program
        program.communicate(timeout=10)
        # Its sidecar looks for a holder every 200 ms: five looks, and it stays.
        time.sleep(1)
        assert "entry" in tool.profiles() and fetch(tool, "exit", stock_inner)

        # down of the outer refuses while a profile rides on it
        refused = tool("down", "entry")
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            "wg-wrap: error: profile entry carries profile exit (started --via entry)",
            "wg-wrap: hint: take it down first, or `wg-wrap down --force entry`: their "
            "tunnels then carry nothing",
        ]
        assert tool("down", "exit").returncode == 0
        # Nothing rides on it and nothing is inside: the ephemeral outer ends.
        assert tool.wait_gone(3), tool.profiles()
    finally:
        if program.poll() is None:
            program.kill()
            program.communicate(timeout=10)


def test_the_inner_tunnel_carries_nothing_while_the_outer_is_stopped(
    tool: Tool, outer: WgWrapServer, stock_inner: StockServer,
) -> None:
    up(tool, "entry", outer)
    up(tool, "exit", stock_inner, "--via", "entry", host=outer.net.server4)
    marker = f"INNER-CLEAR-{os.getpid()}"
    capture = LoopbackCapture(marker.encode())
    entry_sidecar = int(tool.status("entry")["sidecar_pid"])
    try:
        assert fetch(tool, "exit", stock_inner)
        os.kill(entry_sidecar, signal.SIGSTOP)
        try:
            stalled = tool("exec", "exit", "--", "curl", "-sS", "--max-time", "3",
                           "-H", f"X-Marker: {marker}",
                           f"http://{stock_inner.net.server4}:{HTTP_PORT}/")
            assert stalled.returncode != 0, stalled.stdout
        finally:
            os.kill(entry_sidecar, signal.SIGCONT)
        assert fetch(tool, "exit", stock_inner, max_time=10)
        # and with it, the marker never crossed the host's loopback in clear
        tool("exec", "exit", "--", "curl", "-sS", "--max-time", "5", "-H",
             f"X-Marker: {marker}", f"http://{stock_inner.net.server4}:{HTTP_PORT}/")
    finally:
        capture.close()
    assert capture.frames > 10, "the capture saw nothing: it did not work"
    assert not capture.hits, "the inner tunnel's plaintext crossed the host's loopback"


def test_a_heal_of_the_outer_keeps_the_inner_going(
    tool: Tool, stage: Stage, test_user: User, outer: WgWrapServer,
) -> None:
    """The inner profile's socket lives in the outer's network namespace: a
    new outer sidecar in that namespace carries it again, the inner sidecar
    untouched."""
    inner = WgWrapServer(stage, test_user, next_net(), within=outer, listen=outer.net.server4)
    try:
        up(tool, "entry", outer)
        tool.inside("entry", "print('ready', flush=True); import time; time.sleep(600)")
        up(tool, "exit", inner, "--via", "entry", host=outer.net.server4)
        before = tool.status("exit")
        assert fetch(tool, "exit", inner)

        os.kill(int(tool.status("entry")["sidecar_pid"]), signal.SIGKILL)
        assert not fetch(tool, "exit", inner, max_time=2)  # the outer tunnel is gone
        healed = tool("up", "-n", "entry", "-c", str(tool.workdir / "entry.conf"))
        assert healed.returncode == 0 and "starting a new one" in healed.stderr, healed.stderr
        assert fetch(tool, "exit", inner, max_time=20)
        after = tool.status("exit")
        assert (after["sidecar_pid"], after["listen_port"]) == \
            (before["sidecar_pid"], before["listen_port"])
    finally:
        tool("down", "--force", "exit")
        tool("down", "--force", "entry")
        inner.stop()


def test_via_refuses_what_cannot_be(tool: Tool, outer: WgWrapServer) -> None:
    conf = tool.conf(outer.client_config(), "x.conf")
    missing = tool("up", "-n", "x", "-c", str(conf), "--via", "nope")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[0] == \
        "wg-wrap: error: --via nope: profile 'nope' is not running"
    both = tool("up", "-n", "x", "-c", str(conf), "--via", "nope", "--listen-address",
                "127.0.0.1")
    assert both.returncode == 2
    assert "--listen-address binds the host socket on the host" in both.stderr
    itself = tool("up", "-n", "x", "-c", str(conf), "--via", "x")
    assert "cannot ride on itself" in itself.stderr
    assert not tool.profiles() and not tool.sidecars()
