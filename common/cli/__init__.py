"""The ``soundbus`` command line: the parser and shared flags (``main``), ``up`` (the whole
pipeline on one machine), child processes (``process``), ``proxy``/``keys``/``health`` (``net``)."""

from common.cli.main import main, run

__all__ = ["main", "run"]
