#!/usr/bin/env python3
"""Benchmark the join path: `wg-wrap exec NAME -- true` vs `python -c pass`.

Both run with the same interpreter, interleaved in one invocation (machines
are noisy: a baseline measured side by side is the only fair one).  A
persistent profile is started for the duration (`up --no-wait`: no peer is
needed to join a namespace) and stopped at the end.  For scale, it also times
a cold `wg-wrap run -c FILE -- true` (namespaces, sidecar, network setup and
teardown each time; a tenth as many runs).

    python scripts/bench_join.py [--runs 200]

Prints medians, the ratio (goal: <= 2.0) and per-run percentiles.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wg_wrap import keys  # the installed package, from the interpreter running this


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter with wg_wrap installed (default: this one)")
    args = parser.parse_args()
    python = args.python
    env = dict(os.environ)
    name = f"bench-{os.getpid()}"
    wg_wrap = [python, "-m", "wg_wrap"]
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "bench.conf"
        me, peer = keys.generate_private_key(), keys.generate_private_key()
        conf.write_text(
            f"[Interface]\nPrivateKey = {keys.encode(me)}\nAddress = 10.250.0.2/32\n\n"
            f"[Peer]\nPublicKey = {keys.encode(keys.public_key(peer))}\n"
            "Endpoint = 127.0.0.1:9\nAllowedIPs = 10.250.0.0/24\n"
        )
        conf.chmod(0o600)
        subprocess.run([*wg_wrap, "up", "--no-wait", "-n", name, "-c", str(conf)],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        try:
            script = Path(python).parent / "wg-wrap"
            if not script.exists():
                sys.exit(f"{script} not found: install wg-wrap into that interpreter's prefix")
            join = [str(script), "exec", name, "--", "true"]
            join_m = [*wg_wrap, "exec", name, "--", "true"]
            base = [python, "-c", "pass"]
            for _ in range(5):  # warm the page cache
                timed(join, env)
                timed(join_m, env)
                timed(base, env)
            cold = [str(script), "run", "-n", f"{name}-cold", "-c", str(conf), "--", "true"]
            joins, joins_m, bases, colds = [], [], [], []
            for i in range(args.runs):
                joins.append(timed(join, env))
                joins_m.append(timed(join_m, env))
                bases.append(timed(base, env))
                if i % 10 == 0:
                    colds.append(timed(cold, env))
        finally:
            subprocess.run([*wg_wrap, "down", "--force", name], env=env, check=True,
                           stdout=subprocess.DEVNULL)
    b = statistics.median(bases)
    print(f"interpreter: {python} ({sys.version.split()[0]}), runs: {args.runs} each, interleaved")
    for label, xs in (
        ("python -c pass", bases),
        ("wg-wrap exec NAME -- true", joins),
        ("python -m wg_wrap exec NAME -- true", joins_m),
        ("wg-wrap run -c FILE -- true (cold)", colds),
    ):
        deciles = statistics.quantiles(xs, n=10)
        print(f"{label:36} median {statistics.median(xs) * 1000:6.1f} ms"
              f"  p10 {deciles[0] * 1000:6.1f}  p90 {deciles[-1] * 1000:6.1f}")
    print(f"ratio wg-wrap exec / python -c pass (medians): {statistics.median(joins) / b:.2f}"
          "  (goal <= 2.0)")
    print(f"ratio python -m wg_wrap exec / python -c pass:  {statistics.median(joins_m) / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
