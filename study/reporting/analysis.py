"""Reading results back from MLflow: tidy frames, the paper's tables and figures, notebook execution.

The notebooks (``notebooks/*.ipynb``) are thin: every table and figure they show is one call into this
module, so the logic is unit-tested (``tests/test_analysis.py``) and the notebooks only wire it up.

Layout read back (``study.trial.tracking``): runs tagged ``study.kind`` (``trial``, ``study``, ``target``,
``retain_model``); a trial's parameters are its flattened ``RunConfig`` (``method.name``, ``train.lr``,
...), its tags ``study.scenario`` / ``study.method`` / ``study.split`` / ..., its metrics
``model_utility``, ``forget_efficacy``, ``forget_quality`` and ``<set>/<metric>`` (continual: logged
with ``step = task``), its artifacts ``eval/items_task<k>.csv``.

Frames and names used throughout:

* a **runs frame** (:func:`fetch_runs`): one row per run, columns :data:`RUN_COLUMNS` then every
  metric (``model_utility``, ..., ``retain/rouge``, ..., ``bench/<task>``); training curves
  (``train/*``) are left out;
* a **curves frame** (:func:`fetch_task_curves`): one row per (continual run, task);
* tables index methods by name, ordered by :func:`order_methods`: the paper's nine first
  (:data:`PAPER_METHODS`), then any other method that was run, alphabetically;
* MU = Model Utility, FE = Forget Efficacy, Avg = (MU + FE) / 2, FQ = Forget Quality
  (docs/science.md §5).

Which trial represents a method (``pick``):

* ``"best"`` (default): among FINISHED trials with a finite MU and FE, the one with the highest
  Avg (ties: lowest trial number, then earliest start). This is the "tuned" view of a sweep.
* ``"median"``: the trial whose Avg is the median of the candidates' (the lower middle one for an even
  count). For a reproduction (one trial per seed at the same settings) this is a typical
  seed, where ``"best"`` would show the luckiest one; its means over seeds are ``results.summary_table``'s.
* ``"paper"``: only trials whose hyper-parameters equal the released scripts' settings for the
  scenario (:func:`paper_settings`, docs/science.md §4), best Avg among them; a method with no such
  trial has no row. This is the view to compare with the published re-run figures.

Every function returns an empty frame with its usual columns when there is nothing to show, and every
plotting function returns None then, so a notebook run on an empty store prints a message instead of
failing. Plotting never selects a matplotlib backend; scripts and tests choose ``Agg``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import pandas as pd

from ..evaluation.metrics import (
    EXACT_MEMORIZATION, EXTRACTION_STRENGTH, METRICS, MIA_ATTACKS, SET_NAMES, mia_auc_key, privleak_key,
)
from ..paper import (
    PAPER_BETA, PAPER_EPOCHS, PAPER_METHODS, PAPER_REGULARIZATION_COEFF, PUBLISHED_SOURCE, REAL_WORLD_QUOTED,
    released,
)
from ..paper import PUBLISHED as _PUBLISHED
from ..errors import StudyInputError
from ..paths import ROOT as REPO_ROOT
from ..methods.hyperparams import SETTINGS
from ..inputs.scenarios import FICTITIOUS, REAL_WORLD, SCENARIOS, tag_spelling
from ..config import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from ..trial.tracking import TAG
from ..credentials import credentials_hidden, redact, with_credentials

if TYPE_CHECKING:  # plotting and notebook libraries are imported where they are used
    import nbformat
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PAPER_METHODS", "SPLITS", "PICKS", "RUN_COLUMNS", "AGGREGATE_COLUMNS", "SET_METRIC_COLUMNS", "CURVE_COLUMNS", "CURVE_METRICS", "EARLIER_ROUGE",
    "REPRESENTATIVE_COLUMNS", "CONTINUAL_COLUMNS", "SENSITIVITY_COLUMNS", "GENERATION_COLUMNS",
    "PUBLISHED_SOURCE", "REAL_WORLD_QUOTED", "REPO_ROOT",
    "resolve_tracking_uri", "runs_frame", "fetch_runs", "fetch_task_curves", "scenario_runs", "finished", "run_counts",
    "no_runs_message", "order_methods", "method_palette", "paper_settings", "representative_trials",
    "method_table", "published_table", "compare_to_published", "metric_table", "forget_quality_table",
    "PRIVACY_COLUMNS", "PRIVACY_NOT_LOGGED", "privacy_table", "with_reasons", "present_splits", "PAPER_MARKERS", "method_markers",
    "pareto_front", "plot_mu_fe", "plot_mu_fe_grid", "scale_note", "continual_table", "plot_continual", "real_world_table",
    "sensitivity", "plot_sensitivity", "SEED_SUFFIX", "name_seeds", "study_seeds", "choose_trial", "generations_side_by_side", "save_figure",
    "save_table", "run_notebook", "Source", "export_frames",
]


Pick = Literal["best", "median", "paper"]
PICKS: tuple[str, ...] = get_args(Pick)

# --------------------------------------------------------------------------------------------
# Names and published figures
# --------------------------------------------------------------------------------------------

SPLITS: tuple[str, ...] = ("forget01", "forget05", "forget10")
"""TOFU forget splits (fictitious and continual scenarios)."""

MEASURES: tuple[str, ...] = ("MU", "FE", "Avg")
"""The three numbers per split of the paper's main table."""

RUN_COLUMNS: tuple[str, ...] = (
    "run_id", "run_name", "status", "start_time", "kind", "parent_run_id", "study_name", "trial_number",
    "scenario", "method", "split", "task", "model", "fix_ref_model", "lr", "forget_coeff", "beta",
    "regularization_coeff", "epochs", "target_run_id", "retain_run_id", "entailment_status", "data_digest",
    *(name for name in SETTINGS if name not in ("lr", "forget_coeff", "beta", "epochs")),
)
"""Descriptive columns of a runs frame (from tags, falling back to the logged parameters)."""

AGGREGATE_COLUMNS: tuple[str, ...] = ("model_utility", "forget_efficacy", "forget_quality", "model_utility_retain",
                                      "tofu_model_utility")
"""Aggregate metrics of a trial (docs/science.md §5; ``study.evaluation.metrics``)."""

SET_METRIC_COLUMNS: tuple[str, ...] = tuple(f"{s}/{m}" for s in SET_NAMES for m in METRICS)
"""Every ``<set>/<metric>`` column, always present in a runs frame (NaN where not logged)."""

_NUMERIC_PARAMS = {**SETTINGS, "regularization_coeff": "method.regularization_coeff"}
"""Run parameters read as numbers into runs-frame columns: every searchable hyper-parameter
(study/methods/hyperparams.py) and the regularizer's weight."""

EARLIER_ROUGE = "earlier_forget/rouge"
"""Continual with ``eval.earlier_tasks`` (beyond the paper): ROUGE on the forget sets of the tasks unlearned
before (docs/science-beyond-paper.md §5); NaN in runs without it."""
CURVE_METRICS: tuple[str, ...] = ("model_utility", "forget_efficacy", EARLIER_ROUGE)
CURVE_COLUMNS: tuple[str, ...] = ("run_id", "method", "fix_ref_model", "split", "seed", "task", *CURVE_METRICS)
REPRESENTATIVE_COLUMNS: tuple[str, ...] = ("method", "split", "run_id", "trial_number", "study_name", "n_trials",
                                           "MU", "FE", "Avg")
CONTINUAL_COLUMNS: tuple[str, ...] = ("method", "fix_ref_model", "split", "seed", "run_id", "last_task", "model_utility",
                                      "forget_efficacy", "Avg")
