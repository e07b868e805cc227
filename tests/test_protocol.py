"""Protocol v2: every Struct and field round-trips; every malformed case is refused with its reason;
docs/protocol.md states exactly the Structs; garbage only ever raises ProtocolError."""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire import (
    Audio,
    AudioHeader,
    Event,
    Heartbeat,
    HeartbeatState,
    Hop,
    Kind,
    Label,
    Layout,
    Level,
    ProtocolError,
    Result,
    SampleFormat,
    StoredEvent,
    bucket_of,
    decode,
    decode_parts,
    encode,
    encode_audio,
    shard_prefixes,
    topic_for,
)
from common.wire import messages as m
from common.wire.codec import MAX_HEADER_BYTES, MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[1]
I64 = 2**63 - 1

names = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,63}\Z")
texts = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=40)
labels_text = texts.filter(lambda s: 0 < len(s) and m.is_text(s))
times = st.integers(0, I64)
scores = st.floats(0.0, 1.0, allow_nan=False)
hops = st.builds(Hop, names.map(lambda s: s[:32]), times, times)
traces = st.lists(hops, max_size=m.MAX_TRACE_HOPS)


@st.composite
def audio(draw) -> tuple[Kind, AudioHeader, bytes]:
    kind = draw(st.sampled_from([Kind.RAW, Kind.TENSOR]))
    fmt = SampleFormat.F32 if kind is Kind.TENSOR else draw(st.sampled_from(list(SampleFormat)))
    layout = Layout.PLANAR if kind is Kind.TENSOR else draw(st.sampled_from(list(Layout)))
    # within what decode accepts: offset + samples + lost and the chunk's end stay inside int64
    samples = draw(st.integers(1, 300))
    offset = draw(st.integers(0, I64 - samples))
    h = AudioHeader(
        stream=draw(names), epoch=draw(times), seq=draw(times),
        t_capture_ns=draw(st.integers(0, I64 - 2 * m.MAX_CHUNK_S * 1_000_000_000)),
        rate=draw(st.integers(300, m.MAX_RATE_HZ)), channels=draw(st.integers(1, 8)), format=fmt, layout=layout,
        samples=samples, offset=offset, flags=draw(st.integers(0, 7)), lost=draw(st.integers(0, I64 - offset - samples)),
        source=draw(texts.filter(m.is_text)), trace=draw(traces),
    )
    payload = draw(st.binary(min_size=h.payload_bytes, max_size=h.payload_bytes))
    return kind, h, payload


events = st.builds(Event, labels_text, st.sampled_from(["start", "stop"]), times, scores, times)
results = st.builds(
    Result, stream=names, model=names, epoch=times, seq=times, start_ns=st.just(5), end_ns=st.integers(5, I64),
    offset=times, rate=st.integers(1, m.MAX_RATE_HZ), seq_first=times, seq_last=times,
    labels=st.lists(st.builds(Label, labels_text, scores), max_size=8), events=st.lists(events, max_size=4),
    flags=st.integers(0, 7), lost_ns=times,
    level=st.none() | st.builds(Level, st.floats(-200, 20), st.floats(-200, 20), st.integers(0, 10**6)),
    final=st.booleans(), trace=traces,
)
heartbeats = st.builds(Heartbeat, stream=names, epoch=times, next_seq=times, next_offset=times, t_ns=times,
                       rate=st.integers(1, m.MAX_RATE_HZ), channels=st.integers(1, 64),
                       format=st.sampled_from(list(SampleFormat)), state=st.sampled_from(list(HeartbeatState)),
                       source=texts.filter(m.is_text))
stored = st.builds(StoredEvent, stream=names, model=names, label=labels_text, id=st.integers(1, I64),
                   start_ns=times, end_ns=times, peak=scores, mean=scores,
                   clip=st.from_regex(r"\A[a-z0-9_]{1,20}/[a-z0-9_]{1,20}\.flac\Z"))


@settings(max_examples=300, deadline=None)
@given(a=audio())
def test_every_audio_field_round_trips(a) -> None:
    kind, h, payload = a
    msg = decode(encode_audio(kind, h, payload))
    assert isinstance(msg, Audio) and msg.kind is kind
    assert msg.header == h  # Struct equality covers every field, trace included
    assert bytes(msg.payload) == payload


@settings(max_examples=300, deadline=None)
@given(msg=st.one_of(results, heartbeats, stored))
def test_every_result_heartbeat_and_stored_event_field_round_trips(msg) -> None:
    assert decode(encode(msg)) == msg


