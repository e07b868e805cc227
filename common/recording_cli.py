"""``soundbus record | replay | info | export``: recordings of wire messages (format: common.recording).

- record: subscribe (topics filtered at the publisher), validate each message, write its
  exact frames with the receive time; bad messages are counted, never recorded.
- replay: republish the frames byte for byte, with the recorded timing scaled by
  ``--speed`` or as fast as the consumers take them (``--fast``); never drops.
- info: what a recording holds (streams, formats, durations, gaps, damage).
- export: one audio stream to WAV.

Also runnable as ``python -m common.recording_cli COMMAND ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import zmq

from common.cli import (
    add_stage_options,
    inputs_of,
    socket_options,
    stage_metrics,
    verbosity,
)
from common.protocol import Kind, ProtocolError, decode, decode_header, encode_header, replace, topic_for
from common.publisher import Publisher
from common.recording import Problem, Record, RecordingError, RecordingReader, RotatingWriter, default_meta
from common.recording_export import RecordingSummary, WavWriter, interleaved_bytes
from common.sockets import DEFAULT_RAW, DEFAULT_RESULT, DEFAULT_TENSOR, open_sub
from common.stage import RateLimitedLog, SequenceTracker, StopFlag, setup_logging

log = logging.getLogger("soundbus.recording")

ALL_KINDS = [k.value for k in Kind]
DEFAULT_OUT = {"raw": DEFAULT_RAW, "tensor": DEFAULT_TENSOR, "result": DEFAULT_RESULT, "hb": DEFAULT_RAW}
REPLAY_LINGER_MS = 10_000  # at the end, queued messages get this long to reach slow consumers


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


def _user_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A user's mistake (SystemExit with a message) prints that one sentence and exits 2."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
                return 2
            raise

    return run


def _fail(e: Exception) -> SystemExit:
    return SystemExit(f"soundbus: {e}")


def _open_all(paths: Sequence[str]) -> list[RecordingReader]:
    """Check every file up front so a bad name fails before any socket opens."""
    readers = []
    try:
        for p in paths:
            readers.append(RecordingReader(p))
    except RecordingError as e:
        for r in readers:
            r.close()
        raise _fail(e) from None
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


def cmd_record(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    # strftime codes make a new name per start, so a restarted recorder (a container) never meets its old file.
    args.file = time.strftime(args.file, time.gmtime())
    kinds = args.kind or ALL_KINDS
    streams: list[str | None] = list(args.stream) if args.stream else [None]
    prefixes = sorted({topic_for(k, s) for k in kinds for s in streams})
    if args.duration is not None and args.duration <= 0:
        raise SystemExit("soundbus: --duration must be a positive number of seconds.")
    opts = socket_options(args)
    metrics = stage_metrics(args, "record")
    meta = default_meta(inputs=inputs_of(args), kinds=kinds, streams=args.stream or [], argv=sys.argv[1:])
    try:
        writer = RotatingWriter(
            args.file,
            rotate_bytes=int(args.rotate_mb * 1e6) if args.rotate_mb else None,
            rotate_s=args.rotate_s,
            meta=meta,
            overwrite=args.force,
        )
    except RecordingError as e:
        raise _fail(e) from None
    stop = StopFlag()
    ctx = zmq.Context()
    sock = open_sub(ctx, inputs_of(args), prefixes, opts)
    tracker = SequenceTracker(metrics)
    badlog = RateLimitedLog(log)
    progress = ProgressLine(f"recording {args.file}")
    log.info("ready (recording %s to %s)", ", ".join(p.decode() for p in prefixes), args.file)
    t_start = time.monotonic()
    deadline = t_start + args.duration if args.duration else None
    try:
        while not stop:
            left_ms = 200 if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            if not sock.poll(min(200, left_ms)):
                writer.maybe_flush()
                continue
            for _ in range(1000):  # drain what is queued, then look at the clock again
                try:
                    frames = sock.recv_multipart(copy=False, flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_recv = time.time_ns()
                try:
                    msg = decode(frames)
                except ProtocolError as e:
                    metrics.bad_message(e.reason)
                    badlog.warning(e.reason, f"not recorded, invalid message: {e}")
                    continue
                writer.write([f.buffer for f in frames], t_recv)
                h = msg.header
                tracker.check(bytes(frames[0].buffer).decode(), h.epoch, h.seq)
                metrics.frame_in(h.stream)
            elapsed = time.monotonic() - t_start
            rate = writer.records / max(elapsed, 1e-9)
            progress.info = f"{writer.records} msgs  {writer.bytes / 1e6:.1f} MB  {rate:.0f} msg/s"
            progress.update()
            metrics.maybe_log_summary()
    except OSError as e:  # disk full, file system gone: what is written so far stays readable
        raise SystemExit(
            f"soundbus: cannot write {writer.current.path} ({e.strerror}); the file holds everything up to now: "
            f"free some space or record elsewhere."
        ) from None
    except RecordingError as e:  # a rotated segment could not be created
        raise _fail(e) from None
    finally:
        try:
            writer.close()
        except OSError as e:
            log.error("closing %s failed: %s", writer.current.path, e.strerror)
        progress.close()
        sock.close()
        if args.curve_secret is not None:
            from common.keys import stop_authenticators

            stop_authenticators()
        ctx.term()
    log.info(
        "recorded %d messages (%d bytes) to %s; %s",
        writer.records,
        writer.bytes,
        ", ".join(str(p) for p in writer.paths),
        metrics.summary(),
    )
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
            self._next = max(time.time_ns(), self._next + 1)  # wall-clock ns: unique and increasing
            self._map[key] = self._next
        return self._map[key]


def _with_new_epoch(frames: list[bytes], epochs: EpochMap) -> list[bytes] | None:
    try:
        h = decode_header(frames[1])
    except ProtocolError as e:
        log.warning("skipping a record whose header does not decode: %s", e)
        return None
    return [frames[0], encode_header(replace(h, epoch=epochs.epoch_for(frames[0], h.epoch))), *frames[2:]]


def _send(pub: Publisher, frames: Sequence[bytes], stop: StopFlag) -> bool:
    """Send, waiting while a consumer's queue is full (XPUB_NODROP); False if stopped."""
    while not pub.send(frames):
        if stop:
            return False
        stop.wait(0.002)
    return True


