"""Driving wg-wrap-launcher: start the sidecar in new namespaces, join them.

The launcher is the only code that calls unshare/setns (a multi-threaded
process cannot join a user namespace; see DESIGN.md).  This module builds its
command lines, passes it the few fds it must inherit, and waits.
"""

from __future__ import annotations

import os
import select
import time

from wg_wrap import __version__, paths
from wg_wrap.errors import SetupError
from wg_wrap.runtime import Profile, process_start_time

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:  # the join path imports this module: keep it light
    import signal
    import socket
    import subprocess
    from collections.abc import Sequence
else:
    # The C module behind `signal`, without its enum wrappers: same functions
    # and constants (as plain ints), 3 ms less to import on the join path.
    import _signal as signal

READY_TIMEOUT = 10.0


class Sidecar:
    """A running sidecar, held through a pidfd (immune to pid reuse)."""

    def __init__(
        self, pid: int, start_time: int, pidfd: int,
        process: subprocess.Popen[bytes] | None = None,  # set when we are its parent
    ) -> None:
        self.pid = pid
        self.start_time = start_time
        self.pidfd = pidfd
        self.process = process

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def exited(self, timeout: float = 0.0) -> bool:
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if ready and self.process is not None:
            self.process.wait()  # reap: a zombie still shows up in /proc
        return bool(ready)

    def poke(self) -> None:
        """Ask an ephemeral sidecar to check now whether it is still used."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self.exited(grace):
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.exited(grace)


def open_sidecar(pid: int, start_time: int) -> Sidecar | None:
    """A pidfd for a recorded sidecar, or None if that process is gone.

    The start time is checked *after* opening the pidfd: if it still matches,
    the pidfd refers to our sidecar and not to a process that reused its pid.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, PermissionError):
        return None
    sidecar = Sidecar(pid, start_time, pidfd)
    # A zombie (exited, not yet reaped) keeps its pid and start time.
    if process_start_time(pid) != start_time or sidecar.exited():
        sidecar.close()
        return None
    return sidecar


def start_sidecar(
    profile: Profile,
    host_socket: socket.socket,
    mount_ops: Sequence[str],
    *,
    ifname: str,
    mtu: int,
    ephemeral: bool,
    verbose: bool,
) -> Sidecar:
    """Create the namespaces and the sidecar in them; return once it is ready.

    The host socket is handed over and closed here: its O_NONBLOCK flag lives
    on the shared file description, which from now on is the sidecar's.
    """
    import subprocess

    sidecar_argv = [
        paths.sidecar(), "--uapi", profile.uapi_path, "--control", profile.control_path,
        "--ifname", ifname, "--mtu", str(mtu),
    ]
    if ephemeral:
        # It removes the runtime directory itself when it ends, in case every
        # wrapper was killed and nobody else is left to.
        sidecar_argv += ["--hold", profile.hold_path, "--state-dir", profile.dir]
    if verbose:
        sidecar_argv.append("-v")
    argv = [paths.launcher(), "--expect-version", __version__, "create", *mount_ops, "--",
            *sidecar_argv]
    ready_r, ready_w = os.pipe()
    env = dict(os.environ)
    env["WG_WRAP_HOST_SOCKET_FD"] = str(host_socket.fileno())
    env["WG_WRAP_READY_FD"] = str(ready_w)
    log_fd = os.open(profile.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            argv,
            pass_fds=(host_socket.fileno(), ready_w),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=env,
            start_new_session=True,  # no terminal signals: Ctrl-C is for the command
        )
    except OSError as e:
        os.close(ready_r)
        raise SetupError(f"starting {argv[0]}: {e.strerror}") from e
    finally:
        os.close(ready_w)
        os.close(log_fd)
        host_socket.close()
    try:
        _wait_ready(ready_r, process, profile.log_path, verbose)
    finally:
        os.close(ready_r)
    start_time = process_start_time(process.pid)
    if start_time is None:
        raise SetupError(
            "the sidecar exited right after starting", hint=_failure_hint("", verbose)
        )
    return Sidecar(process.pid, start_time, os.pidfd_open(process.pid), process)


