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
from wg_wrap.errors import ProfileError, SetupError
from wg_wrap.runtime import Profile, forwarded_port, process_start_time, process_stopped

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:  # the join path imports this module: keep it light
    import signal
    import socket
    import subprocess
    from collections.abc import Sequence
    from typing import NoReturn
else:
    # The C module behind `signal`, without its enum wrappers: same functions
    # and constants (as plain ints), 3 ms less to import on the join path.
    import _signal as signal


READY_TIMEOUT = 10.0
PROXY_AUTH_VARIABLE = "WG_WRAP_PROXY_AUTH"
FORWARDED_PORT_VARIABLE = "WG_WRAP_FORWARDED_PORT"
NAMESPACES = ("user", "net", "mnt")
START_DONE = b"k"  # on the start pipe (WG_WRAP_START_FD)


def namespace_links(pid: int) -> tuple[str, str, str] | None:
    """/proc/PID/ns/{user,net,mnt} ("user:[4026531837]", …); None if gone."""
    try:
        user, net, mnt = (os.readlink(f"/proc/{pid}/ns/{kind}") for kind in NAMESPACES)
    except OSError:
        return None
    return user, net, mnt


def namespace_options(namespaces: Sequence[str]) -> list[str]:
    """The launcher's --userns/--netns/--mntns INO for join and enter."""
    argv = []
    for kind, link in zip(NAMESPACES, namespaces, strict=True):
        ino = link.removeprefix(f"{kind}:[").removesuffix("]")
        if not ino.isdigit() or link != f"{kind}:[{ino}]":
            raise SetupError(f"a {kind} namespace recorded as {link!r}: the state is not "
                             "wg-wrap's", hint="`wg-wrap down --force NAME` removes it")
        argv += [f"--{kind}ns", ino]
    return argv


class Sidecar:
    """A running sidecar, held through a pidfd (immune to pid reuse), with
    the namespaces it is in."""

    def __init__(
        self, pid: int, start_time: int, pidfd: int,
        process: subprocess.Popen[bytes] | None = None,  # set when we are its parent
        namespaces: tuple[str, str, str] = ("", "", ""),
    ) -> None:
        self.pid = pid
        self.start_time = start_time
        self.pidfd = pidfd
        self.process = process
        self.namespaces = namespaces
        # The read end of its life pipe, for its aftercare process: set by
        # start_sidecar until start_aftercare hands it over.
        self.life_fd = -1
        # The write end of its start pipe, set by start_sidecar: a sidecar
        # whose start is not done (done()) when it closes ends by itself.
        self.start_fd = -1

    def done(self) -> None:
        """The start is done (recorded, configured, looked after): the
        sidecar no longer depends on this process."""
        if self.start_fd >= 0:
            os.write(self.start_fd, START_DONE)
            os.close(self.start_fd)
            self.start_fd = -1

    def close(self) -> None:
        for fd in (self.pidfd, self.life_fd, self.start_fd):
            if fd >= 0:
                os.close(fd)
        self.pidfd = self.life_fd = self.start_fd = -1

    def exited(self, timeout: float | None = 0.0) -> bool:
        """Whether it has ended, waiting up to timeout seconds (None: until it does)."""
        ready, _, _ = select.select([self.pidfd], [], [], timeout)
        if ready and self.process is not None:
            self.process.wait()  # reap: a zombie still shows up in /proc
        return bool(ready)

    def kill(self) -> None:
        """SIGKILL, and wait for it to end."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.exited(READY_TIMEOUT)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not self.exited(grace):
            self.kill()


def open_sidecar(
    pid: int, start_time: int, namespaces: Sequence[str] | None = None
) -> Sidecar | None:
    """A pidfd for a recorded sidecar, or None if that process is gone.

    The start time is checked *after* opening the pidfd: if it still matches,
    the pidfd refers to our sidecar and not to a process that reused its pid.
    ``namespaces``, when given (the recorded ones), must be the sidecar's.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, PermissionError):
        return None
    sidecar = Sidecar(pid, start_time, pidfd)
    # A zombie (exited, not yet reaped) keeps its pid and start time.
    links = namespace_links(pid)
    if process_start_time(pid) != start_time or sidecar.exited() or links is None:
        sidecar.close()
        return None
    if namespaces is not None and tuple(namespaces) != links:
        sidecar.close()
        raise ProfileError(
            f"the sidecar (pid {pid}) is not in the namespaces its profile's state records: "
            "refusing to use it", hint="`wg-wrap down --force NAME` stops it")
    sidecar.namespaces = links
    return sidecar


