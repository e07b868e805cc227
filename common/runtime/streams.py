"""Per-stream bookkeeping every stage shares: sequence continuity, and a bounded table of streams.

A stage keeps one state object per stream (convert's resampler, classify's windows); each
owns a :class:`SeqCursor` that says how the next message relates to the last one. The
:class:`StreamTable` bounds how many streams a stage holds at once, whatever stream ids
arrive: a new stream beyond the bound is refused and counted, never allowed to grow memory.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog

log = logging.getLogger("soundbus.streams")

DEFAULT_MAX_STREAMS = 1024


class Continuity(enum.Enum):
    """How a message relates to the previous one of its stream."""

    FIRST = "first"  # first message seen of this stream
    NEXT = "next"  # seq == previous + 1, same epoch
    GAP = "gap"  # seq jumped forward: messages were lost
    NEW_EPOCH = "new_epoch"  # the source restarted
    RESTART = "restart"  # seq went back on a DISCONTINUITY-flagged message: its publisher restarted
    STALE = "stale"  # seq <= previous (duplicate or reordered): drop it


class SeqCursor:
    """Where one stream is: its epoch and the last sequence number accepted."""

    __slots__ = ("epoch", "seq")

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.seq = -1

    def check(self, epoch: int, seq: int, discontinuity: bool = False) -> tuple[Continuity, int]:
        """Classify a message and advance; returns (continuity, number of messages missing before it).

        ``discontinuity``: the message is flagged DISCONTINUITY. A publisher that restarted within
        an epoch (a converter after kill -9) may number from a lower seq; such a message is
        accepted as RESTART instead of being dropped as stale.
        """
        if self.epoch is None:
            self.epoch, self.seq = epoch, seq
            return Continuity.FIRST, 0
        if epoch != self.epoch:
            self.epoch, self.seq = epoch, seq
            return Continuity.NEW_EPOCH, 0
        if seq <= self.seq:
            if discontinuity:
                self.seq = seq
                return Continuity.RESTART, 0
            return Continuity.STALE, 0
        missing = seq - self.seq - 1
        self.seq = seq
        return (Continuity.GAP, missing) if missing else (Continuity.NEXT, 0)


S = TypeVar("S")


class StreamTable(Generic[S]):
    """At most ``capacity`` per-stream states; refusals counted as ``too_many_streams``.

    ``admit(stream, make)`` returns the stream's state, making it if there is room, else None.
    A stage removes states it no longer needs with ``pop``. When the table is full, states
    for which ``finished(state)`` is true (ended, flushed while idle) are reclaimed oldest
    first; a live stream never loses its state to a flood of new ids.
    """

    def __init__(self, capacity: int, metrics: StageMetrics, what: str = "streams",
                 finished: Callable[[S], bool] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.metrics = metrics
        self.what = what
        self.finished = finished
        self.states: dict[str, S] = {}
        self._warn = RateLimitedLog(log)

    def admit(self, stream: str, make: Callable[[], S]) -> S | None:
        st = self.states.get(stream)
        if st is not None:
            return st
        if len(self.states) >= self.capacity and self.finished is not None:
            for name, old in list(self.states.items()):
                if self.finished(old):
                    self.pop(name)
                    self.metrics.event("stream_reclaimed")
                    break
        if len(self.states) >= self.capacity:
            self.metrics.drop("too_many_streams")
            self._warn.warning("too_many_streams", f"refused stream {stream}: already {len(self.states)} "
                                                   f"{self.what} (--max-streams {self.capacity})")
            return None
        st = self.states[stream] = make()
        return st

    def get(self, stream: str) -> S | None:
        return self.states.get(stream)

    def pop(self, stream: str) -> S | None:
        self.metrics.forget(stream)
        return self.states.pop(stream, None)

    def __len__(self) -> int:
        return len(self.states)

    def __contains__(self, stream: str) -> bool:
        return stream in self.states

    def items(self) -> Iterator[tuple[str, S]]:
        return iter(list(self.states.items()))  # a copy: callers may pop while iterating

    def values(self) -> Iterator[S]:
        return iter(list(self.states.values()))
