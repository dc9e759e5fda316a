"""Ubuntu's AppArmor restriction on user namespaces: detection and the fix.

Ubuntu 23.10+ sets ``kernel.apparmor_restrict_unprivileged_userns=1``: an
unconfined program may still create a user namespace, but is then moved into
the ``unprivileged_userns`` profile, which denies every capability in it, so
the launcher cannot map its uid, mount or create a TUN device.  The fix
distributions use is a named profile with ``userns,``, attached by path to the
one binary that creates the namespaces; ours also keeps that binary from
being a door for other programs (Ubuntu's bwrap-userns-restrict is the model:
what it runs is stacked with profiles that give the sidecar its own
capabilities and the user's programs none).

Everything here is pure: it reads files below ``root`` (``/`` unless a test
provides a fake tree) and renders text; it changes nothing.  The profile text
is ``TEMPLATE``, the same text as ``packaging/apparmor/wg-wrap-launcher.in``
(a test keeps the two equal), which ``make install`` renders for the
installed launcher.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass

PROFILE_NAME = "wg-wrap-launcher"
PROFILE_DIR = "/etc/apparmor.d"
SYSCTL = "kernel.apparmor_restrict_unprivileged_userns"

ENABLED_FILE = "/sys/module/apparmor/parameters/enabled"
RESTRICT_FILE = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
ABI_4_FILE = "/etc/apparmor.d/abi/4.0"
LOADED_FILE = "/sys/kernel/security/apparmor/profiles"

TEMPLATE = """\
# AppArmor profile for wg-wrap-launcher, the one program of wg-wrap that
# creates user namespaces.
#
# Ubuntu 23.10+ sets kernel.apparmor_restrict_unprivileged_userns=1: a new
# user namespace then gets no capabilities, so wg-wrap can neither map its
# uid, nor make its namespace's view of the host, nor create its TUN device.
# This profile lets this one binary create user namespaces with their
# capabilities (`userns`), which only ever apply inside the namespaces it
# creates, and nothing more: what it runs is stacked with a profile of its
# own (the launcher sets no_new_privs, under which AppArmor only stacks).
#  - wg-wrap-sidecar, the one program `create` and `enter` run, beside the
#    launcher: it keeps the capabilities it needs in its namespaces, and the
#    user's other programs may not trace it (it holds the host's sockets).
#  - everything else, what `join` runs (the user's programs): no capability
#    in any user namespace they create, as for a plain program on a system
#    with the restriction (Ubuntu's unprivileged_userns profile). The cost:
#    a program that needs them there fails inside wg-wrap as it would
#    outside without a profile of its own; Chromium's sandbox is one, and
#    its own profile's exception does not follow it into the stack.
# The model is Ubuntu's bwrap-userns-restrict.
abi <abi/4.0>,

include <tunables/global>

