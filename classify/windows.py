"""Per-stream audio buffer cut into windows with a hop, in audio time.

A StreamWindows holds the samples of one stream that no window has consumed yet, plus
an anchor per received tensor message (its first sample index, capture time, seq), so
each window knows the exact wall-clock span and the message range it covers. Sample
indices are at the model rate and count from the tensor headers' ``offset``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from common.wire.messages import Hop

NS = 1_000_000_000


@dataclass
class Anchor:
    """Where one received tensor message sits in the buffer."""

    index: int  # sample index of its first sample
    frames: int
    t_capture_ns: int
    seq: int
    t_in_ns: int  # when this worker received it
    trace: list[Hop] = field(default_factory=list)


@dataclass
class Window:
    """One window ready for the model: samples (channels, window) and what they cover."""

    samples: np.ndarray  # float32 (channels, window): a view into the buffer, valid until the next push
    offset: int  # sample index of the first sample
    start_ns: int
    end_ns: int
    seq_first: int
    seq_last: int
    last: Anchor  # the message holding the window's last sample (trace, receive time)


class StreamWindows:
    """Unconsumed audio of one stream; ``window`` and ``hop`` in samples at ``rate`` Hz.

    ``capacity`` bounds the buffered samples: pushing past it drops the oldest whole
    hops (returned as a count of windows lost), so memory never grows with a stalled model.
    """

    def __init__(self, rate: int, channels: int, window: int, hop: int, capacity: int) -> None:
        if not 1 <= hop <= window:
            raise ValueError(f"need 1 <= hop <= window samples, got window {window}, hop {hop}")
        self.rate, self.channels, self.window, self.hop = rate, channels, window, hop
        self.capacity = max(capacity, window + hop)
        # grows on demand up to 2 x capacity: a large lag bound costs memory only when used
        self._buf = np.zeros((channels, 2 * min(self.capacity, window + hop)), dtype=np.float32)
        self.reset()

    def reset(self, offset: int = 0) -> None:
        """Forget all audio; the next sample pushed has index ``offset``."""
        self._start = 0  # position in _buf of the first unconsumed sample
        self._count = 0  # unconsumed samples
        self.offset = offset  # sample index of _buf[:, _start]
        self.anchors: deque[Anchor] = deque()

    @property
    def buffered(self) -> int:
        """Samples waiting (per channel)."""
        return self._count

    @property
    def next_index(self) -> int:
        """Sample index the next pushed sample should have to be contiguous."""
        return self.offset + self._count

    def push(self, samples: np.ndarray, t_capture_ns: int, seq: int, t_in_ns: int, trace: list[Hop]) -> int:
        """Append (channels, frames) float32; returns windows dropped to stay within capacity."""
        frames = samples.shape[1]
        dropped = 0
        if self._count + frames > self.capacity:
            excess = self._count + frames - self.capacity
            hops = -(-excess // self.hop)
            dropped = self.skip(hops * self.hop)
        if self._start + self._count + frames > self._buf.shape[1]:
            need = self._count + frames
            if need > self._buf.shape[1] // 2 and self._buf.shape[1] < 2 * self.capacity:
                grown = np.zeros((self.channels, min(2 * self.capacity, 4 * need)), dtype=np.float32)
                grown[:, : self._count] = self._buf[:, self._start : self._start + self._count]
                self._buf = grown
            else:
                # compact: move the live part to the front (amortised: at most once per half buffer)
                self._buf[:, : self._count] = self._buf[:, self._start : self._start + self._count]
            self._start = 0
        end = self._start + self._count
        if frames > self._buf.shape[1] - end:  # one message bigger than the buffer: keep its tail
            keep = self._buf.shape[1] - end
            samples = samples[:, frames - keep :]
            self.offset += frames - keep
            t_capture_ns += ((frames - keep) * NS) // self.rate
            frames = keep
        self._buf[:, end : end + frames] = samples
        self.anchors.append(Anchor(self.next_index, frames, t_capture_ns, seq, t_in_ns, trace))
        self._count += frames
        return dropped

    def ready(self) -> bool:
        return self._count >= self.window

    def ready_count(self) -> int:
        """Whole windows available now."""
        return 0 if self._count < self.window else 1 + (self._count - self.window) // self.hop

    def skip(self, samples: int) -> int:
        """Drop up to ``samples`` oldest samples (whole hops); returns the windows that skips."""
        samples = min(samples, self._count)
        windows = samples // self.hop
        samples = windows * self.hop
        self._advance(samples)
        return windows

    def take(self) -> Window:
        """The oldest ready window; advances by one hop. Call only when ``ready()``."""
        assert self._count >= self.window
        s = self.offset
        samples = self._buf[:, self._start : self._start + self.window]  # no copy: batching stacks it
        first = self._anchor_of(s)
        last = self._anchor_of(s + self.window - 1)
        win = Window(
            samples=samples,
            offset=s,
            start_ns=self._time_of(first, s),
            end_ns=self._time_of(last, s + self.window),
            seq_first=first.seq,
            seq_last=last.seq,
            last=last,
        )
        self._advance(self.hop)
        return win

    def oldest_window_end_ns(self) -> int:
        """Wall-clock ns of the end of the oldest ready window. Call only when ``ready()``."""
        last = self.offset + self.window
        return self._time_of(self._anchor_of(last - 1), last)

    def oldest_window_delivered_ns(self) -> int:
        """Wall-clock ns of the end of the tensor that completed the oldest ready window: the
        audio a window waits for inside its tensor is upstream chunking, not lateness here.
        Call only when ``ready()``."""
        a = self._anchor_of(self.offset + self.window - 1)
        return self._time_of(a, a.index + a.frames)

    def newest_end_ns(self) -> int:
        """Wall-clock ns just after the newest buffered sample. Call only when something is buffered."""
        a = self.anchors[-1]
        return self._time_of(a, a.index + a.frames)

    def pad_to_window(self) -> int:
        """Zero-pad a partial final window to full length (end of a stream); returns the real audio end (ns).

        Call only when 0 < buffered < window; the padding gets an anchor continuing the last message.
        """
        a = self.anchors[-1]
        end_ns = self.newest_end_ns()
        missing = self.window - self._count
        self.push(np.zeros((self.channels, missing), dtype=np.float32), end_ns, a.seq, a.t_in_ns, a.trace)
        return end_ns

    def _advance(self, n: int) -> None:
        self._start += n
        self._count -= n
        self.offset += n
        if self._count == 0:
            self._start = 0
        # anchors wholly before the new start are no longer needed
        while self.anchors and self.anchors[0].index + self.anchors[0].frames <= self.offset:
            self.anchors.popleft()

    def _anchor_of(self, index: int) -> Anchor:
        for a in self.anchors:
            if a.index <= index < a.index + a.frames:
                return a
        raise LookupError(f"sample {index} is not buffered")

    def _time_of(self, a: Anchor, index: int) -> int:
        """Wall-clock ns of sample ``index``, from the capture time of the message holding it."""
        return a.t_capture_ns + ((index - a.index) * NS) // self.rate
