"""The convert stage: raw PCM frames in, float32 (channels, frames) tensors at the model's rate out.

:class:`Converter` is the whole per-message logic with no sockets (tests and the
benchmark drive it directly); :func:`run` wraps it in the receive/send loop.

Continuity rules, per stream (counted in StageMetrics ``events``):
- first message, or a new epoch: a fresh StreamState (the old epoch's tail is flushed
  and published first, its last frame flagged END);
- a gap (sequence jump or input offset jump) of at most ``gap_fill_ms``: bridged with
  silence, state kept, next frame flagged DISCONTINUITY ("bridged");
- a longer gap, an input DISCONTINUITY, or a format/rate/channel/layout change: the old
  state's tail is flushed, state reset and re-anchored, next frame flagged DISCONTINUITY;
- END: the resampler is flushed with last=True; the last frame (possibly short) carries END.
Messages that convert cannot use (rate out of bounds, channel selection past the
stream's channels, ...) are rejected and counted *before* any state is touched, so they
never disturb a valid stream with the same id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import zmq

from common.metrics import StageMetrics
from common.protocol import Flag, Header, Kind, Message, encode_header, shard_prefixes, topic_for, with_hop
from common.publisher import Publisher
from common.sockets import SocketOptions, open_sub
from common.stage import Continuity, RateLimitedLog, Receiver, SequenceTracker, StopFlag
from convert.formats import FLOAT_FORMATS, ChannelMap, FormatError, select_float32, stored_samples
from convert.resample import rate_supported
from convert.stream import InputFormat, OutFrame, StreamState

log = logging.getLogger("convert")

STAGE = "convert"
_END, _OVERFLOW, _DISCONTINUITY = int(Flag.END), int(Flag.OVERFLOW), int(Flag.DISCONTINUITY)
_FLAGS = [Flag(i) for i in range(8)]  # int bits -> Flag, without an enum call per frame
DEFAULT_RATE = 16_000
DEFAULT_FRAME_MS = 32.0  # 512 samples at 16 kHz: silero-vad's chunk


@dataclass(frozen=True)
class ConvertConfig:
    """What every output frame looks like. ``frame_samples`` per channel at ``rate`` Hz."""

    rate: int = DEFAULT_RATE
    channels: ChannelMap = ChannelMap("mono")
    frame_samples: int = 512
    quality: str = "HQ"
    gain_db: float = 0.0
    dc_remove: bool = False
    gap_fill_ms: float = 100.0  # bridge gaps up to this long with silence; longer ones reset

    @property
    def gain(self) -> float:
        """Linear gain factor."""
        return 10.0 ** (self.gain_db / 20.0)


class Converter:
    """Per-stream conversion of validated raw messages into encoded tensor messages."""

    def __init__(self, cfg: ConvertConfig, metrics: StageMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.tracker = SequenceTracker(metrics)
        self.states: dict[str, StreamState] = {}
        self.gain = cfg.gain
        self._may_clip_int = self.gain > 1.0
        self._badlog = RateLimitedLog(log)
        self._rate_ok: dict[int, bool] = {}  # input rate -> supported (checked once per rate)

    # -- entry point -------------------------------------------------------------------
    def handle(self, msg: Message, t_in_ns: int) -> list[list]:
        """One raw message -> the encoded tensor messages it completes (maybe none)."""
        h = msg.header
        if h.kind is not Kind.RAW:
            return self._reject("not_raw", f"kind {h.kind.value} on a raw input")
        ok = self._rate_ok.get(h.rate)
        if ok is None:
            ok = self._rate_ok[h.rate] = rate_supported(h.rate, self.cfg.rate, self.cfg.quality)
        if not ok:
            return self._reject("rate_unsupported", f"stream {h.stream}: {h.rate} Hz -> {self.cfg.rate} Hz")
        try:
            self.cfg.channels.check(h.channels)
            stored = stored_samples(msg.payload, h.format, h.channels, h.frames, h.layout)
        except FormatError as e:
            return self._reject(e.reason, f"stream {h.stream}: {e}")

        cont, missing = self.tracker.check(h.stream, h.epoch, h.seq, bool(h.flags & Flag.DISCONTINUITY))
        if cont is Continuity.STALE:
            return []
        self.metrics.frame_in(h.stream)
        out: list[tuple[StreamState, OutFrame]] = []
        st = self._state_for(h, cont, missing, out)

        x = select_float32(stored, h.format, h.layout, self.cfg.channels, self.gain)
        if h.format in FLOAT_FORMATS or self._may_clip_int:
            x = self._clip(x)
        flags = int(h.flags)  # plain int: enum arithmetic costs microseconds per frame
        if flags & _OVERFLOW:
            st.mark(_OVERFLOW)
            self.metrics.event("input_overflow")
        for f in st.push(x):
            out.append((st, f))
        st.next_in_offset = h.offset + h.frames
        st.last_in_frames = h.frames
        st.last_header = h
        if flags & _END:
            out += [(st, f) for f in st.flush(_END)]
            st.ended = True
            self.metrics.event("end")
        return self._encode(out, t_in_ns)

    # -- continuity ----------------------------------------------------------------------
    def _state_for(self, h: Header, cont: Continuity, missing: int, out: list) -> StreamState:
        st = self.states.get(h.stream)
        if st is not None and cont is Continuity.NEXT and not st.ended and not st.flushed:
            # the common case, decided without building anything
            if (st.fmt.format == h.format and st.fmt.rate == h.rate and st.fmt.channels == h.channels
                    and st.fmt.layout == h.layout and h.offset <= st.next_in_offset
                    and not int(h.flags) & _DISCONTINUITY):
                return st
        fmt = InputFormat(h.format, h.rate, h.channels, h.layout)
        if st is None or cont is Continuity.FIRST:
            clean = h.seq == 0 and h.offset == 0
            return self._new_state(h, fmt, Flag.NONE if clean else Flag.DISCONTINUITY)
        if cont is Continuity.NEW_EPOCH or st.epoch != h.epoch:
            if not st.ended:
                out += [(st, f) for f in st.flush(Flag.END)]
            clean = st.ended and h.seq == 0 and h.offset == 0
            return self._new_state(h, fmt, Flag.NONE if clean else Flag.DISCONTINUITY)
        if fmt != st.fmt:
            self.metrics.event("reset_format")
            log.info("stream %s: format changed %s -> %s; state reset", h.stream, st.fmt, fmt)
            out += [(st, f) for f in st.flush()]
            return self._new_state(h, fmt, Flag.DISCONTINUITY, continue_from=st)
        if st.ended or st.flushed:
            self.metrics.event("reset_restart")
            self._reanchor(st, h)
            return st
        gap = self._gap_samples(st, h, cont, missing)
        if gap == 0 and not h.flags & Flag.DISCONTINUITY:
            return st
        if 0 < gap <= self.cfg.gap_fill_ms * h.rate / 1000 and not h.flags & Flag.DISCONTINUITY:
            self.metrics.event("bridged")
            self.metrics.event("bridged_samples", gap)
            st.mark(Flag.DISCONTINUITY)
            out += [(st, f) for f in st.push_silence(gap)]
            return st
        self.metrics.event("reset_gap" if gap else "reset_input_discontinuity")
        out += [(st, f) for f in st.flush()]
        self._reanchor(st, h)
        return st

    @staticmethod
    def _gap_samples(st: StreamState, h: Header, cont: Continuity, missing: int) -> int:
        """Input samples missing before ``h``: from offsets when the source fills them, else from seq."""
        if h.offset > st.next_in_offset:
            return h.offset - st.next_in_offset
        if cont is Continuity.GAP:
            return missing * st.last_in_frames
        return 0

    def _new_state(self, h: Header, fmt: InputFormat, flags: Flag, continue_from: StreamState | None = None) -> StreamState:
        n_out = self.cfg.channels.out_channels(fmt.channels)
        st = StreamState(
            h.stream, h.epoch, fmt, self.cfg.rate, n_out, self.cfg.frame_samples, self.cfg.quality, self.cfg.dc_remove
        )
        if continue_from is not None:
            st.seq = continue_from.seq
            st.next_in_offset = continue_from.next_in_offset
            self._reanchor(st, h, floor=continue_from.out_offset)
        else:
            st.reset(h.t_capture_ns, (h.offset * self.cfg.rate) // h.rate, flags)
            # Joining mid-epoch (e.g. this converter restarted): continue seq where a previous
            # instance would be (output samples / frame length), so downstream counts the frames lost
            # while no converter ran as a gap of the right size. The first frame is flagged
            # DISCONTINUITY, which lets a consumer accept the seq even if short frames made the
            # estimate low (common.stage.SequenceTracker). A clean start is still 0, 1, 2, ...
            st.seq = st.anchor_offset // self.cfg.frame_samples
        st.set_start_flags(flags)
        st.last_header = h
        self.states[h.stream] = st
        if continue_from is None:
            self.metrics.event("stream_start")
        return st

    def _reanchor(self, st: StreamState, h: Header, floor: int | None = None) -> None:
        """Restart ``st`` at ``h``: time from its capture time, offset from its input offset."""
        off = max((h.offset * self.cfg.rate) // h.rate, st.out_offset if floor is None else floor)
        st.reset(h.t_capture_ns, off, Flag.DISCONTINUITY)
        st.ended = st.flushed = False

    # -- housekeeping ----------------------------------------------------------------------
    def flush_idle(self, idle_s: float, t_in_ns: int, evict_s: float = 60.0) -> list[list]:
        """Publish the tails of streams silent for ``idle_s`` seconds (their next frame resets).

        States of streams silent for ``evict_s`` seconds are dropped, so streams that come and
        go do not hold resamplers forever; one that returns starts as if joining mid-epoch.
        """
        out = []
        for name in self.tracker.silent_streams(idle_s):
            st = self.states.get(name)
            if st is None or st.ended or st.flushed:
                continue
            out += [(st, f) for f in st.flush()]
            st.flushed = True
            self.metrics.event("idle_flush")
        msgs = self._encode(out, t_in_ns)
        for name in self.tracker.silent_streams(evict_s):
            st = self.states.get(name)
            if st is not None and (st.ended or st.flushed):
                del self.states[name]
                self.metrics.event("stream_evicted")
        return msgs

    def _clip(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0 or np.max(np.abs(x)) <= 1.0:  # False for NaN: falls through
            return x
        bad = ~(np.abs(x) <= 1.0)  # beyond full scale, or NaN (replaced by 0)
        self.metrics.event("clipped_samples", int(np.count_nonzero(bad)))
        return np.clip(np.nan_to_num(x, nan=0.0), -1.0, 1.0)

    def _reject(self, reason: str, detail: str) -> list:
        self.metrics.bad_message(reason)
        self._badlog.warning(reason, f"rejected message: {reason}: {detail}")
        return []

    def _encode(self, frames: list[tuple[StreamState, OutFrame]], t_in_ns: int) -> list[list]:
        msgs = []
        t_out = time.time_ns()
        for st, f in frames:
            src = st.last_header
            h = st.out_header
            if h is None:  # built once per state; only the per-frame fields change below
                h = st.out_header = Header(
                    kind=Kind.TENSOR, stream=st.stream, epoch=st.epoch, seq=0, t_capture_ns=0, rate=self.cfg.rate,
                    channels=st.out_channels, format="f32", layout="planar",
                )
                st.out_topic = h.topic()
            h.seq = f.seq
            h.t_capture_ns = f.t_capture_ns
            h.frames = f.samples.shape[1]
            h.offset = f.offset
            h.flags = _FLAGS[f.flags]
            h.source = src.source
            h.trace = with_hop(src, STAGE, t_in_ns, t_out)
            msgs.append([st.out_topic, encode_header(h), memoryview(f.samples).cast("B")])
            self.metrics.frame_out(st.stream)
        return msgs


def run(
    cfg: ConvertConfig,
    inputs: Sequence[str],
    outputs: Sequence[str],
    opts: SocketOptions,
    metrics: StageMetrics,
    shard: tuple[int, int] | None = None,
    idle_flush_s: float = 2.0,
    stop: StopFlag | None = None,
) -> int:
    """Receive raw frames on ``inputs``, publish tensors on ``outputs`` until stopped."""
    stop = stop if stop is not None else StopFlag()
    prefixes = shard_prefixes(Kind.RAW, *shard) if shard else [topic_for(Kind.RAW)]
    ctx = zmq.Context()
    sub = pub = receiver = None
    conv = Converter(cfg, metrics)
    try:
        sub = open_sub(ctx, inputs, prefixes, opts)
        pub = Publisher(ctx, outputs, opts)
        receiver = Receiver([sub], metrics)
        log.info(
            "ready: %s -> %s, %d Hz, channels=%s, frame %d samples, quality %s%s",
            ",".join(inputs), ",".join(outputs), cfg.rate, _cmap_text(cfg.channels), cfg.frame_samples, cfg.quality,
            f", shard {shard[0]}/{shard[1]}" if shard else "",
        )
        last_idle_check = time.monotonic()
        while not stop:
            msg = receiver.recv(100)
            now = time.monotonic()
            if msg is not None:
                try:
                    outs = conv.handle(msg, time.time_ns())
                except Exception:  # a bug must cost one stream a reset, not the whole stage
                    log.exception("stream %s: conversion failed; its state is dropped", msg.header.stream)
                    metrics.bad_message("convert_error")
                    conv.states.pop(msg.header.stream, None)
                    outs = []
                for frames in outs:
                    if not pub.send(frames):
                        metrics.drop("send_queue_full")
            else:
                pub.poll_subscriptions()  # so "subscriber joined" shows while idle
            if now - last_idle_check >= 0.5:
                last_idle_check = now
                for frames in conv.flush_idle(idle_flush_s, time.time_ns()):
                    if not pub.send(frames):
                        metrics.drop("send_queue_full")
            if now - metrics._last_summary >= metrics.summary_every_s:
                metrics.maybe_log_summary(events_text(metrics))
    finally:
        log.info("%s", metrics.summary() + " " + events_text(metrics))
        if receiver is not None:
            receiver.close()  # its socket monitors, or ctx.term() waits forever
        for s in (sub, pub):
            if s is not None:
                s.close()
        ctx.term()
    return 0


def events_text(metrics: StageMetrics) -> str:
    """'events=a=1,b=2' for the summary line (tests parse it)."""
    return "events=" + (",".join(f"{k}={v}" for k, v in sorted(metrics.events.items())) or "0")


def _cmap_text(c: ChannelMap) -> str:
    return c.mode if c.mode != "select" else ",".join(map(str, c.indices))
