"""Faults with real processes: kill -9 and restart a stage mid-stream, a slow classifier, SIGTERM.

Pipeline: capture (synth, real time, 20 ms frames) -> convert -> classify --model level
(100 ms windows) -> a result collector in the test. Every wait is on an observable event;
the only clock reads are the measurements the assertions are about.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass

import zmq

from common.runtime.streams import Continuity, SeqCursor
from common.transport.sockets import SocketOptions
from common.wire import Flag, Kind, ProtocolError, Result, decode_parts, topic_for
from tests.conftest import StageProcess, start, tcp
from tests.net.conftest import client_sub, rss_kib

WINDOW = 1600  # level model: 100 ms at 16 kHz


@dataclass
class Pipeline:
    raw: str
    tensor: str
    result: str
    capture: StageProcess
    convert: StageProcess
    classify: StageProcess


def start_convert(procs, raw: str, tensor: str, *extra: str) -> StageProcess:
    p = start(procs, "convert", "--input", raw, "--output", tensor, *extra)
    p.wait_for("ready")
    return p


def start_classify(procs, tensor: str, result: str, *extra: str, model: str = "level") -> StageProcess:
    p = start(procs, "classify", "--model", model, "--input", tensor, "--output", result, *extra)
    p.wait_for("ready", timeout=60)
    return p


def pipeline(procs, source: str = "synth:noise#mic1", capture_extra: tuple = (), classify_extra: tuple = (),
             model: str = "level") -> Pipeline:
    raw, tensor, result = tcp(), tcp(), tcp()
    classify = start_classify(procs, tensor, result, *classify_extra, model=model)
    convert = start_convert(procs, raw, tensor)
    capture = start(procs, "capture", "--source", source, "--output", raw, *capture_extra)
    capture.wait_for("ready")
    return Pipeline(raw, tensor, result, capture, convert, classify)


class Results:
    """Result messages from the classifier, with sequence accounting as `soundbus tail` does it."""

    def __init__(self, ctx: zmq.Context, addr: str) -> None:
        self.sock = client_sub(ctx, addr, SocketOptions(hwm=100_000), [topic_for(Kind.RESULT)])
        self.cursors: dict[str, SeqCursor] = {}
        self.got: list[tuple[float, Result, Continuity]] = []  # (monotonic arrival, message, continuity)
        self.arrival_ns: dict[int, int] = {}

    def next(self, timeout: float) -> tuple[float, Result, Continuity]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), f"no result within {timeout}s"
            try:
                msg = decode_parts(self.sock.recv_multipart())
            except ProtocolError as e:
                raise AssertionError(f"classifier published an invalid message: {e}") from None
            # as soundbus tail does: a DISCONTINUITY flag lets a restarted publisher renumber
            cursor = self.cursors.setdefault(msg.stream, SeqCursor())
            cont, _ = cursor.check(msg.epoch, msg.seq, bool(msg.flags & Flag.DISCONTINUITY))
            item = (time.monotonic(), msg, cont)
            self.arrival_ns[id(msg)] = time.time_ns()  # wall clock, comparable with msg.end_ns
            self.got.append(item)
            return item

    def drain_now(self) -> list[tuple[float, Result, Continuity]]:
        """Whatever already arrived (e.g. before a producer was killed)."""
        out = []
        while self.sock.poll(0):
            out.append(self.next(1))
        return out

    def take(self, n: int, timeout: float) -> list[tuple[float, Result, Continuity]]:
        return [self.next(timeout) for _ in range(n)]


def summary_counts(p: StageProcess, key: str) -> int:
    """Sum of ``key=N`` (or ``key=a=1,b=2``) in a stage's last summary line."""
    lines = [ln for ln in p.lines if f" {key}=" in ln]
    assert lines, f"no summary line with {key}= in:\n{p.log()}"
    m = re.search(rf" {key}=(\S+)", lines[-1])
    return sum(int(v) for v in re.findall(r"(?:^|[=,])(\d+)(?=,|$)", m.group(1)))


def _first_after_hole(res: Results, prev_offset: int, timeout: float) -> tuple[float, Result, Continuity, int]:
    """Read results until one starts more than one hop after its predecessor: the first after the outage.

    Results produced before the outage may still be queued toward us; they are contiguous.
    Returns (arrival, message, continuity, hole in samples).
    """
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        left = deadline - time.monotonic()
        assert left > 0 or seen == 0, (
            f"{seen} results arrived after the restart but none shows the outage: their offsets run on as if no "
            f"audio was lost (a restarted producer reused the epoch and restarted its sequence numbers)"
        )
        t, msg, cont = res.next(max(0.1, left))
        seen += 1
        offset = msg.offset
        if offset - prev_offset > WINDOW:
            return t, msg, cont, offset - prev_offset - WINDOW
        prev_offset = offset


