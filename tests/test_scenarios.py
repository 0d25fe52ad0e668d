"""study.inputs.scenarios: one Scenario per scenario, looked up in either spelling, agreeing with what the data
module builds and what the metrics and MLflow tags use."""

from __future__ import annotations

import pytest

from study.evaluation import metrics as M
from study.config import DataConfig, RunConfig
from study.inputs.data import BuiltinSource
from study.inputs.scenarios import load_scenario  # noqa: I001
from study.errors import StudyInputError
from study.trial.runner import tasks_of
from study.inputs.scenarios import CONTINUAL, FICTITIOUS, REAL_WORLD, SCENARIOS, scenario, tag_spelling


def test_registry_names_the_three_scenarios_once():
    assert list(SCENARIOS) == ["fictitious", "continual", "real-world"]
    # The notebook and results-folder stems are paths derived from the name, not a second name.
    assert [s.folder for s in SCENARIOS.values()] == ["fictitious", "continual", "real_world"]


@pytest.mark.parametrize("name, expected", [("real-world", REAL_WORLD), ("fictitious", FICTITIOUS),
                                            ("continual", CONTINUAL)])
def test_one_spelling_resolves(name, expected):
    assert scenario(name) is expected
    assert scenario(expected) is expected


@pytest.mark.parametrize("name", ["real_world", "realworld", "Real-World", "tofu", "", None])
def test_unknown_scenario_lists_the_valid_ones(name):
    with pytest.raises(StudyInputError, match=r"unknown scenario .*; valid: continual, fictitious, real-world$"):
        scenario(name)


def test_stored_tags_read_in_todays_spelling():
    assert tag_spelling("real_world") == "real-world"
    assert tag_spelling("real-world") == "real-world"
    assert tag_spelling("continual") == "continual"
    assert tag_spelling(None) is None and tag_spelling("other") == "other"


@pytest.mark.parametrize("sc", SCENARIOS.values(), ids=list(SCENARIOS))
def test_sets_match_what_load_scenario_builds_on_the_builtin_source(sc):
    source = BuiltinSource(n_authors=6)
    data = load_scenario(source, sc.name, "forget01", task=1, ds_size=2)
    assert data == sc.load(source, "forget01", task=1, ds_size=2)  # the scenario owns its loading
    assert data.scenario == sc.name
    assert data.split == sc.split_label("forget01")
    assert tuple(e.kind for e in data.eval_sets) == sc.eval_sets
    assert tuple(e.name for e in data.eval_sets) == sc.eval_sets
    # capped_eval: TOFU sets keep the first ds_size rows, the real-world sets every row.
    sizes = {e.name: len(e.rows) for e in data.eval_sets}
    assert all(n <= 2 for n in sizes.values()) == sc.capped_eval, sizes
    assert set(sc.utility_sets) <= set(sc.eval_sets) and sc.retain_set in sc.utility_sets
    assert M.FORGET in sc.eval_sets and M.FORGET not in sc.utility_sets
    with_holdout = load_scenario(source, sc.name, "forget01", task=1, ds_size=2, holdout=True)
    assert tuple(e.kind for e in with_holdout.eval_sets) in (sc.eval_sets, (*sc.eval_sets, M.HOLDOUT))


def test_metrics_tables_are_the_scenarios():
    assert M.SCENARIOS == ("fictitious", "continual", "real-world")
    assert M.UTILITY_SETS == {"fictitious": (M.RETAIN, M.REAL_AUTHORS, M.WORLD_FACTS),
                              "continual": (M.RETAIN, M.REAL_AUTHORS, M.WORLD_FACTS),
                              "real-world": (M.NEIGHBOR,)}
    # NLI direction (reference get_entailment_results): TOFU forget and every real-world set take the
    # generation as premise; TOFU's utility sets the truth.
    assert [FICTITIOUS.nli_direction(s) for s in FICTITIOUS.eval_sets] == \
        ["generation->truth", "truth->generation", "truth->generation", "truth->generation"]
    assert {REAL_WORLD.nli_direction(s) for s in REAL_WORLD.eval_sets} == {"generation->truth"}


def test_split_label_is_the_mlflow_split_tag():
    assert FICTITIOUS.split_label("forget05") == "forget05" and CONTINUAL.split_label("forget10") == "forget10"
    assert REAL_WORLD.split_label("forget01") == "real-world"


def test_config_takes_the_one_spelling():
    assert DataConfig(scenario="real-world", tasks=[]).scenario == "real-world"
    for other in ("real world", "real_world"):
        with pytest.raises(StudyInputError, match="valid: continual, fictitious, real-world"):
            DataConfig(scenario=other)
    with pytest.raises(StudyInputError, match="unlearns one task"):
        DataConfig(scenario="fictitious", tasks=[1, 2])
    assert DataConfig(scenario="continual", tasks=[1, 2]).tasks == [1, 2]


def test_tasks_of_unlearns_every_real_world_person_at_once_only_without_tasks():
    run = lambda sc, tasks: tasks_of(RunConfig.from_dict({"data": {"scenario": sc, "tasks": tasks}}))  # noqa: E731
    assert run("real-world", []) == [None]
    assert run("real-world", [2, 3]) == [2, 3]
    assert run("continual", [1, 2, 3]) == [1, 2, 3]
    assert run("fictitious", [4]) == [4]


