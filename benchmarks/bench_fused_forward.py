#!/usr/bin/env python
"""One forward per step: an unlearning step with the method's batch parts fused into one batch
(``compute_loss(fused=True)``, the default) against one forward per part.

    python benchmarks/bench_fused_forward.py                         # SmolLM2-135M, ME+GD, NPO+KL, IDK+AP
    python benchmarks/bench_fused_forward.py --methods DPO+GD --pairs 4
    python benchmarks/bench_fused_forward.py --model tiny-llama --pairs 2

Three variants of one optimizer step, as ``unlearn`` runs it with the default preset's settings
(built-in authors, fictitious forget01 task 1, micro-batch 4, ``max_length`` 64, ``grad_accum`` 1, the
label mode each method implies, KL's retain part padded to ``max_length``, NPO's reference log-probs
cached before training): ``compute_loss`` + backward (``fwd+bwd``), then the AdamW step (``step`` = both).

- ``fused``: the default: one forward of the model over all parts, one of the reference over its parts,
  the LM head skipping the columns before the first label where no loss reads every position;
- ``separate``: ``fused=False``: one forward per part, each part's LM head skipping its own unlabelled
  columns (isolates the fusion);
- ``before``: one forward per part with full logits, i.e. the code before issue 14 (the model wrapped
  so that it does not take ``logits_to_keep``).

The reference model is a frozen copy of the model; lr 0, so every variant sees the same weights. Each
round runs the three back to back on the same micro-batch (orders alternate); the figure per method is
the median of the per-round ratios (CPU seconds on a CPU device, wall on CUDA; see
``benchmarks/__init__.py``). Target (issue 14): ``fused / before`` at most 0.75x for every method.
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


def main(argv=None) -> int:  # long: one linear script (set-up, the timed runs, the report), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=64, help="padded length (default: the default preset's 64)")
    parser.add_argument("--batch-size", type=int, default=4, help="micro-batch (default: the preset's 4)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of optimizer steps per method (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared CPU, OpenMP threads spinning against other "
                             "processes made step times vary 4x; 0 = torch's choice)")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from study.inputs import models
    from study.training import train as T
    from study.config import MethodConfig
    from study.inputs.data import BuiltinSource
    from study.inputs.batches import collate
    from study.inputs.scenarios import load_scenario
    from study.methods import Method, compute_loss

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
        variants = ("fused", "separate", "before")
        fb = {v: Timings() for v in variants}
        step = {v: Timings() for v in variants}
        losses: dict[str, list[float]] = {v: [] for v in variants}
        before_model = FullLogits(lm.model)
        before_ref = FullLogits(live_ref) if live_ref is not None else None

        def run(variant: str, batch, record: bool = True) -> None:
            model, reference = (before_model, before_ref) if variant == "before" else (lm.model, live_ref)
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            out = compute_loss(method, model, batch, reference, fused=variant == "fused")
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

        for variant in variants:  # warm-up: first-call allocations, AdamW state
            run(variant, batches[0], record=False)
        for i, variant, _ in alternate(dict.fromkeys(variants), args.pairs):
            run(variant, batches[i])
        for variant in variants:
            print(f"  {variant:<9} step    {step[variant].describe()}", flush=True)
            print(f"  {variant:<9} fwd+bwd {fb[variant].describe()}", flush=True)
        ratio = pair_ratio(step["fused"], step["before"], clock)
        fb_ratio = pair_ratio(fb["fused"], fb["before"], clock)
        fusion = pair_ratio(step["fused"], step["separate"], clock)
        other = pair_ratio(step["fused"], step["before"], other_clock(clock))
        # Same micro-batch and weights (lr 0) in a round: the gap is float rounding.
        gap = max(abs(a - b) for v in ("separate", "before") for a, b in zip(losses["fused"], losses[v]))
        print(f"  {name}: fused/before step {ratio:.3f}x, fwd+bwd {fb_ratio:.3f}x; fused/separate step {fusion:.3f}x "
              f"({clock} clock, median of {args.pairs} rounds; fused/before step {other:.3f}x on the "
              f"{other_clock(clock)} clock); largest loss gap within a round {gap:.1e}", flush=True)
        results[name] = (ratio, fb_ratio, fusion)
    worst = max(r for r, _, _ in results.values())
    details = "; ".join(f"{n} step {r:.3f}x (fwd+bwd {f:.3f}x, fused/separate {u:.3f}x)"
                        for n, (r, f, u) in results.items())
    details += (f"; fused/before, {clock} clock, median of {args.pairs} rounds, {args.model} B={args.batch_size} "
                f"T<={args.max_length} on {device.type}, load average {machine_load():.1f}")
    result_line("fused_forward", worst, details, f"<= {TARGET:.2f} (worst method's step)", worst <= TARGET)
    return 0


class FullLogits:
    """A model that does not take ``logits_to_keep``: every column's logits, as before issue 14."""

    def __init__(self, model):
        self.module = model
        self.training = model.training

    def modules(self):
        return self.module.modules()

    def forward(self, input_ids, attention_mask, output_hidden_states=False):
        return self.module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)

    __call__ = forward


def machine_load() -> float:
    import os

    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


if __name__ == "__main__":
    sys.exit(main())
