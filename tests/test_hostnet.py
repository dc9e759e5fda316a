"""Endpoint resolution (with getaddrinfo replaced: a unit test of the
retry policy) and the host socket (real sockets on loopback)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from wg_wrap import hostnet
from wg_wrap.config import parse_config
from wg_wrap.errors import ResolveError, SetupError

CONF = """[Interface]
PrivateKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
[Peer]
PublicKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
Endpoint = vpn.example.net:51820
AllowedIPs = 0.0.0.0/0
"""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    record: list[Any] = []
    monkeypatch.setattr(time, "sleep", lambda s: record.append(("sleep", s)))
    return record


def _answers(monkeypatch: pytest.MonkeyPatch, calls: list[Any], *results: Any) -> None:
    queue = list(results)

    def fake(host: str, port: int, family: int, kind: int) -> Any:
        calls.append(("gai", host, family))
        result = queue.pop(0)
        if isinstance(result, Exception):
            raise result
        return [(socket.AF_INET, kind, 17, "", (result, port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_temporary_failures_are_retried(monkeypatch: pytest.MonkeyPatch, calls: list[Any]) -> None:
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    _answers(monkeypatch, calls, again, again, "192.0.2.7")
    resolved = hostnet.resolve_endpoints(parse_config(CONF, "wg0.conf"), "wg0.conf")
    assert list(resolved.values()) == [("192.0.2.7", 51820)]
    assert [c[0] for c in calls] == ["gai", "sleep", "gai", "sleep", "gai"]


def test_a_missing_name_fails_at_once_naming_the_peer_line(
    monkeypatch: pytest.MonkeyPatch, calls: list[Any]
) -> None:
    _answers(monkeypatch, calls, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    with pytest.raises(ResolveError, match=r"^wg0\.conf:3: cannot resolve endpoint 'vpn"):
        hostnet.resolve_endpoints(parse_config(CONF, "wg0.conf"), "wg0.conf")
    assert [c[0] for c in calls] == ["gai"]


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch, calls: list[Any]) -> None:
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    _answers(monkeypatch, calls, *[again] * 10)
    with pytest.raises(ResolveError, match="Temporary failure"):
        hostnet.resolve_endpoints(parse_config(CONF, "wg0.conf"), "wg0.conf")
    assert sum(1 for c in calls if c[0] == "gai") == len(hostnet.RESOLVE_RETRY_DELAYS) + 1


def test_ipv4_only_host_asks_for_ipv4_and_refuses_ipv6_literals(
    monkeypatch: pytest.MonkeyPatch, calls: list[Any]
) -> None:
    _answers(monkeypatch, calls, "192.0.2.8")
    hostnet.resolve_endpoints(parse_config(CONF, "x"), "x", socket.AF_INET)
    assert calls[0] == ("gai", "vpn.example.net", socket.AF_INET)
    v6 = CONF.replace("vpn.example.net:51820", "[2001:db8::1]:51820")
    with pytest.raises(ResolveError, match="IPv6 but this host has no IPv6"):
        hostnet.resolve_endpoints(parse_config(v6, "x"), "x", socket.AF_INET)


def test_host_socket_is_dual_stack_and_inheritable() -> None:
    sock = hostnet.open_host_socket(None)
    try:
        assert sock.family == socket.AF_INET6 and sock.get_inheritable()
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.sendto(b"v4", ("127.0.0.1", sock.getsockname()[1]))
        sock.settimeout(2)
        assert sock.recvfrom(16)[0] == b"v4"
    finally:
        sock.close()


def test_a_listen_port_in_use_is_one_clear_error() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
        taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taken.bind(("::", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SetupError, match=f"ListenPort {port} is already in use"):
            hostnet.open_host_socket(port)


# ---- re-resolution plan (pure) --------------------------------------------------


def test_the_reresolve_plan_lists_only_named_endpoints() -> None:
    import ipaddress
    import json

    literal_peer = ("\n[Peer]\nPublicKey = AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n"
                    "Endpoint = 192.0.2.1:51820\nAllowedIPs = 10.0.0.0/8\n")
    cfg = parse_config(CONF + literal_peer)
    servers = [ipaddress.ip_address("127.0.0.53"), ipaddress.ip_address("::1")]
    plan = hostnet.reresolve_plan(cfg, 135, servers, 1_800_000_000.5)
    assert plan is not None
    assert json.loads(plan.to_json()) == {
        "after_seconds": 135, "resolved_at": 1_800_000_000.5,
        "nameservers": ["127.0.0.53:53", "[::1]:53"],
        "peers": [{"public_key": bytes(range(32)).hex(), "host": "vpn.example.net",
                   "port": 51820}],
    }
    assert hostnet.reresolve_plan(cfg, 0, servers, 0) is None  # --reresolve-after 0
    literal = parse_config(CONF.replace("vpn.example.net", "192.0.2.9"))
    assert hostnet.reresolve_plan(literal, 135, servers, 0) is None


def test_host_nameservers_follow_glibc() -> None:
    from wg_wrap import dns

    text = "search lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver x\n" \
        "nameserver 10.0.0.1\nnameserver 10.0.0.2\n"
    assert [str(ip) for ip in dns.host_nameservers(text)] == ["127.0.0.53", "fe80::1", "10.0.0.1"]
    assert [str(ip) for ip in dns.host_nameservers("# empty\n")] == ["127.0.0.1", "::1"]
