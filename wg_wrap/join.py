"""Joining a running profile: the fast path of ``exec`` and ``run``.

Keep this module's imports light (no pyroute2, no config parser, no psutil):
``wg-wrap exec NAME -- CMD`` should cost little more than the interpreter's
own start (scripts/bench_join.py measures it).
"""

from __future__ import annotations

import fcntl
import os

from wg_wrap import launch, runtime
from wg_wrap.errors import ProfileError
from wg_wrap.runtime import Profile, State

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from wg_wrap.launch import Sidecar


def trace(verbose: bool, message: str) -> None:
    if verbose:
        os.write(2, f"wg-wrap: [#] {message}\n".encode())


class Attached:
    """A process's claim on a running profile: the sidecar plus our hold.

    The hold is a shared flock on the profile's ``hold`` file: an ephemeral
    sidecar shuts down only when it can take the lock exclusively and no
    process is left in its network namespace.
    """

    def __init__(
        self, profile: Profile, sidecar: Sidecar, hold_fd: int, mode: str, started: bool = False
    ) -> None:
        self.profile = profile
        self.sidecar = sidecar
        self.hold_fd = hold_fd
        self.mode = mode
        self.started = started  # by this process (else joined)

    def release(self) -> None:
        if self.hold_fd >= 0:
            os.close(self.hold_fd)
            self.hold_fd = -1


def take_hold(profile: Profile) -> int:
    fd = os.open(profile.hold_path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def attach_running(profile: Profile, state: State | None = None) -> Attached | None:
    """Join a live profile, or None if its sidecar is gone (or going)."""
    if state is None:
        found = profile.read_join_state()
        if found is None:
            return None
        pid, start, mode = found
    elif not state.ready:
        return None  # a start that never finished is not joined
    else:
        pid, start, mode = state.sidecar_pid, state.sidecar_start, state.mode
    sidecar = launch.open_sidecar(pid, start)
    if sidecar is None:
        return None
    try:
        hold_fd = take_hold(profile)
    except OSError:
        sidecar.close()
        return None
    # An ephemeral sidecar that was shutting down held the lock exclusively
    # until it exited: check it is still there now that we hold it.
    if sidecar.exited():
        os.close(hold_fd)
        sidecar.close()
        return None
    return Attached(profile, sidecar, hold_fd, mode)


# How long a command that started an ephemeral profile for itself (`check -c`,
# `proxy`) waits, when it lets go, for the sidecar to notice (it checks every
# 200 ms) and end.
EPHEMERAL_END_WAIT = 2.0


def leave(attached: Attached) -> None:
    """Let go of a profile this process holds (not by becoming a program in
    it): drop the hold and, when we started it for ourselves, give an
    ephemeral sidecar the time to end, so that nothing is left behind."""
    attached.release()
    try:
        if attached.started and attached.mode == "ephemeral":
            attached.sidecar.exited(EPHEMERAL_END_WAIT)
    finally:
        attached.sidecar.close()


def not_running(name: str) -> ProfileError:
    return ProfileError(
        f"profile {name!r} is not running",
        hint=f"start it with `wg-wrap up -c FILE -n {name}`; `wg-wrap ls` lists profiles",
    )


def exec_in(name: str, command: Sequence[str], verbose: bool = False) -> NoReturn:
    """``wg-wrap exec NAME -- CMD``: become CMD in a running profile."""
    runtime.check_profile_name(name)
    base = runtime.base_dir(create=False)
    if not os.path.exists(base):
        raise not_running(name)
    profile = Profile.at(base, name)
    with runtime.locked(base):
        attached = attach_running(profile)
    if attached is None:
        raise not_running(name)
    trace(verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
    launch.exec_joined(attached.sidecar, command, attached.hold_fd)
