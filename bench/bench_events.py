"""Events: the event store's CPU per result at 64 streams, and the events per second it sustains.

- ``loop``: EventsLogic.handle() in-process on prebuilt decoded messages (what the inbox hands
  it): S streams of 16 kHz tensors in 32 ms messages (convert's default), one vad-like result
  per message trailing its audio by 4 messages, and per stream an event of 0.5-1.5 s about
  every 3 s; the writer thread writes the rows and FLAC clips to a store on disk (fsync per
  clip, as by default). CPU is the process's (loop and writer threads) over the run, per
  result; the baseline in the same run is the same messages with no events (rings and
  continuity only). ``live core %`` = CPU per second of audio for S live streams.
- ``writer``: events per second the writer thread sustains when fed as fast as its queue
  takes them; each event is an onset row, its closing row and a 2.5 s clip (16 kHz float,
  FLAC). With fsync per clip (the default) and without (``--no-fsync``).

    .venv/bin/python bench/bench_events.py [--streams 64] [--seconds 20] [--events 400] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import numpy as np

sys.path.insert(0, str(bl.ROOT))

from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from common.wire.codec import decode, encode, encode_audio
from common.wire.messages import AudioHeader, Event, Label, Layout, Result, SampleFormat
from common.wire.topics import Kind
from events.logic import EventsConfig, EventsLogic
from events.ring import kind_of
from events.schema import open_db
from events.writer import ClipJob, EventRow, StoreWriter, WriterConfig

RATE, HOP = 16_000, 512
NS = 1_000_000_000


def messages(n_streams: int, seconds: float, with_events: bool, seed: int = 0) -> tuple[list[list], int, int]:
    """Batches as one inbox wake-up would hand them (one 32 ms step of every stream each), the
    number of results and of events. Each stream: noise audio; an event every ~3 s (0.5-1.5 s long)."""
    rng = np.random.default_rng(seed)
    steps = int(seconds * RATE / HOP)
    t0 = time.time_ns() - int(seconds * NS)
    audio = (rng.integers(-20000, 20000, (n_streams, steps * HOP)) / 32768).astype(np.float32)
    batches: list[list] = [[] for _ in range(steps + 4)]
    n_events = 0
    for s in range(n_streams):
        stream = f"s{s:03d}"
        on = np.zeros(steps, bool)
        k = int(rng.integers(10, 90))
        while with_events and k < steps - 50:
            length = int(rng.integers(16, 47))
            on[k : k + length] = True
            n_events += 1
            k += length + int(rng.integers(50, 90))
        since = 0
        for k in range(steps):
            t = t0 + k * HOP * NS // RATE
            h = AudioHeader(stream=stream, epoch=1, seq=k, t_capture_ns=t, rate=RATE, channels=1,
                            format=SampleFormat.F32, layout=Layout.PLANAR, samples=HOP, offset=k * HOP,
                            source="bench:noise")
            batches[k].append(decode(encode_audio(Kind.TENSOR, h, audio[s, None, k * HOP : (k + 1) * HOP])))
            events = []
            if on[k] and (k == 0 or not on[k - 1]):
                since = t
                events.append(Event("speech", "start", t, 0.9, t))
            elif not on[k] and k and on[k - 1]:
                events.append(Event("speech", "stop", t, 0.95, since))
            score = float(0.9 if on[k] else rng.uniform(0, 0.2))
            r = Result(stream=stream, model="vad", epoch=1, seq=k, start_ns=t, end_ns=t + HOP * NS // RATE,
                       offset=k * HOP, rate=RATE, seq_first=k, seq_last=k, labels=[Label("speech", score)],
                       events=events)
            batches[k + 4].append(decode(encode(r)))
    return batches, n_streams * steps, n_events


def loop_run(store: Path, n_streams: int, seconds: float, with_events: bool) -> dict:
    """Feed the batches through EventsLogic on a fresh store; CPU of the whole process and of the loop."""
    batches, n_results, n_events = messages(n_streams, seconds, with_events)
    shutil.rmtree(store, ignore_errors=True)
    open_db(store, create=True).close()
    writer = StoreWriter(store, WriterConfig(clip_format="flac", fsync=True))
    writer.start()
    logic = EventsLogic(EventsConfig(max_streams=n_streams), writer, StageMetrics("events"))
    cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    slowest = 0.0
    for batch in batches:
        t = time.perf_counter()
        logic.handle(batch, Now(time.monotonic(), time.time_ns()))
        slowest = max(slowest, time.perf_counter() - t)
    loop_cpu = time.thread_time() - loop0
    logic.finish(Now(time.monotonic(), time.time_ns()))  # cuts what is left, waits for the writer
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    conn = open_db(store)
    stored = conn.execute("SELECT count(*) FROM events WHERE clip_status = 'written'").fetchone()[0]
    conn.close()
    return {"results": n_results, "events": n_events, "stored_with_clip": stored,
            "refused": sum(writer.stats.refused.values()), "cpu_s": cpu, "loop_cpu_s": loop_cpu, "wall_s": wall,
            "cpu_per_result_us": cpu / n_results * 1e6, "loop_cpu_per_message_us": loop_cpu / (2 * n_results) * 1e6,
            "live_core_pct": cpu / seconds * 100, "slowest_handle_ms": slowest * 1e3}


def writer_run(store: Path, n_events: int, fsync: bool) -> dict:
    """Events per second the writer commits (rows and a 2.5 s FLAC clip each) fed as fast as it takes them."""
    shutil.rmtree(store, ignore_errors=True)
    open_db(store, create=True).close()
    writer = StoreWriter(store, WriterConfig(clip_format="flac", fsync=fsync))
    writer.start()
    rng = np.random.default_rng(1)
    clip = (rng.integers(-20000, 20000, (int(2.5 * RATE), 1)) / 32768).astype(np.float32)
    kind = kind_of(SampleFormat.F32)
    t0 = time.time_ns()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(1, n_events + 1):
        start = t0 + i * NS
        for item in (EventRow(i, "s", "vad", "speech", start, 0, 0.9, 0.9, 0, "open", ""),
                     EventRow(i, "s", "vad", "speech", start, start + NS, 0.95, 0.8, 31, "closed", ""),
                     ClipJob(i, "s", start, clip, RATE, kind, i * RATE, start - NS // 2, start + 2 * NS, 0)):
            while not writer.submit(item):  # a full queue: wait for room (this measures the writer, not the loop)
                time.sleep(0.001)
    writer.close(timeout_s=600)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"events": n_events, "clips": writer.stats.clips, "events_per_s": n_events / wall,
            "cpu_per_event_ms": cpu / n_events * 1e3, "clip_kb": writer.stats.clip_bytes / max(writer.stats.clips, 1) / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream in the loop runs (default 20)")
    ap.add_argument("--events", type=int, default=400, help="events in the writer runs (default 400)")
    ap.add_argument("--dir", type=Path, help="where the stores go (default: a temporary directory; its disk is measured)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-events-", dir=args.dir))
    try:
        base = loop_run(root / "base", args.streams, args.seconds, with_events=False)
        full = loop_run(root / "events", args.streams, args.seconds, with_events=True)
        synced = writer_run(root / "w-fsync", args.events, fsync=True)
        unsynced = writer_run(root / "w-nofsync", args.events, fsync=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rows = [("measure", f"{args.streams} streams, events", "baseline: no events / fsync off", "ratio")]
    rows.append(("CPU per result, us (loop + writer)", bl.fmt(full["cpu_per_result_us"]),
                 bl.fmt(base["cpu_per_result_us"]), bl.fmt(bl.ratio(full["cpu_per_result_us"],
                                                                     base["cpu_per_result_us"]))))
    rows.append(("loop CPU per message, us", bl.fmt(full["loop_cpu_per_message_us"]),
                 bl.fmt(base["loop_cpu_per_message_us"]), "-"))
    rows.append(("one core's % for these streams live", bl.fmt(full["live_core_pct"]), bl.fmt(base["live_core_pct"]),
                 "-"))
    rows.append(("slowest handle() call, ms", bl.fmt(full["slowest_handle_ms"]), bl.fmt(base["slowest_handle_ms"]),
                 "-"))
    rows.append((f"events stored with clip / made ({full['events'] / args.seconds:.1f}/s)",
                 f"{full['stored_with_clip']}/{full['events']}", "-", "-"))
    rows.append(("writer: events/s sustained (fsync)", bl.fmt(synced["events_per_s"]), bl.fmt(unsynced["events_per_s"]),
                 bl.fmt(bl.ratio(synced["events_per_s"], unsynced["events_per_s"]))))
    rows.append(("writer: CPU per event, ms", bl.fmt(synced["cpu_per_event_ms"]), bl.fmt(unsynced["cpu_per_event_ms"]),
                 "-"))
    bl.emit("events", {"loop_events": full, "loop_baseline": base, "writer_fsync": synced, "writer_nofsync": unsynced,
                       "streams": args.streams, "seconds": args.seconds}, args.json, rows)


if __name__ == "__main__":
    main()
