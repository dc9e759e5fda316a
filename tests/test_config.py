"""The wg-quick config parser: provider configs, every syntax rule, the bad corpus,
and hypothesis properties (round trip, nothing but ConfigError, case/space blindness)."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import configs

from wg_wrap.config import (
    MAX_FILE_SIZE,
    Config,
    ConfigWarning,
    Endpoint,
    Interface,
    Peer,
    config_digest,
    load_config,
    parse_config,
    permission_warning,
    render_config,
)
from wg_wrap.errors import ConfigError

# Fixed, obviously fake keys (bytes 0..31, 32..63, ...): never real secrets in a test.
PRIV = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
PUB = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="
PUB2 = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8="
PSK = "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="

CORPUS = Path(__file__).parent / "configs" / "bad"

MULLVAD = f"""\
[Interface]
# Device: Happy Otter
PrivateKey = {PRIV}
Address = 10.68.41.200/32,fc00:bbbb:bbbb:bb01::5:29c7/128
DNS = 10.64.0.1

[Peer]
PublicKey = {PUB}
AllowedIPs = 0.0.0.0/0,::0/0
Endpoint = 185.213.154.68:51820
"""

PROTON = f"""\
[Interface]
# Key for laptop
# Bouncing = 13
# NetShield = 1
# Moderate NAT = off
# NAT-PMP (Port Forwarding) = off
# VPN Accelerator = on
PrivateKey = {PRIV}
Address = 10.2.0.2/32, 2a07:b944::2:2/128
DNS = 10.2.0.1, 2a07:b944::2:1

[Peer]
# NL-FREE#128
PublicKey = {PUB}
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = nl-free-128.protonvpn.net:51820
PersistentKeepalive = 25
"""

SERVER = f"""\
[Interface]
PrivateKey = {PRIV}
Address = 10.8.0.1/24
ListenPort = 51820

[Peer] # alice
PublicKey = {PUB}
PresharedKey = {PSK}
AllowedIPs = 10.8.0.2/32

