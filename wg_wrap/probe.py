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


def directories(paths: list[str]) -> list[dict[str, Any]]:
    """What each path shows: its identity (device, inode) and its entries."""
    found = []
    for path in paths:
        try:
            st = os.stat(path)
            entries: list[str] | None = sorted(os.listdir(path))
            seen: dict[str, Any] = {"path": path, "dev": st.st_dev, "ino": st.st_ino,
                                    "entries": entries}
        except OSError as e:
            seen = {"path": path, "error": e.strerror or str(e)}
        found.append(seen)
    return found


def connect_each(addresses: list[str]) -> list[dict[str, Any]]:
    """Try to connect to each unix socket address (abstract ones start with
    @): what a program that knows them would get."""
    found = []
    for shown in addresses:
        addr = "\0" + shown[1:] if shown.startswith("@") else shown
        result: dict[str, Any] = {"address": shown, "connected": False}
        for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.settimeout(2)
                try:
                    sock.connect(addr)
                    result["connected"] = True
                except OSError as e:
                    result["error"] = e.strerror or str(e)
        found.append(result)
    return found


def reach_process(pid: int) -> dict[str, Any]:
    """What of process pid (the sidecar, which holds capabilities) a program
    can get at: its descriptors, its root, its environment, a copy of a
    descriptor (pidfd_getfd)."""
    reached: list[str] = []
    refused: dict[str, str] = {}
    try:  # the numbers are listed to the user (the directory is theirs); what they are is not
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError as e:
        fds = []
        refused[f"/proc/{pid}/fd"] = e.strerror or str(e)
    for fd in fds:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            os.close(os.open(path, os.O_PATH | os.O_CLOEXEC))
            reached.append(path)
        except OSError as e:
            refused[path] = e.strerror or str(e)
    for what in ("root", "cwd"):
        try:
            os.listdir(f"/proc/{pid}/{what}")
            reached.append(f"/proc/{pid}/{what}")
        except OSError as e:
            refused[f"/proc/{pid}/{what}"] = e.strerror or str(e)
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            f.read(1)
        reached.append(f"/proc/{pid}/environ")
    except OSError as e:
        refused[f"/proc/{pid}/environ"] = e.strerror or str(e)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        refused["pidfd_open"] = e.strerror or str(e)
    else:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.syscall(438, pidfd, 0, 0)  # pidfd_getfd
            if fd >= 0:
                os.close(fd)
                reached.append("pidfd_getfd")
            else:
                refused["pidfd_getfd"] = os.strerror(ctypes.get_errno())
        finally:
            os.close(pidfd)
    return {"pid": pid, "reached": reached, "refused": refused}


def collect(dns_timeout: float = DNS_TIMEOUT, hidden: list[str] | None = None,
            sockets: list[str] | None = None, sidecar: int = 0) -> dict[str, Any]:
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
        "hidden": directories(hidden or []),
        "sockets": connect_each(sockets or []),
        "sidecar": reach_process(sidecar) if sidecar else None,
    }


def main() -> int:
    """``python -m wg_wrap.probe [--hidden DIR]... [--socket ADDR]... [--sidecar PID]``"""
    import argparse

    parser = argparse.ArgumentParser(prog="wg_wrap.probe")
    parser.add_argument("--hidden", action="append", default=[])
    parser.add_argument("--socket", action="append", default=[])
    parser.add_argument("--sidecar", type=int, default=0)
    args = parser.parse_args()
    json.dump(collect(hidden=args.hidden, sockets=args.socket, sidecar=args.sidecar), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
