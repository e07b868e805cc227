"""The event store's stage logic: results and audio in, stored events out (no sockets).

One wake-up, in order:

    audio (tensor/ or raw/)  -> its stream's ring (events.ring); clips whose audio is
                                now complete are cut and handed to the writer
    result/                  -> continuity per (stream, model): a gap across a restart of
                                this store is an outage, logged and stored; then its
                                events: an onset is stored at once (end 0), an offset
                                closes it (peak from the offset, mean from the window
                                scores seen between them) and schedules its clip
    timers                   -> clips of streams gone idle or ended, cursors to the store,
                                stored events committed by the writer republished

The clip of an event spans ``[onset - pre-roll, offset + post-roll)`` of the stream's
samples, at most ``max_clip_s`` long (then it is cut at that length, even while the
event is still on). It is cut as soon as the ring holds its last sample, or with what the
ring holds when the stream ends, restarts or goes idle.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from common.observe.metrics import StageMetrics
from common.observe.ratelog import RateLimitedLog
from common.runtime.stage import Now, StopFlag
from common.runtime.streams import Continuity, SeqCursor, StreamTable
from common.wire.codec import Audio
from common.wire.messages import Flag, Result
from common.wire.topics import Kind
from events.ring import AudioRing, frames_of, kind_of
from events.store import ClipStatus
from events.writer import ClipJob, ClipMissing, Cursors, EventRow, Outage, StoreWriter

log = logging.getLogger("events")

NS = 1_000_000_000
MAX_OPEN = 64  # labels on at once per stream and model (more: the newest onsets are not stored)
MAX_PENDING_CLIPS = 4096  # clips waiting for their audio, all streams
RECENT_SCORES = 256  # window scores kept per open event before they are folded into the running mean
MAX_RING_BYTES = 64 * 2**20  # one stream's ring at most (a 768 kHz 64-channel stream holds less than max_clip_s)
_DISC, _END = int(Flag.DISCONTINUITY), int(Flag.END)


@dataclass
class EventsConfig:
    """What the store keeps and how. Times in seconds."""

    audio: str = "tensor"  # tensor (converted, model rate) | raw (as captured)
    pre_roll_s: float = 1.0
    post_roll_s: float = 1.0
    max_clip_s: float = 20.0  # whole clip, pre- and post-roll included
    lag_s: float = 5.0  # how far results may trail their audio: the ring holds max_clip_s + lag_s
    idle_s: float = 10.0  # audio silent this long: clips waiting for it are cut with what arrived
    models: frozenset[str] = frozenset()  # only these models (empty: all)
    labels: frozenset[str] = frozenset()  # only these labels (empty: all)
    max_streams: int = 1024
    max_ring_bytes: int = 2**30  # all streams' rings together; a stream beyond it gets no clips (counted)
    cursor_every_s: float = 1.0


@dataclass
class OpenEvent:
    """A label that is on: its row id, onset, peak, and the window scores seen since."""

    id: int
    label: str
    start_ns: int
    peak: float
    source: str
    folded_sum: float = 0.0
    folded_n: int = 0
    recent: deque = field(default_factory=lambda: deque())  # (window start ns, score)
    clip: str = "none"  # none (not scheduled) | pending | done
    known_ns: int = 0  # audio time it is known to have been on until (no result missing since the onset)
    uncertain: bool = False  # results were missed while it was on: its offset may be among them

    def add_score(self, t_ns: int, score: float) -> None:
        self.recent.append((t_ns, score))
        if len(self.recent) > RECENT_SCORES:
            _, s = self.recent.popleft()
            self.folded_sum += s
            self.folded_n += 1

    def mean_before(self, t_ns: int) -> tuple[float, int]:
        """(mean score, windows) of the windows that started before ``t_ns``; the peak if none."""
        total, n = self.folded_sum, self.folded_n
        for t, s in self.recent:
            if t < t_ns:
                total += s
                n += 1
        return (min(max(total / n, 0.0), 1.0) if n else self.peak), n


@dataclass
class Track:
    """One (stream, model) pair of results: continuity, the labels on, the newest result seen."""

    stream: str
    model: str
    cursor: SeqCursor = field(default_factory=SeqCursor)
    open: dict[str, OpenEvent] = field(default_factory=dict)
    epoch: int = 0
    seq: int = -1
    end_ns: int = 0
    dirty: bool = False


@dataclass
class PendingClip:
    """A clip waiting for its audio. Indices are the stream's sample indices (ring)."""

    event: OpenEvent
    stream: str
    end_ns: int | None  # None while the event is on
    first: int | None = None  # first sample (onset - pre-roll), once the ring holds the onset
    stop: int | None = None  # one past the last sample, once known


