"""Unlearning losses as pure functions of tensors, and the method registry (docs/science.md §3, §4).

Three layers, each small:

1. **Shared numerics** (written once): the causal-LM label shift, per-sequence summed NLL, the batch
   token-mean NLL that Hugging Face's ``outputs.loss`` returns, and the chunked softmax entropy.
2. **Pure losses**: GA, NPO, DPO, IDK, ME, GD, KL, AP (the paper's), SimNPO and RMU (beyond the
   paper, ``docs/science-beyond-paper.md`` §1, §2) as functions of logits / labels or of per-sequence
   log-probs. Each docstring gives the formula the reference code (``sail-sg/closer-look-LLM-unlearning``)
   computes; where the paper's text differs, the paper's version is a named option.
3. **Registry and adapter**: a :class:`LossSpec` per loss in ``FORGET_LOSSES`` / ``REGULARIZERS``
   declares what it needs (batch parts, reference quantities, hyper-parameters); a :class:`Method` is a
   forget-loss name, a regularizer name and coefficients; :func:`compute_loss` runs the model once over
   all the batch parts it needs (right-padded into one batch, :func:`fuse_parts`; the reference model
   likewise), reads each part's slice, and returns ``forget_coeff * L_forget + regularization_coeff * L_reg``.

Needs vocabulary (what a loss can ask for):

=========================  ===================================================================
``forget``                 forget question + forget answer
``forget_idk``             forget question + a refusal ("I don't know") template
``retain``                 retain question + retain answer
``retain_idk``             retain question + a refusal template
``forget_retain_answer``   forget question + a random retain answer (LLMU's mismatch term)
``ref_logprobs``           per-sequence reference log-probs ``[B]`` on some parts; cacheable, passed in
                           the batch as ``ref_logprobs_<part>`` (see :func:`ref_cache_key`)
``ref_logits``             reference logits ``[B, T, V]`` on some parts; needs the frozen reference
                           model in memory during training
``hidden_states``          the current model's hidden state ``[B, T, d]`` after one decoder layer
                           (:class:`Steering`) on some parts (RMU)
``ref_hidden_states``      the same from the frozen reference model (live, like ``ref_logits``)
=========================  ===================================================================

Every batch part is a mapping with ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]``;
``labels == -100`` marks positions that are not scored. Which positions carry labels (answer only, or
the whole padded sequence for ME+GD's ``mask=false``) is decided by the data pipeline, not here.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import StudyInputError
from .hyperparams import HYPERPARAMS, SHARED_HYPERPARAMS, Param  # noqa: F401  (re-exported)
from .paper import PAPER_METHODS  # noqa: F401  (re-exported: the default method set)

IGNORE_INDEX = -100
"""Label value of positions that are not scored (Hugging Face convention)."""

MEVariant = Literal["reference", "paper"]
ME_VARIANTS: tuple[str, ...] = ("reference", "paper")

BATCH_PARTS: tuple[str, ...] = ("forget", "forget_idk", "retain", "retain_idk", "forget_retain_answer")
"""Batch parts the data pipeline produces, in the order forward passes are run."""

MODEL_NEEDS: tuple[str, ...] = ("ref_logprobs", "ref_logits")
"""Reference-model quantities a loss can need."""

HIDDEN_NEEDS: tuple[str, ...] = ("hidden_states", "ref_hidden_states")
"""Hidden states of one decoder layer, of the current and of the reference model (RMU)."""

NEEDS: frozenset[str] = frozenset(BATCH_PARTS + MODEL_NEEDS + HIDDEN_NEEDS)

ENTROPY_CHUNK_ROWS = 1024
"""Positions per chunk in :func:`softmax_entropy` (bounds its full-vocabulary temporaries)."""


# --------------------------------------------------------------------------------------------------
# Shared numerics
# --------------------------------------------------------------------------------------------------


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for half / bfloat16 / float32 logits, float64 for float64 (so gradcheck works)."""
    return torch.promote_types(t.dtype, torch.float32)


def shift_labels(labels: Tensor) -> Tensor:
    """Causal-LM shift: the label that position ``t`` is scored against is ``labels[:, t + 1]``.

    Equivalent to pairing ``logits[:, :-1]`` with ``labels[:, 1:]`` (the reference code's
    ``get_batch_loss``), but shifts the small label tensor instead of slicing the logits: the last
    position gets ``IGNORE_INDEX``, so the logits ``[B, T, V]`` stay contiguous and are never copied.
    Hugging Face's ``ForCausalLMLoss`` does the same.

    Args:
        labels: ``[B, T]`` token ids, ``IGNORE_INDEX`` where not scored.

    Returns:
        ``[B, T]`` targets aligned with the logits.
    """
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def token_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-position NLL ``-log p(y_{t+1} | y_<=t)``, 0 where the (shifted) label is ignored.

    Computed in float32 (logits upcast: one float32 copy for bf16 logits, none for float32) with the
    fused ``F.cross_entropy``, which never materialises a separate log-softmax.

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]``, unshifted.

    Returns:
        ``[B, T]``.
    """
    b, t, v = logits.shape
    z = logits.to(_compute_dtype(logits))
    nll = F.cross_entropy(
        z.reshape(b * t, v), shift_labels(labels).reshape(b * t), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return nll.view(b, t)


def sequence_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``NLL_sum(y|x)``: per-sequence sum of token NLL over scored positions. ``[B, T, V] -> [B]``."""
    return token_nll(logits, labels).sum(dim=-1)


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """``logp(y|x) = -NLL_sum(y|x)``. ``[B, T, V] -> [B]``."""
    return -sequence_nll(logits, labels)


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """``NLL_mean``: token mean of the NLL over every scored position of the batch (a scalar).

    Equals Hugging Face's ``outputs.loss`` for ``labels=labels``: the mean is over tokens of the whole
    batch, not a mean of per-sequence means. NaN if no position is scored (as in Hugging Face).
    """
    b, t, v = logits.shape
    z = logits.to(_compute_dtype(logits))
    return F.cross_entropy(z.reshape(b * t, v), shift_labels(labels).reshape(b * t), ignore_index=IGNORE_INDEX)


