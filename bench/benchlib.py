"""Helpers every benchmark shares: CPU time, percentiles, machine description, real processes.

Named ``benchlib`` and not ``common``: a script run as ``python bench/bench_x.py`` has
``bench/`` first on sys.path, so a ``bench/common.py`` would shadow the project's
``common`` package for every bench script.

Timing rules: CPU time comes from the kernel (time.process_time in-process,
/proc/<pid>/stat for a live child), wall time from time.perf_counter / time.time_ns,
and every figure is printed next to a baseline measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common.cli.process import ChildProcess

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------
# numbers

def percentiles(values: Sequence[float] | np.ndarray, ps: Iterable[float] = (50, 99)) -> dict[str, float]:
    """{'p50': ..., 'p99': ...} of ``values`` (same unit in and out); NaN when empty."""
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p:g}": (float(np.percentile(arr, p)) if arr.size else float("nan")) for p in ps}


def enveloped_noise(n_streams: int, samples: int, rate: int, env_hz: float, seed: int = 0) -> np.ndarray:
    """(n_streams, samples) float32 test audio for CPU figures: Gaussian noise under a slow sine
    envelope of ``env_hz`` to ``env_hz + 1`` Hz, different per stream."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    env = 0.5 + 0.5 * np.sin(2 * np.pi * (env_hz + rng.random((n_streams, 1))) * t)
    return (0.2 * env * rng.standard_normal((n_streams, samples))).astype(np.float32)


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN if the baseline is zero or missing."""
    return float(value) / float(baseline) if baseline else float("nan")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by a live process (and its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a live process in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def self_rss_bytes() -> int:
    return proc_rss_bytes(os.getpid())


# ---------------------------------------------------------------------------------------
# machine

def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python and the versions of the libraries measured."""
    cpu = "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    ram_gb = float("nan")
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        ram_gb = round(int(m.group(1)) / 2**20, 1) if m else ram_gb
    except OSError:
        pass
    import zmq

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "ram_gb": ram_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": _version("msgpack"),
        "soxr": _version("soxr"),
        "torch": _version("torch"),
        "torchaudio": _version("torchaudio"),
        "onnxruntime": _version("onnxruntime"),
        "wyoming": _version("wyoming"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (
        f"{m['cpu']}, {m['nproc']} cores, {m['ram_gb']} GB RAM, Python {m['python']}, numpy {m['numpy']}, "
        f"pyzmq {m['pyzmq']} (libzmq {m['libzmq']}), load {m['loadavg_1m']}"
    )


# ---------------------------------------------------------------------------------------
# output

def emit(name: str, results: dict[str, Any], as_json: bool, table: list[tuple[str, ...]] | None = None) -> None:
    """Print one JSON object (``--json``) or a human table with the machine line.

    In JSON the table is kept too (``"table"``: rows of strings, first row the header), so
    run_all.py can render every benchmark's table into docs/benchmarks.md.
    """
    if as_json:
        extra = {"table": [list(map(str, r)) for r in table]} if table else {}
        print(json.dumps({"bench": name, "machine": machine(), **results, **extra}, default=_jsonable))
        return
    print(f"# {name}  ({machine_line()})")
    if table:
        print(format_table(table))
    for k, v in results.items():
        if k not in ("rows",) and not isinstance(v, (dict, list)):
            print(f"{k}: {v}")


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Plain aligned columns; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, or '-' for NaN/None."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if isinstance(x, float) and np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


# ---------------------------------------------------------------------------------------
# real processes

class Proc(ChildProcess):
    """A child process (common.cli.process.ChildProcess) started from the repository root."""

    def __init__(self, argv: list[str], stdin: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None) -> None:
        super().__init__(argv, env=env, cwd=ROOT, stdin=stdin)
        self.out, self.err = self.out_lines, self.lines

    def count(self, pattern: str, stdout: bool = False) -> int:
        rx = re.compile(pattern)
        with self._cond:
            return sum(1 for line in (self.out if stdout else self.err) if rx.search(line))

    def log(self, n: int = 30) -> str:
        with self._cond:
            return "\n".join(self.err[-n:] + self.out[-n:])

    def json_result(self, timeout: float = 60.0) -> dict[str, Any]:
        """Wait for the process to end and parse the last stdout line as JSON."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"{' '.join(self.argv[:6])} did not finish in {timeout}s:\n{self.log()}") from None
        time.sleep(0.05)  # let the pump threads read the last line (process already exited)
        with self._cond:
            for line in reversed(self.out):
                if line.startswith("{"):
                    return json.loads(line)
        raise RuntimeError(f"{' '.join(self.argv[:6])} printed no JSON (rc={self.proc.returncode}):\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int:  # type: ignore[override]
        """SIGTERM the process group, then SIGKILL after ``timeout``."""
        return super().stop(signal.SIGTERM, timeout)


def python_module(*args: str, **kw: Any) -> Proc:
    """``python -m ARGS`` as a tracked child (e.g. python_module("convert", "--input", addr))."""
    return Proc([sys.executable, "-m", *args], **kw)


def python_script(script: str | Path, *args: str, **kw: Any) -> Proc:
    return Proc([sys.executable, str(script), *args], **kw)


def free_tcp() -> str:
    """A tcp://127.0.0.1:PORT endpoint free right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def resampler_holdback_ms(quality: str, chunk: int, in_rate: int = 48_000, out_rate: int = 16_000) -> dict[str, float]:
    """Audio held inside convert's resampler (input time - output time, ms, mean and max over
    chunk boundaries) when fed ``chunk``-sample mono chunks of ``quality``; in-process, no sockets."""
    from convert.resample import StreamResampler

    rs = StreamResampler(in_rate, out_rate, 1, quality)
    t_in = t_out = 0
    held = []
    for i in range(200):
        t_out += len(rs.process(np.zeros(chunk, np.float32)))
        t_in += chunk
        if i >= 10:  # past the filter's start-up
            held.append(t_in / in_rate * 1e3 - t_out / out_rate * 1e3)
    return {"mean": float(np.mean(held)), "max": float(np.max(held))}
