"""Reliability, end to end on the smoke preset (`experiments/sweep.py` in subprocesses, sqlite stores):

- a worker killed with SIGKILL mid-trial: the heartbeat fails its trial, the resumed study ends its MLflow
  run FAILED, and re-running the command completes the requested trials;
- Ctrl-C (SIGINT) mid-trial: the run ends KILLED, the trial FAIL, exit 130 with how to resume;
- a loss that turns inf: the trial fails with the reason in Optuna and MLflow, the next trial runs, and
  a study that keeps diverging stops after --max-failures;
- the keep policy (best / all / none) and the space it will use, printed before the study starts;
- safety: safetensors only, no remote code unless asked, loopback servers, no token in what is logged;
- reproducibility: the same seed in two stores gives identical metrics; runs record versions.

One store serves the crash, interrupt, divergence and reproducibility studies (the target model is
evaluated once per store), so the module costs a few smoke runs; those tests are marked slow. The
study loop's rules (waiting for a dead worker's trial, failure limits, one study run per study) are
also tested in-process with trials that do no real work.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
EXPERIMENT = "reliability"
TOKEN = "hf_REL1ABILITYt0kenNOTreal"


# --------------------------------------------------------------------------------------------------
# helpers


def _urls(store: Path) -> tuple[str, str]:
    return f"sqlite:///{store}/optuna.db", f"sqlite:///{store}/mlflow.db"


def _command(store: Path, study: str, *args: str) -> list[str]:
    storage, tracking = _urls(store)
    return [sys.executable, str(SWEEP), "--preset", "smoke", "--no-progress", "--study-name", study, "--storage", storage,
            "--tracking-uri", tracking, "--experiment", EXPERIMENT, *args]


def _env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


class Worker:
    """``sweep.py`` in a subprocess; stdout and stderr in files (no pipe to fill up)."""

    def __init__(self, store: Path, study: str, *args: str, env: dict | None = None, tag: str = "run"):
        self.out = store / f"{study}-{tag}.out"
        self.err = store / f"{study}-{tag}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            # SIGINT back to its default (a shell may start background jobs with it ignored).
            self.proc = subprocess.Popen(_command(store, study, *args), stdout=out, stderr=err, env=env or _env(),
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def wait(self, timeout: float = 1200) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def tail(self) -> str:
        return f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-5000:]}"


def _init(store: Path) -> None:
    """Create both stores before any worker (two first creations at once race)."""
    from experiment_scripts import load  # tests/experiment_scripts.py: experiments/services.py by its path

    load("services").init_stores(*_urls(store), EXPERIMENT)


def _storage(store: Path):
    import optuna

    return optuna.storages.RDBStorage(_urls(store)[0])


def _client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(_urls(store)[1])


def _study(store: Path, study: str):
    import optuna

    return optuna.load_study(study_name=f"{study}/ME+GD", storage=_storage(store))


def _wait_for_running_trial(store: Path, study: str, worker: Worker, timeout: float = 900):
    """The first RUNNING trial of ``study`` whose MLflow run exists (the trial is under way)."""
    import optuna
    from optuna.trial import TrialState

    storage = _storage(store)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"worker ended early ({worker.proc.returncode})\n{worker.tail()}"
        try:
            trials = optuna.load_study(study_name=f"{study}/ME+GD", storage=storage).get_trials(deepcopy=False)
        except KeyError:  # the study does not exist yet
            trials = []
        for trial in trials:
            if trial.state == TrialState.RUNNING and trial.user_attrs.get("mlflow_run_id"):
                return trial
        time.sleep(0.5)
    raise AssertionError(f"no running trial after {timeout} s\n{worker.tail()}")


def _trial_runs(store: Path, study: str) -> list:
    client = _client(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.`study.kind` = 'trial' and tags.`study.study_name` = '{study}/ME+GD'",
                              order_by=["attributes.start_time ASC"])


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifact_files(client, run_id, item.path) if item.is_dir else [item.path])
    return out


def _line_before_study_starts(stdout: str, prefix: str) -> str:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"study \S+: \d+/\d+ trials finished", line))
    matches = [line for line in lines[:start] if line.startswith(prefix)]
    assert matches, stdout[:3000]
    return matches[0]


# --------------------------------------------------------------------------------------------------
# one store for the crash, interrupt and divergence studies


@pytest.fixture(scope="module")
def second_store(tmp_path_factory):
    """A fresh store where study ``repro`` starts at once, in the background (keep none: the policy
    changes no metric), while the crash studies run in the first store."""
    other = tmp_path_factory.mktemp("reproduced")
    _init(other)
    worker = Worker(other, "repro", "--n-trials", "1", "--keep-checkpoints", "none", tag="repro")
    yield other, worker
    if worker.proc.poll() is None:  # a test selection that never waited for it
        worker.proc.kill()
        worker.proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory, second_store):
    path = tmp_path_factory.mktemp("reliability")
    _init(path)
    return path


@pytest.fixture(scope="module")
def interrupted(store):
    """Study ``crash``: a worker interrupted with SIGINT in the middle of trial 0."""
    worker = Worker(store, "crash", "--n-trials", "1", "--heartbeat", "2", "--keep-checkpoints", "all", tag="sigint")
    trial = _wait_for_running_trial(store, "crash", worker)
    time.sleep(1.0)  # well inside the trial
    worker.proc.send_signal(signal.SIGINT)
    code = worker.wait(timeout=300)
    return worker, code, trial


@pytest.fixture(scope="module")
def killed_and_resumed(store, interrupted):
    """Study ``crash`` again: a worker SIGKILLed in the middle of trial 1, then the same command re-run."""
    worker = Worker(store, "crash", "--n-trials", "1", "--heartbeat", "2", "--keep-checkpoints", "all", tag="sigkill")
    trial = _wait_for_running_trial(store, "crash", worker)
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.wait(timeout=60)
    client = _client(store)
    after_kill = (_study(store, "crash").trials[trial.number].state.name,
                  client.get_run(trial.user_attrs["mlflow_run_id"]).info.status)
    # Re-run at once: the dead worker's heartbeat is still within its grace period for a few seconds.
    resumed = Worker(store, "crash", "--n-trials", "1", "--heartbeat", "2", "--keep-checkpoints", "all", tag="resume")
    assert resumed.wait() == 0, resumed.tail()
    return trial, after_kill, resumed


@pytest.fixture(scope="module")
def diverged(store, killed_and_resumed):
    """Study ``diverge``: a regularization coefficient beyond float32 makes every loss inf."""
    worker = Worker(store, "diverge", "--n-trials", "3", "--max-failures", "2", "--keep-checkpoints", "none",
                    "--set", "method.regularization_coeff=1e39", tag="diverge")
    code = worker.wait()
    return worker, code


@pytest.fixture(scope="module")
def reproduced(store, diverged, second_store):
    """Study ``repro`` (1 trial) in this store (keep best, a hub token in the environment) and in the
    second store (started first, in the background)."""
    other, second = second_store
    first = Worker(store, "repro", "--n-trials", "1", env=_env(HF_TOKEN=TOKEN, HUGGING_FACE_HUB_TOKEN=TOKEN), tag="repro")
    for worker in (first, second):
        assert worker.wait() == 0, worker.tail()
    return first, second, other


# --------------------------------------------------------------------------------------------------
# crashes


@pytest.mark.slow
def test_sigint_ends_run_killed_and_trial_failed_and_says_how_to_resume(store, interrupted):
    from optuna.trial import TrialState

    worker, code, trial = interrupted
    assert code == 130, worker.tail()
    assert "interrupted" in worker.stderr and "Run the same command again to resume" in worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr  # only the message (issue 13, 4)
    assert _study(store, "crash").trials[trial.number].state == TrialState.FAIL
    run = _client(store).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["study.failure_reason"]


@pytest.mark.slow
def test_sigkill_trial_is_failed_by_heartbeat_and_rerun_completes(store, killed_and_resumed):
    from optuna.trial import TrialState

    trial, after_kill, resumed = killed_and_resumed
    assert after_kill == ("RUNNING", "RUNNING")  # nobody ended them: the worker died at once
    study = _study(store, "crash")
    assert study.trials[trial.number].state == TrialState.FAIL
    run = _client(store).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "no heartbeat" in run.data.tags["study.failure_reason"]
    assert f"trial {trial.number}: its worker stopped beating" in resumed.stdout
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 1 and complete[0].number > trial.number
    runs = _trial_runs(store, "crash")
    assert [r.info.status for r in runs] == ["KILLED", "FAILED", "FINISHED"]
    assert all(r.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"] for r in runs)
    assert "0/1 trials finished" in resumed.stdout and "Pareto-best trials" in resumed.stdout


# --------------------------------------------------------------------------------------------------
# the study loop in-process, with trials that do no real work (seconds, not minutes)


def _fast_sweep(tmp_path, monkeypatch, outcome, data: dict | None = None, **changes):
    """A real ``Sweep`` over sqlite stores whose trials call ``outcome()`` instead of training (``data``:
    the run's ``data`` settings, built-in authors by default)."""
    import types

    from study import config, search
    from study.trial import runner
    from study.config import RunConfig
    from study.trial.references import ReferenceModels

    cfg = RunConfig.from_dict({"model": {"name": "tiny-llama"}, "data": data or {"n_authors": 6, "ds_size": 4}})
    settings = config.StudySettings("fast", ["ME+GD"], storage=f"sqlite:///{tmp_path}/optuna.db",
                                    tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="fast",
                                    keep_checkpoints="none", **changes)
    logs = []
    sweep = search.Sweep(cfg, settings, log=logs.append)
    monkeypatch.setattr(ReferenceModels, "prepare_target", lambda self: (runner.PreparedModel("none", "k", "target", True), "target-run"))
    monkeypatch.setattr(ReferenceModels, "metric_models_on", lambda self, device: None)

    def run_trial(cfg, hooks=None, **kwargs):
        summary = outcome()
        return types.SimpleNamespace(final=types.SimpleNamespace(summary=summary))

    monkeypatch.setattr(runner, "run_trial", run_trial)
    return sweep, logs


def _good():
    return {"model_utility": 0.5, "forget_efficacy": 0.5, "forget/rouge": 0.1}


def test_resume_right_after_a_crash_waits_for_the_dead_trial(tmp_path, monkeypatch):
    """Re-run within the grace period: the dead worker's RUNNING trial must not count as taking the last
    place; the worker waits until its heartbeat is stale, fails it, and runs the trial the study needs."""
    import optuna
    from optuna.trial import TrialState

    from study.search import open_storage

    sweep, logs = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=1, heartbeat=1)
    storage = open_storage(sweep.settings.storage, heartbeat=1)
    study = optuna.create_study(study_name="fast/ME+GD", storage=storage, directions=["maximize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "heartbeat ... supposed to be used with optimize": a dead worker's trial
        dead = study.ask()
    storage.record_heartbeat(dead._trial_id)  # it was beating a moment ago
    (study,) = sweep.run().values()
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.FAIL and states.count(TrialState.COMPLETE) == 1, states
    assert any("its worker stopped beating" in line for line in logs)


def test_failing_trials_stop_the_study_after_max_failures(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from study.search import TooManyFailures

    def diverge():
        raise FloatingPointError("loss is nan")

    sweep, logs = _fast_sweep(tmp_path, monkeypatch, diverge, n_trials=2, max_failures=3)
    with pytest.raises(TooManyFailures, match="3 trials failed in a row, the last with FloatingPointError: loss is nan"):
        sweep.run()
    import optuna

    study = optuna.load_study(study_name="fast/ME+GD", storage=sweep.settings.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["failure_reason"] == "FloatingPointError: loss is nan" for t in study.trials)
    runs = sweep.tracker.find("trial")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FAILED"}


def test_a_failure_between_successes_does_not_stop_the_study(tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from study.training.train import NonFiniteLoss

    def nan_loss():
        raise NonFiniteLoss("loss became nan at step 1/2 on rank 0")

    outcomes = iter([_good, nan_loss, _good])
    sweep, _ = _fast_sweep(tmp_path, monkeypatch, lambda: next(outcomes)(), n_trials=2, max_failures=2)
    (study,) = sweep.run().values()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]


def test_bad_input_inside_a_trial_stops_at_once(tmp_path, monkeypatch):
    from study.errors import DataError, StudyInputError

    def missing():
        raise DataError("/data/forget01.json: file not found")

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, missing, n_trials=3, max_failures=5)
    with pytest.raises(StudyInputError, match=r"trial 0: /data/forget01.json: file not found"):
        sweep.run()
    assert len(sweep.tracker.find("trial")) == 1


def _tofu_folder(folder: Path) -> Path:
    """A TOFU-format directory (one ``<split>.json`` JSON-lines file per split) of six generated authors."""
    from study.inputs import builtin

    folder.mkdir()
    for name, rows in builtin.generate(6, 0).items():
        (folder / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_data_digest_follows_the_rows_read_not_the_method(tmp_path):
    from study.config import RunConfig
    from study.trial.runner import data_digest

    folder = _tofu_folder(tmp_path / "tofu")
    base = RunConfig.from_dict({"model": {"name": "tiny-llama"}, "data": {"source": str(folder), "ds_size": 4}})
    digest = data_digest(base)
    assert len(digest) == 16 and data_digest(base) == digest
    # the method, its hyper-parameters and the training seed do not change what is read
    assert data_digest(base.replace(method={"name": "GA+GD"}, train={"lr": 3e-5, "seed": 7})) == digest
    # what is read does: more evaluation rows, an edited paraphrase of a retain question
    assert data_digest(base.replace(data={"ds_size": 5})) != digest
    path = folder / "retain_perturbed.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["paraphrased_answer"] += "!"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert data_digest(base) != digest


def test_a_study_resumed_on_other_data_is_refused(tmp_path, monkeypatch):
    """A study records the digest of the rows it reads; resuming it after a data file changed (here one
    wrong answer of the World Facts evaluation) stops in one line before any trial, naming the study and
    both digests, rather than mixing trials on two datasets. The trial runs carry the digest."""
    from study.errors import StudyInputError
    from study.trial.runner import data_digest

    folder = _tofu_folder(tmp_path / "tofu")
    data = {"source": str(folder), "ds_size": 4}
    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, data=data, n_trials=1)
    sweep.run()
    before = data_digest(sweep.cfg)
    assert _run_of(sweep, "trial").data.tags["study.data_digest"] == before
    path = folder / "world_facts_perturbed.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[0]["perturbed_answer"][0] += " (edited)"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again, _ = _fast_sweep(tmp_path, monkeypatch, _good, data=data, n_trials=2)
    with pytest.raises(StudyInputError) as error:
        again.run()
    message = str(error.value)
    assert "study fast/ME+GD" in message and "was run on other data" in message and "\n" not in message
    assert before in message and data_digest(again.cfg) in message and data_digest(again.cfg) != before
    assert len(again.tracker.find("trial")) == 1  # nothing ran on the changed data


def _run_of(sweep, kind: str):
    (run,) = sweep.tracker.find(kind)
    return run


def test_a_sigterm_during_a_failed_studys_clean_up_leaves_nothing_running(tmp_path, monkeypatch):
    """torchrun sends SIGTERM to rank 0 when another rank dies, often while rank 0 is still ending the trial
    that the lost rank broke. Here the SIGTERM lands while the study's run is being ended FAILED (the
    clean-up is cut short): the sweep still ends that run (KILLED, saying how to resume) and the trial's."""
    from study import search
    from study.errors import Terminated

    def broken():
        raise RuntimeError("Connection closed by peer")

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, broken, n_trials=2)
    real, hit = search.end_if_running, []

    def end_if_running(tracker, run_id, status, reason):
        if not hit and tracker.client.get_run(run_id).data.tags.get("study.kind") == "study":
            hit.append(run_id)
            raise Terminated("terminated (SIGTERM)")  # arrives before the study's run is ended
        real(tracker, run_id, status, reason)

    monkeypatch.setattr(search, "end_if_running", end_if_running)
    with pytest.raises(Terminated):
        sweep.run()
    assert hit  # the signal did land inside the clean-up
    trial, study = _run_of(sweep, "trial"), _run_of(sweep, "study")
    assert trial.info.status == "FAILED" and "Connection closed by peer" in trial.data.tags["study.failure_reason"]
    assert study.info.status == "KILLED", study.info.status
    assert study.data.tags["study.failure_reason"] == "terminated (SIGTERM); run the same command again to resume"


def test_abandoning_a_study_fails_its_running_trial_and_ends_its_runs(tmp_path, monkeypatch):
    """What ``Sweep.run`` does when a study stops outside its own clean-up: the Optuna trial still RUNNING
    (a signal that landed inside Optuna's own bookkeeping) ends FAIL with the reason, the study's run KILLED."""
    import optuna
    from optuna.trial import TrialState

    from study.search import TrialObjective
    from study.trial.tracking import Tracker

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=1)
    sweep.run()  # the stores, the study and its run
    study = optuna.load_study(study_name="fast/ME+GD", storage=sweep.settings.storage)
    tracker = Tracker(sweep.settings.tracking_uri, sweep.settings.experiment)
    parent = _run_of(sweep, "study").info.run_id
    tracker.client.update_run(parent, status="RUNNING")  # as during a study
    objective = TrialObjective(sweep.cfg, sweep.settings, tracker, None, study, "ME+GD", {}, parent, 2)
    objective.trial = study.ask()
    objective.abandon("KILLED", "terminated (SIGTERM)")
    (last,) = [t for t in study.get_trials() if t.number == objective.trial.number]
    assert last.state == TrialState.FAIL and last.user_attrs["failure_reason"] == "terminated (SIGTERM)"
    assert tracker.client.get_run(parent).info.status == "KILLED"
    assert [t.state for t in study.get_trials()].count(TrialState.COMPLETE) == 1  # the finished trial is kept