def test_every_field_is_exercised_by_the_round_trips() -> None:
    """A field added to a Struct but forgotten by the strategies above would not be round-tripped:
    the strategies name every field of every Struct (checked here, so adding a field fails a test)."""
    assert set(AudioHeader.__struct_fields__) == {
        "stream", "epoch", "seq", "t_capture_ns", "rate", "channels", "format", "layout", "samples", "offset",
        "flags", "lost", "source", "trace"}
    for struct, strategy in ((Result, results), (Heartbeat, heartbeats), (StoredEvent, stored)):
        drawn = repr(strategy)  # builds(Result, stream=..., ...): the keywords it draws
        missing = [f for f in struct.__struct_fields__ if f"{f}=" not in drawn]
        assert not missing, f"{struct.__name__} fields not drawn by the round-trip strategy: {missing}"


def test_samples_view_shapes() -> None:
    x = np.arange(12, dtype=np.int16).reshape(6, 2)  # (samples, channels)
    h = AudioHeader(stream="m", epoch=1, seq=0, t_capture_ns=0, rate=16000, channels=2, format=SampleFormat.S16,
                    layout=Layout.INTERLEAVED, samples=6, offset=0)
    got = decode(encode_audio(Kind.RAW, h, x)).samples()
    assert got.shape == (6, 2) and np.array_equal(got, x)
    p = np.arange(12, dtype=np.float32).reshape(2, 6)  # (channels, samples)
    h = msgspec.structs.replace(h, format=SampleFormat.F32, layout=Layout.PLANAR)
    got = decode(encode_audio(Kind.TENSOR, h, p)).samples()
    assert got.shape == (2, 6) and np.array_equal(got, p)


def test_one_part_layout_topic_first_then_lengths() -> None:
    r = Result(stream="mic", model="vad", epoch=1, seq=7, start_ns=1, end_ns=2, offset=0, rate=16000, seq_first=0,
               seq_last=0, labels=[Label("speech", 0.9)])
    data = encode(r)
    topic = b"result/%02x/mic/vad/" % bucket_of("mic")
    assert data.startswith(topic + b"\0\2")
    hlen = int.from_bytes(data[len(topic) + 2 : len(topic) + 4], "little")
    assert len(data) == len(topic) + 4 + hlen  # no payload
    assert msgspec.msgpack.decode(data[len(topic) + 4 :])[0] == "mic"  # an array: no keys on the wire


# -- malformed ---------------------------------------------------------------------------


def _header(**changes) -> list:
    h = ["mic1", 1, 0, 0, 48000, 2, "s16", "interleaved", 4, 0, 0, 0, "", []]
    for k, v in changes.items():
        h[list(AudioHeader.__struct_fields__).index(k)] = v
    return h


def _msg(header: list | bytes, payload: bytes = b"\0" * 16, topic: bytes | None = None, version: int = 2) -> bytes:
    body = header if isinstance(header, bytes) else msgpack.packb(header)
    t = topic_for(Kind.RAW, "mic1") if topic is None else topic
    return t + b"\0" + bytes([version]) + len(body).to_bytes(2, "little") + body + payload


