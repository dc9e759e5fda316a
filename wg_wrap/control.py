"""The sidecar's control socket: wg-wrap's own verbs, apart from UAPI.

A SOCK_SEQPACKET unix socket, bound on the host and handed to the sidecar
(wg_wrap.sockets: an abstract address only the user's processes are served
on).  One message per request: a JSON object, with the host
sockets it hands over attached as SCM_RIGHTS; one JSON object back,
``{"error": "..."}`` on failure.  The protocol is described in
``go-sidecar/control``.
"""

from __future__ import annotations

import array
import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from wg_wrap import sockets
from wg_wrap.errors import SetupError

MAX_REPLY = 64 << 10
MAX_FDS = 4  # descriptors an answer may carry
# How long before giving up the client still lets the sidecar start a
# request: a request that arrives later is refused, and one whose answer
# the client does not take is undone (go-sidecar/control): what the user was
# told failed never takes effect later.
DEADLINE_MARGIN = 0.5


class ControlClient:
    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout

    def request(self, message: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        """Send one request (with ``fds`` attached) and return the answer;
        a refusal raises SetupError with the sidecar's reason."""
        reply, received = self.request_fds(message, fds)
        for fd in received:
            os.close(fd)
        return reply

    def request_fds(
        self, message: dict[str, Any], fds: Sequence[int] = ()
    ) -> tuple[dict[str, Any], list[int]]:
        """request(), with the descriptors the answer carried (the caller's
        to close)."""
        op = message.get("op", "?")
        deadline = time.monotonic_ns() + int((self.timeout - DEADLINE_MARGIN) * 1e9)
        message = {**message, "deadline_ns": deadline}
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(self.timeout)
            try:
                sockets.connect_own(sock, self.address)
                ancillary = (
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                    if fds else []
                )
                sock.sendmsg([json.dumps(message).encode()], ancillary)
                data, cmsgs, _, _ = sock.recvmsg(MAX_REPLY, socket.CMSG_SPACE(MAX_FDS * 4),
                                                 socket.MSG_CMSG_CLOEXEC)
            except TimeoutError as e:
                raise SetupError(
                    f"the sidecar did not answer {op} within {self.timeout:g} s: not done",
                    hint="is it stopped? `wg-wrap ls` shows it (a request it gets too late "
                    "is refused, and one whose answer nobody takes is undone)",
                ) from e
            except OSError as e:
                raise SetupError(
                    f"talking to the sidecar's control socket ({op}): "
                    f"{e.strerror or type(e).__name__}",
                    hint="is the profile running? `wg-wrap ls` lists profiles",
                ) from e
        received = _rights(cmsgs)
        try:
            reply = json.loads(data)
            if not isinstance(reply, dict):
                raise ValueError(reply)
        except ValueError as e:
            _close(received)
            raise SetupError(f"the sidecar answered {op} with garbage") from e
        if reply.get("error"):
            _close(received)
            raise SetupError(f"the sidecar refused {op}: {reply['error']}")
        return reply, received


def _rights(cmsgs: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in cmsgs:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