def test_a_failure_that_is_not_a_diverging_loss_stops_the_study_at_once(tmp_path, monkeypatch):
    """Issue 13 (1, 4): a trial that fails for another reason than a non-finite loss (here the disk is
    full) stops the study at its first failure, in one line; the trial's and the study's runs end FAILED."""
    from study.errors import StudyFault

    def disk_full():
        raise OSError(28, "No space left on device")

    sweep, logs = _fast_sweep(tmp_path, monkeypatch, disk_full, n_trials=3, max_failures=5)
    with pytest.raises(StudyFault, match=r"trial 0 failed: OSError: \[Errno 28\] No space left on device") as error:
        sweep.run()
    assert "\n" not in str(error.value)
    trial, study = _run_of(sweep, "trial"), _run_of(sweep, "study")
    assert trial.info.status == "FAILED" and "No space left on device" in trial.data.tags["study.failure_reason"]
    assert study.info.status == "FAILED" and "No space left on device" in study.data.tags["study.failure_reason"]


def test_a_store_that_turns_read_only_ends_the_runs_failed(tmp_path, monkeypatch):
    """Issue 13 (4): a write that fails after training (a read-only tracking store) does not leave the
    trial's run RUNNING, and stops the study with one line."""
    import sqlite3

    from study.errors import StudyFault
    from study.trial.tracking import Tracker

    original = Tracker.metrics

    def metrics(self, run_id, values, step=0):
        if "time/trial_s" in values:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return original(self, run_id, values, step)

    monkeypatch.setattr(Tracker, "metrics", metrics)
    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=2)
    with pytest.raises(StudyFault, match="readonly database"):
        sweep.run()
    assert _run_of(sweep, "trial").info.status == "FAILED"
    assert _run_of(sweep, "study").info.status == "FAILED"


