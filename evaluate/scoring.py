"""From clips and the pipeline's results to figures per model, per family and per gate setting.

Times inside a clip are seconds from its first sample: the earliest ``start_ns`` of any of its
results (every model's first window starts at the clip's first sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from classify.gate import GateConfig, SpeechGate, speech_score
from evaluate import metrics
from evaluate.families import FAMILIES, family_of, yamnet_family_by_index
from evaluate.labels import Clip
from evaluate.pipeline import WindowResult

VAD = "vad"
YAMNET = "yamnet"
POOLINGS = ("max", "mean")


@dataclass
class ClipRun:
    """One clip with what the pipeline said about it.

    ``span``: (start_s, end_s) of the labelled sound (the labels file's spans, else by energy).
    ``vad``/``yamnet``: that model's results, in window order.
    """

    clip: Clip
    duration_s: float
    span: tuple[float, float] | None
    vad: list[WindowResult] = field(default_factory=list)
    yamnet: list[WindowResult] = field(default_factory=list)

    @property
    def t0_ns(self) -> int:
        return min(r.start_ns for r in self.vad + self.yamnet)

    def rel(self, t_ns: int) -> float:
        return (t_ns - self.t0_ns) / 1e9


def attach(runs: Sequence[ClipRun], results: dict[tuple[str, str], list[WindowResult]]) -> None:
    """Put each (stream, model) result list on its clip, in window order."""
    for run in runs:
        for model in (VAD, YAMNET):
            rs = sorted(results.get((run.clip.stream, model), []), key=lambda r: (r.start_ns, r.end_ns))
            setattr(run, model, rs)


def starts(results: Sequence[WindowResult], family: str, model: str) -> list[float]:
    """Wall-clock ns of family onsets in a model's events: a label of ``family`` starts while none
    of that family is on. Several labels of one family starting together are one onset."""
    on: set[str] = set()
    out = []
    for r in results:
        for e in r.events:
            if family_of(model, e.label) != family:
                continue
            if e.state == "start":
                if not on:
                    out.append(e.t_ns)
                on.add(e.label)
            else:
                on.discard(e.label)
    return out


def stops(results: Sequence[WindowResult], family: str, model: str) -> list[int]:
    """Wall-clock ns at which the last label of ``family`` stopped (family offsets)."""
    on: set[str] = set()
    out = []
    for r in results:
        for e in r.events:
            if family_of(model, e.label) != family:
                continue
            if e.state == "start":
                on.add(e.label)
            elif e.label in on:
                on.discard(e.label)
                if not on:
                    out.append(e.t_ns)
    return out


def yamnet_scores(run: ClipRun) -> np.ndarray:
    """(windows, 521) scores of the clip's YAMNet windows; labels a result left out score 0."""
    from classify.models.yamnet import class_names

    index = {name: i for i, name in enumerate(class_names())}
    m = np.zeros((len(run.yamnet), len(index)), dtype=np.float32)
    for w, r in enumerate(run.yamnet):
        for name, score in r.labels:
            i = index.get(name)
            if i is not None:
                m[w, i] = score
    return m


def gate_events(run: ClipRun, config: GateConfig) -> list:
    """Replay the clip's vad and YAMNet results through a SpeechGate in arrival order (by window end)."""
    gate = SpeechGate(config)
    feed = [(r.end_ns, 0, r) for r in run.vad] + [(r.end_ns, 1, r) for r in run.yamnet]
    out = []
    for _, kind, r in sorted(feed, key=lambda x: (x[0], x[1])):
        if kind == 0:
            out += gate.vad(r.start_ns, r.end_ns, r.labels[0][1] if r.labels else 0.0)
        else:
            out += gate.yamnet(r.start_ns, r.end_ns, speech_score(r.labels))
    end = max(r.end_ns for r in run.vad + run.yamnet)
    return out + gate.end(end)


@dataclass
class SpeechRow:
    """One speech decision (live vad, a gate setting, YAMNet alone) on one split."""

    name: str
    score: metrics.Binary
    onset: metrics.Timing
    offset: metrics.Timing


def speech_rows(runs: Sequence[ClipRun], settings: Sequence[GateConfig]) -> list[SpeechRow]:
    """Live vad events first, then each gate setting, then YAMNet's own speech events."""
    scored = [r for r in runs if r.clip.speech != "unknown"]
    truth = [r.clip.speech == "yes" for r in scored]
    secs = [r.duration_s for r in scored]
    rows = []
    live = [(starts(r.vad, "speech", VAD), stops(r.vad, "speech", VAD)) for r in scored]
    rows.append(_speech_row("vad (live events)", scored, truth, secs, live))
    for cfg in settings:
        evs = [gate_events(r, cfg) for r in scored]
        pairs = [([e.t_ns for e in ev if e.state == "start"], [e.t_ns for e in ev if e.state == "stop"]) for ev in evs]
        rows.append(_speech_row(f"gate: {cfg.name}", scored, truth, secs, pairs))
    ylive = [(starts(r.yamnet, "speech", YAMNET), stops(r.yamnet, "speech", YAMNET)) for r in scored]
    rows.append(_speech_row("yamnet alone (speech family events)", scored, truth, secs, ylive))
    return rows


def _speech_row(name, scored, truth, secs, pairs) -> SpeechRow:
    score = metrics.binary(truth, [len(s) for s, _ in pairs], secs)
    on_err, off_err = [], []
    for run, t, (st, sp) in zip(scored, truth, pairs):
        if t and run.span and st:
            on_err.append(run.rel(min(st)) - run.span[0])
            if sp:
                off_err.append(run.rel(max(sp)) - run.span[1])
    return SpeechRow(name, score, metrics.timing(on_err), metrics.timing(off_err))


@dataclass
class YamnetFigures:
    """YAMNet on one split with one pooling."""

    pooling: str
    families: list[metrics.FamilyScore]
    confusion: np.ndarray  # (FAMILIES, FAMILIES), rows true, columns top-1 predicted
    overall_topk: float


def yamnet_figures(runs: Sequence[ClipRun], pooling: str) -> YamnetFigures:
    fam_by_index = yamnet_family_by_index()
    truth, ranked = [], []
    for r in runs:
        if not r.yamnet:
            continue
        truth.append(r.clip.family)
        ranked.append(metrics.top_families(metrics.pool(yamnet_scores(r), pooling), fam_by_index, k=3))
    present = [f for f in FAMILIES if f in truth]
    fams = metrics.family_scores(truth, ranked, present)
    conf = metrics.confusion(truth, [rk[0] for rk in ranked], FAMILIES)
    overall = sum(f.topk_hits for f in fams) / max(1, sum(f.clips for f in fams))
    return YamnetFigures(pooling, fams, conf, overall)


@dataclass
class FamilyEvents:
    """YAMNet's family events: false alarms on other families' clips, timing on its own."""

    family: str
    score: metrics.Binary
    onset: metrics.Timing
    offset: metrics.Timing


def yamnet_events(runs: Sequence[ClipRun]) -> list[FamilyEvents]:
    out = []
    for fam in FAMILIES:
        scored = [r for r in runs if not (fam == "speech" and r.clip.speech == "unknown")]
        if not any(r.clip.family == fam for r in scored):
            continue
        truth = [r.clip.family == fam for r in scored]
        pairs = [(starts(r.yamnet, fam, YAMNET), stops(r.yamnet, fam, YAMNET)) for r in scored]
        row = _speech_row(fam, scored, truth, [r.duration_s for r in scored], pairs)
        out.append(FamilyEvents(fam, row.score, row.onset, row.offset))
    return out


def choose_setting(rows: Sequence[SpeechRow], min_recall: float) -> str | None:
    """The gate setting with the fewest false alarms (clip rate) among those reaching ``min_recall``."""
    ok = [r for r in rows if r.name.startswith("gate:") and r.score.recall >= min_recall]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.score.false_alarm_rate, -r.score.recall)).name
