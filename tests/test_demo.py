"""`wg-wrap demo` and `make demo`: a local peer and a wrapped program talking
through the tunnel, ending on the content fetched, leaving nothing behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Stage, User, run_as_user, sidecars_of, user_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
LAST_LINE = ("wg-wrap demo: fetched through the tunnel: "
             "hello through the tunnel: the peer sees you as 10.77.0.2")


def test_demo_as_an_unprivileged_user(
    stage: Stage, test_user: User, user_runtime_dir: Path
) -> None:
    result = run_as_user(test_user, stage.wg_wrap("demo"), env=user_env(user_runtime_dir),
                         timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == LAST_LINE
    assert "network interfaces were: lo tun0 (" in result.stdout
    assert ("DNS question for peer.demo.wg-wrap.test, from 10.77.0.2: names are resolved "
            "through the tunnel too") in result.stdout
    # a showcase prints no warning (nor anything else) on stderr
    assert result.stderr == "", result.stderr
    assert not sidecars_of(test_user, user_runtime_dir)
    assert list((user_runtime_dir / "wg-wrap").iterdir()) == []


def test_make_demo_from_the_checkout() -> None:
    result = subprocess.run(["make", "-s", "demo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == LAST_LINE
