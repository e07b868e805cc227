"""soundbus wyoming against wyoming-openwakeword: CPU per satellite and detection latency, same run.

Servers (each started fresh for every client count, on 127.0.0.1):
  soundbus  python -m wyoming_server + convert --chunk-samples 1280 + classify --model wakeword
  peer      wyoming-openwakeword 1.8.2, Home Assistant's reference wake-word server, in its own venv
            (bench/.peers/wyoming-openwakeword, made on the first run from PyPI with numpy<2: its
            tflite-runtime build does not load under numpy 2), --preload-model hey_jarvis

Clients (asyncio, this process; the same for both servers): N satellites, each doing Home
Assistant's sequence (homeassistant/components/wyoming/wake_word.py) round after round on a new
connection: detect{names: [the server's hey_jarvis name]}, audio-start, 16 kHz s16 mono 10 ms
chunks in real time -- background noise at -60 dBFS for a random 1-3 s (seeded, so both servers
get the same), espeak-ng "hey jarvis", 2 s of noise -- until a detection arrives (then it
closes, as Home Assistant does) or the audio ends (audio-stop, read the answer).

Measured over ``--seconds`` after ``--warmup``:
  CPU per satellite  user+system CPU of every server process (/proc/PID/stat; soundbus: the
                     server, convert and classify) / (N x wall time), in % of one core
  latency            detection received - the moment the chunk holding the wake word's last
                     sample was sent (the end of the wake word), p50/p99 over all rounds
  detected           rounds with a detection / rounds whose audio reached the wake word

Goal (issue 18): at 32 clients, soundbus uses less than half the peer's CPU per satellite,
with a p99 latency no worse.

    .venv/bin/python bench/bench_wyoming.py [--clients 1,8,32] [--seconds 40] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import benchlib as bl
import numpy as np

PEER_VENV = bl.BENCH / ".peers" / "wyoming-openwakeword"
PEER_PIP = ["wyoming-openwakeword==1.8.2", "numpy<2"]
RATE = 16_000
CHUNK_MS = 10  # Home Assistant sends 10 ms chunks (its audio processor's frame)
NOISE_DBFS = -60.0


# ---------------------------------------------------------------------------------------
# audio

@dataclass
class Round:
    """One round's audio (int16) and the sample index just after the wake word."""

    pcm: np.ndarray
    wake_end: int


def wake_word() -> np.ndarray:
    """espeak-ng "hey jarvis" at 16 kHz, float32, its own leading/trailing silence trimmed."""
    import soundfile as sf
    import soxr

    wav = Path("/tmp") / f"bench-wyoming-{time.time_ns()}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "hey jarvis"], check=True, capture_output=True)
    x, rate = sf.read(str(wav), dtype="float32")
    wav.unlink()
    x = soxr.resample(x, rate, RATE)
    loud = np.nonzero(np.abs(x) > 10 ** (-50 / 20))[0]
    return x[loud[0] : loud[-1] + 1]


def make_round(word: np.ndarray, rng: np.random.Generator) -> Round:
    lead = int(rng.uniform(1.0, 3.0) * RATE)
    tail = 2 * RATE
    noise = rng.standard_normal(lead + len(word) + tail).astype(np.float32) * 10 ** (NOISE_DBFS / 20)
    x = noise
    x[lead : lead + len(word)] += word
    return Round(np.clip(np.round(x * 32767), -32768, 32767).astype("<i2"), lead + len(word))


# ---------------------------------------------------------------------------------------
# clients

@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    rounds: int = 0  # rounds whose audio reached the end of the wake word
    detected: int = 0
    errors: int = 0


