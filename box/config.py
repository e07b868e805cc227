"""One file describes a box: what ``soundbus up`` runs, as typed structures with bounds.

A YAML (``.yaml``/``.yml``) or TOML (``.toml``) file is decoded by msgspec into
:class:`BoxConfig`; a value of the wrong type or out of bounds, or a key that does not
exist, is one sentence naming the file, the line and the key. Every ``up`` flag keeps
working and overrides the file; ``soundbus up --print-config`` prints the result.

    capture:
      sources: [default]            # or file:PATH, loopback, url:rtsp://..., synth:tone:440 ...
    classify:
      models: [vad, yamnet]
    mqtt:
      broker: localhost:1883        # credentials from $SOUNDBUS_MQTT_USERNAME / _PASSWORD
    events:
      dir: /var/lib/soundbus/events

docs/config.md lists every key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from common.errors import UserError

Port = Annotated[int, Meta(ge=1024, le=65535)]
Text = Annotated[str, Meta(min_length=1, max_length=1024)]


class Capture(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Sources (``soundbus capture --source`` specs; none: the bundled demo recording) and their format."""

    sources: list[Text] = []
    chunk_ms: Annotated[float, Meta(ge=0.1, le=1000)] = 20.0
    rate: Annotated[int, Meta(ge=1, le=768_000)] | None = None
    channels: Annotated[int, Meta(ge=1, le=64)] | None = None
    format: Literal["s16", "s32", "f32"] | None = None
    fast: bool = False  # files: as fast as possible
    loop: bool = False  # files: start over at the end


