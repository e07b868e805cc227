"""One forward pass for many streams' windows, with a failing window isolated.

The windows of a batch come from different streams (at most one per stream, so a
stateful model sees each stream's windows in order). If the batched call raises, each
window is retried alone: the ones that still raise are skipped (and counted by the
caller); the others get their scores. Stateful models commit state only on success
(classify.models.base), so a skipped window leaves its stream's state untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from classify.models.base import Model, StreamState, as_output


@dataclass
class BatchResult:
    """Scores per window (None where the model raised) and what the call cost."""

    scores: list[np.ndarray | None]
    extras: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)  # one message per skipped window
    cpu_s: float = 0.0  # process CPU time spent in the model
    matrix: np.ndarray | None = None  # (batch, labels) float32 when the whole batch succeeded


def run_batch(model: Model, windows: np.ndarray, states: Sequence[StreamState | None]) -> BatchResult:
    """Scores (labels,) for each window of ``windows`` (batch, channels, window) float32;
    a window whose forward raises gets None."""
    n = len(windows)
    labels = len(model.spec.labels)
    t0 = time.process_time()
    try:
        out = as_output(model.forward(torch.from_numpy(windows), list(states)), n, labels)
        res = BatchResult(list(out.scores), out.extras or [{} for _ in range(n)], matrix=out.scores)
    except Exception as batch_error:  # noqa: BLE001 - a model bug must not kill the worker
        if n == 1:
            res = BatchResult([None], [{}], [f"{type(batch_error).__name__}: {batch_error}"])
        else:
            res = BatchResult([], [])
            for w, s in zip(windows, states):
                one = run_batch(model, w[None], [s])
                res.scores += one.scores
                res.extras += one.extras
                res.errors += one.errors
    res.cpu_s = time.process_time() - t0
    return res