def refuse_stopped(name: str, pid: int) -> None:
    """A stopped sidecar answers nothing until continued: rather than wait for
    it to time out, say so at once."""
    if process_stopped(pid):
        raise ProfileError(
            f"the sidecar of profile {name} (pid {pid}) is stopped: it answers nothing",
            hint=f"`kill -CONT {pid}` continues it",
        )


class Entry:
    """A way into the namespaces of a sidecar that died: the pidfd of a
    program left in them, and the namespaces they must be (recorded at the
    start; the launcher checks them after entering)."""

    def __init__(self, pidfd: int, namespaces: Sequence[str]) -> None:
        self.pidfd = pidfd
        self.namespaces = tuple(namespaces)


def start_sidecar(
    profile: Profile,
    host_socket: socket.socket,
    options: Sequence[str],
    *,
    token: str,
    verbose: bool,
    dns_socket: socket.socket | None = None,
    detach: bool = False,
    enter: Entry | None = None,
    outer_hold: int | None = None,
) -> Sidecar:
    """Create the namespaces and the sidecar in them; return once it is ready.

    ``options``: the sidecar's own (device, lifetime, view). The host socket
    is handed over and closed here: its O_NONBLOCK flag lives on the shared
    file description, which from now on is the sidecar's.  So is
    ``dns_socket``, given when the profile's plan for re-resolving endpoint
    names is in its directory.  The UAPI and control sockets are bound here,
    on the host, at the addresses ``token`` names (wg_wrap.sockets), and
    handed over too; so is the profile's directory, the sidecar's working
    directory (the namespace does not show it).  ``detach``: this process is
    about to become the user's program (``run``), so the sidecar must not be
    its child.  ``enter``: the namespaces of programs left by a sidecar that
    died; the new one starts in them (wg-wrap-launcher enter), where the
    view of the host it made is still in place, instead of new ones.
    ``outer_hold``: with --via, the outer profile's hold, locked shared: the
    sidecar keeps it (wg_wrap.hop).
    """
    from wg_wrap import sockets

    sidecar_argv = [*options, *(["-v"] if verbose else [])]
    if enter is not None:
        how = ["enter", "--pidfd", str(enter.pidfd), *namespace_options(enter.namespaces)]
    else:
        how = ["create"]
    argv = [paths.launcher(), "--expect-version", __version__, *how, "--", *sidecar_argv]
    passed = [host_socket, *([dns_socket] if dns_socket is not None else [])]
    try:
        passed += sockets.listen_pair(token)
        state_fd = os.open(profile.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        for sock in passed:
            sock.close()
        raise SetupError(f"the sidecar's sockets: {e.strerror or e}") from e
    ready_r, ready_w = os.pipe()
    life_r, life_w = os.pipe()
    start_r, start_w = os.pipe()
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # systemd's readiness is ours to report, not the sidecar's
    env["WG_WRAP_HOST_SOCKET_FD"] = str(host_socket.fileno())
    env["WG_WRAP_READY_FD"] = str(ready_w)
    env["WG_WRAP_LIFE_FD"] = str(life_w)
    env["WG_WRAP_START_FD"] = str(start_r)
    env["WG_WRAP_UAPI_FD"] = str(passed[-2].fileno())
    env["WG_WRAP_CONTROL_FD"] = str(passed[-1].fileno())
    env["WG_WRAP_STATE_DIR_FD"] = str(state_fd)
    if dns_socket is not None:
        env["WG_WRAP_HOST_DNS_FD"] = str(dns_socket.fileno())
    if outer_hold is not None:
        env["WG_WRAP_OUTER_HOLD_FD"] = str(outer_hold)
    log_fd = os.open(profile.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fds = (*(s.fileno() for s in passed), state_fd, ready_w, life_w, start_r,
               *([enter.pidfd] if enter is not None else []),
               *([outer_hold] if outer_hold is not None else []))
        sidecar = (_detached_sidecar if detach else _spawn_child)(argv, env, fds, log_fd)
    except OSError as e:
        os.close(ready_r)
        os.close(life_r)
        os.close(start_w)
        raise SetupError(f"starting {argv[0]}: {e.strerror or e}") from e
    finally:
        os.close(ready_w)
        os.close(life_w)
        os.close(start_r)
        os.close(log_fd)
        os.close(state_fd)
        for sock in passed:
            sock.close()
    sidecar.life_fd = life_r
    sidecar.start_fd = start_w
    try:
        _wait_ready(ready_r, sidecar, profile.log_path, verbose)
        links = namespace_links(sidecar.pid)
        if links is None:
            raise SetupError("the sidecar ended as it started")
        sidecar.namespaces = links
    except BaseException:
        sidecar.close()
        raise
    finally:
        os.close(ready_r)
    return sidecar


def start_aftercare(profile: Profile, sidecar: Sidecar, config_path: str) -> None:
    """The process that looks after the profile if its sidecar dies
    (``wg-wrap-launcher aftercare``): it tells the programs left inside, on
    their stderr, and removes the profile once they are gone.  Detached, in a
    session of its own, on the host: it pins no namespace and is nobody's
    child.  A failure to start it costs only that care: it is not an error."""
    netns = sidecar.namespaces[1].removeprefix("net:[").removesuffix("]")
    argv = [paths.launcher(), "--expect-version", __version__, "aftercare",
            "--pid", str(sidecar.pid), "--netns", netns, "--profile-dir", profile.dir,
            "--life-fd", str(sidecar.life_fd), "--config", config_path]
    log_fd = os.open(profile.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _spawn_detached(argv, dict(os.environ), (sidecar.life_fd,), log_fd)
    except OSError as e:
        os.write(2, f"wg-wrap: warning: starting the sidecar's aftercare: {e}\n".encode())
    finally:
        os.close(log_fd)
        os.close(sidecar.life_fd)
        sidecar.life_fd = -1


def _spawn_child(argv: list[str], env: dict[str, str], fds: Sequence[int], log_fd: int) -> Sidecar:
    """The sidecar as our child: its exit status is ours to read."""
    import subprocess

    process = subprocess.Popen(
        argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env,
        start_new_session=True,  # no terminal signals: Ctrl-C is for the command
    )
    return Sidecar(process.pid, process_start_time(process.pid) or 0,
                   os.pidfd_open(process.pid), process)


def _spawn_detached(
    argv: list[str], env: dict[str, str], fds: Sequence[int], log_fd: int
) -> tuple[int, int]:
    """Start argv as a grandchild, in a session of its own, and return its pid
    and start time: once this process has become the user's program, what it
    started is not that program's child (a program that reaps every child, or
    counts them, never sees it)."""
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate: spawn, report, vanish
        status = 1
        try:
            for fd in fds:
                os.set_inheritable(fd, True)
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            pid = os.posix_spawn(argv[0], argv, env, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ])
            os.write(report_w, f"{pid} {process_start_time(pid) or 0}".encode())
            status = 0
        except OSError as e:
            os.write(report_w, f"error {e.errno}".encode())
        finally:
            os._exit(status)
    os.close(report_w)
    try:
        report = os.read(report_r, 64).decode().split()
    finally:
        os.close(report_r)
        os.waitpid(child, 0)
    if len(report) != 2 or report[0] == "error":
        code = int(report[1]) if len(report) == 2 and report[1].isdigit() else 0
        raise OSError(code, os.strerror(code) if code else "the spawner failed")
    return int(report[0]), int(report[1])


def _detached_sidecar(
    argv: list[str], env: dict[str, str], fds: Sequence[int], log_fd: int
) -> Sidecar:
    pid, start_time = _spawn_detached(argv, env, fds, log_fd)
    pidfd = os.pidfd_open(pid)
    if process_start_time(pid) != start_time:  # it already ended, and its pid was reused
        os.close(pidfd)
        raise OSError(0, "the sidecar ended at once")
    return Sidecar(pid, start_time, pidfd)


def _wait_ready(fd: int, sidecar: Sidecar, log_path: str, verbose: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            sidecar.kill()
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
        _show_log(log_path, verbose)  # what the sidecar did to start: -v shows it
        return
    sidecar.exited(READY_TIMEOUT)  # it is on its way out
    _show_log(log_path, verbose)
    last = last_log_lines(log_path, 1)
    reason = line.removeprefix("ERROR ").strip() if line else "".join(last)
    raise SetupError(
        f"starting the sidecar: {reason or 'it exited'}", hint=_failure_hint(reason, verbose)
    )


def last_log_lines(path: str, count: int) -> list[str]:
    """The last lines of the sidecar's log (none if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return f.read().strip().splitlines()[-count:]
    except OSError:
        return []


def _show_log(path: str, verbose: bool) -> None:
    """With -v, the sidecar's log of its start (the last 50 lines of it)."""
    if verbose:
        for line in last_log_lines(path, 50):
            os.write(2, f"wg-wrap: [sidecar.log] {line}\n".encode())


def _failure_hint(reason: str, verbose: bool) -> str:
    from wg_wrap import hints

    specific = hints.hint_for(reason)
    if specific:
        return specific
    more = "" if verbose else "run with -v to see the sidecar's log; "
    return more + "`wg-wrap doctor` checks what wg-wrap needs from this machine"


def join_argv(sidecar: Sidecar, command: Sequence[str]) -> list[str]:
    return [paths.launcher(), "--expect-version", __version__, "join", "--pidfd",
            str(sidecar.pidfd), *namespace_options(sidecar.namespaces), "--", *command]


def exec_joined(
    sidecar: Sidecar, command: Sequence[str], hold_fd: int = -1, profile_dir: str = "",
) -> NoReturn:
    """Become ``command`` inside the profile: this process turns into
    wg-wrap-launcher join, which enters the namespaces and turns into the
    command.  Nothing of ours stays beside it, so its exit status, signals,
    the terminal and job control are the kernel's own, as for any program.

    The command inherits ``hold_fd`` (the profile's shared hold lock): an
    ephemeral profile lives while any process inside, or any holder of that
    lock, is left (sandboxes that make themselves non-dumpable hide their
    namespace links from the sidecar's /proc scan, not their locks).  It
    finds the profile's forwarded port, if any, in FORWARDED_PORT_VARIABLE.
    """
    argv = join_argv(sidecar, command)
    # The proxy password is for wg-wrap's proxy front, never for a program.
    os.environ.pop(PROXY_AUTH_VARIABLE, None)
    port = forwarded_port(profile_dir) if profile_dir else None
    if port is not None:
        os.environ[FORWARDED_PORT_VARIABLE] = port
    else:  # not an outer profile's, passed down
        os.environ.pop(FORWARDED_PORT_VARIABLE, None)
    for fd in (sidecar.pidfd, hold_fd):
        if fd >= 0:
            os.set_inheritable(fd, True)
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored
    # across exec: programs expect the default.
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        raise SetupError(f"starting {argv[0]}: {e.strerror}") from e
