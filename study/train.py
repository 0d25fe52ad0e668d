"""The thin training loop: unlearning (REFERENCE §3-§4) and the fine-tuning that makes target and retain
models. It knows nothing of MLflow or Optuna: it emits ``StepEvent`` / ``EpochEvent`` to callbacks.

Schedule (REFERENCE §4): AdamW (weight decay 0.01), effective batch = micro-batch x accumulation x
devices, ``max_steps = floor(epochs * N / effective_batch)``, linear warm-up over the first epoch's
steps when that is more than one step, then linear decay to 0.

Data order: one stream of per-epoch permutations (a local ``torch.Generator`` seeded by ``seed +
epoch``). Optimizer step ``s`` takes the next ``effective_batch`` indices; micro-batch ``j`` of it is
processed by rank ``j % world_size``. So one process with ``grad_accum * W`` micro-batches sees
exactly the global batches that ``W`` processes see, and both average the same micro-batch gradients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from .data import collate


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of training on garbage."""


@dataclass
class StepEvent:
    step: int  # optimizer steps done (1-based)
    max_steps: int
    epoch: float  # fractional epochs done
    loss: float
    parts: dict[str, float]
    lr: float
    grad_norm: float
    seconds: float


@dataclass
class EpochEvent:
    epoch: int  # epochs completed (1-based)
    step: int
    model: object


class Callback(Protocol):
    def on_step(self, event: StepEvent) -> None: ...
    def on_epoch(self, event: EpochEvent) -> None: ...


@dataclass
class TrainResult:
    steps: int
    history: list[StepEvent] = field(default_factory=list)
    seconds: float = 0.0


def max_steps_for(n_items: int, epochs: float, effective_batch: int) -> int:
    """REFERENCE §4: ``floor(epochs * N / effective_batch)`` (at least one step)."""
    return max(1, int(epochs * n_items) // effective_batch)


def warmup_steps_for(n_items: int, effective_batch: int) -> int:
    """Linear warm-up over the first epoch's steps, when that is more than one step."""
    per_epoch = n_items // effective_batch
    return per_epoch if per_epoch > 1 else 0


def lr_at(step: int, lr: float, warmup: int, max_steps: int) -> float:
    """Learning rate used for optimizer step ``step`` (0-based), as transformers'
    ``get_linear_schedule_with_warmup``: ``lr * step / warmup`` during warm-up, then linear to 0."""
    if step < warmup:
        return lr * step / max(1, warmup)
    return lr * max(0.0, (max_steps - step) / max(1, max_steps - warmup))


def index_stream(n_items: int, seed: int):
    """Endless indices: a fresh permutation per epoch, each from a local generator."""
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed + epoch)
        yield from torch.randperm(n_items, generator=generator).tolist()
        epoch += 1


