"""A wrapped program that tries: nothing inside may reach out.

Each test plays a deliberate program (a compromised browser) inside a
profile, as the unprivileged user, against a real peer, and tries what an
attacker would: the sidecar's UAPI socket (the private key, and a peer of its
choosing sent from the host's socket), its control socket, the state wg-wrap
trusts, another profile's, the sidecar itself, a user namespace of its own to
be healed into.  Each attempt must fail where, before these walls, it worked
(see README "What wg-wrap guarantees, and its limits").  Proxy walls (the
namespace's loopback, a stranger's UDP) are in tests/test_proxy.py; the
launcher's (it runs nothing but the sidecar) in tests/test_launcher.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import Stage, Tool, aftercares_of, as_user_argv, user_env
from peers import HTTP_PORT, WgWrapServer, next_net

pytestmark = pytest.mark.e2e

# What the deliberate program does; argv: a JSON object of what it was told.
HOSTILE = r"""
import ctypes, json, os, socket, sys
task = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
seen = {}

def err(e):
    return e.strerror or str(e)

# Everything under wg-wrap's directories, as the namespace shows them.
listing = {}
for base in task["dirs"]:
    found = []
    try:
        for root, dirs, files in os.walk(base):
            found += [os.path.join(root, n) for n in dirs + files]
    except OSError as e:
        found = ["error: " + err(e)]
    listing[base] = found
seen["listing"] = listing

# Connect to every socket there, and to every address wg-wrap uses.
reached = []
for path in [p for found in listing.values() for p in found if not p.startswith("error")]:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
        reached.append(path)
    except OSError:
        pass
tried = {}
for address in task["sockets"]:
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.connect("\0" + address[1:])
            reached.append(address)
            if kind == socket.SOCK_STREAM:  # what the attack was: read the private key
                s.sendall(b"get=1\n\n")
                seen["uapi_reply"] = s.recv(200).decode(errors="replace")
            else:  # a socket on the host's network (the multi-hop verb), a lookup there
                s.send(b'{"op":"udp-socket"}')
                seen["control_reply"] = s.recv(200).decode(errors="replace")
        except OSError as e:
            tried[address] = err(e)
seen["reached"] = reached
seen["refused"] = tried
with open("/proc/net/unix") as f:
    seen["abstract_wg_wrap"] = [line.split()[-1] for line in f if "wg-wrap" in line]

# The state wg-wrap trusts: read it, then forge it.
state = task["state"]
try:
    with open(state) as f:
        seen["state_read"] = f.read()
except OSError as e:
    seen["state_read"] = "error: " + err(e)
try:
    os.makedirs(os.path.dirname(state), exist_ok=True)
    with open(state, "w") as f:
        f.write('sidecar_pid = 1\nconfig_path = "/tmp/evil.conf"\nready = true\n')
    seen["state_forged"] = "written"
except OSError as e:
    seen["state_forged"] = "error: " + err(e)

# The sidecar, which holds the host's sockets and capabilities.
pid = task["sidecar"]
into = {}
for n in range(12):
    try:
        os.close(os.open(f"/proc/{pid}/fd/{n}", os.O_PATH))
        into[f"/proc/{pid}/fd/{n}"] = "opened"
    except OSError as e:
        into[f"/proc/{pid}/fd/{n}"] = err(e)
pidfd = os.pidfd_open(pid)
for n in range(12):
    fd = libc.syscall(438, pidfd, n, 0)  # pidfd_getfd
    into[f"pidfd_getfd {n}"] = "got it" if fd >= 0 else os.strerror(ctypes.get_errno())
PTRACE_SEIZE = 0x4206
into["ptrace"] = ("attached" if libc.ptrace(PTRACE_SEIZE, pid, 0, 0) == 0
                  else os.strerror(ctypes.get_errno()))
for path in (f"/proc/{pid}/root", f"/proc/{pid}/cwd", f"/proc/{task['aftercare']}/cwd",
             f"/proc/{task['aftercare']}/root"):
    try:
        os.listdir(path)
        into[path] = "listed"
    except OSError as e:
        into[path] = err(e)
