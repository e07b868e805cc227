"""What every stage's loop shares: validated receive, gap accounting, clean shutdown.

A stage is ``while not stop: msg = receiver.recv(timeout); ...``. The receiver
validates each message (common.protocol.decode) and counts and logs a bad one instead
of raising, so a hostile or broken peer can never crash a stage or touch its
per-stream state. Sequence numbers are checked per (stream, epoch) by SequenceTracker.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.metrics import StageMetrics
from common.protocol import Flag, Message, ProtocolError, decode

log = logging.getLogger(__name__)


def setup_logging(verbose: int = 0) -> None:
    """Log lines to stderr: time, stage, level, message."""
    level = logging.WARNING if verbose < 0 else logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


class StopFlag:
    """Set by SIGINT/SIGTERM; loops poll it between receives so shutdown never hangs."""

    def __init__(self, install: bool = True) -> None:
        self._event = threading.Event()
        if install and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


class Continuity(Enum):
    """How a message relates to the previous one of its stream."""

    FIRST = "first"  # first message seen of this stream
    NEXT = "next"  # seq == previous + 1, same epoch
    GAP = "gap"  # seq jumped forward: messages were lost
    NEW_EPOCH = "new_epoch"  # the source restarted
    RESTART = "restart"  # seq went back on a DISCONTINUITY-flagged message: its publisher restarted
    STALE = "stale"  # seq <= previous (duplicate or reordered): drop it


@dataclass
class StreamPosition:
    """Where one stream is: its epoch and the last sequence number accepted."""

    epoch: int
    seq: int
    last_seen: float  # time.monotonic() of the last accepted message


class SequenceTracker:
    """Gap accounting per stream: compares each (epoch, seq) with the last one accepted."""

    def __init__(self, metrics: StageMetrics | None = None) -> None:
        self.positions: dict[str, StreamPosition] = {}
        self.metrics = metrics

    def check(self, stream: str, epoch: int, seq: int, discontinuity: bool = False) -> tuple[Continuity, int]:
        """Classify a message and record it; returns (continuity, number of messages missing).

        ``discontinuity``: the message carries Flag.DISCONTINUITY. A publisher that restarted
        within an epoch (a converter after kill -9) may number from a lower seq; such a message
        is accepted as RESTART instead of being dropped as stale.
        """
        now = time.monotonic()
        pos = self.positions.get(stream)
        if pos is None:
            self.positions[stream] = StreamPosition(epoch, seq, now)
            return Continuity.FIRST, 0
        if epoch != pos.epoch:
            self.positions[stream] = StreamPosition(epoch, seq, now)
            if self.metrics:
                self.metrics.event("epoch_change")
            return Continuity.NEW_EPOCH, 0
        if seq <= pos.seq and discontinuity:
            self.positions[stream] = StreamPosition(epoch, seq, now)
            if self.metrics:
                self.metrics.event("seq_restart")
            log.warning("stream %s: sequence restarted at %d (publisher restarted)", stream, seq)
            return Continuity.RESTART, 0
        if seq <= pos.seq:
            if self.metrics:
                self.metrics.drop("stale_seq")
            return Continuity.STALE, 0
        missing = seq - pos.seq - 1
        pos.seq, pos.last_seen = seq, now
        if missing:
            if self.metrics:
                self.metrics.gap(stream, missing)
            log.warning("stream %s: %d message(s) missing before seq %d", stream, missing, seq)
            return Continuity.GAP, missing
        return Continuity.NEXT, 0

    def silent_streams(self, older_than_s: float) -> list[str]:
        """Streams with no accepted message for ``older_than_s`` seconds (for watchdogs)."""
        now = time.monotonic()
        return [s for s, p in self.positions.items() if now - p.last_seen > older_than_s]


class RateLimitedLog:
    """Logs the first few occurrences of each key, then one line per ``every_s`` with a count."""

    def __init__(self, logger: logging.Logger, every_s: float = 5.0, burst: int = 3) -> None:
        self.logger, self.every_s, self.burst = logger, every_s, burst
        self._seen: dict[str, tuple[int, float, int]] = {}  # key -> (count, last log time, suppressed)

    def warning(self, key: str, msg: str) -> None:
        now = time.monotonic()
        count, last, suppressed = self._seen.get(key, (0, 0.0, 0))
        count += 1
        if count <= self.burst or now - last >= self.every_s:
            more = f" ({suppressed} similar suppressed)" if suppressed else ""
            self.logger.warning("%s%s", msg, more)
            self._seen[key] = (count, now, 0)
        else:
            self._seen[key] = (count, last, suppressed + 1)


class Receiver:
    """Receives and validates messages from a set of sockets; bad ones are counted, not raised.

    It also watches each socket's connection events (a ZeroMQ socket monitor) and logs
    ``input connected``/``input disconnected``, so a launcher can wait for a link and an
    operator can see a producer go away.
    """

    _EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED

    def __init__(self, sockets: Iterable[zmq.Socket], metrics: StageMetrics, watchdog_s: float = 5.0) -> None:
        self.sockets = list(sockets)
        self.metrics = metrics
        # Watchdog: a stream with no message for watchdog_s (and no END) is reported once as silent.
        self.watchdog_s = watchdog_s
        self.last_seen: dict[str, float] = {}  # stream -> time.monotonic() of its last message
        self.silent: dict[str, float] = {}  # stream -> when it went silent
        self._next_watch = time.monotonic() + 1.0
        self.poller = zmq.Poller()
        for s in self.sockets:
            self.poller.register(s, zmq.POLLIN)
        self.monitors: list[zmq.Socket] = []
        for s in self.sockets:
            mon = s.get_monitor_socket(self._EVENTS)
            self.monitors.append(mon)
            self.poller.register(mon, zmq.POLLIN)
        self.connected = 0  # peers currently connected, over all sockets
        self._ready: list[zmq.Socket] = []
        self._badlog = RateLimitedLog(log)

    def recv(self, timeout_ms: int) -> Message | None:
        """The next valid message, or None after ``timeout_ms`` (or on a bad message)."""
        if self.watchdog_s > 0 and time.monotonic() >= self._next_watch:
            self._watch()
        frames = None
        while frames is None:
            if not self._ready:
                events = self.poller.poll(timeout_ms)
                ready = [s for s, _ in events]
                for mon in self.monitors:
                    if mon in ready:
                        self._connection_events(mon)
                self._ready = [s for s in ready if s not in self.monitors]
                if not self._ready:
                    return None
                timeout_ms = 0  # polled once: a socket that turns out empty ends this call
            # A ready socket stays ready until a receive finds it empty: one failed receive per
            # drained queue costs less than asking ZMQ_EVENTS after every message.
            try:
                frames = self._ready[-1].recv_multipart(copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                self._ready.pop()
        try:
            msg = decode(frames)
        except ProtocolError as e:
            self.metrics.bad_message(e.reason)
            self._badlog.warning(e.reason, f"rejected message: {e}")
            return None
        h = msg.header
        now = time.monotonic()
        if h.flags & Flag.END:
            self.last_seen.pop(h.stream, None)  # ended on purpose: not a silent producer
        else:
            self.last_seen[h.stream] = now
        if self.silent and h.stream in self.silent:
            log.info("stream %s: messages again after %.1f s of silence", h.stream, now - self.silent.pop(h.stream))
        trace = h.trace
        if trace and self.metrics.exporting:
            # transport latency of the hop that just ended: previous stage's send -> our receive
            self.metrics.latency(f"{trace[-1].stage}->{self.metrics.stage}", (time.time_ns() - trace[-1].t_out_ns) / 1e9)
            self.metrics.latency(trace[-1].stage, (trace[-1].t_out_ns - trace[-1].t_in_ns) / 1e9)
        return msg

    def _watch(self) -> None:
        now = time.monotonic()
        self._next_watch = now + 1.0
        for stream, seen in self.last_seen.items():
            if now - seen >= self.watchdog_s and stream not in self.silent:
                self.silent[stream] = seen
                self.metrics.event("silent_stream")
                log.warning("stream %s: no messages for %.0f s (its producer is silent or gone)", stream, now - seen)

    def _connection_events(self, mon: zmq.Socket) -> None:
        while mon.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            endpoint = ev.get("endpoint", b"")
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected += 1
                log.info("input connected %s (peers=%d)", endpoint, self.connected)
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self.connected = max(0, self.connected - 1)
                log.warning("input disconnected %s (peers=%d)", endpoint, self.connected)
                self.metrics.event("input_disconnected")

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the monitors (the stage closes its own sockets). Required before ctx.term():
        an open monitor socket would make it wait forever; ``with Receiver(...)`` does it."""
        for s, mon in zip(self.sockets, self.monitors):
            try:
                s.disable_monitor()
            except zmq.ZMQError:
                pass
            mon.close(linger=0)
