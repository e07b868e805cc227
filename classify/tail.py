"""``soundbus tail``: show results as they arrive (no torch needed).

Outputs, each flushed as written so a pipe sees results as they happen:

- on a terminal: a live view per stream (level meter, current labels per model, recent
  events, gaps, latency), redrawn a few times a second;
- otherwise (plain): what a person wants to read, not every window: a line when a label
  starts, a line with its whole span when it stops (``speech 0.52-2.31 s (peak 1.00)``),
  a line for every gap, and a short summary per stream every ``--summary-s`` and at its end;
  ``--every-window`` prints one line per result instead;
- ``--json``: one JSON object per result per line.

Only validated fields reach the output: results are decoded against their Struct (finite
scores in [0, 1], printable labels with no control characters), so nothing a publisher
sends can break the JSON or write escape sequences to the terminal.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import msgspec

from common.cli.main import add_stage_options, float_in, inputs_of, socket_options, stage_metrics, verbosity
from common.observe.metrics import StageMetrics
from common.runtime.stage import Now, Runtime, StopFlag, setup_logging
from common.runtime.streams import Continuity, SeqCursor, StreamTable
from common.transport.sockets import DEFAULT_RESULT
from common.wire.messages import Flag, Result
from common.wire.topics import Kind, topic_for

log = logging.getLogger("tail")
NS = 1_000_000_000
_DISC = int(Flag.DISCONTINUITY)  # a plain int: IntFlag arithmetic costs ~1-2 us per result


def clock(ns: int) -> str:
    """HH:MM:SS.mmm (UTC) of a wall-clock ns time."""
    s, rem = divmod(ns, NS)
    return time.strftime("%H:%M:%S", time.gmtime(s)) + f".{rem // 1_000_000:03d}"


def latency_ms(r: Result) -> float | None:
    """Pipeline time from the first hop's input to the last hop's output (ms), from the trace."""
    if not r.trace:
        return None
    return (r.trace[-1].t_out_ns - r.trace[0].t_in_ns) / 1e6


def as_record(r: Result, t_recv_ns: int, missing: int = 0) -> dict[str, Any]:
    """One result as a JSON-ready dict (every value validated, finite)."""
    lat = latency_ms(r)
    return {
        "stream": r.stream, "model": r.model, "epoch": r.epoch, "seq": r.seq, "flags": r.flags,
        "start_ns": r.start_ns, "end_ns": r.end_ns, "offset": r.offset, "rate": r.rate,
        "seq_first": r.seq_first, "seq_last": r.seq_last,
        "labels": [[lbl.name, lbl.score] for lbl in r.labels],
        "events": [{"label": e.label, "state": e.state, "t_ns": e.t_ns, "score": e.score, "since_ns": e.since_ns}
                   for e in r.events],
        "lost_ns": r.lost_ns, "missing": missing,
        "level": None if r.level is None else {"rms_dbfs": r.level.rms_dbfs, "peak_dbfs": r.level.peak_dbfs,
                                                "clipped": r.level.clipped},
        "final": r.final,
        "trace": [[h.stage, h.t_in_ns, h.t_out_ns] for h in r.trace],
        "latency_ms": None if lat is None else round(lat, 3),
        "age_ms": round((t_recv_ns - r.end_ns) / 1e6, 3),
    }


@dataclass
class StreamTally:
    """One stream and model as tail has seen it: continuity, gaps, current labels, recent events."""

    cursor: SeqCursor = field(default_factory=SeqCursor)
    origin_ns: int | None = None  # audio time of the epoch's first sample (for "0.52-2.31 s")
    results: int = 0
    missing: int = 0  # results that never arrived
    lost_ns: int = 0  # audio lost upstream
    labels: str = ""
    events: deque = field(default_factory=lambda: deque(maxlen=4))
    level: Any = None
    clipped: int = 0
    latency_ms: float | None = None
    last_seen: float = 0.0
    active: dict[str, float] = field(default_factory=dict)  # label -> seconds on, in this summary period
    on: dict[str, int] = field(default_factory=dict)  # label -> audio time it started (ns), while it is on
    ended: bool = False


def labels_text(r: Result, n: int = 3) -> str:
    return ", ".join(f"{lbl.name} {lbl.score:.2f}" for lbl in r.labels[:n]) or "-"


def every_window_line(r: Result, missing: int) -> str:
    """``stream model HH:MM:SS.mmm-HH:MM:SS.mmm label score, ... [+start -stop] lat X ms``."""
    parts = [f"{r.stream} {r.model} {clock(r.start_ns)}-{clock(r.end_ns)} {labels_text(r)}"]
    if r.events:
        parts.append("[" + " ".join(("+" if e.state == "start" else "-") + e.label for e in r.events) + "]")
    if r.level is not None:
        parts.append(f"rms {r.level.rms_dbfs:.1f} dBFS peak {r.level.peak_dbfs:.1f}")
    if missing or r.lost_ns:
        parts.append(f"GAP {missing} result(s) missing, {r.lost_ns / 1e9:.3f} s audio lost")
    lat = latency_ms(r)
    if lat is not None:
        parts.append(f"lat {lat:.1f} ms")
    return " ".join(parts)


class TailLogic:
    """Results in, text out (``out``); socket-free like every stage's logic."""

    def __init__(self, out: TextIO, mode: str, metrics: StageMetrics, stop: StopFlag, models: set[str],
                 count: int | None = None, summary_s: float = 10.0, max_streams: int = 1024) -> None:
        self.out, self.mode, self.metrics, self.stop = out, mode, metrics, stop
        self.models, self.count, self.summary_s = models, count, summary_s
        self.tallies: StreamTable[StreamTally] = StreamTable(max_streams, metrics, "stream/model pairs")
        self.shown = 0
        self.live = LiveView(self) if mode == "live" else None
        self._json = msgspec.json.Encoder()
        self._next_summary = time.monotonic() + summary_s

    def handle(self, batch: list[Any], now: Now) -> list[bytes]:
        for r in batch:
            if not isinstance(r, Result) or (self.models and r.model not in self.models):
                continue
            key = f"{r.stream}/{r.model}"
            t = self.tallies.admit(key, StreamTally)
            if t is None:
                continue
            cont, missing = t.cursor.check(r.epoch, r.seq, bool(r.flags & _DISC))
            if cont is Continuity.STALE:
                continue
            if cont in (Continuity.FIRST, Continuity.NEW_EPOCH):
                t.origin_ns = r.start_ns - r.offset * NS // r.rate
            t.ended = False
            if missing:
                self.metrics.gap(key, missing)
            self._show(r, t, missing, now)
            self.shown += 1
            if self.count and self.shown >= self.count:
                self.stop.set()
                break
        self._flush()
        return []

    def _show(self, r: Result, t: StreamTally, missing: int, now: Now) -> None:
        t.results += 1
        t.missing += missing
        t.lost_ns += r.lost_ns
        t.last_seen = now.mono
        t.labels = labels_text(r)
        t.latency_ms = latency_ms(r)
        if r.level is not None:
            t.level = r.level
            t.clipped += r.level.clipped
        for e in r.events:
            t.events.append(f"{clock(e.t_ns)} {'▲' if e.state == 'start' else '▼'}{e.label} ({r.model})")
        if self.mode == "json":
            self.out.write(self._json.encode(as_record(r, now.wall_ns, missing)).decode() + "\n")
        elif self.mode == "windows":
            self.out.write(every_window_line(r, missing) + "\n")
        elif self.mode == "plain":
            self._plain(r, t, missing)
        elif self.live is not None:
            self.live.refresh()

    def _plain(self, r: Result, t: StreamTally, missing: int) -> None:
        """Starts, whole spans at their stop, gaps, and a summary at the end of the stream."""
        who = f"{r.stream} {r.model}:"
        if missing or r.lost_ns:
            what = []
            if missing:
                what.append(f"{missing} result(s) missing")
            if r.lost_ns:
                what.append(f"{r.lost_ns / 1e9:.3f} s of audio lost upstream")
            self.out.write(f"{clock(r.start_ns)} {who} GAP {', '.join(what)}\n")
        rel = (lambda ns: (ns - t.origin_ns) / 1e9) if t.origin_ns is not None else (lambda ns: 0.0)
        for e in r.events:
            if e.state == "start":
                t.on[e.label] = e.t_ns
                self.out.write(f"{clock(e.t_ns)} {who} {e.label} started at {rel(e.t_ns):.2f} s ({e.score:.2f})\n")
            else:
                dur = (e.t_ns - e.since_ns) / 1e9
                t.on.pop(e.label, None)
                t.active[e.label] = t.active.get(e.label, 0.0) + dur
                self.out.write(f"{clock(e.t_ns)} {who} {e.label} {rel(e.since_ns):.2f}-{rel(e.t_ns):.2f} s "
                               f"(peak {e.score:.2f})\n")
        if r.final:
            t.ended = True
            self.out.write(self._summary_line(r.stream, r.model, t, "ended") + "\n")

    def _summary_line(self, stream: str, model: str, t: StreamTally, why: str) -> str:
        spans = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(t.active.items())) or "no events"
        origin = t.origin_ns or 0
        still = "".join(f"; {k} on since {(ns - origin) / 1e9:.2f} s" for k, ns in sorted(t.on.items()))
        gaps = f"; {t.missing} result(s) missing, {t.lost_ns / 1e9:.3f} s lost" if t.missing or t.lost_ns else ""
        return (f"{clock(time.time_ns())} {stream} {model}: {why}: {t.results} windows; {spans}{still}; "
                f"now {t.labels}{gaps}")

    def tick(self, now: Now) -> list[bytes]:
        if self.mode == "plain" and now.mono >= self._next_summary:
            self._next_summary = now.mono + self.summary_s
            for key, t in self.tallies.items():
                if now.mono - t.last_seen < self.summary_s and not t.ended:
                    stream, model = key.split("/", 1)
                    self.out.write(self._summary_line(stream, model, t, "summary") + "\n")
            self._flush()
        return []

    def _flush(self) -> None:
        try:
            self.out.flush()
        except BrokenPipeError:  # `soundbus tail | head`: the reader left
            self.stop.set()

    def wake_in(self, now: Now) -> float | None:
        return None

    def finish(self, now: Now) -> list[bytes]:
        if self.live is not None:
            self.live.stop()
        return []

    def summary(self) -> str:
        return f"shown={self.shown}"


