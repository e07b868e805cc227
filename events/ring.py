"""The newest audio of one stream, by sample index, so a clip can be cut after its event ended.

An :class:`AudioRing` keeps the last ``capacity`` samples (per channel) of one stream in
one preallocated circular array, with an anchor per received chunk (its first sample
index and capture time) so an audio time maps back to the exact sample, the way classify
stamped it: a window that starts at sample ``i`` of a chunk anchored at ``(index, t_ns)``
is stamped ``t_ns + (i - index) * 1e9 // rate``, so ``i = index + ceil((t - t_ns) * rate / 1e9)``.

Samples are kept as soundfile can write them without changing a value
(:func:`frames_of`): float tensors as float32 (frames, channels), s16 as int16, s24 and
s32 as int32 (s24 in the high 24 bits, soundfile's convention for PCM_24), s8/u8 as int16.

Audio that never arrived is never spliced out: a forward jump in ``offset`` is filled
with zeros and remembered as a gap, and ``lost`` samples reported by a header (a device
overflow, silence a converter bridged) are remembered as a gap too, so a clip can say how
much of it is missing (:meth:`AudioRing.gap_samples`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from common.wire.codec import Audio
from common.wire.messages import Layout, SampleFormat

NS = 1_000_000_000
MAX_ANCHORS = 4096  # chunks remembered per stream (10 ms chunks: 41 s); older ones shrink the ring
MAX_GAPS = 1024  # gaps remembered per stream


@dataclass(frozen=True)
class SampleKind:
    """How a stream's samples are kept: numpy dtype, the source's bits per sample, float or not."""

    dtype: np.dtype
    bits: int  # 16, 24, 32 for integers (s8/u8 are widened to 16), 32/64 for floats
    is_float: bool


_KINDS = {
    SampleFormat.F32: SampleKind(np.dtype(np.float32), 32, True),
    SampleFormat.F64: SampleKind(np.dtype(np.float64), 64, True),
    SampleFormat.S16: SampleKind(np.dtype(np.int16), 16, False),
    SampleFormat.S8: SampleKind(np.dtype(np.int16), 16, False),
    SampleFormat.U8: SampleKind(np.dtype(np.int16), 16, False),
    SampleFormat.S24: SampleKind(np.dtype(np.int32), 24, False),
    SampleFormat.S32: SampleKind(np.dtype(np.int32), 32, False),
}


def kind_of(fmt: SampleFormat) -> SampleKind:
    return _KINDS[fmt]


def frames_of(msg: Audio) -> np.ndarray:
    """The message's samples as (frames, channels) in the ring's dtype; every value kept exactly."""
    h = msg.header
    x = msg.samples()  # (samples, channels[, 3]) interleaved or (channels, samples[, 3]) planar
    if h.layout is Layout.PLANAR:  # (channels, samples[, 3]) -> (samples, channels[, 3]), a view
        x = x.T if x.ndim == 2 else x.transpose(1, 0, 2)
    fmt = h.format
    if fmt is SampleFormat.S24:  # 3 little-endian bytes -> the high 24 bits of an int32
        b = x.astype(np.int32)
        return (b[..., 0] << 8) | (b[..., 1] << 16) | (b[..., 2] << 24)
    if fmt is SampleFormat.S8:
        return x.astype(np.int16) << 8
    if fmt is SampleFormat.U8:
        return (x.astype(np.int16) - 128) << 8
    return x.astype(_KINDS[fmt].dtype, copy=False)


@dataclass
class Anchor:
    """A received chunk: sample index of its first sample, its capture time (ns), its length."""

    index: int
    t_ns: int
    frames: int


class AudioRing:
    """The last ``capacity`` samples of one stream (see the module docstring).

    Indices are the headers' ``offset`` values (samples per channel since the epoch began).
    ``start``..``end`` is the span held; :meth:`reset` forgets everything (a new epoch, a
    format change, a jump back).
    """

    def __init__(self, rate: int, channels: int, kind: SampleKind, capacity: int) -> None:
        self.rate, self.channels, self.kind = rate, channels, kind
        self.capacity = max(int(capacity), 1)
        self._buf = np.zeros((self.capacity, channels), dtype=kind.dtype)
        self.reset(0)

    def reset(self, index: int) -> None:
        """Forget all audio; the next chunk is expected at ``index``."""
        self.start = self.end = index
        self.anchors: deque[Anchor] = deque()
        self.gaps: deque[tuple[int, int]] = deque()  # (first missing index, length)

    @property
    def nbytes(self) -> int:
        """Memory the ring holds (allocated once, at its full size)."""
        return self._buf.nbytes

    def matches(self, rate: int, channels: int, kind: SampleKind) -> bool:
        return (rate, channels, kind) == (self.rate, self.channels, self.kind)

    @property
    def end_ns(self) -> int:
        """Audio time just after the newest sample held (0 when empty)."""
        if not self.anchors:
            return 0
        a = self.anchors[-1]
        return a.t_ns + a.frames * NS // self.rate

    def push(self, frames: np.ndarray, offset: int, t_ns: int, lost: int = 0) -> int:
        """Add (n, channels) samples whose first has index ``offset``; returns samples that were missing
        before them (zero-filled here or reported lost upstream). A jump back resets the ring."""
        n = frames.shape[0]
        if self.anchors and (offset < self.end or offset - self.end >= self.capacity):
            self.reset(offset)  # restarted within the epoch, or a gap longer than everything held
        if not self.anchors:
            self.start = self.end = offset
        jump = offset - self.end
        if jump:
            self._write(np.zeros((jump, self.channels), self.kind.dtype), self.end)
        missing = max(jump, lost)
        if missing:
            self.gaps.append((offset - missing, missing))
            if len(self.gaps) > MAX_GAPS:
                self.gaps.popleft()
        if n > self.capacity:  # one chunk longer than the ring: keep its tail
            cut = n - self.capacity
            frames, offset, t_ns, n = frames[cut:], offset + cut, t_ns + cut * NS // self.rate, self.capacity
            self.start = self.end = offset
            self.anchors.clear()
        self._write(frames, offset)
        self.anchors.append(Anchor(offset, t_ns, n))
        if len(self.anchors) > MAX_ANCHORS:
            self.anchors.popleft()
            self.start = max(self.start, self.anchors[0].index)
        while self.anchors and self.anchors[0].index + self.anchors[0].frames <= self.start:
            self.anchors.popleft()
        while self.gaps and self.gaps[0][0] + self.gaps[0][1] <= self.start:
            self.gaps.popleft()
        return missing

    def _write(self, frames: np.ndarray, index: int) -> None:
        """Copy ``frames`` to sample indices index.. (wrapping); the oldest samples fall out."""
        n = frames.shape[0]
        pos = index % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos : pos + first] = frames[:first]
        if first < n:
            self._buf[: n - first] = frames[first:]
        self.end = index + n
        self.start = max(self.start, self.end - self.capacity)

    def index_at(self, t_ns: int) -> int:
        """Sample index of audio time ``t_ns`` (the first sample stamped at or after it).

        Times before the oldest anchor map to ``start``; times after the newest chunk are
        extrapolated from it (exact for contiguous audio that has not arrived yet)."""
        if not self.anchors:
            return self.end
        for a in reversed(self.anchors):
            if a.t_ns <= t_ns:
                return a.index + -((-(t_ns - a.t_ns) * self.rate) // NS)
        return self.start

    def time_at(self, index: int) -> int:
        """Audio time of sample ``index`` (ns), from the anchor of the chunk holding it."""
        if not self.anchors:
            return 0
        for a in reversed(self.anchors):
            if a.index <= index:
                return a.t_ns + (index - a.index) * NS // self.rate
        a = self.anchors[0]
        return a.t_ns - (a.index - index) * NS // self.rate

    def read(self, first: int, stop: int) -> np.ndarray:
        """A copy of samples ``first``..``stop`` (clamped to what is held), (n, channels)."""
        first, stop = max(first, self.start), min(stop, self.end)
        if stop <= first:
            return np.zeros((0, self.channels), self.kind.dtype)
        pos = first % self.capacity
        n = stop - first
        if pos + n <= self.capacity:
            return self._buf[pos : pos + n].copy()
        return np.concatenate([self._buf[pos:], self._buf[: n - (self.capacity - pos)]])

    def gap_samples(self, first: int, stop: int) -> int:
        """Samples missing (zero-filled or lost upstream) inside ``first``..``stop``."""
        total = 0
        for g0, n in self.gaps:
            if g0 + n > first and g0 < stop:
                total += min(g0 + n, stop) - max(g0, first)
        return total
