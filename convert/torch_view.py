"""A received tensor message as a ``torch.Tensor`` (channels, frames), without copying.

The correct version of what the seed article tried to write: torchaudio has no
``Waveform`` class; a waveform is a float32 tensor shaped (channels, frames) with its
sample rate carried alongside::

    from common.protocol import decode
    from convert.torch_view import to_torch

    msg = decode(sock.recv_multipart(copy=False))
    wave, rate = to_torch(msg)          # wave.shape == (channels, frames), float32
    scores = model(wave, rate)

torch is imported on first call, so ``convert`` itself never needs it. The tensor shares
memory with the message payload: treat it as read-only (``wave.clone()`` to modify it).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from common.protocol import Kind, Message

if TYPE_CHECKING:  # pragma: no cover
    import torch


def to_numpy(msg: Message) -> tuple[np.ndarray, int]:
    """(float32 array (channels, frames) viewing the payload, sample rate in Hz)."""
    h = msg.header
    if h.kind is not Kind.TENSOR or h.format != "f32" or h.layout != "planar":
        raise ValueError(
            f"expected a tensor message (f32, planar), got kind={h.kind.value} format={h.format} layout={h.layout}"
        )
    arr = np.frombuffer(msg.payload, dtype="<f4").reshape(h.channels, h.frames)
    if not arr.flags.aligned:  # tiny ZeroMQ messages may live unaligned inside the message struct
        arr = arr.copy()
    return arr, h.rate


def to_torch(msg: Message) -> tuple["torch.Tensor", int]:
    """(torch.float32 tensor (channels, frames) sharing the payload's memory, sample rate in Hz)."""
    import torch

    arr, rate = to_numpy(msg)
    with warnings.catch_warnings():
        # A received ZeroMQ frame is read-only; torch warns that tensors are not.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(arr), rate
