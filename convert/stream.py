"""Per-stream conversion state: everything one stream carries from one frame to the next.

A :class:`StreamState` holds the input format it was built for, the streaming resampler,
the optional DC-removal filter, the re-chunk buffer that turns resampler output into
fixed-length frames, and the counters that give each output frame its ``seq``, ``offset``
and ``t_capture_ns``. Timestamps come from sample counts only:

    t_capture_ns = anchor_t_ns + (samples since anchor) * 1e9 // rate     (integer arithmetic)

so there is no drift over hours. ``reset()`` re-anchors it after a gap, an epoch change
or a format change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common.protocol import Flag, Header
from convert.resample import StreamResampler

NS = 1_000_000_000


class InputFormat(NamedTuple):
    """What a stream's raw frames look like; a change mid-stream resets its state."""

    format: str
    rate: int  # Hz
    channels: int
    layout: str


@dataclass
class OutFrame:
    """One frame ready to publish: samples (channels, frames) float32 C-contiguous, plus position."""

    samples: np.ndarray
    seq: int
    offset: int  # output samples since the epoch began
    t_capture_ns: int
    flags: int  # Flag bits (a plain int: enum arithmetic is slow on the hot path)


class FrameBuffer:
    """Re-chunks (n, K) or (n,) resampler output into planar (K, frame_len) frames."""

    def __init__(self, channels: int, frame_len: int) -> None:
        self.channels, self.frame_len = channels, frame_len
        self.buf = np.empty((channels, 2 * frame_len), dtype=np.float32)
        self.fill = 0

    def reset(self) -> None:
        self.fill = 0

    def push(self, y: np.ndarray) -> list[np.ndarray]:
        """Append samples; return every complete frame, each a new (K, frame_len) array."""
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
        L, out = self.frame_len, []
        start = 0
        while self.fill - start >= L:
            out.append(self.buf[:, start : start + L].copy())
            start += L
        if start:
            rest = self.fill - start
            self.buf[:, :rest] = self.buf[:, start : self.fill]
            self.fill = rest
        return out

    def take_rest(self) -> np.ndarray | None:
        """The partial frame left (K, fill), or None if empty; the buffer is emptied."""
        if self.fill == 0:
            return None
        rest = self.buf[:, : self.fill].copy()
        self.fill = 0
        return rest


class DCBlocker:
    """First-order DC-removal high-pass, y[n] = x[n] - x[n-1] + R y[n-1], state carried across chunks.

    Uses scipy.signal.lfilter (imported on first use: only ``--dc-remove`` needs scipy).
    Cutoff ~ ``cutoff_hz``; R = exp(-2 pi fc / fs).
    """

    def __init__(self, rate: int, channels: int, cutoff_hz: float = 10.0) -> None:
        try:
            from scipy.signal import lfilter
        except ImportError:  # pragma: no cover - depends on the install
            raise SystemExit("soundbus: --dc-remove needs scipy: pip install scipy (or drop --dc-remove).") from None
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


class StreamState:
    """Everything convert keeps for one (stream, epoch): resampler, buffer, counters.

    ``anchor_t_ns``/``anchor_offset``: time and output offset of the first output sample
    since the last (re)start; ``produced``: output samples since then; ``seq``: next
    output sequence number (continues across resets within an epoch).
    """

    def __init__(
        self,
        stream: str,
        epoch: int,
        fmt: InputFormat,
        out_rate: int,
        out_channels: int,
        frame_len: int,
        quality: str = "HQ",
        dc_remove: bool = False,
    ) -> None:
        self.stream, self.epoch, self.fmt = stream, epoch, fmt
        self.out_rate, self.out_channels = out_rate, out_channels
        self.resampler = StreamResampler(fmt.rate, out_rate, out_channels, quality)
        self.dc = DCBlocker(fmt.rate, out_channels) if dc_remove else None
        self.frames = FrameBuffer(out_channels, frame_len)
        self.seq = 0
        self.next_in_offset = 0  # input offset expected next (input samples since epoch start)
        self.last_in_frames = 0
        self.ended = False  # END seen: the next message restarts the state
        self.flushed = False  # tail flushed while idle: the next message restarts the state
        self.last_header: Header | None = None  # latest input header (source, trace for output)
        self.out_header: Header | None = None  # reused for every output frame (see worker._encode)
        self.out_topic = b""
        self.reset(t_ns=0, out_offset=0, flags=Flag.NONE)

    def reset(self, t_ns: int, out_offset: int, flags: int = Flag.DISCONTINUITY) -> None:
        """Drop filter and buffer state; the next output sample is at ``out_offset``, time ``t_ns``.

        ``flags`` go on the next frame published (DISCONTINUITY after a gap or format change).
        """
        self.resampler.reset()
        if self.dc is not None:
            self.dc.reset()
        self.frames.reset()
        self.anchor_t_ns = t_ns
        self.anchor_offset = out_offset
        self.produced = 0
        # (output offset, flags): flags go on the frame holding that sample (or the next one)
        self.pending: list[tuple[int, int]] = [(out_offset, int(flags))] if flags else []

    def mark(self, flags: int) -> None:
        """Flag the output frame that will hold the next input sample pushed (gap, overflow)."""
        r = self.resampler
        self.pending.append((self.anchor_offset + (r.samples_in * r.out_rate) // r.in_rate, int(flags)))

    def set_start_flags(self, flags: int) -> None:
        """Replace the flags of the first frame after (re)start."""
        self.pending = [(self.anchor_offset, int(flags))] if flags else []

    @property
    def out_offset(self) -> int:
        """Output offset of the next frame to be published (buffered samples not counted)."""
        return self.anchor_offset + self.produced

    def push(self, x: np.ndarray) -> list[OutFrame]:
        """Filter and resample float32 input (n,) or (n, K); return the complete frames."""
        if self.dc is not None:
            x = self.dc.process(x)
        return self._frames(self.frames.push(self.resampler.process(x)))

    def push_silence(self, n: int) -> list[OutFrame]:
        """Bridge a gap of ``n`` input samples with zeros (state stays continuous)."""
        shape = (n,) if self.out_channels == 1 else (n, self.out_channels)
        return self.push(np.zeros(shape, dtype=np.float32))

    def flush(self, flags: int = 0) -> list[OutFrame]:
        """End of a signal: emit the resampler tail and the partial frame (it may be short).

        ``flags`` (e.g. END) go on the last frame emitted.
        """
        out = self._frames(self.frames.push(self.resampler.flush()))
        rest = self.frames.take_rest()
        if rest is not None:
            out += self._frames([rest])
        flags = int(flags)
        if out:
            for _, f in self.pending:  # marks past the end of the signal land on its last frame
                flags |= f
            out[-1].flags |= flags
        self.pending = []
        return out

    def _frames(self, blocks: list[np.ndarray]) -> list[OutFrame]:
        out = []
        for b in blocks:
            off = self.anchor_offset + self.produced
            t = self.anchor_t_ns + (self.produced * NS) // self.out_rate
            flags = 0
            if self.pending:
                end = off + b.shape[1]
                for pos, f in self.pending:
                    if pos < end:
                        flags |= f
                self.pending = [(pos, f) for pos, f in self.pending if pos >= end]
            out.append(OutFrame(b, self.seq, off, t, flags))
            self.seq += 1
            self.produced += b.shape[1]
        return out
