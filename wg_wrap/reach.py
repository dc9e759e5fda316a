"""Reaching in and out of a profile: what the user asked for, parsed.

Published ports (``-p [ADDR:]HOSTPORT:PORT[/tcp|/udp]``, as podman spells
them) and the proxy front (``--socks [ADDR:]PORT``, ``--http-proxy
[ADDR:]PORT``) with its credentials.  Pure: text in, frozen dataclasses out;
``wg_wrap.publish`` opens the host sockets and hands them to the sidecar.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import sys
from dataclasses import dataclass

from wg_wrap.errors import UsageError
from wg_wrap.launch import PROXY_AUTH_VARIABLE

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_HOST = ipaddress.IPv4Address("127.0.0.1")
PROTOCOLS = ("tcp", "udp")
# The proxy credentials come from this variable or from --proxy-auth-file,
# never from the command line, where every user can read them (/proc/PID/cmdline).
AUTH_ENV = PROXY_AUTH_VARIABLE
MAX_CREDENTIAL = 255  # RFC 1929: one length byte each


def _host_text(ip: IPAddress) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class PortSpec:
    """``-p [ADDR:]HOSTPORT:PORT[/PROTO]``: ADDR:HOSTPORT on the host reaches
    PORT inside.  HOSTPORT 0 takes any free port."""

    host: IPAddress
    host_port: int
    port: int
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{_host_text(self.host)}:{self.host_port}:{self.port}/{self.proto}"

    @property
    def host_address(self) -> str:
        return f"{_host_text(self.host)}:{self.host_port}"

    def describe(self) -> str:
        return f"{self.host_address} -> {self.port}/{self.proto}"


@dataclass(frozen=True)
class ProxySpec:
    """``--socks`` or ``--http-proxy`` ``[ADDR:]PORT`` (PORT 0: any free one)."""

    host: IPAddress
    port: int

    def __str__(self) -> str:
        return f"{_host_text(self.host)}:{self.port}"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never in a traceback or a log
        return f"Credentials(user={self.user!r}, password=<hidden>)"


@dataclass(frozen=True)
class ReachRequest:
    """Everything a start should open on the host besides the UDP socket."""

    publish: tuple[PortSpec, ...] = ()
    socks: ProxySpec | None = None
    http_proxy: ProxySpec | None = None
    auth: Credentials | None = None

    def __bool__(self) -> bool:
        return bool(self.publish or self.socks or self.http_proxy)


def _port(text: str, what: str, allow_zero: bool) -> int:
    if not text.isdigit() or len(text) > 5:
        raise ValueError(f"{what} {text!r} is not a port number")
    port = int(text)
    if port > 65535 or (port == 0 and not allow_zero):
        raise ValueError(f"{what} {port} is out of range ({0 if allow_zero else 1}..65535)")
    return port


def _split_host(text: str) -> tuple[IPAddress | None, str]:
    """``[v6]:REST``, ``v4:REST`` or ``REST`` -> (address or None, REST)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError("an IPv6 address goes in brackets, followed by ':'")
        return ipaddress.IPv6Address(text[1:end]), text[end + 2 :]
    head, sep, rest = text.partition(":")
    if sep and not head.isdigit():
        try:
            return ipaddress.IPv4Address(head), rest
        except ipaddress.AddressValueError:
            raise ValueError(
                f"{head!r} is not an IPv4 address (names are not accepted; IPv6 goes in brackets)"
            ) from None
    return None, text


def parse_port_spec(text: str) -> PortSpec:
    """Parse ``[ADDR:]HOSTPORT:PORT[/tcp|/udp]``; ValueError says what is wrong."""
    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is not tcp or udp")
    try:
        host, rest = _split_host(body)
    except ipaddress.AddressValueError as e:
        raise ValueError(f"bad IPv6 address: {e}") from None
    parts = rest.split(":")
    if len(parts) != 2:
        raise ValueError("expected [ADDR:]HOSTPORT:PORT, e.g. 8080:80 or 127.0.0.1:8080:80/udp")
    return PortSpec(
        host=host or DEFAULT_HOST,
        host_port=_port(parts[0], "host port", allow_zero=True),
        port=_port(parts[1], "port", allow_zero=False),
        proto=proto,
    )


def parse_proxy_address(text: str) -> ProxySpec:
    """Parse ``[ADDR:]PORT``; ValueError says what is wrong."""
    try:
        host, rest = _split_host(text)
    except ipaddress.AddressValueError as e:
        raise ValueError(f"bad IPv6 address: {e}") from None
    return ProxySpec(host=host or DEFAULT_HOST, port=_port(rest, "port", allow_zero=True))


def parse_credentials(text: str, where: str) -> Credentials:
    """``USER:PASSWORD`` (the password may contain ':'); one trailing newline
    is ignored, as files end with one."""
    text = text.removesuffix("\n").removesuffix("\r")
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UsageError(
            f"{where}: expected USER:PASSWORD",
            hint=f"e.g. `printf 'me:%s' \"$(pwgen 20 1)\" > FILE`, or {AUTH_ENV}=USER:PASSWORD",
        )
    for what, value in (("user name", user), ("password", password)):
        if "\n" in value or "\0" in value:
            raise UsageError(f"{where}: the {what} has a newline or NUL in it")
        if len(value.encode()) > MAX_CREDENTIAL:
            raise UsageError(f"{where}: the {what} is longer than {MAX_CREDENTIAL} bytes")
    return Credentials(user, password)


def load_credentials(auth_file: str | None) -> Credentials | None:
    """Proxy credentials from ``auth_file`` or else ``$WG_WRAP_PROXY_AUTH``.

    The variable is removed from this process's environment either way, so
    that neither the sidecar nor the wrapped program inherits it.
    """
    from_env = os.environ.pop(AUTH_ENV, None)
    if auth_file is not None:
        try:
            with open(auth_file) as f:
                info = os.fstat(f.fileno())
                text = f.read(4096)
        except OSError as e:
            raise UsageError(f"cannot read {auth_file}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise UsageError(f"{auth_file}: not text") from e
        if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
            print(
                f"wg-wrap: warning: {auth_file} is readable by other users; "
                f"`chmod 600 {auth_file}`", file=sys.stderr,
            )
        return parse_credentials(text.split("\n", 1)[0], auth_file)
    if from_env:
        return parse_credentials(from_env, AUTH_ENV)
    return None


def check_request(req: ReachRequest) -> None:
    """Refuse what would open the tunnel to other hosts: a proxy on an
    address other than loopback, without a password."""
    for what, proxy in (("SOCKS5 proxy", req.socks), ("HTTP proxy", req.http_proxy)):
        if proxy is not None and not proxy.host.is_loopback and req.auth is None:
            raise UsageError(
                f"refusing to open the {what} on {proxy} without authentication: "
                "anyone who can reach that address could use your tunnel",
                hint=f"set {AUTH_ENV}=USER:PASSWORD or pass --proxy-auth-file FILE, "
                "or listen on a loopback address (the default, 127.0.0.1)",
            )
    seen: set[tuple[str, int]] = set()
    for spec in req.publish:
        key = (spec.proto, spec.host_port)
        if spec.host_port and key in seen:
            raise UsageError(f"host port {spec.host_port}/{spec.proto} is published twice")
        seen.add(key)


def parse_host_port(text: str) -> tuple[int, str]:
    """``HOSTPORT[/tcp|/udp]`` (what ``unpublish`` takes) -> (port, proto)."""
    body, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol {proto!r} is not tcp or udp")
    return _port(body, "host port", allow_zero=False), proto
