"""`wg-wrap doctor`, and the hints a failed start gives: on this machine as it
is (fine), with /dev/net/tun closed to users, and, rendered from fake trees,
on an Ubuntu 23.10+ machine whose AppArmor restricts user namespaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from apparmor_tree import Machine
from conftest import Stage, User, run_as_user, user_env
from peers import Keys, Net, client_config, free_udp_port

from wg_wrap import apparmor, hints, launch

VENV = "/home/ann/.venv/lib/python3.12/site-packages/wg_wrap/_libexec/wg-wrap-launcher"
SETGROUPS_DENIED = "wg-wrap-launcher: denying setgroups: Operation not permitted"


@pytest.mark.e2e
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


@pytest.mark.e2e
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
    conf.write_text(client_config(Keys(), Net("10.98.0", "fd00:98::"), free_udp_port()))
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
        ("wg-wrap-launcher: creating namespaces: Operation not permitted", hints.USERNS_HINT),
        ("wg-wrap-launcher: setting up uid map: Operation not permitted", hints.USERNS_HINT),
        (SETGROUPS_DENIED, hints.USERNS_HINT),
        ("creating TUN device tun0: operation not permitted", hints.TUN_HINT),
        ("UAPI socket: address already in use", None),
        ("wg-wrap-launcher: mounting tmpfs on /run/nscd: Operation not permitted", None),
    ],
)
def test_start_failures_map_to_their_fix(
    reason: str, expected: str | None, tmp_path: Path
) -> None:
    """Without the AppArmor restriction (this machine, and a fake Ubuntu tree
    with it switched off), each failure gets its own fix."""
    assert hints.hint_for(reason) == expected
    unrestricted = Machine(tmp_path).ubuntu(restriction="0")
    assert hints.hint_for(reason, root=str(unrestricted.root), launcher=VENV) == expected
    assert launch._failure_hint(reason, verbose=True) == (
        expected or "`wg-wrap doctor` checks what wg-wrap needs from this machine"
    )


# ---- Ubuntu 23.10+: AppArmor restricts user namespaces (fake trees) ----------

LOAD = "sudo apparmor_parser -r /etc/apparmor.d/wg-wrap-launcher"


@pytest.fixture
def ubuntu(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "root").ubuntu()


# ---- a failed start on such a machine: one line, with the fix -------------------

@pytest.mark.parametrize(
    "reason",
    [
        SETGROUPS_DENIED,
        "wg-wrap-launcher: setting up uid map: Operation not permitted",
        "wg-wrap-launcher: bind-mounting /run/user/1000/wg-wrap/wg0/resolv.conf over "
        "/etc/resolv.conf: Operation not permitted",
        "wg-wrap-launcher: mounting tmpfs on /run/systemd/resolve: Permission denied",
        "creating TUN device tun0: operation not permitted",
        "configuring the network inside: adding address 10.0.0.2/32: Operation not permitted",
    ],
)
def test_a_start_failed_by_the_restriction_names_the_profile_fix(
    ubuntu: Machine, reason: str
) -> None:
    ubuntu.launcher(VENV)
    hint = hints.hint_for(reason, root=str(ubuntu.root), launcher=VENV)
    assert hint == (
        "AppArmor restricts user namespaces here (kernel.apparmor_restrict_unprivileged_userns=1)"
        f": give {VENV} its AppArmor profile: `{hints.wg_wrap_command()} doctor "
        "--apparmor-profile | sudo install -m 0644 /dev/stdin /etc/apparmor.d/wg-wrap-launcher "
        f"&& {LOAD}` (`wg-wrap doctor` explains)"
    )
    assert "\n" not in hint


def test_a_start_failure_with_the_profile_loaded_is_not_blamed_on_apparmor(
    ubuntu: Machine,
) -> None:
    launcher = "/usr/libexec/wg-wrap/wg-wrap-launcher"
    ubuntu.launcher(launcher)
    ubuntu.profile("wg-wrap-launcher", apparmor.render(launcher))
    ubuntu.loaded("wg-wrap-launcher (unconfined)")
    hint = hints.hint_for(SETGROUPS_DENIED, root=str(ubuntu.root), launcher=launcher)
    assert hint == hints.USERNS_HINT


def test_a_start_failure_with_the_profile_not_loaded_says_to_load_it(ubuntu: Machine) -> None:
    launcher = "/usr/libexec/wg-wrap/wg-wrap-launcher"
    ubuntu.launcher(launcher)
    ubuntu.profile("wg-wrap-launcher", apparmor.render(launcher))
    hint = hints.hint_for(SETGROUPS_DENIED, root=str(ubuntu.root), launcher=launcher)
    assert hint is not None
    assert hint.endswith(f": load the profile /etc/apparmor.d/wg-wrap-launcher that exempts "
                         f"{launcher}: `{LOAD}` (`wg-wrap doctor` explains)")


def test_the_command_named_in_a_fix_is_the_one_the_user_ran(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("sys.argv", ["/x/lib/python3/site-packages/wg_wrap/__main__.py"])
    assert hints.wg_wrap_command() == f"{sys.executable} -m wg_wrap"
    script = tmp_path / "my bin" / "wg-wrap"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr("sys.argv", [str(script)])
    monkeypatch.setenv("PATH", "/nonexistent")
    assert hints.wg_wrap_command() == f"'{script}'"
    monkeypatch.setenv("PATH", str(script.parent))
    assert hints.wg_wrap_command() == "wg-wrap"
    monkeypatch.setattr("sys.argv", ["-c"])
    assert hints.wg_wrap_command() == "wg-wrap"
