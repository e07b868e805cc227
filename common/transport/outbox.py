"""The sending side of every stage: an XPUB socket that knows whether anyone listens.

XPUB behaves exactly like PUB for subscribers, but also hands us their subscriptions.
That lets a file source wait for its first subscriber instead of publishing into the
void (ZeroMQ's "slow joiner"), and lets launchers see that a link is up: the first
subscription is logged as ``subscriber joined``.

A full subscriber queue (HWM) drops that subscriber's messages inside libzmq, silently;
the subscriber counts them as a sequence gap. With ``nodrop`` (files, replay: sources that
can wait) a full queue refuses the send instead, and the sender waits or counts it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import zmq

from common.observe.metrics import StageMetrics
from common.transport.inbox import Poller
from common.transport.links import LinkWatch
from common.transport.sockets import SocketOptions, open_socket, split_endpoint

log = logging.getLogger("soundbus.outbox")

MAX_SUBSCRIPTIONS = 4096  # distinct topics remembered (a peer could send any number)


class Outbox:
    """Sends encoded messages (one part each); tracks subscriptions seen on its XPUB socket."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: Iterable[str],
        opts: SocketOptions,
        metrics: StageMetrics,
        poller: Poller | None = None,
    ) -> None:
        endpoints = list(endpoints)
        self.metrics = metrics
        connects = [addr for bind, addr in (split_endpoint(e, True) for e in endpoints) if not bind]

        def prepare(sock: zmq.Socket) -> None:  # before bind/connect: no handshake goes unseen
            # Every subscriber's subscriptions are passed up, not only new topics: ``joined`` counts
            # them, so a source can wait for N subscribers (two converters of one capture, say).
            sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            self.links = LinkWatch(sock, "output", connects, metrics, curve=opts.curve is not None)

        try:
            self.socket = open_socket(ctx, zmq.XPUB, endpoints, opts, default_bind=True, before_links=prepare)
        except BaseException:
            if hasattr(self, "links"):  # a bind that failed: the monitor must not hold ctx.term()
                self.links.close()
            raise
        self.nodrop = opts.nodrop
        self.linger_ms = opts.linger_ms
        self.subscriptions: set[bytes] = set()
        self.joined = 0  # subscribe notices seen (with XPUB_VERBOSE: one per subscriber and topic)
        self.sent = 0
        self.refused = 0  # sends refused by a full queue (nodrop only)
        if poller is not None:
            poller.watch(self.socket, self.poll_subscriptions)
            poller.watch(self.links.monitor, self.links.process)

    def poll_subscriptions(self) -> None:
        """Read pending (un)subscribe notices without blocking."""
        while True:
            try:
                note = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not note:
                continue
            topic = note[1:]
            if note[0] == 1:
                self.joined += 1
                if not self.subscriptions:
                    log.info("subscriber joined (%r)", topic.decode(errors="replace"))
                if len(self.subscriptions) < MAX_SUBSCRIPTIONS:
                    self.subscriptions.add(topic)
            elif note[0] == 0:
                self.subscriptions.discard(topic)

    def wait_for_subscriber(self, timeout_s: float, stop: object = None) -> bool:
        """Block until at least one subscription arrives (or ``timeout_s`` passes, or ``stop``)."""
        deadline = time.monotonic() + timeout_s
        while not self.subscriptions:
            if stop or time.monotonic() >= deadline:
                return bool(self.subscriptions)
            if self.socket.poll(50, zmq.POLLIN):
                self.poll_subscriptions()
        return True

    def send(self, data: bytes) -> bool:
        """Send one message; False if a full queue refused it (only with nodrop; never blocks)."""
        try:
            self.socket.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.Again:
            self.refused += 1
            self.metrics.drop("send_refused")
            return False
        self.sent += 1
        return True

    def send_all(self, messages: Sequence[bytes]) -> int:
        """Send a burst; returns how many left (the others were refused and counted)."""
        sock = self.socket
        sent = 0
        for data in messages:
            try:
                sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
                sent += 1
            except zmq.Again:
                self.refused += 1
                self.metrics.drop("send_refused")
        self.sent += sent
        return sent

    def close(self, linger_ms: int | None = None) -> None:
        """Close; queued messages get ``linger_ms`` to leave (default: the socket's LINGER)."""
        self.links.close()
        self.socket.close(linger=linger_ms)
