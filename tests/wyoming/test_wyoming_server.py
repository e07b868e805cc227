"""``soundbus wyoming`` with real processes (server + convert + classify --model wakeword), spoken
audio made with espeak-ng, and the ``wyoming`` package's own client doing Home Assistant's sequence."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

pytest.importorskip("wyoming", reason="soundbus wyoming needs the wyoming extra: pip install -e '.[wyoming]'")

import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402
from wyoming.event import async_read_event  # noqa: E402

from common.wire.codec import decode  # noqa: E402
from common.wire.messages import Flag, Result  # noqa: E402
from tests.wyoming.wyclient import ha_client, speech  # noqa: E402

WORDS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "weather"]
OTHER = "the quick brown fox jumps over the lazy dog"  # no wake word in it, nor "weather"


def test_home_assistant_sequence_detects_the_wake_word_at_the_phrase(pipeline):
    """describe -> info lists our wake words; detect{hey_jarvis}, audio-start, 10 ms chunks in real
    time -> detection named hey_jarvis, its timestamp (ms since audio-start) at the spoken phrase.

    The timestamp is that of the 80 ms window whose score crossed the threshold (Wyoming's
    ``Detection.timestamp``: "timestamp of audio chunk with detection"). openWakeWord's score rises
    once it has heard the whole phrase, so that window starts at its end or a little after
    (measured here: 120 ms after the last syllable of espeak-ng's "hey jarvis"); never before the
    phrase began, and within 400 ms of its end."""
    jarvis = speech("hey jarvis")
    got = asyncio.run(ha_client(pipeline.port, jarvis.pcm, ["hey_jarvis"], speed=1.0, describe=True))
    (program,) = got.info["wake"]
    assert [m["name"] for m in program["models"]] == WORDS
    assert program["models"][1]["phrase"] == "hey jarvis" and program["installed"]
    assert got.types() == ["detection"], got.events
    d = got.events[0].data
    assert d["name"] == "hey_jarvis"
    assert jarvis.start_ms <= d["timestamp"] <= jarvis.end_ms + 400, (d, jarvis.start_ms, jarvis.end_ms)


def test_other_speech_is_not_detected_and_names_map(pipeline):
    """Other speech, then audio-stop: not-detected. A name with wyoming-openwakeword's version suffix
    is answered with that same name (Home Assistant compares them); no names means every wake word."""

    async def both():
        return await asyncio.gather(
            ha_client(pipeline.port, speech(OTHER).pcm, ["hey_jarvis"]),
            ha_client(pipeline.port, speech("hey jarvis").pcm, ["hey_jarvis_v0.1"]),
            ha_client(pipeline.port, speech("alexa").pcm, None),
        )

    other, versioned, default = asyncio.run(both())
    assert other.types() == ["not-detected"], other.events
    assert versioned.types() == ["detection"] and versioned.events[0].data["name"] == "hey_jarvis_v0.1"
    assert default.types() == ["detection"] and default.events[0].data["name"] == "alexa"


def test_eight_clients_each_get_their_own_answer_in_shared_model_calls(pipeline):
    """8 satellites at once: each gets the answer for its own audio, and the wakeword worker scored
    them together (more than one window per model call, from its Prometheus metrics)."""
    plan = [("hey jarvis", ["hey_jarvis"], "hey_jarvis"), ("alexa", ["alexa"], "alexa"),
            (OTHER, ["hey_jarvis"], None), ("hey jarvis", None, "hey_jarvis"),
            ("alexa", ["alexa", "hey_jarvis"], "alexa"), (OTHER, None, None),
            ("hey jarvis", ["hey_jarvis_v0.1"], "hey_jarvis_v0.1"), ("alexa", ["hey_jarvis"], None)]
    windows0, calls0 = pipeline.classify_counts()

    async def all_at_once():
        return await asyncio.gather(*(ha_client(pipeline.port, speech(text).pcm, names) for text, names, _ in plan))

    answers = asyncio.run(all_at_once())
    for (text, names, expect), got in zip(plan, answers):
        if expect is None:
            assert got.types() == ["not-detected"], (text, names, got.events)
        else:
            assert got.types() == ["detection"] and got.events[0].data["name"] == expect, (text, names, got.events)
    windows, calls = pipeline.classify_counts()
    assert calls > calls0 and (windows - windows0) / (calls - calls0) > 1.0, (windows - windows0, calls - calls0)


async def _raw_client(port: int, data: bytes, timeout: float = 30.0) -> list:
    """Send ``data`` as is; return the events the server sends back before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    events = []
    while True:
        ev = await asyncio.wait_for(async_read_event(reader), timeout)
        if ev is None:
            break
        events.append(ev)
    writer.close()
    return events


def _line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_malformed_or_vanishing_clients_end_only_their_own_connection(pipeline):
    """Garbage, an oversized payload, impossible audio and a client that vanishes mid-stream: each
    of those connections ends (the bad ones with a Wyoming error), the vanished one's stream gets
    its END through the pipeline, and the good clients streaming meanwhile get their answers."""
    ctx = zmq.asyncio.Context()
    results: list[Result] = []

    async def collect(sub):
        while True:
            msg = decode(await sub.recv())
            if isinstance(msg, Result):
                results.append(msg)

    async def until(cond, timeout=60.0):
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def vanish():
        await until(lambda: results)  # our subscriber is receiving: the END will not be missed
        reader, writer = await asyncio.open_connection("127.0.0.1", pipeline.port)
        port = writer.get_extra_info("sockname")[1]
        start = _line({"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}})
        chunk = _line({"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                       "payload_length": 3200}) + bytes(3200)
        writer.write(start + chunk * 20)  # 2 s of audio, then gone without a word (TCP reset)
        await writer.drain()
        line = await asyncio.to_thread(pipeline.server.wait_for, rf"client 127\.0\.0\.1:{port} connected as stream", 30)
        writer.transport.abort()
        return re.search(r"as stream (\S+)", line).group(1)

    async def scenario():
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"result/")
        sub.connect(pipeline.result_addr)
        collector = asyncio.create_task(collect(sub))
        try:
            good = [ha_client(pipeline.port, speech("hey jarvis").pcm, ["hey_jarvis"], speed=2.0),
                    ha_client(pipeline.port, speech(OTHER).pcm, ["alexa"], speed=2.0)]
            bad = [_raw_client(pipeline.port, b"this is not json\n"),
                   _raw_client(pipeline.port, _line({"type": "audio-chunk", "payload_length": 10**9})),
                   _raw_client(pipeline.port, _line({"type": "audio-start", "data": {"rate": 16000, "width": 7,
                                                                                      "channels": 1}}))]
            out = await asyncio.gather(*good, *bad, vanish())
            stream = out[-1]
            await until(lambda: any(r.stream == stream and r.flags & Flag.END for r in results))
            return out
        finally:
            collector.cancel()
            sub.close()

    jarvis, other, garbage, oversized, impossible, _ = asyncio.run(scenario())
    ctx.term()
    assert jarvis.types() == ["detection"] and other.types() == ["not-detected"]
    for events, code in ((garbage, "bad_json"), (oversized, "bad_length"), (impossible, "bad_audio")):
        assert [(e.type, e.data.get("code")) for e in events] == [("error", code)], events
    # the server is still there for the next client
    assert asyncio.run(ha_client(pipeline.port, speech("alexa").pcm, ["alexa"])).types() == ["detection"]
    assert "unexpected error" not in pipeline.server.log(400)
