"""The sections of wg-wrap(1) that the argparse parser cannot give.

Used only by scripts/gen-docs.py.  Whatever can be derived is: the config keys
come from wg_wrap/config.py's key tables (and which of them are ignored, from
the warnings its parser gives), the runtime files from wg_wrap/runtime.py, the
helpers' names from wg_wrap/paths.py, the examples from the parser's epilogs,
SECURITY from the README.  The rest is prose kept here.

Text is written with one markup: `code` becomes bold.  ``roff()`` escapes
everything else, so no text can turn into a roff request by accident.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from wg_wrap import config, paths, runtime

# ---- roff ---------------------------------------------------------------------


def roff(text: str) -> str:
    """Plain text (with `code`) as roff: escaped, a line that would start with a
    control character protected, `code` in bold."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    out = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", out)
    return re.sub(r"^([.'])", r"\\&\1", out, flags=re.MULTILINE)


def paragraph(text: str) -> str:
    return ".PP\n" + roff(" ".join(text.split()))


def tagged(tag: str, text: str) -> str:
    """A .TP entry: the tag on its own line, the text indented below it."""
    return f".TP\n{roff(tag)}\n{roff(' '.join(text.split()))}"


def bullet(text: str) -> str:
    return ".IP \\(bu 2\n" + roff(" ".join(text.split()))


def verbatim(lines: list[str]) -> str:
    """Lines shown as they are (no filling), indented."""
    return "\n".join([".PP", ".RS 4", ".nf", *map(roff, lines), ".fi", ".RE"])


# ---- CONFIGURATION: from wg_wrap/config.py ------------------------------------

_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
# A value for every key, each one that a user would set to make the key do
# something (FwMark not off, SaveConfig true): a key that then warns is one
# wg-wrap accepts and ignores.
_PROBE_VALUES = {
    "PrivateKey": _KEY,
    "Address": "10.0.0.2/32",
    "DNS": "10.0.0.1",
    "MTU": "1420",
    "ListenPort": "51820",
    "FwMark": "0x1234",
    "Table": "1234",
    "PreUp": "true",
    "PostUp": "true",
    "PreDown": "true",
    "PostDown": "true",
    "SaveConfig": "true",
    "PublicKey": _KEY,
    "PresharedKey": _KEY,
    "AllowedIPs": "10.0.0.0/24",
    "Endpoint": "192.0.2.1:51820",
    "PersistentKeepalive": "25",
}


def config_keys() -> tuple[list[str], list[str], dict[str, str]]:
    """The [Interface] and [Peer] keys the parser accepts, and for each key it
    ignores, the warning it gives (found by parsing a config that sets every
    key)."""
    interface = [name for name, _ in config._INTERFACE_SYNTAX]
    peer = [name for name, _ in config._PEER_SYNTAX]
    missing = [k for k in interface + peer if k not in _PROBE_VALUES]
    if missing:
        raise SystemExit(
            f"gen-docs: no probe value for config key(s) {', '.join(missing)}: "
            "add one to _PROBE_VALUES in scripts/man_sections.py"
        )
    lines = ["[Interface]"] + [f"{k} = {_PROBE_VALUES[k]}" for k in interface]
    lines += ["[Peer]"] + [f"{k} = {_PROBE_VALUES[k]}" for k in peer]
    key_at = {number: line.split(" = ")[0] for number, line in enumerate(lines, 1)}
    parsed = config.parse_config("\n".join(lines) + "\n", "probe.conf")
    ignored: dict[str, str] = {}
    for warning in parsed.warnings:
        key = key_at.get(warning.line or 0, "")
        if not key.isalnum():
            raise SystemExit(f"gen-docs: unexpected warning for the probe config: {warning}")
        ignored[key] = warning.message
    return interface, peer, ignored


