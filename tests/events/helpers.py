"""Messages as the stages make them, for driving the event store's logic without sockets."""

from __future__ import annotations

import numpy as np

from common.wire.codec import decode, encode, encode_audio
from common.wire.messages import AudioHeader, Event, Label, Layout, Result, SampleFormat
from common.wire.topics import Kind

NS = 1_000_000_000


def tensor_messages(stream: str, x: np.ndarray, rate: int, chunk: int, t0_ns: int, epoch: int = 1,
                    first_seq: int = 0, first_offset: int = 0, end: bool = True) -> list:
    """``x`` float32 (samples,) as decoded tensor messages of ``chunk`` samples, stamped like convert does."""
    out = []
    for k, i in enumerate(range(0, len(x), chunk)):
        part = np.ascontiguousarray(x[i : i + chunk], dtype=np.float32)[None, :]
        off = first_offset + i
        last = i + chunk >= len(x)
        h = AudioHeader(stream=stream, epoch=epoch, seq=first_seq + k, t_capture_ns=t0_ns + off * NS // rate,
                        rate=rate, channels=1, format=SampleFormat.F32, layout=Layout.PLANAR, samples=part.shape[1],
                        offset=off, flags=4 if (last and end) else 0, source="test:signal")
        out.append(decode(encode_audio(Kind.TENSOR, h, part)))
    return out


def raw_messages(stream: str, x: np.ndarray, rate: int, chunk: int, t0_ns: int, epoch: int = 1) -> list:
    """``x`` int16 (samples, channels) as decoded raw s16 interleaved messages."""
    out = []
    for k, i in enumerate(range(0, len(x), chunk)):
        part = np.ascontiguousarray(x[i : i + chunk], dtype="<i2")
        h = AudioHeader(stream=stream, epoch=epoch, seq=k, t_capture_ns=t0_ns + i * NS // rate, rate=rate,
                        channels=part.shape[1], format=SampleFormat.S16, layout=Layout.INTERLEAVED,
                        samples=part.shape[0], offset=i, flags=4 if i + chunk >= len(x) else 0, source="test:raw")
        out.append(decode(encode_audio(Kind.RAW, h, part)))
    return out


def window_results(stream: str, model: str, scores: np.ndarray, rate: int, hop: int, t0_ns: int,
                   on: float = 0.5, off: float = 0.35, hold: int = 1, label: str = "speech", epoch: int = 1,
                   first_seq: int = 0) -> list[Result]:
    """One decoded Result per window of ``hop`` samples with ``label`` at ``scores[k]``; start/stop
    events with classify's hysteresis rules (stop stamped at the first window below ``off``)."""
    out, active, below, since, peak, below_since = [], False, 0, 0, 0.0, 0
    for k, s in enumerate(scores):
        start = t0_ns + k * hop * NS // rate
        events = []
        if active:
            peak = max(peak, float(s))
            if s < off:
                if below == 0:
                    below_since = start
                below += 1
                if below >= hold:
                    events.append(Event(label, "stop", below_since, peak, since))
                    active, below = False, 0
            else:
                below = 0
        elif s >= on:
            active, since, peak, below = True, start, float(s), 0
            events.append(Event(label, "start", start, float(s), start))
        r = Result(stream=stream, model=model, epoch=epoch, seq=first_seq + k, start_ns=start,
                   end_ns=t0_ns + (k + 1) * hop * NS // rate, offset=k * hop, rate=rate, seq_first=k, seq_last=k,
                   labels=[Label(label, float(s))], events=events)
        out.append(decode(encode(r)))
    return out
