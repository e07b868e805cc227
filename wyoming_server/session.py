"""One Wyoming connection's wake-word detection, with no sockets (a test drives it with events).

What Home Assistant sends (homeassistant/components/wyoming/wake_word.py)::

    detect {names: [id] | null}     which wake words (null: the service's default, here all)
    audio-start {rate, width, channels}
    audio-chunk {rate, width, channels, timestamp} + PCM payload     (10 ms each, continuously)
    ... until it reads a ``detection``, then it closes the connection

Other clients end with ``audio-stop`` and expect ``not-detected`` when nothing was found.

Each audio-start begins a new *epoch* of this connection's bus stream: its chunks become
``raw`` messages (capture.framer numbers them: seq, offset; capture's ArrivalClock stamps
them from arrival times, as capture's pipe source does), cut at ``frame_ms`` boundaries
counted from audio-start (80 ms, the wakeword model's hop, so every message completes a
window and none waits). audio-stop, a new audio-start or the connection's end publishes the
rest flagged END, so convert and classify finish the epoch at once.

Results of the epoch come back (:meth:`WakeSession.result`); a wanted wake word whose score
reaches ``threshold`` in ``trigger_level`` windows in a row is a ``detection`` with the name
the client asked for and ``timestamp`` = milliseconds since audio-start of the start of the
window that fired it, in the client's own time base when its chunks carry timestamps (Home
Assistant's count from the start of its stream). It fires again only after its score fell
below the threshold. After audio-stop, the epoch's last result (END) means every window was
scored: ``not-detected`` if nothing fired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from wyoming.event import Event
from wyoming.wake import Detection, NotDetected

from capture.framer import StreamFormat, StreamFramer
from capture.sources.base import ArrivalClock
from common.wire.codec import encode_audio
from common.wire.messages import MAX_CHANNELS, MAX_CHUNK_S, MAX_RATE_HZ, Flag, Result
from common.wire.topics import Kind
from wyoming_server.names import Wanted, resolve

log = logging.getLogger("wyoming")

FORMAT_OF_WIDTH = {1: "u8", 2: "s16", 3: "s24", 4: "s32"}  # Wyoming/WAV: 8-bit PCM is unsigned
MIN_RATE_HZ = 1000
_END = int(Flag.END)


class BadAudio(ValueError):
    """An audio-start/audio-chunk whose format fields are missing or out of bounds."""


@dataclass(frozen=True)
class SessionConfig:
    """``threshold`` score in (0, 1]; ``trigger_level`` windows in a row; ``frame_ms`` raw message length."""

    served: tuple[str, ...]
    threshold: float = 0.5
    trigger_level: int = 1
    frame_ms: float = 80.0


def audio_format(data: dict) -> StreamFormat:
    """rate/width/channels of an audio-start or audio-chunk, checked (the same object for the same
    format, so a stream's chunks compare by identity)."""
    key = (data.get("rate"), data.get("width"), data.get("channels"))
    fmt = _FORMATS.get(key) if all(type(v) is int for v in key) else None
    if fmt is None:
        fmt = _check_format(*key)
        if len(_FORMATS) < 64:
            _FORMATS[key] = fmt
    return fmt


_FORMATS: dict[tuple, StreamFormat] = {}  # formats seen (bounded)


def _check_format(rate: object, width: object, channels: object) -> StreamFormat:
    if type(rate) is not int or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise BadAudio(f"rate must be a whole number of {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    if width not in FORMAT_OF_WIDTH or type(width) is not int:
        raise BadAudio("width must be 1, 2, 3 or 4 bytes")
    if type(channels) is not int or not 1 <= channels <= MAX_CHANNELS:
        raise BadAudio(f"channels must be 1-{MAX_CHANNELS}")
    return StreamFormat(rate, channels, FORMAT_OF_WIDTH[width])


def _ms(value: object) -> int | None:
    """A Wyoming timestamp (milliseconds) if it is a sane whole number."""
    return value if type(value) is int and 0 <= value < 2**53 else None


class WakeSession:
    """Detection state of one connection; its raw messages go out on ``stream``."""

    def __init__(self, stream: str, cfg: SessionConfig, source: str = "") -> None:
        self.stream, self.cfg, self.source = stream, cfg, source[:256]
        self.wanted: Wanted = resolve(None, cfg.served)
        self.framer: StreamFramer | None = None
        self.fmt: StreamFormat | None = None  # of the current epoch
        self.bpf = 0  # its bytes per sample frame
        self.clock: ArrivalClock | None = None
        self.epoch = 0
        self.streaming = False  # between audio-start and audio-stop (or the connection's end)
        self.stopping = False  # audio-stop seen; waiting for the epoch's last result
        self.done = True  # the stopped epoch's last result arrived (or none was started)
        self.detected = False
        self.samples = 0  # samples received in this epoch (per channel)
        self.base_ms: int | None = None
        self.runs: dict[str, int] = {}  # label -> windows in a row at or above the threshold
        self.armed: dict[str, bool] = {}
        self.detections = 0

    # -- from the client -------------------------------------------------------------------

    def detect(self, names: list[str] | None) -> Wanted:
        """Which wake words to listen for from now on (None: all)."""
        self.wanted = resolve(names, self.cfg.served)
        return self.wanted

    def start(self, fmt: StreamFormat, now_ns: int, timestamp: object = None) -> list[bytes]:
        """audio-start: a new epoch (the previous one, if any, ends first)."""
        out = self._end_epoch(now_ns) if self.streaming else []
        if self.framer is None:
            self.framer = StreamFramer(self.stream, fmt, self.cfg.frame_ms, self.source)
        self.epoch = self.framer.new_epoch(fmt)
        self.fmt, self.bpf = fmt, fmt.bytes_per_sample_frame
        self.clock = ArrivalClock(fmt.rate)
        self.streaming, self.stopping, self.done, self.detected = True, False, False, False
        self.samples = 0
        self.base_ms = _ms(timestamp)
        self.runs = {label: 0 for label in self.cfg.served}
        self.armed = {label: True for label in self.cfg.served}
        return out

    def chunk(self, fmt: StreamFormat, audio: bytes, now_ns: int, timestamp: object = None) -> list[bytes]:
        """audio-chunk: raw messages for every frame it completes (maybe none)."""
        bpf = self.bpf if fmt is self.fmt else fmt.bytes_per_sample_frame
        if len(audio) % bpf:
            raise BadAudio(f"payload of {len(audio)} bytes is not a whole number of {bpf}-byte samples")
        n = len(audio) // bpf
        if n > fmt.rate * MAX_CHUNK_S:
            raise BadAudio(f"a chunk of {n} samples at {fmt.rate} Hz is over {MAX_CHUNK_S} s")
        out: list[bytes] = []
        if not self.streaming or fmt != self.fmt:  # no audio-start, or the format changed
            out += self.start(fmt, now_ns)
        if self.base_ms is None and self.samples == 0:
            self.base_ms = _ms(timestamp)
        if n == 0:
            return out
        t_first = self.clock.t_of(self.samples, n, now_ns)
        self.samples += n
        out += self._encode(self.framer.push(audio, t_first))
        return out

    def stop(self, now_ns: int) -> tuple[list[bytes], list[Event]]:
        """audio-stop: the epoch ends (its messages); its last result will say whether anything
        fired. With no audio since the last answer, the answer is at once: not-detected."""
        if not self.streaming:
            answered = self.stopping or self.detected  # this epoch's audio-stop came before, or it fired
            self.done = self.stopping = True
            return [], [] if answered else [NotDetected().event()]
        out = self._end_epoch(now_ns)
        self.stopping = True
        return out, []

    def close(self, now_ns: int) -> list[bytes]:
        """The connection ended: end the epoch so downstream forgets it at once."""
        return self._end_epoch(now_ns) if self.streaming else []

    def _end_epoch(self, now_ns: int) -> list[bytes]:
        """Everything buffered, the last message flagged END. With nothing buffered (the audio
        ended on a frame boundary) END rides on one sample of silence: the wire has no empty
        message, and classify pads the last window with silence anyway."""
        self.streaming = False
        chunks = self.framer.end()
        if not chunks:
            fmt = self.framer.fmt
            silence = bytes([128] if fmt.format == "u8" else [0]) * fmt.bytes_per_sample_frame
            chunks = self.framer.push(silence, self.clock.t_of(self.samples, 1, now_ns), end=True)
        return self._encode(chunks)

    def _encode(self, chunks: Iterable) -> list[bytes]:
        return [encode_audio(Kind.RAW, h, payload) for h, payload in chunks]

    # -- from the bus ----------------------------------------------------------------------

    def result(self, r: Result) -> list[Event]:
        """A wakeword result of this stream: detections (and not-detected at the end)."""
        if r.epoch != self.epoch or self.done:
            return []  # an earlier epoch's, or after the answer
        out: list[Event] = []
        for label in r.labels:
            name = self.wanted.reply.get(label.name)
            if name is None:
                continue
            if label.score >= self.cfg.threshold:
                self.runs[label.name] = self.runs.get(label.name, 0) + 1
                if self.armed.get(label.name, True) and self.runs[label.name] >= self.cfg.trigger_level:
                    self.armed[label.name] = False
                    self.detected = True
                    self.detections += 1
                    out.append(Detection(name=name, timestamp=self.timestamp_ms(r)).event())
            else:
                self.runs[label.name] = 0
                self.armed[label.name] = True
        if self.stopping and (r.flags & _END or r.final):
            self.done = True
            if not self.detected:
                out.append(NotDetected().event())
        return out

    def timestamp_ms(self, r: Result) -> int:
        """Milliseconds since audio-start (client's base if it sent one) of the window's start."""
        return (self.base_ms or 0) + r.offset * 1000 // r.rate

    def give_up(self) -> list[Event]:
        """No last result in time after audio-stop (a worker down): answer anyway."""
        if self.done:
            return []
        self.done = True
        return [] if self.detected else [NotDetected().event()]
