"""One trial, end to end: data -> target model (cached) -> unlearning task by task -> evaluation.

Tracking and search stay outside: ``run_trial`` reports through ``TrialHooks`` (the study module wires
them to MLflow and Optuna), so this file knows neither. The task loop itself is :func:`unlearn_tasks`,
which ``study.trial.distributed`` and the followers of ``study.trial.ranks`` drive too; :func:`fit_for` is where
``TrainConfig.deepspeed`` selects ZeRO-3.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from ..inputs import data as data_mod
from ..inputs import models
from ..training import train, zero
from ..config import RunConfig, TrainConfig
from ..inputs.scenarios import scenario


def content_hash(payload) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as sorted JSON: the cache key of a prepared model or an
    evaluation (``study.trial.references`` keys the target and retain evaluations with it too)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rows_hash(rows: list[dict]) -> str:
    return content_hash([[r["question"], r["answer"]] for r in rows])


def source_for(cfg: RunConfig) -> data_mod.Source:
    return data_mod.source_from(cfg.data.source, cfg.data.n_authors, cfg.data.data_seed)


def scenario_data(cfg: RunConfig, task: int | None, source: data_mod.Source | None = None) -> data_mod.ScenarioData:
    """Task ``task`` of the run's scenario; with ``eval.earlier_tasks`` its evaluation also holds the forget
    sets of the run's tasks before it (``earlier_forget``; a sequential scenario only)."""
    sc, tasks = scenario(cfg.data.scenario), list(cfg.data.tasks)
    earlier = tasks[:tasks.index(task)] if cfg.eval.earlier_tasks and sc.sequential and task in tasks else []
    known = data_mod.KnownRows.read(cfg.eval.known_rows) if cfg.eval.known_rows else None
    return sc.load(source or source_for(cfg), cfg.data.split, task, cfg.data.ds_size, holdout=cfg.eval.holdout,
                   retain_authors=cfg.data.retain_authors, last_task=max(cfg.data.tasks, default=None),
                   earlier_tasks=earlier, known=known)


def data_digest(cfg: RunConfig) -> str:
    """:func:`content_hash` of everything a run's trials read, task by task: the forget, retain and
    fine-tuning rows, every evaluation set's rows (all fields: answers, paraphrases, perturbations) and the
    refusal templates. A study records it (``study.search.check_data_digest``), its trial runs carry it
    (tag ``study.data_digest``) and so does its export, so that a study or export made on other data (the
    files changed, or the code that builds or filters them did) is refused rather than silently reused.
    The method and its hyper-parameters do not enter: every study of a sweep reads the same data."""
    source = source_for(cfg)
    parts = []
    for task in tasks_of(cfg):
        data = scenario_data(cfg, task, source)
        parts.append({"task": task, "forget": data.forget, "retain": data.retain, "full": data.full,
                      "eval": [[s.name, s.kind, s.truth, s.cosine_truth, s.rows] for s in data.eval_sets],
                      "refusals": data.refusals})
    return content_hash(parts)


def tasks_of(cfg: RunConfig) -> list[int | None]:
    """The tasks a run unlearns in order ([None] = every real-world person at once)."""
    if not cfg.data.tasks and not scenario(cfg.data.scenario).default_tasks:
        return [None]
    return list(cfg.data.tasks)


# --------------------------------------------------------------------------------------------------
# Target and retain models


@dataclass
class PreparedModel:
    path: str
    key: str
    kind: str  # target | retain_model
    cached: bool
    seconds: float = 0.0


def is_ready_target(cfg: RunConfig) -> bool:
    """The paper's models are used as they are: TOFU's fine-tuned Llama-2 and Llama-3-Instruct."""
    return cfg.model.target is not None or models.resolve(cfg.model.name).family in ("llama2", "llama3")


def run_dtype(cfg: RunConfig, device) -> torch.dtype:
    """The precision a run fine-tunes, unlearns and evaluates in: ``model.dtype`` on ``device``
    (:func:`study.inputs.models.resolve_dtype`), except that ``auto`` stays fp32 under DeepSpeed on a CPU,
    whose CPU accelerator trains in fp32 only (``study.training.zero``)."""
    device = torch.device(device) if device is not None else models.default_device()
    if cfg.model.dtype == "auto" and cfg.train.deepspeed and device.type == "cpu":
        return torch.float32
    return models.resolve_dtype(cfg.model.dtype, device)


def finetune_key(cfg: RunConfig, rows: list[dict], kind: str, device) -> str:
    """The cache key of a fine-tuned ``kind`` model: model, data, fine-tuning settings and precision."""
    dtype = run_dtype(cfg, device)
    return content_hash({"kind": kind, "model": cfg.model.name, "rows": rows_hash(rows), "finetune": asdict(cfg.finetune),
                  "dtype": str(dtype).removeprefix("torch.")})


