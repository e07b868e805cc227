"""Raw PCM bytes -> float32 samples, scaled by full scale (never by the chunk's peak).

Full scale is fixed per format, as libsndfile, PortAudio and ALSA do it:

    s8  x / 2^7          u8  (x - 128) / 2^7       s16 x / 2^15
    s24 x / 2^23 (packed little-endian 3 bytes)    s32 x / 2^31
    f32 as is            f64 rounded to float32

so -32768 (s16) is exactly -1.0 and the largest positive value is 1 - 2^-15. Integer
formats are converted to float32 first and then multiplied by a power of two, which is
exact, so every output is the correctly rounded float32 of ``x / full_scale`` (s32 is the
only format with more bits than float32 has; it rounds once, to nearest).

Stored layouts: ``interleaved`` is (samples, channels), ``planar`` is (channels, samples).
:func:`to_float32` returns (channels, samples) C-contiguous for library users and tests;
:func:`select_float32` is the stage's hot path: it downmixes or selects channels *before*
anything else touches the samples and returns what soxr wants, (samples,) or (samples, K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Format -> (numpy dtype of one stored sample, bytes per sample); s24 is read as bytes.
SAMPLE_FORMATS: dict[str, tuple[str, int]] = {
    "s8": ("i1", 1), "u8": ("u1", 1), "s16": ("<i2", 2), "s24": ("V3", 3),
    "s32": ("<i4", 4), "f32": ("<f4", 4), "f64": ("<f8", 8),
}
LAYOUTS = ("interleaved", "planar")

# Format -> (full scale divisor, offset subtracted before scaling); floats have none.
FULL_SCALE: dict[str, int] = {"s8": 2**7, "u8": 2**7, "s16": 2**15, "s24": 2**23, "s32": 2**31}
_OFFSET: dict[str, int] = {"u8": 128}
INT_FORMATS = frozenset(FULL_SCALE)
FLOAT_FORMATS = frozenset({"f32", "f64"})
# Formats whose sum over up to 256 channels is still exact in float32 (24-bit mantissa).
_SUM_EXACT_F32 = frozenset({"s8", "u8", "s16"})


class FormatError(ValueError):
    """Samples that cannot be interpreted as stated. ``reason`` is a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ChannelMap:
    """Which output channels to make: ``mode`` is "keep", "mono" or "select" (then ``indices``, 0-based)."""

    mode: str = "mono"
    indices: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "ChannelMap":
        """'keep' | 'mono' | 'N,M,...' (0-based input channel indices, in output order)."""
        t = text.strip().lower()
        if t in ("keep", "mono"):
            return cls(t)
        try:
            idx = tuple(int(x) for x in t.split(","))
        except ValueError:
            raise ValueError(f"channels must be keep, mono or 0-based indices like 0,1; got {text!r}") from None
        if not idx or min(idx) < 0:
            raise ValueError(f"channel indices must be >= 0; got {text!r}")
        return cls("select", idx)

    def out_channels(self, in_channels: int) -> int:
        """Number of output channels for an input with ``in_channels`` channels."""
        if self.mode == "keep":
            return in_channels
        if self.mode == "mono":
            return 1
        return len(self.indices)

    def check(self, in_channels: int) -> None:
        """Raise FormatError if this map cannot apply to ``in_channels`` channels."""
        if self.mode == "select" and max(self.indices) >= in_channels:
            raise FormatError(
                "channel_select", f"channel {max(self.indices)} selected but the stream has {in_channels}"
            )


