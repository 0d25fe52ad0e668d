"""Teacher-forced scoring: the NLL sum and per-token statistics of each (question, answer) sequence.

Sequences are tokenised as :func:`study.inputs.models.encode_qa` does (question masked with -100, answer
tokens, one EOS label) and their NLL is :func:`study.methods.sequence_nll`'s. :func:`score` is the
fast path: every scored sequence of every item (truth, paraphrased and perturbed answers) tokenised
in two calls, the tokens the sequences of one question share (prompt + question) run once per
question, the rest in right-padded batches trimmed to their longest row, logits built only from the
first answer-predicting position. :mod:`study.evaluation.reference` scores the reference code's way
(rows padded to ``max_length``, full logits) with the same :func:`record`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..methods.numerics import IGNORE_INDEX, shift_labels, token_nll
from ..inputs.models import PromptFormat
from .generation import batches, forward_params, selectable_kv_cache

__all__ = ["encode_qa_batch", "Scores", "vocab_logprob_moments", "record", "score"]


def encode_qa_batch(tokenizer: Any, prompt: PromptFormat, questions: Sequence[str], answers: Sequence[str],
                    max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """:func:`study.inputs.models.encode_qa` (``labels="answer"``) for many rows in two tokenizer calls,
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


@dataclass
class Scores:
    """What scoring returns per (question, answer) sequence ``[S]``."""

    nll: np.ndarray
    """float64 ``[S]``: ``NLL_sum`` of the answer (:func:`study.methods.sequence_nll`)."""
    n_tokens: np.ndarray
    """int64 ``[S]``: scored tokens (answer tokens and the EOS label)."""
    token_logprob: list[np.ndarray]
    """Per sequence, float64 ``[n]``: ``log p`` of each scored token (Min-K%)."""
    token_match: list[np.ndarray]
    """Per sequence, bool ``[n]``: the argmax given the true prefix is the scored token
    (extraction strength, exact memorisation)."""
    token_vocab_mean: list[np.ndarray]
    """Per sequence, float64 ``[n]``: ``Σ_v p(v) log p(v)`` of the next-token distribution at each
    scored token (Min-K%++, :func:`vocab_logprob_moments`); empty for a sequence not in ``moments``."""
    token_vocab_var: list[np.ndarray]
    """Per sequence, float64 ``[n]``: ``Σ_v p(v) (log p(v))² - mean²`` there (Min-K%++)."""
    moments: np.ndarray
    """bool ``[S]``: the sequences whose vocabulary moments are computed (the truth answers: Min-K%++
    reads only those; the paraphrased and perturbed answers skip the full-vocabulary pass)."""

    @classmethod
    def empty(cls, n: int, moments_for: Iterable[int] | None = None) -> Scores:
        """``n`` sequences, nothing scored yet (zeros, empty token arrays); vocabulary moments for the
        sequences ``moments_for`` (None: all)."""
        moments = np.ones(n, dtype=bool) if moments_for is None else np.zeros(n, dtype=bool)
        if moments_for is not None:
            moments[list(moments_for)] = True
        return cls(np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64),
                   [np.zeros(0)] * n, [np.zeros(0, dtype=bool)] * n, [np.zeros(0)] * n, [np.zeros(0)] * n, moments)

    def avg_nll(self) -> np.ndarray:
        """float64 ``[S]``: the average token NLL of each sequence; NaN without a scored token."""
        return np.where(self.n_tokens > 0, self.nll / np.where(self.n_tokens > 0, self.n_tokens, 1), np.nan)


MOMENT_CHUNK_ROWS = 1024
"""Scored positions per chunk in :func:`vocab_logprob_moments` (bounds its ``[rows, V]`` temporaries)."""


