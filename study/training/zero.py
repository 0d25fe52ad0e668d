"""DeepSpeed ZeRO-3 training, the paper's multi-GPU set-up (docs/science.md §4: ZeRO-3 on two A100-40GB, bf16).

The training loop (``study.training.train.train_loop``) gives micro-batch ``j`` of each global batch to rank
``j % world_size``: ``train.grad_accum`` counts the micro-batches of one optimizer step on all ranks, so
``W`` processes take the same optimizer steps as one process with the same configuration (same
per-step losses), each accumulating ``grad_accum / W``. This module builds the engines
that loop steps through; ``study.trial.distributed`` is the ``torchrun`` entry point that uses it.

Pieces, usable on their own:

- :func:`init_distributed`: the process group from torchrun's environment (or a one-process group).
- :func:`fill_config`: a DeepSpeed JSON config (``experiments/deepspeed/zero3.json``) with its ``"auto"``
  values filled from a :class:`~study.config.TrainConfig` (batch geometry, bf16, bucket sizes).
- :func:`deepspeed_engine`: the training engine (a torch AdamW unless the config names an optimizer).
- :func:`reference_engine`: a frozen reference model (NPO, DPO, KL) as an inference-only engine, sharded
  like the trained model under ZeRO-3, as the reference code's ``e_prepare_deepspeed`` does.
- :func:`train_with_deepspeed`: a fitting function for ``study.training.train.unlearn(fit=...)``, which
  ``study.trial.runner`` passes when ``TrainConfig.deepspeed`` is set: plain model in, engines built on a
  copy, trained weights gathered back into the plain model.

Imports run one way: this module uses ``study.training.train``; ``study.training.train`` never imports it.

Running on CPU (tests, machines without GPUs); each point is handled here, nothing to set by hand:

- DeepSpeed selects its CPU accelerator by itself when CUDA is absent (it logs "Setting accelerator to
  CPU"; ``DS_ACCELERATOR=cpu`` forces it) and communicates over gloo (no oneCCL needed).
- Its CPU communication layer JIT-compiles a shared-memory all-reduce kernel (~2 min, once per machine)
  that only DeepSpeed's inference kernels use: :func:`init_distributed` marks it unavailable on CPU, so
  gloo carries every collective and nothing is compiled.
- The optimizer is ``torch.optim.AdamW``: DeepSpeed's ``DeepSpeedCPUAdam`` would compile for minutes.
- bf16 follows the model's dtype: ``"auto"`` is fp32 on CPU (``study.trial.runner.run_dtype``), where DeepSpeed has
  no bf16 support, even on a CPU with native bf16.
- ``LOCAL_RANK``, ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT`` come from torchrun.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import train
from ..errors import StudyInputError
from ..paths import ROOT, repository_file

DEFAULT_CONFIG = ROOT / "experiments" / "deepspeed" / "zero3.json"
"""The shipped ZeRO-3 config (the reference's ``config/ds_config/llama2.json`` without CPU offload)."""


# --------------------------------------------------------------------------------------------------
# Process group


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    """``cuda:<local_rank>`` on GPUs, else ``cpu``."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _skip_cpu_shm_kernel() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles ``deepspeed_shm_comm`` (a shared-memory
    all-reduce for its inference kernels) on first use: ~2 minutes per machine for nothing ZeRO uses.
    ``deepspeed.ops.__compatible_ops__`` is the registry DeepSpeed consults before building it (a
    per-process dict meant to be edited); marking the op incompatible leaves every collective to gloo."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def quiet_deepspeed() -> None:
    """DeepSpeed's INFO lines off, and torch's FutureWarning about the collective names DeepSpeed 0.19 still
    calls (``all_gather_into_tensor``, ``reduce_scatter_tensor``: two lines per call, every step; nothing a
    user of this repository can change) filtered for the ``torch.distributed`` module only."""
    import logging
    import warnings

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def init_distributed(timeout_s: float | None = None) -> DistEnv:
    """Join the process group that torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``), or make a one-process group when not launched by torchrun.
    Idempotent (the first call's ``timeout_s`` holds). The backend is the accelerator's: nccl on CUDA,
    gloo on CPU. ``timeout_s``: how long a collective call waits for the other ranks before it fails
    (None: torch's default, 10 min for nccl and 30 for gloo)."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    quiet_deepspeed()
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        _skip_cpu_shm_kernel()
    backend = accelerator.communication_backend_name()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, **timeout)
        else:
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                                    **timeout)
    # DeepSpeed's engine asserts that a launcher set LOCAL_RANK; a one-process run had none.
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Configuration


