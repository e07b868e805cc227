"""The full chain as separate processes: capture (a real speech recording) -> convert -> classify -> tail."""

from __future__ import annotations

import re
import time

import numpy as np

from classify.tail import as_record
from common.wire import Kind

SPEECH = "/usr/share/sounds/alsa/Front_Center.wav"  # 48 kHz s16: convert resamples it to 16 kHz


def test_capture_convert_classify_tail(procs, start, tcp, collector):
    raw, tensor, result = tcp(), tcp(), tcp()
    vad = start(procs, "classify", "--model", "vad", "--input", tensor, "--output", result)
    vad.wait_for("ready", 60)
    col = collector(result, Kind.RESULT)
    tail = start(procs, "classify.tail", "--input", result)  # not a terminal: plain lines
    tail.wait_for("input connected")
    vad.wait_for("subscriber joined")
    conv = start(procs, "convert", "--input", raw, "--output", tensor, "--rate", "16000", "--channels", "mono")
    conv.wait_for("ready")
    vad.wait_for("input connected")
    cap = start(procs, "capture", "--source", f"file:{SPEECH}", "--stream", "front", "--fast", "--output", raw)
    assert cap.wait(60) == 0, cap.log()
    n_windows = (68545 // 3) // 512  # 1.43 s at 16 kHz in 512-sample windows
    # capture's END passes through convert: the worker classifies the padded last window and says so
    col.collect(lambda ms: any(as_record(m, 0).get("final") for m in ms), timeout=30)
    assert len(col.messages) == n_windows + 1 and col.messages[-1].final

    rs = [as_record(m, 0) for m in col.messages]
    assert [r["offset"] for r in rs[:n_windows]] == [512 * k for k in range(n_windows)]
    probs = np.array([r["labels"][0][1] for r in rs])
    assert probs.max() > 0.9, probs.round(2)
    assert any(e["state"] == "start" and e["label"] == "speech" for r in rs for e in r["events"])
    starts = [r["start_ns"] for r in rs]
    assert starts == sorted(starts) and all(r["end_ns"] > r["start_ns"] for r in rs)
    assert not [ln for ln in vad.lines if "WARNING" in ln], vad.log()  # no offset mismatch, gap or drop
    hops = [h.stage for h in col.messages[-1].trace]
    assert hops[-2:] == ["convert", "classify"], hops  # capture may add its own hop before these

    tail.wait_for(r"front vad: ended: \d+ windows; speech", 20, stdout=True)  # plain mode: spans and the end
    assert any(re.search(r"front vad: speech started at \d+\.\d\d s", ln) for ln in tail.out_lines)
    assert any(re.search(r"front vad: speech \d+\.\d\d-\d+\.\d\d s \(peak \d\.\d\d\)", ln) for ln in tail.out_lines)
