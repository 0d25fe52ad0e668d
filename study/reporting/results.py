"""The paper's comparison tables rebuilt from seeded runs: means with 95% intervals, the target's row,
the DualOptim re-run's figures beside, and a table of the paper's qualitative claims with a verdict each.

Pure functions over the runs frame :func:`study.reporting.analysis.fetch_runs` returns (or an export's,
:mod:`study.reporting.exports`; ``experiments/reproduce.py`` calls :func:`write_results`). The runs are the ones
``experiments/reproduce.py`` made: one Optuna study per (scenario, setting, seed) named by
:func:`study_name`, one trial per method (the ``paper`` sampler at one stated learning rate), so each
(scenario, setting, method, seed) has one finished trial. Where a study holds several finished trials
(a user re-ran it with more), their values are averaged within the seed first, so seeds weigh alike.

Names: a **setting** is what a scenario is run over: the forget split (fictitious: ``forget01`` ...),
``tasks1-4`` / ``tasks1-4-fixref`` (continual, without / with ``--fix-ref-model``), ``real-world``.
MU = Model Utility, FE = Forget Efficacy (docs/science.md §5).

Statistics (each stated once, here):

* MU, FE and ROUGE are bounded in [0, 1] and MU is often bimodal (0 when one of its terms is 0), so
  their intervals over seeds are percentile bootstraps of the mean (:func:`seed_interval`): they stay
  inside [0, 1]; ``MU_zero_seeds`` says in how many seeds MU was 0.
* Methods are paired by seed (a seed fixes the data order and the pairing for every method), so a claim
  that compares methods uses paired t-tests over seeds (:func:`paired_test`; Wilcoxon's signed-rank p
  is reported beside it), Holm-corrected over the comparisons the claim makes (:func:`holm`), at level
  :data:`ALPHA`; the effect size is the mean paired difference with its Student-t interval
  (:func:`interval`) and Cohen's d_z.
* Over evaluation items (:func:`item_bootstrap`) every seed is scored on the same questions, so each
  replicate draws the same items for every seed (and, in :func:`paired_item_bootstrap`, for both methods).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import metrics as M
from ..paper import PAPER_METHODS, PUBLISHED, PUBLISHED_SOURCE, REAL_WORLD_QUOTED
from .analysis import BEFORE_UNLEARNING, SEED_SUFFIX
from ..inputs.scenarios import CONTINUAL, FICTITIOUS, REAL_WORLD, SCENARIOS, scenario

__all__ = [
    "PREFIX", "UNTARGETED", "TARGETED", "TARGET_ROW", "SUMMARY_COLUMNS", "SEED_COLUMNS", "CLAIM_COLUMNS", "VERDICTS",
    "STABLE_MEAN", "STABLE_LOWER", "COLLAPSE", "ALPHA", "ROUGE_SETS", "study_name", "parse_study_name", "label_runs",
    "interval", "seed_interval", "paired_test", "holm", "item_bootstrap", "paired_item_bootstrap", "seed_table",
    "summary_table", "claims_table", "markdown_table", "plot_mu_fe_intervals", "write_results",
]

PREFIX = "repro"
"""First word of every study name ``experiments/reproduce.py`` makes (:func:`study_name`)."""

UNTARGETED: tuple[str, ...] = ("GA+GD", "GA+KL", "NPO+GD", "NPO+KL", "ME+GD")
"""The paper's untargeted methods (docs/science.md §3)."""
TARGETED: tuple[str, ...] = ("DPO+GD", "DPO+KL", "IDK+GD", "IDK+AP")
"""The paper's targeted methods (they train towards a refusal)."""

TARGET_ROW = BEFORE_UNLEARNING
"""The ``method`` of the target model's row (the model before unlearning), as the analysis tables name it."""

STABLE_MEAN = 0.9
"""Stable MU: mean MU ≥ ``STABLE_MEAN`` × the target's MU ..."""
STABLE_LOWER = 0.75
"""... and the interval's lower bound ≥ ``STABLE_LOWER`` × the target's MU."""
COLLAPSE = 0.5
"""Collapsed MU: MU ≤ ``COLLAPSE`` × the target's MU."""
ALPHA = 0.05
"""Level of the paired tests (after Holm's correction over a claim's comparisons)."""
LEVEL = 0.95
"""Coverage of every interval."""
N_BOOT = 2000
"""Bootstrap replicates (seeds and items)."""

HOLDS, FAILS, UNSURE, NOT_APPLICABLE = "holds", "does not hold", "inconclusive", "not applicable"
VERDICTS: tuple[str, ...] = (HOLDS, FAILS, UNSURE, NOT_APPLICABLE)

ROUGE_SETS: tuple[str, ...] = M.GENERATED_SETS
"""Sets whose ROUGE the summary shows (``rouge_<set>``; NaN outside the scenario's sets)."""

SUMMARY_COLUMNS: tuple[str, ...] = (
    "scenario", "setting", "method", "n_seeds", "MU", "MU_lo", "MU_hi", "MU_zero_seeds", "MU_terms", "MU_zero_terms",
    "MU_retain", "FE", "FE_lo", "FE_hi", "FE_terms", "retain_rouge", "retain_rouge_lo", "retain_rouge_hi",
    *(f"rouge_{s}" for s in ROUGE_SETS), "MU_items_lo", "MU_items_hi", "FE_items_lo", "FE_items_hi",
    "other_MU", "other_FE", "other_source", *(M.mia_auc_key(a) for a in M.MIA_ATTACKS),
    *(M.privleak_key(a) for a in M.MIA_ATTACKS), "privleak_lo", "privleak_hi")
