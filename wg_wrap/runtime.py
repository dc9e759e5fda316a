"""Runtime state: ``$XDG_RUNTIME_DIR/wg-wrap/<profile>/``.

Everything here is owned by the user and private (directories 0700, files
0600).  A directory that exists with another owner, looser permissions or as a
symlink is refused rather than "fixed": someone may be trying to make us write
where they can read.

This module is on the join path: standard library only (``tomli_w`` is
imported when a state file is written, which only a start does).
"""

from __future__ import annotations

import fcntl
import os
import stat

from wg_wrap.errors import ProfileError, RuntimeDirError

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:
    from typing import Any

_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_NAME_REST = _NAME_FIRST | frozenset(".-")


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and name[0] in _NAME_FIRST and set(name) <= _NAME_REST

STATE_FILE = "state.toml"
RESOLV_CONF = "resolv.conf"
SIDECAR_LOG = "sidecar.log"
HOLD_FILE = "hold"
RERESOLVE_PLAN = "reresolve.json"  # written by wg-wrap: the names to re-resolve
ENDPOINTS_FILE = "endpoints.json"  # written by the sidecar: what they resolve to
VIEW_FILE = "view.json"  # written by the sidecar: the namespace's view of the host
# Made by whoever stops a sidecar on purpose, before it signals it: the
# aftercare, seeing the sidecar end without its clean mark (killed after its
# grace), then says nothing to the programs inside.
STOPPING_FILE = "stopping"
# Port forwarding (wg_wrap.portfwd): wg-wrap's plan, the sidecar's status
# and the port itself.
PORTFORWARD_PLAN = "portforward.json"
PORTFORWARD_STATUS = "portforward-status.json"
FORWARDED_PORT = "forwarded_port"


def check_profile_name(name: str) -> str:
    if not _valid_name(name):
        raise ProfileError(
            f"invalid profile name {name!r}",
            hint="use up to 64 letters, digits, '_', '-' or '.', not starting with '.' or '-'",
        )
    return name


def _check_private_dir(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{path} is not a directory (refusing a symlink or file there)")
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeDirError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be private (0700)",
            hint=f"remove it or `chmod 700 {path}`",
        )


def make_private_dir(path: str) -> str:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RuntimeDirError(f"cannot create {path}: {e.strerror}") from e
    _check_private_dir(path)
    return path


def fallback_base_dir() -> str:
    """The runtime directory without ``XDG_RUNTIME_DIR``."""
    return f"/tmp/wg-wrap-{os.geteuid()}"


def base_dir(create: bool = True) -> str:
    """The per-user runtime directory, created private when missing."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        path = os.path.join(xdg, "wg-wrap")
    else:
        path = fallback_base_dir()
    if not create:
        if not os.path.lexists(path):
            return path
        _check_private_dir(path)
        return path
    return make_private_dir(path)


# How long a command waits for a lock another wg-wrap command holds: their
# critical sections are short and bounded (docs/design.md, "Locks and
# timeouts"), so a wait longer than this means something is stuck.
LOCK_WAIT = 15.0


def _flock_within(fd: int, how: int, timeout: float, what: str) -> None:
    """flock(fd, how), waiting at most ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ProfileError(
                    f"{what} has been held by another wg-wrap command for {timeout:g} s",
                    hint="a command stuck or stopped (Ctrl-Z?) holds it: finish or kill it",
                ) from None
            time.sleep(0.01)


class _DirectoryLock:
    """An exclusive flock on a directory, waited for at most ``timeout``."""

    def __init__(self, path: str, what: str, timeout: float) -> None:
        self.path, self.what, self.timeout = path, what, timeout
        self.fd = -1

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> None:
        self.fd = self._open()
        try:
            _flock_within(self.fd, fcntl.LOCK_EX, self.timeout, self.what)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
        self.fd = -1


class locked(_DirectoryLock):
    """The runtime lock: the set of profiles (creating, starting, joining,
    stopping, removing one). Held briefly: nothing under it waits on a
    running sidecar beyond a bounded start, and acquiring it is bounded too.
    Operations on one running profile's sidecar (publish, unpublish) take
    that profile's lock instead (profile_locked)."""

    def __init__(self, base: str, timeout: float = LOCK_WAIT) -> None:
        super().__init__(base, f"the runtime lock ({base})", timeout)


