"""Memory: what one more stream costs in convert and classify, and whether RSS grows over a long run.

1. Per-stream cost. Real ``python -m convert`` and ``python -m classify --model vad``; this
   process publishes 48 kHz stereo s16 frames (0.5 s per stream, paced) for 1 stream, then
   for 50 streams, and reads each process's RSS once every stream has results and the
   pipeline is quiet. Baseline: the same processes idle (0 streams), measured in the same run.
   Per-stream cost = (RSS at 50 - RSS at 1) / 49.

2. Long replay. ``soundbus record`` a synthetic recording (``--record-seconds`` of audio,
   captured in real time: replay keeps recorded receive times), then ``soundbus replay --speed 10 --loop`` it through convert
   and classify for ``--replay-seconds`` of wall time (each loop is a new epoch: old stream
   state must be freed). RSS is sampled every second; growth = last sample / sample at the
   end of the warm-up - 1 (target < 5 %). Without ``soundbus replay`` this process publishes
   the frames itself at 10x.

    .venv/bin/python bench/bench_memory.py [--streams 50] [--replay-seconds 60] [--json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import numpy as np
import zmq

RATE, CH, FRAME = 48_000, 2, 960  # 20 ms of 48 kHz stereo s16 per frame
GROWTH_TARGET = 0.05


class Stages:
    """convert + classify as real processes, and a SUB on the results."""

    def __init__(self, raw: str, model: str = "vad") -> None:
        self.raw, self.tensor, self.result = raw, bl.free_tcp(), bl.free_tcp()
        self.ctx = zmq.Context()
        self.classify = bl.python_module("classify", "--model", model, "--input", self.tensor, "--output", self.result,
                                         "--max-lag-ms", "600000", "--hwm", "100000")
        self.classify.wait_for(r"\bready\b", timeout=180)
        self.convert = bl.python_module("convert", "--input", raw, "--output", self.tensor, "--hwm", "100000")
        self.convert.wait_for(r"\bready\b", timeout=60)
        self.convert.wait_for(r"subscriber joined", timeout=60)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"result/")
        self.sub.connect(self.result)
        self.classify.wait_for(r"subscriber joined", timeout=30)
        self.results: dict[str, int] = {}

    def rss(self) -> dict[str, int]:
        return {"convert": bl.proc_rss_bytes(self.convert.pid), "classify": bl.proc_rss_bytes(self.classify.pid)}

    def drain(self, quiet_s: float = 1.5, timeout: float = 60.0, until=None) -> None:
        """Count results per stream until ``until(results)`` holds and nothing came for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            if self.sub.poll(100):
                while True:
                    try:
                        data = self.sub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    stream = data[: data.index(b"\0")].decode().split("/")[2]  # result/BB/STREAM/MODEL/
                    self.results[stream] = self.results.get(stream, 0) + 1
                last = time.monotonic()
            elif time.monotonic() - last > quiet_s and (until is None or until(self.results)):
                return
        raise RuntimeError(f"results did not settle in {timeout}s: {len(self.results)} streams seen")

    def stop(self) -> None:
        self.convert.stop()
        self.classify.stop()
        self.sub.close(0)
        self.ctx.term()


def _frames(rng: np.random.Generator, n: int) -> list[bytes]:
    return [(rng.standard_normal((FRAME, CH)) * 3000).astype("<i2").tobytes() for _ in range(n)]


def _header(stream: str, i: int, t_ns: int):
    from common.wire import AudioHeader, Layout, SampleFormat

    return AudioHeader(stream=stream, epoch=1, seq=i, t_capture_ns=t_ns, rate=RATE, channels=CH,
                       format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=FRAME, offset=i * FRAME,
                       source="bench")


def _outbox(ctx: zmq.Context, addr: str):
    """An Outbox that refuses (instead of dropping) when a subscriber's queue is full."""
    from common.observe.metrics import StageMetrics
    from common.transport.outbox import Outbox
    from common.transport.sockets import SocketOptions

    return Outbox(ctx, [addr], SocketOptions(hwm=100_000, nodrop=True), StageMetrics("bench", summary_every_s=1e9))


