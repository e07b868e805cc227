"""The Wyoming server's parts without sockets: the bounded event reader, names, one session."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

pytest.importorskip("wyoming", reason="soundbus wyoming needs the wyoming extra: pip install -e '.[wyoming]'")

from wyoming.audio import AudioChunk, AudioStart  # noqa: E402
from wyoming.event import Event  # noqa: E402

from capture.framer import StreamFormat  # noqa: E402
from common.wire.codec import decode  # noqa: E402
from common.wire.messages import Flag, Label, Result  # noqa: E402
from wyoming_server.names import canonical, check_names, resolve  # noqa: E402
from wyoming_server.reader import BadEvent, Limits, read_event  # noqa: E402
from wyoming_server.session import BadAudio, SessionConfig, WakeSession, audio_format  # noqa: E402

WORDS = ("alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "weather")
FMT = StreamFormat(16000, 1, "s16")
T0 = 1_700_000_000_000_000_000


# -- reader ---------------------------------------------------------------------------------

def read_all(data: bytes, limits: Limits = Limits()) -> list:
    """Every event (or the BadEvent) a stream of bytes gives, then EOF."""

    async def go():
        reader = asyncio.StreamReader(limit=limits.header)
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        while True:
            try:
                ev = await read_event(reader, limits)
            except BadEvent as e:
                out.append(e)
                return out
            if ev is None:
                return out
            out.append(ev)

    return asyncio.run(go())


def wire(event: Event) -> bytes:
    """An event as the wyoming package writes it (header line, data, payload)."""
    head = {"type": event.type, "version": "1.0.0"}
    data = json.dumps(event.data).encode() if event.data else b""
    if data:
        head["data_length"] = len(data)
    if event.payload:
        head["payload_length"] = len(event.payload)
    return json.dumps(head).encode() + b"\n" + data + (event.payload or b"")


def test_reader_reads_what_the_library_writes():
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\x01\x00" * 160, timestamp=30).event()
    got = read_all(wire(AudioStart(rate=16000, width=2, channels=1).event()) + wire(chunk))
    assert [e.type for e in got] == ["audio-start", "audio-chunk"]
    assert got[1].payload == chunk.payload and got[1].data["timestamp"] == 30 and got[1].data["rate"] == 16000


@pytest.mark.parametrize("data, reason", [
    (b"not json\n", "bad_json"),
    (b"[1, 2]\n", "bad_header"),
    (b'{"data": {}}\n', "bad_type"),
    (b'{"type": "audio-chunk", "payload_length": 99999999}\n', "bad_length"),
    (b'{"type": "audio-chunk", "payload_length": -1}\n', "bad_length"),
    (b'{"type": "audio-chunk", "data_length": "10"}\n', "bad_length"),
    (b'{"type": "x", "data_length": 3}\n[1]', "bad_data"),
    (b'{"type": "x", "data": [1]}\n', "bad_data"),
    (b'{"type": "' + b"a" * 70_000 + b'"}\n', "header_too_long"),
])
def test_reader_refuses_malformed_events_with_a_reason(data, reason):
    got = read_all(data)
    assert len(got) == 1 and isinstance(got[0], BadEvent) and got[0].reason == reason, got


def test_reader_sees_a_vanished_client_as_the_end():
    whole = wire(AudioChunk(rate=16000, width=2, channels=1, audio=b"\x00" * 640).event())
    assert read_all(whole[:-100]) == []  # cut inside the payload
    assert read_all(whole[:10]) == []  # cut inside the header line


# -- names ----------------------------------------------------------------------------------

def test_names_match_loosely_and_answer_with_the_name_asked():
    assert canonical("Hey Jarvis") == canonical("hey-jarvis") == canonical("hey_jarvis_v0.1") == "hey_jarvis"
    w = resolve(["hey_jarvis_v0.1", "ok_nabu"], WORDS)
    assert w.reply == {"hey_jarvis": "hey_jarvis_v0.1"} and w.unknown == ("ok_nabu",)
    assert resolve(None, WORDS).reply == {w: w for w in WORDS}
    assert check_names(None) is None
    for bad in ("hey_jarvis", [1], ["x"] * 100, [""]):
        with pytest.raises(ValueError):
            check_names(bad)


# -- session --------------------------------------------------------------------------------

def result(session: WakeSession, offset: int, scores: dict[str, float], end: bool = False) -> Result:
    """A wakeword result of the session's current epoch for the window at ``offset`` (16 kHz samples)."""
    labels = [Label(w, scores.get(w, 0.0)) for w in WORDS]
    return Result(stream=session.stream, model="wakeword", epoch=session.epoch, seq=offset // 1280,
                  start_ns=T0, end_ns=T0 + 80_000_000, offset=offset, rate=16000, seq_first=0, seq_last=0,
                  labels=labels, flags=int(Flag.END) if end else 0, final=end)


