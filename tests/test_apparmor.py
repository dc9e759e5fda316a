"""AppArmor's user-namespace restriction (Ubuntu 23.10+): detection and the profile.

There is no AppArmor kernel here: detection only reads files, so each test
builds the files of a machine in a fake tree (``root``) and asks about it.
The profile is checked against its template, against our own parser, against
what ``make install`` renders, and against Debian's real apparmor_parser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from apparmor_tree import Machine
from conftest import Stage, User, run_as_user, user_env
from hypothesis import given
from hypothesis import strategies as st

from wg_wrap import apparmor

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_IN = REPO / "packaging" / "apparmor" / "wg-wrap-launcher.in"
PACKAGED = "/usr/libexec/wg-wrap/wg-wrap-launcher"
VENV = "/home/ann/.venv/lib/python3.12/site-packages/wg_wrap/_libexec/wg-wrap-launcher"


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path / "root")


# ---- the switches ---------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [("Y", True), ("N", False)])
def test_enabled_is_read_from_the_module_parameter(
    machine: Machine, value: str, expected: bool
) -> None:
    machine.ubuntu(enabled=value)
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.enabled is expected
    assert report.restriction is True
    assert report.restricted is expected, "the sysctl only restricts when AppArmor is on"


def test_no_apparmor_at_all_is_neither_enabled_nor_restricted(machine: Machine) -> None:
    report = machine.detect(machine.launcher(PACKAGED))
    assert (report.enabled, report.restriction, report.restricted) == (False, False, False)
    assert report.loaded is None and report.profile is None


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), (None, False)])
def test_restriction_is_the_sysctl(machine: Machine, value: str | None, expected: bool) -> None:
    machine.ubuntu()
    if value is None:
        (machine.root / apparmor.RESTRICT_FILE.lstrip("/")).unlink()  # kernels without it
    else:
        machine.write(apparmor.RESTRICT_FILE, value + "\n")
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.restriction is expected
    assert report.restricted is expected


@pytest.mark.parametrize("abi_4", [True, False])
def test_abi_4_is_the_file_in_etc_apparmor_d(machine: Machine, abi_4: bool) -> None:
    machine.ubuntu(abi_4=abi_4)
    assert machine.detect(machine.launcher(PACKAGED)).abi_4 is abi_4


# ---- profile files ---------------------------------------------------------------

def test_the_packaged_profile_is_found_for_the_installed_launcher(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.profile == apparmor.ProfileFile(
        "/etc/apparmor.d/wg-wrap-launcher", "wg-wrap-launcher", PACKAGED, disabled=False
    )
    assert report.install_name == "wg-wrap-launcher"


def test_no_profile_file_means_none_and_the_default_name(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("usr.bin.man", "profile man /usr/bin/man flags=(complain) {\n}\n")
    report = machine.detect(machine.launcher(VENV))
    assert report.profile is None
    assert report.profile_loaded is False
    assert report.elsewhere == ()
    assert report.install_name == "wg-wrap-launcher"
    assert report.install_path == "/etc/apparmor.d/wg-wrap-launcher"


def test_a_profile_attached_elsewhere_is_reported_and_never_overwritten(
    machine: Machine,
) -> None:
    """The packaged profile is for /usr/libexec; a venv's launcher needs its own,
    under another name: the package's file is not ours to replace."""
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    report = machine.detect(machine.launcher(VENV))
    assert report.profile is None
    assert [p.attachment for p in report.elsewhere] == [PACKAGED]
    assert report.install_name.startswith("wg-wrap-launcher-")
    assert report.install_name != "wg-wrap-launcher"
    commands = apparmor.fix_commands(report, "wg-wrap")
    assert all("/etc/apparmor.d/wg-wrap-launcher " not in c + " " for c in commands), commands
    assert commands[-1] == f"sudo apparmor_parser -r /etc/apparmor.d/{report.install_name}"
    # Another venv gets yet another name; the same one always the same.
    other = machine.detect(machine.launcher(VENV.replace("ann", "bob")))
    assert other.install_name != report.install_name
    assert machine.detect(VENV).install_name == report.install_name
    # Once that profile is installed, it is the one found.
    machine.profile(report.install_name, apparmor.render(VENV, report.install_name))
    again = machine.detect(VENV)
    assert again.profile is not None
    assert again.profile.name == report.install_name
    assert again.install_name == report.install_name


