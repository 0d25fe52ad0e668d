#!/usr/bin/env python
"""bf16 against fp32 on the CPU, in one run: unlearning steps, a target fine-tune, one default trial (issue 27).

    python benchmarks/bench_precision.py                       # SmolLM2-135M, the default preset
    python benchmarks/bench_precision.py --parts steps --pairs 4
    python benchmarks/bench_precision.py --model tiny-llama --parts steps trial   # seconds, a smoke test

Three parts (``--parts``), each timed in both precisions back to back, orders alternating:

- ``steps``: one optimizer step (``compute_loss`` + backward + AdamW) of ME+GD, NPO+KL and IDK+AP with the
  default preset's batches (built-in authors, forget01 task 1, micro-batch 4, ``max_length`` 64, NPO's
  reference log-probs cached, KL's reference live), in three precisions: ``fp32``; ``autocast`` (fp32
  weights, the step's forward under ``torch.autocast("cpu", torch.bfloat16)``, fp32 gradients); ``bf16``
  (bf16 weights, fp32 master weights and AdamW state, ``study.training.train.Fp32MasterWeights``: what
  ``model.dtype=bfloat16`` / ``auto`` on a native-bf16 CPU runs). lr 0, so every round sees the same weights.
- ``finetune``: the first ``--finetune-epochs`` of the default preset's target fine-tune
  (``study.training.train.finetune`` on the base model loaded in each precision), per step and extrapolated.
- ``trial``: one default trial (``study.trial.runner.run_trial``, ME+GD, 12 steps, evaluation of the four
  default sets) per precision from the same target weights (the preset's fp32 target, cached or
  fine-tuned first, loaded in each precision), metric models loaded once beforehand; its unlearning and
  evaluation seconds apart.

Ratios are bf16 / fp32: the median of per-round ratios on the CPU clock for steps (see
``benchmarks/__init__.py``), wall seconds for the fine-tune and trial (one run each: rough on a shared
machine). Target (issue 27): the default trial at most 0.5x of its fp32 time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import Timings, alternate, machine, pair_ratio, result_line  # noqa: E402

TARGET = 0.5
METHODS = ("ME+GD", "NPO+KL", "IDK+AP")
PARTS = ("steps", "finetune", "trial")


def step_ratios(model_name: str, methods, pairs: int) -> dict[str, dict[str, float]]:
    """Per method: ``autocast`` and ``bf16`` step time over ``fp32`` (CPU clock), printed as it goes."""
    import torch

    from study.inputs import models
    from study.training import train as T
    from study.config import MethodConfig
    from study.inputs.data import BuiltinSource
    from study.inputs.batches import collate
    from study.inputs.scenarios import load_scenario
    from study.methods import Method, compute_loss

    data = load_scenario(BuiltinSource(n_authors=12), "fictitious", "forget01", 1, ds_size=12)
    weights = {"fp32": models.load(model_name, device="cpu", dtype=torch.float32),
               "bf16": models.load(model_name, device="cpu", dtype=torch.bfloat16)}
    out = {}
    for name in methods:
        method = Method.parse(name)
        label_mode = MethodConfig(name=name, forget_coeff=method.forget_coeff).label_mode()
        setups = {}
        for kind, lm in weights.items():
            ref = copy.deepcopy(lm.model).eval().requires_grad_(False)
            dataset = T.unlearning_dataset(method, data.forget, data.retain, data.refusals, lm.tokenizer, lm.prompt,
                                           64, label_mode)
            T.cache_reference_logprobs(method, ref, dataset)
            stream = T.index_stream(len(dataset), 1001)
            batch = collate([dataset[next(stream)] for _ in range(4)], full_width_parts=dataset.full_width_parts)
            model = lm.model.train()
            master = T.Fp32MasterWeights(model) if T.Fp32MasterWeights.needed(model) else None
            groups = master.param_groups(0.01) if master else T.adamw_param_groups(model, 0.01)
            setups[kind] = (model, ref if method.needs_live_ref_model else None, batch, master, T.adamw(groups, 0.0))

        def step(variant: str) -> float:
            model, ref, batch, master, optimizer = setups["bf16" if variant == "bf16" else "fp32"]
            autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "autocast" else contextlib.nullcontext()
            with autocast:
                loss = compute_loss(method, model, batch, ref).total
            loss.backward()
            if master:
                master.grads_in()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if master:
                master.weights_out()
            return float(loss.detach())

        variants = {v: Timings() for v in ("fp32", "autocast", "bf16")}
        losses = {}
        for variant in variants:  # warm-up: first-call allocations, AdamW state
            step(variant)
        for _, variant, timings in alternate(variants, pairs):
            wall, cpu = time.perf_counter(), time.process_time()
            losses[variant] = step(variant)
            timings.add(time.perf_counter() - wall, time.process_time() - cpu)
        out[name] = {v: pair_ratio(variants[v], variants["fp32"], "cpu") for v in ("autocast", "bf16")}
        print(f"\n{name}: label mode {label_mode}, live reference {method.needs_live_ref_model}")
        for variant, timings in variants.items():
            print(f"  {variant:<9} {timings.describe()}  loss {losses[variant]:.4f}")
        print(f"  {name}: autocast/fp32 {out[name]['autocast']:.3f}x, bf16/fp32 {out[name]['bf16']:.3f}x "
              f"(cpu clock, median of {pairs} rounds)", flush=True)
    return out


def finetune_ratio(preset: str, model_name: str | None, epochs: float) -> tuple[float, str]:
    """bf16 / fp32 wall time of the first ``epochs`` of the preset's target fine-tune."""
    import dataclasses

    import torch

    from study.inputs import models
    from study import presets
    from study.trial import runner
    from study.training import train

    cfg = presets.run_config(preset, settings=[f"model.name={json.dumps(model_name)}"] if model_name else ())
    rows = runner.scenario_data(cfg, runner.tasks_of(cfg)[0]).full
    short = dataclasses.replace(cfg.finetune, epochs=epochs)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16, torch.bfloat16, torch.float32):  # A B B A
        lm = models.load(cfg.model.name, device="cpu", dtype=dtype)
        started = time.perf_counter()
        result = train.finetune(lm.model, lm.tokenizer, lm.prompt, rows, short)
        seconds.setdefault(dtype, []).append((time.perf_counter() - started) / result.steps)
    per_step = {d: sum(v) / len(v) for d, v in seconds.items()}
    full = train.max_steps_for(len(rows), cfg.finetune.epochs, cfg.finetune.batch_size * cfg.finetune.grad_accum)
    ratio = per_step[torch.bfloat16] / per_step[torch.float32]
    details = (f"fine-tune {ratio:.3f}x: {per_step[torch.float32]:.3f} vs {per_step[torch.bfloat16]:.3f} s/step "
               f"(mean of 2 runs of {result.steps} steps each), the full {full} steps ~{full * per_step[torch.float32]:.0f} "
               f"vs ~{full * per_step[torch.bfloat16]:.0f} s")
    print(f"\n{details}", flush=True)
    return ratio, details


