"""The classify stage: tensors in, one model, results out.

:class:`ClassifyLogic` is the stage's whole logic with no sockets (tests drive it with
messages and clock values); :func:`run` puts it on the shared runtime.

One wake-up, in order:

    each tensor -> its stream's StreamSlot (classify.stream): continuity, losses, windows
    shed windows whose results would come too late (--max-lag-ms), reported as lost
    if the batch is due: every ready window, at most one per stream per call for a
    stateful model, through the model in batches across streams -> one Result each

The batch is due when no live stream is expected to complete a window before the wait
ends (``--batch-wait-ms``), when a batch is full, or when a stream ended. Live streams
deliver windows one message at a time; serving each as it arrives would run the model
once per window (measured: 1.7 ms of CPU per vad window with 8 live streams, 0.24 ms per
window in batches of 8).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from classify.batching import run_batch
from classify.events import threshold_arrays
from classify.models.base import Model
from classify.stream import StreamSlot
from classify.windows import Window
from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.stage import Now, Runtime, StopFlag
from common.runtime.streams import DEFAULT_MAX_STREAMS, StreamTable
from common.transport.inbox import MAX_BATCH
from common.transport.sockets import SocketOptions
from common.wire.codec import Audio, encode
from common.wire.messages import I64_MAX, MAX_TRACE_HOPS, Flag, Hop, Label, Level, Result
from common.wire.topics import Kind, shard_prefixes

log = logging.getLogger("classify")

STAGE = "classify"
MIN_BUFFER_S = 60.0  # per-stream buffer bound (memory guard) when --max-lag-ms is smaller or off
LIVE_S = 1.0  # a stream that sent a tensor this recently is expected to complete a window soon
MAX_RESUME = 4096  # result numbering remembered for streams that went idle
STALL_S = 1.0  # ticks further apart than this: the process was not running (the runtime ticks every 0.1 s)
_DISC, _END = int(Flag.DISCONTINUITY), int(Flag.END)


@dataclass
class WorkerConfig:
    """Everything a worker needs besides its model and sockets."""

    max_lag_ms: float = 1000.0  # windows ending longer ago than this are shed, not classified (0: never)
    thresholds: list[tuple[str, float, float]] = field(default_factory=list)
    skip_unknown_thresholds: bool = False  # a threshold for a label this model lacks is skipped, not an error
    top_k: int | None = None
    idle_s: float = 5.0  # a stream silent this long is flushed like an END (0: never)
    batch_wait_ms: float = 5.0  # a ready window waits at most this long for other streams' windows (0: never)
    max_streams: int = DEFAULT_MAX_STREAMS


class ClassifyLogic:
    """Runs one model over every stream it receives (see the module docstring)."""

    def __init__(self, model: Model, cfg: WorkerConfig, metrics: StageMetrics) -> None:
        self.model, self.cfg, self.metrics = model, cfg, metrics
        spec = model.spec
        self.spec = spec
        self.top_k = min(cfg.top_k or spec.top_k, len(spec.labels))
        self.on, self.off = threshold_arrays(spec.labels, spec.thresholds, cfg.thresholds,
                                           cfg.skip_unknown_thresholds)
        self.max_lag_ns = int(cfg.max_lag_ms * 1_000_000)
        self.buffer_samples = spec.window + spec.hop + int(max(cfg.max_lag_ms / 1000, MIN_BUFFER_S) * spec.rate)
        self.slots: StreamTable[StreamSlot] = StreamTable(cfg.max_streams, metrics)
        # stream -> (epoch, next result seq, delay_ns) of a forgotten slot
        self.resume: dict[str, tuple[int, int, int | None]] = {}
        self.batch_wait_s = cfg.batch_wait_ms / 1000
        self.first_ready: float | None = None  # time.monotonic() when a window began waiting for a batch
        self.warn = RateLimitedLog(log)
        self.windows_done = 0
        self.batches = 0
        self.model_cpu_s = 0.0
        self._out: list[bytes] = []
        self._next_idle_check = 0.0
        self._last_tick = math.inf  # time.monotonic() of the previous tick (a jump is a stall)
        self._backlog = False
        self._now = Now(0.0, 0)  # set by handle()

    # ---- the batch -------------------------------------------------------------------

    def handle(self, batch: list[Audio], now: Now) -> list[bytes]:
        self._now = now  # the clock of this batch, for windows served before a break (_serve_now)
        for msg in batch:
            self._accept(msg, now)
        # A full batch means more is queued: a stream that looks idle may only be waiting in the
        # queue behind others, so nobody is flushed as idle until the input is drained.
        self._backlog = len(batch) >= MAX_BATCH
        return self.tick(now)

    def _accept(self, msg: Audio, now: Now) -> None:
        """Check one tensor message and add its samples to its stream's slot."""
        if msg.kind is not Kind.TENSOR:
            self.metrics.bad_message("not_tensor")
            return
        h, spec = msg.header, self.spec
        reason = None
        if h.rate != spec.rate:
            reason, text = "wrong_rate", (f"is {h.rate} Hz, model {spec.name} needs {spec.rate} Hz "
                                          f"(convert resamples: --rate {spec.rate})")
        elif h.channels != spec.channels:
            reason, text = "wrong_channels", (f"has {h.channels} channel(s), model {spec.name} needs "
                                              f"{spec.channels} (convert can downmix)")
        if reason:
            self.metrics.bad_message(reason)
            self.warn.warning(reason, f"skipping stream {h.stream}: its tensor {text}")
            return
        slot = self.slots.admit(h.stream, lambda: self._new_slot(msg))
        if slot is None:
            return
        self.metrics.frame_in(h.stream)
        dropped = slot.accept(msg, now.mono, now.wall_ns, self._serve_now)
        if dropped:
            self._shed(slot, dropped, "buffer_full")

    def _new_slot(self, msg: Audio) -> StreamSlot:
        h = msg.header
        slot = StreamSlot(h.stream, self.model, self.on, self.off, self.buffer_samples)
        epoch, seq, delay_ns = self.resume.pop(h.stream, (None, 0, None))
        if epoch == h.epoch:  # back after an idle flush in the same epoch: results keep counting,
            slot.result_seq, slot.delay_ns = seq, delay_ns  # and its late tensors are still late
        elif h.offset > 0:
            # Joining mid-epoch (this worker restarted): number results where a previous instance
            # would be, so consumers count the lost results as a gap; DISCONTINUITY lets them
            # accept a lower seq if the estimate is short.
            slot.result_seq = h.offset // self.spec.hop
            slot.next_flags = _DISC
        self.warn.log(logging.INFO, "first_tensor", f"stream {h.stream}: first tensor (epoch {h.epoch}, {h.rate} Hz)")
        return slot

    def _shed(self, slot: StreamSlot, windows: int, why: str) -> None:
        """``windows`` were dropped unclassified: count them; the next result reports them as lost."""
        self.metrics.drop("stale_window" if why == "stale" else "buffer_full", windows)
        text = (f"behind by more than {self.cfg.max_lag_ms:g} ms" if why == "stale"
                else f"more than {self.buffer_samples / self.spec.rate:.0f} s of audio waiting")
        self.warn.warning(why, f"stream {slot.stream}: {text}, dropped the oldest {windows} window(s)")
        slot.shed(windows, self.spec.hop)

    def shed_stale(self, now_ns: int) -> None:
        """Drop the late windows of every stream (see ``_shed_late``)."""
        if self.max_lag_ns <= 0:
            return
        for slot in self.slots.values():
            self._shed_late(slot, now_ns)

    def _shed_late(self, slot: StreamSlot, now_ns: int) -> None:
        """Drop every ready window of ``slot`` whose result would come too late (StreamSlot.lag_ns):
        after a stall the backlog arrives over several reads, and none of it may be served late."""
        if self.max_lag_ns <= 0:
            return
        hop = self.spec.hop
        hop_ns = hop * 1_000_000_000 // self.spec.rate
        w = slot.windows
        dropped = 0
        while (ready := w.ready_count()) and (lag := slot.lag_ns(now_ns)) > self.max_lag_ns:
            # at least one hop per pass; a big tensor's windows share one delivery time
            hops = min(max(1, (lag - self.max_lag_ns) // hop_ns), ready)
            dropped += w.skip(hops * hop)
        if dropped:
            self._shed(slot, dropped, "stale")

    # ---- timers ----------------------------------------------------------------------

    def tick(self, now: Now) -> list[bytes]:
        self.shed_stale(now.wall_ns)
        if now.mono - self._last_tick > STALL_S:
            # This process was not running (SIGSTOP, swapped out, a long model call): the input
            # has not caught up, so nobody can be judged idle until one idle period has passed.
            self._next_idle_check = max(self._next_idle_check, now.mono + self.cfg.idle_s)
        self._last_tick = now.mono
        if now.mono >= self._next_idle_check and not self._backlog:
            self._next_idle_check = now.mono + 1.0
            self.flush_idle(now.mono)
        if self.batch_due(now.mono):
            self.serve(now)
            self.first_ready = None
        out, self._out = self._out, []
        return out

    def wake_in(self, now: Now) -> float | None:
        """Until the waiting batch is due, else no deadline."""
        if self.first_ready is None:
            return None
        return max(0.0, self.first_ready + self.batch_wait_s - now.mono)

    def batch_due(self, now: float) -> bool:
        """Serve the ready windows now (``now``: time.monotonic())? Yes when no live stream is
        expected to complete a window before the wait ends, when a batch is full, when a stream
        ended, or when the first ready window has waited ``batch_wait_ms``.

        A stream's window is expected when its next tensors arrive, at its shortest recent gap
        between tensors (StreamSlot.cadence_s): streams in phase (one convert sending them in
        turn) are waited for, a stream whose window completes after the deadline is not.
        """
        waiting, missing = 0, False
        deadline = (self.first_ready if self.first_ready is not None else now) + self.batch_wait_s
        window = self.spec.window
        for slot in self.slots.values():
            if slot.ended:
                return True
            w = slot.windows
            if w.ready_count():
                waiting += 1
            elif not missing and now - slot.last_rx < LIVE_S and slot.last_samples > 0:
                tensors_needed = -(-(window - w.buffered) // slot.last_samples)
                missing = slot.last_rx + tensors_needed * slot.cadence_s() <= deadline
        if not waiting:
            self.first_ready = None
            return False
        if not missing or waiting >= self.spec.max_batch or self.batch_wait_s <= 0:
            return True
        if self.first_ready is None:
            self.first_ready = now
        return now - self.first_ready >= self.batch_wait_s

    def flush_idle(self, now: float) -> None:
        """Streams with no tensor for ``idle_s`` end like an END: their partial window is
        classified and their labels stop, so a vanished source does not leave "speech" on."""
        if self.cfg.idle_s <= 0:
            return
        for slot in self.slots.values():
            if not slot.ended and now - slot.last_rx > self.cfg.idle_s:
                slot.ended = True
                self.metrics.event("idle_flush")
                self.warn.log(logging.INFO, "idle", f"stream {slot.stream}: no tensor for "
                                                    f"{now - slot.last_rx:.0f} s, flushed")

    def finish(self, now: Now) -> list[bytes]:
        return []

    # ---- model and output ------------------------------------------------------------

    def serve(self, now: Now) -> int:
        """Every ready window through the model in batches across streams; returns results made."""
        served = 0
        max_batch = self.spec.max_batch
        # A stateless model may take several windows of one stream in a pass (a backlog);
        # a stateful one sees each stream's windows in order, one per pass.
        per_stream = 1 if self.spec.stateful else max_batch
        while True:
            ready = [slot for slot in self.slots.values() for _ in range(min(slot.windows.ready_count(), per_stream))]
            if not ready:
                return served + self._finish_ended(now)
            for i in range(0, len(ready), max_batch):
                part = ready[i : i + max_batch]
                served += self._run(part, [slot.windows.take() for slot in part], now)

    def _serve_now(self, slot: StreamSlot) -> None:
        """Classify one slot's ready windows right away (before a restart discards them)."""
        now = self._now
        self._shed_late(slot, now.wall_ns)  # a gap after a stall: its backlog is late, not good audio
        per_call = 1 if self.spec.stateful else self.spec.max_batch
        while slot.windows.ready_count():
            n = min(slot.windows.ready_count(), per_call)
            self._run([slot] * n, [slot.windows.take() for _ in range(n)], now)

    def _run(self, part: list[StreamSlot], wins: list[Window], now: Now, ends: list[int] | None = None) -> int:
        """One forward pass over ``wins`` (window i belongs to ``part[i]``); returns results made."""
        x = np.stack([w.samples for w in wins])  # (batch, channels, window)
        finite = np.isfinite(x)
        if not finite.all():  # a NaN would poison a recurrent state for good: zero it, count it
            self.metrics.event("nonfinite_samples", int(x.size - np.count_nonzero(finite)))
            x[~finite] = 0.0
        res = run_batch(self.model, x, [slot.state for slot in part])
        self.batches += 1
        self.model_cpu_s += res.cpu_s
        self.metrics.latency("model", res.cpu_s / max(len(wins), 1))
        for err in res.errors:
            self.metrics.drop("model_error")
            self.warn.warning("model_error", f"model {self.spec.name} raised on a window, skipped: {err}")
        made = 0
        if res.matrix is not None:  # the whole batch at once: a few numpy calls, not a few per window
            matrix = self._sane(res.matrix)
            scores_of: list = list(matrix)
            if self.top_k == 1:
                tops = matrix.argmax(axis=1)[:, None].tolist()
            else:
                tops = np.argsort(-matrix, axis=1, kind="stable")[:, : self.top_k].tolist()
            quiet = (~(matrix >= self.on).any(axis=1)).tolist()  # no label can start in this window
        else:  # some windows failed: each on its own
            scores_of = [None if sc is None else self._sane(sc) for sc in res.scores]
            tops = [None] * len(wins)
            quiet = [False] * len(wins)
        for j, (slot, win, scores, extra) in enumerate(zip(part, wins, scores_of, res.extras)):
            if scores is None:
                slot.shed(1, self.spec.hop)
                continue
            self._publish(slot, win, scores, extra, now, final_end_ns=ends[j] if ends else None, top=tops[j],
                          quiet=quiet[j])
            made += 1
        return made

    def _finish_ended(self, now: Now) -> int:
        """Streams that ended: classify the zero-padded partial window, stop what is on, forget them."""
        ended = [slot for slot in self.slots.values() if slot.ended]
        if not ended:
            return 0
        part, wins, ends = [], [], []
        made = 0
        for slot in ended:
            if slot.windows.buffered > 0:
                ends.append(slot.windows.pad_to_window())
                part.append(slot)
                wins.append(slot.windows.take())
            elif slot.last_anchor is not None:  # ended on a window boundary: still say so
                self._publish_stops(slot, now)
                made += 1
        made += self._run(part, wins, now, ends) if part else 0
        for slot in ended:
            if len(self.resume) >= MAX_RESUME:
                self.resume.pop(next(iter(self.resume)))
            self.resume[slot.stream] = (slot.epoch, slot.result_seq, slot.delay_ns)
            self.slots.pop(slot.stream)
        return made

    def _publish_stops(self, slot: StreamSlot, now: Now) -> None:
        """The stream ended exactly on a window boundary: one final result with no labels, whose
        events stop what is still on where the audio ended (consumers learn the stream ended)."""
        a = slot.last_anchor
        end_ns = a.t_capture_ns + a.frames * 1_000_000_000 // self.spec.rate
        win = Window(np.zeros((self.spec.channels, 0), np.float32), slot.windows.next_index, end_ns, end_ns,
                     a.seq, a.seq, a)
        self._publish(slot, win, None, {}, now, final_end_ns=end_ns)

    def _publish(self, slot: StreamSlot, win: Window, scores: np.ndarray | None, extra: dict, now: Now,
                 final_end_ns: int | None = None, top: list[int] | None = None, quiet: bool = False) -> None:
        """One Result. ``scores`` (labels,) already in [0, 1]; ``top``: their top-k indices, if known;
        ``quiet``: no score reaches an on threshold. ``final_end_ns``: the zero-padded last window of
        an ended stream; its span ends where the audio did, every label still on stops there, and
        it carries END."""
        spec = self.spec
        labels: list[Label] = []
        events = slot.pending_events
        slot.pending_events = []
        if scores is not None:
            if not (quiet and not slot.events.n_active):  # nothing on and nothing can start: no events
                events += slot.events.update(scores, win.start_ns)
            if top is None:
                top = np.argsort(-scores, kind="stable")[: self.top_k].tolist()
            labels = [Label(spec.labels[i], float(scores[i])) for i in top]
        flags = slot.next_flags
        if final_end_ns is not None:
            events += slot.events.reset(final_end_ns)
            flags |= _END
        hop_in = win.last.t_in_ns
        result = Result(
            stream=slot.stream, model=spec.name, epoch=slot.epoch, seq=slot.result_seq,
            start_ns=win.start_ns, end_ns=win.end_ns if final_end_ns is None else final_end_ns,
            offset=win.offset, rate=spec.rate, seq_first=win.seq_first, seq_last=win.seq_last,
            labels=labels, events=events, flags=flags, lost_ns=min(slot.lost * 1_000_000_000 // spec.rate, I64_MAX),
            level=_level(extra), final=final_end_ns is not None,
            trace=win.last.trace[-(MAX_TRACE_HOPS - 1):] + [Hop(STAGE, hop_in, time.time_ns())],
        )
        slot.next_flags = 0
        slot.lost = 0
        slot.result_seq += 1
        self.windows_done += 1
        self._out.append(encode(result))
        self.metrics.frame_out(slot.stream)

    def _sane(self, scores: np.ndarray) -> np.ndarray:
        """Scores as the wire wants them: finite, in [0, 1]; anything else is counted and mended."""
        if scores.min() >= 0.0 and scores.max() <= 1.0:  # False for NaN
            return scores
        self.metrics.event("scores_out_of_range")
        self.warn.warning("scores", f"model {self.spec.name} returned scores outside [0, 1] or not finite; "
                                    "clipped (a model's scores must be probabilities)")
        return np.clip(np.nan_to_num(scores, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)

    def summary(self) -> str:
        """``model=... windows=N batches=M model_cpu_ms_per_window=X`` for the log."""
        per_window = self.model_cpu_s / self.windows_done * 1e3 if self.windows_done else 0.0
        return (f"model={self.spec.name} windows={self.windows_done} batches={self.batches} "
                f"model_cpu_ms_per_window={per_window:.3f}")


def _level(extra: dict) -> Level | None:
    """A model's rms/peak/clipped extras as a typed Level (clamped to the wire's bounds)."""
    if "rms_dbfs" not in extra:
        return None

    def db(v: float) -> float:
        v = float(v)
        return min(max(v, -200.0), 20.0) if math.isfinite(v) else -200.0

    return Level(db(extra["rms_dbfs"]), db(extra.get("peak_dbfs", extra["rms_dbfs"])), int(extra.get("clipped", 0)))


def run(
    model: Model,
    cfg: WorkerConfig,
    inputs: Sequence[str],
    outputs: Sequence[str],
    sockopts: SocketOptions,
    metrics: StageMetrics,
    shard: tuple[int, int] = (0, 1),
    health_file=None,
    stop: StopFlag | None = None,
) -> ClassifyLogic:
    """Receive tensors, classify, publish results until stopped; returns the logic (for its stats)."""
    logic = ClassifyLogic(model, cfg, metrics)
    with Runtime(STAGE, metrics, stop, health_file) as rt:
        inbox = rt.inbox(inputs, shard_prefixes(Kind.TENSOR, *shard), sockopts)
        outbox = rt.outbox(outputs, sockopts)
        spec = model.spec
        log.info("ready model=%s rate=%d window=%d hop=%d shard=%d/%d inputs=%s outputs=%s", spec.name, spec.rate,
                 spec.window, spec.hop, *shard, ",".join(inputs), ",".join(outputs))
        rt.run(logic, inbox, outbox)
    return logic
