"""The shared runtime and transport: validated batches, counting, the silence watchdog, links that
libzmq drops for good, bounded per-stream bookkeeping, and one stage's close order."""

from __future__ import annotations

import gc
import logging
import time

import msgpack
import pytest
import zmq

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.stage import Now, Runtime, StopFlag
from common.runtime.streams import Continuity, SeqCursor, StreamTable
from common.transport.inbox import Inbox, Poller
from common.transport.outbox import Outbox
from common.transport.sockets import SocketOptions
from common.wire import AudioHeader, Flag, Kind, Layout, Result, SampleFormat, encode, encode_audio, topic_for
from tests.conftest import tcp


def _raw(stream: str, seq: int, flags: int = 0, samples: int = 2) -> bytes:
    h = AudioHeader(stream=stream, epoch=1, seq=seq, t_capture_ns=0, rate=16000, channels=1, format=SampleFormat.S16,
                    layout=Layout.INTERLEAVED, samples=samples, offset=seq * samples, flags=flags)
    return encode_audio(Kind.RAW, h, b"\0" * (2 * samples))


def _pair(zctx: zmq.Context, watchdog_s: float, opts: SocketOptions | None = None,
          prefixes: tuple[bytes, ...] = (b"raw/",)) -> tuple[Outbox, Inbox]:
    addr = tcp()
    pub = Outbox(zctx, ["@" + addr], SocketOptions(), StageMetrics("pub"))
    rx = Inbox(zctx, [addr], prefixes, opts or SocketOptions(), StageMetrics("test"), Poller(), watchdog_s)
    assert pub.wait_for_subscriber(10)
    deadline = time.monotonic() + 10  # every prefix: a message sent before its subscription lands is filtered out
    while len(pub.subscriptions) < len(prefixes):
        assert time.monotonic() < deadline, f"subscriptions seen: {pub.subscriptions}"
        if pub.socket.poll(50, zmq.POLLIN):
            pub.poll_subscriptions()
    return pub, rx


def _recv_for(rx: Inbox, seconds: float) -> list:
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        got += rx.receive(0.05)
        rx.housekeeping()
    return got


def test_inbox_counts_bad_messages_and_keeps_serving(zctx) -> None:
    pub, rx = _pair(zctx, watchdog_s=0)
    pub.send(_raw("a", 0))
    pub.send(b"raw/00/a/\0\1\0\0")  # version 1
    pub.socket.send_multipart([_raw("a", 1), b"x"])  # two parts
    pub.send(_raw("a", 1))
    got = _recv_for(rx, 1.0)
    assert [m.header.seq for m in got] == [0, 1]
    assert rx.metrics.bad == {"bad_version": 1, "bad_part_count": 1}
    rx.close()


def test_inbox_hands_over_everything_queued_as_one_batch(zctx) -> None:
    pub, rx = _pair(zctx, watchdog_s=0)
    for seq in range(300):
        pub.send(_raw("a", seq))
    time.sleep(0.3)  # let them all arrive: this test is about how receive() returns what is queued
    batch = rx.receive(1.0)
    assert len(batch) == 300 and [m.header.seq for m in batch] == list(range(300))
    rx.close()


def test_watchdog_reports_a_silent_stream_once_and_its_return(zctx, caplog) -> None:
    pub, rx = _pair(zctx, watchdog_s=1.0, prefixes=(b"raw/", topic_for(Kind.RESULT)))
    caplog.set_level(logging.INFO, logger="soundbus.inbox")
    for seq in range(3):
        pub.send(_raw("quiet", seq))
        pub.send(_raw("ends", seq, Flag.END if seq == 2 else 0))
        pub.send(encode(Result(stream="done", model="vad", epoch=1, seq=seq, start_ns=0, end_ns=1, offset=0,
                               rate=16000, seq_first=0, seq_last=0, labels=[], flags=Flag.END if seq == 2 else 0)))
    assert len(_recv_for(rx, 2.6)) == 9
    warnings = [r.getMessage() for r in caplog.records if "no messages for" in r.getMessage()]
    # "ends" and "done" ended with END (audio, a result): not silent
    assert len(warnings) == 1 and "stream quiet" in warnings[0], warnings
    assert rx.metrics.events["silent_stream"] == 1
    pub.send(_raw("quiet", 3))
    assert len(_recv_for(rx, 0.5)) == 1
    assert any("stream quiet: messages again" in r.getMessage() for r in caplog.records)
    rx.close()


