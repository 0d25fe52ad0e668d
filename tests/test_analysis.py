"""Tests of study.reporting.analysis: tables, Pareto fronts and sensitivity on hand-made runs frames (no MLflow),
then a small MLflow store written with study.trial.tracking.Tracker and read back.

``write_example_store`` builds that store; ``tests/test_notebooks.py`` executes the notebooks on it.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from study.reporting import analysis as A  # noqa: E402
from study.evaluation.metrics import METRICS, MIA_LOSS, mia_auc_key, privleak_key  # noqa: E402

EXPERIMENT = "analysis-test"

# ---------------------------------------------------------------------------- hand-made runs

PAPER = {"lr": 1e-5, "epochs": 5.0, "forget_coeff": 1.0, "regularization_coeff": 1.0, "beta": 0.1}


def trial(run_id: str, method: str, split: str, mu: float, fe: float, number: int, status: str = "FINISHED",
          scenario: str = "fictitious", **params) -> dict:
    return {"run_id": run_id, "status": status, "scenario": scenario, "method": method, "split": split,
            "trial_number": number, "start_time": pd.Timestamp("2025-01-01") + pd.Timedelta(minutes=number),
            "model_utility": mu, "forget_efficacy": fe, **{**PAPER, **params}}


@pytest.fixture()
def runs() -> pd.DataFrame:
    return A.runs_frame([
        # GA+GD forget01: t1 has the best Avg among finished trials (0.65); t2 is better but pruned.
        trial("ga0", "GA+GD", "forget01", 0.5, 0.6, 0),
        trial("ga1", "GA+GD", "forget01", 0.7, 0.6, 1, lr=5e-5),
        trial("ga2", "GA+GD", "forget01", 0.9, 0.9, 2, status="KILLED"),
        trial("ga3", "GA+GD", "forget01", math.nan, math.nan, 3, status="FAILED"),
        trial("me0", "ME+GD", "forget01", 0.8, 0.9, 0, forget_coeff=0.1),
        trial("me1", "ME+GD", "forget05", 0.6, 0.8, 1, forget_coeff=0.1),
        trial("npo0", "NPO+KL", "forget01", 0.4, 0.4, 0),
        # Methods outside the paper's nine go last, alphabetically, even when they sort earlier.
        trial("x0", "XYZ+GD", "forget01", 0.3, 0.3, 0),
        trial("a0", "AAA+GD", "forget10", 0.2, 0.2, 0),
        # Another scenario's run is not part of the fictitious table once filtered.
        trial("c0", "GA+GD", "forget01", 0.1, 0.1, 0, scenario="continual"),
    ])


@pytest.fixture()
def fictitious(runs) -> pd.DataFrame:
    return A.scenario_runs(runs, "fictitious")


def test_method_table_picks_best_finished_trial_and_orders_methods(fictitious):
    table = A.method_table(fictitious)
    assert list(table.index) == ["GA+GD", "NPO+KL", "ME+GD", "AAA+GD", "XYZ+GD"]
    assert list(table.columns) == [(s, m) for s in ("forget01", "forget05", "forget10") for m in ("MU", "FE", "Avg")]
    # ga1 (Avg 0.65) beats ga0 (0.55); the pruned ga2 and the failed ga3 are not candidates.
    assert table.loc["GA+GD", ("forget01", "MU")] == pytest.approx(0.7)
    assert table.loc["GA+GD", ("forget01", "Avg")] == pytest.approx(0.65)
    assert table.loc["ME+GD", ("forget05", "FE")] == pytest.approx(0.8)
    assert math.isnan(table.loc["ME+GD", ("forget10", "MU")])
    assert table.loc["AAA+GD", ("forget10", "Avg")] == pytest.approx(0.2)
    reps = A.representative_trials(fictitious)
    assert reps.set_index(["method", "split"]).loc[("GA+GD", "forget01"), "run_id"] == "ga1"
    assert reps.set_index(["method", "split"]).loc[("GA+GD", "forget01"), "n_trials"] == 2


def test_method_table_paper_pick_keeps_released_settings(fictitious):
    table = A.method_table(fictitious, pick="paper")
    # ga1 ran at lr 5e-5, so the paper view shows ga0; ME+GD's released α is 0.1 on TOFU.
    assert table.loc["GA+GD", ("forget01", "MU")] == pytest.approx(0.5)
    assert table.loc["ME+GD", ("forget01", "FE")] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="unknown pick"):
        A.method_table(fictitious, pick="worst")


def test_median_pick_shows_a_reproductions_typical_seed_not_its_best():
    """Five seeds of one method at one setting: "median" takes the seed whose Avg is the middle one, two
    seeds the lower one; "best" would take the luckiest seed."""
    avgs = {1001: 0.30, 1002: 0.70, 1003: 0.50, 1004: 0.90, 1005: 0.10}
    seeded = A.runs_frame([trial(f"s{seed}", "ME+GD", "forget01", avg, avg, i) for i, (seed, avg) in enumerate(avgs.items())])
    median = A.representative_trials(seeded, pick="median")
    assert median[["run_id", "Avg", "n_trials"]].values.tolist() == [["s1003", pytest.approx(0.5), 5]]
    assert A.representative_trials(seeded, pick="best")["run_id"].tolist() == ["s1004"]
    two = seeded[seeded["run_id"].isin(["s1001", "s1002"])]
    assert A.method_table(two, pick="median").loc["ME+GD", ("forget01", "MU")] == pytest.approx(0.3)


def test_paper_settings_follow_reference_section_4():
    assert A.paper_settings("fictitious", "ME+GD")["forget_coeff"] == (0.1,)
    assert A.paper_settings("continual", "ME+GD")["forget_coeff"] == (1.0,)
    assert A.paper_settings("real-world", "ME+GD")["lr"] == (5e-6,)
    assert A.paper_settings("real-world", "NPO+GD")["epochs"] == (5.0, 3.0)


def test_published_table_has_five_methods_by_three_splits():
    table = A.published_table()
    assert list(table.index) == ["GA+GD", "NPO+GD", "DPO+GD", "IDK+AP", "ME+GD"]  # the paper's order
    assert table.shape == (5, 9)
    assert table.loc["ME+GD", ("forget10", "FE")] == 0.949
    assert table.loc["DPO+GD", ("forget05", "MU")] == 0.0
    assert table.loc["IDK+AP", ("forget01", "Avg")] == pytest.approx((0.758 + 0.763) / 2)
    assert not table.isna().any().any()


def test_compare_to_published_puts_each_number_beside_its_counterpart(fictitious):
    both = A.compare_to_published(A.method_table(fictitious))
    assert list(both.columns[:4]) == [("forget01", "MU", "this study"), ("forget01", "MU", "DualOptim re-run"),
                                      ("forget01", "FE", "this study"), ("forget01", "FE", "DualOptim re-run")]
    assert list(both.index) == ["GA+GD", "NPO+GD", "NPO+KL", "DPO+GD", "IDK+AP", "ME+GD", "AAA+GD", "XYZ+GD"]
    assert both.loc["GA+GD", ("forget01", "MU", "DualOptim re-run")] == 0.670
    assert both.loc["GA+GD", ("forget01", "MU", "this study")] == pytest.approx(0.7)


def test_metric_and_forget_quality_tables_use_the_representative_trial(fictitious):
    frame = fictitious.copy()
    frame.loc[frame["run_id"] == "ga1", "retain/rouge"] = 0.42
    frame.loc[frame["run_id"] == "ga0", "retain/rouge"] = 0.99
    frame.loc[frame["run_id"] == "ga1", "forget_quality"] = 1e-3
    metrics = A.metric_table(frame)
    assert metrics.index.names == ["method", "split"]
    assert metrics.columns.names == ["set", "metric"]
    assert list(metrics.columns.get_level_values("set").unique()) == ["forget", "retain", "real_authors", "world_facts"]
    assert list(metrics.columns.get_level_values("metric").unique()) == list(METRICS)
    assert metrics.loc[("GA+GD", "forget01"), ("retain", "rouge")] == pytest.approx(0.42)
    assert len(metrics) == 6  # GA+GD, NPO+KL, ME+GD x2, AAA+GD, XYZ+GD
    fq = A.forget_quality_table(frame)
    assert list(fq.columns.get_level_values("measure").unique()) == ["FQ", "TOFU MU"]
    assert fq.loc["GA+GD", ("forget01", "FQ")] == pytest.approx(1e-3)


def test_privacy_table_reads_the_representative_trial_and_leaves_missing_values_missing(fictitious):
    frame = fictitious.copy()
    for run_id, auc, leak in (("ga1", 0.8, 0.25), ("ga0", 0.1, -0.5)):
        frame.loc[frame["run_id"] == run_id, "mia_auc/mia_min_k"] = auc
        frame.loc[frame["run_id"] == run_id, "privleak/mia_min_k"] = leak
    frame.loc[frame["run_id"] == "ga1", "forget/extraction_strength"] = 0.0  # a real zero stays zero
    frame.loc[frame["run_id"] == "me0", "forget/extraction_strength"] = 0.3
    table = A.privacy_table(frame)
    assert list(table.columns) == list(A.PRIVACY_COLUMNS) and table.index.names == ["method", "split"]
    assert list(table.index) == list(A.metric_table(frame).index)  # the same trials as the metric table
    assert table.loc[("GA+GD", "forget01"), "mia_auc/mia_min_k"] == pytest.approx(0.8)  # ga1, not ga0
    assert table.loc[("GA+GD", "forget01"), "privleak/mia_min_k"] == pytest.approx(0.25)
    assert table.loc[("GA+GD", "forget01"), "forget/extraction_strength"] == 0.0
    assert table.loc[("ME+GD", "forget01"), "forget/extraction_strength"] == pytest.approx(0.3)
    # Not logged (no holdout set, or a run from before these metrics): NaN, never 0.
    assert math.isnan(table.loc[("ME+GD", "forget01"), "mia_auc/mia_min_k"])
    assert math.isnan(table.loc[("GA+GD", "forget01"), "mia_auc/mia_loss"])
    assert table.loc[("NPO+KL", "forget01")].isna().all()
    assert A.privacy_table(A.runs_frame([])).shape == (0, len(A.PRIVACY_COLUMNS))
    assert "eval.holdout=true" in A.PRIVACY_NOT_LOGGED


def test_pareto_front_is_exactly_the_non_dominated_points():
    points = pd.DataFrame({
        "name": ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"],
        "model_utility": [0.1, 0.3, 0.3, 0.2, 0.6, 0.9, 0.3, 0.05, 0.5, np.nan],
        "forget_efficacy": [0.9, 0.7, 0.6, 0.5, 0.4, 0.1, 0.7, 0.9, 0.4, 1.0],
    })
    # Worked by hand: p3 (same MU as p2, lower FE) and p4 are dominated by p2; p8 (same FE as p1,
    # lower MU) by p1; p9 by p5; p10 has no MU. p7 duplicates p2: identical points don't dominate.
    front = A.pareto_front(points)
    assert list(front["name"]) == ["p1", "p2", "p7", "p5", "p6"]
    assert A.pareto_front(points.iloc[[2]])["name"].tolist() == ["p3"]
    assert A.pareto_front(points.iloc[:0]).empty


def test_sensitivity_frame_has_one_row_per_trial_param_and_outcome(fictitious):
    frame = A.sensitivity(fictitious)
    n_finished = len(A.finished(fictitious))  # 7: ga0, ga1, me0, me1, npo0, x0, a0
    assert n_finished == 7
    # β only where the method has it: NPO+KL, and the two methods this version does not know (every
    # parameter they logged is kept, their epochs too; no known method searches epochs).
    assert set(frame.loc[frame["param"] == "beta", "run_id"]) == {"npo0", "x0", "a0"}
    assert set(frame.loc[frame["param"] == "epochs", "run_id"]) == {"x0", "a0"}
    assert frame.shape == ((n_finished * 2 + 3 + 2) * 2, len(A.SENSITIVITY_COLUMNS))
    assert set(frame["param"]) == {"lr", "forget_coeff", "beta", "epochs"}
    assert set(frame["outcome"]) == {"MU", "FE"}
    row = frame[(frame["run_id"] == "ga1") & (frame["param"] == "lr") & (frame["outcome"] == "MU")]
    assert row["value"].item() == 5e-5 and row["score"].item() == pytest.approx(0.7)
    fig = A.plot_sensitivity(frame)
    assert fig is not None and len(fig.axes) == 8  # MU and FE against each of the four parameters


def test_sensitivity_reads_an_export_written_before_a_parameter_was_read(fictitious):
    """Runs frames from older exports lack the newer parameter columns (gamma, rmu_*): they are skipped."""
    older = fictitious.drop(columns=["gamma", "rmu_layer", "rmu_steering_coeff", "rmu_alpha"])
    frame = A.sensitivity(older)
    assert set(frame["param"]) == {"lr", "forget_coeff", "beta", "epochs"}


def test_continual_table_takes_last_task_of_best_run():
    curves = pd.DataFrame({
        "run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2 + ["d"] * 3,
        "method": ["NPO+GD"] * 8 + ["ME+GD"] * 3,
        "fix_ref_model": [False] * 3 + [False] * 3 + [False] * 2 + [True] * 3,
        "split": "forget01",
        "task": [1, 2, 3, 1, 2, 3, 1, 2, 1, 2, 3],
        "model_utility": [0.6, 0.4, 0.2, 0.6, 0.5, 0.45, 0.9, 0.9, 0.7, 0.7, 0.68],
        "forget_efficacy": [0.6, 0.7, 0.8, 0.6, 0.6, 0.65, 0.9, 0.9, 0.9, 0.9, 0.93],
    })
    table = A.continual_table(curves)
    assert list(table.columns) == list(A.CONTINUAL_COLUMNS)
    # NPO+GD: c stopped at task 2; of a (Avg 0.5) and b (0.55) at task 3, b is kept. ME+GD comes after.
    assert table[["method", "run_id", "last_task"]].values.tolist() == [["NPO+GD", "b", 3], ["ME+GD", "d", 3]]
    fig = A.plot_continual(curves)
    assert fig is not None and len(fig.axes) == 2
    # Both reference kinds drawn: the two methods and the two line styles in the one legend, beside the panels.
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "NPO+GD", "ME+GD", "reference: each task's start", "reference: fixed (--fix-ref-model)"]
    only_moving = A.plot_continual(curves[~curves["fix_ref_model"]])
    assert [t.get_text() for t in only_moving.legends[0].get_texts()] == ["NPO+GD"]
    # The MU before unlearning: a level across the MU panel only, named in the legend with its value.
    with_target = A.plot_continual(curves[~curves["fix_ref_model"]], target_mu=0.55)
    levels = [line for line in with_target.axes[0].lines if len(set(line.get_ydata())) == 1 and line.get_ydata()[0] == 0.55]
    assert len(levels) == 1 and not [line for line in with_target.axes[1].lines if 0.55 in line.get_ydata()]
    assert [t.get_text() for t in with_target.legends[0].get_texts()] == ["NPO+GD", "before unlearning (MU 0.550)"]
    # Runs that evaluated the earlier tasks' forget sets (eval.earlier_tasks) get a third panel, with the
    # values drawn where they exist (from task 2 on).
    earlier = curves.assign(**{A.EARLIER_ROUGE: [float("nan"), 0.2, 0.3] * 2 + [float("nan"), 0.1]
                               + [float("nan"), 0.4, 0.5]})
    fig = A.plot_continual(earlier)
    assert len(fig.axes) == 3 and "earlier tasks" in fig.axes[2].get_ylabel()
    drawn = {tuple(line.get_ydata()[~np.isnan(line.get_ydata())]) for line in fig.axes[2].lines}
    assert drawn == {(0.2, 0.3), (0.4, 0.5)}  # b and d, the representative runs


def test_continual_over_seeds_draws_the_mean_of_each_seeds_run_not_the_best_seed():
    """A reproduction's continual figure: each seed's representative run (its best Avg at the last task),
    then their mean per task with the seeds' range as a band; never the luckiest seed alone."""
    curves = pd.DataFrame({
        "run_id": ["a1", "a1", "b1", "b1", "c2", "c2"],
        "method": "ME+GD", "fix_ref_model": False, "split": "forget01",
        "seed": [1001.0] * 4 + [1002.0] * 2,
        "task": [1, 2] * 3,
        "model_utility": [0.4, 0.2, 0.1, 0.1, 0.6, 0.4],
        "forget_efficacy": [0.7, 0.8, 0.6, 0.6, 0.9, 0.9],
    })
    table = A.continual_table(curves)
    # seed 1001: a1 (Avg 0.5 at task 2) over b1 (0.35); seed 1002: its one run
    assert table[["seed", "run_id", "model_utility"]].values.tolist() == [[1001.0, "a1", 0.2], [1002.0, "c2", 0.4]]
    fig = A.plot_continual(curves)
    mu = fig.axes[0]
    assert [list(line.get_ydata()) for line in mu.lines] == [pytest.approx([0.5, 0.3])]  # (0.4+0.6)/2, (0.2+0.4)/2
    band = mu.collections[0].get_paths()[0].vertices[:, 1]
    assert (band.min(), band.max()) == (pytest.approx(0.2), pytest.approx(0.6))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ME+GD", "mean over seeds", "lowest to highest seed"]
    one_seed = A.plot_continual(curves[curves["seed"] == 1002.0])
    assert not one_seed.axes[0].collections and len(one_seed.legends[0].get_texts()) == 1


