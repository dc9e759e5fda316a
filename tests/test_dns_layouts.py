"""End to end: the resolver the wrapped program sees, on both resolv.conf layouts.

wg_wrap/dns.py plans the mounts: (a) a plain /etc/resolv.conf gets the
generated file bind-mounted over it; (b) on a systemd-resolved host
/etc/resolv.conf is a symlink into /run/systemd/resolve, which is hidden
under a tmpfs holding the generated file as stub-resolv.conf and
resolv.conf.  nscd's and avahi's socket directories are hidden too: their
daemons would resolve names on the host's network, outside the tunnel.

Layout (a) is tested on this host as it is.  For the other layouts, root
builds a fake host in a private mount namespace (overlays over /etc and /run
whose changes live in a tmpfs, so the real host is never touched) and runs
wg-wrap as the unprivileged user inside it; the namespace disappears with
its processes.  No name is ever looked up: only files are read.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, User, as_user_argv, run_as_user, user_env
from peers import Keys, Net, client_config, free_udp_port

pytestmark = pytest.mark.e2e

_nets = itertools.count(150)
ETC_RESOLV = Path("/etc/resolv.conf")
HIDDEN = ("/run/systemd/resolve", "/run/nscd", "/run/avahi-daemon")
CLEANUP_WAIT = 3.0
FAKE_HOST_TIMEOUT = 60.0


def _net() -> Net:
    n = next(_nets)
    return Net(v4=f"10.{n}.0", v6=f"fd00:{n}::")


def write_conf(user_tmp: Path, user: User, dns: str | None) -> Path:
    extra = f"DNS = {dns}\n" if dns else ""
    path = user_tmp / "dns.conf"
    path.write_text(client_config(Keys(), _net(), free_udp_port(), dns=False, extra=extra))
    os.chown(path, user.uid, user.gid)
    path.chmod(0o600)
    return path


# --- cleanup and the real host ------------------------------------------------------


def _sidecars_for(user: User, runtime_dir: Path) -> set[int]:
    """The user's sidecars serving profiles under runtime_dir."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != user.uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"wg-wrap-sidecar" in argv[0] and any(a.startswith(bytes(runtime_dir)) for a in argv):
            found.add(int(entry))
    return found


