"""Services for a demo or test WireGuard peer: HTTP, UDP echo and DNS.

Run inside a wg-wrap server profile (``python -m wg_wrap.demo_peer``) they
listen on every address of the namespace, so they are reachable only through
the tunnel.  Each answer names the address the request came from: when it is
the client's tunnel address, the request provably travelled through the
tunnel.  Queries are logged on stdout, one line each, for tests to read.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def log(line: str) -> None:
    print(line, flush=True)


class _Handler(BaseHTTPRequestHandler):
    server_version = "wg-wrap-demo-peer"

    def do_GET(self) -> None:
        client = _plain(self.client_address[0])
        body = f"hello through the tunnel: the peer sees you as {client}\n".encode()
        log(f"http {client} {self.path}")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _DualStackHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _plain(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def _udp_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def serve_udp_echo(sock: socket.socket) -> None:
    while True:
        data, addr = sock.recvfrom(65535)
        log(f"udp {_plain(addr[0])} {len(data)}")
        sock.sendto(data, addr)


def dns_answer(query: bytes, records: dict[str, list[str]]) -> bytes | None:
    """A minimal authoritative answer for A/AAAA questions (RFC 1035)."""
    if len(query) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, pos = [], 12
    while pos < len(query) and query[pos] != 0:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace").lower())
        pos += 1 + n
    pos += 1
    if pos + 4 > len(query):
        return None
    qtype, _qclass = struct.unpack("!HH", query[pos : pos + 4])
    question = query[12 : pos + 4]
    name = ".".join(labels)
    want = 4 if qtype == 1 else 6 if qtype == 28 else 0
    answers = [
        ipaddress.ip_address(a) for a in records.get(name, [])
        if ipaddress.ip_address(a).version == want
    ]
    rcode = 0 if name in records else 3  # NXDOMAIN
    header = struct.pack("!HHHHHH", qid, 0x8400 | rcode | (flags & 0x0100), 1, len(answers), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(a.packed)) + a.packed for a in answers
    )
    return header + question + body


def serve_dns(sock: socket.socket, records: dict[str, list[str]]) -> None:
    while True:
        data, addr = sock.recvfrom(4096)
        reply = dns_answer(data, records)
        log(f"dns {_plain(addr[0])}")
        if reply:
            sock.sendto(reply, addr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wg_wrap.demo_peer")
    parser.add_argument("--http", type=int, default=8080, metavar="PORT")
    parser.add_argument("--udp", type=int, default=0, metavar="PORT", help="UDP echo port")
    parser.add_argument(
        "--dns", action="append", default=[], metavar="NAME=IP",
        help="answer DNS queries on port 53 for NAME with IP (repeatable)",
    )
    args = parser.parse_args(argv)
    records: dict[str, list[str]] = {}
    for item in args.dns:
        name, _, ip = item.partition("=")
        records.setdefault(name.lower().rstrip("."), []).append(str(ipaddress.ip_address(ip)))
    threads = []
    if records:
        dns_sock = _udp_socket(53)
        threads.append(threading.Thread(target=serve_dns, args=(dns_sock, records), daemon=True))
    if args.udp:
        udp_sock = _udp_socket(args.udp)
        threads.append(threading.Thread(target=serve_udp_echo, args=(udp_sock,), daemon=True))
    httpd = _DualStackHTTPServer(("::", args.http), _Handler)
    for t in threads:
        t.start()
    log("ready")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
