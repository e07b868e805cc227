"""Home Assistant's MQTT discovery rules, as documented, to check the bridge's configs against.

Home Assistant itself does not install here, so the documented schema is written down:
the discovery topic ``<discovery_prefix>/<component>/[<node_id>/]<object_id>/config`` with
ids of ``[a-zA-Z0-9_-]``; ``state_topic`` required for binary_sensor and sensor;
``device`` needs ``identifiers`` (or ``connections``) and takes effect only with a
``unique_id``; ``availability`` is a list of ``{topic, payload_available,
payload_not_available}`` and excludes ``availability_topic``; the device classes,
state classes and entity categories are the documented lists. Unknown keys are ignored by
Home Assistant, so a misspelt key would silently do nothing: every key must be a known one.
(Sources: home-assistant.io integrations/mqtt "MQTT Discovery", binary_sensor.mqtt,
sensor.mqtt, binary_sensor "device class".)
"""

from __future__ import annotations

import re
from typing import Any

DISCOVERY_TOPIC = re.compile(r"^(?P<prefix>.+)/(?P<component>binary_sensor|sensor)/(?:[a-zA-Z0-9_-]+/)?"
                             r"[a-zA-Z0-9_-]+/config$")
BINARY_SENSOR_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
COMMON_KEYS = {"name", "unique_id", "state_topic", "availability", "availability_mode", "device", "origin", "qos",
               "icon", "json_attributes_topic", "json_attributes_template", "entity_category", "value_template",
               "enabled_by_default", "expire_after", "force_update"}
KEYS = {
    "binary_sensor": COMMON_KEYS | {"payload_on", "payload_off", "device_class", "off_delay"},
    "sensor": COMMON_KEYS | {"unit_of_measurement", "state_class", "device_class", "suggested_display_precision"},
}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "sw_version", "hw_version",
               "via_device", "suggested_area", "configuration_url"}
TOPIC_OK = re.compile(r"^[^+#\x00]+$")


def problems(topic: str, payload: Any) -> list[str]:
    """What is wrong with one discovery config (empty: valid as documented)."""
    m = DISCOVERY_TOPIC.match(topic)
    if not m:
        return [f"{topic}: not <prefix>/<component>/[<node_id>/]<object_id>/config"]
    component = m["component"]
    if not isinstance(payload, dict):
        return [f"{topic}: payload is not a JSON object"]
    out = [f"{topic}: unknown key {k!r}" for k in payload if k not in KEYS[component]]
    st = payload.get("state_topic")
    if not isinstance(st, str) or not TOPIC_OK.match(st):
        out.append(f"{topic}: state_topic (required) missing or not a topic")
    if not isinstance(payload.get("unique_id"), str) or not payload["unique_id"]:
        out.append(f"{topic}: no unique_id (the device registry needs it)")
    dev = payload.get("device")
    if not isinstance(dev, dict) or not (dev.get("identifiers") or dev.get("connections")):
        out.append(f"{topic}: device without identifiers")
    else:
        out += [f"{topic}: unknown device key {k!r}" for k in dev if k not in DEVICE_KEYS]
        ids = dev.get("identifiers")
        if not (isinstance(ids, str) or (isinstance(ids, list) and all(isinstance(i, str) and i for i in ids))):
            out.append(f"{topic}: device identifiers must be a string or a list of strings")
    avail = payload.get("availability")
    if avail is not None:
        if "availability_topic" in payload:
            out.append(f"{topic}: availability together with availability_topic")
        if not isinstance(avail, list) or not all(isinstance(a, dict) and isinstance(a.get("topic"), str)
                                                  and TOPIC_OK.match(a["topic"]) for a in avail):
            out.append(f"{topic}: availability must be a list of {{topic, ...}}")
    if payload.get("availability_mode", "latest") not in ("all", "any", "latest"):
        out.append(f"{topic}: availability_mode not all/any/latest")
    if payload.get("qos", 0) not in (0, 1, 2):
        out.append(f"{topic}: qos not 0/1/2")
    if payload.get("entity_category") not in (None, *ENTITY_CATEGORIES):
        out.append(f"{topic}: entity_category not config/diagnostic")
    if not isinstance(payload.get("origin", {"name": "x"}).get("name"), str):
        out.append(f"{topic}: origin without a name")
    if component == "binary_sensor":
        if payload.get("device_class") not in (None, *BINARY_SENSOR_CLASSES):
            out.append(f"{topic}: binary_sensor device_class {payload.get('device_class')!r} is not documented")
        for k in ("payload_on", "payload_off"):
            if k in payload and not isinstance(payload[k], str):
                out.append(f"{topic}: {k} must be a string")
    else:
        if payload.get("state_class") not in (None, *STATE_CLASSES):
            out.append(f"{topic}: state_class not one of {sorted(STATE_CLASSES)}")
        if payload.get("state_class") and not isinstance(payload.get("value_template", ""), str):
            out.append(f"{topic}: value_template must be a template string")
    return out


def named_topics(payload: dict[str, Any]) -> set[str]:
    """Every topic a config makes Home Assistant subscribe to."""
    topics = {payload["state_topic"]}
    topics |= {a["topic"] for a in payload.get("availability", [])}
    if "json_attributes_topic" in payload:
        topics.add(payload["json_attributes_topic"])
    return topics


def template_keys(payload: dict[str, Any]) -> set[str]:
    """The ``value_json.KEY`` names a config's value_template reads."""
    return set(re.findall(r"value_json\.(\w+)", payload.get("value_template", "")))
