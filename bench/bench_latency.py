"""Latency per hop and capture -> result, through the real processes, at about half of capacity.

Pipeline (each its own process, tcp loopback):
    python -m capture --source synth:noise#sI ... --rate 48000 --channels 2   (real time)
    python -m convert                      (48 kHz stereo s16 -> 16 kHz mono f32)
    python -m classify --model vad         (silero-vad, windows batched across streams)
    -> a SUB in this process, which also subscribes to one stream's raw frames.

1. Calibration: ``--calib-streams`` streams for a few seconds; each stage's CPU share gives the
   capacity of this machine (the busiest stage on one core, and all stages on all cores).
2. Measurement: ``round(--load x capacity)`` streams (default 50 %) for ``--seconds``.
   From each result's trace (Hop(stage, t_in_ns, t_out_ns) per hop, appended by capture,
   convert and classify) and the window's ``end_ns`` (wall-clock end of its last sample):

   - capture hop: raw frame received here - end of its last sample (stream s0)
   - end -> convert in: window end -> convert receives the raw frame completing it
     (waiting for the rest of a capture frame, the resampler's look-ahead, the capture hop)
   - convert: t_out - t_in; convert -> classify: link; classify: t_out - t_in (batch + model)
   - classify -> here: link
   - capture -> result, beyond the window: result received here - window end.
3. Baseline, same run: a bare pyzmq hop (bench_floor) paced at the convert -> classify
   message rate.
4. Steps 1-3 again in the low-latency configuration (its own calibration, so also at half of
   *its* capacity): convert ``--quality LD`` (holds back ~1 ms instead of soxr HQ's ~21),
   10 ms capture frames, convert and classify ``--batch-wait-ms 0``.

Targets (issue 8): per hop p99 <= 2 ms; capture -> vad result p99 <= 10 ms beyond the window.

    .venv/bin/python bench/bench_latency.py [--seconds 20] [--load 0.5] [--streams N] [--no-low-latency] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time

import benchlib as bl
import zmq
from bench_floor import run_hop

HOP_TARGET_MS = 2.0
E2E_TARGET_MS = 10.0


class Pipeline:
    """classify + convert (kept up) and a capture process that can be restarted with N streams."""

    def __init__(self, model: str, frame_ms: float, quality: str = "HQ", batch_wait_ms: float = 5.0) -> None:
        self.raw, self.tensor, self.result = bl.free_tcp(), bl.free_tcp(), bl.free_tcp()
        self.model, self.frame_ms, self.quality, self.batch_wait_ms = model, frame_ms, quality, batch_wait_ms
        self.convert_wait_ms = 2.0 if batch_wait_ms > 0 else 0.0  # convert's default gather; none for low latency
        self.procs: dict[str, bl.Proc] = {}
        self.ctx = zmq.Context()
        self.sub = None
        self.raw_sub = None

    def start(self) -> None:
        c = self.procs["classify"] = bl.python_module("classify", "--model", self.model, "--input", self.tensor,
                                                      "--output", self.result, "--max-lag-ms", "60000",
                                                      "--batch-wait-ms", f"{self.batch_wait_ms:g}")
        c.wait_for(r"\bready\b", timeout=180)
        v = self.procs["convert"] = bl.python_module("convert", "--input", self.raw, "--output", self.tensor,
                                                     "--quality", self.quality,
                                                     "--batch-wait-ms", f"{self.convert_wait_ms:g}")
        v.wait_for(r"\bready\b", timeout=60)
        v.wait_for(r"subscriber joined", timeout=60)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"result/")
        self.sub.connect(self.result)
        c.wait_for(r"subscriber joined", timeout=30)

    def start_capture(self, n: int) -> bl.Proc:
        from common.wire import Kind, topic_for

        if "capture" in self.procs:
            self.procs.pop("capture").stop()
        if self.raw_sub is not None:
            self.raw_sub.close(0)
        args = []
        for i in range(n):
            args += ["--source", f"synth:noise#s{i}"]
        cap = self.procs["capture"] = bl.python_module(
            "capture", *args, "--rate", "48000", "--channels", "2", "--chunk-ms", f"{self.frame_ms:g}",
            "--output", self.raw, "--wait-subscriber", "30")
        cap.wait_for(r"subscriber joined", timeout=60)
        self.raw_sub = self.ctx.socket(zmq.SUB)
        self.raw_sub.setsockopt(zmq.LINGER, 0)
        self.raw_sub.setsockopt(zmq.SUBSCRIBE, topic_for(Kind.RAW, "s0"))
        self.raw_sub.connect(self.raw)
        return cap

    def collect(self, seconds: float) -> tuple[list, list, dict[str, float]]:
        """Results and s0 raw arrivals for ``seconds``; returns them and each process's CPU share."""
        from common.wire import ProtocolError, decode

        results, raw_lat = [], []
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.raw_sub, zmq.POLLIN)
        cpu0 = {k: bl.proc_cpu_s(p.pid) for k, p in self.procs.items()}
        t0 = time.perf_counter()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for sock, _ in poller.poll(100):
                while True:
                    try:
                        data = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    t_recv = time.time_ns()
                    try:
                        msg = decode(data)
                    except ProtocolError:
                        continue
                    if sock is self.raw_sub:
                        raw_lat.append((t_recv - msg.header.end_ns) / 1e6)
                    elif not msg.final:  # a final result is cut at the end of the audio, not at a window's end
                        results.append((t_recv, msg.trace, msg.end_ns, msg.stream))
        wall = time.perf_counter() - t0
        share = {k: (bl.proc_cpu_s(p.pid) - cpu0[k]) / wall for k, p in self.procs.items()}
        return results, raw_lat, share

    def stop(self) -> None:
        for name in ("capture", "convert", "classify"):
            if name in self.procs:
                self.procs[name].stop()
        for s in (self.sub, self.raw_sub):
            if s is not None:
                s.close(0)
        self.ctx.term()


