#!/usr/bin/env python
"""Does bf16 move the science? Seeded default trials in fp32 and in bf16, side by side (issue 27, item 3).

    python benchmarks/precision_science.py                        # ME+GD, NPO+GD, IDK+AP x seeds 1001-1003
    python benchmarks/precision_science.py --methods ME+GD --seeds 1001 --preset smoke

For each precision (``model.dtype`` float32, bfloat16): the preset's target model fine-tuned in that
precision (``study.trial.runner.target_model``, cached under a key that includes it), then one trial per
(method, seed) through ``study.trial.runner.run_trial`` with the preset's settings (``train.seed`` = the seed),
evaluated on the preset's sets. Printed: per method and precision, the mean and the seed-to-seed spread
(sample standard deviation) of Model Utility, Forget Efficacy and forget ROUGE-L recall, and the bf16 - fp32
difference of the means beside the larger spread; then the trial times. ``--json`` writes every trial.

Not a timed benchmark (``bench_precision.py`` is): its last line has no target. On bf16 the CPU must
have native bf16 (``study.inputs.models.native_bf16``), or the bf16 trials are emulated and slow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402

METRICS = {"MU": "model_utility", "FE": "forget_efficacy", "forget ROUGE": "forget/rouge"}
PRECISIONS = ("float32", "bfloat16")


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def main(argv=None) -> int:  # long: one linear script (the trials, then the table), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="preset (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["ME+GD", "NPO+GD", "IDK+AP"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1001, 1002, 1003])
    parser.add_argument("--json", help="write every trial's figures to this file")
    args = parser.parse_args(argv)

    import torch

    from study.evaluation import evaluate as ev
    from study.inputs import models
    from study import presets
    from study.trial import runner

    device = torch.device("cpu")
    print(f"precision_science: {machine()}; native bf16: {models.native_bf16()}", flush=True)
    trials = []
    metric_models = None
    for precision in PRECISIONS:
        base = presets.run_config(args.preset, settings=[f"model.dtype={json.dumps(precision)}"])
        first = runner.scenario_data(base, runner.tasks_of(base)[0])
        started = time.perf_counter()
        target = runner.target_model(base, first, device, progress=False)
        print(f"{precision}: target {target.path} ({'cached' if target.cached else 'fine-tuned'} in "
              f"{time.perf_counter() - started:.0f} s)", flush=True)
        metric_models = metric_models or ev.load_metric_models(base.eval.embedder, base.eval.nli, device)
        for method in args.methods:
            for seed in args.seeds:
                cfg = presets.run_config(args.preset, method=method,
                                         settings=[f"model.dtype={json.dumps(precision)}", f"train.seed={seed}"])
                started = time.perf_counter()
                result = runner.run_trial(cfg, device=device, metric_models=metric_models, progress=False, target=target)
                summary = result.final.summary
                row = {"precision": precision, "method": method, "seed": seed,
                       "seconds": time.perf_counter() - started, "train_seconds": result.final.train_seconds,
                       "eval_seconds": result.final.eval_seconds,
                       **{name: float(summary[key]) for name, key in METRICS.items()}}
                trials.append(row)
                print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(trials, indent=2))

    def cell(method, precision, name):
        values = [t[name] for t in trials if t["method"] == method and t["precision"] == precision]
        return statistics.mean(values), spread(values)

    print("\n| method | metric | fp32 mean ± sd | bf16 mean ± sd | bf16 - fp32 | larger sd | within noise |")
    print("|---|---|---|---|---|---|---|")
    moved = []
    for method in args.methods:
        for name in METRICS:
            (m32, s32), (m16, s16) = cell(method, "float32", name), cell(method, "bfloat16", name)
            noise = max(s32, s16)
            within = abs(m16 - m32) <= noise
            if not within:
                moved.append(f"{method} {name}")
            print(f"| {method} | {name} | {m32:.3f} ± {s32:.3f} | {m16:.3f} ± {s16:.3f} | {m16 - m32:+.3f} | "
                  f"{noise:.3f} | {'yes' if within else 'NO'} |")
    times = {p: statistics.mean(t["seconds"] for t in trials if t["precision"] == p) for p in PRECISIONS}
    ratio = times["bfloat16"] / times["float32"]
    print(f"\nmean trial wall time: fp32 {times['float32']:.1f} s, bf16 {times['bfloat16']:.1f} s")
    print(f"precision_science: {ratio:.3f}x (bf16/fp32 mean trial wall time, {len(args.methods)} methods x "
          f"{len(args.seeds)} seeds; metrics beyond the seed spread: {', '.join(moved) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
