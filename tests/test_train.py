"""Tests of study.training.train: the schedule, gradient accumulation, stopping, events, seeds, pairing, the
reference cache, continual runs, LoRA, gradient checkpointing, fp32 master weights and checkpoints.

Fast tests use a two-parameter toy model or the ~3M-parameter random ``tiny-llama``; the slow test
fine-tunes the real SmolLM2-135M into a target model that has memorised its forget set.
"""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from study.inputs import models
from study.trial import runner  # noqa: E402
from study.training import train as T  # noqa: E402
from study.config import RunConfig, TrainConfig  # noqa: E402
from study.inputs.data import BuiltinSource  # noqa: E402
from study.inputs.batches import UnlearningDataset, collate  # noqa: E402
from study.inputs.scenarios import load_scenario  # noqa: E402
from study.methods import Method, mean_nll, npo_loss, sequence_logprob  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Fixtures


class ToyData(torch.utils.data.Dataset):
    """``n`` items of one batch part; item ``i`` has input ``[i, 1]``."""

    def __init__(self, n: int):
        self.items = [
            {"index": i, "retain": {"input_ids": torch.tensor([i, 1]), "attention_mask": torch.ones(2, dtype=torch.long),
                                    "labels": torch.tensor([i, 1])}}
            for i in range(n)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def toy_loss(model, batch):
    x = batch["retain"]["input_ids"].float()
    loss = (model(x) ** 2).mean()
    return loss, {"toy": loss.detach()}


def toy_model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Linear(2, 1)


def run_toy(n, epochs, batch_size, grad_accum, lr=1e-3, callbacks=(), **kwargs) -> T.TrainResult:
    return T.train_loop(toy_model(), ToyData(n), toy_loss, lr=lr, epochs=epochs, batch_size=batch_size,
                        grad_accum=grad_accum, callbacks=callbacks, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llama", device="cpu")


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(BuiltinSource(n_authors=4), "continual", "forget01", 1, ds_size=2)


def nll_loss(model, batch):
    part = batch["retain"]
    loss = mean_nll(model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits, part["labels"])
    return loss, {"nll": loss.detach()}


def params_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def same_length_dataset(n: int, length: int = 8, vocab: int = 500, seed: int = 0) -> ToyData:
    """``n`` random sequences, every position labelled: each item scores exactly ``length - 1`` tokens,
    so a token mean over a micro-batch is also the mean of per-item means."""
    generator = torch.Generator().manual_seed(seed)
    data = ToyData(0)
    for i in range(n):
        ids = torch.randint(vocab, (length,), generator=generator)
        data.items.append({"index": i, "retain": {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long),
                                                  "labels": ids.clone()}})
    return data


# --------------------------------------------------------------------------------------------------
# Schedule


SCHEDULE_CASES = [
    # (n_items, epochs, batch, accum, expected max_steps, expected warm-up)
    (20, 3, 2, 2, 15, 5),  # 5 steps per epoch: warm-up over them
    (10, 2.5, 2, 2, 6, 2),  # fractional epochs: floor(2.5 * 10 / 4) = 6
    (6, 3, 4, 1, 4, 0),  # 1 step per epoch: no warm-up
    (3, 1, 4, 1, 1, 0),  # fewer items than a batch: at least one step
]


def hand_lr(step: int, lr: float, warmup: int, max_steps: int) -> float:
    """docs/science.md §4 written out: ``lr * s / W`` while ``s < W``, then ``lr * (S - s) / (S - W)``."""
    return lr * step / warmup if step < warmup else lr * (max_steps - step) / (max_steps - warmup)


@pytest.mark.parametrize("n, epochs, batch, accum, steps, warmup", SCHEDULE_CASES)
def test_lr_schedule_matches_the_formula_step_by_step(n, epochs, batch, accum, steps, warmup):
    lr = 1e-3
    history = run_toy(n, epochs, batch, accum, lr=lr).history
    assert T.max_steps_for(n, epochs, batch * accum) == steps == len(history)
    assert math.floor(epochs * n / (batch * accum)) == steps or steps == 1
    assert T.warmup_steps_for(n, batch * accum) == warmup
    assert [e.step for e in history] == list(range(1, steps + 1))
    expected = [hand_lr(s, lr, warmup, steps) for s in range(steps)]
    assert [e.lr for e in history] == pytest.approx(expected, rel=1e-12, abs=1e-18)
    if warmup:
        assert history[0].lr == 0.0 and history[warmup].lr == pytest.approx(lr)
    else:
        assert history[0].lr == pytest.approx(lr)


@pytest.mark.parametrize("n, epochs, batch, accum, steps, warmup", SCHEDULE_CASES)
def test_lr_schedule_matches_transformers(n, epochs, batch, accum, steps, warmup):
    from transformers import get_linear_schedule_with_warmup

    lr = 1e-3
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    theirs = []
    for _ in range(steps):
        theirs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    ours = [e.lr for e in run_toy(n, epochs, batch, accum, lr=lr).history]
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-18)


