"""``soundbus tail``'s logic with no sockets: what each output shows, and that nothing a publisher
sends can break it (results are validated Structs: finite scores, printable labels)."""

from __future__ import annotations

import io
import json
import time

import msgpack
import pytest

from classify.tail import TailLogic
from common.observe.metrics import StageMetrics
from common.runtime.stage import Now, StopFlag
from common.wire import Event, Flag, Hop, Kind, Label, Level, ProtocolError, Result, decode, encode, topic_for

NS = 1_000_000_000
T0 = 1_800_000_000 * NS


def result(seq: int, start_s: float, labels=(("speech", 0.9),), events=(), lost_ns: int = 0, flags: int = 0,
           final: bool = False, level: Level | None = None, stream: str = "mic1", model: str = "vad") -> Result:
    start = T0 + int(start_s * NS)
    return Result(stream=stream, model=model, epoch=1, seq=seq, start_ns=start, end_ns=start + 32_000_000,
                  offset=int(start_s * 16000), rate=16000, seq_first=seq, seq_last=seq,
                  labels=[Label(n, s) for n, s in labels], events=list(events), lost_ns=lost_ns, flags=flags,
                  final=final, level=level, trace=[Hop("capture", T0, T0 + 1000), Hop("classify", T0, T0 + 2_000_000)])


def run(mode: str, results: list[Result]) -> str:
    out = io.StringIO()
    logic = TailLogic(out, mode, StageMetrics("tail"), StopFlag(install=False), set())
    for r in results:
        logic.handle([decode(encode(r))], Now(1.0, T0 + 10 * NS))  # through the wire, as tail receives them
    return out.getvalue()


SPAN = [
    result(0, 0.0, [("speech", 0.1)]),
    result(1, 0.52, [("speech", 0.9)], [Event("speech", "start", T0 + 520_000_000, 0.9, T0 + 520_000_000)]),
    result(2, 1.0, [("speech", 0.97)]),
    result(4, 2.31, [("speech", 0.2)], [Event("speech", "stop", T0 + 2_310_000_000, 1.0, T0 + 520_000_000)],
           lost_ns=64_000_000),
    result(5, 2.4, [("speech", 0.1)], final=True, flags=Flag.END),
]


def test_plain_output_is_what_a_person_reads_starts_spans_gaps_and_the_end():
    text = run("plain", SPAN)
    lines = text.splitlines()
    assert "mic1 vad: speech started at 0.52 s (0.90)" in lines[0]
    assert any("mic1 vad: GAP 1 result(s) missing, 0.064 s of audio lost upstream" in ln for ln in lines)
    assert any("mic1 vad: speech 0.52-2.31 s (peak 1.00)" in ln for ln in lines)
    assert "ended: 5 windows; speech 1.8 s" in lines[-1] and "1 result(s) missing, 0.064 s lost" in lines[-1]
    assert len(lines) == 4  # not one line per window
    assert "on since" not in lines[-1]


def test_a_summary_names_the_labels_still_on() -> None:
    out = io.StringIO()
    t0 = time.monotonic()  # the first summary is due summary_s after the logic starts
    logic = TailLogic(out, "plain", StageMetrics("tail"), StopFlag(install=False), set(), summary_s=2.0)
    for r in SPAN[:3]:  # speech started, not stopped yet
        logic.handle([decode(encode(r))], Now(t0 + 1.0, T0 + 10 * NS))
    logic.tick(Now(t0 + 2.5, T0 + 12 * NS))
    summary = out.getvalue().splitlines()[-1]
    assert "summary: 3 windows; no events; speech on since 0.52 s" in summary, summary


def test_json_lines_are_valid_json_with_the_validated_fields_only():
    recs = [json.loads(line) for line in run("json", SPAN).splitlines()]
    assert [r["seq"] for r in recs] == [0, 1, 2, 4, 5] and recs[3]["missing"] == 1
    assert recs[1]["labels"] == [["speech", pytest.approx(0.9)]]
    assert recs[3]["events"][0] == {"label": "speech", "state": "stop", "t_ns": T0 + 2_310_000_000, "score": 1.0,
                                    "since_ns": T0 + 520_000_000}
    assert recs[3]["lost_ns"] == 64_000_000 and recs[-1]["final"]
    assert recs[0]["latency_ms"] == pytest.approx(2.0) and recs[0]["trace"][0][0] == "capture"


def test_every_window_mode_prints_one_line_per_result_with_levels_and_gaps():
    lvl = result(0, 0.0, [("sound", 0.8), ("clipping", 0.0)], level=Level(-120.0, -200.0, 0), model="level")
    text = run("windows", [lvl, *SPAN])
    lines = text.splitlines()
    assert len(lines) == 6 and "rms -120.0 dBFS peak -200.0" in lines[0]
    assert "[+speech]" in lines[2] and "GAP 1 result(s) missing, 0.064 s audio lost" in lines[4]


def test_the_live_view_renders_levels_labels_events_gaps():
    from rich.console import Console

    out = io.StringIO()
    logic = TailLogic(out, "plain", StageMetrics("tail"), StopFlag(install=False), set())
    for r in [result(0, 0.0, [("sound", 0.8)], level=Level(-12.0, -3.0, 0), model="level"), *SPAN]:
        logic.handle([r], Now(1.0, T0))
    from classify.tail import LiveView

    view = LiveView.__new__(LiveView)  # render only: no terminal needed
    view.logic = logic
    console = Console(record=True, width=160, force_terminal=False)
    console.print(view.render())
    text = console.export_text()
    assert "mic1/vad" in text and "speech 0.10" in text and "-12.0 dB" in text and "█" in text
    assert "▲speech (vad)" in text and "1 missing, 0.06 s lost" in text and "2.0 ms" in text


def _part(topic: bytes, body: list) -> bytes:
    h = msgpack.packb(body)
    return topic + b"\0\2" + len(h).to_bytes(2, "little") + h


@pytest.mark.parametrize("labels, events, why", [
    ([["speech", float("nan")]], [], "score"),
    ([["speech", float("inf")]], [], "score"),
    ([["\x1b[2Jspeech", 0.5]], [], "control characters"),
    ([["two\nlines", 0.5]], [], "control characters"),
    ([["speech", 0.5]], [["speech\x07", "start", 1, 0.5, 1]], "control characters"),
    ([["speech", 0.5]], [["speech", "maybe", 1, 0.5, 1]], "events"),
])
def test_hostile_results_never_reach_an_output(labels, events, why):
    """What once crashed tail or wrote to the terminal: NaN/inf scores, escapes and newlines in labels."""
    body = ["mic1", "vad", 1, 0, T0, T0 + 1, 0, 16000, 0, 0, labels, events]
    with pytest.raises(ProtocolError) as e:
        decode(_part(topic_for(Kind.RESULT, "mic1", "vad"), body))
    assert e.value.reason == "bad_field"


def test_a_result_cannot_claim_another_stream_than_its_topic():
    body = ["other", "vad", 1, 0, T0, T0 + 1, 0, 16000, 0, 0, []]
    with pytest.raises(ProtocolError) as e:
        decode(_part(topic_for(Kind.RESULT, "mic1", "vad"), body))
    assert e.value.reason == "bad_topic"