def test_curves_carry_the_study_names_seed():
    names = pd.Series(["repro-tofu-cpu-continual-tasks1-4-s1002/ME+GD", "sens-default-fictitious-forget01-s7/RMU", "my-sweep/ME+GD", None])
    seeds = A.name_seeds(names)
    assert seeds.iloc[:2].tolist() == [1002.0, 7.0] and seeds.iloc[2:].isna().all()


def test_real_world_table_has_quoted_figures_and_benchmark_placeholder():
    frame = A.runs_frame([
        trial("r0", "ME+GD", "real-world", 0.5, 0.9, 0, scenario="real-world"),
        trial("r1", "GA+GD", "real-world", 0.3, 0.8, 0, scenario="real-world"),
    ])
    table = A.real_world_table(frame)
    assert list(table.index) == ["before unlearning", "GA+GD", "ME+GD"]
    assert list(table.columns) == ["MU", "FE", "Avg", "MU (quoted)", "FE (quoted)", "benchmarks"]
    assert table.loc["before unlearning", "MU (quoted)"] == 0.6145
    assert table.loc["ME+GD", "FE (quoted)"] == 0.9312
    assert math.isnan(table.loc["GA+GD", "MU (quoted)"])
    assert (table["benchmarks"] == "not run").all()
    frame["bench/mmlu"] = [0.61, 0.55]
    with_bench = A.real_world_table(frame)
    assert "benchmarks" not in with_bench.columns
    assert with_bench.loc["ME+GD", "bench/mmlu"] == pytest.approx(0.61)


