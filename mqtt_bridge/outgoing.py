"""What waits for the broker: the latest value per state topic, and a bounded queue of events.

While the broker is away (or slow), the pipeline goes on: a newer state replaces the
waiting one on the same topic (an ON that turned OFF meanwhile is sent as OFF only), so
states need memory for one value per topic; events are each worth sending, so they queue,
up to ``max_events``; past it the oldest is dropped and counted.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class Kind(enum.Enum):
    """How a publication waits and goes: all but EVENT keep the latest per topic and are retained."""

    AVAILABILITY = 0  # sent first after a reconnect
    STATE = 1  # discovery configs, ON/OFF (and clears: b"")
    TELEMETRY = 2  # levels, labels, stats: periodic, superseded within a second: always QoS 0
    EVENT = 3  # not retained: one JSON message per onset/offset


@dataclass(frozen=True, slots=True)
class Publication:
    """One MQTT message to publish: ``payload`` bytes on ``topic``; ``retain`` for states."""

    topic: str
    payload: bytes
    kind: Kind = Kind.STATE

    @property
    def retain(self) -> bool:
        return self.kind is not Kind.EVENT


class Outgoing:
    """Publications waiting for the broker, in the order they go: availability, states, events."""

    def __init__(self, max_events: int = 1000) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events
        # topic -> latest publication: availability first, then states and telemetry.
        self._latest: tuple[dict[str, Publication], dict[str, Publication]] = ({}, {})
        self.events: deque[Publication] = deque()
        self.events_dropped = 0  # the oldest queued events, dropped when the queue was full
        self.states_coalesced = 0  # states replaced by a newer value before they were sent

    def push(self, pubs: list[Publication]) -> None:
        for p in pubs:
            if p.kind is Kind.EVENT:
                if len(self.events) >= self.max_events:
                    self.events.popleft()
                    self.events_dropped += 1
                self.events.append(p)
            else:
                waiting = self._latest[p.kind is not Kind.AVAILABILITY]
                if p.topic in waiting:
                    self.states_coalesced += 1
                waiting[p.topic] = p

    def take(self, limit: int) -> list[Publication]:
        """Up to ``limit`` publications, removed from the queue (availability, then states, then events)."""
        out: list[Publication] = []
        for waiting in self._latest:
            while waiting and len(out) < limit:
                topic = next(iter(waiting))
                out.append(waiting.pop(topic))
        while self.events and len(out) < limit:
            out.append(self.events.popleft())
        return out

    def give_back(self, pubs: list[Publication]) -> None:
        """Put back publications the broker link did not take, ahead of what waits (order kept);
        a newer state already waiting for the same topic wins."""
        for i, waiting in enumerate(self._latest):
            back = {p.topic: p for p in pubs if p.kind is not Kind.EVENT and (p.kind is not Kind.AVAILABILITY) == i
                    and p.topic not in waiting}
            if back:
                back.update(waiting)
                waiting.clear()
                waiting.update(back)
        for p in reversed([p for p in pubs if p.kind is Kind.EVENT]):
            if len(self.events) >= self.max_events:
                self.events_dropped += 1  # the queue filled meanwhile: this is now the oldest
                continue
            self.events.appendleft(p)

    def __len__(self) -> int:
        return len(self._latest[0]) + len(self._latest[1]) + len(self.events)
