"""The convert stage's cost per frame, whole path, next to the bare pyzmq floor of the same run.

Three real processes per run, on tcp loopback: a feeder (XPUB, pre-encoded raw frames of
``--streams`` interleaved streams, flooded), the process under test, and a sink (SUB that
counts). The process under test is either

- ``floor``: a bare pyzmq relay: recv_multipart(copy=False), then send_multipart of a
  pre-built message the size of a tensor frame, for every raw frame. Nothing less is a
  receive + send stage;
- ``convert``: the real ``python -m convert`` (receive, validate, convert, resample, frame,
  send), 48 kHz stereo s16 -> 16 kHz mono f32, 20 ms input frames, 32 ms output frames;
- ``passthrough``: ``python -m convert`` on 16 kHz mono s16 (no resampling).

CPU time of the process under test (from /proc) over the run / raw frames = CPU us per
frame; real-time streams per core = 20 ms / that. frames/s is raw frames over the sink's
first-to-last wall time. Best of ``--repeat`` runs (shared, noisy machine: read the ratios).

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

import numpy as np
import zmq

import benchlib as bl

IN_RATE, OUT_RATE = 48_000, 16_000
FRAME_MS = 20
TENSOR_BYTES = 512 * 4


def raw_messages(streams: int, frames: int, rate: int, channels: int) -> list[list[bytes]]:
    """Pre-encoded raw frames, streams interleaved: noise + tone on the s16 grid."""
    sys.path.insert(0, str(bl.ROOT))
    from common.protocol import Header, Kind, encode

    n = rate * FRAME_MS // 1000
    rng = np.random.default_rng(0)
    block = (rng.standard_normal((frames * n, channels)) * 3000).astype("<i2")
    out = []
    for i in range(frames):
        payload = block[i * n : (i + 1) * n].tobytes()
        for s in range(streams):
            h = Header(kind=Kind.RAW, stream=f"bench{s}", epoch=1, seq=i, t_capture_ns=time.time_ns(), rate=rate,
                       channels=channels, format="s16", layout="interleaved", frames=n, offset=i * n, source="bench")
            out.append([bytes(f) for f in encode(h, payload)])
    return out


# ---------------------------------------------------------------------------------------
# roles

def role_feed(addr: str, streams: int, frames: int, rate: int, channels: int) -> None:
    """Bind, wait for a subscriber and for 'go' on stdin, flood every frame, wait for stdin EOF."""
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
        sock.send_multipart(m, copy=False)
    print(json.dumps({"sent": len(msgs)}), flush=True)
    sys.stdin.read()
    sock.close()
    ctx.term()


def role_relay(inp: str, out: str) -> None:
    """The floor: bare pyzmq SUB -> XPUB, one tensor-sized message out per message in."""
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
    header, payload = bytes(200), bytes(TENSOR_BYTES)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while True:
        if not poller.poll(100):
            continue
        frames = sub.recv_multipart(copy=False)
        pub.send_multipart([frames[0].bytes.replace(b"raw/", b"tensor/", 1), header, payload], copy=False)


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
        sub.recv_multipart(copy=False)
        t_last = time.perf_counter()
        if n == 0:
            t_first = t_last
        n += 1
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
            stage = bl.Proc([sys.executable, "-m", "convert", "--input", raw_addr, "--output", out_addr,
                             "--hwm", "1000000", "--summary-every", "3600", "--idle-flush-s", "3600"])
        procs.append(stage)
        stage.wait_for("ready", timeout=60)
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
    us = cpu / n_in * 1e6
    return {"cpu_us_per_frame": us, "rt_streams_per_core": FRAME_MS * 1000 / us, "fps": n_in / max(s["wall_s"], 1e-9),
            "frames_in": n_in, "messages_out": s["received"]}


def in_process(frames: int = 3000) -> dict[str, float]:
    """Where the time goes, in-process, CPU us per raw frame: decode, Converter.handle, encode."""
    sys.path.insert(0, str(bl.ROOT))
    from common.metrics import StageMetrics
    from common.protocol import decode
    from convert.worker import Converter, ConvertConfig

    msgs = raw_messages(1, frames, IN_RATE, 2)
    conv = Converter(ConvertConfig(), StageMetrics("convert"))
    t0 = time.process_time()
    decoded = [decode(m) for m in msgs]
    t1 = time.process_time()
    for m in decoded:
        conv.handle(m, 0)
    t2 = time.process_time()
    return {"decode_us": (t1 - t0) / frames * 1e6, "handle_us": (t2 - t1) / frames * 1e6}


def seed_comparison() -> tuple[dict, list] | None:
    """bench_peers.bench_convert: the seed article's method vs convert's, on real audio."""
    try:
        import bench_peers
    except ImportError as e:  # torch missing, or the peers bench moved
        print(f"seed comparison skipped: {e}", file=sys.stderr)
        return None
    return bench_peers.bench_convert()


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
    res["in_process"] = in_process()
    label = {"floor": "bare pyzmq recv+send (baseline)", "convert": "convert 48k stereo s16 -> 16k mono f32",
             "passthrough": "convert 16k mono s16 -> 16k mono f32"}
    table = [("path", "CPU us/frame", "RT streams/core", "x floor CPU", "frames/s", "x floor frames/s", "out msgs")]
    for v in variants:
        r = best[v]
        table.append((label[v], bl.fmt(r["cpu_us_per_frame"]), bl.fmt(r["rt_streams_per_core"]),
                      bl.fmt(bl.ratio(r["cpu_us_per_frame"], floor["cpu_us_per_frame"])), bl.fmt(r["fps"]),
                      bl.fmt(bl.ratio(r["fps"], floor["fps"])), str(r["messages_out"])))
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
