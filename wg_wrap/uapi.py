"""The WireGuard cross-platform userspace API (UAPI): encode, decode, and a thin client.

The protocol (https://www.wireguard.com/xplatform/, wireguard-go ``device/uapi.go``)
is text over a unix stream socket: ``set=1`` or ``get=1``, then ``key=value``
lines, then a blank line.  Every reply ends with ``errno=N`` and a blank line;
N is 0 or a negated errno.  Keys travel as lowercase hex.

A ``set`` request carries the private key, so no request text ever goes into
an exception, a log line or a ``repr``.  ``get`` replies carry it too: the
decoder drops it (and preshared keys) on the floor.
"""

from __future__ import annotations

import errno as errno_module
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wg_wrap.errors import UAPIError

if TYPE_CHECKING:  # ls and status need no config parser
    from wg_wrap.config import Config, Endpoint, IPNetwork, Peer

__all__ = [
    "DeviceStatus",
    "PeerStatus",
    "UAPIClient",
    "decode_get",
    "encode_get",
    "encode_set",
    "key_from_hex",
    "key_to_hex",
    "parse_errno",
]

KEY_LENGTH = 32
MAX_REPLY_SIZE = 16 << 20
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


# --------------------------------------------------------------------------
# Encoding


def key_to_hex(key: bytes) -> str:
    """A 32-byte key as the 64 lowercase hex digits UAPI expects."""
    if len(key) != KEY_LENGTH:
        raise ValueError(f"a WireGuard key is {KEY_LENGTH} bytes, not {len(key)}")
    return key.hex()


def key_from_hex(text: str) -> bytes:
    """The inverse of ``key_to_hex``; raises UAPIError without quoting the text."""
    if len(text) != 2 * KEY_LENGTH:
        raise UAPIError(f"malformed key in UAPI reply: {len(text)} characters, expected 64")
    if not all(c in _HEX_DIGITS for c in text):
        raise UAPIError("malformed key in UAPI reply: not hex")
    return bytes.fromhex(text)


def _endpoint_for_uapi(endpoint: Endpoint, resolved: tuple[str, int] | None) -> str:
    """``IP:PORT`` (``[IPv6]:PORT``) for the ``endpoint=`` line."""
    if resolved is None:
        if not endpoint.is_ip:
            raise UAPIError(f"endpoint {endpoint} has not been resolved to an address")
        resolved = (endpoint.host, endpoint.port)
    host, port = resolved
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise UAPIError(f"resolved address {host!r} for endpoint {endpoint} is not an IP") from None
    if not 1 <= port <= 65535:
        raise UAPIError(f"resolved port {port} for endpoint {endpoint} is out of range")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _encode_peer(peer: Peer, endpoints: Mapping[Endpoint, tuple[str, int]]) -> list[str]:
    lines = [f"public_key={key_to_hex(peer.public_key)}"]
    if peer.preshared_key is not None:
        lines.append(f"preshared_key={key_to_hex(peer.preshared_key)}")
    lines.append("replace_allowed_ips=true")
    lines.extend(f"allowed_ip={network}" for network in peer.allowed_ips)
    if peer.endpoint is not None:
        resolved = endpoints.get(peer.endpoint)
        lines.append(f"endpoint={_endpoint_for_uapi(peer.endpoint, resolved)}")
    if peer.persistent_keepalive is not None:
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
    return lines


def encode_set(config: Config, endpoints: Mapping[Endpoint, tuple[str, int]] | None) -> str:
    """The ``set=1`` request that makes the device match ``config`` exactly.

    ``endpoints`` maps each config Endpoint to its resolved ``(ip, port)``; IP
    literal endpoints need no entry.  ``listen_port`` is never sent: the sidecar
    uses the host socket it inherited, whatever port that is bound to.  ``fwmark``
    is never sent either: it would need privileges on the host.
    """
    resolved = endpoints or {}
    lines = [
        "set=1",
        f"private_key={key_to_hex(config.interface.private_key)}",
        "replace_peers=true",
    ]
    for peer in config.peers:
        lines.extend(_encode_peer(peer, resolved))
    return "\n".join(lines) + "\n\n"


def encode_keepalive(public_keys: Sequence[bytes], seconds: int) -> str:
    """Set the persistent keepalive of existing peers (``update_only``)."""
    lines = ["set=1"]
    for key in public_keys:
        lines += [
            f"public_key={key_to_hex(key)}",
            "update_only=true",
            f"persistent_keepalive_interval={seconds}",
        ]
    return "\n".join(lines) + "\n\n"


def encode_get() -> str:
    """The ``get=1`` request."""
    return "get=1\n\n"


# --------------------------------------------------------------------------
# Decoding


