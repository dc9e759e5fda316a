"""Command line: maps arguments to wg_wrap.session and errors to exit codes."""

from __future__ import annotations

import os
import sys

from wg_wrap.errors import UsageError, WgWrapError

# argparse and friends are imported where they are needed: `wg-wrap exec`
# takes a fast path that must not pay for them (scripts/bench_join.py).
TYPE_CHECKING = False  # not `from typing import`: typing is slow to import
if TYPE_CHECKING:
    import argparse
    import ipaddress
    from collections.abc import Sequence

    from wg_wrap import session

PROG = "wg-wrap"

DESCRIPTION = """\
Run one program behind a WireGuard tunnel, without root.

The program (and its children) sees only the tunnel: its own network
namespace holds `lo` and `tun0`, and the encrypted traffic leaves through a
UDP socket opened on the host. With the tunnel down, nothing leaves at all.
"""

RUN_EXAMPLES = """\
examples:
  wg-wrap run -c ~/vpn/wg0.conf -- firefox
  wg-wrap run -c ~/vpn/wg0.conf -- curl https://example.com
  wg-wrap run -c ~/vpn/wg0.conf --dns 10.64.0.1 -- bash
  wg-wrap run -c ~/vpn/wg0.conf              (starts your $SHELL inside)
"""


MORE_EXAMPLES = """\
  wg-wrap up -c ~/vpn/wg0.conf && wg-wrap exec wg0 -- firefox
  wg-wrap status wg0
  wg-wrap doctor                            (can this machine run wg-wrap?)

`wg-wrap COMMAND --help` explains each command.
"""


