"""Run clips through the real pipeline and collect every result: separate processes over ZeroMQ.

    capture --fast (a batch of clips, one stream each) -> convert -> classify (one per model) -> tail --json

convert, the classify workers and tail run for the whole evaluation; one capture process
per batch of clips publishes on the same address (convert's subscription reconnects to
each). Queues are deep (``--hwm``), staleness drops are off (``--max-lag-ms 0``) and so are idle
flushes (``--idle-s 0``: a worker far behind its input saw streams as idle and flushed them
early; every clip ends with END anyway), so no window is lost to the evaluation's own speed;
a clip counts as done when its results cover its whole duration, for every model.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli.process import ChildProcess, WaitTimeout

log = logging.getLogger("soundbus.eval")

DEEP_HWM = "1000000"  # messages: the whole evaluation may queue at a slow worker, nothing is dropped
MAX_LINE = 1 << 20  # bytes of one tail --json line (521 labels are ~15 kB)
COVER_SLACK_NS = 5_000_000  # results may end up to 5 ms short of the decoded duration (resampler rounding)


@dataclass(frozen=True)
class Event:
    """An onset (``state`` 'start') or offset ('stop') of ``label`` at wall-clock ``t_ns``."""

    label: str
    state: str
    t_ns: int


@dataclass(frozen=True)
class WindowResult:
    """One result of one model for one window of one stream (times in wall-clock ns)."""

    stream: str
    model: str
    labels: tuple[tuple[str, float], ...]  # (label, score), descending
    start_ns: int
    end_ns: int
    events: tuple[Event, ...]


def parse_result(line: str) -> WindowResult | None:
    """One ``soundbus tail --json`` line -> WindowResult; None for a line that is not a result.

    The one place that reads tail's JSON. It relies only on ``stream``, ``model``, ``labels``
    ([[name, score], ...]), ``start_ns``, ``end_ns`` and ``events`` ([{label, state, t_ns}]);
    other fields are ignored, so fields added to the wire protocol change nothing here.
    """
    if len(line) > MAX_LINE:
        return None
    try:
        rec = json.loads(line)
        events = tuple(
            Event(str(e["label"]), str(e["state"]), int(e["t_ns"])) for e in rec.get("events") or ()
        )
        result = WindowResult(
            stream=str(rec["stream"]),
            model=str(rec["model"]),
            labels=tuple((str(name), float(score)) for name, score in rec.get("labels") or ()),
            start_ns=int(rec["start_ns"]),
            end_ns=int(rec["end_ns"]),
            events=events,
        )
    except (ValueError, KeyError, TypeError):
        return None
    if any(e.state not in ("start", "stop") for e in result.events):
        return None
    return result


def _free_tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@dataclass
class Collected:
    """Every result received, by (stream, model), in arrival order."""

    results: dict[tuple[str, str], list[WindowResult]] = field(default_factory=dict)
    bad_lines: int = 0
    incomplete: list[tuple[str, str]] = field(default_factory=list)  # (stream, model) not covered in the end

    def add(self, r: WindowResult) -> None:
        self.results.setdefault((r.stream, r.model), []).append(r)

    def uncovered(self, clips: Iterable[tuple[str, Path, float]], models: Sequence[str]) -> list[tuple[str, str]]:
        """(stream, model) pairs whose results do not span their clip's duration (within COVER_SLACK_NS)."""
        return sorted((s, m) for s, _, d in clips for m in models
                      if self.covered_ns(s, m) < int(d * 1e9) - COVER_SLACK_NS)

    def covered_ns(self, stream: str, model: str) -> int:
        rs = self.results.get((stream, model))
        return max(r.end_ns for r in rs) - min(r.start_ns for r in rs) if rs else 0


