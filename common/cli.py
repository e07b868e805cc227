"""The ``soundbus`` command: subcommands contributed by each package.

Packages register their subcommands through the ``soundbus.commands`` entry-point group
(see pyproject.toml): each entry point is ``register(subparsers)``, which adds parsers
whose ``func(args) -> int`` runs the command. So ``common`` never imports a stage, and
each stage also runs on its own as ``python -m capture|convert|classify``.

Flags shared by every stage are added here by :func:`add_stage_options`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Sequence

from common.metrics import StageMetrics
from common.sockets import CurveConfig, SocketOptions

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

COMMAND_GROUP = "soundbus.commands"


def build_parser(registers: Sequence[Register] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundbus",
        description="Real-time audio classification as a pipeline of workers over ZeroMQ.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    if registers is None:
        registers = []
        for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
            try:
                registers.append(ep.load())
            except ImportError as e:  # one broken package must not take every other command down
                print(f"soundbus: commands from {ep.value} are unavailable ({e}); reinstall soundbus.", file=sys.stderr)
    for register in registers:
        register(sub)
    return parser


def run(argv: Sequence[str] | None = None, registers: Sequence[Register] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns its exit code."""
    parser = build_parser(registers)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        # `raise SystemExit("soundbus: what to do")` is how a user error ends a command: exit 2, like argparse.
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


def main() -> None:
    sys.exit(run())


def standalone(register: Register, command: str) -> None:
    """Entry for ``python -m PACKAGE ARGS``: the same as ``soundbus COMMAND ARGS``."""
    sys.exit(run([command, *sys.argv[1:]], registers=[register]))


def add_stage_options(p: argparse.ArgumentParser, inputs: str | None, outputs: str | None) -> None:
    """Flags every stage shares: addresses, sharding, queue bounds, metrics, CURVE, verbosity.

    ``inputs``/``outputs``: default endpoint for --input/--output (None: the stage has none).
    """
    if inputs is not None:
        p.add_argument(
            "--input",
            action="append",
            metavar="ADDR",
            help=f"endpoint to subscribe to; repeat for several (default {inputs}; '@ADDR' binds instead)",
        )
        p.set_defaults(default_inputs=[inputs])
    if outputs is not None:
        p.add_argument(
            "--output",
            action="append",
            metavar="ADDR",
            help=f"endpoint to publish on; repeat for several (default {outputs}; '>ADDR' connects, e.g. to a proxy)",
        )
        p.set_defaults(default_outputs=[outputs])
    g = p.add_argument_group("transport")
    g.add_argument("--hwm", type=int, default=1000, help="messages queued per peer before dropping (default 1000)")
    g.add_argument("--curve-secret", type=Path, metavar="FILE", help="this side's NAME.key_secret: turns on CURVE")
    g.add_argument("--curve-server", type=Path, metavar="FILE",
                   help="public .key of the side we connect to: encrypts the connecting sockets")
    g.add_argument("--curve-allow", type=Path, metavar="DIR",
                   help="directory of client .key files allowed to connect: encrypts the bound sockets")
    g.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT (address from SOUNDBUS_METRICS_ADDR if set, "
                   "e.g. 0.0.0.0 in a container)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def inputs_of(args: argparse.Namespace) -> list[str]:
    return args.input or args.default_inputs


def outputs_of(args: argparse.Namespace) -> list[str]:
    return args.output or args.default_outputs


def socket_options(args: argparse.Namespace) -> SocketOptions:
    """SocketOptions from the shared flags."""
    curve = None
    if args.curve_secret is not None:
        if args.curve_server is None and args.curve_allow is None:
            raise SystemExit(
                "soundbus: --curve-secret needs --curve-allow DIR (clients allowed on the addresses this stage binds) "
                "and/or --curve-server KEY (the public key of what it connects to)."
            )
        curve = CurveConfig(args.curve_secret, args.curve_server, args.curve_allow)
    elif args.curve_server is not None or args.curve_allow is not None:
        raise SystemExit("soundbus: --curve-server/--curve-allow need --curve-secret (this side's NAME.key_secret).")
    if args.hwm < 1:
        raise SystemExit(f"soundbus: --hwm must be at least 1, got {args.hwm}.")
    return SocketOptions(hwm=args.hwm, curve=curve)


def stage_metrics(args: argparse.Namespace, stage: str) -> StageMetrics:
    return StageMetrics(stage, port=args.metrics_port)


def verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else args.verbose


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N): this worker is number I (from 0) of N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard must look like INDEX/COUNT, e.g. 0/2; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= INDEX < COUNT")
    return i, n


if __name__ == "__main__":
    main()
