"""Real loopback capture: a PulseAudio null sink, paplay plays a recording into it, capture records its monitor.

Also the user errors that need a real device list (unknown device, unsupported rate) and
device loss: the daemon dies mid-capture, capture keeps heartbeating, and reopens the
device (new epoch) when the daemon is back.
"""

from __future__ import annotations

import subprocess
import time
import wave

import numpy as np
import pytest
from tests.capture.conftest import Pulse, start_pulse, stop_pulse
from tests.conftest import ALSA_SOUNDS, start, tcp

from common.protocol import Flag, Kind, topic_for

SPEECH = ALSA_SOUNDS / "Front_Center.wav"  # a real recording: 48 kHz mono s16, 1.4 s of speech


def read_wav(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, w.getnchannels())
        return x[:, 0].astype(np.float64) / 32768.0, w.getframerate()


def best_lag(captured: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag in samples, normalised cross-correlation) of ``reference`` inside ``captured``."""
    n = len(captured) + len(reference)
    size = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(xc[: len(captured) - len(reference) + 1]))
    seg = captured[lag : lag + len(reference)]
    ncc = float(np.dot(seg, reference) / (np.linalg.norm(seg) * np.linalg.norm(reference) + 1e-12))
    return lag, ncc


def test_loopback_capture_matches_what_was_played(pulse, procs, collector, assemble):
    ref, rate = read_wav(SPEECH)
    out = tcp()
    cap = start(
        procs, "capture", "--source", f"loopback:{pulse.sink}#lb", "--rate", str(rate), "--output", out,
        env=pulse.env,
    )
    cap.wait_for("ready")
    cap.wait_for("stream lb: running")
    col = collector(out, Kind.RAW)
    col.collect(lambda ms: len(ms) >= 3, timeout=10)  # subscribed, audio flowing
    t_play = time.time_ns()
    subprocess.run(["paplay", f"--device={pulse.sink}", str(SPEECH)], env=pulse.env, check=True, timeout=20)
    t_done = time.time_ns()
    # everything captured until 0.5 s after paplay returned
    col.collect(lambda ms: ms[-1].header.span_ns()[1] > t_done + 500_000_000, timeout=10)
    samples, hs = assemble(col.messages, "lb")
    assert hs[0].rate == rate and hs[0].channels == 1 and hs[0].format == "s16"
    assert not any(h.flags & Flag.OVERFLOW for h in hs), "overflow while capturing a quiet machine"
    captured = samples[:, 0].astype(np.float64) / 32768.0
    lag, ncc = best_lag(captured, ref)
    assert ncc > 0.95, f"captured audio does not match what was played (normalised xcorr {ncc:.3f})"
    onset_ns = hs[0].t_capture_ns + lag * 1_000_000_000 // rate
    delay_ms = (onset_ns - t_play) / 1e6
    # paplay start-up plus the sink's latency: tens of ms, never negative (capture time is not publish time)
    assert -5 < delay_ms < 250, f"played at t, captured at t + {delay_ms:.1f} ms"
    print(f"loopback: ncc={ncc:.4f} delay={delay_ms:.1f} ms frames={len(hs)}")
