"""A NAT-PMP gateway (RFC 6886) for tests: it answers, it does not forward.

Run it where the client's requests arrive (on loopback, or inside a test's
network namespace on the tunnel address of a WireGuard test peer)::

    python tests/natpmp_gateway.py --listen 10.8.0.1 --behaviour protonvpn

It prints ``ready`` once bound, then one line per request it receives, so a
test can wait for it and count renewals::

    request n=1 t=0.412 from=10.8.0.2:41000 op=udp internal=0 suggested=1 lifetime=60 \
        -> result=0 internal=0 external=40000 lifetime=60 epoch=0

(one line, split here; ``t`` is when it arrived, in seconds since ``ready``;
``-> none`` when it does not answer.)

Behaviours (``--behaviour``):

- ``normal``: grants the suggested port (``--external-port`` instead, when
  given; a port from 40000 up for a suggestion below 1024, which miniupnpd's
  default rules refuse) and echoes the internal port, as RFC gateways do;
- ``protonvpn``: grants ``--external-port`` (default 40000) whatever was
  suggested and echoes internal port 0, as ProtonVPN's gateways do;
- ``move``: like normal, but each renewal gets the next port up;
- ``epoch-reset``: like normal, but before request ``--reset-after`` + 1 the
  gateway "reboots": its mappings are forgotten and its epoch starts again
  from 0 (it starts from ``--epoch-start``, so the step back shows at once);
- ``silent``: never answers (still logs);
- ``result``: answers every request with ``--result-code``.

Granted lifetimes are capped by ``--max-lifetime``. It exits after
``--timeout`` seconds in any case. Standard library only.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time
from dataclasses import dataclass

BEHAVIOURS = ("normal", "protonvpn", "move", "epoch-reset", "silent", "result")
OPS = {0: "address", 1: "udp", 2: "tcp"}
FIRST_POOL_PORT = 40000


@dataclass
class Mapping:
    external: int
    expires: float


class Gateway:
    """The state of one gateway: its epoch, its mappings, its behaviour."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.booted = time.monotonic()
        self.epoch_start: int = args.epoch_start
        self.mappings: dict[tuple[str, int, int], Mapping] = {}
        self.pool = FIRST_POOL_PORT
        self.requests = 0

    def epoch(self) -> int:
        return self.epoch_start + int(time.monotonic() - self.booted)

    def handle(self, data: bytes, client: str) -> tuple[bytes | None, str]:
        """The answer to one datagram (None: none) and the log line's tail."""
        self.requests += 1
        if self.args.behaviour == "epoch-reset" and self.requests == self.args.reset_after + 1:
            self.booted, self.epoch_start = time.monotonic(), 0
            self.mappings.clear()
        if len(data) < 2:
            return None, f"malformed bytes={data.hex()}"
        version, op = data[0], data[1]
        if op not in OPS or (op != 0 and len(data) < 12):
            described = f"op={op} bytes={data.hex()}"
            return self.refusal(op, 5), described + " -> result=5"
        internal, suggested, lifetime = (0, 0, 0) if op == 0 else struct.unpack("!HHI", data[4:12])
        described = f"op={OPS[op]}"
        if op != 0:
            described += f" internal={internal} suggested={suggested} lifetime={lifetime}"
        if version != 0:
            return self.refusal(op, 1), f"version={version} {described} -> result=1"
        if self.args.behaviour == "silent":
            return None, described + " -> none"
        if self.args.behaviour == "result":
            code = self.args.result_code
            return self.refusal(op, code), f"{described} -> result={code}"
        epoch = self.epoch()
        if op == 0:
            address = ipaddress.IPv4Address(self.args.external_address)
            answer = struct.pack("!BBHI4s", 0, 128, 0, epoch, address.packed)
            return answer, f"{described} -> result=0 address={address} epoch={epoch}"
        if lifetime == 0:
            deleted = self.delete(client, op, internal)
            answer = struct.pack("!BBHIHHI", 0, 128 + op, 0, epoch, internal, 0, 0)
            return answer, (f"{described} -> result=0 internal={internal} external=0 lifetime=0 "
                            f"epoch={epoch} deleted={deleted}")
        external, granted = self.map(client, op, internal, suggested, lifetime)
        answer = struct.pack("!BBHIHHI", 0, 128 + op, 0, epoch, internal, external, granted)
        return answer, (f"{described} -> result=0 internal={internal} external={external} "
                        f"lifetime={granted} epoch={epoch}")

    def refusal(self, op: int, code: int) -> bytes:
        body = bytes(4) if op == 0 else bytes(8)
        return struct.pack("!BBHI", 0, (128 + op) & 0xFF, code, self.epoch()) + body

    def delete(self, client: str, op: int, internal: int) -> int:
        """Deletes the client's mapping of internal, or with internal port 0
        all its mappings of op (§3.4); returns how many there were."""
        keys = [k for k in self.mappings if k[:2] == (client, op) and internal in (0, k[2])]
        for key in keys:
            del self.mappings[key]
        return len(keys)

    def map(self, client: str, op: int, internal: int, suggested: int,
            lifetime: int) -> tuple[int, int]:
        """Creates or renews a mapping: (external port, lifetime) granted."""
        now = time.monotonic()
        if self.args.max_lifetime is not None:
            lifetime = min(lifetime, self.args.max_lifetime)
        key = (client, op, internal)
        held = self.mappings.get(key)
        if held is not None and held.expires <= now:
            held = None
        if held is not None:
            external = held.external + 1 if self.args.behaviour == "move" else held.external
        elif self.args.behaviour == "protonvpn":
            external = self.args.external_port or FIRST_POOL_PORT
        elif self.args.external_port:
            external = self.args.external_port
        elif suggested >= 1024:
            external = suggested
        else:
            external, self.pool = self.pool, self.pool + 1
        self.mappings[key] = Mapping(external, now + lifetime)
        return external, lifetime


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A NAT-PMP gateway for tests.")
    parser.add_argument("--listen", required=True, help="IPv4 address to listen on")
    parser.add_argument("--port", type=int, default=5351)
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="normal")
    parser.add_argument("--external-port", type=int, default=0,
                        help="the port granted (normal, protonvpn)")
    parser.add_argument("--external-address", default="198.51.100.7",
                        help="the external address announced")
    parser.add_argument("--max-lifetime", type=int, help="cap on granted lifetimes (seconds)")
    parser.add_argument("--epoch-start", type=int, default=0,
                        help="the epoch (seconds) at start")
    parser.add_argument("--reset-after", type=int, default=3,
                        help="epoch-reset: requests answered before the reboot")
    parser.add_argument("--result-code", type=int, default=2, help="result: the code answered")
    parser.add_argument("--timeout", type=float, default=300.0, help="exit after this many seconds")
    args = parser.parse_args(argv)
    if args.behaviour == "result" and not 0 <= args.result_code <= 0xFFFF:
        parser.error("--result-code must fit in 16 bits")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gateway = Gateway(args)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((args.listen, args.port))
        print("ready", flush=True)
        start = time.monotonic()
        deadline = start + args.timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (host, port) = sock.recvfrom(1024)
            except TimeoutError:
                break
            answer, described = gateway.handle(data, host)
            print(f"request n={gateway.requests} t={time.monotonic() - start:.3f} "
                  f"from={host}:{port} {described}", flush=True)
            if answer is not None:
                sock.sendto(answer, (host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
