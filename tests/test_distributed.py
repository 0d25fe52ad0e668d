"""Tests of study.training.zero and study.trial.distributed: DeepSpeed config filling, the entry point's configuration,
the fit that ``unlearn`` is given for ``train.deepspeed``, and (slow) a two-process ZeRO-3 run over gloo
that takes the same steps as one plain PyTorch process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from study.trial import distributed as D  # noqa: E402
from study.inputs import models
from study import presets
from study.trial import runner  # noqa: E402
from study.training import train as T  # noqa: E402
from study.training import zero as Z  # noqa: E402
from study.config import TrainConfig  # noqa: E402
from study.errors import StudyInputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train_cfg(**changes) -> TrainConfig:
    return TrainConfig(**{"lr": 2e-5, "batch_size": 4, "grad_accum": 3, "weight_decay": 0.05, **changes})


# --------------------------------------------------------------------------------------------------
# Config filling


def test_shipped_zero3_config_fills_completely():
    raw = Z.load_config(None)
    assert raw == json.loads((ROOT / "experiments/deepspeed/zero3.json").read_text())
    filled = Z.fill_config(raw, train_cfg(grad_accum=6), world_size=2, dtype=torch.bfloat16, hidden_size=64)
    assert Z.zero_stage(filled) == 3
    assert filled["train_micro_batch_size_per_gpu"] == 4
    # grad_accum counts the micro-batches of a step on all ranks: 6 over 2 ranks is 3 each, a batch of 24.
    assert filled["gradient_accumulation_steps"] == 3
    assert filled["train_batch_size"] == 4 * 6
    assert filled["bf16"]["enabled"] is True
    assert filled["gradient_clipping"] == 0
    assert filled["zero_allow_untested_optimizer"] is True  # a torch AdamW is passed in
    assert "auto" not in json.dumps(filled)
    assert raw["bf16"]["enabled"] == "auto"  # the input is not modified
    assert Z.fill_config(raw, train_cfg(), world_size=1, dtype=torch.float32)["bf16"]["enabled"] is False


def test_fill_config_sizes_buckets_and_optimizer_from_the_model_and_train_config():
    raw = {
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    }
    filled = Z.fill_config(raw, train_cfg(grad_accum=4), world_size=2, dtype=torch.float32, hidden_size=64)
    zero = filled["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"], zero["stage3_param_persistence_threshold"]) \
        == (64 * 64, int(0.9 * 64 * 64), 640)
    assert filled["optimizer"]["params"] == {"lr": 2e-5, "weight_decay": 0.05}
    assert "zero_allow_untested_optimizer" not in filled


def test_fill_config_refuses_what_it_cannot_honour():
    with pytest.raises(StudyInputError, match="train_batch_size=64.*train.batch_size 4, train.grad_accum 4, 2 processes.*use \"auto\""):
        Z.fill_config({"train_batch_size": 64}, train_cfg(grad_accum=4), world_size=2, dtype=torch.float32)
    # A world size that does not divide the global accumulation: one line naming the setting and a way out.
    with pytest.raises(StudyInputError, match=r"train.grad_accum 3 .* not divisible by the 2 processes: use a multiple of 2"):
        Z.fill_config({}, train_cfg(grad_accum=3), world_size=2, dtype=torch.float32)
    # A config that contradicts the run's precision or optimizer settings, instead of overriding them silently.
    with pytest.raises(StudyInputError, match=r"bf16.enabled=True, but the run gives False \(the model's precision, model.dtype\)"):
        Z.fill_config({"bf16": {"enabled": True}}, train_cfg(), world_size=1, dtype=torch.float32)
    with pytest.raises(StudyInputError, match=r"optimizer.params.lr=0.001, but the run gives 2e-05 \(train.lr\)"):
        Z.fill_config({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}, train_cfg(), world_size=1, dtype=torch.float32)
    assert Z.fill_config({"bf16": {"enabled": True}}, train_cfg(), world_size=1, dtype=torch.bfloat16)["bf16"]["enabled"]
    with pytest.raises(StudyInputError, match="scheduler"):
        Z.fill_config({"scheduler": {"type": "WarmupLR"}}, train_cfg(), world_size=1, dtype=torch.float32)
    with pytest.raises(StudyInputError, match="zero_optimization.sub_group_size"):
        Z.fill_config({"zero_optimization": {"sub_group_size": "auto"}}, train_cfg(), world_size=1, dtype=torch.float32)
    # Explicit values that agree are kept.
    same = Z.fill_config({"train_micro_batch_size_per_gpu": 4}, train_cfg(), world_size=1, dtype=torch.float32)
    assert same["train_micro_batch_size_per_gpu"] == 4


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(StudyInputError, match="not found"):
        Z.load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(StudyInputError, match="bad.json: not valid JSON"):
        Z.load_config(bad)
    assert Z.load_config("experiments/deepspeed/zero3.json") == Z.load_config(None)  # relative to the repository


def test_step_recorder_tags_tasks_by_the_restarting_step_counter():
    from study.training.train import StepEvent

    recorder = D.StepRecorder([3, 5])
    for step in (1, 2, 1, 2, 3):
        recorder.on_step(StepEvent(step, 3, 0.0, 1.0, {}, 0.1, 1.0, 0.0))
    assert [s["task"] for s in recorder.steps] == [3, 3, 5, 5, 5]


# --------------------------------------------------------------------------------------------------
# Which fit trains: train.deepspeed never falls back to plain PyTorch silently


def test_runner_fits_through_zero_when_train_deepspeed_is_set():
    assert runner.fit_for(train_cfg(deepspeed="experiments/deepspeed/zero3.json")) is Z.train_with_deepspeed
    assert runner.fit_for(train_cfg()) is T.fit_in_process


def test_unlearn_refuses_train_deepspeed_without_a_zero_fit():
    """``unlearn`` cannot import study.training.zero (that would close an import circle), so without
    ``fit=`` it trains in this process, and a ``train.deepspeed`` config is an error, not ignored."""
    from study.inputs.data import BuiltinSource
    from study.inputs.scenarios import load_scenario
    from study.methods import Method

    lm = models.load("tiny-llama", device="cpu")
    scenario = load_scenario(BuiltinSource(n_authors=4), "continual", "forget01", 1, ds_size=2)
    with pytest.raises(StudyInputError, match="train.deepspeed=.*fit=study.training.zero.train_with_deepspeed"):
        T.unlearn(lm.model, lm.tokenizer, lm.prompt, Method.parse("GA"), scenario,
                  train_cfg(deepspeed="experiments/deepspeed/zero3.json", max_length=64), "answer")


# --------------------------------------------------------------------------------------------------
# Two processes, ZeRO-3, gloo


COMMON = ["--preset", "smoke", "--method", "NPO+KL", "--set", 'model.target="tiny-llama"', "--set", "train.lr=1e-3",
          "--set", "train.epochs=3", "--set", "data.n_authors=4", "--set", "data.tasks=[1, 2]",
          "--set", 'data.scenario="continual"', "--set", 'model.dtype="float32"']
"""Continual NPO+KL on the random tiny Llama: a cached reference (NPO), a live one (KL), two engines in a row;
fp32 in both runs (``auto`` is fp32 under DeepSpeed on a CPU, bf16 in one process on a native-bf16 CPU)."""


@pytest.mark.slow
def test_zero3_on_two_processes_takes_the_steps_of_one_process(tmp_path):
    extensions = tmp_path / "torch_extensions"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu",
           "TORCH_EXTENSIONS_DIR": str(extensions), "PYTHONPATH": str(ROOT)}
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "study.trial.distributed", *COMMON, "--set", "train.batch_size=2", "--set", "train.grad_accum=2",
               "--train-only", "--no-progress", "--out", str(tmp_path / "out"), "--tracking-uri", tracking,
               "--keep-checkpoints", "none"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    written = json.loads((tmp_path / "out" / "history.json").read_text())
    assert written["world_size"] == 2 and written["deepspeed"]["zero_optimization"]["stage"] == 3
    two = written["steps"]
    assert not any(extensions.rglob("*.so")), "DeepSpeed compiled an extension on CPU"

    # Rank 0 logged the run to MLflow as a sweep's trial: every setting, train/* per step (both tasks on one axis).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    (logged,) = client.search_runs([client.get_experiment_by_name(D.EXPERIMENT).experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["study.world_size"] == "2"
    assert logged.data.params["train.grad_accum"] == "2" and logged.data.params["method.name"] == "NPO+KL"
    losses = [m.value for m in sorted(client.get_metric_history(logged.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert losses == pytest.approx([s["loss"] for s in two], rel=1e-6)

    # The same configuration in one plain PyTorch process: the same global batches (2 micro-batches of 2 per
    # step; under ZeRO-3 each rank took one of them).
    settings = COMMON[4:] + ["--set", "train.batch_size=2", "--set", "train.grad_accum=2"]
    cfg = presets.run_config("smoke", "NPO+KL", settings[1::2])
    recorder = D.StepRecorder([1, 2])
    cpu = torch.device("cpu")
    lm = runner.load_for_training(runner.target_model(cfg, runner.scenario_data(cfg, 1), cpu).path, cfg, cpu)
    for _ in runner.unlearn_tasks(cfg, lm, runner.TrialHooks(callbacks=[recorder]), progress=False):
        pass
    one = recorder.steps

    assert [(s["task"], s["step"]) for s in two] == [(s["task"], s["step"]) for s in one]
    assert len(one) == 2 * 7  # floor(3 epochs * 10 items / 4) per task
    for a, b in zip(one, two):
        where = f"task {a['task']} step {a['step']}"
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12), where
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), where
        for key in a["parts"]:
            assert b["parts"][key] == pytest.approx(a["parts"][key], rel=1e-4, abs=1e-6), (where, key)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), where
    worst = max(abs(b["loss"] - a["loss"]) / abs(a["loss"]) for a, b in zip(one, two))
    print(f"ZeRO-3 x2 vs one process: {len(one)} steps, largest relative loss difference {worst:.2e}")
    # The losses moved: the comparison is not between two constant sequences.
    assert min(s["loss"] for s in one) < 0.9 * one[0]["loss"]


@pytest.mark.slow
def test_zero3_in_one_process_without_torchrun(tmp_path):
    """``python -m study.trial.distributed`` with no launcher: a one-process group, ZeRO-3 still on (DeepSpeed's
    engine asserts a LOCAL_RANK that only launchers set; the one-process group sets it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
                "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")})
    command = [sys.executable, "-m", "study.trial.distributed", *COMMON[:4], "--set", 'model.target="tiny-llama"',
               "--set", "data.n_authors=4", "--set", "train.epochs=1", "--train-only", "--no-progress",
               "--out", str(tmp_path / "out"), "--tracking-uri", "none"]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    written = json.loads((tmp_path / "out" / "history.json").read_text())
    assert written["world_size"] == 1 and written["deepspeed"]["zero_optimization"]["stage"] == 3
    assert len(written["steps"]) == 2  # floor(1 epoch * 10 items / batch 4)
    assert all(math.isfinite(s["loss"]) for s in written["steps"])


@pytest.mark.slow
def test_zero3_entry_ends_on_sigterm_like_ctrl_c(tmp_path):
    """Issue 32: SIGTERM (Slurm, torchrun, ``timeout``) to ``python -m study.trial.distributed`` mid-training ends it
    as Ctrl-C does: one message naming SIGTERM, exit 143 (128 + 15), no traceback."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
                "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions")})
    command = [sys.executable, "-m", "study.trial.distributed", *COMMON[:4], "--set", 'model.target="tiny-llama"',
               "--set", "data.n_authors=4", "--set", "train.epochs=400", "--train-only", "--out", str(tmp_path / "out"),
               "--tracking-uri", "none"]
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + 600
        while "%|" not in stderr.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the training progress bar: the entry is inside its SIGTERM handler
        assert process.poll() is None, stderr.read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    text = stderr.read_text()
    assert code == 143, text[-3000:]
    assert "terminated (SIGTERM): stopped before the end" in text and "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "out" / "history.json").exists()  # an incomplete run writes no result


# --------------------------------------------------------------------------------------------------
# experiments/gpu_check.py


def test_gpu_check_refuses_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0], run.stderr
