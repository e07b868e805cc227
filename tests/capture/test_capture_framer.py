"""StreamFramer and spec parsing, in process: any chunking gives the same chunks; numbering and flags."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.framer import StreamFormat, StreamFramer
from capture.sources.base import ArrivalClock
from capture.spec import parse_sources
from common.errors import UserError
from common.wire import AudioHeader, Flag

FMT = StreamFormat(16000, 2, "s16")  # 4 bytes per sample frame
T0 = 1_700_000_000_000_000_000


class Collected:
    """A framer whose returned chunks are collected in ``out`` (the test reads them in order)."""

    def __init__(self, f: StreamFramer, out: list[tuple[AudioHeader, bytes]]) -> None:
        self.f, self.out = f, out

    def __getattr__(self, name: str):
        attr = getattr(self.f, name)
        if name not in ("push", "lost", "end"):
            return attr

        def call(*a, **k):
            self.out.extend(attr(*a, **k))

        return call


def framer(hold_last: bool = False, chunk_ms: float = 20.0) -> tuple[Collected, list[tuple[AudioHeader, bytes]]]:
    out: list[tuple[AudioHeader, bytes]] = []
    f = StreamFramer("s", FMT, chunk_ms, "test", hold_last=hold_last)
    f.new_epoch(epoch=1)
    return Collected(f, out), out


def signal(n: int) -> bytes:
    return np.arange(n * 2, dtype="<i2").tobytes()


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 1000), min_size=1, max_size=20), hold=st.booleans())
def test_any_chunking_gives_the_same_chunks(cuts, hold):
    total = sum(cuts)
    data = signal(total)
    f, out = framer(hold)
    pos = 0
    for i, n in enumerate(cuts):
        # each block is stamped with its true capture time: the framer must keep chunk times exact
        f.push(data[pos * 4 : (pos + n) * 4], T0 + pos * 1_000_000_000 // 16000, end=i == len(cuts) - 1)
        pos += n
    if hold:
        f.end()
    hs = [h for h, _ in out]
    assert b"".join(p for _, p in out) == data
    assert [h.seq for h in hs] == list(range(len(hs)))
    assert all(h.samples == 320 for h in hs[:-1]) and 0 < hs[-1].samples <= 320
    assert [h.offset for h in hs] == [i * 320 for i in range(len(hs))]
    assert [h.t_capture_ns for h in hs] == [T0 + h.offset * 1_000_000_000 // 16000 for h in hs]
    assert [bool(h.flags & Flag.END) for h in hs] == [False] * (len(hs) - 1) + [True]


def test_lost_samples_advance_offset_and_flag_the_next_chunk():
    f, out = framer()
    f.push(signal(320), T0)
    f.lost(640)
    f.push(signal(320), T0 + 60_000_000)
    (h0, _), (h1, _) = out
    assert (h0.offset, h1.offset) == (0, 960) and h1.seq == 1
    assert h1.flags == Flag.OVERFLOW | Flag.DISCONTINUITY and h0.flags == Flag.NONE
    assert (h0.lost, h1.lost) == (0, 640)
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


def test_hold_last_flags_the_final_chunk_at_eof():
    f, out = framer(hold_last=True)
    f.push(signal(640), T0)  # two whole chunks; the second is held back
    assert len(out) == 1
    f.end()
    assert len(out) == 2 and out[-1][0].flags == Flag.END and out[-1][0].samples == 320


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
    with pytest.raises(UserError, match=words):
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
    """The PortAudio callback path: blocks the loop has not taken beyond the bound are dropped;
    the chunk after them says exactly how many samples were lost.

    PortAudio cannot be made to overrun on demand, so the callback is called directly with
    the two structs it receives (time info, status flags) as plain attribute holders.
    """
    import time
    from types import SimpleNamespace

    from capture.sources.base import CaptureOptions, Loop
    from capture.sources.device import DeviceSource
    from capture.spec import SourceSpec

    src = DeviceSource(SourceSpec("device", "", "mic", "default"), CaptureOptions())
    src.fmt = StreamFormat(16000, 1, "s16")
    src.framer = StreamFramer("mic", src.fmt, 20, "test")
    src.framer.new_epoch(epoch=1)
    queue: list = []
    src.loop = Loop(lambda fd, h: None, lambda fd: None, queue.append)
    src._stream = object()  # "open"
    src._max_waiting = 1  # the loop may be two blocks behind before blocks are dropped
    status = SimpleNamespace(input_overflow=False)

    def callback(i: int) -> None:
        t = SimpleNamespace(inputBufferAdcTime=10.0 + i * 0.02, currentTime=10.0 + i * 0.02 + 0.005)
        src._callback(np.full((320, 1), i, "<i2"), 320, t, status)

    before = time.time_ns()
    callback(0)
    after = time.time_ns()
    for i in range(1, 4):  # blocks 2 and 3 find the loop two behind
        callback(i)
    out: list[AudioHeader] = []
    for item in queue[:2]:  # the loop catches up ...
        out += [h for h, _ in src.on_item(item[1], 0.0)]
    callback(4)  # ... and block 4 is taken again
    out += [h for h, _ in src.on_item(queue[2][1], 0.0)]
    assert len(queue) == 3
    assert [h.offset for h in out] == [0, 320, 4 * 320]  # blocks 0, 1, then 4 after 640 lost samples
    assert [h.flags for h in out] == [Flag.NONE, Flag.NONE, Flag.OVERFLOW | Flag.DISCONTINUITY]
    assert out[2].lost == 640
    # capture time = ADC time mapped to the wall clock: the block hit the ADC 5 ms before its callback ran
    assert before - 5_000_000 <= out[0].t_capture_ns <= after - 5_000_000
