"""``soundbus up``: the whole pipeline on this machine, one process per stage.

    capture --raw:P--> convert --tensor:P+1--> classify (one per model) --result:P+2..--> tail

Stages start downstream first, and each upstream stage starts only when the stages
below it are ready and connected (their ``ready`` and ``input connected`` log lines),
so no frame is published before someone listens. ``up`` stops them all on Ctrl-C, on
SIGTERM, or when one of them dies; when a file source ends, it lets the last results
arrive and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from common.cli.main import float_in, int_in
from common.cli.process import ChildProcess, WaitTimeout
from common.errors import UserError
from common.runtime.stage import StopFlag, setup_logging

log = logging.getLogger("soundbus.up")

DEMO_RECORDING = Path(__file__).parents[1] / "data" / "demo.wav"
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@dataclass
class Child:
    """One stage of the pipeline: its command line, and the process once started."""

    name: str
    argv: list[str]
    verbose: bool
    proc: ChildProcess | None = None

    def start(self) -> None:
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = ChildProcess(self.argv, capture_stdout=self.name != "tail", on_stderr=self._forward)

    def _forward(self, line: str) -> None:
        """Show a stage's warnings and errors (everything with -v), prefixed with its name."""
        m = _LOG_LINE.match(line)
        if self.verbose or not m or m.group(1) not in ("DEBUG", "INFO"):
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    def wait_for(self, pattern: str, count: int, timeout_s: float, stop: StopFlag) -> bool:
        """Wait until ``count`` log lines match ``pattern``; False on timeout, exit or stop."""
        try:
            assert self.proc is not None
            self.proc.wait_for(pattern, timeout_s, count=count, stop=stop)
            return True
        except WaitTimeout:
            return False

    def exited(self) -> bool:
        return self.proc is not None and self.proc.exited()


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def plan(args: argparse.Namespace) -> list[Child]:
    """The processes of the pipeline, in start order (downstream first)."""
    host, p = "tcp://127.0.0.1", args.base_port
    raw, tensor = f"{host}:{p}", f"{host}:{p + 1}"
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise UserError("--model needs at least one model name, e.g. --model vad or --model vad,yamnet.")
    results = [f"{host}:{p + 2 + i}" for i in range(len(models))]
    v = args.verbose > 0
    tail_argv = _module("classify.tail", *[a for r in results for a in ("--input", r)])
    if args.json:
        tail_argv.append("--json")
    children = [Child("tail", tail_argv, v)]
    for model, out in zip(models, results):
        children.append(
            Child(f"classify-{model}", _module("classify", "--model", model, "--input", tensor, "--output", out), v)
        )
    children.append(Child("convert", _module("convert", "--input", raw, "--output", tensor), v))
    source = args.source or f"file:{DEMO_RECORDING}"
    cap = _module("capture", "--source", source, "--output", raw)
    if args.fast:
        cap.append("--fast")
    if args.loop:
        cap.append("--loop")
    children.append(Child("capture", cap, v))
    return children


def run_up(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    stop = StopFlag()
    children = plan(args)
    tail, classifiers, convert, capture = children[0], children[1:-2], children[-2], children[-1]
    if not args.source:
        print(
            f"soundbus up: playing the bundled recording {DEMO_RECORDING.name} "
            "(use --source default for the microphone, --source loopback for system audio)",
            file=sys.stderr,
        )
    try:
        # Each step: start a stage, then wait until it is ready and the stages below it are connected to it.
        tail.start()
        for c in classifiers:
            c.start()
        for c in classifiers:
            if not c.wait_for(r"\bready\b", 1, args.start_timeout, stop):
                return _fail(children, c, "did not become ready", stop)
        tail.wait_for(r"input connected", len(classifiers), 5.0, stop)
        convert.start()
        if not convert.wait_for(r"\bready\b", 1, args.start_timeout, stop):
            return _fail(children, convert, "did not become ready", stop)
        for c in classifiers:
            c.wait_for(r"input connected", 1, 5.0, stop)
        capture.start()
        if not capture.wait_for(r"\bready\b", 1, args.start_timeout, stop):
            return _fail(children, capture, "did not become ready", stop)
        log.info("pipeline running: %s", ", ".join(c.name for c in children))
        return _supervise(children, capture, stop)
    finally:
        _stop_all(children)


def _supervise(children: list[Child], capture: Child, stop: StopFlag) -> int:
    """Until Ctrl-C or a stage ends: a stage failing stops all (exit 1); the source ending exits 0."""
    while not stop:
        for c in children:
            if c.proc is not None and c.exited():
                code = c.proc.proc.returncode
                if c is capture and code == 0:
                    # The recording has been published: give the last windows time to be classified.
                    stop.wait(3.0)
                    return 0
                print(f"soundbus up: {c.name} exited with code {code}; stopping the pipeline.", file=sys.stderr)
                return 1
        stop.wait(0.2)
    return 0


def _fail(children: list[Child], c: Child, what: str, stop: StopFlag) -> int:
    if stop:
        return 130
    if c.proc is not None and c.exited():
        what = f"exited with code {c.proc.proc.returncode} before it was ready"
    tail = c.proc.log(15) if c.proc else ""
    print(f"soundbus up: {c.name} {what}; stopping the pipeline. Its last log lines:\n{tail}", file=sys.stderr)
    return 1


def _stop_all(children: list[Child]) -> None:
    # Upstream first, so the stages below see the end of their input before they stop.
    running = [c for c in reversed(children) if c.proc is not None and not c.exited()]
    for c in running:
        c.proc.send_signal(signal.SIGTERM)
    for c in running:
        if c.proc.stop_report(signal.SIGTERM, timeout=5.0) == "killed":
            print(f"soundbus up: {c.name} did not stop in 5 s after SIGTERM; killed it.", file=sys.stderr)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run capture, convert, classify and tail on this machine",
        description="Run the whole pipeline on this machine as separate processes; Ctrl-C stops it. "
        "Without --source it plays a short bundled recording, so it works with no sound card.",
    )
    p.add_argument(
        "--source",
        metavar="SPEC",
        help="capture source: default (microphone), loopback (system audio), file:PATH, synth:tone:440 ... "
        "(see `soundbus capture --help`; default: the bundled demo recording)",
    )
    p.add_argument("--model", default="vad", help="comma-separated models to run, e.g. vad,yamnet (default vad)")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.add_argument("--fast", action="store_true", help="play a file source as fast as possible, not in real time")
    p.add_argument("--loop", action="store_true", help="loop a file source")
    p.add_argument("--base-port", type=int_in(1024, 65000), default=5550,
                   help="raw on PORT, tensors on PORT+1, results from PORT+2 (default 5550)")
    p.add_argument("--start-timeout", type=float_in(1, 3600, "s"), default=60.0,
                   help="seconds a stage may take to start (default 60)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="show every stage's log")
    p.set_defaults(func=run_up)
