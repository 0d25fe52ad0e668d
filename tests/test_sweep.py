"""The main job end to end: `experiments/sweep.py` on the smoke preset, read back from MLflow and Optuna."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"

pytestmark = pytest.mark.slow


def sweep(store: Path, *args: str, check: bool = True, experiment: str = "e2e") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SWEEP), "--preset", "smoke", "--no-progress", "--tracking-uri", f"sqlite:///{store}/mlflow.db",
           "--storage", f"sqlite:///{store}/optuna.db", "--experiment", experiment, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def runs(store: Path, experiment: str = "e2e", kind: str | None = None):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    frame = mlflow.search_runs(experiment_names=[experiment])
    return frame if kind is None else frame[frame["tags.study.kind"] == kind]


@pytest.fixture(scope="module")
def fictitious(tmp_path_factory):
    store = tmp_path_factory.mktemp("fictitious")
    first = sweep(store, "--n-trials", "2", "--method", "ME+GD")
    return store, first


def test_one_parent_two_children_with_everything(fictitious):
    import mlflow

    store, first = fictitious
    parents, trials = runs(store, kind="study"), runs(store, kind="trial")
    assert len(parents) == 1 and len(trials) == 2
    assert set(trials["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert set(trials["status"]) == {"FINISHED"}
    for column in ("metrics.model_utility", "metrics.forget_efficacy", "metrics.forget_quality", "metrics.forget/rouge",
                   "metrics.retain/truth_ratio", "metrics.world_facts/cosine", "metrics.real_authors/probability",
                   "metrics.model_utility_retain", "metrics.tofu_model_utility"):
        assert trials[column].notna().all(), column
    for column in ("params.train.lr", "params.method.forget_coeff", "params.method.name", "params.data.split",
                   "params.sampled.lr"):
        assert trials[column].notna().all(), column
    for tag in ("scenario", "method", "split", "task", "model", "data_source", "study_name", "trial_number",
                "code_version", "entailment", "target_run_id", "version.torch"):
        assert trials[f"tags.study.{tag}"].notna().all(), tag
    assert set(trials["tags.study.method"]) == {"ME+GD"} and set(trials["tags.study.entailment"]) == {"missing"}
    client = mlflow.tracking.MlflowClient()
    run_id = trials["run_id"].iloc[0]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "eval"} <= names
    items = client.list_artifacts(run_id, "eval")
    assert [a.path for a in items] == ["eval/items_task1.csv"]
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) >= 2 and {"train/lr", "train/grad_norm", "train/forget", "train/regularization"} <= set(
        client.get_run(run_id).data.metrics)
    # Target and retain models are runs of their own, referenced by the trials.
    targets = runs(store, kind="target")
    assert set(trials["tags.study.target_run_id"]) <= set(targets["run_id"])
    assert len(runs(store, kind="retain_model")) == 1
    # The keep policy (best): only Pareto-best trials keep a checkpoint.
    kept = [r for r in trials["run_id"] if any(a.path == "checkpoint" for a in client.list_artifacts(r))]
    assert 1 <= len(kept) <= 2
    assert "Pareto-best trials" in first.stdout and "mlflow ui --backend-store-uri" in first.stdout


def test_rerun_adds_no_duplicate_trials(fictitious):
    import optuna

    store, _ = fictitious
    again = sweep(store, "--n-trials", "2", "--method", "ME+GD")
    assert "2/2 trials finished" in again.stdout
    assert len(runs(store, kind="trial")) == 2
    study = optuna.load_study(study_name="smoke-fictitious-forget01-tiny-llama/ME+GD", storage=f"sqlite:///{store}/optuna.db")
    assert len(study.trials) == 2


def test_two_workers_share_one_sqlite_study(tmp_path):
    from optuna.trial import TrialState

    import optuna

    # The stores are created once before the workers start (concurrent first creation races).
    from study.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e2e")
    optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="shared/ME+GD", directions=["maximize"] * 2)
    cmd = [sys.executable, str(SWEEP), "--preset", "smoke", "--no-progress", "--n-trials", "3", "--study-name", "shared",
           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db",
           "--experiment", "e2e", "--keep-checkpoints", "none"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [w.communicate(timeout=1500) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-3000:] for o in outputs]
    study = optuna.load_study(study_name="shared/ME+GD", storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and len({t.number for t in complete}) == 3
    trials = runs(tmp_path, kind="trial")
    finished = trials[trials["status"] == "FINISHED"]
    assert len(finished) == 3 and len(set(finished["tags.study.trial_number"])) == 3
    assert len(runs(tmp_path, kind="study")) == 1


def test_continual_smoke_logs_per_task_metrics(tmp_path):
    import mlflow

    sweep(tmp_path, "--scenario", "continual", "--tasks", "1", "2", "--n-trials", "1", "--method", "NPO+GD",
          "--fix-ref-model", experiment="cont")
    trials = runs(tmp_path, "cont", kind="trial")
    assert len(trials) == 1 and trials["tags.study.scenario"].iloc[0] == "continual"
    client = mlflow.tracking.MlflowClient()
    run_id = trials["run_id"].iloc[0]
    for metric in ("model_utility", "forget_efficacy", "forget/rouge"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [1, 2]
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {"eval/items_task1.csv", "eval/items_task2.csv"}
    assert trials["params.method.fix_ref_model"].iloc[0] == "True"