class Pipeline:
    """convert, one classify worker per model and tail, started once; ``run(clips)`` feeds them.

    ``models``: model names for ``classify --model``; ``top_k``: labels per result (all of
    YAMNet's 521, so pooling over windows is exact); ``batch``: clips per capture process.
    Use as a context manager: every process is stopped on exit, also on errors.
    """

    def __init__(self, models: Sequence[str], top_k: int = 521, batch: int = 32, start_timeout_s: float = 120.0,
                 classify_args: Sequence[str] = ()) -> None:
        self.models = list(models)
        self.top_k = top_k
        self.batch = batch
        self.start_timeout_s = start_timeout_s
        self.classify_args = list(classify_args)
        self.raw, self.tensor = _free_tcp(), _free_tcp()
        self.results_at = {m: _free_tcp() for m in self.models}
        self.procs: list[ChildProcess] = []
        self.collected = Collected()
        self._tail: ChildProcess | None = None
        self._read = 0

    def __enter__(self) -> Pipeline:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _spawn(self, argv: list[str]) -> ChildProcess:
        p = ChildProcess(argv)
        self.procs.append(p)
        return p

    def _start(self) -> None:
        tail_argv = _module("classify.tail", "--json", "--hwm", DEEP_HWM)
        for addr in self.results_at.values():
            tail_argv += ["--input", addr]
        self._tail = self._spawn(tail_argv)
        workers = []
        for model, out in self.results_at.items():
            workers.append(self._spawn(_module(
                "classify", "--model", model, "--input", self.tensor, "--output", out, "--top-k", str(self.top_k),
                "--max-lag-ms", "0", "--idle-s", "0", "--hwm", DEEP_HWM, *self.classify_args)))
        for w in workers:
            self._wait(w, r"\bready\b")
        self._wait(self._tail, r"input connected", count=len(workers))
        conv = self._spawn(_module("convert", "--input", self.raw, "--output", self.tensor, "--rate", "16000",
                                   "--channels", "mono", "--hwm", DEEP_HWM))
        self._wait(conv, r"\bready\b")
        for w in workers:
            self._wait(w, r"input connected")

    def _wait(self, p: ChildProcess, pattern: str, count: int = 1) -> None:
        try:
            p.wait_for(pattern, self.start_timeout_s, count=count)
        except WaitTimeout as e:
            raise RuntimeError(f"soundbus eval: a pipeline stage did not start: {e}") from None

    def run(self, clips: Sequence[tuple[str, Path, float]], progress: Any = None,
            timeout_s: float = 600.0) -> Collected:
        """Publish each (stream, file, duration_s) clip and wait until every model's results cover it."""
        pending = list(clips)
        for i in range(0, len(pending), self.batch):
            part = pending[i : i + self.batch]
            argv = _module("capture", "--fast", "--output", self.raw, "--wait-subscriber", "30", "-q")
            for stream, path, _ in part:
                argv += ["--source", f"file:{path}", "--stream", stream]
            cap = self._spawn(argv)
            deadline = time.monotonic() + timeout_s
            while cap.proc.poll() is None:
                self._drain()
                self._check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"soundbus eval: capture did not finish in {timeout_s:g} s:\n{cap.log()}")
                time.sleep(0.05)
            if cap.proc.returncode != 0:
                raise RuntimeError(f"soundbus eval: capture exited {cap.proc.returncode}:\n{cap.log()}")
            self.procs.remove(cap)
            if progress:
                progress(min(i + self.batch, len(pending)), len(pending))
        self._wait_covered(pending, timeout_s)
        return self.collected

    def _wait_covered(self, clips: Iterable[tuple[str, Path, float]], timeout_s: float, quiet_s: float = 20.0) -> None:
        """Until every clip/model pair is covered, or no result arrived for ``quiet_s`` (then the
        uncovered pairs are left in ``collected.incomplete``), or ``timeout_s``."""
        todo = {(s, m): int(d * 1e9) - COVER_SLACK_NS for s, _, d in clips for m in self.models}
        deadline = time.monotonic() + timeout_s
        last_count, last_change = -1, time.monotonic()
        while True:
            self._drain()
            todo = {k: need for k, need in todo.items() if self.collected.covered_ns(*k) < need}
            count = sum(len(v) for v in self.collected.results.values())
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            if not todo:
                return
            self._check_alive()
            now = time.monotonic()
            if now > deadline or now - last_change > quiet_s:
                self.collected.incomplete = sorted(todo)
                log.warning("%d clip/model pairs have results that do not cover the clip (e.g. %s)", len(todo),
                            ", ".join(f"{s}/{m}" for s, m in list(todo)[:5]))
                return
            time.sleep(0.1)

    def _drain(self) -> None:
        assert self._tail is not None
        lines = self._tail.out_lines
        n = len(lines)  # the pump thread only appends
        for line in lines[self._read : n]:
            r = parse_result(line)
            if r is None:
                self.collected.bad_lines += 1
            else:
                self.collected.add(r)
        lines[self._read : n] = [""] * (n - self._read)  # keep indices, free the text
        self._read = n

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.exited() and "capture" not in p.argv:
                raise RuntimeError(f"soundbus eval: {p.name} exited {p.proc.returncode}:\n{p.log(20)}")

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
