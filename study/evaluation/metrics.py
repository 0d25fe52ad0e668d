"""Per-item evaluation metrics and the aggregates built from them (MU, FE, FQ).

Everything here is a pure function of numbers or strings; no model is loaded. ``evaluate.py`` runs
the models (generation, NLLs, sentence embeddings, NLI labels) and hands the results to these
functions. Each per-item function returns one value per item, so that every set-level figure is a
plain mean of stored per-item values and every aggregate can be traced back to its items
(docs/science.md §7, pattern 5).

Definitions follow docs/science.md §5 and the reference code
(``sail-sg/closer-look-LLM-unlearning``, ``metrics/metrics.py``: ``get_all_evals``,
``get_eval_results``, ``get_entailment_results``); TOFU's own aggregates follow TOFU's
``aggregate_eval_stat.py`` (``get_model_utility``, ``get_forget_quality``).

Names used everywhere (column names of the tidy table and keys of summaries):

* metrics: ``"rouge"``, ``"probability"``, ``"truth_ratio"``, ``"token_entropy"``, ``"cosine"``,
  ``"entailment"`` (see :data:`METRICS`); auxiliary per-item truth-ratio columns
  ``"truth_ratio_raw"`` (R) and ``"truth_ratio_min"`` (min(R, 1/R)).
* sets: ``"forget"``, ``"retain"``, ``"real_authors"``, ``"world_facts"`` (TOFU) and ``"forget"``,
  ``"neighbor"`` (real-world).
* per-set summary keys: ``"<set>/<metric>"``, e.g. ``"retain/rouge"`` (:func:`summary_key`);
  aggregates: ``"model_utility"``, ``"model_utility_retain"``, ``"forget_efficacy"``,
  ``"forget_quality"``, ``"tofu_model_utility"``.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp
from scipy.stats import ks_2samp

from ..inputs.scenarios import EARLIER_FORGET, FORGET, HOLDOUT, NEIGHBOR, REAL_AUTHORS, RETAIN, WORLD_FACTS
from ..inputs.scenarios import SCENARIOS as _SCENARIOS
from ..inputs.scenarios import scenario as _scenario

__all__ = [
    "FORGET", "RETAIN", "REAL_AUTHORS", "WORLD_FACTS", "NEIGHBOR", "SET_NAMES", "SCENARIOS",
    "UTILITY_SETS", "ROUGE", "PROBABILITY", "TRUTH_RATIO", "TOKEN_ENTROPY", "COSINE", "ENTAILMENT",
    "TRUTH_RATIO_RAW", "TRUTH_RATIO_MIN", "MU_METRICS", "FE_METRICS", "TOFU_MU_METRICS",
    "ENTAILMENT_MIN_ROUGE", "GENERATED_SETS", "ItemInputs", "MetricFn", "MetricSpec", "METRICS",
    "item_columns", "Aggregate", "summary_key",
    "rouge_l_recall", "probability", "normalised_probability", "truth_ratio_raw",
    "truth_ratio_min", "truth_ratio_item", "truth_ratio_columns", "token_entropy",
    "cosine_similarity", "entailment_scores", "nli_direction", "nli_pairs", "harmonic_mean",
    "mean_of", "model_utility", "model_utility_retain", "forget_efficacy", "tofu_model_utility",
    "forget_quality", "forget_quality_statistic", "TOFU_LOG_SETS", "tofu_items_from_log",
    "tofu_summary_from_logs",
    "HOLDOUT", "EARLIER_FORGET", "FORGET_SETS", "SCORE_ONLY_SETS", "MIA_LOSS", "MIA_ZLIB", "MIA_MIN_K", "MIA_MIN_K_PLUS_PLUS", "MIA_ATTACKS",
    "EXTRACTION_STRENGTH", "EXACT_MEMORIZATION", "MIN_K_FRACTION", "MIN_K_PLUS_PLUS_MIN_VAR", "PRIVACY_METRICS",
    "mia_auc_key", "privleak_key", "zlib_length", "zlib_ratio", "min_k_score", "min_k_plus_plus_token_scores",
    "min_k_plus_plus_score", "extraction_strength", "exact_memorization", "mia_auc", "privleak",
]

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

SET_NAMES: tuple[str, ...] = (FORGET, RETAIN, REAL_AUTHORS, WORLD_FACTS, NEIGHBOR, EARLIER_FORGET, HOLDOUT)
"""Evaluation set names. TOFU (fictitious, continual): forget, retain, real_authors, world_facts.
Real-world: forget and neighbor (the disjoint neighbor *evaluation* set). Optional everywhere:
holdout, items of the forget set's distribution the target never saw (the non-members of the
membership-inference attacks; never part of MU or FE). Optional in continual (``eval.earlier_tasks``):
earlier_forget, the forget sets of the tasks unlearned before the current one, scored as a forget set
(never part of MU or FE)."""

FORGET_SETS: tuple[str, ...] = (FORGET, EARLIER_FORGET)
"""Sets whose truth ratio is read as forgetting (``1 - min(R, 1/R)``, :func:`truth_ratio_item`)."""

SCORE_ONLY_SETS: tuple[str, ...] = (HOLDOUT,)
"""Sets that are only scored (likelihoods of the truth answer), never generated from: they need only
``question`` and ``answer`` and carry only the privacy metrics."""

GENERATED_SETS: tuple[str, ...] = tuple(s for s in SET_NAMES if s not in SCORE_ONLY_SETS)
"""Sets the model generates from: the sets of the paper's six metrics."""

SCENARIOS: tuple[str, ...] = tuple(_SCENARIOS)
"""Scenario names (:mod:`study.inputs.scenarios` defines them)."""

UTILITY_SETS: dict[str, tuple[str, ...]] = {s.name: s.utility_sets for s in _SCENARIOS.values()}
"""The sets whose metrics enter Model Utility, per scenario (docs/science.md §5; :mod:`study.inputs.scenarios`)."""

ROUGE = "rouge"
PROBABILITY = "probability"
TRUTH_RATIO = "truth_ratio"
TOKEN_ENTROPY = "token_entropy"
COSINE = "cosine"
ENTAILMENT = "entailment"
TRUTH_RATIO_RAW = "truth_ratio_raw"
"""Auxiliary per-item column: R = exp(mean_i avgNLL(perturbed_i) - avgNLL(paraphrased))."""
TRUTH_RATIO_MIN = "truth_ratio_min"
"""Auxiliary per-item column: min(R, 1/R), the folded forget-set statistic (docs/science.md §5)."""

