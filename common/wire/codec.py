"""Protocol v2 on the wire: one ZeroMQ message part per message.

    topic | 0x00 | version (u8, = 2) | header length (u16 little-endian) | header | payload

- ``topic``: ASCII, ``<kind>/<bucket>/<stream>/[<model>/]`` (common.wire.topics), first so
  that ZeroMQ's prefix filtering at the publisher works; at most MAX_TOPIC_BYTES, no NUL.
- ``header``: the kind's Struct (common.wire.messages) as a msgpack array, at most
  ``MAX_HEADER_BYTES[kind]`` bytes.
- ``payload``: the rest: PCM for ``raw``/``tensor``, empty for every other kind.

Every length is checked before it is used, so the split is unambiguous and bounded.
:func:`decode` raises only :class:`ProtocolError`, whose ``reason`` is a stable key that
stages count. Nothing is pickled. Decoding is zero-copy: an audio payload is a
memoryview into the received bytes.
"""

from __future__ import annotations

import re
from typing import Any, Union

import msgspec
import numpy as np

from common.wire.messages import (
    I64_MAX,
    MAX_CHUNK_S,
    MAX_PAYLOAD_BYTES,
    SAMPLE_WIDTH,
    AudioHeader,
    Heartbeat,
    Layout,
    Result,
    SampleFormat,
    StoredEvent,
    is_name,
    is_text,
)
from common.wire.topics import Kind, topic_for

VERSION = 2
MAX_TOPIC_BYTES = 160  # kind + bucket + 64-char stream + 64-char model + slashes
MAX_HEADER_BYTES = {
    Kind.RAW: 4096,
    Kind.TENSOR: 4096,
    Kind.HEARTBEAT: 1024,
    Kind.RESULT: 65535,
    Kind.EVENT: 1024,
}
_PREAMBLE = 4  # NUL, version, u16 header length
MAX_MESSAGE_BYTES = MAX_TOPIC_BYTES + _PREAMBLE + 65535 + MAX_PAYLOAD_BYTES  # also every socket's MAXMSGSIZE


