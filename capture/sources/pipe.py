"""``pipe:FORMAT:RATE:CHANNELS``: raw interleaved little-endian PCM on stdin.

Lets anything that writes PCM feed soundbus::

    arecord -f S16_LE -r 16000 -c 1 -t raw | soundbus capture --source pipe:s16:16000:1
    sox in.flac -t raw -e signed -b 16 -r 16000 -c 1 - | soundbus capture --source pipe:s16:16000:1
    ffmpeg -i rtsp://cam/audio -f s16le -ac 1 -ar 16000 - | soundbus capture --source pipe:s16:16000:1

The bytes are published as they are (no conversion). stdin is read by capture's loop when
its poller says it is readable (no thread, no lock), at most ``READ_BYTES`` per read, so a
producer that writes faster than real time is simply read as fast as the publisher
sends. Capture time: the arrival time of the first bytes, then + offset/rate
(ArrivalClock: re-anchored if the producer stalls). EOF ends the stream: the last chunk
is flagged END (the framer holds one chunk back to know which one is last).
"""

from __future__ import annotations

import os
import sys
import time

from capture.framer import Chunk, StreamFormat
from capture.sources.base import ArrivalClock, Loop, Source, log, split_whole_frames
from capture.spec import parse_pipe_arg
from common.errors import UserError
from common.wire.messages import HeartbeatState

READ_BYTES = 1 << 16


class PipeSource(Source):
    """Reads stdin (or ``fd``) until EOF."""

    hold_last = True

    def __init__(self, spec, opts, fd: int | None = None) -> None:
        super().__init__(spec, opts)
        self.fd = fd
        self.loop: Loop | None = None

    def prepare(self) -> None:
        fmt, rate, channels = parse_pipe_arg(self.spec.arg)
        if self.fd is None:
            self.fd = sys.stdin.fileno()
            if os.isatty(self.fd):
                raise UserError(
                    f"--source pipe:{self.spec.arg} reads raw PCM from stdin, which is a terminal; pipe a producer "
                    f"in, e.g. arecord -f S16_LE -r {rate} -c {channels} -t raw | soundbus capture --source "
                    f"pipe:s16:{rate}:{channels}."
                )
        self.fmt = StreamFormat(rate, channels, fmt)
        self.description = f"pipe:stdin ({fmt}, {rate} Hz, {channels} ch)"

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        self.loop = loop
        self.clock = ArrivalClock(self.fmt.rate)
        self.rest = b""  # bytes of an incomplete sample frame
        self.pos = 0  # samples pushed this epoch
        self.framer.new_epoch()
        os.set_blocking(self.fd, False)
        loop.watch(self.fd, lambda: loop.put((self, None)))
        self.set_state(HeartbeatState.RUNNING, self.description)
        return []

    def on_item(self, item: object, now: float) -> list[Chunk]:
        """stdin is readable: read once (bounded), frame what arrived; EOF ends the stream."""
        if self.state is not HeartbeatState.RUNNING:
            return []
        try:
            chunk = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return []
        except OSError as e:
            self._stop()
            self.set_state(HeartbeatState.FAILED, f"cannot read stdin: {e.strerror}")
            return self.framer.end()
        if not chunk:
            self._stop()
            if self.rest:
                log.warning("stream %s: %d trailing bytes at EOF are not a whole sample frame; dropped",
                            self.stream, len(self.rest))
            self.set_state(HeartbeatState.ENDED, "end of input")
            return self.framer.end()
        data, self.rest = split_whole_frames(self.rest, chunk, self.fmt.bytes_per_sample_frame)
        if not data:
            return []
        n = len(data) // self.fmt.bytes_per_sample_frame
        out = self.framer.push(data, self.clock.t_of(self.pos, n, time.time_ns()))
        self.pos += n
        return out

    def _stop(self) -> None:
        if self.loop is not None:
            self.loop.unwatch(self.fd)
            self.loop = None

    def close(self) -> None:
        self._stop()
