"""Sensitivity beyond the paper: does "method A beats method B" hinge on one hand-picked setting?

The paper compares methods at one released setting each. Here every method gets an Optuna study over
its own hyper-parameter space with the **same trial budget**, and the methods are compared by what
their trials can reach: each method's Pareto front in (Model Utility, Forget Efficacy), both maximised.

Two numbers summarise a front (pure functions, tested on hand-made fronts):

* :func:`hypervolume` -- the area of the (MU, FE) square ``[0, 1]^2`` that the front dominates
  (reference point (0, 0)); larger is better, and a front that dominates another has at least its area.
* :func:`coverage` -- Zitzler and Thiele's set coverage C(A, B): the share of B's front points that
  some point of A's front weakly dominates (>= in both). C(A, B) = 1 and C(B, A) < 1: A's front is
  better everywhere B reaches; both below 1: the fronts cross, and which method "wins" depends on the
  setting and on how MU is traded for FE.

And one number tied to the paper's claim (a): the highest FE among a method's trials whose MU stays at
least :data:`study.reporting.results.STABLE_MEAN` × the target's MU (:func:`best_fe_at_stable_mu`).

:func:`write_sensitivity` writes ``trials.csv``, ``fronts.csv``, ``methods.csv``, ``coverage.csv``,
``README.md``, ``pareto.png`` (every trial, each method's front) and ``sensitivity.png`` (MU and FE
against each hyper-parameter) into a folder; ``experiments/reproduce.py --sensitivity N`` runs the
studies and calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import finished, order_methods, pareto_front, plot_mu_fe, plot_sensitivity, sensitivity, study_seeds
from ..methods.hyperparams import HYPERPARAMS
from .results import STABLE_MEAN, markdown_table

__all__ = ["PARAMS", "hypervolume", "coverage", "best_fe_at_stable_mu", "method_table", "coverage_table",
           "write_sensitivity"]

PARAMS: tuple[str, ...] = tuple(HYPERPARAMS)
"""The axes a trial is read along: every searchable hyper-parameter (study/methods/hyperparams.py); a method's
trials show only the ones it has (``study.reporting.analysis.sensitivity``)."""

MU, FE = "model_utility", "forget_efficacy"
TRIAL_COLUMNS = ("method", "trial_number", *PARAMS, MU, FE, "forget/rouge", "run_id")


def hypervolume(front: pd.DataFrame) -> float:
    """The area dominated by ``front`` (rows with MU and FE) inside ``[0, 1]^2``, from the reference
    point (0, 0). Points are clipped to the square; an empty front has area 0."""
    if front.empty:
        return 0.0
    points = pareto_front(front.assign(**{MU: front[MU].clip(0, 1), FE: front[FE].clip(0, 1)}))
    xs, ys = points[MU].to_numpy(dtype=float), points[FE].to_numpy(dtype=float)
    # Sorted by MU ascending, FE descending: for MU in (x[i-1], x[i]] the best FE reachable is y[i].
    return float(np.sum(np.diff(np.concatenate([[0.0], xs])) * ys))


def coverage(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """C(a, b): the share of ``b``'s points weakly dominated (>= in MU and in FE) by some point of
    ``a``; NaN when ``b`` is empty."""
    if b.empty:
        return float("nan")
    ax, ay = a[MU].to_numpy(dtype=float), a[FE].to_numpy(dtype=float)
    bx, by = b[MU].to_numpy(dtype=float), b[FE].to_numpy(dtype=float)
    covered = ((ax[None, :] >= bx[:, None]) & (ay[None, :] >= by[:, None])).any(axis=1)
    return float(covered.mean())


def best_fe_at_stable_mu(trials: pd.DataFrame, target_mu: float) -> float:
    """The highest FE among ``trials`` whose MU is at least ``STABLE_MEAN`` × ``target_mu``; NaN when
    none is (or the target's MU is unknown)."""
    if not np.isfinite(target_mu):
        return float("nan")
    stable = trials[trials[MU].astype(float) >= STABLE_MEAN * target_mu]
    return float(stable[FE].max()) if not stable.empty else float("nan")


def _trials(runs: pd.DataFrame) -> pd.DataFrame:
    done = finished(runs)
    columns = [c for c in TRIAL_COLUMNS if c in done]
    return done[columns].sort_values(["method", "trial_number"] if "trial_number" in done else ["method"]).reset_index(drop=True)


def method_table(trials: pd.DataFrame, target_mu: float = float("nan")) -> pd.DataFrame:
    """One row per method: trials, front size, hypervolume, the best MU, the best FE, the best FE at a
    stable MU; ordered by hypervolume, largest first."""
    rows = []
    for method in order_methods(trials["method"]):
        own = trials[trials["method"] == method]
        rows.append({"method": method, "trials": len(own), "front": len(pareto_front(own)),
                     "hypervolume": hypervolume(own), "best_MU": float(own[MU].max()), "best_FE": float(own[FE].max()),
                     "best_FE_at_stable_MU": best_fe_at_stable_mu(own, target_mu)})
    table = pd.DataFrame(rows, columns=["method", "trials", "front", "hypervolume", "best_MU", "best_FE",
                                        "best_FE_at_stable_MU"])
    return table.sort_values("hypervolume", ascending=False, kind="stable").reset_index(drop=True)


def coverage_table(trials: pd.DataFrame) -> pd.DataFrame:
    """C(row, column) for every pair of methods' fronts (the diagonal is 1 by definition)."""
    methods = order_methods(trials["method"])
    fronts = {m: pareto_front(trials[trials["method"] == m]) for m in methods}
    return pd.DataFrame([[coverage(fronts[a], fronts[b]) for b in methods] for a in methods],
                        index=pd.Index(methods, name="covers"), columns=methods)


def _dominance_lines(cover: pd.DataFrame) -> list[str]:
    """'A's front covers B's entirely (and not the reverse)' for every such pair."""
    lines = []
    for a in cover.index:
        for b in cover.columns:
            if a != b and cover.loc[a, b] == 1.0 and cover.loc[b, a] < 1.0:
                lines.append(f"- {a}'s front covers {b}'s (C = 1; C({b}, {a}) = {cover.loc[b, a]:.2f})")
    return lines or ["- no method's front covers another's entirely: the fronts cross"]


def write_sensitivity(runs: pd.DataFrame, out: str | Path, target_mu: float = float("nan"), note: str = "") -> dict[str, Path]:
    """Write the sensitivity study's tables, README and figures into ``out``; returns the paths."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = _trials(runs)
    fronts = pd.concat([pareto_front(trials[trials["method"] == m]) for m in order_methods(trials["method"])] or
                       [trials.iloc[:0]], ignore_index=True)
    methods, cover = method_table(trials, target_mu), coverage_table(trials)
    paths = {name: out / f"{name}.csv" for name in ("trials", "fronts", "methods", "coverage")}
    trials.to_csv(paths["trials"], index=False)
    fronts.to_csv(paths["fronts"], index=False)
    methods.to_csv(paths["methods"], index=False)
    cover.to_csv(paths["coverage"])
    lines = ["# Sensitivity: each method's Pareto front over its own hyper-parameter space", ""]
    if note:
        lines += [note, ""]
    lines += ["Hypervolume: the area of the (MU, FE) unit square the method's front dominates (reference point "
              "(0, 0)). Best FE at stable MU: the highest FE of a trial whose MU is at least "
              f"{STABLE_MEAN} × the target's ({target_mu:.3f}). Definitions and tests: `study/reporting/sensitivity.py`.", "",
              markdown_table(methods), "",
              "## Set coverage C(row, column)", "",
              "The share of the column method's front points that some point of the row method's front "
              "matches or beats in both MU and FE.", "",
              markdown_table(cover.reset_index()), "", *_dominance_lines(cover), "",
              "![every trial and each method's front](pareto.png)", "", "![MU and FE against each hyper-parameter](sensitivity.png)", ""]
    paths["readme"] = out / "README.md"
    paths["readme"].write_text("\n".join(lines))
    done = finished(runs)
    seeds = sorted({int(v) for v in done["seed"].dropna()}) if "seed" in done else study_seeds(done)
    per_method = done.groupby("method").size() if not done.empty else pd.Series(dtype=int)
    scale = ", ".join(filter(None, [
        " / ".join(sorted(set(done["model"].dropna()))) if "model" in done else "",
        " / ".join(sorted(set(done["split"].dropna()))) if "split" in done else "",
        f"seed {', '.join(map(str, seeds))}" if seeds else "",
        f"{per_method.min()}-{per_method.max()} trials per method" if len(per_method) and per_method.min() != per_method.max()
        else f"{per_method.iloc[0]} trials per method" if len(per_method) else ""]))
    ax = plot_mu_fe(runs, title=f"every trial; lines: each method's Pareto front\n{scale}")
    if ax is not None:
        paths["pareto"] = out / "pareto.png"
        ax.figure.savefig(paths["pareto"], dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
    figure = plot_sensitivity(sensitivity(runs, [p for p in PARAMS if p in runs]), title=scale)
    if figure is not None:
        paths["sensitivity"] = out / "sensitivity.png"
        figure.savefig(paths["sensitivity"], dpi=110, bbox_inches="tight")
        plt.close(figure)
    return paths
