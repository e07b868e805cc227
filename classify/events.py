"""Onset/offset events from scores, with hysteresis, so consumers get "speech started /
stopped" instead of a flood of scores.

A label turns on when its score reaches ``on`` and off only when it falls below ``off``
(``off`` <= ``on``) for ``hold`` windows in a row; scores in between keep the current state,
so a score hovering at the threshold, or a short pause between words, does not chatter.
A stop is stamped with the start of the first window that fell below ``off``.
One EventTracker per stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def parse_threshold(text: str) -> tuple[str, float, float]:
    """'0.6', '0.6:0.4', 'speech=0.6:0.4' -> (label or '*', on, off). Raises ValueError."""
    label, _, values = text.rpartition("=")
    on_s, _, off_s = values.partition(":")
    on = float(on_s)
    off = float(off_s) if off_s else on
    if off > on:
        raise ValueError(f"off threshold {off} is above on threshold {on} in {text!r}")
    return (label or "*"), on, off


def threshold_arrays(
    labels: tuple[str, ...], defaults: dict[str, tuple[float, float]], overrides: list[tuple[str, float, float]]
) -> tuple[np.ndarray, np.ndarray]:
    """(on, off) per label, float32 (labels,): overrides beat the model's defaults; '*' means every label.

    A label with no threshold gets on = +inf (never fires).
    """
    on = np.full(len(labels), np.inf, dtype=np.float32)
    off = np.full(len(labels), np.inf, dtype=np.float32)
    index = {name: i for i, name in enumerate(labels)}
    for table in (list(defaults.items()), [(lbl, (a, b)) for lbl, a, b in overrides]):
        for label, (a, b) in table:
            if label == "*":
                on[:], off[:] = a, b
            elif label in index:
                on[index[label]], off[index[label]] = a, b
            else:
                raise ValueError(f"threshold for unknown label {label!r}; the model's labels start {labels[:5]}")
    return on, off


class EventTracker:
    """Which labels are on for one stream; turns score rows into start/stop events."""

    def __init__(self, labels: tuple[str, ...], on: np.ndarray, off: np.ndarray, hold: int = 1) -> None:
        self.labels, self.on, self.off = labels, on, off
        self.hold = max(1, hold)  # windows below ``off`` in a row before a stop
        self.active = np.zeros(len(labels), dtype=bool)
        self.n_active = 0
        self.below = np.zeros(len(labels), dtype=np.int32)  # consecutive windows below off, while active
        self.below_since = np.zeros(len(labels), dtype=np.int64)  # start ns of the first of them

    def update(self, scores: np.ndarray, t_ns: int) -> list[dict[str, Any]]:
        """Events caused by one window's scores (labels,), stamped with window start times (ns)."""
        if not self.n_active:  # the common case, kept cheap: nothing on, does anything start?
            starts = scores >= self.on
            if not starts.any():
                return []
            self.active |= starts
            self.n_active = int(starts.sum())
            return [{"label": self.labels[i], "state": "start", "t_ns": t_ns} for i in np.flatnonzero(starts)]
        low = self.active & (scores < self.off)
        first_low = low & (self.below == 0)
        self.below_since[first_low] = t_ns
        self.below = np.where(low, self.below + 1, 0)
        stops = low & (self.below >= self.hold)
        starts = ~self.active & (scores >= self.on)
        if not starts.any() and not stops.any():
            return []
        self.active |= starts
        self.active &= ~stops
        self.n_active = int(self.active.sum())
        self.below[stops] = 0
        return [
            {"label": self.labels[i], "state": "stop", "t_ns": int(self.below_since[i])} for i in np.flatnonzero(stops)
        ] + [{"label": self.labels[i], "state": "start", "t_ns": t_ns} for i in np.flatnonzero(starts)]

    def reset(self, t_ns: int) -> list[dict[str, Any]]:
        """Stop every active label (the audio was interrupted at ``t_ns``); returns those stop events."""
        events = [{"label": self.labels[i], "state": "stop", "t_ns": t_ns} for i in np.flatnonzero(self.active)]
        self.active[:] = False
        self.n_active = 0
        self.below[:] = 0
        return events