seen["into"] = into
print(json.dumps(seen))
"""


def state_of(tool: Tool, name: str) -> dict[str, Any]:
    with open(tool.state_dir / name / "state.toml", "rb") as f:
        return tomllib.load(f)


def address(tool: Tool, name: str, kind: str) -> str:
    return f"@wg-wrap/{tool.user.uid}/{state_of(tool, name)['sockets']}/{kind}"


def up(tool: Tool, server: WgWrapServer, name: str, env: dict[str, str] | None = None) -> Path:
    conf = tool.file(f"{name}.conf", server.client_config())
    result = tool("up", "-c", str(conf), env=env)
    assert result.returncode == 0, result.stderr
    return conf


def fetch(tool: Tool, name: str, server: WgWrapServer) -> None:
    url = f"http://{server.net.server4}:{HTTP_PORT}/"
    page = tool("exec", name, "--", "curl", "-sS", "--max-time", "10", url)
    assert page.returncode == 0 and f"sees you as {server.net.client4}" in page.stdout, page


def test_a_program_reaches_nothing_of_wg_wrap(
    wgwrap_server: WgWrapServer, tool: Tool, stage: Stage
) -> None:
    # Configs by name, with their keys, where wg-wrap finds them.
    configs = tool.workdir / "configs" / "wg-wrap"
    configs.mkdir(parents=True)
    (configs / "other.conf").write_text(wgwrap_server.client_config())
    for p in (configs.parent, configs, configs / "other.conf"):
        os.chown(p, tool.user.uid, tool.user.gid)
    env = {"XDG_CONFIG_HOME": str(configs.parent)}
    up(tool, wgwrap_server, "a", env)
    other = WgWrapServer(stage, tool.user, next_net())
    try:
        up(tool, other, "b", env)
        host_state = (tool.state_dir / "a" / "state.toml").read_bytes()
        sidecar = state_of(tool, "a")["sidecar_pid"]
        mine = f"{tool.state_dir}/a".encode()
        (aftercare,) = [p for p in aftercares_of(tool.user, tool.runtime)
                        if mine in Path(f"/proc/{p}/cmdline").read_bytes()]
        task = {
            "dirs": [str(tool.state_dir), f"/tmp/wg-wrap-{tool.user.uid}", str(configs)],
            "sockets": [address(tool, n, k) for n in ("a", "b") for k in ("uapi", "control")],
            "state": str(tool.state_dir / "a" / "state.toml"),
            "sidecar": sidecar, "aftercare": aftercare,
        }
        hostile = tool("exec", "a", "--", str(stage.python), "-c", HOSTILE, json.dumps(task),
                       env=env)
        assert hostile.returncode == 0, hostile.stderr
        seen = json.loads(hostile.stdout)

        # wg-wrap's directories show nothing: no profile, no state, no key.
        assert seen["listing"] == {d: [] for d in task["dirs"]}, seen["listing"]
        # No socket of any profile: not by path, not at their addresses.
        assert seen["reached"] == [] and "uapi_reply" not in seen and "control_reply" not in seen
        assert set(seen["refused"]) == set(task["sockets"])
        assert set(seen["refused"].values()) == {"Connection refused"}
        assert seen["abstract_wg_wrap"] == []
        # The state: not there to read; what the program writes lands in
        # its own empty directory, and the host's state is untouched.
        assert seen["state_read"].startswith("error: No such file"), seen["state_read"]
        assert seen["state_forged"] == "written"
        assert (tool.state_dir / "a" / "state.toml").read_bytes() == host_state
        # The sidecar and the aftercare: refused, whatever the way.
        into = seen["into"]
        got_in = ("opened", "got it", "attached", "listed")
        assert not [k for k, v in into.items() if v in got_in], into
        assert into["ptrace"] == "Operation not permitted"
        assert into["pidfd_getfd 3"] == "Operation not permitted"
        # And the profiles work as before.
        fetch(tool, "a", wgwrap_server)
        fetch(tool, "b", other)
    finally:
        tool("down", "--force", "b")
        other.stop()


def test_the_uapi_socket_serves_only_its_user(
    wgwrap_server: WgWrapServer, tool: Tool, stage: Stage
) -> None:
    """The addresses are in the host's abstract namespace, which every local
    user shares: the sidecar asks the kernel who connected, and serves only
    its own user (the socket file's 0600 did that before)."""
    up(tool, wgwrap_server, "a")

    def as_nobody(kind: str, ask: str, where: str) -> str:
        """Connect to ``where`` as user nobody and ``ask``: what came back."""
        done = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--",
             str(stage.python), "-c",
             "import socket, sys\n"
             f"s = socket.socket(socket.AF_UNIX, {kind}); s.settimeout(5)\n"
             "s.connect('\\0' + sys.argv[1][1:])\n"
             "try:\n"
             f"    {ask}\n"
             "except (ConnectionResetError, BrokenPipeError):\n"
             "    print('reset')\n",
             where],
            capture_output=True, text=True, timeout=30, cwd="/",
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Accepted by the kernel, closed by the sidecar unread.
    got = as_nobody("socket.SOCK_STREAM", "s.sendall(b'get=1\\n\\n'); print(repr(s.recv(100)))",
                    address(tool, "a", "uapi"))
    assert got in ("b''\n", "reset\n"), got
    # Nor the control socket: no socket of the profile's (udp-socket) for a stranger.
    got = as_nobody("socket.SOCK_SEQPACKET",
                    "s.send(b'{\"op\":\"udp-socket\"}'); "
                    "data, fds, _, _ = s.recvmsg(100, socket.CMSG_SPACE(16)); "
                    "print(repr(data), len(fds))",
                    address(tool, "a", "control"))
    assert got in ("b'' 0\n", "reset\n"), got
    mine = tool("status", "a")
    assert mine.returncode == 0 and "latest handshake" in mine.stdout


