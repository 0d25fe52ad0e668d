"""The forward pass a method's losses read: one model call over a batch's parts, the losses summed.

:func:`compute_loss` runs the model once over all the batch parts a method needs (right-padded into one
batch, :func:`fuse_parts`; the reference model likewise), reads each part's slice, hands the registered
losses their :class:`~study.methods.registry.LossInputs`, and returns
``forget_coeff * L_forget + regularization_coeff * L_reg``. RMU's :class:`Steering` (the layer it reads,
the control vector) and the weights a method trains (:func:`freeze_untrained`) are fixed here per run.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import StudyInputError
from .losses import rmu_control_vector, rmu_layer_for
from .numerics import IGNORE_INDEX, sequence_logprob
from .registry import BATCH_PARTS, LossInputs, LossTerms, Method, ref_cache_key


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate and its detached parts for logging."""

    total: Tensor
    """Scalar with grad: ``forget_coeff * forget + regularization_coeff * regularization``."""
    parts: dict[str, Tensor]
    """Detached scalars: ``total``, ``forget``, ``regularization``, and ``<slot>/<term>`` for losses
    made of several terms (LLMU: ``regularization/mismatch``, ``regularization/kl``)."""


@dataclass(frozen=True)
class Steering:
    """Where RMU reads hidden states and what it steers them to, fixed for a run (:func:`steering_for`)."""

    layer: int
    """Decoder layer ℓ (0-based) whose output is read: ``hidden_states[ℓ + 1]`` of a Hugging Face
    model called with ``output_hidden_states=True`` (entry 0 is the embeddings)."""
    control: Tensor
    """``c · u`` ``[d]`` (:func:`rmu_control_vector`)."""


def _config_of(model: Any) -> Any:
    """The Hugging Face config of a model, a peft wrapper or a DeepSpeed engine (``.module``)."""
    config = getattr(model, "config", None)
    return config if config is not None else model.module.config


def steering_for(method: Method, model: Any, seed: int) -> Steering | None:
    """The run's :class:`Steering` for ``method`` on ``model`` (None when no loss reads hidden states):
    layer ``rmu_layer_for(method.rmu_layer, n_layers)``, control vector seeded with ``seed``."""
    if not method.steers_hidden_states:
        return None
    config = _config_of(model)
    layer = rmu_layer_for(method.rmu_layer, config.num_hidden_layers)
    return Steering(layer, rmu_control_vector(config.hidden_size, method.rmu_steering_coeff, seed))


def freeze_untrained(method: Method, model: Any) -> list[str] | None:
    """Freeze the weights ``method`` does not train (:meth:`Method.trained_weights`; RMU's three MLP
    down-projections, or on a LoRA-wrapped model their adapters): every other parameter gets
    ``requires_grad=False``, so the optimizer never sees it (AdamW's weight decay would otherwise move
    it too). Returns the trained parameters' names, or None when the method trains every weight (then
    nothing is touched).

    Raises:
        StudyInputError: no parameter matches (not a Llama-style layout, or LoRA without ``down_proj``).
    """
    if all(spec.trains is None for spec in method.specs):
        return None
    pattern = method.trained_weights(_config_of(model).num_hidden_layers)
    trained = []
    for name, param in model.named_parameters():
        keep = re.search(pattern, name) is not None
        param.requires_grad_(keep)
        if keep:
            trained.append(name)
    if not trained:
        raise StudyInputError(f"method {method} trains only the parameters matching {pattern!r}; the model has none "
                              "(not a Llama-style layout, or LoRA adapters not on down_proj)")
    return trained


def forward_logits(model: Any, part: Mapping[str, Tensor]) -> Tensor:
    """One forward pass on a batch part: ``model(input_ids=, attention_mask=).logits``, ``[B, T, V]``.

    Labels are never passed to the model: losses are computed here, from the logits.
    """
    return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits


@torch.no_grad()
def reference_logprobs(model: Any, part: Mapping[str, Tensor]) -> Tensor:
    """Per-sequence ``logp(y|x) [B]`` of a (reference) model, without grad.

    Used both to fill the cache and by :func:`compute_loss` when no cache is given, so the two paths
    run the same numerics. The caller puts the model in eval mode.
    """
    return sequence_logprob(forward_logits(model, part), part["labels"])


