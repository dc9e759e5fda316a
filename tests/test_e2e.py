"""End to end: `wg-wrap run` as an unprivileged user against real peers.

Each test starts real namespaces, a real TUN device and the real sidecar, and
talks to a real WireGuard peer on loopback: a second wg-wrap acting as the
server, and Debian's stock wireguard-go configured by `wg`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import Stage, User, run_as_user, sidecars_of, user_env
from peers import (
    DNS_NAME,
    HTTP_PORT,
    UDP_PORT,
    Keys,
    Server,
    client_config,
    next_net,
    silent_udp_port,
)

pytestmark = pytest.mark.e2e




def write_conf(user_tmp: Path, user: User, text: str, name: str = "client.conf") -> Path:
    path = user_tmp / name
    path.write_text(text)
    os.chown(path, user.uid, user.gid)
    path.chmod(0o600)
    return path


def wg_wrap_run(
    stage: Stage, user: User, runtime: Path, conf: Path, *command: str, timeout: float = 60,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    argv = stage.wg_wrap("run", *extra, "-c", str(conf), "--", *command)
    return run_as_user(user, argv, env=user_env(runtime), timeout=timeout)


def _python(stage: Stage, code: str) -> tuple[str, ...]:
    return (str(stage.python), "-c", code)


def test_http_over_ipv4_and_ipv6_through_the_tunnel(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, server.client_config())
    net = server.net
    script = (
        f"curl -sS --max-time 10 http://{net.server4}:{HTTP_PORT}/ && curl -sS --max-time 10 http://[{net.server6}]:{HTTP_PORT}/"
    )
    result = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert f"the peer sees you as {net.client4}\n" in result.stdout
    assert f"the peer sees you as {net.client6}\n" in result.stdout
    assert server.log.wait_for(f"http {net.client4} /", 5)
    assert server.log.wait_for(f"http {net.client6} /", 5)


def test_dns_from_config_resolves_through_the_tunnel(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, server.client_config(dns=True))
    result = wg_wrap_run(
        stage, test_user, user_runtime_dir, conf, "sh", "-c",
        f"cat /etc/resolv.conf; getent ahostsv4 {DNS_NAME}; getent ahostsv6 {DNS_NAME}",
    )
    assert result.returncode == 0, result.stderr
    assert f"nameserver {server.net.server4}" in result.stdout
    assert "search wg-wrap.test" in result.stdout
    assert server.net.server4 in result.stdout.split("search", 1)[1]
    assert server.net.server6 in result.stdout.split("search", 1)[1]
    # The query reached the peer's DNS server from the client's tunnel address.
    assert server.log.wait_for(f"dns {server.net.client4}", 5)


def test_udp_round_trip(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, server.client_config())
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        f"s.sendto(b'ping-through-wg', ('{server.net.server4}', {UDP_PORT}))\n"
        "print(s.recvfrom(100)[0].decode())\n"
    )
    result = wg_wrap_run(stage, test_user, user_runtime_dir, conf, *_python(stage, code))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ping-through-wg"
    assert server.log.wait_for(f"udp {server.net.client4} 15", 5)


def test_inside_only_lo_and_the_tunnel_exist(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, server.client_config())
    result = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "ip", "-br", "link")
    assert result.returncode == 0, result.stderr
    names = sorted(line.split()[0].split("@")[0] for line in result.stdout.splitlines())
    assert names == ["lo", "tun0"]


def test_exit_status_and_signals_pass_through(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, server.client_config())
    seven = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "sh", "-c", "exit 7")
    assert seven.returncode == 7
    # wg-wrap became the command: killed by SIGTERM, as its caller sees it
    # (a shell shows 128+15).
    killed = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "sh", "-c", "kill -TERM $$")
    assert killed.returncode == -15
    missing = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "no-such-program-here")
    assert missing.returncode == 127
    assert "no-such-program-here" in missing.stderr


def test_runs_with_the_callers_identity_and_no_capabilities(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, client_config(Keys(), next_net(), silent_udp_port()))
    result = wg_wrap_run(
        stage, test_user, user_runtime_dir, conf, "sh", "-c",
        "id -u; id -g; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == str(test_user.uid) and lines[1] == str(test_user.gid)
    caps = dict(line.split(":\t") for line in lines[2:] if line)
    held = {k: v for k, v in caps.items() if k != "CapBnd" and int(v, 16)}
    assert len(caps) == 5 and not held, caps
    # The bounding set stays whole (binaries with file capabilities must
    # start: tests/test_launcher.py); no_new_privs keeps it from granting.


def test_private_key_never_in_argv_or_environment_and_nothing_left_after(
    wgwrap_server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, wgwrap_server.client_config())
    secrets = [wgwrap_server.keys.text(wgwrap_server.keys.client).encode(),
               wgwrap_server.keys.text(wgwrap_server.keys.server).encode(),
               wgwrap_server.keys.client.hex().encode(), wgwrap_server.keys.server.hex().encode(),
               wgwrap_server.keys.text(wgwrap_server.keys.psk).encode(),
               wgwrap_server.keys.psk.hex().encode()]
    # The program runs until the checks are done: it ends when its stdin closes.
    argv = stage.wg_wrap("run", "-c", str(conf), "--", "sh", "-c",
                         "echo started; read -r _ || :")
    from conftest import as_user_argv

    proc = subprocess.Popen(as_user_argv(test_user, argv), env=user_env(user_runtime_dir),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "started"
        leaks = []
        checked = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            for what in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{entry}/{what}", "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                checked += 1
                if any(s in data for s in secrets):
                    leaks.append(f"/proc/{entry}/{what}")
        assert checked > 10
        assert not leaks
        # Private state: the directories 0700, every file private, all the
        # user's; and no socket: the sidecar's live in the host's network
        # namespace, at abstract addresses (tests/test_walls.py).
        state = user_runtime_dir / "wg-wrap"
        (profile,) = state.iterdir()
        for path in (state, profile, *profile.iterdir()):
            st = path.lstat()
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), path
            assert (st.st_mode & 0o077, st.st_uid) == (0, test_user.uid), path
        # Nor in any file wg-wrap wrote.
        for path in (user_runtime_dir / "wg-wrap").rglob("*"):
            if path.is_file():
                assert not any(s in path.read_bytes() for s in secrets), path
        assert sidecars_of(test_user, user_runtime_dir), "the sidecar should be running now"
    finally:
        _, err = proc.communicate(input="", timeout=30)
    assert proc.returncode == 0, err
    deadline = time.monotonic() + 3
    while sidecars_of(test_user, user_runtime_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sidecars_of(test_user, user_runtime_dir), "sidecar left running"
    assert list((user_runtime_dir / "wg-wrap").iterdir()) == [], "runtime state left behind"


def test_tunnel_down_means_no_traffic_and_nothing_in_clear(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    """With no peer answering, connections fail; only encrypted handshakes leave."""
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    catcher.bind(("127.0.0.1", 0))
    catcher.settimeout(0.2)
    port = catcher.getsockname()[1]
    # A host service on loopback: the wrapped program must not reach it either.
    host_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    host_tcp.bind(("127.0.0.1", 0))
    host_tcp.listen(5)
    host_tcp.settimeout(0.2)
    net = next_net()
    conf = write_conf(user_tmp, test_user, client_config(Keys(), net, port, dns=False))
    received: list[bytes] = []
    stop = threading.Event()

    def catch() -> None:
        while not stop.is_set():
            try:
                received.append(catcher.recv(65535))
            except TimeoutError:
                continue

    thread = threading.Thread(target=catch)
    thread.start()
    try:
        marker = "PLAINTEXT-MARKER-should-never-leave"
        code = (
            "import socket, sys\n"
            "ok = 0\n"
            f"for dst in [('{net.v4}.1', 80), ('127.0.0.1', {host_tcp.getsockname()[1]})]:\n"
            "    try:\n"
            "        c = socket.create_connection(dst, timeout=3)\n"
            f"        c.sendall(b'{marker}'); ok += 1\n"
            "    except OSError as e:\n"
            "        print('failed', dst, e)\n"
            "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"u.sendto(b'{marker}', ('{net.v4}.1', 53))\n"
            "sys.exit(ok)\n"
        )
        result = wg_wrap_run(stage, test_user, user_runtime_dir, conf, *_python(stage, code))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("failed") == 2
        with pytest.raises(TimeoutError):
            host_tcp.accept()
    finally:
        stop.set()
        thread.join()
        catcher.close()
        host_tcp.close()
    assert received, "the client should have tried a handshake with its endpoint"
    for packet in received:
        assert packet[:4] == b"\x01\x00\x00\x00" and len(packet) == 148, packet[:16]
        assert marker.encode() not in packet


def test_mtu_addresses_and_routes_follow_the_config(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    net = next_net()
    script = "ip -o link show tun0; ip -o addr show dev tun0; ip route; ip -6 route"
    conf = write_conf(user_tmp, test_user, client_config(
        Keys(), net, silent_udp_port(), dns=False, extra="MTU = 1380\n",
        allowed="0.0.0.0/0, ::/0, 10.200.0.0/16"))
    routed = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "sh", "-c", script)
    assert routed.returncode == 0, routed.stderr
    assert "mtu 1380" in routed.stdout
    assert f"inet {net.client4}/24" in routed.stdout and f"inet6 {net.client6}/64" in routed.stdout
    assert "tentative" not in routed.stdout  # no duplicate address detection
    assert "default dev tun0" in routed.stdout and "10.200.0.0/16 dev tun0" in routed.stdout
    assert routed.stdout.count("default dev tun0") == 2  # IPv4 and IPv6

    conf = write_conf(user_tmp, test_user, client_config(
        Keys(), net, silent_udp_port(), dns=False, extra="Table = off\n"), name="off.conf")
    unrouted = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "sh", "-c", script)
    assert unrouted.returncode == 0, unrouted.stderr
    assert "default dev" not in unrouted.stdout  # only the addresses' own routes
    assert f"{net.v4}.0/24 dev tun0 proto kernel" in unrouted.stdout


def test_hostname_endpoint_is_resolved_on_the_host(
    wgwrap_server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    text = wgwrap_server.client_config(dns=False).replace(
        "Endpoint = 127.0.0.1:", "Endpoint = localhost:")
    assert "Endpoint = localhost:" in text
    conf = write_conf(user_tmp, test_user, text)
    url = f"http://{wgwrap_server.net.server4}:{HTTP_PORT}/"
    result = wg_wrap_run(stage, test_user, user_runtime_dir, conf,
                         "curl", "-sS", "--max-time", "10", url, extra=("-v",))
    assert result.returncode == 0, result.stderr
    assert f"sees you as {wgwrap_server.net.client4}" in result.stdout
    assert f"endpoint localhost:{wgwrap_server.port} -> 127.0.0.1:" in result.stderr


def test_setuid_programs_gain_nothing_inside(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    """A setuid-root program (a copy of id(1)) runs as root outside, and with
    the user's own identity inside: root is not mapped in wg-wrap's namespace."""
    where = Path(tempfile.mkdtemp(prefix="wg-wrap-suid-"))
    try:
        where.chmod(0o755)
        setuid_id = where / "id"
        shutil.copy2("/usr/bin/id", setuid_id)
        os.chown(setuid_id, 0, 0)
        setuid_id.chmod(0o4755)
        outside = run_as_user(test_user, [str(setuid_id)], env=user_env(user_runtime_dir))
        assert "euid=0(root)" in outside.stdout, "control: the copy must really be setuid"
        conf = write_conf(user_tmp, test_user, client_config(Keys(), next_net(), silent_udp_port()))
        inside = wg_wrap_run(stage, test_user, user_runtime_dir, conf, str(setuid_id))
        assert inside.returncode == 0, inside.stderr
        assert inside.stdout.startswith(f"uid={test_user.uid}(")
        assert "euid=" not in inside.stdout and "root" not in inside.stdout
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_ping_sockets_and_low_ports_work_inside(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    """The namespace is the user's alone: unprivileged ICMP echo (what ping
    uses) and ports below 1024 are allowed there."""
    code = (
        "import socket, struct\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n"
        "s.settimeout(5)\n"
        "s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'wg-wrap', ('127.0.0.1', 0))\n"
        "reply, _ = s.recvfrom(64)\n"
        "print('echo-reply' if reply[0] == 0 and reply.endswith(b'wg-wrap') else reply)\n"
        "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(('127.0.0.1', 53))\n"
        "print('bound 53')\n"
    )
    conf = write_conf(user_tmp, test_user, client_config(Keys(), next_net(), silent_udp_port()))
    result = wg_wrap_run(stage, test_user, user_runtime_dir, conf, *_python(stage, code))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo-reply\nbound 53\n"


PING = Path("/usr/bin/ping")
CAP_NET_RAW = 13  # linux/capability.h
VFS_CAP_FLAGS_EFFECTIVE = 0x000001


def need_real_ping() -> None:
    """Fail, naming what is missing, unless PING is iputils' ping with the
    file capability Debian's iputils-ping gives it (cap_net_raw=ep)."""
    install = "`apt-get install iputils-ping` (.ci/run installs it)"
    if not os.access(PING, os.X_OK):
        pytest.fail(f"{PING} is missing: {install}", pytrace=False)
    version = subprocess.run([str(PING), "-V"], capture_output=True, text=True, timeout=10)
    if "iputils" not in version.stdout + version.stderr:
        pytest.fail(f"{PING} is not iputils' ping ({version.stdout.strip()!r}): {install}",
                    pytrace=False)
    try:
        # struct vfs_cap_data: magic_etc, then permitted and inheritable (low words first)
        magic_etc, permitted = struct.unpack_from("<II", os.getxattr(PING, "security.capability"))
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        magic_etc = permitted = 0
    if not (permitted >> CAP_NET_RAW & 1 and magic_etc & VFS_CAP_FLAGS_EFFECTIVE):
        pytest.fail(f"{PING} lacks its file capability cap_net_raw=ep (`getcap {PING}` "
                    "shows it): `apt-get install --reinstall iputils-ping` sets it, on a file "
                    "system that keeps security.* extended attributes", pytrace=False)


