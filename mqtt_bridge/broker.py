"""BrokerLink: the paho-mqtt client, its network thread, and what crosses between threads.

paho runs the connection in its own thread (``loop_start``): connect, reconnect with
backoff (1 s doubling to 60 s), keepalive, resending QoS 1 messages after a reconnect.
Its callbacks only append notes to a bounded deque; the stage's thread reads them
(:meth:`BrokerLink.notes`) and is the only one that touches the bridge's state.

Publishing never blocks the stage: ``client.publish`` queues the packet and wakes paho's
thread. The stage hands over a batch only while paho has nothing left to write
(``want_write()`` false) and paho refuses QoS 1 messages past ``MAX_QUEUED`` (they go back
to :class:`mqtt_bridge.outgoing.Outgoing`), so what waits inside paho stays bounded.

Why a connection failed is turned into one sentence (:func:`describe`): the socket or TLS
error of a failed attempt (on_connect_fail runs inside paho's ``except OSError``), or
the broker's CONNACK reason.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_bridge.outgoing import Kind, Publication

log = logging.getLogger("soundbus.mqtt")

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 60
MAX_QUEUED = 1000  # QoS 1 messages paho holds (in flight or waiting)
MAX_INFLIGHT = 100  # QoS 1 messages sent and not yet acknowledged
MAX_NOTES = 4096  # notes waiting for the stage (messages from the broker, connection changes)
MAX_INBOUND_BYTES = 65536  # a message from the broker larger than this is dropped (configs are ~1 kB)
REPEAT_S = 60.0  # the same connection problem is logged again at most this often

MQTT_V311, MQTT_V5 = "3.1.1", "5"


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the broker: ``ca`` verifies its certificate (None: the system's CAs); ``cert``/``key``:
    a client certificate; ``insecure``: do not check that the certificate names the host."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect. ``password`` never appears in a repr or a log line."""

    host: str = "localhost"
    port: int = 1883
    client_id: str = "soundbus"
    version: str = MQTT_V311
    keepalive_s: int = 60
    qos: int = 1
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None

    @property
    def where(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


CLOSED_EARLY = "closed before CONNACK"  # a note: the connection closed before the broker answered


def describe(failure: BaseException | mqtt.ReasonCode | str, s: BrokerSettings) -> str:
    """One sentence: what went wrong connecting to the broker, and what to check."""
    where = s.where
    if isinstance(failure, mqtt.ReasonCode):
        if failure.value in (134, 135):  # bad user name or password / not authorized (v3.1.1 rc 4, 5 map here)
            return (f"the MQTT broker at {where} refused the login ({failure.getName()}): check the user name "
                    "(--username or $SOUNDBUS_MQTT_USERNAME) and the password (--password-file or "
                    "$SOUNDBUS_MQTT_PASSWORD)")
        if failure.value == 133:
            return f"the MQTT broker at {where} refused client id {s.client_id!r}: choose another --client-id"
        return f"the MQTT broker at {where} refused the connection ({failure.getName()})"
    if failure == CLOSED_EARLY:
        hint = ("if that is a TLS port, pass --tls-ca" if s.tls is None else
                "check whether it requires a client certificate (--tls-cert/--tls-key)" if s.tls.cert is None else
                "check that it accepts this client certificate")
        return f"the MQTT broker at {where} closed the connection before answering: {hint}"
    if isinstance(failure, ssl.SSLCertVerificationError):
        what = failure.verify_message or str(failure)
        hint = ("connect by the name in its certificate, or pass --tls-insecure (see its risk in --help)"
                if "mismatch" in what.lower() else "pass the CA that signed it with --tls-ca")
        return f"the TLS certificate of the MQTT broker at {where} was not accepted ({what}): {hint}"
    if isinstance(failure, ssl.SSLError):
        return (f"TLS with the MQTT broker at {where} failed ({failure.reason or failure}): check that it is a "
                "TLS port and that it accepts the client certificate (--tls-cert/--tls-key)")
    if isinstance(failure, ConnectionRefusedError):
        return f"nothing accepts connections at {where}: check that the MQTT broker runs and listens on that port"
    if isinstance(failure, socket.gaierror):
        return f"cannot resolve the MQTT broker's host name {s.host!r} ({failure.strerror})"
    if isinstance(failure, (TimeoutError, socket.timeout)):
        return f"no answer from the MQTT broker at {where} within 5 s: check the address and any firewall"
    if isinstance(failure, OSError):
        return f"cannot connect to the MQTT broker at {where} ({failure.strerror or failure})"
    return f"cannot connect to the MQTT broker at {where} ({failure})"


class BrokerLink:
    """One paho client; the stage thread calls every method, paho's thread only the callbacks.

    ``subscriptions``: topic filters subscribed after every connect (Home Assistant's status,
    the node's discovery configs). ``will``: the bridge's availability topic, ``offline``
    retained when the connection dies without a goodbye.
    """

    def __init__(self, s: BrokerSettings, will: str, subscriptions: list[str]) -> None:
        self.settings = s
        self.subscriptions = subscriptions
        v5 = s.version == MQTT_V5
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  clean_session=None if v5 else True)
        c = self.client
        c.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(MAX_QUEUED)
        if s.username is not None:
            c.username_pw_set(s.username, s.password)
        if s.tls is not None:  # raises (ssl.SSLError, OSError, ValueError) for unreadable files: the CLI reports
            c.tls_set(ca_certs=s.tls.ca, certfile=s.tls.cert, keyfile=s.tls.key)
            if s.tls.insecure:
                c.tls_insecure_set(True)
        c.will_set(will, b"offline", qos=1, retain=True)
        c.on_connect, c.on_connect_fail, c.on_disconnect = self._on_connect, self._on_connect_fail, self._on_disconnect
        c.on_message = self._on_message
        self._notes: deque[tuple] = deque()
        self._answered = False  # paho thread: the broker answered the current attempt (CONNACK)
        self._up = False  # paho thread: a connection is established
        # The stage thread's view:
        self.connected = False
        self.connects = 0
        self.notes_dropped = 0
        self.inbound_dropped = 0
        self.sent = 0
        self._last_problem = ("", 0.0)

    # -- paho's thread -----------------------------------------------------------------------

    def _note(self, note: tuple) -> None:
        if len(self._notes) >= MAX_NOTES:  # the stage thread is far behind: drop the newest, count it
            self.notes_dropped += 1
            return
        self._notes.append(note)

    def _on_connect(self, client: mqtt.Client, _ud: object, _flags: object, rc: mqtt.ReasonCode,
                    _props: object) -> None:
        self._answered = True
        if rc.is_failure:
            self._note(("refused", rc))
            return
        self._up = True
        if self.subscriptions:
            if self.settings.version == MQTT_V5:  # no echo of our own configs
                opts = SubscribeOptions(qos=1, noLocal=True)
                client.subscribe([(t, opts) for t in self.subscriptions])
            else:
                client.subscribe([(t, 1) for t in self.subscriptions])
        self._note(("connected",))

    def _on_connect_fail(self, _client: mqtt.Client, _ud: object) -> None:
        # paho calls this inside its ``except OSError`` around the connect: the exception is current.
        self._note(("failed", sys.exc_info()[1] or OSError("paho gave no reason")))

    def _on_disconnect(self, _client: mqtt.Client, _ud: object, _flags: object, rc: mqtt.ReasonCode,
                       _props: object) -> None:
        if self._up:
            self._note(("lost", rc))
        elif not self._answered:
            self._note(("failed", CLOSED_EARLY))
        self._up = self._answered = False

    def _on_message(self, _client: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        if len(msg.payload) > MAX_INBOUND_BYTES:
            self.inbound_dropped += 1
            return
        try:
            topic = msg.topic  # bytes -> str; a topic that is not UTF-8 is not one we subscribed to
        except UnicodeDecodeError:
            self.inbound_dropped += 1
            return
        self._note(("message", topic, bytes(msg.payload)))

    # -- the stage's thread -----------------------------------------------------------------

    def start(self) -> None:
        """Connect in paho's thread (this returns at once; failures arrive as notes and are retried)."""
        s = self.settings
        self.client.connect_async(s.host, s.port, s.keepalive_s)
        self.client.loop_start()

    def notes(self) -> list[tuple]:
        """What happened since the last call; ``connected`` notes and losses update ``self.connected``."""
        out = []
        while self._notes:
            note = self._notes.popleft()
            kind = note[0]
            if kind == "message":
                out.append(note)
            elif kind == "connected":
                self.connected = True
                self.connects += 1
                self._last_problem = ("", 0.0)
                log.info("connected to the MQTT broker at %s (MQTT %s, client id %s)", self.settings.where,
                         self.settings.version, self.settings.client_id)
                out.append(note)
            elif kind == "lost":
                self.connected = False
                self._problem(f"lost the connection to the MQTT broker at {self.settings.where} "
                              f"({note[1].getName()})")
                out.append(note)
            else:  # refused, failed
                self._problem(describe(note[1], self.settings))
        return out

    def _problem(self, sentence: str) -> None:
        """Log a connection problem: once per change, then at most every REPEAT_S while it lasts."""
        last, when = self._last_problem
        now = time.monotonic()
        if sentence != last or now - when >= REPEAT_S:
            self._last_problem = (sentence, now)
            log.warning("%s; retrying with backoff (%d-%d s)", sentence, RECONNECT_MIN_S, RECONNECT_MAX_S)

    def busy(self) -> bool:
        """paho still has packets to write from the last handover."""
        return self.client.want_write()

    def publish(self, p: Publication) -> bool:
        """Hand one publication to paho; False if it did not take it (not connected, its queue full)."""
        qos = 0 if p.kind is Kind.TELEMETRY else self.settings.qos
        info = self.client.publish(p.topic, p.payload, qos=qos, retain=p.retain)
        rc = info.rc
        if rc == mqtt.MQTT_ERR_SUCCESS or (rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
            self.sent += 1  # QoS 1 without a connection: paho keeps it and sends it after the reconnect
            return True
        return False

    def stop(self, final: list[Publication], timeout_s: float = 2.0) -> None:
        """Send ``final`` (the bridge going offline) if connected, then disconnect and end paho's thread."""
        deadline = time.monotonic() + timeout_s
        if self.connected:
            infos = [self.client.publish(p.topic, p.payload, qos=1, retain=p.retain) for p in final]
            for info in infos:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    info.wait_for_publish(left)
                except (RuntimeError, ValueError):  # not queued (connection gone meanwhile)
                    break
        self.client.disconnect()
        if self.connected:
            self.client.loop_stop()
        # else paho's thread may sit in a connect attempt (up to its 5 s timeout): it is a daemon thread,
        # so the process need not wait for it.
