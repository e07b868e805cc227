"""Helpers for classify tests: real audio at 16 kHz and a tensor publisher the workers subscribe to.

The test binds the tensor address (a Publisher, as convert would) and the worker's result
address is bound by the worker; a test waits for the worker's subscription (counted with
XPUB_VERBOSE, so two workers are two subscriptions) before it sends, never on a sleep.
"""

from __future__ import annotations

import io
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr
import zmq

from common.observe.metrics import StageMetrics
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import AudioHeader, Flag, Hop, Kind, Layout, SampleFormat, encode_audio

ALSA = Path("/usr/share/sounds/alsa")
RATE = 16_000


def read_wav(data: bytes | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate of a 16-bit WAV (file or bytes)."""
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with wave.open(src) as w:
        rate, ch, n = w.getframerate(), w.getnchannels(), w.getnframes()
        assert w.getsampwidth() == 2, "16-bit WAV expected"
        x = np.frombuffer(w.readframes(n), dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, ch).mean(axis=1), rate


def at16k(x: np.ndarray, rate: int) -> np.ndarray:
    return x if rate == RATE else soxr.resample(x, rate, RATE).astype(np.float32)


def alsa_speech(name: str = "Front_Center.wav") -> np.ndarray:
    """A spoken recording shipped by alsa-utils, at 16 kHz."""
    return at16k(*read_wav(ALSA / name))


def espeak(text: str) -> np.ndarray:
    """espeak-ng speech for ``text`` at 16 kHz."""
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    return at16k(*read_wav(wav))


def tone(seconds: float, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def white_noise(seconds: float, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).uniform(-1, 1, int(seconds * RATE))).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


class TensorSource:
    """Publishes float32 planar tensor messages as convert would."""

    def __init__(self, ctx: zmq.Context, addr: str) -> None:
        self.pub = Outbox(ctx, [addr], SocketOptions(nodrop=True), StageMetrics("test"))
        self.pub.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # count every subscriber, not every distinct topic
        self.subscribers = 0
        self.seq: dict[tuple[str, int], int] = {}
        self.offset: dict[tuple[str, int], int] = {}
        self.t0 = time.time_ns()

    def wait_subscribers(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.subscribers < n:
            assert time.monotonic() < deadline, f"only {self.subscribers} of {n} subscribers joined"
            if self.pub.socket.poll(100):
                note = self.pub.socket.recv()
                if note and note[0] == 1:
                    self.subscribers += 1

    def send(self, stream: str, audio: np.ndarray, chunk: int = 320, epoch: int = 1, rate: int = RATE,
             flags_first: Flag = Flag.NONE, end: bool = False) -> None:
        """Send ``audio`` (samples,) or (channels, samples) in chunks of ``chunk`` samples."""
        audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
        key = (stream, epoch)
        for start in range(0, audio.shape[1], chunk):
            part = np.ascontiguousarray(audio[:, start : start + chunk])
            seq = self.seq.get(key, 0)
            off = self.offset.get(key, 0)
            now = time.time_ns()
            h = AudioHeader(
                stream=stream, epoch=epoch, seq=seq, t_capture_ns=self.t0 + off * 1_000_000_000 // rate, rate=rate,
                channels=part.shape[0], format=SampleFormat.F32, layout=Layout.PLANAR, samples=part.shape[1],
                offset=off, flags=(flags_first if start == 0 else 0)
                | (Flag.END if end and start + chunk >= audio.shape[1] else 0),
                trace=[Hop("capture", now, now), Hop("convert", now, now)],
            )
            while not self.pub.send(encode_audio(Kind.TENSOR, h, part)):
                self.pub.socket.poll(10, zmq.POLLOUT)
            self.seq[key] = seq + 1
            self.offset[key] = off + part.shape[1]

    def send_interleaved(self, streams: dict[str, np.ndarray], chunk: int = 320, epoch: int = 1) -> None:
        """Send several streams chunk by chunk, alternating, as one convert worker would."""
        longest = max(a.shape[-1] for a in streams.values())
        for start in range(0, longest, chunk):
            for name, a in streams.items():
                if start < a.shape[-1]:
                    self.send(name, a[..., start : start + chunk], chunk=chunk, epoch=epoch)

    def close(self) -> None:
        self.pub.close()


@pytest.fixture
def tensor_source(zctx):
    """tensor_source(addr) -> a TensorSource bound at ``addr``."""
    made: list[TensorSource] = []

    def make(addr: str) -> TensorSource:
        s = TensorSource(zctx, addr)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _root_conftest():
    """tests/conftest.py as pytest loaded it (with --import-mode=importlib it is not importable by name)."""
    import sys

    root = Path(__file__).resolve().parents[1] / "conftest.py"
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == root:
            return mod
    raise RuntimeError("tests/conftest.py is not loaded")


@pytest.fixture
def start():
    """start(procs, "classify", ...) from tests/conftest.py."""
    return _root_conftest().start


@pytest.fixture
def tcp():
    """tcp() -> a free loopback endpoint, from tests/conftest.py."""
    return _root_conftest().tcp


@pytest.fixture
def audio():
    """The audio helpers of this module, for tests (conftest functions are not importable)."""
    import types

    return types.SimpleNamespace(
        read_wav=read_wav, at16k=at16k, alsa_speech=alsa_speech, espeak=espeak, tone=tone,
        white_noise=white_noise, silence=silence, RATE=RATE,
    )
