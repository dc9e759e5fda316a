"""Runtime state: ``$XDG_RUNTIME_DIR/wg-wrap/<profile>/``.

Everything here is owned by the user and private (directories 0700, files
0600).  A directory that exists with another owner, looser permissions or as a
symlink is refused rather than "fixed": someone may be trying to make us write
where they can read.

This module is on the join path: standard library only (``tomli_w`` is
imported when a state file is written, which only a start does).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wg_wrap.errors import ProfileError, RuntimeDirError

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")

STATE_FILE = "state.toml"
UAPI_SOCKET = "uapi.sock"
RESOLV_CONF = "resolv.conf"
SIDECAR_LOG = "sidecar.log"
HOLD_FILE = "hold"


def check_profile_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(
            f"invalid profile name {name!r}",
            hint="use up to 64 letters, digits, '_', '-' or '.', not starting with '.' or '-'",
        )
    return name


def _check_private_dir(path: Path) -> None:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"{path} is not a directory (refusing a symlink or file there)")
    if st.st_uid != os.geteuid():
        raise RuntimeDirError(f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeDirError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be private (0700)",
            hint=f"remove it or `chmod 700 {path}`",
        )


def _make_private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RuntimeDirError(f"cannot create {path}: {e.strerror}") from e
    _check_private_dir(path)
    return path


def base_dir(create: bool = True) -> Path:
    """The per-user runtime directory, created private when missing."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
        path = Path(xdg) / "wg-wrap"
    else:
        path = Path("/tmp") / f"wg-wrap-{os.geteuid()}"
    if not create:
        if not os.path.lexists(path):
            return path
        _check_private_dir(path)
        return path
    return _make_private_dir(path)


@contextlib.contextmanager
def locked(base: Path) -> Iterator[None]:
    """Serialize operations on the user's profiles (start, join, stop, cleanup).

    One lock for all profiles: the critical sections are short (a start takes
    a fraction of a second) and a single lock cannot deadlock.
    """
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class State:
    """What ``state.toml`` records about a running profile."""

    name: str
    mode: str  # "ephemeral" or "persistent"
    sidecar_pid: int
    sidecar_start: int  # /proc/PID/stat starttime: pids are reused
    config_path: str
    config_digest: str
    ifname: str
    created_at: float
    addresses: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    mtu: int = 1420
    endpoints: list[str] = field(default_factory=list)
    public_key: str = ""
    listen_port: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class Profile:
    """Paths of one profile's runtime directory."""

    name: str
    dir: Path

    @classmethod
    def at(cls, base: Path, name: str) -> Profile:
        return cls(check_profile_name(name), base / name)

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def uapi_path(self) -> Path:
        return self.dir / UAPI_SOCKET

    @property
    def resolv_path(self) -> Path:
        return self.dir / RESOLV_CONF

    @property
    def log_path(self) -> Path:
        return self.dir / SIDECAR_LOG

    @property
    def hold_path(self) -> Path:
        return self.dir / HOLD_FILE

    def create_dir(self) -> None:
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError as e:
            raise ProfileError(f"profile directory {self.dir} already exists") from e
        _check_private_dir(self.dir)

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def read_state(self) -> State | None:
        try:
            with open(self.state_path, "rb") as f:
                return State.from_dict(tomllib.load(f))
        except FileNotFoundError:
            return None
        except (tomllib.TOMLDecodeError, TypeError, OSError):
            return None  # half-written or foreign: treated as stale

    def write_state(self, state: State) -> None:
        import tomli_w

        tmp = self.dir / (STATE_FILE + ".tmp")
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


def sidecar_alive(state: State) -> bool:
    return process_start_time(state.sidecar_pid) == state.sidecar_start


def list_profiles(base: Path) -> list[Profile]:
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    return [Profile(n, base / n) for n in names if _NAME_RE.fullmatch(n) and (base / n).is_dir()]


def _net_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def namespace_members(sidecar_pid: int) -> list[int]:
    """Processes attached to a profile: those in its network namespace.

    The kernel is the record: a process is attached exactly as long as it
    lives in the namespace, however it got there (a wrapped program's
    children, a daemon that double-forked) and however its wrapper ended.
    """
    own = _net_namespace(sidecar_pid)
    if own is None:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != sidecar_pid and _net_namespace(entry) == own:
            members.append(int(entry))
    return sorted(members)


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