def pcm(ms: int) -> bytes:
    return np.zeros(16 * ms, dtype="<i2").tobytes()


def test_session_frames_audio_on_the_model_hop_and_ends_the_epoch():
    s = WakeSession("wy-0", SessionConfig(WORDS))
    assert s.start(FMT, T0) == []
    msgs = [m for i in range(25) for m in s.chunk(FMT, pcm(10), T0 + i * 10_000_000)]  # 250 ms in 10 ms chunks
    heads = [decode(m).header for m in msgs]
    assert [h.samples for h in heads] == [1280, 1280, 1280] and [h.offset for h in heads] == [0, 1280, 2560]
    assert [h.seq for h in heads] == [0, 1, 2] and all(h.epoch == s.epoch and h.stream == "wy-0" for h in heads)
    end, replies = s.stop(T0 + 300_000_000)
    last = decode(end[-1]).header
    assert replies == [] and last.flags & Flag.END and last.offset == 3840 and last.samples == 160


def test_session_end_on_a_frame_boundary_rides_on_one_silent_sample():
    s = WakeSession("wy-0", SessionConfig(WORDS))
    s.start(FMT, T0)
    assert len(s.chunk(FMT, pcm(80), T0)) == 1
    (end,) = s.close(T0)
    h = decode(end).header
    assert h.flags & Flag.END and h.samples == 1 and h.offset == 1280 and bytes(decode(end).payload) == b"\0\0"


def test_session_detects_once_per_onset_with_the_asked_name_and_window_time():
    s = WakeSession("wy-0", SessionConfig(WORDS, threshold=0.5))
    s.detect(["hey_jarvis_v0.1"])
    s.start(FMT, T0)
    s.chunk(FMT, pcm(10), T0, timestamp=5000)  # the client's time base: its stream began 5 s ago
    assert s.result(result(s, 0, {"alexa": 0.99})) == []  # not asked for
    (d,) = s.result(result(s, 1280 * 20, {"hey_jarvis": 0.7}))
    assert d.type == "detection" and d.data["name"] == "hey_jarvis_v0.1" and d.data["timestamp"] == 5000 + 1600
    assert s.result(result(s, 1280 * 21, {"hey_jarvis": 0.9})) == []  # still on: no second detection
    s.result(result(s, 1280 * 22, {"hey_jarvis": 0.1}))
    assert [e.type for e in s.result(result(s, 1280 * 23, {"hey_jarvis": 0.8}))] == ["detection"]  # a new onset


def test_session_trigger_level_needs_windows_in_a_row():
    s = WakeSession("wy-0", SessionConfig(WORDS, trigger_level=2))
    s.start(FMT, T0)
    assert s.result(result(s, 0, {"alexa": 0.9})) == []
    assert s.result(result(s, 1280, {"alexa": 0.2})) == []
    assert s.result(result(s, 2560, {"alexa": 0.9})) == []
    assert [e.type for e in s.result(result(s, 3840, {"alexa": 0.9}))] == ["detection"]


def test_session_answers_not_detected_after_the_last_result_only():
    s = WakeSession("wy-0", SessionConfig(WORDS))
    s.start(FMT, T0)
    s.chunk(FMT, pcm(100), T0)
    s.stop(T0)
    assert s.result(result(s, 0, {})) == [] and not s.done
    assert [e.type for e in s.result(result(s, 1280, {}, end=True))] == ["not-detected"] and s.done
    assert s.result(result(s, 2560, {"alexa": 1.0})) == []  # answered: nothing more


def test_session_ignores_results_of_an_earlier_epoch():
    s = WakeSession("wy-0", SessionConfig(WORDS))
    s.start(FMT, T0)
    old = result(s, 0, {"alexa": 0.9})
    s.start(FMT, T0 + 1)  # a new audio-start: a new epoch on the same stream
    assert s.epoch != old.epoch and s.result(old) == []


def test_session_stop_without_audio_answers_at_once():
    s = WakeSession("wy-0", SessionConfig(WORDS))
    msgs, replies = s.stop(T0)
    assert msgs == [] and [e.type for e in replies] == ["not-detected"] and s.done


def test_audio_format_bounds():
    assert audio_format({"rate": 16000, "width": 2, "channels": 1}) == FMT
    assert audio_format({"rate": 48000, "width": 1, "channels": 2}).format == "u8"
    for bad in ({"rate": 16000, "width": 5, "channels": 1}, {"rate": "16000", "width": 2, "channels": 1},
                {"rate": 16000, "width": 2, "channels": 0}, {"rate": 10**9, "width": 2, "channels": 1}, {}):
        with pytest.raises(BadAudio):
            audio_format(bad)
    s = WakeSession("wy-0", SessionConfig(WORDS))
    with pytest.raises(BadAudio):
        s.chunk(FMT, b"\0\0\0", T0)  # not whole samples
