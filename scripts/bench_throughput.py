#!/usr/bin/env python3
"""Throughput through the tunnel, against plain loopback, side by side.

A wg-wrap server (UDP on 127.0.0.1, a TCP sink inside its namespace) and a
wg-wrap client (TCP sender inside its namespace): every byte is encrypted by
one wireguard-go, crosses the host's loopback through the FDBind host sockets
(batched, with UDP GSO/GRO), and is decrypted by the other.  The baseline is
the same sender and sink over the host's loopback, run in the same
invocation, alternating with the tunnel.

    python scripts/bench_throughput.py [--seconds 3] [--rounds 3]

Run it as an unprivileged user with the interpreter wg-wrap is installed in.
Prints Mbit/s for each round, the medians and the ratio tunnel/loopback.
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


def write_server_config(directory: Path, s: bytes, c: bytes) -> Path:
    """No ListenPort: the server's host socket gets a free port and keeps it."""
    server = directory / "bench-server.conf"
    server.write_text(
        f"[Interface]\nPrivateKey = {keys.encode(s)}\nAddress = 10.251.0.1/24\n\n"
        f"[Peer]\nPublicKey = {keys.encode(keys.public_key(c))}\n"
        "AllowedIPs = 10.251.0.2/32\n"
    )
    server.chmod(0o600)
    return server


def write_client_config(directory: Path, s: bytes, c: bytes, port: int) -> Path:
    client = directory / "bench-client.conf"
    client.write_text(
        f"[Interface]\nPrivateKey = {keys.encode(c)}\nAddress = 10.251.0.2/24\n\n"
        f"[Peer]\nPublicKey = {keys.encode(keys.public_key(s))}\n"
        f"Endpoint = 127.0.0.1:{port}\nAllowedIPs = 10.251.0.0/24\n"
    )
    client.chmod(0o600)
    return client


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    wg_wrap = [python, "-m", "wg_wrap"]
    with tempfile.TemporaryDirectory() as tmp:
        s, c = keys.generate_private_key(), keys.generate_private_key()
        server_conf = write_server_config(Path(tmp), s, c)
        name = f"bench-{os.getpid()}"
        subprocess.run([*wg_wrap, "up", "--no-wait", "-n", name, "-c", str(server_conf),
                        "--listen-address", "127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        status = subprocess.run([*wg_wrap, "status", "--json", name], check=True,
                                capture_output=True, text=True).stdout
        client_conf = write_client_config(Path(tmp), s, c, json.loads(status)[0]["listen_port"])
        subprocess.run([*wg_wrap, "up", "-n", f"{name}-c", "-c", str(client_conf)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sinks = [
            start_ready([*wg_wrap, "exec", name, "--", python, "-c", SINK, "0.0.0.0", "5201"]),
            start_ready([python, "-c", SINK, "127.0.0.1", "5202"]),
        ]
        tunnel, loopback = [], []
        try:
            for _ in range(args.rounds):
                tunnel.append(float(subprocess.run(
                    [*wg_wrap, "exec", f"{name}-c", "--", python, "-c", SENDER, "10.251.0.1",
                     "5201", str(args.seconds), BLOCK],
                    check=True, capture_output=True, text=True, timeout=120).stdout))
                loopback.append(float(subprocess.run(
                    [python, "-c", SENDER, "127.0.0.1", "5202", str(args.seconds), BLOCK],
                    check=True, capture_output=True, text=True, timeout=120).stdout))
                time.sleep(0.2)
        finally:
            for sink in sinks:
                sink.terminate()  # the sink itself: wg-wrap exec became it
                sink.wait(timeout=10)
            for profile in (name, f"{name}-c"):
                subprocess.run([*wg_wrap, "down", "--force", profile], check=False,
                               stdout=subprocess.DEVNULL)
    print(f"interpreter: {python}, {args.rounds} rounds of {args.seconds:g} s, alternating")
    print("tunnel   (wg-wrap client -> wg-wrap server), Mbit/s:",
          " ".join(f"{x:.0f}" for x in tunnel))
    print("loopback (same sender and sink, no tunnel),   Mbit/s:",
          " ".join(f"{x:.0f}" for x in loopback))
    t, b = statistics.median(tunnel), statistics.median(loopback)
    print(f"median: tunnel {t:.0f} Mbit/s, loopback {b:.0f} Mbit/s, ratio {t / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