def masked_mean(values: Tensor, labels: Tensor) -> Tensor:
    """Mean of per-position ``values [B, T]`` over positions whose shifted label is scored.

    ``sum(values * mask) / sum(mask)`` with ``mask = shift_labels(labels) != -100``, as the reference
    ``get_me_loss`` does.
    """
    mask = (shift_labels(labels) != IGNORE_INDEX).to(values.dtype)
    return (values * mask).sum() / mask.sum()


class _SoftmaxEntropy(torch.autograd.Function):
    """``H(softmax(z))`` per position, forward and backward in row chunks.

    Neither pass keeps a full ``[B, T, V]`` temporary: forward saves only ``z`` (the logits, already
    alive) and ``H [B, T]``; backward recomputes ``p`` chunk by chunk and uses
    ``dH/dz_k = -p_k (log p_k + H)``, which stays finite where ``p_k`` underflows to 0 (``log p_k`` comes
    from a log-softmax, never from ``log(p)``). The only full-size tensor created is the gradient itself.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, chunk_rows: int) -> Tensor:  # z: [..., V]
        dtype = _compute_dtype(z)
        rows = z.reshape(-1, z.shape[-1])  # a view for contiguous logits
        entropy = torch.empty(rows.shape[0], dtype=dtype, device=z.device)
        for start in range(0, rows.shape[0], chunk_rows):
            logp = F.log_softmax(rows[start : start + chunk_rows].to(dtype), dim=-1)
            entropy[start : start + chunk_rows] = -(logp.exp() * logp).sum(dim=-1)
        ctx.save_for_backward(z, entropy)
        ctx.chunk_rows = chunk_rows
        return entropy.view(z.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad_entropy: Tensor) -> tuple[Tensor, None]:
        z, entropy = ctx.saved_tensors
        dtype = entropy.dtype
        rows = z.reshape(-1, z.shape[-1])
        grad_rows = grad_entropy.reshape(-1)
        grad = torch.empty_like(rows)
        for start in range(0, rows.shape[0], ctx.chunk_rows):
            end = start + ctx.chunk_rows
            logp = F.log_softmax(rows[start:end].to(dtype), dim=-1)
            g = -grad_rows[start:end, None] * logp.exp() * (logp + entropy[start:end, None])
            grad[start:end] = g.to(grad.dtype)
        return grad.view(z.shape), None


class _UniformKL(torch.autograd.Function):
    """``KL(U_V || softmax(z)) = logsumexp(z) - mean_v(z) - log V`` per position, in row chunks.

    Like :class:`_SoftmaxEntropy`, neither pass keeps a full ``[B, T, V]`` temporary: forward saves ``z``
    (already alive) and ``logsumexp [B, T]``; backward writes ``dKL/dz_k = p_k - 1/V`` chunk by chunk
    straight into the gradient, the only full-size tensor it creates. (Autograd through
    ``torch.logsumexp(z) - z.mean()`` kept three more logits-sized tensors alive.)
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, chunk_rows: int) -> Tensor:  # z: [..., V]
        dtype = _compute_dtype(z)
        rows = z.reshape(-1, z.shape[-1])
        lse = torch.empty(rows.shape[0], dtype=dtype, device=z.device)
        kl = torch.empty_like(lse)
        log_v = math.log(z.shape[-1])
        for start in range(0, rows.shape[0], chunk_rows):
            chunk = rows[start : start + chunk_rows].to(dtype)
            chunk_lse = torch.logsumexp(chunk, dim=-1)
            lse[start : start + chunk_rows] = chunk_lse
            kl[start : start + chunk_rows] = chunk_lse - chunk.mean(dim=-1) - log_v
        ctx.save_for_backward(z, lse)
        ctx.chunk_rows = chunk_rows
        return kl.view(z.shape[:-1])

    @staticmethod
    def backward(ctx: Any, grad_kl: Tensor) -> tuple[Tensor, None]:
        z, lse = ctx.saved_tensors
        rows = z.reshape(-1, z.shape[-1])
        grad_rows = grad_kl.reshape(-1).to(lse.dtype)
        grad = torch.empty_like(rows)
        inv_v = 1.0 / z.shape[-1]
        for start in range(0, rows.shape[0], ctx.chunk_rows):
            end = start + ctx.chunk_rows
            p = (rows[start:end].to(lse.dtype) - lse[start:end, None]).exp_()
            grad[start:end] = p.sub_(inv_v).mul_(grad_rows[start:end, None]).to(grad.dtype)
        return grad.view(z.shape), None


def softmax_entropy(logits: Tensor, chunk_rows: int = ENTROPY_CHUNK_ROWS) -> Tensor:
    """``H(p) = -sum_v p_v log p_v`` with ``p = softmax(logits)``, in float32, chunked. ``[..., V] -> [...]``."""
    return _SoftmaxEntropy.apply(logits, chunk_rows)


# --------------------------------------------------------------------------------------------------
# Pure losses
# --------------------------------------------------------------------------------------------------


def ga_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """GA (gradient ascent): ``L = -NLL_mean(forget q, forget a)``. Logits ``[B, T, V]`` on ``forget``."""
    return -mean_nll(logits, labels)


def idk_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """IDK: ``L = NLL_mean(forget q, refusal template)``. Logits ``[B, T, V]`` on ``forget_idk``."""
    return mean_nll(logits, labels)


def gd_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """GD (gradient descent on retain): ``L = NLL_mean(retain q, retain a)``. Logits on ``retain``."""
    return mean_nll(logits, labels)


def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """NPO: ``L = -(2/β) * mean_i log σ(β * (NLL_sum_θ,i - NLL_sum_ref,i))`` on the forget answers.

    With ``NLL = -logp``, ``NLL_θ - NLL_ref = ref_logp - logp``.

    Args:
        logp: ``[B]`` per-sequence log-probs of the current model.
        ref_logp: ``[B]`` the same under the reference model (no grad; may come from a cache).
        beta: inverse temperature β > 0.
    """
    return -(2.0 / beta) * F.logsigmoid(beta * (ref_logp - logp)).mean()


