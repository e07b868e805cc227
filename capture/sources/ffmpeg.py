"""``url:URL``: any stream ffmpeg opens (rtsp://, http(s)://, file://, a path), decoded by an ffmpeg subprocess.

This is what Frigate and BirdNET-Go do: ffmpeg handles the network protocols and codecs,
soundbus reads PCM from its stdout. ffmpeg writes a WAV stream (``-f wav``), so its
header tells the rate, channels and format exactly (``--rate``/``--channels`` resample or
remix in ffmpeg; ``--format`` picks s16/s32/f32, default s16).

Local files (a path or ``file://``) are read in real time (``-re``) unless ``--fast``;
network streams arrive in real time by themselves. Capture time: arrival time of the
first bytes + offset/rate (ArrivalClock, re-anchored if the stream stalls).

ffmpeg exiting 0 means the stream ended: the last frame is flagged END and the source
ends (``--loop`` restarts it). Exiting non-zero, or no audio for ``--watchdog`` seconds,
means trouble: ffmpeg is (killed and) restarted with exponential backoff, a new epoch
each time, while heartbeats go on.
"""

from __future__ import annotations

import collections
import os
import select
import shutil
import signal
import struct
import subprocess
import threading
import time
from urllib.parse import urlparse

from capture.errors import CaptureError
from capture.framer import StreamFormat
from capture.sources.base import ArrivalClock, Backoff, Source, log, split_whole_frames
from common.stage import StopFlag

CODECS = {"s16": "pcm_s16le", "s32": "pcm_s32le", "f32": "pcm_f32le"}
READ_BYTES = 1 << 16
RW_TIMEOUT_US = 10_000_000  # ffmpeg gives up on a network read after 10 s (then we restart it)


class StreamEnded(Exception):
    """ffmpeg closed its output."""


def wav_format(tag: int, bits: int) -> str:
    """Protocol sample format of a WAV (format tag, bits per sample)."""
    table = {(1, 8): "u8", (1, 16): "s16", (1, 24): "s24", (1, 32): "s32", (3, 32): "f32", (3, 64): "f64"}
    fmt = table.get((tag, bits))
    if fmt is None:
        raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits")
    return fmt


def parse_wav_header(read_exact) -> StreamFormat:
    """Read a streamed WAV header up to the start of its data chunk.

    ``read_exact(n) -> bytes`` returns exactly n bytes (raises StreamEnded at EOF).
    Sizes in a streamed header are placeholders (0xFFFFFFFF) and are not used.
    """
    riff = read_exact(12)
    if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        raise ValueError(f"not a WAV stream (starts with {riff[:12]!r})")
    fmt: StreamFormat | None = None
    while True:
        cid, size = struct.unpack("<4sI", read_exact(8))
        if cid == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before its fmt chunk")
            return fmt
        if size > 1 << 20:
            raise ValueError(f"WAV chunk {cid!r} of {size} bytes before the data")
        body = read_exact(size + (size & 1))
        if cid == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = StreamFormat(rate, channels, wav_format(tag, bits))


def is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter is not a scheme


