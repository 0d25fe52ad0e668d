"""The unlearning losses as pure functions of tensors (docs/science.md §3, docs/science-beyond-paper.md §1, §2).

GA, NPO, DPO, IDK, ME, GD, KL, AP (the paper's), SimNPO and RMU (beyond the paper) as functions of logits
/ labels, of per-sequence log-probs, or of one decoder layer's hidden states. Each docstring gives the
formula the reference code (``sail-sg/closer-look-LLM-unlearning``) computes, with its shapes; where the
paper's text differs, the paper's version is a named option. No model, no batch layout: the registry
(:mod:`study.methods.registry`) binds them to a batch's parts.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import StudyInputError
from .numerics import ENTROPY_CHUNK_ROWS, compute_dtype, UniformKL, masked_mean, mean_nll, softmax_entropy

MEVariant = Literal["reference", "paper"]
ME_VARIANTS: tuple[str, ...] = ("reference", "paper")


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
      backward (:class:`UniformKL`): no softmax or uniform ``[B, T, V]`` tensor is built or kept; the reference adds ``1e-12`` to ``p`` before the log, which
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
        kl = UniformKL.apply(logits, ENTROPY_CHUNK_ROWS)  # [B, T], float32 (float64 for float64 logits)
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
    logp = F.log_softmax(logits.to(compute_dtype(logits)), dim=-1).view(-1, v)
    ref_logp = F.log_softmax(ref_logits.to(compute_dtype(ref_logits)), dim=-1).view(-1, v)
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
    dtype = compute_dtype(hidden)
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


def rmu_trained_pattern(layer: int) -> str:
    """The parameter names (``model.named_parameters()``, searched) RMU trains at ``layer``: the
    down-projections of :func:`rmu_trained_layers`, or, on a LoRA-wrapped model (peft), their adapters
    (``...down_proj.lora_A.<adapter>.weight``, ``lora_B``); the frozen ``base_layer.weight`` never."""
    layers = "|".join(str(i) for i in rmu_trained_layers(layer))
    return rf"(^|\.)layers\.({layers})\.mlp\.down_proj\.(weight|lora_[AB]\.[^.]+\.weight)$"


def rmu_trainable(name: str, layer: int) -> bool:
    """Whether parameter ``name`` is one RMU trains at ``layer`` (:func:`rmu_trained_pattern`)."""
    return re.search(rmu_trained_pattern(layer), name) is not None


