"""Faults a long-running profile must survive, with real peers, as the
unprivileged user: a stopped sidecar, a peer that restarts, a big transfer, a
sidecar killed mid-transfer, and a sidecar that dies with programs inside,
which get one notice and then their network back, open connections included."""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, Tool, User, aftercares_of, as_user_argv, user_env
from peers import HTTP_PORT, WgWrapServer

pytestmark = pytest.mark.e2e

BULK_PORT = 9000
ECHO_PORT = 9001
MIB = 1 << 20

# A deterministic stream: block i is a fixed random MiB with i in front, so a
# lost, repeated or reordered block changes the digest.
BLOCK_SEED = 7
SOURCE = f"""\
import random, socket, sys
total = int(sys.argv[1])
block = bytearray(random.Random({BLOCK_SEED}).randbytes({MIB}))
srv = socket.create_server(("", {BULK_PORT}), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
srv.settimeout(60)
conn, _ = srv.accept()
for i in range(total):
    block[:8] = i.to_bytes(8, "big")
    conn.sendall(block)
conn.shutdown(socket.SHUT_WR)  # then read what came back: closing with it unread is a reset
while conn.recv(1 << 16):
    pass
conn.close()
"""

# Reads the stream and hashes it; every 64 MiB it says how far it got and
# sends a marker back, which must never be seen in clear outside the tunnel.
RECEIVER = """\
import hashlib, socket, sys
host, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
c = socket.create_connection((host, port), timeout=10)
c.settimeout(float(sys.argv[4]))
h, n, step = hashlib.sha256(), 0, 64 << 20
try:
    while chunk := c.recv(1 << 20):
        h.update(chunk)
        if (n + len(chunk)) // step != n // step:
            print("progress", n + len(chunk), flush=True)
            c.sendall(marker)
        n += len(chunk)
except OSError as e:
    print("failed", n, type(e).__name__, flush=True)
    sys.exit(3)
print("done", n, h.hexdigest(), flush=True)
"""

# A TCP echo server inside the server peer, and a client that keeps one
# connection open and sends a line each time it reads one on stdin.
ECHO = f"""\
import socket
srv = socket.create_server(("", {ECHO_PORT}), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    while data := conn.recv(4096):
        conn.sendall(data)
"""
CLIENT = """\
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print("connected", flush=True)
for line in sys.stdin:
    c.sendall(line.encode())
    print("echo", c.recv(4096).decode().strip(), flush=True)
"""


def expected_digest(blocks: int) -> str:
    block = bytearray(random.Random(BLOCK_SEED).randbytes(MIB))
    h = hashlib.sha256()
    for i in range(blocks):
        block[:8] = i.to_bytes(8, "big")
        h.update(block)
    return h.hexdigest()


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if ready else ""


