"""The one loop every stage runs: wait, take a batch, let the stage's logic work, send.

A stage is two parts. Its *logic* is a plain object with no sockets (a test drives it
directly with messages and clock values)::

    handle(batch, now) -> [encoded messages]   everything that arrived in one wake-up
    tick(now)          -> [encoded messages]   timers: idle flush, a batch deadline, pacing
    wake_in(now)       -> seconds | None       when tick next needs to run (None: no deadline)
    finish(now)        -> [encoded messages]   at stop: what is still owed downstream
    summary()          -> str                  a few counters for the periodic log line

The :class:`Runtime` owns everything else, written once: the ZeroMQ context, the input
(common.transport.inbox, or capture's device queue) and output (common.transport.outbox),
signals, the silence watchdog, link repair, the health file, the periodic summary line,
and the close order (monitors, then sockets, then the context), also on an error.

    while not stopped:
        batch = input.receive(until the logic's next deadline, gathering up to gather_s)
        send(logic.handle(batch, now) + logic.tick(now))
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import zmq

from common.errors import UserError
from common.observe.metrics import StageMetrics
from common.runtime import heap
from common.observe.ratelog import RateLimitedLog
from common.transport.inbox import MAX_BATCH, Inbox, Poller
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions

log = logging.getLogger("soundbus.runtime")

IDLE_WAKE_S = 0.1  # the loop looks at its timers at least this often
HOUSEKEEPING_S = 0.5


def setup_logging(verbose: int = 0) -> None:
    """Log lines to stderr: time, logger, level, message."""
    level = logging.WARNING if verbose < 0 else logging.DEBUG if verbose > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


class StopFlag:
    """Set by SIGINT, SIGTERM or SIGHUP (the terminal closed); loops poll it, so shutdown never hangs."""

    def __init__(self, install: bool = True) -> None:
        self._event = threading.Event()
        if install and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


@dataclass(frozen=True)
class Now:
    """One reading of both clocks: ``mono`` time.monotonic() s (for timers), ``wall_ns``
    time.time_ns() (for stamps). Logic takes it as an argument, so tests pass explicit values."""

    mono: float
    wall_ns: int

    @staticmethod
    def read() -> Now:
        return Now(time.monotonic(), time.time_ns())


class StageLogic(Protocol):
    """What a stage supplies to the runtime (see the module docstring)."""

    def handle(self, batch: list[Any], now: Now) -> list[bytes]: ...

    def tick(self, now: Now) -> list[bytes]: ...

    def wake_in(self, now: Now) -> float | None: ...

    def finish(self, now: Now) -> list[bytes]: ...

    def summary(self) -> str: ...


class Input(Protocol):
    """Where a stage's batches come from: common.transport.inbox.Inbox, or capture's sources."""

    received: int

    def receive(self, timeout_s: float, gather_s: float = 0.0, limit: int = MAX_BATCH) -> list[Any]: ...

    def housekeeping(self) -> None: ...

    def close(self) -> None: ...


class HealthFile:
    """Rewrites ``path`` about once a second with the stage's health (``soundbus health`` reads it).

    Healthy: the input has a connected peer (stages with a bus input) and a message arrived
    within ``idle_s``; a source stage (no bus input: capture, replay) while it publishes.
    """

    def __init__(self, path: Path, stage: str, idle_s: float = 30.0) -> None:
        self.path, self.stage, self.idle_s = Path(path), stage, idle_s
        self.last_count = 0
        self.last_change = time.monotonic()

    def write(self, inp: Any, metrics: StageMetrics) -> None:
        now = time.monotonic()
        # a source stage's sign of life is what it publishes (a stalled device, a paused replay)
        count = metrics.total_out if inp is None else getattr(inp, "received", 0)
        if count != self.last_count:
            self.last_count, self.last_change = count, now
        connected = getattr(inp, "connected", None)
        flowing = now - self.last_change < self.idle_s
        status = {
            "stage": self.stage,
            "ok": bool(flowing and (connected is None or connected > 0)),
            "input_connected": connected is None or connected > 0,
            "seconds_since_input": round(now - self.last_change, 1),
            "messages_in": count,
            "messages_out": metrics.total_out,
            "bad": sum(metrics.bad.values()),
            "t": time.time(),
        }
        self.store(status)

    def store(self, status: dict[str, Any]) -> None:
        """Replace the file with ``status`` atomically (a reader never sees half a file)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write health file %s: %s", self.path, e.strerror)


