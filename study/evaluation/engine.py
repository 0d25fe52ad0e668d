"""The flow of one evaluation, and how its work is batched.

:func:`run` checks the inputs, puts the model in eval mode, runs the stages over the pooled items of
all sets (generation, scoring, embedding, NLI), builds each set's per-item table
(:mod:`study.evaluation.items`) and the summary (:mod:`study.evaluation.summary`). How each stage
batches its work is the engine's: :class:`Batched` is the production one (:func:`study.evaluation.evaluate.evaluate`);
:mod:`study.evaluation.reference` subclasses it to re-enact the reference code's batching, a test
oracle and a timing baseline, so the flow and the tables are shared and only the batching differs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from ..inputs.data import EvalSet
from ..errors import StudyInputError, one_of
from ..inputs.models import PromptFormat
from ..inputs.scenarios import scenario as find_scenario
from . import items
from .generation import generate
from .metric_models import MetricModels, NLIModel, embed, load_metric_models, nli_labels
from .scoring import Scores, score
from .summary import EvalResult, summarise

__all__ = ["Batched", "run"]


@dataclass(frozen=True)
class Batched:
    """How the stages of an evaluation batch their work: the fast path.

    Generation: prompts sorted by length, left-padded batches, greedy decoding that drops each row
    from the batch and its KV cache as soon as it ends (evaluation answers have long-tailed lengths).
    Likelihoods: every distinct scored sequence of every item once, in large batches sharing each
    question's prefix (:func:`study.evaluation.scoring.score`). Embeddings and NLI in batches. The
    metric models are the ones passed in, for all sets at once.
    """

    batch_size: int = 32
    """Prompts per generation batch (the items of all sets are pooled)."""
    score_batch_size: int = 64
    """Sequences per likelihood forward pass, and questions per shared-prefix pass."""
    embed_batch_size: int = 64
    """Texts per embedder batch."""
    nli_batch_size: int = 32
    """Pairs per NLI forward pass."""
    dedupe: ClassVar[bool] = True
    """Score each distinct (question, answer) text once (:func:`study.evaluation.items.pool_work`)."""
    metric_models_per_set: ClassVar[bool] = False
    """Evaluate one set at a time, the metric models reloaded for each (the reference code builds
    them inside its per-set functions); False: all sets pooled, the given metric models."""

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device,
                 bar: tqdm) -> list[list[int]]:
        """New token ids per prompt (:func:`study.evaluation.generation.generate`)."""
        return generate(model, tokenizer, prompts, max_length, device, bar, batch_size=self.batch_size)

    def score(self, model: Any, tokenizer: Any, prompt: PromptFormat, works: Sequence[items.SetWork],
              pairs: Sequence[tuple[str, str]], max_length: int, device: torch.device, bar: tqdm) -> Scores:
        """Scores of the pooled (question, answer) ``pairs``; ``works`` say which set each belongs to."""
        return score(model, tokenizer, prompt, pairs, max_length, self.score_batch_size, device, bar,
                     moments_for=items.truth_slots(works))

    def embed(self, embedder: Any, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings ``[N, D]``."""
        return embed(embedder, texts, self.embed_batch_size)

    def classify(self, nli: NLIModel, pairs: Sequence[tuple[str, str]], bar: tqdm) -> list[str]:
        """The NLI label per (premise, hypothesis) pair."""
        return nli_labels(nli, pairs, self.nli_batch_size, bar)


def _check(eval_sets: Sequence[EvalSet], scenario: str, max_length: int, score_max_length: int) -> None:
    find_scenario(scenario)  # fail early on an unknown scenario
    kinds = [s.kind for s in eval_sets]
    if len(set(kinds)) != len(kinds):
        raise StudyInputError(f"evaluation sets must have distinct kinds, got {kinds}")
    for eval_set in eval_sets:
        if eval_set.kind not in M.SET_NAMES:
            raise one_of("evaluation set kind", eval_set.kind, M.SET_NAMES)
        if not eval_set.rows:
            raise StudyInputError(f"evaluation set {eval_set.name!r} has no rows")
    if max_length < 2 or score_max_length < 2:
        raise StudyInputError(f"max_length and score_max_length must be >= 2, got {max_length}, {score_max_length}")


