"""The event store, read only: event history for the page and the clip of one event.

``soundbus events run`` owns the store (DIR/events.db, DIR/clips/; docs/events.md); the web
view never writes to it. Each call opens its own read-only SQLite connection (``mode=ro``:
WAL readers never block the writer), so calls can run on any worker thread.

A clip is found by the event's id, never by a path a browser sent: the row's ``clip`` column
names it, and the resolved file must lie under DIR/clips (no ``..``, no symlink out of it)
and be a regular file with a known audio extension.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from common.errors import UserError
from events.schema import APP_ID, CLIPS_DIR, CURRENT_VERSION, DB_NAME

MAX_LIMIT = 500
MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".opus": "audio/ogg"}
HISTORY_FIELDS = ("id", "stream", "model", "label", "start_ns", "end_ns", "peak", "mean", "status", "clip",
                  "clip_status", "gap_ms")


class StoreUnavailable(Exception):
    """The store cannot be read now (not created yet, locked, damaged): the reason, for the page."""


@dataclass(frozen=True)
class HistoryQuery:
    """Newest first: at most ``limit`` events with id < ``before`` (all if None), optionally of one
    stream, model or label. Built only from validated request parameters (web.server)."""

    limit: int = 50
    before: int | None = None
    stream: str | None = None
    model: str | None = None
    label: str | None = None


class StoreReader:
    """Read-only access to one event store directory."""

    def __init__(self, store_dir: Path) -> None:
        store_dir = Path(store_dir)
        if store_dir.is_file():  # the events.db itself, as the query commands accept
            store_dir = store_dir.parent
        if not store_dir.is_dir():
            raise UserError(f"--events-dir {store_dir}: no such directory; give the directory `soundbus events run "
                            "--dir` writes to.")
        self.dir = store_dir.resolve()
        self.db = self.dir / DB_NAME
        self.clips = self.dir / CLIPS_DIR

    def _connect(self) -> sqlite3.Connection:
        if not self.db.is_file():
            raise StoreUnavailable(f"no event store in {self.dir} yet (soundbus events run creates it)")
        try:
            conn = sqlite3.connect(f"file:{quote(str(self.db))}?mode=ro", uri=True, timeout=2.0,
                                   check_same_thread=True)
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot read {self.db}: {e}") from None
        if app_id != APP_ID:
            conn.close()
            raise StoreUnavailable(f"{self.db} is not a soundbus event store")
        if version != CURRENT_VERSION:
            conn.close()
            raise StoreUnavailable(f"{self.db} has schema version {version}; this view reads {CURRENT_VERSION} "
                                   "(start `soundbus events run` of this version once to upgrade it)")
        return conn

    def history(self, q: HistoryQuery) -> list[dict[str, Any]]:
        """Events newest first, as JSON-ready dicts (``clip`` is true when the event has a clip file)."""
        where, params = [], []
        for col, value in (("stream", q.stream), ("model", q.model), ("label", q.label)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        if q.before is not None:
            where.append("id < ?")
            params.append(q.before)
        sql = (f"SELECT {', '.join(HISTORY_FIELDS)} FROM events"
               f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id DESC LIMIT ?")
        params.append(min(max(q.limit, 1), MAX_LIMIT))
        conn = self._connect()
        try:
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot read {self.db}: {e}") from None
        finally:
            conn.close()
        out = []
        for row in rows:
            d = dict(zip(HISTORY_FIELDS, row))
            d["clip"] = bool(d["clip"])
            d["peak"], d["mean"] = round(d["peak"], 3), round(d["mean"], 3)
            out.append(d)
        return out

    def clip(self, event_id: int) -> tuple[Path, str] | None:
        """(file, media type) of event ``event_id``'s clip; None if it has none (or it is gone)."""
        conn = self._connect()
        try:
            row = conn.execute("SELECT clip FROM events WHERE id = ?", (event_id,)).fetchone()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"cannot read {self.db}: {e}") from None
        finally:
            conn.close()
        if row is None or not row[0]:
            return None
        return self.clip_file(row[0])

    def clip_file(self, rel: str) -> tuple[Path, str] | None:
        """The file a row's ``clip`` names, if it is a regular audio file inside DIR/clips."""
        media = MEDIA_TYPES.get(Path(rel).suffix.lower())
        if media is None or rel.startswith("/") or "\\" in rel or "\x00" in rel:
            return None
        try:
            path = (self.dir / rel).resolve(strict=True)
        except (OSError, RuntimeError):  # missing (pruned since), a symlink loop
            return None
        if not path.is_relative_to(self.clips.resolve()) or not path.is_file():
            return None
        return path, media
