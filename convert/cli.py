"""``soundbus convert`` (== ``python -m convert``): flags and their checks."""

from __future__ import annotations

import argparse

from common.cli.main import (
    add_stage_options,
    float_in,
    inputs_of,
    int_in,
    outputs_of,
    parse_shard,
    socket_options,
    stage_metrics,
    verbosity,
)
from common.errors import UserError
from common.runtime.stage import setup_logging
from common.transport.sockets import DEFAULT_RAW, DEFAULT_TENSOR
from common.wire.messages import MAX_CHUNK_S
from convert.formats import ChannelMap
from convert.resample import MAX_RATE_HZ, MIN_RATE_HZ, QUALITIES
from convert.stream import ConvertConfig
from convert.worker import DEFAULT_CHUNK_MS, DEFAULT_GATHER_MS, DEFAULT_RATE, StageOptions, run

MAX_GAP_FILL_MS = 10_000.0


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = subparsers.add_parser(
        "convert",
        help="raw PCM chunks -> float32 (channels, samples) tensors at a model's rate",
        description=(
            "Subscribe to raw audio, scale it by full scale (never by peak), map channels, resample each "
            "stream with a streaming resampler and publish fixed-length float32 planar chunks."
        ),
    )
    add_stage_options(p, inputs=DEFAULT_RAW, outputs=DEFAULT_TENSOR)
    p.add_argument("--rate", type=int_in(MIN_RATE_HZ, MAX_RATE_HZ), default=DEFAULT_RATE,
                   help=f"output sample rate in Hz (default {DEFAULT_RATE})")
    p.add_argument(
        "--channels",
        default="mono",
        help="keep | mono (mean of all channels) | N,M,... 0-based input channels to keep (default mono)",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--chunk-ms", "--frame-ms", dest="chunk_ms", type=float_in(0.01, MAX_CHUNK_S * 1000, "ms"),
                      help=f"output chunk length in ms (default {DEFAULT_CHUNK_MS:g}: 512 samples at 16 kHz)")
    size.add_argument("--chunk-samples", "--frame-samples", dest="chunk_samples", type=int_in(1, 10 * MAX_RATE_HZ),
                      help="output chunk length in samples per channel")
    p.add_argument(
        "--quality",
        choices=QUALITIES,
        default="HQ",
        help="resampling: a soxr quality (VHQ..QQ), or LD = low delay, a polyphase FIR that holds back only its "
        "~1.3 ms look-ahead (soxr HQ: 6-37 ms at 20 ms chunks), 80 dB stopband, 3-8x HQ's CPU (default HQ)",
    )
    p.add_argument("--gain-db", type=float_in(-120, 60, "dB"), default=0.0,
                   help="fixed gain in dB (default 0); clipped samples are counted")
    p.add_argument("--dc-remove", action="store_true", help="remove DC with a 10 Hz first-order high-pass")
    p.add_argument("--gap-fill-ms", type=float_in(0, MAX_GAP_FILL_MS, "ms"), default=100.0,
                   help="bridge input gaps up to this long with silence; longer gaps restart the stream "
                   "(default 100, 0: always restart)")
    p.add_argument("--shard", type=parse_shard, metavar="I/N", help="convert only streams of shard I of N (0-based)")
    p.add_argument("--batch-wait-ms", type=float_in(0, 100, "ms"), default=DEFAULT_GATHER_MS, metavar="MS",
                   help="after a message arrives, gather others for up to MS before converting them as one "
                   f"batch (default {DEFAULT_GATHER_MS:g}: a capture process's burst of frames; 0: convert what "
                   "each wake-up finds, the lowest latency)")
    p.add_argument("--idle-flush-s", type=float_in(0.01, 3600, "s"), default=2.0,
                   help="publish a silent stream's buffered tail after this (default 2)")
    p.add_argument("--summary-every", type=float_in(0.1, 86400, "s"), default=10.0, metavar="S",
                   help="log a counter summary every S seconds (default 10)")
    p.set_defaults(func=_main, parser=p)


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """Validate the flags into a ConvertConfig (UserError on a bad value: exit code 2)."""
    try:
        cmap = ChannelMap.parse(args.channels)
    except ValueError as e:
        raise UserError(f"--channels: {e}.") from None
    if args.chunk_samples is not None:
        chunk = args.chunk_samples
    else:
        ms = args.chunk_ms if args.chunk_ms is not None else DEFAULT_CHUNK_MS
        chunk = round(args.rate * ms / 1000)
    if not 1 <= chunk <= args.rate * MAX_CHUNK_S:
        raise UserError(f"an output chunk must be 1 sample to {MAX_CHUNK_S} s long, got {chunk} samples at "
                        f"{args.rate} Hz.")
    if cmap.mode == "select" and len(cmap.indices) * chunk * 4 > 16 * 1024 * 1024:
        raise UserError("output chunks would be over 16 MiB: choose fewer channels or a shorter --chunk-ms.")
    return ConvertConfig(
        rate=args.rate,
        channels=cmap,
        chunk_samples=chunk,
        quality=args.quality,
        gain_db=args.gain_db,
        dc_remove=args.dc_remove,
        gap_fill_ms=args.gap_fill_ms,
    )


def _main(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    cfg = config_from_args(args)
    metrics = stage_metrics(args, "convert", summary_every_s=args.summary_every)
    return run(
        cfg,
        inputs_of(args),
        outputs_of(args),
        socket_options(args),
        metrics,
        StageOptions(idle_flush_s=args.idle_flush_s, max_streams=args.max_streams),
        shard=args.shard,
        gather_ms=args.batch_wait_ms,
        health_file=args.health_file,
    )
