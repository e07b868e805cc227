"""Random and mutated protocol v2 messages for the fuzz tests (deterministic for a given seed).

Every message starts with the kind prefix the stage subscribes to (``raw/`` or ``tensor/``),
otherwise the publisher would filter it out and the stage would never see it. Mutations start
from valid messages: truncated and flipped headers and preambles, several parts, lengths far
beyond the limits, fields of the wrong type, missing and extra fields, topic and payload
mismatches, msgpack bombs, control characters in text, v1 messages, plain random bytes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import msgpack
import msgspec
import numpy as np

from common.wire import AudioHeader, Kind, Layout, SampleFormat, encode_audio

FUZZ_STREAMS = [f"fz{i}" for i in range(8)]  # valid-looking fuzz traffic stays on these streams

_WRONG_VALUES: list = [None, True, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), "x" * 5, "", b"\x00" * 4, [1, 2],
                       {"a": 1}, "s16" * 100, "a\x1b[2J"]
_N_FIELDS = len(AudioHeader.__struct_fields__)


def _valid(rng: random.Random, kind: Kind) -> tuple[AudioHeader, bytes]:
    stream = rng.choice(FUZZ_STREAMS)
    n = rng.choice([1, 7, 64, 160])
    if kind is Kind.RAW:
        fmt, channels, layout = rng.choice(["s16", "s32", "f32", "u8", "s24"]), rng.choice([1, 2]), "interleaved"
    else:
        fmt, channels, layout = "f32", 1, "planar"
    h = AudioHeader(stream=stream, epoch=rng.randrange(1, 2**40), seq=rng.randrange(0, 10**6),
                    t_capture_ns=time.time_ns(), rate=16000, channels=channels, format=SampleFormat(fmt),
                    layout=Layout(layout), samples=n, offset=rng.randrange(0, 10**8), source="fuzz")
    if kind is Kind.TENSOR:  # finite floats in [0, 1] for a valid tensor
        u16 = np.frombuffer(rng.randbytes(n * channels * 2), dtype="<u2")
        payload = (u16.astype(np.float32) / 65535.0).tobytes()
    else:
        payload = rng.randbytes(h.payload_bytes)
    return h, payload


def _fields(h: AudioHeader) -> list:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(h))


def _part(topic: bytes, header: bytes, payload: bytes, version: int = 2) -> bytes:
    return topic + b"\0" + bytes([version]) + len(header).to_bytes(2, "little") + header + payload


def mutations(kind: Kind) -> list[tuple[str, Callable[[random.Random], list[bytes]]]]:
    """(name, make(rng) -> message parts) for every mutation kind."""
    prefix = f"{kind.value}/".encode()

    def valid_parts(rng: random.Random) -> tuple[AudioHeader, bytes, bytes, bytes]:
        h, payload = _valid(rng, kind)
        data = encode_audio(kind, h, payload)
        topic = data[: data.index(b"\0")]
        return h, topic, msgspec.msgpack.encode(h), payload

    def truncated_header(rng):
        _, t, hd, p = valid_parts(rng)
        return [_part(t, hd[: rng.randrange(0, len(hd))], p)]

    def flipped_header(rng):
        _, t, hd, p = valid_parts(rng)
        b = bytearray(hd)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return [_part(t, bytes(b), p)]

    def flipped_preamble(rng):
        _, t, hd, p = valid_parts(rng)
        b = bytearray(_part(t, hd, p))
        at = len(t) + rng.randrange(0, 4)
        b[at] ^= 1 << rng.randrange(8)
        return [bytes(b)]

    def flipped_payload(rng):  # usually still a valid message: the stage must just process it
        _, t, hd, p = valid_parts(rng)
        b = bytearray(p)
        if b:
            b[rng.randrange(len(b))] ^= 0xFF
        return [_part(t, hd, bytes(b))]

    def wrong_part_count(rng):
        _, t, hd, p = valid_parts(rng)
        n = rng.choice([2, 3, 4, 9])
        return [_part(t, hd, p)] + [rng.randbytes(rng.randrange(0, 16)) for _ in range(n - 1)]

    def v1_message(rng):
        _, t, _, p = valid_parts(rng)
        return [t, msgpack.packb({"v": 1, "k": kind.value, "s": "fz0", "e": 1, "n": 0}), p]

    def huge_values(rng):
        h, t, _, p = valid_parts(rng)
        d = _fields(h)
        d[rng.choice([1, 2, 3, 4, 5, 8, 9, 11])] = rng.choice([2**31, 2**32 + 1, 10**15, 2**63, 2**64 - 1])
        return [_part(t, msgpack.packb(d), p)]

    def wrong_types(rng):
        h, t, _, p = valid_parts(rng)
        d = _fields(h)
        d[rng.randrange(_N_FIELDS)] = rng.choice(_WRONG_VALUES)
        return [_part(t, msgpack.packb(d), p)]

    def missing_or_extra_fields(rng):
        h, t, _, p = valid_parts(rng)
        d = _fields(h)
        d = d[: rng.randrange(0, 10)] if rng.random() < 0.5 else d + [rng.choice(_WRONG_VALUES)] * rng.choice([1, 70])
        return [_part(t, msgpack.packb(d), p)]

    def payload_mismatch(rng):
        _, t, hd, p = valid_parts(rng)
        cut = rng.choice([0, 1, len(p) // 2, len(p) - 1, len(p) + 1, len(p) * 3])
        return [_part(t, hd, (p * 4)[:cut])]

    def topic_mismatch(rng):
        _, t, hd, p = valid_parts(rng)
        bad = rng.choice([prefix, prefix + b"zz/fz0/", prefix + b"00/other/", t + b"x", t[:-1]])
        return [_part(bad, hd, p)]

    def header_not_an_array(rng):
        _, t, _, p = valid_parts(rng)
        return [_part(t, msgpack.packb(rng.choice([{"s": "fz0"}, "header", 7, None, [[[[]]]]])), p)]

    def msgpack_bombs(rng):
        _, t, _, p = valid_parts(rng)
        bomb = rng.choice([
            b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G items
            b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G pairs
            b"\xdb\xff\xff\xff\xff" + b"a" * 8,  # str32 claiming 4 GB
            b"\xc6\x7f\xff\xff\xff",  # bin32
            b"\x91" * 3000,  # deep nesting
            b"\xc1",  # never-used byte
            b"\xd4\x01\x00",  # ext type
        ])
        return [_part(t, bomb, p)]

    def oversized_header(rng):
        h, t, _, p = valid_parts(rng)
        d = _fields(h)
        d[12] = "y" * rng.choice([300, 5000])
        return [_part(t, msgpack.packb(d), p)]

    def random_bytes(rng):
        return [prefix + rng.randbytes(rng.randrange(0, 400))]

    def wrong_version(rng):
        _, t, hd, p = valid_parts(rng)
        return [_part(t, hd, p, version=rng.choice([0, 1, 3, 255]))]

    return [(f.__name__, f) for f in (
        truncated_header, flipped_header, flipped_preamble, flipped_payload, wrong_part_count, v1_message,
        huge_values, wrong_types, missing_or_extra_fields, payload_mismatch, topic_mismatch, header_not_an_array,
        msgpack_bombs, oversized_header, random_bytes, wrong_version,
    )]


def fuzz_messages(kind: Kind, n: int, seed: int) -> list[list[bytes]]:
    """``n`` messages (each a list of parts) cycling through every mutation with a seeded generator."""
    rng = random.Random(seed)
    muts = mutations(kind)
    return [muts[i % len(muts)][1](rng) for i in range(n)]
