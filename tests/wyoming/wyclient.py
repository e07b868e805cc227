"""Spoken audio for the Wyoming tests (espeak-ng) and a client that does what Home Assistant does."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16_000


# -- audio -------------------------------------------------------------------------------------

@dataclass
class Speech:
    """16 kHz int16 samples with ``lead_s`` of silence before the words; the words' span in ms."""

    pcm: np.ndarray
    start_ms: int
    end_ms: int


_SPEECH: dict[tuple[str, float, float], Speech] = {}


def speech(text: str, lead_s: float = 1.0, tail_s: float = 1.5, tmp: Path | None = None) -> Speech:
    """espeak-ng saying ``text``, resampled to 16 kHz, between silences; the words' span from the signal."""
    key = (text, lead_s, tail_s)
    if key in _SPEECH:
        return _SPEECH[key]
    import soundfile as sf
    import soxr

    wav = Path(tmp or "/tmp") / f"soundbus-wy-{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
    x, rate = sf.read(str(wav), dtype="float32")
    wav.unlink(missing_ok=True)
    x = soxr.resample(x, rate, RATE)
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    loud = np.nonzero(np.sqrt((frames**2).mean(axis=1)) > 10 ** (-45 / 20))[0]  # 10 ms frames above -45 dBFS
    lead = int(lead_s * RATE)
    start_ms, end_ms = int(lead_s * 1000) + loud[0] * 10, int(lead_s * 1000) + (loud[-1] + 1) * 10
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(int(tail_s * RATE), np.float32)])
    _SPEECH[key] = s = Speech(np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16), start_ms, end_ms)
    return s


# -- a client doing Home Assistant's sequence --------------------------------------------------

@dataclass
class Answer:
    info: dict | None
    events: list  # wyoming Events received, in order
    sockname: tuple | None = None

    def types(self) -> list[str]:
        return [e.type for e in self.events]


async def ha_client(port: int, pcm: np.ndarray, names: list[str] | None, chunk_ms: int = 10,
                    speed: float | None = None, describe: bool = False, timeout: float = 60.0) -> Answer:
    """Home Assistant's wake-word sequence (homeassistant/components/wyoming/wake_word.py): detect,
    audio-start, 16 kHz s16 mono chunks with their millisecond timestamps, reading events meanwhile;
    stop at the first detection. If the audio runs out first: audio-stop, then read until
    not-detected (what non-HA clients do). ``speed``: real-time factor of the sending (None: as fast
    as the server takes it)."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe
    from wyoming.wake import Detect

    async with AsyncTcpClient("127.0.0.1", port) as client:
        sockname = client._writer.get_extra_info("sockname")
        info = None
        if describe:
            await client.write_event(Describe().event())
            info = (await asyncio.wait_for(client.read_event(), timeout)).data
        await client.write_event(Detect(names=names).event())
        await client.write_event(AudioStart(rate=RATE, width=2, channels=1).event())
        events: list = []
        done = asyncio.Event()

        async def read() -> None:
            while True:
                ev = await client.read_event()
                if ev is None:
                    break
                events.append(ev)
                if ev.type in ("detection", "not-detected", "error"):
                    break
            done.set()

        reader = asyncio.create_task(read())
        step = RATE * chunk_ms // 1000
        data = pcm.astype("<i2").tobytes()
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            if done.is_set():
                break
            chunk = AudioChunk(rate=RATE, width=2, channels=1, audio=data[2 * i : 2 * (i + step)],
                               timestamp=i * 1000 // RATE)
            await client.write_event(chunk.event())
            if speed:
                await asyncio.sleep(max(0.0, t0 + (i + step) / RATE / speed - time.monotonic()))
        if not done.is_set():
            await client.write_event(AudioStop().event())
        await asyncio.wait_for(reader, timeout)
        return Answer(info, events, sockname)
