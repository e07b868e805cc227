"""``python -m wyoming_server`` == ``soundbus wyoming``."""

from common.cli.main import standalone
from wyoming_server.cli import register

if __name__ == "__main__":
    standalone(register, "wyoming")
