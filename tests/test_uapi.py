"""The UAPI codec (exact request text, hand-written get replies, error replies,
hypothesis round trips) and the thin client against a fake server on a unix socket."""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import need_interop_tools
from hypothesis import given
from hypothesis import strategies as st
from strategies import configs, ip_endpoints, keys, networks

from wg_wrap.config import Config, Endpoint, Interface, Peer, parse_config
from wg_wrap.errors import UAPIError
from wg_wrap.uapi import (
    DeviceStatus,
    PeerStatus,
    UAPIClient,
    decode_get,
    encode_get,
    encode_set,
    key_from_hex,
    key_to_hex,
    parse_errno,
)

PRIV = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
PUB = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
PUB2 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="
PSK = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="

PRIV_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
PUB_HEX = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
PUB2_HEX = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
PSK_HEX = "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"

CONFIG = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.2.0.2/32, fd00::2/128
DNS = 10.2.0.1
ListenPort = 51820
FwMark = 0x1234
MTU = 1380

[Peer]
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = vpn.example.com:51820
PersistentKeepalive = 25

[Peer]
PublicKey = {PUB2}
AllowedIPs = 10.8.0.3/32, fd08::3/128
Endpoint = [2001:db8::7]:4500
"""

# What wireguard-go prints for `get=1` (device/uapi.go IpcGetOperation), by hand.
GET_REPLY = f"""\
private_key={PRIV_HEX}
listen_port=51820
fwmark=4660
public_key={PUB_HEX}
preshared_key={PSK_HEX}
protocol_version=1
endpoint=[2001:db8::1]:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=250000000
tx_bytes=38333
rx_bytes=2224
persistent_keepalive_interval=25
allowed_ip=0.0.0.0/0
allowed_ip=::/0
public_key={PUB2_HEX}
preshared_key={"0" * 64}
protocol_version=1
endpoint=192.0.2.7:4500
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
allowed_ip=10.8.0.3/32
allowed_ip=fd08::3/128
errno=0

