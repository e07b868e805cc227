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

from common.protocol import Header, Kind, decode, encode, encode_result
from common.publisher import Publisher
from common.recording import read_records, segment_path
from tests.conftest import ROOT, tcp
from tests.recording.conftest import TWO_STREAMS, frames_of, read_all, soundbus


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


def test_replayed_frames_are_byte_identical(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    replayed, _ = record_replay(procs, tmp_path, "--fast")
    assert frames_of(replayed) == frames_of(original)


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
    for a, b in zip(original, replayed):
        ha, hb = decode(a.frames).header, decode(b.frames).header
        assert hb.epoch != ha.epoch
        assert epochs.setdefault(hb.stream, hb.epoch) == hb.epoch  # one new epoch per stream
        ha.epoch = hb.epoch
        assert ha == hb and bytes(a.frames[2]) == bytes(b.frames[2]) and bytes(a.frames[0]) == bytes(b.frames[0])
    assert len(set(epochs.values())) == 2


def test_stream_selection_on_replay_and_record(procs, tmp_path: Path) -> None:
    original, _ = read_all(TWO_STREAMS)
    only16 = [f for f, r in zip(frames_of(original), original) if r.stream == "speech16"]
    by_replay, _ = record_replay(procs, tmp_path, "--fast", "--stream", "speech16")
    by_record, _ = record_replay(procs, tmp_path, "--fast", record_args=("--stream", "speech16"), count=74)
    assert frames_of(by_replay) == only16 and frames_of(by_record) == only16


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
    headers = [decode(r.frames).header for r in read_all(out)[0]]
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
    for r in records:
        decode(r.frames)  # every complete record is a valid message


def test_sigterm_closes_the_file_cleanly_and_bad_messages_are_not_recorded(procs, tmp_path: Path, zctx) -> None:
    addr = tcp()
    out = tmp_path / "t.sbrec"
    pub = Publisher(zctx, [addr])
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr)
    rec.wait_for("ready")
    assert pub.wait_for_subscriber(10)
    h = Header(Kind.RAW, "s", epoch=1, seq=0, t_capture_ns=1, rate=16000, channels=1, frames=4)
    good = [bytes(f) for f in encode(h, b"\0" * 8)]
    pub.send(good)
    pub.send([good[0], msgpack.packb({"v": 1, "k": "raw"}), good[2]])  # header fails validation
    pub.send([good[0], good[1], b"\0" * 6])  # payload length does not match
    h.seq = 1
    good2 = [bytes(f) for f in encode(h, b"\1" * 8)]
    pub.send(good2)
    deadline = time.monotonic() + 10
    while len(read_all(out)[0]) < 2:
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.05)
    assert rec.stop(signal.SIGTERM) == 0
    pub.close()
    records, problems = read_all(out)
    assert frames_of(records) == [good, good2] and problems == []
    assert "recorded 2 messages" in rec.log() and "payload_length=1" in rec.log()


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
    assert frames_of(list(read_records(paths))) == frames_of(read_all(TWO_STREAMS)[0])


def info(procs, path: Path) -> dict:
    p = soundbus(procs, "info", str(path), "--json")
    assert p.wait(30) == 0, p.log()
    p.wait_for(r"^\}", stdout=True, timeout=5)
    return json.loads("\n".join(p.out_lines))


def test_info_reports_streams_formats_durations_and_the_gap(procs) -> None:
    d = info(procs, TWO_STREAMS)
    assert d["records"] == 124 and d["problems"] == [] and d["truncated_bytes"] == 0
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
    assert frames_of(replayed) == [f for i, f in enumerate(frames_of(original)) if i not in (40, 123)]
    assert "corrupt at byte" in rep.log() and "truncated at byte" in rep.log()


@pytest.mark.parametrize(
    "args, words",
    [
        (("info", "/nonexistent.sbrec"), "does not exist"),
        (("replay", str(ROOT / "pyproject.toml")), "not a soundbus recording"),
        (("export", str(TWO_STREAMS), "--stream", "nope", "-o", "/tmp/x.wav"), "no raw or tensor messages"),
        (("replay", str(TWO_STREAMS), "--speed", "0"), "--speed must be positive"),
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


def test_record_file_name_takes_strftime_codes_so_a_restart_makes_a_new_file(procs, tmp_path: Path) -> None:
    pattern = str(tmp_path / "rec-%Y%m%dT%H%M%SZ-100%%.sbrec")
    before = time.strftime("%Y%m%d", time.gmtime())
    first = soundbus(procs, "record", "-o", pattern, "--input", tcp(), "--duration", "0.3")
    assert first.wait(30) == 0, first.log()
    time.sleep(1.1)  # the next second: a second start must not meet the first file
    second = soundbus(procs, "record", "-o", pattern, "--input", tcp(), "--duration", "0.3")
    assert second.wait(30) == 0, second.log()
    names = sorted(p.name for p in tmp_path.glob("rec-*.sbrec"))
    assert len(names) == 2 and all(n.endswith("Z-100%.sbrec") for n in names), names
    assert names[0][4:12] in (before, time.strftime("%Y%m%d", time.gmtime()))


def test_tensors_results_and_heartbeats_record_and_replay_identically(procs, tmp_path: Path, zctx) -> None:
    addr = tcp()
    out = tmp_path / "kinds.sbrec"
    pub = Publisher(zctx, [addr])
    rec = soundbus(procs, "record", "-o", str(out), "--input", addr, "--kind", "tensor", "--kind", "result",
                   "--kind", "hb")
    rec.wait_for("ready")
    assert pub.wait_for_subscriber(10)
    sent = []
    for seq in range(3):
        t = Header(Kind.TENSOR, "m", epoch=2, seq=seq, t_capture_ns=seq, rate=16000, channels=1, format="f32",
                   layout="planar", frames=512, offset=512 * seq)
        r = Header(Kind.RESULT, "m", epoch=2, seq=seq, t_capture_ns=seq, rate=16000, model="vad")
        hb = Header(Kind.HEARTBEAT, "m", epoch=2, seq=seq, t_capture_ns=seq)
        raw = Header(Kind.RAW, "m", epoch=2, seq=seq, t_capture_ns=seq, rate=16000, channels=1, frames=2)
        for frames, keep in ((encode(t, np.full((1, 512), seq, np.float32)), True),
                             (encode_result(r, {"speech": 0.5 * seq}), True), (encode(hb), True),
                             (encode(raw, b"\0" * 4), False)):  # raw was not asked for
            frames = [bytes(f) for f in frames]
            pub.send(frames)
            if keep:
                sent.append(frames)
    deadline = time.monotonic() + 10
    while len(read_all(out)[0]) < len(sent):
        assert time.monotonic() < deadline, rec.log()
        time.sleep(0.05)
    assert rec.stop() == 0
    pub.close()
    assert frames_of(read_all(out)[0]) == sent
    d = info(procs, out)
    assert sorted((s["kind"], s["model"], s["messages"]) for s in d["streams"]) == [
        ("hb", "", 3), ("result", "vad", 3), ("tensor", "", 3)]
    replayed, _ = record_replay(procs, tmp_path, "--fast", src=out)
    assert frames_of(replayed) == sent
