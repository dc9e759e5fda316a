"""End to end: the terminal and signals of `wg-wrap run`.

`exec_joined` (wg_wrap/launch.py) makes the wg-wrap process become the
command (through wg-wrap-launcher join): the command is the very process the
caller started, in its process group, owning the terminal; signals sent to
wg-wrap, to its group or by the terminal reach the command once, from their
sender (nothing relays them); wg-wrap's exit status is the command's (128+N
when it was killed by signal N), as the shell sees it.  Each test runs the
real tool as the unprivileged user, on a real pty where a terminal matters,
and checks that nothing is left running or on disk afterwards.

No peer is needed: the namespace, the sidecar and the join do not depend on
a handshake.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Stage, User, aftercares_of, as_user_argv, sidecars_of, user_env
from peers import Keys, Net, client_config, silent_udp_port

pytestmark = pytest.mark.e2e

_nets = itertools.count(90)
SI_USER = 0  # kill(2)
SI_KERNEL = 0x80  # sent by the kernel: what a terminal's ^C / ^\ produce
CLEANUP_WAIT = 3.0
# Signals a wrapper used to relay: they reach the command itself now.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
           signal.SIGUSR1, signal.SIGUSR2)


def _net() -> Net:
    n = next(_nets)
    return Net(v4=f"10.{n}.0", v6=f"fd00:{n}::")


@pytest.fixture
def conf(test_user: User, user_tmp: Path) -> Path:
    path = user_tmp / "term.conf"
    path.write_text(client_config(Keys(), _net(), silent_udp_port(), dns=False))
    os.chown(path, test_user.uid, test_user.gid)
    path.chmod(0o600)
    return path


# --- processes and cleanup ------------------------------------------------------


def _profiles_in(runtime_dir: Path) -> list[Path]:
    base = runtime_dir / "wg-wrap"
    return list(base.iterdir()) if base.is_dir() else []


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether condition() holds within timeout seconds (looked at every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def assert_nothing_left(user: User, runtime_dir: Path) -> None:
    """No sidecar (or its aftercare) runs for runtime_dir and no profile
    directory remains, within 3 s."""
    wait_until(lambda: not (sidecars_of(user, runtime_dir) or aftercares_of(user, runtime_dir)
                            or _profiles_in(runtime_dir)), CLEANUP_WAIT)
    assert not sidecars_of(user, runtime_dir), "sidecar left running"
    assert not aftercares_of(user, runtime_dir), "aftercare left running"
    assert _profiles_in(runtime_dir) == [], "runtime state left behind"


@pytest.fixture
def leftovers(test_user: User, user_runtime_dir: Path) -> Iterator[Callable[[], None]]:
    """Call the yielded function at the end of a test to prove the cleanup."""
    yield lambda: assert_nothing_left(test_user, user_runtime_dir)


# The caller's signal dispositions and mask pass through exec, and wg-wrap
# rightly keeps them: a test run under `nohup` (SIGHUP ignored) or started
# with `&` by a script (SIGINT and SIGQUIT ignored) would hand them on to the
# command.  Every command these tests start gets what a login shell gives
# it: each signal at its default, none blocked.  It execs: the pid stays.
_DEFAULT_SIGNALS = """\
import os, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, ())
for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
    signal.signal(sig, signal.SIG_DFL)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def with_default_signals(argv: list[str]) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _DEFAULT_SIGNALS, *argv]


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


# --- reading with deadlines -----------------------------------------------------


def read_until(fd: int, needle: bytes | None, timeout: float, sofar: bytes = b"") -> bytes:
    """Read fd until ``needle`` appears (None: until EOF) or the time is up.

    EOF on a pty master is EIO once every slave fd is closed.
    """
    data = sofar
    deadline = time.monotonic() + timeout
    while needle is None or needle not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            chunk = b""
        if not chunk:
            break
        data += chunk
    return data


