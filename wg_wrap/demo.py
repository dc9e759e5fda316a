"""``wg-wrap demo``: the whole path on one machine, with no VPN account.

A second wg-wrap acts as the WireGuard server (UDP on 127.0.0.1, an HTTP
service inside its namespace); the client fetches a page through the tunnel.
The server answers with the address it saw the request come from: the
client's tunnel address, which exists nowhere but inside the tunnel.
"""

from __future__ import annotations

import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wg_wrap import keys, runtime
from wg_wrap.errors import SetupError

SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"
# Served by the server's DNS (DNS = its tunnel address in both configs): the
# client finds the page by name, and the name too is asked through the tunnel.
SERVER_NAME = "peer.demo.wg-wrap.test"
HTTP_PORT = 8080
READY_TIMEOUT = 20.0

CLIENT_PROGRAM = f"""
import urllib.request
links = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
print("links:", " ".join(sorted(links)))
body = urllib.request.urlopen("http://{SERVER_NAME}:{HTTP_PORT}/", timeout=10).read().decode()
print("body:", body.strip())
"""


def say(message: str) -> None:
    print(f"wg-wrap demo: {message}", flush=True)


SERVER_PROFILE = "demo-server"


def _write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_server_config(directory: Path, server_key: bytes, client_key: bytes) -> Path:
    """No ListenPort: the server's host socket gets a free port, and keeps it."""
    return _write_private(directory / f"{SERVER_PROFILE}.conf", (
        "[Interface]\n"
        f"PrivateKey = {keys.encode(server_key)}\n"
        f"Address = {SERVER_IP}/24, fd77::1/64\n"
        f"DNS = {SERVER_IP}\n\n"
        "[Peer]\n"
        f"PublicKey = {keys.encode(keys.public_key(client_key))}\n"
        f"AllowedIPs = {CLIENT_IP}/32, fd77::2/128\n"
    ))


def write_client_config(directory: Path, client_key: bytes, server_key: bytes, port: int
                        ) -> Path:
    return _write_private(directory / "demo-client.conf", (
        "[Interface]\n"
        f"PrivateKey = {keys.encode(client_key)}\n"
        f"Address = {CLIENT_IP}/24, fd77::2/64\n"
        f"DNS = {SERVER_IP}\n\n"
        "[Peer]\n"
        f"PublicKey = {keys.encode(keys.public_key(server_key))}\n"
        f"Endpoint = 127.0.0.1:{port}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
    ))


def _server_port() -> int:
    """The port the running server's host socket is bound to (its state)."""
    state = runtime.Profile.at(runtime.base_dir(create=False), SERVER_PROFILE).read_state()
    if state is None or not state.listen_port:
        raise SetupError("the demo server left no state", hint="run `wg-wrap demo -v`")
    return state.listen_port


def _wait_ready(server: subprocess.Popen[str]) -> None:
    assert server.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 0.5)
        if ready:
            line = server.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
    raise SetupError("the demo server did not start", hint="run `wg-wrap demo -v` to see why")


def _wait_ended(names: tuple[str, ...], timeout: float = 5.0) -> None:
    """Until both profiles are gone: an ephemeral sidecar ends (and removes
    its runtime directory) within ~200 ms of its last program."""
    base = runtime.base_dir(create=False)
    deadline = time.monotonic() + timeout
    while any(p.name in names for p in runtime.list_profiles(base)):
        if time.monotonic() > deadline:
            raise SetupError("the demo's profiles did not end", hint="`wg-wrap ls` shows them")
        time.sleep(0.05)


def main(verbose: bool = False) -> int:
    wg_wrap = [sys.executable, "-m", "wg_wrap"]
    extra = ["-v"] if verbose else []
    workdir = Path(tempfile.mkdtemp(prefix="wg-wrap-demo-"))
    server: subprocess.Popen[str] | None = None
    server_log = ""  # what its services printed after "ready"
    try:
        server_key, client_key = keys.generate_private_key(), keys.generate_private_key()
        server_conf = write_server_config(workdir, server_key, client_key)
        say(f"generated keys and the server's config in {workdir}")
        say(f"server: wg-wrap run -c {server_conf.name} --listen-address 127.0.0.1 "
            f"-- python -m wg_wrap.demo_peer   (WireGuard on 127.0.0.1, a free port; "
            f"tunnel address {SERVER_IP}, serving HTTP and DNS for {SERVER_NAME})")
        server = subprocess.Popen(
            [*wg_wrap, "run", *extra, "-c", str(server_conf), "--listen-address", "127.0.0.1",
             "--", sys.executable, "-m", "wg_wrap.demo_peer", "--http", str(HTTP_PORT),
             "--dns", f"{SERVER_NAME}={SERVER_IP}"],
            stdout=subprocess.PIPE, text=True,
        )
        _wait_ready(server)
        port = _server_port()
        client_conf = write_client_config(workdir, client_key, server_key, port)
        say(f"the server listens on 127.0.0.1:{port}; the client's config says so")
        say(f"client: wg-wrap run -c {client_conf.name} -- python -c <fetch "
            f"http://{SERVER_NAME}:{HTTP_PORT}/>   (AllowedIPs 0.0.0.0/0, ::/0 and "
            f"DNS = {SERVER_IP}: everything, names too, goes to the tunnel)")
        client = subprocess.run(
            [*wg_wrap, "run", *extra, "-c", str(client_conf), "--",
             sys.executable, "-c", CLIENT_PROGRAM],
            stdout=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        if server is not None:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout:
                server_log = server.stdout.read()
                server.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)
    _wait_ended((SERVER_PROFILE, "demo-client"))
    say("stopped the server and removed the keys: nothing is left running")
    report = dict(line.split(": ", 1) for line in client.stdout.splitlines() if ": " in line)
    body = report.get("body", "")
    if client.returncode != 0 or f"sees you as {CLIENT_IP}" not in body:
        raise SetupError(
            f"the client did not get its answer through the tunnel (exit status "
            f"{client.returncode})", hint="run `wg-wrap demo -v` to see each step",
        )
    say(f"inside the client, the network interfaces were: {report.get('links', '?')} "
        "(no way out but the tunnel)")
    say(f"the server saw the request come from {CLIENT_IP}, the client's tunnel address, "
        "which exists only inside the tunnel: the page travelled through WireGuard")
    if f"dns {CLIENT_IP}" in server_log.split("\n"):
        say(f"the server also answered the client's DNS question for {SERVER_NAME}, "
            f"from {CLIENT_IP}: names are resolved through the tunnel too")
    say(f"fetched through the tunnel: {body}")
    return 0
