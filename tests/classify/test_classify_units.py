"""Windows, events, thresholds, model registry and tail formatting: no processes, no torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classify.events import EventTracker, parse_threshold, threshold_arrays
from classify.models import UnknownModel, known_models, load_model
from classify.tail import plain_line
from classify.windows import StreamWindows

RATE = 16_000
T0 = 1_700_000_000_000_000_000


def feed(w: StreamWindows, audio: np.ndarray, sizes: list[int]) -> list:
    """Push ``audio`` in chunks of the given sizes (cycled); take every window."""
    out, pos, seq, i = [], 0, 0, 0
    while pos < audio.shape[1]:
        n = sizes[i % len(sizes)]
        i += 1
        part = audio[:, pos : pos + n]
        w.push(part, T0 + pos * 1_000_000_000 // RATE, seq, 0, [])
        pos += part.shape[1]
        seq += 1
        while w.ready():
            win = w.take()
            win.samples = win.samples.copy()  # a view is valid only until the next push
            out.append(win)
    return out


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5), hop=st.sampled_from([160, 512, 700]))
def test_windows_do_not_depend_on_chunking(sizes: list[int], hop: int) -> None:
    audio = np.arange(2 * 5000, dtype=np.float32).reshape(2, 5000)
    w = StreamWindows(RATE, 2, 1000, hop, capacity=100_000)
    wins = feed(w, audio, sizes)
    assert len(wins) == 1 + (5000 - 1000) // hop
    for k, win in enumerate(wins):
        assert win.offset == k * hop
        np.testing.assert_array_equal(win.samples, audio[:, k * hop : k * hop + 1000])
        assert win.start_ns == T0 + (k * hop * 1_000_000_000) // RATE
        assert win.end_ns - win.start_ns == pytest.approx(1000 / RATE * 1e9, abs=1)


def test_window_seq_range_and_offset_start() -> None:
    w = StreamWindows(RATE, 1, 512, 512, capacity=10_000)
    w.reset(offset=3200)  # the stream's epoch began 3200 samples earlier
    for seq in range(4):  # 4 x 320 samples
        w.push(np.zeros((1, 320), np.float32), T0 + seq * 20_000_000, seq, 0, [])
    a = w.take()
    b = w.take()
    assert (a.offset, a.seq_first, a.seq_last) == (3200, 0, 1)  # samples 0..511 -> messages 0 and 1
    assert (b.offset, b.seq_first, b.seq_last) == (3712, 1, 3)  # samples 512..1023 -> messages 1..3
    assert b.start_ns == T0 + 32_000_000 and b.end_ns == T0 + 64_000_000
    assert not w.ready()


def test_capacity_drops_oldest_whole_hops() -> None:
    w = StreamWindows(RATE, 1, 512, 256, capacity=1024)
    dropped = w.push(np.zeros((1, 1024), np.float32), T0, 0, 0, [])
    assert dropped == 0
    dropped = w.push(np.ones((1, 512), np.float32), T0 + 64_000_000, 1, 0, [])
    assert dropped == 2 and w.buffered == 1024 and w.offset == 512
    assert w.take().offset == 512


def test_hysteresis_on_off_and_hold() -> None:
    on, off = threshold_arrays(("speech", "music"), {"speech": (0.5, 0.3)}, [])
    assert np.isinf(on[1])  # no threshold: never fires
    ev = EventTracker(("speech", "music"), on, off, hold=2)
    seq = [0.1, 0.6, 0.4, 0.2, 0.45, 0.2, 0.1, 0.7]
    got = [(t, e["state"], e["t_ns"]) for t, s in enumerate(seq) for e in ev.update(np.array([s, 1.0]), t)]
    # on at 0.6; 0.4 is between off and on: stays on; 0.2 once then 0.45: the hold restarts;
    # 0.2, 0.1: two windows below off -> stop stamped at the first of them (t=5); on again at 0.7.
    assert got == [(1, "start", 1), (6, "stop", 5), (7, "start", 7)]
    assert ev.reset(99) == [{"label": "speech", "state": "stop", "t_ns": 99}]


def test_threshold_parsing() -> None:
    assert parse_threshold("0.6") == ("*", 0.6, 0.6)
    assert parse_threshold("speech=0.7:0.4") == ("speech", 0.7, 0.4)
    with pytest.raises(ValueError):
        parse_threshold("0.3:0.6")
    with pytest.raises(ValueError):
        threshold_arrays(("speech",), {}, [("nope", 0.5, 0.5)])


def test_unknown_model_names_the_problem() -> None:
    assert {"vad", "yamnet", "level", "wakeword"} <= set(known_models())
    with pytest.raises(UnknownModel, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(UnknownModel, match="cannot import module"):
        load_model("no_such_module_xyz:make")


def test_tail_plain_line_shows_span_labels_events_latency() -> None:
    rec = {
        "stream": "mic1", "model": "vad", "labels": [["speech", 0.93]], "start_ns": T0, "end_ns": T0 + 32_000_000,
        "events": [{"label": "speech", "state": "start", "t_ns": T0}], "latency_ms": 1.25,
    }
    line = plain_line(rec)
    assert line.startswith("mic1 vad ") and "speech 0.93" in line and "[+speech]" in line and "lat 1.2 ms" in line
    json.dumps(rec)  # records are JSON-ready


def test_cli_and_tail_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, classify.cli, classify.tail, classify.models; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_live_view_shows_level_labels_events_gaps_latency() -> None:
    from rich.console import Console

    from classify.tail import LiveView

    console = Console(record=True, width=160, force_terminal=False)
    view = LiveView(console)
    view.update({"stream": "mic1", "model": "level", "labels": [["sound", 0.8]], "rms_dbfs": -12.0,
                 "peak_dbfs": -3.0, "clipped": 0, "events": [], "latency_ms": 0.9}, gaps=0)
    view.update({"stream": "mic1", "model": "vad", "labels": [["speech", 0.93]], "latency_ms": 2.5,
                 "events": [{"label": "speech", "state": "start", "t_ns": T0}]}, gaps=3)
    console.print(view.render())
    text = console.export_text()
    assert "mic1" in text and "vad: speech 0.93" in text and "-12.0 dB" in text and "█" in text
    assert "▲speech (vad)" in text and " 3 " in text and "2.5 ms" in text


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "1e300", "five"])
def test_batch_wait_ms_rejects_what_would_break_the_loop(text: str) -> None:
    """nan never times out, inf and huge values overflow the poll timeout: refused at the command line."""
    import argparse

    from classify.cli import batch_wait_ms

    with pytest.raises(argparse.ArgumentTypeError):
        batch_wait_ms(text)
    assert batch_wait_ms("0") == 0.0 and batch_wait_ms("5") == 5.0
