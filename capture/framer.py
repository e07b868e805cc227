"""Cutting a source's samples into frames, and the per-stream numbering that goes with them.

Every source hands interleaved PCM bytes of any length to a :class:`StreamFramer`
together with the wall-clock time of their first sample. The framer emits frames of
exactly ``frame_frames`` samples per channel (a shorter one only at the end of an
epoch), each stamped with:

- ``epoch``: set by :meth:`StreamFramer.new_epoch` on every (re)open of the source;
- ``seq``: 0, 1, 2, ... per (stream, epoch);
- ``offset``: index of the frame's first sample since the epoch began (samples per channel);
- ``t_capture_ns``: wall-clock time of the frame's first sample, derived from the time
  the source gave for the block it came from (so re-chunking never invents time).

Lost samples (queue overruns) advance ``offset`` without data and flag the next frame
OVERFLOW|DISCONTINUITY, so a consumer sees exactly how much is missing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from common.protocol import SAMPLE_FORMATS, Flag, Header, Kind

NS = 1_000_000_000


@dataclass(frozen=True)
class StreamFormat:
    """What the samples of one stream are: ``rate`` Hz, ``channels``, sample ``format`` (protocol name)."""

    rate: int
    channels: int
    format: str

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one sample frame (one sample of every channel)."""
        return self.channels * SAMPLE_FORMATS[self.format][1]


def frames_for_ms(rate: int, frame_ms: float) -> int:
    """Samples per channel in a frame of ``frame_ms`` milliseconds at ``rate`` Hz (at least 1)."""
    return max(1, round(rate * frame_ms / 1000.0))


Sink = Callable[[Header, bytes], None]


