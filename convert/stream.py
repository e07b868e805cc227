"""One stream's conversion, from a raw message to the tensor chunks it completes, in one pass.

:class:`StreamConverter` owns everything one stream carries from one message to the next:
its sequence cursor (continuity), the input format it was built for, the streaming
resampler, the optional DC filter, the buffer that cuts resampler output into fixed-length
chunks, and the counters that give each output chunk its ``seq``, ``offset``,
``t_capture_ns``, ``flags`` and ``lost``. ``accept`` reads top to bottom:

    1. continuity: first message, next, gap, new epoch, publisher restart or stale
    2. follow it:  carry on; bridge a short gap with silence; or flush and restart
    3. samples:    stored PCM -> float32, channels mapped first, non-finite zeroed, clipped
    4. resample and cut into chunks
    5. END:        flush the resampler; the last chunk (maybe short) carries END

Timestamps come from sample counts only (no drift over hours)::

    t_capture_ns = anchor_t_ns + (samples since anchor) * 1e9 // rate     (integer arithmetic)

Every loss is carried downstream: a chunk after a gap, an overflow or a restart is flagged
(OVERFLOW / DISCONTINUITY) and its ``lost`` field says how many samples (at the output
rate) were missing, bridged or not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common.observe.metrics import StageMetrics
from common.runtime.streams import Continuity, SeqCursor
from common.wire.codec import Audio
from common.wire.messages import AudioHeader, Flag, Hop
from convert.formats import FLOAT_FORMATS, ChannelMap, select_float32, stored_samples
from convert.resample import StreamResampler

NS = 1_000_000_000
_END, _OVERFLOW, _DISC = int(Flag.END), int(Flag.OVERFLOW), int(Flag.DISCONTINUITY)


@dataclass(frozen=True)
class ConvertConfig:
    """What every output chunk looks like: ``rate`` Hz, channels mapped by ``channels``,
    ``chunk_samples`` per channel; ``gap_fill_ms``: gaps up to this long are bridged with silence."""

    rate: int = 16_000
    channels: ChannelMap = ChannelMap("mono")
    chunk_samples: int = 512
    quality: str = "HQ"
    gain_db: float = 0.0
    dc_remove: bool = False
    gap_fill_ms: float = 100.0

    @functools.cached_property
    def gain(self) -> float:
        """Linear gain factor (read for every message: computed once)."""
        return 10.0 ** (self.gain_db / 20.0)


class InputFormat(NamedTuple):
    """What a stream's raw chunks look like; a change mid-stream restarts its state."""

    format: str
    rate: int  # Hz
    channels: int
    layout: str


@dataclass
class OutChunk:
    """One tensor chunk: samples (channels, n) float32 C-contiguous, and where it sits."""

    samples: np.ndarray
    seq: int
    offset: int  # output samples since the epoch began
    t_capture_ns: int
    flags: int
    lost: int  # output samples missing just before this chunk
    epoch: int


class ChunkBuffer:
    """Cuts (n, K) or (n,) resampler output into planar (K, chunk_len) chunks."""

    def __init__(self, channels: int, chunk_len: int) -> None:
        self.channels, self.chunk_len = channels, chunk_len
        self.buf = np.empty((channels, 2 * chunk_len), dtype=np.float32)
        self.fill = 0

    def push(self, y: np.ndarray) -> list[np.ndarray]:
        """Append samples; return every complete chunk, each a new (K, chunk_len) array."""
        n = y.shape[0]
        if n == 0:
            return []
        if self.fill + n > self.buf.shape[1]:
            grown = np.empty((self.channels, 2 * (self.fill + n)), dtype=np.float32)
            grown[:, : self.fill] = self.buf[:, : self.fill]
            self.buf = grown
        dst = self.buf[:, self.fill : self.fill + n]
        if y.ndim == 1:
            dst[0] = y
        else:
            dst[...] = y.T  # (n, K) -> (K, n): the only transpose, on the smaller output side
        self.fill += n
        L, out, start = self.chunk_len, [], 0
        while self.fill - start >= L:
            out.append(self.buf[:, start : start + L].copy())
            start += L
        if start:
            rest = self.fill - start
            self.buf[:, :rest] = self.buf[:, start : self.fill]
            self.fill = rest
        if self.buf.shape[1] > 4 * L and self.fill <= L:  # give back what one large message grew
            self.buf = self.buf[:, : 2 * L].copy()
        return out

    def take_rest(self) -> np.ndarray | None:
        """The partial chunk left (K, fill), or None if empty; the buffer is emptied."""
        if self.fill == 0:
            return None
        rest = self.buf[:, : self.fill].copy()
        self.fill = 0
        return rest


