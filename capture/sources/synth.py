"""``synth:tone[:HZ]`` / ``synth:noise`` / ``synth:silence``: test signals for demos and tests.

Rate, channels and format come from ``--rate`` (default 16000 Hz), ``--channels``
(default 1) and ``--format`` (default s16); every channel carries the same signal.
The tone is a sine at -6 dBFS whose phase is computed from the sample index, so it is
continuous across frames; noise is Gaussian white noise at -20 dBFS RMS from a seeded
generator. Paced like a file (real time, or ``--fast``); ``--duration`` makes it finite.
"""

from __future__ import annotations

import numpy as np

from capture.errors import CaptureError
from capture.framer import StreamFormat
from capture.sources.base import Pacer, Source
from capture.spec import parse_synth_arg
from common.stage import StopFlag

TONE_AMPLITUDE = 0.5  # -6 dBFS
NOISE_RMS = 0.1  # -20 dBFS
_FULL_SCALE = {"s16": 32767, "s32": 2147483647}


def quantise(x: np.ndarray, fmt: str) -> np.ndarray:
    """Float samples in [-1, 1) -> the dtype of protocol ``fmt`` (s16, s32 or f32)."""
    if fmt == "f32":
        return x.astype("<f4")
    scale = _FULL_SCALE[fmt]
    return np.clip(np.round(x * scale), -scale - 1, scale).astype("<i2" if fmt == "s16" else "<i4")


class SynthSource(Source):
    """Generates a tone, noise or silence frame by frame."""

    def prepare(self) -> None:
        self.wave, self.freq = parse_synth_arg(self.spec.arg)
        fmt = self.opts.format or "s16"
        if fmt not in ("s16", "s32", "f32"):
            raise CaptureError(f"synth sources produce s16, s32 or f32; got --format {fmt}.")
        rate = self.opts.rate or 16000
        if self.wave == "tone" and self.freq >= rate / 2:
            raise CaptureError(f"tone {self.freq} Hz is not below half the rate ({rate} Hz); raise --rate.")
        self.fmt = StreamFormat(rate, self.opts.channels or 1, fmt)
        what = f"tone {self.freq:g} Hz" if self.wave == "tone" else self.wave
        self.description = f"synth:{what} ({rate} Hz, {self.fmt.channels} ch)"

    def _block(self, start: int, n: int, rng: np.random.Generator) -> bytes:
        idx = np.arange(start, start + n, dtype=np.float64)
        if self.wave == "tone":
            x = TONE_AMPLITUDE * np.sin(2 * np.pi * self.freq * idx / self.fmt.rate)
        elif self.wave == "noise":
            x = np.clip(rng.normal(0.0, NOISE_RMS, n), -1.0, 1.0)
        else:
            x = np.zeros(n)
        q = quantise(x, self.fmt.format)
        return np.repeat(q[:, None], self.fmt.channels, axis=1).tobytes()  # (frames, channels) interleaved

    def run(self, stop: StopFlag) -> None:
        assert self.framer is not None
        framer = self.framer
        rate = self.fmt.rate
        total = round(self.opts.duration_s * rate) if self.opts.duration_s else None
        pacer = Pacer(rate, self.opts.fast)
        while not stop:
            framer.new_epoch()
            pacer.restart()
            rng = np.random.default_rng(0)
            self.set_state("running", self.description)
            pos = 0
            while not stop and (total is None or pos < total):
                n = framer.frame_frames if total is None else min(framer.frame_frames, total - pos)
                data = self._block(pos, n, rng)
                if not pacer.wait_until(pos + n, stop):
                    return
                framer.push(data, pacer.t_of(pos), end=total is not None and pos + n >= total)
                pos += n
            if not self.opts.loop:
                break
        self.set_state("ended")
