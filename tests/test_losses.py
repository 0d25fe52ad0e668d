"""Tests of study.methods: hand-derived values for every loss, the registry, and a tiny-model run per method.

Hand values use logits ``z = log p + c`` for chosen distributions ``p`` (so ``softmax(z) = p`` for any
row constant ``c``) and compute the expected numbers with ``math`` and explicit loops.
"""

from __future__ import annotations

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from study.errors import StudyInputError
from study.paper import PAPER_METHODS
from study.methods import (
    FORGET_LOSSES,
    REGULARIZERS,
    LossSpec,
    Method,
    Param,
    ap_loss,
    compute_loss,
    freeze_untrained,
    dpo_loss,
    ga_loss,
    gd_loss,
    idk_loss,
    kl_loss,
    mean_nll,
    me_loss,
    npo_loss,
    LossInputs,
    ref_cache_key,
    reference_logprobs,
    rmu_control_vector,
    rmu_forget_loss,
    rmu_layer_for,
    rmu_retain_loss,
    rmu_trainable,
    rmu_trained_layers,
    sequence_logprob,
    sequence_nll,
    simnpo_loss,
    simnpo_margin,
    softmax_entropy,
    steering_for,
)

# Three distributions over V = 3 tokens.
PA = [0.5, 0.25, 0.25]
PB = [0.1, 0.6, 0.3]
PC = [1 / 3, 1 / 3, 1 / 3]
V = 3


def logits_of(rows: list[list[list[float]]], offsets: list[list[float]] | None = None) -> torch.Tensor:
    """``[B][T][V]`` probabilities -> logits ``log p + offset`` (offset per position, default 0)."""
    z = torch.tensor(rows, dtype=torch.float64).log()
    if offsets is not None:
        z = z + torch.tensor(offsets, dtype=torch.float64)[..., None]
    return z


def kl_hand(q: list[float], p: list[float]) -> float:
    return sum(qi * math.log(qi / pi) for qi, pi in zip(q, p))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# Two sequences of T = 3: position t's logits score labels[t + 1].
HAND_LOGITS = logits_of([[PA, PB, PC], [PC, PA, PB]], offsets=[[5.0, -2.0, 0.5], [1.0, 3.0, -7.0]])
HAND_LABELS = torch.tensor([[-100, 1, 2], [-100, -100, 0]])
# seq 0: pos 0 (PA) -> token 1, pos 1 (PB) -> token 2; seq 1: pos 1 (PA) -> token 0.
HAND_TOKEN_NLL = [[-math.log(PA[1]), -math.log(PB[2])], [-math.log(PA[0])]]


# --------------------------------------------------------------------------------------------------
# Shared numerics and pure losses, by hand
# --------------------------------------------------------------------------------------------------


def test_sequence_and_mean_nll_by_hand():
    expected_sum = [sum(row) for row in HAND_TOKEN_NLL]
    torch.testing.assert_close(sequence_nll(HAND_LOGITS, HAND_LABELS), torch.tensor(expected_sum, dtype=torch.float64))
    torch.testing.assert_close(sequence_logprob(HAND_LOGITS, HAND_LABELS), -sequence_nll(HAND_LOGITS, HAND_LABELS))
    # Token mean over the batch (3 tokens), not a mean of per-sequence means.
    expected_mean = (math.log(4) - math.log(0.3) + math.log(2)) / 3
    assert mean_nll(HAND_LOGITS, HAND_LABELS).item() == pytest.approx(expected_mean, rel=1e-12)
    assert ga_loss(HAND_LOGITS, HAND_LABELS).item() == pytest.approx(-expected_mean, rel=1e-12)
    assert idk_loss(HAND_LOGITS, HAND_LABELS).item() == pytest.approx(expected_mean, rel=1e-12)
    assert gd_loss(HAND_LOGITS, HAND_LABELS).item() == pytest.approx(expected_mean, rel=1e-12)


def test_nll_upcasts_bfloat16_logits():
    out = sequence_nll(HAND_LOGITS.to(torch.bfloat16), HAND_LABELS)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), sequence_nll(HAND_LOGITS, HAND_LABELS), atol=0.05, rtol=0.02)


def test_npo_by_hand():
    logp, ref_logp, beta = [-2.0, -3.0], [-2.5, -1.0], 0.1
    # NLL_θ - NLL_ref = (-logp) - (-ref_logp)
    terms = [logsig(beta * ((-a) - (-r))) for a, r in zip(logp, ref_logp)]
    expected = -(2 / beta) * sum(terms) / 2
    got = npo_loss(torch.tensor(logp, dtype=torch.float64), torch.tensor(ref_logp, dtype=torch.float64), beta)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # At θ = ref the loss is (2/β) log 2 whatever the inputs.
    same = npo_loss(torch.tensor(logp), torch.tensor(logp), 0.5)
    assert same.item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_dpo_by_hand():
    idk, ans, ref_idk, ref_ans, beta = [-4.0, -2.0], [-1.0, -3.0], [-5.0, -2.5], [-1.5, -2.0], 0.2
    margins = [(i - a) - (ri - ra) for i, a, ri, ra in zip(idk, ans, ref_idk, ref_ans)]
    expected = -(2 / beta) * sum(logsig(beta * m) for m in margins) / 2
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    assert dpo_loss(t(idk), t(ans), t(ref_idk), t(ref_ans), beta).item() == pytest.approx(expected, rel=1e-12)
    # Swapping preferred and rejected changes the loss: the argument order matters.
    assert dpo_loss(t(ans), t(idk), t(ref_ans), t(ref_idk), beta).item() != pytest.approx(expected, rel=1e-3)


def test_ap_by_hand_is_half_the_npo_style_formula():
    logp_a, logp_idk, beta = [-3.0, -1.0, -6.0], [-2.0, -4.0, -6.5], 0.1
    # -(1/β) mean log σ(β (NLL_idk - NLL_a))
    expected = -(1 / beta) * sum(logsig(beta * ((-i) - (-a))) for a, i in zip(logp_a, logp_idk)) / 3
    a, i = torch.tensor(logp_a, dtype=torch.float64), torch.tensor(logp_idk, dtype=torch.float64)
    got = ap_loss(a, i, beta)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # The NPO formula with NLL_θ := NLL(idk), NLL_ref := NLL(answer) has 2/β: twice AP.
    assert npo_loss(i, a, beta).item() == pytest.approx(2 * expected, rel=1e-12)


