"""``soundbus record | replay | info | export``: recordings of wire messages (format: common.recording.format).

- record: subscribe (topics filtered at the publisher), validate each message, write its
  exact bytes with the receive time; bad messages are counted, never recorded.
- replay: republish the messages byte for byte (v1 recordings as the v2 messages they stand
  for), with the recorded timing scaled by ``--speed`` or as fast as the consumers take
  them (``--fast``); never drops.
- info: what a recording holds (streams, formats, durations, gaps, damage).
- export: one audio stream to WAV.

record and replay run on the shared stage runtime. Also runnable as
``python -m common.recording.cli COMMAND ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common.cli.main import add_stage_options, float_in, inputs_of, outputs_of, socket_options, stage_metrics, \
    verbosity
from common.errors import UserError
from common.observe.ratelog import RateLimitedLog
from common.recording.export import RecordingSummary, WavWriter, interleaved_bytes
from common.recording.format import Problem, Record, RecordingError, RecordingReader, RotatingWriter, default_meta
from common.recording.messages import record_bytes, record_message
from common.runtime.stage import Now, Runtime, StopFlag, setup_logging
from common.runtime.streams import SeqCursor, StreamTable
from common.transport.sockets import DEFAULT_RAW, DEFAULT_RESULT, DEFAULT_TENSOR
from common.wire.codec import Audio, ProtocolError, decode, encode, encode_audio, message_stream
from common.wire.topics import Kind, topic_for

log = logging.getLogger("soundbus.recording")

ALL_KINDS = [k.value for k in Kind]
DEFAULT_OUT = {"raw": DEFAULT_RAW, "tensor": DEFAULT_TENSOR, "result": DEFAULT_RESULT, "hb": DEFAULT_RAW,
               "event": DEFAULT_RESULT}
REPLAY_LINGER_MS = 10_000  # at the end, queued messages get this long to reach slow consumers
MAX_FILL_S = 60.0  # export: a gap longer than this is not filled with silence (a damaged offset)


# ---------------------------------------------------------------------------------------
# progress


class ProgressLine:
    """A rich progress line on stderr when it is a terminal; nothing at all otherwise."""

    def __init__(self, label: str, total: float | None = None, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self.info = ""
        self._last = 0.0
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        cols = [TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("{task.fields[info]}")]
        if total:
            cols.insert(1, BarColumn())
        self._p = Progress(*cols, console=Console(stderr=True), transient=False)
        self._task = self._p.add_task(label, total=total, info="")
        self._p.start()

    def update(self, completed: float | None = None, force: bool = False) -> None:
        """Refresh at most 5 times a second; ``info`` is the text shown after the bar."""
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.2:
            self._last = now
            self._p.update(self._task, completed=completed, info=self.info)

    def close(self) -> None:
        if self.enabled:
            self._p.update(self._task, completed=self.total, info=self.info)
            self._p.stop()


def _open_all(paths: Sequence[str]) -> list[RecordingReader]:
    """Check every file up front so a bad name fails before any socket opens."""
    readers = []
    try:
        for p in paths:
            readers.append(RecordingReader(p))
    except RecordingError:
        for r in readers:
            r.close()
        raise
    return readers


def _records(paths: Sequence[str], problems: list[Problem], progress: ProgressLine | None = None) -> Iterator[Record]:
    """Records of all files in order; progress counts bytes across files."""
    done = 0
    for r in _open_all(paths):
        try:
            for rec in r:
                if progress:
                    progress.update(done + r.position)
                yield rec
        finally:
            done += r.size
            problems.extend(r.problems)
            r.close()


def _total_bytes(paths: Sequence[str]) -> int:
    return sum(Path(p).stat().st_size for p in paths if Path(p).exists())


# ---------------------------------------------------------------------------------------
# record


class RecordLogic:
    """Writes every valid message it receives, exactly as received, with its receive time."""

    def __init__(self, writer: RotatingWriter, metrics: Any, progress: ProgressLine, stop: StopFlag,
                 deadline: float | None, max_streams: int) -> None:
        self.writer, self.metrics, self.progress, self.stop, self.deadline = writer, metrics, progress, stop, deadline
        self.cursors: StreamTable[SeqCursor] = StreamTable(max_streams, metrics, "topics")
        self.t_start = time.monotonic()

    def handle(self, batch: list[tuple[Any, bytes]], now: Now) -> list[bytes]:
        for msg, data in batch:
            try:
                self.writer.write([data], now.wall_ns)
            except OSError as e:  # disk full, file system gone: what is written so far stays readable
                raise UserError(f"cannot write {self.writer.current.path} ({e.strerror}); the file holds "
                                "everything up to now: free some space or record elsewhere.") from None
            topic = data[: data.index(b"\0")].decode()
            cursor = self.cursors.admit(topic, SeqCursor)  # None past --max-streams: written, not tracked
            if cursor is None:
                continue
            stream = message_stream(msg)
            self.metrics.frame_in(stream)
            seq = _seq(msg)
            if seq is not None:
                _, missing = cursor.check(_epoch(msg), seq)
                if missing:
                    self.metrics.gap(stream, missing)
        return self.tick(now)

    def tick(self, now: Now) -> list[bytes]:
        self.writer.maybe_flush()
        elapsed = now.mono - self.t_start
        self.progress.info = (f"{self.writer.records} msgs  {self.writer.bytes / 1e6:.1f} MB  "
                              f"{self.writer.records / max(elapsed, 1e-9):.0f} msg/s")
        self.progress.update()
        if self.deadline is not None and now.mono >= self.deadline:
            self.stop.set()
        return []

    def wake_in(self, now: Now) -> float | None:
        return None if self.deadline is None else self.deadline - now.mono

    def finish(self, now: Now) -> list[bytes]:
        return []

    def summary(self) -> str:
        return f"recorded={self.writer.records}"


def _epoch(msg: Any) -> int:
    return msg.header.epoch if isinstance(msg, Audio) else getattr(msg, "epoch", 0)


def _seq(msg: Any) -> int | None:
    """The message's place in its topic's sequence; None for kinds without one (a heartbeat repeats
    the next audio seq, stored events are numbered per store, not per topic): no gaps are counted for them."""
    if isinstance(msg, Audio):
        return msg.header.seq
    return getattr(msg, "seq", None)


def cmd_record(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    # strftime codes make a new name per start, so a restarted recorder (a container) never meets its old file.
    args.file = time.strftime(args.file, time.gmtime())
    kinds = args.kind or ALL_KINDS
    streams: list[str | None] = list(args.stream) if args.stream else [None]
    prefixes = sorted({topic_for(k, s) for k in kinds for s in streams})
    inputs, opts = inputs_of(args), socket_options(args)
    metrics = stage_metrics(args, "record")
    meta = default_meta(inputs=inputs, kinds=kinds, streams=args.stream or [], argv=sys.argv[1:])
    writer = RotatingWriter(
        args.file,
        rotate_bytes=int(args.rotate_mb * 1e6) if args.rotate_mb else None,
        rotate_s=args.rotate_s,
        meta=meta,
        overwrite=args.force,
        fsync_s=args.fsync_s,
    )
    stop = StopFlag()
    progress = ProgressLine(f"recording {args.file}")
    deadline = time.monotonic() + args.duration if args.duration else None
    logic = RecordLogic(writer, metrics, progress, stop, deadline, args.max_streams)
    try:
        with Runtime("record", metrics, stop, args.health_file) as rt:
            inbox = rt.inbox(inputs, prefixes, opts, keep_bytes=True)
            log.info("ready (recording %s to %s)", ", ".join(p.decode() for p in prefixes), args.file)
            rt.run(logic, inbox, None)
    finally:
        try:
            writer.close()
        except OSError as e:
            log.error("closing %s failed: %s", writer.current.path, e.strerror)
        progress.close()
    log.info("recorded %d messages (%d bytes) to %s; %s", writer.records, writer.bytes,
             ", ".join(str(p) for p in writer.paths), metrics.summary())
    return 0


# ---------------------------------------------------------------------------------------
# replay


class EpochMap:
    """New epochs for replayed streams: one per (topic, recorded epoch), distinct per pass."""

    def __init__(self) -> None:
        self._next = 0
        self._map: dict[tuple[bytes, int], int] = {}

    def reset(self) -> None:
        """Start a new pass: every stream gets a fresh epoch again."""
        self._map.clear()

    def epoch_for(self, topic: bytes, epoch: int) -> int:
        key = (topic, epoch)
        if key not in self._map:
            if len(self._map) > 100_000:
                self._map.clear()
            self._next = max(time.time_ns(), self._next + 1)  # wall-clock ns: unique and increasing
            self._map[key] = self._next
        return self._map[key]


def with_new_epoch(data: bytes, epochs: EpochMap) -> bytes | None:
    """``data`` (a v2 message) with its epoch replaced by a fresh one for its stream."""
    try:
        msg = decode(data)
    except ProtocolError as e:
        log.warning("skipping a record that does not decode: %s", e)
        return None
    topic = data[: data.index(b"\0")]
    if isinstance(msg, Audio):
        msg.header.epoch = epochs.epoch_for(topic, msg.header.epoch)
        return encode_audio(msg.kind, msg.header, msg.payload)
    if hasattr(msg, "epoch"):
        msg.epoch = epochs.epoch_for(topic, msg.epoch)
    return encode(msg)


class ReplayLogic:
    """Republishes records when their recorded receive time (scaled by ``speed``) comes due."""

    def __init__(self, args: argparse.Namespace, stop: StopFlag) -> None:
        self.args, self.stop = args, stop
        self.kinds, self.streams = set(args.kind or ALL_KINDS), set(args.stream or [])
        self.epochs = EpochMap()
        self.problems: list[Problem] = []
        self.sent = self.passes = 0
        self.late_logged = False
        self._next: Record | None = None
        self._start_pass()

    def _start_pass(self) -> None:
        self.epochs.reset()
        self.progress = ProgressLine(f"replay pass {self.passes + 1}", total=_total_bytes(self.args.files))
        self.records = _records(self.args.files, self.problems if self.passes == 0 else [], self.progress)
        self.t0_rec: int | None = None
        self.t_virtual = 0
        self.t0 = time.monotonic()
        self._next = self._take()

    def _take(self) -> Record | None:
        for rec in self.records:
            if rec.kind in self.kinds and (not self.streams or rec.stream in self.streams):
                return rec
        return None

    def _due_in(self, rec: Record, now: float) -> float:
        if self.t0_rec is None or self.args.fast:
            return 0.0
        t = max(self.t_virtual, rec.t_recv_ns)  # a clock stepped back never waits negative time
        return self.t0 + (t - self.t0_rec) / 1e9 / self.args.speed - now

    def handle(self, batch: list[Any], now: Now) -> list[bytes]:
        return self.tick(now)

    def tick(self, now: Now) -> list[bytes]:
        out: list[bytes] = []
        while self._next is not None and len(out) < 256:
            rec = self._next
            delay = self._due_in(rec, now.mono)
            if delay > 0:
                break
            if delay < -1.0 and not self.late_logged:
                log.warning("replay is %.1f s behind the recorded timing (a consumer is slow)", -delay)
                self.late_logged = True
            if self.t0_rec is None:
                self.t0_rec, self.t0 = rec.t_recv_ns, now.mono
            self.t_virtual = max(self.t_virtual, rec.t_recv_ns)
            try:
                data = record_bytes(rec)
            except ProtocolError as e:
                log.warning("skipping the record at byte %d: %s", rec.offset, e)
                data = None
            if data is not None and (self.args.new_epoch or self.passes > 0):  # a second pass must look like a restart
                data = with_new_epoch(data, self.epochs)
            if data is not None:
                out.append(data)
                self.sent += 1
            self.progress.info = f"{self.sent} msgs, {(self.t_virtual - self.t0_rec) / 1e9:.1f} s into the recording"
            self._next = self._take()
        if self._next is None and not out:
            self.progress.close()
            self.passes += 1
            if self.t0_rec is None:
                log.warning("nothing to replay (no record matches the selection)")
                self.stop.set()
            elif self.args.loop:
                self._start_pass()
            else:
                self.stop.set()
        return out

    def wake_in(self, now: Now) -> float | None:
        return None if self._next is None else self._due_in(self._next, now.mono)

    def finish(self, now: Now) -> list[bytes]:
        return []

    def summary(self) -> str:
        return f"replayed={self.sent}"


def cmd_replay(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    readers = _open_all(args.files)
    first_kind = next((rec.kind for r in readers for rec in r), "raw")
    for r in readers:
        r.close()
    outputs = outputs_of(args) if args.output else [DEFAULT_OUT.get(first_kind, DEFAULT_RAW)]
    opts = socket_options(args)
    opts.nodrop = True  # lossless: a full consumer queue makes the replay wait instead of dropping
    opts.linger_ms = REPLAY_LINGER_MS
    stop = StopFlag()
    metrics = stage_metrics(args, "replay")
    t_begin = time.monotonic()
    with Runtime("replay", metrics, stop, args.health_file) as rt:
        outbox = rt.outbox(outputs, opts)
        log.info("ready (replaying %s on %s)", " ".join(args.files), ", ".join(outputs))
        if args.wait_subscriber > 0 and not outbox.wait_for_subscriber(args.wait_subscriber, stop) and not stop:
            log.warning("no subscriber after %.1f s; replaying anyway", args.wait_subscriber)
        logic = ReplayLogic(args, stop)
        rt.run(logic, _Idle(rt.poller), outbox)
    for p in logic.problems:
        log.warning("damaged recording: %s", p)
    log.info("replayed %d messages in %.2f s (%d pass%s)", logic.sent, time.monotonic() - t_begin, logic.passes,
             "es" * (logic.passes != 1))
    return 0


class _Idle:
    """The input of a stage that has none (replay): waits on the poller (subscriptions, links) only."""

    received = 0

    def __init__(self, poller: Any) -> None:
        self.poller = poller

    def receive(self, timeout_s: float, gather_s: float = 0.0, limit: int = 0) -> list[Any]:
        self.poller.wait(timeout_s)
        return []

    def housekeeping(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------
# info and export


def cmd_info(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    summary = RecordingSummary()
    problems: list[Problem] = []
    for r in _open_all(args.files):
        summary.add_file(str(r.path), r.size, r.version, r.meta)
        r.close()
    for rec in _records(args.files, problems, ProgressLine("reading", total=_total_bytes(args.files))):
        summary.add(rec)
    summary.problems = problems
    if args.json:
        print(json.dumps(summary.to_dict(), indent=1))
    else:
        print(summary.text())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    problems: list[Problem] = []
    kinds = [args.kind] if args.kind else ["raw", "tensor"]
    found = {rec.kind for r in _open_all(args.files) for rec in r if rec.stream == args.stream and rec.kind in kinds}
    if not found:
        raise UserError(f"no raw or tensor messages of stream {args.stream!r} in the recording; see `soundbus info` "
                        "for its streams.")
    if len(found) > 1:
        raise UserError(f"stream {args.stream!r} has both raw and tensor messages; choose one with --kind.")
    kind = found.pop()
    wav: WavWriter | None = None
    expect: tuple[int, int] | None = None  # (epoch, next offset) of the last message written
    filled = messages = unfilled = 0
    max_fill = None
    progress = ProgressLine(f"export {args.stream}", total=_total_bytes(args.files))
    try:
        for rec in _records(args.files, problems, progress):
            if rec.kind != kind or rec.stream != args.stream:
                continue
            try:
                msg, _ = record_message(rec)
            except ProtocolError as e:
                log.warning("skipping record at byte %d: %s", rec.offset, e)
                continue
            h = msg.header
            if wav is None:
                wav = WavWriter(args.file, h.rate, h.channels, h.format.value)
                max_fill = int(args.max_fill_s * h.rate)
            elif (h.rate, h.channels, h.format.value) != (wav.rate, wav.channels, wav.format):
                raise UserError(
                    f"stream {args.stream} changes from {wav.rate} Hz {wav.channels} ch {wav.format} to "
                    f"{h.rate} Hz {h.channels} ch {h.format.value} (byte {rec.offset}); a WAV holds one format."
                )
            if expect is not None and expect[0] == h.epoch and h.offset > expect[1] and not args.no_fill:
                gap = h.offset - expect[1]
                if gap <= max_fill:
                    wav.write_silence(gap)  # a gap keeps its duration in the WAV
                    filled += gap
                else:
                    unfilled += 1
                    log.warning("gap of %.1f s at byte %d not filled: over --max-fill-s %g", gap / h.rate, rec.offset,
                                args.max_fill_s)
            wav.write(interleaved_bytes(msg))
            expect = (h.epoch, h.offset + h.samples)
            messages += 1
            progress.info = f"{messages} msgs, {wav.samples / wav.rate:.1f} s"
    finally:
        progress.close()
        if wav is not None:
            wav.close()
    assert wav is not None
    log.info(
        "wrote %s: %d messages, %d samples (%.3f s at %d Hz), %d silent samples filled in gaps%s",
        args.file, messages, wav.samples, wav.samples / wav.rate, wav.rate, filled,
        f", {unfilled} gap(s) too long to fill" if unfilled else "",
    )
    return 0


# ---------------------------------------------------------------------------------------
# parsers


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("record", help="record wire messages (exact bytes, receive times) to a file")
    p.add_argument(
        "-o", "--file", required=True, metavar="FILE",
        help="recording to create (see --force); strftime codes are filled in (UTC) at start, e.g. "
        "rec-%%Y%%m%%dT%%H%%M%%SZ.sbrec for a new file per start ('%%%%' for a literal %%)",
    )
    p.add_argument("--kind", action="append", choices=ALL_KINDS, help="kind to record; repeat (default: all)")
    p.add_argument("--stream", action="append", metavar="S", help="stream id to record; repeat (default: all)")
    p.add_argument("--duration", type=float_in(0.001, 365 * 86400, "s"), metavar="S",
                   help="stop after S seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--rotate-mb", type=float_in(0.001, 1e7, "MB"), metavar="MB",
                   help="start a new FILE.NNNN segment past MB megabytes")
    p.add_argument("--rotate-s", type=float_in(0.001, 365 * 86400, "s"), metavar="S",
                   help="start a new FILE.NNNN segment every S seconds")
    p.add_argument("--fsync-s", type=float_in(0.0, 3600, "s"), metavar="S",
                   help="fsync the file about every S seconds, so a power loss costs at most the last S s "
                   "(default: never; the OS writes back within about 30 s, a crashed recorder loses at most 0.2 s)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    add_stage_options(p, inputs=DEFAULT_RAW, outputs=None)
    p.set_defaults(func=cmd_record)

    p = subparsers.add_parser("replay", help="republish a recording with its original timing (or faster)")
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s); rotated segments in order")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float_in(0.001, 1e6), default=1.0, metavar="X",
                       help="timing scale: 2 = twice as fast")
    speed.add_argument("--fast", action="store_true", help="as fast as the consumers take it (never drops)")
    p.add_argument("--loop", action="store_true", help="replay again at the end, with new epochs, until stopped")
    p.add_argument("--stream", action="append", metavar="S", help="replay only stream S; repeat")
    p.add_argument("--kind", action="append", choices=ALL_KINDS, help="replay only this kind; repeat")
    p.add_argument("--new-epoch", action="store_true", help="give every stream a new epoch (consumers see a restart)")
    p.add_argument("--wait-subscriber", type=float_in(0, 86400, "s"), default=10.0, metavar="S",
                   help="wait up to S seconds for a first subscriber before sending (default 10; 0: don't)")
    add_stage_options(p, inputs=None, outputs="the default address of the first recorded kind")
    p.set_defaults(func=cmd_replay, default_outputs=None)

    p = subparsers.add_parser("info", help="streams, formats, durations, counts, gaps and damage of a recording")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _verbosity_flags(p)
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser("export", help="write one audio stream of a recording to WAV")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--stream", required=True, metavar="S", help="stream id (see `soundbus info`)")
    p.add_argument("--kind", choices=["raw", "tensor"], help="needed only if S has both")
    p.add_argument("-o", "--file", dest="file", required=True, metavar="OUT.wav")
    p.add_argument("--no-fill", action="store_true", help="do not fill sequence gaps with silence")
    p.add_argument("--max-fill-s", type=float_in(0, 86400, "s"), default=MAX_FILL_S, metavar="S",
                   help=f"fill gaps up to S seconds with silence, leave longer ones out (default {MAX_FILL_S:g})")
    _verbosity_flags(p)
    p.set_defaults(func=cmd_export)


def _verbosity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli.main import run

    return run(argv, registers=[register])


if __name__ == "__main__":
    sys.exit(main())
