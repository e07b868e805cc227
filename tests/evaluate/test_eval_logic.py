"""The evaluation's logic on small hand-made cases: labels files, result lines, metrics, the gate, .rcc."""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest

from classify.gate import GateConfig, GateEvent, SpeechGate, speech_score
from evaluate import metrics
from evaluate.labels import LabelsError, load_labels, parse_spans, split_of, stream_id
from evaluate.pipeline import parse_result
from evaluate.rcc import RccArchive, RccError

HEADER = "path,package,family,speech,spans,note\n"


def write(tmp_path, text: str):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


# -- labels file -----------------------------------------------------------------------------

def test_labels_file_parses_with_comments_relative_paths_and_archive_members(tmp_path):
    p = write(tmp_path, "# a comment\n" + HEADER
              + "a.wav,pkg-a,speech,yes,0.1-0.5;0.7-1.2,hello\n"
              + "/abs/b.rcc!dir/c.ogg,,animal,no,,\n")
    a, b = load_labels(p)
    assert (a.family, a.speech, a.spans, a.note) == ("speech", "yes", ((0.1, 0.5), (0.7, 1.2)), "hello")
    assert a.source == tmp_path / "a.wav" and a.member is None
    assert str(b.source) == "/abs/b.rcc" and b.member == "dir/c.ogg" and b.spans == ()
    assert a.stream == stream_id("a.wav") and len(a.stream) <= 64


