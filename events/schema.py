"""The event store's SQLite file: its schema, its versions, and how an old one is brought up to date.

A store is a directory: ``events.db`` (SQLite in WAL mode) and ``clips/`` (one audio file
per event, path relative to the directory). The database says what it is with
``PRAGMA application_id`` (:data:`APP_ID`) and which schema it has with
``PRAGMA user_version``; :func:`open_db` refuses anything else with one sentence and
brings an older schema to :data:`CURRENT_VERSION` by running :data:`MIGRATIONS` in order,
each in its own transaction (a crash mid-migration leaves the previous version intact).

A new store is created by running the first version's DDL and then every migration, so
the path an old store takes is the path every store takes.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from common.errors import UserError

log = logging.getLogger("events.schema")

DB_NAME = "events.db"
CLIPS_DIR = "clips"
APP_ID = 0x53424556  # "SBEV"
BUSY_TIMEOUT_S = 5.0

# Version 1: the first layout (kept verbatim: migrations start from it).
V1_DDL = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    model TEXT NOT NULL,
    label TEXT NOT NULL,
    start_ns INTEGER NOT NULL,            -- audio time of the onset, ns since the Unix epoch
    end_ns INTEGER NOT NULL DEFAULT 0,    -- audio time of the offset; 0 while the event is on
    peak REAL NOT NULL,
    mean REAL NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    clip TEXT NOT NULL DEFAULT ''         -- path relative to the store directory, '' when none
);
CREATE INDEX events_by_start ON events (start_ns);
CREATE INDEX events_by_label ON events (label, start_ns);
CREATE INDEX events_by_stream ON events (stream, start_ns);
"""

# Version 2: what a clip holds and how the event ended; stream cursors and outages.
V2_DDL = """
ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'closed';  -- open | closed | cut
ALTER TABLE events ADD COLUMN windows INTEGER NOT NULL DEFAULT 0;     -- window scores in the mean
ALTER TABLE events ADD COLUMN clip_status TEXT NOT NULL DEFAULT '';   -- see events.store.ClipStatus
ALTER TABLE events ADD COLUMN clip_offset INTEGER NOT NULL DEFAULT 0; -- stream sample index of its first sample
ALTER TABLE events ADD COLUMN clip_rate INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN clip_samples INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN clip_start_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN clip_end_ns INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN clip_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN gap_ms INTEGER NOT NULL DEFAULT 0;      -- audio missing inside the clip
ALTER TABLE events ADD COLUMN stored_ns INTEGER NOT NULL DEFAULT 0;   -- wall clock of the first write
UPDATE events SET status = CASE WHEN end_ns = 0 THEN 'open' ELSE 'closed' END;
UPDATE events SET clip_status = 'written' WHERE clip != '';
CREATE INDEX events_by_status ON events (status) WHERE status = 'open';
CREATE TABLE cursors (                    -- the last result seen per stream and model
    stream TEXT NOT NULL,
    model TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    PRIMARY KEY (stream, model)
) WITHOUT ROWID;
CREATE TABLE outages (                    -- results this store never saw
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    model TEXT NOT NULL,
    from_ns INTEGER NOT NULL,             -- audio time after the last result seen
    to_ns INTEGER NOT NULL,               -- audio time of the first result seen again
    results INTEGER NOT NULL,             -- results missing (-1: unknown, the stream restarted)
    cause TEXT NOT NULL,                  -- store_down | transit
    noted_ns INTEGER NOT NULL
);
CREATE INDEX outages_by_time ON outages (from_ns);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


def _v1(conn: sqlite3.Connection, store_dir: Path) -> None:
    for stmt in _statements(V1_DDL):  # not executescript: it would commit the migration's transaction
        conn.execute(stmt)


def _v2(conn: sqlite3.Connection, store_dir: Path) -> None:
    """Add v2's columns and tables; a clip's size is read from its file."""
    for stmt in _statements(V2_DDL):
        conn.execute(stmt)
    rows = conn.execute("SELECT id, clip FROM events WHERE clip != ''").fetchall()
    for rid, clip in rows:
        try:
            size = (store_dir / clip).stat().st_size
            conn.execute("UPDATE events SET clip_bytes = ? WHERE id = ?", (size, rid))
        except OSError:
            conn.execute("UPDATE events SET clip = '', clip_status = 'lost' WHERE id = ?", (rid,))


def _statements(ddl: str) -> list[str]:
    """``ddl`` split into statements (no ';' inside a statement here), comments dropped."""
    lines = [ln.split("--", 1)[0] for ln in ddl.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# (version it makes, step): run in order from the database's user_version.
MIGRATIONS: list[tuple[int, Callable[[sqlite3.Connection, Path], None]]] = [(1, _v1), (2, _v2)]
CURRENT_VERSION = MIGRATIONS[-1][0]


def db_path(store: Path) -> tuple[Path, Path]:
    """(store directory, database file) of ``store``: a directory, or the database file itself."""
    store = Path(store)
    if store.is_file():
        return store.parent, store
    return store, store / DB_NAME


def open_db(store: Path, create: bool = False, migrate: bool = True) -> sqlite3.Connection:
    """An open, current event store (autocommit mode: callers use explicit transactions).

    ``create``: make the directory and database if missing; else a missing store is a UserError.
    """
    store_dir, path = db_path(store)
    if not path.exists():
        if not create:
            raise UserError(f"no event store at {store} (no {DB_NAME} there); give the directory "
                            "`soundbus events run --dir` writes to.")
        try:
            (store_dir / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the event store {store_dir}: {e.strerror}.") from None
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
    except sqlite3.Error as e:
        raise UserError(f"cannot open {path}: {e}.") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError:
        conn.close()
        raise UserError(f"{path} is not a SQLite database, so not a soundbus event store.") from None
    if tables and app_id != APP_ID:
        conn.close()
        raise UserError(f"{path} is a SQLite database but not a soundbus event store; "
                        "give the directory `soundbus events run --dir` writes to.")
    if version > CURRENT_VERSION:
        conn.close()
        raise UserError(f"{path} has schema version {version}, made by a newer soundbus (this one knows up to "
                        f"{CURRENT_VERSION}); upgrade soundbus.")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash never corrupts; a power loss may drop the last commits
    if not tables:
        conn.execute(f"PRAGMA application_id = {APP_ID}")
    if migrate and version < CURRENT_VERSION:
        migrate_db(conn, store_dir, version)
    return conn


def migrate_db(conn: sqlite3.Connection, store_dir: Path, version: int) -> int:
    """Run every migration above ``version``, one transaction each; returns the new version."""
    first = version
    for target, step in MIGRATIONS:
        if target <= version:
            continue
        try:
            conn.execute("BEGIN IMMEDIATE")
            step(conn, store_dir)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.execute("ROLLBACK")
            raise UserError(f"cannot upgrade the event store {store_dir} to schema version {target}: {e}.") from None
        if first:  # a new store goes through every step too; only an existing one is worth a line
            log.info("event store %s: schema version %d -> %d", store_dir, version, target)
        version = target
    return version


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]
