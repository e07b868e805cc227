"""The receiving side of every stage: one SUB socket, every message validated, bad ones counted.

``Inbox.receive`` waits for messages, then drains everything queued (up to a limit) and
returns it as one batch, so a stage handles all the work of a wake-up at once. A message
that fails validation (common.wire.codec) is counted by reason and logged at a bounded
rate; it never reaches a stage's logic or its per-stream state.

It also reports a stream that stops sending (no message for ``watchdog_s`` and no END) once,
and its return.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import zmq

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.transport.links import LinkWatch
from common.transport.sockets import SocketOptions, open_sub, split_endpoint
from common.wire.codec import Audio, Message, ProtocolError, decode, decode_parts
from common.wire.messages import Flag, HeartbeatState

log = logging.getLogger("soundbus.inbox")

MAX_BATCH = 4096  # messages handed to a stage per wake-up (bounds one turn's latency and memory)
MAX_WATCHED = 8192  # streams the silence watchdog remembers
_ENDED = (HeartbeatState.ENDED, HeartbeatState.FAILED)
_END = int(Flag.END)  # a plain int: `flags & Flag.END` builds an IntFlag (~1-2 us a message)


class Poller:
    """A zmq.Poller whose sockets each have a handler; the stage's loop waits on all of them."""

    def __init__(self) -> None:
        self.poller = zmq.Poller()
        self.handlers: dict[object, Callable[[], None]] = {}

    def watch(self, sock: zmq.Socket | int, handler: Callable[[], None]) -> None:
        """Call ``handler()`` when ``sock`` (a socket or a file descriptor) is readable."""
        self.poller.register(sock, zmq.POLLIN)
        self.handlers[sock] = handler

    def unwatch(self, sock: zmq.Socket | int) -> None:
        self.poller.unregister(sock)
        self.handlers.pop(sock, None)

    def wait(self, timeout_s: float) -> list[object]:
        """Wait up to ``timeout_s``; run the handlers of ready sockets; return the ready sockets."""
        ready = [s for s, _ in self.poller.poll(max(0, int(timeout_s * 1000 + 0.999)))]
        for s in ready:
            handler = self.handlers.get(s)
            if handler is not None:
                handler()
        return ready


class Inbox:
    """Validated messages from ``endpoints`` whose topics start with one of ``prefixes``."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: Iterable[str],
        prefixes: Iterable[bytes],
        opts: SocketOptions,
        metrics: StageMetrics,
        poller: Poller,
        watchdog_s: float = 5.0,
        keep_bytes: bool = False,
    ) -> None:
        endpoints = list(endpoints)
        self.keep_bytes = keep_bytes  # receive() returns (message, its exact bytes) pairs (the recorder)
        self.metrics = metrics
        connects = [addr for bind, addr in (split_endpoint(e, False) for e in endpoints) if not bind]

        def watch(sock: zmq.Socket) -> None:  # before connecting: no handshake goes unseen
            self.links = LinkWatch(sock, "input", connects, metrics, curve=opts.curve is not None)

        try:
            self.sock = open_sub(ctx, endpoints, prefixes, opts, before_links=watch)
        except BaseException:
            if hasattr(self, "links"):  # a bind that failed: the monitor must not hold ctx.term()
                self.links.close()
            raise
        self.poller = poller
        poller.watch(self.links.monitor, self.links.process)
        poller.watch(self.sock, lambda: None)
        self.watchdog_s = watchdog_s
        self.last_seen: dict[str, float] = {}  # stream -> time.monotonic() of its last message
        self.silent: dict[str, float] = {}  # stream -> when it went silent
        self.received = 0  # valid messages, ever
        self._bad_log = RateLimitedLog(log)
        self.clock = time.monotonic  # the gather deadline's clock (tests give explicit values)

    @property
    def connected(self) -> int:
        """Peers currently connected."""
        return self.links.connected

    def receive(self, timeout_s: float, gather_s: float = 0.0, limit: int = MAX_BATCH) -> list[Message]:
        """Wait up to ``timeout_s`` for messages; return every one queued (at most ``limit``).

        ``gather_s`` > 0: after the first message, keep collecting for up to that long, so
        messages that arrive a little apart (streams sent in turn) make one batch. An empty
        list means nothing arrived yet, not the end: it can come before ``timeout_s`` when the
        poller wakes for something else (the link monitor).
        """
        out: list[Message] = []
        if self.sock not in self.poller.wait(timeout_s) and not self._ready():
            return out
        self._drain(out, limit)
        if gather_s > 0 and out:
            deadline = self.clock() + gather_s
            while len(out) < limit:
                left = deadline - self.clock()
                if left <= 0:
                    break
                if self.sock in self.poller.wait(left) or self._ready():
                    self._drain(out, limit)
        return out

    def _ready(self) -> bool:
        return bool(self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)

    def _drain(self, out: list[Message], limit: int) -> None:
        sock = self.sock
        now = time.monotonic()
        last_seen = self.last_seen
        while len(out) < limit:
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                if frame.more:
                    msg = decode_parts([frame.bytes, *sock.recv_multipart(zmq.NOBLOCK)])
                else:
                    msg = decode(frame.buffer)
            except ProtocolError as e:
                self.metrics.bad_message(e.reason)
                self._bad_log.warning(e.reason, f"rejected message: {e}")
                continue
            except zmq.Again:  # a multipart message always arrives whole; this cannot happen
                continue
            out.append((msg, frame.bytes) if self.keep_bytes else msg)
            self.received += 1
            if type(msg) is Audio:
                stream, ended = msg.header.stream, msg.header.flags & _END
            else:  # a Result carries END too; a heartbeat says ENDED/FAILED; stored events have no end
                stream, ended = msg.stream, getattr(msg, "flags", 0) & _END or getattr(msg, "state", None) in _ENDED
            if ended:
                last_seen.pop(stream, None)  # ended on purpose: not a silent producer
            else:
                if stream not in last_seen and len(last_seen) >= MAX_WATCHED:
                    last_seen.pop(next(iter(last_seen)))
                last_seen[stream] = now
            if self.silent and stream in self.silent:
                self._bad_log.log(logging.INFO, "unsilent",
                                  f"stream {stream}: messages again after {now - self.silent.pop(stream):.1f} s of silence")
            if self.metrics.exporting and type(msg) is Audio and msg.header.trace:
                hop = msg.header.trace[-1]
                self.metrics.latency(f"{hop.stage}->{self.metrics.stage}", (time.time_ns() - hop.t_out_ns) / 1e9)

    def housekeeping(self) -> None:
        """Once a second: reconnect links libzmq gave up on; report streams gone silent."""
        self.links.tick()
        if self.watchdog_s <= 0:
            return
        now = time.monotonic()
        for stream, seen in self.last_seen.items():
            if now - seen >= self.watchdog_s and stream not in self.silent:
                if len(self.silent) >= MAX_WATCHED:
                    self.silent.clear()
                self.silent[stream] = seen
                self.metrics.event("silent_stream")
                self._bad_log.warning("silent_stream", f"stream {stream}: no messages for {now - seen:.0f} s "
                                                       "(its producer is silent or gone)")

    def close(self) -> None:
        """Stop the monitor and close the socket (before ctx.term())."""
        self.links.close()
        self.sock.close()
