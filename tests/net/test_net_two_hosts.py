"""Two hosts for real: two Linux network namespaces joined by a veth pair, CURVE on every link.

Host A (the capture box) runs capture, bound on its veth address as a CURVE server that
admits only the inference box's key. Host B (the inference box) runs convert + classify
(silero-vad) and a `soundbus tail`; every socket is CURVE. The spoken sentence captured on A
must come out of B as speech results. A rogue subscriber on A, with a key B does not know,
gets nothing and is refused.

Needs root (CI runs as root); skipped with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq.auth

from tests.conftest import ALSA_SOUNDS, StageProcess
from tests.net.conftest import KeyRing


@dataclass
class TwoHosts:
    a: str  # namespace names
    b: str
    addr_a: str  # IPv4 addresses on the veth pair
    addr_b: str
    link_a: str  # host A's end of the veth pair

    def cut(self, down: bool) -> None:
        """Pull (or plug back) host A's cable."""
        r = _ip("-n", self.a, "link", "set", self.link_a, "down" if down else "up")
        assert r.returncode == 0, r.stderr


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts() -> Iterator[TwoHosts]:
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: apt-get install iproute2")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CI runs this test as root)")
    tag = f"{os.getpid() % 100000}{random.randrange(100):02d}"
    a, b, va, vb = f"sbA{tag}", f"sbB{tag}", f"sbva{tag}", f"sbvb{tag}"
    net = f"10.{random.randrange(64, 128)}.{random.randrange(256)}"
    made: list[str] = []
    try:
        r = _ip("netns", "add", a)
        if r.returncode != 0:
            pytest.skip(f"`ip netns add` is not permitted here: {r.stderr.strip()}")
        made.append(a)
        steps = [
            ("netns", "add", b),
            ("link", "add", va, "type", "veth", "peer", "name", vb),
            ("link", "set", va, "netns", a),
            ("link", "set", vb, "netns", b),
            ("-n", a, "addr", "add", f"{net}.1/24", "dev", va),
            ("-n", b, "addr", "add", f"{net}.2/24", "dev", vb),
            ("-n", a, "link", "set", va, "up"),
            ("-n", b, "link", "set", vb, "up"),
            ("-n", a, "link", "set", "lo", "up"),
            ("-n", b, "link", "set", "lo", "up"),
        ]
        for step in steps:
            r = _ip(*step)
            assert r.returncode == 0, f"ip {' '.join(step)}: {r.stderr}"
            if step[:2] == ("netns", "add"):
                made.append(b)
        yield TwoHosts(a, b, f"{net}.1", f"{net}.2", va)
    finally:
        for ns in made:  # deleting a namespace also removes its end of the veth pair (and so the pair)
            _ip("netns", "del", ns)
        left = _ip("netns", "list").stdout
        assert a not in left and b not in left, f"namespaces left behind: {left}"


def on_host(procs: list, ns: str, *args: str) -> StageProcess:
    """``python -m ARGS`` inside namespace ``ns`` as a tracked process."""
    p = StageProcess(["ip", "netns", "exec", ns, sys.executable, "-m", *args])
    procs.append(p)
    return p


