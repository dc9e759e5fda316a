"""Versions: `wg-wrap --version` names the helpers' versions and where they are,
and a start refuses helpers of another version (a stale libexec directory left
by an upgrade), naming both, leaving nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import wg_wrap
from wg_wrap import paths, version
from wg_wrap.errors import SetupError

OLD = "0.0.1"


def helpers(directory: Path, launcher: str, sidecar: str) -> Path:
    """Stand-ins that say what version they are, as the real ones do."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, line in ((paths.LAUNCHER, launcher), (paths.SIDECAR, sidecar)):
        script = directory / name
        script.write_text(f"#!/bin/sh\necho '{line}'\n")
        script.chmod(0o755)
    return directory


def test_helpers_of_another_version_are_refused_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = helpers(tmp_path / "libexec", f"wg-wrap-launcher {OLD}",
                    f"wg-wrap-sidecar {wg_wrap.__version__} (wireguard-go v0, go1)")
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(stale))
    with pytest.raises(SetupError) as error:
        version.check_helpers()
    assert error.value.message == (
        f"wg-wrap {wg_wrap.__version__} found {stale / paths.LAUNCHER} of version {OLD}"
    )
    assert error.value.hint is not None and "same release" in error.value.hint
    report = version.report().splitlines()
    assert report[0] == f"wg-wrap {wg_wrap.__version__}"
    assert report[1] == f"wg-wrap-launcher {OLD}  [{stale / paths.LAUNCHER}]  [another version!]"
    assert report[2].endswith(f"[{stale / paths.SIDECAR}]")


def test_a_helper_that_says_nothing_is_of_an_unknown_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = helpers(tmp_path / "libexec", f"wg-wrap-launcher {wg_wrap.__version__}", "")
    monkeypatch.setenv("WG_WRAP_LIBEXEC_DIR", str(stale))
    with pytest.raises(SetupError, match="of an unknown version"):
        version.check_helpers()


def test_a_start_with_stale_helpers_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    stale = helpers(tmp_path / "libexec", f"wg-wrap-launcher {OLD}", f"wg-wrap-sidecar {OLD}")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    conf = tmp_path / "wg0.conf"
    conf.write_text("[Interface]\nPrivateKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                    "Address = 10.9.0.2/32\n\n[Peer]\n"
                    "PublicKey = AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
                    "AllowedIPs = 10.9.0.0/24\n")
    conf.chmod(0o600)
    env = dict(os.environ, WG_WRAP_LIBEXEC_DIR=str(stale), XDG_RUNTIME_DIR=str(runtime))
    done = subprocess.run([sys.executable, "-m", "wg_wrap", "up", "--no-wait", "-c", str(conf)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line for line in lines if not line.startswith("wg-wrap: warning:")] == [
        f"wg-wrap: error: wg-wrap {wg_wrap.__version__} found {stale / paths.LAUNCHER} "
        f"of version {OLD}",
        "wg-wrap: hint: install wg-wrap and its helpers from the same release (a stale libexec "
        "directory is left from an older install?); `wg-wrap --version` shows what is found "
        "where",
    ]
    assert list((runtime / "wg-wrap").iterdir()) == []