def test_a_link_closed_by_an_oversized_message_is_restored(zctx, caplog) -> None:
    """libzmq closes a connection that delivers a message over MAXMSGSIZE and, on the side that
    connected, never reconnects (even after the publisher restarts). The inbox reconnects it."""
    caplog.set_level(logging.INFO, logger="soundbus.links")
    addr = tcp()
    pub = zctx.socket(zmq.PUB)
    pub.bind(addr)
    rx = Inbox(zctx, [addr], [b""], SocketOptions(max_msg_bytes=10_000), StageMetrics("test"), Poller(), 0)
    deadline = time.monotonic() + 10
    while rx.connected == 0:
        assert time.monotonic() < deadline
        rx.receive(0.05)
    time.sleep(0.2)  # the subscription travels to the publisher
    pub.send(b"x" * 20_000)  # over the receiver's MAXMSGSIZE: a protocol error for libzmq
    got, deadline = [], time.monotonic() + 15
    while not got:
        assert time.monotonic() < deadline, caplog.text
        pub.send(_raw("a", 0))
        got = rx.receive(0.1)
        rx.housekeeping()
    assert rx.metrics.events["link_reconnected"] >= 1
    assert "reconnecting" in caplog.text
    rx.close()
    pub.close(0)


def test_curve_mismatch_is_explained_on_both_sides_once(zctx, tmp_path, caplog) -> None:
    """A client without CURVE to a CURVE server: both sides say what is wrong, once, not a stream
    of bare disconnects; the client keeps trying (the server may be reconfigured)."""
    from common.transport.keys import create_keypair
    from common.transport.sockets import CurveConfig

    caplog.set_level(logging.INFO, logger="soundbus.links")
    _, srv_secret = create_keypair(tmp_path / "srv", "srv")
    allow = tmp_path / "allow"
    allow.mkdir()
    addr = tcp()
    server = Outbox(zctx, ["@" + addr], SocketOptions(curve=CurveConfig(srv_secret, None, allow)),
                    StageMetrics("srv"), Poller())
    client = Inbox(zctx, [addr], [b"raw/"], SocketOptions(), StageMetrics("cli"), Poller(), 0)
    end = time.monotonic() + 4
    while time.monotonic() < end:
        client.receive(0.05)
        client.housekeeping()
        server.links.process()
        server.links.tick()
    said = [r.getMessage() for r in caplog.records if "disagree on CURVE" in r.getMessage()]
    assert any(m.startswith("input ") for m in said) and any(m.startswith("output ") for m in said), caplog.text
    assert len(said) <= 4  # once per side per peer address, not per retry
    assert client.metrics.events["handshake_failed"] >= 2  # it kept trying
    client.close()
    server.close()


def test_seq_cursor_gaps_epochs_stale_and_flagged_restarts() -> None:
    c = SeqCursor()
    assert c.check(1, 0) == (Continuity.FIRST, 0)
    assert c.check(1, 1) == (Continuity.NEXT, 0)
    assert c.check(1, 5) == (Continuity.GAP, 3)
    assert c.check(1, 5) == (Continuity.STALE, 0)
    assert c.check(1, 2, discontinuity=True) == (Continuity.RESTART, 0)  # a restarted publisher
    assert c.check(1, 3) == (Continuity.NEXT, 0)
    assert c.check(2, 0) == (Continuity.NEW_EPOCH, 0)


