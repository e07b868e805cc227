"""``soundbus capture`` (== ``python -m capture``) and ``soundbus devices``."""

from __future__ import annotations

import argparse
import logging
import sys

from capture.errors import CaptureError
from capture.sources import make_source
from capture.sources.base import CaptureOptions
from capture.spec import check_rate_channels, parse_sources
from common.cli import add_stage_options, outputs_of, socket_options, stage_metrics, verbosity
from common.sockets import DEFAULT_RAW
from common.stage import StopFlag, setup_logging

log = logging.getLogger("capture")

SOURCE_HELP = (
    "what to capture (repeat for several streams): file:PATH, device[:NAME_OR_INDEX], default, loopback[:SINK], "
    "pipe:FORMAT:RATE:CHANNELS (raw PCM on stdin), url:URL (via ffmpeg), synth:tone[:HZ]|noise|silence; "
    "append #ID to name the stream (default: the default input device)"
)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "capture",
        help="capture audio from devices, loopback, files, pipes or URLs and publish raw frames",
        description="Capture audio and publish raw PCM frames (protocol v1, topic raw/...). See docs/capture.md.",
    )
    p.add_argument("--source", action="append", metavar="SPEC", help=SOURCE_HELP)
    p.add_argument("--stream", action="append", metavar="ID", help="stream id of the n-th --source (repeat in order)")
    p.add_argument("--frame-ms", type=float, default=20.0, metavar="MS",
                   help="frame length in ms (default 20; 20-80 is usual, 10 costs much per-frame overhead)")
    p.add_argument("--fast", action="store_true", help="files/synth: publish as fast as possible, not in real time")
    p.add_argument("--loop", action="store_true", help="files/synth/url: start over at the end (new epoch)")
    p.add_argument("--wait-subscriber", type=float, default=10.0, metavar="SECONDS",
                   help="files/pipes/urls/synth: wait this long for a first subscriber (default 10; 0: don't wait)")
    p.add_argument("--format", choices=("s16", "s32", "f32"), help="devices/synth/url: sample format (default s16)")
    p.add_argument("--rate", type=int, metavar="HZ",
                   help="devices/synth/url: sample rate (default: device's default rate, 16000 for synth, "
                        "the stream's own for url)")
    p.add_argument("--channels", type=int, metavar="N",
                   help="devices/synth/url: channels (default 1; url: the stream's own)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="synth: stop after this long (END flag)")
    p.add_argument("--watchdog", type=float, default=5.0, metavar="SECONDS",
                   help="log 'no audio for N s' (and reopen a device) after this long without audio (default 5)")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                   help="heartbeat period per stream (default 1)")
    add_stage_options(p, inputs=None, outputs=DEFAULT_RAW)
    p.set_defaults(func=run_capture)

    d = sub.add_parser("devices", help="list audio input devices (and loopback/monitor sources)",
                       description="List input devices: index, name, channels, default rate, host API.")
    d.add_argument("--json", action="store_true", help="one JSON object per device")
    d.set_defaults(func=run_devices)


def options_from(args: argparse.Namespace) -> CaptureOptions:
    if not args.frame_ms > 0 or args.frame_ms > 1000:
        raise CaptureError(f"--frame-ms must be within (0, 1000] ms, got {args.frame_ms}; 20-80 ms is usual.")
    if args.rate is not None or args.channels is not None:
        check_rate_channels(args.rate or 16000, args.channels or 1, "--rate/--channels")
    if args.duration is not None and not args.duration > 0:
        raise CaptureError(f"--duration must be positive, got {args.duration}.")
    if args.wait_subscriber < 0:
        raise CaptureError(f"--wait-subscriber must be >= 0 seconds, got {args.wait_subscriber}.")
    if not args.watchdog > 0 or not args.heartbeat > 0:
        raise CaptureError("--watchdog and --heartbeat must be positive numbers of seconds.")
    return CaptureOptions(
        frame_ms=args.frame_ms,
        fast=args.fast,
        loop=args.loop,
        rate=args.rate,
        channels=args.channels,
        format=args.format,
        watchdog_s=args.watchdog,
        duration_s=args.duration,
    )


def run_capture(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    from capture.runner import CaptureRunner

    stop = StopFlag()
    try:
        opts = options_from(args)
        specs = parse_sources(args.source or ["default"], args.stream or [])
        sources = [make_source(s, opts) for s in specs]
        fixed = [s.text for s in specs if s.kind in ("file", "pipe")]
        if fixed and (args.rate or args.channels or args.format):
            log.warning("--rate/--channels/--format do not apply to %s: published as stored (convert resamples)",
                        ", ".join(fixed))
        for src in sources:
            src.prepare()
    except CaptureError as e:
        print(f"soundbus: {e}", file=sys.stderr)
        return 2
    sockopts = socket_options(args)
    if opts.fast:
        # As fast as possible: a full subscriber queue makes the source wait instead of dropping frames.
        sockopts.nodrop = True
    runner = CaptureRunner(
        sources,
        outputs_of(args),
        sockopts,
        stage_metrics(args, "capture"),
        frame_ms=opts.frame_ms,
        wait_subscriber_s=args.wait_subscriber,
        heartbeat_s=args.heartbeat,
        watchdog_s=opts.watchdog_s,
        fast=opts.fast,
    )
    return runner.run(stop)



def run_devices(args: argparse.Namespace) -> int:
    from capture.devices import print_devices

    return print_devices(json_lines=args.json)
