"""``level``: RMS and peak in dBFS and clipping per 100 ms window; cheap enough to gate other models.

Scores: ``sound`` = RMS mapped linearly from -60 dBFS (0.0) to 0 dBFS (1.0), so the default
event threshold 0.5/0.4 means "sound" above -30 dBFS, back to quiet below -36 dBFS;
``clipping`` = 1.0 when any sample reaches full scale. Each result also carries
``rms_dbfs``, ``peak_dbfs`` and ``clipped`` (samples at full scale), which ``soundbus tail``
draws as a level meter.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from classify.models.base import Model, ModelOutput, ModelSpec

FLOOR_DBFS = -120.0  # reported for digital silence instead of -inf
FULL_SCALE = 32767 / 32768  # the largest positive int16 sample after exact scaling


class Level(Model):
    """Level meter; ``window`` and ``hop`` in samples at ``rate`` Hz (default 100 ms at 16 kHz)."""

    def __init__(self, rate: int = 16_000, window: int = 1600) -> None:
        self.spec = ModelSpec(
            name="level",
            rate=rate,
            channels=1,
            window=window,
            hop=window,
            labels=("sound", "clipping"),
            max_batch=512,
            top_k=2,
            thresholds={"sound": (0.5, 0.4), "clipping": (0.5, 0.5)},
            hold=3,
        )

    def forward(self, windows: torch.Tensor, states: Sequence[None]) -> ModelOutput:
        """(batch, channels, window) -> scores (batch, 2) plus rms/peak/clipped per window."""
        x = windows.reshape(windows.shape[0], -1)
        rms = torch.sqrt(torch.mean(x.double() ** 2, dim=1)).numpy()
        peak = x.abs().amax(dim=1).numpy().astype(np.float64)
        clipped = (x.abs() >= FULL_SCALE).sum(dim=1).numpy()
        with np.errstate(divide="ignore"):
            rms_db = np.maximum(20 * np.log10(rms), FLOOR_DBFS)
            peak_db = np.maximum(20 * np.log10(peak), FLOOR_DBFS)
        scores = np.stack([np.clip((rms_db + 60.0) / 60.0, 0.0, 1.0), (clipped > 0).astype(np.float64)], axis=1)
        extras = [
            {"rms_dbfs": round(float(r), 2), "peak_dbfs": round(float(p), 2), "clipped": int(c)}
            for r, p, c in zip(rms_db, peak_db, clipped)
        ]
        return ModelOutput(scores.astype(np.float32), extras)


def make_level() -> Level:
    return Level()
