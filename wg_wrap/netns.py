"""The network inside the namespace: the only module that imports pyroute2.

It runs in a child made with ``os.fork()``: a forked child is single-threaded,
so it may ``setns`` into the sidecar's user and network namespaces (a
multi-threaded process may not join a user namespace).  There it holds
CAP_NET_ADMIN over that namespace only.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from wg_wrap.config import IPInterface as Address
from wg_wrap.config import IPNetwork as Network
from wg_wrap.errors import SetupError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class NetworkPlan:
    ifname: str
    mtu: int
    addresses: tuple[Address, ...]
    routes: tuple[Network, ...]
    table: int | None  # None: no routes (Table = off)


def plan_routes(allowed: Sequence[Network]) -> tuple[Network, ...]:
    """Routes for the peers' AllowedIPs, deduplicated, in a stable order."""
    seen: list[Network] = []
    for net in allowed:
        if net not in seen:
            seen.append(net)
    return tuple(seen)


def configure(pidfd: int, plan: NetworkPlan, verbose: bool = False) -> None:
    """Apply ``plan`` inside the namespaces of the process behind ``pidfd``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: whatever happens, it ends here, silently
        status = 1
        try:
            os.close(read_end)
            try:
                _join(pidfd)
                _apply(plan, verbose)
                status, message = 0, ""
            except SetupError as e:
                message = e.message
            except BaseException as e:
                message = f"{type(e).__name__}: {e}"
            # The parent may be gone (killed mid-start): nobody to tell then.
            os.write(write_end, json.dumps({"error": message}).encode())
        except BaseException:
            pass
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read()
    _, wait_status = os.waitpid(pid, 0)
    try:
        error = json.loads(report)["error"] if report else "child died"
    except (ValueError, KeyError):
        error = "garbled report from the configuring child"
    if os.waitstatus_to_exitcode(wait_status) != 0 or error:
        from wg_wrap import hints

        message = f"configuring the network inside: {error or 'failed'}"
        raise SetupError(message, hint=hints.hint_for(message))


def _join(pidfd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(pidfd, CLONE_NEWUSER | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise SetupError(f"joining the namespaces: {os.strerror(err)}")


def _trace(verbose: bool, message: str) -> None:
    if verbose:
        os.write(2, f"wg-wrap: [#] {message}\n".encode())


def _sysctl(name: str, value: str, verbose: bool) -> None:
    _trace(verbose, f"sysctl {name}={value}")
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise SetupError(f"setting {name}: {e.strerror}") from e


def _apply(plan: NetworkPlan, verbose: bool) -> None:
    # Nobody but the user's own programs lives in this namespace: let them
    # bind low ports (a DNS or web server inside a tunnel) and use ICMP
    # sockets (ping), which would otherwise need capabilities they lack.
    _sysctl("net.ipv4.ip_unprivileged_port_start", "0", verbose)
    _sysctl("net.ipv4.ping_group_range", f"{os.getgid()} {os.getgid()}", verbose)

    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        (lo,) = ipr.link_lookup(ifname="lo")
        _trace(verbose, "ip link set lo up")
        ipr.link("set", index=lo, state="up")
        found = ipr.link_lookup(ifname=plan.ifname)
        if not found:
            raise SetupError(f"the sidecar's device {plan.ifname} does not exist")
        dev = found[0]
        _trace(verbose, f"ip link set {plan.ifname} mtu {plan.mtu}")
        ipr.link("set", index=dev, mtu=plan.mtu)
        for addr in plan.addresses:
            _trace(verbose, f"ip address add {addr} dev {plan.ifname}")
            # IPv6 without duplicate address detection: nobody else is on
            # this link, and DAD would stall the first connections.
            flags = IFA_F_NODAD if addr.version == 6 else 0
            try:
                ipr.addr(
                    "add", index=dev, address=str(addr.ip), prefixlen=addr.network.prefixlen,
                    flags=flags,
                )
            except NetlinkError as e:
                raise SetupError(f"adding address {addr}: {os.strerror(e.code)}") from e
        _trace(verbose, f"ip link set {plan.ifname} up")
        ipr.link("set", index=dev, state="up")
        if plan.table is None:
            return
        for net in plan.routes:
            _trace(verbose, f"ip route add {net} dev {plan.ifname} table {plan.table}")
            try:
                ipr.route("add", dst=str(net), oif=dev, table=plan.table)
            except NetlinkError as e:
                if e.code != errno.EEXIST:  # already covered by an address's own route
                    raise SetupError(f"adding route {net}: {os.strerror(e.code)}") from e


# ---- reading the namespace, for `wg-wrap check` (wg_wrap/probe.py) ----

ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
               6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}


def inspect(destinations: Sequence[str]) -> dict[str, object]:
    """The current network namespace as a wrapped program sees it: its
    links with their addresses, every route of every table, and the route
    the kernel picks for each of ``destinations`` (None: no route).

    Reading needs no capability: the probe runs as a wrapped program."""
    import socket

    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        addresses: dict[str, list[str]] = {name: [] for name in names.values()}
        for addr in ipr.get_addr():
            name = names.get(addr["index"], "?")
            addresses.setdefault(name, []).append(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}"
            )
        routes = []
        for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            for r in ipr.get_routes(family=family):
                default = "0.0.0.0" if version == 4 else "::"
                oif = r.get_attr("RTA_OIF")
                routes.append({
                    "version": version,
                    "dst": f"{r.get_attr('RTA_DST') or default}/{r['dst_len']}",
                    "type": ROUTE_TYPES.get(r["type"], str(r["type"])),
                    "table": r.get_attr("RTA_TABLE") or r["table"],
                    "dev": names.get(oif) if oif else None,
                })
        lookups: dict[str, str | None] = {}
        for dst in destinations:
            try:
                found = ipr.route("get", dst=dst)
                oif = found[0].get_attr("RTA_OIF") if found else None
                lookups[dst] = names.get(oif) if oif else None
            except NetlinkError:
                lookups[dst] = None  # ENETUNREACH and friends: nowhere
    return {"addresses": addresses, "routes": routes, "lookups": lookups}
