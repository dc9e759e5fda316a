"""wg-wrap-launcher, run as the unprivileged test user against real namespaces.

The launcher under test is the installed one: the staged install that
``make stage`` (and so ``make test``) makes with ``make install``, built with
the Makefile's flags (which live only there) and readable by the test user.
``create`` and ``enter`` run nothing but the wg-wrap-sidecar beside the
launcher: to see what they give a program, the tests put a copy of the
launcher beside a stand-in sidecar that runs its arguments (``bench``).
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
CAP_SYS_ADMIN = 1 << 21
SIDECAR_CAPS = CAP_NET_ADMIN | CAP_SYS_ADMIN
# The system interpreter: the test user cannot reach one under /root.
PYTHON = "/usr/bin/python3"
TIMEOUT = 20


@pytest.fixture(scope="session")
def launcher(stage: Stage) -> Path:
    """The staged, installed launcher (see conftest.stage)."""
    return stage.launcher


# What the stand-in sidecar runs: its arguments, with a PATH (the launcher
# gives the sidecar nothing of the environment but WG_WRAP_* variables).
FAKE_SIDECAR = '#!/bin/sh\nPATH=/usr/bin:/bin; export PATH\nexec "$@"\n'


@pytest.fixture(scope="session")
def bench(launcher: Path) -> Iterator[Path]:
    """A copy of the installed launcher beside a stand-in wg-wrap-sidecar
    that executes its arguments: what create and enter give their program."""
    where = Path(tempfile.mkdtemp(prefix="wg-wrap-bench-"))
    try:
        where.chmod(0o755)
        copy = where / "wg-wrap-launcher"
        shutil.copy2(launcher, copy)
        sidecar = where / "wg-wrap-sidecar"
        sidecar.write_text(FAKE_SIDECAR)
        sidecar.chmod(0o755)
        yield copy
    finally:
        shutil.rmtree(where, ignore_errors=True)


def readable_by_all(path: Path, content: str) -> Path:
    path.write_text(content)
    path.chmod(0o644)
    return path


def create(launcher: Path, program: Sequence[str]) -> list[str]:
    return [str(launcher), "create", "--", *program]


def mount(source: str | Path, target: Path, bind: bool = False) -> str:
    """A shell line that mounts with mount(2) itself: util-linux's mount(8)
    refuses any uid but 0, capabilities or not."""
    flags = 0x1000 if bind else 0  # MS_BIND
    fstype = "None" if bind else "b'tmpfs'"
    code = (f"import ctypes, os, sys; libc = ctypes.CDLL(None, use_errno=True); "
            f"sys.exit(libc.mount(b'{source}', b'{target}', {fstype}, {flags}, None) and "
            "os.strerror(ctypes.get_errno()))")
    return f'{PYTHON} -c "{code}"'


def namespaces_of(pid: int) -> list[str]:
    """--userns/--netns/--mntns INO of pid, for join and enter."""
    options = []
    for kind in ("user", "net", "mnt"):
        options += [f"--{kind}ns", str(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)]
    return options


def status_caps(status: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb from /proc/PID/status text."""
    return {m[1]: int(m[2], 16) for m in re.finditer(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}


def sh_as_user(
    user: User, launcher: Path, script: str, cwd: str | Path = "/"
) -> subprocess.CompletedProcess[str]:
    return run_as_user(user, create(launcher, program=["sh", "-c", script]), cwd=cwd,
                       timeout=TIMEOUT)


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
def namespace_holder(user: User, launcher: Path, script: str = "") -> Iterator[int]:
    """`create -- sh` as the user (through the bench's stand-in sidecar);
    yields its pid once it runs, after ``script``."""
    proc = subprocess.Popen(
        as_user_argv(
            user, create(launcher, program=["sh", "-c", f"{script}\necho ready; exec sleep 30"])
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
        return join_pidfd(user, launcher, pidfd, program, *namespaces_of(pid), *options, cwd=cwd)
    finally:
        os.close(pidfd)


def join_as_user(
    user: User, launcher: Path, pid: int, script: str, *options: str, cwd: str | Path = "/"
) -> subprocess.CompletedProcess[str]:
    return join_program(user, launcher, pid, ["sh", "-c", script], *options, cwd=cwd)


# ---- create ---------------------------------------------------------------


def test_create_runs_only_the_sidecar_beside_it(
    test_user: User, launcher: Path, user_tmp: Path
) -> None:
    """The installed launcher may create user namespaces where others may not
    (AppArmor): it runs its own sidecar, never the program it is given."""
    marker = user_tmp / "ran"
    result = run_as_user(test_user, create(launcher, ["sh", "-c", f"touch {marker}"]),
                         timeout=TIMEOUT)
    assert result.returncode != 0
    assert "wg-wrap-sidecar: usage: unexpected argument \"sh\"" in result.stderr, result.stderr
    assert not marker.exists()


def test_create_gives_the_sidecar_only_its_own_environment(
    test_user: User, bench: Path
) -> None:
    env = user_env(extra={"LD_PRELOAD": "/nonexistent.so", "GODEBUG": "x=1",
                          "WG_WRAP_HOST_SOCKET_FD": "9"})
    result = subprocess.run(as_user_argv(test_user, create(bench, ["env"])), env=env,
                            capture_output=True, text=True, timeout=TIMEOUT, cwd="/")
    assert result.returncode == 0, result.stderr
    # PATH comes from the stand-in itself.
    assert sorted(result.stdout.split()) == ["PATH=/usr/bin:/bin", "PWD=/",
                                             "WG_WRAP_HOST_SOCKET_FD=9"]


def test_create_program_runs_in_a_new_net_namespace_with_only_lo(
    test_user: User, bench: Path
) -> None:
    result = sh_as_user(test_user, bench, "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev")
    assert result.returncode == 0, result.stderr
    netns, *devices = result.stdout.splitlines()
    assert netns != os.readlink("/proc/self/ns/net")
    assert [d.split(":")[0].strip() for d in devices] == ["lo"]


def test_create_keeps_the_callers_uid_and_gid(test_user: User, bench: Path) -> None:
    result = sh_as_user(
        test_user, bench,
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups",
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    u, g = str(test_user.uid), str(test_user.gid)
    assert lines == [[u], [g], [u, u, "1"], [g, g, "1"], ["deny"]]


def test_create_gives_the_sidecar_exactly_its_capabilities(test_user: User, bench: Path) -> None:
    result = sh_as_user(test_user, bench, "cat /proc/self/status")
    assert result.returncode == 0, result.stderr
    caps = status_caps(result.stdout)
    for name in ("CapPrm", "CapEff", "CapAmb", "CapInh", "CapBnd"):
        assert caps[name] == SIDECAR_CAPS, (name, hex(caps[name]))
    # no_new_privs keeps the ambient capabilities: they were permitted before execve.
    assert re.search(r"^NoNewPrivs:\s+1$", result.stdout, re.M)


def test_create_as_root_still_gives_only_the_sidecars_capabilities(bench: Path) -> None:
    """uid 0 would get every capability from execve; the bounding set prevents it."""
    result = subprocess.run(create(bench, ["cat", "/proc/self/status"]), capture_output=True,
                            text=True, timeout=TIMEOUT, cwd="/")
    assert result.returncode == 0, result.stderr
    caps = status_caps(result.stdout)
    assert {caps[n] for n in ("CapPrm", "CapEff", "CapAmb", "CapBnd")} == {SIDECAR_CAPS}


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
    test_user: User, bench: Path
) -> None:
    result = run_as_user(test_user, create(bench, [PYTHON, "-c", TUN_SCRIPT]), timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1280\n"
    assert not Path("/sys/devices/virtual/net/tun0").exists()  # not on the host


def test_create_program_can_mount_in_its_namespace_only(
    test_user: User, bench: Path, user_tmp: Path
) -> None:
    """CAP_SYS_ADMIN there: what the sidecar makes its view of the host with."""
    with namespace_holder(test_user, bench, mount("tmpfs", user_tmp)) as pid:
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
    test_user: User, bench: Path, shared_mount: Path
) -> None:
    """Propagation is left alone: the copied mounts are slaves of the host's."""
    later = shared_mount / "later"
    with namespace_holder(test_user, bench) as pid:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(later)],
            check=True,
            timeout=TIMEOUT,
        )
        inside = Path(f"/proc/{pid}/mountinfo").read_text()
    assert f" {later} " in inside
    line = next(line for line in inside.splitlines() if f" {shared_mount} " in line)
    assert "master:" in line and "shared:" not in line


def test_create_passes_inherited_fds_on(test_user: User, bench: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        subprocess.run(
            as_user_argv(
                test_user,
                create(bench, [PYTHON, "-c", f"import os; os.write({write_end}, b'through-fd')"]),
            ),
            env=user_env(), cwd="/", pass_fds=[write_end], timeout=TIMEOUT, check=True,
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


def test_create_leaves_no_launcher_fd_open(test_user: User, bench: Path) -> None:
    result = sh_as_user(test_user, bench, "ls /proc/self/fd")
    assert result.returncode == 0, result.stderr
    # stdin, stdout, stderr and the fd ls opened to list the directory
    assert sorted(int(fd) for fd in result.stdout.split()) == [0, 1, 2, 3]


def test_create_without_a_sidecar_beside_it_exits_127(test_user: User, launcher: Path) -> None:
    where = Path(tempfile.mkdtemp(prefix="wg-wrap-lonely-"))
    try:
        where.chmod(0o755)
        lonely = where / "wg-wrap-launcher"
        shutil.copy2(launcher, lonely)
        result = run_as_user(test_user, create(lonely, []), timeout=TIMEOUT)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert result.returncode == 127
    assert result.stderr == (f"wg-wrap-launcher: executing {where}/wg-wrap-sidecar: "
                             "No such file or directory\n")


VERSION = wg_wrap.__version__
NS = ["--userns", "1", "--netns", "2", "--mntns", "3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing command"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["create"], "create: missing '--'"),
        (["create", "true"], "create: unknown option 'true'"),
        (["create", "--bind", "/etc/hostname", "/etc/hostname", "--", "true"],
         "create: unknown option '--bind'"),
        (["join", "--", "true"], "join needs --pidfd N"),
        (["join", "--pidfd", "3", "--", "true"], "join needs --userns INO"),
        (["join", "--pidfd", "3", "--userns", "1", "--netns", "2", "--", "true"],
         "join needs --mntns INO"),
        (["join", "--pidfd", "3", *NS], "join: missing '--'"),
        (["join", "--pidfd", "3", *NS, "--"], "join: missing PROGRAM after '--'"),
        (["join", "--pidfd", "--", "true"], "--pidfd needs a file descriptor"),
        (["join", "--pidfd", "12abc", *NS, "--", "true"], "--pidfd needs a file descriptor, got"),
        (["join", "--pidfd", "-1", *NS, "--", "true"], "--pidfd needs a file descriptor, got"),
        (["join", "--pidfd", "3", "--pidfd", "4", *NS, "--", "true"], "join: --pidfd given twice"),
        (["join", "--pidfd", "3", "--userns", "0", "--", "true"], "--userns needs an inode number"),
        (["join", "--pidfd", "3", "--userns", "-7", "--", "true"],
         "--userns needs an inode number"),
        (["join", "--pidfd", "3", "--netns", "1", "--netns", "1", "--", "true"],
         "join: --netns given twice"),
        (["join", "--pidfd", "3", *NS, "--cwd", "/", "--cwd", "/", "--", "true"],
         "join: --cwd given twice"),
        (["join", "--pidfd", "3", "--cwd", "--", "true"], "--cwd needs a directory"),
        (["join", "--pid", "1", "--", "true"], "join: unknown option '--pid'"),
        (["enter", "--pidfd", "3", *NS, "--cwd", "/", "--"], "enter: unknown option '--cwd'"),
        (["enter", "--pidfd", "3", "--"], "enter needs --userns INO"),
        (["--expect-version"], "--expect-version needs a version"),
        (["--expect-version", "--", "join", "--pidfd", "3", "--", "true"],
         "--expect-version needs a version"),
        (["--expect-version", VERSION, "--expect-version", VERSION, "create", "--"],
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
        [str(launcher), "--expect-version", "0.0.0-other", "create", "--"],
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
    for word in ("create", "join", "enter", "wg-wrap-sidecar", "--pidfd", "--userns", "--netns",
                 "--mntns", "--cwd", "125"):
        assert word in help_.stdout
    version = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert version.returncode == 0
    assert re.fullmatch(r"wg-wrap-launcher \S+\n", version.stdout)


# ---- join -----------------------------------------------------------------


def test_join_enters_the_same_user_net_and_mount_namespaces(
    test_user: User, bench: Path, user_tmp: Path
) -> None:
    marked = readable_by_all(user_tmp / "marked", "outside\n")
    inside = readable_by_all(user_tmp / "inside", "inside\n")
    with namespace_holder(test_user, bench, mount(inside, marked, bind=True)) as pid:
        expected = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("user", "net", "mnt")]
        result = join_as_user(
            test_user, bench, pid,
            f"readlink /proc/self/ns/user /proc/self/ns/net /proc/self/ns/mnt; cat {marked}",
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*expected, "inside"]


def test_join_refuses_namespaces_other_than_the_ones_named(
    test_user: User, bench: Path
) -> None:
    with namespace_holder(test_user, bench) as pid:
        right = namespaces_of(pid)
        pidfd = os.pidfd_open(pid)
        try:
            for i, kind in ((1, "user"), (3, "net"), (5, "mnt")):
                wrong = list(right)
                wrong[i] = str(int(wrong[i]) + 1)
                result = join_pidfd(test_user, bench, pidfd, ["echo", "joined"], *wrong)
                assert result.returncode == 125
                assert result.stdout == ""
                assert result.stderr == (
                    f"wg-wrap-launcher: refusing: the {kind} namespace of pidfd {pidfd} is "
                    f"{right[i]}, not {wrong[i]}\n")
        finally:
            os.close(pidfd)


def test_join_refuses_a_user_namespace_made_inside(test_user: User, bench: Path) -> None:
    """A process of the profile may make a user namespace of its own, where
    it holds every capability: never a way in, even named exactly."""
    with namespace_holder(test_user, bench) as pid:
        pidfd = os.pidfd_open(pid)
        nested = subprocess.Popen(
            as_user_argv(test_user, [
                str(bench), "join", "--pidfd", str(pidfd), *namespaces_of(pid), "--",
                "unshare", "--user", "--map-root-user", "--mount", "--net",
                "sh", "-c", "echo ready; exec sleep 30"]),
            env=user_env(), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            pass_fds=[pidfd],
        )
        os.close(pidfd)
        assert nested.stdout is not None
        try:
            ready, _, _ = select.select([nested.stdout], [], [], TIMEOUT)
            assert ready and nested.stdout.readline() == "ready\n", nested.stderr
            result = join_program(test_user, bench, nested.pid, ["echo", "joined"])
        finally:
            nested.kill()
            nested.communicate(timeout=TIMEOUT)
    assert result.returncode == 125
    assert result.stdout == ""
    assert result.stderr == ("wg-wrap-launcher: refusing: the user namespace is not a child of "
                             "the caller's (a namespace made inside a profile)\n")


def test_join_restores_the_callers_working_directory(
    test_user: User, bench: Path, user_tmp: Path
) -> None:
    workdir = user_tmp / "work dir"
    workdir.mkdir()
    os.chown(workdir, test_user.uid, test_user.gid)
    with namespace_holder(test_user, bench) as pid:
        result = join_as_user(test_user, bench, pid, "pwd", cwd=workdir)
        chosen = join_as_user(test_user, bench, pid, "pwd", "--cwd", "/usr/share", cwd=workdir)
    assert (result.returncode, result.stdout) == (0, f"{workdir}\n"), result.stderr
    assert (chosen.returncode, chosen.stdout) == (0, "/usr/share\n"), chosen.stderr


def test_join_fails_when_the_directory_is_hidden_inside(
    test_user: User, bench: Path, user_tmp: Path
) -> None:
    hidden = user_tmp / "hidden"
    hidden.mkdir()
    os.chown(hidden, test_user.uid, test_user.gid)
    with namespace_holder(test_user, bench, mount("tmpfs", user_tmp)) as pid:
        result = join_as_user(test_user, bench, pid, "pwd", cwd=hidden)
    assert result.returncode == 125
    assert (
        result.stderr
        == f"wg-wrap-launcher: changing directory to {hidden}: No such file or directory\n"
    )


def test_join_program_has_no_capabilities_and_the_users_ids(
    test_user: User, bench: Path
) -> None:
    with namespace_holder(test_user, bench) as pid:
        result = join_as_user(test_user, bench, pid, "id -u; id -g; cat /proc/self/status")
    assert result.returncode == 0, result.stderr
    uid, gid, status = result.stdout.split("\n", 2)
    assert (uid, gid) == (str(test_user.uid), str(test_user.gid))
    caps = status_caps(status)
    assert set(caps) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}
    assert {caps[s] for s in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {0}, caps
    # The bounding set is left whole: no_new_privs alone makes execve grant
    # nothing, and programs with file capabilities must still start.
    assert caps["CapBnd"] != 0
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
    test_user: User, bench: Path, setuid_root_id: Path
) -> None:
    outside = run_as_user(test_user, [str(setuid_root_id)], timeout=TIMEOUT)
    assert "euid=0(root)" in outside.stdout, "control: the copy must really be setuid"
    with namespace_holder(test_user, bench) as pid:
        inside = join_program(test_user, bench, pid, [str(setuid_root_id)])
        status = join_as_user(test_user, bench, pid, f"{setuid_root_id} -u; "
                              "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.startswith(f"uid={test_user.uid}(") and "euid=" not in inside.stdout
    assert status.stdout.split() == [str(test_user.uid), "CapEff:", "0" * 16, "NoNewPrivs:", "1"]


@pytest.fixture
def file_cap_python() -> Iterator[Path]:
    """A copy of the interpreter with cap_net_raw=ep, as ping, mtr-packet,
    arping and dumpcap carry (setcap, from libcap2-bin)."""
    where = Path(tempfile.mkdtemp(prefix="wg-wrap-fcap-"))
    try:
        where.chmod(0o755)
        program = where / "python3"
        shutil.copy2(os.path.realpath(PYTHON), program)
        subprocess.run(["setcap", "cap_net_raw=ep", str(program)], check=True, timeout=TIMEOUT)
        yield program
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_file_capability_program_runs_after_join_and_gains_nothing(
    test_user: User, bench: Path, file_cap_python: Path
) -> None:
    """The kernel refuses to start a binary whose forced capabilities the
    bounding set cannot grant; with no_new_privs it starts, with none."""
    script = ("import socket\n"
              "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
              "try:\n"
              "    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\n"
              "    print('raw')\n"
              "except PermissionError:\n"
              "    print('no raw socket')\n")
    with namespace_holder(test_user, bench) as pid:
        result = join_program(test_user, bench, pid, [str(file_cap_python), "-c", script])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["0" * 16, "no raw socket", ""]


def test_join_by_root_still_has_no_capabilities(test_user: User, bench: Path) -> None:
    with namespace_holder(test_user, bench) as pid:
        result = join_program(None, bench, pid, ["cat", "/proc/self/status"])
    assert result.returncode == 0, result.stderr
    caps = status_caps(result.stdout)
    assert {caps[s] for s in ("CapInh", "CapPrm", "CapEff", "CapAmb")} == {0}


def test_join_passes_the_exit_status_through(test_user: User, bench: Path) -> None:
    with namespace_holder(test_user, bench) as pid:
        result = join_as_user(test_user, bench, pid, "exit 7")
    assert result.returncode == 7


def test_join_missing_program_exits_127(test_user: User, bench: Path) -> None:
    with namespace_holder(test_user, bench) as pid:
        result = join_program(test_user, bench, pid, ["wg-wrap-no-such-program"])
    assert result.returncode == 127
    assert result.stderr == (
        "wg-wrap-launcher: executing wg-wrap-no-such-program: No such file or directory\n"
    )


def test_join_unexecutable_program_exits_126(
    test_user: User, bench: Path, user_tmp: Path
) -> None:
    data = readable_by_all(user_tmp / "data", "not a program\n")
    with namespace_holder(test_user, bench) as pid:
        result = join_program(test_user, bench, pid, [str(data)])
    assert result.returncode == 126
    assert result.stderr == f"wg-wrap-launcher: executing {data}: Permission denied\n"


def test_missing_program_is_127_even_past_an_unsearchable_path_dir(
    test_user: User, bench: Path
) -> None:
    """execvp says EACCES when a $PATH directory is closed to us (/root here)."""
    with namespace_holder(test_user, bench) as pid:
        pidfd = os.pidfd_open(pid)
        try:
            argv = [str(bench), "join", "--pidfd", str(pidfd), *namespaces_of(pid), "--",
                    "wg-wrap-no-such-program"]
            result = subprocess.run(
                as_user_argv(test_user, argv), env=user_env(extra={"PATH": "/root:/usr/bin:/bin"}),
                cwd="/", capture_output=True, text=True, timeout=TIMEOUT, pass_fds=[pidfd],
            )
        finally:
            os.close(pidfd)
    assert result.returncode == 127, result.stderr
    assert "No such file or directory" in result.stderr


def test_join_through_the_pidfd_of_an_exited_process_exits_125(
    test_user: User, bench: Path
) -> None:
    """The pidfd stays bound to the process it was opened for: once that has
    exited, joining fails, even if its pid was reused meanwhile."""
    dead = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(dead.pid)
    try:
        dead.wait(timeout=TIMEOUT)
        result = join_pidfd(test_user, bench, pidfd, ["true"], *NS)
    finally:
        os.close(pidfd)
    assert result.returncode == 125
    assert result.stderr == f"wg-wrap-launcher: pidfd {pidfd}: No such process\n"


def test_join_into_another_users_namespace_is_refused(test_user: User, bench: Path) -> None:
    holder = subprocess.Popen(create(bench, ["sleep", "30"]), cwd="/")
    try:
        deadline = time.monotonic() + TIMEOUT
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "root's launcher never unshared"
            time.sleep(0.01)
        result = join_program(test_user, bench, holder.pid, ["true"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=TIMEOUT)
    assert result.returncode == 125
    assert re.fullmatch(r"wg-wrap-launcher: opening /proc/\d+/ns/user: Permission denied\n",
                        result.stderr), result.stderr


PIDFD_WRAPPER = r"""
import os, subprocess, sys
launcher, pid = sys.argv[1], int(sys.argv[2])
pidfd = os.pidfd_open(pid)
ns = []
for kind in ("user", "net", "mnt"):
    ns += [f"--{kind}ns", str(os.stat(f"/proc/{pid}/ns/{kind}").st_ino)]
argv = [launcher, "join", "--pidfd", str(pidfd), *ns, "--", "sh", "-c",
        "readlink /proc/self/ns/net; ls -l /proc/self/fd/ | grep -c -e pidfd -e 'ns:' || true"]
sys.exit(subprocess.run(argv, pass_fds=[pidfd], timeout=20).returncode)
"""


def test_join_through_an_inherited_pidfd(test_user: User, bench: Path) -> None:
    with namespace_holder(test_user, bench) as pid:
        expected = os.readlink(f"/proc/{pid}/ns/net")
        result = run_as_user(
            test_user, [PYTHON, "-c", PIDFD_WRAPPER, str(bench), str(pid)], timeout=TIMEOUT
        )
    # the namespace, and no pidfd or namespace descriptor left open in the program
    assert (result.returncode, result.stdout) == (0, f"{expected}\n0\n"), result.stderr


def test_join_with_a_bad_pidfd_exits_125(test_user: User, bench: Path) -> None:
    result = run_as_user(
        test_user, [str(bench), "join", "--pidfd", "0", *NS, "--", "true"], timeout=TIMEOUT,
        input="",
    )
    assert result.returncode == 125
    assert result.stderr.startswith("wg-wrap-launcher: pidfd 0: ")


# ---- enter ----------------------------------------------------------------


def test_enter_gives_the_sidecar_its_capabilities_in_the_namespaces_named(
    test_user: User, bench: Path
) -> None:
    """A new sidecar for the programs a dead one left: in their namespaces,
    with what create gives, and its own environment only."""
    with namespace_holder(test_user, bench) as pid:
        expected = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("user", "net", "mnt")]
        pidfd = os.pidfd_open(pid)
        try:
            argv = [str(bench), "enter", "--pidfd", str(pidfd), *namespaces_of(pid), "--", "sh",
                    "-c", "readlink /proc/self/ns/user /proc/self/ns/net /proc/self/ns/mnt; pwd; "
                    "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status"]
            result = subprocess.run(as_user_argv(test_user, argv), env=user_env(), cwd="/tmp",
                                    pass_fds=[pidfd], capture_output=True, text=True,
                                    timeout=TIMEOUT)
        finally:
            os.close(pidfd)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [*expected, "/"]
    assert status_caps("\n".join(lines[4:])) == {
        "CapEff": SIDECAR_CAPS, "CapBnd": SIDECAR_CAPS, "CapAmb": SIDECAR_CAPS}


def test_enter_runs_only_the_sidecar_beside_it(test_user: User, launcher: Path,
                                                bench: Path, user_tmp: Path) -> None:
    marker = user_tmp / "ran"
    with namespace_holder(test_user, bench) as pid:
        pidfd = os.pidfd_open(pid)
        try:
            argv = [str(launcher), "enter", "--pidfd", str(pidfd), *namespaces_of(pid), "--",
                    "sh", "-c", f"touch {marker}"]
            result = subprocess.run(as_user_argv(test_user, argv), env=user_env(), cwd="/",
                                    pass_fds=[pidfd], capture_output=True, text=True,
                                    timeout=TIMEOUT)
        finally:
            os.close(pidfd)
    assert result.returncode != 0
    assert "wg-wrap-sidecar: usage: unexpected argument \"sh\"" in result.stderr, result.stderr
    assert not marker.exists()


def test_the_aftercare_appends_to_a_stderr_it_opens_anew(tmp_path: Path) -> None:
    """Where the kernel refuses pidfd_getfd (Yama's ptrace_scope, a kernel
    before 5.6), the aftercare opens a program's stderr through
    /proc/PID/fd/2: for appending, so that a `2>>log` is added to, not
    overwritten from its start. That fallback cannot be made to happen on a
    kernel that allows pidfd_getfd: tests/c/reopen_stderr.c runs it on its
    own, built with the launcher's aftercare.c."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing (apt-get install gcc): it builds the launcher too"
    repo = Path(__file__).resolve().parent.parent
    binary = tmp_path / "reopen_stderr"
    subprocess.run([gcc, "-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{repo / 'launcher'}",
                    "-o", str(binary), str(repo / "tests" / "c" / "reopen_stderr.c"),
                    str(repo / "launcher" / "aftercare.c")], check=True, timeout=120)
    done = subprocess.run([str(binary), str(tmp_path / "log")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the program's own line\nthe notice\n"
