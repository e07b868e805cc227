"""A classifier model three times slower than real time, for the slow-consumer fault test.

Used as ``python -m classify --model tests.net.slow_model:make``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from classify.models.base import Model, ModelSpec

SECONDS_PER_WINDOW = 0.3  # each window is 100 ms of audio


class Slow(Model):
    def __init__(self) -> None:
        self.spec = ModelSpec(name="slow", rate=16_000, channels=1, window=1600, hop=1600, labels=("x",),
                              max_batch=1, top_k=1)

    def forward(self, windows: Any, states: Sequence[None]) -> np.ndarray:
        """(batch, 1, 1600) -> zeros (batch, 1), after SECONDS_PER_WINDOW per window."""
        time.sleep(SECONDS_PER_WINDOW * windows.shape[0])
        return np.zeros((windows.shape[0], 1), dtype=np.float32)


def make() -> Slow:
    return Slow()
