"""Real audio through the whole pipeline to a real broker: capture, convert, vad + yamnet + level, the bridge.

The recording: silence, real speech (alsa-utils' Rear_Left.wav, used by no other test),
silence, noise (alsa-utils' Noise.wav), a 440 Hz tone, silence. The speech's span is
measured from the samples. What reaches the broker must say: speech ON inside that span
and OFF after it, for both models; nothing ON in the noise and the tone; event spans
that match; a level in dBFS; discovery configs valid as Home Assistant documents them,
naming only topics that exist, with the same unique ids after the bridge restarts.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from common.wire.topics import Kind
from mqtt_bridge.names import Topics
from tests.conftest import ALSA_SOUNDS, start, tcp
from tests.mqtt_bridge.conftest import bridge_env
from tests.mqtt_bridge.ha_schema import named_topics, problems, template_keys

pytestmark = pytest.mark.slow

RATE = 48_000
NS = 1_000_000_000
T = Topics()
STREAM = "room"


def _pcm(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getsampwidth(), w.getnchannels(), w.getframerate()) == (2, 1, RATE), path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, float, float, float]:
    """(48 kHz mono s16 WAV, speech start s, speech end s, where the noise starts s)."""
    speech, noise = ALSA_SOUNDS / "Rear_Left.wav", ALSA_SOUNDS / "Noise.wav"
    if not speech.exists():
        pytest.fail(f"{speech} missing: install alsa-utils (scripts/install.sh does)")
    gap = lambda s: np.zeros(int(s * RATE), np.int16)
    t = np.arange(int(1.5 * RATE)) / RATE
    tone = (0.25 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    s, n = _pcm(speech), _pcm(noise)
    audio = np.concatenate([gap(1.0), s, gap(1.0), n, tone, gap(1.0)])
    # Where the speech really is: first and last 10 ms block above -40 dBFS.
    env = np.abs(s[: len(s) // 480 * 480].astype(float)).reshape(-1, 480).max(1)
    loud = np.flatnonzero(env > 32768 * 0.01)
    s0, s1 = 1.0 + loud[0] / 100, 1.0 + (loud[-1] + 1) / 100
    path = tmp_path_factory.mktemp("mqtt") / "room.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(audio.tobytes())
    assert subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=False).returncode == 0
    return path, s0, s1, 1.0 + len(s) / RATE + 1.0


def _payloads(w, topic: str) -> list[bytes]:
    return [m.payload for m in w.messages if m.topic == topic]


def _events(w, model: str) -> list[dict]:
    return [json.loads(p) for p in _payloads(w, T.event(STREAM, model))]


def test_real_audio_through_vad_yamnet_and_level_to_the_broker(procs, broker, watcher, collector, recording) -> None:
    path, s0, s1, noise_at = recording
    raw, tensor = tcp(), tcp()
    outs = {m: tcp() for m in ("vad", "yamnet", "level")}
    workers = [start(procs, "classify", "--model", m, "--max-lag-ms", "0", "--input", tensor, "--output", out)
               for m, out in outs.items()]
    for wk in workers:
        wk.wait_for(r"\bready\b", timeout=180)
    vad_results = collector(outs["vad"], Kind.RESULT)
    w = watcher(broker.port)

    def run_bridge():
        args = [a for out in outs.values() for a in ("--input", out)]
        b = start(procs, "mqtt_bridge", *args, "--broker", f"127.0.0.1:{broker.port}", "--labels", "speech",
                  env=bridge_env())
        b.wait_for("connected to the MQTT broker", timeout=60)
        b.wait_for("input connected", count=3, timeout=30)
        return b

    bridge = run_bridge()
    convert = start(procs, "convert", "--rate", "16000", "--channels", "mono", "--input", raw, "--output", tensor)
    convert.wait_for(r"\bready\b", timeout=60)
    for wk in workers:
        wk.wait_for("input connected", timeout=30)
    # In real time, as a microphone would deliver it (the second run below goes as fast as it can).
    cap = start(procs, "capture", "--source", f"file:{path}", "--stream", STREAM, "--output", raw)
    assert cap.wait(120) == 0, cap.log()
    vad_results.collect(lambda rs: any(r.final for r in rs), timeout=120)
    vad_done = time.monotonic()
    # The bridge says the stream ended once every model's last result came (and 2 s passed).
    w.wait_for(lambda m: m.topic == T.stream_status(STREAM) and m.payload == b"offline" and m.t > vad_done,
               timeout=60, what="the stream offline after vad's last result")

    first = min(vad_results.messages, key=lambda r: r.offset)
    origin_ns = first.start_ns - first.offset * NS // first.rate
    rel = lambda ns: (ns - origin_ns) / NS

    # vad: ON inside the speech, OFF after it; nothing in the noise or the tone.
    vad = _events(w, "vad")
    starts, stops = [e for e in vad if e["state"] == "start"], [e for e in vad if e["state"] == "stop"]
    assert starts and len(starts) == len(stops), vad
    assert all(s0 - 0.3 <= rel(e["start_ns"]) <= s1 for e in starts), ([rel(e["start_ns"]) for e in starts], s0, s1)
    assert all(rel(e["end_ns"]) <= s1 + 0.8 for e in stops), ([rel(e["end_ns"]) for e in stops], s1)
    assert not [e for e in vad if rel(e["start_ns"]) >= noise_at - 0.2]
    covered = sum((e["end_ns"] - e["start_ns"]) / NS for e in stops)
    assert covered >= 0.5 * (s1 - s0), (covered, s0, s1)
    for e in stops:  # a stop carries its whole span, the same as its start said
        assert any(x["start_ns"] == e["start_ns"] for x in starts)
        assert e["duration_s"] == pytest.approx((e["end_ns"] - e["start_ns"]) / NS, abs=1e-3)
    # The state topic: ON once speech began (never before: the audio is live), OFF once it ended.
    states = [m for m in w.messages if m.topic == T.state(STREAM, "vad", "speech")]
    payloads = [m.payload for m in states]
    assert payloads[0] == b"ON" and payloads[-1] == b"OFF", payloads
    assert all(a != b for a, b in itertools.pairwise(payloads)) and payloads.count(b"ON") <= len(starts), payloads
    first_on, last_off = states[0], states[-1]
    assert s0 - 0.3 <= rel(first_on.wall_ns) <= s1 + 10, (rel(first_on.wall_ns), s0, s1)
    assert s1 - 0.3 <= rel(last_off.wall_ns), (rel(last_off.wall_ns), s1)

    # yamnet (0.96 s windows every 0.48 s): Speech on around the speech, off after it.
    yam = [e for e in _events(w, "yamnet") if e["label"] == "Speech"]
    ystart = [rel(e["start_ns"]) for e in yam if e["state"] == "start"]
    ystop = [rel(e["end_ns"]) for e in yam if e["state"] == "stop"]
    assert ystart and all(s0 - 1.0 <= x <= s1 for x in ystart), (ystart, s0, s1)
    assert ystop and all(s1 - 1.0 <= x <= s1 + 2.0 for x in ystop), (ystop, s1)
    assert _payloads(w, T.state(STREAM, "yamnet", "speech"))[-1] == b"OFF"

    # level: dBFS at a bounded rate (the file went through in well under a second: a few messages only).
    levels = [json.loads(p) for p in _payloads(w, T.level(STREAM))]
    assert 1 <= len(levels) <= 12 and all(-130 <= lv["rms_dbfs"] <= 0 for lv in levels), levels

    # Discovery: valid, every named topic published, a template key its topic carries.
    latest = w.latest()
    configs = {t: json.loads(p) for t, p in latest.items() if t.startswith(f"{T.discovery}/") and p}
    expect = {T.config("binary_sensor", f"{STREAM}_vad_speech"), T.config("binary_sensor", f"{STREAM}_yamnet_speech"),
              T.config("sensor", f"{STREAM}_level")}
    assert expect <= set(configs), sorted(configs)
    assert not [t for t in configs if "binary_sensor" in t and not t.endswith("_speech/config")]  # --labels speech
    for topic, cfg in configs.items():
        assert problems(topic, cfg) == [], topic
        assert named_topics(cfg) <= set(latest), (topic, named_topics(cfg) - set(latest))
        if template_keys(cfg):
            assert template_keys(cfg) <= set(json.loads(latest[cfg["state_topic"]])), topic
    ids = {t: c["unique_id"] for t, c in configs.items()}

    # The bridge restarts; the same audio again: the same entities, the same unique ids.
    bridge.stop()
    mark = len(w.messages)
    run_bridge()
    cap = start(procs, "capture", "--source", f"file:{path}", "--stream", STREAM, "--fast", "--output", raw)
    assert cap.wait(120) == 0, cap.log()
    vad_results.collect(lambda rs: sum(r.final for r in rs) >= 2, timeout=120)
    vad_done = time.monotonic()
    w.wait_for(lambda m: m.topic == T.stream_status(STREAM) and m.payload == b"offline" and m.t > vad_done,
               timeout=60, what="the second run's end")
    again = {m.topic: json.loads(m.payload)["unique_id"] for m in w.messages[mark:]
             if m.topic.startswith(f"{T.discovery}/") and m.payload}
    assert expect <= set(again) and all(again[t] == ids[t] for t in again if t in ids), (again, ids)