def test_stream_table_is_bounded_whatever_ids_arrive_and_reclaims_finished_streams(caplog) -> None:
    m = StageMetrics("t")
    table: StreamTable[dict] = StreamTable(100, m, finished=lambda s: s.get("done", False))
    for i in range(20_000):
        table.admit(f"s{i}", dict)
    assert len(table) == 100 and m.drops["too_many_streams"] == 19_900
    assert len([r for r in caplog.records if "too_many_streams" in r.getMessage() or "refused" in r.getMessage()]) < 10
    table.get("s5")["done"] = True
    assert table.admit("new", dict) is not None and "s5" not in table
    assert m.events["stream_reclaimed"] == 1


def test_metrics_per_stream_counters_fold_into_totals_when_a_stream_is_forgotten() -> None:
    m = StageMetrics("t")
    for i in range(1000):
        m.frame_in(f"s{i}", 2)
        m.forget(f"s{i}")
    assert not m.frames_in and m.total_in == 2000


def test_rate_limited_log_is_bounded_in_keys_and_lines(caplog) -> None:
    log = RateLimitedLog(logging.getLogger("t"), every_s=60)
    for i in range(10_000):
        log.warning(f"k{i % 3}", "x")
    for i in range(10_000):
        log.warning(f"unique{i}", "y")
    assert len(log._seen) <= 512
    assert len([r for r in caplog.records if r.getMessage() == "x"]) == 9


class _Echo:
    """A stage logic that republishes what it gets and remembers how it was called."""

    def __init__(self, stop: StopFlag) -> None:
        self.stop, self.batches, self.finished = stop, [], False

    def handle(self, batch, now):
        self.batches.append(len(batch))
        if sum(self.batches) >= 50:
            self.stop.set()
        return [_raw("echo", m.header.seq) for m in batch]

    def tick(self, now):
        return []

    def wake_in(self, now):
        return None

    def finish(self, now):
        self.finished = True
        return [_raw("echo", 999)]

    def summary(self):
        return "echo"


def test_runtime_runs_a_logic_batches_a_burst_and_closes_in_order(zctx, collector, tmp_path) -> None:
    src, out = tcp(), tcp()
    pub = Outbox(zctx, ["@" + src], SocketOptions(), StageMetrics("pub"))
    stop = StopFlag(install=False)
    metrics = StageMetrics("echo")
    health = tmp_path / "health.json"
    col = collector(out, Kind.RAW)
    with Runtime("echo", metrics, stop, health) as rt:
        inbox = rt.inbox([src], [b"raw/"], SocketOptions())
        outbox = rt.outbox([out], SocketOptions())
        assert pub.wait_for_subscriber(10)
        deadline = time.monotonic() + 10
        while not outbox.subscriptions:
            assert time.monotonic() < deadline
            rt.poller.wait(0.05)
        for seq in range(50):
            pub.send(_raw("in", seq))
        time.sleep(0.3)  # all 50 queued before the loop wakes: one batch
        logic = _Echo(stop)
        rt.run(logic, inbox, outbox)
    assert logic.batches == [50] and logic.finished
    msgs = col.collect(lambda ms: len(ms) >= 51, timeout=10)
    assert [m.header.seq for m in msgs] == list(range(50)) + [999]
    assert '"stage": "echo"' in health.read_text()
    pub.close(0)


def test_runtime_pauses_a_nodrop_output_instead_of_dropping(zctx) -> None:
    """A nodrop publisher whose subscriber does not read: the runtime holds what is refused and
    sends it when there is room; nothing is lost and the logic is not asked for more meanwhile."""
    out = tcp()
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 10)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    stop = StopFlag(install=False)
    sent_by_logic = []

    class Flood(_Echo):
        def tick(self, now):
            batch = [_raw("f", len(sent_by_logic) + i, samples=4000) for i in range(100)]
            sent_by_logic.extend(batch)
            if len(sent_by_logic) >= 3000:
                self.stop.set()
            return batch

    with Runtime("flood", StageMetrics("flood"), stop) as rt:
        outbox = rt.outbox([out], SocketOptions(hwm=10, nodrop=True, linger_ms=20_000))
        sub.connect(out)
        assert outbox.wait_for_subscriber(10)
        from common.transport.inbox import Poller as _P  # noqa: F401 (the runtime's poller is the input)

        class NoInput:
            received = 0

            def receive(self, timeout_s, gather_s=0.0, limit=0):
                rt.poller.wait(min(timeout_s, 0.01))
                return []

            def housekeeping(self):
                pass

            def close(self):
                pass

        import threading

        got = []

        def reader():
            while len(got) < 3000:
                if sub.poll(100):
                    got.append(sub.recv())
                    time.sleep(0.0002)  # a slow consumer

        t = threading.Thread(target=reader)
        t.start()
        rt.run(Flood(stop), NoInput(), outbox)
        t.join(60)
    sub.close(0)
    assert len(got) == 3000 and got == sent_by_logic[:3000]


