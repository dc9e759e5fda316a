#!/usr/bin/env python3
"""Scale: many profiles against one peer, and many programs in one profile.

Part 1: one wg-wrap server with N peers (127.0.0.1), and N client profiles
(`up`, different keys) at once: each must pass traffic (a page, then 16 MiB
through TCP); prints each sidecar's RSS idle and after traffic, its aftercare's,
and what an idle profile costs in all (sidecar + aftercare; and of that, its
private memory, the binaries' pages being shared by all), and how long
`wg-wrap ls` takes with N profiles (against `python -c pass`, interleaved).

Part 2: M programs (`sleep`) joined to one profile with `exec`: how long
`wg-wrap exec NAME -- true` takes with M attached against none (the same
profile, before and after), what `ls` and `down` say, and how much memory
wg-wrap's own processes take per joined program.

    python scripts/bench_scale.py [--profiles 20] [--programs 200] [--runs 20]

Run it as an unprivileged user with the interpreter wg-wrap is installed in.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from wg_wrap import keys

SINK = r"""
import socket
srv = socket.create_server(("", 9000))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    while conn.recv(1 << 20):
        pass
    conn.sendall(b"ok")
    conn.close()
"""

SEND = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 9000), timeout=30)
block = b"\0" * (1 << 20)
for _ in range(16):
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
assert c.recv(2) == b"ok"
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def private_kib(pid: int) -> int:
    """What pid holds that no other process shares (Private_Clean +
    Private_Dirty: its own pages, not the binary's shared with the others)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        out.append((time.perf_counter() - start) * 1000)
    return out


def ms(values: list[float]) -> str:
    median = statistics.median(values)
    return f"median {median:6.1f} ms  (min {min(values):.1f}, max {max(values):.1f})"


class Tool:
    def __init__(self, python: str) -> None:
        self.python = python
        script = Path(python).parent / "wg-wrap"
        self.cmd = [str(script)] if script.exists() else [python, "-m", "wg_wrap"]
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        self.base = Path(xdg, "wg-wrap") if xdg else Path(f"/tmp/wg-wrap-{os.geteuid()}")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.cmd, *args], check=check, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)

    def state(self, name: str) -> dict[str, object]:
        return tomllib.loads((self.base / name / "state.toml").read_text())

    def sidecar(self, name: str) -> int:
        pid = self.state(name)["sidecar_pid"]
        assert isinstance(pid, int)
        return pid

    def aftercare(self, name: str) -> int:
        """The profile's aftercare process (wg-wrap-launcher aftercare)."""
        mine = f"{self.base / name}".encode()
        for pid, text in ours().items():
            if " aftercare " in text and mine in text.encode():
                return pid
        raise RuntimeError(f"profile {name} has no aftercare process")


