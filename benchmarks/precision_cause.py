#!/usr/bin/env python
"""Why does bf16 move the science? Training and evaluation precision apart, from one fp32 target (issue 27).

    python benchmarks/precision_cause.py --json precision_cause.json       # ME+GD, NPO+GD, IDK+AP x 3 seeds
    python benchmarks/precision_cause.py --preset smoke --model tiny-llama --methods ME+GD --seeds 1001

``precision_science.py`` found bf16 trials forgetting less than fp32 ones, with three differences mixed:
each precision fine-tuned its own target, trained in it and evaluated in it. Here every trial starts from
the same target (the preset's fp32 one, cached), then unlearns (``study.trial.runner.unlearn_tasks``, the
preset's settings, ``train.seed`` = the seed) in one of three ways:

- ``fp32``: fp32 weights and arithmetic;
- ``bf16``: bf16 weights, fp32 master weights and AdamW state (``study.training.train.Fp32MasterWeights``),
  what ``model.dtype=bfloat16`` runs;
- ``autocast``: fp32 weights, the loss's forward under ``torch.autocast("cpu", torch.bfloat16)``;
- ``bf16-head32``, ``autocast-head32`` (opt-in, ``--trainings``): the same with the output projection
  (``lm_head``: hidden states to logits, forward and backward) in fp32 arithmetic;

and each unlearned model is evaluated twice: in fp32 and in bf16 (a cast copy). Also printed: how far the
weights moved from the target (relative L2 norm of the difference, and the share of weights whose value
changed at all). Per (training, evaluation) and method: mean and sample standard deviation over the seeds
of MU, FE and forget ROUGE-L recall. ``--json`` writes every trial. Not a timed benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import machine  # noqa: E402

METRICS = {"MU": "model_utility", "FE": "forget_efficacy", "forget ROUGE": "forget/rouge"}
TRAININGS = ("fp32", "bf16", "autocast", "bf16-head32", "autocast-head32")
EVALUATIONS = ("fp32", "bf16")


def movement(model, start: dict) -> tuple[float, float]:
    """(relative L2 norm of the weights' change from ``start`` in fp32, share of weights whose value changed
    in the model's own precision)."""

    diff = total = changed = count = 0.0
    for name, param in model.named_parameters():
        before, after = start[name], param.detach().float()
        diff += float((after - before).double().pow(2).sum())
        total += float(before.double().pow(2).sum())
        changed += float((param.detach() != before.to(param.dtype)).sum())  # in the model's own precision
        count += before.numel()
    return (diff / total) ** 0.5, changed / count


def fp32_head(head) -> None:
    """``head`` (a Linear) computes in fp32 from here on, whatever its weights' dtype and any autocast."""
    import torch
    import torch.nn.functional as F

    def forward(hidden):
        with torch.autocast("cpu", enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return F.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward


def main(argv=None) -> int:  # long: one linear script (the trials, then the table), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="preset (default: %(default)s)")
    parser.add_argument("--model", help="model.name instead of the preset's (e.g. tiny-llama)")
    parser.add_argument("--methods", nargs="+", default=["ME+GD", "NPO+GD", "IDK+AP"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1001, 1002, 1003])
    parser.add_argument("--trainings", nargs="+", default=list(TRAININGS[:3]), choices=TRAININGS)
    parser.add_argument("--evaluations", nargs="+", default=list(EVALUATIONS), choices=EVALUATIONS)
    parser.add_argument("--json", help="write every trial's figures to this file")
    args = parser.parse_args(argv)

    import torch

    from study import presets
    from study.evaluation import evaluate as ev
    from study.inputs import models
    from study.trial import runner

    device = torch.device("cpu")
    print(f"precision_cause: {machine()}; native bf16: {models.native_bf16()}", flush=True)
    common = [f'model.name="{args.model}"'] if args.model else []

    def config(method, seed, precision):
        return presets.run_config(args.preset, method=method, settings=[
            *common, f'model.dtype="{precision}"', f"train.seed={seed}"])

    base = config(args.methods[0], args.seeds[0], "float32")
    target = runner.target_model(base, runner.scenario_data(base, runner.tasks_of(base)[0]), device, progress=False)
    print(f"target (fp32): {target.path}", flush=True)
    start = {name: p.detach().float().clone()
             for name, p in runner.load_for_training(target.path, base, device).model.named_parameters()}
    metric_models = ev.load_metric_models(base.eval.embedder, base.eval.nli, device)
    trials = []
    for method in args.methods:
        for seed in args.seeds:
            for training in args.trainings:
                cfg = config(method, seed, "bfloat16" if training.startswith("bf16") else "float32")
                lm = runner.load_for_training(target.path, cfg, device)
                if training.endswith("head32"):
                    fp32_head(lm.model.get_output_embeddings())
                autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if training.startswith("autocast")
                            else contextlib.nullcontext())
                started = time.perf_counter()
                with autocast:
                    done = list(runner.unlearn_tasks(cfg, lm, progress=False))
                trained_s = time.perf_counter() - started
                moved, share = movement(lm.model, start)
                for evaluation in args.evaluations:
                    dtype = torch.bfloat16 if evaluation == "bf16" else torch.float32
                    model = lm.model if lm.model.dtype == dtype else copy.deepcopy(lm.model).to(dtype)
                    started = time.perf_counter()
                    result = ev.evaluate(model.eval(), lm.tokenizer, lm.prompt, done[-1].data.eval_sets,
                                         cfg.data.scenario, metric_models, batch_size=cfg.eval.batch_size,
                                         max_length=cfg.eval.max_length, progress=False)
                    row = {"method": method, "seed": seed, "training": training, "evaluation": evaluation,
                           "moved": moved, "changed": share, "train_seconds": trained_s,
                           "eval_seconds": time.perf_counter() - started,
                           **{name: float(result.summary[key]) for name, key in METRICS.items()}}
                    trials.append(row)
                    print("  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in row.items()), flush=True)
                    del model
                del lm
    if args.json:
        Path(args.json).write_text(json.dumps(trials, indent=2))

    print("\n| method | training | evaluation | MU | FE | forget ROUGE | weights moved (rel. L2) | weights changed |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for training in args.trainings:
            for evaluation in args.evaluations:
                rows = [t for t in trials if (t["method"], t["training"], t["evaluation"]) == (method, training, evaluation)]

                def cell(name, digits=3):
                    values = [t[name] for t in rows]
                    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
                    return f"{statistics.mean(values):.{digits}f} ({sd:.{digits}f})"

                print(f"| {method} | {training} | {evaluation} | {cell('MU')} | {cell('FE')} | {cell('forget ROUGE')} "
                      f"| {cell('moved', 5)} | {cell('changed')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