ENTAILMENT_MIN_ROUGE = 0.1
"""An item whose ROUGE-L recall is below this counts as not entailed (reference code)."""


@dataclass(frozen=True)
class ItemInputs:
    """What the per-item metrics of one evaluation set are computed from: the evaluated model's
    outputs on the set's N items and the items' truths (``study.evaluation.items`` builds it; every
    field is numbers or strings). A score-only set (:data:`SCORE_ONLY_SETS`) has only the truth
    answer's fields; the generation fields are empty and the others None."""

    kind: str
    """The set (:data:`SET_NAMES`): some metrics are defined per set (Probability, Truth Ratio)."""
    truths: Sequence[str]
    """[N] truth answers (the set's truth field; ROUGE's reference, the zlib attack's text)."""
    answer_nll: np.ndarray
    """float64 [N]: NLL sum of the truth answer."""
    answer_tokens: np.ndarray
    """int64 [N]: scored tokens of the truth answer (answer tokens and the EOS label)."""
    answer_avg_nll: np.ndarray
    """float64 [N]: ``answer_nll / answer_tokens`` (NaN without a scored token)."""
    answer_token_logprobs: Sequence[np.ndarray]
    """Per item, float64 [n]: log-prob of each scored truth-answer token (Min-K%)."""
    answer_token_matches: Sequence[np.ndarray]
    """Per item, bool [n]: the argmax given the true prefix is the truth-answer token."""
    answer_token_vocab_mean: Sequence[np.ndarray] = ()
    """Per item, float64 [n]: ``μ_t = Σ_v p(v) log p(v)`` under ``p(·|x, y_<t)`` at each scored token
    (Min-K%++); empty when the evaluation did not compute it (its column is then NaN)."""
    answer_token_vocab_var: Sequence[np.ndarray] = ()
    """Per item, float64 [n]: ``σ_t² = Σ_v p(v) (log p(v))² - μ_t²`` at each scored token (Min-K%++)."""
    generations: Sequence[str] = ()
    """[N] greedy generations, decoded without special tokens."""
    generation_tokens: Sequence[Sequence[int]] = ()
    """[N] token ids of each decoded generation re-tokenised (the reference's ``tokenizer.tokenize``)."""
    paraphrased_avg_nll: np.ndarray | None = None
    """float64 [N]: average token NLL of the paraphrased answer (the answer on Real Authors / World Facts)."""
    perturbed_avg_nll: np.ndarray | None = None
    """float64 [N, K]: average token NLLs of the K perturbed answers."""
    truth_ratio_raw: np.ndarray | None = None
    """float64 [N]: R (:func:`truth_ratio_raw`), also the auxiliary column ``"truth_ratio_raw"``."""
    generation_embeddings: np.ndarray | None = None
    """[N, D] sentence embeddings of the generations."""
    reference_embeddings: np.ndarray | None = None
    """[N, D] sentence embeddings of the cosine references (``answer``; ``original_answer`` on Real
    Authors / World Facts)."""
    nli_labels: Sequence[str | None] = ()
    """[N] the NLI model's lower-cased label per item, None without an NLI model."""


MetricFn = Callable[[ItemInputs, Mapping[str, np.ndarray]], Any]
"""``(inputs, columns) -> [N] values``; ``columns`` holds the columns of the metrics registered
before it in the same registry (Entailment Score reads ROUGE), so nothing is computed twice."""


@dataclass(frozen=True)
class MetricSpec:
    """Metadata of one per-item metric (lm-evaluation-harness style registration).

    Adding a metric is a per-item function of this module and one entry in :data:`METRICS` (or
    :data:`PRIVACY_METRICS`) whose ``compute`` maps :class:`ItemInputs` to it: the per-item table,
    the set means of the summary, the tidy long table and, per ``in_model_utility`` /
    ``in_forget_efficacy``, the aggregates follow from the registry. A metric that needs a model
    output :class:`ItemInputs` does not carry yet also needs that output added there and in
    ``study/evaluation/items.py`` (and computed by the evaluation)."""

    name: str
    """Canonical short name; the column name in tables and the metric part of summary keys."""
    higher_is_better: bool
    """Direction as a measure of knowledge or quality on a set. On the forget set a *lower* value
    of the FE metrics means more forgetting (FE = 1 - their mean)."""
    key: str
    """The per-item field of the reference code's evaluation logs this metric corresponds to."""
    label: str = ""
    """The reference code's label in its summaries (``"<Set> <label>"``)."""
    sets: tuple[str, ...] = SET_NAMES
    """Evaluation sets the metric is computed on; on the others its column is NaN and its set mean
    absent from the summary."""
    in_forget_efficacy: bool = False
    """Whether the forget-set value enters Forget Efficacy (:data:`FE_METRICS`): opt-in, so a new metric
    changes neither aggregate unless it says so."""
    in_model_utility: bool = False
    """Whether the values on the utility sets enter Model Utility (:data:`MU_METRICS`): opt-in."""
    compute: MetricFn | None = None
    """The per-item values of a set; see :data:`MetricFn`."""


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(ROUGE, True, "rougeL_recall", "ROUGE", GENERATED_SETS, in_model_utility=True,
                   in_forget_efficacy=True, compute=lambda x, _: rouge_l_recall(x.generations, x.truths)),
        MetricSpec(PROBABILITY, True, "avg_gt_loss", "Probability", GENERATED_SETS, in_model_utility=True,
                   in_forget_efficacy=True, compute=lambda x, _: _set_probability(x)),
        MetricSpec(TRUTH_RATIO, True, "truth_ratio", "Truth Ratio", GENERATED_SETS, in_model_utility=True,
                   in_forget_efficacy=True, compute=lambda x, _: truth_ratio_item(x.truth_ratio_raw, x.kind)),
        MetricSpec(TOKEN_ENTROPY, True, "token_entropy", "Token Entropy", GENERATED_SETS, in_model_utility=True,
                   compute=lambda x, _: token_entropy(x.generation_tokens)),
        MetricSpec(COSINE, True, "cosine_similarity", "Cosine Similarity", GENERATED_SETS, in_model_utility=True,
                   in_forget_efficacy=True,
                   compute=lambda x, _: cosine_similarity(x.generation_embeddings, x.reference_embeddings)),
        MetricSpec(ENTAILMENT, True, "entailment_labels", "Entailment Score", GENERATED_SETS, in_model_utility=True,
                   in_forget_efficacy=True, compute=lambda x, columns: _set_entailment(x, columns[ROUGE])),
    )
}
"""The six metrics of the paper, keyed by canonical short name, in table order."""

