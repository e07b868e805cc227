"""Helpers for the across-machines tests: key rings, a raw-frame feeder, socket watchers.

Import the plain helpers with ``from tests.net.conftest import ...``; fixtures are found by pytest.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.observe.metrics import StageMetrics
from common.transport.keys import create_keypair
from common.transport.outbox import Outbox
from common.transport.sockets import CurveConfig, SocketOptions, open_socket
from common.wire import AudioHeader, Kind, Layout, SampleFormat, encode_audio
from tests.conftest import StageProcess

FRAMES = 320  # samples per channel per message: 20 ms at 16 kHz
RATE = 16_000


@dataclass
class KeyPair:
    public: Path
    secret: Path


class KeyRing:
    """Key pairs made with the real ``create_keypair``; ``allow`` holds the allowed clients' public keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.allow = root / "allow"
        self.allow.mkdir(parents=True)

    def pair(self, name: str, allowed: bool) -> KeyPair:
        pub, sec = create_keypair(self.root / "own" / name, name)
        if allowed:
            (self.allow / pub.name).write_bytes(pub.read_bytes())
        return KeyPair(pub, sec)

    def server_flags(self, me: KeyPair) -> list[str]:
        """Flags of a stage that binds (CURVE server) with this allow list."""
        return ["--curve-secret", str(me.secret), "--curve-allow", str(self.allow)]

    @staticmethod
    def client_opts(me: KeyPair, server: KeyPair, hwm: int = 1000) -> SocketOptions:
        return SocketOptions(hwm=hwm, curve=CurveConfig(me.secret, server.public, None))

    def server_opts(self, me: KeyPair, hwm: int = 1000) -> SocketOptions:
        return SocketOptions(hwm=hwm, curve=CurveConfig(me.secret, None, self.allow))


@pytest.fixture
def keyring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


def raw_frames(stream: str, seq: int, epoch: int = 1, frames: int = FRAMES) -> bytes:
    """One valid raw message (s16 mono, 16 kHz): a ramp, so content is checkable."""
    h = AudioHeader(stream=stream, epoch=epoch, seq=seq, t_capture_ns=time.time_ns(), rate=RATE, channels=1,
                    format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=frames, offset=seq * frames,
                    source="test")
    pcm = (np.arange(frames, dtype=np.int64) * 37 + seq * 101) % 20000 - 10000
    return encode_audio(Kind.RAW, h, pcm.astype("<i2"))


class RawFeeder(threading.Thread):
    """Publishes valid raw messages for ``streams`` every ``period_s`` from a thread until stopped.

    The Publisher (XPUB) is made here and used only by the thread after start().
    """

    def __init__(
        self,
        ctx: zmq.Context,
        endpoints: list[str],
        streams: list[str],
        opts: SocketOptions | None = None,
        period_s: float = 0.002,
        epoch: int = 1,
        frames: int = FRAMES,
        limit: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.pub = Outbox(ctx, endpoints, opts or SocketOptions(), StageMetrics("feeder"))
        self.streams = streams
        self.period_s = period_s
        self.epoch = epoch
        self.frames = frames
        self.limit = limit  # messages per stream, then stop
        self.sent = 0
        self.seq = 0
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set() and (self.limit is None or self.seq < self.limit):
                self.pub.poll_subscriptions()
                for s in self.streams:
                    if self.pub.send(raw_frames(s, self.seq, self.epoch, self.frames)):
                        self.sent += 1
                self.seq += 1
                self._halt.wait(self.period_s)
        finally:
            self.pub.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class Watch:
    """A socket monitor in the test: wait for a connection event (handshake ok / failed)."""

    FAILED = (
        zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )

    def __init__(self, sock: zmq.Socket) -> None:
        self.mon = sock.get_monitor_socket(zmq.EVENT_ALL)
        self.seen: list[int] = []

    def wait(self, mask: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.seen:
                if ev & mask:
                    return ev
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no monitor event in mask {mask:#x} within {timeout}s; saw {self.seen}")
            if self.mon.poll(int(min(left, 0.2) * 1000)):
                self.seen.append(recv_monitor_message(self.mon)["event"])

    def close(self) -> None:
        self.mon.close(0)


def client_sub(ctx: zmq.Context, addr: str, opts: SocketOptions | None, prefixes: list[bytes]) -> zmq.Socket:
    """A SUB in the test process made through common.transport.sockets (so CURVE options are the stages' own)."""
    sock = open_socket(ctx, zmq.SUB, [addr], opts, default_bind=False)
    for p in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, p)
    return sock


def watched_sub(
    ctx: zmq.Context, addr: str, opts: SocketOptions | None, prefixes: list[bytes]
) -> tuple[zmq.Socket, Watch]:
    """Like client_sub, with a Watch attached before connecting (so no connection event is missed)."""
    sock = open_socket(ctx, zmq.SUB, [], opts, default_bind=False)
    for p in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, p)
    watch = Watch(sock)
    sock.connect(addr)
    return sock, watch


def drain(sock: zmq.Socket, quiet_ms: int = 0) -> list[list[bytes]]:
    """Every message waiting on ``sock``, until none arrives for ``quiet_ms``."""
    out = []
    while sock.poll(quiet_ms):
        out.append(sock.recv_multipart())
    return out


def start_proxy(procs: list, *args: str) -> StageProcess:
    """``soundbus proxy ARGS`` as a tracked process (python -m common.cli.net: needs no other package)."""
    p = StageProcess([sys.executable, "-m", "common.cli.net", "proxy", *args])
    procs.append(p)
    return p


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def have_root() -> bool:
    return os.geteuid() == 0
