"""What the page draws for a stream's audio: log-mel columns and a level meter, with numpy only.

A column is the mel-band energy of one frame of ``n_fft`` samples (Hann window) taken every
``hop`` samples, so the page scrolls at ``col_hz`` columns per second whatever the stream's
rate (``n_fft`` >= ``hop``: every sample is in some frame). Energies are in dB relative to a full-scale sine (a full-scale sine on a band's centre
reads 0 dB) and quantised to one byte over [DB_FLOOR, DB_CEIL]: 64 bands at 25 columns/s
are 1.6 kB/s of spectrogram per stream before any encoding.

:class:`MelColumns` holds one stream's samples that no column has used yet (the overlap of
the next frame); it is fed as tensors arrive and drained a few times a second. The frames
of every stream at one rate go through :class:`MelTransform` together: one batched
``rfft`` (scipy.fft: several times faster than numpy.fft on float32 batches here) and one
sparse product with the filterbank (scipy.sparse: no BLAS threads, which cost more than
they save on a busy 2-core machine).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft
import scipy.sparse

DB_FLOOR = -100.0  # byte 0
DB_CEIL = 0.0  # byte 255
BANDS = 64
COL_HZ = 25
LEVEL_FLOOR_DBFS = -120.0  # reported for digital silence instead of -inf (as the level model does)
MAX_PENDING_S = 2.0  # samples held per stream beyond one frame; older ones are dropped (counted)
MAX_SILENCE_FILL_S = 2.0  # lost audio up to this long is drawn as silence; longer restarts the columns


def hz_to_mel(f: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray | float:
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)  # one per (rate, n_fft, bands): a handful of rates in practice
def mel_filterbank(rate: int, n_fft: int, bands: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters, peak 1, shape (bands, n_fft // 2 + 1), float32.

    Band ``b`` rises from mel edge ``b`` to ``b + 1`` and falls to ``b + 2`` (``bands + 2``
    edges equally spaced in mel between ``fmin`` and ``fmax``, default rate / 2). A band
    narrower than one FFT bin (low bands at a small ``n_fft``) still gets the nearest bin.
    """
    fmax = rate / 2 if fmax is None else fmax
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)  # (n_fft // 2 + 1,) Hz
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), bands + 2))  # (bands + 2,) Hz
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (bands, 1) each
    rise = (bins[None, :] - lo) / np.maximum(mid - lo, 1e-9)
    fall = (hi - bins[None, :]) / np.maximum(hi - mid, 1e-9)
    fb = np.clip(np.minimum(rise, fall), 0.0, None)  # (bands, bins)
    empty = fb.max(axis=1) == 0
    if empty.any():  # narrower than a bin: take the bin nearest the band's centre
        nearest = np.abs(bins[None, :] - mid[empty]).argmin(axis=1)
        fb[np.flatnonzero(empty), nearest] = 1.0
    return fb.astype(np.float32)


def frame_sizes(rate: int, col_hz: int = COL_HZ) -> tuple[int, int]:
    """(n_fft, hop) in samples: ``hop`` = rate / col_hz; ``n_fft`` the power of two >= hop
    (1024 and 640 at 16 kHz: a 64 ms frame every 40 ms)."""
    hop = max(1, round(rate / col_hz))
    return 1 << max(4, math.ceil(math.log2(hop))), hop