"""Columns of :func:`summary_table`: means over seeds with the 95% percentile-bootstrap interval over seeds
(``*_lo`` / ``*_hi``, :func:`seed_interval`) and over evaluation items (``*_items_*``,
:func:`item_bootstrap`); MU's zero cliff (``MU_zero_seeds``: seeds with MU = 0; ``MU_terms``: the number
of values MU's harmonic mean took; ``MU_zero_terms``: which of them were 0, in how many seeds;
``MU_retain``: MU over the retain set alone); ``FE_terms``; each set's ROUGE; the figures of another
scale (``other_*``: the DualOptim re-run for fictitious, quoted ones for real-world); beyond the paper, the
forget-vs-holdout AUC and PrivLeak of each attack (means over seeds; NaN without ``eval.holdout``) and
the seed interval of :data:`PRIVLEAK_ATTACK`'s PrivLeak (``privleak_lo`` / ``privleak_hi``)."""
PRIVLEAK_ATTACK = M.MIA_MIN_K
"""The attack whose PrivLeak the README leads with: MUSE's (Min-K% Prob), docs/science-beyond-paper.md §3."""
BEYOND_PAPER = " (beyond the paper)"
"""Appended to the README's name of a method the paper did not run."""
SEED_COLUMNS: tuple[str, ...] = ("scenario", "setting", "method", "seed", "MU", "FE", "retain_rouge")
"""Columns of :func:`seed_table`: one row per (scenario, setting, method, seed), what the paired tests read."""
CLAIM_COLUMNS: tuple[str, ...] = ("claim", "statement", "scenario", "rule", "verdict", "evidence")

RERUN_SOURCE = "DualOptim re-run (arXiv 2504.15827), Llama-2-7B"
"""The fictitious ``other_*`` figures: a third-party re-run of the reference code, not the paper's tables."""
QUOTED_SOURCE = "quoted, Llama-3-8B-Instruct"
"""The real-world ``other_*`` figures (:data:`study.paper.REAL_WORLD_QUOTED`)."""



def _name_pattern() -> re.Pattern:
    """What :func:`study_name` writes, for every scenario registered now (:data:`study.inputs.scenarios.SCENARIOS`)."""
    names = "|".join(map(re.escape, SCENARIOS))
    return re.compile(rf"^{PREFIX}-(?P<preset>.+?)-(?P<scenario>{names})-(?P<setting>.+){SEED_SUFFIX}")


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
    found = _name_pattern().match(name) if isinstance(name, str) else None
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
# Intervals, tests and the summary table
# --------------------------------------------------------------------------------------------

def interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width) of the two-sided Student-t interval of ``level`` over the finite ``values``:
    half-width ``t_{(1+level)/2, n-1} · s / √n``, ``s`` with ddof = 1. One value: (value, NaN); none:
    (NaN, NaN). Example: 0.5, 0.6, 0.7 → mean 0.6, s = 0.1, t_{0.975,2} = 4.3027 → half 0.2484.
    Used for unbounded quantities (paired differences), not for MU / FE themselves (:func:`seed_interval`)."""
    from scipy import stats

    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    half = stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def _finite(values: Iterable[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return x


def seed_interval(values: Iterable[float], level: float = LEVEL, n_boot: int = N_BOOT,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite ``values`` and the percentile bootstrap interval of
    ``level`` of that mean (``n_boot`` resamples of the values with replacement, numpy's ``linear``
    quantiles). It lies within [min, max] of the values, so within [0, 1] for a bounded metric. One
    value: (value, NaN, NaN); none: all NaN. Seeded (``seed``), so tables rebuild byte for byte."""
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan, math.nan
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """``a`` against ``b`` paired by position (by seed): ``n`` pairs with both finite, ``diff`` = mean of
    a - b, ``half`` its Student-t half-width (:func:`interval`), ``dz`` = Cohen's d_z (mean / sd of the
    differences), ``p`` = the two-sided paired t-test's p-value (``t = mean / (sd / √n)`` with n - 1
    degrees of freedom; differences all equal and non-zero: p = 0, all zero: p = 1), ``p_wilcoxon`` =
    the two-sided exact Wilcoxon signed-rank p-value (NaN when every difference is 0). Fewer than two
    pairs: p NaN (no test)."""
    from scipy import stats

    pairs = [(x, y) for x, y in zip(a, b) if np.isfinite(x) and np.isfinite(y)]
    d = np.asarray([x - y for x, y in pairs], dtype=float)
    out = {"n": int(d.size), "diff": float(d.mean()) if d.size else math.nan, "half": math.nan, "dz": math.nan,
           "p": math.nan, "p_wilcoxon": math.nan}
    if d.size < 2:
        return out
    out["half"] = interval(d)[1]
    sd = d.std(ddof=1)
    if sd <= 1e-12 * max(1.0, abs(out["diff"])):  # every seed agrees (up to rounding)
        out["dz"] = math.copysign(math.inf, out["diff"]) if out["diff"] else 0.0
        out["p"] = 0.0 if out["diff"] else 1.0
    else:
        out["dz"] = float(out["diff"] / sd)
        out["p"] = float(2 * stats.t.sf(abs(out["diff"]) / (sd / math.sqrt(d.size)), d.size - 1))
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["p_wilcoxon"] = float(stats.wilcoxon(d[d != 0] if np.any(d == 0) else d, method="exact").pvalue)
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: sort the m finite p-values ascending,
    multiply the k-th (from 0) by m - k, take the running maximum, cap at 1. NaN stays NaN (not counted
    in m). Example: 0.01, 0.04, 0.03 → 0.03, 0.06, 0.06."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def _aligned(items_per_seed: Sequence[pd.DataFrame]) -> dict[str, list[np.ndarray]]:
    """Per set, each seed's [n_items, n_metrics] values in one item order (by the ``item`` column when
    present): every seed was scored on the same questions. Raises ValueError when seeds differ in a
    set's size."""
    metrics = list(M.METRICS)
    sets: dict[str, list[np.ndarray]] = {}
    for items in items_per_seed:
        for name, part in items.groupby("set", sort=True):
            part = part.sort_values("item", kind="stable") if "item" in part.columns else part
            sets.setdefault(name, []).append(part[metrics].to_numpy(dtype=float))
    for name, arrays in sets.items():
        if len({a.shape[0] for a in arrays}) > 1:
            raise ValueError(f"set {name!r} has {sorted({a.shape[0] for a in arrays})} items across seeds; the "
                             "item bootstrap needs the same questions in every seed")
    return sets


