"""Everything MLflow. The layout the notebooks read back (``study.reporting.analysis``):

- experiment: ``--experiment`` (default ``unlearning-study``), artifacts under ``mlruns/artifacts``
  when tracking is the default ``sqlite:///mlruns/mlflow.db``.
- one **study run** per Optuna study (tag ``study.kind=study``), holding the study's settings;
- one nested **trial run** per trial (``study.kind=trial``, ``mlflow.parentRunId`` = the study run),
  also when the trial ran in another process or on another machine;
- **target** and **retain_model** runs for the fine-tuned models, referenced by trials through the
  tags ``study.target_run_id`` / ``study.retain_run_id``.

A trial run holds: every parameter of its ``RunConfig`` (``train.lr``, ``method.beta``, ...) plus the
sampled ones; per-step ``train/loss``, ``train/<part>``, ``train/lr``, ``train/grad_norm``; every
evaluation metric ``<set>/<metric>`` and ``model_utility``, ``forget_efficacy``, ``forget_quality``,
... (continual: each logged with ``step = task``, so curves over tasks come out of the metric history);
tags ``study.scenario``, ``study.method``, ``study.split``, ``study.task``, ``study.model``,
``study.data_source``, ``study.study_name``, ``study.trial_number``, ``study.code_version``,
``study.entailment``; artifacts ``config.json``, ``eval/items_task<k>.csv`` (per-item table with
generations) and ``checkpoint/`` (under the keep policy). Pruned trials end KILLED, failed ones
FAILED with ``study.failure_reason``.

Since issue 15 a trial also has:

- its **inputs**: the forget, retain and evaluation sets of each task as MLflow datasets
  (:func:`dataset_inputs`; context ``forget`` / ``retain`` / ``eval``, name
  ``<scenario>/<split>/task<k>/<set>``, a digest of the rows);
- where it keeps a checkpoint, an **MLflow logged model** named after the trial (:func:`logged_model_name`,
  transformers flavour, text-generation, model + tokenizer, the prompt format as its prompt template and in
  its metadata; ``mlflow.transformers.load_model("models:/<model id>")``), its id in the tag ``study.model_id``;
  a study's Pareto-best trials are versions of the registered model :func:`registered_model_name`
  (tags ``pareto``, ``model_utility``, ``forget_efficacy``, ``forget_quality``; alias
  :data:`PARETO_ALIAS`), kept when the trial leaves the front (``pareto=false``); the run's tag
  ``study.registered_version`` names its version;
- the tags ``study.pareto`` (in its study's Pareto front), MLflow's context tags (:func:`context_tags`) and a
  run name with its method, number and searched values; the study's run holds a note, ``pareto.csv`` and
  ``mu_fe.png`` (``study.trial.runs.describe_study_run``);
- MLflow's ``system/*`` metrics (CPU, memory, disk, network, GPU), every :data:`SYSTEM_METRICS_S` s by
  default (``--system-metrics SECONDS``; 0 = off).

Runs written before keep ``checkpoint/`` alone; everything here reads both.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..config import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from ..credentials import redact, scrub
from ..errors import StudyInputError, sigterm_held
from ..paths import ROOT

TAG = "study."
MODEL_NAME = "model"
"""Name of a logged model whose run names no trial (:func:`logged_model_name`)."""
PARETO_ALIAS = "pareto-trial-{trial}"
"""Alias of a registered version whose trial is Pareto-best (removed, the version kept, when it leaves the front)."""
EXPERIMENT_KIND = "custom_model_development"
"""The experiment's ``mlflow.experimentKind``: the MLflow UI opens it on its runs (model training), not on traces."""
UI_COLUMNS = ["metrics.`model_utility`", "metrics.`forget_efficacy`", "metrics.`forget_quality`", "metrics.`forget/rouge`",
              "tags.`study.pareto`", "attributes.`Models`"]
"""The runs table's columns in the shared views (:data:`UI_VIEWS`): the scores first."""
UI_VIEWS = {"trials": "tags.`study.kind` = 'trial'",
            "pareto": "tags.`study.kind` = 'trial' and tags.`study.pareto` = 'true'"}
