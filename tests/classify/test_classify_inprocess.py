"""The worker's logic in-process (inproc sockets, messages handed to it directly): resets and spans."""

from __future__ import annotations

import time

import numpy as np
import zmq

from classify.models import load_model
from classify.worker import ClassifyWorker, WorkerConfig
from common.metrics import StageMetrics
from common.protocol import Flag, Header, Hop, Kind, decode, encode, topic_for

RATE = 16_000


class Harness:
    """A ClassifyWorker fed tensor messages by hand; its results read from an inproc SUB."""

    def __init__(self, ctx: zmq.Context, model_name: str) -> None:
        out = f"inproc://results-{id(self)}"
        self.worker = ClassifyWorker(load_model(model_name), WorkerConfig(inputs=[f"inproc://in-{id(self)}"],
                                     outputs=[out], max_lag_ms=0), StageMetrics("test"), ctx)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, topic_for(Kind.RESULT))
        self.sub.connect(out)
        self.worker.pub.wait_for_subscriber(5.0)
        self.seq = 0
        self.offset = 0
        self.t0 = time.time_ns()

    def send(self, audio: np.ndarray, flags: Flag = Flag.NONE, chunk: int = 512) -> list[dict]:
        """Feed ``audio`` as one stream's tensors; return the results it produced."""
        for start in range(0, len(audio), chunk):
            part = audio[None, start : start + chunk]
            h = Header(Kind.TENSOR, "a", 1, self.seq, self.t0 + self.offset * 1_000_000_000 // RATE, rate=RATE,
                       channels=1, format="f32", layout="planar", frames=part.shape[1], offset=self.offset,
                       flags=flags if start == 0 else Flag.NONE, trace=[Hop("convert", 1, 2)])
            self.worker.handle(decode([bytes(f) for f in encode(h, part)]), time.time_ns())
            self.seq += 1
            self.offset += part.shape[1]
        self.worker.serve()
        out = []
        while self.sub.poll(200):
            m = decode(self.sub.recv_multipart())
            out.append({**m.result(), "_seq": m.header.seq})
        return out

    def close(self) -> None:
        self.sub.close(0)
        self.worker.close()


def test_discontinuity_resets_vad_state_and_window(zctx, audio):
    speech = audio.alsa_speech()[: 512 * 40]
    h = Harness(zctx, "vad")
    try:
        first = h.send(speech)
        again = h.send(speech)  # contiguous: the model carries its state over
        reset = h.send(speech, Flag.DISCONTINUITY)  # same audio after a reset: exactly the first scores
    finally:
        h.close()
    p = lambda rs: np.array([r["labels"][0][1] for r in rs])
    assert len(first) == len(again) == len(reset) == 40
    np.testing.assert_allclose(p(reset), p(first), atol=1e-6)
    assert np.abs(p(again) - p(first)).max() > 1e-3  # the state mattered
    assert reset[0]["offset"] == 2 * 512 * 40 and reset[0]["seq_first"] == 80


def test_reset_stops_active_labels(zctx, audio):
    h = Harness(zctx, "level")
    try:
        loud = h.send(audio.tone(0.3))
        after = h.send(audio.tone(0.3), Flag.DISCONTINUITY)
    finally:
        h.close()
    assert {"label": "sound", "state": "start", "t_ns": loud[0]["start_ns"]} in loud[0]["events"]
    # the reset stops "sound" where the new audio begins; it starts again with the new audio
    states = [(e["label"], e["state"]) for e in after[0]["events"]]
    assert states == [("sound", "stop"), ("sound", "start")]


