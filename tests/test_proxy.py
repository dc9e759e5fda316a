"""The proxy front: SOCKS5 and HTTP proxies that dial from inside a profile.

As the unprivileged user, against both real peers (a wg-wrap server and
stock wireguard-go); the clients run on the host: curl, and a Python SOCKS5
client for UDP ASSOCIATE.
"""

from __future__ import annotations

import pwd
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, Tool, User, as_user_argv, user_env
from peers import DNS_NAME, HTTP_PORT, UDP_PORT, LineLog, Server, WgWrapServer
from reachkit import SERVICE, read_socks_address, socks_address, socks_request

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "correct horse: battery staple"
AUTH_ENV = {"WG_WRAP_PROXY_AUTH": f"{USER}:{PASSWORD}"}
SECOND_USER = "wgwrap-test2"



def start(tool: Tool, server: Server, *options: str, env: dict[str, str] | None = None,
          name: str = "px") -> dict[str, object]:
    conf = tool.file(f"{name}.conf", server.client_config())
    up = tool("up", "-c", str(conf), *options, env=env)
    assert up.returncode == 0, up.stderr
    return tool.status(name)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "15", *args],
                          capture_output=True, text=True, timeout=60)


def page(server: Server) -> str:
    return f"http://{DNS_NAME}:{HTTP_PORT}/"


def test_socks5_connect_resolves_names_inside_the_tunnel(server: Server, tool: Tool) -> None:
    info = start(tool, server, "--socks", "127.0.0.1:0")
    socks = info["socks"]
    assert isinstance(socks, dict) and not socks["auth"]
    # A name only the peer's DNS knows: curl hands it to the proxy unresolved.
    result = curl("--socks5-hostname", socks["address"], page(server))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"hello through the tunnel: the peer sees you as {server.net.client4}\n"
    # The lookup went to the peer's DNS, from the tunnel address.
    assert server.log.wait_for(f"dns {server.net.client4}", 5)
    assert server.log.wait_for(f"http {server.net.client4} /", 5)
    # An IPv6 destination inside the tunnel, by address.
    result = curl("--socks5-hostname", socks["address"],
                  f"http://[{server.net.server6}]:{HTTP_PORT}/")
    assert result.returncode == 0, result.stderr
    assert f"sees you as {server.net.client6}" in result.stdout


def test_socks5_and_http_proxy_require_the_password(
    wgwrap_server: Server, tool: Tool, stage: Stage
) -> None:
    server = wgwrap_server
    info = start(tool, server, "--socks", "0", "--http-proxy", "0", env=AUTH_ENV)
    socks, http = info["socks"], info["http_proxy"]
    assert isinstance(socks, dict) and isinstance(http, dict)
    assert socks["auth"] and http["auth"]
    good = f"{USER}:{PASSWORD}"
    ok = curl("--socks5-hostname", socks["address"], "--proxy-user", good, page(server))
    assert ok.returncode == 0 and "sees you as" in ok.stdout, ok.stderr
    for creds in ((), ("--proxy-user", f"{USER}:wrong")):
        refused = curl("--socks5-hostname", socks["address"], *creds, page(server))
        assert refused.returncode != 0 and "sees you as" not in refused.stdout
    # The HTTP proxy: an absolute-URI GET and a CONNECT tunnel.
    for tunnel in ((), ("--proxytunnel",)):
        ok = curl("-x", f"http://{http['address']}", "--proxy-user", good, *tunnel, page(server))
        assert ok.returncode == 0 and "sees you as" in ok.stdout, (tunnel, ok.stderr)
        challenge = curl("-x", f"http://{http['address']}", *tunnel, "-o", "/dev/null",
                         "-w", "%{http_code}", page(server))
        assert "407" in challenge.stdout + challenge.stderr, (tunnel, challenge)
    # The password is in no argv, environment or file of wg-wrap's.
    sidecar = info["sidecar_pid"]
    for what in ("cmdline", "environ"):
        assert PASSWORD.encode() not in Path(f"/proc/{sidecar}/{what}").read_bytes(), what
    for path in (tool.state_dir / "px").iterdir():
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    # Whatever the flags: a program never gets the proxy's password.
    inside = tool("exec", "px", "--", "env", env=AUTH_ENV)
    assert inside.returncode == 0, inside.stderr
    assert "WG_WRAP_PROXY_AUTH" not in inside.stdout
    run = tool("run", "-n", "px2", "-c", str(tool.workdir / "px.conf"), "--socks", "0", "--",
               "env", env=AUTH_ENV)
    assert run.returncode == 0, run.stderr
    assert "WG_WRAP_PROXY_AUTH" not in run.stdout  # taken out before the program starts