"""


def key(text: str) -> bytes:
    return base64.b64decode(text)


# --------------------------------------------------------------------------
# encode


def test_encode_set_of_a_realistic_config_is_exact() -> None:
    config = parse_config(CONFIG)
    resolved = {Endpoint("vpn.example.com", 51820): ("198.51.100.4", 51820)}
    assert encode_set(config, resolved) == (
        "set=1\n"
        f"private_key={PRIV_HEX}\n"
        "replace_peers=true\n"
        f"public_key={PUB_HEX}\n"
        f"preshared_key={PSK_HEX}\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=0.0.0.0/0\n"
        "allowed_ip=::/0\n"
        "endpoint=198.51.100.4:51820\n"
        "persistent_keepalive_interval=25\n"
        f"public_key={PUB2_HEX}\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.8.0.3/32\n"
        "allowed_ip=fd08::3/128\n"
        "endpoint=[2001:db8::7]:4500\n"
        "\n"
    )


def test_encode_set_never_sends_listen_port_or_fwmark() -> None:
    request = encode_set(parse_config(CONFIG), {Endpoint("vpn.example.com", 51820): ("::1", 1)})
    assert "listen_port" not in request and "fwmark" not in request


def test_encode_set_brackets_resolved_ipv6_endpoints() -> None:
    config = parse_config(CONFIG)
    for given_host in ("2001:db8::99", "[2001:DB8::99]"):
        request = encode_set(config, {Endpoint("vpn.example.com", 51820): (given_host, 443)})
        assert "endpoint=[2001:db8::99]:443\n" in request


def test_encode_set_needs_every_hostname_resolved() -> None:
    with pytest.raises(UAPIError, match=r"vpn\.example\.com:51820 has not been resolved"):
        encode_set(parse_config(CONFIG), None)
    with pytest.raises(UAPIError, match="is not an IP"):
        encode_set(parse_config(CONFIG), {Endpoint("vpn.example.com", 51820): ("vpn", 1)})
    with pytest.raises(UAPIError, match="out of range"):
        encode_set(parse_config(CONFIG), {Endpoint("vpn.example.com", 51820): ("192.0.2.1", 0)})


def test_encode_set_of_a_bare_peer() -> None:
    config = Config(Interface(private_key=key(PRIV)), (Peer(public_key=key(PUB)),))
    assert encode_set(config, None) == (
        f"set=1\nprivate_key={PRIV_HEX}\nreplace_peers=true\n"
        f"public_key={PUB_HEX}\nreplace_allowed_ips=true\n\n"
    )


def test_encode_get() -> None:
    assert encode_get() == "get=1\n\n"


# --------------------------------------------------------------------------
# decode


def test_decode_get_of_a_realistic_reply() -> None:
    status = decode_get(GET_REPLY)
    assert status == DeviceStatus(
        has_private_key=True,
        listen_port=51820,
        peers=(
            PeerStatus(
                public_key=key(PUB),
                endpoint="[2001:db8::1]:51820",
                last_handshake=1700000000.25,
                rx_bytes=2224,
                tx_bytes=38333,
                persistent_keepalive=25,
                allowed_ips=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
            ),
            PeerStatus(
                public_key=key(PUB2),
                endpoint="192.0.2.7:4500",
                last_handshake=None,
                rx_bytes=0,
                tx_bytes=0,
                persistent_keepalive=None,
                allowed_ips=(
                    ipaddress.ip_network("10.8.0.3/32"),
                    ipaddress.ip_network("fd08::3/128"),
                ),
            ),
        ),
    )


def test_decode_get_keeps_no_secret() -> None:
    status = decode_get(GET_REPLY)
    text = repr(status)
    for secret in (PRIV_HEX, PSK_HEX, repr(key(PRIV)), repr(key(PSK))):
        assert secret not in text
    assert key(PRIV) not in [getattr(status, f) for f in vars(status)]


def test_decode_get_of_an_empty_device() -> None:
    assert decode_get("errno=0\n\n") == DeviceStatus(False, 0, ())


def test_decode_get_skips_unknown_keys() -> None:
    reply = GET_REPLY.replace("protocol_version=1\n", "protocol_version=1\nfuture_key=x=y\n")
    assert decode_get(reply) == decode_get(GET_REPLY)


def test_decode_get_accepts_a_scoped_link_local_endpoint() -> None:
    reply = GET_REPLY.replace("[2001:db8::1]:51820", "[fe80::1%eth0]:51820")
    assert decode_get(reply).peers[0].endpoint == "[fe80::1%eth0]:51820"


def test_decode_get_raises_the_errno_of_a_failed_get() -> None:
    with pytest.raises(UAPIError) as info:
        decode_get("errno=-5\n\n")
    assert info.value.errno == -5
    assert "errno -5 (EIO" in str(info.value)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("", "empty UAPI reply"),
        ("\n\n", "empty UAPI reply"),
        (GET_REPLY.replace("errno=0\n", ""), "does not end with errno"),
        (GET_REPLY.replace("errno=0\n\n", "errno=0\n\nlisten_port=1\n"), "after the terminating"),
        (GET_REPLY.replace("errno=0", "errno=zero"), "bad errno"),
        (GET_REPLY.replace("listen_port=51820", "listen_port=70000"), "bad number for listen_port"),
        (GET_REPLY.replace("tx_bytes=38333", "tx_bytes=-1"), "bad number for tx_bytes"),
        (GET_REPLY.replace("tx_bytes=38333", "tx_bytes=1e3"), "bad number for tx_bytes"),
        (
            GET_REPLY.replace("nsec=250000000", "nsec=1000000000"),
            "bad number for last_handshake_time_nsec",
        ),
        (GET_REPLY.replace(PUB_HEX, PUB_HEX[:-1]), "malformed key"),
        (GET_REPLY.replace(PUB_HEX, PUB_HEX[:-1] + "g"), "malformed key"),
        (GET_REPLY.replace(PUB_HEX, PUB_HEX[:-2] + " 0"), "malformed key"),
        (GET_REPLY.replace("allowed_ip=::/0", "allowed_ip=::/129"), "bad allowed_ip on line 14"),
        (GET_REPLY.replace("192.0.2.7:4500", "192.0.2.7"), "bad endpoint"),
        (GET_REPLY.replace("[2001:db8::1]:51820", "2001:db8::1:51820"), "bad endpoint"),
        (GET_REPLY.replace("[2001:db8::1]:51820", "host.example:1"), "bad endpoint"),
        (GET_REPLY.replace("fwmark=4660", "fwmark"), "line 3 is not key=value"),
        (GET_REPLY.replace("fwmark=4660", "=4660"), "line 3 is not key=value"),
        (f"endpoint=192.0.2.1:1\n{GET_REPLY}", "endpoint before any public_key"),
        (GET_REPLY.replace("fwmark=4660", "errno=0"), "errno on line 3 is not the last line"),
    ],
)
def test_decode_get_rejects_malformed_replies(reply: str, message: str) -> None:
    with pytest.raises(UAPIError) as info:
        decode_get(reply)
    assert message in str(info.value)


def test_malformed_replies_never_quote_a_private_key() -> None:
    broken = GET_REPLY.replace(f"private_key={PRIV_HEX}", f"private_key={PRIV_HEX}0")
    for reply in (broken, GET_REPLY.replace("private_key=", "private_key")):
        with pytest.raises(UAPIError) as info:
            decode_get(reply)
        assert PRIV_HEX[:16] not in str(info.value)


@pytest.mark.parametrize(
    ("reply", "code"), [("errno=0\n\n", 0), ("errno=-22\n\n", -22), ("errno=-98\n", -98)]
)
def test_parse_errno(reply: str, code: int) -> None:
    assert parse_errno(reply) == code


@pytest.mark.parametrize(
    "reply", ["", "errno=\n\n", "errno=x\n\n", "listen_port=1\nerrno=0\n\n", "ok\n\n"]
)
def test_parse_errno_rejects_anything_else(reply: str) -> None:
    with pytest.raises(UAPIError):
        parse_errno(reply)


# --------------------------------------------------------------------------
# Properties

counters = st.integers(0, 2**64 - 1)


@given(keys)
def test_property_key_hex_round_trips(key_bytes: bytes) -> None:
    text = key_to_hex(key_bytes)
    assert len(text) == 64 and text == text.lower()
    assert key_from_hex(text) == key_bytes
    assert key_from_hex(text.upper()) == key_bytes


@given(st.binary().filter(lambda b: len(b) != 32))
def test_property_only_32_byte_keys_encode(data: bytes) -> None:
    with pytest.raises(ValueError):
        key_to_hex(data)


@given(st.text(max_size=70).filter(lambda t: len(t) != 64))
def test_property_key_from_hex_rejects_wrong_lengths(text: str) -> None:
    with pytest.raises(UAPIError):
        key_from_hex(text)


peer_statuses = st.builds(
    PeerStatus,
    public_key=keys,
    endpoint=st.none() | ip_endpoints.map(str),
    last_handshake=st.none() | st.integers(1, 2**40).map(float),
    rx_bytes=counters,
    tx_bytes=counters,
    persistent_keepalive=st.none() | st.integers(1, 65535),
    allowed_ips=st.lists(networks(), max_size=5).map(tuple),
)


def render_get(status: DeviceStatus, private_key: bytes) -> str:
    """Format a status exactly like wireguard-go's IpcGetOperation."""
    lines = [f"private_key={private_key.hex()}"] if status.has_private_key else []
    if status.listen_port:
        lines.append(f"listen_port={status.listen_port}")
    for peer in status.peers:
        seconds = int(peer.last_handshake or 0)
        lines += [
            f"public_key={peer.public_key.hex()}",
            f"preshared_key={'00' * 32}",
            "protocol_version=1",
        ]
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines += [
            f"last_handshake_time_sec={seconds}",
            "last_handshake_time_nsec=0",
            f"tx_bytes={peer.tx_bytes}",
            f"rx_bytes={peer.rx_bytes}",
            f"persistent_keepalive_interval={peer.persistent_keepalive or 0}",
        ]
        lines += [f"allowed_ip={network}" for network in peer.allowed_ips]
    return "".join(line + "\n" for line in lines) + "errno=0\n\n"