class Convert(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Applies to every converter (``up`` runs one per sample rate its models need)."""

    quality: Literal["VHQ", "HQ", "MQ", "LQ", "QQ", "LD"] = "HQ"
    gap_fill_ms: Annotated[float, Meta(ge=0, le=10_000)] = 100.0
    batch_wait_ms: Annotated[float, Meta(ge=0, le=100)] = 2.0  # convert --batch-wait-ms's default


class Classify(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Models (one worker each), and what every worker shares."""

    models: Annotated[list[Text], Meta(min_length=1, max_length=32)] = msgspec.field(default_factory=lambda: ["vad"])
    batch_wait_ms: Annotated[float, Meta(ge=0, le=1000)] = 5.0
    max_lag_ms: Annotated[float, Meta(ge=0, le=3_600_000)] = 1000.0
    thresholds: list[Text] = []  # [LABEL=]ON[:OFF], as classify --threshold


class Tail(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    enabled: bool = True
    json: bool = False
    every_window: bool = False


class Record(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Record the pipeline's messages (strftime codes in ``file`` are filled in at start)."""

    file: Text
    kinds: list[Literal["raw", "tensor", "result", "hb", "event"]] = msgspec.field(
        default_factory=lambda: ["raw", "result"])


class Mqtt(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Results to an MQTT broker with Home Assistant discovery (``soundbus mqtt``); credentials come
    from $SOUNDBUS_MQTT_USERNAME / $SOUNDBUS_MQTT_PASSWORD or ``password_file``, never from here."""

    broker: Text
    password_file: Text | None = None
    topic_prefix: Text = "soundbus/"
    labels: list[Text] = []
    tls_ca: Text | None = None


class Events(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """The event history with audio clips (``soundbus events run``)."""

    dir: Text
    clip_format: Literal["flac", "wav", "opus"] = "flac"
    max_age_days: Annotated[float, Meta(gt=0, le=36500)] | None = None
    max_size_mb: Annotated[float, Meta(ge=1, le=10_000_000)] | None = None


class Web(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """The web view (``soundbus web``); serving other hosts than this one needs a token file."""

    listen: Text = "127.0.0.1:8550"
    token_file: Text | None = None


class Wyoming(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """A Wyoming wake-word service for Home Assistant (``soundbus wyoming``)."""

    port: Port = 10400
    host: Text = "127.0.0.1"
    zeroconf: bool = False


class Network(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Addresses of the pipeline's own links, on this machine: raw on ``base_port``, then tensors
    (one port per sample rate), then results (one per model), then stored events."""

    base_port: Annotated[int, Meta(ge=1024, le=65000)] = 5550  # room for the ports after it


class BoxConfig(Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    capture: Capture = Capture()
    convert: Convert = Convert()
    classify: Classify = Classify()
    tail: Tail = Tail()
    record: Record | None = None
    mqtt: Mqtt | None = None
    events: Events | None = None
    web: Web | None = None
    wyoming: Wyoming | None = None
    network: Network = Network()


def load(path: Path) -> BoxConfig:
    """Decode ``path`` (YAML or TOML by its suffix); UserError naming file, line and key on any mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist; pass the path of a YAML or TOML file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path} ({getattr(e, 'strerror', None) or e}).") from None
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise UserError(f"config file {path}: name it .yaml, .yml or .toml so soundbus knows how to read it.")
    toml = suffix == ".toml"
    try:
        if toml:
            return msgspec.toml.decode(text, type=BoxConfig)
        if not text.strip():
            return BoxConfig()
        return msgspec.yaml.decode(text, type=BoxConfig)
    except msgspec.ValidationError as e:
        where = _path_of(str(e))
        line = _line_of(text, where, toml)
        at = f", line {line}" if line else ""
        raise UserError(f"{path}{at}: {_plain(str(e))}.") from None
    except msgspec.DecodeError as e:
        raise UserError(f"{path}: not valid {'TOML' if toml else 'YAML'} ({str(e).splitlines()[0]}).") from None


def dump(cfg: BoxConfig) -> str:
    """The configuration as YAML, every key with its value, defaults included (what ``--print-config``
    shows: the whole box, not only what the file changed)."""
    return msgspec.yaml.encode(_full(cfg)).decode()


def _full(value: object) -> object:
    """Builtins of ``value`` with defaults kept (to_builtins drops them: the Structs omit_defaults)."""
    if isinstance(value, Struct):
        return {f.encode_name: _full(getattr(value, f.name)) for f in msgspec.structs.fields(value)}
    if isinstance(value, list):
        return [_full(v) for v in value]
    return value


def _path_of(message: str) -> list[str | int]:
    """``... - at `$.classify.models[1]``` -> ["classify", "models", 1]."""
    m = re.search(r"at `\$(.*)`", message)
    out: list[str | int] = []
    for key, index in re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]", m.group(1) if m else ""):
        out.append(int(index) if index else key)
    unknown = re.match(r"Object contains unknown field `([^`]*)`", message)
    if unknown:  # the key itself is the mistake: point at its line
        out.append(unknown.group(1))
    return out


def _plain(message: str) -> str:
    """msgspec's message with the path written as keys (``classify.models[1]``)."""
    unknown = re.match(r"Object contains unknown field `([^`]*)`(?: - at `\$\.?(.*)`)?", message)
    if unknown:
        key = ".".join(k for k in (unknown.group(2), unknown.group(1)) if k)
        return f"{key}: no such key (docs/config.md lists every key)"
    m = re.search(r"(.*) - at `\$\.?(.*)`", message)
    if m:
        return f"{m.group(2) or 'the file'}: {m.group(1)[0].lower()}{m.group(1)[1:]}"
    return message


def _line_of(text: str, where: list[str | int], toml: bool) -> int | None:
    """1-based line of the value at ``where`` (YAML: from the parser's node marks)."""
    if not where:
        return None
    if toml:  # tomllib keeps no positions: the first line that assigns the last key
        key = next((k for k in reversed(where) if isinstance(k, str)), None)
        for n, line in enumerate(text.splitlines(), 1):
            if key and re.match(rf"\s*{re.escape(key)}\s*=", line):
                return n
        return None
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for step in where:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            found = next(((k, v) for k, v in node.value if getattr(k, "value", None) == step), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line + 1
        else:
            break
    return line
