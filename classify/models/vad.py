"""silero-vad (package ``silero-vad``, MIT): speech probability per 32 ms chunk at 16 kHz.

The model is recurrent: each chunk is fed together with the last 64 samples of the
previous chunk (its "context") and a (2, 128) state per stream. Both silero files take
that state explicitly -- the ONNX file as inputs ``input`` (batch, 64 + 512) and ``state``
(2, batch, 128), the TorchScript file's inner ``_model.forward(x, state)`` likewise -- so
one call serves many streams, each with its own state (the packaged wrappers keep a
single state and reset it whenever the batch size changes, which is why we do not use them).

Backends: ``jit`` (TorchScript, faster batched) and ``onnx`` (onnxruntime, faster for
a single stream). Both give the same probabilities (tests/classify/test_classify_models.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch

from classify.models.base import Model, ModelSpec, StreamState

RATE = 16_000  # Hz
CHUNK = 512  # samples per call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk prepended to each call


class VadState(StreamState):
    """One stream's recurrent state (2, 128) and its last CONTEXT samples."""

    def __init__(self) -> None:
        self.state = np.zeros((2, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)

    def reset(self) -> None:
        self.state.fill(0.0)
        self.context.fill(0.0)


class SileroVad(Model):
    """Speech probability per 512-sample window, batched across streams with per-stream state."""

    def __init__(self, backend: str = "jit", name: str = "vad", threshold: tuple[float, float] = (0.5, 0.35)) -> None:
        self.spec = ModelSpec(
            name=name,
            rate=RATE,
            channels=1,
            window=CHUNK,
            hop=CHUNK,
            labels=("speech",),
            stateful=True,
            max_batch=256,
            top_k=1,
            thresholds={"speech": threshold},
            hold=8,  # 256 ms: a pause between words is not the end of speech
        )
        self.backend = backend
        data = resources.files("silero_vad.data")
        if backend == "jit":
            with warnings.catch_warnings():  # torch 2.11 marks jit.load deprecated; the file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                wrapper = torch.jit.load(str(data.joinpath("silero_vad.jit")), map_location="cpu")
            wrapper.eval()
            self._jit = wrapper._model  # forward(x (batch, 576), state (2, batch, 128)) -> (prob, state)
        elif backend == "onnx":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self._ort = ort.InferenceSession(
                str(data.joinpath("silero_vad.onnx")), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self._sr = np.array(RATE, dtype=np.int64)
        else:
            raise ValueError(f"vad backend must be 'jit' or 'onnx', got {backend!r}")

    def new_state(self) -> VadState:
        return VadState()

    def forward(self, windows: torch.Tensor, states: Sequence[VadState]) -> np.ndarray:
        """(batch, 1, 512) float32 -> speech probability (batch, 1); updates ``states`` on success."""
        batch = windows.shape[0]
        chunks = windows[:, 0, :].numpy()  # (batch, 512), zero-copy view
        x = np.empty((batch, CONTEXT + CHUNK), dtype=np.float32)
        x[:, :CONTEXT] = np.stack([s.context for s in states])
        x[:, CONTEXT:] = chunks
        state = np.stack([s.state for s in states], axis=1)  # (2, batch, 128)
        if self.backend == "jit":
            with torch.inference_mode():
                prob_t, new_t = self._jit(torch.from_numpy(x), torch.from_numpy(state))
            prob, new_state = prob_t.numpy(), new_t.numpy()
        else:
            prob, new_state = self._ort.run(None, {"input": x, "state": state, "sr": self._sr})
        # Commit only after the call succeeded (the base contract).
        for i, s in enumerate(states):
            s.state[...] = new_state[:, i, :]
            s.context[...] = x[i, -CONTEXT:]
        return np.asarray(prob, dtype=np.float32).reshape(batch, 1)


def make_vad() -> SileroVad:
    return SileroVad("jit", "vad")


def make_vad_onnx() -> SileroVad:
    return SileroVad("onnx", "vad-onnx")
