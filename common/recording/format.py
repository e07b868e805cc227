"""soundbus recording files: the exact wire messages of a stream, with their receive times.

Format version 1 (all integers little-endian; full table in docs/recording.md)::

    file header   magic b"\\x89SBREC\\r\\n" | u16 version | u16 flags (0) | u32 meta_len
                  | meta (msgpack map) | u32 crc32(all header bytes before it)
    record*       marker b"\\xa5SBR" | u32 body_len | u32 crc32(body_len bytes + body) | body
    body          u64 t_recv_ns | u16 n_parts | n_parts x u32 part_len | parts, concatenated

A file is append-only: records are written whole and flushed every ``flush_interval_s``,
so a writer killed at any point (even SIGKILL) leaves complete records followed by at
most one partial one. The reader reports such a tail as ``truncated`` (with its size) and
a record whose checksum fails as ``corrupt`` (with its offset), resynchronises on the
next marker, and yields every record it can verify. It never raises on damaged records;
only a file that is not a recording at all (bad magic, unknown version) raises
:class:`RecordingError`.

The writer and reader only frame bytes: they never interpret the message parts they store.
A record made by protocol v2 holds one part; one made by protocol v1 holds three, and
common.recording.messages turns it into the v2 message it stands for.
"""

from __future__ import annotations

import glob
import logging
import mmap
import os
import socket
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from common.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_MAGIC = b"\x89SBREC\r\n"  # PNG-style: a high byte and CRLF catch 7-bit and text-mode mangling
RECORD_MARKER = b"\xa5SBR"
MAX_META_BYTES = 64 * 1024
MAX_FRAMES = 16  # parts per record: protocol v2 has 1, v1 had 3; the format allows a few more
MAX_BODY_BYTES = 32 * 1024 * 1024  # > MAX_PAYLOAD_BYTES + MAX_HEADER_BYTES + topic

_FILE_FIXED = struct.Struct("<8sHHI")  # magic, version, flags, meta_len
_CRC = struct.Struct("<I")
_REC_HEAD = struct.Struct("<4sII")  # marker, body_len, crc
_BODY_HEAD = struct.Struct("<QH")  # t_recv_ns, n_frames
REC_HEAD_BYTES = _REC_HEAD.size  # 12


class RecordingError(UserError):
    """A file that cannot be read or written as a recording (its message says what to do)."""


@dataclass
class Record:
    """One recorded message: its wire frames exactly as received, and when.

    ``offset``: byte position of the record in its file; ``t_recv_ns``: wall clock
    (time.time_ns) when the recorder received it.
    """

    offset: int
    t_recv_ns: int
    frames: list[bytes]

    @property
    def topic(self) -> bytes:
        """The message's topic: a v2 record's one part up to its NUL, a v1 record's first frame."""
        if not self.frames:
            return b""
        first = self.frames[0]
        if len(self.frames) == 1:
            end = first.find(b"\0", 0, 161)
            return bytes(first[:end]) if end >= 0 else b""
        return bytes(first)

    @property
    def kind(self) -> str:
        """First topic part (raw/tensor/result/hb), without decoding the header."""
        return self.topic.split(b"/", 1)[0].decode(errors="replace")

    @property
    def stream(self) -> str:
        """Third topic part (the stream id), without decoding the header."""
        parts = self.topic.split(b"/")
        return parts[2].decode(errors="replace") if len(parts) > 2 else ""

    @property
    def size(self) -> int:
        """Bytes this record takes in the file."""
        return REC_HEAD_BYTES + _BODY_HEAD.size + 4 * len(self.frames) + sum(len(f) for f in self.frames)


@dataclass
class Problem:
    """Damage found while reading: ``kind`` is "truncated" or "corrupt".

    ``offset``: where the damage starts (bytes into the file); ``length``: bytes skipped.
    """

    path: str
    kind: str
    offset: int
    length: int
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind} at byte {self.offset} ({self.length} bytes skipped): {self.detail}"


