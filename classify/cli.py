"""``soundbus classify`` (one model worker) and ``soundbus tail`` (print results)."""

from __future__ import annotations

import argparse
import logging
import sys

from common.cli import add_stage_options, inputs_of, outputs_of, parse_shard, socket_options, stage_metrics, verbosity
from common.sockets import DEFAULT_RESULT, DEFAULT_TENSOR

log = logging.getLogger("classify")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from classify.models import known_models

    p = sub.add_parser(
        "classify",
        help="run one model over tensor streams, publish results",
        description="Run one model over every tensor stream received; publish labelled time spans (results).",
    )
    add_stage_options(p, inputs=DEFAULT_TENSOR, outputs=DEFAULT_RESULT)
    p.add_argument(
        "--model",
        default="vad",
        metavar="NAME",
        help=f"model to run: {', '.join(known_models())}, or MODULE:FACTORY for your own (default vad)",
    )
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N", help="take streams of shard I of N")
    p.add_argument(
        "--max-lag-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="drop (and count) windows whose audio ended longer ago than this, by the wall clock and "
        "behind the stream's newest audio, instead of serving stale results; 0: never (default 1000)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[LABEL=]ON[:OFF]",
        help="event thresholds with hysteresis, e.g. 0.6:0.4 or speech=0.7:0.5 (repeatable; default per model)",
    )
    p.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        metavar="S",
        help="a stream with no tensor for S seconds is flushed like an ended one: last window classified, "
        "labels stopped (default 5; 0: never)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=batch_wait_ms,
        default=5.0,
        metavar="MS",
        help="a ready window waits at most MS for the other live streams' windows, so one model call "
        "serves them all (default 5; 0: classify each window as soon as it is ready)",
    )
    p.add_argument("--top-k", type=int, metavar="K", help="labels per result (default per model)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch/onnx threads (default 1: scale by processes)")
    p.set_defaults(func=run_classify)

    t = sub.add_parser(
        "tail",
        help="print classification results as they arrive",
        description="Print results: a live view on a terminal, plain lines otherwise, JSON lines with --json.",
    )
    add_stage_options(t, inputs=DEFAULT_RESULT, outputs=None)
    t.add_argument("--json", action="store_true", help="one JSON object per result per line")
    t.add_argument("--stream", action="append", metavar="S", help="only this stream (repeatable)")
    t.add_argument("--model", action="append", metavar="M", help="only this model (repeatable)")
    t.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    t.add_argument("--count", type=int, metavar="N", help="exit after N results")
    t.set_defaults(func=run_tail)


def run_classify(args: argparse.Namespace) -> int:
    import zmq

    from classify.events import parse_threshold
    from classify.models import UnknownModel, known_models, load_model
    from common.stage import StopFlag, setup_logging

    try:
        from classify.worker import ClassifyWorker, WorkerConfig
    except ImportError as e:  # the base install has no torch
        print(f"soundbus: classify needs the classify extra ({e}); install it with "
              f"`pip install -e '.[classify]'` or scripts/install.sh.", file=sys.stderr)
        return 2

    setup_logging(verbosity(args))
    try:
        thresholds = [parse_threshold(t) for t in args.threshold]
    except ValueError as e:
        print(f"soundbus: bad --threshold ({e}); use ON[:OFF] or LABEL=ON[:OFF], e.g. speech=0.6:0.4.", file=sys.stderr)
        return 2
    if args.top_k is not None and args.top_k < 1:
        print(f"soundbus: --top-k must be at least 1, got {args.top_k}.", file=sys.stderr)
        return 2
    stop = StopFlag()
    try:
        model = load_model(args.model)
    except UnknownModel as e:
        print(
            f"soundbus: {e}; known models: {', '.join(known_models())} (or MODULE:FACTORY for your own model).",
            file=sys.stderr,
        )
        return 2
    except ImportError as e:
        print(f"soundbus: model {args.model} needs a package that is not installed ({e}); "
              f"install it (see docs/classify.md) or choose another model.", file=sys.stderr)
        return 2
    _set_threads(args.threads)
    cfg = WorkerConfig(
        inputs=inputs_of(args),
        outputs=outputs_of(args),
        shard=args.shard,
        max_lag_ms=args.max_lag_ms,
        thresholds=thresholds,
        top_k=args.top_k,
        idle_s=args.idle_s,
        batch_wait_ms=args.batch_wait_ms,
        opts=socket_options(args),
    )
    metrics = stage_metrics(args, "classify")
    ctx = zmq.Context()
    try:
        try:
            worker = ClassifyWorker(model, cfg, metrics, ctx)
        except ValueError as e:
            print(f"soundbus: {e}.", file=sys.stderr)
            return 2
        spec = model.spec
        log.info(
            "ready model=%s rate=%d window=%d hop=%d shard=%d/%d inputs=%s outputs=%s",
            spec.name, spec.rate, spec.window, spec.hop, *cfg.shard, ",".join(cfg.inputs), ",".join(cfg.outputs),
        )
        try:
            worker.run(stop)
        finally:
            log.info("%s %s", metrics.summary(), worker.stats())
            worker.close()
    finally:
        model.close()
        ctx.term()
    log.info("stopped")
    return 0


MAX_BATCH_WAIT_MS = 1000.0


def batch_wait_ms(text: str) -> float:
    """``--batch-wait-ms``: a finite number of ms in [0, MAX_BATCH_WAIT_MS] (argparse type)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0.0 <= v <= MAX_BATCH_WAIT_MS:  # also False for nan
        raise argparse.ArgumentTypeError(
            f"{text} ms is outside 0-{MAX_BATCH_WAIT_MS:g}; a window should not wait longer than a second for a batch"
        )
    return v


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def run_tail(args: argparse.Namespace) -> int:
    from classify.tail import run

    return run(args)