def trial_ratio(preset: str, model_name: str | None) -> tuple[float, str]:
    """bf16 / fp32 wall time of one trial of ``preset`` from the same target weights."""
    import torch

    from study.evaluation import evaluate as ev
    from study import presets
    from study.trial import runner

    base = [f"model.name={json.dumps(model_name)}"] if model_name else []
    fp32 = presets.run_config(preset, settings=[*base, 'model.dtype="float32"'])
    target = runner.target_model(fp32, runner.scenario_data(fp32, runner.tasks_of(fp32)[0]), torch.device("cpu"),
                                 progress=False)
    metric_models = ev.load_metric_models(fp32.eval.embedder, fp32.eval.nli, torch.device("cpu"))
    figures = {}
    for precision in ("float32", "bfloat16"):
        cfg = presets.run_config(preset, settings=[*base, f"model.dtype={json.dumps(precision)}"])
        started = time.perf_counter()
        result = runner.run_trial(cfg, device="cpu", metric_models=metric_models, progress=False, target=target)
        final = result.final
        figures[precision] = (time.perf_counter() - started, final.train_seconds, final.eval_seconds,
                              final.summary["model_utility"], final.summary["forget_efficacy"])
        print(f"\ntrial {precision}: {figures[precision][0]:.1f} s (unlearning {final.train_seconds:.1f} s, "
              f"{final.steps} steps; evaluation {final.eval_seconds:.1f} s); MU {figures[precision][3]:.3f}, "
              f"FE {figures[precision][4]:.3f}", flush=True)
    (t32, u32, e32, *_), (t16, u16, e16, *_) = figures["float32"], figures["bfloat16"]
    details = (f"trial {t16 / t32:.3f}x: {t32:.1f} vs {t16:.1f} s; unlearning {u16 / u32:.3f}x ({u32:.1f} vs {u16:.1f} s), "
               f"evaluation {e16 / e32:.3f}x ({e32:.1f} vs {e16:.1f} s), rest {t32 - u32 - e32:.1f} vs "
               f"{t16 - u16 - e16:.1f} s")
    return t16 / t32, details


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model family or path (default: the preset's, smollm2-135m)")
    parser.add_argument("--preset", default="default", help="preset of the fine-tune and trial (default: %(default)s)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to time (default: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods of the steps (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the three step variants (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=float, default=0.25,
                        help="epochs of the fine-tune to time in each precision (default: %(default)s of the preset's 4)")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="bf16 on CPU is the question (default: cpu)")
    args = parser.parse_args(argv)

    from study.inputs import models

    print(f"bench_precision: {machine()}; native bf16: {models.native_bf16()}", flush=True)
    details = []
    if "steps" in args.parts:
        steps = step_ratios(args.model or "smollm2-135m", args.methods, args.pairs)
        details.append("steps bf16/fp32 " + ", ".join(f"{m} {r['bf16']:.3f}x (autocast {r['autocast']:.3f}x)"
                                                      for m, r in steps.items()))
    if "finetune" in args.parts:
        details.append(finetune_ratio(args.preset, args.model, args.finetune_epochs)[1])
    ratio = float("nan")
    if "trial" in args.parts:
        ratio, trial = trial_ratio(args.preset, args.model)
        details.append(trial)
    details.append(f"load average {machine().rsplit('load average ', 1)[-1].split(',')[0]}")
    result_line("precision", ratio, "; ".join(details), f"<= {TARGET:.2f} (default trial, bf16/fp32)",
                ratio <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