def ours() -> dict[int, str]:
    """Our processes: sidecars, their aftercare, wg-wrap Python processes."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if ("wg-wrap-sidecar" in text or "wg-wrap-launcher" in text or "wg_wrap" in text
                or argv[0].endswith(b"/wg-wrap")):
            found[int(entry)] = text
    return found


def part1(tool: Tool, tmp: Path, n: int, runs: int) -> list[str]:
    secrets = [keys.generate_private_key() for _ in range(n + 1)]
    server_key, clients = secrets[0], secrets[1:]
    server_pub = keys.encode(keys.public_key(server_key))
    peers = "".join(
        f"\n[Peer]\nPublicKey = {keys.encode(keys.public_key(c))}\n"
        f"AllowedIPs = 10.252.{i // 200}.{i % 200 + 2}/32\n"
        for i, c in enumerate(clients)
    )
    server_conf = tmp / "scale-server.conf"
    server_conf.write_text(f"[Interface]\nPrivateKey = {keys.encode(server_key)}\n"
                           f"Address = 10.252.255.1/16\n{peers}")
    server_conf.chmod(0o600)
    tool("up", "--no-wait", "-n", "scale-server", "-c", str(server_conf),
         "--listen-address", "127.0.0.1")
    port = tool.state("scale-server")["listen_port"]
    sink = subprocess.Popen([*tool.cmd, "exec", "scale-server", "--", tool.python, "-c", SINK],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    names = [f"scale-{i:02}" for i in range(n)]
    lines = []
    try:
        start = time.perf_counter()
        for i, (name, key) in enumerate(zip(names, clients, strict=True)):
            conf = tmp / f"{name}.conf"
            conf.write_text(
                f"[Interface]\nPrivateKey = {keys.encode(key)}\n"
                f"Address = 10.252.{i // 200}.{i % 200 + 2}/16\n\n[Peer]\n"
                f"PublicKey = {server_pub}\nEndpoint = 127.0.0.1:{port}\n"
                "AllowedIPs = 10.252.0.0/16\n")
            conf.chmod(0o600)
            tool("up", "-n", name, "-c", str(conf))
        took = time.perf_counter() - start
        idle = {name: rss_kib(tool.sidecar(name)) for name in names}
        care = {name: rss_kib(tool.aftercare(name)) for name in names}
        profile = {name: idle[name] + care[name] for name in names}
        own = {name: private_kib(tool.sidecar(name)) + private_kib(tool.aftercare(name))
               for name in names}
        for name in names:  # every profile passes traffic
            tool("exec", name, "--", tool.python, "-c", SEND, "10.252.255.1")
        after = {name: rss_kib(tool.sidecar(name)) for name in names}
        ls_runs, base_runs = [], []
        for _ in range(runs):  # interleaved with the interpreter's own start
            ls_runs += timed([*tool.cmd, "ls"], 1)
            base_runs += timed([tool.python, "-c", "pass"], 1)
        listed = tool("ls").stdout.splitlines()[1:]
        lines += [
            f"{n} profiles up (each with its handshake) in {took:.1f} s; all {n} passed traffic "
            f"(16 MiB each); ls lists {sum(1 for line in listed if line.startswith('scale-'))}",
            f"sidecar RSS idle:          median {statistics.median(idle.values()) / 1024:.1f} MiB "
            f"(min {min(idle.values()) / 1024:.1f}, max {max(idle.values()) / 1024:.1f})",
            f"aftercare RSS:             median {statistics.median(care.values()) / 1024:.2f} MiB "
            f"(min {min(care.values()) / 1024:.2f}, max {max(care.values()) / 1024:.2f})",
            f"per idle profile (sidecar + aftercare): median "
            f"{statistics.median(profile.values()) / 1024:.1f} MiB (max "
            f"{max(profile.values()) / 1024:.1f})",
            f"of which its own (private, not shared with the other profiles): median "
            f"{statistics.median(own.values()) / 1024:.1f} MiB "
            f"(max {max(own.values()) / 1024:.1f})",
            f"sidecar RSS after traffic: median {statistics.median(after.values()) / 1024:.1f} MiB "
            f"(min {min(after.values()) / 1024:.1f}, max {max(after.values()) / 1024:.1f})",
            f"wg-wrap ls ({n + 1} profiles): {ms(ls_runs)}",
            f"python -c pass:              {ms(base_runs)}",
        ]
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        for name in [*names, "scale-server"]:
            tool("down", "--force", name, check=False)
    return lines


def part2(tool: Tool, tmp: Path, m: int, runs: int) -> list[str]:
    me, peer = keys.generate_private_key(), keys.generate_private_key()
    conf = tmp / "scale-many.conf"
    conf.write_text(f"[Interface]\nPrivateKey = {keys.encode(me)}\nAddress = 10.253.0.2/32\n\n"
                    f"[Peer]\nPublicKey = {keys.encode(keys.public_key(peer))}\n"
                    "Endpoint = 127.0.0.1:9\nAllowedIPs = 10.253.0.0/24\n")
    conf.chmod(0o600)
    tool("up", "--no-wait", "-n", "scale-many", "-c", str(conf))
    programs: list[subprocess.Popen[bytes]] = []
    lines = []
    try:
        before = timed([*tool.cmd, "exec", "scale-many", "--", "true"], runs)
        mine = ours()
        rss_before = sum(rss_kib(p) for p in mine)
        start = time.perf_counter()
        for _ in range(m):
            programs.append(subprocess.Popen(
                [*tool.cmd, "exec", "scale-many", "--", "sleep", "600"],
                stdin=subprocess.DEVNULL))
        attached = 0
        deadline = time.monotonic() + 60
        while attached < m and time.monotonic() < deadline:
            line = tool("ls").stdout.splitlines()
            row = next(x for x in line if x.startswith("scale-many")).split()
            attached = int(row[3])
            time.sleep(0.2)
        joined = time.perf_counter() - start
        after_procs = ours()
        rss_after = sum(rss_kib(p) for p in after_procs)
        left = [t for p, t in after_procs.items() if p not in mine]
        during = timed([*tool.cmd, "exec", "scale-many", "--", "true"], runs)
        refused = tool("down", "scale-many", check=False)
        lines += [
            f"{m} programs joined in {joined:.1f} s; ls shows {attached} attached",
            f"wg-wrap exec NAME -- true, none attached: {ms(before)}",
            f"wg-wrap exec NAME -- true, {m} attached:  {ms(during)}",
            f"ratio (medians): {statistics.median(during) / statistics.median(before):.2f} "
            "(goal <= 1.5)",
            f"our processes: {len(mine)} before, {len(after_procs)} with {m} attached "
            f"({len(left)} new: {left[:3]}); RSS {rss_before / 1024:.1f} -> "
            f"{rss_after / 1024:.1f} MiB, {(rss_after - rss_before) / m:.1f} KiB per program",
            f"down refuses: exit {refused.returncode}: {refused.stderr.splitlines()[0]}",
        ]
        forced = tool("down", "--force", "scale-many", check=False)
        lines.append(f"down --force: exit {forced.returncode}: {forced.stdout.strip()}")
    finally:
        for p in programs:
            p.kill()
        for p in programs:
            p.wait()
        tool("down", "--force", "scale-many", check=False)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    tool = Tool(args.python)
    with tempfile.TemporaryDirectory() as tmp:
        lines = part1(tool, Path(tmp), args.profiles, args.runs)
        lines += part2(tool, Path(tmp), args.programs, args.runs)
    print(f"interpreter: {args.python}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
