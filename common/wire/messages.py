"""Every message kind of protocol v2 as a typed msgspec Struct; the bounds are declared here, once.

These Structs are the schema: docs/protocol.md states them (a test checks the document
against them) and decoding enforces them, so a value that passes ``decode`` is within
every bound below. All Structs are ``array_like`` (encoded as a msgpack array in field
order, no keys on the wire) and ``forbid_unknown_fields`` (an extra element is refused).

Units are in the names: ``*_ns`` wall-clock nanoseconds since the Unix epoch, ``rate``
Hz, ``samples`` samples per channel, ``offset`` samples per channel since the epoch began.
Words: a *message* is one ZeroMQ message; the audio one message carries is a *chunk*.
"""

from __future__ import annotations

import enum
import functools
import re
from typing import Annotated, ClassVar, Literal

from msgspec import Meta, Struct

from common.wire.topics import Kind

# -- bounds -----------------------------------------------------------------------------

MAX_STREAM_ID_LEN = 64
MAX_LABEL_LEN = 128
MAX_RATE_HZ = 768_000
MAX_CHANNELS = 64
MAX_CHUNK_S = 10  # an audio message carries at most 10 s of audio (bounds every burst it causes)
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_TRACE_HOPS = 16
MAX_LABELS = 1024  # per result (top-k of a large model)
MAX_EVENTS = 1024  # per result
I64_MAX = 2**63 - 1

# Stream ids, model and stage names end up in topics, MQTT topics, Home Assistant ids, file
# names and terminals: letters, digits, '.', '_' and '-' only, not starting with '.' or '-'.
# Free text (labels, source descriptions): printable, no control characters (no terminal escapes).
# The lengths are Meta bounds below; the characters are checked by common.wire.codec with
# is_name/is_text (memoised: a regex per field per message would cost more than the decode).
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
TEXT_PATTERN = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")


@functools.lru_cache(maxsize=16384)
def is_name(s: str) -> bool:
    """A valid stream id, model or stage name (characters only; lengths are Meta bounds)."""
    return NAME_PATTERN.fullmatch(s) is not None


@functools.lru_cache(maxsize=16384)
def is_text(s: str) -> bool:
    """Printable text with no control characters."""
    return TEXT_PATTERN.fullmatch(s) is not None


StreamId = Annotated[str, Meta(min_length=1, max_length=MAX_STREAM_ID_LEN)]  # + is_name
ModelName = Annotated[str, Meta(min_length=1, max_length=64)]  # + is_name
StageName = Annotated[str, Meta(min_length=1, max_length=32)]  # + is_name
LabelText = Annotated[str, Meta(min_length=1, max_length=MAX_LABEL_LEN)]  # + is_text
SourceText = Annotated[str, Meta(max_length=256)]  # + is_text
Count = Annotated[int, Meta(ge=0, le=I64_MAX)]  # seq, epoch, offset: int64 (msgspec bounds are int64)
TimeNs = Annotated[int, Meta(ge=0, le=I64_MAX)]
Rate = Annotated[int, Meta(ge=1, le=MAX_RATE_HZ)]
Channels = Annotated[int, Meta(ge=1, le=MAX_CHANNELS)]
Samples = Annotated[int, Meta(ge=1, le=MAX_RATE_HZ * MAX_CHUNK_S)]
FlagBits = Annotated[int, Meta(ge=0, le=7)]
Score = Annotated[float, Meta(ge=0.0, le=1.0)]  # finite: NaN and inf fail both bounds
Dbfs = Annotated[float, Meta(ge=-200.0, le=20.0)]


class Flag(enum.IntFlag):
    """Bits of an audio header's (and a result's) ``flags``."""

    NONE = 0
    OVERFLOW = 1  # the source lost input before this chunk (PortAudio overflow, queue overrun)
    DISCONTINUITY = 2  # this chunk does not follow the previous one seamlessly: reset state
    END = 4  # last message of this epoch (file ended, source stopped)


class SampleFormat(str, enum.Enum):
    """Sample format of raw audio; integers are scaled by full scale (s16 / 32768)."""

    S8 = "s8"
    U8 = "u8"
    S16 = "s16"
    S24 = "s24"  # packed 3-byte little-endian
    S32 = "s32"
    F32 = "f32"
    F64 = "f64"

    @property
    def width(self) -> int:
        """Bytes per sample."""
        return SAMPLE_WIDTH[self]


SAMPLE_WIDTH = {
    SampleFormat.S8: 1, SampleFormat.U8: 1, SampleFormat.S16: 2, SampleFormat.S24: 3,
    SampleFormat.S32: 4, SampleFormat.F32: 4, SampleFormat.F64: 8,
}


class Layout(str, enum.Enum):
    """interleaved: payload shaped (samples, channels); planar: (channels, samples)."""

    INTERLEAVED = "interleaved"
    PLANAR = "planar"


class Hop(Struct, array_like=True, forbid_unknown_fields=True):
    """One stage's pass over a message: received at ``t_in_ns``, sent at ``t_out_ns``."""

    stage: StageName
    t_in_ns: TimeNs
    t_out_ns: TimeNs