@pytest.mark.parametrize("failure", ["diverging", "input"])
def test_a_stopped_study_ends_its_run_failed_with_the_reason(tmp_path, monkeypatch, failure):
    """Issue 13 (4): after too many failures, or bad input found inside a trial, the study's run is not
    left RUNNING."""
    from study.errors import DataError, StudyInputError
    from study.training.train import NonFiniteLoss

    def fail():
        raise NonFiniteLoss("loss became nan") if failure == "diverging" else DataError("/d/forget01.json: file not found")

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, fail, n_trials=2, max_failures=2)
    with pytest.raises(StudyInputError):
        sweep.run()
    study = _run_of(sweep, "study")
    assert study.info.status == "FAILED"
    assert ("2 trials failed in a row" if failure == "diverging" else "file not found") in study.data.tags["study.failure_reason"]


def test_workers_starting_together_create_one_study_run(tmp_path, monkeypatch):
    """Two workers reach an empty study at once, one slow to create its MLflow run: one study run."""
    import optuna

    from study.search import open_storage
    from study.trial.tracking import Tracker

    sweeps = [_fast_sweep(tmp_path, monkeypatch, _good)[0] for _ in range(2)]
    optuna.create_study(study_name="fast/ME+GD", storage=open_storage(sweeps[0].settings.storage),
                        directions=["maximize", "maximize"])
    studies = []
    for sweep, delay in zip(sweeps, (2.5, 0.0)):
        sweep.tracker = Tracker(sweep.settings.tracking_uri, "fast")
        original = sweep.tracker.start
        sweep.tracker.start = lambda *a, _start=original, _delay=delay, **k: (time.sleep(_delay), _start(*a, **k))[1]
        studies.append(optuna.load_study(study_name="fast/ME+GD", storage=open_storage(sweep.settings.storage)))
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, sweeps[i]._parent_run(studies[i], "ME+GD")))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results[0] and results[0] == results[1]
    assert [r.info.run_id for r in sweeps[0].tracker.find("study")] == [results[0]]
    assert not [s for s in optuna.get_all_study_names(open_storage(sweeps[0].settings.storage)) if "#claim" in s]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3))
