"""The capture process: sources in threads, one publishing socket, heartbeats, watchdog.

Threads: each source runs in its own thread and writes into its StreamFramer; finished
frames go through one bounded queue to this module's loop, which alone owns the ZeroMQ
socket (sockets are not thread-safe). The loop also

- opens the gate for non-live sources (files, pipes, URLs, synth) once the first
  subscriber arrives or ``--wait-subscriber`` seconds pass, so nothing is published into
  the void ("slow joiner");
- publishes a heartbeat per stream every ``heartbeat_s`` (``hb/`` topic, empty payload,
  the stream's current epoch / next seq / next offset), so consumers can tell "alive but
  silent" from "dead";
- logs "stream X: no audio for N s" when a running source stops delivering (watchdog);
- when every source has ended (and not ``--loop``), lets the last frames leave and
  returns 0.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Sequence

import zmq

from capture.errors import CaptureError
from capture.framer import StreamFramer
from capture.sources.base import Source
from common.metrics import StageMetrics
from common.protocol import Flag, Header, Hop, Kind, encode
from common.publisher import Publisher
from common.sockets import SocketOptions
from common.stage import StopFlag

log = logging.getLogger("capture")

QUEUE_FRAMES = 512  # frames between source threads and the socket (~10 s of 20 ms frames)
END_LINGER_MS = 2000  # at exit, time libzmq gets to hand queued frames to subscribers


class SourceThread:
    """A source, its framer and the thread that runs it."""

    def __init__(self, source: Source, stop: StopFlag) -> None:
        self.source = source
        self.stop = stop
        self.thread = threading.Thread(target=self._main, name=f"src-{source.stream}", daemon=True)
        self.failed = False
        self.started_mono = 0.0
        self.last_audio_mono = 0.0
        self.next_watchdog_mono = 0.0
        self.next_heartbeat_mono = 0.0

    def start(self) -> None:
        self.started_mono = self.last_audio_mono = time.monotonic()
        self.thread.start()

    def _main(self) -> None:
        src = self.source
        try:
            src.run(self.stop)
        except CaptureError as e:
            self.failed = True
            src.set_state("failed", str(e))
            log.error("stream %s: %s", src.stream, e)
        except Exception:
            self.failed = True
            src.set_state("failed")
            log.exception("stream %s: source crashed", src.stream)
        finally:
            src.close()

    @property
    def started(self) -> bool:
        return self.started_mono > 0

    @property
    def done(self) -> bool:
        return self.started and not self.thread.is_alive()


class CaptureRunner:
    """Runs prepared sources and publishes their frames until they end or ``stop``."""

    def __init__(
        self,
        sources: Sequence[Source],
        outputs: Sequence[str],
        sockopts: SocketOptions,
        metrics: StageMetrics,
        frame_ms: float,
        wait_subscriber_s: float = 10.0,
        heartbeat_s: float = 1.0,
        watchdog_s: float = 5.0,
        fast: bool = False,
    ) -> None:
        self.sources = list(sources)
        self.outputs = list(outputs)
        self.sockopts = sockopts
        self.metrics = metrics
        self.frame_ms = frame_ms
        self.wait_subscriber_s = wait_subscriber_s
        self.heartbeat_s = heartbeat_s
        self.watchdog_s = watchdog_s
        self.fast = fast
        # (header, payload, time.time_ns() when the frame was complete): that time starts the capture hop
        self.q: queue.Queue[tuple[Header, bytes, int]] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._by_stream: dict[str, SourceThread] = {}

    def _sink(self, stop: StopFlag):
        def put(h: Header, payload: bytes) -> None:
            while not stop:
                try:
                    self.q.put((h, payload, time.time_ns()), timeout=0.1)
                    return
                except queue.Full:
                    continue

        return put

    def run(self, stop: StopFlag) -> int:
        """Prepare nothing (sources come prepared); publish until done. Returns the exit code."""
        ctx = zmq.Context()
        pub = None
        try:
            pub = Publisher(ctx, self.outputs, self.sockopts)
            threads = []
            for src in self.sources:
                src.framer = StreamFramer(
                    src.stream, src.fmt, self.frame_ms, src.description, self._sink(stop), hold_last=src.hold_last
                )
                threads.append(SourceThread(src, stop))
            self._by_stream = {t.source.stream: t for t in threads}
            log.info(
                "ready: %s -> %s",
                ", ".join(f"{s.stream}={s.description}" for s in self.sources),
                ", ".join(self.outputs),
            )
            try:
                return self._loop(pub, threads, stop)
            finally:
                stop.set()  # also on an error in the loop: sources must not outlive it
                for t in threads:  # let sources close devices and subprocesses before exit
                    if t.started:
                        t.thread.join(3.0)
        finally:
            if pub is not None:
                pub.close(linger_ms=END_LINGER_MS)
            ctx.term()

    def _loop(self, pub: Publisher, threads: list[SourceThread], stop: StopFlag) -> int:
        for t in threads:
            if t.source.live:
                t.start()
        gate_deadline = time.monotonic() + self.wait_subscriber_s
        gated = [t for t in threads if not t.source.live]
        if gated and self.wait_subscriber_s > 0:
            log.info("waiting up to %gs for a subscriber before starting %s", self.wait_subscriber_s,
                     ", ".join(t.source.stream for t in gated))
        while not stop:
            now = time.monotonic()
            if gated:
                pub.poll_subscriptions()
                if pub.subscriptions or now >= gate_deadline or self.wait_subscriber_s <= 0:
                    if not pub.subscriptions and self.wait_subscriber_s > 0:
                        log.warning("no subscriber after %gs; publishing anyway", self.wait_subscriber_s)
                    for t in gated:
                        t.start()
                    gated = []
            try:
                h, payload, t_ready = self.q.get(timeout=0.05 if gated else 0.1)
            except queue.Empty:
                pass
            else:
                self._publish(pub, h, payload, t_ready, stop)
                self._drain(pub, stop)
            self._housekeeping(pub, threads)
            if not stop and not gated and all(t.done for t in threads) and self.q.empty():
                failed = [t.source.stream for t in threads if t.failed]
                log.info("all sources ended%s; %s", f" ({', '.join(failed)} failed)" if failed else "",
                         self.metrics.summary())
                return 1 if failed else 0
        # stopped: publish what is already queued, then leave
        self._drain(pub, stop=None)
        log.info("stopped; %s", self.metrics.summary())
        return 0

    def _drain(self, pub: Publisher, stop: StopFlag | None, limit: int = 64) -> None:
        for _ in range(limit):
            try:
                h, payload, t_ready = self.q.get_nowait()
            except queue.Empty:
                return
            self._publish(pub, h, payload, t_ready, stop)

    def _publish(self, pub: Publisher, h: Header, payload: bytes, t_ready: int, stop: StopFlag | None) -> None:
        h.trace = [Hop("capture", t_ready, time.time_ns())]  # frame complete -> handed to ZeroMQ
        frames = encode(h, payload)
        sent = pub.send(frames)
        # With a no-drop publisher a full queue refuses the send: a fast file then waits for
        # its subscribers instead of losing frames (a live source never waits here).
        while not sent and self.fast and stop is not None and not stop:
            if pub.socket.poll(100, zmq.POLLOUT):
                sent = pub.send(frames)
        t = self._by_stream.get(h.stream)
        if t is not None:
            t.last_audio_mono = time.monotonic()
        if sent:
            self.metrics.frame_out(h.stream)
        else:
            self.metrics.drop("send_queue_full")
        if h.flags & Flag.OVERFLOW:
            self.metrics.event("overflow")
        if h.flags & Flag.DISCONTINUITY:
            self.metrics.event("discontinuity")

    def _housekeeping(self, pub: Publisher, threads: list[SourceThread]) -> None:
        now = time.monotonic()
        for t in threads:
            src = t.source
            if not t.started or src.framer is None:
                continue
            position = src.framer.try_position() if now >= t.next_heartbeat_mono else None
            if position is not None:  # None: its source is busy publishing, the heartbeat can wait
                t.next_heartbeat_mono = now + self.heartbeat_s
                epoch, seq, offset = position
                fmt = src.framer.fmt
                hb = Header(
                    kind=Kind.HEARTBEAT,
                    stream=src.stream,
                    epoch=epoch,
                    seq=seq,
                    t_capture_ns=time.time_ns(),
                    rate=fmt.rate,
                    channels=fmt.channels,
                    format=fmt.format,
                    frames=0,
                    offset=offset,
                    source=f"{src.description} [{src.state}]"[:256],
                )
                pub.send(encode(hb))
            silent = now - t.last_audio_mono
            if src.state not in ("ended", "failed") and silent >= self.watchdog_s and now >= t.next_watchdog_mono:
                t.next_watchdog_mono = now + self.watchdog_s
                log.warning("stream %s: no audio for %.0f s (%s)", src.stream, silent, src.state)
                self.metrics.event("watchdog")
        self.metrics.maybe_log_summary()