def assert_nothing_left(user: User, runtime_dir: Path) -> None:
    base = runtime_dir / "wg-wrap"

    def profiles() -> list[Path]:
        return list(base.iterdir()) if base.is_dir() else []

    deadline = time.monotonic() + CLEANUP_WAIT
    while (_sidecars_for(user, runtime_dir) or profiles()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sidecars_for(user, runtime_dir), "sidecar left running"
    assert profiles() == [], "runtime state left behind"


def host_resolver_state() -> tuple[object, ...]:
    """What the real host's resolver setup looks like, to compare before/after."""
    link = os.readlink(ETC_RESOLV) if ETC_RESOLV.is_symlink() else None
    return (link, ETC_RESOLV.read_bytes(), tuple(os.path.lexists(d) for d in HIDDEN))


def our_mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@pytest.fixture
def real_host_untouched(test_user: User, user_runtime_dir: Path) -> Iterator[None]:
    """The host's resolv.conf, daemon directories and mount table are the same
    after the test, and wg-wrap left nothing running or on disk."""
    before, mounts = host_resolver_state(), our_mounts()
    yield
    assert host_resolver_state() == before
    assert our_mounts() == mounts, "a mount leaked out of the namespaces"
    assert_nothing_left(test_user, user_runtime_dir)


def cat_resolv_conf(stage: Stage, user: User, runtime_dir: Path, conf: Path, *options: str
                    ) -> subprocess.CompletedProcess[str]:
    argv = stage.wg_wrap("run", "-c", str(conf), *options, "--", "cat", "/etc/resolv.conf")
    return run_as_user(user, argv, env=user_env(runtime_dir))


def nameservers(text: str) -> list[str]:
    return re.findall(r"^nameserver\s+(\S+)", text, re.M)


def searches(text: str) -> list[str]:
    return re.findall(r"^search\s+(.*\S)", text, re.M)


# --- layout (a), this host as it is -----------------------------------------------------


def test_dns_from_config_is_the_resolver_inside_and_the_host_file_is_unchanged(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    real_host_untouched: None,
) -> None:
    server = f"10.{next(_nets)}.0.1"
    conf = write_conf(user_tmp, test_user, f"{server}, corp.example")
    result = cat_resolv_conf(stage, test_user, user_runtime_dir, conf)
    assert result.returncode == 0, result.stderr
    assert nameservers(result.stdout) == [server], result.stdout
    assert searches(result.stdout) == ["corp.example"], result.stdout
    assert "generated by wg-wrap" in result.stdout


def test_dns_option_overrides_the_configs_servers(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    real_host_untouched: None,
) -> None:
    net = next(_nets)
    conf = write_conf(user_tmp, test_user, f"10.{net}.0.1, corp.example")
    result = cat_resolv_conf(stage, test_user, user_runtime_dir, conf,
                             "--dns", f"10.{net}.0.53", "--dns", f"fd00:{net}::53")
    assert result.returncode == 0, result.stderr
    assert nameservers(result.stdout) == [f"10.{net}.0.53", f"fd00:{net}::53"], result.stdout
    assert searches(result.stdout) == ["corp.example"], result.stdout


def test_without_dns_the_hosts_resolv_conf_is_seen_inside(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    real_host_untouched: None,
) -> None:
    conf = write_conf(user_tmp, test_user, None)
    result = cat_resolv_conf(stage, test_user, user_runtime_dir, conf)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ETC_RESOLV.read_text()


# --- fake hosts in a private mount namespace ----------------------------------------------

STUB_TEXT = "# fake resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
UPLINK_TEXT = "# fake systemd-resolved uplink\nnameserver 192.0.2.1\nsearch uplink.example\n"
PLAIN_TEXT = "# fake plain file\nnameserver 127.0.0.53\nsearch plain.example\n"

# What the fake host's /etc/resolv.conf is, and what reading it gives.
LAYOUTS = {
    # systemd-resolved's recommended mode: a symlink to its stub.
    "stub-symlink": ("../run/systemd/resolve/stub-resolv.conf", STUB_TEXT),
    # Its uplink mode: a symlink to the upstream servers' list.
    "uplink-symlink": ("../run/systemd/resolve/resolv.conf", UPLINK_TEXT),
    # resolved running, /etc/resolv.conf a plain file: nss-resolve still talks
    # to resolved's socket.
    "plain-file": (None, PLAIN_TEXT),
}

# Run by root in a fresh private mount namespace: make this host look like a
# systemd-resolved host running nscd and avahi, run the probe, run wg-wrap
# (the remaining arguments), run the probe again.  Every change lives in the
# tmpfs on $T, behind overlays: the real /etc and /run are never written.
FAKE_HOST = r"""
set -eu
T=$1 link=$2 text=$3 probe=$4 py=$5
shift 5
mount -t tmpfs -o mode=0755,size=4m wg-wrap-fake-host "$T"
mkdir "$T/etc.up" "$T/etc.work" "$T/run.up" "$T/run.work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$T/etc.up,workdir=$T/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/run,upperdir=$T/run.up,workdir=$T/run.work" /run
rm -rf /run/systemd/resolve /run/nscd /run/avahi-daemon
mkdir -p /run/systemd/resolve /run/nscd /run/avahi-daemon
printf '%s' "$STUB_TEXT" > /run/systemd/resolve/stub-resolv.conf
printf '%s' "$UPLINK_TEXT" > /run/systemd/resolve/resolv.conf
"$py" -c 'import socket, sys
for path in sys.argv[1:]:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(path)
' /run/systemd/resolve/io.systemd.Resolve /run/nscd/socket /run/avahi-daemon/socket
rm -f /etc/resolv.conf
if [ -n "$link" ]; then ln -s "$link" /etc/resolv.conf
else printf '%s' "$text" > /etc/resolv.conf; fi
sh -c "$probe" probe outside-before
rc=0
"$@" || rc=$?
sh -c "$probe" probe outside-after
exit $rc
"""

# What a program sees; each section starts with "@@WHERE NAME".
PROBE = r"""
where=$1
section() { echo "@@$where $1"; }
section link; readlink /etc/resolv.conf || echo "(regular file)"
section resolv.conf; cat /etc/resolv.conf
section resolve-dir; ls -A /run/systemd/resolve
section stub; cat /run/systemd/resolve/stub-resolv.conf
section uplink; cat /run/systemd/resolve/resolv.conf
section sockets
for s in /run/systemd/resolve/io.systemd.Resolve /run/nscd/socket /run/avahi-daemon/socket; do
    if [ -S "$s" ]; then echo "socket $s"; fi
done
section nscd-dir; ls -A /run/nscd
section avahi-dir; ls -A /run/avahi-daemon
section end
"""


def sections(stdout: str) -> dict[tuple[str, str], str]:
    found: dict[tuple[str, str], str] = {}
    key: tuple[str, str] | None = None
    for line in stdout.splitlines(keepends=True):
        m = re.fullmatch(r"@@(\S+) (\S+)\n?", line)
        if m:
            key = (m.group(1), m.group(2))
            found[key] = ""
        elif key is not None:
            found[key] += line
    return found


def run_on_fake_host(
    stage: Stage, user: User, runtime_dir: Path, conf: Path, layout: str
) -> tuple[int, dict[tuple[str, str], str], str]:
    link, text = LAYOUTS[layout]
    wg_wrap = stage.wg_wrap("run", "-c", str(conf), "--", "sh", "-c", PROBE, "probe", "inside")
    root = Path(tempfile.mkdtemp(prefix="wg-wrap-fakehost-"))
    env = user_env(runtime_dir, {"STUB_TEXT": STUB_TEXT, "UPLINK_TEXT": UPLINK_TEXT})
    try:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--",
             "sh", "-c", FAKE_HOST, "fake-host", str(root), link or "", text, PROBE,
             sys.executable, *as_user_argv(user, wg_wrap)],
            env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=FAKE_HOST_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"the fake host run timed out: {out} {err}")
    finally:
        os.rmdir(root)  # empty: everything lived in the namespace's tmpfs
    found = sections(out)
    for where in ("outside-before", "inside", "outside-after"):
        assert (where, "end") in found, f"probe {where} did not finish: {out} {err}"
    return proc.returncode, found, err


