"""Per-chunk cost of capture's publishing path, by chunk size: why 20-80 ms chunks and not 10 ms.

1. Publishing path. For each chunk size, ``--seconds`` of 48 kHz stereo s16 audio goes
   through what capture does with every chunk (StreamFramer.push -> codec.encode_audio ->
   Outbox.send over TCP) and what the next stage does on receipt (Inbox.receive: receive +
   codec.decode, then Audio.samples()). Baseline, measured in the same run: the same audio
   sent as bare 20 ms byte chunks over a plain pyzmq PUB/SUB pair (no header, no framing,
   no validation).

2. Capture's whole logic, flooded, in-process (no socket): capture.runner.CaptureLogic with
   ``--sources`` synth sources at 48 kHz stereo s16 in ``--fast`` mode (framing, numbering,
   trace, encoding, heartbeats), CPU per chunk; once with ``synth:noise`` (what
   bench_capacity.py's live capture runs: generating the noise is part of it) and once with
   ``synth:silence`` (generation next to free: the cost any source pays).
   :func:`logic_cpu_per_chunk` is reused by bench_capacity.py as capture's flooded cost.

Prints, per chunk size: microseconds per chunk on each side, CPU seconds per second of
audio (x real time, lower is better) and the ratio to the baseline.

    .venv/bin/python bench/bench_capture.py [--seconds 30] [--sources 16] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib as bl
import numpy as np
import zmq

sys.path.insert(0, str(bl.ROOT))

from capture.framer import StreamFormat, StreamFramer, samples_for_ms
from common.observe.metrics import StageMetrics
from common.transport.inbox import Inbox, Poller
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import Kind, encode_audio

RATE, CHANNELS = 48_000, 2
FRAME_SIZES_MS = (5, 10, 20, 40, 80)


def _metrics() -> StageMetrics:
    return StageMetrics("bench", summary_every_s=1e9)


def bench_baseline(ctx: zmq.Context, audio: bytes, seconds: float) -> dict:
    """Bare 20 ms byte chunks over PUB/SUB: the floor any framing is compared with."""
    step = samples_for_ms(RATE, 20) * CHANNELS * 2
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, len(chunks) + 10)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, len(chunks) + 10)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    pub.recv()  # the subscription
    t0 = time.process_time()
    for c in chunks:
        pub.send(c, copy=False)
    send_s = time.process_time() - t0
    t0 = time.process_time()
    for _ in chunks:
        sub.recv(copy=False)
    recv_s = time.process_time() - t0
    pub.close(0)
    sub.close(0)
    return {"frame_ms": 20, "frames": len(chunks), "send_us": 1e6 * send_s / len(chunks),
            "recv_us": 1e6 * recv_s / len(chunks), "x_realtime": (send_s + recv_s) / seconds}


def bench_frames(ctx: zmq.Context, audio: bytes, seconds: float, frame_ms: float) -> dict:
    """StreamFramer.push -> encode_audio -> Outbox.send, then Inbox.receive -> samples()."""
    n = -(-len(audio) // (samples_for_ms(RATE, frame_ms) * CHANNELS * 2))
    opts = SocketOptions(hwm=n + 10, linger_ms=0)
    poller = Poller()
    pub = Outbox(ctx, ["tcp://127.0.0.1:*"], opts, _metrics())
    inbox = Inbox(ctx, [pub.socket.getsockopt_string(zmq.LAST_ENDPOINT)], [b""], opts, _metrics(), poller, 0)
    pub.wait_for_subscriber(10.0)
    fr = StreamFramer("bench", StreamFormat(RATE, CHANNELS, "s16"), frame_ms, "bench")
    fr.new_epoch()
    block = samples_for_ms(RATE, frame_ms) * CHANNELS * 2  # one device callback per chunk, as capture asks
    sent = 0
    t0 = time.process_time()
    t_ns = time.time_ns()
    for i in range(0, len(audio), block):
        chunks = fr.push(audio[i : i + block], t_ns + (i // (CHANNELS * 2)) * 1_000_000_000 // RATE)
        for h, payload in chunks:
            pub.send(encode_audio(Kind.RAW, h, payload))
        sent += len(chunks)
    for h, payload in fr.end():
        pub.send(encode_audio(Kind.RAW, h, payload))
        sent += 1
    send_s = time.process_time() - t0
    got = 0
    t0 = time.process_time()
    deadline = time.monotonic() + 10.0
    while got < sent and time.monotonic() < deadline:
        batch = inbox.receive(1.0)  # may return empty: a wake-up for the link monitor
        for msg in batch:
            msg.samples()
        got += len(batch)
    recv_s = time.process_time() - t0
    inbox.close()
    pub.close(0)
    return {"frame_ms": frame_ms, "frames": sent, "received": got, "send_us": 1e6 * send_s / sent,
            "recv_us": 1e6 * recv_s / max(got, 1), "x_realtime": (send_s + recv_s) / seconds}


def logic_cpu_per_chunk(sources: int, seconds: float, chunk_ms: float = 20.0, wave: str = "noise",
                        rate: int = RATE, channels: int = CHANNELS) -> dict[str, float]:
    """CaptureLogic (capture.runner) over ``sources`` synth sources in --fast mode, no socket:
    CPU us per raw chunk (framing, numbering, trace, encode_audio, heartbeats, and the synth's
    own signal generation), over ``seconds`` of audio per source."""
    from capture.runner import CaptureLogic, SourceQueue
    from capture.sources import make_source
    from capture.sources.base import CaptureOptions
    from capture.spec import parse_sources
    from common.runtime.stage import Now, StopFlag

    opts = CaptureOptions(chunk_ms=chunk_ms, fast=True, rate=rate, channels=channels, duration_s=seconds)
    srcs = [make_source(s, opts) for s in parse_sources([f"synth:{wave}#c{i}" for i in range(sources)], [])]
    for s in srcs:
        s.prepare()
    queue = SourceQueue(Poller())
    stop = StopFlag(install=False)
    logic = CaptureLogic(srcs, queue.loop, _metrics(), stop, chunk_ms, lambda: True, wait_subscriber_s=0)
    chunks = 0
    t0 = time.process_time()
    now = Now.read()
    logic.begin(now)
    while not stop:
        out = logic.tick(Now.read())
        chunks += sum(1 for m in out if m.startswith(b"raw/"))
    cpu = time.process_time() - t0
    logic.finish(Now.read())
    queue.close()
    us = cpu / max(chunks, 1) * 1e6
    return {"sources": sources, "chunk_ms": chunk_ms, "wave": wave, "chunks": chunks, "cpu_us_per_chunk": us,
            "rt_streams_per_core": bl.ratio(chunk_ms * 1000, us)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per run (default 30)")
    ap.add_argument("--sources", type=int, default=16, help="synth sources in the logic measurement (default 16)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    audio = rng.integers(-20000, 20000, (int(args.seconds * RATE), CHANNELS), dtype=np.int16).tobytes()
    ctx = zmq.Context()
    try:
        base = bench_baseline(ctx, audio, args.seconds)
        rows = [bench_frames(ctx, audio, args.seconds, ms) for ms in FRAME_SIZES_MS]
    finally:
        ctx.term()
    for r in rows:
        r["ratio_to_baseline"] = r["x_realtime"] / base["x_realtime"]
    logic_s = max(1.0, args.seconds / 10)
    logic = {w: logic_cpu_per_chunk(args.sources, logic_s, 20.0, w) for w in ("noise", "silence")}
    res = {"audio_s": args.seconds, "rate": RATE, "channels": CHANNELS, "baseline": base, "frames": rows,
           "logic": logic}
    table = [("path", "chunk ms", "chunks", "send us/chunk", "recv us/chunk", "x realtime", "x baseline")]
    table.append(("bare 20 ms byte chunks (baseline)", "20", str(base["frames"]), bl.fmt(base["send_us"]),
                  bl.fmt(base["recv_us"]), bl.fmt(base["x_realtime"]), "1"))
    for r in rows:
        table.append(("framer + encode + Outbox -> Inbox + samples()", f"{r['frame_ms']:g}", str(r["frames"]),
                      bl.fmt(r["send_us"]), bl.fmt(r["recv_us"]), bl.fmt(r["x_realtime"]),
                      bl.fmt(r["ratio_to_baseline"])))
    for w, r in logic.items():
        table.append((f"CaptureLogic, {r['sources']} synth:{w} sources, flooded", f"{r['chunk_ms']:g}",
                      str(r["chunks"]), bl.fmt(r["cpu_us_per_chunk"]), "", bl.fmt(r["cpu_us_per_chunk"] / 20e3),
                      bl.fmt(bl.ratio(r["cpu_us_per_chunk"], base["send_us"]))))
    bl.emit("capture", res, args.json, table)


if __name__ == "__main__":
    main()
