"""Shared helpers of the benchmark scripts (``benchmarks/bench_*.py``, ``benchmarks/run_all.py``).

Every script prints its figures, then one result line, the last line of its output::

    <name>: <ratio>x (<details>) target <op> <value>: met|MISSED

which :func:`result_line` formats and :data:`RESULT_RE` parses (``run_all.py`` builds its table from it).
Timings on a shared machine are noisy: the scripts measure the variants they compare side by side in one
process, alternate them, repeat, and report the minimum (the run least disturbed by other processes)
next to the median.
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


def timed(fn, device) -> float:
    """Wall seconds of ``fn()``, device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def summary(values: list[float]) -> str:
    """``min / median`` of repeated timings, for the printed figures."""
    return f"min {min(values):.3f} s, median {statistics.median(values):.3f} s (n={len(values)})"


def machine() -> str:
    """One line naming what the figures were measured on."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"torch {torch.__version__}, {cpus} CPU cores visible, {torch.get_num_threads()} torch threads, {gpu}"


def result_line(name: str, ratio: float, details: str, target: str, met: bool) -> str:
    """Print and return the script's result line (its last line of output)."""
    line = f"{name}: {ratio:.3f}x ({details}) target {target}: {'met' if met else 'MISSED'}"
    assert RESULT_RE.match(line), line
    print(line, flush=True)
    return line
