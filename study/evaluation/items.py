"""The per-item table: where each set's work sits in the pooled batches, and one row per item.

The items of all sets are generated and scored together so batches stay full; :class:`SetWork`
records where each set's prompts and scored sequences sit. A set's table has its texts and
likelihood columns, written here, and its metric columns, which come from the registries of
:mod:`study.evaluation.metrics` (:data:`~study.evaluation.metrics.METRICS`, :data:`~study.evaluation.metrics.PRIVACY_METRICS`)
applied to the set's :class:`~study.evaluation.metrics.ItemInputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from . import metrics as M
from ..inputs.data import EvalSet
from ..errors import StudyInputError
from .scoring import Scores

__all__ = ["SetWork", "pool_work", "nli_pairs", "truth_slots", "set_table", "score_only_table"]


@dataclass
class SetWork:
    """One set's items and where its sequences sit in the pooled work lists."""

    eval_set: EvalSet
    first: int
    """Index of the set's first item in the pooled prompt list; -1 for a score-only set (no prompts)."""
    truth_slot: list[int]
    """Per item, the index of (question, truth answer) in the pooled scored sequences."""
    para_slot: list[int]
    pert_slot: list[list[int]]

    @property
    def rows(self) -> list[dict]:
        return self.eval_set.rows

    @property
    def items(self) -> slice:
        """The set's items in the pooled prompts (and generations)."""
        return slice(self.first, self.first + len(self.eval_set.rows))

    @property
    def generated(self) -> bool:
        return self.first >= 0


def pool_work(eval_sets: Sequence[EvalSet], dedupe: bool) -> tuple[list[SetWork], list[tuple[str, str]]]:
    """Pool the scored sequences of all sets: per item [truth, paraphrase, perturbed_1..K].

    ``dedupe``: score each distinct (question, answer) text once: on Real Authors / World Facts the
    "paraphrased" answer is the answer itself, so they share one forward pass (the reference code
    scores them apart). A score-only set (holdout, :data:`study.evaluation.metrics.SCORE_ONLY_SETS`)
    contributes its truth answers only and no prompts to generate from (its ``first`` is -1).
    """
    pairs: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}

    def slot(question: str, answer: str) -> int:
        key = (question, answer)
        if dedupe and key in index:
            return index[key]
        pairs.append(key)
        index[key] = len(pairs) - 1
        return len(pairs) - 1

    works, first = [], 0
    for eval_set in eval_sets:
        rows = eval_set.rows
        if eval_set.kind in M.SCORE_ONLY_SETS:
            truth = [slot(r["question"], r[eval_set.truth]) for r in rows]
            works.append(SetWork(eval_set, -1, truth_slot=truth, para_slot=truth, pert_slot=[[] for _ in rows]))
            continue
        works.append(SetWork(
            eval_set, first,
            truth_slot=[slot(r["question"], r[eval_set.truth]) for r in rows],
            para_slot=[slot(r["question"], r[eval_set.paraphrase]) for r in rows],
            pert_slot=[[slot(r["question"], p) for p in r["perturbed_answer"]] for r in rows],
        ))
        first += len(rows)
    return works, pairs


def _nli_truth_field(eval_set: EvalSet) -> str:
    """The field the NLI check compares with: ``original_answer`` (the full sentence, the cosine
    field) on Real Authors / World Facts, the truth field elsewhere (reference
    ``get_all_evals``; see :func:`study.evaluation.metrics.nli_pairs`)."""
    return eval_set.cosine_truth if eval_set.kind in (M.REAL_AUTHORS, M.WORLD_FACTS) else eval_set.truth


def nli_pairs(works: Sequence[SetWork], generations: Sequence[str], scenario_key: str) -> list[tuple[str, str]]:
    """(premise, hypothesis) per item of the generated ``works``, in pooled order; the direction
    depends on the set and the scenario (:func:`study.evaluation.metrics.nli_pairs`)."""
    pairs: list[tuple[str, str]] = []
    for w in works:
        refs = [r[_nli_truth_field(w.eval_set)] for r in w.rows]
        pairs.extend(M.nli_pairs(w.eval_set.kind, scenario_key, generations[w.items], refs))
    return pairs


def _rectangular(rows: list[list[float]], set_name: str) -> np.ndarray:
    """[N, K] average NLLs of the perturbed answers; every item must have the same K (the truth
    ratio and normalised probability formulas of :mod:`study.evaluation.metrics` take [N, K])."""
    counts = sorted({len(r) for r in rows})
    if len(counts) > 1:
        raise StudyInputError(f"evaluation set {set_name!r}: items have {counts} perturbed answers; "
                              "every item needs the same number")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), counts[0] if counts else 0)


