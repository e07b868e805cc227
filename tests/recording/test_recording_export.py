"""soundbus export: every sample format and layout to a WAV that other readers agree with."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from common.recording.format import RecordingWriter
from common.wire import AudioHeader, Kind, Layout, SampleFormat, decode, encode_audio
from tests.conftest import ROOT
from tests.recording.conftest import TWO_STREAMS, read_all, soundbus

RNG = np.random.default_rng(7)
FRAMES, CHANNELS, RATE = 160, 2, 8000


def samples(fmt: str) -> np.ndarray:
    """(n, channels) test signal in ``fmt``'s numpy dtype (s24 as (n, channels, 3) bytes)."""
    if fmt in ("f32", "f64"):
        return RNG.uniform(-1, 1, (FRAMES, CHANNELS)).astype("<f4" if fmt == "f32" else "<f8")
    if fmt == "s24":
        return RNG.integers(0, 256, (FRAMES, CHANNELS, 3), dtype=np.uint8)
    dt = {"s8": "i1", "u8": "u1", "s16": "<i2", "s32": "<i4"}[fmt]
    info = np.iinfo(dt)
    return RNG.integers(info.min, info.max, (FRAMES, CHANNELS), dtype=dt, endpoint=True)


def make_recording(path: Path, fmt: str, layout: str, messages: int, skip: int | None = None,
                   offset_jump: int = 0) -> np.ndarray:
    """A recording of stream "x" (kind raw); returns the whole signal (n, channels[, 3]).

    ``offset_jump``: added to the offsets of the messages after the first (a damaged source)."""
    chunks = [samples(fmt) for _ in range(messages)]
    with RecordingWriter(path, {}) as w:
        for seq, c in enumerate(chunks):
            if seq == skip:
                continue
            kind = Kind.TENSOR if fmt == "f32" and layout == "planar" else Kind.RAW
            h = AudioHeader(stream="x", epoch=5, seq=seq, t_capture_ns=seq, rate=RATE, channels=CHANNELS,
                            format=SampleFormat(fmt), layout=Layout(layout), samples=FRAMES,
                            offset=seq * FRAMES + (offset_jump if seq else 0))
            payload = np.ascontiguousarray(np.swapaxes(c, 0, 1) if layout == "planar" else c)
            data = encode_audio(kind, h, payload)
            decode(data)
            w.write([data], seq * 20_000_000)
    return np.concatenate(chunks)


def export(procs, src: Path, out: Path, *extra: str) -> None:
    p = soundbus(procs, "export", str(src), "--stream", "x", "-o", str(out), *extra)
    assert p.wait(30) == 0, p.log()


@pytest.mark.parametrize("layout", ["interleaved", "planar"])
@pytest.mark.parametrize("fmt, width", [("s8", 1), ("u8", 1), ("s16", 2), ("s24", 3), ("s32", 4)])
def test_integer_formats_export_as_pcm_wav(procs, tmp_path: Path, fmt: str, width: int, layout: str) -> None:
    signal = make_recording(tmp_path / "r.sbrec", fmt, layout, 3)
    export(procs, tmp_path / "r.sbrec", tmp_path / "o.wav")
    with wave.open(str(tmp_path / "o.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (RATE, CHANNELS, width,
                                                                                         3 * FRAMES)
        data = w.readframes(w.getnframes())
    expect = (signal.astype(np.int16) + 128).astype(np.uint8) if fmt == "s8" else signal  # WAV 8-bit is unsigned
    assert data == np.ascontiguousarray(expect).tobytes()


@pytest.mark.parametrize("fmt, layout", [("f32", "planar"), ("f32", "interleaved"), ("f64", "interleaved")])
def test_float_formats_export_as_ieee_float_wav(procs, tmp_path: Path, fmt: str, layout: str) -> None:
    sf = pytest.importorskip("soundfile")
    signal = make_recording(tmp_path / "r.sbrec", fmt, layout, 3)
    export(procs, tmp_path / "r.sbrec", tmp_path / "o.wav")
    raw = (tmp_path / "o.wav").read_bytes()
    tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", raw, 20)
    assert (tag, ch, rate, bits) == (3, CHANNELS, RATE, 32 if fmt == "f32" else 64)
    data, sr = sf.read(str(tmp_path / "o.wav"), dtype="float64", always_2d=True)
    info = sf.info(str(tmp_path / "o.wav"))
    assert sr == RATE and info.subtype == ("FLOAT" if fmt == "f32" else "DOUBLE")
    np.testing.assert_array_equal(data, signal.astype(np.float64))


def test_gap_is_filled_with_silence_unless_asked_not_to(procs, tmp_path: Path) -> None:
    signal = make_recording(tmp_path / "r.sbrec", "s16", "interleaved", 4, skip=2)
    export(procs, tmp_path / "r.sbrec", tmp_path / "filled.wav")
    export(procs, tmp_path / "r.sbrec", tmp_path / "joined.wav", "--no-fill")
    with wave.open(str(tmp_path / "filled.wav")) as w:
        filled = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, CHANNELS)
    with wave.open(str(tmp_path / "joined.wav")) as w:
        joined = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, CHANNELS)
    gap = slice(2 * FRAMES, 3 * FRAMES)
    expect = signal.copy()
    expect[gap] = 0
    np.testing.assert_array_equal(filled, expect)
    np.testing.assert_array_equal(joined, np.delete(signal, np.arange(2 * FRAMES, 3 * FRAMES), axis=0))


def test_a_damaged_offset_does_not_fill_the_disk_with_silence(procs, tmp_path: Path) -> None:
    """Offsets that jump by 2^33 once made export write silence until the disk was full."""
    signal = make_recording(tmp_path / "r.sbrec", "s16", "interleaved", 3, offset_jump=2**33)
    p = soundbus(procs, "export", str(tmp_path / "r.sbrec"), "--stream", "x", "-o", str(tmp_path / "j.wav"))
    assert p.wait(30) == 0, p.log()
    p.wait_for(r"not filled: over --max-fill-s 60")
    with wave.open(str(tmp_path / "j.wav")) as w:
        assert w.getnframes() == len(signal)


def test_committed_recording_exports_its_speech(procs, tmp_path: Path) -> None:
    out = tmp_path / "room48.wav"
    p = soundbus(procs, "export", str(TWO_STREAMS), "--stream", "room48", "-o", str(out))
    assert p.wait(30) == 0, p.log()
    payloads = b"".join(bytes(r.frames[2]) for r in read_all(TWO_STREAMS)[0] if r.stream == "room48")
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (48000, 2, 48000)
        assert w.readframes(48000) == payloads


def test_progress_shows_on_a_terminal_and_not_in_a_pipe(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "common.recording.cli", "export", str(TWO_STREAMS), "--stream", "room48", "-o"]
    master, slave = os.openpty()
    try:
        env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
        p = subprocess.run([*args, str(tmp_path / "a.wav")], stderr=slave, stdout=subprocess.DEVNULL, cwd=ROOT,
                           timeout=30, env=env, check=False)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal has no writer left
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert p.returncode == 0
    assert b"export room48" in shown and b"50 msgs, 1.0 s" in shown
    piped = subprocess.run([*args, str(tmp_path / "b.wav")], capture_output=True, cwd=ROOT, timeout=30, check=False)
    assert piped.returncode == 0 and b"export room48" not in piped.stderr and b"\x1b[" not in piped.stderr
