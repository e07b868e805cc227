"""The sending side of every stage: an XPUB socket that knows whether anyone listens.

XPUB behaves exactly like PUB for subscribers, but also hands us their subscriptions.
That lets a file source wait for its first subscriber instead of publishing into the
void (ZeroMQ's "slow joiner"), and lets launchers see that a link is up: the first
subscription is logged as ``subscriber joined``.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import zmq

from common.sockets import SocketOptions, open_socket

log = logging.getLogger(__name__)


class Publisher:
    """Sends protocol messages; tracks subscriptions seen on its XPUB socket."""

    def __init__(self, ctx: zmq.Context, endpoints: Iterable[str], opts: SocketOptions | None = None) -> None:
        self.socket = open_socket(ctx, zmq.XPUB, endpoints, opts, default_bind=True)
        self.subscriptions: set[bytes] = set()
        self.sent = 0
        # Sends refused because a subscriber's queue was full. Only with SocketOptions.nodrop:
        # otherwise XPUB drops silently at the HWM and the loss shows downstream as a seq gap.
        self.dropped = 0

    def poll_subscriptions(self) -> None:
        """Read pending (un)subscribe notices without blocking."""
        while self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                note = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not note:
                continue
            topic = note[1:]
            if note[0] == 1:
                if not self.subscriptions:
                    log.info("subscriber joined (%r)", topic.decode(errors="replace"))
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

    def send(self, frames: Sequence[bytes | memoryview]) -> bool:
        """Send one multipart message; False if a full queue refused it (never blocks)."""
        if self.sent % 64 == 0:
            self.poll_subscriptions()
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self, linger_ms: int | None = None) -> None:
        """Close; queued messages get ``linger_ms`` to leave (default: the socket's LINGER)."""
        self.socket.close(linger=linger_ms)
