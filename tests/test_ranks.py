"""Studies whose trials run over the processes ``torchrun`` starts (``study.trial.ranks``): rank 0 owns the
Optuna study and the MLflow runs, every rank trains each trial with DeepSpeed ZeRO-3 (gloo on this CPU).

The slow tests run ``torchrun --nproc_per_node 2 experiments/sweep.py`` for real: a two-trial study whose
trials take the steps of the same study in one plain process; bad input (ranks that disagree, a world size
that does not divide the accumulation) as one line on rank 0 before anything is written; a follower killed
mid-trial leaving nothing RUNNING. Two such workers sharing a study over PostgreSQL and an MLflow server
are in tests/test_scaleout.py.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiment_scripts import load
from study.config import RunConfig
from study.errors import StudyInputError
from study.trial import ranks

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
ZERO3 = ["--set", 'train.deepspeed="experiments/deepspeed/zero3.json"']
STUDY = ["--preset", "smoke", "--method", "NPO+KL", "--scenario", "continual", "--tasks", "1", "2", "--n-trials", "2",
         "--no-progress", "--system-metrics", "0", "--set", "data.n_authors=4", "--set", "train.batch_size=2",
         "--set", "train.grad_accum=2", "--set", 'model.dtype="float32"']
"""Continual NPO+KL (a cached reference for NPO, a live one for KL, two engines per trial), 2 micro-batches of 2
per step: under ZeRO-3 on two ranks each takes one. fp32 in both runs (``auto`` is fp32 under DeepSpeed on a
CPU, bf16 in one process on a native-bf16 CPU)."""


# --------------------------------------------------------------------------------------------------
# Without processes


def test_ranks_differences_are_named_by_their_first_setting():
    ours = {"config": {"train": {"lr": 1e-4, "epochs": 2}}, "study": {"n_trials": 2}}
    theirs = {"config": {"train": {"lr": 2e-3, "epochs": 2}}, "study": {"n_trials": 3}}
    assert ranks._first_difference(ours, theirs) == "config.train.lr: 0.0001 on rank 0, 0.002 there"


def test_sweep_refuses_what_cannot_run_over_several_processes():
    sweep = load("sweep")
    cfg = RunConfig()
    with pytest.raises(StudyInputError, match=r"torchrun started 2 processes.*set train.deepspeed"):
        sweep.check_inputs(cfg, "cpu", None, 2)
    zero = cfg.replace(train={"deepspeed": "experiments/deepspeed/zero3.json"})
    with pytest.raises(StudyInputError, match=r"per-epoch evaluation .* runs in one process"):
        sweep.check_inputs(zero.replace(eval={"per_epoch": True}), "cpu", None, 2)
    with pytest.raises(StudyInputError, match=r"train.grad_accum 3 .* not divisible by the 2 processes"):
        sweep.check_inputs(zero.replace(train={"grad_accum": 3}), "cpu", None, 2)


def test_a_leader_refuses_a_trial_without_deepspeed():
    class Silent:
        def send(self, message):
            raise AssertionError("nothing may be sent for a trial that cannot run")

    with pytest.raises(StudyInputError, match="set train.deepspeed"):
        with ranks.Leader(Silent()).trial(RunConfig(), "target"):
            pass


# --------------------------------------------------------------------------------------------------
# torchrun, two processes over gloo


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT),
            "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _torchrun(tmp_path: Path, script: Path, *args: str, logs: str = "logs") -> list[str]:
    """The command: 2 processes on this machine, each rank's output in ``<tmp_path>/<logs>/.../<rank>/``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "--log-dir", str(tmp_path / logs), "--redirects", "3", str(script), *args]


def _rank_output(tmp_path: Path, rank: int, stream: str, logs: str = "logs") -> str:
    files = sorted((tmp_path / logs).rglob(f"{rank}/{stream}.log"))
    return "".join(f.read_text() for f in files)


def _stores(tmp_path: Path, name: str) -> list[str]:
    return ["--study-name", name, "--storage", f"sqlite:///{tmp_path}/optuna.db",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "ranks"]


