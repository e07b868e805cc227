"""soundbus classify stage: tensors in, labelled time spans out.

One worker process runs one model (``soundbus classify --model NAME``) over any number of
streams. Map of the package:
- ``worker``   ClassifyLogic: one wake-up's tensors -> each stream's slot -> batched model calls
               -> Result messages; ``run`` puts it on the shared runtime
- ``stream``   StreamSlot: one stream's continuity, windows, model state, events, losses
- ``windows``  a stream's audio cut into windows with a hop, in audio time
- ``batching`` one forward pass for many streams' windows, a failing window isolated
- ``events``   onset/offset events with hysteresis
- ``models/``  the model interface (base) and the built-in models
- ``gate``     a speech decision confirmed by YAMNet (used by ``soundbus eval``)
- ``tail``     ``soundbus tail``: what was heard, for people (no torch)
"""
