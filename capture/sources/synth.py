"""``synth:tone[:HZ]`` / ``synth:noise`` / ``synth:silence``: test signals for demos, tests and benchmarks.

Rate, channels and format come from ``--rate`` (default 16000 Hz), ``--channels``
(default 1) and ``--format`` (default s16); every channel carries the same signal.
The tone is a sine at -6 dBFS whose phase is computed from the sample index, so it is
continuous across chunks; noise is Gaussian white noise at -20 dBFS RMS from a seeded
generator. Paced by the loop's clock (real time, or ``--fast``); ``--duration`` makes it finite.

Chunks are cut from a table made once per signal and format and shared by every source of
the process (a capacity run has hundreds): noise repeats every NOISE_TABLE_S seconds, each
stream starting at its own place in it, so streams differ; a whole-hertz tone repeats every
second exactly. Generating per chunk cost more than everything else capture does.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from capture.framer import Chunk, StreamFormat
from capture.sources.base import Loop, Pacer, Source
from capture.spec import parse_synth_arg
from common.errors import UserError
from common.wire.messages import HeartbeatState

TONE_AMPLITUDE = 0.5  # -6 dBFS
NOISE_RMS = 0.1  # -20 dBFS
_FULL_SCALE = {"s16": 32767, "s32": 2147483647}
FAST_CHUNKS_PER_TICK = 64  # --fast: chunks made per loop turn (keeps the loop responsive)
NOISE_TABLE_S = 8  # seconds of noise made once and repeated


def quantise(x: np.ndarray, fmt: str) -> np.ndarray:
    """Float samples in [-1, 1) -> the dtype of protocol ``fmt`` (s16, s32 or f32)."""
    if fmt == "f32":
        return x.astype("<f4")
    scale = _FULL_SCALE[fmt]
    return np.clip(np.round(x * scale), -scale - 1, scale).astype("<i2" if fmt == "s16" else "<i4")


class SynthSource(Source):
    """Generates a tone, noise or silence chunk by chunk, when the loop's clock says it is due."""

    def prepare(self) -> None:
        self.wave, self.freq = parse_synth_arg(self.spec.arg)
        fmt = self.opts.format or "s16"
        if fmt not in ("s16", "s32", "f32"):
            raise UserError(f"synth sources produce s16, s32 or f32; got --format {fmt}.")
        rate = self.opts.rate or 16000
        if self.wave == "tone" and self.freq >= rate / 2:
            raise UserError(f"tone {self.freq} Hz is not below half the rate ({rate} Hz); raise --rate.")
        self.fmt = StreamFormat(rate, self.opts.channels or 1, fmt)
        what = f"tone {self.freq:g} Hz" if self.wave == "tone" else self.wave
        self.description = f"synth:{what} ({rate} Hz, {self.fmt.channels} ch)"
        self.total = round(self.opts.duration_s * rate) if self.opts.duration_s else None
        self.table = _table(self.wave, self.freq, self.fmt)
        # where in the shared noise table this stream starts: streams differ, a restart repeats
        self.phase = zlib.crc32(self.stream.encode()) if self.wave == "noise" else 0

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        self.pacer = Pacer(self.fmt.rate, self.opts.fast, self.framer.chunk_samples)
        self._begin()
        return []

    def _begin(self) -> None:
        self.framer.new_epoch()
        self.pacer.restart()
        self.pos = 0
        self.set_state(HeartbeatState.RUNNING, self.description)

    def _block(self, start: int, n: int) -> bytes:
        """Interleaved samples ``start`` .. ``start + n`` of this stream's signal."""
        table = self.table
        if table is None:  # a tone of a fraction of a hertz: no short period, computed per chunk
            idx = np.arange(start, start + n, dtype=np.float64)
            return _interleave(quantise(TONE_AMPLITUDE * np.sin(2 * np.pi * self.freq * idx / self.fmt.rate),
                                        self.fmt.format), self.fmt.channels)
        bpf = self.fmt.bytes_per_sample_frame
        period = len(table) // bpf
        at = (start + self.phase) % period
        if at + n <= period:
            return table[at * bpf:(at + n) * bpf]
        return b"".join(_cycle(table, at * bpf, n * bpf))

    def _next_len(self) -> int:
        n = self.framer.chunk_samples
        return n if self.total is None else min(n, self.total - self.pos)

    def due_in(self, now: float) -> float | None:
        if self.state is not HeartbeatState.RUNNING:
            return None
        return self.pacer.due_in(self.pos + self._next_len(), now)

    def tick(self, now: float) -> list[Chunk]:
        out: list[Chunk] = []
        made = 0
        while self.state is HeartbeatState.RUNNING and made < FAST_CHUNKS_PER_TICK:
            n = self._next_len()
            if self.pacer.due_in(self.pos + n, now) > 0:
                break
            last = self.total is not None and self.pos + n >= self.total
            out += self.framer.push(self._block(self.pos, n), self.pacer.t_of(self.pos), end=last)
            self.pos += n
            made += 1
            if last:
                if self.opts.loop:
                    self._begin()
                else:
                    self.set_state(HeartbeatState.ENDED)
        return out


@functools.lru_cache(maxsize=32)
def _table(wave: str, freq: float, fmt: StreamFormat) -> bytes | None:
    """One period of ``wave`` in ``fmt``, interleaved (None: a tone with no whole-second period)."""
    if wave == "noise":
        x = np.clip(np.random.default_rng(0).normal(0.0, NOISE_RMS, NOISE_TABLE_S * fmt.rate), -1.0, 1.0)
    elif wave == "tone":
        if not float(freq).is_integer():
            return None
        x = TONE_AMPLITUDE * np.sin(2 * np.pi * freq * np.arange(fmt.rate, dtype=np.float64) / fmt.rate)
    else:
        x = np.zeros(fmt.rate)
    return _interleave(quantise(x, fmt.format), fmt.channels)


def _interleave(q: np.ndarray, channels: int) -> bytes:
    """One channel's samples -> (samples, channels) interleaved bytes, every channel the same."""
    if channels == 1:
        return q.tobytes()
    return np.repeat(q[:, None], channels, axis=1).tobytes()


def _cycle(table: bytes, at: int, n: int) -> list[bytes]:
    """``n`` bytes of ``table`` repeated, from byte ``at`` on."""
    out = []
    while n > 0:
        piece = table[at:at + n]
        out.append(piece)
        n -= len(piece)
        at = 0
    return out
