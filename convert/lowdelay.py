"""Low-delay streaming resampling: a polyphase Kaiser FIR applied with ``scipy.signal.upfirdn``.

soxr's streaming mode works in DFT blocks and holds back tens of milliseconds of audio
between calls (HQ, 48 kHz -> 16 kHz in 20 ms chunks: 21 ms on average). This resampler
holds back only its filter's look-ahead: output sample k is emitted as soon as the input
reaching ``LOOKAHEAD`` past its time has arrived (48 kHz -> 16 kHz: 61 input samples,
1.27 ms).

Model: the signal is upsampled by ``up``, filtered by a linear-phase FIR ``h`` (odd length,
centre ``c``) and downsampled by ``down`` (``up/down = out_rate/in_rate`` reduced by gcd).
Counting in samples at the upsampled rate ``in_rate * up``, input sample j sits at j * up
and output sample k at k * down, and

    y[k] = sum_j h[k * down + c - j * up] * x[j]

so the filter's group delay c is compensated: y[k] is the signal at k / out_rate seconds
from the first input sample, like soxr's output. Samples before the first are zeros.

Each call runs ``upfirdn`` on the input history still needed plus the new chunk, with
``h`` prepadded by p zeros so that one of upfirdn's outputs lands exactly on each global
output index (see :meth:`LowDelayResampler.process`). Every output is the same sum in the
same order (ascending input index) whatever the chunking, so the result is bit-identical
to resampling the whole signal in one call.
"""

from __future__ import annotations

import functools
from math import gcd
from typing import NamedTuple

import numpy as np
from scipy.signal import firwin, kaiserord, upfirdn

ATTEN_DB = 80.0  # Kaiser design: stopband attenuation, and passband ripple 10**(-80/20) = 1e-4
# Transition band as a fraction of the lower rate's Nyquist frequency, centred on it:
# 7-9 kHz around 8 kHz for 16 kHz output. Content above 9 kHz (which would fold onto
# 0-7 kHz) is stopped; 8-9 kHz folds onto 7-8 kHz, outside the passband.
TRANSITION = 0.25
MAX_TAPS = 1 << 18  # at the upsampled rate; ratios that need more (e.g. 44099 Hz -> 16 kHz) are refused


class LowDelayFilter(NamedTuple):
    """A polyphase resampling filter for one (in_rate, out_rate) pair."""

    up: int  # out_rate / gcd
    down: int  # in_rate / gcd
    h: np.ndarray  # float32 (taps,), at in_rate * up Hz, DC gain ``up``
    lookahead: int  # c = (taps - 1) / 2, samples at in_rate * up Hz


def _design_params(in_rate: int, out_rate: int) -> tuple[int, int, int, float]:
    """(up, down, taps, kaiser beta) for ``in_rate`` Hz -> ``out_rate`` Hz (cheap: no filter built)."""
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    nyquist_up = in_rate * up / 2  # Hz, of the upsampled rate
    taps, beta = kaiserord(ATTEN_DB, TRANSITION * min(in_rate, out_rate) / 2 / nyquist_up)
    return up, down, taps | 1, beta  # odd: the centre falls on a sample, look-ahead is whole


def supported(in_rate: int, out_rate: int) -> bool:
    """True if the filter for this pair stays within MAX_TAPS (its memory and per-call cost)."""
    return _design_params(in_rate, out_rate)[2] <= MAX_TAPS


