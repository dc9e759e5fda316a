"""`wg-wrap doctor`, and the hints a failed start gives, on a machine that is
fine and on one where /dev/net/tun is not usable by users."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stage, User, run_as_user, user_env
from peers import Keys, Net, client_config, silent_udp_port

from wg_wrap import doctor

pytestmark = pytest.mark.e2e


def test_doctor_passes_on_a_capable_machine(
    stage: Stage, test_user: User, user_runtime_dir: Path
) -> None:
    result = run_as_user(test_user, stage.wg_wrap("doctor"), env=user_env(user_runtime_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("helper programs", "/dev/net/tun", "user namespaces", "TUN in a namespace",
                  "runtime directory"):
        assert f"  ok    {check}:" in result.stdout
    assert result.stdout.endswith("all good: wg-wrap can run here\n")
    assert not (user_runtime_dir / "wg-wrap").exists(), "doctor must not create state"


@pytest.fixture
def tun_closed_to_users() -> Iterator[None]:
    """/dev/net/tun as some minimal systems ship it: 0600 root."""
    tun = Path("/dev/net/tun")
    mode = tun.stat().st_mode & 0o777
    tun.chmod(0o600)
    try:
        yield
    finally:
        tun.chmod(mode)


def test_unusable_tun_is_diagnosed_with_its_fix(
    stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path,
    tun_closed_to_users: None,
) -> None:
    result = run_as_user(test_user, stage.wg_wrap("doctor"), env=user_env(user_runtime_dir))
    assert result.returncode == 1
    assert "  FAIL  /dev/net/tun: cannot open it: Permission denied (mode 0600)" in result.stdout
    assert "fix: /dev/net/tun must exist and be readable and writable by everyone" in result.stdout
    assert "chmod 0666 /dev/net/tun" in result.stdout

    conf = user_tmp / "wg0.conf"
    conf.write_text(client_config(Keys(), Net("10.98.0", "fd00:98::"), silent_udp_port()))
    os.chown(conf, test_user.uid, test_user.gid)
    conf.chmod(0o600)
    run = run_as_user(test_user, stage.wg_wrap("run", "-c", str(conf), "--", "true"),
                      env=user_env(user_runtime_dir))
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    assert lines[0].startswith("wg-wrap: error: starting the sidecar: creating TUN device tun0")
    assert lines[1].startswith("wg-wrap: hint: /dev/net/tun must exist and be readable")
    assert list((user_runtime_dir / "wg-wrap").iterdir()) == [], "a failed start leaves nothing"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("wg-wrap-launcher: creating namespaces: Operation not permitted", doctor.USERNS_HINT),
        ("wg-wrap-launcher: setting up uid map: Operation not permitted", doctor.USERNS_HINT),
        ("creating TUN device tun0: operation not permitted", doctor.TUN_HINT),
        ("UAPI socket: address already in use", None),
    ],
)
def test_start_failures_map_to_their_fix(reason: str, expected: str | None) -> None:
    assert doctor.hint_for(reason) == expected