class profile_locked(_DirectoryLock):
    """One profile's lock (flock on its directory): serializes what talks to
    its sidecar and rewrites its state.toml (publish, unpublish), without
    holding up any other profile."""

    def __init__(self, profile: Profile, timeout: float = LOCK_WAIT) -> None:
        super().__init__(profile.dir, f"the lock of profile {profile.name}", timeout)
        self.name = profile.name

    def _open(self) -> int:
        try:
            return super()._open()
        except FileNotFoundError:
            raise ProfileError(f"profile {self.name!r} is not running") from None


class State:
    """What ``state.toml`` records about a running profile.

    A plain class rather than a dataclass: importing ``dataclasses`` costs
    the join path several milliseconds.
    """

    FIELDS = (
        "name", "mode", "sidecar_pid", "sidecar_start", "config_path", "config_digest",
        "ifname", "created_at", "addresses", "dns", "mtu", "endpoints", "public_key",
        "listen_port", "ready", "published", "socks", "socks_udp", "http_proxy", "proxy_auth",
        "netns", "userns", "mntns", "sockets", "via", "via_netns",
    )

    def __init__(
        self,
        name: str,
        mode: str,  # "ephemeral" or "persistent"
        sidecar_pid: int,
        sidecar_start: int,  # /proc/PID/stat starttime: pids are reused
        config_path: str,
        config_digest: str,
        ifname: str,
        created_at: float,
        addresses: list[str] | None = None,
        dns: list[str] | None = None,
        mtu: int = 1420,
        endpoints: list[str] | None = None,
        public_key: str = "",
        listen_port: int = 0,
        ready: bool = True,  # False from the sidecar's start until it is configured
        # What the host reaches inside through (wg_wrap.publish): published
        # ports as "ADDR:HOSTPORT:PORT/PROTO", the proxies' "ADDR:PORT".
        published: list[str] | None = None,
        socks: str = "",
        socks_udp: str = "",
        http_proxy: str = "",
        proxy_auth: bool = False,
        # The namespaces' identities ("net:[4026532291]"): what a join or a
        # heal must enter (the launcher checks it is there), and how the
        # programs left inside are found if the sidecar dies
        # (wg_wrap.session.heal).
        netns: str = "",
        userns: str = "",
        mntns: str = "",
        # The token of the sidecar's UAPI and control sockets' addresses
        # (wg_wrap.sockets).
        sockets: str = "",
        # Multi-hop (wg_wrap.hop): the profile whose network namespace holds
        # this one's host socket, and that namespace's identity.
        via: str = "",
        via_netns: str = "",
    ) -> None:
        self.name = name
        self.mode = mode
        self.sidecar_pid = sidecar_pid
        self.sidecar_start = sidecar_start
        self.config_path = config_path
        self.config_digest = config_digest
        self.ifname = ifname
        self.created_at = created_at
        self.addresses = addresses or []
        self.dns = dns or []
        self.mtu = mtu
        self.endpoints = endpoints or []
        self.public_key = public_key
        self.listen_port = listen_port
        self.ready = ready
        self.published = published or []
        self.socks = socks
        self.socks_udp = socks_udp
        self.http_proxy = http_proxy
        self.proxy_auth = proxy_auth
        self.netns = netns
        self.userns = userns
        self.mntns = mntns
        self.sockets = sockets
        self.via = via
        self.via_netns = via_netns

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        return cls(**{k: data[k] for k in cls.FIELDS if k in data})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"State({self.to_dict()!r})"

    @property
    def uapi_address(self) -> str:
        from wg_wrap import sockets

        return sockets.address(self.sockets, sockets.UAPI)

    @property
    def control_address(self) -> str:
        from wg_wrap import sockets

        return sockets.address(self.sockets, sockets.CONTROL)