[Peer] # bob
PublicKey = {PUB2}
AllowedIPs = 10.8.0.3/32, fd08::3/128
"""


def key(text: str) -> bytes:
    return base64.b64decode(text)


def parse(text: str) -> Config:
    return parse_config(text, "wg0.conf")


def with_interface(lines: str, peer: str = "") -> str:
    """A valid config whose [Interface] also holds ``lines``."""
    return (
        f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.2/32\n{lines}\n"
        f"[Peer]\nPublicKey = {PUB}\nAllowedIPs = 0.0.0.0/0\n{peer}\n"
    )


def with_peer(lines: str) -> str:
    return with_interface("", lines)


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


def messages(config: Config) -> list[str]:
    return [str(w) for w in config.warnings]


# --------------------------------------------------------------------------
# Realistic configs


def test_mullvad_style_config_parses_into_dataclasses() -> None:
    config = parse(MULLVAD)
    assert config.interface == Interface(
        private_key=key(PRIV),
        addresses=(
            ipaddress.ip_interface("10.68.41.200/32"),
            ipaddress.ip_interface("fc00:bbbb:bbbb:bb01::5:29c7/128"),
        ),
        dns_servers=(ipaddress.ip_address("10.64.0.1"),),
    )
    assert config.peers == (
        Peer(
            public_key=key(PUB),
            allowed_ips=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
            endpoint=Endpoint("185.213.154.68", 51820),
        ),
    )
    assert config.peers[0].line == 7
    assert config.warnings == ()


def test_proton_style_config_with_comments_hostname_endpoint_and_keepalive() -> None:
    config = parse(PROTON)
    iface = config.interface
    assert [str(a) for a in iface.addresses] == ["10.2.0.2/32", "2a07:b944::2:2/128"]
    assert [str(s) for s in iface.dns_servers] == ["10.2.0.1", "2a07:b944::2:1"]
    assert iface.dns_search == ()
    (peer,) = config.peers
    assert peer.endpoint == Endpoint("nl-free-128.protonvpn.net", 51820)
    assert peer.persistent_keepalive == 25
    assert peer.line == 12


def test_server_config_with_listen_port_and_several_peers() -> None:
    config = parse(SERVER)
    assert config.interface.listen_port == 51820
    assert config.interface.addresses == (ipaddress.ip_interface("10.8.0.1/24"),)
    alice, bob = config.peers
    assert alice.preshared_key == key(PSK)
    assert alice.endpoint is None
    assert bob.preshared_key is None
    assert [str(n) for n in bob.allowed_ips] == ["10.8.0.3/32", "fd08::3/128"]
    assert (alice.line, bob.line) == (6, 11)


# --------------------------------------------------------------------------
# Lexical rules


def test_sections_and_keys_are_case_insensitive() -> None:
    text = MULLVAD.replace("[Interface]", "[iNTERFACE]").replace("[Peer]", "[peer]")
    text = text.replace("PrivateKey", "privatekey").replace("AllowedIPs", "ALLOWEDIPS")
    assert parse(text) == parse(MULLVAD)


def test_whitespace_around_equals_and_at_line_ends_is_ignored() -> None:
    text = "\n".join(
        "\t " + line.replace(" = ", "\t=   ") + " \t" if "=" in line else line
        for line in MULLVAD.splitlines()
    )
    assert parse(text) == parse(MULLVAD)


def test_comment_starts_anywhere_on_a_line() -> None:
    text = MULLVAD.replace("DNS = 10.64.0.1", "DNS = 10.64.0.1 # 10.64.0.2").replace(
        "[Peer]", "[Peer]# the only one"
    )
    assert parse(text) == parse(MULLVAD)


def test_windows_line_endings_and_byte_order_mark_are_accepted() -> None:
    assert parse("\ufeff" + MULLVAD.replace("\n", "\r\n")) == parse(MULLVAD)


def test_blank_lines_and_missing_final_newline_are_fine() -> None:
    assert parse("\n\n" + MULLVAD.replace("\n", "\n\n").rstrip("\n")) == parse(MULLVAD)


def test_line_before_any_section_is_an_error() -> None:
    error = error_of("Address = 10.0.0.2\n" + MULLVAD)
    assert str(error) == "wg0.conf:1: key 'Address' before any section"


def test_unknown_section_is_an_error_quoting_it() -> None:
    error = error_of(MULLVAD + "[Interfaces]\n")
    assert str(error) == "wg0.conf:11: unknown section '[Interfaces]'"
    assert error.hint == "did you mean '[Interface]'?"


def test_key_line_without_equals_is_an_error_quoting_it() -> None:
    error = error_of(with_interface("MTU 1420"))
    assert str(error) == "wg0.conf:4: expected 'Key = Value', got 'MTU 1420'"


def test_unknown_key_quotes_it_as_written_and_suggests_the_close_one() -> None:
    error = error_of(with_peer("AllowedIP = 10.0.0.0/8"))
    assert str(error) == "wg0.conf:8: unknown key 'AllowedIP' in [Peer]"
    assert error.hint == "did you mean 'AllowedIPs'?"
    assert error.line == 8 and error.path == "wg0.conf"


def test_key_of_the_other_section_says_where_it_belongs() -> None:
    error = error_of(with_interface("PersistentKeepalive = 25"))
    assert str(error) == "wg0.conf:4: unknown key 'PersistentKeepalive' in [Interface]"
    assert error.hint == "'PersistentKeepalive' belongs in a [Peer] section"


def test_keys_of_other_clients_are_unknown() -> None:
    # amneziawg's junk-packet keys: refusing beats silently ignoring them.
    assert "unknown key 'Jc' in [Interface]" in str(error_of(with_interface("Jc = 4")))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Address = 10.0.0.3\0", "NUL byte U+0000"),
        ("Address = 10.0.0.3\x07", "control character U+0007"),
        ("Address = 10.0.0.3\r# CR alone", "control character U+000D"),
        ("Address\u00a0= 10.0.0.3", "unknown key"),
        ("Add\u200dress = 10.0.0.3", "invisible formatting character U+200D"),
    ],
)
def test_control_and_invisible_characters_are_rejected(line: str, message: str) -> None:
    assert message in str(error_of(with_interface(line)))


def test_invisible_characters_in_comments_are_fine() -> None:
    assert parse(MULLVAD + "# 👩\u200d💻 zero\u200bwidth\n") == parse(MULLVAD)


def test_line_longer_than_4096_characters_is_rejected() -> None:
    parse(MULLVAD + "#" * 4095 + "\n")
    error = error_of(MULLVAD + "#" * 4097 + "\n")
    assert str(error) == "wg0.conf:11: line too long (4097 characters; at most 4096)"


def test_second_interface_section_is_merged_with_a_warning() -> None:
    config = parse(MULLVAD + "[Interface]\nMTU = 1380\n")
    assert config.interface.mtu == 1380
    assert (
        "wg0.conf:11: second [Interface] section (the first is at line 1)" in (messages(config)[0])
    )


# --------------------------------------------------------------------------
# Repetition


def test_address_dns_and_allowed_ips_accumulate_over_repeated_lines() -> None:
    config = parse(
        with_interface(
            "Address = fd00::2/64\nDNS = 10.0.0.1\nDNS = fd00::1, corp.example",
            "AllowedIPs = ::/0",
        )
    )
    assert [str(a) for a in config.interface.addresses] == ["10.0.0.2/32", "fd00::2/64"]
    assert [str(s) for s in config.interface.dns_servers] == ["10.0.0.1", "fd00::1"]
    assert config.interface.dns_search == ("corp.example",)
    assert [str(n) for n in config.peers[0].allowed_ips] == ["0.0.0.0/0", "::/0"]


def test_other_keys_last_one_wins() -> None:
    config = parse(
        with_interface(
            f"MTU = 1400\nMTU = 1380\nListenPort = 1\nListenPort = 2\nPrivateKey = {PUB2}",
            "Endpoint = 192.0.2.1:1\nEndpoint = 192.0.2.2:2\n"
            "PersistentKeepalive = 5\nPersistentKeepalive = off",
        )
    )
    assert config.interface.mtu == 1380
    assert config.interface.listen_port == 2
    assert config.interface.private_key == key(PUB2)
    assert config.peers[0].endpoint == Endpoint("192.0.2.2", 2)
    assert config.peers[0].persistent_keepalive is None


def test_lists_accept_commas_whitespace_or_both() -> None:
    config = parse(
        with_interface("Address = fd00::2 10.0.0.3,\t10.0.0.4 , ,\nDNS = 1.1.1.1 8.8.8.8")
    )
    assert [str(a) for a in config.interface.addresses] == [
        "10.0.0.2/32",
        "fd00::2/128",
        "10.0.0.3/32",
        "10.0.0.4/32",
    ]
    assert len(config.interface.dns_servers) == 2


# --------------------------------------------------------------------------
# [Interface] keys


@pytest.mark.parametrize(
    "value",
    [
        PRIV[:-1],  # 43 characters
        PRIV + "A",  # 45
        PRIV[:-2] + "==",  # only 31 bytes
        PRIV[:-2] + "9=",  # unused low bits set: not canonical, wg refuses it
        PRIV.replace("A", "*", 1),
        "",
    ],
)
def test_invalid_private_keys_are_rejected(value: str) -> None:
    error = error_of(f"[Interface]\nPrivateKey = {value}\n[Peer]\nPublicKey = {PUB}\n")
    assert error.detail.startswith("invalid private key")
    assert error.line == 2


def test_address_without_prefix_is_a_host_address() -> None:
    config = parse(with_interface("Address = fd00::5"))
    assert config.interface.addresses[1] == ipaddress.IPv6Interface("fd00::5/128")
    assert config.interface.addresses[0] == ipaddress.IPv4Interface("10.0.0.2/32")


def test_address_keeps_its_network_prefix() -> None:
    config = parse(MULLVAD.replace("10.68.41.200/32", "10.68.41.200/24"))
    address = config.interface.addresses[0]
    assert address == ipaddress.IPv4Interface("10.68.41.200/24")
    assert str(address.network) == "10.68.41.0/24"


@pytest.mark.parametrize("value", ["10.0.0.256", "10.0.0.2/33", "fd00::/129", "fe80::1%eth0", "x"])
def test_invalid_addresses_are_rejected(value: str) -> None:
    assert "Address" in error_of(with_interface(f"Address = {value}")).detail


def test_dns_entries_are_servers_or_search_domains() -> None:
    config = parse(with_interface("DNS = 10.0.0.53, fd00::53, corp.example, Lan."))
    assert config.interface.dns_servers == (
        ipaddress.ip_address("10.0.0.53"),
        ipaddress.ip_address("fd00::53"),
    )
    assert config.interface.dns_search == ("corp.example", "Lan.")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.2.3", "invalid DNS server '1.2.3'"),
        ("10.0.0.1:53", "invalid DNS server '10.0.0.1:53'"),
        ("bad_-", "invalid DNS entry 'bad_-'"),
        ("-x.example", "invalid DNS entry"),
        ("a..b", "invalid DNS entry"),
        ("0x7f000001", "invalid DNS entry"),
        ("x" * 64 + ".example", "invalid DNS entry"),
    ],
)
def test_invalid_dns_entries_are_rejected(value: str, message: str) -> None:
    assert message in error_of(with_interface(f"DNS = {value}")).detail


@pytest.mark.parametrize(
    ("value", "mtu"), [("576", 576), ("1420", 1420), ("65535", 65535), ("", None)]
)
def test_mtu_range(value: str, mtu: int | None) -> None:
    assert parse(with_interface(f"MTU = {value}")).interface.mtu == mtu


@pytest.mark.parametrize(
    "value", ["575", "65536", "0", "-1420", "1_420", "\uff11\uff14\uff12\uff10", "1420.0"]
)
def test_mtu_out_of_range_or_not_a_number_is_rejected(value: str) -> None:
    assert error_of(with_interface(f"MTU = {value}")).detail.startswith("invalid MTU")


def test_ipv6_address_needs_mtu_of_at_least_1280() -> None:
    parse(with_interface("MTU = 1279"))  # IPv4 only: fine
    parse(with_interface("Address = fd00::2\nMTU = 1280"))
    error = error_of(with_interface("MTU = 1279\nAddress = fd00::2"))
    assert error.line == 4
    assert "too small for the IPv6 Address at line 5" in error.detail


@pytest.mark.parametrize(("value", "port"), [("0", 0), ("51820", 51820), ("65535", 65535)])
def test_listen_port(value: str, port: int) -> None:
    assert parse(with_interface(f"ListenPort = {value}")).interface.listen_port == port


@pytest.mark.parametrize("value", ["65536", "-1", "", "wireguard", "0x10"])
def test_invalid_listen_port_is_rejected(value: str) -> None:
    assert "in ListenPort" in error_of(with_interface(f"ListenPort = {value}")).detail


@pytest.mark.parametrize(
    ("value", "mark"),
    [("off", None), ("OFF", None), ("0", None), ("51820", 51820), ("0xca6c", 0xCA6C)],
)
def test_fwmark_is_accepted_and_ignored_with_a_warning(value: str, mark: int | None) -> None:
    config = parse(with_interface(f"FwMark = {value}"))
    assert config.interface.fwmark == mark
    warned = any("FwMark is ignored" in m for m in messages(config))
    assert warned == (mark is not None)


@pytest.mark.parametrize("value", ["0x", "4294967296", "0xffffffff1", "on", "-1"])
def test_invalid_fwmark_is_rejected(value: str) -> None:
    assert error_of(with_interface(f"FwMark = {value}")).detail.startswith("invalid FwMark")


@pytest.mark.parametrize(
    ("value", "table"),
    [
        ("off", "off"),
        ("Off", "off"),
        ("AUTO", "auto"),
        ("1234", "1234"),
        ("main", "main"),
        ("", None),
    ],
)
def test_table_is_kept_as_a_string(value: str, table: str | None) -> None:
    assert parse(with_interface(f"Table = {value}")).interface.table == table


@pytest.mark.parametrize("value", ["my table", "0", "4294967296", "-1", "a/b"])
def test_invalid_table_is_rejected(value: str) -> None:
    assert error_of(with_interface(f"Table = {value}")).detail.startswith("invalid Table")


def test_table_names_are_refused_with_a_hint() -> None:
    """wg-quick resolves names through the host's rt_tables, which says
    nothing about the tables of wg-wrap's own namespace."""
    error = error_of(with_interface("Table = vpn"))
    assert error.line == 4
    assert error.detail == "Table 'vpn': table names are not supported"
    assert error.hint == "use off, auto, main or a table number"


