"""Joining a running profile: the fast path of ``exec`` and ``run``.

Keep this module's imports light (no pyroute2, no config parser, no psutil):
``wg-wrap exec NAME -- CMD`` should cost little more than the interpreter's
own start (scripts/bench_join.py measures it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass

from wg_wrap import launch, runtime
from wg_wrap.errors import ProfileError
from wg_wrap.launch import Sidecar
from wg_wrap.runtime import Profile, State

# How long the last wrapper waits for an ephemeral sidecar to notice it is
# alone (it checks every 200 ms) and clean up after itself.
EPHEMERAL_EXIT_WAIT = 1.5


def trace(verbose: bool, message: str) -> None:
    if verbose:
        os.write(2, f"wg-wrap: [#] {message}\n".encode())


@dataclass
class Attached:
    """A process's claim on a running profile: the sidecar plus our hold.

    The hold is a shared flock on the profile's ``hold`` file: an ephemeral
    sidecar shuts down only when it can take the lock exclusively and no
    process is left in its network namespace.
    """

    profile: Profile
    sidecar: Sidecar
    hold_fd: int
    mode: str
    started: bool = False  # by this process (else joined)

    def release(self) -> None:
        if self.hold_fd >= 0:
            os.close(self.hold_fd)
            self.hold_fd = -1


def take_hold(profile: Profile) -> int:
    fd = os.open(profile.hold_path, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def attach_running(profile: Profile, state: State) -> Attached | None:
    """Join a live profile, or None if its sidecar is gone (or going)."""
    sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
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
    return Attached(profile, sidecar, hold_fd, state.mode)


def finish(attached: Attached, verbose: bool) -> None:
    """Let go of a profile; clean up after an ephemeral sidecar that left."""
    attached.release()
    sidecar = attached.sidecar
    try:
        if attached.mode == "ephemeral" and sidecar.exited(EPHEMERAL_EXIT_WAIT):
            base = attached.profile.dir.parent
            with runtime.locked(base):
                state = attached.profile.read_state()
                if state is None or state.sidecar_pid == sidecar.pid:
                    trace(verbose, f"profile {attached.profile.name} ended; removing its state")
                    attached.profile.remove_dir()
    finally:
        sidecar.close()


def not_running(name: str) -> ProfileError:
    return ProfileError(
        f"profile {name!r} is not running",
        hint=f"start it with `wg-wrap up -c FILE -n {name}`; `wg-wrap ls` lists profiles",
    )


def exec_in(name: str, command: Sequence[str], verbose: bool = False) -> int:
    """``wg-wrap exec NAME -- CMD``: run CMD in a running profile."""
    runtime.check_profile_name(name)
    base = runtime.base_dir(create=False)
    if not base.exists():
        raise not_running(name)
    profile = Profile.at(base, name)
    with runtime.locked(base):
        state = profile.read_state()
        attached = attach_running(profile, state) if state is not None else None
    if attached is None:
        raise not_running(name)
    trace(verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
    try:
        return launch.run_joined(attached.sidecar, command)
    finally:
        finish(attached, verbose)
