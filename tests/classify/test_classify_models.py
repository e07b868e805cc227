"""The models in-process: batching changes nothing, the YAMNet front end frames like TensorFlow,
the freed batch dimension gives the file's own outputs, level reads known signals right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classify.batching import run_batch
from classify.models import load_model

RATE = 16_000


def _streams(n: int, seconds: float, seed: int = 1) -> np.ndarray:
    """n different test signals (n, frames): noise bursts and chirps, enough to move the VAD state."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    out = []
    for i in range(n):
        chirp = np.sin(2 * np.pi * (200 + 150 * i) * t * (1 + t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
        out.append(0.3 * chirp + 0.05 * rng.standard_normal(t.size))
    return np.asarray(out, dtype=np.float32)


def _run(model, audio: np.ndarray, batched: bool) -> np.ndarray:
    """Scores (streams, windows, labels), one stream at a time or all streams per call."""
    spec = model.spec
    n_win = 1 + (audio.shape[1] - spec.window) // spec.hop
    states = [model.new_state() for _ in audio]
    out = np.zeros((len(audio), n_win, len(spec.labels)), np.float32)
    for k in range(n_win):
        wins = [a[None, k * spec.hop : k * spec.hop + spec.window].copy() for a in audio]
        groups = [list(range(len(audio)))] if batched else [[i] for i in range(len(audio))]
        for g in groups:
            res = run_batch(model, np.stack([wins[i] for i in g]), [states[i] for i in g])
            assert not res.errors
            for i, s in zip(g, res.scores):
                out[i, k] = s
    return out


@pytest.mark.parametrize("name", ["vad", "vad-onnx"])
def test_vad_batched_equals_unbatched_with_per_stream_state(name: str) -> None:
    model = load_model(name)
    audio = _streams(5, 2.0)
    one = _run(model, audio, batched=False)
    many = _run(model, audio, batched=True)
    np.testing.assert_allclose(many, one, atol=1e-5)
    # the state matters: the same chunk gives another score without its history
    assert np.abs(np.diff(one[:, :, 0], axis=1)).max() > 0.01


def test_vad_backends_agree() -> None:
    audio = _streams(2, 1.0, seed=3)
    np.testing.assert_allclose(_run(load_model("vad"), audio, True), _run(load_model("vad-onnx"), audio, True),
                               atol=1e-4)


def test_yamnet_frontend_frames_like_tensorflow() -> None:
    """Frame k covers samples [160k, 160k + 400) with a periodic Hann, zero-padded to 512 (tf.signal.stft)."""
    from classify.models.yamnet import WINDOW, LogMel

    fe = LogMel()
    x = np.random.default_rng(0).standard_normal(WINDOW).astype(np.float32) * 0.1
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]  # (96, 400)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic
    mag = np.abs(np.fft.rfft(frames * hann, n=512))  # (96, 257)
    fb = fe.mel.mel_scale.fb.numpy()  # (257, 64), the same torchaudio filterbank
    ref = np.log(mag @ fb + 0.001)
    got = fe(torch.from_numpy(x)[None])[0].numpy()
    assert got.shape == (96, 64)
    np.testing.assert_allclose(got, ref, atol=2e-3)


def test_yamnet_batched_graph_matches_the_shipped_file() -> None:
    import onnxruntime as ort

    model = load_model("yamnet")
    from classify.models.yamnet import unpack_model

    original = ort.InferenceSession(str(unpack_model().with_name("model.onnx")), providers=["CPUExecutionProvider"])
    audio = _streams(3, 1.0)
    q = model.patches(torch.from_numpy(audio[:, None, : model.spec.window].copy()))
    (batched,) = model.session.run(None, {"audio": q})
    single = np.concatenate([original.run(None, {"audio": q[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_array_equal(batched, single)
    assert len(model.spec.labels) == 521 and model.spec.labels[0] == "Speech"


def test_level_reads_known_signals() -> None:
    model = load_model("level")
    t = np.arange(1600) / RATE
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    wins = [sine[None], np.zeros((1, 1600), np.float32), np.full((1, 1600), -1.0, np.float32)]
    res = run_batch(model, np.stack(wins), [None] * 3)
    sine_x, silent_x, clip_x = res.extras
    assert sine_x["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    assert sine_x["peak_dbfs"] == pytest.approx(-6.02, abs=0.05) and sine_x["clipped"] == 0
    assert silent_x["rms_dbfs"] == -120.0 and res.scores[1][0] == 0.0
    assert clip_x["clipped"] == 1600 and res.scores[2][1] == 1.0