def simnpo_loss(logp: Tensor, n_tokens: Tensor, beta: float, gamma: float = 0.0) -> Tensor:
    """SimNPO: ``L = -(2/β) * mean_i log σ(-(β/|y_i|) logp(y_i|x_i) - γ)`` on the forget answers.

    NPO without a reference model, on the length-normalised log-likelihood, with a reward margin γ
    (Fan, Liu, Lin, Jia, Zhang, Chang, Liu, 2024, "Simplicity Prevails: Rethinking Negative Preference
    Optimization for LLM Unlearning", arXiv 2410.07163, Eq. 4; docs/science-beyond-paper.md §1). Minimising
    it lowers the average per-token log-likelihood of each forget answer; unlike NPO's, its gradient
    weight does not depend on a reference model, and it fades once ``-(β/|y|) logp - γ`` is a few
    units above 0. OpenUnlearning's ``src/trainer/unlearn/simnpo.py`` writes the margin inside β,
    ``-(2/β) log σ(β (NLL/|y| - δ))``: the same loss with ``γ = β δ`` (:func:`simnpo_margin`).

    Args:
        logp: ``[B]`` per-sequence log-probs (sums over the scored tokens) of the current model.
        n_tokens: ``[B]`` ``|y_i|``; clamped to >= 1 so a sequence with no token contributes ``log σ(-γ)``.
        beta: inverse temperature β > 0.
        gamma: reward margin γ (the paper's, outside β).
    """
    length = n_tokens.to(logp.dtype).clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-(beta / length) * logp - gamma).mean()


def simnpo_margin(beta: float, gamma: float, delta: float) -> float:
    """SimNPO's margin outside β, the paper's γ, from either spelling: ``γ + β δ``.

    ``gamma`` is the SimNPO paper's margin; ``delta`` is OpenUnlearning's (``SimNPO(delta=...)``), applied
    inside β (``β (NLL/|y| - δ)``), so ``δ`` contributes ``β δ``. A configuration sets one of them."""
    return gamma + beta * delta


def dpo_loss(
    logp_preferred: Tensor,
    logp_rejected: Tensor,
    ref_logp_preferred: Tensor,
    ref_logp_rejected: Tensor,
    beta: float,
) -> Tensor:
    """DPO: ``L = -(2/β) * mean log σ(β * [(logp_θ(w) - logp_θ(l)) - (logp_ref(w) - logp_ref(l))])``.

    Preferred ``w`` = the refusal template (``forget_idk``), rejected ``l`` = the forget answer
    (``forget``). The reference code scales by ``2/β`` like NPO (standard DPO has no ``2/β``).

    Args: four ``[B]`` per-sequence log-prob tensors and β > 0.
    """
    margin = (logp_preferred - logp_rejected) - (ref_logp_preferred - ref_logp_rejected)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def ap_loss(logp_answer: Tensor, logp_idk: Tensor, beta: float) -> Tensor:
    """AP (answer preservation): ``L = -(1/β) * mean log σ(β * (NLL_sum(q, idk) - NLL_sum(q, a)))``.

    On the retain set, no reference model; note ``1/β``, not NPO's ``2/β``. With ``NLL = -logp`` the
    argument is ``β * (logp_answer - logp_idk)``: keep answering retain questions rather than refuse.

    Args:
        logp_answer: ``[B]`` log-probs of the retain answers (``retain``).
        logp_idk: ``[B]`` log-probs of a refusal to the same questions (``retain_idk``).
        beta: β > 0.
    """
    return -(1.0 / beta) * F.logsigmoid(beta * (logp_answer - logp_idk)).mean()


def me_loss(logits: Tensor, labels: Tensor, variant: MEVariant = "reference") -> Tensor:
    """ME (maximum entropy): mean over scored positions of a divergence to the uniform ``U_V``.

    - ``"reference"`` (default, what the reference code computes):
      ``KL(U_V || p_θ(·|t)) = logsumexp(z) - mean_v(z) - log V``, in closed form with a chunked
      backward (:class:`_UniformKL`): no softmax or uniform ``[B, T, V]`` tensor is built or kept; the reference adds ``1e-12`` to ``p`` before the log, which
      only matters where some ``p_v < ~1e-12`` (it caps ``-log p_v`` at ``~27.6``); the closed form is
      the exact KL.
    - ``"paper"`` (the paper's text): ``KL(p_θ(·|t) || U_V) = log V - H(p_θ(·|t))``, with the entropy
      from :func:`softmax_entropy` (chunked; no full-vocabulary temporary kept for backward).

    Both vanish exactly at the uniform distribution. Positions are the shifted ones
    (``logits[:, t]`` scored where ``labels[:, t+1] != -100``) and the mean is
    ``sum(kl * mask) / sum(mask)``, as in the reference ``get_me_loss``.

    Args:
        logits: ``[B, T, V]`` on ``forget``.
        labels: ``[B, T]``; with ``mask=false`` the data pipeline labels every position.
        variant: ``"reference"`` or ``"paper"``.
    """
    log_v = math.log(logits.shape[-1])
    if variant == "reference":
        kl = _UniformKL.apply(logits, ENTROPY_CHUNK_ROWS)  # [B, T], float32 (float64 for float64 logits)
    elif variant == "paper":
        kl = log_v - softmax_entropy(logits)  # [B, T]
    else:
        raise StudyInputError(f"unknown ME variant {variant!r}; valid: {', '.join(ME_VARIANTS)}")
    return masked_mean(kl, labels)


