"""Without torch (the base install), capture/convert/tail work and classify says what to install."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def _no_torch_env(tmp_path) -> dict[str, str]:
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'torch' (blocked by the test)\")\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _run(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_without_torch_classify_is_one_clear_sentence(tmp_path) -> None:
    env = _no_torch_env(tmp_path)
    r = _run(env, "classify", "--model", "vad")
    assert r.returncode == 2, r.stderr
    assert "classify extra" in r.stderr and "Traceback" not in r.stderr


def test_without_torch_the_base_commands_run(tmp_path) -> None:
    env = _no_torch_env(tmp_path)
    assert _run(env, "common.cli", "tail", "--help").returncode == 0
    r = _run(env, "capture", "--source", "synth:tone", "--duration", "0.2", "--fast", "--wait-subscriber", "0")
    assert r.returncode == 0, r.stderr
    assert _run(env, "convert", "--help").returncode == 0
    assert _run(env, "common.cli", "replay", "--help").returncode == 0