def test_attachment_is_matched_against_the_launchers_real_path(machine: Machine) -> None:
    """AppArmor sees the path the kernel resolves: a launcher reached through
    a symlink (a venv's lib64 -> lib) matches a profile for its real path, and
    a profile for the symlink's path does not attach."""
    machine.ubuntu()
    real = "/home/ann/.venv/lib/python3.12/site-packages/wg_wrap/_libexec/wg-wrap-launcher"
    machine.launcher(real)
    (machine.root / "home/ann/.venv/lib64").symlink_to("lib")
    via_link = real.replace("/lib/", "/lib64/")
    machine.profile("by-link", f"profile by-link {via_link} flags=(unconfined) {{\n}}\n")
    report = machine.detect(via_link)
    assert report.launcher == real
    assert report.profile is None
    machine.profile("by-real", f"profile by-real {real} flags=(unconfined) {{\n}}\n")
    report = machine.detect(via_link)
    assert report.profile is not None and report.profile.name == "by-real"


@pytest.mark.parametrize(
    ("header", "attaches"),
    [
        (f"profile wg-wrap-launcher {PACKAGED} flags=(unconfined) {{", True),
        (f"profile wg-wrap-launcher {PACKAGED} {{", True),
        (f"{PACKAGED} flags=(unconfined) {{", True),  # named by its path
        (f'profile "wg wrap" "{PACKAGED}" flags=(unconfined) {{  # quoted', True),
        ("profile w /usr/{lib,libexec}/wg-wrap/wg-wrap-launcher flags=(unconfined) {", True),
        ("profile w /usr/libexec/*/wg-wrap-launcher {", True),
        ("profile w /usr/**/wg-wrap-launcher {", True),
        ("profile w /usr/libexec/wg-wrap/wg-wrap-launche? {", True),
        ("profile w /usr/libexec/wg-wrap/wg-wrap-launche[rs] {", True),
        ("profile w /usr/*/wg-wrap-launcher {", False),  # * never crosses a /
        ("profile w /usr/libexec/wg-wrap/wg-wrap-launcher-old {", False),
        ("profile w @{libexec}/wg-wrap/wg-wrap-launcher {", False),  # variables: unknown
        ("profile wg-wrap-launcher flags=(unconfined) {", False),  # attaches to nothing
        (f"# profile wg-wrap-launcher {PACKAGED} flags=(unconfined) {{", False),
        (f"  {PACKAGED} rix,", False),  # a rule, not a header
    ],
)
def test_profile_headers_and_their_attachments(
    machine: Machine, header: str, attaches: bool
) -> None:
    machine.ubuntu()
    machine.profile("candidate", f"abi <abi/4.0>,\n\n{header}\n  userns,\n}}\n")
    report = machine.detect(machine.launcher(PACKAGED))
    assert (report.profile is not None) is attaches, report


def test_files_apparmor_parser_skips_are_skipped(machine: Machine) -> None:
    machine.ubuntu()
    text = apparmor.render(PACKAGED)
    for name in ("wg-wrap-launcher.dpkg-old", "wg-wrap-launcher~", ".wg-wrap-launcher",
                 "local/wg-wrap-launcher", "abstractions/wg-wrap"):
        machine.profile(name, text)
    assert machine.detect(machine.launcher(PACKAGED)).profile is None