def test_hooks_accumulate_raw_and_warn_that_they_are_not_run() -> None:
    config = parse(
        with_interface(
            "PreUp = echo one=1\nPostUp = iptables -A OUTPUT -j ACCEPT; echo 'two'\n"
            "PostUp = logger up   # the comment goes\nPreDown = true\nPostDown = false"
        )
    )
    iface = config.interface
    assert iface.pre_up == ("echo one=1",)
    assert iface.post_up == ("iptables -A OUTPUT -j ACCEPT; echo 'two'", "logger up")
    assert (iface.pre_down, iface.post_down) == (("true",), ("false",))
    assert messages(config) == [
        "wg0.conf:4: PreUp hooks are not run by wg-wrap",
        "wg0.conf:5: PostUp hooks are not run by wg-wrap",
        "wg0.conf:6: PostUp hooks are not run by wg-wrap",
        "wg0.conf:7: PreDown hooks are not run by wg-wrap",
        "wg0.conf:8: PostDown hooks are not run by wg-wrap",
    ]


@pytest.mark.parametrize(("value", "save"), [("true", True), ("True", True), ("false", False)])
def test_save_config_is_accepted_and_ignored(value: str, save: bool) -> None:
    config = parse(with_interface(f"SaveConfig = {value}"))
    assert config.interface.save_config is save
    assert any("SaveConfig is ignored" in m for m in messages(config)) is save


