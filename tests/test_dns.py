"""DNS planning: the generated resolv.conf and where it is mounted, for each
host layout (plain file; symlink into systemd-resolved's directory)."""

from __future__ import annotations

import ipaddress

from wg_wrap import dns

GEN = "/run/user/1000/wg-wrap/wg0/resolv.conf"


def test_resolv_conf_lists_servers_and_search_domains() -> None:
    text = dns.render_resolv_conf(
        [ipaddress.ip_address("10.64.0.1"), ipaddress.ip_address("fd00::1")], ["corp.example"]
    )
    assert "nameserver 10.64.0.1\nnameserver fd00::1\nsearch corp.example\n" in text


def test_plain_file_layout_binds_over_etc_resolv_conf() -> None:
    layout = dns.HostLayout(resolv_target="/etc/resolv.conf", existing_dirs=())
    assert dns.mount_ops(GEN, layout) == ["--bind", GEN, "/etc/resolv.conf"]


def test_plain_file_layout_still_hides_resolver_daemons() -> None:
    layout = dns.HostLayout("/etc/resolv.conf", ("/run/systemd/resolve", "/run/nscd"))
    ops = dns.mount_ops(GEN, layout)
    assert ops[:2] == ["--tmpfs", "/run/systemd/resolve"]
    assert ops[ops.index("/run/nscd") - 1 : ops.index("/run/nscd") + 1] == ["--tmpfs", "/run/nscd"]
    assert ops[-3:] == ["--bind", GEN, "/etc/resolv.conf"]


def test_systemd_resolved_symlink_layout_puts_the_file_back_inside_the_tmpfs() -> None:
    layout = dns.HostLayout("/run/systemd/resolve/stub-resolv.conf", ("/run/systemd/resolve",))
    ops = dns.mount_ops(GEN, layout)
    assert ops == [
        "--tmpfs", "/run/systemd/resolve",
        "--file", GEN, "/run/systemd/resolve/stub-resolv.conf",
        "--file", GEN, "/run/systemd/resolve/resolv.conf",
    ]
    assert "--bind" not in ops  # the symlink now leads to the generated file


def test_paths_with_colons_stay_whole() -> None:
    """An XDG_RUNTIME_DIR may contain ':' (it is a path, not a list)."""
    generated = "/run/user/1000:x/wg-wrap/wg0/resolv.conf"
    layout = dns.HostLayout("/etc/resolv.conf", ())
    assert dns.mount_ops(generated, layout) == ["--bind", generated, "/etc/resolv.conf"]


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