def test_a_disabled_profile_is_reported_and_its_fix_enables_it(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    (machine.root / "etc/apparmor.d/disable").mkdir()
    (machine.root / "etc/apparmor.d/disable/wg-wrap-launcher").symlink_to(
        "../wg-wrap-launcher"
    )
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.profile is not None and report.profile.disabled
    assert apparmor.fix_commands(report, "wg-wrap") == [
        "sudo rm /etc/apparmor.d/disable/wg-wrap-launcher",
        "sudo apparmor_parser -r /etc/apparmor.d/wg-wrap-launcher",
    ]


# ---- loaded profiles ---------------------------------------------------------------

def test_loaded_when_securityfs_lists_the_profile(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    machine.loaded("unprivileged_userns (enforce)", "wg-wrap-launcher (unconfined)",
                   "/usr/bin/man (enforce)")
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.loaded == {"unprivileged_userns": "enforce", "wg-wrap-launcher": "unconfined",
                             "/usr/bin/man": "enforce"}
    assert report.profile_loaded is True
    assert apparmor.fix_commands(report, "wg-wrap") == [
        "sudo apparmor_parser -r /etc/apparmor.d/wg-wrap-launcher"
    ]


def test_not_loaded_when_securityfs_does_not_list_it(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    machine.loaded("unprivileged_userns (enforce)")
    assert machine.detect(machine.launcher(PACKAGED)).profile_loaded is False


def test_loaded_is_unknown_when_securityfs_is_missing(machine: Machine) -> None:
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    report = machine.detect(machine.launcher(PACKAGED))
    assert report.loaded is None
    assert report.profile_loaded is None


def test_loaded_is_unknown_when_a_user_may_not_read_it(
    stage: Stage, test_user: User, user_tmp: Path
) -> None:
    """securityfs' profile list is root's on most systems: a normal user gets
    EACCES, and detection says "unknown" rather than failing."""
    machine = Machine(user_tmp / "root")
    machine.ubuntu()
    machine.profile("wg-wrap-launcher", apparmor.render(PACKAGED))
    machine.launcher(PACKAGED)
    listing = machine.write(apparmor.LOADED_FILE, "wg-wrap-launcher (unconfined)\n")
    subprocess.run(["chmod", "-R", "a+rX", str(machine.root)], check=True)
    listing.chmod(0o400)  # root's, as on Ubuntu
    script = ("import sys; from wg_wrap import apparmor; r = apparmor.detect(sys.argv[1], "
              "sys.argv[2]); print(r.profile is not None, r.loaded, r.profile_loaded)")
    done = run_as_user(test_user, [str(stage.python), "-c", script, PACKAGED, str(machine.root)],
                       env=user_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True None None\n"
    assert machine.detect(PACKAGED).profile_loaded is True, "root reads it"


# ---- rendering ---------------------------------------------------------------------

def test_the_template_is_the_packaged_template() -> None:
    """One text: packaging/apparmor/wg-wrap-launcher.in (which `make install`
    renders) is apparmor.TEMPLATE, and render() changes only the two places."""
    assert TEMPLATE_IN.read_text() == apparmor.TEMPLATE
    for part in (apparmor.TEMPLATE_HEADER, apparmor.TEMPLATE_SIDECAR, apparmor.TEMPLATE_PROGRAMS,
                 apparmor.TEMPLATE_SIDECAR_PROGRAMS,
                 apparmor.TEMPLATE_SIDECAR_HEADER, apparmor.TEMPLATE_PROGRAM_HEADER,
                 apparmor.TEMPLATE_LOCAL):
        assert apparmor.TEMPLATE.count(part) == 1, part


@pytest.mark.parametrize("libexecdir", ["/usr/libexec", "/usr/lib", "/usr/local/libexec"])
def test_render_is_the_template_with_the_path_substituted(libexecdir: str) -> None:
    rendered = apparmor.render(f"{libexecdir}/wg-wrap/wg-wrap-launcher")
    assert rendered == TEMPLATE_IN.read_text().replace("@LIBEXECDIR@", libexecdir)


def test_render_for_a_venv_names_its_own_path() -> None:
    rendered = apparmor.render(VENV)
    assert (f"profile wg-wrap-launcher {VENV} flags=(attach_disconnected,mediate_deleted) {{\n"
            in rendered)
    sidecar = VENV.replace("wg-wrap-launcher", "wg-wrap-sidecar")
    assert f"  allow px {sidecar} -> &wg-wrap-launcher//&wg-wrap-launcher-sidecar,\n" in rendered
    assert "  allow pix /** -> &wg-wrap-launcher//&wg-wrap-launcher-program,\n" in rendered
    assert "  allow userns,\n" in rendered
    assert rendered.startswith("# AppArmor profile for wg-wrap-launcher")
    assert "abi <abi/4.0>,\n" in rendered
    assert "include if exists <local/wg-wrap-launcher>\n" in rendered
    assert "@LIBEXECDIR@" not in rendered


def test_render_under_another_name() -> None:
    rendered = apparmor.render(VENV, "wg-wrap-launcher-0123abcd")
    assert f"profile wg-wrap-launcher-0123abcd {VENV} flags" in rendered
    assert "include if exists <local/wg-wrap-launcher-0123abcd>" in rendered
    # Its stacked profiles are named after it: two installations never collide.
    assert "profile wg-wrap-launcher-0123abcd-sidecar flags" in rendered
    assert "profile wg-wrap-launcher-0123abcd-program flags" in rendered
    assert "wg-wrap-launcher//" not in rendered and "profile wg-wrap-sidecar" not in rendered


def test_render_quotes_a_path_with_spaces() -> None:
    path = "/home/ann/my venv/lib/wg_wrap/_libexec/wg-wrap-launcher"
    rendered = apparmor.render(path)
    assert f'profile wg-wrap-launcher "{path}" flags=(' in rendered
    assert f'allow px "{path.replace("launcher", "sidecar")}" -> ' in rendered


@pytest.mark.parametrize("bad", ["*", "?", "[", "]", "{", "}", "^", '"', "\\", "\n", "@{x}"])
def test_render_refuses_paths_apparmor_would_read_as_patterns(bad: str) -> None:
    with pytest.raises(apparmor.UnrenderablePath, match="cannot name this path literally"):
        apparmor.render(f"/opt/x{bad}y/wg-wrap-launcher")


_path_chars = st.characters(
    blacklist_characters=[*sorted(apparmor._PATTERN_CHARS), "/", "@"],
    blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
)


@given(st.lists(st.text(_path_chars, min_size=1, max_size=12), min_size=1, max_size=6))
def test_our_detection_recognises_every_profile_we_render(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    if not all(c.isprintable() for c in path):
        return  # refused by render(), tested above
    headers = apparmor.parse_headers(apparmor.render(path))
    assert headers == [("wg-wrap-launcher", path), ("wg-wrap-launcher-sidecar", ""),
                       ("wg-wrap-launcher-program", "")]
    assert apparmor.attaches_to(path, path)


def test_make_install_renders_the_same_profile_as_doctor(stage: Stage) -> None:
    """The staged `make install` wrote $(DATADIR)/wg-wrap/apparmor/wg-wrap-launcher
    from the .in file; render() for the installed launcher gives the same bytes."""
    installed = stage.root / "venv" / "share" / "wg-wrap" / "apparmor" / "wg-wrap-launcher"
    assert installed.read_text() == apparmor.render(str(stage.launcher))


def _parser() -> str:
    parser = shutil.which("apparmor_parser") or (
        "/usr/sbin/apparmor_parser" if os.path.exists("/usr/sbin/apparmor_parser") else None
    )
    if parser is None:
        pytest.fail("apparmor_parser is missing: `apt-get install apparmor` (.ci/run does)",
                    pytrace=False)
    return parser


@pytest.mark.parametrize("path", [PACKAGED, "/home/ann/my venv/wg_wrap/_libexec/wg-wrap-launcher"])
def test_apparmor_parser_accepts_the_rendered_profile(tmp_path: Path, path: str) -> None:
    """Debian 12's parser (AppArmor 3.0) compiles the rendered profiles once
    the AppArmor 4 parts it does not know are taken out (the abi line and the
    `userns`, `io_uring` and `mqueue` rules): the headers, the quoting, the
    flags, the stacked transitions, the ptrace rules and the include are
    checked by the real parser.  Without that adaptation it must refuse."""
    rendered = apparmor.render(path)
    adapted = rendered.replace("abi <abi/4.0>,", "abi <abi/3.0>,")
    for rule in ("userns", "io_uring", "mqueue"):
        adapted = adapted.replace(f"  allow {rule},\n", "")
    assert adapted != rendered
    profile = tmp_path / "wg-wrap-launcher"
    profile.write_text(adapted)
    done = subprocess.run([_parser(), "--skip-kernel-load", "--stdout", str(profile)],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout, "a compiled policy"
    profile.write_text(rendered.replace("abi <abi/4.0>,", "abi <abi/3.0>,"))
    refused = subprocess.run([_parser(), "--skip-kernel-load", "--stdout", str(profile)],
                             capture_output=True, timeout=60)
    assert refused.returncode != 0, "AppArmor 3.0 knows no `userns` rule"