def test_invalid_save_config_is_rejected() -> None:
    assert "invalid SaveConfig '1'" in str(error_of(with_interface("SaveConfig = 1")))


def test_missing_address_is_allowed_with_a_warning() -> None:
    config = parse(MULLVAD.replace("Address = 10.68.41.200/32,fc00:bbbb:bbbb:bb01::5:29c7/128", ""))
    assert config.interface.addresses == ()
    assert "wg0.conf:1: [Interface] has no Address" in messages(config)[0]


# --------------------------------------------------------------------------
# [Peer] keys and whole-file checks


def test_allowed_ips_with_host_bits_are_normalized_like_wg_with_a_warning() -> None:
    config = parse(with_peer("AllowedIPs = 10.1.2.3/24, fd00::1:2/64, 192.0.2.7, fd00::7"))
    assert [str(n) for n in config.peers[0].allowed_ips] == [
        "0.0.0.0/0",
        "10.1.2.0/24",
        "fd00::/64",
        "192.0.2.7/32",
        "fd00::7/128",
    ]
    assert messages(config) == [
        "wg0.conf:8: AllowedIPs entry 10.1.2.3/24 has host bits set; it means 10.1.2.0/24",
        "wg0.conf:8: AllowedIPs entry fd00::1:2/64 has host bits set; it means fd00::/64",
    ]