class ProtocolError(ValueError):
    """A message that does not follow protocol v2. ``reason``: a short stable key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Audio:
    """A validated ``raw`` or ``tensor`` message: its header and a zero-copy view of its samples."""

    __slots__ = ("kind", "header", "payload")

    def __init__(self, kind: Kind, header: AudioHeader, payload: memoryview | bytes) -> None:
        self.kind = kind
        self.header = header
        self.payload = payload

    @property
    def stream(self) -> str:
        return self.header.stream

    def samples(self) -> np.ndarray:
        """The payload as an array, no copy: shape (samples, channels) interleaved or
        (channels, samples) planar; s24 comes back as (..., 3) uint8 (see convert.formats)."""
        h = self.header
        if h.format is SampleFormat.S24:
            flat = np.frombuffer(self.payload, dtype=np.uint8).reshape(-1, 3)
        else:
            flat = np.frombuffer(self.payload, dtype=_DTYPES[h.format])
        if h.layout is Layout.INTERLEAVED:
            return flat.reshape(h.samples, h.channels, *flat.shape[1:])
        return flat.reshape(h.channels, h.samples, *flat.shape[1:])


Message = Union[Audio, Heartbeat, Result, StoredEvent]

_DTYPES = {
    SampleFormat.S8: np.dtype("i1"), SampleFormat.U8: np.dtype("u1"), SampleFormat.S16: np.dtype("<i2"),
    SampleFormat.S32: np.dtype("<i4"), SampleFormat.F32: np.dtype("<f4"), SampleFormat.F64: np.dtype("<f8"),
}
_STRUCTS: dict[Kind, type] = {
    Kind.RAW: AudioHeader,
    Kind.TENSOR: AudioHeader,
    Kind.HEARTBEAT: Heartbeat,
    Kind.RESULT: Result,
    Kind.EVENT: StoredEvent,
}
_DECODERS = {kind: msgspec.msgpack.Decoder(t) for kind, t in _STRUCTS.items()}
_ENCODER = msgspec.msgpack.Encoder()
_VERSION_BYTE = bytes([VERSION])
_FIELD_AT = re.compile(r"`\$\[(\d+)\]")
_KIND_BY_NAME = {k.value.encode(): k for k in Kind}


# ---------------------------------------------------------------------------------------
# encoding


def _join(topic: bytes, header: bytes, payload: bytes | memoryview, kind: Kind) -> bytes:
    n = len(header)
    if n > MAX_HEADER_BYTES[kind]:
        raise ValueError(f"{kind.value} header of {n} bytes exceeds {MAX_HEADER_BYTES[kind]}")
    return b"".join((topic, b"\x00", _VERSION_BYTE, n.to_bytes(2, "little"), header, payload))


def encode_audio(kind: Kind, header: AudioHeader, payload: bytes | memoryview | np.ndarray) -> bytes:
    """One ``raw`` or ``tensor`` message. ``payload`` must be exactly ``header.payload_bytes`` long."""
    if isinstance(payload, np.ndarray):
        payload = memoryview(np.ascontiguousarray(payload)).cast("B")
    if len(payload) != header.payload_bytes:  # a sender bug: never put it on the wire
        raise ValueError(f"payload is {len(payload)} bytes, header announces {header.payload_bytes}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return _join(topic_for(kind, header.stream), _ENCODER.encode(header), payload, kind)


def encode(msg: Heartbeat | Result | StoredEvent) -> bytes:
    """One ``hb``, ``result`` or ``event`` message."""
    if isinstance(msg, Result):
        kind, topic = Kind.RESULT, topic_for(Kind.RESULT, msg.stream, msg.model)
    elif isinstance(msg, StoredEvent):
        kind, topic = Kind.EVENT, topic_for(Kind.EVENT, msg.stream, msg.model)
    elif isinstance(msg, Heartbeat):
        kind, topic = Kind.HEARTBEAT, topic_for(Kind.HEARTBEAT, msg.stream)
    else:
        raise TypeError(f"cannot encode {type(msg).__name__}")
    return _join(topic, _ENCODER.encode(msg), b"", kind)


# ---------------------------------------------------------------------------------------
# decoding


def decode(data: bytes | memoryview) -> Message:
    """Validate one received message part. Raises ProtocolError (never anything else)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    n = len(view)
    if n > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{n} bytes > {MAX_MESSAGE_BYTES}")
    head = bytes(view[: MAX_TOPIC_BYTES + 1])
    nul = head.find(0)
    if nul < 0:
        raise ProtocolError("bad_framing", "no topic terminator in the first "
                                           f"{MAX_TOPIC_BYTES + 1} bytes: not a protocol v2 message")
    if n < nul + _PREAMBLE:
        raise ProtocolError("bad_framing", f"message ends inside its preamble ({n} bytes)")
    topic = head[:nul]
    version = view[nul + 1]
    if version != VERSION:
        raise ProtocolError("bad_version", f"protocol version {version}; this build speaks {VERSION}")
    kind = _KIND_BY_NAME.get(topic[: topic.find(b"/")])
    if kind is None:
        raise ProtocolError("bad_kind", f"topic {topic[:40]!r} names no known kind")
    hlen = view[nul + 2] | (view[nul + 3] << 8)
    start = nul + _PREAMBLE
    if hlen > MAX_HEADER_BYTES[kind]:
        raise ProtocolError("header_too_large", f"{kind.value} header of {hlen} bytes > {MAX_HEADER_BYTES[kind]}")
    if start + hlen > n:
        raise ProtocolError("bad_framing", f"header of {hlen} bytes runs past the message end")
    try:
        header = _DECODERS[kind].decode(view[start : start + hlen])
    except msgspec.ValidationError as e:
        raise ProtocolError("bad_field", _name_fields(str(e), _STRUCTS[kind])) from None
    except Exception as e:  # msgspec.DecodeError, and UnicodeDecodeError for bad UTF-8: hostile input
        raise ProtocolError("bad_msgpack", f"{type(e).__name__}: {str(e)[:200]}") from None
    payload = view[start + hlen :]
    if kind is Kind.RAW or kind is Kind.TENSOR:
        h: AudioHeader = header
        if topic != topic_for(kind, h.stream) or not is_name(h.stream):
            raise ProtocolError("bad_topic", f"topic {topic[:80]!r} is not the topic of stream {h.stream[:64]!r}, or "
                                             "the id has characters other than letters, digits, '.', '_', '-'")
        _check_texts(h.source, h.trace)
        if len(payload) != h.samples * h.channels * SAMPLE_WIDTH[h.format]:
            raise ProtocolError("payload_length", f"payload is {len(payload)} bytes; {h.samples} samples x "
                                                  f"{h.channels} ch x {SAMPLE_WIDTH[h.format]} B = {h.payload_bytes}")
        if h.samples > h.rate * MAX_CHUNK_S:
            raise ProtocolError("chunk_too_long", f"{h.samples} samples at {h.rate} Hz is over {MAX_CHUNK_S} s")
        if h.offset + h.samples + h.lost > I64_MAX or h.end_ns > I64_MAX - MAX_CHUNK_S * 1_000_000_000:
            # downstream adds durations and counts to these; every result must stay within int64
            raise ProtocolError("bad_field", "offset, lost or t_capture_ns too close to the int64 limit")
        if kind is Kind.TENSOR and (h.format is not SampleFormat.F32 or h.layout is not Layout.PLANAR):
            raise ProtocolError("bad_tensor_format", f"a tensor is f32 planar, got {h.format.value} {h.layout.value}")
        return Audio(kind, h, payload)
    if len(payload):
        raise ProtocolError("payload_length", f"a {kind.value} message carries no payload, got {len(payload)} bytes")
    model = getattr(header, "model", "")
    if topic != topic_for(kind, header.stream, model) or not is_name(header.stream) or (model and not is_name(model)):
        raise ProtocolError("bad_topic", f"topic {topic!r} and the header's stream/model disagree or use "
                                         "characters other than letters, digits, '.', '_', '-'")
    if kind is Kind.RESULT:
        if header.end_ns < header.start_ns:
            raise ProtocolError("bad_field", f"result ends ({header.end_ns}) before it starts ({header.start_ns})")
        for lbl in header.labels:
            if not is_text(lbl.name):
                raise ProtocolError("bad_field", "a label has control characters")
        for ev in header.events:
            if not is_text(ev.label):
                raise ProtocolError("bad_field", "an event label has control characters")
        _check_texts("", header.trace)
    elif kind is Kind.HEARTBEAT:
        _check_texts(header.source, ())
    elif kind is Kind.EVENT:
        if not is_text(header.label) or ".." in header.clip or header.clip.startswith("/"):
            raise ProtocolError("bad_field", "event label has control characters or its clip path leaves the store")
    return header


