"""The convert stage: raw PCM chunks in, float32 (channels, samples) tensors at the model's rate out.

:class:`ConvertLogic` is the stage's whole logic with no sockets (tests drive it with
messages and clock values); :func:`run` puts it on the shared runtime (common.runtime.stage).

One wake-up's batch, in order:

    for each raw message:  checks that need no state (rate, channels, output size) -> reject, counted
    for each format group: stored PCM -> float32, channels mapped: one numpy pass (_samples)
    for each raw message:  its stream's StreamConverter (bounded table) -> accept -> tensor chunks
    encode every chunk (header, trace + this hop); the runtime sends them as one burst

Messages convert cannot use are rejected and counted *before* any state is touched, so
they never disturb a valid stream with the same id. Streams silent for ``idle_flush_s``
have their buffered tail published (the next message restarts them); finished streams are
forgotten after ``evict_s`` or when the table needs room.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.stage import Now, Runtime, StopFlag
from common.runtime.streams import DEFAULT_MAX_STREAMS, StreamTable
from common.transport.sockets import SocketOptions
from common.wire.codec import Audio, encode_audio
from common.wire.messages import I64_MAX, MAX_PAYLOAD_BYTES, MAX_TRACE_HOPS, AudioHeader, Hop, Layout, SampleFormat
from common.wire.topics import Kind, shard_prefixes
from convert.formats import SAMPLE_FORMATS, FormatError, select_float32_rows
from convert.resample import MAX_RATE_HZ, MAX_RATIO, MIN_RATE_HZ, rate_supported
from convert.stream import ConvertConfig, OutChunk, StreamConverter

log = logging.getLogger("convert")

STAGE = "convert"
DEFAULT_RATE = 16_000
DEFAULT_CHUNK_MS = 32.0  # 512 samples at 16 kHz: silero-vad's window
# A capture process sends every stream's frame in one burst (~1 ms for 80 streams); gathering
# 2 ms makes it one batch instead of ~25 wake-ups, and convert's output one burst for classify
# (80 streams: convert 122 -> 104 us per frame, classify 260 -> 210 us per window, p99 lower).
DEFAULT_GATHER_MS = 2.0


@dataclass(frozen=True)
class StageOptions:
    """Housekeeping: ``idle_flush_s`` publish a silent stream's tail; ``evict_s`` forget a flushed
    stream; ``max_streams`` streams held at once."""

    idle_flush_s: float = 2.0
    evict_s: float = 60.0
    max_streams: int = DEFAULT_MAX_STREAMS


class ConvertLogic:
    """Raw messages -> encoded tensor messages, per stream (see the module docstring)."""

    def __init__(self, cfg: ConvertConfig, metrics: StageMetrics, opts: StageOptions = StageOptions()) -> None:
        self.cfg, self.metrics, self.opts = cfg, metrics, opts
        self.streams: StreamTable[StreamConverter] = StreamTable(
            opts.max_streams, metrics, "streams", finished=lambda s: s.ended)
        self._rate_ok: dict[int, bool] = {}  # input rate -> supported (bounded: rates are bounded ints)
        self._badlog = RateLimitedLog(log)
        self._next_idle_check = 0.0

    # -- the batch -------------------------------------------------------------------------

    def handle(self, batch: list[Audio], now: Now) -> list[bytes]:
        usable: list[Audio] = []
        for msg in batch:
            if msg.kind is not Kind.RAW:
                self._reject("not_raw", f"kind {msg.kind.value} on a raw input")
                continue
            problem = self._unusable(msg.header)
            if problem:
                self._reject(*problem)
                continue
            usable.append(msg)
        out: list[bytes] = []
        for msg, x in zip(usable, self._samples(usable)):
            h = msg.header
            conv = self.streams.admit(h.stream, lambda: StreamConverter(h.stream, self.cfg, self.metrics))
            if conv is None:
                continue
            try:
                chunks = conv.accept(msg, now.mono, x)
            except FormatError as e:  # cannot happen after _unusable; kept as a guard
                self._reject(e.reason, f"stream {h.stream}: {e}")
                continue
            except Exception:  # a bug must cost one stream its state, not the whole stage
                log.exception("stream %s: conversion failed; its state is dropped", h.stream)
                self.metrics.bad_message("convert_error")
                self.streams.pop(h.stream)
                continue
            self.metrics.frame_in(h.stream)
            out += self._encode(conv, chunks, now.wall_ns)
        return out

    def _samples(self, msgs: list[Audio]) -> list[np.ndarray | None]:
        """Every message's float32 samples, converted in one numpy pass per shape (format,
        channels, samples) shared by two or more interleaved messages; None for the rest (the
        stream converts those itself). 64 streams' 20 ms frames: one pass instead of 64."""
        groups: dict[tuple[str, int, int], list[int]] = {}
        for i, m in enumerate(msgs):
            h = m.header
            if (h.layout == "interleaved" or h.channels == 1) and len(m.payload) == h.samples * h.channels * \
                    SAMPLE_FORMATS[h.format][1]:
                groups.setdefault((h.format, h.channels, h.samples), []).append(i)
        xs: list[np.ndarray | None] = [None] * len(msgs)
        for (fmt, channels, samples), idx in groups.items():
            if len(idx) < 2 or samples == 0:
                continue
            try:
                rows = select_float32_rows([msgs[i].payload for i in idx], fmt, channels, samples,
                                           self.cfg.channels, self.cfg.gain)
            except Exception:  # noqa: BLE001 - each message then converts alone, and fails alone
                continue
            for i, row in zip(idx, rows):
                xs[i] = row
        return xs

    def _unusable(self, h: AudioHeader) -> tuple[str, str] | None:
        """Why convert cannot use this message (reason, detail), or None; touches no state."""
        ok = self._rate_ok.get(h.rate)
        if ok is None:
            ok = self._rate_ok[h.rate] = rate_supported(h.rate, self.cfg.rate, self.cfg.quality)
        if not ok:
            return "rate_unsupported", (f"stream {h.stream}: {h.rate} Hz cannot be converted to {self.cfg.rate} Hz "
                                        f"(convert takes {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz, at most {MAX_RATIO}x up or "
                                        "down, and LD needs a short exact filter)")
        cmap = self.cfg.channels
        if cmap.mode == "select" and max(cmap.indices) >= h.channels:
            return "channel_select", f"stream {h.stream}: channel {max(cmap.indices)} selected, it has {h.channels}"
        out_bytes = cmap.out_channels(h.channels) * self.cfg.chunk_samples * 4
        if out_bytes > MAX_PAYLOAD_BYTES:
            return "chunk_too_large", (f"stream {h.stream}: {cmap.out_channels(h.channels)} channels x "
                                       f"{self.cfg.chunk_samples} samples would be over {MAX_PAYLOAD_BYTES} bytes")
        return None

    def _encode(self, conv: StreamConverter, chunks: list[OutChunk], t_in_ns: int) -> list[bytes]:
        if not chunks:
            return []
        out = []
        trace = conv.trace[-(MAX_TRACE_HOPS - 1):] + [Hop(STAGE, t_in_ns, time.time_ns())]
        for c in chunks:
            h = AudioHeader(
                stream=conv.stream, epoch=c.epoch, seq=c.seq, t_capture_ns=c.t_capture_ns, rate=self.cfg.rate,
                channels=c.samples.shape[0], format=SampleFormat.F32, layout=Layout.PLANAR,
                samples=c.samples.shape[1], offset=c.offset, flags=c.flags, lost=min(c.lost, I64_MAX), source=conv.source,
                trace=trace,
            )
            out.append(encode_audio(Kind.TENSOR, h, memoryview(c.samples).cast("B")))
        self.metrics.frame_out(conv.stream, len(chunks))
        return out

    def _reject(self, reason: str, detail: str) -> None:
        self.metrics.bad_message(reason)
        self._badlog.warning(reason, f"rejected message: {reason}: {detail}")

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now: Now) -> list[bytes]:
        """Twice a second: publish the tails of streams silent for ``idle_flush_s``; forget
        streams flushed ``evict_s`` ago."""
        if now.mono < self._next_idle_check:
            return []
        self._next_idle_check = now.mono + 0.5
        out: list[bytes] = []
        for name, conv in self.streams.items():
            silent = now.mono - conv.last_rx
            if not conv.ended and silent >= self.opts.idle_flush_s:
                out += self._encode(conv, conv.flush(), now.wall_ns)
                self.metrics.event("idle_flush")
            elif conv.ended and silent >= self.opts.evict_s:
                self.streams.pop(name)
                self.metrics.event("stream_evicted")
        return out

    def wake_in(self, now: Now) -> float | None:
        return None  # the runtime's idle wake-up (0.1 s) is often enough for tick

    def finish(self, now: Now) -> list[bytes]:
        return []  # at stop, buffered tails are dropped: the stream did not end

    def summary(self) -> str:
        return "events=" + (",".join(f"{k}={v}" for k, v in sorted(self.metrics.events.items())) or "0")


