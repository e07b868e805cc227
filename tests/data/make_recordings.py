"""Make the small committed recordings in tests/data (deterministic: same bytes on every run).

    .venv/bin/python tests/data/make_recordings.py          # rewrite them
    .venv/bin/python tests/data/make_recordings.py --check  # exit 1 if they differ

Messages are built with common.wire.v1 (protocol v1) directly (not with capture), so these files do
not change when capture does. What they hold is described in tests/data/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.wire.v1 import Flag, Header, Hop, Kind, encode
from common.recording.format import RecordingWriter

HERE = Path(__file__).resolve().parent
ALSA = Path("/usr/share/sounds/alsa")
T0_NS = 1_764_000_000_000_000_000  # a fixed wall clock (2025-11-24), so the files never change
EPOCH = T0_NS
FRAME_MS = 20
LATENCY_NS = 1_500_000  # receive time = capture time of the frame's end + 1.5 ms
TWO_STREAMS = "two_streams.sbrec"
GAP_STREAM, GAP_SEQ = "speech16", 30  # the message removed from speech16 to make a gap


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(samples int16 shape (frames,), rate Hz) of a mono s16 WAV."""
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def room48() -> np.ndarray:
    """1.0 s at 48 kHz, s16 stereo (frames, 2): left speech (Front_Center), right a 1 kHz tone at -12 dBFS."""
    speech, rate = read_wav(ALSA / "Front_Center.wav")
    assert rate == 48_000
    n = 48_000
    t = np.arange(n) / 48_000
    tone = np.round(0.25 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype("<i2")
    return np.stack([speech[:n], tone], axis=1)


def speech16() -> np.ndarray:
    """Front_Left (1.48 s of speech) resampled 48 -> 16 kHz with soxr, s16 mono (frames, 1)."""
    speech, rate = read_wav(ALSA / "Front_Left.wav")
    x = soxr.resample(speech.astype(np.float32) / 32768, rate, 16_000, quality="HQ")
    return np.clip(np.round(x * 32768), -32768, 32767).astype("<i2")[:, None]


def stream_messages(stream: str, pcm: np.ndarray, rate: int, source: str, skip: set[int]) -> list[tuple[int, list]]:
    """(t_recv_ns, frames) of every 20 ms message of one stream, minus the seqs in ``skip``."""
    per = rate * FRAME_MS // 1000
    count = -(-len(pcm) // per)
    out = []
    for seq in range(count):
        chunk = np.ascontiguousarray(pcm[seq * per : (seq + 1) * per])
        offset = seq * per
        t_cap = T0_NS + offset * 1_000_000_000 // rate
        t_end = T0_NS + (offset + len(chunk)) * 1_000_000_000 // rate
        h = Header(
            kind=Kind.RAW, stream=stream, epoch=EPOCH, seq=seq, t_capture_ns=t_cap, rate=rate,
            channels=pcm.shape[1], format="s16", frames=len(chunk), offset=offset,
            flags=Flag.END if seq == count - 1 else Flag.NONE, source=source,
            trace=[Hop("capture", t_end, t_end + 200_000)],
        )
        if seq not in skip:
            out.append((t_end + LATENCY_NS, [bytes(f) for f in encode(h, chunk)]))
    return out


def write_two_streams(path: Path) -> None:
    msgs = stream_messages("room48", room48(), 48_000, "file:Front_Center.wav+tone1k", set())
    msgs += stream_messages(GAP_STREAM, speech16(), 16_000, "file:Front_Left.wav@16k", {GAP_SEQ})
    msgs.sort(key=lambda m: (m[0], m[1][0]))  # receive order, as a recorder would have seen it
    meta = {"created_ns": T0_NS, "host": "make_recordings.py", "format": 1, "note": "tests/data/README.md"}
    with RecordingWriter(path, meta, overwrite=True) as w:
        for t, frames in msgs:
            w.write(frames, t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    if not args.check:
        write_two_streams(HERE / TWO_STREAMS)
        print(f"wrote {HERE / TWO_STREAMS} ({(HERE / TWO_STREAMS).stat().st_size} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as d:
        fresh = Path(d) / TWO_STREAMS
        write_two_streams(fresh)
        same = fresh.read_bytes() == (HERE / TWO_STREAMS).read_bytes()
    print("up to date" if same else f"{TWO_STREAMS} differs from what this script makes")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