def _check_texts(source: str, trace: Any) -> None:
    if source and not is_text(source):
        raise ProtocolError("bad_field", "source has control characters")
    for hop in trace:
        if not is_name(hop.stage):
            raise ProtocolError("bad_field", f"trace stage {hop.stage[:32]!r} is not a plain name")


def decode_parts(parts: list[bytes]) -> Message:
    """Validate a received multipart message: v2 is exactly one part; a v1 peer sends three."""
    if len(parts) == 1:
        return decode(parts[0])
    if len(parts) == 3 and _looks_v1(parts[1]):
        raise ProtocolError("v1_message", "a protocol v1 message (3 parts) from an old peer: upgrade it to v2")
    raise ProtocolError("bad_part_count", f"{len(parts)} message parts; protocol v2 sends exactly one")


def _looks_v1(header: bytes) -> bool:
    try:
        d = msgspec.msgpack.decode(header[:4096])
    except Exception:  # DecodeError, UnicodeDecodeError: not a v1 header
        return False
    return isinstance(d, dict) and d.get("v") == 1


def _name_fields(text: str, struct: type) -> str:
    """msgspec says ``at `$[4]```; say ``at rate`` (array_like Structs have positional fields)."""
    fields = struct.__struct_fields__

    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return "`" + (fields[i] if i < len(fields) else f"$[{i}]")

    return _FIELD_AT.sub(name, text, count=1)[:300]


def message_stream(msg: Any) -> str:
    """The stream id of any decoded message."""
    return msg.header.stream if isinstance(msg, Audio) else msg.stream
