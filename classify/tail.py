"""``soundbus tail``: print results as they arrive (no torch needed).

Three outputs: ``--json`` (one JSON object per result per line), plain lines (one per
result), and on a terminal a live view per stream (level meter, current labels and
scores per model, recent events, gaps, latency). Every line is flushed as it is written,
so a pipe sees results as they happen.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import zmq

from common.cli import inputs_of, socket_options, stage_metrics, verbosity
from common.protocol import Flag, Kind, Message, topic_for
from common.sockets import open_sub
from common.stage import Continuity, Receiver, SequenceTracker, StopFlag, setup_logging


def _clock(ns: int) -> str:
    """HH:MM:SS.mmm (UTC) of a wall-clock ns time."""
    s, ns_rem = divmod(ns, 1_000_000_000)
    return time.strftime("%H:%M:%S", time.gmtime(s)) + f".{ns_rem // 1_000_000:03d}"


def latency_ms(msg: Message) -> float | None:
    """Pipeline time from the first hop's input to the last hop's output (ms), from the trace."""
    tr = msg.header.trace
    if not tr:
        return None
    return (tr[-1].t_out_ns - tr[0].t_in_ns) / 1e6


def as_record(msg: Message, t_recv_ns: int) -> dict[str, Any]:
    """One result as a JSON-ready dict: header essentials + the result body + latencies."""
    h = msg.header
    body = msg.result()
    rec: dict[str, Any] = {"stream": h.stream, "model": h.model, "epoch": h.epoch, "seq": h.seq}
    rec.update(body)
    rec["trace"] = [[hop.stage, hop.t_in_ns, hop.t_out_ns] for hop in h.trace]
    lat = latency_ms(msg)
    rec["latency_ms"] = round(lat, 3) if lat is not None else None
    end = body.get("end_ns")
    rec["age_ms"] = round((t_recv_ns - end) / 1e6, 3) if isinstance(end, int) else None
    return rec


def _labels_text(labels: Any, n: int = 3) -> str:
    try:
        return ", ".join(f"{lbl} {float(score):.2f}" for lbl, score in labels[:n])
    except (TypeError, ValueError):
        return "?"


def _events_text(events: Any) -> str:
    try:
        return " ".join(("+" if e["state"] == "start" else "-") + str(e["label"]) for e in events)
    except (TypeError, KeyError):
        return ""


def plain_line(rec: dict[str, Any]) -> str:
    """``stream model HH:MM:SS.mmm-HH:MM:SS.mmm label score, ... [events] lat X ms``."""
    span = ""
    if isinstance(rec.get("start_ns"), int) and isinstance(rec.get("end_ns"), int):
        span = f"{_clock(rec['start_ns'])}-{_clock(rec['end_ns'])} "
    events = _events_text(rec.get("events") or [])
    lat = rec.get("latency_ms")
    parts = [f"{rec['stream']} {rec['model']} {span}{_labels_text(rec.get('labels') or [])}"]
    if events:
        parts.append(f"[{events}]")
    if "rms_dbfs" in rec:
        parts.append(f"rms {rec['rms_dbfs']:.1f} dBFS peak {rec.get('peak_dbfs', 0.0):.1f}")
    if lat is not None:
        parts.append(f"lat {lat:.1f} ms")
    return " ".join(parts)


@dataclass
class StreamView:
    """What the live view shows for one stream."""

    labels: dict[str, str] = field(default_factory=dict)  # model -> "label score, ..."
    events: deque = field(default_factory=lambda: deque(maxlen=4))
    rms_dbfs: float | None = None
    peak_dbfs: float | None = None
    clipped: int = 0
    gaps: int = 0
    latency_ms: float | None = None
    last_seen: float = 0.0


class LiveView:
    """A rich table, one row per stream, redrawn a few times a second."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.streams: dict[str, StreamView] = {}
        self.console = console or Console()
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def update(self, rec: dict[str, Any], gaps: int) -> None:
        v = self.streams.setdefault(rec["stream"], StreamView())
        v.last_seen = time.monotonic()
        v.gaps += gaps
        if "rms_dbfs" in rec:
            v.rms_dbfs, v.peak_dbfs = rec.get("rms_dbfs"), rec.get("peak_dbfs")
            v.clipped += int(rec.get("clipped", 0) or 0)
        else:
            v.labels[rec["model"]] = _labels_text(rec.get("labels") or [])
        for e in rec.get("events") or []:
            if isinstance(e, dict) and isinstance(e.get("t_ns"), int):
                mark = "▲" if e.get("state") == "start" else "▼"
                v.events.append(f"{_clock(e['t_ns'])} {mark}{e.get('label')} ({rec['model']})")
        if rec.get("latency_ms") is not None:
            v.latency_ms = rec["latency_ms"]
        self.live.update(self._render())

    def render(self):
        """The table as it is now (a rich renderable)."""
        return self._render()

    def _render(self):
        from rich.table import Table
        from rich.text import Text

        t = Table(title="soundbus tail", expand=True)
        for col in ("stream", "level", "labels", "events", "gaps", "latency"):
            t.add_column(col)
        for name, v in sorted(self.streams.items()):
            t.add_row(
                name + (" (silent)" if time.monotonic() - v.last_seen > 3 else ""),
                _meter(v.rms_dbfs, v.peak_dbfs, v.clipped),
                Text("\n".join(f"{m}: {txt}" for m, txt in sorted(v.labels.items()))),
                Text("\n".join(v.events)),
                str(v.gaps),
                f"{v.latency_ms:.1f} ms" if v.latency_ms is not None else "-",
            )
        return t


