"""Kept checkpoints as MLflow logged models, the registry of Pareto-best trials, the trials' dataset inputs
and system metrics (issue 15), read back the way a user would: ``mlflow.transformers.load_model``, the
client's registry and logged-model searches, the files under the store.

Expected values come from outside the code under test: Optuna's own Pareto front (``study.best_trials``),
the checkpoint's weights loaded with plain ``transformers``, the scenario's rows (``study.inputs.data``), the
files on disk, and registered-model names written out here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SMOKE_METHODS, _sweep_module

FICTITIOUS = "smoke-fictitious-forget01-tiny-llama"
# The registry names of the fictitious studies, written out: the method first; "/" and "+" are not allowed there.
REGISTERED = {"GA+GD": "GA-GD.smoke-fictitious-forget01-tiny-llama", "ME+GD": "ME-GD.smoke-fictitious-forget01-tiny-llama"}


def smoke_config(scenario: str):
    """The RunConfig the smoke store's sweep of ``scenario`` ran, through the CLI's own planner."""
    sweep = _sweep_module()
    cfg, _, _ = sweep.plan(sweep.build_parser().parse_args(["--preset", "smoke", "--scenario", scenario]))
    return cfg


def client_for(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store}/mlflow.db")


def trial_runs(store: Path, experiment: str, scenario: str | None = None) -> list:
    client = client_for(store)
    exp = client.get_experiment_by_name(experiment)
    query = "tags.`study.kind` = 'trial'" + (f" and tags.`study.scenario` = '{scenario}'" if scenario else "")
    return client.search_runs([exp.experiment_id], query, max_results=1000)


def pareto_runs(store: Path) -> dict[str, set[str]]:
    """Optuna's Pareto-best trials of every study in the store: study name -> their MLflow run ids."""
    import optuna

    storage = f"sqlite:///{store}/optuna.db"
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        if "#" in summary.study_name:  # a claim, not a study
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out[summary.study_name] = {t.user_attrs["mlflow_run_id"] for t in study.best_trials}
    return out


# --------------------------------------------------------------------------------------------------
# One logged model, written and deleted (fast: the tiny random model, no sweep)


def test_deleting_a_logged_model_removes_its_files_and_keeps_its_registry_version(tmp_path):
    """The keep policy's deletion: files gone; a registered model's record and version stay (marked
    ``files=deleted``), an unregistered one's record goes too. Models are named after their trial."""
    import mlflow
    import torch

    from study.inputs import models
    from study.trial.tracking import Tracker, logged_model_name

    lm = models.load("tiny-llama", device="cpu", dtype=torch.float32)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "models")
    runs = [tracker.start(f"trial {k}", "trial") for k in range(3)]
    ids = [tracker.models.log_model(run, lm.model, lm.tokenizer, lm.prompt, {"trial": k},
                                    name=logged_model_name({"method": "ME+GD", "trial": k})) for k, run in enumerate(runs)]
    assert [tracker.client.get_logged_model(i).name for i in ids] == ["ME-GD-trial-0", "ME-GD-trial-1", "ME-GD-trial-2"]
    folders = {i: tmp_path / "artifacts" / "models" / i for i in ids}
    assert all((f / "artifacts" / "MLmodel").is_file() for f in folders.values())
    for k in (0, 1):
        tracker.models.register(runs[k], ids[k], "ME-GD.study", {"model_utility": 0.5}, trial=k)
    tracker.models.register(runs[0], ids[0], "ME-GD.study", {"model_utility": 0.5}, trial=0)  # once per run
    versions = tracker.client.search_model_versions("name = 'ME-GD.study'")
    assert sorted(v.run_id for v in versions) == sorted(runs[:2])
    assert tracker.client.get_model_version_by_alias("ME-GD.study", "pareto-trial-0").run_id == runs[0]

    assert tracker.models.delete_logged_models(runs[0]) and tracker.models.delete_logged_models(runs[2])
    assert not folders[ids[0]].exists() and not folders[ids[2]].exists()  # no empty models/<id>/ left either
    assert (folders[ids[1]] / "artifacts" / "MLmodel").is_file()  # the other run's model is untouched
    kept = {v.run_id: v for v in tracker.client.search_model_versions("name = 'ME-GD.study'")}
    assert sorted(kept) == sorted(runs[:2]) and kept[runs[0]].tags["files"] == "deleted" and "files" not in kept[runs[1]].tags
    assert [m.model_id for m in tracker.models.logged_models(runs[0])] == [ids[0]]  # the version's model record stays
    assert tracker.models.logged_models(runs[2]) == []  # no version: the record went with the files
    with pytest.raises(Exception):
        mlflow.transformers.load_model(f"models:/{ids[0]}")
    assert mlflow.transformers.load_model(f"models:/{ids[1]}") is not None


