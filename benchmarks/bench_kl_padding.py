#!/usr/bin/env python
"""What the reference's KL averaging costs: a GA+KL step with the retain batch padded to ``max_length``
(``train.kl_full_padding = true``, the default, as the reference code) against one trimmed to its
longest row (``false``, the faster option, which changes the KL's average).

    python benchmarks/bench_kl_padding.py                       # SmolLM2-135M, default data, max_length 64
    python benchmarks/bench_kl_padding.py --max-length 500      # the paper's TOFU length
    python benchmarks/bench_kl_padding.py --model tiny-llama --pairs 2

One optimizer step = ``compute_loss`` (forget forward, retain forward, reference forward on retain)
+ backward + AdamW step, on the same micro-batch of the default preset's data (built-in authors,
forget01 task 1, micro-batch 4). The two variants run back to back, ``--pairs`` times (A B, B A, ...);
the figure is the median of the per-pair ratios full / trimmed (CPU seconds on a CPU device, wall on
CUDA; see ``benchmarks/__init__.py``). No target: the figure is what the README quotes as the cost.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    Timings, add_clock_arg, add_device_arg, alternate, clock_for, machine, pair_ratio, resolve_device, timed,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=64, help="padded length (default: the default preset's 64)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs of optimizer steps (default: %(default)s)")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)

    import torch

    from study.inputs import models
    from study.training import train as T
    from study.inputs.data import BuiltinSource
    from study.inputs.batches import collate
    from study.inputs.scenarios import load_scenario
    from study.methods import Method, compute_loss

    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)
    print(machine(), flush=True)
    lm = models.load(args.model, device=device, dtype=torch.float32)
    ref = copy.deepcopy(lm.model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    data = load_scenario(BuiltinSource(n_authors=12), "fictitious", "forget01", 1, ds_size=12)
    method = Method.parse("GA+KL")
    batches = {}
    for full in (True, False):
        dataset = T.unlearning_dataset(method, data.forget, data.retain, data.refusals, lm.tokenizer, lm.prompt,
                                       args.max_length, "answer", kl_full_padding=full)
        items = [dataset[i] for i in range(4)]
        batches["full" if full else "trimmed"] = T._to(collate(items, full_width_parts=dataset.full_width_parts), device)
    widths = {k: tuple(b["retain"]["input_ids"].shape) for k, b in batches.items()}
    print(f"retain batch: full {widths['full']}, trimmed {widths['trimmed']}", flush=True)
    optimizer = T.adamw(T.adamw_param_groups(lm.model, 0.01), 1e-7)
    lm.model.train()

    def step(batch):
        out = compute_loss(method, lm.model, batch, ref)
        out.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timings = {"full": Timings(), "trimmed": Timings()}
    step(batches["full"])  # warm-up
    for _, name, batch in alternate(batches, 2 * args.pairs):
        timed(lambda: step(batch), device, timings[name])
    for name, t in timings.items():
        print(f"{name:<8} {t.describe()}", flush=True)
    ratio = pair_ratio(timings["full"], timings["trimmed"], clock)
    print(f"kl_padding: {ratio:.3f}x (GA+KL step, retain padded to {args.max_length} vs trimmed to "
          f"{widths['trimmed'][1]} tokens, {args.model}, median of {args.pairs * 2} paired {clock} ratios)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
