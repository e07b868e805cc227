"""Source kinds; :func:`make_source` builds the right one for a parsed spec."""

from __future__ import annotations

from capture.sources.base import CaptureOptions, Source
from capture.spec import SourceSpec


def make_source(spec: SourceSpec, opts: CaptureOptions) -> Source:
    """The Source object for ``spec`` (not yet prepared). Modules load lazily: no PortAudio for a file."""
    if spec.kind == "file":
        from capture.sources.wavfile import FileSource

        return FileSource(spec, opts)
    if spec.kind == "synth":
        from capture.sources.synth import SynthSource

        return SynthSource(spec, opts)
    if spec.kind in ("device", "loopback"):
        from capture.sources.device import DeviceSource

        return DeviceSource(spec, opts)
    if spec.kind == "pipe":
        from capture.sources.pipe import PipeSource

        return PipeSource(spec, opts)
    if spec.kind == "url":
        from capture.sources.ffmpeg import FfmpegSource

        return FfmpegSource(spec, opts)
    raise ValueError(f"unknown source kind {spec.kind!r}")
