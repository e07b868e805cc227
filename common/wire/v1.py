"""Protocol v1, kept only to read recordings made with it (``soundbus replay/info/export``).

Live peers speak v2 (common.wire.codec); a v1 message arriving on a socket is refused with
the reason ``v1_message``. :func:`to_v2` turns a recorded v1 message into the v2 message a
v2 stage would have sent. The v1 format, as it was: one message = three ZeroMQ frames.

    [topic]   ASCII bytes, ``<kind>/<bucket>/<stream>/`` (results add ``<model>/``)
    [header]  msgpack map, at most MAX_HEADER_BYTES
    [payload] raw bytes: PCM samples (kind raw/tensor), a msgpack map (kind result), or empty

The topic exists only so a subscriber can filter at the publisher (ZeroMQ prefix
matching): by kind (``raw/``), by shard bucket (``raw/3f/``) or by stream
(``raw/3f/mic1/``; the trailing ``/`` stops ``mic1`` matching ``mic10``). The bucket is
derived from the stream id (crc32 mod 256), so N workers can split streams between
them without knowing the stream names in advance. See docs/protocol.md.

Nothing here is pickled; decoding never trusts a length it did not check.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import numpy as np

VERSION = 1
MAX_HEADER_BYTES = 4096
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # also set as ZMQ_MAXMSGSIZE on every receiving socket
MAX_TRACE_HOPS = 16
MAX_STREAM_ID_LEN = 64
MAX_RATE_HZ = 768_000
MAX_CHANNELS = 64
N_BUCKETS = 256


class Kind(str, enum.Enum):
    """What a message carries; the first part of its topic."""

    RAW = "raw"  # PCM frames as captured
    TENSOR = "tensor"  # float32 (channels, frames) at a model's rate
    RESULT = "result"  # a classifier's labels for a time span (payload: msgpack map)
    HEARTBEAT = "hb"  # "this source is alive" with no audio (payload empty)


class Flag(enum.IntFlag):
    """Header ``flags`` bits."""

    NONE = 0
    OVERFLOW = 1  # the source lost input before this frame (PortAudio overflow, queue overrun)
    DISCONTINUITY = 2  # this frame does not follow the previous one seamlessly; reset state
    END = 4  # last message of this epoch (file ended, source stopped)


# Sample format name -> (numpy dtype of one stored sample, bytes per sample).
# s24 is packed little-endian 3-byte; numpy has no such dtype, so it is read as bytes.
SAMPLE_FORMATS: dict[str, tuple[str, int]] = {
    "s8": ("i1", 1),
    "u8": ("u1", 1),
    "s16": ("<i2", 2),
    "s24": ("V3", 3),
    "s32": ("<i4", 4),
    "f32": ("<f4", 4),
    "f64": ("<f8", 8),
}
LAYOUTS = ("interleaved", "planar")


class ProtocolError(ValueError):
    """A message that does not follow protocol v1. ``reason`` is a short stable key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Hop:
    """One stage's pass over a message; times are wall-clock ns (time.time_ns)."""

    stage: str
    t_in_ns: int
    t_out_ns: int


@dataclass
class Header:
    """Everything a consumer needs to interpret the payload.

    Units: ``rate`` Hz; ``frames`` samples per channel; ``offset`` samples since the
    epoch began (at ``rate``); ``t_capture_ns`` wall-clock ns of the first sample.
    """

    kind: Kind
    stream: str
    epoch: int  # changes when the source restarts; seq and offset restart with it
    seq: int  # 0, 1, 2, ... per (stream, epoch) at this hop's publisher
    t_capture_ns: int
    rate: int = 0
    channels: int = 0
    format: str = "s16"
    layout: str = "interleaved"
    frames: int = 0
    offset: int = 0
    flags: Flag = Flag.NONE
    source: str = ""
    model: str = ""  # results only: the model that produced them
    trace: list[Hop] = field(default_factory=list)
    version: int = VERSION

    @property
    def sample_bytes(self) -> int:
        """Bytes per stored sample of ``format``."""
        return SAMPLE_FORMATS[self.format][1]

    @property
    def payload_bytes(self) -> int:
        """Expected payload length for an audio message: frames x channels x sample size."""
        return self.frames * self.channels * self.sample_bytes

    @property
    def duration_s(self) -> float:
        """Audio duration of the payload in seconds."""
        return self.frames / self.rate if self.rate else 0.0

    def span_ns(self) -> tuple[int, int]:
        """(start, end) wall-clock ns of the audio in this message."""
        return self.t_capture_ns, self.t_capture_ns + (self.frames * 1_000_000_000) // max(self.rate, 1)

    def topic(self) -> bytes:
        return topic_for(self.kind, self.stream, self.model)


