"""A full disk (a real 2 MB tmpfs, mounted as root): a clear error, clip writing stops, events go on
being recorded, no half-written clip is left, and the stage's loop never waits for the disk."""

from __future__ import annotations

import logging
import os
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from events.writer import WriterConfig
from tests.events.helpers import NS, tensor_messages, window_results

RATE, HOP = 16_000, 512
T0 = 1_700_000_000 * NS


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk, unmounted at teardown (also when the test fails)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (run the suite as root, as CI does)")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): a container without CAP_SYS_ADMIN?")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def noisy_events(seconds: int, every_s: float = 1.5) -> tuple[list, list]:
    """Incompressible audio (every clip costs its full size) with a 0.5 s event every ``every_s``."""
    x = (np.random.default_rng(0).integers(-32768, 32767, RATE * seconds) / 32768).astype(np.float32)
    windows = len(x) // HOP
    scores = np.zeros(windows)
    per = int(every_s * RATE / HOP)
    for k in range(per // 2, windows - per, per):
        scores[k : k + 16] = 0.9
    return tensor_messages("mic", x, RATE, HOP, T0), window_results("mic", "vad", scores, RATE, HOP, T0)


@pytest.mark.parametrize("reserve_mb", [0.0, 0.4])
def test_a_full_disk_stops_clips_keeps_events_and_never_stalls(harness, small_disk, caplog, reserve_mb) -> None:
    store = small_disk / "store"
    h = harness(store, wcfg=WriterConfig(clip_format="wav", fsync=True, reserve_bytes=int(reserve_mb * 1e6)),
                pre_roll_s=0.5, post_roll_s=0.5)
    audio, results = noisy_events(60)  # 39 events, 1.5 s of 64 kB/s audio each: about 3.8 MB of clips
    slowest = 0.0
    with caplog.at_level(logging.INFO, logger="events"):
        for k, a in enumerate(audio):
            t = time.perf_counter()
            h.handle([a] + ([results[k - 4]] if k >= 4 else []))
            slowest = max(slowest, time.perf_counter() - t)
        h.handle(results[len(audio) - 4:])
        h.settle()
        h.finish()
    rows = h.rows()
    written = [r for r in rows if r["clip_status"] == "written"]
    full = [r for r in rows if r["clip_status"] == "disk_full"]
    events = sum(e.state == "stop" for r in results for e in r.events)
    # the events go on being recorded: all of them in the reserve, nearly all ("if it can") on a disk with none
    assert len(rows) == events if reserve_mb else len(rows) >= events - 4, (len(rows), events)
    # a batch the database itself had no room for leaves its events' clip status unset ('')
    unset = {""} if not reserve_mb and h.writer.stats.failed_batches else set()
    assert written and full and {r["clip_status"] for r in rows} <= {"written", "disk_full"} | unset
    assert h.writer.stats.failed_batches == 0 or not reserve_mb
    assert max(r["id"] for r in written) < min(r["id"] for r in full)  # clips stop at the full disk, and stay stopped
    for r in written:  # every clip a row names is whole
        assert (store / r["clip"]).stat().st_size == r["clip_bytes"]
        assert sf.info(str(store / r["clip"])).frames == r["clip_samples"]
    assert not list(store.rglob("*.tmp"))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and ("is full" if not reserve_mb else "less than --reserve-mb 0.4 MB free") in errors[0]
    assert "clip writing stopped, events are still recorded without clips" in errors[0]
    # the loop only queues: no message waited for the disk (test_events_logic holds the writer stuck for 3 s)
    assert slowest < 1.0, slowest
