"""The test NAT-PMP gateway (tests/natpmp_gateway.py) against an independent
client: Debian's natpmpc (libnatpmp, miniupnp's own).

natpmpc always sends to port 5351, which the host may be using: each test
gets a network namespace of its own (``unshare --user --map-root-user
--net``, so it runs as any user), where the gateway listens on 127.0.0.1 and
natpmpc is run with ``nsenter``. Nothing reaches the host's network.
"""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GATEWAY = Path(__file__).with_name("natpmp_gateway.py")
RESULT_MESSAGES = {  # natpmpc's words (libnatpmp's strnatpmperr) and return value per code
    1: ("unsupported nat-pmp version error from server", -14),
    2: ("not authorized", -51),
    3: ("network failure", -52),
    4: ("nat-pmp server out of resources", -53),
    5: ("unsupported nat-pmp opcode error from server", -15),
}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: `apt-get install {package}` (.ci/run installs it)",
                    pytrace=False)
    return path


@dataclass(frozen=True)
class Namespace:
    """A user and network namespace held by a sleeping process."""

    holder: int

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", "--preserve-credentials", "--user", "--net",
                "--target", str(self.holder), "--", *argv]


@pytest.fixture
def netns() -> Iterator[Namespace]:
    need("natpmpc", "natpmpc")
    need("unshare", "util-linux")
    need("nsenter", "util-linux")
    need("ip", "iproute2")
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--net", "--",
         "sh", "-c", "ip link set lo up && echo up && exec sleep 300"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()  # ends with the shell if it fails
        assert line == "up\n", f"the namespace did not come up: {line!r}"
        yield Namespace(holder.pid)
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


@dataclass(frozen=True)
class Request:
    """One line of the gateway's log, split at "->" into asked and answered."""

    asked: dict[str, str]
    answered: dict[str, str]  # empty: no answer

    @staticmethod
    def parse(line: str) -> Request:
        assert line.startswith("request "), line
        asked, _, answered = line.removeprefix("request ").partition(" -> ")

        def fields(part: str) -> dict[str, str]:
            return dict(f.split("=", 1) for f in part.split())

        return Request(fields(asked), {} if answered == "none" else fields(answered))


