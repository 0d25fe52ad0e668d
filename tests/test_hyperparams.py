"""One declaration per hyper-parameter (study/methods/hyperparams.py): every list that used to restate it is
derived from it, and each derived use is pinned here to the table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from experiment_scripts import load
from study.reporting import analysis, sensitivity
from study import search
from study.config import MethodConfig, RunConfig, TrainConfig
from study.methods.hyperparams import HYPERPARAMS, SEARCHABLE_SETTINGS, SETTINGS, Param
from study.methods import FORGET_LOSSES, REGULARIZERS, Method

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_every_parameter_is_a_field_of_its_section_and_of_method():
    config_fields = {"train": {f.name for f in dataclasses.fields(TrainConfig)},
                     "method": {f.name for f in dataclasses.fields(MethodConfig)}}
    method_fields = {f.name for f in dataclasses.fields(Method)}
    for name, param in HYPERPARAMS.items():
        assert name in config_fields[param.section], f"{param.key} is not a field of the {param.section} config"
        if param.section == "method":
            assert name in method_fields, f"{name} is not a field of study.methods.Method"
    # The config forwards every Method setting by name: MethodConfig must have each of them.
    assert method_fields - {"forget_loss", "regularizer"} <= config_fields["method"]


def test_every_loss_parameter_is_declared_and_every_key_exists():
    for spec in [*FORGET_LOSSES.values(), *REGULARIZERS.values()]:
        assert set(spec.hyperparams) <= set(HYPERPARAMS), spec.name
        assert set(spec.ranges) <= set(spec.hyperparams), spec.name
    flat = RunConfig().flat()
    assert set(SEARCHABLE_SETTINGS) <= set(flat) and SETTINGS == {v: k for k, v in SEARCHABLE_SETTINGS.items()}
    assert SETTINGS["rmu_alpha"] == "method.rmu_alpha" and SETTINGS["lr"] == "train.lr"


def test_a_method_config_forwards_every_setting_to_its_method():
    config = MethodConfig(name="RMU", rmu_alpha=100.0, rmu_layer=3, rmu_steering_coeff=2.0, forget_coeff=0.5)
    method = config.method()
    assert (method.rmu_alpha, method.rmu_layer, method.rmu_steering_coeff, method.forget_coeff) == (100.0, 3, 2.0, 0.5)
    simnpo = MethodConfig(name="SimNPO+GD", beta=4.5, delta=0.5).method()
    assert (simnpo.beta, simnpo.delta, simnpo.gamma) == (4.5, 0.5, 0.0)


@pytest.mark.parametrize("name", list(HYPERPARAMS))
def test_a_sampled_value_lands_in_its_section(name):
    value = HYPERPARAMS[name].high if not HYPERPARAMS[name].integer else int(HYPERPARAMS[name].high)
    cfg = search.apply_params(RunConfig(), "RMU" if name.startswith("rmu_") else "SimNPO+GD", {name: value})
    assert cfg.flat()[SETTINGS[name]] == value
    # ... and a study that searches it does not compare it when resumed.
    assert SETTINGS[name] not in search.fixed_config(cfg, str(cfg.method.name), {name: HYPERPARAMS[name]})


def test_runs_frames_and_the_sensitivity_study_read_every_parameter():
    assert set(HYPERPARAMS) <= set(analysis.RUN_COLUMNS)
    assert sensitivity.PARAMS == tuple(HYPERPARAMS)
    record = analysis.runs_frame([{"run_id": "r", "method": "RMU", "rmu_alpha": 100.0, "status": "FINISHED",
                                   "kind": "trial", "model_utility": 0.3, "forget_efficacy": 0.5}])
    assert record["rmu_alpha"].item() == 100.0
    frame = analysis.sensitivity(record)
    assert set(frame["param"]) == {"rmu_alpha"}  # RMU's other parameters were not logged in this record


def test_set_fixes_rmus_parameters_instead_of_searching_them(capsys):
    """``--set method.rmu_alpha=100`` used to be overwritten by the sampled value: experiments/sweep.py's own
    list of searchable keys lacked RMU's three parameters."""
    sweep = load("sweep")
    assert sweep.main(["--method", "RMU", "--set", "method.rmu_alpha=100", "--set", "method.rmu_layer=3",
                       "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "fixed        method.rmu_alpha = 100 (given with --set: not searched)" in out
    assert "fixed        method.rmu_layer = 3 (given with --set: not searched)" in out
    space = next(line for line in out.splitlines() if line.startswith("space RMU"))
    assert "rmu_alpha" not in space and "rmu_layer" not in space and "rmu_steering_coeff" in space
    assert search.search_space("RMU", "fictitious", "tpe", fixed=["rmu_alpha"]).keys() == {
        "lr", "forget_coeff", "rmu_layer", "rmu_steering_coeff"}


@pytest.mark.parametrize("preset", ["default", "smoke"])
def test_the_presets_plans_did_not_move(preset, capsys, monkeypatch):
    """The default and smoke presets' --dry-run output, byte for byte as the code before this table existed
    printed it (tests/golden/, written by commit 6490361's sweep.py; since then two lines added, the new
    settings ``eval.earlier_tasks = False`` and ``eval.known_rows = ""``, which change no plan). A deliberate change rewrites the file:
    ``python experiments/sweep.py --preset P --dry-run > tests/golden/dry_run_P.txt``."""
    for name in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):  # an in-process run before may have set them
        monkeypatch.delenv(name, raising=False)
    sweep = load("sweep")
    assert sweep.main(["--preset", preset, "--dry-run"]) == 0
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert printed == (GOLDEN / f"dry_run_{preset}.txt").read_text()


def test_param_refuses_a_bad_section():
    with pytest.raises(ValueError, match="section must be train or method"):
        Param("x", 0.1, 1.0, section="eval")


SMOKE_TRIALS = [("fictitious", m) for m in ("GA+GD", "NPO+KL", "DPO+GD", "IDK+AP", "ME+GD", "SimNPO+GD", "RMU")] \
    + [("continual", "NPO+GD")]


def smoke_summaries() -> dict[str, list[dict[str, str]]]:
    """``"<scenario>/<method>" -> [every summary value of each task, as repr]`` of :data:`SMOKE_TRIALS`, one
    torch thread, the smoke target fine-tuned into ``$XDG_CACHE_HOME`` (set it to an empty folder)."""
    import torch

    from study import presets
    from study.trial import runner

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for scenario, method in SMOKE_TRIALS:
            sets = [f'data.scenario="{scenario}"'] + (["data.tasks=[1, 2]"] if scenario == "continual" else [])
            trial = runner.run_trial(presets.run_config("smoke", method, sets), device="cpu", progress=False)
            out[f"{scenario}/{method}"] = [{k: repr(float(v)) for k, v in sorted(t.summary.items())} for t in trial.tasks]
        return out
    finally:
        torch.set_num_threads(threads)


def write_smoke_golden() -> None:
    """Rewrite tests/golden/smoke_trials.json (a deliberate change of results): from the repository root,
    ``XDG_CACHE_HOME=$(mktemp -d) python -c 'import sys; sys.path[:0] = ["tests", "."]; import test_hyperparams as t;
    t.write_smoke_golden()'``."""
    (GOLDEN / "smoke_trials.json").write_text(json.dumps(smoke_summaries(), indent=1, sort_keys=True))


REL_TOL, ABS_TOL = 1e-3, 1e-3
"""How far a golden value may be from the one computed now: float32 on another CPU (other kernels, another
summation order) moved the smoke trials' values on 2026-12-06 by ~1e-7 relative, Min-K%++ (a z-score of
log-probabilities) by more: -6.4350 against -6.4342, 0.05025 against 0.05038 near zero; a refactor that
changes a result moves it by far more."""


@pytest.mark.slow
def test_seeded_smoke_trials_did_not_move(tmp_path, monkeypatch):
    """Every summary value of eight seeded smoke trials (seven losses on fictitious, NPO+GD over two continual
    tasks), as the code before the methods package and the scenario registry computed them
    (tests/golden/smoke_trials.json, written at commit 315b1bc by :func:`write_smoke_golden`). Refactors must
    not move results."""
    import math

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # fine-tune the smoke target here, as the golden run did
    expected = json.loads((GOLDEN / "smoke_trials.json").read_text())
    got = smoke_summaries()
    assert sorted(got) == sorted(expected)
    for case, tasks in expected.items():
        assert [sorted(t) for t in got[case]] == [sorted(t) for t in tasks], f"{case}: other summary keys"
        for task, (g, w) in enumerate(zip(got[case], tasks)):
            g, w = {k: float(v) for k, v in g.items()}, {k: float(v) for k, v in w.items()}
            moved = {k: (w[k], g[k]) for k in w if not (math.isnan(w[k]) and math.isnan(g[k]))
                     and not math.isclose(g[k], w[k], rel_tol=REL_TOL, abs_tol=ABS_TOL)}
            assert not moved, f"{case} task {task}: moved {moved}"
