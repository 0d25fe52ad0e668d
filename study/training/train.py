"""The thin training loop: unlearning (docs/science.md §3-§4) and the fine-tuning that makes target and retain
models. It knows nothing of MLflow or Optuna: it emits ``StepEvent`` / ``EpochEvent`` to callbacks.

Schedule (docs/science.md §4): AdamW (weight decay 0.01, none on biases and norms), effective batch =
micro-batch x accumulation, ``max_steps = floor(epochs * N / effective_batch)``, linear
warm-up over the first epoch's steps when that is more than one step, then linear decay to 0, as
transformers' ``get_linear_schedule_with_warmup`` (step 0 of a warm-up runs at lr 0). No gradient
clipping: the reference's DeepSpeed config has none, and DeepSpeed then does not clip.

Data order: one stream of per-epoch permutations (a local ``torch.Generator`` seeded by ``seed +
epoch``). Optimizer step ``s`` takes the next ``effective_batch`` indices, ``grad_accum`` micro-batches
of ``batch_size``; micro-batch ``j`` is processed by rank ``j % world_size``, so each of ``W`` processes
accumulates ``grad_accum / W`` of them (``W`` must divide ``grad_accum``). ``grad_accum`` counts the
micro-batches of one optimizer step on all devices together: a configuration means the same global
batches, the same steps and the same averaged gradients on one process or on ``W`` (each micro-batch loss
is divided by the rank's accumulation steps, and DeepSpeed averages over ranks). Reported step losses are
means over the global batch's micro-batches on every rank.

Multi-process training goes through a DeepSpeed engine (``engine=``, built by ``study.training.zero``), or
through ``unlearn(fit=study.training.zero.train_with_deepspeed)``, which builds the engines itself (``study.trial.runner``
passes it when ``TrainConfig.deepspeed`` is set). ``study.training.zero`` imports this module, never the reverse.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..inputs.batches import collate
from ..errors import StudyInputError


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the run stops instead of training on garbage."""


@dataclass
class StepEvent:
    """One optimizer step, sent to ``Callback.on_step`` (identical on every rank)."""

    step: int
    """Optimizer steps done (1-based)."""
    max_steps: int
    epoch: float
    """Fractional epochs done."""
    loss: float
    """Mean micro-batch loss of the step's global batch."""
    parts: dict[str, float]
    """The loss function's parts (``total``, ``forget``, ``regularization``, ...), same mean."""
    lr: float
    """Learning rate used for this step."""
    grad_norm: float
    """L2 norm of the accumulated (global) gradient, before the optimizer step."""
    seconds: float


@dataclass
class EpochEvent:
    """An epoch boundary was crossed (or the last step ran), sent to ``Callback.on_epoch``."""

    epoch: int
    """Epochs completed (1-based; the last, partial epoch counts as one)."""
    step: int
    model: object
    """The model being trained, in eval mode during the call. Under ZeRO-3 its parameters are
    partitioned: every rank must run the same forward passes on it (they all get the event)."""


class Callback(Protocol):
    def on_step(self, event: StepEvent) -> None: ...
    def on_epoch(self, event: EpochEvent) -> None: ...


@dataclass
class TrainResult:
    steps: int
    history: list[StepEvent] = field(default_factory=list)
    seconds: float = 0.0


LossFn = Callable[[Any, dict], "tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]"]
"""``loss_fn(model, batch) -> (scalar loss with grad, {name: detached scalar})``."""


def max_steps_for(n_items: int, epochs: float, effective_batch: int) -> int:
    """docs/science.md §4: ``floor(epochs * N / effective_batch)`` (at least one step).

    ``int(epochs * N) // B`` equals ``floor(epochs * N / B)`` for an integer ``B`` (nested floors), and
    is what the reference code computes.
    """
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


def index_stream(n_items: int, seed: int) -> Iterator[int]:
    """Endless indices: a fresh permutation per epoch, each from a local generator."""
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed + epoch)
        yield from torch.randperm(n_items, generator=generator).tolist()
        epoch += 1


