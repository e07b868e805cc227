"""The ``soundbus`` command: subcommands contributed by each package.

Packages register their subcommands through the ``soundbus.commands`` entry-point group
(see pyproject.toml): each entry point is ``register(subparsers)``, which adds parsers
whose ``func(args) -> int`` runs the command. So ``common`` never imports a stage, and
each stage also runs on its own as ``python -m capture|convert|classify``.

Flags shared by every stage are added here by :func:`add_stage_options`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Sequence

from common.errors import UserError
from common.observe.metrics import StageMetrics
from common.runtime.streams import DEFAULT_MAX_STREAMS
from common.transport.sockets import MAX_HWM, CurveConfig, SocketOptions, check_endpoint, split_endpoint

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
    except UserError as e:  # a mistake the user can fix: one sentence, exit 2 (like argparse), no traceback
        print(e, file=sys.stderr)
        return e.exit_code


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
    g.add_argument("--hwm", type=int_in(1, MAX_HWM), default=1000,
                   help="messages queued per peer before dropping (default 1000)")
    g.add_argument("--curve-secret", type=Path, metavar="FILE", help="this side's NAME.key_secret: turns on CURVE")
    g.add_argument("--curve-server", type=Path, metavar="FILE",
                   help="public .key of the side we connect to: encrypts the connecting sockets")
    g.add_argument("--curve-allow", type=Path, metavar="DIR",
                   help="directory of client .key files allowed to connect: encrypts the bound sockets")
    g.add_argument("--metrics-port", type=int_in(1, 65535), metavar="PORT",
                   help="serve Prometheus metrics on 127.0.0.1:PORT (the address from SOUNDBUS_METRICS_ADDR if set, "
                   "e.g. 0.0.0.0 in a container)")
    g.add_argument("--health-file", type=Path, metavar="PATH", default=os.environ.get("SOUNDBUS_HEALTH_FILE") or None,
                   help="rewrite PATH about once a second with this stage's health as JSON (`soundbus health PATH`; "
                   "default $SOUNDBUS_HEALTH_FILE)")
    if inputs is not None:
        g.add_argument("--max-streams", type=int_in(1, 1_000_000), default=DEFAULT_MAX_STREAMS, metavar="N",
                       help=f"streams held at once; more are refused and counted (default {DEFAULT_MAX_STREAMS})")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def inputs_of(args: argparse.Namespace) -> list[str]:
    """The --input addresses (checked: a bad one is a UserError naming it)."""
    addrs = args.input or args.default_inputs
    for a in addrs:
        bind, addr = split_endpoint(a, False)
        check_endpoint(addr, bind)
    return addrs


def outputs_of(args: argparse.Namespace) -> list[str]:
    """The --output addresses (checked)."""
    addrs = args.output or args.default_outputs
    for a in addrs:
        bind, addr = split_endpoint(a, True)
        check_endpoint(addr, bind)
    return addrs


def socket_options(args: argparse.Namespace) -> SocketOptions:
    """SocketOptions from the shared flags."""
    curve = None
    if args.curve_secret is not None:
        if args.curve_server is None and args.curve_allow is None:
            raise UserError(
                "--curve-secret needs --curve-allow DIR (clients allowed on the addresses this stage binds) "
                "and/or --curve-server KEY (the public key of what it connects to)."
            )
        curve = CurveConfig(args.curve_secret, args.curve_server, args.curve_allow)
    elif args.curve_server is not None or args.curve_allow is not None:
        raise UserError("--curve-server/--curve-allow need --curve-secret (this side's NAME.key_secret).")
    return SocketOptions(hwm=args.hwm, curve=curve)


def stage_metrics(args: argparse.Namespace, stage: str, summary_every_s: float = 10.0) -> StageMetrics:
    return StageMetrics(stage, port=args.metrics_port, summary_every_s=summary_every_s)


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi], else a message naming the range."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}-{hi}")
        return v

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, unit: str = "") -> Callable[[str], float]:
    """argparse type: a finite number in [lo, hi] (nan and inf refused), else a message naming the range."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{unit and ' of ' + unit}, got {text!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text} is outside {lo:g}-{hi:g}{unit and ' ' + unit}")
        return v

    parse.__name__ = "number"
    return parse


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
