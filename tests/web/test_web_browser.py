"""The page in a real browser (Debian's Chromium, driven by Playwright) behind a real pipeline:

    capture (a real speech recording, in real time) -> convert -> classify vad -> events run -> web -> Chromium

The page shows the stream, its spectrogram canvas changes over time, the speech label turns
on and then off, the onset/offset appears on the timeline, the stored event appears in the
history and its clip loads in the audio element with the clip's duration, and plays. A second
browser closed mid-stream costs the server nothing. The recording says its words twice, so
the screenshot (taken while the second utterance is on) shows all of it at once; it is kept
in the test's directory, and written to $SOUNDBUS_WEB_SCREENSHOT too when set (docs/web.png
is made that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, Procs, tcp

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SPEECH = Path("/usr/share/sounds/alsa/Front_Center.wav")
RATE = 16_000
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
STREAM = "front"
CARD = f'.stream[data-stream="{STREAM}"]'
SPEECH_ON = f'{CARD} .model[data-model="vad"] .label.on[data-label="speech"]'
CANVAS_SUM = f"""() => {{
  const c = document.querySelector('{CARD} canvas.spec');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i] + 2 * d[i + 1] + 3 * d[i + 2];
  return s;
}}"""


@pytest.fixture
def procs() -> Iterator[Procs]:
    ps = Procs()
    yield ps
    ps.stop_all()


@pytest.fixture
def chromium(tmp_path: Path):
    """A fresh Chromium (the system's; Playwright downloads nothing), closed at teardown."""
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: apt-get install chromium (scripts/install.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM),
                                                    headless=True, args=CHROMIUM_ARGS,
                                                    viewport={"width": 1200, "height": 820})
        try:
            yield ctx
        finally:
            ctx.close()