class StreamFramer:
    """Frames and numbers one stream. Thread-safe for one writer plus readers of :meth:`position`.

    ``frame_ms``: frame length in ms (rounded to whole samples at the stream's rate).
    ``sink(header, payload)`` receives each finished frame (payload: interleaved bytes,
    ``header.frames * fmt.bytes_per_frame`` long). ``hold_last``: keep the newest complete
    frame until more data or :meth:`end` arrives, so a source that learns of its end only
    at EOF (pipe, ffmpeg) can still flag its last frame END; costs one frame of latency.
    """

    def __init__(
        self,
        stream: str,
        fmt: StreamFormat,
        frame_ms: float,
        source: str,
        sink: Sink,
        hold_last: bool = False,
    ) -> None:
        if not frame_ms > 0:
            raise ValueError(f"frame_ms must be > 0, got {frame_ms}")
        self.stream = stream
        self.fmt = fmt
        self.frame_ms = frame_ms
        self.frame_frames = frames_for_ms(fmt.rate, frame_ms)  # samples per channel per frame
        self.source = source
        self.sink = sink
        self.hold_last = hold_last
        self._lock = threading.Lock()
        self.epoch = 0
        self.seq = 0  # seq of the next frame
        self.offset = 0  # offset of the next frame (samples per channel since epoch start)
        self._pending = bytearray()
        self._anchor_t_ns = 0  # wall time of the sample at offset _anchor_offset
        self._anchor_offset = 0
        self._pending_flags = Flag.NONE  # flags the next emitted frame carries
        self._held: tuple[Header, bytes] | None = None
        self.frames_out = 0
        self.samples_lost = 0

    def reset(self) -> None:
        """Forget everything buffered and restart numbering (same as a new epoch without publishing)."""
        with self._lock:
            self._reset_locked(self.epoch)

    def _reset_locked(self, epoch: int) -> None:
        self.epoch = epoch
        self.seq = 0
        self.offset = 0
        self._pending.clear()
        self._anchor_t_ns = self._anchor_offset = 0
        self._pending_flags = Flag.NONE
        self._held = None

    def new_epoch(self, fmt: StreamFormat | None = None, epoch: int | None = None) -> int:
        """Start a new epoch (source (re)opened): seq and offset restart at 0.

        Anything buffered from the old epoch is dropped (a source flushes with :meth:`end`
        first if it wants it published). The first frame of a new epoch after the first
        one is flagged DISCONTINUITY. Returns the epoch (``time.time_ns()`` unless given,
        kept strictly increasing).
        """
        with self._lock:
            first = self.epoch == 0
            e = epoch if epoch is not None else time.time_ns()
            if e <= self.epoch:
                e = self.epoch + 1
            if fmt is not None:
                self.fmt = fmt
                self.frame_frames = frames_for_ms(fmt.rate, self.frame_ms)
            self._reset_locked(e)
            if not first:
                self._pending_flags = Flag.DISCONTINUITY
            return e

    def position(self) -> tuple[int, int, int]:
        """(epoch, next seq, next offset): what a heartbeat reports."""
        with self._lock:
            return self.epoch, self.seq, self.offset

    def try_position(self) -> tuple[int, int, int] | None:
        """:meth:`position`, or None while a source thread holds the framer.

        A fast source waits for room in the runner's full queue with this lock held; the
        runner's loop (which empties that queue) must not wait for the lock, or neither moves.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.epoch, self.seq, self.offset
        finally:
            self._lock.release()

    def flag_next(self, flags: Flag) -> None:
        """Make the next emitted frame carry ``flags`` (e.g. PortAudio input overflow)."""
        with self._lock:
            self._pending_flags |= flags

    def lost(self, samples: int) -> None:
        """``samples`` (per channel) were lost before the next data: flush, skip them, flag the next frame."""
        if samples <= 0:
            return
        with self._lock:
            self._flush_pending_locked(Flag.NONE)
            self.offset += samples
            self.samples_lost += samples
            self._pending_flags |= Flag.OVERFLOW | Flag.DISCONTINUITY

    def push(self, data: bytes | bytearray | memoryview, t_first_ns: int, end: bool = False) -> None:
        """Add interleaved samples whose first sample was captured at ``t_first_ns`` (wall-clock ns).

        ``data`` must hold whole sample frames. ``end``: this is the last data of the epoch;
        the final frame (possibly short) is flagged END.
        """
        bpf = self.fmt.bytes_per_frame
        if len(data) % bpf:
            raise ValueError(f"{len(data)} bytes is not a whole number of {bpf}-byte sample frames")
        with self._lock:
            if not self._pending:
                # times are anchored at the block's first sample, so re-chunking never drifts
                self._anchor_t_ns, self._anchor_offset = t_first_ns, self.offset
            self._pending += data
            step = self.frame_frames * bpf
            while len(self._pending) >= step and not (end and len(self._pending) == step):
                chunk = bytes(self._pending[:step])
                del self._pending[:step]
                self._emit_locked(chunk, self._time_of_next_locked(), Flag.NONE)
            if end:
                self._flush_pending_locked(Flag.END)
                self._release_held_locked(Flag.END)

    def end(self) -> None:
        """The epoch ends here: publish what is buffered, the last frame flagged END."""
        with self._lock:
            self._flush_pending_locked(Flag.END)
            self._release_held_locked(Flag.END)

    # -- internals (lock held) -------------------------------------------------------------

    def _flush_pending_locked(self, flags: Flag) -> None:
        if self._pending:
            chunk = bytes(self._pending)
            self._pending.clear()
            self._emit_locked(chunk, self._time_of_next_locked(), flags)

    def _time_of_next_locked(self) -> int:
        return self._anchor_t_ns + (self.offset - self._anchor_offset) * NS // self.fmt.rate

    def _emit_locked(self, payload: bytes, t_ns: int, flags: Flag) -> None:
        frames = len(payload) // self.fmt.bytes_per_frame
        h = Header(
            kind=Kind.RAW,
            stream=self.stream,
            epoch=self.epoch,
            seq=self.seq,
            t_capture_ns=t_ns,
            rate=self.fmt.rate,
            channels=self.fmt.channels,
            format=self.fmt.format,
            layout="interleaved",
            frames=frames,
            offset=self.offset,
            flags=self._pending_flags | flags,
            source=self.source,
        )
        self._pending_flags = Flag.NONE
        self.seq += 1
        self.offset += frames
        if self.hold_last:
            self._release_held_locked(Flag.NONE)
            self._held = (h, payload)
        else:
            self.frames_out += 1
            self.sink(h, payload)

    def _release_held_locked(self, flags: Flag) -> None:
        if self._held is not None:
            h, payload = self._held
            self._held = None
            h.flags |= flags
            self.frames_out += 1
            self.sink(h, payload)
