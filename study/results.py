"""The paper's comparison tables rebuilt from seeded runs: means with 95% intervals, the target's row,
the published figures beside, and a table of the paper's qualitative claims with a verdict each.

Pure functions over the runs frame :func:`study.analysis.fetch_runs` returns (``experiments/reproduce.py``
fetches it and calls :func:`write_results`). The runs are the ones ``experiments/reproduce.py`` made:
one Optuna study per (scenario, setting, seed) named by :func:`study_name`, one trial per method
(the ``paper`` sampler at one stated learning rate), so each (scenario, setting, method, seed) has
one finished trial. Where a study holds several finished trials (a user re-ran it with more), their
values are averaged within the seed first, so seeds weigh alike.

Names: a **setting** is what a scenario is run over: the forget split (fictitious: ``forget01`` ...),
``tasks1-4`` / ``tasks1-4-fixref`` (continual, without / with ``--fix-ref-model``), ``real-world``.
MU = Model Utility, FE = Forget Efficacy (docs/science.md §5).

Intervals (:func:`interval`): the mean over seeds ± the half-width of a two-sided 95% Student-t
interval, ``t_{0.975, n-1} · s / √n`` with ``s`` the sample standard deviation (ddof = 1); with one
seed the half-width is NaN (no interval), and every claim that needs it is ``inconclusive``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .paper import PAPER_METHODS, PUBLISHED, PUBLISHED_SOURCE, REAL_WORLD_QUOTED
from .scenarios import CONTINUAL, FICTITIOUS, REAL_WORLD, scenario

__all__ = [
    "PREFIX", "UNTARGETED", "TARGETED", "TARGET_ROW", "SUMMARY_COLUMNS", "CLAIM_COLUMNS", "VERDICTS",
    "STABLE_MEAN", "STABLE_LOWER", "COLLAPSE", "study_name", "parse_study_name", "label_runs", "interval",
    "item_bootstrap", "summary_table", "claims_table", "markdown_table", "plot_mu_fe_intervals", "write_results",
]

PREFIX = "repro"
"""First word of every study name ``experiments/reproduce.py`` makes (:func:`study_name`)."""

UNTARGETED: tuple[str, ...] = ("GA+GD", "GA+KL", "NPO+GD", "NPO+KL", "ME+GD")
"""The paper's untargeted methods (docs/science.md §3)."""
TARGETED: tuple[str, ...] = ("DPO+GD", "DPO+KL", "IDK+GD", "IDK+AP")
"""The paper's targeted methods (they train towards a refusal)."""

TARGET_ROW = "before unlearning"
"""The ``method`` of the target model's row (the model before unlearning)."""

STABLE_MEAN = 0.9
"""Stable MU: mean MU ≥ ``STABLE_MEAN`` × the target's MU ..."""
STABLE_LOWER = 0.75
"""... and the interval's lower bound ≥ ``STABLE_LOWER`` × the target's MU."""
COLLAPSE = 0.5
"""Collapsed MU: MU ≤ ``COLLAPSE`` × the target's MU."""

HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"
VERDICTS: tuple[str, ...] = (HOLDS, FAILS, UNSURE)

SUMMARY_COLUMNS: tuple[str, ...] = (
    "scenario", "setting", "method", "n_seeds", "MU", "MU_half", "FE", "FE_half", "retain_rouge",
    "retain_rouge_half", "MU_items_half", "FE_items_half", "published_MU", "published_FE", "published_scale")
"""Columns of :func:`summary_table`: means over seeds and 95% half-widths (``*_half`` over seeds,
``*_items_half`` over evaluation items, :func:`item_bootstrap`); the published figures."""
CLAIM_COLUMNS: tuple[str, ...] = ("claim", "statement", "scenario", "rule", "verdict", "evidence")

PUBLISHED_SCALE = "Llama-2-7B (published, another scale)"
REAL_WORLD_SCALE = "Llama-3-8B-Instruct (quoted, another scale)"

_NAME = re.compile(r"^" + PREFIX + r"-(?P<preset>.+?)-(?P<scenario>fictitious|continual|real-world)-(?P<setting>.+)"
                   r"-s(?P<seed>\d+)(?:/(?P<method>.+))?$")