def _wait_ready(fd: int, process: subprocess.Popen[bytes], log_path: str, verbose: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            process.kill()
            process.wait()
            _show_log(log_path, verbose)
            raise SetupError(
                f"the sidecar did not become ready within {READY_TIMEOUT:.0f} s",
                hint=_failure_hint("", verbose),
            )
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line = data.decode(errors="replace").strip()
    if line == "READY":
        return
    process.wait()
    _show_log(log_path, verbose)
    reason = line.removeprefix("ERROR ").strip() if line else _last_line(log_path)
    raise SetupError(
        f"starting the sidecar: {reason or 'it exited'}", hint=_failure_hint(reason, verbose)
    )


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _show_log(path: str, verbose: bool) -> None:
    """With -v, the sidecar's log before the failed start is cleaned up."""
    if not verbose:
        return
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return
    for line in text.strip().splitlines()[-20:]:
        os.write(2, f"wg-wrap: [sidecar.log] {line}\n".encode())


def _failure_hint(reason: str, verbose: bool) -> str:
    from wg_wrap import doctor

    specific = doctor.hint_for(reason)
    if specific:
        return specific
    more = "" if verbose else "run with -v to see the sidecar's log; "
    return more + "`wg-wrap doctor` checks what wg-wrap needs from this machine"


def join_argv(sidecar: Sidecar, command: Sequence[str]) -> list[str]:
    return [paths.launcher(), "--expect-version", __version__, "join", "--pidfd",
            str(sidecar.pidfd), "--", *command]


RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
           signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80


def _foreground_on_terminal() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # not a terminal, or not ours
        return False


def run_joined(sidecar: Sidecar, command: Sequence[str], hold_fd: int = -1) -> int:
    """Run command inside the profile; return its exit status (128+N if killed).

    On a terminal where we are the foreground job, the command stays in our
    process group, so it owns the terminal like any foreground program: the
    signals the terminal sends (si_code SI_KERNEL) reach it directly and are
    not relayed, or it would get them twice.  Anywhere else (pipes, systemd,
    ``timeout``) it gets a process group of its own, so a signal sent to our
    whole group reaches it once, through us.  Signals sent to us with
    ``kill`` are relayed either way.

    ``posix_spawn`` rather than ``subprocess``: this is the join path, and
    importing subprocess costs more than spawning.

    The command inherits ``hold_fd`` (the profile's shared hold lock): the
    lock then stays held while any of its descendants keeps the fd, even
    those the sidecar cannot see in /proc (sandboxes that make themselves
    non-dumpable hide their namespace links).
    """
    watched = {*RELAYED, signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        inherited = [fd for fd in (sidecar.pidfd, hold_fd) if fd >= 0]
        for fd in inherited:
            os.set_inheritable(fd, True)
        argv = join_argv(sidecar, command)
        # Python ignores SIGPIPE (and SIGXFSZ); programs expect the default.
        defaults = (signal.SIGPIPE, signal.SIGXFSZ)
        try:
            if _foreground_on_terminal():
                pid = os.posix_spawn(
                    argv[0], argv, os.environ, setsigmask=old_mask, setsigdef=defaults
                )
            else:  # setpgroup=None is only accepted from Python 3.15 on
                pid = os.posix_spawn(
                    argv[0], argv, os.environ, setpgroup=0, setsigmask=old_mask,
                    setsigdef=defaults,
                )
        except OSError as e:
            raise SetupError(f"starting {argv[0]}: {e.strerror}") from e
        finally:
            for fd in inherited:
                os.set_inheritable(fd, False)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            info = signal.sigtimedwait(watched, 1.0)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            if info.si_code != SI_KERNEL:
                try:
                    os.kill(pid, info.si_signo)
                except ProcessLookupError:
                    pass
    finally:
        while signal.sigtimedwait(watched, 0) is not None:
            pass  # already dealt with: don't let them hit us once unblocked
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
