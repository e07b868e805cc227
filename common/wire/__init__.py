"""The wire: protocol v2 messages as bytes and back. No sockets, no I/O.

- ``messages``: every message kind as a typed msgspec Struct with its bounds (the schema).
- ``topics``: topic prefixes, shard buckets.
- ``codec``: one ZeroMQ part per message; ``decode`` validates and raises only ProtocolError.
- ``v1``: the old three-part format, only to read recordings made with it.
"""

from common.wire.codec import Audio, Message, ProtocolError, decode, decode_parts, encode, encode_audio
from common.wire.messages import (
    AudioHeader,
    Event,
    Flag,
    Heartbeat,
    HeartbeatState,
    Hop,
    Label,
    Layout,
    Level,
    Result,
    SampleFormat,
    StoredEvent,
)
from common.wire.topics import Kind, bucket_of, shard_prefixes, topic_for

__all__ = [
    "Audio", "AudioHeader", "Event", "Flag", "Heartbeat", "HeartbeatState", "Hop", "Kind", "Label", "Layout",
    "Level", "Message", "ProtocolError", "Result", "SampleFormat", "StoredEvent", "bucket_of", "decode",
    "decode_parts", "encode", "encode_audio", "shard_prefixes", "topic_for",
]
