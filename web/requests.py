"""What a browser may send, checked: WebSocket messages (typed Structs) and /api/events' query.

A WebSocket message is JSON text decoded against :data:`ClientMessage` (a tagged union of
Structs with bounded fields and no unknown fields); a query string is checked against an
allow-list with types and bounds. Anything else raises (msgspec's errors, or
:class:`BadRequest` naming the parameter), and the server answers, counts and, past a limit,
hangs up (web.server).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from common.wire.messages import MAX_LABEL_LEN, MAX_STREAM_ID_LEN, is_name, is_text
from web.history import MAX_LIMIT, HistoryQuery


class Ping(msgspec.Struct, tag="ping", tag_field="t", forbid_unknown_fields=True):
    n: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0  # echoed in the pong


class Pause(msgspec.Struct, tag="pause", tag_field="t", forbid_unknown_fields=True):
    pass


class Resume(msgspec.Struct, tag="resume", tag_field="t", forbid_unknown_fields=True):
    pass


ClientMessage = Ping | Pause | Resume
CLIENT_DECODER = msgspec.json.Decoder(ClientMessage)


class BadRequest(Exception):
    """A request parameter that fails its check: the reason, for a 400."""


def history_query(params: Any) -> HistoryQuery:
    """A HistoryQuery from /api/events' query string; raises BadRequest naming the bad parameter."""
    allowed = {"limit", "before", "stream", "model", "label"}
    for key in params:
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key[:32]!r}; allowed: {', '.join(sorted(allowed))}")
    if len(params) != len(set(params.keys())):
        raise BadRequest("a parameter is given twice")

    def integer(key: str, lo: int, hi: int) -> int | None:
        text = params.get(key)
        if text is None:
            return None
        if not text.isdigit() or len(text) > 19 or not lo <= int(text) <= hi:
            raise BadRequest(f"{key} must be a whole number from {lo} to {hi}")
        return int(text)

    def name(key: str) -> str | None:
        text = params.get(key)
        if text is not None and not (0 < len(text) <= MAX_STREAM_ID_LEN and is_name(text)):
            raise BadRequest(f"{key} must be 1-{MAX_STREAM_ID_LEN} letters, digits, '.', '_' or '-'")
        return text

    label = params.get("label")
    if label is not None and not (0 < len(label) <= MAX_LABEL_LEN and is_text(label)):
        raise BadRequest(f"label must be 1-{MAX_LABEL_LEN} printable characters")
    return HistoryQuery(limit=integer("limit", 1, MAX_LIMIT) or 50, before=integer("before", 1, 2**63 - 1),
                        stream=name("stream"), model=name("model"), label=label)
