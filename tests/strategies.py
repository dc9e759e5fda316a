"""Hypothesis strategies for configs, shared by the parser and UAPI tests."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from wg_wrap.config import Config, Endpoint, Interface, Peer

keys = st.binary(min_size=32, max_size=32)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@st.composite
def interfaces_addresses(
    draw: st.DrawFn, version: int
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    address = draw(ipv4 if version == 4 else ipv6)
    prefix = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_interface(f"{address}/{prefix}")


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    address = draw(ipv4 | ipv6)
    prefix = draw(st.integers(0, address.max_prefixlen))
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
hooks = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Cf"), blacklist_characters="#"), max_size=30
).filter(lambda s: s == s.strip(" \t"))
tables = (
    st.sampled_from(["off", "auto", "main"])
    | st.integers(1, 2**32 - 1).map(str)
)
ip_endpoints = st.builds(Endpoint, (ipv4 | ipv6).map(str), st.integers(1, 65535))
endpoints = ip_endpoints | st.builds(Endpoint, hostnames, st.integers(1, 65535))


@st.composite
def configs(
    draw: st.DrawFn, endpoint_strategy: st.SearchStrategy[Endpoint] | None = None
) -> Config:
    """Valid configs; ``endpoint_strategy=ip_endpoints`` for configs whose
    endpoints need no resolution."""
    chosen_endpoints = endpoints if endpoint_strategy is None else endpoint_strategy
    addresses = draw(
        st.lists(interfaces_addresses(4) | interfaces_addresses(6), max_size=4, unique=True)
    )
    has_v6 = any(a.version == 6 for a in addresses)
    interface = Interface(
        private_key=draw(keys),
        addresses=tuple(addresses),
        dns_servers=tuple(draw(st.lists(ipv4 | ipv6, max_size=3))),
        dns_search=tuple(draw(st.lists(hostnames, max_size=3))),
        mtu=draw(st.none() | st.integers(1280 if has_v6 else 576, 65535)),
        listen_port=draw(st.none() | st.integers(0, 65535)),
        fwmark=draw(st.none() | st.integers(1, 2**32 - 1)),
        table=draw(st.none() | tables),
        pre_up=tuple(draw(st.lists(hooks, max_size=2))),
        post_up=tuple(draw(st.lists(hooks, max_size=2))),
        pre_down=tuple(draw(st.lists(hooks, max_size=2))),
        post_down=tuple(draw(st.lists(hooks, max_size=2))),
        save_config=draw(st.booleans()),
    )
    public_keys = draw(st.lists(keys, min_size=1, max_size=4, unique=True))
    peers = tuple(
        Peer(
            public_key=public_key,
            preshared_key=draw(st.none() | keys),
            allowed_ips=tuple(draw(st.lists(networks(), max_size=4))),
            endpoint=draw(st.none() | chosen_endpoints),
            persistent_keepalive=draw(st.none() | st.integers(1, 65535)),
        )
        for public_key in public_keys
    )
    return Config(interface, peers)
