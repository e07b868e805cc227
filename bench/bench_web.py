"""soundbus web at N streams: the server's CPU, and the bytes per second per stream a browser receives.

A ZeroMQ publisher in this process paces what a live pipeline sends for N streams: convert's
tensors (512 samples of float32 at 16 kHz every 32 ms: noise bursts that turn on and off
every ``--event-s`` seconds) and vad's results (one per tensor, with its onsets and offsets,
and a trace of three hops), plus a yamnet-like result with five labels every 480 ms. The
real ``soundbus web`` process subscribes to it; a WebSocket client in this process (aiohttp,
as the page connects) reads every update and counts its bytes per stream.

Baselines in the same run: the server idle (no messages, no browser); the server under the
same load with no browser (the bus side alone: receive, spectrogram, state); and the floor
every stage on the runtime pays for the same messages: the runtime's Inbox receiving and
validating one second's worth of them in this process (CPU per message x messages per
second), with no work done on them. Targets (issue 17): at 16 streams < 5% of a core with a
browser connected, < 50 kB/s per stream.

    .venv/bin/python bench/bench_web.py                  # 16 streams, 20 s per configuration
    .venv/bin/python bench/bench_web.py --streams 4 --seconds 3 --json
    .venv/bin/python bench/bench_web.py --tensor-ms 128       # convert --chunk-ms 128: a quarter of the tensors
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from collections import Counter

import aiohttp
import benchlib as bl
import numpy as np
import zmq

from common.observe.metrics import StageMetrics
from common.transport.inbox import Inbox, Poller
from common.transport.sockets import SocketOptions
from common.wire.codec import encode, encode_audio
from common.wire.messages import AudioHeader, Event, Hop, Label, Layout, Result, SampleFormat
from common.wire.topics import Kind

NS = 1_000_000_000
RATE = 16_000
CHUNK = 512  # samples per tensor message (convert's default at 16 kHz): one every 32 ms
YAMNET_EVERY = 15  # tensors between yamnet-like results (480 ms)
TARGET_CORE_PCT = 5.0
TARGET_BYTES_PER_S = 50_000


class Pacer:
    """Tensors and results for ``streams`` streams in real time; speech on/off every ``event_s`` s."""

    def __init__(self, sock: zmq.Socket, streams: int, event_s: float, tensor_windows: int = 1) -> None:
        self.sock, self.event_s = sock, event_s
        self.tensor_windows = tensor_windows  # vad windows (512 samples) per tensor message (convert --chunk-ms)
        self.names = [f"mic{i:03d}" for i in range(streams)]
        rng = np.random.default_rng(1)
        self.noise = (rng.standard_normal(RATE * 2) * 0.1).astype(np.float32)
        self.seq = 0
        self.on: dict[str, bool] = {}
        self.sent = 0
        self.t0_ns = time.time_ns()

    def run(self, seconds: float) -> None:
        t0 = time.monotonic()
        step = CHUNK / RATE
        due = t0
        while time.monotonic() - t0 < seconds:
            self._tick()
            due += step
            time.sleep(max(0.0, due - time.monotonic()))

    def _tick(self) -> None:
        seq = self.seq
        self.seq += 1
        offset = seq * CHUNK
        start = self.t0_ns + offset * NS // RATE
        speech = int(offset / RATE / self.event_s) % 2 == 1
        k = self.tensor_windows
        n = k * CHUNK
        t_first = (seq - k + 1) * CHUNK  # a tensor covers the last k windows, sent with the last of them
        at = t_first % (len(self.noise) - n)
        samples = self.noise[at : at + n] * (1.0 if speech else 0.01)
        now = time.time_ns()
        hops = [Hop("capture", now - 3_000_000, now - 2_900_000), Hop("convert", now - 2_800_000, now - 2_700_000)]
        for stream in self.names:
            if (seq + 1) % k == 0:
                h = AudioHeader(stream=stream, epoch=1, seq=seq // k, t_capture_ns=self.t0_ns + t_first * NS // RATE,
                                rate=RATE, channels=1, format=SampleFormat.F32, layout=Layout.PLANAR, samples=n,
                                offset=t_first, trace=hops)
                self.sock.send(encode_audio(Kind.TENSOR, h, samples.reshape(1, n)))
                self.sent += 1
            events = []
            if self.on.get(stream, False) != speech:
                self.on[stream] = speech
                events = [Event("speech", "start" if speech else "stop", start, 0.9,
                                start if speech else start - int(self.event_s * NS))]
            trace = [*hops, Hop("classify", now - 1_000_000, now)]
            end = start + CHUNK * NS // RATE
            r = Result(stream=stream, model="vad", epoch=1, seq=seq, start_ns=start, end_ns=end, offset=offset,
                       rate=RATE, seq_first=seq, seq_last=seq, labels=[Label("speech", 0.9 if speech else 0.02)],
                       events=events, trace=trace)
            self.sock.send(encode(r))
            self.sent += 1
            if seq % YAMNET_EVERY == 0:
                labels = [Label(x, s) for x, s in (("Speech", 0.8 if speech else 0.05), ("Silence", 0.3),
                                                    ("Music", 0.02), ("Inside, small room", 0.02), ("Noise", 0.01))]
                y = Result(stream=stream, model="yamnet", epoch=1, seq=seq // YAMNET_EVERY, start_ns=start,
                           end_ns=end, offset=offset, rate=RATE, seq_first=seq, seq_last=seq, labels=labels,
                           trace=trace)
                self.sock.send(encode(y))
                self.sent += 1


class Browser:
    """A WebSocket client on its own thread, as the page connects: counts bytes per stream."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("http://", "ws://") + "ws"
        self.by_stream: Counter[str] = Counter()
        self.total = 0
        self.messages = 0
        self.counting = False
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.thread.start()
        if not self.ready.wait(20):
            raise RuntimeError("the benchmark's browser did not connect")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as s, s.ws_connect(self.url, max_msg_size=64 * 2**20) as ws:
            self.ready.set()
            reader = asyncio.create_task(self._read(ws))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT or not self.counting:
                continue
            self.total += len(msg.data.encode())
            self.messages += 1
            for name, entry in json.loads(msg.data).get("s", {}).items():
                self.by_stream[name] += len(json.dumps(entry, separators=(",", ":")))

    def close(self) -> None:
        if self.thread.is_alive() and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)