def test_kl_regularizer_by_hand_averages_over_all_positions():
    # B = 2, T = 2: every position counts, labels are irrelevant; divide by B * T = 4.
    cur = [[PA, PB], [PC, PA]]
    ref = [[PB, PB], [PA, PC]]
    expected = sum(kl_hand(q, p) for qs, ps in zip(ref, cur) for q, p in zip(qs, ps)) / 4
    got = kl_loss(logits_of(cur, [[1.0, 2.0], [0.0, -4.0]]), logits_of(ref, [[3.0, 0.0], [-1.0, 2.0]]))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert kl_loss(logits_of(cur), logits_of(cur)).item() == pytest.approx(0.0, abs=1e-12)


def test_kl_regularizer_matches_reference_call():
    gen = torch.Generator().manual_seed(0)
    cur, ref = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    expected = F.kl_div(
        F.log_softmax(cur, -1).view(-1, 7), F.log_softmax(ref, -1).view(-1, 7), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(kl_loss(cur, ref), expected)


def me_reference_hand(p: list[float]) -> float:
    """KL(U || p) = sum_v (1/V) log((1/V) / p_v)."""
    return sum((1 / len(p)) * math.log((1 / len(p)) / pv) for pv in p)


def me_paper_hand(p: list[float]) -> float:
    """KL(p || U) = sum_v p_v log(p_v / (1/V))."""
    return sum(pv * math.log(pv * len(p)) for pv in p)


@pytest.mark.parametrize("variant, per_position", [("reference", me_reference_hand), ("paper", me_paper_hand)])
def test_me_by_hand_with_partial_and_full_masks(variant, per_position):
    # HAND_LABELS scores seq 0 positions 0 (PA), 1 (PB) and seq 1 position 1 (PA).
    expected_partial = (per_position(PA) + per_position(PB) + per_position(PA)) / 3
    assert me_loss(HAND_LOGITS, HAND_LABELS, variant).item() == pytest.approx(expected_partial, rel=1e-10)
    # Every label set (mask=false): all shifted positions, i.e. T - 1 = 2 per sequence.
    full = torch.zeros_like(HAND_LABELS)
    expected_full = (per_position(PA) + per_position(PB) + per_position(PC) + per_position(PA)) / 4
    assert me_loss(HAND_LOGITS, full, variant).item() == pytest.approx(expected_full, rel=1e-10)
    assert per_position(PC) == pytest.approx(0.0, abs=1e-15)  # uniform: zero loss
    assert expected_full != pytest.approx(expected_partial, rel=1e-3)


def test_me_variants_differ():
    assert me_loss(HAND_LOGITS, HAND_LABELS, "reference").item() != pytest.approx(
        me_loss(HAND_LOGITS, HAND_LABELS, "paper").item(), rel=1e-3
    )
    with pytest.raises(ValueError, match="reference, paper"):
        me_loss(HAND_LOGITS, HAND_LABELS, "other")  # type: ignore[arg-type]


def _naive_me(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The reference code's get_me_loss, materialising softmax and uniform tensors."""
    v = logits.shape[-1]
    labels, logits = labels[:, 1:], logits[:, :-1, :]
    soft = F.softmax(logits, dim=-1).reshape(-1, v)
    uniform = torch.full_like(soft, 1.0 / v)
    mask = (labels != -100).reshape(-1)
    kl = F.kl_div((soft + 1e-12).log(), uniform, reduction="none").sum(-1)
    return (kl * mask).sum() / mask.sum()


def test_me_closed_form_matches_naive_reference_on_random_logits():
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(3, 6, 11, generator=gen)
    labels = torch.randint(0, 11, (3, 6), generator=gen)
    labels[:, :2] = -100
    labels[2, 4:] = -100
    torch.testing.assert_close(me_loss(logits, labels), _naive_me(logits, labels), rtol=1e-5, atol=0)
    # Paper variant against Σ p log p + log V computed naively.
    p = F.softmax(logits[:, :-1], -1)
    kl = (p * p.log()).sum(-1) + math.log(11)
    mask = labels[:, 1:] != -100
    torch.testing.assert_close(me_loss(logits, labels, "paper"), kl[mask].mean(), rtol=1e-5, atol=1e-7)


def test_me_gradient_matches_naive_and_chunking():
    from study.methods.numerics import UniformKL

    gen = torch.Generator().manual_seed(3)
    z = (4 * torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: UniformKL.apply(x, 4), (z,))  # 6 rows in chunks of 4
    labels = torch.randint(0, 5, (2, 3), generator=gen)
    labels[0, 1] = -100
    me_loss(z, labels).backward()
    naive = z.detach().clone().requires_grad_()
    _naive_me(naive, labels).backward()
    torch.testing.assert_close(z.grad, naive.grad, rtol=1e-6, atol=1e-12)
    # Extreme logits: finite loss and gradient; bf16 logits: float32 loss, bf16 gradient.
    extreme = torch.tensor([[[0.0, -200.0, 300.0]] * 2], requires_grad=True)
    me_loss(extreme, torch.zeros(1, 2, dtype=torch.long)).backward()
    assert torch.isfinite(extreme.grad).all()
    zb = z.detach().to(torch.bfloat16).requires_grad_()
    loss = me_loss(zb, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(zb.grad.double(), z.grad, rtol=0.05, atol=0.01)


def test_softmax_entropy_gradient_and_chunking():
    gen = torch.Generator().manual_seed(2)
    z = (4 * torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: softmax_entropy(x, chunk_rows=3), (z,))
    p = F.softmax(z, -1)
    torch.testing.assert_close(softmax_entropy(z, chunk_rows=4), -(p * p.log()).sum(-1))
    # Extreme logits (p underflows to 0) keep a finite gradient.
    extreme = torch.tensor([[0.0, -200.0, 300.0]], requires_grad=True)
    softmax_entropy(extreme).sum().backward()
    assert torch.isfinite(extreme.grad).all()
    # bf16 logits: float32 entropy, bf16 gradient.
    zb = z.detach().to(torch.bfloat16).requires_grad_()
    h = softmax_entropy(zb)
    h.sum().backward()
    assert h.dtype == torch.float32 and zb.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------------
# Method registry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_paper_methods_parse_and_round_trip(name):
    method = Method.parse(name)
    assert str(method) == name
    assert Method.parse(str(method)) == method
    assert method.forget_mask_default is (not name.startswith("ME"))


def test_every_pair_parses_and_round_trips():
    for forget, reg in itertools.product(FORGET_LOSSES, REGULARIZERS):
        method = Method.parse(f"{forget}+{reg}", beta=0.5)
        assert (method.forget_loss, method.regularizer, method.beta) == (forget, reg, 0.5)
        assert Method.parse(str(method), beta=0.5) == method


def test_bare_names():
    assert Method.parse("GA") == Method("GA", "NONE") and str(Method("GA", "NONE")) == "GA"
    assert Method.parse("LLMU") == Method("LLMU", "LLMU") and str(Method("LLMU", "LLMU")) == "LLMU"
    assert str(Method("LLMU", "NONE")) == "LLMU+NONE"


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError) as err:
        Method.parse("XX+GD")
    assert str(err.value) == "unknown forget loss 'XX' in method 'XX+GD'; valid: DPO, GA, IDK, LLMU, ME, NPO, RMU, SimNPO"
    valid_regularizers = r"valid: AP, GD, KL, LLMU, NONE, RMU$"
    with pytest.raises(StudyInputError, match=r"unknown regularizer 'YY' in method 'GA\+YY'; " + valid_regularizers):
        Method.parse("GA+YY")
    with pytest.raises(StudyInputError, match=r"unknown forget loss 'XX' in method 'XX'; valid: DPO, GA,"):
        Method.parse("XX")
    for bad in ("", "GA+", "+GD", "GA+GD+KL", "ga+gd"):
        with pytest.raises(ValueError):
            Method.parse(bad)


@pytest.mark.parametrize(
    "overrides",
    [
        {"forget_coeff": -0.1},
        {"regularization_coeff": -1.0},
        {"forget_coeff": float("nan")},
        {"regularization_coeff": float("inf")},
        {"beta": 0.0},
        {"beta": -0.1},
        {"me_variant": "entropy"},
    ],
)
def test_invalid_values_rejected(overrides):
    with pytest.raises(ValueError):
        Method.parse("NPO+GD", **overrides)


def test_zero_coefficients_allowed():
    Method.parse("NPO+GD", forget_coeff=0.0, regularization_coeff=0)


def test_needs_and_search_space():
    uses_beta = {"NPO", "DPO", "AP", "SimNPO"}
    for forget, reg in itertools.product(FORGET_LOSSES, REGULARIZERS):
        method = Method(forget, reg)
        names = [p.name for p in method.search_space()]
        assert names[:2] == ["lr", "forget_coeff"]
        assert ("beta" in names) == bool({forget, reg} & uses_beta)
        assert ("gamma" in names) == (forget == "SimNPO")
        assert len(names) == len(set(names))
    lr = Method.parse("GA+GD").search_space()[0]
    assert (lr.low, lr.high, lr.log, lr.default) == (1e-6, 1e-4, True, 1e-5)

    dpo_kl = Method.parse("DPO+KL")
    assert dpo_kl.needs == {"forget", "forget_idk", "retain", "ref_logprobs", "ref_logits"}
    assert dpo_kl.batch_parts == ("forget", "forget_idk", "retain")
    assert dpo_kl.ref_cache_keys == ("ref_logprobs_forget", "ref_logprobs_forget_idk")
    assert dpo_kl.ref_logit_parts == ("retain",)
    assert dpo_kl.needs_ref_model and dpo_kl.needs_live_ref_model
    npo_gd = Method.parse("NPO+GD")
    assert npo_gd.needs_ref_model and not npo_gd.needs_live_ref_model
    idk_ap = Method.parse("IDK+AP")
    assert idk_ap.batch_parts == ("forget_idk", "retain", "retain_idk") and not idk_ap.needs_ref_model
    llmu = Method.parse("LLMU")
    assert llmu.batch_parts == ("forget", "retain", "forget_retain_answer") and llmu.needs_live_ref_model


def test_param_and_spec_validation():
    with pytest.raises(ValueError):
        Param("x", 0.0, 1.0, log=True)
    with pytest.raises(ValueError):
        Param("x", 1.0, 2.0, default=3.0)
    with pytest.raises(ValueError):
        LossSpec("X", "forget", lambda x, m: x.zero(), needs=frozenset({"forgt"}))
    with pytest.raises(ValueError):
        LossSpec("X", "forget", lambda x, m: x.zero(), needs=frozenset({"forget", "ref_logprobs"}))


# --------------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------------


class TableLM(torch.nn.Module):
    """A bigram "model": logits of position t = table[input_ids[t]]; counts its forward calls."""

    def __init__(self, rows: list[list[float]]):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(rows, dtype=torch.float64).log())
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        return SimpleNamespace(logits=self.table[input_ids])


def part(ids: list[list[int]], labels: list[list[int]]) -> dict[str, torch.Tensor]:
    ids_t = torch.tensor(ids)
    return {"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t), "labels": torch.tensor(labels)}


def test_llmu_by_hand():
    model = TableLM([PA, PB, PC])  # token 0 -> PA, 1 -> PB, 2 -> PC
    ref = TableLM([PC, PA, PB])
    batch = {
        "forget": part([[0, 1, 2]], [[-100, 1, 2]]),  # PA -> 1, PB -> 2
        "forget_retain_answer": part([[0, 2, 1]], [[-100, 2, 1]]),  # PA -> 2, PC -> 1
        "retain": part([[1, 0, 2]], [[-100, 0, 2]]),  # KL over all 3 positions
    }
    ga = -(-math.log(PA[1]) - math.log(PB[2])) / 2
    mismatch = (-math.log(PA[2]) - math.log(PC[1])) / 2
    kl = (kl_hand(PA, PB) + kl_hand(PC, PA) + kl_hand(PB, PC)) / 3
    method = Method.parse("LLMU", forget_coeff=0.7, regularization_coeff=1.3)
    out = compute_loss(method, model, batch, ref_model=ref)
    assert out.total.item() == pytest.approx(0.7 * ga + 1.3 * (mismatch + kl), rel=1e-12)
    assert out.parts["forget"].item() == pytest.approx(ga, rel=1e-12)
    assert out.parts["regularization/mismatch"].item() == pytest.approx(mismatch, rel=1e-12)
    assert out.parts["regularization/kl"].item() == pytest.approx(kl, rel=1e-12)
    assert out.total.requires_grad and not out.parts["total"].requires_grad
    assert (model.calls, ref.calls) == (1, 1)  # the three parts fused into one forward
    separate = compute_loss(method, model, batch, ref_model=ref, fused=False)
    assert separate.total.item() == pytest.approx(out.total.item(), rel=1e-12)
    assert (model.calls, ref.calls) == (1 + 3, 1 + 1)


def _table_batch() -> dict[str, dict[str, torch.Tensor]]:
    p = part([[0, 1, 2], [2, 2, 1]], [[-100, 1, 2], [-100, 0, 1]])
    return {name: p for name in ("forget", "forget_idk", "retain", "retain_idk", "forget_retain_answer")}


def test_each_forward_runs_once_and_cache_skips_reference():
    batch = _table_batch()
    cases = [("ME+GD", 2, 0), ("DPO+KL", 3, 3), ("NPO+GD", 2, 1), ("LLMU", 3, 1), ("LLMU+GD", 2, 0)]
    for name, model_calls, ref_calls in cases:
        model, ref = TableLM([PA, PB, PC]), TableLM([PC, PA, PB])
        compute_loss(Method.parse(name), model, batch, ref_model=ref, fused=False)
        assert (model.calls, ref.calls) == (model_calls, ref_calls), name
        # Fused (the default): one forward of each model, whatever the number of parts.
        model.calls = ref.calls = 0
        compute_loss(Method.parse(name), model, batch, ref_model=ref)
        assert (model.calls, ref.calls) == (1, min(1, ref_calls)), name
    # With the cache, DPO+KL runs the reference model only for KL's logits on retain.
    model, ref = TableLM([PA, PB, PC]), TableLM([PC, PA, PB])
    method = Method.parse("DPO+KL")
    cached = dict(batch, **{ref_cache_key(p): reference_logprobs(ref, batch[p]) for p in method.ref_logprob_parts})
    ref.calls = 0
    compute_loss(method, model, cached, ref_model=ref, fused=False)
    assert (model.calls, ref.calls) == (3, 1)


def test_missing_inputs_are_reported():
    model = TableLM([PA, PB, PC])
    batch = _table_batch()
    with pytest.raises(ValueError, match="ref_logprobs_forget"):
        compute_loss(Method.parse("NPO+GD"), model, batch)
    with pytest.raises(ValueError, match="ref_model"):
        compute_loss(Method.parse("GA+KL"), model, batch)
    with pytest.raises(KeyError, match="forget_idk"):
        compute_loss(Method.parse("DPO+GD"), model, {"forget": batch["forget"], "retain": batch["retain"]})


def test_none_regularizer_and_coefficients():
    out = compute_loss(Method.parse("GA", forget_coeff=2.0), TableLM([PA, PB, PC]), _table_batch())
    assert out.parts["regularization"].item() == 0.0
    assert out.total.item() == pytest.approx(2.0 * out.parts["forget"].item(), rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Tiny Llama
# --------------------------------------------------------------------------------------------------

VOCAB = 64
PAD = 0
IDK_TOKENS = [61, 62, 63]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).float()


def encode(questions: torch.Tensor, answers: list[list[int]], label_question: bool = False) -> dict[str, torch.Tensor]:
    """question + answer, right-padded with PAD; labels -100 on the question (unless label_question) and pads."""
    rows = [q.tolist() + a for q, a in zip(questions, answers)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD)
    attn = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    q_len = questions.shape[1]
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        start = 0 if label_question else q_len
        labels[i, start : len(row)] = ids[i, start : len(row)]
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def tiny_batch(forget_mask: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Three items of each batch part; forget tokens in [3, 32), retain in [32, 61), refusal 61-63."""
    gen, b = torch.Generator().manual_seed(123), 3
    fq = torch.randint(3, 32, (b, 4), generator=gen)
    rq = torch.randint(32, 61, (b, 4), generator=gen)
    fa = [torch.randint(3, 32, (n,), generator=gen).tolist() for n in (4, 3, 4)]  # ragged: padding
    ra = [torch.randint(32, 61, (4,), generator=gen).tolist() for _ in range(b)]
    idk = [IDK_TOKENS[: 2 + i % 2] for i in range(b)]
    return {
        "forget": encode(fq, fa, label_question=not forget_mask),
        "forget_idk": encode(fq, idk),
        "retain": encode(rq, ra),
        "retain_idk": encode(rq, idk),
        "forget_retain_answer": encode(fq, ra),
    }


def test_mean_nll_equals_hugging_face_loss():
    model, batch = tiny_llama(), tiny_batch()["forget"]
    out = model(**batch)
    torch.testing.assert_close(mean_nll(out.logits, batch["labels"]), out.loss, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["NPO+GD", "DPO+GD"])
def test_cached_reference_logprobs_equal_uncached(name):
    model, ref = tiny_llama(0), tiny_llama(1).eval()
    batch, method = tiny_batch(), Method.parse(name)
    uncached = compute_loss(method, model, batch, ref_model=ref)
    cache = {ref_cache_key(p): reference_logprobs(ref, batch[p]) for p in method.ref_logprob_parts}
    cached = compute_loss(method, model, {**batch, **cache})
    assert torch.equal(cached.total, uncached.total)
    assert uncached.parts["forget"].item() != pytest.approx(2 / method.beta * math.log(2))  # ref differs from θ

    # A cache filled item by item (another batch composition) agrees to float precision.
    def one_by_one(p: str) -> torch.Tensor:
        return torch.cat([reference_logprobs(ref, {k: v[i : i + 1] for k, v in batch[p].items()}) for i in range(3)])

    per_item = {ref_cache_key(p): one_by_one(p) for p in method.ref_logprob_parts}
    per_item_total = compute_loss(method, model, {**batch, **per_item}).total
    torch.testing.assert_close(per_item_total, uncached.total, rtol=0, atol=1e-6)


def _logits_labels(model, p):
    return model(input_ids=p["input_ids"], attention_mask=p["attention_mask"]).logits, p["labels"]


@torch.no_grad()
def _probe(model, batch, method) -> dict[str, float]:
    f, idk = batch["forget"], batch["forget_idk"]
    return {
        "forget_logp": reference_logprobs(model, f).sum().item(),
        "idk_logp": reference_logprobs(model, idk).sum().item(),
        "me": me_loss(*_logits_labels(model, f), method.me_variant).item(),
    }


@pytest.fixture(scope="module")
def target_llama():
    """The tiny Llama after a few steps of fine-tuning on the forget and retain answers.

    Like the real target model, it has learned the forget set, so its predictions are far from uniform
    and unlearning has something to undo (a fresh random model is already near uniform).
    """
    model, batch = tiny_llama(0), tiny_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        loss = mean_nll(*_logits_labels(model, batch["forget"])) + mean_nll(*_logits_labels(model, batch["retain"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("name", PAPER_METHODS + ("SimNPO+GD",))
def test_tiny_llama_moves_the_intended_way(name, target_llama):
    method = Method.parse(name)
    model = copy.deepcopy(target_llama)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if method.needs_ref_model else None
    batch = tiny_batch(forget_mask=method.forget_mask_default)
    before_params = [p.detach().clone() for p in model.parameters()]
    before = _probe(model, batch, method)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in range(4):
        out = compute_loss(method, model, batch, ref_model=ref)
        assert torch.isfinite(out.total) and all(torch.isfinite(v) for v in out.parts.values())
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    after = _probe(model, batch, method)
    assert any(not torch.equal(a, b) for a, b in zip(before_params, model.parameters()))
    forget = method.forget_loss
    if forget in ("GA", "NPO", "DPO", "SimNPO"):
        assert after["forget_logp"] < before["forget_logp"] - 1.0, (before, after)
    if forget in ("IDK", "DPO"):
        # GA-style losses also raise it a little (about 3 nats here) as the model flattens out.
        assert after["idk_logp"] > before["idk_logp"] + 6.0, (before, after)
    if forget == "ME":
        assert after["me"] < 0.75 * before["me"], (before, after)


# --------------------------------------------------------------------------------------------------
# Composite methods through compute_loss: each part feeds the term it belongs to
# --------------------------------------------------------------------------------------------------


def _logits(model, part):
    return model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits


def _hand_composite(name: str, model, ref, batch, alpha: float, reg: float, beta: float) -> float:
    """``alpha * L_forget + reg * L_reg`` of a paper method, written out from the pure losses with each
    batch part named explicitly (docs/science.md §3): forget answers, refusals to forget questions, retain
    answers, refusals to retain questions."""
    with torch.no_grad():
        z = {p: _logits(model, batch[p]) for p in batch}
        z_ref = {p: _logits(ref, batch[p]) for p in batch}
    lab = {p: batch[p]["labels"] for p in batch}

    def logp(logits, part):
        return sequence_logprob(logits[part], lab[part])

    forget_name, reg_name = name.split("+")
    forget = {
        "GA": lambda: ga_loss(z["forget"], lab["forget"]),
        "NPO": lambda: npo_loss(logp(z, "forget"), logp(z_ref, "forget"), beta),
        "DPO": lambda: dpo_loss(logp(z, "forget_idk"), logp(z, "forget"), logp(z_ref, "forget_idk"), logp(z_ref, "forget"), beta),
        "IDK": lambda: idk_loss(z["forget_idk"], lab["forget_idk"]),
        "ME": lambda: me_loss(z["forget"], lab["forget"]),
    }[forget_name]()
    regularization = {
        "GD": lambda: gd_loss(z["retain"], lab["retain"]),
        "KL": lambda: kl_loss(z["retain"], z_ref["retain"]),
        "AP": lambda: ap_loss(logp(z, "retain"), logp(z, "retain_idk"), beta),
    }[reg_name]()
    return float(alpha * forget + reg * regularization)


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_composite_methods_feed_each_part_to_its_term(name):
    # Distinct parts (forget / retain / refusal tokens from disjoint ranges), a reference model that
    # differs from the trained one, and coefficients that differ: a swap of two parts, of AP's two
    # arguments, of DPO's preferred / rejected, or of the two coefficients changes the value.
    model, ref = tiny_llama(seed=0), tiny_llama(seed=1)
    batch = tiny_batch()
    alpha, reg, beta = 0.7, 1.3, 0.5
    method = Method.parse(name, forget_coeff=alpha, regularization_coeff=reg, beta=beta)
    with torch.no_grad():
        out = compute_loss(method, model, batch, ref_model=ref)
    expected = _hand_composite(name, model, ref, batch, alpha, reg, beta)
    assert float(out.total) == pytest.approx(expected, rel=1e-6)
    assert float(out.parts["forget"]) * alpha + float(out.parts["regularization"]) * reg == pytest.approx(expected, rel=1e-6)
    # The check can fail: the same formula with the retain and forget parts swapped gives another value.
    swapped = dict(batch, forget=batch["retain"], retain=batch["forget"], forget_idk=batch["retain_idk"],
                   retain_idk=batch["forget_idk"])
    assert _hand_composite(name, model, ref, swapped, alpha, reg, beta) != pytest.approx(expected, rel=1e-3)
    if name.endswith("+AP"):
        with torch.no_grad():
            ap_swapped = ap_loss(sequence_logprob(_logits(model, batch["retain_idk"]), batch["retain_idk"]["labels"]),
                                 sequence_logprob(_logits(model, batch["retain"]), batch["retain"]["labels"]), beta)
        assert float(ap_swapped) != pytest.approx(float(out.parts["regularization"]), rel=1e-3)


# --------------------------------------------------------------------------------------------------
# Beyond the paper: SimNPO (docs/science-beyond-paper.md §1)
# --------------------------------------------------------------------------------------------------


def test_simnpo_by_hand():
    # L = -(2/β) mean_i log σ(-(β/|y_i|) logp_i - γ)
    logp, n, beta, gamma = [-6.0, -1.5], [3, 1], 2.5, 0.5
    terms = [logsig(-(beta / ni) * lp - gamma) for lp, ni in zip(logp, n)]  # args 4.5 and 3.25
    expected = -(2 / beta) * sum(terms) / 2
    got = simnpo_loss(torch.tensor(logp, dtype=torch.float64), torch.tensor(n), beta, gamma)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Length normalisation matters: the unnormalised form (NPO without reference) differs.
    unnormalised = -(2 / beta) * sum(logsig(-beta * lp - gamma) for lp in logp) / 2
    assert got.item() != pytest.approx(unnormalised, rel=1e-3)
    # γ = 0 at logp = 0 gives -(2/β) log(1/2) = (2/β) log 2.
    zero = simnpo_loss(torch.zeros(2, dtype=torch.float64), torch.tensor([4, 2]), beta, 0.0)
    assert zero.item() == pytest.approx(2 / beta * math.log(2), rel=1e-12)


def test_simnpo_registry_entry_counts_scored_tokens():
    # Through the registry on the hand logits: seq 0 scores 2 tokens, seq 1 scores 1.
    beta, gamma = 1.5, 0.25
    logp = [-sum(row) for row in HAND_TOKEN_NLL]
    expected = -(2 / beta) * sum(logsig(-(beta / len(row)) * lp - gamma) for row, lp in zip(HAND_TOKEN_NLL, logp)) / 2
    inputs = LossInputs(logits={"forget": HAND_LOGITS}, labels={"forget": HAND_LABELS})
    method = Method.parse("SimNPO+GD", beta=beta, gamma=gamma)
    assert FORGET_LOSSES["SimNPO"].fn(inputs, method).item() == pytest.approx(expected, rel=1e-10)
    assert not method.needs_ref_model and method.batch_parts == ("forget", "retain")
    # A label on column 0 is never scored (no logit precedes it) but counts in |y|, as OpenUnlearning's
    # simnpo.py divides by (labels != -100).sum(-1): seq 0 then has |y| = 3 for the same logp.
    first_labelled = HAND_LABELS.clone()
    first_labelled[0, 0] = 4
    inputs = LossInputs(logits={"forget": HAND_LOGITS}, labels={"forget": first_labelled})
    assert inputs.logprob("forget").tolist() == pytest.approx(logp)
    lengths = [3, 1]
    expected = -(2 / beta) * sum(logsig(-(beta / n) * lp - gamma) for n, lp in zip(lengths, logp)) / 2
    assert FORGET_LOSSES["SimNPO"].fn(inputs, method).item() == pytest.approx(expected, rel=1e-10)


def test_simnpo_accepts_open_unlearnings_delta_inside_beta():
    # OpenUnlearning's simnpo.py: loss = -(2/β) mean log σ(β (NLL_sum/|y| - δ)); its margin δ sits inside β.
    beta, delta = 4.5, 1.0
    logp = [-sum(row) for row in HAND_TOKEN_NLL]
    avg_nll = [-lp / len(row) for row, lp in zip(HAND_TOKEN_NLL, logp)]
    open_unlearning = -(2 / beta) * sum(logsig(beta * (a - delta)) for a in avg_nll) / 2
    inputs = LossInputs(logits={"forget": HAND_LOGITS}, labels={"forget": HAND_LABELS})
    with_delta = FORGET_LOSSES["SimNPO"].fn(inputs, Method.parse("SimNPO+GD", beta=beta, delta=delta)).item()
    assert with_delta == pytest.approx(open_unlearning, rel=1e-10)
    # ... which is the paper's γ = β δ = 4.5, not γ = 1 (the same number in the other spelling).
    with_gamma = FORGET_LOSSES["SimNPO"].fn(inputs, Method.parse("SimNPO+GD", beta=beta, gamma=beta * delta)).item()
    assert with_gamma == pytest.approx(open_unlearning, rel=1e-10)
    gamma_one = -(2 / beta) * sum(logsig(beta * a - 1.0) for a in avg_nll) / 2
    assert FORGET_LOSSES["SimNPO"].fn(inputs, Method.parse("SimNPO+GD", beta=beta, gamma=1.0)).item() == pytest.approx(
        gamma_one, rel=1e-10)
    assert gamma_one != pytest.approx(open_unlearning, rel=1e-2)
    assert simnpo_margin(beta, 0.0, delta) == 4.5 and simnpo_margin(beta, 0.5, 0.0) == 0.5
    with pytest.raises(StudyInputError, match="set one"):
        Method.parse("SimNPO+GD", gamma=1.0, delta=1.0)
    with pytest.raises(StudyInputError, match="delta"):
        Method.parse("SimNPO+GD", delta=float("inf"))
    from study.config import MethodConfig

    assert MethodConfig(name="SimNPO+GD", beta=4.5, delta=1.0).method().delta == 1.0


def test_simnpo_search_space_and_validation():
    space = {p.name: p for p in Method.parse("SimNPO+GD").search_space()}
    assert list(space) == ["lr", "forget_coeff", "beta", "gamma"]
    assert (space["beta"].low, space["beta"].high, space["beta"].log) == (0.5, 10.0, True)
    assert (space["gamma"].low, space["gamma"].high, space["gamma"].default) == (0.0, 2.0, 0.0)
    # NPO keeps the shared β range.
    npo_beta = {p.name: p for p in Method.parse("NPO+GD").search_space()}["beta"]
    assert (npo_beta.low, npo_beta.high) == (0.01, 1.0)
    assert Method.parse("SimNPO+KL", gamma=1.0).gamma == 1.0
    with pytest.raises(StudyInputError, match="gamma"):
        Method.parse("SimNPO+GD", gamma=float("nan"))
    assert "SimNPO+GD" not in PAPER_METHODS


# --------------------------------------------------------------------------------------------------
# Beyond the paper: RMU (docs/science-beyond-paper.md §2)
# --------------------------------------------------------------------------------------------------


def test_rmu_terms_by_hand():
    # B = 1, T = 3, d = 2; the third position is padding and must not count.
    h = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [100.0, 100.0]]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    control = 5.0 * torch.tensor([0.6, 0.8], dtype=torch.float64)  # c = 5, u = (0.6, 0.8): c·u = (3, 4)
    # pos 0: ((1-3)^2 + (2-4)^2) / 2 = 4; pos 1: (0 + (-1-4)^2) / 2 = 12.5; mean over 2 tokens.
    assert rmu_forget_loss(h, control, mask).item() == pytest.approx(8.25, rel=1e-12)
    ref = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    # pos 0: (0 + 1) / 2 = 0.5; pos 1: (4 + 4) / 2 = 4; mean 2.25.
    assert rmu_retain_loss(h, ref, mask).item() == pytest.approx(2.25, rel=1e-12)
    assert rmu_retain_loss(h, h, mask).item() == 0.0
    # Through the registry: total = forget_coeff * forget + regularization_coeff * α * retain.
    method = Method.parse("RMU", forget_coeff=2.0, rmu_alpha=10.0)
    labels = torch.tensor([[4, 5, -100]])  # the same two positions labelled
    inputs = LossInputs(logits={}, labels={}, hidden={"forget": h, "retain": h}, ref_hidden={"retain": ref},
                        attention_mask={"forget": mask, "retain": mask}, control=control,
                        hidden_labels={"forget": labels, "retain": labels})
    assert FORGET_LOSSES["RMU"].fn(inputs, method).item() == pytest.approx(8.25, rel=1e-12)
    assert REGULARIZERS["RMU"].fn(inputs, method).item() == pytest.approx(22.5, rel=1e-12)


def test_rmu_averaging_by_hand():
    # d = 1 and c·u = 0, so each position's error is h²: [[1, 4, 9], [16, 25, 36]].
    h = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)[..., None]
    attention = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[-100, 7, 8], [-100, 9, -100]])  # answers: positions 1-2 of row 0, 1 of row 1
    control = torch.zeros(1, dtype=torch.float64)
    inputs = LossInputs(logits={}, labels={}, hidden={"forget": h}, attention_mask={"forget": attention},
                        hidden_labels={"forget": labels}, control=control)
    # OpenUnlearning (default): per sequence over its answer tokens, then over the batch:
    # row 0 mean(4, 9) = 6.5, row 1 mean(25) = 25 -> 15.75.
    default = Method.parse("RMU")
    assert default.rmu_averaging == "answer_per_sequence"
    assert FORGET_LOSSES["RMU"].fn(inputs, default).item() == pytest.approx(15.75, rel=1e-12)
    # attended_tokens: every attended token of the batch pooled: (1 + 4 + 9 + 16 + 25) / 5 = 11.
    pooled = Method.parse("RMU", rmu_averaging="attended_tokens")
    assert FORGET_LOSSES["RMU"].fn(inputs, pooled).item() == pytest.approx(11.0, rel=1e-12)
    # The two ingredients separately: answer tokens pooled (4 + 9 + 25) / 3; attended per row (14/3 + 41/2) / 2.
    assert rmu_forget_loss(h, control, labels != -100, per_sequence=False).item() == pytest.approx(38 / 3)
    assert rmu_forget_loss(h, control, attention, per_sequence=True).item() == pytest.approx((14 / 3 + 41 / 2) / 2)
    with pytest.raises(StudyInputError, match="rmu_averaging"):
        Method.parse("RMU", rmu_averaging="tokens")


def test_rmu_control_vector_layer_rule_and_trained_names():
    u = rmu_control_vector(8, 6.5, seed=1001)
    assert u.shape == (8,) and u.dtype == torch.float32 and (u >= 0).all()
    assert u.norm().item() == pytest.approx(6.5, rel=1e-6)
    r = torch.rand(8, generator=torch.Generator().manual_seed(1001))
    torch.testing.assert_close(u, 6.5 * r / r.norm())
    assert torch.equal(u, rmu_control_vector(8, 6.5, seed=1001))
    assert not torch.equal(u, rmu_control_vector(8, 6.5, seed=1002))
    # Published layer 7 is kept on deep models, clamped to layers - 2 on shallow ones.
    assert [rmu_layer_for(7, n) for n in (32, 30, 9, 8, 4, 2)] == [7, 7, 7, 6, 2, 0]
    with pytest.raises(StudyInputError, match="1 layer"):
        rmu_layer_for(7, 1)
    assert rmu_trained_layers(7) == (5, 6, 7) and rmu_trained_layers(1) == (0, 1)
    assert rmu_trainable("model.layers.5.mlp.down_proj.weight", 7)
    assert not rmu_trainable("model.layers.15.mlp.down_proj.weight", 7)  # "5" must be the whole index
    assert not rmu_trainable("model.layers.4.mlp.down_proj.weight", 7)
    assert not rmu_trainable("model.layers.7.mlp.up_proj.weight", 7)
    assert not rmu_trainable("model.layers.7.self_attn.o_proj.weight", 7)


def test_rmu_registry_and_search_space():
    method = Method.parse("RMU")
    assert (method.forget_loss, method.regularizer, str(method)) == ("RMU", "RMU", "RMU")
    assert "RMU" not in PAPER_METHODS and "RMU+RMU" not in PAPER_METHODS
    assert method.batch_parts == ("forget", "retain") and method.logit_parts == ()
    assert method.hidden_state_parts == ("forget", "retain") and method.ref_hidden_state_parts == ("retain",)
    assert method.needs_live_ref_model and method.steers_hidden_states and method.ref_cache_keys == ()
    space = {p.name: p for p in method.search_space()}
    assert list(space) == ["lr", "forget_coeff", "rmu_layer", "rmu_steering_coeff", "rmu_alpha"]
    assert (space["rmu_layer"].default, space["rmu_layer"].integer) == (7, True)
    assert (space["rmu_steering_coeff"].default, space["rmu_alpha"].default) == (6.5, 1200.0)
    assert (method.rmu_layer, method.rmu_steering_coeff, method.rmu_alpha) == (7, 6.5, 1200.0)
    # RMU+GD reads the retain logits (GD) and the forget hidden states; no reference model.
    rmu_gd = Method.parse("RMU+GD")
    assert rmu_gd.logit_parts == ("retain",) and not rmu_gd.needs_ref_model
    assert not Method.parse("NPO+KL").steers_hidden_states
    for bad in ({"rmu_layer": -1}, {"rmu_layer": 2.5}, {"rmu_alpha": float("inf")}, {"rmu_steering_coeff": -1.0}):
        with pytest.raises(StudyInputError):
            Method.parse("RMU", **bad)


def _layer_outputs(model, part) -> list[torch.Tensor]:
    """Each decoder layer's output, captured by forward hooks (independent of ``output_hidden_states``)."""
    captured = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out))
             for layer in model.model.layers]
    try:
        with torch.no_grad():
            model(input_ids=part["input_ids"], attention_mask=part["attention_mask"])
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_rmu_compute_loss_reads_the_steered_layer_output():
    model, ref = tiny_llama(0), tiny_llama(1).eval()
    batch, method = tiny_batch(), Method.parse("RMU", forget_coeff=0.5, rmu_alpha=3.0)
    steering = steering_for(method, model, seed=7)
    assert steering.layer == 0  # 2 layers: min(7, 2 - 2)
    out = compute_loss(method, model, batch, ref_model=ref, steering=steering)
    h_forget = _layer_outputs(model, batch["forget"])[0]
    h_retain, h_ref = _layer_outputs(model, batch["retain"])[0], _layer_outputs(ref, batch["retain"])[0]

    def per_answer_mean(error: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # error [B, T]
        return torch.stack([error[b][labels[b] != -100].mean() for b in range(len(labels))]).mean()

    forget = per_answer_mean((h_forget - steering.control).pow(2).mean(-1), batch["forget"]["labels"])
    retain = per_answer_mean((h_retain - h_ref).pow(2).mean(-1), batch["retain"]["labels"])
    torch.testing.assert_close(out.parts["forget"], forget)
    torch.testing.assert_close(out.parts["regularization"], 3.0 * retain)
    torch.testing.assert_close(out.total.detach(), 0.5 * forget + 3.0 * retain)
    # attended_tokens: every attended token of the batch in one pool.
    pooled = compute_loss(Method.parse("RMU", forget_coeff=0.5, rmu_alpha=3.0, rmu_averaging="attended_tokens"),
                          model, batch, ref_model=ref, steering=steering)
    attn = batch["forget"]["attention_mask"].bool()
    torch.testing.assert_close(pooled.parts["forget"], (h_forget - steering.control).pow(2).mean(-1)[attn].mean())
    # At θ = ref the retain term vanishes.
    same = compute_loss(method, model, batch, ref_model=copy.deepcopy(model).eval(), steering=steering)
    assert same.parts["regularization"].item() == 0.0
    with pytest.raises(ValueError, match="steering"):
        compute_loss(method, model, batch, ref_model=ref)


def _five_layer_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return LlamaForCausalLM(config).float()


def _rmu_steps(model, ref, steps: int = 5) -> tuple[list[str], set[str], list[float]]:
    """RMU (layer 7 -> 3 on 5 layers) for ``steps`` AdamW steps: (trained names, moved names, forget losses)."""
    from study.training.train import adamw, adamw_param_groups

    method, batch = Method.parse("RMU", rmu_layer=7), tiny_batch()
    steering = steering_for(method, model, seed=1001)
    assert steering.layer == 3  # min(7, 5 - 2)
    trained = freeze_untrained(method, model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = adamw(adamw_param_groups(model, weight_decay=0.01), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = compute_loss(method, model, batch, ref_model=ref, steering=steering)
        assert torch.isfinite(out.total) and all(torch.isfinite(v) for v in out.parts.values())
        losses.append(out.parts["forget"].item())
        optimizer.zero_grad()
        out.total.backward()
        optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return trained, moved, losses


def test_rmu_trains_only_the_chosen_mlp_weights():
    from types import SimpleNamespace

    model = _five_layer_llama()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    trained, moved, losses = _rmu_steps(model, ref)
    assert trained == [f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)]
    assert moved == set(trained)
    assert losses[-1] < losses[0]  # hidden states of layer 3 move towards c·u on forget inputs
    # A model without such parameters is refused rather than trained on nothing.
    not_llama = torch.nn.Linear(2, 2)
    not_llama.config = SimpleNamespace(num_hidden_layers=5)
    with pytest.raises(StudyInputError, match="down_proj"):
        freeze_untrained(Method.parse("RMU"), not_llama)


def test_a_method_says_which_weights_it_trains():
    """The registry, not the training loop, says what is trained: RMU's three down-projections in either
    slot (RMU+GD too), every weight for the others (nothing is frozen, nothing touched)."""
    assert Method.parse("GA+GD").trained_weights(5) is None
    model = _five_layer_llama()
    model.model.embed_tokens.requires_grad_(False)  # set by the caller: a method that trains all leaves it
    assert freeze_untrained(Method.parse("NPO+KL"), model) is None
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" not in n)
    for name in ("RMU", "RMU+GD", "GA+RMU"):
        model = _five_layer_llama()
        trained = freeze_untrained(Method.parse(name, rmu_layer=2), model)
        assert trained == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)], name
        assert [n for n, p in model.named_parameters() if p.requires_grad] == trained