def test_empty_allowed_ips_is_valid() -> None:
    config = parse(f"[Interface]\nPrivateKey = {PRIV}\n[Peer]\nPublicKey = {PUB}\nAllowedIPs =\n")
    assert config.peers[0].allowed_ips == ()
    assert any("has no AllowedIPs" in m for m in messages(config))


@pytest.mark.parametrize(
    ("value", "endpoint", "shown"),
    [
        ("192.0.2.1:51820", Endpoint("192.0.2.1", 51820), "192.0.2.1:51820"),
        ("[2001:DB8::1]:443", Endpoint("2001:db8::1", 443), "[2001:db8::1]:443"),
        ("VPN.Example.com:1", Endpoint("vpn.example.com", 1), "vpn.example.com:1"),
        ("vpn.example.com.:65535", Endpoint("vpn.example.com.", 65535), "vpn.example.com.:65535"),
        ("[localhost]:51820", Endpoint("localhost", 51820), "localhost:51820"),
    ],
)
def test_endpoint_forms(value: str, endpoint: Endpoint, shown: str) -> None:
    assert parse(with_peer(f"Endpoint = {value}")).peers[0].endpoint == endpoint
    assert str(endpoint) == shown


def test_endpoint_knows_whether_it_needs_resolving() -> None:
    assert Endpoint("192.0.2.1", 1).is_ip and Endpoint("::1", 1).is_ip
    assert not Endpoint("vpn.example.com", 1).is_ip


