"""``soundbus capture`` (== ``python -m capture``) and ``soundbus devices``."""

from __future__ import annotations

import argparse
import logging
import sys

from capture.framer import samples_for_ms
from capture.sources import make_source
from capture.sources.base import CaptureOptions
from capture.spec import parse_sources
from common.cli.main import (
    add_stage_options,
    float_in,
    int_in,
    outputs_of,
    socket_options,
    stage_metrics,
    verbosity,
)
from common.errors import UserError
from common.runtime.stage import StopFlag, setup_logging
from common.transport.sockets import DEFAULT_RAW
from common.wire.messages import MAX_CHANNELS, MAX_PAYLOAD_BYTES, MAX_RATE_HZ, SAMPLE_WIDTH, SampleFormat

log = logging.getLogger("capture")

SOURCE_HELP = (
    "what to capture (repeat for several streams): file:PATH, device[:NAME_OR_INDEX], default, loopback[:SINK], "
    "pipe:FORMAT:RATE:CHANNELS (raw PCM on stdin), url:URL (via ffmpeg), synth:tone[:HZ]|noise|silence; "
    "append #ID to name the stream (default: the default input device)"
)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "capture",
        help="capture audio from devices, loopback, files, pipes or URLs and publish raw chunks",
        description="Capture audio and publish raw PCM chunks (protocol v2, topic raw/...). See docs/capture.md.",
    )
    p.add_argument("--source", action="append", metavar="SPEC", help=SOURCE_HELP)
    p.add_argument("--stream", action="append", metavar="ID", help="stream id of the n-th --source (repeat in order)")
    p.add_argument("--chunk-ms", "--frame-ms", dest="chunk_ms", type=float_in(0.1, 1000, "ms"), default=20.0,
                   metavar="MS", help="audio per message in ms (default 20; 10 for the lowest latency, 20-80 usual)")
    p.add_argument("--fast", action="store_true", help="files/synth: publish as fast as possible, not in real time")
    p.add_argument("--loop", action="store_true", help="files/synth/url: start over at the end (new epoch)")
    p.add_argument("--wait-subscriber", type=float_in(0, 86400, "s"), default=10.0, metavar="SECONDS",
                   help="files/pipes/urls/synth: wait this long for a first subscriber (default 10; 0: don't wait)")
    p.add_argument("--subscribers", type=int_in(1, 1000), default=1, metavar="N",
                   help="files/pipes/urls/synth: wait for N subscribers (e.g. two converters at different rates) "
                   "before starting, up to --wait-subscriber seconds (default 1)")
    p.add_argument("--format", choices=("s16", "s32", "f32"), help="devices/synth/url: sample format (default s16)")
    p.add_argument("--rate", type=int_in(1, MAX_RATE_HZ), metavar="HZ",
                   help="devices/synth/url: sample rate (default: device's default rate, 16000 for synth, "
                        "the stream's own for url)")
    p.add_argument("--channels", type=int_in(1, MAX_CHANNELS), metavar="N",
                   help="devices/synth/url: channels (default 1; url: the stream's own)")
    p.add_argument("--duration", type=float_in(0.001, 365 * 86400, "s"), metavar="SECONDS",
                   help="synth: stop after this long (END flag)")
    p.add_argument("--watchdog", type=float_in(0.1, 86400, "s"), default=5.0, metavar="SECONDS",
                   help="log 'no audio for N s' (and reopen a device) after this long without audio (default 5)")
    p.add_argument("--heartbeat", type=float_in(0.05, 3600, "s"), default=1.0, metavar="SECONDS",
                   help="heartbeat period per stream (default 1)")
    add_stage_options(p, inputs=None, outputs=DEFAULT_RAW)
    p.set_defaults(func=run_capture)

    d = sub.add_parser("devices", help="list audio input devices (and loopback/monitor sources)",
                       description="List input devices: index, name, channels, default rate, host API.")
    d.add_argument("--json", action="store_true", help="one JSON object per device")
    d.set_defaults(func=run_devices)


def options_from(args: argparse.Namespace) -> CaptureOptions:
    return CaptureOptions(
        chunk_ms=args.chunk_ms,
        fast=args.fast,
        loop=args.loop,
        rate=args.rate,
        channels=args.channels,
        format=args.format,
        watchdog_s=args.watchdog,
        duration_s=args.duration,
    )


def check_message_size(sources: list, chunk_ms: float) -> None:
    """A publisher never sends what its peers must refuse: each source's chunk must fit a message."""
    for src in sources:
        f = src.fmt
        n = samples_for_ms(f.rate, chunk_ms)
        size = n * f.channels * SAMPLE_WIDTH[SampleFormat(f.format)]
        if size > MAX_PAYLOAD_BYTES:
            most = MAX_PAYLOAD_BYTES / (f.rate * f.channels * SAMPLE_WIDTH[SampleFormat(f.format)]) * 1000
            raise UserError(f"stream {src.stream}: {chunk_ms:g} ms of {f.rate} Hz x {f.channels} ch {f.format} is "
                            f"{size} bytes per message, over the {MAX_PAYLOAD_BYTES}-byte limit; use --chunk-ms "
                            f"{int(most)} or less.")


def run_capture(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    from capture.runner import run

    stop = StopFlag()
    opts = options_from(args)
    specs = parse_sources(args.source or ["default"], args.stream or [])
    sources = [make_source(s, opts) for s in specs]
    fixed = [s.text for s in specs if s.kind in ("file", "pipe")]
    if fixed and (args.rate or args.channels or args.format):
        log.warning("--rate/--channels/--format do not apply to %s: published as stored (convert resamples)",
                    ", ".join(fixed))
    for src in sources:
        src.prepare()
    check_message_size(sources, opts.chunk_ms)
    outputs, sockopts = outputs_of(args), socket_options(args)
    if opts.fast:
        # As fast as possible: a full subscriber queue makes the source wait instead of dropping chunks.
        sockopts.nodrop = True
    return run(sources, outputs, sockopts, stage_metrics(args, "capture"), chunk_ms=opts.chunk_ms,
               wait_subscriber_s=args.wait_subscriber, heartbeat_s=args.heartbeat, watchdog_s=opts.watchdog_s,
               health_file=args.health_file, stop=stop, subscribers=args.subscribers)


def run_devices(args: argparse.Namespace) -> int:
    from capture.devices import print_devices

    return print_devices(json_lines=args.json)
