"""Read members of a Qt binary resource archive (``.rcc``), as GCompris ships its sounds.

Format (Qt's rcc, versions 1-3): a 20-byte header ``qres``, version, then offsets of the
tree, data and names sections (all big-endian u32; version 3 adds a u32 of flags). Tree
entries are 14 bytes (+8 for a modification time from version 2): name offset, flags, then
for a directory its child count and first child index, for a file its locale and data
offset. Names are u16 length, u32 hash, UTF-16BE text. A file's data is a u32 length and
bytes, zlib-compressed (after a u32 uncompressed length, Qt's qCompress) when flag 1 is set.
Only reading is needed here; Qt itself is not a dependency of soundbus.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

_DIRECTORY = 0x02
_ZLIB = 0x01
_ZSTD = 0x04
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # a sound clip; larger is a damaged archive


class RccError(ValueError):
    """The file is not a Qt resource archive we can read, or lacks the member."""


class RccArchive:
    """The members of one ``.rcc`` file: ``names()`` and ``read(member)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.blob = self.path.read_bytes()
        if len(self.blob) < 20 or self.blob[:4] != b"qres":
            raise RccError(f"{self.path} is not a Qt resource archive (no 'qres' header)")
        version, self.tree, self.data, self.names_at = struct.unpack_from(">IIII", self.blob, 4)
        if version not in (1, 2, 3):
            raise RccError(f"{self.path}: resource archive version {version} is not supported (1-3)")
        self.entry_size = 14 if version == 1 else 22
        self._files: dict[str, tuple[int, int]] = dict(self._walk(0, ""))

    def _name(self, offset: int) -> str:
        (length,) = struct.unpack_from(">H", self.blob, self.names_at + offset)
        start = self.names_at + offset + 6  # u16 length, u32 hash
        return self.blob[start : start + 2 * length].decode("utf-16-be")

    def _walk(self, index: int, prefix: str) -> Iterator[tuple[str, tuple[int, int]]]:
        at = self.tree + index * self.entry_size
        name_offset, flags = struct.unpack_from(">IH", self.blob, at)
        name = self._name(name_offset) if index else ""
        if flags & _DIRECTORY:
            count, first = struct.unpack_from(">II", self.blob, at + 6)
            if first + count > len(self.blob) // self.entry_size:
                raise RccError(f"{self.path}: damaged tree (child index {first + count})")
            for child in range(first, first + count):
                yield from self._walk(child, f"{prefix}{name}/" if index else "")
        else:
            (data_offset,) = struct.unpack_from(">I", self.blob, at + 10)
            yield prefix + name, (data_offset, flags)

    def names(self) -> list[str]:
        """Member paths, e.g. ``gcompris/src/activities/instruments/resource/piano.ogg``."""
        return sorted(self._files)

    def read(self, member: str) -> bytes:
        """The member's bytes, decompressed."""
        try:
            offset, flags = self._files[member]
        except KeyError:
            raise RccError(f"{self.path} has no member {member!r}") from None
        (length,) = struct.unpack_from(">I", self.blob, self.data + offset)
        if length > MAX_MEMBER_BYTES:
            raise RccError(f"{self.path}: member {member!r} claims {length} bytes")
        raw = self.blob[self.data + offset + 4 : self.data + offset + 4 + length]
        if flags & _ZSTD:
            raise RccError(f"{self.path}: member {member!r} is zstd-compressed, which is not supported")
        if flags & _ZLIB:
            return zlib.decompress(raw[4:])  # Qt's qCompress: u32 uncompressed length, then zlib
        return raw