"""Shared views of the runs table (experiment tags ``mlflow.sharedViewState.<key>``, opened by
``#/experiments/<id>/runs?viewStateShareKey=<key>``): every trial, or the Pareto-best ones, best MU first."""
GENERATION_DEFAULTS = {"max_new_tokens": 64, "do_sample": False}
"""How a logged model generates where a caller names nothing else (its pipeline, ``pyfunc``)."""
MODEL_REQUIREMENTS = ("torch", "transformers", "accelerate", "safetensors")
"""What loading a logged model needs (given, not inferred: inference would load the model once more
in a subprocess); the installed versions are pinned at logging time."""
DATASET_CONTEXTS = {"forget": "forget", "retain": "retain", "eval": "eval"}
"""MLflow input contexts (``mlflow.data.context``) of a trial's sets."""


def _probe(uri: str) -> None:
    """Fail fast on an unreachable tracking server or database (MLflow itself retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        import requests

        requests.get(uri.rstrip("/") + "/health", timeout=15)
    elif "://" in uri and uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "mysql", "mssql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
        try:
            engine.connect().close()
        finally:
            engine.dispose()


def code_version() -> str:
    """The git commit of the checkout (``-dirty`` when it has uncommitted changes), else ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "mlflow", "optuna", "sentence-transformers", "deepspeed", "peft", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


@contextlib.contextmanager
def schema_lock(*uris: str):
    """Hold an exclusive lock (``fcntl.flock`` on ``<database>.lock``) for each local SQLite database
    among ``uris`` while the block creates or upgrades its schema: processes started together on fresh
    stores would otherwise race (``table ... already exists``). Servers and other URLs need no lock here."""
    import fcntl

    with contextlib.ExitStack() as stack:
        for uri in sorted({u for u in uris if u}):
            path = _sqlite_path(uri)
            if path is None:
                continue
            path = path.resolve()
            lock = path.with_name(path.name + ".lock")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = stack.enter_context(open(lock, "a"))
            except OSError as error:  # a read-only file system, no permission, a full disk
                raise StudyInputError(f"store {path}: cannot create {lock.name} beside it: "
                                      f"{error.strerror or error}") from None
            fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield


