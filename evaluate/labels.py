"""The labels file: which recordings, what they are, and which part is held back.

CSV with a header line; ``#`` starts a comment line. Columns:

    path     the recording: absolute, or relative to the labels file; ``ARCHIVE.rcc!MEMBER``
             names a member of a Qt resource archive (GCompris ships its sounds that way)
    package  the Debian package that ships it (only used to say what to install)
    family   what the clip is, one of evaluate.families.FAMILIES
    speech   yes | no | unknown: does it contain speech (unknown: left out of speech scores,
             e.g. music that may have singing)
    spans    optional: where the sound is, ``START-END;START-END`` in seconds; empty means
             "find it by energy" (evaluate.audio.energy_span)
    note     optional free text

Each clip's split (``tune`` or ``heldout``) follows from a hash of its ``path`` text, so it
never changes with the machine or the order of the file; figures are reported on ``heldout``,
thresholds are chosen on ``tune`` only.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from evaluate.families import FAMILIES

COLUMNS = ("path", "package", "family", "speech", "spans", "note")
REQUIRED = ("path", "family", "speech")
SPEECH_VALUES = ("yes", "no", "unknown")
HELDOUT_PERCENT = 50
MAX_CLIPS = 100_000
MAX_FIELD = 4096
DEFAULT_LABELS = Path(__file__).parent / "data" / "labels.csv"


class LabelsError(ValueError):
    """A labels file that cannot be used; the message names the file, line and what to fix."""


@dataclass(frozen=True)
class Clip:
    """One labelled recording.

    ``spans``: (start_s, end_s) pairs where the labelled sound is, or () for "by energy".
    ``stream``: the stream id the clip gets in the pipeline (stable, unique per path).
    """

    path: str
    package: str
    family: str
    speech: str
    spans: tuple[tuple[float, float], ...]
    note: str
    split: str
    stream: str
    source: Path  # resolved: the file, or the .rcc archive for ``member``
    member: str | None


def split_of(path: str) -> str:
    """``heldout`` for HELDOUT_PERCENT % of paths (by SHA-256 of the path text), else ``tune``."""
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "tune"


def stream_id(path: str) -> str:
    """A short stream id for the clip (the pipeline's stream names are at most 64 characters)."""
    return "c" + hashlib.sha1(path.encode()).hexdigest()[:12]


def parse_spans(text: str) -> tuple[tuple[float, float], ...]:
    """'0.1-0.8;1.2-2' -> ((0.1, 0.8), (1.2, 2.0)). Raises ValueError naming the bad part."""
    spans = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        a, sep, b = part.partition("-")
        try:
            start, end = float(a), float(b)
        except ValueError:
            raise ValueError(f"span {part!r} is not START-END in seconds") from None
        if not sep or not (0 <= start < end < 86_400):
            raise ValueError(f"span {part!r} must be START-END with 0 <= START < END (seconds)")
        spans.append((start, end))
    return tuple(spans)


def load_labels(path: str | Path = DEFAULT_LABELS) -> list[Clip]:
    """Every clip of a labels file, validated. Raises LabelsError with file:line and the fix."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist; pass --labels FILE (format: docs/accuracy.md)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LabelsError(f"cannot read labels file {path}: {e}") from None
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise LabelsError(f"{path} has no header line; the first line must name the columns: {','.join(COLUMNS)}")
    header = [c.strip() for c in next(csv.reader([lines[0][1]]))]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        raise LabelsError(
            f"{path}:{lines[0][0]}: header {','.join(header)} "
            + (f"lacks {','.join(missing)}" if missing else f"has unknown column(s) {','.join(unknown)}")
            + f"; columns are {','.join(COLUMNS)} (path, family, speech required)"
        )
    if len(lines) - 1 > MAX_CLIPS:
        raise LabelsError(f"{path} has {len(lines) - 1} clips; at most {MAX_CLIPS} are supported")
    clips: list[Clip] = []
    seen: dict[str, int] = {}
    for lineno, row in zip((n for n, _ in lines[1:]), csv.reader([ln for _, ln in lines[1:]])):
        clips.append(_clip(path, lineno, header, row, seen))
    return clips


def _clip(path: Path, lineno: int, header: list[str], row: list[str], seen: dict[str, int]) -> Clip:
    where = f"{path}:{lineno}"
    if len(row) != len(header):
        raise LabelsError(f"{where}: {len(row)} fields, the header has {len(header)} (quote fields with commas)")
    if any(len(v) > MAX_FIELD for v in row):
        raise LabelsError(f"{where}: a field is longer than {MAX_FIELD} characters")
    f = {k: v.strip() for k, v in zip(header, row)}
    clip_path = f["path"]
    if not clip_path:
        raise LabelsError(f"{where}: empty path")
    if clip_path in seen:
        raise LabelsError(f"{where}: {clip_path} is listed twice (first on line {seen[clip_path]})")
    seen[clip_path] = lineno
    if f["family"] not in FAMILIES:
        raise LabelsError(f"{where}: family {f['family']!r} is not one of {', '.join(FAMILIES)}")
    if f["speech"] not in SPEECH_VALUES:
        raise LabelsError(f"{where}: speech {f['speech']!r} must be yes, no or unknown")
    if f["family"] == "speech" and f["speech"] != "yes":
        raise LabelsError(f"{where}: a clip of family speech must have speech=yes")
    try:
        spans = parse_spans(f.get("spans", ""))
    except ValueError as e:
        raise LabelsError(f"{where}: {e}") from None
    file_part, _, member = clip_path.partition("!")
    source = Path(file_part)
    if not source.is_absolute():
        source = path.parent / source
    return Clip(
        path=clip_path, package=f.get("package", ""), family=f["family"], speech=f["speech"], spans=spans,
        note=f.get("note", ""), split=split_of(clip_path), stream=stream_id(clip_path), source=source,
        member=member or None,
    )


def missing_packages(clips: list[Clip]) -> dict[str, int]:
    """Packages (or paths, when no package is named) whose clips are not on this machine, with counts."""
    out: dict[str, int] = {}
    for c in clips:
        if not c.source.is_file():
            key = c.package or str(c.source)
            out[key] = out.get(key, 0) + 1
    return out
