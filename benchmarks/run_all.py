#!/usr/bin/env python
"""Run every benchmark in sequence (one subprocess each) and print a markdown table of the results.

    python benchmarks/run_all.py                   # the full set at each script's defaults (`make bench`)
    python benchmarks/run_all.py --quick           # tiny models and short sequences: a smoke test of the set
    python benchmarks/run_all.py --only me_loss trainer --device cuda
    python benchmarks/run_all.py --only precision     # opt-in: bf16 vs fp32 (bench_precision.py), ~5 min

Each script prints its figures and, as its last line, ``<name>: <ratio>x (<details>) target <op> <value>:
met|MISSED`` (see ``benchmarks/__init__.py``); the table has one row per script: benchmark, measured,
target, met?. A script whose last line has no target (``name: <ratio>x (...)``) is listed with its
figure and ``n/a``. Exit status: 1 if a script failed or printed no result (or, with ``--strict``,
missed its target), else 0.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks import RESULT_RE  # noqa: E402

BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (script, arguments, extra arguments under --quick)
    "me_loss": ("bench_me_loss.py", ["--repeat", "3"], ["--tokens", "128", "--repeat", "2"]),
    "ref_cache_npo": ("bench_ref_cache.py", ["--method", "NPO+GD", "--whole-epochs", "0"], ["--model", "tiny-llama", "--pairs", "2"]),
    "ref_cache_dpo": ("bench_ref_cache.py", ["--method", "DPO+GD", "--whole-epochs", "0"], ["--model", "tiny-llama", "--pairs", "2"]),
    "trainer": ("bench_trainer.py", [], ["--model", "tiny-llama", "--steps", "3", "--repeat", "2"]),
    "fused_forward": ("bench_fused_forward.py", ["--pairs", "3"], ["--model", "tiny-llama", "--pairs", "2"]),
    "trial": ("bench_trial.py", [], ["--preset", "smoke"]),
    # The two slow baselines on the first item of each set (4 items; the batched path runs all 32): their
    # items are generated and scored independently of the others, so a subset gives their per-item cost
    # (plus the per-set metric-model reload, ~10% at one item). All 32: ~10 more minutes.
    "eval": ("bench_eval.py", ["--reference-items", "1", "--slow-items", "1"],
             ["--model", "tiny-llama", "--items", "4", "--max-length", "64"]),
    "kl_padding": ("bench_kl_padding.py", [], ["--model", "tiny-llama", "--pairs", "2"]),
    # Opt-in (OPT_IN): two default trials, two partial fine-tunes and 27 steps, ~5 min quiet (more when the
    # bf16 target is not cached yet), which would take `make bench` well past 10 minutes.
    "precision": ("bench_precision.py", [], ["--preset", "smoke", "--model", "tiny-llama", "--pairs", "2"]),
}
"""Run in this order. ``bench_eval.py`` belongs to the evaluation module's owner."""

OPT_IN = ("precision",)
"""Run only when named with ``--only``."""

LOOSE_RE = re.compile(r"^(?P<name>[\w.-]+): (?P<ratio>[0-9.]+|nan)x\b(?P<rest>.*)$")
"""A result line without a target (``eval_speedup: 12.3x (...)``)."""


def run_one(name: str, script: str, extra: list[str], timeout: float) -> dict:
    """Run one script, echo its output, and return its parsed result line."""
    command = [sys.executable, str(HERE / script), *extra]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    # stdout is echoed as it comes (a script can run for minutes); stderr (progress bars, warnings) is
    # kept in a temporary file and its tail shown only if the script fails.
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=HERE.parent,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        out = []
        try:
            for line in process.stdout:
                print(line, end="", flush=True)
                out.append(line)
            returncode = process.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        errors.seek(0)
        stderr = errors.read()
    seconds = time.perf_counter() - started
    if timed_out:
        return {"name": name, "status": f"timed out after {timeout:.0f} s", "ok": False, "seconds": seconds}
    done = subprocess.CompletedProcess(command, returncode, "".join(out), stderr)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        print(f"--- {name} failed (exit {done.returncode}); stderr tail:\n{tail}", flush=True)
        return {"name": name, "status": f"failed (exit {done.returncode})", "ok": False, "seconds": seconds}
    for line in reversed(lines):
        if match := RESULT_RE.match(line):
            return {**match.groupdict(), "ok": True, "seconds": seconds}
        if match := LOOSE_RE.match(line):
            return {"name": match["name"], "ratio": match["ratio"], "details": match["rest"].strip(), "target": "n/a",
                    "status": "n/a", "ok": True, "seconds": seconds, "loose": True}
    return {"name": name, "status": "no result line", "ok": False, "seconds": seconds}


def table(results: list[dict]) -> str:
    """One row per script: its result line's parts and the script's own wall time (process start and
    imports included), so where ``make bench``'s minutes go is in the table."""
    rows = ["| benchmark | measured | target | met? | wall s |", "|---|---|---|---|---|"]
    for r in results:
        seconds = f"{r['seconds']:.0f}" if "seconds" in r else "—"
        if "ratio" in r:
            ratio = f"{float(r['ratio']):.3g}x" if r["ratio"] != "nan" else "nan"
            measured = f"{ratio} {r['details']}" if r.get("loose") else f"{ratio} ({r['details']})"
            measured = measured.replace("|", "/")
            rows.append(f"| {r['name']} | {measured} | {r['target']} | {r['status']} | {seconds} |")
        else:
            rows.append(f"| {r['name']} | — | — | {r['status']} | {seconds} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    parser.add_argument("--quick", action="store_true", help="tiny models / short inputs (a smoke test, not the figures)")
    parser.add_argument("--device", default=None, help="passed to every script (default: each script's own: cuda if available)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per script (default: %(default)s)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed too")
    args = parser.parse_args(argv)

    results = []
    started = time.perf_counter()
    for name in args.only or [n for n in BENCHMARKS if n not in OPT_IN]:
        if name in args.skip:
            continue
        script, arguments, quick = BENCHMARKS[name]
        if not (HERE / script).exists():
            results.append({"name": name, "status": f"{script} not found", "ok": False})
            continue
        extra = arguments + (quick if args.quick else []) + (["--device", args.device] if args.device else [])
        results.append(run_one(name, script, extra, args.timeout))

    print(f"\n## Benchmarks ({'--quick, ' if args.quick else ''}{time.perf_counter() - started:.0f} s in all)\n")
    print(table(results))
    failed = [r for r in results if not r["ok"]]
    missed = [r for r in results if r.get("status") == "MISSED"]
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
