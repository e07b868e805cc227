"""``file:PATH``: a sound file read with libsndfile (python-soundfile), published in its own format.

No conversion happens here: a 24-bit WAV is published as packed ``s24``, a float WAV as
``f32`` (convert does the scaling). Formats that are not plain PCM (FLAC/Ogg/MP3 with a
compressed subtype) are decoded by libsndfile to ``f32``.

Pacing: in real time, chunk [o, o+n) is published when (o+n)/rate seconds have passed
since the start (by capture's one loop clock), with ``t_capture_ns`` = start wall time +
o/rate; with ``--fast`` as fast as the publisher takes them, same time derivation. At the end the last chunk is
flagged END; ``--loop`` starts over with a new epoch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from capture.framer import Chunk, StreamFormat
from capture.sources.base import Loop, Pacer, Source, log
from capture.sources.synth import FAST_CHUNKS_PER_TICK
from common.errors import UserError
from common.wire.messages import MAX_CHANNELS, MAX_RATE_HZ, HeartbeatState

# libsndfile subtype -> (dtype to read, protocol format). s24/u8/s8 are repacked exactly below.
_SUBTYPES: dict[str, tuple[str, str]] = {
    "PCM_16": ("int16", "s16"),
    "PCM_24": ("int32", "s24"),
    "PCM_32": ("int32", "s32"),
    "FLOAT": ("float32", "f32"),
    "DOUBLE": ("float64", "f64"),
    "PCM_U8": ("int16", "u8"),
    "PCM_S8": ("int16", "s8"),
}


def to_wire_bytes(block: np.ndarray, fmt: str) -> bytes:
    """Samples read by libsndfile (shape (samples, channels)) -> interleaved bytes of protocol ``fmt``.

    libsndfile widens s24 to int32 (<< 8) and 8-bit to int16 (<< 8); undoing that is exact.
    """
    if fmt == "s24":
        # (samples, ch) int32 little-endian: bytes 1..3 hold the 24-bit sample
        return np.ascontiguousarray(block, dtype="<i4").view(np.uint8).reshape(-1, 4)[:, 1:].tobytes()
    if fmt == "u8":
        return ((block.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    if fmt == "s8":
        return (block >> 8).astype(np.int8).tobytes()
    return np.ascontiguousarray(block).tobytes()


class FileSource(Source):
    """Reads a sound file chunk by chunk when the loop's clock says it is due; END at the end; optional loop."""

    def prepare(self) -> None:
        path = Path(self.spec.arg).expanduser()
        if path.is_dir():
            raise UserError(f"{path} is a directory; give a sound file, e.g. --source file:speech.wav.")
        if not path.exists():
            raise UserError(f"file {path} does not exist; give an existing sound file, e.g. --source file:speech.wav.")
        if not os.access(path, os.R_OK):
            raise UserError(f"cannot read {path}: permission denied; check the file's permissions.")
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise UserError(f"cannot read {path} as a sound file ({e}); give a WAV/FLAC/Ogg file.") from None
        if not 1 <= info.samplerate <= MAX_RATE_HZ or not 1 <= info.channels <= MAX_CHANNELS:
            raise UserError(f"{path} has {info.samplerate} Hz and {info.channels} channels; soundbus takes "
                            f"1-{MAX_RATE_HZ} Hz and 1-{MAX_CHANNELS} channels.")
        self.path = path
        self.total = int(info.frames)  # samples per channel
        self.dtype, fmt = _SUBTYPES.get(info.subtype, ("float32", "f32"))
        self.fmt = StreamFormat(int(info.samplerate), int(info.channels), fmt)
        self.description = f"file:{path.name} ({info.subtype}, {info.samplerate} Hz, {info.channels} ch)"
        if info.frames == 0:
            log.warning("stream %s: %s holds no samples", self.stream, path)
        self.file: sf.SoundFile | None = None

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        self.pacer = Pacer(self.fmt.rate, self.opts.fast, self.framer.chunk_samples)
        return self._begin()

    def _begin(self) -> list[Chunk]:
        self.framer.new_epoch()
        self.pacer.restart()
        self.close()
        try:
            self.file = sf.SoundFile(str(self.path))
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            self.set_state(HeartbeatState.FAILED, f"cannot open {self.path}: {e}")
            return []
        self.pos = 0
        self.set_state(HeartbeatState.RUNNING, str(self.path))
        if self.total == 0:
            self._end()
        return []

    def due_in(self, now: float) -> float | None:
        if self.state is not HeartbeatState.RUNNING:
            return None
        return self.pacer.due_in(self.pos + min(self.framer.chunk_samples, self.total - self.pos), now)

    def tick(self, now: float) -> list[Chunk]:
        out: list[Chunk] = []
        made = 0
        while self.state is HeartbeatState.RUNNING and made < FAST_CHUNKS_PER_TICK:
            n = min(self.framer.chunk_samples, self.total - self.pos)
            if self.pacer.due_in(self.pos + n, now) > 0:
                break
            block = self.file.read(n, dtype=self.dtype, always_2d=True)
            if len(block) == 0:  # the header promised more than the file holds
                log.warning("stream %s: %s ended after %d of %d samples", self.stream, self.path, self.pos,
                            self.total)
                out += self.framer.end()
                out += self._end()
                break
            n = len(block)
            last = self.pos + n >= self.total
            out += self.framer.push(to_wire_bytes(block, self.fmt.format), self.pacer.t_of(self.pos), end=last)
            self.pos += n
            made += 1
            if last:
                out += self._end()
        return out

    def _end(self) -> list[Chunk]:
        if self.opts.loop and self.total > 0:
            log.info("stream %s: end of file, looping", self.stream)
            return self._begin()
        self.close()
        self.set_state(HeartbeatState.ENDED)
        return []

    def close(self) -> None:
        f, self.file = getattr(self, "file", None), None
        if f is not None:
            f.close()