@given(
    st.builds(
        DeviceStatus,
        has_private_key=st.booleans(),
        listen_port=st.integers(0, 65535),
        peers=st.lists(peer_statuses, max_size=4).map(tuple),
    ),
    keys.filter(any),
)
def test_property_decode_get_inverts_what_wireguard_go_prints(
    status: DeviceStatus, private_key: bytes
) -> None:
    decoded = decode_get(render_get(status, private_key))
    assert decoded == status
    assert private_key.hex() not in repr(decoded)


def parse_set_request(request: str) -> tuple[bytes, list[dict[str, list[str]]]]:
    """A minimal reading of a set request, as wireguard-go's IpcSetOperation does it."""
    assert request.startswith("set=1\n") and request.endswith("\n\n")
    lines = request[len("set=1\n") : -2].split("\n")
    assert lines[1] == "replace_peers=true"
    private_key = bytes.fromhex(lines[0].removeprefix("private_key="))
    peers: list[dict[str, list[str]]] = []
    for line in lines[2:]:
        name, _, value = line.partition("=")
        if name == "public_key":
            peers.append({})
        peers[-1].setdefault(name, []).append(value)
    return private_key, peers


@given(configs(endpoint_strategy=ip_endpoints))
def test_property_encode_set_carries_the_whole_config(config: Config) -> None:
    private_key, peers = parse_set_request(encode_set(config, None))
    assert private_key == config.interface.private_key
    assert len(peers) == len(config.peers)
    for fields, peer in zip(peers, config.peers, strict=True):
        assert bytes.fromhex(fields["public_key"][0]) == peer.public_key
        psk = fields.get("preshared_key")
        assert (bytes.fromhex(psk[0]) if psk else None) == peer.preshared_key
        assert fields["replace_allowed_ips"] == ["true"]
        assert fields.get("allowed_ip", []) == [str(n) for n in peer.allowed_ips]
        assert fields.get("endpoint") == ([str(peer.endpoint)] if peer.endpoint else None)
        keepalive = fields.get("persistent_keepalive_interval")
        assert keepalive == (
            [str(peer.persistent_keepalive)] if peer.persistent_keepalive else None
        )
        assert set(fields) <= {
            "public_key",
            "preshared_key",
            "replace_allowed_ips",
            "allowed_ip",
            "endpoint",
            "persistent_keepalive_interval",
        }