def _trial_runs(tmp_path: Path, study: str) -> dict[int, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("ranks").experiment_id
    runs = client.search_runs([experiment], f"tags.`study.kind` = 'trial' and tags.`study.study_name` = '{study}'")
    return {int(r.data.tags["study.trial_number"]): r for r in runs}


def _losses(tmp_path: Path, run) -> list[float]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run.info.run_id, "train/loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.mark.slow
def test_a_torchrun_study_takes_the_steps_of_the_same_study_in_one_process(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from conftest import run_sweep

    command = _torchrun(tmp_path, SWEEP, *STUDY, *ZERO3, *_stores(tmp_path, "zero"))
    done = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=1500)
    rank0 = _rank_output(tmp_path, 0, "stdout") + _rank_output(tmp_path, 0, "stderr")
    assert done.returncode == 0, rank0[-4000:] + _rank_output(tmp_path, 1, "stderr")[-3000:] + done.stderr[-2000:]
    assert "trial 1: MU" in rank0 and "trial " not in _rank_output(tmp_path, 1, "stdout")  # rank 0 reports

    # Both stores agree: two COMPLETE trials, each with a FINISHED run holding its values and per-item tables.
    study = optuna.load_study(study_name="zero/NPO+KL", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    zero = _trial_runs(tmp_path, "zero/NPO+KL")
    assert sorted(zero) == [0, 1]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for trial in study.trials:
        run = zero[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"] and run.info.status == "FINISHED"
        assert run.data.metrics["model_utility"] == pytest.approx(trial.values[0])
        assert run.data.params["train.deepspeed"] == "experiments/deepspeed/zero3.json"
        assert {a.path for a in client.list_artifacts(run.info.run_id, "eval")} >= {"eval/items_task1.csv", "eval/items_task2.csv"}

    # The same study in one plain PyTorch process: the same sampled settings, the same steps.
    code, out, err = run_sweep(tmp_path, *STUDY[2:], "--study-name", "one", experiment="ranks")
    assert code == 0, out[-2000:] + err[-3000:]
    one = _trial_runs(tmp_path, "one/NPO+KL")
    for number in (0, 1):
        a, b = one[number], zero[number]
        sampled = {k: v for k, v in a.data.params.items() if k.startswith("sampled.")}
        assert sampled and sampled == {k: v for k, v in b.data.params.items() if k.startswith("sampled.")}
        expected, got = _losses(tmp_path, a), _losses(tmp_path, b)
        assert len(expected) == len(got) > 2  # both tasks' steps
        assert got == pytest.approx(expected, rel=1e-5), f"trial {number}"
        assert max(expected) - min(expected) > 1e-3 * abs(expected[0])  # the losses moved: not two constant sequences
        # Evaluation ran on rank 0 as in one process, on (up to float rounding) the same model.
        assert b.data.metrics["forget/probability"] == pytest.approx(a.data.metrics["forget/probability"], rel=1e-3)


RANK_ARGV = """
import os, sys
sys.path.insert(0, {tests!r})
from experiment_scripts import load
argv = sys.argv[1:] + (["--set", "train.lr=0.002"] if os.environ["RANK"] == "1" else [])
sys.exit(load("sweep").main(argv))
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["ranks disagree", "accumulation"])
def test_bad_input_under_torchrun_is_one_line_on_rank_0_before_anything_is_written(tmp_path, case):
    if case == "ranks disagree":  # rank 1 was started with another learning rate
        script = tmp_path / "rank_argv.py"
        script.write_text(RANK_ARGV.format(tests=str(ROOT / "tests")))
        args, expected = [*STUDY, *ZERO3], "error: rank 1 has other settings than rank 0 (config.train.lr: 0.0003 on rank 0, 0.002 there)"
    else:
        script, args = SWEEP, [*STUDY, *ZERO3, "--set", "train.grad_accum=3"]
        expected = "error: train.grad_accum 3 (micro-batches per optimizer step, all processes together) is not divisible by the 2 processes"
    done = subprocess.run(_torchrun(tmp_path, script, *args, *_stores(tmp_path, "bad")), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    lines = _rank_output(tmp_path, 0, "stderr").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert _rank_output(tmp_path, 1, "stderr").strip() == ""
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()


ENDING = """
import atexit, os, sys
from pathlib import Path
from study.trial import ranks

folder, rank = Path(sys.argv[1]), os.environ["RANK"]
atexit.register(lambda: (folder / f"atexit-{rank}").write_text("ran"))
print(f"rank {rank} unflushed", end="")  # its stdout is a file under torchrun: block-buffered

def lead(leader):
    print("summary line, no newline", end="")
    return 0

ranks.run({}, None, 60, lead)
raise SystemExit("ranks.run returned")
"""


@pytest.mark.slow
def test_a_command_under_torchrun_ends_its_process_with_its_output_and_exit_handlers(tmp_path):
    """``ranks.run`` ends each rank's process itself (``os._exit``, skipping the interpreter's teardown, where CI
    once saw a finished rank 0 abort): what the ranks printed without a newline still reaches their logs,
    every ``atexit`` handler ran (MLflow flushes its asynchronous logging in one), and the status is the command's."""
    script = tmp_path / "ending.py"
    script.write_text(ENDING)
    done = subprocess.run(_torchrun(tmp_path, script, str(tmp_path)), cwd=ROOT, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _rank_output(tmp_path, 0, "stdout") == "rank 0 unflushedsummary line, no newline"
    assert _rank_output(tmp_path, 1, "stdout") == "rank 1 unflushed"
    assert sorted(f.name for f in tmp_path.glob("atexit-*")) == ["atexit-0", "atexit-1"]
    assert "ranks.run returned" not in _rank_output(tmp_path, 0, "stderr") + _rank_output(tmp_path, 1, "stderr")


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with ``RANK=rank`` under ``parent`` (its agent)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker's pid in /proc (Linux)")
@pytest.mark.parametrize("stop", ["follower killed", "job terminated"])
def test_a_trial_stopped_mid_training_leaves_nothing_running(tmp_path, stop):
    """``follower killed``: rank 1 gets SIGKILL (OOM killer, a lost GPU); rank 0's collective fails at once and
    the trial ends FAILED with gloo's reason. ``job terminated``: torchrun itself gets SIGTERM (Slurm at its time
    limit, ``scancel``) and passes it on: the trial ends KILLED. Either way no run or trial is left RUNNING."""
    import optuna
    from optuna.trial import TrialState

    args = [*STUDY, *ZERO3, "--set", "train.epochs=400", "--n-trials", "1", "--collective-timeout", "120",
            *_stores(tmp_path, "killed")]
    process = subprocess.Popen(_torchrun(tmp_path, SWEEP, *args), cwd=ROOT, env=_env(tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, losses = time.monotonic() + 900, 0
    while time.monotonic() < deadline and process.poll() is None and losses < 3:
        time.sleep(1)
        try:
            with sqlite3.connect(tmp_path / "mlflow.db") as db:
                losses = db.execute("select count(*) from metrics where key = 'train/loss'").fetchone()[0]
        except sqlite3.Error:
            pass  # not created yet
    assert process.poll() is None and losses >= 3, _rank_output(tmp_path, 0, "stderr")[-3000:]
    if stop == "follower killed":
        follower = _rank_pid(process.pid, 1)
        assert follower is not None
        os.kill(follower, signal.SIGKILL)  # mid-training: rank 0 is inside a collective with it
    else:
        process.send_signal(signal.SIGTERM)
    process.communicate(timeout=600)
    assert process.returncode != 0

    study = optuna.load_study(study_name="killed/NPO+KL", storage=f"sqlite:///{tmp_path}/optuna.db")
    (trial,) = study.trials
    runs = _trial_runs(tmp_path, "killed/NPO+KL")
    assert trial.state == TrialState.FAIL, trial.state
    # Whichever reaches rank 0 first ends the trial: the broken connection (FAILED, gloo's reason) or torchrun's
    # SIGTERM (KILLED); rank 0 inside a collective sees the connection first.
    reason = runs[0].data.tags.get("study.failure_reason", "")
    status = runs[0].info.status
    assert (status == "FAILED" and "Connection closed by peer" in reason) or (status == "KILLED" and "SIGTERM" in reason), \
        (status, reason[:500])
    print(f"{stop}: trial {trial.state.name}, run {status}: {reason[:120]}")
    study_runs = [r for r in _all_runs(tmp_path) if r.info.status == "RUNNING"]
    assert not study_runs, [(r.info.run_name, r.info.status) for r in study_runs]


def _all_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client.search_runs([client.get_experiment_by_name("ranks").experiment_id])
