"""python -m common.cli ARGS == soundbus ARGS."""

from common.cli.main import main

main()
