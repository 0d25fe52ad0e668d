"""Tests of study.search's pieces that need no trial: the settings a study records and refuses to
change, samplers, and search spaces; and of the pieces a trial is made of (study.trial.runs, study.trial.references)
on temporary stores, with fixed evaluations instead of models."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from study.config import RunConfig
from study.errors import StudyInputError
from study.config import StudySettings
from study.search import ADDED_SETTINGS, check_fixed_config, fixed_config, make_sampler, search_space


def _study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "maximize"])


def test_a_study_recorded_before_a_setting_existed_resumes_with_the_old_behaviour():
    cfg = RunConfig()
    # ME+GD has no KL term: kl_full_padding does not apply, and an old record resumes as it is.
    fixed = fixed_config(cfg, "ME+GD", {})
    assert "train.kl_full_padding" not in fixed
    study = _study()
    study.set_user_attr("fixed_config", {k: v for k, v in fixed.items() if k not in ADDED_SETTINGS})
    check_fixed_config(study, fixed, "sqlite:///x.db")
    # GA+KL recorded before the setting existed averaged its KL over trimmed batches: the new default
    # (padded to max_length) would mix incomparable trials, the old behaviour resumes.
    kl = fixed_config(cfg, "GA+KL", {})
    assert kl["train.kl_full_padding"] is True
    study = _study()
    study.set_user_attr("fixed_config", {k: v for k, v in kl.items() if k not in ADDED_SETTINGS})
    with pytest.raises(StudyInputError, match=r"train.kl_full_padding False -> True"):
        check_fixed_config(study, kl, "sqlite:///x.db")
    check_fixed_config(study, fixed_config(cfg.replace(train={"kl_full_padding": False}), "GA+KL", {}), "sqlite:///x.db")


def test_a_changed_setting_is_refused_with_its_old_and_new_value():
    cfg = RunConfig()
    study = _study()
    check_fixed_config(study, fixed_config(cfg, "ME+GD", {}), "sqlite:///x.db")  # recorded
    with pytest.raises(StudyInputError, match=r"train.max_length 500 -> 256"):
        check_fixed_config(study, fixed_config(cfg.replace(train={"max_length": 256}), "ME+GD", {}), "sqlite:///x.db")
    # Searched hyper-parameters are not fixed settings: another lr is the same study.
    space = search_space("ME+GD", "fictitious", "tpe")
    check = fixed_config(cfg.replace(train={"lr": 3e-5}), "ME+GD", space)
    assert "train.lr" not in check and "method.forget_coeff" not in check


def test_grid_sampler_keeps_one_order_whatever_the_offset():
    space = {"lr": [1e-5, 2e-5, 3e-5], "epochs": [3, 5]}
    settings = StudySettings(study_name="s", methods=["GA+GD"], sampler="grid", seed=3)
    orders = []
    for offset in (0, 1, 5):
        study = optuna.create_study(sampler=make_sampler(settings, space, offset=offset))
        study.optimize(lambda t: t.suggest_float("lr", 1e-5, 3e-5) + t.suggest_int("epochs", 3, 5), n_trials=6)
        orders.append([tuple(sorted(t.params.items())) for t in study.trials])
    assert orders[0] == orders[1] == orders[2]
    assert len(set(orders[0])) == 6  # every grid point once


def test_rmu_space_samples_an_integer_layer_and_reaches_the_trial_config():
    from study.search import apply_params, suggest

    space = search_space("RMU", "fictitious", "tpe")
    assert list(space) == ["lr", "forget_coeff", "rmu_layer", "rmu_steering_coeff", "rmu_alpha"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = suggest(study.ask(), space)
    assert isinstance(params["rmu_layer"], int) and 1 <= params["rmu_layer"] <= 15
    method = apply_params(RunConfig(), "RMU", params).method.method()
    assert (method.rmu_layer, method.rmu_alpha) == (params["rmu_layer"], params["rmu_alpha"])
    assert search_space("RMU", "fictitious", "grid")["rmu_layer"] == [1, 8, 15]
    # Other methods' studies recorded before RMU existed resume: its settings join as their defaults.
    cfg = RunConfig()
    fixed = fixed_config(cfg, "ME+GD", {})
    assert fixed["method.rmu_layer"] == ADDED_SETTINGS["method.rmu_layer"] == 7
    study = _study()
    study.set_user_attr("fixed_config", {k: v for k, v in fixed.items() if k not in ADDED_SETTINGS})
    check_fixed_config(study, fixed, "sqlite:///x.db")


# --------------------------------------------------------------------------------------------------
# The pieces a trial is made of: its MLflow run (study.trial.runs) and the models it is compared with
# (study.trial.references), on temporary sqlite stores


def _tiny_config(**changes) -> RunConfig:
    return RunConfig.from_dict({"model": {"name": "tiny-llama"}, "data": {"n_authors": 6, "ds_size": 4}, **changes})


def _step(step: int, max_steps: int, loss: float):
    from types import SimpleNamespace

    return SimpleNamespace(step=step, max_steps=max_steps, loss=loss, lr=1e-5, grad_norm=1.0, epoch=1.0, parts={"forget": loss})


def _task_result(task: int, steps: int, mu: float):
    import pandas as pd

    from study.trial.runner import TaskResult

    items = pd.DataFrame({"set": ["forget", "retain"], "item": [0, 0], "rouge": [0.25, 0.75]})
    return TaskResult(task, {"model_utility": mu, "forget_efficacy": 0.5}, items, {"model_utility": {"retain": mu}}, True,
                      train_seconds=2.0, eval_seconds=1.0, steps=steps)


def test_a_one_task_run_logs_its_evaluation_at_step_0_which_mlflow_draws_as_a_value(tmp_path):
    """MLflow's run page draws a metric with one value as a bar only at step 0 (at step >= 1 it is a one-dot
    time series): a fictitious or real-world trial logs its evaluation there; a continual one at its task."""
    from study.trial.runs import TrialRun
    from study.trial.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "runs")
    for scenario, tasks, step in (("fictitious", [1], 0), ("real-world", [], 0), ("continual", [1], 1)):
        data = {"n_authors": 6, "ds_size": 4, "scenario": scenario, "tasks": tasks}
        run = TrialRun.start(tracker, _tiny_config(data=data), f"{scenario} trial", {"method": "ME+GD"})
        run.on_task(_task_result(1, steps=3, mu=0.4))
        run.end()
        history = tracker.client.get_metric_history(run.run_id, "model_utility")
        assert [(h.step, h.value) for h in history] == [(step, 0.4)], scenario
        assert {a.path for a in tracker.client.list_artifacts(run.run_id, "eval")} == {"eval/items_task1.csv"}


def test_a_trial_run_records_its_configuration_tasks_and_continued_step_axis(tmp_path):
    import json

    from study.trial.runs import TrialRun
    from study.trial.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "runs")
    cfg = _tiny_config(data={"n_authors": 6, "ds_size": 4, "scenario": "continual", "tasks": [1, 2]})
    parent = tracker.start("study", "study")
    run = TrialRun.start(tracker, cfg, "ME+GD trial 3", {"method": "ME+GD", "trial_number": 3}, parent=parent,
                         about={"study": "s/ME+GD", "trial": 3})
    run.log_config(sampled={"lr": 2e-5})
    # Task 1: three optimizer steps; task 2: two more, which continue the train/* axis at 4 and 5.
    for step in (1, 2, 3):
        run.steps.on_step(_step(step, 3, loss=float(step)))
    run.on_task(_task_result(1, steps=3, mu=0.4), retain_run_id="retain-1")
    for step in (1, 2):
        run.steps.on_step(_step(step, 2, loss=10.0 + step))
    run.on_task(_task_result(2, steps=2, mu=0.3))
    run.end()

    got = tracker.client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    tags = got.data.tags
    assert tags["mlflow.parentRunId"] == parent and tags["study.kind"] == "trial" and tags["study.method"] == "ME+GD"
    assert tags["study.trial_number"] == "3" and tags["study.retain_run_id"] == "retain-1"
    assert tags["study.entailment"] == "available" and "study.version.torch" in tags
    assert json.loads(tags["study.aggregate_parts"]) == {"model_utility": {"retain": 0.3}}
    params = got.data.params
    assert params["sampled.lr"] == "2e-05" and params["train.lr"] == str(cfg.train.lr) and params["model.name"] == "tiny-llama"
    history = {m: [(h.step, h.value) for h in tracker.client.get_metric_history(run.run_id, m)]
               for m in ("train/loss", "model_utility", "time/train_s")}
    assert history["train/loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 11.0), (5, 12.0)]
    assert history["model_utility"] == [(1, 0.4), (2, 0.3)]
    assert history["time/train_s"] == [(1, 2.0), (2, 2.0)]
    files = {a.path for a in tracker.client.list_artifacts(run.run_id)}
    assert files == {"config.json", "eval"}
    assert {a.path for a in tracker.client.list_artifacts(run.run_id, "eval")} == {"eval/items_task1.csv", "eval/items_task2.csv"}
    config = json.loads(Path(tracker.client.download_artifacts(run.run_id, "config.json", str(tmp_path))).read_text())
    assert config["sampled"] == {"lr": 2e-5} and (config["study"], config["trial"]) == ("s/ME+GD", 3)
    assert config["config"]["model"]["name"] == "tiny-llama"


def test_a_trial_run_ends_failed_with_its_reason_and_flushes_its_steps(tmp_path):
    from study.trial.runs import TrialRun
    from study.trial.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "runs")
    run = TrialRun.start(tracker, _tiny_config(), "trial 0", {})
    run.log_config()
    run.steps.on_step(_step(1, 50, loss=0.5))  # buffered: the loop died long before step 50
    run.end("FAILED", "NonFiniteLoss: loss became nan")
    got = tracker.client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags["study.failure_reason"] == "NonFiniteLoss: loss became nan"
    assert [(h.step, h.value) for h in tracker.client.get_metric_history(run.run_id, "train/loss")] == [(1, 0.5)]


class _FakeEval:
    """What ReferenceModels reads of an evaluation: a summary and the per-item table."""

    def __init__(self, summary: dict, truth_ratios: list[float]):
        import pandas as pd

        self.summary = summary
        self.items = pd.DataFrame({"set": ["forget"] * len(truth_ratios) + ["retain"],
                                   "truth_ratio_raw": [*truth_ratios, 9.0]})


def _references(tmp_path, monkeypatch, cfg, evaluations: list):
    """ReferenceModels on sqlite stores under ``tmp_path``, whose models need no training and whose
    evaluations return fixed results (each appended to ``evaluations``)."""
    from study.trial import runner
    from study.trial.references import ReferenceModels
    from study.search import open_storage
    from study.trial.tracking import Tracker

    def prepared(kind):
        def fake(*args, **kwargs):
            path = tmp_path / kind
            path.mkdir(exist_ok=True)
            return runner.PreparedModel(str(path), f"{kind}-key", kind, cached=True)
        return fake

    monkeypatch.setattr(runner, "target_model", prepared("target"))
    monkeypatch.setattr(runner, "finetuned_model", prepared("retain_model"))

    def evaluate(self, path, data, device):
        evaluations.append(path)
        return _FakeEval({"model_utility": 0.61, "mia_auc/loss": 0.55}, [0.2, 0.4, 0.8])

    monkeypatch.setattr(ReferenceModels, "_evaluate_path", evaluate)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "references")
    return ReferenceModels(cfg, tracker, open_storage(f"sqlite:///{tmp_path}/optuna.db"), device="cpu", progress=False,
                           log=lambda *a: None)


def test_the_target_is_evaluated_once_per_store_and_its_run_reused(tmp_path, monkeypatch):
    evaluations = []
    cfg = _tiny_config()
    first = _references(tmp_path, monkeypatch, cfg, evaluations)
    prepared, run_id = first.prepare_target()
    assert prepared.path == str(tmp_path / "target") and first.prepare_target() == (prepared, run_id)
    (run,) = first.tracker.find("target")
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.data.metrics["model_utility"] == 0.61
    assert run.data.tags["study.key"] == "target-key" and run.data.params["model.name"] == "tiny-llama"
    assert [a.path for a in first.tracker.client.list_artifacts(run_id, "eval")] == ["eval/items.csv"]
    # Another worker (a new instance on the same stores) finds the run: no second evaluation.
    assert _references(tmp_path, monkeypatch, cfg, evaluations).prepare_target()[1] == run_id
    assert evaluations == [str(tmp_path / "target")]
    # Other evaluation settings are another evaluation of the same target: a second run.
    other = _references(tmp_path, monkeypatch, _tiny_config(eval={"max_length": 100}), evaluations)
    assert other.prepare_target()[1] != run_id and len(evaluations) == 2 and len(other.tracker.find("target")) == 2


def test_the_retain_models_truth_ratios_are_cached_and_its_run_named(tmp_path, monkeypatch):
    import numpy as np

    evaluations = []
    cfg = _tiny_config(eval={"holdout": True})
    first = _references(tmp_path, monkeypatch, cfg, evaluations)
    assert first.retain_run_id(1) is None
    np.testing.assert_array_equal(first.retain_truth_ratios(1), [0.2, 0.4, 0.8])  # the forget rows only
    (run,) = first.tracker.find("retain_model")
    assert first.retain_run_id(1) == run.info.run_id and run.data.tags["study.task"] == "1"
    assert first.retain_mia_aucs(1) == {"mia_auc/loss": 0.55}
    second = _references(tmp_path, monkeypatch, cfg, evaluations)
    np.testing.assert_array_equal(second.retain_truth_ratios(1), [0.2, 0.4, 0.8])
    assert second.retain_run_id(1) == run.info.run_id and len(evaluations) == 1
    # Without a retain model there is no Forget Quality reference.
    off = _references(tmp_path, monkeypatch, _tiny_config(finetune={"retain_model": False}), evaluations)
    assert off.retain_truth_ratios(1) is None and off.retain_mia_aucs(1) is None and len(evaluations) == 1


class _Cycle:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self):
        self.me = self


def test_the_startup_heap_is_frozen_while_studies_run_and_trial_cycles_are_still_collected():
    import gc
    import weakref

    from study.search import startup_heap_frozen

    before = _Cycle()
    dead_before = weakref.ref(before)
    del before
    frozen_before = gc.get_freeze_count()
    with startup_heap_frozen():
        # Garbage from before the studies is collected on the way in, not frozen for good.
        assert dead_before() is None
        # What was alive (the imported libraries, this test's module) is out of the collector's scans ...
        assert gc.get_freeze_count() > frozen_before + 1000
        # ... and a trial's own cycle is still freed by the collection Optuna runs after the trial.
        trial = _Cycle()
        dead_trial = weakref.ref(trial)
        del trial
        gc.collect()
        assert dead_trial() is None
    # Handed back afterwards: later collections see the old objects again.
    assert gc.get_freeze_count() == 0


def test_a_study_resumes_with_the_other_forward_mode_but_not_with_another_setting():
    """train.fused_forward changes speed, not results: it is not among a study's fixed settings."""
    cfg = RunConfig()
    fused = fixed_config(cfg, "NPO+KL", {})
    separate = fixed_config(cfg.replace(train={"fused_forward": False}), "NPO+KL", {})
    assert "train.fused_forward" not in fused and fused == separate
    study = _study()
    check_fixed_config(study, fused, "sqlite:///x.db")
    check_fixed_config(study, separate, "sqlite:///x.db")  # resumes
    with pytest.raises(StudyInputError, match=r"train.max_length 500 -> 256"):
        check_fixed_config(study, fixed_config(cfg.replace(train={"max_length": 256, "fused_forward": False}), "NPO+KL", {}),
                           "sqlite:///x.db")
