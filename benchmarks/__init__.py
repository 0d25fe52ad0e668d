"""Shared helpers of the benchmark scripts (``benchmarks/bench_*.py``, ``benchmarks/run_all.py``).

Every script prints its figures, then one result line, the last line of its output::

    <name>: <ratio>x (<details>) target <op> <value>: met|MISSED

which :func:`result_line` formats and :data:`RESULT_RE` parses (``run_all.py`` builds its table from it).
Timings on a shared machine are noisy. The scripts run the variants they compare side by side in one
process, in **pairs** (A B, then B A, then A B ...), and take the **median of the per-pair ratios**:
the two runs of a pair are back to back, so a change in the machine's load between pairs cancels, and the
median ignores the pairs that a burst of load hit on one side only. On this machine, shared with other
engineers' test runs (load average 4-12 on 2 cores), single runs of identical work varied by up to 2x on
either clock, and ratios of minima over 3-4 runs moved by up to 25% between invocations.

Two clocks are recorded for every run:

- ``cpu``: CPU seconds of this process (all its threads), ``time.process_time``: little disturbed by
  processes competing for the cores (the default on a CPU device);
- ``wall``: ``time.perf_counter`` around the work, device synchronised (the default on CUDA, where the
  work is not this process's CPU time).

Both are printed, with minimum and median per variant.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # scripts run as `python benchmarks/bench_x.py` import `study` from the checkout
    sys.path.insert(0, str(ROOT))

# No network here and none needed: every model the benchmarks load is local or built in.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULT_RE = re.compile(
    r"^(?P<name>[\w.-]+): (?P<ratio>[0-9.]+|nan)x \((?P<details>.*)\) target (?P<target>.+): (?P<status>met|MISSED)$"
)
"""Parses a result line: name, ratio, details, target (``<op> <value>`` and any extra condition), status."""


def add_device_arg(parser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")


def resolve_device(name: str | None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device) -> None:
    """Wait for queued kernels, so a wall-clock reading covers them (no-op on CPU)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def add_clock_arg(parser) -> None:
    parser.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                        help="which time the ratios use: cpu (process CPU seconds) or wall; "
                             "auto: cpu on a CPU device, wall on CUDA")


def clock_for(choice: str, device) -> str:
    if choice != "auto":
        return choice
    return "wall" if getattr(device, "type", str(device)).startswith("cuda") else "cpu"


class Timings:
    """Repeated timings of one variant on both clocks."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def on(self, clock: str) -> list[float]:
        return self.cpu if clock == "cpu" else self.wall

    def median(self, clock: str) -> float:
        return statistics.median(self.on(clock))

    def describe(self, scale: float = 1.0) -> str:
        w = [v * scale for v in self.wall]
        c = [v * scale for v in self.cpu]
        return (f"wall min {min(w):.3f} s / median {statistics.median(w):.3f} s; "
                f"cpu min {min(c):.3f} s / median {statistics.median(c):.3f} s (n={len(w)})")


def timed(fn, device, into: Timings | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of ``fn()``, device work included; appended to ``into`` if given."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if into is not None:
        into.add(wall, cpu)
    return wall, cpu


def pair_ratio(a: Timings, b: Timings, clock: str) -> float:
    """Median over pairs of ``a[i] / b[i]`` (runs ``i`` of ``a`` and ``b`` ran back to back)."""
    return statistics.median(x / y for x, y in zip(a.on(clock), b.on(clock)))


def other_clock(clock: str) -> str:
    return "wall" if clock == "cpu" else "cpu"


def alternate(variants: dict, repeat: int):
    """``(round, name, value)`` in the order A B, B A, A B ...: a drift in the machine's load hits all alike."""
    items = list(variants.items())
    for i in range(repeat):
        for name, value in (items if i % 2 == 0 else items[::-1]):
            yield i, name, value


def machine() -> str:
    """One line naming what the figures were measured on, with the load the other processes put on it."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"torch {torch.__version__}, {cpus} CPU cores visible{load}, {torch.get_num_threads()} torch threads, {gpu}"


def result_line(name: str, ratio: float, details: str, target: str, met: bool) -> str:
    """Print and return the script's result line (its last line of output)."""
    line = f"{name}: {ratio:.3f}x ({details}) target {target}: {'met' if met else 'MISSED'}"
    assert RESULT_RE.match(line), line
    print(line, flush=True)
    return line
