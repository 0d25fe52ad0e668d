"""What an evaluation returns: the per-item table, the set means and the aggregates built from them.

:func:`summarise` turns the per-item table into the summary: the mean of every registered metric
(:data:`study.evaluation.metrics.METRICS`, :data:`study.evaluation.metrics.PRIVACY_METRICS`) on each set it applies to,
the membership-inference AUCs, and the aggregates the present sets allow (MU, MU-retain, FE, TOFU's
MU). :class:`EvalResult` holds both, and adds Forget Quality and PrivLeak against a retain model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from . import metrics as M
from ..inputs.data import EvalSet
from ..inputs.scenarios import scenario as find_scenario

__all__ = ["EvalResult", "forget_quality_from", "summarise"]


@dataclass(frozen=True)
class EvalResult:
    """One model's evaluation: per-item table, set means, aggregates and what they were built from."""

    items: pd.DataFrame
    """One row per (set, item). Columns: ``set``, ``item`` (row index in the set), ``question``,
    ``generation``, ``reference`` (the truth field), ``cosine_reference``, ``nli_reference``, the six
    metric columns of :data:`study.evaluation.metrics.METRICS`, ``truth_ratio_raw`` (R),
    ``truth_ratio_min`` (min(R, 1/R)), ``nli_label`` (None without NLI), ``nll_answer`` (NLL sum),
    ``n_tokens_answer``, ``avg_nll_answer``, ``avg_nll_paraphrased``, ``avg_nll_perturbed``
    (list of K floats), ``n_tokens_generation`` (model tokens of the decoded generation), and the
    columns of :data:`study.evaluation.metrics.PRIVACY_METRICS` (``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus``,
    ``extraction_strength``, ``exact_memorization``; docs/science-beyond-paper.md §3, §4)."""
    summary: dict[str, float]
    """``"<set>/<metric>"`` means of the six metrics (entailment NaN when no NLI model) and of the
    privacy metrics, ``"forget/truth_ratio_min"``, ``"n_items/<set>"``, ``"mia_auc/<attack>"`` when
    a holdout set was evaluated with the forget set, and the aggregates that apply:
    ``model_utility``, ``model_utility_retain``, ``forget_efficacy``, ``tofu_model_utility``
    (``forget_quality`` after :meth:`with_forget_quality`)."""
    aggregate_parts: dict[str, M.Aggregate]
    """Per aggregate: its value, the ``"<set>/<metric>"`` parts it was computed from, and the
    missing parts (e.g. ``"retain/entailment"`` without an NLI model)."""
    entailment_available: bool
    """Whether an NLI model scored the generations."""
    scenario: str
    """``fictitious`` | ``continual`` | ``real-world``."""
    nli_error: str | None = None
    """Why entailment is missing, when it is."""
    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage (``generation``, ``scoring``, ``embedding``, ``nli``, ``total``)."""

    def set_metrics(self) -> dict[str, dict[str, float]]:
        """``{set: {metric: mean}}`` of the six metrics (what :mod:`study.evaluation.metrics` aggregates take)."""
        out: dict[str, dict[str, float]] = {}
        for set_name in self.items["set"].unique():
            if M.summary_key(set_name, M.ROUGE) in self.summary:  # score-only sets (holdout) have none
                out[set_name] = {m: self.summary[M.summary_key(set_name, m)] for m in M.METRICS}
        return out

    def forget_truth_ratio_raw(self) -> np.ndarray:
        """Per-item R on the forget set, in item order (a retain model's input to Forget Quality)."""
        forget = self.items[self.items["set"] == M.FORGET].sort_values("item")
        if forget.empty:
            raise ValueError("this evaluation has no forget set")
        return forget[M.TRUTH_RATIO_RAW].to_numpy(dtype=np.float64)

    def with_forget_quality(self, retain_forget_tr: Any, statistic: M.FQStatistic = "ratio") -> EvalResult:
        """A copy with ``summary["forget_quality"]``: the KS-test p-value between this model's and a
        retain model's per-item forget-set truth ratios.

        Args:
            retain_forget_tr: the retain model's per-item R on the same forget items
                (``retain_result.forget_truth_ratio_raw()``), shape [N].
            statistic: ``"ratio"`` (R; TOFU's code, reproduces TOFU's numbers, the default) or
                ``"min_ratio"`` (min(R, 1/R), docs/science.md §6); see
                :func:`study.evaluation.metrics.forget_quality`.
        """
        ours = M.forget_quality_statistic(self.forget_truth_ratio_raw(), statistic)
        theirs = M.forget_quality_statistic(np.asarray(retain_forget_tr, dtype=np.float64), statistic)
        value = M.forget_quality(ours, theirs)
        part = M.summary_key(M.FORGET, M.TRUTH_RATIO_RAW if statistic == "ratio" else M.TRUTH_RATIO_MIN)
        parts = dict(self.aggregate_parts)
        parts["forget_quality"] = M.Aggregate(value, [part, "retain_model/" + part], [])
        return replace(self, summary={**self.summary, "forget_quality": value}, aggregate_parts=parts)

    def with_privleak(self, retain_summary: dict[str, float]) -> EvalResult:
        """A copy with ``summary["privleak/<attack>"]`` for each attack whose AUC both this evaluation
        and the retain model's (``retain_summary``, an evaluation summary on the same forget and
        holdout items) hold: :func:`study.evaluation.metrics.privleak`. Without AUCs nothing is added."""
        values = {}
        for attack in M.MIA_ATTACKS:
            key = M.mia_auc_key(attack)
            if key in self.summary and key in retain_summary:
                values[M.privleak_key(attack)] = M.privleak(self.summary[key], retain_summary[key])
        return replace(self, summary={**self.summary, **values})

    def long_items(self, privacy: bool = False) -> pd.DataFrame:
        """The per-item metrics in tidy long form: columns ``set``, ``item``, ``metric``, ``value``.

        ``privacy=True`` adds the metrics of :data:`study.evaluation.metrics.PRIVACY_METRICS`.
        """
        value_columns = [*M.METRICS, M.TRUTH_RATIO_RAW, M.TRUTH_RATIO_MIN, *(M.PRIVACY_METRICS if privacy else ())]
        return self.items.melt(id_vars=["set", "item"], value_vars=value_columns,
                               var_name="metric", value_name="value")


def forget_quality_from(result: EvalResult, retain_result: EvalResult,
                        statistic: M.FQStatistic = "ratio") -> float:
    """Forget Quality of ``result`` against a retain model's evaluation of the same forget set."""
    return result.with_forget_quality(retain_result.forget_truth_ratio_raw(), statistic).summary["forget_quality"]



def _mean(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def _set_means(items: pd.DataFrame, eval_set: EvalSet, registry: Mapping[str, M.MetricSpec]) -> dict[str, float]:
    """``{metric: set mean}`` of the metrics of ``registry`` that apply to the set (``spec.sets``)."""
    part = items[items["set"] == eval_set.name]
    return {m: _mean(part[m]) for m, spec in registry.items() if eval_set.kind in spec.sets}


def _mia_aucs(items: pd.DataFrame, eval_sets: Sequence[EvalSet]) -> dict[str, float]:
    """``mia_auc/<attack>``: each attack's AUC separating forget items (members) from holdout items
    (non-members), :func:`study.evaluation.metrics.mia_auc`. Absent, not zero, without a holdout set."""
    names = {s.kind: s.name for s in eval_sets}
    if M.FORGET not in names or M.HOLDOUT not in names:
        return {}
    forget, holdout = (items[items["set"] == names[k]] for k in (M.FORGET, M.HOLDOUT))
    return {M.mia_auc_key(a): M.mia_auc(forget[a].to_numpy(), holdout[a].to_numpy()) for a in M.MIA_ATTACKS}


def summarise(items: pd.DataFrame, eval_sets: Sequence[EvalSet], scenario: str
              ) -> tuple[dict[str, float], dict[str, M.Aggregate]]:
    """Set means of the per-item metrics and the aggregates that the present sets allow.

    Per set, in order: ``"<set>/<metric>"`` of the paper's metrics (none on a score-only set),
    ``"forget/truth_ratio_min"`` on the forget set, the privacy metrics, ``"n_items/<set>"``; then
    ``"mia_auc/<attack>"`` and the aggregates.
    """
    summary: dict[str, float] = {}
    set_metrics: dict[str, dict[str, float]] = {}  # generated sets: what the aggregates take
    for eval_set in eval_sets:
        name = eval_set.name
        values = _set_means(items, eval_set, M.METRICS)
        if eval_set.kind not in M.SCORE_ONLY_SETS:
            set_metrics[eval_set.kind] = values
        summary.update({M.summary_key(name, m): v for m, v in values.items()})
        if eval_set.kind == M.FORGET:
            summary[M.summary_key(name, M.TRUTH_RATIO_MIN)] = float(items.loc[items["set"] == name, M.TRUTH_RATIO_MIN].mean())
        summary.update({M.summary_key(name, m): v for m, v in _set_means(items, eval_set, M.PRIVACY_METRICS).items()})
        summary[f"n_items/{name}"] = float((items["set"] == name).sum())
    summary.update(_mia_aucs(items, eval_sets))
    aggregates = _aggregates(set_metrics, scenario)
    summary.update({name: agg.value for name, agg in aggregates.items()})
    return summary, aggregates


def _aggregates(set_metrics: dict[str, dict[str, float]], scenario: str) -> dict[str, M.Aggregate]:
    """The aggregates of the scenario (:mod:`study.inputs.scenarios`) whose sets were evaluated."""
    sc = find_scenario(scenario)
    aggregates: dict[str, M.Aggregate] = {}
    utility_sets = sc.utility_sets
    if all(s in set_metrics for s in utility_sets):
        aggregates["model_utility"] = M.model_utility(set_metrics, sets=utility_sets)
        if sc.tofu_utility:
            aggregates["tofu_model_utility"] = M.tofu_model_utility(set_metrics, sets=utility_sets)
    retain_set = sc.retain_set
    if retain_set in set_metrics:
        aggregates["model_utility_retain"] = M.model_utility_retain(set_metrics, retain_set=retain_set)
    if M.FORGET in set_metrics:
        aggregates["forget_efficacy"] = M.forget_efficacy(set_metrics[M.FORGET])
    return aggregates
