"""Onset/offset events from scores, with hysteresis, so consumers get "speech started /
stopped" instead of a flood of scores.

A label turns on when its score reaches ``on`` and off only when it falls below ``off``
(``off`` <= ``on``) for ``hold`` windows in a row; scores in between keep the current state,
so a score hovering at the threshold, or a short pause between words, does not chatter.
A stop is stamped with the start of the first window that fell below ``off``.
One EventTracker per stream.
"""

from __future__ import annotations

import logging

import numpy as np

from common.wire.messages import Event

log = logging.getLogger("soundbus.classify")


def parse_threshold(text: str) -> tuple[str, float, float]:
    """'0.6', '0.6:0.4', 'speech=0.6:0.4' -> (label or '*', on, off). Raises ValueError."""
    label, _, values = text.rpartition("=")
    on_s, _, off_s = values.partition(":")
    on = float(on_s)
    off = float(off_s) if off_s else on
    if not (0.0 <= on <= 1.0 and 0.0 <= off <= 1.0):  # also refuses nan
        raise ValueError(f"thresholds are scores between 0 and 1, got {text!r}")
    if off > on:
        raise ValueError(f"off threshold {off} is above on threshold {on} in {text!r}")
    return (label or "*"), on, off


def threshold_arrays(
    labels: tuple[str, ...],
    defaults: dict[str, tuple[float, float]],
    overrides: list[tuple[str, float, float]],
    skip_unknown: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(on, off) per label, float32 (labels,): overrides beat the model's defaults; '*' means every label.

    A label with no threshold gets on = +inf (never fires). An override for a label the model
    does not have is a ValueError (a typo), or skipped with ``skip_unknown`` (``soundbus up``
    hands one threshold list to several models).
    """
    on = np.full(len(labels), np.inf, dtype=np.float32)
    off = np.full(len(labels), np.inf, dtype=np.float32)
    index = {name: i for i, name in enumerate(labels)}
    for table, is_override in ((list(defaults.items()), False), ([(lbl, (a, b)) for lbl, a, b in overrides], True)):
        for label, (a, b) in table:
            if label == "*":
                on[:], off[:] = a, b
            elif label in index:
                on[index[label]], off[index[label]] = a, b
            elif is_override and skip_unknown:
                log.info("threshold for %r skipped: this model has no such label", label)
            else:
                raise ValueError(f"threshold for unknown label {label!r}; the model's labels start {labels[:5]}")
    return on, off


class EventTracker:
    """Which labels are on for one stream; turns score rows into start/stop Events.

    A start carries the score that started it; a stop carries the highest score while the
    label was on and when it started (``since_ns``), so a stop alone gives the whole span.
    """

    def __init__(self, labels: tuple[str, ...], on: np.ndarray, off: np.ndarray, hold: int = 1) -> None:
        self.labels, self.on, self.off = labels, on, off
        self.hold = max(1, hold)  # windows below ``off`` in a row before a stop
        n = len(labels)
        self.active = np.zeros(n, dtype=bool)
        self.n_active = 0
        self.below = np.zeros(n, dtype=np.int32)  # consecutive windows below off, while active
        self.below_since = np.zeros(n, dtype=np.int64)  # start ns of the first of them
        self.started = np.zeros(n, dtype=np.int64)  # start ns of the active span
        self.peak = np.zeros(n, dtype=np.float32)  # highest score of the active span

    def update(self, scores: np.ndarray, t_ns: int) -> list[Event]:
        """Events caused by one window's scores (labels,) in [0, 1], stamped with its start time (ns)."""
        if not self.n_active:  # the common case, kept cheap: nothing on, does anything start?
            starts = scores >= self.on
            if not starts.any():
                return []
            return self._start(starts, scores, t_ns)
        act = self.active
        self.peak[act] = np.maximum(self.peak[act], scores[act])
        low = act & (scores < self.off)
        first_low = low & (self.below == 0)
        self.below_since[first_low] = t_ns
        self.below = np.where(low, self.below + 1, 0)
        stops = low & (self.below >= self.hold)
        starts = ~act & (scores >= self.on)
        if not starts.any() and not stops.any():
            return []
        events = self._stop(stops, self.below_since)
        return events + (self._start(starts, scores, t_ns) if starts.any() else [])

    def reset(self, t_ns: int) -> list[Event]:
        """Stop every active label (the audio was interrupted at ``t_ns``); returns those stops."""
        events = self._stop(self.active.copy(), np.full(len(self.labels), t_ns, dtype=np.int64))
        self.below[:] = 0
        return events

    def _start(self, starts: np.ndarray, scores: np.ndarray, t_ns: int) -> list[Event]:
        self.active |= starts
        self.n_active = int(self.active.sum())
        self.started[starts] = t_ns
        self.peak[starts] = scores[starts]
        return [Event(self.labels[i], "start", t_ns, _score(scores[i]), t_ns) for i in np.flatnonzero(starts)]

    def _stop(self, stops: np.ndarray, at_ns: np.ndarray) -> list[Event]:
        if not stops.any():
            return []
        events = [
            Event(self.labels[i], "stop", max(int(at_ns[i]), int(self.started[i])), _score(self.peak[i]),
                  int(self.started[i]))
            for i in np.flatnonzero(stops)
        ]
        self.active &= ~stops
        self.below[stops] = 0
        self.n_active = int(self.active.sum())
        return events


def _score(x: float) -> float:
    """A score as the wire wants it: a finite float in [0, 1]."""
    x = float(x)
    return min(max(x, 0.0), 1.0) if x == x else 0.0