def quantise_db(db: np.ndarray) -> np.ndarray:
    """dB -> uint8 over [DB_FLOOR, DB_CEIL] (clipped at both ends)."""
    q = (db - DB_FLOOR) * (255.0 / (DB_CEIL - DB_FLOOR))
    return np.clip(np.rint(q), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def mel_transform(rate: int, bands: int = BANDS, col_hz: int = COL_HZ) -> MelTransform:
    """The shared transform of one (rate, bands, col_hz): every stream at that rate uses it."""
    return MelTransform(rate, bands, col_hz)


class MelTransform:
    """Frames -> quantised log-mel columns for one rate: window, filterbank, normalisation."""

    def __init__(self, rate: int, bands: int = BANDS, col_hz: int = COL_HZ) -> None:
        self.rate, self.bands = rate, bands
        self.n_fft, self.hop = frame_sizes(rate, col_hz)
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
        self.fb = scipy.sparse.csr_array(mel_filterbank(rate, self.n_fft, bands))  # (bands, bins), ~2 nnz per bin
        # |X|^2 of a full-scale sine on a bin is (sum(window) / 2)^2: dividing by it makes that 0 dB
        self.norm = float(4.0 / float(self.window.sum()) ** 2)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(columns, n_fft) float32 samples -> (columns, bands) uint8."""
        if not len(frames):
            return np.empty((0, self.bands), np.uint8)
        spec = scipy.fft.rfft(frames * self.window, axis=1)  # (columns, bins) complex64; numpy's is ~5x slower
        power = spec.real**2 + spec.imag**2
        mel = (self.fb @ power.T).T  # (bands, bins) @ (bins, columns) -> (columns, bands)
        return quantise_db(10.0 * np.log10(mel * self.norm + 1e-13))


class MelColumns:
    """One stream's spectrogram state: the samples not yet consumed by a column.

    ``push`` mono float32 samples (full scale 1.0) as they arrive; ``frames`` returns every
    complete frame (to be transformed with the others at this rate) and keeps the overlap
    for the next one; ``take`` is ``frames`` transformed, for one stream on its own.
    """

    def __init__(self, rate: int, bands: int = BANDS, col_hz: int = COL_HZ) -> None:
        self.transform = mel_transform(rate, bands, col_hz)
        self.rate, self.bands = rate, bands
        self.n_fft, self.hop = self.transform.n_fft, self.transform.hop
        self.capacity = self.n_fft + int(MAX_PENDING_S * rate)
        self.buf = np.zeros(self.capacity, np.float32)
        self.fill = 0
        self.dropped = 0  # samples dropped because nobody took columns in time

    def reset(self) -> None:
        """Forget held samples (the stream restarted or lost too much to draw as silence)."""
        self.fill = 0

    def push(self, x: np.ndarray) -> None:
        """Append mono samples, shape (n,), float32."""
        n = len(x)
        if n >= self.capacity:
            self.dropped += self.fill + n - self.capacity
            self.buf[:] = x[-self.capacity:]
            self.fill = self.capacity
            return
        over = self.fill + n - self.capacity
        if over > 0:  # keep the newest: a view that fell behind shows now, not the past
            self.buf[: self.fill - over] = self.buf[over : self.fill]
            self.fill -= over
            self.dropped += over
        self.buf[self.fill : self.fill + n] = x
        self.fill += n

    def push_silence(self, n: int) -> None:
        """Audio known to be lost: up to MAX_SILENCE_FILL_S is drawn as silence, more restarts."""
        if n > MAX_SILENCE_FILL_S * self.rate:
            self.reset()
        elif n > 0:
            self.push(np.zeros(n, np.float32))

    def frames(self) -> np.ndarray:
        """Every complete frame, shape (columns, n_fft), float32 (a copy); their hops are consumed."""
        if self.fill < self.n_fft:
            return np.empty((0, self.n_fft), np.float32)
        cols = (self.fill - self.n_fft) // self.hop + 1
        buf, n, hop = self.buf, self.n_fft, self.hop
        out = np.empty((cols, n), np.float32)
        for k in range(cols):  # a few frames per call: row copies are cheaper than strides or np.stack
            out[k] = buf[k * hop : k * hop + n]
        used = cols * hop
        keep = self.fill - used
        self.buf[:keep] = self.buf[used : self.fill]
        self.fill = keep
        return out

    def take(self) -> np.ndarray:
        """Every complete column, shape (columns, bands), uint8."""
        return self.transform(self.frames())


def levels_dbfs(chunks: list[np.ndarray]) -> list[tuple[float, float]]:
    """(rms_dbfs, peak_dbfs) of each chunk (any shape: all channels), float32 at full scale 1.0,
    rounded to 0.1 dB; LEVEL_FLOOR_DBFS for silence, as the level model reports it. All chunks in
    one pass (one concatenate and two reduceat) instead of a few numpy calls per stream."""
    flats = [c.reshape(-1) for c in chunks]
    sizes = np.array([len(f) for f in flats])
    if not len(flats) or not sizes.all():
        return [level_dbfs(f) for f in flats]
    x = np.concatenate(flats) if len(flats) > 1 else flats[0]
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    sumsq = np.add.reduceat(np.square(x), starts, dtype=np.float64)  # squares in float32, sums in float64
    peaks = np.maximum.reduceat(np.abs(x), starts)
    return [(_dbfs(math.sqrt(s / n)), _dbfs(float(p))) for s, n, p in zip(sumsq.tolist(), sizes.tolist(), peaks.tolist())]


def level_dbfs(x: np.ndarray) -> tuple[float, float]:
    """(rms_dbfs, peak_dbfs) of one chunk (see levels_dbfs)."""
    flat = x.reshape(-1)
    if not flat.size:
        return LEVEL_FLOOR_DBFS, LEVEL_FLOOR_DBFS
    rms = math.sqrt(float(np.dot(flat.astype(np.float64), flat)) / flat.size)
    return _dbfs(rms), _dbfs(float(np.abs(flat).max()))


def _dbfs(amplitude: float) -> float:
    if amplitude <= 0 or not math.isfinite(amplitude):
        return LEVEL_FLOOR_DBFS
    return round(max(20.0 * math.log10(amplitude), LEVEL_FLOOR_DBFS), 1)
