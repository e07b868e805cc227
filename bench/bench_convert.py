"""The convert stage's cost per message, whole path, next to a bare single-part relay of the same run.

Three real processes per run, on tcp loopback: a feeder (XPUB, pre-encoded protocol v2 raw
messages of ``--streams`` interleaved streams, flooded), the process under test, and a sink
(SUB that counts). The process under test is either

- ``floor``: a bare pyzmq relay: recv one part, send one part (a new topic + a message the
  size of a tensor message) for every raw message. Nothing less is a receive + send stage;
- ``convert``: the real ``python -m convert`` (Inbox: receive + validate; ConvertLogic:
  convert, resample, frame, encode; Outbox: send), 48 kHz stereo s16 -> 16 kHz mono f32,
  20 ms input chunks, 32 ms output chunks;
- ``passthrough``: ``python -m convert`` on 16 kHz mono s16 (no resampling).

CPU time of the process under test (from /proc) over the run / raw messages = CPU us per
message; real-time streams per core = 20 ms / that. messages/s is raw messages over the
sink's first-to-last wall time. Best of ``--repeat`` alternating runs (shared, noisy
machine: read the ratios).

In-process (no sockets), protocol v2's equivalent of the old Converter.handle: per raw
message, ``codec.decode`` and ``ConvertLogic.handle`` on one batch per round of all
streams (what an Inbox wake-up hands the logic), encoding included. :func:`in_process`
is reused by bench_capacity.py as convert's flooded cost.

Then the seed article's method vs convert's on real audio, speed and SNR against
whole-signal resampling (bench_peers.py's implementation, which needs torch; bench only).

    .venv/bin/python bench/bench_convert.py [--streams 16] [--frames 400] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import benchlib as bl
import numpy as np
import zmq

sys.path.insert(0, str(bl.ROOT))

IN_RATE, OUT_RATE = 48_000, 16_000
FRAME_MS = 20
TENSOR_BYTES = 512 * 4  # one 32 ms tensor chunk at 16 kHz mono f32
TENSOR_HEADER_BYTES = 110  # about what convert's tensor header with a two-hop trace takes


def raw_messages(streams: int, frames: int, rate: int, channels: int, frame_ms: float = FRAME_MS,
                 t0_ns: int | None = None) -> list[bytes]:
    """Pre-encoded protocol v2 raw messages (noise on the s16 grid), streams interleaved:
    message ``i * streams + s`` is chunk ``i`` of stream ``bench{s}``."""
    from common.wire import AudioHeader, Hop, Kind, Layout, SampleFormat, encode_audio

    n = round(rate * frame_ms / 1000)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((min(frames, 50) * n, channels)) * 3000).astype("<i2")
    t0 = time.time_ns() if t0_ns is None else t0_ns
    out = []
    for i in range(frames):
        k = i % min(frames, 50)
        payload = block[k * n : (k + 1) * n].tobytes()
        t = t0 + i * n * 1_000_000_000 // rate
        for s in range(streams):
            h = AudioHeader(stream=f"bench{s}", epoch=1, seq=i, t_capture_ns=t, rate=rate, channels=channels,
                            format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=n, offset=i * n,
                            source="bench", trace=[Hop("capture", t, t)])
            out.append(encode_audio(Kind.RAW, h, payload))
    return out


# ---------------------------------------------------------------------------------------
# roles

def role_feed(addr: str, streams: int, frames: int, rate: int, channels: int) -> None:
    """Bind, wait for a subscriber and for 'go' on stdin, flood every message, wait for stdin EOF."""
    msgs = raw_messages(streams, frames, rate, channels)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(addr)
    print("bound", flush=True)
    sock.recv()  # first subscription
    print("subscribed", flush=True)
    sys.stdin.readline()
    for m in msgs:
        sock.send(m, copy=False)
    print(json.dumps({"sent": len(msgs)}), flush=True)
    sys.stdin.read()
    sock.close()
    ctx.term()


def role_relay(inp: str, out: str) -> None:
    """The floor: bare pyzmq SUB -> XPUB, one part each way, one tensor-sized message out per message in."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"raw/")
    sub.connect(inp)
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(out)
    print("ready", file=sys.stderr, flush=True)
    pub.recv()
    print("subscriber joined", file=sys.stderr, flush=True)
    tail = b"\x00\x02" + TENSOR_HEADER_BYTES.to_bytes(2, "little") + bytes(TENSOR_HEADER_BYTES + TENSOR_BYTES)
    while True:
        try:  # poll only when the queue is empty, as the Inbox does
            data = sub.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            sub.poll(100)
            continue
        buf = data.buffer
        nul = bytes(buf[:161]).find(b"\0")  # the topic ends at the first NUL
        pub.send(b"".join((b"tensor/", buf[4:nul], tail)))


