"""``soundbus up``: the whole pipeline of one box, one process per stage, from flags or a config file.

    capture --raw:P--> convert (one per model rate) --tensor:P+1..--> classify (one per model)
            --result:..--> tail, record, mqtt, events (--event:..--> mqtt, web), web

Ports on 127.0.0.1 from ``--base-port`` P: raw on P, tensors on P+1 .. P+R (one per sample
rate the models need: vad at 16 kHz, birdnet at 48 kHz), results on the next M ports (one
per model), stored events on the one after. Sinks start first, then the classifiers, the
converters and capture, each only when the stages below it are ready and connected (their
``ready`` and ``input connected`` log lines), and capture waits for every converter, so no
audio is published before someone listens. ``up`` stops them all on Ctrl-C, SIGTERM or
SIGHUP, or when one of them dies; when a file source ends it lets the last results arrive
and exits 0. Its children die with it, however it dies (common/cli/process.py).
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

import common
from box import config as boxconfig
from common.cli.main import float_in, int_in
from common.cli.process import ChildProcess, WaitTimeout
from common.errors import UserError
from common.runtime.stage import StopFlag, setup_logging

log = logging.getLogger("soundbus.up")

DEMO_RECORDING = Path(common.__file__).parent / "data" / "demo.wav"  # bundled with common (capture's demo too)
HOST = "tcp://127.0.0.1"
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@dataclass
class Child:
    """One stage of the pipeline: its command line, what it waits for, and the process once started.

    """

    name: str
    argv: list[str]
    verbose: bool
    stdout: bool = False  # its stdout is the user's (tail)
    proc: ChildProcess | None = None

    def start(self) -> None:
        log.debug("starting %s: %s", self.name, " ".join(self.argv))
        self.proc = ChildProcess(self.argv, capture_stdout=not self.stdout, on_stderr=self._forward)

    def _forward(self, line: str) -> None:
        """Show a stage's warnings and errors (everything with -v), prefixed with its name."""
        m = _LOG_LINE.match(line)
        if self.verbose or not m or m.group(1) not in ("DEBUG", "INFO"):
            print(f"[{self.name}] {line}", file=sys.stderr, flush=True)

    def wait_for(self, pattern: str, count: int, timeout_s: float, stop: StopFlag) -> bool:
        """Wait until ``count`` log lines match ``pattern``; False on timeout, exit or stop."""
        try:
            assert self.proc is not None
            self.proc.wait_for(pattern, timeout_s, count=count, stop=stop)
            return True
        except WaitTimeout:
            return False

    def exited(self) -> bool:
        return self.proc is not None and self.proc.exited()


