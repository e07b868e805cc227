"""BridgeCore: results, stored events and what the broker says, in; MQTT publications, out.

No sockets, no broker, no clock of its own: every call takes ``now`` (time.monotonic()
seconds), so a test drives it with Result Structs and explicit times. What it returns goes
to :class:`mqtt_bridge.outgoing.Outgoing`, which holds it while the broker is away.

Per stream and model it keeps which labels are on (ON/OFF state topics, retained, on each
onset/offset) and publishes an event message per onset/offset; the top labels and the
level are published at most ``rate_hz`` times a second (the latest value; the last one
of a burst goes out when its turn comes). It remembers every retained value it published,
so a reconnect (the broker may have restarted without persistence) or Home Assistant's
birth message republishes availability, discovery configs and current states.

Discovery entities: a binary_sensor per selected label, a sensor for the level, two
diagnostic sensors for the bridge. The bridge reads back its node's retained configs: a
config for a label no longer selected is cleared (empty retained payload: Home Assistant
removes the entity), one still selected is kept and its state set OFF until results say
otherwise (a bridge that died mid-event left ON behind).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.streams import Continuity, SeqCursor
from common.wire.messages import MAX_STREAM_ID_LEN, Event, Flag, Result, StoredEvent, is_name
from mqtt_bridge import discovery
from mqtt_bridge.names import Topics, label_key
from mqtt_bridge.outgoing import Kind, Publication

log = logging.getLogger("soundbus.mqtt")

NS = 1_000_000_000
HOUSEKEEPING_S = 0.25  # pending rate-limited values, stream timeouts, event-store waits
END_GRACE_S = 2.0  # after every model's last result, a stream goes offline when nothing came for this long
MAX_MODELS_PER_STREAM = 32
MAX_LABELS = 32768  # labels with a state topic, over all streams (each costs a few hundred bytes)
MAX_LABELS_PER_MODEL = 1024  # a model's label set (common.wire.messages.MAX_LABELS per result)
MAX_PENDING_EVENTS = 1024  # event messages waiting for the event store's id
MAX_STORED_KEPT = 1024  # stored events remembered for results that arrive after them
MAX_CONFIG_BYTES = 16384  # a discovery config read back from the broker
MAX_ADOPTED = 32768  # configs read back and kept

ON, OFF, ONLINE, OFFLINE, CLEAR = b"ON", b"OFF", b"online", b"offline", b""
_DISC, _END = int(Flag.DISCONTINUITY), int(Flag.END)  # plain ints: IntFlag's & costs ~2 us per result

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class BridgeConfig:
    """What the bridge publishes.

    ``labels``: label keys (names.label_key) that get a Home Assistant binary_sensor; None:
    every label that produced an event. ``rate_hz``: level and top-labels messages per stream
    (and model) per second, at most. ``events_wait_s`` > 0: an event message waits up to that
    long for the event store's StoredEvent (id, clip); 0: sent at once.
    """

    topics: Topics = field(default_factory=Topics)
    labels: frozenset[str] | None = None
    discovery: bool = True
    qos: int = 1
    rate_hz: float = 1.0
    top_labels: int = 5
    stream_timeout_s: float = 30.0
    events_wait_s: float = 0.0
    max_streams: int = 1024
    stats_every_s: float = 10.0


class ModelState:
    """One model on one stream: continuity, which labels are on, the waiting top labels."""

    __slots__ = ("cursor", "ended", "keys", "last", "on")

    def __init__(self) -> None:
        self.cursor = SeqCursor()
        self.on: dict[str, bool] = {}  # label -> on
        self.keys: dict[str, str] = {}  # label -> key (topic level), for labels that produced an event
        self.last: Result | None = None  # the latest result with labels
        self.ended = False


class StreamState:
    """One stream: online or not, its models, the waiting level and labels."""

    __slots__ = ("labels", "labels_due", "labels_waiting", "last_seen", "level_due", "level_known", "level_pending",
                 "models", "online")

    def __init__(self) -> None:
        self.online = False
        self.last_seen = 0.0
        self.models: dict[str, ModelState] = {}
        self.level_due = 0.0
        self.level_pending: Result | None = None
        self.level_known = False  # its level sensor config is published
        self.labels_due = 0.0  # monotonic s: the next labels message may go then
        self.labels_waiting = False  # a model's labels changed since the last labels message
        self.labels = 0  # labels with a state topic (counted against MAX_LABELS)


@dataclass
class Counters:
    results: int = 0
    stale: int = 0  # duplicates (the same result twice, e.g. through two paths)
    events: int = 0  # event messages made
    events_with_id: int = 0  # ... that carry the event store's id
    refused_labels: int = 0  # labels beyond MAX_LABELS / models beyond MAX_MODELS_PER_STREAM
    configs_cleared: int = 0
    bad_configs: int = 0  # unreadable configs read back from the broker


def _is_stream(s: str) -> bool:
    return 0 < len(s) <= MAX_STREAM_ID_LEN and is_name(s)


def iso(ns: int) -> str:
    """UTC ISO-8601 with milliseconds: ``2025-01-31T12:00:00.123Z``."""
    s, rem = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{rem // 1_000_000:03d}Z"


class BridgeCore:
    """Socket-free translation of soundbus messages into MQTT publications (see the module docstring)."""

    def __init__(self, cfg: BridgeConfig, metrics: StageMetrics,
                 outside_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.t = cfg.topics
        self.metrics = metrics
        self.outside_stats = outside_stats or dict  # counters of the parts around the core (queue, link)
        self.period = 1.0 / cfg.rate_hz
        self.streams: dict[str, StreamState] = {}
        self.labels = 0
        self.counters = Counters()
        # Everything retained this bridge stands for, re-published on reconnect / HA birth.
        self.availability: dict[str, Publication] = {}
        self.configs: dict[str, Publication] = {}
        self.retained: dict[str, Publication] = {}
        self.pending: OrderedDict[tuple[str, str, str, int, str], list] = OrderedDict()  # -> [deadline, record]
        self.stored: OrderedDict[tuple[str, str, str, int], StoredEvent] = OrderedDict()
        self._next_housekeeping = 0.0
        self._next_stats = 0.0
        self._warn = RateLimitedLog(log)
        self._set(Publication(self.t.bridge_status, ONLINE, Kind.AVAILABILITY))
        if cfg.discovery:
            for topic, payload in discovery.bridge_configs(self.t, cfg.qos).items():
                self.configs[topic] = Publication(topic, _json.encode(payload))

    # -- results ---------------------------------------------------------------------------

    def on_result(self, r: Result, now: float) -> list[Publication]:
        """Publications for one result (usually none: most results change nothing that is due)."""
        out: list[Publication] = []
        st = self.streams.get(r.stream)
        if st is None:
            st = self._admit(r.stream)
            if st is None:
                return out
        ms = st.models.get(r.model)
        if ms is None:
            if len(st.models) >= MAX_MODELS_PER_STREAM:
                self.counters.refused_labels += 1
                return out
            ms = st.models[r.model] = ModelState()
        cont, _ = ms.cursor.check(r.epoch, r.seq, bool(r.flags & _DISC))
        if cont is Continuity.STALE:
            self.counters.stale += 1
            return out
        self.counters.results += 1
        self.metrics.frame_in(r.stream)
        st.last_seen = now
        ms.ended = False
        if not st.online:
            st.online = True
            out.append(self._set(Publication(self.t.stream_status(r.stream), ONLINE, Kind.AVAILABILITY)))
        if r.events:
            for e in r.events:
                self._event(st, ms, r, e, now, out)
        if r.labels:
            ms.last = r
            if now >= st.labels_due:
                out.append(self._labels(r.stream, st))
                st.labels_due, st.labels_waiting = now + self.period, False
            else:
                st.labels_waiting = True
        if r.level is not None:
            if not st.level_known:
                st.level_known = True
                if self.cfg.discovery:
                    topic, payload = discovery.level_config(self.t, r.stream, self.cfg.qos)
                    out.append(self._config(topic, payload))
            if now >= st.level_due:
                out.append(self._level(r))
                st.level_due, st.level_pending = now + self.period, None
            else:
                st.level_pending = r
        if r.final or r.flags & _END:
            ms.ended = True  # the stream is offline once every model ended and END_GRACE_S passed (tick)
        return out

    def _admit(self, stream: str) -> StreamState | None:
        if len(self.streams) >= self.cfg.max_streams:
            gone = next((s for s, st in self.streams.items() if not st.online), None)
            if gone is None:
                self.metrics.drop("too_many_streams")
                self._warn.warning("too_many_streams", f"refused stream {stream}: already {len(self.streams)} "
                                                       f"streams (--max-streams {self.cfg.max_streams})")
                return None
            self._forget(gone)
        st = self.streams[stream] = StreamState()
        return st

    def _forget(self, stream: str) -> None:
        """Drop an offline stream's memory to make room (its retained topics stay on the broker)."""
        st = self.streams.pop(stream)
        self.metrics.forget(stream)
        self.labels -= st.labels
        t = self.t
        for topic in [t.stream_status(stream), t.level(stream), t.labels(stream)] + [
                t.state(stream, m, k) for m, ms in st.models.items() for k in ms.keys.values()]:
            self.retained.pop(topic, None)
            self.availability.pop(topic, None)
        for topic in [t.config("sensor", t.level_object_id(stream))] + [
                t.config("binary_sensor", t.label_object_id(stream, m, k))
                for m, ms in st.models.items() for k in ms.keys.values()]:
            self.configs.pop(topic, None)
        self.metrics.event("stream_forgotten")

    def _event(self, st: StreamState, ms: ModelState, r: Result, e: Event, now: float,
               out: list[Publication]) -> None:
        key = ms.keys.get(e.label)
        if key is None:
            if self.labels >= MAX_LABELS or len(ms.keys) >= MAX_LABELS_PER_MODEL:
                self.counters.refused_labels += 1
                self._warn.warning("too_many_labels", f"stream {r.stream} model {r.model}: label {e.label!r} "
                                                      f"refused: {self.labels} labels already have a state topic")
                return
            key = ms.keys[e.label] = label_key(e.label)
            st.labels += 1
            self.labels += 1
            if self.cfg.discovery and self._selected(key):
                topic, payload = discovery.label_config(self.t, r.stream, r.model, e.label, key, self.cfg.qos)
                out.append(self._config(topic, payload))
        on = e.state == "start"
        if ms.on.get(e.label) is not on:
            ms.on[e.label] = on
            out.append(self._set(Publication(self.t.state(r.stream, r.model, key), ON if on else OFF)))
        self._event_message(r, e, key, now, out)

    def _selected(self, key: str) -> bool:
        return self.cfg.labels is None or key in self.cfg.labels

    def _event_message(self, r: Result, e: Event, key: str, now: float, out: list[Publication]) -> None:
        start_ns = e.t_ns if e.state == "start" else e.since_ns
        end_ns = e.t_ns if e.state == "stop" else None
        rec = {
            "stream": r.stream, "model": r.model, "label": e.label, "key": key, "state": e.state,
            "score": round(e.score, 4), "start_ns": start_ns, "end_ns": end_ns,
            "start": iso(start_ns), "end": None if end_ns is None else iso(end_ns),
            "duration_s": None if end_ns is None else round((end_ns - start_ns) / NS, 3),
            "event_id": None, "clip": None,
        }
        self.counters.events += 1
        if self.cfg.events_wait_s <= 0:
            out.append(self._event_pub(rec))
            return
        stored = self.stored.get((r.stream, r.model, e.label, start_ns))
        if stored is not None:
            self._attach(rec, stored)
            if e.state == "start" or stored.end_ns:
                out.append(self._event_pub(rec))
                return
        if len(self.pending) >= MAX_PENDING_EVENTS:  # the store is far behind or gone: send the oldest as is
            _, (_, old) = self.pending.popitem(last=False)
            out.append(self._event_pub(old))
        self.pending[(r.stream, r.model, e.label, start_ns, e.state)] = [now + self.cfg.events_wait_s, rec]

    def _attach(self, rec: dict[str, Any], stored: StoredEvent) -> None:
        rec["event_id"] = stored.id
        if stored.clip:
            rec["clip"] = stored.clip

    def _event_pub(self, rec: dict[str, Any]) -> Publication:
        if rec["event_id"] is not None:
            self.counters.events_with_id += 1
        return Publication(self.t.event(rec["stream"], rec["model"]), _json.encode(rec), Kind.EVENT)

    def _labels(self, stream: str, st: StreamState) -> Publication:
        """One message with every model's latest top labels (one per stream, not per model: each MQTT
        message costs the bridge ~100 us in paho, more than a result does)."""
        models = {}
        for model, ms in st.models.items():
            r = ms.last
            if r is not None:
                top = sorted(r.labels, key=lambda lbl: -lbl.score)[: self.cfg.top_labels]
                models[model] = {"start_ns": r.start_ns, "end_ns": r.end_ns,
                                 "labels": [{"label": lbl.name, "score": round(lbl.score, 4)} for lbl in top]}
        return self._set(Publication(self.t.labels(stream), _json.encode({"models": models}), Kind.TELEMETRY))

    def _level(self, r: Result) -> Publication:
        lv = r.level
        payload = {"rms_dbfs": round(lv.rms_dbfs, 2), "peak_dbfs": round(lv.peak_dbfs, 2), "clipped": lv.clipped,
                   "start_ns": r.start_ns, "end_ns": r.end_ns}
        return self._set(Publication(self.t.level(r.stream), _json.encode(payload), Kind.TELEMETRY))

    def _set(self, p: Publication) -> Publication:
        """Remember a retained publication (the latest per topic) and return it."""
        (self.availability if p.kind is Kind.AVAILABILITY else self.retained)[p.topic] = p
        return p

    def _config(self, topic: str, payload: dict[str, Any]) -> Publication:
        p = self.configs[topic] = Publication(topic, _json.encode(payload))
        return p

    # -- the event store -------------------------------------------------------------------

    def on_stored(self, se: StoredEvent, now: float) -> list[Publication]:
        """An event the store kept: complete the waiting event messages with its id and clip."""
        key = (se.stream, se.model, se.label, se.start_ns)
        self.stored[key] = se
        self.stored.move_to_end(key)
        if len(self.stored) > MAX_STORED_KEPT:
            self.stored.popitem(last=False)
        out = []
        for state in ("start", "stop"):
            waiting = self.pending.get((*key, state))
            if waiting is None:
                continue
            self._attach(waiting[1], se)
            if state == "start" or se.end_ns:
                del self.pending[(*key, state)]
                out.append(self._event_pub(waiting[1]))
        return out

    # -- the broker ------------------------------------------------------------------------

    def everything(self) -> list[Publication]:
        """Every retained value the bridge stands for: after a (re)connect, or Home Assistant's birth."""
        return [*self.availability.values(), *self.configs.values(), *self.retained.values()]

    def on_connected(self) -> list[Publication]:
        """After a (re)connect: everything, and fresh stats at the next tick (drops while away)."""
        self._next_stats = self._next_housekeeping = 0.0
        return self.everything()

    def on_ha_status(self, payload: bytes) -> list[Publication]:
        """Home Assistant's birth message (``online``): discovery again, and the states it needs."""
        if payload.strip() != ONLINE or not self.cfg.discovery:
            return []
        log.info("Home Assistant announced itself: publishing discovery again (%d configs)", len(self.configs))
        return self.everything()

    def on_config(self, topic: str, payload: bytes) -> list[Publication]:
        """A retained discovery config of this node, read back from the broker (or our own echo)."""
        if not payload or not self.cfg.discovery:
            return []  # a cleared config, or not ours to manage
        mine = self.configs.get(topic)
        if mine is not None:
            return []  # one we published (in this run, or read back before): current already
        parsed = self.t.parse_config(topic)
        if parsed is None:
            return []
        component, oid = parsed
        state_topic = self._state_topic_of(payload)
        if state_topic is None:
            self.counters.bad_configs += 1
            return self._clear(topic, None, "unreadable")
        if component == "binary_sensor":
            where = self.t.parse_state(state_topic)
            if where is None or not (_is_stream(where[0]) and is_name(where[1])) \
                    or oid != self.t.label_object_id(*where):
                return self._clear(topic, None, "not of this topic layout")
            if not self._selected(where[2]):
                return self._clear(topic, state_topic, "label no longer selected")
            return self._adopt(topic, payload, where[0], state_topic)
        if component == "sensor":
            stream = self._level_stream(state_topic)
            if stream is None or oid != self.t.level_object_id(stream):
                return self._clear(topic, None, "not of this topic layout")
            return self._adopt(topic, payload, stream, None)
        return []

    def _state_topic_of(self, payload: bytes) -> str | None:
        if len(payload) > MAX_CONFIG_BYTES:
            return None
        try:
            cfg = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        st = cfg.get("state_topic") if isinstance(cfg, dict) else None
        return st if isinstance(st, str) and st else None

    def _level_stream(self, state_topic: str) -> str | None:
        head, tail = f"{self.t.prefix}stream/", "/level"
        if state_topic.startswith(head) and state_topic.endswith(tail):
            stream = state_topic[len(head):-len(tail)]
            if _is_stream(stream):
                return stream
        return None

    def _clear(self, topic: str, state_topic: str | None, why: str) -> list[Publication]:
        self.counters.configs_cleared += 1
        self._warn.log(logging.INFO, "config_cleared", f"removing the Home Assistant entity at {topic} ({why})")
        self.configs.pop(topic, None)
        out = [Publication(topic, CLEAR)]
        if state_topic is not None:
            self.retained.pop(state_topic, None)
            out.append(Publication(state_topic, CLEAR))
        return out

    def _adopt(self, topic: str, payload: bytes, stream: str, state_topic: str | None) -> list[Publication]:
        """Keep a config from an earlier run; until this stream's results arrive it is offline, its label OFF."""
        if len(self.configs) >= MAX_ADOPTED:
            return []
        self.configs[topic] = Publication(topic, payload)
        out = []
        st = self.streams.get(stream)
        status = self.t.stream_status(stream)
        if (st is None or not st.online) and status not in self.availability:
            out.append(self._set(Publication(status, OFFLINE, Kind.AVAILABILITY)))
        if state_topic is not None and state_topic not in self.retained:
            out.append(self._set(Publication(state_topic, OFF)))
        return out

    # -- timers ----------------------------------------------------------------------------

    def wake_in(self, now: float) -> float:
        return max(0.0, self._next_housekeeping - now)

    def tick(self, now: float) -> list[Publication]:
        """Due rate-limited values, streams gone quiet, event messages done waiting, stats."""
        out: list[Publication] = []
        if now < self._next_housekeeping:
            return out
        self._next_housekeeping = now + HOUSEKEEPING_S
        for stream, st in self.streams.items():
            if not st.online:
                continue
            if st.level_pending is not None and now >= st.level_due:
                out.append(self._level(st.level_pending))
                st.level_pending, st.level_due = None, now + self.period
            if st.labels_waiting and now >= st.labels_due:
                out.append(self._labels(stream, st))
                st.labels_waiting, st.labels_due = False, now + self.period
            quiet = now - st.last_seen
            ended = quiet >= END_GRACE_S and all(m.ended for m in st.models.values())
            if ended or quiet >= self.cfg.stream_timeout_s:
                self._flush_pending(stream, st, out)
                st.online = False
                log.info("stream %s: %s: offline", stream, "ended" if ended else f"no results for {quiet:.0f} s")
                out.append(self._set(Publication(self.t.stream_status(stream), OFFLINE, Kind.AVAILABILITY)))
        while self.pending:
            key, (deadline, rec) = next(iter(self.pending.items()))
            if deadline > now:
                break
            del self.pending[key]
            out.append(self._event_pub(rec))
        if now >= self._next_stats:
            self._next_stats = now + self.cfg.stats_every_s
            out.append(self._set(Publication(self.t.bridge_stats, _json.encode(self.stats()), Kind.TELEMETRY)))
        return out

    def _flush_pending(self, stream: str, st: StreamState, out: list[Publication]) -> None:
        if st.level_pending is not None:
            out.append(self._level(st.level_pending))
            st.level_pending = None
        if st.labels_waiting:
            out.append(self._labels(stream, st))
            st.labels_waiting = False

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {"results": c.results, "events": c.events, "events_with_id": c.events_with_id,
                "streams_online": sum(st.online for st in self.streams.values()), "labels": self.labels,
                "duplicates": c.stale, "refused_labels": c.refused_labels, "events_dropped": 0,
                **self.outside_stats()}

    def stop(self) -> list[Publication]:
        """At a clean stop: waiting event messages as they are, every stream and the bridge offline."""
        out = [self._event_pub(rec) for _, rec in self.pending.values()]
        self.pending.clear()
        for stream, st in self.streams.items():
            if st.online:
                st.online = False
                out.append(self._set(Publication(self.t.stream_status(stream), OFFLINE, Kind.AVAILABILITY)))
        out.append(self._set(Publication(self.t.bridge_status, OFFLINE, Kind.AVAILABILITY)))
        return out
