"""The MQTT topic layout, label keys and Home Assistant ids: pure functions of names.

Topics, under a prefix (default ``soundbus/``)::

    soundbus/bridge/<node>/status                  online | offline   retained, the last will
    soundbus/bridge/<node>/stats                   JSON counters       retained, every 10 s
    soundbus/stream/<stream>/status                online | offline   retained
    soundbus/stream/<stream>/level                 JSON dBFS           retained, at most --rate per s
    soundbus/stream/<stream>/labels                JSON top labels of every model, retained, at most --rate per s
    soundbus/stream/<stream>/<model>/state/<key>   ON | OFF            retained, on each onset/offset
    soundbus/stream/<stream>/<model>/event         JSON per onset/offset, not retained

``<key>`` is the label as a slug (``Vehicle horn, car horn, honking`` ->
``vehicle_horn_car_horn_honking``): MQTT topic levels must not contain ``/``, ``+`` or
``#``, and Home Assistant object ids allow only ``[a-zA-Z0-9_-]``. Stream ids and model
names (letters, digits, ``.``, ``_``, ``-``; common.wire.messages.is_name) go into topics
as they are.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_NOT_OBJECT_ID = re.compile(r"[^A-Za-z0-9_-]")
NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def label_key(label: str) -> str:
    """A label as a topic level and id part: lower case, runs of other characters -> ``_``.

    A label with no letter or digit at all (``!!``) gets ``label_<crc32 hex>`` so it still
    has a key. (The 521 YAMNet labels give 521 distinct keys.)
    """
    key = _NOT_SLUG.sub("_", label.lower()).strip("_")
    return key or f"label_{zlib.crc32(label.encode()):08x}"


def object_id(text: str) -> str:
    """``text`` with only ``[a-zA-Z0-9_-]`` (Home Assistant's object and node id characters).

    When characters had to be replaced (``.`` in a stream id), the crc32 of the original is
    appended, so ``a.b`` and ``a_b`` stay different ids, and the same text always gives
    the same id (unique ids stay stable across restarts).
    """
    safe = _NOT_OBJECT_ID.sub("_", text)
    return safe if safe == text else f"{safe}_{zlib.crc32(text.encode()):08x}"


@dataclass(frozen=True)
class Topics:
    """Every topic the bridge publishes or reads, from the prefix, node id and discovery prefix.

    ``prefix`` ends with ``/`` (or is empty); ``node`` is the bridge's id (``NODE_ID``);
    ``discovery`` is Home Assistant's discovery prefix (default ``homeassistant``).
    """

    prefix: str = "soundbus/"
    node: str = "soundbus"
    discovery: str = "homeassistant"

    # -- the bridge ------------------------------------------------------------------------

    @property
    def bridge_status(self) -> str:
        return f"{self.prefix}bridge/{self.node}/status"

    @property
    def bridge_stats(self) -> str:
        return f"{self.prefix}bridge/{self.node}/stats"

    # -- streams ---------------------------------------------------------------------------

    def stream_status(self, stream: str) -> str:
        return f"{self.prefix}stream/{stream}/status"

    def level(self, stream: str) -> str:
        return f"{self.prefix}stream/{stream}/level"

    def labels(self, stream: str) -> str:
        return f"{self.prefix}stream/{stream}/labels"

    def state(self, stream: str, model: str, key: str) -> str:
        return f"{self.prefix}stream/{stream}/{model}/state/{key}"

    def event(self, stream: str, model: str) -> str:
        return f"{self.prefix}stream/{stream}/{model}/event"

    def parse_state(self, topic: str) -> tuple[str, str, str] | None:
        """(stream, model, key) of a state topic of this layout, else None."""
        head = f"{self.prefix}stream/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 4 or parts[2] != "state" or not all(parts):
            return None
        return parts[0], parts[1], parts[3]

    # -- Home Assistant ----------------------------------------------------------------------

    @property
    def ha_status(self) -> str:
        """Where Home Assistant announces itself (its birth message ``online``)."""
        return f"{self.discovery}/status"

    def config(self, component: str, oid: str) -> str:
        """``<discovery>/<component>/<node>/<object_id>/config``."""
        return f"{self.discovery}/{component}/{self.node}/{oid}/config"

    def config_filters(self) -> list[str]:
        """Subscriptions that read back this node's retained discovery configs."""
        return [f"{self.discovery}/{c}/{self.node}/+/config" for c in ("binary_sensor", "sensor")]

    def parse_config(self, topic: str) -> tuple[str, str] | None:
        """(component, object id) of one of this node's config topics, else None."""
        head = f"{self.discovery}/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 4 or parts[1] != self.node or parts[3] != "config" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]

    # -- ids -------------------------------------------------------------------------------

    @property
    def bridge_device_id(self) -> str:
        return f"soundbus_{self.node}"

    def stream_device_id(self, stream: str) -> str:
        return f"soundbus_{self.node}_{object_id(stream)}"

    def label_object_id(self, stream: str, model: str, key: str) -> str:
        return object_id(f"{stream}_{model}_{key}")

    def level_object_id(self, stream: str) -> str:
        return object_id(f"{stream}_level")

    def unique_id(self, oid: str) -> str:
        """Home Assistant's unique_id of an entity: the node and its object id (stable across restarts)."""
        return f"soundbus_{self.node}_{oid}"
