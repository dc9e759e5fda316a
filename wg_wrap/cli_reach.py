"""Command line of reaching in and out: published ports, the proxy front,
``check``.  ``wg_wrap.cli`` adds these options and commands to its parser
and dispatches to them; the work is in ``publish``, ``proxy`` and ``check``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from wg_wrap import reach
from wg_wrap.errors import UsageError
from wg_wrap.portfwd import PortForward


def _arg_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type that shows the parser's own message."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None

    convert.__name__ = parse.__name__
    return convert


def add_options(p: argparse.ArgumentParser) -> None:
    """``-p``, ``--socks``, ``--http-proxy``, ``--proxy-auth-file`` (run, up, proxy)."""
    p.add_argument(
        "-p", "--publish", action="append", default=[], metavar="[ADDR:]HOSTPORT:PORT[/udp]",
        type=_arg_type(reach.parse_port_spec),
        help="reach PORT inside from ADDR:HOSTPORT on the host (repeatable; ADDR defaults to "
        "127.0.0.1, HOSTPORT 0 picks a free port), e.g. -p 8080:80, -p [::1]:5353:53/udp",
    )
    p.add_argument(
        "--socks", metavar="[ADDR:]PORT", type=_arg_type(reach.parse_proxy_address),
        help="serve a SOCKS5 proxy into the tunnel on the host (ADDR defaults to 127.0.0.1), "
        "e.g. --socks 1080; names are resolved inside, through the tunnel",
    )
    p.add_argument(
        "--http-proxy", metavar="[ADDR:]PORT", type=_arg_type(reach.parse_proxy_address),
        help="serve an HTTP proxy (CONNECT and http:// URIs) into the tunnel on the host, "
        "e.g. --http-proxy 3128",
    )
    p.add_argument(
        "--proxy-auth-file", metavar="FILE",
        help="require the USER:PASSWORD in FILE from proxy clients (SOCKS5 username/password, "
        f"HTTP Basic); or set {reach.AUTH_ENV}=USER:PASSWORD. Required for a proxy on an "
        "address other than loopback",
    )
    p.add_argument(
        "--port-forward", nargs="?", const=0, type=_port_number, metavar="PORT",
        help="ask the VPN's gateway for a forwarded port over NAT-PMP, inside the tunnel, and "
        "keep it (ProtonVPN's P2P servers); programs find it in $WG_WRAP_FORWARDED_PORT, "
        "`wg-wrap status` and the runtime directory's forwarded_port; =PORT asks for that "
        "port on this side",
    )
    p.add_argument(
        "--port-forward-gateway", metavar="IP", type=_arg_type(_ipv4_text),
        help="the NAT-PMP gateway (default: the tunnel's first IPv4 address with the last "
        "number 1, e.g. 10.2.0.1 for 10.2.0.2)",
    )
    p.add_argument(
        "--port-forward-cmd", metavar="CMD",
        help="run CMD (by /bin/sh, inside the profile, as a wrapped program) each time the "
        "port is obtained or changes, {port} replaced by it, e.g. to set a torrent client's "
        "listen port",
    )


def add_commands(
    sub: Any,
    add_common: Callable[..., None],
    add_network: Callable[[argparse.ArgumentParser], None],
) -> None:
    """``publish``, ``unpublish``, ``proxy`` and ``check``."""
    fmt = argparse.RawDescriptionHelpFormatter
    publish = sub.add_parser(
        "publish", help="publish ports of a running profile on the host",
        description="Reach PORT inside the running profile NAME from ADDR:HOSTPORT on the host "
        "(ADDR defaults to 127.0.0.1; HOSTPORT 0 picks a free port). Connections arrive "
        "inside from 127.0.0.1 (or ::1).",
        epilog="examples:\n  wg-wrap publish wg0 8080:80\n"
        "  wg-wrap publish wg0 0.0.0.0:5353:53/udp [::1]:8443:443",
        formatter_class=fmt,
    )
    publish.add_argument("name", metavar="NAME", help="profile name, e.g. wg0")
    publish.add_argument("specs", nargs="+", metavar="[ADDR:]HOSTPORT:PORT[/udp]",
                         type=_arg_type(reach.parse_port_spec))
    publish.add_argument("-v", "--verbose", action="store_true", help="trace each step")

    unpublish = sub.add_parser(
        "unpublish", help="stop publishing ports of a running profile",
        description="Stop listening on HOSTPORT (on all its addresses) for profile NAME, and "
        "end the connections made through it.",
        epilog="examples:\n  wg-wrap unpublish wg0 8080\n  wg-wrap unpublish wg0 5353/udp",
        formatter_class=fmt,
    )
    unpublish.add_argument("name", metavar="NAME", help="profile name, e.g. wg0")
    unpublish.add_argument("targets", nargs="+", metavar="HOSTPORT[/udp]",
                           type=_arg_type(reach.parse_host_port))
    unpublish.add_argument("-v", "--verbose", action="store_true", help="trace each step")

    proxy = sub.add_parser(
        "proxy", help="serve a SOCKS5 or HTTP proxy into the tunnel, with no program inside",
        description="Start the tunnel of FILE with the proxy front and nothing else, and keep "
        "it until interrupted (Ctrl-C, SIGTERM). Programs that cannot be wrapped (a running "
        "browser, a container) use the tunnel through the proxy.",
        epilog="examples:\n  wg-wrap proxy -c ~/vpn/wg0.conf --socks 1080\n"
        f"  {reach.AUTH_ENV}=me:secret wg-wrap proxy -c wg0.conf --socks 0.0.0.0:1080 "
        "--http-proxy 0.0.0.0:3128",
        formatter_class=fmt,
    )
    proxy.add_argument("-c", "--config", required=True, metavar="FILE",
                       help="wg-quick configuration file, e.g. -c ~/vpn/wg0.conf")
    add_common(proxy)
    add_network(proxy)
    add_options(proxy)
    proxy.add_argument("--no-wait", action="store_true",
                       help="do not wait for the first handshake before serving")
    proxy.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                       help="how long to wait for the first handshake (default: 15)")

    check = sub.add_parser(
        "check", help="test a profile for leaks: a table of pass/fail lines",
        description="Run a probe inside the running profile NAME (or in a fresh one from -c "
        "FILE) as a wrapped program would run, and check: only lo and the tunnel exist; every "
        "route leads into the tunnel; every nameserver is reached through it; host resolver "
        "sockets are hidden; a DNS query is answered; IPv6; uid and capabilities; the last "
        "handshake. Exit status 0 only when every line passes.",
        epilog="examples:\n  wg-wrap check wg0\n  wg-wrap check -c ~/vpn/wg0.conf --json",
        formatter_class=fmt,
    )
    check.add_argument("name", nargs="?", metavar="NAME",
                       help="a running profile (default with -c: the config file's name)")
    check.add_argument("-c", "--config", metavar="FILE",
                       help="start a fresh profile from FILE for the check, and stop it after")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    add_network(check)
    check.add_argument("-v", "--verbose", action="store_true", help="trace each step")


def reach_request(args: argparse.Namespace) -> reach.ReachRequest | None:
    """The published ports and proxies a start asks for (run, up, proxy)."""
    if not hasattr(args, "publish"):
        return None
    auth = None
    if args.socks or args.http_proxy:
        auth = reach.load_credentials(args.proxy_auth_file)
    elif args.proxy_auth_file:
        raise UsageError("--proxy-auth-file is for --socks or --http-proxy")
    req = reach.ReachRequest(
        publish=tuple(args.publish), socks=args.socks, http_proxy=args.http_proxy, auth=auth,
    )
    reach.check_request(req)
    return req


def _port_number(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def _ipv4_text(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError("not an IPv4 address (NAT-PMP is IPv4 only)") from None


def port_forward_request(args: argparse.Namespace) -> PortForward | None:
    """What --port-forward* asked for (run, up, proxy)."""
    if getattr(args, "port_forward", None) is None:
        if getattr(args, "port_forward_gateway", None) or getattr(args, "port_forward_cmd", None):
            raise UsageError("--port-forward-gateway and --port-forward-cmd go with "
                             "--port-forward")
        return None
    return PortForward(args.port_forward, args.port_forward_gateway, args.port_forward_cmd)


def dispatch(args: argparse.Namespace, request: Callable[[], Any]) -> int | None:
    """Run the commands of this module; None for the others.  ``request``
    builds the session.Request of run/up (cli.py knows how)."""
    if args.action in ("publish", "unpublish"):
        from wg_wrap import publish

        if args.action == "publish":
            lines = publish.publish(args.name, args.specs, args.verbose)
        else:
            lines = publish.unpublish(args.name, args.targets, args.verbose)
        print("\n".join(lines))
        return 0
    if args.action == "proxy":
        from wg_wrap import proxy

        return proxy.serve(request(), wait=not args.no_wait, timeout=args.timeout)
    if args.action == "check":
        from wg_wrap import check

        return check.main(args)
    return None
