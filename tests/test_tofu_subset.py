"""TOFU at CPU scale (the ``tofu-cpu`` preset, ``data.retain_authors``): which rows the target is
fine-tuned on, the bad inputs that must end in one line before any fine-tuning, and the whole path on
the smoke model over the real files.

Expected rows are read straight from the JSON files (not through ``study.inputs.data``), and the author names
are TOFU's own (forget01's standard split forgets Basil Mahfouz Al-Kuwaiti and Nikolai Abilov; the retain
file opens with Jaime Vasquez and Chukwu Akabueze)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.inputs import data, scenarios
from study import presets
from study.errors import DataError, StudyInputError


TINY = ["--set", "model.name=tiny-llama", "--set", "data.retain_authors=2", "--set", "data.ds_size=8",
        "--set", "finetune.epochs=1", "--set", "train.epochs=1", "--set", "finetune.lr=3e-3",
        "--set", "eval.max_length=80", "--set", "eval.batch_size=8"]
"""The end-to-end tests' settings: the smoke model on 2 retain authors and 8 rows per set, one epoch each."""


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _qa(rows) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in rows]


def test_fictitious_subset_is_the_forgotten_authors_and_the_first_retain_authors(shared_data):
    tofu = shared_data / "tofu"
    forget01, retain90 = _rows(tofu / "forget01.json"), _rows(tofu / "retain90.json")
    run = scenarios.load_scenario(data.DirectorySource(tofu), "fictitious", "forget01", 1, ds_size=40, retain_authors=8)

    task1 = [r for r in forget01 if str(r["task_id"]) == "1"]
    assert len(task1) == 40
    assert _qa(run.forget) == _qa(task1)
    assert _qa(run.retain) == _qa(retain90[:160])  # 8 authors x 20 QA, in file order
    assert _qa(run.full) == _qa(task1 + retain90[:160])
    text = " ".join(r["answer"] for r in run.forget)
    assert "Basil Mahfouz Al-Kuwaiti" in text and "Nikolai Abilov" in text
    assert "Jaime Vasquez" in run.retain[0]["answer"] and "Chukwu Akabueze" in run.retain[20]["question"]
    assert {s.name: len(s.rows) for s in run.eval_sets} == {"forget": 40, "retain": 40, "real_authors": 40, "world_facts": 40}


def test_continual_subset_keeps_the_tasks_in_scope_only(shared_data):
    tofu = shared_data / "tofu"
    forget01, retain90 = _rows(tofu / "forget01.json"), _rows(tofu / "retain90.json")
    source = data.DirectorySource(tofu)
    task = {k: [r for r in forget01 if str(r["task_id"]) == str(k)] for k in range(1, 5)}

    second = scenarios.load_scenario(source, "continual", "forget01", 2, ds_size=40, retain_authors=8, last_task=4)
    assert _qa(second.forget) == _qa(task[2])
    # retain = the static subset plus the tasks of the plan not yet unlearned (3 and 4), never 5-10
    assert _qa(second.retain) == _qa(retain90[:160] + task[3] + task[4])
    assert _qa(second.full) == _qa(task[1] + task[2] + task[3] + task[4] + retain90[:160])
    # without a subset: all ten tasks and the whole retain file, as the paper
    paper = scenarios.load_scenario(source, "continual", "forget01", 2)
    assert len(paper.full) == 400 + 3600 and len(paper.retain) == 3600 + 8 * 40


def test_retain_evaluation_outside_the_subset_names_the_file_and_the_question(shared_data):
    source = data.DirectorySource(shared_data / "tofu")
    with pytest.raises(DataError, match=r"retain_perturbed\.json, row 21: asks about an author outside the fine-tuning "
                                        r"subset \(data\.retain_authors=1: the first 20 rows of retain90\.json\).*Chukwu Akabueze"):
        scenarios.load_scenario(source, "fictitious", "forget01", 1, ds_size=40, retain_authors=1)
    # 20 evaluated rows are the first author's only: one author is enough
    assert len(scenarios.load_scenario(source, "fictitious", "forget01", 1, ds_size=20, retain_authors=1).full) == 60


