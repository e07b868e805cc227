"""The ``soundbus`` command line: the parser and shared flags (``main``), ``up`` (the whole
pipeline on one machine), child processes (``process``), ``proxy``/``keys``/``health`` (``net``,
``health``)."""

import sys


def main() -> None:
    """The ``soundbus`` console script. ``soundbus health`` (run every few seconds by container
    health checks) takes a path that imports only the standard library."""
    if sys.argv[1:2] == ["health"]:
        from common.cli.health import main as health

        sys.exit(health(sys.argv[2:]))
    from common.cli.main import main as full

    full()
