"""Many fast file sources in one capture process, behind a slow subscriber, all reach their end.

Regression: with a thread per source, source threads waited for room in the runner's full
frame queue while holding their framer's lock, and the runner's heartbeat waited for that
lock, so nothing moved (seen with 17+ ``--fast`` files and a subscriber that fell behind).
Capture now runs every source on one loop with no lock; this keeps it honest.
"""

from __future__ import annotations

import time

import numpy as np
import soundfile as sf
import zmq

from common.wire import Flag, Kind, ProtocolError, decode_parts, topic_for
from tests.conftest import start, tcp

N_SOURCES = 24


def test_many_fast_file_sources_behind_a_slow_subscriber_all_end(tmp_path, procs, zctx):
    rng = np.random.default_rng(0)
    argv = ["capture", "--fast", "--heartbeat", "0.2"]
    for i in range(N_SOURCES):
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(44_100 * 3)).astype(np.float32), 44_100, subtype="PCM_16")
        argv += ["--source", f"file:{path}", "--stream", f"s{i}"]
    raw = tcp()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 20)  # a slow consumer: capture's no-drop queue to it fills up
    sub.setsockopt(zmq.SUBSCRIBE, topic_for(Kind.RAW))
    sub.connect(raw)
    cap = start(procs, *argv, "--output", raw)
    cap.wait_for("subscriber joined", 30)
    time.sleep(2.0)  # read nothing for a while (several heartbeat periods) so every queue is full
    ended: set[str] = set()
    deadline = time.monotonic() + 90
    while len(ended) < N_SOURCES:
        assert time.monotonic() < deadline, f"only {len(ended)} of {N_SOURCES} streams ended:\n{cap.log(30)}"
        if sub.poll(200):
            try:
                msg = decode_parts(sub.recv_multipart())
            except ProtocolError:
                continue
            if msg.kind is Kind.RAW and msg.header.flags & Flag.END:
                ended.add(msg.stream)
    assert cap.wait(30) == 0, cap.log()