def cmd_replay(args: argparse.Namespace) -> int:
    setup_logging(verbosity(args))
    if args.speed <= 0:
        raise SystemExit(f"soundbus: --speed must be positive, got {args.speed}.")
    readers = _open_all(args.files)
    first_kind = next((rec.kind for r in readers for rec in r), "raw")
    for r in readers:
        r.close()
    outputs = args.output or [DEFAULT_OUT.get(first_kind, DEFAULT_RAW)]
    opts = socket_options(args)
    stop = StopFlag()
    ctx = zmq.Context()
    # Lossless: with nodrop a full consumer queue makes send fail (we wait) instead of dropping.
    pub = Publisher(ctx, outputs, dataclasses.replace(opts, nodrop=True))
    log.info("ready (replaying %s on %s)", " ".join(args.files), ", ".join(outputs))
    kinds, streams = set(args.kind or ALL_KINDS), set(args.stream or [])
    epochs = EpochMap()
    problems: list[Problem] = []
    sent = passes = 0
    t_begin = time.monotonic()
    try:
        waited = args.wait_subscriber > 0 and not pub.wait_for_subscriber(args.wait_subscriber, stop)
        if waited and not stop:
            log.warning("no subscriber after %.1f s; replaying anyway", args.wait_subscriber)
        while not stop:
            new_epoch = args.new_epoch or passes > 0  # a second pass must look like a restart
            epochs.reset()
            progress = ProgressLine(f"replay pass {passes + 1}", total=_total_bytes(args.files))
            t0_rec: int | None = None
            t_virtual = 0
            t0 = time.monotonic()
            late_logged = False
            for rec in _records(args.files, problems if passes == 0 else [], progress):
                if stop:
                    break
                if rec.kind not in kinds or (streams and rec.stream not in streams):
                    continue
                if t0_rec is None:
                    t0_rec = t_virtual = rec.t_recv_ns
                    t0 = time.monotonic()
                t_virtual = max(t_virtual, rec.t_recv_ns)  # a clock stepped back never waits negative time
                if not args.fast:
                    due = t0 + (t_virtual - t0_rec) / 1e9 / args.speed
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    if delay < -1.0 and not late_logged:
                        log.warning("replay is %.1f s behind the recorded timing (a consumer is slow)", -delay)
                        late_logged = True
                frames = _with_new_epoch(rec.frames, epochs) if new_epoch else rec.frames
                if frames is None:
                    continue
                if not _send(pub, frames, stop):
                    break
                sent += 1
                progress.info = f"{sent} msgs, {(t_virtual - t0_rec) / 1e9:.1f} s into the recording"
            progress.close()
            passes += 1
            if t0_rec is None:
                log.warning("nothing to replay (no record matches the selection)")
                break
            if not args.loop:
                break
    finally:
        pub.close(linger_ms=REPLAY_LINGER_MS)
        if args.curve_secret is not None:
            from common.keys import stop_authenticators

            stop_authenticators()
        ctx.term()
    for p in problems:
        log.warning("damaged recording: %s", p)
    elapsed = time.monotonic() - t_begin
    log.info("replayed %d messages in %.2f s (%d pass%s)", sent, elapsed, passes, "es" * (passes != 1))
    return 0


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
    if any(k not in ("raw", "tensor") for k in kinds):
        raise SystemExit("soundbus: export writes audio: choose --kind raw or tensor.")
    found = {rec.kind for r in _open_all(args.files) for rec in r if rec.stream == args.stream and rec.kind in kinds}
    if not found:
        raise SystemExit(f"soundbus: no raw or tensor messages of stream {args.stream!r} in the recording; "
                         f"see `soundbus info` for its streams.")
    if len(found) > 1:
        raise SystemExit(f"soundbus: stream {args.stream!r} has both raw and tensor messages; choose one with --kind.")
    kind = found.pop()
    wav: WavWriter | None = None
    expect: tuple[int, int] | None = None  # (epoch, next offset) of the last message written
    filled = messages = 0
    progress = ProgressLine(f"export {args.stream}", total=_total_bytes(args.files))
    try:
        for rec in _records(args.files, problems, progress):
            if rec.kind != kind or rec.stream != args.stream:
                continue
            try:
                msg = decode(rec.frames)
            except ProtocolError as e:
                log.warning("skipping record at byte %d: %s", rec.offset, e)
                continue
            h = msg.header
            if wav is None:
                wav = WavWriter(args.file, h.rate, h.channels, h.format)
            elif (h.rate, h.channels, h.format) != (wav.rate, wav.channels, wav.format):
                raise SystemExit(
                    f"soundbus: stream {args.stream} changes from {wav.rate} Hz {wav.channels} ch {wav.format} to "
                    f"{h.rate} Hz {h.channels} ch {h.format} (byte {rec.offset}); a WAV holds one format."
                )
            if expect is not None and expect[0] == h.epoch and h.offset > expect[1] and not args.no_fill:
                wav.write_silence(h.offset - expect[1])  # a gap keeps its duration in the WAV
                filled += h.offset - expect[1]
            wav.write(interleaved_bytes(msg))
            expect = (h.epoch, h.offset + h.frames)
            messages += 1
            progress.info = f"{messages} msgs, {wav.frames / wav.rate:.1f} s"
    finally:
        progress.close()
        if wav is not None:
            wav.close()
    assert wav is not None
    log.info(
        "wrote %s: %d messages, %d frames (%.3f s at %d Hz), %d silent frames filled in gaps",
        args.file, messages, wav.frames, wav.frames / wav.rate, wav.rate, filled,
    )
    return 0


