"""Paced sources of one capture process fall due together: one wake-up sends every stream's chunk.

Started one after the other, each synth or file source used to keep its own timeline, so 64
sources were due at 64 slightly different instants and capture woke 64 times per chunk period.
"""

from __future__ import annotations

import time

from capture.runner import CaptureLogic, SourceQueue
from capture.sources import make_source
from capture.sources.base import CaptureOptions, Pacer
from capture.spec import parse_sources
from common.observe.metrics import StageMetrics
from common.runtime.stage import Now, StopFlag
from common.transport.inbox import Poller

PERIOD_S = 0.020


def test_pacers_started_apart_share_one_grid_and_stamp_their_start():
    first = Pacer(48_000, fast=False, chunk_samples=960)
    time.sleep(0.007)  # a third of a period: without the grid the two would never be due together
    before_mono, before_wall = time.monotonic(), time.time_ns()
    second = Pacer(48_000, fast=False, chunk_samples=960)
    periods = (second.start_mono - first.start_mono) / PERIOD_S
    assert abs(periods - round(periods)) < 1e-6, periods
    assert before_mono <= second.start_mono <= before_mono + PERIOD_S + 0.005
    # the wall clock stamped on sample 0 is the wall-clock time of the (later) grid start
    waited_ns = (second.start_mono - before_mono) * 1e9
    assert abs(second.t_of(0) - before_wall - waited_ns) < 5e6
    # same chunk length at another rate: same grid
    other = Pacer(44_100, fast=False, chunk_samples=882)
    periods = (other.start_mono - first.start_mono) / PERIOD_S
    assert abs(periods - round(periods)) < 1e-6, periods


def test_fast_pacer_is_never_held_back():
    p = Pacer(48_000, fast=True, chunk_samples=960)
    assert p.due_in(10**9, time.monotonic()) == 0.0


def test_synth_sources_of_one_process_are_due_at_the_same_instant_and_sent_in_one_tick():
    n = 16
    opts = CaptureOptions(chunk_ms=20.0, rate=48_000, channels=2, duration_s=1.0)
    sources = [make_source(s, opts) for s in parse_sources([f"synth:noise#p{i}" for i in range(n)], [])]
    for s in sources:
        s.prepare()
    queue = SourceQueue(Poller())
    stop = StopFlag(install=False)
    logic = CaptureLogic(sources, queue.loop, StageMetrics("capture"), stop, 20.0, lambda: True,
                         wait_subscriber_s=0)
    try:
        logic.begin(Now.read())
        logic.tick(Now.read())  # starts the gated (synth) sources, one after the other
        now = Now.read()
        due = [s.due_in(now.mono) for s in sources]
        assert max(due) - min(due) < 1e-6, due
        time.sleep(max(due) + 0.002)
        sent = [m for m in logic.tick(Now.read()) if m.startswith(b"raw/")]
        assert len(sent) == n  # one chunk of every stream in the one wake-up
    finally:
        logic.finish(Now.read())
        queue.close()