def artifact_root_for(uri: str) -> str | None:
    """Artifacts beside a local sqlite database (``mlruns/artifacts``); servers choose their own."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    return (path.resolve().parent / "artifacts").as_uri()


class Tracker:
    """A thin client over one tracking store and experiment. Uses ``MlflowClient`` explicitly (no
    fluent global active run), so several runs can be written from one process and none leaks."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        path = _sqlite_path(tracking_uri)
        try:
            if path is not None:
                path.resolve().parent.mkdir(parents=True, exist_ok=True)
            _probe(tracking_uri)
            mlflow.set_tracking_uri(tracking_uri)
            self.client = MlflowClient(tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(experiment, artifact_location=artifact_root_for(tracking_uri))
                except Exception:  # another worker created it first
                    self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
            else:
                self.experiment_id = found.experiment_id
            self._ui_views()
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise StudyInputError(f"tracking store {redact(tracking_uri)} is unreachable: "
                                  f"{type(error).__name__}: {scrub(first, tracking_uri)}") from None
        self.experiment = experiment
        self.models = LoggedModels(self.client, self.experiment_id)
        """The experiment's logged models and their registry versions."""

    def _ui_views(self) -> None:
        """The experiment opens on its runs in the MLflow UI (:data:`EXPERIMENT_KIND`) and holds the
        shared views :data:`UI_VIEWS` (:func:`ui_url` links them); written where missing or changed."""
        wanted = {"mlflow.experimentKind": EXPERIMENT_KIND}
        for key, query in UI_VIEWS.items():
            wanted[f"mlflow.sharedViewState.{key}"] = json.dumps({
                "searchFilter": query, "orderByKey": UI_COLUMNS[0], "orderByAsc": False, "selectedColumns": UI_COLUMNS,
                "columnOrder": UI_COLUMNS,
                "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True})
        have = self.client.get_experiment(self.experiment_id).tags
        for key, value in wanted.items():
            if have.get(key) != value:
                self.client.set_experiment_tag(self.experiment_id, key, value)

    # runs ----------------------------------------------------------------------------------------
    def start(self, name: str, kind: str, tags: dict | None = None, parent: str | None = None) -> str:
        all_tags = {**context_tags(), "mlflow.runName": name, f"{TAG}kind": kind, f"{TAG}code_version": code_version()}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        all_tags.update({_tag_key(k): str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        with sigterm_held():  # a commit cut by SIGTERM would leave SQLite locked for the clean-up
            if reason:
                self.client.set_tag(run_id, f"{TAG}failure_reason", reason[:5000])
            self.client.set_terminated(run_id, status)

    def find(self, kind: str, **tags) -> list:
        """Runs of ``kind`` whose ``study.<key>`` tags equal the given values, newest first."""
        clauses = [f"tags.`{TAG}kind` = '{kind}'"] + [f"tags.`{TAG}{k}` = '{v}'" for k, v in tags.items()]
        return self.client.search_runs([self.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"],
                                       max_results=1000)

    # data ----------------------------------------------------------------------------------------
    def params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in values.items()
                 if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start:start + 500])

    def tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        with sigterm_held():
            self.client.log_batch(run_id, tags=[RunTag(_tag_key(k), str(v)) for k, v in tags.items()])

    def json_artifact(self, run_id: str, name: str, payload) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))

    def table_artifact(self, run_id: str, name: str, frame) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            frame.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path), str(Path(name).parent) if Path(name).parent != Path(".") else None)

    def directory_artifact(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def delete_artifacts(self, run_id: str, artifact_path: str) -> bool:
        """Remove ``artifact_path`` of a run (checkpoint keep policy). False where the store cannot."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        run = self.client.get_run(run_id)
        try:
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(artifact_path)
            return True
        except Exception:
            return False

    # models --------------------------------------------------------------------------------------
    # inputs and system metrics -------------------------------------------------------------------
    def log_datasets(self, run_id: str, data, prefix: str) -> None:
        """The task's sets as the run's inputs (:func:`dataset_inputs`)."""
        self.client.log_inputs(run_id, datasets=dataset_inputs(data, prefix))

    def system_metrics(self, run_id: str, interval_s: float = 10.0):
        """MLflow's system-metrics monitor for the run, started (``finish()`` stops it and flushes)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        return monitor


class LoggedModels:
    """The logged models of an experiment's runs (a kept trial's model, transformers flavour) and their
    versions in the model registry (the Pareto-best trials of a study)."""

    def __init__(self, client, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id

    def log_model(self, run_id: str, model, tokenizer, prompt, metadata: dict | None = None, name: str = MODEL_NAME) -> str:
        """The model as an MLflow logged model of the run named ``name`` (a trial's:
        :func:`logged_model_name`; transformers flavour, task text-generation, model + tokenizer), its
        prompt format as the flavour's prompt template (``pyfunc`` predictions wrap a bare question in it)
        and in its metadata. Returns the model id (``models:/<model id>`` loads it). Written into the
        experiment's artifact location (``models/<model id>``); a failure while writing removes what was
        written."""
        import copy
        import dataclasses as dc
        import logging

        import mlflow

        logged = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=run_id,
                                                 tags={f"{TAG}run_id": run_id})
        template = prompt.question_start + "{prompt}" + prompt.question_end + prompt.answer_tag
        escaped = template.replace("{", "{{").replace("}", "}}").replace("{{prompt}}", "{prompt}")
        quiet = logging.getLogger("mlflow.transformers")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # no hub: "model card could not be retrieved", "no license information"
        inner = getattr(model, "module", model)
        own = inner.generation_config
        # Greedy, 64 new tokens: saved as the model's generation config, not as the flavour's
        # ``model_config``, which MLflow would also log as params of the run (a kept trial would then
        # carry three params its unkept twin lacks).
        inner.generation_config = copy.deepcopy(own)
        inner.generation_config.update(max_new_tokens=GENERATION_DEFAULTS["max_new_tokens"],
                                       do_sample=GENERATION_DEFAULTS["do_sample"])
        if not GENERATION_DEFAULTS["do_sample"]:
            # Greedy: a neutral temperature, set (not None), so that the text-generation pipeline MLflow builds
            # does not fill in its own sampling default (0.7), an invalid flag with do_sample=False (a warning).
            inner.generation_config.temperature = 1.0
        try:
            mlflow.transformers.log_model(
                {"model": inner, "tokenizer": tokenizer}, name=name, task="text-generation",
                model_id=logged.model_id, run_id=run_id, pip_requirements=model_requirements(), prompt_template=escaped,
                metadata={"prompt": dc.asdict(prompt), **json.loads(json.dumps(metadata or {}, default=str))})
        except BaseException:
            self.delete_logged_models(run_id)
            raise
        finally:
            inner.generation_config = own
            quiet.setLevel(level)
        return logged.model_id

    def logged_models(self, run_id: str) -> list:
        """The run's logged models (not deleted ones)."""
        return list(self.client.search_logged_models([self.experiment_id], filter_string=f"source_run_id = '{run_id}'",
                                                     max_results=100))

    def delete_logged_models(self, run_id: str) -> bool:
        """Remove the files of the run's logged models; a model that is a registry version keeps its
        record (the version stays, tagged ``files=deleted``), any other loses it too. False where the
        store could not delete something (it stays, and is tried again next time)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        done = True
        versions = self.client.search_model_versions(f"run_id = '{run_id}'")
        for logged in self.logged_models(run_id):
            try:
                get_artifact_repository(logged.artifact_location).delete_artifacts()
                if logged.artifact_location.startswith("file://"):  # the local store leaves models/<id>/ behind
                    folder = Path(urlsplit(logged.artifact_location).path)
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                    with contextlib.suppress(OSError):
                        folder.parent.rmdir()
                if versions:  # a trial logs one model: its run's versions are this model's
                    for version in versions:
                        self.client.set_model_version_tag(version.name, version.version, "files", "deleted")
                else:
                    self.client.delete_logged_model(logged.model_id)
            except Exception:
                done = False
        return done

    def register(self, run_id: str, model_id: str, name: str, tags: dict, trial: int | None = None, once=None) -> str:
        """A version of registered model ``name`` for the logged model ``model_id`` (once per run: an
        existing version of the run is returned), tagged ``pareto=true`` and ``tags``, with the alias
        :data:`PARETO_ALIAS` of its ``trial``. Returns the version.

        Workers that share the registry apply the keep policy together: ``once(find, create)`` creates the
        version in one of them (``study.trial.claims.once`` over their Optuna storage; without it, this
        process alone), and an alias another worker set to the same version at the same moment (the
        store's insert then fails on its key) is taken as set."""
        from mlflow.exceptions import MlflowException

        def find():
            return next((v.version for v in self._run_versions(name, run_id)), None)

        def create():
            try:
                self.client.create_registered_model(name, description="Trials of the Optuna study of this name that were "
                                                                      "Pareto-best: tag `pareto` says whether they still are, "
                                                                      "aliases `pareto-trial-<k>` point at those that are")
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            return self.client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                                    tags={k: str(v) for k, v in tags.items()}).version

        version = once(find, create) if once is not None else (find() or create())
        self.client.set_model_version_tag(name, version, "pareto", "true")
        if trial is not None:
            alias = PARETO_ALIAS.format(trial=trial)
            try:
                self.client.set_registered_model_alias(name, alias, version)
            except MlflowException:
                if self._alias_version(name, alias) != str(version):
                    raise
        return version

    def _run_versions(self, name: str, run_id: str) -> list:
        """The versions of registered model ``name`` made from run ``run_id``."""
        return self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")

    def _alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` of registered model ``name`` points at; None where it points at none."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def leave_front(self, run_id: str, name: str, trial: int | None = None) -> None:
        """The versions of ``name`` made from the run, once Pareto-best, no longer are: tagged
        ``pareto=false``, their alias removed (by whichever worker gets there first); the versions
        themselves stay (the registry keeps its history)."""
        from mlflow.exceptions import MlflowException

        alias = PARETO_ALIAS.format(trial=trial) if trial is not None else None
        for version in self._run_versions(name, run_id):
            self.client.set_model_version_tag(version.name, version.version, "pareto", "false")
            if alias is not None and alias in self.client.get_model_version(name, version.version).aliases:
                try:
                    self.client.delete_registered_model_alias(name, alias)
                except MlflowException:
                    if self._alias_version(name, alias) is not None:
                        raise


def registered_model_name(study_name: str) -> str:
    """The registry name of an Optuna study ``<study name>/<method>``: ``<method>.<study name>``, so that
    names lead with the method, every run of characters other than letters, digits, ``_``, ``.`` and
    ``-`` made one ``-`` (``s1/ME+GD`` -> ``ME-GD.s1``)."""
    study, _, method = study_name.rpartition("/")
    clean = [re.sub(r"[^A-Za-z0-9_.-]+", "-", part).strip("-") for part in (method, study)]
    return ".".join(part for part in clean if part) or "study"


def logged_model_name(about: dict) -> str:
    """A trial's logged model, named after it: ``<method>-trial-<k>`` (``ME-GD-trial-3``; characters a
    logged model's name cannot hold made ``-``), else :data:`MODEL_NAME`."""
    if about.get("method") is None or about.get("trial") is None:
        return MODEL_NAME
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{about['method']}-trial-{about['trial']}").strip("-")


@functools.lru_cache(maxsize=1)
def context_tags() -> dict:
    """MLflow's standard context tags, as ``mlflow.start_run`` sets them (``mlflow.user``,
    ``mlflow.source.name`` / ``.type`` ...): the UI's User and Source columns; ``mlflow.source.git.commit``
    is this checkout's commit (the code that ran, wherever the entry point lies)."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {k: v for k, v in resolve_tags().items() if k.startswith("mlflow.")}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if sha:
            tags["mlflow.source.git.commit"] = sha
    return tags


def model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in MODEL_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def dataset_frame(rows: list[dict]):
    """Rows of a set as a frame MLflow can digest and profile: lists and dicts (perturbed answers)
    as JSON text."""
    import pandas as pd

    frame = pd.DataFrame([{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()} for row in rows])
    # Integer columns (item numbers) as doubles, as MLflow's schema inference asks (an integer column
    # cannot hold a missing value): no "inferred schema contains integer columns" hint per set.
    ints = frame.select_dtypes("integer").columns
    return frame.astype(dict.fromkeys(ints, "float64"))


def dataset_source(source: str):
    """An MLflow dataset source for ``ScenarioData.source``: what MLflow resolves itself (a local
    directory, a hub id), else the generating code (the built-in authors), named in a tag."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        return resolve_dataset_source(source)
    except Exception:
        return CodeDatasetSource({f"{TAG}data_source": source})


def dataset_inputs(data, prefix: str) -> list:
    """The ``DatasetInput`` entities of one task's data (``study.inputs.data.ScenarioData``): its forget and
    retain rows and every evaluation set, each named ``<prefix>/<set>`` with its context tag."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    sets = [("forget", "forget", data.forget), ("retain", "retain", data.retain)]
    sets += [(f"eval/{s.name}", "eval", s.rows) for s in data.eval_sets]
    inputs, source = [], dataset_source(str(data.source))
    for name, context, rows in sets:
        dataset = mlflow.data.from_pandas(dataset_frame(rows), source=source, name=f"{prefix}/{name}")
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXTS[context])]))
    return inputs


def _tag_key(key: str) -> str:
    """Project tags live under ``study.``; MLflow's own (``mlflow.*``) are kept as they are."""
    return key if key.startswith(("mlflow.", TAG)) else TAG + key


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


class StepLogger:
    """Training callback: per-step loss parts, learning rate and grad norm, flushed in batches."""

    def __init__(self, tracker: Tracker, run_id: str, prefix: str = "train/", step_offset: int = 0, every: int = 10):
        self.tracker, self.run_id, self.prefix, self.offset, self.every = tracker, run_id, prefix, step_offset, every
        self.buffer: list[tuple[dict, int]] = []

    def on_step(self, event) -> None:
        values = {f"{self.prefix}loss": event.loss, f"{self.prefix}lr": event.lr, f"{self.prefix}grad_norm": event.grad_norm,
                  f"{self.prefix}epoch": event.epoch}
        values.update({f"{self.prefix}{k}": v for k, v in event.parts.items()})
        self.buffer.append((values, self.offset + event.step))
        if len(self.buffer) >= self.every or event.step == event.max_steps:
            self.flush()

    def flush(self) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for values, step in self.buffer for k, v in values.items()
                 if math.isfinite(float(v))]
        with sigterm_held():  # a commit cut by SIGTERM would leave SQLite locked for the clean-up
            for start in range(0, len(items), 500):
                self.tracker.client.log_batch(self.run_id, metrics=items[start:start + 500])
            self.buffer.clear()


UI_ADDRESS = "http://127.0.0.1:5000"
"""Where :func:`ui_command` serves the UI."""


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on these results (bound to 127.0.0.1; the venv's ``mlflow``:
    the venv need not be active). Light on small machines: one worker, no job-execution processes."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {redact(tracking_uri)} in a browser"
    venv = ROOT / ".venv" / "bin" / "mlflow"
    return (f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {'.venv/bin/mlflow' if venv.exists() else 'mlflow'} ui --backend-store-uri {redact(tracking_uri)} "
            f"--host 127.0.0.1 --port 5000 --workers 1")


def ui_url(tracking_uri: str, experiment_id: str, view: str = "trials") -> str:
    """The MLflow UI's runs table of the experiment in the shared view ``view`` (:data:`UI_VIEWS`), in
    the model-training view (``workflowType``, not GenAI): the trials with their scores, best Model
    Utility first (``pareto``: the Pareto-best ones)."""
    base = redact(tracking_uri).rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_ADDRESS
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={view}&workflowType=machine_learning"
