"""Clips on disk: FLAC (default), Opus or WAV through soundfile, never half-written under a real name.

A clip is written to ``NAME.tmp`` in its final directory, flushed to disk (fsync), then
renamed to ``NAME`` (an atomic step on POSIX file systems), and the directory is synced so
the rename itself survives a power loss. A crash at any point leaves either no file, a
``*.tmp`` file (removed when the store next opens), or the complete clip.

What each format keeps (samples come from events.ring: int16, int32 or float arrays):

    flac  integers exactly (16 bits; 24 bits; s32 loses its lowest 8 bits). Float tensors
          are stored at 24 bits: round(x * 2^23), so audio that came from 16- or 24-bit
          integers at the same rate is exact, anything else within 2^-24 of full scale;
          values beyond [-1, 1) (resampler overshoot) are clipped and counted.
    wav   every sample exactly (PCM 16/24/32, float 32/64).
    opus  lossy, 8/12/16/24/48 kHz only (other rates are written as FLAC instead).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from events.ring import SampleKind

FORMATS = ("flac", "opus", "wav")
EXTENSIONS = {"flac": ".flac", "opus": ".opus", "wav": ".wav"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
TMP_SUFFIX = ".tmp"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class WrittenClip:
    """A clip on disk: its format as written, size in bytes, and samples clipped to fit (flac of floats)."""

    fmt: str
    subtype: str
    bytes: int
    clipped: int = 0


def clip_format_for(fmt: str, rate: int) -> str:
    """The format a clip is written in: Opus only at the rates it supports, else FLAC."""
    return "flac" if fmt == "opus" and rate not in OPUS_RATES else fmt


def _encode(samples: np.ndarray, kind: SampleKind, fmt: str) -> tuple[np.ndarray, str, int]:
    """(array soundfile writes, subtype, samples clipped) for ``samples`` (frames, channels)."""
    if fmt == "opus":
        if kind.is_float:
            return samples.astype(np.float32, copy=False), "OPUS", 0
        return samples.astype(np.float32) / np.float32(2**15 if kind.dtype == np.int16 else 2**31), "OPUS", 0
    if not kind.is_float:
        if kind.dtype == np.int16:
            return samples, "PCM_16", 0
        if fmt == "wav" and kind.bits == 32:
            return samples, "PCM_32", 0
        return samples, "PCM_24", 0  # int32 holding 24 bits in its high bytes (s32: the low 8 are dropped)
    if fmt == "wav":
        return samples, ("DOUBLE" if kind.bits == 64 else "FLOAT"), 0
    scaled = np.rint(samples.astype(np.float64) * 2**23)
    over = int(np.count_nonzero((scaled < -(2**23)) | (scaled > 2**23 - 1)))
    q = np.clip(scaled, -(2**23), 2**23 - 1).astype(np.int32) << 8
    return q, "PCM_24", over


def write_clip(path: Path, samples: np.ndarray, rate: int, kind: SampleKind, fmt: str,
               fsync: bool = True) -> WrittenClip:
    """Write ``samples`` (frames, channels) to ``path`` atomically (see the module docstring).

    Raises OSError (errno ENOSPC when the disk is full); nothing is left under ``path``
    or its temporary name when it does."""
    fmt = clip_format_for(fmt, rate)
    data, subtype, clipped = _encode(samples, kind, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    container = {"flac": "FLAC", "opus": "OGG", "wav": "WAV"}[fmt]
    try:
        try:
            with sf.SoundFile(tmp, "w", samplerate=rate, channels=samples.shape[1], subtype=subtype,
                              format=container) as f:
                f.write(data)
        except sf.LibsndfileError as e:  # libsndfile says "system error" with no errno: find out if it was space
            raise _os_error(e, tmp, data.nbytes) from None
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        sync_dir(path.parent)
    return WrittenClip(fmt, subtype, path.stat().st_size, clipped)


def _os_error(e: sf.LibsndfileError, path: Path, needed: int) -> OSError:
    """libsndfile's error as an OSError: ENOSPC when the file system has less room than the clip
    needed (libsndfile's own message for a failed write is empty), else EIO with its message."""
    free = _free_bytes(path.parent)
    if 0 <= free < max(needed, 65536):
        return OSError(errno.ENOSPC, "No space left on device", str(path))
    return OSError(errno.EIO, f"libsndfile: {e.error_string or 'write failed'}", str(path))


def _free_bytes(d: Path) -> int:
    try:
        st = os.statvfs(d)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def free_bytes(d: Path) -> int:
    """Bytes free for this user on the file system holding ``d`` (-1 if unknown)."""
    return _free_bytes(d)


def sync_dir(d: Path) -> None:
    """fsync a directory, so a rename in it is on disk."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_clip(path: Path) -> tuple[np.ndarray, int, str]:
    """(samples (frames, channels), rate, subtype) exactly as stored: int16 for 16-bit PCM, int32 for
    24/32-bit PCM (24 bits in the high bytes), float for float WAV and Opus."""
    info = sf.info(str(path))
    dtype = {"PCM_16": "int16", "PCM_S8": "int16", "PCM_U8": "int16", "PCM_24": "int32", "PCM_32": "int32",
             "DOUBLE": "float64"}.get(info.subtype, "float32")
    data, rate = sf.read(str(path), dtype=dtype, always_2d=True)
    return data, rate, info.subtype


def float_of_flac24(data: np.ndarray) -> np.ndarray:
    """Float samples of a FLAC clip made from float tensors (the inverse of its 24-bit rounding)."""
    return ((data >> 8).astype(np.float64) / 2**23).astype(np.float32)
