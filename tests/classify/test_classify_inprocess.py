"""The classify stage's logic with no sockets: messages handed to ClassifyLogic, explicit clocks.

Resets, spans, losses, staleness, bounded state, and batching that changes no output.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from classify.models import load_model
from classify.worker import LIVE_S, ClassifyLogic, WorkerConfig
from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from common.wire import AudioHeader, Flag, Hop, Kind, Layout, Result, SampleFormat, decode, encode_audio

RATE = 16_000
NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # audio time of the streams' first sample
_models: dict[str, object] = {}


def model(name: str):
    if name not in _models:  # loading silero/yamnet costs seconds: once per test session
        _models[name] = load_model(name)
    return _models[name]


def tensor(stream: str, seq: int, offset: int, x: np.ndarray, flags: int = 0, lost: int = 0, epoch: int = 1,
           t_ns: int | None = None):
    h = AudioHeader(stream=stream, epoch=epoch, seq=seq, t_capture_ns=T0 + offset * NS // RATE if t_ns is None
                    else t_ns, rate=RATE, channels=1, format=SampleFormat.F32, layout=Layout.PLANAR,
                    samples=x.shape[-1], offset=offset, flags=flags, lost=lost, trace=[Hop("convert", 1, 2)])
    return decode(encode_audio(Kind.TENSOR, h, np.ascontiguousarray(x, np.float32).reshape(1, -1)))


class Harness:
    """ClassifyLogic fed one stream's tensors by hand, at an explicit clock (audio time = clock)."""

    def __init__(self, model_name: str, **cfg) -> None:
        cfg.setdefault("max_lag_ms", 0)
        cfg.setdefault("batch_wait_ms", 0)
        self.metrics = StageMetrics("test")
        self.logic = ClassifyLogic(model(model_name), WorkerConfig(**cfg), self.metrics)
        self.seq = self.offset = 0
        self.mono = 100.0

    def now(self) -> Now:
        return Now(self.mono, T0 + int((self.mono - 100.0) * NS) + 5_000_000)

    def send(self, audio: np.ndarray, flags: int = 0, chunk: int = 512, stream: str = "a", lost: int = 0,
             skip: int = 0) -> list[Result]:
        """Feed ``audio`` as tensors (``skip`` samples missing before it); return the results it produced."""
        out = []
        self.offset += skip
        for start in range(0, len(audio), chunk):
            part = audio[start : start + chunk]
            msg = tensor(stream, self.seq, self.offset, part, flags if start == 0 else 0, lost if start == 0 else 0)
            self.mono = 100.0 + (self.offset + len(part)) / RATE  # the tensor arrives when its audio has ended
            out += [decode(b) for b in self.logic.handle([msg], self.now())]
            self.seq += 1
            self.offset += len(part)
        return out

    def later(self, seconds: float) -> list[Result]:
        """``seconds`` pass with the runtime's ticks (every 0.1 s) and no input."""
        out = []
        for _ in range(round(seconds / 0.1)):
            self.mono += 0.1
            out += [decode(b) for b in self.logic.tick(self.now())]
        return out


def scores(rs: list[Result]) -> np.ndarray:
    return np.array([r.labels[0].score for r in rs])


def test_discontinuity_resets_vad_state_and_window(audio):
    speech = audio.alsa_speech()[: 512 * 40]
    h = Harness("vad")
    first = h.send(speech)
    again = h.send(speech)  # contiguous: the model carries its state over
    reset = h.send(speech, Flag.DISCONTINUITY)  # same audio after a reset: exactly the first scores
    assert len(first) == len(again) == len(reset) == 40
    np.testing.assert_allclose(scores(reset), scores(first), atol=1e-6)
    assert np.abs(scores(again) - scores(first)).max() > 1e-3  # the state mattered
    assert reset[0].offset == 2 * 512 * 40 and reset[0].seq_first == 80
    assert reset[0].flags & Flag.DISCONTINUITY and not again[0].flags


def test_windows_complete_before_a_break_are_classified_not_dropped(audio):
    """v1 dropped the windows waiting in the buffer when a DISCONTINUITY arrived (12 vad windows
    of tests/data/two_streams.sbrec's speech16). They are good audio: they are served first."""
    speech = audio.alsa_speech()[: 512 * 20]
    h = Harness("vad", batch_wait_ms=50)  # windows wait for a batch ...
    msgs = [tensor("a", i, i * 512, speech[i * 512 : (i + 1) * 512]) for i in range(20)]
    brk = tensor("a", 20, 25 * 512, speech[:512], flags=Flag.DISCONTINUITY)
    out = [decode(b) for b in h.logic.handle(msgs + [brk], Now(100.0, T0))]  # ... and the break is in the batch
    out += [decode(b) for b in h.logic.tick(Now(101.0, T0))]
    assert [r.offset for r in out] == [i * 512 for i in range(20)] + [25 * 512]
    assert out[-1].flags & Flag.DISCONTINUITY and out[-1].lost_ns == 5 * 512 * NS // RATE


