"""``wakeword``: openWakeWord 0.5.1's shipped wake-word models, batched across streams (optional extra).

Install: ``pip install openwakeword==0.5.1`` (0.6 ships no models; 0.5.1 pulls in
tflite-runtime, scikit-learn and scipy). Licence: openWakeWord's code is Apache-2.0, but its
pre-trained models -- the ones used here -- are CC BY-NC-SA 4.0 (non-commercial), as its
README states; that is why this model is an opt-in extra and not a default.

openWakeWord's own ``Model`` keeps its buffers inside one object and runs its graphs one
stream at a time. This module runs the same pipeline with the same ONNX files, each graph
once per batch of streams, every stream's buffers in its :class:`WakewordState`. Per 80 ms
window (1280 samples at 16 kHz) of each stream, exactly as openWakeWord's
``AudioFeatures._streaming_features`` and ``Model.predict`` do with 1280-sample chunks:

  1. mel: melspectrogram.onnx over the stream's last 1760 samples (this window and the 480
     before it; a stream's first window alone), as int16 values -> 8 frames x 32 (5 for a
     first window), then x/10 + 2. Its mel history starts as 76 frames of ones.
  2. embedding: one 96-d embedding of the newest 76 mel frames, computed by the streaming
     form of embedding_model.onnx (classify.models.oww_graphs: 8 new frames plus a carried
     context, ~8x fewer operations, same numbers). The first window's step is the last 3
     rows of ones and its 5 frames.
  3. heads: each wake word's head over the newest 16 (weather: 22) embeddings -> its score.
     The embedding history starts as openWakeWord's does: embeddings of 4 s of uniform
     noise in [-1000, 1000), here seeded (``INIT_SEED``) so results are reproducible;
     openWakeWord draws it unseeded (``np.random.randint``), so it matches us after
     ``np.random.seed(INIT_SEED)``. Scores of a stream's first 5 windows are 0, as in
     openWakeWord ("model initialization").

Results equal ``openwakeword.Model(inference_framework="onnx").predict`` on the same audio
(tests/classify/test_wakeword_batched.py), batched or not.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from classify.models.base import Model, ModelSpec, StreamState
from classify.models.oww_graphs import (
    EMBEDDING_DIM,
    MEL_BINS,
    STEP_FRAMES,
    batched_head,
    batched_melspectrogram,
    streaming_embedding,
)

if TYPE_CHECKING:
    import torch

RATE = 16_000
CHUNK = 1280  # samples (80 ms): openWakeWord's step
MEL_CONTEXT = 480  # samples of the previous chunk its mel step recomputes (3 hops of 160)
FIRST_FRAMES = 5  # mel frames of a stream's first chunk (1280 samples alone)
WARMUP = 5  # windows whose scores openWakeWord reports as 0
INIT_SEED = 0
# Importable without torch or onnxruntime (the Wyoming server lists them): both load only in Wakeword().
WAKEWORDS = ("alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "weather")  # "timer" is multi-class: left out


def _models_dir() -> str:
    import openwakeword

    return os.path.join(os.path.dirname(openwakeword.__file__), "resources", "models")


def _model_paths(d: str) -> list[str]:
    paths = [p for w in WAKEWORDS for p in sorted(glob.glob(os.path.join(d, f"{w}_v*.onnx")))[-1:]]
    if len(paths) != len(WAKEWORDS):
        raise ImportError(f"openwakeword in {d} does not ship the models {WAKEWORDS}; install openwakeword==0.5.1")
    return paths


class WakewordState(StreamState):
    """One stream's buffers: its last MEL_CONTEXT samples, the embedding network's context,
    its newest embeddings (history, 96) and how many windows it has seen."""

    def __init__(self, context0: np.ndarray, features0: np.ndarray) -> None:
        self._context0, self._features0 = context0, features0
        self.reset()

    def reset(self) -> None:
        self.windows = 0
        self.tail = np.zeros(MEL_CONTEXT, dtype=np.float32)  # int16 values
        self.context = self._context0.copy()
        self.features = self._features0.copy()


class Wakeword(Model):
    """Scores per wake word per 80 ms window, each ONNX graph called once per batch."""

    def __init__(self, models_dir: str | None = None) -> None:
        import onnxruntime as ort

        d = models_dir or _models_dir()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3

        def session(model):
            return ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                        sess_options=opts, providers=["CPUExecutionProvider"])

        self._mel = session(batched_melspectrogram(os.path.join(d, "melspectrogram.onnx")))
        embedding_path = os.path.join(d, "embedding_model.onnx")
        streaming, context_size = streaming_embedding(embedding_path)
        self._embed = session(streaming)
        self._heads = [session(batched_head(p)) for p in _model_paths(d)]
        self._head_inputs = [(h.get_inputs()[0].name, h.get_inputs()[0].shape[1]) for h in self._heads]
        self.history = max(n for _, n in self._head_inputs)  # embeddings a stream keeps (22)
        self._context0 = self._primed_context(context_size)
        self._features0 = self._initial_features(session(embedding_path))
        self.spec = ModelSpec(
            name="wakeword",
            rate=RATE,
            channels=1,
            window=CHUNK,
            hop=CHUNK,
            labels=WAKEWORDS,
            stateful=True,
            max_batch=128,
            top_k=len(WAKEWORDS),
            thresholds={"*": (0.5, 0.3)},
            hold=3,
        )

    # -- start-up: what a fresh stream's buffers hold -----------------------------------------

    def _primed_context(self, size: int) -> np.ndarray:
        """The embedding network's context after the mel history's leading ones (76 rows of
        ones, of which the first window's step uses the last 3): feed 9 steps of ones from an
        empty context. Rows before the history's start only reach outputs we never use
        (valid convolutions: an output depends on its own 76-frame window only), so this
        context gives the first window exactly the embedding of its 76 frames."""
        context = np.zeros((1, size), dtype=np.float32)
        ones = np.ones((1, 1, STEP_FRAMES, MEL_BINS), dtype=np.float32)
        for _ in range(9):  # 72 rows: 68 ones the first window's 76 frames start with, plus 4
            _, context = self._embed.run(None, {"mel": ones, "context": context})
        return context[0]

    def _initial_features(self, full_embedding) -> np.ndarray:
        """openWakeWord's initial embedding history: embeddings of 4 s of noise (seeded here)."""
        noise = np.random.RandomState(INIT_SEED).randint(-1000, 1000, RATE * 4).astype(np.int16)
        mel = self._mel.run(None, {"input": noise[None].astype(np.float32)})[0][0, 0] / 10 + 2  # (397, 32)
        windows = np.stack([mel[i : i + 76] for i in range(0, mel.shape[0] - 75, STEP_FRAMES)])
        emb = full_embedding.run(None, {"input_1": windows[..., None].astype(np.float32)})[0]  # (41, 1, 1, 96)
        return emb.reshape(-1, EMBEDDING_DIM)[-self.history :].copy()

    def new_state(self) -> WakewordState:
        return WakewordState(self._context0, self._features0)

    # -- a batch -------------------------------------------------------------------------------

    def forward(self, windows: torch.Tensor, states: Sequence[WakewordState]) -> np.ndarray:
        """(batch, 1, 1280) float in [-1, 1] -> (batch, 5) scores; states change only on success."""
        batch = len(states)
        # openWakeWord takes int16 samples; convert's s16 / 32768 comes back exact
        pcm = np.clip(np.round(windows[:, 0, :].numpy() * 32768.0), -32768, 32767).astype(np.float32)
        mel = self._mel_steps(pcm, states)  # (batch, 1, 8, 32)
        context = np.stack([s.context for s in states])
        emb, context = self._embed.run(None, {"mel": mel, "context": context})  # (batch, 96), (batch, CONTEXT)
        # (batch, history, 96): drop each stream's oldest embedding, append the new one
        features = np.concatenate([np.stack([s.features[1:] for s in states]), emb[:, None, :]], axis=1)
        scores = np.empty((batch, len(self._heads)), dtype=np.float32)
        for j, (head, (name, n)) in enumerate(zip(self._heads, self._head_inputs)):
            scores[:, j] = head.run(None, {name: np.ascontiguousarray(features[:, -n:, :])})[0][:, 0]
        for i, s in enumerate(states):  # commit only now: every call above succeeded
            if s.windows < WARMUP:
                scores[i] = 0.0
            s.windows += 1
            s.tail = pcm[i, -MEL_CONTEXT:].copy()
            s.context = context[i]
            s.features = features[i]
        return scores

    def _mel_steps(self, pcm: np.ndarray, states: Sequence[WakewordState]) -> np.ndarray:
        """Each stream's 8 new mel rows (batch, 1, 8, 32), transformed as openWakeWord does."""
        out = np.empty((len(states), 1, STEP_FRAMES, MEL_BINS), dtype=np.float32)
        first = [i for i, s in enumerate(states) if s.windows == 0]
        later = [i for i, s in enumerate(states) if s.windows > 0]
        if later:
            x = np.concatenate([np.stack([states[i].tail for i in later]), pcm[later]], axis=1)  # (n, 1760)
            out[later] = self._mel.run(None, {"input": x})[0] / 10 + 2  # (n, 1, 8, 32)
        if first:
            m = self._mel.run(None, {"input": pcm[first]})[0] / 10 + 2  # (n, 1, 5, 32): 1280 samples alone
            out[first, :, : STEP_FRAMES - FIRST_FRAMES] = 1.0  # the history's leading ones
            out[first, :, STEP_FRAMES - FIRST_FRAMES :] = m
        return out


def make_wakeword() -> Wakeword:
    try:
        import openwakeword  # noqa: F401
    except ImportError:
        raise ImportError("openwakeword==0.5.1 (pip install openwakeword==0.5.1)") from None
    return Wakeword()
