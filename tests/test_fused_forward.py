"""Tests of the fused forward (``study.methods.compute_loss(fused=True)``, issue 14): every batch part of a
step through the model as one batch, the reference model's parts as one batch, the losses read from each
part's slice. Its losses and gradients must be those of one forward per part (within 1e-5).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from study.inputs.batches import collate  # noqa: E402
from study.methods import (  # noqa: E402
    Method,
    compute_loss,
    dropout_active,
    first_logit_column,
    fuse_parts,
    linear_lm_head,
    ref_cache_key,
    reference_logprobs,
    split_fused,
    steering_for,
)

VOCAB, EOS, MAX_LENGTH = 64, 2, 14
TOL = 1e-5


def tiny_llama(seed: int, **config):
    from transformers import LlamaConfig, LlamaForCausalLM

    values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=32, pad_token_id=EOS, bos_token_id=1, eos_token_id=EOS)
    values.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**values)).float()


def encode(question: list[int], answer: list[int], labels: str = "answer") -> dict[str, torch.Tensor]:
    """As ``study.inputs.models.encode_qa`` on token ids: EOS-padded to MAX_LENGTH; ``answer`` labels = the answer
    and one EOS label, ``full`` = every position, padding included (ME+GD's ``mask=false``)."""
    ids = question + answer
    pad = MAX_LENGTH - len(ids)
    input_ids = ids + [EOS] * pad
    if labels == "full":
        label = list(input_ids)
    else:
        label = [-100] * len(question) + answer + [EOS] + [-100] * (pad - 1)
    return {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
            "labels": torch.tensor(label)}


def items(method: Method) -> list[dict]:
    """Three forget items with their parts; forget tokens in [3, 30), retain in [30, 58), refusals 58-63.
    Questions and answers of different lengths, so the collated parts have different widths."""
    gen = torch.Generator().manual_seed(5)

    def tokens(low: int, high: int, n: int) -> list[int]:
        return torch.randint(low, high, (n,), generator=gen).tolist()

    forget_labels = "answer" if method.forget_mask_default else "full"
    out = []
    for i in range(3):
        fq, fa = tokens(3, 30, 3 + i), tokens(3, 30, 2 + 2 * i)
        rq, ra = tokens(30, 58, 2 + i), tokens(30, 58, 4 - i)
        idk = tokens(58, 64, 2 + i % 2)
        out.append({"index": i, "forget": encode(fq, fa, forget_labels), "forget_idk": encode(fq, idk),
                    "retain": encode(rq, ra), "retain_idk": encode(rq, idk), "forget_retain_answer": encode(fq, ra)})
    return out


def batch_for(method: Method) -> dict:
    """Collated as ``train_loop`` collates: trimmed, except KL's parts at the full MAX_LENGTH."""
    keep = {"index", *method.batch_parts}
    return collate([{k: v for k, v in it.items() if k in keep} for it in items(method)],
                   full_width_parts=method.ref_logit_parts)


def loss_and_grads(method: Method, model, ref, batch, fused: bool, steering=None):
    model.zero_grad(set_to_none=True)
    out = compute_loss(method, model, batch, ref_model=ref, steering=steering, fused=fused)
    out.total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def count_calls(model) -> dict:
    """Counts forward calls (``n``) and records the ``logits_to_keep`` of each (``keep``)."""
    calls = {"n": 0, "keep": []}

    def hook(module, args, kwargs):
        calls["n"] += 1
        calls["keep"].append(kwargs.get("logits_to_keep"))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


class FullLogits(torch.nn.Module):
    """The same model without ``logits_to_keep`` in its signature: every column's logits, as before
    the LM head skipped the unlabelled ones."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, input_ids, attention_mask, output_hidden_states=False):
        return self.module(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)


METHODS = ["ME+GD", "NPO+KL", "IDK+AP", "GA+KL", "DPO+GD", "DPO+KL", "NPO+GD", "LLMU", "SimNPO+GD", "RMU", "RMU+GD",
           "ME+KL"]


@pytest.mark.parametrize("name", METHODS)
def test_fused_forward_gives_the_separate_losses_and_gradients(name):
    method = Method.parse(name, beta=0.5, rmu_alpha=3.0)
    model, ref = tiny_llama(0), tiny_llama(1).eval().requires_grad_(False)
    model.train()
    steering = steering_for(method, model, seed=3)
    if steering is not None:  # RMU trains a few MLP weights; here every weight gets its gradient compared
        assert steering.layer == 1
    batch = batch_for(method)
    widths = {batch[p]["input_ids"].shape[1] for p in method.batch_parts}
    if len(method.batch_parts) > 1:
        assert len(widths) > 1 or method.ref_logit_parts, widths  # parts of different widths get padded
    if method.ref_logit_parts:
        assert batch["retain"]["input_ids"].shape[1] == MAX_LENGTH  # KL over every padded position
    model_calls, ref_calls = count_calls(model), count_calls(ref)

    separate, g_separate = loss_and_grads(method, model, ref, batch, fused=False, steering=steering)
    calls_separate = (model_calls["n"], ref_calls["n"])
    model_calls["n"] = ref_calls["n"] = 0
    head_inputs = []
    handle = model.lm_head.register_forward_hook(lambda m, args, out: head_inputs.append(tuple(args[0].shape[:2])))
    fused, g_fused = loss_and_grads(method, model, ref, batch, fused=True, steering=steering)
    handle.remove()
    calls_fused = (model_calls["n"], ref_calls["n"])
    # Full logits from a model that cannot skip columns: the baseline before this change.
    full, g_full = loss_and_grads(method, FullLogits(model), FullLogits(ref), batch, fused=False, steering=steering)
    g_full = {n.removeprefix("module."): g for n, g in g_full.items()}

    # One forward of each model per step, where there were one per part.
    n_ref_parts = len(set(method.ref_logit_parts) | set(method.ref_logprob_parts) | set(method.ref_hidden_state_parts))
    assert calls_separate == (len(method.batch_parts), n_ref_parts)
    assert calls_fused == (1, min(1, n_ref_parts))

    # The LM head runs on each part's rows from the column before its first label (every column where a
    # loss reads every position: KL), or on one position when no loss reads logits (RMU).
    # The model's own head call sees the fused batch's last position only (``logits_to_keep=1``).
    one_position = [(sum(batch[p]["labels"].shape[0] for p in method.batch_parts), 1)]
    per_part = [(batch[p]["labels"].shape[0], batch[p]["labels"].shape[1] - (
        0 if p in method.ref_logit_parts else first_logit_column(batch[p]["labels"]))) for p in method.logit_parts]
    assert head_inputs == one_position + per_part
    if method.forget_mask_default and not method.ref_logit_parts and method.logit_parts:  # answer-only labels
        assert all(w < batch[p]["labels"].shape[1] for (_, w), p in zip(per_part, method.logit_parts))

    for other, g_other in ((separate, g_separate), (full, g_full)):
        assert other.parts.keys() == fused.parts.keys()
        for key in other.parts:
            torch.testing.assert_close(fused.parts[key], other.parts[key], rtol=TOL, atol=TOL, msg=key)
        assert g_other.keys() == g_fused.keys() and g_other
        for n in g_other:
            scale = max(1.0, float(g_other[n].abs().max()))
            torch.testing.assert_close(g_fused[n], g_other[n], rtol=0, atol=TOL * scale, msg=n)
    assert float(separate.total.detach()) != 0.0


@pytest.mark.parametrize("name", ["NPO+GD", "DPO+KL"])
def test_fused_reference_log_probs_equal_the_cache(name):
    """Uncached reference log-probs from the fused reference forward equal :func:`reference_logprobs`,
    the numerics that fill the cache."""
    method = Method.parse(name)
    model, ref = tiny_llama(0), tiny_llama(1).eval()
    batch = batch_for(method)
    cache = {ref_cache_key(p): reference_logprobs(ref, batch[p]) for p in method.ref_logprob_parts}
    cached = compute_loss(method, model, {**batch, **cache}, ref_model=ref)
    live = compute_loss(method, model, batch, ref_model=ref)
    torch.testing.assert_close(live.total, cached.total, rtol=TOL, atol=TOL)
    assert float(live.parts["forget"]) != 0.0


def test_fuse_parts_right_pads_and_split_fused_cuts_each_part_back():
    a = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 0]]),
         "labels": torch.tensor([[-100, 6, 2]])}
    b = {"input_ids": torch.tensor([[8, 9], [10, 11]]), "attention_mask": torch.tensor([[1, 1], [1, 0]]),
         "labels": torch.tensor([[-100, 9], [10, -100]])}
    fused = fuse_parts([a, b])
    assert fused["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0], [10, 11, 0]]
    assert fused["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 0], [1, 0, 0]]
    assert fused["labels"].tolist() == [[-100, 6, 2], [-100, 9, -100], [10, -100, -100]]
    out = torch.arange(3 * 3 * 2).view(3, 3, 2)  # an output [sum B, max T, V]
    first, second = split_fused(out, [a, b])
    assert torch.equal(first, out[:1]) and torch.equal(second, out[1:, :2])


def test_linear_lm_head_only_where_logits_are_the_head_of_the_last_hidden_state():
    model = tiny_llama(0).eval()
    assert linear_lm_head(model) is model.lm_head
    ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits, rtol=0, atol=0)
    assert linear_lm_head(FullLogits(model)) is None  # no config, no logits_to_keep: the shared path
    other = tiny_llama(0)
    other.config.model_type = "gemma2"  # soft-capped logits: not a plain head
    assert linear_lm_head(other) is None


def test_active_dropout_keeps_separate_forwards():
    method = Method.parse("ME+GD")
    model = tiny_llama(0, attention_dropout=0.3)
    batch = batch_for(method)
    calls = count_calls(model)
    model.train()
    assert dropout_active(model)
    compute_loss(method, model, batch, fused=True)
    assert calls["n"] == 2  # forget and retain apart: dropout masks as without fusion
    model.eval()
    assert not dropout_active(model)
    calls["n"] = 0
    compute_loss(method, model, batch, fused=True)
    assert calls["n"] == 1
    assert not dropout_active(tiny_llama(0).train())


@pytest.fixture(scope="module")
def tiny():
    from study.inputs import models

    return models.load("tiny-llama", device="cpu")


@pytest.mark.parametrize("name", ["IDK+AP", "NPO+KL"])
def test_unlearn_fused_and_separate_follow_the_same_trajectory(tiny, name):
    """Whole runs through the real data pipeline, with gradient accumulation: same step losses and weights."""
    from study.trial import runner
    from study.training import train as T
    from study.config import TrainConfig
    from study.inputs.data import BuiltinSource
    from study.inputs.scenarios import load_scenario

    scenario = load_scenario(BuiltinSource(n_authors=4), "continual", "forget01", 1, ds_size=2)
    method = Method.parse(name)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, grad_accum=2, max_length=64)
    runs = []
    for fused in (True, False):
        model = copy.deepcopy(tiny.model)
        ref = runner.frozen_copy(tiny.model) if method.needs_ref_model else None
        result = T.unlearn(model, tiny.tokenizer, tiny.prompt, method, scenario, cfg, "answer", ref_model=ref,
                           fused_forward=fused)
        runs.append((result.history, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (fused_history, fused_params), (separate_history, separate_params) = runs
    assert len(fused_history) == T.max_steps_for(len(scenario.forget), 1, 4) >= 2
    for a, b in zip(fused_history, separate_history):
        assert a.loss == pytest.approx(b.loss, rel=TOL, abs=TOL)
        assert a.parts.keys() == b.parts.keys()
        assert all(a.parts[k] == pytest.approx(b.parts[k], rel=TOL, abs=TOL) for k in a.parts)
    moved = max(float((fused_params[n] - tiny.model.state_dict()[n]).abs().max()) for n in fused_params)
    assert moved > 1e-4
    for n in fused_params:
        torch.testing.assert_close(fused_params[n], separate_params[n], rtol=1e-4, atol=1e-6)


def test_unlearn_takes_the_forward_mode_from_the_train_config_unless_told(tiny, monkeypatch):
    """``train.fused_forward`` (``--set train.fused_forward=false``) reaches every step's compute_loss;
    an explicit ``unlearn(fused_forward=...)`` overrides it."""
    from study import methods
    from study.training import train as T
    from study.config import TrainConfig
    from study.inputs.data import BuiltinSource
    from study.inputs.scenarios import load_scenario

    scenario = load_scenario(BuiltinSource(n_authors=4), "fictitious", "forget01", 1, ds_size=2)
    method = Method.parse("GA+GD")
    seen = []
    real = methods.compute_loss

    def spy(*args, fused=True, **kwargs):
        seen.append(fused)
        return real(*args, fused=fused, **kwargs)

    monkeypatch.setattr(methods, "compute_loss", spy)
    fused = TrainConfig(lr=1e-3, epochs=1, batch_size=2, grad_accum=1, max_length=64)
    separate = dataclasses.replace(fused, fused_forward=False)
    cases = [(fused, None, True), (separate, None, False), (separate, True, True)]
    for cfg, explicit, expected in cases:
        seen.clear()
        T.unlearn(copy.deepcopy(tiny.model), tiny.tokenizer, tiny.prompt, method, scenario, cfg, "answer",
                  fused_forward=explicit)
        assert seen and set(seen) == {expected}, (cfg.fused_forward, explicit, seen)
