"""``file:PATH``: a sound file read with libsndfile (python-soundfile), published in its own format.

No conversion happens here: a 24-bit WAV is published as packed ``s24``, a float WAV as
``f32`` (convert does the scaling). Formats that are not plain PCM (FLAC/Ogg/MP3 with a
compressed subtype) are decoded by libsndfile to ``f32``.

Pacing: in real time, frame [o, o+n) is published when (o+n)/rate seconds have passed
since the start, with ``t_capture_ns`` = start wall time + o/rate; with ``--fast`` as
fast as the publisher takes them, same time derivation. At the end the last frame is
flagged END; ``--loop`` starts over with a new epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from capture.errors import CaptureError
from capture.framer import StreamFormat
from capture.sources.base import Pacer, Source, log
from common.stage import StopFlag

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
    """Samples read by libsndfile (shape (frames, channels)) -> interleaved bytes of protocol ``fmt``.

    libsndfile widens s24 to int32 (<< 8) and 8-bit to int16 (<< 8); undoing that is exact.
    """
    if fmt == "s24":
        # (frames, ch) int32 little-endian: bytes 1..3 hold the 24-bit sample
        return np.ascontiguousarray(block, dtype="<i4").view(np.uint8).reshape(-1, 4)[:, 1:].tobytes()
    if fmt == "u8":
        return ((block.astype(np.int32) >> 8) + 128).astype(np.uint8).tobytes()
    if fmt == "s8":
        return (block >> 8).astype(np.int8).tobytes()
    return np.ascontiguousarray(block).tobytes()


class FileSource(Source):
    """Reads a sound file frame by frame; paced or fast; END at the end; optional loop."""

    def prepare(self) -> None:
        path = Path(self.spec.arg).expanduser()
        if not path.is_file():
            raise CaptureError(
                f"file {path} does not exist; give an existing sound file, e.g. --source file:speech.wav."
            )
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as e:
            raise CaptureError(f"cannot read {path} as a sound file ({e}); give a WAV/FLAC/Ogg file.") from None
        self.path = path
        self.total_frames = int(info.frames)  # samples per channel
        self.dtype, fmt = _SUBTYPES.get(info.subtype, ("float32", "f32"))
        self.fmt = StreamFormat(int(info.samplerate), int(info.channels), fmt)
        self.description = f"file:{path.name} ({info.subtype}, {info.samplerate} Hz, {info.channels} ch)"
        if info.frames == 0:
            log.warning("stream %s: %s holds no samples", self.stream, path)

    def run(self, stop: StopFlag) -> None:
        assert self.framer is not None
        framer = self.framer
        pacer = Pacer(self.fmt.rate, self.opts.fast)
        while not stop:
            framer.new_epoch()
            pacer.restart()
            self.set_state("running", str(self.path))
            with sf.SoundFile(str(self.path)) as f:
                total, pos = f.frames, 0
                while pos < total:
                    n = min(framer.frame_frames, total - pos)
                    block = f.read(n, dtype=self.dtype, always_2d=True)
                    n = len(block)
                    if n == 0:  # the header promised more than the file holds
                        break
                    if not pacer.wait_until(pos + n, stop):
                        return
                    framer.push(to_wire_bytes(block, self.fmt.format), pacer.t_of(pos), end=pos + n >= total)
                    pos += n
                if pos < total:
                    log.warning("stream %s: %s ended after %d of %d samples", self.stream, self.path, pos, total)
                    framer.end()
            if not self.opts.loop or total == 0:
                break
            log.info("stream %s: end of file, looping", self.stream)
        self.set_state("ended")