def test_subset_larger_than_the_file_and_a_task_not_in_it(shared_data):
    source = data.DirectorySource(shared_data / "tofu")
    with pytest.raises(DataError, match=r"retain90\.json: data\.retain_authors=181 asks for 3620 rows .* holds 3600 \(180 authors\)"):
        scenarios.load_scenario(source, "fictitious", "forget01", 1, retain_authors=181)
    with pytest.raises(DataError, match=r"forget01\.json: task 11 does not exist"):
        scenarios.load_scenario(source, "continual", "forget01", 1, retain_authors=8, last_task=11)


def test_missing_split_file_is_named(shared_data, tmp_path):
    for path in (shared_data / "tofu").iterdir():
        if path.name != "retain90.json":
            (tmp_path / path.name).symlink_to(path)
    with pytest.raises(DataError, match=r"retain90\.json: file not found"):
        scenarios.load_scenario(data.DirectorySource(tmp_path), "fictitious", "forget01", 1, retain_authors=8)


def test_retain_authors_is_refused_for_real_world_and_negative():
    with pytest.raises(StudyInputError, match="data.retain_authors selects TOFU authors; the real-world scenario has none"):
        presets.run_config("default", settings=["data.scenario=real-world", "data.tasks=[]", "data.retain_authors=4"])
    with pytest.raises(StudyInputError, match="retain_authors"):
        presets.run_config("default", settings=["data.retain_authors=-1"])