def test_proxy_auth_from_a_file(wgwrap_server: Server, tool: Tool) -> None:
    secret = tool.file("proxy-auth", f"{USER}:{PASSWORD}\n")
    info = start(tool, wgwrap_server, "--socks", "0", "--proxy-auth-file", str(secret))
    socks = info["socks"]
    assert isinstance(socks, dict) and socks["auth"]
    refused = curl("--socks5-hostname", socks["address"], page(wgwrap_server))
    assert refused.returncode != 0
    ok = curl("--socks5-hostname", socks["address"], "--proxy-user", f"{USER}:{PASSWORD}",
              page(wgwrap_server))
    assert ok.returncode == 0, ok.stderr


def test_socks5_udp_associate_exchanges_datagrams_with_the_peer(
    server: Server, tool: Tool
) -> None:
    info = start(tool, server, "--socks", "127.0.0.1:0", env=AUTH_ENV)
    socks = info["socks"]
    assert isinstance(socks, dict)
    host, port = socks["address"].rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(10)
        control, relay_host, relay_port = socks_request(
            (host, int(port)), 3, "0.0.0.0", udp.getsockname()[1], auth=(USER, PASSWORD)
        )
        with control:
            # The relay is on the proxy's own address, not on all addresses.
            assert (relay_host, relay_port) == ("127.0.0.1", int(socks["udp_relay"].split(":")[1]))
            assert _udp_local_addresses(relay_port) == ["127.0.0.1"]
            for target in (server.net.server4, DNS_NAME):
                payload = f"through the relay to {target}".encode()
                udp.sendto(b"\0\0\0" + socks_address(target, UDP_PORT) + payload,
                           (relay_host, relay_port))
                data, sender = udp.recvfrom(65535)
                assert sender == (relay_host, relay_port)
                src, src_port, echoed = read_socks_address(data[3:])
                assert data[:3] == b"\0\0\0" and echoed == payload
                assert (src, src_port) in ((server.net.server4, UDP_PORT),
                                           (server.net.server6, UDP_PORT))
            assert server.log.wait_for(f"udp {server.net.client4} {len(payload)}", 5) or \
                server.log.wait_for(f"udp {server.net.client6} {len(payload)}", 5)


def _udp_local_addresses(port: int) -> list[str]:
    """Local addresses of the host's UDP sockets bound to port."""
    found = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local = line.split()[1]
            addr, hexport = local.split(":")
            if int(hexport, 16) != port:
                continue
            raw = bytes.fromhex(addr)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
            found.append(socket.inet_ntop(family, words))
    return found


