"""The classify worker loop: tensors in, one model, results out.

    receive every waiting tensor message -> push into its stream's StreamWindows
    drop audio older than --max-lag-ms (counted: stale windows)
    wait (at most --batch-wait-ms) for the live streams whose windows complete within the wait
    while windows are ready: one batch = at most one window per stream -> model -> results

Live streams deliver their windows one message at a time; serving each as it arrives
would run the model once per window (measured here: 1.7 ms of CPU per vad window with 8
live streams, against 0.24 ms per window in batches of 8). Waiting briefly for the other
streams' windows makes one model call serve them all.

Per stream (StreamSlot): the windows, the model state, the event tracker, the result seq.
A discontinuity (flag, sequence gap, new epoch, staleness drop) resets all of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from classify.batching import run_batch
from classify.events import EventTracker, threshold_arrays
from classify.models.base import Model, StreamState
from classify.windows import Anchor, StreamWindows, Window
from common.metrics import StageMetrics
from common.protocol import (
    MAX_TRACE_HOPS,
    Flag,
    Header,
    Hop,
    Kind,
    Message,
    encode_header,
    pack,
    shard_prefixes,
    topic_for,
)
from common.publisher import Publisher
from common.sockets import SocketOptions, open_sub
from common.stage import Continuity, RateLimitedLog, Receiver, SequenceTracker, StopFlag

log = logging.getLogger("classify")

MAX_DRAIN = 2000  # messages read per loop turn before serving windows (bounds one turn's latency)
MIN_BUFFER_S = 60.0  # per-stream buffer bound (memory guard) when --max-lag-ms is smaller or off
LIVE_S = 1.0  # a stream that sent a tensor this recently is expected to complete a window soon


@dataclass
class WorkerConfig:
    """Everything a worker needs besides its model."""

    inputs: list[str]
    outputs: list[str]
    shard: tuple[int, int] = (0, 1)
    max_lag_ms: float = 1000.0  # windows ending longer ago than this are dropped, not classified (0: never)
    thresholds: list[tuple[str, float, float]] = field(default_factory=list)
    top_k: int | None = None
    idle_s: float = 5.0  # a stream silent this long is flushed like an END (0: never)
    batch_wait_ms: float = 5.0  # a ready window waits at most this long for other streams' windows (0: never)
    opts: SocketOptions = field(default_factory=SocketOptions)


class StreamSlot:
    """Everything the worker keeps for one stream."""

    def __init__(self, model: Model, windows: StreamWindows, events: EventTracker, epoch: int) -> None:
        self.windows = windows
        self.state: StreamState | None = model.new_state()
        self.events = events
        self.epoch = epoch
        self.result_seq = 0
        self.next_flags = Flag.NONE  # DISCONTINUITY on the first result after a reset or a mid-epoch join
        self.pending_events: list[dict[str, Any]] = []  # stops caused by a reset, sent with the next result
        self.ended = False  # END or idle: flush the partial window, stop events, forget the slot
        self.last_rx = time.monotonic()  # when its last tensor arrived
        self.frames = 0  # samples in its last tensor
        self.gaps: deque[float] = deque(maxlen=4)  # seconds between its last tensors' arrivals
        self.last_anchor: Anchor | None = None  # the newest tensor received (for stops after the last window)
        self.topic = b""  # result topic of this stream and model (cached: it is hashed from the names)

    def cadence_s(self) -> float:
        """Shortest recent gap between this stream's tensors (s): when its next one may come."""
        return min(self.gaps) if self.gaps else 0.0

    def received(self, frames: int, now: float) -> None:
        """A tensor of ``frames`` samples arrived at ``now`` (time.monotonic())."""
        self.gaps.append(now - self.last_rx)
        self.last_rx, self.frames = now, frames

    def reset(self, offset: int, t_ns: int) -> None:
        """Forget audio and model state; active labels stop at ``t_ns``."""
        self.windows.reset(offset)
        self.next_flags |= Flag.DISCONTINUITY
        if self.state is not None:
            self.state.reset()
        self.pending_events += self.events.reset(t_ns)