def kl_loss(logits: Tensor, ref_logits: Tensor) -> Tensor:
    """KL regularizer: ``KL(p_ref || p_θ)`` per position, averaged over **all** ``B * T`` positions.

    Matches the reference code exactly: ``F.kl_div(log_softmax(z).view(-1, V),
    log_softmax(z_ref).view(-1, V), reduction='batchmean', log_target=True)``, i.e. the sum over every
    position and vocabulary entry divided by ``B * T``. Positions are not shifted and labels are not
    used: question and padding positions count too. Like the reference, it holds two float32
    log-softmaxes ``[B, T, V]``; kept this way (rather than a leaner ``lse``-based form) because it is
    exactly 0 at ``θ = ref``.

    Args:
        logits: ``[B, T, V]`` of the current model on ``retain``.
        ref_logits: ``[B, T, V]`` of the reference model on the same inputs (no grad).
    """
    v = logits.shape[-1]
    logp = F.log_softmax(logits.to(_compute_dtype(logits)), dim=-1).view(-1, v)
    ref_logp = F.log_softmax(ref_logits.to(_compute_dtype(ref_logits)), dim=-1).view(-1, v)
    return F.kl_div(logp, ref_logp, reduction="batchmean", log_target=True)


RMUAveraging = Literal["answer_per_sequence", "attended_tokens"]
RMU_AVERAGING: tuple[str, ...] = ("answer_per_sequence", "attended_tokens")
"""How RMU averages its per-token errors (docs/science-beyond-paper.md §2): ``answer_per_sequence``
(default) over each sequence's labelled tokens, then over the batch (OpenUnlearning's
``RMU.compute_activation_loss``); ``attended_tokens`` over every attended token of the batch pooled (the
WMDP reference's ``F.mse_loss`` over whole documents, without its padding positions)."""


def masked_hidden_mse(hidden: Tensor, target: Tensor, mask: Tensor, per_sequence: bool = False) -> Tensor:
    """Mean over the positions ``mask`` keeps of ``mean_d (h_btd - target_btd)^2``, in float32.

    ``per_sequence=False``: ``sum_{b,t} m_bt e_bt / sum_{b,t} m_bt``, one pool of tokens (``F.mse_loss``
    restricted to them). ``per_sequence=True``: ``mean_b (sum_t m_bt e_bt / sum_t m_bt)``, each
    sequence's mean first (OpenUnlearning's ``compute_activation_loss``; a row with no kept position
    gives NaN there and here).

    Args:
        hidden: ``[B, T, d]``.
        target: ``[B, T, d]`` or anything broadcastable to it (a ``[d]`` control vector).
        mask: ``[B, T]``, nonzero on the positions that count.
        per_sequence: average per sequence, then over the batch.
    """
    dtype = _compute_dtype(hidden)
    per_position = (hidden.to(dtype) - target.to(device=hidden.device, dtype=dtype)).pow(2).mean(dim=-1)  # [B, T]
    mask = (mask != 0).to(device=hidden.device, dtype=dtype)
    if per_sequence:
        return ((per_position * mask).sum(dim=-1) / mask.sum(dim=-1)).mean()
    return (per_position * mask).sum() / mask.sum()


def rmu_forget_loss(hidden: Tensor, control: Tensor, mask: Tensor, per_sequence: bool = True) -> Tensor:
    """RMU's forget term: ``mean over forget tokens of mean_d (h_θ^(ℓ) - c·u)^2``.

    Li et al. (2024), "The WMDP Benchmark", arXiv 2403.03218, §5 / ``rmu/unlearn.py``
    (``F.mse_loss(updated_forget_activations, control_vec)``); averaged as OpenUnlearning's
    ``src/trainer/unlearn/rmu.py`` by default (:data:`RMU_AVERAGING`); docs/science-beyond-paper.md §2.

    Args:
        hidden: ``[B, T, d]`` output of decoder layer ℓ on the forget inputs (with grad).
        control: ``[d]``, ``c · u`` (:func:`rmu_control_vector`).
        mask: ``[B, T]``, the positions that count (:meth:`LossInputs.rmu_mask`).
        per_sequence: mean per sequence, then over the batch (:func:`masked_hidden_mse`).
    """
    return masked_hidden_mse(hidden, control, mask, per_sequence)


def rmu_retain_loss(hidden: Tensor, ref_hidden: Tensor, mask: Tensor, per_sequence: bool = True) -> Tensor:
    """RMU's retain term (before the weight α): ``mean over retain tokens of mean_d (h_θ^(ℓ) - h_ref^(ℓ))^2``.

    Args:
        hidden: ``[B, T, d]`` output of decoder layer ℓ on the retain inputs (with grad).
        ref_hidden: ``[B, T, d]`` the frozen model's, same inputs (no grad).
        mask: ``[B, T]``, the positions that count (:meth:`LossInputs.rmu_mask`).
        per_sequence: mean per sequence, then over the batch.
    """
    return masked_hidden_mse(hidden, ref_hidden, mask, per_sequence)


def rmu_control_vector(hidden_size: int, steering_coeff: float, seed: int) -> Tensor:
    """``c · u`` with ``u = r / ||r||``, ``r ~ U[0, 1)^d`` from a local generator seeded with ``seed``.

    As the WMDP reference (``torch.rand(1, 1, d)`` normalised, times ``steering_coeff``): fixed for a
    run, so every step steers towards the same direction. float32, on the CPU. ``[d]``.
    """
    r = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return steering_coeff * r / r.norm()


def rmu_layer_for(requested: int, n_layers: int) -> int:
    """The decoder layer RMU steers on a model with ``n_layers`` layers: ``min(requested, n_layers - 2)``.

    The published layer (7 of Zephyr-7B's 32) does not exist on a 2-layer model. The last layer is
    never used: Hugging Face returns its output after the final norm (``hidden_states[-1]``), which is
    not the residual stream the method steers; so at least one layer follows the steered one.
    """
    if n_layers < 2:
        raise StudyInputError(f"RMU steers a hidden layer before the last; the model has {n_layers} layer(s)")
    return min(requested, n_layers - 2)


def rmu_trained_layers(layer: int) -> tuple[int, ...]:
    """Layers whose MLP down-projection RMU trains: ``ℓ-2, ℓ-1, ℓ`` (those that exist).

    The reference's ``layer_ids = [5, 6, 7]``, ``param_ids = [6]`` for layer 7: index 6 of a Mistral /
    Llama decoder layer's parameters is ``mlp.down_proj.weight`` (OpenUnlearning's RMU config uses
    the same regex ``model.layers.(5|6|7).mlp.down_proj.weight``).
    """
    return tuple(range(max(0, layer - 2), layer + 1))


