"""The lifetime of profiles, in one place: who holds a profile, who is inside
it, and what is left of one whose sidecar is gone.

- A program joined to a profile inherits a shared ``flock`` on its ``hold``
  file (take_hold); an ephemeral sidecar ends once it can take that lock
  exclusively and no process is left in its network namespace (the sidecar's
  side is go-sidecar/hold).
- A process that holds a profile without becoming a program in it (``up``,
  ``check``, ``proxy``) attaches (attach_running) and leaves (leave).
- The kernel is the record of who is inside: one /proc scan by network
  namespace (processes_by_netns), whatever the programs did since they joined.
- A start that failed is undone (stop_started); what a crashed start left is
  removed (reap_stale); a dead sidecar's programs are found (stranded) so that
  a new sidecar can be started among them (wg_wrap.session.heal).

This module is on the join path (``wg-wrap exec``): standard library only.
"""

from __future__ import annotations

import fcntl
import os
import sys

from wg_wrap import launch, runtime
from wg_wrap.runtime import Profile, State

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:
    from wg_wrap.launch import Sidecar

# How long a command that started an ephemeral profile for itself (`check -c`,
# `proxy`) waits, when it lets go, for the sidecar to notice (it checks every
# 200 ms) and end.
EPHEMERAL_END_WAIT = 2.0


def trace(verbose: bool, message: str) -> None:
    if verbose:
        os.write(2, f"wg-wrap: [#] {message}\n".encode())


def warn(message: str) -> None:
    print(f"wg-wrap: warning: {message}", file=sys.stderr, flush=True)


class Attached:
    """A process's claim on a running profile: the sidecar plus our hold."""

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
        pid, start, mode, namespaces = found
    elif not state.ready:
        return None  # a start that never finished is not joined
    else:
        pid, start, mode = state.sidecar_pid, state.sidecar_start, state.mode
        namespaces = (state.userns, state.netns, state.mntns)
    sidecar = launch.open_sidecar(pid, start, namespaces)
    if sidecar is None:
        return None
    try:
        hold_fd = os.open(profile.hold_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        sidecar.close()
        return None
    try:
        fcntl.flock(hold_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        # An ephemeral sidecar holds the lock exclusively from the moment it
        # finds itself unused until it is gone: it is ending. Waiting for
        # that here would hold the runtime lock all profiles need: the
        # caller waits, without it (wait_until_ended), then starts afresh.
        os.close(hold_fd)
        sidecar.close()
        raise Ending(profile.name, pid) from None
    # Held: from now on the sidecar cannot find itself unused.
    return Attached(profile, sidecar, hold_fd, mode)


class Ending(Exception):
    """The profile's ephemeral sidecar is ending (it holds ``hold``
    exclusively until it is gone): wait for it (wait_until_ended) without
    the runtime lock, then look again."""

    def __init__(self, name: str, pid: int) -> None:
        super().__init__(name)
        self.name = name
        self.pid = pid


def wait_until_ended(ending: Ending) -> None:
    """Wait (bounded) for an ending sidecar to be gone; a ProfileError when
    it does not end (stopped, say)."""
    from wg_wrap.errors import ProfileError

    try:
        pidfd = os.pidfd_open(ending.pid)
    except OSError:
        return  # gone already
    try:
        import select

        if not select.select([pidfd], [], [], EPHEMERAL_END_WAIT)[0]:
            raise ProfileError(
                f"profile {ending.name!r} is ending, but its sidecar (pid {ending.pid}) has "
                f"not finished within {EPHEMERAL_END_WAIT:g} s",
                hint=f"is it stopped (`kill -CONT {ending.pid}`)? `wg-wrap ls` shows it",
            )
    finally:
        os.close(pidfd)


def join_running(base: str, profile: Profile) -> Attached | None:
    """Attach to a running profile under the runtime lock; one whose
    ephemeral sidecar is ending is waited for (bounded, without the lock):
    then it is gone (None)."""
    try:
        with runtime.locked(base):
            return attach_running(profile)
    except Ending as ending:
        wait_until_ended(ending)
        return None


def live_states(base: str, but: str = "") -> list[tuple[Profile, State]]:
    """The profiles (but ``but``) whose recorded sidecar is alive, with
    their state."""
    found = []
    for profile in runtime.list_profiles(base):
        state = profile.read_state() if profile.name != but else None
        if state is None:
            continue
        sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
        if sidecar is not None:
            sidecar.close()
            found.append((profile, state))
    return found


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


def stop_started(attached: Attached) -> None:
    """Undo a start whose later step (the handshake) failed."""
    attached.release()
    attached.profile.mark_stopping()
    attached.sidecar.stop()
    with runtime.locked(os.path.dirname(attached.profile.dir)):
        attached.profile.remove_dir()
    attached.sidecar.close()


def reap_stale(profile: Profile, state: State | None, verbose: bool) -> None:
    """Remove what a crashed sidecar or an interrupted start left behind; the
    caller holds the runtime lock, so no start is under way."""
    if state is not None and not state.ready:
        # A start killed half-way: its sidecar may still run, unconfigured.
        sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
        if sidecar is not None:
            trace(verbose, f"stopping the sidecar of an unfinished start ({sidecar.pid})")
            sidecar.stop()
            sidecar.close()
    if os.path.exists(profile.dir):
        trace(verbose, f"removing stale state {profile.dir}")
        profile.remove_dir()


# ---- who is inside: the kernel's record ---------------------------------------


def namespace_link(pid: int | str, kind: str = "net") -> str | None:
    """/proc/PID/ns/KIND's identity, e.g. "net:[4026532291]"; None if gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def processes_by_netns() -> dict[str, list[int]]:
    """Every process we may inspect, by network namespace: the one /proc scan
    (go-sidecar/hold has the sidecar's own). A process is attached to a
    profile exactly as long as it lives in the namespace, however it got
    there (a wrapped program's children, a daemon that double-forked)."""
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            link = namespace_link(entry)
            if link is not None:
                found.setdefault(link, []).append(int(entry))
    return found


def processes_in(
    netns: str, exclude: int = 0, userns: str = "",
    scan: dict[str, list[int]] | None = None,
) -> list[int]:
    """Our processes in network namespace ``netns`` (and user namespace
    ``userns``, when given), sorted; ``scan``: a processes_by_netns() already
    made."""
    found = (scan if scan is not None else processes_by_netns()).get(netns, [])
    return sorted(pid for pid in found if pid != exclude and (
        not userns or namespace_link(pid, "user") == userns))


def namespace_members(sidecar_pid: int, scan: dict[str, list[int]] | None = None) -> list[int]:
    """The programs attached to a running profile: those in its sidecar's
    network namespace."""
    own = namespace_link(sidecar_pid)
    return [] if own is None else processes_in(own, exclude=sidecar_pid, scan=scan)


def stranded(state: State) -> list[int]:
    """The programs left in the namespaces of a profile whose sidecar is gone."""
    if not state.netns:
        return []
    return processes_in(state.netns, userns=state.userns)


def left_inside(state: State) -> list[int]:
    """Every process left in the network namespace of a profile whose sidecar
    is gone, also those a program moved into a user namespace of its own
    (a heal looks at each, and enters through none of those)."""
    return processes_in(state.netns) if state.netns else []
