"""Recordings: the file format (format), info and WAV export (export), record/replay/info/export commands (cli)."""