@pytest.fixture
def fake_host_cleanup(test_user: User, user_runtime_dir: Path) -> Iterator[None]:
    before = host_resolver_state(), our_mounts()
    yield
    assert (host_resolver_state(), our_mounts()) == before, "the real host changed"
    assert_nothing_left(test_user, user_runtime_dir)


def assert_fake_host_intact(seen: dict[tuple[str, str], str], layout: str) -> None:
    """Outside wg-wrap, before and after: the fake host is what we built
    (so the hiding seen inside is wg-wrap's doing), and wg-wrap changed nothing."""
    link, text = LAYOUTS[layout]
    for where in ("outside-before", "outside-after"):
        assert seen[(where, "link")].strip() == (link or "(regular file)")
        assert seen[(where, "resolv.conf")] == text
        assert seen[(where, "resolve-dir")].split() == ["io.systemd.Resolve", "resolv.conf",
                                                         "stub-resolv.conf"]
        assert seen[(where, "stub")] == STUB_TEXT
        assert seen[(where, "uplink")] == UPLINK_TEXT
        assert len(seen[(where, "sockets")].splitlines()) == 3, seen[(where, "sockets")]


def assert_daemons_hidden(seen: dict[tuple[str, str], str], layout: str) -> None:
    link, _ = LAYOUTS[layout]
    assert seen[("inside", "link")].strip() == (link or "(regular file)")  # the symlink stays
    assert seen[("inside", "resolve-dir")].split() == ["resolv.conf", "stub-resolv.conf"]
    assert seen[("inside", "sockets")] == ""
    assert seen[("inside", "nscd-dir")] == ""
    assert seen[("inside", "avahi-dir")] == ""


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fake_resolved_host_dns_from_config_replaces_every_resolver_path(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    fake_host_cleanup: None, layout: str,
) -> None:
    server = f"10.{next(_nets)}.0.1"
    conf = write_conf(user_tmp, test_user, f"{server}, corp.example")
    status, seen, err = run_on_fake_host(stage, test_user, user_runtime_dir, conf, layout)
    assert status == 0, err
    assert_fake_host_intact(seen, layout)
    assert_daemons_hidden(seen, layout)
    inside = seen[("inside", "resolv.conf")]
    assert nameservers(inside) == [server], inside
    assert searches(inside) == ["corp.example"], inside
    # Both names the symlink may point to hold the generated file.
    assert seen[("inside", "stub")] == inside
    assert seen[("inside", "uplink")] == inside
    assert "warning" not in err, err


@pytest.mark.parametrize(
    ("layout", "loopback"),
    [("stub-symlink", True), ("uplink-symlink", False), ("plain-file", True)],
)
def test_fake_resolved_host_without_dns_keeps_the_hosts_file_and_warns_on_loopback(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    fake_host_cleanup: None, layout: str, loopback: bool,
) -> None:
    conf = write_conf(user_tmp, test_user, None)
    status, seen, err = run_on_fake_host(stage, test_user, user_runtime_dir, conf, layout)
    assert status == 0, err
    assert_fake_host_intact(seen, layout)
    assert_daemons_hidden(seen, layout)
    _, host_text = LAYOUTS[layout]
    assert seen[("inside", "resolv.conf")] == host_text
    warning = (
        "wg-wrap: warning: the host's resolver 127.0.0.53 is a loopback address, "
        "unreachable inside the tunnel; set DNS = in the config or pass --dns"
    )
    if loopback:
        assert warning in err, err
    else:
        assert "warning" not in err, err
