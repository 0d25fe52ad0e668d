"""Everything Optuna: search spaces (declared with the losses), studies, the objective, and the wiring of
trials to MLflow runs (``study.trial.runs``) and to the models they are compared with (``study.trial.references``).

One Optuna study per method (``<study name>/<method>``), so each method gets its own search space and
sampler; each study has one MLflow parent run and one nested run per trial. Workers that share the
storage share the study: a worker runs trials until the study holds ``n_trials`` finished (complete
or pruned) trials; a trial numbered beyond that by a race is dropped before it does any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import time
import traceback
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from . import paper
from .trial.claims import once
from .config import HEARTBEAT_S, SEED_MAX, RunConfig, StudySettings
from .errors import StudyFault, StudyInputError, interrupt_reason
from .methods.hyperparams import HYPERPARAMS, SETTINGS, Param
from .methods import FORGET_LOSSES, Method
from .trial.references import ReferenceModels
from .trial.runs import TrialRun, describe_study_run, end_if_running, start_study_run, trial_run_name, trial_tags
from .training.train import NonFiniteLoss
from .credentials import redact, scrub
from .trial.tracking import TAG, Tracker, registered_model_name, schema_lock

CHECKPOINT_LOGGED = "logged"
"""A trial's Optuna attribute ``checkpoint`` once its checkpoint and model were logged (the MLflow tag
``study.checkpoint`` says whether they are still there)."""


def paper_settings(scenario: str, method: str) -> list[dict]:
    """The paper's exact settings for a method (β = 0.1 everywhere; regularization_coeff 1.0); a loss
    outside the paper keeps the paper's learning rates and epochs but takes its β and forget weight from
    its registry entry's ``shipped`` values (SimNPO: OpenUnlearning's), where it has them."""
    rows = paper.released(scenario, method)
    parsed = Method.parse(method)
    uses_beta = "beta" in parsed.hyperparams
    shipped = dict(FORGET_LOSSES[parsed.forget_loss].shipped)
    return [{**row, **({"beta": paper.PAPER_BETA} if uses_beta else {}), **shipped} for row in rows]


def grid_values(param: Param, points: int = 3) -> list[float]:
    """``points`` values spread over the range (log-spaced for log parameters), rounded to 3 digits."""
    if param.integer:
        return sorted({int(round(v)) for v in np.linspace(param.low, param.high, points)})
    if param.log:
        values = np.geomspace(param.low, param.high, points)
    else:
        values = np.linspace(param.low, param.high, points)
    return [float(f"{v:.3g}") for v in values]


# --------------------------------------------------------------------------------------------------
# Search spaces


def search_space(method: str, scenario: str, sampler: str, overrides: dict | None = None, fixed=()) -> dict[str, object]:
    """``name -> Param`` (tpe) or ``name -> list of values`` (grid, paper). The ranges are the ones the
    losses declare (``study.methods``), narrowed or moved by ``overrides`` (``name -> [low, high]``);
    the names in ``fixed`` are left out (the trial configuration's value is used)."""
    if sampler == "paper":
        rows = paper_settings(scenario, method)
        return {key: sorted({row[key] for row in rows}) for key in rows[0] if key not in fixed}
    space = {p.name: p for p in Method.parse(method).search_space() if p.name not in fixed}
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
    from .trial.runner import run_dtype

    bytes_per = run_dtype(cfg, None).itemsize
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
        if isinstance(spec, Param) and spec.integer:
            out[name] = trial.suggest_int(name, math.ceil(spec.low), math.floor(spec.high), log=spec.log)
        elif isinstance(spec, Param):
            out[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        else:
            out[name] = trial.suggest_categorical(name, list(spec))
    return out


def apply_params(cfg: RunConfig, method: str, params: dict) -> RunConfig:
    """The trial's configuration: the preset's, with the sampled hyper-parameters in place."""
    changes = {"method": {"name": method}, "train": {}}
    for name, value in params.items():
        changes[HYPERPARAMS[name].section][name] = value
    return cfg.replace(**changes)


ADDED_SETTINGS = {"train.kl_full_padding": False, "method.gamma": 0.0, "eval.holdout": False,
                  "method.rmu_layer": 7, "method.rmu_steering_coeff": 6.5, "method.rmu_alpha": 1200.0,
                  "method.delta": 0.0, "method.rmu_averaging": "answer_per_sequence",
                  "eval.earlier_tasks": False}
"""Settings added after studies were first recorded, with the behaviour a study recorded without them
ran with. Resuming such a study with that value changes nothing; with another value it is refused.
(Before ``kl_full_padding`` existed, the KL regularizer averaged over trimmed batches. Before
``rmu_averaging`` existed RMU averaged over attended tokens; no recorded study ran RMU, and every other
method ignores the setting, so its entry is today's default.)"""


SPEED_ONLY_SETTINGS = ("eval.batch_size", "train.fused_forward")
"""Settings that change how fast a trial runs, not its results (up to float rounding): a study resumes
with other values of them."""


def fixed_config(cfg: RunConfig, method: str, space: dict) -> dict:
    """The settings every trial of a study shares: the trial configuration without the searched
    hyper-parameters (and the :data:`SPEED_ONLY_SETTINGS`), JSON-normalised.
    A study resumed with other fixed settings would mix incomparable trials. ``train.kl_full_padding``
    is left out for methods without a KL term, on which it has no effect."""
    trial_cfg = apply_params(cfg, method, {})
    flat = trial_cfg.flat()
    searched = {SETTINGS[name] for name in space}
    if not trial_cfg.method.method().ref_logit_parts:
        searched.add("train.kl_full_padding")
    fixed = {k: v for k, v in flat.items() if k not in searched and k not in SPEED_ONLY_SETTINGS}
    return json.loads(json.dumps(fixed, default=str))


def check_fixed_config(study, fixed: dict, storage_url: str) -> None:
    """Record ``fixed`` on a new study; on an existing one, refuse settings that differ from it. A
    setting the record lacks counts as its :data:`ADDED_SETTINGS` value (the behaviour before it existed)."""
    recorded = study.user_attrs.get("fixed_config")
    if recorded is None:
        study.set_user_attr("fixed_config", fixed)
        return
    recorded = {**{k: v for k, v in ADDED_SETTINGS.items() if k in fixed}, **recorded}
    changed = [k for k in sorted(set(recorded) | set(fixed)) if recorded.get(k) != fixed.get(k)]
    if changed:
        shown = ", ".join(f"{k} {recorded.get(k)!r} -> {fixed.get(k)!r}" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise StudyInputError(
            f"study {study.study_name} in {redact(storage_url)} was run with other settings ({shown}{more}): "
            "run with its settings to resume it, or pass a new --study-name")


def check_data_digest(study, digest: str, storage_url: str) -> None:
    """Record the digest of the study's data (``study.trial.runner.data_digest``) on a new study; on an
    existing one, refuse other data (its files, or the code that builds them, changed since its trials
    ran: resuming would mix trials on two datasets). A study made before digests were recorded is taken
    on trust and records this one."""
    recorded = study.user_attrs.get("data_digest")
    if recorded is None:
        study.set_user_attr("data_digest", digest)
    elif recorded != digest:
        raise StudyInputError(
            f"study {study.study_name} in {redact(storage_url)} was run on other data (digest {recorded}, this "
            f"data's {digest}): the data files or the code that reads them changed; pass a new --study-name "
            "(or --storage) to run on this data")


def check_study_settings(study, settings: StudySettings) -> None:
    """Record the sampler and objective on a new study; on an existing one, refuse others (a grid sampler
    cannot continue a TPE study's trials; another objective has other directions)."""
    mine = {"sampler": settings.sampler, "objective": settings.objective}
    recorded = study.user_attrs.get("study_settings")
    if recorded is None and len(study.directions) != len(directions(settings.objective)):
        recorded = {"objective": "pareto" if len(study.directions) == 2 else "a single objective"}
    if recorded is None:
        study.set_user_attr("study_settings", mine)
        return
    changed = [f"{k} {recorded[k]!r} -> {mine[k]!r}" for k in mine if k in recorded and recorded[k] != mine[k]]
    if changed:
        raise StudyInputError(f"study {study.study_name} in {redact(settings.storage)} was run with another "
                              f"{', '.join(changed)}: pass its --sampler / --objective to resume it, or a new --study-name")


def make_sampler(settings: StudySettings, space: dict, offset: int = 0):
    """The study's sampler. ``offset`` (the number of trials already in the study) moves TPE's seed, so
    a resumed study or a second worker does not repeat the first suggestions. Grid and paper samplers
    keep ``settings.seed``: their grid order is drawn from it, and trial ``k`` takes grid point ``k``
    of that order, so every worker must share one order (a moved seed would repeat points)."""
    import optuna

    if settings.sampler in ("grid", "paper"):
        return optuna.samplers.GridSampler({k: list(v) for k, v in space.items()}, seed=settings.seed)
    seed = (settings.seed + offset) % (SEED_MAX + 1)  # offset seeds wrap around numpy's range
    if settings.objective == "pareto":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.TPESampler(seed=seed)


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
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: chosen here, nothing to act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                              grace_period=2 * heartbeat, heartbeat_stale_trial_callback=failed_trial_callback)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise StudyInputError(f"Optuna storage {redact(url)} is unreachable: {type(error).__name__}: {scrub(first, url)}") from None


def _counted(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def _running(study) -> int:
    from optuna.trial import TrialState

    return sum(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: how a failure is reported to the user."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def is_environment_error(error: BaseException) -> bool:
    """A failure of the machine or a store (disk full, read-only or unreachable database, network),
    not of this code: reported in one line instead of a traceback."""
    if isinstance(error, (OSError, MemoryError)):
        return True
    module = type(error).__module__.split(".")[0]
    return module in ("sqlite3", "sqlalchemy", "mlflow", "psycopg2", "requests", "urllib3")


def environment_cause(error: BaseException) -> BaseException | None:
    """The environment failure (:func:`is_environment_error`) that ``error`` is or was raised while
    handling: a disk that filled up while Optuna wrote a trial's FAIL state surfaces as Optuna's
    ``AssertionError: Should not reach.``, the cause two links down its chain. None: no such failure."""
    seen = set()
    while error is not None and id(error) not in seen:
        if is_environment_error(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class SurplusTrial(Exception):
    """A trial numbered beyond ``n_trials`` by a race between workers: dropped before any work."""


class NonFiniteObjective(ValueError):
    """A trial finished but its objective is NaN or infinite (metrics of a model wrecked by the setting):
    failed, and counted like a diverging loss."""


INSTABILITIES = (NonFiniteLoss, FloatingPointError, NonFiniteObjective)
"""Failures that say the sampled setting diverges, not that something is broken: the study goes on
(up to ``max_failures`` in a row). Any other failure inside a trial stops the study at once."""


class TooManyFailures(StudyInputError):
    """``max_failures`` trials failed in a row (e.g. every setting diverges): the study stops."""


# --------------------------------------------------------------------------------------------------
# A study


@contextlib.contextmanager
def startup_heap_frozen():
    """The objects alive when the studies start (the imported torch, transformers, MLflow, Optuna: about
    570,000) kept out of the garbage collector's scans while the block runs, then handed back.

    Trials run with Optuna's ``gc_after_trial`` (a trial's model and batches go before the next one
    starts); a full collection over that startup heap took 0.3-0.44 s on this 2-core CPU, after every
    trial. Frozen, it scans only what the trials created. A trial's own cycles are collected as before;
    what was garbage at the start is collected first."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class Sweep:
    """Runs the studies of one sweep command in this process (one worker): the Optuna loop. Each trial
    is a :class:`TrialObjective` call; the models trials are compared with are a
    ``study.trial.references.ReferenceModels``, shared by every study of the sweep."""

    def __init__(self, cfg: RunConfig, settings: StudySettings, progress: bool = True, device=None, log=print,
                 leader=None):
        self.cfg, self.settings, self.progress, self.log = cfg, settings, progress, log
        self.device = device
        self.leader = leader
        """Under torchrun, rank 0's ``study.trial.ranks.Leader``: every trial trains over all the processes
        (the other ranks follow it); None in one process."""
        self.tracker: Tracker | None = None
        self.references: ReferenceModels | None = None  # the target and retain models (set by run())
        self.data_digest: str | None = None  # what every study of the sweep reads (set by run())
        self._objective: TrialObjective | None = None  # the study in progress (its trial's run ends KILLED on Ctrl-C or SIGTERM)

    def _end_stale_run(self, study, trial) -> None:
        """Optuna's failed-trial callback: a trial whose worker stopped beating is failed in MLflow too."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        self.log(f"trial {trial.number}: its worker stopped beating (killed or crashed): failed, MLflow run {run_id} ended FAILED")
        if run_id and self.tracker is not None:
            self.tracker.end(run_id, "FAILED", "worker stopped (no heartbeat): killed or crashed; the study resumed without it")

    def _parent_run(self, study, method: str) -> str:
        """The study's MLflow run, created once even when workers start together (``once``)."""
        def create():
            run_id = start_study_run(self.tracker, study.study_name, method, self.cfg, self.settings)
            study.set_user_attr("mlflow_parent_run_id", run_id)
            return run_id

        return once(study._storage, study.study_name, lambda: study.user_attrs.get("mlflow_parent_run_id"), create)

    def _apply_keep_policy(self, study) -> None:
        apply_keep_policy(study, self.tracker, self.settings.keep_checkpoints)

    def run(self) -> dict[str, object]:
        """Run every method's study to ``n_trials`` finished trials; returns ``method -> study``."""
        import optuna

        # A failed trial is reported in one line by this module (its traceback goes to the MLflow run),
        # not by Optuna's warning with the traceback; so is Ctrl-C.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        from .trial.runner import data_digest

        self.data_digest = data_digest(self.cfg)
        # Workers started together on fresh stores would race at creating the schemas.
        with schema_lock(self.settings.storage, self.settings.tracking_uri):
            storage = open_storage(self.settings.storage, failed_trial_callback=self._end_stale_run,
                                   heartbeat=self.settings.heartbeat)
            self.tracker = Tracker(self.settings.tracking_uri, self.settings.experiment)
        self.references = ReferenceModels(self.cfg, self.tracker, storage, self.device, self.progress, self.log)
        studies = {}
        try:
            with startup_heap_frozen():
                for method in self.settings.methods:
                    studies[method] = self._run_method(storage, method)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM, wherever it hit (a study's clean-up included)
            if self._objective is not None:
                self._objective.abandon("KILLED", interrupt_reason(stop))
            raise
        except Exception as error:
            cause = environment_cause(error)
            if self._objective is not None:
                self._objective.abandon("FAILED", one_line(cause or error))
            if isinstance(error, (StudyInputError, StudyFault)) or cause is None:
                raise
            raise StudyFault(scrub(one_line(cause), self.settings.storage, self.settings.tracking_uri)) from None
        return studies

    def _run_method(self, storage, method: str):
        name = f"{self.settings.study_name}/{method}"
        space = search_space(method, self.cfg.data.scenario, self.settings.sampler, self.settings.space, self.settings.fixed)
        n_trials = trials_needed(self.settings, space)
        study = open_study(name, storage, self.settings, space)
        check_fixed_config(study, fixed_config(self.cfg, method, space), self.settings.storage)
        check_data_digest(study, self.data_digest, self.settings.storage)
        parent = self._parent_run(study, method)
        if _counted(study) < n_trials and self.tracker.client.get_run(parent).info.status != "RUNNING":
            self.tracker.client.update_run(parent, status="RUNNING")  # resumed with trials to run
        done = _counted(study)
        self.log(f"study {name}: {done}/{n_trials} trials finished" + (", resuming" if done else ""))
        self._objective = TrialObjective(self.cfg, self.settings, self.tracker, self.references, study, method, space,
                                         parent, n_trials, self.data_digest, progress=self.progress, log=self.log,
                                         leader=self.leader)
        try:
            self._trials(study, storage, space, n_trials)
        except KeyboardInterrupt as stop:
            end_if_running(self.tracker, parent, "KILLED", f"{interrupt_reason(stop)}; run the same command again to resume")
            raise
        except Exception as error:  # every exit path ends the study's run with a status and a reason
            end_if_running(self.tracker, parent, "FAILED", one_line(environment_cause(error) or error))
            raise
        self._objective = None  # this study's part is done: an interrupt from here on is not its
        finished = _counted(study)
        self.tracker.metrics(parent, {"n_trials_finished": finished})
        describe_study_run(self.tracker, parent, study, pareto_table({method: study}), registered_model_name(name))
        if finished >= n_trials:  # the study is complete (a later run with more trials re-opens it)
            self.tracker.end(parent, "FINISHED")
        return study

    def _trials(self, study, storage, space: dict, n_trials: int) -> None:
        """Run trials until the study holds ``n_trials`` finished ones. A diverging trial (non-finite
        loss) counts towards ``max_failures``; any other failure stops the study at once."""
        import optuna
        from optuna.trial import TrialState

        name = study.study_name
        failures = 0
        while _counted(study) < n_trials:
            if isinstance(storage, optuna.storages.RDBStorage) and _counted(study) + _running(study) >= n_trials:
                # Other workers' trials fill the study: wait for them rather than start a surplus trial.
                if not wait_for_others(study, storage, n_trials, self.settings.heartbeat):
                    break
                continue
            mine = []
            self._objective.error = None
            # Re-seeded before every trial (TPE keeps no state but its RNG): workers that share the study
            # draw different suggestions instead of repeating each other's sequence; one worker stays
            # deterministic (trial k uses seed + k).
            study.sampler = make_sampler(self.settings, space, offset=len(study.get_trials(deepcopy=False)))
            study.optimize(self._objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                           callbacks=[lambda _study, frozen: mine.append(frozen)])
            last = mine[-1] if mine else study.get_trials(deepcopy=False)[-1]  # this worker's trial
            if last.user_attrs.get("surplus"):
                # The study is full of other workers' trials: wait for them; go on if one of them fails.
                if not wait_for_others(study, storage, n_trials, self.settings.heartbeat):
                    break
                continue
            failures = failures + 1 if last.state == TrialState.FAIL else 0
            error = self._objective.error if last.state == TrialState.FAIL else None
            if isinstance(error, StudyInputError):
                raise StudyInputError(f"study {name}, trial {last.number}: {error}")
            if error is not None and not isinstance(error, INSTABILITIES):
                raise StudyFault(f"study {name}, trial {last.number} failed: "
                                 f"{scrub(one_line(error), self.settings.storage, self.settings.tracking_uri)}"
                                 " -- the study stopped (not a diverging loss: fix the cause, then run the same command to resume)")
            self._apply_keep_policy(study)
            if failures >= self.settings.max_failures:
                raise TooManyFailures(
                    f"study {name}: {failures} trials failed in a row, the last with {last.user_attrs.get('failure_reason', '?')}"
                    f" -- change the settings (e.g. lower learning rates or coefficients) or raise --max-failures, "
                    "then run the same command again to resume")


def trials_needed(settings: StudySettings, space: dict) -> int:
    """How many finished trials the study needs: ``n_trials``, at most the grid's size (grid), exactly
    the paper's settings (paper)."""
    if settings.sampler == "grid":
        return min(settings.n_trials, math.prod(len(v) for v in space.values()))
    if settings.sampler == "paper":
        return math.prod(len(v) for v in space.values())
    return settings.n_trials


def open_study(name: str, storage, settings: StudySettings, space: dict):
    """The Optuna study ``name`` (``<study name>/<method>``), created or loaded, with its sampler, pruner
    and metric names."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                directions=directions(settings.objective),
                                sampler=make_sampler(settings, space),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if settings.prune else optuna.pruners.NopPruner())
    # A sampler seeded alike in every process would repeat the same first suggestions when a
    # study resumes or a second worker joins: offset the seed by the trials already there.
    study.sampler = make_sampler(settings, space, offset=len(study.trials))
    check_study_settings(study, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["model_utility", "forget_efficacy"] if settings.objective == "pareto"
                               else [settings.objective])
    return study


def wait_for_others(study, storage, n_trials: int, heartbeat: int) -> bool:
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
        time.sleep(min(5, heartbeat))
    return False


class TrialObjective:
    """Optuna's objective for one study of a :class:`Sweep`: each call is one trial, from the sampled
    values to its configuration, its MLflow run (``study.trial.runs.TrialRun``, nested under the study's run
    ``parent``), ``runner.run_trial`` and the objective values."""

    def __init__(self, cfg: RunConfig, settings: StudySettings, tracker: Tracker, references: ReferenceModels,
                 study, method: str, space: dict, parent: str, n_trials: int, data_digest: str | None = None,
                 progress: bool = True, log: Callable[[str], None] = print, leader=None):
        self.cfg, self.settings, self.tracker, self.references = cfg, settings, tracker, references
        self.study, self.method, self.space, self.parent, self.n_trials = study, method, space, parent, n_trials
        self.data_digest = data_digest
        """The digest of the data every trial reads (the sweep's, checked against the study's record by
        ``check_data_digest``); each trial's run carries it."""
        self.progress, self.log, self.leader = progress, log, leader
        self.run: TrialRun | None = None
        """The MLflow run of the trial in progress."""
        self.trial = None
        """The Optuna trial of the last call."""
        self.error: Exception | None = None
        """What the last trial raised (None: nothing)."""

    def end_run(self, status: str, reason: str) -> None:
        """End the run of the trial in progress, if it has not ended yet."""
        run, self.run = self.run, None
        if run is not None:
            end_if_running(run.tracker, run.run_id, status, reason)

    def abandon(self, status: str, reason: str) -> None:
        """The study stops here (an interrupt, or a failure the loop did not handle): the trial's run, the
        Optuna trial (FAIL) and the study's run (``status``) are ended, each only if still RUNNING. The
        sweep calls it whatever the study's own clean-up managed: a SIGTERM may cut that short (torchrun
        sends one when another rank dies, while this one is ending its failed trial), and a second SIGTERM
        is ignored (``study.errors.sigterm_as_interrupt``), so this runs to the end."""
        from optuna.trial import TrialState

        self.end_run(status, reason)
        if self.trial is not None:
            try:
                running = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                if self.trial.number in running:
                    self.trial.set_user_attr("failure_reason", reason[:1000])
                    self.study.tell(self.trial.number, state=TrialState.FAIL)
            except Exception:  # the storage is what failed: the next worker's heartbeat check fails the trial
                pass
        end_if_running(self.tracker, self.parent, status, f"{reason}; run the same command again to resume")

    def __call__(self, trial):
        import optuna

        self.trial = trial
        try:
            return self._trial(trial)
        except Exception as error:
            self.error = error
            if not isinstance(error, (optuna.TrialPruned, SurplusTrial)) and "failure_reason" not in trial.user_attrs:
                try:
                    trial.set_user_attr("failure_reason", one_line(error)[:1000])
                except Exception:  # the storage failed too: the error itself is reported
                    pass
            # A failure after the trial's run began that did not end it (e.g. the disk filled up
            # while the checkpoint was written): FAILED with the reason, not left RUNNING.
            self.end_run("FAILED", one_line(error) + "\n" + traceback.format_exc()[-3000:])
            raise

    def _drop_if_surplus(self, trial) -> None:
        from optuna.trial import TrialState

        earlier = [t for t in self.study.get_trials(deepcopy=False)
                   if t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
        if len(earlier) >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is beyond the {self.n_trials} the study needs (another worker took the last one)")

    def _trial(self, trial):
        import optuna

        from .trial.runner import TrialHooks, run_trial

        self._drop_if_surplus(trial)
        params = suggest(trial, self.space)
        cfg = apply_params(self.cfg, self.method, params)
        references, name = self.references, self.study.study_name
        prepared, target_run = references.prepare_target()
        tags = {**trial_tags(cfg, self.method, name, trial.number), "target_run_id": target_run,
                "data_digest": self.data_digest}
        run = self.run = TrialRun.start(self.tracker, cfg, trial_run_name(self.method, trial.number, params), tags, parent=self.parent,
                                        about={"study": name, "trial": trial.number})
        trial.set_user_attr("mlflow_run_id", run.run_id)
        run.log_config(sampled=params)
        hooks = TrialHooks(
            callbacks=[run.steps], on_data=run.on_data,
            on_task=lambda result: run.on_task(result, retain_run_id=references.retain_run_id(result.task)),
            make_epoch_callback=lambda evaluate_fn, task: _PruneOnEpoch(trial, evaluate_fn, self.settings.objective, run),
            retain_forget_truth_ratios=references.retain_truth_ratios, retain_mia_aucs=references.retain_mia_aucs,
            fit=self.leader.fit if self.leader is not None else None)
        # Under torchrun the other ranks take part in the trial's training while this block runs.
        ranks = self.leader.trial(cfg, prepared.path) if self.leader is not None else contextlib.nullcontext()
        try:
            with run.system_metrics(self.settings.system_metrics), ranks:
                device = references.device()
                result = run_trial(cfg, hooks, device=device, metric_models=references.metric_models_on(device),
                                   progress=self.progress, target=prepared)
        except optuna.TrialPruned as pruned:
            run.end("KILLED", f"pruned: {pruned}")
            raise
        except KeyboardInterrupt as stop:
            run.end("KILLED", interrupt_reason(stop))
            trial.set_user_attr("failure_reason", interrupt_reason(stop))
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            trial.set_user_attr("failure_reason", reason[:1000])
            run.end("FAILED", reason + "\n" + traceback.format_exc()[-3000:])
            self.log(f"trial {trial.number} failed: {reason}")
            raise
        return self._finish(trial, run, result)

    def _finish(self, trial, run: TrialRun, result):
        """A trial that ran: its objective values (a non-finite one fails it), its checkpoint under the
        keep policy, its run ended FINISHED."""
        summary = result.final.summary
        run.log_time()
        values = objective_values(summary, self.settings.objective)
        if not all(math.isfinite(v) for v in np.atleast_1d(np.asarray(values, dtype=float))):
            # Optuna fails a trial whose objective is not finite: MLflow must say the same, with the reason.
            reason = (f"objective {self.settings.objective} is not finite: "
                      + ", ".join(f"{k}={summary.get(k, float('nan'))}" for k in ("model_utility", "forget_efficacy")))
            trial.set_user_attr("failure_reason", reason)
            run.end("FAILED", reason)
            self.log(f"trial {trial.number} failed: {reason}")
            raise NonFiniteObjective(reason)
        if self.settings.keep_checkpoints != "none":
            run.keep_checkpoint(result)
            # Frozen once the trial finishes: what happened then ("logged"); whether the files are still
            # there (the keep policy) is MLflow's tag study.checkpoint, kept / deleted (not Pareto-best).
            trial.set_user_attr("checkpoint", CHECKPOINT_LOGGED)
        run.end()
        trial.set_user_attr("model_utility", summary.get("model_utility"))
        trial.set_user_attr("forget_efficacy", summary.get("forget_efficacy"))
        trial.set_user_attr("forget_rouge", summary.get("forget/rouge"))
        self.log(f"trial {trial.number}: MU {summary.get('model_utility', float('nan')):.4f}  "
                 f"FE {summary.get('forget_efficacy', float('nan')):.4f}  forget ROUGE {summary.get('forget/rouge', float('nan')):.3f}"
                 f"  ({run.seconds():.0f} s)")
        return values


def apply_keep_policy(study, tracker: Tracker, policy: str) -> None:
    """Every finished trial's run is tagged ``study.pareto`` (``true`` / ``false``: in Optuna's Pareto
    front, or the best trial of a single objective). ``best`` and ``all``: the Pareto-best trials with a
    logged model are versions of the registered model named after the study
    (:func:`study.trial.tracking.registered_model_name`), tagged ``pareto=true``, their ``model_utility``,
    ``forget_efficacy`` and ``forget_quality``, with the alias ``pareto-trial-<k>`` (the run's tag
    ``study.registered_version`` names it; the registry is asked once per entry to the front); a trial that leaves
    the front keeps its version, tagged ``pareto=false``, its alias removed. ``best``: the other trials
    lose their checkpoint files and logged models' files (``study.checkpoint`` = ``deleted (not
    Pareto-best)``); a version's record stays."""
    from optuna.trial import TrialState

    best = {t.number for t in study.best_trials} if len(study.directions) > 1 else (
        {study.best_trial.number} if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else set())
    name = registered_model_name(study.study_name)
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get("mlflow_run_id")
        # Another worker's trial that has kept its checkpoint but not yet returned its values is not
        # in ``best`` only because Optuna does not count it yet: its worker decides.
        if trial.state != TrialState.COMPLETE or not run_id:
            continue
        # The trial is finished (its Optuna attributes are frozen): MLflow's tags record the rest.
        run = tracker.client.get_run(run_id)
        pareto = trial.number in best
        was_pareto = run.data.tags.get(f"{TAG}pareto") == "true"
        if policy != "none" and trial.user_attrs.get("checkpoint") in (CHECKPOINT_LOGGED, "kept"):
            _keep(study, tracker, policy, trial.number, run, name, pareto, was_pareto)
        # Last: a pass cut short before it is done again by the next (the registry is asked only when a
        # trial enters or leaves the front, as this tag records).
        if run.data.tags.get(f"{TAG}pareto") != str(pareto).lower():
            tracker.tags(run_id, {"pareto": str(pareto).lower()})


def _keep(study, tracker: Tracker, policy: str, number: int, run, name: str, pareto: bool, was_pareto: bool) -> None:
    """:func:`apply_keep_policy` for one finished trial's ``run`` that logged a model."""
    run_id = run.info.run_id
    kept = run.data.tags.get(f"{TAG}checkpoint") == "kept"
    model_id = run.data.tags.get(f"{TAG}model_id")
    if pareto:
        # Registered on an earlier pass and on the front since: nothing to ask the registry (a trial that
        # left the front and came back is registered again: its version re-tagged, its alias back).
        if kept and model_id and not (was_pareto and f"{TAG}registered_version" in run.data.tags):
            values = {k: run.data.metrics[k] for k in ("model_utility", "forget_efficacy", "forget_quality")
                      if k in run.data.metrics}
            version = tracker.models.register(
                run_id, model_id, name, {**values, "study.study_name": study.study_name, "study.trial_number": number},
                trial=number, once=partial(once, study._storage, f"{name}/{run_id}#version"))
            tracker.tags(run_id, {"registered_version": str(version)})
        return
    if model_id and was_pareto:  # it leaves the front now: a version made while it was on it is marked
        tracker.models.leave_front(run_id, name, number)
    if policy == "best" and kept:
        removed = tracker.delete_artifacts(run_id, "checkpoint")
        removed = tracker.models.delete_logged_models(run_id) and removed
        if removed:
            tracker.tags(run_id, {"checkpoint": "deleted (not Pareto-best)"})


class _PruneOnEpoch:
    """Per-epoch evaluation reported to Optuna; raises ``TrialPruned`` when the pruner says so."""

    def __init__(self, trial, evaluate_fn, objective: str, run: TrialRun):
        self.trial, self.evaluate_fn, self.objective, self.run = trial, evaluate_fn, objective, run

    def on_epoch(self, event) -> None:
        import optuna

        summary = self.evaluate_fn(event.model).summary
        value = objective_values(summary, self.objective)
        self.run.tracker.metrics(self.run.run_id, {f"epoch/{k}": v for k, v in summary.items() if "/" not in k}, step=event.epoch)
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
