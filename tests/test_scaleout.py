"""Scale-out, for real: a PostgreSQL server (Optuna storage and MLflow backend) and an ``mlflow server``
on 127.0.0.1, both from ``experiments/services.py``, and two ``sweep.py`` workers that share ONE study over
them (Optuna over ``postgresql+psycopg2://``, MLflow over HTTP with proxied artifacts).

Afterwards: exactly N completed trials with unique numbers, one study run with N FINISHED trial runs
(a trial numbered beyond N by the race may exist only as FAIL in Optuna, without an MLflow run), no
password anywhere, and both servers listening on 127.0.0.1 only.

PostgreSQL comes from the OS (``make setup`` installs Debian's ``postgresql``); where it is missing and
cannot be installed, the test is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "sweep.py"
EXPERIMENT = "scale-out"
N_TRIALS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from experiment_scripts import load  # tests/experiment_scripts.py: experiments/services.py by its path

    services = load("services")
    if services.postgres_bindir() is None and services.install_postgres() is None:
        pytest.skip("PostgreSQL is not installed and could not be installed (Debian/Ubuntu: apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("scaleout")
    with services.postgres(databases=("optuna", "mlflow")) as pg, \
            services.mlflow_server(pg.url("mlflow"), folder / "artifacts", log=folder / "mlflow-server.log") as server:
        # The schema and the experiment exist before the workers start (concurrent first creation races).
        services.init_stores(pg.url("optuna"), server.url, EXPERIMENT)
        yield pg, server, folder


@pytest.fixture(scope="module")
def shared_study(servers):
    pg, server, folder = servers
    command = [sys.executable, str(SWEEP), "--preset", "smoke", "--no-progress", "--n-trials", str(N_TRIALS),
               "--study-name", "scale", "--storage", pg.url("optuna"), "--tracking-uri", server.url, "--experiment", EXPERIMENT]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    workers = []
    for index in range(2):
        out, err = (folder / f"worker{index}.out").open("w"), (folder / f"worker{index}.err").open("w")
        workers.append((subprocess.Popen(command, stdout=out, stderr=err, env=env), out, err))
    outputs = []
    for index, (proc, out, err) in enumerate(workers):
        proc.wait(timeout=1800)
        out.close(), err.close()
        outputs.append((proc.returncode, (folder / f"worker{index}.out").read_text(), (folder / f"worker{index}.err").read_text()))
    return pg, server, folder, outputs


def test_two_workers_complete_exactly_n_trials_of_one_study(shared_study):
    import optuna
    from optuna.trial import TrialState

    pg, server, _, outputs = shared_study
    for code, out, err in outputs:
        assert code == 0, out[-3000:] + err[-5000:]
    study = optuna.load_study(study_name="scale/ME+GD", storage=pg.url("optuna"))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS and len({t.number for t in complete}) == N_TRIALS
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    for trial in others:  # the race's surplus trials: failed before doing any work
        assert trial.state == TrialState.FAIL and trial.user_attrs.get("surplus") and "mlflow_run_id" not in trial.user_attrs
    # Both workers took part.
    assert all("trial " in out and "MU " in out for _, out, _ in outputs), [out[-1500:] for _, out, _ in outputs]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], "tags.`study.kind` = 'study'")
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["mlflow_parent_run_id"]
    trials = client.search_runs([experiment.experiment_id], "tags.`study.kind` = 'trial'")
    assert len(trials) == N_TRIALS
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["study.trial_number"]) for r in trials) == sorted(t.number for t in complete)
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in trials}
    # Artifacts went through the server (proxied), checkpoints as safetensors.
    kept = [r for r in trials if r.data.tags.get("study.checkpoint") == "kept"]
    assert kept
    paths = [a.path for a in client.list_artifacts(kept[0].info.run_id, "checkpoint")]
    assert "checkpoint/model.safetensors" in paths and not [p for p in paths if p.endswith((".bin", ".pt", ".pth"))]


def test_database_password_never_appears(shared_study):
    pg, server, folder, outputs = shared_study
    assert len(pg.password) >= 16
    for _, out, err in outputs:
        assert pg.password not in out + err
        assert "postgresql+psycopg2://study:***@127.0.0.1" in out  # the plan shows the storage, redacted
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    for run in client.search_runs([experiment.experiment_id]):
        assert pg.password not in json.dumps([run.data.params, run.data.tags]), run.info.run_id
    parent = client.search_runs([experiment.experiment_id], "tags.`study.kind` = 'study'")[0]
    assert parent.data.params["study.storage"].startswith("postgresql+psycopg2://study:***@127.0.0.1")
    assert pg.password not in (folder / "mlflow-server.log").read_text()


def _listening(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp (Linux)")
def test_servers_listen_on_loopback_only(servers):
    pg, server, _ = servers
    for port in (pg.port, server.port):
        assert _listening(port) == {"0100007F"}, (port, _listening(port))  # 127.0.0.1, nothing else


def test_two_torchrun_workers_of_zero3_trials_share_one_study(servers, tmp_path):
    """Issue 31: two workers, each ``torchrun --nproc_per_node 2 experiments/sweep.py`` (every trial ZeRO-3 over
    its two processes, gloo), share one study over PostgreSQL and the MLflow server: exactly N finished trials,
    each with one FINISHED run that its worker's rank 0 wrote, nothing left RUNNING."""
    import optuna
    from optuna.trial import TrialState
    from mlflow.tracking import MlflowClient

    from experiment_scripts import load

    pg, server, folder = servers
    experiment = "scale-out-zero3"
    load("services").init_stores(pg.url("optuna"), server.url, experiment)
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu",
                "TORCH_EXTENSIONS_DIR": str(tmp_path / "torch_extensions"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                "OPTUNA_STORAGE": pg.url("optuna")})
    workers = []
    for index in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "--log-dir", str(tmp_path / f"logs{index}"), "--redirects", "3", str(SWEEP), "--preset", "smoke",
                   "--no-progress", "--n-trials", str(N_TRIALS), "--study-name", "scale-zero3", "--tracking-uri", server.url,
                   "--experiment", experiment, "--system-metrics", "0", "--set", "train.grad_accum=2",
                   "--set", 'train.deepspeed="experiments/deepspeed/zero3.json"']
        workers.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for index, proc in enumerate(workers):
        _, err = proc.communicate(timeout=1800)
        logs = "".join(f.read_text() for f in sorted((tmp_path / f"logs{index}").rglob("*.log")))
        assert proc.returncode == 0, logs[-5000:] + err[-2000:]

    study = optuna.load_study(study_name="scale-zero3/ME+GD", storage=pg.url("optuna"))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS and len({t.number for t in complete}) == N_TRIALS
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("surplus") for t in study.trials if t.state != TrialState.COMPLETE)
    ran = [f.read_text() for f in (tmp_path / "logs0").rglob("0/stdout.log")] + \
          [f.read_text() for f in (tmp_path / "logs1").rglob("0/stdout.log")]
    assert all("MU " in text for text in ran), "both workers ran trials"
    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    trials = [r for r in runs if r.data.tags.get("study.kind") == "trial"]
    assert {t.user_attrs["mlflow_run_id"] for t in complete} == {r.info.run_id for r in trials}
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert all(r.data.params["train.deepspeed"] == "experiments/deepspeed/zero3.json" for r in trials)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
