"""Brokered topology with real processes: capture -> soundbus proxy -> subscriber.

Checks that subscriptions travel through the proxy so filtering happens at the publisher
(the proxy's own counters prove an unwanted stream never reached it), that a proxy killed
with -9 and restarted is found again by everyone without any action, and that a
subscriber that stops reading costs only itself (bounded memory, drops seen as gaps).
"""

from __future__ import annotations

import re
import signal
import threading
import time

import zmq

from common.wire import Flag, Kind, decode_parts, topic_for
from common.transport.sockets import SocketOptions
from common.runtime.streams import Continuity
from tests.conftest import Tracker
from tests.conftest import start, tcp
from tests.net.conftest import RawFeeder, Watch, client_sub, drain, rss_kib, start_proxy, watched_sub


def _forwarded_parts(proxy) -> int:
    line = proxy.wait_for(r"proxy: forwarded \d+ parts .*", timeout=5)
    lines = [ln for ln in proxy.lines if "proxy: forwarded" in ln]
    return int(re.search(r"forwarded (\d+) parts", lines[-1] or line).group(1))


def test_proxy_forwards_subscriptions_so_filtering_happens_at_the_publisher(procs, ctx) -> None:
    fe, be = tcp(), tcp()
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be)
    proxy.wait_for("ready")
    wanted = topic_for(Kind.RAW, "mic1")
    sub = client_sub(ctx, be, SocketOptions(), [wanted])
    cap = start(
        procs, "capture", "--source", "synth:tone:440#mic1", "--source", "synth:noise#mic2",
        "--duration", "2", "--fast", "--output", ">" + fe,
    )
    got = []
    while not (got and got[-1].header.flags & Flag.END):
        assert sub.poll(20_000), f"nothing through the proxy:\n{cap.log()}\n{proxy.log()}"
        got.append(decode_parts(sub.recv_multipart()))
    assert cap.wait(20) == 0, cap.log()
    assert {m.stream for m in got} == {"mic1"}
    assert [m.header.seq for m in got] == list(range(len(got))), "lost or reordered frames"
    assert sum(m.header.samples for m in got) == 2 * 16000
    got += [decode_parts(m) for m in drain(sub)]
    assert proxy.stop() == 0, proxy.log()
    # Every part the proxy ever forwarded belongs to mic1's raw frames: mic2 (as much data again)
    # and the heartbeats never left the capture process, because nobody subscribed to them.
    assert _forwarded_parts(proxy) == len(got), proxy.log()  # one part per message


def test_proxy_killed_and_restarted_is_found_again_within_2s_with_the_gap_visible(procs, ctx) -> None:
    fe, be = tcp(), tcp()
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be)
    proxy.wait_for("ready")
    sub = client_sub(ctx, be, SocketOptions(), [topic_for(Kind.RAW)])
    # A live source (it cannot wait: 20 ms frames in real time) with a queue of 5 frames toward the
    # proxy, so a ~1 s outage must lose frames. (capture holds file/synth frames instead: no loss.)
    feeder = RawFeeder(ctx, [">" + fe], ["mic1"], SocketOptions(hwm=5), period_s=0.02)
    feeder.start()
    tracker = Tracker()

    def receive(n: int, timeout: float) -> list:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0 and sub.poll(int(left * 1000)), f"no frames within {timeout}s:\n{proxy.log()}"
            msg = decode_parts(sub.recv_multipart())
            out.append((msg, tracker.check(msg.stream, msg.header.epoch, msg.header.seq)))
        return out

    before = receive(10, 20)
    proxy.stop(signal.SIGKILL)  # frames in the proxy are lost; the publisher's queue (hwm 5) overflows meanwhile
    while sub.poll(0):  # frames that reached us before the kill
        msg = decode_parts(sub.recv_multipart())
        before.append((msg, tracker.check(msg.stream, msg.header.epoch, msg.header.seq)))
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be)
    proxy.wait_for("ready")
    t_ready = time.monotonic()
    (first, first_cont), = receive(1, 10)
    resumed_s = time.monotonic() - t_ready
    assert resumed_s < 2.0, f"resumed after {resumed_s:.2f}s"
    assert first.header.epoch == before[-1][0].header.epoch
    # Frames of the outage are dropped at the publisher (at most its 5-frame queue may survive
    # and arrive first): the hole shows up as exactly one sequence gap.
    after = [(first, first_cont)] + receive(15, 5)
    gaps = [missing for _, (c, missing) in after if c is Continuity.GAP]
    assert len(gaps) == 1 and gaps[0] > 0, f"the outage must show as one sequence gap: {[c for _, (c, _) in after]}"
    feeder.stop()