@functools.lru_cache(maxsize=64)
def design(in_rate: int, out_rate: int) -> LowDelayFilter:
    """The filter for ``in_rate`` Hz -> ``out_rate`` Hz, designed once and shared by all streams.

    Kaiser-windowed sinc (``firwin``) cut off at the lower rate's Nyquist frequency, as
    ``scipy.signal.resample_poly`` does, with a length set by ``kaiserord`` for ATTEN_DB.
    """
    up, down, taps, beta = _design_params(in_rate, out_rate)
    if taps > MAX_TAPS:
        raise ValueError(f"LD resampling {in_rate} Hz -> {out_rate} Hz needs {taps} taps (> {MAX_TAPS})")
    h = firwin(taps, min(in_rate, out_rate) / 2, window=("kaiser", beta), fs=in_rate * up) * up
    h = h.astype(np.float32)  # float32 taps keep upfirdn in float32: no copy of the input, -130 dB rounding
    h.flags.writeable = False  # shared by every stream
    return LowDelayFilter(up, down, h, (taps - 1) // 2)


class LowDelayResampler:
    """Streaming resampler holding back only the filter look-ahead; float32 (n,) or (n, channels).

    ``process`` returns every output sample whose input window is complete. The history
    kept is the input from the first sample the next output needs (at most about 2 c / up
    input samples).
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int) -> None:
        self.in_rate, self.out_rate, self.channels = in_rate, out_rate, channels
        self.filter = design(in_rate, out_rate)
        self._phases = [self.filter.h[p :: self.filter.down] for p in range(self.filter.down)]
        self.reset()

    def reset(self) -> None:
        """Forget all input: the next sample is sample 0 of a new signal."""
        shape = (0,) if self.channels == 1 else (0, self.channels)
        self._hist = np.zeros(shape, dtype=np.float32)  # input samples from index _hist_start on
        self._hist_start = 0
        self._n_in = 0  # input samples seen
        self._n_out = 0  # output samples emitted

    @property
    def lookahead_s(self) -> float:
        """Audio held back at most between calls, seconds: the filter's look-ahead."""
        f = self.filter
        return f.lookahead / (self.in_rate * f.up)

    def total_out(self, n_in: int) -> int:
        """Output length for a whole signal of ``n_in`` samples: round(n_in * out / in), halves up, as soxr."""
        return (2 * n_in * self.out_rate + self.in_rate) // (2 * self.in_rate)

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk (float32 (n,) or (n, channels)); ``last=True`` flushes the tail.

        Returns float32 of the same rank: the outputs k_0 ... K-1 that are complete, where
        k_0 is the count emitted so far and K the largest count with (K-1) * down + c within
        the input seen (all of ``total_out`` samples when ``last``).
        """
        up, down, h, c = self.filter
        self._n_in += x.shape[0]
        k0 = self._n_out
        if last:
            k_end = self.total_out(self._n_in)  # samples past the end are zeros (upfirdn pads them)
        else:
            # output k is complete once input sample floor((k * down + c) / up) has arrived
            k_end = max(k0, (self._n_in * up - 1 - c) // down + 1)
        buf = np.concatenate((self._hist, x)) if self._hist.shape[0] else x
        if k_end <= k0:
            y = np.zeros((0, *buf.shape[1:]), np.float32)
        else:
            s = self._hist_start
            if not last:  # only the input up to the last complete output's window
                buf_used = buf[: ((k_end - 1) * down + c) // up + 1 - s]
            else:
                buf_used = buf
            # upfirdn's output m is at m * down - p + s * up on the global upsampled grid (h
            # prepadded by p zeros); p makes c + p - s * up a multiple of down, so global output
            # k is upfirdn's m = k + (c + p - s * up) / down.
            if up == 1:
                y = self._decimate(buf_used, k0, k_end)
            else:
                p = (s * up - c) % down
                hp = h if p == 0 else np.concatenate((np.zeros(p, np.float32), h))
                m0 = k0 + (c + p - s * up) // down
                y = upfirdn(hp, buf_used, up, down, axis=0)[m0 : m0 + k_end - k0]
            assert y.shape[0] == k_end - k0
        # keep the input from the first sample output k_end needs: ceil((k_end * down - c) / up)
        start = max(self._hist_start, -((c - k_end * down) // up))
        self._hist = buf[start - self._hist_start :].copy()  # a copy: ``x`` is the caller's (and short)
        self._hist_start = start
        self._n_out = k_end
        return y

    def _decimate(self, buf: np.ndarray, k0: int, k_end: int) -> np.ndarray:
        """Outputs k0 .. k_end-1 when ``up == 1`` (48 -> 16 kHz and the like), phase by phase.

        y[k] = sum_q h[p + q*down] * x[(k - q)*down + c - p] summed over the phases p: one
        short ``np.convolve`` per phase at the output rate, instead of upfirdn's per-call
        overhead and its outputs that are thrown away (~3x less CPU at 20 ms chunks). Each
        output is the same dot products in the same order whatever the chunking.
        """
        _, down, h, c = self.filter
        s, n = self._hist_start, k_end - k0
        taps = h.shape[0]
        # input indices (relative to buf) from the oldest sample output k0 needs to the newest k_end-1 needs
        lo, hi = k0 * down + c - (taps - 1) - s, (k_end - 1) * down + c - s + 1
        pad_lo, pad_hi = max(0, -lo), max(0, hi - buf.shape[0])  # zeros before the signal and after its end
        if pad_lo or pad_hi:
            width = ((pad_lo, pad_hi),) + ((0, 0),) * (buf.ndim - 1)
            buf = np.pad(buf[max(lo, 0) : min(hi, buf.shape[0])], width)
        else:
            buf = buf[lo:hi]
        y = np.zeros((n, *buf.shape[1:]), np.float32)
        for p in range(min(down, taps)):
            hp = self._phases[p]  # h[p], h[p + down], ...
            # x[k*down + c - p - q*down] for q = len(hp)-1 .. 0: every down-th sample, from the oldest
            first = (taps - 1) - p - (len(hp) - 1) * down
            xp = buf[first : first + (n + len(hp) - 2) * down + 1 : down]
            if buf.ndim == 1:
                y += np.convolve(xp, hp, "valid")
            else:
                for ch in range(buf.shape[1]):
                    y[:, ch] += np.convolve(np.ascontiguousarray(xp[:, ch]), hp, "valid")
        return y