def test_losses_upstream_and_here_reach_the_user_as_lost_audio(audio):
    """Every loss shows on the next result: samples lost upstream (tensor.lost), tensors that never
    arrived (a seq gap), and windows shed here because the worker fell behind."""
    x = audio.tone(0.5)
    h = Harness("level")  # 100 ms windows
    out = h.send(x[:1600])
    out += h.send(x[1600:3200], lost=800)  # convert says 800 samples were lost before this tensor
    h.seq += 2  # two tensors never arrive: 1024 samples
    out += h.send(x[:1600], skip=1024)
    lost = [(r.offset, r.lost_ns) for r in out if r.lost_ns]
    assert sum(n for _, n in lost) == (800 + 1024) * NS // RATE
    assert all(r.flags & Flag.DISCONTINUITY for r in out if r.lost_ns)
    assert h.metrics.total_gaps == 0  # the tensors' seq gap is a reset here, reported as lost audio


def test_a_stall_longer_than_max_lag_sheds_the_stale_windows_and_reports_them():
    """After a 60 s stall (SIGSTOP) the queued tensors arrive at once: v1 served 58-60 s old results
    despite --max-lag-ms 1000. Lag is measured against the stream's own delivery delay, so they are
    shed and counted, the result after them says how much audio was lost, and no result is late."""
    h = Harness("level", max_lag_ms=1000)
    x = np.full(16000 * 65, 0.1, np.float32)
    out = []
    for i in range(100):  # 10 s live, each tensor 5 ms after its audio ended
        out += [decode(b) for b in h.logic.handle([tensor("a", i, i * 1600, x[:1600])],
                                                  Now(i * 0.1, T0 + (i + 1) * 100_000_000 + 5_000_000))]
    stalled = Now(70.0, T0 + 70 * NS)  # 60 s later everything queued arrives in one batch
    batch = [tensor("a", i, i * 1600, x[:1600]) for i in range(100, 700)]
    out_after = [decode(b) for b in h.logic.handle(batch, stalled)]
    assert len(out) == 100
    assert h.metrics.drops["stale_window"] >= 580  # everything older than 1 s
    assert all(stalled.wall_ns - r.end_ns <= 1_000_000_000 + 100_000_000 for r in out_after)
    assert out_after and out_after[0].lost_ns >= 58 * NS and out_after[0].flags & Flag.DISCONTINUITY


def test_a_backlog_read_in_parts_after_a_stall_serves_nothing_late():
    """A real worker reads its backlog over many receives (CI: 11 results 4-6 s old after a 6 s
    stall, one per read, because the newest ready window of each read was always kept)."""
    h = Harness("level", max_lag_ms=1000)
    x = np.full(1600, 0.1, np.float32)
    for i in range(50):  # 5 s live
        h.logic.handle([tensor("a", i, i * 1600, x)], Now(i * 0.1, T0 + (i + 1) * 100_000_000 + 5_000_000))
    served = []
    for part in range(10):  # 6 s later, 60 queued tensors arrive 6 per read, 10 ms apart
        now = Now(11.0 + part * 0.01, T0 + 11 * NS + part * 10_000_000)
        batch = [tensor("a", i, i * 1600, x) for i in range(50 + part * 6, 56 + part * 6)]
        served += [decode(b) for b in h.logic.handle(batch, now)]
        assert all(now.wall_ns - r.end_ns <= 1_100_000_000 for r in served[-6:]), "a late result was served"
    assert h.metrics.drops["stale_window"] >= 50