SENSITIVITY_COLUMNS: tuple[str, ...] = ("run_id", "method", "split", "param", "value", "outcome", "score")
GENERATION_COLUMNS: tuple[str, ...] = ("item", "question", "reference", "trial_generation", "target_generation")

BEFORE_UNLEARNING = "before unlearning"

RERUN_LABEL = "DualOptim re-run"
"""What the fictitious figures of :data:`study.paper.PUBLISHED` are: a third-party re-run of the reference
code on Llama-2-7B (:data:`PUBLISHED_SOURCE`), not the paper's own tables."""

FRONT_GID = "pareto-front"
"""``gid`` of the Pareto-front lines :func:`plot_mu_fe` draws (seaborn adds empty legend lines too)."""

SWEEP_HINT = "python experiments/sweep.py --preset smoke --scenario {scenario}"


def _empty(columns: Iterable[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


# --------------------------------------------------------------------------------------------
# Reading MLflow
# --------------------------------------------------------------------------------------------

def resolve_tracking_uri(uri: str = DEFAULT_TRACKING_URI, base: Path = REPO_ROOT) -> str:
    """``uri`` with a relative ``sqlite:///`` path made absolute against ``base`` (the repository root).

    The command line writes ``sqlite:///mlruns/mlflow.db`` relative to the checkout; a notebook opened
    from ``notebooks/`` runs one directory lower, so its default URI is resolved here."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            return "sqlite:///" + str((base / path).resolve())
    return uri


def _sqlite_missing(uri: str) -> bool:
    """True for a ``sqlite:///`` URI whose file does not exist (reading must not create a store)."""
    return uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(with_credentials(tracking_uri))


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "", "None") else math.nan
    except ValueError:
        return math.nan


def _bool(value: str | None) -> bool | None:
    if value is None:
        return None
    return str(value).strip().lower() in ("true", "1", "yes")


def _normalise_scenario(value: str | None) -> str | None:
    # Runs stored by earlier versions may spell it "real_world" (study.inputs.scenarios.tag_spelling).
    return tag_spelling(value)


def _run_record(run) -> dict[str, Any]:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    trial = tags.get(f"{TAG}trial_number")
    record: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms") if run.info.start_time else pd.NaT,
        "kind": tags.get(f"{TAG}kind"),
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "study_name": tags.get(f"{TAG}study_name"),
        "trial_number": int(trial) if trial not in (None, "") and str(trial).lstrip("-").isdigit() else pd.NA,
        "scenario": _normalise_scenario(tags.get(f"{TAG}scenario") or params.get("data.scenario")),
        "method": tags.get(f"{TAG}method") or params.get("method.name"),
        "split": tags.get(f"{TAG}split") or params.get("data.split"),
        "task": tags.get(f"{TAG}task") or params.get("data.tasks"),
        "model": tags.get(f"{TAG}model") or params.get("model.name"),
        "fix_ref_model": _bool(params.get("method.fix_ref_model", tags.get(f"{TAG}fix_ref_model"))),
        "target_run_id": tags.get(f"{TAG}target_run_id"),
        "retain_run_id": tags.get(f"{TAG}retain_run_id"),
        "entailment_status": tags.get(f"{TAG}entailment"),
        "data_digest": tags.get(f"{TAG}data_digest"),  # None in runs made before it was recorded
    }
    record.update({name: _float(params.get(key)) for name, key in _NUMERIC_PARAMS.items()})
    # Final values of every evaluation metric; per-step training curves and system metrics are not results.
    record.update({k: v for k, v in metrics.items() if not k.startswith(("train/", "system/"))})
    return record


def runs_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """A runs frame (the shape :func:`fetch_runs` returns) from dicts keyed by column name; absent
    columns are NaN. Handy for tests and for runs that never went through MLflow."""
    fixed = [*RUN_COLUMNS, *AGGREGATE_COLUMNS, *SET_METRIC_COLUMNS]
    extra = sorted({k for r in records for k in r} - set(fixed))
    columns = [*fixed, *extra]
    frame = pd.DataFrame.from_records([dict(r) for r in records], columns=columns) if records else _empty(columns)
    # Extra columns are metrics when read from MLflow; a hand-made record may add text ones.
    numbers = [c for c in extra if frame[c].map(lambda v: v is None or isinstance(v, (int, float))).all()]
    numeric = [*_NUMERIC_PARAMS, *AGGREGATE_COLUMNS, *SET_METRIC_COLUMNS, *numbers]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype(float)
    frame["trial_number"] = frame["trial_number"].astype("Int64")
    frame["fix_ref_model"] = frame["fix_ref_model"].astype("boolean")
    frame["start_time"] = pd.to_datetime(frame["start_time"]).astype("datetime64[ms]")  # MLflow keeps ms
    return frame


def fetch_runs(tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
               kind: str | None = "trial") -> pd.DataFrame:
    """Every run of ``kind`` (``trial``, ``study``, ``target``, ``retain_model``; None = all) in
    ``experiment`` as a tidy frame, one row per run, oldest first.

    Columns: :data:`RUN_COLUMNS`, :data:`AGGREGATE_COLUMNS`, :data:`SET_METRIC_COLUMNS` (always, NaN
    where not logged), then any other metric (e.g. ``bench/<task>``) alphabetically. The query is the
    one ``mlflow.search_runs`` runs, made through an explicit ``MlflowClient(tracking_uri)`` so the
    process-wide tracking URI is left alone. A missing store, experiment or run gives an empty frame
    with these columns; a ``sqlite:///`` file that does not exist is not created."""
    if _sqlite_missing(tracking_uri):
        return runs_frame([])
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return runs_frame([])
    query = f"tags.`{TAG}kind` = '{kind}'" if kind else ""
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], query, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs_frame([_run_record(r) for r in runs])


