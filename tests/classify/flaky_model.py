"""User models for tests, loaded by a worker as ``flaky_model:make`` (PYTHONPATH=tests/classify).

``make``: a 100 ms peak meter that raises on any window whose peak is above 0.9, so a test
marks exactly one window to fail. ``make_slow``: the same model taking 20 ms per call, to
make a worker fall behind.
"""

from __future__ import annotations

import time

import numpy as np

from classify.models.base import Model, ModelSpec


class Flaky(Model):
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.spec = ModelSpec(name="flaky", rate=16_000, channels=1, window=1600, hop=1600, labels=("peak",),
                              top_k=1, thresholds={"peak": (0.5, 0.3)})

    def forward(self, windows, states):
        peak = windows.abs().amax(dim=(1, 2)).numpy()
        if (peak > 0.9).any():
            raise RuntimeError("window marked to fail (peak > 0.9)")
        if self.delay_s:
            time.sleep(self.delay_s)
        return peak.reshape(-1, 1).astype(np.float32)


def make() -> Flaky:
    return Flaky()


def make_slow() -> Flaky:
    return Flaky(delay_s=0.02)