class LiveView:
    """A rich table, one row per stream, redrawn a few times a second."""

    def __init__(self, logic: TailLogic) -> None:
        from rich.console import Console
        from rich.live import Live

        self.logic = logic
        self.console = Console()
        self.live = Live(self.render(), console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def refresh(self) -> None:
        self.live.update(self.render())

    def stop(self) -> None:
        self.live.stop()

    def render(self):
        from rich.table import Table
        from rich.text import Text

        t = Table(title="soundbus tail", expand=True)
        for col in ("stream / model", "level", "labels", "events", "gaps", "latency"):
            t.add_column(col)
        now = time.monotonic()
        for key, v in sorted(self.logic.tallies.items()):
            gaps = f"{v.missing} missing, {v.lost_ns / 1e9:.2f} s lost" if v.missing or v.lost_ns else "0"
            t.add_row(
                Text(key + (" (silent)" if now - v.last_seen > 3 else "")),
                meter(v.level, v.clipped),
                Text(v.labels),
                Text("\n".join(v.events)),
                gaps,
                f"{v.latency_ms:.1f} ms" if v.latency_ms is not None else "-",
            )
        return t


def meter(level: Any, clipped: int, width: int = 20) -> str:
    """A text level meter from -60 to 0 dBFS (needs a ``level`` model running)."""
    if level is None:
        return "-"
    filled = max(0, min(width, int((level.rms_dbfs + 60.0) / 60.0 * width)))
    bar = "█" * filled + "·" * (width - filled)
    return f"{bar} {level.rms_dbfs:5.1f} dB (peak {level.peak_dbfs:.1f}){' CLIP' if clipped else ''}"


def _prefixes(streams: list[str] | None, models: list[str] | None) -> list[bytes]:
    if not streams:
        return [topic_for(Kind.RESULT)]
    if models:
        return [topic_for(Kind.RESULT, s, m) for s in streams for m in models]
    return [topic_for(Kind.RESULT, s) for s in streams]


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Subscribe to results and show them until Ctrl-C (or ``--count`` results)."""
    out = out or sys.stdout
    mode = "json" if args.json else "windows" if args.every_window else \
        "live" if out.isatty() and not args.plain else "plain"
    # The live view owns the terminal: log lines on the same terminal would tear it, so there
    # only warnings are logged. Logs to a pipe (soundbus up reads them) stay as they are.
    quiet = mode == "live" and sys.stderr.isatty() and not args.verbose
    setup_logging(-1 if quiet else verbosity(args))
    inputs, sockopts = inputs_of(args), socket_options(args)
    metrics = stage_metrics(args, "tail")
    stop = StopFlag()
    with Runtime("tail", metrics, stop, args.health_file) as rt:
        inbox = rt.inbox(inputs, _prefixes(args.stream, args.model), sockopts)
        logic = TailLogic(out, mode, metrics, stop, set(args.model or []), args.count, args.summary_s,
                          args.max_streams)
        log.info("ready inputs=%s", ",".join(inputs))
        rt.run(logic, inbox, None)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``tail`` subcommand."""
    t = sub.add_parser(
        "tail",
        help="print classification results as they arrive",
        description="Show results: a live view on a terminal; otherwise label starts and spans, gaps and a "
        "summary per stream (--every-window: every result); JSON lines with --json.",
    )
    add_stage_options(t, inputs=DEFAULT_RESULT, outputs=None)
    _flags(t)
    t.set_defaults(func=run)


def _flags(t: argparse.ArgumentParser) -> None:
    """tail's own flags (the shared ones come from common.cli.main.add_stage_options)."""
    t.add_argument("--json", action="store_true", help="one JSON object per result per line")
    t.add_argument("--every-window", action="store_true", help="one plain line per result (every model window)")
    t.add_argument("--stream", action="append", metavar="S", help="only this stream (repeatable)")
    t.add_argument("--model", action="append", metavar="M", help="only this model (repeatable)")
    t.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    t.add_argument("--count", type=int, metavar="N", help="exit after N results")
    t.add_argument("--summary-s", type=float_in(0.5, 86400, "s"), default=10.0, metavar="S",
                   help="plain output: a summary line per stream every S seconds (default 10)")


if __name__ == "__main__":  # python -m classify.tail ARGS == soundbus tail ARGS
    from common.cli.main import standalone

    standalone(register, "tail")
