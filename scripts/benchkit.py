"""Programs the benchmarks run, inside profiles and on the host (each passed
as `python -c PROGRAM ARGS...`), so that every benchmark measures with the
same sink and sender, and starts them alike."""

from __future__ import annotations

import subprocess
import sys

# A TCP sink: SINK HOST PORT. Says "ready", then for each connection reads to
# the end and answers with the number of bytes it got.
SINK = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
buf = bytearray(1 << 20)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    total = 0
    while n := conn.recv_into(buf):
        total += n
    conn.sendall(str(total).encode())
    conn.close()
"""

# A TCP sender: SENDER HOST PORT SECONDS BLOCK. Writes blocks of BLOCK bytes
# for SECONDS, half-closes, and prints the Mbit/s the sink counted.
SENDER = r"""
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
block = b"\0" * int(sys.argv[4])
c = socket.create_connection((host, port), timeout=30)
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    c.sendall(block)
c.shutdown(socket.SHUT_WR)
received = int(c.recv(64))
print(f"{received * 8 / (time.perf_counter() - start) / 1e6:.0f}")
"""


def start_ready(argv: list[str]) -> subprocess.Popen[str]:
    """Start a program that prints "ready" once it listens (SINK does); exit
    the benchmark if it does not."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        sys.exit(f"did not start: {argv[:6]}")
    return proc
