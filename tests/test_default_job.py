"""The README's main command, `python experiments/sweep.py` with no preset, end to end on the offline
default (SmolLM2-135M, built-in authors, ME+GD, 3 trials): its target memorised the forget set, and its
best trial has visibly forgotten it while keeping Model Utility (issue 5's "done when").

Cold (no fine-tuned target cached) it is the longest test: ~8 min on 2 CPU cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
    store = tmp_path_factory.mktemp("default")
    cmd = [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--no-progress",
           "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage", f"sqlite:///{store}/optuna.db"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return store, proc


def test_default_job_forgets_and_keeps_utility(default_job):
    import mlflow
    import optuna

    store, proc = default_job
    print(proc.stdout[-2500:])
    assert "Pareto-best trials" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["unlearning-study"])
    target = runs[runs["tags.study.kind"] == "target"].iloc[0]
    trials = runs[runs["tags.study.kind"] == "trial"]
    assert len(trials) == 3 and set(trials["status"]) == {"FINISHED"}
    target_rouge, target_mu = target["metrics.forget/rouge"], target["metrics.model_utility"]
    # The target memorised its forget set and still knows the world (a wrecked target has MU 0).
    assert target_rouge >= 0.8 and target_mu > 0.2, (target_rouge, target_mu)

    study_name = [s for s in optuna.get_all_study_names(f"sqlite:///{store}/optuna.db")][0]
    best = optuna.load_study(study_name=study_name, storage=f"sqlite:///{store}/optuna.db").best_trials
    rows = [(t.number, t.user_attrs["forget_rouge"], t.user_attrs["model_utility"]) for t in best]
    # Some Pareto-best trial forgot (forget ROUGE far below the target's; the untrained base model scores
    # ~0.57 on these templated answers) while keeping at least 3/4 of the target's Model Utility.
    assert any(rouge <= 0.7 * target_rouge and mu >= 0.75 * target_mu for _, rouge, mu in rows), (target_rouge, target_mu, rows)
    # Every trial carries Forget Quality against the retain model.
    assert trials["metrics.forget_quality"].notna().all()
