"""The runtime directory is private and refused when it is not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from wg_wrap import launch, runtime
from wg_wrap.errors import ProfileError, RuntimeDirError


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_created_private_under_xdg_runtime_dir(xdg: Path) -> None:
    base = runtime.base_dir()
    assert base == str(xdg / "wg-wrap")
    assert os.stat(base).st_mode & 0o777 == 0o700


def test_falls_back_to_a_per_user_directory_in_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime.base_dir(create=False) == f"/tmp/wg-wrap-{os.geteuid()}"


def test_refuses_a_symlink(xdg: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    elsewhere.chmod(0o700)
    (xdg / "wg-wrap").symlink_to(elsewhere)
    with pytest.raises(RuntimeDirError, match="not a directory"):
        runtime.base_dir()


def test_refuses_a_loose_mode(xdg: Path) -> None:
    (xdg / "wg-wrap").mkdir(mode=0o755)
    (xdg / "wg-wrap").chmod(0o755)
    with pytest.raises(RuntimeDirError, match="must be private"):
        runtime.base_dir()


def test_refuses_another_owner(xdg: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test chowns a directory: run as root (make test does)")
    (xdg / "wg-wrap").mkdir(mode=0o700)
    os.chown(xdg / "wg-wrap", 12345, 12345)
    with pytest.raises(RuntimeDirError, match="owned by uid 12345"):
        runtime.base_dir()


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "..", "x" * 65, "sp ace"])
def test_profile_names_are_checked(name: str) -> None:
    with pytest.raises(ProfileError):
        runtime.check_profile_name(name)


def test_state_round_trip_with_private_mode(xdg: Path) -> None:
    profile = runtime.Profile.at(runtime.base_dir(), "wg0")
    profile.create_dir()
    state = runtime.State(
        name="wg0", mode="ephemeral", sidecar_pid=42, sidecar_start=7, config_path="/x/wg0.conf",
        config_digest="d" * 64, ifname="tun0", created_at=1.5, addresses=["10.0.0.2/32"],
        userns="user:[4026532178]", netns="net:[4026532180]", mntns="mnt:[4026532179]",
    )
    profile.write_state(state)
    assert profile.read_state() == state
    assert profile.read_join_state() == (
        42, 7, "ephemeral", ("user:[4026532178]", "net:[4026532180]", "mnt:[4026532179]"))
    assert os.stat(profile.state_path).st_mode & 0o777 == 0o600
    Path(profile.state_path).write_text("garbage = [")
    assert profile.read_state() is None  # treated as stale, never a crash
    assert profile.read_join_state() is None


def test_start_time_distinguishes_a_live_process_from_a_reused_pid() -> None:
    me = runtime.process_start_time(os.getpid())
    assert me is not None
    found = launch.open_sidecar(os.getpid(), me)
    assert found is not None and found.pid == os.getpid()
    found.close()
    assert launch.open_sidecar(os.getpid(), me + 1) is None  # same pid, another process


def test_a_zombie_counts_as_gone() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        start = runtime.process_start_time(pid)
        for _ in range(250):  # until the child is a zombie: exited, not reaped
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[1].split()[0] == "Z":
                    break
            time.sleep(0.02)
        assert start is not None and launch.open_sidecar(pid, start) is None
    finally:
        os.waitpid(pid, 0)
