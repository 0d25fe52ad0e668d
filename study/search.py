"""Everything Optuna: search spaces (declared with the losses), studies, the objective, and the wiring of
trials to MLflow runs.

One Optuna study per method (``<study name>/<method>``), so each method gets its own search space and
sampler; each study has one MLflow parent run and one nested run per trial. Workers that share the
storage share the study: a worker runs trials until the study holds ``n_trials`` finished (complete
or pruned) trials; a trial numbered beyond that by a race is dropped before it does any work.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import models
from .config import RunConfig
from .errors import StudyInputError, one_of
from .losses import HYPERPARAMS, Method, Param
from .tracking import TAG, StepLogger, Tracker, package_versions, redact

SAMPLERS = ("tpe", "grid", "paper")
OBJECTIVES = ("pareto", "average", "model_utility", "forget_efficacy")
KEEP = ("best", "all", "none")
DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
HEARTBEAT_S = 30  # default Optuna heartbeat (s); a trial silent for 2x this long is failed by the next worker
MAX_FAILURES = 5  # a worker stops a study after this many failed trials in a row
CLAIM_TIMEOUT_S = 120  # a claim on creating a study's MLflow run that produced none in this long is taken over

# REFERENCE §4: the released scripts' settings, per scenario and method (lr, forget_coeff, epochs).
_PAPER = {
    "fictitious": {"ME+GD": [{"lr": 1e-5, "forget_coeff": 0.1}], "*": [{"lr": 1e-5, "forget_coeff": 1.0}]},
    "continual": {"*": [{"lr": 1e-5, "forget_coeff": 1.0}]},
    "real-world": {
        "ME+GD": [{"lr": 5e-6, "forget_coeff": 0.5}],
        "IDK+AP": [{"lr": 1e-5, "forget_coeff": 1.0}],
        "*": [{"lr": lr, "forget_coeff": 1.0, "epochs": epochs} for lr in (1e-5, 2e-6, 5e-6) for epochs in (5, 3)],
    },
}


def paper_settings(scenario: str, method: str) -> list[dict]:
    """The paper's exact settings for a method (β = 0.1 everywhere; regularization_coeff 1.0)."""
    table = _PAPER[scenario]
    rows = table.get(method, table["*"])
    uses_beta = "beta" in Method.parse(method).hyperparams
    return [{**row, **({"beta": 0.1} if uses_beta else {})} for row in rows]


def grid_values(param: Param, points: int = 3) -> list[float]:
    """``points`` values spread over the range (log-spaced for log parameters), rounded to 3 digits."""
    if param.log:
        values = np.geomspace(param.low, param.high, points)
    else:
        values = np.linspace(param.low, param.high, points)
    return [float(f"{v:.3g}") for v in values]


@dataclass
class StudySettings:
    """What a sweep runs, beyond one trial's ``RunConfig``."""

    study_name: str
    methods: list[str]
    n_trials: int = 4
    sampler: str = "tpe"
    objective: str = "pareto"
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "unlearning-study"
    seed: int = 0
    keep_checkpoints: str = "best"
    prune: bool = False
    preset: str = "default"
    space: dict = dataclasses.field(default_factory=dict)
    """Range overrides ``name -> [low, high]`` (e.g. a preset's learning rates for a small model)."""
    heartbeat: int = HEARTBEAT_S
    """Seconds between a running trial's heartbeats; a trial silent for twice as long (its worker was
    killed) is failed, and its MLflow run ended FAILED, by the next worker that starts a trial."""
    max_failures: int = MAX_FAILURES
    """Stop the study after this many failed trials in a row (a setting that always diverges)."""

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise one_of("sampler", self.sampler, SAMPLERS)
        if self.objective not in OBJECTIVES:
            raise one_of("objective", self.objective, OBJECTIVES)
        if self.keep_checkpoints not in KEEP:
            raise one_of("keep-checkpoints policy", self.keep_checkpoints, KEEP)
        if not isinstance(self.n_trials, int) or self.n_trials < 1:
            raise StudyInputError(f"n_trials must be a positive integer, got {self.n_trials!r}")
        for name in ("heartbeat", "max_failures"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool) or getattr(self, name) < 1:
                raise StudyInputError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.prune and self.objective == "pareto":
            raise StudyInputError("pruning needs a single objective: add --objective average (or model_utility, forget_efficacy)")
        if not self.methods:
            raise StudyInputError("no method given; e.g. --method ME+GD")
        for name in self.methods:
            try:
                Method.parse(name)
            except ValueError as error:
                raise StudyInputError(str(error)) from None
        for name, bounds in self.space.items():
            if name not in HYPERPARAMS:
                raise one_of("searchable hyper-parameter", name, HYPERPARAMS)
            try:
                low, high = (float(b) for b in bounds)
                dataclasses.replace(HYPERPARAMS[name], low=low, high=high, default=None)
            except (TypeError, ValueError):
                raise StudyInputError(f"search range of {name} must be [low, high] with 0 < low < high, got {bounds!r}") from None