# --------------------------------------------------------------------------------------------
# Study names and the runs frame
# --------------------------------------------------------------------------------------------

def setting_name(scenario_name: str, split: str | None = None, tasks: Sequence[int] = (), fix_ref_model: bool = False) -> str:
    """The setting of a study: the split (fictitious), ``tasks1-4[-fixref]`` (continual), ``real-world``."""
    sc = scenario(scenario_name)
    if sc.sequential:
        return f"tasks{min(tasks)}-{max(tasks)}" + ("-fixref" if fix_ref_model else "")
    return sc.split_label(split or "forget01")


def study_name(preset: str, scenario_name: str, setting: str, seed: int) -> str:
    """``repro-<preset>-<scenario>-<setting>-s<seed>``: the seed is part of the name, so each seed is
    its own study (resumed by name) and :func:`parse_study_name` recovers all four."""
    return f"{PREFIX}-{preset}-{scenario(scenario_name).name}-{setting}-s{int(seed)}"


def parse_study_name(name: str | None) -> dict | None:
    """``{preset, scenario, setting, seed}`` from a :func:`study_name` (with or without Optuna's
    ``/<method>`` suffix); None for any other name."""
    found = _NAME.match(name) if isinstance(name, str) else None
    if not found:
        return None
    return {"preset": found["preset"], "scenario": found["scenario"], "setting": found["setting"],
            "seed": int(found["seed"])}


