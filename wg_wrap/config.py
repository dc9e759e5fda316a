"""Parse, check and render wg-quick configuration files.

The parser follows wireguard-tools: the text is read line by line, every key
has its own small function, an unknown key is an error that quotes the key as
written, and whole-file checks (a peer without a public key, no peer at all)
come after the last line.  The accepted syntax is the union of what wg-quick
consumes itself (Address, DNS, MTU, Table, hooks, SaveConfig) and what it
passes on to ``wg setconf`` (keys, ports, peers).

This module is pure: text in, frozen dataclasses out.  ``load_config`` and
``permission_warning`` are the only functions that touch the file system, and
nothing here resolves a hostname (that happens on the host, later).

Private and preshared keys are kept out of every ``repr`` and every message.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
import ipaddress
import os
import re
import shlex
import socket
import stat
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from wg_wrap.errors import ConfigError

__all__ = [
    "MAX_FILE_SIZE",
    "MAX_LINE_LENGTH",
    "Config",
    "ConfigWarning",
    "Endpoint",
    "Interface",
    "Peer",
    "config_digest",
    "load_config",
    "parse_config",
    "permission_warning",
    "render_config",
]

MAX_FILE_SIZE = 1 << 20
MAX_LINE_LENGTH = 4096
KEY_LENGTH = 32

MIN_MTU = 576
MIN_MTU_IPV6 = 1280
MAX_MTU = 65535

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------
# The data model


@dataclass(frozen=True)
class ConfigWarning:
    """Something accepted but ignored or suspicious, located in the file."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Endpoint:
    """A peer's ``Endpoint``: an IP literal (normalized) or a hostname (lowercased)."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        """True when ``host`` is an IP literal (nothing to resolve)."""
        return _parse_ip_literal(self.host) is not None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Peer:
    """One ``[Peer]`` section.  ``line`` is the line of its header (not compared)."""

    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Interface:
    """The ``[Interface]`` section (merged, if the file has several)."""

    private_key: bytes = field(repr=False)
    addresses: tuple[IPInterface, ...] = ()
    dns_servers: tuple[IPAddress, ...] = ()
    dns_search: tuple[str, ...] = ()
    mtu: int | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False


@dataclass(frozen=True)
class Config:
    """A whole configuration file.  Warnings do not take part in equality."""

    interface: Interface
    peers: tuple[Peer, ...]
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False)


# --------------------------------------------------------------------------
# Small value parsers shared by the key handlers.  They raise _ValueProblem;
# the parser turns it into a ConfigError located at the current line.


class _ValueProblem(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


_DIGITS = re.compile(r"[0-9]+")
_BASE64_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/]{42,43}={0,2}")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_TABLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_FWMARK_HEX = re.compile(r"0x[0-9a-fA-F]+")


def _quote(text: str, limit: int = 60) -> str:
    """Quote user text for a message: shortened, with anything key-like hidden."""
    text = _KEY_LIKE.sub("<key>", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"'{text}'"


def _parse_number(text: str, low: int, high: int) -> int | None:
    """A plain decimal number in [low, high], or None.  No signs, no '_', ASCII only."""
    if not _DIGITS.fullmatch(text) or len(text) > 20:
        return None
    value = int(text)
    return value if low <= value <= high else None


def _parse_key(text: str, what: str) -> bytes:
    """A 32-byte key in the canonical base64 form ``wg genkey`` prints (44 chars)."""
    if not text:
        raise _ValueProblem(f"invalid {what}: the value is empty")
    if len(text) != 44 or not text.endswith("="):
        raise _ValueProblem(
            f"invalid {what}: expected 44 base64 characters ending in '=', got {len(text)}",
            hint="keys are what `wg genkey` / `wg pubkey` print",
        )
    if not _BASE64_KEY.fullmatch(text):
        raise _ValueProblem(f"invalid {what}: not valid base64")
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise _ValueProblem(f"invalid {what}: not valid base64") from None
    # wg rejects non-canonical encodings (unused low bits of the last character set).
    if len(key) != KEY_LENGTH or base64.b64encode(key).decode("ascii") != text:
        raise _ValueProblem(f"invalid {what}: not a canonical base64 key")
    return key


def _parse_ip_literal(text: str) -> IPAddress | None:
    """An IPv4 (dotted quad) or IPv6 literal without zone index, or None."""
    if "%" in text:
        return None
    try:
        if ":" in text:
            return ipaddress.IPv6Address(text)
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _is_dns_name(text: str) -> bool:
    """A plausible DNS name: labels of letters, digits, '-' and '_', at most 253 chars.

    A name that the C library would read as an address (``127.1``, ``0x7f000001``)
    is not a name.  A trailing dot (fully qualified) is allowed.
    """
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return False
    if labels[-1].isdigit():
        return False
    try:
        socket.inet_aton(name)
    except OSError:
        return True
    return False


def _split_list(value: str) -> list[str]:
    """wg-quick's ``${value//,/ }`` word splitting: commas and/or whitespace."""
    return value.replace(",", " ").split()


