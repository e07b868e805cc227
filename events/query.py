"""Reading a store: filters, times as people write them, tables, JSON (``soundbus events list|show|stats``)."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import time
from dataclasses import dataclass

from common.errors import UserError
from events.store import SELECT_EVENTS, as_dict

NS = 1_000_000_000
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """A time as ns since the Unix epoch: ``now``, ``90s``/``15m``/``2h``/``7d``/``1w`` ago, Unix
    seconds, or ISO 8601 (``2024-05-01``, ``2024-05-01T13:00``, ``...Z`` or ``+02:00``; no zone = UTC)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t == "now":
        return now_ns
    m = _RELATIVE.match(t)
    if m:
        return now_ns - int(float(m.group(1)) * _UNIT_S[m.group(2)] * NS)
    try:
        return int(float(t) * NS)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(f"cannot read the time {text!r}: use ISO 8601 (2024-05-01T13:00Z), Unix seconds, or an "
                        "age like 15m, 2h, 7d.") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp() * NS)


def iso(ns: int) -> str:
    """``2024-05-01T13:00:03.120Z`` (UTC, milliseconds); '-' for 0."""
    if not ns:
        return "-"
    s, rem = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{rem // 1_000_000:03d}Z"


@dataclass
class Filter:
    """Which events: onset in [since, until), stream, model, label, peak at least ``min_score``."""

    since_ns: int | None = None
    until_ns: int | None = None
    streams: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    min_score: float | None = None

    def where(self) -> tuple[str, list]:
        parts, params = [], []
        if self.since_ns is not None:
            parts.append("start_ns >= ?")
            params.append(self.since_ns)
        if self.until_ns is not None:
            parts.append("start_ns < ?")
            params.append(self.until_ns)
        for col, values in (("stream", self.streams), ("model", self.models), ("label", self.labels)):
            if values:
                parts.append(f"{col} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if self.min_score is not None:
            parts.append("peak >= ?")
            params.append(self.min_score)
        return (" WHERE " + " AND ".join(parts) if parts else ""), params


def list_events(conn: sqlite3.Connection, f: Filter, limit: int | None) -> list[dict]:
    """Matching events in onset order; with ``limit``, the newest ``limit`` of them."""
    where, params = f.where()
    if limit:
        sql = f"SELECT * FROM ({SELECT_EVENTS}{where} ORDER BY start_ns DESC, id DESC LIMIT ?) ORDER BY start_ns, id"
        params = [*params, limit]
    else:
        sql = f"{SELECT_EVENTS}{where} ORDER BY start_ns, id"
    return [as_dict(r) for r in conn.execute(sql, params)]


def get_event(conn: sqlite3.Connection, event_id: int) -> dict:
    row = conn.execute(f"{SELECT_EVENTS} WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        lo, hi = conn.execute("SELECT min(id), max(id) FROM events").fetchone()
        held = f"ids {lo}-{hi}" if lo is not None else "no events"
        raise UserError(f"no event {event_id} in the store (it holds {held}); see `soundbus events list`.")
    return as_dict(row)


def hourly_counts(conn: sqlite3.Connection, f: Filter) -> list[dict]:
    """Events per (hour of onset, UTC) and label."""
    where, params = f.where()
    sql = (f"SELECT start_ns / {3600 * NS} AS hour, label, count(*) FROM events{where} "
           "GROUP BY hour, label ORDER BY hour, label")
    return [{"hour": iso(h * 3600 * NS)[:13] + ":00Z", "label": label, "count": n}
            for h, label, n in conn.execute(sql, params)]


def duration_s(e: dict) -> float | None:
    return (e["end_ns"] - e["start_ns"]) / 1e9 if e["end_ns"] else None


def event_json(e: dict) -> dict:
    """A row as JSON: every column, plus the times in ISO 8601 and the duration."""
    return {**e, "start": iso(e["start_ns"]), "end": iso(e["end_ns"]) if e["end_ns"] else None,
            "duration_s": duration_s(e)}


def table(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns; the first row is the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def events_table(events: list[dict]) -> str:
    rows = [("ID", "START (UTC)", "DUR s", "STREAM", "MODEL", "LABEL", "PEAK", "MEAN", "CLIP")]
    for e in events:
        d = duration_s(e)
        clip = e["clip"] or e["clip_status"] or ("pending" if not e["end_ns"] else "-")
        if e["clip"] and e["gap_ms"]:
            clip += f" (gap {e['gap_ms']} ms)"
        rows.append((str(e["id"]), iso(e["start_ns"]), "on" if d is None else f"{d:.2f}", e["stream"], e["model"],
                     e["label"], f"{e['peak']:.2f}", f"{e['mean']:.2f}", clip))
    return table(rows)
