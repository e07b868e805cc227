"""convert: raw PCM chunks -> float32 (channels, samples) tensors at a model's rate.

Exact full-scale scaling (convert.formats), streaming per-stream resampling
(convert.resample, convert.stream: one StreamConverter per stream), the stage's logic
(convert.worker, run on common.runtime) and a zero-copy
torch view of a received tensor message for library users (convert.torch_view).
This package never imports torch itself.
"""
