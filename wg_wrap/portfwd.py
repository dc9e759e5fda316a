"""A forwarded port from the VPN's gateway, over NAT-PMP (RFC 6886).

The sidecar asks for it and keeps it (go-sidecar/natpmp), inside the tunnel,
so that it holds for `up` profiles with no wg-wrap process left on the host
and across a heal in place.  wg-wrap writes the plan (``portforward.json``
in the profile's directory: the gateway, the port asked for, the command to
run on each change and its environment); the sidecar writes what it got:
``forwarded_port`` (just the port, for scripts) and
``portforward-status.json`` (for `status`).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Sequence

from wg_wrap import runtime
from wg_wrap.errors import UsageError
from wg_wrap.runtime import Profile

# How long `run --port-forward` waits for the first mapping before it starts
# the program anyway (a gateway that answers does so within a second; one
# that does not is being retried by the sidecar meanwhile).
FIRST_MAPPING_WAIT = 10.0
# What the hook runs with of the user's environment (the sidecar's own is
# wg-wrap's alone).
HOOK_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")


class PortForward:
    """What `--port-forward[=PORT]`, `--port-forward-gateway` and
    `--port-forward-cmd` asked for."""

    def __init__(self, internal_port: int = 0, gateway: str | None = None,
                 command: str | None = None) -> None:
        self.internal_port = internal_port
        self.gateway = gateway
        self.command = command

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortForward) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"PortForward({vars(self)!r})"


def default_gateway(addresses: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                    path: str) -> str:
    """The tunnel's first IPv4 address with its last octet 1 (ProtonVPN:
    10.2.0.2 -> 10.2.0.1), as gluetun guesses it."""
    for address in addresses:
        if address.version == 4:
            return str(ipaddress.IPv4Address((int(address.ip) & ~0xFF) | 1))
    raise UsageError(
        f"{path}: --port-forward needs the NAT-PMP gateway's address: the config has no "
        "IPv4 Address to guess it from",
        hint="give it with --port-forward-gateway IP",
    )


def plan_json(forward: PortForward, gateway: str, environ: dict[str, str]) -> str:
    env = {k: environ[k] for k in HOOK_ENVIRONMENT if k in environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return json.dumps({
        "gateway": gateway, "internal_port": forward.internal_port,
        "command": forward.command or "", "env": env,
    })


def read_status(profile: Profile) -> dict[str, object] | None:
    """What the sidecar last wrote of the port forward, if anything."""
    try:
        with open(profile.portforward_status_path) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def wait_for_port(profile: Profile, timeout: float = FIRST_MAPPING_WAIT) -> str | None:
    """The forwarded port once the sidecar has one, or None after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        port = runtime.forwarded_port(profile.dir)
        if port is not None or time.monotonic() >= deadline:
            return port
        time.sleep(0.05)


def summary(status: dict[str, object] | None) -> str:
    """The FWD column of ls."""
    if status is None:
        return "-"
    if status.get("state") == "mapped" and status.get("port"):
        return str(status["port"])
    if status.get("last_error"):
        return "failing"
    return "asking"