def bucket_of(stream: str) -> int:
    """Shard bucket of a stream id: crc32 mod 256 (stable across processes and machines)."""
    return zlib.crc32(stream.encode()) % N_BUCKETS


@functools.lru_cache(maxsize=4096)  # every message's topic is checked against its header
def topic_for(kind: Kind | str, stream: str | None = None, model: str = "") -> bytes:
    """Topic (or topic prefix, if ``stream`` is None) for a kind and stream."""
    kind = Kind(kind)
    if stream is None:
        return f"{kind.value}/".encode()
    t = f"{kind.value}/{bucket_of(stream):02x}/{stream}/"
    if model:
        t += f"{model}/"
    return t.encode()


def shard_prefixes(kind: Kind | str, index: int, count: int) -> list[bytes]:
    """Topic prefixes that make worker ``index`` of ``count`` receive only its streams.

    Buckets b with b % count == index; subscribing to these filters at the publisher.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be INDEX/COUNT with 0 <= INDEX < COUNT; got {index}/{count}")
    kind = Kind(kind)
    if count == 1:
        return [f"{kind.value}/".encode()]
    return [f"{kind.value}/{b:02x}/".encode() for b in range(N_BUCKETS) if b % count == index]


# ---------------------------------------------------------------------------------------
# encoding

_local = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj`` (bin type for bytes). One Packer per thread is reused:
    ``msgpack.packb`` builds a new one per call, which costs more than packing a header."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


def encode_header(h: Header) -> bytes:
    """msgpack bytes of a header (short keys; see docs/protocol.md for the table)."""
    d = {
        "v": h.version,
        "k": h.kind._value_,  # .value is a property: several times slower per message
        "s": h.stream,
        "e": h.epoch,
        "n": h.seq,
        "t": h.t_capture_ns,
        "r": h.rate,
        "c": h.channels,
        "f": h.format,
        "l": h.layout,
        "fr": h.frames,
        "o": h.offset,
        "fl": int(h.flags),
        "src": h.source,
        "m": h.model,
        "tr": [[hop.stage, hop.t_in_ns, hop.t_out_ns] for hop in h.trace],
    }
    return pack(d)


def encode(h: Header, payload: bytes | memoryview | np.ndarray = b"") -> list[bytes | memoryview]:
    """The three frames of a message, ready for ``socket.send_multipart``."""
    if isinstance(payload, np.ndarray):
        payload = memoryview(np.ascontiguousarray(payload)).cast("B")
    return [h.topic(), encode_header(h), payload]


def encode_result(h: Header, body: dict[str, Any]) -> list[bytes | memoryview]:
    """Frames of a result message; ``body`` is packed as the payload."""
    return [h.topic(), encode_header(h), pack(body)]


def _unpack_limited(data: bytes | memoryview, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise ProtocolError("header_too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=1024,
            max_bin_len=0,
            max_array_len=MAX_TRACE_HOPS * 3 + 16,
            max_map_len=64,
            max_ext_len=0,
        )
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as e:
        raise ProtocolError("bad_msgpack", str(e)[:200]) from None
    except Exception as e:  # msgpack raises several types for hostile input
        raise ProtocolError("bad_msgpack", f"{type(e).__name__}: {str(e)[:200]}") from None


def _int(d: dict, key: str, name: str, lo: int, hi: int) -> int:
    v = d.get(key)
    if type(v) is not int:  # bool is not accepted either
        raise ProtocolError("bad_field", f"{name} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError("bad_field", f"{name}={v} outside [{lo}, {hi}]")
    return v


def _str(d: dict, key: str, name: str, max_len: int) -> str:
    v = d.get(key, "")
    if not isinstance(v, str):
        raise ProtocolError("bad_field", f"{name} must be a string, got {type(v).__name__}")
    if len(v) > max_len:
        raise ProtocolError("bad_field", f"{name} longer than {max_len}")
    return v


_U64 = 2**64 - 1
_I64 = 2**63 - 1


# (key, field name, lowest, highest) of every integer header field, in Header's positional order.
_INT_FIELDS = (
    ("e", "epoch", 0, _U64),
    ("n", "seq", 0, _U64),
    ("t", "t_capture_ns", 0, _I64),
    ("r", "rate", 0, MAX_RATE_HZ),
    ("c", "channels", 0, MAX_CHANNELS),
)
_KINDS = {k.value: k for k in Kind}
_FLAGS = [Flag(i) for i in range(8)]
_AUDIO = (Kind.RAW, Kind.TENSOR)


def decode_header(data: bytes | memoryview) -> Header:
    """Parse and validate a header frame. Raises ProtocolError with a counted reason.

    Written for speed (it runs on every message of every stage): checks are inline and
    the Header is built positionally; the rules are those of docs/protocol.md.
    """
    d = _unpack_limited(data, MAX_HEADER_BYTES)
    if type(d) is not dict:
        raise ProtocolError("bad_header", f"header must be a map, got {type(d).__name__}")
    version = d.get("v")
    if version != VERSION or type(version) is not int:
        raise ProtocolError("bad_version", f"version {version!r}, this build speaks {VERSION}")
    k = d.get("k")
    kind = _KINDS.get(k) if type(k) is str else None
    if kind is None:
        raise ProtocolError("bad_kind", f"unknown kind {d.get('k')!r}")
    stream = _str(d, "s", "stream", MAX_STREAM_ID_LEN)
    if not stream or "/" in stream or not stream.isprintable():
        raise ProtocolError("bad_stream", f"stream id {stream!r} must be 1-{MAX_STREAM_ID_LEN} printable chars, no '/'")
    ints = []
    for key, name, lo, hi in _INT_FIELDS:
        v = d.get(key)
        if type(v) is not int or v < lo or v > hi:  # bool is not accepted either
            _int(d, key, name, lo, hi)  # raises with the precise message
        ints.append(v)
    frames = _int(d, "fr", "frames", 0, MAX_PAYLOAD_BYTES)
    offset = _int(d, "o", "offset", 0, _U64)
    flags = _int(d, "fl", "flags", 0, 7)
    fmt = _str(d, "f", "format", 8)
    layout = _str(d, "l", "layout", 16)
    source = _str(d, "src", "source", 256)
    model = _str(d, "m", "model", 64)
    tr = d.get("tr", [])
    if type(tr) is not list or len(tr) > MAX_TRACE_HOPS:
        raise ProtocolError("bad_field", f"trace must be a list of at most {MAX_TRACE_HOPS} hops")
    trace = []
    for hop in tr:
        if (
            type(hop) is not list
            or len(hop) != 3
            or type(hop[0]) is not str
            or len(hop[0]) > 32
            or type(hop[1]) is not int
            or type(hop[2]) is not int
        ):
            raise ProtocolError("bad_field", "trace hop must be [stage, t_in_ns, t_out_ns]")
        trace.append(Hop(hop[0], hop[1], hop[2]))
    epoch, seq, t_capture_ns, rate, channels = ints
    if kind in _AUDIO:
        if fmt not in SAMPLE_FORMATS:
            raise ProtocolError("bad_format", f"unknown sample format {fmt!r}; known: {', '.join(SAMPLE_FORMATS)}")
        if layout not in LAYOUTS:
            raise ProtocolError("bad_layout", f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
        if rate < 1:
            raise ProtocolError("bad_rate", f"rate {rate} Hz outside 1..{MAX_RATE_HZ}")
        if channels < 1:
            raise ProtocolError("bad_channels", f"channels {channels} outside 1..{MAX_CHANNELS}")
    return Header(
        kind, stream, epoch, seq, t_capture_ns, rate, channels, fmt, layout, frames, offset,
        _FLAGS[flags], source, model, trace,
    )


@dataclass
class Message:
    """A validated message: header plus payload (a zero-copy buffer for audio)."""

    header: Header
    payload: memoryview

    def samples(self) -> np.ndarray:
        """The payload as a numpy array, zero-copy where the format allows.

        Shape: (frames, channels) for interleaved, (channels, frames) for planar;
        s24 is returned as (..., 3) uint8 bytes (see convert.formats for decoding).
        """
        h = self.header
        dtype, width = SAMPLE_FORMATS[h.format]
        if h.format == "s24":
            flat = np.frombuffer(self.payload, dtype=np.uint8).reshape(-1, 3)
        else:
            flat = np.frombuffer(self.payload, dtype=dtype)
        if h.layout == "interleaved":
            return flat.reshape(h.frames, h.channels, *flat.shape[1:])
        return flat.reshape(h.channels, h.frames, *flat.shape[1:])

    def result(self) -> dict[str, Any]:
        """The body of a result message (validated by decode())."""
        return _unpack_result(self.payload)


def _unpack_result(payload: bytes | memoryview) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(
            payload, raw=False, max_str_len=4096, max_bin_len=0, max_array_len=4096, max_map_len=256, max_ext_len=0
        )
    except Exception as e:
        raise ProtocolError("bad_result", f"{type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise ProtocolError("bad_result", "result payload must be a map")
    return body


def decode(frames: Sequence[bytes | memoryview | Any]) -> Message:
    """Validate a received multipart message. Raises ProtocolError (never anything else).

    ``frames`` may be bytes or zmq.Frame objects (``copy=False``); payloads stay zero-copy.
    """
    if len(frames) != 3:
        raise ProtocolError("bad_frame_count", f"expected 3 frames (topic, header, payload), got {len(frames)}")
    topic, header, payload = _buffer(frames[0]), _buffer(frames[1]), _buffer(frames[2])
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError("payload_too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    h = decode_header(header)
    if topic != topic_for(h.kind, h.stream, h.model):
        raise ProtocolError("bad_topic", f"topic {bytes(topic)[:80]!r} does not match header ({h.topic()!r})")
    if h.kind in _AUDIO:
        if h.frames == 0:
            raise ProtocolError("empty_frame", "an audio message must carry at least one frame")
        if len(payload) != h.frames * h.channels * SAMPLE_FORMATS[h.format][1]:
            raise ProtocolError(
                "payload_length",
                f"payload is {len(payload)} bytes; {h.frames} frames x {h.channels} ch x {h.sample_bytes} B "
                f"= {h.payload_bytes}",
            )
    elif h.kind == Kind.RESULT:
        _unpack_result(payload)
    elif len(payload) != 0:
        raise ProtocolError("payload_length", "a heartbeat carries no payload")
    return Message(h, payload)


def _buffer(f: Any) -> memoryview:
    if isinstance(f, memoryview):
        return f
    if isinstance(f, (bytes, bytearray)):
        return memoryview(f)
    buf = getattr(f, "buffer", None)  # zmq.Frame
    if buf is not None:
        return buf
    raise ProtocolError("bad_frame", f"frame of type {type(f).__name__}")


def to_v2(msg: Message) -> bytes:
    """The protocol v2 message (one part) carrying what v1 message ``msg`` carried.

    Stream ids and model names that v2 does not allow are mapped by :func:`v2_name`. v1
    results had no event scores: an event gets the score of its own window's label (0 if
    absent) and a stop gets ``since_ns`` = its own time.
    """
    from common.wire import codec, messages as m
    from common.wire.topics import Kind as Kind2

    h = msg.header
    stream = v2_name(h.stream)
    trace = [m.Hop(v2_name(hop.stage)[:32], max(hop.t_in_ns, 0), max(hop.t_out_ns, 0)) for hop in h.trace]
    if h.kind in _AUDIO:
        header = m.AudioHeader(
            stream=stream, epoch=h.epoch, seq=h.seq, t_capture_ns=h.t_capture_ns, rate=h.rate,
            channels=h.channels, format=m.SampleFormat(h.format), layout=m.Layout(h.layout), samples=h.frames,
            offset=h.offset, flags=int(h.flags), source=_text(h.source, 256), trace=trace,
        )
        return codec.encode_audio(Kind2(h.kind.value), header, msg.payload)
    if h.kind is Kind.HEARTBEAT:
        return codec.encode(m.Heartbeat(
            stream=stream, epoch=h.epoch, next_seq=h.seq, next_offset=h.offset, t_ns=max(h.t_capture_ns, 0),
            rate=max(h.rate, 1), channels=max(h.channels, 1), format=m.SampleFormat(h.format),
            state=m.HeartbeatState.RUNNING, source=_text(h.source, 256),
        ))
    body = msg.result()
    scores = {str(lbl): _score(s) for lbl, s in body.get("labels", [])}
    events = [
        m.Event(label=_text(str(e["label"]), 128) or "?", state=e["state"], t_ns=int(e["t_ns"]),
                score=scores.get(str(e["label"]), 0.0), since_ns=int(e["t_ns"]))
        for e in body.get("events", [])
    ]
    level = None
    if "rms_dbfs" in body:
        level = m.Level(float(body["rms_dbfs"]), float(body.get("peak_dbfs", body["rms_dbfs"])),
                        int(body.get("clipped", 0)))
    result = m.Result(
        stream=stream, model=v2_name(h.model or body.get("model", "model")), epoch=h.epoch, seq=h.seq,
        start_ns=int(body["start_ns"]), end_ns=int(body["end_ns"]), offset=int(body.get("offset", 0)),
        rate=max(h.rate, 1), seq_first=int(body.get("seq_first", 0)), seq_last=int(body.get("seq_last", 0)),
        labels=[m.Label(_text(lbl, 128) or "?", s) for lbl, s in scores.items()], events=events,
        flags=int(h.flags), level=level, final=bool(body.get("final", False)), trace=trace,
    )
    return codec.encode(result)


def v2_name(name: str) -> str:
    """A v1 stream id or model name as v2 allows it: letters, digits, '.', '_', '-' (others become '_')."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)[:64]
    if not out or out[0] in ".-":
        out = "_" + out[:63]
    return out


def _text(s: str, n: int) -> str:
    return "".join(c for c in s if c.isprintable())[:n]


def _score(s: Any) -> float:
    try:
        v = float(s)
    except (TypeError, ValueError):
        return 0.0
    return min(max(v, 0.0), 1.0) if v == v else 0.0
