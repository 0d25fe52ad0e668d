#!/usr/bin/env python
"""One forward per step: an unlearning step with the method's batch parts fused into one batch
(``compute_loss(fused=True)``, the default) against one forward per part (``fused=False``).

    python benchmarks/bench_fused_forward.py                         # SmolLM2-135M, ME+GD, NPO+KL, IDK+AP
    python benchmarks/bench_fused_forward.py --methods DPO+GD --pairs 4
    python benchmarks/bench_fused_forward.py --model tiny-llama --pairs 2

One optimizer step, as ``unlearn`` runs it with the default preset's settings (built-in authors,
fictitious forget01 task 1, micro-batch 4, ``max_length`` 64, ``grad_accum`` 1, the label mode each
method implies, KL's retain part padded to ``max_length``, NPO's reference log-probs cached before
training): ``compute_loss`` + backward (``fwd+bwd``) then the AdamW step (``step`` = both). The
reference model is a frozen copy of the model. Each pair runs the two variants back to back on the same
micro-batch (A B, B A, ...; micro-batches cycle over the first ``--pairs`` of the epoch); the figure per
method is the median of the per-pair ratios fused / separate (CPU seconds on a CPU device, wall on
CUDA; see ``benchmarks/__init__.py``). Target: the whole step at most 0.75x for every method.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    Timings, add_clock_arg, add_device_arg, alternate, clock_for, machine, other_clock, pair_ratio,
    resolve_device, result_line, sync,
)

TARGET = 0.75
METHODS = ("ME+GD", "NPO+KL", "IDK+AP")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=64, help="padded length (default: the default preset's 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch (default: the preset's 4)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of optimizer steps per method (default: %(default)s)")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)

    import torch

    from study import models
    from study import train as T
    from study.config import MethodConfig
    from study.data import BuiltinSource, collate, load_scenario
    from study.losses import Method, compute_loss

    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)
    print(f"bench_fused_forward: {machine()}; device {device}", flush=True)
    lm = models.load(args.model, device=device, dtype=torch.float32)
    ref = copy.deepcopy(lm.model).eval().requires_grad_(False)
    data = load_scenario(BuiltinSource(n_authors=12), "fictitious", "forget01", 1, ds_size=12)
    optimizer = T.adamw(T.adamw_param_groups(lm.model, 0.01), 0.0)  # lr 0: every pair sees the same weights
    results = {}
    for name in args.methods:
        method = Method.parse(name)
        label_mode = MethodConfig(name=name, forget_coeff=method.forget_coeff).label_mode()
        dataset = T.unlearning_dataset(method, data.forget, data.retain, data.refusals, lm.tokenizer, lm.prompt,
                                       args.max_length, label_mode)
        T.cache_reference_logprobs(method, ref, dataset)
        stream = T.index_stream(len(dataset), 1001)
        batches = []
        for _ in range(args.pairs):
            items = [dataset[next(stream)] for _ in range(args.batch_size)]
            batches.append(T._to(collate(items, full_width_parts=dataset.full_width_parts), device))
        live_ref = ref if method.needs_live_ref_model else None
        widths = {p: batches[0][p]["input_ids"].shape[1] for p in method.batch_parts}
        print(f"\n{name}: parts {widths} (first micro-batch's widths), label mode {label_mode}, "
              f"live reference: {live_ref is not None}", flush=True)
        lm.model.train()
        fb = {"fused": Timings(), "separate": Timings()}
        step = {"fused": Timings(), "separate": Timings()}
        losses: dict[str, list[float]] = {"fused": [], "separate": []}

        def run(variant: str, batch, record: bool = True) -> None:
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            out = compute_loss(method, lm.model, batch, live_ref, fused=variant == "fused")
            out.total.backward()
            sync(device)
            fb_wall, fb_cpu = time.perf_counter() - wall, time.process_time() - cpu
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if record:
                fb[variant].add(fb_wall, fb_cpu)
                step[variant].add(time.perf_counter() - wall, time.process_time() - cpu)
                losses[variant].append(float(out.total.detach()))

        for variant in ("fused", "separate"):  # warm-up: first-call allocations, AdamW state
            run(variant, batches[0], record=False)
        for i, variant, _ in alternate({"fused": 0, "separate": 0}, args.pairs):
            run(variant, batches[i])
        for variant in ("fused", "separate"):
            print(f"  {variant:<9} step {step[variant].describe()}", flush=True)
            print(f"  {variant:<9} fwd+bwd {fb[variant].describe()}", flush=True)
        ratio = pair_ratio(step["fused"], step["separate"], clock)
        fb_ratio = pair_ratio(fb["fused"], fb["separate"], clock)
        other = pair_ratio(step["fused"], step["separate"], other_clock(clock))
        # Same micro-batch and weights (lr 0) in a pair: the gap is the fused forward's rounding.
        gap = max(abs(a - b) for a, b in zip(losses["fused"], losses["separate"]))
        print(f"  {name}: fused/separate step {ratio:.3f}x, fwd+bwd {fb_ratio:.3f}x ({clock} clock, median of "
              f"{args.pairs} pairs; step {other:.3f}x on the {other_clock(clock)} clock); largest loss gap "
              f"within a pair {gap:.1e}", flush=True)
        results[name] = (ratio, fb_ratio)
    worst = max(r for r, _ in results.values())
    details = "; ".join(f"{n} step {r:.3f}x, fwd+bwd {f:.3f}x" for n, (r, f) in results.items())
    details += (f"; fused/separate, {clock} clock, median of {args.pairs} pairs, {args.model} B={args.batch_size} "
                f"T<={args.max_length} on {device.type}, load average {machine_load():.1f}")
    result_line("fused_forward", worst, details, f"<= {TARGET:.2f} (worst method's step)", worst <= TARGET)
    return 0


def machine_load() -> float:
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


if __name__ == "__main__":
    sys.exit(main())