MU_METRICS: tuple[str, ...] = tuple(name for name, spec in METRICS.items() if spec.in_model_utility)
"""All six metrics enter Model Utility (the reference code's ``'Forget' not in k`` loop)."""
FE_METRICS: tuple[str, ...] = tuple(name for name, spec in METRICS.items() if spec.in_forget_efficacy)
"""Forget Efficacy uses five metrics: Token Entropy is excluded."""
TOFU_MU_METRICS: tuple[str, ...] = (PROBABILITY, ROUGE, TRUTH_RATIO)
"""TOFU's original Model Utility uses three metrics on retain, real authors and world facts."""


def item_columns(registry: Mapping[str, MetricSpec], inputs: ItemInputs) -> dict[str, np.ndarray]:
    """float64 [N] per metric of ``registry``, in its order: ``spec.compute`` on a set the metric
    applies to (``spec.sets``), NaN on the others."""
    columns: dict[str, np.ndarray] = {}
    n = len(inputs.truths)
    for name, spec in registry.items():
        if inputs.kind in spec.sets and spec.compute is not None:
            columns[name] = np.asarray(spec.compute(inputs, columns), dtype=np.float64)
        else:
            columns[name] = np.full(n, np.nan)
    return columns


def summary_key(set_name: str, metric: str) -> str:
    """Key of a set-level value in flat summaries: ``"<set>/<metric>"``, e.g. ``"retain/rouge"``."""
    return f"{set_name}/{metric}"


