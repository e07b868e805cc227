"""``soundbus wyoming``: a Wyoming wake-word server whose connections are streams on the bus.

One asyncio loop runs everything: the wyoming package's TCP (or Unix) server with one
:class:`WakeHandler` per connection, and the bus (wyoming_server.bus). A connection takes one
of ``max_clients`` slots; slot i is stream ``<prefix>-i`` on the bus (a new epoch for every
audio-start), so the stream ids stay few whatever the number of connections over time, and
the results of a slot's previous connection are told apart by their epoch.

Per connection, bounded: its events (wyoming_server.reader: header, data and payload
lengths), its raw frame buffer (one frame), its replies (a queue of MAX_REPLIES; a client
that does not read them is dropped), its silence (``idle_timeout_s`` with no event ends it).
A malformed event ends that connection only: it is counted, logged at a bounded rate, and
answered with a Wyoming ``error`` before the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, WakeModel, WakeProgram
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.wake import Detect

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.wire.messages import Result
from wyoming_server.bus import Bus
from wyoming_server.names import check_names, phrase
from wyoming_server.reader import BadEvent, read_event
from wyoming_server.session import BadAudio, SessionConfig, WakeSession, audio_format

log = logging.getLogger("wyoming")

MAX_REPLIES = 64  # events queued for one client before it counts as not reading
OPENWAKEWORD = Attribution(name="dscripka (openWakeWord)", url="https://github.com/dscripka/openWakeWord")
SOUNDBUS = Attribution(name="soundbus", url="")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs besides its sockets."""

    session: SessionConfig
    stream_prefix: str = "wy"
    max_clients: int = 64
    idle_timeout_s: float = 60.0  # 0: never
    stop_timeout_s: float = 5.0  # after audio-stop, wait this long for the last result