def label_runs(runs: pd.DataFrame, preset: str | None = None, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """The FINISHED trials of reproduction studies with a finite MU and FE, with ``preset``,
    ``setting`` and ``seed`` columns parsed from ``study_name`` (other runs are dropped); only those of
    ``preset`` and ``seeds`` where given (one experiment may hold several presets' studies)."""
    if runs.empty:
        return runs.assign(preset=pd.Series(dtype=object), setting=pd.Series(dtype=object),
                           seed=pd.Series(dtype=float))
    parsed = runs["study_name"].map(parse_study_name)
    keep = parsed.notna() & (runs["status"] == "FINISHED") \
        & np.isfinite(runs["model_utility"].astype(float)) & np.isfinite(runs["forget_efficacy"].astype(float))
    out = runs[keep].copy()
    info = pd.DataFrame(list(parsed[keep]), index=out.index, columns=["preset", "scenario", "setting", "seed"])
    out["preset"], out["setting"], out["seed"] = info["preset"], info["setting"], info["seed"]
    out["scenario"] = info["scenario"]
    if preset is not None:
        out = out[out["preset"] == preset]
    if seeds is not None:
        out = out[out["seed"].isin(list(seeds))]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Intervals and the summary table
# --------------------------------------------------------------------------------------------

def interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t interval of ``level`` over the finite ``values``:
    half-width ``t_{(1+level)/2, n-1} · s / √n``, ``s`` with ddof = 1. One value: (value, NaN); none:
    (NaN, NaN). Example: 0.5, 0.6, 0.7 → mean 0.6, s = 0.1, t_{0.975,2} = 4.3027 → half 0.2484."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def item_bootstrap(items_per_seed: Sequence[pd.DataFrame], scenario_name: str, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Half-widths of the ``level`` percentile intervals of MU and FE (averaged over seeds) when the
    evaluation items are resampled: the uncertainty a finite evaluation set adds, which the seeds'
    Student-t interval (:func:`interval`) does not see.

    ``items_per_seed``: one per-item frame per seed (the trial's ``eval/items_task<k>.csv``: a ``set``
    column and one column per metric of :data:`study.metrics.METRICS`). Each replicate draws, within
    every seed and every set, as many items as the set has, with replacement; takes the set means;
    computes MU (:func:`study.metrics.model_utility` over the scenario's utility sets) and FE
    (:func:`study.metrics.forget_efficacy`) as the evaluation does; and averages over seeds. The
    half-width is half the distance between the ``(1-level)/2`` and ``(1+level)/2`` quantiles.
    NaN when no frame is given."""
    if not items_per_seed:
        return math.nan, math.nan
    sc = scenario(scenario_name)
    rng = np.random.default_rng(seed)
    metrics = list(M.METRICS)
    mu = np.zeros(n_boot)
    fe = np.zeros(n_boot)
    for items in items_per_seed:
        draws = {}
        for name, part in items.groupby("set"):
            values = part[metrics].to_numpy(dtype=float)
            idx = rng.integers(0, len(values), size=(n_boot, len(values)))
            with warnings.catch_warnings():  # a metric absent for the whole set (no NLI model) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                draws[name] = np.nanmean(values[idx], axis=1)  # [n_boot, n_metrics]
        for b in range(n_boot):
            set_metrics = {name: dict(zip(metrics, d[b])) for name, d in draws.items()}
            mu[b] += M.model_utility(set_metrics, sets=sc.utility_sets).value
            fe[b] += M.forget_efficacy(set_metrics[M.FORGET]).value
    mu, fe = mu / len(items_per_seed), fe / len(items_per_seed)
    lo, hi = (1 - level) / 2, (1 + level) / 2

    def half(x):
        return float((np.nanquantile(x, hi) - np.nanquantile(x, lo)) / 2)

    return half(mu), half(fe)


def _retain_rouge(frame: pd.DataFrame, scenario_name: str) -> pd.Series:
    column = f"{scenario(scenario_name).retain_set}/rouge"
    return frame[column].astype(float) if column in frame.columns else pd.Series(math.nan, index=frame.index)


def _published(scenario_name: str, setting: str, method: str) -> tuple[float, float, str]:
    if scenario_name == FICTITIOUS.name and setting in PUBLISHED.get(method, {}):
        mu, fe = PUBLISHED[method][setting]
        return mu, fe, PUBLISHED_SCALE
    if scenario_name == REAL_WORLD.name and method in REAL_WORLD_QUOTED:
        quoted = REAL_WORLD_QUOTED[method]
        return quoted.get("MU", math.nan), quoted.get("FE", math.nan), REAL_WORLD_SCALE
    return math.nan, math.nan, ""


def _target_row(targets: pd.DataFrame | None, scenario_name: str, setting: str) -> dict | None:
    """The target model's MU, FE and retain ROUGE for a scenario (and split, where its runs carry one);
    averaged over target runs (one per seed when targets are fine-tuned per seed).

    A continual study reuses the fictitious target (the same fine-tuned model, cached) and logs no
    target run of its own: the fictitious target's MU and retain ROUGE are used (the same model on the
    same utility sets); its FE, measured on another forget set, is left out (NaN)."""
    if targets is None or targets.empty:
        return None
    usable = targets[np.isfinite(targets["model_utility"].astype(float))]
    mine = usable[usable["scenario"] == scenario_name]
    borrowed = mine.empty and scenario_name == CONTINUAL.name
    if borrowed:
        mine = usable[usable["scenario"] == FICTITIOUS.name]
    if mine.empty:
        return None
    if "split" in mine.columns and (mine["split"] == setting).any():
        mine = mine[mine["split"] == setting]
    mu, mu_half = interval(mine["model_utility"])
    fe, fe_half = interval(mine["forget_efficacy"])
    rr, rr_half = interval(_retain_rouge(mine, scenario_name))
    if borrowed:
        fe, fe_half = math.nan, math.nan
    return {"n_seeds": len(mine), "MU": mu, "MU_half": mu_half, "FE": fe, "FE_half": fe_half,
            "retain_rouge": rr, "retain_rouge_half": rr_half}


def summary_table(runs: pd.DataFrame, targets: pd.DataFrame | None = None, preset: str | None = None,
                  seeds: Iterable[int] | None = None, items: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per (scenario, setting, method) of the reproduction runs in ``runs`` (a runs frame of
    trials; :func:`label_runs` is applied), and first per (scenario, setting) the target's row
    (``method`` :data:`TARGET_ROW`) when ``targets`` (a runs frame of ``kind="target"``) has one.

    Values are averaged within a seed first, then :func:`interval` over seeds gives each mean and
    95% half-width (``n_seeds`` = number of seeds). ``published_MU`` / ``published_FE``: the Llama-2-7B
    figures of :data:`study.paper.PUBLISHED` (fictitious) or the quoted real-world ones, labelled by
    ``published_scale``; NaN where none was published. ``preset`` / ``seeds``: as :func:`label_runs`.
    ``items``: per-item frames by trial ``run_id`` (the last task's); where every seed's trial has one,
    ``MU_items_half`` / ``FE_items_half`` come from :func:`item_bootstrap`, else NaN.
    Columns :data:`SUMMARY_COLUMNS`."""
    labelled = label_runs(runs, preset, seeds)
    rows: list[dict] = []
    if labelled.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    labelled = labelled.assign(retain_rouge=np.nan)
    for name in labelled["scenario"].unique():
        mask = labelled["scenario"] == name
        labelled.loc[mask, "retain_rouge"] = _retain_rouge(labelled[mask], name)
    order_sc = [s for s in (FICTITIOUS.name, CONTINUAL.name, REAL_WORLD.name) if s in set(labelled["scenario"])]
    for sc in order_sc:
        frame = labelled[labelled["scenario"] == sc]
        for setting in sorted(frame["setting"].unique()):
            here = frame[frame["setting"] == setting]
            target = _target_row(targets, sc, setting)
            if target is not None:
                mu, fe, scale = _published(sc, setting, TARGET_ROW)
                rows.append({"scenario": sc, "setting": setting, "method": TARGET_ROW, **target,
                             "published_MU": mu, "published_FE": fe, "published_scale": scale})
            present = set(here["method"])
            for method in [m for m in PAPER_METHODS if m in present] + sorted(present - set(PAPER_METHODS)):
                per_seed = here[here["method"] == method].groupby("seed")[
                    ["model_utility", "forget_efficacy", "retain_rouge"]].mean()
                mu, mu_half = interval(per_seed["model_utility"])
                fe, fe_half = interval(per_seed["forget_efficacy"])
                rr, rr_half = interval(per_seed["retain_rouge"])
                pmu, pfe, scale = _published(sc, setting, method)
                run_ids = list(here.loc[here["method"] == method, "run_id"]) if "run_id" in here else []
                frames = [items[r] for r in run_ids if items and r in items]
                mu_items, fe_items = (item_bootstrap(frames, sc) if frames and len(frames) == len(run_ids)
                                      else (math.nan, math.nan))
                rows.append({"scenario": sc, "setting": setting, "method": method, "n_seeds": len(per_seed),
                             "MU": mu, "MU_half": mu_half, "FE": fe, "FE_half": fe_half, "retain_rouge": rr,
                             "retain_rouge_half": rr_half, "MU_items_half": mu_items, "FE_items_half": fe_items,
                             "published_MU": pmu, "published_FE": pfe,
                             "published_scale": scale})
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    table["n_seeds"] = table["n_seeds"].astype(int)
    return table


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------

class _Est:
    """A mean with its 95% interval [lo, hi] (a point when the half-width is NaN: lo = hi = mean, which
    :func:`_decided` reports as not decidable for comparisons that need an interval)."""

    def __init__(self, mean: float, half: float):
        self.mean, self.half = float(mean), float(half)
        self.lo, self.hi = self.mean - self.half, self.mean + self.half

    def __str__(self) -> str:
        return f"{self.mean:.3f}±{self.half:.3f}" if np.isfinite(self.half) else f"{self.mean:.3f}"

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.mean) and np.isfinite(self.half))


