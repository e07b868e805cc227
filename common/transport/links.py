"""What happens to a socket's connections, in sentences a user can act on (ZeroMQ socket monitor).

libzmq reports connection events on a monitor socket; left alone, two of them fail silently:

- a *protocol error* (a message over MAXMSGSIZE, a CURVE/plain mismatch) closes a link that
  this side connected, and libzmq never reconnects it, even after the peer restarts. We
  reconnect it ourselves (``disconnect`` + ``connect``) with a backoff, and say why it broke;
- a CURVE handshake that fails (wrong server key, a key not on the allow list, one side
  without CURVE) is retried forever with no reason given, on either side. We say what is
  wrong, once per peer address and cause, on both sides, and count it.

Measured here with libzmq 4.3.5: an oversized message gives DISCONNECTED and no
CONNECT_RETRIED; a plain client to a CURVE server gives HANDSHAKE_FAILED_PROTOCOL
(mechanism mismatch) on both sides and no retry; a wrong server key gives
HANDSHAKE_FAILED_NO_DETAIL on the client (retried every reconnect interval) and
HANDSHAKE_FAILED_PROTOCOL (cryptographic) on the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from common.observe.metrics import StageMetrics

log = logging.getLogger("soundbus.links")

_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
RECONNECT_CHECK_S = 1.0  # a link closed for good shows no CONNECT_RETRIED within this
RECONNECT_BACKOFF_MAX_S = 30.0
ADVICE_EVERY_S = 60.0  # the same advice for the same peer again after this long


@dataclass
class _Link:
    """One endpoint this socket connects to, and whether libzmq is still trying it."""

    endpoint: str
    closed_at: float | None = None  # DISCONNECTED with no retry seen since
    retry_at: float = 0.0
    backoff_s: float = RECONNECT_CHECK_S
    why: str = ""


@dataclass
class LinkWatch:
    """Monitors one socket. ``role`` is "input" or "output"; ``connects``: endpoints it connects to."""

    sock: zmq.Socket
    role: str
    connects: list[str]
    metrics: StageMetrics
    curve: bool = False
    connected: int = 0  # peers currently connected (handshake done)
    links: dict[str, _Link] = field(default_factory=dict)
    _said: dict[tuple[str, str], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.monitor = self.sock.get_monitor_socket(_EVENTS)
        self.links = {ep: _Link(ep) for ep in self.connects}

    def process(self) -> None:
        """Read every pending event (call when the monitor socket is readable)."""
        while True:
            try:
                ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # the monitor was stopped
                return
            self._event(ev["event"], ev.get("value", 0), _text(ev.get("endpoint", b"")))

    def _event(self, event: int, value: int, endpoint: str) -> None:
        link = self.links.get(endpoint)
        now = time.monotonic()
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.connected += 1
            if link is not None:
                if link.why:
                    log.info("%s %s: link restored", self.role, endpoint)
                link.closed_at, link.backoff_s, link.why = None, RECONNECT_CHECK_S, ""
            log.info("%s connected %s (peers=%d)", self.role, endpoint, self.connected)
        elif event == zmq.EVENT_DISCONNECTED:
            self.connected = max(0, self.connected - 1)
            self.metrics.event(f"{self.role}_disconnected")
            log.warning("%s disconnected %s (peers=%d)", self.role, endpoint, self.connected)
            if link is not None and link.closed_at is None:
                link.closed_at = now
                link.retry_at = now + link.backoff_s
        elif event == zmq.EVENT_CONNECT_RETRIED:
            if link is not None:
                link.closed_at = None  # libzmq is retrying by itself
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                why = ("the two sides disagree on CURVE (one uses --curve-secret, the other not): give both sides "
                       "matching --curve-* flags")
            elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                why = ("a peer failed CURVE's handshake: it has the wrong server public key (--curve-server must be "
                       "this side's .key)") if link is None else ("CURVE handshake failed: is --curve-server the "
                                                                  "public key of that server?")
            else:
                why = f"ZeroMQ protocol error {value:#x} (a peer that is not a soundbus stage?)"
            self._handshake_failed(link, endpoint, why, "handshake_failed")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            why = ("CURVE handshake failed: is --curve-server the public key of that server?" if self.curve
                   else "handshake failed (the peer may require CURVE: give --curve-secret and --curve-server)")
            self._handshake_failed(link, endpoint, why, "handshake_failed")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = (f"the peer refused this side's key (status {value}): add this side's .key to its --curve-allow "
                   "directory" if link is not None else
                   f"refused a client whose key is not in --curve-allow (status {value})")
            self._handshake_failed(link, endpoint, why, "auth_failed")

    def _handshake_failed(self, link: _Link | None, endpoint: str, why: str, counter: str) -> None:
        self.metrics.event(counter)
        if link is not None:
            link.why = why
        now = time.monotonic()
        key = (endpoint, why)
        if now - self._said.get(key, -ADVICE_EVERY_S) >= ADVICE_EVERY_S:
            if len(self._said) > 256:  # bounded, whatever peers do
                self._said.clear()
            self._said[key] = now
            log.error("%s %s: %s", self.role, endpoint, why)

    def tick(self) -> None:
        """Reconnect links that libzmq closed for good (protocol error), with a backoff."""
        now = time.monotonic()
        for link in self.links.values():
            if link.closed_at is None or now < link.retry_at:
                continue
            why = link.why or "closed by a protocol error (a message over the size limit, or a peer that is not " \
                              "a soundbus stage)"
            log.warning("%s %s: %s; reconnecting", self.role, link.endpoint, why)
            self.metrics.event("link_reconnected")
            try:
                self.sock.disconnect(link.endpoint)
            except zmq.ZMQError:
                pass
            self.sock.connect(link.endpoint)
            link.closed_at = now  # cleared by the next successful handshake or a libzmq retry
            link.backoff_s = min(link.backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
            link.retry_at = now + link.backoff_s

    def close(self) -> None:
        """Stop the monitor (before ctx.term(): an open monitor socket would make it wait forever)."""
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)


def _text(endpoint: bytes | str) -> str:
    return endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
