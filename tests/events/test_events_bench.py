"""bench_events runs end to end and reports (tiny sizes, no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_events_reports_every_event_stored_with_its_clip(tmp_path) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_events.py"), "--streams", "4", "--seconds", "6",
                        "--events", "8", "--dir", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    loop = r["loop_events"]
    assert loop["events"] > 0 and loop["stored_with_clip"] == loop["events"] and loop["refused"] == 0
    assert r["loop_baseline"]["events"] == 0 and r["loop_baseline"]["cpu_per_result_us"] > 0
    for w in ("writer_fsync", "writer_nofsync"):
        assert r[w]["clips"] == r[w]["events"] == 8 and r[w]["events_per_s"] > 0
    assert r["table"][0][0] == "measure" and not list(tmp_path.iterdir())  # its stores are removed