@pytest.mark.parametrize(
    ("value", "message", "hint"),
    [
        ("192.0.2.1:70000", "invalid port '70000' in Endpoint", "1 to 65535"),
        ("192.0.2.1:0", "invalid port '0' in Endpoint", "1 to 65535"),
        ("192.0.2.1:", "missing port in Endpoint", "host:port"),
        ("192.0.2.1", "missing port in Endpoint", "write 192.0.2.1:51820"),
        ("2001:db8::1", "missing port in Endpoint", "write [2001:db8::1]:51820"),
        ("2001:db8::1:51820", "must be in brackets", "write [2001:db8::1]:51820"),
        ("[2001:db8::1]51820", "missing port in Endpoint", "host:port"),
        ("[2001:db8::1]", "missing port in Endpoint", "host:port"),
        ("", "empty Endpoint", "host:port"),
        (":51820", "invalid host ''", "host:port"),
        ("-vpn.example.com:1", "invalid host", "host:port"),
        ("1.2.3:51820", "invalid host '1.2.3'", "host:port"),
        ("0x7f.1:51820", "invalid host", "host:port"),
    ],
)
def test_invalid_endpoints_are_rejected_with_a_hint(value: str, message: str, hint: str) -> None:
    error = error_of(with_peer(f"Endpoint = {value}"))
    assert message in error.detail
    assert error.hint is not None and hint in error.hint


@pytest.mark.parametrize(
    ("value", "interval"), [("off", None), ("Off", None), ("0", None), ("25", 25), ("65535", 65535)]
)
def test_persistent_keepalive(value: str, interval: int | None) -> None:
    config = parse(with_peer(f"PersistentKeepalive = {value}"))
    assert config.peers[0].persistent_keepalive == interval


def test_preshared_key() -> None:
    assert parse(with_peer(f"PresharedKey = {PSK}")).peers[0].preshared_key == key(PSK)
    assert "invalid preshared key" in str(error_of(with_peer("PresharedKey = abc")))


def test_peer_without_public_key_points_at_its_header() -> None:
    error = error_of(MULLVAD + "\n[Peer]\nEndpoint = 192.0.2.1:1\n")
    assert str(error) == "wg0.conf:12: [Peer] has no PublicKey"


def test_no_peer_points_at_the_last_line_with_content() -> None:
    error = error_of(f"[Interface]\nPrivateKey = {PRIV}\n\n# the end\n\n")
    assert str(error) == (
        "wg0.conf:2: no [Peer] section: the file ends without one, and a tunnel needs a peer"
    )


def test_no_interface_and_no_private_key_are_errors() -> None:
    missing = "wg0.conf:1: no [Interface] section: a config starts with [Interface]"
    assert str(error_of(f"[Peer]\nPublicKey = {PUB}\n")) == missing
    assert str(error_of("")) == missing
    error = error_of(f"# hi\n[Interface]\nAddress = 10.0.0.2\n[Peer]\nPublicKey = {PUB}\n")
    assert str(error) == "wg0.conf:2: [Interface] has no PrivateKey"


def test_duplicate_peer_public_keys_are_an_error() -> None:
    error = error_of(MULLVAD + f"[Peer]\nPublicKey = {PUB}\n")
    assert str(error) == "wg0.conf:12: duplicate peer: the [Peer] at line 7 has the same PublicKey"


def test_peer_with_the_interfaces_own_public_key_is_fine() -> None:
    # wg and wireguard-go skip such a peer; the parser does not compute public keys.
    own = "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8="  # public key of PRIV
    assert len(parse(with_peer("") + f"[Peer]\nPublicKey = {own}\n").peers) == 2


# --------------------------------------------------------------------------
# Secrets stay out of messages and reprs


def test_private_keys_never_appear_in_repr() -> None:
    config = parse(SERVER)
    for text in (repr(config), repr(config.interface), str(config)):
        assert PRIV not in text and repr(key(PRIV)) not in text
        assert PSK not in text and repr(key(PSK)) not in text


def test_a_bare_key_on_a_line_is_not_echoed_in_the_error() -> None:
    for line in (PRIV, PRIV.rstrip("="), f"PrivatKey = {PRIV}"):
        error = error_of(f"[Interface]\n{line}\n")
        assert PRIV[:20] not in str(error), str(error)


def test_invalid_key_messages_do_not_quote_the_value() -> None:
    bad = PRIV[:-2] + "9="
    error = error_of(f"[Interface]\nPrivateKey = {bad}\n")
    assert bad[:20] not in str(error) and bad[:20] not in (error.hint or "")