def configuration() -> str:
    interface, peer, ignored = config_keys()
    return "\n".join([
        paragraph(
            "wg-wrap reads the configuration files of wg-quick(8), unchanged. Keys are "
            "case-insensitive; an unknown key, a bad value or a peer without a public key "
            "is an error naming the file and the line. These keys are accepted:"
        ),
        tagged("[Interface]", ", ".join(interface)),
        tagged("[Peer]", ", ".join(peer)),
        paragraph("Accepted but ignored, with a warning:"),
        *(tagged(key, message) for key, message in ignored.items()),
        paragraph(
            "Endpoint host names are resolved on the host before the namespace is made. "
            "The config may come from a pipe, so the private key never touches the disk: "
            "`wg-wrap run -n wg0 -c <(pass show vpn/wg0) -- firefox` (a pipe names no "
            "profile, hence `-n`). wg-wrap warns when a config file is readable by other users."
        ),
    ])


# ---- EXIT STATUS: wg_wrap/cli.py, wg_wrap/errors.py, the launcher ----------------

EXIT_STATUS = [
    ("0", "Success."),
    ("status of CMD", "`run` and `exec` become the command they run: its exit status is "
     "theirs (a shell shows 128+N when it was killed by signal N)."),
    ("1", "An error: a bad config file, a profile that is unknown or busy, a failed setup "
     "(one line `wg-wrap: error: ...`, often followed by a hint; nothing is left running "
     "or on disk). `doctor`: something wg-wrap needs is missing."),
    ("2", "Wrong usage of the command line."),
    ("125", "From `run` and `exec`: the launcher could not enter the namespaces (its "
     "message names the failed step)."),
    ("126", "From `run` and `exec`: the command was found but cannot be executed."),
    ("127", "From `run` and `exec`: the command was not found."),
    ("130", "Interrupted (Ctrl-C) while wg-wrap itself was working."),
]


def exit_status() -> str:
    return "\n".join(tagged(code, text) for code, text in EXIT_STATUS)


# ---- ENVIRONMENT and FILES ----------------------------------------------------

ENVIRONMENT = [
    ("XDG_RUNTIME_DIR", "Where the runtime directory lives (see FILES); without it, or when "
     "it is not an existing absolute directory, /tmp/wg-wrap-UID is used."),
    ("XDG_CONFIG_HOME", "Where configs are looked up by name (see FILES); default ~/.config."),
    ("SHELL", "The command `run` and `exec` start when none is given (default /bin/sh)."),
    ("NOTIFY_SOCKET", "Set by systemd for `up --foreground`: wg-wrap reports its progress "
     "(STATUS=) and readiness (READY=1, once the tunnel is configured and the first "
     "handshake is done) there, for a unit of Type=notify."),
    ("WG_WRAP_LIBEXEC_DIR", "A directory holding the helper programs, used instead of the "
     "installed ones (for development)."),
]


def environment() -> str:
    return "\n".join(tagged(name, text) for name, text in ENVIRONMENT)


