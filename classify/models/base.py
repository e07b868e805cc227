"""The model interface every classifier implements (built-in or a user's ``module:factory``).

A model declares what audio it takes (rate, channels, window and hop in samples) and
whether it carries state from one window of a stream to the next. The worker hands it a
batch of windows from different streams and gets scores per label back:

    windows: torch.Tensor, float32, shape (batch, channels, window), values in [-1, 1]
    states:  list of length batch: the per-stream state of each row (None if stateless)
    returns: scores shaped (batch, len(labels)) (numpy or torch), or a ModelOutput

Contract for stateful models: ``forward`` updates the states only after it has succeeded,
so a window that raises leaves its stream's state as it was (the worker skips that window).
This module imports no torch, so ``soundbus tail`` and the CLI stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSpec:
    """What a model consumes and produces.

    ``rate`` Hz; ``channels`` input channels; ``window`` and ``hop`` in samples at ``rate``;
    ``thresholds`` maps a label (or ``"*"`` for every label) to (on, off) scores for events;
    ``hold``: windows below ``off`` in a row before a stop event; ``max_batch`` caps how
    many windows one forward pass takes.
    """

    name: str
    rate: int
    channels: int
    window: int
    hop: int
    labels: tuple[str, ...]
    stateful: bool = False
    max_batch: int = 64
    top_k: int = 5
    thresholds: dict[str, tuple[float, float]] = field(default_factory=dict)
    hold: int = 1

    @property
    def window_s(self) -> float:
        return self.window / self.rate

    @property
    def hop_s(self) -> float:
        return self.hop / self.rate


@dataclass
class ModelOutput:
    """Scores (batch, labels) plus optional per-window extra fields copied into each result."""

    scores: np.ndarray
    extras: list[dict[str, Any]] | None = None


class StreamState:
    """Per-stream model state; ``reset()`` after a discontinuity."""

    def reset(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Model:
    """Base class of soundbus models; subclasses set ``spec`` and implement ``forward``."""

    spec: ModelSpec

    def new_state(self) -> StreamState | None:
        """A fresh per-stream state, or None for a stateless model."""
        return None

    def forward(self, windows: torch.Tensor, states: Sequence[StreamState | None]) -> Any:
        """Scores for a batch of windows (see the module docstring for shapes)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (sessions, files)."""


def as_output(result: Any, batch: int, n_labels: int) -> ModelOutput:
    """Normalise what ``forward`` returned to a checked ModelOutput (float32 (batch, labels))."""
    if isinstance(result, ModelOutput):
        out = result
    else:
        out = ModelOutput(result)
    scores = out.scores
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float32).reshape(batch, -1)
    if scores.shape[1] != n_labels:
        raise ValueError(f"model returned {scores.shape[1]} scores per window, its spec declares {n_labels} labels")
    if out.extras is not None and len(out.extras) != batch:
        raise ValueError(f"model returned {len(out.extras)} extras for a batch of {batch}")
    return ModelOutput(scores, out.extras)
