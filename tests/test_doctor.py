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
from peers import Keys, Net, client_config, silent_udp_port

from wg_wrap import apparmor, doctor, hints, launch

VENV = "/home/ann/.venv/lib/python3.12/site-packages/wg_wrap/_libexec/wg-wrap-launcher"
SETGROUPS_DENIED = "wg-wrap-launcher: denying setgroups: Operation not permitted"


@pytest.mark.e2e
def test_doctor_passes_on_a_capable_machine(
    stage: Stage, test_user: User, user_runtime_dir: Path, user_tmp: Path
) -> None:
    """The probe really starts a sidecar (its view of the host, with a
    resolv.conf of its own and a hidden directory; its TUN device, given an
    address) and joins it, as the unprivileged user."""
    result = run_as_user(test_user, stage.wg_wrap("doctor"),
                         env=user_env(user_runtime_dir, {"TMPDIR": str(user_tmp)}))
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("helper programs", "AppArmor", "/dev/net/tun", "user namespaces",
                  "TUN in a namespace", "runtime directory"):
        assert f"  ok    {check}:" in result.stdout
    assert ("  ok    user namespaces: user, mount and network namespaces, with wg-wrap's "
            "view of the host in them\n") in result.stdout
    assert (f"  ok    TUN in a namespace: created {doctor.PROBE_IFNAME}, gave it 192.0.2.1/24 "
            "(RTM_NEWADDR) and set it up, with the sidecar's capabilities only\n") in result.stdout
    assert result.stdout.endswith("all good: wg-wrap can run here\n")
    assert not (user_runtime_dir / "wg-wrap").exists(), "doctor must not create state"
    assert list(user_tmp.iterdir()) == [], "its scratch directory is gone"
    assert not Path(f"/sys/class/net/{doctor.PROBE_IFNAME}").exists(), "nothing on the host"


@pytest.mark.e2e
def test_the_probe_fails_when_the_view_is_not_there(
    stage: Stage, test_user: User, user_tmp: Path
) -> None:
    """Control for the probe's own checks: run outside the namespaces, where
    there is no view, it refuses (so its "ok" above means the view was there)."""
    script = "import sys; from wg_wrap import doctor; sys.exit(doctor.inside(sys.argv[1:]))"
    hidden = user_tmp / "hidden"
    hidden.mkdir()
    os.chown(hidden, test_user.uid, test_user.gid)
    wrong = run_as_user(test_user, [str(stage.python), "-c", script, str(hidden), "not it\n",
                                    "lo"])
    assert wrong.returncode == 3
    assert wrong.stderr == "mount: /etc/resolv.conf is not the probe's\n"
    resolv = Path("/etc/resolv.conf").read_text()
    shown = run_as_user(test_user, [str(stage.python), "-c", script, str(hidden), resolv, "lo"])
    assert shown.returncode == 3
    assert shown.stderr == f"mount: {hidden} is not hidden\n"
    # /proc: another file system than its parent's, as a hidden directory is.
    no_address = run_as_user(test_user, [str(stage.python), "-c", script, "/proc", resolv,
                                         "lo"])
    assert no_address.returncode == 3
    assert no_address.stderr == "network: lo does not have the address it was given\n"


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
    assert ("  FAIL  TUN in a namespace: creating TUN device wgwrapdoctor0: "
            "permission denied\n") in result.stdout

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
    # Nothing left but the sidecar's log of the failed start, kept and named.
    kept = user_runtime_dir / "wg-wrap" / "wg0.failed.log"
    assert list((user_runtime_dir / "wg-wrap").iterdir()) == [kept]
    assert lines[1].endswith(f"; the sidecar's log of this start is kept in {kept}")
    assert "creating TUN device tun0" in kept.read_text()


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

# What the launcher prints there: unshare works, but the new namespace has no
# capability, so the first step that needs one fails.
UBUNTU_FAILURE = doctor.ProbeRun(125, "", SETGROUPS_DENIED + "\n")
PROBE_OK = doctor.ProbeRun(0, "created wgwrapdoctor0, gave it 192.0.2.1/24 (RTM_NEWADDR) "
                           "and set it up\n", "")
INSTALL = ("wg-wrap doctor --apparmor-profile | sudo install -m 0644 /dev/stdin "
           "/etc/apparmor.d/wg-wrap-launcher")
LOAD = "sudo apparmor_parser -r /etc/apparmor.d/wg-wrap-launcher"
SYSCTL = "sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0"


@pytest.fixture
def ubuntu(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "root").ubuntu()


