"""The evaluation done the reference code's ways: a test oracle and a timing baseline.

Not for production (use :func:`study.evaluation.evaluate.evaluate`). Two engines, each a
:class:`~study.evaluation.engine.Batched` that overrides only how the stages batch their work; the
flow, the per-item tables and the summary are the production ones:

* :func:`evaluate_one_at_a_time` (:class:`OneAtATime`) -- one ``generate`` call per item, one
  forward pass per sequence padded to ``score_max_length`` with full logits (``encode_qa`` per
  sequence, as the reference's ``TextDatasetQA``), one embedder call per text, one NLI call per
  pair, and the metric models reloaded for every set, bypassing the cache (the reference code builds
  its ``SentenceTransformer`` and NLI pipeline inside per-set functions). ``tests/test_evaluate.py``
  checks that the fast path computes the same numbers.
* :func:`evaluate_reference_batched` (:class:`ReferenceBatched`) -- the reference code's real
  batching (``sail-sg/closer-look-LLM-unlearning``, ``metrics.get_all_evals``); what
  ``benchmarks/bench_eval.py`` times the fast path against.

On SmolLM2-135M in float32 on CPU these give the fast path's generations and metrics within ~3e-6
(float32 rounding of differently shaped matrix products); ``benchmarks/bench_eval.py`` checks this.
Each item keeps its own generation budget (``max_length`` minus its prompt) here too, so the
generations are the same: the reference's ``generate(max_length=...)`` on left-padded batches would
count the batch's padding against shorter prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ..inputs.data import EvalSet
from ..errors import StudyInputError
from .generation import MAX_LENGTH
from ..methods.numerics import IGNORE_INDEX
from ..inputs.models import PromptFormat, encode_qa
from .engine import Batched, run
from .generation import batches, generate
from .items import SetWork, truth_slots
from .metric_models import MetricModels
from .scoring import Scores, record
from .summary import EvalResult

__all__ = ["OneAtATime", "ReferenceBatched", "evaluate_one_at_a_time", "evaluate_reference_batched",
           "score_padded", "reference_score_batches"]


def score_padded(model: Any, tokenizer: Any, prompt: PromptFormat, pairs: Sequence[tuple[str, str]],
                 groups: Sequence[Sequence[int]], max_length: int, device: torch.device, bar: tqdm,
                 moments_for: Iterable[int] | None = None) -> Scores:
    """Scores the reference code's way: per group of ``pairs`` indices one forward pass over
    :func:`study.inputs.models.encode_qa` rows padded to ``max_length``, full logits ``[B, max_length, V]``
    (vocabulary moments for ``moments_for``, :func:`study.evaluation.scoring.score`)."""
    scores = Scores.empty(len(pairs), moments_for)
    for rows in groups:
        encoded = [encode_qa(tokenizer, prompt, *pairs[i], max_length) for i in rows]
        batch = {k: torch.stack([e[k] for e in encoded]).to(device) for k in encoded[0]}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        record(logits, batch["labels"], rows, scores)
        scores.n_tokens[list(rows)] = (batch["labels"] != IGNORE_INDEX).sum(dim=-1).cpu().numpy()
        bar.update(len(rows))
    return scores


def reference_score_batches(works: Sequence[SetWork], generation_batch: int, items_per_pass: int) -> list[list[int]]:
    """The scored sequences that share a forward pass in the reference code.

    ``metrics.get_all_evals`` scores the truth answers in the forward pass of each evaluation batch
    (the ``generation_batch`` items it generates from); ``eval_perturbation_ratio`` then walks two
    loaders of ``batch_size // 4`` items (``items_per_pass``): one forward over their paraphrased
    answers, one over all their perturbed answers (items x K rows). Per set, in item order.
    """
    n = items_per_pass
    out: list[list[int]] = []
    for work in works:
        out += batches(work.truth_slot, generation_batch)
        if work.generated:  # a score-only set has no paraphrased or perturbed answers
            out += batches(work.para_slot, n)
            out += [[j for js in work.pert_slot[i:i + n] for j in js] for i in range(0, len(work.pert_slot), n)]
    return [b for b in out if b]


@dataclass(frozen=True)
class OneAtATime(Batched):
    """Every item generated alone (no padding), every sequence scored alone padded to
    ``max_length``, each text embedded alone, each pair classified alone, metric models per set."""

    batch_size: int = 1
    nli_batch_size: int = 1
    dedupe: ClassVar[bool] = False
    metric_models_per_set: ClassVar[bool] = True

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device,
                 bar: tqdm) -> list[list[int]]:
        """Hugging Face ``generate`` on batches of ``batch_size`` prompts in item order."""
        return generate(model, tokenizer, prompts, max_length, device, bar, batch_size=self.batch_size,
                        by_length=False, drop_finished=False)

    def score(self, model: Any, tokenizer: Any, prompt: PromptFormat, works: Sequence[SetWork],
              pairs: Sequence[tuple[str, str]], max_length: int, device: torch.device, bar: tqdm) -> Scores:
        return score_padded(model, tokenizer, prompt, pairs, [[i] for i in range(len(pairs))], max_length, device, bar,
                            truth_slots(works))

    def embed(self, embedder: Any, texts: Sequence[str]) -> np.ndarray:
        """The reference code: ``model.encode(text)`` for each text on its own."""
        return np.stack([embedder.encode(t, convert_to_numpy=True, show_progress_bar=False) for t in texts])


@dataclass(frozen=True)
class ReferenceBatched(OneAtATime):
    """The reference code's batching: per set, in item order, ``generate`` on left-padded batches of
    ``batch_size`` prompts (30 in its configs); the truth answers scored in those batches, the
    paraphrased and the perturbed answers of ``batch_size // 4`` items per forward pass
    (:func:`reference_score_batches`), every row padded to ``max_length`` with full logits; each
    text embedded alone; the NLI pipeline called with a list of pairs, which Hugging Face's pipeline
    runs one pair at a time."""

    batch_size: int = 30

    def score(self, model: Any, tokenizer: Any, prompt: PromptFormat, works: Sequence[SetWork],
              pairs: Sequence[tuple[str, str]], max_length: int, device: torch.device, bar: tqdm) -> Scores:
        groups = reference_score_batches(works, self.batch_size, self.batch_size // 4)
        return score_padded(model, tokenizer, prompt, pairs, groups, max_length, device, bar, truth_slots(works))


def evaluate_one_at_a_time(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, max_length: int = MAX_LENGTH, score_max_length: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """:func:`study.evaluation.evaluate.evaluate` done the slow way (:class:`OneAtATime`), as a check of it and
    a timing baseline. The metric models named by ``metric_models`` are reloaded for every set."""
    return run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
               OneAtATime(), progress)


def evaluate_reference_batched(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, batch_size: int = 30, max_length: int = MAX_LENGTH,
    score_max_length: int | None = None, progress: bool = True,
) -> EvalResult:
    """:func:`study.evaluation.evaluate.evaluate` batched as the reference code batches it
    (:class:`ReferenceBatched`): a timing baseline. ``batch_size``: the reference's evaluation
    ``batch_size`` (30 in its configs), at least 4."""
    if batch_size < 4:
        raise StudyInputError(f"batch_size must be >= 4 (the reference scores batch_size // 4 items), got {batch_size}")
    return run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
               ReferenceBatched(batch_size=batch_size), progress)
