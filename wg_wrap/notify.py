"""sd_notify(3) for ``up --foreground`` under systemd (``Type=notify``).

The protocol is one datagram of ``KEY=value`` lines to the unix socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); a few
lines of our own instead of a dependency on libsystemd.  Outside systemd there
is no socket and every call does nothing.
"""

from __future__ import annotations

import os
import socket

ENV = "NOTIFY_SOCKET"


def _address() -> str | None:
    value = os.environ.get(ENV, "")
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # unset, or a kind we don't speak (vsock:…)


def send(**fields: str) -> bool:
    """Send ``READY="1"``, ``STATUS="…"``…; True if a socket took it."""
    address = _address()
    if address is None:
        return False
    message = "".join(f"{key}={value}\n" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), address)
    except OSError:
        return False  # the manager went away: not a reason to fail the tunnel
    return True


def status(text: str) -> bool:
    return send(STATUS=text)
