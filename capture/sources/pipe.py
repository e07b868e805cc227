"""``pipe:FORMAT:RATE:CHANNELS``: raw interleaved little-endian PCM on stdin.

Lets anything that writes PCM feed soundbus::

    arecord -f S16_LE -r 16000 -c 1 -t raw | soundbus capture --source pipe:s16:16000:1
    sox in.flac -t raw -e signed -b 16 -r 16000 -c 1 - | soundbus capture --source pipe:s16:16000:1
    ffmpeg -i rtsp://cam/audio -f s16le -ac 1 -ar 16000 - | soundbus capture --source pipe:s16:16000:1

The bytes are published as they are (no conversion). Capture time: the arrival time of
the first bytes, then + offset/rate (see ArrivalClock: re-anchored if the producer
stalls). EOF ends the stream: the last frame is flagged END (the framer holds one frame
back to know which one is last, costing one frame of latency).
"""

from __future__ import annotations

import os
import select
import sys
import time

from capture.errors import CaptureError
from capture.framer import StreamFormat
from capture.sources.base import ArrivalClock, Source, log, split_whole_frames
from capture.spec import parse_pipe_arg
from common.stage import StopFlag

READ_BYTES = 1 << 16


class PipeSource(Source):
    """Reads stdin until EOF."""

    hold_last = True

    def __init__(self, spec, opts, fd: int | None = None) -> None:
        super().__init__(spec, opts)
        self.fd = fd

    def prepare(self) -> None:
        fmt, rate, channels = parse_pipe_arg(self.spec.arg)
        if self.fd is None:
            self.fd = sys.stdin.fileno()
            if os.isatty(self.fd):
                raise CaptureError(
                    f"--source pipe:{self.spec.arg} reads raw PCM from stdin, which is a terminal; pipe a producer in, "
                    f"e.g. arecord -f S16_LE -r {rate} -c {channels} -t raw | soundbus capture --source "
                    f"pipe:s16:{rate}:{channels}."
                )
        self.fmt = StreamFormat(rate, channels, fmt)
        self.description = f"pipe:stdin ({fmt}, {rate} Hz, {channels} ch)"

    def run(self, stop: StopFlag) -> None:
        assert self.framer is not None and self.fd is not None
        framer, fd = self.framer, self.fd
        bpf = self.fmt.bytes_per_frame
        clock = ArrivalClock(self.fmt.rate)
        framer.new_epoch()
        self.set_state("running", self.description)
        rest = b""  # bytes of an incomplete sample frame
        pos = 0  # samples pushed this epoch
        while not stop:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, READ_BYTES)
            arrival = time.time_ns()
            if not chunk:
                break
            data, rest = split_whole_frames(rest, chunk, bpf)
            if data:
                n = len(data) // bpf
                framer.push(data, clock.t_of(pos, n, arrival))
                pos += n
        if rest:
            log.warning("stream %s: %d trailing bytes at EOF are not a whole sample frame; dropped", self.stream,
                        len(rest))
        framer.end()
        self.set_state("ended", "end of input" if not stop else "stopped")
