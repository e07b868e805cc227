"""A speech decision with fewer false alarms: vad's speech segments, kept only when YAMNet agrees.

silero-vad answers "is this voice-like?" every 32 ms and also fires on barking, meowing and
some machines; YAMNet answers "what is this?" every 0.48 s over 0.975 s windows and tells a
dog from a person, but late and coarsely. The gate takes vad's segments (its own hysteresis
over vad's scores, the same rule as the classify worker's events) and emits a segment's
start only once

- the segment has lasted ``min_speech_ms`` (0: at once), and
- a YAMNet window overlapping the segment gave the speech family (``SPEECH_LABELS``) a score
  of at least ``yamnet_min`` (None: YAMNet is not consulted).

A confirmed segment's start is stamped with vad's start time (vad's timing, YAMNet's
judgement); its stop follows vad's stop. A segment YAMNet never confirms emits nothing.
Decisions wait for YAMNet's window, so a gated start is announced ~1 s after the speech
began (the window length plus YAMNet's hop); its timestamp is still vad's.

One SpeechGate per stream. Feed it results in the order they arrive (``vad`` and
``yamnet``, each in time order), then ``end`` when the stream ends; every call returns the
gated events it caused. State is bounded: at most MAX_SEGMENTS open or pending segments and
MAX_WINDOWS remembered YAMNet windows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from classify.events import EventTracker

# YAMNet's display names of the speech family (evaluate.families: AudioSet indices 0-12, 63, 65).
SPEECH_LABELS: frozenset[str] = frozenset({
    "Speech", "Child speech, kid speaking", "Conversation", "Narration, monologue", "Babbling",
    "Speech synthesizer", "Shout", "Bellow", "Whoop", "Yell", "Children shouting", "Screaming", "Whispering",
    "Chatter", "Hubbub, speech noise, speech babble",
})
MAX_SEGMENTS = 64
MAX_WINDOWS = 64


@dataclass(frozen=True)
class GateConfig:
    """One setting of the gate.

    ``vad_on``/``vad_off``: vad score thresholds with hysteresis; ``hold``: vad windows below
    ``vad_off`` in a row before a stop (the classify worker's defaults: 0.5, 0.35, 8);
    ``min_speech_ms``: a segment must last this long (ms) before it starts;
    ``yamnet_min``: speech-family score a YAMNet window overlapping the segment must reach
    (None: no YAMNet needed).
    """

    vad_on: float = 0.5
    vad_off: float = 0.35
    hold: int = 8
    min_speech_ms: float = 0.0
    yamnet_min: float | None = None

    @property
    def name(self) -> str:
        parts = [f"vad {self.vad_on:g}/{self.vad_off:g}"]
        if self.min_speech_ms:
            parts.append(f">= {self.min_speech_ms:g} ms")
        if self.yamnet_min is not None:
            parts.append(f"+ yamnet speech >= {self.yamnet_min:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class GateEvent:
    """A gated speech onset (``state`` 'start') or offset ('stop') at wall-clock ``t_ns``."""

    state: str
    t_ns: int


@dataclass
class _Segment:
    start_ns: int
    last_ns: int  # end of the newest vad window inside the segment
    stop_ns: int | None = None  # set when vad stopped it
    confirmed: bool = False


def speech_score(labels: Iterable[tuple[str, float]]) -> float:
    """Highest score of a speech-family label in one YAMNet result's (label, score) pairs (0 if none)."""
    return max((score for name, score in labels if name in SPEECH_LABELS), default=0.0)


class SpeechGate:
    """Gated speech events for one stream (see the module docstring)."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._vad = EventTracker(
            ("speech",), np.array([config.vad_on], np.float32), np.array([config.vad_off], np.float32), config.hold
        )
        self._segments: deque[_Segment] = deque()
        self._windows: deque[tuple[int, int]] = deque(maxlen=MAX_WINDOWS)  # agreeing YAMNet windows (start, end)
        self._yamnet_until = -1  # start of the newest YAMNet window seen: no later window starts before it

    def reset(self) -> None:
        """Forget everything (a discontinuity); nothing is emitted."""
        self.__init__(self.config)

    def vad(self, start_ns: int, end_ns: int, score: float) -> list[GateEvent]:
        """One vad result: its window's span (ns) and speech probability."""
        out: list[GateEvent] = []
        for e in self._vad.update(np.array([score], np.float32), start_ns):
            if e.state == "start":
                if len(self._segments) >= MAX_SEGMENTS:  # bounded: the oldest undecided segment is dropped
                    self._segments.popleft()
                self._segments.append(_Segment(start_ns=e.t_ns, last_ns=end_ns))
            else:
                seg = self._open_segment()
                if seg is not None:
                    seg.stop_ns = e.t_ns
                    if seg.confirmed:
                        out.append(GateEvent("stop", seg.stop_ns))
        seg = self._open_segment()
        if seg is not None:
            seg.last_ns = end_ns
        out += self._decide()
        return out

    def yamnet(self, start_ns: int, end_ns: int, speech: float) -> list[GateEvent]:
        """One YAMNet result: its window's span (ns) and speech-family score (see ``speech_score``)."""
        self._yamnet_until = max(self._yamnet_until, start_ns)
        if self.config.yamnet_min is not None and speech >= self.config.yamnet_min:
            self._windows.append((start_ns, end_ns))
        return self._decide()

    def end(self, t_ns: int) -> list[GateEvent]:
        """The stream ended at ``t_ns``: decide what is pending, stop what is on."""
        self._yamnet_until = 2**63 - 1  # no YAMNet window will come
        out = self._decide()
        seg = self._open_segment()
        if seg is not None and seg.confirmed:
            out.append(GateEvent("stop", t_ns))
        self._segments.clear()
        self._vad = EventTracker(self._vad.labels, self._vad.on, self._vad.off, self._vad.hold)
        return out

    def _open_segment(self) -> _Segment | None:
        if self._segments and self._segments[-1].stop_ns is None:
            return self._segments[-1]
        return None

    def _decide(self) -> list[GateEvent]:
        out: list[GateEvent] = []
        keep: deque[_Segment] = deque()
        for seg in self._segments:
            if not seg.confirmed and self._agrees(seg):
                seg.confirmed = True
                out.append(GateEvent("start", seg.start_ns))
                if seg.stop_ns is not None:
                    out.append(GateEvent("stop", seg.stop_ns))
            if seg.stop_ns is None or (not seg.confirmed and not self._too_late(seg)):
                keep.append(seg)  # still open, or still waiting for a YAMNet window that may agree
        self._segments = keep
        return out

    def _agrees(self, seg: _Segment) -> bool:
        end = seg.stop_ns if seg.stop_ns is not None else seg.last_ns
        if (end - seg.start_ns) / 1e6 < self.config.min_speech_ms:
            return False
        if self.config.yamnet_min is None:
            return True
        return any(ws < end and we > seg.start_ns for ws, we in self._windows)

    def _too_late(self, seg: _Segment) -> bool:
        """A closed, unconfirmed segment can no longer be confirmed: it was too short, or every
        YAMNet window that could overlap it has been seen."""
        assert seg.stop_ns is not None
        if (seg.stop_ns - seg.start_ns) / 1e6 < self.config.min_speech_ms:
            return True
        return self.config.yamnet_min is None or self._yamnet_until >= seg.stop_ns