Trace = Annotated[list[Hop], Meta(max_length=MAX_TRACE_HOPS)]


class AudioHeader(Struct, array_like=True, forbid_unknown_fields=True):
    """Header of a ``raw`` (as captured) or ``tensor`` (float32 planar at a model's rate) message.

    ``epoch`` changes when the source restarts (seq and offset restart with it); ``seq`` is
    0, 1, 2, ... per (stream, epoch) at this hop's publisher, so a jump is a gap.
    ``lost``: samples (at ``rate``) known to be missing just before this chunk, counted
    upstream (a device overflow, messages a stage never received); 0 when continuous.
    The payload is ``samples * channels * format.width`` bytes.
    """

    stream: StreamId
    epoch: Count
    seq: Count
    t_capture_ns: TimeNs  # wall clock of the chunk's first sample
    rate: Rate
    channels: Channels
    format: SampleFormat
    layout: Layout
    samples: Samples  # per channel
    offset: Count  # index of the first sample since the epoch began
    flags: FlagBits = 0
    lost: Count = 0
    source: SourceText = ""
    trace: Trace = []

    @property
    def payload_bytes(self) -> int:
        """Exact payload length this header announces."""
        return self.samples * self.channels * SAMPLE_WIDTH[self.format]

    @property
    def end_ns(self) -> int:
        """Wall clock just after the chunk's last sample."""
        return self.t_capture_ns + self.samples * 1_000_000_000 // self.rate


class HeartbeatState(str, enum.Enum):
    """What a source is doing, as capture reports it."""

    RUNNING = "running"
    RECONNECTING = "reconnecting"
    WAITING = "waiting"  # not started yet (waiting for a subscriber)
    ENDED = "ended"
    FAILED = "failed"


class Heartbeat(Struct, array_like=True, forbid_unknown_fields=True):
    """``hb``: a source is alive; where its next chunk will be (no payload)."""

    kind: ClassVar[Kind] = Kind.HEARTBEAT

    stream: StreamId
    epoch: Count
    next_seq: Count
    next_offset: Count
    t_ns: TimeNs  # when the heartbeat was sent
    rate: Rate
    channels: Channels
    format: SampleFormat
    state: HeartbeatState
    source: SourceText = ""


class Label(Struct, array_like=True, forbid_unknown_fields=True):
    """One label and its score in [0, 1]."""

    name: LabelText
    score: Score


class Event(Struct, array_like=True, forbid_unknown_fields=True):
    """A label turned on (``start``) or off (``stop``) at ``t_ns`` (audio time).

    ``score``: the score that started it, or for a stop the highest score while it was on.
    ``since_ns``: for a stop, when it started (so a stop alone gives the span); = t_ns for a start.
    """

    label: LabelText
    state: Literal["start", "stop"]
    t_ns: TimeNs
    score: Score
    since_ns: TimeNs


class Level(Struct, array_like=True, forbid_unknown_fields=True):
    """Signal level of a window (the ``level`` model): RMS and peak in dBFS, samples at full scale."""

    rms_dbfs: Dbfs
    peak_dbfs: Dbfs
    clipped: Annotated[int, Meta(ge=0, le=MAX_RATE_HZ * MAX_CHUNK_S * MAX_CHANNELS)]


class Result(Struct, array_like=True, forbid_unknown_fields=True):
    """``result``: one model's labels for one window of one stream (no payload).

    The window is ``[start_ns, end_ns)`` of audio time, first sample ``offset`` at the
    model's ``rate``; it was cut from tensor messages ``seq_first..seq_last``.
    ``lost_ns``: audio time missing just before this window (lost upstream, or shed here
    because the worker fell behind); every loss reaches the user this way or as a seq gap.
    ``flags``: DISCONTINUITY after a reset (model state restarted), END on the last result
    of an epoch (``final``: the window was zero-padded past the end of the audio).
    """

    kind: ClassVar[Kind] = Kind.RESULT

    stream: StreamId
    model: ModelName
    epoch: Count
    seq: Count
    start_ns: TimeNs
    end_ns: TimeNs
    offset: Count
    rate: Rate
    seq_first: Count
    seq_last: Count
    labels: Annotated[list[Label], Meta(max_length=MAX_LABELS)]
    events: Annotated[list[Event], Meta(max_length=MAX_EVENTS)] = []
    flags: FlagBits = 0
    lost_ns: TimeNs = 0
    level: Level | None = None
    final: bool = False
    trace: Trace = []


class StoredEvent(Struct, array_like=True, forbid_unknown_fields=True):
    """``event``: an onset/offset pair the event store kept, with its id and clip.

    ``end_ns`` is 0 while the event is still on (an onset stored before its offset).
    ``clip``: path of the audio clip relative to the store's directory ("" when none).
    """

    kind: ClassVar[Kind] = Kind.EVENT

    stream: StreamId
    model: ModelName
    label: LabelText
    id: Annotated[int, Meta(ge=1, le=I64_MAX)]
    start_ns: TimeNs
    end_ns: TimeNs
    peak: Score
    mean: Score
    clip: Annotated[str, Meta(max_length=256, pattern=r"^[A-Za-z0-9._/-]*$")] = ""