def run(
    cfg: ConvertConfig,
    inputs: Sequence[str],
    outputs: Sequence[str],
    sockopts: SocketOptions,
    metrics: StageMetrics,
    opts: StageOptions = StageOptions(),
    shard: tuple[int, int] | None = None,
    gather_ms: float = DEFAULT_GATHER_MS,
    health_file=None,
    stop: StopFlag | None = None,
) -> int:
    """Receive raw chunks on ``inputs``, publish tensors on ``outputs`` until stopped."""
    prefixes = shard_prefixes(Kind.RAW, *shard) if shard else [b"raw/"]
    logic = ConvertLogic(cfg, metrics, opts)
    if cfg.quality == "LD":  # scipy's import and the filter design (~1.5 s) before ready, not on the first stream
        from convert.lowdelay import design, supported

        for common_rate in (48_000, 44_100, 32_000, 16_000, 8_000):
            if common_rate != cfg.rate and supported(common_rate, cfg.rate):
                design(common_rate, cfg.rate)
    with Runtime(STAGE, metrics, stop, health_file) as rt:
        inbox = rt.inbox(inputs, prefixes, sockopts)
        outbox = rt.outbox(outputs, sockopts)
        cmap = cfg.channels
        log.info(
            "ready: %s -> %s, %d Hz, channels=%s, chunk %d samples, quality %s%s",
            ",".join(inputs), ",".join(outputs), cfg.rate,
            cmap.mode if cmap.mode != "select" else ",".join(map(str, cmap.indices)), cfg.chunk_samples,
            cfg.quality, f", shard {shard[0]}/{shard[1]}" if shard else "",
        )
        rt.run(logic, inbox, outbox, gather_s=gather_ms / 1000)
    return 0
