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

The data and schedule are the default preset's (built-in authors, forget01 task 1, micro-batch 4,
``max_length`` 96) with ``--epochs`` (default 5, the preset's and the paper's). Caching saves one
no-grad forward per forget sequence per epoch and costs one per forget item once, so it pays only
after the first epoch; with ``--epochs 1`` it cannot win. Runs alternate, after a one-step warm-up
of each; the figure is the ratio of the minimum whole-run times (cache computation included).
Per-step times from the runs' ``StepEvent``s are printed too. Target: at most 0.75x.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import ROOT, add_device_arg, machine, resolve_device, result_line, summary, sync  # noqa: E402

TARGET = 0.75


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--method", default="NPO+GD", help="a method whose forget loss needs reference log-probs")
    parser.add_argument("--epochs", type=float, default=5.0, help="passes over the forget set (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per variant (after a one-step warm-up)")
    parser.add_argument("--preset", default="default", help="preset whose data and settings are used")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)

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

    # A timing hook around the one-off cache computation (the library call itself is unchanged).
    cache_seconds: list[float] = []
    library_cache = train.cache_reference_logprobs

    def timed_cache(*a, **k):
        sync(device)
        started = time.perf_counter()
        library_cache(*a, **k)
        sync(device)
        cache_seconds.append(time.perf_counter() - started)

    train.cache_reference_logprobs = timed_cache

    def run(cached: bool, epochs: float):
        lm.model.load_state_dict(start_state)
        train_cfg = dataclasses.replace(cfg.train, epochs=epochs)
        sync(device)
        started = time.perf_counter()
        result = train.unlearn(lm.model, lm.tokenizer, lm.prompt, method, data, train_cfg, label_mode,
                               ref_model=ref_model, cache_reference=cached)
        sync(device)
        return time.perf_counter() - started, result

    n_forget = len(data.forget)
    effective = cfg.train.batch_size * cfg.train.grad_accum
    one_step = (effective + 0.5) / n_forget
    for cached in (True, False):  # warm-up: one step each
        run(cached, one_step)
    cache_seconds.clear()

    variants = {"cached": True, "live": False}
    totals: dict[str, list[float]] = {name: [] for name in variants}
    steps: dict[str, list[float]] = {name: [] for name in variants}
    n_steps = 0
    for _ in range(args.repeat):
        for name, cached in variants.items():
            seconds, result = run(cached, args.epochs)
            totals[name].append(seconds)
            steps[name] += [event.seconds for event in result.history]
            n_steps = result.steps
    ref_forwards_live = n_steps * effective
    print(f"bench_ref_cache: {machine()}; device {device}; {args.model}, {method}, {n_forget} forget items, "
          f"{args.epochs:g} epochs = {n_steps} steps of {effective}; live runs the reference on {ref_forwards_live} "
          f"sequences, the cache on {n_forget}")
    for name in variants:
        print(f"  {name:6s} whole run: {summary(totals[name])}; per step: median {statistics.median(steps[name]):.3f} s")
    cache_s = min(cache_seconds)
    print(f"  one-off cache computation: {summary(cache_seconds)} "
          f"({cache_s / min(totals['cached']):.1%} of the cached run)")
    step_ratio = statistics.median(steps["cached"]) / statistics.median(steps["live"])
    ratio = min(totals["cached"]) / min(totals["live"])
    print(f"  cached/live: whole run {ratio:.3f}x; per step {step_ratio:.3f}x (median step times)")
    details = (f"cached/live whole {method} run incl. cache, min of {args.repeat}; per step {step_ratio:.2f}x; "
               f"cache {cache_s:.1f} s; {args.model}, {n_steps} steps, {device.type}")
    result_line("ref_cache", ratio, details, f"<= {TARGET:.2f}", ratio <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
