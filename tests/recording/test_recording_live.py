"""Live vs replay: convert's tensors from a live capture equal, byte for byte, those from its recording.

Live: capture (file source, --fast) -> convert -> tensors, while ``soundbus record`` records
the same raw frames. So that both subscribers get every frame, the test forwards
capture's output through its own XPUB and subscribes upstream only once both convert and
the recorder have subscribed (XPUB_VERBOSE shows each one), instead of hoping they joined
in time. Replay: the recording -> a fresh convert -> tensors.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import zmq

import msgspec
import numpy as np

from common.wire import Audio, Flag, Kind, Result, decode, encode_audio
from tests.conftest import ALSA_SOUNDS, start, tcp
from tests.recording.conftest import TWO_STREAMS, V1_OUTPUTS, messages_of, read_all, soundbus

pytestmark = pytest.mark.slow


def forward_when_subscribed(zctx: zmq.Context, upstream: str, downstream: str, subscribers: int, capture) -> int:
    """Forward raw frames from ``upstream`` once ``subscribers`` peers subscribed to raw/ downstream.

    ``capture``: a callable that starts the publisher upstream (after we subscribed).
    Returns the number of messages forwarded; stops 1 s after the publisher has exited.
    """
    front = zctx.socket(zmq.XPUB)
    front.setsockopt(zmq.XPUB_VERBOSE, 1)
    front.setsockopt(zmq.SNDHWM, 100_000)
    front.setsockopt(zmq.LINGER, 5000)
    front.bind(downstream)
    joined = 0
    deadline = time.monotonic() + 20
    while joined < subscribers:
        assert time.monotonic() < deadline, f"only {joined} of {subscribers} subscribed to raw/"
        if front.poll(100) and front.recv() == b"\x01raw/":
            joined += 1
    back = zctx.socket(zmq.SUB)
    back.setsockopt(zmq.RCVHWM, 100_000)
    back.setsockopt(zmq.SUBSCRIBE, b"raw/")
    back.connect(upstream)
    proc = capture()
    forwarded, quiet_since = 0, None
    while True:
        if back.poll(100):
            front.send_multipart(back.recv_multipart())
            forwarded += 1
            quiet_since = None
        elif proc.proc.poll() is not None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 1.0:
                break
        assert time.monotonic() < deadline + 30, "capture did not end"
    back.close(0)
    front.close()
    return forwarded


def tensors(collector, expected_end_streams: int) -> list[Audio]:
    """Tensor messages until every stream has sent END (convert flushes its tail then)."""
    return collector.collect(
        lambda ms: sum(1 for m in ms if m.header.flags & Flag.END) >= expected_end_streams, timeout=30
    )


def comparable(m: Audio) -> tuple[bytes, list[str], bytes]:
    """(message without per-hop times, hop names, payload): what must be identical between live and replay."""
    return (encode_audio(m.kind, msgspec.structs.replace(m.header, trace=[]), m.payload),
            [h.stage for h in m.header.trace], bytes(m.payload))


def convert_into(procs, collector, raw_addr: str):
    """A fresh convert reading ``raw_addr``; returns (process, collector of its tensors)."""
    out = tcp()
    conv = start(procs, "convert", "--input", raw_addr, "--output", out)
    conv.wait_for("ready")
    col = collector(out, Kind.TENSOR)
    conv.wait_for("subscriber joined")
    return conv, col


def test_live_and_replayed_raw_frames_give_identical_tensors(procs, collector, zctx, tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    shutil.copy(ALSA_SOUNDS / "Front_Center.wav", wav)  # 48 kHz mono s16 speech, 1.43 s
    cap_addr, mid = tcp(), tcp()
    recording = tmp_path / "live.sbrec"

    _conv, live_col = convert_into(procs, collector, mid)
    rec = soundbus(procs, "record", "-o", str(recording), "--input", mid, "--kind", "raw")
    rec.wait_for("ready")
    n_raw = forward_when_subscribed(
        zctx, cap_addr, mid, 2,
        lambda: start(procs, "capture", "--source", f"file:{wav}", "--stream", "s1", "--fast", "--output", cap_addr),
    )
    live = tensors(live_col, 1)
    deadline = time.monotonic() + 20
    while len(read_all(recording)[0]) < n_raw:
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.05)
    assert rec.stop() == 0
    raw, problems = read_all(recording)
    assert problems == [] and len(raw) == n_raw > 60

    replay_addr = tcp()
    _conv2, replay_col = convert_into(procs, collector, replay_addr)
    rep = soundbus(procs, "replay", str(recording), "--output", replay_addr, "--fast")
    assert rep.wait(30) == 0, rep.log()
    replayed = tensors(replay_col, 1)

    assert len(live) > 40
    assert [comparable(m) for m in replayed] == [comparable(m) for m in live]


def test_committed_two_stream_recording_drives_convert(procs, collector) -> None:
    """The committed fixture replays into convert: both streams come out, the gap is bridged, nothing bad."""
    addr = tcp()
    _conv, col = convert_into(procs, collector, addr)
    rep = soundbus(procs, "replay", str(TWO_STREAMS), "--output", addr, "--fast")
    assert rep.wait(30) == 0, rep.log()
    out = tensors(col, 2)
    by_stream = {s: [m for m in out if m.stream == s] for s in ("room48", "speech16")}
    for s, ms in by_stream.items():
        assert ms and all(m.header.rate == 16000 and m.header.format == "f32" for m in ms), s
        frames = sum(m.header.samples for m in ms)
        assert abs(frames - {"room48": 16000, "speech16": 23681}[s]) <= 512, (s, frames)
    assert not col.bad


def test_a_v1_recording_replays_into_the_v2_pipeline_as_v1_produced_it(procs, tmp_path: Path) -> None:
    """tests/data/v1_two_streams_out.sbrec holds what the v1 pipeline (commit 1d0484b) made of
    two_streams.sbrec: convert's tensors and vad's results. The v2 pipeline, fed the same v1
    recording, makes byte-identical tensors and the same results for every window v1 classified,
    plus the 12 windows of speech16 v1 dropped at the bridged gap (a v1 bug: windows waiting in
    the buffer were discarded when a DISCONTINUITY arrived)."""
    raw, tens, res = tcp(), tcp(), tcp()
    out = tmp_path / "v2.sbrec"
    rec = soundbus(procs, "record", "-o", str(out), "--input", tens, "--input", res, "--kind", "tensor",
                   "--kind", "result")
    cls = start(procs, "classify", "--model", "vad", "--input", tens, "--output", res, "--max-lag-ms", "0",
                "--batch-wait-ms", "0")
    cls.wait_for("ready", 60)
    conv = start(procs, "convert", "--input", raw, "--output", tens)
    conv.wait_for("ready")
    rec.wait_for("input connected", count=2)
    cls.wait_for("input connected")
    rep = soundbus(procs, "replay", str(TWO_STREAMS), "--output", raw, "--fast")
    assert rep.wait(60) == 0, rep.log()
    deadline = time.monotonic() + 30
    while True:  # 79 tensors and 67 + 12 results, the last of each stream final
        got = [decode(m) for m in messages_of(read_all(out)[0])] if out.exists() else []
        if sum(1 for m in got if isinstance(m, Result) and m.final) == 2:
            break
        assert time.monotonic() < deadline, f"{len(got)} messages\n{cls.log()}"
        time.sleep(0.1)
    assert rec.stop() == 0
    v1 = [decode(m) for m in messages_of(read_all(V1_OUTPUTS)[0])]

    def tensors_of(ms):
        return {(m.stream, m.header.seq): m for m in ms if isinstance(m, Audio)}

    t1, t2 = tensors_of(v1), tensors_of(got)
    assert t1.keys() == t2.keys() and len(t1) == 79
    for k, a in t1.items():
        b = t2[k]
        assert bytes(a.payload) == bytes(b.payload), k
        ha, hb = a.header, b.header
        assert (ha.offset, ha.t_capture_ns, ha.samples, ha.flags) == (hb.offset, hb.t_capture_ns, hb.samples,
                                                                      hb.flags), k
    assert t2[("speech16", 18)].header.lost == 320  # v2 also says what the bridge filled in (16 kHz in and out)

    def results_of(ms):
        return {(m.stream, m.offset): m for m in ms if isinstance(m, Result)}

    r1, r2 = results_of(v1), results_of(got)
    assert len(r1) == 67 and set(r1) <= set(r2)
    extra = sorted(k for k in r2 if k not in r1)
    assert extra == [("speech16", 512 * k) for k in range(6, 18)]
    for k, a in r1.items():
        b = r2[k]
        assert (a.start_ns, a.end_ns) == (b.start_ns, b.end_ns), k
        np.testing.assert_allclose([lbl.score for lbl in b.labels], [lbl.score for lbl in a.labels], atol=1e-5)
