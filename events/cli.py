"""``soundbus events run|list|show|export|stats|prune``: the event store process and its queries.

``run`` is the stage: it subscribes to results and to the audio of the same streams,
keeps every event in ``DIR/events.db`` with a clip in ``DIR/clips/``, and republishes
each stored event on ``--output``. The other commands read (or prune) a store, also
while ``run`` writes to it (SQLite WAL: readers never block the writer).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

from common.cli.main import (
    add_stage_options,
    float_in,
    inputs_of,
    int_in,
    outputs_of,
    socket_options,
    stage_metrics,
    verbosity,
)
from common.errors import UserError
from common.runtime.stage import Runtime, StopFlag, setup_logging
from common.transport.sockets import DEFAULT_RESULT
from common.wire.topics import Kind, topic_for
from events.clips import FORMATS, read_clip, write_clip
from events.logic import EventsConfig, EventsLogic
from events.query import Filter, event_json, events_table, get_event, hourly_counts, iso, list_events, parse_time, table
from events.ring import SampleKind
from events.schema import db_path, open_db, schema_version
from events.store import prune, recover, set_meta, store_bytes
from events.writer import StoreWriter, WriterConfig

log = logging.getLogger("events")

DEFAULT_OUTPUT = "tcp://127.0.0.1:5558"
DIR_ENV = "SOUNDBUS_EVENTS_DIR"
DEFAULT_DIR = "soundbus-events"
LOCK_NAME = "events.lock"


# ---------------------------------------------------------------------------------------
# run


def _lock(store_dir: Path) -> int:
    """Hold the store's lock for this process's life: one writer per store (ids, orphan sweep)."""
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(store_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot use {store_dir} as an event store: {e.strerror}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UserError(f"another `soundbus events run` is using {store_dir}; stop it or give another --dir.") from None
    return fd


def load_state(conn: sqlite3.Connection) -> tuple[int, dict, dict]:
    """(next free id, events left on by the last run, the last run's result cursors)."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    top = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    next_id = max(seq[0] if seq else 0, top or 0) + 1
    open_rows = {(s, m, lbl): (i, start, peak, mean, windows, source, bool(clip))
                 for i, s, m, lbl, start, peak, mean, windows, source, clip
                 in conn.execute("SELECT id, stream, model, label, start_ns, peak, mean, windows, source, clip "
                                 "FROM events WHERE status = 'open'")}
    cursors = {(s, m): (e, q, end) for s, m, e, q, end in conn.execute("SELECT stream, model, epoch, seq, end_ns "
                                                                        "FROM cursors")}
    return next_id, open_rows, cursors


def cmd_run(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    store_dir, _ = db_path(_store_dir(args))  # a directory, or the events.db in it
    inputs, outputs, opts = inputs_of(args), outputs_of(args), socket_options(args)
    if args.pre_roll_s + args.post_roll_s >= args.max_clip_s:
        raise UserError(f"--max-clip-s {args.max_clip_s:g} leaves no room for the event between --pre-roll-s "
                        f"{args.pre_roll_s:g} and --post-roll-s {args.post_roll_s:g}; make it longer.")
    lock = _lock(store_dir)
    try:
        conn = open_db(store_dir, create=True)
        try:
            rec = recover(conn, store_dir)
            if rec.unclean:
                log.warning("the last run did not close the store (killed or crashed): removed %d half-written "
                            "clip(s) and %d clip(s) no event names; %d event(s) had lost their clip",
                            rec.tmp_removed, rec.orphans_removed, rec.clips_lost)
            conn.execute("BEGIN")
            set_meta(conn, "clean", "0")
            conn.execute("COMMIT")
            next_id, open_rows, cursors = load_state(conn)
        finally:
            conn.close()
        cfg = EventsConfig(audio=args.audio, pre_roll_s=args.pre_roll_s, post_roll_s=args.post_roll_s,
                           max_clip_s=args.max_clip_s, lag_s=args.lag_s, idle_s=args.idle_s,
                           models=frozenset(args.model or ()), labels=frozenset(args.label or ()),
                           max_streams=args.max_streams, max_ring_bytes=int(args.ring_mb * 2**20))
        wcfg = WriterConfig(clip_format=args.clip_format, fsync=not args.no_fsync,
                            max_age_s=args.max_age_days * 86400 if args.max_age_days else None,
                            max_bytes=int(args.max_size_mb * 1e6) if args.max_size_mb else None,
                            reserve_bytes=int(args.reserve_mb * 1e6))
        writer = StoreWriter(store_dir, wcfg)
        writer.start()
        metrics = stage_metrics(args, "events")
        stop = StopFlag()
        logic = EventsLogic(cfg, writer, metrics, next_id, open_rows, cursors, stop)
        try:
            with Runtime("events", metrics, stop, args.health_file) as rt:
                prefixes = [topic_for(Kind.RESULT)]
                if cfg.audio != "none":
                    prefixes.append(topic_for(Kind.RAW if cfg.audio == "raw" else Kind.TENSOR))
                inbox = rt.inbox(inputs, prefixes, opts)
                outbox = rt.outbox(outputs, opts)
                log.info("ready store=%s audio=%s clips=%s inputs=%s outputs=%s (next id %d, %d event(s) left on)",
                         store_dir, cfg.audio, args.clip_format, ",".join(inputs), ",".join(outputs), next_id,
                         len(open_rows))
                rt.run(logic, inbox, outbox)
        finally:
            writer.close()
    finally:
        os.close(lock)
    return 1 if writer.error is not None else 0


# ---------------------------------------------------------------------------------------
# queries


def _store_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir or os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _open(args: argparse.Namespace) -> tuple[Path, sqlite3.Connection]:
    store = _store_dir(args)
    store_dir, _ = db_path(store)
    return store_dir, open_db(store)


def _filter(args: argparse.Namespace) -> Filter:
    now = time.time_ns()
    return Filter(
        since_ns=parse_time(args.since, now) if args.since else None,
        until_ns=parse_time(args.until, now) if args.until else None,
        streams=tuple(args.stream or ()), models=tuple(args.model or ()), labels=tuple(args.label or ()),
        min_score=args.min_score,
    )


def _print(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `soundbus events list | head`: the reader left; Python must not fail at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_list(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    with closing(conn):
        events = list_events(conn, _filter(args), args.limit or None)
    if args.json:
        if events:
            _print("\n".join(json.dumps(event_json(e)) for e in events))
    elif events:
        _print(events_table(events))
    else:
        print("no events match", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store_dir, conn = _open(args)
    with closing(conn):
        e = get_event(conn, args.id)
    out = event_json(e)
    out["clip_path"] = str((store_dir / e["clip"]).resolve()) if e["clip"] else None
    out["clip_exists"] = bool(e["clip"]) and (store_dir / e["clip"]).is_file()
    if args.json:
        _print(json.dumps(out))
        return 0
    lines = [(k, _show_value(k, v)) for k, v in out.items() if k not in ("start", "end")]
    width = max(len(k) for k, _ in lines)
    _print("\n".join(f"{k.ljust(width)}  {v}" for k, v in lines))
    return 0


def _show_value(key: str, v: object) -> str:
    if key.endswith("_ns") and isinstance(v, int):
        return f"{v}  ({iso(v)})" if v else "0"
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None or v == "" else str(v)


_EXPORT_FORMATS = {".wav": "wav", ".flac": "flac", ".opus": "opus", ".ogg": "opus"}


def cmd_export(args: argparse.Namespace) -> int:
    store_dir, conn = _open(args)
    with closing(conn):
        e = get_event(conn, args.id)
    if not e["clip"]:
        why = {"": "it has none yet (the event is on or its post-roll has not arrived)"}.get(
            e["clip_status"], f"its clip status is {e['clip_status']!r}")
        raise UserError(f"event {args.id} has no clip: {why}.")
    out = Path(args.output)
    fmt = _EXPORT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot tell the format of {out}: name it .wav, .flac or .opus.")
    src = store_dir / e["clip"]
    try:
        data, rate, subtype = read_clip(src)
    except (OSError, RuntimeError) as err:  # soundfile raises LibsndfileError (a RuntimeError)
        raise UserError(f"cannot read the clip {src}: {err}.") from None
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "DOUBLE": 64}.get(subtype, 32)
    kind = SampleKind(data.dtype, bits, data.dtype.kind == "f")
    try:
        written = write_clip(out, data, rate, kind, fmt, fsync=False)
    except OSError as err:
        raise UserError(f"cannot write {out}: {err.strerror or err}.") from None
    print(f"wrote {out}: {data.shape[0]} samples at {rate} Hz, {data.shape[1]} channel(s), {written.fmt} "
          f"{written.subtype}", file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    _, conn = _open(args)
    with closing(conn):
        counts = hourly_counts(conn, _filter(args))
    if args.json:
        if counts:
            _print("\n".join(json.dumps(c) for c in counts))
    elif counts:
        _print(table([("HOUR (UTC)", "LABEL", "EVENTS")] + [(c["hour"], c["label"], str(c["count"])) for c in counts]))
    else:
        print("no events match", file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    if args.max_age_days is None and args.max_size_mb is None:
        raise UserError("say what to keep: --max-age-days DAYS and/or --max-size-mb MB.")
    store_dir, conn = _open(args)
    with closing(conn):
        before = store_bytes(conn, store_dir)
        try:
            done = prune(conn, store_dir, args.max_age_days * 86400 if args.max_age_days is not None else None,
                         int(args.max_size_mb * 1e6) if args.max_size_mb is not None else None, time.time_ns(),
                         dry_run=args.dry_run)
        except sqlite3.OperationalError as e:
            raise UserError(f"cannot prune {store_dir}: {e} (is the disk full or the store busy?).") from None
        after = store_bytes(conn, store_dir)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {done.rows} event(s) and {done.clips} clip(s) ({done.clip_bytes / 1e6:.1f} MB of clips); "
          f"store {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; oldest kept {iso(done.oldest_kept_ns)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    store_dir, conn = _open(args)
    with closing(conn):
        n, lo, hi = conn.execute("SELECT count(*), min(start_ns), max(start_ns) FROM events").fetchone()
        on = conn.execute("SELECT count(*) FROM events WHERE status = 'open'").fetchone()[0]
        outages = conn.execute("SELECT count(*) FROM outages").fetchone()[0]
        info = {"store": str(store_dir), "schema_version": schema_version(conn), "events": n, "open": on,
                "first": iso(lo or 0), "last": iso(hi or 0), "bytes": store_bytes(conn, store_dir),
                "outages": outages}
    _print(json.dumps(info) if args.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0


# ---------------------------------------------------------------------------------------
# parsers


def _dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR", help=f"the event store: a directory, or its events.db "
                                                f"(default ${DIR_ENV} or ./{DEFAULT_DIR})")


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="TIME", help="onset at or after TIME: 2024-05-01T13:00Z, Unix seconds, or 2h, 7d ago")
    p.add_argument("--until", metavar="TIME", help="onset before TIME (same forms)")
    p.add_argument("--stream", action="append", metavar="S", help="only stream S (repeatable)")
    p.add_argument("--model", action="append", metavar="M", help="only model M (repeatable)")
    p.add_argument("--label", action="append", metavar="L", help="only label L (repeatable)")
    p.add_argument("--min-score", type=float_in(0, 1), metavar="X", help="only events whose peak score is at least X")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = subparsers.add_parser("events", help="event history with audio clips: run the store, list, show, export")
    sub = top.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("run", help="store every event of the results (with a clip of its audio) and republish them")
    _dir_flag(p)
    p.add_argument("--audio", choices=["tensor", "raw", "none"], default="tensor",
                   help="clip audio: tensor (converted, model rate; default), raw (as captured), none (no clips)")
    p.add_argument("--clip-format", choices=FORMATS, default="flac", help="flac (default), opus (lossy) or wav")
    p.add_argument("--pre-roll-s", type=float_in(0, 60, "s"), default=1.0, metavar="S",
                   help="audio kept before the onset (default 1)")
    p.add_argument("--post-roll-s", type=float_in(0, 60, "s"), default=1.0, metavar="S",
                   help="audio kept after the offset (default 1)")
    p.add_argument("--max-clip-s", type=float_in(0.1, 600, "s"), default=20.0, metavar="S",
                   help="longest clip, rolls included; a longer event's clip ends there (default 20)")
    p.add_argument("--lag-s", type=float_in(0, 600, "s"), default=5.0, metavar="S",
                   help="how far results may trail their audio; the ring holds max-clip + lag seconds (default 5)")
    p.add_argument("--idle-s", type=float_in(0.1, 3600, "s"), default=10.0, metavar="S",
                   help="a stream with no audio this long gets its waiting clips cut with what arrived (default 10)")
    p.add_argument("--ring-mb", type=float_in(1, 1e6, "MiB"), default=1024.0, metavar="MIB",
                   help="memory for all streams' audio rings (16 kHz mono tensors: 1.6 MiB per stream with the "
                   "defaults); a stream beyond it gets no clips (default 1024)")
    p.add_argument("--model", action="append", metavar="M", help="store only model M's events (repeatable)")
    p.add_argument("--label", action="append", metavar="L", help="store only label L (repeatable)")
    p.add_argument("--max-age-days", type=float_in(0.0001, 36500, "days"), metavar="DAYS",
                   help="delete events (rows and clips) older than DAYS")
    p.add_argument("--max-size-mb", type=float_in(1, 1e9, "MB"), metavar="MB",
                   help="delete the oldest events while the store is larger than MB")
    p.add_argument("--reserve-mb", type=float_in(0, 1e6, "MB"), default=50.0, metavar="MB",
                   help="stop writing clips while the disk has less than MB free, so events go on being recorded "
                   "(default 50; 0: write clips until the disk is full)")
    p.add_argument("--no-fsync", action="store_true",
                   help="do not fsync clips (faster on slow disks; a power loss may then lose clips of stored events)")
    add_stage_options(p, inputs=DEFAULT_RESULT, outputs=DEFAULT_OUTPUT)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("list", help="events in onset order (filters; a table or --json)")
    _dir_flag(p)
    _filter_flags(p)
    p.add_argument("--limit", type=int_in(0, 10**9), default=100, metavar="N",
                   help="the newest N matching events (default 100; 0: all)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="every field of one event")
    _dir_flag(p)
    p.add_argument("id", type=int_in(1, 2**63 - 1), metavar="ID")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write an event's clip to a file (.wav, .flac or .opus)")
    _dir_flag(p)
    p.add_argument("id", type=int_in(1, 2**63 - 1), metavar="ID")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("stats", help="events per label per hour")
    _dir_flag(p)
    _filter_flags(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("prune", help="delete the oldest events (rows and clips) by age and/or total size")
    _dir_flag(p)
    p.add_argument("--max-age-days", type=float_in(0, 36500, "days"), metavar="DAYS")
    p.add_argument("--max-size-mb", type=float_in(0, 1e9, "MB"), metavar="MB")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="what a store holds: schema version, counts, span, size")
    _dir_flag(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
