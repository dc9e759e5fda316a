"""``wg-wrap proxy``: the proxy front of a tunnel with no program inside.

The profile is an ephemeral one, held by this process instead of by a
wrapped program: when it ends (Ctrl-C, SIGTERM, or killed), the sidecar
finds the profile unused and goes, as after the last ``run``.
"""

from __future__ import annotations

import signal
import sys

from wg_wrap import lifetime, session
from wg_wrap.errors import SetupError, UsageError
from wg_wrap.lifetime import leave

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def serve(request: session.Request, wait: bool = True, timeout: float = 15.0) -> int:
    if not request.reach:
        raise UsageError(
            "nothing to serve",
            hint="give --socks [ADDR:]PORT and/or --http-proxy [ADDR:]PORT (or -p)",
        )
    request, cfg = session.load(request)
    attached = session.acquire(request, cfg, "ephemeral")
    if attached.started and wait:
        try:
            session.wait_for_handshake(attached.profile, cfg, timeout, request.verbose)
        except BaseException:
            lifetime.stop_started(attached)
            raise
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        print(
            f"wg-wrap: serving profile {attached.profile.name} until interrupted (Ctrl-C)",
            file=sys.stderr, flush=True,
        )
        while True:
            info = signal.sigtimedwait(STOP_SIGNALS, 1.0)
            if info is not None:
                return 0
            if attached.sidecar.exited():
                raise SetupError(
                    f"the sidecar of profile {attached.profile.name} exited",
                    hint="run with -v to log it verbosely (sidecar.log)",
                )
    finally:
        leave(attached)
        while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