def role_sink(addr: str, idle_s: float) -> None:
    """Count messages until ``idle_s`` passes without one after the first; print the figures."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(addr)
    print("connected", flush=True)
    n, t_first, t_last = 0, 0.0, 0.0
    while True:
        if not sub.poll(int(idle_s * 1000) if n else 60_000):
            break
        while True:
            try:
                sub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            n += 1
        t_last = time.perf_counter()
        if not t_first:
            t_first = t_last
    print(json.dumps({"received": n, "wall_s": t_last - t_first}), flush=True)


# ---------------------------------------------------------------------------------------
# orchestration

def run_once(variant: str, streams: int, frames: int) -> dict:
    rate, channels = (OUT_RATE, 1) if variant == "passthrough" else (IN_RATE, 2)
    raw_addr, out_addr = bl.free_tcp(), bl.free_tcp()
    me = bl.BENCH / "bench_convert.py"
    feed = bl.python_script(me, "--role", "feed", "--addr", raw_addr, "--streams", str(streams), "--frames",
                            str(frames), "--rate", str(rate), "--channels", str(channels), stdin=subprocess.PIPE)
    procs = [feed]
    try:
        feed.wait_for("^bound", timeout=60, stdout=True)
        if variant == "floor":
            stage = bl.python_script(me, "--role", "relay", "--addr", raw_addr, "--out", out_addr)
        else:
            stage = bl.python_module("convert", "--input", raw_addr, "--output", out_addr, "--hwm", "1000000",
                                     "--summary-every", "3600", "--idle-flush-s", "3600")
        procs.append(stage)
        stage.wait_for(r"\bready\b", timeout=60)
        sink = bl.python_script(me, "--role", "sink", "--addr", out_addr)
        procs.append(sink)
        stage.wait_for("subscriber joined", timeout=30)
        feed.wait_for("^subscribed", timeout=30, stdout=True)
        cpu0 = bl.proc_cpu_s(stage.pid)
        feed.proc.stdin.write(b"go\n")
        feed.proc.stdin.flush()
        s = sink.json_result(300)
        cpu = bl.proc_cpu_s(stage.pid) - cpu0
    finally:
        for p in reversed(procs):
            p.stop()
    n_in = streams * frames
    us = cpu / n_in * 1e6  # /proc counts 10 ms ticks: a tiny run may read 0
    return {"cpu_us_per_frame": us, "rt_streams_per_core": bl.ratio(FRAME_MS * 1000, us),
            "fps": n_in / max(s["wall_s"], 1e-9), "frames_in": n_in, "messages_out": s["received"]}


def in_process(streams: int = 16, frames: int = 200, frame_ms: float = FRAME_MS, quality: str = "HQ",
               rate: int = IN_RATE, channels: int = 2, repeat: int = 3) -> dict[str, float]:
    """Convert's flooded cost in-process, CPU us per raw message (``rate`` Hz ``channels`` s16 in
    ``frame_ms`` chunks -> 16 kHz mono f32 at ``quality``): ``decode_us`` (codec.decode, what the
    Inbox pays per message besides the socket) and ``handle_us`` (ConvertLogic.handle with one
    batch per round of all ``streams``, tensor encoding included). Best of ``repeat`` passes,
    each on fresh logic. ``rt_streams_per_core`` = chunk duration / (decode + handle)."""
    from common.observe.metrics import StageMetrics
    from common.runtime.stage import Now
    from common.wire import decode
    from convert.stream import ConvertConfig
    from convert.worker import ConvertLogic

    msgs = raw_messages(streams, frames, rate, channels, frame_ms)
    best_dec = best_handle = float("inf")
    out_msgs = 0
    for _ in range(repeat):
        logic = ConvertLogic(ConvertConfig(quality=quality), StageMetrics("bench", summary_every_s=1e9))
        t0 = time.process_time()
        decoded = [decode(m) for m in msgs]
        t1 = time.process_time()
        now = Now.read()
        out_msgs = 0
        for i in range(0, len(decoded), streams):
            out_msgs += len(logic.handle(decoded[i : i + streams], now))
        t2 = time.process_time()
        best_dec, best_handle = min(best_dec, t1 - t0), min(best_handle, t2 - t1)
    n = len(msgs)
    dec_us, handle_us = best_dec / n * 1e6, best_handle / n * 1e6
    return {"decode_us": dec_us, "handle_us": handle_us, "total_us": dec_us + handle_us,
            "rt_streams_per_core": frame_ms * 1000 / (dec_us + handle_us), "frame_ms": frame_ms, "quality": quality,
            "streams": streams, "messages_in": n, "messages_out": out_msgs}


def seed_comparison() -> tuple[dict, list] | None:
    """bench_peers.bench_convert: the seed article's method vs convert's, on real audio."""
    try:
        import bench_peers

        return bench_peers.bench_convert()
    except ImportError as e:  # torch missing
        print(f"seed comparison skipped: {e}", file=sys.stderr)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=16, help="interleaved streams (default 16)")
    ap.add_argument("--frames", type=int, default=400, help="20 ms frames per stream (default 400 = 8 s)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant, the best kept (default 2)")
    ap.add_argument("--skip-seed", action="store_true", help="skip the seed-article comparison (needs torch)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--role", choices=("feed", "relay", "sink"), help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=IN_RATE, help=argparse.SUPPRESS)
    ap.add_argument("--channels", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "feed":
        role_feed(args.addr, args.streams, args.frames, args.rate, args.channels)
        return 0
    if args.role == "relay":
        role_relay(args.addr, args.out)
        return 0
    if args.role == "sink":
        role_sink(args.addr, 1.5)
        return 0

    variants = ("floor", "convert", "passthrough")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeat):
        for v in variants:  # alternating, so load changes hit every variant alike
            runs[v].append(run_once(v, args.streams, args.frames))
    best = {v: min(r, key=lambda x: x["cpu_us_per_frame"]) | {"fps": max(x["fps"] for x in r)} for v, r in runs.items()}
    floor = best["floor"]
    res: dict = {"streams": args.streams, "frames_per_stream": args.frames, "preliminary": True, **best}
    res["convert_cpu_vs_floor"] = bl.ratio(best["convert"]["cpu_us_per_frame"], floor["cpu_us_per_frame"])
    res["passthrough_fps_vs_floor"] = bl.ratio(best["passthrough"]["fps"], floor["fps"])
    res["target_rt_streams_per_core"] = 600
    ip = res["in_process"] = in_process(args.streams, min(args.frames, 200))
    label = {"floor": "bare pyzmq recv+send, one part (baseline)", "convert": "convert 48k stereo s16 -> 16k mono f32",
             "passthrough": "convert 16k mono s16 -> 16k mono f32"}
    table = [("path", "CPU us/frame", "RT streams/core", "x floor CPU", "frames/s", "x floor frames/s", "out msgs")]
    for v in variants:
        r = best[v]
        table.append((label[v], bl.fmt(r["cpu_us_per_frame"]), bl.fmt(r["rt_streams_per_core"]),
                      bl.fmt(bl.ratio(r["cpu_us_per_frame"], floor["cpu_us_per_frame"])), bl.fmt(r["fps"]),
                      bl.fmt(bl.ratio(r["fps"], floor["fps"])), str(r["messages_out"])))
    table.append(("in-process: codec.decode + ConvertLogic.handle (48k stereo)", bl.fmt(ip["total_us"]),
                  bl.fmt(ip["rt_streams_per_core"]), bl.fmt(bl.ratio(ip["total_us"], floor["cpu_us_per_frame"])),
                  "", "", str(ip["messages_out"])))
    table.append(("in-process: of which codec.decode", bl.fmt(ip["decode_us"]), "", "", "", "", ""))
    if not args.skip_seed:
        seed = seed_comparison()
        if seed is not None:
            res["seed_vs_convert"], seed_rows = seed
            if not args.json:
                print(bl.format_table(seed_rows))
    bl.emit("convert", res, args.json, table)
    if not args.json:
        print("preliminary: shared 2-core machine; compare the ratios, not the absolute figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
