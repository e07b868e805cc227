"""WebLogic: the web view as a stage on the shared runtime (bus in, board out; no output socket).

``handle`` only files what arrives, per stream (bounded by a StreamTable), and does as
little per message as it can (a view of the samples, a sequence check, a reference to the
latest labels): at 16 streams a thousand messages a second arrive, and everything that can
wait for the next publish does.

- ``tensor/``: a view of the samples is kept until the next publish; sequence gaps and
  ``lost`` samples are counted and drawn as silence;
- ``result/``: per model, the latest labels (top 5 at publish), the labels on (from
  onset/offset events), results missing (sequence gaps), audio lost upstream (``lost_ns``)
  and latency per hop (from the trace of one result every ``LATENCY_EVERY_S``); each
  onset/offset goes to the timeline;
- ``event/``: stored events (the event store's republished rows) go to the history;
- ``hb/``: the source's state (running, reconnecting, ended).

``tick`` publishes ``update_hz`` times a second: each stream's held samples become its level
and its spectrogram columns (the frames of all streams at one rate in one batched
transform), each changed stream's state is encoded as JSON (the fast part every time, the
slow part about once a second), and once a second the health. What it publishes goes to
the :class:`~web.board.Board`, never to a browser directly.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.stage import Now
from common.runtime.streams import Continuity, StreamTable
from common.wire.codec import Audio
from common.wire.messages import Flag, Heartbeat, Result, StoredEvent
from web.board import Board, Update
from web.spectrum import BANDS, COL_HZ, MelColumns, levels_dbfs
from web.views import MAX_HELD_S, ModelView, StreamView

log = logging.getLogger("soundbus.web")

NS = 1_000_000_000
MAX_MODELS = 16  # per stream; more are refused and counted
MAX_ON = 64  # labels on at once per stream and model
MAX_STAGES = 64  # stage names remembered from traces
MAX_PENDING_EVENTS = 1024  # onsets/offsets (and stored events) waiting for the next publish
STAGE_UP_S = 5.0  # a stage seen in a trace within this long is shown up
HEALTH_EVERY_S = 1.0
LATENCY_EVERY_S = 0.1  # one result's trace per stream and model this often feeds the latency figures
TRACE_EVERY_S = 0.5  # stage names are read from one message's trace per stream this often
DISCONTINUITY = int(Flag.DISCONTINUITY)  # plain ints: IntFlag arithmetic costs microseconds per message
END = int(Flag.END)
MAX_HEALTH_FILE_BYTES = 8192


@dataclass(frozen=True)
class WebConfig:
    """What the view computes and keeps; times in seconds."""

    update_hz: float = 10.0  # board updates (and browser messages, at most) per second
    col_hz: int = COL_HZ
    bands: int = BANDS
    ring: int = 500  # spectrogram columns kept per stream (20 s at 25/s)
    max_streams: int = 64
    idle_s: float = 5.0  # a stream with no message for this long is shown idle
    forget_s: float = 600.0  # ... and removed from the page after this long


class _HealthFileStatus(msgspec.Struct):
    """The fields of a stage's --health-file (common.runtime.stage.HealthFile) the page shows."""

    stage: str
    ok: bool
    t: float
    seconds_since_input: float = 0.0
    input_connected: bool = True
    messages_in: int = 0
    messages_out: int = 0
    bad: int = 0


