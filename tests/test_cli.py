"""The command line: bad input gets one clear line, a non-zero exit, and
leaves nothing running or on disk.  Run as the unprivileged user."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest
from conftest import Stage, User, run_as_user, user_env
from hypothesis import assume, given
from hypothesis import strategies as st

from wg_wrap import cli
from wg_wrap.errors import UsageError

BAD = sorted((Path(__file__).parent / "configs" / "bad").glob("*.conf"))


def _expectation(path: Path) -> tuple[str, str]:
    m = re.match(r"# expect: (\d+): (.*)", path.read_text(errors="replace").splitlines()[0])
    assert m, f"{path.name} lacks its '# expect: LINE: message' first line"
    return m.group(1), m.group(2)


def _copy_for_user(src: Path, user_tmp: Path, user: User) -> Path:
    dst = user_tmp / src.name
    dst.write_bytes(src.read_bytes())
    os.chown(dst, user.uid, user.gid)
    dst.chmod(0o600)
    return dst


@pytest.mark.e2e
def test_every_malformed_config_fails_with_file_line_and_starts_nothing(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    assert len(BAD) >= 25
    failures = []
    for src in BAD:
        line, message = _expectation(src)
        conf = _copy_for_user(src, user_tmp, test_user)
        result = run_as_user(
            test_user, stage.wg_wrap("run", "-c", str(conf), "--", "true"),
            env=user_env(user_runtime_dir),
        )
        where = f"{conf}:{line}"
        first = result.stderr.splitlines()[0] if result.stderr else ""
        if (
            result.returncode != 1
            or not first.startswith(f"wg-wrap: error: {where}: ")
            or message not in first
            or "Traceback" in result.stderr
        ):
            failures.append(f"{src.name}: exit {result.returncode}: {result.stderr!r}")
    assert not failures, "\n".join(failures)
    # Nothing started, nothing on disk.
    state = user_runtime_dir / "wg-wrap"
    assert not state.exists() or list(state.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01binary\xff" * 100, "not a text file"),
        (b"[Interface]\n" + b"# padding\n" * 200_000, "too large"),
    ],
    ids=["binary", "huge"],
)
def test_binary_and_huge_files_are_refused(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path,
    content: bytes, message: str,
) -> None:
    conf = user_tmp / "odd.conf"
    conf.write_bytes(content)
    os.chown(conf, test_user.uid, test_user.gid)
    result = run_as_user(test_user, stage.wg_wrap("run", "-c", str(conf), "--", "true"),
                         env=user_env(user_runtime_dir))
    assert result.returncode == 1
    assert result.stderr.startswith(f"wg-wrap: error: {conf}") and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_unresolvable_endpoint_names_the_peer_line(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    conf = user_tmp / "wg0.conf"
    conf.write_text(
        "[Interface]\nPrivateKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        "Address = 10.9.0.2/32\n\n[Peer]\n"
        "PublicKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
        "Endpoint = no-such-host.invalid:51820\nAllowedIPs = 0.0.0.0/0\n"
    )
    os.chown(conf, test_user.uid, test_user.gid)
    conf.chmod(0o600)
    result = run_as_user(test_user, stage.wg_wrap("run", "-c", str(conf), "--", "true"),
                         env=user_env(user_runtime_dir))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"wg-wrap: error: {conf}:5: cannot resolve endpoint")
    assert "Traceback" not in result.stderr
    state = user_runtime_dir / "wg-wrap"
    assert not state.exists() or list(state.iterdir()) == []


def test_missing_config_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["run", "-c", "/nonexistent/wg0.conf", "--", "true"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("wg-wrap: error: /nonexistent/wg0.conf: ")
    assert "Traceback" not in err


def test_usage_errors_exit_2_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--dns", "nameserver", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wg-wrap: error: ") and "--dns" in err
    assert "hint: see `wg-wrap run --help`" in err


def test_help_explains_options_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("-c FILE", "-n NAME", "--dns IP", "-v", "e.g."):
        assert option in out
    assert "wg-wrap run -c ~/vpn/wg0.conf -- firefox" in out


# ---- one grammar for `exec`: the fast path answers as argparse does ----------

# Words that probe the grammar: options, their abbreviations and typos, `--`
# in every position, names and commands that look like options.
EXEC_WORDS = st.sampled_from([
    "wg0", "x", "-", "-v", "--verbose", "--verb", "-vv", "-vh", "-h", "--help", "--",
    "-x", "--bogus", "-1", "--verbose=1", "-v1", "true", "", " ", "-- ",
]) | st.text(max_size=6)
PROFILE_NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}", fullmatch=True)
VERBOSE_FLAGS = st.lists(st.sampled_from(["-v", "--verbose"]), max_size=2)


def by_argparse(argv: list[str]) -> tuple[str, list[str], bool] | str:
    """What the argparse path makes of argv: exec's request, or how it failed."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            args = cli.build_parser().parse_args(argv)
        except UsageError:
            return "usage error"
        except SystemExit:
            return "exit (help)"
    return cli.exec_request(args)


