"""``--source`` specs: what to capture from, and the stream id it is published under.

Grammar (``KIND[:ARG]`` with an optional ``#STREAM`` suffix naming the stream)::

    file:PATH                  a sound file (WAV s16/s24/s32/f32, any channels; anything libsndfile reads)
    device[:NAME_OR_INDEX]     an input device through PortAudio (no argument: the default input)
    default                    the default input device (same as ``device``)
    loopback[:SINK]            what a PulseAudio/PipeWire sink plays (its ``.monitor``; default sink if omitted)
    pipe:FORMAT:RATE:CHANNELS  raw interleaved PCM on stdin, e.g. ``pipe:s16:16000:1``
    url:URL                    anything ffmpeg opens (rtsp://, http://, file://, a path), decoded by ffmpeg
    synth:tone[:FREQ_HZ]       a sine at -6 dBFS (default 440 Hz)
    synth:noise                white noise at -20 dBFS (seeded, reproducible)
    synth:silence              digital zero

The stream id is, in order of precedence: ``SPEC#ID``, the n-th ``--stream`` flag for the
n-th source, or one derived from the source (file stem, ``mic``, ``loopback``, ``pipe``,
the URL's last path part, ``tone440``/``noise``/``silence``); duplicates get ``-2``, ``-3``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from common.errors import UserError
from common.wire.messages import MAX_CHANNELS, MAX_RATE_HZ, MAX_STREAM_ID_LEN, is_name


KINDS = ("file", "device", "loopback", "pipe", "url", "synth")
SYNTH_WAVES = ("tone", "noise", "silence")
PIPE_FORMATS = ("u8", "s8", "s16", "s24", "s32", "f32", "f64")


@dataclass
class SourceSpec:
    """One parsed ``--source``. ``arg`` is the part after ``KIND:`` (may be empty)."""

    kind: str
    arg: str
    stream: str
    text: str  # the spec as given, for messages


def check_stream_id(stream: str) -> str:
    """Validate a stream id (1-64 letters, digits, '.', '_', '-', not starting with '.' or '-'); returns it."""
    if not stream or len(stream) > MAX_STREAM_ID_LEN or not is_name(stream):
        raise UserError(
            f"stream id {stream!r} must be 1-{MAX_STREAM_ID_LEN} letters, digits, '.', '_' or '-' (not starting "
            "with '.' or '-')."
        )
    return stream


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:MAX_STREAM_ID_LEN]
    return s if s and is_name(s) else "src"


def _split_stream(text: str) -> tuple[str, str | None]:
    """'SPEC#ID' -> (SPEC, ID) when ID looks like a stream id; else (text, None)."""
    if "#" in text:
        head, _, tail = text.rpartition("#")
        if head and tail and is_name(tail) and len(tail) <= MAX_STREAM_ID_LEN:
            return head, tail
    return text, None


def default_stream_id(kind: str, arg: str) -> str:
    """The stream id a source gets when none is given."""
    if kind == "file":
        return _slug(Path(arg).stem)
    if kind == "device":
        return "mic" if arg in ("", "default") else _slug(arg if not arg.isdigit() else f"dev{arg}")
    if kind == "loopback":
        return "loopback" if not arg else _slug(f"loopback-{arg}")
    if kind == "pipe":
        return "pipe"
    if kind == "url":
        u = urlparse(arg)
        last = Path(u.path).stem if u.path else ""
        return _slug(last or u.hostname or "url")
    if kind == "synth":
        wave, _, freq = arg.partition(":")
        return _slug(f"tone{freq or 440}") if wave == "tone" else _slug(wave)
    return _slug(kind)


def parse_spec(text: str) -> tuple[str, str, str | None]:
    """'KIND[:ARG][#ID]' -> (kind, arg, explicit stream id or None), validated."""
    body, stream = _split_stream(text.strip())
    kind, _, arg = body.partition(":")
    if kind == "default":
        kind, arg = "device", arg
    if kind not in KINDS:
        raise UserError(
            f"unknown source {text!r}: use file:PATH, device[:NAME], loopback[:SINK], pipe:FORMAT:RATE:CHANNELS, "
            f"url:URL or synth:tone[:HZ]|noise|silence (see docs/capture.md)."
        )
    if kind in ("file", "url") and not arg:
        raise UserError(f"source {text!r} needs a {'path' if kind == 'file' else 'URL'}: {kind}:...")
    if kind == "pipe":
        parse_pipe_arg(arg)
    if kind == "synth":
        parse_synth_arg(arg)
    return kind, arg, stream


def parse_pipe_arg(arg: str) -> tuple[str, int, int]:
    """'FORMAT:RATE:CHANNELS' -> (format, rate Hz, channels)."""
    parts = arg.split(":")
    if len(parts) != 3:
        raise UserError(f"pipe source needs pipe:FORMAT:RATE:CHANNELS, e.g. pipe:s16:16000:1; got pipe:{arg}.")
    fmt, rate, ch = parts
    if fmt not in PIPE_FORMATS:
        raise UserError(f"pipe format {fmt!r} unknown; use one of {', '.join(PIPE_FORMATS)} (little-endian).")
    try:
        r, c = int(rate), int(ch)
    except ValueError:
        raise UserError(f"pipe rate and channels must be integers, e.g. pipe:s16:16000:1; got pipe:{arg}.") from None
    check_rate_channels(r, c, f"pipe:{arg}")
    return fmt, r, c


def parse_synth_arg(arg: str) -> tuple[str, float]:
    """'tone[:HZ]' | 'noise' | 'silence' -> (wave, frequency Hz)."""
    wave, _, freq = arg.partition(":")
    if wave not in SYNTH_WAVES:
        raise UserError(f"synth source must be synth:tone[:HZ], synth:noise or synth:silence; got synth:{arg}.")
    if freq and wave != "tone":
        raise UserError(f"synth:{wave} takes no argument; got synth:{arg}.")
    try:
        hz = float(freq) if freq else 440.0
    except ValueError:
        raise UserError(f"tone frequency must be a number in Hz, e.g. synth:tone:440; got {freq!r}.") from None
    if not 0 < hz < 384_000:
        raise UserError(f"tone frequency {hz} Hz must be above 0 and below half the sample rate.")
    return wave, hz


def check_rate_channels(rate: int, channels: int, what: str) -> None:
    if not 1 <= rate <= MAX_RATE_HZ:
        raise UserError(f"{what}: rate {rate} Hz must be within 1..{MAX_RATE_HZ}.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise UserError(f"{what}: channels {channels} must be within 1..{MAX_CHANNELS}.")


def parse_sources(texts: list[str], streams: list[str]) -> list[SourceSpec]:
    """Parse every ``--source`` and assign unique stream ids (``#ID`` > ``--stream`` > derived)."""
    if len(streams) > len(texts):
        raise UserError(f"{len(streams)} --stream ids for {len(texts)} --source(s): give at most one per source.")
    specs: list[SourceSpec] = []
    used: set[str] = set()
    for i, text in enumerate(texts):
        kind, arg, explicit = parse_spec(text)
        if explicit is None and i < len(streams):
            explicit = streams[i]
        if explicit is not None:
            stream = check_stream_id(explicit)
            if stream in used:
                raise UserError(f"stream id {stream!r} is used by two sources; give each its own (SPEC#ID).")
        else:
            base = default_stream_id(kind, arg)
            stream, n = base, 2
            while stream in used:
                stream, n = f"{base[: MAX_STREAM_ID_LEN - 4]}-{n}", n + 1
        used.add(stream)
        specs.append(SourceSpec(kind, arg, stream, text))
    if sum(1 for s in specs if s.kind == "pipe") > 1:
        raise UserError("only one pipe: source per process (there is one stdin); run another capture for more.")
    return specs
