"""What every source shares: options, its state, its framer, pacing and backoff.

A source is prepared in the main thread (so a user's mistake fails before anything runs,
with one clear sentence), then driven by capture's one loop (capture.runner); it never
touches a socket and runs no thread of its own:

- paced sources (file, synth) produce audio in ``tick`` when it is due by the loop's clock;
- fd sources (pipe, ffmpeg) register their file descriptors with the loop's poller and read
  what is there when it is readable;
- device sources get blocks from PortAudio's callback through the loop's queue (``on_item``).

Each call returns the finished chunks (``(AudioHeader, payload)``) of its framer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from capture.framer import Chunk, StreamFormat, StreamFramer
from capture.spec import SourceSpec
from common.wire.messages import HeartbeatState

log = logging.getLogger("capture")


@dataclass
class CaptureOptions:
    """Flags that apply to every source. ``rate``/``channels``/``format`` None: the source's own."""

    chunk_ms: float = 20.0
    fast: bool = False  # files and synth: as fast as possible instead of real time
    loop: bool = False  # finite sources: start over (new epoch) at the end
    rate: int | None = None
    channels: int | None = None
    format: str | None = None
    watchdog_s: float = 5.0  # "no audio for N s" after this long; devices reopen
    backoff_max_s: float = 30.0
    duration_s: float | None = None  # synth: stop after this long (END flag)


class Loop:
    """What the capture loop lends a source: its poller (for fds) and its queue (for other threads)."""

    def __init__(self, watch: Callable[[int, Callable[[], None]], None], unwatch: Callable[[int], None],
                 put: Callable[[Any], None]) -> None:
        self.watch, self.unwatch, self.put = watch, unwatch, put


class Source:
    """Base class. Subclasses set ``fmt`` in :meth:`prepare` and implement :meth:`start`.

    ``live``: capture starts at once (devices); otherwise the source waits for the first
    subscriber (or --wait-subscriber seconds) so nothing is published into the void.
    ``hold_last``: the source learns of its end only at EOF (see StreamFramer).
    """

    live = False
    hold_last = False

    def __init__(self, spec: SourceSpec, opts: CaptureOptions) -> None:
        self.spec = spec
        self.opts = opts
        self.stream = spec.stream
        self.fmt = StreamFormat(16000, 1, "s16")  # replaced in prepare()
        self.description = spec.text
        self.framer: StreamFramer | None = None
        self.state = HeartbeatState.WAITING
        self._why = ""
        self.restarts = 0
        self.failed = False
        self.last_audio = 0.0  # time.monotonic() of its newest chunk

    def prepare(self) -> None:
        """Check everything the user asked for; raise UserError with what to do. Main thread."""

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        """Begin producing (open the device, start ffmpeg, register an fd)."""
        raise NotImplementedError

    def on_item(self, item: Any, now: float) -> list[Chunk]:
        """A block this source put on the loop's queue (devices, readers)."""
        return []

    def tick(self, now: float) -> list[Chunk]:
        """Timers: pacing, reopening, watchdogs. ``now``: time.monotonic()."""
        return []

    def due_in(self, now: float) -> float | None:
        """Seconds until :meth:`tick` has work (None: nothing scheduled)."""
        return None

    def close(self) -> None:
        """Release OS resources (streams, subprocesses, fds). Safe to call twice."""

    @property
    def done(self) -> bool:
        return self.state in (HeartbeatState.ENDED, HeartbeatState.FAILED)

    def set_state(self, state: HeartbeatState, why: str = "") -> None:
        """Record and log a state change (also a repeated state with a new reason, e.g. each retry)."""
        if (state, why) != (self.state, self._why):
            level = logging.WARNING if state in (HeartbeatState.RECONNECTING, HeartbeatState.FAILED) else logging.INFO
            log.log(level, "stream %s: %s%s", self.stream, state.value, f" ({why})" if why else "")
        self.state, self._why = state, why
        if state is HeartbeatState.FAILED:
            self.failed = True


