"""Profiles: persistent tunnels (`up`/`exec`/`down`), `ls`/`status`, and the
lifetime rules of ephemeral ones, as the unprivileged user against a real
wg-wrap server peer."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Tool, run_as_user, user_env
from peers import HTTP_PORT, Keys, WgWrapServer, client_config, next_net, silent_udp_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(wgwrap_server: WgWrapServer) -> WgWrapServer:
    return wgwrap_server


class Command:
    """A wrapped command started as ``sh -c 'echo $$; exec PROGRAM'``: its
    first line says it runs inside, and its pid, which is held through a
    pidfd from then on (it may outlive its wrapper; pids are reused)."""

    SCRIPT = "echo $$; exec "

    def __init__(self, wrapper: subprocess.Popen[str]) -> None:
        assert wrapper.stdout is not None and wrapper.stderr is not None
        ready, _, _ = select.select([wrapper.stdout], [], [], 30)
        line = wrapper.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            wrapper.kill()
            pytest.fail(f"the command did not start: {line!r} {wrapper.stderr.read()!r}")
        self.pid = int(line)
        self.pidfd = os.pidfd_open(self.pid)

    def wait_running(self, program: str, timeout: float = 10) -> None:
        """Until the shell has become program (its exec)."""
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{self.pid}/comm").read_text().strip() != program:
            assert time.monotonic() < deadline, f"{self.pid} never became {program}"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, and return once it has exited (at most 10 s); once."""
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        select.select([self.pidfd], [], [], 10)  # readable once it has exited
        os.close(self.pidfd)
        self.pidfd = -1


def _get(url: str) -> tuple[str, ...]:
    return ("curl", "-sS", "--max-time", "10", url)


