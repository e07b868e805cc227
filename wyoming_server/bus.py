"""The Wyoming server's side of the bus, on its asyncio loop: raw chunks out, results in.

Two zmq.asyncio sockets made by common.transport.sockets (so they get every stage's options:
bounded queues, linger, reconnect, heartbeats, MAXMSGSIZE, CURVE):

- an XPUB publishing each connection's ``raw`` messages (never blocks: a full subscriber queue
  drops, which convert counts as a gap); its subscription notices tell us when convert is there;
- a SUB subscribed to the result topics of our own streams only (``result/BB/wy-3/wakeword/``
  for each connection slot), so a worker that also serves other streams sends us none of theirs.

Every received message is validated (common.wire.codec.decode); a bad one is counted and
logged at a bounded rate, never passed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence

import zmq
import zmq.asyncio

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.transport.sockets import SocketOptions, open_socket, open_sub
from common.wire.codec import ProtocolError, decode
from common.wire.messages import Result

log = logging.getLogger("wyoming.bus")


class Bus:
    """Raw publisher and result subscriber of one Wyoming server."""

    def __init__(self, outputs: Sequence[str], inputs: Sequence[str], result_topics: Iterable[bytes],
                 opts: SocketOptions, metrics: StageMetrics) -> None:
        self.metrics = metrics
        self.ctx = zmq.asyncio.Context()
        self.raw = self.results = None
        try:
            self.raw = open_socket(self.ctx, zmq.XPUB, outputs, opts, default_bind=True)
            self.results = open_sub(self.ctx, inputs, result_topics, opts)
        except BaseException:
            self.close()
            raise
        self.subscribers = 0  # subscriptions seen on the raw publisher (convert subscribes once per prefix)
        self.received = 0  # valid results (the health file's "messages in")
        self.sent = 0
        self._bad = RateLimitedLog(log)

    async def send(self, messages: Sequence[bytes]) -> None:
        """Publish encoded raw messages (PUB semantics: dropped, not queued, when a subscriber is full)."""
        for m in messages:
            await self.raw.send(m, copy=len(m) < 65536)
        self.sent += len(messages)

    async def watch_subscriptions(self) -> None:
        """Read the raw publisher's (un)subscribe notices; log the first subscriber."""
        while True:
            note = await self.raw.recv()
            if note[:1] == b"\x01":
                if not self.subscribers:
                    log.info("raw subscriber joined (%r)", note[1:].decode(errors="replace"))
                self.subscribers += 1
            elif note[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    async def receive(self, dispatch: Callable[[Result], None]) -> None:
        """Validate every received message; hand each Result to ``dispatch``."""
        while True:
            data = await self.results.recv(copy=False)
            try:
                msg = decode(data.buffer)
            except ProtocolError as e:
                self.metrics.bad_message(e.reason)
                self._bad.warning(e.reason, f"rejected message: {e}")
                continue
            if not isinstance(msg, Result):
                self.metrics.bad_message("not_result")
                continue
            self.received += 1
            dispatch(msg)
            await asyncio.sleep(0)  # a burst of results never starves the connections

    def close(self) -> None:
        for s in (self.raw, self.results):
            if s is not None:
                s.close()
        self.ctx.term()
