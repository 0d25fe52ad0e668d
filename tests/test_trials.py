"""Whole trials and studies on the smoke preset, read back the way a user would: MLflow's client, the
per-item CSVs, the kept checkpoint loaded with ``from_pretrained``, scipy's KS test, Optuna's trials.

Every expected value here comes from outside the code under test: the scenario's own sets (how many
items were evaluated), the CSVs (means, the KS test), the released settings of docs/science.md §4 (written
out below), the schedule's formula ``floor(epochs * N / batch)`` for the step axis.

The sweeps run in this process (``sweep.main(argv)``): nothing here needs a signal or a second process.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMOKE_METHODS, _sweep_module, run_sweep

pytestmark = pytest.mark.slow
SWEEP = _sweep_module()


def client_for(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store}/mlflow.db")


def runs_of(store: Path, kind: str, experiment: str = "trials", scenario: str | None = None) -> list:
    client = client_for(store)
    exp = client.get_experiment_by_name(experiment)
    query = f"tags.`study.kind` = '{kind}'" + (f" and tags.`study.scenario` = '{scenario}'" if scenario else "")
    return client.search_runs([exp.experiment_id], query, max_results=1000)


def items_csv(store: Path, run_id: str, name: str) -> pd.DataFrame:
    from mlflow.artifacts import download_artifacts

    return pd.read_csv(download_artifacts(run_id=run_id, artifact_path=name, tracking_uri=f"sqlite:///{store}/mlflow.db"))


def smoke_config(*overrides: str):
    """The smoke preset's RunConfig, with ``--set``-style overrides, through the CLI's own planner."""
    args = SWEEP.build_parser().parse_args(["--preset", "smoke", *overrides])
    cfg, _, _ = SWEEP.plan(args)
    return cfg


# The session's smoke store (conftest.smoke_store): GA+GD and ME+GD, 2 trials each, every scenario


def _smoke_trials(smoke_store, scenario: str):
    store, experiment = smoke_store
    trials = runs_of(store, "trial", experiment, scenario)
    assert len(trials) == 2 * len(SMOKE_METHODS)
    return store, experiment, trials


@pytest.fixture(scope="module")
def fictitious(smoke_store):
    return _smoke_trials(smoke_store, "fictitious")


def test_items_csv_has_one_row_per_evaluated_item_and_its_means_are_the_logged_metrics(fictitious):
    from study.trial import runner
    from study.evaluation.metrics import METRICS

    data = runner.scenario_data(smoke_config(), 1)
    expected_rows = {s.name: len(s.rows) for s in data.eval_sets}
    assert set(expected_rows) == {"forget", "retain", "real_authors", "world_facts"}
    store, _, trials = fictitious
    for run in trials:
        items = items_csv(store, run.info.run_id, "eval/items_task1.csv")
        assert items.groupby("set").size().to_dict() == expected_rows
        for s in data.eval_sets:  # every row is its set's item, with the generation and the truth
            part = items[items["set"] == s.name].sort_values("item")
            assert part["question"].tolist() == [r["question"] for r in s.rows]
            assert part["generation"].notna().all()
        assert {"generation", "reference", *METRICS, "truth_ratio_raw"} <= set(items.columns)
        logged = run.data.metrics
        compared = 0
        for (set_name, part) in items.groupby("set"):
            assert logged[f"n_items/{set_name}"] == len(part)
            for metric in METRICS:
                mean = part[metric].mean()
                if math.isnan(mean):  # entailment without an NLI model: missing, and not logged
                    assert f"{set_name}/{metric}" not in logged
                    continue
                assert logged[f"{set_name}/{metric}"] == pytest.approx(mean, rel=1e-6, abs=1e-9), f"{set_name}/{metric}"
                compared += 1
        assert compared == 4 * 5  # five metrics per set (entailment missing) were checked


def test_forget_quality_is_the_ks_test_of_trial_and_retain_model_truth_ratios(fictitious):
    from scipy.stats import ks_2samp

    store, experiment, trials = fictitious
    retain_runs = runs_of(store, "retain_model", experiment, "fictitious")
    assert len(retain_runs) == 1
    retain = items_csv(store, retain_runs[0].info.run_id, "eval/items.csv")
    retain_r = retain[retain["set"] == "forget"].sort_values("item")["truth_ratio_raw"].to_numpy()
    for run in trials:
        assert run.data.tags["study.retain_run_id"] == retain_runs[0].info.run_id
        items = items_csv(store, run.info.run_id, "eval/items_task1.csv")
        ours = items[items["set"] == "forget"].sort_values("item")["truth_ratio_raw"].to_numpy()
        assert len(ours) == len(retain_r) > 1
        assert run.data.metrics["forget_quality"] == pytest.approx(ks_2samp(ours, retain_r).pvalue, rel=1e-9)


def test_kept_checkpoint_loads_with_transformers_and_gives_the_logged_rouge(fictitious):
    import torch
    from mlflow.artifacts import download_artifacts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from study.evaluation import evaluate as ev
    from study.inputs import models
    from study.trial import runner

    store, _, trials = fictitious
    kept = [r for r in trials if r.data.tags.get("study.checkpoint") == "kept"]
    assert kept  # the keep policy (best) keeps each study's Pareto-best trials
    run = kept[0]
    path = download_artifacts(run_id=run.info.run_id, artifact_path="checkpoint", tracking_uri=f"sqlite:///{store}/mlflow.db")
    cfg = smoke_config()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=runner.run_dtype(cfg, torch.device("cpu")))  # the trial's
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = models.prompt_format(models.resolve(path), tokenizer)  # the format recorded beside the weights
    data = runner.scenario_data(cfg, 1)
    result = ev.evaluate(model.eval(), tokenizer, prompt, data.eval_sets, cfg.data.scenario,
                         ev.load_metric_models(cfg.eval.embedder, None, torch.device("cpu")),
                         batch_size=cfg.eval.batch_size, max_length=cfg.eval.max_length, progress=False)
    assert result.summary["forget/rouge"] == pytest.approx(run.data.metrics["forget/rouge"], abs=1e-6)
    assert result.summary["retain/probability"] == pytest.approx(run.data.metrics["retain/probability"], rel=1e-4)


# --------------------------------------------------------------------------------------------------
# Continual: one step axis over tasks, and the retain model of each task


@pytest.fixture(scope="module")
def continual(smoke_store):
    return _smoke_trials(smoke_store, "continual")


def test_continual_training_curves_continue_over_tasks(continual):
    from study.trial import runner
    from study.training.train import max_steps_for

    store, _, trials = continual
    cfg = smoke_config("--scenario", "continual")
    assert cfg.data.tasks == [1, 2, 3]
    per_task = [max_steps_for(len(runner.scenario_data(cfg, k).forget), cfg.train.epochs,
                              cfg.train.batch_size * cfg.train.grad_accum) for k in cfg.data.tasks]
    client = client_for(store)
    for run in trials:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        # Each task's steps follow the previous task's: every step once, none overwritten.
        assert steps == list(range(1, sum(per_task) + 1))
        for key in ("train/forget", "train/regularization", "train/lr"):
            assert len(client.get_metric_history(run.info.run_id, key)) == sum(per_task), key


def test_continual_trial_points_to_the_retain_model_of_its_last_task(continual):
    store, _, trials = continual
    client = client_for(store)
    for run in trials:
        # A retain model is shared by every run with the same retain rows (task 1's is also the
        # fictitious scenario's), so its run is found by id, whatever scenario first made it.
        retain = client.get_run(run.data.tags["study.retain_run_id"])
        assert retain.data.tags["study.kind"] == "retain_model"
        assert retain.data.tags["study.task"] == "3"  # the last task's, whose Forget Quality is the trial's
        assert retain.data.metrics["n_items/forget"] == run.data.metrics["n_items/forget"]


# --------------------------------------------------------------------------------------------------
# Samplers, objectives, pruning, and a trial whose objective is NaN


# docs/science.md §4, written out: the released scripts' lr, α (forget_coeff), β and epochs.
RELEASED = {
    ("fictitious", "IDK+AP"): [{"lr": 1e-5, "forget_coeff": 1.0, "beta": 0.1}],
    ("fictitious", "ME+GD"): [{"lr": 1e-5, "forget_coeff": 0.1}],
    ("real-world", "NPO+GD"): [{"lr": lr, "forget_coeff": 1.0, "beta": 0.1, "epochs": e}
                               for lr in (1e-5, 2e-6, 5e-6) for e in (5, 3)],
}


def test_paper_sampler_runs_each_released_setting_exactly_once(tmp_path):
    import optuna

    for scenario in ("fictitious", "real-world"):
        methods = [m for (s, m) in RELEASED if s == scenario]
        code, out, err = run_sweep(tmp_path, "--scenario", scenario, "--sampler", "paper", "--method", *methods,
                                   "--keep-checkpoints", "none", "--study-name", f"paper-{scenario}")
        assert code == 0, out[-2000:] + err[-3000:]
        for method in methods:
            study = optuna.load_study(study_name=f"paper-{scenario}/{method}", storage=f"sqlite:///{tmp_path}/optuna.db")
            got = sorted((t.params for t in study.trials if t.state.name == "COMPLETE"), key=lambda p: sorted(p.items()))
            want = sorted(RELEASED[(scenario, method)], key=lambda p: sorted(p.items()))
            assert got == want, (scenario, method)
            assert len(study.trials) == len(want)


def test_grid_sampler_average_objective_and_pruning_each_run_end_to_end(tmp_path):
    import optuna

    code, out, err = run_sweep(tmp_path, "--sampler", "grid", "--n-trials", "2", "--study-name", "grid",
                               "--keep-checkpoints", "none", "--objective", "average")
    assert code == 0, out[-2000:] + err[-3000:]
    study = optuna.load_study(study_name="grid/ME+GD", storage=f"sqlite:///{tmp_path}/optuna.db")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and len({tuple(sorted(t.params.items())) for t in complete}) == 2
    for t in complete:  # the single objective is the mean of MU and FE
        assert t.value == pytest.approx((t.user_attrs["model_utility"] + t.user_attrs["forget_efficacy"]) / 2, rel=1e-9)
        assert t.params["lr"] in (1e-4, 3.16e-4, 1e-3)  # the smoke space [1e-4, 1e-3] on a 3-point log grid

    code, out, err = run_sweep(tmp_path, "--prune", "--objective", "model_utility", "--n-trials", "3",
                               "--study-name", "pruned", "--keep-checkpoints", "none")
    assert code == 0, out[-2000:] + err[-3000:]
    study = optuna.load_study(study_name="pruned/ME+GD", storage=f"sqlite:///{tmp_path}/optuna.db")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3
    for t in finished:  # per-epoch evaluations were reported to the pruner
        assert len(t.intermediate_values) >= 1
    epoch_history = client_for(tmp_path).get_metric_history(
        finished[0].user_attrs["mlflow_run_id"], "epoch/model_utility")
    assert [m.step for m in epoch_history] == list(range(1, len(epoch_history) + 1))


def test_a_trial_with_a_nan_objective_fails_in_optuna_and_in_mlflow(tmp_path, monkeypatch):
    import optuna

    from study import search

    real = search.objective_values
    monkeypatch.setattr(search, "objective_values", lambda summary, objective: [math.nan, real(summary, objective)[1]])
    code, out, err = run_sweep(tmp_path, "--n-trials", "1", "--max-failures", "1", "--study-name", "nan",
                               "--keep-checkpoints", "none")
    assert code != 0 and "not finite" in err
    (trial,) = optuna.load_study(study_name="nan/ME+GD", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert trial.state.name == "FAIL"
    (run,) = runs_of(tmp_path, "trial")
    assert run.info.status == "FAILED"
    assert "not finite" in run.data.tags["study.failure_reason"]


# --------------------------------------------------------------------------------------------------
# The opt-in methods and privacy metrics (docs/science-beyond-paper.md) end to end


def test_simnpo_and_rmu_with_holdout_log_privacy_metrics(tmp_path):
    from study.evaluation.metrics import EXACT_MEMORIZATION, EXTRACTION_STRENGTH, MIA_ATTACKS, mia_auc_key, privleak_key

    code, out, err = run_sweep(tmp_path, "--method", "SimNPO+GD", "RMU", "--n-trials", "1", "--study-name", "beyond",
                               "--keep-checkpoints", "none", "--set", "eval.holdout=true")
    assert code == 0, out[-2000:] + err[-3000:]
    trials = runs_of(tmp_path, "trial")
    assert sorted(r.data.tags["study.method"] for r in trials) == ["RMU", "SimNPO+GD"]
    retain = runs_of(tmp_path, "retain_model")[0]
    for run in trials:
        assert run.info.status == "FINISHED"
        items = items_csv(tmp_path, run.info.run_id, "eval/items_task1.csv")
        assert "holdout" in set(items["set"])
        forget = items[items["set"] == "forget"]
        for column in (EXTRACTION_STRENGTH, EXACT_MEMORIZATION, *MIA_ATTACKS):
            assert forget[column].between(-1e9, 1e9).all(), column
        assert forget[EXTRACTION_STRENGTH].between(0, 1).all() and forget[EXACT_MEMORIZATION].between(0, 1).all()
        for attack in MIA_ATTACKS:
            auc, retain_auc = run.data.metrics[mia_auc_key(attack)], retain.data.metrics[mia_auc_key(attack)]
            assert 0 <= auc <= 1
            # PrivLeak (MUSE, in percent): (A_retain - A) / (1 - A_retain) * 100.
            assert run.data.metrics[privleak_key(attack)] == pytest.approx(
                (retain_auc - auc) / (1 - retain_auc) * 100, rel=1e-9)
        # The paper's aggregates do not take the new metrics in.
        assert 0 <= run.data.metrics["model_utility"] <= 1
