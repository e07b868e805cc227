"""Errors a user can cause and fix; the CLI prints them as one sentence and exits 2."""


class CaptureError(Exception):
    """Something the user asked for cannot be done (missing file, device, ffmpeg, bad rate); says what to do."""
