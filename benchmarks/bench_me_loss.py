#!/usr/bin/env python
"""ME loss: the closed form against the reference code's softmax + uniform + ``F.kl_div``.

    python benchmarks/bench_me_loss.py                       # batch 4 x 500 tokens, V = 32000 and 49152
    python benchmarks/bench_me_loss.py --device cuda --dtype bfloat16

Two implementations of ``mean_t KL(U_V || p_θ(·|t))`` (docs/science.md §3, ME), forward + backward on logits
``[B, T, V]`` with every position labelled (ME+GD's ``mask=false``):

- ``closed``: ``study.methods.me_loss`` = ``logsumexp(z) - mean(z) - log V``, no ``[B, T, V]`` softmax;
- ``naive``: the reference code's ``get_me_loss``: ``softmax`` of the shifted logits, a uniform tensor
  of the same size, ``F.kl_div((p + 1e-12).log(), uniform, reduction='none').sum(-1)``, masked mean.

Time: both variants in this process, in ``--repeat`` back-to-back pairs; the median of the per-pair ratios
(CPU seconds on a CPU device, wall seconds on CUDA; see ``benchmarks/__init__.py``).
Peak memory: each variant in a fresh subprocess. The logits are allocated first and are counted in
**neither** variant; everything after (saved activations, temporaries, and the gradient of the logits,
which both must produce) is counted in **both**. On CPU the peak is the process's resident-set high-water
mark (``VmHWM``), reset with ``/proc/self/clear_refs`` once the logits exist (``tracemalloc`` does not see
torch's allocations); on CUDA it is ``torch.cuda.max_memory_allocated``.

Target: closed-form peak at most a third of the naive one, and faster, at every vocabulary size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    Timings, add_clock_arg, add_device_arg, alternate, clock_for, machine, other_clock, pair_ratio, resolve_device,
    result_line, sync, timed,
)

MEMORY_TARGET = 1 / 3
TIME_TARGET = 1.0


def naive_me_loss(logits, labels):
    """The reference code's ME loss (``get_me_loss``): shift, full softmax, uniform, ``F.kl_div``."""
    import torch
    import torch.nn.functional as F

    v = logits.shape[-1]
    shifted_labels = labels[:, 1:]
    shifted_logits = logits[:, :-1, :]
    mask = shifted_labels != -100
    probs = F.softmax(shifted_logits, dim=-1).view(-1, v)
    uniform = torch.full_like(probs, 1.0 / v)
    kl = F.kl_div((probs + 1e-12).log(), uniform, reduction="none").sum(-1).view(shifted_labels.shape)
    return (kl * mask).sum() / mask.sum()


def closed_me_loss(logits, labels):
    from study.methods import me_loss

    return me_loss(logits, labels, "reference")


VARIANTS = {"closed": closed_me_loss, "naive": naive_me_loss}


