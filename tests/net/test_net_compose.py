"""docker-compose.yml validates with Debian's docker-compose (1.29, 3.x schema; no engine needed),
has the services the deployment docs name, builds from targets the Dockerfile defines, and every
service's command parses with the real soundbus CLI (a mistyped flag fails here, not at deploy time).
"""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess

import pytest

from common.cli.main import build_parser
from tests.conftest import ROOT

COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed (Debian: apt-get install docker-compose)")

SERVICES = {"proxy", "capture", "capture-alsa", "convert", "classify-vad", "classify-yamnet", "tail"}
# subcommand -> module whose register() adds it
REGISTERS = {"proxy": "common.cli.net", "capture": "capture.cli", "convert": "convert.cli", "classify": "classify.cli",
             "tail": "classify.cli"}


def _compose(*args: str) -> str:
    r = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/root"},
    )
    assert r.returncode == 0, f"docker-compose {' '.join(args)} failed:\n{r.stderr}"
    return r.stdout


def _services_and_fields(config: str) -> dict[str, dict[str, str]]:
    """{service: {"command": ..., "target": ..., "image": ...}} from `docker-compose config` output."""
    out: dict[str, dict[str, str]] = {}
    section, current, field = None, None, None
    for line in config.splitlines():
        m = re.match(r"^    (\w[\w_]*):", line)
        if m:
            field = m.group(1)
        if re.match(r"^\S", line):
            section = line.rstrip(":")
            continue
        m = re.match(r"^  (\S[^:]*):$", line)
        if section == "services" and m:
            current = m.group(1)
            out[current] = {}
            continue
        m = re.match(r"^    (command|image): (.*)$", line)
        if field == "build":
            m = m or re.match(r"^      (target): (.*)$", line)
        if section == "services" and current and m:
            value = m.group(2)
            if value[:1] in "'\"":
                value = value[1:-1].replace("''", "'")
            out[current][m.group(1)] = value.strip()
    return out


def test_compose_file_validates_and_names_every_service() -> None:
    _compose("config", "-q")
    assert set(_compose("--profile", "alsa", "config", "--services").split()) == SERVICES


def test_compose_services_build_from_dockerfile_targets_and_their_commands_parse() -> None:
    services = _services_and_fields(_compose("--profile", "alsa", "config"))
    assert set(services) == SERVICES
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    for name, fields in services.items():
        assert fields.get("target") in targets, f"{name}: build target {fields.get('target')} not in Dockerfile"
        # Inference needs torch; the rest must stay on the slim image.
        assert fields["target"] == ("torch" if name.startswith("classify") else "slim"), name
        argv = shlex.split(fields["command"])
        register = importlib.import_module(REGISTERS[argv[0]]).register
        args = build_parser([register]).parse_args(argv)
        assert callable(args.func), name
