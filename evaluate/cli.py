"""``soundbus eval``: run labelled recordings through the pipeline and print how often each model is right.

    soundbus eval                                   # the bundled labels (Debian packages), held-out figures
    soundbus eval --labels mine.csv --limit 20      # your own recordings, 20 clips per split
    soundbus eval --docs docs/accuracy.md           # and fill the results section of that file
    soundbus eval --save-results run.jsonl          # keep tail's lines; --results run.jsonl re-scores them
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("soundbus.eval")

# Gate settings compared on every run; thresholds sit just below YAMNet's quantised output
# levels (0.046, 0.094, 0.18, 0.32, 0.5: its w8a8 output has steps of 0.757 in logit).
def gate_settings():
    from classify.gate import GateConfig

    return [
        GateConfig(),
        GateConfig(vad_on=0.7, vad_off=0.5),
        GateConfig(vad_on=0.9, vad_off=0.7),
        GateConfig(min_speech_ms=250),
        *[GateConfig(yamnet_min=y) for y in (0.04, 0.09, 0.18, 0.3, 0.5)],
        *[GateConfig(vad_on=0.7, vad_off=0.5, yamnet_min=y) for y in (0.09, 0.18)],
        GateConfig(min_speech_ms=250, yamnet_min=0.18),
        # a more sensitive vad, with YAMNet to take back the false alarms it adds
        GateConfig(vad_on=0.3, vad_off=0.2),
        *[GateConfig(vad_on=v, vad_off=o, yamnet_min=y) for v, o in ((0.3, 0.2), (0.2, 0.1)) for y in (0.04, 0.09)],
    ]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="how often vad and yamnet are right, on labelled recordings run through the pipeline",
        description="Run labelled recordings through capture -> convert -> classify (vad, yamnet) -> tail as "
        "separate processes and report, per model, clip-level recall and precision, false alarms per hour, "
        "onset/offset timing error and the confusion between families; and the speech gate's settings. "
        "Labels file format and data: docs/accuracy.md.",
    )
    p.add_argument("--labels", type=Path, help="labels file (default: the bundled evaluate/data/labels.csv)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="at most N clips of each split (tune, held-out), for a quick run")
    p.add_argument("--min-recall", type=float, default=0.98, help="speech recall a gate setting must reach on tune "
                   "to be chosen (default 0.98)")
    p.add_argument("--batch", type=int, default=32, metavar="N", help="clips per capture process (default 32)")
    p.add_argument("--skip-missing", action="store_true", help="leave out clips whose files are not installed "
                   "(default: stop and say which packages to install)")
    p.add_argument("--save-results", type=Path, metavar="FILE", help="write every tail --json line to FILE")
    p.add_argument("--results", type=Path, metavar="FILE", help="score the lines of an earlier --save-results "
                   "instead of running the pipeline")
    p.add_argument("--docs", type=Path, metavar="FILE", help="write the results into FILE's "
                   "'<!-- eval:results:begin/end -->' section (e.g. docs/accuracy.md)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.set_defaults(func=run_eval)


def _fail(msg: str) -> int:
    print(f"soundbus eval: {msg}", file=sys.stderr)
    return 2


def run_eval(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    # SIGTERM unwinds like Ctrl-C, so the pipeline's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from evaluate.labels import DEFAULT_LABELS, LabelsError, load_labels, missing_packages

    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}.")
    if args.batch < 1 or args.batch > 256:
        return _fail(f"--batch must be within 1-256 clips, got {args.batch}.")
    if args.results is not None and not args.results.is_file():
        return _fail(f"--results {args.results} does not exist; write one with --save-results FILE.")
    if args.docs is not None and not args.docs.is_file():
        return _fail(f"--docs {args.docs} does not exist; it must be a Markdown file with the results markers.")
    labels_path = args.labels or DEFAULT_LABELS
    try:
        clips = load_labels(labels_path)
    except LabelsError as e:
        return _fail(str(e))
    missing = missing_packages(clips)
    if missing and not args.skip_missing:
        pkgs = " ".join(sorted(k for k in missing if not k.startswith("/")))
        return _fail(
            f"{sum(missing.values())} clips are not on this machine"
            + (f"; install their packages: apt-get install {pkgs}" if pkgs else f": {', '.join(sorted(missing))}")
            + " (or pass --skip-missing)."
        )
    clips = [c for c in clips if c.source.is_file()]
    if args.limit:
        clips = _limit(clips, args.limit)
    if not clips:
        return _fail("no clips to evaluate.")
    return _evaluate(args, clips, labels_path)


def _limit(clips, n):
    out = []
    for split in ("tune", "heldout"):
        out += sorted((c for c in clips if c.split == split), key=lambda c: c.stream)[:n]
    return out


def _evaluate(args: argparse.Namespace, clips, labels_path: Path) -> int:
    from evaluate import report, scoring
    from evaluate.audio import energy_span, load_16k, playable_path
    from evaluate.pipeline import Collected, Pipeline, parse_result

    t0 = time.monotonic()
    runs, items = [], []
    for c in clips:
        path = playable_path(c)
        x = load_16k(path)
        span = (c.spans[0][0], c.spans[-1][1]) if c.spans else energy_span(x)
        runs.append(scoring.ClipRun(clip=c, duration_s=len(x) / 16000, span=span))
        items.append((c.stream, path, len(x) / 16000))
    log.info("%d clips decoded (%.0f s of audio) in %.1f s", len(runs), sum(r.duration_s for r in runs),
             time.monotonic() - t0)
    if args.results:
        collected = Collected()
        with open(args.results, encoding="utf-8") as f:
            for line in f:
                r = parse_result(line)
                if r is None:
                    collected.bad_lines += 1
                else:
                    collected.add(r)
        collected.incomplete = collected.uncovered(items, [scoring.VAD, scoring.YAMNET])
    else:
        with Pipeline([scoring.VAD, scoring.YAMNET], batch=args.batch) as pipe:
            log.info("pipeline up in %.1f s; publishing clips", time.monotonic() - t0)
            collected = pipe.run(items, progress=lambda done, n: log.info("published %d/%d clips", done, n))
        log.info("results for every clip after %.1f s", time.monotonic() - t0)
        if args.save_results:
            _save(args.save_results, collected)
    if collected.bad_lines:
        log.warning("%d lines of tail's output were not results", collected.bad_lines)
    scoring.attach(runs, collected.results)
    incomplete = {s for s, _ in collected.incomplete}
    runs = [r for r in runs if r.vad and r.yamnet and r.clip.stream not in incomplete]
    left_out = len(items) - len(runs)
    if left_out:
        log.warning("%d clips left out: their results do not cover the whole clip", left_out)
    if not runs:
        return _fail("no clip has complete results (see the stage logs with -v).")
    tune = [r for r in runs if r.clip.split == "tune"]
    held = [r for r in runs if r.clip.split == "heldout"]
    settings = gate_settings()
    tune_rows = scoring.speech_rows(tune, settings)
    held_rows = scoring.speech_rows(held, settings)
    chosen = scoring.choose_setting(tune_rows, args.min_recall)
    figs = [scoring.yamnet_figures(held, p) for p in scoring.POOLINGS]
    events = scoring.yamnet_events(held)
    name = labels_path.name if args.labels else "evaluate/data/labels.csv"
    text = report.render(runs, held_rows, tune_rows, chosen, figs, events, name, args.min_recall, left_out)
    print(text)
    if args.docs:
        report.fill_docs(args.docs, text)
        log.info("wrote the results into %s", args.docs)
    return 0


def _save(path: Path, collected) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        for rs in collected.results.values():
            for r in rs:
                f.write(json.dumps({
                    "stream": r.stream, "model": r.model, "labels": [list(x) for x in r.labels],
                    "start_ns": r.start_ns, "end_ns": r.end_ns,
                    "events": [{"label": e.label, "state": e.state, "t_ns": e.t_ns} for e in r.events],
                }, separators=(",", ":")) + "\n")