class WebLogic:
    """StageLogic (common.runtime.stage) that keeps the board up to date."""

    def __init__(self, board: Board, cfg: WebConfig, metrics: StageMetrics, health_files: list[Path] | None = None,
                 outside: Any = None) -> None:
        self.board, self.cfg, self.metrics = board, cfg, metrics
        # an ended stream may give its place to a new one; the board follows at the next publish
        self.streams: StreamTable[StreamView] = StreamTable(
            cfg.max_streams, metrics, "streams", finished=lambda v: v.ended)
        self.on_board: set[str] = set()
        self.health_files = list(health_files or [])
        self.outside = outside  # () -> dict: what the server and the inputs add to the health (clients, links)
        self.stages: dict[str, float] = {}  # stage name (from traces) -> last seen (monotonic s)
        self.events: list[bytes] = []  # onsets/offsets for the next publish
        self.stored: list[bytes] = []
        self.removed: list[str] = []
        self.next_publish = 0.0
        self.next_health = 0.0
        self.last_sent_at = time.monotonic()
        self.last_cpu = time.process_time()
        self.sent_rates: dict[str, float] = {}
        self.cpu_pct = 0.0
        self.published = 0
        self._enc = msgspec.json.Encoder()
        self._warn = RateLimitedLog(log)

    # -- messages --------------------------------------------------------------------------

    def handle(self, batch: list[Any], now: Now) -> list[bytes]:
        for msg in batch:
            kind = type(msg)
            if kind is Audio:
                self._tensor(msg, now)
            elif kind is Result:
                self._result(msg, now)
            elif kind is StoredEvent:
                self._stored(msg)
            elif kind is Heartbeat:
                self._heartbeat(msg, now)
        return []

    def _view(self, stream: str, now: Now) -> StreamView | None:
        v = self.streams.states.get(stream)
        if v is None:
            v = self.streams.admit(stream, lambda: StreamView(now.mono))
            if v is None:
                return None
        v.last_seen = now.mono
        v.changed = True
        return v

    def _tensor(self, a: Audio, now: Now) -> None:
        h = a.header
        v = self._view(h.stream, now)
        if v is None:
            return
        if now.mono >= v.next_trace[0]:
            v.next_trace[0] = now.mono + TRACE_EVERY_S
            self._seen_trace(h.trace, now.mono)
        self.metrics.frame_in(h.stream)
        flags = h.flags
        cont, missing = v.tensor_cursor.check(h.epoch, h.seq, bool(flags & DISCONTINUITY))
        if cont is Continuity.STALE:
            self.metrics.drop("stale_tensor")
            return
        if h.rate != v.rate or h.channels != v.channels or cont is Continuity.NEW_EPOCH or cont is Continuity.RESTART:
            self._restart(v, h.stream, h.rate, h.channels)
        v.tensors += 1
        lost = h.lost + missing * h.samples  # a gap: assume the missing messages were as long as this one
        if missing:
            v.tensor_gaps += missing
            self.metrics.gap(h.stream, missing)
        if lost:
            v.lost_samples += lost
            v.hold(np.zeros((h.channels, min(lost, int(MAX_HELD_S * h.rate) + 1)), np.float32))
        # (channels, samples) float32, a view of the message (a tensor is f32 planar: the codec checked)
        dropped = v.hold(np.frombuffer(a.payload, np.float32).reshape(h.channels, h.samples))
        if dropped:
            self.metrics.drop("samples_behind", dropped)
        v.audio_ns = max(v.audio_ns, h.end_ns)
        ended = bool(flags & END)
        if ended != v.ended or (h.source and h.source != v.source):
            v.reshaped = True
            v.ended = ended
            v.source = h.source or v.source

    def _restart(self, v: StreamView, stream: str, rate: int, channels: int) -> None:
        """A new source epoch, a restarted converter, or another rate: the spectrogram starts again."""
        if v.rate and rate != v.rate:
            self._warn.warning("rate_change", f"stream {stream}: tensors at {rate} Hz after {v.rate} Hz (two "
                                              "converters publish one stream id?); the spectrogram restarts")
        v.take_held()
        v.rate, v.channels = rate, channels
        v.mel = MelColumns(rate, self.cfg.bands, self.cfg.col_hz)
        v.reshaped = True

    def _result(self, r: Result, now: Now) -> None:
        v = self._view(r.stream, now)
        if v is None:
            return
        if now.mono >= v.next_trace[1]:
            v.next_trace[1] = now.mono + TRACE_EVERY_S
            self._seen_trace(r.trace, now.mono)
        self.metrics.frame_in(r.stream)
        mv = v.models.get(r.model)
        if mv is None:
            if len(v.models) >= MAX_MODELS:
                self.metrics.drop("too_many_models")
                return
            mv = v.models[r.model] = ModelView()
            v.reshaped = True
        flags = r.flags
        cont, missing = mv.cursor.check(r.epoch, r.seq, bool(flags & DISCONTINUITY))
        if cont is Continuity.STALE:
            self.metrics.drop("stale_result")
            return
        if cont is Continuity.NEW_EPOCH or cont is Continuity.RESTART:
            mv.on.clear()  # the model restarted: what it had on is no longer known to be on
        if missing:
            mv.missing += missing
            self.metrics.gap(r.stream, missing)
        mv.results += 1
        mv.lost_ns += r.lost_ns
        if r.labels:
            mv.labels = r.labels
        if r.events:
            self._events(r, mv)
        if flags & END:
            mv.on.clear()
        if r.final != mv.final:
            mv.final = r.final
            v.reshaped = True
        mv.age_ns = now.wall_ns - r.end_ns
        if r.trace and now.mono >= mv.next_latency:
            mv.next_latency = now.mono + LATENCY_EVERY_S
            mv.latency.add(r, now.wall_ns)
        v.audio_ns = max(v.audio_ns, r.end_ns)

    def _events(self, r: Result, mv: ModelView) -> None:
        for e in r.events:
            if e.state == "start":
                if e.label in mv.on or len(mv.on) < MAX_ON:
                    mv.on[e.label] = [e.t_ns, round(e.score, 3)]
            else:
                mv.on.pop(e.label, None)
            if len(self.events) < MAX_PENDING_EVENTS:
                self.events.append(self._enc.encode({
                    "stream": r.stream, "model": r.model, "label": e.label, "state": e.state, "t_ns": e.t_ns,
                    "score": round(e.score, 3), "since_ns": e.since_ns}))
            else:
                self.metrics.drop("timeline_backlog")

    def _stored(self, e: StoredEvent) -> None:
        if len(self.stored) >= MAX_PENDING_EVENTS:
            self.metrics.drop("history_backlog")
            return
        self.stored.append(self._enc.encode({
            "id": e.id, "stream": e.stream, "model": e.model, "label": e.label, "start_ns": e.start_ns,
            "end_ns": e.end_ns, "peak": round(e.peak, 3), "mean": round(e.mean, 3), "clip": bool(e.clip)}))

    def _heartbeat(self, hb: Heartbeat, now: Now) -> None:
        v = self._view(hb.stream, now)
        if v is not None:
            if hb.state.value != v.source_state or (hb.source and hb.source != v.source):
                v.reshaped = True
            v.source_state = hb.state.value
            v.source = hb.source or v.source

    def _seen_trace(self, trace: list, mono: float) -> None:
        stages = self.stages
        for hop in trace:
            if hop.stage in stages or len(stages) < MAX_STAGES:
                stages[hop.stage] = mono

    # -- publishing ------------------------------------------------------------------------

    def wake_in(self, now: Now) -> float | None:
        return max(0.0, self.next_publish - now.mono)

    def tick(self, now: Now) -> list[bytes]:
        if now.mono < self.next_publish:
            return []
        self.next_publish = max(self.next_publish + 1.0 / self.cfg.update_hz, now.mono)
        u = Update(events=self.events, stored=self.stored, removed=self.removed)
        self.events, self.stored, self.removed = [], [], []
        roll = now.mono >= self.next_health
        self._forget_idle(now, u)
        held = set(self.streams.states)
        u.removed += [name for name in self.on_board if name not in held]  # reclaimed by the table
        self.on_board = held
        levels: dict[str, tuple[float, float]] = {}
        u.columns = self._columns(levels)
        for name, v in self.streams.items():
            level = levels.get(name)
            if level is not None:
                v.shown_level = level
            if roll:
                for mv in v.models.values():
                    mv.latency.roll()
            parts: dict[str, bytes] = {}
            if v.changed or level is not None:
                parts["f"] = self._enc.encode(v.fast())
                v.changed = False
            if v.reshaped or roll:
                parts["st"] = self._enc.encode(v.slow(now.mono))
                v.reshaped = False
            if parts:
                u.states[name] = parts
        if roll:
            self.next_health = now.mono + HEALTH_EVERY_S
            u.health = self._enc.encode(self.health(now))
        self.board.apply(u)
        self.published += 1
        return []

    def _columns(self, levels: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
        """Every stream's new columns, and its level over the samples held since the last publish.
        The frames of all streams at one rate go through one transform."""
        groups: dict[Any, list[tuple[str, np.ndarray]]] = defaultdict(list)
        held: list[tuple[str, np.ndarray]] = []
        for name, v in self.streams.items():
            x = v.take_held()
            if x is None or v.mel is None:
                continue
            held.append((name, x))
            v.mel.push(x[0] if x.shape[0] == 1 else x.mean(axis=0))
            frames = v.mel.frames()
            if len(frames):
                groups[v.mel.transform].append((name, frames))
        if held:
            levels.update(zip((name for name, _ in held), levels_dbfs([x for _, x in held])))
        out: dict[str, np.ndarray] = {}
        for transform, items in groups.items():
            cols = transform(np.concatenate([f for _, f in items]) if len(items) > 1 else items[0][1])
            at = 0
            for name, frames in items:
                out[name] = cols[at : at + len(frames)]
                at += len(frames)
        return out

    def _forget_idle(self, now: Now, u: Update) -> None:
        for name, v in self.streams.items():
            if now.mono - v.last_seen > self.cfg.forget_s:
                self.streams.pop(name)
            elif now.mono - v.last_seen > self.cfg.idle_s and v.shown_level is not None:
                v.shown_level = None  # an idle stream has no level
                v.changed = v.reshaped = True

    def health(self, now: Now) -> dict[str, Any]:
        """The pipeline as this view can see it (docs/web.md says what each part means)."""
        elapsed = max(now.mono - self.last_sent_at, 1e-3)
        per, other = self.board.take_sent()
        self.last_sent_at = now.mono
        self.sent_rates = {name: round(n / elapsed) for name, n in per.items()}
        cpu = time.process_time()
        self.cpu_pct = round(100.0 * (cpu - self.last_cpu) / elapsed, 1)
        self.last_cpu = cpu
        m = self.metrics
        out: dict[str, Any] = {
            "t_ns": now.wall_ns,
            "stages": [{"stage": s, "seen_s": round(now.mono - t, 1), "up": now.mono - t < STAGE_UP_S}
                       for s, t in sorted(self.stages.items())],
            "files": [self._read_health_file(p, now) for p in self.health_files],
            "web": {"messages": m.total_in, "bad": dict(m.bad), "drops": dict(m.drops), "gaps": m.total_gaps,
                    "streams": len(self.streams), "cpu_pct": self.cpu_pct,
                    "sent_bytes_per_s": self.sent_rates, "sent_other_bytes_per_s": round(other / elapsed)},
        }
        if self.outside is not None:
            out["web"].update(self.outside())
        return out

    def _read_health_file(self, path: Path, now: Now) -> dict[str, Any]:
        """One stage's --health-file: small, validated; a missing or stale file says so."""
        row: dict[str, Any] = {"path": str(path)}
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_HEALTH_FILE_BYTES + 1)
            if len(raw) > MAX_HEALTH_FILE_BYTES:
                raise ValueError("larger than a health file")
            st = msgspec.json.decode(raw, type=_HealthFileStatus)
        except OSError as e:
            row["error"] = e.strerror or "cannot read"
            return row
        except (ValueError, msgspec.DecodeError):
            self.metrics.bad_message("bad_health_file")
            row["error"] = "not a soundbus health file"
            return row
        age = now.wall_ns / NS - st.t
        stale = not math.isfinite(age) or age > 5.0  # the stage rewrites it about once a second
        row.update({"stage": st.stage[:32], "ok": bool(st.ok and not stale), "stale": stale,
                    "age_s": round(age, 1) if math.isfinite(age) else None,
                    "input_connected": st.input_connected, "seconds_since_input": st.seconds_since_input,
                    "messages_in": st.messages_in, "messages_out": st.messages_out, "bad": st.bad})
        return row

    def finish(self, now: Now) -> list[bytes]:
        return []

    def summary(self) -> str:
        sent = sum(self.sent_rates.values())
        return f"web: streams={len(self.streams)} updates={self.published} sent={sent}B/s cpu={self.cpu_pct}%"