def inside_server(server: WgWrapServer, stage: Stage, user: User, *command: str
                  ) -> subprocess.Popen[str]:
    """Run command in the server peer's namespace; returns once it says ready."""
    proc = subprocess.Popen(
        as_user_argv(user, stage.wg_wrap("exec", "test-server", "--", *command)),
        env=user_env(server.runtime_dir), cwd="/", text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    if read_line(proc, 30) != "ready":
        proc.kill()
        pytest.fail(f"{command[:2]} did not start in the server: {proc.communicate()[1]}")
    return proc


@pytest.fixture
def running(wgwrap_server: WgWrapServer, tool: Tool) -> Iterator[WgWrapServer]:
    """Profile wg0 up (persistent) against the server, its first fetch done."""
    conf = tool.conf(wgwrap_server.client_config())
    up = tool("up", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    assert fetch(tool, wgwrap_server)
    yield wgwrap_server


def fetch(tool: Tool, server: WgWrapServer, max_time: float = 5) -> bool:
    done = tool("exec", "wg0", "--", "curl", "-sS", "--max-time", str(max_time),
                f"http://{server.net.server4}:{HTTP_PORT}/")
    return f"sees you as {server.net.client4}" in done.stdout


def recover_within(tool: Tool, server: WgWrapServer, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if fetch(tool, server, max_time=1):
            return time.monotonic() - start
    raise AssertionError(f"traffic did not come back within {limit} s")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


class LoopbackCapture:
    """Looks at every frame on the host's loopback while it runs (a raw
    AF_PACKET socket: root only), to prove that ``needle`` never crossed it."""

    def __init__(self, needle: bytes) -> None:
        self.needle = needle
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.1)
        self.frames = 0
        self.hits: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            self.frames += 1
            if self.needle in frame:
                self.hits.append(frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


# ---- a stopped sidecar -----------------------------------------------------------


def test_a_stopped_sidecar_says_so_and_traffic_resumes_when_it_continues(
    running: WgWrapServer, tool: Tool,
) -> None:
    (sidecar,) = tool.sidecars()
    os.kill(sidecar, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        start = time.monotonic()
        ls = tool("ls")
        took = time.monotonic() - start
        assert "not responding (stopped)" in ls.stdout, ls.stdout
        assert took < 2.5, f"ls took {took:.1f} s with a stopped sidecar"
        (info,) = json.loads(tool("status", "--json", "wg0").stdout)
        assert info["running"] and info["responding"] is False
        assert "not responding (stopped)" in tool("status", "wg0").stdout
        time.sleep(max(0.0, stopped_at + 30 - time.monotonic()))  # stopped for 30 s
    finally:
        os.kill(sidecar, signal.SIGCONT)
    took = recover_within(tool, running, 10)
    print(f"traffic back {took:.1f} s after SIGCONT")
    assert "not responding" not in tool("ls").stdout


# ---- a peer that restarts ----------------------------------------------------------


# The client still holds a session the restarted peer has forgotten: its
# packets are dropped there without an answer, and WireGuard starts a new
# handshake once none has come for Keepalive-Timeout + Rekey-Timeout (15 s).
WIREGUARD_NEW_HANDSHAKE = 15


def test_traffic_resumes_when_the_peer_restarts_with_the_same_keys(
    running: WgWrapServer, tool: Tool, stage: Stage, test_user: User,
) -> None:
    running.stop()
    restarted = WgWrapServer(stage, test_user, running.net, keys=running.keys, port=running.port)
    try:
        took = recover_within(tool, restarted, WIREGUARD_NEW_HANDSHAKE + 5)
    finally:
        restarted.stop()
    print(f"traffic back {took:.1f} s after the peer restarted")


# ---- big transfers ---------------------------------------------------------------


def test_a_1_gib_transfer_arrives_intact(
    running: WgWrapServer, tool: Tool, stage: Stage, test_user: User,
) -> None:
    blocks = 1024
    source = inside_server(running, stage, test_user, "python3", "-c", SOURCE, str(blocks))
    try:
        start = time.monotonic()
        got = tool("exec", "wg0", "--", "python3", "-c", RECEIVER, running.net.server4,
                   str(BULK_PORT), "m", "10", timeout=300)
        took = time.monotonic() - start
    finally:
        stop(source)
    last = got.stdout.splitlines()[-1].split()
    assert last[:2] == ["done", str(blocks * MIB)], got.stdout + got.stderr
    assert last[2] == expected_digest(blocks)
    print(f"1 GiB in {took:.1f} s ({blocks * MIB * 8 / took / 1e9:.2f} Gbit/s)")


def test_killing_the_sidecar_mid_transfer_fails_it_leaves_nothing_and_up_works_again(
    running: WgWrapServer, tool: Tool, stage: Stage, test_user: User,
) -> None:
    marker = f"CLEAR-MARKER-{os.getpid()}-never-outside"
    source = inside_server(running, stage, test_user, "python3", "-c", SOURCE, "4096")
    receiver = tool.popen("exec", "wg0", "--", "python3", "-c", RECEIVER,
                          running.net.server4, str(BULK_PORT), marker, "2")
    capture = LoopbackCapture(marker.encode())
    try:
        assert read_line(receiver, 30).startswith("progress"), receiver.stderr
        (sidecar,) = tool.sidecars()
        os.kill(sidecar, signal.SIGKILL)
        out, err = receiver.communicate(timeout=30)
        ended = time.monotonic()
    finally:
        capture.close()
        stop(source)
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    assert receiver.returncode == 3 and "failed" in out, out + err  # the transfer failed
    assert "the tunnel of profile wg0 is down" in err  # told once, on its stderr
    assert err.count("wg-wrap: the tunnel of profile wg0 is down") == 1
    assert tool.wait_gone(max(0.1, ended + 2 - time.monotonic())), \
        "a process or the profile directory outlived the transfer by 2 s"
    assert capture.frames > 100, "the capture saw (almost) nothing: it did not work"
    assert not capture.hits, "plaintext crossed the loopback"
    # and the next up works
    assert tool("up", "-c", str(tool.workdir / "wg0.conf")).returncode == 0
    assert fetch(tool, running)


# ---- a sidecar that dies with programs inside ----------------------------------------


def test_programs_left_without_a_sidecar_are_told_once_and_get_their_network_back(
    running: WgWrapServer, tool: Tool, stage: Stage, test_user: User,
) -> None:
    echo = inside_server(running, stage, test_user, "python3", "-c", ECHO)
    client = subprocess.Popen(
        as_user_argv(test_user, stage.wg_wrap(
            "exec", "wg0", "--", "python3", "-c", CLIENT, running.net.server4, str(ECHO_PORT))),
        env=user_env(tool.runtime), cwd="/", text=True, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stderr is not None
    old_aftercare_gone: int | None = None
    try:
        assert read_line(client, 30) == "connected", client.stderr
        client.stdin.write("ping-1\n")
        client.stdin.flush()
        assert read_line(client, 10) == "echo ping-1"

        (sidecar,) = tool.sidecars()
        os.kill(sidecar, signal.SIGKILL)
        ready, _, _ = select.select([client.stderr], [], [], 5)
        assert ready, "no notice on the program's stderr within 5 s"
        notice = os.read(client.stderr.fileno(), 4096).decode()
        assert "wg-wrap: the tunnel of profile wg0 is down" in notice
        conf = tool.workdir / "wg0.conf"
        assert f"`wg-wrap up -n wg0 -c {conf}` brings the tunnel back" in notice
        ls = tool("ls").stdout.splitlines()[1].split()
        assert ls[:2] == ["wg0", "persistent"] and "dead" in ls
        aftercares = aftercares_of(tool.user, tool.runtime)
        assert len(aftercares) == 1, f"one aftercare should be waiting: {aftercares}"
        (old_aftercare,) = aftercares
        # Readable once that process has ended (it is not our child: no wait()).
        old_aftercare_gone = os.pidfd_open(old_aftercare)

        # Without -c, the config it was started with is named, not used: the
        # state records it, and nothing there chooses a config.
        named = tool("up", "-n", "wg0")
        assert named.returncode == 1
        assert named.stderr.splitlines()[1] == (
            f"wg-wrap: hint: bring it back in place with the config it was started with: "
            f"`wg-wrap up -n wg0 -c {conf}`")
        up = tool("up", "-n", "wg0", "-c", str(conf))
        assert up.returncode == 0, up.stderr
        assert "starting a new one in their namespaces" in up.stderr
        assert len(tool.sidecars()) == 1
        # The open connection survived: its state lives in the namespace's kernel.
        client.stdin.write("ping-2\n")
        client.stdin.flush()
        assert read_line(client, 20) == "echo ping-2"
        assert fetch(tool, running)
        # The old aftercare lets go once it sees the new sidecar in the state
        # (it looks every 200 ms); whatever it wrote is in the pipe by then.
        assert select.select([old_aftercare_gone], [], [], 10)[0], \
            "the old aftercare did not let go of the profile within 10 s"
        new_aftercares = aftercares_of(tool.user, tool.runtime)
        assert len(new_aftercares) == 1 and old_aftercare not in new_aftercares, \
            f"the new sidecar's aftercare alone should remain: {new_aftercares}"
        assert not select.select([client.stderr], [], [], 0)[0], "told more than once"
        assert tool.profiles() == ["wg0"]
    finally:
        if old_aftercare_gone is not None:
            os.close(old_aftercare_gone)
        stop(client)
        stop(echo)


def await_notice(notify: socket.socket, needle: bytes, timeout: float) -> None:
    """Read sd_notify datagrams until one holds needle, for at most timeout s."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        notify.settimeout(left)
        try:
            seen.append(notify.recv(4096))
        except TimeoutError:
            break
        if needle in seen[-1]:
            return
    raise AssertionError(f"no {needle!r} on NOTIFY_SOCKET within {timeout} s: {seen}")


def test_the_foreground_supervisor_replaces_a_dead_sidecar_in_place(
    running: WgWrapServer, tool: Tool, stage: Stage, test_user: User,
    user_tmp: Path,
) -> None:
    assert tool("down", "wg0").returncode == 0  # supervised instead
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(user_tmp / "notify.sock"))
    os.chown(user_tmp / "notify.sock", test_user.uid, test_user.gid)
    supervisor = subprocess.Popen(
        as_user_argv(test_user, stage.wg_wrap("up", "--foreground", "-c",
                                              str(tool.workdir / "wg0.conf"))),
        env=user_env(tool.runtime, {"NOTIFY_SOCKET": str(user_tmp / "notify.sock")}),
        cwd="/", text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    echo: subprocess.Popen[str] | None = None
    client: subprocess.Popen[str] | None = None
    try:
        await_notice(notify, b"READY=1", 30)
        echo = inside_server(running, stage, test_user, "python3", "-c", ECHO)
        client = subprocess.Popen(
            as_user_argv(test_user, stage.wg_wrap(
                "exec", "wg0", "--", "python3", "-c", CLIENT, running.net.server4,
                str(ECHO_PORT))),
            env=user_env(tool.runtime), cwd="/", text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert client.stdin is not None
        assert read_line(client, 30) == "connected"
        (sidecar,) = tool.sidecars()
        os.kill(sidecar, signal.SIGKILL)
        await_notice(notify, b"was replaced", 30)
        assert supervisor.poll() is None, "the supervisor must stay"
        client.stdin.write("ping\n")
        client.stdin.flush()
        assert read_line(client, 20) == "echo ping"
        supervisor.terminate()
        assert supervisor.wait(timeout=20) == 0
    finally:
        notify.close()
        for proc in (client, echo):
            if proc is not None:
                stop(proc)
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.communicate(timeout=10)
    assert tool.wait_gone(3)


def test_a_healed_profile_publishes_its_ports_again(
    wgwrap_server: WgWrapServer, tool: Tool,
) -> None:
    """The host sockets of published ports die with the sidecar: a heal opens
    them again, on the same host ports, for the programs still inside."""
    from reachkit import SERVICE, connect, published_port, read_all

    conf = tool.conf(wgwrap_server.client_config())
    up = tool("up", "-c", str(conf), "-p", f"127.0.0.1:0:{ECHO_PORT}")
    assert up.returncode == 0, up.stderr
    tool.inside("wg0", SERVICE, f"tcp:127.0.0.1:{ECHO_PORT}")  # stays inside
    host_port = published_port(tool.status("wg0"), ECHO_PORT)

    def echo() -> str:
        with connect("127.0.0.1", host_port) as sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            return read_all(sock).decode().partition("\n")[2]

    assert echo() == "ping"
    (sidecar,) = tool.sidecars()
    os.kill(sidecar, signal.SIGKILL)
    up = tool("up", "-n", "wg0", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    assert published_port(tool.status("wg0"), ECHO_PORT) == host_port
    assert echo() == "ping"
