"""Fixtures of the event store's in-process tests: a real store (SQLite, clip files, the writer
thread) in a temporary directory, driven by messages built with the wire Structs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from events.cli import load_state
from events.logic import EventsConfig, EventsLogic
from events.schema import open_db
from events.store import recover
from events.writer import StoreWriter, WriterConfig


class Harness:
    """An EventsLogic on a real store; ``feed`` interleaves audio and results like a live pipeline."""

    def __init__(self, store: Path, cfg: EventsConfig, wcfg: WriterConfig) -> None:
        self.store = store
        conn = open_db(store, create=True)
        try:
            recover(conn, store)
            next_id, open_rows, cursors = load_state(conn)
        finally:
            conn.close()
        self.metrics = StageMetrics("events")
        self.writer = StoreWriter(store, wcfg)
        self.writer.start()
        self.logic = EventsLogic(cfg, self.writer, self.metrics, next_id, open_rows, cursors)
        self.published: list[bytes] = []
        self.closed = False

    def now(self) -> Now:
        return Now(time.monotonic(), time.time_ns())

    def handle(self, batch: list) -> None:
        self.published += self.logic.handle(batch, self.now())

    def feed(self, audio: list, results: list, lag: int = 4) -> None:
        """Audio message k, then result k - lag (results trail their audio), then the rest of the results."""
        for k, a in enumerate(audio):
            self.handle([a] + ([results[k - lag]] if 0 <= k - lag < len(results) else []))
        self.handle(results[max(len(audio) - lag, 0):])

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the writer has committed everything queued; collect what it published."""
        deadline = time.monotonic() + timeout
        while self.writer.queued or self.writer.busy:
            assert time.monotonic() < deadline, "the writer did not catch up"
            time.sleep(0.01)
        self.published += self.logic.tick(self.now())

    def finish(self) -> None:
        if not self.closed:
            self.published += self.logic.finish(self.now())
            self.closed = True

    def rows(self) -> list[dict]:
        import sqlite3

        conn = sqlite3.connect(self.store / "events.db")
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]
        finally:
            conn.close()


@pytest.fixture
def harness(tmp_path):
    """harness(store=None, **config) -> Harness; every writer thread is stopped at teardown."""
    made: list[Harness] = []

    def make(store: Path | None = None, wcfg: WriterConfig | None = None, **cfg) -> Harness:
        h = Harness(store or tmp_path / "store", EventsConfig(**cfg), wcfg or WriterConfig(fsync=False))
        made.append(h)
        return h

    yield make
    for h in made:
        h.writer.close()
