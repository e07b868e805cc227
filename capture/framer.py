"""Cutting a source's samples into chunks, and the per-stream numbering that goes with them.

Every source hands interleaved PCM bytes of any length to its :class:`StreamFramer`
together with the wall-clock time of their first sample, and gets back the finished
chunks: exactly ``chunk_samples`` samples per channel each (a shorter one only at the end
of an epoch), each with its header:

- ``epoch``: set by :meth:`StreamFramer.new_epoch` on every (re)open of the source;
- ``seq``: 0, 1, 2, ... per (stream, epoch);
- ``offset``: index of the chunk's first sample since the epoch began;
- ``t_capture_ns``: wall-clock time of the chunk's first sample, derived from the time
  the source gave for the block it came from (so re-chunking never invents time);
- ``lost``: samples lost just before it (a queue overrun), with OVERFLOW|DISCONTINUITY.

Only capture's loop thread touches a framer (device callbacks hand blocks over through a
queue), so it needs no lock and can never block on the publisher.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from common.wire.messages import SAMPLE_WIDTH, AudioHeader, Flag, Layout, SampleFormat

NS = 1_000_000_000
Chunk = tuple[AudioHeader, bytes]


@dataclass(frozen=True)
class StreamFormat:
    """What the samples of one stream are: ``rate`` Hz, ``channels``, sample ``format`` (protocol name)."""

    rate: int
    channels: int
    format: str

    @functools.cached_property  # read for every chunk: computed once
    def sample_format(self) -> SampleFormat:
        return SampleFormat(self.format)

    @functools.cached_property
    def bytes_per_sample_frame(self) -> int:
        """Bytes of one sample of every channel."""
        return self.channels * SAMPLE_WIDTH[self.sample_format]


def samples_for_ms(rate: int, chunk_ms: float) -> int:
    """Samples per channel in a chunk of ``chunk_ms`` milliseconds at ``rate`` Hz (at least 1)."""
    return max(1, round(rate * chunk_ms / 1000.0))


class StreamFramer:
    """Chunks and numbers one stream.

    ``hold_last``: keep the newest complete chunk until more data or :meth:`end` arrives, so
    a source that learns of its end only at EOF (pipe, ffmpeg) can still flag its last
    chunk END; costs one chunk of latency.
    """

    def __init__(self, stream: str, fmt: StreamFormat, chunk_ms: float, source: str, hold_last: bool = False) -> None:
        if not chunk_ms > 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        self.stream = stream
        self.fmt = fmt
        self.chunk_ms = chunk_ms
        self.chunk_samples = samples_for_ms(fmt.rate, chunk_ms)
        self.source = source
        self.hold_last = hold_last
        self.epoch = 0
        self._reset(0)
        self.chunks_out = 0
        self.samples_lost = 0

    def _reset(self, epoch: int) -> None:
        self.epoch = epoch
        self.seq = 0  # seq of the next chunk
        self.offset = 0  # offset of the next chunk
        self._pending = bytearray()
        self._anchor_t_ns = self._anchor_offset = 0  # wall time of the sample at _anchor_offset
        self._flags = 0  # flags the next chunk carries
        self._lost = 0  # samples lost before the next chunk
        self._held: Chunk | None = None

    def new_epoch(self, fmt: StreamFormat | None = None, epoch: int | None = None) -> int:
        """Start a new epoch (source (re)opened): seq and offset restart at 0.

        Anything buffered from the old epoch is dropped (a source ends it with :meth:`end`
        first if it wants it published). The first chunk of every epoch but the first is
        flagged DISCONTINUITY. Returns the epoch (``time.time_ns()`` unless given, kept
        strictly increasing).
        """
        first = self.epoch == 0
        e = epoch if epoch is not None else time.time_ns()
        if e <= self.epoch:
            e = self.epoch + 1
        if fmt is not None:
            self.fmt = fmt
            self.chunk_samples = samples_for_ms(fmt.rate, self.chunk_ms)
        self._reset(e)
        if not first:
            self._flags = int(Flag.DISCONTINUITY)
        return e

    def position(self) -> tuple[int, int, int]:
        """(epoch, next seq, next offset): what a heartbeat reports."""
        return self.epoch, self.seq, self.offset

    def flag_next(self, flags: int) -> None:
        """Make the next chunk carry ``flags`` (e.g. PortAudio input overflow)."""
        self._flags |= int(flags)

    def lost(self, samples: int) -> list[Chunk]:
        """``samples`` (per channel) were lost before the next data: publish what is buffered,
        skip them in ``offset``, and flag the next chunk (OVERFLOW|DISCONTINUITY, ``lost``)."""
        if samples <= 0:
            return []
        out = self._flush_pending(0)
        self.offset += samples
        self.samples_lost += samples
        self._lost += samples
        self._flags |= int(Flag.OVERFLOW | Flag.DISCONTINUITY)
        return out

    def push(self, data: bytes | bytearray | memoryview, t_first_ns: int, end: bool = False) -> list[Chunk]:
        """Add interleaved samples whose first sample was captured at ``t_first_ns`` (wall-clock ns);
        returns the chunks completed. ``end``: the last data of the epoch; the final chunk is flagged END."""
        bpf = self.fmt.bytes_per_sample_frame
        if len(data) % bpf:
            raise ValueError(f"{len(data)} bytes is not a whole number of {bpf}-byte sample frames")
        step = self.chunk_samples * bpf
        if not self._pending:
            # times are anchored at the block's first sample, so re-chunking never drifts
            self._anchor_t_ns, self._anchor_offset = t_first_ns, self.offset
            if len(data) == step and not end:  # the common case: a source that reads whole chunks
                return self._emit(bytes(data), 0)
        self._pending += data
        out: list[Chunk] = []
        start = 0
        n = len(self._pending)
        while n - start >= step and not (end and n - start == step):
            out += self._emit(bytes(self._pending[start : start + step]), 0)
            start += step
        if start:
            del self._pending[:start]
        if end:
            out += self.end()
        return out

    def end(self) -> list[Chunk]:
        """The epoch ends here: publish what is buffered, the last chunk flagged END."""
        out = self._flush_pending(int(Flag.END))
        if self._held is not None:
            h, payload = self._held
            self._held = None
            h.flags |= int(Flag.END)
            self.chunks_out += 1
            out.append((h, payload))
        return out

    def _flush_pending(self, flags: int) -> list[Chunk]:
        if not self._pending:
            return []
        chunk = bytes(self._pending)
        self._pending.clear()
        return self._emit(chunk, flags)

    def _emit(self, payload: bytes, flags: int) -> list[Chunk]:
        samples = len(payload) // self.fmt.bytes_per_sample_frame
        t_ns = self._anchor_t_ns + (self.offset - self._anchor_offset) * NS // self.fmt.rate
        h = AudioHeader(
            stream=self.stream, epoch=self.epoch, seq=self.seq, t_capture_ns=t_ns, rate=self.fmt.rate,
            channels=self.fmt.channels, format=self.fmt.sample_format, layout=Layout.INTERLEAVED,
            samples=samples, offset=self.offset, flags=self._flags | flags, lost=self._lost, source=self.source,
        )
        self._flags = self._lost = 0
        self.seq += 1
        self.offset += samples
        if not self.hold_last:
            self.chunks_out += 1
            return [(h, payload)]
        out = []
        if self._held is not None:
            out.append(self._held)
            self.chunks_out += 1
        self._held = (h, payload)
        return out