def adamw_param_groups(model, weight_decay: float) -> list[dict]:
    """Trainable parameters in two AdamW groups: matrices decay, vectors (biases, norms) do not, as
    transformers' ``Trainer`` (used by the reference code) does."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """torch's AdamW, fused where torch has a fused kernel for every parameter (CPU and CUDA, floating
    point): one pass over each tensor instead of a dozen. For SmolLM2-135M on 2 CPU cores it cuts the
    optimizer step from 0.51 s to 0.12 s, a fifth of a training step; updates agree with the unfused
    AdamW to float rounding."""
    params = [p for group in groups for p in group["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


class Fp32MasterWeights:
    """fp32 master copies of a model's low-precision (bf16 / fp16) trainable parameters.

    AdamW steps the fp32 copies and the model gets them rounded back after every step, as DeepSpeed's
    bf16 mode (the reference's set-up, docs/science.md §4) keeps fp32 master weights. Stepping bf16 weights
    in place would drop most updates: an Adam step is about ``lr`` per weight, and at lr 1e-5 that is
    far below half the bf16 spacing of a typical weight (|w| ~ 0.05: spacing 2.4e-4), so the weight
    would round back to itself. fp32 parameters are their own masters. fp16 gets no loss scaling.
    """

    def __init__(self, model):
        self.pairs = [(p, p if p.dtype == torch.float32 else p.detach().float().clone())
                      for p in model.parameters() if p.requires_grad]

    @staticmethod
    def needed(model) -> bool:
        return any(p.requires_grad and p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters())

    @property
    def params(self) -> list[torch.Tensor]:
        return [master for _, master in self.pairs]

    def param_groups(self, weight_decay: float) -> list[dict]:
        """As :func:`adamw_param_groups`, over the masters."""
        return [
            {"params": [m for p, m in self.pairs if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [m for p, m in self.pairs if p.ndim < 2], "weight_decay": 0.0},
        ]

    def grads_in(self) -> None:
        """Move the accumulated gradients onto the masters (in fp32)."""
        for param, master in self.pairs:
            if master is not param:
                master.grad = None if param.grad is None else param.grad.float()
                param.grad = None

    @torch.no_grad()
    def weights_out(self) -> None:
        """Round the stepped masters into the model."""
        for param, master in self.pairs:
            if master is not param:
                param.copy_(master)


def _to(batch: dict, device) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = {k: v.to(device, non_blocking=True) for k, v in value.items()}
        else:
            out[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return out


def _grad_norm(params: list[torch.Tensor]) -> float:
    """Global L2 norm of the gradients: float32 norms of rows (each row a few hundred to thousand
    elements, so the float32 sums stay exact to ~1e-7), squared and summed in float64. Neither
    ``g.pow(2).sum()`` (a gradient-sized temporary per tensor: 0.33 s a step for SmolLM2 on one core,
    most of the loop's overhead) nor ``vector_norm`` of a whole tensor (float32 accumulation over 28M
    embedding-gradient entries: off by ~3e-4 relative) nor ``clip_grad_norm_`` (~1e-5) does as well."""
    squares = []
    for p in params:
        if p.grad is not None:
            g = p.grad.reshape(p.grad.shape[0] if p.grad.ndim > 1 else 1, -1)
            squares.append(torch.linalg.vector_norm(g, dim=1, dtype=torch.float32).double().square().sum())
    return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0


def _rank_mean(values: list[float], device, world_size: int) -> list[float]:
    """Mean over ranks of per-rank numbers (one all-reduce); unchanged in a single process."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()


def ranks_accumulation(grad_accum: int, world_size: int) -> int:
    """The micro-batches each of ``world_size`` ranks accumulates per optimizer step: ``grad_accum``
    (the global count) split evenly; a world size that does not divide it is refused."""
    if grad_accum % world_size:
        raise StudyInputError(
            f"train.grad_accum {grad_accum} (micro-batches per optimizer step, all processes together) is not "
            f"divisible by the {world_size} processes: use a multiple of {world_size} (e.g. "
            f"{world_size * max(1, round(grad_accum / world_size))}) or another number of processes")
    return grad_accum // world_size


def _check_engine(engine, batch_size: int, grad_accum: int, world_size: int) -> None:
    """The engine's batch geometry must be the loop's, and the loop owns the learning rate."""
    expected = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
    }
    for name, value in expected.items():
        actual = getattr(engine, name)()
        if actual != value:
            raise ValueError(f"DeepSpeed engine has {name}={actual}, the training loop {value}: build the engine "
                             "with study.training.zero.deepspeed_engine (it fills these from the TrainConfig)")
    dp_world = getattr(engine, "dp_world_size", world_size)
    if dp_world != world_size:
        raise ValueError(f"DeepSpeed engine spans {dp_world} data-parallel ranks, the loop was given world_size={world_size}")
    if getattr(engine, "lr_scheduler", None) is not None:
        raise ValueError("the DeepSpeed config has a 'scheduler': remove it; the training loop sets the learning rate (docs/science.md §4)")


