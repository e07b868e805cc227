"""The batched wakeword model equals openWakeWord's own Model.predict, stream by stream.

classify.models.wakeword re-implements openWakeWord 0.5.1's streaming pipeline with its
shipped ONNX files rewritten for batches (classify.models.oww_graphs). Reference:
``openwakeword.Model(inference_framework="onnx")`` fed the same 1280-sample chunks, one model
per wake word (loaded together, openWakeWord zeroes each word's first windows a different
number of times: its warm-up counter is shared across models), after
``np.random.seed(INIT_SEED)`` (its initial embedding history is drawn from np.random).

Tolerance 1e-4 on scores in [0, 1]: the rewrites keep every operator and weight, and on this
machine the results are bit-identical (difference 0.0); ONNX Runtime picks kernels per CPU and
per tensor shape (batch size, 8 vs 76 frames), so another CPU may round differently in the last
bits, amplified at most a little by the small heads. A wake-word decision is a 0.5 threshold;
1e-4 is far below anything that changes one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openwakeword", reason="wakeword is an optional extra: pip install openwakeword==0.5.1")
pytest.importorskip("onnxruntime")
import soundfile as sf  # noqa: E402
import soxr  # noqa: E402
import torch  # noqa: E402

from classify.models import wakeword as ww  # noqa: E402

TOL = 1e-4
RATE = ww.RATE
CHUNK = ww.CHUNK


def speech(tmp: Path, text: str, lead_s: float = 0.7, tail_s: float = 1.0) -> np.ndarray:
    """espeak-ng saying ``text`` at 16 kHz as int16, with silence around it."""
    wav = tmp / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    x, rate = sf.read(str(wav), dtype="float32")
    x = soxr.resample(x, rate, RATE)
    x = np.concatenate([np.zeros(int(lead_s * RATE), np.float32), x, np.zeros(int(tail_s * RATE), np.float32)])
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("wakeword")
    rng = np.random.default_rng(3)
    return {
        "jarvis": speech(tmp, "hey jarvis"),
        "alexa": speech(tmp, "alexa, what time is it"),
        "other": speech(tmp, "the quick brown fox jumps over the lazy dog"),
        "quiet": (rng.standard_normal(RATE * 2) * 30).astype(np.int16),  # near silence (a floor-sensitive case)
    }


@pytest.fixture(scope="module")
def model() -> ww.Wakeword:
    return ww.make_wakeword()


def reference(pcm: np.ndarray) -> np.ndarray:
    """openWakeWord's own scores (windows, words) for 1280-sample chunks, one Model per word."""
    import openwakeword

    cols = []
    for path in ww._model_paths(ww._models_dir()):
        np.random.seed(ww.INIT_SEED)
        oww = openwakeword.Model(wakeword_models=[path], inference_framework="onnx")
        (key,) = oww.models
        cols.append([oww.predict(pcm[i * CHUNK : (i + 1) * CHUNK])[key] for i in range(len(pcm) // CHUNK)])
    return np.array(cols, dtype=np.float32).T


def window(pcm: np.ndarray, i: int) -> torch.Tensor:
    """Chunk i as convert delivers it: float32 s16 / 32768, shape (1, 1, 1280)."""
    return torch.from_numpy(pcm[i * CHUNK : (i + 1) * CHUNK].astype(np.float32)[None, None] / 32768.0)


@pytest.fixture(scope="module")
def references(clips) -> dict[str, np.ndarray]:
    return {name: reference(pcm) for name, pcm in clips.items()}


def test_one_stream_at_a_time_equals_openwakeword(model, clips, references):
    for name, pcm in clips.items():
        state = model.new_state()
        ours = np.array([model.forward(window(pcm, i), [state])[0] for i in range(len(pcm) // CHUNK)])
        np.testing.assert_allclose(ours, references[name], rtol=0, atol=TOL, err_msg=name)
    # and the scores mean what they should (margins, not exact values: see the module docstring)
    best = {name: references[name].max(axis=0) for name in clips}
    words = list(ww.WAKEWORDS)
    assert best["jarvis"][words.index("hey_jarvis")] > 0.9 and best["alexa"][words.index("alexa")] > 0.9
    assert best["other"].max() < 0.5 and best["quiet"].max() < 0.5


def test_streams_in_one_batch_equal_openwakeword(model, clips, references):
    """Every stream in every call, started at different times (first and later windows mixed in
    one batch), a loud stream next to a near-silent one: each gets what openWakeWord gives it alone."""
    names = list(clips)
    start = {name: 3 * k for k, name in enumerate(names)}
    states = {name: model.new_state() for name in names}
    ours: dict[str, list[np.ndarray]] = {name: [] for name in names}
    steps = max(start[n] + len(clips[n]) // CHUNK for n in names)
    sizes = set()
    for t in range(steps):
        live = [n for n in names if 0 <= t - start[n] < len(clips[n]) // CHUNK]
        if not live:
            continue
        x = torch.cat([window(clips[n], t - start[n]) for n in live])
        scores = model.forward(x, [states[n] for n in live])
        sizes.add(len(live))
        for n, row in zip(live, scores):
            ours[n].append(row)
    assert max(sizes) == len(names)
    for n in names:
        np.testing.assert_allclose(np.array(ours[n]), references[n], rtol=0, atol=TOL, err_msg=n)


def test_reset_starts_a_stream_over(model, clips):
    """After reset() a state scores like a new one (what classify does after a discontinuity)."""
    pcm = clips["jarvis"]
    fresh, reused = model.new_state(), model.new_state()
    for i in range(20):
        model.forward(window(clips["other"], i), [reused])
    reused.reset()
    a = np.array([model.forward(window(pcm, i), [fresh])[0] for i in range(len(pcm) // CHUNK)])
    b = np.array([model.forward(window(pcm, i), [reused])[0] for i in range(len(pcm) // CHUNK)])
    np.testing.assert_array_equal(a, b)


def test_melspectrogram_floor_is_per_stream():
    """openWakeWord's melspectrogram.onnx floors log-mels at the maximum of the whole batch minus 8;
    the rewritten graph takes each row's own maximum: a quiet row is the same alone or next to a loud one."""
    import onnxruntime as ort

    path = str(Path(ww._models_dir()) / "melspectrogram.onnx")
    original = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(ww.batched_melspectrogram(path).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal((1, 1760)) * 3).astype(np.float32)
    loud = (rng.standard_normal((1, 1760)) * 20000).astype(np.float32)
    alone = original.run(None, {"input": quiet})[0]
    both = np.concatenate([loud, quiet])
    assert np.abs(original.run(None, {"input": both})[0][1] - alone[0]).max() > 1.0  # the batch-wide floor
    np.testing.assert_allclose(batched.run(None, {"input": both})[0][1], alone[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(batched.run(None, {"input": quiet})[0], alone, rtol=0, atol=1e-5)


def test_streaming_embedding_equals_the_windowed_graph(model):
    """8 new mel frames + carried context give the embedding of the newest 76 frames."""
    import onnxruntime as ort

    full = ort.InferenceSession(str(Path(ww._models_dir()) / "embedding_model.onnx"),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    mel = np.concatenate([np.ones((71, 32), np.float32), rng.uniform(0, 3, (5 + 8 * 12, 32)).astype(np.float32)])
    context = model._context0[None].copy()
    for n in range(13):
        emb, context = model._embed.run(None, {"mel": mel[None, None, 68 + 8 * n : 76 + 8 * n], "context": context})
        want = full.run(None, {"input_1": mel[None, 8 * n : 8 * n + 76, :, None]})[0].reshape(1, 96)
        np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-4)