def load_config(path: str | Path | None) -> dict:
    """A DeepSpeed JSON config; None = :data:`DEFAULT_CONFIG`."""
    path = repository_file(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise StudyInputError(f"{path}: DeepSpeed config not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StudyInputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None


def _node(config: dict, dotted: str) -> tuple[dict | None, str]:
    *parents, key = dotted.split(".")
    node = config
    for parent in parents:
        node = node.get(parent)
        if not isinstance(node, dict):
            return None, key
    return node, key


def _autos(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [k for key, value in config.items() for k in _autos(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if config == "auto" else []


def fill_config(config: Mapping, train_cfg, *, world_size: int, dtype: torch.dtype,
                hidden_size: int | None = None) -> dict:
    """A copy of a DeepSpeed config with its ``"auto"`` values filled (as transformers' Trainer fills them).

    - batch geometry from ``train_cfg``: ``train_micro_batch_size_per_gpu`` = ``batch_size``,
      ``gradient_accumulation_steps`` = ``grad_accum / world_size`` (``grad_accum`` is the global count; a
      world size that does not divide it is an error), ``train_batch_size`` = ``batch_size * grad_accum``;
      written when absent, and a value that disagrees is an error;
    - ``bf16.enabled`` / ``fp16.enabled``: whether the model's ``dtype`` is bfloat16 / float16;
    - ``gradient_clipping``: 0 (docs/science.md §4: the reference does not clip);
    - ``optimizer.params.lr`` / ``weight_decay`` from ``train_cfg`` when the config names an optimizer;
    - precision and optimizer values given instead of ``"auto"`` must equal these (:data:`_MUST_AGREE`): a
      config that contradicts the preset is an error naming the key, not a silent override;
    - ZeRO-3 bucket sizes from the model's ``hidden_size`` (``h``): ``reduce_bucket_size = h*h``,
      ``stage3_prefetch_bucket_size = 0.9*h*h``, ``stage3_param_persistence_threshold = 10*h``.

    Without an ``optimizer`` section the caller passes a torch optimizer, so
    ``zero_allow_untested_optimizer`` is set. A ``scheduler`` section is an error: the training loop
    owns the learning rate. Any ``"auto"`` left unfilled is an error naming it.
    """
    out = copy.deepcopy(dict(config))
    geometry = {
        "train_micro_batch_size_per_gpu": train_cfg.batch_size,
        "gradient_accumulation_steps": train.ranks_accumulation(train_cfg.grad_accum, world_size),
        "train_batch_size": train_cfg.batch_size * train_cfg.grad_accum,
    }
    for key, value in geometry.items():
        given = out.get(key, "auto")
        if given == "auto":
            out[key] = value
        elif given != value:
            raise StudyInputError(f"DeepSpeed config sets {key}={given!r}, but the training configuration gives {value} "
                                  f"(train.batch_size {train_cfg.batch_size}, train.grad_accum {train_cfg.grad_accum}, "
                                  f"{world_size} processes): use \"auto\"")
    fills: dict[str, Any] = {
        "bf16.enabled": dtype == torch.bfloat16,
        "fp16.enabled": dtype == torch.float16,
        "gradient_clipping": 0.0,
        "optimizer.params.lr": train_cfg.lr,
        "optimizer.params.weight_decay": train_cfg.weight_decay,
    }
    if hidden_size:
        fills.update({
            "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
            "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        })
    for dotted, value in fills.items():
        node, key = _node(out, dotted)
        if node is None or key not in node:
            continue
        if node[key] == "auto":
            node[key] = value
        elif dotted in _MUST_AGREE and node[key] != value:
            raise StudyInputError(f"DeepSpeed config sets {dotted}={node[key]!r}, but the run gives {value!r} "
                                  f"({_MUST_AGREE[dotted]}): use \"auto\"")
    if "scheduler" in out:
        raise StudyInputError("the DeepSpeed config has a 'scheduler' section: remove it; the training loop sets the "
                              "learning rate (docs/science.md §4: linear warm-up and decay)")
    if "optimizer" not in out:
        out["zero_allow_untested_optimizer"] = True
    if left := _autos(out):
        raise StudyInputError(f"DeepSpeed config: cannot fill \"auto\" for {', '.join(left)}; give a value")
    return out


_MUST_AGREE = {
    "bf16.enabled": "the model's precision, model.dtype",
    "fp16.enabled": "the model's precision, model.dtype",
    "optimizer.params.lr": "train.lr",
    "optimizer.params.weight_decay": "train.weight_decay",
}
"""Keys a DeepSpeed config may leave ``"auto"`` or give, but not give otherwise than the run's settings."""


def zero_stage(config: Mapping) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _hidden_size(model) -> int | None:
    config = getattr(model, "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    return max(sizes) if sizes else getattr(config, "hidden_size", None)


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


# --------------------------------------------------------------------------------------------------
# Engines


def deepspeed_engine(model, train_cfg, config_path: str | Path | None = None, *, world_size: int | None = None):
    """A DeepSpeed training engine around ``model`` (partitioned in place under ZeRO-3).

    ``config_path``: a DeepSpeed JSON config (default ``train_cfg.deepspeed``, then
    :data:`DEFAULT_CONFIG`), filled by :func:`fill_config`. Unless it has an ``optimizer`` section the
    optimizer is ``torch.optim.AdamW`` with the loop's parameter groups (no decay on biases and norms).
    The process group must exist (:func:`init_distributed`).
    """
    import deepspeed
    import torch.distributed as dist

    world_size = world_size or dist.get_world_size()
    raw = load_config(config_path or train_cfg.deepspeed)
    config = fill_config(raw, train_cfg, world_size=world_size, dtype=_dtype(model), hidden_size=_hidden_size(model))
    groups = train.adamw_param_groups(model, train_cfg.weight_decay)
    if "optimizer" in config:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
    else:
        optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def reference_engine(model, train_cfg, config_path: str | Path | None = None, *, world_size: int | None = None):
    """A frozen reference model as an inference-only DeepSpeed engine (eval mode, no grad, no optimizer).

    Under ZeRO-3 its weights are sharded across ranks like the trained model's, so a second 7B model
    costs each GPU half its size; every rank must then run the same reference forward passes (the
    loop and :func:`study.training.train.cache_reference_logprobs` do). Other stages: stage 0 (a full copy per
    rank), as the reference code's ``e_prepare_deepspeed``.
    """
    import deepspeed
    import torch.distributed as dist

    world_size = world_size or dist.get_world_size()
    raw = load_config(config_path or train_cfg.deepspeed)
    config = fill_config(raw, train_cfg, world_size=world_size, dtype=_dtype(model), hidden_size=_hidden_size(model))
    config.pop("optimizer", None)
    config.pop("zero_allow_untested_optimizer", None)
    if zero_stage(config) != 3:
        config["zero_optimization"] = {"stage": 0}
    for param in model.parameters():
        param.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def gathered_state(module) -> dict[str, torch.Tensor]:
    """Every parameter of ``module`` in full, on CPU, on every rank (ZeRO-3 shards gathered one at a
    time, so a device never holds more than one full tensor extra). Collective: all ranks call it."""
    from deepspeed.runtime.zero import GatheredParameters

    state = {}
    for name, param in module.named_parameters():
        with GatheredParameters([param], modifier_rank=None):
            state[name] = param.detach().to("cpu", copy=True)
    return state


@torch.no_grad()
def load_gathered(model, state: Mapping[str, torch.Tensor]) -> None:
    """Copy :func:`gathered_state` into a plain model of the same architecture (names must match)."""
    params = dict(model.named_parameters())
    if missing := sorted(set(params) ^ set(state)):
        raise ValueError(f"gathered weights do not match the model: {missing[:5]}")
    for name, param in params.items():
        param.copy_(state[name].to(param.device, param.dtype))


def train_with_deepspeed(model, dataset, make_loss_fn: Callable[[Any], train.LossFn], train_cfg, *, ref_model=None,
                         callbacks: Sequence = (), progress: bool = False,
                         description: str = "train") -> train.TrainResult:
    """``study.training.train.train_loop`` on a DeepSpeed engine, for a caller that holds a plain model: a
    :class:`study.training.train.Fit` (``unlearn(fit=train_with_deepspeed)``), the config ``train_cfg.deepspeed``.

    The engine is built on a copy of ``model`` (on this rank's device); after training the weights are
    gathered and copied back into ``model``, so the caller continues with a plain module (evaluation,
    checkpoints, the next continual task with a fresh optimizer, as in one process). On a GPU, ``model``
    and ``ref_model`` wait on the CPU meanwhile, leaving the device to the engines.

    ``make_loss_fn(ref)`` returns the loss function given the reference to use: ``ref_model`` wrapped
    by :func:`reference_engine` (None stays None). Callbacks run on every rank; ``EpochEvent.model`` is
    the engine's (ZeRO-3-partitioned) module.
    """
    env = init_distributed()
    homes = (next(model.parameters()).device, next(ref_model.parameters()).device if ref_model is not None else None)
    if env.device.type != "cpu":  # park the plain copies: the engines need the memory
        model.to("cpu")
        if ref_model is not None:
            ref_model.to("cpu")
    engine = ref_engine = None
    try:
        work = copy.deepcopy(model).to(env.device)
        if ref_model is not None:
            ref_engine = reference_engine(copy.deepcopy(ref_model).to(env.device), train_cfg,
                                          world_size=env.world_size)
        engine = deepspeed_engine(work, train_cfg, world_size=env.world_size)
        result = train.train_loop(work, dataset, make_loss_fn(ref_engine), lr=train_cfg.lr, epochs=train_cfg.epochs,
                            batch_size=train_cfg.batch_size, grad_accum=train_cfg.grad_accum,
                            weight_decay=train_cfg.weight_decay, seed=train_cfg.seed, callbacks=callbacks,
                            world_size=env.world_size, rank=env.rank, engine=engine, progress=progress,
                            description=description)
        load_gathered(model, gathered_state(work))
    finally:
        for each in (engine, ref_engine):
            if each is not None:
                each.destroy()
        model.to(homes[0])
        if ref_model is not None:
            ref_model.to(homes[1])
    return result