# Longer than ~60 lines on purpose: the loop reads top to bottom as the reference's schedule (docs/science.md
# §4), one step at a time; its parts (lr_at, index_stream, adamw, Fp32MasterWeights, collate) are functions.
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
    callbacks: Sequence = (),
    world_size: int = 1,
    rank: int = 0,
    engine=None,
    progress: bool = False,
    description: str = "train",
) -> TrainResult:
    """Run the schedule over ``dataset`` (items collated by ``study.inputs.batches.collate``).

    ``loss_fn(model, batch) -> (loss, parts)``. Without ``engine`` (one process), a torch AdamW is
    built here and ``(loss / grad_accum).backward()`` accumulates; a bf16 / fp16 model is stepped
    through fp32 master weights (:class:`Fp32MasterWeights`). With ``engine`` (a DeepSpeed engine
    wrapping ``model``, e.g. from ``study.training.zero.deepspeed_engine``), ``loss_fn`` gets the engine,
    backward/step go through it, and ``world_size``/``rank`` select this process's micro-batches; the
    engine's micro-batch and accumulation steps must be ``batch_size`` and ``grad_accum / world_size``
    (``grad_accum``: micro-batches per optimizer step over all ranks).

    Raises:
        NonFiniteLoss: a micro-batch loss is NaN or infinite (on any rank); the message names the step.
    """
    from tqdm.auto import tqdm

    if world_size > 1 and engine is None:
        raise ValueError(f"world_size={world_size} needs a DeepSpeed engine (study.training.zero.deepspeed_engine): "
                         "without one nothing averages gradients across ranks")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    per_rank = ranks_accumulation(grad_accum, world_size)
    n_items = len(dataset)
    effective = batch_size * grad_accum
    max_steps = max_steps_for(n_items, epochs, effective)
    warmup = warmup_steps_for(n_items, effective)
    device = next(model.parameters()).device
    master = Fp32MasterWeights(model) if engine is None and Fp32MasterWeights.needed(model) else None
    if master is not None:
        optimizer = adamw(master.param_groups(weight_decay), lr)
    elif engine is None:
        optimizer = adamw(adamw_param_groups(model, weight_decay), lr)
    else:
        _check_engine(engine, batch_size, per_rank, world_size)
        optimizer = engine.optimizer
    trained = engine if engine is not None else model
    trained.train()
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
        micro_batches = [indices[j * batch_size:(j + 1) * batch_size] for j in range(grad_accum)]
        for micro in micro_batches[rank::world_size]:
            batch = _to(collate([dataset[i] for i in micro], full_width_parts=getattr(dataset, "full_width_parts", ())), device)
            loss, parts = loss_fn(trained, batch)
            finite = bool(torch.isfinite(loss.detach()))
            if world_size > 1:  # every rank stops together, or the others would wait forever
                finite = _rank_mean([float(finite)], device, world_size)[0] == 1.0
            if not finite:
                raise NonFiniteLoss(
                    f"loss became {loss.item()} at step {step + 1}/{max_steps} on rank {rank} "
                    f"(parts: {', '.join(f'{k}={float(v):.4g}' for k, v in parts.items())})"
                )
            if engine is not None:
                engine.backward(loss)  # DeepSpeed divides by its accumulation steps itself
                engine.step()  # steps the optimizer only at the accumulation boundary
            else:
                (loss / per_rank).backward()
            total += loss.item() / per_rank
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + float(value) / per_rank
        if engine is None:
            if master is not None:
                master.grads_in()
            stepped = master.params if master is not None else [p for p in model.parameters() if p.requires_grad]
            grad_norm = _grad_norm(stepped)  # docs/science.md §4: measured, never clipped
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if master is not None:
                master.weights_out()
        else:
            grad_norm = float(engine.get_global_grad_norm() or 0.0)
        if world_size > 1:
            keys = sorted(parts_sum)
            total, *means = _rank_mean([total, *(parts_sum[k] for k in keys)], device, world_size)
            parts_sum = dict(zip(keys, means))
        event = StepEvent(step + 1, max_steps, consumed / n_items, total, parts_sum, current_lr, grad_norm,
                          time.perf_counter() - step_start)
        result.history.append(event)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        for callback in callbacks:
            if hasattr(callback, "on_step"):
                callback.on_step(event)
        epochs_done = consumed // n_items
        crossed = epochs_done > (consumed - effective) // n_items
        if crossed or step + 1 == max_steps:
            # The epoch just completed; after the last step a partial epoch counts as one more. (Rounding
            # up at a crossing would number the step that finishes epoch 1 of 1.2 "2", twice over.)
            number = epochs_done if crossed else math.ceil(consumed / n_items - 1e-9)
            epoch_event = EpochEvent(max(1, number), step + 1, model)
            for callback in callbacks:
                if hasattr(callback, "on_epoch"):
                    trained.eval()
                    callback.on_epoch(epoch_event)
                    trained.train()
    bar.close()
    trained.eval()
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------
# Unlearning and fine-tuning