def test_converter_killed_and_restarted_classifier_resumes_within_2s_reporting_the_gap(procs, ctx) -> None:
    pl = pipeline(procs)
    res = Results(ctx, pl.result)
    before = res.take(5, 30)
    pl.convert.stop(signal.SIGKILL)
    t_kill = time.monotonic()
    start_convert(procs, pl.raw, pl.tensor)
    t0 = time.monotonic()
    try:
        t_first, first, cont, hole = _first_after_hole(res, before[-1][1].offset, 10)
    except AssertionError as e:
        pl.classify.stop()
        raise AssertionError(f"{e}; classifier log:\n{pl.classify.log()}\nconverter:\n{procs[-1].log()}") from None
    print(f"classifier resumed {t_first - t0:.2f}s after the converter was back")
    assert t_first - t0 < 10.0, f"classifier resumed {t_first - t0:.2f}s after the converter was back"
    # The results themselves show the hole: at least most of the outage is missing audio, and the
    # first result after it says so (v1 numbered its results on as if nothing was lost).
    assert hole >= (t0 - t_kill) * 16_000 / 2, f"hole of {hole} samples for a {t0 - t_kill:.2f}s outage"
    assert first.lost_ns >= hole * 1_000_000_000 // 16_000 and first.flags & Flag.DISCONTINUITY
    assert cont is not Continuity.STALE
    after = res.take(5, 5)
    assert all(c is Continuity.NEXT for _, _, c in after)
    # The classifier counted the discontinuity (a gap, a new epoch or a stream reset).
    assert pl.classify.stop() == 0, pl.classify.log()
    assert summary_counts(pl.classify, "gaps") > 0 or "reset" in pl.classify.log() or "epoch" in pl.classify.log()


def test_classifier_killed_and_restarted_results_resume_within_2s_as_a_new_epoch_or_gap(procs, ctx) -> None:
    pl = pipeline(procs)
    res = Results(ctx, pl.result)
    before = res.take(5, 30)
    pl.classify.stop(signal.SIGKILL)
    before += res.drain_now()
    start_classify(procs, pl.tensor, pl.result)
    t0 = time.monotonic()
    t_first, first, cont = res.next(10)
    print(f"results resumed {t_first - t0:.2f}s after the classifier was back")
    assert t_first - t0 < 10.0, f"results resumed {t_first - t0:.2f}s after the classifier was back"
    # A consumer of results (soundbus tail) must accept them: not stale, and the restart visible.
    assert cont in (Continuity.NEW_EPOCH, Continuity.GAP, Continuity.RESTART), (
        f"first result after a classifier restart is {cont.value} (epoch {first.epoch} seq {first.seq}; "
        f"before: epoch {before[-1][1].epoch} seq {before[-1][1].seq}); a consumer drops stale ones"
    )
    assert first.offset > before[-1][1].offset
    after = res.take(5, 5)
    assert all(c is Continuity.NEXT for _, _, c in after)


def test_slow_classifier_keeps_lag_and_memory_bounded_and_counts_drops(procs, ctx) -> None:
    # A model 3x slower than real time behind a real-time capture: without bounds its lag and
    # memory would grow by 2 s and a few hundred KB every second.
    pl = pipeline(procs, classify_extra=("--max-lag-ms", "1000"), model="tests.net.slow_model:make")
    slow = pl.classify
    res = Results(ctx, pl.result)
    lags, rss = [], []
    for i in range(24):  # ~7 s of results at 0.3 s each
        _, msg, _ = res.next(20)
        lags.append((time.time_ns() - msg.end_ns) / 1e9)
        if i in (6, 23):
            rss.append(rss_kib(slow.proc.pid))
    late = lags[6:]
    print(f"slow classifier lag s: {[round(x, 2) for x in lags]}, rss KiB {rss}")
    # Bound: max lag (1 s) + one window (0.1 s) + the windows served in one pass at 0.3 s each.
    assert max(late) < 5.0, f"lag grew to {max(late):.1f}s: {[round(x, 1) for x in lags]}"
    assert late[-1] < late[0] + 2.0, f"lag keeps growing: {[round(x, 1) for x in lags]}"
    assert rss[1] - rss[0] < 20_000, f"classifier memory grew by {rss[1] - rss[0]} KiB in ~5 s"
    assert slow.stop() == 0, slow.log()
    drops = summary_counts(slow, "drops")
    assert drops > 0, f"a classifier 3x slower than real time dropped nothing?\n{slow.log()}"