def _parse_ip_and_prefix(item: str, key: str) -> tuple[IPAddress, int]:
    """``ip[/prefix]`` as in Address and AllowedIPs; no prefix means a host."""
    address, slash, prefix = item.partition("/")
    ip = _parse_ip_literal(address)
    if ip is None:
        raise _ValueProblem(f"invalid address {_quote(item)} in {key}")
    if not slash:
        return ip, ip.max_prefixlen
    length = _parse_number(prefix, 0, ip.max_prefixlen)
    if length is None:
        raise _ValueProblem(
            f"invalid prefix length {_quote(prefix)} in {key} {_quote(item)}: "
            f"expected 0 to {ip.max_prefixlen}"
        )
    return ip, length


def _parse_address(item: str) -> IPInterface:
    ip, prefix = _parse_ip_and_prefix(item, "Address")
    return ipaddress.ip_interface(f"{ip}/{prefix}")


def _parse_allowed_ip(item: str) -> tuple[IPNetwork, bool]:
    """One AllowedIPs entry; the flag tells whether host bits had to be cleared."""
    if item[0] in "+-":
        raise _ValueProblem(
            f"incremental AllowedIPs entry {_quote(item)} is not supported in a config file",
            hint="remove the leading '+' or '-'",
        )
    ip, prefix = _parse_ip_and_prefix(item, "AllowedIPs")
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return network, network.network_address != ip


def _parse_endpoint(value: str) -> Endpoint:
    example = "write host:port, e.g. vpn.example.com:51820 or [2001:db8::1]:51820"
    if not value:
        raise _ValueProblem("empty Endpoint", hint=example)
    bare = _parse_ip_literal(value)
    if bare is not None:
        where = f"[{bare}]" if bare.version == 6 else str(bare)
        raise _ValueProblem(
            f"missing port in Endpoint {_quote(value)}", hint=f"write {where}:51820"
        )
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise _ValueProblem(f"unmatched '[' in Endpoint {_quote(value)}", hint=example)
        if not rest.startswith(":") or len(rest) == 1:
            raise _ValueProblem(f"missing port in Endpoint {_quote(value)}", hint=example)
        port_text = rest[1:]
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or not port_text:
            raise _ValueProblem(f"missing port in Endpoint {_quote(value)}", hint=example)
        if ":" in host:
            address = host if _parse_ip_literal(host) is not None else "2001:db8::1"
            raise _ValueProblem(
                f"IPv6 address in Endpoint {_quote(value)} must be in brackets",
                hint=f"write [{address}]:{port_text if _DIGITS.fullmatch(port_text) else 51820}",
            )
    port = _parse_number(port_text, 1, 65535)
    if port is None:
        raise _ValueProblem(
            f"invalid port {_quote(port_text)} in Endpoint",
            hint="a port is a number from 1 to 65535",
        )
    ip = _parse_ip_literal(host)
    if ip is not None:
        return Endpoint(str(ip), port)
    if re.fullmatch(r"[0-9.]+", host) or ":" in host or not _is_dns_name(host):
        raise _ValueProblem(f"invalid host {_quote(host)} in Endpoint", hint=example)
    return Endpoint(host.lower(), port)


