"""Live capacity: how many real-time streams capture -> convert -> vad -> a result sink sustains.

Every stage is its own process on tcp loopback, as deployed:

    python -m capture --source synth:noise#s0 ... #sN-1 --rate 48000 --channels 2 --chunk-ms C
        --duration D          (one process, N sources paced by capture's one loop clock)
    python -m convert --quality Q --batch-wait-ms G   (48 kHz stereo s16 -> 16 kHz mono f32, 32 ms tensors)
    python -m classify --model vad --batch-wait-ms W
    bench_capacity.py --role sink             (a SUB on results: latency, gaps, losses, counts)

Settings (issue 14): ``default`` (C 20 ms, Q HQ, G 2 ms, W 5 ms) and ``low-latency`` (C 10 ms,
Q LD, G 0, W 0); and ``replay``, the inference-box case: convert + vad alone, with raw frames from
``soundbus replay`` of a recording made once per stream count (written directly with the
encoder and the recording format: 20 ms chunks of 48 kHz stereo s16 noise, each stream's
last chunk flagged END) replayed at real time; convert and classify as in ``default``.

**A step** runs N streams for D = warmup + span + 1 s of audio each (finite sources, so
every stream ends with END and every count below is exact), then judges it:

- *sent*: raw chunks capture (or replay) published, from its own exit log, against the
  chunks D seconds of N streams make;
- *arrived*: per stream, results received, result seq gaps, and ``lost_ns`` (loss counted
  upstream: a convert input gap, a window classify shed) in windows; a stream whose END
  result arrived is short *silently* when windows expected from the audio sent - (received
  + seq gaps + lost windows) > 1 (one window of rounding at the stream's end);
- *latency*, per result (final results, cut at the audio's end, left out) whose window ends
  within [warmup, warmup + span] of the audio: ``sink receive time - Result.end_ns``, i.e.
  capture -> vad result beyond the window (issue 14's definition; one wall clock, one box).
  For replay the recording's stamps are old: ``shift`` = the smallest (convert's t_in -
  the recorded end of the chunk it received) over the step's result traces is subtracted,
  i.e. latency is measured from when the replay released the chunk completing the window
  (+ the smallest raw hop and convert queueing, ~0.3 ms);
- it *passes* when nothing was lost (no gap, no lost window, no silent shortfall, every
  stream's END result arrived, everything was sent) and p99 latency <= ``--p99-ms`` (100).

**The ramp**: steps ``--steps`` (default 8, 16, 24, 32, 48, 64, 96, ...) with a short probe
(``--probe-s``, default 8 s) each until one fails, ``--refine`` bisections between the last
pass and the first failure, then a hold of ``--hold-s`` (30 s) at the best count; if the hold
fails, lower counts are held until one passes: that count is the *sustained* capacity.
convert and classify stay up across passing steps and are restarted after a failed one; after
every start one stream runs for 2 s, unmeasured, so one-time costs (LD's filter design imports
scipy: ~1.5 s; torch's first calls) do not count as a loss.

**Per-stage CPU** during the span of the held step (or, if no hold passed, of the passing step
with the most streams), from /proc/PID/stat of each process:
us per raw chunk (capture or replay, convert), per window (classify), per result (sink),
next to the same run's *flooded* per-stage costs, measured in-process after the live runs
with the functions of bench_capture (CaptureLogic over synth:noise sources), bench_convert
(codec.decode + ConvertLogic.handle) and bench_classify (decode + ClassifyLogic over N
streams), and the capacity those flooded costs imply on this machine's cores.

    .venv/bin/python bench/bench_capacity.py [--settings default,low-latency,replay] [--json]
    .venv/bin/python bench/bench_capacity.py --quick          # 2 and 4 streams, a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib as bl

sys.path.insert(0, str(bl.ROOT))

IN_RATE, IN_CHANNELS = 48_000, 2
MODEL_RATE, WINDOW = 16_000, 512  # vad: 32 ms windows, hop = window
WINDOW_S = WINDOW / MODEL_RATE
P99_LIMIT_MS = 100.0
DEFAULT_STEPS = "8,16,24,32,48,64,96,128,160,192,256,320,384,448,512"
TAIL_S = 1.0  # audio after the measured span, so the span's results are not the stream's last
MAX_SINK_STREAMS = 4096  # the sink's per-stream table bound


@dataclass(frozen=True)
class Setting:
    """One pipeline configuration: capture chunk (ms), convert quality, classify batch wait (ms), source,
    convert's gather (ms)."""

    name: str
    chunk_ms: float
    quality: str
    batch_wait_ms: float
    source: str  # "capture" (live synth sources) or "replay" (a recording, the inference box)
    convert_wait_ms: float = 2.0


