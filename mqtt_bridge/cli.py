"""``soundbus mqtt``: flags, secrets, TLS, and the stage's ``run``.

Secrets never come from argv (``ps`` shows every argument to every user): the password
is read from ``--password-file`` or ``SOUNDBUS_MQTT_PASSWORD``. A bad flag (a missing
file, a port out of range) is a UserError (one sentence, exit 2); a broker that is away,
refuses the login or fails TLS is logged in one sentence and retried with backoff, while
the bridge keeps up with the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from common.cli.main import add_stage_options, float_in, inputs_of, int_in, socket_options, stage_metrics, verbosity
from common.errors import UserError
from common.runtime.stage import Runtime, StopFlag, setup_logging
from common.transport.sockets import DEFAULT_RESULT, check_endpoint, split_endpoint
from common.wire.topics import Kind, topic_for
from mqtt_bridge.broker import MQTT_V5, MQTT_V311, BrokerLink, BrokerSettings, TlsSettings
from mqtt_bridge.core import BridgeConfig, BridgeCore
from mqtt_bridge.names import NODE_ID, Topics, label_key
from mqtt_bridge.outgoing import Outgoing
from mqtt_bridge.stage import MqttLogic

log = logging.getLogger("soundbus.mqtt")

ENV_USERNAME = "SOUNDBUS_MQTT_USERNAME"
ENV_PASSWORD = "SOUNDBUS_MQTT_PASSWORD"
MAX_SECRET_BYTES = 4096


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mqtt",
        allow_abbrev=False,  # --password must not pass for --password-file
        help="publish results to an MQTT broker, with Home Assistant discovery",
        description="Subscribe to results (and optionally stored events) and publish label states, events, "
        "levels and availability to an MQTT broker, with Home Assistant MQTT discovery. The password comes "
        f"from --password-file or ${ENV_PASSWORD}, never from the command line. See docs/home-assistant.md.",
    )
    add_stage_options(p, inputs=DEFAULT_RESULT, outputs=None)
    b = p.add_argument_group("broker")
    b.add_argument("--broker", default="localhost", metavar="HOST[:PORT]",
                   help="the MQTT broker: HOST, HOST:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); "
                        "default localhost, port 1883 (8883 with TLS)")
    b.add_argument("--mqtt-version", choices=(MQTT_V311, MQTT_V5), default=MQTT_V311,
                   help="MQTT protocol version (default 3.1.1)")
    b.add_argument("--client-id", metavar="ID", help="MQTT client id (default soundbus-NODE)")
    b.add_argument("--username", metavar="USER", help=f"user name (default ${ENV_USERNAME}, if set)")
    b.add_argument("--password-file", type=Path, metavar="PATH",
                   help=f"file holding the password (default ${ENV_PASSWORD}, if set)")
    b.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of every publication (default 1)")
    b.add_argument("--keepalive", type=int_in(5, 3600), default=60, metavar="S",
                   help="seconds between keepalive pings (default 60)")
    b.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates (same as mqtts://)")
    b.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA certificate(s) that signed the broker's (PEM)")
    b.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM)")
    b.add_argument("--tls-key", type=Path, metavar="FILE", help="client certificate's private key (PEM, no passphrase)")
    b.add_argument("--tls-insecure", action="store_true",
                   help="do not check that the broker's certificate names the host it is reached by (the "
                        "certificate is still verified against the CA): anyone holding a certificate from "
                        "that CA can pose as the broker")
    t = p.add_argument_group("what to publish")
    t.add_argument("--topic-prefix", default="soundbus/", metavar="PREFIX",
                   help="prefix of every topic the bridge publishes (default soundbus/)")
    t.add_argument("--node-id", default="soundbus", metavar="ID",
                   help="this bridge's id in topics and Home Assistant ids: letters, digits, _ and - (default "
                        "soundbus; give each bridge on one broker its own)")
    t.add_argument("--labels", action="append", metavar="L1,L2",
                   help="labels that get a Home Assistant binary_sensor, by name or topic key (e.g. speech,dog,"
                        "vehicle_horn_car_horn_honking); repeatable; default: every label that produced an event")
    t.add_argument("--discovery-prefix", default="homeassistant", metavar="PREFIX",
                   help="Home Assistant's discovery prefix (default homeassistant)")
    t.add_argument("--no-discovery", action="store_true", help="publish no Home Assistant discovery configs")
    t.add_argument("--rate", type=float_in(0.01, 100, "per second"), default=1.0, metavar="HZ",
                   help="level and top-labels messages per stream (and model) per second, at most (default 1)")
    t.add_argument("--top-labels", type=int_in(1, 64), default=5, metavar="N",
                   help="labels in each top-labels message (default 5)")
    t.add_argument("--stream-timeout-s", type=float_in(1, 86400, "s"), default=30.0, metavar="S",
                   help="a stream with no result for S seconds is shown offline (default 30)")
    t.add_argument("--max-queued-events", type=int_in(1, 1_000_000), default=1000, metavar="N",
                   help="event messages kept while the broker is away; past it the oldest are dropped and "
                        "counted (default 1000)")
    t.add_argument("--stream", action="append", metavar="S", help="only this stream (repeatable)")
    t.add_argument("--model", action="append", metavar="M", help="only this model (repeatable)")
    t.add_argument("--events", nargs="?", const="", metavar="ADDR",
                   help="also take the event store's stored events (event id and clip in each event message), "
                        "from ADDR, or from the --input addresses when ADDR is left out (a proxy)")
    t.add_argument("--events-wait-ms", type=float_in(0, 60000, "ms"), default=2000.0, metavar="MS",
                   help="with --events: an event message waits up to MS for its stored event (default 2000)")
    p.set_defaults(func=run)


# -- flags to settings -------------------------------------------------------------------


def broker_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> BrokerSettings:
    """BrokerSettings from the flags and the environment (raises UserError for a bad value)."""
    env = os.environ if env is None else env
    text = args.broker.strip()
    if not text:
        raise UserError("--broker is empty; give HOST, HOST:PORT or mqtts://HOST:PORT.")
    url = urlsplit(text if "://" in text else f"mqtt://{text}")
    if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not url.hostname or url.path not in ("", "/") \
            or url.username or url.password:
        raise UserError(f"--broker {text!r} is not HOST, HOST:PORT, mqtt://HOST:PORT or mqtts://HOST:PORT "
                        "(credentials go in --username and --password-file, not in the address).")
    try:
        port = url.port
    except ValueError:
        raise UserError(f"--broker {text!r}: the port must be a number from 1 to 65535.") from None
    if port == 0:
        raise UserError(f"--broker {text!r}: the port must be a number from 1 to 65535.")
    tls_wanted = url.scheme in ("mqtts", "ssl") or args.tls or args.tls_ca or args.tls_cert or args.tls_key
    tls = None
    if tls_wanted:
        for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
            if path is not None and not path.is_file():
                raise UserError(f"{flag} {path}: no such file; give the PEM file's path.")
        if args.tls_key and not args.tls_cert:
            raise UserError("--tls-key needs --tls-cert (the client certificate it belongs to).")
        tls = TlsSettings(str(args.tls_ca) if args.tls_ca else None, str(args.tls_cert) if args.tls_cert else None,
                          str(args.tls_key) if args.tls_key else None, args.tls_insecure)
    elif args.tls_insecure:
        raise UserError("--tls-insecure only applies with TLS (mqtts://, --tls or --tls-ca).")
    username = args.username if args.username is not None else env.get(ENV_USERNAME) or None
    password = _password(args.password_file, env)
    if password is not None and username is None:
        raise UserError(f"a password was given but no user name: add --username or set ${ENV_USERNAME}.")
    node = args.node_id
    client_id = args.client_id or f"soundbus-{node}"
    if not client_id.isprintable() or not 1 <= len(client_id.encode()) <= 128:
        raise UserError("--client-id must be 1-128 printable characters.")
    return BrokerSettings(host=url.hostname, port=port or (8883 if tls else 1883), client_id=client_id,
                          version=args.mqtt_version, keepalive_s=args.keepalive, qos=args.qos, username=username,
                          password=password, tls=tls)


def _password(path: Path | None, env: dict[str, str]) -> str | None:
    if path is None:
        return env.get(ENV_PASSWORD) or None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read --password-file {path} ({e.strerror}); give a readable file holding "
                        "the password.") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise UserError(f"--password-file {path} is larger than {MAX_SECRET_BYTES} bytes; it should hold only "
                        "the password.")
    try:
        return raw.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise UserError(f"--password-file {path} is not UTF-8 text.") from None


def _topic_prefix(text: str, flag: str, trailing_slash: bool) -> str:
    if any(c in text for c in "+#\0") or text.startswith("$") or len(text) > 128 or not text.isprintable():
        raise UserError(f"{flag} {text!r}: at most 128 printable characters, no '+', '#' or leading '$'.")
    if trailing_slash:
        return text if not text or text.endswith("/") else text + "/"
    text = text.rstrip("/")
    if not text:
        raise UserError(f"{flag} must not be empty.")
    return text


def bridge_config(args: argparse.Namespace) -> BridgeConfig:
    """BridgeConfig from the flags (raises UserError for a bad value)."""
    if not NODE_ID.fullmatch(args.node_id):
        raise UserError(f"--node-id {args.node_id!r}: use 1-64 letters, digits, '_' or '-'.")
    topics = Topics(prefix=_topic_prefix(args.topic_prefix, "--topic-prefix", True), node=args.node_id,
                    discovery=_topic_prefix(args.discovery_prefix, "--discovery-prefix", False))
    labels = None
    if args.labels:
        labels = frozenset(label_key(x) for arg in args.labels for x in arg.split(",") if x.strip())
        if not labels:
            raise UserError("--labels is empty; name labels, e.g. --labels speech,dog.")
    return BridgeConfig(
        topics=topics, labels=labels, discovery=not args.no_discovery, qos=args.qos, rate_hz=args.rate,
        top_labels=args.top_labels, stream_timeout_s=args.stream_timeout_s,
        events_wait_s=args.events_wait_ms / 1000 if args.events is not None else 0.0,
        max_streams=args.max_streams,
    )


def subscriptions(args: argparse.Namespace) -> tuple[list[str], list[bytes]]:
    """(endpoints, topic prefixes) of the bridge's one SUB socket: results, and stored events with --events."""
    endpoints = list(inputs_of(args))
    kinds = [Kind.RESULT]
    if args.events is not None:
        kinds.append(Kind.EVENT)
        if args.events:
            bind, addr = split_endpoint(args.events, False)
            check_endpoint(addr, bind)
            endpoints.append(args.events)
    prefixes = []
    for kind in kinds:
        if not args.stream:
            prefixes.append(topic_for(kind))
        elif args.model:
            prefixes += [topic_for(kind, s, m) for s in args.stream for m in args.model]
        else:
            prefixes += [topic_for(kind, s) for s in args.stream]
    return endpoints, prefixes


