"""What every source shares: options, state reported to the runner, pacing and backoff.

A source is prepared in the main thread (so a user's mistake fails before anything
runs, with one clear sentence) and then runs in its own thread, writing samples into
its :class:`~capture.framer.StreamFramer`. It never touches a socket: the runner's
thread publishes whatever the framers emit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from capture.framer import StreamFormat, StreamFramer
from capture.spec import SourceSpec
from common.stage import StopFlag

log = logging.getLogger("capture")


@dataclass
class CaptureOptions:
    """Flags that apply to every source. ``rate``/``channels``/``format`` None: the source's own."""

    frame_ms: float = 20.0
    fast: bool = False  # files and synth: as fast as possible instead of real time
    loop: bool = False  # finite sources: start over (new epoch) at the end
    rate: int | None = None
    channels: int | None = None
    format: str | None = None
    watchdog_s: float = 5.0  # "no audio for N s" after this long; devices reopen
    backoff_max_s: float = 30.0
    duration_s: float | None = None  # synth: stop after this long (END flag)


class Source:
    """Base class. Subclasses set ``fmt`` in :meth:`prepare` and implement :meth:`run`.

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
        self.state = "new"  # new / running / reconnecting / ended / failed
        self._why = ""
        self.restarts = 0

    def prepare(self) -> None:
        """Check everything the user asked for; raise CaptureError with what to do. Main thread."""

    def run(self, stop: StopFlag) -> None:
        """Thread body: produce samples into ``self.framer`` until the end or ``stop``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release OS resources (streams, subprocesses). Safe to call twice."""

    def set_state(self, state: str, why: str = "") -> None:
        """Record and log a state change (also a repeated state with a new reason, e.g. each retry)."""
        if (state, why) != (self.state, self._why):
            level = logging.WARNING if state in ("reconnecting", "failed") else logging.INFO
            log.log(level, "stream %s: %s%s", self.stream, state, f" ({why})" if why else "")
        self.state, self._why = state, why


class Pacer:
    """Real-time pacing for sources that could go faster (files, synth).

    Data for samples [0, n) is released when n / rate seconds have passed since start,
    i.e. when the last sample "would have been captured".
    """

    def __init__(self, rate: int, fast: bool) -> None:
        self.rate = rate
        self.fast = fast
        self.start_mono = time.monotonic()
        self.start_wall_ns = time.time_ns()

    def restart(self) -> None:
        self.start_mono = time.monotonic()
        self.start_wall_ns = time.time_ns()

    def t_of(self, offset: int) -> int:
        """Wall-clock ns assigned to sample ``offset`` (start time + offset / rate)."""
        return self.start_wall_ns + offset * 1_000_000_000 // self.rate

    def wait_until(self, end_offset: int, stop: StopFlag) -> bool:
        """Sleep until sample ``end_offset`` is due; False if stopped meanwhile."""
        if self.fast:
            return not stop
        due = self.start_mono + end_offset / self.rate
        while True:
            left = due - time.monotonic()
            if left <= 0:
                return not stop
            if stop.wait(min(left, 0.2)):
                return False


class Backoff:
    """Exponential backoff for reopening a device or restarting ffmpeg: 0.5, 1, 2, ... capped."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.next_s = first_s

    def reset(self) -> None:
        self.next_s = self.first_s

    def wait(self, stop: StopFlag) -> bool:
        """Sleep the current delay, double it; False if stopped meanwhile."""
        delay = self.next_s
        self.next_s = min(self.next_s * 2, self.max_s)
        return not stop.wait(delay)


def split_whole_frames(pending: bytes, chunk: bytes, bytes_per_frame: int) -> tuple[bytes, bytes]:
    """(whole frames, remainder) of ``pending + chunk``: a byte stream (pipe, ffmpeg) cut at frame
    boundaries, the partial frame carried to the next read."""
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

    def t_of(self, offset: int, frames: int, arrival_ns: int) -> int:
        """Wall-clock ns of sample ``offset`` for a block of ``frames`` samples that arrived at ``arrival_ns``."""
        end_ns = (offset + frames) * 1_000_000_000 // self.rate
        if self.anchor_ns is None:
            self.anchor_ns = arrival_ns - end_ns
        elif arrival_ns - (self.anchor_ns + end_ns) > self.slack_ns:
            self.anchor_ns = arrival_ns - end_ns
            self.reanchors += 1
        return self.anchor_ns + offset * 1_000_000_000 // self.rate