@given(st.lists(EXEC_WORDS, max_size=7))
def test_the_exec_fast_path_answers_only_as_argparse_does(words: list[str]) -> None:
    argv = ["exec", *words]
    fast = cli._exec_fast_path(argv)
    if fast is not None:
        assert by_argparse(argv) == fast


@given(VERBOSE_FLAGS, PROFILE_NAMES, VERBOSE_FLAGS, st.booleans(),
       st.lists(st.text(max_size=8), max_size=4))
def test_the_documented_exec_forms_take_the_fast_path(
    before: list[str], name: str, after: list[str], dashdash: bool, command: list[str]
) -> None:
    """`exec [-v] NAME [-v] [--] CMD...`: -v before or after NAME, CMD after
    `--` whatever it looks like, or without `--` when it is no option."""
    assume(dashdash or not command or command[0] == "-" or not command[0].startswith("-"))
    argv = ["exec", *before, name, *after, *(["--"] if dashdash else []), *command]
    expected = (name, command or [cli.default_shell()], bool(before or after))
    assert cli._exec_fast_path(argv) == expected
    assert by_argparse(argv) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["exec", "wg0", "-v", "--", "true"], ("wg0", ["true"], True)),
        (["exec", "wg0", "curl", "-v", "URL"], ("wg0", ["curl", "-v", "URL"], False)),
        (["exec", "wg0", "--", "-v"], ("wg0", ["-v"], False)),
        (["exec", "wg0", "--", "--", "x"], ("wg0", ["--", "x"], False)),
        (["exec", "--verb", "wg0", "--", "true"], ("wg0", ["true"], True)),
        (["exec", "--", "wg0", "true"], ("wg0", ["true"], False)),
        (["exec", "wg0", "-x", "--", "true"], "usage error"),
        (["exec", "-v"], "usage error"),
        (["exec", "wg0", "-h"], "exit (help)"),
    ],
)
def test_exec_grammar_examples(argv: list[str], expected: object) -> None:
    assert by_argparse(argv) == expected


def test_exec_verbose_after_the_name_is_an_option_not_the_program(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert cli.main(["exec", "nosuch", "-v", "--", "true"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # -v took effect
    assert err.splitlines()[-2] == "wg-wrap: error: profile 'nosuch' is not running"


@pytest.mark.e2e
def test_config_from_a_pipe_needs_a_name_and_works(
    stage: Stage, test_user: User, user_tmp: Path, user_runtime_dir: Path
) -> None:
    """`-c <(pass show vpn/wg0)`: the private key never touches the disk."""
    from peers import Keys, Net, client_config, silent_udp_port

    conf = _copy_for_user(BAD[0], user_tmp, test_user)  # any readable path
    conf.write_text(client_config(Keys(), Net("10.99.0", "fd00:99::"), silent_udp_port()))
    wg_wrap = " ".join(stage.wg_wrap())
    unnamed = run_as_user(test_user, ["bash", "-c", f"{wg_wrap} run -c <(cat {conf}) -- true"],
                          env=user_env(user_runtime_dir))
    assert unnamed.returncode == 1
    assert "names no profile" in unnamed.stderr and "-n NAME" in unnamed.stderr
    named = run_as_user(
        test_user,
        ["bash", "-c", f"{wg_wrap} run -n piped -c <(cat {conf}) -- ip -br link show tun0"],
        env=user_env(user_runtime_dir),
    )
    assert named.returncode == 0, named.stderr
    assert named.stdout.startswith("tun0")