def unlearning_dataset(method, forget, retain, refusals, tokenizer, prompt, max_length, label_mode, seed=0,
                       kl_full_padding: bool = True):
    """The method's batch parts per forget item. With ``kl_full_padding`` (the reference's behaviour),
    parts whose reference *logits* are compared (KL, LLMU's KL term) stay padded to ``max_length``,
    so the KL's ``batchmean`` averages over ``B * max_length`` positions as the reference code's."""
    from ..inputs.batches import UnlearningDataset

    full = method.ref_logit_parts if kl_full_padding else ()
    return UnlearningDataset(forget, retain, refusals, tokenizer, prompt, max_length, set(method.batch_parts),
                             label_mode, seed, full_width_parts=full)


def cache_reference_logprobs(method, ref_model, dataset, batch_size: int = 16) -> None:
    """NPO and DPO only need per-sequence log-probs of the frozen reference: compute them once per
    item (stored on the dataset items as ``ref_logprobs_<part>``) instead of at every step.

    ``ref_model`` may be a ZeRO-3 inference engine: every rank then runs the same forward passes."""
    from ..methods import ref_cache_key, reference_logprobs

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


class Fit(Protocol):
    """How :func:`unlearn` runs the training loop over its dataset: :func:`fit_in_process` by default,
    ``study.training.zero.train_with_deepspeed`` for ZeRO-3 (``study.trial.runner.fit_for`` picks one from a
    ``TrainConfig``). ``make_loss_fn(ref)`` is the loss function given the reference model to use
    (``ref_model``, or what the fitter made of it, e.g. a DeepSpeed engine)."""

    def __call__(self, model, dataset, make_loss_fn: Callable[[Any], LossFn], train_cfg, *, ref_model=None,
                 callbacks: Sequence = (), progress: bool = False, description: str = "train") -> TrainResult: ...


def fit_in_process(model, dataset, make_loss_fn: Callable[[Any], LossFn], train_cfg, *, ref_model=None,
                   callbacks: Sequence = (), progress: bool = False, description: str = "train", engine=None,
                   world_size: int = 1, rank: int = 0) -> TrainResult:
    """The default :class:`Fit`: :func:`train_loop` with ``train_cfg``'s schedule on ``model`` itself, in
    this process or through a DeepSpeed ``engine`` the caller built around ``model`` (``world_size`` /
    ``rank`` of this process). It builds no engine: ``train_cfg.deepspeed`` is not read here."""
    return train_loop(model, dataset, make_loss_fn(ref_model), lr=train_cfg.lr, epochs=train_cfg.epochs,
                      batch_size=train_cfg.batch_size, grad_accum=train_cfg.grad_accum,
                      weight_decay=train_cfg.weight_decay, seed=train_cfg.seed, callbacks=callbacks, progress=progress,
                      engine=engine, world_size=world_size, rank=rank, description=description)


