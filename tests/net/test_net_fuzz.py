"""1e5 random and mutated messages thrown at a stage's input while a valid stream keeps flowing.

The stage (real process) subscribes to two inputs: the real upstream and a hostile publisher
in the test. The hostile publisher has no send limit, so every message reaches the stage;
a valid sentinel stream sent after the fuzz proves the stage consumed all of it. Then:
the valid stream has no sequence gap and kept flowing, the sentinel was served, and the
stage's count of rejected messages equals exactly the number the protocol validator rejects.
"""

from __future__ import annotations

import re
import time

import numpy as np
import zmq

from common.runtime.streams import Continuity, SeqCursor
from common.transport.sockets import SocketOptions
from common.wire import AudioHeader, Flag, Kind, Layout, ProtocolError, SampleFormat, decode_parts, encode_audio, \
    topic_for
from tests.conftest import StageProcess, start, tcp
from tests.net.conftest import client_sub
from tests.net.fuzzgen import fuzz_messages

N_FUZZ = 100_000


def _hostile_publisher(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    sock = ctx.socket(zmq.XPUB)  # XPUB: tells us when the stage has subscribed
    sock.setsockopt(zmq.SNDHWM, 0)  # unlimited: nothing is dropped on our side
    sock.setsockopt(zmq.LINGER, 0)
    addr = tcp()
    sock.bind(addr)
    return sock, addr


def _sentinel(kind: Kind, n_msgs: int, frames: int) -> list[list[bytes]]:
    out = []
    for seq in range(n_msgs):
        h = AudioHeader(stream="fuzzend", epoch=7, seq=seq, t_capture_ns=time.time_ns(), rate=16000, channels=1,
                        format=SampleFormat.S16 if kind is Kind.RAW else SampleFormat.F32,
                        layout=Layout.INTERLEAVED if kind is Kind.RAW else Layout.PLANAR, samples=frames,
                        offset=seq * frames, flags=Flag.END if seq == n_msgs - 1 else 0)
        pcm = np.sin(np.arange(frames) * 0.05) * 0.3
        out.append([encode_audio(kind, h, (pcm * 32767).astype("<i2") if kind is Kind.RAW else pcm.astype("<f4"))])
    return out


STAGE_REASONS = {"wrong_rate", "wrong_channels", "rate_unsupported", "channel_select", "chunk_too_large"}


def _bad_total(line: str) -> int:
    """Messages the stage rejected as invalid protocol (stage-level refusals of valid messages, e.g. a
    tensor at another rate than the model's, are not the validator's and are left out)."""
    m = re.search(r" bad=(\S+)", line)
    if m.group(1) == "0":
        return 0
    counts = {k: int(v) for k, v in re.findall(r"([a-z0-9_]+)=(\d+)", m.group(1))}
    assert "stage_error" not in counts, f"the stage's logic raised: {line}"
    return sum(v for k, v in counts.items() if k not in STAGE_REASONS)


def _fuzz_stage(ctx, stage: StageProcess, hostile: zmq.Socket, out: zmq.Socket, kind: Kind, valid: str,
                sentinel: list[list[bytes]], sentinel_outputs: int, summary_line) -> None:
    assert hostile.poll(30_000), f"the stage never subscribed to the hostile input:\n{stage.log()}"
    assert hostile.recv()[0] == 1
    cursors: dict[str, SeqCursor] = {}
    got: dict[str, list] = {valid: [], "fuzzend": []}

    def receive(until, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            assert left > 0 and out.poll(int(left * 1000)), (
                f"stage stopped serving ({len(got[valid])} valid, {len(got['fuzzend'])} sentinel):\n{stage.log()}"
            )
            msg = decode_parts(out.recv_multipart())
            h = getattr(msg, "header", msg)
            cont, missing = cursors.setdefault(msg.stream, SeqCursor()).check(h.epoch, h.seq)
            assert cont in (Continuity.FIRST, Continuity.NEXT), f"{msg.stream}: {cont.value} ({missing} missing)"
            got[msg.stream].append((time.monotonic(), msg))

    receive(lambda: len(got[valid]) >= 3, 60)  # the valid stream flows
    messages = fuzz_messages(kind, N_FUZZ, seed=20261125)
    expected_bad = 0
    for m in messages:
        try:
            decode_parts(m)
        except ProtocolError:
            expected_bad += 1
    t0 = time.monotonic()
    for m in messages:
        hostile.send_multipart(m)
    for m in sentinel:
        hostile.send_multipart(m)
    receive(lambda: len(got["fuzzend"]) >= sentinel_outputs, 120)
    t_sentinel = time.monotonic()
    n_valid = len(got[valid])
    receive(lambda: len(got[valid]) >= n_valid + 5, 20)  # and still flows afterwards
    during = [t for t, _ in got[valid] if t0 <= t <= t_sentinel]
    print(f"{kind.value}: {N_FUZZ} fuzz messages consumed in {t_sentinel - t0:.1f}s; "
          f"{len(during)} valid outputs during it; expected bad={expected_bad}")
    assert during, "the valid stream was not served while the fuzz was processed"
    assert stage.proc.poll() is None, "the stage died"
    # The stage rejected exactly what the protocol validator rejects (nothing crashed, nothing slipped).
    deadline = time.monotonic() + 30
    while True:
        line = summary_line()
        if line is not None and _bad_total(line) >= expected_bad:
            break
        assert time.monotonic() < deadline, f"stage never reported {expected_bad} bad messages:\n{stage.log()}"
        time.sleep(0.2)  # polling a log file the stage appends to, not synchronising with it
    assert _bad_total(line) == expected_bad, line


def _last_summary(stage: StageProcess, name: str):
    def get():
        lines = [ln for ln in stage.lines if f"{name}: streams=" in ln]
        return lines[-1] if lines else None
    return get


def test_convert_serves_a_valid_stream_through_1e5_fuzzed_messages(procs, ctx) -> None:
    raw, tensor = tcp(), tcp()
    hostile, hostile_addr = _hostile_publisher(ctx)
    convert = start(procs, "convert", "--input", raw, "--input", hostile_addr, "--output", tensor,
                    "--summary-every", "1")
    convert.wait_for("ready")
    out = client_sub(ctx, tensor, SocketOptions(hwm=100_000),
                     [topic_for(Kind.TENSOR, "mic1"), topic_for(Kind.TENSOR, "fuzzend")])
    start(procs, "capture", "--source", "synth:tone#mic1", "--output", raw).wait_for("ready")
    _fuzz_stage(ctx, convert, hostile, out, Kind.RAW, "mic1", _sentinel(Kind.RAW, 50, 320), 31,
                _last_summary(convert, "convert"))


def test_classify_serves_a_valid_stream_through_1e5_fuzzed_messages(procs, ctx) -> None:
    raw, tensor, result = tcp(), tcp(), tcp()
    hostile, hostile_addr = _hostile_publisher(ctx)
    classify = start(procs, "classify", "--model", "level", "--input", tensor, "--input", hostile_addr,
                     "--output", result)
    classify.wait_for("ready", timeout=60)
    start(procs, "convert", "--input", raw, "--output", tensor).wait_for("ready")
    out = client_sub(ctx, result, SocketOptions(hwm=100_000),
                     [topic_for(Kind.RESULT, "mic1"), topic_for(Kind.RESULT, "fuzzend")])
    start(procs, "capture", "--source", "synth:tone#mic1", "--output", raw).wait_for("ready")
    # classify logs its summary every 10 s and at exit: stop it to read the final count.
    final = {"line": None}

    def summary():
        if final["line"] is None:
            classify.stop()
            final["line"] = _last_summary(classify, "classify")()
        return final["line"]

    _fuzz_stage(ctx, classify, hostile, out, Kind.TENSOR, "mic1", _sentinel(Kind.TENSOR, 10, 512), 3, summary)
