"""record / replay / info / export as real processes over real sockets.

The recorder is the test's witness for replay: replay a recording, record what arrives,
and compare frames byte for byte (and receive-time spans for timing, loosely).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from common.observe.metrics import StageMetrics
from common.recording.format import read_records, segment_path
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import (
    AudioHeader,
    Heartbeat,
    HeartbeatState,
    Kind,
    Label,
    Layout,
    Result,
    SampleFormat,
    decode,
    encode,
    encode_audio,
    topic_for,
)
from tests.conftest import ROOT, tcp
from tests.recording.conftest import TWO_STREAMS, messages_of, read_all, soundbus


def publisher(ctx, addr: str) -> Outbox:
    return Outbox(ctx, [addr], SocketOptions(), StageMetrics("test"))


def record_replay(
    procs, tmp_path: Path, *replay_args: str, record_args: tuple[str, ...] = (), src=TWO_STREAMS, count=None
):
    """Replay ``src`` into a recorder; returns (replayed records, replay process).

    ``count``: messages the recorder should get (default: as many as the replay sent).
    """
    addr = tcp()
    out = tmp_path / f"out{len(procs)}.sbrec"
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, *record_args)
    rec.wait_for("ready")
    rep = soundbus(procs, "replay", str(src), "--output", addr, *replay_args)
    assert rep.wait(60) == 0, rep.log()
    expected = count or int(rep.wait_for(r"replayed (\d+) messages").split("replayed ")[1].split()[0])
    deadline = time.monotonic() + 20
    while True:  # wait until the recorder has flushed everything the replay sent
        if out.exists() and len(read_all(out)[0]) >= expected:
            break
        assert time.monotonic() < deadline, f"recorder got {len(read_all(out)[0])} of {expected}\n{rec.log()}"
        time.sleep(0.05)
    assert rec.stop() == 0, rec.log()
    records, problems = read_all(out)
    assert problems == []
    return records, rep


def test_replayed_messages_are_byte_identical(procs, tmp_path: Path) -> None:
    """A v1 recording replays as the v2 messages it stands for; recorded again (v2, one part per
    record) and replayed again, every byte is kept."""
    original, _ = read_all(TWO_STREAMS)
    assert all(len(r.frames) == 3 for r in original)  # the committed file is protocol v1
    replayed, _ = record_replay(procs, tmp_path, "--fast")
    assert all(len(r.frames) == 1 for r in replayed)  # recorded as v2
    assert messages_of(replayed) == messages_of(original)
    again, _ = record_replay(procs, tmp_path, "--fast", src=tmp_path / "out0.sbrec")
    assert messages_of(again) == messages_of(replayed)


def test_replay_timing_follows_receive_times_scaled_by_speed(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    span = (original[-1].t_recv_ns - original[0].t_recv_ns) / 1e9  # 1.46 s

    def replayed_span(*args: str) -> float:
        recs, _ = record_replay(procs, tmp_path, *args)
        assert len(recs) == len(original)
        return (recs[-1].t_recv_ns - recs[0].t_recv_ns) / 1e9

    real, double, fast = replayed_span("--speed", "1"), replayed_span("--speed", "2"), replayed_span("--fast")
    assert 0.9 * span < real < span + 1.0
    assert 0.45 * span < double < span / 2 + 0.7
    assert fast < real / 3


def test_new_epoch_changes_only_the_epoch(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    replayed, _ = record_replay(procs, tmp_path, "--fast", "--new-epoch")
    assert len(replayed) == len(original)
    epochs = {}
    for a, b in zip(messages_of(original), messages_of(replayed)):
        ma, mb = decode(a), decode(b)
        ha, hb = ma.header, mb.header
        assert hb.epoch != ha.epoch
        assert epochs.setdefault(hb.stream, hb.epoch) == hb.epoch  # one new epoch per stream
        ha.epoch = hb.epoch
        assert ha == hb and bytes(ma.payload) == bytes(mb.payload)
    assert len(set(epochs.values())) == 2


def test_stream_selection_on_replay_and_record(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    only16 = [m for m, r in zip(messages_of(original), original) if r.stream == "speech16"]
    by_replay, _ = record_replay(procs, tmp_path, "--fast", "--stream", "speech16")
    by_record, _ = record_replay(procs, tmp_path, "--fast", record_args=("--stream", "speech16"), count=74)
    assert messages_of(by_replay) == only16 and messages_of(by_record) == only16


def test_loop_replays_again_with_new_epochs(procs, tmp_path: Path) -> None:
    addr = tcp()
    out = tmp_path / "loop.sbrec"
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, "--stream", "speech16")
    rec.wait_for("ready")
    rep = soundbus(procs, "replay", str(TWO_STREAMS), "--output", addr, "--fast", "--loop", "--stream", "speech16")
    deadline = time.monotonic() + 20
    while not out.exists() or len(read_all(out)[0]) < 3 * 74:
        assert time.monotonic() < deadline, rep.log()
        time.sleep(0.05)
    assert rep.stop() == 0 and rec.stop() == 0
    headers = [decode(m).header for m in messages_of(read_all(out)[0])]
    epochs = list(dict.fromkeys(h.epoch for h in headers))
    assert len(epochs) >= 3 and epochs[0] == headers[0].epoch
    assert [h.seq for h in headers[:74]] == [h.seq for h in headers[74:148]]


def test_kill_9_recorder_leaves_every_complete_record_readable(procs, tmp_path: Path) -> None:
    addr = tcp()
    out = tmp_path / "killed.sbrec"
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr)
    rec.wait_for("ready")
    soundbus(procs, "replay", str(TWO_STREAMS), "--output", addr, "--fast", "--loop", "-q")
    deadline = time.monotonic() + 30
    while not out.exists() or out.stat().st_size < 3_000_000:  # ~12 passes through the file
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.02)
    rec.stop(signal.SIGKILL)
    size = out.stat().st_size
    records, problems = read_all(out)
    assert len(records) > 500
    assert all(p.kind == "truncated" for p in problems) and len(problems) <= 1
    readable_end = records[-1].offset + records[-1].size
    assert readable_end + sum(p.length for p in problems) == size
    for m in messages_of(records):
        decode(m)  # every complete record is a valid message


def raw_message(seq: int, fill: bytes) -> bytes:
    h = AudioHeader(stream="s", epoch=1, seq=seq, t_capture_ns=1, rate=16000, channels=1, format=SampleFormat.S16,
                    layout=Layout.INTERLEAVED, samples=4, offset=4 * seq)
    return encode_audio(Kind.RAW, h, fill * 8)


def test_sigterm_closes_the_file_cleanly_and_bad_messages_are_not_recorded(procs, tmp_path: Path, zctx) -> None:
    addr = tcp()
    out = tmp_path / "t.sbrec"
    pub = publisher(zctx, addr)
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, "--fsync-s", "0.5")
    rec.wait_for("ready")
    assert pub.wait_for_subscriber(10)
    good = raw_message(0, b"\0")
    pub.send(good)
    topic = topic_for(Kind.RAW, "s")
    bad_header = msgpack.packb({"v": 1, "k": "raw"})
    pub.send(topic + b"\0\2" + len(bad_header).to_bytes(2, "little") + bad_header + b"\0" * 8)  # fails validation
    pub.send(good[:-2])  # payload length does not match
    good2 = raw_message(1, b"\1")
    pub.send(good2)
    deadline = time.monotonic() + 10
    while len(read_all(out)[0]) < 2:
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.05)
    assert rec.stop(signal.SIGTERM) == 0
    pub.close()
    records, problems = read_all(out)
    assert messages_of(records) == [good, good2] and problems == []
    assert "recorded 2 messages" in rec.log() and "payload_length=1" in rec.log() and "bad_field=1" in rec.log()


def test_record_duration_and_rotation(procs, tmp_path: Path) -> None:
    addr = tcp()
    out = tmp_path / "rot.sbrec"
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, "--rotate-mb", "0.1", "--duration", "5")
    rec.wait_for("ready")
    rep = soundbus(procs, "replay", str(TWO_STREAMS), "--output", addr, "--fast")
    assert rep.wait(30) == 0
    assert rec.wait(30) == 0, rec.log()  # --duration ends it on its own
    paths = [segment_path(out, i) for i in range(3)]
    assert all(p.exists() for p in paths) and not segment_path(out, 3).exists() and not out.exists()
    assert messages_of(list(read_records(paths))) == messages_of(read_all(TWO_STREAMS)[0])


def info(procs, path: Path) -> dict:
    p = soundbus(procs, "info", str(path), "--json")
    assert p.wait(30) == 0, p.log()
    p.wait_for(r"^\}", stdout=True, timeout=5)
    return json.loads("\n".join(p.out_lines))


def test_info_reports_streams_formats_durations_and_the_gap(procs) -> None:
    d = info(procs, TWO_STREAMS)
    assert d["records"] == 124 and d["v1_records"] == 124 and d["problems"] == [] and d["truncated_bytes"] == 0
    s = {x["stream"]: x for x in d["streams"]}
    assert s["room48"]["formats"] == ["48000 Hz 2 ch s16 interleaved"] and s["room48"]["messages"] == 50
    assert s["room48"]["audio_s"] == 1.0 and s["room48"]["gaps"] == 0
    assert s["speech16"]["formats"] == ["16000 Hz 1 ch s16 interleaved"]
    assert (s["speech16"]["gaps"], s["speech16"]["missing"], s["speech16"]["messages"]) == (1, 1, 74)
    assert abs(s["speech16"]["msg_per_s"] - 50) < 1


def test_info_and_replay_on_damaged_files(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    data = bytearray(TWO_STREAMS.read_bytes())
    victim = original[40]
    data[victim.offset + 100] ^= 1
    damaged = tmp_path / "damaged.sbrec"
    damaged.write_bytes(bytes(data[:-50]))  # and cut the last record short
    d = info(procs, damaged)
    assert d["records"] == 122 and d["truncated_bytes"] == original[-1].size - 50
    assert [(p["kind"], p["offset"]) for p in d["problems"]] == [("corrupt", victim.offset),
                                                                  ("truncated", original[-1].offset)]
    replayed, rep = record_replay(procs, tmp_path, "--fast", src=damaged)
    assert messages_of(replayed) == [f for i, f in enumerate(messages_of(original)) if i not in (40, 123)]
    assert "corrupt at byte" in rep.log() and "truncated at byte" in rep.log()


@pytest.mark.parametrize(
    "args, words",
    [
        (("info", "/nonexistent.sbrec"), "does not exist"),
        (("replay", str(ROOT / "pyproject.toml")), "not a soundbus recording"),
        (("export", str(TWO_STREAMS), "--stream", "nope", "-o", "/tmp/x.wav"), "no raw or tensor messages"),
        (("replay", str(TWO_STREAMS), "--speed", "0"), "--speed: 0 is outside"),
        (("replay", str(TWO_STREAMS), "--speed", "nan"), "--speed: nan is outside"),
        (("record", "-o", "/tmp/never.sbrec", "--duration", "inf"), "--duration: inf is outside"),
        (("record", "-o", "/tmp/never.sbrec", "--rotate-mb", "nan"), "--rotate-mb: nan is outside"),
        (("record", "-o", "/tmp/never.sbrec", "--input", "tcp://127.0.0.1:99999"), "port 99999 is outside"),
        (("export", str(TWO_STREAMS), "--stream", "speech16", "-o", "/no/such/dir/x.wav"), "cannot create"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(procs, args, words) -> None:
    p = soundbus(procs, *args)
    assert p.wait(30) == 2
    p.wait_for(words, timeout=5)
    assert "Traceback" not in p.log()


def test_record_refuses_to_overwrite(procs, tmp_path: Path) -> None:
    out = tmp_path / "exists.sbrec"
    shutil.copy(TWO_STREAMS, out)
    p = soundbus(procs, "record", "-o", str(out), "--input", tcp())
    assert p.wait(30) == 2
    p.wait_for("already exists")
    assert out.read_bytes() == TWO_STREAMS.read_bytes()
    os.chmod(out, 0o644)


def test_tensors_results_and_heartbeats_record_and_replay_identically(procs, tmp_path: Path, zctx) -> None:
    addr = tcp()
    out = tmp_path / "kinds.sbrec"
    pub = publisher(zctx, addr)
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, "--kind", "tensor", "--kind", "result",
                   "--kind", "hb")
    rec.wait_for("ready")
    assert pub.wait_for_subscriber(10)
    sent = []
    for seq in range(3):
        t = AudioHeader(stream="m", epoch=2, seq=seq, t_capture_ns=seq, rate=16000, channels=1,
                        format=SampleFormat.F32, layout=Layout.PLANAR, samples=512, offset=512 * seq)
        r = Result(stream="m", model="vad", epoch=2, seq=seq, start_ns=seq, end_ns=seq + 32_000_000,
                   offset=512 * seq, rate=16000, seq_first=seq, seq_last=seq, labels=[Label("speech", 0.5 * seq)])
        hb = Heartbeat(stream="m", epoch=2, next_seq=seq, next_offset=0, t_ns=seq, rate=16000, channels=1,
                       format=SampleFormat.S16, state=HeartbeatState.RUNNING)
        raw = AudioHeader(stream="m", epoch=2, seq=seq, t_capture_ns=seq, rate=16000, channels=1,
                          format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=2, offset=2 * seq)
        for data, keep in ((encode_audio(Kind.TENSOR, t, np.full((1, 512), seq, np.float32)), True),
                           (encode(r), True), (encode(hb), True),
                           (encode_audio(Kind.RAW, raw, b"\0" * 4), False)):  # raw was not asked for
            pub.send(data)
            if keep:
                sent.append(data)
    deadline = time.monotonic() + 10
    while len(read_all(out)[0]) < len(sent):
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.05)
    assert rec.stop() == 0
    pub.close()
    assert messages_of(read_all(out)[0]) == sent
    d = info(procs, out)
    assert sorted((s["kind"], s["model"], s["messages"]) for s in d["streams"]) == [
        ("hb", "", 3), ("result", "vad", 3), ("tensor", "", 3)]
    results = next(s for s in d["streams"] if s["kind"] == "result")
    assert results["audio_s"] == pytest.approx(0.032 + 2e-9)  # the span the windows cover, not invented audio
    replayed, _ = record_replay(procs, tmp_path, "--fast", src=out)
    assert messages_of(replayed) == sent