class _Collect:
    """A socket stand-in that keeps what a Pacer sends."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.out.append(data)


def receive_floor(streams: int, event_s: float, tensor_windows: int, seconds: float = 1.0) -> float:
    """CPU seconds the runtime's Inbox takes to receive and validate ``seconds`` of the load (no work on it)."""
    sink = _Collect()
    pacer = Pacer(sink, streams, event_s, tensor_windows)  # type: ignore[arg-type]
    for _ in range(int(seconds * RATE / CHUNK)):
        pacer._tick()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    inbox = Inbox(ctx, [addr], [b""], SocketOptions(hwm=0), StageMetrics("floor"), Poller())
    try:
        deadline = time.monotonic() + 10
        while not inbox.connected and time.monotonic() < deadline:
            inbox.receive(0.05)
        time.sleep(0.3)  # the subscription reaches the publisher
        for m in sink.out:
            pub.send(m)
        time.sleep(0.5)  # all of it queued at the receiver: only receiving is timed
        got, c0 = 0, time.process_time()
        while got < len(sink.out):
            batch = inbox.receive(1.0)
            if not batch:
                break
            got += len(batch)
        cpu = time.process_time() - c0
        if got < len(sink.out):
            raise RuntimeError(f"the floor measurement received {got} of {len(sink.out)} messages")
        return cpu
    finally:
        inbox.close()
        pub.close(0)
        ctx.term()


