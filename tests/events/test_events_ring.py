"""The per-stream ring: any chunking reads back the same samples, audio times map to the exact
sample classify stamped, gaps are zero-filled and counted, and samples keep their values."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from common.wire.codec import decode, encode_audio
from common.wire.messages import AudioHeader, Layout, SampleFormat
from common.wire.topics import Kind
from events.ring import AudioRing, frames_of, kind_of

NS = 1_000_000_000
F32 = kind_of(SampleFormat.F32)


def chunks_of(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, i, k = [], 0, 0
    while i < n:
        m = min(sizes[k % len(sizes)], n - i)
        out.append((i, m))
        i, k = i + m, k + 1
    return out


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8).filter(lambda s: sum(s) >= 100),
       capacity=st.integers(50, 3000),
       first=st.integers(0, 10_000))
def test_any_chunking_reads_back_the_newest_samples_exactly(sizes, capacity, first) -> None:
    rng = np.random.default_rng(capacity)
    x = rng.standard_normal((4000, 2)).astype(np.float32)
    ring = AudioRing(16000, 2, F32, capacity)
    for i, m in chunks_of(len(x), sizes):
        ring.push(x[i : i + m], first + i, 10**18 + (first + i) * NS // 16000)
        assert ring.end == first + i + m and ring.end - ring.start == min(capacity, i + m)
        lo = ring.start + (ring.end - ring.start) // 3
        assert np.array_equal(ring.read(lo, ring.end), x[lo - first : i + m])
    assert ring.gap_samples(ring.start, ring.end) == 0
    assert ring.read(ring.start - 100, ring.start).shape == (0, 2)  # what fell out is gone, not made up


@settings(max_examples=40, deadline=None)
@given(rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]), sizes=st.lists(st.integers(1, 2000), min_size=1,
                                                                                   max_size=5).filter(
                                                                                       lambda s: sum(s) >= 200),
       t0=st.integers(10**18, 2 * 10**18))
def test_an_audio_time_maps_to_the_sample_classify_stamped_with_it(rate, sizes, t0) -> None:
    """classify stamps sample i of a chunk anchored at (index, t) with t + (i - index) * 1e9 // rate."""
    ring = AudioRing(rate, 1, F32, 100_000)
    anchors = []
    drift = 0
    for i, m in chunks_of(20_000, sizes):
        t = t0 + i * NS // rate + drift
        drift += 7  # each chunk's capture time is its own (a device clock), not an extrapolation
        ring.push(np.zeros((m, 1), np.float32), i, t)
        anchors.append((i, t, m))
    for index, t, m in anchors[-6:]:
        for j in sorted({0, m // 2, m - 1}):
            stamp = t + j * NS // rate
            assert ring.index_at(stamp) == index + j
            assert ring.time_at(index + j) == stamp


def test_a_jump_is_zero_filled_and_counted_lost_samples_are_counted_and_a_jump_back_resets() -> None:
    ring = AudioRing(1000, 1, F32, 10_000)
    one = np.ones((100, 1), np.float32)
    ring.push(one, 0, 0)
    ring.push(one, 150, 150 * NS // 1000)  # 50 samples never arrived
    assert ring.end == 250 and np.array_equal(ring.read(100, 150), np.zeros((50, 1), np.float32))
    assert ring.gap_samples(0, 250) == 50 and ring.gap_samples(120, 130) == 10 and ring.gap_samples(150, 250) == 0
    ring.push(one, 250, 250 * NS // 1000, lost=30)  # a converter bridged 30 lost samples with silence
    assert ring.gap_samples(0, 350) == 80 and ring.gap_samples(220, 250) == 30
    ring.push(one, 40, 0)  # a publisher restarted within the epoch: everything before is forgotten
    assert (ring.start, ring.end, ring.gap_samples(0, 10**6)) == (40, 140, 0)


def test_a_gap_longer_than_the_ring_starts_it_afresh() -> None:
    ring = AudioRing(1000, 1, F32, 500)
    ring.push(np.ones((300, 1), np.float32), 0, 0)
    ring.push(np.full((100, 1), 2, np.float32), 10_000, 10 * NS)
    assert (ring.start, ring.end) == (10_000, 10_100) and np.all(ring.read(10_000, 10_100) == 2)


def _msg(fmt: SampleFormat, payload: np.ndarray, layout: Layout = Layout.INTERLEAVED, channels: int = 1):
    samples = payload.shape[0] if layout is Layout.INTERLEAVED else payload.shape[-1]
    if fmt is SampleFormat.S24:
        samples = payload.shape[0]
    h = AudioHeader(stream="s", epoch=1, seq=0, t_capture_ns=0, rate=16000, channels=channels, format=fmt,
                    layout=layout, samples=samples, offset=0)
    return decode(encode_audio(Kind.RAW, h, payload.tobytes()))


def test_samples_keep_their_values_in_the_ring_s_dtype() -> None:
    v = np.array([-8388608, -1, 0, 1, 8388607], np.int32)
    packed = np.stack([(v >> s) & 0xFF for s in (0, 8, 16)], axis=1).astype(np.uint8)  # s24 little-endian
    got = frames_of(_msg(SampleFormat.S24, packed))
    assert got.dtype == np.int32 and np.array_equal(got[:, 0] >> 8, v)
    got = frames_of(_msg(SampleFormat.U8, np.array([0, 128, 255], np.uint8)))
    assert np.array_equal(got[:, 0], np.array([-128, 0, 127], np.int16) << 8)
    got = frames_of(_msg(SampleFormat.S8, np.array([-128, 0, 127], np.int8)))
    assert np.array_equal(got[:, 0], np.array([-128, 0, 127], np.int16) << 8)
    planar = np.arange(6, dtype=np.float32).reshape(2, 3)  # (channels, samples)
    got = frames_of(_msg(SampleFormat.F32, planar, Layout.PLANAR, channels=2))
    assert np.array_equal(got, planar.T)
