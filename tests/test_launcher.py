"""wg-wrap-launcher, run as the unprivileged test user against real namespaces.

The launcher under test is the installed one: the staged install that
``make stage`` (and so ``make test``) makes with ``make install``, built with
the Makefile's flags (which live only there) and readable by the test user.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import Stage, User, as_user_argv, run_as_user, user_env

import wg_wrap

CAP_NET_ADMIN = 1 << 12
# The system interpreter: the test user cannot reach one under /root.
PYTHON = "/usr/bin/python3"
TIMEOUT = 20


@pytest.fixture(scope="session")
def launcher(stage: Stage) -> Path:
    """The staged, installed launcher (see conftest.stage)."""
    return stage.launcher


def readable_by_all(path: Path, content: str) -> Path:
    path.write_text(content)
    path.chmod(0o644)
    return path


def create(launcher: Path, *ops: str, program: Sequence[str]) -> list[str]:
    return [str(launcher), "create", *ops, "--", *program]


def status_caps(status: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb from /proc/PID/status text."""
    return {m[1]: int(m[2], 16) for m in re.finditer(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}


def sh_as_user(
    user: User, launcher: Path, *ops: str, script: str, cwd: str | Path = "/"
) -> subprocess.CompletedProcess[str]:
    return run_as_user(
        user, create(launcher, *ops, program=["sh", "-c", script]), cwd=cwd, timeout=TIMEOUT
    )


def user_processes_with(token: str) -> list[int]:
    """Pids whose command line contains token."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if token.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


@contextlib.contextmanager
def namespace_holder(user: User, launcher: Path, *ops: str) -> Iterator[int]:
    """`create OPS -- sh` as the user; yields its pid once the program runs."""
    proc = subprocess.Popen(
        as_user_argv(
            user, create(launcher, *ops, program=["sh", "-c", "echo ready; exec sleep 30"])
        ),
        env=user_env(),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if line != "ready\n":
            proc.kill()
            _, err = proc.communicate(timeout=TIMEOUT)
            pytest.fail(f"launcher create did not start: {err!r}")
        # setpriv and the launcher exec in place: this pid is the program's.
        yield proc.pid
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


def join_pidfd(
    user: User | None, launcher: Path, pidfd: int, program: Sequence[str], *options: str,
    cwd: str | Path = "/",
) -> subprocess.CompletedProcess[str]:
    """`join --pidfd N OPTIONS -- PROGRAM`, the pidfd inherited (as wg-wrap
    passes it), run as user (None: as root)."""
    argv = [str(launcher), "join", "--pidfd", str(pidfd), *options, "--", *program]
    return subprocess.run(
        as_user_argv(user, argv) if user else argv, env=user_env(), cwd=cwd,
        pass_fds=[pidfd], capture_output=True, text=True, timeout=TIMEOUT,
    )


def join_program(
    user: User | None, launcher: Path, pid: int, program: Sequence[str], *options: str,
    cwd: str | Path = "/",
) -> subprocess.CompletedProcess[str]:
    """Join the namespaces of the (live) process pid through a pidfd."""
    pidfd = os.pidfd_open(pid)
    try:
        return join_pidfd(user, launcher, pidfd, program, *options, cwd=cwd)
    finally:
        os.close(pidfd)


def join_as_user(
    user: User, launcher: Path, pid: int, script: str, *options: str, cwd: str | Path = "/"
) -> subprocess.CompletedProcess[str]:
    return join_program(user, launcher, pid, ["sh", "-c", script], *options, cwd=cwd)


# ---- create ---------------------------------------------------------------


def test_create_program_runs_in_a_new_net_namespace_with_only_lo(
    test_user: User, launcher: Path
) -> None:
    result = sh_as_user(
        test_user, launcher, script="readlink /proc/self/ns/net; tail -n +3 /proc/net/dev"
    )
    assert result.returncode == 0, result.stderr
    netns, *devices = result.stdout.splitlines()
    assert netns != os.readlink("/proc/self/ns/net")
    assert [d.split(":")[0].strip() for d in devices] == ["lo"]


def test_create_keeps_the_callers_uid_and_gid(test_user: User, launcher: Path) -> None:
    result = sh_as_user(
        test_user,
        launcher,
        script="id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups",
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    u, g = str(test_user.uid), str(test_user.gid)
    assert lines == [[u], [g], [u, u, "1"], [g, g, "1"], ["deny"]]


def test_create_program_has_exactly_cap_net_admin(test_user: User, launcher: Path) -> None:
    result = sh_as_user(test_user, launcher, script="cat /proc/self/status")
    assert result.returncode == 0, result.stderr
    caps = status_caps(result.stdout)
    for name in ("CapPrm", "CapEff", "CapAmb", "CapInh", "CapBnd"):
        assert caps[name] == CAP_NET_ADMIN, (name, hex(caps[name]))
    # no_new_privs keeps the ambient capability: it was permitted before execve.
    assert re.search(r"^NoNewPrivs:\s+1$", result.stdout, re.M)


def test_create_as_root_still_gives_only_cap_net_admin(launcher: Path, test_user: User) -> None:
    """uid 0 would get every capability from execve; the bounding set prevents it."""
    result = subprocess.run(
        create(launcher, program=["cat", "/proc/self/status"]),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    caps = status_caps(result.stdout)
    assert {caps[n] for n in ("CapPrm", "CapEff", "CapAmb", "CapBnd")} == {CAP_NET_ADMIN}


TUN_SCRIPT = r"""
import fcntl, socket, struct
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454ca, 0x0001, 0x1000
SIOCGIFMTU, SIOCSIFMTU = 0x8921, 0x8922
tun = open("/dev/net/tun", "r+b", buffering=0)
fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"tun0", IFF_TUN | IFF_NO_PI))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si", b"tun0", 1280))
print(struct.unpack("16si", fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16si", b"tun0", 0)))[1])
"""


def test_create_program_can_create_a_tun_device_and_set_its_mtu(
    test_user: User, launcher: Path
) -> None:
    result = run_as_user(
        test_user, create(launcher, program=[PYTHON, "-c", TUN_SCRIPT]), timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1280\n"
    assert not Path("/sys/devices/virtual/net/tun0").exists()  # not on the host


def test_bind_over_resolv_conf_is_seen_inside_only(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    host_before = Path("/etc/resolv.conf").read_bytes()
    generated = readable_by_all(user_tmp / "resolv.conf", "nameserver 10.64.0.1\n")
    result = sh_as_user(
        test_user,
        launcher,
        "--bind",
        str(generated),
        "/etc/resolv.conf",
        script="cat /etc/resolv.conf",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nameserver 10.64.0.1\n"
    assert Path("/etc/resolv.conf").read_bytes() == host_before


def test_bind_over_a_symlink_mounts_over_its_target(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    target = readable_by_all(user_tmp / "target", "host\n")
    (user_tmp / "link").symlink_to("target")
    generated = readable_by_all(user_tmp / "generated", "inside\n")
    result = sh_as_user(
        test_user,
        launcher,
        "--bind",
        str(generated),
        f"{user_tmp}/link",
        script=f"cat {target}; readlink {user_tmp}/link",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "inside\ntarget\n"
    assert target.read_text() == "host\n"


def test_mount_paths_may_contain_colons(test_user: User, launcher: Path, user_tmp: Path) -> None:
    """SRC and DST are separate arguments: a ':' is part of a path."""
    where = user_tmp / "a:b"
    where.mkdir()
    hidden = user_tmp / "c:d"
    hidden.mkdir()
    for path in (where, hidden):
        path.chmod(0o755)
    generated = readable_by_all(where / "resolv:conf", "nameserver 10.64.0.1\n")
    result = sh_as_user(
        test_user, launcher,
        "--bind", str(generated), "/etc/resolv.conf",
        "--tmpfs", str(hidden),
        "--file", str(generated), f"{hidden}/x:y",
        script=f"cat /etc/resolv.conf '{hidden}/x:y'",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "nameserver 10.64.0.1\n" * 2


@pytest.fixture
def resolved_layout() -> Iterator[Path]:
    """A root-owned systemd-resolved-like layout: resolve/ holds the stub file
    and a private file, resolv.conf is a symlink into it."""
    root = Path(tempfile.mkdtemp(prefix="wg-wrap-resolved-"))
    try:
        root.chmod(0o755)
        (root / "resolve").mkdir(mode=0o755)
        readable_by_all(root / "resolve" / "stub-resolv.conf", "nameserver 127.0.0.53\n")
        readable_by_all(root / "resolve" / "io.systemd.Resolve", "host socket stand-in\n")
        (root / "resolv.conf").symlink_to("resolve/stub-resolv.conf")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_tmpfs_hides_a_directory_and_file_puts_a_file_in_it(
    test_user: User, launcher: Path, user_tmp: Path, resolved_layout: Path
) -> None:
    resolve = resolved_layout / "resolve"
    generated = readable_by_all(user_tmp / "resolv.conf", "nameserver 10.64.0.1\n")
    result = sh_as_user(
        test_user,
        launcher,
        "--tmpfs",
        str(resolve),
        "--file",
        str(generated),
        f"{resolve}/stub-resolv.conf",
        script=f"ls -A {resolve}; cat {resolved_layout}/resolv.conf; stat -c '%a %u' {resolve}",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stub-resolv.conf",
        "nameserver 10.64.0.1",
        f"755 {test_user.uid}",
    ]
    assert sorted(p.name for p in resolve.iterdir()) == ["io.systemd.Resolve", "stub-resolv.conf"]
    assert (resolved_layout / "resolv.conf").read_text() == "nameserver 127.0.0.53\n"


def test_tmpfs_is_nosuid_nodev_and_small(test_user: User, launcher: Path, user_tmp: Path) -> None:
    result = sh_as_user(
        test_user,
        launcher,
        "--tmpfs",
        str(user_tmp),
        script=f"grep ' {user_tmp} ' /proc/self/mountinfo",
    )
    assert result.returncode == 0, result.stderr
    options = result.stdout.split()[5].split(",")
    assert "nosuid" in options and "nodev" in options
    assert re.search(r"size=(\d+)k", result.stdout)
    assert int(re.search(r"size=(\d+)k", result.stdout)[1]) <= 1024  # type: ignore[index]


def test_mounts_made_inside_do_not_appear_outside(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    with namespace_holder(test_user, launcher, "--tmpfs", str(user_tmp)) as pid:
        inside = Path(f"/proc/{pid}/mountinfo").read_text()
        outside = Path("/proc/self/mountinfo").read_text()
    assert f" {user_tmp} " in inside
    assert f" {user_tmp} " not in outside


@pytest.fixture
def shared_mount() -> Iterator[Path]:
    """A tmpfs with shared propagation, so mounts under it propagate to copies."""
    path = Path(tempfile.mkdtemp(prefix="wg-wrap-shared-"))
    path.chmod(0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(path)],
        check=True,
        timeout=TIMEOUT,
    )
    try:
        subprocess.run(["mount", "--make-shared", str(path)], check=True, timeout=TIMEOUT)
        (path / "later").mkdir(mode=0o755)
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path)], timeout=TIMEOUT)
        path.rmdir()


def test_host_mounts_made_later_still_appear_inside(
    test_user: User, launcher: Path, shared_mount: Path
) -> None:
    """Propagation is left alone: the copied mounts are slaves of the host's."""
    later = shared_mount / "later"
    with namespace_holder(test_user, launcher) as pid:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(later)],
            check=True,
            timeout=TIMEOUT,
        )
        inside = Path(f"/proc/{pid}/mountinfo").read_text()
    assert f" {later} " in inside
    line = next(line for line in inside.splitlines() if f" {shared_mount} " in line)
    assert "master:" in line and "shared:" not in line


