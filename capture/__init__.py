"""soundbus capture stage: audio sources -> raw PCM chunks on ZeroMQ (protocol v2, kind ``raw``).

Map of the package:
- ``spec``      parses ``--source`` specs (``file:``, ``device:``, ``loopback:``, ``pipe:``, ``url:``, ``synth:``)
- ``framer``    cuts any source's samples into fixed-size chunks; holds (epoch, seq, offset) per stream
- ``sources/``  one small module per source kind; none runs a thread of its own: paced sources
                produce on the loop's clock, pipes and ffmpeg are read when their fds are
                readable, device callbacks put blocks on the loop's one queue
- ``devices``   PortAudio/PulseAudio device listing and lookup (``soundbus devices``)
- ``runner``    the loop on the shared runtime: one queue, one publisher, heartbeats, watchdog, exit
- ``cli``       ``soundbus capture`` / ``soundbus devices`` (also ``python -m capture``)

Nothing here imports torch: capture runs on the smallest boxes.
"""
