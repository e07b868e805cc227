"""What a recording holds (``soundbus info``) and its audio as WAV (``soundbus export``).

These read the frames stored by common.recording with common.protocol.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

from common.recording import Problem, Record, RecordingError


@dataclass
class StreamSummary:
    """One topic of a recording. Units: ``frames`` samples per channel, times ns, ``audio_s`` seconds."""

    kind: str
    stream: str
    model: str
    formats: set[str] = field(default_factory=set)  # "48000 Hz 2 ch s16 interleaved"
    rates: set[int] = field(default_factory=set)
    messages: int = 0
    frames: int = 0
    audio_s: float = 0.0
    first_ns: int = 0
    last_ns: int = 0
    epochs: dict[int, int] = field(default_factory=dict)  # epoch -> last seq seen
    gaps: int = 0  # forward sequence jumps
    missing: int = 0  # messages missing in those jumps
    stale: int = 0  # seq not above the previous one (duplicates, reordering)

    def add(self, h: Any, t_recv_ns: int) -> None:
        if not self.messages:
            self.first_ns = t_recv_ns
        self.messages += 1
        self.last_ns = max(self.last_ns, t_recv_ns)
        if h.rate:
            self.formats.add(f"{h.rate} Hz {h.channels} ch {h.format} {h.layout}")
            self.rates.add(h.rate)
            self.frames += h.frames
            self.audio_s += h.frames / h.rate
        last = self.epochs.get(h.epoch)
        if last is not None:
            if h.seq > last + 1:
                self.gaps += 1
                self.missing += h.seq - last - 1
            elif h.seq <= last:
                self.stale += 1
                return
        self.epochs[h.epoch] = h.seq

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stream": self.stream,
            "model": self.model,
            "formats": sorted(self.formats),
            "rates": sorted(self.rates),
            "messages": self.messages,
            "frames": self.frames,
            "audio_s": round(self.audio_s, 6),
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
    first_ns: int | None = None
    last_ns: int | None = None
    problems: list[Problem] = field(default_factory=list)

    def add_file(self, path: str, size: int, version: int, meta: dict[str, Any]) -> None:
        self.files.append({"path": path, "bytes": size, "format": version, "meta": meta})

    def add(self, rec: Record) -> None:
        from common.protocol import ProtocolError, decode

        self.records += 1
        self.first_ns = rec.t_recv_ns if self.first_ns is None else min(self.first_ns, rec.t_recv_ns)
        self.last_ns = rec.t_recv_ns if self.last_ns is None else max(self.last_ns, rec.t_recv_ns)
        try:
            h = decode(rec.frames).header
        except ProtocolError:
            self.undecodable += 1
            return
        s = self.streams.get(rec.topic)
        if s is None:
            s = self.streams[rec.topic] = StreamSummary(h.kind.value, h.stream, h.model)
        s.add(h, rec.t_recv_ns)

    def to_dict(self) -> dict[str, Any]:
        span = (self.last_ns - self.first_ns) / 1e9 if self.first_ns is not None and self.last_ns is not None else 0.0
        return {
            "files": [{**f, "meta": {k: v for k, v in f["meta"].items() if isinstance(v, (int, str, list))}}
                      for f in self.files],
            "records": self.records,
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
                   + (f", {d['undecodable']} undecodable" if d["undecodable"] else ""))
        for s in d["streams"]:
            name = f"{s['kind']}/{s['stream']}" + (f"/{s['model']}" if s["model"] else "")
            fmt = "; ".join(s["formats"]) or "-"
            out.append(
                f"  {name}: {fmt}; {s['messages']} msgs ({s['msg_per_s']:.1f}/s), audio {s['audio_s']:.3f} s, "
                f"span {s['span_s']:.3f} s, {s['epochs']} epoch(s), {s['gaps']} gap(s) ({s['missing']} missing)"
                + (f", {s['stale']} stale" if s["stale"] else "")
            )
        for p in self.problems:
            out.append(f"  DAMAGE {p}")
        if not self.problems:
            out.append("  no damage")
        return "\n".join(out)


def interleaved_bytes(msg: Any) -> bytes:
    """A message's samples in WAV order: (frames, channels) interleaved, little-endian.

    s8 becomes u8 (WAV stores 8-bit unsigned); s24 stays packed 3-byte; floats stay floats.
    """
    import numpy as np

    h = msg.header
    a = msg.samples()  # (frames, channels[, 3]) interleaved or (channels, frames[, 3]) planar
    if h.layout == "planar":
        a = np.swapaxes(a, 0, 1)  # -> (frames, channels[, 3])
    if h.format == "s8":
        a = (a.astype(np.int16) + 128).astype(np.uint8)
    return np.ascontiguousarray(a).tobytes()


class WavWriter:
    """A streaming RIFF/WAVE writer: PCM (tag 1) for integer formats, IEEE float (tag 3) for f32/f64.

    ``rate`` Hz, ``channels``, ``format`` a protocol sample format; sizes are patched on close.
    """

    _MAX_DATA = 0xFFFFFFFF - 64

    def __init__(self, path: str | os.PathLike[str], rate: int, channels: int, format: str) -> None:
        from common.protocol import SAMPLE_FORMATS

        self.rate, self.channels, self.format = rate, channels, format
        self.width = SAMPLE_FORMATS[format][1]
        self.is_float = format in ("f32", "f64")
        self.frames = 0
        self._data = 0
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        block = self.width * channels
        fmt = struct.pack("<HHIIHH", 3 if self.is_float else 1, channels, rate, rate * block, block, 8 * self.width)
        if self.is_float:  # non-PCM: fmt has cbSize, and a fact chunk holds the frame count
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
        self._f.write(data)
        self._data += len(data)
        self.frames += len(data) // (self.width * self.channels)

    def write_silence(self, frames: int) -> None:
        """Append ``frames`` silent frames (0, or 0x80 for 8-bit unsigned)."""
        fill = b"\x80" if self.format in ("u8", "s8") else b"\0"
        n = frames * self.width * self.channels
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
            self._f.write(struct.pack("<I", self.frames))
        self._f.seek(self._data_size_at)
        self._f.write(struct.pack("<I", self._data))
        self._f.close()
