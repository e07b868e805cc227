"""soundbus against its peers, on the same audio.

1. Transport: one hop of Home Assistant's Wyoming protocol (the ``wyoming`` package:
   AudioChunk events from an AsyncTcpClient to an AsyncTcpServer handler) vs one soundbus
   hop (Outbox -> Inbox, see bench_floor.py), both between two real processes with
   20 ms chunks of 16 kHz s16 mono (640 B). Flooded: chunks/s and receiver CPU per chunk.
   Paced (``--paced-rate`` chunks/s): per-chunk latency p50/p99, send stamp -> receipt.
   The Wyoming chunk carries its send time in ``timestamp`` (ns instead of ms: same JSON int).

2. Conversion: the seed article's method (per-chunk peak normalisation, then stateless
   torchaudio.functional.resample per 20 ms chunk) vs streaming resampling with full-scale
   scaling (soxr.ResampleStream, and convert's own hot path: StreamConverter.accept),
   48 kHz stereo s16 -> 16 kHz mono. Speed: CPU per chunk. Fidelity: SNR in dB against
   whole-signal resampling of the same full-scale-scaled signal, on real audio (ALSA's
   Front_Center.wav and espeak-ng speech, made 48 kHz stereo with sox).

    .venv/bin/python bench/bench_peers.py [--count 20000] [--json] [--skip-transport|--skip-convert]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl
import numpy as np
from bench_floor import FRAMES, PAYLOAD_BYTES, RATE, _best, run_hop

IN_RATE, OUT_RATE, IN_CH = 48_000, 16_000, 2
CHUNK_IN = IN_RATE // 50  # 960 input samples = 20 ms
ALSA_WAV = Path("/usr/share/sounds/alsa/Front_Center.wav")
SPEECH = "Turn on the kitchen lights, then set a timer for ten minutes and play some music."


# ---------------------------------------------------------------------------------------
# Wyoming roles (each in its own process)

async def _wy_recv(count: int, idle_s: float) -> dict:
    from wyoming.audio import AudioChunk
    from wyoming.server import AsyncEventHandler, AsyncTcpServer

    state = {"n": 0, "c_first": 0.0, "t_first": 0.0, "c_last": 0.0, "t_last": 0.0, "lat": [], "seen": time.monotonic()}
    done = asyncio.Event()

    class Handler(AsyncEventHandler):
        async def handle_event(self, event) -> bool:
            if AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)
                np.frombuffer(chunk.audio, dtype="<i2")
                state["lat"].append((time.time_ns() - chunk.timestamp) / 1e3)
                state["n"] += 1
                if state["n"] == 1:
                    state["c_first"], state["t_first"] = time.process_time(), time.perf_counter()
                state["c_last"], state["t_last"] = time.process_time(), time.perf_counter()
                state["seen"] = time.monotonic()
                if state["n"] >= count:
                    done.set()
            return True

    server = AsyncTcpServer("127.0.0.1", 0)
    await server.start(Handler)
    port = server._server.sockets[0].getsockname()[1]  # port 0: the kernel chose it
    print("endpoint", port, flush=True)
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 0.2)
        except asyncio.TimeoutError:
            if state["n"] and time.monotonic() - state["seen"] > idle_s:
                break
    await server.stop()
    n, span = state["n"], max(state["n"] - 1, 1)
    lat = state["lat"]
    return {
        "received": n,
        "fps": span / (state["t_last"] - state["t_first"]) if state["t_last"] > state["t_first"] else 0.0,
        "cpu_us_per_frame": (state["c_last"] - state["c_first"]) / span * 1e6,
        "latency_us": bl.percentiles(lat[len(lat) // 10:], (50, 99)),
    }


async def _wy_send(port: int, count: int, rate: float) -> dict:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    payload = (np.arange(FRAMES, dtype="<i2") * 7).tobytes()
    client = AsyncTcpClient("127.0.0.1", port)
    await client.connect()
    await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(count):
        if rate > 0:
            dt = t0 + i / rate - time.perf_counter()
            if dt > 0:
                await asyncio.sleep(dt)
        await client.write_event(AudioChunk(rate=RATE, width=2, channels=1, audio=payload,
                                            timestamp=time.time_ns()).event())
    cpu = time.process_time() - c0
    try:  # the receiver may already have closed after its last chunk
        await client.write_event(AudioStop().event())
        await client.disconnect()
    except ConnectionError:
        pass
    return {"sent": count, "dropped": 0, "cpu_s": cpu}


def run_wyoming(count: int, rate: float = 0.0, idle_s: float = 3.0, timeout: float = 120.0) -> dict:
    me = bl.BENCH / "bench_peers.py"
    recv = bl.python_script(me, "--role", "wy-recv", "--count", str(count), "--idle", str(idle_s))
    send = None
    try:
        port = recv.wait_for(r"^endpoint ", timeout=30, stdout=True).split()[1]
        send = bl.python_script(me, "--role", "wy-send", "--port", port, "--count", str(count), "--rate", str(rate))
        s = send.json_result(timeout)
        r = recv.json_result(timeout)
    finally:
        recv.stop()
        if send:
            send.stop()
    r["sender_cpu_us_per_frame"] = s["cpu_s"] / max(s["sent"], 1) * 1e6
    r["sent"], r["dropped"] = s["sent"], s["dropped"]
    return r


def bench_transport(count: int, repeat: int, paced_rate: float, paced_s: float) -> tuple[dict, list]:
    flood: dict[str, list[dict]] = {"wyoming": [], "soundbus": []}
    for _ in range(repeat):
        flood["wyoming"].append(run_wyoming(count))
        flood["soundbus"].append(run_hop("soundbus", count))
    n_paced = int(paced_rate * paced_s)
    paced = {"wyoming": run_wyoming(n_paced, paced_rate), "soundbus": run_hop("soundbus", n_paced, paced_rate)}
    wy, sb = _best(flood["wyoming"]), _best(flood["soundbus"])
    res = {
        "chunk_bytes": PAYLOAD_BYTES,
        "flood": {"wyoming": wy, "soundbus": sb},
        "paced_rate": paced_rate,
        "paced": paced,
        "fps_ratio_soundbus_over_wyoming": bl.ratio(sb["fps"], wy["fps"]),
        "recv_cpu_ratio_soundbus_over_wyoming": bl.ratio(sb["cpu_us_per_frame"], wy["cpu_us_per_frame"]),
    }
    rows = [("hop (20 ms chunks)", "chunks/s", "recv CPU us/chunk", "send CPU us/chunk",
             f"p50 us @{paced_rate:g}/s", f"p99 us @{paced_rate:g}/s")]
    for name, f, p in (("wyoming (baseline)", wy, paced["wyoming"]), ("soundbus", sb, paced["soundbus"])):
        rows.append((name, bl.fmt(f["fps"]), bl.fmt(f["cpu_us_per_frame"]), bl.fmt(f["sender_cpu_us_per_frame"]),
                     bl.fmt(p["latency_us"]["p50"]), bl.fmt(p["latency_us"]["p99"])))
    rows.append(("soundbus / wyoming", bl.fmt(res["fps_ratio_soundbus_over_wyoming"]),
                 bl.fmt(res["recv_cpu_ratio_soundbus_over_wyoming"]),
                 bl.fmt(bl.ratio(sb["sender_cpu_us_per_frame"], wy["sender_cpu_us_per_frame"])),
                 bl.fmt(bl.ratio(paced["soundbus"]["latency_us"]["p50"], paced["wyoming"]["latency_us"]["p50"])),
                 bl.fmt(bl.ratio(paced["soundbus"]["latency_us"]["p99"], paced["wyoming"]["latency_us"]["p99"]))))
    return res, rows


# ---------------------------------------------------------------------------------------
# conversion: the seed article vs streaming

def load_audio(tmp: Path) -> dict[str, np.ndarray]:
    """Real signals as 48 kHz stereo s16, shaped (frames, 2)."""
    out = {}
    sources = []
    if ALSA_WAV.exists():
        sources.append(("alsa_front_center", [str(ALSA_WAV)]))
    if shutil.which("espeak-ng"):
        speech = tmp / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(speech), SPEECH], check=True, capture_output=True)
        sources.append(("espeak_speech", [str(speech)]))
    for name, src in sources:
        dst = tmp / f"{name}_48k_stereo.wav"
        subprocess.run(["sox", *src, "-r", str(IN_RATE), "-c", str(IN_CH), "-b", "16", str(dst)], check=True,
                       capture_output=True)
        out[name] = _read_wav_s16(dst)
    return out


def _read_wav_s16(path: Path) -> np.ndarray:
    import wave

    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getframerate() == IN_RATE
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data.reshape(-1, w.getnchannels())


def snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    """10 log10(|ref|^2 / |x - ref|^2) over the common length."""
    n = min(len(x), len(ref))
    err = np.sum((x[:n].astype(np.float64) - ref[:n]) ** 2)
    return float(10 * np.log10(np.sum(ref[:n].astype(np.float64) ** 2) / err)) if err > 0 else float("inf")


def seed_chunks(pcm: np.ndarray, normalise: bool) -> tuple[np.ndarray, float, int]:
    """The article: per 20 ms chunk, optional peak normalisation, mono, stateless torchaudio resample.

    Returns (16 kHz mono float32, CPU us per chunk, chunks that divided by zero).
    """
    import torch
    import torchaudio.functional as AF

    out, zero = [], 0
    c0 = time.process_time()
    for i in range(0, len(pcm) - CHUNK_IN + 1, CHUNK_IN):
        x = pcm[i : i + CHUNK_IN].astype(np.float32)
        if normalise:
            peak = np.max(np.abs(x))
            if peak == 0:
                zero += 1  # the article divides by zero here (NaN); we count it and keep zeros
            else:
                x /= peak
        else:
            x /= 32768.0
        t = torch.from_numpy(x.T.copy()).mean(0, keepdim=True)  # (frames, ch) -> (1, frames)
        out.append(AF.resample(t, IN_RATE, OUT_RATE)[0].numpy())
    cpu = time.process_time() - c0
    return np.concatenate(out), cpu / max(len(out), 1) * 1e6, zero


def soxr_stream(pcm: np.ndarray) -> tuple[np.ndarray, float]:
    """Full-scale scaling, mono, soxr.ResampleStream carried across chunks."""
    import soxr

    rs = soxr.ResampleStream(IN_RATE, OUT_RATE, 1, dtype="float32", quality="HQ")
    out, n = [], 0
    c0 = time.process_time()
    for i in range(0, len(pcm), CHUNK_IN):
        c = pcm[i : i + CHUNK_IN]
        x = c[:, 0].astype(np.float32)
        for k in range(1, c.shape[1]):  # column adds: numpy's mean(axis=1) over 2 columns is ~3x slower
            x += c[:, k]
        x *= np.float32(1 / (32768 * c.shape[1]))
        out.append(rs.resample_chunk(x))
        n += 1
    cpu = time.process_time() - c0
    out.append(rs.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out), cpu / n * 1e6


def convert_hot_path(pcm: np.ndarray) -> tuple[np.ndarray, float] | None:
    """convert's own per-chunk work, protocol v2: StreamConverter.accept on an already-decoded raw
    message (continuity, full-scale scaling and downmix with select_float32, soxr HQ, cutting into
    20 ms output chunks); no decode, no encode, no socket."""
    try:
        from common.observe.metrics import StageMetrics
        from common.wire import Audio, AudioHeader, Kind, Layout, SampleFormat
        from convert.stream import ConvertConfig, StreamConverter
    except ImportError:
        return None
    conv = StreamConverter("bench", ConvertConfig(rate=OUT_RATE, chunk_samples=OUT_RATE // 50),
                           StageMetrics("bench", summary_every_s=1e9))
    msgs = []
    for k, i in enumerate(range(0, len(pcm), CHUNK_IN)):
        c = np.ascontiguousarray(pcm[i : i + CHUNK_IN])
        h = AudioHeader(stream="bench", epoch=1, seq=k, t_capture_ns=0, rate=IN_RATE, channels=IN_CH,
                        format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=len(c), offset=i,
                        flags=4 if i + CHUNK_IN >= len(pcm) else 0)  # END on the last: the resampler's tail too
        msgs.append(Audio(Kind.RAW, h, memoryview(c).cast("B")))
    out = []
    c0 = time.process_time()
    for m in msgs[:-1]:
        for f in conv.accept(m, 0.0):
            out.append(f.samples[0])
    cpu = time.process_time() - c0
    out += [f.samples[0] for f in conv.accept(msgs[-1], 0.0)]
    return np.concatenate(out), cpu / max(len(msgs) - 1, 1) * 1e6


def bench_convert() -> tuple[dict, list]:
    import soxr
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(1)  # per-chunk cost on one core, as a stage worker would run
    res: dict = {"torch_threads": 1, "signals": {}}
    rows = [("signal / method", "CPU us/chunk", "x seed speed", "SNR dB vs own whole", "SNR dB vs torchaudio whole")]
    with tempfile.TemporaryDirectory() as d:
        signals = load_audio(Path(d))
    for name, pcm in signals.items():
        mono = pcm.astype(np.float32).mean(axis=1) / 32768.0  # the same full-scale-scaled signal
        ref_ta = AF.resample(torch.from_numpy(mono)[None], IN_RATE, OUT_RATE)[0].numpy()
        ref_sx = soxr.resample(mono, IN_RATE, OUT_RATE, quality="HQ")
        seed_y, _, zeros = seed_chunks(pcm, normalise=True)
        stateless_y, _, _ = seed_chunks(pcm, normalise=False)
        sx_y, _ = soxr_stream(pcm)
        # Speed on >= 20 s of the same audio (the best of 3 passes), fidelity on the signal itself.
        long = np.tile(pcm, (max(1, int(np.ceil(20 * IN_RATE / len(pcm)))), 1))
        seed_us = min(seed_chunks(long, normalise=True)[1] for _ in range(3))
        stateless_us = min(seed_chunks(long, normalise=False)[1] for _ in range(3))
        sx_us = min(soxr_stream(long)[1] for _ in range(3))
        r = {
            "seconds": len(pcm) / IN_RATE,
            "chunks": len(pcm) // CHUNK_IN,
            "seed": {"us_per_chunk": seed_us, "snr_db": snr_db(seed_y, ref_ta), "silent_chunks_div0": zeros},
            "stateless_fullscale": {"us_per_chunk": stateless_us, "snr_db": snr_db(stateless_y, ref_ta)},
            "soxr_stream": {"us_per_chunk": sx_us, "snr_db": snr_db(sx_y, ref_sx), "snr_db_vs_torchaudio": snr_db(sx_y, ref_ta)},
        }
        conv = convert_hot_path(pcm)
        if conv is not None:
            conv_us = min(convert_hot_path(long)[1] for _ in range(3))
            r["convert"] = {"us_per_chunk": conv_us, "snr_db": snr_db(conv[0], ref_sx),
                            "snr_db_vs_torchaudio": snr_db(conv[0], ref_ta)}
        res["signals"][name] = r
        label = {"seed": "seed article (peak norm + stateless)", "stateless_fullscale": "stateless, full-scale",
                 "soxr_stream": "soxr.ResampleStream", "convert": "convert hot path"}
        for k in ("seed", "stateless_fullscale", "soxr_stream", "convert"):
            if k not in r:
                continue
            m = r[k]
            rows.append((f"{name}: {label[k]}", bl.fmt(m["us_per_chunk"]), bl.fmt(bl.ratio(seed_us, m["us_per_chunk"])),
                         bl.fmt(m["snr_db"]), bl.fmt(m.get("snr_db_vs_torchaudio", m["snr_db"]))))
    res["soxr_presets"] = soxr_presets(signals)
    rows.append(("", "", "", "", "", ""))
    names = list(signals)
    rows.append(("convert --quality (latency vs fidelity)", "audio held ms mean", "audio held ms max",
                 "CPU us per 20 ms chunk", *(f"SNR dB vs VHQ: {n}" for n in names)))
    for q, v in res["soxr_presets"].items():
        rows.append((q, bl.fmt(v["held_ms_mean"]), bl.fmt(v["held_ms_max"]), bl.fmt(v["cpu_us_per_chunk"]),
                     *(bl.fmt(v["snr_db"][n]) for n in names)))
    return res, rows


def soxr_presets(signals: dict[str, np.ndarray]) -> dict[str, dict]:
    """For each convert quality (soxr's presets and LD, convert.resample.StreamResampler): audio it
    holds back when streamed in 20 ms chunks (ms), CPU per streamed 20 ms mono chunk (us), and its
    fidelity (SNR dB of the whole-signal result against soxr VHQ's, the baseline) on each signal."""
    import soxr

    sys.path.insert(0, str(bl.ROOT))
    from convert.resample import QUALITIES, StreamResampler

    monos = {name: pcm.astype(np.float32).mean(axis=1) / np.float32(32768.0) for name, pcm in signals.items()}
    refs = {name: soxr.resample(m, IN_RATE, OUT_RATE, quality="VHQ") for name, m in monos.items()}
    first = next(iter(monos.values()))
    chunks = [np.ascontiguousarray(first[i : i + CHUNK_IN]) for i in range(0, len(first) - CHUNK_IN + 1, CHUNK_IN)]
    out: dict[str, dict] = {}
    for q in QUALITIES:
        held = bl.resampler_holdback_ms(q, CHUNK_IN, IN_RATE, OUT_RATE)
        rs = StreamResampler(IN_RATE, OUT_RATE, 1, q)
        t0 = time.process_time()
        for c in chunks:
            rs.process(c)
        cpu_us = (time.process_time() - t0) / len(chunks) * 1e6
        snr = {name: snr_db(StreamResampler(IN_RATE, OUT_RATE, 1, q).process(m, last=True), refs[name])
               for name, m in monos.items()}
        out[q] = {"held_ms_mean": held["mean"], "held_ms_max": held["max"], "cpu_us_per_chunk": cpu_us,
                  "snr_db": snr}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20_000, help="chunks per flooded run (default 20000)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating flooded runs per peer; the best is kept")
    ap.add_argument("--paced-rate", type=float, default=500.0, help="chunks/s for the latency run (default 500)")
    ap.add_argument("--paced-seconds", type=float, default=6.0, help="length of the latency run (default 6)")
    ap.add_argument("--skip-transport", action="store_true")
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--role", choices=("wy-send", "wy-recv"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "wy-recv":
        print(json.dumps(asyncio.run(_wy_recv(args.count, args.idle))), flush=True)
        return 0
    if args.role == "wy-send":
        print(json.dumps(asyncio.run(_wy_send(args.port, args.count, args.rate))), flush=True)
        return 0

    res: dict = {}
    table: list = []
    if not args.skip_transport:
        res["transport"], rows = bench_transport(args.count, args.repeat, args.paced_rate, args.paced_seconds)
        table += rows
    if not args.skip_convert:
        res["convert"], rows = bench_convert()
        if table:
            table.append(("", "", "", "", "", ""))
            rows = [r + ("",) for r in rows]
        table += rows
    bl.emit("peers", res, args.json, table or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
