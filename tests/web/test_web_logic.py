"""WebLogic without sockets: messages built with the wire Structs (through the codec), explicit clocks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from common.wire.codec import decode, encode, encode_audio
from common.wire.messages import (
    AudioHeader,
    Event,
    Flag,
    Heartbeat,
    HeartbeatState,
    Hop,
    Label,
    Layout,
    Result,
    SampleFormat,
    StoredEvent,
)
from common.wire.topics import Kind
from web.board import Board, Cursor
from web.logic import MAX_MODELS, WebConfig, WebLogic

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
RATE, CHUNK = 16_000, 512


def tensor(seq: int, stream: str = "mic1", amp: float = 0.5, lost: int = 0, flags: int = 0, epoch: int = 1,
           rate: int = RATE) -> object:
    t = np.arange(seq * CHUNK, (seq + 1) * CHUNK) / rate
    x = (amp * np.sin(2 * np.pi * 1000 * t)).astype(np.float32).reshape(1, -1)
    h = AudioHeader(stream=stream, epoch=epoch, seq=seq, t_capture_ns=T0 + seq * CHUNK * NS // rate, rate=rate,
                    channels=1, format=SampleFormat.F32, layout=Layout.PLANAR, samples=CHUNK, offset=seq * CHUNK,
                    flags=flags, lost=lost, source="file:x.wav", trace=[Hop("capture", T0, T0 + 1000)])
    return decode(encode_audio(Kind.TENSOR, h, x))


def result(seq: int, stream: str = "mic1", model: str = "vad", labels=(("speech", 0.1),), events=(),
           flags: int = 0, epoch: int = 1, trace=True) -> Result:
    start = T0 + seq * CHUNK * NS // RATE
    hops = [Hop("capture", start, start + 100_000), Hop("convert", start + 300_000, start + 500_000),
            Hop("classify", start + 1_500_000, start + 4_500_000)] if trace else []
    r = Result(stream=stream, model=model, epoch=epoch, seq=seq, start_ns=start, end_ns=start + 32_000_000,
               offset=seq * CHUNK, rate=RATE, seq_first=seq, seq_last=seq,
               labels=[Label(n, s) for n, s in labels], events=list(events), flags=flags, trace=hops)
    return decode(encode(r))


class View:
    """A WebLogic on a real Board, with a browser's cursor reading what it publishes."""

    def __init__(self, **cfg) -> None:
        self.cfg = WebConfig(**cfg)
        self.board = Board(self.cfg.ring, self.cfg.bands, self.cfg.max_streams)
        self.metrics = StageMetrics("web")
        self.logic = WebLogic(self.board, self.cfg, self.metrics)
        self.mono = 100.0
        self.cursor = Cursor()

    def feed(self, *msgs: object, dt: float = 0.0) -> None:
        self.mono += dt
        self.logic.handle(list(msgs), Now(self.mono, time.time_ns()))

    def publish(self, dt: float = 0.11) -> dict:
        """Advance the clock past the next publish, tick, and return what a browser would get."""
        self.mono += dt
        self.logic.tick(Now(self.mono, time.time_ns()))
        out = self.board.compose(self.cursor, 0)
        return json.loads(out) if out else {}


def test_tensors_become_columns_and_a_level() -> None:
    v = View()
    v.feed(*[tensor(i) for i in range(10)])
    m = v.publish()
    s = m["s"]["mic1"]
    assert s["spec"]["n"] == (10 * CHUNK - 1024) // 640 + 1
    rms, peak = s["f"]["level"]
    assert rms == pytest.approx(-9.0, abs=0.2) and peak == pytest.approx(-6.0, abs=0.2)  # a sine at half scale
    assert s["st"]["rate"] == RATE and s["st"]["source"] == "file:x.wav" and s["st"]["tensor"]["gaps"] == 0
    assert v.metrics.total_in == 10


