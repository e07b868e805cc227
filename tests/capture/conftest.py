"""Fixtures for capture tests: a private PulseAudio daemon with a null sink (real loopback audio).

Each fixture instance runs its own daemon in its own runtime directory (PULSE_RUNTIME_PATH),
so tests, and other projects' daemons on the same machine, never share or kill each other's
server. The daemon, and the keep-alive stream, are stopped at teardown, also on failure.
Recipe: shared/recipes/loopback-audio.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


@dataclass
class Pulse:
    """A running private PulseAudio server. ``env``: give it to every client (capture, paplay, pactl)."""

    env: dict[str, str]
    sink: str
    runtime: Path
    keepalive: subprocess.Popen | None = None

    def pactl(self, *args: str) -> str:
        r = subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise AssertionError(f"pactl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def daemon_pid(self) -> int | None:
        try:
            return int((self.runtime / "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def pulse_env(runtime: Path) -> dict[str, str]:
    """Client environment for a daemon whose runtime directory is ``runtime``."""
    env = {
        **os.environ,
        "PULSE_RUNTIME_PATH": str(runtime),
        "PULSE_STATE_PATH": str(runtime / "state"),
        "PULSE_SERVER": f"unix:{runtime}/native",
    }
    env.pop("PULSE_SOURCE", None)
    env.pop("PULSE_SINK", None)
    return env


def start_pulse(pulse: Pulse) -> subprocess.Popen:
    """Start the daemon of ``pulse`` with its null sink and keep-alive stream; returns the keep-alive process."""
    env, runtime, sink = pulse.env, pulse.runtime, pulse.sink
    daemon_env = {k: v for k, v in env.items() if k != "PULSE_SERVER"}
    r = subprocess.run(
        [
            "pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n", "--use-pid-file=yes",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={runtime}/native",
            "--log-target=stderr",
        ],
        env=daemon_env, capture_output=True, text=True, timeout=20,
    )
    if r.returncode != 0:
        raise AssertionError(f"pulseaudio did not start: {r.stderr[-2000:]}")

    def up() -> bool:
        return subprocess.run(["pactl", "info"], env=env, capture_output=True, timeout=10).returncode == 0

    _wait(up, 10, "pulseaudio to answer")
    pulse.pactl("load-module", "module-null-sink", f"sink_name={sink}")
    pulse.pactl("set-default-sink", sink)
    pulse.pactl("set-default-source", f"{sink}.monitor")
    # keep-alive: an idle null sink renders ahead in 2 s blocks; a lone recorder would get nothing for ~2 s
    with open("/dev/zero", "rb") as zero:  # endless digital silence
        keep = subprocess.Popen(
            ["pacat", "--playback", "--raw", "--latency-msec=10", "-d", sink],
            stdin=zero, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
    pulse.keepalive = keep
    _wait(lambda: pulse.pactl("list", "short", "sink-inputs").strip() != "", 10, "the keep-alive stream")
    pulse.pactl("suspend-sink", sink, "1")  # drop the block rendered before the keep-alive
    pulse.pactl("suspend-sink", sink, "0")
    return keep


def stop_pulse(pulse: Pulse, keep: subprocess.Popen | None) -> None:
    """Stop the keep-alive and the daemon (pactl exit, then SIGKILL if it lingers)."""
    if keep is not None and keep.poll() is None:  # the keep-alive stream
        keep.terminate()
        try:
            keep.wait(5)
        except subprocess.TimeoutExpired:
            keep.kill()
            keep.wait(5)
    pid = pulse.daemon_pid()
    subprocess.run(["pactl", "exit"], env=pulse.env, capture_output=True, timeout=10)
    if pid is not None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def pulse() -> Iterator[Pulse]:
    """A private PulseAudio daemon with a uniquely named null sink (its .monitor is the loopback)."""
    if not shutil.which("pulseaudio") or not shutil.which("pactl") or not shutil.which("pacat"):
        pytest.skip("pulseaudio/pulseaudio-utils not installed (Debian: apt-get install pulseaudio pulseaudio-utils)")
    runtime = Path(tempfile.mkdtemp(prefix="sbpa-"))  # short: unix socket paths are limited to 108 bytes
    sink = f"sb{uuid.uuid4().hex[:8]}"
    p = Pulse(pulse_env(runtime), sink, runtime)
    p.keepalive = None
    try:
        p.keepalive = start_pulse(p)
        yield p
    finally:
        stop_pulse(p, p.keepalive)
        shutil.rmtree(runtime, ignore_errors=True)


def assemble_stream(messages, stream: str | None = None, live: bool = False):
    """Raw messages of one stream and epoch -> (samples (n, channels) or (n, channels, 3) for s24, headers).

    Asserts what every consumer relies on: one epoch, seq 0,1,2,... without gaps, each
    ``offset`` equal to the samples before it, one format, END on the last chunk only.
    """
    import numpy as np

    from common.wire import Audio, Kind

    raw = [m for m in messages if isinstance(m, Audio) and m.kind == Kind.RAW
           and (stream is None or m.stream == stream)]
    assert raw, "no raw frames received"
    hs = [m.header for m in raw]
    assert len({h.epoch for h in hs}) == 1, f"several epochs: {sorted({h.epoch for h in hs})}"
    # A live source (device, loopback) starts before a subscriber joins: it may be caught after seq 0.
    first = hs[0].seq if live else 0
    assert [h.seq for h in hs] == list(range(first, first + len(hs))), "sequence numbers are not contiguous"
    offsets = hs[0].offset + np.cumsum([0] + [h.samples for h in hs[:-1]])
    assert [h.offset for h in hs] == offsets.tolist(), "offsets do not follow the chunk sizes"
    assert len({(h.rate, h.channels, h.format) for h in hs}) == 1
    return np.concatenate([m.samples() for m in raw]), hs


@pytest.fixture
def assemble():
    """assemble(messages, stream=None, live=False) -> (samples, headers); see assemble_stream."""
    return assemble_stream
