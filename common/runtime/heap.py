"""Keep garbage-collector pauses out of a stage's latency.

CPython's full (generation 2) collection walks every tracked object. A classify worker has
torch and a model loaded, ~165,000 objects: one full collection there took 150-160 ms on
this project's 2-core test machine. Every result due at that moment is late by that much,
and at 50+ streams the steady garbage of the message loop triggers one every few seconds:
that was the p99 latency jump in bench_capacity (80 ms -> 190-250 ms).

Everything alive when the loop starts (modules, the model, the stage's logic) lives for the
whole process, so :func:`settle` freezes it (``gc.freeze``, made for exactly this: CPython
moves those objects to a permanent generation that collections skip). Later collections walk
only what the loop created: streams, queued messages.

It does not collect first. A ``gc.collect()`` at that moment, while the just-bound CURVE
sockets were handshaking, made a capture box's first handshake fail and stall (2 of 6 runs of
tests/net/test_net_two_hosts.py with three busy loops on the 2 cores; 0 of 8 with the freeze
alone, 0 of 6 with neither). The cause inside pyzmq or libzmq was not found. Garbage left from
start-up stays frozen; it is made once.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Exempt every object alive now from later collections."""
    gc.freeze()