class DCBlocker:
    """First-order DC-removal high-pass, y[n] = x[n] - x[n-1] + R y[n-1], state carried across chunks.

    scipy.signal.lfilter; cutoff ~ ``cutoff_hz``; R = exp(-2 pi fc / fs).
    """

    def __init__(self, rate: int, channels: int, cutoff_hz: float = 10.0) -> None:
        from scipy.signal import lfilter

        self._lfilter = lfilter
        r = math.exp(-2 * math.pi * cutoff_hz / rate)
        self.b = np.array([1.0, -1.0])
        self.a = np.array([1.0, -r])
        self.channels = channels
        self.reset()

    def reset(self) -> None:
        self.zi = np.zeros((1,) if self.channels == 1 else (1, self.channels))

    def process(self, x: np.ndarray) -> np.ndarray:
        """(n,) or (n, K) float32 -> same shape float32."""
        if x.shape[0] == 0:
            return x
        y, self.zi = self._lfilter(self.b, self.a, x, axis=0, zi=self.zi)
        return y.astype(np.float32)


class StreamConverter:
    """Everything convert keeps for one stream (see the module docstring)."""

    def __init__(self, stream: str, cfg: ConvertConfig, metrics: StageMetrics) -> None:
        self.stream, self.cfg, self.metrics = stream, cfg, metrics
        self.cursor = SeqCursor()
        self.epoch: int | None = None
        self.fmt: InputFormat | None = None
        self.resampler: StreamResampler | None = None
        self.dc: DCBlocker | None = None
        self.chunks: ChunkBuffer | None = None
        self.seq = 0  # seq of the next output chunk (continues across restarts within an epoch)
        self.next_in_offset = 0  # input offset expected next
        self.last_in_samples = 0
        self.ended = False  # END seen, or flushed while idle: the next message restarts
        self.source = ""
        self.trace: list[Hop] = []  # the newest input's trace (output chunks extend it)
        self.last_rx = 0.0  # time.monotonic() of the newest input
        self._restart(0, 0, 0, 0)

    # -- 1-5: one raw message ------------------------------------------------------------

    def accept(self, msg: Audio, now_mono: float, x: np.ndarray | None = None) -> list[OutChunk]:
        """The output chunks this raw message completes (maybe none).

        ``x``: the message's samples already through :func:`select_float32` (ConvertLogic
        converts a wake-up's messages of one format in one numpy pass), or None to convert here.
        """
        h = msg.header
        cont, missing = self.cursor.check(h.epoch, h.seq, bool(h.flags & _DISC))
        if cont is Continuity.STALE:
            self.metrics.drop("stale_seq")
            return []
        if missing:
            self.metrics.gap(self.stream, missing)
        self.last_rx = now_mono
        out: list[OutChunk] = []
        self._follow(h, cont, missing, out)
        x = self._float32(msg) if x is None else self._finite(x, h.format)
        if h.flags & _OVERFLOW:
            self._mark(_OVERFLOW, 0)
            self.metrics.event("input_overflow")
        out += self._push(x)
        self.next_in_offset = h.offset + h.samples
        self.last_in_samples = h.samples
        self.source, self.trace = h.source, h.trace
        if h.flags & _END:
            out += self.flush(_END)
            self.metrics.event("end")
        return out

    def _follow(self, h: AudioHeader, cont: Continuity, missing: int, out: list[OutChunk]) -> None:
        """Decide how this message continues the stream; restart or bridge as needed."""
        fmt = InputFormat(h.format, h.rate, h.channels, h.layout)
        disc = bool(h.flags & _DISC)
        if cont is Continuity.NEXT and fmt == self.fmt and not self.ended and not disc \
                and h.offset == self.next_in_offset and not h.lost:
            return  # the common case
        if cont is Continuity.FIRST:
            self.epoch = h.epoch
            self._start(h, fmt, clean=h.seq == 0 and h.offset == 0)
            if not (h.seq == 0 and h.offset == 0):  # joining mid-epoch (this converter restarted)
                self.seq = self.anchor_offset // self.cfg.chunk_samples
            self.metrics.event("stream_start")
            return
        if cont is Continuity.NEW_EPOCH:
            clean = self.ended and h.seq == 0 and h.offset == 0  # the old epoch ended properly
            self.metrics.event("epoch_change")
            if not self.ended:
                out += self.flush(_END)
            self.epoch, self.seq = h.epoch, 0
            self._start(h, fmt, clean=clean)
            return
        gap = self._gap_samples(h, cont, missing)
        lost_out = self._out_samples(gap + h.lost, h.rate)
        if fmt != self.fmt:
            self.metrics.event("reset_format")
            out += self.flush()
            self._reanchor(h, fmt, lost_out)
            return
        if self.ended:
            self.metrics.event("reset_restart")
            self._reanchor(h, fmt, lost_out)
            return
        if gap == 0 and not disc:
            if h.lost:
                self._mark(_DISC, lost_out)
            return
        if 0 < gap <= self.cfg.gap_fill_ms * h.rate / 1000 and not disc:
            self.metrics.event("bridged")
            self.metrics.event("bridged_samples", gap)
            self._mark(_DISC, lost_out)
            out += self._push(self._silence(gap))
            return
        self.metrics.event("reset_gap" if gap else "reset_input_discontinuity")
        out += self.flush()
        self._reanchor(h, fmt, lost_out)

    def _gap_samples(self, h: AudioHeader, cont: Continuity, missing: int) -> int:
        """Input samples missing before ``h``: from offsets where the source keeps them, else from seq."""
        if h.offset > self.next_in_offset:
            return h.offset - self.next_in_offset
        if cont is Continuity.GAP:
            return missing * self.last_in_samples
        return 0

    def _float32(self, msg: Audio) -> np.ndarray:
        """Stored PCM -> float32 (n,) or (n, K), channels mapped, finite and within full scale."""
        h = msg.header
        stored = stored_samples(msg.payload, h.format, h.channels, h.samples, h.layout)
        return self._finite(select_float32(stored, h.format, h.layout, self.cfg.channels, self.cfg.gain), h.format)

    def _finite(self, x: np.ndarray, fmt: str) -> np.ndarray:
        """Only float input or a gain can leave full scale or be non-finite: zeroed, clipped, counted."""
        return self._clip(x) if fmt in FLOAT_FORMATS or self.cfg.gain > 1.0 else x

    def _clip(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0 or np.max(np.abs(x)) <= 1.0:  # False for NaN: falls through
            return x
        finite = np.isfinite(x)
        if not finite.all():
            self.metrics.event("nonfinite_samples", int(x.size - np.count_nonzero(finite)))
            x = np.where(finite, x, np.float32(0.0))
        over = int(np.count_nonzero(np.abs(x) > 1.0))
        if over:
            self.metrics.event("clipped_samples", over)
        return np.clip(x, -1.0, 1.0).astype(np.float32, copy=False)

    # -- state -----------------------------------------------------------------------------

    def _start(self, h: AudioHeader, fmt: InputFormat, clean: bool) -> None:
        """Fresh filters for ``fmt``, anchored at ``h`` (flagged DISCONTINUITY unless a clean start)."""
        self._build(fmt)
        self._restart(h.t_capture_ns, self._out_samples(h.offset, h.rate), 0 if clean else _DISC,
                      self._out_samples(h.lost, h.rate))

    def _reanchor(self, h: AudioHeader, fmt: InputFormat, lost_out: int) -> None:
        """Restart at ``h`` within the epoch: output offset from its input offset, never backwards."""
        if fmt != self.fmt:
            self._build(fmt)
        off = max(self._out_samples(h.offset, h.rate), self.out_offset)
        self._restart(h.t_capture_ns, off, _DISC, lost_out)

    def _build(self, fmt: InputFormat) -> None:
        self.fmt = fmt
        n_out = self.cfg.channels.out_channels(fmt.channels)
        self.out_channels = n_out
        self.resampler = StreamResampler(fmt.rate, self.cfg.rate, n_out, self.cfg.quality)
        self.dc = DCBlocker(fmt.rate, n_out) if self.cfg.dc_remove else None
        self.chunks = ChunkBuffer(n_out, self.cfg.chunk_samples)

    def _restart(self, t_ns: int, out_offset: int, flags: int, lost: int) -> None:
        if self.resampler is not None:
            self.resampler.reset()
            if self.dc is not None:
                self.dc.reset()
            self.chunks.fill = 0
        self.anchor_t_ns, self.anchor_offset, self.produced = t_ns, out_offset, 0
        self.ended = False
        # (output offset, flags, lost): they go on the chunk holding that sample (or the next one)
        self.pending: list[tuple[int, int, int]] = [(out_offset, flags, lost)] if flags or lost else []

    def _mark(self, flags: int, lost: int) -> None:
        """Flag the output chunk that will hold the next input sample pushed."""
        r = self.resampler
        self.pending.append((self.anchor_offset + (r.samples_in * r.out_rate) // r.in_rate, flags, lost))

    def _out_samples(self, n_in: int, in_rate: int) -> int:
        return (n_in * self.cfg.rate) // in_rate

    @property
    def out_offset(self) -> int:
        """Output offset of the next chunk to be published (buffered samples not counted)."""
        return self.anchor_offset + self.produced

    def _silence(self, n: int) -> np.ndarray:
        return np.zeros((n,) if self.out_channels == 1 else (n, self.out_channels), dtype=np.float32)

    # -- 4-5: resample, cut, flush ---------------------------------------------------------

    def _push(self, x: np.ndarray) -> list[OutChunk]:
        if self.dc is not None:
            x = self.dc.process(x)
        return self._number(self.chunks.push(self.resampler.process(x)))

    def flush(self, flags: int = 0) -> list[OutChunk]:
        """End of a signal: the resampler's tail and the partial chunk (maybe short); ``flags``
        (END) go on the last chunk. The next message restarts the stream."""
        if self.ended or self.resampler is None:
            return []
        out = self._number(self.chunks.push(self.resampler.flush()))
        rest = self.chunks.take_rest()
        if rest is not None:
            out += self._number([rest])
        if out:
            for _, f, lost in self.pending:  # marks past the end of the signal land on its last chunk
                flags |= f
                out[-1].lost += lost
            out[-1].flags |= flags
        self.pending = []
        self.ended = True
        return out

    def _number(self, blocks: list[np.ndarray]) -> list[OutChunk]:
        out = []
        for b in blocks:
            off = self.anchor_offset + self.produced
            t = self.anchor_t_ns + (self.produced * NS) // self.cfg.rate
            flags = lost = 0
            if self.pending:
                end = off + b.shape[1]
                keep = []
                for mark in self.pending:
                    if mark[0] < end:
                        flags |= mark[1]
                        lost += mark[2]
                    else:
                        keep.append(mark)
                self.pending = keep
            out.append(OutChunk(b, self.seq, off, t, flags, lost, self.epoch))
            self.seq += 1
            self.produced += b.shape[1]
        return out