def publish(pub, streams: list[str], frames_per_stream: int, rate_fps: float, t_ns0: int | None = None) -> None:
    """Send ``frames_per_stream`` frames to each stream, interleaved, at ``rate_fps`` frames/s in total."""
    from common.wire import Kind, encode_audio

    payloads = _frames(np.random.default_rng(0), 25)
    t0 = time.perf_counter()
    base = t_ns0 or time.time_ns()
    k = 0
    for i in range(frames_per_stream):
        for s in streams:
            due = t0 + k / rate_fps
            dt = due - time.perf_counter()
            if dt > 0:
                time.sleep(dt)
            data = encode_audio(Kind.RAW, _header(s, i, base + i * 20_000_000), payloads[k % len(payloads)])
            while not pub.send(data):
                time.sleep(0.001)
            k += 1


def per_stream_cost(n_streams: int, rate_fps: float) -> dict:
    ctx = zmq.Context()
    raw = bl.free_tcp()
    pub = _outbox(ctx, raw)
    st = Stages(raw)
    try:
        pub.wait_for_subscriber(30)
        st.drain(quiet_s=1.0)
        idle = st.rss()
        publish(pub, ["m0"], 25, rate_fps)
        st.drain(until=lambda r: "m0" in r)
        one = st.rss()
        names = [f"m{i}" for i in range(1, n_streams)]
        publish(pub, names, 25, rate_fps)
        st.drain(until=lambda r: all(n in r for n in names), timeout=120)
        many = st.rss()
    finally:
        st.stop()
        pub.close()
        ctx.term()
    out = {"streams": n_streams, "rss_idle": idle, "rss_1": one, f"rss_{n_streams}": many, "per_stream_kib": {}}
    for k in ("convert", "classify"):
        out["per_stream_kib"][k] = (many[k] - one[k]) / (n_streams - 1) / 1024
    return out


def make_recording(path: Path, seconds: float, streams: int) -> None:
    """Record ``seconds`` of synthetic 48 kHz stereo audio per stream, in real time (replay keeps the
    recorded receive times, so a ``--fast`` capture would replay far faster than ``--speed``)."""
    raw = bl.free_tcp()
    rec = bl.python_module("common.cli", "record", "-o", str(path), "--input", raw, "--kind", "raw",
                   "--hwm", "1000000")
    cap = None
    try:
        rec.wait_for(r"\bready\b", timeout=30)
        args = []
        for i in range(streams):
            args += ["--source", f"synth:noise#r{i}"]
        cap = bl.python_module("capture", *args, "--rate", str(RATE), "--channels", str(CH), "--duration",
                               f"{seconds:g}", "--output", raw, "--hwm", "1000000", "--wait-subscriber", "30")
        cap.proc.wait(seconds + 60)
        # wait until the recording stops growing: every frame has been written
        size, still = -1, 0
        while still < 3:
            time.sleep(0.3)
            now = path.stat().st_size if path.exists() else 0
            still = still + 1 if now == size else 0
            size = now
    finally:
        if cap:
            cap.stop()
        rec.stop()


def sample_rss(st: Stages, seconds: float, every: float = 1.0) -> list[dict]:
    samples = []
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        nxt = time.monotonic() + every
        while time.monotonic() < nxt:
            try:
                st.drain(quiet_s=0.0, timeout=max(nxt - time.monotonic(), 0.01))
            except RuntimeError:
                pass
        samples.append({"t": round(time.monotonic() - t0, 1), **st.rss()})
    return samples


def long_replay(record_s: float, replay_s: float, warmup_s: float, speed: float, streams: int) -> dict:
    driver = "soundbus replay"
    replay_error = ""
    raw = bl.free_tcp()
    st = Stages(raw)
    player = None
    tmp = Path(tempfile.mkdtemp(prefix="sb-bench-"))
    try:
        try:
            rec = tmp / "long.sbrec"
            make_recording(rec, record_s, streams)
            files = sorted(str(p) for p in tmp.iterdir())
            player = bl.python_module("common.cli", "replay", "--speed", f"{speed:g}", "--loop",
                              "--new-epoch", "--output", raw, "--hwm", "100000", *files)
            player.wait_for(r"subscriber joined", timeout=30)
        except (RuntimeError, OSError) as e:
            driver = "own publisher (soundbus record/replay failed)"
            replay_error = str(e)[-1500:]
            if player:
                player.stop()
            player = bl.python_script(bl.BENCH / "bench_memory.py", "--role", "publish", "--output", raw,
                                      "--streams", str(streams), "--speed", f"{speed:g}",
                                      "--seconds", f"{replay_s + warmup_s + 5:g}")
            player.wait_for(r"publishing", timeout=30, stdout=True)
        samples = sample_rss(st, warmup_s + replay_s)
        results = sum(st.results.values())
    finally:
        if player:
            player.stop()
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    base = [s for s in samples if s["t"] >= warmup_s]
    out = {"driver": driver, "replay_error": replay_error, "speed": speed, "streams": streams, "recording_s": record_s, "wall_s": replay_s,
           "audio_s": replay_s * speed * streams, "results": results, "samples": samples, "growth": {}}
    for k in ("convert", "classify"):
        first, last = base[0][k], base[-1][k]
        out["growth"][k] = {"start_mib": first / 2**20, "end_mib": last / 2**20, "max_mib": max(s[k] for s in base) / 2**20,
                            "growth": last / first - 1}
    return out