SETTINGS = {
    "default": Setting("default", 20.0, "HQ", 5.0, "capture"),
    "low-latency": Setting("low-latency", 10.0, "LD", 0.0, "capture", convert_wait_ms=0.0),
    "replay": Setting("replay", 20.0, "HQ", 5.0, "replay"),
}


# ---------------------------------------------------------------------------------------
# the sink (its own process)

class RunStats:
    """What the sink saw of one step: per stream counts, gaps, losses; latency samples."""

    def __init__(self, warmup_s: float, span_s: float, replayed: bool = False) -> None:
        self.warmup_ns, self.span_ns = int(warmup_s * 1e9), int(span_s * 1e9)
        self.replayed = replayed
        self.streams: dict[str, list[int]] = {}  # stream -> [received, seq gaps, lost windows, final, next seq]
        self.t0_audio: int | None = None  # start of the audio (first result's start_ns)
        self.late_ns: list[int] = []  # receive time - window end, results in the measured span
        self.shift: int | None = None  # replay: min (convert's t_in - recorded chunk end) over the traces
        self.lost_ns = self.disc = self.refused = self.bad = self.results = 0
        self.last_msg = time.monotonic()

    def add(self, r: Any, t_recv: int) -> None:
        from common.wire import Flag

        self.results += 1
        self.last_msg = time.monotonic()
        st = self.streams.get(r.stream)
        if st is None:
            if len(self.streams) >= MAX_SINK_STREAMS:
                self.refused += 1
                return
            st = self.streams[r.stream] = [0, 0, 0, 0, 0]  # an epoch's results are numbered from 0
        st[0] += 1
        if r.seq > st[4]:
            st[1] += r.seq - st[4]  # results classify published that never arrived here
        st[4] = max(st[4], r.seq + 1)
        if r.lost_ns:
            self.lost_ns += r.lost_ns
            st[2] += math.ceil(r.lost_ns / (WINDOW_S * 1e9) - 1e-9)
        if r.flags & Flag.DISCONTINUITY:
            self.disc += 1
        if r.final:
            st[3] = 1
            return
        if self.t0_audio is None:
            self.t0_audio = r.start_ns
        if self.warmup_ns <= r.end_ns - self.t0_audio <= self.warmup_ns + self.span_ns:
            self.late_ns.append(t_recv - r.end_ns)
        if self.replayed:
            hops = {h.stage: h for h in r.trace}
            if "capture" in hops and "convert" in hops:
                d = hops["convert"].t_in_ns - hops["capture"].t_out_ns
                self.shift = d if self.shift is None else min(self.shift, d)

    def finals(self) -> int:
        return sum(st[3] for st in self.streams.values())

    def report(self) -> dict[str, Any]:
        shift = self.shift or 0
        lat = [(x - shift) / 1e6 for x in self.late_ns]
        received = [st[0] for st in self.streams.values()]
        return {
            "streams": len(self.streams), "results": self.results, "finals": self.finals(),
            "seq_gaps": sum(st[1] for st in self.streams.values()),
            "lost_windows": sum(st[2] for st in self.streams.values()), "lost_ms": self.lost_ns / 1e6,
            "discontinuities": self.disc, "refused_streams": self.refused, "bad_messages": self.bad,
            "received_min": min(received, default=0), "received_max": max(received, default=0),
            "per_stream": {s: st[:4] for s, st in self.streams.items()},
            "latency_ms": {**bl.percentiles(lat, (50, 99)), "max": max(lat, default=float("nan")), "n": len(lat)},
            "shift_ms": None if self.shift is None else self.shift / 1e6,
        }


