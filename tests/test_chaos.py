"""Seeded fault injection: a few hundred random operations over three
profiles, each with its own real peer (a second wg-wrap), as the
unprivileged user — up, exec, run, down, down --force, publish, unpublish,
programs that stay inside, joins racing a down, heals, SIGKILL of sidecars
and aftercare processes, SIGSTOP and SIGCONT — asserting after every step:

- no command ran past its bound (COMMAND_BOUND), none printed a traceback,
  every failure was one `wg-wrap: error:` line and a hint;
- `wg-wrap status` agrees with the processes: each profile it shows running
  has its sidecar alive, and no sidecar runs that no profile records;
- traffic works or fails closed: a fetch through a profile either reaches
  its own peer, which sees the tunnel's address, or fails;

and at the end, with every fault undone and everything taken down, that
nothing is left, and that each profile works again.

The seed is printed, and named in every failure: WG_WRAP_CHAOS_SEED=N
repeats a run (WG_WRAP_CHAOS_SEED=random picks one), WG_WRAP_CHAOS_STEPS=N
changes its length, WG_WRAP_CHAOS_LOG=FILE keeps every step."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Stage, Tool, User, aftercares_of, as_user_argv, user_env
from peers import HTTP_PORT, WgWrapServer, next_net

pytestmark = pytest.mark.e2e

PROFILES = 3
STEPS = int(os.environ.get("WG_WRAP_CHAOS_STEPS", "300"))
_SEED = os.environ.get("WG_WRAP_CHAOS_SEED", "20261203")
SEED = random.SystemRandom().randrange(1 << 32) if _SEED == "random" else int(_SEED)
COMMAND_BOUND = 20.0  # s: the longest any command may take (a lock waits 15 s at most)
AGREE_WITHIN = 3.0  # s: an ending ephemeral sidecar may take this long to be gone
MAX_PROGRAMS = 4  # programs kept inside at once


@dataclass
class World:
    tool: Tool
    stage: Stage
    user: User
    servers: list[WgWrapServer]
    confs: list[Path]
    rng: random.Random
    step: int = 0
    log: list[str] = field(default_factory=list)
    programs: list[subprocess.Popen[str]] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)  # sidecar pid -> profile
    fetched: list[int] = field(default_factory=lambda: [0, 0])  # failed, worked
    heals: int = 0

    def fail(self, message: str) -> None:
        recent = "\n  ".join(self.log[-12:])
        pytest.fail(f"seed {SEED}, step {self.step}: {message}\n"
                    f"(WG_WRAP_CHAOS_SEED={SEED} repeats it)\nlast steps:\n  {recent}",
                    pytrace=False)

    def name(self) -> tuple[str, int]:
        i = self.rng.randrange(PROFILES)
        return f"p{i}", i

    # ---- commands --------------------------------------------------------------

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            as_user_argv(self.user, self.stage.wg_wrap(*args)),
            env=user_env(self.tool.runtime), cwd="/", text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def finish(self, what: str, proc: subprocess.Popen[str], started: float
               ) -> tuple[int, str, str]:
        left = max(0.1, started + COMMAND_BOUND - time.monotonic())
        try:
            out, err = proc.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            self.fail(f"`{what}` ran past {COMMAND_BOUND:g} s")
        took = time.monotonic() - started
        self.log.append(f"{self.step}: {what} -> {proc.returncode} ({took:.1f} s) "
                        f"{err.strip().splitlines()[:1]}")
        self.check_output(what, proc.returncode, err)
        return proc.returncode, out, err

    def run(self, *args: str) -> tuple[int, str, str]:
        return self.finish(" ".join(args), self.start(*args), time.monotonic())

    def check_output(self, what: str, code: int, err: str) -> None:
        if "Traceback" in err or "internal error" in err:
            self.fail(f"`{what}` printed a traceback:\n{err}")
        if "starting a new one in their namespaces" in err:
            self.heals += 1
        if code == 1:
            errors = [line for line in err.splitlines() if line.startswith("wg-wrap: error:")]
            if len(errors) != 1:
                self.fail(f"`{what}` failed without one error line:\n{err}")

    def fetch_args(self, i: int) -> list[str]:
        url = f"http://{self.servers[i].net.server4}:{HTTP_PORT}/"
        return ["curl", "-sS", "--max-time", "2", url]

    def check_fetch(self, what: str, i: int, code: int, out: str) -> None:
        """Works (its own peer, which sees the tunnel's address) or fails."""
        if code == 0 and f"sees you as {self.servers[i].net.client4}" not in out:
            self.fail(f"`{what}` reached something other than its peer: {out!r}")
        self.fetched[code == 0] += 1

    # ---- the state of things -----------------------------------------------------

    def agree(self) -> None:
        """status and the processes agree (ending sidecars: AGREE_WITHIN)."""
        deadline = time.monotonic() + AGREE_WITHIN
        while True:
            problem = self._disagreement()
            if problem is None:
                return
            if time.monotonic() > deadline:
                self.fail(problem)
            time.sleep(0.1)

    def _disagreement(self) -> str | None:
        code, out, err = self.run("status", "--json")
        if code != 0:
            return f"status failed: {err}"
        shown = json.loads(out)
        recorded = set()
        for info in shown:
            if not info.get("running"):
                continue
            pid = info["sidecar_pid"]
            recorded.add(pid)
            if not _is_sidecar(pid):
                return f"status shows {info['name']} running, but its sidecar {pid} is not"
            if (pid in self.stopped) == bool(info.get("responding")):
                return f"{info['name']}: responding={info.get('responding')}, stopped: " \
                       f"{pid in self.stopped}"
            listening, shown = _host_listeners(pid), _shown_ports(info)
            if listening != shown:
                return (f"{info['name']}: its sidecar listens on host ports {sorted(listening)}, "
                        f"status shows {sorted(shown)}")
        stray = self.tool.sidecars() - recorded
        if stray:
            return f"sidecars no profile records: {sorted(stray)} (status: {shown})"
        return None

    def sidecar(self, name: str) -> int | None:
        path = self.tool.state_dir / name / "state.toml"
        try:
            found = re.search(r"^sidecar_pid = (\d+)$", path.read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(found.group(1)) if found and _is_sidecar(int(found.group(1))) else None

    # ---- the operations ------------------------------------------------------------

    def op_up(self) -> None:
        name, i = self.name()
        self.run("up", "--no-wait", "-n", name, "-c", str(self.confs[i]))

    def op_down(self) -> None:
        name, _ = self.name()
        self.run("down", *(["--force"] if self.rng.random() < 0.5 else []), name)

    def op_exec_fetch(self) -> None:
        name, i = self.name()
        code, out, _ = self.run("exec", name, "--", *self.fetch_args(i))
        self.check_fetch(f"exec {name}", i, code, out)

    def op_run_fetch(self) -> None:
        name, i = self.name()
        code, out, _ = self.run("run", "-n", name, "-c", str(self.confs[i]), "--",
                                *self.fetch_args(i))
        self.check_fetch(f"run {name}", i, code, out)

    def op_program(self) -> None:
        """A program that stays inside a while: heals and `down`'s refusals."""
        self.reap_programs()
        if len(self.programs) >= MAX_PROGRAMS:
            return
        name, _ = self.name()
        seconds = self.rng.randrange(3, 20)
        self.programs.append(self.start("exec", name, "--", "sleep", str(seconds)))
        self.log.append(f"{self.step}: exec {name} -- sleep {seconds} (in the background)")

    def op_join_during_down(self) -> None:
        name, _ = self.name()
        started = time.monotonic()
        down = self.start("down", "--force", name)
        join = self.start("exec", name, "--", "true")
        self.finish(f"down --force {name} (racing a join)", down, started)
        self.finish(f"exec {name} -- true (racing a down)", join, started)

    def op_publish(self) -> None:
        """Half of them, while a sidecar is stopped, to that one: what the
        client gives up on must never be served later."""
        name, _ = self.name()
        if self.stopped and self.rng.random() < 0.5:
            name = self.rng.choice(sorted(self.stopped.values()))
        self.run("publish", name, f"127.0.0.1:0:{self.rng.randrange(1000, 1010)}")

    def op_unpublish(self) -> None:
        name, _ = self.name()
        code, out, _ = self.run("status", "--json", name)
        if code != 0:
            return
        (info,) = json.loads(out)
        if info.get("published"):
            entry = self.rng.choice(info["published"])
            self.run("unpublish", name, entry["host"].rsplit(":", 1)[1])

    def op_kill_sidecar(self) -> None:
        name, _ = self.name()
        pid = self.sidecar(name)
        if pid is not None:
            self.log.append(f"{self.step}: SIGKILL sidecar {pid} of {name}")
            _signal(pid, signal.SIGKILL)
            self.stopped.pop(pid, None)

    def op_kill_start(self) -> None:
        """A start killed at a random moment (Ctrl-C's harsher sibling)."""
        name, i = self.name()
        args = ["up", "--no-wait", "-n", name, "-c", str(self.confs[i])] \
            if self.rng.random() < 0.5 else \
            ["run", "-n", name, "-c", str(self.confs[i]), "--", "true"]
        delay = round(self.rng.uniform(0, 0.6), 2)
        started = time.monotonic()
        proc = self.start(*args)
        time.sleep(delay)  # the fault's timing
        proc.kill()
        self.finish(f"{' '.join(args)} (SIGKILL after {delay} s)", proc, started)

    def op_kill_and_up(self) -> None:
        """A sidecar killed and its profile brought up at once: a heal when
        programs are inside, racing the aftercare when none are."""
        name, i = self.name()
        pid = self.sidecar(name)
        if pid is not None:
            self.log.append(f"{self.step}: SIGKILL sidecar {pid} of {name}, then up")
            _signal(pid, signal.SIGKILL)
            self.stopped.pop(pid, None)
            self.run("up", "--no-wait", "-n", name, "-c", str(self.confs[i]))

    def op_kill_aftercare(self) -> None:
        found = sorted(aftercares_of(self.user, self.tool.runtime))
        if found:
            pid = self.rng.choice(found)
            self.log.append(f"{self.step}: SIGKILL aftercare {pid}")
            _signal(pid, signal.SIGKILL)

    def op_stop(self) -> None:
        name, _ = self.name()
        pid = self.sidecar(name)
        if pid is not None and len(self.stopped) < 2:
            self.log.append(f"{self.step}: SIGSTOP sidecar {pid} of {name}")
            _signal(pid, signal.SIGSTOP)
            self.stopped[pid] = name

    def op_cont(self) -> None:
        for pid in sorted(self.stopped):
            self.log.append(f"{self.step}: SIGCONT {pid}")
            _signal(pid, signal.SIGCONT)
        self.stopped.clear()

    def reap_programs(self) -> None:
        """The programs that ended: what they said is checked like a command's."""
        running = []
        for proc in self.programs:
            if proc.poll() is None:
                running.append(proc)
                continue
            _, err = proc.communicate()
            self.check_output("a program kept inside", proc.returncode, err)
        self.programs = running


OPERATIONS = [  # (weight, operation)
    (14, World.op_up), (8, World.op_down), (14, World.op_exec_fetch), (8, World.op_run_fetch),
    (12, World.op_program), (4, World.op_join_during_down), (6, World.op_publish),
    (4, World.op_unpublish), (7, World.op_kill_sidecar), (3, World.op_kill_aftercare),
    (3, World.op_stop), (4, World.op_cont), (4, World.op_kill_start), (4, World.op_kill_and_up),
]


def _is_sidecar(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0]
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return argv0.endswith(b"wg-wrap-sidecar") and state != "Z"


def _host_listeners(pid: int) -> set[int]:
    """The TCP ports pid listens on in the host's network namespace (ours):
    its socket inodes, found in /proc/net/tcp{,6}."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _shown_ports(info: dict[str, Any]) -> set[int]:
    """The host TCP ports status shows for a profile: published, proxies."""
    ports = {int(p["host"].rsplit(":", 1)[1]) for p in info.get("published") or []
             if p["proto"] == "tcp"}
    for proxy in ("socks", "http_proxy"):
        entry = info.get(proxy)
        if isinstance(entry, dict):
            ports.add(int(entry["address"].rsplit(":", 1)[1]))
    return ports


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def servers(stage: Stage, test_user: User) -> Iterator[list[WgWrapServer]]:
    started: list[WgWrapServer] = []
    try:
        for _ in range(PROFILES):
            started.append(WgWrapServer(stage, test_user, next_net()))
        yield started
    finally:
        for server in started:
            server.stop()


def test_random_faults_leave_nothing_and_never_leak(
    tool: Tool, stage: Stage, test_user: User, servers: list[WgWrapServer],
) -> None:
    print(f"chaos: seed {SEED}, {STEPS} steps (WG_WRAP_CHAOS_SEED={SEED} repeats it)")
    confs = [tool.conf(s.client_config(), f"p{i}.conf") for i, s in enumerate(servers)]
    world = World(tool, stage, test_user, servers, confs, random.Random(SEED))
    weights = [w for w, _ in OPERATIONS]
    try:
        for world.step in range(STEPS):
            (_, operation), = world.rng.choices(OPERATIONS, weights)
            operation(world)
            world.agree()
        world.step = STEPS
        # Every fault undone, every program gone, everything down: nothing left.
        world.op_cont()
        for proc in world.programs:
            proc.kill()
            proc.wait(timeout=10)
        for i in range(PROFILES):
            world.run("down", "--force", f"p{i}")
        if not tool.wait_gone(5):
            world.fail(f"left behind: profiles {tool.profiles()}, sidecars {tool.sidecars()}, "
                       f"aftercares {aftercares_of(test_user, tool.runtime)}")
        # and each profile works again
        for i in range(PROFILES):
            code, out, err = world.run("run", "-n", f"p{i}", "-c", str(confs[i]), "--",
                                       *world.fetch_args(i))
            if code != 0 or f"sees you as {servers[i].net.client4}" not in out:
                world.fail(f"p{i} does not work after the faults: {out} {err}")
        if not tool.wait_gone(5):
            world.fail("the last runs left something behind")
        counts: dict[str, int] = {}
        for line in world.log:
            verb = line.split(": ", 1)[1].split(" ", 1)[0]
            counts[verb] = counts.get(verb, 0) + 1
        failed, worked = world.fetched
        print(f"chaos: seed {SEED}: {len(world.log)} commands and faults, {counts}; "
              f"fetches: {worked} worked, {failed} failed closed; {world.heals} heals")
        assert worked > 0, "no fetch ever worked: the run tested nothing"
    finally:
        if os.environ.get("WG_WRAP_CHAOS_LOG"):  # every step, for a closer look
            Path(os.environ["WG_WRAP_CHAOS_LOG"]).write_text("\n".join(world.log) + "\n")
        for pid in world.stopped:
            _signal(pid, signal.SIGCONT)
        for proc in world.programs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
