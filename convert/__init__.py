"""convert: raw PCM frames -> float32 (channels, frames) tensors at a model's rate.

Exact full-scale scaling (convert.formats), streaming per-stream resampling
(convert.resample, convert.stream), the stage loop (convert.worker) and a zero-copy
torch view of a received tensor message for library users (convert.torch_view).
This package never imports torch itself.
"""