def _and(verdicts: Sequence[str]) -> str:
    """All must hold: any ``does not hold`` → does not hold; all ``holds`` (and at least one) → holds."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNSURE


def _or(verdicts: Sequence[str]) -> str:
    """One suffices: any ``holds`` → holds; all ``does not hold`` (and at least one) → does not hold."""
    if HOLDS in verdicts:
        return HOLDS
    return FAILS if verdicts and all(v == FAILS for v in verdicts) else UNSURE


def _not(verdict: str) -> str:
    return {HOLDS: FAILS, FAILS: HOLDS}.get(verdict, UNSURE)


def _below(a: _Est, b: _Est) -> str:
    """``a`` below ``b``: holds when a's interval lies wholly below b's (a.hi < b.lo), does not hold when
    wholly above (a.lo > b.hi); inconclusive when they overlap or either has no interval. ``b`` may be
    a point (the target, NaN half-width counts as zero width) only when ``a`` has an interval."""
    if not np.isfinite(a.mean) or not np.isfinite(b.mean) or not a.ok:
        return UNSURE
    b_lo, b_hi = (b.lo, b.hi) if b.ok else (b.mean, b.mean)
    if a.hi < b_lo:
        return HOLDS
    if a.lo > b_hi:
        return FAILS
    return UNSURE


def _stable(mu: _Est, target_mu: float) -> str:
    """Stable MU: mean ≥ :data:`STABLE_MEAN` × target MU and lower bound ≥ :data:`STABLE_LOWER` × target
    MU → holds; upper bound < :data:`STABLE_MEAN` × target MU (clearly below) → does not hold; else
    (or no interval, no target, a target MU ≤ 0: nothing to be stable relative to) inconclusive."""
    if not mu.ok or not np.isfinite(target_mu) or target_mu <= 0:
        return UNSURE
    if mu.mean >= STABLE_MEAN * target_mu and mu.lo >= STABLE_LOWER * target_mu:
        return HOLDS
    if mu.hi < STABLE_MEAN * target_mu:
        return FAILS
    return UNSURE


def _collapsed(mu: _Est, target_mu: float) -> str:
    """Collapsed MU: upper bound ≤ :data:`COLLAPSE` × target MU → holds; lower bound > that → does not
    hold; else (or no interval, no target, a target MU ≤ 0: nothing to collapse from) inconclusive."""
    if not mu.ok or not np.isfinite(target_mu) or target_mu <= 0:
        return UNSURE
    if mu.hi <= COLLAPSE * target_mu:
        return HOLDS
    if mu.lo > COLLAPSE * target_mu:
        return FAILS
    return UNSURE


class _View:
    """Look-ups into a summary table for one (scenario, setting)."""

    def __init__(self, table: pd.DataFrame, sc: str, setting: str):
        self.rows = table[(table["scenario"] == sc) & (table["setting"] == setting)].set_index("method")
        self.setting = setting

    def has(self, method: str) -> bool:
        return method in self.rows.index

    def est(self, method: str, measure: str) -> _Est:
        if not self.has(method):
            return _Est(math.nan, math.nan)
        row = self.rows.loc[method]
        return _Est(row[measure], row[f"{measure}_half"])

    @property
    def target_mu(self) -> float:
        return float(self.rows.loc[TARGET_ROW, "MU"]) if self.has(TARGET_ROW) else math.nan


def _settings(table: pd.DataFrame, sc: str, only: Callable[[str], bool] = lambda s: True) -> list[_View]:
    here = table[table["scenario"] == sc]
    return [_View(table, sc, s) for s in sorted(here["setting"].unique()) if only(s)]


def _claim_a(table):
    """(a) ME+GD has the highest FE among untargeted methods, with stable MU. Per fictitious split:
    ME+GD's FE interval lies wholly above every other untargeted method's that was run (:func:`_below`
    for each) AND ME+GD's MU is stable (:func:`_stable`); needs ME+GD and at least one other untargeted
    method. Splits combine with AND (every split must hold; one that does not → does not hold)."""
    verdicts, evidence = [], []
    for v in _settings(table, FICTITIOUS.name):
        others = [m for m in UNTARGETED if m != "ME+GD" and v.has(m)]
        if not v.has("ME+GD") or not others:
            verdicts.append(UNSURE)
            evidence.append(f"{v.setting}: ME+GD or other untargeted methods missing")
            continue
        me = v.est("ME+GD", "FE")
        parts = [_below(v.est(m, "FE"), me) for m in others]
        stable = _stable(v.est("ME+GD", "MU"), v.target_mu)
        verdicts.append(_and([*parts, stable]))
        best_other = max(others, key=lambda m: v.est(m, "FE").mean)
        evidence.append(f"{v.setting}: FE ME+GD {me} vs best other {best_other} {v.est(best_other, 'FE')}; "
                        f"MU ME+GD {v.est('ME+GD', 'MU')} vs target {v.target_mu:.3f} (stable: {stable})")
    return _and(verdicts), evidence


def _claim_b(table):
    """(b) GA+GD collapses MU: on at least one fictitious split GA+GD's MU collapses (:func:`_collapsed`,
    MU ≤ :data:`COLLAPSE` × target MU, decided by the interval); splits combine with OR (the published
    re-run collapses at forget05 only)."""
    verdicts, evidence = [], []
    for v in _settings(table, FICTITIOUS.name):
        mu = v.est("GA+GD", "MU")
        verdicts.append(_collapsed(mu, v.target_mu) if v.has("GA+GD") else UNSURE)
        evidence.append(f"{v.setting}: MU GA+GD {mu} vs {COLLAPSE} × target {COLLAPSE * v.target_mu:.3f}")
    return _or(verdicts), evidence


def _claim_c(table):
    """(c) NPO+GD plateaus at low FE: on every fictitious split NPO+GD's FE interval lies wholly below
    ME+GD's (:func:`_below`); splits combine with AND."""
    verdicts, evidence = [], []
    for v in _settings(table, FICTITIOUS.name):
        npo, me = v.est("NPO+GD", "FE"), v.est("ME+GD", "FE")
        verdicts.append(_below(npo, me) if v.has("NPO+GD") and v.has("ME+GD") else UNSURE)
        evidence.append(f"{v.setting}: FE NPO+GD {npo} vs ME+GD {me}")
    return _and(verdicts), evidence