def encode_record(frames: Sequence[bytes | memoryview], t_recv_ns: int) -> bytes:
    """The bytes of one record holding ``frames`` received at ``t_recv_ns``."""
    if not 1 <= len(frames) <= MAX_FRAMES:
        raise ValueError(f"a record holds 1..{MAX_FRAMES} frames, got {len(frames)}")
    lens = [len(f) for f in frames]
    body_head = _BODY_HEAD.pack(t_recv_ns, len(frames)) + struct.pack(f"<{len(frames)}I", *lens)
    body_len = len(body_head) + sum(lens)
    if body_len > MAX_BODY_BYTES:
        raise ValueError(f"record of {body_len} bytes exceeds {MAX_BODY_BYTES}")
    len_bytes = struct.pack("<I", body_len)
    crc = zlib.crc32(body_head, zlib.crc32(len_bytes))
    for f in frames:
        crc = zlib.crc32(f, crc)
    return b"".join([RECORD_MARKER, len_bytes, _CRC.pack(crc), body_head, *frames])


def encode_file_header(meta: dict[str, Any]) -> bytes:
    """The bytes of a file header carrying ``meta`` (a msgpack-able map)."""
    packed = msgpack.packb(meta, use_bin_type=True)
    if len(packed) > MAX_META_BYTES:
        raise ValueError(f"recording metadata of {len(packed)} bytes exceeds {MAX_META_BYTES}")
    head = _FILE_FIXED.pack(FILE_MAGIC, FORMAT_VERSION, 0, len(packed)) + packed
    return head + _CRC.pack(zlib.crc32(head))


def default_meta(**extra: Any) -> dict[str, Any]:
    """Metadata every recorder writes: creation time (ns), host, format and protocol versions."""
    return {"created_ns": time.time_ns(), "host": socket.gethostname(), "format": FORMAT_VERSION, "protocol": 2,
            **extra}


# ---------------------------------------------------------------------------------------
# writing


