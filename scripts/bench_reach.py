#!/usr/bin/env python3
"""Published ports and the SOCKS5 front, each against its baseline, side by side.

Two wg-wrap profiles on this machine: a server (UDP on 127.0.0.1, a download
server inside its namespace) and a client that publishes a port and serves a
SOCKS5 proxy.  In the same invocation, alternating round by round:

- bulk TCP from the host into a sink inside the client through a published
  port, against the same sender and sink both inside the client's namespace,
  over its own loopback;
- a download by curl on the host through the SOCKS5 front, against the same
  download by curl wrapped in the client profile (both through the tunnel).

Then 200 concurrent connections through the proxy (all open at once, then
each fetches 64 KiB), and the sidecar's memory with and without the proxy
(a third profile, without, downloads as much through its tunnel, wrapped).

    python scripts/bench_reach.py [--seconds 3] [--rounds 5] [--size-mib 256]

Run it as an unprivileged user with the interpreter wg-wrap is installed in,
and curl on the PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchkit import SENDER, SINK, start_ready

from wg_wrap import keys

NET = "10.252.0"
SINK_PORT, HTTP_PORT = 5201, 8080
BLOCK = str(1 << 20)  # bytes per write of the sender

# GET /bytes/N answers N zero bytes; one thread per connection.
DOWNLOADS = r"""
import socket, threading
block = memoryview(b"\0" * (1 << 20))
def serve(conn):
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        path = request.split(b" ", 2)[1].decode()
        size = int(path.rsplit("/", 1)[1]) if path.startswith("/bytes/") else 0
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        while size > 0:
            n = min(size, len(block))
            conn.sendall(block[:n])
            size -= n
srv = socket.create_server(("::", 8080), family=socket.AF_INET6, dualstack_ipv6=True, backlog=512)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def write_configs(directory: Path, port: int) -> tuple[Path, Path, Path]:
    server, client, plain = (keys.generate_private_key() for _ in range(3))
    paths = [directory / f"bench-{n}.conf" for n in ("server", "client", "plain")]
    peers = "".join(
        f"\n[Peer]\nPublicKey = {keys.encode(keys.public_key(k))}\nAllowedIPs = {NET}.{i}/32\n"
        for i, k in ((2, client), (3, plain))
    )
    paths[0].write_text(
        f"[Interface]\nPrivateKey = {keys.encode(server)}\nAddress = {NET}.1/24\n"
        f"ListenPort = {port}\n{peers}"
    )
    for path, key, i in ((paths[1], client, 2), (paths[2], plain, 3)):
        path.write_text(
            f"[Interface]\nPrivateKey = {keys.encode(key)}\nAddress = {NET}.{i}/24\n\n"
            f"[Peer]\nPublicKey = {keys.encode(keys.public_key(server))}\n"
            f"Endpoint = 127.0.0.1:{port}\nAllowedIPs = {NET}.0/24\n"
        )
    for path in paths:
        path.chmod(0o600)
    return paths[0], paths[1], paths[2]


