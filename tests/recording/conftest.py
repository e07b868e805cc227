"""Helpers for recording tests: the committed recording, reading a file back, running the CLI."""

from __future__ import annotations

from pathlib import Path

from common.recording.format import Problem, Record, RecordingReader
from common.recording.messages import record_bytes
from tests.conftest import ROOT, StageProcess, start

DATA = ROOT / "tests" / "data"
TWO_STREAMS = DATA / "two_streams.sbrec"  # recorded with protocol v1 (kept: v1 recordings must still play)
V1_OUTPUTS = DATA / "v1_two_streams_out.sbrec"  # what the v1 pipeline made of it (see tests/data/README.md)


def read_all(path: Path | str) -> tuple[list[Record], list[Problem]]:
    """Every readable record of one file, and the damage found."""
    r = RecordingReader(path)
    try:
        return list(r), r.problems
    finally:
        r.close()


def frames_of(records: list[Record]) -> list[list[bytes]]:
    """The stored parts of each record, as bytes (the container's view)."""
    return [[bytes(f) for f in r.frames] for r in records]


def messages_of(records: list[Record]) -> list[bytes]:
    """The protocol v2 message each record stands for (v1 records converted, v2 records as stored)."""
    return [record_bytes(r) for r in records]


def soundbus(procs: list[StageProcess], *args: str) -> StageProcess:
    """Run ``soundbus ARGS`` for the recording commands as a tracked process."""
    return start(procs, "common.recording.cli", *args)
