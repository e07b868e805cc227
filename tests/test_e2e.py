"""End to end: capture, convert and classify as three separate OS processes over TCP loopback.

Speech from alsa-utils' real recordings, padded with known silence, must yield speech
results covering the speech and nothing else; silence and a pure tone must yield none.
"""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from common.wire import Kind
from tests.conftest import ALSA_SOUNDS, ROOT, free_port, start, tcp

pytestmark = pytest.mark.slow

SPEECH = ALSA_SOUNDS / "Front_Center.wav"
RATE = 48_000  # the files are written at 48 kHz stereo so convert really resamples and downmixes
LEAD_S, TRAIL_S = 1.0, 1.5


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return x, w.getframerate()


def _write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(x, "<i2").tobytes())


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, tuple[Path, float, float]]:
    """name -> (48 kHz stereo s16 WAV, speech start s, speech end s)."""
    if not SPEECH.exists():
        pytest.fail(f"{SPEECH} missing: install alsa-utils (scripts/install.sh does)")
    d = tmp_path_factory.mktemp("e2e")
    out = d / "speech48.wav"
    # Resample the real recording to 48 kHz stereo with sox (a reference tool, not our code).
    subprocess.run(["sox", str(SPEECH), "-r", str(RATE), "-c", "2", "-b", "16", str(out)], check=True)
    speech, _ = _read_wav(out)
    pad = lambda s: np.zeros((int(s * RATE), 2), np.int16)  # noqa: E731
    _write_wav(d / "speech.wav", np.concatenate([pad(LEAD_S), speech, pad(TRAIL_S)]), RATE)
    t = np.arange(3 * RATE) / RATE
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    _write_wav(d / "tone.wav", np.stack([tone, tone], 1), RATE)
    _write_wav(d / "silence.wav", pad(3.0), RATE)
    # Where the speech really is: first and last 10 ms block above -40 dBFS.
    block = RATE // 100
    whole = len(speech) // block * block
    env = np.abs(speech[:whole, 0].astype(float)).reshape(-1, block).max(1)
    loud = np.flatnonzero(env > 32768 * 0.01)
    s0, s1 = LEAD_S + loud[0] / 100, LEAD_S + (loud[-1] + 1) / 100
    return {"speech": (d / "speech.wav", s0, s1), "tone": (d / "tone.wav", 0, 0), "silence": (d / "silence.wav", 0, 0)}


def test_speech_detected_in_its_time_span_silence_and_tone_not(procs, collector, wavs) -> None:
    raw_addrs = {name: tcp() for name in wavs}
    tensor_addr, result_addr = tcp(), tcp()

    classify = start(procs, "classify", "--model", "vad", "--input", tensor_addr, "--output", result_addr)
    classify.wait_for(r"\bready\b", timeout=90)
    results = collector(result_addr, Kind.RESULT)
    classify.wait_for("subscriber joined")
    convert_args = ["convert", "--rate", "16000", "--channels", "mono", "--output", tensor_addr]
    for addr in raw_addrs.values():
        convert_args += ["--input", addr]
    convert = start(procs, *convert_args)
    convert.wait_for(r"\bready\b")
    classify.wait_for("input connected")
    captures = [
        start(procs, "capture", "--source", f"file:{path}", "--stream", name, "--fast", "--output", raw_addrs[name])
        for name, (path, _, _) in wavs.items()
    ]
    for cap in captures:
        assert cap.wait(60) == 0, cap.log()

    # The captures have exited; results keep coming until the last windows are classified.
    msgs = results.drain(quiet_s=3.0, timeout=60)
    assert not results.bad, results.bad
    by_stream: dict[str, list] = defaultdict(list)
    for m in msgs:
        assert m.model == "vad" and m.kind == Kind.RESULT
        by_stream[m.stream].append(m)
    assert set(by_stream) == set(wavs), f"results for {set(by_stream)}\nconvert:\n{convert.log()}"

    for name, (_, s0, s1) in wavs.items():
        rs = sorted(by_stream[name], key=lambda m: m.offset)
        # seq of results per (stream, epoch) is contiguous: nothing lost between classify and us
        seqs = [m.seq for m in rs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), name
        assert not any(m.lost_ns for m in rs), name  # and nothing lost before it
        # the windows tile the whole file (16 kHz): no audio skipped
        first, last = rs[0], rs[-1]
        covered_s = last.offset / 16000 + (last.end_ns - last.start_ns) / 1e9
        duration = {"speech": LEAD_S + TRAIL_S + (s1 - s0), "tone": 3.0, "silence": 3.0}[name]
        assert first.offset == 0 and covered_s >= duration - 0.2, (name, first.offset, covered_s)
        assert last.final, name
        speech_windows = [
            (m.offset / 16000, m.offset / 16000 + (m.end_ns - m.start_ns) / 1e9)
            for m in rs
            if m.labels and m.labels[0].name == "speech" and m.labels[0].score > 0.5
        ]
        starts = [e for m in rs for e in m.events if e.state == "start"]
        if name == "speech":
            assert speech_windows, f"no window above 0.5 in {name}"
            # every speech window lies within the real speech (plus model context), and covers most of it
            assert all(a >= s0 - 0.15 and b <= s1 + 0.5 for a, b in speech_windows), (speech_windows, s0, s1)
            covered = sum(b - a for a, b in speech_windows)
            assert covered >= 0.5 * (s1 - s0), (covered, s0, s1)
            assert len(starts) >= 1
        else:
            assert not speech_windows, f"{name}: {speech_windows}"
            assert not starts, f"{name}: {starts}"
        # the per-hop trace shows the three stages in order
        hops = [h.stage for h in rs[-1].trace]
        assert hops == ["capture", "convert", "classify"], hops
        for hop in rs[-1].trace:
            assert 0 <= hop.t_out_ns - hop.t_in_ns < 5_000_000_000, hop


def test_soundbus_up_plays_the_bundled_recording(tmp_path) -> None:
    """The README's run command, as a user runs it (fast, so the test is short)."""
    port = free_port(block=16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.cli", "up", "--fast", "--json", "--base-port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = [json.loads(ln) for ln in out.decode().splitlines() if ln.strip()]
    assert lines, err.decode()[-3000:]
    speechy = [ln for ln in lines if dict(ln["labels"]).get("speech", 0) > 0.5]
    assert speechy, "the demo recording has speech; vad found none"
    assert len(speechy) < len(lines), "the demo recording also has a tone and silence"
