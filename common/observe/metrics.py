"""Counters every stage keeps, logged as a one-line summary and optionally served to Prometheus.

The plain counters are the source of truth (tests and the log line read them);
when ``--metrics-port`` is given the same numbers are exported with prometheus-client.
Per-stream counters exist only for the streams a stage holds: ``forget(stream)`` folds a
stream's counts into the totals and drops its Prometheus series, so neither the counters
nor the exported label sets grow with the number of stream ids ever seen.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

from common.errors import UserError

log = logging.getLogger(__name__)

# Latency buckets in seconds: a hop is expected well under 2 ms, a model window under 50 ms.
_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


class StageMetrics:
    """Counts for one stage process: frames, gaps, drops, bad messages, latency."""

    def __init__(self, stage: str, port: int | None = None, summary_every_s: float = 10.0) -> None:
        self.stage = stage
        self.frames_in: Counter[str] = Counter()
        self.frames_out: Counter[str] = Counter()
        self.gaps: Counter[str] = Counter()  # messages missing per stream (sequence jumps)
        self.drops: Counter[str] = Counter()  # messages/windows this stage dropped on purpose, by reason
        self.bad: Counter[str] = Counter()  # rejected input messages, by reason
        self.events: Counter[str] = Counter()  # anything else worth counting (epoch changes, resets, ...)
        self.retired_in = 0  # counts of streams forgotten
        self.retired_out = 0
        self.retired_gaps = 0
        self.summary_every_s = summary_every_s
        self._last_summary = time.monotonic()
        self._prom = _Prometheus(stage, port) if port else None

    def frame_in(self, stream: str, n: int = 1) -> None:
        self.frames_in[stream] += n
        if self._prom:
            self._prom.frames_in.labels(self.stage, stream).inc(n)

    def frame_out(self, stream: str, n: int = 1) -> None:
        self.frames_out[stream] += n
        if self._prom:
            self._prom.frames_out.labels(self.stage, stream).inc(n)

    def gap(self, stream: str, missing: int) -> None:
        self.gaps[stream] += missing
        if self._prom:
            self._prom.gaps.labels(self.stage, stream).inc(missing)

    def forget(self, stream: str) -> None:
        """Fold one stream's counters into the totals (the stage no longer holds it)."""
        self.retired_in += self.frames_in.pop(stream, 0)
        self.retired_out += self.frames_out.pop(stream, 0)
        self.retired_gaps += self.gaps.pop(stream, 0)
        if self._prom:
            self._prom.forget(self.stage, stream)

    @property
    def total_in(self) -> int:
        return self.retired_in + sum(self.frames_in.values())

    @property
    def total_out(self) -> int:
        return self.retired_out + sum(self.frames_out.values())

    @property
    def total_gaps(self) -> int:
        return self.retired_gaps + sum(self.gaps.values())

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n
        if self._prom:
            self._prom.drops.labels(self.stage, reason).inc(n)

    def bad_message(self, reason: str) -> None:
        self.bad[reason] += 1
        if self._prom:
            self._prom.bad.labels(self.stage, reason).inc()

    def event(self, name: str, n: int = 1) -> None:
        self.events[name] += n
        if self._prom:
            self._prom.events.labels(self.stage, name).inc(n)

    @property
    def exporting(self) -> bool:
        """True when metrics are served: only then is per-message latency worth computing."""
        return self._prom is not None

    def latency(self, hop: str, seconds: float) -> None:
        if self._prom:
            self._prom.latency.labels(self.stage, hop).observe(seconds)

    def queue_depth(self, depth: int) -> None:
        if self._prom:
            self._prom.queue.labels(self.stage).set(depth)

    def maybe_log_summary(self, extra: str = "") -> None:
        """Log one line every ``summary_every_s`` seconds."""
        now = time.monotonic()
        if now - self._last_summary < self.summary_every_s:
            return
        self._last_summary = now
        log.info("%s", self.summary() + (f" {extra}" if extra else ""))

    def summary(self) -> str:
        def detail(c: Counter[str]) -> str:
            return ",".join(f"{k}={v}" for k, v in sorted(c.items())) or "0"

        return (
            f"{self.stage}: streams={len(self.frames_in.keys() | self.frames_out.keys())} in={self.total_in} "
            f"out={self.total_out} gaps={self.total_gaps} drops={detail(self.drops)} "
            f"bad={detail(self.bad)}"
        )


class _Prometheus:
    def __init__(self, stage: str, port: int) -> None:
        import prometheus_client as pc

        reg = pc.CollectorRegistry()
        lbl = ["stage", "stream"]
        self.frames_in = pc.Counter("soundbus_frames_in", "Messages received per stream", lbl, registry=reg)
        self.frames_out = pc.Counter("soundbus_frames_out", "Messages published per stream", lbl, registry=reg)
        self.gaps = pc.Counter("soundbus_gap_frames", "Messages missing (sequence jumps)", lbl, registry=reg)
        self.drops = pc.Counter("soundbus_drops", "Dropped on purpose, by reason", ["stage", "reason"], registry=reg)
        self.bad = pc.Counter("soundbus_bad_messages", "Rejected messages, by reason", ["stage", "reason"], registry=reg)
        self.events = pc.Counter("soundbus_events", "Other counted events", ["stage", "name"], registry=reg)
        self.latency = pc.Histogram(
            "soundbus_latency_seconds", "Latency per hop", ["stage", "hop"], buckets=_LATENCY_BUCKETS, registry=reg
        )
        self.queue = pc.Gauge("soundbus_queue_depth", "Items waiting in the stage", ["stage"], registry=reg)
        # Loopback unless told otherwise: in a container or pod the scraper is elsewhere (0.0.0.0 there).
        addr = os.environ.get("SOUNDBUS_METRICS_ADDR") or "127.0.0.1"
        try:
            pc.start_http_server(port, addr=addr, registry=reg)
        except (OSError, OverflowError, ValueError) as e:  # ValueError: addr is no IP address
            raise UserError(
                f"cannot serve metrics on {addr}:{port} ({getattr(e, 'strerror', None) or e}); choose another "
                "--metrics-port (1-65535, not in use) or SOUNDBUS_METRICS_ADDR."
            ) from None
        log.info("metrics at http://%s:%d/metrics", addr, port)

    def forget(self, stage: str, stream: str) -> None:
        for metric in (self.frames_in, self.frames_out, self.gaps):
            try:
                metric.remove(stage, stream)
            except KeyError:
                pass

