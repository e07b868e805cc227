"""The recording file format: round trip, damage handling (truncation anywhere, corruption), rotation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.recording.format import (
    FILE_MAGIC,
    FORMAT_VERSION,
    RECORD_MARKER,
    RecordingError,
    RecordingReader,
    RecordingWriter,
    RotatingWriter,
    encode_file_header,
    read_records,
    segment_path,
)
from tests.recording.conftest import frames_of, read_all

MSGS = [([b"raw/00/a/", b"header-%d" % i, bytes(range(i % 256)) * 3], 1_000 + 7 * i) for i in range(20)]


def write(path: Path, msgs=MSGS, meta=None) -> None:
    with RecordingWriter(path, meta or {"note": "test"}) as w:
        for frames, t in msgs:
            w.write(frames, t)


def test_round_trip_keeps_frames_times_and_meta(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    write(p, meta={"note": "hello", "n": 3})
    r = RecordingReader(p)
    recs = list(r)
    assert r.version == FORMAT_VERSION and r.meta == {"note": "hello", "n": 3}
    assert frames_of(recs) == [f for f, _ in MSGS]
    assert [x.t_recv_ns for x in recs] == [t for _, t in MSGS]
    assert r.problems == []
    assert recs[0].kind == "raw" and recs[0].stream == "a"
    assert p.read_bytes().startswith(FILE_MAGIC)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.integers(0, 2**64 - 1)),
                max_size=8))
def test_round_trip_any_frames(tmp_path_factory, msgs) -> None:
    p = tmp_path_factory.mktemp("h") / "x.sbrec"
    write(p, msgs)
    recs, problems = read_all(p)
    assert problems == []
    assert [(frames, r.t_recv_ns) for frames, r in zip(frames_of(recs), recs)] == [(f, t) for f, t in msgs]


def test_every_truncation_point_keeps_all_complete_records(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    write(p)
    data = p.read_bytes()
    recs, _ = read_all(p)
    ends = [r.offset + r.size for r in recs]
    header_end = recs[0].offset
    cut = tmp_path / "cut.sbrec"
    for n in range(header_end, len(data) + 1, 7):  # every 7th byte position through all records
        cut.write_bytes(data[:n])
        got, problems = read_all(cut)
        complete = sum(1 for e in ends if e <= n)
        assert frames_of(got) == [f for f, _ in MSGS[:complete]], n
        if n in ends or n == header_end:
            assert problems == []
        else:
            assert [(p.kind, p.offset, p.length) for p in problems] == [("truncated", ends[complete - 1]
                                                                           if complete else header_end,
                                                                           n - (ends[complete - 1]
                                                                                if complete else header_end))]


def test_corrupt_record_is_reported_with_offset_and_the_rest_reads(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    write(p)
    recs, _ = read_all(p)
    data = bytearray(p.read_bytes())
    victim = recs[5]
    data[victim.offset + victim.size - 2] ^= 0x40  # a payload byte: the checksum must catch it
    p.write_bytes(bytes(data))
    got, problems = read_all(p)
    assert frames_of(got) == [f for i, (f, _) in enumerate(MSGS) if i != 5]
    assert [(x.kind, x.offset, x.length) for x in problems] == [("corrupt", victim.offset, victim.size)]
    assert "checksum" in problems[0].detail


def test_corrupt_length_field_resynchronises_on_next_marker(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    write(p)
    recs, _ = read_all(p)
    data = bytearray(p.read_bytes())
    struct.pack_into("<I", data, recs[3].offset + 4, 10**9)  # length far past the end of the file
    p.write_bytes(bytes(data))
    got, problems = read_all(p)
    assert len(got) == len(MSGS) - 1
    assert [(x.kind, x.offset) for x in problems] == [("corrupt", recs[3].offset)]


def test_garbage_between_records_is_skipped(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    write(p)
    recs, _ = read_all(p)
    data = p.read_bytes()
    at = recs[10].offset
    p.write_bytes(data[:at] + RECORD_MARKER + b"junk" * 10 + data[at:])
    got, problems = read_all(p)
    assert frames_of(got) == [f for f, _ in MSGS]
    assert [(x.kind, x.offset, x.length) for x in problems] == [("corrupt", at, 44)]


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "too short"),
        (b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 40, "not a soundbus recording"),
        (FILE_MAGIC + struct.pack("<HHI", 99, 0, 0) + b"\0" * 8, "format 99"),
        (encode_file_header({"a": 1})[:-1] + b"\0", "checksum"),
        (encode_file_header({"a": 1})[:12], "too short"),
    ],
)
def test_unreadable_files_raise_a_clear_error(tmp_path: Path, content: bytes, words: str) -> None:
    p = tmp_path / "bad.sbrec"
    p.write_bytes(content)
    with pytest.raises(RecordingError, match=words):
        RecordingReader(p)


def test_missing_file_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="does not exist"):
        RecordingReader(tmp_path / "nope.sbrec")
    write(tmp_path / "a.sbrec")
    with pytest.raises(RecordingError, match="already exists"):
        RecordingWriter(tmp_path / "a.sbrec")


def test_header_only_file_is_an_empty_recording(tmp_path: Path) -> None:
    p = tmp_path / "a.sbrec"
    RecordingWriter(p).close()
    assert read_all(p) == ([], [])


def test_rotation_by_size_names_segments_and_keeps_whole_records(tmp_path: Path) -> None:
    base = tmp_path / "day.sbrec"
    w = RotatingWriter(base, rotate_bytes=400, meta={})
    for frames, t in MSGS:
        w.write(frames, t)
    w.close()
    assert w.paths == [segment_path(base, i) for i in range(len(w.paths))] and len(w.paths) > 3
    assert w.paths[1].name == "day.0001.sbrec"
    for path in w.paths:
        recs, problems = read_all(path)
        assert problems == [] and recs
        assert path.stat().st_size <= 400 or len(recs) == 1
        assert RecordingReader(path).meta["segment"] == w.paths.index(path)
    assert [[bytes(f) for f in r.frames] for r in read_records(w.paths)] == [f for f, _ in MSGS]


def test_rotation_by_duration_uses_receive_times(tmp_path: Path) -> None:
    base = tmp_path / "day"
    w = RotatingWriter(base, rotate_s=1.0, meta={})
    for i in range(10):
        w.write([b"x"], i * 300_000_000)  # every 0.3 s
    w.close()
    counts = [len(read_all(p)[0]) for p in w.paths]
    assert counts == [4, 4, 2]  # 0-0.9 s, 1.2-2.1 s, 2.4-2.7 s
    assert [p.name for p in w.paths] == ["day.0000", "day.0001", "day.0002"]


def test_rotation_refuses_existing_segments_up_front(tmp_path: Path) -> None:
    base = tmp_path / "day.sbrec"
    segment_path(base, 3).write_bytes(b"older recording")
    with pytest.raises(RecordingError, match=r"day\.0003\.sbrec already exists"):
        RotatingWriter(base, rotate_s=60)
    assert not segment_path(base, 0).exists()
    RotatingWriter(base, rotate_s=60, overwrite=True).close()
