"""``python -m mqtt_bridge ARGS`` == ``soundbus mqtt ARGS``."""

from common.cli.main import standalone
from mqtt_bridge.cli import register

standalone(register, "mqtt")