@dataclass
class Plan:
    """The processes of one box, grouped in start order (downstream first)."""

    sinks: list[Child] = field(default_factory=list)
    classifiers: list[Child] = field(default_factory=list)
    converters: list[Child] = field(default_factory=list)
    capture: Child | None = None
    extra: list[Child] = field(default_factory=list)  # sources beside capture (wyoming)

    @property
    def children(self) -> list[Child]:
        return self.sinks + self.classifiers + self.converters + ([self.capture] if self.capture else []) + self.extra


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def split_models(text: str) -> list[str]:
    """'vad,birdnet:overlap=1,min_conf=0.5' -> ['vad', 'birdnet:overlap=1,min_conf=0.5']: a piece with
    '=' and no ':' continues the options of the model before it."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if out and "=" in piece and ":" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def plan(cfg: boxconfig.BoxConfig, verbose: bool) -> Plan:
    """The pipeline ``cfg`` describes."""
    from classify.models import input_rate  # no torch: the rate table only

    p = cfg.network.base_port
    raw = f"{HOST}:{p}"
    models = cfg.classify.models
    rates = list(dict.fromkeys(input_rate(m) for m in models))
    tensor_at = {rate: f"{HOST}:{p + 1 + i}" for i, rate in enumerate(rates)}
    results = [f"{HOST}:{p + 1 + len(rates) + i}" for i in range(len(models))]
    stored = f"{HOST}:{p + 1 + len(rates) + len(models)}"
    if p + 4 + len(rates) + len(models) > 65535:
        raise UserError(f"--base-port {p} leaves no room for {len(rates) + len(models) + 5} ports; choose a lower one.")
    inputs = [a for r in results for a in ("--input", r)]
    out = Plan()

    if cfg.tail.enabled:
        argv = _module("classify.tail", *inputs)
        if cfg.tail.json:
            argv.append("--json")
        elif cfg.tail.every_window:
            argv.append("--every-window")
        out.sinks.append(Child("tail", argv, verbose, stdout=True))
    if cfg.events is not None:
        e = cfg.events
        argv = _module("events", "run", "--dir", e.dir, "--clip-format", e.clip_format, "--output", stored,
                       *[a for r in tensor_at.values() for a in ("--input", r)], *inputs)
        if e.max_age_days is not None:
            argv += ["--max-age-days", str(e.max_age_days)]
        if e.max_size_mb is not None:
            argv += ["--max-size-mb", str(e.max_size_mb)]
        out.sinks.append(Child("events", argv, verbose))
    if cfg.mqtt is not None:
        m = cfg.mqtt
        argv = _module("mqtt_bridge", "--broker", m.broker, "--topic-prefix", m.topic_prefix, *inputs)
        if cfg.events is not None:
            argv += ["--events", stored]
        if m.password_file:
            argv += ["--password-file", m.password_file]
        if m.tls_ca:
            argv += ["--tls-ca", m.tls_ca]
        if m.labels:
            argv += ["--labels", ",".join(m.labels)]
        out.sinks.append(Child("mqtt", argv, verbose))
    if cfg.web is not None:
        w = cfg.web
        argv = _module("web", "--listen", w.listen, *inputs, *[a for r in tensor_at.values() for a in ("--input", r)])
        if cfg.events is not None:
            argv += ["--input", stored, "--events-dir", cfg.events.dir]
        if w.token_file:
            argv += ["--token-file", w.token_file]
        out.sinks.append(Child("web", argv, verbose))
    if cfg.record is not None:
        kinds = [a for k in cfg.record.kinds for a in ("--kind", k)]
        sources = {"raw": [raw], "tensor": list(tensor_at.values()), "result": results, "hb": [raw], "event": [stored]}
        addrs = list(dict.fromkeys(a for k in cfg.record.kinds for a in sources[k]))
        argv = _module("common.recording.cli", "record", "-o", cfg.record.file, *kinds,
                       *[a for x in addrs for a in ("--input", x)])
        out.sinks.append(Child("record", argv, verbose))

    c = cfg.classify
    for model, result in zip(models, results):
        argv = _module("classify", "--model", model, "--input", tensor_at[input_rate(model)], "--output", result,
                       "--batch-wait-ms", str(c.batch_wait_ms), "--max-lag-ms", str(c.max_lag_ms),
                       *[a for t in c.thresholds for a in ("--threshold", t)])
        if c.thresholds and len(models) > 1:  # one list for every model: each takes the labels it has
            argv.append("--skip-unknown-thresholds")
        out.classifiers.append(Child(f"classify-{model.partition(':')[0]}", argv, verbose))

    cv = cfg.convert
    for rate, tensor in tensor_at.items():
        argv = _module("convert", "--input", raw, "--output", tensor, "--rate", str(rate), "--quality", cv.quality,
                       "--gap-fill-ms", str(cv.gap_fill_ms), "--batch-wait-ms", str(cv.batch_wait_ms))
        name = "convert" if len(tensor_at) == 1 else f"convert-{rate // 1000}k"
        out.converters.append(Child(name, argv, verbose))

    cap = cfg.capture
    sources = cap.sources or [f"file:{DEMO_RECORDING}"]
    # capture waits for every subscription it should have (one per converter, one per kind a recorder
    # takes from it) before it plays a file, so none of them misses the start
    subscriptions = len(tensor_at) + (len({"raw", "hb"} & set(cfg.record.kinds)) if cfg.record else 0)
    argv = _module("capture", *[a for s in sources for a in ("--source", s)], "--output", raw,
                   "--chunk-ms", str(cap.chunk_ms), "--subscribers", str(subscriptions))
    for flag, value in (("--rate", cap.rate), ("--channels", cap.channels), ("--format", cap.format)):
        if value is not None:
            argv += [flag, str(value)]
    if cap.fast:
        argv.append("--fast")
    if cap.loop:
        argv.append("--loop")
    out.capture = Child("capture", argv, verbose)

    if cfg.wyoming is not None:
        # Its own chain, so the other models never see the satellites' streams: wyoming publishes
        # each connection's audio -> a 16 kHz convert cutting 80 ms chunks (one wake-word window
        # each) -> the wakeword worker -> results back to wyoming.
        wy = cfg.wyoming
        w_raw, w_tensor, w_result = (f"{HOST}:{p + 2 + len(rates) + len(models) + i}" for i in range(3))
        out.classifiers.append(Child("classify-wyoming", _module(
            "classify", "--model", "wakeword", "--input", w_tensor, "--output", w_result,
            "--batch-wait-ms", str(c.batch_wait_ms)), verbose))
        out.converters.append(Child("convert-wyoming", _module(
            "convert", "--input", w_raw, "--output", w_tensor, "--rate", "16000", "--chunk-samples", "1280"),
            verbose))
        argv = _module("wyoming_server", "--uri", f"tcp://{wy.host}:{wy.port}", "--output", w_raw, "--input", w_result)
        if wy.zeroconf:
            argv.append("--zeroconf")
        out.extra.append(Child("wyoming", argv, verbose))
    return out


def config_from_args(args: argparse.Namespace) -> boxconfig.BoxConfig:
    """The box: the config file (or the defaults), with every flag given on the command line on top."""
    cfg = boxconfig.load(args.config) if args.config else boxconfig.BoxConfig()
    r = msgspec.structs.replace
    cap, cls, tail = cfg.capture, cfg.classify, cfg.tail
    if args.source:
        cap = r(cap, sources=args.source)
    if args.fast:
        cap = r(cap, fast=True)
    if args.loop:
        cap = r(cap, loop=True)
    if args.model is not None:
        models = split_models(args.model)
        if not models:
            raise UserError("--model needs at least one model name, e.g. --model vad or --model vad,yamnet.")
        cls = r(cls, models=models)
    if args.json:
        tail = r(tail, json=True)
    cfg = r(cfg, capture=cap, classify=cls, tail=tail)
    if args.base_port is not None:
        cfg = r(cfg, network=r(cfg.network, base_port=args.base_port))
    if args.mqtt:
        cfg = r(cfg, mqtt=r(cfg.mqtt, broker=args.mqtt) if cfg.mqtt else boxconfig.Mqtt(broker=args.mqtt))
    if args.events:
        cfg = r(cfg, events=r(cfg.events, dir=args.events) if cfg.events else boxconfig.Events(dir=args.events))
    if args.web is not None:
        web = cfg.web or boxconfig.Web()
        cfg = r(cfg, web=r(web, listen=args.web) if args.web else web)
    if args.wyoming is not None:
        cfg = r(cfg, wyoming=r(cfg.wyoming or boxconfig.Wyoming(), port=args.wyoming))
    if args.record:
        cfg = r(cfg, record=r(cfg.record, file=args.record) if cfg.record else boxconfig.Record(file=args.record))
    return cfg


def run_up(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    cfg = config_from_args(args)
    if args.print_config:
        print(boxconfig.dump(cfg), end="")
        return 0
    pl = plan(cfg, args.verbose > 0)
    if args.print_plan:  # what would run, in start order, as shell commands
        for c in pl.children:
            print(f"{c.name}: {shlex.join(c.argv)}")
        return 0
    stop = StopFlag()
    if not cfg.capture.sources:
        print(
            f"soundbus up: playing the bundled recording {DEMO_RECORDING.name} "
            "(use --source default for the microphone, --source loopback for system audio)",
            file=sys.stderr,
        )
    try:
        return _start(pl, args.start_timeout, stop) or _supervise(pl, stop)
    finally:
        _stop_all(pl.children)


def _start(pl: Plan, timeout: float, stop: StopFlag) -> int:
    """Start every stage, downstream first; each waits for what it reads from. 0 when all run."""
    started: list[Child] = []
    for group in (pl.sinks, pl.classifiers, pl.converters):
        for c in group:
            c.start()
        for c in group:
            if not c.wait_for(r"\bready\b", 1, timeout, stop):
                return _fail(pl.children, c, "did not become ready", stop)
        started += group
        for c in started:  # every reader connected to every writer started so far
            wanted = sum(1 for w in started if _reads_from(c, w))
            if wanted:
                c.wait_for(r"input connected", wanted, 10.0, stop)
    assert pl.capture is not None
    for c in [pl.capture, *pl.extra]:
        c.start()
        if not c.wait_for(r"\bready\b", 1, timeout, stop):
            return _fail(pl.children, c, "did not become ready", stop)
    log.info("pipeline running: %s", ", ".join(c.name for c in pl.children))
    if any(c.name == "web" for c in pl.children):
        web = next(c for c in pl.children if c.name == "web")
        line = next((ln for ln in web.proc.lines if "serving" in ln), "")
        if line:
            print(f"soundbus up: {line.split('INFO ', 1)[-1]}", file=sys.stderr)
    return 0


def _reads_from(reader: Child, writer: Child) -> bool:
    """Whether ``reader`` subscribes to an address ``writer`` publishes on (from their command lines)."""
    outs = {writer.argv[i + 1] for i, a in enumerate(writer.argv[:-1]) if a == "--output"}
    ins = {reader.argv[i + 1] for i, a in enumerate(reader.argv[:-1]) if a == "--input"}
    return bool(outs & ins)


def _supervise(pl: Plan, stop: StopFlag) -> int:
    """Until Ctrl-C or a stage ends: a stage failing stops all (exit 1); the source ending exits 0."""
    while not stop:
        for c in pl.children:
            if c.proc is not None and c.exited():
                code = c.proc.proc.returncode
                if c is pl.capture and code == 0:
                    # The recording has been published: give the last windows time to be classified.
                    stop.wait(3.0)
                    return 0
                print(f"soundbus up: {c.name} exited with code {code}; stopping the pipeline.", file=sys.stderr)
                return 1
        stop.wait(0.2)
    return 0


def _fail(children: list[Child], c: Child, what: str, stop: StopFlag) -> int:
    if stop:
        return 130
    if c.proc is not None and c.exited():
        what = f"exited with code {c.proc.proc.returncode} before it was ready"
    tail = c.proc.log(15) if c.proc else ""
    print(f"soundbus up: {c.name} {what}; stopping the pipeline. Its last log lines:\n{tail}", file=sys.stderr)
    return 1


def _stop_all(children: list[Child]) -> None:
    # Upstream first, so the stages below see the end of their input before they stop.
    running = [c for c in reversed(children) if c.proc is not None and not c.exited()]
    for c in running:
        c.proc.send_signal(signal.SIGTERM)
    for c in running:
        if c.proc.stop_report(signal.SIGTERM, timeout=10.0) == "killed":
            print(f"soundbus up: {c.name} did not stop in 10 s after SIGTERM; killed it.", file=sys.stderr)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "up",
        help="run a box's pipeline (capture, convert, classify, outputs) on this machine",
        description="Run the whole pipeline of this box as separate processes, from flags or a config file "
        "(--config box.yaml; flags override it); Ctrl-C stops it. Without a source it plays a short bundled "
        "recording, so it works with no sound card.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML or TOML file describing the box (docs/config.md)")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration (YAML) and exit")
    p.add_argument("--print-plan", action="store_true",
                   help="print each stage's command line, in start order, and exit (nothing is started)")
    p.add_argument(
        "--source",
        action="append",
        metavar="SPEC",
        help="capture source (repeatable): default (microphone), loopback (system audio), file:PATH, "
        "synth:tone:440 ... (see `soundbus capture --help`; default: the bundled demo recording)",
    )
    p.add_argument("--model", help="comma-separated models, e.g. vad,yamnet or vad,birdnet (default vad); "
                                   "one converter runs per sample rate they need")
    p.add_argument("--json", action="store_true", help="print results as JSON lines")
    p.add_argument("--fast", action="store_true", help="play a file source as fast as possible, not in real time")
    p.add_argument("--loop", action="store_true", help="loop a file source")
    p.add_argument("--mqtt", metavar="BROKER", help="also publish to this MQTT broker with Home Assistant discovery "
                   "(credentials from $SOUNDBUS_MQTT_USERNAME / $SOUNDBUS_MQTT_PASSWORD; docs/home-assistant.md)")
    p.add_argument("--events", metavar="DIR", help="also keep every event with an audio clip in DIR (docs/events.md)")
    p.add_argument("--web", nargs="?", const="", metavar="HOST:PORT",
                   help="also serve the web view (default 127.0.0.1:8550; docs/web.md)")
    p.add_argument("--wyoming", type=int_in(1024, 65535), metavar="PORT",
                   help="also serve wake words to Home Assistant over Wyoming on PORT (needs the wakeword extra; "
                   "docs/wyoming.md)")
    p.add_argument("--record", metavar="FILE", help="also record raw audio and results to FILE (strftime codes ok)")
    p.add_argument("--base-port", type=int_in(1024, 65000),
                   help="raw on PORT, tensors and results on the ports after it (default 5550)")
    p.add_argument("--start-timeout", type=float_in(1, 3600, "s"), default=60.0,
                   help="seconds a stage may take to start (default 60)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="show every stage's log")
    p.set_defaults(func=run_up)