# --------------------------------------------------------------------------
# Rendering and identity


def test_render_is_canonical_wg_quick_text() -> None:
    assert render_config(parse(PROTON)) == (
        "[Interface]\n"
        f"PrivateKey = {PRIV}\n"
        "Address = 10.2.0.2/32, 2a07:b944::2:2/128\n"
        "DNS = 10.2.0.1, 2a07:b944::2:1\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PUB}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        "Endpoint = nl-free-128.protonvpn.net:51820\n"
        "PersistentKeepalive = 25\n"
    )


def test_render_of_every_interface_field_round_trips() -> None:
    text = with_interface(
        "DNS = 10.0.0.1, corp.example\nMTU = 1380\nListenPort = 0\nFwMark = 0x10\nTable = off\n"
        "PreUp = a\nPostUp = b\nPreDown = c\nPostDown = d\nSaveConfig = true",
        f"PresharedKey = {PSK}\nEndpoint = [::1]:1\nPersistentKeepalive = 5",
    )
    config = parse(text)
    assert parse(render_config(config)) == config
    assert "FwMark = 0x10\n" in render_config(config)


def test_digest_ignores_formatting_but_not_content() -> None:
    digest = config_digest(parse(MULLVAD))
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    reformatted = MULLVAD.lower().replace(PRIV.lower(), PRIV).replace(PUB.lower(), PUB)
    assert config_digest(parse("# a comment\n" + reformatted.replace(" = ", "="))) == digest
    assert config_digest(parse(MULLVAD.replace(":51820", ":51821"))) != digest


# --------------------------------------------------------------------------
# Files


def write(tmp_path: Path, data: bytes | str, name: str = "wg0.conf", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def test_load_config_reads_a_file_and_shows_the_path_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, MULLVAD + "Oops = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:11: unknown key 'Oops'")
    assert load_config(write(tmp_path, MULLVAD)) == parse(MULLVAD)


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, b"\xef\xbb\xbf" + MULLVAD.encode())) == parse(MULLVAD)


def test_load_config_refuses_a_file_over_one_mebibyte(tmp_path: Path) -> None:
    filler = ("#" * 99 + "\n") * ((MAX_FILE_SIZE - len(MULLVAD)) // 100)
    padded = MULLVAD + filler + "#" * (MAX_FILE_SIZE - len(MULLVAD) - len(filler))
    assert len(padded) == MAX_FILE_SIZE
    load_config(write(tmp_path, padded))
    path = write(tmp_path, MULLVAD + "#" * MAX_FILE_SIZE)
    with pytest.raises(ConfigError, match=r"file too large") as info:
        load_config(path)
    assert info.value.line is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00", "1: not a text file (it contains NUL bytes)"),
        (b"[Interface]\n\xff\xfe", "2: not a text file (invalid UTF-8 at byte 12)"),
    ],
)
def test_load_config_refuses_binary_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:{message}"


def test_load_config_refuses_directories_missing_files_and_devices(tmp_path: Path) -> None:
    cases = {
        str(tmp_path): "is a directory, not a config file",
        str(tmp_path / "nope.conf"): "no such file",
        "/dev/null": "not a regular file or a pipe",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: {message}"


def test_load_config_reads_a_pipe(tmp_path: Path) -> None:
    """`-c <(pass show vpn/wg0)` keeps the private key off the disk."""
    read_end, write_end = os.pipe()
    os.write(write_end, MULLVAD.encode())
    os.close(write_end)
    try:
        config = load_config(f"/proc/self/fd/{read_end}")
    finally:
        os.close(read_end)
    assert config == parse_config(MULLVAD)


def test_load_config_refuses_unreadable_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MULLVAD, mode=0)
    if os.geteuid() == 0:  # root reads anything: make open() fail as it would for a user

        def refuse(*args: object) -> int:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: permission denied"


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o600, None),
        (0o400, None),
        (0o644, "readable by other users (mode 0644)"),
        (0o640, "readable by other users (mode 0640)"),
        (0o620, "writable by other users (mode 0620)"),
    ],
)
def test_permission_warning(tmp_path: Path, mode: int, problem: str | None) -> None:
    path = write(tmp_path, MULLVAD, mode=mode)
    warning = permission_warning(path)
    if problem is None:
        assert warning is None
    else:
        assert warning == f"{path} is {problem}; it holds a private key: chmod 600 {path}"