def test_every_table_is_empty_with_its_columns_when_there_are_no_runs():
    empty = A.runs_frame([])
    assert list(empty.columns[:len(A.RUN_COLUMNS)]) == list(A.RUN_COLUMNS)
    assert set(A.SET_METRIC_COLUMNS) <= set(empty.columns)
    table = A.method_table(empty)
    assert table.empty and table.shape == (0, 9)
    assert A.metric_table(empty).shape == (0, 4 * 6)
    assert A.forget_quality_table(empty).shape == (0, 6)
    assert list(A.representative_trials(empty).columns) == list(A.REPRESENTATIVE_COLUMNS)
    assert list(A.sensitivity(empty).columns) == list(A.SENSITIVITY_COLUMNS) and A.sensitivity(empty).empty
    curves = A.fetch_task_curves("sqlite:////nonexistent/mlflow.db", empty)
    assert list(curves.columns) == list(A.CURVE_COLUMNS) and curves.empty
    assert list(A.continual_table(curves).columns) == list(A.CONTINUAL_COLUMNS)
    rw = A.real_world_table(empty)
    assert rw.empty and list(rw.columns) == ["MU", "FE", "Avg", "MU (quoted)", "FE (quoted)", "benchmarks"]
    assert A.run_counts(empty).empty
    assert A.pareto_front(empty).empty
    assert A.plot_mu_fe(empty) is None and A.plot_mu_fe_grid(empty) is None
    assert A.plot_continual(curves) is None and A.plot_sensitivity(A.sensitivity(empty)) is None
    assert A.choose_trial(empty) is None
    assert A.save_figure(None, "/nonexistent", "x.png") is None


