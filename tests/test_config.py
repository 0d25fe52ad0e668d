"""Presets (experiments/presets/*.toml) are diffs from study/config.py's defaults: each key differs from
its default, and each preset resolves (``sweep.py --preset P --dry-run``) to the stated configuration."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from study.config import RunConfig
from study.paper import PAPER_METHODS

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "experiments" / "presets"

_PAPER_GPU = {"train.deepspeed": "experiments/deepspeed/zero3.json", "train.grad_accum": 8, "finetune.retain_model": False,
              "eval.batch_size": 30, "eval.embedder": "sentence-transformers/paraphrase-MiniLM-L6-v2",
              "eval.nli": "sileod/deberta-v3-base-tasksource-nli", "method.name": "GA+GD"}
# preset -> (the resolved settings that differ from RunConfig(), methods, sampler, trials per method, space)
EXPECTED: dict[str, tuple[dict, list[str], str, int, dict]] = {
    "default": ({"data.n_authors": 12, "data.ds_size": 20, "train.lr": 1e-4, "train.grad_accum": 1,
                 "train.max_length": 64, "finetune.lr": 2e-4, "finetune.epochs": 4, "finetune.grad_accum": 1,
                 "finetune.max_length": 64, "eval.batch_size": 16},
                ["ME+GD"], "tpe", 3, {"lr": [5e-5, 2e-4]}),
    "smoke": ({"model.name": "tiny-llama", "data.n_authors": 6, "data.ds_size": 4, "train.lr": 3e-4, "train.epochs": 2,
               "train.grad_accum": 1, "train.max_length": 64, "finetune.lr": 3e-3, "finetune.epochs": 2,
               "finetune.batch_size": 8, "finetune.grad_accum": 1, "finetune.max_length": 64, "eval.batch_size": 8,
               "eval.max_length": 80},
              ["ME+GD"], "tpe", 2, {"lr": [1e-4, 1e-3]}),
    "paper-fictitious": ({"model.name": "llama2-7b", "data.source": "hub", **_PAPER_GPU},
                         list(PAPER_METHODS), "paper", 1, {}),
    "paper-continual": ({"model.name": "llama2-7b", "data.source": "hub", "data.scenario": "continual",
                         "data.tasks": list(range(1, 11)), **_PAPER_GPU},
                        list(PAPER_METHODS), "paper", 1, {}),
    "paper-real-world": ({"model.name": "llama3-8b", "data.source": "<data-dir>", "data.scenario": "real-world",
                          "data.tasks": [], "train.max_length": 300, **_PAPER_GPU},
                         list(PAPER_METHODS), "paper", 6, {}),
    "tofu-cpu": ({"data.source": "<data-dir>", "data.retain_authors": 8, "data.ds_size": 40, "train.lr": 1e-4,
                  "train.grad_accum": 1, "train.max_length": 144, "finetune.lr": 2e-4, "finetune.epochs": 8,
                  "finetune.grad_accum": 1, "finetune.max_length": 144, "eval.batch_size": 16, "eval.earlier_tasks": True,
                  "eval.known_rows": "experiments/known/smollm2-135m-tofu.json", "method.name": "GA+GD"},
                 list(PAPER_METHODS), "paper", 1, {}),
}
DATA_DIRS = {"paper-real-world": "real_world", "tofu-cpu": "tofu"}
"""Presets that read the shared data (``--data-dir``): the folder each one is given."""


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_for_config", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_preset_is_stated():
    assert sorted(p.stem for p in PRESETS.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_states_only_what_differs_from_the_defaults(name):
    defaults = RunConfig()
    preset = tomllib.loads((PRESETS / f"{name}.toml").read_text())
    same = [f"{section}.{key}" for section, values in preset.get("config", {}).items()
            for key, value in values.items() if getattr(getattr(defaults, section), key) == value]
    assert not same, f"{name}.toml repeats defaults: {same}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_resolves_to_the_stated_configuration(name, sweep, request, monkeypatch):
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["--preset", name, "--dry-run"]
    differs, methods, sampler, n_trials, space = EXPECTED[name]
    if name in DATA_DIRS:
        data_dir = request.getfixturevalue("shared_data") / DATA_DIRS[name]
        argv += ["--data-dir", str(data_dir)]
        differs = {**differs, "data.source": str(data_dir.resolve())}
    cfg, settings, _ = sweep.plan(sweep.build_parser().parse_args(argv))
    defaults = RunConfig().flat()
    assert {k: v for k, v in cfg.flat().items() if v != defaults[k]} == differs
    assert (settings.methods, settings.sampler, settings.n_trials, settings.space) == (methods, sampler, n_trials, space)
    assert (settings.storage, settings.tracking_uri, settings.experiment) == \
        ("sqlite:///mlruns/optuna.db", "sqlite:///mlruns/mlflow.db", "unlearning-study")


# --------------------------------------------------------------------------------------------------
# study.presets: the one loader (sweep.py, study.trial.distributed, reproduce.py and the benchmarks use it)


def test_run_config_from_preset_method_and_overrides():
    from study import presets

    cfg = presets.run_config("smoke", "NPO+KL", ['train.lr=2e-3', 'data.tasks=[1, 2]', 'data.scenario="continual"',
                                                 "model.target=tiny-llama"])  # bare text is a string
    assert cfg.method.name == "NPO+KL"
    assert cfg.train.lr == 2e-3 and cfg.data.tasks == [1, 2] and cfg.model.target == "tiny-llama"
    assert cfg.model.name == "tiny-llama" and cfg.train.epochs == 2  # from the preset
    assert presets.run_config(PRESETS / "smoke.toml") == presets.run_config("smoke")  # a path works too


@pytest.mark.parametrize(("call", "message"), [
    (lambda p: p.run_config("no-such-preset"), "presets: default, paper-continual, .*smoke, tofu-cpu, or a .toml path"),
    (lambda p: p.run_config("smoke", settings=["lr=1"]), "--set 'lr=1': expected SECTION.FIELD=VALUE"),
    (lambda p: p.run_config("smoke", settings=["train.lr"]), "expected SECTION.FIELD=VALUE"),
    (lambda p: p.run_config("smoke", settings=["train.batch_size=2.5"]), "train.batch_size must be of type int, got 2.5"),
    (lambda p: p.run_config("smoke", settings=["train.no_such=1"]), "unknown setting train.no_such; valid: batch_size, deepspeed, epochs"),
])
def test_bad_presets_and_settings_are_one_clear_error(call, message):
    from study import presets
    from study.errors import StudyInputError

    with pytest.raises(StudyInputError, match=message):
        call(presets)


def test_sweep_and_the_loader_resolve_a_preset_alike(sweep):
    """sweep.py's plan (its options on top) and ``presets.run_config`` give the same configuration for
    the same preset, method and overrides."""
    from study import presets

    sets = ["train.lr=2e-4", "eval.batch_size=4"]
    argv = ["--preset", "smoke", "--method", "GA+KL", *[w for s in sets for w in ("--set", s)]]
    cfg, settings, _ = sweep.plan(sweep.build_parser().parse_args(argv))
    assert cfg == presets.run_config("smoke", "GA+KL", sets)
    assert settings.fixed == ["lr"]  # a searched hyper-parameter given with --set is not searched