# --------------------------------------------------------------------------
# The line-by-line parser


@dataclass
class _InterfaceDraft:
    line: int
    private_key: bytes | None = None
    addresses: list[tuple[IPInterface, int]] = field(default_factory=list)
    dns_servers: list[IPAddress] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    mtu: int | None = None
    mtu_line: int = 0
    listen_port: int | None = None
    fwmark: int | None = None
    table: str | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False


@dataclass
class _PeerDraft:
    line: int
    public_key: bytes | None = None
    public_key_line: int = 0
    preshared_key: bytes | None = None
    allowed_ips: list[IPNetwork] = field(default_factory=list)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None


_Handler = Callable[["_Parser", str], None]


class _Parser:
    """One pass over the lines, then the whole-file checks."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lineno = 0
        self.last_content_line = 1  # where whole-file errors point when a section is missing
        self.section: str | None = None
        self.interface: _InterfaceDraft | None = None
        self.peers: list[_PeerDraft] = []
        self.warnings: list[ConfigWarning] = []

    # -- helpers ----------------------------------------------------------

    def fail(self, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(self.path, self.lineno, message, hint=hint)

    def warn(self, message: str, line: int | None = None) -> None:
        self.warnings.append(ConfigWarning(self.path, line or self.lineno, message))

    @property
    def iface(self) -> _InterfaceDraft:
        if self.interface is None:  # pragma: no cover - handlers only run inside [Interface]
            raise RuntimeError("no [Interface] section")
        return self.interface

    @property
    def peer(self) -> _PeerDraft:
        return self.peers[-1]

    # -- driving ----------------------------------------------------------

    def feed(self, lineno: int, raw: str) -> None:
        self.lineno = lineno
        self.check_characters(raw)
        content = raw.partition("#")[0].strip(" \t")
        if not content:
            return
        self.last_content_line = lineno
        key, equals, value = content.partition("=")
        key = key.strip(" \t")
        if not equals and content.startswith("["):
            self.start_section(content)
            return
        if not equals:
            raise self.fail(
                f"expected 'Key = Value', got {_quote(content)}",
                hint="a line is a [Section] header, a 'Key = Value' pair or a # comment",
            )
        if not key:
            raise self.fail(f"missing key before '=' in {_quote(content)}")
        if key.startswith("["):
            raise self.fail(f"unknown section {_quote(content)}")
        self.handle_key(key, value.strip(" \t"))

    def check_characters(self, raw: str) -> None:
        if len(raw) > MAX_LINE_LENGTH:
            raise self.fail(
                f"line too long ({len(raw)} characters; at most {MAX_LINE_LENGTH})",
                hint="is this really a WireGuard config?",
            )
        comment = raw.find("#")
        for index, char in enumerate(raw):
            if char == "\t" or " " <= char <= "~":
                continue
            category = unicodedata.category(char)
            if category in ("Cc", "Cs"):
                name = "NUL byte" if char == "\0" else "control character"
                raise self.fail(
                    f"{name} U+{ord(char):04X} in line", hint="is this really a WireGuard config?"
                )
            # Invisible characters are harmless in a comment, confusing anywhere else.
            if category == "Cf" and (comment < 0 or index < comment):
                raise self.fail(f"invisible formatting character U+{ord(char):04X} in line")

    def start_section(self, header: str) -> None:
        name = header.lower()
        if name == "[interface]":
            self.section = "interface"
            if self.interface is None:
                self.interface = _InterfaceDraft(line=self.lineno)
            else:
                self.warn(
                    f"second [Interface] section (the first is at line {self.interface.line}): "
                    "its keys are merged into the first"
                )
        elif name == "[peer]":
            self.section = "peer"
            self.peers.append(_PeerDraft(line=self.lineno))
        else:
            sections = {"[interface]": "[Interface]", "[peer]": "[Peer]"}
            close = difflib.get_close_matches(name, list(sections), n=1, cutoff=0.6)
            hint = f"did you mean '{sections[close[0]]}'?" if close else None
            raise self.fail(f"unknown section {_quote(header)}", hint=hint)

    def handle_key(self, key: str, value: str) -> None:
        folded = key.lower() if key.isascii() else key
        if self.section is None:
            raise self.fail(
                f"key {_quote(key)} before any section",
                hint="a config starts with an [Interface] section",
            )
        table, other, name = (
            (_INTERFACE_KEYS, _PEER_KEYS, "[Interface]")
            if self.section == "interface"
            else (_PEER_KEYS, _INTERFACE_KEYS, "[Peer]")
        )
        handler = table.get(folded)
        if handler is None:
            hint = self.key_hint(folded, other)
            raise self.fail(f"unknown key {_quote(key)} in {name}", hint=hint)
        try:
            handler(self, value)
        except _ValueProblem as problem:
            raise self.fail(problem.message, hint=problem.hint) from None

    def key_hint(self, folded: str, other: dict[str, _Handler]) -> str | None:
        if folded in other:
            where = "a [Peer]" if self.section == "interface" else "the [Interface]"
            return f"'{_CANONICAL[folded]}' belongs in {where} section"
        known = _INTERFACE_KEYS if self.section == "interface" else _PEER_KEYS
        close = difflib.get_close_matches(folded, list(known), n=1, cutoff=0.7)
        if close:
            return f"did you mean '{_CANONICAL[close[0]]}'?"
        return None

    # -- [Interface] keys -------------------------------------------------

    def private_key(self, value: str) -> None:
        self.iface.private_key = _parse_key(value, "private key")

    def address(self, value: str) -> None:
        seen = {address: line for address, line in self.iface.addresses}
        for item in _split_list(value):
            address = _parse_address(item)
            if address in seen:
                raise _ValueProblem(
                    f"duplicate address {address} in Address "
                    f"(already given at line {seen[address]})"
                )
            seen[address] = self.lineno
            self.iface.addresses.append((address, self.lineno))

    def dns(self, value: str) -> None:
        for item in _split_list(value):
            # wg-quick's own test: digits and dots, or a colon, make a server.
            if re.fullmatch(r"[0-9.]+", item) or ":" in item:
                server = _parse_ip_literal(item)
                if server is None:
                    raise _ValueProblem(f"invalid DNS server {_quote(item)}")
                self.iface.dns_servers.append(server)
            elif _is_dns_name(item):
                self.iface.dns_search.append(item)
            else:
                raise _ValueProblem(
                    f"invalid DNS entry {_quote(item)}: neither an IP address nor a search domain"
                )

    def mtu(self, value: str) -> None:
        if not value:  # wg-quick: an empty MTU means "choose automatically"
            self.iface.mtu = None
            return
        mtu = _parse_number(value, MIN_MTU, MAX_MTU)
        if mtu is None:
            raise _ValueProblem(f"invalid MTU {_quote(value)}: expected {MIN_MTU} to {MAX_MTU}")
        self.iface.mtu = mtu
        self.iface.mtu_line = self.lineno

    def listen_port(self, value: str) -> None:
        port = _parse_number(value, 0, 65535)
        if port is None:
            raise _ValueProblem(
                f"invalid port {_quote(value)} in ListenPort",
                hint="a port is a number from 0 (random) to 65535",
            )
        self.iface.listen_port = port

    def fwmark(self, value: str) -> None:
        mark: int | None
        if value.lower() == "off":
            mark = 0
        elif _FWMARK_HEX.fullmatch(value) and len(value) <= 20:
            mark = int(value, 16) if int(value, 16) <= 0xFFFFFFFF else None
        else:
            mark = _parse_number(value, 0, 0xFFFFFFFF)
        if mark is None:
            raise _ValueProblem(
                f"invalid FwMark {_quote(value)}: expected off or a number up to 0xffffffff"
            )
        self.iface.fwmark = mark or None
        if mark:
            self.warn(
                "FwMark is ignored: wg-wrap does not need policy routing inside its own namespace"
            )

    def table(self, value: str) -> None:
        if not value:  # wg-quick: empty means the default
            self.iface.table = None
        elif value.lower() in ("off", "auto", "main"):
            self.iface.table = value.lower()
        elif _parse_number(value, 1, 0xFFFFFFFF) is not None:
            self.iface.table = value
        elif _TABLE_NAME.fullmatch(value) and not value.isdigit():
            # wg-quick looks names up in /etc/iproute2/rt_tables, which
            # describes the host's tables, not those of wg-wrap's namespace.
            raise _ValueProblem(
                f"Table {_quote(value)}: table names are not supported",
                hint="use off, auto, main or a table number",
            )
        else:
            raise _ValueProblem(
                f"invalid Table {_quote(value)}: expected off, auto, main or a table number"
            )

    def hook(self, hooks: list[str], key: str, value: str) -> None:
        hooks.append(value)
        self.warn(f"{key} hooks are not run by wg-wrap")

    def pre_up(self, value: str) -> None:
        self.hook(self.iface.pre_up, "PreUp", value)

    def post_up(self, value: str) -> None:
        self.hook(self.iface.post_up, "PostUp", value)

    def pre_down(self, value: str) -> None:
        self.hook(self.iface.pre_down, "PreDown", value)

    def post_down(self, value: str) -> None:
        self.hook(self.iface.post_down, "PostDown", value)

    def save_config(self, value: str) -> None:
        folded = value.lower()
        if folded not in ("true", "false"):
            raise _ValueProblem(f"invalid SaveConfig {_quote(value)}: expected true or false")
        self.iface.save_config = folded == "true"
        if self.iface.save_config:
            self.warn("SaveConfig is ignored: wg-wrap never writes to your config file")

    # -- [Peer] keys ------------------------------------------------------

    def public_key(self, value: str) -> None:
        self.peer.public_key = _parse_key(value, "public key")
        self.peer.public_key_line = self.lineno

    def preshared_key(self, value: str) -> None:
        self.peer.preshared_key = _parse_key(value, "preshared key")

    def allowed_ips(self, value: str) -> None:
        if not value:  # wg: an empty AllowedIPs is valid and adds nothing
            return
        for item in value.split(","):
            item = item.strip(" \t")
            if not item:
                raise _ValueProblem("empty entry in AllowedIPs", hint="remove the extra ','")
            if " " in item or "\t" in item:
                raise _ValueProblem(
                    f"AllowedIPs entries must be separated by commas: {_quote(item)}"
                )
            network, had_host_bits = _parse_allowed_ip(item)
            if had_host_bits:
                self.warn(f"AllowedIPs entry {item} has host bits set; it means {network}")
            self.peer.allowed_ips.append(network)

    def endpoint(self, value: str) -> None:
        self.peer.endpoint = _parse_endpoint(value)

    def persistent_keepalive(self, value: str) -> None:
        interval = 0 if value.lower() == "off" else _parse_number(value, 0, 65535)
        if interval is None:
            raise _ValueProblem(
                f"invalid PersistentKeepalive {_quote(value)}: expected off or 0 to 65535 seconds"
            )
        self.peer.persistent_keepalive = interval or None

    # -- whole-file checks ------------------------------------------------

    def finish(self) -> Config:
        if self.interface is None:
            raise ConfigError(
                self.path, 1, "no [Interface] section: a config starts with [Interface]"
            )
        iface = self.interface
        if iface.private_key is None:
            raise ConfigError(self.path, iface.line, "[Interface] has no PrivateKey")
        if not self.peers:
            raise ConfigError(
                self.path, self.last_content_line,
                "no [Peer] section: the file ends without one, and a tunnel needs a peer",
            )
        peers = tuple(self.finish_peer(draft) for draft in self.peers)
        self.check_duplicate_peers(peers)
        self.check_mtu()
        if not iface.addresses:
            self.warn("[Interface] has no Address: the tunnel will have no IP address", iface.line)
        interface = Interface(
            private_key=iface.private_key,
            addresses=tuple(address for address, _ in iface.addresses),
            dns_servers=tuple(iface.dns_servers),
            dns_search=tuple(iface.dns_search),
            mtu=iface.mtu,
            listen_port=iface.listen_port,
            fwmark=iface.fwmark,
            table=iface.table,
            pre_up=tuple(iface.pre_up),
            post_up=tuple(iface.post_up),
            pre_down=tuple(iface.pre_down),
            post_down=tuple(iface.post_down),
            save_config=iface.save_config,
        )
        return Config(interface, peers, tuple(self.warnings))

    def finish_peer(self, draft: _PeerDraft) -> Peer:
        if draft.public_key is None:
            raise ConfigError(self.path, draft.line, "[Peer] has no PublicKey")
        if not draft.allowed_ips:
            self.warn("[Peer] has no AllowedIPs: no traffic will be sent to it", draft.line)
        return Peer(
            public_key=draft.public_key,
            preshared_key=draft.preshared_key,
            allowed_ips=tuple(draft.allowed_ips),
            endpoint=draft.endpoint,
            persistent_keepalive=draft.persistent_keepalive,
            line=draft.line,
        )

    def check_duplicate_peers(self, peers: tuple[Peer, ...]) -> None:
        first: dict[bytes, int] = {}
        for draft, peer in zip(self.peers, peers, strict=True):
            if peer.public_key in first:
                raise ConfigError(
                    self.path,
                    draft.public_key_line,
                    f"duplicate peer: the [Peer] at line {first[peer.public_key]} "
                    "has the same PublicKey",
                    hint="merge the two sections or remove one",
                )
            first[peer.public_key] = draft.line

    def check_mtu(self) -> None:
        iface = self.iface
        ipv6 = [line for address, line in iface.addresses if address.version == 6]
        if iface.mtu is not None and iface.mtu < MIN_MTU_IPV6 and ipv6:
            raise ConfigError(
                self.path,
                iface.mtu_line,
                f"MTU {iface.mtu} is too small for the IPv6 Address at line {ipv6[0]} "
                f"(IPv6 needs at least {MIN_MTU_IPV6})",
                hint=f"raise MTU to {MIN_MTU_IPV6} or more, or remove the IPv6 address",
            )


_INTERFACE_SYNTAX: tuple[tuple[str, _Handler], ...] = (
    ("PrivateKey", _Parser.private_key),
    ("Address", _Parser.address),
    ("DNS", _Parser.dns),
    ("MTU", _Parser.mtu),
    ("ListenPort", _Parser.listen_port),
    ("FwMark", _Parser.fwmark),
    ("Table", _Parser.table),
    ("PreUp", _Parser.pre_up),
    ("PostUp", _Parser.post_up),
    ("PreDown", _Parser.pre_down),
    ("PostDown", _Parser.post_down),
    ("SaveConfig", _Parser.save_config),
)

_PEER_SYNTAX: tuple[tuple[str, _Handler], ...] = (
    ("PublicKey", _Parser.public_key),
    ("PresharedKey", _Parser.preshared_key),
    ("AllowedIPs", _Parser.allowed_ips),
    ("Endpoint", _Parser.endpoint),
    ("PersistentKeepalive", _Parser.persistent_keepalive),
)

# Keys are matched case-insensitively, like wg-quick (nocasematch) and wg (strncasecmp).
_INTERFACE_KEYS = {name.lower(): handler for name, handler in _INTERFACE_SYNTAX}
_PEER_KEYS = {name.lower(): handler for name, handler in _PEER_SYNTAX}
_CANONICAL = {name.lower(): name for name, _ in _INTERFACE_SYNTAX + _PEER_SYNTAX}


# --------------------------------------------------------------------------
# Public entry points


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse wg-quick text; raise ConfigError located at ``path:line`` on bad input."""
    parser = _Parser(path)
    text = text.removeprefix("\ufeff")
    for lineno, raw in enumerate(text.split("\n"), start=1):
        parser.feed(lineno, raw.removesuffix("\r"))
    return parser.finish()


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a config file, refusing anything that is not a small text file."""
    shown = os.fspath(path)
    data = _read_small_file(shown)
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ConfigError(shown, line, "not a text file (it contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            shown, line, f"not a text file (invalid UTF-8 at byte {error.start})"
        ) from None
    return parse_config(text, shown)


def _read_small_file(shown: str) -> bytes:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(shown, flags)
    except FileNotFoundError:
        raise ConfigError(shown, None, "no such file") from None
    except PermissionError:
        raise ConfigError(
            shown, None, "permission denied", hint="the file must be readable by you"
        ) from None
    except OSError as error:
        raise ConfigError(shown, None, f"cannot open: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(shown, None, "is a directory, not a config file")
        if stat.S_ISFIFO(info.st_mode):
            # A pipe: `-c <(pass show vpn/wg0)` keeps the key off the disk.
            os.set_blocking(fd, True)
        elif not stat.S_ISREG(info.st_mode):
            raise ConfigError(shown, None, "not a regular file or a pipe")
        if info.st_size > MAX_FILE_SIZE:
            raise ConfigError(
                shown, None, f"file too large ({info.st_size} bytes; at most {MAX_FILE_SIZE})"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_SIZE:
            chunk = os.read(fd, MAX_FILE_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_FILE_SIZE:
            raise ConfigError(shown, None, f"file too large (more than {MAX_FILE_SIZE} bytes)")
        return b"".join(chunks)
    except OSError as error:
        raise ConfigError(shown, None, f"cannot read: {error.strerror}") from None
    finally:
        os.close(fd)


def permission_warning(path: str | os.PathLike[str]) -> str | None:
    """A warning when other users may read (or change) the file, else None."""
    shown = os.fspath(path)
    try:
        mode = stat.S_IMODE(os.stat(shown).st_mode)
    except OSError:
        return None
    if mode & 0o044:
        problem = "readable by other users"
    elif mode & 0o022:
        problem = "writable by other users"
    else:
        return None
    return (
        f"{shown} is {problem} (mode {mode:04o}); it holds a private key: "
        f"chmod 600 {shlex.quote(shown)}"
    )


def render_config(config: Config) -> str:
    """Canonical wg-quick text: ``parse_config(render_config(c)) == c``."""
    iface = config.interface
    lines = ["[Interface]", f"PrivateKey = {_b64(iface.private_key)}"]
    if iface.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in iface.addresses))
    dns = [str(server) for server in iface.dns_servers] + list(iface.dns_search)
    if dns:
        lines.append("DNS = " + ", ".join(dns))
    if iface.mtu is not None:
        lines.append(f"MTU = {iface.mtu}")
    if iface.listen_port is not None:
        lines.append(f"ListenPort = {iface.listen_port}")
    if iface.fwmark is not None:
        lines.append(f"FwMark = 0x{iface.fwmark:x}")
    if iface.table is not None:
        lines.append(f"Table = {iface.table}")
    for key, hooks in (
        ("PreUp", iface.pre_up),
        ("PostUp", iface.post_up),
        ("PreDown", iface.pre_down),
        ("PostDown", iface.post_down),
    ):
        lines.extend(f"{key} = {hook}" for hook in hooks)
    if iface.save_config:
        lines.append("SaveConfig = true")
    for peer in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {_b64(peer.public_key)}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {_b64(peer.preshared_key)}")
        if peer.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def config_digest(config: Config) -> str:
    """sha256 (hex) of the canonical rendering: the identity of a configuration."""
    return hashlib.sha256(render_config(config).encode("utf-8")).hexdigest()


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")