class StreamAudio:
    """One stream's audio as the store keeps it: continuity, ring, source text, liveness."""

    def __init__(self) -> None:
        self.cursor = SeqCursor()
        self.ring: AudioRing | None = None
        self.source = ""
        self.last_rx = time.monotonic()
        self.ended = False
        self.pending: dict[int, PendingClip] = {}


class EventsLogic:
    """Keeps every event of the results it receives, with its clip (see the module docstring).

    ``next_id``: the first free event id. ``open_rows``: events left on by the last run,
    {(stream, model, label): (id, start_ns, peak, mean, windows, source, has_clip)}. ``cursors``: the
    newest result the last run saw, {(stream, model): (epoch, seq, end_ns)}.
    """

    def __init__(self, cfg: EventsConfig, writer: StoreWriter, metrics: StageMetrics, next_id: int = 1,
                 open_rows: dict | None = None, cursors: dict | None = None, stop: StopFlag | None = None) -> None:
        self.cfg, self.writer, self.metrics, self.stop = cfg, writer, metrics, stop
        self.next_id = self.first_id = next_id
        self.audio_kind = Kind.RAW if cfg.audio == "raw" else Kind.TENSOR
        self.audio: StreamTable[StreamAudio] = StreamTable(
            cfg.max_streams, metrics, "audio streams", finished=lambda s: s.ended and not s.pending)
        self.tracks: StreamTable[Track] = StreamTable(cfg.max_streams, metrics, "stream/model pairs")
        self.left_open = dict(open_rows or {})
        self.saved_cursors = dict(cursors or {})
        self.n_pending = 0
        self.outages = 0
        self.warn = RateLimitedLog(log)
        self._next_cursor_flush = 0.0
        self._next_idle_check = 0.0
        self._refused_seen = 0

    # -- the batch -----------------------------------------------------------------------------

    def handle(self, batch: list, now: Now) -> list[bytes]:
        for msg in batch:
            if isinstance(msg, Result):
                self._result(msg, now)
            elif isinstance(msg, Audio) and msg.kind is self.audio_kind:
                self._audio(msg, now)
        return self.tick(now)

    def tick(self, now: Now) -> list[bytes]:
        if self.writer.error is not None and self.stop is not None and not self.stop:
            log.error("the event store's writer stopped (%s): nothing more can be stored; stopping", self.writer.error)
            self.stop.set()  # the process exits non-zero (events.cli)
        if now.mono >= self._next_idle_check:
            self._next_idle_check = now.mono + 0.5
            self._cut_idle(now.mono)
        if now.mono >= self._next_cursor_flush:
            self._next_cursor_flush = now.mono + self.cfg.cursor_every_s
            self._flush_cursors()
        refused = sum(self.writer.stats.refused.values())
        if refused > self._refused_seen:
            self.metrics.drop("store_queue_full", refused - self._refused_seen)
            self._refused_seen = refused
            self.warn.warning("queue_full", f"the store's writer is behind ({self.writer.queued} items queued): "
                                            f"{refused} update(s) refused so far")
        out = self.writer.take_published()
        if out:
            self.metrics.event("republished", len(out))
        return out

    def wake_in(self, now: Now) -> float | None:
        return 0.05 if self.writer.queued or self.n_pending else None

    def finish(self, now: Now) -> list[bytes]:
        """Cut every clip still waiting with the audio held, send the cursors, let the writer finish."""
        for sa in self.audio.values():
            self._cut_all(sa, now.mono)
        for track in self.tracks.values():  # still on: the next run carries on with these scores
            for ev in track.open.values():
                self._row(track, ev, 0, "open")
        self._flush_cursors()
        self.writer.close()
        return self.writer.take_published()

    def summary(self) -> str:
        w = self.writer.stats
        opened = sum(len(t.open) for t in self.tracks.values())
        return (f"events={self.next_id - self.first_id} open={opened} clips={w.clips} pending_clips={self.n_pending} "
                f"queued={self.writer.queued} refused={sum(w.refused.values())} failed_rows={w.failed_rows} "
                f"disk_full={w.disk_full} pruned={w.pruned} outages={self.outages}")

    # -- audio ---------------------------------------------------------------------------------

    def _audio(self, msg: Audio, now: Now) -> None:
        h = msg.header
        sa = self.audio.admit(h.stream, StreamAudio)
        if sa is None:
            return
        cont, missing = sa.cursor.check(h.epoch, h.seq, bool(h.flags & _DISC))
        if cont is Continuity.STALE:
            self.metrics.drop("stale_audio")
            return
        self.metrics.frame_in(h.stream)
        if missing:
            self.metrics.gap(h.stream, missing)
        sa.last_rx, sa.ended, sa.source = now.mono, bool(h.flags & _END), h.source or sa.source
        kind = kind_of(h.format)
        ring = sa.ring
        if ring is None or not ring.matches(h.rate, h.channels, kind) or cont in (Continuity.NEW_EPOCH,
                                                                                 Continuity.RESTART):
            if ring is not None:
                self._cut_all(sa, now.mono)  # what the old epoch (or format) holds is all its clips will get
            if ring is None or not ring.matches(h.rate, h.channels, kind):
                ring = sa.ring = self._new_ring(sa, h.stream, h.rate, h.channels, kind)
                if ring is None:
                    return
            ring.reset(h.offset)
        ring.push(frames_of(msg), h.offset, h.t_capture_ns, h.lost)
        if sa.pending:
            self._cut_ready(sa, now.mono)

    def _new_ring(self, sa: StreamAudio, stream: str, rate: int, channels: int, kind) -> AudioRing | None:
        """A ring of max_clip_s + lag_s for the stream (less if one ring would pass MAX_RING_BYTES),
        within the budget of all rings; None (counted) beyond it."""
        sa.ring = None
        per_second = rate * channels * kind.dtype.itemsize
        capacity = min(int((self.cfg.max_clip_s + self.cfg.lag_s) * rate) + 1, MAX_RING_BYTES // (channels *
                                                                                               kind.dtype.itemsize))
        held = sum(other.ring.nbytes for other in self.audio.values() if other.ring is not None)
        if held + capacity * channels * kind.dtype.itemsize > self.cfg.max_ring_bytes:
            self.metrics.drop("ring_budget")
            self.warn.warning("ring_budget", f"stream {stream}: no room for its audio ({held / 2**20:.0f} MiB of "
                                             "rings held); its events get no clips")
            return None
        if capacity < (self.cfg.max_clip_s + self.cfg.lag_s) * rate:
            self.warn.warning("ring_cap", f"stream {stream}: {per_second / 1e6:.1f} MB/s of audio; its ring holds "
                                          f"{capacity / rate:.1f} s, clips are at most that long")
        return AudioRing(rate, channels, kind, capacity)

    # -- results -------------------------------------------------------------------------------

    def _result(self, r: Result, now: Now) -> None:
        cfg = self.cfg
        if cfg.models and r.model not in cfg.models:
            return
        key = f"{r.stream}/{r.model}"
        track = self.tracks.admit(key, lambda: self._new_track(r))
        if track is None:
            return
        cont, missing = track.cursor.check(r.epoch, r.seq, bool(r.flags & _DISC))
        if cont is Continuity.STALE:
            return
        if cont is Continuity.FIRST:
            self._after_restart(track, r)
        elif missing:
            self.metrics.gap(key, missing)
            self._outage(track, r, missing, "transit")
        for ev in track.open.values():
            if not ev.uncertain:
                ev.known_ns = max(ev.known_ns, r.end_ns)
        restarted = cont in (Continuity.NEW_EPOCH, Continuity.RESTART)
        for ev in r.events:
            if cfg.labels and ev.label not in cfg.labels:
                continue
            if ev.state == "start":
                self._start(track, ev.label, ev.t_ns, ev.score, now)
            else:
                self._stop(track, ev.label, ev.since_ns, ev.t_ns, ev.score, "closed", now)
        if restarted or r.final:  # labels the old epoch left on will never get their stop
            for ev in list(track.open.values()):
                if ev.start_ns < r.start_ns or r.final:
                    self._cut_event(track, ev, now)
        for lbl in r.labels:
            ev = track.open.get(lbl.name)
            if ev is not None and r.start_ns >= ev.start_ns:
                ev.add_score(r.start_ns, lbl.score)
                ev.peak = max(ev.peak, lbl.score)
        track.epoch, track.seq, track.end_ns, track.dirty = r.epoch, r.seq, r.end_ns, True
        self.metrics.frame_in(r.stream)

    def _new_track(self, r: Result) -> Track:
        track = Track(r.stream, r.model)
        for (stream, model, label), (rid, start_ns, peak, mean, windows, source, has_clip) in list(
                self.left_open.items()):
            if stream == r.stream and model == r.model:  # left on by the last run: its offset may still come
                ev = OpenEvent(rid, label, start_ns, peak, source, folded_sum=mean * windows, folded_n=windows,
                               known_ns=start_ns, clip="done" if has_clip else "none")
                saved = self.saved_cursors.get((stream, model))
                if saved is not None:
                    ev.known_ns = max(start_ns, saved[2])
                track.open[label] = ev
                del self.left_open[(stream, model, label)]
        return track

    def _after_restart(self, track: Track, r: Result) -> None:
        """The first result of a pair this run: results after the one the last run saw were missed."""
        saved = self.saved_cursors.pop((r.stream, r.model), None)
        if saved is None:
            return
        epoch, seq, end_ns = saved
        if epoch == r.epoch and r.seq > seq + 1:
            self._outage(track, r, r.seq - seq - 1, "store_down", from_ns=end_ns)
        elif epoch != r.epoch and r.start_ns > end_ns:
            self._outage(track, r, -1, "store_down", from_ns=end_ns)
        elif epoch == r.epoch and r.seq == seq + 1:
            return  # nothing missed: what the last run left on is still on

    def _outage(self, track: Track, r: Result, missing: int, cause: str, from_ns: int | None = None) -> None:
        from_ns = track.end_ns if from_ns is None else from_ns
        self.outages += 1
        for ev in track.open.values():  # their offsets may be among the missed results
            ev.uncertain = True
        what = f"{missing} result(s)" if missing >= 0 else "results (the stream restarted meanwhile)"
        why = "while the event store was down" if cause == "store_down" else "in transit"
        self.warn.warning(f"outage:{cause}", f"stream {r.stream} model {r.model}: {what} missed {why}, "
                                             f"audio time {_clock(from_ns)} to {_clock(r.start_ns)} "
                                             f"({(r.start_ns - from_ns) / 1e9:.1f} s); events in it are not stored")
        self.writer.submit(Outage(r.stream, r.model, from_ns, r.start_ns, missing, cause))

    def _start(self, track: Track, label: str, t_ns: int, score: float, now: Now) -> None:
        old = track.open.get(label)
        if old is not None:  # its stop never arrived (lost, or the classifier restarted)
            self._cut_event(track, old, now)
        if len(track.open) >= MAX_OPEN:
            self.metrics.drop("too_many_open_events")
            self.warn.warning("max_open", f"stream {track.stream} model {track.model}: more than {MAX_OPEN} labels "
                                          f"on at once; {label} at {_clock(t_ns)} not stored")
            return
        sa = self.audio.get(track.stream)
        ev = OpenEvent(self._new_id(), label, t_ns, score, sa.source if sa else "", known_ns=t_ns)
        track.open[label] = ev
        self._row(track, ev, 0, "open")
        self._schedule_clip(track, ev, None, now)

    def _stop(self, track: Track, label: str, since_ns: int, t_ns: int, peak: float, status: str, now: Now) -> None:
        ev = track.open.get(label)
        if ev is None or ev.start_ns != since_ns:
            if ev is not None:  # a different span than the one on: that one ended unseen
                self._cut_event(track, ev, now)
            sa = self.audio.get(track.stream)  # its onset came before this run started: stored from the offset
            ev = OpenEvent(self._new_id(), label, since_ns, peak, sa.source if sa else "")
        else:
            del track.open[label]
        ev.peak = max(ev.peak, peak)
        self._row(track, ev, t_ns, status)
        if ev.clip == "none":
            self._schedule_clip(track, ev, t_ns, now)
        elif ev.clip == "pending":
            sa = self.audio.get(track.stream)
            p = sa.pending.get(ev.id) if sa else None
            if p is not None:
                p.end_ns = t_ns
                self._cut_ready(sa, now.mono)

    def _cut_event(self, track: Track, ev: OpenEvent, now: Now) -> None:
        """Close ``ev`` whose offset will never come: it ends where it was last known to be on."""
        self._stop(track, ev.label, ev.start_ns, max(ev.known_ns, ev.start_ns), ev.peak, "cut", now)

    def _row(self, track: Track, ev: OpenEvent, end_ns: int, status: str) -> None:
        mean, windows = ev.mean_before(end_ns if end_ns else 2**63 - 1)
        self.writer.submit(EventRow(ev.id, track.stream, track.model, ev.label, ev.start_ns, end_ns, ev.peak, mean,
                                    windows, status, ev.source))

    def _new_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid

    # -- clips ---------------------------------------------------------------------------------

    def _schedule_clip(self, track: Track, ev: OpenEvent, end_ns: int | None, now: Now) -> None:
        if self.cfg.audio == "none":
            self.writer.submit(ClipMissing(ev.id, ClipStatus.NO_AUDIO))
            ev.clip = "done"
            return
        # No audio of the stream yet (results can overtake it at start): it gets idle_s to arrive.
        sa = self.audio.admit(track.stream, StreamAudio)
        if sa is None or self.n_pending >= MAX_PENDING_CLIPS:
            self.metrics.drop("too_many_pending_clips" if sa is not None else "no_room_for_audio")
            self.writer.submit(ClipMissing(ev.id, ClipStatus.DROPPED))
            ev.clip = "done"
            return
        if sa.ring is None:
            sa.last_rx = now.mono
        sa.pending[ev.id] = PendingClip(ev, track.stream, end_ns)
        self.n_pending += 1
        ev.clip = "pending"
        self._cut_ready(sa, now.mono)

    def _cut_ready(self, sa: StreamAudio, now: float, force: bool = False) -> None:
        """Cut every pending clip of ``sa`` whose last sample has arrived, or whose offset is known and
        the stream ended (no more audio comes); with ``force`` every one, with the audio held."""
        ring = sa.ring
        pre = int(self.cfg.pre_roll_s * ring.rate) if ring else 0
        post = int(self.cfg.post_roll_s * ring.rate) if ring else 0
        longest = int(self.cfg.max_clip_s * ring.rate) if ring else 0
        for p in list(sa.pending.values()):
            if ring is not None and ring.anchors:
                if p.first is None and ring.end_ns > p.event.start_ns:
                    p.first = ring.index_at(p.event.start_ns) - pre
                if p.first is not None and p.stop is None:
                    if p.end_ns is not None and ring.end_ns > p.end_ns:
                        p.stop = min(ring.index_at(p.end_ns) + post, p.first + longest)
                    elif p.end_ns is None and ring.end >= p.first + longest:
                        p.stop = p.first + longest  # capped while the event is still on
            if force or (p.stop is not None and ring.end >= p.stop) or (sa.ended and p.end_ns is not None):
                self._cut(sa, p)

    def _cut(self, sa: StreamAudio, p: PendingClip) -> None:
        ev = p.event
        del sa.pending[ev.id]
        self.n_pending -= 1
        ev.clip = "done"
        ring = sa.ring
        if ring is None or not ring.anchors:
            self.writer.submit(ClipMissing(ev.id, ClipStatus.NO_AUDIO))
            return
        rate = ring.rate
        first, stop = p.first, p.stop
        if first is None:
            first = ring.index_at(ev.start_ns) - int(self.cfg.pre_roll_s * rate)
        if stop is None:
            stop = ring.end if p.end_ns is None else ring.index_at(p.end_ns) + int(self.cfg.post_roll_s * rate)
            stop = min(stop, first + int(self.cfg.max_clip_s * rate))
        first, stop = max(first, ring.start), min(stop, ring.end)  # what the ring still (or already) holds
        samples = ring.read(first, stop)
        if samples.shape[0] == 0:
            self.writer.submit(ClipMissing(ev.id, ClipStatus.NO_AUDIO))
            return
        stop = first + samples.shape[0]
        gap_ms = ring.gap_samples(first, stop) * 1000 // ring.rate
        if not self.writer.submit(ClipJob(ev.id, p.stream, ev.start_ns, samples, ring.rate, ring.kind, first,
                                          ring.time_at(first), ring.time_at(stop), gap_ms)):
            self.writer.submit(ClipMissing(ev.id, ClipStatus.DROPPED))

    def _cut_all(self, sa: StreamAudio, now: float) -> None:
        if sa.pending:
            self._cut_ready(sa, now, force=True)

    def _cut_idle(self, now: float) -> None:
        """Streams whose audio stopped for idle_s: their clips get what arrived; results with no audio at all
        give up after idle_s too."""
        for name, sa in self.audio.items():
            if now - sa.last_rx <= self.cfg.idle_s:
                continue
            if sa.pending:
                self.warn.log(logging.INFO, "idle_cut", f"stream {name}: no audio for {now - sa.last_rx:.0f} s: "
                                                        f"cutting {len(sa.pending)} clip(s) with the audio held")
                self._cut_all(sa, now)
            if sa.ended:  # over, and its last results had idle_s to arrive: the ring's memory goes back
                self.audio.pop(name)

    def _flush_cursors(self) -> None:
        rows = []
        for track in self.tracks.values():
            if track.dirty:
                rows.append((track.stream, track.model, track.epoch, track.seq, track.end_ns))
                track.dirty = False
        if rows:
            self.writer.submit(Cursors(rows))


def _clock(ns: int) -> str:
    s, rem = divmod(ns, NS)
    return time.strftime("%H:%M:%S", time.gmtime(s)) + f".{rem // 1_000_000:03d}"
