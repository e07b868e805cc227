"""Shared fixtures: random ports, real stage processes that are always stopped, a real subscriber.

Every process a test starts goes through the ``procs`` fixture, which terminates it
(SIGTERM, then SIGKILL) when the test ends, also on failure. Waiting is done on
observable events (a log line, a received message), never on a bare sleep.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from common.cli.process import ChildProcess
from common.wire import Kind, Message, ProtocolError, decode_parts, topic_for

ROOT = Path(__file__).resolve().parents[1]
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_LOW = 10_000
_PORTS_HIGH = max(_PORTS_LOW + 1000, _ephemeral_low())


def free_port(block: int = 1) -> int:
    """A TCP port on 127.0.0.1, free right now with the ``block - 1`` ports after it.

    Chosen below the kernel's ephemeral range: a port from bind(("", 0)) is one the kernel also
    hands to outgoing connections, and ZeroMQ's reconnect attempts to a port that is not bound
    yet took a neighbouring port as their own local port, so the stage that was to bind it failed
    with "address in use" (seen with `soundbus up --base-port` under load).
    """
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(_PORTS_LOW, _PORTS_HIGH - block)
        socks = []
        try:
            for port in range(first, first + block):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {block} free port(s) in {_PORTS_LOW}-{_PORTS_HIGH}")


def tcp() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Procs:
    """Processes started with ``python -m ...`` from the repository root, stopped together (last
    first) by the test's fixture; their last log lines are printed, which pytest shows on failure."""

    def __init__(self) -> None:
        self.started: list[ChildProcess] = []

    def start(self, *args: str) -> ChildProcess:
        p = ChildProcess([sys.executable, "-m", *args], cwd=ROOT)
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.started):
            p.stop()
        for p in self.started:
            print(f"--- {' '.join(p.argv[2:5])} (exit {p.proc.returncode}) ---\n{p.log(40)}")


class StageProcess(ChildProcess):
    """A real OS process started from the repository root; its log lines are collected."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, stdin: int | None = None) -> None:
        super().__init__(argv, env=env, cwd=ROOT, stdin=stdin)


@pytest.fixture
def procs() -> Iterator[list[StageProcess]]:
    """Start processes with ``start(procs, ...)``; all are stopped at teardown."""
    started: list[StageProcess] = []
    yield started
    for p in reversed(started):
        p.stop()
    for p in started:  # pytest shows this only when the test failed: each stage's last log lines
        print(f"--- {p.name} (exit {p.proc.returncode}) ---\n{p.log(40)}")


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
                self._take()
        return self.messages

    def _take(self, limit: int = 1000) -> None:
        """Everything queued (up to ``limit``), so a predicate is checked per batch, not per message."""
        for _ in range(limit):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.messages.append(decode_parts(parts))
            except ProtocolError as e:
                self.bad.append(e)

    def drain(self, quiet_s: float = 1.0, timeout: float = 30.0) -> list[Message]:
        """Receive until nothing arrives for ``quiet_s`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(int(quiet_s * 1000)):
                break
            self._take()
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


class Tracker:
    """Sequence accounting per stream, as every stage does it (a SeqCursor per stream)."""

    def __init__(self) -> None:
        from common.runtime.streams import SeqCursor

        self._new = SeqCursor
        self.cursors: dict[str, object] = {}

    def check(self, stream: str, epoch: int, seq: int, discontinuity: bool = False):
        cursor = self.cursors.setdefault(stream, self._new())
        return cursor.check(epoch, seq, discontinuity)
