"""The man page and the shell completions: generated from the parser, up to
date, lint-free, complete, and working in real bash, zsh and fish.

The committed files (packaging/man/wg-wrap.1, packaging/completions/) come
from scripts/gen-docs.py (`make docs`); the shells load them from where
`make install` puts them, through their own loaders (bash-completion's,
zsh's fpath, fish's vendor_completions.d), and complete as a user would:
commands, options, running profiles, config names and .conf files.  The
tools are Debian's (man-db, groff-base, bash-completion, zsh, fish), which
.ci/run installs; a missing one fails the test, naming the package.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Stage

from wg_wrap import cli, config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import man_sections  # noqa: E402

MAN_PAGE = REPO / "packaging" / "man" / "wg-wrap.1"
GENERATED = [
    Path("packaging/man/wg-wrap.1"),
    Path("packaging/completions/wg-wrap.bash"),
    Path("packaging/completions/_wg-wrap"),
    Path("packaging/completions/wg-wrap.fish"),
]
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


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
    """shtab and argparse-manpage are build-time tools, absent from a user's
    machine: building the parser (for --help) must not need them."""
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
        assert re.sub(r"[`*]", "", item) in security, item

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


# ---- the completions, in real shells ---------------------------------------------


@dataclass(frozen=True)
class World:
    """Completion files installed by `make install-data`, and a user's state:
    two running profiles, two configs in the config directory, and a working
    directory with a .conf file, another file and a subdirectory."""

    root: Path
    share: Path  # DESTDIR/usr/share
    home: Path
    runtime: Path  # XDG_RUNTIME_DIR
    config_home: Path  # XDG_CONFIG_HOME
    cwd: Path
    bin: Path  # a `wg-wrap` on PATH: fish loads completions for commands it finds

    def env(self, fallback: bool = False) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8",
            "TERM": "dumb", "XDG_CONFIG_HOME": str(self.config_home),
            "XDG_DATA_DIRS": str(self.share),
        }
        if not fallback:
            env["XDG_RUNTIME_DIR"] = str(self.runtime)
        return env


PROFILES = {"wg0", "home-vpn"}
CONFIG_NAMES = {"wg0", "office"}
FALLBACK_PROFILE = "via-tmp"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # Not under /tmp: the fallback tests mount a private /tmp over it.
    root = Path(tempfile.mkdtemp(prefix="wg-wrap-docs-", dir="/var/tmp"))
    try:
        destdir = root / "destdir"
        done = subprocess.run(
            ["make", "-s", "-C", str(REPO), "install-data", f"DESTDIR={destdir}", "PREFIX=/usr"],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
        w = World(root, destdir / "usr" / "share", root / "home", root / "run",
                  root / "config", root / "cwd", root / "bin")
        for name in PROFILES:
            (w.runtime / "wg-wrap" / name).mkdir(parents=True)
        (w.runtime / "wg-wrap" / "lock").write_text("")  # a file: not a profile
        (w.config_home / "wg-wrap").mkdir(parents=True)
        for name in CONFIG_NAMES:
            (w.config_home / "wg-wrap" / f"{name}.conf").write_text("")
        (w.config_home / "wg-wrap" / "notes.txt").write_text("")
        (w.cwd / "sub").mkdir(parents=True)
        (w.cwd / "a.conf").write_text("")
        (w.cwd / "b.txt").write_text("")
        w.home.mkdir()
        w.bin.mkdir()
        (w.bin / "wg-wrap").write_text("#!/bin/sh\nexit 0\n")
        (w.bin / "wg-wrap").chmod(0o755)
        yield w
    finally:
        shutil.rmtree(root, ignore_errors=True)


def with_private_tmp(argv: list[str]) -> list[str]:
    """argv in a mount namespace of its own with an empty /tmp holding only
    the fallback runtime directory /tmp/wg-wrap-EUID with one profile."""
    setup = (f"mount -t tmpfs -o mode=1777 wg-wrap-test /tmp && "
             f"mkdir -p /tmp/wg-wrap-{os.geteuid()}/{FALLBACK_PROFILE} && exec \"$@\"")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sh", *argv]


def commands() -> set[str]:
    return set(subparsers(cli.build_parser()))


def options_of(command: str) -> set[str]:
    return set(option_strings(subparsers(cli.build_parser())[command]))


# (words on the line, the last one being completed) -> what is offered
CASES = [
    (["wg-wrap", ""], commands),
    (["wg-wrap", "-"], lambda: set(option_strings(cli.build_parser()))),
    (["wg-wrap", "run", "-"], lambda: options_of("run")),
    (["wg-wrap", "up", "--"], lambda: {o for o in options_of("up") if o.startswith("--")}),
    (["wg-wrap", "exec", ""], lambda: PROFILES),
    (["wg-wrap", "exec", "-v", ""], lambda: PROFILES),
    (["wg-wrap", "down", "h"], lambda: {"home-vpn"}),
    (["wg-wrap", "status", ""], lambda: PROFILES),
    (["wg-wrap", "run", "-n", ""], lambda: CONFIG_NAMES),
    (["wg-wrap", "up", "--name", "o"], lambda: {"office"}),
    (["wg-wrap", "run", "-c", ""], lambda: {"a.conf", "sub"}),
    (["wg-wrap", "up", "--config", ""], lambda: {"a.conf", "sub"}),
]
CASE_IDS = [" ".join(words).strip() or "empty" for words, _ in CASES]


def offered(lines: str) -> set[str]:
    """Candidates, without descriptions (fish: TAB) or a directory's slash."""
    return {line.split("\t")[0].rstrip("/") for line in lines.splitlines() if line}


