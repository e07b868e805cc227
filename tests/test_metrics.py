"""Prometheus metrics of a real stage: frames per stream, gaps, bad messages by reason, hop latency."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np

from common.observe.metrics import StageMetrics
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import AudioHeader, Hop, Kind, Layout, SampleFormat, encode_audio
from tests.conftest import free_port, start, tcp


def raw(seq: int, t_ns: int, trace: list[Hop]) -> AudioHeader:
    return AudioHeader(stream="m1", epoch=1, seq=seq, t_capture_ns=t_ns, rate=16000, channels=1,
                       format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=320, offset=seq * 320, trace=trace)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in metrics:\n{text[:3000]}")


def test_convert_serves_counts_and_latency(procs, zctx, collector) -> None:
    raw_addr, out, port = tcp(), tcp(), free_port()
    conv = start(procs, "convert", "--input", raw_addr, "--output", out, "--metrics-port", str(port))
    conv.wait_for(r"\bready\b")
    tensors = collector(out, Kind.TENSOR)
    conv.wait_for("subscriber joined")
    pub = Outbox(zctx, ["@" + raw_addr], SocketOptions(), StageMetrics("test"))
    try:
        assert pub.wait_for_subscriber(10)
        conv.wait_for("input connected")
        now = time.time_ns()
        x = np.zeros((320, 1), np.int16)  # 20 ms at 16 kHz
        for seq in [0, 1, 2, 3, 6, 7]:  # seq 4 and 5 never sent: a gap of 2
            h = raw(seq, now + seq * 20_000_000, [Hop("capture", now, time.time_ns())])
            pub.send(encode_audio(Kind.RAW, h, x))
        good = encode_audio(Kind.RAW, raw(8, now, []), x)
        pub.send(good[:-10])  # payload length mismatch
        tensors.collect(lambda m: len(m) >= 1, timeout=10)
        deadline = time.monotonic() + 10
        while True:  # counters are updated as the stage reads; poll the endpoint until all arrived
            text = _scrape(port)
            try:
                if (_value(text, "soundbus_frames_in_total", stage="convert", stream="m1") >= 6
                        and _value(text, "soundbus_bad_messages_total", reason="payload_length") >= 1):
                    break
            except AssertionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(text[:3000])
            time.sleep(0.1)  # polling an HTTP endpoint; the assertion is on its content
    finally:
        pub.close()
    assert _value(text, "soundbus_frames_in_total", stage="convert", stream="m1") == 6
    assert _value(text, "soundbus_gap_frames_total", stage="convert", stream="m1") == 2
    assert _value(text, "soundbus_bad_messages_total", stage="convert", reason="payload_length") == 1
    assert _value(text, "soundbus_latency_seconds_count", stage="convert", hop="capture->convert") == 6
    assert _value(text, "soundbus_frames_out_total", stage="convert", stream="m1") >= 1


def test_metrics_port_in_use_is_a_clear_error(procs) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = start(procs, "convert", "--input", tcp(), "--output", tcp(), "--metrics-port", str(port))
        assert p.wait(30) == 2
        assert "metrics" in p.log() and str(port) in p.log()