class OnPty:
    """``wg-wrap run`` as the user, session leader with a pty as its controlling
    terminal and as stdin/stdout/stderr: what an interactive shell gives it."""

    def __init__(self, stage: Stage, user: User, runtime: Path, conf: Path, *command: str,
                 env: dict[str, str] | None = None) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        argv = stage.wg_wrap("run", "-c", str(conf), "--", *command)
        try:
            # setsid(1) without --fork does not fork (Popen's child is no group
            # leader): the pid stays wg-wrap's through setsid, the signal reset,
            # setpriv, python.
            self.proc = subprocess.Popen(
                ["setsid", "--ctty", *with_default_signals(as_user_argv(user, argv))],
                stdin=slave, stdout=slave, stderr=slave,
                env=user_env(runtime, env), cwd="/",
            )
        finally:
            os.close(slave)
        self.output = b""

    def expect(self, needle: bytes, timeout: float = 20) -> None:
        self.output = read_until(self.master, needle, timeout, self.output)
        assert needle in self.output, self.output.decode(errors="replace")

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self, timeout: float = 20) -> int:
        """Read to EOF, return wg-wrap's exit status."""
        self.output = read_until(self.master, None, timeout, self.output)
        return _wait(self.proc, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


@pytest.fixture
def on_pty(stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path
           ) -> Iterator[Callable[..., OnPty]]:
    started: list[OnPty] = []

    def start(*command: str, env: dict[str, str] | None = None) -> OnPty:
        p = OnPty(stage, test_user, user_runtime_dir, conf, *command, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


# The wrapped command: wait (bounded) for one kind of signal, report each
# arrival with its origin (si_code, si_pid), then exit with a chosen status.
# The signal is blocked, so it can never kill the command, and taken by
# polling sigtimedwait without sleeping, to dequeue it at once: a standard
# signal that arrives while the same one is pending is lost, and a duplicate
# should show up as a second line within the second after the first.
# argv: SIGNAME STATUS FIRST_WAIT [leave-group]
SIGNAL_REPORTER = """\
import os, signal, sys, time
sig = signal.Signals[sys.argv[1]]
signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
print("armed", flush=True)
got = []
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    info = signal.sigtimedwait({sig}, 0)
    if info is not None:
        got.append(info)
        deadline = min(deadline, time.monotonic() + 1.0)
for info in got:
    print(f"got {signal.Signals(info.si_signo).name} code={info.si_code} pid={info.si_pid}")
print(f"count={len(got)}", flush=True)
sys.exit(int(sys.argv[2]))
"""


def _reporter(stage: Stage, signame: str, status: int, first_wait: float = 20
              ) -> tuple[str, ...]:
    return (str(stage.python), "-c", SIGNAL_REPORTER, signame, str(status), str(first_wait))


def _report(text: str) -> list[str]:
    # On a pty the echoed "^C" may precede the first line.
    return re.findall(r"got SIG\w+ code=\d+ pid=\d+|count=\d+", text)


# --- on a terminal ----------------------------------------------------------------


def test_interactive_shell_on_a_pty_owns_the_terminal_and_returns_its_status(
    on_pty: Callable[..., OnPty], leftovers: Callable[[], None]
) -> None:
    shell = on_pty("sh")
    shell.expect(b"$ ")  # dash's prompt: it runs interactively on the pty
    shell.write(b"tty; echo inside-$((6*7)); exit 5\n")
    status = shell.finish()
    assert "/dev/pts/" in shell.text, shell.text
    assert "not a tty" not in shell.text
    # dash says "can't access tty; job control turned off" without a controlling terminal.
    assert "job control turned off" not in shell.text, shell.text
    assert "inside-42" in shell.text, shell.text  # the echoed input only has $((6*7))
    assert status == 5, shell.text
    leftovers()


def test_the_command_is_the_wg_wrap_process_in_the_foreground(
    on_pty: Callable[..., OnPty], leftovers: Callable[[], None]
) -> None:
    cat = on_pty("cat", "/proc/self/stat")
    status = cat.finish()
    assert status == 0, cat.text
    wg_wrap_pid = cat.proc.pid  # session and group leader: setsid(1), then exec
    pid = int(cat.text.strip().split(" ", 1)[0])
    fields = cat.text.strip().rsplit(")", 1)[1].split()
    pgrp, session, tty_nr, tpgid = (int(f) for f in fields[2:6])
    assert pid == wg_wrap_pid, "wg-wrap must become the command, nothing staying beside it"
    assert pgrp == wg_wrap_pid, "the command must stay in wg-wrap's process group"
    assert session == wg_wrap_pid
    assert tty_nr != 0, "the command must have the terminal as controlling terminal"
    assert tpgid == wg_wrap_pid, "wg-wrap's group (hence the command) must be the foreground"
    leftovers()


TERMINAL_KEYS = pytest.mark.parametrize(
    ("key", "signame"), [(b"\x03", "SIGINT"), (b"\x1c", "SIGQUIT")],
    ids=["ctrl-c", "ctrl-backslash"],
)


@TERMINAL_KEYS
def test_terminal_signal_reaches_the_command_directly_once(
    on_pty: Callable[..., OnPty], stage: Stage, leftovers: Callable[[], None],
    key: bytes, signame: str,
) -> None:
    command = on_pty(*_reporter(stage, signame, 3))
    command.expect(b"armed")
    command.write(key)
    status = command.finish()
    # Sent by the terminal (SI_KERNEL), nobody relaying a copy (SI_USER).
    expected = [f"got {signame} code={SI_KERNEL} pid=0", "count=1"]
    assert _report(command.text) == expected, command.text
    assert status == 3, command.text
    leftovers()


def test_interactive_top_runs_inside_and_quits(
    on_pty: Callable[..., OnPty], leftovers: Callable[[], None]
) -> None:
    # Interactive top puts the terminal in raw mode (tcsetattr): a command not
    # in the terminal's foreground group would be stopped by SIGTTOU and hang.
    top = on_pty("top", "-d", "0.5", env={"TERM": "xterm"})
    top.expect(b"load average")
    top.expect(b"PID")
    top.write(b"q")
    status = top.finish()
    assert status == 0, top.text
    leftovers()


def test_top_batch_mode_exits_zero(
    stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path,
    leftovers: Callable[[], None],
) -> None:
    result = subprocess.run(
        as_user_argv(test_user, stage.wg_wrap("run", "-c", str(conf), "--", "top", "-bn1")),
        env=user_env(user_runtime_dir), cwd="/", capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "load average" in result.stdout and "PID" in result.stdout
    leftovers()


# --- signals sent to the wg-wrap process --------------------------------------------


def _start_piped(stage: Stage, user: User, runtime: Path, conf: Path, *command: str
                 ) -> subprocess.Popen[bytes]:
    # A session of its own: nothing from pytest's terminal reaches it.
    return subprocess.Popen(
        with_default_signals(
            as_user_argv(user, stage.wg_wrap("run", "-c", str(conf), "--", *command))),
        env=user_env(runtime), cwd="/", stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )


def _expect_armed(proc: subprocess.Popen[bytes]) -> bytes:
    assert proc.stdout is not None
    out = read_until(proc.stdout.fileno(), b"armed", 20)
    if b"armed" not in out:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the command did not start (status {proc.returncode}): {out!r} {err!r}")
    return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def _received_once(
    stage: Stage, user: User, runtime_dir: Path, conf: Path, signame: str,
    send: Callable[[int, signal.Signals], None],
) -> None:
    """Start the reporter behind wg-wrap (off a terminal), signal wg-wrap with
    send(pid, sig), and check the command got it once, from its sender."""
    proc = _start_piped(stage, user, runtime_dir, conf, *_reporter(stage, signame, 0, 5.0))
    try:
        out = _expect_armed(proc)
        # The leftover check after this looks for this sidecar: it must see it now.
        assert sidecars_of(user, runtime_dir), "the sidecar should be running"
        # The signal reset, setpriv and wg-wrap exec: the Popen pid is the command itself.
        send(proc.pid, signal.Signals[signame])
        assert proc.stdout is not None
        out = read_until(proc.stdout.fileno(), None, 20, out)
        status = _wait(proc, 20)
        _, err = proc.communicate(timeout=10)
    finally:
        _stop(proc)
    text = out.decode(errors="replace")
    # kill(2) from this test: SI_USER, with our pid as the sender.
    assert _report(text) == [f"got {signame} code={SI_USER} pid={os.getpid()}", "count=1"], (
        text + err.decode(errors="replace"))
    assert status == 0


@pytest.mark.parametrize("signame", [s.name for s in SIGNALS])
def test_signal_sent_to_wg_wrap_reaches_the_command_once(
    stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path,
    leftovers: Callable[[], None], signame: str,
) -> None:
    _received_once(stage, test_user, user_runtime_dir, conf, signame, os.kill)
    leftovers()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_signal_sent_to_wg_wraps_whole_group_reaches_the_command_once(
    stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path,
    leftovers: Callable[[], None], signame: str,
) -> None:
    """`timeout`, systemd and `kill -TERM -PGID` signal a whole process group:
    the command gets the signal once (a wrapper relaying it would have made
    that twice)."""
    # wg-wrap leads its own session and group here (start_new_session).
    _received_once(stage, test_user, user_runtime_dir, conf, signame, os.killpg)
    leftovers()


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGTERM", "SIGUSR1"])
def test_untrapped_command_killed_by_a_signal_is_what_the_caller_sees(
    stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path,
    leftovers: Callable[[], None], signame: str,
) -> None:
    """The process the caller started is the command: killed by signal N, it
    is reported so to its parent (a shell shows 128+N)."""
    proc = _start_piped(stage, test_user, user_runtime_dir, conf,
                        "sh", "-c", "echo armed; exec sleep 30")
    started = time.monotonic()
    try:
        _expect_armed(proc)
        os.kill(proc.pid, signal.Signals[signame])
        assert _wait(proc, 10) == -signal.Signals[signame]
    finally:
        _stop(proc)
    assert time.monotonic() - started < 20, "the command was not killed: sleep ran out"
    leftovers()


def _state(pid: int) -> str:
    """The state letter of process pid (R, S, T for stopped...); '' once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def test_job_control_from_an_interactive_shell(
    stage: Stage, test_user: User, user_runtime_dir: Path, conf: Path,
    leftovers: Callable[[], None],
) -> None:
    """Ctrl-Z stops the wrapped program (and wg-wrap with it), `fg` resumes
    both, and the program reads the terminal again: job control as usual."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    shell = subprocess.Popen(
        ["setsid", "--ctty", *with_default_signals(as_user_argv(
            test_user, ["bash", "--norc", "--noprofile", "-i"]))],
        stdin=slave, stdout=slave, stderr=slave, cwd="/",
        env=user_env(user_runtime_dir, {"PS1": "prompt$ ", "TERM": "dumb"}),
    )
    os.close(slave)
    output = b""

    def expect(needle: bytes, timeout: float = 20) -> None:
        nonlocal output
        output = read_until(master, needle, timeout, output)
        assert needle in output, output.decode(errors="replace")
        output = output[output.index(needle) + len(needle):]

    try:
        expect(b"prompt$ ")
        command = " ".join(stage.wg_wrap("run", "-c", str(conf), "--", "sh", "-c",
                                         # quoted so the echoed command line
                                         # does not already contain "started"
                                         "'echo st\"\"arted; read line; echo got-$line'"))
        os.write(master, command.encode() + b"\n")
        expect(b"started")
        job = os.tcgetpgrp(master)  # the job's group (its leader is wg-wrap)
        assert job != shell.pid, "the job must be in the foreground"
        os.write(master, b"\x1a")  # Ctrl-Z
        expect(b"Stopped")
        expect(b"prompt$ ")
        assert _state(job) == "T" and os.tcgetpgrp(master) == shell.pid
        os.write(master, b"fg\n")
        # The job has the terminal back once it is the foreground and runs.
        assert wait_until(lambda: os.tcgetpgrp(master) == job and _state(job) != "T", 20), (
            f"after fg: foreground {os.tcgetpgrp(master)}, job {job} in state {_state(job)}")
        os.write(master, b"hello\n")
        expect(b"got-hello")
        expect(b"prompt$ ")
        os.write(master, b"echo status=$?\n")
        expect(b"status=0")
        os.write(master, b"exit\n")
        assert _wait(shell, 20) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        os.close(master)
    leftovers()
