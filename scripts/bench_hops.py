#!/usr/bin/env python3
"""TCP bulk through two hops (`--via`) against one hop, side by side.

Two wg-wrap servers: the first `up` on the host's loopback, the second `up`
inside the first one's profile (so reachable only through the first
tunnel). Two clients: `one` to the first server, `two` to the second
`--via one`. A sink runs in each server's namespace; the same sender runs
in `one` (one hop) and in `two` (two hops: every byte encrypted and
decrypted twice), alternating, in the same invocation.

    python scripts/bench_hops.py [--seconds 3] [--rounds 3]

Run it as an unprivileged user with the interpreter wg-wrap is installed in.
Prints Mbit/s for each round, the medians and the ratio two hops/one hop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import SENDER, SINK, start_ready

from wg_wrap import keys

BLOCK = str(1 << 16)  # bytes per write of the sender


def config(path: Path, own: bytes, peer: bytes, address: str, allowed: str,
           endpoint: str | None = None) -> Path:
    path.write_text(
        f"[Interface]\nPrivateKey = {keys.encode(own)}\nAddress = {address}\n\n"
        f"[Peer]\nPublicKey = {keys.encode(keys.public_key(peer))}\nAllowedIPs = {allowed}\n"
        + (f"Endpoint = {endpoint}\n" if endpoint else "")
    )
    path.chmod(0o600)
    return path


def listen_port(argv: list[str]) -> int:
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out)[0]["listen_port"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    wg_wrap = [python, "-m", "wg_wrap"]
    tag = f"hops-{os.getpid()}"
    first, second, one, two = (f"{tag}-{n}" for n in ("s1", "s2", "one", "two"))
    in_first = [*wg_wrap, "exec", first, "--"]
    in_second = [*in_first, *wg_wrap, "exec", second, "--"]
    sinks: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        s1, s2, c1, c2 = (keys.generate_private_key() for _ in range(4))
        try:
            subprocess.run([*wg_wrap, "up", "--no-wait", "-n", first, "-c",
                            str(config(d / "s1.conf", s1, c1, "10.252.0.1/24", "10.252.0.2/32")),
                            "--listen-address", "127.0.0.1"], check=True,
                           stdout=subprocess.DEVNULL)
            port1 = listen_port([*wg_wrap, "status", "--json", first])
            # The second server inside the first (wg-wrap nested in wg-wrap).
            subprocess.run([*in_first, *wg_wrap, "up", "--no-wait", "-n", second, "-c",
                            str(config(d / "s2.conf", s2, c2, "10.253.0.1/24", "10.253.0.2/32")),
                            "--listen-address", "10.252.0.1"], check=True,
                           stdout=subprocess.DEVNULL)
            port2 = listen_port([*in_first, *wg_wrap, "status", "--json", second])
            subprocess.run([*wg_wrap, "up", "-n", one, "-c",
                            str(config(d / "one.conf", c1, s1, "10.252.0.2/24", "10.252.0.0/24",
                                       f"127.0.0.1:{port1}"))],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([*wg_wrap, "up", "-n", two, "--via", one, "-c",
                            str(config(d / "two.conf", c2, s2, "10.253.0.2/24", "10.253.0.0/24",
                                       f"10.252.0.1:{port2}"))],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            sinks.append(start_ready([*in_first, python, "-c", SINK, "10.252.0.1", "5201"]))
            sinks.append(start_ready([*in_second, python, "-c", SINK, "10.253.0.1", "5202"]))
            hop1, hop2 = [], []
            for _ in range(args.rounds):
                hop1.append(float(subprocess.run(
                    [*wg_wrap, "exec", one, "--", python, "-c", SENDER, "10.252.0.1", "5201",
                     str(args.seconds), BLOCK],
                    check=True, capture_output=True, text=True, timeout=120).stdout))
                hop2.append(float(subprocess.run(
                    [*wg_wrap, "exec", two, "--", python, "-c", SENDER, "10.253.0.1", "5202",
                     str(args.seconds), BLOCK],
                    check=True, capture_output=True, text=True, timeout=120).stdout))
                time.sleep(0.2)
        finally:
            for sink in sinks:
                sink.terminate()
                sink.wait(timeout=10)
            for profile in (two, one):
                subprocess.run([*wg_wrap, "down", "--force", profile], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([*in_first, *wg_wrap, "down", "--force", second], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run([*wg_wrap, "down", "--force", first], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"interpreter: {python}, {args.rounds} rounds of {args.seconds:g} s, alternating")
    print("one hop  (host -> s1),        Mbit/s:", " ".join(f"{x:.0f}" for x in hop1))
    print("two hops (host -> s1 -> s2),  Mbit/s:", " ".join(f"{x:.0f}" for x in hop2))
    a, b = statistics.median(hop1), statistics.median(hop2)
    print(f"median: one hop {a:.0f} Mbit/s, two hops {b:.0f} Mbit/s, ratio {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