# --------------------------------------------------------------------------------------------------
# Search spaces


def search_space(method: str, scenario: str, sampler: str, overrides: dict | None = None) -> dict[str, object]:
    """``name -> Param`` (tpe) or ``name -> list of values`` (grid, paper). The ranges are the ones the
    losses declare (``study.losses``), narrowed or moved by ``overrides`` (``name -> [low, high]``)."""
    if sampler == "paper":
        rows = paper_settings(scenario, method)
        return {key: sorted({row[key] for row in rows}) for key in rows[0]}
    space = {p.name: p for p in Method.parse(method).search_space()}
    for name, (low, high) in (overrides or {}).items():
        if name in space:
            space[name] = dataclasses.replace(space[name], low=float(low), high=float(high), default=None)
    if sampler == "grid":
        return {name: grid_values(p) for name, p in space.items()}
    return space


def describe_space(space: dict) -> str:
    parts = []
    for name, spec in space.items():
        if isinstance(spec, Param):
            parts.append(f"{name} in [{spec.low:g}, {spec.high:g}]{' (log)' if spec.log else ''}")
        else:
            parts.append(f"{name} in {{{', '.join(f'{v:g}' for v in spec)}}}")
    return ", ".join(parts)


def checkpoint_estimate(cfg: RunConfig, settings: StudySettings) -> str:
    """The disk a keep policy will use, printed before the study starts."""
    n_params = {"llama2-7b": 6.74e9, "llama3-8b": 8.03e9, "smollm2-135m": 1.35e8, "tiny-llama": 3.3e6}.get(cfg.model.name)
    if n_params is None:
        return f"checkpoints: keep {settings.keep_checkpoints} (size unknown for {cfg.model.name})"
    bytes_per = 2 if cfg.model.dtype in ("bfloat16", "float16") or (cfg.model.dtype == "auto" and models.default_device().type == "cuda") else 4
    one = n_params * bytes_per / 1e9
    total = settings.n_trials * len(settings.methods)
    if settings.keep_checkpoints == "none":
        return "checkpoints: none kept (0 GB)"
    if settings.keep_checkpoints == "all":
        return f"checkpoints: all kept: {total} x {one:.2f} GB = {total * one:.2f} GB"
    return (f"checkpoints: Pareto-best kept: {one:.2f} GB each, at most {total * one:.2f} GB "
            f"(typically a few per method; others are deleted after each trial)")


