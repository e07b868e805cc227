"""The event store's writer: one thread owns the database connection and the clip files.

The receive loop never waits for the disk. It hands :class:`EventRow`, :class:`ClipJob`,
:class:`ClipMissing`, :class:`Cursors` and :class:`Outage` items to :meth:`StoreWriter.submit`,
which only appends to a bounded queue (full: the item is refused and counted, the loop
goes on). The thread takes everything queued at once, writes that batch's clips (each to
a temporary name, then renamed: events.clips), then applies the batch's rows in one
transaction, and only after the commit hands the stored events to the loop for
republishing (:meth:`StoreWriter.take_published`), so a published id is always in the
database.

A full disk (ENOSPC) stops clip writing: the error is logged once in plain words, rows go
on being written without clips (``clip_status = disk_full``), and clip writing resumes
when the file system has room again (checked every ``RETRY_S``). A failed transaction
(the database itself cannot grow) is logged, its rows are counted as lost, and the next
batch tries again; the loop is never blocked.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.observe.ratelog import RateLimitedLog
from common.wire.codec import encode
from events.clips import DISK_FULL, EXTENSIONS, clip_format_for, free_bytes, write_clip
from events.ring import SampleKind
from events.schema import open_db
from events.store import SELECT_EVENTS, ClipStatus, as_dict, clip_relpath, prune, set_meta, store_bytes, stored_event

log = logging.getLogger("events.writer")

MAX_QUEUE = 20_000  # items waiting for the thread
MAX_QUEUED_CLIP_BYTES = 256 * 2**20  # audio waiting to be written as clips
MAX_BATCH = 2_000  # items per transaction
RETRY_S = 30.0  # a full disk is looked at again this often
RESUME_FREE_BYTES = 4 * 2**20  # clip writing resumes with at least this much free (and 4 x the largest clip)
PRUNE_EVERY_S = 60.0


@dataclass
class EventRow:
    """Insert or update one event (the mutable fields: end, scores, status)."""

    id: int
    stream: str
    model: str
    label: str
    start_ns: int
    end_ns: int
    peak: float
    mean: float
    windows: int
    status: str  # open | closed | cut
    source: str


@dataclass
class ClipJob:
    """Write one clip and name it in its row. ``samples`` (frames, channels) in ``kind``'s dtype."""

    id: int
    stream: str
    start_ns: int  # the event's onset (names the clip's directory)
    samples: np.ndarray
    rate: int
    kind: SampleKind
    offset: int  # stream sample index of the first sample
    clip_start_ns: int
    clip_end_ns: int
    gap_ms: int


@dataclass
class ClipMissing:
    """An event gets no clip, and why (a ClipStatus)."""

    id: int
    status: str


@dataclass
class Cursors:
    """The newest (epoch, seq, end_ns) result seen per (stream, model)."""

    rows: list[tuple[str, str, int, int, int]]


@dataclass
class Outage:
    """Results of a stream this store never saw."""

    stream: str
    model: str
    from_ns: int
    to_ns: int
    results: int
    cause: str


@dataclass
class WriterConfig:
    clip_format: str = "flac"
    fsync: bool = True
    max_age_s: float | None = None
    max_bytes: int | None = None
    reserve_bytes: int = 0  # clips stop while the file system has less than this free (rows go on in it)


@dataclass
class WriterStats:
    """Counters the thread keeps (read by the loop for its log line; ints, so reading is safe)."""

    batches: int = 0
    rows: int = 0
    clips: int = 0
    clip_bytes: int = 0
    refused: Counter = field(default_factory=Counter)  # queue full, by item type
    failed_rows: int = 0
    failed_batches: int = 0  # transactions lost (rows, clip names and statuses in them)
    clip_errors: int = 0
    disk_full: int = 0
    pruned: int = 0
    busy_s: float = 0.0