def role_sink(results_addr: str, replayed: bool) -> None:
    """Receive results and obey stdin lines:

    ``begin WARMUP_S SPAN_S``: start a step's statistics;
    ``end N QUIET_S TIMEOUT_S``: when N streams' final results arrived (or nothing came for
    QUIET_S, or TIMEOUT_S passed) print the step's report as one JSON line.
    """
    import zmq

    from common.wire import ProtocolError, Result, decode

    ctx = zmq.Context()
    res = ctx.socket(zmq.SUB)
    res.setsockopt(zmq.RCVHWM, 0)  # the sink never drops: a gap it sees was made upstream
    res.setsockopt(zmq.LINGER, 0)
    res.setsockopt(zmq.SUBSCRIBE, b"result/")
    res.connect(results_addr)
    poller = zmq.Poller()
    poller.register(res, zmq.POLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, zmq.POLLIN)
    print("ready", flush=True)
    stats: RunStats | None = None
    ending: tuple[int, float, float] | None = None  # (streams, quiet_s, deadline)
    pending = b""
    while True:
        for sock, _ in poller.poll(100):
            if sock == stdin:
                data = os.read(stdin, 4096)
                if not data:  # the bench closed our stdin: done
                    res.close()
                    ctx.term()
                    return
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    cmd = line.decode().split()
                    if cmd and cmd[0] == "begin":
                        stats, ending = RunStats(float(cmd[1]), float(cmd[2]), replayed), None
                    elif cmd and cmd[0] == "end":
                        ending = (int(cmd[1]), float(cmd[2]), time.monotonic() + float(cmd[3]))
                continue
            while True:
                try:
                    data = res.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t = time.time_ns()
                if stats is None:
                    continue
                try:
                    msg = decode(data)
                except ProtocolError:
                    stats.bad += 1
                    continue
                if isinstance(msg, Result):
                    stats.add(msg, t)
        if stats is not None and ending is not None:
            n, quiet, deadline = ending
            now = time.monotonic()
            if stats.finals() >= n or now - stats.last_msg > quiet or now > deadline:
                print(json.dumps(stats.report()), flush=True)
                stats, ending = None, None


# ---------------------------------------------------------------------------------------
# recordings for the inference-box case

def make_recording(path: Path, streams: int, seconds: float, chunk_ms: float = 20.0) -> int:
    """Write ``streams`` streams of ``seconds`` of 48 kHz stereo s16 noise (-20 dBFS) in
    ``chunk_ms`` raw messages, as ``soundbus record`` would have received them in real time
    (receive time = the chunk's end); each stream's last chunk is flagged END. Returns the
    number of messages."""
    import numpy as np

    from common.recording.format import RecordingWriter, default_meta
    from common.wire import AudioHeader, Flag, Hop, Kind, Layout, SampleFormat, encode_audio

    n = round(IN_RATE * chunk_ms / 1000)
    chunks = math.ceil(seconds * 1000 / chunk_ms)
    rng = np.random.default_rng(0)
    payloads = [np.repeat(np.clip(rng.normal(0, 3277, n), -32768, 32767).astype("<i2")[:, None], IN_CHANNELS, 1)
                .tobytes() for _ in range(50)]
    t0 = time.time_ns()
    with RecordingWriter(path, default_meta(kinds=["raw"], bench="capacity"), overwrite=True) as w:
        for i in range(chunks):
            t = t0 + i * n * 1_000_000_000 // IN_RATE
            end = t + n * 1_000_000_000 // IN_RATE
            for s in range(streams):
                h = AudioHeader(stream=f"s{s}", epoch=t0, seq=i, t_capture_ns=t, rate=IN_RATE, channels=IN_CHANNELS,
                                format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=n, offset=i * n,
                                flags=int(Flag.END) if i == chunks - 1 else 0, source="bench recording",
                                trace=[Hop("capture", end, end)])
                w.write([encode_audio(Kind.RAW, h, payloads[(i + s) % len(payloads)])], end)
    # On disk before the step starts: the kernel writes dirty pages back 30 s after they were
    # written (vm.dirty_expire_centisecs), and 0.6 GB written back in the middle of a 30 s hold
    # stalled every process here for 0.2-0.7 s (bench/replay holds failed at 64-104 streams).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return chunks * streams