class RecordingWriter:
    """Appends records to one new file; flushes to the OS every ``flush_interval_s`` seconds.

    The OS keeps flushed bytes when the process dies, so SIGKILL loses at most the last
    ``flush_interval_s``. A power loss can cost everything the OS has not written to the
    disk yet (Linux writes dirty pages back within about 30 s by default); ``fsync_s``
    bounds that: the file is fsync'ed about every ``fsync_s`` seconds (and at close), so a power
    loss costs at most the last ``fsync_s`` + ``flush_interval_s``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: dict[str, Any] | None = None,
        flush_interval_s: float = 0.2,
        overwrite: bool = False,
        fsync_s: float | None = None,
    ) -> None:
        self.path = Path(path)
        try:
            self._f = open(self.path, "wb" if overwrite else "xb")  # noqa: SIM115 (closed by close())
        except FileExistsError:
            raise RecordingError(f"{self.path} already exists; choose another name or pass --force.") from None
        except OSError as e:
            raise RecordingError(f"cannot create {self.path}: {e.strerror}.") from None
        self.flush_interval_s = flush_interval_s
        self.fsync_s = fsync_s
        self.records = 0
        self.bytes = 0
        self.first_t_ns: int | None = None
        self._last_flush = self._last_fsync = time.monotonic()
        header = encode_file_header(meta if meta is not None else default_meta())
        try:
            self._f.write(header)
            self.flush()  # a file that exists is a file that reads
        except OSError as e:  # e.g. a full disk: leave no empty file behind
            self._f.close()
            self.path.unlink(missing_ok=True)
            raise RecordingError(f"cannot write {self.path}: {e.strerror}; free some space or record elsewhere.") \
                from None
        self.bytes += len(header)

    def write(self, frames: Sequence[bytes | memoryview], t_recv_ns: int) -> int:
        """Append one record; returns its size in bytes."""
        rec = encode_record(frames, t_recv_ns)
        self._f.write(rec)
        self.records += 1
        self.bytes += len(rec)
        if self.first_t_ns is None:
            self.first_t_ns = t_recv_ns
        self.maybe_flush()
        return len(rec)

    def maybe_flush(self) -> None:
        """Flush if the interval has passed (call this from idle loops too)."""
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._f.flush()
        now = self._last_flush = time.monotonic()
        if self.fsync_s is not None and now - self._last_fsync >= self.fsync_s:
            os.fsync(self._f.fileno())
            self._last_fsync = now

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.flush()
                if self.fsync_s is not None:
                    os.fsync(self._f.fileno())
            finally:
                self._f.close()

    def __enter__(self) -> RecordingWriter:  # noqa: PYI034 (typing.Self needs 3.11)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def segment_path(path: str | os.PathLike[str], index: int) -> Path:
    """Name of rotated segment ``index``: ``day.sbrec`` -> ``day.0000.sbrec``, ``day.0001.sbrec``..."""
    p = Path(path)
    return p.with_name(f"{p.stem}.{index:04d}{p.suffix}") if p.suffix else p.with_name(f"{p.name}.{index:04d}")


class RotatingWriter:
    """A RecordingWriter that starts a new segment past ``rotate_bytes`` or ``rotate_s``.

    Without a limit it writes exactly ``path``; with one, segments are named by
    :func:`segment_path`. A segment ends before the record that would cross the size
    limit, or when a record arrives ``rotate_s`` seconds (receive time) after the
    segment's first record; so every segment holds whole records, at least one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        rotate_bytes: int | None = None,
        rotate_s: float | None = None,
        meta: dict[str, Any] | None = None,
        overwrite: bool = False,
        flush_interval_s: float = 0.2,
        fsync_s: float | None = None,
    ) -> None:
        self.base = Path(path)
        self.fsync_s = fsync_s
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.rotating = bool(rotate_bytes or rotate_s)
        self.meta = dict(meta if meta is not None else default_meta())
        self.overwrite = overwrite
        self.flush_interval_s = flush_interval_s
        self.paths: list[Path] = []
        self.records = 0
        self.bytes = 0
        if self.rotating and not overwrite:  # refuse now rather than at the first rotation
            first = segment_path(self.base, 0).name  # "day.0000.sbrec": any "day.NNNN.sbrec" is taken
            prefix = first[: len(first) - len(self.base.suffix) - 4]
            pattern = glob.escape(prefix) + "[0-9]" * 4 + glob.escape(self.base.suffix)
            taken = sorted(str(p) for p in self.base.parent.glob(pattern))
            if taken:
                raise RecordingError(f"{taken[0]} already exists; choose another name or pass --force.")
        self.current = self._open(0)

    def _open(self, index: int) -> RecordingWriter:
        path = segment_path(self.base, index) if self.rotating else self.base
        meta = {**self.meta, "segment": index} if self.rotating else self.meta
        w = RecordingWriter(path, meta, self.flush_interval_s, overwrite=self.overwrite, fsync_s=self.fsync_s)
        self.paths.append(path)
        self.bytes += w.bytes
        return w

    def write(self, frames: Sequence[bytes | memoryview], t_recv_ns: int) -> int:
        w = self.current
        if w.records:
            size = REC_HEAD_BYTES + _BODY_HEAD.size + 4 * len(frames) + sum(len(f) for f in frames)
            too_big = self.rotate_bytes is not None and w.bytes + size > self.rotate_bytes
            too_old = self.rotate_s is not None and w.first_t_ns is not None and (
                t_recv_ns - w.first_t_ns >= self.rotate_s * 1e9
            )
            if too_big or too_old:
                w.close()
                self.current = w = self._open(len(self.paths))
                log.info("rotated to %s", w.path)
        n = w.write(frames, t_recv_ns)
        self.records += 1
        self.bytes += n
        return n

    def maybe_flush(self) -> None:
        self.current.maybe_flush()

    def close(self) -> None:
        self.current.close()


# ---------------------------------------------------------------------------------------
# reading