def test_capture_box_and_inference_box_over_tcp_with_curve(two_hosts: TwoHosts, procs, keyring: KeyRing) -> None:
    h = two_hosts
    capture_key = keyring.pair("capture-a", allowed=False)
    inference_key = keyring.pair("inference", allowed=True)  # allowed by both boxes (see docs/deploy.md)
    rogue_key = keyring.pair("rogue", allowed=False)
    inf = ["--curve-secret", str(inference_key.secret), "--curve-allow", str(keyring.allow)]

    # Host B, the inference box: convert connects across the link, the rest stays on B's loopback.
    classify = on_host(procs, h.b, "classify", "--model", "vad", "--input", "tcp://127.0.0.1:5551",
                       "--output", "@tcp://0.0.0.0:5552", *inf, "--curve-server", str(inference_key.public))
    convert = on_host(procs, h.b, "convert", "--input", f"tcp://{h.addr_a}:5550", "--output", "@tcp://127.0.0.1:5551",
                      *inf, "--curve-server", str(capture_key.public))
    tail = on_host(procs, h.b, "classify.tail", "--input", "tcp://127.0.0.1:5552", "--json", "--count", "10",
                   "--curve-secret", str(inference_key.secret), "--curve-server", str(inference_key.public))
    classify.wait_for("ready", timeout=60)
    convert.wait_for("ready")
    # Host A, the capture box: a spoken sentence, published once the inference box has subscribed.
    capture = on_host(procs, h.a, "capture", "--source", f"file:{ALSA_SOUNDS / 'Front_Center.wav'}#door",
                      "--output", f"@tcp://{h.addr_a}:5550",
                      "--curve-secret", str(capture_key.secret), "--curve-allow", str(keyring.allow))
    # A rogue on A tries to read B's results with a key B does not allow.
    rogue = on_host(procs, h.a, "classify.tail", "--input", f"tcp://{h.addr_b}:5552", "--json",
                    "--curve-secret", str(rogue_key.secret), "--curve-server", str(inference_key.public))

    capture.wait_for("subscriber joined", timeout=30)
    convert.wait_for("input connected")
    assert tail.wait(60) == 0, f"tail:\n{tail.log()}\nclassify:\n{classify.log()}\nconvert:\n{convert.log()}"
    results = [json.loads(line) for line in tail.out_lines if line.startswith("{")]
    assert len(results) == 10, tail.out_lines
    assert {r.get("stream") for r in results} == {"door"}, results[0]
    speech = [score for r in results for label, score in r["labels"] if label == "speech"]
    assert max(speech) > 0.5, f"the sentence spoken on host A was not heard as speech on host B: {speech}"
    rogue_pub, _ = zmq.auth.load_certificate(str(rogue_key.public))
    classify.wait_for("refused CURVE client " + re.escape(rogue_pub.decode()), timeout=20)
    assert rogue.out_lines == [], "a subscriber without an allowed key received results"
    assert capture.wait(30) == 0, capture.log()


def test_cut_cable_is_noticed_by_heartbeats_and_the_link_heals_by_itself(two_hosts: TwoHosts, procs) -> None:
    h = two_hosts
    convert = on_host(procs, h.b, "convert", "--input", f"tcp://{h.addr_a}:5550", "--output", "@tcp://127.0.0.1:5551",
                      "--summary-every", "1")
    convert.wait_for("ready")
    on_host(procs, h.a, "capture", "--source", "synth:tone#mic1", "--output", f"@tcp://{h.addr_a}:5550")
    convert.wait_for("input connected", timeout=30)
    h.cut(True)
    t0 = time.monotonic()
    convert.wait_for("input disconnected", timeout=15)  # no FIN/RST crosses a cut cable: only heartbeats tell
    noticed_s = time.monotonic() - t0
    n_out = _frames_out(convert)
    h.cut(False)
    t1 = time.monotonic()
    _wait_lines(convert, "input connected", 2, timeout=15)
    healed_s = time.monotonic() - t1
    print(f"cut cable noticed after {noticed_s:.1f}s, link healed {healed_s:.1f}s after the cable was back")
    assert noticed_s < 6.0
    deadline = time.monotonic() + 10
    while _frames_out(convert) <= n_out:  # tensors flow again (summary line every second)
        assert time.monotonic() < deadline, convert.log()
        time.sleep(0.2)  # re-reading a log the process appends to once per second


def _frames_out(p: StageProcess) -> int:
    outs = [int(m.group(1)) for ln in p.lines if (m := re.search(r"convert: streams=\d+ in=\d+ out=(\d+)", ln))]
    return outs[-1] if outs else 0


def _wait_lines(p: StageProcess, pattern: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for ln in p.lines if re.search(pattern, ln)) < n:
        assert time.monotonic() < deadline, f"fewer than {n} lines /{pattern}/:\n{p.log()}"
        time.sleep(0.1)  # re-reading the collected log lines
