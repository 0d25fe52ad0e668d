"""The main job end to end: `experiments/sweep.py` on the smoke preset, read back from MLflow and Optuna."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE_METHODS, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"

pytestmark = pytest.mark.slow


def runs(store: Path, experiment: str = "e2e", kind: str | None = None):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    frame = mlflow.search_runs(experiment_names=[experiment])
    return frame if kind is None else frame[frame["tags.study.kind"] == kind]


FICTITIOUS = "smoke-fictitious-forget01-tiny-llama"


def test_one_parent_per_method_with_its_trials_and_everything(smoke_store):
    import mlflow
    import optuna

    store, experiment = smoke_store
    all_trials = runs(store, experiment, kind="trial")
    all_trials = all_trials[all_trials["tags.study.scenario"] == "fictitious"]
    parents = runs(store, experiment, kind="study")
    client = mlflow.tracking.MlflowClient()
    for method in SMOKE_METHODS:
        parent = parents[parents["tags.study.study_name"] == f"{FICTITIOUS}/{method}"]
        trials = all_trials[all_trials["tags.study.method"] == method]
        assert len(parent) == 1 and len(trials) == 2
        assert parent["status"].iloc[0] == "FINISHED" and parent["metrics.n_trials_finished"].iloc[0] == 2
        assert set(trials["tags.mlflow.parentRunId"]) == {parent["run_id"].iloc[0]}
        assert set(trials["status"]) == {"FINISHED"}
        assert sorted(trials["tags.study.trial_number"].astype(int)) == [0, 1]
        for column in ("metrics.model_utility", "metrics.forget_efficacy", "metrics.forget_quality"):
            assert trials[column].between(0, 1).all(), column
        for column in ("metrics.forget/rouge", "metrics.retain/truth_ratio", "metrics.world_facts/cosine",
                       "metrics.real_authors/probability", "metrics.model_utility_retain", "metrics.tofu_model_utility"):
            assert trials[column].notna().all(), column
        # Each trial's parameters are its Optuna trial's.
        study = optuna.load_study(study_name=f"{FICTITIOUS}/{method}", storage=f"sqlite:///{store}/optuna.db")
        by_number = {t.number: t for t in study.trials}
        for _, row in trials.iterrows():
            optuna_trial = by_number[int(row["tags.study.trial_number"])]
            assert float(row["params.train.lr"]) == pytest.approx(optuna_trial.params["lr"], rel=1e-12)
            assert float(row["params.sampled.lr"]) == pytest.approx(optuna_trial.params["lr"], rel=1e-12)
            assert float(row["params.method.forget_coeff"]) == pytest.approx(optuna_trial.params["forget_coeff"], rel=1e-12)
            assert row["run_id"] == optuna_trial.user_attrs["mlflow_run_id"]
            assert row["metrics.model_utility"] == pytest.approx(optuna_trial.values[0], rel=1e-12)
        assert set(trials["params.method.name"]) == {method} and set(trials["params.data.split"]) == {"forget01"}
        for tag in ("scenario", "method", "split", "task", "model", "data_source", "study_name", "trial_number",
                    "code_version", "entailment", "target_run_id", "retain_run_id", "version.torch"):
            assert trials[f"tags.study.{tag}"].notna().all(), tag
        assert set(trials["tags.study.entailment"]) == {"missing"}
        # MLflow's standard context tags (the UI's User and Source columns), the checkout's commit, and
        # run names that say the method, trial and searched values; the Pareto front marked.
        for tag in ("mlflow.user", "mlflow.source.name", "mlflow.source.type"):
            assert trials[f"tags.{tag}"].notna().all() and (trials[f"tags.{tag}"] != "").all(), tag
        (commit,) = set(trials["tags.mlflow.source.git.commit"])  # the checkout's commit when the sweep ran
        assert re.fullmatch(r"[0-9a-f]{40}", commit)
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT).returncode == 0
        for _, row in trials.iterrows():
            number, lr = int(row["tags.study.trial_number"]), float(row["params.sampled.lr"])
            assert row["tags.mlflow.runName"].startswith(f"{method} #{number} lr={lr:.3g} forget_coeff="), row["tags.mlflow.runName"]
        front = {t.user_attrs["mlflow_run_id"] for t in study.best_trials}
        assert dict(zip(trials["run_id"], trials["tags.study.pareto"])) == {r: str(r in front).lower() for r in trials["run_id"]}
        # The study's run is a landing page: a note with the front linked, the table and the figure.
        parent_id = parent["run_id"].iloc[0]
        note = client.get_run(parent_id).data.tags["mlflow.note.content"]
        assert all(f"runs/{r})" in note for r in front) and f"#/models/{method.replace('+', '-')}.{FICTITIOUS}" in note
        assert {"pareto.csv", "mu_fe.png"} <= {a.path for a in client.list_artifacts(parent_id)}
        run_id = trials["run_id"].iloc[0]
        assert {"config.json", "eval"} <= {a.path for a in client.list_artifacts(run_id)}
        assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/items_task1.csv"]
        history = client.get_metric_history(run_id, "train/loss")
        assert [m.step for m in history] == list(range(1, len(history) + 1)) and len(history) >= 2
        assert {"train/lr", "train/grad_norm", "train/forget", "train/regularization"} <= set(client.get_run(run_id).data.metrics)
        # The keep policy (best): exactly the Pareto-best trials keep a checkpoint.
        best = {t.user_attrs["mlflow_run_id"] for t in study.best_trials}
        kept = {r for r in trials["run_id"] if any(a.path == "checkpoint" for a in client.list_artifacts(r))}
        assert kept == best
    # Target and retain models are runs of their own, referenced by the trials.
    targets = runs(store, experiment, kind="target")
    assert set(all_trials["tags.study.target_run_id"]) <= set(targets["run_id"])
    retain = runs(store, experiment, kind="retain_model")
    assert set(all_trials["tags.study.retain_run_id"]) == set(retain[retain["tags.study.scenario"] == "fictitious"]["run_id"])
    out = (store / "fictitious.stdout").read_text()
    assert "Pareto-best trials" in out and "mlflow ui --backend-store-uri" in out
    experiment_id = mlflow.tracking.MlflowClient().get_experiment_by_name(experiment).experiment_id
    assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?viewStateShareKey=trials" in out


def test_rerun_adds_no_duplicate_trials(smoke_store):
    import optuna

    store, experiment = smoke_store
    before = len(runs(store, experiment, kind="trial"))
    code, out, err = run_sweep(store, "--scenario", "fictitious", "--method", *SMOKE_METHODS, "--n-trials", "2",
                               experiment=experiment)
    assert code == 0, err[-3000:]
    assert out.count("2/2 trials finished") == len(SMOKE_METHODS)
    assert len(runs(store, experiment, kind="trial")) == before
    for method in SMOKE_METHODS:
        study = optuna.load_study(study_name=f"{FICTITIOUS}/{method}", storage=f"sqlite:///{store}/optuna.db")
        assert len(study.trials) == 2


def test_two_workers_share_one_sqlite_study(tmp_path):
    from optuna.trial import TrialState

    import optuna

    # The stores are created once before the workers start (concurrent first creation races).
    from study.trial.tracking import Tracker

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

    code, out, err = run_sweep(tmp_path, "--scenario", "continual", "--tasks", "1", "2", "--n-trials", "1",
                               "--method", "NPO+GD", "--fix-ref-model", experiment="cont")
    assert code == 0, err[-3000:]
    trials = runs(tmp_path, "cont", kind="trial")
    assert len(trials) == 1 and trials["tags.study.scenario"].iloc[0] == "continual"
    client = mlflow.tracking.MlflowClient()
    run_id = trials["run_id"].iloc[0]
    for metric in ("model_utility", "forget_efficacy", "forget/rouge"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [1, 2]
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {"eval/items_task1.csv", "eval/items_task2.csv"}
    assert trials["params.method.fix_ref_model"].iloc[0] == "True"