def _claim_d(table):
    """(d) IDK+AP is the only targeted method with stable MU: per fictitious split, IDK+AP's MU is
    stable (:func:`_stable`) AND every other targeted method that was run is not (its MU interval's
    upper bound < :data:`STABLE_MEAN` × target MU); needs IDK+AP and one other targeted method. Splits
    combine with AND."""
    verdicts, evidence = [], []
    for v in _settings(table, FICTITIOUS.name):
        others = [m for m in TARGETED if m != "IDK+AP" and v.has(m)]
        if not v.has("IDK+AP") or not others:
            verdicts.append(UNSURE)
            evidence.append(f"{v.setting}: IDK+AP or other targeted methods missing")
            continue
        verdicts.append(_and([_stable(v.est("IDK+AP", "MU"), v.target_mu),
                              *[_not(_stable(v.est(m, "MU"), v.target_mu)) for m in others]]))
        shown = ", ".join(f"{m} {v.est(m, 'MU')}" for m in ("IDK+AP", *others))
        evidence.append(f"{v.setting}: MU {shown}; target {v.target_mu:.3f}")
    return _and(verdicts), evidence


def _claim_e(table):
    """(e) Continual (without a fixed reference): every baseline that was run (the seven methods other
    than ME+GD and IDK+AP) collapses (:func:`_collapsed`) while ME+GD's and IDK+AP's MU are stable
    (:func:`_stable`), after the last task; needs ME+GD, IDK+AP and one baseline."""
    verdicts, evidence = [], []
    for v in _settings(table, CONTINUAL.name, lambda s: not s.endswith("-fixref")):
        baselines = [m for m in PAPER_METHODS if m not in ("ME+GD", "IDK+AP") and v.has(m)]
        if not (v.has("ME+GD") and v.has("IDK+AP") and baselines):
            verdicts.append(UNSURE)
            evidence.append(f"{v.setting}: needs ME+GD, IDK+AP and a baseline; has "
                            + ", ".join(m for m in v.rows.index if m != TARGET_ROW))
            continue
        verdicts.append(_and([*[_collapsed(v.est(m, "MU"), v.target_mu) for m in baselines],
                              _stable(v.est("ME+GD", "MU"), v.target_mu), _stable(v.est("IDK+AP", "MU"), v.target_mu)]))
        shown = ", ".join(f"{m} {v.est(m, 'MU')}" for m in ("ME+GD", "IDK+AP", *baselines))
        evidence.append(f"{v.setting}: MU {shown}; target {v.target_mu:.3f}")
    return _and(verdicts), evidence