def hop_stats(results: list, raw_lat: list) -> dict[str, dict[str, float]]:
    """p50/p99 in ms of every leg, from result traces."""
    legs: dict[str, list[float]] = {k: [] for k in (
        "end_to_convert_in", "convert", "convert_to_classify", "classify", "classify_to_sink",
        "software_convert_in_to_classify_out", "capture_to_result_beyond_window")}
    for t_recv, trace, end_ns, _stream in results:
        hops = {h.stage: h for h in trace}
        cv, cl = hops.get("convert"), hops.get("classify")
        if cv is None or cl is None or not isinstance(end_ns, int):
            continue
        legs["end_to_convert_in"].append((cv.t_in_ns - end_ns) / 1e6)
        legs["convert"].append((cv.t_out_ns - cv.t_in_ns) / 1e6)
        legs["convert_to_classify"].append((cl.t_in_ns - cv.t_out_ns) / 1e6)
        legs["classify"].append((cl.t_out_ns - cl.t_in_ns) / 1e6)
        legs["classify_to_sink"].append((t_recv - cl.t_out_ns) / 1e6)
        legs["software_convert_in_to_classify_out"].append((cl.t_out_ns - cv.t_in_ns) / 1e6)
        legs["capture_to_result_beyond_window"].append((t_recv - end_ns) / 1e6)
    out = {k: {**bl.percentiles(v, (50, 99)), "n": len(v)} for k, v in legs.items()}
    out["capture_hop"] = {**bl.percentiles(raw_lat, (50, 99)), "n": len(raw_lat)}
    return out


def resampler_holdback_ms(chunk_ms: float = 20.0, in_rate: int = 48_000, out_rate: int = 16_000) -> dict[str, dict]:
    """Audio held inside convert's resampler (input time - output time, ms) when fed ``chunk_ms`` chunks.

    soxr works in blocks: at HQ it emits output in bursts, so part of the "framing" leg is
    the resampler, not the transport; LD holds back only its filter's look-ahead. Measured
    in-process through convert.resample.StreamResampler, no sockets.
    """
    sys.path.insert(0, str(bl.ROOT))
    from convert.resample import QUALITIES

    n = int(in_rate * chunk_ms / 1000)
    return {q: bl.resampler_holdback_ms(q, n, in_rate, out_rate) for q in QUALITIES}