def test_permission_warning_quotes_the_path_for_the_shell(tmp_path: Path) -> None:
    path = write(tmp_path, MULLVAD, name="my vpn.conf", mode=0o644)
    assert str(permission_warning(path)).endswith(f"chmod 600 '{path}'")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_warning_renders_as_path_line_message() -> None:
    assert str(ConfigWarning("a.conf", 3, "m")) == "a.conf:3: m"
    assert str(ConfigWarning("a.conf", None, "m")) == "a.conf: m"


# --------------------------------------------------------------------------
# The corpus of bad configs: each file says where and how it must fail


def corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.conf"))


def test_corpus_is_large_enough() -> None:
    assert len(corpus()) >= 25


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_bad_config_fails_at_the_expected_line(path: Path) -> None:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    match = re.fullmatch(r"# expect: (\d+): (.+)", first)
    assert match, f"{path.name}: first line must be '# expect: <line>: <message>'"
    line, message = match.groups()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    where = f"{path}:{line}: "
    assert str(info.value).startswith(where), str(info.value)
    assert message in info.value.detail, str(info.value)


# --------------------------------------------------------------------------
# Properties



@given(configs())
def test_property_render_then_parse_gives_the_same_config(config: Config) -> None:
    assert parse_config(render_config(config)) == config
    assert config_digest(parse_config(render_config(config))) == config_digest(config)


def parses_or_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as error:
        assert error.path == "<config>"
        assert error.line is None or error.line >= 1


@given(st.text(max_size=2000))
def test_property_arbitrary_text_raises_nothing_but_config_error(text: str) -> None:
    parses_or_config_error(text)


LINE_STARTS = [
    "[Interface]",
    "[Peer]",
    f"PrivateKey = {PRIV}",
    f"PublicKey = {PUB}",
    *(f"{name} = " for name in ("Address", "DNS", "AllowedIPs", "Endpoint", "MTU", "ListenPort")),
    *(f"{name} = " for name in ("FwMark", "Table", "PersistentKeepalive", "PresharedKey")),
    *(f"{name} = " for name in ("SaveConfig", "PostUp")),
    "#",
]


@st.composite
def plausible_texts(draw: st.DrawFn) -> str:
    starts = draw(st.lists(st.sampled_from(LINE_STARTS), max_size=12))
    return "\n".join(start + draw(st.text(max_size=40)) for start in starts)


@given(plausible_texts())
def test_property_plausible_lines_with_arbitrary_values_raise_only_config_error(text: str) -> None:
    parses_or_config_error(text)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.data())
def test_property_mutated_valid_config_raises_nothing_but_config_error(
    config: Config, data: st.DataObject
) -> None:
    text = render_config(config)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        if action == "insert":
            text = text[:position] + data.draw(st.text(max_size=5)) + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + data.draw(st.integers(1, 10)) :]
        elif action == "replace":
            char = data.draw(st.characters() | st.sampled_from(list("=#[],:/ \t\n")))
            text = text[:position] + char + text[position + 1 :]
        else:
            text = text[:position] + text[position : position + 40] + text[position:]
    parses_or_config_error(text)


def shuffle_case(data: st.DataObject, word: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(word, flips, strict=True))


@given(configs(), st.data())
def test_property_key_case_and_whitespace_do_not_matter(
    config: Config, data: st.DataObject
) -> None:
    blanks = st.text(st.sampled_from(" \t"), max_size=3)
    lines = []
    for line in render_config(config).split("\n"):
        if line.startswith("["):
            lines.append(data.draw(blanks) + shuffle_case(data, line) + data.draw(blanks))
        elif line:
            name, _, value = line.partition(" = ")
            lines.append(
                data.draw(blanks)
                + shuffle_case(data, name)
                + data.draw(blanks)
                + "="
                + data.draw(blanks)
                + value
                + data.draw(blanks)
                + data.draw(st.sampled_from(["", " # note", "#"]))
            )
        if data.draw(st.booleans()):
            lines.append(data.draw(st.sampled_from(["", "# comment", "   ", "\t# x = y"])))
    ending = data.draw(st.sampled_from(["\n", "\r\n"]))
    assert parse_config(ending.join(lines)) == config