def test_two_hundred_concurrent_socks5_connections(wgwrap_server: Server, tool: Tool) -> None:
    info = start(tool, wgwrap_server, "--socks", "0")
    socks = info["socks"]
    assert isinstance(socks, dict)
    host, port = socks["address"].rsplit(":", 1)
    conns = [socks_request((host, int(port)), 1, wgwrap_server.net.server4, HTTP_PORT)[0]
             for _ in range(200)]
    errors: list[str] = []

    def fetch(sock: socket.socket) -> None:
        with sock:
            try:
                sock.sendall(b"GET /many HTTP/1.0\r\nHost: peer\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                if b"sees you as" not in data:
                    errors.append(repr(data[:100]))
            except OSError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=fetch, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert not any(t.is_alive() for t in threads)


def test_proxy_command_serves_with_no_program_until_interrupted(
    wgwrap_server: Server, tool: Tool
) -> None:
    conf = tool.file("front.conf", wgwrap_server.client_config())
    proc = tool.popen("proxy", "-c", str(conf), "--socks", "0", "--http-proxy", "0")
    log = LineLog(proc.stderr)
    try:
        assert log.wait_for("serving profile front", 30), log.drain()
        text = "\n".join(log.drain())
        socks = re.search(r"SOCKS5 proxy on (127\.0\.0\.1:\d+), UDP relay on 127\.0\.0\.1:", text)
        http = re.search(r"HTTP proxy on (127\.0\.0\.1:\d+)", text)
        assert socks and http, text
        result = curl("--socks5-hostname", socks.group(1), page(wgwrap_server))
        assert result.returncode == 0 and "sees you as" in result.stdout, result.stderr
        result = curl("-x", f"http://{http.group(1)}", page(wgwrap_server))
        assert result.returncode == 0 and "sees you as" in result.stdout, result.stderr
        assert tool.profiles() == ["front"] and len(tool.sidecars()) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert tool.wait_gone(3), (tool.profiles(), tool.sidecars())


def test_proxy_command_ends_its_profile_when_killed(wgwrap_server: Server, tool: Tool) -> None:
    conf = tool.file("front.conf", wgwrap_server.client_config())
    proc = tool.popen("proxy", "-c", str(conf), "--socks", "0")
    log = LineLog(proc.stderr)
    try:
        assert log.wait_for("serving profile front", 30), log.drain()
        proc.kill()  # no chance to clean up: the sidecar notices by itself
        proc.wait()
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert tool.wait_gone(5), (tool.profiles(), tool.sidecars())


@pytest.mark.parametrize("option", ["--socks", "--http-proxy"])
def test_a_proxy_beyond_loopback_without_a_password_is_refused(
    wgwrap_server: Server, tool: Tool, option: str
) -> None:
    conf = tool.file("open.conf", wgwrap_server.client_config())
    result = tool("run", "-c", str(conf), option, "0.0.0.0:0", "--", "true")
    assert result.returncode == 2
    first, *rest = result.stderr.splitlines()
    assert first.startswith("wg-wrap: error: refusing to open the ")
    assert "on 0.0.0.0:0 without authentication" in first
    assert len(rest) == 1 and "WG_WRAP_PROXY_AUTH" in rest[0]
    assert tool.wait_gone(1)


def test_proxy_options_are_refused_when_joining(wgwrap_server: Server, tool: Tool) -> None:
    conf = tool.file("joined.conf", wgwrap_server.client_config())
    assert tool("up", "-c", str(conf)).returncode == 0
    result = tool("run", "-c", str(conf), "--socks", "0", "--", "true")
    assert result.returncode == 1
    assert "is already running: -p, --socks, --http-proxy and --port-forward apply only when" \
        in result.stderr
    assert tool.status("joined")["socks"] is None


# The namespace's own loopback is not the proxy's to reach: programs inside
# may serve there for themselves alone, and a loopback proxy without a
# password serves every local user.

INSIDE_HTTP, INSIDE_UDP = 8181, 7171
TO_ITSELF = ["127.0.0.1", "::1", "0.0.0.0", "::", "localhost"]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def test_the_proxy_never_reaches_the_namespace_itself(
    wgwrap_server: Server, tool: Tool, stage: Stage
) -> None:
    server = wgwrap_server
    info = start(tool, server, "--socks", "127.0.0.1:0", "--http-proxy", "127.0.0.1:0")
    socks, http = info["socks"], info["http_proxy"]
    assert isinstance(socks, dict) and isinstance(http, dict)
    tool.inside("px", SERVICE, f"http:127.0.0.1:{INSIDE_HTTP}", f"http:[::1]:{INSIDE_HTTP}",
                f"udp:127.0.0.1:{INSIDE_UDP}", f"udp:[::1]:{INSIDE_UDP}")
    # The services answer programs inside: the refusals below are the proxy's.
    inside = tool("exec", "px", "--", "curl", "-sS", "--max-time", "10",
                  f"http://127.0.0.1:{INSIDE_HTTP}/")
    assert "hello from inside" in inside.stdout, inside.stderr
    host, port = socks["address"].rsplit(":", 1)
    proxy = (host, int(port))
    for target in TO_ITSELF:
        # SOCKS5 CONNECT: "connection not allowed by ruleset".
        with pytest.raises(ConnectionError, match=r"^reply 2$"):
            socks_request(proxy, 1, target, INSIDE_HTTP)[0].close()
        # The HTTP proxy: 403, to an absolute URI and to CONNECT.
        url = f"http://{_url_host(target)}:{INSIDE_HTTP}/"
        for tunnel in ((), ("--proxytunnel",)):
            got = curl("-x", f"http://{http['address']}", *tunnel, "-o", "/dev/null",
                       "-w", "%{http_code} %{http_connect}", url)
            assert "403" in got.stdout and "hello" not in got.stdout, (target, tunnel, got)
    # UDP ASSOCIATE: datagrams to the namespace's own echo are dropped...
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        control, relay_host, relay_port = socks_request(proxy, 3, "0.0.0.0", udp.getsockname()[1])
        with control:
            for target in TO_ITSELF:
                udp.sendto(b"\0\0\0" + socks_address(target, INSIDE_UDP) + b"to itself",
                           (relay_host, relay_port))
            udp.settimeout(1.5)
            with pytest.raises(TimeoutError):
                data = udp.recv(65535)
                pytest.fail(f"an answer from inside the namespace: {data!r}")
            # ... while the peer, through the tunnel, answers the same relay.
            udp.settimeout(10)
            udp.sendto(b"\0\0\0" + socks_address(server.net.server4, UDP_PORT) + b"to the peer",
                       (relay_host, relay_port))
            src, src_port, echoed = read_socks_address(udp.recv(65535)[3:])
            assert (src, src_port, echoed) == (server.net.server4, UDP_PORT, b"to the peer")
    # And the proxy reaches the peer's address, over both.
    ok = curl("--socks5-hostname", socks["address"], page(server))
    assert ok.returncode == 0 and "sees you as" in ok.stdout, ok.stderr
    for tunnel in ((), ("--proxytunnel",)):
        ok = curl("-x", f"http://{http['address']}", *tunnel, page(server))
        assert ok.returncode == 0 and "sees you as" in ok.stdout, (tunnel, ok.stderr)


# A SOCKS5 UDP association belongs to the user who holds its control
# connection: on 127.0.0.1 every local user has the client's IP.

@pytest.fixture(scope="session")
def second_user(test_user: User) -> User:
    """Another unprivileged local user, the stranger (never root)."""
    try:
        pw = pwd.getpwnam(SECOND_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SECOND_USER],
            check=True,
        )
        pw = pwd.getpwnam(SECOND_USER)
    assert pw.pw_uid not in (0, test_user.uid)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid)


