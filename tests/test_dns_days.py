"""Leak-proof for days: a profile's DNS view survives the host changing under it.

A loop of lookups runs inside a profile (glibc's getaddrinfo, through
nsswitch.conf, as any program resolves) while the host does what hosts do
over days: NetworkManager, dhclient and resolvconf replace /etc/resolv.conf
by rename, write it in place, turn it into a symlink and back, replace the
symlink's target; nscd starts (its directory made for the first time after
the profile started), stops and starts again with its directory made anew;
systemd-resolved's directory and socket appear, go and come back; avahi's
too.  The host resolvers are real: Debian's nscd, and glibc's real
nss-resolve module (libnss-resolve's, which .ci/run extracts) with
`resolve` in the host's hosts line and a stand-in for systemd-resolved
listening on its socket.  Every lookup inside must be answered by the
tunnel's DNS, and no host resolver may see one request from inside; each
detector is shown not to be blind by the same lookup from the host.

The host's files are restored byte for byte, and the daemons stopped,
whatever happens (CI runs on a real machine).  Traffic: loopback and the
test's own namespaces only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Tool, as_user_argv, user_env
from peers import DNS_NAME, WgWrapServer

pytestmark = pytest.mark.e2e

LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
NSS_RESOLVE = "libnss_resolve.so.2"
# Where .ci/run puts glibc's nss-resolve module, extracted from Debian's
# libnss-resolve (installing that package would hand the machine's
# resolv.conf to systemd-resolved).
NSS_RESOLVE_SOURCE = Path(os.environ.get("WG_WRAP_NSS_RESOLVE",
                                         "/var/lib/wg-wrap-tests/libnss_resolve.so.2"))
RESOLVED_DIR = Path("/run/systemd/resolve")
RESOLVED_SOCKET = RESOLVED_DIR / "io.systemd.Resolve"
NSCD_DIR = Path("/run/nscd")
AVAHI_DIR = Path("/run/avahi-daemon")
RESOLVCONF_DIR = Path("/run/resolvconf")
ETC_RESOLV = Path("/etc/resolv.conf")
NSSWITCH = Path("/etc/nsswitch.conf")
HOST_LINE = "hosts: files resolve [!UNAVAIL=return] dns\n"
LOOP_LIMIT = 60.0  # seconds a lookup loop may run at most

# The program inside: look the name up, again and again, until its stdin
# closes, and report what it saw (bounded in time and count).
LOOKUPS = r"""
import json, os, select, socket, sys, time
name, expected, resolv = sys.argv[1], sys.argv[2], sys.argv[3]
watch = ["/run/nscd/socket", "/var/run/nscd/socket", "/run/systemd/resolve/io.systemd.Resolve",
         "/run/avahi-daemon/socket", "/var/run/avahi-daemon/socket"]
seen = {"lookups": 0, "wrong": [], "failed": [], "resolv_changed": [], "visible": []}
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline and seen["lookups"] < 100000:
    if select.select([sys.stdin], [], [], 0)[0]:
        break
    try:
        got = {a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)}
        if got != {expected}:
            seen["wrong"].append(sorted(got))
    except OSError as e:
        seen["failed"].append(str(e))
    with open("/etc/resolv.conf") as f:
        if f.read() != resolv:
            seen["resolv_changed"].append(seen["lookups"])
    seen["visible"] += [p for p in watch if os.path.exists(p)]
    seen["lookups"] += 1
