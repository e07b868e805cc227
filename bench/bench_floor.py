"""The floor: how fast one ZeroMQ hop between two real processes can go, and what soundbus adds.

Two processes on tcp loopback, one stream of 640 B payloads (20 ms of 16 kHz s16 mono):

- ``bare``: pyzmq XPUB -> SUB, one part per message (topic + a small msgpack header + the
  payload, split at known lengths); the receiver unpacks the header and views the payload
  with np.frombuffer. Nothing less is a usable hop: this is the floor.
- ``bare3``: the same with three parts [topic, header, payload], as protocol v1 sent them.
- ``soundbus``: common.transport.outbox.Outbox.send(encode_audio(AudioHeader(...))) ->
  common.transport.inbox.Inbox.receive (a batch per wake-up; codec.decode validates every
  field) -> SeqCursor.check -> Audio.samples(). What every stage pays per message.

Both are flooded (no HWM, so nothing is dropped) and the receiver measures frames/s from its
first to its last frame and its own CPU time per frame; the ratio soundbus/bare is the
protocol's overhead. The best of ``--repeat`` alternating runs is kept (noisy shared machine).

    .venv/bin/python bench/bench_floor.py [--count 60000] [--repeat 2] [--json]

The send/recv roles are reused by bench_peers.py (``--role send|recv``, ``--rate`` to pace).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import benchlib as bl
import msgpack
import numpy as np
import zmq

PAYLOAD_BYTES = 640  # 320 samples x 2 B: 20 ms of 16 kHz s16 mono
RATE, FRAMES = 16_000, 320
STREAM = "mic1"
TOPIC = b"raw/00/mic1/"  # bare variant: same length as a soundbus topic


# ---------------------------------------------------------------------------------------
# roles (each runs in its own process)

def _pace(i: int, t0: float, rate: float) -> None:
    """Sleep until frame ``i`` is due at ``rate`` frames/s (no-op when flooding)."""
    if rate > 0:
        due = t0 + i / rate
        dt = due - time.perf_counter()
        if dt > 0:
            time.sleep(dt)


def _small_header(i: int) -> bytes:
    return msgpack.packb({"s": STREAM, "n": i, "t": time.time_ns(), "r": RATE, "c": 1, "f": "s16", "fr": FRAMES})


def role_send(variant: str, count: int, rate: float) -> None:
    """Bind, print the endpoint, wait for a subscriber, send ``count`` messages, wait for stdin EOF."""
    ctx = zmq.Context()
    payload = (np.arange(FRAMES, dtype="<i2") * 7).tobytes()
    dropped = 0
    if variant in ("bare", "bare3"):
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        print("endpoint", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
        sock.recv()  # the subscription
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(count):
            _pace(i, t0, rate)
            hdr = _small_header(i)
            if variant == "bare3":
                sock.send_multipart([TOPIC, hdr, payload], copy=False)
            else:
                sock.send(b"".join((TOPIC, len(hdr).to_bytes(2, "little"), hdr, payload)))
    else:
        from common.observe.metrics import StageMetrics
        from common.transport.outbox import Outbox
        from common.transport.sockets import SocketOptions
        from common.wire import AudioHeader, Kind, Layout, SampleFormat, encode_audio

        pub = Outbox(ctx, ["tcp://127.0.0.1:*"], SocketOptions(hwm=0, linger_ms=0), StageMetrics("bench"))
        sock = pub.socket
        print("endpoint", sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
        pub.wait_for_subscriber(30.0)
        c0, t0 = time.process_time(), time.perf_counter()
        for i in range(count):
            _pace(i, t0, rate)
            h = AudioHeader(stream=STREAM, epoch=1, seq=i, t_capture_ns=time.time_ns(), rate=RATE, channels=1,
                            format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=FRAMES, offset=i * FRAMES,
                            source="bench")
            if not pub.send(encode_audio(Kind.RAW, h, payload)):
                dropped += 1
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    sys.stdin.read()  # keep the socket open until the receiver is done
    print(json.dumps({"sent": count, "dropped": dropped, "cpu_s": cpu, "wall_s": wall}), flush=True)
    if variant == "soundbus":
        pub.close(0)  # its link monitor too, or term() would wait for it
    else:
        sock.close(0)
    ctx.term()


def role_recv(variant: str, addr: str, count: int, idle_s: float) -> None:
    """Receive up to ``count`` frames (stop after ``idle_s`` of silence) and print timing as JSON."""
    ctx = zmq.Context()
    lat_us: list[float] = []
    n = 0
    c_first = t_first = c_last = t_last = 0.0
    if variant in ("bare", "bare3"):
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"raw/")
        sock.connect(addr)
        print("ready", flush=True)
        skip = len(TOPIC)
        while n < count:
            try:  # poll only when the queue is empty, as the Inbox does
                if variant == "bare3":
                    frames = sock.recv_multipart(zmq.NOBLOCK)  # copying beats zmq.Frame objects at 640 B
                    hdr = msgpack.unpackb(frames[1])
                    np.frombuffer(frames[2], dtype="<i2")
                else:
                    data = sock.recv(zmq.NOBLOCK)
                    hlen = int.from_bytes(data[skip : skip + 2], "little")
                    hdr = msgpack.unpackb(data[skip + 2 : skip + 2 + hlen])
                    np.frombuffer(memoryview(data)[skip + 2 + hlen :], dtype="<i2")
            except zmq.Again:
                if not sock.poll(int(idle_s * 1000)):
                    break
                continue
            lat_us.append((time.time_ns() - hdr["t"]) / 1e3)
            n += 1
            if n == 1:
                c_first, t_first = time.process_time(), time.perf_counter()
        c_last, t_last = time.process_time(), time.perf_counter()
    else:
        from common.observe.metrics import StageMetrics
        from common.runtime.streams import SeqCursor
        from common.transport.inbox import Inbox, Poller
        from common.transport.sockets import SocketOptions

        rx = Inbox(ctx, [addr], [b"raw/"], SocketOptions(hwm=0, linger_ms=0),
                   StageMetrics("bench", summary_every_s=1e9), Poller(), watchdog_s=0)
        sock = rx.sock
        cursor = SeqCursor()
        print("ready", flush=True)
        last_seen = time.monotonic()
        while n < count and time.monotonic() - last_seen < idle_s:
            batch = rx.receive(0.1)
            if not batch:
                continue
            now = time.time_ns()
            for msg in batch:
                h = msg.header
                cursor.check(h.epoch, h.seq)
                msg.samples()
                lat_us.append((now - h.t_capture_ns) / 1e3)
                n += 1
                if n == 1:
                    c_first, t_first = time.process_time(), time.perf_counter()
            last_seen = time.monotonic()
        c_last, t_last = time.process_time(), time.perf_counter()
        rx.links.close()
    sock.close(0)
    ctx.term()
    span = max(n - 1, 1)
    print(json.dumps({
        "received": n,
        "fps": span / (t_last - t_first) if t_last > t_first else 0.0,
        "cpu_us_per_frame": (c_last - c_first) / span * 1e6,
        "latency_us": bl.percentiles(lat_us[len(lat_us) // 10:], (50, 99)),  # skip the warm-up tenth
    }), flush=True)


def breakdown(n: int = 20_000) -> dict[str, float]:
    """In-process microseconds per call of each piece, to show where the overhead goes."""
    from common.wire import AudioHeader, Kind, Layout, SampleFormat, decode, encode_audio
    from common.wire import v1

    payload = bytes(PAYLOAD_BYTES)
    h = AudioHeader(stream=STREAM, epoch=1, seq=12345, t_capture_ns=time.time_ns(), rate=RATE, channels=1,
                    format=SampleFormat.S16, layout=Layout.INTERLEAVED, samples=FRAMES, offset=12345 * FRAMES,
                    source="bench")
    data = encode_audio(Kind.RAW, h, payload)
    h1 = v1.Header(v1.Kind.RAW, STREAM, epoch=1, seq=12345, t_capture_ns=time.time_ns(), rate=RATE, channels=1,
                   format="s16", frames=FRAMES, offset=12345 * FRAMES, source="bench")
    frames1 = [bytes(f) for f in v1.encode(h1, payload)]
    small = msgpack.packb({"s": STREAM, "n": 1, "t": time.time_ns(), "r": RATE, "c": 1, "f": "s16", "fr": FRAMES})

    def per_call(fn) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for _ in range(n // 3):
                fn()
            best = min(best, (time.process_time() - t0) / (n // 3) * 1e6)
        return best

    def drained(use_inbox: bool) -> float:
        """us per message to take N queued messages off an inproc SUB and decode them."""
        from common.observe.metrics import StageMetrics
        from common.transport.inbox import Inbox, Poller
        from common.transport.sockets import SocketOptions

        ctx = zmq.Context()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.bind("inproc://floor")
        if use_inbox:
            rx = Inbox(ctx, ["inproc://floor"], [b""], SocketOptions(hwm=0), StageMetrics("b", summary_every_s=1e9),
                       Poller(), 0)
            sub = rx.sock
        else:
            rx, sub = None, ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect("inproc://floor")
        m = 5000
        while not sub.poll(10):  # subscription propagation: probe until one arrives
            pub.send(data)
        sub.recv()
        for _ in range(m):
            pub.send(data)
        t0 = time.process_time()
        got = 0
        while got < m:
            if rx is not None:
                got += len(rx.receive(0.1))
            else:
                try:
                    decode(sub.recv(zmq.NOBLOCK))
                    got += 1
                except zmq.Again:
                    pass
        us = (time.process_time() - t0) / m * 1e6
        if rx is not None:
            rx.close()
        else:
            sub.close(0)
        pub.close(0)
        ctx.term()
        return us

    return {
        # best of 3 alternating passes: these are small numbers on a shared machine
        "recv_decode": min(drained(False) for _ in range(3)),
        "inbox_receive": min(drained(True) for _ in range(3)),
        "msgpack_pack_small": per_call(lambda: msgpack.packb({"s": STREAM, "n": 1, "t": 1, "r": RATE, "c": 1,
                                                              "f": "s16", "fr": FRAMES})),
        "msgpack_unpack_small": per_call(lambda: msgpack.unpackb(small)),
        "protocol_encode": per_call(lambda: encode_audio(Kind.RAW, h, payload)),
        "protocol_decode": per_call(lambda: decode(data)),
        "v1_encode": per_call(lambda: v1.encode(h1, payload)),
        "v1_decode": per_call(lambda: v1.decode(frames1)),
        "header_bytes": float(len(data) - PAYLOAD_BYTES),
        "small_header_bytes": float(len(small)),
    }


# ---------------------------------------------------------------------------------------
# orchestration

def run_hop(variant: str, count: int, rate: float = 0.0, idle_s: float = 3.0, timeout: float = 90.0) -> dict:
    """One sender process and one receiver process; returns the receiver's figures plus the sender's."""
    import subprocess

    me = bl.BENCH / "bench_floor.py"
    send = bl.python_script(me, "--role", "send", "--variant", variant, "--count", str(count), "--rate", str(rate),
                            stdin=subprocess.PIPE)
    recv = None
    try:
        addr = send.wait_for(r"^endpoint ", timeout=30, stdout=True).split()[1]
        recv = bl.python_script(me, "--role", "recv", "--variant", variant, "--addr", addr, "--count", str(count),
                                "--idle", str(idle_s))
        r = recv.json_result(timeout)
        send.proc.stdin.close()
        s = send.json_result(30)
    finally:
        if recv:
            recv.stop()
        send.stop()
    r["sender_cpu_us_per_frame"] = s["cpu_s"] / max(s["sent"], 1) * 1e6
    r["sent"], r["dropped"] = s["sent"], s["dropped"]
    return r


def _best(runs: list[dict]) -> dict:
    best = max(runs, key=lambda r: r["fps"])
    best = dict(best)
    best["cpu_us_per_frame"] = min(r["cpu_us_per_frame"] for r in runs)
    best["runs_fps"] = [round(r["fps"]) for r in runs]
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=60_000, help="frames per run (default 60000)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs per variant; the best is kept")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--role", choices=("send", "recv"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", choices=("bare", "bare3", "soundbus"), default="bare", help=argparse.SUPPRESS)
    ap.add_argument("--addr", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, default=3.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "send":
        role_send(args.variant, args.count, args.rate)
        return 0
    if args.role == "recv":
        role_recv(args.variant, args.addr, args.count, args.idle)
        return 0

    runs: dict[str, list[dict]] = {"bare": [], "bare3": [], "soundbus": []}
    for _ in range(args.repeat):
        for v, got in runs.items():
            got.append(run_hop(v, args.count))
    bare, bare3, sb = _best(runs["bare"]), _best(runs["bare3"]), _best(runs["soundbus"])
    res = {
        "payload_bytes": PAYLOAD_BYTES,
        "count": args.count,
        "bare": bare,
        "bare3": bare3,
        "soundbus": sb,
        "parts3_fps_ratio": bl.ratio(bare3["fps"], bare["fps"]),
        "fps_ratio": bl.ratio(sb["fps"], bare["fps"]),
        "recv_cpu_ratio": bl.ratio(sb["cpu_us_per_frame"], bare["cpu_us_per_frame"]),
        "send_cpu_ratio": bl.ratio(sb["sender_cpu_us_per_frame"], bare["sender_cpu_us_per_frame"]),
        "floor_fps": bare["fps"],
    }
    res["in_process_us"] = breakdown()
    table = [("path", "messages/s", "recv CPU us/msg", "send CPU us/msg", "received", "runs messages/s")]
    for name, r in (("bare pyzmq, one part (baseline)", bare), ("bare pyzmq, three parts (as v1)", bare3),
                    ("soundbus v2", sb)):
        table.append((name, bl.fmt(r["fps"]), bl.fmt(r["cpu_us_per_frame"]), bl.fmt(r["sender_cpu_us_per_frame"]),
                      f"{r['received']}/{r['sent']}", str(r["runs_fps"])))
    table.append(("soundbus / bare", bl.fmt(res["fps_ratio"]), bl.fmt(res["recv_cpu_ratio"]),
                  bl.fmt(res["send_cpu_ratio"]), "", ""))
    ip = res["in_process_us"]
    table.append(("in-process: msgpack small header (baseline)", "", bl.fmt(ip["msgpack_unpack_small"]),
                  bl.fmt(ip["msgpack_pack_small"]), "", ""))
    table.append(("in-process: v2 codec decode / encode", "", bl.fmt(ip["protocol_decode"]),
                  bl.fmt(ip["protocol_encode"]), "", ""))
    table.append(("in-process: v1 codec decode / encode (before)", "", bl.fmt(ip["v1_decode"]),
                  bl.fmt(ip["v1_encode"]), "", ""))
    table.append(("in-process: recv + decode", "", bl.fmt(ip["recv_decode"]), "", "", ""))
    table.append(("in-process: Inbox.receive (batch, per message)", "", bl.fmt(ip["inbox_receive"]), "", "", ""))
    bl.emit("floor", res, args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