def run(model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
        metric_models: MetricModels, max_length: int, score_max_length: int | None, engine: Batched,
        progress: bool) -> EvalResult:
    """Evaluate ``model`` on ``eval_sets`` with ``engine``'s batching; the arguments are
    :func:`study.evaluation.evaluate.evaluate`'s (``score_max_length`` None: ``max_length``)."""
    score_max_length = max_length if score_max_length is None else score_max_length
    _check(eval_sets, scenario, max_length, score_max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout; restored afterwards (evaluation can run mid-training)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tables: list[pd.DataFrame] = []
    try:
        if engine.metric_models_per_set:
            for eval_set in eval_sets:
                reloaded = load_metric_models(metric_models.embedder_name, metric_models.nli_name,
                                              metric_models.device, reload=True)
                tables += _evaluate_sets(model, tokenizer, prompt, [eval_set], scenario, reloaded, max_length,
                                         score_max_length, engine, progress, device, timings)
        else:
            tables = _evaluate_sets(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length,
                                    score_max_length, engine, progress, device, timings)
    finally:
        model.train(was_training)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    summary, aggregates = summarise(table, eval_sets, scenario)
    timings["total"] = time.perf_counter() - start
    return EvalResult(table, summary, aggregates, metric_models.nli is not None, scenario,
                      metric_models.nli_error, timings)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``timings[stage]``."""
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _evaluate_sets(model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
                   metric_models: MetricModels, max_length: int, score_max_length: int, engine: Batched,
                   progress: bool, device: torch.device, timings: dict[str, float]) -> list[pd.DataFrame]:
    """Generate, score, embed and classify the items of ``eval_sets`` together (pooled across sets,
    so batches stay full), then compute each set's per-item table."""
    all_works, pairs = items.pool_work(eval_sets, engine.dedupe)
    works = [w for w in all_works if w.generated]
    questions = [r["question"] for w in works for r in w.rows]
    n = len(questions)
    names = "+".join(s.name for s in eval_sets)
    # One bar over the batches of every stage, advanced by the rows each batch completes: items
    # generated, sequences scored, pairs classified.
    total = n + len(pairs) + (n if metric_models.nli is not None else 0)
    with tqdm(total=total, desc=f"eval {names}", unit="row", leave=False, disable=not progress) as bar:
        with _timed(timings, "generation"), torch.inference_mode():
            gen_ids = engine.generate(model, tokenizer, [prompt.prompt(q) for q in questions], max_length, device, bar)
            generations: list[str] = tokenizer.batch_decode(gen_ids, skip_special_tokens=True)
        with _timed(timings, "scoring"), torch.inference_mode():
            scores = engine.score(model, tokenizer, prompt, all_works, pairs, score_max_length, device, bar)
        with _timed(timings, "embedding"):
            cosine_refs = [r[w.eval_set.cosine_truth] for w in works for r in w.rows]
            emb = engine.embed(metric_models.embedder, generations + cosine_refs) if n else np.zeros((0, 0))
        with _timed(timings, "nli"):
            labels: list[str | None] = [None] * n
            if metric_models.nli is not None and n:
                nli_pairs = items.nli_pairs(works, generations, find_scenario(scenario).name)
                labels = list(engine.classify(metric_models.nli, nli_pairs, bar))

    # The reference code counts tokenizer.tokenize(generation): the decoded text re-tokenised (which
    # can differ from the generated ids), done here for all items in one call.
    retokenised = tokenizer(generations, add_special_tokens=False)["input_ids"] if n else []
    avg = scores.avg_nll()
    gen_emb, ref_emb = emb[:n], emb[n:]
    return [items.set_table(w, scores, avg, generations[w.items], retokenised[w.items],
                            (gen_emb[w.items], ref_emb[w.items]), labels[w.items])
            if w.generated else items.score_only_table(w, scores, avg)
            for w in all_works]