# The client: UDP ASSOCIATE declaring no port (0.0.0.0:0, as RFC 1928
# allows), then, once told, one datagram to the peer's echo.
UDP_CLIENT = r"""
import socket, struct, sys
proxy_host, proxy_port, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dst_port, size = int(sys.argv[4]), int(sys.argv[5])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
control = socket.create_connection((proxy_host, proxy_port), timeout=10)
control.sendall(b"\x05\x01\x00")
assert control.recv(2) == b"\x05\x00"
control.sendall(b"\x05\x03\x00\x01" + bytes(4) + bytes(2))
reply = control.recv(10)
assert reply[1] == 0, reply
relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
print("relay", *relay, flush=True)
sys.stdin.readline()
header = b"\0\0\0\x01" + socket.inet_aton(dst) + struct.pack("!H", dst_port)
udp.sendto(header + b"C" * size, relay)
udp.settimeout(10)
try:
    data, sender = udp.recvfrom(65535)
    print("answer", len(data) - len(header), flush=True)
except TimeoutError:
    print("no answer", flush=True)
sys.stdin.readline()
"""

# The stranger: sends first to the relay, from the client's IP, and waits
# for what comes back.
UDP_STRANGER = r"""
import socket, struct, sys
relay, dst = (sys.argv[1], int(sys.argv[2])), sys.argv[3]
dst_port, size = int(sys.argv[4]), int(sys.argv[5])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
udp.sendto(b"\0\0\0\x01" + socket.inet_aton(dst) + struct.pack("!H", dst_port) + b"S" * size, relay)
udp.settimeout(2)
try:
    print("answer", len(udp.recv(65535)))
except TimeoutError:
    print("no answer")
"""


