"""Exact full-scale scaling for every sample format and layout (convert.formats)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convert.formats import FULL_SCALE, ChannelMap, FormatError, from_float32, select_float32, stored_samples, to_float32

INT_RANGES = {"s8": (-(2**7), 2**7 - 1), "u8": (0, 255), "s16": (-(2**15), 2**15 - 1),
              "s24": (-(2**23), 2**23 - 1), "s32": (-(2**31), 2**31 - 1)}
OFFSET = {"u8": 128}


def pack_ints(values: np.ndarray, fmt: str) -> bytes:
    """Stored bytes of integer samples (already in stored order)."""
    if fmt == "s24":
        return np.ascontiguousarray(values.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]).tobytes()
    dtype = {"s8": "i1", "u8": "u1", "s16": "<i2", "s32": "<i4"}[fmt]
    return values.astype(dtype).tobytes()


def expected_float(values: np.ndarray, fmt: str) -> np.ndarray:
    """The correctly rounded float32 of (x - offset) / full_scale, computed in float64 (exact there)."""
    return ((values.astype(np.float64) - OFFSET.get(fmt, 0)) / FULL_SCALE[fmt]).astype(np.float32)


@st.composite
def int_blocks(draw, fmt: str):
    lo, hi = INT_RANGES[fmt]
    channels = draw(st.integers(1, 5))
    frames = draw(st.integers(1, 41))  # odd counts included
    extremes = st.sampled_from([lo, hi, lo + 1, hi - 1, OFFSET.get(fmt, 0)])
    vals = draw(st.lists(st.one_of(st.integers(lo, hi), extremes), min_size=channels * frames,
                         max_size=channels * frames))
    return np.array(vals, dtype=np.int64).reshape(channels, frames)


@pytest.mark.parametrize("fmt", sorted(INT_RANGES))
@pytest.mark.parametrize("layout", ["interleaved", "planar"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_int_formats_scale_exactly_by_full_scale_and_round_trip(fmt, layout, data) -> None:
    planar = data.draw(int_blocks(fmt))  # (channels, frames) integers
    stored = planar.T if layout == "interleaved" else planar
    payload = pack_ints(np.ascontiguousarray(stored), fmt)
    y = to_float32(payload, fmt, planar.shape[0], planar.shape[1], layout)
    assert y.dtype == np.float32 and y.shape == planar.shape and y.flags.c_contiguous
    np.testing.assert_array_equal(y, expected_float(planar, fmt))
    back = from_float32(y, fmt, layout)
    if fmt == "s32":  # 32-bit ints do not fit float32's 24-bit mantissa: back within half a float32 step
        diff = np.frombuffer(back, "<i4").astype(np.int64) - np.frombuffer(payload, "<i4")
        assert np.abs(diff).max() <= 128
    else:
        assert back == payload


@pytest.mark.parametrize(
    "fmt,value,expected",
    [
        ("s16", -32768, -1.0), ("s16", 32767, 1 - 2**-15), ("s16", 1, 2**-15), ("s16", 0, 0.0),
        ("s8", -128, -1.0), ("s8", 127, 1 - 2**-7),
        ("u8", 0, -1.0), ("u8", 128, 0.0), ("u8", 255, 1 - 2**-7),
        ("s24", -(2**23), -1.0), ("s24", 2**23 - 1, 1 - 2**-23), ("s24", -1, -(2**-23)),
        ("s32", -(2**31), -1.0), ("s32", 2**31 - 1, 1.0),  # 1 - 2^-31 rounds to 1.0 in float32, as it must
        ("s32", 2**31 - 128, 1 - 2**-24),
    ],
)
def test_extreme_values_map_exactly(fmt, value, expected) -> None:
    y = to_float32(pack_ints(np.array([value]), fmt), fmt, 1, 1, "planar")
    assert y[0, 0] == np.float32(expected)


@pytest.mark.parametrize("fmt", ["f32", "f64"])
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_float_formats_pass_through_as_float32(fmt, data) -> None:
    channels, frames = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 33))
    vals = data.draw(st.lists(st.floats(-4, 4, width=32), min_size=channels * frames, max_size=channels * frames))
    planar = np.array(vals, dtype=np.float32).reshape(channels, frames)
    dtype = "<f4" if fmt == "f32" else "<f8"
    payload = np.ascontiguousarray(planar.T, dtype=dtype).tobytes()
    y = to_float32(payload, fmt, channels, frames, "interleaved")
    np.testing.assert_array_equal(y, planar)  # never normalised by the peak
    assert from_float32(y, fmt, "interleaved") == payload


def test_s24_is_little_endian_packed_three_bytes() -> None:
    # 0x123456 and -2 (0xFFFFFE) as little-endian 3-byte samples
    payload = bytes([0x56, 0x34, 0x12, 0xFE, 0xFF, 0xFF])
    y = to_float32(payload, "s24", 2, 1, "interleaved")
    assert y[:, 0].tolist() == [0x123456 / 2**23, -2 / 2**23]


def test_silence_stays_silence_and_quiet_noise_stays_quiet() -> None:
    # The seed article divided by the chunk's peak: a silent chunk became NaN, noise became full scale.
    assert not to_float32(bytes(2 * 960), "s16", 1, 960, "planar").any()
    noise = np.array([3, -2, 1, -3], dtype="<i2")
    y = to_float32(noise.tobytes(), "s16", 1, 4, "planar")
    assert np.abs(y).max() == np.float32(3 / 32768)


@pytest.mark.parametrize(
    "payload,fmt,channels,frames,reason",
    [
        (b"\x00" * 5, "s16", 1, 3, "payload_length"),
        (b"\x00" * 6, "s24", 2, 2, "payload_length"),
        (b"\x00" * 4, "s12", 1, 2, "bad_format"),
        (b"", "s16", 0, 0, "bad_channels"),
    ],
)
def test_inconsistent_payloads_raise_a_counted_reason(payload, fmt, channels, frames, reason) -> None:
    with pytest.raises(FormatError) as e:
        stored_samples(payload, fmt, channels, frames, "interleaved")
    assert e.value.reason == reason


def test_channel_map_parsing() -> None:
    assert ChannelMap.parse("keep") == ChannelMap("keep")
    assert ChannelMap.parse("MONO") == ChannelMap("mono")
    assert ChannelMap.parse("1,0") == ChannelMap("select", (1, 0))
    for bad in ("", "a", "-1", "1,,2"):
        with pytest.raises(ValueError):
            ChannelMap.parse(bad)
    with pytest.raises(FormatError):
        ChannelMap.parse("2").check(2)


@pytest.mark.parametrize("fmt", ["s8", "u8", "s16", "s24", "s32", "f32", "f64"])
@pytest.mark.parametrize("layout", ["interleaved", "planar"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_downmix_and_selection_match_numpy_references(fmt, layout, data) -> None:
    channels, frames = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 37))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if fmt in INT_RANGES:
        lo, hi = INT_RANGES[fmt]
        planar_int = rng.integers(lo, hi, size=(channels, frames), endpoint=True)
        payload = pack_ints(np.ascontiguousarray(planar_int.T if layout == "interleaved" else planar_int), fmt)
        ref64 = (planar_int.astype(np.float64) - OFFSET.get(fmt, 0)) / FULL_SCALE[fmt]
    else:
        ref64 = rng.uniform(-1, 1, size=(channels, frames)).astype(np.float32).astype(np.float64)
        dtype = "<f4" if fmt == "f32" else "<f8"
        payload = np.ascontiguousarray(ref64.T if layout == "interleaved" else ref64, dtype=dtype).tobytes()
    stored = stored_samples(payload, fmt, channels, frames, layout)

    mono = select_float32(stored, fmt, layout, ChannelMap("mono"))
    assert mono.shape == (frames,) and mono.dtype == np.float32
    ref = ref64.mean(axis=0)
    if fmt in ("s8", "u8", "s16") and channels in (1, 2, 4):
        np.testing.assert_array_equal(mono, ref.astype(np.float32))  # exact: power-of-two channel counts
    else:
        np.testing.assert_allclose(mono, ref, rtol=0, atol=2**-23)

    keep = select_float32(stored, fmt, layout, ChannelMap("keep"))
    expect_keep = ref64.T.astype(np.float32)  # (frames, channels) for soxr
    np.testing.assert_array_equal(keep.reshape(frames, -1), expect_keep)
    assert keep.flags.c_contiguous and keep.flags.writeable

    pick = tuple(int(i) for i in rng.integers(0, channels, size=2))
    sel = select_float32(stored, fmt, layout, ChannelMap("select", pick))
    np.testing.assert_array_equal(sel, expect_keep[:, list(pick)])
    one = select_float32(stored, fmt, layout, ChannelMap("select", pick[:1]))
    np.testing.assert_array_equal(one, expect_keep[:, pick[0]])


def test_gain_is_a_fixed_factor_not_a_normalisation() -> None:
    x = np.array([[1000, -2000, 0]], dtype="<i2")
    stored = stored_samples(x.tobytes(), "s16", 1, 3, "planar")
    y = select_float32(stored, "s16", "planar", ChannelMap("mono"), gain=0.5)
    np.testing.assert_allclose(y, [500 / 32768, -1000 / 32768, 0], rtol=1e-7)