def _claim_f(table):
    """(f) A fixed reference model stabilises NPO in continual: for NPO+GD and NPO+KL (those run in both
    settings) the MU interval with ``--fix-ref-model`` lies wholly above the one without
    (:func:`_below` reversed); methods combine with AND."""
    verdicts, evidence = [], []
    for v in _settings(table, CONTINUAL.name, lambda s: not s.endswith("-fixref")):
        fixed = _View(table, CONTINUAL.name, v.setting + "-fixref")
        for m in ("NPO+GD", "NPO+KL"):
            if v.has(m) and fixed.has(m):
                verdicts.append(_below(v.est(m, "MU"), fixed.est(m, "MU")))
                evidence.append(f"{v.setting}: MU {m} {v.est(m, 'MU')} vs fixed reference {fixed.est(m, 'MU')}")
    if not verdicts:
        evidence.append("no NPO method run in continual with and without --fix-ref-model")
    return _and(verdicts), evidence


def _claim_g(table):
    """(g) Targeted unlearning lowers retain ROUGE too: on every fictitious split, every targeted method
    run has a retain ROUGE interval wholly below the target's retain ROUGE (:func:`_below`; the target
    is a point when it has one run); methods and splits combine with AND."""
    verdicts, evidence = [], []
    for v in _settings(table, FICTITIOUS.name):
        target = v.est(TARGET_ROW, "retain_rouge")
        for m in (m for m in TARGETED if v.has(m)):
            verdicts.append(_below(v.est(m, "retain_rouge"), target))
            evidence.append(f"{v.setting}: retain ROUGE {m} {v.est(m, 'retain_rouge')} vs target {target}")
    if not verdicts:
        evidence.append("no targeted method run")
    return _and(verdicts), evidence


