"""The one error type a user sees: what went wrong and what to do, in one sentence.

Library code raises :class:`UserError` (never ``SystemExit``, never a bare print); the
command line (common.cli.main) prints its message and exits with code 2, with no
traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (a flag, a file, a device, a key): ``str(e)`` says how."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        if not message.startswith("soundbus"):
            message = f"soundbus: {message}"
        super().__init__(message)
