"""The MLflow runs of a study, from start to end, in the layout ``study.trial.tracking`` describes: the
study's parent run (:func:`start_study_run`) and each trial's run (:class:`TrialRun`). The sweep
(``study.search``) and the trial benchmark (``benchmarks/bench_trial.py``) write trials through the
same :class:`TrialRun`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from ..inputs import models
from ..config import RunConfig
from ..inputs.scenarios import scenario as find_scenario
from .tracking import StepLogger, Tracker, logged_model_name, package_versions
from ..credentials import redact


def start_study_run(tracker: Tracker, study_name: str, method: str, cfg: RunConfig, settings) -> str:
    """The parent run of the Optuna study ``study_name`` (``study.kind=study``), holding its settings
    (``settings``: a ``study.config.StudySettings``) as ``study.*`` parameters: the Optuna storage
    redacted, the tracking URI left out. Returns its id."""
    run_id = tracker.start(study_name, "study", {
        "study_name": study_name, "method": method, "scenario": cfg.data.scenario,
        "split": cfg.data.split, "model": cfg.model.name, "preset": settings.preset,
    })
    tracker.params(run_id, {**{f"study.{k}": v for k, v in dataclasses.asdict(settings).items()
                               if k not in ("storage", "tracking_uri")},
                            "study.storage": redact(settings.storage)})
    return run_id


def describe_study_run(tracker: Tracker, run_id: str, study, rows: list[dict], registered: str) -> None:
    """The study's run as its landing page: a markdown description (MLflow's run note,
    ``mlflow.note.content``) with the Pareto-best trials linked to their runs and registry versions,
    ``pareto.csv`` (those rows) and ``mu_fe.png`` (every finished trial's Model Utility and Forget
    Efficacy, the Pareto-best ones marked)."""
    import pandas as pd
    from matplotlib.figure import Figure
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = {row["trial"] for row in rows}
    versions = {v.run_id: v.version for v in tracker.client.search_model_versions(f"name = '{registered}'")}
    experiment = tracker.experiment_id
    lines = [f"## {study.study_name}", "",
             f"Optuna study of **{study.study_name.rpartition('/')[2]}**: {len(done)} finished trials, "
             f"{len(best)} Pareto-best in Model Utility (MU) and Forget Efficacy (FE), both maximised.", "",
             f"[Its trials in the runs table](#/experiments/{experiment}/runs?viewStateShareKey=trials) · "
             f"[the Pareto-best ones](#/experiments/{experiment}/runs?viewStateShareKey=pareto) · "
             f"registered model [{registered}](#/models/{registered}) · `mu_fe.png` and `pareto.csv` under Artifacts", "",
             "| trial | MU | FE | forget ROUGE | searched | run | version |", "|---|---|---|---|---|---|---|"]
    searched = [k for k in (rows[0] if rows else {}) if k not in ("method", "trial", "model_utility", "forget_efficacy",
                                                                    "forget_rouge", "run_id")]

    def number(value) -> str:
        return "" if value is None else f"{value:.4g}"

    for row in sorted(rows, key=lambda r: -(r["model_utility"] or 0)):
        version = versions.get(row["run_id"])
        lines.append(f"| {row['trial']} | {number(row['model_utility'])} | {number(row['forget_efficacy'])} | "
                     f"{number(row['forget_rouge'])} | {', '.join(f'{k}={row[k]:.3g}' for k in searched)} | "
                     f"[run](#/experiments/{experiment}/runs/{row['run_id']}) | "
                     + (f"[v{version}](#/models/{registered}/versions/{version})" if version else "") + " |")
    tracker.tags(run_id, {"mlflow.note.content": "\n".join(lines)})
    tracker.table_artifact(run_id, "pareto.csv", pd.DataFrame(rows))

    figure = Figure(figsize=(5, 4), dpi=100)
    axes = figure.subplots()
    for pareto, style in ((False, {"color": "#999999", "label": "trial"}), (True, {"color": "#d62728", "label": "Pareto-best"})):
        points = [(t.user_attrs.get("model_utility"), t.user_attrs.get("forget_efficacy"), t.number) for t in done
                  if (t.number in best) == pareto and t.user_attrs.get("model_utility") is not None]
        if points:
            axes.scatter([p[0] for p in points], [p[1] for p in points], s=40, **style)
            for mu, fe, k in points:
                axes.annotate(str(k), (mu, fe), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set(xlabel="Model Utility", ylabel="Forget Efficacy", title=f"{study.study_name}: trials (number beside)")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        figure.savefig(Path(tmp) / "mu_fe.png")
        tracker.client.log_artifact(run_id, str(Path(tmp) / "mu_fe.png"))


def end_if_running(tracker: Tracker, run_id: str, status: str, reason: str) -> None:
    """End a run that may still be RUNNING; quietly where the store itself is what failed (the next
    worker's heartbeat recovery ends a trial's run then)."""
    try:
        if tracker.client.get_run(run_id).info.status == "RUNNING":
            tracker.end(run_id, status, reason)
    except Exception:
        pass


def trial_run_name(method: str, number: int, sampled: dict) -> str:
    """A trial's run name, readable in the UI's runs table: its method, number and searched values
    (``ME+GD #3 lr=0.0001 forget_coeff=0.1``)."""
    values = " ".join(f"{name.rsplit('.', 1)[-1]}={value:.3g}" if isinstance(value, float) else f"{name.rsplit('.', 1)[-1]}={value}"
                      for name, value in sampled.items())
    return f"{method} #{number}" + (f" {values}" if values else "")


def trial_tags(cfg: RunConfig, method: str, study_name: str, number: int) -> dict:
    """The ``study.*`` tags of a trial's run that say what it ran (the notebooks select runs by them)."""
    from .runner import tasks_of

    return {
        "scenario": cfg.data.scenario, "method": method, "split": find_scenario(cfg.data.scenario).split_label(cfg.data.split),
        "task": tasks_of(cfg)[-1], "model": cfg.model.name, "data_source": cfg.data.source,
        "study_name": study_name, "trial_number": number, "fix_ref_model": cfg.method.fix_ref_model,
    }


class TrialRun:
    """The MLflow run of one trial (``study.kind=trial``) from :meth:`start` to :meth:`end`.

    :meth:`start`, then :meth:`log_config`; plug :attr:`steps` (per-step ``train/*``), :meth:`on_task`
    and :meth:`on_data` into ``runner.TrialHooks``; keep the model with :meth:`keep_checkpoint`.
    ``about`` (e.g. the study name and trial number) goes into ``config.json`` and the checkpoint's
    metadata."""

    def __init__(self, tracker: Tracker, run_id: str, cfg: RunConfig, about: dict | None = None):
        self.tracker, self.run_id, self.cfg, self.about = tracker, run_id, cfg, dict(about or {})
        self.steps = StepLogger(tracker, run_id)
        """Training callback: the ``train/*`` step axis, continued over the tasks of a continual trial."""
        self.started = time.perf_counter()

    @classmethod
    def start(cls, tracker: Tracker, cfg: RunConfig, name: str, tags: dict, *, parent: str | None = None,
              about: dict | None = None) -> TrialRun:
        """A new trial run with ``tags``, nested under ``parent`` (the study's run) if given. Then
        :meth:`log_config`: a caller that records the run's id elsewhere does so in between, so a
        failure while logging the configuration leaves a run it can end."""
        return cls(tracker, tracker.start(name, "trial", tags, parent=parent), cfg, about)

    def log_config(self, sampled: dict | None = None) -> None:
        """Every parameter of the configuration plus ``sampled.<name>`` for the sampled hyper-parameters,
        ``version.<package>`` tags, and ``config.json`` (configuration, sampled values, ``about``).
        The trial's clock (``time/trial_s``) starts when they are written."""
        sampled = dict(sampled or {})
        self.tracker.params(self.run_id, {**self.cfg.flat(), **{f"sampled.{k}": v for k, v in sampled.items()}})
        self.tracker.tags(self.run_id, {f"version.{k}": v for k, v in package_versions().items()})
        self.tracker.json_artifact(self.run_id, "config.json", {"config": self.cfg.to_dict(), "sampled": sampled, **self.about})
        self.started = time.perf_counter()

    def seconds(self) -> float:
        """Wall seconds of the trial so far."""
        return time.perf_counter() - self.started

    def log_time(self) -> None:
        """``time/trial_s``: the wall seconds of the whole trial (all its tasks)."""
        self.tracker.metrics(self.run_id, {"time/trial_s": self.seconds()})

    def on_task(self, result, retain_run_id: str | None = None) -> None:
        """A task's evaluation (``runner.TaskResult``): summary metrics and ``time/*`` at :meth:`metric_step`,
        the per-item table ``eval/items_task<k>.csv``, the tags ``entailment``, ``aggregate_parts`` and
        ``retain_run_id`` (the retain model whose R gave the task's Forget Quality, if any)."""
        step = result.task if result.task is not None else 1
        at = self.metric_step(step)
        self.tracker.metrics(self.run_id, result.summary, step=at)
        self.tracker.metrics(self.run_id, {"time/train_s": result.train_seconds, "time/eval_s": result.eval_seconds}, step=at)
        self.tracker.table_artifact(self.run_id, f"eval/items_task{step}.csv", result.items)
        tags = {"entailment": "available" if result.entailment_available else "missing",
                "aggregate_parts": json.dumps(result.aggregate_parts, default=str)[:4900]}
        if retain_run_id:
            tags["retain_run_id"] = retain_run_id
        self.tracker.tags(self.run_id, tags)
        self.next_task(result.steps)

    def next_task(self, steps: int) -> None:
        """A task of ``steps`` optimizer steps ended: the next task's steps continue its step axis of
        ``train/*`` (continual). :meth:`on_task` calls it; a run without evaluation calls it itself."""
        self.steps.flush()
        self.steps.offset += steps

    def metric_step(self, task: int) -> int:
        """The MLflow step of a task's evaluation metrics: ``task`` in a sequential scenario (continual: the
        UI draws MU and FE as curves over tasks, ``analysis.fetch_task_curves`` reads them back), else 0.
        MLflow's run page draws a metric with one value as a bar, a value one reads, only when it sits at
        step 0 (a step >= 1 makes it a one-dot time series), and it opens the metrics tab on those charts."""
        return task if find_scenario(self.cfg.data.scenario).sequential else 0

    def on_data(self, task, data) -> None:
        """The run's inputs: the forget, retain and evaluation sets of each task."""
        split = find_scenario(self.cfg.data.scenario).split_label(self.cfg.data.split)
        self.tracker.log_datasets(self.run_id, data, f"{self.cfg.data.scenario}/{split}/task{task if task is not None else '-all'}")

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float):
        """MLflow's ``system/*`` metrics of the run every ``interval_s`` s while the block runs (0: none)."""
        monitor = self.tracker.system_metrics(self.run_id, interval_s) if interval_s else None
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()

    def keep_checkpoint(self, result) -> None:
        """The trained model (``runner.TrialResult``) as the ``checkpoint/`` artifact and, unless it is a
        LoRA adapter alone (not a servable model), as the run's logged model; tagged ``checkpoint=kept``
        and ``model_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            path = models.save_checkpoint(result.model, result.tokenizer, result.prompt, Path(tmp) / "checkpoint",
                                          {"config": self.cfg.to_dict(), **self.about})
            self.tracker.directory_artifact(self.run_id, path, "checkpoint")
        kept = {"checkpoint": "kept"}
        if getattr(result.model, "peft_config", None) is None:
            kept["model_id"] = self.tracker.models.log_model(self.run_id, result.model, result.tokenizer, result.prompt, self.about,
                                                             name=logged_model_name({"method": self.cfg.method.name, **self.about}))
        self.tracker.tags(self.run_id, kept)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        """End the run (the step metrics still buffered first); ``reason`` becomes ``study.failure_reason``."""
        self.steps.flush()
        self.tracker.end(self.run_id, status, reason)