def test_a_stranger_sending_first_does_not_take_the_udp_association(
    wgwrap_server: Server, tool: Tool, stage: Stage, test_user: User, second_user: User
) -> None:
    server = wgwrap_server
    info = start(tool, server, "--socks", "127.0.0.1:0")
    socks = info["socks"]
    assert isinstance(socks, dict)
    host, port = socks["address"].rsplit(":", 1)
    python = str(stage.python)
    mine, theirs = 111, 222  # payload sizes, as the peer logs them
    client = subprocess.Popen(
        as_user_argv(test_user, [python, "-c", UDP_CLIENT, host, port, server.net.server4,
                                 str(UDP_PORT), str(mine)]),
        env=user_env(), cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert client.stdout and client.stdin
        relay = client.stdout.readline().split()
        assert relay[:1] == ["relay"], relay
        stranger = subprocess.run(
            as_user_argv(second_user, [python, "-c", UDP_STRANGER, relay[1], relay[2],
                                       server.net.server4, str(UDP_PORT), str(theirs)]),
            env=user_env(), cwd="/", capture_output=True, text=True, timeout=30,
        )
        assert stranger.stdout.strip() == "no answer", stranger
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline().split() == ["answer", str(mine)]
        assert server.log.wait_for(f"udp {server.net.client4} {mine}", 5)
        assert not any(line.endswith(f" {theirs}") for line in server.log.drain()), \
            "the stranger's datagram reached the peer"
    finally:
        client.kill()
        client.wait()
        for stream in (client.stdin, client.stdout):
            if stream:
                stream.close()


# The HTTP proxy with a real origin that chunks, behind the tunnel: the
# origin gets the Host of the URI, an HTTP/1.0 client gets no chunked body,
# an HTTP/1.1 client gets the chunks and the Trailer header as sent.

ORIGIN_PORT = 8282
CHUNKING_ORIGIN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    with c:
        data = b""
        while b"\r\n\r\n" not in data and (chunk := c.recv(65536)):
            data += chunk
        lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
        hosts = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("host:")]
        body = f"{lines[0].split()[-1]} hosts={','.join(hosts)}".encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                  + f"{len(body):x}\r\n".encode() + body
                  + b"\r\n7\r\n|chunk!\r\n0\r\nX-Checksum: 42\r\n\r\n")
"""


@pytest.fixture
def chunking_origin(wgwrap_server: WgWrapServer, stage: Stage, test_user: User) -> Iterator[str]:
    """CHUNKING_ORIGIN inside the server peer's namespace; its address."""
    argv = stage.wg_wrap("exec", "test-server", "--", str(stage.python), "-c", CHUNKING_ORIGIN,
                         str(ORIGIN_PORT))
    proc = subprocess.Popen(as_user_argv(test_user, argv), env=user_env(wgwrap_server.runtime_dir),
                            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert LineLog(proc.stdout).wait_for("ready", 30), proc.stderr
        yield f"{wgwrap_server.net.server4}:{ORIGIN_PORT}"
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def _through(proxy: str, request: str) -> tuple[str, bytes]:
    """Send a raw request to the HTTP proxy; the answer's head and body."""
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as c:
        c.sendall(request.encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode(), body


def test_http_proxy_sends_the_targets_host_and_no_chunks_to_http10(
    wgwrap_server: Server, tool: Tool, chunking_origin: str
) -> None:
    info = start(tool, wgwrap_server, "--http-proxy", "127.0.0.1:0")
    http = info["http_proxy"]
    assert isinstance(http, dict)
    target = f"http://{chunking_origin}/"
    head, body = _through(http["address"],
                          f"GET {target} HTTP/1.0\r\nHost: evil.example\r\n\r\n")
    assert head.startswith("HTTP/1.1 200 ") and "Transfer-Encoding" not in head, head
    assert "Trailer" not in head, head
    # One Host, the URI's; the request went on as HTTP/1.1; the body de-chunked.
    assert body == f"HTTP/1.1 hosts={chunking_origin}|chunk!".encode()
    head, body = _through(http["address"],
                          f"GET {target} HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert "Transfer-Encoding: chunked" in head and "Trailer: X-Checksum" in head, head
    assert body.endswith(b"7\r\n|chunk!\r\n0\r\nX-Checksum: 42\r\n\r\n"), body
