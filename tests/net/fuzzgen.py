"""Random and mutated protocol messages for the fuzz tests (deterministic for a given seed).

Every message's first frame starts with the kind prefix the stage subscribes to (``raw/`` or
``tensor/``), otherwise the publisher would filter it out and the stage would never see it.
Mutations start from valid messages: truncated and flipped headers, wrong frame counts,
lengths far beyond the limits, fields of the wrong type, missing and extra keys, topic and
payload mismatches, msgpack bombs, plain random bytes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import msgpack
import numpy as np

from common.protocol import Header, Kind, encode_header

FUZZ_STREAMS = [f"fz{i}" for i in range(8)]  # valid-looking fuzz traffic stays on these streams

_WRONG_VALUES: list = [None, True, -1, 2**64 - 1, -(2**63), 1.5, "x" * 5, "", b"\x00" * 4, [1, 2], {"a": 1}, "s16" * 100]
_KEYS = ["v", "k", "s", "e", "n", "t", "r", "c", "f", "l", "fr", "o", "fl", "src", "m", "tr"]


def _valid(rng: random.Random, kind: Kind) -> tuple[Header, bytes]:
    stream = rng.choice(FUZZ_STREAMS)
    frames = rng.choice([1, 7, 64, 160])
    if kind is Kind.RAW:
        fmt, channels, rate, layout = rng.choice(["s16", "s32", "f32", "u8", "s24"]), rng.choice([1, 2]), 16000, "interleaved"
    else:
        fmt, channels, rate, layout = "f32", 1, 16000, "planar"
    h = Header(kind=kind, stream=stream, epoch=rng.randrange(1, 2**40), seq=rng.randrange(0, 10**6),
               t_capture_ns=time.time_ns(), rate=rate, channels=channels, format=fmt, layout=layout, frames=frames,
               offset=rng.randrange(0, 10**8), source="fuzz")
    if kind is Kind.TENSOR:  # finite floats in [0, 1] for a valid tensor
        u16 = np.frombuffer(rng.randbytes(frames * channels * 2), dtype="<u2")
        payload = (u16.astype(np.float32) / 65535.0).tobytes()
    else:
        payload = rng.randbytes(h.payload_bytes)
    return h, payload


def _header_dict(h: Header) -> dict:
    return msgpack.unpackb(encode_header(h), raw=False)


def _pack(d: object) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


def mutations(kind: Kind) -> list[tuple[str, Callable[[random.Random], list[bytes]]]]:
    """(name, make(rng) -> frames) for every mutation kind."""
    prefix = f"{kind.value}/".encode()

    def valid_parts(rng: random.Random) -> tuple[Header, bytes, bytes, bytes]:
        h, payload = _valid(rng, kind)
        return h, h.topic(), encode_header(h), payload

    def truncated_header(rng):
        _, t, hd, p = valid_parts(rng)
        return [t, hd[: rng.randrange(0, len(hd))], p]

    def flipped_header(rng):
        _, t, hd, p = valid_parts(rng)
        b = bytearray(hd)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return [t, bytes(b), p]

    def flipped_payload(rng):  # usually still a valid message: the stage must just process it
        _, t, hd, p = valid_parts(rng)
        b = bytearray(p)
        if b:
            b[rng.randrange(len(b))] ^= 0xFF
        return [t, hd, bytes(b)]

    def wrong_frame_count(rng):
        _, t, hd, p = valid_parts(rng)
        n = rng.choice([1, 2, 4, 5, 9])
        return ([t, hd, p] + [rng.randbytes(rng.randrange(0, 16)) for _ in range(n)])[:n]

    def huge_lengths(rng):
        d = _header_dict(_valid(rng, kind)[0])
        d[rng.choice(["fr", "c", "r", "o", "n", "e", "t"])] = rng.choice([2**31, 2**32 + 1, 10**15, 2**63, 2**64 - 1])
        return [prefix + b"00/fz0/", _pack(d), rng.randbytes(rng.randrange(0, 64))]

    def wrong_types(rng):
        h, t, _, p = valid_parts(rng)
        d = _header_dict(h)
        d[rng.choice(_KEYS)] = rng.choice(_WRONG_VALUES)
        return [t, _pack(d), p]

    def missing_or_extra_keys(rng):
        h, t, _, p = valid_parts(rng)
        d = _header_dict(h)
        if rng.random() < 0.5:
            d.pop(rng.choice(_KEYS), None)
        else:
            for i in range(rng.choice([1, 70])):
                d[f"x{i}"] = i
        return [t, _pack(d), p]

    def payload_mismatch(rng):
        _, t, hd, p = valid_parts(rng)
        cut = rng.choice([0, 1, len(p) // 2, len(p) - 1, len(p) + 1, len(p) * 3])
        return [t, hd, (p * 4)[:cut]]

    def topic_mismatch(rng):
        _, t, hd, p = valid_parts(rng)
        return [rng.choice([prefix, prefix + b"zz/fz0/", prefix + b"00/other/", t + b"x", t[:-1]]), hd, p]

    def header_not_a_map(rng):
        _, t, _, p = valid_parts(rng)
        return [t, _pack(rng.choice([[1, 2, 3], "header", 7, None, [[[[]]]]])), p]

    def msgpack_bombs(rng):
        _, t, _, p = valid_parts(rng)
        bomb = rng.choice([
            b"\xdd\xff\xff\xff\xff",  # array32 claiming 4G items
            b"\xdf\xff\xff\xff\xff",  # map32 claiming 4G pairs
            b"\xdb\xff\xff\xff\xff" + b"a" * 8,  # str32 claiming 4 GB
            b"\xc6\x7f\xff\xff\xff",  # bin32
            b"\x91" * 5000,  # deep nesting
            b"\xc1",  # never-used byte
            b"\xd4\x01\x00",  # ext type
        ])
        return [t, bomb, p]

    def oversized_header(rng):
        h, t, _, p = valid_parts(rng)
        d = _header_dict(h)
        d["src"] = "y" * rng.choice([1025, 5000])
        return [t, _pack(d), p]

    def random_bytes(rng):
        return [prefix + rng.randbytes(rng.randrange(0, 24)), rng.randbytes(rng.randrange(0, 200)),
                rng.randbytes(rng.randrange(0, 200))]

    def wrong_kind(rng):
        h, t, _, p = valid_parts(rng)
        d = _header_dict(h)
        d["k"] = rng.choice(["result", "hb", "raw" if kind is Kind.TENSOR else "tensor", "nope"])
        return [t, _pack(d), p]

    return [(f.__name__, f) for f in (
        truncated_header, flipped_header, flipped_payload, wrong_frame_count, huge_lengths, wrong_types,
        missing_or_extra_keys, payload_mismatch, topic_mismatch, header_not_a_map, msgpack_bombs,
        oversized_header, random_bytes, wrong_kind,
    )]


def fuzz_messages(kind: Kind, n: int, seed: int) -> list[list[bytes]]:
    """``n`` messages cycling through every mutation with a seeded generator."""
    rng = random.Random(seed)
    muts = mutations(kind)
    return [muts[i % len(muts)][1](rng) for i in range(n)]