class Pacer:
    """Real-time pacing for sources that could go faster (files, synth): data for samples
    [0, n) is due when n / rate seconds have passed since start.

    Every pacer of a process starts on one grid of ``chunk_samples / rate`` seconds
    (:data:`PACING_ORIGIN` + k periods), so sources with the same chunk length fall due at the
    same instants and the capture loop sends all of them in one wake-up. Started one after the
    other, 64 synth sources used to be due at 64 slightly different times: 64 wake-ups per
    chunk period (bench_capacity: 79 us per chunk live against 9.5 flooded).
    """

    def __init__(self, rate: int, fast: bool, chunk_samples: int = 0) -> None:
        self.rate = rate
        self.fast = fast
        self.period_s = chunk_samples / rate if chunk_samples > 0 else 0.0
        self.restart()

    def restart(self) -> None:
        """Start the timeline at the next grid point (at most one chunk period from now)."""
        now_mono, now_wall_ns = time.monotonic(), time.time_ns()
        start = now_mono
        if self.period_s > 0 and not self.fast:
            start = PACING_ORIGIN + math.ceil((now_mono - PACING_ORIGIN) / self.period_s) * self.period_s
        self.start_mono = start
        self.start_wall_ns = now_wall_ns + round((start - now_mono) * 1e9)

    def t_of(self, offset: int) -> int:
        """Wall-clock ns assigned to sample ``offset`` (start time + offset / rate)."""
        return self.start_wall_ns + offset * 1_000_000_000 // self.rate

    def due_in(self, end_offset: int, now: float) -> float:
        """Seconds until sample ``end_offset`` is due (<= 0: now)."""
        return 0.0 if self.fast else self.start_mono + end_offset / self.rate - now


PACING_ORIGIN = time.monotonic()  # the process's pacing grid starts here (see Pacer)


class Backoff:
    """Exponential backoff for reopening a device or restarting ffmpeg: 0.5, 1, 2, ... capped."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.next_s = first_s

    def reset(self) -> None:
        self.next_s = self.first_s

    def next_delay(self) -> float:
        """The delay to wait now; the one after doubles."""
        delay = self.next_s
        self.next_s = min(self.next_s * 2, self.max_s)
        return delay


def split_whole_frames(pending: bytes, chunk: bytes, bytes_per_frame: int) -> tuple[bytes, bytes]:
    """(whole sample frames, remainder) of ``pending + chunk``: a byte stream (pipe, ffmpeg) cut
    at sample-frame boundaries, the partial one carried to the next read."""
    data = pending + chunk
    whole = len(data) - len(data) % bytes_per_frame
    return data[:whole], data[whole:]


class ArrivalClock:
    """Capture times for sources that only know when bytes arrive (pipes, ffmpeg).

    t(sample o) = anchor + o / rate, anchored at the first arrival. If data arrives more
    than ``slack_s`` later than that timeline predicts (the producer stalled), the anchor
    moves so the late block ends at its arrival time; early (bursty) data keeps the timeline.
    """

    def __init__(self, rate: int, slack_s: float = 0.5) -> None:
        self.rate = rate
        self.slack_ns = int(slack_s * 1e9)
        self.anchor_ns: int | None = None
        self.reanchors = 0

    def reset(self, rate: int | None = None) -> None:
        self.rate = rate or self.rate
        self.anchor_ns = None

    def t_of(self, offset: int, samples: int, arrival_ns: int) -> int:
        """Wall-clock ns of sample ``offset`` for a block of ``samples`` that arrived at ``arrival_ns``."""
        end_ns = (offset + samples) * 1_000_000_000 // self.rate
        if self.anchor_ns is None:
            self.anchor_ns = arrival_ns - end_ns
        elif arrival_ns - (self.anchor_ns + end_ns) > self.slack_ns:
            self.anchor_ns = arrival_ns - end_ns
            self.reanchors += 1
        return self.anchor_ns + offset * 1_000_000_000 // self.rate
