"""Real WireGuard peers for end-to-end tests, all on loopback.

- ``WgWrapServer``: a second wg-wrap acting as the server (``ListenPort`` on
  127.0.0.1), with ``wg_wrap.demo_peer`` (HTTP, UDP echo, DNS) in its
  namespace; started as the unprivileged test user, fully rootless.
- ``StockServer``: Debian's ``wireguard-go`` configured with ``wg``: an
  independent implementation.  As root: it creates its TUN on the host, the
  TUN is moved into a network namespace made by the test, its UDP socket
  stays on the host's loopback.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wg_wrap import keys
from wg_wrap.runtime import SIDECAR_LOG

READY_TIMEOUT = 30.0
HTTP_PORT = 8080
UDP_PORT = 7777
DNS_NAME = "peer.wg-wrap.test"


_silent_socket: socket.socket | None = None


def silent_udp_port() -> int:
    """A loopback UDP port where nothing ever answers: the endpoint of a peer
    that must stay silent.  The socket is bound once and kept open until the
    test session ends, so no other test or server can be given that port."""
    global _silent_socket
    if _silent_socket is None:
        _silent_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _silent_socket.bind(("127.0.0.1", 0))
        atexit.register(_silent_socket.close)
    return int(_silent_socket.getsockname()[1])


@dataclass
class Net:
    """Addresses of one test tunnel."""

    v4: str  # e.g. "10.77.0"
    v6: str  # e.g. "fd77::"

    @property
    def server4(self) -> str:
        return f"{self.v4}.1"

    @property
    def client4(self) -> str:
        return f"{self.v4}.2"

    @property
    def server6(self) -> str:
        return f"{self.v6}1"

    @property
    def client6(self) -> str:
        return f"{self.v6}2"


# Each test gets its own tunnel addresses (10.N.0.0/24, fd00:N::/64).
_NET_NUMBERS = itertools.cycle(range(60, 250))


def next_net() -> Net:
    n = next(_NET_NUMBERS)
    return Net(v4=f"10.{n}.0", v6=f"fd00:{n}::")


@dataclass
class Keys:
    server: bytes = field(default_factory=keys.generate_private_key)
    client: bytes = field(default_factory=keys.generate_private_key)
    # Always a preshared key: both implementations must agree on it.
    psk: bytes = field(default_factory=lambda: os.urandom(32))

    def text(self, key: bytes) -> str:
        return keys.encode(key)

    def pub(self, key: bytes) -> str:
        return keys.encode(keys.public_key(key))


def client_config(k: Keys, net: Net, port: int, *, dns: bool = True, extra: str = "",
                  allowed: str = "0.0.0.0/0, ::/0", host: str = "127.0.0.1") -> str:
    return (
        "[Interface]\n"
        f"PrivateKey = {k.text(k.client)}\n"
        f"Address = {net.client4}/24, {net.client6}/64\n"
        + (f"DNS = {net.server4}, wg-wrap.test\n" if dns else "")
        + extra
        + "\n[Peer]\n"
        f"PublicKey = {k.pub(k.server)}\n"
        f"PresharedKey = {k.text(k.psk)}\n"
        f"Endpoint = {host}:{port}\n"
        f"AllowedIPs = {allowed}\n"
    )


def peer_services_argv(python: str, net: Net) -> list[str]:
    return [
        python, "-m", "wg_wrap.demo_peer", "--http", str(HTTP_PORT), "--udp", str(UDP_PORT),
        "--dns", f"{DNS_NAME}={net.server4}", "--dns", f"{DNS_NAME}={net.server6}",
    ]


class LineLog:
    """Lines a peer's services print, collected by a thread."""

    def __init__(self, stream: object) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if any(predicate in line for line in self.drain()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.seen.append(self.lines.get(timeout=min(left, 0.5)))
            except queue.Empty:
                pass

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen


class Server:
    name: str
    net: Net
    keys: Keys
    port: int
    log: LineLog

    def client_config(self, **kw: object) -> str:
        return client_config(self.keys, self.net, self.port, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        raise NotImplementedError

    def diagnostics(self) -> str:
        """What a failed test should show of this peer: its WireGuard state
        (handshakes, bytes) and its log."""
        raise NotImplementedError


def _shown(argv: list[str], **kw: object) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10,  # type: ignore[call-overload]
                              **kw)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"$ {' '.join(argv)}: {e}\n"
    return f"$ {' '.join(argv)}  (exit {done.returncode})\n{done.stdout}{done.stderr}"


class WgWrapServer(Server):
    name = "wg-wrap"

    def __init__(
        self, stage: object, user: object, net: Net, *, keys: Keys | None = None,
        port: int | None = None, listen: str = "127.0.0.1", within: WgWrapServer | None = None,
    ) -> None:
        """A new server; the same ``keys`` and ``port`` on another ``listen``
        address make it the same peer at a new address (a peer that moved).
        ``within``: run inside that server's profile (wg-wrap nested in
        wg-wrap), listening on one of its addresses."""
        from conftest import as_user_argv, user_env

        self.net, self.keys = net, keys or Keys()
        self._stage, self._user = stage, user
        # Its own config and runtime directories, private to the test user.
        self._dirs = [Path(tempfile.mkdtemp(prefix="wg-wrap-server-")) for _ in range(2)]
        for d in self._dirs:
            os.chown(d, user.uid, user.gid)  # type: ignore[attr-defined]
            d.chmod(0o700)
        workdir, runtime_dir = self._dirs
        conf = workdir / "server.conf"
        conf.write_text(
            "[Interface]\n"
            f"PrivateKey = {self.keys.text(self.keys.server)}\n"
            f"Address = {net.server4}/24, {net.server6}/64\n"
            + (f"ListenPort = {port}\n" if port else "")
            + "\n[Peer]\n"
            f"PublicKey = {self.keys.pub(self.keys.client)}\n"
            f"PresharedKey = {self.keys.text(self.keys.psk)}\n"
            f"AllowedIPs = {net.client4}/32, {net.client6}/128\n"
        )
        os.chown(conf, user.uid, user.gid)  # type: ignore[attr-defined]
        conf.chmod(0o600)
        python = str(stage.python)  # type: ignore[attr-defined]
        # Without a given port, no ListenPort: the host socket is bound to a
        # free port and kept by the server; the port is read back from its state.
        argv = stage.wg_wrap(  # type: ignore[attr-defined]
            # -v: its sidecar logs handshakes (diagnostics)
            "run", "-v", "-n", "test-server", "-c", str(conf), "--listen-address", listen, "--",
            *peer_services_argv(python, net),
        )
        self.within = within
        if within is not None:
            # Its runtime directory is then the outermost server's, as the
            # outer profile shows it: a private tmpfs (one per level).
            argv = [*within.inside(), *argv]
            runtime_dir = within.runtime_dir
        self._nested = within is not None
        self.process = subprocess.Popen(
            as_user_argv(user, argv), env=user_env(runtime_dir), cwd="/",  # type: ignore[arg-type]
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.log = LineLog(self.process.stdout)
        if not self.log.wait_for("ready", READY_TIMEOUT):
            if self.process.poll() is None:
                self.process.kill()
            _, err = self.process.communicate(timeout=10)
            self.stop()
            raise RuntimeError(f"wg-wrap server did not start: {err}")
        if within is None:
            # Written before its command (the services) started.
            state = runtime_dir / "wg-wrap" / "test-server" / "state.toml"
            self.port = int(tomllib.loads(state.read_text())["listen_port"])
        else:  # its state is inside the outer profile: ask there
            status = subprocess.run(
                as_user_argv(user, [  # type: ignore[arg-type]
                    *within.inside(),
                    *stage.wg_wrap("status", "--json", "test-server")]),  # type: ignore[attr-defined]
                env=user_env(runtime_dir), cwd="/", capture_output=True, text=True, timeout=30,
                check=True)
            self.port = int(json.loads(status.stdout)[0]["listen_port"])
        assert port is None or self.port == port

    def diagnostics(self) -> str:
        from conftest import as_user_argv, user_env

        argv = self._stage.wg_wrap("status", "test-server")  # type: ignore[attr-defined]
        status = _shown(as_user_argv(self._user, argv),  # type: ignore[arg-type]
                        env=user_env(self.runtime_dir))
        log = self.runtime_dir / "wg-wrap" / "test-server" / SIDECAR_LOG
        try:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-60:])
        except OSError as e:
            tail = f"{e}\n"
        return f"{status}--- its sidecar's log ({log}), last lines:\n{tail}"

    @property
    def runtime_dir(self) -> Path:
        """Its XDG_RUNTIME_DIR (a nested one's: the outermost server's):
        `inside()` there runs a command inside it."""
        return self.within.runtime_dir if self.within is not None else self._dirs[1]

    def inside(self) -> list[str]:
        """The argv prefix that runs a command inside this server's profile
        (through every outer one), with runtime_dir as XDG_RUNTIME_DIR."""
        outer = self.within.inside() if self.within is not None else []
        return [*outer, *self._stage.wg_wrap("exec", "test-server", "--")]  # type: ignore[attr-defined]

    def sidecar_pid(self) -> int:
        """Its sidecar's pid, as the host sees it."""
        from conftest import as_user_argv, user_env

        outer = self.within.inside() if self.within is not None else []
        done = subprocess.run(
            as_user_argv(self._user, [  # type: ignore[arg-type]
                *outer, *self._stage.wg_wrap("status", "--json", "test-server")]),  # type: ignore[attr-defined]
            env=user_env(self.runtime_dir), cwd="/", capture_output=True, text=True, timeout=30,
            check=True)
        return int(json.loads(done.stdout)[0]["sidecar_pid"])  # no pid namespace: the host's

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        # The process was the services themselves (wg-wrap became them): the
        # ephemeral profile ends when its sidecar notices (every 200 ms) and
        # removes its directory; only then is the UDP port free again. (A
        # nested one's is inside the outer profile: it goes with it.)
        profile = self.runtime_dir / "wg-wrap" / "test-server"
        deadline = time.monotonic() + 5
        while not self._nested and profile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