def test_a_tensor_gap_is_counted_and_drawn_as_silence() -> None:
    v = View()
    v.feed(tensor(0), tensor(1), tensor(4, lost=100))
    m = v.publish(dt=1.1)  # the slow part goes out once a second
    t = m["s"]["mic1"]["st"]["tensor"]
    assert t["gaps"] == 2 and t["lost_ms"] == (2 * CHUNK + 100) * 1000 // RATE
    assert v.metrics.total_gaps == 2
    cols = m["s"]["mic1"]["spec"]["n"]
    assert cols == (5 * CHUNK + 100 - 1024) // 640 + 1  # the lost audio takes its place in time


def test_labels_events_and_the_timeline() -> None:
    v = View()
    labels = [("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.2), ("e", 0.3), ("f", 0.05)]
    v.feed(result(0, model="yamnet", labels=labels))
    v.feed(result(0, labels=[("speech", 0.95)], events=[Event("speech", "start", T0, 0.95, T0)]))
    m = v.publish()
    models = m["s"]["mic1"]["f"]["models"]
    assert [x[0] for x in models["yamnet"][0]] == ["b", "c", "e", "d", "a"]  # top 5, best first
    assert models["vad"][0] == [["speech", 0.95]] and models["vad"][1] == {"speech": [T0, 0.95]}
    assert m["ev"] == [{"stream": "mic1", "model": "vad", "label": "speech", "state": "start", "t_ns": T0,
                        "score": 0.95, "since_ns": T0}]
    stop_t = T0 + 5 * 32_000_000
    v.feed(result(1, labels=[("speech", 0.1)], events=[Event("speech", "stop", stop_t, 1.0, T0)]))
    m = v.publish()
    assert m["s"]["mic1"]["f"]["models"]["vad"][1] == {}
    assert m["ev"][0]["state"] == "stop" and m["ev"][0]["since_ns"] == T0


def test_a_restart_or_the_end_turns_labels_off_and_gaps_are_counted() -> None:
    v = View()
    v.feed(result(0, events=[Event("speech", "start", T0, 0.9, T0)]))
    v.feed(result(3))  # results 1 and 2 never came
    m = v.publish(dt=1.1)
    vad = m["s"]["mic1"]["st"]["models"]["vad"]
    assert vad["missing"] == 2 and vad["results"] == 2
    assert m["s"]["mic1"]["f"]["models"]["vad"][1] == {"speech": [T0, 0.9]}
    v.feed(result(0, epoch=2))  # the source restarted
    assert v.publish()["s"]["mic1"]["f"]["models"]["vad"][1] == {}
    v.feed(result(1, epoch=2, events=[Event("speech", "start", T0, 0.9, T0)]))
    v.feed(result(2, epoch=2, flags=int(Flag.END)))
    assert v.publish()["s"]["mic1"]["f"]["models"]["vad"][1] == {}


def test_latency_per_hop_and_the_stages_seen() -> None:
    v = View()
    v.feed(result(0))
    m = v.publish(dt=1.1)
    lat = {seg: mean for seg, mean, _ in m["s"]["mic1"]["st"]["models"]["vad"]["latency"]}
    assert lat["capture"] == pytest.approx(0.1) and lat["capture→convert"] == pytest.approx(0.2)
    assert lat["convert"] == pytest.approx(0.2) and lat["convert→classify"] == pytest.approx(1.0)
    assert lat["classify"] == pytest.approx(3.0) and "classify→web" in lat
    assert [s["stage"] for s in m["health"]["stages"]] == ["capture", "classify", "convert"]
    assert all(s["up"] for s in m["health"]["stages"])


def test_stored_events_go_to_the_history_without_their_path() -> None:
    v = View()
    e = StoredEvent(stream="mic1", model="vad", label="speech", id=7, start_ns=T0, end_ns=T0 + NS, peak=0.9,
                    mean=0.8, clip="clips/2023-11-14/mic1/7.flac")
    v.feed(decode(encode(e)))
    m = v.publish()
    assert m["stored"] == [{"id": 7, "stream": "mic1", "model": "vad", "label": "speech", "start_ns": T0,
                            "end_ns": T0 + NS, "peak": 0.9, "mean": 0.8, "clip": True}]


def test_heartbeats_show_the_source_state() -> None:
    v = View()
    hb = Heartbeat(stream="mic1", epoch=1, next_seq=0, next_offset=0, t_ns=T0, rate=48000, channels=1,
                   format=SampleFormat.S16, state=HeartbeatState.RECONNECTING, source="default")
    v.feed(decode(encode(hb)))
    st = v.publish()["s"]["mic1"]["st"]
    assert st["source_state"] == "reconnecting" and st["source"] == "default"


def test_streams_and_models_are_bounded_and_idle_streams_go() -> None:
    v = View(max_streams=2, forget_s=30.0)
    v.feed(tensor(0, "a"), tensor(0, "b"), tensor(0, "c"))
    assert sorted(v.publish()["s"]) == ["a", "b"]
    assert v.metrics.drops["too_many_streams"] == 1
    v.feed(*[result(0, "a", model=f"m{i}") for i in range(MAX_MODELS + 3)])
    assert v.metrics.drops["too_many_models"] == 3
    v.mono += 31
    v.feed(tensor(1, "b"))
    m = v.publish()
    assert m["gone"] == ["a"]
    v.feed(tensor(0, "c"))
    assert "c" in v.publish()["s"]


def test_a_rate_change_restarts_the_spectrogram() -> None:
    v = View()
    v.feed(*[tensor(i) for i in range(4)])
    v.publish()
    v.feed(*[tensor(i, rate=48000) for i in range(4, 12)])
    s = v.publish(dt=1.1)["s"]["mic1"]
    assert s["st"]["rate"] == 48000 and s["spec"]["n"] == (8 * CHUNK - 2048) // 1920 + 1


def test_health_files_fresh_stale_garbage_and_missing(tmp_path: Path) -> None:
    good, stale, bad = tmp_path / "good.json", tmp_path / "stale.json", tmp_path / "bad.json"
    now = time.time()
    good.write_text(json.dumps({"stage": "convert", "ok": True, "input_connected": True, "seconds_since_input": 0.1,
                                "messages_in": 10, "messages_out": 9, "bad": 0, "t": now}))
    stale.write_text(json.dumps({"stage": "capture", "ok": True, "t": now - 60}))
    bad.write_bytes(b"\x00not json")
    cfg = WebConfig()
    board = Board(cfg.ring, cfg.bands, cfg.max_streams)
    metrics = StageMetrics("web")
    logic = WebLogic(board, cfg, metrics, [good, stale, bad, tmp_path / "missing.json"])
    logic.tick(Now(10.0, time.time_ns()))
    files = json.loads(board.compose(Cursor(), 0))["health"]["files"]
    assert files[0]["stage"] == "convert" and files[0]["ok"] and not files[0]["stale"]
    assert files[1]["stage"] == "capture" and not files[1]["ok"] and files[1]["stale"]
    assert files[2]["error"] == "not a soundbus health file" and metrics.bad["bad_health_file"] == 1
    assert "error" in files[3]


def test_several_channels_are_averaged_for_the_spectrogram_and_all_count_for_the_level() -> None:
    v = View()
    for seq in range(10):
        x = np.zeros((2, CHUNK), np.float32)
        x[0] = 0.5  # a constant on one channel: -6 dBFS peak, -9 dBFS rms over both channels
        h = AudioHeader(stream="st", epoch=1, seq=seq, t_capture_ns=T0, rate=RATE, channels=2,
                        format=SampleFormat.F32, layout=Layout.PLANAR, samples=CHUNK, offset=seq * CHUNK)
        v.feed(decode(encode_audio(Kind.TENSOR, h, x)))
    s = v.publish()["s"]["st"]
    assert s["f"]["level"] == [-9.0, -6.0] and s["st"]["channels"] == 2
    assert s["spec"]["n"] == (10 * CHUNK - 1024) // 640 + 1