# --------------------------------------------------------------------------
# The client, against a fake UAPI server on a temporary unix socket

Handler = Callable[[socket.socket, str], None]


class FakeUAPI:
    """Accepts connections, records each request, answers with ``handler``."""

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.requests: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                request = data.decode()
                self.requests.append(request)
                self.handler(conn, request)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        self.thread.join(timeout=10)


def reply_with(*chunks: str, pause: float = 0.0) -> Handler:
    def handler(conn: socket.socket, request: str) -> None:
        for chunk in chunks:
            conn.sendall(chunk.encode())
            time.sleep(pause)

    return handler


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short path: sun_path holds 108 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="wgu-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(socket_dir: Path) -> Iterator[Callable[[Handler], FakeUAPI]]:
    servers: list[FakeUAPI] = []

    def start(handler: Handler) -> FakeUAPI:
        server = FakeUAPI(str(socket_dir / "uapi.sock"), handler)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_client_set_sends_the_request_and_accepts_errno_0(
    serve: Callable[[Handler], FakeUAPI],
) -> None:
    server = serve(reply_with("errno=0\n\n"))
    request = encode_set(parse_config(CONFIG), {Endpoint("vpn.example.com", 51820): ("::1", 1)})
    UAPIClient(server.path).set(request)
    assert server.requests == [request]


