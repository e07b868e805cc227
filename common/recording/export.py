"""What a recording holds (``soundbus info``) and its audio as WAV (``soundbus export``).

Records are read as protocol v2 messages (common.recording.messages; v1 records are
converted). Audio durations come from audio messages only: a result covers a window of
audio, which ``info`` reports as windows and their span, never as audio of its own.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

from common.recording.format import Problem, Record, RecordingError
from common.recording.messages import record_message
from common.wire.codec import Audio, ProtocolError, message_stream
from common.wire.messages import SAMPLE_WIDTH, Heartbeat, Layout, Result, SampleFormat


@dataclass
class StreamSummary:
    """One topic of a recording. Units: ``samples`` per channel, times ns, ``audio_s`` seconds."""

    kind: str
    stream: str
    model: str
    formats: set[str] = field(default_factory=set)  # "48000 Hz 2 ch s16 interleaved"
    rates: set[int] = field(default_factory=set)
    messages: int = 0
    samples: int = 0
    audio_s: float = 0.0  # audio carried (raw, tensor); for results: the span their windows cover
    first_ns: int = 0
    last_ns: int = 0
    epochs: dict[int, int] = field(default_factory=dict)  # epoch -> last seq seen
    gaps: int = 0  # forward sequence jumps
    missing: int = 0  # messages missing in those jumps
    stale: int = 0  # seq not above the previous one (duplicates, reordering)
    lost_s: float = 0.0  # audio the messages say was lost upstream
    _window_span: list[int] = field(default_factory=list)  # results: [first start_ns, last end_ns]

    def add(self, msg: Any, t_recv_ns: int) -> None:
        if not self.messages:
            self.first_ns = t_recv_ns
        self.messages += 1
        self.last_ns = max(self.last_ns, t_recv_ns)
        if isinstance(msg, Audio):
            h = msg.header
            self.formats.add(f"{h.rate} Hz {h.channels} ch {h.format.value} {h.layout.value}")
            self.rates.add(h.rate)
            self.samples += h.samples
            self.audio_s += h.samples / h.rate
            self.lost_s += h.lost / h.rate
            epoch, seq = h.epoch, h.seq
        elif isinstance(msg, Result):
            self.rates.add(msg.rate)
            self.formats.add(f"{msg.rate} Hz model rate")
            span = self._window_span
            if span:
                span[0], span[1] = min(span[0], msg.start_ns), max(span[1], msg.end_ns)
            else:
                span += [msg.start_ns, msg.end_ns]
            self.audio_s = (span[1] - span[0]) / 1e9
            self.lost_s += msg.lost_ns / 1e9
            epoch, seq = msg.epoch, msg.seq
        elif isinstance(msg, Heartbeat):
            epoch, seq = msg.epoch, None
        else:
            epoch, seq = 0, None
        if seq is None:
            return
        last = self.epochs.get(epoch)
        if last is not None:
            if seq > last + 1:
                self.gaps += 1
                self.missing += seq - last - 1
            elif seq <= last:
                self.stale += 1
                return
        self.epochs[epoch] = seq

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stream": self.stream,
            "model": self.model,
            "formats": sorted(self.formats),
            "rates": sorted(self.rates),
            "messages": self.messages,
            "samples": self.samples,
            "audio_s": round(self.audio_s, 6),
            "lost_s": round(self.lost_s, 6),
            "span_s": round((self.last_ns - self.first_ns) / 1e9, 6),
            "msg_per_s": round(self.messages / max((self.last_ns - self.first_ns) / 1e9, 1e-9), 3)
            if self.messages > 1
            else 0.0,
            "epochs": len(self.epochs),
            "gaps": self.gaps,
            "missing": self.missing,
            "stale": self.stale,
        }


@dataclass
class RecordingSummary:
    """Everything ``soundbus info`` prints, gathered record by record."""

    files: list[dict[str, Any]] = field(default_factory=list)
    streams: dict[bytes, StreamSummary] = field(default_factory=dict)
    records: int = 0
    undecodable: int = 0
    v1_records: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    problems: list[Problem] = field(default_factory=list)

    def add_file(self, path: str, size: int, version: int, meta: dict[str, Any]) -> None:
        self.files.append({"path": path, "bytes": size, "format": version, "meta": meta})

    def add(self, rec: Record) -> None:
        self.records += 1
        self.first_ns = rec.t_recv_ns if self.first_ns is None else min(self.first_ns, rec.t_recv_ns)
        self.last_ns = rec.t_recv_ns if self.last_ns is None else max(self.last_ns, rec.t_recv_ns)
        if len(rec.frames) != 1:
            self.v1_records += 1
        try:
            msg, data = record_message(rec)
        except ProtocolError:
            self.undecodable += 1
            return
        topic = data[: data.index(b"\0")]
        s = self.streams.get(topic)
        if s is None:
            if len(self.streams) >= 100_000:  # bounded, whatever the file holds
                return
            kind = topic.split(b"/", 1)[0].decode()
            s = self.streams[topic] = StreamSummary(kind, message_stream(msg), getattr(msg, "model", ""))
        s.add(msg, rec.t_recv_ns)

    def to_dict(self) -> dict[str, Any]:
        span = (self.last_ns - self.first_ns) / 1e9 if self.first_ns is not None and self.last_ns is not None else 0.0
        return {
            "files": [{**f, "meta": {k: v for k, v in f["meta"].items() if isinstance(v, (int, str, list))}}
                      for f in self.files],
            "records": self.records,
            "v1_records": self.v1_records,
            "undecodable": self.undecodable,
            "span_s": round(span, 6),
            "streams": [s.to_dict() for _, s in sorted(self.streams.items())],
            "problems": [{"path": p.path, "kind": p.kind, "offset": p.offset, "bytes": p.length, "detail": p.detail}
                         for p in self.problems],
            "truncated_bytes": sum(p.length for p in self.problems if p.kind == "truncated"),
            "corrupt_records": sum(1 for p in self.problems if p.kind == "corrupt"),
        }

    def text(self) -> str:
        d = self.to_dict()
        out = [f"{f['path']}: format {f['format']}, {f['bytes']} bytes" for f in d["files"]]
        out.append(f"{d['records']} records over {d['span_s']:.3f} s, {len(d['streams'])} topics"
                   + (f", {d['v1_records']} recorded with protocol v1" if d["v1_records"] else "")
                   + (f", {d['undecodable']} undecodable" if d["undecodable"] else ""))
        for s in d["streams"]:
            name = f"{s['kind']}/{s['stream']}" + (f"/{s['model']}" if s["model"] else "")
            fmt = "; ".join(s["formats"]) or "-"
            what = (f"windows span {s['audio_s']:.3f} s" if s["kind"] == "result"
                    else f"audio {s['audio_s']:.3f} s" if s["kind"] in ("raw", "tensor") else "")
            out.append(
                f"  {name}: {fmt}; {s['messages']} msgs ({s['msg_per_s']:.1f}/s), {what}{', ' if what else ''}"
                f"span {s['span_s']:.3f} s, {s['epochs']} epoch(s), {s['gaps']} gap(s) ({s['missing']} missing)"
                + (f", {s['lost_s']:.3f} s lost upstream" if s["lost_s"] else "")
                + (f", {s['stale']} stale" if s["stale"] else "")
            )
        for p in self.problems:
            out.append(f"  DAMAGE {p}")
        if not self.problems:
            out.append("  no damage")
        return "\n".join(out)


def interleaved_bytes(msg: Any) -> bytes:
    """A message's samples in WAV order: (samples, channels) interleaved, little-endian.

    s8 becomes u8 (WAV stores 8-bit unsigned); s24 stays packed 3-byte; floats stay floats.
    """
    import numpy as np

    h = msg.header
    a = msg.samples()  # (samples, channels[, 3]) interleaved or (channels, samples[, 3]) planar
    if h.layout is Layout.PLANAR:
        a = np.swapaxes(a, 0, 1)  # -> (samples, channels[, 3])
    if h.format is SampleFormat.S8:
        a = (a.astype(np.int16) + 128).astype(np.uint8)
    return np.ascontiguousarray(a).tobytes()


class WavWriter:
    """A streaming RIFF/WAVE writer: PCM (tag 1) for integer formats, IEEE float (tag 3) for f32/f64.

    ``rate`` Hz, ``channels``, ``format`` a protocol sample format; sizes are patched on close.
    """

    _MAX_DATA = 0xFFFFFFFF - 64

    def __init__(self, path: str | os.PathLike[str], rate: int, channels: int, format: str) -> None:
        self.rate, self.channels, self.format = rate, channels, format
        self.width = SAMPLE_WIDTH[SampleFormat(format)]
        self.is_float = format in ("f32", "f64")
        self.samples = 0
        self._data = 0
        try:
            self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise RecordingError(f"cannot create {path}: {e.strerror}; check that its directory exists and is "
                                 "writable.") from None
        block = self.width * channels
        fmt = struct.pack("<HHIIHH", 3 if self.is_float else 1, channels, rate, rate * block, block, 8 * self.width)
        if self.is_float:  # non-PCM: fmt has cbSize, and a fact chunk holds the sample count
            fmt += struct.pack("<H", 0)
        head = b"RIFF\0\0\0\0WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        if self.is_float:
            self._fact_at = len(head) + 8
            head += b"fact" + struct.pack("<I", 4) + b"\0\0\0\0"
        head += b"data\0\0\0\0"
        self._data_size_at = len(head) - 4
        self._f.write(head)

    def write(self, data: bytes) -> None:
        """Append interleaved sample bytes (see interleaved_bytes)."""
        if self._data + len(data) > self._MAX_DATA:
            raise RecordingError("a WAV file holds at most 4 GiB; export a shorter part of the recording.")
        try:
            self._f.write(data)
        except OSError as e:
            raise RecordingError(f"cannot write {self._f.name}: {e.strerror}; free some space or export "
                                 "elsewhere.") from None
        self._data += len(data)
        self.samples += len(data) // (self.width * self.channels)

    def write_silence(self, samples: int) -> None:
        """Append ``samples`` silent samples per channel (0, or 0x80 for 8-bit unsigned)."""
        fill = b"\x80" if self.format in ("u8", "s8") else b"\0"
        n = samples * self.width * self.channels
        while n > 0:
            k = min(n, 1 << 20)
            self.write(fill * k)
            n -= k

    def close(self) -> None:
        if self._f.closed:
            return
        if self._data % 2:
            self._f.write(b"\0")  # RIFF chunks are word-aligned; the pad is not part of data
        end = self._f.tell()
        self._f.seek(4)
        self._f.write(struct.pack("<I", end - 8))
        if self.is_float:
            self._f.seek(self._fact_at)
            self._f.write(struct.pack("<I", self.samples))
        self._f.seek(self._data_size_at)
        self._f.write(struct.pack("<I", self._data))
        self._f.close()