def rmu_trainable(name: str, layer: int) -> bool:
    """Whether parameter ``name`` (``model.named_parameters()``) is one RMU trains at ``layer``: the
    down-projection weight itself, or, on a LoRA-wrapped model (peft), its adapters
    (``...down_proj.lora_A.<adapter>.weight``, ``lora_B``); the frozen ``base_layer.weight`` never."""
    layers = "|".join(str(i) for i in rmu_trained_layers(layer))
    pattern = rf"(^|\.)layers\.({layers})\.mlp\.down_proj\.(weight|lora_[AB]\.[^.]+\.weight)$"
    return re.search(pattern, name) is not None


# --------------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------------


# Param, HYPERPARAMS and SHARED_HYPERPARAMS are declared once, torch-free, in study/hyperparams.py
# (the config, the search, the sweep's --set handling and the analysis derive from them).


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossInputs:
    """What :func:`compute_loss` hands a loss: each batch part's outputs, reference quantities.

    Only the parts and reference quantities some loss of the method declared are present. A part's
    logits may start after column 0 (the LM head skips columns that score no label,
    :func:`first_logit_column`); its labels then start at the same column, so label-based losses see
    the same scored positions. Parts whose every position is compared (KL) keep all columns.
    """

    logits: Mapping[str, Tensor]
    """Batch part -> current-model logits ``[B, T', V]`` (with grad), ``T' <= T``."""
    labels: Mapping[str, Tensor]
    """Batch part -> labels ``[B, T']``, aligned with the logits."""
    ref_logprobs: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> reference per-sequence log-probs ``[B]`` (no grad; cached or computed)."""
    ref_logits: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> reference logits ``[B, T, V]`` (no grad)."""
    hidden: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> current-model output of the steered layer ``[B, T, d]`` (with grad; RMU)."""
    ref_hidden: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> the reference model's output of the same layer ``[B, T, d]`` (no grad)."""
    attention_mask: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> attention mask ``[B, T]`` (parts with hidden states only)."""
    hidden_labels: Mapping[str, Tensor] = field(default_factory=dict)
    """Batch part -> labels ``[B, T]`` aligned with the hidden states (parts with hidden states only)."""
    control: Tensor | None = None
    """RMU's ``c · u`` ``[d]`` (:class:`Steering`), when a loss steers hidden states."""

    def logprob(self, part: str) -> Tensor:
        """``logp(y|x) [B]`` of the current model on ``part``."""
        return sequence_logprob(self.logits[part], self.labels[part])

    def n_labels(self, part: str) -> Tensor:
        """``[B]``: labelled positions of ``part``, unshifted (OpenUnlearning's ``(labels != -100).sum(-1)``).
        Equals the number of scored tokens (what ``logprob`` sums) unless column 0 carries a label, which
        no logit scores."""
        return (self.labels[part] != IGNORE_INDEX).sum(dim=-1)

    def rmu_mask(self, part: str, averaging: str) -> Tensor:
        """``[B, T]``: the positions RMU averages over on ``part`` (:data:`RMU_AVERAGING`): its labelled
        positions (``labels != -100``, unshifted, as OpenUnlearning) or its attended ones."""
        if averaging == "answer_per_sequence":
            return self.hidden_labels[part] != IGNORE_INDEX
        return self.attention_mask[part]

    def zero(self) -> Tensor:
        """A scalar 0 on the logits' device (the value of the ``NONE`` regularizer)."""
        values = [*self.logits.values(), *self.hidden.values()]
        return torch.zeros((), device=values[0].device if values else None)


LossTerms = Tensor | Mapping[str, Tensor]
"""A loss value: one scalar, or named scalar terms whose sum is the loss (reported separately)."""


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and what it needs. Adding a loss = one function + one entry."""

    name: str
    """Registry key, as written in method names (``NPO``)."""
    kind: Literal["forget", "regularizer"]
    """Which slot of a method it fills."""
    fn: Callable[[LossInputs, Method], LossTerms]
    """Binds :class:`LossInputs` and the method's hyper-parameters to a pure loss above."""
    needs: frozenset[str]
    """Batch parts and reference quantities used, drawn from :data:`NEEDS`."""
    ref_logprob_parts: tuple[str, ...] = ()
    """Parts on which reference per-sequence log-probs are needed (iff ``"ref_logprobs"`` in needs)."""
    ref_logit_parts: tuple[str, ...] = ()
    """Parts on which reference logits are needed (iff ``"ref_logits"`` in needs)."""
    hidden_state_parts: tuple[str, ...] = ()
    """Parts on which the current model's hidden states are needed (iff ``"hidden_states"`` in needs).
    The loss reads only hidden states on them, so their logits are not kept."""
    ref_hidden_state_parts: tuple[str, ...] = ()
    """Parts on which the reference model's hidden states are needed (iff ``"ref_hidden_states"``)."""
    hyperparams: tuple[str, ...] = ()
    """Loss-specific searchable hyper-parameters, keys of :data:`HYPERPARAMS`."""
    formula: str = ""
    """The definition, for listings and run metadata."""
    default_regularizer: str = "NONE"
    """Forget losses only: the regularizer a bare method name (no ``+``) implies."""
    forget_mask_default: bool = True
    """Forget losses only: docs/science.md §4's ``mask`` (labels on answer tokens only) for this loss."""
    ranges: Mapping[str, Param] = field(default_factory=dict)
    """Search ranges of this loss that differ from :data:`HYPERPARAMS` (SimNPO's β acts on a
    per-token log-likelihood, so it lives on a larger scale than NPO's)."""
    shipped: Mapping[str, float] = field(default_factory=dict)
    """A loss outside the paper: the values its fixed-setting runs (the ``paper`` sampler, the
    reproduction's tables) take from the implementation researchers compare against, in place of the
    paper's β = 0.1 and forget weight 1, which were set for other losses. Keys: ``forget_coeff`` or
    :attr:`hyperparams`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        if unknown_shipped := set(self.shipped) - {"forget_coeff", *self.hyperparams}:
            raise ValueError(f"loss {self.name}: shipped values for settings it does not use {sorted(unknown_shipped)}")
        if unknown_range := set(self.ranges) - set(self.hyperparams):
            raise ValueError(f"loss {self.name}: ranges for hyper-parameters it does not use {sorted(unknown_range)}")
        if unknown := self.needs - NEEDS:
            raise ValueError(f"loss {self.name}: unknown needs {sorted(unknown)}; valid: {sorted(NEEDS)}")
        for need, parts in (("ref_logprobs", self.ref_logprob_parts), ("ref_logits", self.ref_logit_parts),
                            ("hidden_states", self.hidden_state_parts),
                            ("ref_hidden_states", self.ref_hidden_state_parts)):
            if (need in self.needs) != bool(parts) or not set(parts) <= self.needs:
                raise ValueError(f"loss {self.name}: {need} parts {parts} disagree with needs {sorted(self.needs)}")
        if unknown_hp := set(self.hyperparams) - HYPERPARAMS.keys():
            raise ValueError(f"loss {self.name}: unknown hyper-parameters {sorted(unknown_hp)}")

    @property
    def batch_parts(self) -> frozenset[str]:
        """The batch parts among the needs (each costs one model forward)."""
        return self.needs & frozenset(BATCH_PARTS)

    @property
    def logit_parts(self) -> frozenset[str]:
        """The batch parts whose logits this loss reads (all but the hidden-state-only ones)."""
        return self.batch_parts - frozenset(self.hidden_state_parts)


def _llmu_regularizer(x: LossInputs, m: Method) -> LossTerms:
    """LLMU's regularization: ``NLL_mean(forget q, random retain answer) + KL(p_ref || p_θ)`` on retain."""
    return {
        "mismatch": mean_nll(x.logits["forget_retain_answer"], x.labels["forget_retain_answer"]),
        "kl": kl_loss(x.logits["retain"], x.ref_logits["retain"]),
    }