def first_logit_column(labels: Tensor) -> int:
    """The first column whose logits score a label: one before the first labelled column (0 if none).

    The logit at position ``t`` scores ``labels[:, t + 1]``, so the columns before it feed no
    label-based loss: the LM head (``[B, T, d] x [d, V]``), the softmax and their backward can skip
    them (transformers' ``logits_to_keep``), as ``study.training.train.answer_nll`` does when fine-tuning. On
    answer-only labels that is the question and prompt: ~50 of 64 tokens for SmolLM2's chat template.
    """
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return max(0, int(labelled.min()) - 1) if len(labelled) else 0


LINEAR_HEAD_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
"""Hugging Face model types whose logits are exactly ``lm_head(hidden_states[-1])`` (a plain linear head
after the final norm: no logit scaling or soft-capping), checked for Llama by ``tests/test_fused_forward.py``."""


def linear_lm_head(model: Any) -> torch.nn.Linear | None:
    """The LM head of ``model`` when its logits are ``head(last hidden state)``, else None.

    Lets a fused forward run the decoder once over all parts and the head on each part's own scored
    columns (:func:`first_logit_column`), where one ``logits_to_keep`` for the whole fused batch would
    keep the columns of the part whose labels start earliest for every row. None for other model
    types and for wrappers without a Hugging Face config (a DeepSpeed engine): they take the shared
    ``logits_to_keep`` path.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in LINEAR_HEAD_MODEL_TYPES:
        return None
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Linear) and _takes_logits_to_keep(model) else None


def _takes_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward(model: Any, part: Mapping[str, Tensor], hidden_layer: int | None, keep_logits: bool,
             logits_from: int = 0) -> tuple[Tensor, Tensor | None, int]:
    """One forward pass: ``(logits, output of decoder layer hidden_layer or None, first logit column)``.

    Hidden states are asked for only when ``hidden_layer`` is given. Without ``keep_logits`` (a part
    only RMU reads) the LM head runs on the last position alone; with ``logits_from > 0`` on columns
    ``logits_from ..`` only (logits ``[B, T - logits_from, V]``), where the model takes
    ``logits_to_keep``; the third value says which column the logits start at (0 when it does not).
    """
    kwargs: dict[str, Any] = {"output_hidden_states": True} if hidden_layer is not None else {}
    start = 0
    if _takes_logits_to_keep(model):
        if not keep_logits:
            kwargs["logits_to_keep"] = 1
        elif logits_from > 0:
            start = logits_from
            kwargs["logits_to_keep"] = part["input_ids"].shape[1] - logits_from
    out = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], **kwargs)
    return out.logits, (out.hidden_states[hidden_layer + 1] if hidden_layer is not None else None), start


def _as_terms(value: LossTerms) -> dict[str, Tensor]:
    return dict(value) if isinstance(value, Mapping) else {"": value}


def fuse_parts(parts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Batch parts stacked into one batch: each right-padded to the widest, then concatenated on dim 0.

    Right padding keeps every real token at its position (0, 1, ... as in its own part) and adds only
    columns *after* a part's last one, which a causal model's earlier positions never attend to; the
    added columns have attention 0 and label ``IGNORE_INDEX``. So the logits (and hidden states) of a
    part's rows, cut back to its width, are those of the part run alone, up to float rounding of the
    larger matrix products (:func:`split_fused`). ``[B_i, T_i] -> [sum B_i, max T_i]``.
    """
    width = max(p["input_ids"].shape[1] for p in parts)

    def stacked(key: str, value: int) -> Tensor:
        return torch.cat([F.pad(p[key], (0, width - p[key].shape[1]), value=value) for p in parts])

    return {"input_ids": stacked("input_ids", 0), "attention_mask": stacked("attention_mask", 0),
            "labels": stacked("labels", IGNORE_INDEX)}


