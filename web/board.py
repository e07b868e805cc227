"""The board: what every browser is shown, held once, bounded, shared by two threads.

The stage's loop (the ZeroMQ side) writes it a few times a second with :meth:`Board.apply`;
each browser's sender (the web server's asyncio loop) reads it with :meth:`Board.compose`,
which returns only what changed since that browser's :class:`Cursor`. Nothing is queued per
browser: a browser that is slow to read is simply composed for less often, and then gets
the latest state (and at most the last ``ring`` spectrogram columns), never a backlog.

Held per stream: a ring of the last ``ring`` spectrogram columns (uint8, ``bands`` each) and
the stream's state as encoded JSON parts, each with a version (``f``: what changes every
update, such as the level and the labels; ``st``: counters and health, about once a second). Held globally: the last ``MAX_EVENTS``
onsets/offsets, the last ``MAX_STORED`` stored events, and the health JSON. Memory is
``streams x ring x bands`` bytes plus small JSON: 64 streams x 500 x 64 = 2 MB.
"""

from __future__ import annotations

import base64
import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np

MAX_EVENTS = 512  # onset/offset events kept for browsers that join or fall behind
MAX_STORED = 256  # stored events kept likewise (the history API has the rest)


class _Slot:
    """One stream on the board."""

    __slots__ = ("cols", "id", "n", "parts")

    def __init__(self, slot_id: int, ring: int, bands: int) -> None:
        self.id = slot_id  # a stream that goes and comes back is a new slot: cursors restart
        self.cols = np.zeros((ring, bands), np.uint8)
        self.n = 0  # columns ever written; column i lives at row i % ring
        self.parts: dict[str, tuple[msgspec.Raw, int]] = {}  # part name -> (encoded JSON, version)


@dataclass
class Cursor:
    """How far one browser has been sent. Only its sender task touches it."""

    cols: dict[str, tuple[int, int]] = field(default_factory=dict)  # stream -> (slot id, next column)
    versions: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)  # (stream, part) -> (slot, version)
    events: int = 0  # next onset/offset sequence number wanted
    stored: int = 0
    health: int = 0


