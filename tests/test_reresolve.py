"""Endpoint re-resolution: a peer whose Endpoint is a host name moves to another
address, and the tunnel follows it, as the unprivileged user.

The name is served by a DNS server this test runs on the host's loopback (or
by a hosts file). wg-wrap runs in a private mount namespace (made by root)
where /etc/resolv.conf, and /etc/hosts, are the test's; the sidecar asks that
server through the host DNS socket it was handed, since inside its own
namespace DNS only goes through the tunnel.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, User, as_user_argv, run_as_user, user_env
from peers import HTTP_PORT, WgWrapServer, next_net

from wg_wrap.demo_peer import dns_answer

pytestmark = pytest.mark.e2e

NAME = "vpn.wg-wrap.test"
AFTER = 2  # --reresolve-after, seconds
HANDSHAKE = 5  # wireguard-go's REKEY_TIMEOUT: one handshake attempt


class ControlledDNS:
    """An authoritative server for NAME on a loopback address of its own."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries = 0
        self.ip = f"127.77.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.ip, 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def point(self, address: str) -> None:
        self.records = {NAME: [address]}

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            answer = dns_answer(query, self.records)
            if answer:
                self.sock.sendto(answer, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[ControlledDNS]:
    server = ControlledDNS()
    try:
        yield server
    finally:
        server.close()


class Client:
    """wg-wrap as the test user, in a mount namespace with the test's
    resolv.conf and hosts files."""

    def __init__(self, stage: Stage, user: User, runtime: Path, workdir: Path) -> None:
        self.stage, self.user, self.runtime, self.workdir = stage, user, runtime, workdir
        self.resolv = workdir / "resolv.conf"
        self.hosts = workdir / "hosts"
        self.hosts.write_text("127.0.0.1 localhost\n")
        self.resolv.write_text("")
        for f in (self.resolv, self.hosts):
            f.chmod(0o644)

    def in_namespace(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = as_user_argv(self.user, self.stage.wg_wrap(*args))
        script = 'mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && ' \
            'shift && exec "$@"'
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
             str(self.resolv), str(self.hosts), *argv],
            env=user_env(self.runtime), capture_output=True, text=True, timeout=60, cwd="/",
        )

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_as_user(self.user, self.stage.wg_wrap(*args), env=user_env(self.runtime))

    def conf(self, server: WgWrapServer) -> Path:
        text = server.client_config().replace(
            f"Endpoint = 127.0.0.1:{server.port}", f"Endpoint = {NAME}:{server.port}"
        )
        assert NAME in text
        path = self.workdir / "wg0.conf"
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.gid)
        path.chmod(0o600)
        return path

    def up(self, server: WgWrapServer, after: float, *options: str) -> None:
        """`up` profile wg0 against server, by name, in the test's namespace."""
        up = self.in_namespace("up", *options, "-n", "wg0", "-c", str(self.conf(server)),
                               "--reresolve-after", str(after))
        assert up.returncode == 0, up.stderr

    def fetch(self, server: WgWrapServer, max_time: float = 2) -> bool:
        done = self("exec", "wg0", "--", "curl", "-sS", "--max-time", str(max_time),
                    f"http://{server.net.server4}:{HTTP_PORT}/")
        return f"sees you as {server.net.client4}" in done.stdout

    def peer_status(self) -> dict[str, object]:
        done = self("status", "--json", "wg0")
        assert done.returncode == 0, done.stderr
        (info,) = json.loads(done.stdout)
        (peer,) = info["peers"]
        return dict(peer)


@pytest.fixture
def client(
    stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path
) -> Iterator[Client]:
    c = Client(stage, test_user, user_runtime_dir, user_tmp)
    try:
        yield c
    finally:
        c("down", "--force", "wg0")


