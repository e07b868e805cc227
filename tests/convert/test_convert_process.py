"""`python -m convert` as a real process: raw chunks published from the test, tensors collected.

The test binds an XPUB (common.transport.outbox.Outbox) as capture would; convert connects to it.
Waits are on log lines ("ready", "subscriber joined"), subscriptions and received messages.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import soxr
import zmq

from common.observe.metrics import StageMetrics
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import (
    AudioHeader,
    Flag,
    Kind,
    Layout,
    Message,
    SampleFormat,
    bucket_of,
    encode_audio,
    shard_prefixes,
    topic_for,
)
from convert.formats import from_float32
from tests.conftest import ROOT, start, tcp

T0 = 1_800_000_000_000_000_000


def stereo(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(48_000 * seconds)
    t = np.arange(n) / 48_000
    x = np.stack([0.3 * np.sin(2 * np.pi * (220 + 50 * seed) * t), 0.1 * rng.standard_normal(n)])
    return np.round(x * 32768) / 32768


def raw_header(stream: str, seq: int, offset: int, samples: int, flags: int = 0, **kw) -> AudioHeader:
    fields = dict(stream=stream, epoch=5, seq=seq, t_capture_ns=T0 + offset * 10**9 // 48_000, rate=48_000,
                  channels=2, format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=samples, offset=offset,
                  flags=int(flags), source=f"test:{stream}")
    fields.update(kw)
    return AudioHeader(**fields)


def valid_chunks(stream: str, x: np.ndarray, n: int = 960) -> list[bytes]:
    count = x.shape[1] // n
    out = []
    for i in range(count):
        flags = Flag.END if i == count - 1 else 0
        out.append(encode_audio(Kind.RAW, raw_header(stream, i, i * n, n, flags),
                                from_float32(x[:, i * n : (i + 1) * n], "s16", "interleaved")))
    return out


def publisher(ctx, addr: str) -> Outbox:
    return Outbox(ctx, [addr], SocketOptions(), StageMetrics("test"))


def reference(x: np.ndarray) -> np.ndarray:
    return soxr.resample(x.mean(axis=0).astype(np.float32), 48_000, 16_000)


def start_convert(procs, raw: str, out: str, *extra: str):
    p = start(procs, "convert", "--input", raw, "--output", out, "--summary-every", "0.2", *extra)
    p.wait_for("ready")
    return p


def until_end(streams: set[str]):
    def done(msgs: list[Message]) -> bool:
        return {m.stream for m in msgs if m.header.flags & Flag.END} >= streams
    return done


def counts(line: str, key: str) -> dict[str, int]:
    m = re.search(rf" {key}=(\S+)", line)
    return {k: int(v) for k, v in re.findall(r"([a-z0-9_]+)=(\d+)", m.group(1))} if m else {}


def of_stream(msgs: list[Message], stream: str) -> list[Message]:
    return [m for m in msgs if m.stream == stream]


def part(topic: bytes, header: list, payload: bytes) -> bytes:
    """A one-part message built by hand (any header content), as a broken or hostile peer would."""
    h = msgpack.packb(header)
    return topic + b"\0\2" + len(h).to_bytes(2, "little") + h + payload


def malformed(i: int) -> list[list[bytes]]:
    """Bad messages on the valid stream's own id and next seq, one of each kind (each a list of parts)."""
    topic = topic_for(Kind.RAW, "mic")
    ok = ["mic", 5, i, T0, 48000, 2, "s16", "interleaved", 960, i * 960, 0, 0, "test:mic", []]
    good_payload = bytes(960 * 4)

    def changed(k: int, v) -> list:
        h = list(ok)
        h[k] = v
        return h

    return [
        [part(topic, ok, good_payload[:-2])],  # payload length
        [part(topic, changed(6, "s12"), good_payload)],  # unknown format
        [part(topic, changed(5, 0), b"")],  # zero channels
        [part(topic, changed(4, 500)[:8] + [10, i * 960, 0, 0, "x", []], bytes(40))],  # absurd rate: convert refuses
        [part(topic, changed(4, 10**9), good_payload)],  # a rate beyond the protocol
        [topic + b"\0\2\x08\x00\xc1\xff garbage" + good_payload],  # not msgpack
        [topic + b"\0\1\x00\x00"],  # another protocol version
        [part(topic, ok, good_payload), b"extra"],  # two parts
        [topic, msgpack.packb({"v": 1, "k": "raw", "s": "mic"}), good_payload],  # a protocol v1 peer
    ]


