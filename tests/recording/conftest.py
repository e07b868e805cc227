"""Helpers for recording tests: the committed recording, reading a file back, running the CLI."""

from __future__ import annotations

from pathlib import Path

from common.recording import Problem, Record, RecordingReader
from tests.conftest import ROOT, StageProcess, start

DATA = ROOT / "tests" / "data"
TWO_STREAMS = DATA / "two_streams.sbrec"


def read_all(path: Path | str) -> tuple[list[Record], list[Problem]]:
    """Every readable record of one file, and the damage found."""
    r = RecordingReader(path)
    try:
        return list(r), r.problems
    finally:
        r.close()


def frames_of(records: list[Record]) -> list[list[bytes]]:
    return [[bytes(f) for f in r.frames] for r in records]


def soundbus(procs: list[StageProcess], *args: str) -> StageProcess:
    """Run ``soundbus ARGS`` for the recording commands as a tracked process."""
    return start(procs, "common.recording_cli", *args)
