"""`wg-wrap check`: the leak self-test passes on a good profile, and each of
its lines fails when what it checks is broken on purpose.

The profiles run as the unprivileged user against real peers; the breakage
is done as root with nsenter(1) in the profile's own namespaces (nothing on
the host changes), or with a config that is wrong in the way checked.
"""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

import pytest
from conftest import Stage, Tool, User
from peers import Keys, Server, client_config, next_net

from wg_wrap import check

pytestmark = pytest.mark.e2e

LINES = ["interfaces", "routes (IPv4)", "routes (IPv6)", "resolv.conf", "resolver sockets",
         "DNS lookup", "IPv6", "identity", "runtime state", "sidecar sockets",
         "capabilities in reach", "handshake"]




def run_check(tool: Tool, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = tool("check", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    lines = {c["name"]: c for c in report["checks"]}
    assert list(lines) == LINES
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, lines


def failed(lines: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, c in lines.items() if not c["ok"]]


def up(tool: Tool, conf_text: str, name: str = "chk") -> int:
    conf = tool.file(f"{name}.conf", conf_text)
    result = tool("up", "--no-wait", "-c", str(conf))
    assert result.returncode == 0, result.stderr
    pid = tool.status(name)["sidecar_pid"]
    assert isinstance(pid, int)
    return pid


def inside(pid: int, *argv: str, namespaces: tuple[str, ...] = ("--net",)) -> None:
    """As root, in the profile's namespaces: break something on purpose."""
    subprocess.run(["nsenter", f"--target={pid}", *namespaces, "--", *argv],
                   check=True, timeout=30, capture_output=True)


def test_check_passes_on_a_good_profile(server: Server, tool: Tool) -> None:
    up(tool, server.client_config())
    code, lines = run_check(tool, "chk")
    assert code == 0, lines
    assert lines["interfaces"]["detail"] == "lo, tun0"
    assert lines["resolv.conf"]["detail"] == f"nameserver {server.net.server4} via tun0"
    assert lines["IPv6"]["detail"].startswith(f"through the tunnel, as {server.net.client6}/64")
    text = tool("check", "chk")
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1] == "12 of 12 checks passed"
    assert all(line.startswith("  PASS  ") for line in text.stdout.splitlines()[1:-1])


def test_check_of_a_fresh_profile_leaves_nothing(server: Server, tool: Tool) -> None:
    conf = tool.file("fresh.conf", server.client_config())
    code, lines = run_check(tool, "-c", str(conf))
    assert code == 0, lines
    assert tool.wait_gone(3)


def test_each_line_fails_on_purpose(wgwrap_server: Server, tool: Tool, stage: Stage,
                                    test_user: User) -> None:
    server = wgwrap_server
    pid = up(tool, server.client_config())
    # An interface that is not the tunnel.
    inside(pid, "ip", "tuntap", "add", "dev", "leak0", "mode", "tun")
    # Routes out of the tunnel: to lo (the only other device) for a
    # non-loopback network, IPv4 and IPv6; and the IPv6 internet, likewise.
    inside(pid, "ip", "route", "add", "198.51.100.0/24", "dev", "lo")
    inside(pid, "ip", "-6", "route", "add", "2000::/3", "dev", "lo")
    # A resolver socket made visible: a tmpfs over /run in the profile's
    # mount namespace only, holding an nscd socket.
    bind = "import socket; socket.socket(socket.AF_UNIX).bind('/run/nscd/socket')"
    inside(pid, "sh", "-c", "mount -t tmpfs wg-wrap-test /run && mkdir /run/nscd && "
           f'{stage.python} -c "{bind}"', namespaces=("--mount",))
    code, lines = run_check(tool, "chk")
    assert code == 1
    assert "leak0" in lines["interfaces"]["detail"]
    assert "198.51.100.0/24 dev lo" in lines["routes (IPv4)"]["detail"]
    assert "2000::/3 dev lo" in lines["routes (IPv6)"]["detail"]
    assert lines["IPv6"]["detail"] == "IPv6 to 2000::1 would leave through lo, not tun0"
    assert lines["resolver sockets"]["detail"].endswith("/run/nscd/socket")
    assert set(failed(lines)) == {"interfaces", "routes (IPv4)", "routes (IPv6)",
                                  "resolver sockets", "IPv6"}

    # A process inside with another identity and without no_new_privs: the
    # probe, run by root into the profile's namespaces, is judged as a
    # wrapped program.
    probe = subprocess.run(
        ["nsenter", f"--target={pid}", "--user", "--preserve-credentials", "--net", "--mount", "--",
         str(stage.python), "-m", "wg_wrap.probe"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert probe.returncode == 0, probe.stderr
    expected = check.Expected(ifname="tun0", uid=test_user.uid, gid=test_user.gid,
                              handshake=None, now=0.0)
    (identity,) = [line for line in check.evaluate(json.loads(probe.stdout), expected)
                   if line.name == "identity"]
    assert not identity.ok and "no_new_privs is not set" in identity.detail
    assert "uid" in identity.detail

    # The walls around wg-wrap itself. The probe as the user in the
    # profile's user namespace only, so in the host's mount and network
    # namespaces: it sees the runtime directory and reaches the sidecar's
    # sockets. And as root on the host (every capability): it gets into the
    # sidecar.
    state = tool.status("chk")
    base = tool.runtime / "wg-wrap"
    st = base.stat()
    uapi = f"@wg-wrap/{test_user.uid}/{state_token(tool)}/uapi"
    walls = check.Expected(ifname="tun0", uid=test_user.uid, gid=test_user.gid, handshake=None,
                           now=0.0, hidden=((str(base), st.st_dev, st.st_ino),))
    outside = subprocess.run(
        ["nsenter", f"--target={pid}", "--user", f"--setuid={test_user.uid}",
         f"--setgid={test_user.gid}", "--", str(stage.python), "-m", "wg_wrap.probe",
         "--hidden", str(base), "--socket", uapi],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert outside.returncode == 0, outside.stderr
    judged = {line.name: line for line in check.evaluate(json.loads(outside.stdout), walls)}
    assert judged["runtime state"].detail.startswith(
        f"wg-wrap's own directories are seen inside: {base} (chk)"), judged["runtime state"]
    assert judged["sidecar sockets"].detail == f"reachable from inside: {uapi}"
    root = subprocess.run([str(stage.python), "-m", "wg_wrap.probe", "--sidecar", str(pid)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert root.returncode == 0, root.stderr
    judged.update((line.name, line) for line in check.evaluate(json.loads(root.stdout), walls)
                  if line.name == "capabilities in reach")
    reach = judged["capabilities in reach"]
    assert reach.detail.startswith(f"the sidecar (pid {pid}) is within reach: /proc/{pid}/fd/"), \
        reach
    assert not any(judged[n].ok for n in ("runtime state", "sidecar sockets",
                                          "capabilities in reach"))
    assert state["running"]


def state_token(tool: Tool) -> str:
    """The token of profile chk's socket addresses, from its state (read as root)."""
    import tomllib

    with open(tool.state_dir / "chk" / "state.toml", "rb") as f:
        token = tomllib.load(f)["sockets"]
    assert isinstance(token, str)
    return token


def test_a_nameserver_outside_the_allowed_ips_fails(wgwrap_server: Server, tool: Tool) -> None:
    net = wgwrap_server.net
    conf = wgwrap_server.client_config(
        dns=False, extra="DNS = 192.0.2.53\n", allowed=f"{net.v4}.0/24, {net.v6}/64"
    )
    up(tool, conf)
    code, lines = run_check(tool, "chk")
    assert code == 1
    assert lines["resolv.conf"]["detail"] == \
        "nameserver not routed into tun0: 192.0.2.53 -> no route"
    assert set(failed(lines)) == {"resolv.conf", "DNS lookup"}


def test_a_silent_nameserver_fails_the_lookup(wgwrap_server: Server, tool: Tool) -> None:
    net = wgwrap_server.net
    up(tool, wgwrap_server.client_config(dns=False, extra=f"DNS = {net.v4}.77\n"))
    code, lines = run_check(tool, "chk")
    assert code == 1
    assert lines["DNS lookup"]["detail"] == f"no answer from {net.v4}.77 (no answer)"
    assert failed(lines) == ["DNS lookup"]


def test_no_handshake_fails(tool: Tool) -> None:
    # A peer endpoint where nothing answers: a UDP socket the test holds.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        conf = tool.file("mute.conf", client_config(Keys(), next_net(), silent.getsockname()[1]))
        code, lines = run_check(tool, "-c", str(conf))
    assert code == 1
    assert lines["handshake"]["detail"] == "never: the peer has not answered"
    assert failed(lines) == ["DNS lookup", "handshake"]  # nothing gets through
    assert tool.wait_gone(3)


def test_check_needs_a_running_profile(tool: Tool) -> None:
    result = tool("check", "nosuch")
    assert result.returncode == 1
    assert result.stderr.startswith("wg-wrap: error: profile 'nosuch' is not running")
    result = tool("check")
    assert result.returncode == 1 and "no profile is running" in result.stderr
