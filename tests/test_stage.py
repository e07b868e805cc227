"""The shared receive loop: validation and counting, gap accounting, the silent-producer watchdog."""

from __future__ import annotations

import logging
import time

import zmq

from common.metrics import StageMetrics
from common.protocol import Flag, Header, Kind, encode
from common.publisher import Publisher
from common.sockets import open_sub
from common.stage import Continuity, Receiver, SequenceTracker
from tests.conftest import tcp


def _raw(stream: str, seq: int, flags: Flag = Flag.NONE) -> list:
    h = Header(Kind.RAW, stream, 1, seq, 0, 16000, 1, "s16", "interleaved", 2, seq * 2, flags)
    return encode(h, b"\0" * 4)


def _pair(zctx: zmq.Context, watchdog_s: float) -> tuple[Publisher, Receiver]:
    addr = tcp()
    pub = Publisher(zctx, ["@" + addr])
    sub = open_sub(zctx, [addr], [b"raw/"])
    rx = Receiver([sub], StageMetrics("test"), watchdog_s=watchdog_s)
    assert pub.wait_for_subscriber(10)
    return pub, rx


def _recv_for(rx: Receiver, seconds: float) -> list:
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        m = rx.recv(50)
        if m is not None:
            got.append(m)
    return got


def test_receiver_counts_bad_messages_and_keeps_serving(zctx) -> None:
    pub, rx = _pair(zctx, watchdog_s=0)
    pub.send(_raw("a", 0))
    pub.send([b"raw/00/a/", b"\x81\xa1v\x02", b""])  # version 2
    pub.send([b"raw/"])  # one frame
    pub.send(_raw("a", 1))
    got = _recv_for(rx, 1.0)
    assert [m.header.seq for m in got] == [0, 1]
    assert rx.metrics.bad == {"bad_version": 1, "bad_frame_count": 1}
    rx.close()


def test_watchdog_reports_a_silent_stream_once_and_its_return(zctx, caplog) -> None:
    pub, rx = _pair(zctx, watchdog_s=1.0)
    caplog.set_level(logging.INFO, logger="common.stage")
    for seq in range(3):
        pub.send(_raw("quiet", seq))
        pub.send(_raw("ends", seq, Flag.END if seq == 2 else Flag.NONE))
    assert len(_recv_for(rx, 2.6)) == 6
    warnings = [r.getMessage() for r in caplog.records if "no messages for" in r.getMessage()]
    assert len(warnings) == 1 and "stream quiet" in warnings[0], warnings  # "ends" ended with END: not silent
    assert rx.metrics.events["silent_stream"] == 1
    pub.send(_raw("quiet", 3))
    assert len(_recv_for(rx, 0.5)) == 1
    assert any("stream quiet: messages again" in r.getMessage() for r in caplog.records)
    rx.close()


def test_sequence_tracker_gaps_epochs_stale_and_flagged_restarts() -> None:
    m = StageMetrics("t")
    t = SequenceTracker(m)
    assert t.check("s", 1, 0) == (Continuity.FIRST, 0)
    assert t.check("s", 1, 1) == (Continuity.NEXT, 0)
    assert t.check("s", 1, 5) == (Continuity.GAP, 3)
    assert t.check("s", 1, 5) == (Continuity.STALE, 0)
    assert t.check("s", 1, 2, discontinuity=True) == (Continuity.RESTART, 0)  # a restarted publisher
    assert t.check("s", 1, 3) == (Continuity.NEXT, 0)
    assert t.check("s", 2, 0) == (Continuity.NEW_EPOCH, 0)
    assert m.gaps["s"] == 3 and m.drops["stale_seq"] == 1 and m.events["seq_restart"] == 1