def unlearn(model, tokenizer, prompt, method, data, train_cfg, label_mode: str, ref_model=None, callbacks=(),
            cache_reference: bool = True, progress: bool = False, fused_forward: bool | None = None,
            fit: Fit = fit_in_process) -> TrainResult:
    """Unlearn ``data.forget`` from ``model`` with ``method`` (a ``study.methods.Method``).

    ``ref_model``: the frozen reference (NPO, DPO, KL, LLMU). With ``cache_reference`` its per-sequence
    log-probs are computed once before training (NPO, DPO); it is kept for every step only when a
    loss needs its logits (KL, LLMU) or ``cache_reference`` is False.

    ``fused_forward``: each micro-batch's parts (forget, retain, refusals ...) go through the model as
    one batch, and the parts the live reference reads through it as one batch (``compute_loss(fused=)``;
    same losses and gradients up to float rounding). False runs one forward per part; None (default)
    takes ``train_cfg.fused_forward``.

    ``fit`` (a :class:`Fit`) is how the loop runs: :func:`fit_in_process` (default), or
    ``study.training.zero.train_with_deepspeed``, which builds DeepSpeed engines from ``train_cfg.deepspeed``
    (ZeRO-3: also one for a live reference model), trains, and writes the trained weights back into
    ``model`` (``study.trial.runner.fit_for`` picks one from the ``TrainConfig``). The weights the method
    does not train are frozen first (``study.methods.freeze_untrained``: RMU's).

    Raises:
        StudyInputError: ``train_cfg.deepspeed`` is set and ``fit`` is :func:`fit_in_process`: training in
            this process would silently drop ZeRO-3 (checked before anything is done).
    """
    from ..methods import compute_loss, freeze_untrained, steering_for

    if train_cfg.deepspeed and fit is fit_in_process:
        raise StudyInputError(f"train.deepspeed={train_cfg.deepspeed!r} asks for DeepSpeed, but unlearn was given "
                              "no fit: pass fit=study.training.zero.train_with_deepspeed (study.trial.runner.fit_for chooses "
                              "it from the TrainConfig), or set train.deepspeed to none")
    freeze_untrained(method, model)
    steering = steering_for(method, model, train_cfg.seed)
    dataset = unlearning_dataset(method, data.forget, data.retain, data.refusals, tokenizer, prompt,
                                 train_cfg.max_length, label_mode, kl_full_padding=train_cfg.kl_full_padding)
    if cache_reference and ref_model is not None:
        cache_reference_logprobs(method, ref_model, dataset)
    keep_ref = ref_model if (method.needs_live_ref_model or not cache_reference) else None
    fused = train_cfg.fused_forward if fused_forward is None else fused_forward

    def make_loss_fn(ref):
        def loss_fn(m, batch):
            out = compute_loss(method, m, batch, ref, steering, fused=fused)
            return out.total, out.parts

        return loss_fn

    return fit(model, dataset, make_loss_fn, train_cfg, ref_model=keep_ref, callbacks=callbacks, progress=progress,
               description=f"unlearn {method}")


def answer_nll(model, part: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``NLL_mean`` of a batch part whose labels start after the question (``encode_qa``'s ``answer``
    labels), with logits only from the column before the first labelled one on.

    Equal to ``mean_nll(model(...).logits, labels)``: the logit at position ``t`` scores label ``t + 1``,
    so columns before ``first`` score nothing. Skipping them (transformers' ``logits_to_keep``) saves
    the LM head, softmax and their backward over the question: with a 49k vocabulary and SmolLM2's
    50-token chat prompt, ~40% of a fine-tuning step. Models whose ``forward`` does not take
    ``logits_to_keep`` get full logits.
    """
    from ..methods import IGNORE_INDEX, mean_nll

    labels = part["labels"]
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    first = max(0, int(labelled.min()) - 1) if len(labelled) else 0
    kwargs = {}
    if first > 0 and "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = torch.arange(first, labels.shape[1], device=labels.device)
    else:
        first = 0
    logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], **kwargs).logits
    return mean_nll(logits, labels[:, first:])


def finetune(model, tokenizer, prompt, rows, cfg, seed: int = 1001, callbacks=(), progress: bool = False) -> TrainResult:
    """Plain question-answer fine-tuning (how TOFU makes its target and retain models): ``NLL_mean`` of
    the answers (:func:`answer_nll`), AdamW with weight decay 0.01, the same schedule as unlearning.
    One process."""
    from ..inputs.batches import QADataset

    dataset = QADataset(rows, tokenizer, prompt, cfg.max_length)

    def loss_fn(m, batch):
        loss = answer_nll(m, batch["retain"])
        return loss, {"nll": loss.detach()}

    return train_loop(model, dataset, loss_fn, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      grad_accum=cfg.grad_accum, seed=seed, callbacks=callbacks, progress=progress,
                      description="fine-tune")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Llama's attention and MLP projections: every linear layer but the LM head, as the reference's
``find_all_linear_names``."""


def apply_lora(model, rank: int, alpha: int | None = None, seed: int = 0):
    """Wrap ``model`` with LoRA adapters (peft) on ``LORA_TARGETS``; only the adapters train.

    ``lora_alpha`` defaults to ``2 * rank``; dropout 0. The adapters' random initialisation uses a
    forked RNG seeded with ``seed``, so the caller's global RNG is untouched and runs repeat exactly.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=list(LORA_TARGETS))
    devices = [next(model.parameters()).device] if next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, config)