@dataclass(frozen=True)
class Aggregate:
    """An aggregate value together with what it was computed from.

    ``parts`` names the values that entered ``value`` and ``missing`` the requested values that
    were absent, None or NaN and were therefore left out (e.g. ``"retain/entailment"``).
    ``value`` is NaN when no part was available.
    """

    value: float
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every requested part was available."""
        return not self.missing


# --------------------------------------------------------------------------------------------
# Per-item metrics
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    """One RougeScorer per process (ROUGE-L with the Porter stemmer, as the reference code)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L recall of each generation against its reference answer.

    Matches the reference code's ``eval_rouge_recall``: ``scorer.score(target=reference,
    prediction=generation)['rougeL'].recall`` with ``use_stemmer=True``. Recall = LCS length /
    number of reference tokens, so an empty generation scores 0.
    """
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations but {len(references)} references")
    scorer = _rouge_scorer()
    return [float(scorer.score(ref, gen)["rougeL"].recall) for gen, ref in zip(generations, references)]


def probability(nll_sum: Any, n_tokens: Any) -> np.ndarray:
    """Per-item answer probability on the retain and forget sets: ``exp(-NLL_sum / len)``.

    This is the geometric-mean token probability of the answer (TOFU and the reference code:
    ``np.exp(-avg_gt_loss)``). ``nll_sum`` and ``n_tokens`` have shape [N]; returns float64 [N].
    An item with zero answer tokens gives NaN.
    """
    nll_sum = np.asarray(nll_sum, dtype=np.float64)
    n_tokens = np.asarray(n_tokens, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.where(n_tokens > 0, nll_sum / np.where(n_tokens > 0, n_tokens, 1.0), np.nan)
    return np.exp(-avg)


def normalised_probability(answer_avg_nll: Any, perturbed_avg_nll: Any) -> np.ndarray:
    """Per-item normalised probability on Real Authors / World Facts.

    ``P(a) / (P(a) + sum_i P(perturbed_i))`` with every ``P = exp(-average token NLL)``
    (TOFU ``get_model_utility``; the reference code's ``get_eval_results``).

    Args:
        answer_avg_nll: [N] average token NLL of the correct answer.
        perturbed_avg_nll: [N, K] average token NLL of the K perturbed (wrong) answers.

    Returns:
        float64 [N]. Computed as ``exp(-a - logsumexp(-[a, p_1..p_K]))`` to avoid underflow; this
        equals the ratio of the formula exactly in exact arithmetic.
    """
    answer = np.asarray(answer_avg_nll, dtype=np.float64)
    perturbed = _as_2d(perturbed_avg_nll, "perturbed_avg_nll")
    if perturbed.shape[0] != answer.shape[0]:
        raise ValueError(f"{answer.shape[0]} answers but {perturbed.shape[0]} perturbed rows")
    all_neg = -np.concatenate([answer[:, None], perturbed], axis=1)  # [N, K+1] log-probabilities
    return np.exp(-answer - logsumexp(all_neg, axis=1))


def truth_ratio_raw(paraphrased_avg_nll: Any, perturbed_avg_nll: Any) -> np.ndarray:
    """Per-item truth ratio ``R = exp(mean_i avgNLL(perturbed_i) - avgNLL(paraphrased))``.

    The mean over the K perturbed answers is taken over *average token NLLs* before the
    exponential, as TOFU and the reference code do (``average_perturb_loss.mean(-1)``). R > 1 when
    the paraphrased (true) answer is more likely than the perturbed ones. On Real Authors / World
    Facts the "paraphrased" answer is the answer itself.

    Args:
        paraphrased_avg_nll: [N].
        perturbed_avg_nll: [N, K].

    Returns:
        float64 [N]; stored as the auxiliary column ``"truth_ratio_raw"``.
    """
    paraphrased = np.asarray(paraphrased_avg_nll, dtype=np.float64)
    perturbed = _as_2d(perturbed_avg_nll, "perturbed_avg_nll")
    if perturbed.shape[0] != paraphrased.shape[0]:
        raise ValueError(f"{paraphrased.shape[0]} paraphrased but {perturbed.shape[0]} perturbed rows")
    return np.exp(perturbed.mean(axis=1) - paraphrased)


def truth_ratio_min(ratio: Any) -> np.ndarray:
    """Per-item forget-set statistic ``min(R, 1/R)`` in (0, 1]; 1 when true and false answers are
    equally likely. Stored as the auxiliary column ``"truth_ratio_min"``."""
    ratio = np.asarray(ratio, dtype=np.float64)
    return np.minimum(ratio, 1.0 / ratio)


def truth_ratio_item(ratio: Any, set_name: str) -> np.ndarray:
    """The stored per-item ``"truth_ratio"`` value, chosen so that the set value is its plain mean.

    * forget set (and earlier_forget, :data:`FORGET_SETS`): ``1 - min(R, 1/R)``; the set value is ``1 - mean(min(R, 1/R))`` (reference code;
      note TOFU itself reports ``mean(min(R, 1/R))`` for the forget set, i.e. one minus this).
    * every other set: ``max(0, 1 - 1/R)``; the set value is ``mean(max(0, 1 - 1/R))``.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    if set_name in FORGET_SETS:
        return 1.0 - truth_ratio_min(ratio)
    _check_set(set_name)
    return np.maximum(0.0, 1.0 - 1.0 / ratio)


def truth_ratio_columns(paraphrased_avg_nll: Any, perturbed_avg_nll: Any,
                        set_name: str) -> dict[str, np.ndarray]:
    """All per-item truth-ratio columns of one set: ``"truth_ratio"`` (mean = set value),
    ``"truth_ratio_raw"`` (R) and ``"truth_ratio_min"`` (min(R, 1/R), for Forget Quality)."""
    ratio = truth_ratio_raw(paraphrased_avg_nll, perturbed_avg_nll)
    return {
        TRUTH_RATIO: truth_ratio_item(ratio, set_name),
        TRUTH_RATIO_RAW: ratio,
        TRUTH_RATIO_MIN: truth_ratio_min(ratio),
    }


def token_entropy(token_ids: Sequence[Sequence[Hashable]]) -> list[float]:
    """Normalised unigram entropy of each generation's tokens.

    ``H = -sum_t p_t log2 p_t`` over the token frequencies of one generation, divided by
    ``log2(n_tokens)`` (the maximum, reached when all tokens differ); 0 when ``n_tokens <= 1``
    (reference code ``compute_token_entropy``, which counts ``tokenizer.tokenize`` strings; ids of
    the same tokenizer give the same counts). Low values flag repetitive, degenerate text.
    """
    values: list[float] = []
    for tokens in token_ids:
        n = len(tokens)
        if n <= 1:
            values.append(0.0)
            continue
        counts = np.fromiter(Counter(tokens).values(), dtype=np.float64)
        freqs = counts / n
        entropy = float(-(freqs * np.log2(freqs)).sum())
        values.append(entropy / math.log2(n))
    return values


def cosine_similarity(gen_emb: Any, ref_emb: Any) -> list[float]:
    """Row-wise ``max(0, cos(gen_i, ref_i))`` of sentence embeddings (reference code
    ``eval_cosine_similarity``). Accepts numpy arrays or torch tensors of shape [N, D] (or [D] for
    one item); a zero vector gives cosine 0, as scikit-learn's ``cosine_similarity`` does."""
    gen = _to_numpy_2d(gen_emb)
    ref = _to_numpy_2d(ref_emb)
    if gen.shape != ref.shape:
        raise ValueError(f"embedding shapes differ: {gen.shape} vs {ref.shape}")
    gen_norm = np.linalg.norm(gen, axis=1)
    ref_norm = np.linalg.norm(ref, axis=1)
    denom = gen_norm * ref_norm
    dots = (gen * ref).sum(axis=1)
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return [float(v) for v in np.maximum(0.0, cos)]


def entailment_scores(labels: Sequence[str], rouge: Sequence[float],
                      min_rouge: float = ENTAILMENT_MIN_ROUGE) -> list[float]:
    """Per-item entailment: 1.0 if the NLI label is exactly ``"entailment"`` and the item's ROUGE-L
    recall is at least ``min_rouge`` (0.1), else 0.0. The set value (Entailment Score) is the mean.

    The reference code (``get_entailment_results``) relabels items with ROUGE-L recall < 0.1 as
    ``'none'``, considering such outputs factually incorrect whatever the NLI model says.
    """
    if len(labels) != len(rouge):
        raise ValueError(f"{len(labels)} labels but {len(rouge)} ROUGE values")
    return [1.0 if (label == "entailment" and r >= min_rouge) else 0.0
            for label, r in zip(labels, rouge)]


def _set_probability(x: ItemInputs) -> np.ndarray:
    """The Probability column of one set: normalised on Real Authors / World Facts, else
    ``exp(-NLL_sum / len)`` (docs/science.md §5)."""
    if x.kind in (REAL_AUTHORS, WORLD_FACTS):
        return normalised_probability(x.answer_avg_nll, x.perturbed_avg_nll)
    return probability(x.answer_nll, x.answer_tokens)


def _set_entailment(x: ItemInputs, rouge: Sequence[float]) -> list[float]:
    """The Entailment column of one set: :func:`entailment_scores`, NaN throughout without NLI labels."""
    if all(label is not None for label in x.nli_labels) and len(x.nli_labels):
        return entailment_scores(x.nli_labels, rouge)  # type: ignore[arg-type]  (no None left)
    return [math.nan] * len(x.truths)


def nli_direction(set_name: str, scenario: str) -> Literal["generation->truth", "truth->generation"]:
    """Premise -> hypothesis direction of the NLI check for one set (reference code
    ``get_entailment_results``).

    * TOFU (``fictitious``, ``continual``), forget set: premise = generation, hypothesis = truth
      (does the output state the forgotten fact?).
    * TOFU retain / real_authors / world_facts: premise = truth, hypothesis = generation (does the
      output follow from the truth?).
    * ``real-world``: generation -> truth on both sets.
    """
    _check_set(set_name)
    return _scenario(scenario).nli_direction(set_name)


def nli_pairs(set_name: str, scenario: str, generations: Sequence[str],
              truths: Sequence[str]) -> list[tuple[str, str]]:
    """(premise, hypothesis) pairs for the NLI model, in the direction of :func:`nli_direction`.

    The truth is what the reference code passes: TOFU forget / retain: ``answer``; Real Authors /
    World Facts: ``original_answer`` (the full sentence, while ROUGE uses the short ``answer``);
    real-world: the evaluation answer (``golden_answer``).
    """
    if len(generations) != len(truths):
        raise ValueError(f"{len(generations)} generations but {len(truths)} truths")
    if nli_direction(set_name, scenario) == "generation->truth":
        return list(zip(generations, truths))
    return list(zip(truths, generations))


# --------------------------------------------------------------------------------------------
# Beyond the paper: membership inference and memorisation (docs/science-beyond-paper.md §3, §4)
# --------------------------------------------------------------------------------------------

MIA_LOSS = "mia_loss"
"""Per-item LOSS attack statistic: the answer's average token NLL (Yeom et al., 2018)."""
MIA_ZLIB = "mia_zlib"
"""Per-item zlib attack statistic: average token NLL / zlib-compressed answer bytes (Carlini et al., 2021)."""
MIA_MIN_K = "mia_min_k"
"""Per-item Min-K% Prob attack statistic: minus the mean of the k% lowest token log-probs (Shi et al., 2023)."""
MIA_MIN_K_PLUS_PLUS = "mia_min_k_plus_plus"
"""Per-item Min-K%++ attack statistic: minus the mean of the k% lowest vocabulary-normalised token
log-probs (Zhang et al., 2024)."""
MIA_ATTACKS: tuple[str, ...] = (MIA_LOSS, MIA_ZLIB, MIA_MIN_K, MIA_MIN_K_PLUS_PLUS)
"""Every attack statistic is oriented alike: higher = looks less like a training member."""
EXTRACTION_STRENGTH = "extraction_strength"
"""Per-item share of the answer the model reproduces greedily from a prefix (OpenUnlearning)."""
EXACT_MEMORIZATION = "exact_memorization"
"""Per-item share of answer tokens that are the model's argmax given the true prefix (OpenUnlearning)."""
MIN_K_FRACTION = 0.4
"""k of Min-K% Prob and Min-K%++: the share of lowest-scoring tokens averaged (MUSE / OpenUnlearning use 0.4)."""
MIN_K_PLUS_PLUS_MIN_VAR = 1e-6
"""Min-K%++'s floor on ``σ_t²`` (OpenUnlearning's ``torch.clamp(sigma, min=1e-6)``)."""


def _min_k_plus_plus_column(x: ItemInputs) -> np.ndarray:
    """The Min-K%++ column of a set; NaN throughout when the evaluation carried no vocabulary moments."""
    if len(x.answer_token_vocab_mean) != len(x.truths):
        return np.full(len(x.truths), np.nan)
    z = min_k_plus_plus_token_scores(x.answer_token_logprobs, x.answer_token_vocab_mean, x.answer_token_vocab_var)
    return min_k_plus_plus_score(z)


PRIVACY_METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec(MIA_LOSS, False, "loss", "MIA LOSS",
                   compute=lambda x, _: np.asarray(x.answer_avg_nll, dtype=np.float64)),
        MetricSpec(MIA_ZLIB, False, "zlib", "MIA zlib",
                   compute=lambda x, _: zlib_ratio(x.answer_avg_nll, x.truths)),
        MetricSpec(MIA_MIN_K, False, "min_k", "MIA Min-K%",
                   compute=lambda x, _: min_k_score(x.answer_token_logprobs)),
        MetricSpec(MIA_MIN_K_PLUS_PLUS, False, "min_k++", "MIA Min-K%++",
                   compute=lambda x, _: _min_k_plus_plus_column(x)),
        MetricSpec(EXTRACTION_STRENGTH, True, "extraction_strength", "Extraction Strength",
                   compute=lambda x, _: extraction_strength(x.answer_token_matches)),
        MetricSpec(EXACT_MEMORIZATION, True, "exact_memorization", "Exact Memorization",
                   compute=lambda x, _: exact_memorization(x.answer_token_matches)),
    )
}
"""Per-item metrics beyond the paper's six, all from the truth answer's scoring pass (no extra
forward pass or generation), on every set. They are columns of the per-item table and set means in
the summary, and never enter Model Utility or Forget Efficacy (they are not in :data:`METRICS`). ``higher_is_better`` is the
direction as a measure of knowledge (a higher attack statistic means the item looks *less* known).

Token conventions (docs/science-beyond-paper.md §3, §4), as OpenUnlearning's
``src/evals/metrics/utils.py`` (``tokenwise_logprobs``, ``tokenwise_vocab_logprobs``): LOSS and zlib
score every scored token, the EOS label included (``evaluate_probability``); Min-K%, Min-K%++, exact
memorisation and extraction strength drop the last scored token, the EOS label (its ``[:-1]``)."""