def test_a_gap_in_a_backlog_after_a_stall_serves_nothing_late():
    """The sender dropped tensors while the worker was stopped (its queue was full): the gap used
    to serve the windows before it at once and to measure the stream's delay anew from the first,
    late, tensor after it, so the whole backlog counted as on time (CI: results 4-6 s old)."""
    h = Harness("level", max_lag_ms=1000)
    x = np.full(1600, 0.1, np.float32)
    for i in range(50):  # 5 s live
        h.logic.handle([tensor("a", i, i * 1600, x)], Now(i * 0.1, T0 + (i + 1) * 100_000_000 + 5_000_000))
    served = []
    seqs = [*range(50, 56), *range(70, 110)]  # 56-69 dropped upstream during the stall
    for part in range(0, len(seqs), 4):
        now = Now(11.0 + part * 0.01, T0 + 11 * NS + part * 10_000_000)
        batch = [tensor("a", i, i * 1600, x) for i in seqs[part : part + 4]]
        out = [decode(b) for b in h.logic.handle(batch, now)]
        assert all(now.wall_ns - r.end_ns <= 1_100_000_000 for r in out), "a late result was served"
        served += out
    assert h.metrics.drops["stale_window"] >= 30
    assert sum(r.lost_ns for r in served) >= 14 * 100_000_000


def test_a_stalled_worker_flushes_nobody_as_idle_before_its_input_caught_up():
    """After SIGCONT the first tick came before the queued tensors: the stream looked 6 s idle,
    was flushed, and came back as a new slot whose delay was measured from its late backlog,
    so the whole backlog was served 4-5 s late (CI)."""
    h = Harness("level", max_lag_ms=1000, idle_s=5.0)
    x = np.full(1600, 0.1, np.float32)
    for i in range(50):
        h.logic.handle([tensor("a", i, i * 1600, x)], Now(i * 0.1, T0 + (i + 1) * 100_000_000 + 5_000_000))
    woke = Now(11.0, T0 + 11 * NS)
    assert h.logic.tick(woke) == [] and not h.metrics.events.get("idle_flush")
    served = []
    for part in range(10):
        now = Now(11.0 + part * 0.01, T0 + 11 * NS + part * 10_000_000)
        batch = [tensor("a", i, i * 1600, x) for i in range(50 + part * 6, 56 + part * 6)]
        out = [decode(b) for b in h.logic.handle(batch, now)]
        assert all(now.wall_ns - r.end_ns <= 1_100_000_000 for r in out), "a late result was served"
        served += out
    assert h.metrics.drops["stale_window"] >= 50


def test_a_stream_back_after_an_idle_flush_keeps_its_delay():
    """An idle flush forgets the slot; the same epoch coming back late is still late."""
    h = Harness("level", max_lag_ms=1000, idle_s=1.0)
    x = np.full(1600, 0.1, np.float32)
    for i in range(20):
        h.logic.handle([tensor("a", i, i * 1600, x)], Now(i * 0.1, T0 + (i + 1) * 100_000_000 + 5_000_000))
    for k in range(30):  # ticks every 0.1 s: the stream goes quiet and is flushed
        h.logic.tick(Now(2.0 + k * 0.1, T0 + 2 * NS + k * 100_000_000))
    assert h.metrics.events["idle_flush"] == 1
    now = Now(5.0, T0 + 5 * NS)  # its next tensors arrive 3 s late (held up on the way)
    out = [decode(b) for b in h.logic.handle([tensor("a", i, i * 1600, x) for i in range(20, 30)], now)]
    assert all(now.wall_ns - r.end_ns <= 1_100_000_000 for r in out) and h.metrics.drops["stale_window"] >= 9


def test_windows_waiting_inside_a_long_tensor_are_not_late():
    """2 s tensors: the first window of each was complete 1.9 s before the tensor arrived. That is
    upstream chunking, not lag: --max-lag-ms 1000 must not shed it."""
    h = Harness("level", max_lag_ms=1000)
    x = np.full(32_000, 0.1, np.float32)
    out = []
    for i in range(5):
        out += [decode(b) for b in h.logic.handle([tensor("a", i, i * 32_000, x)],
                                                  Now(i * 2.0, T0 + (i + 1) * 2 * NS + 5_000_000))]
    assert not h.metrics.drops and len(out) >= 5 * 19

def test_a_replay_at_its_own_pace_with_old_stamps_is_not_stale():
    """A recording replayed in real time carries its old capture times: not late at all."""
    h = Harness("level", max_lag_ms=1000)
    x = np.full(1600, 0.1, np.float32)
    year = 365 * 86400 * NS
    out = []
    for i in range(50):
        out += [decode(b) for b in h.logic.handle([tensor("a", i, i * 1600, x)],
                                                  Now(i * 0.1, T0 + year + (i + 1) * 100_000_000 + 3_000_000))]
    assert len(out) == 50 and not h.metrics.drops