def test_idle_stream_is_flushed_and_resumes_its_sequence(zctx, audio):
    """A source that goes quiet: its partial window is classified, its labels stop; if it comes
    back in the same epoch its results continue the sequence."""
    h = Harness(zctx, "level")
    try:
        first = h.send(audio.tone(0.35))  # 3 full windows + 800 samples waiting
        h.worker.flush_idle(time.monotonic() + 60)
        h.worker.serve()
        flushed = h.send(np.zeros(0, np.float32))
        back = h.send(audio.tone(0.25))  # two new windows
    finally:
        h.close()
    assert len(first) == 3 and len(flushed) == 1 and flushed[0]["final"]
    assert flushed[0]["end_ns"] == h.t0 + int(0.35 * 1e9)
    assert ("sound", "stop") in [(e["label"], e["state"]) for e in flushed[0]["events"]]
    assert [r["_seq"] for r in first + flushed + back] == [0, 1, 2, 3, 4, 5]


def test_stream_ending_on_a_window_boundary_still_stops_its_labels(zctx, audio):
    """Nothing left to classify at the end, but "sound" is on: a result with no audio stops it."""
    h = Harness(zctx, "level")
    try:
        first = h.send(audio.tone(0.3))  # exactly 3 windows of 100 ms: nothing buffered after them
        h.worker.flush_idle(time.monotonic() + 60)
        h.worker.serve()
        flushed = h.send(np.zeros(0, np.float32))
    finally:
        h.close()
    assert len(first) == 3 and ("sound", "start") in [(e["label"], e["state"]) for e in first[0]["events"]]
    assert len(flushed) == 1 and flushed[0]["empty"] and flushed[0]["final"]
    assert flushed[0]["end_ns"] == h.t0 + int(0.3 * 1e9)
    assert ("sound", "stop") in [(e["label"], e["state"]) for e in flushed[0]["events"]]


def test_batch_wait_deadline_and_live_streams(zctx):
    """batch_due/wait_ms with explicit clock values: a ready window waits, for at most
    --batch-wait-ms, for a live stream whose next tensor (at its shortest recent gap) completes a
    window before the deadline; not for one that completes later, nor for one silent for LIVE_S."""
    from classify.worker import LIVE_S

    w = ClassifyWorker(load_model("level"), WorkerConfig(inputs=["inproc://bw-in"], outputs=["inproc://bw-out"],
                                                         max_lag_ms=0, batch_wait_ms=5.0), StageMetrics("t"), zctx)
    try:
        t0 = time.time_ns()

        def tensor(stream: str, frames: int) -> None:
            h = Header(Kind.TENSOR, stream, 1, 0, t0, rate=RATE, channels=1, format="f32", layout="planar",
                       frames=frames, offset=0, trace=[Hop("convert", 1, 2)])
            w.handle(decode([bytes(f) for f in encode(h, np.zeros((1, frames), np.float32))]), time.time_ns())

        tensor("a", 1600)  # a full level window (1600 samples)
        tensor("b", 800)  # half of one: b's next tensor completes its window
        b = w.slots["b"]
        b.gaps.clear()
        b.gaps.extend([0.060, 0.050, 0.070])  # b's tensors came 50-70 ms apart: the next one may come in 50
        now = b.last_rx + 0.048  # ... 2 ms from now: in phase, worth waiting for
        assert not w.batch_due(now)  # the wait starts
        assert 4 <= w.wait_ms(now + 0.0005) <= 5
        assert not w.batch_due(now + 0.001)
        assert w.wait_ms(now + 0.004) == 1
        assert w.batch_due(now + 0.0051)  # deadline passed (b was late): serve what is ready
        assert w.serve() == 1 and not w.batch_due(now + 0.006) and w.wait_ms(now + 0.006) == 100

        w.slots["a"].windows.push(np.zeros((1, 1600), np.float32), t0, 1, 0, [])
        assert w.batch_due(b.last_rx + 0.030)  # b's window completes 20 ms on: out of phase, not waited for
        assert w.batch_due(b.last_rx + LIVE_S + 0.1)  # b silent for longer than LIVE_S: not waited for
        assert not w.batch_due(b.last_rx + 0.049) and w._first_ready is not None  # in phase again: waits
        b.windows.push(np.zeros((1, 800), np.float32), t0, 1, 0, [])
        assert w.batch_due(b.last_rx + 0.0491)  # b complete: nothing missing, due at once
    finally:
        w.close()
