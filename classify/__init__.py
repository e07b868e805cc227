"""soundbus classify stage: tensors in, labelled time spans out.

One worker process runs one model (``soundbus classify --model NAME``) over any number of
streams: per-stream windows (classify.windows), one batched forward pass across the streams
that have a window ready (classify.batching), onset/offset events with hysteresis
(classify.events), results published on ``result/`` topics (classify.worker).
``soundbus tail`` (classify.tail) prints them and needs no torch.
"""
