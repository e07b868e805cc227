"""``wakeword``: openWakeWord 0.5.1's shipped wake-word models (optional extra).

Install: ``pip install openwakeword==0.5.1`` (0.6 ships no models; 0.5.1 pulls in
tflite-runtime, scikit-learn and scipy). Licence: openWakeWord's code is Apache-2.0, but its
pre-trained models -- the ones used here -- are CC BY-NC-SA 4.0 (non-commercial), as its
README states; that is why this model is an opt-in extra and not a default.

openWakeWord keeps its feature buffers inside its ``Model`` object, so each stream gets
its own instance (its state; ``reset()`` clears the buffers). Windows are 80 ms
(1280 samples at 16 kHz); each stream's windows run one after the other (no cross-stream
batching: the library has no batch API).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

import numpy as np
import torch

from classify.models.base import Model, ModelSpec, StreamState

RATE = 16_000
CHUNK = 1280  # samples (80 ms), openWakeWord's frame
WAKEWORDS = ("alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "weather")  # "timer" is multi-class: left out


def _model_paths() -> list[str]:
    import openwakeword

    d = os.path.join(os.path.dirname(openwakeword.__file__), "resources", "models")
    paths = [p for w in WAKEWORDS for p in sorted(glob.glob(os.path.join(d, f"{w}_v*.onnx")))[-1:]]
    if len(paths) != len(WAKEWORDS):
        raise ImportError(f"openwakeword in {d} does not ship the models {WAKEWORDS}; install openwakeword==0.5.1")
    return paths


class WakewordState(StreamState):
    """One stream's openWakeWord instance (its mel/embedding buffers)."""

    def __init__(self, paths: list[str]) -> None:
        from openwakeword.model import Model as OwwModel

        self.oww = OwwModel(wakeword_models=paths, inference_framework="onnx")
        self.keys = list(self.oww.models)  # e.g. "hey_jarvis_v0.1", in WAKEWORDS order

    def reset(self) -> None:
        self.oww.reset()


class Wakeword(Model):
    """Scores per wake word per 80 ms chunk."""

    def __init__(self) -> None:
        self.paths = _model_paths()
        self.spec = ModelSpec(
            name="wakeword",
            rate=RATE,
            channels=1,
            window=CHUNK,
            hop=CHUNK,
            labels=WAKEWORDS,
            stateful=True,
            max_batch=64,
            top_k=len(WAKEWORDS),
            thresholds={"*": (0.5, 0.3)},
            hold=3,
        )

    def new_state(self) -> WakewordState:
        return WakewordState(self.paths)

    def forward(self, windows: torch.Tensor, states: Sequence[WakewordState]) -> np.ndarray:
        """(batch, 1, 1280) float -> (batch, 5) scores. openWakeWord takes int16 samples."""
        pcm = np.clip(np.round(windows[:, 0, :].numpy() * 32768.0), -32768, 32767).astype(np.int16)
        out = np.zeros((len(states), len(WAKEWORDS)), dtype=np.float32)
        for i, s in enumerate(states):
            pred = s.oww.predict(pcm[i])
            out[i] = [float(pred[k]) for k in s.keys]
        return out


def make_wakeword() -> Wakeword:
    try:
        import openwakeword  # noqa: F401
    except ImportError:
        raise ImportError("openwakeword==0.5.1 (pip install openwakeword==0.5.1)") from None
    return Wakeword()