def files() -> str:
    state = ", ".join(
        f"`{name}`" for name in (runtime.STATE_FILE, runtime.RESOLV_CONF, runtime.SIDECAR_LOG,
                                 runtime.HOLD_FILE, runtime.VIEW_FILE)
    )
    return "\n".join([
        tagged("$XDG_RUNTIME_DIR/wg-wrap/NAME/",
               "The runtime directory of profile NAME (/tmp/wg-wrap-UID/NAME/ without "
               f"XDG_RUNTIME_DIR): {state}. Private (0700 directories, 0600 files), and "
               "refused when it is not. The running profiles are its subdirectories. "
               "Programs inside a profile see this directory (and /tmp/wg-wrap-UID) empty. "
               "The sidecar's UAPI and control sockets are not files: they live at abstract "
               "addresses of the host's network namespace (@wg-wrap/UID/TOKEN/uapi, "
               "`wg-wrap status` names them), which no program inside can reach."),
        tagged("$XDG_CONFIG_HOME/wg-wrap/NAME.conf",
               "The config of profile NAME when `-c` is not given (default "
               "~/.config/wg-wrap/NAME.conf), as `wg-quick up wg0` finds "
               "/etc/wireguard/wg0.conf; the systemd unit uses it. Programs inside a profile "
               "see this directory empty: the configs hold private keys."),
        tagged(f"/usr/libexec/wg-wrap/{paths.LAUNCHER}, {paths.SIDECAR}",
               "The helper programs: the launcher, the only program that creates or joins "
               "namespaces, and the sidecar, wireguard-go on the host's UDP socket. They sit "
               "in LIBEXECDIR/wg-wrap or in lib/wg-wrap next to the installation prefix (e.g. "
               "/usr/libexec/wg-wrap, /usr/lib/wg-wrap), or inside the Python package after "
               "`pip install`; `wg-wrap --version` shows which ones are used."),
        tagged("/usr/lib/systemd/user/wg-wrap@.service",
               "The systemd user unit: `systemctl --user enable --now wg-wrap@wg0` keeps "
               "profile wg0 up, from ~/.config/wg-wrap/wg0.conf."),
        tagged("/etc/apparmor.d/wg-wrap-launcher",
               "The AppArmor profile that lets the launcher, and only it, create user "
               "namespaces where AppArmor restricts them (Ubuntu 23.10 and later: "
               "kernel.apparmor_restrict_unprivileged_userns=1); `make install` puts a copy in "
               "PREFIX/share/wg-wrap/apparmor/. `wg-wrap doctor` says whether it is needed "
               "and loaded."),
    ])


# ---- EXAMPLES: the parser's own epilogs ---------------------------------------


def examples(parser: argparse.ArgumentParser) -> str:
    """Every example line (`  wg-wrap ...`) of the epilogs of the parser and its
    commands, once each, in the parser's order; then the service."""
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    lines: list[str] = []
    for p in parsers:
        for line in (p.epilog or "").splitlines():
            if line.startswith("  wg-wrap ") and line[2:] not in lines:
                lines.append(line[2:])
    if not lines:
        raise SystemExit("gen-docs: the parser's epilogs hold no example")
    return "\n".join([
        verbatim(lines),
        paragraph("As a systemd user service, with the config in ~/.config/wg-wrap/wg0.conf:"),
        verbatim(["systemctl --user enable --now wg-wrap@wg0",
                  "wg-wrap exec wg0 -- firefox"]),
        paragraph("Each command explains itself: `wg-wrap COMMAND --help`."),
    ])


# ---- SECURITY: the README's section -------------------------------------------

README_SECURITY = "What wg-wrap guarantees, and its limits"


def security(readme: Path) -> str:
    """The README's section, from its paragraphs and `-` lists (anything else in
    it is refused, so the man page cannot silently lose part of it)."""
    text = readme.read_text()
    match = re.search(rf"^## {re.escape(README_SECURITY)}\n(.*?)(?=^## |\Z)", text,
                      flags=re.MULTILINE | re.DOTALL)
    if not match:
        raise SystemExit(f"gen-docs: README.md has no section '## {README_SECURITY}'")
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", match.group(1).strip()):
        if re.search(r"^(#|```|\||>|\d+\. )|\]\(", block, flags=re.MULTILINE):
            raise SystemExit(
                f"gen-docs: README section '{README_SECURITY}' uses markup the man page "
                f"generator does not convert:\n{block}"
            )
        if block.startswith("- "):
            blocks += [bullet(item) for item in re.split(r"^- ", block, flags=re.MULTILINE)
                       if item.strip()]
        else:
            blocks.append(paragraph(block))
    return emphasis("\n".join(blocks))


def emphasis(text: str) -> str:
    """Markdown's **strong** in bold and *emphasis* in italics."""
    text = re.sub(r"\*\*([^*\n]+)\*\*", r"\\fB\1\\fR", text)
    return re.sub(r"(?<![\w*])\*([^*\s][^*\n]*?)\*(?![\w*])", r"\\fI\1\\fR", text)


SEE_ALSO = ".BR wg (8),\n.BR wg\\-quick (8),\n.BR systemd.service (5),\n.BR user_namespaces (7)"