def test_create_passes_inherited_fds_on(test_user: User, launcher: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        subprocess.run(
            as_user_argv(
                test_user,
                create(
                    launcher,
                    program=[PYTHON, "-c", f"import os; os.write({write_end}, b'through-fd')"],
                ),
            ),
            env=user_env(),
            cwd="/",
            pass_fds=[write_end],
            timeout=TIMEOUT,
            check=True,
        )
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end) as pipe:
            read_end = -1
            assert pipe.read() == "through-fd"
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


def test_create_leaves_no_launcher_fd_open(test_user: User, launcher: Path) -> None:
    result = sh_as_user(
        test_user, launcher, "--bind", "/etc/hostname", "/etc/hostname", script="ls /proc/self/fd"
    )
    assert result.returncode == 0, result.stderr
    # stdin, stdout, stderr and the fd ls opened to list the directory
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (
            ["--bind", "/nonexistent/src", "/etc/resolv.conf"],
            "bind-mounting /nonexistent/src over /etc/resolv.conf: No such file or directory",
        ),
        (
            ["--bind", "/etc/hostname", "/nonexistent/dst"],
            "resolving /nonexistent/dst: No such file or directory",
        ),
        (
            ["--tmpfs", "/nonexistent/dir"],
            "mounting tmpfs on /nonexistent/dir: No such file or directory",
        ),
        (["--file", "/etc/hostname", "/etc/hostname"], "creating /etc/hostname: File exists"),
        (
            ["--tmpfs", "/tmp", "--file", "/nonexistent/src", "/tmp/x"],
            "bind-mounting /nonexistent/src over /tmp/x: No such file or directory",
        ),
    ],
)
def test_failed_op_exits_125_naming_the_step_and_runs_nothing(
    test_user: User, launcher: Path, ops: list[str], message: str
) -> None:
    token = f"{time.monotonic_ns() % 10**6}.{os.getpid()}"  # unique `sleep` argument
    result = run_as_user(
        test_user, create(launcher, *ops, program=["sleep", token]), timeout=TIMEOUT
    )
    assert result.returncode == 125
    assert result.stderr == f"wg-wrap-launcher: {message}\n"
    assert user_processes_with(token) == []


