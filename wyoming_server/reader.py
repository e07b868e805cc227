"""Reading one Wyoming event with every length bounded before it is used.

The wire format (wyoming.event): a JSON header line ``{"type", "data"?, "data_length"?,
"payload_length"?}``, then ``data_length`` bytes of JSON merged into ``data``, then
``payload_length`` bytes of payload. The library's ``async_read_event`` reads whatever
lengths a peer announces and returns None for a bad header (so a corrupt event looks like
a clean close); this reader refuses oversized or malformed events with a reason, so the
server can count them and end that connection only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
from wyoming.event import Event

MAX_HEADER_BYTES = 64 * 1024  # also the StreamReader's line limit (asyncio's default)
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024  # ~5 s of 48 kHz stereo s16; Home Assistant sends 10 ms chunks
MAX_TYPE_LEN = 64


class BadEvent(ValueError):
    """An event that breaks the Wyoming framing or our bounds. ``reason``: a short key for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    header: int = MAX_HEADER_BYTES
    data: int = MAX_DATA_BYTES
    payload: int = MAX_PAYLOAD_BYTES


async def read_event(reader: asyncio.StreamReader, limits: Limits = Limits()) -> Event | None:
    """The next event; None when the peer closed (also mid-event: it vanished). Raises BadEvent."""
    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError):  # the line outgrew the reader's limit
        raise BadEvent("header_too_long", f"header line over {limits.header} bytes") from None
    if not line.endswith(b"\n"):
        return None  # EOF, maybe inside a line: the client is gone
    if len(line) > limits.header:
        raise BadEvent("header_too_long", f"header line of {len(line)} bytes > {limits.header}")
    try:
        head = _json(line)
    except msgspec.DecodeError as e:
        raise BadEvent("bad_json", f"header is not JSON ({str(e)[:80]})") from None
    if not isinstance(head, dict):
        raise BadEvent("bad_header", "header is not a JSON object")
    etype = head.get("type")
    if not isinstance(etype, str) or not 0 < len(etype) <= MAX_TYPE_LEN:
        raise BadEvent("bad_type", "header has no event type (a string of 1-64 characters)")
    data = head.get("data") or {}
    if not isinstance(data, dict):
        raise BadEvent("bad_data", "data is not a JSON object")
    data_length = _length(head, "data_length", limits.data)
    payload_length = _length(head, "payload_length", limits.payload)
    try:
        if data_length:
            extra = _json(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise BadEvent("bad_data", "data is not a JSON object")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    except msgspec.DecodeError as e:
        raise BadEvent("bad_json", f"data is not JSON ({str(e)[:80]})") from None
    return Event(type=etype, data=data, payload=payload)


_json = msgspec.json.Decoder().decode  # any JSON value; ~3x faster than json.loads (two per audio chunk)


def _length(head: dict[str, Any], key: str, limit: int) -> int:
    value = head.get(key)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= limit:
        raise BadEvent("bad_length", f"{key} must be a whole number of 0-{limit} bytes, got {str(value)[:40]}")
    return value