def test_two_workers_started_together_on_fresh_stores(tmp_path, attempt):
    """Issue 13 (3), the README's two-worker example: two ``sweep.py`` processes started at the same moment on
    stores that do not exist yet finish exactly n_trials trials of one study, with one study run, one
    target run and one retain run, and no traceback."""
    import optuna
    from optuna.trial import TrialState

    workers = [Worker(tmp_path, "pair", "--keep-checkpoints", "none", tag=f"w{i}") for i in range(2)]
    for worker in workers:
        assert worker.wait() == 0, worker.tail()
        assert "Traceback" not in worker.stderr, worker.tail()
    study = optuna.load_study(study_name="pair/ME+GD", storage=_urls(tmp_path)[0])
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2, states  # the smoke preset's n_trials
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state != TrialState.COMPLETE)
    client = _client(tmp_path)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    kinds = [r.data.tags["study.kind"] for r in client.search_runs([experiment])]
    assert sorted(kinds) == ["retain_model", "study", "target", "trial", "trial"], kinds
    assert {r.info.status for r in client.search_runs([experiment])} == {"FINISHED"}


def test_concurrent_checkpoint_writers_keep_one_complete_copy(tmp_path):
    """Workers sharing the model cache: a writer that finds the checkpoint already written by another
    keeps that one (no error, no half-written folder left behind)."""
    from study.inputs import models

    path = tmp_path / "target-abc"

    class Model:
        def save_pretrained(self, folder, safe_serialization):
            assert safe_serialization
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model.safetensors").write_text("mine")

    class Tokenizer:
        def save_pretrained(self, folder):
            # Meanwhile another worker finished writing the same checkpoint.
            path.mkdir()
            (path / "model.safetensors").write_text("theirs")

    models.save_checkpoint(Model(), Tokenizer(), models.QUESTION_ANSWER, path)
    assert (path / "model.safetensors").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["target-abc"]