def truth_slots(works: Sequence[SetWork]) -> set[int]:
    """The pooled sequences that are some set's truth answers (the only ones Min-K%++ reads)."""
    return {j for work in works for j in work.truth_slot}


def _truth_inputs(work: SetWork, scores: Scores, avg: np.ndarray) -> M.ItemInputs:
    """The metric inputs every set has: its truth answers' likelihoods and token statistics."""
    slots = work.truth_slot
    return M.ItemInputs(
        kind=work.eval_set.kind,
        truths=[r[work.eval_set.truth] for r in work.rows],
        answer_nll=scores.nll[slots],
        answer_tokens=scores.n_tokens[slots],
        answer_avg_nll=avg[slots],
        answer_token_logprobs=[scores.token_logprob[j] for j in slots],
        answer_token_matches=[scores.token_match[j] for j in slots],
        answer_token_vocab_mean=[scores.token_vocab_mean[j] for j in slots],
        answer_token_vocab_var=[scores.token_vocab_var[j] for j in slots],
    )


def set_table(work: SetWork, scores: Scores, avg: np.ndarray, generations: list[str],
              retokenised: list[list[int]], embeddings: tuple[np.ndarray, np.ndarray],
              nli_labels: list[str | None]) -> pd.DataFrame:
    """The per-item table of one generated set.

    Args:
        scores, avg: the pooled scoring results and average token NLLs ``[S]`` (all sets).
        generations, retokenised, nli_labels: this set's, ``[N]``.
        embeddings: this set's generation and cosine-reference embeddings, ``[N, D]`` each.
    """
    eval_set, rows = work.eval_set, work.rows
    n = len(rows)
    para_avg = avg[work.para_slot]
    pert_avg = _rectangular([[avg[j] for j in js] for js in work.pert_slot], eval_set.name)  # [N, K]
    ratio = M.truth_ratio_raw(para_avg, pert_avg)
    inputs = replace(_truth_inputs(work, scores, avg), generations=generations, generation_tokens=retokenised,
                     paraphrased_avg_nll=para_avg, perturbed_avg_nll=pert_avg, truth_ratio_raw=ratio,
                     generation_embeddings=embeddings[0], reference_embeddings=embeddings[1], nli_labels=nli_labels)
    return pd.DataFrame({
        "set": [eval_set.name] * n,
        "item": np.arange(n),
        "question": [r["question"] for r in rows],
        "generation": generations,
        "reference": inputs.truths,
        "cosine_reference": [r[eval_set.cosine_truth] for r in rows],
        "nli_reference": [r[_nli_truth_field(eval_set)] for r in rows],
        **M.item_columns(M.METRICS, inputs),
        M.TRUTH_RATIO_RAW: ratio,
        M.TRUTH_RATIO_MIN: M.truth_ratio_min(ratio),
        "nli_label": nli_labels,
        "nll_answer": inputs.answer_nll,
        "n_tokens_answer": inputs.answer_tokens,
        "avg_nll_answer": inputs.answer_avg_nll,
        "avg_nll_paraphrased": para_avg,
        "avg_nll_perturbed": [list(map(float, row)) for row in pert_avg],
        "n_tokens_generation": [len(ids) for ids in retokenised],
        **M.item_columns(M.PRIVACY_METRICS, inputs),
    })


def score_only_table(work: SetWork, scores: Scores, avg: np.ndarray) -> pd.DataFrame:
    """The per-item table of a score-only set (holdout): the truth answer's likelihood columns and the
    privacy metrics; no generation, so the columns of :data:`study.evaluation.metrics.METRICS` (whose ``sets``
    leave it out) are NaN and the set never enters MU/FE."""
    rows = work.rows
    n = len(rows)
    inputs = _truth_inputs(work, scores, avg)
    return pd.DataFrame({
        "set": [work.eval_set.name] * n,
        "item": np.arange(n),
        "question": [r["question"] for r in rows],
        "reference": inputs.truths,
        **M.item_columns(M.METRICS, inputs),
        "nll_answer": inputs.answer_nll,
        "n_tokens_answer": inputs.answer_tokens,
        "avg_nll_answer": inputs.answer_avg_nll,
        **M.item_columns(M.PRIVACY_METRICS, inputs),
    })