def finetuned_model(cfg: RunConfig, rows: list[dict], kind: str, device, progress: bool = True) -> PreparedModel:
    """Fine-tune ``cfg.model.name`` on ``rows`` once; cached under a hash of model, data, settings and the
    precision it trains in (``model.dtype`` resolved on ``device``: ``auto`` is bf16 on one machine, fp32
    on another)."""
    key = finetune_key(cfg, rows, kind, device)
    path = models.cache_dir() / "finetuned" / f"{kind}-{key}"
    if (path / "model.safetensors").exists():
        return PreparedModel(str(path), key, kind, cached=True)
    started = time.perf_counter()
    dtype = run_dtype(cfg, device)
    lm = models.load(cfg.model.name, device=device, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code)
    train.finetune(lm.model, lm.tokenizer, lm.prompt, rows, cfg.finetune, progress=progress)
    models.save_checkpoint(lm.model, lm.tokenizer, lm.prompt, path,
                           {"kind": kind, "base_model": cfg.model.name, "finetune": asdict(cfg.finetune), "rows": len(rows),
                            "dtype": str(dtype).removeprefix("torch.")})
    return PreparedModel(str(path), key, kind, cached=False, seconds=time.perf_counter() - started)


def target_model(cfg: RunConfig, data: data_mod.ScenarioData, device, progress=True) -> PreparedModel:
    if cfg.model.target is not None:
        return PreparedModel(cfg.model.target, content_hash(cfg.model.target), "target", cached=True)
    if is_ready_target(cfg):
        return PreparedModel(cfg.model.name, content_hash(cfg.model.name), "target", cached=True)
    return finetuned_model(cfg, data.full, "target", device, progress)


# --------------------------------------------------------------------------------------------------
# A trial


@dataclass
class TaskResult:
    task: int | None
    summary: dict[str, float]
    items: object  # pandas DataFrame
    aggregate_parts: dict
    entailment_available: bool
    train_seconds: float
    eval_seconds: float
    steps: int


@dataclass
class TrialHooks:
    """What the caller plugs in. Every field is optional."""

    callbacks: list = field(default_factory=list)
    """Training callbacks (on_step / on_epoch), e.g. the MLflow step logger."""
    on_task: object = None
    """``on_task(TaskResult)`` after each task is evaluated (logging, continual curves)."""
    on_data: object = None
    """``on_data(task, ScenarioData)`` before each task is unlearned (logging the run's inputs)."""
    make_epoch_callback: object = None
    """``make_epoch_callback(evaluate_fn, task) -> callback`` for per-epoch evaluation (pruning)."""
    retain_forget_truth_ratios: object = None
    """``fn(task) -> np.ndarray | None``: the retain model's forget-set R per item (Forget Quality)."""
    retain_mia_aucs: object = None
    """``fn(task) -> dict | None``: the retain model's ``mia_auc/<attack>`` on the same forget and holdout
    items (PrivLeak, docs/science-beyond-paper.md §3)."""
    fit: object = None
    """How each task trains (a ``study.training.train.Fit``); None: :func:`fit_for` the run's ``train``
    settings. A trial over several processes passes ``study.trial.ranks.Leader.fit``."""


@dataclass
class TrialResult:
    tasks: list[TaskResult]
    model: object
    tokenizer: object
    prompt: models.PromptFormat
    target: PreparedModel

    @property
    def final(self) -> TaskResult:
        return self.tasks[-1]


def load_for_training(path: str, cfg: RunConfig, device):
    lm = models.load(path, device=device, dtype=run_dtype(cfg, device),
                     trust_remote_code=cfg.model.trust_remote_code)
    if cfg.train.gradient_checkpointing:
        lm.model.gradient_checkpointing_enable()
        lm.model.config.use_cache = False
    if cfg.train.lora_rank:
        lm.model = train.apply_lora(lm.model, cfg.train.lora_rank)
    return lm


def frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def fit_for(train_cfg: TrainConfig) -> train.Fit:
    """How ``train.unlearn`` runs the loop for ``train_cfg``: through DeepSpeed engines
    (``zero.train_with_deepspeed``) when ``train.deepspeed`` names a config, else in this process."""
    return zero.train_with_deepspeed if train_cfg.deepspeed else train.fit_in_process


@dataclass
class Unlearned:
    """One task unlearned, as :func:`unlearn_tasks` yields it (the model is the caller's ``lm.model``)."""

    task: int | None
    data: data_mod.ScenarioData
    trained: train.TrainResult