@pytest.mark.parametrize("rows, message", [
    ("a.wav,,dog,no,,\n", "family 'dog' is not one of"),
    ("a.wav,,animal,maybe,,\n", "speech 'maybe' must be yes, no or unknown"),
    ("a.wav,,speech,no,,\n", "family speech must have speech=yes"),
    ("a.wav,,animal,no,1-0.5,\n", "START < END"),
    ("a.wav,,animal,no,x-1,\n", "is not START-END"),
    ("a.wav,,animal,no,,\na.wav,,animal,no,,\n", "listed twice (first on line 2)"),
    ("a.wav,,animal,no\n", "4 fields, the header has 6"),
    (",,animal,no,,\n", "empty path"),
])
def test_bad_rows_name_the_line_and_the_fix(tmp_path, rows, message):
    with pytest.raises(LabelsError, match=r"labels\.csv:\d+: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_labels(write(tmp_path, HEADER + rows))


def test_bad_header_and_missing_file_are_clear(tmp_path):
    with pytest.raises(LabelsError, match="lacks speech"):
        load_labels(write(tmp_path, "path,family\n"))
    with pytest.raises(LabelsError, match="unknown column"):
        load_labels(write(tmp_path, "path,family,speech,colour\n"))
    with pytest.raises(LabelsError, match="does not exist; pass --labels"):
        load_labels(tmp_path / "nope.csv")


def test_split_is_stable_and_about_half():
    paths = [f"/usr/share/x/{i}.ogg" for i in range(2000)]
    held = sum(split_of(p) == "heldout" for p in paths)
    assert 900 < held < 1100
    assert [split_of(p) for p in paths[:50]] == [split_of(p) for p in paths[:50]]
    assert parse_spans(" 0-1 ; 2-3.5 ") == ((0.0, 1.0), (2.0, 3.5))


def test_bundled_labels_file_is_valid():
    clips = load_labels()
    assert len(clips) > 500
    assert {c.family for c in clips} >= {"speech", "animal", "music", "machine", "nature", "alarm"}
    assert len({c.stream for c in clips}) == len(clips)


# -- tail --json lines ---------------------------------------------------------------------------

def test_parse_result_reads_the_relied_on_fields_and_ignores_others():
    line = json.dumps({"stream": "s1", "model": "vad", "labels": [["speech", 0.9]], "start_ns": 10, "end_ns": 20,
                       "events": [{"label": "speech", "state": "start", "t_ns": 10}], "new_field": {"x": 1}})
    r = parse_result(line)
    assert r is not None and r.labels == (("speech", 0.9),) and r.events[0].state == "start" and r.end_ns == 20
    assert parse_result("not json") is None
    assert parse_result(json.dumps({"stream": "s1", "model": "vad"})) is None  # no times
    bad_state = json.loads(line)
    bad_state["events"][0]["state"] = "pause"
    assert parse_result(json.dumps(bad_state)) is None
    assert parse_result("x" * (2 << 20)) is None


# -- metrics ---------------------------------------------------------------------------------

def test_binary_counts_rates_and_false_alarms_per_hour():
    b = metrics.binary(truth=[True, True, True, False, False, False, False],
                       starts=[1, 2, 0, 0, 3, 0, 1], seconds=[1, 1, 1, 1800, 900, 900, 0])
    assert (b.tp, b.fn, b.fp, b.tn) == (2, 1, 2, 2)
    assert b.recall == pytest.approx(2 / 3) and b.precision == pytest.approx(0.5)
    assert b.false_alarm_rate == pytest.approx(0.5)
    assert b.false_alarms_per_hour == pytest.approx(4 / 1.0)  # 4 starts in 3600 s of non-target audio
    assert math.isnan(metrics.binary([], [], []).recall)


def test_family_scores_confusion_and_top3():
    truth = ["animal", "animal", "music", "speech"]
    ranked = [["animal", "other", "animal"], ["other", "animal", "music"], ["animal", "music", "music"],
              ["speech", "speech", "speech"]]
    by = {f.family: f for f in metrics.family_scores(truth, ranked, ["animal", "music", "speech"])}
    assert (by["animal"].recall, by["animal"].precision, by["animal"].topk_accuracy) == (0.5, 0.5, 1.0)
    assert (by["music"].recall, by["music"].topk_accuracy, by["music"].predicted) == (0.0, 1.0, 0)
    m = metrics.confusion(truth, [r[0] for r in ranked], ["animal", "music", "speech", "other"])
    assert m.tolist() == [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_pooling_and_timing():
    s = np.array([[0.1, 0.9, 0.0], [0.5, 0.1, 0.2]], dtype=np.float32)
    assert metrics.pool(s, "max").tolist() == pytest.approx([0.5, 0.9, 0.2])
    assert metrics.pool(s, "mean").tolist() == pytest.approx([0.3, 0.5, 0.1])
    assert metrics.top_families(metrics.pool(s, "mean"), ["a", "b", "c"], k=2) == ["b", "a"]
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        metrics.pool(s, "median")
    t = metrics.timing([0.1, -0.3, 0.2])
    assert (t.n, t.median_abs, t.mean) == (3, pytest.approx(0.2), pytest.approx(0.0))


# -- the gate --------------------------------------------------------------------------------

MS = 1_000_000


def feed_vad(gate: SpeechGate, scores, t0=0):
    out = []
    for i, s in enumerate(scores):
        out += gate.vad(t0 + i * 32 * MS, t0 + (i + 1) * 32 * MS, s)
    return out


def test_gate_without_yamnet_follows_vad_hysteresis():
    gate = SpeechGate(GateConfig(hold=2))
    out = feed_vad(gate, [0.1, 0.9, 0.6, 0.2, 0.2, 0.1])
    assert out == [GateEvent("start", 32 * MS), GateEvent("stop", 96 * MS)]


def test_gate_keeps_a_segment_yamnet_confirms_later_with_vads_times():
    gate = SpeechGate(GateConfig(hold=1, yamnet_min=0.3))
    assert feed_vad(gate, [0.9, 0.9, 0.1]) == []  # speech 0-64 ms, stopped at 64 ms: waiting for YAMNet
    out = gate.yamnet(0, 975 * MS, speech=0.5)
    assert out == [GateEvent("start", 0), GateEvent("stop", 64 * MS)]


def test_gate_drops_a_segment_yamnet_calls_something_else():
    gate = SpeechGate(GateConfig(hold=1, yamnet_min=0.3))
    assert feed_vad(gate, [0.9, 0.9, 0.1]) == []
    assert gate.yamnet(0, 975 * MS, speech=0.05) == []  # a dog
    assert gate.yamnet(480 * MS, 1455 * MS, speech=0.9) == []  # later speech does not overlap 0-64 ms
    assert gate.end(2000 * MS) == []


def test_gate_confirms_an_open_segment_and_stops_it_at_the_end():
    gate = SpeechGate(GateConfig(hold=1, yamnet_min=0.3))
    assert gate.yamnet(0, 975 * MS, speech=0.9) == []  # YAMNet first: nothing is on yet
    out = feed_vad(gate, [0.1, 0.9, 0.9])
    assert out == [GateEvent("start", 32 * MS)]
    assert gate.end(500 * MS) == [GateEvent("stop", 500 * MS)]


def test_gate_minimum_duration_drops_clicks():
    gate = SpeechGate(GateConfig(hold=1, min_speech_ms=100))
    assert feed_vad(gate, [0.9, 0.1, 0.1]) == []  # 32 ms
    out = feed_vad(gate, [0.9, 0.9, 0.9, 0.9, 0.1], t0=1000 * MS)
    assert out == [GateEvent("start", 1000 * MS), GateEvent("stop", 1128 * MS)]


def test_gate_state_is_bounded():
    gate = SpeechGate(GateConfig(hold=1, yamnet_min=0.3))
    for k in range(500):  # many segments, YAMNet never answers
        feed_vad(gate, [0.9, 0.1], t0=k * 100 * MS)
    assert len(gate._segments) <= 64 and len(gate._windows) <= 64


def test_speech_score_takes_the_best_speech_family_label():
    assert speech_score([("Dog", 0.9), ("Speech", 0.2), ("Conversation", 0.4)]) == 0.4
    assert speech_score([("Dog", 0.9)]) == 0.0


# -- Qt resource archives --------------------------------------------------------------------

def make_rcc(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-2 .rcc with one directory ``d`` holding ``files`` (name -> (data, compress))."""
    names, name_off = b"", {}
    for n in ["d", *files]:
        name_off[n] = len(names)
        enc = n.encode("utf-16-be")
        names += struct.pack(">HI", len(n), 0) + enc
    data, data_off = b"", {}
    for n, (blob, compress) in files.items():
        data_off[n] = len(data)
        payload = struct.pack(">I", len(blob)) + zlib.compress(blob) if compress else blob
        data += struct.pack(">I", len(payload)) + payload
    entries = [struct.pack(">IHII", 0, 2, 1, 1) + bytes(8),  # root: 1 child at index 1
               struct.pack(">IHII", name_off["d"], 2, len(files), 2) + bytes(8)]
    for n, (_, compress) in files.items():
        entries.append(struct.pack(">IHHHI", name_off[n], 1 if compress else 0, 0, 0, data_off[n]) + bytes(8))
    tree = b"".join(entries)
    tree_at = 20
    data_at = tree_at + len(tree)
    names_at = data_at + len(data)
    return b"qres" + struct.pack(">IIII", 2, tree_at, data_at, names_at) + tree + data + names


def test_rcc_members_read_back_plain_and_compressed(tmp_path):
    p = tmp_path / "a.rcc"
    p.write_bytes(make_rcc({"x.ogg": (b"OggS" + bytes(100), False), "y.wav": (b"RIFF" * 50, True)}))
    a = RccArchive(p)
    assert a.names() == ["d/x.ogg", "d/y.wav"]
    assert a.read("d/x.ogg") == b"OggS" + bytes(100) and a.read("d/y.wav") == b"RIFF" * 50
    with pytest.raises(RccError, match="no member"):
        a.read("d/z.ogg")
    (tmp_path / "b.rcc").write_bytes(b"not a resource file")
    with pytest.raises(RccError, match="not a Qt resource archive"):
        RccArchive(tmp_path / "b.rcc")
