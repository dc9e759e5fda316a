"""Joining a running profile: the fast path of ``exec`` and ``run``.

Keep this module's imports light (no pyroute2, no config parser, no psutil):
``wg-wrap exec NAME -- CMD`` should cost little more than the interpreter's
own start (scripts/bench_join.py measures it).
"""

from __future__ import annotations

import os

from wg_wrap import launch, runtime
from wg_wrap.errors import ProfileError
from wg_wrap.lifetime import join_running, trace
from wg_wrap.runtime import Profile

TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn


def not_running(name: str) -> ProfileError:
    return ProfileError(
        f"profile {name!r} is not running",
        hint=f"start it with `wg-wrap up -n {name}` (its config: ~/.config/wg-wrap/{name}.conf, "
        "or -c FILE; a profile whose sidecar died is brought back in place by `up` with the "
        "config it was started with, which `wg-wrap status` names); `wg-wrap ls` lists profiles",
    )


def exec_in(name: str, command: Sequence[str], verbose: bool = False) -> NoReturn:
    """``wg-wrap exec NAME -- CMD``: become CMD in a running profile."""
    runtime.check_profile_name(name)
    base = runtime.base_dir(create=False)
    if not os.path.exists(base):
        raise not_running(name)
    profile = Profile.at(base, name)
    attached = join_running(base, profile)
    if attached is None:
        raise not_running(name)
    trace(verbose, f"wg-wrap-launcher join -- {' '.join(command)}")
    launch.exec_joined(attached.sidecar, command, attached.hold_fd, profile.dir)
