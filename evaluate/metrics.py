"""Scores from clip-level decisions: pure functions on plain values (no audio, no processes).

Clip level: a clip is one labelled recording. "Detected" means the model (or gate) started
the target label at least once in the clip; a false alarm is a start on a clip without the
target. Rates are fractions in [0, 1]; durations in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Binary:
    """Detection of one target over clips: counts, and the rates derived from them (nan when undefined)."""

    tp: int
    fn: int
    fp: int
    tn: int
    false_starts: int  # start events on clips without the target
    negative_s: float  # seconds of audio without the target

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def false_alarm_rate(self) -> float:
        """Fraction of clips without the target on which it fired."""
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else math.nan

    @property
    def false_alarms_per_hour(self) -> float:
        """Start events per hour of audio without the target."""
        return self.false_starts / (self.negative_s / 3600) if self.negative_s > 0 else math.nan


def binary(truth: Sequence[bool], starts: Sequence[int], seconds: Sequence[float]) -> Binary:
    """Per clip: has the target (``truth``), start events the model emitted, clip length (s)."""
    if not (len(truth) == len(starts) == len(seconds)):
        raise ValueError("truth, starts and seconds must have one entry per clip")
    tp = sum(1 for t, s in zip(truth, starts) if t and s > 0)
    fn = sum(1 for t, s in zip(truth, starts) if t and s == 0)
    fp = sum(1 for t, s in zip(truth, starts) if not t and s > 0)
    tn = sum(1 for t, s in zip(truth, starts) if not t and s == 0)
    false_starts = sum(s for t, s in zip(truth, starts) if not t)
    negative_s = float(sum(d for t, d in zip(truth, seconds) if not t))
    return Binary(tp, fn, fp, tn, false_starts, negative_s)


@dataclass(frozen=True)
class FamilyScore:
    """One family over clips: top-1 recall and precision, top-k accuracy (k = 3 by default)."""

    family: str
    clips: int  # clips labelled with this family
    predicted: int  # clips whose top-1 family is this one
    top1_hits: int
    topk_hits: int

    @property
    def recall(self) -> float:
        return self.top1_hits / self.clips if self.clips else math.nan

    @property
    def precision(self) -> float:
        return self.top1_hits / self.predicted if self.predicted else math.nan

    @property
    def topk_accuracy(self) -> float:
        return self.topk_hits / self.clips if self.clips else math.nan


def family_scores(truth: Sequence[str], ranked: Sequence[Sequence[str]], families: Iterable[str],
                  k: int = 3) -> list[FamilyScore]:
    """Per family, from each clip's true family and its predicted families in rank order.

    ``ranked[i]`` is the family of clip i's top class, second class, ... (repeats allowed:
    the top 3 classes "Dog, Bark, Animal" are three animal votes).
    """
    if len(truth) != len(ranked):
        raise ValueError("truth and ranked must have one entry per clip")
    out = []
    for fam in families:
        clips = sum(1 for t in truth if t == fam)
        predicted = sum(1 for r in ranked if r and r[0] == fam)
        top1 = sum(1 for t, r in zip(truth, ranked) if t == fam and r and r[0] == fam)
        topk = sum(1 for t, r in zip(truth, ranked) if t == fam and fam in r[:k])
        out.append(FamilyScore(fam, clips, predicted, top1, topk))
    return out


def confusion(truth: Sequence[str], predicted: Sequence[str], families: Sequence[str]) -> np.ndarray:
    """Counts (true family, predicted family): int array (len(families), len(families)).

    Predictions outside ``families`` are not counted.
    """
    index = {f: i for i, f in enumerate(families)}
    m = np.zeros((len(families), len(families)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        if t in index and p in index:
            m[index[t], index[p]] += 1
    return m


@dataclass(frozen=True)
class Timing:
    """Signed errors (s) of detected onsets or offsets against the reference: summary statistics."""

    n: int
    median_abs: float
    p90_abs: float
    mean: float  # signed: > 0 means late


def timing(errors_s: Sequence[float]) -> Timing:
    if not errors_s:
        return Timing(0, math.nan, math.nan, math.nan)
    e = np.asarray(errors_s, dtype=np.float64)
    return Timing(len(e), float(np.median(np.abs(e))), float(np.percentile(np.abs(e), 90)), float(e.mean()))


def pool(scores: np.ndarray, how: str) -> np.ndarray:
    """Clip scores from window scores (windows, classes): ``max`` or ``mean`` over windows."""
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"need window scores shaped (windows >= 1, classes), got {scores.shape}")
    if how == "max":
        return scores.max(axis=0)
    if how == "mean":
        return scores.mean(axis=0)
    raise ValueError(f"pooling must be 'max' or 'mean', got {how!r}")


def top_families(clip_scores: np.ndarray, family_by_index: Sequence[str], k: int = 3) -> list[str]:
    """Families of the k highest clip scores, best first (ties broken by class index)."""
    order = np.argsort(-clip_scores, kind="stable")[:k]
    return [family_by_index[i] for i in order]

