"""The event store's logic on a real store (SQLite, clip files, writer thread), driven in-process
with messages built as convert and classify build them."""

from __future__ import annotations

import time

import numpy as np
import pytest

from common.wire.codec import decode
from common.wire.messages import Event, Label, Result
from events import writer as writer_mod
from events.clips import float_of_flac24, read_clip
from events.writer import WriterConfig
from tests.events.helpers import NS, raw_messages, tensor_messages, window_results

RATE, HOP = 16_000, 512
T0 = 1_700_000_000 * NS


def s16_float(n: int, seed: int = 0) -> np.ndarray:
    """Float audio that came from 16-bit samples (x / 32768), as convert makes it at the model rate."""
    return (np.random.default_rng(seed).integers(-30000, 30000, n) / 32768).astype(np.float32)


def speech_scores(windows: int, on: tuple[int, int], seed: int = 1) -> np.ndarray:
    """Scores per window: low, then between 0.6 and 1 for windows on[0]..on[1]-1, then low."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.0, 0.2, windows)
    s[on[0] : on[1]] = rng.uniform(0.6, 1.0, on[1] - on[0])
    return s


def window_t(k: int) -> int:
    return T0 + k * HOP * NS // RATE


@pytest.mark.parametrize("fmt", ["flac", "wav"])
def test_a_stored_event_has_its_span_scores_and_exactly_the_streams_samples(harness, fmt) -> None:
    h = harness(pre_roll_s=0.5, post_roll_s=0.75, wcfg=WriterConfig(clip_format=fmt, fsync=False))
    x = s16_float(RATE * 8) if fmt == "flac" else np.random.default_rng(3).uniform(-1, 1, RATE * 8).astype(np.float32)
    scores = speech_scores(len(x) // HOP, (80, 150))
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0, hold=4)

    # up to the onset's result: the onset is stored and republished alone (end 0, no clip yet)
    h.feed(audio[:85], results[:81])
    h.settle()
    onset = [decode(m) for m in h.published]
    assert [(e.id, e.label, e.start_ns, e.end_ns, e.clip) for e in onset] == [(1, "speech", window_t(80), 0, "")]
    assert h.rows()[0]["status"] == "open"

    h.feed(audio[85:], results[81:])
    h.settle()
    h.finish()
    [row] = h.rows()
    # the stop is stamped at the first window below the off threshold (150); the hold keeps it on 4 windows
    assert (row["start_ns"], row["end_ns"], row["status"]) == (window_t(80), window_t(150), "closed")
    assert row["peak"] == pytest.approx(scores[80:150].max(), abs=1e-6)
    assert row["mean"] == pytest.approx(scores[80:150].mean(), abs=1e-6) and row["windows"] == 70
    first, stop = 80 * HOP - RATE // 2, 150 * HOP + RATE * 3 // 4
    assert (row["clip_offset"], row["clip_samples"], row["clip_rate"]) == (first, stop - first, RATE)
    assert (row["clip_start_ns"], row["clip_end_ns"]) == (T0 + first * NS // RATE, T0 + stop * NS // RATE)
    data, rate, subtype = read_clip(h.store / row["clip"])
    got = float_of_flac24(data)[:, 0] if fmt == "flac" else data[:, 0]
    assert subtype == ("PCM_24" if fmt == "flac" else "FLOAT") and rate == RATE
    assert np.array_equal(got, x[first:stop])
    assert row["clip"].endswith(f"/mic/1.{fmt}") and row["clip_bytes"] == (h.store / row["clip"]).stat().st_size
    last = decode(h.published[-1])
    assert (last.id, last.end_ns, last.clip) == (1, window_t(150), row["clip"])


def test_raw_audio_clips_hold_the_captured_samples(harness) -> None:
    h = harness(audio="raw", pre_roll_s=0.25, post_roll_s=0.25)
    rate = 48_000
    x = np.random.default_rng(4).integers(-32768, 32767, (rate * 6, 2)).astype(np.int16)
    audio = raw_messages("cam", x, rate, 960, T0)  # 20 ms frames of 48 kHz stereo s16
    scores = speech_scores(6 * RATE // HOP, (40, 100))
    h.feed(audio, window_results("cam", "vad", scores, RATE, HOP, T0), lag=8)
    h.finish()
    [row] = h.rows()
    # raw sample of an audio time: the first sample stamped at or after it
    first = -(-(window_t(40) - T0) * rate // NS) - rate // 4
    stop = -(-(window_t(100) - T0) * rate // NS) + rate // 4
    assert (row["clip_offset"], row["clip_samples"], row["clip_rate"]) == (first, stop - first, rate)
    data, r, subtype = read_clip(h.store / row["clip"])
    assert (r, subtype, data.dtype) == (rate, "PCM_16", np.int16)
    assert np.array_equal(data, x[first:stop])
    assert row["source"] == "test:raw"


def test_a_long_event_gets_a_capped_clip_while_still_on(harness) -> None:
    h = harness(pre_roll_s=0.5, post_roll_s=0.5, max_clip_s=3.0)
    x = s16_float(RATE * 10)
    scores = speech_scores(len(x) // HOP, (30, 280))  # about 8 s on
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    h.feed(audio[:200], results[:196])  # 6.4 s in: the event is on, its clip is complete at 3 s
    h.settle()
    [row] = h.rows()
    assert row["end_ns"] == 0 and row["clip_status"] == "written"
    first = 30 * HOP - RATE // 2
    assert (row["clip_offset"], row["clip_samples"]) == (first, 3 * RATE)
    data, _, _ = read_clip(h.store / row["clip"])
    assert np.array_equal(float_of_flac24(data)[:, 0], x[first : first + 3 * RATE])
    h.feed(audio[200:], results[196:])
    h.finish()
    [row] = h.rows()
    assert row["end_ns"] == window_t(280) and row["clip_samples"] == 3 * RATE  # one clip, written once


def test_audio_lost_inside_a_clip_is_silence_there_and_counted_in_gap_ms(harness) -> None:
    h = harness(pre_roll_s=0.5, post_roll_s=0.5)
    x = s16_float(RATE * 6)
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    lost = audio[60:62]  # two 32 ms messages never arrive
    del audio[60:62]
    scores = speech_scores(len(x) // HOP, (50, 90))
    h.feed(audio, window_results("mic", "vad", scores, RATE, HOP, T0))
    h.finish()
    [row] = h.rows()
    assert row["gap_ms"] == 2 * HOP * 1000 // RATE
    data, _, _ = read_clip(h.store / row["clip"])
    got = float_of_flac24(data)[:, 0]
    first = row["clip_offset"]
    expect = x[first : first + row["clip_samples"]].copy()
    expect[60 * HOP - first : 62 * HOP - first] = 0.0  # where the lost messages were: silence, same duration
    assert len(got) == (90 - 50) * HOP + RATE and np.array_equal(got, expect)
    assert lost[0].header.offset == 60 * HOP


def test_an_offset_whose_onset_came_before_the_store_started_is_stored_from_the_offset(harness) -> None:
    h = harness(pre_roll_s=0.25, post_roll_s=0.25)
    x = s16_float(RATE * 6)
    scores = speech_scores(len(x) // HOP, (20, 120))
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    h.feed(audio, results[30:], lag=0)  # the store joins at window 30: the onset (20) was before it
    h.finish()
    [row] = h.rows()
    assert (row["start_ns"], row["end_ns"], row["status"]) == (window_t(20), window_t(120), "closed")
    # no window of it was seen as part of an event: the mean is the offset's peak, over 0 windows
    assert row["windows"] == 0 and row["mean"] == row["peak"] == pytest.approx(scores[20:120].max(), abs=1e-6)
    assert row["clip_offset"] == 20 * HOP - RATE // 4  # the ring held the audio of the onset


def test_a_restart_logs_the_outage_and_closes_the_event_left_on(harness, tmp_path, caplog) -> None:
    store = tmp_path / "store"
    x = s16_float(RATE * 12)
    scores = speech_scores(len(x) // HOP, (40, 90))  # its offset (90) comes during the outage
    scores[100:130] = 0.9  # a second event, wholly during the outage
    scores[200:260] = 0.9  # a third, after the restart
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)

    first = harness(store)
    first.feed(audio[:70], results[:66])  # the first event is on
    first.settle()
    first.logic._next_cursor_flush = 0.0
    first.handle([])  # the cursors reach the store
    first.settle()
    first.writer.close()  # the process dies here (nothing else is written)
    first.closed = True
    assert [(r["id"], r["status"]) for r in first.rows()] == [(1, "open")]

    second = harness(store)
    with caplog.at_level("WARNING", logger="events"):
        second.feed(audio[150:], results[150:], lag=0)  # results 66..149 were never seen
    second.finish()
    rows = second.rows()
    # the event left on is closed where it was last known to be on (the outage may hide its offset)
    assert (rows[0]["id"], rows[0]["status"], rows[0]["end_ns"]) == (1, "cut", window_t(66))
    assert [(r["start_ns"], r["end_ns"], r["status"]) for r in rows[1:]] == [(window_t(200), window_t(260), "closed")]
    assert "84 result(s) missed while the event store was down" in caplog.text
    conn = __import__("sqlite3").connect(store / "events.db")
    [(from_ns, to_ns, missed, cause)] = conn.execute("SELECT from_ns, to_ns, results, cause FROM outages").fetchall()
    conn.close()
    assert (from_ns, to_ns, missed, cause) == (results[65].end_ns, window_t(150), 84, "store_down")


def test_an_event_on_across_a_clean_restart_keeps_its_row(harness, tmp_path) -> None:
    store = tmp_path / "store"
    x = s16_float(RATE * 6)
    scores = speech_scores(len(x) // HOP, (40, 120))
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    first = harness(store)
    first.feed(audio[:70], results[:70], lag=0)
    first.finish()  # stopped cleanly while the event is on
    second = harness(store)
    second.feed(audio[70:], results[70:], lag=0)  # nothing missed
    second.finish()
    [row] = second.rows()
    assert (row["id"], row["start_ns"], row["end_ns"], row["status"]) == (1, window_t(40), window_t(120), "closed")
    assert row["windows"] == 80 and row["mean"] == pytest.approx(scores[40:120].mean(), abs=1e-5)


def test_a_stop_lost_in_transit_closes_the_event_where_it_was_last_known_on(harness) -> None:
    h = harness()
    x = s16_float(RATE * 8)
    scores = speech_scores(len(x) // HOP, (20, 60))
    scores[100:150] = 0.9
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    del results[55:70]  # the stop (window 60) is among the results that never arrive
    h.feed(audio, results)
    h.finish()
    rows = h.rows()
    assert [(r["status"], r["start_ns"], r["end_ns"]) for r in rows] == [
        ("cut", window_t(20), window_t(55)), ("closed", window_t(100), window_t(150))]
    assert all(r["clip_status"] == "written" for r in rows)


def test_a_full_writer_queue_refuses_and_counts_and_never_blocks(harness, monkeypatch) -> None:
    monkeypatch.setattr(writer_mod, "MAX_QUEUE", 20)
    h = harness()
    h.writer.close()  # nothing drains the queue any more
    h.writer._stop.clear()
    x = s16_float(RATE * 20)
    scores = np.tile(np.r_[np.full(10, 0.9), np.zeros(10)], len(x) // HOP // 20)  # an event every 20 windows
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    t0 = time.process_time()
    h.feed(audio, results)
    spent = time.process_time() - t0
    assert h.writer.queued == 20 and sum(h.writer.stats.refused.values()) > 20
    assert h.metrics.drops["store_queue_full"] == sum(h.writer.stats.refused.values())
    assert spent / (len(audio) + len(results)) < 0.005  # each message handled in far less than 5 ms of CPU
    h.closed = True


def test_labels_and_models_not_asked_for_are_not_stored(harness) -> None:
    h = harness(models=frozenset({"yamnet"}), labels=frozenset({"Dog"}))
    ev = [Event("Dog", "start", T0, 0.8, T0), Event("Speech", "start", T0, 0.9, T0)]
    r = Result(stream="s", model="yamnet", epoch=1, seq=0, start_ns=T0, end_ns=T0 + NS, offset=0, rate=RATE,
               seq_first=0, seq_last=0, labels=[Label("Speech", 0.9), Label("Dog", 0.8)], events=ev)
    other = Result(stream="s", model="vad", epoch=1, seq=0, start_ns=T0, end_ns=T0 + NS, offset=0, rate=RATE,
                   seq_first=0, seq_last=0, labels=[Label("speech", 0.9)], events=[Event("speech", "start", T0, 0.9, T0)])
    h.handle([r, other])
    h.finish()
    assert [(row["model"], row["label"]) for row in h.rows()] == [("yamnet", "Dog")]


def test_rings_stay_within_their_memory_budget_and_a_stream_beyond_it_gets_no_clips(harness) -> None:
    ring = (20.0 + 5.0) * RATE * 4  # max_clip_s + lag_s of 16 kHz mono float
    h = harness(max_ring_bytes=int(ring * 1.5))
    x = s16_float(RATE * 4)
    scores = speech_scores(len(x) // HOP, (40, 80))
    for stream in ("a", "b"):
        h.feed(tensor_messages(stream, x, RATE, HOP, T0), window_results(stream, "vad", scores, RATE, HOP, T0))
    h.finish()
    assert [(r["stream"], r["clip_status"]) for r in h.rows()] == [("a", "written"), ("b", "no_audio")]
    assert h.metrics.drops["ring_budget"] >= 1


def test_a_stuck_writer_never_blocks_the_loop_and_catches_up(harness) -> None:
    import sqlite3
    import threading

    h = harness()
    x = s16_float(RATE * 10)
    scores = np.resize(np.r_[np.full(20, 0.9), np.zeros(20)], len(x) // HOP)
    audio = tensor_messages("mic", x, RATE, HOP, T0)
    results = window_results("mic", "vad", scores, RATE, HOP, T0)
    other = sqlite3.connect(h.store / "events.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN EXCLUSIVE")  # the writer waits (up to its 5 s busy timeout) for this lock
    release = threading.Timer(3.0, lambda: other.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        slowest = 0.0
        for k, a in enumerate(audio):
            t = time.monotonic()
            h.handle([a] + ([results[k - 4]] if k >= 4 else []))
            slowest = max(slowest, time.monotonic() - t)
        h.handle(results[len(audio) - 4:])
        fed = time.monotonic() - t0
        assert h.writer.busy or h.writer.queued  # the writer is still stuck when the whole run is fed
    finally:
        release.join()
        other.close()
    assert slowest < 1.0 and fed < 2.5, (slowest, fed)  # it never waited for the 3 s lock
    h.finish()
    events = sum(e.state == "stop" for r in results for e in r.events)
    rows = h.rows()
    assert len(rows) == events and all(r["status"] == "closed" and r["clip_status"] == "written" for r in rows)


def test_a_writer_that_fails_stops_the_stage(tmp_path, monkeypatch, caplog) -> None:
    import sqlite3

    from common.observe.metrics import StageMetrics
    from common.runtime.stage import Now, StopFlag
    from events.logic import EventsConfig, EventsLogic
    from events.writer import StoreWriter

    def broken(*_a, **_k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writer_mod, "open_db", broken)
    w = StoreWriter(tmp_path, WriterConfig())
    w.start()
    w._thread.join(5)
    stop = StopFlag(install=False)
    logic = EventsLogic(EventsConfig(), w, StageMetrics("events"), stop=stop)
    logic.tick(Now(time.monotonic(), time.time_ns()))
    assert stop and "writer stopped (disk I/O error)" in caplog.text