def export_frames(tracking_uri: str, experiment: str, studies: Iterable[str],
                  target_scenarios: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What :func:`study.reporting.exports.write_export` writes, read from the store: (runs, items).

    ``runs``: the trials of the Optuna ``studies`` (names as the trials' ``study_name`` tag,
    ``<study>/<method>``) and their target runs: the ones the trials name (``study.target_run_id``), or,
    for trials that name none (recorded before the tag), the target runs of ``target_scenarios``
    (a store shared by several presets holds other targets of the same scenario); one row per run and step (a
    continual trial's metrics are logged once per task, ``step = task``; other runs have one row):
    the columns of :func:`fetch_runs` at that step, ``step``, then every parameter as ``param/<key>``.
    ``items``: every ``eval/items*.csv`` of those runs, with ``run_id`` and ``file`` in front."""
    from .exports import PARAM_PREFIX

    studies, target_scenarios = set(studies), {_normalise_scenario(s) for s in target_scenarios}
    empty = runs_frame([]).assign(step=pd.Series(dtype="int64")), pd.DataFrame(columns=["run_id", "file"])
    if _sqlite_missing(tracking_uri):
        return empty
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return empty
    candidates, token = [], None  # in the order the runs started
    while True:
        page = client.search_runs([found.experiment_id], "", max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        for run in page:
            tags = run.data.tags
            if (tags.get(f"{TAG}kind") == "trial" and tags.get(f"{TAG}study_name") in studies) \
                    or tags.get(f"{TAG}kind") == "target":
                candidates.append(run)
        token = page.token
        if not token:
            break
    trials = [run for run in candidates if run.data.tags.get(f"{TAG}kind") == "trial"]
    named = {run.data.tags.get(f"{TAG}target_run_id") for run in trials}
    unnamed = any(run.data.tags.get(f"{TAG}target_run_id") is None for run in trials)
    chosen = [run for run in candidates if run.data.tags.get(f"{TAG}kind") == "trial" or run.info.run_id in named
              or (unnamed and _run_record(run)["scenario"] in target_scenarios)]
    records, item_frames = [], []
    for run in chosen:
        base = _run_record(run)
        params = {PARAM_PREFIX + k: v for k, v in sorted(run.data.params.items())}
        steps: dict[int, dict[str, float]] = {}
        if base["scenario"] in SCENARIOS and SCENARIOS[base["scenario"]].sequential:
            for key in run.data.metrics:
                if key.startswith(("train/", "system/")):
                    continue
                for point in sorted(client.get_metric_history(run.info.run_id, key), key=lambda p: (p.step, p.timestamp)):
                    steps.setdefault(int(point.step), {})[key] = point.value
        last = max(steps, default=0)
        settings = {k: v for k, v in base.items() if k not in run.data.metrics}
        for step in sorted(steps) or [0]:
            # The last step's values are the run's (fetch_runs); an earlier task's are those logged at it.
            record = base if step == last else {**settings, **steps[step]}
            records.append({**record, "step": step, **params})
        listed = [a.path for a in client.list_artifacts(run.info.run_id, "eval")
                  if re.fullmatch(r"items(_task\d+)?\.csv", Path(a.path).name)]
        for path in sorted(listed):
            with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
                local = mlflow_download(run.info.run_id, path, tmp, tracking_uri)
                frame = pd.read_csv(local, keep_default_na=False, na_values=[""])
            frame.insert(0, "file", Path(path).name)
            frame.insert(0, "run_id", run.info.run_id)
            item_frames.append(frame)
    runs = runs_frame(records) if records else empty[0]
    runs["step"] = runs["step"].astype("int64")
    items = pd.concat(item_frames, ignore_index=True) if item_frames else empty[1]
    return runs, items


def mlflow_download(run_id: str, path: str, dst: str, tracking_uri: str) -> str:
    """One artifact of a run downloaded into ``dst``; its local path."""
    import mlflow

    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=dst, tracking_uri=tracking_uri)


def fetch_task_curves(tracking_uri: str, runs: pd.DataFrame) -> pd.DataFrame:
    """MU and FE after each task of each run in ``runs`` (a runs frame, usually the continual
    scenario's), from the metric histories (continual trials log them with ``step = task``).

    Columns :data:`CURVE_COLUMNS`; ``fix_ref_model`` is False where the parameter was not logged (the
    configuration default); ``seed`` is the study name's (:func:`name_seeds`). A metric logged twice at one
    step counts once, the later value."""
    if runs.empty or _sqlite_missing(tracking_uri):
        return _empty(CURVE_COLUMNS)
    client = _client(tracking_uri)
    rows: list[dict[str, Any]] = []
    seeds = dict(zip(runs["run_id"], name_seeds(runs["study_name"])))
    for run in runs.itertuples(index=False):
        values: dict[int, dict[str, float]] = {}
        for metric in CURVE_METRICS:
            for point in sorted(client.get_metric_history(run.run_id, metric), key=lambda p: p.timestamp):
                values.setdefault(int(point.step), {})[metric] = point.value
        fix = False if pd.isna(run.fix_ref_model) else bool(run.fix_ref_model)
        for task, got in sorted(values.items()):
            rows.append({"run_id": run.run_id, "method": run.method, "fix_ref_model": fix, "split": run.split,
                         "seed": seeds[run.run_id], "task": task, **{m: got.get(m, math.nan) for m in CURVE_METRICS}})
    if not rows:
        return _empty(CURVE_COLUMNS)
    frame = pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
    frame["fix_ref_model"] = frame["fix_ref_model"].astype(bool)
    return frame


def scenario_runs(runs: pd.DataFrame, scenario: str) -> pd.DataFrame:
    """The rows of one scenario (``fictitious``, ``continual``, ``real-world``; ``real_world`` accepted)."""
    return runs[runs["scenario"] == _normalise_scenario(scenario)].reset_index(drop=True)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs with a finite MU and FE (pruned runs end KILLED, failed ones FAILED)."""
    if runs.empty:
        return runs.copy()
    keep = (runs["status"] == "FINISHED") & np.isfinite(runs["model_utility"].astype(float)) \
        & np.isfinite(runs["forget_efficacy"].astype(float))
    return runs[keep].reset_index(drop=True)


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Number of runs per method (rows, :func:`order_methods`) and status (columns)."""
    if runs.empty:
        return pd.DataFrame(columns=["FINISHED", "KILLED", "FAILED", "RUNNING"], dtype=int).rename_axis("method")
    counts = runs.groupby(["method", "status"]).size().unstack(fill_value=0)
    return counts.reindex(order_methods(counts.index)).rename_axis(columns=None)


def no_runs_message(scenario: str, experiment: str, tracking_uri: str) -> str:
    """What a notebook prints when a scenario has no runs."""
    scenario = _normalise_scenario(scenario) or scenario
    return (f"No {scenario} runs in experiment {experiment!r} at {redact(tracking_uri)}: run "
            f"`{SWEEP_HINT.format(scenario=scenario)}` first (add --tracking-uri / --experiment if you "
            f"use other ones).")


# --------------------------------------------------------------------------------------------
# Methods and representative trials
# --------------------------------------------------------------------------------------------

def order_methods(methods: Iterable[str]) -> list[str]:
    """Distinct method names: the paper's nine in its order, then the others alphabetically."""
    present = {m for m in methods if isinstance(m, str)}
    return [m for m in PAPER_METHODS if m in present] + sorted(present - set(PAPER_METHODS))


def method_palette(methods: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per method: each of the paper's nine has a fixed colour whatever else a frame
    contains, so figures agree; other methods take spare colours in alphabetical order."""
    import seaborn as sns

    tab10 = sns.color_palette("tab10", 10)
    # Hand-placed so that related methods differ and ME+GD (the paper's proposal) is red.
    fixed = dict(zip(PAPER_METHODS, (tab10[i] for i in (0, 9, 2, 8, 4, 6, 5, 1, 3))))
    others = [m for m in order_methods(methods) if m not in fixed]
    spare = [tab10[7], *sns.color_palette("Set2", 8), *sns.color_palette("husl", max(len(others), 1))]
    colours = {**fixed, **dict(zip(others, spare))}
    return {m: colours[m] for m in order_methods(methods)}


PAPER_MARKERS: tuple[str, ...] = ("o", "v", "s", "D", "^", "<", "p", "P", "X")
"""The paper's nine methods' matplotlib markers, in :data:`PAPER_METHODS`' order: a method keeps its marker
(and colour, :func:`method_palette`) in every figure, so overlapping points stay distinguishable."""
SPARE_MARKERS: tuple[str, ...] = ("h", ">", "8", "H", "d", "*", "1", "2", "3", "4")


def method_markers(methods: Iterable[str]) -> dict[str, str]:
    """One marker per method, fixed for the paper's nine; other methods take spare markers alphabetically."""
    fixed = dict(zip(PAPER_METHODS, PAPER_MARKERS))
    others = [m for m in order_methods(methods) if m not in fixed]
    spare = {m: SPARE_MARKERS[i % len(SPARE_MARKERS)] for i, m in enumerate(others)}
    return {m: fixed.get(m) or spare[m] for m in order_methods(methods)}


def _shipped(method: str) -> dict[str, float]:
    """A method outside the paper: its forget loss's ``shipped`` values (``study.methods.LossSpec``)."""
    if method in PAPER_METHODS:
        return {}
    from ..methods import FORGET_LOSSES, Method  # torch, only for methods outside the paper

    try:
        return dict(FORGET_LOSSES[Method.parse(method).forget_loss].shipped)
    except StudyInputError:  # a run of a method this version does not know: the paper's values
        return {}


def paper_settings(scenario: str, method: str) -> dict[str, tuple[float, ...]]:
    """The released scripts' hyper-parameters for ``method`` in ``scenario`` (docs/science.md §4):
    each runs-frame column mapped to the values it may take. β = 0.1 and reg coeff 1.0 everywhere;
    5 epochs except the real-world baselines' grid (5 or 3 epochs). A loss outside the paper takes β and
    the forget weight from its registry entry's ``shipped`` values where it has them (as the ``paper``
    sampler does, :func:`study.search.paper_settings`)."""
    shipped = {"beta": PAPER_BETA, **_shipped(method)}
    rows = [{"epochs": PAPER_EPOCHS, **row, **shipped} for row in released(scenario, method)]
    values = lambda key: tuple(dict.fromkeys(float(row[key]) for row in rows))  # noqa: E731  (first-seen order)
    return {"lr": values("lr"), "epochs": values("epochs"), "forget_coeff": values("forget_coeff"),
            "regularization_coeff": (PAPER_REGULARIZATION_COEFF,), "beta": values("beta")}


def _matches_paper(row: pd.Series) -> bool:
    if row["scenario"] not in SCENARIOS:  # no (or an unknown) scenario tag: no released settings to match
        return False
    for column, allowed in paper_settings(row["scenario"], row["method"]).items():
        value = row.get(column, math.nan)
        if pd.isna(value) or not any(math.isclose(float(value), a, rel_tol=1e-6) for a in allowed):
            return False
    return True


def representative_trials(runs: pd.DataFrame, splits: Sequence[str] | None = SPLITS,
                          pick: Pick = "best") -> pd.DataFrame:
    """The trial that represents each (method, split): see the module docstring for ``pick``.

    ``splits=None`` keeps every split present (the real-world scenario's is ``real-world``). Columns
    :data:`REPRESENTATIVE_COLUMNS`; ``n_trials`` counts the finished candidates the pick chose from.
    Rows ordered by method (:func:`order_methods`), then split."""
    if pick not in PICKS:
        raise ValueError(f"unknown pick {pick!r}; valid: {', '.join(PICKS)}")
    done = finished(runs)
    if splits is not None:
        done = done[done["split"].isin(splits)]
    if done.empty:
        return _empty(REPRESENTATIVE_COLUMNS)
    done = done.assign(MU=done["model_utility"], FE=done["forget_efficacy"],
                       Avg=(done["model_utility"] + done["forget_efficacy"]) / 2)
    done["n_trials"] = done.groupby(["method", "split"])["run_id"].transform("size")
    if pick == "paper":
        done = done[done.apply(_matches_paper, axis=1)]
        if done.empty:
            return _empty(REPRESENTATIVE_COLUMNS)
    done = done.sort_values(["Avg", "trial_number", "start_time"], ascending=[False, True, True], na_position="last")
    if pick == "median":  # in ascending Avg, the ((n - 1) // 2)-th candidate
        rank = done.groupby(["method", "split"], sort=False).cumcount(ascending=False)
        done = done[rank == (done.groupby(["method", "split"])["run_id"].transform("size") - 1) // 2]
    best = done.groupby(["method", "split"], sort=False).head(1)
    split_order = list(splits) if splits is not None else sorted(best["split"].unique())
    best = best.assign(_m=best["method"].map({m: i for i, m in enumerate(order_methods(best["method"]))}),
                       _s=best["split"].map({s: i for i, s in enumerate(split_order)}))
    best = best.sort_values(["_m", "_s"])
    return best[list(REPRESENTATIVE_COLUMNS)].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

def _split_columns(splits: Sequence[str], measures: Sequence[str]) -> pd.MultiIndex:
    return pd.MultiIndex.from_product([list(splits), list(measures)], names=["split", "measure"])


def method_table(runs: pd.DataFrame, splits: Sequence[str] = SPLITS, pick: Pick = "best") -> pd.DataFrame:
    """The paper's main table: one row per method that has a representative trial (paper's nine
    first, then the others), columns (split, MU / FE / Avg) for every split asked for (NaN where a
    method has no trial on that split). Which trial: :func:`representative_trials`."""
    columns = _split_columns(splits, MEASURES)
    reps = representative_trials(runs, splits, pick)
    if reps.empty:
        return pd.DataFrame(index=pd.Index([], name="method", dtype=object), columns=columns, dtype=float)
    wide = reps.pivot(index="method", columns="split", values=list(MEASURES)).swaplevel(axis=1)
    table = wide.reindex(index=order_methods(reps["method"]), columns=columns).astype(float)
    return table.rename_axis(index="method", columns=["split", "measure"])


def published_table() -> pd.DataFrame:
    """The DualOptim re-run's MU / FE (and their Avg) for five methods on Llama-2-7b (a re-run of the
    reference code, not the paper's own tables), in the shape of :func:`method_table`. Source:
    :data:`PUBLISHED_SOURCE`."""
    columns = _split_columns(SPLITS, MEASURES)
    methods = order_methods(_PUBLISHED)
    table = pd.DataFrame(index=pd.Index(methods, name="method"), columns=columns, dtype=float)
    for method in methods:
        for split, (mu, fe) in _PUBLISHED[method].items():
            table.loc[method, (split, "MU")] = mu
            table.loc[method, (split, "FE")] = fe
            table.loc[method, (split, "Avg")] = (mu + fe) / 2
    return table


def compare_to_published(table: pd.DataFrame, published: pd.DataFrame | None = None,
                         labels: tuple[str, str] = ("this study", RERUN_LABEL)) -> pd.DataFrame:
    """``table`` (:func:`method_table`) and the DualOptim re-run's figures side by side: columns (split,
    measure, source), each of our numbers next to its published counterpart; rows are the union of
    both, in method order."""
    published = published_table() if published is None else published
    both = pd.concat({labels[0]: table, labels[1]: published.reindex(columns=table.columns)}, axis=1)
    both.columns = both.columns.reorder_levels([1, 2, 0]).set_names(["split", "measure", "source"])
    order = [(s, m, src) for s, m in table.columns for src in labels]
    both = both.reindex(columns=pd.MultiIndex.from_tuples(order, names=["split", "measure", "source"]))
    return both.reindex(order_methods([*table.index, *published.index])).rename_axis("method")


def _sets_for(runs: pd.DataFrame) -> tuple[str, ...]:
    scenarios = set(runs["scenario"].dropna()) if not runs.empty else set()
    only = SCENARIOS.get(scenarios.pop()) if len(scenarios) == 1 else None
    return (only or FICTITIOUS).eval_sets


def metric_table(runs: pd.DataFrame, splits: Sequence[str] | None = SPLITS, pick: Pick = "best",
                 sets: Sequence[str] | None = None) -> pd.DataFrame:
    """Every metric on every set for each method's representative trial: rows (method, split),
    columns (set, metric). ``sets=None``: forget + the scenario's utility sets (TOFU: retain,
    real_authors, world_facts; real-world: neighbor)."""
    sets = tuple(sets) if sets is not None else _sets_for(runs)
    columns = pd.MultiIndex.from_product([list(sets), list(METRICS)], names=["set", "metric"])
    reps = representative_trials(runs, splits, pick)
    index_names = ["method", "split"]
    if reps.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=index_names), columns=columns, dtype=float)
    values = runs.set_index("run_id").loc[reps["run_id"], [f"{s}/{m}" for s, m in columns]].to_numpy(dtype=float)
    return pd.DataFrame(values, index=pd.MultiIndex.from_frame(reps[index_names]), columns=columns)


def forget_quality_table(runs: pd.DataFrame, splits: Sequence[str] = SPLITS, pick: Pick = "best") -> pd.DataFrame:
    """TOFU's Forget Quality (KS-test p-value against the retain model) and TOFU's 3-metric Model
    Utility of each method's representative trial (the same trial as :func:`method_table`, so the
    tables agree): rows methods, columns (split, FQ / TOFU MU). NaN where not logged (no retain model)."""
    measures = ("FQ", "TOFU MU")
    columns = _split_columns(splits, measures)
    reps = representative_trials(runs, splits, pick)
    if reps.empty:
        return pd.DataFrame(index=pd.Index([], name="method", dtype=object), columns=columns, dtype=float)
    found = runs.set_index("run_id").loc[reps["run_id"], ["forget_quality", "tofu_model_utility"]]
    reps = reps.assign(FQ=found["forget_quality"].to_numpy(), **{"TOFU MU": found["tofu_model_utility"].to_numpy()})
    wide = reps.pivot(index="method", columns="split", values=list(measures)).swaplevel(axis=1)
    return wide.reindex(index=order_methods(reps["method"]), columns=columns).astype(float).rename_axis(
        index="method", columns=["split", "measure"])


PRIVACY_COLUMNS: tuple[str, ...] = (
    *(mia_auc_key(a) for a in MIA_ATTACKS), *(privleak_key(a) for a in MIA_ATTACKS),
    f"forget/{EXTRACTION_STRENGTH}", f"forget/{EXACT_MEMORIZATION}",
)
"""Columns of :func:`privacy_table` (docs/science-beyond-paper.md §3, §4): forget-vs-holdout AUC and
PrivLeak per attack, then the forget set's mean extraction strength and exact memorisation."""

PRIVACY_NOT_LOGGED = "not logged (run with --set eval.holdout=true)"
"""What a notebook shows in place of a membership-inference number the trial did not log."""


def with_reasons(frame: pd.DataFrame, reasons: Mapping[str, str] | None = None, default: str = "not logged",
                 digits: int = 3) -> pd.DataFrame:
    """``frame`` for reading: numbers rounded to ``digits``, and each missing value replaced by why it is
    missing: the reason of the first key of ``reasons`` that its column's label contains (a MultiIndex label
    is searched level by level), else ``default``. A notebook shows this, never a bare NaN."""
    shown = frame.round(digits).astype(object)
    for column in frame.columns:
        labels = [str(part) for part in (column if isinstance(column, tuple) else (column,))]
        why = next((text for key, text in (reasons or {}).items() if any(key in label for label in labels)), default)
        shown[column] = shown[column].where(frame[column].notna(), why)
    return shown


def present_splits(runs: pd.DataFrame) -> list[str]:
    """The forget splits of :data:`SPLITS` that ``runs`` has finished trials of, in that order."""
    done = set(finished(runs)["split"].dropna())
    return [s for s in SPLITS if s in done]


def privacy_table(runs: pd.DataFrame, splits: Sequence[str] | None = SPLITS, pick: Pick = "best") -> pd.DataFrame:
    """Membership inference and memorisation of each method's representative trial (the trial of
    :func:`method_table`): rows (method, split), columns :data:`PRIVACY_COLUMNS`.

    NaN, never 0, where a trial did not log a value: AUCs need a holdout set (``eval.holdout``),
    PrivLeak also a retain model; runs recorded before these metrics existed have none of them."""
    reps = representative_trials(runs, splits, pick)
    index_names = ["method", "split"]
    if reps.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=index_names), columns=list(PRIVACY_COLUMNS),
                            dtype=float)
    found = runs.set_index("run_id").reindex(columns=list(PRIVACY_COLUMNS)).loc[reps["run_id"]]
    return pd.DataFrame(found.to_numpy(dtype=float), index=pd.MultiIndex.from_frame(reps[index_names]),
                        columns=list(PRIVACY_COLUMNS))


def pareto_front(frame: pd.DataFrame, x: str = "model_utility", y: str = "forget_efficacy") -> pd.DataFrame:
    """The rows of ``frame`` not dominated in (``x``, ``y``), both maximised, sorted by ``x`` ascending.

    Row q dominates row p when q[x] >= p[x] and q[y] >= p[y] with at least one strict; identical
    points do not dominate each other, so all copies of a front point are kept. Rows with a missing
    value are ignored."""
    points = frame[np.isfinite(frame[x].astype(float)) & np.isfinite(frame[y].astype(float))]
    if points.empty:
        return points.copy()
    xs, ys = points[x].to_numpy(dtype=float), points[y].to_numpy(dtype=float)
    # dominated[i, j]: point j dominates point i (pairwise, n is a sweep's trial count).
    geq = (xs[None, :] >= xs[:, None]) & (ys[None, :] >= ys[:, None])
    strict = (xs[None, :] > xs[:, None]) | (ys[None, :] > ys[:, None])
    on_front = ~(geq & strict).any(axis=1)
    return points[on_front].sort_values([x, y], ascending=[True, False], kind="stable")


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def plot_mu_fe(runs: pd.DataFrame, ax: Axes | None = None, title: str | None = None) -> Axes | None:
    """Every finished trial in ``runs`` as a point (MU, FE), coloured by method, and each method's
    Pareto front as a step line (the boundary of what that method's trials attain). Returns the axes,
    or None when there is no finished trial (nothing drawn)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = finished(runs)
    if done.empty:
        return None
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    methods = order_methods(done["method"])
    palette = method_palette(methods)
    sns.scatterplot(data=done, x="model_utility", y="forget_efficacy", hue="method", hue_order=methods,
                    palette=palette, style="method", style_order=methods, markers=method_markers(methods), ax=ax,
                    s=40, alpha=0.75)
    for method in methods:
        front = pareto_front(done[done["method"] == method])
        # where="pre": between consecutive front points the attainable FE is the next point's.
        ax.step(front["model_utility"], front["forget_efficacy"], where="pre", color=palette[method], lw=1.5,
                label=f"_front {method}", gid=FRONT_GID)
    ax.set(xlabel="Model Utility (MU)", ylabel="Forget Efficacy (FE)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(title="method", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              frameon=False)
    return ax


def plot_mu_fe_grid(runs: pd.DataFrame, splits: Sequence[str] | None = None) -> Figure | None:
    """:func:`plot_mu_fe` once per split present (or asked for), side by side. None when no
    finished trial."""
    import matplotlib.pyplot as plt

    done = finished(runs)
    if done.empty:
        return None
    present = [s for s in (splits or sorted(done["split"].dropna().unique())) if (done["split"] == s).any()]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 4.5), squeeze=False)
    for ax, split in zip(axes[0], present):
        plot_mu_fe(done[done["split"] == split], ax=ax, title=f"{split}\n{scale_note(done[done['split'] == split])}")
    fig.tight_layout()
    return fig


SEED_SUFFIX = r"-s(?P<seed>\d+)(?:/(?P<method>.+))?$"
"""How a seeded study's name ends (reproduction and sensitivity studies: ``...-s<seed>``, and Optuna's
``/<method>`` where a trial's study name carries it): :func:`name_seeds` reads the seed of any such name,
``study.reporting.results.parse_study_name`` the whole of a reproduction's."""


def name_seeds(names: pd.Series) -> pd.Series:
    """The seed in each study name (:data:`SEED_SUFFIX`) as a float; NaN for a name without one (a sweep's
    study)."""
    return names.astype("string").str.extract(SEED_SUFFIX)["seed"].astype(float)


def study_seeds(runs: pd.DataFrame) -> list[int]:
    """The seeds in the runs' study names (:func:`name_seeds`)."""
    if "study_name" not in runs or runs.empty:
        return []
    return sorted({int(seed) for seed in name_seeds(runs["study_name"]).dropna()})


def scale_note(runs: pd.DataFrame) -> str:
    """What a figure's title says of its runs: the trial count, the seeds (:func:`study_seeds`) and the models."""
    seeds = study_seeds(runs)
    models = " / ".join(sorted(set(runs["model"].dropna())))
    return ", ".join(filter(None, [f"{len(runs)} trials", f"seeds {', '.join(map(str, seeds))}" if seeds else "",
                                   models]))


def continual_table(curves: pd.DataFrame) -> pd.DataFrame:
    """MU and FE at the last task, one row per (method, fix_ref_model, split, seed): among the runs of the
    (method, fix_ref_model, split) that reached its furthest task, each seed's run with the best Avg at that
    task (a sweep's one seed: its best trial; a reproduction: the seed's one trial). ``seed`` is NaN for
    runs whose study name carries none (one group). Columns :data:`CONTINUAL_COLUMNS`."""
    if curves.empty:
        return _empty(CONTINUAL_COLUMNS)
    curves = curves if "seed" in curves else curves.assign(seed=math.nan)
    group = ["method", "fix_ref_model", "split"]
    last = curves.sort_values("task").groupby("run_id").tail(1)
    last = last.assign(last_task=last["task"], Avg=(last["model_utility"] + last["forget_efficacy"]) / 2)
    furthest = last.groupby(group, dropna=False)["last_task"].transform("max")
    last = last[last["last_task"] == furthest].sort_values("Avg", ascending=False, na_position="last", kind="stable")
    best = last.groupby([*group, "seed"], sort=False, dropna=False).head(1)
    rank = {m: i for i, m in enumerate(order_methods(best["method"]))}
    best = best.assign(_m=best["method"].map(rank)).sort_values(["_m", "split", "fix_ref_model", "seed"], kind="stable")
    return best[list(CONTINUAL_COLUMNS)].reset_index(drop=True)


def plot_continual(curves: pd.DataFrame, title: str | None = None, target_mu: float | None = None) -> Figure | None:
    """MU and FE after each task (two panels), one line per (method, fix_ref_model): the mean over seeds of
    the representative runs of :func:`continual_table` (one seed: its run), and where there are several
    seeds a band from the lowest to the highest seed's value; colour and marker = method (as in every
    figure), a dashed line = the fixed reference model (``fix_ref_model``; the line-style key appears only
    when both kinds are drawn); the legend beside the panels. ``target_mu``: the MU before unlearning, a
    grey dotted level in the MU panel (what "collapse" is measured against). A third panel, when the runs
    evaluated them (``eval.earlier_tasks``), draws ROUGE on the earlier tasks' forget sets
    (:data:`EARLIER_ROUGE`). None when there is no curve."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    table = continual_table(curves)
    if table.empty:
        return None
    shown = curves[curves["run_id"].isin(table["run_id"])]
    methods = order_methods(shown["method"])
    colours, markers = method_palette(methods), method_markers(methods)
    panels = [("model_utility", "Model Utility (MU)"), ("forget_efficacy", "Forget Efficacy (FE)")]
    if EARLIER_ROUGE in shown and shown[EARLIER_ROUGE].notna().any():
        panels.append((EARLIER_ROUGE, "ROUGE on earlier tasks' forget sets\n(beyond the paper)"))
    lines = table.groupby(["method", "fix_ref_model"], sort=False)["run_id"].agg(list)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharex=True)
    for ax, (metric, label) in zip(axes, panels):
        for (method, fixed), run_ids in lines.items():
            by_task = shown[shown["run_id"].isin(run_ids)].groupby("task")[metric].agg(["mean", "min", "max"])
            ax.plot(by_task.index, by_task["mean"], color=colours[method], marker=markers[method],
                    linestyle="--" if fixed else "-", alpha=0.85)
            if len(run_ids) > 1:
                ax.fill_between(by_task.index, by_task["min"], by_task["max"], color=colours[method], alpha=0.12,
                                linewidth=0)
        ax.set(xlabel="task", ylabel=label, ylim=(-0.02, 1.02))
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=colours[m], marker=markers[m], label=m) for m in methods]
    if target_mu is not None and math.isfinite(target_mu):
        axes[0].axhline(target_mu, color="grey", linestyle=":", linewidth=1.2)
        handles.append(Line2D([], [], color="grey", linestyle=":", label=f"{BEFORE_UNLEARNING} (MU {target_mu:.3f})"))
    kinds = sorted({bool(v) for v in shown["fix_ref_model"]})
    if len(kinds) == 2:
        handles += [Line2D([], [], color="grey", linestyle="-", label="reference: each task's start"),
                    Line2D([], [], color="grey", linestyle="--", label="reference: fixed (--fix-ref-model)")]
    if lines.map(len).max() > 1:
        handles += [Line2D([], [], color="grey", label="mean over seeds"),
                    Patch(color="grey", alpha=0.25, label="lowest to highest seed")]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def real_world_table(runs: pd.DataFrame, pick: Pick = "best", targets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Real-world scenario: MU, FE, Avg per method (representative trial), the quoted figures
    (:data:`REAL_WORLD_QUOTED`) beside them, and general-benchmark columns ``bench/<task>`` where the
    runs carry them (otherwise one column ``benchmarks`` reading "not run").

    The first row, ``before unlearning``, holds the quoted figures and, when ``targets`` (a runs
    frame of ``kind="target"``) has a real-world target with metrics, the target's own values."""
    bench = sorted(c for c in runs.columns if c.startswith("bench/") and runs[c].notna().any())
    columns = ["MU", "FE", "Avg", "MU (quoted)", "FE (quoted)", *(bench or ["benchmarks"])]
    reps = representative_trials(runs, splits=None, pick=pick)
    if reps.empty:
        return _empty(columns).rename_axis("method")
    reps = reps.drop_duplicates("method")  # one split in this scenario ("real-world")
    rows: dict[str, dict[str, Any]] = {}
    before: dict[str, Any] = {}
    if targets is not None and not targets.empty:
        target = scenario_runs(targets, REAL_WORLD.name)
        if not target.empty:
            t = target.iloc[-1]
            before = {"MU": t.get("model_utility"), "FE": t.get("forget_efficacy"),
                      **{b: t.get(b, math.nan) for b in bench}}
    rows[BEFORE_UNLEARNING] = before
    found = runs.set_index("run_id")
    for rep in reps.itertuples(index=False):
        rows[rep.method] = {"MU": rep.MU, "FE": rep.FE, **{b: found.at[rep.run_id, b] for b in bench}}
    table = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    table["Avg"] = (table["MU"] + table["FE"]) / 2
    for name, quoted in REAL_WORLD_QUOTED.items():
        if name in table.index:
            table.loc[name, "MU (quoted)"] = quoted.get("MU", math.nan)
            table.loc[name, "FE (quoted)"] = quoted.get("FE", math.nan)
    numeric = [c for c in columns if c != "benchmarks"]
    table[numeric] = table[numeric].astype(float)
    if not bench:
        table["benchmarks"] = "not run"
    return table.rename_axis("method")


def _method_params(method: str) -> frozenset[str] | None:
    """The searchable hyper-parameters ``method`` has (``lr``, ``forget_coeff`` and its losses'), or None
    for a method this version does not know."""
    from ..methods import Method  # torch

    try:
        return frozenset({"lr", "forget_coeff", *Method.parse(method).hyperparams})
    except StudyInputError:
        return None


def sensitivity(runs: pd.DataFrame, params: Sequence[str] = tuple(SETTINGS)) -> pd.DataFrame:
    """How MU and FE move with each hyper-parameter across finished trials: one row per (trial,
    param, outcome) with ``outcome`` in {MU, FE}; columns :data:`SENSITIVITY_COLUMNS`. Values that
    are missing or not positive (no log scale) are left out, and so is a parameter the trial's method
    does not have (GA's runs log the configuration's β, which no GA loss reads)."""
    done = finished(runs)
    if done.empty:
        return _empty(SENSITIVITY_COLUMNS)
    parts = []
    has = {m: _method_params(m) for m in done["method"].dropna().unique()}
    for param in (p for p in params if p in done):  # an export written before a parameter was read lacks it
        values = done[param].astype(float)
        uses = done["method"].map(lambda m: has.get(m) is None or param in has[m]).astype(bool)
        ok = done[np.isfinite(values) & (values > 0) & uses]
        for outcome, column in (("MU", "model_utility"), ("FE", "forget_efficacy")):
            parts.append(pd.DataFrame({"run_id": ok["run_id"], "method": ok["method"], "split": ok["split"],
                                       "param": param, "value": ok[param].astype(float), "outcome": outcome,
                                       "score": ok[column].astype(float)}))
    frame = pd.concat(parts, ignore_index=True) if parts else _empty(SENSITIVITY_COLUMNS)
    return frame[list(SENSITIVITY_COLUMNS)]


def plot_sensitivity(frame: pd.DataFrame, title: str | None = None) -> Figure | None:
    """A grid of log-x scatters (:func:`sensitivity` output): rows MU / FE, one column per
    hyper-parameter, colour and marker = method (as in every figure); the parameter names head the
    columns and label the bottom row's x axes; three ticks per axis (the smallest, middle and largest
    value on the log scale). None when the frame is empty."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if frame.empty:
        return None
    methods = order_methods(frame["method"])
    colours, markers = method_palette(methods), method_markers(methods)
    params = list(dict.fromkeys(frame["param"]))
    fig, axes = plt.subplots(2, len(params), figsize=(3.4 * len(params) + 1.8, 5.6), sharey="row", squeeze=False)
    for i, outcome in enumerate(("MU", "FE")):
        for j, param in enumerate(params):
            ax = axes[i][j]
            here = frame[(frame["outcome"] == outcome) & (frame["param"] == param)]
            for method in methods:
                mine = here[here["method"] == method]
                if not mine.empty:
                    ax.scatter(mine["value"], mine["score"], color=colours[method], marker=markers[method], s=30,
                               alpha=0.8)
            ax.set_xscale("log")
            values = frame.loc[frame["param"] == param, "value"].astype(float)
            # Three labelled ticks over the values drawn (a decade can hold them all), none in between;
            # one where every trial had the same value (a fixed setting).
            lo, hi = values.min(), values.max()
            ax.xaxis.set_major_locator(FixedLocator(np.geomspace(lo, hi, 3) if hi > lo else [lo]))
            if not hi > lo:
                ax.set_xlim(lo / 2, lo * 2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_title(param if i == 0 else "", fontsize=10)
            ax.set_xlabel(param if i == 1 else "")
            ax.set_ylabel(outcome if j == 0 else "")
    handles = [plt.Line2D([], [], color=colours[m], marker=markers[m], linestyle="none", label=m) for m in methods]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Generations
# --------------------------------------------------------------------------------------------

def choose_trial(runs: pd.DataFrame, method: str = "ME+GD", split: str | None = None,
                 pick: Pick = "best") -> str | None:
    """The run id of ``method``'s representative trial (on ``split``, or its first split); when that
    method has none, the first representative trial of any method; None when there is none."""
    reps = representative_trials(runs, splits=None if split is None else (split,), pick=pick)
    if reps.empty:
        return None
    mine = reps[reps["method"] == method]
    return str((mine if not mine.empty else reps).iloc[0]["run_id"])


@contextlib.contextmanager
def _no_progress_bar():
    """MLflow draws a download progress bar per artifact (noise in a notebook); its only switch is
    this environment variable, so it is set for the download and restored after."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _items_csv(client, tracking_uri: str, run_id: str, names: Sequence[str], task: int | None) -> pd.DataFrame | None:
    import mlflow

    listed = {Path(f.path).name for f in client.list_artifacts(run_id, "eval")}
    if task is not None:
        wanted = f"items_task{task}.csv"
        name = wanted if wanted in listed else None
    else:
        tasks = sorted((int(m.group(1)), n) for n in listed if (m := re.fullmatch(r"items_task(\d+)\.csv", n)))
        plain = [n for n in names if n in listed]
        name = tasks[-1][1] if tasks else (plain[0] if plain else None)
    if name is None:
        return None
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"eval/{name}", dst_path=tmp,
                                                   tracking_uri=with_credentials(tracking_uri))
        return pd.read_csv(path, keep_default_na=False, na_values=[""])


