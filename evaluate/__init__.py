"""``soundbus eval``: how often the models are right, on labelled real recordings.

Labelled clips (evaluate/data/labels.csv, format in docs/accuracy.md) go through the real
pipeline as separate processes (capture file sources -> convert -> classify per model ->
tail --json); the results are scored per model: clip-level recall and precision per class,
false alarms per hour of non-target audio, onset/offset timing error, and the confusion
between families. classify.gate's speech gate is scored on the same results.
"""
