"""The sweep command's plan: presets, --dry-run, and bad options (fast: nothing is trained)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_of(out: str) -> dict[str, str]:
    lines = out.split("settings:\n", 1)[1].splitlines()
    return dict(line.strip().split(" = ", 1) for line in lines if " = " in line)


def test_help_explains_every_option(sweep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--preset", "--scenario", "--method", "--split", "--tasks", "--model", "--data-dir", "--n-trials",
                   "--sampler", "--storage", "--tracking-uri", "--study-name", "--seed", "--dry-run", "--keep-checkpoints"):
        assert option in out
    for preset in ("smoke", "default", "paper-fictitious", "paper-continual", "paper-real-world"):
        assert preset in out


def test_paper_fictitious_dry_run_prints_reference_settings(sweep, capsys, tmp_path):
    assert sweep.main(["--preset", "paper-fictitious", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    out = capsys.readouterr().out
    s = settings_of(out)
    # docs/science.md §4: AdamW wd 0.01, lr 1e-5, 4 per device x 4 accumulation x 2 GPUs = 32 (grad_accum counts
    # the micro-batches on all GPUs together: 4 x 8 = 32 on any number of GPUs dividing 8), 5 epochs, seed 1001.
    assert (s["train.lr"], s["train.epochs"], s["train.batch_size"], s["train.grad_accum"]) == ("1e-05", "5", "4", "8")
    assert (s["train.weight_decay"], s["train.seed"], s["train.max_length"]) == ("0.01", "1001", "500")
    assert s["model.name"] == "llama2-7b" and s["train.deepspeed"] == "experiments/deepspeed/zero3.json"
    assert "space ME+GD    lr in {1e-05}, forget_coeff in {0.1}" in out
    assert "space NPO+GD   lr in {1e-05}, forget_coeff in {1}, beta in {0.1}" in out
    assert "space IDK+AP   lr in {1e-05}, forget_coeff in {1}, beta in {0.1}" in out
    assert not (tmp_path / "m.db").exists()


def test_paper_continual_and_real_world_dry_runs(sweep, capsys, shared_data):
    assert sweep.main(["--preset", "paper-continual", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert settings_of(out)["data.tasks"] == "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
    assert "space ME+GD    lr in {1e-05}, forget_coeff in {1}" in out
    assert sweep.main(["--preset", "paper-real-world", "--dry-run", "--data-dir", str(shared_data / "real_world")]) == 0
    out = capsys.readouterr().out
    assert settings_of(out)["train.max_length"] == "300" and settings_of(out)["model.name"] == "llama3-8b"
    assert "space ME+GD    lr in {5e-06}, forget_coeff in {0.5}" in out
    assert "space GA+GD    lr in {2e-06, 5e-06, 1e-05}, forget_coeff in {1}, epochs in {3, 5}" in out


@pytest.mark.parametrize("argv,message", [
    (["--method", "XX+GD"], "unknown forget loss 'XX'"),
    (["--set", "train.lr=-1"], "lr must be a positive finite number"),
    (["--split", "forget02"], "invalid choice"),
    (["--data-dir", "/nonexistent/dir"], "data directory not found"),
    (["--device", "gpu"], "device 'gpu' is not a device"),
    (["--preset", "nope.toml"], "preset 'nope.toml' not found"),
    (["--set", "train.nonsense=1"], "unknown setting train.nonsense"),
    (["--objective", "pareto", "--prune"], "pruning needs a single objective"),
])
def test_bad_options_end_in_one_line(sweep, capsys, tmp_path, argv, message):
    db = tmp_path / "mlflow.db"
    with pytest.raises(SystemExit) if "invalid choice" in message else _nothing():
        code = sweep.main([*argv, "--dry-run", "--tracking-uri", f"sqlite:///{db}"])
        assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not db.exists()


def test_unreachable_storage_is_one_line_and_writes_nothing(sweep, capsys, tmp_path):
    db = tmp_path / "mlflow.db"
    code = sweep.main(["--preset", "smoke", "--storage", "postgresql+psycopg2://user:secret@127.0.0.1:1/optuna",
                       "--tracking-uri", f"sqlite:///{db}"])
    captured = capsys.readouterr()
    assert code == 2 and "Optuna storage postgresql+psycopg2://user:***@127.0.0.1:1/optuna is unreachable" in captured.err
    assert "secret" not in captured.out + captured.err
    assert not db.exists()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_preset_file_is_accepted(sweep, capsys, tmp_path):
    """``--preset FILE.toml``: the file's settings, the study named after the file."""
    preset = tmp_path / "my.toml"
    preset.write_text('description = "mine"\n[study]\nn_trials = 7\n[config.model]\nname = "tiny-llama"\n')
    assert sweep.main(["--preset", str(preset), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study        my-fictitious-forget01-tiny-llama ") and "7 trial(s) per method" in out


def test_every_preset_dry_runs_without_data_or_a_gpu_and_says_what_a_run_needs(sweep, capsys, tmp_path, monkeypatch):
    """On a machine without CUDA (forced here) and without the real-world data, every preset's dry run
    exits 0 and names what a real run needs; the run itself stops on the same need in one line."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    db = tmp_path / "m.db"
    for preset in sorted(p.stem for p in (ROOT / "experiments" / "presets").glob("*.toml")):
        assert sweep.main(["--preset", preset, "--device", "cuda", "--dry-run", "--tracking-uri", f"sqlite:///{db}"]) == 0, preset
        out = capsys.readouterr().out
        needs = [line for line in out.splitlines() if line.startswith("a real run needs: ")]
        assert "a real run needs: device 'cuda': CUDA is not available on this machine; valid: cpu" in needs, preset
        if preset.startswith("paper-"):  # DeepSpeed ZeRO-3 on GPUs
            assert any("CUDA GPUs (DeepSpeed ZeRO-3)" in line for line in needs), preset
        if preset == "paper-real-world":
            assert any("needs data: pass --data-dir" in line for line in needs)
    assert sweep.main(["--preset", "paper-real-world", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "needs data: pass --data-dir" in capsys.readouterr().err
    assert sweep.main(["--preset", "smoke", "--device", "cuda", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not db.exists()


def test_reproduce_plans_the_papers_settings_from_a_laptop(capsys, monkeypatch):
    """``reproduce.py --preset paper-fictitious --device cuda --dry-run`` on a machine without CUDA: the
    paper's settings (docs/science.md §1, §4): continual on forget01 tasks 1-10, real-world on
    Llama-3-8B-Instruct, each scenario on its own paper preset; what a real run needs is listed."""
    import torch

    from experiment_scripts import load
    from study.inputs import models
    from study import presets

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(ROOT)
    reproduce = load("reproduce")
    args = reproduce.build_parser().parse_args(["--preset", "paper-fictitious", "--device", "cuda", "--dry-run"])
    units = {(u.scenario, u.setting): u for u in reproduce.plan_units(args)}
    continual = [u for (sc, _), u in units.items() if sc == "continual"]
    assert continual and all(list(u.argv[u.argv.index("--tasks") + 1:u.argv.index("--tasks") + 11]) == [str(k) for k in range(1, 11)]
                             for u in continual)
    (real,) = [u for (sc, _), u in units.items() if sc == "real-world"]
    preset = real.argv[real.argv.index("--preset") + 1]
    assert models.resolve(presets.run_config(preset).model.name).weights == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert reproduce.main(["--preset", "paper-fictitious", "--device", "cuda", "--dry-run", "--seeds", "1001"]) == 0
    out = capsys.readouterr().out
    assert "continual tasks1-10" in out and "checked:" in out
    assert "a real run needs: device 'cuda': CUDA is not available" in out and "needs data: pass --data-dir" in out
