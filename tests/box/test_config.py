"""A box described by one file: `soundbus up --config` decodes it strictly, explains every mistake
with file, line and key (exit 2, no traceback), lets flags override it, prints all of it back, and
plans the processes it describes (--print-plan, nothing started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from box import config as boxconfig
from tests.conftest import ROOT

FULL = """\
capture:
  sources: ["synth:tone:440#hall"]
  chunk_ms: 10
classify:
  models: [vad, panns]
  thresholds: ["speech=0.7:0.5", "Dog=0.4:0.3"]
events:
  dir: /tmp/box-events
  max_size_mb: 50
wyoming:
  port: 65535
network:
  base_port: 6000
"""


def _up(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "common.cli", "up", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_print_config_shows_every_key_and_reads_back_as_the_same_box(tmp_path: Path) -> None:
    f = tmp_path / "box.yaml"
    f.write_text(FULL)
    r = _up("--config", str(f), "--print-config")
    assert r.returncode == 0, r.stderr
    # defaults the file never named are shown too: the whole box, not just the file
    for line in ("gap_fill_ms: 100.0", "max_lag_ms: 1000.0", "quality: HQ", "clip_format: flac", "port: 65535"):
        assert line in r.stdout, r.stdout
    again = tmp_path / "again.yaml"
    again.write_text(r.stdout)
    assert boxconfig.load(again) == boxconfig.load(f)


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "box.yaml"
    f.write_text(FULL)
    r = _up("--config", str(f), "--print-config", "--model", "vad", "--base-port", "7000")
    assert r.returncode == 0, r.stderr
    cfg = boxconfig.load(_write(tmp_path / "out.yaml", r.stdout))
    assert cfg.classify.models == ["vad"] and cfg.network.base_port == 7000
    assert cfg.capture.sources == ["synth:tone:440#hall"]  # what no flag named stays as the file says


@pytest.mark.parametrize("name, text, words", [
    ("typo.yaml", "capture:\n  chunk_ms: 20\nclasify:\n  models: [vad]\n", ["typo.yaml, line 3", "clasify"]),
    ("range.yaml", "capture:\n  chunk_ms: 20\nwyoming:\n  port: 70000\n", ["range.yaml, line 4", "wyoming.port"]),
    ("small.yaml", "events:\n  dir: /tmp/x\n  max_size_mb: 0.5\n", ["small.yaml, line 3", "events.max_size_mb"]),
    ("type.toml", "[classify]\nmodels = \"vad\"\n", ["type.toml, line 2", "classify.models"]),
    ("bad.yaml", "capture: [\n", ["bad.yaml: not valid YAML"]),
    ("box.json", "{}", ["name it .yaml, .yml or .toml"]),
])
def test_every_mistake_is_one_sentence_with_file_line_and_key(tmp_path: Path, name: str, text: str,
                                                               words: list[str]) -> None:
    r = _up("--config", str(_write(tmp_path / name, text)), "--print-config")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr


def test_a_missing_file_says_what_to_pass(tmp_path: Path) -> None:
    r = _up("--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_plan_runs_one_converter_per_rate_and_shares_thresholds_between_models(tmp_path: Path) -> None:
    """vad (16 kHz) and birdnet (48 kHz): two converters; a threshold list given to both models
    must not stop the one without the label (each takes the labels it has)."""
    f = _write(tmp_path / "box.yaml", FULL.replace("models: [vad, panns]", "models: [vad, birdnet]"))
    r = _up("--config", str(f), "--print-plan")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert {"convert-16k", "convert-48k", "classify-vad", "classify-birdnet", "events", "capture"} <= set(lines)
    assert "--rate 16000" in lines["convert-16k"] and "--rate 48000" in lines["convert-48k"]
    for model in ("vad", "birdnet"):
        assert "--threshold speech=0.7:0.5" in lines[f"classify-{model}"]
        assert "--skip-unknown-thresholds" in lines[f"classify-{model}"]
    order = list(lines)
    assert order.index("capture") > max(order.index("convert-16k"), order.index("classify-vad")), order
    assert "tcp://127.0.0.1:6000" in lines["capture"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