# --------------------------------------------------------------------------------------------------
# divergence


@pytest.mark.slow
def test_diverging_trials_fail_with_reason_and_the_study_goes_on_then_stops(store, diverged):
    from optuna.trial import TrialState

    worker, code = diverged
    assert code == 2, worker.tail()
    errors = [line for line in worker.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 trials failed in a row" in errors[0] and "NonFiniteLoss" in errors[0]
    trials = _study(store, "diverge").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # trial 1 ran after trial 0 diverged
    for trial in trials:
        assert trial.user_attrs["failure_reason"].startswith("NonFiniteLoss: loss became inf")
    runs = _trial_runs(store, "diverge")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert "loss became inf" in run.data.tags["study.failure_reason"]
    assert "trial 0 failed: NonFiniteLoss" in worker.stdout and "trial 1 failed: NonFiniteLoss" in worker.stdout


# --------------------------------------------------------------------------------------------------
# disk: the keep policy


@pytest.mark.slow
def test_keep_policy_lines_are_printed_before_the_study_starts(killed_and_resumed, reproduced):
    _, _, resumed = killed_and_resumed
    assert _line_before_study_starts(resumed.stdout, "checkpoints: ") == "checkpoints: all kept: 1 x 0.01 GB = 0.01 GB"
    assert _line_before_study_starts(reproduced[1].stdout, "checkpoints: ") == "checkpoints: none kept (0 GB)"
    assert _line_before_study_starts(reproduced[0].stdout, "checkpoints: ").startswith(
        "checkpoints: Pareto-best kept: 0.01 GB each, at most 0.01 GB")


@pytest.mark.slow
def test_keep_all_and_best_keep_safetensors_checkpoints_only_for_finished_trials(store, killed_and_resumed, reproduced):
    client = _client(store)
    for study in ("crash", "repro"):
        for run in _trial_runs(store, study):
            files = _artifact_files(client, run.info.run_id)
            checkpoint = [f for f in files if f.startswith("checkpoint/")]
            if run.info.status == "FINISHED":  # all: every finished trial; best: the only trial is Pareto-best
                assert "checkpoint/model.safetensors" in checkpoint and "checkpoint/study.json" in checkpoint
                assert not [f for f in checkpoint if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))], checkpoint
                assert run.data.tags["study.checkpoint"] == "kept"
            else:
                assert not checkpoint


@pytest.mark.slow
def test_keep_none_keeps_no_checkpoint(reproduced):
    _, _, other = reproduced
    (run,) = _trial_runs(other, "repro")
    assert run.info.status == "FINISHED"
    files = _artifact_files(_client(other), run.info.run_id)
    assert "config.json" in files and not [f for f in files if f.startswith("checkpoint")]
    assert "study.checkpoint" not in run.data.tags


def _fake_sweep(tmp_path, policy: str, values: list, directions: list[str]):
    """A study whose trials have MLflow runs with a checkpoint/ artifact, as the objective leaves them."""
    import optuna
    from optuna.trial import create_trial

    from study.config import RunConfig
    from study.config import StudySettings
    from study.search import Sweep
    from study.trial.tracking import Tracker

    sweep = Sweep(RunConfig(), StudySettings("fake", ["ME+GD"], n_trials=len(values), keep_checkpoints=policy), log=lambda *a: None)
    sweep.tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "keep")
    study = optuna.create_study(directions=directions)
    for number, value in enumerate(values):
        run_id = sweep.tracker.start(f"trial {number}", "trial", {"checkpoint": "kept"})
        folder = tmp_path / f"ckpt{number}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 10)
        sweep.tracker.directory_artifact(run_id, folder, "checkpoint")
        sweep.tracker.end(run_id)
        study.add_trial(create_trial(values=value if isinstance(value, list) else [value], user_attrs={"mlflow_run_id": run_id, "checkpoint": "kept"}))
    sweep._apply_keep_policy(study)
    kept = {t.number for t in study.trials
            if any(a.path == "checkpoint" for a in sweep.tracker.client.list_artifacts(t.user_attrs["mlflow_run_id"]))}
    return sweep, study, kept


def test_keep_best_deletes_all_but_the_pareto_best(tmp_path):
    # (MU, FE): trial 1 is dominated by trial 0; trials 0 and 2 are on the front.
    sweep, study, kept = _fake_sweep(tmp_path, "best", [[0.5, 0.5], [0.4, 0.4], [0.6, 0.3]], ["maximize", "maximize"])
    assert kept == {t.number for t in study.best_trials} == {0, 2}
    tag = sweep.tracker.client.get_run(study.trials[1].user_attrs["mlflow_run_id"]).data.tags["study.checkpoint"]
    assert tag == "deleted (not Pareto-best)"


def test_keep_best_single_objective_and_keep_all(tmp_path):
    _, _, kept = _fake_sweep(tmp_path / "one", "best", [0.2, 0.9, 0.5], ["maximize"])
    assert kept == {1}
    _, _, kept = _fake_sweep(tmp_path / "all", "all", [[0.5, 0.5], [0.4, 0.4]], ["maximize", "maximize"])
    assert kept == {0, 1}


# --------------------------------------------------------------------------------------------------
# safety


def _python_sources():
    return [p for folder in ("study", "experiments") for p in (ROOT / folder).rglob("*.py")]


def test_no_pickle_loading_of_weights():
    offenders = []
    for path in _python_sources():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            if re.search(r"\b(pickle|joblib|dill)\.loads?\(", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders


def test_models_are_read_and_written_as_safetensors_only():
    """Every model ``from_pretrained`` call asks for safetensors (or reads a GGUF file); every model
    ``save_pretrained`` writes safetensors. Tokenizers carry no weights."""
    import ast

    offenders = []
    for path in _python_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("from_pretrained", "save_pretrained")):
                continue
            owner = ast.unparse(node.func.value)
            if "tokenizer" in owner.lower():
                continue
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            ok = (keywords.get("use_safetensors") == "True" or "gguf_file" in keywords) if node.func.attr == "from_pretrained" \
                else keywords.get("safe_serialization") == "True"
            if not ok:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders


