"""The sidecar's UAPI and control sockets: bound on the host, handed over.

They live in the host's network namespace at an abstract address (no file
anywhere: ``@wg-wrap/UID/TOKEN/uapi``), so a program inside a profile, in a
network namespace of its own, can never connect to them, whatever it sees of
the filesystem.  An abstract address is open to every local user: the
sidecar serves only connections whose peer (SO_PEERCRED, the kernel's word)
is the user, and a client talks only to a socket the user bound.  TOKEN is
random per start, recorded in ``state.toml``: nobody can take the address
first.
"""

from __future__ import annotations

import os
import socket
import struct

UAPI = "uapi"
CONTROL = "control"
_UCRED = struct.Struct("3i")  # pid, uid, gid


def new_token() -> str:
    return os.urandom(8).hex()


def address(token: str, kind: str) -> str:
    """The abstract address (a leading NUL) of a profile's socket."""
    return f"\0wg-wrap/{os.geteuid()}/{token}/{kind}"


def shown(addr: str) -> str:
    """An address as ``ss``, ``wg-wrap status`` and messages show it."""
    return "@" + addr[1:] if addr.startswith("\0") else addr


def _listen(addr: str, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        sock.bind(addr)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_pair(token: str) -> list[socket.socket]:
    """The listening UAPI (stream) and control (seqpacket) sockets for the
    sidecar, in that order."""
    uapi = _listen(address(token, UAPI), socket.SOCK_STREAM)
    try:
        return [uapi, _listen(address(token, CONTROL), socket.SOCK_SEQPACKET)]
    except BaseException:
        uapi.close()
        raise


def peer_uid(sock: socket.socket) -> int:
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return int(uid)


def connect_own(sock: socket.socket, addr: str) -> None:
    """Connect, and make sure the user's own process made what answers."""
    sock.connect(addr)
    uid = peer_uid(sock)
    if uid != os.geteuid():
        raise PermissionError(0, f"{shown(addr)} belongs to uid {uid}, not to you")