class Slots:
    """Connection slots 0..n-1: slot i is bus stream ``<prefix>-i``."""

    def __init__(self, prefix: str, n: int) -> None:
        self.prefix = prefix
        self.free = deque(range(n))
        self.n = n

    def stream(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def take(self) -> int | None:
        return self.free.popleft() if self.free else None

    def give_back(self, i: int) -> None:
        self.free.append(i)  # least recently used first: a slot's old results have time to drain


class WakeServer:
    """What all connections share: config, slots, the bus and the per-stream handlers."""

    def __init__(self, cfg: ServerConfig, bus: Bus, metrics: StageMetrics) -> None:
        self.cfg, self.bus, self.metrics = cfg, bus, metrics
        self.slots = Slots(cfg.stream_prefix, cfg.max_clients)
        self.handlers: dict[str, WakeHandler] = {}
        self.connections = 0  # ever
        self.detections = 0
        self.warn = RateLimitedLog(log)
        self.info = self._info()

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WakeHandler:
        """The wyoming server's handler factory."""
        return WakeHandler(reader, writer, self)

    def dispatch(self, result: Result) -> None:
        """A result from the bus to the connection that owns its stream (if it is still there)."""
        h = self.handlers.get(result.stream)
        if h is not None:
            h.on_result(result)
        else:
            self.metrics.event("result_after_close")  # its connection left (e.g. after a detection)

    def _info(self) -> Info:
        served = self.cfg.session.served
        models = [WakeModel(name=label, description=phrase(label), phrase=phrase(label), attribution=OPENWAKEWORD,
                            installed=True, languages=["en"], version=None) for label in served]
        program = WakeProgram(name="soundbus", description="soundbus: wake words batched across every satellite",
                              attribution=SOUNDBUS, installed=True, version=None, models=models)
        return Info(wake=[program])

    def summary(self) -> str:
        return (f"clients={len(self.handlers)} connections={self.connections} detections={self.detections} "
                f"raw_subscriptions={self.bus.subscribers}")


class WakeHandler(AsyncEventHandler):
    """One Wyoming connection: its events to its session and the bus, its replies back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: WakeServer) -> None:
        super().__init__(reader, writer)
        self.server = server
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        self.slot: int | None = None
        self.session: WakeSession | None = None
        self.replies: asyncio.Queue[Event | None] = asyncio.Queue(MAX_REPLIES)
        self.answered = asyncio.Event()
        self.last_event = 0.0  # loop time of the newest event from the client

    # -- the connection's life -------------------------------------------------------------

    async def run(self) -> None:
        """Take a slot, read events until the client leaves or errs, then end its stream."""
        srv = self.server
        self._is_running = True
        self.slot = srv.slots.take()
        writer_task = asyncio.create_task(self._write_replies())
        watchdog = asyncio.create_task(self._watch_idle()) if srv.cfg.idle_timeout_s > 0 else None
        try:
            if self.slot is None:
                srv.metrics.drop("too_many_clients")
                srv.warn.warning("full", f"refused {self.peer}: already {srv.cfg.max_clients} clients (--max-clients)")
                self._reply(Error(text=f"server full ({srv.cfg.max_clients} clients)", code="busy").event())
                return
            stream = srv.slots.stream(self.slot)
            self.session = WakeSession(stream, srv.cfg.session, source=f"wyoming {self.peer}")
            srv.handlers[stream] = self
            srv.connections += 1
            log.debug("client %s connected as stream %s", self.peer, stream)
            await self._read_events()
        except (ConnectionError, OSError) as e:
            srv.metrics.event("connection_error")
            srv.warn.log(logging.INFO, "connection_error", f"client {self.peer}: {e}")
        except Exception:  # a bug here must end this connection only, and be seen
            srv.metrics.event("handler_error")
            log.exception("client %s: unexpected error; closing its connection", self.peer)
        finally:
            if watchdog is not None:
                watchdog.cancel()
            await self._end()
            await self._finish_replies(writer_task)
            self.writer.close()

    async def _finish_replies(self, writer_task: asyncio.Task) -> None:
        """Let queued replies (an error, not-detected) leave, for at most a second."""
        if self.replies.full():
            writer_task.cancel()
            return
        self.replies.put_nowait(None)
        try:
            await asyncio.wait_for(writer_task, 1.0)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            writer_task.cancel()

    async def _read_events(self) -> None:
        loop = asyncio.get_running_loop()
        while self._is_running:
            self.last_event = loop.time()
            try:
                event = await read_event(self.reader)
            except BadEvent as e:
                self._refuse(e.reason, str(e))
                return
            if event is None:
                return
            try:
                if not await self.handle_event(event):
                    return
            except BadAudio as e:
                self._refuse("bad_audio", f"{event.type}: {e}")
                return

    async def _watch_idle(self) -> None:
        """End a connection that sends nothing for ``idle_timeout_s`` (a client gone without a FIN)."""
        idle = self.server.cfg.idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(idle, 1.0))
            if loop.time() - self.last_event > idle and not self.answered_pending():
                self.server.metrics.event("idle_timeout")
                log.info("client %s sent nothing for %g s, closing", self.peer, idle)
                self._is_running = False
                self.reader.feed_eof()
                return

    def answered_pending(self) -> bool:
        """Waiting for our own answer after audio-stop: the client is quiet because of us."""
        return self.session is not None and self.session.stopping and not self.session.done

    async def _end(self) -> None:
        """Publish the stream's END (if it was streaming) and give the slot back."""
        srv = self.server
        if self.session is not None:
            try:
                await self._publish(self.session.close(time.time_ns()))
            finally:
                srv.handlers.pop(self.session.stream, None)
        if self.slot is not None:
            srv.slots.give_back(self.slot)
            self.slot = None
        log.debug("client %s disconnected", self.peer)

    def _refuse(self, reason: str, text: str) -> None:
        self.server.metrics.bad_message(reason)
        self.server.warn.warning(reason, f"client {self.peer}: {text}; closing its connection")
        self._reply(Error(text=text[:300], code=reason).event())

    # -- events from the client ------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        s, now = self.session, time.time_ns()
        if AudioChunk.is_type(event.type):
            self.server.metrics.frame_in(s.stream)
            await self._publish(s.chunk(audio_format(event.data), event.payload or b"", now,
                                        event.data.get("timestamp")))
        elif Detect.is_type(event.type):
            try:
                names = check_names(event.data.get("names"))
            except ValueError as e:
                self._refuse("bad_names", f"detect: {e}")
                return False
            wanted = s.detect(names)
            if wanted.unknown:
                self.server.warn.warning("unknown_name", f"client {self.peer} asked for wake words this server "
                                         f"does not have: {', '.join(wanted.unknown)[:200]}")
            if not wanted.reply:
                self._reply(Error(text="none of these wake words is served here: "
                                       f"{', '.join(wanted.unknown)[:200]}", code="unknown-wake-word").event())
                return False
        elif AudioStart.is_type(event.type):
            await self._publish(s.start(audio_format(event.data), now, event.data.get("timestamp")))
            self.answered.clear()
        elif AudioStop.is_type(event.type):
            messages, replies = s.stop(now)
            await self._publish(messages)
            for ev in replies:
                self._reply(ev)
            await self._await_answer()
        elif Describe.is_type(event.type):
            self._reply(self.server.info.event())
        elif Ping.is_type(event.type):
            self._reply(Pong(text=event.data.get("text") if isinstance(event.data.get("text"), str) else None).event())
        else:
            self.server.metrics.event("ignored_event")
        return True

    async def _publish(self, messages: list[bytes]) -> None:
        if messages:
            await self.server.bus.send(messages)
            self.server.metrics.frame_out(self.session.stream, len(messages))

    async def _await_answer(self) -> None:
        """After audio-stop: until the epoch's last result has been seen (not-detected sent if
        nothing fired), or ``stop_timeout_s`` (then answered anyway)."""
        if self.session.done:
            return
        try:
            await asyncio.wait_for(self.answered.wait(), self.server.cfg.stop_timeout_s)
        except asyncio.TimeoutError:
            self.server.metrics.event("stop_timeout")
            self.server.warn.warning("stop_timeout", f"stream {self.session.stream}: no final result "
                                     f"{self.server.cfg.stop_timeout_s:g} s after audio-stop (are convert and "
                                     "classify running?); answering not-detected")
            for ev in self.session.give_up():
                self._reply(ev)

    # -- results from the bus --------------------------------------------------------------

    def on_result(self, result: Result) -> None:
        for ev in self.session.result(result):
            if ev.type == "detection":
                self.server.detections += 1
            self._reply(ev)
        if self.session.done:
            self.answered.set()

    def _reply(self, event: Event) -> None:
        """Queue an event for the client; one that has stopped reading is dropped."""
        try:
            self.replies.put_nowait(event)
        except asyncio.QueueFull:
            self.server.metrics.drop("client_not_reading")
            self._is_running = False
            self.reader.feed_eof()

    async def _write_replies(self) -> None:
        """The only writer of this connection (so events never interleave)."""
        while True:
            event = await self.replies.get()
            if event is None:
                return
            await self.write_event(event)