FORGET_LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "GA", "forget", lambda x, m: ga_loss(x.logits["forget"], x.labels["forget"]),
            needs=frozenset({"forget"}), formula="-NLL_mean(forget)",
        ),
        LossSpec(
            "NPO", "forget", lambda x, m: npo_loss(x.logprob("forget"), x.ref_logprobs["forget"], m.beta),
            needs=frozenset({"forget", "ref_logprobs"}), ref_logprob_parts=("forget",), hyperparams=("beta",),
            formula="-(2/β) mean log σ(β (NLL_sum_θ - NLL_sum_ref)) on forget",
        ),
        LossSpec(
            "DPO", "forget",
            lambda x, m: dpo_loss(
                x.logprob("forget_idk"), x.logprob("forget"),
                x.ref_logprobs["forget_idk"], x.ref_logprobs["forget"], m.beta,
            ),
            needs=frozenset({"forget", "forget_idk", "ref_logprobs"}), ref_logprob_parts=("forget", "forget_idk"),
            hyperparams=("beta",),
            formula="-(2/β) mean log σ(β [(logp_θ(idk) - logp_θ(a)) - (logp_ref(idk) - logp_ref(a))])",
        ),
        LossSpec(
            "SimNPO", "forget",
            # |y| as OpenUnlearning's simnpo.py counts it: labelled positions, unshifted.
            lambda x, m: simnpo_loss(x.logprob("forget"), x.n_labels("forget"), m.beta,
                                     simnpo_margin(m.beta, m.gamma, m.delta)),
            needs=frozenset({"forget"}), hyperparams=("beta", "gamma"),
            ranges={"beta": Param("beta", 0.5, 10.0, log=True)},
            # OpenUnlearning's configs/trainer/SimNPO.yaml: beta 4.5, gamma (its forget weight) 0.125,
            # delta 0, alpha (the retain weight) 1 = this project's regularization_coeff default.
            shipped={"beta": 4.5, "forget_coeff": 0.125},
            formula="-(2/β) mean log σ(-(β/|y|) logp_θ(y|x) - γ - βδ) on forget (no reference model)",
        ),
        LossSpec(
            "IDK", "forget", lambda x, m: idk_loss(x.logits["forget_idk"], x.labels["forget_idk"]),
            needs=frozenset({"forget_idk"}), formula="NLL_mean(forget q, refusal)",
        ),
        LossSpec(
            "ME", "forget", lambda x, m: me_loss(x.logits["forget"], x.labels["forget"], m.me_variant),
            needs=frozenset({"forget"}), forget_mask_default=False,
            formula="mean_t KL(U_V || p_θ(·|t)) (reference) or KL(p_θ || U_V) (paper)",
        ),
        # LLMU is a "both" loss. As the reference code does, its forget part is GA and the rest
        # (mismatch + KL) is its regularizer, registered below under the same name, so that
        # total = forget_coeff * GA + regularization_coeff * (mismatch + KL) for any coefficients.
        # The bare name "LLMU" means LLMU+LLMU; "LLMU+GD" etc. also parse (forget part = GA).
        LossSpec(
            "LLMU", "forget", lambda x, m: ga_loss(x.logits["forget"], x.labels["forget"]),
            needs=frozenset({"forget"}), default_regularizer="LLMU",
            formula="-NLL_mean(forget) (LLMU's forget part; its regularizer is REGULARIZERS['LLMU'])",
        ),
        # RMU, like LLMU, comes with its own regularizer: the bare name "RMU" means RMU+RMU.
        LossSpec(
            "RMU", "forget",
            lambda x, m: rmu_forget_loss(x.hidden["forget"], x.control, x.rmu_mask("forget", m.rmu_averaging),
                                         per_sequence=m.rmu_averaging == "answer_per_sequence"),
            needs=frozenset({"forget", "hidden_states"}), hidden_state_parts=("forget",),
            hyperparams=("rmu_layer", "rmu_steering_coeff"), default_regularizer="RMU",
            formula="mean over forget answers of the mean over their tokens of mean_d (h_θ^(ℓ) - c·u)^2 "
                    "(u a fixed random unit vector)",
        ),
    )
}
"""Forget losses by name."""