def generations_side_by_side(tracking_uri: str, trial_run_id: str, target_run_id: str | None = None,
                             set_name: str = "forget", n: int = 10, task: int | None = None) -> pd.DataFrame:
    """The first ``n`` items of ``set_name`` with the question, the reference answer, the unlearned
    model's generation and the target (pre-unlearning) model's generation.

    Reads the trial's ``eval/items_task<k>.csv`` (``task`` None = the last task) and the target run's
    ``eval/items.csv``; ``target_run_id`` None = the trial's ``study.target_run_id`` tag. Items are
    matched on the question text (the target was evaluated on whole sets, a trial on one task's
    forget set); ``target_generation`` is empty where the target run or its table is absent.
    Columns :data:`GENERATION_COLUMNS`."""
    if _sqlite_missing(tracking_uri):
        return _empty(GENERATION_COLUMNS)
    client = _client(tracking_uri)
    trial = _items_csv(client, tracking_uri, trial_run_id, (), task)
    if target_run_id is None:
        target_run_id = client.get_run(trial_run_id).data.tags.get(f"{TAG}target_run_id")
    target = _items_csv(client, tracking_uri, target_run_id, ("items.csv",), None) if target_run_id else None
    return _side_by_side(trial, target, set_name, n)


def _side_by_side(trial: pd.DataFrame | None, target: pd.DataFrame | None, set_name: str, n: int) -> pd.DataFrame:
    if trial is None or "set" not in trial.columns:
        return _empty(GENERATION_COLUMNS)
    rows = trial[trial["set"] == set_name]
    rows = (rows.sort_values("item") if "item" in rows.columns else rows).head(n)
    out = pd.DataFrame({"item": rows.get("item", pd.Series(range(len(rows)), index=rows.index)),
                        "question": rows["question"], "reference": rows.get("reference"),
                        "trial_generation": rows["generation"]}).reset_index(drop=True)
    if target is not None and {"set", "question", "generation"} <= set(target.columns):
        lookup = (target[target["set"] == set_name].drop_duplicates("question")
                  .set_index("question")["generation"])
        out["target_generation"] = out["question"].map(lookup)
    else:
        out["target_generation"] = np.nan
    return out[list(GENERATION_COLUMNS)]


