"""Logging at a bounded rate: the first few lines of each kind, then one line per interval with a count."""

from __future__ import annotations

import logging
import time

MAX_KEYS = 512  # distinct keys remembered; past it the table restarts (bounded, whatever arrives)


class RateLimitedLog:
    """Logs the first ``burst`` occurrences of each key, then one line per ``every_s`` with a count.

    Keys should name a kind of problem ("bad_field", "too_many_streams"), not a stream, so
    that 20,000 stream ids make a handful of lines, not 20,000.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 5.0, burst: int = 3) -> None:
        self.logger, self.every_s, self.burst = logger, every_s, burst
        self._seen: dict[str, list] = {}  # key -> [count, last log time, suppressed]

    def warning(self, key: str, msg: str) -> None:
        self.log(logging.WARNING, key, msg)

    def log(self, level: int, key: str, msg: str) -> None:
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None:
            if len(self._seen) >= MAX_KEYS:
                self._seen.clear()
            entry = self._seen[key] = [0, 0.0, 0]
        entry[0] += 1
        if entry[0] <= self.burst or now - entry[1] >= self.every_s:
            more = f" ({entry[2]} similar suppressed)" if entry[2] else ""
            self.logger.log(level, "%s%s", msg, more)
            entry[1], entry[2] = now, 0
        else:
            entry[2] += 1
