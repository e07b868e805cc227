"""``python -m web ARGS`` is ``soundbus web ARGS``."""

from common.cli.main import standalone
from web.cli import register

standalone(register, "web")
