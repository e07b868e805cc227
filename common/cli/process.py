"""A child process whose output lines are collected, so a launcher can wait on what it logs.

Used by ``soundbus up``, the tests and the benchmarks: stages announce ``ready``,
``subscriber joined`` and ``input connected`` in their logs, and whoever started them
waits for those lines instead of sleeping.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

_PR_SET_PDEATHSIG = 1
try:  # resolved here, in the parent: the child must only make the call (no loading between fork and exec)
    _prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, ask for SIGTERM when the parent dies, however it
    dies (Linux PR_SET_PDEATHSIG). Children of ``soundbus up`` must not outlive it (its
    terminal closed, SIGKILL of up itself), or they keep their ports and the next ``up``
    fails with "address in use"."""

    def child() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return child


class WaitTimeout(RuntimeError):
    """The awaited line did not appear; the message carries the process's last log lines."""


class ChildProcess:
    """A process in its own session (signals reach only it), with stdout/stderr collected by line.

    ``capture_stdout=False`` lets stdout pass through to ours (``up`` shows tail's output).
    ``on_stderr`` is called with each stderr line (``up`` forwards warnings with it).
    """

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[bytes] | None = None,
        capture_stdout: bool = True,
        on_stderr: Callable[[str], None] | None = None,
    ) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE if capture_stdout else None,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()) if _prctl is not None else None,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []  # stderr: the log
        self.out_lines: list[str] = []  # stdout
        self._cond = threading.Condition()
        self._on_stderr = on_stderr
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines, on_stderr), daemon=True).start()
        if capture_stdout:
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out_lines, None), daemon=True).start()

    def _pump(self, stream: IO[bytes], sink: list[str], echo: Callable[[str], None] | None) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._cond:
                sink.append(line)
                self._cond.notify_all()
            if echo is not None:
                echo(line)
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, count: int = 1, stdout: bool = False,
                 stop: object = None) -> str:
        """Block until ``count`` lines match ``pattern``; returns the last of them.

        Raises WaitTimeout on timeout, if the process exits first, or if ``stop`` becomes true.
        """
        rx = re.compile(pattern)
        sink = self.out_lines if stdout else self.lines
        deadline = time.monotonic() + timeout
        exited_at: float | None = None
        with self._cond:
            while True:
                hits = [ln for ln in sink if rx.search(ln)]
                if len(hits) >= count:
                    return hits[count - 1]
                now = time.monotonic()
                if self.proc.poll() is not None:
                    exited_at = exited_at or now
                    if now - exited_at > 0.3:  # let the pumps read what it wrote before exiting
                        raise WaitTimeout(f"{self.name} exited {self.proc.returncode} before /{pattern}/:\n{self.log()}")
                elif stop or now > deadline:
                    why = "was stopped" if stop else f"timed out after {timeout:g} s"
                    raise WaitTimeout(f"{self.name} {why} waiting for /{pattern}/:\n{self.log()}")
                self._cond.wait(0.1)

    @property
    def name(self) -> str:
        return " ".join(self.argv[1:4]) if len(self.argv) > 1 else self.argv[0]

    def log(self, last: int = 60) -> str:
        with self._cond:
            return "\n".join(self.lines[-last:])

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to its process group; SIGKILL after ``timeout`` s. Returns the exit code."""
        self.stop_report(sig, timeout)
        return self.proc.returncode

    def stop_report(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> str:
        """Like :meth:`stop`; says what happened: "exited" (already gone), "stopped", or "killed"
        (it ignored ``sig`` for ``timeout`` s and got SIGKILL)."""
        if self.proc.poll() is not None:
            return "exited"
        self.send_signal(sig)
        try:
            self.proc.wait(timeout)
            return "stopped"
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            return "killed"
