#!/usr/bin/env python
"""The training loop's overhead: ``study.training.train.train_loop`` against a bare PyTorch loop.

    python benchmarks/bench_trainer.py                        # SmolLM2-135M, default preset's batches
    python benchmarks/bench_trainer.py --model tiny-llama --steps 20

Both loops train the same model on the same micro-batches (the default preset's fine-tuning rows,
``batch_size`` 4, ``max_length`` 64, in ``train_loop``'s own data order) with a GD-style loss
(``study.methods.mean_nll`` on ``retain``, as ``study.training.train.finetune``), the same AdamW parameter
groups (no weight decay on biases and norms) and the same learning-rate schedule:

- ``train_loop``: the library loop: collation per micro-batch, finiteness check, ``loss.item()`` and
  loss parts per micro-batch, gradient norm, ``StepEvent`` history, tqdm (disabled), callbacks (none);
- ``bare``: batches collated beforehand (not timed); per step ``forward -> loss -> backward ->
  optimizer.step() -> zero_grad``, nothing else.

Each timed run builds its optimizer and runs ``--steps`` optimizer steps (so both pay AdamW's state
allocation on the first step). After a one-step warm-up of each, ``--repeat`` back-to-back pairs of runs;
the figure is the median of the per-pair ratios (CPU seconds on a CPU device, wall seconds on CUDA; see
``benchmarks/__init__.py``). Target: at most 1.10x.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    Timings, add_clock_arg, add_device_arg, alternate, clock_for, machine, other_clock, pair_ratio,
    resolve_device, result_line, timed,
)

TARGET = 1.10


def gd_loss_fn(model, batch):
    """``train_loop``'s ``loss_fn``: NLL_mean on the ``retain`` part (what ``finetune`` uses)."""
    from study.methods import mean_nll

    part = batch["retain"]
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
    loss = mean_nll(logits, part["labels"])
    return loss, {"nll": loss.detach()}


def optimizer_for(model, lr: float, weight_decay: float):
    """The same AdamW (fused where available) and parameter groups as ``train_loop`` builds."""
    from study.training.train import adamw

    params = [p for p in model.parameters() if p.requires_grad]
    return adamw([{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr)


def same_batches(dataset, steps: int, batch_size: int, grad_accum: int, seed: int, device) -> list[list[dict]]:
    """The micro-batches ``train_loop`` draws for ``steps`` steps (its index stream), collated, on ``device``."""
    from study.inputs.batches import collate
    from study.training.train import _to, index_stream

    stream = index_stream(len(dataset), seed)
    out = []
    for _ in range(steps):
        indices = [next(stream) for _ in range(batch_size * grad_accum)]
        out.append([_to(collate([dataset[i] for i in indices[j * batch_size:(j + 1) * batch_size]]), device)
                    for j in range(grad_accum)])
    return out


def bare_loop(model, batches, lr: float, weight_decay: float, n_items: int, effective: int) -> None:
    """Forward, backward and AdamW step on the given micro-batches, with train_loop's schedule."""
    from study.methods import mean_nll
    from study.training.train import lr_at, warmup_steps_for

    optimizer = optimizer_for(model, lr, weight_decay)
    warmup = warmup_steps_for(n_items, effective)
    model.train()
    for step, micro_batches in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, warmup, len(batches))
        for batch in micro_batches:
            part = batch["retain"]
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            (mean_nll(logits, part["labels"]) / len(micro_batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()


def main(argv=None) -> int:  # long: one linear script (set-up, the timed runs, the report), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="model family or path (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per timed run")
    parser.add_argument("--repeat", type=int, default=8, help="pairs of timed runs (after a one-step warm-up each)")
    parser.add_argument("--batch-size", type=int, default=None, help="micro-batch (default: the preset's, 4)")
    parser.add_argument("--grad-accum", type=int, default=None, help="accumulation steps (default: the preset's, 1)")
    parser.add_argument("--max-length", type=int, default=None, help="padded length (default: the preset's, 64)")
    parser.add_argument("--preset", default="default", help="preset whose data and settings are used")
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)

    import torch

    from study.inputs import models
    from study import presets
    from study.trial import runner
    from study.inputs.batches import QADataset
    from study.training.train import train_loop

    cfg = presets.run_config(args.preset)
    batch_size = args.batch_size or cfg.train.batch_size
    grad_accum = args.grad_accum or cfg.train.grad_accum
    max_length = args.max_length or cfg.train.max_length
    lr, weight_decay, seed = cfg.train.lr, cfg.train.weight_decay, cfg.train.seed

    # fp32 whatever model.dtype resolves to: the bare loop has no fp32 master weights, so a bf16 model
    # would compare two different optimizers (bf16 against fp32 is bench_precision.py's question).
    lm = models.load(args.model, device=device, dtype=torch.float32)
    rows = runner.scenario_data(cfg, runner.tasks_of(cfg)[0]).full
    dataset = QADataset(rows, lm.tokenizer, lm.prompt, max_length)
    effective = batch_size * grad_accum
    # train_loop runs floor(epochs * N / effective) steps: library() asks for exactly `steps`.
    batches = same_batches(dataset, args.steps, batch_size, grad_accum, seed, device)
    n_params = sum(p.numel() for p in lm.model.parameters())
    widths = sorted({mb["retain"]["input_ids"].shape[1] for step in batches for mb in step})
    print(f"bench_trainer: {machine()}; device {device}; {args.model} ({n_params / 1e6:.0f}M parameters), "
          f"{args.steps} steps x {grad_accum} micro-batches of {batch_size} (trimmed widths {widths[0]}-{widths[-1]} tokens)", flush=True)

    def library(steps: int = args.steps) -> None:
        result = train_loop(lm.model, dataset, gd_loss_fn, lr=lr, epochs=(steps * effective + 0.5) / len(dataset),
                            batch_size=batch_size, grad_accum=grad_accum, weight_decay=weight_decay, seed=seed)
        assert result.steps == steps, (result.steps, steps)

    def bare(steps: int = args.steps) -> None:
        bare_loop(lm.model, batches[:steps], lr, weight_decay, len(dataset), effective)

    variants = {"train_loop": library, "bare": bare}
    for fn in variants.values():  # warm-up, one step each: first-call allocations, lazy kernels
        fn(1)
    times = {name: Timings() for name in variants}
    for _, name, fn in alternate(variants, args.repeat):
        timed(fn, device, times[name])
    for name in variants:
        print(f"  {name:10s} per step: {times[name].describe(1 / args.steps)}")
    ratio = pair_ratio(times["train_loop"], times["bare"], clock)
    other = other_clock(clock)
    other_ratio = pair_ratio(times["train_loop"], times["bare"], other)
    per_step_ms = (times["train_loop"].median(clock) - times["bare"].median(clock)) / args.steps * 1000
    print(f"  train_loop/bare: {ratio:.3f}x on the {clock} clock, median of {args.repeat} pairs ({other_ratio:.3f}x "
          f"on the {other} clock); difference of the medians {per_step_ms:+.0f} ms per step")
    details = (f"train_loop/bare {clock} time, median of {args.repeat} pairs of {args.steps}-step runs; {other} clock "
               f"{other_ratio:.3f}x; {args.model} B={batch_size}x{grad_accum} on {device.type}")
    result_line("trainer", ratio, details, f"<= {TARGET:.2f}", ratio <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