def test_up_exec_ls_status_down(server: WgWrapServer, tool: Tool) -> None:
    conf = tool.conf(server.client_config())
    up = tool("up", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    assert up.stdout == "wg0\n"
    assert "waiting for the handshake" in up.stderr
    # The handshake is done: the server's wg-wrap reports it too.
    exec_ = tool("exec", "wg0", "--", *_get(f"http://{server.net.server4}:{HTTP_PORT}/"))
    assert exec_.returncode == 0, exec_.stderr
    assert f"sees you as {server.net.client4}" in exec_.stdout

    ls = tool("ls")
    assert ls.returncode == 0, ls.stderr
    header, line = ls.stdout.splitlines()
    assert header.split() == [
        "NAME", "MODE", "PID", "ATTACHED", "ENDPOINT", "HANDSHAKE", "RX", "TX", "REACH", "VIEW",
        "FWD",
    ]
    fields = line.split()
    assert fields[:2] == ["wg0", "persistent"]
    assert int(fields[2]) in tool.sidecars()
    assert fields[3] == "0" and fields[4] == f"127.0.0.1:{server.port}"
    assert fields[5].endswith("s") and fields[6] == "ago"

    status = tool("status", "--json", "wg0")
    assert status.returncode == 0, status.stderr
    (info,) = json.loads(status.stdout)
    assert info["running"] and info["mode"] == "persistent"
    assert info["addresses"] == [f"{server.net.client4}/24", f"{server.net.client6}/64"]
    assert info["dns"] == [server.net.server4] and info["mtu"] == 1420
    (peer,) = info["peers"]
    assert peer["public_key"] == server.keys.pub(server.keys.server)
    assert peer["latest_handshake"] and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert info["public_key"] == server.keys.pub(server.keys.client)
    text = tool("status", "wg0").stdout
    assert "latest handshake:" in text and "attached processes: 0" in text

    down = tool("down", "wg0")
    assert down.returncode == 0, down.stderr
    assert tool.wait_gone(2)
    assert tool("exec", "wg0", "--", "true").returncode == 1


def test_up_times_out_cleanly_without_a_peer(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    start = time.monotonic()
    up = tool("up", "--timeout", "2", "-c", str(conf))
    assert up.returncode == 1
    assert "no handshake with 127.0.0.1:" in up.stderr and "within 2 s" in up.stderr
    assert "--no-wait" in up.stderr
    assert time.monotonic() - start < 10
    assert tool.wait_gone(1)


def test_persistent_profile_stays_with_nothing_attached(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    assert tool("exec", "wg0", "--", "true").returncode == 0
    time.sleep(2.5)  # longer than an ephemeral profile would last
    assert len(tool.sidecars()) == 1 and tool.profiles() == ["wg0"]
    assert tool("down", "wg0").returncode == 0
    assert tool.wait_gone(2)


def test_run_joins_a_running_profile_and_refuses_another_config(tool: Tool) -> None:
    net = next_net()
    conf = tool.conf(client_config(Keys(), net, silent_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    inside = tool("exec", "wg0", "--", "readlink", "/proc/self/ns/net").stdout
    joined = tool("run", "-c", str(conf), "--", "readlink", "/proc/self/ns/net")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout == inside and inside.startswith("net:[")
    assert len(tool.sidecars()) == 1
    other = tool.conf(client_config(Keys(), net, silent_udp_port()), name="other.conf")
    clash = tool("run", "-n", "wg0", "-c", str(other), "--", "true")
    assert clash.returncode == 1
    assert "profile 'wg0' is running with a different config" in clash.stderr
    assert tool("up", "-n", "wg0", "--no-wait", "-c", str(other)).returncode == 1


def test_down_refuses_while_attached_unless_forced(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    sleeper = tool.popen("exec", "wg0", "--", "sh", "-c", Command.SCRIPT + "sleep 30")
    command = Command(sleeper)
    try:
        command.wait_running("sleep")
        refused = tool("down", "wg0")
        assert refused.returncode == 1
        assert "has 1 attached process" in refused.stderr and "(sleep)" in refused.stderr
        assert tool.profiles() == ["wg0"]
        forced = tool("down", "--force", "wg0")
        assert forced.returncode == 0, forced.stderr
        assert tool.wait_gone(2)
    finally:
        # The command outlives `down --force`; its wrapper ends with it.
        command.kill()
        sleeper.communicate(timeout=10)


# A daemon: it leaves its parent (which exits), its session and every
# inherited descriptor, the profile's hold lock among them; only the
# sidecar's scan of its namespace can still see it.
DAEMON = """\
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
print(os.getpid(), flush=True)
os.closerange(0, 1 << 16)
time.sleep(60)
"""


def test_ephemeral_profile_lives_while_any_process_is_inside_and_ends_2s_after_the_last(
    tool: Tool,
) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    run = tool.popen("run", "-c", str(conf), "--", "sh", "-c", Command.SCRIPT + "sleep 60")
    first = Command(run)
    assert first.pid == run.pid  # wg-wrap became the command: nothing of ours beside it
    daemon_start = tool.popen("exec", "wg0", "--", "python3", "-c", DAEMON)
    daemon = Command(daemon_start)
    assert daemon_start.wait(timeout=10) == 0
    try:
        first.kill()  # the process `run` started; the daemon holds no lock
        # The daemon is still inside: the profile stays, watched over five of
        # the sidecar's checks (one each 200 ms).
        watch_until = time.monotonic() + 1.0
        while time.monotonic() < watch_until:
            assert len(tool.sidecars()) == 1, "the profile lives while a process is inside"
            time.sleep(0.05)
    finally:
        first.kill()
        daemon.kill()
        for proc in (run, daemon_start):
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
    assert tool.wait_gone(2), "not torn down within 2 s of the last process"
    assert tool("ls").stdout.splitlines()[1:] == []


def test_fifty_concurrent_runs_share_one_sidecar(server: WgWrapServer, tool: Tool) -> None:
    conf = tool.conf(server.client_config())
    url = f"http://{server.net.server4}:{HTTP_PORT}/"
    seen: set[int] = set()
    procs = [
        tool.popen("run", "-v", "-c", str(conf), "--", "sh", "-c",
                   f"sleep 1; curl -sS --max-time 20 {url}")
        for _ in range(50)
    ]
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        seen |= tool.sidecars()
        time.sleep(0.05)
    results = [p.communicate(timeout=10) for p in procs]
    last_exit = time.monotonic()
    failures = [
        (p.returncode, err[-300:])
        for p, (_, err) in zip(procs, results, strict=True)
        if p.returncode
    ]
    assert not failures, failures[:3]
    assert all(f"sees you as {server.net.client4}" in out for out, _ in results)
    starts = sum(err.count("wg-wrap-launcher create") for _, err in results)
    assert starts == 1 and len(seen) == 1, (starts, seen)
    assert tool.wait_gone(2), f"still there {time.monotonic() - last_exit:.1f} s after the last"


def test_killed_sidecar_cuts_the_network_and_is_replaced(server: WgWrapServer, tool: Tool) -> None:
    conf = tool.conf(server.client_config())
    url = f"http://{server.net.server4}:{HTTP_PORT}/"
    assert tool("up", "-c", str(conf)).returncode == 0
    probe = (
        "import socket, sys, time\n"
        "for i in range(40):\n"
        "    try:\n"
        f"        c = socket.create_connection(('{server.net.server4}', {HTTP_PORT}), 1)\n"
        "        c.close()\n"
        "        print('ok', flush=True)\n"
        "    except OSError as e:\n"
        "        print('fail', e.errno, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    prober = tool.popen("exec", "wg0", "--", str(tool.stage.python), "-c", probe)
    assert prober.stdout is not None and prober.stdout.readline() == "ok\n"
    (sidecar,) = tool.sidecars()
    os.kill(sidecar, signal.SIGKILL)
    # While the prober is still inside, the profile is listed dead (after
    # the last program leaves, its aftercare removes it).
    while (line := prober.stdout.readline()) == "ok\n":
        pass
    ls = tool("ls").stdout.splitlines()
    out, _ = prober.communicate(timeout=60)
    after = [line, *out.splitlines()]
    assert after and all(x.startswith("fail") for x in after[2:]), after
    assert ls[1].split()[:2] == ["wg0", "persistent"] and "dead" in ls[1], ls
    # The next start replaces it, no manual cleanup.
    again = tool("run", "-c", str(conf), "--", *_get(url))
    assert again.returncode == 0, again.stderr
    assert f"sees you as {server.net.client4}" in again.stdout
    up = tool("up", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    assert len(tool.sidecars()) == 1 and "dead" not in tool("ls").stdout


def test_stale_state_never_blocks_a_start(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    stale = tool.state_dir / "wg0"
    for path in (tool.state_dir, stale):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chown(path, tool.user.uid, tool.user.gid)
    (stale / "state.toml").write_text(
        'name = "wg0"\nmode = "ephemeral"\nsidecar_pid = 1\nsidecar_start = 1\n'
        'config_path = "/x"\nconfig_digest = "x"\nifname = "tun0"\ncreated_at = 0.0\n'
    )
    (stale / "uapi.sock").write_text("")
    for path in stale.iterdir():
        os.chown(path, tool.user.uid, tool.user.gid)
    assert "dead" in tool("ls").stdout
    result = tool("run", "-c", str(conf), "--", "true")
    assert result.returncode == 0, result.stderr
    assert tool.wait_gone(2)


def test_a_start_killed_half_way_is_stopped_and_replaced(tool: Tool) -> None:
    """The state of a start whose wrapper died before configuring the sidecar
    says ready = false: nothing joins it, and the next start stops that
    sidecar instead of leaving it running forever."""
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    (first,) = tool.sidecars()
    state = tool.state_dir / "wg0" / "state.toml"
    state.write_text(state.read_text().replace("ready = true", "ready = false"))
    assert tool("ls").stdout.splitlines()[1].split()[:2] == ["wg0", "starting"]
    joined = tool("exec", "wg0", "--", "true")
    assert joined.returncode == 1 and "is not running" in joined.stderr
    again = tool("up", "--no-wait", "-c", str(conf))
    assert again.returncode == 0, again.stderr
    (second,) = tool.sidecars()
    assert second != first
    assert tool("exec", "wg0", "--", "true").returncode == 0


def test_joining_never_imports_pyroute2(tool: Tool) -> None:
    """`exec`, and `run` on a profile that is up, only join: no pyroute2 (it
    costs ~110 ms to import), and `exec` not even the config parser."""
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    env = user_env(tool.runtime, {"PYTHONPROFILEIMPORTTIME": "1"})
    for args, absent in (
        (("exec", "wg0", "--", "true"), ("pyroute2", "wg_wrap.config", "argparse", "tomllib")),
        (("exec", "wg0", "-v", "--", "true"),
         ("pyroute2", "wg_wrap.config", "argparse", "tomllib")),
        (("run", "-c", str(conf), "--", "true"), ("pyroute2",)),
    ):
        result = run_as_user(tool.user, tool.stage.wg_wrap(*args), env=env)
        assert result.returncode == 0, result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "wg_wrap.join" in imported
        assert not {m for m in imported if m.split(".")[0] in absent or m in absent}, args


def test_back_to_back_runs_never_join_a_profile_that_is_ending(tool: Tool) -> None:
    """Each `run` ends its ephemeral profile as it ends; the next one, started
    at once, may meet that profile's sidecar in its last moment (it holds the
    lock exclusively until it is gone) and must then start afresh, not join."""
    conf = tool.conf(client_config(Keys(), next_net(), silent_udp_port()))
    for i in range(15):
        done = tool("run", "-c", str(conf), "--", "true")
        assert done.returncode == 0, (i, done.stderr)
    assert tool.wait_gone(2)
