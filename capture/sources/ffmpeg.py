"""``url:URL``: any stream ffmpeg opens (rtsp://, http(s)://, file://, a path), decoded by an ffmpeg subprocess.

This is what Frigate and BirdNET-Go do: ffmpeg handles the network protocols and codecs,
soundbus reads PCM from its stdout. ffmpeg writes a WAV stream (``-f wav``), so its
header tells the rate, channels and format exactly (``--rate``/``--channels`` resample or
remix in ffmpeg; ``--format`` picks s16/s32/f32, default s16).

ffmpeg's stdout and stderr are read by capture's loop when its poller says they are
readable (no threads). Local files (a path or ``file://``) are read in real time (``-re``)
unless ``--fast``; network streams arrive in real time by themselves. Capture time:
arrival time of the first bytes + offset/rate (ArrivalClock, re-anchored if it stalls).

ffmpeg exiting 0 means the stream ended: the last chunk is flagged END and the source
ends (``--loop`` restarts it). Exiting non-zero, or no audio for ``--watchdog`` seconds,
means trouble: ffmpeg is (killed and) restarted with exponential backoff, a new epoch
each time, while heartbeats go on. An error that no retry can fix (ffmpeg says the
protocol does not exist, or the input is not found) fails the source at once, with
ffmpeg's own words.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import struct
import subprocess
import time
from urllib.parse import urlparse

from capture.framer import Chunk, StreamFormat
from capture.sources.base import ArrivalClock, Backoff, Loop, Source, log, split_whole_frames
from common.errors import UserError
from common.wire.messages import MAX_CHANNELS, MAX_RATE_HZ, HeartbeatState

CODECS = {"s16": "pcm_s16le", "s32": "pcm_s32le", "f32": "pcm_f32le"}
READ_BYTES = 1 << 16
RW_TIMEOUT_US = 10_000_000  # ffmpeg gives up on a network read after 10 s (then we restart it)
MAX_HEADER_BYTES = 1 << 20
# ffmpeg messages after which restarting cannot help (checked against its stderr)
PERMANENT = ("Protocol not found", "No such file or directory", "Invalid data found when processing input",
             "does not contain any stream", "Output file #0 does not contain", "matches no streams")


class NeedMore(Exception):
    """The WAV header is not complete yet."""


def wav_format(tag: int, bits: int) -> str:
    """Protocol sample format of a WAV (format tag, bits per sample)."""
    table = {(1, 8): "u8", (1, 16): "s16", (1, 24): "s24", (1, 32): "s32", (3, 32): "f32", (3, 64): "f64"}
    fmt = table.get((tag, bits))
    if fmt is None:
        raise ValueError(f"unsupported WAV format tag {tag} with {bits} bits")
    return fmt


def parse_wav_header(buf: bytes) -> tuple[StreamFormat, int]:
    """(format, bytes of header) of a streamed WAV header at the start of ``buf``.

    Raises NeedMore if ``buf`` ends before the data chunk, ValueError if it is not a WAV
    soundbus can read. Sizes in a streamed header are placeholders and are not used.
    """
    if len(buf) < 12:
        raise NeedMore()
    if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
        raise ValueError(f"not a WAV stream (starts with {buf[:12]!r})")
    pos, fmt = 12, None
    while True:
        if len(buf) < pos + 8:
            raise NeedMore()
        cid, size = struct.unpack("<4sI", buf[pos : pos + 8])
        pos += 8
        if cid == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before its fmt chunk")
            return fmt, pos
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"WAV chunk {cid!r} of {size} bytes before the data")
        end = pos + size + (size & 1)
        if len(buf) < end:
            raise NeedMore()
        if cid == b"fmt ":
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", buf[pos : pos + 16])
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format GUID starts with the tag
                tag = struct.unpack("<H", buf[pos + 24 : pos + 26])[0]
            if not (1 <= rate <= MAX_RATE_HZ and 1 <= channels <= MAX_CHANNELS):
                raise ValueError(f"WAV of {rate} Hz, {channels} channels is outside what soundbus takes")
            fmt = StreamFormat(rate, channels, wav_format(tag, bits))
        pos = end


def is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter is not a scheme


class FfmpegSource(Source):
    """Runs ffmpeg, reads WAV from its stdout on capture's loop, restarts it with backoff when it fails."""

    hold_last = True

    def __init__(self, spec, opts) -> None:
        super().__init__(spec, opts)
        self.url = spec.arg
        self.proc: subprocess.Popen | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self.loop: Loop | None = None
        self.backoff = Backoff(0.5, opts.backoff_max_s)
        self.restart_at: float | None = None

    def prepare(self) -> None:
        self.ffmpeg = shutil.which("ffmpeg")
        if self.ffmpeg is None:
            raise UserError(
                f"ffmpeg is not on PATH, and --source url:{self.url} needs it to decode; install it "
                f"(Debian: apt-get install ffmpeg) or feed raw PCM with --source pipe:FORMAT:RATE:CHANNELS."
            )
        fmt = self.opts.format or "s16"
        if fmt not in CODECS:
            raise UserError(f"url sources produce s16, s32 or f32; got --format {fmt}.")
        if is_local(self.url):
            path = urlparse(self.url).path if self.url.startswith("file:") else self.url
            if not os.path.exists(path):
                raise UserError(f"{path} does not exist; give an existing file or a URL ffmpeg can open.")
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

    # -- the process ---------------------------------------------------------------------

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        self.loop = loop
        self._spawn(now)
        return []

    def _spawn(self, now: float) -> None:
        self.restart_at = None
        self.buf = b""  # stdout bytes not yet framed (the WAV header first)
        self.header_done = False
        self.stderr_tail.clear()
        self._err_part = b""
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.started = self.last_data = now
        for f, what in ((self.proc.stdout, "out"), (self.proc.stderr, "err")):
            os.set_blocking(f.fileno(), False)
            self.loop.watch(f.fileno(), lambda w=what: self.loop.put((self, w)))
        self.set_state(HeartbeatState.RECONNECTING if self.restarts else HeartbeatState.RUNNING,
                       f"starting ffmpeg for {self.description}")

    def on_item(self, item: object, now: float) -> list[Chunk]:
        if self.proc is None:
            return []
        if item == "err":
            self._read_stderr()
            return []
        try:
            data = os.read(self.proc.stdout.fileno(), READ_BYTES)
        except BlockingIOError:
            return []
        except OSError as e:
            return self._stopped(now, f"reading ffmpeg's output failed: {e.strerror}")
        if not data:
            return self._stopped(now, "")
        self.last_data = now
        arrival = time.time_ns()
        self.buf += data
        out: list[Chunk] = []
        if not self.header_done:
            try:
                fmt, used = parse_wav_header(self.buf)
            except NeedMore:
                if len(self.buf) > MAX_HEADER_BYTES:
                    return self._stopped(now, "no WAV header in ffmpeg's output")
                return []
            except ValueError as e:
                return self._stopped(now, str(e))
            self.buf = self.buf[used:]
            self.header_done = True
            self.fmt = fmt
            self.framer.new_epoch(fmt)
            self.clock = ArrivalClock(fmt.rate)
            self.pos = 0
            self.set_state(HeartbeatState.RUNNING, f"{self.url} ({fmt.format}, {fmt.rate} Hz, {fmt.channels} ch)")
        whole, self.buf = split_whole_frames(b"", self.buf, self.fmt.bytes_per_sample_frame)
        if whole:
            n = len(whole) // self.fmt.bytes_per_sample_frame
            out += self.framer.push(whole, self.clock.t_of(self.pos, n, arrival))
            self.pos += n
        return out

    def _read_stderr(self) -> None:
        try:
            data = os.read(self.proc.stderr.fileno(), 4096)
        except (BlockingIOError, OSError):
            return
        if not data:
            self.loop.unwatch(self.proc.stderr.fileno())
            return
        lines = (self._err_part + data).split(b"\n")
        self._err_part = lines.pop()[-1024:]
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr_tail.append(line[:300])
                log.debug("stream %s: ffmpeg: %s", self.stream, line)

    def _stopped(self, now: float, why: str) -> list[Chunk]:
        """ffmpeg's output ended (EOF) or broke (``why``): end the epoch, then end, restart or fail."""
        out = self.framer.end() if self.header_done else []
        if why and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # we gave up on it
        code = self._reap()
        if why == "" and code == 0:
            if not self.opts.loop:
                self.set_state(HeartbeatState.ENDED, "stream ended")
                return out
            self.backoff.reset()
            self._spawn(now)
            return out
        tail = " | ".join(self.stderr_tail) or "no message"
        if any(p in tail for p in PERMANENT):
            self.set_state(HeartbeatState.FAILED, f"ffmpeg cannot open {self.url}: {tail}")
            return out
        delay = self.backoff.next_delay()
        self.restarts += 1
        self.restart_at = now + delay
        self.set_state(HeartbeatState.RECONNECTING,
                       f"ffmpeg {'exited ' + str(code) if code is not None else 'stalled'}"
                       f"{': ' + why if why else ''} ({tail}); restart in {delay:g} s")
        return out

    def due_in(self, now: float) -> float | None:
        if self.restart_at is not None:
            return self.restart_at - now
        if self.proc is not None:
            return self.last_data + self.opts.watchdog_s * (4 if not self.header_done else 1) - now
        return None

    def tick(self, now: float) -> list[Chunk]:
        if self.restart_at is not None and now >= self.restart_at:
            self._spawn(now)
            return []
        limit = self.opts.watchdog_s * (4 if not self.header_done else 1)
        if self.proc is not None and now - self.last_data > limit:
            what = "no WAV header from ffmpeg" if not self.header_done else "no audio from ffmpeg"
            return self._stopped(now, f"{what} for {limit:g} s")
        if self.proc is not None and self.header_done and now - self.started > 10.0:
            self.backoff.reset()  # it ran fine for a while: the next failure starts from a short delay
        return []

    def _reap(self) -> int | None:
        """Stop watching ffmpeg and end it; its exit code (None if it had to be killed)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        for f in (proc.stdout, proc.stderr):
            try:
                self.loop.unwatch(f.fileno())
            except (KeyError, ValueError, OSError):
                pass
        code = None
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        try:
            rest = proc.stderr.read()  # its last words say why it stopped
            if rest:
                self._err_part += rest
        except (OSError, ValueError):
            pass
        for raw in self._err_part.split(b"\n"):
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr_tail.append(line[:300])
        self._err_part = b""
        for f in (proc.stdout, proc.stderr):
            f.close()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        if self.proc is not None:
            self._reap()
