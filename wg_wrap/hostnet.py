"""The host side of the tunnel: endpoint resolution and the UDP socket.

Both happen on the host network before any namespace exists: inside, names
only resolve once the tunnel is up, and a socket belongs forever to the
network namespace it was created in.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from wg_wrap.config import Config, Endpoint
from wg_wrap.errors import ResolveError, SetupError, WgWrapError

# Like wireguard-go's StdNetBind; unprivileged processes are capped at
# net.core.{r,w}mem_max, which is fine: this is a request, not a demand.
SOCKET_BUFFER = 7 << 20
# Waits between attempts when name resolution fails temporarily (EAI_AGAIN).
RESOLVE_RETRY_DELAYS = (0.5, 1.0, 2.0)


def open_host_socket(listen_port: int | None, address: str | None = None) -> socket.socket:
    """A bound UDP socket reaching IPv4 and IPv6 peers, inheritable.

    Dual-stack (``[::]`` with IPV6_V6ONLY off) where the host has IPv6,
    plain IPv4 otherwise; bound to one ``address`` when asked (a server that
    should only be reachable on, say, 127.0.0.1).
    """
    port = listen_port or 0
    sock: socket.socket | None = None
    if address is not None:
        return _bound_to(address, port)
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
    except OSError as e:
        if sock is not None:
            sock.close()
            sock = None
        if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            raise _bind_error(e, port) from e
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as e:
            sock.close()
            raise _bind_error(e, port) from e
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    sock.set_inheritable(True)
    return sock


def _bound_to(address: str, port: int) -> socket.socket:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((str(ip), port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            raise SetupError(f"cannot listen on {address}: no such address on this host") from e
        raise _bind_error(e, port) from e
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    sock.set_inheritable(True)
    return sock


def _bind_error(e: OSError, port: int) -> SetupError:
    if e.errno == errno.EADDRINUSE:
        return SetupError(
            f"ListenPort {port} is already in use on this host",
            hint="remove ListenPort from the config to use a random port",
        )
    if e.errno == errno.EACCES:
        return SetupError(f"not allowed to bind UDP port {port}", hint="use a port above 1023")
    return SetupError(f"cannot open the UDP socket on port {port}: {e.strerror}")


def open_dns_socket(family: int) -> socket.socket:
    """A UDP socket on the host for the sidecar's re-resolution of endpoint
    names (the host's nameservers are reachable through it, even 127.0.0.53),
    of the host socket's family, inheritable."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        else:
            sock.bind(("0.0.0.0", 0))
    except OSError as e:
        sock.close()
        raise SetupError(f"cannot open the UDP socket for DNS: {e.strerror}") from e
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class ReresolvePlan:
    """What the sidecar needs to re-resolve the peers whose Endpoint is a host
    name (its ``--reresolve`` file, as JSON)."""

    after: float  # seconds without a handshake before a name is resolved again
    resolved_at: float  # when wg-wrap resolved them, before the start
    nameservers: tuple[str, ...]  # the host's, "ip:53" / "[ip]:53"
    peers: tuple[tuple[str, str, int], ...]  # (public key in hex, host, port)

    def to_json(self) -> str:
        return json.dumps({
            "after_seconds": self.after, "resolved_at": self.resolved_at,
            "nameservers": list(self.nameservers),
            "peers": [{"public_key": k, "host": h, "port": p} for k, h, p in self.peers],
        })


def reresolve_plan(
    config: Config,
    after: float,
    nameservers: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    resolved_at: float,
) -> ReresolvePlan | None:
    """None when no Endpoint is a host name, or ``after`` is 0 (never)."""
    peers = tuple(
        (p.public_key.hex(), p.endpoint.host, p.endpoint.port)
        for p in config.peers if p.endpoint is not None and not p.endpoint.is_ip
    )
    if not peers or after <= 0:
        return None
    servers = tuple(f"[{ip}]:53" if ip.version == 6 else f"{ip}:53" for ip in nameservers)
    return ReresolvePlan(after, resolved_at, servers, peers)


def resolve_endpoints(
    config: Config, path: str, family: int = socket.AF_INET6,
    lookup: Callable[[str, bool], list[str]] | None = None, place: str = "",
) -> dict[Endpoint, tuple[str, int]]:
    """Resolve every peer endpoint to one (ip, port), on the host, now (or
    with ``lookup(host, ipv4_only)`` elsewhere: ``place`` says where).

    With an IPv4-only host socket (``family`` AF_INET) only IPv4 answers are
    usable, so only those are asked for.
    """
    resolved: dict[Endpoint, tuple[str, int]] = {}
    for peer in config.peers:
        ep = peer.endpoint
        if ep is None or ep in resolved:
            continue
        where = f"{path}:{peer.line}"
        if lookup is None or _is_ip(ep.host):
            resolved[ep] = _resolve_one(ep, family, where)
        else:
            resolved[ep] = _resolve_with(lookup, ep, family, where, place)
    return resolved


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve_with(
    lookup: Callable[[str, bool], list[str]], ep: Endpoint, family: int, where: str, place: str,
) -> tuple[str, int]:
    try:
        found = lookup(ep.host, family == socket.AF_INET)
    except WgWrapError as e:
        raise ResolveError(
            f"{where}: cannot resolve endpoint {ep.host!r} {place}: {e.message}",
            hint=f"the endpoint is resolved {place}, through its DNS",
        ) from e
    usable = [a for a in found if family != socket.AF_INET or ":" not in a]
    if not usable:
        raise ResolveError(f"{where}: endpoint {ep.host!r} has no usable address {place}")
    return (usable[0], ep.port)


def _resolve_one(ep: Endpoint, family: int, where: str) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(ep.host)
    except ValueError:
        pass
    else:
        if ip.version == 6 and family == socket.AF_INET:
            raise ResolveError(
                f"{where}: endpoint {ep} is IPv6 but this host has no IPv6",
            )
        return (str(ip), ep.port)
    want = socket.AF_INET if family == socket.AF_INET else socket.AF_UNSPEC
    for delay in (*RESOLVE_RETRY_DELAYS, None):
        try:
            infos = socket.getaddrinfo(ep.host, ep.port, want, socket.SOCK_DGRAM)
            break
        except (socket.gaierror, UnicodeError) as e:
            # Like wg(8): a temporary failure (the network is coming up, the
            # resolver timed out) is tried again a few times; the others are final.
            if isinstance(e, socket.gaierror) and e.errno == socket.EAI_AGAIN and delay:
                time.sleep(delay)
                continue
            reason = e.strerror if isinstance(e, socket.gaierror) else str(e)
            raise ResolveError(
                f"{where}: cannot resolve endpoint {ep.host!r}: {reason}",
                hint="check the name and the host's network; "
                "the endpoint is resolved on the host",
            ) from e
    for _family, _type, _proto, _canon, sockaddr in infos:
        return (str(sockaddr[0]), ep.port)
    raise ResolveError(f"{where}: endpoint {ep.host!r} has no usable address")


def endpoint_strings(resolved: Mapping[Endpoint, tuple[str, int]]) -> list[str]:
    out = []
    for ip, port in resolved.values():
        out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return out