def test_client_set_failure_raises_with_errno_and_without_the_request(
    serve: Callable[[Handler], FakeUAPI],
) -> None:
    server = serve(reply_with("errno=-22\n\n"))
    request = encode_set(parse_config(CONFIG), {Endpoint("vpn.example.com", 51820): ("::1", 1)})
    with pytest.raises(UAPIError) as info:
        UAPIClient(server.path).set(request)
    error = info.value
    assert error.errno == -22
    assert str(error) == "the sidecar refused the set request: errno -22 (EINVAL: Invalid argument)"
    for text in (str(error), repr(error), error.hint or "", repr(error.args)):
        assert PRIV_HEX not in text and PSK_HEX not in text


def test_client_get_decodes_a_reply_sent_in_pieces(serve: Callable[[Handler], FakeUAPI]) -> None:
    pieces = [GET_REPLY[i : i + 7] for i in range(0, len(GET_REPLY), 7)]
    server = serve(reply_with(*pieces))
    assert UAPIClient(server.path).get() == decode_get(GET_REPLY)
    assert server.requests == ["get=1\n\n"]


def test_client_get_raises_when_the_connection_drops_mid_reply(
    serve: Callable[[Handler], FakeUAPI],
) -> None:
    server = serve(reply_with(GET_REPLY[:100]))
    with pytest.raises(UAPIError, match="closed before the reply was complete"):
        UAPIClient(server.path).get()


def test_client_times_out_on_a_silent_server(serve: Callable[[Handler], FakeUAPI]) -> None:
    server = serve(reply_with("errno=0\n", pause=1.0))
    started = time.monotonic()
    with pytest.raises(UAPIError, match=r"no reply from the UAPI socket .* within 0.3s"):
        UAPIClient(server.path, timeout=0.3).get()
    assert time.monotonic() - started < 1.5


def test_client_reports_a_missing_socket(socket_dir: Path) -> None:
    path = str(socket_dir / "absent.sock")
    with pytest.raises(UAPIError, match="No such file or directory") as info:
        UAPIClient(path).get()
    assert path in str(info.value)
    assert info.value.hint is not None


def test_client_refuses_to_send_anything_but_a_set_request(socket_dir: Path) -> None:
    client = UAPIClient(str(socket_dir / "unused.sock"))
    with pytest.raises(UAPIError, match="not a UAPI set request") as info:
        client.set(f"private_key={PRIV_HEX}\n\n")
    assert PRIV_HEX not in str(info.value)
    assert repr(client) == f"UAPIClient({str(socket_dir / 'unused.sock')!r}, timeout=5.0)"


# --------------------------------------------------------------------------
# Against stock wireguard-go (Debian's package), when it can run here


@pytest.mark.interop
def test_stock_wireguard_go_accepts_encode_set_and_decode_get_reads_it() -> None:
    need_interop_tools()
    name = f"wgwt{os.getpid() % 100000}"
    socket_path = f"/var/run/wireguard/{name}.sock"
    device = subprocess.Popen(
        ["unshare", "--net", "--", "wireguard-go", "-f", name],
        env={**os.environ, "LOG_LEVEL": "error"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path):
            assert device.poll() is None, "wireguard-go exited"
            assert time.monotonic() < deadline, "wireguard-go's UAPI socket did not appear"
            time.sleep(0.05)
        config = parse_config(CONFIG)
        client = UAPIClient(socket_path)
        client.set(encode_set(config, {Endpoint("vpn.example.com", 51820): ("192.0.2.4", 51820)}))
        status = client.get()
        assert status.has_private_key
        by_key = {peer.public_key: peer for peer in status.peers}
        first, second = (by_key[peer.public_key] for peer in config.peers)
        assert first.endpoint == "192.0.2.4:51820"
        assert first.persistent_keepalive == 25
        assert set(first.allowed_ips) == set(config.peers[0].allowed_ips)
        assert second.endpoint == "[2001:db8::7]:4500"
        assert second.last_handshake is None
        with pytest.raises(UAPIError) as info:
            client.set("set=1\nlisten_port=not-a-port\n\n")
        assert info.value.errno == -22
    finally:
        device.terminate()
        device.wait(timeout=10)
