"""soundbus mqtt at default settings: the bridge's CPU per result and the broker's message rate per stream.

A real Mosquitto (Debian's, on a random loopback port), the real bridge process, and a
ZeroMQ publisher in this process that paces Result messages in real time for N streams
as a live pipeline would send them: vad (a result every 32 ms), level (every 100 ms) and
yamnet (every 480 ms) per stream, with speech starting and stopping every ``--event-s``
seconds. A real MQTT client counts what reaches the broker.

Baselines in the same run: the bridge idle (connected, no results) for as long; the bridge
receiving the same results with next to nothing to publish (``--rate 0.01``, no events),
which splits its cost into the results side (receive, decode, logic) and the MQTT side
(paho: ~one packet per publication, and its PUBACK at QoS 1); and ``soundbus tail --json``
(every result decoded and written as JSON) under the same load. Target (issue 15): at 64
streams the bridge uses < 5% of a core.

    .venv/bin/python bench/bench_mqtt.py                 # 64 streams, 20 s
    .venv/bin/python bench/bench_mqtt.py --streams 8 --seconds 3 --json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import benchlib as bl
import paho.mqtt.client as mqtt
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from common.wire.codec import encode
from common.wire.messages import Event, Hop, Label, Level, Result

NS = 1_000_000_000
MODELS = {  # model -> (seconds between results, labels in each)
    "vad": (0.032, ["speech"]),
    "level": (0.1, ["sound", "clipping"]),
    "yamnet": (0.48, ["Speech", "Music", "Silence", "Dog", "Vehicle"]),
}
TARGET_CORE_PCT = 5.0


class Pacer:
    """Results for ``streams`` streams, each model at its own interval, speech on/off every ``event_s``."""

    def __init__(self, sock: zmq.Socket, streams: int, event_s: float | None) -> None:
        self.sock, self.event_s = sock, event_s  # None: no events
        self.names = [f"mic{i:03d}" for i in range(streams)]
        self.seq: Counter[tuple[str, str]] = Counter()
        self.next_due = {m: 0.0 for m in MODELS}
        self.on: dict[str, bool] = {}
        self.sent = 0

    def run(self, seconds: float, stop: threading.Event) -> None:
        t0 = time.monotonic()
        self.next_due = {m: t0 for m in MODELS}
        while not stop.is_set():
            now = time.monotonic()
            if now - t0 >= seconds:
                return
            for model, (every, labels) in MODELS.items():
                while self.next_due[model] <= now:
                    for i, stream in enumerate(self.names):
                        self._send(stream, model, labels, now - t0 + i * 0.01)
                    self.next_due[model] += every
            time.sleep(max(0.0, min(self.next_due.values()) - time.monotonic()))

    def _send(self, stream: str, model: str, labels: list[str], t: float) -> None:
        key = (stream, model)
        seq = self.seq[key]
        self.seq[key] += 1
        start = int(t * NS) + 1_700_000_000 * NS
        speech = self.event_s is not None and int(t / self.event_s) % 2 == 1  # on/off spans of event_s s
        events = []
        label = labels[0]
        if model != "level" and self.on.get(f"{stream}/{model}", False) != speech:
            self.on[f"{stream}/{model}"] = speech
            events = [Event(label, "start" if speech else "stop", start, 0.9, start if speech else start - NS)]
        hops = [Hop(stage, start + k * 1000, start + k * 1000 + 500)  # as a pipeline's results carry them
                for k, stage in enumerate(("capture", "convert", "classify"))]
        r = Result(stream=stream, model=model, epoch=1, seq=seq, start_ns=start, end_ns=start + 32_000_000,
                   offset=seq * 512, rate=16000, seq_first=seq, seq_last=seq,
                   labels=[Label(x, 0.9 if (speech and j == 0) else 0.01) for j, x in enumerate(labels)],
                   events=events, level=Level(-30.0, -6.0, 0) if model == "level" else None, trace=hops)
        self.sock.send(encode(r))
        self.sent += 1


def start_broker(d: Path) -> tuple[bl.Proc, int]:
    port = int(bl.free_tcp().rsplit(":", 1)[1])
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
                    + ("user root\n" if os.geteuid() == 0 else ""))
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = bl.Proc([exe, "-c", str(conf)])
    p.wait_for(r"mosquitto version \S+ running", timeout=15)
    return p, port


class Counting:
    """An MQTT client that counts every message the bridge publishes, by kind of topic."""

    def __init__(self, port: int) -> None:
        self.by_kind: Counter[str] = Counter()
        self.counting = False
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_connect = lambda c, *_: c.subscribe([("soundbus/#", 0), ("homeassistant/#", 0)])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("the counting MQTT client did not subscribe")

    def _on_message(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if self.counting:
            t = m.topic
            kind = ("discovery" if t.startswith("homeassistant/") else "state" if "/state/" in t else
                    t.rsplit("/", 1)[-1])
            self.by_kind[kind] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(proc: bl.Proc, seconds: float, pacer: Pacer | None) -> tuple[float, int]:
    """(CPU s the process used, results sent) over ``seconds`` of paced results (or idle)."""
    c0 = bl.proc_cpu_s(proc.pid)
    sent0 = pacer.sent if pacer else 0
    if pacer is None:
        time.sleep(seconds)
    else:
        pacer.run(seconds, threading.Event())
    time.sleep(0.3)  # let it take the last ones
    return bl.proc_cpu_s(proc.pid) - c0, (pacer.sent - sent0 if pacer else 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per configuration")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of results before measuring")
    ap.add_argument("--event-s", type=float, default=5.0,
                    help="speech turns on or off every EVENT_S seconds per stream and model (vad, yamnet)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 1_000_000)
    addr = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    procs: list[bl.Proc] = []
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        try:
            broker, port = start_broker(Path(tmp))
            procs.append(broker)
            counter = Counting(port)

            def bridge_run(*flags: str, event_s: float | None) -> tuple[float, int, dict[str, int]]:
                bridge = bl.python_module("mqtt_bridge", "--input", addr, "--broker", f"127.0.0.1:{port}",
                                          "--max-streams", str(max(1024, args.streams)), *flags)
                procs.append(bridge)
                bridge.wait_for("connected to the MQTT broker", timeout=60)
                bridge.wait_for("input connected", timeout=30)
                pacer = Pacer(pub, args.streams, event_s)
                pacer.run(args.warmup, threading.Event())  # streams online, discovery sent
                counter.by_kind.clear()
                counter.counting = True
                cpu, n = measure(bridge, args.seconds, pacer)
                counter.counting = False
                bridge.stop()
                return cpu, n, dict(counter.by_kind)

            bridge = bl.python_module("mqtt_bridge", "--input", addr, "--broker", f"127.0.0.1:{port}")
            procs.append(bridge)
            bridge.wait_for("connected to the MQTT broker", timeout=60)
            idle_cpu, _ = measure(bridge, args.seconds, None)
            bridge.stop()
            quiet_cpu, quiet_results, quiet_kinds = bridge_run("--rate", "0.01", event_s=None)
            bridge_cpu, results, kinds = bridge_run(event_s=args.event_s)
            pacer = Pacer(pub, args.streams, args.event_s)

            # tail's JSON lines go to this process's pipe reader; only tail's own CPU is measured.
            tail = bl.python_module("classify.tail", "--json", "--input", addr, "--max-streams",
                                    str(max(1024, args.streams)))
            procs.append(tail)
            tail.wait_for("input connected", timeout=60)
            pacer.run(1.0, threading.Event())
            tail_cpu, tail_results = measure(tail, args.seconds, pacer)
            tail.stop()
        finally:
            for p in reversed(procs):
                p.stop()
            pub.close(0)
            ctx.term()

    secs = args.seconds
    msgs, quiet_msgs = sum(kinds.values()), sum(quiet_kinds.values())
    mqtt_cpu = bridge_cpu - quiet_cpu
    res = {
        "streams": args.streams,
        "seconds": secs,
        "results_per_s": results / secs,
        "bridge_core_pct": 100 * bridge_cpu / secs,
        "bridge_idle_core_pct": 100 * idle_cpu / secs,
        "bridge_cpu_us_per_result": 1e6 * (bridge_cpu - idle_cpu) / max(results, 1),
        "results_side_core_pct": 100 * quiet_cpu / secs,
        "results_side_cpu_us_per_result": 1e6 * (quiet_cpu - idle_cpu) / max(quiet_results, 1),
        "mqtt_side_cpu_us_per_message": 1e6 * mqtt_cpu / max(msgs - quiet_msgs, 1),
        "tail_json_core_pct": 100 * tail_cpu / secs,
        "tail_json_cpu_us_per_result": 1e6 * tail_cpu / max(tail_results, 1),
        "broker_msgs_per_s": msgs / secs,
        "broker_msgs_per_s_per_stream": msgs / secs / args.streams,
        "broker_msgs_by_kind_per_s": {k: v / secs for k, v in sorted(kinds.items())},
        "target_core_pct": TARGET_CORE_PCT,
        "meets_target": 100 * bridge_cpu / secs < TARGET_CORE_PCT,
    }
    table = [
        ("what", "core %", "CPU us/result", "results/s", "MQTT msgs/s/stream"),
        ("bridge idle (baseline)", bl.fmt(res["bridge_idle_core_pct"]), "-", "0", "-"),
        ("bridge, results only (baseline)", bl.fmt(res["results_side_core_pct"]),
         bl.fmt(res["results_side_cpu_us_per_result"]), bl.fmt(quiet_results / secs),
         bl.fmt(quiet_msgs / secs / args.streams)),
        (f"bridge, {args.streams} streams", bl.fmt(res["bridge_core_pct"]), bl.fmt(res["bridge_cpu_us_per_result"]),
         bl.fmt(res["results_per_s"]), bl.fmt(res["broker_msgs_per_s_per_stream"])),
        ("tail --json (baseline)", bl.fmt(res["tail_json_core_pct"]), bl.fmt(res["tail_json_cpu_us_per_result"]),
         bl.fmt(tail_results / secs), "-"),
        ("MQTT side per message", "-", f"{bl.fmt(res['mqtt_side_cpu_us_per_message'])} per msg", "-", "-"),
    ]
    bl.emit("mqtt", res, args.json, table)


if __name__ == "__main__":
    main()
