#!/usr/bin/env python
"""A short GPU check: a few unlearning steps of ME+GD and NPO+GD on SmolLM2-135M in bf16 on CUDA, with
step time and peak memory, then a batched evaluation timing. About a minute on one GPU.

    python experiments/gpu_check.py                       # cuda:0, 6 steps, batch 4, max_length 500
    python experiments/gpu_check.py --steps 10 --batch-size 8 --device cuda:1

With two or more GPUs visible it also runs one ZeRO-3 trial over two of them (``torchrun -m
study.trial.distributed``, the path of ``torchrun ... experiments/sweep.py``) and compares its per-step
losses with the same configuration in one process (``multi-GPU:`` line; skipped without DeepSpeed).

Without CUDA it refuses (one line on stderr, exit status 2). Exit status 1 if a loss is not finite or the
two-GPU losses differ from one process's.
Peak memory is ``torch.cuda.max_memory_allocated`` over each method's run (model, fp32 master weights,
AdamW state, activations); step times leave out the first step (CUDA warm-up).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("ME+GD", "NPO+GD")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    a = parser.add_argument
    a("--device", default="cuda", help="CUDA device (default: %(default)s)")
    a("--steps", type=int, default=6, help="optimizer steps per method (default: %(default)s)")
    a("--batch-size", type=int, default=4, help="micro-batch (default: %(default)s, the paper's per-device batch)")
    a("--max-length", type=int, default=500, help="padded length (default: %(default)s, as on TOFU)")
    a("--n-authors", type=int, default=20, help="built-in authors (default: %(default)s)")
    a("--eval-batch-size", type=int, default=32, help="generation batch of the evaluation (default: %(default)s)")
    return parser


class StepTimer:
    """Synchronises CUDA at each step end so ``StepEvent.seconds`` is the step's device time too."""

    def __init__(self):
        self.seconds: list[float] = []
        self.losses: list[float] = []

    def on_step(self, event) -> None:
        torch.cuda.synchronize()
        self.seconds.append(event.seconds)
        self.losses.append(event.loss)


def gib(n_bytes: int) -> float:
    return n_bytes / 2**30


