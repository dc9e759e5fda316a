"""The man page: generated from the parser, up to date, lint-free, complete.

The committed packaging/man/wg-wrap.1 comes from scripts/gen-docs.py (`make
docs`).  The tools are Debian's (man-db, groff-base), which .ci/run installs;
a missing one fails the test, naming the package.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Stage

from wg_wrap import cli, config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import man_sections  # noqa: E402

MAN_PAGE = REPO / "packaging" / "man" / "wg-wrap.1"
GENERATED = [Path("packaging/man/wg-wrap.1")]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `apt-get install {package}` (.ci/run does)",
                    pytrace=False)
    return path


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


# ---- generated, and up to date -------------------------------------------------


def generate(stage: Stage, output: Path, **env: str) -> None:
    done = subprocess.run(
        [str(stage.python), str(REPO / "scripts" / "gen-docs.py"), "--output-dir", str(output)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr


def test_committed_docs_are_what_the_parser_generates(stage: Stage, tmp_path: Path) -> None:
    generate(stage, tmp_path)
    stale = [str(p) for p in GENERATED if (tmp_path / p).read_text() != (REPO / p).read_text()]
    assert not stale, (
        f"out of date: {', '.join(stale)}: run `make docs` (scripts/gen-docs.py) and commit "
        "the result"
    )


def test_generation_is_stable(stage: Stage, tmp_path: Path) -> None:
    """Nothing of the moment or the terminal gets in: no date, no width."""
    generate(stage, tmp_path / "a")
    generate(stage, tmp_path / "b", COLUMNS="40", SOURCE_DATE_EPOCH="86400", TZ="Asia/Tokyo")
    for path in GENERATED:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path


def test_the_cli_never_imports_the_doc_tools(stage: Stage) -> None:
    """argparse-manpage is a build-time tool, absent from a user's machine:
    building the parser (for --help) must not need it."""
    done = subprocess.run(
        [str(stage.python), "-X", "importtime", "-m", "wg_wrap", "run", "--help"],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported  # the parser was built
    assert not {m for m in imported if m.split(".")[0] in ("shtab", "argparse_manpage")}


# ---- the man page -------------------------------------------------------------


def man_text() -> str:
    """The page's source with roff escapes undone, for searching."""
    text = MAN_PAGE.read_text()
    for escape, plain in ((r"\-", "-"), (r"\e", "\\"), (r"\&", ""), (r"\,", ""), (r"\/", "")):
        text = text.replace(escape, plain)
    return re.sub(r"\\f[BIRP]", "", text)


def sections(text: str, request: str) -> dict[str, str]:
    """Heading -> body, for `.SH` or `.SS` headings (`.SH` on its own line is
    followed by its title, as argparse-manpage writes it)."""
    text = re.sub(r"^\.SH\n(?!\.)", ".SH ", text, flags=re.MULTILINE)
    parts = re.split(rf"^\{request} (.*)$", text, flags=re.MULTILINE)
    return {parts[i].strip('"'): parts[i + 1] for i in range(1, len(parts), 2)}


def has_option(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_man_prints_no_warning() -> None:
    man = need("man", "man-db")
    need("groff", "groff-base")
    done = subprocess.run([man, "--warnings", "-l", str(MAN_PAGE)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "MANWIDTH": "80"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "wg-wrap - run one program behind a WireGuard tunnel" in done.stdout


def test_man_page_documents_every_command_and_option() -> None:
    """Each command has its subsection, holding each of its options; help
    options are left out by argparse-manpage (they are in each usage line)."""
    parser = cli.build_parser()
    top = sections(man_text(), ".SH")
    commands = sections(top["COMMANDS"], ".SS")
    for name, command in subparsers(parser).items():
        body = commands.get(f"wg-wrap {name}")
        assert body is not None, f"no subsection for `wg-wrap {name}`"
        for option in option_strings(command):
            if option in ("-h", "--help"):
                assert has_option(body, "-h"), name  # in the usage line
                continue
            assert has_option(body, option), f"wg-wrap {name} {option}"
    for option in option_strings(parser):
        if option not in ("-h", "--help"):
            assert has_option(top["OPTIONS"], option), option
    assert "wg-wrap COMMAND --help" in top["EXAMPLES"]


def test_man_page_has_the_sections_the_parser_cannot_give() -> None:
    top = sections(man_text(), ".SH")
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "CONFIGURATION",
                    "EXIT STATUS", "ENVIRONMENT", "FILES", "SECURITY", "EXAMPLES", "SEE ALSO"):
        assert heading in top, heading

    # every key of the config parser's tables; the ignored ones with their warning
    keys = [name for name, _ in config._INTERFACE_SYNTAX + config._PEER_SYNTAX]
    for key in keys:
        assert re.search(rf"\b{key}\b", top["CONFIGURATION"]), key
    _, _, ignored = man_sections.config_keys()
    assert set(ignored) == {"FwMark", "SaveConfig", "PreUp", "PostUp", "PreDown", "PostDown"}
    for message in ignored.values():
        assert message in top["CONFIGURATION"]

    for status in ("0", "1", "2", "125", "126", "127"):
        assert re.search(rf"^\.TP\n{status}\n", top["EXIT STATUS"], re.MULTILINE), status
    assert "128+N" in top["EXIT STATUS"]

    for path in ("$XDG_RUNTIME_DIR/wg-wrap/NAME/", "/tmp/wg-wrap-UID/NAME/",
                 "$XDG_CONFIG_HOME/wg-wrap/NAME.conf", "~/.config/wg-wrap/NAME.conf",
                 "/usr/libexec/wg-wrap/wg-wrap-launcher", "wg-wrap@.service",
                 "/etc/apparmor.d/wg-wrap-launcher"):
        assert path in top["FILES"], path

    for name in ("wg (8)", "wg-quick (8)", "systemd.service (5)"):
        assert f".BR {name}" in top["SEE ALSO"], name

    # the README's guarantees and limits, every item of them
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"## {man_sections.README_SECURITY}\n", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^- (.*)$", section, flags=re.MULTILINE)
    assert len(items) >= 6
    security = " ".join(top["SECURITY"].split())
    for item in items:
        assert item.replace("`", "") in security, item

    # every example of the parser's epilogs
    epilogs = [cli.build_parser().epilog or ""]
    epilogs += [p.epilog or "" for p in subparsers(cli.build_parser()).values()]
    for line in "\n".join(epilogs).splitlines():
        if line.startswith("  wg-wrap "):
            assert line[2:] in top["EXAMPLES"], line


def test_every_environment_variable_wg_wrap_reads_is_documented() -> None:
    env = sections(man_text(), ".SH")["ENVIRONMENT"]
    source = "\n".join(p.read_text() for p in (REPO / "wg_wrap").glob("*.py"))
    read = set(re.findall(r"environ(?:\.get)?[(\[]\s*\"([A-Z_]+)\"|getenv\(\"([A-Z_]+)\"",
                          source))
    names = {a or b for a, b in read}
    assert {"XDG_RUNTIME_DIR", "SHELL", "WG_WRAP_LIBEXEC_DIR"} <= names
    for name in names | {"XDG_CONFIG_HOME", "NOTIFY_SOCKET"}:
        assert re.search(rf"^\.TP\n{name}$", env, re.MULTILINE), name