REGULARIZERS: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "GD", "regularizer", lambda x, m: gd_loss(x.logits["retain"], x.labels["retain"]),
            needs=frozenset({"retain"}), formula="NLL_mean(retain)",
        ),
        LossSpec(
            "KL", "regularizer", lambda x, m: kl_loss(x.logits["retain"], x.ref_logits["retain"]),
            needs=frozenset({"retain", "ref_logits"}), ref_logit_parts=("retain",),
            formula="KL(p_ref || p_θ) averaged over all B*T retain positions",
        ),
        LossSpec(
            "AP", "regularizer", lambda x, m: ap_loss(x.logprob("retain"), x.logprob("retain_idk"), m.beta),
            needs=frozenset({"retain", "retain_idk"}), hyperparams=("beta",),
            formula="-(1/β) mean log σ(β (NLL_sum(retain q, idk) - NLL_sum(retain q, a)))",
        ),
        LossSpec(
            "LLMU", "regularizer", _llmu_regularizer,
            needs=frozenset({"forget_retain_answer", "retain", "ref_logits"}), ref_logit_parts=("retain",),
            formula="NLL_mean(forget q, random retain a) + KL(p_ref || p_θ) on retain",
        ),
        LossSpec(
            "RMU", "regularizer",
            lambda x, m: m.rmu_alpha * rmu_retain_loss(x.hidden["retain"], x.ref_hidden["retain"],
                                                       x.rmu_mask("retain", m.rmu_averaging),
                                                       per_sequence=m.rmu_averaging == "answer_per_sequence"),
            needs=frozenset({"retain", "hidden_states", "ref_hidden_states"}), hidden_state_parts=("retain",),
            ref_hidden_state_parts=("retain",), hyperparams=("rmu_layer", "rmu_alpha"),
            formula="α · mean over retain answers of the mean over their tokens of mean_d (h_θ^(ℓ) - h_ref^(ℓ))^2",
        ),
        LossSpec("NONE", "regularizer", lambda x, m: x.zero(), needs=frozenset(), formula="0"),
    )
}
"""Regularizers by name; ``NONE`` makes a forget-only method."""



def _unknown(kind: str, value: str, method: str, valid: Mapping[str, Any]) -> StudyInputError:
    return StudyInputError(f"unknown {kind} {value!r} in method {method!r}; valid: {', '.join(sorted(valid))}")


def ref_cache_key(part: str) -> str:
    """Batch key under which cached reference log-probs ``[B]`` of ``part`` are passed."""
    return f"ref_logprobs_{part}"