@dataclass(frozen=True)
class PeerStatus:
    """One peer as the device reports it."""

    public_key: bytes
    endpoint: str | None
    last_handshake: float | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None
    allowed_ips: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class DeviceStatus:
    """The device as ``get=1`` reports it, minus every secret.

    ``has_private_key`` tells whether a key is configured; the key itself is
    not kept.  ``listen_port`` is 0 when the device reports none.
    """

    has_private_key: bool
    listen_port: int
    peers: tuple[PeerStatus, ...]


class _PeerBuilder:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.endpoint: str | None = None
        self.handshake_sec = 0
        self.handshake_nsec = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.persistent_keepalive = 0
        self.allowed_ips: list[IPNetwork] = []

    def build(self) -> PeerStatus:
        handshake = None
        if self.handshake_sec or self.handshake_nsec:
            handshake = self.handshake_sec + self.handshake_nsec / 1e9
        return PeerStatus(
            public_key=self.public_key,
            endpoint=self.endpoint,
            last_handshake=handshake,
            rx_bytes=self.rx_bytes,
            tx_bytes=self.tx_bytes,
            persistent_keepalive=self.persistent_keepalive or None,
            allowed_ips=tuple(self.allowed_ips),
        )


def _uint(key: str, value: str, lineno: int, high: int = 2**64 - 1) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 20 or int(value) > high:
        raise UAPIError(f"malformed UAPI reply: bad number for {key} on line {lineno}")
    return int(value)


def _split_reply(text: str) -> list[tuple[int, str, str]]:
    """``(lineno, key, value)`` for every line before the terminating blank line."""
    if not text.strip("\n"):
        raise UAPIError("empty UAPI reply")
    body, blank, rest = text.partition("\n\n")
    if not blank and body.endswith("\n"):
        body = body[:-1]
    if rest:
        raise UAPIError("malformed UAPI reply: data after the terminating blank line")
    pairs = []
    for lineno, line in enumerate(body.split("\n"), start=1):
        key, equals, value = line.partition("=")
        if not equals or not key:
            # The line is not quoted: a broken reply could hold half a key.
            raise UAPIError(f"malformed UAPI reply: line {lineno} is not key=value")
        pairs.append((lineno, key, value))
    return pairs


