"""bench/bench_mqtt.py runs end to end on a tiny load and reports what it promises (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_bench_mqtt_reports_cpu_per_result_and_messages_per_stream() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_mqtt.py"), "--json", "--streams", "4",
                        "--seconds", "1.5", "--warmup", "1", "--event-s", "0.5"],
                       capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["bench"] == "mqtt" and r["streams"] == 4
    assert r["results_per_s"] > 0 and r["bridge_cpu_us_per_result"] > 0
    kinds = r["broker_msgs_by_kind_per_s"]
    assert kinds.get("labels", 0) > 0 and kinds.get("state", 0) > 0 and kinds.get("event", 0) > 0, kinds
    assert 0 < r["broker_msgs_per_s_per_stream"] < 20  # bounded by --rate, not by the result rate (~43/s)
    assert r["table"][0][0] == "what"
