"""Multi-hop: a profile started ``--via OUTER`` sends its encrypted packets
inside OUTER's tunnel.

Its host socket, the lookups of its endpoint names and the socket its
re-resolution asks through are made in OUTER's network namespace, by OUTER's
sidecar (the control verbs ``udp-socket`` and ``resolve``): wg-wrap never
enters a namespace to do it.  The inner profile's own namespaces are made
as any other's.  Its sidecar holds OUTER's ``hold`` (shared) for as long as
it runs, so an ephemeral OUTER does not end under it; ``down OUTER`` refuses
while profiles ride on it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

from wg_wrap import dns, launch, runtime
from wg_wrap.control import ControlClient
from wg_wrap.errors import ProfileError
from wg_wrap.lifetime import Attached, Ending, attach_running, live_states
from wg_wrap.runtime import Profile, State

# What WireGuard adds to each packet it carries (wg-quick's rule: an inner
# tunnel's MTU is the outer's minus 80, room for the IPv6 header as well).
OVERHEAD = 80
IPV6_MIN_MTU = 1280  # RFC 8200
# A lookup in the outer profile is bounded there (go-sidecar/control/hop.go:
# 10 s); wg-wrap waits a little longer for its answer.
RESOLVE_WAIT = 12.0


class Outer:
    """The profile a new one rides on, held (its ``hold``, shared) while the
    new one starts; the new sidecar keeps a hold of its own."""

    def __init__(self, attached: Attached, state: State) -> None:
        self.attached = attached
        self.state = state
        self.name = state.name

    @classmethod
    def attach(cls, base: str, name: str) -> Outer:
        """The running profile ``name``; the caller holds the runtime lock."""
        runtime.check_profile_name(name)
        profile = Profile.at(base, name)
        state = profile.read_state()
        if state is None or not state.ready:
            raise ProfileError(
                f"--via {name}: profile {name!r} is not running",
                hint=f"start it first (`wg-wrap up -c CONFIG -n {name}`), then ride on it",
            )
        try:
            attached = attach_running(profile, state)
        except Ending:
            attached = None
        if attached is None:
            raise ProfileError(
                f"--via {name}: profile {name!r} is not running (its sidecar is gone)",
                hint=f"`wg-wrap up -n {name} -c CONFIG` brings it back",
            )
        try:
            launch.refuse_stopped(name, state.sidecar_pid)
        except ProfileError:
            attached.release()
            attached.sidecar.close()
            raise
        return cls(attached, state)

    def release(self) -> None:
        self.attached.release()
        self.attached.sidecar.close()

    def hold_fd(self) -> int:
        """A descriptor of the outer's ``hold``, locked shared (its own open
        file description: the new sidecar keeps it, and with it the lock)."""
        import fcntl

        fd = os.open(self.attached.profile.hold_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ProfileError(f"--via {self.name}: profile {self.name!r} is ending") from None
        return fd

    def _control(self, timeout: float = 5.0) -> ControlClient:
        return ControlClient(self.state.control_address, timeout=timeout)

    def udp_socket(self, port: int | None) -> socket.socket:
        """A UDP socket in the outer's network namespace, bound to ``port``
        (ListenPort; None: any)."""
        _, fds = self._control().request_fds({"op": "udp-socket", "port": port or 0})
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ProfileError(f"--via {self.name}: its sidecar handed back no socket")
        sock = socket.socket(fileno=fds[0])
        sock.set_inheritable(True)
        return sock

    def resolve(self, host: str, ipv4_only: bool) -> list[str]:
        """``host``'s addresses, looked up as a program in the outer would
        (its DNS, through its tunnel)."""
        reply = self._control(RESOLVE_WAIT).request(
            {"op": "resolve", "host": host, "family": "ip4" if ipv4_only else "ip"})
        return [str(a) for a in reply.get("addresses") or []]

    def nameservers(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """What programs in the outer ask: its DNS, else the host's (its
        namespace shows the host's resolv.conf then)."""
        if self.state.dns:
            return [ipaddress.ip_address(s) for s in self.state.dns]
        try:
            with open(dns.ETC_RESOLV) as f:
                return dns.host_nameservers(f.read())
        except OSError:
            return []

    def inner_mtu(
        self, asked: int | None, ipv6: bool, warn: Callable[[str], None] | None,
    ) -> int:
        """The inner tunnel's MTU: the outer's minus OVERHEAD, unless the
        config says otherwise (a larger one is warned of: its packets are
        fragmented, or dropped, in the outer tunnel). With IPv6 addresses,
        never below IPv6's minimum (the kernel refuses them on a smaller
        link): three hops go below it, and their larger packets are then
        fragmented in the outer tunnel."""
        fits = self.state.mtu - OVERHEAD
        if asked is None:
            if ipv6 and fits < IPV6_MIN_MTU:
                if warn is not None:
                    warn(f"what fits in profile {self.name}'s tunnel ({self.state.mtu} - "
                         f"{OVERHEAD} = {fits}) is below IPv6's minimum MTU: using "
                         f"{IPV6_MIN_MTU}, its larger packets fragmented in {self.name}'s "
                         "tunnel")
                return IPV6_MIN_MTU
            return fits
        if asked > fits and warn is not None:
            warn(f"MTU = {asked} is larger than what fits in profile {self.name}'s tunnel "
                 f"({self.state.mtu} - {OVERHEAD} = {fits}): its packets will be fragmented "
                 "or dropped; leave MTU out to use that")
        return asked


def riders(base: str, outer: State) -> list[str]:
    """The running profiles that ride on ``outer`` (started --via it, into
    its network namespace as it is now)."""
    return [profile.name for profile, state in live_states(base, but=outer.name)
            if state.via == outer.name and state.via_netns == outer.netns]
