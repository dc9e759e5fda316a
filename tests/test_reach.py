"""Published ports: the host reaches services inside a profile.

As the unprivileged user, against a real wg-wrap server peer; the clients
are real connections from the host (Python sockets, curl) to sockets
wg-wrap opened on the host and handed to the sidecar.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading

import pytest
from conftest import Tool
from peers import HTTP_PORT, Server, WgWrapServer
from reachkit import SERVICE, connect, published_port, read_all

pytestmark = pytest.mark.e2e

# Ports inside the profile (the host ports are chosen by the kernel: -p 0:PORT).
ECHO4, ECHO6, ECHO_ANY, HTTP_IN, UDP_IN = 9001, 9002, 9003, 9004, 9005




@pytest.fixture
def published(server: Server, tool: Tool) -> dict[str, object]:
    """A persistent profile publishing five ports, with a service inside
    listening on 127.0.0.1, ::1 and all addresses."""
    conf = tool.file("reach.conf", server.client_config())
    up = tool(
        "up", "-c", str(conf),
        "-p", f"0:{ECHO4}", "-p", f"[::1]:0:{ECHO6}", "-p", f"127.0.0.1:0:{ECHO_ANY}",
        "-p", f"0:{HTTP_IN}", "-p", f"0:{UDP_IN}/udp",
    )
    assert up.returncode == 0, up.stderr
    assert up.stdout == "reach\n"
    tool.inside(
        "reach", SERVICE, f"tcp:127.0.0.1:{ECHO4}", f"tcp:[::1]:{ECHO6}", f"tcp:[::]:{ECHO_ANY}",
        f"http:127.0.0.1:{HTTP_IN}", f"udp:127.0.0.1:{UDP_IN}",
    )
    info = tool.status("reach")
    return {"info": info, "server": server}


def test_published_tcp_reaches_listeners_on_v4_v6_and_any_address(
    published: dict[str, object], tool: Tool
) -> None:
    info = published["info"]
    assert isinstance(info, dict)
    for port, host, inside_peer in (
        (ECHO4, "127.0.0.1", "127.0.0.1:"),
        (ECHO6, "::1", "::1:"),  # an IPv6 host address, to a program on ::1 only
        (ECHO_ANY, "127.0.0.1", ""),  # a program on all addresses
    ):
        host_port = published_port(info, port, host="[::1]" if ":" in host else host)
        with connect(host, host_port) as sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            reply = read_all(sock).decode()
        first, _, echoed = reply.partition("\n")
        assert echoed == "ping", reply
        # The program sees the sidecar's end of a connection over its own loopback.
        assert first.startswith("from "), reply
        assert first[5:].startswith(inside_peer) and (
            "127.0.0.1" in first or "::1" in first
        ), reply
    # curl, from the host, to a web server inside.
    http_port = published_port(info, HTTP_IN)
    curl = subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{http_port}/"],
        capture_output=True, text=True, timeout=30,
    )
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout.startswith("hello from inside, 127.0.0.1:")
    # status and ls show what is published.
    shown = tool("status", "reach").stdout
    assert f"published: [::1]:{published_port(info, ECHO6, host='[::1]')} -> {ECHO6}/tcp" in shown
    ls = tool("ls").stdout
    assert f"127.0.0.1:{http_port}->{HTTP_IN}/tcp" in ls


def test_half_close_passes_both_ways(published: dict[str, object]) -> None:
    info = published["info"]
    assert isinstance(info, dict)
    with connect("127.0.0.1", published_port(info, ECHO4)) as sock:
        greeting = sock.recv(100)
        assert greeting.startswith(b"from ")
        # We are done sending; the answer still arrives over the other half.
        sock.sendall(b"request")
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"request"  # ends with the program's own half-close


def test_two_hundred_concurrent_connections(published: dict[str, object]) -> None:
    info = published["info"]
    assert isinstance(info, dict)
    port = published_port(info, ECHO4)
    n = 200
    socks = [connect("127.0.0.1", port, timeout=30) for _ in range(n)]
    # All greeted: all 200 are through to the program at the same time.
    for s in socks:
        assert s.recv(100).startswith(b"from ")
    errors: list[str] = []

    def exchange(i: int, s: socket.socket) -> None:
        payload = os.urandom(64 << 10)

        def send() -> None:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)

        try:
            sender = threading.Thread(target=send)
            sender.start()
            got = read_all(s)
            sender.join()
            if got != payload:
                errors.append(f"connection {i}: {len(got)} bytes back")
        except OSError as e:
            errors.append(f"connection {i}: {e}")
        finally:
            s.close()

    threads = [threading.Thread(target=exchange, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads)


def test_published_udp_keeps_one_session_per_source(published: dict[str, object]) -> None:
    info = published["info"]
    assert isinstance(info, dict)
    port = published_port(info, UDP_IN, "udp")
    seen: dict[bytes, set[bytes]] = {}
    for who in (b"alice", b"bob"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            for _ in range(3):
                s.sendto(who, ("127.0.0.1", port))
                data, sender = s.recvfrom(1500)
                assert sender == ("127.0.0.1", port)
                peer, _, echoed = data.partition(b" ")
                assert echoed == who
                seen.setdefault(who, set()).add(peer)
    # Each source has its own address inside, the same for all its datagrams.
    assert all(len(peers) == 1 for peers in seen.values()), seen
    assert seen[b"alice"] != seen[b"bob"]
    assert all(p.startswith(b"127.0.0.1:") for peers in seen.values() for p in peers)


def test_published_ports_are_inbound_only(
    published: dict[str, object], tool: Tool
) -> None:
    """Inside, nothing leads to the host's network through the published
    ports: the program's network is still lo and the tunnel, the host's
    loopback services are out of reach, and it holds no host socket."""
    info, server = published["info"], published["server"]
    assert isinstance(info, dict) and isinstance(server, Server)
    host_only = socket.create_server(("127.0.0.1", 0))  # a service on the host's loopback
    try:
        host_port = host_only.getsockname()[1]
        published_tcp = published_port(info, ECHO4)
        probe = (
            "import os, socket, json\n"
            "out = {'ifaces': sorted(n for _, n in socket.if_nameindex())}\n"
            "import sys\n"
            "for name, port in zip(('host_only', 'published'), map(int, sys.argv[1:])):\n"
            "    try:\n"
            "        socket.create_connection(('127.0.0.1', port), timeout=3).close()\n"
            "        out[name] = 'connected'\n"
            "    except OSError as e:\n"
            "        out[name] = type(e).__name__\n"
            "links = []\n"
            "for fd in os.listdir('/proc/self/fd'):\n"
            "    try:\n"
            "        links.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
            "    except OSError:\n"
            "        pass  # the listing's own fd, closed by now\n"
            "out['sockets'] = [link for link in links if link.startswith('socket:')]\n"
            "print(json.dumps(out))\n"
        )
        result = tool("exec", "reach", "--", str(tool.stage.python), "-c", probe,
                      str(host_port), str(published_tcp))
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["ifaces"] == ["lo", "tun0"]
        assert out["host_only"] == "ConnectionRefusedError"  # the host's 127.0.0.1 is not here
        # The published host port is nothing inside (unless a program there
        # happens to listen on the same number).
        assert out["published"] == "ConnectionRefusedError"
        assert out["sockets"] == []  # no socket of the host's was passed on
        # The program's outbound traffic still goes through the tunnel.
        curl = tool("exec", "reach", "--", "curl", "-sS", "--max-time", "10",
                    f"http://{server.net.server4}:{HTTP_PORT}/")
        assert f"sees you as {server.net.client4}" in curl.stdout, curl.stderr
    finally:
        host_only.close()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_port_taken_on_the_host_fails_the_start_with_one_line(
    wgwrap_server: WgWrapServer, tool: Tool, proto: str
) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if proto == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        conf = tool.file("taken.conf", wgwrap_server.client_config())
        result = tool("run", "-c", str(conf), "-p", f"{port}:80/{proto}", "--", "true")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"wg-wrap: error: 127.0.0.1:{port}/{proto} is already in use on this host "
        f"(published port 127.0.0.1:{port}:80/{proto})"
    ), result.stderr
    assert len(lines) == 2 and lines[1].startswith("wg-wrap: hint: "), result.stderr
    assert tool.wait_gone(2), (tool.profiles(), tool.sidecars())


def test_publish_and_unpublish_on_a_running_profile(
    wgwrap_server: WgWrapServer, tool: Tool
) -> None:
    conf = tool.file("live.conf", wgwrap_server.client_config())
    up = tool("up", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    tool.inside("live", SERVICE, f"tcp:127.0.0.1:{ECHO4}", f"udp:127.0.0.1:{UDP_IN}")
    pub = tool("publish", "live", f"0:{ECHO4}", f"0:{UDP_IN}/udp")
    assert pub.returncode == 0, pub.stderr
    info = tool.status("live")
    tcp_port, udp_port = published_port(info, ECHO4), published_port(info, UDP_IN, "udp")
    assert pub.stdout.splitlines() == [
        f"published 127.0.0.1:{tcp_port} -> {ECHO4}/tcp",
        f"published 127.0.0.1:{udp_port} -> {UDP_IN}/udp",
    ]
    held = connect("127.0.0.1", tcp_port)
    assert held.recv(100).startswith(b"from ")
    # A host port already in use is refused, and nothing changes.
    again = tool("publish", "live", f"{tcp_port}:{ECHO4}")
    assert again.returncode == 1 and "already in use" in again.stderr
    assert len(tool.status("live")["published"]) == 2

    unpub = tool("unpublish", "live", str(tcp_port))
    assert unpub.returncode == 0, unpub.stderr
    assert unpub.stdout.strip() == f"unpublished 127.0.0.1:{tcp_port} -> {ECHO4}/tcp"
    # No longer listening, and the connection made through it is ended.
    with pytest.raises(ConnectionRefusedError):
        connect("127.0.0.1", tcp_port).close()
    held.settimeout(10)
    try:
        assert held.recv(100) == b""
    except ConnectionResetError:
        pass
    held.close()
    assert [p["proto"] for p in tool.status("live")["published"]] == ["udp"]
    missing = tool("unpublish", "live", str(tcp_port))
    assert missing.returncode == 1
    assert f"nothing is published on host port {tcp_port}/tcp" in missing.stderr
    assert tool("unpublish", "live", f"{udp_port}/udp").returncode == 0
    assert tool.status("live")["published"] == []
    assert tool("publish", "nosuch", "0:80").returncode == 1


def test_bad_publish_specs_are_usage_errors(tool: Tool) -> None:
    for spec, message in (
        ("80", "expected [ADDR:]HOSTPORT:PORT"),
        ("8080:0", "port 0 is out of range"),
        ("localhost:8080:80", "'localhost' is not an IPv4 address"),
        ("8080:80/sctp", "protocol 'sctp' is not tcp or udp"),
    ):
        result = tool("run", "-c", "/nonexistent.conf", "-p", spec, "--", "true")
        assert result.returncode == 2, result.stderr
        assert message in result.stderr.splitlines()[0], result.stderr
