"""A recorded record as the protocol v2 message it stands for, whichever protocol recorded it.

A record made by protocol v2 holds one part: the message itself. A record made by
protocol v1 holds its three frames; it is decoded with the v1 rules and re-encoded as the
v2 message a v2 stage would have sent (common.wire.v1.to_v2), so v1 recordings replay,
info and export in a v2 pipeline.
"""

from __future__ import annotations

from common.recording.format import Record
from common.wire import v1
from common.wire.codec import Message, ProtocolError, decode


def record_bytes(rec: Record) -> bytes:
    """The v2 message bytes of ``rec``. Raises ProtocolError if it is neither a v2 nor a v1 message."""
    if len(rec.frames) == 1:
        return bytes(rec.frames[0])
    try:
        old = v1.decode(rec.frames)
    except v1.ProtocolError as e:
        raise ProtocolError(e.reason, f"protocol v1 record: {e.detail}") from None
    try:
        return v1.to_v2(old)
    except (ValueError, TypeError, KeyError) as e:  # a v1 value v2 cannot carry
        raise ProtocolError("v1_conversion", f"{type(e).__name__}: {str(e)[:200]}") from None


def record_message(rec: Record) -> tuple[Message, bytes]:
    """(decoded v2 message, its bytes) of ``rec``. Raises ProtocolError."""
    data = record_bytes(rec)
    return decode(data), data
