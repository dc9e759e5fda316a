"""The pure parts of reaching in and out: -p / --socks grammar, credentials,
the refusal of an open proxy, and `check`'s judgement of a probe report."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wg_wrap import check, reach
from wg_wrap.errors import UsageError

ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
ports = st.integers(0, 65535)


@given(ips, ports, st.integers(1, 65535), st.sampled_from(["tcp", "udp"]))
def test_port_specs_read_back_as_written(
    host: ipaddress.IPv4Address | ipaddress.IPv6Address, host_port: int, port: int, proto: str
) -> None:
    spec = reach.PortSpec(host, host_port, port, proto)
    assert reach.parse_port_spec(str(spec)) == spec


@pytest.mark.parametrize(("text", "want"), [
    ("8080:80", "127.0.0.1:8080:80/tcp"),  # loopback unless asked: never all addresses
    ("0.0.0.0:8080:80", "0.0.0.0:8080:80/tcp"),
    ("[::1]:8080:80/udp", "[::1]:8080:80/udp"),
    ("0:53/UDP", "127.0.0.1:0:53/udp"),
])
def test_port_spec_defaults(text: str, want: str) -> None:
    assert str(reach.parse_port_spec(text)) == want


@pytest.mark.parametrize("text", [
    "", "80", "8080:", ":80", "8080:80:90", "8080:0", "70000:80", "8080:80/sctp", "::1:8080:80",
    "[::1]8080:80", "localhost:8080:80", "1.2.3:8080:80", "[1.2.3.4]:1:2", "8080:+80", "8080:8_0",
])
def test_bad_port_specs(text: str) -> None:
    with pytest.raises(ValueError):
        reach.parse_port_spec(text)


@given(ips, ports)
def test_proxy_addresses_read_back(
    host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    spec = reach.ProxySpec(host, port)
    assert reach.parse_proxy_address(str(spec)) == spec


def test_proxy_address_defaults_to_loopback() -> None:
    assert str(reach.parse_proxy_address("1080")) == "127.0.0.1:1080"
    for bad in ("", "x:1080", "1080:1", "[::1]", "65536"):
        with pytest.raises(ValueError):
            reach.parse_proxy_address(bad)


def test_host_ports_for_unpublish() -> None:
    assert reach.parse_host_port("8080") == (8080, "tcp")
    assert reach.parse_host_port("53/udp") == (53, "udp")
    for bad in ("0", "x", "8080/sctp", "127.0.0.1:8080"):
        with pytest.raises(ValueError):
            reach.parse_host_port(bad)


def test_credentials() -> None:
    creds = reach.parse_credentials("alice:pa:ss word\n", "f")
    assert (creds.user, creds.password) == ("alice", "pa:ss word")
    assert "pa:ss" not in repr(creds)
    for bad in ("alice", ":pw", "alice:", "a:" + "x" * 256, "a:b\0c"):
        with pytest.raises(UsageError):
            reach.parse_credentials(bad, "f")


def test_credentials_come_from_the_environment_and_leave_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(reach.AUTH_ENV, "bob:secret")
    creds = reach.load_credentials(None)
    assert creds == reach.Credentials("bob", "secret")
    assert reach.AUTH_ENV not in os.environ


def test_an_open_proxy_beyond_loopback_is_refused() -> None:
    anywhere = reach.parse_proxy_address("0.0.0.0:1080")
    with pytest.raises(UsageError, match="without authentication"):
        reach.check_request(reach.ReachRequest(socks=anywhere))
    with pytest.raises(UsageError, match="without authentication"):
        reach.check_request(reach.ReachRequest(http_proxy=reach.parse_proxy_address("[::]:3128")))
    reach.check_request(reach.ReachRequest(socks=anywhere, auth=reach.Credentials("u", "p")))
    reach.check_request(reach.ReachRequest(socks=reach.parse_proxy_address("[::1]:1080")))
    twice = tuple(reach.parse_port_spec(s) for s in ("8080:80", "[::1]:8080:81"))
    with pytest.raises(UsageError, match="published twice"):
        reach.check_request(reach.ReachRequest(publish=twice))


def good_report() -> dict[str, Any]:
    return {
        "interfaces": ["lo", "tun0"],
        "addresses": {"lo": ["127.0.0.1/8", "::1/128"], "tun0": ["10.0.0.2/24", "fd00::2/64"]},
        "routes": [
            {"version": 4, "dst": "0.0.0.0/0", "type": "unicast", "table": 254, "dev": "tun0"},
            {"version": 4, "dst": "127.0.0.0/8", "type": "local", "table": 255, "dev": "lo"},
            {"version": 4, "dst": "10.0.0.2/32", "type": "local", "table": 255, "dev": "tun0"},
            {"version": 6, "dst": "::/0", "type": "unicast", "table": 254, "dev": "tun0"},
            {"version": 6, "dst": "::1/128", "type": "unicast", "table": 254, "dev": "lo"},
            {"version": 4, "dst": "192.0.2.0/24", "type": "unreachable", "table": 254,
             "dev": None},
        ],
        "lookups": {"10.0.0.1": "tun0", "2000::1": "tun0"},
        "resolv_conf": "nameserver 10.0.0.1\n",
        "resolv_error": None,
        "nameservers": ["10.0.0.1"],
        "resolver_sockets": [],
        "dns": [{"server": "10.0.0.1", "answered": True, "rcode": "NOERROR", "ms": 1.0}],
        "ipv6_probe": "2000::1",
        "identity": {"uid": 1000, "gid": 1000, "euid": 1000, "egid": 1000, "CapInh": 0,
                     "CapPrm": 0, "CapEff": 0, "CapBnd": (1 << 41) - 1, "CapAmb": 0,
                     "no_new_privs": True},
        "hidden": [{"path": "/run/user/1000/wg-wrap", "dev": 55, "ino": 1, "entries": []}],
        "sockets": [{"address": "@wg-wrap/1000/ab/uapi", "connected": False,
                     "error": "Connection refused"}],
        "sidecar": {"pid": 42, "reached": [], "refused": {"/proc/42/root": "Permission denied"}},
    }


EXPECTED = check.Expected(ifname="tun0", uid=1000, gid=1000, handshake=1000.0, now=1010.0,
                          hidden=(("/run/user/1000/wg-wrap", 44, 2),))


def verdicts(report: dict[str, Any], exp: check.Expected = EXPECTED) -> dict[str, bool]:
    return {line.name: line.ok for line in check.evaluate(report, exp)}


def test_a_good_report_passes_every_line() -> None:
    assert all(verdicts(good_report()).values())


@pytest.mark.parametrize(("line", "breakage"), [
    ("interfaces", lambda r: r["interfaces"].append("eth0")),
    ("interfaces", lambda r: r["interfaces"].remove("tun0")),
    ("routes (IPv4)", lambda r: r["routes"].append(
        {"version": 4, "dst": "0.0.0.0/1", "type": "unicast", "table": 100, "dev": "lo"})),
    ("routes (IPv6)", lambda r: r["routes"].append(
        {"version": 6, "dst": "fe80::/64", "type": "unicast", "table": 254, "dev": "eth0"})),
    ("resolv.conf", lambda r: r.update(nameservers=[])),
    ("resolv.conf", lambda r: r["lookups"].update({"10.0.0.1": "lo"})),
    ("resolver sockets", lambda r: r.update(resolver_sockets=["/run/nscd/socket"])),
    ("DNS lookup", lambda r: r["dns"][0].update(answered=False)),
    ("IPv6", lambda r: r["lookups"].update({"2000::1": "eth0"})),
    ("identity", lambda r: r["identity"].update(CapEff=1 << 12)),
    ("identity", lambda r: r["identity"].update(uid=0, euid=0)),
    ("identity", lambda r: r["identity"].update(no_new_privs=False)),
    ("runtime state", lambda r: r["hidden"][0].update(dev=44, ino=2)),
    ("sidecar sockets", lambda r: r["sockets"][0].update(connected=True)),
    ("sidecar sockets", lambda r: r.update(sockets=[])),
    ("capabilities in reach", lambda r: r["sidecar"]["reached"].append("/proc/42/fd/3")),
    ("capabilities in reach", lambda r: r.update(sidecar=None)),
])
def test_each_line_fails_on_its_own_breakage(line: str, breakage: Any) -> None:
    report = good_report()
    breakage(report)
    assert not verdicts(report)[line]


def test_handshake_ages() -> None:
    assert not verdicts(good_report(), check.Expected("tun0", 1000, 1000, None, 5.0))["handshake"]
    stale = check.Expected("tun0", 1000, 1000, 1000.0, 1000.0 + check.HANDSHAKE_MAX_AGE + 1)
    assert not verdicts(good_report(), stale)["handshake"]


def test_ipv6_without_a_route_fails_closed_and_passes() -> None:
    report = good_report()
    report["lookups"]["2000::1"] = None
    line = next(x for x in check.evaluate(report, EXPECTED) if x.name == "IPv6")
    assert line.ok and "fails closed" in line.detail