def test_plot_mu_fe_draws_points_and_one_front_per_method(fictitious):
    ax = A.plot_mu_fe(fictitious[fictitious["split"] == "forget01"])
    assert ax is not None
    methods = A.order_methods(A.finished(fictitious[fictitious["split"] == "forget01"])["method"])
    fronts = [line for line in ax.lines if line.get_gid() == A.FRONT_GID]
    assert len(fronts) == len(methods)  # one step line per method
    ga = fronts[0]  # GA+GD: ga0 (0.5, 0.6) is dominated by ga1 (0.7, 0.6)
    assert list(ga.get_xdata()) == [0.7] and list(ga.get_ydata()) == [0.6]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 5  # ga0, ga1, me0, npo0, x0


def test_figures_say_their_seeds_and_scale_and_a_fixed_setting_gets_one_tick():
    runs = A.runs_frame([
        {"run_id": f"r{s}{m}", "status": "FINISHED", "kind": "trial", "method": m, "split": "forget01",
         "model": "smollm2-135m", "study_name": f"repro-default-fictitious-forget01-s{s}/{m}", "lr": 1e-4,
         "forget_coeff": 1.0, "model_utility": 0.3, "forget_efficacy": 0.5} for s in (1001, 1002) for m in ("GA+GD", "ME+GD")])
    fig = A.plot_mu_fe_grid(runs)
    assert fig.axes[0].get_title() == "forget01\n4 trials, seeds 1001, 1002, smollm2-135m"
    sens = A.plot_sensitivity(A.sensitivity(runs))
    lr_axis = sens.axes[0]
    assert [t.get_text() for t in lr_axis.get_xticklabels()] == ["0.0001"]


