"""``device[:NAME_OR_INDEX]`` and ``loopback[:SINK]``: live input through PortAudio (python-sounddevice).

The PortAudio callback does one thing: copy the block and put it on capture's one queue
(``put((source, block...))``, the pattern of sounddevice's own examples) with the
callback's clock readings; the loop frames it. If the loop has more than
``QUEUE_SECONDS`` of this source's audio waiting, the callback drops the block and counts
its samples; the next chunk is flagged OVERFLOW|DISCONTINUITY with ``offset`` advanced and
``lost`` set to exactly the lost samples. PortAudio's own input overflow flags the next
chunk the same way.

Capture time: PortAudio gives ``inputBufferAdcTime`` (when the block's first sample hit
the ADC) and ``currentTime`` on the stream clock; the wall-clock capture time is
``time_ns() at the callback - (currentTime - inputBufferAdcTime)``. Host APIs that report
no ADC time fall back to ``callback time - block duration``.

A device that errors, stops, or delivers nothing for ``--watchdog`` seconds is closed and
reopened with exponential backoff (0.5 s doubling to 30 s); every reopen is a new epoch.
When the device cannot be found by its name any more (unplugged), PortAudio's device list
is rescanned before each retry (when no other device of this process is open: a rescan
restarts PortAudio), so the device is found again when it is plugged back in.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from capture.devices import InputDevice, PulseSourceEnv, _sd, find_input, loopback_target, rescan
from capture.framer import Chunk, StreamFormat, samples_for_ms
from capture.sources.base import Backoff, Loop, Source, log
from common.errors import UserError
from common.observe.ratelog import RateLimitedLog
from common.wire.messages import Flag, HeartbeatState

DTYPES = {"s16": "int16", "s32": "int32", "f32": "float32"}
QUEUE_SECONDS = 2.0  # audio waiting in the loop's queue before the callback drops blocks
_open_streams: set[int] = set()  # ids of device sources with an open PortAudio stream (rescan only when empty)


def adc_wall_ns(wall_ns: int, adc_s: float, current_s: float, samples: int, rate: int) -> int:
    """Wall-clock ns of a block's first sample from PortAudio's stream-clock readings (seconds)."""
    age = current_s - adc_s
    if adc_s > 0 and 0 <= age < 1.0:
        return wall_ns - int(age * 1e9)
    return wall_ns - samples * 1_000_000_000 // rate


class DeviceSource(Source):
    """An input device (or a PulseAudio monitor for loopback), reopened with backoff on errors."""

    live = True

    def __init__(self, spec, opts) -> None:
        super().__init__(spec, opts)
        self.pulse_source: str | None = None
        self.device: InputDevice | None = None
        self._stream: Any = None
        self._put = 0  # blocks the callback put on the loop's queue (written by the callback only)
        self._taken = 0  # blocks the loop framed (written by the loop only)
        self._lost_total = 0  # samples dropped by the callback (written there only)
        self._lost_seen = 0
        self._warn = RateLimitedLog(log)
        self.backoff = Backoff(0.5, opts.backoff_max_s)
        self.reopen_at: float | None = None
        self.loop: Loop | None = None

    # -- setup (main thread) -----------------------------------------------------------------

    def _resolve(self) -> InputDevice:
        if self.spec.kind == "loopback":
            dev, self.pulse_source = loopback_target(self.spec.arg)
            return dev
        return find_input(self.spec.arg)

    def prepare(self) -> None:
        sd = _sd()
        dev = self._resolve()
        fmt = self.opts.format or "s16"
        channels = self.opts.channels or 1
        rate = self.opts.rate or int(dev.default_rate)
        what = f"{dev.name!r}" + (f" ({self.pulse_source})" if self.pulse_source else "")
        if channels > dev.channels:
            raise UserError(
                f"device {what} has {dev.channels} input channel(s), {channels} asked; use --channels {dev.channels} "
                f"or fewer."
            )
        try:
            with PulseSourceEnv(self.pulse_source):
                sd.check_input_settings(device=dev.index, channels=channels, dtype=DTYPES[fmt], samplerate=rate)
        except sd.PortAudioError as e:
            raise UserError(
                f"device {what} cannot record {rate} Hz, {channels} ch, {fmt} ({e.args[0]}); it defaults to "
                f"{dev.default_rate:.0f} Hz: use --rate {dev.default_rate:.0f} (convert resamples to any model rate)."
            ) from None
        self.device = dev
        self.fmt = StreamFormat(rate, channels, fmt)
        kind = f"loopback:{self.pulse_source}" if self.pulse_source else "device"
        self.description = f"{kind} {dev.name} [{dev.hostapi}] ({rate} Hz, {channels} ch, {fmt})"

    # -- PortAudio's thread ------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Copy and hand over, nothing else (never block). Each item carries the running count of
        # samples dropped before it, so the loss lands in the right place.
        if self._put - self._taken > self._max_waiting:
            self._lost_total += frames
            return
        self._put += 1
        self.loop.put((self, (indata.copy(), time.time_ns(), time_info.inputBufferAdcTime, time_info.currentTime,
                              bool(status.input_overflow), self._lost_total)))

    # -- capture's loop ----------------------------------------------------------------------

    def start(self, loop: Loop, now: float) -> list[Chunk]:
        self.loop = loop
        self._open(now)
        return []

    def _open(self, now: float) -> None:
        sd = _sd()
        self.reopen_at = None
        block = samples_for_ms(self.fmt.rate, self.opts.chunk_ms)
        self._max_waiting = max(4, int(QUEUE_SECONDS * self.fmt.rate / block))
        self._put = self._taken = self._lost_total = self._lost_seen = 0
        try:
            if self.restarts and self.spec.kind != "loopback" and not _open_streams:
                rescan()  # the device may have come back with another index
            if self.restarts:
                self.device = self._resolve()
            with PulseSourceEnv(self.pulse_source):
                stream = sd.InputStream(
                    device=self.device.index, channels=self.fmt.channels, samplerate=self.fmt.rate,
                    dtype=DTYPES[self.fmt.format], blocksize=block,  # one callback per chunk: no re-chunking delay
                    callback=self._callback,
                )
                stream.start()
        except (sd.PortAudioError, OSError, UserError) as e:
            self._retry(now, f"cannot open {self.device.name if self.device else '?'}: {e}")
            return
        self._stream = stream
        _open_streams.add(id(self))
        self.framer.new_epoch()
        self.opened = self.last_block = now
        self.set_state(HeartbeatState.RUNNING, self.description)

    def _retry(self, now: float, why: str) -> None:
        delay = self.backoff.next_delay()
        self.reopen_at = now + delay
        self.restarts += 1
        self.set_state(HeartbeatState.RECONNECTING, f"{why}; retry in {delay:g} s")

    def on_item(self, item: Any, now: float) -> list[Chunk]:
        self._taken += 1
        if self._stream is None:
            return []
        block, wall, adc, cur, overflow, lost_before = item
        self.last_block = now
        out: list[Chunk] = []
        lost = lost_before - self._lost_seen
        if lost:
            self._lost_seen += lost
            self._warn.warning("overrun", f"stream {self.stream}: capture fell behind, {lost} samples lost")
            out += self.framer.lost(lost)
        if overflow:
            self._warn.warning("overflow", f"stream {self.stream}: PortAudio input overflow")
            self.framer.flag_next(Flag.OVERFLOW | Flag.DISCONTINUITY)
        return out + self.framer.push(block.tobytes(), adc_wall_ns(wall, adc, cur, len(block), self.fmt.rate))

    def due_in(self, now: float) -> float | None:
        if self.reopen_at is not None:
            return self.reopen_at - now
        return None  # the runtime's idle wake-up checks the watchdog often enough

    def tick(self, now: float) -> list[Chunk]:
        if self.reopen_at is not None:
            if now >= self.reopen_at:
                self._open(now)
            return []
        stream = self._stream
        if stream is None:
            return []
        why = None
        if not stream.active:
            why = "the stream stopped (device gone or host error)"
        elif now - self.last_block > self.opts.watchdog_s:
            why = f"no audio for {self.opts.watchdog_s:g} s"
        if why is None:
            if now - self.opened > 10.0:
                self.backoff.reset()  # it ran fine for a while: the next failure starts from a short delay
            return []
        out = self.framer.end()
        self.close()
        self._retry(now, why)
        return out

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _open_streams.discard(id(self))
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception as e:  # closing a dead device must not stop the reopening
                log.debug("stream %s: close failed: %s", self.stream, e)