def test_create_missing_program_exits_127(test_user: User, launcher: Path) -> None:
    result = run_as_user(
        test_user, create(launcher, program=["wg-wrap-no-such-program"]), timeout=TIMEOUT
    )
    assert result.returncode == 127
    assert result.stderr == (
        "wg-wrap-launcher: executing wg-wrap-no-such-program: No such file or directory\n"
    )


def test_create_unexecutable_program_exits_126(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    data = readable_by_all(user_tmp / "data", "not a program\n")
    result = run_as_user(test_user, create(launcher, program=[str(data)]), timeout=TIMEOUT)
    assert result.returncode == 126
    assert result.stderr == f"wg-wrap-launcher: executing {data}: Permission denied\n"


def test_missing_program_is_127_even_past_an_unsearchable_path_dir(
    test_user: User, launcher: Path
) -> None:
    """execvp says EACCES when a $PATH directory is closed to us (/root here)."""
    env = user_env(extra={"PATH": "/root:/usr/bin:/bin"})
    result = subprocess.run(
        as_user_argv(test_user, create(launcher, program=["wg-wrap-no-such-program"])),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 127, result.stderr
    assert "No such file or directory" in result.stderr


VERSION = wg_wrap.__version__


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing command"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["create"], "create: missing '-- PROGRAM'"),
        (["create", "--"], "create: missing PROGRAM after '--'"),
        (["create", "true"], "create: unknown option 'true'"),
        (["create", "--mystery", "x", "--", "true"], "create: unknown option '--mystery'"),
        # One argument per value: no packing, no value missing, none empty.
        (["create", "--bind", "/etc/hostname", "--", "true"], "--bind needs SRC and DST"),
        (["create", "--bind", "/etc/hostname:/etc/hostname", "--", "true"],
         "--bind needs SRC and DST"),
        (["create", "--bind", "", "/etc/hostname", "--", "true"], "--bind needs SRC and DST"),
        (["create", "--file", "/etc/hostname", "", "--", "true"], "--file needs SRC and DST"),
        (["create", "--tmpfs"], "--tmpfs needs a directory"),
        # A loop stepping by two would take `--` for the value, then `true`
        # for an option, or worse, run PROGRAM with the wrong mounts.
        (["create", "--tmpfs", "--", "true"], "--tmpfs needs a directory"),
        (["create", "--bind", "/etc/hostname", "--", "/etc/hostname", "--", "true"],
         "--bind needs SRC and DST"),
        (["join", "--", "true"], "join needs --pidfd N"),
        (["join", "--pidfd", "3"], "join: missing '-- PROGRAM'"),
        (["join", "--pidfd", "3", "--"], "join: missing PROGRAM after '--'"),
        (["join", "--pidfd", "--", "true"], "--pidfd needs a file descriptor"),
        (["join", "--pidfd", "12abc", "--", "true"], "--pidfd needs a file descriptor, got"),
        (["join", "--pidfd", "-1", "--", "true"], "--pidfd needs a file descriptor, got"),
        (["join", "--pidfd", "3", "--pidfd", "4", "--", "true"], "join: --pidfd given twice"),
        (["join", "--pidfd", "3", "--cwd", "/", "--cwd", "/", "--", "true"],
         "join: --cwd given twice"),
        (["join", "--pidfd", "3", "--cwd", "--", "true"], "--cwd needs a directory"),
        (["join", "--pid", "1", "--", "true"], "join: unknown option '--pid'"),
        (["--expect-version"], "--expect-version needs a version"),
        (["--expect-version", "--", "join", "--pidfd", "3", "--", "true"],
         "--expect-version needs a version"),
        (["--expect-version", VERSION, "--expect-version", VERSION, "create", "--", "true"],
         "--expect-version given twice"),
    ],
)
def test_usage_errors_exit_125_with_one_line(
    launcher: Path, args: list[str], message: str
) -> None:
    result = subprocess.run([str(launcher), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 125
    assert result.stderr.startswith(f"wg-wrap-launcher: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_stale_launcher_refuses_another_version(launcher: Path) -> None:
    result = subprocess.run(
        [str(launcher), "--expect-version", "0.0.0-other", "create", "--", "true"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 125
    assert result.stderr == (f"wg-wrap-launcher: this is version {VERSION}, but wg-wrap "
                             "0.0.0-other runs it: install both from the same release\n")


def test_help_and_version(launcher: Path) -> None:
    help_ = subprocess.run(
        [str(launcher), "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert help_.returncode == 0
    for word in ("create", "join", "--bind", "--tmpfs", "--file", "--pidfd", "--cwd", "125"):
        assert word in help_.stdout
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert version.returncode == 0
    assert re.fullmatch(r"wg-wrap-launcher \S+\n", version.stdout)


# ---- join -----------------------------------------------------------------


def test_join_enters_the_same_user_net_and_mount_namespaces(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    generated = readable_by_all(user_tmp / "resolv.conf", "nameserver 10.64.0.1\n")
    with namespace_holder(test_user, launcher, "--bind", str(generated), "/etc/resolv.conf") as pid:
        expected = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("user", "net", "mnt")]
        result = join_as_user(
            test_user,
            launcher,
            pid,
            "readlink /proc/self/ns/user /proc/self/ns/net /proc/self/ns/mnt; cat /etc/resolv.conf",
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*expected, "nameserver 10.64.0.1"]


def test_join_restores_the_callers_working_directory(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    workdir = user_tmp / "work dir"
    workdir.mkdir()
    os.chown(workdir, test_user.uid, test_user.gid)
    with namespace_holder(test_user, launcher) as pid:
        result = join_as_user(test_user, launcher, pid, "pwd", cwd=workdir)
        chosen = join_as_user(test_user, launcher, pid, "pwd", "--cwd", "/usr/share", cwd=workdir)
    assert (result.returncode, result.stdout) == (0, f"{workdir}\n"), result.stderr
    assert (chosen.returncode, chosen.stdout) == (0, "/usr/share\n"), chosen.stderr


def test_join_fails_when_the_directory_is_hidden_inside(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    hidden = user_tmp / "hidden"
    hidden.mkdir()
    os.chown(hidden, test_user.uid, test_user.gid)
    with namespace_holder(test_user, launcher, "--tmpfs", str(user_tmp)) as pid:
        result = join_as_user(test_user, launcher, pid, "pwd", cwd=hidden)
    assert result.returncode == 125
    assert (
        result.stderr
        == f"wg-wrap-launcher: changing directory to {hidden}: No such file or directory\n"
    )


def test_join_program_has_no_capabilities_and_the_users_ids(
    test_user: User, launcher: Path
) -> None:
    with namespace_holder(test_user, launcher) as pid:
        result = join_as_user(test_user, launcher, pid, "id -u; id -g; cat /proc/self/status")
    assert result.returncode == 0, result.stderr
    uid, gid, status = result.stdout.split("\n", 2)
    assert (uid, gid) == (str(test_user.uid), str(test_user.gid))
    caps = status_caps(status)
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert set(caps.values()) == {0}, caps
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)


@pytest.fixture
def setuid_root_id() -> Iterator[Path]:
    """A setuid-root copy of id(1), in a directory everyone may search."""
    where = Path(tempfile.mkdtemp(prefix="wg-wrap-suid-"))
    try:
        where.chmod(0o755)
        program = where / "id"
        shutil.copy2("/usr/bin/id", program)
        os.chown(program, 0, 0)
        program.chmod(0o4755)
        yield program
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_setuid_program_gains_nothing_after_join(
    test_user: User, launcher: Path, setuid_root_id: Path
) -> None:
    outside = run_as_user(test_user, [str(setuid_root_id)], timeout=TIMEOUT)
    assert "euid=0(root)" in outside.stdout, "control: the copy must really be setuid"
    with namespace_holder(test_user, launcher) as pid:
        inside = join_program(test_user, launcher, pid, [str(setuid_root_id)])
        status = join_as_user(test_user, launcher, pid, f"{setuid_root_id} -u; "
                              "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith(f"uid={test_user.uid}(") and "euid=" not in inside.stdout
    assert status.stdout.split() == [str(test_user.uid), "CapEff:", "0" * 16, "NoNewPrivs:", "1"]


def test_join_by_root_still_has_no_capabilities(test_user: User, launcher: Path) -> None:
    with namespace_holder(test_user, launcher) as pid:
        result = join_program(None, launcher, pid, ["cat", "/proc/self/status"])
    assert result.returncode == 0, result.stderr
    assert set(status_caps(result.stdout).values()) == {0}


def test_join_passes_the_exit_status_through(test_user: User, launcher: Path) -> None:
    with namespace_holder(test_user, launcher) as pid:
        result = join_as_user(test_user, launcher, pid, "exit 7")
    assert result.returncode == 7


def test_join_missing_program_exits_127(test_user: User, launcher: Path) -> None:
    with namespace_holder(test_user, launcher) as pid:
        result = join_program(test_user, launcher, pid, ["wg-wrap-no-such-program"])
    assert result.returncode == 127
    assert result.stderr == (
        "wg-wrap-launcher: executing wg-wrap-no-such-program: No such file or directory\n"
    )


def test_join_through_the_pidfd_of_an_exited_process_exits_125(
    test_user: User, launcher: Path
) -> None:
    """The pidfd stays bound to the process it was opened for: once that has
    exited, joining fails, even if its pid was reused meanwhile."""
    dead = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(dead.pid)
    try:
        dead.wait(timeout=TIMEOUT)
        result = join_pidfd(test_user, launcher, pidfd, ["true"])
    finally:
        os.close(pidfd)
    assert result.returncode == 125
    assert result.stderr == (
        f"wg-wrap-launcher: joining the namespaces of pidfd {pidfd}: No such process\n"
    )


def test_join_into_another_users_namespace_is_refused(test_user: User, launcher: Path) -> None:
    holder = subprocess.Popen(create(launcher, program=["sleep", "30"]), cwd="/")
    try:
        deadline = time.monotonic() + TIMEOUT
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "root's launcher never unshared"
            time.sleep(0.01)
        pidfd = os.pidfd_open(holder.pid)
        try:
            result = join_pidfd(test_user, launcher, pidfd, ["true"])
        finally:
            os.close(pidfd)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    assert result.returncode == 125
    assert result.stderr == (
        f"wg-wrap-launcher: joining the namespaces of pidfd {pidfd}: Operation not permitted\n"
    )


PIDFD_WRAPPER = r"""
import os, subprocess, sys
launcher, pid = sys.argv[1], int(sys.argv[2])
pidfd = os.pidfd_open(pid)
argv = [launcher, "join", "--pidfd", str(pidfd), "--", "sh", "-c",
        "readlink /proc/self/ns/net; ls -l /proc/self/fd/ | grep -c pidfd || true"]
sys.exit(subprocess.run(argv, pass_fds=[pidfd], timeout=20).returncode)
"""


def test_join_through_an_inherited_pidfd(test_user: User, launcher: Path) -> None:
    with namespace_holder(test_user, launcher) as pid:
        expected = os.readlink(f"/proc/{pid}/ns/net")
        result = run_as_user(
            test_user, [PYTHON, "-c", PIDFD_WRAPPER, str(launcher), str(pid)], timeout=TIMEOUT
        )
    # the namespace, and no pidfd left open in the program
    assert (result.returncode, result.stdout) == (0, f"{expected}\n0\n"), result.stderr


def test_join_with_a_bad_pidfd_exits_125(test_user: User, launcher: Path) -> None:
    result = run_as_user(
        test_user, [str(launcher), "join", "--pidfd", "0", "--", "true"], timeout=TIMEOUT, input=""
    )
    assert result.returncode == 125
    assert result.stderr.startswith("wg-wrap-launcher: joining the namespaces of pidfd 0: ")