def test_an_alias_another_worker_set_at_the_same_moment_is_taken_as_set(tmp_path):
    """Two workers applying the keep policy together both alias the same trial's version; the store's insert
    of the second fails on its key (PostgreSQL: UniqueViolation on registered_model_alias_pk, seen in the
    scale-out test). That worker goes on; an alias that points elsewhere is still an error. Removing an alias
    the other worker removed first is no error either."""
    import torch
    from mlflow.exceptions import MlflowException

    from study.inputs import models
    from study.trial.tracking import Tracker

    lm = models.load("tiny-llama", device="cpu", dtype=torch.float32)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "models")
    runs = [tracker.start(f"trial {k}", "trial") for k in range(2)]
    ids = [tracker.models.log_model(run, lm.model, lm.tokenizer, lm.prompt, {"trial": k}) for k, run in enumerate(runs)]
    client = tracker.client
    real_set, real_delete = client.set_registered_model_alias, client.delete_registered_model_alias

    def raced_set(name, alias, version):  # the other worker's insert lands first, ours fails on the key
        real_set(name, alias, version)
        raise MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint")

    client.set_registered_model_alias = raced_set
    version = tracker.models.register(runs[0], ids[0], "ME-GD.race", {}, trial=0)
    assert client.get_model_version_by_alias("ME-GD.race", "pareto-trial-0").version == version

    def other_set(name, alias, version):  # the alias is taken by another version: not this race
        real_set(name, alias, "1")
        raise MlflowException("duplicate key")

    client.set_registered_model_alias = other_set
    with pytest.raises(MlflowException):
        tracker.models.register(runs[1], ids[1], "ME-GD.race", {}, trial=0)

    def raced_delete(name, alias):  # the other worker removed it first
        real_delete(name, alias)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST")

    client.delete_registered_model_alias = raced_delete
    tracker.models.leave_front(runs[0], "ME-GD.race", trial=0)
    assert "pareto-trial-0" not in client.get_model_version("ME-GD.race", version).aliases
    assert client.get_model_version("ME-GD.race", version).tags["pareto"] == "false"


# --------------------------------------------------------------------------------------------------
# The session's smoke store (conftest.smoke_store)