def make_link(settings: BrokerSettings, cfg: BridgeConfig) -> BrokerLink:
    t = cfg.topics
    subs = [t.ha_status, *t.config_filters()] if cfg.discovery else []
    try:
        return BrokerLink(settings, t.bridge_status, subs)
    except (ssl.SSLError, OSError, ValueError) as e:  # paho's tls_set loads the files now
        tls = settings.tls
        raise UserError(f"cannot load the TLS files (--tls-ca {tls.ca}, --tls-cert {tls.cert}, --tls-key "
                        f"{tls.key}): {getattr(e, 'reason', None) or e}; give PEM files (the key without a "
                        "passphrase).") from None


# -- run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Bridge results to MQTT until stopped (Ctrl-C, SIGTERM)."""
    setup_logging(verbosity(args))
    settings = broker_settings(args)
    cfg = bridge_config(args)
    endpoints, prefixes = subscriptions(args)
    sockopts = socket_options(args)
    models = set(args.model or [])
    link = make_link(settings, cfg)
    metrics = stage_metrics(args, "mqtt")
    stop = StopFlag()
    core = BridgeCore(cfg, metrics)
    logic = MqttLogic(core, Outgoing(args.max_queued_events), link, metrics, models)
    with Runtime("mqtt", metrics, stop, args.health_file) as rt:
        inbox = rt.inbox(endpoints, prefixes, sockopts)
        link.start()
        log.info("ready inputs=%s broker=%s prefix=%s node=%s discovery=%s", ",".join(endpoints), settings.where,
                 cfg.topics.prefix, cfg.topics.node, cfg.topics.discovery if cfg.discovery else "off")
        try:
            rt.run(logic, inbox, None)
        except BaseException:
            link.stop([], timeout_s=0.0)
            raise
    return 0


if __name__ == "__main__":  # python -m mqtt_bridge.cli ARGS == soundbus mqtt ARGS
    from common.cli.main import standalone

    standalone(register, "mqtt")