class StockServer(Server):
    """Debian's wireguard-go, configured by ``wg``, TUN moved into a test netns."""

    name = "wireguard-go"

    def __init__(self, stage: object, net: Net, within: WgWrapServer | None = None) -> None:
        """``within``: wireguard-go runs in that server's network namespace
        (its UDP socket there: reachable only through that server's tunnel,
        at its address); its TUN, as always, in a test netns of its own."""
        for tool in ("wireguard-go", "wg", "ip", "nsenter"):
            if shutil.which(tool) is None:
                raise RuntimeError(
                    f"{tool} is missing: install Debian's wireguard-go and wireguard-tools "
                    "(.ci/run does)"
                )
        self.net, self.keys, self.port = net, Keys(), 0  # port: chosen by wireguard-go
        suffix = secrets.token_hex(3)
        self.ifname, self.netns = f"wgt{suffix}", f"wgwrap-t{suffix}"
        self._tmp = Path(tempfile.mkdtemp(prefix="wg-wrap-stock-"))
        self._services: subprocess.Popen[str] | None = None
        # As root, into the outer server's network namespace only (its user
        # namespace is a child of ours: root may).
        self._where = ["nsenter", f"--net=/proc/{within.sidecar_pid()}/ns/net"] if within else []
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        self.daemon = subprocess.Popen([*self._where, "wireguard-go", "-f", self.ifname], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._setup(stage)
        except BaseException:
            self.stop()
            raise

    def _ip(self, *args: str, netns: bool = False) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if netns else self._where
        subprocess.run([*prefix, "ip", *args], check=True, timeout=10)

    def _setup(self, stage: object) -> None:
        sock = Path(f"/var/run/wireguard/{self.ifname}.sock")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError("wireguard-go did not start")
            time.sleep(0.05)
        keyfile = self._tmp / "key"
        keyfile.write_text(self.keys.text(self.keys.server) + "\n")
        keyfile.chmod(0o600)
        pskfile = self._tmp / "psk"
        pskfile.write_text(self.keys.text(self.keys.psk) + "\n")
        pskfile.chmod(0o600)
        subprocess.run(
            ["wg", "set", self.ifname, "private-key", str(keyfile),
             "peer", self.keys.pub(self.keys.client), "preshared-key", str(pskfile),
             "allowed-ips", f"{self.net.client4}/32,{self.net.client6}/128"],
            check=True, timeout=10,
        )
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=10)
        # Up on the host first: wireguard-go starts its device on the netlink
        # event it sees there; the move keeps the device running.
        self._ip("link", "set", self.ifname, "up")
        self._ip("link", "set", self.ifname, "netns", self.netns)
        self._ip("link", "set", "lo", "up", netns=True)
        self._ip("address", "add", f"{self.net.server4}/24", "dev", self.ifname, netns=True)
        self._ip("address", "add", f"{self.net.server6}/64", "dev", self.ifname, "nodad",
                 netns=True)
        self._ip("link", "set", self.ifname, "up", netns=True)
        self.port = self._listen_port()
        python = str(stage.python)  # type: ignore[attr-defined]
        self._services = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *peer_services_argv(python, self.net)],
            stdout=subprocess.PIPE, text=True, cwd="/",
        )
        self.log = LineLog(self._services.stdout)
        if not self.log.wait_for("ready", READY_TIMEOUT):
            raise RuntimeError("peer services did not start in the test namespace")

    def diagnostics(self) -> str:
        return _shown(["wg", "show", self.ifname])

    def _listen_port(self) -> int:
        """The port wireguard-go bound (no listen-port set: a free one), once
        the device is up and its socket open."""
        deadline = time.monotonic() + 10
        while True:
            shown = subprocess.run(["wg", "show", self.ifname, "listen-port"], check=True,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if shown not in ("", "0"):
                return int(shown)
            if time.monotonic() > deadline:
                raise RuntimeError("wireguard-go did not open its UDP socket")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in (self._services, self.daemon):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._services is not None and self._services.stdout:
            self._services.stdout.close()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)
        if not self._where:  # an outer server's namespace takes its own with it
            subprocess.run(["ip", "link", "del", self.ifname], capture_output=True, timeout=10)
        shutil.rmtree(self._tmp, ignore_errors=True)