def _dns_server(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    import argparse
    import ipaddress

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _ip_text(text: str) -> str:
    return str(_dns_server(text))


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from wg_wrap import cli_reach

    class _VersionAction(argparse.Action):
        def __init__(self, option_strings: list[str], dest: str, **kw: object) -> None:
            super().__init__(option_strings, dest, nargs=0, **kw)  # type: ignore[arg-type]

        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            from wg_wrap import version

            print(version.report())
            parser.exit()

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(message, hint=f"see `{self.prog} --help`")

    parser = _Parser(
        prog=PROG, description=DESCRIPTION, epilog=RUN_EXAMPLES + MORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction,
        help="show wg-wrap's version and its helpers' (with the wireguard-go module the "
        "sidecar was built with), then exit",
    )
    sub = parser.add_subparsers(dest="action", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run a command behind the tunnel of a wg-quick config",
        description="Run CMD behind the WireGuard tunnel described by FILE. The tunnel "
        "is torn down when the last program in it exits. wg-wrap exits with CMD's status "
        "(128+N if CMD was killed by signal N).",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "-c", "--config", required=True, metavar="FILE",
        help="wg-quick configuration file, e.g. -c ~/vpn/wg0.conf (the one your VPN provider "
        "gave you); PostUp/PreDown hooks, FwMark and SaveConfig are ignored",
    )
    _add_common(run)
    _add_network(run)
    cli_reach.add_options(run)
    run.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
        help="the program to run inside, after `--` (default: your $SHELL)",
    )

    up = sub.add_parser(
        "up",
        help="start a persistent tunnel that later commands join (`exec`, `run`)",
        description="Start the tunnel of FILE as profile NAME and keep it until `wg-wrap down "
        "NAME`, even with nothing attached. Waits for the first handshake, then prints NAME.",
        epilog="examples:\n  wg-wrap up -c ~/vpn/wg0.conf\n  wg-wrap exec wg0 -- firefox\n"
        "  wg-wrap down wg0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("-c", "--config", required=True, metavar="FILE",
                    help="wg-quick configuration file, e.g. -c ~/vpn/wg0.conf")
    _add_common(up)
    _add_network(up)
    cli_reach.add_options(up)
    up.add_argument("--no-wait", action="store_true",
                    help="return at once instead of waiting for the first handshake "
                    "(e.g. for a server, or a peer that is not up yet)")
    up.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                    help="how long to wait for the first handshake, e.g. --timeout 30 "
                    "(default: 15)")

    exec_ = sub.add_parser(
        "exec",
        help="run a command in a running profile",
        description="Run CMD inside the running profile NAME (see `up`). wg-wrap exits with "
        "CMD's status (128+N if CMD was killed by signal N).",
        epilog="example:\n  wg-wrap exec wg0 -- curl https://example.com",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exec_.add_argument("name", metavar="NAME", help="profile name, e.g. wg0 (see `wg-wrap ls`)")
    exec_.add_argument("-v", "--verbose", action="store_true", help="trace each step")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]",
                       help="the program to run inside, after `--` (default: your $SHELL)")

    down = sub.add_parser(
        "down", help="stop a profile",
        description="Stop profile NAME. Refuses while programs are attached, unless --force: "
        "then they keep running, without any network.",
        epilog="examples:\n  wg-wrap down wg0\n  wg-wrap down --force wg0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    down.add_argument("name", metavar="NAME", help="profile name, e.g. wg0")
    down.add_argument("-f", "--force", action="store_true",
                      help="stop even with programs attached (they lose the network)")
    down.add_argument("-v", "--verbose", action="store_true", help="trace each step")

    ls = sub.add_parser("ls", help="list profiles, one line each",
                        description="One line per profile: name, mode, sidecar pid, attached "
                        "processes, endpoint, last handshake, bytes received and sent.")
    ls.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")

    status = sub.add_parser("status", help="show a profile in full, like `wg show`",
                            description="Addresses, DNS, MTU, keys, peers with handshakes and "
                            "transfer, and the attached processes.",
                            epilog="examples:\n  wg-wrap status wg0\n  wg-wrap status --json",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("name", nargs="?", metavar="NAME", help="profile name (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")

    sub.add_parser(
        "doctor", help="check that this machine can run wg-wrap, and say how to fix it",
        description="Checks the helper programs, /dev/net/tun, unprivileged user namespaces, "
        "a TUN device inside them, the runtime directory, the host's resolver and IPv6; "
        "prints a fix for each problem. Exit status 1 if anything needed is missing.",
    )

    cli_reach.add_commands(sub, _add_common, _add_network)

    demo = sub.add_parser(
        "demo",
        help="show wg-wrap working with no VPN account (a local peer on 127.0.0.1)",
        description="Generate keys, start a second wg-wrap as a WireGuard server on "
        "127.0.0.1 with a small HTTP service inside its namespace, fetch a page from it "
        "through the tunnel, show why that proves the path, and clean up.",
    )
    _add_common(demo, with_name=False)
    return parser


def _exec_fast_path(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """``exec [-v] NAME [--] CMD...`` parsed without argparse; None otherwise."""
    if not argv or argv[0] != "exec":
        return None
    rest, verbose = argv[1:], False
    while rest and rest[0] in ("-v", "--verbose"):
        verbose, rest = True, rest[1:]
    if not rest or rest[0].startswith("-"):
        return None  # --help, a typo: argparse explains
    name, command = rest[0], rest[1:]
    if command and command[0] == "--":
        command = command[1:]
    elif command and command[0].startswith("-"):
        return None
    return name, command or [os.environ.get("SHELL") or "/bin/sh"], verbose


def _add_common(p: argparse.ArgumentParser, with_name: bool = True) -> None:
    if with_name:
        p.add_argument(
            "-n", "--name", metavar="NAME",
            help="profile name (default: the config file's name without .conf, e.g. wg0); "
            "commands run with the same name share one tunnel",
        )
    p.add_argument(
        "-v", "--verbose", action="store_true",
        help="trace each setup step (e.g. `[#] ip address add 10.0.0.2/32 dev tun0`), log "
        "the sidecar verbosely (sidecar.log in the runtime directory), show tracebacks",
    )


def _add_network(p: argparse.ArgumentParser) -> None:

    p.add_argument(
        "--dns", action="append", type=_dns_server, default=[], metavar="IP",
        help="DNS server to use inside, e.g. --dns 10.64.0.1 (repeatable); "
        "overrides the config's DNS = servers",
    )
    p.add_argument(
        "--listen-address", type=_ip_text, metavar="IP",
        help="bind the host UDP socket to one address instead of all, e.g. "
        "--listen-address 127.0.0.1 for a server only reachable locally",
    )


def _command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        command = [os.environ.get("SHELL") or "/bin/sh"]
    return command


def _request(args: argparse.Namespace) -> session.Request:
    from wg_wrap import cli_reach, session

    return session.Request(
        config_path=args.config, name=args.name, dns=tuple(args.dns),
        listen_address=args.listen_address, verbose=args.verbose,
        reach=cli_reach.reach_request(args),
    )


def dispatch(args: argparse.Namespace) -> int:
    if args.action == "exec":
        from wg_wrap import join

        return join.exec_in(args.name, _command(args), args.verbose)
    if args.action in ("ls", "status"):
        from wg_wrap import status

        if args.action == "ls":
            return status.show_list()
        return status.show(args.name, as_json=args.json)
    from wg_wrap import cli_reach

    done = cli_reach.dispatch(args, lambda: _request(args))
    if done is not None:
        return done
    if args.action == "doctor":
        from wg_wrap import doctor

        return doctor.main()
    if args.action == "demo":
        from wg_wrap import demo

        return demo.main(verbose=args.verbose)
    from wg_wrap import session

    if args.action == "run":
        return session.run(_request(args), _command(args))
    if args.action == "up":
        print(session.up(_request(args), wait=not args.no_wait, timeout=args.timeout))
        return 0
    if args.action == "down":
        print(session.down(args.name, force=args.force, verbose=args.verbose))
        return 0
    raise UsageError(f"unknown command {args.action!r}")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    fast = _exec_fast_path(arguments)
    verbose = fast[2] if fast else False
    try:
        if fast:
            from wg_wrap import join

            return join.exec_in(*fast)
        args = build_parser().parse_args(arguments)
        verbose = bool(getattr(args, "verbose", False))
        return dispatch(args)
    except WgWrapError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"{PROG}: hint: {e.hint}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so briefly, show it with -v
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if not verbose:
            print(f"{PROG}: hint: run with -v for the traceback", file=sys.stderr)
        return 1
