"""soundbus capture stage: audio sources -> raw PCM frames on ZeroMQ (protocol v1, kind ``raw``).

Map of the package:
- ``spec``      parses ``--source`` specs (``file:``, ``device:``, ``loopback:``, ``pipe:``, ``url:``, ``synth:``)
- ``framer``    cuts any source's samples into fixed-size frames; holds (epoch, seq, offset) per stream
- ``sources/``  one small module per source kind, each a thread feeding a ``StreamFramer``
- ``devices``   PortAudio/PulseAudio device listing and lookup (``soundbus devices``)
- ``runner``    the publishing loop: one socket, heartbeats, watchdog, end-of-file exit
- ``cli``       ``soundbus capture`` / ``soundbus devices`` (also ``python -m capture``)

Nothing here imports torch: capture runs on the smallest boxes.
"""