def test_trust_remote_code_is_off_unless_asked(monkeypatch):
    import transformers

    from study.inputs import models
    from study.config import RunConfig

    assert RunConfig().model.trust_remote_code is False
    calls = []

    class Fake:
        pad_token, eos_token, pad_token_id, eos_token_id, chat_template = "</s>", "</s>", 2, 2, None

        def to(self, *args, **kwargs):
            return self

    def record(kind):
        def from_pretrained(source, **kwargs):
            calls.append((kind, kwargs))
            return Fake()
        return from_pretrained

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record("tokenizer"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", record("model"))
    models.load("someone/some-model", device="cpu")
    assert {kind for kind, _ in calls} == {"tokenizer", "model"}
    assert all(kwargs.get("trust_remote_code") is False for _, kwargs in calls)
    assert [kwargs.get("use_safetensors") for kind, kwargs in calls if kind == "model"] == [True]
    calls.clear()
    models.load("someone/some-model", device="cpu", trust_remote_code=True)
    assert all(kwargs.get("trust_remote_code") is True for _, kwargs in calls)


def test_servers_bind_to_loopback_by_default():
    import inspect

    from experiment_scripts import load
    from study.trial.tracking import ui_command

    services = load("services")
    assert services.LOOPBACK == "127.0.0.1"
    assert inspect.signature(services.mlflow_server).parameters["host"].default == "127.0.0.1"
    source = inspect.getsource(services.postgres)
    assert 'f"listen_addresses={LOOPBACK}"' in source
    assert "--host 127.0.0.1" in ui_command("sqlite:///mlruns/mlflow.db")


def test_study_run_params_hide_the_storage_password(tmp_path):
    """``Sweep._parent_run`` logs the study's settings: the storage URL redacted, the tracking URL not at all."""
    import optuna

    from study.config import RunConfig
    from study.config import StudySettings
    from study.search import Sweep
    from study.trial.tracking import Tracker

    settings = StudySettings("pw", ["ME+GD"], storage="postgresql+psycopg2://user:pa55word@db.internal:5432/optuna",
                             tracking_uri="http://user:pa55word@mlflow.internal:5000")
    sweep = Sweep(RunConfig(), settings, log=lambda *a: None)
    sweep.tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "pw")
    study = optuna.create_study(study_name="pw/ME+GD", directions=["maximize", "maximize"])
    run = sweep.tracker.client.get_run(sweep._parent_run(study, "ME+GD"))
    assert run.data.params["study.storage"] == "postgresql+psycopg2://user:***@db.internal:5432/optuna"
    everything = json.dumps([run.data.params, run.data.tags, study.user_attrs])
    assert "pa55word" not in everything


@pytest.mark.slow
def test_hub_token_never_logged_or_printed(store, reproduced):
    first, _, _ = reproduced
    assert TOKEN not in first.stdout + first.stderr
    client = _client(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for run in client.search_runs([experiment.experiment_id]):
        assert TOKEN not in json.dumps([run.data.params, run.data.tags]), run.info.run_id
    for run in _trial_runs(store, "repro"):
        assert TOKEN not in Path(client.download_artifacts(run.info.run_id, "config.json")).read_text()


# --------------------------------------------------------------------------------------------------
# reproducibility


@pytest.mark.slow
def test_same_seed_gives_identical_metrics_in_two_stores(store, reproduced):
    _, _, other = reproduced
    (a,), (b,) = _trial_runs(store, "repro"), _trial_runs(other, "repro")
    # Wall times and MLflow's system metrics (sampled every 10 s: a slower trial has more) measure the
    # machine, not the trial.
    timing = lambda metrics: {k: v for k, v in metrics.items() if not k.startswith(("time/", "system/"))}  # noqa: E731
    assert a.data.params == b.data.params
    assert len(timing(a.data.metrics)) > 20 and timing(a.data.metrics) == timing(b.data.metrics)
    client_a, client_b = _client(store), _client(other)
    for key in ("train/loss", "train/grad_norm"):
        assert ([(m.step, m.value) for m in client_a.get_metric_history(a.info.run_id, key)]
                == [(m.step, m.value) for m in client_b.get_metric_history(b.info.run_id, key)])


@pytest.mark.slow
def test_runs_record_package_and_code_versions(store, reproduced):
    from study.trial.tracking import code_version, package_versions

    (run,) = _trial_runs(store, "repro")
    tags = run.data.tags
    for name, version in package_versions().items():
        assert tags[f"study.version.{name}"] == version
    assert tags["study.code_version"] == code_version() and tags["study.code_version"] != ""


def test_a_dead_workers_claim_on_the_study_run_is_taken_over(tmp_path, monkeypatch):
    """A worker died after claiming the study's MLflow run but before creating it: the next worker waits
    out the claim, creates the run itself, and leaves no claim behind."""
    import optuna

    from study.trial import claims
    from study.search import open_storage
    from study.trial.tracking import Tracker

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good)
    sweep.tracker = Tracker(sweep.settings.tracking_uri, "fast")
    storage = open_storage(sweep.settings.storage)
    study = optuna.create_study(study_name="fast/ME+GD", storage=storage, directions=["maximize", "maximize"])
    optuna.create_study(study_name="fast/ME+GD#claim-1", storage=storage)  # the dead worker's claim
    monkeypatch.setattr(claims, "CLAIM_TIMEOUT_S", 1.0)
    run_id = sweep._parent_run(study, "ME+GD")
    assert [r.info.run_id for r in sweep.tracker.find("study")] == [run_id]
    assert study.user_attrs["mlflow_parent_run_id"] == run_id
    assert optuna.get_all_study_names(storage) == ["fast/ME+GD"]


