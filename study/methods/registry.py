"""The method registry: what each loss needs, and a method as a forget loss, a regularizer and coefficients.

A :class:`LossSpec` per loss in :data:`FORGET_LOSSES` / :data:`REGULARIZERS` declares what it needs
(batch parts, reference quantities, hyper-parameters, the weights it trains) and binds
:class:`LossInputs` to a pure loss of :mod:`study.methods.losses`. A :class:`Method` is a forget-loss
name, a regularizer name and their coefficients; ``Method.parse("ME+GD")``. Adding a loss = one pure
function + one entry here (docs/extending.md).

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
                           (``study.methods.forward.Steering``) on some parts (RMU)
``ref_hidden_states``      the same from the frozen reference model (live, like ``ref_logits``)
=========================  ===================================================================

Every batch part is a mapping with ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]``;
``labels == -100`` marks positions that are not scored. Which positions carry labels (answer only, or
the whole padded sequence for ME+GD's ``mask=false``) is decided by the data pipeline, not here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import StudyInputError
from .hyperparams import HYPERPARAMS, SHARED_HYPERPARAMS, Param
from .losses import (
    ME_VARIANTS, RMU_AVERAGING, MEVariant, RMUAveraging, ap_loss, dpo_loss, ga_loss, gd_loss, idk_loss, kl_loss,
    me_loss, npo_loss, rmu_forget_loss, rmu_retain_loss, rmu_layer_for, rmu_trained_pattern, simnpo_loss,
    simnpo_margin,
)
from .numerics import IGNORE_INDEX, mean_nll, sequence_logprob

BATCH_PARTS: tuple[str, ...] = ("forget", "forget_idk", "retain", "retain_idk", "forget_retain_answer")
"""Batch parts the data pipeline produces, in the order forward passes are run."""

MODEL_NEEDS: tuple[str, ...] = ("ref_logprobs", "ref_logits")
"""Reference-model quantities a loss can need."""

HIDDEN_NEEDS: tuple[str, ...] = ("hidden_states", "ref_hidden_states")
"""Hidden states of one decoder layer, of the current and of the reference model (RMU)."""

NEEDS: frozenset[str] = frozenset(BATCH_PARTS + MODEL_NEEDS + HIDDEN_NEEDS)


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
    trains: Callable[[Method, int], str] | None = None
    """The weights this loss trains, when not all: ``(method, the model's decoder layer count) ->`` a regular
    expression searched in ``model.named_parameters()`` names; every other parameter is frozen
    (``study.methods.forward.freeze_untrained``). RMU trains three MLP down-projections."""
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


def _rmu_trains(m: Method, n_layers: int) -> str:
    """RMU trains the MLP down-projections of the steered layer and the two before it
    (docs/science-beyond-paper.md §2)."""
    return rmu_trained_pattern(rmu_layer_for(m.rmu_layer, n_layers))


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
            hyperparams=("rmu_layer", "rmu_steering_coeff"), default_regularizer="RMU", trains=_rmu_trains,
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
            ref_hidden_state_parts=("retain",), hyperparams=("rmu_layer", "rmu_alpha"), trains=_rmu_trains,
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
        """A loss reads hidden states: training needs a ``study.methods.forward.Steering``."""
        return bool(self.hidden_state_parts or self.ref_hidden_state_parts)

    def trained_weights(self, n_layers: int) -> str | None:
        """A regular expression of the parameter names this method trains on a model with ``n_layers``
        decoder layers (the union of its losses' :attr:`LossSpec.trains`), or None: every weight."""
        patterns = [f"(?:{s.trains(self, n_layers)})" for s in self.specs if s.trains is not None]
        return "|".join(dict.fromkeys(patterns)) or None

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

