"""``soundbus wyoming`` (== ``python -m wyoming_server``): flags, their checks, and the loop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
from contextlib import suppress
from urllib.parse import urlparse

from common.cli.main import (
    add_stage_options,
    float_in,
    inputs_of,
    int_in,
    outputs_of,
    socket_options,
    stage_metrics,
    verbosity,
)
from common.errors import UserError
from common.runtime.stage import HealthFile, setup_logging
from common.transport.sockets import DEFAULT_RAW, DEFAULT_RESULT
from common.wire.messages import MAX_STREAM_ID_LEN, is_name, is_text
from common.wire.topics import Kind, topic_for

log = logging.getLogger("wyoming")

DEFAULT_URI = "tcp://127.0.0.1:10400"  # 10400: the port Wyoming wake-word services use by convention


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser(
        "wyoming",
        help="Wyoming wake-word server: every connection a stream on the bus, served in shared batches",
        description=(
            "Serve wake-word detection over the Wyoming protocol (Home Assistant). Each connection's audio "
            "goes on the bus as a raw stream; convert and a `classify --model wakeword` worker (here or on "
            "other machines) score all connections together, and each connection gets its own answers."
        ),
    )
    add_stage_options(p, inputs=None, outputs=DEFAULT_RAW)  # our bound is --max-clients, not --max-streams
    p.add_argument("--input", action="append", metavar="ADDR",
                   help=f"where the wakeword worker publishes results; repeat for several (default {DEFAULT_RESULT}; "
                   "'@ADDR' binds instead)")
    p.set_defaults(default_inputs=[DEFAULT_RESULT])
    p.add_argument("--uri", default=DEFAULT_URI,
                   help=f"where Wyoming clients connect: tcp://HOST:PORT or unix://PATH (default {DEFAULT_URI}; "
                   "tcp://0.0.0.0:10400 for Home Assistant on another machine)")
    p.add_argument("--model-name", default="wakeword", metavar="NAME",
                   help="the classify worker's model name in its result topics (default wakeword)")
    p.add_argument("--wake-words", metavar="A,B,...",
                   help="labels of that model to offer (default: the wakeword model's: alexa, hey_jarvis, "
                   "hey_mycroft, hey_rhasspy, weather)")
    p.add_argument("--threshold", type=float_in(0.01, 1.0), default=0.5,
                   help="score at which a wake word is detected (default 0.5)")
    p.add_argument("--trigger-level", type=int_in(1, 100), default=1, metavar="N",
                   help="windows in a row at or above the threshold before a detection (default 1)")
    p.add_argument("--frame-ms", type=float_in(1, 1000, "ms"), default=80.0,
                   help="length of the raw messages published, counted from audio-start (default 80: the "
                   "wakeword model's hop, so each message completes a window)")
    p.add_argument("--max-clients", type=int_in(1, 4096), default=64, metavar="N",
                   help="connections served at once; more are refused with an error (default 64)")
    p.add_argument("--idle-timeout", type=float_in(0, 86400, "s"), default=60.0, metavar="S",
                   help="close a connection that sends nothing for S seconds (default 60, 0: never)")
    p.add_argument("--stop-timeout", type=float_in(0.1, 600, "s"), default=5.0, metavar="S",
                   help="after audio-stop, wait at most S seconds for the last result (default 5)")
    p.add_argument("--stream-prefix", default="wy", metavar="ID",
                   help="bus stream ids are ID-0, ID-1, ... (one per connection slot; default wy). Give each "
                   "server its own when several share workers")
    p.add_argument("--zeroconf", nargs="?", const="", default=None, metavar="NAME",
                   help="announce the server over mDNS as _wyoming._tcp (Home Assistant discovery); NAME "
                   "defaults to soundbus-<hostname>")
    p.add_argument("--summary-every", type=float_in(0.1, 86400, "s"), default=10.0, metavar="S",
                   help="log a counter summary every S seconds (default 10)")
    p.set_defaults(func=_main, parser=p)


def _wake_words(text: str | None) -> tuple[str, ...]:
    if text is None:
        from classify.models.wakeword import WAKEWORDS

        return WAKEWORDS
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    if not words or any(not is_text(w) or len(w) > 128 for w in words):
        raise UserError("--wake-words: give the model's labels separated by commas, e.g. hey_jarvis,alexa.")
    return words


def _check_uri(uri: str) -> tuple[str, int | None]:
    """(scheme, port) of a usable --uri."""
    u = urlparse(uri)
    if u.scheme == "tcp":
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None:
            raise UserError(f"--uri {uri!r}: give a host and a port, e.g. tcp://0.0.0.0:10400.")
        return "tcp", port
    if u.scheme == "unix" and u.path:
        return "unix", None
    raise UserError(f"--uri {uri!r}: use tcp://HOST:PORT or unix://PATH.")


def _require(module: str, why: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise UserError(f"{why} needs the package {module}: pip install 'soundbus[wyoming]'.") from None


def _main(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    _require("wyoming", "soundbus wyoming")
    if args.zeroconf is not None:
        _require("zeroconf", "--zeroconf")
    from wyoming_server.session import SessionConfig
    from wyoming_server.server import ServerConfig

    scheme, port = _check_uri(args.uri)
    if args.zeroconf is not None and scheme != "tcp":
        raise UserError("--zeroconf announces a TCP server: use --uri tcp://HOST:PORT.")
    last = f"{args.stream_prefix}-{args.max_clients - 1}"
    if not is_name(args.stream_prefix) or len(last) > MAX_STREAM_ID_LEN:
        raise UserError("--stream-prefix: letters, digits, '.', '_', '-' only (not first), short enough for "
                        f"{last!r} to fit {MAX_STREAM_ID_LEN} characters.")
    if not is_name(args.model_name):
        raise UserError("--model-name: the classify worker's model name (letters, digits, '.', '_', '-').")
    cfg = ServerConfig(
        session=SessionConfig(served=_wake_words(args.wake_words), threshold=args.threshold,
                              trigger_level=args.trigger_level, frame_ms=args.frame_ms),
        stream_prefix=args.stream_prefix,
        max_clients=args.max_clients,
        idle_timeout_s=args.idle_timeout,
        stop_timeout_s=args.stop_timeout,
    )
    run = Run(args, cfg, port)
    try:
        asyncio.run(run.main())
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    return 0


class Run:
    """The server's one asyncio loop: start, serve until a signal, stop in order."""

    def __init__(self, args: argparse.Namespace, cfg, port: int | None) -> None:
        self.args, self.cfg, self.port = args, cfg, port

    async def main(self) -> None:
        from wyoming.server import AsyncServer

        from wyoming_server.bus import Bus
        from wyoming_server.server import WakeServer

        args, cfg = self.args, self.cfg
        metrics = stage_metrics(args, "wyoming", summary_every_s=args.summary_every)
        topics = [topic_for(Kind.RESULT, f"{cfg.stream_prefix}-{i}", args.model_name) for i in range(cfg.max_clients)]
        bus = Bus(outputs_of(args), inputs_of(args), topics, socket_options(args), metrics)
        srv = WakeServer(cfg, bus, metrics)
        wserver = AsyncServer.from_uri(args.uri)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        tasks: list[asyncio.Task] = []
        announcement = None
        try:
            try:
                await wserver.start(srv.handler)
            except OSError as e:
                raise UserError(f"cannot listen on {args.uri} ({e.strerror or e}); choose another --uri, "
                                "or stop what uses it.") from None
            tasks = [asyncio.create_task(c) for c in
                     (bus.watch_subscriptions(), bus.receive(srv.dispatch), self._housekeeping(srv, metrics))]
            if args.zeroconf is not None:
                announcement = await self._announce(args.zeroconf)
            log.info("ready uri=%s wake_words=%s model=%s inputs=%s outputs=%s max_clients=%d", args.uri,
                     ",".join(cfg.session.served), args.model_name, ",".join(inputs_of(args)),
                     ",".join(outputs_of(args)), cfg.max_clients)
            await stop.wait()
        finally:
            log.info("stopping")
            await wserver.stop()
            await _drain(srv, 1.0)  # connections publish their END
            for t in tasks:
                t.cancel()
            for t in tasks:
                with suppress(asyncio.CancelledError):
                    await t
            if announcement is not None:
                await announcement.close()
            bus.close()
            log.info("%s %s", metrics.summary(), srv.summary())

    async def _announce(self, name: str):
        from wyoming_server.announce import Announcement, advertised_address, default_name

        host = urlparse(self.args.uri).hostname or ""
        a = Announcement(name or default_name(), self.port, advertised_address(host))
        try:
            await a.register()
        except Exception as e:  # noqa: BLE001 - no multicast here must not stop the server
            log.warning("zeroconf announcement failed (%s: %s); add the server in Home Assistant by host and port",
                        type(e).__name__, e)
            await a.close()
            return None
        return a

    async def _housekeeping(self, srv, metrics) -> None:
        health = HealthFile(self.args.health_file, "wyoming", idle_s=math.inf) if self.args.health_file else None
        while True:
            await asyncio.sleep(0.5)
            metrics.maybe_log_summary(srv.summary())
            if health is not None:
                health.write(_HealthView(srv), metrics)


class _HealthView:
    """What common's HealthFile reads: healthy while a subscriber (convert) takes our raw audio."""

    def __init__(self, srv) -> None:
        self.received = srv.bus.received
        self.connected = srv.bus.subscribers


async def _drain(srv, timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while srv.handlers and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)