async def satellite(port: int, name: str, word: np.ndarray, seed: int, until: float, tally: Tally,
                    count_from: float) -> None:
    """Home Assistant's sequence, round after round, until ``until`` (time.monotonic())."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.wake import Detect

    rng = np.random.default_rng(seed)
    step = RATE * CHUNK_MS // 1000
    while time.monotonic() < until:
        r = make_round(word, rng)
        data = r.pcm.tobytes()
        end_sent: float | None = None
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Detect(names=[name]).event())
                await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
                answer: asyncio.Future = asyncio.get_running_loop().create_future()

                async def read() -> None:
                    while True:
                        ev = await client.read_event()
                        if ev is None or ev.type in ("detection", "not-detected", "error"):
                            if not answer.done():
                                answer.set_result((ev.type if ev else None, time.monotonic()))
                            return

                reader = asyncio.create_task(read())
                t0 = time.monotonic()
                for i in range(0, len(r.pcm), step):
                    if answer.done() or time.monotonic() >= until:
                        break
                    chunk = AudioChunk(rate=RATE, width=2, channels=1, audio=data[2 * i : 2 * (i + step)],
                                       timestamp=i * 1000 // RATE)
                    await client.write_event(chunk.event())
                    if end_sent is None and i + step >= r.wake_end:
                        end_sent = time.monotonic()
                    await asyncio.sleep(max(0.0, t0 + (i + step) / RATE - time.monotonic()))
                if not answer.done() and time.monotonic() < until:
                    await client.write_event(AudioStop().event())
                try:
                    kind, t = await asyncio.wait_for(asyncio.shield(answer), 10.0)
                except asyncio.TimeoutError:
                    kind, t = None, time.monotonic()
                reader.cancel()
        except (OSError, ConnectionError):
            tally.errors += 1
            await asyncio.sleep(0.5)
            continue
        if end_sent is None or end_sent < count_from or t > until:
            continue  # warm-up, or cut by the deadline
        tally.rounds += 1
        if kind == "detection":
            tally.detected += 1
            tally.latencies_ms.append((t - end_sent) * 1e3)


async def drive(port: int, name: str, word: np.ndarray, clients: int, warmup: float, seconds: float,
                procs: list[bl.Proc]) -> dict:
    tally = Tally()
    start = time.monotonic()
    count_from, until = start + warmup, start + warmup + seconds
    tasks = [asyncio.create_task(satellite(port, name, word, 1000 + k, until, tally, count_from))
             for k in range(clients)]
    await asyncio.sleep(warmup)
    cpu0, t0 = [bl.proc_cpu_s(p.pid) for p in procs], time.monotonic()
    await asyncio.sleep(max(0.0, until - time.monotonic()))
    cpu1, t1 = [bl.proc_cpu_s(p.pid) for p in procs], time.monotonic()
    await asyncio.gather(*tasks)
    lat = bl.percentiles(tally.latencies_ms)
    used = sum(cpu1) - sum(cpu0)
    return {
        "cpu_pct_per_satellite": used / (clients * (t1 - t0)) * 100,
        "cpu_pct_total": used / (t1 - t0) * 100,
        "cpu_pct_by_process": {p.argv[2]: (b - a) / (t1 - t0) * 100 for p, a, b in zip(procs, cpu0, cpu1)},
        "latency_p50_ms": lat["p50"],
        "latency_p99_ms": lat["p99"],
        "rounds": tally.rounds,
        "detected": tally.detected,
        "client_errors": tally.errors,
    }


async def wake_name(port: int) -> str:
    """The server's name for hey jarvis, from its describe (soundbus: hey_jarvis; peer: hey_jarvis_v0.1)."""
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    for _ in range(100):
        try:
            async with AsyncTcpClient("127.0.0.1", port) as client:
                await client.write_event(Describe().event())
                info = Info.from_event(await asyncio.wait_for(client.read_event(), 10))
            return next(m.name for m in info.wake[0].models if "jarvis" in m.name)
        except (OSError, ConnectionError):
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no Wyoming server answered on port {port}")


# ---------------------------------------------------------------------------------------
# servers

