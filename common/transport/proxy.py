"""The broker of the brokered topology: an XSUB/XPUB forwarder at one well-known address.

Publishers (capture, convert, classify with ``--output '>tcp://proxy:5560'``) connect to
the frontend; subscribers (convert, classify, tail with ``--input tcp://proxy:5561``)
connect to the backend. Subscriptions travel the other way, backend -> frontend -> every
publisher, so topic filtering still happens at the publishers: a stream nobody wants
never leaves its capture box.

Forwarding is libzmq's own ``zmq_proxy_steerable`` (C, no copy through Python) in a
worker thread; the main thread watches the StopFlag, reads the proxy's counters through
the control socket, and sends TERMINATE on SIGTERM, so shutdown is prompt and never
waits on queued messages (LINGER bounds it).

Flow control here: each subscriber gets a backend queue of ``hwm`` messages; when it is
full, XPUB drops that subscriber's messages (and only its). The frontend queue per
publisher is ``hwm`` too; when it is full, TCP pushes back and the publisher's own PUB
queue drops. Either way the loss shows up downstream as a sequence gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from common.observe.metrics import StageMetrics
from common.runtime.stage import HealthFile, StopFlag
from common.transport.sockets import SocketOptions, open_socket

log = logging.getLogger("proxy")

_STAT_NAMES = (
    "frontend_msgs_in",
    "frontend_bytes_in",
    "frontend_msgs_out",
    "frontend_bytes_out",
    "backend_msgs_in",
    "backend_bytes_in",
    "backend_msgs_out",
    "backend_bytes_out",
)


@dataclass
class ProxyStats:
    """libzmq's proxy counters (messages and bytes, per side and direction)."""

    frontend_msgs_in: int = 0  # messages received from publishers (multipart parts counted each)
    frontend_bytes_in: int = 0
    frontend_msgs_out: int = 0  # subscriptions sent up to publishers
    frontend_bytes_out: int = 0
    backend_msgs_in: int = 0  # subscriptions received from subscribers
    backend_bytes_in: int = 0
    backend_msgs_out: int = 0  # message parts handed to the backend (before per-subscriber drops)
    backend_bytes_out: int = 0

    def line(self) -> str:
        return (
            f"proxy: forwarded {self.backend_msgs_out} parts ({self.backend_bytes_out} B), "
            f"subscriptions {self.backend_msgs_in} in / {self.frontend_msgs_out} out"
        )


class Proxy:
    """An XSUB frontend and XPUB backend forwarded by libzmq in a thread; stop() ends it."""

    def __init__(
        self,
        ctx: zmq.Context,
        frontend: Sequence[str],
        backend: Sequence[str],
        opts: SocketOptions | None = None,
    ) -> None:
        self.ctx = ctx
        opts = opts or SocketOptions()
        self.frontend = open_socket(ctx, zmq.XSUB, frontend, opts, default_bind=True)
        try:
            self.backend = open_socket(ctx, zmq.XPUB, backend, opts, default_bind=True)
        except BaseException:
            self.frontend.close(linger=0)
            raise
        endpoint = f"inproc://soundbus-proxy-control-{id(self)}"
        self._control = ctx.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(endpoint)
        self._control_peer = ctx.socket(zmq.PAIR)
        self._control_peer.linger = 0
        self._control_peer.connect(endpoint)
        # The sockets migrate to the worker thread; Thread.start() is the memory barrier libzmq asks for.
        self._thread = threading.Thread(target=self._run, name="soundbus-proxy", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            zmq.proxy_steerable(self.frontend, self.backend, None, self._control_peer)
        except zmq.ContextTerminated:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self._error = e

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stats(self, timeout_ms: int = 1000) -> ProxyStats | None:
        """Counters from the running proxy (None if it does not answer in ``timeout_ms``)."""
        if not self.running:
            return None
        self._control.send(b"STATISTICS")
        if not self._control.poll(timeout_ms):
            return None
        parts = self._control.recv_multipart()
        values = [int.from_bytes(p, "little") for p in parts[: len(_STAT_NAMES)]]
        return ProxyStats(**dict(zip(_STAT_NAMES, values)))

    def stop(self, timeout_s: float = 2.0) -> None:
        """Terminate forwarding and close every socket (pending messages dropped after LINGER)."""
        if self.running:
            self._control.send(b"TERMINATE")
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("proxy thread did not stop within %.1f s", timeout_s)
        for s in (self.frontend, self.backend, self._control, self._control_peer):
            s.close()
        if self._error is not None:
            raise RuntimeError(f"proxy failed: {self._error}") from self._error


def serve(
    frontend: Sequence[str],
    backend: Sequence[str],
    opts: SocketOptions,
    metrics: StageMetrics,
    stop: StopFlag,
    stats_every_s: float = 10.0,
    health: HealthFile | None = None,
) -> int:
    """Run a proxy until ``stop`` is set; logs ``ready`` and a counter line every ``stats_every_s``;
    rewrites ``health`` about once a second (healthy while libzmq's proxy thread forwards)."""
    ctx = zmq.Context()
    try:
        proxy = Proxy(ctx, frontend, backend, opts)
        proxy.start()
        log.info("frontend (publishers connect) %s, backend (subscribers connect) %s", ", ".join(frontend), ", ".join(backend))
        log.info("ready")
        last = ProxyStats()
        next_stats = time.monotonic() + stats_every_s
        next_health = 0.0
        while not stop and proxy.running:
            stop.wait(0.2)
            if health is not None and time.monotonic() >= next_health:
                next_health = time.monotonic() + 1.0
                health.store({"stage": "proxy", "ok": proxy.running, "forwarded_parts": last.backend_msgs_out,
                              "t": time.time()})
            if time.monotonic() >= next_stats:
                next_stats += stats_every_s
                s = proxy.stats()
                if s is not None:
                    metrics.event("forwarded_parts", s.backend_msgs_out - last.backend_msgs_out)
                    metrics.event("forwarded_bytes", s.backend_bytes_out - last.backend_bytes_out)
                    metrics.event("subscriptions", s.backend_msgs_in - last.backend_msgs_in)
                    last = s
                    log.info("%s", s.line())
        crashed = not stop
        final = proxy.stats(200)
        proxy.stop()
        if final is not None:
            log.info("%s", final.line())
        if crashed:
            log.error("proxy stopped forwarding unexpectedly")
            return 1
        log.info("stopped")
        return 0
    finally:
        ctx.term()
