"""StreamFramer and spec parsing, in process: any chunking gives the same frames; numbering and flags."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.errors import CaptureError
from capture.framer import StreamFormat, StreamFramer
from capture.sources.base import ArrivalClock
from capture.spec import parse_sources
from common.protocol import Flag, Header

FMT = StreamFormat(16000, 2, "s16")  # 4 bytes per sample frame
T0 = 1_700_000_000_000_000_000


def framer(hold_last: bool = False, frame_ms: float = 20.0) -> tuple[StreamFramer, list[tuple[Header, bytes]]]:
    out: list[tuple[Header, bytes]] = []
    f = StreamFramer("s", FMT, frame_ms, "test", lambda h, p: out.append((h, p)), hold_last=hold_last)
    f.new_epoch(epoch=1)
    return f, out


def signal(n: int) -> bytes:
    return np.arange(n * 2, dtype="<i2").tobytes()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 1000), min_size=1, max_size=20), hold=st.booleans())
def test_any_chunking_gives_the_same_frames(cuts, hold):
    total = sum(cuts)
    data = signal(total)
    f, out = framer(hold)
    pos = 0
    for i, n in enumerate(cuts):
        # each block is stamped with its true capture time: the framer must keep frame times exact
        f.push(data[pos * 4 : (pos + n) * 4], T0 + pos * 1_000_000_000 // 16000, end=i == len(cuts) - 1)
        pos += n
    if hold:
        f.end()
    hs = [h for h, _ in out]
    assert b"".join(p for _, p in out) == data
    assert [h.seq for h in hs] == list(range(len(hs)))
    assert all(h.frames == 320 for h in hs[:-1]) and 0 < hs[-1].frames <= 320
    assert [h.offset for h in hs] == [i * 320 for i in range(len(hs))]
    assert [h.t_capture_ns for h in hs] == [T0 + h.offset * 1_000_000_000 // 16000 for h in hs]
    assert [bool(h.flags & Flag.END) for h in hs] == [False] * (len(hs) - 1) + [True]


def test_lost_samples_advance_offset_and_flag_the_next_frame():
    f, out = framer()
    f.push(signal(320), T0)
    f.lost(640)
    f.push(signal(320), T0 + 60_000_000)
    (h0, _), (h1, _) = out
    assert (h0.offset, h1.offset) == (0, 960) and h1.seq == 1
    assert h1.flags == Flag.OVERFLOW | Flag.DISCONTINUITY and h0.flags == Flag.NONE
    assert h1.t_capture_ns == T0 + 60_000_000


def test_new_epoch_restarts_numbering_and_flags_discontinuity():
    f, out = framer()
    f.push(signal(640), T0)
    e2 = f.new_epoch()
    f.push(signal(320), T0 + 10**9)
    assert e2 > 1
    h = out[-1][0]
    assert (h.epoch, h.seq, h.offset) == (e2, 0, 0) and h.flags == Flag.DISCONTINUITY
    assert f.position() == (e2, 1, 320)


def test_hold_last_flags_the_final_frame_at_eof():
    f, out = framer(hold_last=True)
    f.push(signal(640), T0)  # two whole frames; the second is held back
    assert len(out) == 1
    f.end()
    assert len(out) == 2 and out[-1][0].flags == Flag.END and out[-1][0].frames == 320


def test_arrival_clock_keeps_the_timeline_and_reanchors_after_a_stall():
    c = ArrivalClock(1000, slack_s=0.5)
    assert c.t_of(0, 100, 10**9) == 10**9 - 100_000_000
    assert c.t_of(100, 100, 10**9 + 50_000_000) == 10**9  # early/bursty data: timeline kept
    t = c.t_of(200, 100, 10**9 + 5 * 10**9)  # arrived 4.8 s late: re-anchored
    assert t == 10**9 + 5 * 10**9 - 100_000_000 and c.reanchors == 1


def test_stream_ids_from_suffix_flag_or_source():
    specs = parse_sources(
        ["file:/x/speech.wav", "file:/y/speech.wav", "synth:tone:1000#beep", "loopback", "device:2", "default"],
        ["first"],
    )
    assert [s.stream for s in specs] == ["first", "speech", "beep", "loopback", "dev2", "mic"]
    assert [s.kind for s in specs] == ["file", "file", "synth", "loopback", "device", "device"]


@pytest.mark.parametrize(
    "bad, words",
    [
        (["mic"], "unknown source"),
        (["pipe:s16:16000"], "pipe:FORMAT:RATE:CHANNELS"),
        (["pipe:s17:16000:1"], "pipe format"),
        (["synth:square"], "synth:tone"),
        (["file:a.wav#x", "file:b.wav#x"], "used by two sources"),
        (["pipe:s16:8000:1", "pipe:s16:8000:1"], "one pipe"),
    ],
)
def test_bad_specs_are_one_clear_sentence(bad, words):
    with pytest.raises(CaptureError, match=words):
        parse_sources(bad, [])


def test_capture_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, capture.cli, capture.runner, capture.devices\n"
        "import capture.sources.wavfile, capture.sources.synth, capture.sources.device, capture.sources.pipe\n"
        "import capture.sources.ffmpeg\n"
        "assert 'torch' not in sys.modules and 'torchaudio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_device_queue_overrun_is_counted_placed_and_flagged():
    """The PortAudio callback path: a full queue drops blocks; the frame after them says exactly how many samples.

    PortAudio cannot be made to overrun on demand, so the callback is called directly with
    the two structs it receives (time info, status flags) as plain attribute holders.
    """
    import queue
    from types import SimpleNamespace

    from capture.sources.base import CaptureOptions
    from capture.sources.device import DeviceLost, DeviceSource
    from capture.spec import SourceSpec
    from common.stage import StopFlag

    src = DeviceSource(SourceSpec("device", "", "mic", "default"), CaptureOptions())
    src.fmt = StreamFormat(16000, 1, "s16")
    out: list[Header] = []
    src.framer = StreamFramer("mic", src.fmt, 20, "test", lambda h, p: out.append(h))
    src.framer.new_epoch(epoch=1)
    src._q = queue.Queue(maxsize=2)
    status = SimpleNamespace(input_overflow=False)

    def callback(i: int) -> None:
        t = SimpleNamespace(inputBufferAdcTime=10.0 + i * 0.02, currentTime=10.0 + i * 0.02 + 0.005)
        src._callback(np.full((320, 1), i, "<i2"), 320, t, status)

    import time

    before = time.time_ns()
    callback(0)
    after = time.time_ns()
    for i in range(1, 4):  # blocks 2 and 3 find the queue full
        callback(i)
    taken = [src._q.get(), src._q.get()]  # the reader catches up ...
    callback(4)  # ... and block 4 fits again
    pending = taken + [src._q.get()]
    src._q = queue.Queue()
    for item in pending:  # replay what the reader saw, in order
        src._q.put(item)
    with pytest.raises(DeviceLost):  # queue drained and no stream behind it: "device lost"
        src._pump(StopFlag(install=False))
    assert [h.offset for h in out] == [0, 320, 4 * 320]  # blocks 0, 1, then 4 after 640 lost samples
    assert [h.flags for h in out] == [Flag.NONE, Flag.NONE, Flag.OVERFLOW | Flag.DISCONTINUITY]
    # capture time = ADC time mapped to the wall clock: the block hit the ADC 5 ms before its callback ran
    assert before - 5_000_000 <= out[0].t_capture_ns <= after - 5_000_000
