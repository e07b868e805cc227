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
from tests.capture.conftest import start_pulse, stop_pulse
from tests.conftest import ALSA_SOUNDS, start, tcp

from common.wire import Flag, HeartbeatState, Kind, topic_for

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
    col.collect(lambda ms: ms[-1].header.end_ns > t_done + 500_000_000, timeout=10)
    samples, hs = assemble(col.messages, "lb", live=True)
    assert hs[0].rate == rate and hs[0].channels == 1 and hs[0].format == "s16"
    assert not any(h.flags & Flag.OVERFLOW for h in hs), "overflow while capturing a quiet machine"
    captured = samples[:, 0].astype(np.float64) / 32768.0
    lag, ncc = best_lag(captured, ref)
    assert ncc > 0.95, f"captured audio does not match what was played (normalised xcorr {ncc:.3f})"
    onset_ns = hs[0].t_capture_ns + lag * 1_000_000_000 // rate
    delay_ms = (onset_ns - t_play) / 1e6
    # paplay start-up plus the sink's latency: tens of ms, never negative (capture time is not publish time)
    assert -5 < delay_ms < 250, f"played at t, captured at t + {delay_ms:.1f} ms"
    print(f"loopback: ncc={ncc:.4f} delay={delay_ms:.1f} ms chunks={len(hs)}")


def _run_capture(env: dict[str, str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    import sys

    from tests.conftest import ROOT

    return subprocess.run(
        [sys.executable, "-m", "capture", *args, "--wait-subscriber", "0", "--output", tcp()],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def test_unknown_device_name_is_one_clear_sentence(pulse):
    r = _run_capture(pulse.env, "--source", "device:no-such-microphone")
    assert r.returncode == 2, r.stderr
    assert "no input device named 'no-such-microphone'" in r.stderr and "soundbus devices" in r.stderr
    assert "Traceback" not in r.stderr


def test_unsupported_rate_says_what_the_device_supports(pulse):
    r = _run_capture(pulse.env, "--source", f"loopback:{pulse.sink}", "--rate", "768000")
    assert r.returncode == 2, r.stderr
    assert "cannot record 768000 Hz" in r.stderr and "--rate 44100" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_sink_lists_the_sinks(pulse):
    r = _run_capture(pulse.env, "--source", "loopback:no-such-sink")
    assert r.returncode == 2, r.stderr
    assert "no PulseAudio sink named 'no-such-sink'" in r.stderr and pulse.sink in r.stderr, r.stderr


def test_devices_lists_inputs_default_and_monitors(pulse):
    import sys

    from tests.conftest import ROOT

    code = (
        "from common.cli.main import run; from capture.cli import register; raise SystemExit(run(['devices'], [register]))"
    )
    r = subprocess.run([sys.executable, "-c", code], env=pulse.env, cwd=ROOT, capture_output=True, text=True,
                       timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(" pulse " in ln and "ALSA" in ln for ln in lines), r.stdout
    assert any(ln.startswith("*") for ln in lines), "the default input is not marked"
    assert f"{pulse.sink}.monitor  -> --source loopback:{pulse.sink}" in r.stdout


def test_device_loss_reopens_with_a_new_epoch_and_heartbeats_go_on(pulse, procs, collector):
    out = tcp()
    col = collector(out, prefixes=[topic_for(Kind.RAW), topic_for(Kind.HEARTBEAT)])
    cap = start(procs, "capture", "--source", f"loopback:{pulse.sink}#lb", "--watchdog", "1", "--heartbeat", "0.2",
                "--output", out, env=pulse.env)
    cap.wait_for("stream lb: running")
    col.collect(lambda ms: sum(m.kind == Kind.RAW for m in ms) >= 5, timeout=10)
    first_epoch = next(m.header.epoch for m in col.messages if m.kind == Kind.RAW)

    stop_pulse(pulse, pulse.keepalive)  # the "device" disappears
    cap.wait_for("stream lb: reconnecting", timeout=10)
    n = len(col.messages)
    col.collect(lambda ms: sum(m.kind == Kind.HEARTBEAT for m in ms[n:]) >= 3, timeout=10)
    assert any(m.state is HeartbeatState.RECONNECTING for m in col.messages[n:] if m.kind == Kind.HEARTBEAT)

    pulse.keepalive = start_pulse(pulse)  # ... and comes back
    col.collect(
        lambda ms: any(m.kind == Kind.RAW and m.header.epoch != first_epoch for m in ms), timeout=40
    )
    new = [m.header for m in col.messages if m.kind == Kind.RAW and m.header.epoch != first_epoch]
    assert new[0].epoch > first_epoch and new[0].seq == 0 and new[0].offset == 0
    assert new[0].flags & Flag.DISCONTINUITY
    old = [m.header for m in col.messages if m.kind == Kind.RAW and m.header.epoch == first_epoch]
    # a live device starts at once (it does not wait for subscribers): the first epoch is seen from
    # wherever this subscriber joined, without a gap up to the loss
    assert [h.seq for h in old] == list(range(old[0].seq, old[0].seq + len(old)))


def test_two_loopbacks_in_one_process_each_get_their_own_sink(pulse, procs, collector, assemble):
    """Two null sinks, two streams in one capture process, each recording only what its own sink plays."""
    other = f"{pulse.sink}b"
    pulse.pactl("load-module", "module-null-sink", f"sink_name={other}")
    with open("/dev/zero", "rb") as zero:  # the second sink needs its keep-alive too
        keep = subprocess.Popen(["pacat", "--playback", "--raw", "--latency-msec=10", "-d", other], stdin=zero,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=pulse.env)
    try:
        speech, rate = read_wav(SPEECH)
        other_speech, _ = read_wav(ALSA_SOUNDS / "Rear_Right.wav")
        out = tcp()
        cap = start(procs, "capture", "--source", f"loopback:{pulse.sink}#a", "--source", f"loopback:{other}#b",
                    "--rate", str(rate), "--format", "f32", "--output", out, env=pulse.env)
        cap.wait_for("stream a: running")
        cap.wait_for("stream b: running")
        col = collector(out, Kind.RAW)
        col.collect(lambda ms: {m.stream for m in ms} == {"a", "b"}, timeout=10)
        plays = [
            subprocess.Popen(["paplay", f"--device={sink}", str(path)], env=pulse.env)
            for sink, path in ((pulse.sink, SPEECH), (other, ALSA_SOUNDS / "Rear_Right.wav"))
        ]
        for p in plays:
            assert p.wait(20) == 0
        t_done = time.time_ns()
        col.collect(
            lambda ms: all(any(m.stream == s and m.header.end_ns > t_done + 300_000_000 for m in ms)
                           for s in ("a", "b")),
            timeout=10,
        )
        for stream, mine, theirs in (("a", speech, other_speech), ("b", other_speech, speech)):
            samples, hs = assemble(col.messages, stream, live=True)
            assert hs[0].format == "f32"
            x = samples[:, 0].astype(np.float64)
            _, own = best_lag(x, mine)
            _, cross = best_lag(x, theirs)
            assert own > 0.95 and cross < 0.5, f"stream {stream}: own {own:.3f}, other sink's {cross:.3f}"
    finally:
        keep.terminate()
        keep.wait(5)