def render(machine: Machine, run: doctor.ProbeRun, launcher: str = VENV) -> str:
    machine.launcher(launcher)
    checks = doctor.namespace_checks(machine.detect(launcher), run, "wg-wrap")
    return doctor.format_checks(checks)


def assert_sysctl_comes_last(output: str) -> None:
    """The sysctl is offered once, after every other fix, as the last resort."""
    lines = output.splitlines()
    (at,) = [i for i, line in enumerate(lines) if SYSCTL in line]
    assert lines[at] == (f"        last resort: `{SYSCTL}` lowers the protection for the whole "
                         "machine: every program may then create user namespaces with "
                         "capabilities")
    assert not any("sudo" in line or "fix:" in line for line in lines[at + 1:]
                   if "AppArmor blocks it" not in line), output


def test_restricted_venv_launcher_gets_its_own_profile_first(ubuntu: Machine) -> None:
    """A pip install in a venv: no profile names its launcher.  The fix comes
    first: the exact profile for that path, the two commands installing and
    loading it; the sysctl only last."""
    output = render(ubuntu, UBUNTU_FAILURE)
    lines = output.splitlines()
    assert lines[0] == (
        "  FAIL  AppArmor: kernel.apparmor_restrict_unprivileged_userns=1: user namespaces get "
        "no capabilities (no uid map, mounts or TUN), and no profile in /etc/apparmor.d "
        f"exempts {VENV}"
    )
    assert lines[1] == (
        "        fix: give this launcher, and only it, the right to create user namespaces "
        "with their capabilities, with this AppArmor profile (/etc/apparmor.d/wg-wrap-launcher):"
    )
    profile = [f"          {line}".rstrip() for line in apparmor.render(VENV).splitlines()]
    assert lines[2:2 + len(profile)] == profile
    assert f"          profile wg-wrap-launcher {VENV} {apparmor.FLAGS}" in profile
    assert lines[2 + len(profile):5 + len(profile)] == [
        "        install and load it:", f"          {INSTALL}", f"          {LOAD}",
    ]
    assert lines.index(f"          {INSTALL}") > lines.index("          abi <abi/4.0>,")
    assert_sysctl_comes_last(output)
    assert f"  FAIL  user namespaces: {SETGROUPS_DENIED}" in lines
    assert "        fix: AppArmor blocks it: see the AppArmor fix above" in lines
    assert output.endswith("3 problems: see the fixes above\n")


def test_a_profile_installed_for_another_launcher_is_left_alone(ubuntu: Machine) -> None:
    """The .deb's profile is for /usr/libexec; the venv's is installed beside it."""
    ubuntu.profile("wg-wrap-launcher", apparmor.render("/usr/libexec/wg-wrap/wg-wrap-launcher"))
    output = render(ubuntu, UBUNTU_FAILURE)
    report = ubuntu.detect(VENV)
    assert ("(/etc/apparmor.d/wg-wrap-launcher is for /usr/libexec/wg-wrap/wg-wrap-launcher)"
            in output.splitlines()[0])
    assert f"/dev/stdin {report.install_path}\n" in output
    assert f"          profile {report.install_name} {VENV} {apparmor.FLAGS}" in output
    assert "/dev/stdin /etc/apparmor.d/wg-wrap-launcher\n" not in output
    assert_sysctl_comes_last(output)


@pytest.mark.parametrize("loaded", [(), None], ids=["not-loaded", "unreadable"])
def test_an_installed_profile_that_is_not_loaded_gets_loaded(
    ubuntu: Machine, loaded: tuple[str, ...] | None
) -> None:
    launcher = "/usr/libexec/wg-wrap/wg-wrap-launcher"
    ubuntu.profile("wg-wrap-launcher", apparmor.render(launcher))
    if loaded is not None:
        ubuntu.loaded("unprivileged_userns (enforce)", *loaded)
    output = render(ubuntu, UBUNTU_FAILURE, launcher)
    lines = output.splitlines()
    state = "is not loaded" if loaded is not None else "seems not loaded"
    assert lines[0].endswith(f"the profile /etc/apparmor.d/wg-wrap-launcher for {launcher} {state}")
    assert lines[1:3] == [
        "        fix: load the profile /etc/apparmor.d/wg-wrap-launcher (it exempts this "
        "launcher, and only it):",
        f"          {LOAD}",
    ]
    assert "abi <abi/4.0>" not in output, "the profile is there already"
    assert_sysctl_comes_last(output)