def test_resuming_a_study_with_other_settings_is_refused(tmp_path, monkeypatch):
    """Trials of one study share their fixed settings: a re-run that changed one (here the evaluation set
    size) stops with one line naming the setting, before any trial; more trials with the same ones resume."""
    from study.config import RunConfig
    from study.errors import StudyInputError

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=1)
    sweep.run()
    again, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=2)
    again.cfg = RunConfig.from_dict({"model": {"name": "tiny-llama"}, "data": {"n_authors": 6, "ds_size": 3}})
    with pytest.raises(StudyInputError, match=r"fast/ME\+GD .*other settings \(data.ds_size 4 -> 3\)"):
        again.run()
    assert len(again.tracker.find("trial")) == 1
    more, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=2)
    more.run()
    assert len(more.tracker.find("trial")) == 2


def test_a_hyper_parameter_fixed_with_set_is_not_sampled(tmp_path, monkeypatch):
    """Issue 13 (2): ``--set train.lr=...`` (``StudySettings.fixed``) keeps lr out of every trial's sampled
    parameters; the trial runs with the configuration's value."""
    seen = []
    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=1, fixed=["lr"])
    from study.trial import runner

    original = runner.run_trial
    monkeypatch.setattr(runner, "run_trial", lambda cfg, hooks=None, **kw: (seen.append(cfg.train.lr), original(cfg, hooks, **kw))[1])
    (study,) = sweep.run().values()
    assert "lr" not in study.trials[0].params and "forget_coeff" in study.trials[0].params
    assert seen == [sweep.cfg.train.lr]


def test_keep_best_leaves_another_workers_running_trial_alone(tmp_path):
    """A trial that kept its checkpoint but has not returned its values yet (another worker's, still
    RUNNING in Optuna) is not Pareto-best only because Optuna does not count it yet: keep it."""
    from optuna.trial import TrialState, create_trial

    sweep, study, kept = _fake_sweep(tmp_path, "best", [[0.5, 0.5], [0.4, 0.4]], ["maximize", "maximize"])
    assert kept == {0}
    run_id = sweep.tracker.start("trial 2", "trial", {"checkpoint": "kept"})
    folder = tmp_path / "ckpt-running"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    sweep.tracker.directory_artifact(run_id, folder, "checkpoint")
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs={"mlflow_run_id": run_id, "checkpoint": "kept"}))
    sweep._apply_keep_policy(study)
    assert [a.path for a in sweep.tracker.client.list_artifacts(run_id)] == ["checkpoint"]


# --------------------------------------------------------------------------------------------------
# issue 32: SIGTERM like Ctrl-C; disk full, read-only stores and failed writes in one line


def test_sigterm_ends_the_runs_killed_like_ctrl_c(tmp_path, monkeypatch):
    """Issue 32 (1): SIGTERM (Slurm, Kubernetes, ``timeout``) mid-trial raises in the main thread like
    Ctrl-C: the trial's run and the study's run end KILLED with the reason, the Optuna trial FAIL."""
    import optuna
    from optuna.trial import TrialState

    from study.errors import Terminated, sigterm_as_interrupt

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises here, at once
        raise AssertionError("SIGTERM did not stop the trial")

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, terminated, n_trials=1)
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        sweep.run()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is removed after the block
    trial, study = _run_of(sweep, "trial"), _run_of(sweep, "study")
    assert trial.info.status == "KILLED" and trial.data.tags["study.failure_reason"] == "terminated (SIGTERM)"
    assert study.info.status == "KILLED" and study.data.tags["study.failure_reason"].startswith("terminated (SIGTERM); run the same")
    (frozen,) = optuna.load_study(study_name="fast/ME+GD", storage=sweep.settings.storage).trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["failure_reason"] == "terminated (SIGTERM)"


