"""The convert stage's per-message logic (convert.worker.Converter) without sockets.

Every output goes through common.wire.decode, as a subscriber would see it.
"""

from __future__ import annotations

import numpy as np
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from common.observe.metrics import StageMetrics
from common.runtime.stage import Now
from common.wire import Audio, AudioHeader, Flag, Kind, Layout, SampleFormat, decode, encode_audio
from convert.formats import ChannelMap, from_float32
from convert.stream import ConvertConfig
from convert.worker import ConvertLogic, StageOptions

T0 = 1_700_000_000_000_000_000
IN_RATE = 48_000


def signal(seconds: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """(channels, frames) float64 on the s16 grid: a tone plus noise, different per channel."""
    rng = np.random.default_rng(seed)
    n = int(seconds * IN_RATE)
    t = np.arange(n) / IN_RATE
    x = np.stack([0.4 * np.sin(2 * np.pi * (300 + 200 * c) * t) + 0.05 * rng.standard_normal(n) for c in range(channels)])
    return np.round(x * 32768) / 32768


def raw(stream: str, seq: int, block: np.ndarray, offset: int, *, epoch: int = 1, rate: int = IN_RATE,
        fmt: str = "s16", layout: str = "interleaved", flags: int = 0, lost: int = 0) -> Audio:
    h = AudioHeader(stream=stream, epoch=epoch, seq=seq, t_capture_ns=T0 + offset * 10**9 // rate, rate=rate,
                    channels=block.shape[0], format=SampleFormat(fmt), layout=Layout(layout), samples=block.shape[1],
                    offset=offset, flags=int(flags), lost=lost, source="test-source")
    return decode(encode_audio(Kind.RAW, h, from_float32(block, fmt, layout)))


def frames_of(x: np.ndarray, sizes: list[int], **kw) -> list[Audio]:
    msgs, off = [], 0
    for i, n in enumerate(sizes):
        msgs.append(raw("mic", i, x[:, off : off + n], off, **kw))
        off += n
    return msgs


class Converter:
    """ConvertLogic driven as the runtime drives it, one message per batch, with an explicit clock."""

    def __init__(self, opts: StageOptions = StageOptions(), **kw) -> None:
        self.logic = ConvertLogic(ConvertConfig(**kw), StageMetrics("convert"), opts)
        self.metrics = self.logic.metrics
        self.mono = 0.0

    def handle(self, m: Audio) -> list[bytes]:
        return self.logic.handle([m], Now(self.mono, 123))

    def tick(self, after_s: float) -> list[Audio]:
        """The timers, ``after_s`` seconds later."""
        self.mono += after_s
        return [decode(f) for f in self.logic.tick(Now(self.mono, 123))]


def feed(conv: Converter, msgs: list[Audio]) -> list[Audio]:
    out = []
    for m in msgs:
        out += [decode(f) for f in conv.handle(m)]
    return out


def converter(**kw) -> Converter:
    return Converter(**kw)


def samples(msgs: list[Audio]) -> np.ndarray:
    return np.concatenate([np.frombuffer(m.payload, "<f4").reshape(m.header.channels, m.header.samples) for m in msgs],
                          axis=1)


def mono_reference(x: np.ndarray) -> np.ndarray:
    return soxr.resample(x.mean(axis=0).astype(np.float32), IN_RATE, 16000, quality="HQ")


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_input_chunking_gives_the_whole_signal_result_in_regular_chunks(data) -> None:
    x = signal(0.5)
    n = x.shape[1]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, n - 1), max_size=40))))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n])]
    msgs = frames_of(x, sizes)
    msgs[-1] = raw("mic", len(sizes) - 1, x[:, n - sizes[-1] :], n - sizes[-1], flags=Flag.END)
    conv = converter()
    out = feed(conv, msgs)
    np.testing.assert_array_equal(samples(out)[0], mono_reference(x))
    for i, m in enumerate(out):
        h = m.header
        assert (m.kind, h.format, h.layout, h.rate, h.channels, h.stream, h.epoch) == (
            Kind.TENSOR, "f32", "planar", 16000, 1, "mic", 1)
        assert h.seq == i and h.offset == 512 * i
        assert h.t_capture_ns == T0 + h.offset * 10**9 // 16000
        assert h.source == "test-source" and h.trace[-1].stage == "convert"
        assert h.samples == 512 or i == len(out) - 1
        assert h.flags == (Flag.END if i == len(out) - 1 else Flag.NONE)
    assert conv.metrics.events["end"] == 1 and not conv.metrics.bad