def stored_samples(payload: bytes | memoryview, fmt: str, channels: int, samples: int, layout: str) -> np.ndarray:
    """A zero-copy view of the payload in its stored layout: (samples, channels) or (channels, samples).

    s24 is widened to int32 holding ``x * 256`` (bytes placed in the top three bytes), so it
    shares the s32 scaling path and keeps its sign; this is the one format that copies.
    """
    if fmt not in SAMPLE_FORMATS:
        raise FormatError("bad_format", f"unknown sample format {fmt!r}")
    if layout not in LAYOUTS:
        raise FormatError("bad_layout", f"unknown layout {layout!r}")
    if channels < 1 or samples < 0:
        raise FormatError("bad_channels", f"channels={channels} samples={samples}")
    dtype, width = SAMPLE_FORMATS[fmt]
    if len(payload) != samples * channels * width:
        raise FormatError(
            "payload_length", f"{len(payload)} bytes != {samples} samples x {channels} ch x {width} B"
        )
    if fmt == "s24":
        packed = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((packed.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = packed  # little-endian: the low byte stays 0, value becomes x << 8
        flat = wide.view("<i4").reshape(-1)
    else:
        flat = np.frombuffer(payload, dtype=dtype)
    if layout == "interleaved":
        return flat.reshape(samples, channels)
    return flat.reshape(channels, samples)


def _scale(fmt: str) -> float:
    """Multiplier taking stored values to [-1, 1); a power of two for integer formats."""
    if fmt == "s24":
        return 2.0**-31  # stored as x << 8
    if fmt in FULL_SCALE:
        return 1.0 / FULL_SCALE[fmt]
    return 1.0


def _one_channel(x: np.ndarray, fmt: str, gain: float) -> np.ndarray:
    """One stored channel (1-D, any stride) -> new float32 array (n,), full-scale scaled."""
    y = x.astype(np.float32)  # exact for <= 24-bit ints; s32 rounds once here
    off = _OFFSET.get(fmt)
    if off:
        y -= np.float32(off)  # exact: small integers
    s = _scale(fmt) * gain
    if s != 1.0:
        y *= np.float32(s)  # exact when s is a power of two (gain 0 dB)
    return y


def _mean(x: np.ndarray, axis: int, fmt: str, gain: float) -> np.ndarray:
    """Mean over channels of a stored block -> float32 (samples,)."""
    n = x.shape[axis]
    exact32 = fmt in _SUM_EXACT_F32 and n <= 256
    # One contiguous cast, then column adds: casting inside a strided add, or numpy's reduce
    # over a short inner axis, costs 2-8x more.
    y = x.astype(np.float32 if exact32 else np.float64)
    acc = y[:, 0] + y[:, 1] if axis == 1 else y[0] + y[1]
    for c in range(2, n):
        acc += y[:, c] if axis == 1 else y[c]
    off = _OFFSET.get(fmt)
    if off:
        acc -= off * n
    s = _scale(fmt) * gain / n
    if exact32:
        acc *= np.float32(s)  # exact for power-of-two channel counts
        return acc
    return (acc * s).astype(np.float32)


def select_float32(
    stored: np.ndarray, fmt: str, layout: str, cmap: ChannelMap, gain: float = 1.0
) -> np.ndarray:
    """Hot path: stored samples -> float32 ready for the resampler, channels mapped first.

    Returns (samples,) when one output channel remains, else (samples, K) C-contiguous
    (the layout soxr takes). ``gain`` is linear.
    """
    ch_axis = 1 if layout == "interleaved" else 0
    n_in = stored.shape[ch_axis]
    cmap.check(n_in)
    if cmap.mode == "mono" and n_in > 1:
        return _mean(stored, ch_axis, fmt, gain)
    if cmap.mode == "mono" or cmap.out_channels(n_in) == 1:
        i = 0 if cmap.mode != "select" else cmap.indices[0]
        col = stored[:, i] if ch_axis == 1 else stored[i]
        return _one_channel(col, fmt, gain)
    idx = list(cmap.indices) if cmap.mode == "select" else None
    if ch_axis == 1:
        block = stored if idx is None else stored[:, idx]  # (samples, K)
    else:
        block = (stored if idx is None else stored[idx]).T  # (channels, samples) -> (samples, K) view
    y = np.array(block, dtype=np.float32, order="C")  # always a new, writable array
    off = _OFFSET.get(fmt)
    if off:
        y -= np.float32(off)
    s = _scale(fmt) * gain
    if s != 1.0:
        y *= np.float32(s)
    return y


def select_float32_rows(payloads: Sequence[bytes | memoryview], fmt: str, channels: int, samples: int,
                        cmap: ChannelMap, gain: float = 1.0) -> np.ndarray:
    """:func:`select_float32` of many interleaved payloads of one shape at once (one numpy pass).

    Every payload holds ``samples`` sample frames of ``channels`` channels in ``fmt``. Returns
    (len(payloads), samples) or (len(payloads), samples, K); row i is, value for value, what
    :func:`select_float32` gives for payload i: every step works sample by sample, so
    converting the concatenation changes no value. (A one-channel payload is the same bytes in
    either layout.)
    """
    stored = stored_samples(b"".join(payloads), fmt, channels, len(payloads) * samples, "interleaved")
    y = select_float32(stored, fmt, "interleaved", cmap, gain)
    return y.reshape((len(payloads), samples) + y.shape[1:])


def to_float32(payload: bytes | memoryview, fmt: str, channels: int, samples: int, layout: str) -> np.ndarray:
    """Decode a raw payload to float32 shaped (channels, samples), C-contiguous, full-scale scaled.

    The correct version of the seed article's ``recording / max(abs(recording))``:
    fixed scaling, samples on the last axis.
    """
    stored = stored_samples(payload, fmt, channels, samples, layout)
    planar = stored.T if layout == "interleaved" else stored  # (channels, samples) view
    y = np.array(planar, dtype=np.float32, order="C")
    off = _OFFSET.get(fmt)
    if off:
        y -= np.float32(off)
    s = _scale(fmt)
    if s != 1.0:
        y *= np.float32(s)
    return y


def from_float32(x: np.ndarray, fmt: str, layout: str = "planar") -> bytes:
    """Inverse of :func:`to_float32` for values on the format's grid: (channels, samples) float -> bytes.

    Values are rounded to the nearest step and clipped to the format's range. Used by
    tests and tools that synthesise raw samples.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected (channels, samples), got shape {x.shape}")
    arr = x.T if layout == "interleaved" else x  # stored order
    if fmt in FLOAT_FORMATS:
        return np.ascontiguousarray(arr, dtype=SAMPLE_FORMATS[fmt][0]).tobytes()
    fs = FULL_SCALE[fmt]
    q = np.clip(np.rint(arr * fs), -fs, fs - 1).astype(np.int64) + _OFFSET.get(fmt, 0)
    if fmt == "s24":
        b = np.ascontiguousarray(q, dtype="<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        return np.ascontiguousarray(b).tobytes()
    return np.ascontiguousarray(q, dtype=SAMPLE_FORMATS[fmt][0]).tobytes()