def vocab_logprob_moments(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``log p(v)`` for ``v ~ p = softmax(logits)``, per row: ``logits [R, V]`` ->
    ``(Σ_v p log p, Σ_v p (log p)² - mean²)``, each ``[R]``, in float32 (float64 for float64 logits),
    :data:`MOMENT_CHUNK_ROWS` rows at a time. Min-K%++'s ``μ_t`` and ``σ_t²`` (OpenUnlearning's
    ``src/evals/metrics/mia/min_k_plus_plus.py``: ``mu = (exp(lp) * lp).sum(-1)``, ``sigma = (exp(lp) *
    lp²).sum(-1) - mu²``)."""
    means, variances = [], []
    for chunk in logits.split(MOMENT_CHUNK_ROWS):
        logp = torch.log_softmax(chunk.to(torch.promote_types(chunk.dtype, torch.float32)), dim=-1)
        p = logp.exp()
        mean = (p * logp).sum(-1)
        means.append(mean)
        variances.append((p * logp.square()).sum(-1) - mean.square())
    empty = logits.new_zeros(0, dtype=torch.promote_types(logits.dtype, torch.float32))
    return (torch.cat(means) if means else empty), (torch.cat(variances) if variances else empty)


def record(logits: torch.Tensor, labels: torch.Tensor, seqs: Sequence[int], scores: Scores) -> None:
    """Store the NLL sums and per-token statistics of a scored batch: ``logits [B, T, V]`` with their
    unshifted ``labels [B, T]``, row ``r`` belonging to sequence ``seqs[r]``.

    The sum is ``token_nll(...).sum(-1)``, i.e. exactly :func:`study.methods.sequence_nll`.
    """
    nll = token_nll(logits, labels)  # [B, T], 0 where not scored
    target = shift_labels(labels)
    scored = target != IGNORE_INDEX
    match = logits.argmax(dim=-1) == target  # [B, T]
    wanted = torch.as_tensor(scores.moments[list(seqs)], device=scored.device)  # [B]
    moment_rows = scored & wanted[:, None]
    mean, var = vocab_logprob_moments(logits[moment_rows])  # [n] each, rows in (r, t) order
    scores.nll[list(seqs)] = nll.sum(dim=-1).double().cpu().numpy()
    counts = moment_rows.sum(dim=-1).tolist()
    mean, var = mean.double().cpu().numpy(), var.double().cpu().numpy()
    nll, scored, match = nll.double().cpu().numpy(), scored.cpu().numpy(), match.cpu().numpy()
    start = 0
    for r, i in enumerate(seqs):
        scores.token_logprob[i] = -nll[r][scored[r]]
        scores.token_match[i] = match[r][scored[r]]
        scores.token_vocab_mean[i] = mean[start: start + counts[r]]
        scores.token_vocab_var[i] = var[start: start + counts[r]]
        start += counts[r]


def score(model: Any, tokenizer: Any, prompt: PromptFormat, pairs: Sequence[tuple[str, str]], max_length: int,
          batch_size: int, device: torch.device, bar: tqdm, moments_for: Iterable[int] | None = None) -> Scores:
    """``NLL_sum``, answer-token counts and per-token statistics of each (question, answer) sequence.

    Labels follow :func:`study.inputs.models.encode_qa` (``"answer"``): question -100, answer tokens, one
    EOS label; sequences are truncated to ``max_length`` tokens. All rows are tokenised in two calls
    and sorted by length; when the model takes a row-selectable KV cache
    (:func:`~study.evaluation.generation.selectable_kv_cache`), the tokens that the sequences of one
    question share (prompt and question: the truth, paraphrased and perturbed answers of an item
    differ only after them) are run once per question, :func:`_score_shared_prefix`; otherwise (or
    for a question with nothing to share) :func:`_score_trimmed`. Both pad a batch only to its
    longest row and compute logits only from the first position whose next token is scored, which
    changes no sum: padding columns carry attention 0 and label -100, and causal attention never
    looks right. ``batch_size``: sequences per forward pass, and questions per shared-prefix pass.
    ``moments_for``: the sequences whose vocabulary moments (Min-K%++) are computed; None: all.
    """
    scores = Scores.empty(len(pairs), moments_for)
    n_tokens = scores.n_tokens
    ids, labels = encode_qa_batch(tokenizer, prompt, [q for q, _ in pairs], [a for _, a in pairs], max_length)
    n_tokens[:] = [sum(label != IGNORE_INDEX for label in row) for row in labels]
    rest = list(range(len(pairs)))
    if selectable_kv_cache(model):
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
        _score_shared_prefix(model, ids, labels, groups, prefixes, batch_size, device, tokenizer.eos_token_id,
                             scores, bar)
    _score_trimmed(model, ids, labels, rest, batch_size, device, tokenizer.eos_token_id,
                   "logits_to_keep" in forward_params(model), scores, bar)
    return scores


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


def _right_padded(rows: Sequence[Sequence[int]], width: int, fill: int) -> torch.Tensor:
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _score_trimmed(model: Any, ids: list[list[int]], labels: list[list[int]], which: Sequence[int], batch_size: int,
                   device: torch.device, eos: int, keep_tail: bool, scores: Scores, bar: tqdm) -> None:
    """Fill ``scores`` for ``i in which``: whole sequences, right-padded per batch (sorted by length)."""
    order = sorted(which, key=lambda i: len(labels[i]), reverse=True)
    for batch in batches(order, batch_size):
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
        record(logits, label_t[:, start:], batch, scores)
        bar.update(len(batch))


def _score_shared_prefix(model: Any, ids: list[list[int]], labels: list[list[int]], groups: list[list[int]],
                         prefixes: list[int], batch_size: int, device: torch.device, eos: int,
                         scores: Scores, bar: tqdm) -> None:
    """Fill ``scores`` for the sequences of ``groups``: each group's first ``prefixes[g]`` tokens
    (shared by all its sequences) run once, then every sequence's remaining tokens on top of a copy
    of its group's KV cache.

    Chunks of ``batch_size`` groups, sorted by prefix length: a prefix pass over the chunk,
    left-padded to ``P`` tokens (positions ``cumsum(mask) - 1``, as generation does), keeps the
    keys / values ``[G, H, P, D]`` per layer; then suffix batches of ``batch_size`` sequences,
    right-padded to ``S`` tokens, attend to ``[prefix mask | suffix mask]`` at positions
    ``p_g + 0..S-1``. Only the logits from the first answer-predicting suffix position on are built.
    """
    from transformers import DynamicCache

    group_order = sorted(range(len(groups)), key=lambda g: prefixes[g])
    for chunk in batches(group_order, batch_size):
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
        for batch in batches(range(len(members)), batch_size):
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
            record(logits, label_t[:, start:], seqs, scores)
            bar.update(len(batch))


