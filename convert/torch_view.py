"""A received tensor message as a ``torch.Tensor`` (channels, samples), without copying.

The correct version of what the seed article tried to write: torchaudio has no
``Waveform`` class; a waveform is a float32 tensor shaped (channels, samples) with its
sample rate carried alongside::

    from common.wire import decode
    from convert.torch_view import to_torch

    msg = decode(sock.recv())
    wave, rate = to_torch(msg)          # wave.shape == (channels, samples), float32
    scores = model(wave, rate)

torch is imported on first call, so ``convert`` itself never needs it. The tensor shares
memory with the message payload: treat it as read-only (``wave.clone()`` to modify it).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from common.wire.codec import Audio
from common.wire.topics import Kind

if TYPE_CHECKING:  # pragma: no cover
    import torch


def to_numpy(msg: Audio) -> tuple[np.ndarray, int]:
    """(float32 array (channels, samples) viewing the payload, sample rate in Hz)."""
    if not isinstance(msg, Audio) or msg.kind is not Kind.TENSOR:
        raise ValueError(f"expected a tensor message, got {type(msg).__name__} {getattr(msg, 'kind', '')}")
    h = msg.header
    arr = np.frombuffer(msg.payload, dtype="<f4").reshape(h.channels, h.samples)
    if not arr.flags.aligned:  # tiny ZeroMQ messages may live unaligned inside the message struct
        arr = arr.copy()
    return arr, h.rate


def to_torch(msg: Audio) -> tuple["torch.Tensor", int]:
    """(torch.float32 tensor (channels, samples) sharing the payload's memory, sample rate in Hz)."""
    import torch

    arr, rate = to_numpy(msg)
    with warnings.catch_warnings():
        # A received ZeroMQ message is read-only; torch warns that tensors are not.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr), rate