class Gateway:
    """The gateway running in a namespace; its log lines arrive in a queue."""

    def __init__(self, ns: Namespace, *args: str) -> None:
        self.proc = subprocess.Popen(
            ns.argv(sys.executable, str(GATEWAY), "--listen", "127.0.0.1", "--timeout", "120",
                    *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        assert self.line(10) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the gateway logged nothing in {timeout} s")
        if line is None:
            assert self.proc.stderr is not None
            pytest.fail(f"the gateway ended: {self.proc.stderr.read()}")
        return line

    def requests(self, n: int, timeout: float = 10) -> list[Request]:
        return [Request.parse(self.line(timeout)) for _ in range(n)]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)  # it reads to the end of the pipe
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


StartGateway = Callable[..., Gateway]


@pytest.fixture
def start_gateway(netns: Namespace) -> Iterator[StartGateway]:
    started: list[Gateway] = []

    def start(*args: str) -> Gateway:
        g = Gateway(netns, *args)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@dataclass(frozen=True)
class Natpmpc:
    """What natpmpc printed, read."""

    returncode: int
    output: str

    @property
    def address(self) -> str:
        return self.find(r"Public IP address : (\S+)")[0]

    @property
    def epochs(self) -> list[int]:
        return [int(e) for e in re.findall(r"epoch = (\d+)", self.output)]

    @property
    def mapping(self) -> tuple[int, str, int, int]:
        """(public port, protocol, local port, lifetime); natpmpc spells it "liftime"."""
        public, protocol, local, lifetime = self.find(
            r"Mapped public port (\d+) protocol (UDP|TCP) to local port (\d+) liftime (\d+)")
        return int(public), protocol, int(local), int(lifetime)

    def find(self, pattern: str) -> tuple[str, ...]:
        m = re.search(pattern, self.output)
        assert m, f"no {pattern!r} in natpmpc's output:\n{self.output}"
        return m.groups()


def natpmpc(ns: Namespace, *args: str) -> Natpmpc:
    done = subprocess.run(ns.argv("natpmpc", "-g", "127.0.0.1", *args),
                          capture_output=True, text=True, timeout=30)
    return Natpmpc(done.returncode, done.stdout + done.stderr)


def test_protonvpn_echoes_internal_port_zero_and_grants_its_port(
        netns: Namespace, start_gateway: StartGateway) -> None:
    g = start_gateway("--behaviour", "protonvpn", "--external-port", "45678")
    for protocol in ("udp", "tcp"):
        # ProtonVPN's instructions: natpmpc -a 1 0 udp 60 -g 10.2.0.1
        out = natpmpc(netns, "-a", "1", "0", protocol, "60")
        assert out.returncode == 0, out.output
        assert out.mapping == (45678, protocol.upper(), 0, 60)
        assert out.address == "198.51.100.7"
        address, mapping = g.requests(2)
        assert address.asked["op"] == "address" and address.answered["result"] == "0"
        assert mapping.asked == {**mapping.asked, "op": protocol, "internal": "0", "suggested": "1",
                                 "lifetime": "60"}
        assert mapping.answered["external"] == "45678"


def test_normal_grants_the_suggested_port_or_a_fixed_one(
        netns: Namespace, start_gateway: StartGateway) -> None:
    g = start_gateway("--behaviour", "normal")
    out = natpmpc(netns, "-a", "5000", "6881", "tcp", "7200")
    assert out.mapping == (5000, "TCP", 6881, 7200)
    # ProtonVPN's suggestion of 1 is no port a gateway grants: one of its own.
    out = natpmpc(netns, "-a", "1", "6882", "tcp", "7200")
    assert out.mapping == (40000, "TCP", 6882, 7200)
    g.stop()
    start_gateway("--behaviour", "normal", "--external-port", "50000", "--max-lifetime", "120")
    out = natpmpc(netns, "-a", "5000", "6881", "udp", "7200")
    assert out.mapping == (50000, "UDP", 6881, 120)


def test_a_lifetime_of_zero_deletes(netns: Namespace, start_gateway: StartGateway) -> None:
    g = start_gateway("--behaviour", "normal")
    assert natpmpc(netns, "-a", "5000", "6881", "udp", "60").mapping == (5000, "UDP", 6881, 60)
    assert natpmpc(netns, "-a", "5001", "6882", "udp", "60").mapping == (5001, "UDP", 6882, 60)
    # natpmpc's help: "To remove all mappings for your machine, use 0 as
    # private port and lifetime."
    assert natpmpc(netns, "-a", "0", "0", "udp", "0").mapping == (0, "UDP", 0, 0)
    *_, deletion = g.requests(6)
    assert deletion.answered["deleted"] == "2"


def test_move_grants_the_next_port_on_each_renewal(
        netns: Namespace, start_gateway: StartGateway) -> None:
    start_gateway("--behaviour", "move")
    ports = [natpmpc(netns, "-a", "5000", "6881", "udp", "60").mapping[0] for _ in range(3)]
    assert ports == [5000, 5001, 5002]


def test_epoch_reset_steps_back_and_forgets(
        netns: Namespace, start_gateway: StartGateway) -> None:
    start_gateway("--behaviour", "epoch-reset", "--epoch-start", "1000", "--reset-after", "2")
    # A suggestion of 0 takes a port from the pool: the same one while the
    # mapping is held, the next one once it is forgotten.
    first = natpmpc(netns, "-a", "0", "6881", "udp", "60")  # requests 1 and 2
    second = natpmpc(netns, "-a", "0", "6881", "udp", "60")  # the reboot comes before 3
    assert min(first.epochs) >= 1000, first.output
    assert max(second.epochs) < 10, second.output
    assert (first.mapping[0], second.mapping[0]) == (40000, 40001)


def test_silent_never_answers_and_natpmpc_retries(
        netns: Namespace, start_gateway: StartGateway) -> None:
    g = start_gateway("--behaviour", "silent")
    client = subprocess.Popen(netns.argv("natpmpc", "-g", "127.0.0.1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        requests = g.requests(3)
    finally:
        client.kill()
        client.wait(timeout=10)
    assert all(r.answered == {} and r.asked["op"] == "address" for r in requests)
    times = [float(r.asked["t"]) for r in requests]
    # libnatpmp waits 250 ms, then 500 ms (RFC 6886 §3.1); 10 ms for the
    # scheduler's slack.
    assert times[1] - times[0] >= 0.24 and times[2] - times[1] >= 0.49, times


@pytest.mark.parametrize("code", sorted(RESULT_MESSAGES))
def test_result_answers_with_its_code(
        netns: Namespace, start_gateway: StartGateway, code: int) -> None:
    g = start_gateway("--behaviour", "result", "--result-code", str(code))
    out = natpmpc(netns, "-a", "1", "0", "udp", "60")
    message, value = RESULT_MESSAGES[code]
    assert out.returncode != 0
    assert f"failed : {message}" in out.output, out.output
    assert f"readnatpmpresponseorretry returned {value} (FAILED)" in out.output, out.output
    (request,) = g.requests(1)
    assert request.answered == {"result": str(code)}


def test_the_gateway_exits_by_itself(netns: Namespace) -> None:
    started = time.monotonic()
    done = subprocess.run(netns.argv(sys.executable, str(GATEWAY), "--listen", "127.0.0.1",
                                     "--timeout", "0.5"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "ready\n", done
    assert time.monotonic() - started < 20