def recover_within(client: Client, server: WgWrapServer, limit: float) -> float:
    """Seconds until traffic passes again; fails after limit."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if client.fetch(server, max_time=1):
            return time.monotonic() - start
    raise AssertionError(f"traffic did not recover within {limit} s")


def move(server: WgWrapServer, stage: Stage, user: User, to: str) -> WgWrapServer:
    """The same peer (keys, port) at another address; the old one is gone."""
    moved = WgWrapServer(stage, user, server.net, keys=server.keys, port=server.port, listen=to)
    server.stop()
    return moved


@pytest.fixture
def servers(stage: Stage, test_user: User) -> Iterator[list[WgWrapServer]]:
    """The test's servers, the first one started; all stopped at the end
    (stopping twice is harmless)."""
    started = [WgWrapServer(stage, test_user, next_net())]
    try:
        yield started
    finally:
        for s in started:
            s.stop()


def test_the_tunnel_follows_a_peer_whose_name_moves(
    stage: Stage, test_user: User, client: Client, dns_server: ControlledDNS,
    servers: list[WgWrapServer],
) -> None:
    old = servers[0]
    dns_server.point("127.0.0.1")
    client.resolv.write_text(f"nameserver {dns_server.ip}\n")
    client.up(old, AFTER, "-v")
    asked_at_start = dns_server.queries
    assert asked_at_start >= 1  # wg-wrap resolved it on the host, through our server
    assert client.fetch(old)
    peer = client.peer_status()
    assert peer["endpoint"] == f"127.0.0.1:{old.port}"
    assert peer["endpoint_name"] == f"{NAME}:{old.port}"

    dns_server.point("127.0.0.2")
    servers.append(move(old, stage, test_user, "127.0.0.2"))
    took = recover_within(client, servers[-1], AFTER + HANDSHAKE + 2)
    assert dns_server.queries > asked_at_start  # the sidecar asked the host's server
    peer = client.peer_status()
    assert peer["endpoint"] == f"127.0.0.2:{old.port}"
    assert peer["endpoint_addresses"] == ["127.0.0.2"]
    assert isinstance(peer["resolved_at"], float) and time.time() - peer["resolved_at"] < 30
    shown = client("status", "wg0").stdout
    assert f"endpoint name: {NAME}:{old.port} (resolved " in shown
    print(f"recovered {took:.1f} s after the move")


def test_names_from_the_hosts_file_are_followed_too(
    stage: Stage, test_user: User, client: Client, dns_server: ControlledDNS,
    servers: list[WgWrapServer],
) -> None:
    """/etc/hosts is the host's file inside too: it is read first, as glibc does."""
    old = servers[0]
    client.resolv.write_text(f"nameserver {dns_server.ip}\n")  # knows nothing: NXDOMAIN
    client.hosts.write_text(f"127.0.0.1 localhost\n127.0.0.1 {NAME}\n")
    client.up(old, AFTER)
    assert client.fetch(old)

    with client.hosts.open("r+") as f:  # in place: the bind mount shows the same file
        f.truncate(0)
        f.write(f"127.0.0.1 localhost\n127.0.0.2 {NAME}\n")
    servers.append(move(old, stage, test_user, "127.0.0.2"))
    recover_within(client, servers[-1], AFTER + HANDSHAKE + 2)
    assert client.peer_status()["endpoint"] == f"127.0.0.2:{old.port}"


def test_reresolve_after_0_never_moves(
    stage: Stage, test_user: User, client: Client, dns_server: ControlledDNS,
    servers: list[WgWrapServer],
) -> None:
    old = servers[0]
    dns_server.point("127.0.0.1")
    client.resolv.write_text(f"nameserver {dns_server.ip}\n")
    client.up(old, 0)
    asked = dns_server.queries
    assert "endpoint_name" not in client.peer_status()
    dns_server.point("127.0.0.2")
    servers.append(move(old, stage, test_user, "127.0.0.2"))
    assert not client.fetch(servers[-1], max_time=AFTER + HANDSHAKE)
    assert dns_server.queries == asked
    assert client.peer_status()["endpoint"] == f"127.0.0.1:{old.port}"
