"""Input devices through PortAudio (python-sounddevice), and PulseAudio/PipeWire monitors for loopback.

``soundbus devices`` prints every input device with its channels, default rate and host
API, marks the default input, marks devices that are loopbacks (BlackHole, Stereo Mix,
monitors), and on Linux lists the PulseAudio/PipeWire monitor sources that
``--source loopback[:SINK]`` records from.

Loopback on Linux goes through PortAudio's ALSA ``pulse`` device: libpulse records from
the source named in ``PULSE_SOURCE`` (set only while the stream is opened), e.g.
``virt.monitor`` or ``@DEFAULT_MONITOR@``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any

from common.errors import UserError

NO_INPUT = (
    "no audio input device found; list devices with `soundbus devices`, or capture a file or a test signal "
    "with --source file:PATH or --source synth:tone:440."
)
_LOOPBACK_WORDS = ("monitor", "loopback", "blackhole", "stereo mix", "what u hear", "soundflower")
_env_lock = threading.Lock()  # PULSE_SOURCE is process-wide: one stream opens at a time


@dataclass
class InputDevice:
    """One PortAudio input device. ``default_rate`` Hz; ``channels``: max input channels."""

    index: int
    name: str
    channels: int
    default_rate: float
    hostapi: str
    is_default: bool
    is_loopback: bool


def _sd() -> Any:
    try:
        import sounddevice as sd
    except OSError as e:  # libportaudio missing
        raise UserError(
            f"PortAudio is not available ({e}); install it (Debian: apt-get install libportaudio2) "
            f"or use --source file:PATH / synth:tone:440."
        ) from None
    return sd


def rescan() -> None:
    """Make PortAudio enumerate devices again (it does so only at initialisation), so a device
    plugged in after start can be found. Only safe while no stream of this process is open."""
    sd = _sd()
    sd._terminate()
    sd._initialize()


def input_devices() -> list[InputDevice]:
    """Every device with at least one input channel, as PortAudio sees it now."""
    sd = _sd()
    apis = sd.query_hostapis()
    default_in = sd.default.device[0]
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] < 1:
            continue
        name = d["name"]
        out.append(
            InputDevice(
                index=d["index"],
                name=name,
                channels=d["max_input_channels"],
                default_rate=d["default_samplerate"],
                hostapi=apis[d["hostapi"]]["name"],
                is_default=d["index"] == default_in,
                is_loopback=any(w in name.lower() for w in _LOOPBACK_WORDS),
            )
        )
    return out


def pulse_sources() -> list[tuple[str, bool]] | None:
    """(name, is_monitor) of PulseAudio/PipeWire sources, or None without a reachable server/pactl."""
    if not shutil.which("pactl"):
        return None
    try:
        r = subprocess.run(["pactl", "list", "short", "sources"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    rows = [line.split("\t") for line in r.stdout.splitlines() if line.strip()]
    return [(row[1], row[1].endswith(".monitor")) for row in rows if len(row) > 1]


def pulse_default_sink() -> str | None:
    if not shutil.which("pactl"):
        return None
    try:
        r = subprocess.run(["pactl", "get-default-sink"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def find_input(arg: str) -> InputDevice:
    """The input device for ``device[:NAME_OR_INDEX]`` (empty or 'default': the default input)."""
    devs = input_devices()
    if not devs:
        raise UserError(NO_INPUT)
    names = "; ".join(f"{d.index}: {d.name}" for d in devs)
    if arg in ("", "default"):
        for d in devs:
            if d.is_default:
                return d
        return devs[0]  # PortAudio has inputs but no default: take the first
    if arg.isdigit():
        for d in devs:
            if d.index == int(arg):
                return d
        raise UserError(f"no input device with index {arg}; inputs are {names} (see `soundbus devices`).")
    exact = [d for d in devs if d.name == arg]
    matches = exact or [d for d in devs if arg.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"no input device named {arg!r}; inputs are {names} (see `soundbus devices`).")
    raise UserError(
        f"{len(matches)} input devices match {arg!r} ({'; '.join(d.name for d in matches)}); "
        f"give the index or a longer name."
    )


def loopback_target(sink: str) -> tuple[InputDevice, str]:
    """(PortAudio device, PulseAudio source name) recording what ``sink`` plays (default sink if empty)."""
    if sys.platform == "win32":
        raise UserError(
            "loopback on Windows needs WASAPI loopback, which sounddevice cannot reach until a PortAudio release "
            "ships it (python-sounddevice#510): enable 'Stereo Mix' or install a virtual cable and use "
            "--source device:NAME (see docs/capture.md)."
        )
    if sys.platform == "darwin":
        raise UserError(
            "macOS has no built-in loopback: install a virtual device such as BlackHole, route the output to it "
            "and use --source device:BlackHole (see docs/capture.md)."
        )
    devs = input_devices()
    pulse = [d for d in devs if d.name in ("pulse", "pipewire")] or [d for d in devs if d.name == "default"]
    if not pulse:
        raise UserError(
            "loopback needs a running PulseAudio or PipeWire server and its ALSA plugin "
            "(Debian: pulseaudio libasound2-plugins); `soundbus devices` shows no 'pulse' device."
        )
    sources = pulse_sources()
    if sink:
        name = sink if sink.endswith(".monitor") else f"{sink}.monitor"
        if sources is not None and name not in [n for n, _ in sources]:
            monitors = ", ".join(n[: -len(".monitor")] for n, m in sources if m) or "none"
            raise UserError(
                f"no PulseAudio sink named {sink!r} to record from; sinks with monitors: {monitors} "
                f"(`pactl list short sinks`)."
            )
    else:
        default = pulse_default_sink()
        name = f"{default}.monitor" if default else "@DEFAULT_MONITOR@"
    return pulse[0], name


class PulseSourceEnv:
    """Context manager: ``PULSE_SOURCE=name`` while a stream is opened (libpulse reads it at connect)."""

    def __init__(self, name: str | None) -> None:
        self.name = name
        self._old: str | None = None

    def __enter__(self) -> None:
        if self.name is None:
            return
        _env_lock.acquire()
        self._old = os.environ.get("PULSE_SOURCE")
        os.environ["PULSE_SOURCE"] = self.name

    def __exit__(self, *exc: object) -> None:
        if self.name is None:
            return
        if self._old is None:
            os.environ.pop("PULSE_SOURCE", None)
        else:
            os.environ["PULSE_SOURCE"] = self._old
        _env_lock.release()


def print_devices(json_lines: bool = False) -> int:
    """``soundbus devices``: returns 0, or 2 (with the one-sentence hint) when there is no input."""
    try:
        devs = input_devices()
    except UserError as e:
        print(f"soundbus: {e}", file=sys.stderr)
        return 2
    monitors = [n for n, m in (pulse_sources() or []) if m]
    if json_lines:
        for d in devs:
            print(json.dumps(asdict(d)))
        for n in monitors:
            print(json.dumps({"pulse_monitor": n, "source": f"loopback:{n[: -len('.monitor')]}"}))
    else:
        if devs:
            print(f"{'':2}{'idx':>3}  {'name':<40} {'ch':>3} {'rate':>7}  host API")
        for d in devs:
            mark = "*" if d.is_default else " "
            tag = "  [loopback]" if d.is_loopback else ""
            print(f"{mark:2}{d.index:>3}  {d.name[:40]:<40} {d.channels:>3} {d.default_rate:>7.0f}  {d.hostapi}{tag}")
        if devs:
            print("* default input; capture one with --source device:INDEX or device:NAME")
        if monitors:
            print("loopback (PulseAudio/PipeWire monitors; capture with --source loopback:SINK):")
            for n in monitors:
                print(f"    {n}  -> --source loopback:{n[: -len('.monitor')]}")
    if not devs:
        print(f"soundbus: {NO_INPUT}", file=sys.stderr)
        return 2
    return 0
