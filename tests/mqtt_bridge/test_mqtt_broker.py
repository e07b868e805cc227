"""The bridge as a process between a real ZeroMQ result stream and a real Mosquitto broker.

Results come from a PUB socket in the test (Result Structs on the wire, as classify sends
them); the broker is Debian's mosquitto with a password file and TLS listeners; a real
MQTT client in the test reads what arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from common.cli.main import run as run_cli
from common.wire.codec import encode
from common.wire.messages import Event, Label, Result, StoredEvent
from mqtt_bridge.cli import register
from mqtt_bridge.names import Topics
from tests.conftest import ROOT, start
from tests.mqtt_bridge.conftest import PASSWORD, USER, Broker, ResultSource, bridge_env
from tests.mqtt_bridge.ha_schema import named_topics, problems

NS = 1_000_000_000
HOP_NS = 32_000_000
T = Topics()
STATE = T.state("mic1", "vad", "speech")


class Feed:
    """Results of one stream and model, window after window, with events when asked."""

    def __init__(self, src: ResultSource, stream: str = "mic1", model: str = "vad") -> None:
        self.src, self.stream, self.model = src, stream, model
        self.seq = 0
        self.t0 = time.time_ns()
        self.events: list[tuple[str, int, int | None]] = []  # (state, start_ns, end_ns) of each event sent

    def send(self, *events: tuple[str, str]) -> None:
        """One result; ``events``: (label, "start" | "stop") pairs."""
        t = self.t0 + self.seq * HOP_NS
        evs = [Event(label, state, t, 0.9, t if state == "start" else t - 10 * HOP_NS) for label, state in events]
        self.events += [(e.state, e.since_ns, None if e.state == "start" else e.t_ns) for e in evs]
        self.src.send(Result(stream=self.stream, model=self.model, epoch=1, seq=self.seq, start_ns=t,
                             end_ns=t + HOP_NS, offset=self.seq * 512, rate=16000, seq_first=self.seq,
                             seq_last=self.seq, labels=[Label("speech", 0.5)], events=evs))
        self.seq += 1

    def until(self, done, timeout: float = 20.0, every_s: float = 0.02) -> None:
        """Send results until ``done()`` (the bridge's SUB socket may join a little after it connects)."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the bridge never showed the stream"
            self.send()
            time.sleep(every_s)


def bridge(procs, src: ResultSource, port: int, *flags: str, env: dict[str, str] | None = None):
    p = start(procs, "mqtt_bridge", "--input", src.addr, "--broker", f"127.0.0.1:{port}", *flags,
              env={**bridge_env(), **(env or {})})
    p.wait_for(r"\bready\b", timeout=30)
    return p


def seen(w, topic: str, payload: bytes | None = None):
    return lambda: any(m.topic == topic and (payload is None or m.payload == payload) for m in w.messages)


def test_states_follow_events_and_the_broker_gets_availability_and_discovery(procs, broker, watcher, results) -> None:
    w = watcher(broker.port)
    b = bridge(procs, results, broker.port, "--labels", "speech")
    feed = Feed(results)
    feed.until(seen(w, T.stream_status("mic1"), b"online"))
    feed.send(("speech", "start"))
    w.on(STATE, b"ON")
    feed.send()
    feed.send(("speech", "stop"))
    w.on(STATE, b"OFF")
    events = [json.loads(m.payload) for m in w.on(T.event("mic1", "vad"), count=2)]
    assert [e["state"] for e in events] == ["start", "stop"]
    assert events[1]["end_ns"] - events[1]["start_ns"] == 10 * HOP_NS
    assert w.latest()[T.bridge_status] == b"online"
    # States and events at --qos (1); the periodic labels at QoS 0 (the next one replaces a lost one).
    assert {m.qos for m in w.messages if m.topic in (STATE, T.event("mic1", "vad"))} == {1}
    assert {m.qos for m in w.messages if m.topic == T.labels("mic1")} == {0}
    # Discovery: valid as documented, and every topic it names is published.
    latest = w.latest()
    configs = {t: json.loads(p) for t, p in latest.items() if t.startswith("homeassistant/") and p}
    assert T.config("binary_sensor", "mic1_vad_speech") in configs
    for topic, cfg in configs.items():
        assert problems(topic, cfg) == []
        assert named_topics(cfg) <= set(latest), (topic, named_topics(cfg) - set(latest))
    # Retained: a client that subscribes now gets the current state at once.
    late = watcher(broker.port, "soundbus/#")
    late.on(STATE, b"OFF")
    assert all(m.retain for m in late.messages if m.topic == STATE)
    b.stop()
    w.on(T.bridge_status, b"offline")  # a clean stop says goodbye itself


def test_broker_killed_and_restarted_mid_stream(procs, broker, watcher, results) -> None:
    """The bridge reconnects by itself, republishes availability and states on a broker that lost them,
    keeps reading results while the broker is away, and counts the events it had to drop."""
    w = watcher(broker.port)
    b = bridge(procs, results, broker.port, "--max-queued-events", "3")
    feed = Feed(results)
    feed.until(seen(w, T.stream_status("mic1"), b"online"))
    feed.send(("speech", "start"))
    w.on(STATE, b"ON")
    first = json.loads(w.on(T.labels("mic1"))[0].payload)["models"]["vad"]["start_ns"]
    first_seq = (first - feed.t0) // HOP_NS
    w.close()

    broker.kill()
    b.wait_for("lost the connection to the MQTT broker", timeout=20)
    # While it is away: 11 onsets/offsets (the last leaves speech ON), windows in between.
    before = len(feed.events)
    for i in range(11):
        feed.send(("speech", "start" if i % 2 == 0 else "stop"))
        for _ in range(9):
            feed.send()
    kept, dropped = set(feed.events[-3:]), set(feed.events[before:-3])
    time.sleep(0.5)
    assert b.proc.poll() is None, b.log()
    # The broker comes back with no retained message at all (no persistence). It refuses the bridge
    # until the test's client listens, so the client sees everything the bridge sends on reconnect.
    broker.set_users(bridge=False)
    broker.start()
    w2 = watcher(broker.port)
    broker.set_users(bridge=True)
    broker.reload()
    b.wait_for("connected to the MQTT broker", count=2, timeout=90)

    w2.on(T.bridge_status, b"online")
    w2.on(T.stream_status("mic1"), b"online")
    w2.on(STATE, b"ON")  # the latest state, coalesced while away
    w2.on(T.config("binary_sensor", "mic1_vad_speech"))
    stats = json.loads(w2.wait_for(lambda m: m.topic == T.bridge_stats and json.loads(m.payload)["connects"] >= 2,
                                   what="stats after the reconnect")[-1].payload)
    # The queue kept the last 3 events; the other 8 were dropped and counted.
    assert stats["events_dropped"] == 8, stats
    # It kept reading the whole time: every result since the first it got (a SUB joins a moment late).
    assert stats["results"] == results.sent - first_seq, (stats, results.sent, first_seq)

    def got() -> set[tuple[str, int, int | None]]:
        return {(e["state"], e["start_ns"], e["end_ns"]) for m in w2.messages if m.topic == T.event("mic1", "vad")
                for e in [json.loads(m.payload)]}

    w2.wait_for(lambda m: kept <= got(), what="the 3 queued events")
    time.sleep(0.5)
    assert not got() & dropped  # (the onset sent before the kill may come twice: QoS 1 is at least once)
    assert b.proc.poll() is None


def test_wrong_password_is_one_sentence_and_the_bridge_keeps_retrying(procs, broker, results) -> None:
    b = bridge(procs, results, broker.port, env={"SOUNDBUS_MQTT_PASSWORD": "wrong"})
    b.wait_for("refused the login", timeout=20)
    deadline = time.monotonic() + 30
    while broker.log().count("not authorised") < 2:  # mosquitto saw at least two attempts
        assert time.monotonic() < deadline, broker.log()
        time.sleep(0.2)
    assert b.proc.poll() is None
    lines = [ln for ln in b.lines if "refused the login" in ln]
    assert len(lines) == 1, lines  # said once, not once per attempt
    assert "--password-file" in lines[0] and PASSWORD not in b.log()


def test_unreachable_broker_then_it_starts_and_the_bridge_connects(procs, tmp_path, certs, results, watcher) -> None:
    (tmp_path / "later").mkdir()
    later = Broker(tmp_path / "later", certs)  # its ports chosen, not started yet
    b = bridge(procs, results, later.port)
    b.wait_for("nothing accepts connections", timeout=20)
    assert b.proc.poll() is None
    try:
        later.start()
        b.wait_for("connected to the MQTT broker", timeout=60)
        watcher(later.port).on(T.bridge_status, b"online")
    finally:
        later.stop()


def test_tls_with_the_right_ca_and_a_client_certificate_and_a_clear_sentence_for_the_wrong_ca(
        procs, broker, certs, results, watcher) -> None:
    wrong = bridge(procs, results, broker.tls_port, "--tls-ca", str(certs.other_ca), "--node-id", "wrong")
    right = bridge(procs, results, broker.tls_port, "--tls-ca", str(certs.ca), "--node-id", "right",
                   "--mqtt-version", "5")
    mutual = bridge(procs, results, broker.mtls_port, "--tls-ca", str(certs.ca), "--tls-cert",
                    str(certs.client_cert), "--tls-key", str(certs.client_key), "--node-id", "mutual")
    no_cert = bridge(procs, results, broker.mtls_port, "--tls-ca", str(certs.ca), "--node-id", "nocert")
    line = wrong.wait_for("TLS certificate of the MQTT broker", timeout=20)
    assert "--tls-ca" in line
    right.wait_for("connected to the MQTT broker", timeout=20)
    mutual.wait_for("connected to the MQTT broker", timeout=20)
    no_cert.wait_for(r"WARNING .*(client certificate)", timeout=20)
    w = watcher(broker.port)
    w.on("soundbus/bridge/right/status", b"online")
    w.on("soundbus/bridge/mutual/status", b"online")
    time.sleep(1.0)
    assert all(p.proc.poll() is None for p in (wrong, right, mutual, no_cert))
    assert "connected to the MQTT broker" not in wrong.log() + no_cert.log()
    assert w.latest().get("soundbus/bridge/wrong/status") is None


@pytest.mark.parametrize("flags, env, says", [
    (["--password-file", "/nonexistent/pw"], {}, "--password-file"),
    (["--broker", "localhost:99999"], {}, "port"),
    (["--broker", "localhost:abc"], {}, "port"),
    (["--broker", "mqtt://user:pw@localhost"], {}, "credentials go in"),
    (["--tls-key", "/etc/hostname"], {}, "--tls-key needs --tls-cert"),
    (["--tls-ca", "/nonexistent/ca.pem"], {}, "--tls-ca"),
    (["--tls-ca", "/etc/hostname"], {}, "TLS files"),
    (["--tls-insecure"], {}, "only applies with TLS"),
    (["--node-id", "a b"], {}, "--node-id"),
    (["--topic-prefix", "a/#/"], {}, "--topic-prefix"),
    ([], {"SOUNDBUS_MQTT_PASSWORD": "x"}, "user name"),
    (["--password", "x"], {}, "unrecognized arguments"),  # no way to put a secret in argv, not even abbreviated
    (["--rate", "0"], {}, "--rate"),
    (["--input", "tcp://nohost"], {}, "tcp://nohost"),
])
def test_bad_flags_exit_2_with_one_sentence(flags, env, says, monkeypatch, capsys) -> None:
    for name in ("SOUNDBUS_MQTT_PASSWORD", "SOUNDBUS_MQTT_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        code = run_cli(["mqtt", *flags], registers=[register])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err, err
    sentences = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(sentences) == 1 and says in sentences[0], err  # argparse adds its usage lines


def test_the_bridge_needs_no_torch(tmp_path) -> None:
    blocker = tmp_path / "torch"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'torch' (blocked by the test)\")\n")
    r = subprocess.run([sys.executable, "-m", "mqtt_bridge", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=False, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert r.returncode == 0 and "--broker" in r.stdout, r.stderr


def test_a_bad_flag_as_a_process_is_exit_2_and_no_traceback() -> None:
    r = subprocess.run([sys.executable, "-m", "mqtt_bridge", "--password-file", "/nonexistent/pw"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--password-file" in r.stderr, r.stderr


def test_home_assistant_birth_rediscovers_and_a_dropped_label_is_removed(procs, broker, watcher, results) -> None:
    w = watcher(broker.port)
    speech_cfg = T.config("binary_sensor", "mic1_vad_speech")
    dog_cfg = T.config("binary_sensor", "mic1_vad_dog")
    first = bridge(procs, results, broker.port, "--labels", "speech,dog")
    feed = Feed(results)
    feed.until(seen(w, T.stream_status("mic1"), b"online"))
    feed.send(("speech", "start"), ("dog", "start"))
    w.on(speech_cfg)
    w.on(dog_cfg)
    # Home Assistant restarts and announces itself: discovery again (live, not the retained copy).
    birth = time.monotonic()
    w.publish("homeassistant/status", b"online")
    again = w.wait_for(lambda m: m.topic == speech_cfg and m.t > birth, what="the config again after the birth")
    assert not again[-1].retain
    uid = json.loads(w.on(speech_cfg)[0].payload)["unique_id"]
    first.stop()

    # The next run selects only speech (and speaks MQTT 5): the dog entity is removed, speech kept, same id.
    second = bridge(procs, results, broker.port, "--labels", "speech", "--mqtt-version", "5")
    second.wait_for("connected to the MQTT broker")
    w.wait_for(lambda m: m.topic == dog_cfg and m.payload == b"", what="the dog config cleared")
    fresh = watcher(broker.port, "homeassistant/#")
    cfg = json.loads(fresh.on(speech_cfg)[0].payload)
    assert cfg["unique_id"] == uid
    time.sleep(0.5)
    assert dog_cfg not in fresh.latest()
    assert w.latest()[STATE] == b"OFF"  # until results say otherwise, an earlier run's ON is not believed


def test_a_password_from_a_file(procs, broker, results, tmp_path, watcher) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    start(procs, "mqtt_bridge", "--input", results.addr, "--broker", f"mqtt://localhost:{broker.port}",
          "--username", USER, "--password-file", str(pw), "--client-id", "from-file", "--qos", "0",
          env={"SOUNDBUS_MQTT_PASSWORD": "", "SOUNDBUS_MQTT_USERNAME": ""}).wait_for("connected to the MQTT broker")
    watcher(broker.port).on(T.bridge_status, b"online")
    assert mqtt.MQTTv311  # the default protocol; MQTT 5 is covered above


def test_stored_events_add_the_event_id_and_clip(procs, broker, watcher, results) -> None:
    """With --events (here on the same address, as through a proxy), an event message waits for the
    event store's StoredEvent and carries its id and clip; the state does not wait."""
    w = watcher(broker.port)
    bridge(procs, results, broker.port, "--events", "--events-wait-ms", "5000")
    feed = Feed(results)
    feed.until(seen(w, T.stream_status("mic1"), b"online"))
    feed.send(("speech", "start"))
    w.on(STATE, b"ON")
    _, start_ns, _ = feed.events[-1]
    assert not [m for m in w.messages if m.topic == T.event("mic1", "vad")]  # waiting for the store
    results.sock.send(encode(StoredEvent("mic1", "vad", "speech", 17, start_ns, 0, 0.9, 0.9,
                                         clip="mic1/17.wav")))
    ev = json.loads(w.on(T.event("mic1", "vad"))[0].payload)
    assert (ev["event_id"], ev["clip"], ev["start_ns"]) == (17, "mic1/17.wav", start_ns)