# --------------------------------------------------------------------------------------------------
# Gradient accumulation


def test_accumulation_gives_the_effective_batch_update(tiny):
    data = same_length_dataset(8)
    runs = {}
    for batch, accum in ((2, 2), (4, 1)):
        model = copy.deepcopy(tiny.model)
        result = T.train_loop(model, data, nll_loss, lr=1e-3, epochs=1.5, batch_size=batch, grad_accum=accum, seed=5)
        runs[batch, accum] = (result.history, params_of(model))
    base_history, base_params = runs[4, 1]
    assert len(base_history) == 3 and base_history[1].lr > 0
    for key, (history, params) in runs.items():
        assert [e.loss for e in history] == pytest.approx([e.loss for e in base_history], rel=1e-5), key
        # Adam hides a wrong gradient scale in the update, the gradient norm does not.
        assert [e.grad_norm for e in history] == pytest.approx([e.grad_norm for e in base_history], rel=1e-5), key
        for name in base_params:
            torch.testing.assert_close(params[name], base_params[name], rtol=1e-5, atol=1e-6)

    # Step 1 by hand: the gradient of the mean loss over the first 4 indices of the stream.
    model = copy.deepcopy(tiny.model)
    stream = T.index_stream(8, 5)
    first = [next(stream) for _ in range(4)]
    loss, _ = nll_loss(model, collate([data[i] for i in first]))
    loss.backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert base_history[0].grad_norm == pytest.approx(float(norm), rel=1e-5)
    assert runs[2, 2][0][0].grad_norm == pytest.approx(float(norm), rel=1e-5)
    assert base_history[0].loss == pytest.approx(loss.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------------
# Stopping, events, seeds


def test_non_finite_loss_stops_the_run_and_names_the_step():
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, parts = toy_loss(model, batch)
        if calls["n"] == 2:
            loss = loss * float("nan")
        return loss, parts

    model = toy_model()
    with pytest.raises(T.NonFiniteLoss, match=r"step 2/5"):
        T.train_loop(model, ToyData(10), loss_fn, lr=1e-3, epochs=1, batch_size=2, grad_accum=1)
    assert calls["n"] == 2

    calls["n"] = -10**9  # an infinite loss too
    with pytest.raises(T.NonFiniteLoss, match=r"inf at step 1/"):
        T.train_loop(toy_model(), ToyData(10), lambda m, b: (toy_loss(m, b)[0] + float("inf"), {}), lr=1e-3,
                     epochs=1, batch_size=2, grad_accum=1)


class Recorder:
    def __init__(self):
        self.steps: list[T.StepEvent] = []
        self.epochs: list[T.EpochEvent] = []
        self.training_during_epoch: list[bool] = []

    def on_step(self, event):
        self.steps.append(event)

    def on_epoch(self, event):
        self.epochs.append(event)
        self.training_during_epoch.append(event.model.training)


def test_epoch_events_number_each_epoch_once_when_batches_straddle_epochs():
    # 10 items, batches of 4, 2 epochs: 5 steps; step 3 (12 items, 1.2 epochs) completes epoch 1, and
    # step 5 (20 items) completes epoch 2. Per-epoch pruning reports these numbers to Optuna.
    recorder = Recorder()
    T.train_loop(toy_model(), ToyData(10), toy_loss, lr=1e-3, epochs=2, batch_size=4, grad_accum=1, callbacks=[recorder])
    assert [(e.epoch, e.step) for e in recorder.epochs] == [(1, 3), (2, 5)]
    recorder = Recorder()  # 5 epochs: 12 steps, 48 items; the last 0.8 epoch counts as epoch 5
    T.train_loop(toy_model(), ToyData(10), toy_loss, lr=1e-3, epochs=5, batch_size=4, grad_accum=1, callbacks=[recorder])
    assert [(e.epoch, e.step) for e in recorder.epochs] == [(1, 3), (2, 5), (3, 8), (4, 10), (5, 12)]


@pytest.mark.parametrize("epochs, expected_epoch_steps", [(3, [6, 12, 18]), (2.5, [6, 12, 15])])
def test_events(epochs, expected_epoch_steps):
    recorder = Recorder()
    model = toy_model()
    result = T.train_loop(model, ToyData(12), toy_loss, lr=1e-3, epochs=epochs, batch_size=2, grad_accum=1,
                          callbacks=[recorder])
    max_steps = T.max_steps_for(12, epochs, 2)
    assert len(recorder.steps) == max_steps == result.steps
    assert recorder.steps == result.history
    for s, event in enumerate(recorder.steps):
        assert event.step == s + 1 and event.max_steps == max_steps
        assert set(event.parts) == {"toy"} and event.parts["toy"] == pytest.approx(event.loss)
        assert event.lr == pytest.approx(T.lr_at(s, 1e-3, T.warmup_steps_for(12, 2), max_steps))
        assert math.isfinite(event.grad_norm) and event.grad_norm > 0
        assert event.epoch == pytest.approx((s + 1) * 2 / 12)
    assert [e.epoch for e in recorder.epochs] == [1, 2, 3]
    assert [e.step for e in recorder.epochs] == expected_epoch_steps
    assert all(e.model is model for e in recorder.epochs)
    assert recorder.training_during_epoch == [False, False, False]
    assert not model.training


def test_same_seed_same_parameters_other_seed_differs(tiny, scenario):
    from study.inputs.batches import QADataset

    data = QADataset(scenario.forget, tiny.tokenizer, tiny.prompt, 64)
    finals = []
    for seed in (1, 1, 2):
        model = copy.deepcopy(tiny.model)
        T.train_loop(model, data, nll_loss, lr=1e-3, epochs=0.4, batch_size=2, grad_accum=1, seed=seed)  # 2 steps
        finals.append(params_of(model))
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert not all(torch.equal(finals[0][k], finals[2][k]) for k in finals[0])
    start = params_of(tiny.model)
    assert not all(torch.equal(finals[0][k], start[k]) for k in start)


def test_index_stream_is_a_permutation_per_epoch():
    stream = T.index_stream(7, 3)
    epochs = [[next(stream) for _ in range(7)] for _ in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert epochs[0] != epochs[1]
    again = T.index_stream(7, 3)
    assert [next(again) for _ in range(21)] == sum(epochs, [])


def test_world_size_without_engine_is_refused():
    with pytest.raises(ValueError, match="DeepSpeed engine"):
        run_toy(8, 1, 2, 1, world_size=2, rank=0)


# --------------------------------------------------------------------------------------------------
# Pairing


def test_pairing_is_fixed_per_index_and_leaves_the_global_rng_alone(tiny, scenario):
    needs = {"forget", "forget_idk", "retain", "retain_idk"}

    def build(global_seed: int) -> UnlearningDataset:
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        dataset = UnlearningDataset(scenario.forget, scenario.retain, scenario.refusals, tiny.tokenizer, tiny.prompt,
                                    64, needs)
        assert torch.equal(torch.get_rng_state(), before), "building the dataset used the global RNG"
        return dataset

    a, b = build(1), build(12345)
    assert len(a) == len(scenario.forget)
    for i in range(len(a)):
        for part in needs:
            for key in ("input_ids", "labels", "attention_mask"):
                assert torch.equal(a[i][part][key], b[i][part][key])
        assert a[i] is a[i]  # the same item every epoch
    # Each index's partners, drawn from a local generator seeded by the index (docs/science.md §3).
    for i in range(len(a)):
        generator = torch.Generator().manual_seed(i)
        j = int(torch.randint(len(scenario.retain), (1,), generator=generator))
        k = int(torch.randint(len(scenario.refusals), (1,), generator=generator))
        retain = models.encode_qa(tiny.tokenizer, tiny.prompt, scenario.retain[j]["question"],
                                  scenario.retain[j]["answer"], 64)
        idk = models.encode_qa(tiny.tokenizer, tiny.prompt, scenario.forget[i]["question"], scenario.refusals[k], 64)
        assert torch.equal(a[i]["retain"]["input_ids"], retain["input_ids"])
        assert torch.equal(a[i]["forget_idk"]["input_ids"], idk["input_ids"])
    partners = {tuple(a[i]["retain"]["input_ids"].tolist()) for i in range(len(a))}
    assert len(partners) > 1


# --------------------------------------------------------------------------------------------------
# Unlearning: the reference cache


def tiny_train_cfg(**changes) -> TrainConfig:
    values = dict(lr=1e-3, epochs=2, batch_size=2, grad_accum=1, max_length=64)
    values.update(changes)
    return TrainConfig(**values)


def test_npo_cached_reference_gives_the_uncached_trajectory(tiny, scenario):
    method = Method.parse("NPO+GD")
    ref = runner.frozen_copy(tiny.model)
    calls = {"n": 0}
    ref.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    histories, finals, ref_calls = [], [], []
    for cache in (True, False):
        calls["n"] = 0
        model = copy.deepcopy(tiny.model)
        result = T.unlearn(model, tiny.tokenizer, tiny.prompt, method, scenario, tiny_train_cfg(epochs=1), "answer",
                           ref_model=ref, cache_reference=cache)
        histories.append(result.history)
        finals.append(params_of(model))
        ref_calls.append(calls["n"])
    cached, live = histories
    assert len(cached) == T.max_steps_for(len(scenario.forget), 1, 2) == 5
    assert [e.loss for e in cached] == pytest.approx([e.loss for e in live], rel=1e-5)
    assert [e.parts["forget"] for e in cached] == pytest.approx([e.parts["forget"] for e in live], rel=1e-5)
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], rtol=1e-4, atol=1e-6)
    # The cache ran the reference once over the 10 items (one chunk); the live path once per step.
    assert ref_calls == [1, 5]
    # At step 1 the model is the reference: NPO = (2/β) log 2 exactly.
    assert cached[0].parts["forget"] == pytest.approx(2 / method.beta * math.log(2), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# Continual unlearning through run_trial


class HashEmbedder:
    """A stand-in sentence embedder (character counts): evaluation runs without loading a model."""

    def encode(self, texts, **_):
        texts = [texts] if isinstance(texts, str) else texts
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, ord(ch) % 64] += 1
        return out + 1e-3


