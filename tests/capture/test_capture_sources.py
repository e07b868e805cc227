"""File, pipe, URL and synth sources as real processes: the exact input samples, contiguous numbering, clean exit.

Inputs are made with sox (an independent writer), pipes are fed by real sox/ffmpeg
processes, and every frame is received over ZeroMQ by the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.wire import Flag, Heartbeat, HeartbeatState, Kind, topic_for
from tests.capture.conftest import assemble_stream
from tests.conftest import ROOT, start, tcp

RATE = 16000
SOX_ENC = {"s16": ("signed-integer", 16), "s24": ("signed-integer", 24), "s32": ("signed-integer", 32),
           "f32": ("floating-point", 32)}

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed (Debian: apt-get install sox)")
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def make_signal(fmt: str, channels: int, frames: int, seed: int = 0) -> np.ndarray:
    """Random full-range samples (frames, channels) as the integer/float values the file stores."""
    rng = np.random.default_rng(seed)
    if fmt == "f32":
        return rng.uniform(-1, 1, (frames, channels)).astype("<f4")
    bits = int(fmt[1:])
    return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (frames, channels), dtype=np.int64)


def raw_bytes(x: np.ndarray, fmt: str) -> bytes:
    if fmt == "s24":
        return x.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return x.astype({"s16": "<i2", "s32": "<i4", "f32": "<f4"}[fmt]).tobytes()


def decode_samples(samples: np.ndarray, fmt: str) -> np.ndarray:
    """What the capture published (Message.samples()) -> values comparable with test_signal."""
    if fmt == "s24":
        b = samples.astype(np.int64)
        v = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        return np.where(v >= 1 << 23, v - (1 << 24), v)
    return samples


def sox_wav(tmp: Path, fmt: str, channels: int, x: np.ndarray, name: str) -> Path:
    """A WAV written from raw samples by sox (ffmpeg for f32: sox rounds floats through int32), not by the reader."""
    raw = tmp / f"{name}.raw"
    raw.write_bytes(raw_bytes(x, fmt))
    enc, bits = SOX_ENC[fmt]
    wav = tmp / f"{name}.wav"
    if fmt == "f32":
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "f32le", "-ar", str(RATE), "-ac", str(channels),
             "-i", str(raw), "-c:a", "pcm_f32le", str(wav)],
            check=True, timeout=30,
        )
        return wav
    subprocess.run(
        ["sox", "-t", "raw", "-e", enc, "-b", str(bits), "-r", str(RATE), "-c", str(channels), str(raw), str(wav)],
        check=True, timeout=30,
    )
    return wav


def ended(streams: set[str]):
    def until(ms) -> bool:
        done = {m.stream for m in ms if m.kind == Kind.RAW and m.header.flags & Flag.END}
        return streams <= done

    return until


@needs_sox
@needs_ffmpeg
def test_wav_files_deliver_their_exact_samples_in_their_own_format(tmp_path, procs, collector):
    cases = [(fmt, ch) for fmt in ("s16", "s24", "s32", "f32") for ch in (1, 2)]
    signals, args = {}, []
    for i, (fmt, ch) in enumerate(cases):
        x = make_signal(fmt, ch, RATE // 2 + 77, seed=i)  # not a whole number of frames: a short last frame
        wav = sox_wav(tmp_path, fmt, ch, x, f"{fmt}_{ch}ch")
        signals[f"{fmt}_{ch}ch"] = (fmt, ch, x)
        args += ["--source", f"file:{wav}"]
    out = tcp()
    # all eight files in one process, one stream each
    cap = start(procs, "capture", *args, "--fast", "--output", out)
    cap.wait_for("ready")
    col = collector(out, Kind.RAW)
    col.collect(ended(set(signals)), timeout=30)
    assert cap.wait(15) == 0, cap.log()
    for stream, (fmt, ch, x) in signals.items():
        samples, hs = assemble_stream(col.messages, stream)
        assert (hs[0].format, hs[0].channels, hs[0].rate) == (fmt, ch, RATE), stream
        got = decode_samples(samples, fmt)
        assert got.shape == x.shape and np.array_equal(got, x), f"{stream}: samples differ"
        assert hs[-1].flags & Flag.END and hs[-1].samples == (len(x) % 320 or 320)
        # --fast: capture time is derived from the start time, offset / rate
        assert [h.t_capture_ns - hs[0].t_capture_ns for h in hs] == [h.offset * 10**9 // RATE for h in hs]
    assert not col.bad


@needs_sox
def test_real_time_file_is_paced_and_stamped(tmp_path, procs, collector):
    x = make_signal("s16", 1, RATE)  # 1 s
    wav = sox_wav(tmp_path, "s16", 1, x, "one_second")
    out = tcp()
    cap = start(procs, "capture", "--source", f"file:{wav}#rt", "--frame-ms", "50", "--output", out)
    cap.wait_for("ready")
    col = collector(out, Kind.RAW)
    col.collect(lambda ms: len(ms) >= 1, timeout=15)
    t_first = time.monotonic()
    col.collect(ended({"rt"}), timeout=15)
    took = time.monotonic() - t_first
    samples, hs = assemble_stream(col.messages, "rt")
    assert np.array_equal(samples, x.astype("<i2"))
    assert took > 0.8, f"1 s of audio took only {took:.2f} s to publish: not paced"
    assert took < 5.0, f"1 s of audio took {took:.2f} s to publish"
    assert hs[1].t_capture_ns - hs[0].t_capture_ns == 50_000_000
    assert cap.wait(15) == 0


@needs_sox
def test_pipe_fed_by_sox_delivers_exact_samples(tmp_path, procs, collector):
    x = make_signal("s16", 2, RATE + 123)
    wav = sox_wav(tmp_path, "s16", 2, x, "piped")
    sox = subprocess.Popen(["sox", str(wav), "-t", "raw", "-"], stdout=subprocess.PIPE)
    try:
        out = tcp()
        cap = start(procs, "capture", "--source", f"pipe:s16:{RATE}:2", "--output", out, stdin=sox.stdout)
        sox.stdout.close()  # the capture process holds the only read end now
        cap.wait_for("ready")
        col = collector(out, Kind.RAW)
        col.collect(ended({"pipe"}), timeout=20)
        samples, hs = assemble_stream(col.messages, "pipe")
        assert np.array_equal(samples, x.astype("<i2"))
        assert hs[0].source.startswith("pipe:stdin")
        assert cap.wait(15) == 0, cap.log()
    finally:
        sox.kill()
        sox.wait()


@needs_ffmpeg
@needs_sox
def test_pipe_fed_by_ffmpeg_f32(tmp_path, procs, collector):
    x = make_signal("f32", 1, RATE // 2)
    wav = sox_wav(tmp_path, "f32", 1, x, "float")
    ff = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-f", "f32le", "-"],
                          stdout=subprocess.PIPE)
    try:
        out = tcp()
        cap = start(procs, "capture", "--source", f"pipe:f32:{RATE}:1#ff", "--output", out, stdin=ff.stdout)
        ff.stdout.close()
        col = collector(out, Kind.RAW)
        col.collect(ended({"ff"}), timeout=20)
        samples, _ = assemble_stream(col.messages, "ff")
        assert np.array_equal(samples, x)
    finally:
        ff.kill()
        ff.wait()


@needs_ffmpeg
@needs_sox
@pytest.mark.parametrize("fmt, how, frames", [
    ("s16", "file-url", RATE // 2 + 5),
    ("f32", "path", RATE // 2 + 5),
    # a short file reaches us whole in the read that also brings its WAV header, then EOF:
    # those samples must still be published (they once were dropped)
    ("s16", "path", RATE // 50 + 3),
])
def test_ffmpeg_url_source_delivers_exact_samples(tmp_path, procs, collector, fmt, how, frames):
    x = make_signal(fmt, 2, frames)
    wav = sox_wav(tmp_path, fmt, 2, x, "remote")
    url = wav.as_uri() if how == "file-url" else str(wav)
    out = tcp()
    cap = start(procs, "capture", "--source", f"url:{url}#cam", "--format", fmt, "--fast", "--output", out)
    cap.wait_for("ready")
    col = collector(out, Kind.RAW)
    col.collect(ended({"cam"}), timeout=20)
    samples, hs = assemble_stream(col.messages, "cam")
    assert (hs[0].format, hs[0].rate, hs[0].channels) == (fmt, RATE, 2)
    assert np.array_equal(samples, x.astype("<i2" if fmt == "s16" else "<f4"))
    assert cap.wait(15) == 0, cap.log()


@needs_ffmpeg
def test_ffmpeg_failure_restarts_with_backoff_and_heartbeats(procs, collector):
    from tests.conftest import free_port

    out = tcp()
    dead = f"http://127.0.0.1:{free_port()}/stream.wav"  # nothing listens there
    cap = start(procs, "capture", "--source", f"url:{dead}#cam", "--heartbeat", "0.2", "--wait-subscriber", "0",
                "--output", out)
    col = collector(out, prefixes=[topic_for(Kind.HEARTBEAT)])
    first = cap.wait_for(r"stream cam: reconnecting .*restart in 0\.5 s")
    assert "Connection refused" in first
    cap.wait_for(r"stream cam: reconnecting .*restart in 1 s")
    col.collect(lambda ms: len(ms) >= 3, timeout=10)
    assert all(isinstance(m, Heartbeat) and m.stream == "cam" and m.state is HeartbeatState.RECONNECTING
               for m in col.messages[-2:])


def test_synth_tone_is_exact_and_ends_after_duration(procs, collector):
    out = tcp()
    cap = start(procs, "capture", "--source", "synth:tone:1000", "--source", "synth:silence", "--duration", "0.5",
                "--output", out, "--heartbeat", "0.05")  # real time: heartbeats arrive between frames
    col = collector(out, prefixes=[topic_for(Kind.RAW), topic_for(Kind.HEARTBEAT)])
    col.collect(ended({"tone1000", "silence"}), timeout=15)
    tone, hs = assemble_stream(col.messages, "tone1000")
    n = np.arange(8000)
    expected = np.round(0.5 * np.sin(2 * np.pi * 1000 * n / 16000) * 32767).astype("<i2")
    assert np.array_equal(tone[:, 0], expected)
    silence, _ = assemble_stream(col.messages, "silence")
    assert not silence.any()
    assert cap.wait(15) == 0
    hb = [m for m in col.messages if isinstance(m, Heartbeat) and m.stream == "tone1000"]
    assert len(hb) >= 3 and all(h.epoch == hs[0].epoch for h in hb[1:])
    # a heartbeat reports where the stream is: the seq/offset of the next chunk
    assert all(0 <= h.next_seq <= len(hs) and h.next_offset == min(h.next_seq * 320, 8000) for h in hb)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "capture", *args, "--wait-subscriber", "0", "--output", tcp()],
        env={**os.environ, **(env or {})}, cwd=ROOT, capture_output=True, text=True, timeout=30,
    )


def test_missing_ffmpeg_is_one_clear_sentence(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = _run("--source", "url:rtsp://camera/audio", env={"PATH": str(empty)})
    assert r.returncode == 2
    assert "ffmpeg is not on PATH" in r.stderr and "apt-get install ffmpeg" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--source", "file:/no/such/file.wav"], "does not exist"),
        (["--source", "microphone"], "unknown source"),
        (["--source", "synth:tone", "--frame-ms", "0"], "--chunk-ms/--frame-ms: 0 is outside"),
        (["--source", "synth:tone", "--wait-subscriber", "nan"], "--wait-subscriber: nan is outside"),
        (["--source", "synth:tone", "--rate", "192000", "--channels", "32", "--format", "f32", "--chunk-ms", "1000"],
         "over the 16777216-byte limit; use --chunk-ms 682 or less"),
        (["--source", "synth:tone", "--output", "tcp://127.0.0.1:99999"], "port 99999 is outside 1-65535"),
        (["--source", "synth:tone", "--output", "garbage"], "is not a ZeroMQ endpoint"),
        (["--source", "synth:tone", "--hwm", "99999999999"], "--hwm: 99999999999 is outside"),
        (["--source", "synth:tone", "--metrics-port", "99999"], "--metrics-port: 99999 is outside"),
        (["--source", "file:/proc"], "is a directory"),
        (["--source", "synth:tone:9000"], "below half the rate"),
    ],
)
def test_user_errors_exit_2_with_one_sentence(args, words):
    r = _run(*args)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr and "Traceback" not in r.stderr
    # ours: one line "soundbus: ..."; argparse's: usage, then one line "...: error: ..."
    assert r.stderr.startswith("soundbus: ") or "error: argument" in r.stderr, r.stderr


def test_no_input_device_points_to_devices_file_and_synth(tmp_path):
    # a PulseAudio server that does not exist: PortAudio finds no input on a machine without a sound card
    env = {"PULSE_SERVER": f"unix:{tmp_path}/none", "PULSE_RUNTIME_PATH": str(tmp_path)}
    probe = subprocess.run(
        [sys.executable, "-c", "import sounddevice as sd; print(sum(d['max_input_channels'] > 0 "
         "for d in sd.query_devices()))"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
    )
    if probe.stdout.strip() != "0":
        pytest.skip("this machine has a real input device")
    r = _run(env=env)
    assert r.returncode == 2
    assert "no audio input device found" in r.stderr
    assert "soundbus devices" in r.stderr and "--source file:" in r.stderr and "synth:" in r.stderr


@needs_sox
def test_loop_starts_a_new_epoch_each_pass(tmp_path, procs, collector):
    x = make_signal("s16", 1, RATE // 5)  # 0.2 s: 10 chunks
    wav = sox_wav(tmp_path, "s16", 1, x, "short")
    out = tcp()
    start(procs, "capture", "--source", f"file:{wav}#loop", "--loop", "--fast", "--output", out)
    col = collector(out, Kind.RAW)
    col.collect(lambda ms: len({m.header.epoch for m in ms}) >= 4, timeout=20)
    epochs = sorted({m.header.epoch for m in col.messages})[:3]  # three whole passes
    for i, e in enumerate(epochs):
        samples, hs = assemble_stream([m for m in col.messages if m.header.epoch == e])
        assert np.array_equal(samples[:, 0], x[:, 0].astype("<i2"))
        assert hs[-1].flags & Flag.END
        assert bool(hs[0].flags & Flag.DISCONTINUITY) == (i > 0)  # the first epoch has nothing to break from


def test_without_subscriber_a_file_waits_then_publishes_and_exits(tmp_path):
    x = make_signal("s16", 1, 1600)
    with __import__("wave").open(str(tmp_path / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE), w.writeframes(x.astype("<i2").tobytes())
    r = subprocess.run(
        [sys.executable, "-m", "capture", "--source", f"file:{tmp_path / 'a.wav'}", "--fast", "--wait-subscriber",
         "0.5", "--output", tcp()],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "not every subscriber joined after 0.5s; publishing anyway" in r.stderr and "all sources ended" in r.stderr


def test_sigterm_stops_cleanly(procs, collector):
    import signal

    out = tcp()
    cap = start(procs, "capture", "--source", "synth:noise", "--output", out)
    col = collector(out, Kind.RAW)
    col.collect(lambda ms: len(ms) >= 5, timeout=15)
    t0 = time.monotonic()
    assert cap.stop(signal.SIGTERM) == 0, cap.log()
    assert time.monotonic() - t0 < 10
    cap.wait_for("capture: streams=1")


def test_a_large_piped_input_is_all_published_and_capture_exits(procs, collector):
    """64 MB on stdin, faster than real time: capture reads it as the publisher sends, publishes
    every chunk and exits at EOF (it once deadlocked: framer lock, full queue, heartbeat)."""
    out = tcp()
    producer = subprocess.Popen(["head", "-c", "64000000", "/dev/zero"], stdout=subprocess.PIPE)
    try:
        cap = start(procs, "capture", "--source", "pipe:s16:16000:1#big", "--fast",
                    "--output", out, stdin=producer.stdout)
        producer.stdout.close()
        col = collector(out, Kind.RAW)
        col.collect(lambda ms: bool(ms) and bool(ms[-1].header.flags & Flag.END), timeout=240)
        assert cap.wait(60) == 0, cap.log()
    finally:
        producer.kill()
        producer.wait()
    samples, hs = assemble_stream(col.messages, "big")
    assert len(samples) == 32_000_000 and hs[-1].flags & Flag.END


def _synth(spec: str, rate: int = 16000, channels: int = 1):
    from capture.sources import make_source
    from capture.sources.base import CaptureOptions
    from capture.spec import parse_sources

    src = make_source(parse_sources([spec], [])[0], CaptureOptions(chunk_ms=20, fast=True, rate=rate,
                                                                 channels=channels))
    src.prepare()
    return src


@pytest.mark.parametrize("freq", [1000, 440.5])
def test_synth_tone_blocks_match_the_formula_across_the_shared_tables_period(freq) -> None:
    """Chunks are cut from a one-second table shared by all sources (or, for a fractional
    frequency, computed): either way sample k is round(0.5 sin(2 pi f k / rate) * 32767)."""
    src = _synth(f"synth:tone:{freq}#t", channels=2)
    start, n = 16000 - 100, 320  # straddles the table's end
    got = np.frombuffer(src._block(start, n), "<i2").reshape(n, 2)
    k = np.arange(start, start + n)
    expected = np.round(0.5 * np.sin(2 * np.pi * freq * k / 16000) * 32767).astype("<i2")
    assert np.array_equal(got[:, 0], expected) and np.array_equal(got[:, 1], expected)


def test_synth_noise_streams_differ_have_the_level_and_wrap_seamlessly() -> None:
    from capture.sources.synth import NOISE_TABLE_S

    a, b = _synth("synth:noise#a"), _synth("synth:noise#b")
    one_s_a = np.frombuffer(a._block(0, 16000), "<i2")
    assert not np.array_equal(one_s_a, np.frombuffer(b._block(0, 16000), "<i2"))  # each stream its own place
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean((one_s_a / 32768.0) ** 2)))
    assert -21 < rms_dbfs < -19
    period = NOISE_TABLE_S * 16000
    whole = np.frombuffer(a._block(0, period), "<i2")
    across = np.frombuffer(a._block(period - 50, 100), "<i2")  # a chunk across the wrap
    assert np.array_equal(across, np.concatenate([whole[-50:], whole[:50]]))
    assert np.array_equal(np.frombuffer(a._block(period + 7, 30), "<i2"), whole[7:37])