def test_slow_subscriber_costs_only_itself(procs, ctx) -> None:
    fe, be = tcp(), tcp()
    proxy = start_proxy(procs, "--frontend", fe, "--backend", be, "--hwm", "300")
    proxy.wait_for("ready")
    wanted = [topic_for(Kind.RAW)]
    fast, fast_watch = watched_sub(ctx, be, SocketOptions(hwm=100_000), wanted)
    slow = ctx.socket(zmq.SUB)  # reads 1 frame per 2 ms while the stream runs, ~4x slower than it arrives
    slow.setsockopt(zmq.RCVHWM, 50)
    slow.setsockopt(zmq.RCVBUF, 64 * 1024)
    slow.setsockopt(zmq.SUBSCRIBE, wanted[0])
    slow_watch = Watch(slow)
    slow.connect(be)
    fast_watch.wait(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    slow_watch.wait(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    rss0 = rss_kib(proxy.proc.pid)
    # A publisher paced at ~1 frame per 0.5 ms (7.7 KB each, ~15 MB/s), 3000 frames.
    n = 3000
    feeder = RawFeeder(ctx, [">" + fe], ["mic1"], period_s=0.0005, frames=3840, limit=n)
    assert feeder.pub.wait_for_subscriber(10), "no subscription reached the publisher through the proxy"
    late_raw: list = []
    stream_over = threading.Event()

    def read_slowly() -> None:
        while slow.poll(1000):
            late_raw.append(slow.recv_multipart())
            if not stream_over.is_set():
                time.sleep(0.002)  # the consumer's slowness, not a synchronisation

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    feeder.start()
    raw = []  # receive only, decode later
    while len(raw) < n:
        assert fast.poll(30_000), f"{len(raw)} frames only"
        raw.append(fast.recv_multipart())
    rss1 = rss_kib(proxy.proc.pid)
    stream_over.set()
    feeder.stop()
    reader.join(30)
    got = [decode_parts(f) for f in raw]
    assert [m.header.seq for m in got] == list(range(n)), "the fast subscriber lost frames"
    late = [decode_parts(f) for f in late_raw]
    gaps = Tracker()
    missing = sum(gaps.check(m.stream, m.header.epoch, m.header.seq)[1] for m in late)
    assert 0 < len(late) < n and missing > 0, "the slow subscriber must lose frames, visibly as gaps"
    assert missing == late[-1].header.seq + 1 - len(late)
    # Bounded: the slow subscriber's queue at the proxy is 300 frames (2.3 MB) at most.
    assert rss1 - rss0 < 30_000, f"proxy memory grew by {rss1 - rss0} KiB"
    for w in (fast_watch, slow_watch):
        w.close()
    slow.close(0)
    t0 = time.monotonic()
    assert proxy.stop(signal.SIGTERM, timeout=5) == 0, proxy.log()
    assert time.monotonic() - t0 < 2.0


def test_brokered_shards_own_disjoint_streams_and_a_new_capture_box_needs_no_change(procs, ctx) -> None:
    from common.wire import bucket_of

    fe, be = tcp(), tcp()
    start_proxy(procs, "--frontend", fe, "--backend", be).wait_for("ready")
    for shard in ("0/2", "1/2"):
        start(procs, "convert", "--shard", shard, "--input", be, "--output", ">" + fe).wait_for("ready")
    out = client_sub(ctx, be, SocketOptions(hwm=100_000), [topic_for(Kind.TENSOR)])
    first, late = ["kitchen", "hall"], ["yard", "garage"]  # buckets: kitchen, yard even; hall, garage odd
    assert {bucket_of(s) % 2 for s in first} == {bucket_of(s) % 2 for s in late} == {0, 1}
    start(procs, "capture", *[a for s in first for a in ("--source", f"synth:tone#{s}")], "--output", ">" + fe)
    tracker = Tracker()
    seen: dict[str, int] = {}

    def until(streams: list[str], n: int) -> None:
        while not all(seen.get(s, 0) >= n for s in streams):
            assert out.poll(20_000), f"tensors so far: {seen}"
            m = decode_parts(out.recv_multipart())
            cont, _ = tracker.check(m.stream, m.header.epoch, m.header.seq)
            # Two shards converting the same stream would publish every seq twice.
            assert cont in (Continuity.FIRST, Continuity.NEXT), f"{m.stream}: {cont.value}"
            seen[m.stream] = seen.get(m.stream, 0) + 1

    until(first, 20)
    # A second capture box joins the proxy; nothing else is touched.
    start(procs, "capture", *[a for s in late for a in ("--source", f"synth:tone#{s}")], "--output", ">" + fe)
    until(first + late, 20)
    assert set(seen) == set(first + late)


def test_proxy_writes_its_health_file_for_container_checks(procs, tmp_path) -> None:
    health = tmp_path / "proxy.health"
    proxy = start_proxy(procs, "--frontend", tcp(), "--backend", tcp(), "--health-file", str(health))
    proxy.wait_for("ready")
    deadline = time.monotonic() + 20
    while not health.exists():
        assert time.monotonic() < deadline, f"no health file:\n{proxy.log()}"
        time.sleep(0.1)
    check = start(procs, "common.cli.net", "health", str(health))
    assert check.wait(30) == 0, check.log()
    assert proxy.stop() == 0, proxy.log()
