"""DNS planning: the generated resolv.conf, and what wg-wrap reads of the
host's (where the namespace shows it: go-sidecar/view, tested there and end
to end in tests/test_dns_layouts.py and tests/test_dns_days.py)."""

from __future__ import annotations

import ipaddress

from wg_wrap import dns


def test_resolv_conf_lists_servers_and_search_domains() -> None:
    text = dns.render_resolv_conf(
        [ipaddress.ip_address("10.64.0.1"), ipaddress.ip_address("fd00::1")], ["corp.example"]
    )
    assert "nameserver 10.64.0.1\nnameserver fd00::1\nsearch corp.example\n" in text


def test_loopback_nameservers_are_found() -> None:
    text = "nameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\n# nameserver 127.0.0.1\n"
    assert dns.loopback_nameservers(text) == ["127.0.0.53", "::1"]


def test_unrouted_nameservers_are_those_outside_every_route() -> None:
    text = "nameserver 192.168.1.1\nnameserver 10.64.0.1\nnameserver 127.0.0.53\n"
    split = [ipaddress.ip_network("10.64.0.0/16")]
    assert dns.unrouted_nameservers(text, split) == ["192.168.1.1"]
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert dns.unrouted_nameservers(text, everything) == []
    assert dns.unrouted_nameservers("nameserver fd00::53\n", everything) == []
    assert dns.unrouted_nameservers("nameserver fd00::53\n", split) == ["fd00::53"]