def suggest(trial, space: dict) -> dict:
    out = {}
    for name, spec in space.items():
        if isinstance(spec, Param):
            out[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        else:
            out[name] = trial.suggest_categorical(name, list(spec))
    return out


def apply_params(cfg: RunConfig, method: str, params: dict) -> RunConfig:
    """The trial's configuration: the preset's, with the sampled hyper-parameters in place."""
    changes = {"method": {"name": method}, "train": {}}
    for name, value in params.items():
        if name in ("lr", "epochs"):
            changes["train"][name] = value
        else:
            changes["method"][name] = value
    return cfg.replace(**changes)


def fixed_config(cfg: RunConfig, method: str, space: dict) -> dict:
    """The settings every trial of a study shares: the trial configuration without the searched
    hyper-parameters (and the evaluation batch size, which changes speed, not results), JSON-normalised.
    A study resumed with other fixed settings would mix incomparable trials."""
    flat = apply_params(cfg, method, {}).flat()
    searched = {f"{section}.{name}" for name in space for section in ("train", "method")}
    fixed = {k: v for k, v in flat.items() if k not in searched and k != "eval.batch_size"}
    return json.loads(json.dumps(fixed, default=str))


def check_fixed_config(study, fixed: dict, storage_url: str) -> None:
    """Record ``fixed`` on a new study; on an existing one, refuse settings that differ from it."""
    recorded = study.user_attrs.get("fixed_config")
    if recorded is None:
        study.set_user_attr("fixed_config", fixed)
        return
    changed = [k for k in sorted(set(recorded) | set(fixed)) if recorded.get(k) != fixed.get(k)]
    if changed:
        shown = ", ".join(f"{k} {recorded.get(k)!r} -> {fixed.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise StudyInputError(
            f"study {study.study_name} in {redact(storage_url)} was run with other settings ({shown}{more}): "
            "run with its settings to resume it, or pass a new --study-name")


def make_sampler(settings: StudySettings, space: dict, offset: int = 0):
    """The study's sampler. ``offset`` (the number of trials already in the study) moves TPE's seed, so
    a resumed study or a second worker does not repeat the first suggestions. Grid and paper samplers
    keep ``settings.seed``: their grid order is drawn from it, and trial ``k`` takes grid point ``k``
    of that order, so every worker must share one order (a moved seed would repeat points)."""
    import optuna

    if settings.sampler in ("grid", "paper"):
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=settings.seed)
    if settings.objective == "pareto":
        return optuna.samplers.TPESampler(seed=settings.seed + offset, multivariate=True)
    return optuna.samplers.TPESampler(seed=settings.seed + offset)


def objective_values(summary: dict, objective: str):
    mu, fe = summary.get("model_utility", float("nan")), summary.get("forget_efficacy", float("nan"))
    if objective == "pareto":
        return [mu, fe]
    if objective == "average":
        return (mu + fe) / 2
    return summary[objective]


def directions(objective: str) -> list[str]:
    return ["maximize", "maximize"] if objective == "pareto" else ["maximize"]


# --------------------------------------------------------------------------------------------------
# Storage


def open_storage(url: str, failed_trial_callback=None, heartbeat: int = HEARTBEAT_S):
    """An Optuna storage with heartbeats (every ``heartbeat`` s, grace 2x), so a killed worker's trial is
    marked failed on resume.

    ``sqlite:///...``, ``postgresql+psycopg2://...`` (any SQLAlchemy URL) or ``journal:<file>``.
    """
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).resolve().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                          grace_period=2 * heartbeat, heartbeat_stale_trial_callback=failed_trial_callback)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise StudyInputError(f"Optuna storage {redact(url)} is unreachable: {type(error).__name__}: {first}") from None