def main(argv: list[str] | None = None) -> int:  # long: the checks run in order, each printing its line
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False): run it on a GPU machine",
              file=sys.stderr)
        return 2
    from study.evaluation import evaluate as ev
    from study.inputs import models
    from study.trial import runner
    from study.config import TrainConfig
    from study.inputs.data import BuiltinSource
    from study.inputs.scenarios import load_scenario
    from study.methods import Method
    from study.training.train import unlearn

    device = torch.device(args.device)
    torch.cuda.set_device(device)
    data = load_scenario(BuiltinSource(n_authors=args.n_authors), "fictitious", "forget01", 1)
    n_items = len(data.forget)
    # epochs such that floor(epochs * N / batch) = steps exactly (the half guards float rounding).
    epochs = (args.steps * args.batch_size + 0.5) / n_items
    train_cfg = TrainConfig(lr=1e-5, epochs=epochs, batch_size=args.batch_size, grad_accum=1,
                            max_length=args.max_length)
    print(f"gpu_check: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, SmolLM2-135M bf16, "
          f"{args.steps} steps x batch {args.batch_size} x length {args.max_length}, {n_items} forget items")
    ok = True
    lm = None
    for name in METHODS:
        method = Method.parse(name, forget_coeff=0.1 if name == "ME+GD" else 1.0)
        lm = models.load("smollm2-135m", device=device, dtype=torch.bfloat16)
        ref = runner.frozen_copy(lm.model) if method.needs_ref_model else None
        label_mode = "answer" if method.forget_mask_default else "full"
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        timer = StepTimer()
        started = time.perf_counter()
        result = unlearn(lm.model, lm.tokenizer, lm.prompt, method, data, train_cfg, label_mode, ref_model=ref,
                         callbacks=[timer])
        torch.cuda.synchronize()
        total = time.perf_counter() - started
        steady = timer.seconds[1:] or timer.seconds
        finite = all(math.isfinite(x) for x in timer.losses)
        ok &= finite
        print(f"{name:7s} {result.steps} steps in {total:.1f} s (incl. set-up); step {statistics.median(steady):.3f} s "
              f"median, first {timer.seconds[0]:.3f} s; peak memory {gib(torch.cuda.max_memory_allocated(device)):.2f} "
              f"GiB; loss {timer.losses[0]:.4f} -> {timer.losses[-1]:.4f}{'' if finite else '  NOT FINITE'}")
        del ref
        if name != METHODS[-1]:
            del lm
            torch.cuda.empty_cache()

    metric_models = ev.load_metric_models("builtin", None, device)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = ev.evaluate(lm.model, lm.tokenizer, lm.prompt, data.eval_sets, "fictitious", metric_models,
                         batch_size=args.eval_batch_size, progress=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    n_eval = sum(len(s.rows) for s in data.eval_sets)
    print(f"evaluate: {n_eval} items in {len(data.eval_sets)} sets, {seconds:.1f} s ({n_eval / seconds:.1f} items/s, "
          f"generation batch {args.eval_batch_size}); peak memory {gib(torch.cuda.max_memory_allocated(device)):.2f} "
          f"GiB; model utility {result.summary.get('model_utility', float('nan')):.3f}")
    if torch.cuda.device_count() >= 2:
        ok &= multi_gpu_check()
    print("gpu_check: OK" if ok else "gpu_check: FAILED (a loss was not finite, or two GPUs disagreed with one)")
    return 0 if ok else 1


ZERO3_SETTINGS = ["--set", 'model.target="tiny-llama"', "--set", "train.lr=1e-3", "--set", "train.epochs=3",
                  "--set", "data.n_authors=4", "--set", "data.tasks=[1, 2]", "--set", 'data.scenario="continual"',
                  "--set", 'model.dtype="float32"', "--set", "train.batch_size=2", "--set", "train.grad_accum=2"]
"""Continual NPO+KL on the random tiny Llama in fp32 (comparable step for step): two engines per task, a
cached and a live reference."""


def multi_gpu_check() -> bool:
    """One ZeRO-3 trial over two GPUs against the same configuration in one process: True when every step's
    loss agrees within 1e-4 relative (on CPU over gloo they agree to 1e-5, tests/test_distributed.py)."""
    import importlib.util
    import json
    import os
    import subprocess
    import tempfile

    from study import presets
    from study.trial import distributed, runner

    if importlib.util.find_spec("deepspeed") is None:
        print("multi-GPU: skipped (DeepSpeed is not installed)")
        return True
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "-m", "study.trial.distributed", "--preset", "smoke", "--method", "NPO+KL", *ZERO3_SETTINGS,
                   "--train-only", "--no-progress", "--tracking-uri", "none", "--out", out]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(f"multi-GPU: FAILED, torchrun exited {done.returncode}: {done.stderr.strip()[-800:]}")
            return False
        two = json.loads((Path(out) / "history.json").read_text())["steps"]
    cfg = presets.run_config("smoke", "NPO+KL", ZERO3_SETTINGS[1::2])
    recorder = distributed.StepRecorder(runner.tasks_of(cfg))
    device = torch.device("cuda", 0)
    lm = runner.load_for_training(runner.target_model(cfg, runner.scenario_data(cfg, 1), device).path, cfg, device)
    for _ in runner.unlearn_tasks(cfg, lm, runner.TrialHooks(callbacks=[recorder]), progress=False):
        pass
    one = recorder.steps
    worst = max((abs(b["loss"] - a["loss"]) / max(abs(a["loss"]), 1e-12) for a, b in zip(one, two)), default=float("inf"))
    ok = len(one) == len(two) and worst < 1e-4
    print(f"multi-GPU: ZeRO-3 over 2 GPUs, {len(two)} steps in {seconds:.0f} s (incl. start-up); largest relative "
          f"loss difference to one process {worst:.1e}{'' if ok else '  DIFFERS'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
