"""bench/bench_web.py runs end to end on a tiny load and reports what it promises (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_bench_web_reports_cpu_and_bytes_per_stream() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_web.py"), "--json", "--streams", "2",
                        "--seconds", "1.5", "--warmup", "1", "--event-s", "0.5"],
                       capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bench"] == "web" and r["streams"] == 2
    assert r["bus_msgs_per_s"] > 100 and r["view_core_pct"] > 0 and r["receive_floor_core_pct"] > 0
    assert r["browser_updates_per_s"] > 2 and 0 < r["bytes_per_s_per_stream_max"] < 50_000
    assert r["table"][0][0] == "what"
