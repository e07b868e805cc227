"""``soundbus classify`` (one model worker) and ``soundbus tail`` (print results)."""

from __future__ import annotations

import argparse
import logging
import sys

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
from common.transport.sockets import DEFAULT_RESULT, DEFAULT_TENSOR

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
        help=f"model to run: {', '.join(known_models())}, or MODULE:FACTORY for your own (default vad); "
        "birdnet takes options: birdnet:overlap=1.5,min_conf=0.25,... (docs/classify.md)",
    )
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N", help="take streams of shard I of N")
    p.add_argument(
        "--max-lag-ms",
        type=float_in(0, 3_600_000, "ms"),
        default=1000.0,
        metavar="MS",
        help="drop (and count) windows that are this much later than the stream's usual delivery delay "
        "(now - window end - the smallest delay seen; a clock offset between boxes cancels out), instead "
        "of serving stale results after a stall; 0: never (default 1000)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="[LABEL=]ON[:OFF]",
        help="event thresholds with hysteresis, e.g. 0.6:0.4 or speech=0.7:0.5 (repeatable; default per model); "
        "a LABEL the model does not have is an error",
    )
    p.add_argument(
        "--skip-unknown-thresholds",
        action="store_true",
        help="skip a --threshold whose LABEL this model does not have instead of refusing to start "
        "(soundbus up gives every model the same list)",
    )
    p.add_argument(
        "--idle-s",
        type=float_in(0, 86400, "s"),
        default=5.0,
        metavar="S",
        help="a stream with no tensor for S seconds is flushed like an ended one: last window classified, "
        "labels stopped (default 5; 0: never)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float_in(0, 1000, "ms"),
        default=5.0,
        metavar="MS",
        help="a ready window waits at most MS for the other live streams' windows, so one model call "
        "serves them all (default 5; 0: classify each window as soon as it is ready)",
    )
    p.add_argument("--top-k", type=int_in(1, 1024), metavar="K", help="labels per result (default per model)")
    p.add_argument("--threads", type=int_in(1, 256), default=1, metavar="N",
                   help="torch/onnx threads (default 1: scale by processes)")
    p.set_defaults(func=run_classify)

    from classify import tail  # its own module and subcommand; registered with classify's

    tail.register(sub)


def run_classify(args: argparse.Namespace) -> int:
    from classify.events import parse_threshold
    from classify.models import ModelOptionError, UnknownModel, known_models, load_model
    from common.runtime.stage import StopFlag, setup_logging

    try:
        from classify.worker import WorkerConfig, run
    except ImportError as e:  # the base install has no torch
        raise UserError(f"classify needs the classify extra ({e}); install it with "
                        "`pip install -e '.[classify]'` or scripts/install.sh.") from None

    setup_logging(verbosity(args))
    try:
        thresholds = [parse_threshold(t) for t in args.threshold]
    except ValueError as e:
        raise UserError(f"bad --threshold ({e}); use ON[:OFF] or LABEL=ON[:OFF], e.g. speech=0.6:0.4.") from None
    inputs, outputs, sockopts = inputs_of(args), outputs_of(args), socket_options(args)
    stop = StopFlag()
    try:
        model = load_model(args.model)
    except ModelOptionError as e:
        raise UserError(f"{e}.") from None
    except UnknownModel as e:
        raise UserError(f"{e}; known models: {', '.join(known_models())} (or MODULE:FACTORY for your own "
                        "model).") from None
    except ImportError as e:
        raise UserError(f"model {args.model} needs a package that is not installed ({e}); install it (see "
                        "docs/classify.md) or choose another model.") from None
    _set_threads(args.threads)
    cfg = WorkerConfig(
        max_lag_ms=args.max_lag_ms,
        thresholds=thresholds,
        skip_unknown_thresholds=args.skip_unknown_thresholds,
        top_k=args.top_k,
        idle_s=args.idle_s,
        batch_wait_ms=args.batch_wait_ms,
        max_streams=args.max_streams,
    )
    metrics = stage_metrics(args, "classify")
    try:
        try:
            run(model, cfg, inputs, outputs, sockopts, metrics, shard=args.shard, health_file=args.health_file,
                stop=stop)
        except ValueError as e:  # a threshold for a label the model does not have
            raise UserError(f"{e}.") from None
    finally:
        model.close()
    log.info("stopped")
    return 0


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))
