"""Classify: CPU time per window for each model, unbatched vs batched, as real-time streams per core.

For every model (one thread, as a worker runs):

- ``unbatched``: the model called with one window at a time (classify.batching.run_batch),
  each window from its own stream with its own state -- the baseline of this run.
- ``batched B``: one call serves B streams' windows (B = 8, 32, and the model's cap).
- ``stage``: the whole worker path in-process -- message validation (protocol.decode) and
  ClassifyWorker.handle() on prebuilt tensor messages (32 ms, convert's default) of S streams, windowing,
  batching, events, result encoding and send on an inproc socket -- CPU per window and
  streams per core, without the network (bench_floor.py measures the hop itself).

streams per core = hop duration / CPU per window: how many live streams one core keeps up with.
The batched gain is unbatched / batched CPU per window, measured in the same run.

    .venv/bin/python bench/bench_classify.py [--models vad,yamnet,level] [--seconds 4] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib as bl
import numpy as np

sys.path.insert(0, str(bl.ROOT))

import torch

from classify.batching import run_batch
from classify.models import load_model

torch.set_num_threads(1)


def signal(n_streams: int, frames: int, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: noise under a slow envelope, different per stream (n_streams, frames)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 16_000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (1.5 + rng.random((n_streams, 1))) * t)
    return (0.2 * env * rng.standard_normal((n_streams, frames))).astype(np.float32)


def model_cpu_per_window(model, batch: int, windows: int) -> float:
    """CPU seconds per window when ``batch`` streams share each call (best of 3 passes)."""
    spec = model.spec
    audio = signal(batch, spec.window + spec.hop * 8)
    states = [model.new_state() for _ in range(batch)]
    wins = [[audio[i, None, k * spec.hop : k * spec.hop + spec.window].copy() for i in range(batch)] for k in range(8)]
    calls = max(2, windows // batch)
    run_batch(model, wins[0], states)  # warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for c in range(calls):
            run_batch(model, wins[c % 8], states)
        best = min(best, (time.process_time() - t0) / (calls * batch))
    return best


def stage_cpu_per_window(model, n_streams: int, seconds: float, frame_ms: float = 32.0) -> tuple[float, int]:
    """CPU seconds per window of the whole worker path over ``n_streams`` tensor streams of ``frame_ms`` frames."""
    import zmq

    from classify.worker import ClassifyWorker, WorkerConfig
    from common.metrics import StageMetrics
    from common.protocol import Header, Hop, Kind, decode, encode

    spec = model.spec
    chunk = int(spec.rate * frame_ms / 1000)
    n_msgs = int(seconds * 1000 / frame_ms)
    audio = signal(n_streams, chunk * n_msgs, seed=1)
    t0 = time.time_ns()
    msgs = []
    for k in range(n_msgs):
        for s in range(n_streams):
            h = Header(Kind.TENSOR, f"s{s}", 1, k, t0 + k * chunk * 1_000_000_000 // spec.rate, rate=spec.rate, channels=1, format="f32",
                       layout="planar", frames=chunk, offset=k * chunk, trace=[Hop("convert", t0, t0)])
            msgs.append([bytes(f) for f in encode(h, audio[s : s + 1, k * chunk : (k + 1) * chunk])])
    ctx = zmq.Context()
    cfg = WorkerConfig(inputs=["inproc://bench-tensor"], outputs=["inproc://bench-result"], max_lag_ms=1e9)
    worker = ClassifyWorker(model, cfg, StageMetrics("bench"), ctx)
    try:
        start = time.process_time()
        for k in range(n_msgs):  # one message per stream, then serve: a worker keeping up
            for frames in msgs[k * n_streams : (k + 1) * n_streams]:
                worker.handle(decode(frames), time.time_ns())  # validation included, as Receiver does
            worker.serve()
        cpu = time.process_time() - start
    finally:
        worker.close()
        ctx.destroy(linger=0)
    return cpu / max(worker.windows_done, 1), worker.windows_done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vad,vad-onnx,yamnet,level,wakeword")
    ap.add_argument("--windows", type=int, default=512, help="windows per measurement (default 512)")
    ap.add_argument("--streams", type=int, default=64, help="streams in the stage measurement (default 64)")
    ap.add_argument("--seconds", type=float, default=3.0, help="audio per stream in the stage measurement")
    ap.add_argument("--frame-ms", type=float, default=32.0, help="tensor frame length in the stage measurement "
                    "(default 32, convert's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    t0 = time.process_time()
    for _ in range(200):
        a @ a
    ref_us = (time.process_time() - t0) / 200 * 1e6  # machine-speed reference: one 256x256 f32 matmul

    rows = [("model", "hop ms", "mode", "batch", "CPU us/window", "streams/core", "gain vs unbatched")]
    results: dict = {"ref_matmul256_us": round(ref_us, 1), "models": {}}
    for name in args.models.split(","):
        try:
            model = load_model(name)
        except ImportError as e:
            print(f"# {name}: skipped ({e})", file=sys.stderr)
            continue
        spec = model.spec
        hop_s = spec.hop / spec.rate
        res: dict = {"hop_s": hop_s, "window_s": spec.window / spec.rate}
        windows = args.windows if name != "wakeword" else 64
        base = model_cpu_per_window(model, 1, min(windows, 256))
        res["unbatched_us"] = base * 1e6
        rows.append((name, f"{hop_s * 1e3:g}", "model", "1", bl.fmt(base * 1e6), bl.fmt(hop_s / base), "1 (baseline)"))
        for b in sorted({8, 32, min(spec.max_batch, 128)}):
            if b > spec.max_batch or (name == "wakeword" and b > 8):
                continue
            cpu = model_cpu_per_window(model, b, windows)
            res[f"batch{b}_us"] = cpu * 1e6
            rows.append((name, f"{hop_s * 1e3:g}", "model", str(b), bl.fmt(cpu * 1e6), bl.fmt(hop_s / cpu),
                         bl.fmt(bl.ratio(base, cpu))))
        n_streams = args.streams if name != "wakeword" else 8
        stage, _ = stage_cpu_per_window(model, n_streams, args.seconds, args.frame_ms)
        res["stage_us"] = stage * 1e6
        res["stage_streams_per_core"] = hop_s / stage
        res["stage_streams"] = n_streams
        rows.append((name, f"{hop_s * 1e3:g}", f"stage ({n_streams} streams)", "auto", bl.fmt(stage * 1e6),
                     bl.fmt(hop_s / stage), bl.fmt(bl.ratio(base, stage))))
        results["models"][name] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
        model.close()
    bl.emit("classify", results, args.json, rows)


if __name__ == "__main__":
    main()