def test_a_fourth_scenario_is_one_registry_entry(monkeypatch):
    """Adding a scenario is an entry in study.inputs.scenarios (plus a preset and a notebook): the configuration,
    the loading, the study names, the reproduction's plan and the summary table take it from the registry."""
    import dataclasses

    from experiment_scripts import load
    from study.reporting import results
    from study.inputs import scenarios as S
    from study.reporting.analysis import runs_frame

    toy = dataclasses.replace(S.FICTITIOUS, name="toy")
    monkeypatch.setitem(S.SCENARIOS, "toy", toy)
    assert DataConfig(scenario="toy").scenario == "toy"
    data = load_scenario(BuiltinSource(n_authors=4), "toy", "forget01", task=1, ds_size=2)
    assert data.scenario == "toy" and [e.name for e in data.eval_sets] == list(toy.eval_sets)
    name = results.study_name("smoke", "toy", "forget01", 7)
    assert results.parse_study_name(name + "/GA+GD") == {"preset": "smoke", "scenario": "toy", "setting": "forget01",
                                                          "seed": 7}
    reproduce = load("reproduce")
    assert reproduce.settings_of("toy", ("forget01", "forget05"), (1, 2)) == [
        ("forget01", ["--split", "forget01"], 1), ("forget05", ["--split", "forget05"], 1)]
    trials = [{"run_id": f"r{seed}", "status": "FINISHED", "kind": "trial", "study_name": results.study_name(
               "smoke", "toy", "forget01", seed) + "/GA+GD", "scenario": "toy", "method": "GA+GD", "split": "forget01",
               "fix_ref_model": False, "model_utility": 0.5, "forget_efficacy": 0.5, "retain/rouge": 0.5}
              for seed in (1, 2)]
    table = results.summary_table(runs_frame(trials), runs_frame([]))
    assert list(table["scenario"].unique()) == ["toy"] and table.set_index("method").loc["GA+GD", "n_seeds"] == 2
    # Not the paper's: its released settings do not exist, said in one line (the paper sampler cannot run it).
    from study import paper

    with pytest.raises(StudyInputError, match="the paper released no settings for the toy scenario.*--sampler tpe"):
        paper.released("toy", "GA+GD")


def test_earlier_tasks_are_the_runs_tasks_before_this_one_and_continual_only():
    from study.trial.runner import scenario_data

    cfg = RunConfig.from_dict({"data": {"scenario": "continual", "tasks": [1, 2, 3], "n_authors": 8, "ds_size": 2},
                               "eval": {"earlier_tasks": True}})
    names = lambda task: [s.name for s in scenario_data(cfg, task).eval_sets]  # noqa: E731
    assert "earlier_forget" not in names(1)
    assert [r["task_id"] for r in scenario_data(cfg, 3).eval_sets[-1].rows] == [1, 1, 2, 2]
    off = cfg.replace(eval={"earlier_tasks": False})
    assert "earlier_forget" not in [s.name for s in scenario_data(off, 3).eval_sets]
    # One --set serves every scenario: a one-task or non-sequential run has no earlier task.
    for other in ({"scenario": "fictitious", "tasks": [2]}, {"scenario": "real-world", "tasks": [1, 2]}):
        one = RunConfig.from_dict({"data": {**other, "n_authors": 8, "ds_size": 2}, "eval": {"earlier_tasks": True}})
        assert "earlier_forget" not in [s.name for s in scenario_data(one, other["tasks"][-1]).eval_sets]
    with pytest.raises(ValueError, match="sequential"):
        FICTITIOUS.load(BuiltinSource(n_authors=4), earlier_tasks=(1,))


def test_a_real_world_target_learns_the_neighbour_facts_it_is_evaluated_on(shared_data):
    """A small model knows none of the paper's 20 people (docs/science.md, "Real-world on a small model"),
    so a target fine-tuned for real-world learns the neighbour evaluation's facts too, as Llama-3-8B knew
    them from pretraining; unlearning's retain set stays neighbor.json alone. Read from the files."""
    import json

    from study.inputs.data import DirectorySource

    folder = shared_data / "real_world"
    rows = {name: [json.loads(line) for line in (folder / f"{name}.json").read_text().splitlines() if line.strip()]
            for name in ("forget", "neighbor", "neighbor_perturbed")}
    data = load_scenario(DirectorySource(folder), "real-world", task=None)
    qa = lambda rs: [(r["question"], r["answer"]) for r in rs]  # noqa: E731
    assert qa(data.full) == qa(rows["forget"] + rows["neighbor"] + rows["neighbor_perturbed"])
    assert qa(data.retain) == qa(rows["neighbor"])
    evaluated = {s.name: s.rows for s in data.eval_sets}["neighbor"]
    assert {r["question"] for r in evaluated} <= {q for q, _ in qa(data.full)}
    assert not {r["question"] for r in evaluated} & {q for q, _ in qa(data.retain)}  # disjoint people, as the paper's
    # the built-in analogue too: its neighbour evaluation asks facts its target is fine-tuned on
    builtin = load_scenario(BuiltinSource(n_authors=12), "real-world", task=None)
    learned = {r["question"] for r in builtin.full}
    assert {r["question"] for r in {s.name: s.rows for s in builtin.eval_sets}["neighbor"]} <= learned