def test_method_palette_is_stable_across_frames():
    assert A.method_palette(["ME+GD"])["ME+GD"] == A.method_palette(["GA+GD", "ME+GD", "ZZ+GD"])["ME+GD"]


def test_resolve_tracking_uri_anchors_relative_sqlite_paths(tmp_path):
    assert A.resolve_tracking_uri("sqlite:///mlruns/mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert A.resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert A.resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


# ---------------------------------------------------------------------------- an MLflow store

SETS_TOFU = ("forget", "retain", "real_authors", "world_facts")
SETS_REAL = ("forget", "neighbor")


def _set_metrics(mu: float, fe: float, sets: tuple[str, ...]) -> dict[str, float]:
    """Per-set values consistent with the aggregates: every forget FE metric = 1 - FE (so
    FE = 1 - their mean) and every utility metric = MU (so their harmonic mean is MU)."""
    out = {}
    for s in sets:
        for m in METRICS:
            out[f"{s}/{m}"] = (0.8 if m == "token_entropy" else 1 - fe) if s == "forget" else mu
    return out


def _items(sets: tuple[str, ...], tag: str, n: int = 3) -> pd.DataFrame:
    rows = [{"set": s, "item": i, "question": f"{s} question {i}?", "generation": f"{tag} answer {i}",
             "reference": f"true answer {i}", **{m: 0.5 for m in METRICS}} for s in sets for i in range(n)]
    return pd.DataFrame(rows)


# (scenario, split, method, fix_ref_model, trials); a trial is (status, lr, forget_coeff, MU per task, FE per task).
EXAMPLE_TRIALS = [
    ("fictitious", "forget01", "GA+GD", False, [("FINISHED", 1e-5, 1.0, [0.55], [0.62]),
                                                ("FINISHED", 3e-5, 1.0, [0.48], [0.80]),
                                                ("FINISHED", 5e-6, 1.0, [0.60], [0.45]),
                                                ("KILLED", 5e-5, 1.0, [0.20], [0.90])]),
    ("fictitious", "forget01", "NPO+GD", False, [("FINISHED", 1e-5, 1.0, [0.58], [0.66]),
                                                 ("FAILED", 2e-5, 1.0, [], [])]),
    ("fictitious", "forget01", "IDK+AP", False, [("FINISHED", 1e-5, 1.0, [0.74], [0.70]),
                                                 ("FINISHED", 2e-5, 1.0, [0.69], [0.76])]),
    ("fictitious", "forget01", "ME+GD", False, [("FINISHED", 1e-5, 0.1, [0.70], [0.88]),
                                                ("FINISHED", 2e-5, 0.5, [0.64], [0.93]),
                                                ("FINISHED", 5e-6, 0.1, [0.72], [0.70])]),
    ("fictitious", "forget05", "GA+GD", False, [("FINISHED", 1e-5, 1.0, [0.05], [0.85])]),
    ("fictitious", "forget05", "ME+GD", False, [("FINISHED", 1e-5, 0.1, [0.71], [0.91])]),
    ("continual", "forget01", "NPO+GD", False, [("FINISHED", 1e-5, 1.0, [0.60, 0.30, 0.10], [0.60, 0.80, 0.90])]),
    ("continual", "forget01", "NPO+GD", True, [("FINISHED", 1e-5, 1.0, [0.62, 0.55, 0.50], [0.60, 0.70, 0.75])]),
    ("continual", "forget01", "ME+GD", False, [("FINISHED", 1e-5, 1.0, [0.70, 0.68, 0.66], [0.90, 0.92, 0.93])]),
    ("continual", "forget01", "ME+GD", True, [("FINISHED", 1e-5, 1.0, [0.71, 0.69, 0.67], [0.90, 0.91, 0.93])]),
    ("real-world", "real-world", "GA+GD", False, [("FINISHED", 1e-5, 1.0, [0.45], [0.80])]),
    ("real-world", "real-world", "ME+GD", False, [("FINISHED", 5e-6, 0.5, [0.49], [0.93])]),
    ("real-world", "real-world", "IDK+AP", False, [("FINISHED", 1e-5, 1.0, [0.53], [0.70])]),
]


def write_example_store(tracking_uri: str, experiment: str = EXPERIMENT) -> dict[str, list[str]]:
    """A small store with the layout of study.trial.tracking: a target run per scenario (with
    ``eval/items.csv``), a study run per (scenario, split, method, fix_ref_model) and its nested
    trials (params, tags, metrics at ``step = task``, ``eval/items_task<k>.csv``). Returns the trial
    run ids per scenario."""
    from study.trial.tracking import Tracker

    tracker = Tracker(tracking_uri, experiment)
    targets = {}
    for scenario in ("fictitious", "continual", "real-world"):
        sets = SETS_REAL if scenario == "real-world" else SETS_TOFU
        run = tracker.start(f"target-{scenario}", "target", {"study.scenario": scenario, "study.model": "tiny-llama"})
        tracker.table_artifact(run, "eval/items.csv", _items(sets, "target"))
        if scenario == "real-world":
            tracker.metrics(run, {"model_utility": 0.61, "forget_efficacy": 0.2, "bench/mmlu": 0.62})
        tracker.end(run)
        targets[scenario] = run
    ids: dict[str, list[str]] = {"fictitious": [], "continual": [], "real-world": []}
    for scenario, split, method, fix, trials in EXAMPLE_TRIALS:
        sets = SETS_REAL if scenario == "real-world" else SETS_TOFU
        name = f"{scenario}-{split}-{method}" + ("-fixref" if fix else "")
        common = {"study.scenario": scenario, "study.method": method, "study.split": split, "study.model": "tiny-llama",
                  "study.study_name": name}
        parent = tracker.start(name, "study", common)
        for number, (status, lr, alpha, mus, fes) in enumerate(trials):
            tasks = list(range(1, len(mus) + 1)) or [1]
            run = tracker.start(f"{name}-t{number}", "trial", {
                **common, "study.trial_number": number, "study.task": ",".join(map(str, tasks)),
                "study.entailment": "available", "study.target_run_id": targets[scenario]}, parent=parent)
            tracker.params(run, {
                "method.name": method, "method.forget_coeff": alpha, "method.regularization_coeff": 1.0,
                "method.beta": 0.1, "method.fix_ref_model": fix, "train.lr": lr, "train.epochs": 5,
                "data.scenario": scenario, "data.split": "forget01" if scenario == "real-world" else split,
                "data.tasks": tasks, "model.name": "tiny-llama"})
            tracker.metrics(run, {"train/loss": 1.0}, step=1)
            for task, (mu, fe) in enumerate(zip(mus, fes), start=1):
                values = {"model_utility": mu, "forget_efficacy": fe, "forget_quality": 10 ** (-4 * fe),
                          "model_utility_retain": mu, "tofu_model_utility": mu, **_set_metrics(mu, fe, sets)}
                if scenario == "real-world":
                    values["bench/mmlu"] = 0.6 * mu / 0.5
                if scenario == "fictitious" and method == "ME+GD":  # run with eval.holdout: privacy metrics
                    # AUC 1 - fe/2 against a retain model's 0.5: MUSE's PrivLeak (0.5 - AUC) / 0.5 * 100.
                    values.update({mia_auc_key(MIA_LOSS): 1 - fe / 2, privleak_key(MIA_LOSS): (fe - 1) * 100,
                                   "forget/extraction_strength": 1 - fe})
                tracker.metrics(run, values, step=task)
                items = _items(sets, f"{method} t{number} task{task}")
                tracker.table_artifact(run, f"eval/items_task{task}.csv", items)
            tracker.end(run, status, reason="example failure" if status == "FAILED" else None)
            ids[scenario].append(run)
        tracker.end(parent)
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, write_example_store(uri)


def test_fetch_runs_reads_trials_back(store):
    uri, ids = store
    runs = A.fetch_runs(uri, EXPERIMENT)
    assert set(runs["run_id"]) == {i for group in ids.values() for i in group}
    assert list(runs.columns[:len(A.RUN_COLUMNS)]) == list(A.RUN_COLUMNS)
    assert "bench/mmlu" in runs.columns and not any(c.startswith("train/") for c in runs.columns)
    me = runs[(runs["scenario"] == "fictitious") & (runs["method"] == "ME+GD") & (runs["split"] == "forget01")]
    first = me.sort_values("trial_number").iloc[0]
    assert first["trial_number"] == 0 and first["status"] == "FINISHED"
    assert first["lr"] == 1e-5 and first["forget_coeff"] == 0.1 and first["beta"] == 0.1 and first["epochs"] == 5
    assert first["model_utility"] == pytest.approx(0.70) and first["forget/rouge"] == pytest.approx(0.12)
    assert first["fix_ref_model"] is False or first["fix_ref_model"] == False  # noqa: E712 (nullable boolean)
    assert first["model"] == "tiny-llama" and first["study_name"] == "fictitious-forget01-ME+GD"
    assert set(runs["status"]) == {"FINISHED", "KILLED", "FAILED"}
    # Continual: the final value is the last task's.
    cont = runs[(runs["scenario"] == "continual") & (runs["method"] == "NPO+GD") & ~runs["fix_ref_model"].astype(bool)]
    assert cont["model_utility"].item() == pytest.approx(0.10)
    targets = A.fetch_runs(uri, EXPERIMENT, kind="target")
    assert len(targets) == 3 and set(targets["kind"]) == {"target"}


def test_fetch_task_curves_reads_metric_histories(store):
    uri, _ = store
    runs = A.scenario_runs(A.fetch_runs(uri, EXPERIMENT), "continual")
    curves = A.fetch_task_curves(uri, runs)
    assert list(curves.columns) == list(A.CURVE_COLUMNS)
    assert len(curves) == 4 * 3
    npo = curves[(curves["method"] == "NPO+GD") & curves["fix_ref_model"]].sort_values("task")
    assert npo["task"].tolist() == [1, 2, 3]
    assert npo["model_utility"].tolist() == pytest.approx([0.62, 0.55, 0.50])
    assert npo["forget_efficacy"].tolist() == pytest.approx([0.60, 0.70, 0.75])


def test_missing_store_or_experiment_gives_empty_frames(store, tmp_path):
    uri, _ = store
    missing = tmp_path / "absent" / "mlflow.db"
    assert A.fetch_runs(f"sqlite:///{missing}", EXPERIMENT).empty
    assert not missing.exists()  # reading does not create a store
    frame = A.fetch_runs(uri, "no-such-experiment")
    assert frame.empty and list(frame.columns[:len(A.RUN_COLUMNS)]) == list(A.RUN_COLUMNS)


def test_generations_side_by_side_matches_target_on_question(store):
    uri, ids = store
    runs = A.fetch_runs(uri, EXPERIMENT)
    trial_id = A.choose_trial(A.scenario_runs(runs, "fictitious"), "ME+GD", "forget01")
    assert runs.set_index("run_id").loc[trial_id, "forget_coeff"] == 0.1  # ME+GD t0: Avg 0.79
    side = A.generations_side_by_side(uri, trial_id, n=2)
    assert list(side.columns) == list(A.GENERATION_COLUMNS) and len(side) == 2
    assert side["trial_generation"].tolist() == ["ME+GD t0 task1 answer 0", "ME+GD t0 task1 answer 1"]
    assert side["target_generation"].tolist() == ["target answer 0", "target answer 1"]
    # The last task's table by default (continual).
    cont = A.scenario_runs(runs, "continual")
    side = A.generations_side_by_side(uri, cont["run_id"].iloc[0], set_name="retain", n=1)
    assert side["trial_generation"].item().endswith("task3 answer 0")
    failed = runs[runs["status"] == "FAILED"]["run_id"].item()
    assert A.generations_side_by_side(uri, failed).empty


def test_a_shown_table_says_why_a_value_is_missing():
    frame = pd.DataFrame({("forget01", "MU", "this study"): [0.12345, 0.5],
                          ("forget01", "MU", "DualOptim re-run"): [0.67, math.nan],
                          ("forget01", "entailment", "x"): [math.nan, math.nan]})
    shown = A.with_reasons(frame, {"DualOptim": "not published", "entailment": "needs --nli"})
    assert shown.iloc[:, 0].tolist() == [0.123, 0.5]
    assert shown.iloc[:, 1].tolist() == [0.67, "not published"]
    assert shown.iloc[:, 2].tolist() == ["needs --nli", "needs --nli"]
    assert A.with_reasons(frame.iloc[:, [2]]).iloc[:, 0].tolist() == ["not logged", "not logged"]


def test_present_splits_are_the_finished_ones_in_order(fictitious):
    assert A.present_splits(fictitious) == [s for s in A.SPLITS if s in set(A.finished(fictitious)["split"])]
    assert A.present_splits(fictitious[fictitious["split"] == "forget05"]) == ["forget05"]