print(json.dumps(seen), flush=True)
"""


class FakeResolved:
    """A stand-in for systemd-resolved on its varlink socket: it answers
    every question with "no such record" and counts who asked, from inside
    the profile (by the asker's network namespace) or not."""

    def __init__(self, profile_netns: str) -> None:
        self.netns = profile_netns
        self.inside = 0
        self.outside = 0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (again: a restarted resolved makes its socket anew)."""
        self.stop()
        RESOLVED_DIR.mkdir(parents=True, exist_ok=True)
        RESOLVED_SOCKET.unlink(missing_ok=True)
        (RESOLVED_DIR / "stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(RESOLVED_SOCKET))
        os.chmod(RESOLVED_SOCKET, 0o666)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()

    def _serve(self, sock: socket.socket) -> None:
        while self._sock is sock:
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                pid = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     12)[:4], "little")
                try:
                    theirs = os.readlink(f"/proc/{pid}/ns/net")
                except OSError:
                    theirs = ""
                if theirs == self.netns:
                    self.inside += 1
                else:
                    self.outside += 1
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b'{"error":"io.systemd.Resolve.NoSuchResourceRecord",'
                                 b'"parameters":{}}\0')

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(5)


def nscd_lookups() -> int:
    """How many host lookups nscd has answered (hits and misses)."""
    stats = subprocess.run(["nscd", "-g"], capture_output=True, text=True, timeout=10).stdout
    hosts = re.split(r"^\w+ cache:$", stats.split("hosts cache:", 1)[1], flags=re.M)[0]
    counts = [int(m) for m in re.findall(
        r"^\s*(\d+)\s+cache (?:hits|misses) on (?:positive|negative) entries$", hosts, re.M)]
    assert len(counts) == 4, stats
    return sum(counts)


def start_nscd() -> None:
    NSCD_DIR.mkdir(exist_ok=True)
    subprocess.run(["nscd"], check=True, timeout=10)
    deadline = time.monotonic() + 5
    while not (NSCD_DIR / "socket").exists():
        assert time.monotonic() < deadline, "nscd did not make its socket"
        time.sleep(0.02)


def stop_nscd() -> None:
    subprocess.run(["nscd", "-K"], capture_output=True, timeout=10)
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-x", "nscd"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            subprocess.run(["pkill", "-KILL", "-x", "nscd"], capture_output=True)
            break
        time.sleep(0.02)


@dataclass
class Saved:
    """A host path as it was: a symlink's target, a file's bytes and mode,
    a directory, or nothing."""

    path: Path
    kind: str = "none"
    data: bytes | str = b""
    mode: int = 0
    extra: list[Path] = field(default_factory=list)

    @classmethod
    def take(cls, path: Path) -> Saved:
        if path.is_symlink():
            return cls(path, "link", os.readlink(path))
        if path.is_dir():
            return cls(path, "dir", b"", path.stat().st_mode & 0o7777)
        if path.exists():
            return cls(path, "file", path.read_bytes(), path.stat().st_mode & 0o7777)
        return cls(path)

    def restore(self) -> None:
        if self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        elif self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        if self.kind == "link":
            os.symlink(self.data, self.path)
        elif self.kind == "dir":
            self.path.mkdir(mode=self.mode)
        elif self.kind == "file":
            assert isinstance(self.data, bytes)
            self.path.write_bytes(self.data)
            self.path.chmod(self.mode)


@pytest.fixture
def host_resolvers() -> Iterator[None]:
    """The host as the test leaves it: every file and directory it touches
    as it was, nscd stopped, the nss-resolve module gone again."""
    missing = [what for what, ok in (
        ("nscd (Debian's package)", shutil.which("nscd") is not None),
        (f"glibc's nss-resolve module at {NSS_RESOLVE_SOURCE} (.ci/run extracts it from "
         "Debian's libnss-resolve)", NSS_RESOLVE_SOURCE.is_file()),
    ) if not ok]
    if missing:
        pytest.fail(f"these tests need {', '.join(missing)}", pytrace=False)
    assert subprocess.run(["pgrep", "-x", "nscd"], capture_output=True).returncode != 0, \
        "nscd is already running on this machine: the test would not be its only user"
    saved = [Saved.take(p) for p in (ETC_RESOLV, NSSWITCH, NSCD_DIR, RESOLVED_DIR, AVAHI_DIR,
                                     RESOLVCONF_DIR, LIBDIR / NSS_RESOLVE)]
    try:
        # The resolvers appear only after the profile starts: nothing of
        # them now.
        for path in (NSCD_DIR, RESOLVED_DIR, AVAHI_DIR, RESOLVCONF_DIR):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copy2(NSS_RESOLVE_SOURCE, LIBDIR / NSS_RESOLVE)
        text = NSSWITCH.read_text()
        NSSWITCH.write_text(re.sub(r"^hosts:.*\n", HOST_LINE, text, flags=re.M))
        yield
    finally:
        stop_nscd()
        for s in saved:
            s.restore()


def rename_over(path: Path, text: str) -> None:
    new = path.with_name(path.name + ".wg-wrap-test")
    new.write_text(text)
    new.chmod(0o644)
    os.rename(new, path)


class Nscd:
    """Debian's nscd, started and stopped as the host does; counts the
    lookups it answered while it ran."""

    def __init__(self) -> None:
        self.answered = 0
        self._at_start = 0

    def start(self) -> None:
        start_nscd()
        self._at_start = nscd_lookups()

    def stop(self) -> None:
        self.answered += nscd_lookups() - self._at_start
        stop_nscd()


def host_changes(resolved: FakeResolved, nscd: Nscd) -> None:
    """What hosts do to their resolvers over days, once over."""
    rename_over(ETC_RESOLV, "nameserver 192.0.2.53\n")  # NetworkManager, dhclient
    ETC_RESOLV.write_text("nameserver 192.0.2.54\n")  # written in place
    resolved.start()  # systemd-resolved appears
    nscd.start()  # nscd is installed and starts, its directory made for the first time
    ETC_RESOLV.unlink()
    ETC_RESOLV.symlink_to("../run/systemd/resolve/stub-resolv.conf")  # resolved's stub
    rename_over(RESOLVED_DIR / "stub-resolv.conf", "nameserver 127.0.0.53\nsearch x\n")
    RESOLVCONF_DIR.mkdir(exist_ok=True)
    rename_over(RESOLVCONF_DIR / "resolv.conf", "nameserver 192.0.2.55\n")
    tmp = Path("/etc/resolv.conf.wg-wrap-link")
    tmp.symlink_to(RESOLVCONF_DIR / "resolv.conf")
    os.rename(tmp, ETC_RESOLV)  # resolvconf's symlink, put in place by rename
    rename_over(RESOLVCONF_DIR / "resolv.conf", "nameserver 192.0.2.56\n")  # its target
    nscd.stop()  # nscd restarts: its directory goes and comes back
    shutil.rmtree(NSCD_DIR)
    nscd.start()
    resolved.stop()  # resolved restarts, its directory made anew
    shutil.rmtree(RESOLVED_DIR)
    resolved.start()
    AVAHI_DIR.mkdir(exist_ok=True)  # avahi comes and goes
    with socket.socket(socket.AF_UNIX) as avahi:
        avahi.bind(str(AVAHI_DIR / "socket"))
    shutil.rmtree(AVAHI_DIR)
    ETC_RESOLV.unlink()
    rename_over(ETC_RESOLV, "nameserver 192.0.2.57\n")  # and a plain file again
    nscd.stop()  # and nscd goes (its directory stays, as Debian's does)


def lookups_during_changes(tool: Tool, argv: list[str], server: WgWrapServer,
                           netns_of: Callable[[int], str]) -> dict[str, Any]:
    """Run the lookup loop (argv: how it is started inside), make the host
    changes three times over while it runs, and check the detectors."""
    resolv = f"# generated by wg-wrap: DNS from the WireGuard config, through the tunnel\n" \
             f"nameserver {server.net.server4}\nsearch wg-wrap.test\noptions edns0\n"
    loop = subprocess.Popen(
        as_user_argv(tool.user, [*argv, str(tool.stage.python), "-c", LOOKUPS, DNS_NAME,
                                 server.net.server4, resolv, str(LOOP_LIMIT)]),
        env=user_env(tool.runtime), cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    assert loop.stdout is not None and loop.stdin is not None
    resolved, nscd = FakeResolved(""), Nscd()
    try:
        assert loop.stdout.readline() == "ready\n", loop.stderr.read() if loop.stderr else ""
        resolved.netns = netns_of(loop.pid)
        for _ in range(3):
            host_changes(resolved, nscd)
        out, err = loop.communicate(input="", timeout=LOOP_LIMIT + 10)  # stdin closes: it ends
        assert loop.returncode == 0, err
        seen: dict[str, Any] = json.loads(out)
        assert nscd.answered == 0, "nscd was asked while the loop ran"
        assert resolved.inside == 0, "systemd-resolved was asked from inside"
        # The detectors are not blind: the same lookup, from the host.
        nscd.start()
        subprocess.run(["getent", "hosts", DNS_NAME], capture_output=True, timeout=10)
        nscd.stop()
        assert nscd.answered > 0, "nscd did not see a lookup from the host"
        # Without nscd, the host's lookup reaches nss-resolve and its socket.
        subprocess.run(["getent", "hosts", DNS_NAME], capture_output=True, timeout=10)
        assert resolved.outside > 0, "the stand-in resolved did not see the host's lookup"
    finally:
        resolved.stop()
        if loop.poll() is None:
            loop.kill()
            loop.communicate(timeout=10)
    assert seen["lookups"] > 50, seen
    assert seen["failed"] == [] and seen["wrong"] == [], seen
    assert seen["resolv_changed"] == [], "the program saw another resolv.conf"
    assert seen["visible"] == [], f"host resolver sockets were seen inside: {set(seen['visible'])}"
    return seen


def netns(pid: int) -> str:
    """The network namespace of the program pid became (it execs through
    setpriv, wg-wrap and the launcher: wait until it is inside)."""
    deadline = time.monotonic() + 10
    while True:
        link = os.readlink(f"/proc/{pid}/ns/net")
        if link != os.readlink("/proc/self/ns/net") or time.monotonic() > deadline:
            return link
        time.sleep(0.01)


def view_status(tool: Tool, name: str) -> dict[str, object]:
    view = tool.status(name)["view"]
    assert isinstance(view, dict)
    return view


@pytest.mark.parametrize("how", ["up", "healed", "run"])
def test_the_dns_view_holds_while_the_host_changes(
    how: str, wgwrap_server: WgWrapServer, tool: Tool, host_resolvers: None,
) -> None:
    conf = tool.conf(wgwrap_server.client_config())
    if how == "run":  # ephemeral: the loop is the program `run` starts
        seen = lookups_during_changes(tool, tool.stage.wg_wrap("run", "-c", str(conf), "--"),
                                      wgwrap_server, netns)
        assert tool.wait_gone(3)
        return
    assert tool("up", "-c", str(conf)).returncode == 0
    if how == "healed":  # a new sidecar among the programs a dead one left
        sleeper = tool.popen("exec", "wg0", "--", "sh", "-c", "echo ready; exec sleep 600")
        tool.services.append(sleeper)
        assert sleeper.stdout is not None and sleeper.stdout.readline() == "ready\n"
        (sidecar,) = tool.sidecars()
        os.kill(sidecar, signal.SIGKILL)
        healed = tool("up", "-c", str(conf))
        assert healed.returncode == 0 and "starting a new one in their namespaces" in \
            healed.stderr, healed.stderr
    seen = lookups_during_changes(tool, tool.stage.wg_wrap("exec", "wg0", "--"), wgwrap_server,
                                  netns)
    view = view_status(tool, "wg0")
    assert view["intact"], f"the view broke: {view.get('problem')}"
    assert view["dns"] == "profile", view
    # Every change to resolv.conf, /run's entries and /run/systemd's, three
    # times over: each one followed, or kept out.
    assert isinstance(view["absorbed"], int) and view["absorbed"] >= 3 * 8, view
    assert seen["lookups"] > 0
