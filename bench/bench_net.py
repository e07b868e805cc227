"""What the brokered topology and CURVE cost per hop: direct vs via `soundbus proxy`, plain vs CURVE.

One sender thread and one receiver (this process) on tcp loopback; the proxy, when used,
is a real `soundbus proxy` process. Sockets are made by common.transport.sockets (the
stages' own options, CURVE included); messages are one part, as protocol v2 sends them
(topic, a header-sized filler, then the payload). Two measurements per variant:

- flood: ``--count`` messages of 640 B (20 ms of 16 kHz s16 mono) and of 7680 B (20 ms of
  48 kHz stereo s16) sent as fast as possible with unbounded queues; receiver msgs/s and MB/s.
- latency: ``--lat-count`` messages paced at 500/s; one-way latency p50/p99 (same clock).

The baseline is ``direct plain``, measured in the same run; other rows print their ratio to it.
The proxy's CPU per forwarded message comes from /proc.

    .venv/bin/python bench/bench_net.py [--count 20000] [--lat-count 1500] [--repeat 2] [--json]
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import benchlib as bl
import zmq

sys.path.insert(0, str(bl.ROOT))
from common.transport.keys import CurveConfig, create_keypair
from common.transport.sockets import SocketOptions, open_socket

TOPIC = b"raw/00/mic1/"
HEADER = b"\x00\x02\x78\x00" + b"\x80" * 120  # NUL, version, length, ~ a real header; never decoded here
STAMP_AT = len(TOPIC) + len(HEADER)


def _free_addr() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class Keys:
    def __init__(self, root: Path) -> None:
        self.allow = root / "allow"
        self.allow.mkdir(parents=True)
        self.server = create_keypair(root / "server", "server")
        self.client = create_keypair(root / "client", "client")
        (self.allow / "client.key").write_bytes(self.client[0].read_bytes())

    def server_opts(self) -> SocketOptions:
        return SocketOptions(hwm=0, curve=CurveConfig(self.server[1], None, self.allow))

    def client_opts(self) -> SocketOptions:
        return SocketOptions(hwm=0, curve=CurveConfig(self.client[1], self.server[0], None))


def _run(ctx: zmq.Context, endpoints, pub_opts: SocketOptions, sub_opts: SocketOptions,
         count: int, size: int, rate: float) -> dict[str, float]:
    """Send ``count`` messages of ``size`` payload bytes (paced at ``rate``/s, 0 = flood); receiver stats.

    ``endpoints()`` -> (publisher endpoints, subscriber endpoints), fresh per run.
    """
    pub_ep, sub_ep = endpoints()
    sub = open_socket(ctx, zmq.SUB, sub_ep, sub_opts, default_bind=False)
    sub.setsockopt(zmq.SUBSCRIBE, b"raw/")
    pub = open_socket(ctx, zmq.XPUB, pub_ep, pub_opts, default_bind=True)
    # Wait until the subscription reached the publisher (directly or through the proxy).
    while not pub.poll(100):
        pass
    pub.recv()
    pad = b"\x00" * (size - 8)

    def send() -> None:
        t0 = time.perf_counter()
        for i in range(count):
            if rate > 0:
                dt = t0 + i / rate - time.perf_counter()
                if dt > 0:
                    time.sleep(dt)
            pub.send(b"".join((TOPIC, HEADER, struct.pack("<q", time.perf_counter_ns()), pad)))

    th = threading.Thread(target=send)
    th.start()
    lat_us, first, n = [], 0.0, 0
    while n < count:
        if not sub.poll(10_000):
            raise RuntimeError(f"received {n} of {count} messages")
        data = sub.recv()
        now = time.perf_counter_ns()
        n += 1
        if n == 1:
            first = time.perf_counter()
        lat_us.append((now - struct.unpack_from("<q", data, STAMP_AT)[0]) / 1e3)
    elapsed = time.perf_counter() - first
    th.join()
    pub.close(0)
    sub.close(0)
    out = {"msgs_per_s": (count - 1) / elapsed if elapsed > 0 else float("nan"),
           "mb_per_s": (count - 1) * size / elapsed / 1e6 if elapsed > 0 else float("nan")}
    out.update({f"lat_{k}_us": v for k, v in bl.percentiles(lat_us).items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20_000, help="messages per flood run")
    ap.add_argument("--lat-count", type=int, default=1500, help="messages per latency run (paced at 500/s)")
    ap.add_argument("--repeat", type=int, default=2, help="alternating rounds; the best of each figure is kept")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_net_"))
    keys = Keys(tmp / "keys")
    plain = SocketOptions(hwm=0)
    ctx = zmq.Context()
    rows: dict[str, dict[str, float]] = {}
    procs: list[bl.Proc] = []
    try:
        for variant in ("direct plain", "direct curve", "proxy plain", "proxy curve") * a.repeat:
            curve = variant.endswith("curve")
            proxy = None
            if variant.startswith("direct"):
                def endpoints() -> tuple[list[str], list[str]]:
                    addr = _free_addr()
                    return ["@" + addr], [">" + addr]
                pub_opts = keys.server_opts() if curve else plain
                sub_opts = keys.client_opts() if curve else plain
            else:
                fe, be = _free_addr(), _free_addr()
                flags = ["--curve-secret", str(keys.server[1]), "--curve-allow", str(keys.allow)] if curve else []
                proxy = bl.Proc([sys.executable, "-m", "common.cli", "proxy", "--frontend", fe, "--backend", be,
                                 "--hwm", "1000000", *flags])
                procs.append(proxy)
                proxy.wait_for("ready")
                def endpoints(fe: str = fe, be: str = be) -> tuple[list[str], list[str]]:
                    return [">" + fe], [">" + be]
                pub_opts = sub_opts = keys.client_opts() if curve else plain
            cpu0 = bl.proc_cpu_s(proxy.pid) if proxy else 0.0
            small = _run(ctx, endpoints, pub_opts, sub_opts, a.count, 640, 0)
            big = _run(ctx, endpoints, pub_opts, sub_opts, a.count // 2, 7680, 0)
            proxy_cpu = (bl.proc_cpu_s(proxy.pid) - cpu0) / (a.count * 1.5) * 1e6 if proxy else float("nan")
            lat = _run(ctx, endpoints, pub_opts, sub_opts, a.lat_count, 640, 500)
            new = {
                "msgs_per_s_640B": small["msgs_per_s"], "mb_per_s_7680B": big["mb_per_s"],
                "lat_p50_us": lat["lat_p50_us"], "lat_p99_us": lat["lat_p99_us"], "proxy_cpu_us_per_msg": proxy_cpu,
            }
            old = rows.get(variant)
            if old:  # best of the rounds: highest rates, lowest latencies and CPU
                new = {k: (max if k.startswith(("msgs", "mb")) else min)(v, old[k]) for k, v in new.items()}
            rows[variant] = new
            if proxy:
                proxy.stop()
    finally:
        for p in procs:
            p.stop()
        ctx.destroy(0)
    base = rows["direct plain"]
    table = [("variant", "msgs/s 640B", "x base", "MB/s 7.7KB", "x base", "lat p50 us", "lat p99 us",
              "proxy CPU us/msg")]
    for name, r in rows.items():
        table.append((name, bl.fmt(r["msgs_per_s_640B"]), bl.fmt(bl.ratio(r["msgs_per_s_640B"], base["msgs_per_s_640B"])),
                      bl.fmt(r["mb_per_s_7680B"]), bl.fmt(bl.ratio(r["mb_per_s_7680B"], base["mb_per_s_7680B"])),
                      bl.fmt(r["lat_p50_us"]), bl.fmt(r["lat_p99_us"]), bl.fmt(r["proxy_cpu_us_per_msg"])))
    bl.emit("net", {"rows": rows, "baseline": "direct plain"}, a.json, table)


if __name__ == "__main__":
    main()