# ---------------------------------------------------------------------------------------
# the pipeline

def expected_windows(audio_s: float, chunk_ms: float, source: str) -> int:
    """vad windows one stream of ``audio_s`` makes (the last one zero-padded)."""
    if source == "replay":
        in_samples = math.ceil(audio_s * 1000 / chunk_ms) * round(IN_RATE * chunk_ms / 1000)
    else:
        in_samples = round(audio_s * IN_RATE)
    return math.ceil(in_samples * MODEL_RATE // IN_RATE / WINDOW)


def expected_chunks(audio_s: float, chunk_ms: float) -> int:
    """Raw chunks one stream of ``audio_s`` makes."""
    return math.ceil(round(audio_s * IN_RATE) / round(IN_RATE * chunk_ms / 1000))


class Pipeline:
    """convert + classify + the sink (kept up across steps), and a source restarted per step."""

    def __init__(self, setting: Setting, tmp: Path, p99_ms: float = P99_LIMIT_MS) -> None:
        self.s = setting
        self.tmp = tmp
        self.p99_ms = p99_ms
        self.raw, self.tensor, self.result = bl.free_tcp(), bl.free_tcp(), bl.free_tcp()
        self.procs: dict[str, bl.Proc] = {}
        self.sink: bl.Proc | None = None
        self.reports = 0
        self.recordings: dict[tuple[int, float], Path] = {}

    def start(self) -> None:
        s = self.s
        c = self.procs["classify"] = bl.python_module(
            "classify", "--model", "vad", "--input", self.tensor, "--output", self.result,
            "--batch-wait-ms", f"{s.batch_wait_ms:g}")
        v = self.procs["convert"] = bl.python_module(
            "convert", "--input", self.raw, "--output", self.tensor, "--quality", s.quality,
            "--batch-wait-ms", f"{s.convert_wait_ms:g}", "--summary-every", "3600")
        self.sink = bl.python_script(bl.BENCH / "bench_capacity.py", "--role", "sink", "--results", self.result,
                                     *(["--replayed"] if s.source == "replay" else []), stdin=subprocess.PIPE)
        self.reports = 0
        self.sink.wait_for("^ready", timeout=60, stdout=True)
        v.wait_for(r"\bready\b", timeout=60)
        c.wait_for(r"\bready\b", timeout=180)
        v.wait_for("subscriber joined", timeout=60)  # classify's input
        c.wait_for("subscriber joined", timeout=60)  # the sink
        self.step(1, 0.5, 0.5, "warm-up")  # unmeasured: one-time costs of the first stream

    def stop(self) -> None:
        for name in ("source", "convert", "classify"):
            p = self.procs.pop(name, None)
            if p is not None:
                p.stop()
        if self.sink is not None:
            try:
                self.sink.proc.stdin.close()
            except OSError:
                pass
            self.sink.stop()
            self.sink = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def _tell(self, line: str) -> None:
        self.sink.proc.stdin.write(line.encode() + b"\n")
        self.sink.proc.stdin.flush()

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, p in (*self.procs.items(), ("sink", self.sink)):
            try:
                out[name] = bl.proc_cpu_s(p.pid)
            except (OSError, IndexError, ValueError):
                out[name] = float("nan")
        return out

    def _start_source(self, n: int, audio_s: float) -> tuple[bl.Proc, int]:
        """Start capture (or replay) with ``n`` streams of ``audio_s``; returns it and the chunks it owes."""
        s = self.s
        if s.source == "capture":
            args = [a for i in range(n) for a in ("--source", f"synth:noise#s{i}")]
            p = bl.python_module("capture", *args, "--rate", str(IN_RATE), "--channels", str(IN_CHANNELS),
                                 "--chunk-ms", f"{s.chunk_ms:g}", "--duration", f"{audio_s:g}", "--output", self.raw,
                                 "--wait-subscriber", "30")
            return p, n * expected_chunks(audio_s, s.chunk_ms)
        key = (n, audio_s)
        if key not in self.recordings:
            for old in self.recordings.values():  # one at a time: they are big (192 kB per stream-second)
                old.unlink(missing_ok=True)
            self.recordings.clear()
            path = self.tmp / f"capacity-{n}x{audio_s:g}s.sbrec"
            make_recording(path, n, audio_s, s.chunk_ms)
            self.recordings[key] = path
        p = bl.python_module("common.cli", "replay", str(self.recordings[key]), "--output", self.raw,
                             "--wait-subscriber", "30")
        return p, n * math.ceil(audio_s * 1000 / s.chunk_ms)

    def step(self, n: int, warmup_s: float, span_s: float, phase: str) -> dict[str, Any]:
        """Run ``n`` streams; measure the span; judge the step (see the module docstring)."""
        s = self.s
        audio_s = warmup_s + span_s + TAIL_S
        row: dict[str, Any] = {"streams": n, "phase": phase, "span_s": span_s, "audio_s": audio_s}
        self._tell(f"begin {warmup_s:g} {span_s:g}")
        src, owed = self._start_source(n, audio_s)
        self.procs["source"] = src
        try:
            src.wait_for("subscriber joined", timeout=60)
            time.sleep(warmup_s)
            c0, t0 = self._cpu(), time.perf_counter()
            time.sleep(span_s)
            c1, wall = self._cpu(), time.perf_counter() - t0
            try:
                src.wait(audio_s - warmup_s - span_s + 60)
            except subprocess.TimeoutExpired:
                pass
            pattern = r"all sources ended.*\bout=(\d+)" if s.source == "capture" else r"replayed (\d+) messages"
            m = re.search(pattern, src.log(200))
            sent = int(m.group(1)) if m else -1
            self._tell(f"end {n} 8 {60 + audio_s:g}")
            self.reports += 1
            rep = json.loads(self.sink.wait_for(r"^\{", timeout=120 + audio_s, count=self.reports, stdout=True))
        finally:
            self.procs.pop("source").stop()
        row.update(self._judge(n, audio_s, sent, owed, rep))
        row["cpu"] = self._cpu_figures(n, c0, c1, wall, rep)
        return row

    def _judge(self, n: int, audio_s: float, sent: int, owed: int, rep: dict[str, Any]) -> dict[str, Any]:
        exp = expected_windows(audio_s, self.s.chunk_ms, self.s.source)
        short = 0
        for received, gaps, lost, final in rep["per_stream"].values():
            if final:  # a stream without its END result is incomplete, reported below, not judged here
                short += max(0, exp - (received + gaps + lost) - 1)
        lat = rep["latency_ms"]
        why = []
        if sent != owed:
            why.append(f"sent {sent} of {owed} chunks")
        if rep["finals"] < n:
            why.append(f"{n - rep['finals']} streams without their END result")
        if rep["seq_gaps"]:
            why.append(f"{rep['seq_gaps']} results missing (seq gaps)")
        if rep["lost_windows"]:
            why.append(f"{rep['lost_windows']} windows lost upstream ({rep['lost_ms']:.0f} ms)")
        if short:
            why.append(f"{short} windows missing without a trace (silent loss)")
        if not lat["n"]:
            why.append("no result in the measured span")
        elif lat["p99"] > self.p99_ms:
            why.append(f"p99 {lat['p99']:.0f} ms > {self.p99_ms:g} ms")
        rep = {k: v for k, v in rep.items() if k != "per_stream"}
        return {"passed": not why, "why": "; ".join(why), "sent": sent, "owed": owed, "windows_expected": exp * n,
                "silent_missing_windows": short, "latency_ms": lat, "sink": rep}

    def _cpu_figures(self, n: int, c0: dict[str, float], c1: dict[str, float], wall: float,
                     rep: dict[str, Any]) -> dict[str, Any]:
        """CPU share of a core per process over the span, and CPU us per message it handles."""
        share = {k: (c1[k] - c0[k]) / wall for k in c0}
        chunks_per_s = n * 1000 / self.s.chunk_ms
        windows_per_s = n / WINDOW_S
        per_msg = {
            "source_us_per_chunk": share["source"] / chunks_per_s * 1e6,
            "convert_us_per_chunk": share["convert"] / chunks_per_s * 1e6,
            "classify_us_per_window": share["classify"] / windows_per_s * 1e6,
            "sink_us_per_result": share["sink"] / windows_per_s * 1e6,
        }
        return {"share": share, "us_per_message": per_msg}


# ---------------------------------------------------------------------------------------
# the ramp

def ramp(pipe: Pipeline, steps: list[int], args: argparse.Namespace, log) -> dict[str, Any]:
    """Probe upwards until a step fails, refine, then hold; returns every step and the sustained count."""
    rows: list[dict[str, Any]] = []

    def run(n: int, span: float, phase: str) -> dict[str, Any]:
        try:
            r = pipe.step(n, args.warmup_s, span, phase)
        except (RuntimeError, OSError, ValueError) as e:  # a stage died or never came up
            r = {"streams": n, "phase": phase, "span_s": span, "passed": False, "why": f"error: {str(e)[-300:]}"}
        rows.append(r)
        log(f"{pipe.s.name}: {phase} {n} streams: " + ("pass" if r["passed"] else f"FAIL ({r['why']})")
            + (f", p99 {r['latency_ms']['p99']:.1f} ms" if r.get("latency_ms", {}).get("n") else ""))
        if not r["passed"]:
            pipe.restart()  # a failed step may leave queues and state behind
        return r

    good, bad = 0, None
    for n in steps:
        if run(n, args.probe_s, "probe")["passed"]:
            good = n
        else:
            bad = n
            break
    if good == 0 and bad is not None:  # even the first step failed: halve down
        n = bad // 2
        while n >= 1:
            if run(n, args.probe_s, "probe")["passed"]:
                good = n
                break
            bad, n = n, n // 2
    for _ in range(args.refine):
        if bad is None or bad - good <= max(1, good // 16):
            break
        mid = (good + bad) // 2
        if run(mid, args.probe_s, "refine")["passed"]:
            good = mid
        else:
            bad = mid
    sustained, hold = 0, None
    candidates = sorted({r["streams"] for r in rows if r["passed"]}, reverse=True)
    for n in candidates[: args.hold_tries]:
        hold = run(n, args.hold_s, "hold")
        if hold["passed"]:
            sustained = n
            break
    # Live per-stage CPU: from the passing hold, else from the passing step with the most streams.
    passed = [r for r in rows if r["passed"]]
    live = hold if sustained else max(passed, key=lambda r: (r["streams"], r["span_s"]), default=None)
    return {"steps": rows, "best_probe": good, "first_fail": bad, "sustained": sustained, "hold": hold,
            "live": None if live is None else {"streams": live["streams"], "phase": live["phase"], "cpu": live["cpu"]}}


# ---------------------------------------------------------------------------------------
# flooded per-stage costs (in-process, same run)

def flooded_costs(setting: Setting, n: int, seconds: float, model) -> dict[str, Any]:
    """Per-message CPU of each stage's logic flooded in this process (bench_capture, bench_convert,
    bench_classify functions) at ``n`` streams, and the stream count those costs imply."""
    import bench_capture
    import bench_classify
    import bench_convert

    n = max(1, n)
    out: dict[str, Any] = {"streams": n}
    if setting.source == "capture":
        cap = bench_capture.logic_cpu_per_chunk(min(n, 64), seconds, setting.chunk_ms, "noise")
        out["source_us_per_chunk"] = cap["cpu_us_per_chunk"]
    frames = max(10, round(seconds * 1000 / setting.chunk_ms))
    conv = bench_convert.in_process(min(n, 64), frames, setting.chunk_ms, setting.quality, repeat=2)
    out["convert_us_per_chunk"] = conv["total_us"]
    cls = bench_classify.stage_cpu_per_window(model, n, seconds, 32.0, setting.batch_wait_ms)
    out["classify_us_per_window"] = cls["cpu_s_per_window"] * 1e6
    out["classify_mean_batch"] = cls["mean_batch"]
    # Fraction of a core one stream costs in each stage, and the count the busiest stage (one core
    # each) and all stages together (all cores) allow.
    chunks_per_s, windows_per_s = 1000 / setting.chunk_ms, 1 / WINDOW_S
    frac = {"convert": conv["total_us"] * chunks_per_s / 1e6,
            "classify": out["classify_us_per_window"] * windows_per_s / 1e6}
    if "source_us_per_chunk" in out:
        frac["source"] = out["source_us_per_chunk"] * chunks_per_s / 1e6
    cores = len(os.sched_getaffinity(0))
    out["core_fraction_per_stream"] = frac
    out["implied_streams"] = min(1 / max(frac.values()), cores / sum(frac.values()))
    return out


# ---------------------------------------------------------------------------------------
# report

def tables(res: dict[str, Any]) -> list[tuple[str, ...]]:
    """Summary per setting; the ramp's steps; live vs flooded per-stage CPU (an empty row between)."""
    f = bl.fmt
    t: list[tuple[str, ...]] = [("setting", "sustained streams (hold)", "p50 ms", "p99 ms", "max ms",
                                 "best probe", "first failing probe", "why it failed", "flooded costs imply")]
    for name, r in res["settings"].items():
        h = r["ramp"]["hold"] or {}
        lat = h.get("latency_ms", {}) if h.get("passed") else {}
        fail = next((x for x in r["ramp"]["steps"] if x["streams"] == r["ramp"]["first_fail"] and not x["passed"]),
                    None)
        t.append((name, str(r["ramp"]["sustained"]), f(lat.get("p50")), f(lat.get("p99")), f(lat.get("max")),
                  str(r["ramp"]["best_probe"]), str(r["ramp"]["first_fail"] or "-"), (fail or {}).get("why", "-"),
                  f(r.get("flooded", {}).get("implied_streams"))))
    t.append(("",) * 9)
    t.append(("setting", "phase", "streams", "passed", "p50 ms", "p99 ms", "results", "lost / gaps / silent",
              "why"))
    for name, r in res["settings"].items():
        for x in r["ramp"]["steps"]:
            lat, sink = x.get("latency_ms", {}), x.get("sink", {})
            t.append((name, x["phase"], str(x["streams"]), "yes" if x["passed"] else "NO", f(lat.get("p50")),
                      f(lat.get("p99")), str(sink.get("results", "-")),
                      (f"{sink.get('lost_windows', '-')} / {sink.get('seq_gaps', '-')} / "
                       f"{x.get('silent_missing_windows', '-')}"), x["why"] or "-"))
    t.append(("",) * 9)
    t.append(("setting", "stage", "live CPU us/msg (streams, phase)", "live core share",
              "flooded CPU us/msg (streams)", "live / flooded", "", "", ""))
    for name, r in res["settings"].items():
        h = r["ramp"].get("live")
        fl = r.get("flooded", {})
        source = r["setting"]["source"]
        for stage, proc, key, unit in (("capture" if source == "capture" else "replay", "source",
                                        "source_us_per_chunk", "chunk"),
                                       ("convert", "convert", "convert_us_per_chunk", "chunk"),
                                       ("classify (vad)", "classify", "classify_us_per_window", "window"),
                                       ("sink", "sink", "sink_us_per_result", "result")):
            live = h["cpu"]["us_per_message"][key] if h else None
            share = h["cpu"]["share"][proc] if h else None
            flood = fl.get(key)
            t.append((name, f"{stage} (per {unit})", f"{f(live)} ({h['streams']}, {h['phase']})" if h else "-",
                      f(share), f"{f(flood)} ({fl['streams']})" if flood else "-",
                      f(bl.ratio(live, flood)) if live and flood else "-", "", "", ""))
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="default,low-latency,replay",
                    help="comma-separated: default, low-latency, replay (default all three)")
    ap.add_argument("--steps", default=DEFAULT_STEPS, help=f"stream counts to probe in order (default {DEFAULT_STEPS})")
    ap.add_argument("--probe-s", type=float, default=8.0, help="measured span of a probe, s (default 8)")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="audio before the measured span, s (default 3)")
    ap.add_argument("--hold-s", type=float, default=30.0, help="measured span of the hold, s (default 30)")
    ap.add_argument("--hold-tries", type=int, default=3, help="lower counts held if the best one fails (default 3)")
    ap.add_argument("--refine", type=int, default=2, help="bisections between the last pass and the first fail")
    ap.add_argument("--flood-s", type=float, default=3.0, help="audio per stream in the flooded measurements, s")
    ap.add_argument("--p99-ms", type=float, default=P99_LIMIT_MS, help="latency limit, p99 ms (default 100)")
    ap.add_argument("--quick", action="store_true", help="2 and 4 streams, short probes and hold (a smoke test)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--role", choices=("sink",), help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--replayed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "sink":
        role_sink(args.results, args.replayed)
        return 0
    if args.quick:  # an explicit --steps still counts (the test suite runs one step)
        steps = args.steps if args.steps != DEFAULT_STEPS else "2,4"
        args.steps, args.probe_s, args.warmup_s, args.hold_s, args.refine, args.flood_s = steps, 2.0, 1.5, 3.0, 0, 1.0
    names = [x.strip() for x in args.settings.split(",") if x.strip()]
    unknown = [x for x in names if x not in SETTINGS]
    if unknown:
        print(f"bench_capacity: unknown setting {unknown[0]!r}; use {', '.join(SETTINGS)}.", file=sys.stderr)
        return 2
    try:
        steps = [int(x) for x in args.steps.split(",")]
    except ValueError:
        print(f"bench_capacity: --steps must be whole numbers separated by commas, got {args.steps!r}.",
              file=sys.stderr)
        return 2

    def log(text: str) -> None:
        print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {
        "limits": {"p99_ms": args.p99_ms, "probe_s": args.probe_s, "warmup_s": args.warmup_s, "hold_s": args.hold_s},
        "latency": "sink receive time - Result.end_ns (replay: minus the shift from the traces), results whose window "
                   "ends within the measured span, final results left out",
        "settings": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    try:
        for name in names:
            s = SETTINGS[name]
            pipe = Pipeline(s, tmp, args.p99_ms)
            try:
                pipe.start()
                r = ramp(pipe, steps, args, log)
            except (RuntimeError, OSError) as e:  # the pipeline would not (re)start: report it, go on
                log(f"{name}: {e}")
                r = {"steps": [], "best_probe": 0, "first_fail": None, "sustained": 0, "hold": None,
                     "error": str(e)[-2000:]}
            finally:
                pipe.stop()
            res["settings"][name] = {"setting": asdict(s), "ramp": r}
        import bench_classify  # noqa: F401  (torch with one thread, before the model loads)

        from classify.models import load_model

        model = load_model("vad")
        try:
            for name, r in res["settings"].items():
                n = (r["ramp"].get("live") or {}).get("streams") or 8
                log(f"{name}: flooded per-stage costs at {n} streams")
                r["flooded"] = flooded_costs(SETTINGS[name], n, args.flood_s, model)
        finally:
            model.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bl.emit("capacity", res, args.json, tables(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