def _item_replicates(groups: Sequence[Sequence[pd.DataFrame]], scenario_name: str, n_boot: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MU and FE [n_groups, n_boot], each averaged over a group's seeds, where every replicate draws ONE
    set of item indices per set, used for every seed of every group."""
    sc = scenario(scenario_name)
    aligned = [_aligned(g) for g in groups]
    sizes = {}
    for sets in aligned:
        for name, arrays in sets.items():
            sizes.setdefault(name, arrays[0].shape[0])
            if arrays[0].shape[0] != sizes[name]:
                raise ValueError(f"set {name!r} differs in size between the methods compared")
    rng = np.random.default_rng(seed)
    idx = {name: rng.integers(0, n, size=(n_boot, n)) for name, n in sorted(sizes.items())}
    mu = np.zeros((len(groups), n_boot))
    fe = np.zeros((len(groups), n_boot))
    metrics = list(M.METRICS)
    for g, sets in enumerate(aligned):
        n_seeds = len(groups[g])
        for s in range(n_seeds):
            with warnings.catch_warnings():  # a metric absent for the whole set (no NLI model) stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                draws = {name: np.nanmean(arrays[s][idx[name]], axis=1) for name, arrays in sets.items()}
            for b in range(n_boot):
                set_metrics = {name: dict(zip(metrics, d[b])) for name, d in draws.items()}
                mu[g, b] += M.model_utility(set_metrics, sets=sc.utility_sets).value
                fe[g, b] += M.forget_efficacy(set_metrics[M.FORGET]).value
        mu[g] /= n_seeds
        fe[g] /= n_seeds
    return mu, fe


def _quantiles(x: np.ndarray, level: float) -> tuple[float, float]:
    return float(np.nanquantile(x, (1 - level) / 2)), float(np.nanquantile(x, (1 + level) / 2))


def item_bootstrap(items_per_seed: Sequence[pd.DataFrame], scenario_name: str, n_boot: int = 1000,
                   seed: int = 0, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(MU lo, MU hi, FE lo, FE hi): the ``level`` percentile intervals of MU and FE (averaged over seeds)
    when the evaluation items are resampled: the uncertainty a finite evaluation set adds, which the
    interval over seeds (:func:`seed_interval`) does not see.

    ``items_per_seed``: one per-item frame per seed (the trial's ``eval/items_task<k>.csv``: a ``set``
    column, an ``item`` column and one column per metric of :data:`study.evaluation.metrics.METRICS`). Each
    replicate draws, within every set, as many items as the set has, with replacement, the SAME items
    for every seed (every seed is scored on the same questions); takes the set means; computes MU
    (:func:`study.evaluation.metrics.model_utility` over the scenario's utility sets) and FE
    (:func:`study.evaluation.metrics.forget_efficacy`) as the evaluation does; and averages over seeds. NaN when no
    frame is given."""
    if not items_per_seed:
        return math.nan, math.nan, math.nan, math.nan
    mu, fe = _item_replicates([items_per_seed], scenario_name, n_boot, seed)
    return (*_quantiles(mu[0], level), *_quantiles(fe[0], level))


def paired_item_bootstrap(items_a: Sequence[pd.DataFrame], items_b: Sequence[pd.DataFrame], scenario_name: str,
                          n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> dict[str, tuple[float, float, float]]:
    """The difference method a - method b of MU and FE (each averaged over its seeds) with its ``level``
    percentile interval when the items are resampled, the same items for both methods and every seed
    (:func:`item_bootstrap`'s draw): ``{"MU": (diff, lo, hi), "FE": (...)}``; ``diff`` is the mean of the
    replicates' differences."""
    mu, fe = _item_replicates([items_a, items_b], scenario_name, n_boot, seed)
    out = {}
    for name, x in (("MU", mu), ("FE", fe)):
        d = x[0] - x[1]
        out[name] = (float(np.nanmean(d)), *_quantiles(d, level))
    return out


def _set_column(frame: pd.DataFrame, set_name: str, metric: str) -> pd.Series:
    column = M.summary_key(set_name, metric)
    return frame[column].astype(float) if column in frame.columns else pd.Series(math.nan, index=frame.index)


def _retain_rouge(frame: pd.DataFrame, scenario_name: str) -> pd.Series:
    return _set_column(frame, scenario(scenario_name).retain_set, M.ROUGE)


def _mu_terms(frame: pd.DataFrame, scenario_name: str) -> pd.DataFrame:
    """The values MU's harmonic mean takes per run: ``<utility set>/<MU metric>`` columns (NaN = not logged)."""
    sc = scenario(scenario_name)
    return pd.DataFrame({M.summary_key(s, m): _set_column(frame, s, m) for s in sc.utility_sets for m in M.MU_METRICS})


def _fe_terms(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({M.summary_key(M.FORGET, m): _set_column(frame, M.FORGET, m) for m in M.FE_METRICS})


def _other(scenario_name: str, setting: str, method: str) -> tuple[float, float, str]:
    if scenario_name == FICTITIOUS.name and setting in PUBLISHED.get(method, {}):
        mu, fe = PUBLISHED[method][setting]
        return mu, fe, RERUN_SOURCE
    if scenario_name == REAL_WORLD.name and method in REAL_WORLD_QUOTED:
        quoted = REAL_WORLD_QUOTED[method]
        return quoted.get("MU", math.nan), quoted.get("FE", math.nan), QUOTED_SOURCE
    return math.nan, math.nan, ""


def _describe(frame: pd.DataFrame, scenario_name: str, per: str | None) -> dict:
    """The summary row's values of ``frame``'s runs (``per``: a column whose groups are averaged first,
    the seed): means with :func:`seed_interval`, MU's zero cliff, FE's terms, each set's ROUGE."""
    terms, fe_terms = _mu_terms(frame, scenario_name), _fe_terms(frame)
    values = pd.DataFrame({"MU": frame["model_utility"].astype(float), "FE": frame["forget_efficacy"].astype(float),
                           "MU_retain": _set_column_any(frame, "model_utility_retain"),
                           "retain_rouge": _retain_rouge(frame, scenario_name),
                           **{f"rouge_{s}": _set_column(frame, s, M.ROUGE) for s in ROUGE_SETS}}, index=frame.index)
    values = pd.concat([values, terms.add_prefix("term:")], axis=1)
    if per is not None:
        values = values.groupby(frame[per]).mean()
    row: dict = {"n_seeds": len(values)}
    for name in ("MU", "FE", "retain_rouge"):
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = seed_interval(values[name])
    row["MU_retain"] = float(values["MU_retain"].mean()) if values["MU_retain"].notna().any() else math.nan
    for s in ROUGE_SETS:
        row[f"rouge_{s}"] = float(values[f"rouge_{s}"].mean()) if values[f"rouge_{s}"].notna().any() else math.nan
    row["MU_zero_seeds"] = int((values["MU"] == 0).sum())
    term_values = values[[c for c in values.columns if c.startswith("term:")]]
    row["MU_terms"] = int(term_values.notna().sum(axis=1).min()) if len(term_values) else 0
    zeros = (term_values == 0).sum()
    row["MU_zero_terms"] = "; ".join(f"{c[len('term:'):]} {k}/{len(values)}" for c, k in zeros.items() if k)
    row["FE_terms"] = int(fe_terms.notna().sum(axis=1).min()) if len(fe_terms) else 0
    privacy = pd.DataFrame({k: _set_column_any(frame, k) for k in _PRIVACY_KEYS}, index=frame.index)
    if per is not None:
        privacy = privacy.groupby(frame[per]).mean()
    for key in _PRIVACY_KEYS:
        row[key] = float(privacy[key].mean()) if privacy[key].notna().any() else math.nan
    # The percentile interval stays within the seeds' values (PrivLeak is a percentage, unbounded above).
    _, row["privleak_lo"], row["privleak_hi"] = seed_interval(privacy[M.privleak_key(PRIVLEAK_ATTACK)])
    return row


_PRIVACY_KEYS: tuple[str, ...] = (*(M.mia_auc_key(a) for a in M.MIA_ATTACKS), *(M.privleak_key(a) for a in M.MIA_ATTACKS))


def _set_column_any(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype(float) if column in frame.columns else pd.Series(math.nan, index=frame.index)


def _target_row(targets: pd.DataFrame | None, scenario_name: str, setting: str) -> dict | None:
    """The target model's values for a scenario (and split, where its runs carry one), over its models
    (one per seed when targets are fine-tuned per seed), as :func:`_describe` gives them. A model is its
    run's name (``target-<cache key>``): one rebuilt under the same key (its cache lost, another machine)
    is the same model, its runs averaged and counted once.

    A continual study reuses the fictitious target (the same fine-tuned model, cached) and logs no
    target run of its own: the fictitious target's MU and ROUGE are used (the same model on the same
    utility sets); its FE and forget ROUGE, measured on another forget set, are left out (NaN)."""
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
    model = mine["run_name"].where(mine["run_name"].notna(), mine["run_id"])
    row = _describe(mine.assign(_model=model), scenario_name, "_model")
    if borrowed:
        row.update(FE=math.nan, FE_lo=math.nan, FE_hi=math.nan, rouge_forget=math.nan, FE_terms=0)
    return row


def _labelled(runs: pd.DataFrame, preset: str | None, seeds: Iterable[int] | None) -> pd.DataFrame:
    return label_runs(runs, preset, list(seeds) if seeds is not None else None)


def _ordered_settings(labelled: pd.DataFrame):
    for sc in (s for s in SCENARIOS if s in set(labelled["scenario"])):  # the registry's order
        frame = labelled[labelled["scenario"] == sc]
        for setting in sorted(frame["setting"].unique()):
            here = frame[frame["setting"] == setting]
            present = set(here["method"])
            yield sc, setting, here, [m for m in PAPER_METHODS if m in present] + sorted(present - set(PAPER_METHODS))


def seed_table(runs: pd.DataFrame, preset: str | None = None, seeds: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per (scenario, setting, method, seed) of the reproduction runs: MU, FE and retain ROUGE
    (a seed's trials averaged). Columns :data:`SEED_COLUMNS`; what the paired tests of the claims read."""
    labelled = _labelled(runs, preset, seeds)
    rows = []
    if not labelled.empty:
        for sc, setting, here, methods in _ordered_settings(labelled):
            for method in methods:
                mine = here[here["method"] == method]
                per_seed = pd.DataFrame({"MU": mine["model_utility"].astype(float), "FE": mine["forget_efficacy"].astype(float),
                                         "retain_rouge": _retain_rouge(mine, sc)}).groupby(mine["seed"]).mean()
                for seed, v in per_seed.iterrows():
                    rows.append({"scenario": sc, "setting": setting, "method": method, "seed": int(seed), **v.to_dict()})
    table = pd.DataFrame(rows, columns=list(SEED_COLUMNS))
    table["seed"] = table["seed"].astype(int)
    return table


def summary_table(runs: pd.DataFrame, targets: pd.DataFrame | None = None, preset: str | None = None,
                  seeds: Iterable[int] | None = None, items: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """One row per (scenario, setting, method) of the reproduction runs in ``runs`` (a runs frame of
    trials; :func:`label_runs` is applied), and first per (scenario, setting) the target's row
    (``method`` :data:`TARGET_ROW`) when ``targets`` (a runs frame of ``kind="target"``) has one.

    Values are averaged within a seed first, then over seeds with the percentile-bootstrap interval of
    :func:`seed_interval` (``n_seeds`` = number of seeds); the other columns: :data:`SUMMARY_COLUMNS`.
    ``other_MU`` / ``other_FE``: the DualOptim re-run's Llama-2-7B figures of :data:`study.paper.PUBLISHED`
    (fictitious) or the quoted real-world ones, named by ``other_source``; NaN where there are none.
    ``preset`` / ``seeds``: as :func:`label_runs`. ``items``: per-item frames by trial ``run_id`` (the
    last task's); where every seed's trial has one, ``*_items_lo`` / ``*_items_hi`` come from
    :func:`item_bootstrap`, else NaN."""
    labelled = _labelled(runs, preset, seeds)
    rows: list[dict] = []
    if labelled.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    nan4 = (math.nan,) * 4
    for sc, setting, here, methods in _ordered_settings(labelled):
        target = _target_row(targets, sc, setting)
        if target is not None:
            mu, fe, source = _other(sc, setting, TARGET_ROW)
            rows.append({"scenario": sc, "setting": setting, "method": TARGET_ROW, **target,
                         **dict(zip(("MU_items_lo", "MU_items_hi", "FE_items_lo", "FE_items_hi"), nan4)),
                         "other_MU": mu, "other_FE": fe, "other_source": source})
        for method in methods:
            mine = here[here["method"] == method]
            row = _describe(mine, sc, "seed")
            run_ids = list(mine["run_id"]) if "run_id" in mine else []
            frames = [items[r] for r in run_ids if items and r in items]
            bands = item_bootstrap(frames, sc) if frames and len(frames) == len(run_ids) else nan4
            mu, fe, source = _other(sc, setting, method)
            rows.append({"scenario": sc, "setting": setting, "method": method, **row,
                         **dict(zip(("MU_items_lo", "MU_items_hi", "FE_items_lo", "FE_items_hi"), bands)),
                         "other_MU": mu, "other_FE": fe, "other_source": source})
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    for column in ("n_seeds", "MU_zero_seeds", "MU_terms", "FE_terms"):
        table[column] = table[column].astype(int)
    return table


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------

class _Est:
    """A mean with its 95% interval [lo, hi] (:func:`seed_interval`); ``ok`` when both are finite."""

    def __init__(self, mean: float, lo: float, hi: float):
        self.mean, self.lo, self.hi = float(mean), float(lo), float(hi)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}]" if self.ok else f"{self.mean:.3f}"

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.mean) and np.isfinite(self.lo) and np.isfinite(self.hi))


def _and(verdicts: Sequence[str]) -> str:
    """All must hold: any ``does not hold`` → does not hold; all ``holds`` (and at least one) → holds."""
    if FAILS in verdicts:
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNSURE


def _not(verdict: str) -> str:
    return {HOLDS: FAILS, FAILS: HOLDS}.get(verdict, UNSURE)


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


class _Comparisons:
    """The paired comparisons one claim makes, "a above b" each (:func:`paired_test` over seeds),
    Holm-corrected together (:func:`holm`) when the verdicts are read."""

    def __init__(self):
        self.tests: list[tuple[str, dict]] = []

    def add(self, label: str, a: pd.Series, b: pd.Series) -> int:
        both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
        self.tests.append((label, paired_test(both["a"].tolist(), both["b"].tolist())))
        return len(self.tests) - 1

    def verdicts(self) -> tuple[list[str], list[str]]:
        """Per comparison: holds (Holm p < :data:`ALPHA`, a above b), does not hold (Holm p < :data:`ALPHA`,
        a below b) or inconclusive (not significant, or fewer than two seeds); and its evidence."""
        adjusted = holm([t["p"] for _, t in self.tests])
        verdicts, evidence = [], []
        for (label, t), p in zip(self.tests, adjusted):
            significant = np.isfinite(p) and p < ALPHA
            verdicts.append(UNSURE if not significant else (HOLDS if t["diff"] > 0 else FAILS))
            half = f" ± {t['half']:.3f}" if np.isfinite(t["half"]) else ""
            evidence.append(f"{label}: diff {t['diff']:+.3f}{half} over {t['n']} seeds, d_z {t['dz']:.2f}, "
                            f"paired t p {t['p']:.3g} (Holm {p:.3g}), Wilcoxon p {t['p_wilcoxon']:.3g}")
        return verdicts, evidence


class _View:
    """Look-ups into a summary table and the per-seed table for one (scenario, setting)."""

    def __init__(self, table: pd.DataFrame, seeds: pd.DataFrame, sc: str, setting: str):
        self.rows = table[(table["scenario"] == sc) & (table["setting"] == setting)].set_index("method")
        self.seeds = seeds[(seeds["scenario"] == sc) & (seeds["setting"] == setting)] if not seeds.empty else seeds
        self.setting = setting

    def has(self, method: str) -> bool:
        return method in self.rows.index

    def est(self, method: str, measure: str) -> _Est:
        if not self.has(method):
            return _Est(math.nan, math.nan, math.nan)
        row = self.rows.loc[method]
        return _Est(row[measure], row[f"{measure}_lo"], row[f"{measure}_hi"])

    def per_seed(self, method: str, measure: str) -> pd.Series:
        mine = self.seeds[self.seeds["method"] == method] if not self.seeds.empty else self.seeds
        return pd.Series(mine[measure].to_numpy(dtype=float) if len(mine) else [], index=mine["seed"] if len(mine) else [],
                         dtype=float)

    @property
    def target_mu(self) -> float:
        return float(self.rows.loc[TARGET_ROW, "MU"]) if self.has(TARGET_ROW) else math.nan


def _settings(table: pd.DataFrame, seeds: pd.DataFrame, sc: str, only: Callable[[str], bool] = lambda s: True) -> list[_View]:
    here = table[table["scenario"] == sc]
    return [_View(table, seeds, sc, s) for s in sorted(here["setting"].unique()) if only(s)]


def _claim_a(table, seeds):
    """(a) ME+GD has the highest FE among untargeted methods, with stable MU. Per fictitious split:
    ME+GD's FE is above every other untargeted method's that was run (paired t over seeds, Holm over all
    the claim's comparisons, p < ALPHA) AND ME+GD's MU is stable (:func:`_stable`); needs ME+GD and at least
    one other untargeted method. Everything combines with AND (one comparison the other way → does not hold)."""
    tests, parts, evidence = _Comparisons(), [], []
    for v in _settings(table, seeds, FICTITIOUS.name):
        others = [m for m in UNTARGETED if m != "ME+GD" and v.has(m)]
        if not v.has("ME+GD") or not others:
            parts.append(UNSURE)
            evidence.append(f"{v.setting}: ME+GD or other untargeted methods missing")
            continue
        for m in others:
            tests.add(f"{v.setting} FE ME+GD - {m}", v.per_seed("ME+GD", "FE"), v.per_seed(m, "FE"))
        stable = _stable(v.est("ME+GD", "MU"), v.target_mu)
        parts.append(stable)
        evidence.append(f"{v.setting}: MU ME+GD {v.est('ME+GD', 'MU')} vs target {v.target_mu:.3f} (stable: {stable})")
    verdicts, shown = tests.verdicts()
    return _and([*verdicts, *parts]), [*shown, *evidence]


COLLAPSE_SPLITS: tuple[str, ...] = tuple(s for s, (mu, _) in PUBLISHED["GA+GD"].items() if mu == 0)
"""Splits where the DualOptim re-run's GA+GD collapses (MU 0): forget05."""


def _claim_b(table, seeds):
    """(b) GA+GD collapses MU: decided on the splits where the DualOptim re-run's GA+GD collapses
    (COLLAPSE_SPLITS, MU 0 there; it does not collapse on the others): GA+GD's MU collapses there
    (:func:`_collapsed`: MU ≤ COLLAPSE × target MU by the interval over seeds) → holds; stays above →
    does not hold; those splits not run → inconclusive (the other splits are shown, not judged)."""
    verdicts, evidence = [], []
    for v in _settings(table, seeds, FICTITIOUS.name):
        mu = v.est("GA+GD", "MU")
        decides = v.setting in COLLAPSE_SPLITS
        if decides:
            verdicts.append(_collapsed(mu, v.target_mu) if v.has("GA+GD") else UNSURE)
        evidence.append(f"{v.setting}{'' if decides else ' (shown, not judged)'}: MU GA+GD {mu} vs {COLLAPSE} × target "
                        f"{COLLAPSE * v.target_mu:.3f}")
    if not verdicts:
        evidence.append(f"the DualOptim re-run collapses on {', '.join(COLLAPSE_SPLITS)} only, not run here")
    return _and(verdicts), evidence


def _claim_c(table, seeds):
    """(c) NPO+GD plateaus at low FE: on every fictitious split NPO+GD's FE is below ME+GD's (paired t
    over seeds, Holm over the splits, p < ALPHA); splits combine with AND."""
    tests, parts, evidence = _Comparisons(), [], []
    for v in _settings(table, seeds, FICTITIOUS.name):
        if v.has("NPO+GD") and v.has("ME+GD"):
            tests.add(f"{v.setting} FE ME+GD - NPO+GD", v.per_seed("ME+GD", "FE"), v.per_seed("NPO+GD", "FE"))
        else:
            parts.append(UNSURE)
            evidence.append(f"{v.setting}: NPO+GD or ME+GD missing")
    verdicts, shown = tests.verdicts()
    return _and([*verdicts, *parts]), [*shown, *evidence]


def _claim_d(table, seeds):
    """(d) IDK+AP is the only targeted method with stable MU: per fictitious split, IDK+AP's MU is stable
    (:func:`_stable`), every other targeted method run is not (its interval's upper bound < STABLE_MEAN ×
    target MU) AND its MU is below IDK+AP's (paired t over seeds, Holm over the claim's comparisons,
    p < ALPHA); needs IDK+AP and one other targeted method. Everything combines with AND."""
    tests, parts, evidence = _Comparisons(), [], []
    for v in _settings(table, seeds, FICTITIOUS.name):
        others = [m for m in TARGETED if m != "IDK+AP" and v.has(m)]
        if not v.has("IDK+AP") or not others:
            parts.append(UNSURE)
            evidence.append(f"{v.setting}: IDK+AP or other targeted methods missing")
            continue
        parts += [_stable(v.est("IDK+AP", "MU"), v.target_mu), *[_not(_stable(v.est(m, "MU"), v.target_mu)) for m in others]]
        for m in others:
            tests.add(f"{v.setting} MU IDK+AP - {m}", v.per_seed("IDK+AP", "MU"), v.per_seed(m, "MU"))
        shown = ", ".join(f"{m} {v.est(m, 'MU')}" for m in ("IDK+AP", *others))
        evidence.append(f"{v.setting}: MU {shown}; target {v.target_mu:.3f}")
    verdicts, shown = tests.verdicts()
    return _and([*parts, *verdicts]), [*evidence, *shown]


def _claim_e(table, seeds):
    """(e) Continual (without a fixed reference): every baseline that was run (the seven methods other
    than ME+GD and IDK+AP) collapses (:func:`_collapsed`) while ME+GD's and IDK+AP's MU are stable
    (:func:`_stable`), after the last task; needs ME+GD, IDK+AP and one baseline."""
    verdicts, evidence = [], []
    for v in _settings(table, seeds, CONTINUAL.name, lambda s: not s.endswith("-fixref")):
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


def _claim_f(table, seeds):
    """(f) A fixed reference model stabilises NPO in continual: for NPO+GD and NPO+KL (those run in both
    settings) the MU with ``--fix-ref-model`` is above the one without (paired t over seeds, Holm over
    the methods, p < ALPHA); methods combine with AND."""
    tests, evidence = _Comparisons(), []
    for v in _settings(table, seeds, CONTINUAL.name, lambda s: not s.endswith("-fixref")):
        fixed = _View(table, seeds, CONTINUAL.name, v.setting + "-fixref")
        for m in ("NPO+GD", "NPO+KL"):
            if v.has(m) and fixed.has(m):
                tests.add(f"{v.setting} MU {m} fixed - not fixed", fixed.per_seed(m, "MU"), v.per_seed(m, "MU"))
                evidence.append(f"{v.setting}: MU {m} {v.est(m, 'MU')} vs fixed reference {fixed.est(m, 'MU')}")
    verdicts, shown = tests.verdicts()
    if not verdicts:
        evidence.append("no NPO method run in continual with and without --fix-ref-model")
    return _and(verdicts), [*shown, *evidence]


def _claim_g(table, seeds):
    """(g) Targeted unlearning lowers retain ROUGE too: per fictitious split, the targeted methods' mean
    retain ROUGE is below the untargeted methods' (the control: they unlearn the same data without a
    refusal target), per seed (the seeds every method of both groups ran), by a paired t over seeds,
    Holm over the splits, p < ALPHA; needs one method of each group. Splits combine with AND."""
    tests, evidence = _Comparisons(), []
    for v in _settings(table, seeds, FICTITIOUS.name):
        targeted, untargeted = [m for m in TARGETED if v.has(m)], [m for m in UNTARGETED if v.has(m)]
        if not targeted or not untargeted:
            evidence.append(f"{v.setting}: needs a targeted and an untargeted method")
            continue
        group = lambda ms: pd.concat([v.per_seed(m, "retain_rouge") for m in ms], axis=1, join="inner").mean(axis=1)  # noqa: E731
        tests.add(f"{v.setting} retain ROUGE untargeted ({', '.join(untargeted)}) - targeted ({', '.join(targeted)})",
                  group(untargeted), group(targeted))
    verdicts, shown = tests.verdicts()
    return _and(verdicts), [*shown, *evidence]


_CLAIMS = (
    ("a", "ME+GD has the highest FE with stable MU among untargeted methods", FICTITIOUS.name, _claim_a),
    ("b", "GA+GD collapses MU", FICTITIOUS.name, _claim_b),
    ("c", "NPO+GD plateaus at low FE", FICTITIOUS.name, _claim_c),
    ("d", "IDK+AP is the only targeted method with stable MU", FICTITIOUS.name, _claim_d),
    ("e", "continual: baselines collapse while ME+GD and IDK+AP hold", CONTINUAL.name, _claim_e),
    ("f", "a fixed reference model stabilises NPO in continual", CONTINUAL.name, _claim_f),
    ("g", "targeted unlearning lowers retain ROUGE too", FICTITIOUS.name, _claim_g),
)


def claims_table(table: pd.DataFrame, seeds: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's seven qualitative claims judged from a :func:`summary_table` and its :func:`seed_table`
    (``seeds``; without it no paired test can be made): one row each, verdict ``holds`` / ``does not
    hold`` / ``inconclusive`` (not significant, too few seeds, or data missing) / ``not applicable``
    (the claim's scenario is not in these results), ``rule`` = the decision rule (the rule's docstring,
    thresholds :data:`STABLE_MEAN`, :data:`STABLE_LOWER`, :data:`COLLAPSE`, :data:`ALPHA`), ``evidence``
    = the numbers that decide it. Columns :data:`CLAIM_COLUMNS`."""
    seeds = seeds if seeds is not None else pd.DataFrame(columns=list(SEED_COLUMNS))
    present = set(table["scenario"]) if not table.empty else set()
    rows = []
    for claim, statement, sc, rule in _CLAIMS:
        if sc not in present:
            verdict, evidence = NOT_APPLICABLE, [f"no {sc} runs in these results"]
        else:
            verdict, evidence = rule(table, seeds)
        doc = " ".join((rule.__doc__ or "").split())
        for name, value in (("ALPHA", ALPHA), ("STABLE_MEAN", STABLE_MEAN), ("COLLAPSE", COLLAPSE),
                            ("COLLAPSE_SPLITS", ", ".join(COLLAPSE_SPLITS))):
            doc = re.sub(rf"\b{name}\b", f"{name} ({value})", doc)
        rows.append({"claim": claim, "statement": statement, "scenario": sc, "rule": doc, "verdict": verdict,
                     "evidence": "; ".join(evidence or ["no data"])})
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


def _ci(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else f"{mean:.3f}"


def _readable(rows: pd.DataFrame) -> pd.DataFrame:
    """A (scenario, setting)'s summary rows as the README shows them."""
    source = next((s for s in rows["other_source"] if isinstance(s, str) and s), "")
    other = source.split(" (")[0].split(",")[0] if source else "other scale"
    sc = scenario(rows["scenario"].iloc[0])
    zero = [f"{k}/{n}" if k else "" for k, n in zip(rows["MU_zero_seeds"], rows["n_seeds"])]
    return pd.DataFrame({
        "method": [_method_label(m) for m in rows["method"]], "seeds": rows["n_seeds"],
        "MU [95% CI]": [_ci(*v) for v in zip(rows["MU"], rows["MU_lo"], rows["MU_hi"])],
        "MU = 0 (seeds)": zero,
        "MU terms": rows["MU_terms"], "zero terms (seeds)": rows["MU_zero_terms"].fillna(""),
        "MU retain": rows["MU_retain"],
        "FE [95% CI]": [_ci(*v) for v in zip(rows["FE"], rows["FE_lo"], rows["FE_hi"])],
        "FE terms": rows["FE_terms"],
        **{f"{s} ROUGE": rows[f"rouge_{s}"] for s in sc.eval_sets},
        **({f"earlier tasks' forget ROUGE{BEYOND_PAPER}": rows[f"rouge_{M.EARLIER_FORGET}"]}
           if rows[f"rouge_{M.EARLIER_FORGET}"].notna().any() else {}),
        "MU [items]": [_ci((lo + hi) / 2, lo, hi).split(" ", 1)[-1] if np.isfinite(lo) else ""
                       for lo, hi in zip(rows["MU_items_lo"], rows["MU_items_hi"])],
        "FE [items]": [_ci((lo + hi) / 2, lo, hi).split(" ", 1)[-1] if np.isfinite(lo) else ""
                       for lo, hi in zip(rows["FE_items_lo"], rows["FE_items_hi"])],
        f"{other} MU": rows["other_MU"], f"{other} FE": rows["other_FE"],
    })


def _method_label(method: str) -> str:
    return method if method in PAPER_METHODS or method == TARGET_ROW else method + BEYOND_PAPER


def _privacy_readable(rows: pd.DataFrame) -> pd.DataFrame | None:
    """A (scenario, setting)'s membership-inference columns as the README shows them; None when no
    method logged any (runs without ``eval.holdout``)."""
    rows = rows[rows["method"] != TARGET_ROW]
    if not np.isfinite(rows[[M.mia_auc_key(a) for a in M.MIA_ATTACKS]].to_numpy(dtype=float)).any():
        return None
    lead = M.privleak_key(PRIVLEAK_ATTACK)
    return pd.DataFrame({
        "method": [_method_label(m) for m in rows["method"]], "seeds": rows["n_seeds"],
        **{f"AUC {a.removeprefix('mia_')}": rows[M.mia_auc_key(a)] for a in M.MIA_ATTACKS},
        f"PrivLeak {PRIVLEAK_ATTACK.removeprefix('mia_')} % [95% CI]": [
            "" if not np.isfinite(m) else f"{m:.1f} [{lo:.1f}, {hi:.1f}]" if np.isfinite(lo) else f"{m:.1f}"
            for m, lo, hi in zip(rows[lead], rows["privleak_lo"], rows["privleak_hi"])],
        **{f"PrivLeak {a.removeprefix('mia_')} %": rows[M.privleak_key(a)].round(1)
           for a in M.MIA_ATTACKS if a != PRIVLEAK_ATTACK},
    })


def plot_mu_fe_intervals(table: pd.DataFrame, scenario_name: str = FICTITIOUS.name, setting: str = "forget01",
                         scale: str = ""):
    """MU (x) vs FE (y) per method with its 95% interval over seeds (:func:`seed_interval`, inside [0, 1])
    for one (scenario, setting), the target as a star; each method in its colour and marker of every figure
    (:func:`study.reporting.analysis.method_palette`, :func:`~study.reporting.analysis.method_markers`), the legend beside the
    axes, the title naming the seeds and ``scale`` (the model and data). A matplotlib Figure, or None when
    the table has no such rows. Chooses no backend."""
    import matplotlib.pyplot as plt

    from .analysis import method_markers, method_palette

    rows = table[(table["scenario"] == scenario_name) & (table["setting"] == setting)]
    if rows.empty:
        return None
    methods = [m for m in rows["method"] if m != TARGET_ROW]
    colours, markers = method_palette(methods), method_markers(methods)
    figure, ax = plt.subplots(figsize=(7.2, 4.6))

    def err(mean, lo, hi):
        return np.nan_to_num([[mean - lo], [hi - mean]])

    for row in rows.itertuples(index=False):
        if row.method == TARGET_ROW:
            ax.plot(row.MU, row.FE, marker="*", markersize=14, color="black", linestyle="none", label=TARGET_ROW)
            continue
        ax.errorbar(row.MU, row.FE, xerr=err(row.MU, row.MU_lo, row.MU_hi), yerr=err(row.FE, row.FE_lo, row.FE_hi),
                    marker=markers[row.method], markersize=7, color=colours[row.method], capsize=3, linestyle="none",
                    alpha=0.85, label=_method_label(row.method))
    seeds = sorted(set(rows.loc[rows["method"] != TARGET_ROW, "n_seeds"]))
    n = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]} seeds"
    ax.set(xlabel="Model Utility (mean, 95% bootstrap CI over seeds)", ylabel="Forget Efficacy (same)",
           xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax.set_title(f"{scenario_name} {setting}, {n}" + (f"\n{scale}" if scale else ""), fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    figure.tight_layout()
    return figure


def write_results(runs: pd.DataFrame, targets: pd.DataFrame | None, out: str | Path, note: str = "",
                  preset: str | None = None, seeds: Iterable[int] | None = None,
                  items: dict[str, pd.DataFrame] | None = None) -> dict[str, Path]:
    """Write ``summary.csv`` (:func:`summary_table`), ``seeds.csv`` (:func:`seed_table`), ``claims.csv``
    (:func:`claims_table`), ``README.md`` (markdown: one table per scenario and setting, then the
    claims) and ``mu_fe_fictitious_forget01.png`` into ``out``; returns the paths written (the figure
    only when there are fictitious forget01 rows). ``note``: a paragraph put under the README's title
    (how the runs were made); ``preset`` / ``seeds``: which reproduction runs (:func:`label_runs`);
    ``items``: as :func:`summary_table`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds) if seeds is not None else None
    table = summary_table(runs, targets, preset, seeds, items)
    per_seed = seed_table(runs, preset, seeds)
    claims = claims_table(table, per_seed)
    paths = {"summary": out / "summary.csv", "seeds": out / "seeds.csv", "claims": out / "claims.csv",
             "readme": out / "README.md"}
    table.to_csv(paths["summary"], index=False)
    per_seed.to_csv(paths["seeds"], index=False)
    claims.to_csv(paths["claims"], index=False)
    lines = ["# The paper's comparison tables, reproduced", ""]
    if note:
        lines += [note, ""]
    lines += ["MU = Model Utility, FE = Forget Efficacy (docs/science.md §5): the mean over seeds and its 95% "
              "percentile-bootstrap interval over seeds (inside [0, 1]; `study/reporting/results.py`); `MU = 0 (seeds)`: in "
              "how many seeds MU was 0; `MU terms`: how many values MU's harmonic mean took (15 here: Entailment "
              "needs `--nli`; the paper's 18), `zero terms`: which were 0 and in how many seeds (one zero makes MU 0); "
              "`MU retain`: MU over the retain set alone; `FE terms`: FE's values (4 here, the paper's 5); `[items]`: "
              "the 95% bootstrap interval over evaluation items (the same items drawn for every seed). The last two "
              f"columns are another model's figures: {RERUN_SOURCE} ({PUBLISHED_SOURCE}) or, for real-world, "
              f"{QUOTED_SOURCE}; shown for the shape of the comparison, not as a target for these numbers. Per-seed "
              "values: `seeds.csv`; every run: `export/`.", ""]
    for (sc, setting), rows in table.groupby(["scenario", "setting"], sort=False):
        lines += [f"## {sc}, {setting}", "", markdown_table(_readable(rows)), ""]
        privacy = _privacy_readable(rows)
        if privacy is not None:
            lines += ["Beyond the paper: membership inference on the forget set against its holdout (never trained "
                      "on), docs/science-beyond-paper.md §3. AUC 1 = every forget item looks more seen than every holdout "
                      "item, 0.5 = indistinguishable; PrivLeak as MUSE defines it, in percent against the retain "
                      "model (fine-tuned without the forget set, scored on the same items): 0 = as private as it, "
                      "negative = under-unlearned, positive = over-unlearned; the interval: percentile bootstrap "
                      "over seeds.", "", markdown_table(privacy), ""]
    lines += ["## The paper's claims", "",
              f"Thresholds: stable MU = mean ≥ {STABLE_MEAN} × target MU with the interval's lower bound ≥ "
              f"{STABLE_LOWER} × target MU; collapse = MU ≤ {COLLAPSE} × target MU; comparisons between methods: "
              f"paired t-tests over seeds, Holm-corrected over a claim's comparisons, p < {ALPHA}. Each rule is in "
              "`claims.csv` and in `study/reporting/results.py`.", "",
              markdown_table(claims[["claim", "statement", "verdict", "evidence"]]), ""]
    paths["readme"].write_text("\n".join(lines))
    labelled = _labelled(runs, preset, seeds)
    models = sorted(set(labelled["model"].dropna())) if "model" in labelled else []
    scale = ", ".join(filter(None, [" / ".join(models), f"preset {preset}" if preset else ""]))
    figure = plot_mu_fe_intervals(table, scale=scale)
    if figure is not None:
        import matplotlib.pyplot as plt

        paths["figure"] = out / "mu_fe_fictitious_forget01.png"
        figure.savefig(paths["figure"], dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(figure)
    return paths