def _counted(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


class SurplusTrial(Exception):
    """A trial numbered beyond ``n_trials`` by a race between workers: dropped before any work."""


class Interrupted(Exception):
    pass


class NonFiniteObjective(ValueError):
    """A trial finished but its objective is NaN or infinite (e.g. a metric with no value): failed."""


class TooManyFailures(StudyInputError):
    """``max_failures`` trials failed in a row (e.g. every setting diverges): the study stops."""


# --------------------------------------------------------------------------------------------------
# A study


class Sweep:
    """Runs the studies of one sweep command in this process (one worker)."""

    def __init__(self, cfg: RunConfig, settings: StudySettings, progress: bool = True, device=None, log=print):
        self.cfg, self.settings, self.progress, self.log = cfg, settings, progress, log
        self.device = device
        self.tracker: Tracker | None = None
        self.metric_models = None
        self._targets: dict[str, tuple] = {}
        self._retain_r: dict = {}
        self._current_run: str | None = None  # the MLflow run of the trial in progress (ended KILLED on Ctrl-C)

    # MLflow ------------------------------------------------------------------------------------
    def _end_stale_run(self, study, trial) -> None:
        """Optuna's failed-trial callback: a trial whose worker stopped beating is failed in MLflow too."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        self.log(f"trial {trial.number}: its worker stopped beating (killed or crashed): failed, MLflow run {run_id} ended FAILED")
        if run_id and self.tracker is not None:
            self.tracker.end(run_id, "FAILED", "worker stopped (no heartbeat): killed or crashed; the study resumed without it")

    def _end_current_run(self, status: str, reason: str) -> None:
        run_id, self._current_run = self._current_run, None
        if run_id and self.tracker is not None:
            try:
                if self.tracker.client.get_run(run_id).info.status == "RUNNING":
                    self.tracker.end(run_id, status, reason)
            except Exception:  # the store is unreachable: the heartbeat recovery will end it
                pass

    def _parent_run(self, study, method: str) -> str:
        """The study's MLflow run, created once even when workers start together.

        The claim is atomic: the worker that creates the Optuna study ``<name>#claim-<k>`` (study names
        are unique in every Optuna storage) creates the run; the others wait for its id. A claim that
        has not produced a run within ``CLAIM_TIMEOUT_S`` (its worker died) is taken over by claiming
        ``k + 1``. Claims are deleted once the run's id is stored."""
        import optuna

        storage, generation, waiting_since = study._storage, 1, None
        while True:
            run_id = study.user_attrs.get("mlflow_parent_run_id")
            if run_id:
                return run_id
            claim = f"{study.study_name}#claim-{generation}"
            try:
                optuna.create_study(study_name=claim, storage=storage)
            except optuna.exceptions.DuplicatedStudyError:
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > CLAIM_TIMEOUT_S:
                    generation, waiting_since = generation + 1, None
                else:
                    time.sleep(0.5)
                continue
            # Won: unless a run appeared between the check above and the claim (claims are deleted after it).
            run_id = study.user_attrs.get("mlflow_parent_run_id") or self._create_parent_run(study, method)
            for k in range(1, generation + 1):
                try:
                    optuna.delete_study(study_name=f"{study.study_name}#claim-{k}", storage=storage)
                except KeyError:
                    pass
            return run_id

    def _create_parent_run(self, study, method: str) -> str:
        run_id = self.tracker.start(study.study_name, "study", {
            "study_name": study.study_name, "method": method, "scenario": self.cfg.data.scenario,
            "split": self.cfg.data.split, "model": self.cfg.model.name, "preset": self.settings.preset,
        })
        self.tracker.params(run_id, {**{f"study.{k}": v for k, v in dataclasses.asdict(self.settings).items()
                                        if k not in ("storage", "tracking_uri")},
                                     "study.storage": redact(self.settings.storage)})
        study.set_user_attr("mlflow_parent_run_id", run_id)
        return run_id

    def _trial_tags(self, cfg: RunConfig, study_name: str, number: int, method: str, task) -> dict:
        return {
            "scenario": cfg.data.scenario, "method": method, "split": cfg.data.split if cfg.data.scenario != "real-world" else "real-world",
            "task": task, "model": cfg.model.name, "data_source": cfg.data.source if not cfg.data.source.startswith("/") else cfg.data.source,
            "study_name": study_name, "trial_number": number, "fix_ref_model": cfg.method.fix_ref_model,
        }

    # models -----------------------------------------------------------------------------------
    def _metric_models(self, device):
        from . import evaluate as ev

        if self.metric_models is None:
            self.metric_models = ev.load_metric_models(self.cfg.eval.embedder, self.cfg.eval.nli, device)
            if self.metric_models.nli is None:
                self.log(f"warning: Entailment is missing ({self.metric_models.nli_error}); "
                         "Model Utility and Forget Efficacy are computed without it (pass --nli MODEL)")
        return self.metric_models

    def _device(self):
        import torch

        return torch.device(self.device) if self.device else models.default_device()

    def _evaluate_path(self, path: str, data, device):
        from . import evaluate as ev
        from .runner import torch_dtype

        lm = models.load(path, device=device, dtype=torch_dtype(self.cfg.model.dtype, device))
        return ev.evaluate(lm.model, lm.tokenizer, lm.prompt, data.eval_sets, self.cfg.data.scenario, self._metric_models(device),
                           batch_size=self.cfg.eval.batch_size, max_length=self.cfg.eval.max_length, progress=self.progress)

    def _eval_key(self) -> str:
        from .runner import _hash

        return _hash(dataclasses.asdict(self.cfg.eval) | {"ds_size": self.cfg.data.ds_size})

    def prepare_target(self):
        """The target model (fine-tuned once, cached) and its MLflow run with its evaluation."""
        from .runner import scenario_data, target_model, tasks_of

        if "target" in self._targets:
            return self._targets["target"]
        device = self._device()
        data = scenario_data(self.cfg, tasks_of(self.cfg)[0])
        self.log(f"target model: from {self.cfg.model.target or self.cfg.model.name} ...")
        prepared = target_model(self.cfg, data, device, self.progress)
        self.log(f"target model: {prepared.path} ({'cached' if prepared.cached else f'fine-tuned in {prepared.seconds:.0f} s'})")
        runs = self.tracker.find("target", key=prepared.key, eval_key=self._eval_key(), task=tasks_of(self.cfg)[0])
        runs = [r for r in runs if r.info.status == "FINISHED"]
        if runs:
            run_id = runs[0].info.run_id
        else:
            run_id = self.tracker.start(f"target-{prepared.key}", "target", {
                "key": prepared.key, "eval_key": self._eval_key(), "model": self.cfg.model.name, "path": prepared.path,
                "scenario": self.cfg.data.scenario, "split": self.cfg.data.split, "task": tasks_of(self.cfg)[0],
                "data_source": self.cfg.data.source})
            self.tracker.params(run_id, {f"finetune.{k}": v for k, v in dataclasses.asdict(self.cfg.finetune).items()})
            self.tracker.params(run_id, {"model.name": self.cfg.model.name, "finetune.seconds": round(prepared.seconds, 1)})
            self.log("target model: evaluating (once per target) ...")
            result = self._evaluate_path(prepared.path, data, device)
            self.tracker.metrics(run_id, result.summary)
            self.tracker.table_artifact(run_id, "eval/items.csv", result.items)
            self.tracker.end(run_id)
        self._targets["target"] = (prepared, run_id)
        return prepared, run_id

    def retain_truth_ratios(self, task):
        """The retain model's forget-set truth ratios R for ``task`` (fine-tuned and evaluated once)."""
        from .runner import finetuned_model, scenario_data

        if not self.cfg.finetune.retain_model:
            return None
        if task in self._retain_r:
            return self._retain_r[task][0]
        device = self._device()
        data = scenario_data(self.cfg, task)
        prepared = finetuned_model(self.cfg, data.retain, "retain_model", device, self.progress)
        cache = Path(prepared.path) / f"forget_truth_ratio-{self._eval_key()}-task{task}.json"
        runs = [r for r in self.tracker.find("retain_model", key=prepared.key, task=task) if r.info.status == "FINISHED"]
        if cache.exists() and runs:
            values = np.array(json.loads(cache.read_text()))
            run_id = runs[0].info.run_id
        else:
            self.log(f"retain model (for Forget Quality, task {task}): evaluating ...")
            result = self._evaluate_path(prepared.path, data, device)
            forget = result.items[result.items["set"] == "forget"]
            values = forget["truth_ratio_raw"].to_numpy(dtype=float)
            partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")  # atomic: workers share the cache
            partial.write_text(json.dumps(values.tolist()))
            partial.replace(cache)
            run_id = self.tracker.start(f"retain-model-{prepared.key}", "retain_model", {
                "key": prepared.key, "model": self.cfg.model.name, "path": prepared.path, "task": task,
                "scenario": self.cfg.data.scenario, "split": self.cfg.data.split})
            self.tracker.metrics(run_id, result.summary)
            self.tracker.table_artifact(run_id, "eval/items.csv", result.items)
            self.tracker.end(run_id)
        self._retain_r[task] = (values, run_id)
        return values

    # the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, object]:
        """Run every method's study to ``n_trials`` finished trials; returns ``method -> study``."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.settings.storage, failed_trial_callback=self._end_stale_run,
                               heartbeat=self.settings.heartbeat)
        self.tracker = Tracker(self.settings.tracking_uri, self.settings.experiment)
        studies = {}
        try:
            for method in self.settings.methods:
                studies[method] = self._run_method(storage, method)
        except KeyboardInterrupt:  # wherever it hit: the trial's run ends KILLED (Optuna fails the trial)
            self._end_current_run("KILLED", "interrupted (Ctrl-C)")
            raise
        return studies

    def _run_method(self, storage, method: str):
        import optuna
        from optuna.trial import TrialState

        name = f"{self.settings.study_name}/{method}"
        space = search_space(method, self.cfg.data.scenario, self.settings.sampler, self.settings.space)
        n_trials = self.settings.n_trials
        if self.settings.sampler in ("grid", "paper"):
            n_trials = min(n_trials, math.prod(len(v) for v in space.values())) if self.settings.sampler == "grid" else \
                math.prod(len(v) for v in space.values())
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    directions=directions(self.settings.objective),
                                    sampler=make_sampler(self.settings, space),
                                    pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if self.settings.prune else optuna.pruners.NopPruner())
        # A sampler seeded alike in every process would repeat the same first suggestions when a
        # study resumes or a second worker joins: offset the seed by the trials already there.
        study.sampler = make_sampler(self.settings, space, offset=len(study.trials))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["model_utility", "forget_efficacy"] if self.settings.objective == "pareto"
                                   else [self.settings.objective])
        check_fixed_config(study, fixed_config(self.cfg, method, space), self.settings.storage)
        parent = self._parent_run(study, method)
        if _counted(study) < n_trials and self.tracker.client.get_run(parent).info.status != "RUNNING":
            self.tracker.client.update_run(parent, status="RUNNING")  # resumed with trials to run
        done = _counted(study)
        self.log(f"study {name}: {done}/{n_trials} trials finished" + (", resuming" if done else ""))
        failures = 0
        while _counted(study) < n_trials:
            mine, errors = [], []
            # Re-seeded before every trial (TPE keeps no state but its RNG): workers that share the study
            # draw different suggestions instead of repeating each other's sequence; one worker stays
            # deterministic (trial k uses seed + k).
            study.sampler = make_sampler(self.settings, space, offset=len(study.get_trials(deepcopy=False)))

            def objective(trial):
                try:
                    return self._objective(trial, study, method, space, parent, n_trials)
                except Exception as error:
                    errors.append(error)
                    if not isinstance(error, (optuna.TrialPruned, SurplusTrial)) and "failure_reason" not in trial.user_attrs:
                        trial.set_user_attr("failure_reason", f"{type(error).__name__}: {error}"[:1000])
                    raise

            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                           callbacks=[lambda _study, frozen: mine.append(frozen)])
            last = mine[-1] if mine else study.get_trials(deepcopy=False)[-1]  # this worker's trial
            if last.user_attrs.get("surplus"):
                # The study is full of other workers' trials: wait for them; go on if one of them fails.
                if not self._wait_for_others(study, storage, n_trials):
                    break
                continue
            self._apply_keep_policy(study)
            failures = failures + 1 if last.state == TrialState.FAIL else 0
            if failures and isinstance(errors[-1] if errors else None, StudyInputError):
                raise StudyInputError(f"study {name}, trial {last.number}: {errors[-1]}")
            if failures >= self.settings.max_failures:
                raise TooManyFailures(
                    f"study {name}: {failures} trials failed in a row, the last with {last.user_attrs.get('failure_reason', '?')}"
                    f" -- change the settings (e.g. lower learning rates or coefficients) or raise --max-failures, "
                    "then run the same command again to resume")
        finished = _counted(study)
        self.tracker.metrics(parent, {"n_trials_finished": finished})
        if finished >= n_trials:  # the study is complete (a later run with more trials re-opens it)
            self.tracker.end(parent, "FINISHED")
        return study

    def _wait_for_others(self, study, storage, n_trials: int) -> bool:
        """After a surplus trial: wait while other trials run. True when the study still needs trials and
        none runs any more (one failed, or its worker died and its heartbeat went stale): go on."""
        import optuna
        from optuna.trial import TrialState

        if not isinstance(storage, optuna.storages.RDBStorage):  # no heartbeat: a dead worker's trial stays RUNNING
            return False
        while _counted(study) < n_trials:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            if not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
                return True
            time.sleep(min(5, self.settings.heartbeat))
        return False

    def _objective(self, trial, study, method: str, space: dict, parent: str, n_trials: int):
        import optuna
        from optuna.trial import TrialState

        earlier = [t for t in study.get_trials(deepcopy=False)
                   if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        if len(earlier) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is beyond the {n_trials} the study needs (another worker took the last one)")
        params = suggest(trial, space)
        cfg = apply_params(self.cfg, method, params)
        cfg = cfg.replace(train={"seed": self.cfg.train.seed})
        from .runner import TrialHooks, run_trial, tasks_of

        prepared, target_run = self.prepare_target()
        tags = self._trial_tags(cfg, study.study_name, trial.number, method, tasks_of(cfg)[-1])
        tags["target_run_id"] = target_run
        run_id = self.tracker.start(f"{method} trial {trial.number}", "trial", tags, parent=parent)
        self._current_run = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.params(run_id, {**cfg.flat(), **{f"sampled.{k}": v for k, v in params.items()}})
        self.tracker.tags(run_id, {f"version.{k}": v for k, v in package_versions().items()})
        self.tracker.json_artifact(run_id, "config.json", {"config": cfg.to_dict(), "sampled": params, "study": study.study_name,
                                                           "trial": trial.number})
        started = time.perf_counter()
        logger = StepLogger(self.tracker, run_id)

        def on_task(result):
            step = result.task if result.task is not None else 1
            self.tracker.metrics(run_id, result.summary, step=step)
            self.tracker.metrics(run_id, {"time/train_s": result.train_seconds, "time/eval_s": result.eval_seconds}, step=step)
            self.tracker.table_artifact(run_id, f"eval/items_task{step}.csv", result.items)
            tags = {"entailment": "available" if result.entailment_available else "missing",
                    "aggregate_parts": json.dumps(result.aggregate_parts, default=str)[:4900]}
            if result.task in self._retain_r:  # the retain model whose forget-set R gave this task's Forget Quality
                tags["retain_run_id"] = self._retain_r[result.task][1]
            self.tracker.tags(run_id, tags)
            # Continual: the next task's optimizer steps continue this task's step axis of train/*.
            logger.flush()
            logger.offset += result.steps

        def make_epoch_callback(evaluate_fn, task):
            return _PruneOnEpoch(trial, evaluate_fn, self.settings.objective, self.tracker, run_id)

        hooks = TrialHooks(callbacks=[logger], on_task=on_task, make_epoch_callback=make_epoch_callback,
                           retain_forget_truth_ratios=self.retain_truth_ratios)
        try:
            result = run_trial(cfg, hooks, device=self._device(), metric_models=self._metric_models(self._device()),
                               progress=self.progress, target=prepared)
        except optuna.TrialPruned as pruned:
            logger.flush()
            self.tracker.end(run_id, "KILLED", f"pruned: {pruned}")
            raise
        except KeyboardInterrupt:
            logger.flush()
            self.tracker.end(run_id, "KILLED", "interrupted (Ctrl-C)")
            trial.set_user_attr("failure_reason", "interrupted (Ctrl-C)")
            raise
        except Exception as error:
            logger.flush()
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("failure_reason", reason[:1000])
            self.tracker.end(run_id, "FAILED", reason + "\n" + traceback.format_exc()[-3000:])
            self.log(f"trial {trial.number} failed: {reason}")
            raise
        summary = result.final.summary
        self.tracker.metrics(run_id, {"time/trial_s": time.perf_counter() - started})
        values = objective_values(summary, self.settings.objective)
        if not all(math.isfinite(v) for v in np.atleast_1d(np.asarray(values, dtype=float))):
            # Optuna fails a trial whose objective is not finite: MLflow must say the same, with the reason.
            reason = (f"objective {self.settings.objective} is not finite: "
                      + ", ".join(f"{k}={summary.get(k, float('nan'))}" for k in ("model_utility", "forget_efficacy")))
            trial.set_user_attr("failure_reason", reason)
            self.tracker.end(run_id, "FAILED", reason)
            self.log(f"trial {trial.number} failed: {reason}")
            raise NonFiniteObjective(reason)
        if self.settings.keep_checkpoints != "none":
            with tempfile.TemporaryDirectory() as tmp:
                path = models.save_checkpoint(result.model, result.tokenizer, result.prompt, Path(tmp) / "checkpoint",
                                              {"config": cfg.to_dict(), "study": study.study_name, "trial": trial.number})
                self.tracker.directory_artifact(run_id, path, "checkpoint")
            self.tracker.tags(run_id, {"checkpoint": "kept"})
            trial.set_user_attr("checkpoint", "kept")
        self.tracker.end(run_id)
        trial.set_user_attr("model_utility", summary.get("model_utility"))
        trial.set_user_attr("forget_efficacy", summary.get("forget_efficacy"))
        trial.set_user_attr("forget_rouge", summary.get("forget/rouge"))
        self.log(f"trial {trial.number}: MU {summary.get('model_utility', float('nan')):.4f}  "
                 f"FE {summary.get('forget_efficacy', float('nan')):.4f}  forget ROUGE {summary.get('forget/rouge', float('nan')):.3f}"
                 f"  ({time.perf_counter() - started:.0f} s)")
        return values

    def _apply_keep_policy(self, study) -> None:
        """``best``: only the Pareto-best (or best) trials keep their checkpoint artifacts."""
        if self.settings.keep_checkpoints != "best":
            return
        from optuna.trial import TrialState

        best = {t.number for t in study.best_trials} if len(study.directions) > 1 else (
            {study.best_trial.number} if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else set())
        for trial in study.get_trials(deepcopy=False):
            run_id = trial.user_attrs.get("mlflow_run_id")
            if trial.user_attrs.get("checkpoint") != "kept" or trial.number in best or not run_id:
                continue
            # The trial is finished (its Optuna attributes are frozen): MLflow's tag records the deletion.
            if self.tracker.client.get_run(run_id).data.tags.get(f"{TAG}checkpoint") == "kept":
                if self.tracker.delete_artifacts(run_id, "checkpoint"):
                    self.tracker.tags(run_id, {"checkpoint": "deleted (not Pareto-best)"})


class _PruneOnEpoch:
    """Per-epoch evaluation reported to Optuna; raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial, evaluate_fn, objective, tracker, run_id):
        self.trial, self.evaluate_fn, self.objective, self.tracker, self.run_id = trial, evaluate_fn, objective, tracker, run_id

    def on_epoch(self, event) -> None:
        import optuna

        summary = self.evaluate_fn(event.model).summary
        value = objective_values(summary, self.objective)
        self.tracker.metrics(self.run_id, {f"epoch/{k}": v for k, v in summary.items() if "/" not in k}, step=event.epoch)
        self.trial.report(value, event.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {event.epoch}: {self.objective} {value:.4f} below the median of earlier trials")


def pareto_table(studies: dict) -> list[dict]:
    """Rows of the Pareto-best trials of every study (MU vs FE)."""
    rows = []
    for method, study in studies.items():
        try:
            best = study.best_trials
        except Exception:
            best = []
        for trial in best:
            rows.append({"method": method, "trial": trial.number, "model_utility": trial.user_attrs.get("model_utility"),
                         "forget_efficacy": trial.user_attrs.get("forget_efficacy"),
                         "forget_rouge": trial.user_attrs.get("forget_rouge"), **trial.params,
                         "run_id": trial.user_attrs.get("mlflow_run_id", "")})
    return rows