def _to(batch: dict, device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            out[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return out


LossFn = Callable[[object, dict], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def train_loop(
    model,
    dataset,
    loss_fn: LossFn,
    *,
    lr: float,
    epochs: float,
    batch_size: int,
    grad_accum: int,
    weight_decay: float = 0.01,
    seed: int = 1001,
    callbacks: list = (),
    world_size: int = 1,
    rank: int = 0,
    engine=None,
    progress: bool = False,
    description: str = "train",
) -> TrainResult:
    """Run the schedule over ``dataset`` (items collated by ``study.data.collate``).

    ``loss_fn(model, batch) -> (loss, parts)``. With ``engine`` (a DeepSpeed engine wrapping ``model``),
    backward/step go through it and ``world_size``/``rank`` select this process's micro-batches.
    """
    from tqdm.auto import tqdm

    n_items = len(dataset)
    effective = batch_size * grad_accum * world_size
    max_steps = max_steps_for(n_items, epochs, effective)
    warmup = warmup_steps_for(n_items, effective)
    device = next(model.parameters()).device
    model.train()
    if engine is None:
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        # transformers' Trainer (used by the reference code) exempts biases and norms from weight decay.
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
        )
    else:
        optimizer = engine.optimizer
    stream = index_stream(n_items, seed)
    result = TrainResult(steps=max_steps)
    started = time.perf_counter()
    consumed = 0
    bar = tqdm(total=max_steps, desc=description, leave=False, disable=not progress or rank != 0)
    for step in range(max_steps):
        step_start = time.perf_counter()
        current_lr = lr_at(step, lr, warmup, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        indices = [next(stream) for _ in range(effective)]
        consumed += effective
        total = 0.0
        parts_sum: dict[str, float] = {}
        mine = [indices[j * batch_size:(j + 1) * batch_size] for j in range(grad_accum * world_size) if j % world_size == rank]
        for micro in mine:
            batch = _to(collate([dataset[i] for i in micro]), device)
            loss, parts = loss_fn(engine or model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(
                    f"loss became {loss.item()} at step {step + 1}/{max_steps} "
                    f"(parts: {', '.join(f'{k}={float(v):.4g}' for k, v in parts.items())})"
                )
            if engine is not None:
                engine.backward(loss)  # DeepSpeed scales by its accumulation steps itself
                engine.step()
            else:
                (loss / grad_accum).backward()
            total += loss.item() / grad_accum
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + float(value) / grad_accum
        if engine is None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        event = StepEvent(step + 1, max_steps, consumed / n_items, total, parts_sum, current_lr, grad_norm,
                          time.perf_counter() - step_start)
        result.history.append(event)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        for callback in callbacks:
            if hasattr(callback, "on_step"):
                callback.on_step(event)
        epochs_done = consumed // n_items
        if epochs_done > (consumed - effective) // n_items or step + 1 == max_steps:
            for callback in callbacks:
                if hasattr(callback, "on_epoch"):
                    model.eval()
                    callback.on_epoch(EpochEvent(max(1, math.ceil(consumed / n_items - 1e-9)), step + 1, model))
                    model.train()
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------
# Unlearning and fine-tuning


def unlearning_dataset(method, forget, retain, refusals, tokenizer, prompt, max_length, label_mode, seed=0):
    from .data import UnlearningDataset

    return UnlearningDataset(forget, retain, refusals, tokenizer, prompt, max_length, set(method.batch_parts),
                             label_mode, seed)


def cache_reference_logprobs(method, ref_model, dataset, batch_size: int = 16) -> None:
    """NPO and DPO only need per-sequence log-probs of the frozen reference: compute them once per
    item (stored on the dataset items as ``ref_logprobs_<part>``) instead of at every step."""
    from .losses import ref_cache_key, reference_logprobs

    parts = method.ref_logprob_parts
    if not parts:
        return
    device = next(ref_model.parameters()).device
    ref_model.eval()
    for start in range(0, len(dataset), batch_size):
        chunk = dataset.items[start:start + batch_size]
        batch = _to(collate(chunk), device)
        for part in parts:
            values = reference_logprobs(ref_model, batch[part]).float().cpu()
            for item, value in zip(chunk, values):
                item[ref_cache_key(part)] = value


def unlearn(model, tokenizer, prompt, method, data, train_cfg, label_mode: str, ref_model=None, callbacks=(),
            cache_reference: bool = True, progress: bool = False, engine=None, world_size=1, rank=0) -> TrainResult:
    """Unlearn ``data.forget`` from ``model`` with ``method`` (a ``study.losses.Method``)."""
    from .losses import compute_loss

    dataset = unlearning_dataset(method, data.forget, data.retain, data.refusals, tokenizer, prompt,
                                 train_cfg.max_length, label_mode)
    if cache_reference and ref_model is not None:
        cache_reference_logprobs(method, ref_model, dataset)
    keep_ref = ref_model if (method.needs_live_ref_model or not cache_reference) else None

    def loss_fn(m, batch):
        out = compute_loss(method, m, batch, keep_ref)
        return out.total, out.parts

    return train_loop(model, dataset, loss_fn, lr=train_cfg.lr, epochs=train_cfg.epochs, batch_size=train_cfg.batch_size,
                      grad_accum=train_cfg.grad_accum, weight_decay=train_cfg.weight_decay, seed=train_cfg.seed,
                      callbacks=callbacks, progress=progress, engine=engine, world_size=world_size, rank=rank,
                      description=f"unlearn {method}")


def finetune(model, tokenizer, prompt, rows, cfg, seed: int = 1001, callbacks=(), progress: bool = False) -> TrainResult:
    """Plain question-answer fine-tuning (how TOFU makes its target and retain models)."""
    from .data import QADataset
    from .losses import mean_nll

    dataset = QADataset(rows, tokenizer, prompt, cfg.max_length)

    def loss_fn(m, batch):
        part = batch["retain"]
        logits = m(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        loss = mean_nll(logits, part["labels"])
        return loss, {"nll": loss.detach()}

    return train_loop(model, dataset, loss_fn, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      grad_accum=cfg.grad_accum, seed=seed, callbacks=callbacks, progress=progress,
                      description="fine-tune")


def apply_lora(model, rank: int, alpha: int | None = None):
    """Wrap ``model`` with LoRA adapters on the attention and MLP projections (peft)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, config)
