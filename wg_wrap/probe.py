"""The probe of ``wg-wrap check``: run inside a profile as a wrapped program.

``python -m wg_wrap.probe`` is started through ``wg-wrap-launcher join``,
exactly as a wrapped program is (same namespaces, same uid, no
capabilities), collects what such a program sees and prints it as one JSON
object.  It judges nothing: ``wg_wrap.check`` compares the report with what
the profile should look like.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import socket
import struct
import sys
import time
from typing import Any

from wg_wrap import dns, netns

# Sockets through which host daemons resolve names on the host's network.
RESOLVER_SOCKETS = (
    "/run/systemd/resolve/io.systemd.Resolve",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
    "/run/avahi-daemon/socket",
    "/var/run/avahi-daemon/socket",
)
# A global IPv6 destination (2000::/3 is all of global unicast): where the
# kernel would send IPv6 to the internet. Only looked up, never sent to.
IPV6_PROBE = "2000::1"
DNS_TIMEOUT = 2.0
CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def dns_query(qid: int) -> bytes:
    """A recursive query for the root's NS records: every resolver answers it."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x00" + struct.pack("!HH", 2, 1)


def ask_nameservers(servers: list[str], timeout: float) -> list[dict[str, Any]]:
    """Send each server one query, in parallel; report who answered, how."""
    results: dict[str, dict[str, Any]] = {s: {"server": s, "answered": False} for s in servers}
    pending: dict[socket.socket, tuple[str, int, float]] = {}
    for server in servers:
        ip = ipaddress.ip_address(server.split("%")[0])
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        qid = secrets.randbelow(1 << 16)
        try:
            sock.sendto(dns_query(qid), (str(ip), 53))
        except OSError as e:
            results[server]["error"] = e.strerror or str(e)
            sock.close()
            continue
        pending[sock] = (server, qid, time.monotonic())
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        for sock in ready:
            server, qid, sent = pending[sock]
            try:
                data = sock.recv(4096)
            except OSError as e:  # e.g. ECONNREFUSED: an ICMP error came back
                results[server]["error"] = e.strerror or str(e)
                del pending[sock]
                sock.close()
                continue
            if len(data) < 12 or struct.unpack("!H", data[:2])[0] != qid:
                continue
            rcode = data[3] & 0x0F
            results[server].update(answered=True, rcode=RCODES.get(rcode, str(rcode)),
                                   ms=round((time.monotonic() - sent) * 1000, 1))
            del pending[sock]
            sock.close()
    for sock in pending:
        sock.close()
    return [results[s] for s in servers]


def identity() -> dict[str, Any]:
    found: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(),
                             "euid": os.geteuid(), "egid": os.getegid()}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in CAPABILITY_SETS:
                found[key] = int(value.strip(), 16)
            elif key == "NoNewPrivs":
                found["no_new_privs"] = value.strip() == "1"
    return found


def collect(dns_timeout: float = DNS_TIMEOUT) -> dict[str, Any]:
    try:
        with open(dns.ETC_RESOLV) as f:
            resolv = f.read()
    except OSError as e:
        resolv = ""
        resolv_error: str | None = f"{dns.ETC_RESOLV}: {e.strerror}"
    else:
        resolv_error = None
    servers = dns.nameservers(resolv)[: dns.MAX_NAMESERVERS]
    net = netns.inspect([s.split("%")[0] for s in servers] + [IPV6_PROBE])
    return {
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        **net,
        "resolv_conf": resolv,
        "resolv_error": resolv_error,
        "nameservers": servers,
        "resolver_sockets": [p for p in RESOLVER_SOCKETS if os.path.exists(p)],
        "dns": ask_nameservers(servers, dns_timeout),
        "ipv6_probe": IPV6_PROBE,
        "identity": identity(),
    }


def main() -> int:
    json.dump(collect(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
