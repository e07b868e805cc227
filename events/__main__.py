"""``python -m events ARGS`` is ``soundbus events ARGS``."""

from common.cli.main import standalone
from events.cli import register

standalone(register, "events")
