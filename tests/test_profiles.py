"""Profiles: persistent tunnels (`up`/`exec`/`down`), `ls`/`status`, and the
lifetime rules of ephemeral ones, as the unprivileged user against a real
wg-wrap server peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, User, as_user_argv, run_as_user, sidecars_of, user_env
from peers import HTTP_PORT, Keys, WgWrapServer, client_config, free_udp_port, next_net

pytestmark = pytest.mark.e2e



@pytest.fixture
def server(wgwrap_server: WgWrapServer) -> WgWrapServer:
    return wgwrap_server


class Tool:
    """wg-wrap as the test user, with one runtime directory."""

    def __init__(self, stage: Stage, user: User, runtime: Path, workdir: Path) -> None:
        self.stage, self.user, self.runtime, self.workdir = stage, user, runtime, workdir

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_as_user(self.user, self.stage.wg_wrap(*args), env=user_env(self.runtime),
                           timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            as_user_argv(self.user, self.stage.wg_wrap(*args)), env=user_env(self.runtime),
            cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def conf(self, text: str, name: str = "wg0.conf") -> Path:
        path = self.workdir / name
        path.write_text(text)
        os.chown(path, self.user.uid, self.user.gid)
        path.chmod(0o600)
        return path

    @property
    def state(self) -> Path:
        return self.runtime / "wg-wrap"

    def profiles(self) -> list[str]:
        return sorted(p.name for p in self.state.iterdir()) if self.state.exists() else []

    def sidecars(self) -> set[int]:
        """Sidecars of this runtime directory's profiles."""
        return sidecars_of(self.user, self.runtime)

    def wait_gone(self, timeout: float) -> bool:
        """True once no sidecar and no profile directory is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sidecars() and not self.profiles():
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def tool(stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path) -> Iterator[Tool]:
    t = Tool(stage, test_user, user_runtime_dir, user_tmp)
    try:
        yield t
    finally:
        for name in t.profiles():
            t("down", "--force", name)
        for pid in t.sidecars():
            os.kill(pid, signal.SIGKILL)


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
        "NAME", "MODE", "PID", "ATTACHED", "ENDPOINT", "HANDSHAKE", "RX", "TX", "REACH",
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
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    start = time.monotonic()
    up = tool("up", "--timeout", "2", "-c", str(conf))
    assert up.returncode == 1
    assert "no handshake with 127.0.0.1:" in up.stderr and "within 2 s" in up.stderr
    assert "--no-wait" in up.stderr
    assert time.monotonic() - start < 10
    assert tool.wait_gone(1)


def test_persistent_profile_stays_with_nothing_attached(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    assert tool("exec", "wg0", "--", "true").returncode == 0
    time.sleep(2.5)  # longer than an ephemeral profile would last
    assert len(tool.sidecars()) == 1 and tool.profiles() == ["wg0"]
    assert tool("down", "wg0").returncode == 0
    assert tool.wait_gone(2)


def test_run_joins_a_running_profile_and_refuses_another_config(tool: Tool) -> None:
    net = next_net()
    conf = tool.conf(client_config(Keys(), net, free_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    inside = tool("exec", "wg0", "--", "readlink", "/proc/self/ns/net").stdout
    joined = tool("run", "-c", str(conf), "--", "readlink", "/proc/self/ns/net")
    assert joined.returncode == 0, joined.stderr
    assert joined.stdout == inside and inside.startswith("net:[")
    assert len(tool.sidecars()) == 1
    other = tool.conf(client_config(Keys(), net, free_udp_port()), name="other.conf")
    clash = tool("run", "-n", "wg0", "-c", str(other), "--", "true")
    assert clash.returncode == 1
    assert "profile 'wg0' is running with a different config" in clash.stderr
    assert tool("up", "-n", "wg0", "--no-wait", "-c", str(other)).returncode == 1


def test_down_refuses_while_attached_unless_forced(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    sleeper = tool.popen("exec", "wg0", "--", "sleep", "30")
    try:
        deadline = time.monotonic() + 5
        while "sleep" not in tool("status", "wg0").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = tool("down", "wg0")
        assert refused.returncode == 1
        assert "has 1 attached process" in refused.stderr and "(sleep)" in refused.stderr
        assert tool.profiles() == ["wg0"]
        forced = tool("down", "--force", "wg0")
        assert forced.returncode == 0, forced.stderr
        assert tool.wait_gone(2)
    finally:
        sleeper.kill()
        sleeper.communicate()


def test_ephemeral_profile_ends_2s_after_last_process_even_if_wrappers_are_killed(
    tool: Tool,
) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    # The command outlives its wrapper: it ends 3 s from now, on its own.
    wrapper = tool.popen("run", "-c", str(conf), "--", "sh", "-c", "echo started; exec sleep 3")
    assert wrapper.stdout is not None and wrapper.stdout.readline() == "started\n"
    started = time.monotonic()
    joiner = tool.popen("exec", "wg0", "--", "sleep", "30")
    time.sleep(0.5)
    for proc in (wrapper, joiner):
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # not communicate(): the orphaned commands still hold the pipes
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    # The joiner's sleep is orphaned inside: kill it (as a user would); the
    # first command's sleep goes on until its 3 s are over.
    killed = subprocess.run(["pkill", "-KILL", "-u", str(tool.user.uid), "-f", "-x", "sleep 30"],
                            check=False)
    assert killed.returncode == 0
    assert len(tool.sidecars()) == 1, "the profile lives while a process is inside"
    time.sleep(max(0.0, 3 - (time.monotonic() - started) - 0.3))
    assert len(tool.sidecars()) == 1
    assert tool.wait_gone(3 - (time.monotonic() - started) + 2), "not torn down within 2 s"
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
    out, _ = prober.communicate(timeout=60)
    after = out.splitlines()
    assert after and all(line.startswith("fail") for line in after[2:]), after
    ls = tool("ls").stdout.splitlines()
    assert ls[1].split()[:2] == ["wg0", "persistent"] and "dead" in ls[1]
    # The next start replaces it, no manual cleanup.
    again = tool("run", "-c", str(conf), "--", *_get(url))
    assert again.returncode == 0, again.stderr
    assert f"sees you as {server.net.client4}" in again.stdout
    up = tool("up", "-c", str(conf))
    assert up.returncode == 0, up.stderr
    assert len(tool.sidecars()) == 1 and "dead" not in tool("ls").stdout


def test_stale_state_never_blocks_a_start(tool: Tool) -> None:
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    stale = tool.state / "wg0"
    for path in (tool.state, stale):
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
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    (first,) = tool.sidecars()
    state = tool.state / "wg0" / "state.toml"
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
    conf = tool.conf(client_config(Keys(), next_net(), free_udp_port()))
    assert tool("up", "--no-wait", "-c", str(conf)).returncode == 0
    env = user_env(tool.runtime, {"PYTHONPROFILEIMPORTTIME": "1"})
    for args, absent in (
        (("exec", "wg0", "--", "true"), ("pyroute2", "wg_wrap.config", "argparse", "tomllib")),
        (("run", "-c", str(conf), "--", "true"), ("pyroute2",)),
    ):
        result = run_as_user(tool.user, tool.stage.wg_wrap(*args), env=env)
        assert result.returncode == 0, result.stderr
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "wg_wrap.join" in imported
        assert not {m for m in imported if m.split(".")[0] in absent or m in absent}, args