profile wg-wrap-launcher @LIBEXECDIR@/wg-wrap/wg-wrap-launcher flags=(attach_disconnected,mediate_deleted) {
  allow capability,
  allow file rwlkm /{**,},
  allow network,
  allow unix,
  allow ptrace (read, trace),
  allow signal,
  allow mqueue,
  allow io_uring,
  allow userns,
  allow mount,
  allow umount,
  allow pivot_root,
  allow dbus,
  audit deny ptrace (tracedby),

  allow px @LIBEXECDIR@/wg-wrap/wg-wrap-sidecar -> &wg-wrap-launcher//&wg-wrap-launcher-sidecar,
  allow pix /** -> &wg-wrap-launcher//&wg-wrap-launcher-program,

  # Site-specific additions and overrides.
  include if exists <local/wg-wrap-launcher>
}

profile wg-wrap-launcher-sidecar flags=(attach_disconnected,mediate_deleted) {
  allow capability net_admin,
  allow capability sys_admin,
  allow file rwlkm /{**,},
  allow network,
  allow unix,
  allow ptrace (read, trace, readby),
  audit deny ptrace (tracedby),
  allow signal,
  allow mount,
  allow umount,
  # --port-forward-cmd: the user's command, run as their programs are
  allow px /** -> wg-wrap-launcher-program,
}

profile wg-wrap-launcher-program flags=(attach_disconnected,mediate_deleted) {
  allow file rwlkmix /{**,},
  allow network,
  allow unix,
  allow ptrace,
  allow signal,
  allow mqueue,
  allow io_uring,
  allow userns,
  allow mount,
  allow umount,
  allow pivot_root,
  allow dbus,
  audit deny capability,
}
"""  # noqa: E501 (the header names the path and flags on one line)
# The places render() changes (a test checks each occurs exactly once): the
# launcher's header, the sidecar's path and the names of the two profiles
# what the launcher runs is stacked with (named after the launcher's, so that
# two installations' profiles never collide; the sidecar runs the user's
# --port-forward-cmd as a program), and the local include.
FLAGS = "flags=(attach_disconnected,mediate_deleted) {"
TEMPLATE_HEADER = f"profile wg-wrap-launcher @LIBEXECDIR@/wg-wrap/wg-wrap-launcher {FLAGS}"
TEMPLATE_SIDECAR = (
    "  allow px @LIBEXECDIR@/wg-wrap/wg-wrap-sidecar -> "
    "&wg-wrap-launcher//&wg-wrap-launcher-sidecar,"
)
TEMPLATE_PROGRAMS = "  allow pix /** -> &wg-wrap-launcher//&wg-wrap-launcher-program,"
TEMPLATE_SIDECAR_PROGRAMS = "  allow px /** -> wg-wrap-launcher-program,"
TEMPLATE_SIDECAR_HEADER = f"profile wg-wrap-launcher-sidecar {FLAGS}"
TEMPLATE_PROGRAM_HEADER = f"profile wg-wrap-launcher-program {FLAGS}"
TEMPLATE_LOCAL = "<local/wg-wrap-launcher>"

# Unquoted in a profile header, a path may hold only these; anything else but
# the pattern characters below is written in double quotes.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._/+~%:=@-]+")
# AppArmor reads these as a pattern (glob, alternation, variable, escape):
# such a path cannot be named literally, so no profile is rendered for it.
_PATTERN_CHARS = frozenset('*?[]{}^"\\')

# apparmor_parser skips these names when it loads /etc/apparmor.d.
_SKIPPED_SUFFIXES = (
    "~", ".dpkg-new", ".dpkg-old", ".dpkg-dist", ".dpkg-bak", ".dpkg-remove",
    ".rpmnew", ".rpmsave", ".pacnew", ".pacsave", ".orig", ".rej",
)
_MAX_PROFILE_FILE = 1 << 20

_STRING = r'"(?:[^"\\]|\\.)*"'
_HEADER = re.compile(
    rf"""^\s*
    (?: profile \s+ (?P<name>{_STRING}|[^\s"{{]+) (?: \s+ (?P<attach>{_STRING}|/[^\s"]*) )?
      | (?P<bare>"/(?:[^"\\]|\\.)*"|/[^\s"]*) )
    (?: \s+ (?:(?:flags|xattrs) \s*=\s*)? \( [^)]* \) )*
    \s* \{{ \s* (?:\#.*)? $""",
    re.VERBOSE,
)


class UnrenderablePath(ValueError):
    """The launcher's path cannot be named literally in a profile."""


@dataclass(frozen=True)
class ProfileFile:
    """One profile declared in a file of /etc/apparmor.d."""

    path: str  # the file, as seen from root (e.g. /etc/apparmor.d/wg-wrap-launcher)
    name: str
    attachment: str  # the path pattern it attaches to; "" when none
    disabled: bool  # a link in /etc/apparmor.d/disable/: not loaded at boot


@dataclass(frozen=True)
class Report:
    """What AppArmor does to the launcher at ``launcher`` (its real path)."""

    enabled: bool  # AppArmor is active in the kernel
    restriction: bool  # the sysctl is 1 (it only has an effect when enabled)
    abi_4: bool  # userspace knows abi 4.0, the one with `userns` rules
    launcher: str
    profile: ProfileFile | None  # a profile attaching to the launcher
    elsewhere: tuple[ProfileFile, ...]  # profiles named like ours, attached to other paths
    loaded: dict[str, str] | None  # loaded profile name -> mode; None: cannot be read
    install_name: str  # the file (and profile) name to install ours under

    @property
    def restricted(self) -> bool:
        return self.enabled and self.restriction

    @property
    def profile_loaded(self) -> bool | None:
        """Whether the attached profile is loaded; None when that cannot be read
        (the list is root's only on most systems)."""
        if self.profile is None:
            return False
        if self.loaded is None:
            return None
        return self.profile.name in self.loaded

    @property
    def install_path(self) -> str:
        return f"{PROFILE_DIR}/{self.install_name}"


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(root: str, path: str, limit: int = 4096) -> str | None:
    try:
        with open(_under(root, path), encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def is_enabled(root: str = "/") -> bool:
    return (_read(root, ENABLED_FILE) or "").strip() == "Y"


def restriction_on(root: str = "/") -> bool:
    return (_read(root, RESTRICT_FILE) or "").strip() == "1"


def has_abi_4(root: str = "/") -> bool:
    return os.path.exists(_under(root, ABI_4_FILE))


def resolve(launcher: str, root: str = "/") -> str:
    """The launcher's real path: AppArmor attaches by the path the kernel
    resolves, symlinks followed (a venv's lib64 -> lib, /usr/lib/... links)."""
    if os.path.realpath(root) == "/":
        return os.path.realpath(launcher)
    real_root = os.path.realpath(root)
    real = os.path.realpath(_under(real_root, launcher))
    inside = os.path.relpath(real, real_root)
    if inside.startswith(".."):
        return real  # a link out of the tree: take it as it is
    return "/" if inside == "." else "/" + inside


def loaded_profiles(root: str = "/") -> dict[str, str] | None:
    """``name -> mode`` from securityfs, or None if it cannot be read (a normal
    user may not: then nobody can tell from here)."""
    try:
        with open(_under(root, LOADED_FILE), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    loaded = {}
    for line in text.splitlines():
        name, sep, mode = line.rpartition(" (")
        if sep and mode.endswith(")"):
            loaded[name] = mode[:-1]
    return loaded


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def parse_headers(text: str) -> list[tuple[str, str]]:
    """``(name, attachment)`` of each profile declared in a profile file's text.

    ``profile NAME [ATTACHMENT] [flags=(...)] {`` or ``/ATTACHMENT {`` (a
    profile named by its path).  A profile without an attachment attaches to
    nothing and gets ``""``.
    """
    found = []
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m is None:
            continue
        if m["bare"]:
            path = _unquote(m["bare"])
            found.append((path, path))
        else:
            name = _unquote(m["name"])
            attach = _unquote(m["attach"]) if m["attach"] else ""
            found.append((name, attach or (name if name.startswith("/") else "")))
    return found


def _glob_to_regex(pattern: str) -> str | None:
    """AppArmor's path globs (``*``, ``**``, ``?``, ``[...]``, ``{a,b}``,
    ``\\`` escapes) as a Python regex; None for what cannot be matched here
    (variables such as ``@{HOME}``, unbalanced brackets)."""
    if "@{" in pattern:
        return None
    out, depth, i = [], 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            double = pattern.startswith("**", i)
            out.append(".*" if double else "[^/]*")
            i += 2 if double else 1
            continue
        if c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return None
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            chars = "".join(ch if ch == "-" else re.escape(ch) for ch in body[negate:])
            out.append(f"[{'^' if negate else ''}{chars}]")
            i = end + 1
            continue
        if c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return None if depth else "".join(out)


def attaches_to(attachment: str, path: str) -> bool:
    regex = _glob_to_regex(attachment) if attachment else None
    return regex is not None and re.fullmatch(regex, path) is not None


def profile_files(root: str = "/") -> list[ProfileFile]:
    """Every profile declared in the files apparmor_parser loads from
    /etc/apparmor.d (top level only: abstractions/, local/, tunables/ hold
    pieces, not profiles)."""
    directory = _under(root, PROFILE_DIR)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    found = []
    for entry in names:
        if entry.startswith(".") or entry == "README" or entry.endswith(_SKIPPED_SUFFIXES):
            continue
        full = os.path.join(directory, entry)
        if not os.path.isfile(full):
            continue
        text = _read(root, f"{PROFILE_DIR}/{entry}", _MAX_PROFILE_FILE)
        if text is None:
            continue
        disabled = os.path.lexists(os.path.join(directory, "disable", entry))
        for name, attachment in parse_headers(text):
            found.append(ProfileFile(f"{PROFILE_DIR}/{entry}", name, attachment, disabled))
    return found


def _install_name(launcher: str, profile: ProfileFile | None, root: str) -> str:
    """``wg-wrap-launcher``, unless a file of that name is there already for
    another launcher (a distribution's package: never overwrite it), then a
    name of its own for this path."""
    default = f"{PROFILE_DIR}/{PROFILE_NAME}"
    taken = os.path.lexists(_under(root, default))
    if not taken or (profile is not None and profile.path == default):
        return PROFILE_NAME
    if profile is not None:
        return os.path.basename(profile.path)
    digest = hashlib.sha256(launcher.encode()).hexdigest()[:8]
    return f"{PROFILE_NAME}-{digest}"


def detect(launcher: str, root: str = "/") -> Report:
    """What AppArmor will do to the launcher at ``launcher``."""
    real = resolve(launcher, root)
    files = profile_files(root)
    attached = [p for p in files if attaches_to(p.attachment, real)]
    profile = attached[0] if attached else None
    elsewhere = tuple(  # (the stacked profiles beside ours attach to nothing)
        p for p in files
        if p not in attached and p.name.startswith(PROFILE_NAME) and p.attachment
    )
    return Report(
        enabled=is_enabled(root),
        restriction=restriction_on(root),
        abi_4=has_abi_4(root),
        launcher=real,
        profile=profile,
        elsewhere=elsewhere,
        loaded=loaded_profiles(root),
        install_name=_install_name(real, profile, root),
    )


def attachment_for(launcher: str) -> str:
    """``launcher`` as a profile header names it: plain when it can be,
    double-quoted when it holds spaces and the like."""
    bad = sorted({c for c in launcher if c in _PATTERN_CHARS or not c.isprintable()})
    if bad or "@{" in launcher or not launcher.startswith("/"):
        what = ", ".join(repr(c) for c in bad) or "a variable or a relative path"
        raise UnrenderablePath(
            f"{launcher}: an AppArmor profile cannot name this path literally ({what})"
        )
    return launcher if _PLAIN_PATH.fullmatch(launcher) else f'"{launcher}"'


def render(launcher: str, name: str = PROFILE_NAME) -> str:
    """The profiles that let the launcher at ``launcher`` create user
    namespaces: ``TEMPLATE`` with its path and its sidecar's (and, if asked,
    another name)."""
    sidecar = os.path.join(os.path.dirname(launcher), "wg-wrap-sidecar")
    return (
        TEMPLATE.replace(TEMPLATE_HEADER, f"profile {name} {attachment_for(launcher)} {FLAGS}")
        .replace(TEMPLATE_SIDECAR,
                 f"  allow px {attachment_for(sidecar)} -> &{name}//&{name}-sidecar,")
        .replace(TEMPLATE_PROGRAMS, f"  allow pix /** -> &{name}//&{name}-program,")
        .replace(TEMPLATE_SIDECAR_PROGRAMS, f"  allow px /** -> {name}-program,")
        .replace(TEMPLATE_SIDECAR_HEADER, f"profile {name}-sidecar {FLAGS}")
        .replace(TEMPLATE_PROGRAM_HEADER, f"profile {name}-program {FLAGS}")
        .replace(TEMPLATE_LOCAL, f"<local/{name}>")
    )


def sysctl_command() -> str:
    return f"sudo sysctl {SYSCTL}=0"


def fix_commands(report: Report, wg_wrap_command: str) -> list[str]:
    """The commands that give the launcher its profile, in order.

    ``wg_wrap_command`` is how this wg-wrap is run (``wg-wrap``, or a path):
    ``… doctor --apparmor-profile`` prints the profile for this very launcher.
    """
    if report.profile is not None:
        commands = []
        if report.profile.disabled:
            link = f"{PROFILE_DIR}/disable/{os.path.basename(report.profile.path)}"
            commands.append(f"sudo rm {shlex.quote(link)}")
        commands.append(f"sudo apparmor_parser -r {shlex.quote(report.profile.path)}")
        return commands
    path = shlex.quote(report.install_path)
    return [
        f"{wg_wrap_command} doctor --apparmor-profile | sudo install -m 0644 /dev/stdin {path}",
        f"sudo apparmor_parser -r {path}",
    ]


def one_line_fix(report: Report, wg_wrap_command: str) -> str:
    """The restriction and its fix in one line (a failed start's hint)."""
    said = f"AppArmor restricts user namespaces here ({SYSCTL}=1)"
    if not report.abi_4:
        return (
            f"{said}, and its userspace is older than AppArmor 4.0 (no {ABI_4_FILE}), "
            "which a profile allowing `userns` needs: upgrade AppArmor, or as a last resort "
            f"`{sysctl_command()}` (lowers the protection for the whole machine)"
        )
    commands = " && ".join(fix_commands(report, wg_wrap_command))
    if report.profile is not None:
        what = f"load the profile {report.profile.path} that exempts {report.launcher}"
    else:
        what = f"give {report.launcher} its AppArmor profile"
    return f"{said}: {what}: `{commands}` (`wg-wrap doctor` explains)"