def _meter(rms: float | None, peak: float | None, clipped: int, width: int = 20) -> str:
    """A text level meter from -60 to 0 dBFS (needs a ``level`` model running)."""
    if rms is None:
        return "-"
    filled = max(0, min(width, int((rms + 60.0) / 60.0 * width)))
    bar = "█" * filled + "·" * (width - filled)
    clip = " CLIP" if clipped else ""
    return f"{bar} {rms:5.1f} dB (peak {peak:.1f}){clip}"


def _prefixes(streams: list[str] | None, models: list[str] | None) -> list[bytes]:
    if not streams:
        return [topic_for(Kind.RESULT)]
    if models:
        return [topic_for(Kind.RESULT, s, m) for s in streams for m in models]
    return [topic_for(Kind.RESULT, s) for s in streams]


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Subscribe to results and print them until Ctrl-C (or ``--count`` results)."""
    out = out or sys.stdout
    live_view = out.isatty() and not args.json and not args.plain
    # The live view owns the terminal: log lines on the same terminal would tear it, so there
    # only warnings are logged. Logs to a pipe (soundbus up reads them) stay as they are.
    quiet = live_view and sys.stderr.isatty() and not args.verbose
    setup_logging(-1 if quiet else verbosity(args))
    stop = StopFlag()
    metrics = stage_metrics(args, "tail")
    ctx = zmq.Context()
    sock = open_sub(ctx, inputs_of(args), _prefixes(args.stream, args.model), socket_options(args))
    receiver = Receiver([sock], metrics)
    logging.getLogger("tail").info("ready inputs=%s", ",".join(inputs_of(args)))
    tracker = SequenceTracker(metrics)
    models = set(args.model or [])
    live = LiveView() if live_view else None
    shown = 0
    try:
        if live:
            live.start()
        while not stop:
            msg = receiver.recv(100)
            if msg is None or msg.header.kind != Kind.RESULT:
                continue
            h = msg.header
            if models and h.model not in models:
                continue
            cont, missing = tracker.check(f"{h.stream}/{h.model}", h.epoch, h.seq, bool(h.flags & Flag.DISCONTINUITY))
            if cont is Continuity.STALE:
                continue
            rec = as_record(msg, time.time_ns())
            if live:
                live.update(rec, missing)
            elif args.json:
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                out.flush()
            else:
                out.write(plain_line(rec) + "\n")
                out.flush()
            shown += 1
            if args.count and shown >= args.count:
                break
    except BrokenPipeError:  # `soundbus tail | head`: the reader left
        pass
    finally:
        if live:
            live.stop()
        receiver.close()
        sock.close()
        ctx.term()
    return 0


if __name__ == "__main__":  # python -m classify.tail ARGS == soundbus tail ARGS
    from classify.cli import register
    from common.cli import standalone

    standalone(register, "tail")
