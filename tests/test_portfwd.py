"""`--port-forward`: a forwarded port from the VPN's gateway over NAT-PMP,
kept by the sidecar inside the tunnel, as the unprivileged user against a
real wg-wrap peer, with a NAT-PMP gateway inside the peer's namespace on
its tunnel address: tests/natpmp_gateway.py (ProtonVPN's ways, a port that
moves, a gateway that reboots or refuses) — itself checked against Debian's
natpmpc in tests/test_natpmp_gateway.py."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Stage, Tool, User, as_user_argv, user_env
from peers import LineLog, WgWrapServer

pytestmark = pytest.mark.e2e

GATEWAY = (Path(__file__).parent / "natpmp_gateway.py").read_text()
READY = 30.0


class Gateway:
    """tests/natpmp_gateway.py inside the server peer's profile, listening on
    its tunnel address (where the client's 10.x.0.1 leads)."""

    def __init__(self, stage: Stage, user: User, server: WgWrapServer, *args: str) -> None:
        self.proc = subprocess.Popen(
            as_user_argv(user, [*server.inside(), str(stage.python), "-c", GATEWAY,
                                "--listen", server.net.server4, *args]),
            env=user_env(server.runtime_dir), cwd="/", text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.log = LineLog(self.proc.stdout)
        if not self.log.wait_for("ready", READY):
            self.stop()
            raise AssertionError("the NAT-PMP test gateway did not start")

    def requests(self, op: str) -> list[str]:
        return [line for line in self.log.drain() if line.startswith("request") and
                f" op={op}" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def gateway(request: pytest.FixtureRequest, stage: Stage, test_user: User,
            wgwrap_server: WgWrapServer) -> Iterator[Gateway]:
    g = Gateway(stage, test_user, wgwrap_server, *getattr(request, "param", ()))
    try:
        yield g
    finally:
        g.stop()


def status(tool: Tool, name: str = "wg0") -> dict[str, Any]:
    pf = tool.status(name).get("port_forward")
    return pf if isinstance(pf, dict) else {}


def wait_for(what: str, cond: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = cond()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)


@pytest.mark.parametrize("gateway", [("--behaviour", "protonvpn", "--external-port", "41234",
                                      "--max-lifetime", "4")], indirect=True)
def test_a_protonvpn_gateway_gives_a_port_that_is_renewed_and_shown_everywhere(
    tool: Tool, wgwrap_server: WgWrapServer, gateway: Gateway,
) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    up = tool("up", "-c", str(conf), "--port-forward")
    assert up.returncode == 0, up.stderr
    pf = wait_for("a mapping", lambda: status(tool).get("state") == "mapped" and status(tool))
    assert pf["port"] == 41234 and pf["gateway"] == f"{wgwrap_server.net.server4}:5351"
    assert sorted(pf["protocols"]) == ["tcp", "udp"] and pf["lifetime"] == 4
    # as ProtonVPN's clients ask: internal port 0, suggested external port 1, lifetime 60
    first = gateway.requests("udp")[0]
    assert " internal=0 suggested=1 lifetime=60 " in first, first
    # everywhere a user would look
    assert (tool.state_dir / "wg0" / "forwarded_port").read_text() == "41234\n"
    shown = tool("exec", "wg0", "--", "sh", "-c", "echo $WG_WRAP_FORWARDED_PORT")
    assert shown.stdout == "41234\n"
    ls = tool("ls").stdout.splitlines()
    assert ls[0].split()[-1] == "FWD" and ls[1].split()[-1] == "41234", ls
    text = tool("status", "wg0").stdout
    assert f"  port forward: port 41234 (udp, tcp) from gateway {wgwrap_server.net.server4}:5351" \
        in text, text
    # renewed before it expires (half the granted lifetime): 4 s granted,
    # so in 7 s at least three more requests per protocol, and never a lapse
    before = len(gateway.requests("udp"))
    for _ in range(14):
        time.sleep(0.5)
        assert status(tool)["state"] == "mapped"
    assert len(gateway.requests("udp")) - before >= 3
    # the program listens on it and is reached from the VPN's side
    inside = tool.inside("wg0", "import socket\n"
                         "s = socket.create_server(('', 41234)); print('ready', flush=True)\n"
                         "c, a = s.accept(); c.sendall(b'reached ' + a[0].encode()); c.close()")
    reached = subprocess.run(
        as_user_argv(tool.user, [*wgwrap_server.inside(), "python3", "-c",
                                 "import socket, sys\n"
                                 "c = socket.create_connection((sys.argv[1], 41234), 10)\n"
                                 "print(c.recv(100).decode())", wgwrap_server.net.client4]),
        env=user_env(wgwrap_server.runtime_dir), cwd="/", capture_output=True, text=True,
        timeout=30)
    assert reached.stdout.strip() == f"reached {wgwrap_server.net.server4}", reached
    assert inside is not None


@pytest.mark.parametrize("gateway", [("--behaviour", "move", "--max-lifetime", "2")],
                         indirect=True)
def test_the_command_runs_on_each_change_without_privileges(
    tool: Tool, wgwrap_server: WgWrapServer, gateway: Gateway, user_tmp: Path,
) -> None:
    log = user_tmp / "hook.log"
    conf = tool.conf(wgwrap_server.client_config())
    hook = (f"echo \"port={{port}} env=$WG_WRAP_FORWARDED_PORT "
            f"external={{external_port}} env=$WG_WRAP_FORWARDED_EXTERNAL_PORT "
            "$(grep -E '^(CapEff|CapPrm|CapAmb|NoNewPrivs)' /proc/self/status"
            " | tr -s '\\t\\n' '  ')"
            f"\" >> {log}")
    up = tool("up", "-c", str(conf), "--port-forward=6881", "--port-forward-cmd", hook)
    assert up.returncode == 0, up.stderr
    # The gateway moves the port on each renewal (every second): the command follows.
    lines = wait_for("three runs of the command", lambda: log.exists() and
                     len(log.read_text().splitlines()) >= 3 and log.read_text().splitlines())
    external = []
    for line in lines[:3]:
        found = re.match(r"port=(\d+) env=(\d+) external=(\d+) env=(\d+) (.*)$", line)
        assert found and found[1] == found[2] == "6881" and found[3] == found[4], line
        external.append(int(found[3]))
        fields = dict(re.findall(r"(\w+):\s+(\S+)", found[5]))
        assert fields == {"CapPrm": "0000000000000000", "CapEff": "0000000000000000",
                          "CapAmb": "0000000000000000", "NoNewPrivs": "1"}, line
    assert len(set(external)) == 3, external  # it moved, and was followed
    # asked for internal port 6881: the program listens there; peers see the moving one
    assert status(tool)["port"] == 6881
    assert gateway.requests("tcp")[0].split(" internal=")[1].startswith("6881 ")


@pytest.mark.parametrize("gateway", [("--behaviour", "epoch-reset", "--reset-after", "4",
                                      "--epoch-start", "1000", "--max-lifetime", "2")],
                         indirect=True)
def test_a_gateway_that_rebooted_is_asked_again(
    tool: Tool, wgwrap_server: WgWrapServer, gateway: Gateway,
) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    assert tool("up", "-c", str(conf), "--port-forward").returncode == 0
    pf = wait_for("a restart seen", lambda: status(tool).get("gateway_restarts") and status(tool))
    assert pf["gateway_restarts"] >= 1
    wait_for("mapped again", lambda: status(tool).get("state") == "mapped")


@pytest.mark.parametrize(("code", "words"), [
    (1, "unsupported version"), (2, "not authorized"), (3, "network failure"),
    (4, "out of resources"), (5, "unsupported opcode"),
])
def test_each_refusal_is_one_clear_line_and_the_tunnel_stays(
    tool: Tool, stage: Stage, test_user: User, wgwrap_server: WgWrapServer, code: int,
    words: str,
) -> None:
    g = Gateway(stage, test_user, wgwrap_server, "--behaviour", "result", "--result-code",
                str(code))
    try:
        conf = tool.conf(wgwrap_server.client_config())
        assert tool("up", "-c", str(conf), "--port-forward").returncode == 0
        pf = wait_for("the refusal", lambda: status(tool).get("last_error") and status(tool))
        assert words in pf["last_error"].lower(), pf
        assert pf.get("state") != "mapped"
        assert tool("ls").stdout.splitlines()[1].split()[-1] == "failing"
        fetch = tool("exec", "wg0", "--", "curl", "-sS", "--max-time", "5",
                     f"http://{wgwrap_server.net.server4}:8080/")
        assert "sees you as" in fetch.stdout  # the tunnel carries on
    finally:
        g.stop()


def test_no_gateway_names_the_likely_cause_and_run_starts_anyway(
    tool: Tool, wgwrap_server: WgWrapServer,
) -> None:
    """No NAT-PMP there (not a P2P server, a key made without it): the
    program starts after a bounded wait, told why; the sidecar keeps asking."""
    conf = tool.conf(wgwrap_server.client_config())
    started = time.monotonic()
    ran = tool("run", "-c", str(conf), "--port-forward", "--", "sh", "-c",
               "echo port=${WG_WRAP_FORWARDED_PORT:-none}")
    took = time.monotonic() - started
    assert ran.returncode == 0 and ran.stdout == "port=none\n", ran
    assert 9 < took < 20, took
    assert "warning: no forwarded port from the gateway within 10 s: " in ran.stderr
    assert "P2P server" in ran.stderr, ran.stderr


@pytest.mark.parametrize("gateway", [("--behaviour", "protonvpn", "--external-port", "45000")],
                         indirect=True)
def test_run_starts_its_program_with_the_port_and_a_heal_maps_again(
    tool: Tool, wgwrap_server: WgWrapServer, gateway: Gateway,
) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    ran = tool("run", "-c", str(conf), "--port-forward", "--", "sh", "-c",
               "echo port=$WG_WRAP_FORWARDED_PORT")
    assert ran.stdout == "port=45000\n", ran
    assert tool.wait_gone(3)
    # up, a program inside, the sidecar killed, healed without the flag: mapped again
    assert tool("up", "-c", str(conf), "--port-forward").returncode == 0
    wait_for("a mapping", lambda: status(tool).get("state") == "mapped")
    tool.inside("wg0", "print('ready', flush=True); import time; time.sleep(600)")
    os.kill(int(tool.status("wg0")["sidecar_pid"]), signal.SIGKILL)
    healed = tool("up", "-n", "wg0", "-c", str(conf))
    assert healed.returncode == 0 and "starting a new one" in healed.stderr, healed.stderr
    pf = wait_for("mapped after the heal", lambda: status(tool).get("state") == "mapped" and
                  status(tool))
    assert pf["port"] == 45000
    assert (tool.state_dir / "wg0" / "forwarded_port").read_text() == "45000\n"


def test_without_an_ipv4_address_the_gateway_must_be_given(tool: Tool) -> None:
    conf = tool.conf("[Interface]\nPrivateKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                     "Address = fd00:9::2/64\n\n[Peer]\n"
                     "PublicKey = QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=\n"
                     "AllowedIPs = ::/0\nEndpoint = 127.0.0.1:9\n")
    done = tool("up", "--no-wait", "-c", str(conf), "--port-forward")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"wg-wrap: error: {conf}: --port-forward needs the NAT-PMP gateway's address: the "
        "config has no IPv4 Address to guess it from",
        "wg-wrap: hint: give it with --port-forward-gateway IP",
    ]
    assert not tool.profiles() and not tool.sidecars()
    orphan = tool("up", "--no-wait", "-c", str(conf), "--port-forward-cmd", "true")
    assert orphan.returncode == 2 and "go with --port-forward" in orphan.stderr


def test_without_port_forward_nothing_of_it_runs(tool: Tool, wgwrap_server: WgWrapServer) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    assert tool("up", "-c", str(conf)).returncode == 0
    info = tool.status("wg0")
    assert "port_forward" not in info
    assert not (tool.state_dir / "wg0" / "portforward.json").exists()
    assert json.loads(tool("status", "--json", "wg0").stdout)[0].get("port_forward") is None
    # asked of a profile already running without it: said, not silently ignored
    late = tool("run", "-c", str(conf), "--port-forward", "--", "true")
    assert late.returncode == 1
    assert "is already running: -p, --socks, --http-proxy and --port-forward apply only " \
        "when a profile starts" in late.stderr, late.stderr


# ---- against Debian's miniupnpd, doing its real mapping ---------------------------------

NFT_TABLES = """\
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd;
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd;
  }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""
# miniupnpd forwards only from an address that is not reserved or private:
# this one never leaves the namespaces the test makes.
OUTSIDE, OUTSIDE_PEER = "11.0.0.1", "11.0.0.2"


def need(binary: str, package: str) -> str:
    import shutil

    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{binary} is missing: `apt-get install {package}` (.ci/run installs it)",
                    pytrace=False)
    return found


@pytest.fixture
def miniupnpd(wgwrap_server: WgWrapServer, tmp_path: Path) -> Iterator[str]:
    """miniupnpd, as root, in the server peer's network namespace: its tun0
    the inside, a veth to a namespace of the test's own ("the internet")
    the outside, its own nftables tables there. Yields that namespace's name."""
    import secrets

    daemon, nft = need("miniupnpd", "miniupnpd-nftables"), need("nft", "nftables")
    gw = ["nsenter", "-t", str(wgwrap_server.sidecar_pid()), "-n", "--"]
    outside = f"wgwrap-inet-{secrets.token_hex(3)}"
    conf = tmp_path / "miniupnpd.conf"
    conf.write_text(
        "ext_ifname=ext0\nlistening_ip=tun0\nenable_natpmp=yes\nenable_upnp=no\n"
        "ipv6_disable=yes\nsecure_mode=yes\nsystem_uptime=no\n"
        "uuid=8b1c57ec-9874-489a-b237-69f5d27c6485\n"
        f"allow 1024-65535 {wgwrap_server.net.v4}.0/24 1024-65535\n"
        "deny 0-65535 0.0.0.0/0 0-65535\n")
    proc: subprocess.Popen[str] | None = None

    def run(*argv: str, stdin: str | None = None) -> None:
        subprocess.run(list(argv), check=True, timeout=10, input=stdin, text=True)

    try:
        run("ip", "netns", "add", outside)
        run(*gw, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "inet0",
            "netns", outside)
        run("ip", "netns", "exec", outside, "ip", "addr", "add", f"{OUTSIDE_PEER}/24",
            "dev", "inet0")
        run("ip", "netns", "exec", outside, "ip", "link", "set", "inet0", "up")
        run(*gw, "ip", "addr", "add", f"{OUTSIDE}/24", "dev", "ext0")
        run(*gw, "ip", "link", "set", "ext0", "up")
        run(*gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # the server's namespace's own
        run(*gw, nft, "-f", "-", stdin=NFT_TABLES)
        proc = subprocess.Popen([*gw, daemon, "-f", str(conf), "-P", str(tmp_path / "pid"),
                                 "-d"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        wait_for("miniupnpd listening on 5351", lambda: "5351" in subprocess.run(
            [*gw, "ss", "-Hlun", "sport = :5351"], capture_output=True, text=True,
            timeout=10).stdout, timeout=10)
        yield outside
    finally:
        if proc is not None:
            proc.terminate()
            _, log = proc.communicate(timeout=10)
            print(log)
        subprocess.run(["ip", "netns", "del", outside], capture_output=True, timeout=10)


def test_miniupnpd_forwards_the_port_to_the_wrapped_program(
    tool: Tool, stage: Stage, wgwrap_server: WgWrapServer, miniupnpd: str,
) -> None:
    from reachkit import SERVICE

    conf = tool.conf(wgwrap_server.client_config())
    up = tool("up", "-c", str(conf), "--port-forward=8090")
    assert up.returncode == 0, up.stderr
    pf = wait_for("a mapping", lambda: status(tool).get("state") == "mapped" and status(tool))
    assert pf["port"] == 8090 and sorted(pf["protocols"]) == ["tcp", "udp"], pf
    assert pf["external_address"] == OUTSIDE, pf
    external = pf["external_port"]
    tool.inside("wg0", SERVICE, "tcp:0.0.0.0:8090", "udp:0.0.0.0:8090")
    # From "the internet" to the gateway's outside address: miniupnpd's DNAT,
    # the server's tunnel, the wrapped program. TCP and UDP.
    reach = ("import socket, sys\n"
             "host, port = sys.argv[1], int(sys.argv[2])\n"
             "t = socket.create_connection((host, port), timeout=10)\n"
             "print(t.recv(100).decode().strip())\n"
             "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10)\n"
             "u.sendto(b'datagram', (host, port))\n"
             "print(u.recv(100).decode().strip())\n")
    done = subprocess.run(["ip", "netns", "exec", miniupnpd, str(stage.python), "-c", reach,
                           OUTSIDE, str(external)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    tcp, udp = done.stdout.splitlines()
    assert tcp.startswith(f"from {OUTSIDE_PEER}:"), tcp  # the peer's own address, not NATed
    assert udp.startswith(f"{OUTSIDE_PEER}:") and udp.endswith(" datagram"), udp


@pytest.mark.parametrize("gateway", [("--behaviour", "silent",)], indirect=True)
def test_a_silent_gateway_is_asked_as_the_rfc_says_and_run_starts_anyway(
    tool: Tool, wgwrap_server: WgWrapServer, gateway: Gateway,
) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    ran = tool("run", "-c", str(conf), "--port-forward", "--", "sh", "-c",
               "echo port=${WG_WRAP_FORWARDED_PORT:-none}")
    assert ran.returncode == 0 and ran.stdout == "port=none\n", ran
    assert "warning: no forwarded port from the gateway within 10 s: no answer yet" \
        in ran.stderr, ran.stderr
    # RFC 6886 §3.1: resent after 250 ms, then each wait twice the last
    times = [float(re.search(r" t=([\d.]+) ", line)[1])  # type: ignore[index]
             for line in gateway.requests("udp")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 4, times
    for gap, want in zip(gaps, (0.25, 0.5, 1.0, 2.0), strict=False):
        assert want * 0.8 < gap < want * 1.5 + 0.1, (gaps, times)
