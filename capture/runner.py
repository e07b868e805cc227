"""The capture process: every source of the process on one loop, one queue, one publisher.

Capture runs on the shared runtime (common.runtime.stage) like every stage. Its input is
:class:`SourceQueue`: PortAudio callbacks (their own threads) and readable file
descriptors (stdin, ffmpeg) put blocks on one queue, and a pipe wakes the loop. Its logic,
:class:`CaptureLogic`, frames what arrives, produces what paced sources (files, synth)
owe by the loop's one clock, and encodes raw messages; the runtime sends each wake-up's
messages as one burst. There is no thread, queue or lock per source.

The logic also

- opens the gate for non-live sources (files, pipes, URLs, synth) once ``--subscribers``
  subscribers (default 1) have joined or ``--wait-subscriber`` seconds pass, so nothing is
  published into the void and no converter misses the start;
- publishes a heartbeat per stream every ``heartbeat_s`` (``hb/`` topic: the stream's
  epoch, next seq and offset, and state), so consumers can tell "alive but silent" from "dead";
- logs "stream X: no audio for N s" when a running source stops delivering (watchdog);
- stops the loop when every source has ended (and not ``--loop``): exit 0, or 1 if one failed.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from capture.framer import Chunk, StreamFramer
from capture.sources.base import Loop, Source
from common.observe.metrics import StageMetrics
from common.runtime.stage import Now, Runtime, StopFlag
from common.transport.inbox import MAX_BATCH, Poller
from common.transport.sockets import SocketOptions
from common.wire.codec import encode, encode_audio
from common.wire.messages import Flag, Heartbeat, HeartbeatState, Hop, SampleFormat
from common.wire.topics import Kind

log = logging.getLogger("capture")

STAGE = "capture"
_OVERFLOW, _DISCONTINUITY = int(Flag.OVERFLOW), int(Flag.DISCONTINUITY)  # plain ints: enum ops cost per chunk
END_LINGER_MS = 2000  # at exit, time libzmq gets to hand queued chunks to subscribers


class SourceQueue:
    """Capture's input: blocks from any thread (``put``), and fds read by the loop, on one queue.

    A put from another thread wakes the loop through a pipe; the write happens only when the
    loop is not already awake, so a burst of callbacks costs one wake-up.
    """

    def __init__(self, poller: Poller) -> None:
        self.poller = poller
        self.q: collections.deque[Any] = collections.deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._signalled = False
        poller.watch(self._r, self._woken)
        self.received = 0
        self.loop = Loop(poller.watch, poller.unwatch, self.put)

    def put(self, item: Any) -> None:
        """Any thread: queue ``item`` and make sure the loop wakes."""
        self.q.append(item)
        if not self._signalled:
            self._signalled = True
            try:
                os.write(self._w, b"\0")
            except BlockingIOError:  # the pipe is full of wake-ups already
                pass

    def _woken(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        self._signalled = False  # after reading: a put from now on writes again

    def receive(self, timeout_s: float, gather_s: float = 0.0, limit: int = MAX_BATCH) -> list[Any]:
        if not self.q:
            self.poller.wait(timeout_s)
        out = []
        q = self.q
        while q and len(out) < limit:
            out.append(q.popleft())
        self.received += len(out)
        return out

    def housekeeping(self) -> None:
        pass

    def close(self) -> None:
        self.poller.unwatch(self._r)
        os.close(self._r)
        os.close(self._w)


class CaptureLogic:
    """Sources' blocks -> framed, encoded raw messages and heartbeats (see the module docstring)."""

    def __init__(self, sources: Sequence[Source], loop: Loop, metrics: StageMetrics, stop: StopFlag,
                 chunk_ms: float, has_subscriber: Callable[[], bool], wait_subscriber_s: float = 10.0,
                 heartbeat_s: float = 1.0, watchdog_s: float = 5.0) -> None:
        self.sources = list(sources)
        self.loop, self.metrics, self.stop = loop, metrics, stop
        self.has_subscriber = has_subscriber
        self.heartbeat_s, self.watchdog_s = heartbeat_s, watchdog_s
        for src in self.sources:
            src.framer = StreamFramer(src.stream, src.fmt, chunk_ms, src.description, hold_last=src.hold_last)
        self.gated = [s for s in self.sources if not s.live]
        self.gate_deadline = time.monotonic() + wait_subscriber_s
        self.wait_subscriber_s = wait_subscriber_s
        self.next_heartbeat = 0.0
        self.watch_next: dict[str, float] = {}
        self.exit_code = 0
        self._started: list[Source] = []

    def begin(self, now: Now) -> list[bytes]:
        """Start the live sources at once; the others wait for the gate."""
        out: list[bytes] = []
        if self.gated and self.wait_subscriber_s > 0:
            log.info("waiting up to %gs for a subscriber before starting %s", self.wait_subscriber_s,
                     ", ".join(s.stream for s in self.gated))
        for src in self.sources:
            if src.live:
                out += self._start(src, now)
        return out

    def _start(self, src: Source, now: Now) -> list[bytes]:
        src.last_audio = now.mono
        self._started.append(src)
        return self._encode(src, src.start(self.loop, now.mono), now)

    # -- the batch ---------------------------------------------------------------------------

    def handle(self, batch: list[Any], now: Now) -> list[bytes]:
        out: list[bytes] = []
        for src, item in batch:
            out += self._encode(src, src.on_item(item, now.mono), now)
        return out + self.tick(now)

    def tick(self, now: Now) -> list[bytes]:
        out: list[bytes] = []
        if self.gated and (self.has_subscriber() or now.mono >= self.gate_deadline or self.wait_subscriber_s <= 0):
            if not self.has_subscriber() and self.wait_subscriber_s > 0:
                log.warning("not every subscriber joined after %gs; publishing anyway", self.wait_subscriber_s)
            for src in self.gated:
                out += self._start(src, now)
            self.gated = []
        for src in self._started:
            out += self._encode(src, src.tick(now.mono), now)
        if now.mono >= self.next_heartbeat:
            self.next_heartbeat = now.mono + self.heartbeat_s
            out += self._heartbeats(now)
            self._watchdog(now)
        if not self.gated and all(s.done for s in self.sources) and not self.stop:
            failed = [s.stream for s in self.sources if s.failed]
            log.info("all sources ended%s; %s", f" ({', '.join(failed)} failed)" if failed else "",
                     self.metrics.summary())
            self.exit_code = 1 if failed else 0
            self.stop.set()
        return out

    def wake_in(self, now: Now) -> float | None:
        due = [d for d in (s.due_in(now.mono) for s in self._started) if d is not None]
        due.append(self.next_heartbeat - now.mono)
        if self.gated:
            due.append(0.05 if self.wait_subscriber_s > 0 else 0.0)
        return min(due)

    def _encode(self, src: Source, chunks: list[Chunk], now: Now) -> list[bytes]:
        if not chunks:
            return []
        src.last_audio = now.mono
        out = []
        t_out = time.time_ns()
        for h, payload in chunks:
            h.trace = [Hop(STAGE, now.wall_ns, t_out)]  # block in hand -> handed to ZeroMQ
            out.append(encode_audio(Kind.RAW, h, payload))
            self.metrics.frame_out(h.stream)
            if h.flags:
                if h.flags & _OVERFLOW:
                    self.metrics.event("overflow")
                if h.flags & _DISCONTINUITY:
                    self.metrics.event("discontinuity")
        return out

    def _heartbeats(self, now: Now) -> list[bytes]:
        out = []
        for src in self._started:
            epoch, seq, offset = src.framer.position()
            fmt = src.framer.fmt
            out.append(encode(Heartbeat(
                stream=src.stream, epoch=epoch, next_seq=seq, next_offset=offset, t_ns=now.wall_ns, rate=fmt.rate,
                channels=fmt.channels, format=SampleFormat(fmt.format), state=src.state,
                source=src.description[:256],
            )))
        return out

    def _watchdog(self, now: Now) -> None:
        for src in self._started:
            silent = now.mono - src.last_audio
            if src.state is HeartbeatState.RUNNING and silent >= self.watchdog_s \
                    and now.mono >= self.watch_next.get(src.stream, 0.0):
                self.watch_next[src.stream] = now.mono + self.watchdog_s
                log.warning("stream %s: no audio for %.0f s (%s)", src.stream, silent, src.state.value)
                self.metrics.event("watchdog")

    def finish(self, now: Now) -> list[bytes]:
        for src in self.sources:
            src.close()
        return []

    def summary(self) -> str:
        return ""