class RecordingReader:
    """Reads one recording file; iterating yields every verifiable :class:`Record` in order.

    Damage is collected in ``problems`` (and logged), never raised. Opening raises
    RecordingError only when the file is missing or is not a recording.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.problems: list[Problem] = []
        try:
            with open(self.path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        except FileNotFoundError:
            raise RecordingError(
                f"{self.path} does not exist; pass the path of a recording made by soundbus record."
            ) from None
        except OSError as e:
            raise RecordingError(f"cannot read {self.path}: {e.strerror}.") from None
        self.version, self.meta, self.data_start = self._read_header()
        self.position = self.data_start  # bytes consumed so far (for progress)

    def _read_header(self) -> tuple[int, dict[str, Any], int]:
        m = self._map
        if m is None or self.size < _FILE_FIXED.size + 4:
            raise RecordingError(f"{self.path} is {self.size} bytes, too short to be a soundbus recording.")
        magic, version, _flags, meta_len = _FILE_FIXED.unpack_from(m, 0)
        if magic != FILE_MAGIC:
            raise RecordingError(f"{self.path} is not a soundbus recording (it starts with {bytes(m[:8])!r}).")
        if version != FORMAT_VERSION:
            raise RecordingError(
                f"{self.path} uses recording format {version}; this soundbus reads format {FORMAT_VERSION}: "
                f"use a matching soundbus version."
            )
        end = _FILE_FIXED.size + meta_len
        if meta_len > MAX_META_BYTES or end + 4 > self.size:
            raise RecordingError(f"{self.path}: file header is damaged or truncated (metadata of {meta_len} bytes).")
        (crc,) = _CRC.unpack_from(m, end)
        if zlib.crc32(m[:end]) != crc:
            raise RecordingError(f"{self.path}: file header checksum fails; the file is damaged.")
        try:
            meta = msgpack.unpackb(m[_FILE_FIXED.size : end], raw=False)
        except Exception as e:  # noqa: BLE001 (checksum passed, so only a buggy writer gets here)
            raise RecordingError(f"{self.path}: unreadable metadata ({type(e).__name__}).") from None
        return version, meta if isinstance(meta, dict) else {}, end + 4

    def _record_at(self, pos: int) -> tuple[Record | None, str]:
        """(record, "") if a valid record starts at ``pos``, else (None, why not)."""
        m = self._map
        assert m is not None
        if pos + REC_HEAD_BYTES > self.size:
            return None, "short"
        marker, body_len, crc = _REC_HEAD.unpack_from(m, pos)
        if marker != RECORD_MARKER:
            return None, "no record marker"
        if not _BODY_HEAD.size <= body_len <= MAX_BODY_BYTES:
            return None, f"impossible record length {body_len}"
        start, end = pos + REC_HEAD_BYTES, pos + REC_HEAD_BYTES + body_len
        if end > self.size:
            return None, "short"
        if zlib.crc32(m[start:end], zlib.crc32(m[pos + 4 : pos + 8])) != crc:
            return None, "checksum mismatch"
        t_ns, n = _BODY_HEAD.unpack_from(m, start)
        lens_at = start + _BODY_HEAD.size
        if not 1 <= n <= MAX_FRAMES or lens_at + 4 * n > end:
            return None, f"bad frame count {n}"
        lens = struct.unpack_from(f"<{n}I", m, lens_at)
        at = lens_at + 4 * n
        if at + sum(lens) != end:
            return None, "frame lengths do not add up"
        frames = []
        for ln in lens:
            frames.append(m[at : at + ln])
            at += ln
        return Record(pos, t_ns, frames), ""

    def _resync(self, pos: int) -> int | None:
        """Offset of the next valid record after ``pos``, or None."""
        m = self._map
        assert m is not None
        at = pos + 1
        while True:
            at = m.find(RECORD_MARKER, at)
            if at < 0:
                return None
            if self._record_at(at)[0] is not None:
                return at
            at += 1

    def _problem(self, kind: str, offset: int, length: int, detail: str) -> None:
        p = Problem(str(self.path), kind, offset, length, detail)
        self.problems.append(p)
        log.warning("%s", p)

    def __iter__(self) -> Iterator[Record]:
        pos = self.data_start
        while self._map is not None and pos < self.size:
            rec, why = self._record_at(pos)
            if rec is not None:
                pos += rec.size
                self.position = pos
                yield rec
                continue
            nxt = self._resync(pos)
            if nxt is None and why == "short":
                self._problem("truncated", pos, self.size - pos, "incomplete last record (writer stopped mid-record)")
                break
            end = self.size if nxt is None else nxt
            self._problem("corrupt", pos, end - pos, why + ("" if nxt is not None else "; nothing readable after it"))
            if nxt is None:
                break
            pos = nxt
        self.position = self.size

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def read_records(paths: Sequence[str | os.PathLike[str]], problems: list[Problem] | None = None) -> Iterator[Record]:
    """Records of several files in order (e.g. rotated segments); damage appended to ``problems``."""
    for p in paths:
        reader = RecordingReader(p)
        try:
            yield from reader
        finally:
            if problems is not None:
                problems.extend(reader.problems)
            reader.close()