def split_fused(value: Tensor, parts: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
    """The rows and columns of each part in an output ``[sum B_i, max T_i, ...]`` of a fused batch.

    ``torch.split`` on the batch (its backward is one concatenation, not a zero-filled copy per part),
    then each part's first ``T_i`` columns. A part at the full width keeps every position: a KL over
    all ``B * max_length`` positions of the retain part (``UnlearningDataset.full_width_parts``) averages
    over exactly the positions it would alone. A part whose output kept fewer columns than its width
    (``logits_to_keep=1``: a part only RMU reads) gets what there is.
    """
    chunks = value.split([p["input_ids"].shape[0] for p in parts])
    return [c[:, : p["input_ids"].shape[1]] for c, p in zip(chunks, parts)]


def dropout_active(model: Any) -> bool:
    """Whether a forward of ``model`` in its current mode draws dropout masks.

    In training mode: a ``Dropout`` module with ``p > 0``, or a config dropout rate above 0 (Llama's
    attention dropout is a functional call on ``config.attention_dropout``, not a module). Masks drawn
    for one fused batch differ from those drawn for separate forwards, so :func:`compute_loss` keeps
    separate forwards then (same seed, same losses as before). Llama-family configs default to 0.
    """
    if not getattr(model, "training", False):
        return False
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    if not hasattr(config, "model_type"):  # a wrapper (DeepSpeed engine: ``.module``) or no config
        config = getattr(getattr(model, "module", None), "config", None)
    rates = vars(config).items() if hasattr(config, "__dict__") else ()
    return any((k.endswith("dropout") or k.endswith("pdrop")) and isinstance(v, (int, float)) and v > 0
               for k, v in rates)


def _forward_parts(
    model: Any, batch: Mapping[str, Any], logit_parts: Sequence[str], hidden_parts: Sequence[str],
    hidden_layer: int | None, fused: bool, positional: Sequence[str] = (),
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, int]]:
    """Logits of ``logit_parts`` and hidden states of ``hidden_parts``: ``(logits, hidden, starts)``.

    ``logits[p]`` covers the columns from ``starts[p]`` on: the LM head skips the leading columns
    that score no label (:func:`first_logit_column`), except on the ``positional`` parts, whose loss
    reads every position (KL). Hidden states cover every column.

    ``fused``: one forward over every part (:func:`fuse_parts`, :func:`split_fused`), its logits from
    the smallest first column of its logit parts; else one forward per part, each asking only for
    what its part needs.
    """
    names = [p for p in BATCH_PARTS if p in set(logit_parts) | set(hidden_parts)]
    logits: dict[str, Tensor] = {}
    hidden: dict[str, Tensor] = {}
    starts: dict[str, int] = {}
    if not names:
        return logits, hidden, starts

    def first(p: str) -> int:
        return 0 if p in positional else first_logit_column(batch[p]["labels"])

    if fused and len(names) > 1:
        parts = [batch[p] for p in names]
        layer = hidden_layer if hidden_parts else None
        head = linear_lm_head(model) if logit_parts else None
        if head is not None:  # the body once over the fused batch, the LM head per part on its own columns
            out = model(**{k: v for k, v in fuse_parts(parts).items() if k != "labels"}, output_hidden_states=True,
                        logits_to_keep=1)
            finals = split_fused(out.hidden_states[-1], parts)  # [B_i, T_i, d], after the final norm
            h_parts = split_fused(out.hidden_states[layer + 1], parts) if layer is not None else [None] * len(names)
            for p, final, hp in zip(names, finals, h_parts):
                if p in logit_parts:
                    starts[p] = first(p)
                    logits[p] = head(final[:, starts[p]:])
                if p in hidden_parts:
                    hidden[p] = hp
            return logits, hidden, starts
        logits_from = min((first(p) for p in logit_parts), default=0)
        z, h, start = _forward(model, fuse_parts(parts), layer, keep_logits=bool(logit_parts), logits_from=logits_from)
        widths = [{"input_ids": q["input_ids"][:, start:]} for q in parts]  # each part's columns from `start`
        z_parts = split_fused(z, widths)
        h_parts = split_fused(h, parts) if h is not None else [None] * len(names)
        for p, zp, hp in zip(names, z_parts, h_parts):
            if p in logit_parts:
                logits[p], starts[p] = zp, start
            if p in hidden_parts:
                hidden[p] = hp
        return logits, hidden, starts
    for p in names:
        keep = p in logit_parts
        z, h, start = _forward(model, batch[p], hidden_layer if p in hidden_parts else None, keep_logits=keep,
                               logits_from=first(p) if keep else 0)
        if keep:
            logits[p], starts[p] = z, start
        if p in hidden_parts:
            hidden[p] = h
    return logits, hidden, starts


