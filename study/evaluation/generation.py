"""Greedy generation for evaluation: left-padded batches, stop at EOS, a token budget per item.

Each item gets ``max_length`` minus its own prompt length new tokens (what a batch of one gets in
the reference code's ``generate(max_length=...)``), so results do not depend on how items are
batched. Greedy decoding is plain argmax: ``generate`` would also apply logits processors that a
model's ``generation_config`` may set (repetition penalty, banned n-grams); the row-dropping loop
does not, and the ``generate`` call passes only ``do_sample=False``. Neither of the project's
models sets any. The tokenizer is copied for left padding (:func:`study.inputs.models.left_padded`),
never mutated.

Also here, because scoring (and the NLI batches) use them too: :func:`batches` and
:func:`selectable_kv_cache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..inputs.models import left_padded

MAX_LENGTH = 200
"""docs/science.md §5 / the reference's ``generation.max_length``: generation stops at 200 tokens
including the prompt, and scored sequences are truncated to 200 tokens (its ``TextDatasetQA``
uses the same ``max_length``)."""

__all__ = ["MAX_LENGTH", "batches", "forward_params", "selectable_kv_cache", "generate"]


def batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    """Consecutive chunks of ``size`` indices of ``order``."""
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def forward_params(model: Any) -> set[str]:
    """The parameter names of ``model.forward`` (empty when they cannot be read)."""
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


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


def selectable_kv_cache(model: Any) -> bool:
    """Whether the model takes a KV cache, explicit positions and ``logits_to_keep``, with a cache
    whose rows can be selected: what dropping finished rows (generation) and sharing a question's
    prefix (scoring) need. Otherwise both fall back to whole-sequence paths."""
    return {"past_key_values", "position_ids", "logits_to_keep"} <= forward_params(model) and _plain_kv_cache(model)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation-config EOS."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


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


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device, bar: tqdm,
             *, batch_size: int, by_length: bool = True, drop_finished: bool = True) -> list[list[int]]:
    """Greedy continuations of each prompt, cut at the first EOS and at ``max_length`` tokens
    including the item's own prompt. Returns the new token ids per prompt (EOS excluded).

    Args:
        batch_size: prompts per left-padded batch.
        by_length: batch prompts of similar length together (little padding); False: in item order
            (the reference code's batches).
        drop_finished: decode with :func:`_greedy_dropping_finished` when the model allows it
            (:func:`selectable_kv_cache`); False, or a model without that cache API: Hugging Face
            ``generate`` runs a batch to its largest budget and rows are cut after (greedy decoding
            is causal, so the result is the same).
    """
    if not prompts:  # only score-only sets (holdout) in this call
        return []
    tok = left_padded(tokenizer)
    prompt_ids: list[list[int]] = tok(list(prompts), add_special_tokens=True)["input_ids"]
    eos = _eos_ids(model, tokenizer)
    order = list(range(len(prompts)))
    if by_length:
        order.sort(key=lambda i: len(prompt_ids[i]))
    drop_finished = drop_finished and selectable_kv_cache(model)
    out: list[list[int]] = [[] for _ in prompts]
    for batch in batches(order, batch_size):
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
