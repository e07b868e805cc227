"""Wake-word names: what ``info`` lists, and which of our labels a ``detect{names}`` asks for.

``info`` lists the labels of the wakeword model as they are (``hey_jarvis``); Home Assistant
stores the one a user picks and sends it back in ``detect{names}``, then accepts only a
``detection`` whose ``name`` is exactly the one it sent (homeassistant/components/wyoming/
wake_word.py compares them). So a detection carries the name the client asked for.

Names are matched loosely, as wyoming-openwakeword does: case, spaces and '-' vs '_', and a
version suffix (``hey_jarvis_v0.1``, its file names, which pipelines set up against it store)
are ignored. A client that sends no names (Home Assistant's "default") gets every wake word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_VERSION = re.compile(r"_v\d+(\.\d+)*$")
MAX_NAMES = 64  # names one detect may carry
MAX_NAME_LEN = 128


def canonical(name: str) -> str:
    """``"Hey Jarvis"``, ``"hey-jarvis"``, ``"hey_jarvis_v0.1"`` -> ``"hey_jarvis"``."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return _VERSION.sub("", key)


def phrase(label: str) -> str:
    """What a person says: ``hey_jarvis`` -> ``hey jarvis``."""
    return label.replace("_", " ")


@dataclass(frozen=True)
class Wanted:
    """The wake words one detection listens for: label -> the name to answer with."""

    reply: dict[str, str]
    unknown: tuple[str, ...] = ()


def resolve(names: Sequence[str] | None, served: Iterable[str]) -> Wanted:
    """Map a detect's ``names`` (None or empty: all) to served labels; names we do not serve
    are returned in ``unknown``."""
    served = list(served)
    if not names:
        return Wanted({label: label for label in served})
    by_key = {canonical(label): label for label in served}
    reply: dict[str, str] = {}
    unknown: list[str] = []
    for name in names:
        label = by_key.get(canonical(name))
        if label is None:
            unknown.append(name)
        else:
            reply.setdefault(label, name)
    return Wanted(reply, tuple(unknown))


def check_names(value: object) -> list[str] | None:
    """A detect's ``names`` field, validated: None, or a bounded list of short strings."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise ValueError(f"names must be a list of at most {MAX_NAMES} strings")
    for v in value:
        if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME_LEN:
            raise ValueError(f"each name must be a string of 1-{MAX_NAME_LEN} characters")
    return value
