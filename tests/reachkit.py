"""Helpers for the tests of published ports, the proxy front and `check`:
wg-wrap as the test user with its own runtime directory, services run
inside a profile, and a small SOCKS5 client (the host side, in Python)."""

from __future__ import annotations

import socket
import struct
from typing import Any

READY_TIMEOUT = 30.0


def published_port(info: dict[str, Any], port: int, proto: str = "tcp", host: str = "") -> int:
    """The host port that status shows for PORT/PROTO inside."""
    for entry in info["published"]:
        address, inside = entry["host"], entry["port"]
        if inside == port and entry["proto"] == proto and (not host or address.startswith(host)):
            return int(address.rsplit(":", 1)[1])
    raise AssertionError(f"{port}/{proto} is not published: {info['published']}")


# A service inside: for each "tcp:ADDR:PORT" it says "from PEER" and echoes
# until the client's end of stream, then half-closes; "http:ADDR:PORT" answers
# GET with "hello from inside, PEER"; "udp:ADDR:PORT" answers each datagram
# with "PEER DATA".
SERVICE = r"""
import socket, sys, threading
def peer(addr):
    return f"{addr[0]}:{addr[1]}"
def tcp(conn, addr):
    with conn:
        conn.sendall(f"from {peer(addr)}\n".encode())
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
def http(conn, addr):
    with conn:
        conn.recv(65536)
        body = f"hello from inside, {peer(addr)}\n".encode()
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
def serve(kind, sock):
    if kind == "udp":
        while True:
            data, addr = sock.recvfrom(65535)
            sock.sendto(f"{peer(addr)} ".encode() + data, addr)
    while True:
        conn, addr = sock.accept()
        handler = tcp if kind == "tcp" else http
        threading.Thread(target=handler, args=(conn, addr), daemon=True).start()
threads = []
for spec in sys.argv[1:]:
    kind, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, int(port)))
    if kind != "udp":
        sock.listen(1024)
    threads.append(threading.Thread(target=serve, args=(kind, sock), daemon=True))
for t in threads:
    t.start()
print("ready", flush=True)
threading.Event().wait()
"""


def connect(host: str, port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# SOCKS5 (RFC 1928, 1929), the client side.

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        data += chunk
    return data


def socks_address(host: str, port: int) -> bytes:
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return b"\x01" + packed + struct.pack("!H", port)
    except OSError:
        pass
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
        return b"\x04" + packed + struct.pack("!H", port)
    except OSError:
        pass
    name = host.encode()
    return b"\x03" + bytes([len(name)]) + name + struct.pack("!H", port)


def read_socks_address(data: bytes) -> tuple[str, int, bytes]:
    """Decode ATYP ADDR PORT at the start of data; returns the rest too."""
    atyp = data[0]
    if atyp == 1:
        host, rest = socket.inet_ntop(socket.AF_INET, data[1:5]), data[5:]
    elif atyp == 4:
        host, rest = socket.inet_ntop(socket.AF_INET6, data[1:17]), data[17:]
    else:
        n = data[1]
        host, rest = data[2 : 2 + n].decode(), data[2 + n :]
    return host, struct.unpack("!H", rest[:2])[0], rest[2:]


def socks_request(
    proxy: tuple[str, int], cmd: int, host: str, port: int,
    auth: tuple[str, str] | None = None,
) -> tuple[socket.socket, str, int]:
    """Negotiate and send one request; returns the socket and BND.ADDR/PORT.
    A refusal raises ConnectionError naming the reply code."""
    sock = socket.create_connection(proxy, timeout=15)
    try:
        sock.sendall(b"\x05\x01" + (b"\x02" if auth else b"\x00"))
        _version, method = _recv_exact(sock, 2)
        if method == 0xFF:
            raise ConnectionError("no acceptable authentication method")
        if auth:
            user, password = (s.encode() for s in auth)
            sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
            if _recv_exact(sock, 2)[1] != 0:
                raise ConnectionError("authentication refused")
        sock.sendall(b"\x05" + bytes([cmd]) + b"\x00" + socks_address(host, port))
        head = _recv_exact(sock, 4)
        if head[1] != 0:
            raise ConnectionError(f"reply {head[1]}")
        atyp = head[3]
        size = {1: 4, 4: 16}.get(atyp)
        if size is None:
            size = _recv_exact(sock, 1)[0] + 1
            rest = bytes([size - 1]) + _recv_exact(sock, size - 1 + 2)
        else:
            rest = _recv_exact(sock, size + 2)
        bound_host, bound_port, _ = read_socks_address(bytes([atyp]) + rest)
        return sock, bound_host, bound_port
    except BaseException:
        sock.close()
        raise
