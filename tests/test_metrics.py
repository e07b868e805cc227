"""Prometheus metrics of a real stage: frames per stream, gaps, bad messages by reason, hop latency."""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np

from common.protocol import Header, Hop, Kind, encode
from common.publisher import Publisher
from tests.conftest import free_port, start, tcp


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
    raw, out, port = tcp(), tcp(), free_port()
    conv = start(procs, "convert", "--input", raw, "--output", out, "--metrics-port", str(port))
    conv.wait_for(r"\bready\b")
    tensors = collector(out, Kind.TENSOR)
    conv.wait_for("subscriber joined")
    pub = Publisher(zctx, ["@" + raw])
    try:
        assert pub.wait_for_subscriber(10)
        conv.wait_for("input connected")
        now = time.time_ns()
        x = np.zeros((320, 1), np.int16)  # 20 ms at 16 kHz
        for seq in [0, 1, 2, 3, 6, 7]:  # seq 4 and 5 never sent: a gap of 2
            h = Header(Kind.RAW, "m1", 1, seq, now + seq * 20_000_000, 16000, 1, "s16", "interleaved", 320,
                       seq * 320, trace=[Hop("capture", now, time.time_ns())])
            pub.send(encode(h, x))
        bad = Header(Kind.RAW, "m1", 1, 8, now, 16000, 1, "s16", "interleaved", 320, 8 * 320)
        pub.send(encode(bad, b"\0" * 10))  # payload length mismatch
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
        pub.close(0)
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



def test_metrics_address_comes_from_the_environment(procs) -> None:
    """SOUNDBUS_METRICS_ADDR moves the endpoint off 127.0.0.1 (a pod's scraper is elsewhere); a bad one is exit 2."""
    import os
    import urllib.error

    port = free_port()
    env = {**os.environ, "SOUNDBUS_METRICS_ADDR": "127.0.0.2"}
    p = start(procs, "convert", "--input", tcp(), "--output", tcp(), "--metrics-port", str(port), env=env)
    p.wait_for(r"metrics at http://127\.0\.0\.2:")
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=5) as r:
        assert b"soundbus_frames_in" in r.read()
    try:
        _scrape(port)  # 127.0.0.1: nothing listens there now
        raise AssertionError("metrics answered on 127.0.0.1 too")
    except urllib.error.URLError:
        pass
    bad = start(procs, "convert", "--input", tcp(), "--output", tcp(), "--metrics-port", str(free_port()),
                env={**os.environ, "SOUNDBUS_METRICS_ADDR": "no such host"})
    assert bad.wait(30) == 2
    assert "SOUNDBUS_METRICS_ADDR" in bad.log() and "Traceback" not in bad.log()
