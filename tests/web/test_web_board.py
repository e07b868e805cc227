"""The board: each browser gets what changed since its cursor; a slow one gets the latest, bounded."""

from __future__ import annotations

import base64
import json

import numpy as np

from web.board import MAX_EVENTS, Board, Cursor, Update

RING, BANDS = 50, 8


def cols(first: int, n: int) -> np.ndarray:
    """n columns whose every byte is its column number (mod 256), so order is checkable."""
    return np.repeat((np.arange(first, first + n) % 256).astype(np.uint8)[:, None], BANDS, axis=1)


def compose(board: Board, cur: Cursor) -> dict | None:
    out = board.compose(cur, 123)
    return None if out is None else json.loads(out)


def spec_columns(entry: dict) -> list[int]:
    raw = base64.b64decode(entry["spec"]["d"])
    assert len(raw) == entry["spec"]["n"] * BANDS
    return list(np.frombuffer(raw, np.uint8).reshape(-1, BANDS)[:, 0])


def test_a_new_browser_gets_everything_then_only_what_changed() -> None:
    b = Board(RING, BANDS, 8)
    b.apply(Update(columns={"mic1": cols(0, 5)}, states={"mic1": {"f": b'{"level":[-20,-6]}', "st": b'{"rate":16000}'}},
                   events=[b'{"label":"speech","state":"start"}'], stored=[b'{"id":1}'], health=b'{"web":{}}'))
    cur = Cursor()
    m = compose(b, cur)
    s = m["s"]["mic1"]
    assert s["spec"]["i"] == 0 and spec_columns(s) == [0, 1, 2, 3, 4]
    assert s["f"] == {"level": [-20, -6]} and s["st"] == {"rate": 16000}
    assert m["ev"] == [{"label": "speech", "state": "start"}] and m["stored"] == [{"id": 1}]
    assert m["health"] == {"web": {}}
    assert compose(b, cur) is None  # nothing changed

    b.apply(Update(columns={"mic1": cols(5, 3)}, states={"mic1": {"f": b'{"level":[-30,-9]}'}}))
    m = compose(b, cur)
    s = m["s"]["mic1"]
    assert s["spec"]["i"] == 5 and spec_columns(s) == [5, 6, 7]
    assert s["f"] == {"level": [-30, -9]} and "st" not in s  # the slow part did not change
    assert "ev" not in m and "stored" not in m and "health" not in m


def test_a_slow_browser_gets_the_latest_ring_not_a_backlog() -> None:
    b = Board(RING, BANDS, 8)
    cur = Cursor()
    b.apply(Update(columns={"mic1": cols(0, 10)}))
    compose(b, cur)
    for k in range(30):  # 300 columns while this browser reads nothing
        b.apply(Update(columns={"mic1": cols(10 + 10 * k, 10)}, states={"mic1": {"f": f'{{"k":{k}}}'.encode()}}))
    m = compose(b, cur)
    s = m["s"]["mic1"]
    assert s["spec"]["i"] == 310 - RING and spec_columns(s) == [c % 256 for c in range(310 - RING, 310)]
    assert s["f"] == {"k": 29}  # the latest state, once


def test_gone_streams_and_a_stream_that_comes_back_starts_afresh() -> None:
    b = Board(RING, BANDS, 8)
    cur = Cursor()
    b.apply(Update(columns={"a": cols(0, 20), "b": cols(0, 1)}, states={"a": {"f": b"{}"}}))
    compose(b, cur)
    b.apply(Update(removed=["a"]))
    m = compose(b, cur)
    assert m["gone"] == ["a"]
    b.apply(Update(columns={"a": cols(100, 2)}))
    m = compose(b, cur)
    assert m["s"]["a"]["spec"]["i"] == 0 and spec_columns(m["s"]["a"]) == [100, 101]


def test_events_are_bounded_for_a_browser_far_behind() -> None:
    b = Board(RING, BANDS, 8)
    cur = Cursor()
    compose(b, cur)
    b.apply(Update(events=[json.dumps({"n": i}).encode() for i in range(MAX_EVENTS + 100)]))
    m = compose(b, cur)
    assert [e["n"] for e in m["ev"]] == list(range(100, MAX_EVENTS + 100))


def test_streams_beyond_the_bound_are_not_held_and_bytes_are_counted() -> None:
    b = Board(RING, BANDS, 2)
    b.apply(Update(columns={f"s{i}": cols(0, 1) for i in range(5)}))
    m = compose(b, Cursor())
    assert sorted(m["s"]) == ["s0", "s1"]
    per, other = b.take_sent()
    assert set(per) == {"s0", "s1"} and all(n > 0 for n in per.values()) and other > 0
    assert b.take_sent() == ({}, 0)
