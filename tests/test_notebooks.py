"""The three notebooks, executed end to end through papermill (``study.reporting.analysis.run_notebook``, a thin
wrapper over ``papermill.execute_notebook``; one test runs the ``papermill`` command itself).

* ``test_notebooks_are_committed_clean`` (fast): outputs stripped, a ``parameters`` cell with the
  parameters every notebook takes.
* ``test_notebooks_on_example_store`` (slow, ~1 min): the store of ``tests/test_analysis.py``
  (known numbers, so the tables are checked value by value).
* ``test_notebooks_on_smoke_studies`` (slow, a few minutes): real output of ``experiments/sweep.py
  --preset smoke`` for each scenario (a tiny random model; the session's shared ``smoke_store``).

Each executed notebook writes its tables (CSV) to ``tables_dir`` and its figures (PNG) to
``figures_dir``; the tests read those back.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from conftest import SMOKE_METHODS
from study.reporting import analysis as A

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {name: ROOT / "notebooks" / f"{name}.ipynb" for name in ("fictitious", "continual", "real_world")}
FIGURES = {"fictitious": ("mu_fe.png", "sensitivity.png"), "continual": ("continual.png",),
           "real_world": ("real_world_mu_fe.png",)}


def execute_all(tracking_uri: str, experiment: str, out: Path) -> dict[str, Path]:
    """Run every notebook against the store; returns the output directory of each."""
    dirs = {}
    for name, path in NOTEBOOKS.items():
        target = out / name
        A.run_notebook(path, {"tracking_uri": tracking_uri, "experiment": experiment,
                              "figures_dir": str(target / "figures"), "tables_dir": str(target / "tables")},
                       output_path=target / f"{name}.ipynb")
        dirs[name] = target
    return dirs


def read_table(directory: Path, name: str, levels: int = 1, index: int | list[int] = 0) -> pd.DataFrame:
    return pd.read_csv(directory / "tables" / name, header=list(range(levels)) if levels > 1 else 0, index_col=index)


def check_figures(dirs: dict[str, Path]) -> None:
    for name, files in FIGURES.items():
        for file in files:
            path = dirs[name] / "figures" / file
            assert path.exists(), f"{name} drew no {file}"
            assert path.stat().st_size > 5_000, f"{path} looks empty"


def test_notebooks_are_committed_clean():
    for name, path in NOTEBOOKS.items():
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: strip the outputs"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: one cell tagged 'parameters'"
        for variable in ("tracking_uri", "experiment", "figures_dir", "tables_dir", "pick", "export_dir", "studies"):
            assert f"{variable} = " in params[0].source, f"{name}: parameter {variable} missing"
        # papermill reads every assignment as a parameter (a second "=" on a line hides it from --help-notebook).
        from papermill.translators import PythonTranslator

        inferred = {p.name for p in PythonTranslator.inspect(params[0])}
        assigned = {line.split("=")[0].strip() for line in params[0].source.splitlines() if "=" in line}
        assert inferred == assigned, f"{name}: papermill sees {sorted(inferred)}"
        assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebooks_on_example_store(tmp_path):
    from test_analysis import write_example_store  # tests/ is on sys.path (pytest's rootdir-less import)

    uri, experiment = f"sqlite:///{tmp_path}/mlflow.db", "notebook-example"
    write_example_store(uri, experiment)
    dirs = execute_all(uri, experiment, tmp_path / "out")
    check_figures(dirs)

    main = read_table(dirs["fictitious"], "method_table.csv", levels=2)
    assert list(main.index) == ["GA+GD", "NPO+GD", "IDK+AP", "ME+GD"]
    assert list(main.columns) == [(s, m) for s in A.SPLITS for m in ("MU", "FE", "Avg")]
    assert main.loc["ME+GD", ("forget01", "MU")] == pytest.approx(0.70)  # Avg 0.79 beats 0.785 and 0.71
    assert main.loc["GA+GD", ("forget05", "FE")] == pytest.approx(0.85)
    metrics = read_table(dirs["fictitious"], "metric_table.csv", levels=2, index=[0, 1])
    assert len(metrics) == 6 and metrics.shape[1] == 4 * 6
    fq = read_table(dirs["fictitious"], "forget_quality_table.csv", levels=2)
    assert list(fq.index) == list(main.index)
    privacy = read_table(dirs["fictitious"], "privacy_table.csv", index=[0, 1])
    assert list(privacy.columns) == list(A.PRIVACY_COLUMNS) and len(privacy) == len(metrics)
    me = privacy.loc[("ME+GD", "forget01")]  # FE 0.88: AUC 1 - 0.88 / 2, PrivLeak (0.88 - 1) * 100, ES 1 - 0.88
    assert (me["mia_auc/mia_loss"], me["privleak/mia_loss"]) == (pytest.approx(0.56), pytest.approx(-12.0))
    assert me["forget/extraction_strength"] == pytest.approx(0.12) and math.isnan(me["mia_auc/mia_zlib"])
    assert privacy.loc[("GA+GD", "forget01")].isna().all()  # not logged: missing, not 0
    side = read_table(dirs["fictitious"], "generations.csv")
    assert side["target_generation"].str.startswith("target answer").all()

    last = read_table(dirs["continual"], "continual_table.csv", index=None)
    assert last[["method", "fix_ref_model"]].values.tolist() == [["NPO+GD", False], ["NPO+GD", True],
                                                                 ["ME+GD", False], ["ME+GD", True]]
    assert (last["last_task"] == 3).all()
    curves = read_table(dirs["continual"], "task_curves.csv", index=None)
    assert len(curves) == 12

    real = read_table(dirs["real_world"], "real_world_table.csv")
    assert list(real.index) == ["before unlearning", "GA+GD", "IDK+AP", "ME+GD"]
    assert list(real.columns) == ["MU", "FE", "Avg", "MU (quoted)", "FE (quoted)", "bench/mmlu"]
    assert real.loc["before unlearning", "MU"] == pytest.approx(0.61)


def venv_tool(name: str) -> Path:
    """A console script installed beside this interpreter (the project's ``.venv/bin``); skipped when
    absent (a failure under ``CI=true``)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {path.parent} (make setup installs it: the notebooks extra)")
    return path


def test_jupyter_lab_runs_from_the_venv():
    # `make setup` installs the notebooks extra: `.venv/bin/jupyter lab notebooks/` must start.
    result = subprocess.run([str(venv_tool("jupyter")), "lab", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    major = int(result.stdout.strip().split(".")[0])
    assert major >= 4, result.stdout


@pytest.mark.slow
def test_papermill_command_of_the_readme(tmp_path):
    """``papermill NOTEBOOK OUT -p tracking_uri ... -p experiment ...``, the README's command, as a
    subprocess from the repository root: the parameters land in papermill's injected cell and the
    notebook reads the store they name (the example store's known continual runs)."""
    from test_analysis import write_example_store

    uri, experiment = f"sqlite:///{tmp_path}/mlflow.db", "papermill-example"
    write_example_store(uri, experiment)
    out = tmp_path / "continual.ipynb"
    result = subprocess.run([str(venv_tool("papermill")), str(NOTEBOOKS["continual"]), str(out), "-p", "tracking_uri", uri,
                             "-p", "experiment", experiment, "-p", "tables_dir", str(tmp_path / "tables"), "--no-progress-bar"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    nb = nbformat.read(str(out), as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f"experiment = \"{experiment}\"" in injected[0].source
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1
    last = read_table(tmp_path, "continual_table.csv", index=None)
    assert last[["method", "fix_ref_model"]].values.tolist() == [["NPO+GD", False], ["NPO+GD", True],
                                                                 ["ME+GD", False], ["ME+GD", True]]


@pytest.mark.slow
def test_notebooks_on_empty_store_print_the_hint(tmp_path):
    nb = A.run_notebook(NOTEBOOKS["continual"], {"tracking_uri": f"sqlite:///{tmp_path}/none.db",
                                                 "experiment": "nothing-here", "tables_dir": str(tmp_path)})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "No continual runs in experiment 'nothing-here'" in text
    assert "experiments/sweep.py --preset smoke --scenario continual" in text
    assert pd.read_csv(tmp_path / "continual_table.csv").empty


@pytest.mark.slow
def test_notebooks_on_smoke_studies(smoke_store, tmp_path):
    store, experiment = smoke_store
    uri = f"sqlite:///{store}/mlflow.db"
    runs = A.fetch_runs(uri, experiment)
    dirs = execute_all(uri, experiment, tmp_path)
    check_figures(dirs)

    main = read_table(dirs["fictitious"], "method_table.csv", levels=2)
    assert list(main.index) == list(SMOKE_METHODS)
    assert list(main.columns) == [(s, m) for s in A.SPLITS for m in ("MU", "FE", "Avg")]
    assert main.notna().any(axis=1).all()  # each method has numbers on the split the smoke preset ran
    metrics = read_table(dirs["fictitious"], "metric_table.csv", levels=2, index=[0, 1])
    assert set(metrics.index.get_level_values(0)) == set(SMOKE_METHODS)
    assert metrics.shape[1] == 4 * 6 and metrics[["forget", "retain"]].notna().any(axis=None)
    side = read_table(dirs["fictitious"], "generations.csv", index=None)
    assert list(side.columns) == list(A.GENERATION_COLUMNS) and len(side) > 0

    last = read_table(dirs["continual"], "continual_table.csv", index=None)
    assert set(last["method"]) == set(SMOKE_METHODS)
    curves = read_table(dirs["continual"], "task_curves.csv", index=None)
    for _, run in curves.groupby("run_id"):
        assert run["task"].tolist() == list(range(1, len(run) + 1))  # one point per task, from task 1
    assert (last["last_task"] >= 2).all(), "continual smoke runs should cover more than one task"
    finished = A.finished(A.scenario_runs(runs, "continual"))
    assert set(last["run_id"]) <= set(finished["run_id"])

    real = read_table(dirs["real_world"], "real_world_table.csv")
    assert list(real.index) == ["before unlearning", *SMOKE_METHODS]
    assert list(real.columns[:5]) == ["MU", "FE", "Avg", "MU (quoted)", "FE (quoted)"]
    assert real.loc[list(SMOKE_METHODS), "MU"].notna().all()


MACHINE_PATH = re.compile(r"(?<![\w.])/(?:home|work|Users|root|mnt|scratch|private)/")
"""An absolute path of the machine a file was made on (``/tmp/...`` in an example command is not one)."""


def _results_folders_without_export() -> set[Path]:
    """Results folders still holding what the code before exports wrote (no ``export/provenance.json``)."""
    from study.reporting.exports import has_export

    return {p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir() and not has_export(p)}


def test_no_machine_path_in_committed_docs_and_notebooks():
    tracked = subprocess.run(["git", "ls-files", "docs", "notebooks"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout") if os.environ.get("CI") != "true" else pytest.fail("git ls-files found nothing")
    found = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".md", ".ipynb", ".csv", ".json", ".txt", ".toml", ".py") or not path.exists():
            continue
        found += [f"{name}: {m.group(0)}..." for m in MACHINE_PATH.finditer(path.read_text(errors="replace"))]
    assert not found, "absolute machine paths in committed files: " + "; ".join(found[:5])


def test_results_folders_with_an_export_show_their_study():
    """Every docs/results folder rebuilt from an export: the export reads back, the tables rebuild from it
    (its summary.csv names only runs in it), and each executed notebook shows the summary's numbers."""
    import json

    from study.reporting.exports import read_export
    from test_results import assert_shows_values

    folders = sorted(p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir() and p not in _results_folders_without_export())
    for folder in folders:
        export = read_export(folder)
        assert (export.runs["kind"] == "trial").any(), folder.name
        notebooks = sorted(folder.glob("*.ipynb"))  # sensitivity/ has an export and no notebook
        summary = pd.read_csv(folder / "summary.csv") if notebooks else None
        for notebook in notebooks:
            key = notebook.stem
            cells = json.loads(notebook.read_text())
            assert_shows_values(cells, summary[summary["scenario"] == {"real_world": "real-world"}.get(key, key)],
                                notebook.name)
            # A missing value is shown with its reason (study.reporting.analysis.with_reasons), never as a bare NaN.
            shown = [("".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", "")))
                     for c in cells["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
            assert not [t for t in shown if re.search(r"\bNaN\b", t)], f"{notebook.name} shows NaN"