@dataclass(frozen=True)
class Method:
    """An unlearning method: a forget loss, a regularizer and their coefficients (docs/science.md §3, §4).

    ``total = forget_coeff * L_forget + regularization_coeff * L_reg``. Build from a name with
    :meth:`parse`; ``str(method)`` gives the name back.
    """

    forget_loss: str
    """Key of :data:`FORGET_LOSSES`."""
    regularizer: str = "NONE"
    """Key of :data:`REGULARIZERS`."""
    forget_coeff: float = 1.0
    """α, the weight of the forget loss (ME+GD uses 0.1 on TOFU, 0.5 real-world)."""
    regularization_coeff: float = 1.0
    """The weight of the regularizer."""
    beta: float = 0.1
    """β of NPO, DPO, AP and SimNPO."""
    gamma: float = 0.0
    """SimNPO's reward margin γ, the paper's, outside β (docs/science-beyond-paper.md §1); no other loss reads it."""
    delta: float = 0.0
    """SimNPO's margin in OpenUnlearning's spelling, inside β: adds ``β δ`` to γ (:func:`simnpo_margin`).
    Set γ or δ, not both."""
    me_variant: MEVariant = "reference"
    """ME's divergence: ``"reference"`` = KL(U || p) (the code), ``"paper"`` = KL(p || U) (the text)."""
    rmu_layer: int = 7
    """RMU's steered decoder layer ℓ (0-based; published: 7), clamped by :func:`rmu_layer_for`."""
    rmu_steering_coeff: float = 6.5
    """RMU's c, the norm of the control vector (published: 6.5)."""
    rmu_alpha: float = 1200.0
    """RMU's α, the weight of its retain term inside the RMU regularizer (published: 1200)."""
    rmu_averaging: RMUAveraging = "answer_per_sequence"
    """How RMU's terms average per-token errors (:data:`RMU_AVERAGING`; default OpenUnlearning's)."""

    def __post_init__(self) -> None:
        name = f"{self.forget_loss}+{self.regularizer}"
        if self.forget_loss not in FORGET_LOSSES:
            raise _unknown("forget loss", self.forget_loss, name, FORGET_LOSSES)
        if self.regularizer not in REGULARIZERS:
            raise _unknown("regularizer", self.regularizer, name, REGULARIZERS)
        for coeff in ("forget_coeff", "regularization_coeff"):
            value = getattr(self, coeff)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise StudyInputError(f"{coeff} must be a finite number >= 0, got {value!r} (method {name})")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta > 0):
            raise StudyInputError(f"beta must be a finite number > 0, got {self.beta!r} (method {name})")
        for value, what in ((self.gamma, "gamma"), (self.delta, "delta")):
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise StudyInputError(f"{what} must be a finite number, got {value!r} (method {name})")
        if self.gamma and self.delta:
            raise StudyInputError(f"SimNPO's margin is set twice, gamma={self.gamma!r} and delta={self.delta!r} "
                                  f"(method {name}): gamma is the paper's margin, delta OpenUnlearning's "
                                  "(gamma = beta * delta); set one")
        if self.rmu_averaging not in RMU_AVERAGING:
            raise StudyInputError(f"unknown rmu_averaging {self.rmu_averaging!r}; valid: {', '.join(RMU_AVERAGING)}")
        if self.me_variant not in ME_VARIANTS:
            raise StudyInputError(f"unknown ME variant {self.me_variant!r}; valid: {', '.join(ME_VARIANTS)}")
        if not (isinstance(self.rmu_layer, int) and not isinstance(self.rmu_layer, bool) and self.rmu_layer >= 0):
            raise StudyInputError(f"rmu_layer must be an integer >= 0, got {self.rmu_layer!r} (method {name})")
        for value, what in ((self.rmu_steering_coeff, "rmu_steering_coeff"), (self.rmu_alpha, "rmu_alpha")):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise StudyInputError(f"{what} must be a finite number >= 0, got {value!r} (method {name})")

    @classmethod
    def parse(cls, name: str, **overrides: Any) -> Method:
        """``"ME+GD"`` -> ``Method("ME", "GD")``; a bare ``"GA"`` means GA+NONE (``"LLMU"``: LLMU+LLMU).

        ``overrides`` set the other fields (``forget_coeff=0.1``, ``beta=...``).
        """
        pieces = name.split("+")
        if len(pieces) > 2 or not all(pieces):
            raise StudyInputError(f"method name must be FORGET or FORGET+REGULARIZER, got {name!r}")
        forget = pieces[0]
        if forget not in FORGET_LOSSES:
            raise _unknown("forget loss", forget, name, FORGET_LOSSES)
        regularizer = pieces[1] if len(pieces) == 2 else FORGET_LOSSES[forget].default_regularizer
        return cls(forget_loss=forget, regularizer=regularizer, **overrides)

    def __str__(self) -> str:
        if self.regularizer == FORGET_LOSSES[self.forget_loss].default_regularizer:
            return self.forget_loss
        return f"{self.forget_loss}+{self.regularizer}"

    @property
    def name(self) -> str:
        """Same as ``str(method)``."""
        return str(self)

    @property
    def specs(self) -> tuple[LossSpec, LossSpec]:
        """(forget loss spec, regularizer spec)."""
        return FORGET_LOSSES[self.forget_loss], REGULARIZERS[self.regularizer]

    @property
    def needs(self) -> frozenset[str]:
        """Union of both losses' needs."""
        forget, reg = self.specs
        return forget.needs | reg.needs

    @property
    def batch_parts(self) -> tuple[str, ...]:
        """Batch parts the data pipeline must provide, in :data:`BATCH_PARTS` order."""
        return tuple(p for p in BATCH_PARTS if p in self.needs)

    @property
    def ref_logprob_parts(self) -> tuple[str, ...]:
        """Parts whose reference per-sequence log-probs are needed (cacheable)."""
        parts = {p for s in self.specs for p in s.ref_logprob_parts}
        return tuple(p for p in BATCH_PARTS if p in parts)

    @property
    def ref_logit_parts(self) -> tuple[str, ...]:
        """Parts whose reference logits are needed (the reference model stays in memory)."""
        parts = {p for s in self.specs for p in s.ref_logit_parts}
        return tuple(p for p in BATCH_PARTS if p in parts)

    @property
    def ref_cache_keys(self) -> tuple[str, ...]:
        """Batch keys of the reference log-prob cache, e.g. ``("ref_logprobs_forget",)``."""
        return tuple(ref_cache_key(p) for p in self.ref_logprob_parts)

    @property
    def hidden_state_parts(self) -> tuple[str, ...]:
        """Parts whose hidden states (of the steered layer) are needed (RMU)."""
        parts = {p for s in self.specs for p in s.hidden_state_parts}
        return tuple(p for p in BATCH_PARTS if p in parts)

    @property
    def ref_hidden_state_parts(self) -> tuple[str, ...]:
        """Parts whose reference hidden states are needed (the reference model stays in memory)."""
        parts = {p for s in self.specs for p in s.ref_hidden_state_parts}
        return tuple(p for p in BATCH_PARTS if p in parts)

    @property
    def logit_parts(self) -> tuple[str, ...]:
        """Parts whose logits some loss reads; the others (RMU's) keep only the last position's."""
        parts = {p for s in self.specs for p in s.logit_parts}
        return tuple(p for p in BATCH_PARTS if p in parts)

    @property
    def steers_hidden_states(self) -> bool:
        """A loss reads hidden states: training needs a :class:`Steering` and trains only RMU's weights."""
        return bool(self.hidden_state_parts or self.ref_hidden_state_parts)

    @property
    def needs_ref_model(self) -> bool:
        """A reference model is needed at all (at least to fill the log-prob cache)."""
        return bool(self.ref_logprob_parts or self.ref_logit_parts or self.ref_hidden_state_parts)

    @property
    def needs_live_ref_model(self) -> bool:
        """The reference model must stay in memory during training (reference logits: KL, LLMU; reference
        hidden states: RMU)."""
        return bool(self.ref_logit_parts or self.ref_hidden_state_parts)

    @property
    def forget_mask_default(self) -> bool:
        """docs/science.md §4's ``mask``: False for ME (whole padded sequence labelled), True otherwise."""
        return FORGET_LOSSES[self.forget_loss].forget_mask_default

    @property
    def hyperparams(self) -> tuple[str, ...]:
        """Searchable hyper-parameters: shared ones, then the losses' own (deduplicated)."""
        names = list(SHARED_HYPERPARAMS)
        for spec in self.specs:
            names += [h for h in spec.hyperparams if h not in names]
        return tuple(names)

    def search_space(self) -> list[Param]:
        """The method's whole search space: lr, forget_coeff, and beta (gamma) if a loss uses it.

        A range a loss declares in ``LossSpec.ranges`` replaces the shared one (the forget loss's
        first, as it is the one the parameter was introduced for).
        """
        forget, reg = self.specs
        ranges = {**reg.ranges, **forget.ranges}
        return [ranges.get(h, HYPERPARAMS[h]) for h in self.hyperparams]


# --------------------------------------------------------------------------------------------------
# Adapter for the training loop
# --------------------------------------------------------------------------------------------------


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
    them (transformers' ``logits_to_keep``), as ``study.train.answer_nll`` does when fine-tuning. On
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