def test_timestamps_come_from_sample_counts_without_drift() -> None:
    # 44.1 kHz output: a 512-sample frame lasts 11609977.3 ns, so summing frame durations would drift.
    x = signal(3.0, channels=1)
    out = feed(converter(rate=44_100), frames_of(x, [960] * (x.shape[1] // 960)))
    assert len(out) > 200
    for m in out:
        assert m.header.t_capture_ns == T0 + m.header.offset * 10**9 // 44_100


def test_keep_channels_resamples_each_channel_like_the_whole_signal() -> None:
    x = signal(0.4, channels=2)
    msgs = frames_of(x, [960] * 20)
    msgs[-1] = raw("mic", 19, x[:, 19 * 960 :], 19 * 960, flags=Flag.END)
    out = feed(converter(channels=ChannelMap("keep")), msgs)
    assert all(m.header.channels == 2 for m in out)
    ref = soxr.resample(np.ascontiguousarray(x.T, dtype=np.float32), IN_RATE, 16000)
    np.testing.assert_array_equal(samples(out), ref.T)


def test_short_gap_is_bridged_with_silence_and_flagged() -> None:
    x = signal(0.4)
    msgs = frames_of(x, [960] * 20)
    lost = 7
    conv = converter(gap_fill_ms=100)
    out = feed(conv, msgs[:lost] + msgs[lost + 1 :])
    bridged = x.copy()
    bridged[:, lost * 960 : (lost + 1) * 960] = 0
    got = samples(out)[0]
    ref = mono_reference(bridged)
    np.testing.assert_array_equal(got, ref[: len(got)])  # continuous state: identical to the zero-filled signal
    flagged = [m.header.seq for m in out if m.header.flags & Flag.DISCONTINUITY]
    assert len(flagged) == 1 and 8 * 960 // 3 - 512 <= out[flagged[0]].header.offset <= 8 * 960 // 3
    assert conv.metrics.events["bridged"] == 1 and conv.metrics.events["bridged_samples"] == 960
    assert conv.metrics.gaps["mic"] == 1


def test_long_gap_resets_and_re_anchors_at_the_next_frame() -> None:
    x = signal(0.6)
    msgs = frames_of(x, [960] * 30)
    conv = converter(gap_fill_ms=100)
    out = feed(conv, msgs[:5] + msgs[15:])  # 200 ms lost > 100 ms bound
    resumed = [m for m in out if m.header.flags & Flag.DISCONTINUITY]
    assert len(resumed) == 1
    r = resumed[0].header
    assert r.offset == 15 * 960 // 3 and r.t_capture_ns == msgs[15].header.t_capture_ns
    before = [m for m in out if m.header.offset < r.offset]
    assert before[-1].header.offset + before[-1].header.samples <= r.offset  # the tail was flushed, short
    np.testing.assert_array_equal(samples(before)[0], mono_reference(x[:, : 5 * 960]))
    after = samples([m for m in out if m.header.offset >= r.offset])[0]
    np.testing.assert_array_equal(after, mono_reference(x[:, 15 * 960 :])[: len(after)])
    assert [m.header.seq for m in out] == list(range(len(out)))
    assert conv.metrics.events["reset_gap"] == 1 and not conv.metrics.events["bridged"]


def test_gap_fill_zero_always_resets() -> None:
    conv = converter(gap_fill_ms=0)
    msgs = frames_of(signal(0.2), [960] * 10)
    feed(conv, msgs[:3] + msgs[4:])
    assert conv.metrics.events["reset_gap"] == 1


def test_new_epoch_flushes_the_old_one_with_end_and_restarts_numbering() -> None:
    x = signal(0.3)
    conv = converter()
    out = feed(conv, frames_of(x, [960] * 10))
    out += feed(conv, [raw("mic", 0, x[:, :960], 0, epoch=2)] + [raw("mic", i, x[:, i * 960 : (i + 1) * 960], i * 960,
                                                                      epoch=2) for i in range(1, 10)])
    old = [m for m in out if m.header.epoch == 1]
    new = [m for m in out if m.header.epoch == 2]
    assert old[-1].header.flags & Flag.END and old[-1].header.samples < 512
    assert new[0].header.seq == 0 and new[0].header.offset == 0
    assert new[0].header.flags & Flag.DISCONTINUITY  # the old epoch did not end cleanly
    assert conv.metrics.events["epoch_change"] == 1


def test_format_change_mid_stream_resets_and_keeps_numbering() -> None:
    x = signal(0.4)
    conv = converter()
    out = feed(conv, frames_of(x, [960] * 10))
    y = np.round(signal(0.2, seed=3)[:, ::2] * 32768) / 32768  # now 24 kHz s24 planar
    out += feed(conv, [raw("mic", 10 + i, y[:, i * 480 : (i + 1) * 480], 9600 + i * 480, rate=24_000, fmt="s24",
                           layout="planar") for i in range(10)])
    assert [m.header.seq for m in out] == list(range(len(out)))
    offs = [(m.header.offset, m.header.samples) for m in out]
    assert all(a + n <= b for (a, n), (b, _) in zip(offs, offs[1:]))
    assert sum(1 for m in out if m.header.flags & Flag.DISCONTINUITY) == 1
    assert conv.metrics.events["reset_format"] == 1


def test_rejected_messages_never_touch_a_valid_stream() -> None:
    x = signal(0.4)
    clean = feed(converter(channels=ChannelMap("select", (1,))), frames_of(x, [960] * 20))
    conv = converter(channels=ChannelMap("select", (1,)))
    out = []
    for i, m in enumerate(frames_of(x, [960] * 20)):
        # same stream id and the seq the valid stream uses next: unusable, so rejected before any state
        out += feed(conv, [raw("mic", i, x[:1, :960], i * 960),  # 1 channel: channel 1 not there
                           raw("mic", i, x[:, :30], i * 960, rate=500)])  # absurd rate
        out += feed(conv, [m])
    assert [(m.header.seq, m.header.flags) for m in out] == [(m.header.seq, m.header.flags) for m in clean]
    np.testing.assert_array_equal(samples(out), samples(clean))
    assert conv.metrics.bad == {"channel_select": 20, "rate_unsupported": 20}
    assert not conv.metrics.gaps and not conv.metrics.events["reset_gap"]


def test_duplicates_and_reordered_frames_are_dropped() -> None:
    msgs = frames_of(signal(0.2), [960] * 10)
    conv = converter()
    out = feed(conv, msgs[:5] + [msgs[3], msgs[4]] + msgs[5:])
    assert [m.header.seq for m in out] == list(range(len(out)))
    assert conv.metrics.drops["stale_seq"] == 2


def test_a_converter_joining_mid_epoch_numbers_above_any_previous_instance() -> None:
    x = signal(1.0)
    msgs = frames_of(x, [960] * 50)
    first = converter()
    before = feed(first, msgs[:30])
    second = converter()  # e.g. the stage restarted: it sees the stream from seq 33 on
    after = feed(second, msgs[33:])
    assert after[0].header.seq > before[-1].header.seq
    assert after[0].header.offset >= before[-1].header.offset + before[-1].header.samples
    assert after[0].header.flags & Flag.DISCONTINUITY and not before[0].header.flags


def test_full_scale_float_input_and_gain_clip_and_count() -> None:
    conv = converter()
    loud = np.full((1, 960), 1.5)
    feed(conv, [raw("f", 0, loud, 0, fmt="f32")])
    assert conv.metrics.events["clipped_samples"] == 960
    conv = converter(gain_db=6.0)
    x = np.zeros((1, 960))
    x[0, :10] = -1.0
    feed(conv, [raw("g", 0, x, 0)])
    assert conv.metrics.events["clipped_samples"] == 10


def test_dc_removal_is_chunk_invariant_and_removes_the_offset() -> None:
    x = signal(2.0, channels=1) * 0.5 + 0.25
    a = samples(feed(converter(dc_remove=True), frames_of(x, [960] * 100)))
    b = samples(feed(converter(dc_remove=True), frames_of(x, [480, 1440] * 50)))
    n = min(a.shape[1], b.shape[1])
    np.testing.assert_array_equal(a[:, :n], b[:, :n])
    assert abs(a[0, -8000:].mean()) < 0.01 < 0.2 < abs(samples(feed(converter(), frames_of(x, [960] * 100)))[0].mean())


def test_idle_stream_tail_is_flushed_and_its_next_frame_restarts() -> None:
    msgs = frames_of(signal(0.3), [960] * 12)
    conv = converter()
    out = feed(conv, msgs[:10])
    tail = conv.tick(2.5)  # silent for more than --idle-flush-s (2 s)
    assert tail and tail[-1].header.samples < 512
    assert not conv.tick(2.5)  # once
    more = feed(conv, msgs[10:])
    assert more[0].header.flags & Flag.DISCONTINUITY if more else True
    assert conv.metrics.events["idle_flush"] == 1 and conv.metrics.events["reset_restart"] == 1
    assert [m.header.seq for m in out + tail + more] == list(range(len(out + tail + more)))


def test_long_silent_streams_are_evicted_and_numbering_stays_monotonic_when_they_return() -> None:
    msgs = frames_of(signal(0.4), [960] * 20)
    conv = converter()
    out = feed(conv, msgs[:10])
    out += conv.tick(2.5)  # flushed
    out += conv.tick(61.0)  # forgotten (evicted after 60 s)
    assert "mic" not in conv.logic.streams and conv.metrics.events["stream_evicted"] == 1
    back = feed(conv, msgs[12:])
    assert back[0].header.seq > out[-1].header.seq and back[0].header.flags & Flag.DISCONTINUITY
    assert back[0].header.offset >= out[-1].header.offset + out[-1].header.samples


def test_low_delay_quality_publishes_each_frame_once_its_input_and_look_ahead_are_in() -> None:
    from convert.lowdelay import LowDelayResampler

    x = signal(0.5)
    conv = converter(quality="LD")
    out: list[Audio] = []
    for i, m in enumerate(frames_of(x, [960] * 25)):
        out += feed(conv, [m])
        ready = (960 * (i + 1) - 1 - 61) // 3 + 1  # 16 kHz samples whose 61-sample look-ahead has arrived
        assert sum(f.header.samples for f in out) == ready // 512 * 512
    got = samples(out)[0]
    ld = LowDelayResampler(IN_RATE, 16000, 1).process(x.mean(axis=0).astype(np.float32), last=True)
    np.testing.assert_array_equal(got, ld[: len(got)])
    # a rate whose exact LD filter would be too long is refused like an absurd rate, state untouched
    assert feed(conv, [raw("odd", 0, x[:, :882], 0, rate=44_099)]) == []
    assert conv.metrics.bad == {"rate_unsupported": 1}


def test_losses_reach_the_next_tensor_as_lost_samples_bridged_or_not() -> None:
    """Input lost upstream (AudioHeader.lost), or messages this stage never received (a seq gap),
    are carried on the next output chunk at the output rate, so classify can report them."""
    x = signal(0.4)
    msgs = frames_of(x, [960] * 20)
    conv = converter()
    out = feed(conv, msgs[:5])
    out += feed(conv, [raw("mic", 5, x[:, 5 * 960 : 6 * 960], 5 * 960, lost=480)])  # capture overflowed first
    out += feed(conv, msgs[7:])  # seq 6 never arrived: 960 input samples bridged with silence
    lost = [(m.header.seq, m.header.lost) for m in out if m.header.lost]
    assert sum(n for _, n in lost) == (480 + 960) // 3  # at 16 kHz; both land on the chunk holding them
    assert all(m.header.flags & Flag.DISCONTINUITY for m in out if m.header.lost)
    assert conv.metrics.total_gaps == 1


def test_non_finite_float_input_is_zeroed_and_counted() -> None:
    x = np.zeros((1, 960))
    x[0, 100:110] = np.nan
    x[0, 200] = np.inf
    conv = converter()
    out = feed(conv, [raw("f", 0, x, 0, fmt="f32", flags=Flag.END)])
    assert np.isfinite(samples(out)).all()
    assert conv.metrics.events["nonfinite_samples"] == 11


def test_streams_beyond_the_bound_are_refused_and_counted_and_finished_ones_make_room() -> None:
    x = signal(0.02)
    conv = Converter(StageOptions(max_streams=3))
    for i in range(5):
        feed(conv, [raw(f"s{i}", 0, x, 0)])
    assert sorted(conv.logic.streams.states) == ["s0", "s1", "s2"]
    assert conv.metrics.drops["too_many_streams"] == 2
    feed(conv, [raw("s0", 1, x, 960, flags=Flag.END)])  # s0 ends: its place can be reclaimed
    feed(conv, [raw("s9", 0, x, 0)])
    assert "s9" in conv.logic.streams and "s0" not in conv.logic.streams


def test_an_output_chunk_too_large_for_a_message_is_refused_before_any_state() -> None:
    conv = converter(channels=ChannelMap("keep"), chunk_samples=16000 * 10)  # 10 s chunks
    wide = np.zeros((64, 960))
    assert feed(conv, [raw("wide", 0, wide, 0)]) == []  # 64 ch x 160000 x 4 B > 16 MiB
    assert conv.metrics.bad == {"chunk_too_large": 1} and not conv.logic.streams


def _outputs_by_stream(logic: ConvertLogic, batches: list[list[Audio]]) -> dict[str, list[tuple]]:
    got: dict[str, list[tuple]] = {}
    for i, batch in enumerate(batches):
        for f in logic.handle(batch, Now(float(i), 123)):
            m = decode(f)
            h = m.header
            got.setdefault(h.stream, []).append((h.seq, h.offset, h.t_capture_ns, h.flags, h.lost, h.samples,
                                                 h.channels, bytes(m.payload)))
    return got


def test_one_wake_up_converting_many_streams_at_once_changes_no_output() -> None:
    """Byte-identical tensors whether each message is its own batch, a round of every stream's
    frames is one batch (one numpy pass per format), or the streams arrive out of phase."""
    shapes = {  # stream -> (format, channels, layout): groups of 2+ share a pass, the rest do not
        "a": ("s16", 2, "interleaved"), "b": ("s16", 2, "interleaved"), "c": ("s16", 2, "interleaved"),
        "d": ("s24", 1, "planar"), "e": ("s24", 1, "interleaved"), "f": ("f32", 2, "interleaved"),
        "g": ("f32", 2, "interleaved"), "h": ("s16", 2, "planar"), "u": ("u8", 2, "interleaved"),
    }
    frame = 960
    msgs: dict[str, list[Audio]] = {}
    for k, (name, (fmt, channels, layout)) in enumerate(shapes.items()):
        x = signal(0.5, channels, seed=k)
        if name == "g":
            x = x * 3.0  # over full scale: clipped and counted in the batched pass too
        msgs[name] = [raw(name, i, x[:, i * frame:(i + 1) * frame], i * frame, fmt=fmt, layout=layout)
                      for i in range(x.shape[1] // frame)]
    rounds = list(zip(*msgs.values()))
    one_by_one = [[m] for r in rounds for m in r]
    in_phase = [list(r) for r in rounds]
    skew = {name: j % 3 for j, name in enumerate(shapes)}  # stream j runs j % 3 frames late
    out_of_phase = [[msgs[n][i - skew[n]] for n in shapes if 0 <= i - skew[n] < len(msgs[n])]
                    for i in range(len(rounds) + 2)]
    results = []
    for batches in (one_by_one, in_phase, out_of_phase):
        logic = ConvertLogic(ConvertConfig(), StageMetrics("convert"))
        results.append((_outputs_by_stream(logic, batches), dict(logic.metrics.events)))
    assert set(results[0][0]) == set(shapes)
    assert all(len(v) >= 14 for v in results[0][0].values())
    assert results[1] == results[0]
    assert results[2] == results[0]
    assert results[0][1]["clipped_samples"] > 0