@dataclass
class Update:
    """What the stage's loop hands over in one :meth:`Board.apply`."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)  # stream -> (n, bands) uint8
    states: dict[str, dict[str, bytes]] = field(default_factory=dict)  # stream -> {part: encoded JSON object}
    removed: list[str] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)  # encoded JSON objects
    stored: list[bytes] = field(default_factory=list)
    health: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.columns or self.states or self.removed or self.events or self.stored
                    or self.health is not None)


class Board:
    """Thread-safe, bounded view state; see the module docstring."""

    def __init__(self, ring: int, bands: int, max_streams: int) -> None:
        self.ring, self.bands, self.max_streams = ring, bands, max_streams
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._ids = itertools.count(1)
        self._events: deque[tuple[int, msgspec.Raw]] = deque(maxlen=MAX_EVENTS)
        self._events_next = 1
        self._stored: deque[tuple[int, msgspec.Raw]] = deque(maxlen=MAX_STORED)
        self._stored_next = 1
        self._health: msgspec.Raw | None = None
        self._health_version = 0
        self.sent_bytes: Counter[str] = Counter()  # per stream, every browser together (read by the loop)
        self.sent_other = 0  # bytes not owed to one stream (events, health, framing)
        self.on_change: Callable[[], None] | None = None  # set by the server: wakes the senders

    # -- the stage's side ------------------------------------------------------------------

    def apply(self, u: Update) -> None:
        """Take one update (columns, states, events, health) and wake the senders."""
        if not u:
            return
        with self._lock:
            for name in u.removed:
                self._slots.pop(name, None)
            for name, cols in u.columns.items():
                slot = self._slot(name)
                if slot is not None:
                    self._write_columns(slot, cols)
            for name, parts in u.states.items():
                slot = self._slot(name)
                if slot is not None:
                    for part, data in parts.items():
                        old = slot.parts.get(part)
                        slot.parts[part] = (msgspec.Raw(data), old[1] + 1 if old else 1)
            for ev in u.events:
                self._events.append((self._events_next, msgspec.Raw(ev)))
                self._events_next += 1
            for ev in u.stored:
                self._stored.append((self._stored_next, msgspec.Raw(ev)))
                self._stored_next += 1
            if u.health is not None:
                self._health = msgspec.Raw(u.health)
                self._health_version += 1
        if self.on_change is not None:
            self.on_change()

    def _slot(self, name: str) -> _Slot | None:
        slot = self._slots.get(name)
        if slot is None and len(self._slots) < self.max_streams:  # the stage's StreamTable bounds it first
            slot = self._slots[name] = _Slot(next(self._ids), self.ring, self.bands)
        return slot

    def _write_columns(self, slot: _Slot, cols: np.ndarray) -> None:
        cols = cols[-self.ring:]
        first = slot.n % self.ring
        if first + len(cols) <= self.ring:
            slot.cols[first : first + len(cols)] = cols
        else:
            rows = (slot.n + np.arange(len(cols))) % self.ring
            slot.cols[rows] = cols
        slot.n += len(cols)

    # -- a browser's side ------------------------------------------------------------------

    def compose(self, cur: Cursor, now_ns: int) -> bytes | None:
        """Everything ``cur`` has not been sent, as one JSON text, and advance ``cur``; None if nothing.

        ``{"t": "u", "now_ns": ..., "s": {stream: {"spec": {"i", "n", "d"}, "f": {...}, "st": {...}}},
        "gone": [...], "ev": [...], "stored": [...], "health": {...}}``; ``spec.d`` is base64
        of ``n`` columns of ``bands`` bytes, the first being column number ``i`` of the stream.
        """
        streams: dict[str, dict] = {}
        per_stream: dict[str, int] = {}
        with self._lock:
            gone = [name for name in cur.cols if name not in self._slots]
            for name in gone:
                cur.cols.pop(name, None)
            if gone:
                for key in [k for k in cur.versions if k[0] not in self._slots]:
                    del cur.versions[key]
            for name, slot in self._slots.items():
                entry: dict = {}
                size = 0
                sid, nxt = cur.cols.get(name, (0, 0))
                start = max(nxt if sid == slot.id else 0, slot.n - self.ring)
                if slot.n > start:
                    rows = np.arange(start, slot.n) % self.ring
                    data = base64.b64encode(slot.cols[rows].tobytes()).decode("ascii")
                    entry["spec"] = {"i": start, "n": slot.n - start, "d": data}
                    size += len(data)
                cur.cols[name] = (slot.id, slot.n)
                for part, (raw, version) in slot.parts.items():
                    if cur.versions.get((name, part)) != (slot.id, version):
                        entry[part] = raw
                        size += len(raw)
                        cur.versions[(name, part)] = (slot.id, version)
                if entry:
                    streams[name] = entry
                    per_stream[name] = size
            events = self._since(self._events, cur.events)
            cur.events = self._events_next
            stored = self._since(self._stored, cur.stored)
            cur.stored = self._stored_next
            health = None
            if self._health is not None and cur.health != self._health_version:
                health = self._health
                cur.health = self._health_version
        if not (streams or gone or events or stored or health is not None):
            return None
        msg: dict = {"t": "u", "now_ns": now_ns}
        if streams:
            msg["s"] = streams
        if gone:
            msg["gone"] = gone
        if events:
            msg["ev"] = events
        if stored:
            msg["stored"] = stored
        if health is not None:
            msg["health"] = health
        out = msgspec.json.encode(msg)
        with self._lock:
            self.sent_bytes.update(per_stream)
            self.sent_other += len(out) - sum(per_stream.values())
        return out

    @staticmethod
    def _since(ring: deque[tuple[int, msgspec.Raw]], wanted: int) -> list[msgspec.Raw]:
        """Entries numbered ``wanted`` or later (all that are held, if some were already dropped)."""
        if not ring or ring[-1][0] < wanted:
            return []
        return [raw for seq, raw in ring if seq >= wanted]

    # -- for the JSON API --------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Every stream's state, the held events and the health (no spectrogram), JSON-ready."""
        with self._lock:
            return {
                "streams": {name: {part: raw for part, (raw, _) in slot.parts.items()}
                            for name, slot in self._slots.items()},
                "columns": {name: slot.n for name, slot in self._slots.items()},
                "events": [raw for _, raw in self._events],
                "stored": [raw for _, raw in self._stored],
                "health": self._health,
            }

    def take_sent(self) -> tuple[Counter[str], int]:
        """Bytes sent per stream and otherwise since the last call (the loop turns them into rates)."""
        with self._lock:
            per, other = self.sent_bytes, self.sent_other
            self.sent_bytes, self.sent_other = Counter(), 0
        return per, other