def mia_auc_key(attack: str) -> str:
    """Summary key of an attack's forget-vs-holdout AUC, e.g. ``"mia_auc/mia_min_k"``."""
    return f"mia_auc/{attack}"


def privleak_key(attack: str) -> str:
    """Summary key of an attack's PrivLeak against the retain model, e.g. ``"privleak/mia_min_k"``."""
    return f"privleak/{attack}"


def zlib_length(text: str) -> int:
    """Bytes of ``zlib.compress(text.encode("utf-8"))`` (default level), the zlib "entropy" of Carlini et al."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_ratio(avg_nll: Any, texts: Sequence[str]) -> np.ndarray:
    """Per-item zlib attack statistic ``avg_nll / zlib_length(text)`` (Carlini et al., 2021, arXiv 2012.07805).

    ``avg_nll`` [N] is the answer's average token NLL (the LOSS statistic), ``texts`` the answers.
    """
    avg_nll = np.asarray(avg_nll, dtype=np.float64)
    if len(avg_nll) != len(texts):
        raise ValueError(f"{len(avg_nll)} losses but {len(texts)} texts")
    return avg_nll / np.asarray([zlib_length(t) for t in texts], dtype=np.float64)


def _scored(values: Any, with_eos: bool) -> np.ndarray:
    """An item's per-token values without the last one (the EOS label), unless ``with_eos``.

    OpenUnlearning's ``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` take the labelled positions
    ``[:-1]`` ("-1 to ignore eos prediction"): the last labelled token, whatever it is. Here too: an
    answer cut at ``max_length`` has no EOS label, and its last answer token is dropped instead (in
    OpenUnlearning the EOS is appended after truncation, so its answer keeps that token)."""
    values = np.asarray(values)
    return values if with_eos else values[:-1]


def min_k_score(token_logprobs: Sequence[Any], k: float = MIN_K_FRACTION, with_eos: bool = False) -> np.ndarray:
    """Per-item Min-K% Prob statistic: ``-mean`` of the ``max(1, floor(k n))`` lowest of the item's
    ``n`` token log-probs (Shi et al., 2023, arXiv 2310.16789; OpenUnlearning's
    ``src/evals/metrics/mia/min_k.py``, ``MinKProbAttack.compute_score``).

    Args:
        token_logprobs: per item, the log-probs ``[n]`` of its scored tokens (answer tokens and EOS label).
        k: the fraction of tokens kept, in (0, 1].
        with_eos: keep the last scored token (the EOS label). False (default): dropped, as OpenUnlearning.

    Returns:
        float64 [N]; 0 for an item with no token left (OpenUnlearning's ``return 0``).
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    out = np.zeros(len(token_logprobs))
    for i, lp in enumerate(token_logprobs):
        lp = np.sort(_scored(lp, with_eos).astype(np.float64))
        if lp.size:
            out[i] = -float(np.mean(lp[: max(1, int(lp.size * k))]))
    return out


def min_k_plus_plus_token_scores(token_logprobs: Sequence[Any], vocab_mean: Sequence[Any],
                                 vocab_var: Sequence[Any]) -> list[np.ndarray]:
    """Per item, Min-K%++'s per-token scores ``(log p(y_t) - μ_t) / σ_t`` (Zhang et al., 2024,
    "Min-K%++: Improved Baseline for Detecting Pre-Training Data from Large Language Models",
    arXiv 2404.02936; OpenUnlearning's ``src/evals/metrics/mia/min_k_plus_plus.py``).

    ``μ_t = Σ_v p(v) log p(v)`` and ``σ_t² = Σ_v p(v) (log p(v))² - μ_t²`` are the mean and variance
    of ``log p(v)`` for ``v ~ p(·|x, y_<t)``; ``σ_t²`` is floored at :data:`MIN_K_PLUS_PLUS_MIN_VAR`
    as OpenUnlearning does. All three inputs: per item ``[n]`` over the same scored tokens.
    """
    out = []
    for lp, mu, var in zip(token_logprobs, vocab_mean, vocab_var, strict=True):
        lp, mu, var = (np.asarray(a, dtype=np.float64) for a in (lp, mu, var))
        out.append((lp - mu) / np.sqrt(np.maximum(var, MIN_K_PLUS_PLUS_MIN_VAR)))
    return out


def min_k_plus_plus_score(token_scores: Sequence[Any], k: float = MIN_K_FRACTION, with_eos: bool = False) -> np.ndarray:
    """Per-item Min-K%++ statistic: ``-mean`` of the ``max(1, floor(k n))`` lowest per-token scores
    (:func:`min_k_plus_plus_token_scores`): OpenUnlearning's ``MinKPlusPlusAttack.compute_score``, the
    EOS label dropped and an item with no token left scoring 0, as in :func:`min_k_score`."""
    return min_k_score(token_scores, k, with_eos)


def extraction_strength(matches: Sequence[Any], with_eos: bool = False, empty_suffix: bool = False) -> np.ndarray:
    """Per-item ``ES = 1 - k* / n``: ``k*`` is the smallest ``k`` such that greedy decoding from the
    question and the first ``k`` answer tokens reproduces the remaining ``n - k`` exactly.

    Greedy decoding that reproduces the true tokens feeds itself the true prefix, so it reproduces
    tokens ``k..n-1`` iff the argmax under teacher forcing equals the label at each of them: ``k*`` is
    the start of the longest all-correct suffix of ``matches`` (Carlini et al., 2021; OpenUnlearning's
    ``src/evals/metrics/memorization.py``, ``extraction_strength``), searched, as there, over
    ``k = 0 … n-1``: when not even the last token is reproduced the loop ends at ``k = n - 1`` and the
    item scores ``1/n``. See docs/science-beyond-paper.md §4.

    Args:
        matches: per item, booleans ``[n]``: the argmax given the true prefix equals answer token ``t``.
        with_eos: keep the last scored token (the EOS label); False (default) drops it, as OpenUnlearning.
        empty_suffix: also allow ``k = n`` (nothing left to reproduce), so that an item whose last token
            is not reproduced scores 0 rather than ``1/n`` (Carlini et al.'s definition read literally).

    Returns:
        float64 [N] in [0, 1]; 0 for an item with no token left (OpenUnlearning).
    """
    out = np.zeros(len(matches))
    for i, m in enumerate(matches):
        m = _scored(m, with_eos).astype(bool)
        if m.size:
            wrong = np.flatnonzero(~m)
            k_star = int(wrong[-1]) + 1 if wrong.size else 0
            if not empty_suffix:
                k_star = min(k_star, m.size - 1)
            out[i] = 1.0 - k_star / m.size
    return out


def exact_memorization(matches: Sequence[Any], with_eos: bool = False) -> np.ndarray:
    """Per-item share of answer tokens whose teacher-forced argmax is the true token
    (OpenUnlearning's ``src/evals/metrics/memorization.py``, ``exact_memorization``; Tirumala et al.,
    2022). ``with_eos``: keep the EOS label (default: dropped, as there). NaN for an item with no token
    left (OpenUnlearning's ``None``: left out of the set mean)."""
    out = np.full(len(matches), np.nan)
    for i, m in enumerate(matches):
        m = _scored(m, with_eos).astype(bool)
        if m.size:
            out[i] = float(np.mean(m))
    return out


def mia_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """AUC of a membership attack whose statistic is higher for non-members.

    ``AUC = P(s_nonmember > s_member) + P(s_nonmember = s_member) / 2`` over all (member,
    non-member) pairs: the ROC AUC of ``roc_auc_score(labels = 1 for non-members, scores)``, as
    OpenUnlearning's ``mia_auc`` computes it (forget = members labelled 0, holdout = 1). 1 = every
    forget item looks more like training data than every holdout item; 0.5 = no separation.
    NaN when either side is empty or holds a NaN.
    """
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64)
    if members.size == 0 or nonmembers.size == 0 or np.isnan(members).any() or np.isnan(nonmembers).any():
        return math.nan
    greater = (nonmembers[:, None] > members[None, :]).sum()
    ties = (nonmembers[:, None] == members[None, :]).sum()
    return float((greater + 0.5 * ties) / (members.size * nonmembers.size))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE's PrivLeak, in percent: ``(AUC_retain - AUC_unlearned) / (1 - AUC_retain) * 100``.

    MUSE (Shi et al., 2024, arXiv 2407.06460; ``swj0419/muse_bench``, ``eval.py``) computes
    ``(AUC' - AUC'_retrain) / AUC'_retrain * 100`` on AUCs oriented the other way round from
    :func:`mia_auc` (``AUC' = 1 - AUC``: MUSE's AUC is high when forget items look *unseen*);
    OpenUnlearning's ``src/evals/metrics/privacy.py`` (``privleak``) converts exactly so, ``score = 1 -
    score; ref = 1 - ref``, and adds 1e-10 to the denominator (not here: a retain AUC of 1 gives NaN).
    0 = as private as the retain model; < 0 = forget items still look like members (under-unlearning;
    about -100 for a model that has not unlearned at all); > 0 = they look *less* like members than
    the retain model finds them (over-unlearning). NaN if either AUC is missing."""
    if _is_missing(auc_unlearned) or _is_missing(auc_retain) or auc_retain == 1:
        return math.nan
    return (float(auc_retain) - float(auc_unlearned)) / (1.0 - float(auc_retain)) * 100.0


# --------------------------------------------------------------------------------------------
# Aggregates
# --------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _named(values: Mapping[str, float | None] | Sequence[float | None]) -> list[tuple[str, Any]]:
    if isinstance(values, Mapping):
        return [(str(k), v) for k, v in values.items()]
    return [(str(i), v) for i, v in enumerate(values)]


def _present(values: Mapping[str, float | None] | Sequence[float | None]) -> tuple[list, list, list[float]]:
    """``(names present, names missing, present values as floats)``; None and NaN count as missing."""
    parts, missing, present = [], [], []
    for name, value in _named(values):
        if _is_missing(value):
            missing.append(name)
        else:
            parts.append(name)
            present.append(float(value))
    return parts, missing, present


def harmonic_mean(values: Mapping[str, float | None] | Sequence[float | None]) -> Aggregate:
    """Harmonic mean ``n / sum(1 / x)`` of the available values.

    None and NaN values are excluded and listed in ``missing`` (names are the mapping's keys, or
    the positions for a sequence). A zero anywhere gives 0, as ``scipy.stats.hmean`` does (the
    limit of the formula). Negative values are an error.
    """
    parts, missing, present = _present(values)
    if not present:
        return Aggregate(math.nan, parts, missing)
    arr = np.asarray(present)
    if (arr < 0).any():
        raise ValueError(f"harmonic mean of negative values: {dict(zip(parts, present))}")
    value = 0.0 if (arr == 0).any() else float(len(arr) / np.sum(1.0 / arr))
    return Aggregate(value, parts, missing)


def mean_of(values: Mapping[str, float | None] | Sequence[float | None]) -> Aggregate:
    """Arithmetic mean of the available values; None / NaN values are excluded and listed."""
    parts, missing, present = _present(values)
    return Aggregate(float(np.mean(present)) if present else math.nan, parts, missing)


def _select(set_metrics: Mapping[str, Mapping[str, float | None]], sets: Sequence[str],
            metrics: Sequence[str]) -> dict[str, float | None]:
    """Flatten the requested (set, metric) values into ``{"set/metric": value}``; absent -> None."""
    return {summary_key(s, m): set_metrics.get(s, {}).get(m) for s in sets for m in metrics}


def model_utility(set_metrics: Mapping[str, Mapping[str, float | None]],
                  sets: Sequence[str] = UTILITY_SETS["fictitious"],
                  metrics: Sequence[str] = MU_METRICS) -> Aggregate:
    """Model Utility: harmonic mean of the six metrics on Retain, Real Authors and World Facts
    (18 values; real-world: ``sets=UTILITY_SETS["real-world"]``, the 6 neighbor values).

    ``set_metrics[set][metric]`` holds set-level values (means of per-item values). A value that
    is absent, None or NaN (e.g. Entailment when no NLI model was run) is left out and listed in
    ``missing``; the mean is then taken over the remaining values (15 without Entailment).
    """
    return harmonic_mean(_select(set_metrics, sets, metrics))


def model_utility_retain(set_metrics: Mapping[str, Mapping[str, float | None]],
                         retain_set: str = RETAIN,
                         metrics: Sequence[str] = MU_METRICS) -> Aggregate:
    """Model Utility over the retain set alone (``"Model Utility Retain"`` of the reference code;
    real-world: ``retain_set="neighbor"``, where it equals :func:`model_utility`)."""
    return model_utility(set_metrics, sets=(retain_set,), metrics=metrics)


def forget_efficacy(forget_metrics: Mapping[str, float | None],
                    metrics: Sequence[str] = FE_METRICS) -> Aggregate:
    """Forget Efficacy: ``1 - mean(ROUGE, Probability, Truth Ratio, Cosine, Entailment)`` on the
    forget set (Token Entropy excluded). Higher = more forgotten.

    The forget Truth Ratio here is the set value ``1 - mean(min(R, 1/R))``. Missing values are
    excluded from the mean and listed; parts are named ``"forget/<metric>"``.
    """
    agg = mean_of({summary_key(FORGET, m): forget_metrics.get(m) for m in metrics})
    return Aggregate(1.0 - agg.value, agg.parts, agg.missing)


def tofu_model_utility(set_metrics: Mapping[str, Mapping[str, float | None]],
                       sets: Sequence[str] = UTILITY_SETS["fictitious"]) -> Aggregate:
    """TOFU's original Model Utility: harmonic mean of 9 values, Probability, ROUGE-L recall and
    Truth Ratio on each of retain, real authors and world facts (TOFU ``get_model_utility``).

    On these sets TOFU's definitions equal this module's: retain Probability = mean exp(-avg NLL);
    RA/WF Probability = mean normalised probability; Truth Ratio = mean max(0, 1 - 1/R); ROUGE =
    mean ROUGE-L recall. (TOFU's forget-set Truth Ratio differs, but it is not part of MU.)
    """
    return model_utility(set_metrics, sets=sets, metrics=TOFU_MU_METRICS)


def forget_quality(unlearned_forget_tr_stats: Any, retain_model_forget_tr_stats: Any) -> float:
    """Forget Quality: p-value of the two-sample Kolmogorov-Smirnov test
    (``scipy.stats.ks_2samp``, two-sided) between the per-item forget-set truth-ratio statistics
    of the unlearned model and of the retain model. Identical samples give 1.0.

    The statistic is the caller's choice (:func:`forget_quality_statistic`):

    * ``"ratio"`` -- R itself, as TOFU's ``get_forget_quality`` does; this reproduces TOFU's
      published values. KS is invariant under a monotone map applied to both samples, so R, 1/R
      (OpenUnlearning) and log R all give the same p-value.
    * ``"min_ratio"`` -- ``min(R, 1/R)``, a common reading (docs/science.md §6). Folding R around 1 is not
      monotone, so this gives a different p-value (e.g. Llama-2-7b full vs retain90 on forget10:
      7.4e-15 instead of TOFU's 1.83e-21).
    """
    a = np.asarray(unlearned_forget_tr_stats, dtype=np.float64)
    b = np.asarray(retain_model_forget_tr_stats, dtype=np.float64)
    return float(ks_2samp(a, b).pvalue)


FQStatistic = Literal["ratio", "min_ratio"]


def forget_quality_statistic(ratio: Any, statistic: FQStatistic = "ratio") -> np.ndarray:
    """The per-item statistic that Forget Quality compares: R (``"ratio"``, TOFU's code, the
    default because it reproduces TOFU's numbers) or ``min(R, 1/R)`` (``"min_ratio"``)."""
    ratio = np.asarray(ratio, dtype=np.float64)
    if statistic == "ratio":
        return ratio
    if statistic == "min_ratio":
        return truth_ratio_min(ratio)
    raise ValueError(f"unknown Forget Quality statistic {statistic!r}; valid: ratio, min_ratio")


# --------------------------------------------------------------------------------------------
# TOFU's published evaluation logs
# --------------------------------------------------------------------------------------------

TOFU_LOG_SETS: dict[str, str] = {
    "eval_log.json": RETAIN,
    "eval_real_author_wo_options.json": REAL_AUTHORS,
    "eval_real_world_wo_options.json": WORLD_FACTS,
    "eval_log_forget.json": FORGET,
}
"""TOFU's evaluation-log file names and the set each holds."""


def _log_field(set_log: Mapping[str, Any], name: str) -> list[Any]:
    """One per-item field of a TOFU log, in item order (dicts keyed by index string, or lists)."""
    values = set_log[name]
    if isinstance(values, Mapping):
        return [values[k] for k in sorted(values, key=int)]
    return list(values)


def tofu_items_from_log(set_log: Mapping[str, Any], set_name: str) -> dict[str, np.ndarray]:
    """Per-item ``"rouge"``, ``"probability"`` and truth-ratio columns of one set of a TOFU log.

    Uses the logged ``rougeL_recall`` (which :func:`rouge_l_recall` reproduces from
    ``generated_text``), ``gt_loss`` / ``num_token_gt`` (NLL sums and answer lengths),
    ``avg_gt_loss``, ``average_perturb_loss`` ([N, K] average NLLs) and ``avg_paraphrased_loss``.
    Retain and forget sets use :func:`probability`; real authors and world facts use
    :func:`normalised_probability`.
    """
    perturbed = np.asarray(_log_field(set_log, "average_perturb_loss"), dtype=np.float64)
    if set_name in (REAL_AUTHORS, WORLD_FACTS):
        prob = normalised_probability(_log_field(set_log, "avg_gt_loss"), perturbed)
    else:
        prob = probability(_log_field(set_log, "gt_loss"), _log_field(set_log, "num_token_gt"))
    items = {
        ROUGE: np.asarray(_log_field(set_log, "rougeL_recall"), dtype=np.float64),
        PROBABILITY: prob,
    }
    items.update(truth_ratio_columns(_log_field(set_log, "avg_paraphrased_loss"), perturbed, set_name))
    return items


def tofu_summary_from_logs(model_log: Mapping[str, Mapping[str, Any]],
                           retain_model_log: Mapping[str, Mapping[str, Any]],
                           fq_statistic: FQStatistic = "ratio") -> dict[str, float]:
    """TOFU's Model Utility and Forget Quality from TOFU-format evaluation logs.

    Args:
        model_log: the evaluated model's log: ``{file name: {field: {item index: value}}}`` with
            the four files of :data:`TOFU_LOG_SETS`.
        retain_model_log: the retain model's log; only its forget file is used.
        fq_statistic: per-item statistic for the KS test (see :func:`forget_quality`).

    Returns:
        ``"<set>/<metric>"`` set means for sets retain, real_authors, world_facts, forget and
        metrics rouge, probability, truth_ratio (forget: ``1 - mean(min(R, 1/R))``), plus
        ``"forget/truth_ratio_min"`` (= TOFU's reported forget Truth Ratio), ``"n_items/<set>"``,
        ``"tofu_model_utility"`` (harmonic mean of the 9 retain/RA/WF values) and
        ``"forget_quality"``.
    """
    summary: dict[str, float] = {}
    set_metrics: dict[str, dict[str, float]] = {}
    forget_ratio: np.ndarray | None = None
    for file_name, set_name in TOFU_LOG_SETS.items():
        items = tofu_items_from_log(model_log[file_name], set_name)
        set_metrics[set_name] = {m: float(np.mean(items[m])) for m in TOFU_MU_METRICS}
        for metric, value in set_metrics[set_name].items():
            summary[summary_key(set_name, metric)] = value
        summary[f"n_items/{set_name}"] = float(len(items[ROUGE]))
        if set_name == FORGET:
            summary[summary_key(FORGET, TRUTH_RATIO_MIN)] = float(np.mean(items[TRUTH_RATIO_MIN]))
            forget_ratio = items[TRUTH_RATIO_RAW]
    summary["tofu_model_utility"] = tofu_model_utility(set_metrics).value

    retain_forget = tofu_items_from_log(retain_model_log["eval_log_forget.json"], FORGET)
    assert forget_ratio is not None
    summary["forget_quality"] = forget_quality(
        forget_quality_statistic(forget_ratio, fq_statistic),
        forget_quality_statistic(retain_forget[TRUTH_RATIO_RAW], fq_statistic),
    )
    return summary


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_set(set_name: str) -> None:
    """A set the paper's metrics apply to (score-only sets such as holdout have no truth ratio or NLI)."""
    if set_name not in GENERATED_SETS:
        raise ValueError(f"unknown set {set_name!r}; valid: {', '.join(GENERATED_SETS)}")


def _as_2d(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except ValueError as err:  # ragged lists
        raise ValueError(f"{what} must be rectangular [N, K]: {err}") from err
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape [N, K], got {arr.shape}")
    return arr


def _to_numpy_2d(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"embeddings must have shape [N, D] or [D], got {arr.shape}")
    return arr