def _errno_of(pairs: list[tuple[int, str, str]]) -> int:
    if not pairs or pairs[-1][1] != "errno":
        raise UAPIError("malformed UAPI reply: it does not end with errno= (truncated?)")
    lineno, _, value = pairs[-1]
    digits = value.removeprefix("-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 10:
        raise UAPIError(f"malformed UAPI reply: bad errno on line {lineno}")
    return int(value)


def _errno_error(operation: str, code: int) -> UAPIError:
    number = abs(code)
    name = errno_module.errorcode.get(number, "unknown")
    return UAPIError(
        f"the sidecar refused the {operation} request: errno {code} ({name}: "
        f"{os.strerror(number)})",
        errno=code,
        hint="the sidecar's log (sidecar.log in the profile's runtime directory) says why",
    )


def parse_errno(reply: str) -> int:
    """The errno of a ``set`` reply (``errno=N`` and a blank line); 0 is success."""
    pairs = _split_reply(reply)
    code = _errno_of(pairs)
    if len(pairs) != 1:
        raise UAPIError("malformed UAPI reply: a set reply has only an errno line")
    return code


def decode_get(text: str) -> DeviceStatus:
    """Decode a ``get=1`` reply.  Unknown keys are skipped; errno != 0 raises."""
    pairs = _split_reply(text)
    code = _errno_of(pairs)
    if code != 0:
        raise _errno_error("get", code)
    has_private_key = False
    listen_port = 0
    peers: list[_PeerBuilder] = []
    for lineno, key, value in pairs[:-1]:
        if key == "private_key":
            key_from_hex(value)  # validated, then forgotten
            has_private_key = any(c != "0" for c in value)
        elif key == "listen_port":
            listen_port = _uint(key, value, lineno, 65535)
        elif key == "public_key":
            peers.append(_PeerBuilder(key_from_hex(value)))
        elif key in _PEER_FIELDS:
            if not peers:
                raise UAPIError(f"malformed UAPI reply: {key} before any public_key")
            _PEER_FIELDS[key](peers[-1], value, lineno)
        elif key == "errno":
            raise UAPIError(f"malformed UAPI reply: errno on line {lineno} is not the last line")
        # Anything else (fwmark, protocol_version, keys of future versions) is skipped.
    return DeviceStatus(has_private_key, listen_port, tuple(p.build() for p in peers))


def _set_preshared_key(peer: _PeerBuilder, value: str, lineno: int) -> None:
    key_from_hex(value)  # validated, never kept


def _set_endpoint(peer: _PeerBuilder, value: str, lineno: int) -> None:
    host, colon, port = value.rpartition(":")
    bare = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        raise UAPIError(f"malformed UAPI reply: bad endpoint on line {lineno}") from None
    if not colon or (":" in bare and not host.startswith("[")):
        raise UAPIError(f"malformed UAPI reply: bad endpoint on line {lineno}")
    _uint("endpoint port", port, lineno, 65535)
    peer.endpoint = value


def _set_handshake_sec(peer: _PeerBuilder, value: str, lineno: int) -> None:
    peer.handshake_sec = _uint("last_handshake_time_sec", value, lineno)


def _set_handshake_nsec(peer: _PeerBuilder, value: str, lineno: int) -> None:
    peer.handshake_nsec = _uint("last_handshake_time_nsec", value, lineno, 999_999_999)


def _set_rx_bytes(peer: _PeerBuilder, value: str, lineno: int) -> None:
    peer.rx_bytes = _uint("rx_bytes", value, lineno)


def _set_tx_bytes(peer: _PeerBuilder, value: str, lineno: int) -> None:
    peer.tx_bytes = _uint("tx_bytes", value, lineno)


def _set_keepalive(peer: _PeerBuilder, value: str, lineno: int) -> None:
    peer.persistent_keepalive = _uint("persistent_keepalive_interval", value, lineno, 65535)


def _add_allowed_ip(peer: _PeerBuilder, value: str, lineno: int) -> None:
    try:
        peer.allowed_ips.append(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise UAPIError(f"malformed UAPI reply: bad allowed_ip on line {lineno}") from None


_PEER_FIELDS = {
    "preshared_key": _set_preshared_key,
    "endpoint": _set_endpoint,
    "last_handshake_time_sec": _set_handshake_sec,
    "last_handshake_time_nsec": _set_handshake_nsec,
    "rx_bytes": _set_rx_bytes,
    "tx_bytes": _set_tx_bytes,
    "persistent_keepalive_interval": _set_keepalive,
    "allowed_ip": _add_allowed_ip,
}


# --------------------------------------------------------------------------
# The client


def _connect(sock: socket.socket, address: str) -> None:
    if address.startswith("\0"):
        from wg_wrap import sockets

        sockets.connect_own(sock, address)
    else:
        sock.connect(address)


class UAPIClient:
    """Talks to one device's UAPI unix socket; one connection per request.

    ``address``: the sidecar's (wg_wrap.sockets: abstract, and only a socket
    the user bound is talked to); a path works too (tests' fake devices).
    """

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"UAPIClient({self._shown!r}, timeout={self.timeout})"

    @property
    def _shown(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def set(self, request: str) -> None:
        """Send a ``set=1`` request; raise UAPIError (with ``errno``) if refused."""
        if not request.startswith("set=1\n") or not request.endswith("\n\n"):
            raise UAPIError("internal error: not a UAPI set request")
        code = parse_errno(self._exchange(request))
        if code != 0:
            raise _errno_error("set", code)

    def get(self) -> DeviceStatus:
        """The device's current state."""
        return decode_get(self._exchange(encode_get()))

    def nudge(self, public_keys: Sequence[bytes]) -> None:
        """Start a handshake with these peers now. wireguard-go only starts one
        when it has something to send: switching persistent keepalive on
        sends a keepalive at once; it is switched off again (the peers given
        have it off)."""
        if public_keys:
            self.set(encode_keepalive(public_keys, 1))
            self.set(encode_keepalive(public_keys, 0))

    def _exchange(self, request: str) -> str:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self.timeout)
                _connect(sock, self.address)
                sock.sendall(request.encode("utf-8"))
                return self._read_reply(sock)
        except TimeoutError:
            raise UAPIError(
                f"no reply from the UAPI socket {self._shown} within {self.timeout:g}s"
            ) from None
        except OSError as error:
            raise UAPIError(
                f"UAPI socket {self._shown}: {error.strerror or error}",
                hint="is the profile's sidecar running? `wg-wrap status` tells",
            ) from None

    def _read_reply(self, sock: socket.socket) -> str:
        data = bytearray()
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise UAPIError("the UAPI socket closed before the reply was complete")
            data += chunk
            if len(data) > MAX_REPLY_SIZE:
                raise UAPIError(f"UAPI reply larger than {MAX_REPLY_SIZE} bytes")
            # A reply ends at its first blank line; nothing may follow it.
            if b"\n\n" in data and not data.endswith(b"\n\n"):
                raise UAPIError("malformed UAPI reply: data after the terminating blank line")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UAPIError("malformed UAPI reply: not UTF-8") from None