class FfmpegSource(Source):
    """Runs ffmpeg, reads WAV from its stdout, restarts it with backoff when it fails."""

    hold_last = True

    def __init__(self, spec, opts) -> None:
        super().__init__(spec, opts)
        self.url = spec.arg
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self._buf = b""
        self._stderr_thread = threading.Thread()

    def prepare(self) -> None:
        self.ffmpeg = shutil.which("ffmpeg")
        if self.ffmpeg is None:
            raise CaptureError(
                f"ffmpeg is not on PATH, and --source url:{self.url} needs it to decode; install it "
                f"(Debian: apt-get install ffmpeg) or feed raw PCM with --source pipe:FORMAT:RATE:CHANNELS."
            )
        fmt = self.opts.format or "s16"
        if fmt not in CODECS:
            raise CaptureError(f"url sources produce s16, s32 or f32; got --format {fmt}.")
        if is_local(self.url):
            path = urlparse(self.url).path if self.url.startswith("file:") else self.url
            if not os.path.exists(path):
                raise CaptureError(f"{path} does not exist; give an existing file or a URL ffmpeg can open.")
        # Until ffmpeg's header says otherwise (heartbeats need something).
        self.fmt = StreamFormat(self.opts.rate or 16000, self.opts.channels or 1, fmt)
        shown = self.url if len(self.url) < 120 else self.url[:117] + "..."
        self.description = f"url:{shown}"

    def command(self) -> list[str]:
        """The ffmpeg command line: decode the first audio stream to WAV on stdout."""
        cmd = [self.ffmpeg or "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
        if is_local(self.url) and not self.opts.fast:
            cmd.append("-re")
        cmd += ["-rw_timeout", str(RW_TIMEOUT_US), "-i", self.url, "-vn", "-map", "0:a:0"]
        cmd += ["-c:a", CODECS[self.fmt.format]]
        if self.opts.rate:
            cmd += ["-ar", str(self.opts.rate)]
        if self.opts.channels:
            cmd += ["-ac", str(self.opts.channels)]
        return cmd + ["-f", "wav", "pipe:1"]

    # -- process handling ----------------------------------------------------------------------

    def _start(self) -> None:
        self._buf = b""
        self.stderr_tail.clear()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._stderr_thread = threading.Thread(target=self._pump_stderr, args=(self.proc,), daemon=True)
        self._stderr_thread.start()

    def _pump_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.stderr_tail.append(line)
                log.debug("stream %s: ffmpeg: %s", self.stream, line)

    def _read(self, stop: StopFlag, timeout_s: float) -> bytes:
        """Some bytes from ffmpeg's stdout; b'' if none within ``timeout_s``. Raises StreamEnded at EOF."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while not stop:
            ready, _, _ = select.select([fd], [], [], min(0.2, max(0.0, deadline - time.monotonic())))
            if ready:
                data = os.read(fd, READ_BYTES)
                if not data:
                    raise StreamEnded()
                return data
            if time.monotonic() >= deadline:
                return b""
        return b""

    def _read_exact(self, n: int, stop: StopFlag) -> bytes:
        deadline = time.monotonic() + self.opts.watchdog_s * 4
        while len(self._buf) < n:
            if stop:
                raise StreamEnded()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no WAV header from ffmpeg within {self.opts.watchdog_s * 4:g} s")
            self._buf += self._read(stop, 0.2)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        self._stderr_thread.join(1.0)  # its last lines say why ffmpeg stopped
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()

    def _exit_code(self) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(2)
        except subprocess.TimeoutExpired:
            return None

    # -- main loop ---------------------------------------------------------------------------

    def run(self, stop: StopFlag) -> None:
        assert self.framer is not None
        framer = self.framer
        backoff = Backoff(0.5, self.opts.backoff_max_s)
        while not stop:
            why, eof = "", False
            try:
                self._start()
                fmt = parse_wav_header(lambda n: self._read_exact(n, stop))
                self.fmt = fmt
                framer.new_epoch(fmt)
                self.set_state("running", f"{self.url} ({fmt.format}, {fmt.rate} Hz, {fmt.channels} ch)")
                self._pump(stop)
            except StreamEnded:
                eof = True
            except (ValueError, TimeoutError, OSError) as e:
                why = str(e)
            code = self._exit_code() if eof and not stop else None  # 0: the stream ended; else: failed
            framer.end()
            self.close()
            if stop:
                break
            if not why and code == 0:
                if not self.opts.loop:
                    self.set_state("ended", "stream ended")
                    return
                backoff.reset()
                continue
            tail = " | ".join(self.stderr_tail) or "no message"
            self.restarts += 1
            self.set_state("reconnecting", f"ffmpeg {'exited ' + str(code) if code is not None else 'stalled'}"
                                           f"{': ' + why if why else ''} ({tail}); restart in {backoff.next_s:g} s")
            if not backoff.wait(stop):
                break
        self.set_state("ended")

    def _pump(self, stop: StopFlag) -> None:
        assert self.framer is not None
        framer, bpf = self.framer, self.fmt.bytes_per_frame
        clock = ArrivalClock(self.fmt.rate)
        pos = 0
        # Audio that arrived with the WAV header (a short file can arrive whole in one read,
        # followed at once by EOF): push it before reading more, or it would be lost.
        data, rest = split_whole_frames(b"", self._buf, bpf)
        self._buf = b""
        if data:
            pos = len(data) // bpf
            framer.push(data, clock.t_of(0, pos, time.time_ns()))
        last = time.monotonic()
        while not stop:
            chunk = self._read(stop, 0.2)
            now_ns = time.time_ns()
            if not chunk:
                if time.monotonic() - last > self.opts.watchdog_s:
                    raise TimeoutError(f"no audio from ffmpeg for {self.opts.watchdog_s:g} s")
                continue
            last = time.monotonic()
            data, rest = split_whole_frames(rest, chunk, bpf)
            if data:
                n = len(data) // bpf
                framer.push(data, clock.t_of(pos, n, now_ns))
                pos += n