# bash: bash-completion loads the file from XDG_DATA_DIRS, as it would
# /usr/share/bash-completion/completions/wg-wrap; then the completion
# function runs as on TAB, with COMP_WORDS and COMP_CWORD set.
BASH_DRIVER = r"""
source /usr/share/bash-completion/bash_completion
__load_completion wg-wrap || { echo "bash-completion found no completion for wg-wrap" >&2; exit 3; }
spec=$(complete -p wg-wrap)
[[ $spec == *" -F "* ]] || { echo "no completion function: $spec" >&2; exit 3; }
fn=${spec##* -F }; fn=${fn%% *}
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$fn" wg-wrap "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(w: World, words: list[str], fallback: bool = False) -> set[str]:
    bash = need("bash", "bash")
    if not BASH_COMPLETION.is_file():
        pytest.fail(f"{BASH_COMPLETION} is missing: `apt-get install bash-completion`",
                    pytrace=False)
    argv = [bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", *words]
    done = subprocess.run(with_private_tmp(argv) if fallback else argv, cwd=w.cwd,
                          env=w.env(fallback), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return offered(done.stdout)


# zsh: an interactive zsh on a pseudo-terminal, compinit with the installed
# site-functions directory in fpath, the line typed and TAB pressed.  A
# wrapper around the compadd builtin records the matches the completion
# system adds (after matching them against the word, as compadd -O does),
# and a post-completion hook marks the end.
ZSH_SETUP = r"""
fpath=({site_functions} $fpath); autoload -Uz compinit; compinit -u -D
compadd() {{
  if (( ${{argv[(I)-[OAD]*]}} )); then builtin compadd "$@"; return; fi
  local -a __matches
  builtin compadd -O __matches "$@"
  (( $#__matches )) && print -rl -- $__matches >> {out}
  builtin compadd "$@"
}}
_wg_wrap_test_done() {{ print -r -- '<done>' >> {out} }}
comppostfuncs=(_wg_wrap_test_done)
"""


def zsh_complete(w: World, words: list[str], fallback: bool = False) -> set[str]:
    zsh = need("zsh", "zsh")
    with tempfile.TemporaryDirectory(dir=w.root) as scratch:
        out = Path(scratch) / "matches"
        setup = ZSH_SETUP.format(site_functions=w.share / "zsh" / "site-functions", out=out)
        argv = [zsh, "-f", "-i"]
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            with_private_tmp(argv) if fallback else argv, stdin=slave, stdout=slave,
            stderr=slave, cwd=w.cwd, env={**w.env(fallback), "PS1": "> "},
            start_new_session=True,
        )
        os.close(slave)
        screen = b""
        try:
            os.write(master, setup.encode() + " ".join(words).encode() + b"\t")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if out.exists() and "<done>" in out.read_text():
                    break
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        screen += os.read(master, 65536)
                    except OSError:  # zsh is gone
                        break
            else:
                pytest.fail(f"zsh completed nothing in 30 s; its terminal showed: {screen!r}")
        finally:
            proc.kill()
            proc.wait(timeout=10)
            os.close(master)
        text = out.read_text() if out.exists() else ""
        assert "<done>" in text, f"zsh exited; its terminal showed: {screen!r}"
        return offered(text.replace("<done>", ""))


# fish: fish finds wg-wrap.fish in vendor_completions.d of XDG_DATA_DIRS, as
# it would in /usr/share/fish/vendor_completions.d; `complete -C` prints
# what TAB would offer.
def fish_complete(w: World, words: list[str], fallback: bool = False) -> set[str]:
    fish = need("fish", "fish")
    argv = [fish, "-c", "complete --do-complete=$argv[1]", " ".join(words)]
    done = subprocess.run(with_private_tmp(argv) if fallback else argv, cwd=w.cwd,
                          env=w.env(fallback), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return offered(done.stdout)


SHELLS = {"bash": bash_complete, "zsh": zsh_complete, "fish": fish_complete}


@pytest.mark.parametrize("shell", list(SHELLS))
@pytest.mark.parametrize(("words", "expected"), CASES, ids=CASE_IDS)
def test_completion(world: World, shell: str, words: list[str], expected: object) -> None:
    assert callable(expected)
    assert SHELLS[shell](world, words) == expected()


@pytest.mark.parametrize("shell", list(SHELLS))
def test_profiles_come_from_tmp_without_xdg_runtime_dir(world: World, shell: str) -> None:
    """wg-wrap's own fallback (wg_wrap/runtime.py): /tmp/wg-wrap-EUID."""
    need("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.fail("the fallback test mounts a private /tmp: run it as root", pytrace=False)
    assert SHELLS[shell](world, ["wg-wrap", "exec", ""], fallback=True) == {FALLBACK_PROFILE}


COMPLETION_FILES = {"bash": GENERATED[1], "zsh": GENERATED[2], "fish": GENERATED[3]}


@pytest.mark.parametrize("shell", list(COMPLETION_FILES))
def test_completion_files_parse(shell: str) -> None:
    done = subprocess.run([need(shell, shell), "-n", str(REPO / COMPLETION_FILES[shell])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
