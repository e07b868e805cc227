"""Per-frame cost of capture's publishing path, by frame size: why 20-80 ms frames and not 10 ms.

For each frame size, 30 s of 48 kHz stereo s16 audio goes through what capture does with
every frame (StreamFramer.push -> protocol.encode -> Publisher.send over TCP) and what the
next stage does on receipt (recv_multipart -> protocol.decode -> samples()). Baseline,
measured in the same run: the same audio sent as bare 20 ms byte chunks over a plain PUB/SUB
pair (no header, no framing, no validation).

Prints, per frame size: microseconds per frame on each side, CPU seconds per second of
audio (x real time, lower is better) and the ratio to the baseline.

    .venv/bin/python bench/bench_capture.py [--seconds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import zmq

from capture.framer import StreamFormat, StreamFramer, frames_for_ms
from common.protocol import decode, encode
from common.publisher import Publisher
from common.sockets import SocketOptions, open_sub

RATE, CHANNELS = 48_000, 2
FRAME_SIZES_MS = (5, 10, 20, 40, 80)


def _pair(ctx: zmq.Context, hwm: int) -> tuple[Publisher, zmq.Socket]:
    opts = SocketOptions(hwm=hwm)
    pub = Publisher(ctx, ["tcp://127.0.0.1:*"], opts)
    addr = pub.socket.getsockopt_string(zmq.LAST_ENDPOINT)
    sub = open_sub(ctx, [addr], [b""], opts)
    pub.wait_for_subscriber(5.0)
    return pub, sub


def _receive(sub: zmq.Socket, n: int, validate: bool) -> float:
    t0 = time.process_time()
    for _ in range(n):
        frames = sub.recv_multipart(copy=False)
        if validate:
            decode(frames).samples()
    return time.process_time() - t0


def bench_baseline(ctx: zmq.Context, audio: bytes, seconds: float) -> dict:
    """Bare 20 ms byte chunks over PUB/SUB: the floor any framing is compared with."""
    step = frames_for_ms(RATE, 20) * CHANNELS * 2
    chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
    pub, sub = _pair(ctx, len(chunks) + 10)
    t0 = time.process_time()
    for c in chunks:
        pub.socket.send(c, copy=False)
    send_s = time.process_time() - t0
    recv_s = _receive(sub, len(chunks), validate=False)
    pub.close()
    sub.close(0)
    return {"frame_ms": 20, "frames": len(chunks), "send_us": 1e6 * send_s / len(chunks),
            "recv_us": 1e6 * recv_s / len(chunks), "x_realtime": (send_s + recv_s) / seconds}


def bench_frames(ctx: zmq.Context, audio: bytes, seconds: float, frame_ms: float) -> dict:
    n = -(-len(audio) // (frames_for_ms(RATE, frame_ms) * CHANNELS * 2))
    pub, sub = _pair(ctx, n + 10)
    sent = 0

    def sink(h, payload):
        nonlocal sent
        pub.send(encode(h, payload))
        sent += 1

    fr = StreamFramer("bench", StreamFormat(RATE, CHANNELS, "s16"), frame_ms, "bench", sink)
    fr.new_epoch()
    block = frames_for_ms(RATE, frame_ms) * CHANNELS * 2  # one device callback per frame, as capture asks
    t0 = time.process_time()
    t_ns = time.time_ns()
    for i in range(0, len(audio), block):
        fr.push(audio[i : i + block], t_ns + (i // (CHANNELS * 2)) * 1_000_000_000 // RATE)
    fr.end()
    send_s = time.process_time() - t0
    recv_s = _receive(sub, sent, validate=True)
    pub.close()
    sub.close(0)
    return {"frame_ms": frame_ms, "frames": sent, "send_us": 1e6 * send_s / sent, "recv_us": 1e6 * recv_s / sent,
            "x_realtime": (send_s + recv_s) / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="audio per run (default 30)")
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
    if args.json:
        print(json.dumps({"audio_s": args.seconds, "rate": RATE, "channels": CHANNELS, "baseline": base,
                          "frames": rows}))
        return
    print(f"{args.seconds:g} s of {RATE} Hz {CHANNELS} ch s16; CPU per second of audio, both sides")
    print(f"{'':>28} {'frames':>7} {'send us/fr':>10} {'recv us/fr':>10} {'x realtime':>10} {'ratio':>6}")
    print(f"{'baseline: bare 20 ms chunks':>28} {base['frames']:>7} {base['send_us']:>10.1f} {base['recv_us']:>10.1f} "
          f"{base['x_realtime']:>10.5f} {1:>6.1f}")
    for r in rows:
        print(f"{'capture path, ' + str(r['frame_ms']) + ' ms':>28} {r['frames']:>7} {r['send_us']:>10.1f} "
              f"{r['recv_us']:>10.1f} {r['x_realtime']:>10.5f} {r['ratio_to_baseline']:>6.1f}")


if __name__ == "__main__":
    main()
