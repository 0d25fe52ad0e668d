#!/usr/bin/env python
"""Cached reference log-probs against a reference forward pass at every step (NPO+GD).

    python benchmarks/bench_ref_cache.py                      # SmolLM2-135M, the default preset's data
    python benchmarks/bench_ref_cache.py --method NPO --pairs 10
    python benchmarks/bench_ref_cache.py --model tiny-llama --whole-epochs 0

The question: what does an unlearning run with ``unlearn(..., cache_reference=True)`` cost, the one-off
``cache_reference_logprobs`` included, against ``cache_reference=False``, where ``compute_loss`` runs the
frozen reference model on the forget micro-batch at every step? The two runs do the same work except
for (a) the cache computation, once per forget item, and (b) one no-grad reference forward per step,
so the cost of a run of ``S`` steps is ``cache + S x step`` against ``S x step'``:

1. **steps, paired**: the two kinds of optimizer step, each ``compute_loss`` (with the cached
   log-probs in the batch / with the reference model) + backward + AdamW step, run back to back on
   the same micro-batch, ``--pairs`` times (A B, B A, ...); the step ratio is the median of the pair
   ratios. Whole runs are too long to repeat often enough on a shared machine (single runs of
   identical work varied by 2x here), pairs of steps are not.
2. **cache**: ``study.training.train.cache_reference_logprobs`` on the whole forget set, timed 3 times (median).
3. **figure**: ``(cache + S x step_cached) / (S x step_live)`` for ``S`` = the steps of ``--epochs``
   (default: the preset's 5 epochs, 12 steps on the default data; ``S = floor(epochs x N / batch)``).
   It leaves out the loop's own per-step overhead, the same in both runs, so it errs towards a
   smaller ratio by that overhead's share (see ``bench_trainer.py``).
4. **cross-check**: one whole ``study.training.train.unlearn`` run of each kind at ``--whole-epochs`` (default 2;
   0 skips it), from the same starting weights, printed but not used.

Data and settings are the default preset's (built-in authors, forget01 task 1: 10 forget items,
micro-batch 4, ``max_length`` 64). Clock: CPU seconds on a CPU device, wall seconds on CUDA (see
``benchmarks/__init__.py``). Target: at most 0.75x.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    Timings, add_clock_arg, add_device_arg, clock_for, machine, other_clock, pair_ratio,
    resolve_device, result_line, timed,
)

TARGET = 0.75


def main(argv=None) -> int:  # long: one linear script (set-up, the timed runs, the report), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--method", default="NPO+GD", help="a method whose forget loss needs reference log-probs")
    parser.add_argument("--epochs", type=float, default=None, help="run length the figure is for (default: the preset's)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of optimizer steps (default: %(default)s)")
    parser.add_argument("--whole-epochs", type=float, default=2.0,
                        help="epochs of the whole-run cross-check, one run each; 0 skips it (default: %(default)s)")
    parser.add_argument("--preset", default="default", help="preset whose data and settings are used")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)

    from study.inputs import models
    from study import presets
    from study.trial import runner
    from study.training import train
    from study.inputs.batches import collate
    from study.methods import Method, compute_loss, ref_cache_key

    cfg = presets.run_config(args.preset)
    method = Method.parse(args.method, beta=cfg.method.beta)
    if not method.ref_logprob_parts:
        parser.error(f"{method} needs no reference log-probs: nothing to cache (try NPO+GD, DPO+GD)")
    label_mode = "answer" if method.forget_mask_default else "full"
    data = runner.scenario_data(cfg, runner.tasks_of(cfg)[0])
    lm = models.load(args.model, device=device, dtype=runner.run_dtype(cfg, device))
    model = lm.model
    start_state = copy.deepcopy(model.state_dict())
    ref_model = runner.frozen_copy(model)
    n_forget = len(data.forget)
    batch_size = cfg.train.batch_size  # micro-batch; grad_accum does not change the per-sequence costs
    epochs = args.epochs or cfg.train.epochs
    n_steps = train.max_steps_for(n_forget, epochs, batch_size * cfg.train.grad_accum)
    print(f"bench_ref_cache: {machine()}; device {device}; {args.model}, {method}, {n_forget} forget items, "
          f"micro-batch {batch_size}; figure for {epochs:g} epochs = {n_steps} steps; {clock} clock", flush=True)

    # 2. The one-off cache computation, on the dataset the cached steps then read from.
    dataset = train.unlearning_dataset(method, data.forget, data.retain, data.refusals, lm.tokenizer, lm.prompt,
                                       cfg.train.max_length, label_mode)
    cache = Timings()
    for _ in range(3):
        timed(lambda: train.cache_reference_logprobs(method, ref_model, dataset), device, cache)
    keys = set(method.ref_cache_keys)
    assert all(ref_cache_key(p) in dataset.items[0] for p in method.ref_logprob_parts)

    # 1. Paired optimizer steps on the same micro-batches, with train_loop's optimizer groups.
    optimizer = train.adamw(train.adamw_param_groups(model, cfg.train.weight_decay), cfg.train.lr)
    stream = train.index_stream(n_forget, cfg.train.seed)

    def next_batches():
        items = [dataset[next(stream)] for _ in range(batch_size)]
        cached = train._to(collate(items), device)
        live = {k: v for k, v in cached.items() if k not in keys}  # no cache: compute_loss runs ref_model
        return cached, live

    def step(batch, ref) -> None:
        model.train()
        loss = compute_loss(method, model, batch, ref).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cached_batch, live_batch = next_batches()
    step(cached_batch, None)  # warm-up: optimizer state, first-call allocations and kernels
    step(live_batch, ref_model)
    steps = {"cached": Timings(), "live": Timings()}
    runs = {"cached": lambda: step(cached_batch, None), "live": lambda: step(live_batch, ref_model)}
    for i in range(args.pairs):  # each pair on a fresh micro-batch; order A B, B A, ...
        cached_batch, live_batch = next_batches()
        for name in (("cached", "live") if i % 2 == 0 else ("live", "cached")):
            timed(runs[name], device, steps[name])
    step_ratio = pair_ratio(steps["cached"], steps["live"], clock)
    step_live = steps["live"].median(clock)
    cache_s = cache.median(clock)
    ratio = cache_s / (n_steps * step_live) + step_ratio
    for name, times in steps.items():
        print(f"  step {name:6s}: {times.describe()}")
    print(f"  cache of {n_forget} items: {cache.describe()} = {cache_s / step_live:.2f} live steps")
    other = other_clock(clock)
    print(f"  cached/live per step: {step_ratio:.3f}x ({clock} clock, median of {args.pairs} pairs; {other} clock "
          f"{pair_ratio(steps['cached'], steps['live'], other):.3f}x)")
    print(f"  run of {n_steps} steps: (cache + {n_steps} x cached step) / ({n_steps} x live step) = {ratio:.3f}x; "
          f"in the limit of many epochs {step_ratio:.3f}x")

    # 4. Cross-check: whole unlearn runs (one each: indicative only on a shared machine).
    if args.whole_epochs > 0:
        whole = {"cached": Timings(), "live": Timings()}
        for name, cached in (("cached", True), ("live", False)):
            model.load_state_dict(start_state)
            train_cfg = dataclasses.replace(cfg.train, epochs=args.whole_epochs)
            out = {}

            def work(cached=cached):
                out["steps"] = train.unlearn(model, lm.tokenizer, lm.prompt, method, data, train_cfg, label_mode,
                                             ref_model=ref_model, cache_reference=cached,
                                             fit=runner.fit_for(train_cfg)).steps

            timed(work, device, whole[name])
        n_whole = out["steps"]
        expected = cache_s / (n_whole * step_live) + step_ratio
        print(f"  cross-check, whole unlearn runs of {args.whole_epochs:g} epochs ({n_whole} steps), one each: "
              f"cached {whole['cached'].on(clock)[0]:.1f} s, live {whole['live'].on(clock)[0]:.1f} s "
              f"({clock}) = {whole['cached'].on(clock)[0] / whole['live'].on(clock)[0]:.3f}x; "
              f"the paired steps predict {expected:.3f}x")

    details = (f"cached/live {method} run of {n_steps} steps incl. cache, from {args.pairs} paired steps "
               f"(per step {step_ratio:.2f}x) + cache ({cache_s / step_live:.2f} steps); {args.model}, {device.type}, "
               f"{clock} clock")
    result_line(f"ref_cache_{method.forget_loss.lower()}", ratio, details, f"<= {TARGET:.2f}", ratio <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