class Source:
    """Where a notebook reads its runs: an MLflow store (``tracking_uri``, ``experiment``) or, when
    ``export_dir`` is given, an export (:mod:`study.reporting.exports`; no store needed), the same frames from
    either. ``studies``: only the trials of these Optuna studies (``<study>`` or ``<study>/<method>``,
    the names ``experiments/reproduce.py`` makes), e.g. the ones a reproduction just ran; None = all."""

    def __init__(self, tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
                 export_dir: str | os.PathLike | None = None, studies: Iterable[str] | None = None):
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.studies = set(studies) if studies is not None else None
        self.export = None
        if export_dir is not None:
            from .exports import read_export

            self.export = read_export(Path(export_dir) if Path(export_dir).is_absolute() else REPO_ROOT / export_dir)

    def __str__(self) -> str:
        if self.export is not None:
            return f"the export {os.path.relpath(self.export.folder, REPO_ROOT)}"
        return f"experiment {self.experiment!r} at {redact(self.tracking_uri)}"

    def runs(self, kind: str = "trial") -> pd.DataFrame:
        """A runs frame (:func:`fetch_runs`) of ``kind``; trials only of ``studies`` where given."""
        if self.export is not None:
            from .exports import last_step

            frame = last_step(self.export.runs)
            frame = frame[frame["kind"] == kind].reset_index(drop=True)
        else:
            frame = fetch_runs(self.tracking_uri, self.experiment, kind=kind)
        if self.studies is not None and kind == "trial" and not frame.empty:
            names = frame["study_name"].astype(str)
            frame = frame[names.isin(self.studies) | names.str.split("/").str[0].isin(self.studies)].reset_index(drop=True)
        return frame

    def task_curves(self, runs: pd.DataFrame) -> pd.DataFrame:
        """:func:`fetch_task_curves` of ``runs``, from the store or the export's per-task rows."""
        if self.export is None:
            return fetch_task_curves(self.tracking_uri, runs)
        rows = self.export.runs[self.export.runs["run_id"].isin(set(runs["run_id"]))]
        rows = rows[rows["model_utility"].notna() | rows["forget_efficacy"].notna()]
        if rows.empty:
            return _empty(CURVE_COLUMNS)
        seeds = dict(zip(runs["run_id"], name_seeds(runs["study_name"])))
        frame = pd.DataFrame({"run_id": rows["run_id"], "method": rows["method"],
                              "fix_ref_model": rows["fix_ref_model"].fillna(False).astype(bool), "split": rows["split"],
                              "seed": rows["run_id"].map(seeds).astype(float), "task": rows["step"].astype(int),
                              **{m: rows[m] if m in rows else math.nan for m in CURVE_METRICS}})
        order = {r: i for i, r in enumerate(dict.fromkeys(runs["run_id"]))}
        frame = frame.assign(_r=frame["run_id"].map(order)).sort_values(["_r", "task"], kind="stable")
        return frame[list(CURVE_COLUMNS)].reset_index(drop=True)

    def generations(self, trial_run_id: str, set_name: str = "forget", n: int = 10) -> pd.DataFrame:
        """:func:`generations_side_by_side` (the trial's last task) from the store or the export."""
        if self.export is None:
            return generations_side_by_side(self.tracking_uri, trial_run_id, set_name=set_name, n=n)
        from .exports import items_of

        runs = self.export.runs
        target_ids = runs.loc[runs["run_id"] == trial_run_id, "target_run_id"].dropna()
        target = items_of(self.export.items, target_ids.iloc[0], "items.csv") if len(target_ids) else None
        return _side_by_side(items_of(self.export.items, trial_run_id), target, set_name, n)


