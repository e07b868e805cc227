"""Home Assistant MQTT discovery payloads: the bridge, a device per stream, its entities.

Format (Home Assistant's MQTT integration documentation, "MQTT Discovery", and the
binary_sensor.mqtt / sensor.mqtt pages): a retained JSON object on
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``; ``state_topic`` is
required for both components; ``unique_id`` makes the entity editable and keeps it the
same entity across restarts; ``device`` needs ``identifiers`` and ``via_device`` names the
device that routes its messages (here the bridge); ``availability`` is a list of
``{topic, payload_available, payload_not_available}``, and ``availability_mode: all``
makes an entity available only while every listed topic says ``online``. An empty
retained payload on the config topic removes the entity.

Every entity of a stream lists two availability topics: the bridge's (its last will
turns every entity unavailable when the bridge dies) and the stream's (results stopped).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mqtt_bridge.names import Topics

COMPONENTS = ("binary_sensor", "sensor")

try:
    VERSION = version("soundbus")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0"

ORIGIN = {"name": "soundbus", "sw_version": VERSION}


def _availability(t: Topics, stream: str | None) -> dict[str, Any]:
    topics = [t.bridge_status] + ([t.stream_status(stream)] if stream is not None else [])
    return {
        "availability": [{"topic": x, "payload_available": "online", "payload_not_available": "offline"}
                         for x in topics],
        "availability_mode": "all",
    }


def bridge_device(t: Topics) -> dict[str, Any]:
    return {"identifiers": [t.bridge_device_id], "name": f"soundbus bridge {t.node}", "manufacturer": "soundbus",
            "model": "MQTT bridge", "sw_version": VERSION}


def stream_device(t: Topics, stream: str) -> dict[str, Any]:
    return {"identifiers": [t.stream_device_id(stream)], "name": f"soundbus {stream}", "manufacturer": "soundbus",
            "model": "audio stream", "via_device": t.bridge_device_id}


def bridge_configs(t: Topics, qos: int) -> dict[str, dict[str, Any]]:
    """Config topic -> payload of the bridge's own entities (so the bridge device exists and shows drops)."""
    out = {}
    for key, name in (("events_dropped", "Events dropped"), ("results", "Results received")):
        oid = f"bridge_{key}"
        out[t.config("sensor", oid)] = {
            "name": name,
            "unique_id": t.unique_id(oid),
            "state_topic": t.bridge_stats,
            "value_template": f"{{{{ value_json.{key} }}}}",
            "state_class": "total_increasing",
            "entity_category": "diagnostic",
            "icon": "mdi:counter",
            "qos": qos,
            **_availability(t, None),
            "device": bridge_device(t),
            "origin": ORIGIN,
        }
    return out


def label_config(t: Topics, stream: str, model: str, label: str, key: str, qos: int) -> tuple[str, dict[str, Any]]:
    """(config topic, payload) of the binary_sensor that is ON while ``label`` is on in ``stream``."""
    oid = t.label_object_id(stream, model, key)
    return t.config("binary_sensor", oid), {
        "name": f"{label} ({model})",
        "unique_id": t.unique_id(oid),
        "state_topic": t.state(stream, model, key),
        "payload_on": "ON",
        "payload_off": "OFF",
        "device_class": "sound",
        "qos": qos,
        **_availability(t, stream),
        "device": stream_device(t, stream),
        "origin": ORIGIN,
    }


def level_config(t: Topics, stream: str, qos: int) -> tuple[str, dict[str, Any]]:
    """(config topic, payload) of the sensor showing the stream's RMS level in dBFS (from the ``level`` model).

    No ``device_class``: Home Assistant's ``sound_pressure`` means sound pressure level (dB
    SPL, dBA), and dBFS is a level relative to the converter's full scale, not a pressure.
    """
    oid = t.level_object_id(stream)
    return t.config("sensor", oid), {
        "name": "Level",
        "unique_id": t.unique_id(oid),
        "state_topic": t.level(stream),
        "value_template": "{{ value_json.rms_dbfs }}",
        "unit_of_measurement": "dBFS",
        "state_class": "measurement",
        "suggested_display_precision": 1,
        "icon": "mdi:waveform",
        "json_attributes_topic": t.level(stream),
        "qos": qos,
        **_availability(t, stream),
        "device": stream_device(t, stream),
        "origin": ORIGIN,
    }