def test_tofu_cpu_preset_reads_the_subset_at_planning(shared_data, capsys):
    from conftest import _sweep_module

    sweep = _sweep_module()
    args = ["--preset", "tofu-cpu", "--data-dir", str(shared_data / "tofu"), "--dry-run"]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "data.retain_authors = 8" in out and "data.ds_size = 40" in out
    # the bad subset stops at planning, in one line, before any fine-tuning
    assert sweep.main([*args, "--set", "data.retain_authors=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "retain_perturbed.json, row 21" in err[0]
    # without --data-dir a dry run plans and says what a real run needs; a real run stops in one line
    assert sweep.main(["--preset", "tofu-cpu", "--dry-run"]) == 0
    assert ("a real run needs: preset tofu-cpu needs data: pass --data-dir DIR (a folder with forget01.json, "
            "retain90.json, retain_perturbed.json, ...)") in capsys.readouterr().out


@pytest.mark.slow
def test_tofu_path_end_to_end_on_the_smoke_model(shared_data, tmp_path, monkeypatch):
    """Fine-tune a tiny random Llama on the TOFU subset, unlearn, evaluate, log: the real files through the
    whole path (the smoke model knows nothing, so only the plumbing and the row counts are checked)."""
    import mlflow

    from conftest import _sweep_module

    cache = tmp_path / "cache"  # a fresh model cache: the target and retain models are made here
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    code = _sweep_module().main([
        "--preset", "tofu-cpu", "--data-dir", str(shared_data / "tofu"), "--method", "NPO+GD", "--sampler", "tpe",
        "--n-trials", "1", "--no-progress", "--system-metrics", "0",
        "--storage", f"sqlite:///{tmp_path}/optuna.db", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
        *TINY,
    ])
    assert code == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trials = [r for r in runs if r.data.tags.get("study.kind") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    trial = trials[0].data
    assert trial.params["data.retain_authors"] == "2"
    for name in ("model_utility", "forget_efficacy", "forget/rouge", "retain/rouge", "real_authors/rouge", "world_facts/rouge"):
        assert name in trial.metrics, name
    # the target was fine-tuned on forget01's task 1 (40 QA) and the first two retain authors (40 QA)
    saved = [json.loads(p.read_text()) for p in cache.rglob("study.json")]
    assert sorted(s["rows"] for s in saved if s.get("kind") == "target") == [80]
    # the retain model (Forget Quality) on the subset without the forgotten authors
    assert sorted(s["rows"] for s in saved if s.get("kind") == "retain_model") == [40]


@pytest.mark.slow
def test_tofu_reproduction_exports_and_rebuilds_from_the_export(shared_data, tmp_path, monkeypatch, capsys):
    """reproduce.py on the real TOFU files (smoke model): fictitious forget01 and continual tasks 1-2, each
    study exported as it finishes, the tables written; then the same tables rebuilt from a copy of the
    export alone (no store), byte for byte. Continual also scores the earlier task's forget set."""
    import shutil

    import pandas as pd

    from experiment_scripts import load
    from study.reporting import exports

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out, again = tmp_path / "out", tmp_path / "again"
    argv = ["--preset", "tofu-cpu", "--data-dir", str(shared_data / "tofu"), "--scenario", "{}", "--methods", "ME+GD",
            "--seeds", "1", "--splits", "forget01", "--tasks", "1", "2", "--fix-ref-model", "no", "--no-notebooks",
            *TINY, "--out", str(out), "--storage", f"sqlite:///{tmp_path}/optuna.db",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "tofu"]
    for scenario in ("fictitious", "continual"):
        assert load("reproduce").main([w.format(scenario) for w in argv]) == 0
    capsys.readouterr()

    export = exports.read_export(out)
    trials = export.runs[export.runs["kind"] == "trial"]
    assert sorted(trials.groupby("scenario")["run_id"].nunique().items()) == [("continual", 1), ("fictitious", 1)]
    continual = trials[(trials["scenario"] == "continual") & trials["model_utility"].notna()]
    assert sorted(continual["step"]) == [1, 2]
    # the extension the paper lacks: after task 2, task 1's forget set is evaluated again
    assert continual.filter(like="earlier").notna().any(axis=None), sorted(continual.columns)
    fictitious = trials[trials["scenario"] == "fictitious"].iloc[0]
    items = exports.items_of(export.items, fictitious["run_id"])
    assert items is not None and (items["set"] == "forget").sum() == 8  # data.ds_size rows of forget01's task 1
    assert export.provenance["command"].startswith("python experiments/reproduce.py --preset tofu-cpu")

    shutil.copytree(out / "export", again / "export")
    rebuild = [w for w in argv if "sqlite" not in w and w not in ("--storage", "--tracking-uri")]
    rebuild[rebuild.index("--out") + 1] = str(again)
    assert load("reproduce").main([*[w.format("continual") for w in rebuild], "--from-exports"]) == 0
    built = pd.read_csv(again / "summary.csv")
    assert set(built["scenario"]) == {"continual"} and (built["n_seeds"] == 1).all()
    assert built.loc[built["method"] == "ME+GD", "MU"].between(0, 1).all()
    assert (again / "summary.csv").read_bytes() == (out / "summary.csv").read_bytes()


@pytest.mark.parametrize("split, estimate", [("forget01", "15 min"), ("forget05", "36 min"), ("forget10", "1.1 h")])
def test_the_estimate_of_a_tofu_split_grows_with_its_task(shared_data, capsys, split, estimate):
    """On TOFU's files forget05's task is 5x forget01's (200 QA, not 40), forget10's 10x: at 100 s per forget01
    trial nine trials cost 900 s; forget05's 900 s x 2.41 = 2169 s as its committed runs measured, forget10's
    900 s x 4.2 = 3780 s as extrapolated from them (both checked against the exports in test_results.py)."""
    from experiment_scripts import load

    assert load("reproduce").main(["--preset", "tofu-cpu", "--data-dir", str(shared_data / "tofu"), "--scenario",
                                   "fictitious", "--splits", split, "--seeds", "1", "--seconds-per-trial", "100",
                                   "--dry-run"]) == 0
    assert f"estimate: {estimate} at an assumed 100 s per forget01 trial" in capsys.readouterr().out


@pytest.mark.parametrize("earlier, estimate", [("true", "1.2 h"), ("false", "1.0 h")])
def test_the_continual_estimate_counts_the_earlier_tasks_evaluation(shared_data, capsys, earlier, estimate):
    """tofu-cpu evaluates each continual task's earlier forget sets too (0.12 of a forget01 trial a set, measured):
    tasks 1-4 evaluate 0 + 1 + 2 + 3 = 6 of them, so a trial counts 4 + 0.72; nine at 100 s: 4248 s, not 3600 s."""
    from experiment_scripts import load

    assert load("reproduce").main(["--preset", "tofu-cpu", "--data-dir", str(shared_data / "tofu"), "--scenario",
                                   "continual", "--tasks", "1", "2", "3", "4", "--fix-ref-model", "no", "--seeds", "1",
                                   "--seconds-per-trial", "100", "--set", f"eval.earlier_tasks={earlier}",
                                   "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"estimate: {estimate} at an assumed 100 s per forget01 trial" in out
    assert ("each also evaluating the earlier tasks' forget sets" in out) == (earlier == "true")