def memory(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found["VmRSS"], found["VmHWM"]


def socks_connect(proxy: tuple[str, int], host: str, port: int) -> socket.socket:
    s = socket.create_connection(proxy, timeout=60)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
    reply = s.recv(10)
    if len(reply) < 2 or reply[1] != 0:
        raise ConnectionError(f"SOCKS5 reply {reply!r}")
    return s


def concurrent(proxy: tuple[str, int], n: int) -> tuple[int, float]:
    """n connections through the proxy, all open at once, then each fetches
    64 KiB; returns how many completed and the seconds it took."""
    start = time.perf_counter()
    conns = [socks_connect(proxy, f"{NET}.1", HTTP_PORT) for _ in range(n)]
    done: list[int] = []

    def fetch(s: socket.socket) -> None:
        with s:
            s.sendall(b"GET /bytes/65536 HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(1 << 16):
                data += chunk
            if data.endswith(b"\0" * 65536):
                done.append(1)

    threads = [threading.Thread(target=fetch, args=(s,)) for s in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return len(done), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per bulk TCP transfer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=256, help="per download")
    args = parser.parse_args()
    python = sys.executable
    wg_wrap = [python, "-m", "wg_wrap"]
    name = f"bench{os.getpid()}"
    server_p, client_p, plain_p = f"{name}-s", f"{name}-c", f"{name}-p"
    url = f"http://{NET}.1:{HTTP_PORT}/bytes/{args.size_mib << 20}"
    curl = ["curl", "-sS", "--max-time", "300", "-o", "/dev/null", "-w", "%{speed_download}"]
    services: list[subprocess.Popen[str]] = []
    results: dict[str, list[float]] = {k: [] for k in ("published", "loopback", "socks", "wrapped")}

    def run(*argv: str) -> str:
        return subprocess.run(argv, check=True, capture_output=True, text=True,
                              timeout=600).stdout.strip()

    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            udp_port = s.getsockname()[1]
        server_conf, client_conf, plain_conf = write_configs(Path(tmp), udp_port)
        try:
            run(*wg_wrap, "up", "--no-wait", "-n", server_p, "-c", str(server_conf),
                "--listen-address", "127.0.0.1")
            services.append(start_ready([*wg_wrap, "exec", server_p, "--", python, "-c",
                                           DOWNLOADS]))
            run(*wg_wrap, "up", "-n", client_p, "-c", str(client_conf),
                "-p", f"127.0.0.1:0:{SINK_PORT}", "--socks", "127.0.0.1:0")
            run(*wg_wrap, "up", "-n", plain_p, "-c", str(plain_conf))
            status = {p["name"]: p for p in json.loads(run(*wg_wrap, "status", "--json"))}
            client, plain = status[client_p], status[plain_p]
            published = next(p for p in client["published"] if p["port"] == SINK_PORT)
            host_port = int(published["host"].rsplit(":", 1)[1])
            socks_host, socks_port = client["socks"]["address"].rsplit(":", 1)
            sidecars = {"with": client["sidecar_pid"], "without": plain["sidecar_pid"]}
            rss_start = {k: memory(pid) for k, pid in sidecars.items()}
            services.append(start_ready([*wg_wrap, "exec", client_p, "--", python, "-c",
                                           SINK, "127.0.0.1", str(SINK_PORT)]))
            for i in range(args.rounds):
                pairs = [
                    ("published", [python, "-c", SENDER, "127.0.0.1", str(host_port),
                                   str(args.seconds), BLOCK], 1.0),
                    ("loopback", [*wg_wrap, "exec", client_p, "--", python, "-c", SENDER,
                                  "127.0.0.1", str(SINK_PORT), str(args.seconds), BLOCK], 1.0),
                    ("socks", [*curl, "--socks5-hostname", f"{socks_host}:{socks_port}", url],
                     8e-6),
                    ("wrapped", [*wg_wrap, "exec", client_p, "--", *curl, url], 8e-6),
                ]
                if i % 2:  # every other round, the baselines go first
                    pairs = [pairs[1], pairs[0], pairs[3], pairs[2]]
                for key, argv, to_mbit in pairs:
                    results[key].append(float(run(*argv)) * to_mbit)
                for _ in range(2):  # the tunnel traffic of "socks" and "wrapped", no proxy
                    run(*wg_wrap, "exec", plain_p, "--", *curl, url)
            completed, took = concurrent((socks_host, int(socks_port)), 200)
            rss_end = {k: memory(pid) for k, pid in sidecars.items()}
        finally:
            for proc in services:
                proc.terminate()  # wg-wrap exec relays it to the service inside
                proc.wait(timeout=10)
            for profile in (client_p, plain_p, server_p):
                subprocess.run([*wg_wrap, "down", "--force", profile], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    print(f"interpreter: {python}, {args.rounds} rounds, alternating; bulk TCP "
          f"{args.seconds:g} s, downloads {args.size_mib} MiB")
    for key, label in (
        ("published", "host -> published port -> sink inside      "),
        ("loopback", "sender inside -> sink inside (its loopback)"),
        ("socks", "curl on the host through the SOCKS5 front  "),
        ("wrapped", "curl wrapped in the same profile           "),
    ):
        print(f"{label} Mbit/s: " + " ".join(f"{x:.0f}" for x in results[key]))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"median: published {med['published']:.0f}, loopback {med['loopback']:.0f} Mbit/s, "
          f"ratio {med['published'] / med['loopback']:.2f} (goal >= 0.5)")
    print(f"median: socks5 {med['socks']:.0f}, wrapped {med['wrapped']:.0f} Mbit/s, "
          f"ratio {med['socks'] / med['wrapped']:.2f} (goal >= 0.8)")
    print(f"200 concurrent SOCKS5 connections, 64 KiB each: {completed} completed in {took:.2f} s")
    for when, rss in (("after start", rss_start), ("after the runs", rss_end)):
        print(f"sidecar memory {when}: with the proxy RSS {rss['with'][0] / 1024:.1f} MiB "
              f"(peak {rss['with'][1] / 1024:.1f}), without RSS {rss['without'][0] / 1024:.1f} "
              f"MiB (peak {rss['without'][1] / 1024:.1f})")
    return 0 if completed == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
