"""A clip's audio for the evaluation: a file capture can read, its duration, where the sound is.

The pipeline itself reads each clip with ``capture --source file:PATH``; this module only
unpacks archive members to files for it (once, into the cache directory) and decodes clips
to measure their duration and the reference span of the sound.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from evaluate.labels import Clip
from evaluate.rcc import RccArchive

RATE = 16_000
FRAME_S = 0.010  # energy frames
FLOOR_PERCENTILE = 10  # the clip's noise floor: this percentile of frame levels
OVER_FLOOR_DB = 15.0  # a frame is "sound" this far above the floor ...
BELOW_PEAK_DB = 40.0  # ... and no more than this below the loudest frame


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "soundbus" / "eval-audio"


def playable_path(clip: Clip, archives: dict[Path, RccArchive] | None = None) -> Path:
    """A file ``capture --source file:`` reads: the clip itself, or its archive member unpacked once."""
    if clip.member is None:
        return clip.source
    digest = hashlib.sha256(f"{clip.source}!{clip.member}".encode()).hexdigest()[:16]
    target = cache_dir() / f"{digest}{Path(clip.member).suffix}"
    if target.is_file():
        return target
    archives = {} if archives is None else archives
    if clip.source not in archives:
        archives[clip.source] = RccArchive(clip.source)
    data = archives[clip.source].read(clip.member)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)  # atomic: a concurrent run sees the whole file or none
    return target


def load_16k(path: Path) -> np.ndarray:
    """Mono float32 samples at 16 kHz (channels averaged, soxr HQ), as convert would make them."""
    x, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    mono = x.mean(axis=1)
    return mono if rate == RATE else soxr.resample(mono, rate, RATE).astype(np.float32)


def energy_span(x: np.ndarray, rate: int = RATE) -> tuple[float, float] | None:
    """(start_s, end_s) of the sound in a clip: first to last 10 ms frame well above the noise floor.

    A frame counts when its RMS level is OVER_FLOOR_DB above the clip's FLOOR_PERCENTILE level
    and within BELOW_PEAK_DB of its loudest frame. For an isolated word or call recorded in a
    quiet room this is where the word or call is. None for a clip with no such frame.
    """
    n = int(rate * FRAME_S)
    frames = len(x) // n
    if frames == 0:
        return None
    rms = np.sqrt(np.mean(x[: frames * n].reshape(frames, n).astype(np.float64) ** 2, axis=1))
    db = 20 * np.log10(rms + 1e-10)  # (frames,)
    threshold = max(np.percentile(db, FLOOR_PERCENTILE) + OVER_FLOOR_DB, db.max() - BELOW_PEAK_DB)
    loud = np.flatnonzero(db >= threshold)
    if loud.size == 0:
        return None
    return float(loud[0] * FRAME_S), float((loud[-1] + 1) * FRAME_S)
