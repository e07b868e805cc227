"""One stream inside a classify worker: its continuity, its audio, its model state, its events.

:class:`StreamSlot` owns everything the worker keeps for a stream, and ``accept`` reads a
tensor message top to bottom:

    1. continuity: next, gap, new epoch, publisher restart, or stale (dropped)
    2. a break (gap, DISCONTINUITY, new epoch): the windows already complete are served
       first (they are good audio), then audio, model state and events restart
    3. losses are remembered (``lost`` samples) and reported on the next result
    4. the samples join the stream's window buffer (classify.windows)

A window's lag (for ``--max-lag-ms``) is measured against the stream's own delivery delay:
``lag = now - end of the tensor that completed the window - delay``, where ``delay`` is the
smallest (arrival - audio end) seen since the last new epoch or publisher restart, i.e. the
transport delay plus any clock offset between the boxes (a gap keeps it). A live stream after a 60 s stall is 60 s behind; a recording replayed at its pace
with old stamps is not. Stamps ahead of the clock (a file read faster than real time)
never count as late.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from classify.events import EventTracker
from classify.models.base import Model, StreamState
from classify.windows import Anchor, StreamWindows
from common.runtime.streams import Continuity, SeqCursor
from common.wire.codec import Audio
from common.wire.messages import Event, Flag
from common.wire.topics import Kind, topic_for

_DISC, _END = int(Flag.DISCONTINUITY), int(Flag.END)


class StreamSlot:
    """Everything the worker keeps for one stream (see the module docstring)."""

    def __init__(self, stream: str, model: Model, on: np.ndarray, off: np.ndarray, buffer_samples: int) -> None:
        spec = model.spec
        self.stream = stream
        self.cursor = SeqCursor()
        self.windows = StreamWindows(spec.rate, spec.channels, spec.window, spec.hop, buffer_samples)
        self.state: StreamState | None = model.new_state()
        self.events = EventTracker(spec.labels, on, off, spec.hold)
        self.epoch = 0
        self.result_seq = 0
        self.next_flags = 0  # DISCONTINUITY on the first result after a restart or a mid-epoch join
        self.pending_events: list[Event] = []  # stops caused by a restart, sent with the next result
        self.lost = 0  # samples (model rate) missing before the next window
        self.ended = False  # END, or idle: serve the partial window, stop events, forget the slot
        self.last_rx = time.monotonic()  # when its newest tensor arrived
        self.last_samples = 0  # samples in its newest tensor
        self.gaps: deque[float] = deque(maxlen=4)  # seconds between its newest tensors' arrivals
        self.last_anchor: Anchor | None = None  # the newest tensor (for stops after the last window)
        self.delay_ns: int | None = None  # smallest (arrival - audio end) since the last new epoch or publisher restart
        self.topic = topic_for(Kind.RESULT, stream, spec.name)

    def accept(self, msg: Audio, now_mono: float, now_ns: int, serve_now) -> int:
        """Add one tensor message; returns windows dropped to stay within the buffer bound.

        ``serve_now(slot)`` classifies the slot's ready windows immediately (called before a
        restart would discard them)."""
        h = msg.header
        cont, missing = self.cursor.check(h.epoch, h.seq, bool(h.flags & _DISC))
        if cont is Continuity.STALE:
            return 0
        w = self.windows
        if cont is Continuity.FIRST:
            self.epoch = h.epoch
            w.reset(h.offset)
            self.lost += h.lost
        else:
            gap = max(h.offset - w.next_index, 0) if cont is not Continuity.NEW_EPOCH else 0
            if cont is Continuity.GAP:
                gap = max(gap, missing * self.last_samples)
            if cont in (Continuity.NEW_EPOCH, Continuity.GAP, Continuity.RESTART) or h.flags & _DISC or gap or h.lost:
                serve_now(self)
                if cont is Continuity.NEW_EPOCH:
                    self.epoch, self.result_seq = h.epoch, 0
                self.restart(h.offset, h.t_capture_ns)
                if cont in (Continuity.NEW_EPOCH, Continuity.RESTART):
                    # another publisher's clock may differ: measure the delay anew. A gap keeps
                    # it: the first tensors after a stall arrive late and would set it too high.
                    self.delay_ns = None
            self.lost += gap + h.lost
        end_ns = h.end_ns
        delay = now_ns - end_ns
        if self.delay_ns is None or delay < self.delay_ns:
            self.delay_ns = delay
        dropped = w.push(msg.samples(), h.t_capture_ns, h.seq, now_ns, h.trace)
        self.gaps.append(now_mono - self.last_rx)
        self.last_rx, self.last_samples = now_mono, h.samples
        self.last_anchor = w.anchors[-1]
        if h.flags & _END:
            self.ended = True
        return dropped

    def restart(self, offset: int, t_ns: int) -> None:
        """Forget audio and model state; labels that are on stop at ``t_ns``. Buffered samples no
        window covered (a partial window: its rest never came) count as lost."""
        w = self.windows
        self.lost += max(0, w.buffered - (w.window - w.hop)) if self.result_seq or w.buffered >= w.window \
            else w.buffered
        w.reset(offset)
        self.next_flags |= _DISC
        if self.state is not None:
            self.state.reset()
        self.pending_events += self.events.reset(t_ns)

    def shed(self, windows: int, hop: int) -> None:
        """``windows`` were dropped unclassified (stale, or the buffer bound): report them as lost."""
        self.lost += windows * hop
        self.next_flags |= _DISC
        if self.state is not None:
            self.state.reset()

    def lag_ns(self, now_ns: int) -> int:
        """How late the oldest ready window is (see the module docstring). Call only when one is ready."""
        late = now_ns - self.windows.oldest_window_delivered_ns()
        return min(late, late - (self.delay_ns or 0))

    def cadence_s(self) -> float:
        """Shortest recent gap between this stream's tensors (s): when its next one may come."""
        return min(self.gaps) if self.gaps else 0.0