def test_a_loaded_profile_is_reported_and_asks_for_nothing(ubuntu: Machine) -> None:
    launcher = "/usr/libexec/wg-wrap/wg-wrap-launcher"
    ubuntu.profile("wg-wrap-launcher", apparmor.render(launcher))
    ubuntu.loaded("unprivileged_userns (enforce)", "wg-wrap-launcher (unconfined)")
    output = render(ubuntu, PROBE_OK, launcher)
    assert output.splitlines()[0] == (
        "  ok    AppArmor: kernel.apparmor_restrict_unprivileged_userns=1; the profile "
        f"wg-wrap-launcher (/etc/apparmor.d/wg-wrap-launcher) exempts {launcher} (loaded)"
    )
    assert "fix:" not in output and SYSCTL not in output
    assert output.endswith("all good: wg-wrap can run here\n")


def test_a_profile_whose_load_state_is_unknown_passes_when_the_probe_does(
    ubuntu: Machine,
) -> None:
    launcher = "/usr/libexec/wg-wrap/wg-wrap-launcher"
    ubuntu.profile("wg-wrap-launcher", apparmor.render(launcher))
    output = render(ubuntu, PROBE_OK, launcher)
    assert output.splitlines()[0].endswith(f"exempts {launcher} (the probe below passes)")
    assert output.endswith("all good: wg-wrap can run here\n")


def test_restriction_without_a_profile_is_noted_even_when_the_probe_passes(
    ubuntu: Machine,
) -> None:
    output = render(ubuntu, PROBE_OK)
    assert output.startswith("  note  AppArmor: kernel.apparmor_restrict_unprivileged_userns=1")
    assert f"          {INSTALL}\n" in output
    assert_sysctl_comes_last(output)
    assert output.endswith("all good: wg-wrap can run here\n")


def test_without_abi_4_the_profile_cannot_load_and_the_sysctl_is_what_is_left(
    tmp_path: Path,
) -> None:
    machine = Machine(tmp_path / "root").ubuntu(abi_4=False)
    output = render(machine, UBUNTU_FAILURE)
    assert output.splitlines()[1] == (
        "        fix: this AppArmor is older than 4.0 (no /etc/apparmor.d/abi/4.0): it cannot "
        "load a profile with a `userns` rule; upgrade AppArmor"
    )
    assert "abi <abi/4.0>" not in output and INSTALL not in output
    assert_sysctl_comes_last(output)


def test_a_launcher_path_apparmor_cannot_name_is_said_so(ubuntu: Machine) -> None:
    launcher = "/home/ann/v[1]/lib/wg_wrap/_libexec/wg-wrap-launcher"
    output = render(ubuntu, UBUNTU_FAILURE, launcher)
    assert output.splitlines()[1].startswith(f"        fix: {launcher}: an AppArmor profile "
                                             "cannot name this path literally ('[', ']')")
    assert_sysctl_comes_last(output)


@pytest.mark.parametrize(
    ("enabled", "restriction", "line"),
    [
        ("N", "1", "  ok    AppArmor: not enabled"),
        ("Y", "0", "  ok    AppArmor: enabled; unprivileged user namespaces are not restricted "
                   "(kernel.apparmor_restrict_unprivileged_userns=0 or absent)"),
    ],
)
def test_no_restriction_no_fix(tmp_path: Path, enabled: str, restriction: str, line: str) -> None:
    machine = Machine(tmp_path / "root").ubuntu(enabled=enabled, restriction=restriction)
    output = render(machine, UBUNTU_FAILURE)
    assert output.splitlines()[0] == line
    assert "AppArmor blocks it" not in output and SYSCTL not in output
    assert f"  FAIL  user namespaces: {SETGROUPS_DENIED}" in output
    assert f"        fix: {hints.USERNS_HINT}" in output


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


@pytest.mark.e2e
def test_doctor_prints_the_profile_for_its_own_launcher(stage: Stage, test_user: User) -> None:
    """`doctor --apparmor-profile` as the user: the profile for the staged
    launcher, byte for byte what `make install` rendered from the .in file."""
    done = run_as_user(test_user, stage.wg_wrap("doctor", "--apparmor-profile"), env=user_env())
    assert done.returncode == 0, done.stderr
    installed = stage.root / "venv" / "share" / "wg-wrap" / "apparmor" / "wg-wrap-launcher"
    assert done.stdout == installed.read_text()
    assert f"profile wg-wrap-launcher {stage.launcher} {apparmor.FLAGS}" in done.stdout
