"""Tests of study.search's pieces that need no trial: the settings a study records and refuses to
change, samplers, and search spaces."""

from __future__ import annotations

import optuna
import pytest

from study.config import RunConfig
from study.errors import StudyInputError
from study.search import ADDED_SETTINGS, StudySettings, check_fixed_config, fixed_config, make_sampler, search_space


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
