"""Rows and clips together: what a row means, recovery after a crash, retention, the store's size.

Invariants (docs/events.md explains them):

- a clip file gets its real name (renamed from ``*.tmp``) before the row that names it
  commits, so every committed ``clip`` names a complete file (a power loss can break this
  only with ``--no-fsync``; :func:`recover` then finds and marks the row ``lost``);
- retention deletes rows first and their clips after the commit, so a crash in between
  leaves clips no row names (orphans), which :func:`recover` deletes; never a row whose
  clip was deleted.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from common.wire.messages import StoredEvent
from events.clips import TMP_SUFFIX
from events.schema import CLIPS_DIR

log = logging.getLogger("events.store")

NS = 1_000_000_000
PRUNE_BATCH = 500  # rows deleted per transaction (keeps each one short)


class ClipStatus:
    """``events.clip_status``: what became of an event's clip."""

    PENDING = ""  # not cut yet (the event is on, or its post-roll has not arrived)
    WRITTEN = "written"
    DISK_FULL = "disk_full"  # the file system was full: no clip
    NO_AUDIO = "no_audio"  # no audio of the stream was held for the event's span
    DROPPED = "dropped"  # the writer's queue was full
    ERROR = "error"  # the file could not be written (see the log)
    LOST = "lost"  # the row named a clip that was missing when the store opened


EVENT_FIELDS = ("id", "stream", "model", "label", "start_ns", "end_ns", "peak", "mean", "source", "clip", "status",
                "windows", "clip_status", "clip_offset", "clip_rate", "clip_samples", "clip_start_ns", "clip_end_ns",
                "clip_bytes", "gap_ms", "stored_ns")
SELECT_EVENTS = f"SELECT {', '.join(EVENT_FIELDS)} FROM events"


def as_dict(row: tuple) -> dict:
    return dict(zip(EVENT_FIELDS, row))


def stored_event(row: dict) -> StoredEvent:
    """The typed message a stored row is republished as."""
    return StoredEvent(stream=row["stream"], model=row["model"], label=row["label"], id=row["id"],
                       start_ns=row["start_ns"], end_ns=row["end_ns"], peak=row["peak"], mean=row["mean"],
                       clip=row["clip"])


def clip_relpath(event_id: int, stream: str, start_ns: int, ext: str) -> str:
    """``clips/YYYY-MM-DD/STREAM/ID.ext`` (date of the onset, UTC): a few thousand files per directory at most."""
    day = time.strftime("%Y-%m-%d", time.gmtime(start_ns // NS))
    return f"{CLIPS_DIR}/{day}/{stream}/{event_id}{ext}"


def get_meta(conn: sqlite3.Connection, key: str, default: str = "") -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (key, value))


# ---------------------------------------------------------------------------------------
# recovery


@dataclass
class Recovery:
    """What :func:`recover` found: the last run's end, and what it cleaned up."""

    unclean: bool = False  # the last run did not close the store (killed, crashed, power lost)
    tmp_removed: int = 0  # half-written clips (*.tmp)
    orphans_removed: int = 0  # complete clips no row names (a crash between rename and commit, or in a prune)
    clips_lost: int = 0  # rows whose clip file was missing


def recover(conn: sqlite3.Connection, store_dir: Path) -> Recovery:
    """Make rows and files agree after whatever ended the last run. Only the process that
    holds the store's lock may call this (a clip being written looks like an orphan)."""
    rep = Recovery(unclean=get_meta(conn, "clean", "1") != "1")
    named = {clip for (clip,) in conn.execute("SELECT clip FROM events WHERE clip != ''")}
    clips = store_dir / CLIPS_DIR
    for root, dirs, files in os.walk(clips):
        for name in files:
            path = Path(root) / name
            rel = path.relative_to(store_dir).as_posix()
            if name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)
                rep.tmp_removed += 1
            elif rel not in named:
                path.unlink(missing_ok=True)
                rep.orphans_removed += 1
    if rep.unclean:
        missing = [clip for clip in named if not (store_dir / clip).is_file()]
        if missing:
            conn.execute("BEGIN")
            conn.executemany("UPDATE events SET clip = '', clip_bytes = 0, clip_status = ? WHERE clip = ?",
                             [(ClipStatus.LOST, c) for c in missing])
            conn.execute("COMMIT")
            rep.clips_lost = len(missing)
    _remove_empty_dirs(clips)
    return rep


def _remove_empty_dirs(root: Path) -> None:
    for d, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        if Path(d) != root:
            try:
                os.rmdir(d)
            except OSError:
                pass  # not empty


# ---------------------------------------------------------------------------------------
# size and retention


def store_bytes(conn: sqlite3.Connection, store_dir: Path) -> int:
    """Bytes the store uses: clips plus the database's used pages plus its WAL."""
    clips = conn.execute("SELECT coalesce(sum(clip_bytes), 0) FROM events").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    wal = store_dir / "events.db-wal"
    try:
        wal_bytes = wal.stat().st_size
    except OSError:
        wal_bytes = 0
    return clips + pages * page_size + wal_bytes


@dataclass
class Pruned:
    """What :func:`prune` removed."""

    rows: int = 0
    clips: int = 0
    clip_bytes: int = 0
    oldest_kept_ns: int = 0


def prune(conn: sqlite3.Connection, store_dir: Path, max_age_s: float | None, max_bytes: int | None,
          now_ns: int, dry_run: bool = False) -> Pruned:
    """Delete the oldest events (by onset), rows and clips together, until none is older than
    ``max_age_s`` and the store is within ``max_bytes``. Rows go first, clips after the commit."""
    out = Pruned()
    if max_age_s is not None:
        cutoff = now_ns - int(max_age_s * NS)
        while True:
            rows = conn.execute("SELECT id, clip, clip_bytes FROM events WHERE start_ns < ? ORDER BY start_ns, id "
                                f"LIMIT {PRUNE_BATCH} OFFSET ?", (cutoff, out.rows if dry_run else 0)).fetchall()
            if not rows:
                break
            _delete(conn, store_dir, rows, out, dry_run)
    if max_bytes is not None:
        size = store_bytes(conn, store_dir)
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        while size > max_bytes:
            rows = conn.execute(f"SELECT id, clip, clip_bytes FROM events ORDER BY start_ns, id LIMIT {PRUNE_BATCH} "
                                "OFFSET ?", (out.rows if dry_run else 0,)).fetchall()
            if not rows:
                break
            take, freed = [], 0
            for r in rows:  # just enough rows: clip bytes plus an estimate of a row's share of the pages
                take.append(r)
                freed += r[2] + page // 16
                if size - freed <= max_bytes:
                    break
            _delete(conn, store_dir, take, out, dry_run)
            size -= freed
    row = conn.execute("SELECT min(start_ns) FROM events").fetchone()
    out.oldest_kept_ns = row[0] or 0
    return out


def _delete(conn: sqlite3.Connection, store_dir: Path, rows: list[tuple], out: Pruned, dry_run: bool) -> None:
    out.rows += len(rows)
    clips = [(c, b) for _, c, b in rows if c]
    out.clips += len(clips)
    out.clip_bytes += sum(b for _, b in clips)
    if dry_run:
        return
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("DELETE FROM events WHERE id = ?", [(r[0],) for r in rows])
    conn.execute("COMMIT")
    for clip, _ in clips:
        try:
            (store_dir / clip).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove clip %s: %s", clip, e.strerror)
