"""PacedInput: take the stage's input in turns of ``period_s``, not once per arriving message.

The runtime's Inbox wakes whenever a message is ready, and its ``gather_s`` still polls once
per message within the gathering window. At 16 streams a thousand small messages a second
arrive spread evenly, so that is a thousand wake-ups a second, which cost the web view more
than the messages themselves. The view does not need them sooner than its next publish:
here the loop sleeps until ``period_s`` after its last drain and then takes everything
queued at once (ZeroMQ holds it meanwhile, within the socket's high-water mark).
"""

from __future__ import annotations

import time
from typing import Any

from common.transport.inbox import MAX_BATCH, Inbox


class PacedInput:
    """An Input (common.runtime.stage) over an Inbox that drains at most once per ``period_s``."""

    def __init__(self, inbox: Inbox, period_s: float) -> None:
        self.inbox, self.period_s = inbox, period_s
        self._next = 0.0  # monotonic s: no drain before this

    @property
    def received(self) -> int:
        return self.inbox.received

    @property
    def connected(self) -> int:
        return self.inbox.connected

    def receive(self, timeout_s: float, gather_s: float = 0.0, limit: int = MAX_BATCH) -> list[Any]:
        hold = self._next - time.monotonic()
        if hold > 0:
            time.sleep(min(hold, timeout_s))  # bounded by the loop's timeout (at most 0.1 s): stop stays prompt
            timeout_s -= hold
            if timeout_s <= 0:
                return []
        out = self.inbox.receive(timeout_s, 0.0, limit)
        if out:
            self._next = time.monotonic() + self.period_s
        return out

    def housekeeping(self) -> None:
        self.inbox.housekeeping()

    def close(self) -> None:
        self.inbox.close()