def measure(proc: bl.Proc, seconds: float, pacer: Pacer | None) -> float:
    """CPU seconds ``proc`` used over ``seconds`` of paced load (or idle)."""
    c0 = bl.proc_cpu_s(proc.pid)
    if pacer is None:
        time.sleep(seconds)
    else:
        pacer.run(seconds)
    return bl.proc_cpu_s(proc.pid) - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--event-s", type=float, default=2.0, help="speech turns on or off every EVENT_S seconds")
    ap.add_argument("--tensor-ms", type=int, choices=(32, 64, 96, 128), default=32,
                    help="audio per tensor message (convert --chunk-ms; default 32, convert's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    web = None
    browser = None
    try:
        web = bl.python_module("web", "--input", addr, "--listen", "127.0.0.1:0",
                               "--max-streams", str(max(64, args.streams)))
        url = re.search(r"ready (http://\S+)", web.wait_for(r"ready http://", timeout=60)).group(1)
        web.wait_for("input connected", timeout=30)
        time.sleep(1.0)
        idle_cpu = measure(web, args.seconds, None)
        pacer = Pacer(pub, args.streams, args.event_s, args.tensor_ms // 32)
        pacer.run(args.warmup)
        sent0 = pacer.sent
        bus_cpu = measure(web, args.seconds, pacer)
        bus_msgs = pacer.sent - sent0
        browser = Browser(url)
        pacer.run(args.warmup)
        browser.counting = True
        view_cpu = measure(web, args.seconds, pacer)
        browser.counting = False
        browser.close()
        web.stop()
        web = None
        floor_cpu = receive_floor(args.streams, args.event_s, args.tensor_ms // 32)
    finally:
        if browser is not None:
            browser.close()
        if web is not None:
            web.stop()
        pub.close(0)
        ctx.term()

    secs = args.seconds
    per_stream = [browser.by_stream.get(n, 0) / secs for n in pacer.names]
    res = {
        "streams": args.streams,
        "seconds": secs,
        "tensor_ms": args.tensor_ms,
        "bus_msgs_per_s": bus_msgs / secs,
        "idle_core_pct": 100 * idle_cpu / secs,
        "bus_only_core_pct": 100 * bus_cpu / secs,
        "view_core_pct": 100 * view_cpu / secs,
        "receive_floor_core_pct": 100 * floor_cpu,  # one second of the load
        "browser_updates_per_s": browser.messages / secs,
        "browser_bytes_per_s": browser.total / secs,
        "bytes_per_s_per_stream_mean": float(np.mean(per_stream)),
        "bytes_per_s_per_stream_max": float(np.max(per_stream)),
        "target_core_pct": TARGET_CORE_PCT,
        "target_bytes_per_s_per_stream": TARGET_BYTES_PER_S,
        "meets_target": 100 * view_cpu / secs < TARGET_CORE_PCT and max(per_stream) < TARGET_BYTES_PER_S,
    }
    table = [
        ("what", "core %", "bus msgs/s", "bytes/s per stream (mean / max)"),
        ("web idle (baseline)", bl.fmt(res["idle_core_pct"]), "0", "-"),
        (f"web, {args.streams} streams, no browser (baseline)", bl.fmt(res["bus_only_core_pct"]),
         bl.fmt(res["bus_msgs_per_s"]), "-"),
        (f"web, {args.streams} streams, 1 browser", bl.fmt(res["view_core_pct"]), bl.fmt(res["bus_msgs_per_s"]),
         f"{bl.fmt(res['bytes_per_s_per_stream_mean'])} / {bl.fmt(res['bytes_per_s_per_stream_max'])}"),
        ("runtime receive + validate only (floor)", bl.fmt(res["receive_floor_core_pct"]),
         bl.fmt(res["bus_msgs_per_s"]), "-"),
    ]
    bl.emit("web", res, args.json, table)


if __name__ == "__main__":
    main()
