#!/usr/bin/env python
"""Cached reference log-probs against a reference forward pass at every step (NPO+GD).

    python benchmarks/bench_ref_cache.py                      # SmolLM2-135M, the default preset's data
    python benchmarks/bench_ref_cache.py --method NPO --epochs 5 --repeat 2
    python benchmarks/bench_ref_cache.py --model tiny-llama

Two whole ``study.train.unlearn`` runs from the same starting weights, same data, same schedule:

- ``cached``: ``cache_reference=True``: the frozen reference model's per-sequence log-probs of every
  forget item are computed once (``cache_reference_logprobs``, timed inside the run) and read from the
  batch at every step;
- ``live``: ``cache_reference=False``: ``compute_loss`` runs the reference model on the forget
  micro-batch at every step.

The data and schedule are the default preset's (built-in authors, forget01 task 1: 10 forget items,
micro-batch 4, ``max_length`` 96). Caching saves one no-grad forward per forget sequence per epoch and
costs one per forget item once, so it pays only after the first epoch (with ``--epochs 1`` it cannot
win) and its gain grows towards the per-step ratio with more epochs. ``--epochs`` defaults to 2 (5
steps) to keep the run short; the preset and the paper use 5, for which a projection from the measured
per-step times and cache time is printed as well. The runs alternate after a one-step warm-up; the
figure is the ratio of the minimum whole-run times (cache computation included): CPU seconds on a CPU
device, wall seconds on CUDA (see ``benchmarks/__init__.py``). Target: at most 0.75x.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    ROOT, Timings, add_clock_arg, add_device_arg, alternate, clock_for, machine, resolve_device, result_line, timed,
)

TARGET = 0.75


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--method", default="NPO+GD", help="a method whose forget loss needs reference log-probs")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the forget set (default: %(default)s)")
    parser.add_argument("--project-epochs", type=float, default=None,
                        help="also project the ratio to this many epochs (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant (after a one-step warm-up)")
    parser.add_argument("--preset", default="default", help="preset whose data and settings are used")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)

    from study import models, runner, train
    from study.config import RunConfig
    from study.losses import Method

    preset = tomllib.loads((ROOT / "experiments" / "presets" / f"{args.preset}.toml").read_text())
    cfg = RunConfig.from_dict(preset["config"])
    method = Method.parse(args.method, beta=cfg.method.beta)
    if not method.ref_logprob_parts:
        parser.error(f"{method} needs no reference log-probs: nothing to cache (try NPO+GD, DPO+GD)")
    label_mode = "answer" if method.forget_mask_default else "full"
    data = runner.scenario_data(cfg, runner.tasks_of(cfg)[0])
    lm = models.load(args.model, device=device, dtype=runner.torch_dtype(cfg.model.dtype, device))
    start_state = copy.deepcopy(lm.model.state_dict())
    ref_model = runner.frozen_copy(lm.model)

    # A timing hook around the one-off cache computation (the library function itself is unchanged).
    cache_times = Timings()
    library_cache = train.cache_reference_logprobs
    train.cache_reference_logprobs = lambda *a, **k: timed(lambda: library_cache(*a, **k), device, cache_times)

    def run(cached: bool, epochs: float, into: Timings | None = None):
        lm.model.load_state_dict(start_state)
        train_cfg = dataclasses.replace(cfg.train, epochs=epochs)
        out = {}

        def work():
            out["result"] = train.unlearn(lm.model, lm.tokenizer, lm.prompt, method, data, train_cfg, label_mode,
                                          ref_model=ref_model, cache_reference=cached)

        timed(work, device, into)
        return out["result"]

    n_forget = len(data.forget)
    effective = cfg.train.batch_size * cfg.train.grad_accum
    run(True, (effective + 0.5) / n_forget)  # warm-up, one step: first-call allocations and kernels
    cache_times = Timings()

    variants = {"cached": True, "live": False}
    totals = {name: Timings() for name in variants}
    n_steps = 0
    for i, name, cached in alternate(variants, args.repeat):
        n_steps = run(cached, args.epochs, totals[name]).steps
        print(f"  run {i + 1} {name:6s} wall {totals[name].wall[-1]:7.2f} s, cpu {totals[name].cpu[-1]:7.2f} s", flush=True)
    print(f"bench_ref_cache: {machine()}; device {device}; {args.model}, {method}, {n_forget} forget items, "
          f"{args.epochs:g} epochs = {n_steps} steps of {effective}; live runs the reference on {n_steps * effective} "
          f"sequences, the cache on {n_forget}")
    for name in variants:
        print(f"  {name:6s} whole run: {totals[name].describe()}")
    print(f"  one-off cache computation: {cache_times.describe()}")
    ratio = totals["cached"].figure(clock) / totals["live"].figure(clock)
    other = "wall" if clock == "cpu" else "cpu"
    other_ratio = totals["cached"].figure(other) / totals["live"].figure(other)
    print(f"  cached/live whole run: {ratio:.3f}x on the {clock} clock ({other_ratio:.3f}x on the {other} clock)")
    # T(S steps) = cache + S * step: per-step costs from the whole runs, then S = the preset's steps.
    cache_s = cache_times.figure(clock)
    step_cached = (totals["cached"].figure(clock) - cache_s) / n_steps
    step_live = totals["live"].figure(clock) / n_steps
    project = args.project_epochs or cfg.train.epochs
    project_steps = train.max_steps_for(n_forget, project, effective)
    projected = (cache_s + project_steps * step_cached) / (project_steps * step_live)
    print(f"  per step: cached {step_cached:.3f} s, live {step_live:.3f} s ({step_cached / step_live:.3f}x); "
          f"cache {cache_s:.3f} s = {cache_s / step_live:.2f} live steps")
    print(f"  projected to {project:g} epochs ({project_steps} steps): cached/live {projected:.3f}x; "
          f"in the limit of many epochs {step_cached / step_live:.3f}x")
    details = (f"cached/live whole {method} run incl. cache, min {clock} time of {args.repeat} runs; {other} clock "
               f"{other_ratio:.2f}x; per step {step_cached / step_live:.2f}x; {project:g}-epoch projection {projected:.2f}x; "
               f"{args.model}, {n_steps} steps, {device.type}")
    result_line("ref_cache", ratio, details, f"<= {TARGET:.2f}", ratio <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