def test_rmu_with_lora_trains_the_chosen_down_projection_adapters():
    from study.trial.runner import frozen_copy
    from study.training.train import apply_lora

    model = apply_lora(_five_layer_llama(), rank=4, seed=0)  # adapters on every projection, down_proj included
    ref = frozen_copy(model)  # as the runner builds RMU's reference: a frozen copy of the wrapped model
    trained, moved, losses = _rmu_steps(model, ref)
    prefix = "base_model.model.model.layers"
    assert trained == [f"{prefix}.{i}.mlp.down_proj.lora_{ab}.default.weight" for i in (1, 2, 3) for ab in "AB"]
    assert moved == set(trained)  # the frozen base weights and every other adapter stay put
    assert losses[-1] < losses[0]
    assert not rmu_trainable(f"{prefix}.3.mlp.down_proj.base_layer.weight", 3)
    assert not rmu_trainable(f"{prefix}.3.mlp.up_proj.lora_A.default.weight", 3)


@pytest.mark.parametrize("lora", [False, True])
def test_rmu_with_gradient_checkpointing_gives_the_same_gradients(lora):
    """Gradient checkpointing (the GPU path's setting) recomputes the decoder layers in backward; RMU
    freezes the embeddings, so no checkpointed layer's input needs grad: the trained weights must get
    their gradients all the same, equal to those without checkpointing."""
    from study.training.train import apply_lora

    grads = []
    for checkpointing in (False, True):
        model = _five_layer_llama()
        if checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if lora:
            model = apply_lora(model, rank=4, seed=0)
        model.train()
        assert model.is_gradient_checkpointing == checkpointing
        ref = copy.deepcopy(model).eval().requires_grad_(False)
        method = Method.parse("RMU", rmu_layer=7)
        steering = steering_for(method, model, seed=1001)
        trained = freeze_untrained(method, model)
        out = compute_loss(method, model, tiny_batch(), ref_model=ref, steering=steering)
        out.total.backward()
        params = dict(model.named_parameters())
        grads.append({n: params[n].grad for n in trained})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[1].items():
        assert grad is not None, f"{name}: no gradient under gradient checkpointing"
        torch.testing.assert_close(grad, grads[0][name], rtol=1e-5, atol=1e-7)
    # Some gradient is non-zero (LoRA's A gets none at its first step: B starts at 0).
    assert any(g.abs().sum() > 0 for g in grads[1].values())
