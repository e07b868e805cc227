"""Real processes for the Wyoming tests: ``soundbus wyoming`` + convert + classify --model wakeword
(spoken audio and the Home Assistant-like client are in tests/wyoming/wyclient.py).

Every process started here is stopped at teardown (SIGTERM, then SIGKILL), also on failure,
and its last log lines are printed (pytest shows them for a failed test).
"""

from __future__ import annotations

import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.cli.process import ChildProcess
from tests.conftest import free_port  # noqa: F401 (the Wyoming tests take it from here)

ROOT = Path(__file__).resolve().parents[2]



class Stage(ChildProcess):
    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, "-m", *args], cwd=ROOT)


@pytest.fixture
def stages() -> Iterator[list[Stage]]:
    """Processes started by a test; all stopped at its end."""
    started: list[Stage] = []
    yield started
    _stop(started)


def _stop(started: list[Stage]) -> None:
    for p in reversed(started):
        p.stop()
    for p in started:
        print(f"--- {p.name} (exit {p.proc.returncode}) ---\n{p.log(40)}")


@dataclass
class Pipeline:
    """wyoming server -> raw -> convert -> tensor -> classify wakeword -> result -> server."""

    port: int  # Wyoming clients connect here
    result_addr: str
    classify_metrics: int
    procs: list[Stage] = field(default_factory=list)

    @property
    def server(self) -> Stage:
        return self.procs[2]

    @property
    def classify(self) -> Stage:
        return self.procs[0]

    def classify_counts(self) -> tuple[int, int]:
        """(windows classified, model calls) from classify's Prometheus metrics: convert sends 1280-sample
        tensors, so each tensor received completes exactly one window (an epoch's short last one, its
        zero-padded last window); the model latency is observed once per call."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.classify_metrics}/metrics", timeout=10).read().decode()

        def count(hop: str) -> int:
            m = re.search(r'^soundbus_latency_seconds_count\{[^}]*hop="' + hop + r'"[^}]*\} (\S+)$', text, re.M)
            return int(float(m.group(1))) if m else 0

        return count("convert->classify"), count("model")


def start_pipeline(extra_server: tuple[str, ...] = ()) -> Pipeline:
    raw, tensor, result = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    p = Pipeline(port=free_port(), result_addr=result, classify_metrics=free_port())
    try:
        p.procs.append(Stage("classify", "--model", "wakeword", "--input", tensor, "--output", "@" + result,
                             "--metrics-port", str(p.classify_metrics), "--max-lag-ms", "0"))
        p.procs.append(Stage("convert", "--input", raw, "--output", "@" + tensor, "--chunk-samples", "1280"))
        p.procs.append(Stage("wyoming_server", "-v", "--uri", f"tcp://127.0.0.1:{p.port}", "--output", "@" + raw,
                             "--input", result, *extra_server))
        p.classify.wait_for(r"ready model=wakeword", 120)
        p.server.wait_for(r"ready uri=", 60)
        p.server.wait_for(r"raw subscriber joined", 60)  # convert takes our audio
        p.classify.wait_for(r"input connected", 60)  # classify takes convert's
        p.classify.wait_for(r"subscriber joined", 60)  # the server takes classify's results
    except BaseException:
        _stop(p.procs)
        raise
    return p


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    pytest.importorskip("openwakeword", reason="wakeword is an optional extra: pip install openwakeword==0.5.1")
    pytest.importorskip("wyoming", reason="soundbus wyoming needs the wyoming extra: pip install -e '.[wyoming]'")
    p = start_pipeline()
    yield p
    _stop(p.procs)
