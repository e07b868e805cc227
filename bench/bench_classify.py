"""Classify: CPU time per window for each model, unbatched vs batched, and the stage vs the model alone.

For every model (one thread, as a worker runs):

- ``unbatched``: the model called with one window at a time (classify.batching.run_batch),
  each window from its own stream with its own state -- the baseline of this run.
- ``batched B``: one call serves B streams' windows (B = 8, 32, and the model's cap).
- ``stage``: the whole classify logic in-process, protocol v2's equivalent of the old
  ClassifyWorker.handle: per tensor message codec.decode (what the Inbox validates), then
  ClassifyLogic.handle on one batch per round of all S streams (prebuilt 32 ms tensors,
  convert's default): windows, batching across streams, the model, events, result
  encoding. No sockets (bench_floor.py measures a hop). Its mean batch (windows per model
  call) is reported, and the model alone is measured again at that batch size in the same
  run (``model at stage batch``): stage / model at the same batch is what the stage adds.

streams per core = hop duration / CPU per window: how many live streams one core keeps up with.
The batched gain is unbatched / batched CPU per window, measured in the same run.
:func:`stage_cpu_per_window` and :func:`model_cpu_per_window` are reused by bench_capacity.py.

    .venv/bin/python bench/bench_classify.py [--models vad,vad-onnx,yamnet] [--seconds 3] [--json]
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
    """Speech-like test audio at 16 kHz: noise under a 1.5-2.5 Hz envelope (n_streams, frames)."""
    return bl.enveloped_noise(n_streams, frames, 16_000, 1.5, seed)


def model_cpu_per_window(model, batch: int, windows: int) -> float:
    """CPU seconds per window when ``batch`` streams share each call (best of 3 passes)."""
    spec = model.spec
    audio = signal(batch, spec.window + spec.hop * 8)
    states = [model.new_state() for _ in range(batch)]
    # 8 sets of (batch, 1, window) windows: window k of every stream
    wins = [np.stack([audio[i, None, k * spec.hop : k * spec.hop + spec.window] for i in range(batch)])
            for k in range(8)]
    calls = max(2, windows // batch)
    run_batch(model, wins[0], states)  # warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for c in range(calls):
            run_batch(model, wins[c % 8], states)
        best = min(best, (time.process_time() - t0) / (calls * batch))
    return best


def stage_cpu_per_window(model, n_streams: int, seconds: float, frame_ms: float = 32.0,
                         batch_wait_ms: float = 0.0) -> dict[str, float]:
    """The whole classify logic over ``n_streams`` tensor streams of ``frame_ms`` messages (flooded).

    Returns ``cpu_s_per_window`` (decode + ClassifyLogic.handle, CPU s per result made),
    ``windows``, ``batches`` (model calls), ``mean_batch`` (windows per call) and
    ``model_cpu_s_per_window`` (the part of it spent inside the model).
    """
    from classify.worker import ClassifyLogic, WorkerConfig
    from common.observe.metrics import StageMetrics
    from common.runtime.stage import Now
    from common.wire import AudioHeader, Hop, Kind, Layout, SampleFormat, decode, encode_audio

    spec = model.spec
    chunk = int(spec.rate * frame_ms / 1000)
    n_msgs = max(1, int(seconds * 1000 / frame_ms))
    audio = signal(n_streams, chunk * n_msgs, seed=1)
    t0 = time.time_ns()
    rounds = []
    for k in range(n_msgs):
        t = t0 + k * chunk * 1_000_000_000 // spec.rate
        rounds.append([encode_audio(Kind.TENSOR, AudioHeader(
            stream=f"s{s}", epoch=1, seq=k, t_capture_ns=t, rate=spec.rate, channels=1, format=SampleFormat.F32,
            layout=Layout.PLANAR, samples=chunk, offset=k * chunk, trace=[Hop("convert", t0, t0)]),
            audio[s : s + 1, k * chunk : (k + 1) * chunk]) for s in range(n_streams)])
    logic = ClassifyLogic(model, WorkerConfig(max_lag_ms=0, idle_s=0, batch_wait_ms=batch_wait_ms),
                          StageMetrics("bench", summary_every_s=1e9))
    start = time.process_time()
    for msgs in rounds:  # every stream's next tensor arrives, then the worker serves: a worker keeping up
        logic.handle([decode(m) for m in msgs], Now.read())
    cpu = time.process_time() - start
    done = max(logic.windows_done, 1)
    return {"cpu_s_per_window": cpu / done, "windows": logic.windows_done, "batches": logic.batches,
            "mean_batch": logic.windows_done / max(logic.batches, 1),
            "model_cpu_s_per_window": logic.model_cpu_s / done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vad,vad-onnx,yamnet,level,wakeword",
                    help="comma-separated model names (default vad,vad-onnx,yamnet,level,wakeword)")
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

    rows = [("model", "hop ms", "mode", "batch", "CPU us/window", "streams/core", "gain vs unbatched",
             "x model at same batch")]
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
        rows.append((name, f"{hop_s * 1e3:g}", "model", "1", bl.fmt(base * 1e6), bl.fmt(hop_s / base),
                     "1 (baseline)", ""))
        for b in sorted({8, 32, min(spec.max_batch, 128)}):
            if b > spec.max_batch or (name == "wakeword" and b > 8):
                continue
            cpu = model_cpu_per_window(model, b, windows)
            res[f"batch{b}_us"] = cpu * 1e6
            rows.append((name, f"{hop_s * 1e3:g}", "model", str(b), bl.fmt(cpu * 1e6), bl.fmt(hop_s / cpu),
                         bl.fmt(bl.ratio(base, cpu)), ""))
        n_streams = args.streams if name != "wakeword" else 8
        st = stage_cpu_per_window(model, n_streams, args.seconds, args.frame_ms)
        stage = st["cpu_s_per_window"]
        same_batch = max(1, min(spec.max_batch, round(st["mean_batch"])))
        model_same = model_cpu_per_window(model, same_batch, max(windows, 4 * same_batch))
        res.update(stage_us=stage * 1e6, stage_streams_per_core=hop_s / stage, stage_streams=n_streams,
                   stage_mean_batch=st["mean_batch"], stage_windows=st["windows"],
                   stage_model_us=st["model_cpu_s_per_window"] * 1e6, model_at_stage_batch=same_batch,
                   model_at_stage_batch_us=model_same * 1e6,
                   model_at_stage_batch_streams_per_core=hop_s / model_same,
                   stage_vs_model_same_batch=bl.ratio(stage, model_same))
        rows.append((name, f"{hop_s * 1e3:g}", "model at the stage's batch", str(same_batch),
                     bl.fmt(model_same * 1e6), bl.fmt(hop_s / model_same), bl.fmt(bl.ratio(base, model_same)), "1"))
        rows.append((name, f"{hop_s * 1e3:g}", f"stage ({n_streams} streams)", f"{st['mean_batch']:.3g} (mean)",
                     bl.fmt(stage * 1e6), bl.fmt(hop_s / stage), bl.fmt(bl.ratio(base, stage)),
                     bl.fmt(bl.ratio(stage, model_same))))
        results["models"][name] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()}
        model.close()
    bl.emit("classify", results, args.json, rows)


if __name__ == "__main__":
    main()