def run(sources: Sequence[Source], outputs: Sequence[str], sockopts: SocketOptions, metrics: StageMetrics,
        chunk_ms: float, wait_subscriber_s: float = 10.0, heartbeat_s: float = 1.0, watchdog_s: float = 5.0,
        health_file=None, stop: StopFlag | None = None, subscribers: int = 1) -> int:
    """Run prepared sources and publish their chunks until they end or a signal stops it. Exit code."""
    stop = stop if stop is not None else StopFlag()
    sockopts.linger_ms = END_LINGER_MS  # let the last chunks leave at exit
    with Runtime(STAGE, metrics, stop, health_file) as rt:
        queue = SourceQueue(rt.poller)
        rt.adopt(queue)
        outbox = rt.outbox(outputs, sockopts)
        logic = CaptureLogic(sources, queue.loop, metrics, stop, chunk_ms, lambda: outbox.joined >= subscribers,
                             wait_subscriber_s, heartbeat_s, watchdog_s)
        log.info("ready: %s -> %s", ", ".join(f"{s.stream}={s.description}" for s in sources), ", ".join(outputs))
        try:
            first = logic.begin(Now.read())
            if first:
                outbox.send_all(first)
            rt.run(logic, queue, outbox)
        finally:
            for src in sources:  # also on an error: devices and subprocesses must not outlive us
                src.close()
    return logic.exit_code