def test_non_finite_samples_never_reach_the_model_state(audio):
    """One NaN used to make every later vad score of the stream NaN."""
    speech = audio.alsa_speech()[: 512 * 20]
    h = Harness("vad")
    bad = speech.copy()
    bad[600:610] = np.nan
    bad[700] = np.inf
    out = h.send(bad)
    assert np.isfinite(scores(out)).all() and h.metrics.events["nonfinite_samples"] == 11
    later = h.send(speech)
    assert np.isfinite(scores(later)).all() and scores(later).max() > 0.5


def test_reset_stops_active_labels(audio):
    h = Harness("level")
    loud = h.send(audio.tone(0.3))
    after = h.send(audio.tone(0.3), Flag.DISCONTINUITY)
    start = loud[0].events[0]
    assert (start.label, start.state, start.t_ns) == ("sound", "start", loud[0].start_ns)
    # the reset stops "sound" where the new audio begins; it starts again with the new audio
    assert [(e.label, e.state) for e in after[0].events] == [("sound", "stop"), ("sound", "start")]
    stop = after[0].events[0]
    assert stop.since_ns == start.t_ns and 0.5 < stop.score <= 1.0  # the span and its peak


def test_idle_stream_is_flushed_and_resumes_its_sequence(audio):
    """A source that goes quiet: its partial window is classified, its labels stop; if it comes
    back in the same epoch its results continue the sequence."""
    h = Harness("level")
    first = h.send(audio.tone(0.35))  # 3 full windows + 800 samples waiting
    flushed = h.later(6.0)  # silent for more than --idle-s (5 s)
    back = h.send(audio.tone(0.25))  # two new windows
    assert len(first) == 3 and len(flushed) == 1 and flushed[0].final and flushed[0].flags & Flag.END
    assert flushed[0].end_ns == T0 + int(0.35 * NS)
    assert ("sound", "stop") in [(e.label, e.state) for e in flushed[0].events]
    assert [r.seq for r in first + flushed + back] == [0, 1, 2, 3, 4, 5]


def test_stream_ending_on_a_window_boundary_still_stops_its_labels(audio):
    """Nothing left to classify at the end, but "sound" is on: a result with no labels stops it."""
    h = Harness("level")
    first = h.send(audio.tone(0.3))  # exactly 3 windows of 100 ms: nothing buffered after them
    flushed = h.later(6.0)
    assert len(first) == 3 and ("sound", "start") in [(e.label, e.state) for e in first[0].events]
    assert len(flushed) == 1 and not flushed[0].labels and flushed[0].final
    assert flushed[0].end_ns == T0 + int(0.3 * NS)
    assert ("sound", "stop") in [(e.label, e.state) for e in flushed[0].events]


def test_streams_beyond_the_bound_are_refused_and_counted():
    h = Harness("level", max_streams=4)
    x = np.zeros(1600, np.float32)
    for i in range(50):
        h.logic.handle([tensor(f"s{i}", 0, 0, x)], Now(100.0, T0))
    assert len(h.logic.slots) == 4 and h.metrics.drops["too_many_streams"] == 46


def test_out_of_range_scores_are_clipped_and_counted():
    from classify.models.base import Model, ModelSpec

    class Wild(Model):
        spec = ModelSpec("wild", RATE, 1, 512, 512, ("a", "b"))

        def forward(self, windows, states):
            return np.array([[np.nan, 7.0]] * len(windows))

    logic = ClassifyLogic(Wild(), WorkerConfig(max_lag_ms=0, batch_wait_ms=0), StageMetrics("t"))
    out = [decode(b) for b in logic.handle([tensor("a", 0, 0, np.zeros(512))], Now(1.0, T0))]
    assert [(lbl.name, lbl.score) for lbl in out[0].labels] == [("b", 1.0), ("a", 0.0)]
    assert logic.metrics.events["scores_out_of_range"] == 1


