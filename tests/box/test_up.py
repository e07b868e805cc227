"""`soundbus up` supervises: one stage failing stops all; Ctrl-C stops all; no process is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, StageProcess, free_port


def _leftovers(port: int) -> list[str]:
    """Processes whose command line names one of this pipeline's addresses."""
    ports = "|".join(str(port + i) for i in range(4))  # raw, tensor, results of up to two models
    out = subprocess.run(["pgrep", "-af", f"127\\.0\\.0\\.1:({ports})\\b"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


def _up(procs, *args: str) -> tuple[StageProcess, int]:
    port = free_port(block=16)  # up uses the ports from --base-port on
    p = StageProcess([sys.executable, "-m", "common.cli", "up", "--base-port", str(port), *args])
    procs.append(p)
    return p, port


def test_a_failing_stage_stops_the_pipeline_with_its_reason(procs) -> None:
    p, port = _up(procs, "--source", "device:no-such-microphone")
    assert p.wait(90) == 1
    log = p.log()
    assert "capture exited with code 2" in log, log
    assert "soundbus devices" in log, log  # capture's own sentence, pointing to what to do, is shown
    assert _leftovers(port) == []


def test_ctrl_c_stops_every_stage(procs) -> None:
    p, port = _up(procs, "--loop")  # the demo recording, looped: runs until stopped
    p.wait_for("pipeline running", timeout=90)
    assert len(_leftovers(port)) >= 4  # capture, convert, classify, tail
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 0, p.log()
    assert _leftovers(port) == []


def test_bad_model_is_reported(procs) -> None:
    p, port = _up(procs, "--model", "no-such-model")
    assert p.wait(90) != 0
    assert "no-such-model" in p.log()
    assert _leftovers(port) == []


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL])
def test_no_stage_outlives_up_however_up_dies(procs, sig) -> None:
    """Closing the terminal (SIGHUP), a kill, even SIGKILL of up itself: the stages go too, so their
    ports are free for the next up (they once stayed, and the next up failed: address in use)."""
    import time

    p, port = _up(procs, "--loop")
    p.wait_for("pipeline running", timeout=90)
    assert len(_leftovers(port)) >= 4
    p.proc.send_signal(sig)  # to up alone, not its process group
    p.wait(30)
    deadline = time.monotonic() + 20
    while _leftovers(port):
        assert time.monotonic() < deadline, f"left behind after {sig.name} of up: {_leftovers(port)}"
        time.sleep(0.2)  # polling the process table for the children to go


@pytest.mark.parametrize("args, words", [
    (["--base-port", "-1"], "--base-port: -1 is outside"),
    (["--start-timeout", "nan"], "--start-timeout: nan is outside"),
])
def test_bad_flags_exit_2(args, words) -> None:
    r = subprocess.run([sys.executable, "-m", "common.cli", "up", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
