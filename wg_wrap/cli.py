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


# What the shell completions offer for an argument: shtab's `.complete`
# attribute, read only by scripts/gen-docs.py (argparse ignores it; nothing
# here imports shtab). Per shell, a function defined in
# packaging/completions/hooks.SHELL or one of the shell's own completers.
COMPLETE_PROFILE = {  # the running profiles (directories in the runtime directory)
    "bash": "_wg_wrap_profiles", "zsh": "_wg_wrap_profiles", "fish": "(_wg_wrap_profiles)",
}
COMPLETE_CONFIG_FILE = {  # *.conf files, and directories to look in
    "bash": "_wg_wrap_config_files", "zsh": "_files -g '*.conf'",
    "fish": "(_wg_wrap_config_files)",
}
COMPLETE_CONFIG_NAME = {  # NAME for each NAME.conf in the config directory
    "bash": "_wg_wrap_config_names", "zsh": "_wg_wrap_config_names",
    "fish": "(_wg_wrap_config_names)",
}


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


def _seconds(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _ip_text(text: str) -> str:
    return str(_dns_server(text))


def _completes(action: argparse.Action, what: dict[str, str]) -> None:
    action.complete = what  # type: ignore[attr-defined]


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
        # For `exec`: CMD is cut off the arguments before they are parsed.
        cuts_command = False

        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(message, hint=f"see `{self.prog} --help`")

        def parse_known_args(  # type: ignore[override]
            self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
        ) -> tuple[argparse.Namespace, list[str]]:
            if not self.cuts_command:
                return super().parse_known_args(args, namespace)
            head, command = split_exec_command(sys.argv[1:] if args is None else args)
            parsed, extras = super().parse_known_args(head, namespace)
            parsed.command = command
            return parsed, extras

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
    _completes(run.add_argument(
        "-c", "--config", metavar="FILE",
        help="wg-quick configuration file, e.g. -c ~/vpn/wg0.conf (the one your VPN provider "
        "gave you); PostUp/PreDown hooks, FwMark and SaveConfig are ignored. Without -c, "
        "-n NAME joins profile NAME if it is up, else reads NAME.conf from "
        "$XDG_CONFIG_HOME/wg-wrap (~/.config/wg-wrap)",
    ), COMPLETE_CONFIG_FILE)
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
        "NAME`, even with nothing attached. Waits for the first handshake, then prints NAME. "
        "With --foreground it stays, for systemd: see wg-wrap@.service.",
        epilog="examples:\n  wg-wrap up -c ~/vpn/wg0.conf\n  wg-wrap exec wg0 -- firefox\n"
        "  wg-wrap down wg0\n"
        "  wg-wrap up -n wg0                 (reads ~/.config/wg-wrap/wg0.conf)\n"
        "  systemctl --user enable --now wg-wrap@wg0   (runs `wg-wrap up --foreground -n wg0`)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _completes(up.add_argument(
        "-c", "--config", metavar="FILE",
        help="wg-quick configuration file, e.g. -c ~/vpn/wg0.conf; without it, "
        "-n NAME reads NAME.conf from $XDG_CONFIG_HOME/wg-wrap (~/.config/wg-wrap)",
    ), COMPLETE_CONFIG_FILE)
    _add_common(up)
    _add_network(up)
    cli_reach.add_options(up)
    up.add_argument("--no-wait", action="store_true",
                    help="return at once instead of waiting for the first handshake "
                    "(e.g. for a server, or a peer that is not up yet)")
    up.add_argument("--foreground", action="store_true",
                    help="stay in the foreground until SIGTERM or Ctrl-C, then take the profile "
                    "down; tell systemd (Type=notify) when the tunnel is up; exit non-zero if "
                    "the sidecar dies")
    up.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                    help="how long to wait for the first handshake, e.g. --timeout 30 "
                    "(default: 15)")

    exec_ = sub.add_parser(
        "exec",
        help="run a command in a running profile",
        usage="%(prog)s [-h] [-v] NAME [-v] [[--] CMD [ARG...]]",
        description="Run CMD inside the running profile NAME (see `up`). wg-wrap exits with\n"
        "CMD's status (128+N if CMD was killed by signal N).\n\n"
        "CMD starts after `--`, or at the first word after NAME that is not an option;\n"
        "all that follows is CMD's own. Default CMD: your $SHELL.",
        epilog="examples:\n  wg-wrap exec wg0 -- curl https://example.com\n"
        "  wg-wrap exec wg0 -v -- firefox",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exec_.cuts_command = True
    _completes(exec_.add_argument("name", metavar="NAME",
                                  help="profile name, e.g. wg0 (see `wg-wrap ls`)"),
               COMPLETE_PROFILE)
    exec_.add_argument("-v", "--verbose", action="store_true", help="trace each step")

    down = sub.add_parser(
        "down", help="stop a profile",
        description="Stop profile NAME. Refuses while programs are attached, unless --force: "
        "then they keep running, without any network.",
        epilog="examples:\n  wg-wrap down wg0\n  wg-wrap down --force wg0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _completes(down.add_argument("name", metavar="NAME", help="profile name, e.g. wg0"),
               COMPLETE_PROFILE)
    down.add_argument("-f", "--force", action="store_true",
                      help="stop even with programs attached (they lose the network)")
    down.add_argument("-v", "--verbose", action="store_true", help="trace each step")

    ls = sub.add_parser("ls", help="list profiles, one line each",
                        description="One line per profile: name, mode, sidecar pid, attached "
                        "processes, endpoint, last handshake, bytes received and sent, published "
                        "ports and proxies, whether the view of the host holds, the forwarded "
                        "port.")
    ls.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")

    status = sub.add_parser("status", help="show a profile in full, like `wg show`",
                            description="Addresses, DNS, MTU, keys, peers with handshakes and "
                            "transfer, and the attached processes.",
                            epilog="examples:\n  wg-wrap status wg0\n  wg-wrap status --json",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _completes(status.add_argument("name", nargs="?", metavar="NAME",
                                   help="profile name (default: all)"),
               COMPLETE_PROFILE)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")

    doctor = sub.add_parser(
        "doctor", help="check that this machine can run wg-wrap, and say how to fix it",
        description="Checks the helper programs, AppArmor's restriction on user namespaces "
        "(Ubuntu 23.10+), /dev/net/tun, and what wg-wrap does in new namespaces: mounts, "
        "a TUN device with an address; then the runtime directory, the host's resolver and "
        "IPv6. Prints a fix for each problem. Exit status 1 if anything needed is missing.",
    )
    doctor.add_argument(
        "--apparmor-profile", action="store_true",
        help="print the AppArmor profile that lets this installation's launcher create user "
        "namespaces (for `sudo install -m 0644 /dev/stdin /etc/apparmor.d/…`), and exit",
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


def split_exec_command(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Cut ``exec``'s arguments into wg-wrap's own (options and NAME) and CMD.

    ``exec`` has no option taking a value, so the cut needs no option table:
    CMD starts after the first ``--``, or at the first word after NAME that
    does not start with ``-``; everything from there on is CMD's, untouched
    (``exec wg0 curl -v URL`` gives ``-v`` to curl).  A ``--`` before NAME
    ends the options: NAME is the word after it.  Both the fast path and
    argparse parse the first part; neither ever sees CMD.
    """
    name_seen = False
    for i, word in enumerate(args):
        if word == "--":
            if name_seen:
                return list(args[:i]), list(args[i + 1 :])
            return list(args[: i + 2]), list(args[i + 2 :])
        if word.startswith("-") and word != "-":
            continue
        if name_seen:
            return list(args[:i]), list(args[i:])
        name_seen = True
    return list(args), []


def _exec_fast_path(argv: list[str]) -> tuple[str, list[str], bool] | None:
    """``exec`` parsed without argparse, for the usual shapes: the options
    spelled ``-v`` or ``--verbose`` and a NAME not starting with ``-``, around
    the cut of split_exec_command.  Anything else (``--help``, abbreviations,
    typos, ``--`` before NAME) gives None, and argparse decides.  Wherever this
    answers, argparse gives the same answer (a property test keeps it so)."""
    if not argv or argv[0] != "exec":
        return None
    head, command = split_exec_command(argv[1:])
    name, verbose = None, False
    for word in head:
        if word in ("-v", "--verbose"):
            verbose = True
        elif word.startswith("-") or name is not None:
            return None
        else:
            name = word
    if name is None:
        return None
    return name, command or [default_shell()], verbose


def default_shell() -> str:
    return os.environ.get("SHELL") or "/bin/sh"


def _add_common(p: argparse.ArgumentParser, with_name: bool = True) -> None:
    if with_name:
        _completes(p.add_argument(
            "-n", "--name", metavar="NAME",
            help="profile name (default: the config file's name without .conf, e.g. wg0); "
            "commands run with the same name share one tunnel",
        ), COMPLETE_CONFIG_NAME)
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
        "--reresolve-after", type=_seconds, default=135.0, metavar="SECONDS",
        help="resolve an Endpoint host name again, on the host, when the peer's last "
        "handshake is older than this, and follow it when it moves (default: 135, like "
        "wireguard-tools' reresolve-dns.sh; 0: never)",
    )
    p.add_argument(
        "--listen-address", type=_ip_text, metavar="IP",
        help="bind the host UDP socket to one address instead of all, e.g. "
        "--listen-address 127.0.0.1 for a server only reachable locally",
    )
    _completes(p.add_argument(
        "--via", metavar="PROFILE",
        help="multi-hop: send this tunnel's encrypted packets through running profile "
        "PROFILE's tunnel (its socket and its endpoint lookups are made in PROFILE), "
        "e.g. --via entry; PROFILE stays up while this one runs",
    ), COMPLETE_PROFILE)


def _command(args: argparse.Namespace) -> list[str]:
    """``run``'s CMD: argparse's remainder, without the ``--`` it keeps."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    return command or [default_shell()]


def exec_request(args: argparse.Namespace) -> tuple[str, list[str], bool]:
    """What ``exec`` was asked, as _exec_fast_path returns it."""
    return args.name, list(args.command) or [default_shell()], args.verbose


def _request(args: argparse.Namespace) -> session.Request:
    from wg_wrap import cli_reach, session

    return session.Request(
        config_path=args.config, name=args.name, dns=tuple(args.dns),
        listen_address=args.listen_address, verbose=args.verbose,
        reresolve_after=args.reresolve_after,
        reach=cli_reach.reach_request(args), via=args.via,
        port_forward=cli_reach.port_forward_request(args),
    )


def dispatch(args: argparse.Namespace) -> int:
    if args.action == "exec":
        from wg_wrap import join

        return join.exec_in(*exec_request(args))
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

        return doctor.print_profile() if args.apparmor_profile else doctor.main()
    if args.action == "demo":
        from wg_wrap import demo

        return demo.main(verbose=args.verbose)
    from wg_wrap import session

    if args.action == "run":
        return session.run(_request(args), _command(args))
    if args.action == "up":
        if args.foreground:
            return session.up_foreground(_request(args), wait=not args.no_wait,
                                         timeout=args.timeout)
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
        if arguments == ["ls"]:  # nothing for argparse to do: no parser to build
            from wg_wrap import status

            return status.show_list()
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