class ClassifyWorker:
    """Runs one model over every stream it receives (see module docstring)."""

    def __init__(self, model: Model, cfg: WorkerConfig, metrics: StageMetrics, ctx: zmq.Context) -> None:
        self.model, self.cfg, self.metrics = model, cfg, metrics
        spec = model.spec
        self.top_k = min(cfg.top_k or spec.top_k, len(spec.labels))
        self.on, self.off = threshold_arrays(spec.labels, spec.thresholds, cfg.thresholds)
        self.max_lag_ns = int(cfg.max_lag_ms * 1_000_000)
        self.buffer_samples = spec.window + spec.hop + int(max(cfg.max_lag_ms / 1000, MIN_BUFFER_S) * spec.rate)
        self.slots: dict[str, StreamSlot] = {}
        self.resume: dict[str, tuple[int, int]] = {}  # stream -> (epoch, next result seq) of a forgotten slot
        self._last_idle_check = time.monotonic()
        self.batch_wait_s = max(cfg.batch_wait_ms, 0.0) / 1000
        self._first_ready: float | None = None  # time.monotonic() when a window began waiting for a batch
        self.tracker = SequenceTracker(metrics)
        self.sub = open_sub(ctx, cfg.inputs, shard_prefixes(Kind.TENSOR, *cfg.shard), cfg.opts)
        self.pub = Publisher(ctx, cfg.outputs, cfg.opts)
        self.receiver = Receiver([self.sub], metrics)
        self.warn = RateLimitedLog(log)
        self.windows_done = 0
        self.batches = 0
        self.model_cpu_s = 0.0

    # ---- input ---------------------------------------------------------------------

    def handle(self, msg: Message, t_in_ns: int) -> None:
        """Check one tensor message and add its samples to its stream's buffer."""
        h = msg.header
        if h.kind != Kind.TENSOR:
            return
        spec = self.model.spec
        reason = None
        if h.rate != spec.rate:
            reason = "wrong_rate"
            text = f"is {h.rate} Hz, model {spec.name} needs {spec.rate} Hz (convert resamples: --rate {spec.rate})"
        elif h.channels != spec.channels:
            reason = "wrong_channels"
            text = f"has {h.channels} channel(s), model {spec.name} needs {spec.channels} (convert can downmix)"
        elif h.format != "f32" or h.layout != "planar":
            reason = "wrong_format"
            text = f"is {h.format}/{h.layout}, tensors must be f32/planar"
        if reason:
            self.metrics.drop(reason)
            self.warn.warning(f"{reason}:{h.stream}", f"skipping stream {h.stream}: its tensor {text}")
            return
        self.metrics.frame_in(h.stream)
        cont, _missing = self.tracker.check(h.stream, h.epoch, h.seq, bool(h.flags & Flag.DISCONTINUITY))
        if cont is Continuity.STALE:
            return
        slot = self.slots.get(h.stream)
        if slot is None:
            slot = self._new_slot(h)
        elif (
            cont in (Continuity.NEW_EPOCH, Continuity.GAP)
            or h.flags & Flag.DISCONTINUITY
            or h.epoch != slot.epoch
        ):
            self.metrics.event("reset")
            if h.epoch != slot.epoch:
                slot.epoch, slot.result_seq = h.epoch, 0
            slot.reset(h.offset, h.t_capture_ns)
        elif h.offset != slot.windows.next_index:
            # Audio stays contiguous (seq says nothing was lost); the sender's offsets disagree with ours.
            self.metrics.event("offset_mismatch")
            self.warn.warning(f"offset:{h.stream}", f"stream {h.stream}: tensor offset {h.offset}, expected "
                                                    f"{slot.windows.next_index}; keeping our own count")
        samples = msg.samples()  # (channels, frames) float32, zero-copy view of the frame
        dropped = slot.windows.push(samples, h.t_capture_ns, h.seq, t_in_ns, h.trace)
        if dropped:
            self._dropped(h.stream, slot, dropped, "buffer_full")
        slot.received(h.frames, time.monotonic())
        slot.last_anchor = slot.windows.anchors[-1]
        if h.flags & Flag.END:
            slot.ended = True

    def _new_slot(self, h: Header) -> StreamSlot:
        spec = self.model.spec
        w = StreamWindows(spec.rate, spec.channels, spec.window, spec.hop, self.buffer_samples)
        w.reset(h.offset)
        slot = StreamSlot(self.model, w, EventTracker(spec.labels, self.on, self.off, spec.hold), h.epoch)
        slot.topic = topic_for(Kind.RESULT, h.stream, spec.name)
        epoch, seq = self.resume.pop(h.stream, (None, 0))
        if epoch == h.epoch:  # back after an idle flush in the same epoch: results keep counting
            slot.result_seq = seq
        elif h.offset > 0:
            # Joining mid-epoch (this worker restarted): number results where a previous instance
            # would be, so consumers count the lost results as a gap; the DISCONTINUITY flag lets
            # them accept a lower seq (common.stage.SequenceTracker) if the estimate is short.
            slot.result_seq = h.offset // spec.hop
            slot.next_flags = Flag.DISCONTINUITY
        self.slots[h.stream] = slot
        log.info("stream %s: first tensor (epoch %d, %d Hz)", h.stream, h.epoch, h.rate)
        return slot

    def _dropped(self, stream: str, slot: StreamSlot, windows: int, why: str) -> None:
        """``windows`` were dropped unclassified: count them, and restart the model state."""
        self.metrics.drop("stale_window" if why == "stale" else "buffer_full", windows)
        text = (f"behind by more than {self.cfg.max_lag_ms:g} ms" if why == "stale"
                else f"more than {self.buffer_samples / self.model.spec.rate:.0f} s of audio waiting")
        self.warn.warning(f"{why}:{stream}", f"stream {stream}: {text}, dropped the oldest {windows} window(s)")
        if slot.state is not None:
            slot.state.reset()

    def drop_stale(self, now_ns: int) -> None:
        """Drop the oldest windows of every stream whose results would come too late.

        A window's lag is how long ago its audio ended, measured two ways, and the smaller
        counts: by the wall clock (``now - end``; a live source we fell behind) and by the
        stream's own newest audio (``newest - end``; audio waiting behind it). So a file
        replayed faster than real time (stamps ahead of the clock) is never dropped, nor is
        a recording replayed at its pace with its old stamps, unless the worker falls behind it.
        """
        if self.max_lag_ns <= 0:
            return
        hop_ns = self.model.spec.hop * 1_000_000_000 // self.model.spec.rate
        for stream, slot in self.slots.items():
            w = slot.windows
            if w.ready_count() < 2:  # never drop the only window there is
                continue
            end = w.oldest_window_end_ns()
            lag = min(now_ns - end, w.newest_end_ns() - end)
            if lag > self.max_lag_ns:
                hops = min(-(-(lag - self.max_lag_ns) // hop_ns), w.ready_count() - 1)
                dropped = w.skip(hops * self.model.spec.hop)
                if dropped:
                    self._dropped(stream, slot, dropped, "stale")

    # ---- model and output ----------------------------------------------------------

    def batch_due(self, now: float) -> bool:
        """Serve the ready windows now (``now``: time.monotonic())? Yes when no live stream is
        expected to complete a window before the wait ends (the batch is as full as it will get
        in time), when a batch is full, when a stream ended, or when the first ready window has
        waited ``batch_wait_ms``.

        A stream's window is expected when its next tensors arrive, at its shortest recent gap
        between tensors (``StreamSlot.cadence_s``; re-framed tensors arrive unevenly, e.g. 20 ms
        capture frames make 32 ms tensors come 20 or 40 ms apart): streams in phase (one convert
        sending them in turn) are waited for, a stream whose window completes after the deadline
        is not.
        """
        waiting, missing = 0, False
        deadline = (self._first_ready if self._first_ready is not None else now) + self.batch_wait_s
        window = self.model.spec.window
        for slot in self.slots.values():
            if slot.ended:
                return True
            w = slot.windows
            if w.ready_count():
                waiting += 1
            elif not missing and now - slot.last_rx < LIVE_S and slot.frames > 0:
                tensors_needed = -(-(window - w.buffered) // slot.frames)
                missing = slot.last_rx + tensors_needed * slot.cadence_s() <= deadline
        if not waiting:
            self._first_ready = None
            return False
        if not missing or waiting >= self.model.spec.max_batch or self.batch_wait_s <= 0:
            return True
        if self._first_ready is None:
            self._first_ready = now
        return now - self._first_ready >= self.batch_wait_s

    def wait_ms(self, now: float, idle_ms: int = 100) -> int:
        """How long the loop may block on its input: until the waiting batch is due, else ``idle_ms``."""
        if self._first_ready is None:
            return idle_ms
        return max(0, math.ceil((self._first_ready + self.batch_wait_s - now) * 1000))

    def serve(self) -> int:
        """Run every ready window through the model in batches across streams; returns results sent."""
        served = 0
        max_batch = self.model.spec.max_batch
        # A stateless model may take several windows of one stream in a pass (a backlog);
        # a stateful one sees each stream's windows in order, one per pass.
        per_stream = 1 if self.model.spec.stateful else max_batch
        while True:
            ready = [
                (s, slot)
                for s, slot in self.slots.items()
                for _ in range(min(slot.windows.ready_count(), per_stream))
            ]
            if not ready:
                return served + self._finish_ended()
            for i in range(0, len(ready), max_batch):
                part = ready[i : i + max_batch]
                served += self._run(part, [slot.windows.take() for _, slot in part])

    def _run(self, part: list[tuple[str, StreamSlot]], wins: list[Window], ends: list[int] | None = None) -> int:
        """One forward pass over ``wins`` (one per stream of ``part``); publish; returns results sent."""
        res = run_batch(self.model, [w.samples for w in wins], [slot.state for _, slot in part])
        self.batches += 1
        self.model_cpu_s += res.cpu_s
        self.metrics.latency("model", res.cpu_s / max(len(wins), 1))
        for err in res.errors:
            self.metrics.drop("model_error")
            self.warn.warning("model_error", f"model {self.model.spec.name} raised on a window, skipped: {err}")
        sent = 0
        for j, ((stream, slot), win, scores, extra) in enumerate(zip(part, wins, res.scores, res.extras)):
            if scores is not None:
                self.publish(stream, slot, win, scores, extra, final_end_ns=ends[j] if ends else None)
                sent += 1
        return sent

    def _finish_ended(self) -> int:
        """Streams that sent END: classify the zero-padded partial window, stop what is on, forget them."""
        ended = [(s, slot) for s, slot in self.slots.items() if slot.ended]
        if not ended:
            return 0
        part, wins, ends = [], [], []
        sent = 0
        for stream, slot in ended:
            if slot.windows.buffered > 0:
                ends.append(slot.windows.pad_to_window())
                part.append((stream, slot))
                wins.append(slot.windows.take())
            elif (slot.events.n_active or slot.pending_events) and slot.last_anchor is not None:
                self._publish_stops(stream, slot, slot.last_anchor)
                sent += 1
        sent += self._run(part, wins, ends) if part else 0
        for stream, slot in ended:
            self.resume[stream] = (slot.epoch, slot.result_seq)
            del self.slots[stream]
        return sent

    def _publish_stops(self, stream: str, slot: StreamSlot, a: Anchor) -> None:
        """The stream ended exactly on a window boundary with labels still on: one result with no
        audio (``empty``) whose events stop them where the audio ended."""
        spec = self.model.spec
        end_ns = a.t_capture_ns + a.frames * 1_000_000_000 // spec.rate
        win = Window(np.zeros((spec.channels, 0), np.float32), slot.windows.next_index, end_ns, end_ns, a.seq, a.seq, a)
        self.publish(stream, slot, win, np.zeros(len(spec.labels), np.float32), {"empty": True}, final_end_ns=end_ns)

    def flush_idle(self, now: float) -> None:
        """Streams with no tensor for ``idle_s`` (monotonic ``now``) end like an END: their
        partial window is classified and their labels stop, so a vanished source does not
        leave "speech" on forever."""
        if self.cfg.idle_s <= 0:
            return
        for stream, slot in self.slots.items():
            if not slot.ended and now - slot.last_rx > self.cfg.idle_s:
                slot.ended = True
                self.metrics.event("idle_flush")
                log.info("stream %s: no tensor for %.0f s, flushed", stream, now - slot.last_rx)

    def publish(self, stream: str, slot: StreamSlot, win: Window, scores: np.ndarray, extra: dict[str, Any],
                final_end_ns: int | None = None) -> None:
        """One result message. ``final_end_ns``: this is the zero-padded last window of an ended
        stream; its span ends where the audio did, and every label still on stops there."""
        spec = self.model.spec
        events = slot.pending_events + slot.events.update(scores, win.start_ns)
        slot.pending_events = []
        if final_end_ns is not None:
            events += slot.events.reset(final_end_ns)
            extra = {**extra, "final": True}
        if self.top_k == 1:
            top = [int(scores.argmax())]  # the method: np.argmax's dispatch costs 3 us here
        else:
            top = np.argsort(-scores, kind="stable")[: self.top_k].tolist()
        body: dict[str, Any] = {
            "model": spec.name,
            "labels": [[spec.labels[i], float(scores[i])] for i in top],
            "start_ns": win.start_ns,
            "end_ns": win.end_ns if final_end_ns is None else final_end_ns,
            "offset": win.offset,
            "seq_first": win.seq_first,
            "seq_last": win.seq_last,
            "events": events,
            **extra,
        }
        h = Header(
            kind=Kind.RESULT,
            stream=stream,
            epoch=slot.epoch,
            seq=slot.result_seq,
            t_capture_ns=win.start_ns,
            rate=spec.rate,
            channels=spec.channels,
            format="f32",
            layout="planar",
            frames=spec.window,
            offset=win.offset,
            flags=slot.next_flags,
            model=spec.name,
        )
        slot.next_flags = Flag.NONE
        h.trace = (win.last.trace + [Hop("classify", win.last.t_in_ns, time.time_ns())])[-MAX_TRACE_HOPS:]
        slot.result_seq += 1
        self.windows_done += 1
        # == encode_result(h, body), with the topic computed once per stream
        frames = [slot.topic, encode_header(h), pack(body)]
        if self.pub.send(frames):
            self.metrics.frame_out(stream)
        else:
            self.metrics.drop("send_queue_full")

    # ---- loop ------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> None:
        """Receive, window, classify, publish until ``stop``."""
        while not stop:
            msg = self.receiver.recv(self.wait_ms(time.monotonic()))
            drained = 0
            while msg is not None:
                self.handle(msg, time.time_ns())
                drained += 1
                if drained >= MAX_DRAIN:
                    break
                msg = self.receiver.recv(0)
            self.pub.poll_subscriptions()
            self.drop_stale(time.time_ns())
            self.metrics.queue_depth(sum(slot.windows.ready_count() for slot in self.slots.values()))
            now = time.monotonic()
            if now - self._last_idle_check > 1.0:
                self._last_idle_check = now
                self.flush_idle(now)
            if self.batch_due(now):
                self.serve()
                self._first_ready = None
            self.metrics.maybe_log_summary(self.stats())

    def stats(self) -> str:
        """``model=... windows=N batches=M model_cpu_ms_per_window=X`` for the log."""
        per_window = self.model_cpu_s / self.windows_done * 1e3 if self.windows_done else 0.0
        return (f"model={self.model.spec.name} windows={self.windows_done} batches={self.batches} "
                f"model_cpu_ms_per_window={per_window:.3f}")

    def close(self) -> None:
        self.receiver.close()
        self.sub.close()
        self.pub.close()
