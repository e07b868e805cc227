"""Topics: the ASCII prefix every message starts with, so subscribers filter at the publisher.

    <kind>/<bucket>/<stream>/            raw, tensor, hb
    <kind>/<bucket>/<stream>/<model>/    result, event

ZeroMQ matches subscriptions by prefix at the publisher (TCP and IPC), so a subscriber
takes one kind (``raw/``), one shard of streams (``raw/3f/``) or one stream
(``raw/3f/mic1/``; the trailing ``/`` keeps ``mic1`` from matching ``mic10``). The bucket
is crc32(stream id) mod 256, so N workers split the streams without knowing their names.
"""

from __future__ import annotations

import enum
import functools
import zlib

N_BUCKETS = 256


class Kind(str, enum.Enum):
    """What a message carries; the first part of its topic."""

    RAW = "raw"  # PCM as captured
    TENSOR = "tensor"  # float32 (channels, samples) at a model's rate
    RESULT = "result"  # a model's labels for one window
    HEARTBEAT = "hb"  # a source is alive, no audio
    EVENT = "event"  # an onset/offset the event store kept


KINDS_WITH_MODEL = (Kind.RESULT, Kind.EVENT)
_BY_PREFIX = {k.value.encode() + b"/": k for k in Kind}


def bucket_of(stream: str) -> int:
    """Shard bucket of a stream id: crc32 mod 256 (stable across processes and machines)."""
    return zlib.crc32(stream.encode()) % N_BUCKETS


@functools.lru_cache(maxsize=8192)  # bounded: at most this many distinct topics are remembered
def topic_for(kind: Kind, stream: str | None = None, model: str = "") -> bytes:
    """Topic (or a topic prefix, if ``stream`` is None) of a kind, stream and model."""
    kind = Kind(kind)
    if stream is None:
        return f"{kind.value}/".encode()
    t = f"{kind.value}/{bucket_of(stream):02x}/{stream}/"
    if model:
        t += f"{model}/"
    return t.encode()


def kind_of(topic: bytes | memoryview) -> Kind | None:
    """The kind a topic starts with, or None."""
    head = bytes(topic[:7])
    for prefix, kind in _BY_PREFIX.items():
        if head.startswith(prefix):
            return kind
    return None


def shard_prefixes(kind: Kind, index: int, count: int) -> list[bytes]:
    """Topic prefixes that make worker ``index`` of ``count`` receive only its streams:
    the buckets b with b % count == index (filtered at the publisher)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be INDEX/COUNT with 0 <= INDEX < COUNT; got {index}/{count}")
    kind = Kind(kind)
    if count == 1:
        return [f"{kind.value}/".encode()]
    return [f"{kind.value}/{b:02x}/".encode() for b in range(N_BUCKETS) if b % count == index]
