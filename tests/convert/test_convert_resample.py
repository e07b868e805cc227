"""Chunk invariance: any chunking of a signal resamples bit-identically to the whole signal at once."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from convert.resample import QUALITIES, StreamResampler, rate_supported
from convert.stream import ChunkBuffer

RATES = [8000, 11025, 16000, 22050, 44100, 48000, 96000]


def chunk_sizes(draw, total: int) -> list[int]:
    """A random chunking of ``total`` samples: cut points, repeated cuts give zero-length chunks."""
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=60)))
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


def resample_in_chunks(r: StreamResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``x`` through ``r`` in chunks of ``sizes`` samples, then the flushed tail, concatenated."""
    pieces, i = [], 0
    for size in sizes:
        pieces.append(r.process(np.ascontiguousarray(x[i : i + size])))
        i += size
    pieces.append(r.flush())
    return np.concatenate(pieces)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_chunkings_are_bit_identical_to_whole_signal(data) -> None:
    in_rate = data.draw(st.sampled_from(RATES))
    quality = data.draw(st.sampled_from(QUALITIES))
    channels = data.draw(st.sampled_from([1, 2]))
    n = data.draw(st.integers(1, 12_000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((n, channels)) * 0.2).astype(np.float32)
    if channels == 1:
        x = x[:, 0].copy()
    if in_rate == 16000:
        whole = x
    elif quality == "LD":  # its own filter: the reference is its whole-signal output, same length as soxr's
        whole = StreamResampler(in_rate, 16000, channels, "LD").process(x, last=True)
        assert len(whole) == len(soxr.resample(x, in_rate, 16000))
    else:
        whole = soxr.resample(x, in_rate, 16000, quality=quality)

    r = StreamResampler(in_rate, 16000, channels, quality)
    got = resample_in_chunks(r, x, chunk_sizes(data.draw, n))
    assert got.shape == whole.shape
    np.testing.assert_array_equal(got, whole)
    assert r.samples_in == n and r.samples_out == len(whole)


def test_reset_starts_a_new_signal() -> None:
    x = np.random.default_rng(1).standard_normal(4800).astype(np.float32)
    r = StreamResampler(48000, 16000, 1)
    a = np.concatenate([r.process(x), r.flush()])
    r.reset()
    r.process(x[:1000])  # half a signal, then reset: nothing of it may leak into the next one
    r.reset()
    b = np.concatenate([r.process(x), r.flush()])
    np.testing.assert_array_equal(a, b)


def test_equal_rates_pass_through_untouched() -> None:
    x = np.arange(100, dtype=np.float32)
    r = StreamResampler(16000, 16000, 1)
    assert r.process(x) is x and r.flush().size == 0


def test_rate_bounds() -> None:
    assert rate_supported(48000, 16000) and rate_supported(8000, 16000)
    assert not rate_supported(1, 16000) and not rate_supported(768_001, 16000)
    assert not rate_supported(1000, 96000)  # 96x: beyond MAX_RATIO
    with pytest.raises(ValueError):
        StreamResampler(48000, 16000, 1, "best")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_chunk_buffer_rechunks_without_losing_or_reordering(data) -> None:
    channels = data.draw(st.integers(1, 3))
    frame = data.draw(st.integers(1, 700))
    total = data.draw(st.integers(0, 5000))
    x = np.arange(total * channels, dtype=np.float32).reshape(total, channels)
    fb = ChunkBuffer(channels, frame)
    out, i = [], 0
    for size in chunk_sizes(data.draw, total):
        piece = x[i : i + size]
        out += fb.push(piece[:, 0].copy() if channels == 1 else np.ascontiguousarray(piece))
        i += size
    assert all(f.shape == (channels, frame) and f.flags.c_contiguous for f in out)
    rest = fb.take_rest()
    got = np.concatenate(out + ([rest] if rest is not None else []), axis=1) if total else np.zeros((channels, 0))
    np.testing.assert_array_equal(got, x.T)
    assert len(out) == total // frame


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_low_delay_random_chunkings_are_bit_identical_to_whole_signal(data) -> None:
    """LD alone (the test above draws it one time in six): its prepad/phase bookkeeping at every ratio."""
    in_rate = data.draw(st.sampled_from([r for r in RATES if r != 16000] + [32000, 24000, 12000]))
    channels = data.draw(st.sampled_from([1, 2]))
    n = data.draw(st.integers(0, 6000))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = (rng.standard_normal((n, channels)) * 0.2).astype(np.float32)
    if channels == 1:
        x = x[:, 0].copy()
    whole = StreamResampler(in_rate, 16000, channels, "LD").process(x, last=True)
    r = StreamResampler(in_rate, 16000, channels, "LD")
    got = resample_in_chunks(r, x, chunk_sizes(data.draw, n))
    assert got.dtype == np.float32 and got.shape == whole.shape
    np.testing.assert_array_equal(got, whole)
