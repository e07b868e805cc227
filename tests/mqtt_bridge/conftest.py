"""A real Mosquitto broker per test (random loopback ports, a password file, TLS), and a real MQTT client
in the test process that keeps what it receives.

The broker runs as its own process started from Debian's ``mosquitto`` binary and is
killed at teardown, also when the test fails. TLS certificates (a CA, the broker's for
127.0.0.1/localhost, a client's, and an unrelated CA) are made once per session with the
openssl command line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from common.cli.process import ChildProcess, WaitTimeout
from common.wire.codec import encode
from common.wire.messages import Result
from tests.conftest import free_port

USER, PASSWORD = "soundbus", "s3cret pass"  # the bridge's (a space: the password file keeps it whole)
WATCH_USER, WATCH_PASSWORD = "watcher", "watch"  # the test's own client
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"  # /usr/sbin is not on every user's PATH


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying the broker with it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    for tool in ("openssl", MOSQUITTO, "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install mosquitto and openssl (scripts/install.sh does)")
    d = tmp_path_factory.mktemp("certs")
    for ca in ("ca", "other"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=soundbus test {ca}", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who, subj, ext in (("server", "/CN=localhost", ["-extfile", "server.ext"]), ("client", "/CN=bridge", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", subj, cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.crt", "-days", "2", *ext, cwd=d)
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key",
                 d / "other.crt")


class Broker:
    """Mosquitto on three loopback ports: ``port`` plain, ``tls_port`` TLS, ``mtls_port`` TLS that also
    requires a client certificate; every listener needs USER/PASSWORD. No persistence: a restarted
    broker has lost every retained message."""

    def __init__(self, d: Path, certs: Certs) -> None:
        self.dir, self.certs = d, certs
        self.port, self.tls_port, self.mtls_port = free_port(), free_port(), free_port()
        self.passwd = d / "passwd"
        self.set_users(bridge=True)
        tls = f"cafile {certs.ca}\ncertfile {certs.server_cert}\nkeyfile {certs.server_key}\n"
        self.conf = d / "mosquitto.conf"
        self.conf.write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"password_file {self.passwd}\npersistence false\nlog_dest stderr\nconnection_messages true\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            + ("user root\n" if os.geteuid() == 0 else "")  # as root it would switch to 'mosquitto', who can't read tmp
            + f"listener {self.port} 127.0.0.1\n"
            + f"listener {self.tls_port} 127.0.0.1\n{tls}"
            + f"listener {self.mtls_port} 127.0.0.1\n{tls}require_certificate true\n"
        )
        self.procs: list[ChildProcess] = []

    def set_users(self, bridge: bool) -> None:
        """Write the password file: the test's client always, the bridge's user if ``bridge``
        (a running broker reads it again on :meth:`reload`)."""
        self.passwd.unlink(missing_ok=True)
        for user, password in [(WATCH_USER, WATCH_PASSWORD)] + ([(USER, PASSWORD)] if bridge else []):
            subprocess.run(["mosquitto_passwd", *(["-c"] if not self.passwd.exists() else []), "-b",
                            str(self.passwd), user, password], check=True, capture_output=True, timeout=30)

    def reload(self) -> None:
        """SIGHUP: mosquitto reads its password file again."""
        self.proc.send_signal(signal.SIGHUP)

    @property
    def proc(self) -> ChildProcess:
        return self.procs[-1]

    def start(self) -> Broker:
        p = ChildProcess([MOSQUITTO, "-c", str(self.conf)], cwd=self.dir)
        self.procs.append(p)
        try:
            p.wait_for(r"mosquitto version \S+ running", timeout=15)
        except WaitTimeout:
            p.stop(signal.SIGKILL)
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, the way a crashed or unplugged broker goes."""
        self.proc.stop(signal.SIGKILL)

    def stop(self) -> None:
        for p in self.procs:
            p.stop(signal.SIGTERM, timeout=5)

    def log(self) -> str:
        return "\n".join(line for p in self.procs for line in p.lines)


@pytest.fixture
def broker(tmp_path, certs) -> Iterator[Broker]:
    b = Broker(tmp_path, certs).start()
    yield b
    b.stop()
    print(f"--- mosquitto ---\n{b.log()[-4000:]}")  # shown by pytest when the test failed


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool  # True only for a retained message delivered because we subscribed
    qos: int  # as delivered: the lower of the publisher's and our subscription's (1)
    t: float  # time.monotonic() when received
    wall_ns: int  # time.time_ns() when received


class Watcher:
    """A real MQTT client in the test process: subscribes to ``topics`` (again after each reconnect)
    and keeps every message it receives."""

    def __init__(self, port: int, topics: tuple[str, ...] = ("#",), version: int = mqtt.MQTTv311) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=version)
        self.client.username_pw_set(WATCH_USER, WATCH_PASSWORD)
        self.client.reconnect_delay_set(0.1, 1)
        self.topics = topics
        self.messages: list[Msg] = []
        self.subscribed = threading.Event()
        self._cond = threading.Condition()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test's MQTT client did not get its subscription"

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Msg(m.topic, bytes(m.payload), bool(m.retain), m.qos, time.monotonic(),
                                 time.time_ns()))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float = 20.0, count: int = 1,
                 what: str = "a message") -> list[Msg]:
        """Every message so far matching ``pred``, once there are ``count``; fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [m for m in self.messages if pred(m)]
                if len(hits) >= count:
                    return hits
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; topics seen: {seen}")
                self._cond.wait(min(left, 0.2))

    def on(self, topic: str, payload: bytes | None = None, **kw) -> list[Msg]:
        return self.wait_for(lambda m: m.topic == topic and (payload is None or m.payload == payload),
                             what=f"{topic} {payload!r}", **kw)

    def latest(self) -> dict[str, bytes]:
        """Each topic's last payload."""
        with self._cond:
            return {m.topic: m.payload for m in self.messages}

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watcher() -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def make(port: int, *topics: str, version: int = mqtt.MQTTv311) -> Watcher:
        w = Watcher(port, topics or ("#",), version)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


class ResultSource:
    """A ZeroMQ PUB socket in the test process that publishes Result messages (the bridge connects to it)."""

    def __init__(self, ctx: zmq.Context) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.addr = f"tcp://127.0.0.1:{port}"
        self.sent = 0

    def send(self, r: Result) -> None:
        self.sock.send(encode(r))
        self.sent += 1


@pytest.fixture
def results(zctx) -> Iterator[ResultSource]:
    src = ResultSource(zctx)
    yield src
    src.sock.close(0)


def bridge_env() -> dict[str, str]:
    """The credentials as the bridge takes them from the environment (never argv)."""
    return {"SOUNDBUS_MQTT_USERNAME": USER, "SOUNDBUS_MQTT_PASSWORD": PASSWORD}