class Profile:
    """Paths of one profile's runtime directory."""

    def __init__(self, name: str, directory: str) -> None:
        self.name = name
        self.dir = directory

    @classmethod
    def at(cls, base: str, name: str) -> Profile:
        return cls(check_profile_name(name), os.path.join(base, name))

    @property
    def state_path(self) -> str:
        return os.path.join(self.dir, STATE_FILE)

    @property
    def resolv_path(self) -> str:
        return os.path.join(self.dir, RESOLV_CONF)

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, SIDECAR_LOG)

    @property
    def hold_path(self) -> str:
        return os.path.join(self.dir, HOLD_FILE)

    @property
    def reresolve_path(self) -> str:
        return os.path.join(self.dir, RERESOLVE_PLAN)

    @property
    def endpoints_path(self) -> str:
        return os.path.join(self.dir, ENDPOINTS_FILE)

    @property
    def view_path(self) -> str:
        return os.path.join(self.dir, VIEW_FILE)

    @property
    def portforward_plan_path(self) -> str:
        return os.path.join(self.dir, PORTFORWARD_PLAN)

    @property
    def portforward_status_path(self) -> str:
        return os.path.join(self.dir, PORTFORWARD_STATUS)

    def create_dir(self) -> None:
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError as e:
            raise ProfileError(f"profile directory {self.dir} already exists") from e
        _check_private_dir(self.dir)

    def remove_sidecar_files(self) -> None:
        """What a dead sidecar left that its successor must make anew: the
        files of its re-resolution and of its view."""
        for name in (RERESOLVE_PLAN, ENDPOINTS_FILE, VIEW_FILE, STOPPING_FILE,
                     PORTFORWARD_STATUS, FORWARDED_PORT, STATE_FILE + ".tmp"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass

    def mark_stopping(self) -> None:
        """Say that the sidecar is being stopped on purpose (STOPPING_FILE)."""
        try:
            os.close(os.open(os.path.join(self.dir, STOPPING_FILE),
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        except FileNotFoundError:
            pass

    def remove_dir(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

    def read_state(self) -> State | None:
        import tomllib

        try:
            with open(self.state_path, "rb") as f:
                return State.from_dict(tomllib.load(f))
        except FileNotFoundError:
            return None
        except (tomllib.TOMLDecodeError, TypeError, OSError):
            return None  # half-written or foreign: treated as stale

    def read_join_state(self) -> tuple[int, int, str, tuple[str, str, str]] | None:
        """Sidecar pid, start time, mode and namespaces (user, net, mnt): all
        that joining needs (None when there is no state, or the profile never
        finished starting).

        Read without tomllib, which costs the join path ~7 ms to import (it
        pulls in typing, datetime and re): state.toml is written by
        write_state with tomli-w, whose output for these scalars is plain
        ``key = value`` lines.  Anything unexpected falls back to tomllib.
        """
        wanted = ("sidecar_pid", "sidecar_start", "mode", "ready", "userns", "netns", "mntns")
        found: dict[str, str] = {}
        try:
            with open(self.state_path) as f:
                for line in f:
                    key, sep, value = line.partition(" = ")
                    if sep and key in wanted:
                        found[key] = value.strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            pass
        pid, start, mode, ready = (found.get(k, "") for k in wanted[:4])
        spaces = tuple(found.get(k, "").strip('"') for k in wanted[4:])
        if (pid.isdigit() and start.isdigit() and mode in ('"ephemeral"', '"persistent"')
                and ready in ("true", "false")
                and all(s.startswith(("user:[", "net:[", "mnt:[")) for s in spaces)):
            if ready != "true":
                return None
            return int(pid), int(start), mode.strip('"'), (spaces[0], spaces[1], spaces[2])
        state = self.read_state()
        if state is None or not state.ready:
            return None
        return (state.sidecar_pid, state.sidecar_start, state.mode,
                (state.userns, state.netns, state.mntns))

    def write_state(self, state: State) -> None:
        import tomli_w

        tmp = os.path.join(self.dir, STATE_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(state.to_dict(), f)
        os.replace(tmp, self.state_path)


def process_start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses.
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19])


def forwarded_port(profile_dir: str) -> str | None:
    """The port in the profile's FORWARDED_PORT, if the sidecar holds one
    (one read: the join path passes it on)."""
    try:
        fd = os.open(os.path.join(profile_dir, FORWARDED_PORT), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 16).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text if text.isdigit() else None


def process_stopped(pid: int) -> bool:
    """Whether pid is stopped (SIGSTOP, Ctrl-Z, a tracer): it answers nothing
    until continued."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :][:1] in (b"T", b"t")


def list_profiles(base: str) -> list[Profile]:
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    return [
        Profile(n, os.path.join(base, n))
        for n in names
        if _valid_name(n) and os.path.isdir(os.path.join(base, n))
    ]
