"""Unlearning methods: the losses, the registry that binds them to a batch, and the forward pass.

Five modules (docs/extending.md: adding a loss touches ``losses.py`` and ``registry.py``):

* :mod:`~study.methods.numerics`: shared numerics written once (label shift, summed and mean NLL,
  chunked softmax entropy);
* :mod:`~study.methods.losses`: the pure losses (GA, NPO, DPO, IDK, ME, GD, KL, AP, SimNPO, RMU), functions
  of tensors with their formula and citation;
* :mod:`~study.methods.hyperparams`: every searchable hyper-parameter, declared once, torch-free;
* :mod:`~study.methods.registry`: a ``LossSpec`` per loss (what it needs, the weights it trains), and
  ``Method``, a forget loss + a regularizer + coefficients;
* :mod:`~study.methods.forward`: ``compute_loss`` (one model call over a batch's parts), RMU's
  ``Steering``, ``freeze_untrained``.

The public names of all five are importable from ``study.methods`` itself (``from study.methods import
Method, compute_loss``). They load on first use, so importing ``study.methods.hyperparams`` alone (the
configuration, the analysis) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC: dict[str, tuple[str, ...]] = {
    "hyperparams": ("Param", "HYPERPARAMS", "SHARED_HYPERPARAMS", "SETTINGS", "SEARCHABLE_SETTINGS"),
    "numerics": ("IGNORE_INDEX", "ENTROPY_CHUNK_ROWS", "shift_labels", "token_nll", "sequence_nll", "sequence_logprob",
                 "mean_nll", "masked_mean", "softmax_entropy"),
    "losses": ("MEVariant", "ME_VARIANTS", "RMUAveraging", "RMU_AVERAGING", "ga_loss", "idk_loss", "gd_loss", "npo_loss",
               "simnpo_loss", "simnpo_margin", "dpo_loss", "ap_loss", "me_loss", "kl_loss", "masked_hidden_mse",
               "rmu_forget_loss", "rmu_retain_loss", "rmu_control_vector", "rmu_layer_for", "rmu_trained_layers",
               "rmu_trained_pattern", "rmu_trainable"),
    "registry": ("BATCH_PARTS", "MODEL_NEEDS", "HIDDEN_NEEDS", "NEEDS", "LossInputs", "LossTerms", "LossSpec",
                 "FORGET_LOSSES", "REGULARIZERS", "Method", "ref_cache_key"),
    "forward": ("LossOutput", "Steering", "steering_for", "freeze_untrained", "forward_logits", "reference_logprobs",
                "first_logit_column", "LINEAR_HEAD_MODEL_TYPES", "linear_lm_head", "fuse_parts", "split_fused",
                "dropout_active", "compute_loss"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:  # a submodule not imported yet
        return importlib.import_module(f".{name}", __name__)
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
