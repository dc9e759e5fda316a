"""Published ports and the proxy front: the host sockets, and handing them over.

Every socket the host's programs connect to is opened here, on the host,
before the namespace exists (or, for ``wg-wrap publish``, while it runs), and
sent to the sidecar over its control socket with SCM_RIGHTS.  The sidecar,
which lives inside, accepts on them and dials inside: a socket belongs
forever to the network namespace it was created in, so these stay on the
host's network, and nothing inside can open one like them.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from wg_wrap import launch, runtime
from wg_wrap.control import ControlClient
from wg_wrap.errors import ProfileError, SetupError
from wg_wrap.join import not_running
from wg_wrap.lifetime import trace, warn
from wg_wrap.reach import IPAddress, PortSpec, ProxySpec, ReachRequest
from wg_wrap.runtime import Profile, State

LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
NETLINK_SOCK_DIAG = 4  # <linux/netlink.h>; the socket module has no name for it


@dataclass
class HostSockets:
    """The sockets a start opened, until they are handed over (then closed:
    the sidecar has its own copies)."""

    publish: list[tuple[PortSpec, socket.socket]] = field(default_factory=list)
    # listener, UDP relay, NETLINK_SOCK_DIAG (who owns a client's socket)
    socks: tuple[ProxySpec, socket.socket, socket.socket, socket.socket] | None = None
    http: tuple[ProxySpec, socket.socket] | None = None

    def sockets(self) -> list[socket.socket]:
        found = [s for _, s in self.publish]
        if self.socks:
            found += self.socks[1:]
        if self.http:
            found.append(self.http[1])
        return found

    def close(self) -> None:
        for s in self.sockets():
            s.close()


def _family(host: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if host.version == 6 else socket.AF_INET


def _bind_error(e: OSError, address: str, what: str) -> SetupError:
    if e.errno == errno.EADDRINUSE:
        return SetupError(
            f"{address} is already in use on this host ({what})",
            hint="pick another host port, or 0 for any free one (e.g. -p 0:80)",
        )
    if e.errno == errno.EACCES:
        return SetupError(
            f"not allowed to listen on {address} ({what}): ports below 1024 need privileges",
            hint="use a host port above 1023 (the port inside may stay below)",
        )
    if e.errno == errno.EADDRNOTAVAIL:
        return SetupError(f"cannot listen on {address} ({what}): no such address on this host")
    return SetupError(f"cannot listen on {address} ({what}): {e.strerror}")


def _taken(e: SetupError) -> bool:
    return isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EADDRINUSE


def listen_tcp(host: IPAddress, port: int, what: str) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        # As servers do: a port whose last connections linger in TIME_WAIT
        # can be listened on again at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(host), port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}/tcp" if host.version == 6 else f"{host}:{port}/tcp"
        raise _bind_error(e, shown, what) from e
    return sock


def bind_udp(host: IPAddress, port: int, what: str) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        sock.bind((str(host), port))
    except OSError as e:
        sock.close()
        shown = f"[{host}]:{port}/udp" if host.version == 6 else f"{host}:{port}/udp"
        raise _bind_error(e, shown, what) from e
    return sock


def _bound_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def open_host_sockets(req: ReachRequest | None, again: bool = False) -> HostSockets:
    """Open every socket ``req`` asks for, on the host; on failure none is
    left open.  Ports given as 0 are chosen by the kernel and filled in.

    ``again``: a heal opens what the dead sidecar had; a host port taken
    since is left out with a warning (the programs inside need their tunnel
    back more than that port)."""
    opened = HostSockets()
    if not req:
        return opened

    def open_or_skip(make: Callable[[], socket.socket], skipped: str) -> socket.socket | None:
        try:
            return make()
        except SetupError as e:
            if not again or not _taken(e):
                raise
            warn(f"{e.message}: {skipped}")
            return None

    try:
        for spec in req.publish:
            what = f"published port {spec}"
            opener = listen_tcp if spec.proto == "tcp" else bind_udp
            sock = open_or_skip(lambda: opener(spec.host, spec.host_port, what),  # noqa: B023
                                "not published again")
            if sock is not None:
                actual = PortSpec(spec.host, _bound_port(sock), spec.port, spec.proto)
                opened.publish.append((actual, sock))
        socks = req.socks
        listener = socks and open_or_skip(lambda: listen_tcp(socks.host, socks.port,
                                                             "SOCKS5 proxy"), "not started again")
        if socks and listener:
            opened.socks = _socks_sockets(socks, listener)
        http = req.http_proxy
        listener = http and open_or_skip(lambda: listen_tcp(http.host, http.port, "HTTP proxy"),
                                         "not started again")
        if http and listener:
            opened.http = (ProxySpec(http.host, _bound_port(listener)), listener)
    except BaseException:
        opened.close()
        raise
    return opened


def _socks_sockets(
    spec: ProxySpec, listener: socket.socket,
) -> tuple[ProxySpec, socket.socket, socket.socket, socket.socket]:
    """The SOCKS5 proxy's listener, its UDP relay and its NETLINK_SOCK_DIAG
    socket (the listener is closed on failure)."""
    try:
        # UDP ASSOCIATE's relay: on the proxy's own address, never on all
        # addresses, at a port of its own.
        relay = bind_udp(spec.host, 0, "SOCKS5 UDP relay")
    except BaseException:
        listener.close()
        raise
    try:
        # The relay asks the kernel who owns a client's sockets: a datagram
        # passes only from the user who holds the UDP ASSOCIATE's
        # connection. On the host, like the sockets it asks about.
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except OSError as e:
        listener.close()
        relay.close()
        raise SetupError(f"cannot open a NETLINK_SOCK_DIAG socket: {e.strerror}") from e
    return ProxySpec(spec.host, _bound_port(listener)), listener, relay, diag


def _auth_fields(req: ReachRequest) -> dict[str, str]:
    if req.auth is None:
        return {}
    return {"user": req.auth.user, "password": req.auth.password}


def hand_over(
    profile: Profile, opened: HostSockets, req: ReachRequest, state: State, verbose: bool
) -> None:
    """Give the sidecar its sockets, record them in ``state``, close ours.

    The credentials travel only over the private control socket, like the
    private key over UAPI; state.toml records only that there are some.
    """
    client = ControlClient(state.control_address)
    try:
        _publish_all(client, opened.publish, state.published, verbose)
        if opened.socks:
            spec, listener, relay, diag = opened.socks
            trace(verbose, f"SOCKS5 proxy on {spec}")
            reply = client.request(
                {"op": "socks", **_auth_fields(req)},
                [listener.fileno(), relay.fileno(), diag.fileno()],
            )
            state.socks = str(spec)
            state.socks_udp = str(reply.get("listening", ["", ""])[1])
        if opened.http:
            spec, listener = opened.http
            trace(verbose, f"HTTP proxy on {spec}")
            client.request({"op": "http-proxy", **_auth_fields(req)}, [listener.fileno()])
            state.http_proxy = str(spec)
        state.proxy_auth = req.auth is not None and bool(opened.socks or opened.http)
    finally:
        opened.close()


def _publish_all(
    client: ControlClient, items: list[tuple[PortSpec, socket.socket]], record: list[str],
    verbose: bool,
) -> None:
    """Publish each port; ``record`` gets each one the sidecar took."""
    for spec, sock in items:
        trace(verbose, f"publish {spec.describe()}")
        client.request({"op": "publish", "proto": spec.proto, "port": spec.port}, [sock.fileno()])
        record.append(str(spec))


def announce(state: State) -> list[str]:
    """What a start opened on the host, for the user, one line each."""
    lines = [f"published {_arrow(p)}" for p in state.published]
    auth = " (password required)" if state.proxy_auth else ""
    if state.socks:
        lines.append(f"SOCKS5 proxy on {state.socks}{auth}, UDP relay on {state.socks_udp}")
    if state.http_proxy:
        lines.append(f"HTTP proxy on {state.http_proxy}{auth}")
    return lines


def _arrow(published: str) -> str:
    """``127.0.0.1:8080:80/tcp`` -> ``127.0.0.1:8080 -> 80/tcp``."""
    address, _, rest = published.rpartition(":")
    return f"{address} -> {rest}"


def already_running(name: str) -> ProfileError:
    return ProfileError(
        f"profile {name!r} is already running: -p, --socks, --http-proxy and "
        "--port-forward apply only when a profile starts",
        hint=f"`wg-wrap publish {name} [ADDR:]HOSTPORT:PORT` publishes a port on it",
    )


def _running(name: str) -> tuple[str, Profile]:
    runtime.check_profile_name(name)
    base = runtime.base_dir(create=False)
    profile = Profile.at(base, name)
    if not os.path.isdir(profile.dir):
        raise not_running(name)
    return base, profile


def _live_state(profile: Profile) -> State:
    state = profile.read_state()
    if state is None or not state.ready:
        raise not_running(profile.name)
    sidecar = launch.open_sidecar(state.sidecar_pid, state.sidecar_start)
    if sidecar is None:
        raise not_running(profile.name)
    sidecar.close()
    launch.refuse_stopped(profile.name, state.sidecar_pid)
    return state


def publish(name: str, specs: list[PortSpec], verbose: bool = False) -> list[str]:
    """``wg-wrap publish NAME SPEC...`` on a running profile."""
    _, profile = _running(name)
    with runtime.profile_locked(profile):
        state = _live_state(profile)
        opened = open_host_sockets(ReachRequest(publish=tuple(specs)))
        done = len(state.published)
        try:
            _publish_all(ControlClient(state.control_address), opened.publish, state.published,
                         verbose)
        finally:
            opened.close()
            # What the sidecar took is recorded even if a later one failed.
            profile.write_state(state)
        return [f"published {_arrow(p)}" for p in state.published[done:]]


def unpublish(name: str, targets: list[tuple[int, str]], verbose: bool = False) -> list[str]:
    """``wg-wrap unpublish NAME HOSTPORT[/udp]...`` on a running profile."""
    _, profile = _running(name)
    done = []
    with runtime.profile_locked(profile):
        state = _live_state(profile)
        client = ControlClient(state.control_address)
        try:
            for port, proto in targets:
                trace(verbose, f"unpublish {port}/{proto}")
                reply = client.request({"op": "unpublish", "proto": proto, "host_port": port})
                if not reply.get("removed"):
                    raise ProfileError(
                        f"nothing is published on host port {port}/{proto} in profile {name}",
                        hint=f"`wg-wrap status {name}` shows what is published",
                    )
                gone = [p for p in state.published if _host_port(p) == (port, proto)]
                state.published = [p for p in state.published if p not in gone]
                done += [f"unpublished {_arrow(p)}" for p in gone]
        finally:
            profile.write_state(state)
    return done


def _host_port(published: str) -> tuple[int, str]:
    """``[::1]:8080:80/udp`` -> (8080, "udp")."""
    body, _, proto = published.partition("/")
    host_port = body.rsplit(":", 2)[1]
    return int(host_port), proto