def capacity(n: int, share: dict[str, float], ncores: int) -> dict[str, float]:
    """Streams this machine could carry: busiest stage on one core, and all stages on all cores."""
    busiest = max(share.values())
    per_core = n / busiest if busiest > 0 else float("inf")
    all_cores = n * ncores / sum(share.values()) if sum(share.values()) > 0 else float("inf")
    return {"busiest_stage_streams": per_core, "all_cores_streams": all_cores, "streams": min(per_core, all_cores)}


LOW_LATENCY = {"quality": "LD", "frame_ms": 10.0, "batch_wait_ms": 0.0}  # the second pass, calibrated alike


def run_config(args: argparse.Namespace, quality: str, frame_ms: float, batch_wait_ms: float,
               streams: int | None, ncores: int) -> dict:
    """One pipeline in one configuration: calibrate (unless ``streams``), measure, bare-hop baseline."""
    pipe = Pipeline(args.model, frame_ms, quality, batch_wait_ms)
    res: dict = {"capture_frame_ms": frame_ms, "convert_quality": quality, "batch_wait_ms": batch_wait_ms,
                 "convert_wait_ms": pipe.convert_wait_ms}
    try:
        pipe.start()
        if streams:
            n = streams
        else:
            pipe.start_capture(args.calib_streams)
            pipe.collect(args.warmup)
            _, _, share = pipe.collect(args.calib_seconds)
            cap = capacity(args.calib_streams, share, ncores)
            res["calibration"] = {"streams": args.calib_streams, "cpu_share": share, "capacity": cap}
            n = max(1, min(args.max_streams, round(args.load * cap["streams"])))
        pipe.start_capture(n)
        pipe.collect(args.warmup)
        results, raw_lat, share = pipe.collect(args.seconds)
        res.update(streams=n, cpu_share=share, results=len(results), legs=hop_stats(results, raw_lat))
        # CPU per message in the live pipeline (real-time arrivals: one wake-up per message)
        raw_fps = n * 1000.0 / frame_ms
        win_ps = len(results) / args.seconds if results else float("nan")
        res["live_cpu_us"] = {"capture_per_raw_frame": share["capture"] / raw_fps * 1e6,
                              "convert_per_raw_frame": share["convert"] / raw_fps * 1e6,
                              "classify_per_window": share["classify"] / win_ps * 1e6}
        pipe.procs.pop("capture").stop()
        # Baseline: a bare pyzmq hop paced at the rate of the convert -> classify link.
        link_rate = len(results) / args.seconds if results else 50.0
        base = run_hop("bare", int(link_rate * 5), rate=link_rate)
        res["baseline_bare_hop_ms"] = {k: v / 1e3 for k, v in base["latency_us"].items()}
        res["baseline_rate"] = link_rate
    finally:
        pipe.stop()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement length (default 20)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds discarded after capture starts (default 3)")
    ap.add_argument("--calib-streams", type=int, default=8, help="streams for the capacity calibration (default 8)")
    ap.add_argument("--calib-seconds", type=float, default=6.0)
    ap.add_argument("--load", type=float, default=0.5, help="fraction of the measured capacity (default 0.5)")
    ap.add_argument("--streams", type=int, help="skip calibration: run exactly this many streams")
    ap.add_argument("--max-streams", type=int, default=200)
    ap.add_argument("--frame-ms", type=float, default=20.0, help="capture frame length (default 20)")
    ap.add_argument("--model", default="vad")
    ap.add_argument("--quality", default="HQ", help="convert's resampler quality (default HQ; LD holds back ~1 ms)")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="classify's --batch-wait-ms (default 5)")
    ap.add_argument("--no-low-latency", action="store_true",
                    help="skip the second pass (convert --quality LD, 10 ms capture frames, no batch wait)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    ncores = len(__import__("os").sched_getaffinity(0))
    res: dict = {"model": args.model, "load": args.load if not args.streams else None,
                 "targets_ms": {"hop_p99": HOP_TARGET_MS, "capture_to_result_p99": E2E_TARGET_MS}}
    res.update(run_config(args, args.quality, args.frame_ms, args.batch_wait_ms, args.streams, ncores))
    if not args.no_low_latency:
        res["low_latency"] = run_config(args, LOW_LATENCY["quality"], LOW_LATENCY["frame_ms"],
                                        LOW_LATENCY["batch_wait_ms"], args.streams, ncores)

    low = res.get("low_latency")
    legs = res["legs"]
    base = res["baseline_bare_hop_ms"]
    rows = [("leg", "p50 ms", "p99 ms", "target p99", "met", "x bare hop p99")
            + (("low-latency p50", "low-latency p99", "met") if low else ())]
    spec = [
        ("capture hop (s0 raw -> here)", "capture_hop", HOP_TARGET_MS),
        ("window end -> convert in (framing)", "end_to_convert_in", None),
        ("convert (in -> out)", "convert", HOP_TARGET_MS),
        ("convert -> classify link", "convert_to_classify", HOP_TARGET_MS),
        ("classify (in -> out, batch+model)", "classify", None),
        ("classify -> here link", "classify_to_sink", HOP_TARGET_MS),
        ("software: convert in -> classify out", "software_convert_in_to_classify_out", None),
        ("capture -> result, beyond window", "capture_to_result_beyond_window", E2E_TARGET_MS),
    ]

    def met_text(p: dict, target: float | None) -> str:
        return "" if target is None else ("yes" if p["p99"] <= target else "NO")

    met, met_low = {}, {}
    for label, key, target in spec:
        p = legs[key]
        if target is not None:
            met[key] = p["p99"] <= target
        link = key in ("capture_hop", "convert_to_classify", "classify_to_sink")
        row = (label, bl.fmt(p["p50"]), bl.fmt(p["p99"]), "-" if target is None else f"<= {target:g}",
               met_text(p, target), bl.fmt(bl.ratio(p["p99"], base["p99"])) if link else "")
        if low:
            q = low["legs"][key]
            if target is not None:
                met_low[key] = q["p99"] <= target
            row += (bl.fmt(q["p50"]), bl.fmt(q["p99"]), met_text(q, target))
        rows.append(row)
    rows.append((f"baseline: bare pyzmq hop @{res['baseline_rate']:.0f}/s", bl.fmt(base["p50"]), bl.fmt(base["p99"]),
                 "", "", "1") + ((bl.fmt(low["baseline_bare_hop_ms"]["p50"]), bl.fmt(low["baseline_bare_hop_ms"]["p99"]),
                                  "") if low else ()))
    res["targets_met"] = met
    if low:
        low["targets_met"] = met_low
    res["resampler_holdback_ms"] = resampler_holdback_ms(args.frame_ms)
    bl.emit("latency", res, args.json, rows)
    if not args.json:
        for name, r in (("default", res), ("low-latency", low)):
            if r is None:
                continue
            print(f"{name}: convert --quality {r['convert_quality']} --batch-wait-ms "
                  f"{r['convert_wait_ms']:g}, capture frames {r['capture_frame_ms']:g} ms, "
                  f"classify --batch-wait-ms {r['batch_wait_ms']:g}; streams: {r['streams']} (48 kHz stereo, real "
                  "time); CPU share per process: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_share"].items())
                  + "; live CPU per message (us): " + ", ".join(f"{k} {v:.0f}" for k, v in r["live_cpu_us"].items()))
        print("audio held inside the resampler at 48k -> 16k, ms mean/max by quality: "
              + ", ".join(f"{q} {v['mean']:.1f}/{v['max']:.1f}" for q, v in res["resampler_holdback_ms"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