@pytest.mark.parametrize("name", ["vad", "level"])
def test_batching_per_wake_up_changes_no_output(name, audio):
    """The same tensors of three streams give identical results whether each wake-up brings one
    message, one stream's burst, everything at once, or the streams out of phase."""
    speech = audio.alsa_speech()[: 512 * 24]
    tone = audio.tone(24 * 512 / RATE)
    streams = {"a": speech, "b": tone, "c": speech[::-1].copy()}
    msgs = {s: [tensor(s, i, i * 320, x[i * 320 : (i + 1) * 320]) for i in range(len(x) // 320)]
            for s, x in streams.items()}

    def run(batches) -> dict:
        logic = ClassifyLogic(model(name), WorkerConfig(max_lag_ms=0, batch_wait_ms=5), StageMetrics("t"))
        out, mono = [], 100.0
        for batch in batches:
            mono += 0.003
            out += [decode(b) for b in logic.handle(batch, Now(mono, T0))]
        out += [decode(b) for b in logic.tick(Now(mono + 1.0, T0))]
        # scores compared with a tolerance: a batched model call sums in another order than one of
        # batch 1 (silero's jit graph: up to ~2e-6 here); everything else must be identical
        return {(r.stream, r.seq): (r.offset, [(lbl.name, lbl.score) for lbl in r.labels],
                                    [(e.label, e.state, e.t_ns, e.since_ns, e.score) for e in r.events], r.flags)
                for r in out}

    one_by_one = [[m] for m in itertools.chain(*zip(*msgs.values()))]
    per_stream = [msgs[s] for s in msgs]
    all_at_once = [list(itertools.chain(*msgs.values()))]
    late = itertools.zip_longest(msgs["b"], msgs["c"], msgs["a"][7:])
    out_of_phase = [[m] for m in msgs["a"][:7]] + [[m] for m in itertools.chain(*late) if m is not None]
    ref = run(one_by_one)
    assert len(ref) == 3 * (len(msgs["a"]) * 320 // model(name).spec.hop)
    for batches in (per_stream, all_at_once, out_of_phase):
        got = run(batches)
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k][0] == ref[k][0] and got[k][3] == ref[k][3], k
            assert [e[:4] for e in got[k][2]] == [e[:4] for e in ref[k][2]], k
            np.testing.assert_allclose([s for _, s in got[k][1]], [s for _, s in ref[k][1]], atol=1e-5)
            np.testing.assert_allclose([e[4] for e in got[k][2]], [e[4] for e in ref[k][2]], atol=1e-5)


def test_batch_wait_deadline_and_live_streams():
    """batch_due/wake_in with explicit clock values: a ready window waits, for at most
    --batch-wait-ms, for a live stream whose next tensor (at its shortest recent gap) completes a
    window before the deadline; not for one that completes later, nor for one silent for LIVE_S."""
    w = ClassifyLogic(model("level"), WorkerConfig(max_lag_ms=0, batch_wait_ms=5.0), StageMetrics("t"))
    for s, n in (("a", 1600), ("b", 800)):  # a: a full level window (1600 samples); b: half of one
        w._accept(tensor(s, 0, 0, np.zeros(n)), Now(100.0, T0))
    b = w.slots.get("b")
    b.gaps.clear()
    b.gaps.extend([0.060, 0.050, 0.070])  # b's tensors came 50-70 ms apart: the next one may come in 50
    now = b.last_rx + 0.048  # ... 2 ms from now: in phase, worth waiting for
    assert not w.batch_due(now)  # the wait starts
    assert w.wake_in(Now(now + 0.0005, 0)) == pytest.approx(0.0045)
    assert not w.batch_due(now + 0.001)
    assert w.wake_in(Now(now + 0.004, 0)) == pytest.approx(0.001)
    assert w.batch_due(now + 0.0051)  # deadline passed (b was late): serve what is ready
    assert w.serve(Now(now + 0.0051, T0)) == 1 and not w.batch_due(now + 0.006)
    w.first_ready = None
    assert w.wake_in(Now(now + 0.006, 0)) is None

    w.slots.get("a").windows.push(np.zeros((1, 1600), np.float32), T0, 1, 0, [])
    assert w.batch_due(b.last_rx + 0.030)  # b's window completes 20 ms on: out of phase, not waited for
    assert w.batch_due(b.last_rx + LIVE_S + 0.1)  # b silent for longer than LIVE_S: not waited for
    w.first_ready = None
    assert not w.batch_due(b.last_rx + 0.049) and w.first_ready is not None  # in phase again: waits
    b.windows.push(np.zeros((1, 800), np.float32), T0, 1, 0, [])
    assert w.batch_due(b.last_rx + 0.0491)  # b complete: nothing missing, due at once


def test_a_stream_ending_on_a_boundary_with_nothing_on_still_gets_a_final_result(audio):
    """Consumers (tail, MQTT, the event store) learn from a final result that a stream ended."""
    h = Harness("level")
    x = np.zeros(1600 * 3, np.float32)
    msgs = [tensor("a", i, i * 1600, x[i * 1600 : (i + 1) * 1600], Flag.END if i == 2 else 0) for i in range(3)]
    out = [decode(b) for b in h.logic.handle(msgs, Now(100.0, T0))]
    assert len(out) == 4 and out[-1].final and out[-1].flags & Flag.END and not out[-1].labels
    assert not any(r.final for r in out[:-1])
