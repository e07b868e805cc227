"""Windows, events, thresholds, model registry and tail formatting: no processes, no torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classify.events import EventTracker, parse_threshold, threshold_arrays
from classify.models import UnknownModel, known_models, load_model
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
    got = [(t, e.state, e.t_ns, e.since_ns, e.score) for t, s in enumerate(seq)
           for e in ev.update(np.array([s, 1.0], np.float32), t)]
    # on at 0.6; 0.4 is between off and on: stays on; 0.2 once then 0.45: the hold restarts;
    # 0.2, 0.1: two windows below off -> stop stamped at the first of them (t=5), carrying its
    # start and its peak (0.6); on again at 0.7.
    assert got == [(1, "start", 1, 1, pytest.approx(0.6)), (6, "stop", 5, 1, pytest.approx(0.6)),
                   (7, "start", 7, 7, pytest.approx(0.7))]
    (stop,) = ev.reset(99)
    assert (stop.label, stop.state, stop.t_ns, stop.since_ns) == ("speech", "stop", 99, 7)


def test_threshold_parsing() -> None:
    assert parse_threshold("0.6") == ("*", 0.6, 0.6)
    assert parse_threshold("speech=0.7:0.4") == ("speech", 0.7, 0.4)
    for bad in ("0.3:0.6", "nan", "1.5", "-0.1:0"):
        with pytest.raises(ValueError):
            parse_threshold(bad)
    with pytest.raises(ValueError):
        threshold_arrays(("speech",), {}, [("nope", 0.5, 0.5)])


def test_unknown_model_names_the_problem() -> None:
    assert {"vad", "yamnet", "level", "wakeword"} <= set(known_models())
    with pytest.raises(UnknownModel, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(UnknownModel, match="cannot import module"):
        load_model("no_such_module_xyz:make")
    with pytest.raises(UnknownModel, match="json:dumps"):  # a callable that is no model factory
        load_model("json:dumps")


def test_cli_and_tail_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, classify.cli, classify.tail, classify.models; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


