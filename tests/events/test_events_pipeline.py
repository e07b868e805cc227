"""The event store as a real process behind real stages: capture (a recording with known speech
spans) -> convert -> classify vad and yamnet -> events, with the tensors recorded alongside.

- the stored vad events match the speech spans; every clip is exactly the stream's samples
  over [start - pre-roll, end + post-roll) (checked against the tensors `soundbus record` kept);
- kill -9 of the store mid-run, then a restart: the database is intact, every committed event
  has its clip, no half-written clip has a real name, the events of the outage are the only
  ones missing, and the outage is logged and stored.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from common.cli.process import ChildProcess
from common.recording.format import RecordingReader
from common.recording.messages import record_message
from common.wire.codec import ProtocolError, decode
from common.wire.messages import StoredEvent
from common.wire.topics import Kind, topic_for
from events.clips import float_of_flac24, read_clip
from tests.conftest import Procs, tcp

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ALSA = Path("/usr/share/sounds/alsa")
SPEECH = [ALSA / "Front_Center.wav", ALSA / "Rear_Left.wav", ALSA / "Front_Left.wav", ALSA / "Rear_Right.wav"]
RATE = 16_000
NS = 1_000_000_000
PRE_S, POST_S = 0.5, 0.75


# ---------------------------------------------------------------------------------------
# small fixtures of this module (real processes, always stopped; a real subscriber)


@pytest.fixture
def procs():
    ps = Procs()
    yield ps
    ps.stop_all()


class EventSub:
    """A SUB socket in the test that keeps every StoredEvent the store republishes."""

    def __init__(self, addr: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic_for(Kind.EVENT))
        self.sock.connect(addr)
        self.events: list[StoredEvent] = []

    def poll(self, until, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until(self.events):
            assert time.monotonic() < deadline, f"timed out with {len(self.events)} stored events"
            if self.sock.poll(100):
                try:
                    self.events.append(decode(self.sock.recv()))
                except ProtocolError as e:
                    raise AssertionError(f"the store published a bad message: {e}") from None

    def drain(self, quiet_s: float = 0.5) -> None:
        """Take what is still queued (the store sends its last events as it stops)."""
        while self.sock.poll(int(quiet_s * 1000)):
            self.events.append(decode(self.sock.recv()))

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def event_sub():
    made: list[EventSub] = []

    def make(addr: str) -> EventSub:
        made.append(EventSub(addr))
        return made[-1]

    yield make
    for s in made:
        s.close()


# ---------------------------------------------------------------------------------------
# the recording: real speech at 16 kHz between known silences


def speech_wav(path: Path, silences_s: list[float]) -> list[tuple[float, float]]:
    """Write real speech recordings (alsa-utils) resampled by sox to 16 kHz s16 mono, each after
    ``silences_s[i]`` s of silence (one more silence at the end); returns the speech spans (s):
    first to last 10 ms block above -40 dBFS of each."""
    parts, spans, t = [], [], 0.0
    for i, gap in enumerate(silences_s[:-1]):
        src = SPEECH[i % len(SPEECH)]
        if not src.exists():
            pytest.fail(f"{src} missing: install alsa-utils (scripts/install.sh does)")
        raw = subprocess.run(["sox", str(src), "-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed",
                              "-"], check=True, capture_output=True).stdout
        speech = np.frombuffer(raw, "<i2")
        parts += [np.zeros(int(gap * RATE), np.int16), speech]
        t += gap
        block = RATE // 100
        env = np.abs(speech[: len(speech) // block * block].astype(float)).reshape(-1, block).max(1)
        loud = np.flatnonzero(env > 32768 * 0.01)
        spans.append((t + loud[0] / 100, t + (loud[-1] + 1) / 100))
        t += len(speech) / RATE
    parts.append(np.zeros(int(silences_s[-1] * RATE), np.int16))
    sf.write(str(path), np.concatenate(parts), RATE, subtype="PCM_16")
    return spans


def recorded_tensors(path: Path, stream: str) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """(every tensor sample of ``stream`` in offset order, [(offset, t_capture_ns, samples)] per message)."""
    chunks, anchors = {}, []
    reader = RecordingReader(path)
    try:
        for rec in reader:
            msg, _ = record_message(rec)
            if rec.kind == "tensor" and msg.header.stream == stream:
                h = msg.header
                chunks[h.offset] = msg.samples()[0].copy()
                anchors.append((h.offset, h.t_capture_ns, h.samples))
    finally:
        reader.close()
    offsets = sorted(chunks)
    assert offsets[0] == 0 and all(a + len(chunks[a]) == b for a, b in pairwise(offsets)), "tensor gap"
    return np.concatenate([chunks[o] for o in offsets]), sorted(anchors)


def index_at(anchors: list[tuple[int, int, int]], t_ns: int) -> int:
    """The sample classify stamped ``t_ns`` (t = chunk time + (i - offset) * 1e9 // rate), found independently."""
    for offset, t0, n in anchors:
        for i in range(n + 1):
            if t0 + i * NS // RATE >= t_ns:
                return offset + i
    raise AssertionError(f"{t_ns} is after the recording")


def rows(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY start_ns, id")]
    finally:
        conn.close()


def check_clip(store: Path, row: dict, samples: np.ndarray, anchors) -> None:
    """The clip is the stream's samples over [start - pre, end + post), sample for sample."""
    first = index_at(anchors, row["start_ns"]) - int(PRE_S * RATE)
    stop = index_at(anchors, row["end_ns"]) + int(POST_S * RATE)
    assert (row["clip_offset"], row["clip_offset"] + row["clip_samples"]) == (max(first, 0), min(stop, len(samples)))
    data, rate, subtype = read_clip(store / row["clip"])
    assert (rate, subtype, data.shape[1]) == (RATE, "PCM_24", 1)
    # 16-bit audio at the model rate passes convert untouched: x / 32768, exact in 24-bit FLAC
    assert np.array_equal(float_of_flac24(data)[:, 0], samples[row["clip_offset"] : row["clip_offset"] + len(data)])
    assert row["gap_ms"] == 0 and row["clip_status"] == "written"


def start_classifiers(procs: Procs, tensor: str, models: list[str]) -> dict[str, str]:
    outs = {m: tcp() for m in models}
    workers = [procs.start("classify", "--model", m, "--input", tensor, "--output", outs[m]) for m in models]
    for w in workers:
        w.wait_for(r"\bready\b", timeout=180)
    return outs


def start_store(procs: Procs, store: Path, inputs: list[str], out: str, *extra: str) -> ChildProcess:
    args = ["events", "run", "--dir", str(store), "--output", out, "--pre-roll-s", str(PRE_S),
            "--post-roll-s", str(POST_S), *extra]
    for a in inputs:
        args += ["--input", a]
    p = procs.start(*args)
    p.wait_for(r"\bready\b", timeout=30)
    return p


# ---------------------------------------------------------------------------------------


def test_stored_events_match_the_speech_spans_and_clips_are_the_streams_samples(procs, event_sub, tmp_path) -> None:
    wav = tmp_path / "speech.wav"
    spans = speech_wav(wav, [1.5, 2.5, 2.0])
    raw, tensor, out = tcp(), tcp(), tcp()
    results = start_classifiers(procs, tensor, ["vad", "yamnet"])
    store = tmp_path / "store"
    events = start_store(procs, store, [tensor, *results.values()], out)
    sub = event_sub(out)
    events.wait_for("subscriber joined", timeout=10)
    record = procs.start("common.recording.cli", "record", "-o", str(tmp_path / "tensors.sbrec"), "--kind", "tensor",
                         "--input", tensor)
    record.wait_for(r"\bready\b", timeout=30)
    convert = procs.start("convert", "--input", raw, "--output", tensor, "--rate", str(RATE), "--channels", "mono")
    convert.wait_for(r"\bready\b", timeout=30)
    for p in (events, record, *[w for w in procs.started if "classify" in w.argv]):
        p.wait_for("input connected", timeout=10)
    capture = procs.start("capture", "--source", f"file:{wav}", "--stream", "front", "--fast", "--output", raw)
    assert capture.wait(60) == 0, capture.log()

    # both speech spans stored by vad, each republished with its clip once the post-roll arrived
    def vad_done(evs: list[StoredEvent]) -> bool:
        return sum(1 for e in evs if e.model == "vad" and e.end_ns and e.clip) >= len(spans)

    sub.poll(vad_done, timeout=60)
    time.sleep(1.0)  # yamnet's last windows and their clips
    events.stop()
    record.stop()
    assert events.proc.returncode == 0, events.log()
    sub.drain()

    samples, anchors = recorded_tensors(tmp_path / "tensors.sbrec", "front")
    t0 = anchors[0][1]
    stored = rows(store / "events.db")
    vad = [r for r in stored if r["model"] == "vad"]
    # Each utterance is two words ("front ... center"); vad may end speech in the pause between
    # them, so a span is one event or several: together they cover it, and none lies outside it.
    for r in vad:
        assert r["label"] == "speech" and r["status"] == "closed" and 0.5 <= r["peak"] <= 1.0
        assert 0.35 <= r["mean"] <= r["peak"] and r["windows"] >= 5
        assert r["source"].startswith("file:")
    for s0, s1 in spans:
        inside = [r for r in vad if s0 - 0.3 <= (r["start_ns"] - t0) / NS and (r["end_ns"] - t0) / NS <= s1 + 0.6]
        assert inside, (s0, s1, vad)
        start, end = (inside[0]["start_ns"] - t0) / NS, (inside[-1]["end_ns"] - t0) / NS
        # onset within a window or two of the speech; offset after vad's 256 ms hold
        assert s0 - 0.15 <= start <= s0 + 0.3, (start, s0)
        assert s1 - 0.2 <= end <= s1 + 0.6, (end, s1)
    assert len(vad) == sum(1 for r in vad for s0, s1 in spans
                           if s0 - 0.3 <= (r["start_ns"] - t0) / NS and (r["end_ns"] - t0) / NS <= s1 + 0.6), vad
    yam = [r for r in stored if r["model"] == "yamnet"]
    assert yam, "yamnet stored no events"
    speechy = [r for r in yam if "speech" in r["label"].lower() or "narration" in r["label"].lower()]
    for s0, s1 in spans:  # each span is heard as speech by yamnet too (0.96 s windows: loose bounds)
        assert any((r["start_ns"] - t0) / NS < s1 and (r["end_ns"] - t0) / NS > s0 for r in speechy), (spans, yam)
    for r in stored:
        check_clip(store, r, samples, anchors)

    # republished: every event, its last message as stored (an onset published alone, with end 0,
    # when the writer commits it before the offset arrives: test_events_logic checks that)
    last = {e.id: e for e in sub.events}
    for r in stored:
        e = last[r["id"]]
        assert (e.clip, e.start_ns, e.end_ns, e.label, e.model) == (r["clip"], r["start_ns"], r["end_ns"], r["label"],
                                                                    r["model"])

    # the CLI reads the same store
    out = subprocess.run([sys.executable, "-m", "events", "list", "--dir", str(store), "--model", "vad", "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["id"] for line in out.splitlines()] == [r["id"] for r in vad]


def test_kill_9_then_restart_keeps_every_committed_event_and_logs_the_outage(procs, event_sub, tmp_path) -> None:
    # eight utterances 2 s apart, captured at real-time pace (about 27 s)
    wav = tmp_path / "speech.wav"
    spans = speech_wav(wav, [1.5] + [2.0] * 7 + [1.5])
    raw, tensor, out = tcp(), tcp(), tcp()
    results = start_classifiers(procs, tensor, ["vad"])
    store = tmp_path / "store"
    events = start_store(procs, store, [tensor, results["vad"]], out, "--clip-format", "wav")
    sub = event_sub(out)
    events.wait_for("subscriber joined", timeout=10)
    convert = procs.start("convert", "--input", raw, "--output", tensor, "--rate", str(RATE), "--channels", "mono")
    convert.wait_for(r"\bready\b", timeout=30)
    events.wait_for("input connected", count=2, timeout=10)
    capture = procs.start("capture", "--source", f"file:{wav}", "--stream", "front", "--output", raw)

    # kill -9 once two events are stored with their clips (and the third is under way)
    sub.poll(lambda evs: sum(1 for e in evs if e.end_ns and e.clip) >= 2, timeout=60)
    time.sleep(1.5)
    os.killpg(events.proc.pid, signal.SIGKILL)
    events.proc.wait(10)
    t_kill = time.time_ns()
    time.sleep(5.0)  # the outage: about two utterances
    again = start_store(procs, store, [tensor, results["vad"]], out, "--clip-format", "wav")
    again.wait_for("input connected", count=2, timeout=10)
    t_restart = time.time_ns()  # listening again (however long the start took on this machine)
    assert capture.wait(60) == 0, capture.log()
    again.wait_for(r"missed while the event store was down", timeout=30)
    time.sleep(4.0)  # the last utterance's offset (classify flushes the ended stream) and its clip
    again.stop()
    assert again.proc.returncode == 0, again.log()

    db = store / "events.db"
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        outages = conn.execute("SELECT from_ns, to_ns, results, cause FROM outages").fetchall()
    finally:
        conn.close()
    stored = rows(db)
    # every committed event's clip exists, and no half-written clip has a real name
    for r in stored:
        if r["clip"]:
            assert (store / r["clip"]).is_file() and r["clip_status"] == "written", r
            data, rate, _ = read_clip(store / r["clip"])
            assert len(data) == r["clip_samples"] and rate == RATE
    assert not [p for p in (store / "clips").rglob("*") if p.is_file() and not p.name.endswith(".wav")]
    assert not list((store / "clips").rglob("*.tmp"))
    assert any("did not close the store" in line for line in again.lines), again.log()

    # the outage is stored: it covers the time the store was down, and some results were missed
    assert len(outages) == 1, outages
    from_ns, to_ns, missed, cause = outages[0]
    assert cause == "store_down" and missed > 0
    t0 = stored[0]["start_ns"] - int(spans[0][0] * NS)  # audio time of the recording's start (about)
    audio_kill, audio_back = t_kill - t0, t_restart - t0  # capture runs at real-time pace: wall ~ audio time
    # every span that ended clearly before the kill or began clearly after the restart is stored (with its clip)
    for s0, s1 in spans:
        if s1 * NS + 1.0 * NS < audio_kill - 1.5 * NS or s0 * NS > audio_back + 1.0 * NS:
            hit = [r for r in stored if abs((r["start_ns"] - t0) / NS - s0) < 0.5]
            assert hit and all(r["clip"] for r in hit), (s0, s1, stored)
    # and the ones missing all lie in the outage
    for s0, s1 in spans:
        if not any(abs((r["start_ns"] - t0) / NS - s0) < 0.5 for r in stored):
            assert (from_ns - t0) / NS - 1.0 <= s0 and s1 <= (to_ns - t0) / NS + 1.0, (s0, s1, outages)
    assert len(stored) >= len(spans) - 3
