"""``soundbus proxy`` (the broker of the brokered topology), ``soundbus keys`` (CURVE key pairs) and
``soundbus health`` (a stage's health file, for container health checks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli.main import add_stage_options, socket_options, stage_metrics, verbosity
from common.errors import UserError
from common.runtime.stage import HealthFile, StopFlag, setup_logging
from common.transport.sockets import DEFAULT_PROXY_IN, DEFAULT_PROXY_OUT, check_endpoint


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "proxy",
        help="XSUB/XPUB forwarder: publishers connect to --frontend, subscribers to --backend",
        description=(
            "Brokered topology: every publisher connects to the frontend ('--output >tcp://HOST:5560'), every "
            "subscriber to the backend ('--input tcp://HOST:5561'). Subscriptions are forwarded to the publishers, "
            "so topic filtering still happens where the data is produced. With --curve-secret both sides are CURVE "
            "servers that admit only the clients whose .key files are in --curve-allow."
        ),
    )
    p.add_argument(
        "--frontend",
        action="append",
        metavar="ADDR",
        help=f"where publishers connect (XSUB, binds; repeatable; default {DEFAULT_PROXY_IN})",
    )
    p.add_argument(
        "--backend",
        action="append",
        metavar="ADDR",
        help=f"where subscribers connect (XPUB, binds; repeatable; default {DEFAULT_PROXY_OUT})",
    )
    add_stage_options(p, inputs=None, outputs=None)
    p.set_defaults(func=_proxy)

    k = sub.add_parser(
        "keys",
        help="create a CURVE key pair NAME.key (public) and NAME.key_secret in DIR",
        description="Create a CURVE key pair for one box or stage, and print where each file goes.",
    )
    k.add_argument("dir", type=Path, metavar="DIR", help="directory to write the pair into (created if missing)")
    k.add_argument("name", metavar="NAME", help="key name, e.g. capture-box1 or inference")
    k.set_defaults(func=_keys)

    from common.cli.health import add_arguments, check

    h = sub.add_parser(
        "health",
        help="exit 0 if a stage's --health-file says it is healthy and is fresh, 1 otherwise",
        description="Read the file a stage writes with --health-file (about once a second) and exit 0 when it is "
        "fresh and healthy (input connected, messages flowing), 1 otherwise; for container health checks.",
    )
    add_arguments(h)
    h.set_defaults(func=check)


def _proxy(args: argparse.Namespace) -> int:
    from common.transport.proxy import serve

    setup_logging(verbosity(args))
    opts = socket_options(args)
    for addr in (args.frontend or []) + (args.backend or []):
        if addr.startswith(">"):
            raise UserError(f"the proxy binds both sides, so {addr!r} cannot connect; give the address it "
                            f"listens on ({addr[1:]}) and let publishers and subscribers connect to it.")
        check_endpoint(addr.lstrip("@"), bind=True)
    if opts.curve is not None and opts.curve.allow_dir is None:
        raise UserError("the proxy binds both sides, so CURVE needs --curve-allow DIR of client .key files.")
    stop = StopFlag()
    metrics = stage_metrics(args, "proxy")
    health = HealthFile(args.health_file, "proxy") if args.health_file else None
    return serve(args.frontend or [DEFAULT_PROXY_IN], args.backend or [DEFAULT_PROXY_OUT], opts, metrics, stop,
                 health=health)


def _keys(args: argparse.Namespace) -> int:
    from common.transport.keys import create_keypair

    pub, sec = create_keypair(args.dir, args.name)
    print(
        f"created {pub} (public) and {sec} (secret, mode 600)\n"
        f"- keep {sec.name} on this box only; pass it as --curve-secret {sec}\n"
        f"- if this side binds (a CURVE server): give {pub.name} to every box that connects to it; they pass it "
        f"as --curve-server FILE\n"
        f"- if this side connects (a client): copy {pub.name} into the --curve-allow DIR of each box it connects "
        f"to, then restart that stage (allow lists are read at start)"
    )
    return 0


if __name__ == "__main__":  # python -m common.cli.net proxy|keys|health ... (no other package needed)
    from common.cli.main import run

    sys.exit(run(sys.argv[1:], registers=[register]))