_CLAIMS = (
    ("a", "ME+GD has the highest FE with stable MU among untargeted methods", FICTITIOUS.name, _claim_a),
    ("b", "GA+GD collapses MU", FICTITIOUS.name, _claim_b),
    ("c", "NPO+GD plateaus at low FE", FICTITIOUS.name, _claim_c),
    ("d", "IDK+AP is the only targeted method with stable MU", FICTITIOUS.name, _claim_d),
    ("e", "continual: baselines collapse while ME+GD and IDK+AP hold", CONTINUAL.name, _claim_e),
    ("f", "a fixed reference model stabilises NPO in continual", CONTINUAL.name, _claim_f),
    ("g", "targeted unlearning lowers retain ROUGE too", FICTITIOUS.name, _claim_g),
)


def claims_table(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's seven qualitative claims judged from a :func:`summary_table`: one row each, verdict
    ``holds`` / ``does not hold`` / ``inconclusive`` (intervals overlap where the comparison is decided,
    a seed count too small for an interval, or data missing), ``rule`` = the decision rule (the first
    paragraph of the rule's docstring, thresholds :data:`STABLE_MEAN`, :data:`STABLE_LOWER`,
    :data:`COLLAPSE`), ``evidence`` = the numbers that decide it (mean±half-width). Columns
    :data:`CLAIM_COLUMNS`."""
    rows = []
    for claim, statement, sc, rule in _CLAIMS:
        verdict, evidence = rule(table) if not table.empty else (UNSURE, [])
        if not evidence:
            evidence = ["no data"]
        doc = " ".join((rule.__doc__ or "").split())
        rows.append({"claim": claim, "statement": statement, "scenario": sc, "rule": doc, "verdict": verdict,
                     "evidence": "; ".join(evidence)})
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub markdown table (floats to 3 decimals, NaN blank; no index)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _pm(mean: float, half: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:.3f}"


def _readable(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "method": rows["method"], "seeds": rows["n_seeds"],
        "MU": [_pm(m, h) for m, h in zip(rows["MU"], rows["MU_half"])],
        "FE": [_pm(m, h) for m, h in zip(rows["FE"], rows["FE_half"])],
        "retain ROUGE": [_pm(m, h) for m, h in zip(rows["retain_rouge"], rows["retain_rouge_half"])],
        "MU ± (items)": [_cell(h) for h in rows["MU_items_half"]],
        "FE ± (items)": [_cell(h) for h in rows["FE_items_half"]],
        "published MU": rows["published_MU"], "published FE": rows["published_FE"],
    })


def plot_mu_fe_intervals(table: pd.DataFrame, scenario_name: str = FICTITIOUS.name, setting: str = "forget01"):
    """MU (x) vs FE (y) per method with 95% error bars for one (scenario, setting), the target as a
    star; a matplotlib Figure, or None when the table has no such rows. Chooses no backend."""
    import matplotlib.pyplot as plt

    rows = table[(table["scenario"] == scenario_name) & (table["setting"] == setting)]
    if rows.empty:
        return None
    figure, ax = plt.subplots(figsize=(5.5, 4.2))
    for row in rows.itertuples(index=False):
        if row.method == TARGET_ROW:
            ax.plot(row.MU, row.FE, marker="*", markersize=14, color="black", linestyle="none", label=TARGET_ROW)
            continue
        ax.errorbar(row.MU, row.FE, xerr=np.nan_to_num(row.MU_half), yerr=np.nan_to_num(row.FE_half), marker="o",
                    capsize=3, linestyle="none", label=row.method)
    ax.set(xlabel="Model Utility (mean ± 95% CI over seeds)", ylabel="Forget Efficacy",
           title=f"{scenario_name} {setting}")
    ax.legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def write_results(runs: pd.DataFrame, targets: pd.DataFrame | None, out: str | Path, note: str = "",
                  preset: str | None = None, seeds: Iterable[int] | None = None,
                  items: dict[str, pd.DataFrame] | None = None) -> dict[str, Path]:
    """Write ``summary.csv`` (:func:`summary_table`), ``claims.csv`` (:func:`claims_table`), ``README.md``
    (markdown: one table per scenario and setting, then the claims) and ``mu_fe_fictitious_forget01.png``
    into ``out``; returns the paths written (the figure only when there are fictitious forget01 rows).
    ``note``: a paragraph put under the README's title (how the runs were made); ``preset`` / ``seeds``:
    which reproduction runs (:func:`label_runs`); ``items``: as :func:`summary_table`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = summary_table(runs, targets, preset, seeds, items)
    claims = claims_table(table)
    paths = {"summary": out / "summary.csv", "claims": out / "claims.csv", "readme": out / "README.md"}
    table.to_csv(paths["summary"], index=False)
    claims.to_csv(paths["claims"], index=False)
    lines = ["# The paper's comparison tables, reproduced", ""]
    if note:
        lines += [note, ""]
    lines += ["MU = Model Utility, FE = Forget Efficacy (docs/science.md §5): mean ± half-width of the 95% "
              "Student-t interval over seeds (`study/results.py`); `± (items)`: the half-width of the 95% "
              "bootstrap interval over evaluation items (1000 resamples within each set and seed). The published columns are "
              f"{PUBLISHED_SCALE} ({PUBLISHED_SOURCE}) or, for real-world, {REAL_WORLD_SCALE}: another model "
              "scale, shown for the shape of the comparison, not as a target for these numbers.", ""]
    for (sc, setting), rows in table.groupby(["scenario", "setting"], sort=False):
        lines += [f"## {sc}, {setting}", "", markdown_table(_readable(rows)), ""]
    lines += ["## The paper's claims", "",
              f"Thresholds: stable MU = mean ≥ {STABLE_MEAN} × target MU with the interval's lower bound ≥ "
              f"{STABLE_LOWER} × target MU; collapse = MU ≤ {COLLAPSE} × target MU. Each rule is in `claims.csv` "
              "and in `study/results.py`.", "",
              markdown_table(claims[["claim", "statement", "verdict", "evidence"]]), ""]
    paths["readme"].write_text("\n".join(lines))
    figure = plot_mu_fe_intervals(table)
    if figure is not None:
        import matplotlib.pyplot as plt

        paths["figure"] = out / "mu_fe_fictitious_forget01.png"
        figure.savefig(paths["figure"], dpi=110, bbox_inches="tight")
        plt.close(figure)
    return paths
