"""What a user sees through ``mlflow server`` on the smoke store: the REST API (``/api/2.0/mlflow/...``,
the calls the MLflow UI makes) shows each study run with its trials nested, the Pareto-best trials'
models in the registry, each trial's datasets, and metric histories.

The server runs as a subprocess on 127.0.0.1 on a free port, in its own process group, and is always
terminated (the fixture's ``finally``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMOKE_METHODS

pytestmark = pytest.mark.slow

FICTITIOUS = "smoke-fictitious-forget01-tiny-llama"
REGISTERED = {"GA+GD": "GA-GD.smoke-fictitious-forget01-tiny-llama", "ME+GD": "ME-GD.smoke-fictitious-forget01-tiny-llama"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(smoke_store, tmp_path_factory):
    """``mlflow server`` on the smoke store: (base URL, experiment name)."""
    import requests

    store, experiment = smoke_store
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists():
        pytest.skip(f"no mlflow command beside {sys.executable}")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base, experiment
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def api(base: str, path: str, method: str = "GET", **payload) -> dict:
    import requests

    url = f"{base}/api/2.0/mlflow/{path}"
    response = requests.post(url, json=payload, timeout=60) if method == "POST" else requests.get(url, params=payload, timeout=60)
    assert response.status_code == 200, (path, response.status_code, response.text[:1000])
    return response.json()


def search(base: str, experiment_id: str, filter_string: str) -> list[dict]:
    runs, token = [], None
    while True:
        page = api(base, "runs/search", "POST", experiment_ids=[experiment_id], filter=filter_string, max_results=1000,
                   **({"page_token": token} if token else {}))
        runs.extend(page.get("runs", []))
        token = page.get("next_page_token")
        if not token:
            return runs


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_the_server_shows_studies_trials_models_datasets_and_histories(server):
    base, experiment = server
    experiment_id = api(base, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    studies = search(base, experiment_id, "tags.`study.kind` = 'study'")
    trials = search(base, experiment_id, "tags.`study.kind` = 'trial'")
    assert len(studies) == 3 * len(SMOKE_METHODS)  # one per scenario and method
    assert len(trials) == 2 * len(studies)

    # Trials nested under their study run (the UI's tree comes from mlflow.parentRunId).
    by_study = {run["info"]["run_id"]: tags(run)["study.study_name"] for run in studies}
    for trial in trials:
        t = tags(trial)
        assert t["mlflow.parentRunId"] in by_study
        assert by_study[t["mlflow.parentRunId"]] == t["study.study_name"]
    for run_id in by_study:
        assert sum(tags(t)["mlflow.parentRunId"] == run_id for t in trials) == 2

    # The registry: each fictitious study's registered model, its versions tagged pareto=true the trials that kept a model.
    registered = {m["name"] for m in api(base, "registered-models/search", max_results=1000).get("registered_models", [])}
    assert set(REGISTERED.values()) <= registered
    for method, name in REGISTERED.items():
        versions = api(base, "model-versions/search", filter=f"name = '{name}'").get("model_versions", [])
        kept = {t["info"]["run_id"] for t in trials
                if tags(t)["study.study_name"] == f"{FICTITIOUS}/{method}" and tags(t)["study.checkpoint"] == "kept"}
        front = {v["run_id"] for v in versions if {t["key"]: t["value"] for t in v.get("tags", [])}["pareto"] == "true"}
        assert versions and front == kept
        for version in versions:
            model_id = version["source"].removeprefix("models:/")
            logged = api(base, f"logged-models/{model_id}")["model"]
            assert logged["info"]["source_run_id"] == version["run_id"]
            assert logged["info"]["status"] == "LOGGED_MODEL_READY"
            assert logged["info"]["name"].startswith(method.replace("+", "-") + "-trial-")
            assert {t["key"] for t in version.get("tags", [])} >= {"model_utility", "forget_efficacy", "forget_quality"}

    # Datasets on each trial (run inputs) and metric histories.
    for trial in trials:
        run_id = trial["info"]["run_id"]
        run = api(base, "runs/get", run_id=run_id)["run"]
        contexts = {tag["value"] for d in run["inputs"]["dataset_inputs"] for tag in d.get("tags", [])
                    if tag["key"] == "mlflow.data.context"}
        assert contexts == {"forget", "retain", "eval"}
        assert all(d["dataset"]["digest"] for d in run["inputs"]["dataset_inputs"])
        loss = api(base, "metrics/get-history", run_id=run_id, metric_key="train/loss")["metrics"]
        assert len(loss) >= 2 and sorted(m["step"] for m in loss) == list(range(1, len(loss) + 1))
        if tags(trial)["study.scenario"] == "continual":  # one point per task
            mu = api(base, "metrics/get-history", run_id=run_id, metric_key="model_utility")["metrics"]
            assert sorted(m["step"] for m in mu) == [1, 2, 3]
        if tags(trial)["study.scenario"] == "fictitious":  # swept with system metrics on (conftest.SMOKE_SYSTEM_METRICS_S)
            cpu = api(base, "metrics/get-history", run_id=run_id, metric_key="system/cpu_utilization_percentage")["metrics"]
            assert len(cpu) >= 2