class StoreWriter:
    """The thread that writes (see the module docstring). ``start()``, ``submit()``, ``close()``."""

    def __init__(self, store_dir: Path, cfg: WriterConfig) -> None:
        self.store_dir, self.cfg = Path(store_dir), cfg
        self.stats = WriterStats()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0
        self._queued_clip_bytes = 0
        self._lock = threading.Lock()
        self._published: deque[bytes] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="events-writer", daemon=True)
        self._warn = RateLimitedLog(log, every_s=30.0, burst=1)
        self.clips_enabled = True
        self._next_retry = 0.0
        self._next_prune = 0.0
        self._size: int | None = None  # store bytes, tracked between prunes
        self._largest_clip = 0
        self.error: BaseException | None = None
        self.busy = False  # a batch is being written
        self._truncate_wal = False

    # -- the loop's side ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, item: object) -> bool:
        """Queue ``item`` without waiting; False (counted) if the queue is full."""
        nbytes = item.samples.nbytes if isinstance(item, ClipJob) else 0
        with self._lock:
            if self._queued >= MAX_QUEUE or self._queued_clip_bytes + nbytes > MAX_QUEUED_CLIP_BYTES:
                self.stats.refused[type(item).__name__] += 1
                return False
            self._queued += 1
            self._queued_clip_bytes += nbytes
        self._q.put(item)
        return True

    @property
    def queued(self) -> int:
        return self._queued

    def take_published(self) -> list[bytes]:
        """Encoded StoredEvent messages committed since the last call."""
        out = []
        while self._published:
            out.append(self._published.popleft())
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, mark the store closed cleanly, stop the thread."""
        self._stop.set()
        self._q.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("the writer did not finish within %.0f s; %d items were not written", timeout_s, self._queued)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = open_db(self.store_dir, create=True)
        except (UserError, sqlite3.Error, OSError) as e:  # reported by the loop (it checks .error)
            self.error = e
            return
        try:
            self._size = store_bytes(conn, self.store_dir)
            while True:
                batch = self._take(timeout_s=1.0)
                if batch:
                    t0 = time.perf_counter()
                    self._write(conn, batch)
                    self.stats.busy_s += time.perf_counter() - t0
                self._housekeeping(conn)
                if self._stop.is_set() and not self._queued:
                    break
            try:
                conn.execute("BEGIN")
                set_meta(conn, "clean", "1")
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                log.warning("cannot mark the event store closed (%s): the next start checks every clip", e)
        except Exception as e:  # a bug: the loop sees it and stops the process
            log.exception("the event store writer failed")
            self.error = e
        finally:
            conn.close()

    def _take(self, timeout_s: float) -> list[object]:
        self.busy = False
        try:
            first = self._q.get(timeout=timeout_s)
        except queue.Empty:
            return []
        self.busy = True
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                break
        items = [b for b in batch if b is not None]
        with self._lock:
            self._queued -= len(items)
            self._queued_clip_bytes -= sum(b.samples.nbytes for b in items if isinstance(b, ClipJob))
        return items

    def _write(self, conn: sqlite3.Connection, batch: list[object]) -> None:
        """Clips first (files renamed into place), then every row in one transaction, then publish.

        A transaction that fails because the disk is full is tried once more after the WAL
        is truncated (that often frees enough); if it fails again its rows are lost (counted)."""
        written: list[tuple[ClipJob, str, int]] = []
        statuses = [item for item in batch if isinstance(item, ClipMissing)]
        for item in batch:
            if isinstance(item, ClipJob):
                result = self._write_clip(item)
                if isinstance(result, str):
                    statuses.append(ClipMissing(item.id, result))
                else:
                    written.append((item, *result))
        for attempt in (1, 2):
            try:
                changed, unnamed = self._apply(conn, batch, written, statuses)
                break
            except sqlite3.Error as e:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if attempt == 1 and "full" in str(e).lower():
                    self._checkpoint(conn, "TRUNCATE")
                    continue
                self._failed(e, batch, written)
                return
        for _job, rel, _n in unnamed:
            (self.store_dir / rel).unlink(missing_ok=True)
        if not self.clips_enabled:  # little room: keep the WAL from growing (rewind it after every commit)
            self._checkpoint(conn, "TRUNCATE" if self._truncate_wal else "RESTART")
            self._truncate_wal = False
        lost_ids = {job.id for job, _, _ in unnamed}
        written = [w for w in written if w[0].id not in lost_ids]
        self.stats.batches += 1
        self.stats.rows += sum(isinstance(i, EventRow) for i in batch)
        self.stats.clips += len(written)
        self.stats.clip_bytes += sum(n for _, _, n in written)
        if self._size is not None:
            self._size += sum(n for _, _, n in written)
        self._publish(conn, changed)

    def _apply(self, conn: sqlite3.Connection, batch: list[object], written: list[tuple[ClipJob, str, int]],
               statuses: list[ClipMissing]) -> tuple[list[int], list[tuple[ClipJob, str, int]]]:
        """One transaction for the batch's rows; returns (event ids changed, clips whose row does not exist)."""
        now_ns = time.time_ns()
        changed: list[int] = []
        unnamed = []
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            if isinstance(item, EventRow):
                self._upsert(conn, item, now_ns)
                changed.append(item.id)
            elif isinstance(item, Cursors):
                conn.executemany("INSERT INTO cursors (stream, model, epoch, seq, end_ns) VALUES (?, ?, ?, ?, ?) "
                                 "ON CONFLICT (stream, model) DO UPDATE SET epoch = excluded.epoch, "
                                 "seq = excluded.seq, end_ns = excluded.end_ns", item.rows)
            elif isinstance(item, Outage):
                conn.execute("INSERT INTO outages (stream, model, from_ns, to_ns, results, cause, noted_ns) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (item.stream, item.model, item.from_ns, item.to_ns,
                                                              item.results, item.cause, now_ns))
        for job, rel, nbytes in written:
            cur = conn.execute("UPDATE events SET clip = ?, clip_status = ?, clip_offset = ?, clip_rate = ?, "
                               "clip_samples = ?, clip_start_ns = ?, clip_end_ns = ?, clip_bytes = ?, gap_ms = ? "
                               "WHERE id = ?", (rel, ClipStatus.WRITTEN, job.offset, job.rate, job.samples.shape[0],
                                                job.clip_start_ns, job.clip_end_ns, nbytes, job.gap_ms, job.id))
            if cur.rowcount:
                changed.append(job.id)
            else:  # its row was never stored (refused, failed) or was pruned meanwhile
                unnamed.append((job, rel, nbytes))
        for m in statuses:
            conn.execute("UPDATE events SET clip_status = ? WHERE id = ?", (m.status, m.id))
        conn.execute("COMMIT")
        return changed, unnamed

    def _upsert(self, conn: sqlite3.Connection, r: EventRow, now_ns: int) -> None:
        conn.execute(
            "INSERT INTO events (id, stream, model, label, start_ns, end_ns, peak, mean, windows, status, source, "
            "stored_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "end_ns = excluded.end_ns, peak = excluded.peak, mean = excluded.mean, windows = excluded.windows, "
            "status = excluded.status",
            (r.id, r.stream, r.model, r.label, r.start_ns, r.end_ns, r.peak, r.mean, r.windows, r.status, r.source,
             now_ns))

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})")
        except sqlite3.Error:
            pass

    def _failed(self, e: sqlite3.Error, batch: list[object], written: list[tuple[ClipJob, str, int]]) -> None:
        """The transaction failed (most often: the disk is full): its rows are lost, its clips removed."""
        rows = sum(isinstance(i, EventRow) for i in batch)
        self.stats.failed_rows += rows
        self.stats.failed_batches += 1
        for _job, rel, _n in written:
            (self.store_dir / rel).unlink(missing_ok=True)
        full = "full" in str(e).lower()
        self._warn.warning("db_error", f"cannot write to the event store {self.store_dir} ({e}): {rows} event "
                                       f"update(s) lost{'; free some space' if full else ''}; trying again with "
                                       "the next ones")

    def _write_clip(self, job: ClipJob) -> tuple[str, int] | str:
        """(relative path, bytes) of the written clip, or the ClipStatus saying why there is none."""
        if job.samples.shape[0] == 0:
            return ClipStatus.NO_AUDIO
        if not self.clips_enabled:
            return ClipStatus.DISK_FULL
        reserve = self.cfg.reserve_bytes
        if reserve and 0 <= free_bytes(self.store_dir) < reserve + job.samples.nbytes:
            self._stop_clips(f"has less than --reserve-mb {reserve / 1e6:g} MB free")
            return ClipStatus.DISK_FULL
        fmt = clip_format_for(self.cfg.clip_format, job.rate)
        rel = clip_relpath(job.id, job.stream, job.start_ns, EXTENSIONS[fmt])
        try:
            clip = write_clip(self.store_dir / rel, job.samples, job.rate, job.kind, fmt, self.cfg.fsync)
        except OSError as e:
            if e.errno in DISK_FULL:
                self._stop_clips("is full")
                return ClipStatus.DISK_FULL
            self.stats.clip_errors += 1
            self._warn.warning("clip_error", f"cannot write clip {rel}: {e.strerror or e}")
            return ClipStatus.ERROR
        if clip.clipped:
            self._warn.warning("clipped", f"clip {rel}: {clip.clipped} sample(s) beyond full scale clipped to "
                                          "fit 24-bit FLAC (use --clip-format wav to keep them)")
        self._largest_clip = max(self._largest_clip, clip.bytes)
        return rel, clip.bytes

    def _stop_clips(self, why: str) -> None:
        """The disk is full (or at the reserve): no more clips until it has room; rows go on."""
        self.stats.disk_full += 1
        self.clips_enabled = False
        self._truncate_wal = True  # give the rows the WAL's room back
        self._next_retry = time.monotonic() + RETRY_S
        log.error("the disk holding the event store %s %s: clip writing stopped, events are still recorded "
                  "without clips; free some space or set --max-size-mb (looked at again every %.0f s)",
                  self.store_dir, why, RETRY_S)

    def _publish(self, conn: sqlite3.Connection, ids: list[int]) -> None:
        if not ids:
            return
        unique = list(dict.fromkeys(ids))
        for i in range(0, len(unique), 500):
            part = unique[i : i + 500]
            rows = conn.execute(f"{SELECT_EVENTS} WHERE id IN ({','.join('?' * len(part))})", part).fetchall()
            by_id = {r[0]: r for r in rows}
            for rid in part:
                if rid in by_id:
                    self._published.append(encode(stored_event(as_dict(by_id[rid]))))

    def _housekeeping(self, conn: sqlite3.Connection) -> None:
        """Retention (every PRUNE_EVERY_S, or at once past --max-size-mb); a full disk looked at again."""
        now = time.monotonic()
        cfg = self.cfg
        over = cfg.max_bytes is not None and self._size is not None and self._size > cfg.max_bytes
        if (cfg.max_age_s is not None or cfg.max_bytes is not None) and (over or now >= self._next_prune):
            self._next_prune = now + PRUNE_EVERY_S
            try:
                done = prune(conn, self.store_dir, cfg.max_age_s, cfg.max_bytes, time.time_ns())
                self._size = store_bytes(conn, self.store_dir)
            except sqlite3.Error as e:
                self._warn.warning("prune", f"retention could not delete old events: {e}")
            else:
                if done.rows:
                    self.stats.pruned += done.rows
                    log.info("retention: removed %d event(s) and %d clip(s) (%.1f MB); store now %.1f MB",
                             done.rows, done.clips, done.clip_bytes / 1e6, self._size / 1e6)
        if not self.clips_enabled and now >= self._next_retry:
            self._next_retry = now + RETRY_S
            if free_bytes(self.store_dir) >= cfg.reserve_bytes + max(RESUME_FREE_BYTES, 4 * self._largest_clip):
                self.clips_enabled = True
                log.info("the event store %s has room again: clip writing resumed", self.store_dir)