# Longer than ~60 lines on purpose: one place that routes a batch's parts to the registered losses, fused
# or per part; the forwards (_forward_parts) and each loss are functions of their own.
def compute_loss(
    method: Method, model: Any, batch: Mapping[str, Any], ref_model: Any | None = None,
    steering: Steering | None = None, fused: bool = True,
) -> LossOutput:
    """The method's loss on one batch: one forward of ``model`` (and at most one of ``ref_model``).

    Args:
        method: what to compute.
        model: the model being unlearned; called as ``model(input_ids=, attention_mask=)``.
        batch: batch part name -> ``{"input_ids", "attention_mask", "labels"}`` (each ``[B, T]``) for
            every part in ``method.batch_parts``; optionally the cached reference log-probs ``[B]``
            under ``ref_cache_key(part)`` for each part in ``method.ref_logprob_parts``.
        ref_model: the frozen reference model (eval mode). Needed when ``method.needs_live_ref_model``,
            or when reference log-probs are needed and not in the batch (then computed here, under
            ``no_grad``, from the same numerics as :func:`reference_logprobs`).
        steering: the layer and control vector (:func:`steering_for`), when a loss reads hidden states (RMU).
        fused: run the method's batch parts as one batch through ``model`` and the parts the reference
            model reads as one batch through it (:func:`fuse_parts`); the losses read each part's slice
            of the outputs. Equal to separate forwards up to float rounding (within 1e-5 in
            ``tests/test_fused_forward.py``). ``False``, or a model whose dropout is active in training
            mode (:func:`dropout_active`), runs one forward per part.

    Returns:
        :class:`LossOutput`.
    """
    if missing := [p for p in method.batch_parts if p not in batch]:
        raise KeyError(
            f"method {method} needs batch parts {list(method.batch_parts)}; missing {missing} "
            f"(batch has {sorted(batch)})"
        )
    if method.steers_hidden_states and steering is None:
        raise ValueError(f"method {method} reads hidden states: pass steering=steering_for(method, model, seed)")
    layer = steering.layer if steering is not None else None
    hidden_parts, logit_parts = method.hidden_state_parts, method.logit_parts
    positional = method.ref_logit_parts  # KL compares every position of these with the reference's
    logits, hidden, starts = _forward_parts(model, batch, logit_parts, hidden_parts, layer,
                                            fused=fused and not dropout_active(model), positional=positional)
    # Each part's labels from the column its logits start at: the same scored positions, the same sums.
    labels = {p: batch[p]["labels"][:, starts.get(p, 0):] for p in method.batch_parts}

    ref_logprobs: dict[str, Tensor] = {}
    live_logprob_parts = []
    for p in method.ref_logprob_parts:
        if (key := ref_cache_key(p)) in batch:
            ref_logprobs[p] = batch[key].to(batch[p]["labels"].device)
        elif ref_model is not None:
            live_logprob_parts.append(p)
        else:
            raise ValueError(f"method {method} needs reference log-probs on {p!r}: pass {key!r} or a ref_model")
    if method.ref_logit_parts and ref_model is None:
        raise ValueError(f"method {method} needs reference logits on {list(method.ref_logit_parts)}; pass a ref_model")
    if method.ref_hidden_state_parts and ref_model is None:
        raise ValueError(f"method {method} needs reference hidden states on {list(method.ref_hidden_state_parts)}; "
                         "pass a ref_model")
    ref_logits: dict[str, Tensor] = {}
    ref_hidden: dict[str, Tensor] = {}
    if ref_model is not None:
        with torch.no_grad():
            ref_z, ref_hidden, ref_starts = _forward_parts(
                ref_model, batch, [*method.ref_logit_parts, *live_logprob_parts], method.ref_hidden_state_parts,
                layer, fused=fused and not dropout_active(ref_model), positional=positional,
            )
        ref_logits = {p: ref_z[p] for p in method.ref_logit_parts}
        ref_logprobs.update({p: sequence_logprob(ref_z[p], batch[p]["labels"][:, ref_starts[p]:])
                             for p in live_logprob_parts})

    inputs = LossInputs(
        logits=logits, labels=labels, ref_logprobs=ref_logprobs, ref_logits=ref_logits, hidden=hidden,
        ref_hidden=ref_hidden, attention_mask={p: batch[p]["attention_mask"] for p in hidden_parts},
        hidden_labels={p: batch[p]["labels"] for p in hidden_parts},
        control=steering.control if steering is not None else None,
    )
    forget_spec, reg_spec = method.specs
    forget_terms = _as_terms(forget_spec.fn(inputs, method))
    reg_terms = _as_terms(reg_spec.fn(inputs, method))
    forget = sum(forget_terms.values())
    regularization = sum(reg_terms.values())
    total = method.forget_coeff * forget + method.regularization_coeff * regularization

    parts = {"total": total.detach(), "forget": forget.detach(), "regularization": regularization.detach()}
    for slot, terms in (("forget", forget_terms), ("regularization", reg_terms)):
        if len(terms) > 1:
            parts.update({f"{slot}/{k}": v.detach() for k, v in terms.items()})
    return LossOutput(total=total, parts=parts)