_STALLED_SWEEP = """
import sys, time, types
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from study.trial import runner
from study.trial.references import ReferenceModels
from experiment_scripts import load
ReferenceModels.prepare_target = lambda self: (runner.PreparedModel("none", "k", "target", True), "target-run")
ReferenceModels.metric_models_on = lambda self, device: None
def run_trial(cfg, hooks=None, **kwargs):
    print("trial started", flush=True)
    time.sleep(600)
runner.run_trial = run_trial
sys.exit(load("sweep").main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_to_sweep_py_is_one_message_and_exit_143(tmp_path):
    """Issue 32 (1): ``sweep.py`` (its trials stalled, so the signal lands mid-trial) sent SIGTERM prints
    how to resume, no traceback, exits 143, and leaves no run RUNNING."""
    script = tmp_path / "stalled.py"
    script.write_text(_STALLED_SWEEP.format(root=str(ROOT), tests=str(ROOT / "tests")))
    storage, tracking = _urls(tmp_path)
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, str(script), "--preset", "smoke", "--no-progress", "--n-trials", "1",
                                 "--study-name", "term", "--storage", storage, "--tracking-uri", tracking,
                                 "--experiment", EXPERIMENT], stdout=stdout, stderr=stderr, env=_env())
        deadline = time.monotonic() + 300
        while "trial started" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text() + err.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 143, err.read_text()
    assert "Traceback" not in err.read_text() and "terminated (SIGTERM)" in err.read_text()
    assert "Run the same command again to resume" in err.read_text()
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert sorted((r.data.tags["study.kind"], r.info.status) for r in runs) == [("study", "KILLED"), ("trial", "KILLED")]


def test_a_failed_write_of_the_fail_state_is_one_line_and_ends_the_runs(tmp_path, monkeypatch):
    """Issue 32 (2): the disk fills during a trial and Optuna cannot record the trial FAIL either (its
    ``AssertionError: Should not reach.`` hides the cause): one line naming the cause; the MLflow runs,
    whose store is still writable, end FAILED."""
    import sqlite3

    import optuna
    from optuna.trial import TrialState

    from study.errors import StudyFault

    original = optuna.storages.RDBStorage.set_trial_state_values

    def set_state(self, trial_id, state, values=None):
        if state == TrialState.FAIL:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, trial_id, state, values)

    def disk_full():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", set_state)
    sweep, _ = _fast_sweep(tmp_path, monkeypatch, disk_full, n_trials=2)
    with pytest.raises(StudyFault) as error:
        sweep.run()
    assert "disk is full" in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert _run_of(sweep, "trial").info.status == "FAILED"
    assert _run_of(sweep, "study").info.status == "FAILED"


def test_a_read_only_store_folder_is_one_error_line(tmp_path, capsys, monkeypatch):
    """Issue 32 (2): a store on a read-only file system, where the schema lock cannot be created, is one
    ``error:`` line naming the file, not an ``OSError`` traceback (simulated: this suite may run as root)."""
    import builtins
    import errno

    from experiment_scripts import load

    from study.trial import tracking

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(tracking, "open", read_only, raising=False)
    code = load("sweep").main(["--preset", "smoke", "--no-progress", "--storage", f"sqlite:///{tmp_path}/optuna.db",
                               "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"{tmp_path}/" in line and ".db" in line and "Read-only file system" in line, line


@pytest.mark.slow
def test_sigterm_to_services_up_stops_both_servers_and_deletes_the_data(tmp_path):
    """Issue 32 (1): ``services.py up`` sent SIGTERM (as ``kill``, systemd or Kubernetes stop it) stops
    PostgreSQL and the MLflow server and deletes the PostgreSQL data folder, as Ctrl-C does."""
    import socket

    from experiment_scripts import load

    services = load("services")
    if services.postgres_bindir() is None and services.install_postgres() is None:
        pytest.skip("PostgreSQL is not installed and could not be installed (Debian/Ubuntu: apt-get install postgresql)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "up.out"
    with out.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "services.py"), "up", "--dir", str(tmp_path / "up"),
                                 "--port", str(port)], stdout=stdout, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 300
        while "stops both servers" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.5)
        data = Path(re.search(r"data in (\S+), deleted on exit", out.read_text()).group(1))
        assert data.is_dir()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 0, out.read_text()
    assert "terminated (SIGTERM): stopping both servers" in out.read_text() and "Traceback" not in out.read_text()
    assert not data.exists()
    with socket.socket() as client:  # nothing answers on the MLflow port any more
        assert client.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("change", [{"sampler": "grid"}, {"objective": "average"}])
def test_resuming_with_another_sampler_or_objective_is_refused(tmp_path, monkeypatch, change):
    """Issue 32 (4, 5): a finished TPE / Pareto study resumed with ``--sampler grid`` (before: a FAIL
    trial, the finished study run turned FAILED) or ``--objective average`` (before: a traceback) stops
    with one line before any trial; the study and its run are left as they were."""
    from study.errors import StudyInputError

    sweep, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=1)
    sweep.run()
    again, _ = _fast_sweep(tmp_path, monkeypatch, _good, n_trials=2, **change)
    (key, value), = change.items()
    with pytest.raises(StudyInputError, match=f"another {key} '{'tpe' if key == 'sampler' else 'pareto'}' -> '{value}'"):
        again.run()
    assert len(again.tracker.find("trial")) == 1
    assert _run_of(again, "study").info.status == "FINISHED"


def test_a_stale_claim_is_announced_and_the_orphaned_target_run_ended(tmp_path, monkeypatch):
    """Issue 32 (7): a worker killed while evaluating the target left its claim and its target run
    RUNNING: the next worker says what it waits for and when it takes over, then ends the orphaned run
    FAILED; a stop during the evaluation itself (Ctrl-C, SIGTERM) ends the run KILLED."""
    import optuna

    from study.trial import claims
    from study.errors import Terminated
    from study.trial.references import ReferenceModels
    from study.search import open_storage
    from study.trial.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "fast")
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    tags = {"key": "k1", "eval_key": "e1", "task": 1}
    orphan = tracker.start("target-k1", "target", tags)  # the dead worker's run
    optuna.create_study(study_name="#target-k1#claim-1", storage=storage)  # and its claim, never beating
    monkeypatch.setattr(claims, "CLAIM_TIMEOUT_S", 2.0)
    references = ReferenceModels.__new__(ReferenceModels)
    references.tracker, logs = tracker, []
    result = type("Result", (), {"summary": {"model_utility": 0.5}, "items": __import__("pandas").DataFrame({"a": [1]})})

    def create():
        return references._evaluated_run("target", tracker.start("target-k1", "target", tags), lambda: result)

    run_id = claims.once(storage, "#target-k1", lambda: None, create, log=logs.append, what="the target model's evaluation")
    assert any(re.fullmatch(r"waiting for the target model's evaluation, started by a worker that stopped "
                            r"\(no beat for \d+ s\); taking over in \d+ s", line) for line in logs), logs
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    assert tracker.client.get_run(orphan).info.status == "FAILED"

    def stopped():
        raise Terminated("terminated (SIGTERM)")

    other = tracker.start("target-k2", "target", {**tags, "key": "k2"})
    with pytest.raises(Terminated):
        references._evaluated_run("target", other, stopped)
    run = tracker.client.get_run(other)
    assert run.info.status == "KILLED" and run.data.tags["study.failure_reason"] == "terminated (SIGTERM)"


def test_a_sigterm_during_a_store_write_waits_for_the_write_to_finish():
    """torchrun's SIGTERM once landed inside a failed trial's last metric commit: SQLite kept the cut
    connection's lock and the clean-up could not end the run (left RUNNING). Inside ``sigterm_held`` the
    signal is held and raised once the write is done; outside it is raised where it lands."""
    from study.errors import Terminated, sigterm_as_interrupt, sigterm_held

    done = []
    with sigterm_as_interrupt():
        with pytest.raises(Terminated):
            with sigterm_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler has run by now: held, not raised
                done.append("write finished")
        assert done == ["write finished"]
    with sigterm_as_interrupt():  # a fresh block: nothing pending from the last one
        with sigterm_held():
            done.append("second write")
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
            done.append("not reached")
    assert done == ["write finished", "second write"]