def wait_subscriptions(pub: Outbox, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(pub.subscriptions) < n:
        assert time.monotonic() < deadline, f"{len(pub.subscriptions)} subscriptions, expected {n}"
        if pub.socket.poll(100):
            pub.poll_subscriptions()


def test_real_process_converts_exactly_and_rejects_malformed_frames_without_disturbing_the_stream(
    procs, zctx, collector
) -> None:
    raw, out = tcp(), tcp()
    pub = publisher(zctx, raw)
    conv = start_convert(procs, raw, out)
    col = collector(out, Kind.TENSOR)
    conv.wait_for("subscriber joined")
    wait_subscriptions(pub, 1)

    x = stereo(1.2, seed=1)
    frames = valid_chunks("mic", x)
    for i, f in enumerate(frames):
        for b in malformed(i):
            pub.socket.send_multipart(b)
        assert pub.send(f)
    msgs = col.collect(until_end({"mic"}), timeout=20)

    assert not col.bad
    assert [m.header.seq for m in msgs] == list(range(len(msgs)))
    assert not any(m.header.flags & Flag.DISCONTINUITY for m in msgs)
    got = np.concatenate([np.frombuffer(m.payload, "<f4") for m in msgs])
    np.testing.assert_array_equal(got, reference(x))  # bit-identical to resampling the whole signal at once
    for m in msgs:
        h = m.header
        assert (h.rate, h.channels, h.format, h.layout, h.epoch, h.source) == (16000, 1, "f32", "planar", 5, "test:mic")
        assert h.lost == 0
        assert h.t_capture_ns == T0 + h.offset * 10**9 // 16000
        assert h.trace[-1].stage == "convert" and h.trace[-1].t_in_ns <= h.trace[-1].t_out_ns

    n = len(frames)
    line = conv.wait_for(rf"convert: streams=1 in={n} .*bad=(\S*)payload_length={n}")
    assert counts(line, "bad") == {"bad_field": 3 * n, "bad_msgpack": n, "bad_version": n, "bad_part_count": n,
                                   "v1_message": n, "payload_length": n, "rate_unsupported": n}, line
    assert " gaps=0 " in line and "reset" not in line
    assert conv.stop() == 0, conv.log()


def test_torch_view_wraps_a_received_tensor_without_copying(procs, zctx, collector) -> None:
    torch = pytest.importorskip("torch")
    from convert.torch_view import to_torch

    raw, out = tcp(), tcp()
    pub = publisher(zctx, raw)
    conv = start_convert(procs, raw, out, "--channels", "keep", "--chunk-samples", "320")
    col = collector(out, Kind.TENSOR)
    conv.wait_for("subscriber joined")
    wait_subscriptions(pub, 1)
    for f in valid_chunks("mic", stereo(0.2, seed=2)):
        pub.send(f)
    msg = col.collect(until_end({"mic"}))[0]
    wave, rate = to_torch(msg)
    assert rate == 16000 and wave.shape == (2, 320) and wave.dtype == torch.float32
    assert wave.data_ptr() == np.frombuffer(msg.payload, np.uint8).ctypes.data  # same memory: no copy
    np.testing.assert_array_equal(wave.numpy(), np.frombuffer(msg.payload, "<f4").reshape(2, 320))


def test_two_shards_convert_every_stream_exactly_once(procs, zctx, collector) -> None:
    names = [f"mic{i}" for i in range(40)]
    shard_of = {s: bucket_of(s) % 2 for s in names}
    streams = [s for s in names if shard_of[s] == 0][:3] + [s for s in names if shard_of[s] == 1][:3]
    raw, outs = tcp(), [tcp(), tcp()]
    pub = publisher(zctx, raw)
    convs = [start_convert(procs, raw, outs[i], "--shard", f"{i}/2") for i in range(2)]
    cols = [collector(o, Kind.TENSOR) for o in outs]
    for c in convs:
        c.wait_for("subscriber joined")
    # Filtering happens at the publisher: it holds exactly the two shards' prefixes, not "raw/".
    wait_subscriptions(pub, 256)
    assert pub.subscriptions == set(shard_prefixes(Kind.RAW, 0, 2)) | set(shard_prefixes(Kind.RAW, 1, 2))
    assert topic_for(Kind.RAW) not in pub.subscriptions

    signals = {s: stereo(0.3, seed=i) for i, s in enumerate(streams)}
    per_stream = {s: valid_chunks(s, x) for s, x in signals.items()}
    for i in range(len(per_stream[streams[0]])):
        for s in streams:
            assert pub.send(per_stream[s][i])
    for k in range(2):
        mine = {s for s in streams if shard_of[s] == k}
        msgs = cols[k].collect(until_end(mine), timeout=20)
        cols[k].drain(quiet_s=0.3)
        assert {m.stream for m in cols[k].messages} == mine
        for s in mine:
            got = of_stream(cols[k].messages, s)
            assert [m.header.seq for m in got] == list(range(len(got)))
            np.testing.assert_array_equal(np.concatenate([np.frombuffer(m.payload, "<f4") for m in got]),
                                          reference(signals[s]))
        # each converter received only its own streams' frames
        convs[k].wait_for(rf"convert: streams=3 in={3 * len(per_stream[streams[0]])} ")


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--rate", "5"], "--rate"),
        (["--frame-samples", "0"], "--chunk-samples/--frame-samples: 0 is outside"),
        (["--chunk-ms", "nan"], "--chunk-ms/--frame-ms: nan is outside"),
        (["--chunk-ms", "inf"], "--chunk-ms/--frame-ms: inf is outside"),
        (["--idle-flush-s", "nan"], "--idle-flush-s: nan"),
        (["--input", "garbage"], "is not a ZeroMQ endpoint"),
        (["--input", "udp://1.2.3.4:5"], "is not a ZeroMQ endpoint"),
        (["--output", "tcp://127.0.0.1:99999"], "port 99999 is outside"),
        (["--hwm", "99999999999"], "--hwm: 99999999999 is outside"),
        (["--metrics-port", "99999"], "--metrics-port: 99999 is outside"),
        (["--shard", "2/2"], "shard"),
        (["--channels", "left"], "--channels"),
        (["--quality", "best"], "quality"),
    ],
)
def test_bad_flags_exit_2_with_one_clear_sentence(args, needle) -> None:
    r = subprocess.run([sys.executable, "-m", "convert", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