MALFORMED = {
    "too_large": lambda: _msg(_header(), b"\0" * (MAX_MESSAGE_BYTES + 1)),
    "bad_framing": lambda: b"raw/00/mic1/" + b"x" * 200,  # no NUL after the topic
    "bad_framing ": lambda: topic_for(Kind.RAW, "mic1") + b"\0\2\x05",  # ends inside the preamble
    "bad_framing  ": lambda: topic_for(Kind.RAW, "mic1") + b"\0\2\xff\x00abc",  # header runs past the end
    "bad_version": lambda: _msg(_header(), version=1),
    "bad_version ": lambda: _msg(_header(), version=3),
    "bad_kind": lambda: _msg(_header(), topic=b"video/00/mic1/"),
    "header_too_large": lambda: _msg(b"\x90" * (MAX_HEADER_BYTES[Kind.RAW] + 1)),
    "bad_msgpack": lambda: _msg(b"\xc1\xff\x00garbage"),
    "bad_msgpack ": lambda: _msg(msgpack.packb(_header())[:-3]),  # truncated header
    "bad_field": lambda: _msg(msgpack.packb({"s": "mic1"})),  # a map: v1-style keys
    "bad_field ": lambda: _msg(_header(seq="12")),
    "bad_field  ": lambda: _msg(_header(seq=-1)),
    "bad_field   ": lambda: _msg(_header(epoch=True)),
    "bad_field    ": lambda: _msg(_header(trace=[["x", 1]])),
    "bad_field     ": lambda: _msg(_header(samples=1.5)),
    "bad_field      ": lambda: _msg(_header(format="s12")),
    "bad_field       ": lambda: _msg(_header(layout="diagonal")),
    "bad_field        ": lambda: _msg(_header(rate=0)),
    "bad_field         ": lambda: _msg(_header(rate=10_000_000)),
    "bad_field          ": lambda: _msg(_header(channels=0)),
    "bad_field           ": lambda: _msg(_header(samples=0), b""),
    "bad_field            ": lambda: _msg(_header(source="a\x1b[31mred")),
    "bad_field             ": lambda: _msg(_header(trace=[["convert\n", 1, 2]])),
    "bad_field              ": lambda: _msg(_header() + ["extra"]),
    "bad_topic": lambda: _msg(_header(), topic=b"raw/00/other/"),
    "bad_topic ": lambda: _msg(_header(stream="mic/1"), topic=topic_for(Kind.RAW, "mic/1")),
    "bad_topic  ": lambda: _msg(_header(stream="-mic"), topic=topic_for(Kind.RAW, "-mic")),
    "payload_length": lambda: _msg(_header(), b"\0" * 15),
    "payload_length ": lambda: _msg(_header(), b"\0" * 17),
    "chunk_too_long": lambda: _msg(_header(rate=1000, samples=10_001, channels=1), b"\0" * 20_002),
    "bad_tensor_format": lambda: _msg(_header(), topic=topic_for(Kind.TENSOR, "mic1")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_is_rejected_with_reason(case: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode(MALFORMED[case]())
    assert err.value.reason == case.strip()


def test_results_are_checked_like_audio() -> None:
    ok = ["mic", "vad", 1, 0, 10, 20, 0, 16000, 0, 0, [["speech", 0.5]]]

    def result(body: list, topic: bytes = topic_for(Kind.RESULT, "mic", "vad")) -> bytes:
        h = msgpack.packb(body)
        return topic + b"\0\2" + len(h).to_bytes(2, "little") + h

    assert isinstance(decode(result(ok)), Result)
    cases = {
        "bad_field": ok[:4] + [20, 10] + ok[6:],  # ends before it starts
        "bad_topic": ok,  # topic of another model
    }
    with pytest.raises(ProtocolError, match="ends"):
        decode(result(cases["bad_field"]))
    with pytest.raises(ProtocolError) as e:
        decode(result(ok, topic_for(Kind.RESULT, "mic", "yamnet")))
    assert e.value.reason == "bad_topic"
    with pytest.raises(ProtocolError) as e:
        decode(result(ok) + b"payload")
    assert e.value.reason == "payload_length"


def test_parts_count_and_v1_peers_are_named() -> None:
    good = _msg(_header())
    assert isinstance(decode_parts([good]), Audio)
    with pytest.raises(ProtocolError) as e:
        decode_parts([good, b"more"])
    assert e.value.reason == "bad_part_count"
    v1 = [b"raw/33/mic1/", msgpack.packb({"v": 1, "k": "raw", "s": "mic1"}), b"\0" * 4]
    with pytest.raises(ProtocolError, match="protocol v1") as e:
        decode_parts(v1)
    assert e.value.reason == "v1_message"


@settings(max_examples=3000, deadline=None)
@given(data=st.binary(max_size=300))
def test_garbage_only_ever_raises_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=3000, deadline=None)
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_a_mutated_message_only_ever_raises_protocol_error(pos: int, byte: int) -> None:
    data = bytearray(_msg(_header()))
    data[pos % len(data)] = byte
    try:
        decode(bytes(data))
    except ProtocolError:
        pass


def test_topics_filter_by_kind_bucket_and_exact_stream() -> None:
    assert topic_for(Kind.RAW, "mic1").startswith(topic_for(Kind.RAW))
    assert not topic_for(Kind.RAW, "mic10").startswith(topic_for(Kind.RAW, "mic1"))
    streams = [f"s{i}" for i in range(500)]
    for count in (1, 2, 3, 7):
        owners = [
            [i for i in range(count)
             if any(topic_for(Kind.RAW, s).startswith(p) for p in shard_prefixes(Kind.RAW, i, count))]
            for s in streams
        ]
        assert all(len(o) == 1 for o in owners), "every stream belongs to exactly one shard"
    with pytest.raises(ValueError):
        shard_prefixes(Kind.RAW, 2, 2)


# -- the document -----------------------------------------------------------------------


def _doc_tables() -> dict[str, list[str]]:
    """Field names per Struct, as docs/protocol.md lists them (a '### Name' heading, then a table)."""
    text = (ROOT / "docs" / "protocol.md").read_text()
    out: dict[str, list[str]] = {}
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        section = re.split(r"^## ", section, flags=re.M)[0]  # up to the next top-level heading
        name = section.split("\n", 1)[0].strip().split()[0].strip("`")
        rows = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)
        if rows:
            out[name] = rows
    return out


@pytest.mark.parametrize("struct", [AudioHeader, Heartbeat, Result, Event, Label, Level, Hop, StoredEvent])
def test_docs_state_every_struct_field_in_order(struct) -> None:
    tables = _doc_tables()
    assert struct.__name__ in tables, f"docs/protocol.md has no '### {struct.__name__}' table"
    assert tables[struct.__name__] == list(struct.__struct_fields__)