def test_ping_with_its_file_capability_reaches_the_peer_through_the_tunnel(
    server: Server, stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    """The real ping, a binary with a file capability, starts inside (the
    launcher leaves the bounding set whole) and gets its echo replies from the
    peer's tunnel addresses, IPv4 and IPv6."""
    need_real_ping()
    conf = write_conf(user_tmp, test_user, server.client_config())
    net = server.net
    result = wg_wrap_run(
        stage, test_user, user_runtime_dir, conf, "sh", "-c",
        f"{PING} -c 3 -W 2 {net.server4} && {PING} -c 3 -W 2 {net.server6}")
    assert result.returncode == 0, result.stdout + result.stderr
    for address in (net.server4, net.server6):
        statistics = rf"--- {re.escape(address)} ping statistics ---\n(.*)\n"
        found = re.search(statistics, result.stdout)
        assert found and found[1].startswith("3 packets transmitted, 3 received, 0% packet loss"), \
            result.stdout + result.stderr


def test_run_v_shows_the_sidecars_log_of_its_start(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = write_conf(user_tmp, test_user, client_config(Keys(), next_net(), silent_udp_port()))
    done = wg_wrap_run(stage, test_user, user_runtime_dir, conf, "true", extra=("-v",))
    assert done.returncode == 0, done.stderr
    sidecar = [line for line in done.stderr.splitlines()
               if line.startswith("wg-wrap: [sidecar.log] ")]
    assert any("ready: tun0 (MTU 1420)" in line for line in sidecar), done.stderr
    assert any("view:" in line for line in sidecar), done.stderr
