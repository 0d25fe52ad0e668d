"""Shared numerics of the losses, written once (docs/science.md §3).

The causal-LM label shift, the per-sequence summed NLL (``logp(y|x)``), the batch token-mean NLL that
Hugging Face's ``outputs.loss`` returns, a masked mean, and the softmax entropy / KL to the uniform
distribution computed in chunks with their own backward (full-vocabulary temporaries stay bounded).
Every function takes logits ``[B, T, V]`` and labels ``[B, T]`` (``labels == IGNORE_INDEX`` marks positions
that are not scored) and computes in float32 (float64 for float64 inputs, so gradcheck works).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value of positions that are not scored (Hugging Face convention)."""

ENTROPY_CHUNK_ROWS = 1024
"""Positions per chunk in :func:`softmax_entropy` (bounds its full-vocabulary temporaries)."""


def compute_dtype(t: Tensor) -> torch.dtype:
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
    z = logits.to(compute_dtype(logits))
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
    z = logits.to(compute_dtype(logits))
    return F.cross_entropy(z.reshape(b * t, v), shift_labels(labels).reshape(b * t), ignore_index=IGNORE_INDEX)


def masked_mean(values: Tensor, labels: Tensor) -> Tensor:
    """Mean of per-position ``values [B, T]`` over positions whose shifted label is scored.

    ``sum(values * mask) / sum(mask)`` with ``mask = shift_labels(labels) != -100``, as the reference
    ``get_me_loss`` does.
    """
    mask = (shift_labels(labels) != IGNORE_INDEX).to(values.dtype)
    return (values * mask).sum() / mask.sum()


class SoftmaxEntropy(torch.autograd.Function):
    """``H(softmax(z))`` per position, forward and backward in row chunks.

    Neither pass keeps a full ``[B, T, V]`` temporary: forward saves only ``z`` (the logits, already
    alive) and ``H [B, T]``; backward recomputes ``p`` chunk by chunk and uses
    ``dH/dz_k = -p_k (log p_k + H)``, which stays finite where ``p_k`` underflows to 0 (``log p_k`` comes
    from a log-softmax, never from ``log(p)``). The only full-size tensor created is the gradient itself.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, chunk_rows: int) -> Tensor:  # z: [..., V]
        dtype = compute_dtype(z)
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


class UniformKL(torch.autograd.Function):
    """``KL(U_V || softmax(z)) = logsumexp(z) - mean_v(z) - log V`` per position, in row chunks.

    Like :class:`SoftmaxEntropy`, neither pass keeps a full ``[B, T, V]`` temporary: forward saves ``z``
    (already alive) and ``logsumexp [B, T]``; backward writes ``dKL/dz_k = p_k - 1/V`` chunk by chunk
    straight into the gradient, the only full-size tensor it creates. (Autograd through
    ``torch.logsumexp(z) - z.mean()`` kept three more logits-sized tensors alive.)
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, chunk_rows: int) -> Tensor:  # z: [..., V]
        dtype = compute_dtype(z)
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
    return SoftmaxEntropy.apply(logits, chunk_rows)