def make_inputs(batch: int, tokens: int, vocab: int, dtype, device, seed: int = 0):
    """Leaf logits ``[B, T, V]`` (grad wanted) at a realistic scale, and labels on every position."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(batch, tokens, vocab, generator=generator)).to(device=device, dtype=dtype)
    logits.requires_grad_(True)
    labels = torch.randint(vocab, (batch, tokens), generator=generator).to(device)
    return logits, labels


def step(fn, logits, labels):
    logits.grad = None
    loss = fn(logits, labels)
    loss.backward()
    return loss.detach()


# ----------------------------------------------------------------------------------------------------
# Peak memory: one fresh process per (variant, vocabulary)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak(variant: str, batch: int, tokens: int, vocab: int, dtype_name: str, device_name: str) -> dict:
    """Peak bytes of one forward + backward beyond the live logits (run in a fresh process)."""
    import gc

    import torch

    device = torch.device(device_name)
    fn = VARIANTS[variant]
    logits, labels = make_inputs(batch, tokens, vocab, getattr(torch, dtype_name), device)
    step(fn, logits, labels)  # warm-up: lazy initialisation (thread pools, kernels) is not the loss's memory
    logits.grad = None
    gc.collect()
    logits_bytes = logits.numel() * logits.element_size()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(fn, logits, labels)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        how = "torch.cuda.max_memory_allocated"
    else:
        base = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        step(fn, logits, labels)
        peak = (_rss_kib("VmHWM") - base) * 1024
        how = "VmHWM after clear_refs"
    return {"variant": variant, "vocab": vocab, "peak_bytes": peak, "logits_bytes": logits_bytes, "how": how}


def measure_peak(variant: str, args, vocab: int, device) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--tokens", str(args.tokens),
               "--vocab", str(vocab), "--dtype", args.dtype, "--device", str(device)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child failed ({' '.join(command)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------


def main(argv=None) -> int:  # long: one linear script (set-up, the timed runs, the report), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=500, help="sequence length T (TOFU's max_length is 500)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 49152],
                        help="vocabulary sizes (Llama-2: 32000, SmolLM2: 49152)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="logits dtype (float32: what a CPU run trains in)")
    parser.add_argument("--repeat", type=int, default=5, help="timed forward+backward passes per variant")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    add_device_arg(parser)
    add_clock_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    clock = clock_for(args.clock, device)

    if args.child:  # one peak-memory measurement, printed as JSON for the parent
        print(json.dumps(child_peak(args.child, args.batch, args.tokens, args.vocab[0], args.dtype, str(device))))
        return 0

    import torch

    print(f"bench_me_loss: {machine()}; device {device}; logits [{args.batch}, {args.tokens}, V] {args.dtype}, "
          "forward + backward, every position labelled", flush=True)
    mem_ratios, time_ratios, parts = [], [], []
    for vocab in args.vocab:
        logits, labels = make_inputs(args.batch, args.tokens, vocab, getattr(torch, args.dtype), device)
        values = {name: float(step(fn, logits, labels)) for name, fn in VARIANTS.items()}  # warm-up + check
        times = {name: Timings() for name in VARIANTS}
        for _, name, fn in alternate(VARIANTS, args.repeat):
            timed(lambda fn=fn, logits=logits, labels=labels: step(fn, logits, labels), device, times[name])
        del logits, labels
        sync(device)
        peaks = {name: measure_peak(name, args, vocab, device) for name in VARIANTS}
        logits_mib = peaks["closed"]["logits_bytes"] / 2**20
        mem_ratio = peaks["closed"]["peak_bytes"] / peaks["naive"]["peak_bytes"]
        time_ratio = pair_ratio(times["closed"], times["naive"], clock)
        mem_ratios.append(mem_ratio)
        time_ratios.append(time_ratio)
        print(f"V={vocab}: logits {logits_mib:.0f} MiB (counted in neither); loss closed {values['closed']:.6f}, "
              f"naive {values['naive']:.6f} (|diff| {abs(values['closed'] - values['naive']):.2e})")
        for name in VARIANTS:
            peak_mib = peaks[name]["peak_bytes"] / 2**20
            print(f"  {name:6s} time {times[name].describe()}; peak {peak_mib:.0f} MiB "
                  f"= {peak_mib / logits_mib:.2f}x the logits ({peaks[name]['how']})")
        other = other_clock(clock)
        print(f"  closed/naive: time {time_ratio:.3f}x ({clock} clock, median of {args.repeat} pairs; {other} clock "
              f"{pair_ratio(times['closed'], times['naive'], other):.3f}x), peak memory {mem_ratio:.3f}x", flush=True)
        # The gradient of the logits (1x the logits) is the least any implementation must hold.
        naive_x = peaks["naive"]["peak_bytes"] / peaks["naive"]["logits_bytes"]
        print(f"  floor: the gradient alone is 1.00x the logits, {1 / naive_x:.3f}x of naive; the closed form holds "
              f"{peaks['closed']['peak_bytes'] / peaks['closed']['logits_bytes'] - 1:.2f}x the logits more (chunk "
              "temporaries and the allocator's slack)")
        parts.append(f"V={vocab}: mem {mem_ratio:.2f}x, time {time_ratio:.2f}x")

    worst_mem, worst_time = max(mem_ratios), max(time_ratios)
    met = worst_mem <= MEMORY_TARGET and worst_time < TIME_TARGET
    details = (f"closed/naive peak memory, worst V; {'; '.join(parts)}; B={args.batch} T={args.tokens} {args.dtype} "
               f"fwd+bwd on {device.type}, logits excluded, grad included, {clock} time, median of {args.repeat} pairs")
    result_line("me_loss", worst_mem, details, f"<= {MEMORY_TARGET:.3f} memory and time < {TIME_TARGET:g}x", met)
    return 0


if __name__ == "__main__":
    sys.exit(main())