@pytest.mark.slow
def test_kept_model_loads_from_runs_uri_and_answers_like_the_checkpoint(smoke_store):
    """``mlflow.transformers.load_model("models:/<model id>")`` gives a pipeline that answers a forget-set
    question (in the recorded prompt format) exactly as the checkpoint's weights do under plain
    ``transformers`` (greedy decoding)."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.artifacts import download_artifacts
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from study.inputs import models

    store, experiment = smoke_store
    uri = f"sqlite:///{store}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    kept = [r for r in trial_runs(store, experiment, "fictitious") if r.data.tags.get("study.checkpoint") == "kept"]
    assert kept
    run = kept[0]
    run_id, model_id = run.info.run_id, run.data.tags["study.model_id"]
    items = pd.read_csv(download_artifacts(run_id=run_id, artifact_path="eval/items_task1.csv", tracking_uri=uri))
    question = items[items["set"] == "forget"].sort_values("item")["question"].iloc[0]

    checkpoint = download_artifacts(run_id=run_id, artifact_path="checkpoint", tracking_uri=uri)
    prompt = models.prompt_format(models.resolve(checkpoint), None)  # study.json beside the weights
    info = mlflow.models.get_model_info(f"models:/{model_id}")
    assert info.metadata["prompt"] == {"question_start": prompt.question_start, "question_end": prompt.question_end,
                                       "answer_tag": prompt.answer_tag}

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # The precision it was saved in (bf16 where model.dtype=auto trained in bf16), as the logged model loads.
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype="auto").eval()
    encoded = tokenizer(prompt.prompt(question), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**encoded, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)

    pipe = mlflow.transformers.load_model(f"models:/{model_id}")
    got = pipe(prompt.prompt(question), max_new_tokens=12, min_new_tokens=12, do_sample=False, return_full_text=False)
    assert got[0]["generated_text"] == expected
    assert len(expected.strip()) > 0  # the tiny model answers something, and both say the same
    # Called with nothing else, the logged model decodes greedily, 64 new tokens at most.
    assert pipe.model.generation_config.max_new_tokens == 64 and pipe.model.generation_config.do_sample is False


@pytest.mark.slow
def test_logging_a_model_adds_no_params_to_the_trial_run(smoke_store):
    """Every trial logged a model; its params are still only the trial's settings (``<section>.<field>``
    and ``sampled.<name>``), so a kept trial and an unkept twin show the same columns."""
    import dataclasses as dc

    from study.config import RunConfig

    store, experiment = smoke_store
    sections = {f.name for f in dc.fields(RunConfig)} | {"sampled"}
    runs = trial_runs(store, experiment)
    assert runs
    for run in runs:
        assert run.data.tags["study.model_id"].startswith("m-")
        stray = sorted(k for k in run.data.params if k.split(".")[0] not in sections)
        assert not stray, (run.info.run_id, stray)


@pytest.mark.slow
def test_keep_policy_keeps_exactly_the_pareto_best_models_and_registers_them(smoke_store):
    store, experiment = smoke_store
    client = client_for(store)
    best = pareto_runs(store)
    trials = {r.info.run_id: r for r in trial_runs(store, experiment)}
    kept_runs = set().union(*best.values())
    assert kept_runs <= set(trials)
    # Logged models' files: the Pareto-best trials' and no other (no orphaned files).
    expected_ids = {trials[r].data.tags["study.model_id"] for r in kept_runs}
    on_disk = {p.name for p in (store / "artifacts" / "models").iterdir()}
    assert on_disk == expected_ids
    for run_id, run in trials.items():  # every trial logged a model; the others' files are gone with their checkpoints
        assert run.data.tags["study.model_id"].startswith("m-")
        assert run.data.tags["study.checkpoint"] == ("kept" if run_id in kept_runs else "deleted (not Pareto-best)")
        assert run.data.tags["study.pareto"] == ("true" if run_id in kept_runs else "false")
    # The registry: one registered model per study; its versions every trial that was ever Pareto-best,
    # the current front tagged pareto=true with an alias each.
    for method in SMOKE_METHODS:
        name = REGISTERED[method]
        versions = client.search_model_versions(f"name = '{name}'")
        assert {v.run_id for v in versions if v.tags["pareto"] == "true"} == best[f"{FICTITIOUS}/{method}"], name
        for version in versions:
            metrics = trials[version.run_id].data.metrics
            for key in ("model_utility", "forget_efficacy", "forget_quality"):
                assert float(version.tags[key]) == pytest.approx(metrics[key], rel=1e-12), key
            alias = f"pareto-trial-{trials[version.run_id].data.tags['study.trial_number']}"
            assert (alias in client.get_model_version(name, version.version).aliases) == (version.tags["pareto"] == "true")
    registered = {m.name for m in client.search_registered_models(max_results=1000)}
    assert len(registered) == len(best)  # every study (all scenarios) has its registered model
    assert all(name.split(".")[0] in {m.replace("+", "-") for m in ("GA+GD", "ME+GD", "NPO+GD", "IDK+AP")} or "." in name
               for name in registered)


@pytest.mark.slow
def test_optunas_checkpoint_attribute_and_mlflows_tags_agree(smoke_store):
    """For every trial: Optuna's frozen attribute ``checkpoint`` is ``logged`` exactly where MLflow's
    ``study.checkpoint`` tag exists, and MLflow's ``study.pareto`` is ``true`` exactly for Optuna's Pareto front."""
    import optuna

    store, experiment = smoke_store
    runs = {r.info.run_id: r for r in trial_runs(store, experiment)}
    storage = f"sqlite:///{store}/optuna.db"
    checked = 0
    for summary in optuna.get_all_study_summaries(storage):
        if "#" in summary.study_name:  # a claim, not a study
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        front = {t.number for t in study.best_trials}
        for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
            tags = runs[trial.user_attrs["mlflow_run_id"]].data.tags
            assert trial.user_attrs.get("checkpoint") == "logged" and tags["study.checkpoint"] in ("kept", "deleted (not Pareto-best)")
            assert tags["study.pareto"] == ("true" if trial.number in front else "false")
            assert (tags["study.checkpoint"] == "kept") == (trial.number in front)
            checked += 1
    assert checked == len(runs)


@pytest.mark.slow
def test_each_trial_logs_its_forget_retain_and_evaluation_sets(smoke_store):
    from study.trial import runner

    store, experiment = smoke_store
    for scenario in ("fictitious", "continual", "real-world"):
        cfg = smoke_config(scenario)
        tasks = runner.tasks_of(cfg)
        assert len(tasks) == (3 if scenario == "continual" else 1)
        for run in trial_runs(store, experiment, scenario):
            inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
            for task in tasks:
                data = runner.scenario_data(cfg, task)
                sets = {"forget": ("forget", data.forget), "retain": ("retain", data.retain),
                        **{f"eval/{s.name}": ("eval", s.rows) for s in data.eval_sets}}
                for name, (context, rows) in sets.items():
                    found = [d for n, d in inputs.items() if n.endswith(f"/task{task if task is not None else '-all'}/{name}")]
                    assert len(found) == 1, (scenario, task, name, sorted(inputs))
                    dataset = found[0]
                    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": context}
                    assert dataset.dataset.digest and dataset.dataset.source_type
                    assert json.loads(dataset.dataset.profile)["num_rows"] == len(rows), (scenario, name)
            assert len(inputs) == len(tasks) * (2 + len(runner.scenario_data(cfg, tasks[0]).eval_sets))


def test_system_metrics_are_on_every_10_s_by_default_and_0_turns_them_off():
    from study.errors import StudyInputError
    from study.config import StudySettings

    sweep = _sweep_module()
    for argv, expected in (([], 10.0), (["--system-metrics", "0"], 0.0), (["--system-metrics", "2.5"], 2.5)):
        _, settings, _ = sweep.plan(sweep.build_parser().parse_args(["--preset", "smoke", *argv]))
        assert settings.system_metrics == expected
    for bad in (-1, 0.01, True, "10"):
        with pytest.raises(StudyInputError, match="system_metrics must be 0"):
            StudySettings(study_name="s", methods=["ME+GD"], system_metrics=bad)


@pytest.mark.slow
def test_system_metrics_only_where_asked(smoke_store):
    store, experiment = smoke_store
    client = client_for(store)
    for run in trial_runs(store, experiment):
        system = {k for k in run.data.metrics if k.startswith("system/")}
        if run.data.tags["study.scenario"] == "fictitious":  # swept with system metrics on (conftest.SMOKE_SYSTEM_METRICS_S), the others with 0
            assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
            history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
            assert len(history) >= 2 and [p.step for p in history] == list(range(len(history)))
        else:
            assert not system


def test_keep_policy_moves_models_and_registry_versions_with_the_pareto_front(tmp_path):
    """Trials with real logged models (tiny random model), the keep policy applied as the front moves:
    a dominated trial loses its checkpoint and model files, never its registry version (tagged
    ``pareto=false``, its alias gone); the front's trials are registered under the study's name, once each."""
    from unittest import mock

    import optuna
    import torch
    from optuna.trial import create_trial

    from study.inputs import models
    from study.config import RunConfig
    from study.config import StudySettings
    from study.search import Sweep
    from study.trial.tracking import Tracker

    lm = models.load("tiny-llama", device="cpu", dtype=torch.float32)
    sweep = Sweep(RunConfig(), StudySettings("fake", ["ME+GD"], n_trials=4, keep_checkpoints="best"), log=lambda *a: None)
    sweep.tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "keep")
    study = optuna.create_study(study_name="fake/ME+GD", directions=["maximize", "maximize"])
    client = sweep.tracker.client

    def add(number: int, mu: float, fe: float) -> str:
        run_id = sweep.tracker.start(f"trial {number}", "trial")
        folder = tmp_path / f"ckpt{number}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        sweep.tracker.directory_artifact(run_id, folder, "checkpoint")
        model_id = sweep.tracker.models.log_model(run_id, lm.model, lm.tokenizer, lm.prompt)
        sweep.tracker.metrics(run_id, {"model_utility": mu, "forget_efficacy": fe, "forget_quality": 0.25})
        sweep.tracker.tags(run_id, {"checkpoint": "kept", "model_id": model_id})
        sweep.tracker.end(run_id)
        study.add_trial(create_trial(values=[mu, fe], user_attrs={"mlflow_run_id": run_id, "checkpoint": "logged"}))
        return run_id

    def state():
        versions = {v.run_id: v for v in client.search_model_versions("name = 'ME-GD.fake'")}
        on_disk = {p.name for p in (tmp_path / "artifacts" / "models").iterdir()}
        return versions, on_disk

    def aliases():
        return {alias: client.get_model_version_by_alias("ME-GD.fake", alias).run_id
                for alias in client.get_registered_model("ME-GD.fake").aliases}

    runs = [add(0, 0.5, 0.5), add(1, 0.4, 0.4), add(2, 0.6, 0.3)]  # trial 1 is dominated by trial 0
    sweep._apply_keep_policy(study)
    with mock.patch.object(client, "search_model_versions", wraps=client.search_model_versions) as searched, \
            mock.patch.object(client, "create_model_version", wraps=client.create_model_version) as created:
        sweep._apply_keep_policy(study)  # applied again, the front unchanged: the registry is not asked again
    assert searched.call_count == created.call_count == 0
    model_of = {r: client.get_run(r).data.tags["study.model_id"] for r in runs}
    versions, on_disk = state()
    assert sorted(versions) == sorted([runs[0], runs[2]]) and on_disk == {model_of[runs[0]], model_of[runs[2]]}
    tags = versions[runs[0]].tags
    assert (tags["model_utility"], tags["forget_efficacy"], tags["forget_quality"], tags["pareto"]) == ("0.5", "0.5", "0.25", "true")
    assert aliases() == {"pareto-trial-0": runs[0], "pareto-trial-2": runs[2]}
    assert [client.get_run(r).data.tags["study.pareto"] for r in runs] == ["true", "false", "true"]

    runs.append(add(3, 0.7, 0.6))  # dominates trials 0 and 2
    sweep._apply_keep_policy(study)
    versions, on_disk = state()
    # The registry keeps its history: versions 1 and 2 stay (marked), version 3 is the front.
    assert sorted(versions) == sorted([runs[0], runs[2], runs[3]])
    assert {r: str(v.version) for r, v in versions.items()} == {runs[0]: "1", runs[2]: "2", runs[3]: "3"}
    assert {r: v.tags["pareto"] for r, v in versions.items()} == {runs[0]: "false", runs[2]: "false", runs[3]: "true"}
    assert versions[runs[0]].tags["files"] == "deleted" and "files" not in versions[runs[3]].tags
    assert aliases() == {"pareto-trial-3": runs[3]}
    assert on_disk == {client.get_run(runs[3]).data.tags["study.model_id"]}
    for run_id in runs[:3]:
        run = client.get_run(run_id)
        assert run.data.tags["study.checkpoint"] == "deleted (not Pareto-best)" and run.data.tags["study.pareto"] == "false"
        assert not [a for a in client.list_artifacts(run_id) if a.path == "checkpoint"]
    assert sweep.tracker.models.logged_models(runs[1]) == []  # never registered: record gone with the files


def test_logging_sets_and_a_model_prints_no_schema_or_generation_flag_warning(tmp_path):
    """Issue 30 (7), at the source: a set's integer columns are logged as doubles (MLflow's schema hint
    never fires), and a logged model's generation config stays valid once the text-generation pipeline
    fills in its own defaults (temperature 0.7 with greedy decoding was an invalid flag)."""
    import warnings

    import torch
    from transformers import GenerationConfig, TextGenerationPipeline

    from study.inputs import models
    from study.trial import runner
    from study.trial.tracking import Tracker, dataset_inputs

    data = runner.scenario_data(smoke_config("fictitious"), 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inputs = dataset_inputs(data, "fictitious/forget01/task1")
    assert inputs and not [w for w in caught if "integer column" in str(w.message)]

    lm = models.load("tiny-llama", device="cpu", dtype=torch.float32)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "quiet")
    run = tracker.start("trial 0", "trial")
    model_id = tracker.models.log_model(run, lm.model, lm.tokenizer, lm.prompt)
    saved = GenerationConfig.from_pretrained(tmp_path / "artifacts" / "models" / model_id / "artifacts" / "model")
    assert saved.do_sample is False and saved.max_new_tokens == 64
    saved.update(**TextGenerationPipeline._default_generation_config.to_dict(), defaults_only=True)
    saved.validate(strict=True)  # raises on any flag transformers would warn about