class Runtime:
    """One stage's context, sockets, loop and shutdown. Use as a context manager."""

    def __init__(
        self,
        stage: str,
        metrics: StageMetrics,
        stop: StopFlag | None = None,
        health_file: Path | None = None,
    ) -> None:
        self.stage = stage
        self.metrics = metrics
        self.stop = stop if stop is not None else StopFlag()
        self.ctx = zmq.Context()
        self.poller = Poller()
        self.health = HealthFile(health_file, stage) if health_file else None
        self._closers: list[Any] = []
        self._errors = RateLimitedLog(log, every_s=60.0, burst=3)
        self._pending: deque[bytes] = deque()  # refused by a nodrop output, sent first next turn

    # -- building ------------------------------------------------------------------------

    def inbox(self, endpoints: Iterable[str], prefixes: Iterable[bytes], opts: SocketOptions,
              watchdog_s: float = 5.0, keep_bytes: bool = False) -> Inbox:
        box = Inbox(self.ctx, endpoints, prefixes, opts, self.metrics, self.poller, watchdog_s, keep_bytes)
        self._closers.append(box)
        return box

    def adopt(self, closable: Any) -> None:
        """Close ``closable`` (an input of the stage's own) with the sockets, in order."""
        self._closers.append(closable)

    def outbox(self, endpoints: Iterable[str], opts: SocketOptions) -> Outbox:
        box = Outbox(self.ctx, endpoints, opts, self.metrics, self.poller)
        self._closers.append(box)
        return box

    # -- the loop --------------------------------------------------------------------------

    def run(self, logic: StageLogic, inp: Input, out: Outbox | None, gather_s: float = 0.0,
            limit: int = MAX_BATCH) -> None:
        """Run ``logic`` until the stop flag is set; send what it owes at the end."""
        next_housekeeping = 0.0
        stop = self.stop
        heap.settle()  # what exists now lives as long as the process: no collection walks it again
        while not stop:
            now = Now.read()
            if self._pending:  # a nodrop output refused: nothing new until it drains
                self._send(out, (), wait_s=IDLE_WAKE_S)
                batch = []
            else:
                wake = logic.wake_in(now)
                timeout = IDLE_WAKE_S if wake is None else min(max(wake, 0.0), IDLE_WAKE_S)
                batch = inp.receive(timeout, gather_s, limit)
                now = Now.read()
                try:
                    sends = logic.handle(batch, now) if batch else []
                    sends += logic.tick(now)
                except UserError:
                    raise
                except Exception:  # a bug must cost one batch, not the stage: counted, logged with its traceback
                    self.metrics.bad_message("stage_error")
                    self._errors.log(logging.ERROR, "stage_error", f"{self.stage}: a batch of {len(batch)} "
                                     f"message(s) failed and was dropped:\n{traceback.format_exc(limit=8)}")
                    sends = []
                if sends:
                    self._send(out, sends)
            if now.mono >= next_housekeeping:
                next_housekeeping = now.mono + HOUSEKEEPING_S
                self._housekeeping(logic, inp)
        final = logic.finish(Now.read())
        if out is not None and (final or self._pending):
            # what is owed still goes out: a nodrop output waits for room, up to its linger
            self._send(out, final, wait_s=out.linger_ms / 1000, at_stop=True)
        log.info("%s %s", self.metrics.summary(), logic.summary())

    def _send(self, out: Outbox | None, messages: Sequence[bytes], wait_s: float = 0.0, at_stop: bool = False) -> None:
        if out is None:
            return
        if not out.nodrop:
            out.send_all(messages)
            return
        self._pending.extend(messages)
        deadline = time.monotonic() + wait_s
        while self._pending:
            if self._try(out):
                continue
            left = deadline - time.monotonic()
            if left <= 0 or (self.stop and not at_stop):
                return
            out.socket.poll(int(min(left, 0.05) * 1000) + 1, zmq.POLLOUT)

    def _try(self, out: Outbox) -> bool:
        try:
            out.socket.send(self._pending[0], zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._pending.popleft()
        out.sent += 1
        return True

    def _housekeeping(self, logic: StageLogic, inp: Input) -> None:
        inp.housekeeping()
        for c in self._closers:
            if isinstance(c, Outbox):
                c.links.tick()
        if self.health is not None:
            self.health.write(inp, self.metrics)
        self.metrics.maybe_log_summary(logic.summary())

    # -- shutdown --------------------------------------------------------------------------

    def close(self) -> None:
        """Monitors and sockets first (inputs, then outputs with their linger), then the context."""
        for c in self._closers:
            try:
                c.close()
            except zmq.ZMQError as e:  # closing must go on for the rest
                log.warning("closing %s: %s", type(c).__name__, e)
        self._closers.clear()
        if self._pending:
            self.metrics.drop("unsent_at_stop", len(self._pending))
            self._pending.clear()
        self.ctx.term()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