def speech_wav(path: Path) -> float:
    """Real speech (alsa-utils' Front_Center.wav, resampled by sox) twice: 1.5 s of silence, the words, 6 s of
    silence (the first event's clip is checked meanwhile), the words again, 3 s of silence; its length, s."""
    if not SPEECH.exists():
        pytest.fail(f"{SPEECH} missing: install alsa-utils (scripts/install.sh does)")
    raw = subprocess.run(["sox", str(SPEECH), "-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
                         check=True, capture_output=True).stdout
    words = np.frombuffer(raw, "<i2")
    x = np.concatenate([np.zeros(int(1.5 * RATE), np.int16), words, np.zeros(6 * RATE, np.int16), words,
                        np.zeros(3 * RATE, np.int16)])
    sf.write(str(path), x, RATE, subtype="PCM_16")
    return len(x) / RATE


def test_a_replayed_recording_shows_live_in_a_real_browser(procs, chromium, tmp_path: Path) -> None:
    speech_wav(tmp_path / "speech.wav")
    raw, tensor, result, stored = tcp(), tcp(), tcp(), tcp()
    vad = procs.start("classify", "--model", "vad", "--input", tensor, "--output", result)
    vad.wait_for(r"\bready\b", timeout=180)
    store = tmp_path / "store"
    events = procs.start("events", "run", "--dir", str(store), "--input", tensor, "--input", result, "--output", stored,
                         "--pre-roll-s", "0.5", "--post-roll-s", "0.5")
    events.wait_for(r"\bready\b", timeout=60)
    web = procs.start("web", "--input", tensor, "--input", result, "--input", stored, "--events-dir", str(store),
                      "--listen", "127.0.0.1:0")
    url = re.search(r"ready (http://\S+)", web.wait_for(r"ready http://", timeout=60)).group(1)
    convert = procs.start("convert", "--input", raw, "--output", tensor)
    convert.wait_for(r"\bready\b", timeout=60)
    for p, n in ((vad, 1), (events, 2), (web, 3)):
        p.wait_for("input connected", timeout=30, count=n)

    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#conn.up", timeout=30_000)
    leaver = chromium.new_page()  # a second browser, closed mid-stream
    leaver.goto(url)
    leaver.wait_for_selector("#conn.up", timeout=30_000)

    procs.start("capture", "--source", f"file:{tmp_path / 'speech.wav'}", "--stream", STREAM, "--output", raw)

    page.wait_for_selector(f"{CARD} canvas.spec", timeout=60_000)
    page.wait_for_function(f"() => ({CANVAS_SUM})() > 0", timeout=30_000)
    before = page.evaluate(CANVAS_SUM)
    page.wait_for_selector(SPEECH_ON, timeout=60_000)  # speech on ...
    leaver.close()  # gone without a goodbye, while the stream runs
    page.wait_for_function(f"s => ({CANVAS_SUM})() !== s", arg=before, timeout=30_000)  # it scrolls
    page.wait_for_selector(SPEECH_ON, state="detached", timeout=60_000)  # ... and off again
    page.wait_for_selector(f'{CARD} .timeline .span[data-label="speech"][data-state="closed"]', timeout=30_000)

    # the stored event, with its clip once the post-roll has arrived; the clip loads and plays
    clip = '#history tr[data-label="speech"] audio'
    page.wait_for_selector(clip, timeout=60_000)
    row = page.eval_on_selector(clip, "a => Number(a.closest('tr').dataset.id)")
    duration = page.eval_on_selector(clip, """a => new Promise((ok, fail) => {
        a.preload = 'auto';
        a.addEventListener('loadedmetadata', () => ok(a.duration), {once: true});
        a.addEventListener('error', () => fail(new Error('audio error ' + (a.error && a.error.code))), {once: true});
        a.load();
    })""")
    with urllib.request.urlopen(f"{url}api/events?limit=10", timeout=10) as r:
        stored_rows = {e["id"]: e for e in json.loads(r.read())["events"]}
    span_s = (stored_rows[row]["end_ns"] - stored_rows[row]["start_ns"]) / 1e9
    assert span_s + 0.9 <= duration <= span_s + 1.1, (duration, span_s)  # the event plus 0.5 s either side
    played = page.eval_on_selector(clip, """a => a.play().then(() => new Promise(ok => {
        const t0 = performance.now();
        (function wait() { if (a.currentTime > 0.1 || performance.now() - t0 > 10000) ok(a.currentTime);
                           else setTimeout(wait, 50); })();
    }))""")
    assert played > 0.1
    page.eval_on_selector(clip, "a => { a.pause(); a.currentTime = 0; }")

    page.wait_for_selector('#stages tr[data-stage="classify"]', timeout=10_000)
    health = page.inner_text("#health-section")
    assert "convert" in health and "capture" in health
    page.wait_for_selector(SPEECH_ON, timeout=60_000)  # the words again
    shot = tmp_path / "web.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SOUNDBUS_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["SOUNDBUS_WEB_SCREENSHOT"])
    assert shot.stat().st_size > 10_000

    with urllib.request.urlopen(f"{url}api/state", timeout=10) as r:
        state = json.loads(r.read())
    assert state["server"]["clients"] == 1 and state["server"]["ws_bad"] == 0  # the one that left is forgotten
    assert not errors, errors
    web.proc.send_signal(15)
    assert web.proc.wait(15) == 0, web.log()


def test_the_login_form_opens_the_view_in_a_real_browser(procs, chromium, tmp_path: Path) -> None:
    """The token's way in, as a person takes it: the form, a wrong token, the right one, then the live page
    (Chromium's own Origin and cookie rules, which an HTTP client does not have)."""
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    web = procs.start("web", "--listen", "127.0.0.1:0", "--token-file", str(token), "--input", tcp())
    url = re.search(r"ready (http://\S+)", web.wait_for(r"ready http://", timeout=60)).group(1)
    page = chromium.new_page()
    page.goto(url)
    assert page.title() == "soundbus: log in"
    page.fill("input[name=token]", "not-the-token-at-all")
    page.click("button[type=submit]")
    page.wait_for_selector("p.err", timeout=10_000)
    page.fill("input[name=token]", "0123456789abcdef-token")
    page.click("button[type=submit]")
    page.wait_for_selector("#conn.up", timeout=30_000)
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read the session
    status = page.evaluate("fetch('/api/state').then(r => r.status)")
    assert status == 200