def start_soundbus(port: int) -> list[bl.Proc]:
    raw, tensor, result = bl.free_tcp(), bl.free_tcp(), bl.free_tcp()
    procs = [
        bl.python_module("classify", "--model", "wakeword", "--input", tensor, "--output", "@" + result),
        bl.python_module("convert", "--input", raw, "--output", "@" + tensor, "--chunk-samples", "1280"),
        bl.python_module("wyoming_server", "--uri", f"tcp://127.0.0.1:{port}", "--output", "@" + raw,
                         "--input", result, "--max-clients", "256"),
    ]
    try:
        procs[0].wait_for(r"ready model=wakeword", 180)
        procs[2].wait_for(r"raw subscriber joined", 60)
        procs[0].wait_for(r"subscriber joined", 60)
    except BaseException:
        stop(procs)
        raise
    return procs


def peer_python() -> Path:
    """The peer's venv (made once: it pins wyoming 1.2 and a tflite runtime of its own)."""
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        print(f"making {PEER_VENV} (pip install {' '.join(PEER_PIP)}) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PIP], check=True)
    return py


def start_peer(port: int) -> list[bl.Proc]:
    p = bl.Proc([str(peer_python()), "-m", "wyoming_openwakeword", "--uri", f"tcp://127.0.0.1:{port}",
                 "--preload-model", "hey_jarvis"])
    try:
        p.wait_for(r"Ready", 120)
    except BaseException:
        stop([p])
        raise
    return [p]


def stop(procs: list[bl.Proc]) -> None:
    for p in reversed(procs):
        p.stop()


SERVERS = {"peer": start_peer, "soundbus": start_soundbus}


def measure(server: str, clients: int, word: np.ndarray, warmup: float, seconds: float) -> dict:
    port = int(bl.free_tcp().rsplit(":", 1)[1])
    procs = SERVERS[server](port)
    try:
        name = asyncio.run(wake_name(port))
        res = asyncio.run(drive(port, name, word, clients, warmup, seconds, procs))
    finally:
        stop(procs)
    return {"server": server, "clients": clients, "wake_word": name, **res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,8,32", help="client counts, comma-separated (default 1,8,32)")
    ap.add_argument("--seconds", type=float, default=40.0, help="measured seconds per server and count (default 40)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    ap.add_argument("--servers", default="peer,soundbus", help="which servers (default peer,soundbus)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    word = wake_word()
    rows = []
    for n in (int(c) for c in args.clients.split(",")):
        for server in args.servers.split(","):
            rows.append(measure(server, n, word, args.warmup, args.seconds))
            r = rows[-1]
            print(f"{server} x{n}: {r['cpu_pct_per_satellite']:.2f} % core per satellite, p50 "
                  f"{r['latency_p50_ms']:.0f} ms, p99 {r['latency_p99_ms']:.0f} ms, {r['detected']}/{r['rounds']} "
                  "detected", file=sys.stderr)
    peer = {r["clients"]: r for r in rows if r["server"] == "peer"}
    table = [("clients", "server", "CPU % core per satellite", "vs peer", "detected", "latency p50 ms",
              "latency p99 ms")]
    for r in rows:
        base = peer.get(r["clients"])
        table.append((str(r["clients"]), r["server"], bl.fmt(r["cpu_pct_per_satellite"]),
                      bl.fmt(bl.ratio(r["cpu_pct_per_satellite"], base["cpu_pct_per_satellite"])) if base else "-",
                      f"{r['detected']}/{r['rounds']}", bl.fmt(r["latency_p50_ms"]), bl.fmt(r["latency_p99_ms"])))
    goal = {}
    ours = {r["clients"]: r for r in rows if r["server"] == "soundbus"}
    if 32 in ours and 32 in peer:
        goal = {"cpu_ratio_at_32": bl.ratio(ours[32]["cpu_pct_per_satellite"], peer[32]["cpu_pct_per_satellite"]),
                "p99_ms_at_32": (ours[32]["latency_p99_ms"], peer[32]["latency_p99_ms"])}
        goal["met"] = goal["cpu_ratio_at_32"] < 0.5 and ours[32]["latency_p99_ms"] <= peer[32]["latency_p99_ms"]
    bl.emit("wyoming", {"rows": rows, "goal": goal, "seconds": args.seconds}, args.json, table)


if __name__ == "__main__":
    main()
