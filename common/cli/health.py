"""``soundbus health PATH``: is a stage healthy, from the file it rewrites with ``--health-file``.

Container health checks and Kubernetes probes run this every few seconds, so it imports
nothing but the standard library (the ``soundbus`` command takes this path before it
builds its full parser).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, metavar="PATH", help="the stage's --health-file")
    p.add_argument("--max-age", type=_seconds, default=10.0, metavar="S",
                   help="the file must have been written within S seconds (default 10)")
    p.add_argument("--alive", action="store_true",
                   help="only that the stage runs (the file is fresh), not that its input is connected and "
                   "flowing: for liveness probes of shards that may have no streams")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(v) or not 0.5 <= v <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is outside 0.5-3600 s")
    return v


def check(args: argparse.Namespace) -> int:
    """0 when the health file is fresh (and, unless --alive, says ok); 1 with the reason otherwise."""
    try:
        status = json.loads(args.path.read_text())
        age = time.time() - float(status["t"])
        ok = bool(status["ok"])
    except FileNotFoundError:
        why = f"{args.path} does not exist (is the stage running with --health-file {args.path}?)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"{args.path} is not a health file ({e})"
    else:
        if age > args.max_age:
            why = f"stale: written {age:.0f} s ago (the stage is stuck or gone)"
        elif not ok and not args.alive:
            why = ("input not connected" if not status.get("input_connected", True)
                   else f"no input for {status.get('seconds_since_input', '?')} s")
        else:
            if not args.quiet:
                print(f"healthy: {status.get('stage', '?')} in={status.get('messages_in')} "
                      f"out={status.get('messages_out')}")
            return 0
    if not args.quiet:
        print(f"unhealthy: {why}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="soundbus health", description="Whether a stage is healthy, from the file "
                                "it rewrites with --health-file: exit 0 if so, 1 (with the reason) if not.")
    add_arguments(p)
    return check(p.parse_args(argv))
