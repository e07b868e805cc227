"""Write evaluate/data/labels.csv from the Debian packages installed here (a maintainer's tool).

    python -m evaluate.build_labels [--out evaluate/data/labels.csv]

Labels come from what each package says a file is (its name and folder, the activity it
belongs to), never from a model's output. Every rule is below; clips whose content the name
does not settle (a Santa hat's "sound", a face's, music that may have singing in it) are left
out or marked speech=unknown. Large groups are sampled deterministically (by hash of the
path), so the file is the same on every machine with the same package versions.

Packages (all in Debian bookworm main; licences from their debian/copyright):
  tuxpaint-stamps-default  GPL-2      animal, instrument, household, weather sounds; spoken
                                      descriptions and numbers in many languages
  klettres-data            GPL-2+     letters and syllables spoken in ~20 languages
  gcompris-qt-data         GPL-3+ (sounds: GPL-3, CC0, CC-BY per activity README)
                                      instruments, farm animals, world music, everyday sounds
  sound-theme-freedesktop  CC-BY(-SA)-3.0, GPL-2: bell, alarm clock, phone, shutter, spoken channels
  alsa-utils               GPL-2+     spoken channel names
  lincity-ng-data          GPL-2+ (sound effects dual GPL / CC-BY-SA 2.0): city soundscapes of
                                      water, fire, trains, traffic, industry (voices left out)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
from collections import defaultdict
from pathlib import Path

from evaluate.labels import COLUMNS, DEFAULT_LABELS
from evaluate.rcc import RccArchive

TUX = Path("/usr/share/tuxpaint/stamps")
KLETTRES = Path("/usr/share/klettres")
GCOMPRIS = Path("/usr/share/gcompris-qt/rcc")
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")
ALSA = Path("/usr/share/sounds/alsa")
LINCITY = Path("/usr/share/games/lincity-ng/sounds")

PER_LANGUAGE_DESC = 20  # tuxpaint spoken descriptions per language
PER_LANGUAGE_NUMBERS = 3  # tuxpaint spoken numbers per language
PER_LANGUAGE_KLETTRES = 12
AUDIO = (".ogg", ".wav", ".oga")

# tuxpaint stamp sounds (not descriptions), by path prefix -> (family, speech); None: left out
TUX_RULES: list[tuple[str, tuple[str, str] | None]] = [
    ("animals/", ("animal", "no")),
    ("food/", ("other", "no")),  # an apple's crunch
    ("hobbies/camera", ("machine", "no")),
    ("hobbies/music/", ("music", "no")),
    ("household/rubberduck", ("other", "no")),
    ("household/", ("machine", "no")),  # kettle, toilet, vacuum cleaner, washing machine, tools, dishes
    ("military/final-roll-call", ("music", "no")),  # a bugle call
    ("naturalforces/", ("nature", "no")),  # lightning
    ("seasonal/halloween/bat", ("animal", "no")),
    ("seasonal/halloween/blackcat", ("animal", "no")),
    ("seasonal/newyears/fireworks", ("other", "no")),
    ("seasonal/christmas/gift", ("other", "no")),
    ("seasonal/christmas/hard_candy", ("other", "no")),
    ("vehicles/emergency/", ("alarm", "no")),  # a fire engine's siren
    ("symbols/alphabets/english/", ("speech", "yes")),  # letters read aloud (en_GB)
    # left out, content not settled by the name: santa hat, ghost, spider, dreidel sides,
    # faces, flags, road signs, the lunar lander, a cartoon bathyscaphe
]

GCOMPRIS_RULES: list[tuple[str, tuple[str, str] | None]] = [
    ("instruments/resource/", ("music", "no")),
    ("explore_farm_animals/resource/animals/", ("animal", "no")),
    ("explore_world_music/resource/music/", ("music", "unknown")),  # may have singing (opera, mariachi)
    ("memory-sound/resource/LRHeart", ("human", "no")),
    ("memory-sound/resource/LRApplauses", ("human", "unknown")),  # a crowd may cheer
    ("memory-sound/resource/LRFactory", ("machine", "no")),
    ("memory-sound/resource/LRBark", ("animal", "no")),
    ("memory-sound/resource/LRBuddhist_gong", ("music", "no")),
    ("memory-sound/resource/LRDoor", ("machine", "no")),
    ("memory-sound/resource/LRRain", ("nature", "no")),
    ("memory-sound/resource/LRFrogsInPondDuringStorm", ("nature", "no")),
    ("memory-sound/resource/LRStartAndStopCarEngine", ("machine", "no")),
    ("memory-sound/resource/LRTrain", ("machine", "no")),
    ("memory-sound/resource/guitar", ("music", "no")),
    ("memory-sound/resource/LRObject_falling", ("other", "no")),
    ("memory-sound/resource/LRHits", ("other", "no")),
    ("canal_lock/resource/water_fill", ("nature", "no")),
    ("canal_lock/resource/door", ("machine", "no")),
    ("canal_lock/resource/lock", ("machine", "no")),
    ("clickgame/resource/drip", ("nature", "no")),
    ("clickgame/resource/bubble", ("nature", "no")),
    ("watercycle/resource/bubble", ("nature", "no")),
    ("railroad/resource/sounds/train", ("machine", "no")),
    ("traffic/resource/car", ("machine", "no")),
    ("guessnumber/resource/helicopter", ("machine", "no")),
    ("money/resource/money", ("machine", "no")),  # coins
    ("melody/resource/xylofon", ("music", "no")),
    ("melody/resource/knock", ("machine", "no")),  # a knock on a door
]

# lincity-ng soundscapes by file name prefix; the ones of places with people (homes, schools,
# markets, hospitals, sports) may have voices and are left out, as are mixed ones (harbour, farm).
LINCITY_RULES: list[tuple[str, tuple[str, str]]] = [
    ("Water", ("nature", "no")),
    ("Fire", ("nature", "no")),  # Fire1-3 and FireWasteland; FireStation is excluded below
    ("ParklandLake", ("nature", "no")),
    ("RailTrain", ("machine", "no")),
    ("Trafic", ("machine", "no")),
    ("Industry", ("machine", "no")),
    ("CoalMine", ("machine", "no")),
    ("OreMine", ("machine", "no")),
    ("Rocket", ("machine", "no")),
    ("ParklandPlane", ("machine", "no")),
    ("Blacksmith", ("machine", "no")),
    ("Mill", ("machine", "no")),
    ("PowerCoal", ("machine", "no")),
    ("Recycle", ("machine", "no")),
]

FREEDESKTOP_FILES = {
    "alarm-clock-elapsed.oga": ("alarm", "no"),
    "bell.oga": ("alarm", "no"),
    "phone-incoming-call.oga": ("alarm", "no"),
    "phone-outgoing-busy.oga": ("alarm", "no"),
    "camera-shutter.oga": ("machine", "no"),
    "complete.oga": ("other", "no"),
    "trash-empty.oga": ("other", "no"),
}


def _rank(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()


def _first(paths: list[str], n: int) -> list[str]:
    """n paths chosen by hash (stable, unrelated to name order)."""
    return sorted(sorted(paths, key=_rank)[:n])


def _match(rules, rel: str):
    for prefix, verdict in rules:
        if prefix in rel if "/resource/" in prefix else rel.startswith(prefix):
            return verdict
    return None


def tuxpaint_rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    pkg = "tuxpaint-stamps-default"
    files = sorted(str(p.relative_to(TUX)) for p in TUX.rglob("*") if p.suffix in AUDIO)
    desc: dict[str, list[str]] = defaultdict(list)
    numbers: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        m = re.search(r"_desc(?:_([A-Za-z_]+))?\.(ogg|wav)$", rel)
        if m:
            desc[m.group(1) or "en"].append(rel)
            continue
        m = re.fullmatch(r"symbols/math/\d(?:_([A-Za-z_]+))?\.ogg", rel)
        if m:
            numbers[m.group(1) or "en"].append(rel)
            continue
        verdict = _match(TUX_RULES, rel)
        if verdict:
            note = "letter read aloud (en_GB)" if verdict[0] == "speech" else ""
            rows.append(_row(TUX / rel, pkg, *verdict, note))
    letters = [r for r in rows if r["family"] == "speech"]
    keep = set(_first([r["path"] for r in letters], 6))
    rows = [r for r in rows if r["family"] != "speech" or r["path"] in keep]
    for lang, paths in sorted(desc.items()):
        rows += [_row(TUX / p, pkg, "speech", "yes", f"description read aloud ({lang})")
                 for p in _first(paths, PER_LANGUAGE_DESC)]
    for lang, paths in sorted(numbers.items()):
        rows += [_row(TUX / p, pkg, "speech", "yes", f"number read aloud ({lang})")
                 for p in _first(paths, PER_LANGUAGE_NUMBERS)]
    return rows


def klettres_rows() -> list[dict[str, str]]:
    rows = []
    for lang_dir in sorted(p for p in KLETTRES.iterdir() if p.is_dir() and p.name not in ("icons", "pics")):
        paths = [str(p) for p in lang_dir.rglob("*") if p.suffix in AUDIO]
        rows += [_row(Path(p), "klettres-data", "speech", "yes", f"letter or syllable read aloud ({lang_dir.name})")
                 for p in _first(paths, PER_LANGUAGE_KLETTRES)]
    return rows


def gcompris_rows() -> list[dict[str, str]]:
    rows = []
    for rcc in sorted(GCOMPRIS.glob("*.rcc")):
        archive = RccArchive(rcc)
        for member in archive.names():
            if not member.endswith(AUDIO):
                continue
            verdict = _match(GCOMPRIS_RULES, member)
            if verdict:
                rows.append(_row(Path(f"{rcc}!{member}"), "gcompris-qt-data", *verdict, ""))
    return rows


def freedesktop_rows() -> list[dict[str, str]]:
    pkg = "sound-theme-freedesktop"
    rows = [_row(FREEDESKTOP / name, pkg, *v, "") for name, v in sorted(FREEDESKTOP_FILES.items())]
    rows += [_row(p, pkg, "speech", "yes", "channel name read aloud (en)")
             for p in sorted(FREEDESKTOP.glob("audio-channel-*.oga"))]
    return rows


def alsa_rows() -> list[dict[str, str]]:
    return [_row(p, "alsa-utils", "speech", "yes", "channel name read aloud (en)")
            for p in sorted(ALSA.glob("*.wav")) if p.name != "Noise.wav"]  # Noise.wav is generated noise


def lincity_rows() -> list[dict[str, str]]:
    rows = []
    for p in sorted(LINCITY.glob("*.wav")):
        verdict = next((v for prefix, v in LINCITY_RULES if p.name.startswith(prefix)), None)
        if verdict and not p.name.startswith("FireStation"):
            rows.append(_row(p, "lincity-ng-data", *verdict, ""))
    return rows


def _row(path: Path, package: str, family: str, speech: str, note: str) -> dict[str, str]:
    return {"path": str(path), "package": package, "family": family, "speech": speech, "spans": "", "note": note}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_LABELS)
    args = ap.parse_args(argv)
    for root, pkg in ((TUX, "tuxpaint-stamps-default"), (KLETTRES, "klettres-data"), (GCOMPRIS, "gcompris-qt-data"),
                      (FREEDESKTOP, "sound-theme-freedesktop"), (ALSA, "alsa-utils"), (LINCITY, "lincity-ng-data")):
        if not root.is_dir():
            print(f"build_labels: {root} is missing; apt-get install {pkg}", file=sys.stderr)
            return 2
    rows = tuxpaint_rows() + klettres_rows() + gcompris_rows() + freedesktop_rows() + alsa_rows() + lincity_rows()
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        f.write("# Labelled real recordings from Debian packages; written by `python -m evaluate.build_labels`.\n")
        f.write("# Format and sources: docs/accuracy.md.\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["family"]] += 1
    print(f"{len(rows)} clips -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
