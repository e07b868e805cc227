"""``device[:NAME_OR_INDEX]`` and ``loopback[:SINK]``: live input through PortAudio (python-sounddevice).

The PortAudio callback does one thing: copy the block into a bounded queue
(``q.put_nowait(indata.copy())``, the pattern of sounddevice's own examples) with the
callback's clock readings. A full queue drops the block and counts its samples; the
reader thread then publishes the next frame flagged OVERFLOW|DISCONTINUITY with
``offset`` advanced by exactly the lost samples. PortAudio's own input overflow flags the
next frame the same way.

Capture time: PortAudio gives ``inputBufferAdcTime`` (when the block's first sample hit
the ADC) and ``currentTime`` on the stream clock; the wall-clock capture time is
``time_ns() at the callback - (currentTime - inputBufferAdcTime)``. Host APIs that report
no ADC time fall back to ``callback time - block duration``.

A device that errors, stops, or delivers nothing for ``--watchdog`` seconds is closed and
reopened with exponential backoff (0.5 s doubling to 30 s); every reopen is a new epoch.
"""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np

from capture.devices import InputDevice, PulseSourceEnv, _sd, find_input, loopback_target
from capture.errors import CaptureError
from capture.framer import StreamFormat, frames_for_ms
from capture.sources.base import Backoff, Source, log
from common.protocol import Flag
from common.stage import RateLimitedLog, StopFlag

DTYPES = {"s16": "int16", "s32": "int32", "f32": "float32"}
QUEUE_SECONDS = 2.0  # audio the callback queue holds before it drops blocks


class DeviceLost(Exception):
    """The stream stopped delivering; reopen it."""


def adc_wall_ns(wall_ns: int, adc_s: float, current_s: float, frames: int, rate: int) -> int:
    """Wall-clock ns of a block's first sample from PortAudio's stream-clock readings (seconds)."""
    age = current_s - adc_s
    if adc_s > 0 and 0 <= age < 1.0:
        return wall_ns - int(age * 1e9)
    return wall_ns - frames * 1_000_000_000 // rate


class DeviceSource(Source):
    """An input device (or a PulseAudio monitor for loopback), reopened with backoff on errors."""

    live = True

    def __init__(self, spec, opts) -> None:
        super().__init__(spec, opts)
        self.pulse_source: str | None = None
        self.device: InputDevice | None = None
        self._q: queue.Queue[tuple[np.ndarray, int, float, float, bool, int]] | None = None
        self._lost_total = 0  # samples dropped by the callback (written there only)
        self._lost_seen = 0
        self._stream: Any = None
        self._warn = RateLimitedLog(log)

    # -- setup -----------------------------------------------------------------------------

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
            raise CaptureError(
                f"device {what} has {dev.channels} input channel(s), {channels} asked; use --channels {dev.channels} "
                f"or fewer."
            )
        try:
            with PulseSourceEnv(self.pulse_source):
                sd.check_input_settings(device=dev.index, channels=channels, dtype=DTYPES[fmt], samplerate=rate)
        except sd.PortAudioError as e:
            raise CaptureError(
                f"device {what} cannot record {rate} Hz, {channels} ch, {fmt} ({e.args[0]}); it defaults to "
                f"{dev.default_rate:.0f} Hz: use --rate {dev.default_rate:.0f} (convert resamples to any model rate)."
            ) from None
        self.device = dev
        self.fmt = StreamFormat(rate, channels, fmt)
        kind = f"loopback:{self.pulse_source}" if self.pulse_source else "device"
        self.description = f"{kind} {dev.name} [{dev.hostapi}] ({rate} Hz, {channels} ch, {fmt})"

    # -- PortAudio thread ------------------------------------------------------------------

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        # Runs in PortAudio's thread: copy and hand over, nothing else (never block). Each item
        # carries the running count of samples dropped before it, so the loss lands in the right place.
        item = (indata.copy(), time.time_ns(), time_info.inputBufferAdcTime, time_info.currentTime,
                bool(status.input_overflow), self._lost_total)
        try:
            self._q.put_nowait(item)  # type: ignore[union-attr]
        except queue.Full:
            self._lost_total += frames

    # -- reader thread ---------------------------------------------------------------------

    def _open(self) -> Any:
        sd = _sd()
        assert self.device is not None
        block = frames_for_ms(self.fmt.rate, self.opts.frame_ms)
        self._q = queue.Queue(maxsize=max(4, int(QUEUE_SECONDS * self.fmt.rate / block)))
        self._lost_total = self._lost_seen = 0
        with PulseSourceEnv(self.pulse_source):
            stream = sd.InputStream(
                device=self.device.index,
                channels=self.fmt.channels,
                samplerate=self.fmt.rate,
                dtype=DTYPES[self.fmt.format],
                blocksize=block,  # one callback per frame: no re-chunking latency
                callback=self._callback,
            )
            stream.start()
        return stream

    def run(self, stop: StopFlag) -> None:
        sd = _sd()
        assert self.framer is not None
        backoff = Backoff(0.5, self.opts.backoff_max_s)
        while not stop:
            try:
                self._stream = self._open()
            except (sd.PortAudioError, OSError) as e:
                self.set_state("reconnecting", f"cannot open {self.device.name if self.device else '?'}: {e}; "
                                               f"retry in {backoff.next_s:g} s")
                if not backoff.wait(stop):
                    break
                continue
            self.framer.new_epoch()
            opened = time.monotonic()
            self.set_state("running", self.description)
            try:
                self._pump(stop)
            except DeviceLost as e:
                self.restarts += 1
                self.framer.end()
                self.set_state("reconnecting", f"{e}; reopening in {backoff.next_s:g} s")
            finally:
                self.close()
            if stop:
                break
            if time.monotonic() - opened > 10.0:
                backoff.reset()  # it ran fine for a while: start again from a short delay
            if not backoff.wait(stop):
                break
        self.set_state("ended")

    def _pump(self, stop: StopFlag) -> None:
        assert self.framer is not None and self._q is not None
        framer, q, rate = self.framer, self._q, self.fmt.rate
        last = time.monotonic()
        while not stop:
            try:
                block, wall, adc, cur, overflow, lost_before = q.get(timeout=0.2)
            except queue.Empty:
                stream = self._stream
                if stream is None or not stream.active:
                    raise DeviceLost("the stream stopped (device gone or host error)") from None
                if time.monotonic() - last > self.opts.watchdog_s:
                    raise DeviceLost(f"no audio for {self.opts.watchdog_s:g} s") from None
                continue
            last = time.monotonic()
            lost = lost_before - self._lost_seen
            if lost:
                self._lost_seen += lost
                self._warn.warning("overrun", f"stream {self.stream}: callback queue full, {lost} samples lost")
                framer.lost(lost)
            if overflow:
                self._warn.warning("overflow", f"stream {self.stream}: PortAudio input overflow")
                framer.flag_next(Flag.OVERFLOW | Flag.DISCONTINUITY)
            framer.push(block.tobytes(), adc_wall_ns(wall, adc, cur, len(block), rate))

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception as e:  # closing a dead device must not kill the reopen loop
                log.debug("stream %s: close failed: %s", self.stream, e)
