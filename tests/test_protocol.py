"""Protocol v1: every field round-trips; every malformed message is rejected with its reason."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    SAMPLE_FORMATS,
    Flag,
    Header,
    Hop,
    Kind,
    ProtocolError,
    bucket_of,
    decode,
    encode,
    encode_header,
    encode_result,
    shard_prefixes,
    topic_for,
)

stream_ids = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="/"), min_size=1, max_size=64
).filter(str.isprintable)


@st.composite
def headers(draw) -> Header:
    kind = draw(st.sampled_from([Kind.RAW, Kind.TENSOR]))
    fmt = draw(st.sampled_from(sorted(SAMPLE_FORMATS)))
    channels = draw(st.integers(1, 8))
    frames = draw(st.integers(1, 300))
    return Header(
        kind=kind,
        stream=draw(stream_ids),
        epoch=draw(st.integers(0, 2**64 - 1)),
        seq=draw(st.integers(0, 2**64 - 1)),
        t_capture_ns=draw(st.integers(0, 2**63 - 1)),
        rate=draw(st.integers(1, 768_000)),
        channels=channels,
        format=fmt,
        layout=draw(st.sampled_from(["interleaved", "planar"])),
        frames=frames,
        offset=draw(st.integers(0, 2**64 - 1)),
        flags=Flag(draw(st.integers(0, 7))),
        source=draw(st.text(max_size=40)),
        trace=[Hop(draw(st.text(max_size=10)), draw(st.integers(0, 2**62)), draw(st.integers(0, 2**62)))
               for _ in range(draw(st.integers(0, 4)))],
    )


@settings(max_examples=300, deadline=None)
@given(h=headers(), data=st.data())
def test_every_field_round_trips(h: Header, data) -> None:
    payload = data.draw(st.binary(min_size=h.payload_bytes, max_size=h.payload_bytes))
    msg = decode(encode(h, payload))
    assert msg.header == h  # dataclass equality covers every field, trace included
    assert bytes(msg.payload) == payload


def test_field_list_is_covered_by_round_trip() -> None:
    """If a field is added to Header but not encoded, the round trip above must notice: prove it does."""
    names = {f.name for f in dataclasses.fields(Header)}
    h = Header(Kind.RAW, "s", 1, 2, 3, 48000, 2, "s16", "planar", 4, 5, Flag.END, "src", "", [Hop("x", 1, 2)])
    decoded = decode(encode(h, b"\0" * h.payload_bytes)).header
    for name in names:
        assert getattr(decoded, name) == getattr(h, name), name


def test_samples_view_shapes() -> None:
    x = np.arange(12, dtype=np.int16).reshape(6, 2)  # (frames, channels)
    h = Header(Kind.RAW, "m", 1, 0, 0, 16000, 2, "s16", "interleaved", 6)
    got = decode(encode(h, x)).samples()
    assert got.shape == (6, 2) and np.array_equal(got, x)
    p = np.arange(12, dtype=np.float32).reshape(2, 6)  # (channels, frames)
    h = Header(Kind.TENSOR, "m", 1, 0, 0, 16000, 2, "f32", "planar", 6)
    got = decode(encode(h, p)).samples()
    assert got.shape == (2, 6) and np.array_equal(got, p)


def test_result_body_round_trip() -> None:
    h = Header(Kind.RESULT, "mic", 1, 7, 10, 16000, 1, "f32", "planar", 512, model="vad")
    body = {"model": "vad", "labels": [["speech", 0.9]], "events": [], "start_ns": 1, "end_ns": 2}
    msg = decode(encode_result(h, body))
    assert msg.result() == body
    assert msg.header.topic() == b"result/%02x/mic/vad/" % bucket_of("mic")


def _valid() -> tuple[Header, list[bytes]]:
    h = Header(Kind.RAW, "mic1", 1, 0, 0, 48000, 2, "s16", "interleaved", 4)
    return h, [bytes(f) for f in encode(h, b"\0" * 16)]


def _with_header(**changes) -> list[bytes]:
    h, frames = _valid()
    d = msgpack.unpackb(frames[1])
    d.update(changes)
    return [frames[0], msgpack.packb(d), frames[2]]


MALFORMED = {
    "bad_frame_count": lambda: _valid()[1][:2],
    "bad_frame_count ": lambda: _valid()[1] + [b"x"],
    "header_too_large": lambda: [_valid()[1][0], b"\x90" * (MAX_HEADER_BYTES + 1), b""],
    "bad_msgpack": lambda: [_valid()[1][0], b"\xc1\xff\x00garbage", _valid()[1][2]],
    "bad_msgpack ": lambda: [_valid()[1][0], _valid()[1][1][:-3], _valid()[1][2]],  # truncated header
    "bad_header": lambda: [_valid()[1][0], msgpack.packb([1, 2, 3]), b""],
    "bad_version": lambda: _with_header(v=2),
    "bad_version ": lambda: _with_header(v="1"),
    "bad_kind": lambda: _with_header(k="video"),
    "bad_field": lambda: _with_header(n="12"),
    "bad_field ": lambda: _with_header(n=-1),
    "bad_field  ": lambda: _with_header(e=True),
    "bad_field   ": lambda: _with_header(tr=[["x", 1]]),
    "bad_field    ": lambda: _with_header(fr=1.5),
    "bad_stream": lambda: _with_header(s=""),
    "bad_format": lambda: _with_header(f="s12"),
    "bad_layout": lambda: _with_header(l="diagonal"),
    "bad_rate": lambda: _with_header(r=0),
    "bad_field     ": lambda: _with_header(r=10_000_000),
    "bad_channels": lambda: _with_header(c=0),
    "bad_topic": lambda: [b"raw/00/other/"] + _valid()[1][1:],
    "payload_length": lambda: _valid()[1][:2] + [b"\0" * 15],
    "payload_length ": lambda: _valid()[1][:2] + [b"\0" * 17],
    "empty_frame": lambda: [_with_header(fr=0)[0], _with_header(fr=0)[1], b""],
    "payload_too_large": lambda: _valid()[1][:2] + [b"\0" * (MAX_PAYLOAD_BYTES + 1)],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_is_rejected_with_reason(case: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(MALFORMED[case]())
    assert err.value.reason == case.strip()


@settings(max_examples=2000, deadline=None)
@given(frames=st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_garbage_only_ever_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=2000, deadline=None)
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_mutated_header_only_ever_raises_protocol_error(pos: int, byte: int) -> None:
    _, frames = _valid()
    hdr = bytearray(frames[1])
    hdr[pos % len(hdr)] = byte
    try:
        decode([frames[0], bytes(hdr), frames[2]])
    except ProtocolError:
        pass


def test_topics_filter_by_kind_bucket_and_exact_stream() -> None:
    assert topic_for(Kind.RAW, "mic1").startswith(topic_for(Kind.RAW))
    assert not topic_for(Kind.RAW, "mic10").startswith(topic_for(Kind.RAW, "mic1"))
    streams = [f"s{i}" for i in range(500)]
    for count in (1, 2, 3, 7):
        owners = [
            [i for i in range(count) if any(topic_for(Kind.RAW, s).startswith(p) for p in shard_prefixes(Kind.RAW, i, count))]
            for s in streams
        ]
        assert all(len(o) == 1 for o in owners), "every stream belongs to exactly one shard"
    with pytest.raises(ValueError):
        shard_prefixes(Kind.RAW, 2, 2)
