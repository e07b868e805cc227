"""The evaluation's figures as Markdown tables (printed, and written into docs/accuracy.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from evaluate import scoring
from evaluate.families import FAMILIES

BEGIN, END = "<!-- eval:results:begin -->", "<!-- eval:results:end -->"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f}%"


def _num(x: float, fmt: str = ".2f") -> str:
    return "—" if math.isnan(x) else format(x, fmt)


def _ms(t) -> str:
    return "—" if not t.n else f"{1000 * t.median_abs:.0f} / {1000 * t.p90_abs:.0f}"


def data_table(runs: Sequence[scoring.ClipRun]) -> str:
    lines = ["| family | tune clips | held-out clips | held-out minutes |", "|---|---|---|---|"]
    for fam in FAMILIES:
        tune = [r for r in runs if r.clip.family == fam and r.clip.split == "tune"]
        held = [r for r in runs if r.clip.family == fam and r.clip.split == "heldout"]
        if tune or held:
            lines.append(f"| {fam} | {len(tune)} | {len(held)} | {sum(r.duration_s for r in held) / 60:.1f} |")
    tune = [r for r in runs if r.clip.split == "tune"]
    held = [r for r in runs if r.clip.split == "heldout"]
    lines.append(f"| all | {len(tune)} | {len(held)} | {sum(r.duration_s for r in held) / 60:.1f} |")
    return "\n".join(lines)


def speech_table(rows: Sequence[scoring.SpeechRow], chosen: str | None) -> str:
    lines = [
        "| decision | recall | precision | false alarms (non-speech clips) | false alarms / h non-speech | "
        "onset error ms, median / p90 | offset error ms, median / p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.score
        name = f"**{r.name}** (chosen on tune)" if r.name == chosen else r.name
        lines.append(
            f"| {name} | {_pct(s.recall)} ({s.tp}/{s.tp + s.fn}) | {_pct(s.precision)} | "
            f"{_pct(s.false_alarm_rate)} ({s.fp}/{s.fp + s.tn}) | {_num(s.false_alarms_per_hour, '.0f')} | "
            f"{_ms(r.onset)} | {_ms(r.offset)} |"
        )
    return "\n".join(lines)


def yamnet_table(figs: Sequence[scoring.YamnetFigures]) -> str:
    head = "| family | clips | " + " | ".join(
        f"top-3 ({f.pooling}) | top-1 recall ({f.pooling}) | top-1 precision ({f.pooling})" for f in figs)
    lines = [head + " |", "|---|---|" + "---|---|---|" * len(figs)]
    for i, fam in enumerate(figs[0].families):
        cells = [f"{fam.family}", str(fam.clips)]
        for f in figs:
            s = f.families[i]
            cells += [_pct(s.topk_accuracy), _pct(s.recall), _pct(s.precision)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **all** | " + str(sum(f.clips for f in figs[0].families)) + " | "
                 + " | ".join(f"**{_pct(f.overall_topk)}** | | " for f in figs) + " |")
    return "\n".join(lines)


def confusion_table(fig: scoring.YamnetFigures) -> str:
    used = [i for i, f in enumerate(FAMILIES) if fig.confusion[i].sum() or fig.confusion[:, i].sum()]
    lines = ["| true \\ top-1 | " + " | ".join(FAMILIES[i] for i in used) + " |",
             "|---|" + "---|" * len(used)]
    for i in used:
        if fig.confusion[i].sum():
            lines.append(f"| {FAMILIES[i]} | " + " | ".join(str(fig.confusion[i, j]) for j in used) + " |")
    return "\n".join(lines)


def family_events_table(rows: Sequence[scoring.FamilyEvents]) -> str:
    lines = ["| family | clips with an onset (recall) | false alarms (other clips) | false alarms / h of other audio | "
             "onset error ms, median / p90 | offset error ms, median / p90 |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r.score
        lines.append(f"| {r.family} | {_pct(s.recall)} ({s.tp}/{s.tp + s.fn}) | {_pct(s.false_alarm_rate)} | "
                     f"{_num(s.false_alarms_per_hour, '.0f')} | {_ms(r.onset)} | {_ms(r.offset)} |")
    return "\n".join(lines)


def render(runs: Sequence[scoring.ClipRun], held_rows, tune_rows, chosen, figs, events, labels_name: str,
           min_recall: float, left_out: int = 0) -> str:
    """The whole results section (Markdown)."""
    chosen_row = next((r for r in held_rows if r.name == chosen), None)
    vad_row = held_rows[0]
    verdict = "no gate setting reached the recall target on the tune part"
    if chosen_row is not None:
        s = chosen_row.score
        met = s.recall >= min_recall and s.false_alarm_rate <= 0.05
        verdict = (f"chosen on tune: `{chosen}`; on held-out it gives recall {_pct(s.recall)} and false alarms on "
                   f"{_pct(s.false_alarm_rate)} of non-speech clips, so the target (recall >= {100 * min_recall:.0f}%, "
                   f"false alarms <= 5%) is **{'met' if met else 'missed'}**")
    parts = [
        f"Labels: `{labels_name}`; {len(runs)} clips"
        + (f" ({left_out} left out: their results did not cover the whole clip)" if left_out else "")
        + ". Figures on the **held-out** part unless said otherwise.",
        "",
        "### Data",
        "",
        data_table(runs),
        "",
        "### Speech: vad, the gate, YAMNet (held-out)",
        "",
        f"vad alone (live events): recall {_pct(vad_row.score.recall)}, false alarms on "
        f"{_pct(vad_row.score.false_alarm_rate)} of non-speech clips. Gate {verdict}.",
        "",
        speech_table(held_rows, chosen),
        "",
        "The same settings on the tune part (where the setting was chosen):",
        "",
        speech_table(tune_rows, chosen),
        "",
        "### YAMNet: clip-level family (held-out)",
        "",
        "Clip scores pooled over windows (max or mean), then the families of the 3 best classes.",
        "",
        yamnet_table(figs),
        "",
        f"Confusion of top-1 families ({figs[0].pooling} pooling), rows true:",
        "",
        confusion_table(figs[0]),
        "",
        "### YAMNet: family events (held-out)",
        "",
        "Onsets of any label of a family (worker thresholds 0.5 / 0.3).",
        "",
        family_events_table(events),
    ]
    return "\n".join(parts)


def fill_docs(path: Path, section: str) -> None:
    """Replace the text between the results markers of ``path`` with ``section``."""
    text = path.read_text()
    rx = re.compile(re.escape(BEGIN) + r"\n.*?" + re.escape(END), re.DOTALL)
    if not rx.search(text):
        raise ValueError(f"{path} has no {BEGIN} ... {END} section to fill")
    path.write_text(rx.sub(lambda _: f"{BEGIN}\n{section}\n{END}", text))
