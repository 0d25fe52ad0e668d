"""The UIs a researcher opens on a smoke study, served on 127.0.0.1 and used as a person would: the MLflow UI
in a real browser (Chromium through Playwright) from the README's link, and optuna-dashboard through its
HTTP API. Expected values come from the stores themselves (MLflow's client, Optuna's Pareto front).

Chromium: the distribution's (``make setup`` installs it; ``$CHROMIUM`` names another). Outside CI a
missing browser or Playwright skips the browser test; under ``CI=true`` the skip is a failure naming it.
``$UI_SCREENSHOTS``: a folder for the runs view's and a trial's metrics tab's screenshots (else the test's
temporary folder)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(argv: list[str], url: str, env: dict | None = None, timeout: float = 120):
    """A server process started with ``argv``, until ``url`` answers 200 (at most ``timeout`` s); stopped
    (SIGTERM, then SIGKILL) when the block ends."""
    log = open(os.devnull, "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{argv[0]} exited {process.returncode}"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
            time.sleep(1)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(timeout=20)
        log.close()


def readme_link(view: str) -> str:
    """The README's MLflow UI link of ``view`` (``trials``; ``pareto`` is the same with its key)."""
    (link,) = set(re.findall(r"http://127\.0\.0\.1:5000/#/experiments/1/runs\?\S*viewStateShareKey=trials\S*",
                             (ROOT / "README.md").read_text()))
    return link.replace("viewStateShareKey=trials", f"viewStateShareKey={view}")


def test_the_readme_link_is_the_one_sweep_prints():
    from study.config import DEFAULT_TRACKING_URI
    from study.trial.tracking import ui_url

    assert readme_link("trials") == ui_url(DEFAULT_TRACKING_URI, "1")
    assert readme_link("pareto") == ui_url(DEFAULT_TRACKING_URI, "1", "pareto")


def _chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]')")
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (apt-get install chromium; make setup does it), nor named by $CHROMIUM")
    return path


def test_mlflow_ui_in_a_browser_lands_on_the_trials_and_the_pareto_filter_leads_to_registered_versions(smoke_store, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    store, experiment = smoke_store
    uri = f"sqlite:///{store}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    trials = client.search_runs([experiment_id], "tags.`study.kind` = 'trial'", max_results=1000)
    storage = f"sqlite:///{store}/optuna.db"
    front = set()
    for summary in optuna.get_all_study_summaries(storage):
        if "#" not in summary.study_name:  # a claim, not a study
            front |= {t.user_attrs["mlflow_run_id"] for t in optuna.load_study(study_name=summary.study_name,
                                                                                storage=storage).best_trials}
    assert trials and front
    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def link(view: str) -> str:
        return readme_link(view).replace("http://127.0.0.1:5000", base).replace("/experiments/1/", f"/experiments/{experiment_id}/")

    # The README's light command, on a free port.
    argv = [str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with served(argv, f"{base}/health", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(link("trials"))
        # Every trial, flat (not folded under its study), by a name that says method, number and values
        # (studies of other scenarios may repeat a name: as many rows as runs).
        names = Counter(run.info.run_name for run in trials)
        for name, count in names.items():
            expect(page.get_by_text(name, exact=True)).to_have_count(count)
        assert page.get_by_role("button", name="Model training").count() + page.get_by_text("Model training").count() > 0
        for column in ("model_utility", "forget_efficacy", "study.pareto"):
            expect(page.get_by_text(column, exact=True).first).to_be_visible()
        best = max(trials, key=lambda r: r.data.metrics["forget_efficacy"])
        expect(page.get_by_text(f"{best.data.metrics['forget_efficacy']:.6f}"[:7]).first).to_be_visible()
        with contextlib.suppress(Exception):  # MLflow opens its assistant panel on a first visit
            page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]').first.click(timeout=3000)
        page.screenshot(path=str(shots / "mlflow_runs_view.png"))

        # The Pareto filter: exactly Optuna's front.
        page.goto(link("pareto"))
        by_id = {r.info.run_id: r for r in trials}
        best_names = Counter(by_id[run_id].info.run_name for run_id in front)
        for name in names:
            expect(page.get_by_text(name, exact=True)).to_have_count(best_names.get(name, 0))
        # ... to a trial, and from it to its registered version, which carries its Pareto alias.
        first = by_id[sorted(front)[0]].info.run_name
        page.get_by_text(first, exact=True).first.click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f]{32}"))
        chosen = by_id[re.search(r"/runs/([0-9a-f]{32})", page.url).group(1)]
        assert chosen.info.run_id in front and chosen.info.run_name == first
        (version,) = client.search_model_versions(f"run_id = '{chosen.info.run_id}'")
        page.locator(f'a[href*="/models/{version.name}/versions/{version.version}"]').first.click()
        page.wait_for_url(re.compile(f"/models/{re.escape(version.name)}/versions/{version.version}"))
        expect(page.get_by_text(f"pareto-trial-{chosen.data.tags['study.trial_number']}").first).to_be_visible()

        # A trial's metrics tab, for the record: the training curves' section is there.
        page.goto(f"{base}/#/experiments/{experiment_id}/runs/{chosen.info.run_id}/model-metrics")
        expect(page.get_by_text("train", exact=True).first).to_be_visible()
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots / "mlflow_trial_metrics.png"))
        browser.close()


def test_optuna_dashboard_serves_the_studies(smoke_store):
    """``optuna-dashboard`` (the README's line) on the smoke studies: one study per method, with the
    objective names the sweep set, and each study's Pareto front the one Optuna computes."""
    import json

    import optuna

    store, _ = smoke_store
    storage = f"sqlite:///{store}/optuna.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with served([str(BIN / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)], f"{base}/api/studies"):
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as answer:
            studies = json.load(answer)["study_summaries"]
        names = {s["study_name"]: s for s in studies}
        fictitious = "smoke-fictitious-forget01-tiny-llama"
        for method in ("GA+GD", "ME+GD"):
            summary = names[f"{fictitious}/{method}"]
            with urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=30) as answer:
                detail = json.load(answer)
            assert detail["objective_names"] == ["model_utility", "forget_efficacy"]
            expected = {t.number for t in optuna.load_study(study_name=f"{fictitious}/{method}", storage=storage).best_trials}
            assert {t["number"] for t in detail["best_trials"]} == expected