# --------------------------------------------------------------------------------------------
# Saving and notebooks
# --------------------------------------------------------------------------------------------

def save_figure(figure: Figure | Axes | None, directory: str | os.PathLike | None, name: str) -> Path | None:
    """Write ``figure`` (a Figure or an Axes of one) to ``directory/name``; nothing when either is
    None. The figure stays open, so a notebook still shows it."""
    if figure is None or directory is None:
        return None
    fig = figure.get_figure() if hasattr(figure, "get_figure") and not hasattr(figure, "savefig") else figure
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def save_table(table: pd.DataFrame, directory: str | os.PathLike | None, name: str) -> Path | None:
    """Write ``table`` as CSV to ``directory/name`` (index included); nothing when ``directory`` is
    None. The index is written unless it is a default unnamed 0..n-1 one. Read a table with two
    column levels back with ``pd.read_csv(path, header=[0, 1], index_col=0)``."""
    if directory is None:
        return None
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    # A tidy frame's default 0..n-1 index carries nothing; a table's method index does.
    plain = isinstance(table.index, pd.RangeIndex) and table.index.name is None
    table.to_csv(path, index=not plain)
    return path


def _project_kernel_manager():
    """A jupyter_client kernel manager class whose ``python3`` kernel is the interpreter running this
    process (``sys.executable``, so the project's virtual environment): it searches no kernel
    directory, so jupyter_client falls back to ipykernel's built-in spec, and a user-level ``python3``
    spec pointing elsewhere is not used. Other kernel names are looked up as Jupyter does."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from traitlets import default

    class ProjectKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[]) if self.kernel_name == "python3" else KernelSpecManager()

    return ProjectKernelManager


def run_notebook(path: str | os.PathLike, parameters: Mapping[str, Any] | None = None,
                 output_path: str | os.PathLike | None = None, timeout: int = 900,
                 kernel_name: str = "python3", cwd: str | os.PathLike = REPO_ROOT) -> nbformat.NotebookNode:
    """``papermill.execute_notebook`` with this project's defaults: ``parameters`` injected after the
    cell tagged ``parameters`` (papermill's ``injected-parameters`` cell), working directory ``cwd``
    (the repository root), the ``python3`` kernel run by this interpreter (:func:`_project_kernel_manager`),
    no progress bar. Returns the executed notebook, also written to ``output_path`` when given (with the
    outputs up to the failure when a cell fails: papermill then raises ``PapermillExecutionError``)."""
    import papermill

    if output_path is not None:
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in (parameters or {}).items()}
    with credentials_hidden(given) as shown:  # no password in the written notebook
        return papermill.execute_notebook(
            os.fspath(path), os.fspath(output_path) if output_path is not None else None, parameters=shown,
            kernel_name=kernel_name, cwd=os.fspath(cwd), progress_bar=False, execution_timeout=timeout,
            kernel_manager_class=_project_kernel_manager())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m study.reporting.analysis NOTEBOOK [--tracking-uri URI] [--experiment NAME] [--figures-dir DIR]
    [--tables-dir DIR] [--output OUT.ipynb]``: execute a notebook with those parameters (papermill,
    :func:`run_notebook`); ``papermill NOTEBOOK OUT -p tracking_uri URI ...`` does the same."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m study.reporting.analysis", description=main.__doc__)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    parser.add_argument("--figures-dir", default=None)
    parser.add_argument("--tables-dir", default=None)
    parser.add_argument("--output", type=Path, default=None, help="executed notebook (default: not written)")
    args = parser.parse_args(argv)
    parameters = {"tracking_uri": resolve_tracking_uri(args.tracking_uri, Path.cwd()), "experiment": args.experiment,
                  "figures_dir": str(Path(args.figures_dir).resolve()) if args.figures_dir else None,
                  "tables_dir": str(Path(args.tables_dir).resolve()) if args.tables_dir else None}
    run_notebook(args.notebook, parameters, args.output)
    print(f"executed {args.notebook}" + (f" -> {args.output}" if args.output else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