def test_health_of_a_source_stage_follows_what_it_publishes(tmp_path) -> None:
    """Capture and replay have no bus input: publishing is their sign of life (a stalled device is not ok)."""
    import json

    from common.runtime.stage import HealthFile

    path = tmp_path / "capture.health"
    metrics = StageMetrics("capture")
    health = HealthFile(path, "capture", idle_s=0.2)
    health.write(None, metrics)
    assert json.loads(path.read_text())["ok"]
    time.sleep(0.3)
    metrics.frame_out("mic")
    health.write(None, metrics)
    assert json.loads(path.read_text())["ok"], "published within idle_s: healthy"
    time.sleep(0.3)
    health.write(None, metrics)
    assert not json.loads(path.read_text())["ok"], "nothing published for longer than idle_s"


def test_the_loop_runs_with_the_heap_it_started_with_frozen() -> None:
    """Objects alive when the loop starts (modules, a model) are exempt from collections: a full
    collection over torch's heap took 150 ms, the p99 jump bench_capacity saw at 52+ streams."""

    class Nothing:
        def receive(self, timeout_s, gather_s=0.0, limit=0):
            return []

        def housekeeping(self):
            pass

    class Once:
        def __init__(self, stop):
            self.stop, self.frozen = stop, -1

        def handle(self, batch, now):
            return []

        def tick(self, now):
            self.frozen = gc.get_freeze_count()
            self.stop.set()
            return []

        def wake_in(self, now):
            return 0.0

        def finish(self, now):
            return []

        def summary(self):
            return ""

    gc.unfreeze()
    long_lived = [[] for _ in range(1000)]  # what the stage set up (lists: tracked by the collector)
    stop = StopFlag(install=False)
    logic = Once(stop)
    try:
        with Runtime("frozen", StageMetrics("frozen"), stop) as rt:
            rt.run(logic, Nothing(), None)
        assert logic.frozen >= len(long_lived)
    finally:
        gc.unfreeze()


def test_gather_makes_one_batch_of_a_burst_and_never_waits_past_its_bound(zctx) -> None:
    """convert's --batch-wait-ms: after the first message the inbox keeps collecting until the
    bound, then returns, even while messages keep coming (explicit clock values, not timing)."""
    pub, rx = _pair(zctx, watchdog_s=0)
    ticks = iter(x * 0.001 for x in range(1_000_000))  # every reading of the clock: 1 ms later
    rx.clock = lambda: next(ticks)
    for seq in range(5):
        pub.send(_raw("a", seq))
    time.sleep(0.3)
    # Messages keep arriving: one more is queued before every wait. Deadline = first reading +
    # 10 ms, so the gather reads the clock 11 times at most and returns what it has.
    sent = [5]

    real_wait = rx.poller.wait

    def wait_and_feed(timeout_s: float):
        pub.send(_raw("a", sent[0]))
        sent[0] += 1
        time.sleep(0.002)
        return real_wait(timeout_s)

    rx.poller.wait = wait_and_feed
    batch = rx.receive(1.0, gather_s=0.010)
    seqs = [m.header.seq for m in batch]
    assert seqs == list(range(len(seqs))) and 6 <= len(seqs) <= 17  # the burst, and one more per wait until the bound
    assert next(ticks) <= 0.012 + 1e-9  # the clock was read at most 12 times: the bound held
    rx.poller.wait = real_wait
    rx.close()