def test_sigterm_stops_every_stage_promptly_with_unsent_messages_queued(procs, ctx) -> None:
    # capture --fast pushes 10 minutes of audio; the result subscriber below never reads, so the
    # classifier's queue toward it (--hwm 50) is full when SIGTERM arrives.
    raw, tensor, result = tcp(), tcp(), tcp()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.connect(result)
    classify = start_classify(procs, tensor, result, "--hwm", "50")
    convert = start_convert(procs, raw, tensor)
    res = Results(ctx, result)
    capture = start(procs, "capture", "--source", "synth:noise#mic1", "--duration", "600", "--fast", "--output", raw)
    res.take(600, 60)  # 60 s of audio classified: far more than the stuck subscriber's queues hold
    t0 = time.monotonic()
    for p in (capture, convert, classify):
        p.proc.send_signal(signal.SIGTERM)
    for p in (capture, convert, classify):
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{p.argv[2]} still running 10 s after SIGTERM:\n{p.log()}") from None
        took = time.monotonic() - t0
        assert rc == 0, f"{p.argv[2]} exited {rc} on SIGTERM:\n{p.log()}"
        assert took < 10.0, f"{p.argv[2]} took {took:.1f}s to stop"
    stuck.close(0)


def test_frozen_producer_is_detected_by_heartbeats_and_rejoins_by_itself(procs, ctx) -> None:
    # SIGSTOP keeps the TCP connection open (the kernel still ACKs) but the producer answers no
    # ZMTP ping: only heartbeats can tell. SIGCONT: it is found again without any action.
    raw, tensor = tcp(), tcp()
    convert = start_convert(procs, raw, tensor)
    out = client_sub(ctx, tensor, SocketOptions(hwm=100_000), [topic_for(Kind.TENSOR)])
    capture = start(procs, "capture", "--source", "synth:tone#mic1", "--output", raw)
    convert.wait_for("input connected")
    assert out.poll(20_000), "no tensors before the freeze"
    t0 = time.monotonic()
    capture.proc.send_signal(signal.SIGSTOP)
    try:
        convert.wait_for("input disconnected", timeout=10)
        detected_s = time.monotonic() - t0
        while out.poll(0):  # whatever was in flight before the freeze
            out.recv_multipart()
    finally:
        capture.proc.send_signal(signal.SIGCONT)
    assert detected_s < 15.0, f"a frozen producer was noticed after {detected_s:.1f}s (heartbeat timeout is 3 s)"
    t1 = time.monotonic()
    assert out.poll(10_000), f"the producer did not rejoin:\n{convert.log()}"
    print(f"frozen producer detected after {detected_s:.2f}s; frames again {time.monotonic() - t1:.2f}s after SIGCONT")
    assert time.monotonic() - t1 < 10.0


def test_brokered_pipeline_survives_a_proxy_kill_and_restart(procs, ctx) -> None:
    # capture, convert and classify all meet at one proxy; kill -9 it mid-stream, start it again.
    from tests.net.conftest import start_proxy

    fe, be = tcp(), tcp()
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be)
    proxy.wait_for("ready")
    start_classify(procs, be, ">" + fe)
    start_convert(procs, be, ">" + fe)
    start(procs, "capture", "--source", "synth:noise#mic1", "--output", ">" + fe).wait_for("ready")
    res = Results(ctx, be)
    before = res.take(5, 30)
    proxy.stop(signal.SIGKILL)
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be)
    proxy.wait_for("ready")
    t0, t0_ns = time.monotonic(), time.time_ns()
    prev = before[-1][1].offset
    # Results keep coming; audio captured after the proxy was back is classified within 2 s; what
    # was lost in the outage (if the queues did not hold it) shows as a hole in the offsets,
    # never as stale or backwards results.
    while True:
        t, msg, cont = res.next(10)
        assert cont in (Continuity.NEXT, Continuity.GAP, Continuity.NEW_EPOCH, Continuity.RESTART), cont
        offset = msg.offset
        assert offset > prev, f"results went backwards: {prev} -> {offset}"
        prev = offset
        if msg.start_ns >= t0_ns:
            break
    print(f"proxy restart: fresh audio classified {t - t0:.2f}s after the proxy was back")
    assert t - t0 < 10.0, f"audio captured after the restart was classified only {t - t0:.2f}s later"


def test_a_stalled_classifier_serves_no_stale_results_and_reports_what_it_shed(procs, ctx) -> None:
    """SIGSTOP the classifier for 6 s: on SIGCONT the queued tensors are older than --max-lag-ms;
    v1 served them anyway (results 58-60 s old after a 60 s stall). Now they are shed, counted,
    and the next result says how much audio was lost."""
    pl = pipeline(procs, classify_extra=("--max-lag-ms", "1000"))
    res = Results(ctx, pl.result)
    res.take(5, 30)
    pl.classify.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(6.0)  # the stall is what this test is about
        res.drain_now()
    finally:
        pl.classify.proc.send_signal(signal.SIGCONT)
    after = res.take(20, 30)
    ages = [(res.arrival_ns[id(m)] - m.end_ns) / 1e9 for _, m, _ in after]  # age when it arrived
    lost = sum(m.lost_ns for _, m, _ in after)
    assert lost >= 3 * 1_000_000_000, [m.lost_ns for _, m, _ in after]
    assert max(ages[-10:]) < 3.0, f"stale results served after the stall: ages {[round(a, 1) for a in ages]}"
    assert pl.classify.stop() == 0
    assert "stale_window=" in pl.classify.log()
