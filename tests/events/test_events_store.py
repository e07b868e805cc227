"""The store on disk: schema versions and migration, recovery after a crash, retention, and the CLI."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from common.cli.main import run
from events.cli import register
from events.clips import read_clip, write_clip
from events.ring import SampleKind
from events.schema import APP_ID, CURRENT_VERSION, V1_DDL, open_db, schema_version
from events.store import prune, recover, set_meta, store_bytes

NS = 1_000_000_000
INT16 = SampleKind(np.dtype(np.int16), 16, False)


def soundbus_events(*argv: str, capsys) -> tuple[int, str, str]:
    """``soundbus events ARGV`` in-process: (exit code, stdout, stderr)."""
    code = run(["events", *argv], registers=[register])
    out, err = capsys.readouterr()
    return code, out, err


def v1_store(store: Path, n: int) -> list[int]:
    """A store as the first schema made it: ``n`` events, each with a FLAC clip; returns clip sizes."""
    (store / "clips" / "day").mkdir(parents=True)
    conn = sqlite3.connect(store / "events.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA application_id = {APP_ID}")
    conn.executescript(V1_DDL)
    conn.execute("PRAGMA user_version = 1")
    sizes = []
    for i in range(1, n + 1):
        clip = f"clips/day/{i}.flac"
        x = np.random.default_rng(i).integers(-3000, 3000, (1600 * i, 1)).astype(np.int16)
        sizes.append(write_clip(store / clip, x, 16000, INT16, "flac", fsync=False).bytes)
        end = 0 if i == n else (i * 10 + 2) * NS  # the newest is still on
        conn.execute("INSERT INTO events (stream, model, label, start_ns, end_ns, peak, mean, source, clip) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (f"mic{i % 2}", "vad", "speech", i * 10 * NS, end, 0.9, 0.7, "file:x.wav",
                      clip if i != 2 else ""))
    conn.close()
    (store / "clips/day/2.flac").unlink()  # event 2 never had a clip
    return sizes


def test_a_populated_version_1_store_is_migrated_to_the_current_schema(tmp_path) -> None:
    store = tmp_path / "store"
    sizes = v1_store(store, 5)
    conn = open_db(store)
    try:
        assert schema_version(conn) == CURRENT_VERSION == 2
        rows = conn.execute("SELECT id, stream, start_ns, end_ns, peak, mean, clip, status, clip_status, clip_bytes, "
                            "windows, gap_ms FROM events ORDER BY id").fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        assert [(r[1], r[2], r[4], r[5]) for r in rows] == [(f"mic{i % 2}", i * 10 * NS, 0.9, 0.7) for i in range(1, 6)]
        assert [r[7] for r in rows] == ["closed"] * 4 + ["open"]  # end 0 meant "still on"
        assert [(r[8], r[9]) for r in rows] == [("written", sizes[0]), ("", 0), ("written", sizes[2]),
                                               ("written", sizes[3]), ("written", sizes[4])]
        assert [r[10] for r in rows] == [0] * 5 and [r[11] for r in rows] == [0] * 5
        # the new tables work, and the ids go on from the old ones
        conn.execute("INSERT INTO cursors VALUES ('mic1', 'vad', 1, 7, 99)")
        conn.execute("INSERT INTO events (stream, model, label, start_ns, peak, mean) VALUES ('a', 'b', 'c', 1, 0, 0)")
        assert conn.execute("SELECT max(id) FROM events").fetchone()[0] == 6
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    conn = open_db(store)  # opening again changes nothing
    assert schema_version(conn) == 2 and conn.execute("SELECT count(*) FROM events").fetchone()[0] == 6
    conn.close()


def test_a_clip_missing_at_migration_is_marked_lost(tmp_path) -> None:
    store = tmp_path / "store"
    v1_store(store, 3)
    (store / "clips/day/3.flac").unlink()
    conn = open_db(store)
    assert conn.execute("SELECT clip, clip_status FROM events WHERE id = 3").fetchone() == ("", "lost")
    conn.close()


def test_what_is_not_a_store_is_refused_in_one_sentence(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = soundbus_events("list", "--dir", str(tmp_path / "notes.txt"), capsys=capsys)
    assert code == 2 and "is not a SQLite database" in err and "Traceback" not in err
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    code, _, err = soundbus_events("list", "--dir", str(other), capsys=capsys)
    assert code == 2 and "not a soundbus event store" in err
    code, _, err = soundbus_events("list", "--dir", str(tmp_path / "nowhere"), capsys=capsys)
    assert code == 2 and "no events.db" in err
    newer = tmp_path / "newer"
    newer.mkdir()
    conn = sqlite3.connect(newer / "events.db")
    conn.execute(f"PRAGMA application_id = {APP_ID}")
    conn.execute("CREATE TABLE events (id)")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    code, _, err = soundbus_events("info", "--dir", str(newer), capsys=capsys)
    assert code == 2 and "newer soundbus" in err
    assert err.count("\n") == 1  # one sentence, one line


def test_recovery_removes_half_written_and_unnamed_clips_and_marks_missing_ones(tmp_path) -> None:
    store = tmp_path / "store"
    v1_store(store, 4)
    conn = open_db(store)
    conn.execute("BEGIN")
    set_meta(conn, "clean", "0")  # the last run was killed
    conn.execute("COMMIT")
    (store / "clips/day/9.flac.tmp").write_bytes(b"half a clip")
    (store / "clips/day/77.flac").write_bytes(b"renamed, but its row never committed")
    (store / "clips/day/4.flac").unlink()  # (a power loss with --no-fsync)
    rep = recover(conn, store)
    assert (rep.unclean, rep.tmp_removed, rep.orphans_removed, rep.clips_lost) == (True, 1, 1, 1)
    assert sorted(p.name for p in (store / "clips/day").iterdir()) == ["1.flac", "3.flac"]
    assert conn.execute("SELECT clip, clip_status FROM events WHERE id = 4").fetchone() == ("", "lost")
    conn.close()


def populated(store: Path, n: int, clip_s: float = 1.0) -> sqlite3.Connection:
    """A current store with ``n`` events a minute apart, oldest first, each with a 16 kHz WAV clip."""
    conn = open_db(store, create=True)
    now = time.time_ns()
    conn.execute("BEGIN")
    for i in range(1, n + 1):
        clip = f"clips/d/{i}.wav"
        x = np.full((int(16000 * clip_s), 1), i, np.int16)
        size = write_clip(store / clip, x, 16000, INT16, "wav", fsync=False).bytes
        conn.execute("INSERT INTO events (id, stream, model, label, start_ns, end_ns, peak, mean, clip, clip_status, "
                     "clip_bytes) VALUES (?, 's', 'vad', 'speech', ?, ?, 0.9, 0.8, ?, 'written', ?)",
                     (i, now - (n - i + 1) * 60 * NS, now - (n - i + 1) * 60 * NS + NS, clip, size))
    conn.execute("COMMIT")
    return conn


def test_retention_by_age_removes_the_oldest_rows_and_their_clips_together(tmp_path) -> None:
    store = tmp_path / "store"
    conn = populated(store, 10)
    done = prune(conn, store, max_age_s=5.5 * 60, max_bytes=None, now_ns=time.time_ns())
    ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
    assert (done.rows, done.clips) == (5, 5) and ids == [6, 7, 8, 9, 10]
    assert sorted(int(p.stem) for p in (store / "clips/d").iterdir()) == ids
    conn.close()


def test_retention_by_size_removes_oldest_first_until_the_store_fits(tmp_path) -> None:
    store = tmp_path / "store"
    conn = populated(store, 10)  # 10 clips of 32 kB
    before = store_bytes(conn, store)
    limit = before - 3 * 32_000 - 1000
    dry = prune(conn, store, None, limit, time.time_ns(), dry_run=True)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 10
    done = prune(conn, store, None, limit, time.time_ns())
    assert (dry.rows, dry.clips) == (done.rows, done.clips)
    ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY id")]
    assert ids == list(range(done.rows + 1, 11)) and 4 <= done.rows <= 5
    assert store_bytes(conn, store) <= limit
    assert sorted(int(p.stem) for p in (store / "clips/d").iterdir()) == ids
    conn.close()


def test_the_writer_applies_retention_while_running(harness, tmp_path) -> None:
    from events.writer import WriterConfig

    store = tmp_path / "store"
    populated(store, 10).close()
    h = harness(store, wcfg=WriterConfig(fsync=False, max_age_s=4.5 * 60))
    deadline = time.monotonic() + 10
    clips = lambda: sorted(int(p.stem) for p in (store / "clips/d").iterdir())
    while [r["id"] for r in h.rows()] != [7, 8, 9, 10] or clips() != [7, 8, 9, 10]:  # rows commit, then files go
        assert time.monotonic() < deadline, (h.rows(), clips())
        time.sleep(0.05)


def test_list_show_export_stats_prune_info(tmp_path, capsys) -> None:
    store = tmp_path / "store"
    populated(store, 6).close()
    code, out, _ = soundbus_events("list", "--dir", str(store), capsys=capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["ID", "START", "(UTC)"] and len(lines) == 7
    code, out, _ = soundbus_events("list", "--dir", str(store), "--json", "--since", "3.5m", "--limit", "2",
                                   capsys=capsys)
    assert [json.loads(x)["id"] for x in out.splitlines()] == [5, 6]  # the newest 2 of the last 3
    code, out, _ = soundbus_events("list", "--dir", str(store / "events.db"), "--json", "--label", "dog", capsys=capsys)
    assert code == 0 and out == ""
    code, out, _ = soundbus_events("show", "4", "--dir", str(store), "--json", capsys=capsys)
    shown = json.loads(out)
    assert (shown["id"], shown["clip_exists"], shown["duration_s"]) == (4, True, 1.0)
    code, out, _ = soundbus_events("show", "4", "--dir", str(store), capsys=capsys)
    assert "clip_path" in out and "clips/d/4.wav" in out
    code, _, _ = soundbus_events("export", "3", "-o", str(tmp_path / "three.flac"), "--dir", str(store),
                                   capsys=capsys)
    data, rate, subtype = read_clip(tmp_path / "three.flac")
    assert code == 0 and (rate, subtype) == (16000, "PCM_16") and np.all(data == 3) and len(data) == 16000
    code, out, _ = soundbus_events("stats", "--dir", str(store), "--json", capsys=capsys)
    counts = [json.loads(x) for x in out.splitlines()]
    assert sum(c["count"] for c in counts) == 6 and {c["label"] for c in counts} == {"speech"}
    assert all(c["hour"].endswith(":00Z") for c in counts)
    code, out, _ = soundbus_events("prune", "--dir", str(store), "--max-age-days", str(2.5 / 1440), capsys=capsys)
    assert code == 0 and out.startswith("removed 4 event(s) and 4 clip(s)")
    code, out, _ = soundbus_events("info", "--dir", str(store), "--json", capsys=capsys)
    assert json.loads(out)["events"] == 2 and json.loads(out)["schema_version"] == 2


def test_cli_mistakes_are_one_sentence_and_exit_2(tmp_path, capsys) -> None:
    store = tmp_path / "store"
    populated(store, 2).close()
    conn = sqlite3.connect(store / "events.db")
    conn.execute("UPDATE events SET clip = '', clip_status = 'disk_full' WHERE id = 2")
    conn.commit()
    conn.close()
    for argv, says in [
        (["show", "999"], "no event 999 in the store (it holds ids 1-2)"),
        (["export", "2", "-o", str(tmp_path / "x.wav")], "has no clip: its clip status is 'disk_full'"),
        (["export", "1", "-o", str(tmp_path / "x.mp3")], "name it .wav, .flac or .opus"),
        (["list", "--since", "yesterday-ish"], "cannot read the time"),
        (["prune"], "--max-age-days"),
    ]:
        code, _, err = soundbus_events(*argv, "--dir", str(store), capsys=capsys)
        assert code == 2 and says in err and err.count("\n") == 1, (argv, err)


def test_a_second_store_process_on_the_same_directory_is_refused(tmp_path, capsys) -> None:
    import fcntl
    import os

    store = tmp_path / "store"
    store.mkdir()
    fd = os.open(store / "events.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        code, _, err = soundbus_events("run", "--dir", str(store), "--input", "tcp://127.0.0.1:1", capsys=capsys)
    finally:
        os.close(fd)
    assert code == 2 and "another `soundbus events run` is using" in err


def test_opus_clips_are_written_at_opus_rates_and_flac_otherwise(tmp_path) -> None:
    x = (np.sin(np.arange(16000) / 10) * 8000).astype(np.int16)[:, None]
    a = write_clip(tmp_path / "a.opus", x, 16000, INT16, "opus", fsync=False)
    b = write_clip(tmp_path / "b.clip", x, 44100, INT16, "opus", fsync=False)
    assert (a.fmt, a.subtype) == ("opus", "OPUS") and sf.info(str(tmp_path / "a.opus")).samplerate == 16000
    assert b.fmt == "flac"  # Opus has no 44.1 kHz; the caller names the file by the format used