def start_inside(tool: Tool, name: str, *argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        as_user_argv(tool.user, tool.stage.wg_wrap("exec", name, "--", *argv)),
        env=user_env(tool.runtime), cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    tool.services.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


NESTED_SLEEPER = ("unshare", "--user", "--map-root-user", "--mount",
                  "sh", "-c", "echo ready; exec sleep 600")
SLEEPER = ("sh", "-c", "echo ready; exec sleep 600")


def namespaces(pid: int) -> tuple[str, ...]:
    return tuple(os.readlink(f"/proc/{pid}/ns/{k}") for k in ("user", "net", "mnt"))


def test_a_nested_user_namespace_is_never_a_way_in(
    wgwrap_server: WgWrapServer, tool: Tool
) -> None:
    """A program makes a user namespace of its own (where it holds every
    capability), and kills the sidecar: the heal enters through another
    program, never that one, and says so; with only that one left, it
    starts afresh."""
    conf = up(tool, wgwrap_server, "a")
    (sidecar,) = tool.sidecars()
    profile = namespaces(sidecar)
    plain = start_inside(tool, "a", *SLEEPER)
    nested = start_inside(tool, "a", *NESTED_SLEEPER)
    assert namespaces(nested.pid)[0] != profile[0], "the program's own user namespace"
    assert namespaces(nested.pid)[1] == profile[1], "still in the profile's network"
    os.kill(sidecar, signal.SIGKILL)  # as the program could: it is the same user

    healed = tool("up", "-c", str(conf))
    assert healed.returncode == 0, healed.stderr
    assert (f"not entering through process {nested.pid}: it is in namespaces of its own, "
            "not the profile's") in healed.stderr
    assert "starting a new one in their namespaces" in healed.stderr
    (new,) = tool.sidecars()
    assert namespaces(new) == profile
    fetch(tool, "a", wgwrap_server)

    # Only the nested one left: it is no way in; a new profile starts afresh.
    plain.kill()
    plain.wait(10)
    os.kill(new, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while tool.sidecars() and time.monotonic() < deadline:
        time.sleep(0.02)
    again = tool("up", "-c", str(conf))
    assert again.returncode == 0, again.stderr
    assert f"not entering through process {nested.pid}" in again.stderr
    assert "starting a new one in their namespaces" not in again.stderr
    (fresh,) = tool.sidecars()
    assert namespaces(fresh)[0] not in (profile[0], namespaces(nested.pid)[0])
    fetch(tool, "a", wgwrap_server)


def test_state_pointing_at_a_nested_namespace_is_refused(
    wgwrap_server: WgWrapServer, tool: Tool
) -> None:
    """Were the state writable (it is not: the first test), pointing it at a
    process in a user namespace a program made gets nothing: the launcher
    checks, once in, that the user namespace is a child of the caller's."""
    up(tool, wgwrap_server, "a")
    nested = start_inside(tool, "a", *NESTED_SLEEPER)
    path = tool.state_dir / "a" / "state.toml"
    text = path.read_text()
    user, net, mnt = namespaces(nested.pid)
    start = Path(f"/proc/{nested.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    forged = {"sidecar_pid": str(nested.pid), "sidecar_start": start,
              "userns": f'"{user}"', "netns": f'"{net}"', "mntns": f'"{mnt}"'}
    lines = [f"{k} = {forged[k]}" if (k := line.partition(" = ")[0]) in forged else line
             for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")  # as root, standing in for a program
    joined = tool("exec", "a", "--", "sh", "-c", "echo joined")
    assert joined.returncode == 125, joined
    assert joined.stdout == ""
    assert joined.stderr == ("wg-wrap-launcher: refusing: the user namespace is not a child of "
                             "the caller's (a namespace made inside a profile)\n")


def test_up_by_name_never_takes_a_config_from_the_state(
    wgwrap_server: WgWrapServer, tool: Tool
) -> None:
    """`up -n NAME` of a profile whose sidecar died names the config it was
    started with, and uses only what the user gives."""
    conf = up(tool, wgwrap_server, "a")
    start_inside(tool, "a", *SLEEPER)
    evil = tool.file("evil.conf", wgwrap_server.client_config(extra="MTU = 1300\n"))
    path = tool.state_dir / "a" / "state.toml"
    path.write_text(path.read_text().replace(str(conf), str(evil)))  # as root: tampered
    (sidecar,) = tool.sidecars()
    os.kill(sidecar, signal.SIGKILL)
    named = tool("up", "-n", "a")
    assert named.returncode == 1
    assert f"`wg-wrap up -n a -c {evil}`" in named.stderr  # named, never used
    assert not tool.sidecars()
    healed = tool("up", "-n", "a", "-c", str(conf))
    assert healed.returncode == 0, healed.stderr
    assert tool.status("a")["mtu"] == 1420


def test_nesting_still_works_and_check_passes(
    wgwrap_server: WgWrapServer, tool: Tool, stage: Stage
) -> None:
    """wg-wrap inside a profile: a second tunnel through the first, to a peer
    that is itself nested inside the first peer's namespace."""
    up(tool, wgwrap_server, "a")
    inner = WgWrapServer(stage, tool.user, next_net(), listen=wgwrap_server.net.server4,
                         within=wgwrap_server)
    try:
        conf = tool.file("b.conf", inner.client_config(host=wgwrap_server.net.server4))
        wg_wrap = [str(stage.python), "-m", "wg_wrap"]
        url = f"http://{inner.net.server4}:{HTTP_PORT}/"
        page = tool("exec", "a", "--", *wg_wrap, "run", "-c", str(conf), "--",
                    "curl", "-sS", "--max-time", "10", url)
        assert page.returncode == 0, page.stderr
        assert f"sees you as {inner.net.client4}" in page.stdout
        outer_check = tool("check", "a")
        assert outer_check.returncode == 0, outer_check.stdout
        inner_check = tool("exec", "a", "--", *wg_wrap, "check", "-c", str(conf))
        assert inner_check.returncode == 0, inner_check.stdout + inner_check.stderr
        assert inner_check.stdout.splitlines()[-1] == "12 of 12 checks passed"
    finally:
        inner.stop()