def unlearn_tasks(cfg: RunConfig, lm: models.LoadedModel, hooks: TrialHooks | None = None, *,
                  source: data_mod.Source | None = None, first: data_mod.ScenarioData | None = None,
                  extra_callback: Callable[[int | None, data_mod.ScenarioData], object] | None = None,
                  progress: bool = True) -> Iterator[Unlearned]:
    """Unlearn every task of ``cfg`` in order, in ``lm.model``, yielding after each (docs/science.md §1, §4):
    a caller evaluates between tasks, or just iterates to train.

    Continual: task k starts from the model left by task k-1; the reference model (NPO, DPO, KL) is
    the model at the start of the task, or the original one with ``method.fix_ref_model``. With
    ``cfg.train.deepspeed`` each task trains through ZeRO-3 (:func:`fit_for`).

    ``hooks``: ``on_data(task, data)`` before each task, ``callbacks`` during each. ``source`` /
    ``first``: the data source and the first task's data, when the caller has already read them.
    ``extra_callback(task, data)``: one more training callback for the task (None: none).
    """
    hooks = hooks or TrialHooks()
    method = cfg.method.method()
    source = source or source_for(cfg)
    tasks = tasks_of(cfg)
    original_ref = frozen_copy(lm.model) if (method.needs_ref_model and cfg.method.fix_ref_model) else None
    for task in tasks:
        data = first if (task == tasks[0] and first is not None) else scenario_data(cfg, task, source)
        if hooks.on_data is not None:
            hooks.on_data(task, data)
        ref_model = None
        if method.needs_ref_model:
            ref_model = original_ref if original_ref is not None else frozen_copy(lm.model)
        callbacks = list(hooks.callbacks)
        extra = extra_callback(task, data) if extra_callback is not None else None
        if extra is not None:
            callbacks.append(extra)
        trained = train.unlearn(lm.model, lm.tokenizer, lm.prompt, method, data, cfg.train, cfg.method.label_mode(),
                                ref_model=ref_model, callbacks=callbacks, progress=progress,
                                fit=hooks.fit or fit_for(cfg.train))
        del ref_model
        yield Unlearned(task, data, trained)


def run_trial(cfg: RunConfig, hooks: TrialHooks | None = None, *, device=None, metric_models=None,
              progress: bool = True, target: PreparedModel | None = None) -> TrialResult:
    """Unlearn every task of ``cfg`` in order (:func:`unlearn_tasks`) and evaluate after each
    (docs/science.md §1, §4)."""
    from ..evaluation import evaluate as ev

    hooks = hooks or TrialHooks()
    device = torch.device(device) if device is not None else models.default_device()
    source = source_for(cfg)
    first = scenario_data(cfg, tasks_of(cfg)[0], source)
    target = target or target_model(cfg, first, device, progress)
    lm = load_for_training(target.path, cfg, device)
    metric_models = metric_models or ev.load_metric_models(cfg.eval.embedder, cfg.eval.nli, device)

    def epoch_callback(task, data):
        """Per-epoch evaluation (pruning), when the caller asks for it."""
        if hooks.make_epoch_callback is None or not cfg.eval.per_epoch:
            return None

        def evaluate_fn(model):
            return ev.evaluate(model, lm.tokenizer, lm.prompt, data.eval_sets, cfg.data.scenario, metric_models,
                               batch_size=cfg.eval.batch_size, max_length=cfg.eval.max_length, progress=False)

        return hooks.make_epoch_callback(evaluate_fn, task)

    results = []
    for done in unlearn_tasks(cfg, lm, hooks, source=source, first=first, extra_callback=epoch_callback,
                              progress=progress):
        task, data = done.task, done.data
        started = time.perf_counter()
        result = ev.evaluate(lm.model, lm.tokenizer, lm.prompt, data.eval_sets, cfg.data.scenario, metric_models,
                             batch_size=cfg.eval.batch_size, max_length=cfg.eval.max_length, progress=progress)
        summary = dict(result.summary)
        retain_r = hooks.retain_forget_truth_ratios(task) if hooks.retain_forget_truth_ratios else None
        if retain_r is not None:
            summary["forget_quality"] = result.with_forget_quality(retain_r).summary["forget_quality"]
        retain_aucs = hooks.retain_mia_aucs(task) if hooks.retain_mia_aucs else None
        if retain_aucs:
            summary.update({k: v for k, v in result.with_privleak(retain_aucs).summary.items() if k.startswith("privleak/")})
        task_result = TaskResult(task, summary, result.items, result.aggregate_parts, result.entailment_available,
                                 done.trained.seconds, time.perf_counter() - started, done.trained.steps)
        results.append(task_result)
        if hooks.on_task is not None:
            hooks.on_task(task_result)
    return TrialResult(results, lm.model, lm.tokenizer, lm.prompt, target)
