"""What the view keeps per stream and per model between publishes (web.logic fills them).

:class:`StreamView` holds a stream's samples until the next publish, its spectrogram state,
its models and its health counters; :class:`ModelView` one model's latest labels, the labels
on, and its counters; :class:`HopLatency` the latency per trace segment. Each turns itself into
the JSON parts the page draws: ``fast()`` (every update) and ``slow()`` (about once a second).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.runtime.streams import SeqCursor
from common.wire.messages import Label, Result
from web.spectrum import MelColumns

TOP_LABELS = 5
MAX_HELD_S = 2.0  # samples held per stream between publishes; past it the oldest are dropped (counted)


class HopLatency:
    """Mean and max per trace segment over the last period (~1 s): stage time and transit time."""

    __slots__ = ("acc", "shown")

    def __init__(self) -> None:
        self.acc: dict[str, list[float]] = {}  # segment -> [sum ms, count, max ms]
        self.shown: list[list[Any]] = []  # [[segment, mean ms, max ms], ...] of the last period

    def add(self, r: Result, recv_ns: int) -> None:
        prev = None
        for hop in r.trace:
            if prev is not None:
                self._add(f"{prev.stage}→{hop.stage}", hop.t_in_ns - prev.t_out_ns)
            self._add(hop.stage, hop.t_out_ns - hop.t_in_ns)
            prev = hop
        if prev is not None:
            self._add(f"{prev.stage}→web", recv_ns - prev.t_out_ns)

    def _add(self, seg: str, ns: int) -> None:
        ms = ns / 1e6
        a = self.acc.get(seg)
        if a is None:
            if len(self.acc) >= 40:  # at most 16 hops: 33 segments
                return
            a = self.acc[seg] = [0.0, 0, -math.inf]
        a[0] += ms
        a[1] += 1
        a[2] = max(a[2], ms)

    def roll(self) -> None:
        """End the period: what it measured becomes what is shown."""
        if self.acc:
            self.shown = [[seg, round(s / n, 2), round(mx, 2)] for seg, (s, n, mx) in self.acc.items()]
            self.acc = {}


@dataclass
class ModelView:
    """One model on one stream."""

    cursor: SeqCursor = field(default_factory=SeqCursor)
    labels: list[Label] = field(default_factory=list)  # the latest result's labels, as received
    on: dict[str, list[Any]] = field(default_factory=dict)  # label -> [onset t_ns, score]
    results: int = 0
    missing: int = 0  # results that never arrived (sequence gaps)
    lost_ns: int = 0  # audio lost upstream, as results reported it
    age_ns: int | None = None  # the latest result: received - its audio's end
    final: bool = False
    latency: HopLatency = field(default_factory=HopLatency)
    next_latency: float = 0.0  # monotonic s: take the next result's trace from then on

    def fast(self) -> list[Any]:
        """[labels best first [[name, score], ...], labels on {name: [onset t_ns, score]}]."""
        best = sorted(self.labels, key=lambda lbl: -lbl.score)[:TOP_LABELS] if len(self.labels) > 1 else self.labels
        return [[[lbl.name, round(lbl.score, 3)] for lbl in best], self.on]

    def slow(self) -> dict[str, Any]:
        return {"results": self.results, "missing": self.missing, "lost_ms": self.lost_ns // 1_000_000,
                "age_ms": None if self.age_ns is None else round(self.age_ns / 1e6, 1), "final": self.final,
                "latency": self.latency.shown}


class StreamView:
    """One stream: its spectrogram state, level, models and health."""

    def __init__(self, now_mono: float) -> None:
        self.tensor_cursor = SeqCursor()
        self.mel: MelColumns | None = None
        self.rate = 0
        self.channels = 0
        self.held: list[np.ndarray] = []  # (channels, samples) float32 views of tensors (or zeros for lost audio)
        self.held_samples = 0
        self.shown_level: tuple[float, float] | None = None
        self.models: dict[str, ModelView] = {}
        self.tensors = 0
        self.tensor_gaps = 0  # tensor messages missing
        self.lost_samples = 0  # samples lost upstream (headers' ``lost``) or in gaps, at ``rate``
        self.audio_ns = 0  # end of the latest audio (tensor or result) seen
        self.source = ""
        self.source_state = ""
        self.ended = False
        self.last_seen = now_mono
        self.next_trace = [0.0, 0.0]  # monotonic s: read the next tensor's [0] / result's [1] trace from then on
        self.changed = True  # the fast part (level, labels) changed since the last publish
        self.reshaped = True  # the slow part must go out at the next publish, not only at the next second

    def hold(self, x: np.ndarray) -> int:
        """Keep ``x`` (channels, samples) until the next publish; returns samples dropped to stay bounded."""
        self.held.append(x)
        self.held_samples += x.shape[1]
        dropped = 0
        while self.held_samples > MAX_HELD_S * self.rate and len(self.held) > 1:
            old = self.held.pop(0)
            self.held_samples -= old.shape[1]
            dropped += old.shape[1]
        return dropped

    def take_held(self) -> np.ndarray | None:
        """The held samples as one (channels, samples) array, or None; then holds nothing."""
        if not self.held:
            return None
        x = self.held[0] if len(self.held) == 1 else np.concatenate(self.held, axis=1)
        self.held, self.held_samples = [], 0
        return x

    def fast(self) -> dict[str, Any]:
        """What changes with every update: audio time, level, labels and labels on per model."""
        return {"audio_ns": self.audio_ns, "level": self.shown_level,
                "models": {name: mv.fast() for name, mv in self.models.items()}}

    def slow(self, now_mono: float) -> dict[str, Any]:
        """Counters and health, sent about once a second (and at once when the stream's shape changes)."""
        return {
            "rate": self.rate, "channels": self.channels, "source": self.source, "source_state": self.source_state,
            "idle": round(now_mono - self.last_seen, 1), "ended": self.ended,
            "tensor": {"messages": self.tensors, "gaps": self.tensor_gaps,
                       "lost_ms": self.lost_samples * 1000 // self.rate if self.rate else 0},
            "models": {name: mv.slow() for name, mv in self.models.items()},
        }
