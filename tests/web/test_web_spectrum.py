"""The view's log-mel columns and levels: right band, right level, the same whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from web.spectrum import (
    DB_CEIL,
    DB_FLOOR,
    LEVEL_FLOOR_DBFS,
    MelColumns,
    frame_sizes,
    hz_to_mel,
    level_dbfs,
    levels_dbfs,
    mel_filterbank,
    mel_to_hz,
)

RATE = 16_000


def sine(freq: float, seconds: float, amp: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def to_db(q: np.ndarray) -> np.ndarray:
    return DB_FLOOR + q.astype(float) / 255 * (DB_CEIL - DB_FLOOR)


def test_frames_cover_every_sample_at_common_rates() -> None:
    for rate in (8000, 16000, 22050, 44100, 48000):
        n_fft, hop = frame_sizes(rate)
        assert hop == round(rate / 25) and n_fft >= hop and n_fft & (n_fft - 1) == 0


def test_filterbank_has_every_band_and_peaks_at_one() -> None:
    for rate, n_fft in ((8000, 512), (16000, 1024), (48000, 2048)):
        fb = mel_filterbank(rate, n_fft, 64)
        assert fb.shape == (64, n_fft // 2 + 1)
        assert (fb.max(axis=1) > 0).all()  # no empty band, even where bands are narrower than a bin
        assert fb.max() <= 1.0 + 1e-6
    assert mel_to_hz(hz_to_mel(1234.5)) == pytest.approx(1234.5)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6000.0])
def test_a_full_scale_sine_reads_0_db_in_its_band_and_far_less_elsewhere(freq: float) -> None:
    m = MelColumns(RATE)
    m.push(sine(freq, 1.0))
    cols = to_db(m.take())
    assert len(cols) == 24  # (16000 - 1024) // 640 + 1
    col = cols[len(cols) // 2]
    band = int(col.argmax())
    fb = mel_filterbank(RATE, m.n_fft, 64)
    centre_bin = round(freq * m.n_fft / RATE)
    assert fb[band, centre_bin] > 0.3  # the loudest band is one that holds the tone
    assert col.max() > -3.0  # ~0 dB for a full-scale sine (within the triangle's slope)
    far = np.abs(np.arange(64) - band) > 6
    assert col[far].max() < col.max() - 40  # Hann leakage stays far below


def test_silence_is_the_floor_and_quiet_is_lower_than_loud() -> None:
    m = MelColumns(RATE)
    m.push(np.zeros(RATE, np.float32))
    assert (m.take() == 0).all()
    loud, quiet = MelColumns(RATE), MelColumns(RATE)
    loud.push(sine(1000, 0.5, 0.5))
    quiet.push(sine(1000, 0.5, 0.005))
    d = to_db(loud.take()).max() - to_db(quiet.take()).max()
    assert d == pytest.approx(40.0, abs=1.0)  # 100x in amplitude is 40 dB


def test_columns_do_not_depend_on_how_the_audio_was_chunked() -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(2 * RATE) * 0.1).astype(np.float32)  # within what one push may hold
    whole = MelColumns(RATE)
    whole.push(x)
    expect = whole.take()
    for chunk in (160, 512, 1000, 4097):
        m = MelColumns(RATE)
        got = []
        for i in range(0, len(x), chunk):
            m.push(x[i : i + chunk])
            got.append(m.take())
        assert np.array_equal(np.concatenate(got), expect), chunk


def test_held_samples_are_bounded_and_the_newest_kept() -> None:
    m = MelColumns(RATE)
    for _ in range(10):
        m.push(np.ones(RATE, np.float32))  # nobody takes columns: 10 s arrive
    assert m.fill <= m.capacity and m.dropped == 10 * RATE - m.capacity
    m.push(np.zeros(3 * m.capacity, np.float32))
    assert m.fill == m.capacity and not m.buf.any()


def test_lost_audio_is_silence_up_to_a_bound_then_a_restart() -> None:
    m = MelColumns(RATE)
    m.push(np.ones(100, np.float32))
    m.push_silence(RATE)
    assert m.fill == RATE + 100
    m.push_silence(10 * RATE)
    assert m.fill == 0


def test_levels_of_many_chunks_at_once_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    chunks = [(rng.standard_normal((1, 1600)) * 0.1).astype(np.float32), np.zeros((1, 320), np.float32),
              np.full((2, 100), 0.5, np.float32), sine(440, 0.1).reshape(1, -1)]
    assert levels_dbfs(chunks) == [level_dbfs(c) for c in chunks]
    assert level_dbfs(chunks[1]) == (LEVEL_FLOOR_DBFS, LEVEL_FLOOR_DBFS)
    assert level_dbfs(chunks[2]) == (-6.0, -6.0)
    rms, peak = level_dbfs(chunks[3])
    assert rms == pytest.approx(-3.0, abs=0.1) and peak == pytest.approx(0.0, abs=0.1)  # a full-scale sine