# ---------------------------------------------------------------------------------------
# parsers


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("record", help="record wire messages (exact frames, receive times) to a file")
    p.add_argument(
        "-o", "--file", required=True, metavar="FILE",
        help="recording to create (see --force); strftime codes are filled in (UTC) at start, e.g. "
        "rec-%%Y%%m%%dT%%H%%M%%SZ.sbrec for a new file per start ('%%%%' for a literal %%)",
    )
    p.add_argument("--kind", action="append", choices=ALL_KINDS, help="kind to record; repeat (default: all)")
    p.add_argument("--stream", action="append", metavar="S", help="stream id to record; repeat (default: all)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until SIGINT/SIGTERM)")
    p.add_argument("--rotate-mb", type=float, metavar="MB", help="start a new FILE.NNNN segment past MB megabytes")
    p.add_argument("--rotate-s", type=float, metavar="S", help="start a new FILE.NNNN segment every S seconds")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    add_stage_options(p, inputs=DEFAULT_RAW, outputs=None)
    p.set_defaults(func=_user_errors(cmd_record))

    p = subparsers.add_parser("replay", help="republish a recording with its original timing (or faster)")
    p.add_argument("files", nargs="+", metavar="FILE", help="recording(s); rotated segments in order")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--speed", type=float, default=1.0, metavar="X", help="timing scale: 2 = twice as fast")
    speed.add_argument("--fast", action="store_true", help="as fast as the consumers take it (never drops)")
    p.add_argument("--loop", action="store_true", help="replay again at the end, with new epochs, until stopped")
    p.add_argument("--stream", action="append", metavar="S", help="replay only stream S; repeat")
    p.add_argument("--kind", action="append", choices=ALL_KINDS, help="replay only this kind; repeat")
    p.add_argument("--new-epoch", action="store_true", help="give every stream a new epoch (consumers see a restart)")
    p.add_argument("--wait-subscriber", type=float, default=10.0, metavar="S",
                   help="wait up to S seconds for a first subscriber before sending (default 10; 0: don't)")
    add_stage_options(p, inputs=None, outputs="the default address of the first recorded kind")
    p.set_defaults(func=_user_errors(cmd_replay), default_outputs=None)

    p = subparsers.add_parser("info", help="streams, formats, durations, counts, gaps and damage of a recording")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _verbosity_flags(p)
    p.set_defaults(func=_user_errors(cmd_info))

    p = subparsers.add_parser("export", help="write one audio stream of a recording to WAV")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--stream", required=True, metavar="S", help="stream id (see `soundbus info`)")
    p.add_argument("--kind", choices=["raw", "tensor"], help="needed only if S has both")
    p.add_argument("-o", "--file", dest="file", required=True, metavar="OUT.wav")
    p.add_argument("--no-fill", action="store_true", help="do not fill sequence gaps with silence")
    _verbosity_flags(p)
    p.set_defaults(func=_user_errors(cmd_export))


def _verbosity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import run

    return run(argv, registers=[register])


if __name__ == "__main__":
    sys.exit(main())
