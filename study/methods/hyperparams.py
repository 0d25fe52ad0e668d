"""Every searchable hyper-parameter, declared once (no torch, no Optuna: the analysis reads it too).

A :class:`Param` names its configuration section (``train`` or ``method``), its range and default; which
losses use it is said by the loss registry (``study.methods.registry.LossSpec.hyperparams``, ranges a loss moves in
``LossSpec.ranges``). Everything else derives from :data:`HYPERPARAMS`:

* the configuration key of each (:data:`SETTINGS`, ``"rmu_alpha" -> "method.rmu_alpha"``), which the
  search routes sampled values through (``study.search.apply_params``) and leaves out of the settings a
  resumed study compares (``study.search.fixed_config``);
* the ``--set`` keys that fix a parameter instead of searching it (:data:`SEARCHABLE_SETTINGS`,
  ``experiments/sweep.py``);
* the runs-frame columns (``study.reporting.analysis``) and the sensitivity study's axes (``study.reporting.sensitivity``).

``tests/test_hyperparams.py`` pins each of those, and the configuration dataclasses' fields, to this
table. Adding a loss with a parameter of its own: one :class:`Param` here, the field on
``study.config.MethodConfig`` and ``study.methods.Method`` (which the test demands), the loss naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["Param", "HYPERPARAMS", "SHARED_HYPERPARAMS", "SETTINGS", "SEARCHABLE_SETTINGS", "Section"]

Section = Literal["train", "method"]


@dataclass(frozen=True)
class Param:
    """One searchable hyper-parameter (read by the search module; no Optuna import here)."""

    name: str
    """Field name, as in ``study.methods.Method`` or the training config (``lr``)."""
    low: float
    """Lower bound of the range."""
    high: float
    """Upper bound of the range."""
    log: bool = False
    """Sample uniformly in log space."""
    default: float | None = None
    """The value used when not searching (docs/science.md §4)."""
    integer: bool = False
    """Sample integers in ``[low, high]`` (RMU's layer)."""
    section: Section = "method"
    """The configuration section holding it (``train.lr``, ``method.beta``)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"param {self.name!r}: need finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"param {self.name!r}: a log-scale range needs low > 0, got {self.low}")
        if self.default is not None and not self.low <= self.default <= self.high:
            raise ValueError(f"param {self.name!r}: default {self.default} outside [{self.low}, {self.high}]")
        if self.section not in ("train", "method"):
            raise ValueError(f"param {self.name!r}: section must be train or method, got {self.section!r}")

    @property
    def key(self) -> str:
        """The configuration key, ``<section>.<name>`` (what ``--set`` takes)."""
        return f"{self.section}.{self.name}"


HYPERPARAMS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("lr", 1e-6, 1e-4, log=True, default=1e-5, section="train"),
        # Varied only by the paper sampler (the real-world baselines' released 3 / 5 epochs grid).
        Param("epochs", 1.0, 20.0, default=5.0, section="train"),
        Param("forget_coeff", 0.01, 10.0, log=True, default=1.0),
        Param("beta", 0.01, 1.0, log=True, default=0.1),
        Param("gamma", 0.0, 2.0, default=0.0),
        # RMU (docs/science-beyond-paper.md §2): the published Zephyr-7B settings as defaults; the
        # ranges are this project's choice around them (c = 300 was published for Mixtral-8x7B).
        Param("rmu_layer", 1, 15, default=7, integer=True),
        Param("rmu_steering_coeff", 1.0, 300.0, log=True, default=6.5),
        Param("rmu_alpha", 10.0, 10_000.0, log=True, default=1200.0),
    )
}
"""Every searchable hyper-parameter by name (a loss may narrow or move one: ``LossSpec.ranges``)."""

SHARED_HYPERPARAMS: tuple[str, ...] = ("lr", "forget_coeff")
"""Searched for every method; a loss adds its own (``LossSpec.hyperparams``)."""

SETTINGS: dict[str, str] = {name: p.key for name, p in HYPERPARAMS.items()}
"""Each hyper-parameter's configuration key, ``name -> "<section>.<name>"``."""

SEARCHABLE_SETTINGS: dict[str, str] = {p.key: name for name, p in HYPERPARAMS.items()}
"""``--set`` keys that name a searchable hyper-parameter (``"method.rmu_alpha" -> "rmu_alpha"``): given on
the command line, it is fixed for the study instead of searched."""
