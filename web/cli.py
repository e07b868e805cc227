"""``soundbus web``: flags, access, and the stage's ``run``.

The stage's loop (common.runtime: ZeroMQ in, validated) runs in the main thread and feeds
the board; aiohttp serves the page from its own thread (web.server). The token never comes
from argv: ``--token-file`` or ``$SOUNDBUS_WEB_TOKEN``. Listening on anything but loopback
without one is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from pathlib import Path

from common.cli.main import add_stage_options, float_in, inputs_of, int_in, socket_options, stage_metrics, verbosity
from common.errors import UserError
from common.runtime.stage import Runtime, StopFlag, setup_logging
from common.transport.sockets import DEFAULT_RESULT
from common.wire.messages import is_name
from common.wire.topics import Kind, topic_for
from web.auth import ENV_TOKEN, Access, is_loopback, read_token
from web.board import Board
from web.history import StoreReader
from web.logic import WebConfig, WebLogic
from web.paced import PacedInput
from web.server import WebServer, bind_socket
from web.spectrum import DB_CEIL, DB_FLOOR

log = logging.getLogger("soundbus.web")

DEFAULT_LISTEN = "127.0.0.1:8550"
EVENTS_DIR_ENV = "SOUNDBUS_EVENTS_DIR"
KINDS = (Kind.RESULT, Kind.TENSOR, Kind.EVENT, Kind.HEARTBEAT)
DRAIN_EVERY_S = 0.025  # the loop takes what arrived every 25 ms at most (web.paced): few wake-ups at 16 streams


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "web",
        allow_abbrev=False,
        help="a live web view: spectrograms, levels, labels, events with their clips, pipeline health",
        description="Serve one page that shows every stream live (level, log-mel spectrogram, labels per model, "
        "onset/offset timeline), the event store's history with playable clips, and the pipeline's health. "
        "Subscribe to convert's tensors (spectrogram, level), the classifiers' results, the event store's "
        "stored events and capture's heartbeats with --input (repeat it). Read-only; listens on 127.0.0.1 "
        f"unless told otherwise, and then needs a token (--token-file or ${ENV_TOKEN}). See docs/web.md.",
    )
    add_stage_options(p, inputs=DEFAULT_RESULT, outputs=None)
    p.set_defaults(max_streams=64)
    w = p.add_argument_group("web")
    w.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks a free one; an address other "
                        "than loopback needs a token)")
    w.add_argument("--token-file", type=Path, metavar="PATH",
                   help=f"file holding the token the page asks for (default ${ENV_TOKEN}, if set); required to "
                        "listen on anything but loopback")
    w.add_argument("--tls-cert", type=Path, metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    w.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM, no passphrase)")
    w.add_argument("--events-dir", type=Path, metavar="DIR",
                   help=f"the event store's directory (`soundbus events run --dir`; default ${EVENTS_DIR_ENV} if "
                        "set): history and clips come from it, read-only")
    w.add_argument("--stage-health", type=Path, action="append", metavar="PATH",
                   help="another stage's --health-file to show on the page (repeatable)")
    w.add_argument("--stream", action="append", metavar="S", help="only this stream (repeatable)")
    w.add_argument("--update-hz", type=float_in(1, 30, "per second"), default=10.0, metavar="HZ",
                   help="updates sent to each browser per second, at most (default 10)")
    w.add_argument("--columns-hz", type=int_in(5, 50), default=25, metavar="HZ",
                   help="spectrogram columns per second (default 25)")
    w.add_argument("--bands", type=int_in(16, 128), default=64, metavar="N", help="mel bands (default 64)")
    w.add_argument("--max-clients", type=int_in(1, 1000), default=64, metavar="N",
                   help="browsers connected at once; more are refused (default 64)")
    p.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); a UserError names what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise UserError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8550 or 0.0.0.0:8550.")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--listen {text!r}: the port must be a number from 0 to 65535 (0: any free port).")
    return host, int(port)


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together: give both PEM files.")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"cannot load --tls-cert {cert} / --tls-key {key} "
                        f"({getattr(e, 'strerror', None) or e}); give PEM files, the key without a passphrase.") from None
    return ctx


def subscriptions(streams: list[str] | None) -> list[bytes]:
    """Topic prefixes: every kind the view shows, for every stream or only those named."""
    if not streams:
        return [topic_for(k) for k in KINDS]
    for s in streams:
        if not is_name(s) or len(s) > 64:
            raise UserError(f"--stream {s[:80]!r}: a stream id is 1-64 letters, digits, '.', '_' or '-'.")
    return [topic_for(k, s) for k in KINDS for s in streams]


def run(args: argparse.Namespace) -> int:
    """Serve the view until stopped (Ctrl-C, SIGTERM)."""
    setup_logging(verbosity(args))
    host, port = parse_listen(args.listen)
    token = read_token(args.token_file)
    loopback = is_loopback(host)
    if not loopback and token is None:
        raise UserError(f"--listen {args.listen} serves other hosts: give a token with --token-file PATH or "
                        f"${ENV_TOKEN} (at least 16 characters); the page asks for it.")
    ctx = tls_context(args.tls_cert, args.tls_key)
    events_dir = args.events_dir or (Path(os.environ[EVENTS_DIR_ENV]) if os.environ.get(EVENTS_DIR_ENV) else None)
    store = StoreReader(events_dir) if events_dir is not None else None
    inputs, prefixes, opts = inputs_of(args), subscriptions(args.stream), socket_options(args)
    for path in args.stage_health or []:
        if not path.parent.is_dir():
            raise UserError(f"--stage-health {path}: no directory {path.parent}; give the path a stage's "
                            "--health-file writes.")
    cfg = WebConfig(update_hz=args.update_hz, col_hz=args.columns_hz, bands=args.bands,
                    ring=20 * args.columns_hz, max_streams=args.max_streams)
    board = Board(cfg.ring, cfg.bands, cfg.max_streams)
    access = Access(token=token, loopback_only=loopback, tls=ctx is not None)
    sock = bind_socket(host, port)
    hello = {"version": 1, "bands": cfg.bands, "col_hz": cfg.col_hz, "ring": cfg.ring, "db": [DB_FLOOR, DB_CEIL],
             "update_hz": cfg.update_hz, "store": store is not None, "idle_s": cfg.idle_s}
    server = WebServer(board, access, sock, hello, store, cfg.update_hz, args.max_clients, ctx)
    metrics = stage_metrics(args, "web")
    stop = StopFlag()
    with Runtime("web", metrics, stop, args.health_file) as rt:
        inbox = rt.inbox(inputs, prefixes, opts)

        def outside() -> dict:
            return {**server.stats(), "inputs": inputs, "inputs_connected": inbox.connected,
                    "store": str(store.dir) if store else None}

        logic = WebLogic(board, cfg, metrics, args.stage_health, outside)
        server.start()
        try:
            if not loopback and ctx is None:
                log.warning("serving other hosts over plain HTTP: the token and the view travel in clear; use "
                            "--tls-cert/--tls-key, a TLS reverse proxy or an SSH tunnel")
            print(f"soundbus web: serving {server.url}", file=sys.stderr, flush=True)
            log.info("ready %s inputs=%s store=%s", server.url, ",".join(inputs), store.dir if store else "none")
            rt.run(logic, PacedInput(inbox, DRAIN_EVERY_S), None)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":  # python -m web.cli ARGS == soundbus web ARGS
    from common.cli.main import standalone

    standalone(register, "web")