class Snapshots:
    """Keeps the trained model object and a copy of its parameters at every epoch end."""

    def __init__(self):
        self.models: list[object] = []
        self.params: list[dict[str, torch.Tensor]] = []
        self.steps: list[T.StepEvent] = []

    def on_step(self, event):
        self.steps.append(event)

    def on_epoch(self, event):
        self.models.append(event.model)
        self.params.append(params_of(event.model))


def continual_cfg(fix_ref_model: bool) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"name": "tiny-llama", "target": "tiny-llama", "dtype": "float32"},  # compared with fp32 by hand
        "data": {"source": "builtin", "scenario": "continual", "tasks": [1, 2], "n_authors": 4, "ds_size": 2},
        "method": {"name": "NPO+GD", "forget_coeff": 1.0, "fix_ref_model": fix_ref_model},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "max_length": 64},
        "eval": {"batch_size": 8, "max_length": 40},
    })


@pytest.mark.parametrize("fix_ref_model", [False, True])
def test_continual_run_trial_chains_tasks_and_fixes_the_reference(fix_ref_model, tiny):
    from study.evaluation.evaluate import MetricModels

    cfg = continual_cfg(fix_ref_model)
    metric_models = MetricModels(HashEmbedder(), "hash", None, None, "no NLI in tests", torch.device("cpu"))
    snapshots = Snapshots()
    trial = runner.run_trial(cfg, runner.TrialHooks(callbacks=[snapshots]), device="cpu",
                             metric_models=metric_models, progress=False)

    assert [t.task for t in trial.tasks] == [1, 2]
    steps_per_task = T.max_steps_for(10, 1, 4)  # 2: lr 0 (warm-up), then 5e-4
    assert [t.steps for t in trial.tasks] == [steps_per_task] * 2
    assert all("forget/rouge" in t.summary for t in trial.tasks)
    task2_first = snapshots.steps[steps_per_task]
    assert task2_first.step == 1

    # One model object is trained through both tasks, and is the one returned.
    assert all(m is trial.model for m in snapshots.models)
    assert len(snapshots.params) == 2  # one epoch per task
    end_of_task1 = snapshots.params[0]
    original = params_of(tiny.model)  # the same seeded initialisation run_trial loaded
    assert not all(torch.equal(end_of_task1[k], original[k]) for k in original)

    # Task 2's first batch, by hand, with the model task 1 left and with the original model.
    method = cfg.method.method()
    data2 = runner.scenario_data(cfg, 2)
    dataset = T.unlearning_dataset(method, data2.forget, data2.retain, data2.refusals, tiny.tokenizer, tiny.prompt,
                                   cfg.train.max_length, cfg.method.label_mode())
    stream = T.index_stream(len(dataset), cfg.train.seed)
    batch = collate([dataset[next(stream)] for _ in range(cfg.train.batch_size)])

    def logits_and_logp(params):
        model = copy.deepcopy(tiny.model)
        model.load_state_dict(params, strict=False)
        model.eval()
        with torch.no_grad():
            forget = model(input_ids=batch["forget"]["input_ids"], attention_mask=batch["forget"]["attention_mask"]).logits
            retain = model(input_ids=batch["retain"]["input_ids"], attention_mask=batch["retain"]["attention_mask"]).logits
        return sequence_logprob(forget, batch["forget"]["labels"]), mean_nll(retain, batch["retain"]["labels"])

    logp_start, gd_start = logits_and_logp(end_of_task1)
    logp_original, gd_original = logits_and_logp(original)
    # Task 2 starts from task 1's model: its first GD term is that model's retain NLL.
    assert task2_first.parts["regularization"] == pytest.approx(float(gd_start), rel=1e-5)
    assert float(gd_start) != pytest.approx(float(gd_original), rel=1e-3)
    log2 = 2 / method.beta * math.log(2)
    if fix_ref_model:
        # The reference stays the original model: NPO compares task 1's model with it.
        expected = float(npo_loss(logp_start, logp_original, method.beta))
        assert task2_first.parts["forget"] == pytest.approx(expected, rel=1e-5)
        assert expected != pytest.approx(log2, rel=1e-3)
    else:
        # The reference is the model at the start of task 2, i.e. the model itself: (2/β) log 2.
        assert task2_first.parts["forget"] == pytest.approx(log2, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# LoRA, gradient checkpointing, low precision


def test_lora_trains_only_the_adapters(tiny, scenario):
    torch.manual_seed(7)
    rng_before = torch.get_rng_state()
    model = T.apply_lora(copy.deepcopy(tiny.model), rank=4)
    assert torch.equal(torch.get_rng_state(), rng_before)
    again = T.apply_lora(copy.deepcopy(tiny.model), rank=4)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded init
    before = params_of(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    T.unlearn(model, tiny.tokenizer, tiny.prompt, Method.parse("ME+GD"), scenario, tiny_train_cfg(lr=1e-2, epochs=1),
              "full")
    after = params_of(model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == (name in trainable), name


def test_gradient_checkpointing_gives_the_same_training(tiny, scenario):
    from study.inputs.batches import QADataset

    data = QADataset(scenario.forget, tiny.tokenizer, tiny.prompt, 64)
    results = {}
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny.model)
        if checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        calls = {"n": 0}
        model.model.layers[0].register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        result = T.train_loop(model, data, nll_loss, lr=1e-3, epochs=0.6, batch_size=2, grad_accum=1)  # 3 steps
        results[checkpointing] = (result.history, params_of(model), calls["n"])
    (plain, plain_params, plain_calls), (ckpt, ckpt_params, ckpt_calls) = results[False], results[True]
    assert [e.loss for e in ckpt] == pytest.approx([e.loss for e in plain], rel=1e-6)
    assert [e.grad_norm for e in ckpt] == pytest.approx([e.grad_norm for e in plain], rel=1e-5)
    for name in plain_params:
        torch.testing.assert_close(ckpt_params[name], plain_params[name], rtol=1e-5, atol=1e-7)
    # Checkpointing really ran: each layer's forward is recomputed during backward.
    assert plain_calls == len(plain) and ckpt_calls == 2 * len(plain)


def test_bf16_model_steps_through_fp32_master_weights():
    """w = 1 in bf16, loss = w (gradient 1): each Adam step moves w by the step's lr. In bf16 alone
    1 - 1e-3 rounds back to 1 forever; with fp32 masters w is the rounded sum of the steps."""
    model = torch.nn.Linear(1, 1, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    history = T.train_loop(model, ToyData(40), lambda m, b: (m.weight.sum(), {}), lr=1e-3, epochs=10,
                           batch_size=4, grad_accum=1, weight_decay=0.0).history
    assert model.weight.dtype == torch.bfloat16
    master = 1.0 - sum(e.lr for e in history if e.lr > 0) / (1 + 1e-8)
    assert model.weight.detach().item() == float(torch.tensor(master, dtype=torch.float32).to(torch.bfloat16))
    assert model.weight.detach().item() < 0.96  # 100 steps, mean lr 5e-4

    # The plain bf16 step (what would happen without masters) loses every update.
    naive = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    optimizer = torch.optim.AdamW([naive], lr=1e-3, weight_decay=0.0)
    for _ in range(10):
        naive.grad = torch.ones(1, dtype=torch.bfloat16)
        optimizer.step()
    assert naive.detach().item() == 1.0


def test_answer_nll_skips_question_columns_and_changes_nothing(tiny, scenario):
    from study.inputs.batches import QADataset

    part = collate([QADataset(scenario.forget, tiny.tokenizer, tiny.prompt, 64)[i] for i in range(4)])["retain"]
    model = copy.deepcopy(tiny.model)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    full = mean_nll(model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits, part["labels"])
    kept = T.answer_nll(model, part)
    first_label = int((part["labels"] != -100).any(dim=0).nonzero().min())
    assert seen == [part["input_ids"].shape[1], part["input_ids"].shape[1] - first_label + 1]
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    kept.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_loads_with_transformers_and_gives_identical_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = copy.deepcopy(tiny.model)
    with torch.no_grad():  # not the initialisation transformers would produce
        model.model.norm.weight.mul_(1.5)
    path = models.save_checkpoint(model, tiny.tokenizer, tiny.prompt, tmp_path / "ckpt", {"kind": "test"})
    files = {p.name for p in path.iterdir()}
    assert "model.safetensors" in files and models.CHECKPOINT_META in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    loaded = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    ids = tiny.tokenizer(["Question: who?\nAnswer: nobody", "Question: where?\nAnswer:"], return_tensors="pt",
                         padding=True)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, loaded(**ids).logits)
    again = models.load(str(path), device="cpu")
    assert again.prompt == tiny.prompt


# --------------------------------------------------------------------------------------------------
# Slow: a real target model


@pytest.mark.slow
def test_smollm2_default_target_memorises_and_keeps_utility():
    """The default preset's fine-tuning makes SmolLM2-135M memorise the built-in authors (forget ROUGE-L
    recall >= 0.8; the base model scores ~0.57 on these templated answers) without wrecking what it
    knew: a harsher fine-tuning (2 epochs at 1e-3) answered "The capital of Japan is a violinist".

    The target is ``runner.target_model`` of the default preset: fine-tuned once and cached, the very
    model the default job (``tests/test_default_job.py``) unlearns from; whichever test runs first
    fine-tunes it (~2.5 min on 2 CPU cores), the other reads the cache."""
    from conftest import _sweep_module
    from study.evaluation.evaluate import MetricModels, evaluate

    sweep = _sweep_module()
    cfg, _, _ = sweep.plan(sweep.build_parser().parse_args([]))
    assert cfg.model.name == "smollm2-135m"
    data = runner.scenario_data(cfg, 1)
    target = runner.target_model(cfg, data, torch.device("cpu"), progress=False)
    sets = [s for s in data.eval_sets if s.kind in ("forget", "world_facts")]
    metric_models = MetricModels(HashEmbedder(), "hash", None, None, "no NLI in tests", torch.device("cpu"))

    def rouge(path):
        lm = models.load(path, device="cpu", dtype=torch.float32)
        summary = evaluate(lm.model, lm.tokenizer, lm.prompt, sets, "fictitious", metric_models, batch_size=16,
                           max_length=96, progress=False).summary
        return summary["forget/rouge"], summary["world_facts/rouge"]

    base_forget, base_world = rouge("smollm2-135m")
    forget, world = rouge(target.path)
    print(f"target {target.path} ({'cached' if target.cached else f'fine-tuned in {target.seconds:.0f} s'}): "
          f"forget ROUGE-L recall {base_forget:.3f} -> {forget:.3f}, world facts {base_world:.3f} -> {world:.3f}")
    assert forget >= 0.8 and forget > base_forget + 0.2
    # The World Facts set holds only questions the base model answers (ROUGE 1.0 at generation length 200):
    # the target keeps ~60% of them (0.60 on the 20 the default preset evaluates; a wrecked target keeps
    # none). The set it replaced measured the same ratio, 0.88 -> 0.54.
    assert world >= 0.5 * base_world


def test_fused_adamw_matches_the_unfused_update():
    """``study.training.train.adamw`` takes torch's fused kernel on CPU float parameters; its steps agree with the
    plain AdamW's to float rounding (weight decay on one group only, as ``adamw_param_groups``)."""
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(7, 3, generator=gen), torch.randn(3, generator=gen)]
    grads = [[torch.randn(w.shape, generator=gen) for w in weights] for _ in range(3)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        groups = [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}]
        optimizer = T.adamw(groups, 1e-2) if fused else torch.optim.AdamW(groups, lr=1e-2)
        assert optimizer.defaults["fused"] is (True if fused else None)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        results.append([p.detach() for p in params])
    for a, b, w in zip(*results, weights):
        assert not torch.equal(a, w)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# KL averaging: the reference pads every retain batch to max_length and divides by B * max_length


class _RecordSteps:
    def __init__(self):
        self.events = []

    def on_step(self, event):
        self.events.append(event)


def _reference_kl(model, ref, items, part: str = "retain") -> float:
    """The reference code's KL on one micro-batch, written out: every row padded to ``max_length``
    (no trimming), ``kl_div(log_softmax(z), log_softmax(z_ref), reduction='batchmean',
    log_target=True)`` over the ``B * max_length`` flattened positions."""
    ids = torch.stack([item[part]["input_ids"] for item in items])
    mask = torch.stack([item[part]["attention_mask"] for item in items])
    with torch.no_grad():
        z = model(input_ids=ids, attention_mask=mask).logits.float()
        z_ref = ref(input_ids=ids, attention_mask=mask).logits.float()
    v = z.shape[-1]
    logp = torch.log_softmax(z, -1).view(-1, v)
    ref_logp = torch.log_softmax(z_ref, -1).view(-1, v)
    return float((ref_logp.exp() * (ref_logp - logp)).sum() / (ids.shape[0] * ids.shape[1]))


@pytest.mark.parametrize("method_name", ["GA+KL", "LLMU"])
@pytest.mark.parametrize("full_padding", [True, False])
def test_kl_averages_over_max_length_like_the_reference(tiny, scenario, method_name, full_padding):
    method = Method.parse(method_name)
    model = copy.deepcopy(tiny.model)
    with torch.random.fork_rng(devices=[]):  # a reference that differs from the model, so KL > 0
        torch.manual_seed(7)
        ref = copy.deepcopy(tiny.model)
        for p in ref.parameters():
            p.data.add_(0.05 * torch.randn_like(p))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    max_length = 48
    cfg = TrainConfig(lr=1e-4, epochs=1, batch_size=2, grad_accum=1, max_length=max_length, kl_full_padding=full_padding)
    recorder = _RecordSteps()
    T.unlearn(model, tiny.tokenizer, tiny.prompt, method, scenario, cfg, "answer", ref_model=ref, callbacks=[recorder])
    # Step 1 runs before any optimizer step: its KL term is KL(ref || initial model) on the first batch.
    dataset = T.unlearning_dataset(method, scenario.forget, scenario.retain, scenario.refusals, tiny.tokenizer, tiny.prompt,
                                   max_length, "answer")
    stream = T.index_stream(len(dataset), cfg.seed)
    items = [dataset[next(stream)] for _ in range(cfg.batch_size)]
    expected = _reference_kl(tiny.model, ref, items)
    longest = max(int(item["retain"]["attention_mask"].sum()) for item in items)
    assert longest < max_length - 8  # the batch has padding columns that trimming would cut
    logged = recorder.events[0].parts["regularization" if method_name == "GA+KL" else "regularization/kl"]
    if full_padding:
        assert logged == pytest.approx(expected, rel=1e-5)
    else:  # trimmed: the same KL sum over fewer positions, a larger mean
        # Trimming keeps the columns some row attends to or labels (the EOS label sits one past the text).
        width = max(int(((it["retain"]["attention_mask"] > 0) | (it["retain"]["labels"] != -100)).nonzero().max()) + 1
                    for it in items)
        trimmed = _reference_kl(tiny.model, ref, [{"retain": {k: v[:width] for k, v in item["retain"].items()}}
                                                  for item in items])
        assert logged == pytest.approx(trimmed, rel=1e-5)
        assert logged != pytest.approx(expected, rel=1e-3)
