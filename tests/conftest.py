"""Shared fixtures: random ports, real stage processes that are always stopped, a real subscriber.

Every process a test starts goes through the ``procs`` fixture, which terminates it
(SIGTERM, then SIGKILL) when the test ends, also on failure. Waiting is done on
observable events (a log line, a received message), never on a bare sleep.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from common.protocol import Kind, Message, ProtocolError, decode, topic_for

ROOT = Path(__file__).resolve().parents[1]
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class StageProcess:
    """A real OS process whose stderr is collected line by line in the background."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, stdin: int | None = None) -> None:
        self.argv = argv
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.out_lines: list[str] = []
        self._cond = threading.Condition()
        for stream, sink in ((self.proc.stderr, self.lines), (self.proc.stdout, self.out_lines)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._cond:
                sink.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, stdout: bool = False) -> str:
        """Block until a line matching ``pattern`` appears; fail loudly with the log otherwise."""
        rx = re.compile(pattern)
        sink = self.out_lines if stdout else self.lines
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in sink:
                    if rx.search(line):
                        return line
                if self.proc.poll() is not None and time.monotonic() > deadline - timeout + 0.5:
                    # process ended: give the pump a moment, then give up
                    self._cond.wait(0.2)
                    for line in sink:
                        if rx.search(line):
                            return line
                    raise AssertionError(f"{self.argv[:4]} exited {self.proc.returncode} before /{pattern}/:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for /{pattern}/ from {self.argv[:4]}:\n{self.log()}")
                self._cond.wait(min(left, 0.2))

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-60:])

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def procs() -> Iterator[list[StageProcess]]:
    """Start processes with ``start(procs, ...)``; all are stopped at teardown."""
    started: list[StageProcess] = []
    yield started
    for p in reversed(started):
        p.stop()


def start(procs: list[StageProcess], *args: str, env: dict[str, str] | None = None, stdin: int | None = None) -> StageProcess:
    """Run ``python -m ARGS`` (e.g. start(procs, "convert", "--input", addr)) as a tracked process."""
    p = StageProcess([sys.executable, "-m", *args], env=env, stdin=stdin)
    procs.append(p)
    return p


class Collector:
    """A SUB socket in the test process that validates and keeps every message it receives."""

    def __init__(self, ctx: zmq.Context, addr: str, prefixes: list[bytes]) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        for p in prefixes:
            self.sock.setsockopt(zmq.SUBSCRIBE, p)
        self.sock.connect(addr)
        self.messages: list[Message] = []
        self.bad: list[ProtocolError] = []

    def collect(self, until, timeout: float = 30.0) -> list[Message]:
        """Receive until ``until(messages)`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s with {len(self.messages)} messages")
            if self.sock.poll(int(min(left, 0.2) * 1000)):
                frames = self.sock.recv_multipart()
                try:
                    self.messages.append(decode(frames))
                except ProtocolError as e:
                    self.bad.append(e)
        return self.messages

    def drain(self, quiet_s: float = 1.0, timeout: float = 30.0) -> list[Message]:
        """Receive until nothing arrives for ``quiet_s`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(int(quiet_s * 1000)):
                break
            frames = self.sock.recv_multipart()
            try:
                self.messages.append(decode(frames))
            except ProtocolError as e:
                self.bad.append(e)
        return self.messages


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def collector(zctx):
    """collector(addr, kind=Kind.RESULT) -> Collector subscribed to that kind."""
    made: list[Collector] = []

    def make(addr: str, kind: Kind = Kind.RESULT, prefixes: list[bytes] | None = None) -> Collector:
        c = Collector(zctx, addr, prefixes or [topic_for(kind)])
        made.append(c)
        return c

    yield make
    for c in made:
        c.sock.close(0)
