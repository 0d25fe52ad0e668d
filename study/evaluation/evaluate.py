"""Run a model over the evaluation sets, batched, and return a tidy table (docs/science.md §5).

What one evaluation computes, per item of each :class:`~study.inputs.data.EvalSet`:

1. a greedy generation from the prompt (left-padded batches, stop at EOS, ``max_length`` tokens
   including the item's own prompt);
2. per-sequence NLL sums of the truth answer, the paraphrased answer and each perturbed answer,
   tokenised exactly as :func:`study.inputs.models.encode_qa` does (question masked, one EOS label), in
   large flattened batches;
3. the metrics registered in :mod:`study.evaluation.metrics` (the paper's six: ROUGE, Probability, Truth
   Ratio, Token Entropy, Cosine, Entailment; and the privacy metrics), then the set means and the
   aggregates (MU, MU-retain, FE, TOFU's MU; FQ against a retain model's evaluation with
   :func:`forget_quality_from`).

The metric models (sentence embedder, NLI classifier) are loaded once per process by
:func:`load_metric_models` and passed in (docs/science.md §7, pattern 8).

This module is the public entry; the parts live in :mod:`study.evaluation`:

* ``metric_models`` -- loading the embedder and the NLI model, running them in batches;
* ``generation`` -- greedy decoding that drops finished rows, a token budget per item;
* ``scoring`` -- teacher-forced NLLs, each question's shared prefix run once;
* ``items`` -- pooling the sets' work, and the per-item table the metric registry fills;
* ``summary`` -- :class:`EvalResult`, set means, MIA AUCs and aggregates;
* ``engine`` -- the flow of one evaluation and the production batching;
* ``reference`` -- the same evaluation batched the reference code's ways (one item at a time, and its
  real batching): a test oracle and ``benchmarks/bench_eval.py``'s baseline, not for production.

Differences from the reference code (``sail-sg/closer-look-LLM-unlearning``, ``metrics/metrics.py``)
that are deliberate:

* Generation budget: the reference calls ``generate(max_length=200)`` on left-padded batches of 30,
  so every item of a batch gets ``200 - longest prompt of the batch`` new tokens. Here each item gets
  ``max_length - its own prompt length`` (what a batch of one gets in the reference), so results do
  not depend on how items are batched.
* Greedy decoding is plain argmax (see :mod:`study.evaluation.generation`).
* The tokenizer is copied for left padding (:func:`study.inputs.models.left_padded`), never mutated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..inputs.data import EvalSet
from ..errors import StudyInputError
from .engine import Batched, run
from .generation import MAX_LENGTH
from .metric_models import (
    BUILTIN_EMBEDDER, ENTAILMENT_LABEL, PAPER_EMBEDDER, PAPER_NLI, MetricModels, NLIModel,
    clear_metric_model_cache, load_metric_models,
)
from .scoring import encode_qa_batch
from .summary import EvalResult, forget_quality_from
from ..inputs.models import PromptFormat

__all__ = [
    "BUILTIN_EMBEDDER", "PAPER_EMBEDDER", "PAPER_NLI", "ENTAILMENT_LABEL", "MAX_LENGTH", "NLIModel", "MetricModels",
    "load_metric_models", "clear_metric_model_cache", "EvalResult", "evaluate",
    "forget_quality_from", "encode_qa_batch",
]



def evaluate(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, batch_size: int = 32, score_batch_size: int = 64,
    max_length: int = MAX_LENGTH, score_max_length: int | None = None, progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on ``eval_sets``: generations, likelihoods, the registered metrics, aggregates.

    Args:
        model: a causal LM (Hugging Face ``generate`` and ``forward``); put in eval mode for the
            evaluation and restored to its previous mode after. Runs on its own device and dtype.
        tokenizer: its tokenizer (EOS padding); never modified (a left-padding copy generates).
        prompt: the prompt format (docs/science.md §2).
        eval_sets: e.g. ``load_scenario(...).eval_sets``; set kinds must be distinct.
        scenario: ``"fictitious"``, ``"continual"`` or ``"real-world"`` (NLI direction, which sets
            make Model Utility).
        metric_models: from :func:`load_metric_models`.
        batch_size: prompts per generation batch (the items of all sets are pooled); bounds the
            KV cache, ``[batch_size, max_length]`` per layer.
        score_batch_size: sequences per likelihood forward pass (answers, paraphrases and
            perturbed answers of many items flattened together), and questions per shared-prefix
            pass; bounds the ``[B, T, V]`` logits.
        max_length: generation stops at this many tokens including the prompt (docs/science.md §5: 200).
        score_max_length: scored (question, answer) sequences are truncated to this many tokens;
            default ``max_length``, as the reference code (its ``TextDatasetQA`` takes
            ``generation.max_length``). Rows are padded only to the longest row of their batch.
        progress: show tqdm bars over batches.

    Returns:
        :class:`EvalResult`. With no NLI model the ``entailment`` column and set means are NaN,
        and MU / FE are computed without them (listed in ``aggregate_parts[...].missing``).
    """
    if batch_size < 1 or score_batch_size < 1:
        raise StudyInputError(f"batch sizes must be >= 1, got {batch_size} and {score_batch_size}")
    return run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
               Batched(batch_size=batch_size, score_batch_size=score_batch_size), progress)
