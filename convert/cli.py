"""``soundbus convert`` (== ``python -m convert``): flags and their checks."""

from __future__ import annotations

import argparse

from common.cli import (
    add_stage_options,
    inputs_of,
    outputs_of,
    parse_shard,
    socket_options,
    verbosity,
)
from common.metrics import StageMetrics
from common.sockets import DEFAULT_RAW, DEFAULT_TENSOR
from common.stage import setup_logging
from convert.formats import ChannelMap
from convert.resample import MAX_RATE_HZ, MIN_RATE_HZ, QUALITIES
from convert.worker import DEFAULT_FRAME_MS, DEFAULT_RATE, ConvertConfig, run

MAX_GAP_FILL_MS = 10_000.0


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser(
        "convert",
        help="raw PCM frames -> float32 (channels, frames) tensors at a model's rate",
        description=(
            "Subscribe to raw frames, scale them by full scale (never by peak), map channels, resample each "
            "stream with a streaming resampler and publish fixed-length float32 planar frames."
        ),
    )
    add_stage_options(p, inputs=DEFAULT_RAW, outputs=DEFAULT_TENSOR)
    p.add_argument("--rate", type=int, default=DEFAULT_RATE, help=f"output sample rate in Hz (default {DEFAULT_RATE})")
    p.add_argument(
        "--channels",
        default="mono",
        help="keep | mono (mean of all channels) | N,M,... 0-based input channels to keep (default mono)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--frame-ms", type=float, help=f"output frame length in ms (default {DEFAULT_FRAME_MS:g}: 512 samples at 16 kHz)"
    )
    size.add_argument("--frame-samples", type=int, help="output frame length in samples per channel")
    p.add_argument(
        "--quality",
        choices=QUALITIES,
        default="HQ",
        help="resampling: a soxr quality (VHQ..QQ), or LD = low delay, a polyphase FIR that holds back only its "
        "~1.3 ms look-ahead (soxr HQ: 6-37 ms at 20 ms chunks), 80 dB stopband, 3-8x HQ's CPU (default HQ)",
    )
    p.add_argument("--gain-db", type=float, default=0.0, help="fixed gain in dB (default 0); clipped samples are counted")
    p.add_argument("--dc-remove", action="store_true", help="remove DC with a 10 Hz first-order high-pass (needs scipy)")
    p.add_argument(
        "--gap-fill-ms",
        type=float,
        default=100.0,
        help="bridge input gaps up to this long with silence; longer gaps reset the stream (default 100, 0: always reset)",
    )
    p.add_argument("--shard", type=parse_shard, metavar="I/N", help="convert only streams of shard I of N (0-based)")
    p.add_argument(
        "--idle-flush-s", type=float, default=2.0, help="publish a silent stream's buffered tail after this (default 2)"
    )
    p.add_argument(
        "--summary-every", type=float, default=10.0, metavar="S", help="log a counter summary every S seconds (default 10)"
    )
    p.set_defaults(func=_main, parser=p)


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """Validate the flags into a ConvertConfig (parser.error on a bad value: exit code 2)."""
    p: argparse.ArgumentParser = args.parser
    if not MIN_RATE_HZ <= args.rate <= MAX_RATE_HZ:
        p.error(f"--rate must be between {MIN_RATE_HZ} and {MAX_RATE_HZ} Hz, got {args.rate}")
    try:
        cmap = ChannelMap.parse(args.channels)
    except ValueError as e:
        p.error(f"--channels: {e}")
    if args.frame_samples is not None:
        frame = args.frame_samples
    else:
        ms = args.frame_ms if args.frame_ms is not None else DEFAULT_FRAME_MS
        frame = round(args.rate * ms / 1000)
    if not 1 <= frame <= args.rate * 10:
        p.error(f"output frame must be 1 sample to 10 s long, got {frame} samples at {args.rate} Hz")
    if not -120.0 <= args.gain_db <= 60.0:
        p.error(f"--gain-db must be between -120 and 60, got {args.gain_db}")
    if not 0.0 <= args.gap_fill_ms <= MAX_GAP_FILL_MS:
        p.error(f"--gap-fill-ms must be between 0 and {MAX_GAP_FILL_MS:g}, got {args.gap_fill_ms}")
    if args.idle_flush_s <= 0 or args.summary_every <= 0:
        p.error("--idle-flush-s and --summary-every must be positive")
    return ConvertConfig(
        rate=args.rate,
        channels=cmap,
        frame_samples=frame,
        quality=args.quality,
        gain_db=args.gain_db,
        dc_remove=args.dc_remove,
        gap_fill_ms=args.gap_fill_ms,
    )


def _main(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    cfg = config_from_args(args)
    if cfg.dc_remove:
        from convert.stream import DCBlocker

        DCBlocker(cfg.rate, 1)  # fail now, with a clear message, if scipy is missing
    metrics = StageMetrics("convert", port=args.metrics_port, summary_every_s=args.summary_every)
    return run(
        cfg,
        inputs_of(args),
        outputs_of(args),
        socket_options(args),
        metrics,
        shard=args.shard,
        idle_flush_s=args.idle_flush_s,
    )
