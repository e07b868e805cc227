"""MqttLogic: the bridge as a stage on the shared runtime (results in, nothing out on the bus).

Each wake-up: results and stored events go through :class:`BridgeCore`; what the broker
link noted (connected, lost, a message from Home Assistant or a config read back) is
applied; then whatever waits in :class:`Outgoing` is handed to paho, without blocking,
while the link is up and paho has caught up with the previous handover.
"""

from __future__ import annotations

import logging
from typing import Any

from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from common.wire.messages import Result, StoredEvent
from mqtt_bridge.broker import BrokerLink
from mqtt_bridge.core import BridgeCore
from mqtt_bridge.outgoing import Kind, Outgoing

log = logging.getLogger("soundbus.mqtt")

HANDOVER = 1000  # publications handed to paho per turn, at most
RETRY_S = 0.01  # with publications waiting and the link up, look again this soon


class MqttLogic:
    """StageLogic (common.runtime.stage) tying the core, the outgoing queue and the broker link."""

    def __init__(self, core: BridgeCore, outgoing: Outgoing, link: BrokerLink, metrics: StageMetrics,
                 models: set[str] | None = None) -> None:
        self.core, self.outgoing, self.link, self.metrics = core, outgoing, link, metrics
        self.models = models or None  # only these models (--model without --stream: not filterable by topic)
        core.outside_stats = self.outside_stats
        topics = core.cfg.topics
        self._ha_status = topics.ha_status
        self._discovery_head = f"{topics.discovery}/"

    def handle(self, batch: list[Any], now: Now) -> list[bytes]:
        core, push, mono, models = self.core, self.outgoing.push, now.mono, self.models
        for msg in batch:
            kind = type(msg)
            if models is not None and kind in (Result, StoredEvent) and msg.model not in models:
                continue
            if kind is Result:
                pubs = core.on_result(msg, mono)
            elif kind is StoredEvent:
                pubs = core.on_stored(msg, mono)
            else:
                continue
            if pubs:
                push(pubs)
        self._turn(mono)
        return []

    def tick(self, now: Now) -> list[bytes]:
        self._turn(now.mono)
        return []

    def _turn(self, mono: float) -> None:
        core, push = self.core, self.outgoing.push
        for note in self.link.notes():
            kind = note[0]
            if kind == "connected":
                push(core.on_connected())  # availability first (Outgoing's order), configs, states
            elif kind == "message":
                topic, payload = note[1], note[2]
                if topic == self._ha_status:
                    push(core.on_ha_status(payload))
                elif topic.startswith(self._discovery_head):
                    push(core.on_config(topic, payload))
        push(core.tick(mono))
        self._hand_over()

    def _hand_over(self) -> None:
        link, outgoing = self.link, self.outgoing
        if not link.connected or not len(outgoing) or link.busy():
            return
        batch = outgoing.take(HANDOVER)
        for i, p in enumerate(batch):
            if not link.publish(p):
                outgoing.give_back(batch[i:])
                return

    def wake_in(self, now: Now) -> float | None:
        wake = self.core.wake_in(now.mono)
        if len(self.outgoing) and self.link.connected:
            wake = min(wake, RETRY_S)
        return wake

    def finish(self, now: Now) -> list[bytes]:
        """Send what waits, then the streams and the bridge going offline (at most ~2 s); disconnect."""
        waiting = self.outgoing.take(len(self.outgoing))
        final = waiting + self.core.stop()
        if not self.link.connected:
            lost = sum(p.kind is Kind.EVENT for p in final)
            if lost:
                self.metrics.drop("events_unsent_at_stop", lost)
                log.warning("stopping while the MQTT broker is away: %d event message(s) not delivered", lost)
        self.link.stop(final)
        return []

    def outside_stats(self) -> dict[str, Any]:
        o, link = self.outgoing, self.link
        return {"events_dropped": o.events_dropped, "states_coalesced": o.states_coalesced, "waiting": len(o),
                "connected": link.connected, "connects": link.connects, "sent": link.sent,
                "inbound_dropped": link.inbound_dropped + link.notes_dropped}

    def summary(self) -> str:
        s = self.core.stats()
        return (f"mqtt: connected={s['connected']} sent={s['sent']} waiting={s['waiting']} "
                f"events={s['events']} events_dropped={s['events_dropped']} streams_online={s['streams_online']}")