def role_publish(addr: str, streams: int, speed: float, seconds: float) -> None:
    """Fallback driver: publish synthetic frames at ``speed`` x real time until ``seconds`` pass."""
    from common.wire import Kind, encode_audio

    ctx = zmq.Context()
    pub = _outbox(ctx, addr)
    pub.wait_for_subscriber(30)
    print("publishing", flush=True)
    payloads = _frames(np.random.default_rng(0), 50)
    t0, base, i = time.perf_counter(), time.time_ns(), 0
    while time.perf_counter() - t0 < seconds:
        dt = t0 + i * 0.02 / speed - time.perf_counter()
        if dt > 0:
            time.sleep(dt)
        for s in range(streams):
            pub.send(encode_audio(Kind.RAW, _header(f"r{s}", i, base + i * 20_000_000), payloads[i % len(payloads)]))
        i += 1
    pub.close()
    ctx.term()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=50, help="streams for the per-stream cost (default 50)")
    ap.add_argument("--send-rate", type=float, default=600.0, help="frames/s while filling streams (default 600)")
    ap.add_argument("--record-seconds", type=float, default=10.0,
                    help="audio per stream in the recording, recorded in real time (default 10)")
    ap.add_argument("--replay-seconds", type=float, default=45.0, help="wall time measured after warm-up (default 45)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the growth baseline (default 10)")
    ap.add_argument("--speed", type=float, default=10.0, help="replay speed (default 10)")
    ap.add_argument("--replay-streams", type=int, default=1, help="streams in the recording (default 1)")
    ap.add_argument("--skip-streams", action="store_true")
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--role", choices=("publish",), help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "publish":
        role_publish(args.output, args.replay_streams if args.streams == 50 else args.streams, args.speed, args.seconds)
        return 0

    res: dict = {}
    rows = [("measure", "convert", "classify", "note")]
    if not args.skip_streams:
        r = res["per_stream"] = per_stream_cost(args.streams, args.send_rate)
        mib = lambda b: bl.fmt(b / 2**20)
        rows.append(("RSS idle, 0 streams (baseline) MiB", mib(r["rss_idle"]["convert"]), mib(r["rss_idle"]["classify"]), ""))
        rows.append(("RSS 1 stream MiB", mib(r["rss_1"]["convert"]), mib(r["rss_1"]["classify"]), ""))
        rows.append((f"RSS {args.streams} streams MiB", mib(r[f"rss_{args.streams}"]["convert"]),
                     mib(r[f"rss_{args.streams}"]["classify"]), ""))
        rows.append(("per stream KiB", bl.fmt(r["per_stream_kib"]["convert"]), bl.fmt(r["per_stream_kib"]["classify"]),
                     f"(RSS{args.streams} - RSS1) / {args.streams - 1}"))
    if not args.skip_replay:
        r = res["replay"] = long_replay(args.record_seconds, args.replay_seconds, args.warmup, args.speed,
                                        args.replay_streams)
        g = r["growth"]
        rows.append((f"replay x{args.speed:g}: RSS after warm-up MiB", bl.fmt(g["convert"]["start_mib"]),
                     bl.fmt(g["classify"]["start_mib"]), r["driver"]))
        rows.append((f"replay: RSS after {args.replay_seconds:g} s more MiB", bl.fmt(g["convert"]["end_mib"]),
                     bl.fmt(g["classify"]["end_mib"]), f"{r['audio_s']:.0f} s of audio"))
        ok = all(v["growth"] < GROWTH_TARGET for v in g.values())
        rows.append(("replay: growth (target < 5 %)", f"{g['convert']['growth'] * 100:+.2f} %",
                     f"{g['classify']['growth'] * 100:+.2f} %", "met" if ok else "MISSED"))
        res["growth_target_met"] = ok
    bl.emit("memory", res, args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
