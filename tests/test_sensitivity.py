"""study/reporting/sensitivity.py: hypervolume, set coverage and the best FE at a stable MU on hand-made fronts
(values worked out by hand in the comments); the written tables; experiments/reproduce.py --sensitivity
end to end on the smoke preset."""

from __future__ import annotations


import pandas as pd
import pytest

from study.reporting import sensitivity as S
from study.reporting.analysis import runs_frame

from experiment_scripts import load


def _points(*xy) -> pd.DataFrame:
    return pd.DataFrame({"model_utility": [p[0] for p in xy], "forget_efficacy": [p[1] for p in xy]})


def test_hypervolume_is_the_dominated_area_from_the_origin():
    # Front (0.2, 0.8), (0.5, 0.5); (0.4, 0.3) is dominated. Area = 0.2 x 0.8 + (0.5 - 0.2) x 0.5 = 0.31.
    assert S.hypervolume(_points((0.2, 0.8), (0.5, 0.5), (0.4, 0.3))) == pytest.approx(0.31)
    # One point: its rectangle. Points outside the unit square are clipped to it: (1.5, 0.4) -> (1, 0.4).
    assert S.hypervolume(_points((0.5, 0.5))) == pytest.approx(0.25)
    assert S.hypervolume(_points((1.5, 0.4), (0.0, 0.9))) == pytest.approx(0.4)
    assert S.hypervolume(_points()) == 0.0


def test_a_dominating_front_has_the_larger_hypervolume_and_full_coverage():
    a = _points((0.3, 0.9), (0.6, 0.6))
    b = _points((0.2, 0.8), (0.5, 0.5))
    assert S.hypervolume(a) > S.hypervolume(b)
    assert S.coverage(a, b) == 1.0 and S.coverage(b, a) == 0.0


def test_coverage_counts_weakly_dominated_points():
    # (0.4, 0.4) is dominated by (0.5, 0.5), (0.5, 0.5) weakly (equal), (0.6, 0.1) is not: 2 of 3.
    assert S.coverage(_points((0.5, 0.5)), _points((0.4, 0.4), (0.6, 0.1), (0.5, 0.5))) == pytest.approx(2 / 3)
    assert pd.isna(S.coverage(_points((0.5, 0.5)), _points()))


def test_best_fe_at_stable_mu_uses_the_paper_threshold():
    # Target MU 0.4: stable means MU >= 0.9 x 0.4 = 0.36; of (0.3, 0.9), (0.37, 0.6), (0.5, 0.5) the
    # stable ones are the last two, their best FE 0.6 (the 0.9 comes with a fallen MU).
    trials = _points((0.3, 0.9), (0.37, 0.6), (0.5, 0.5))
    assert S.best_fe_at_stable_mu(trials, 0.4) == pytest.approx(0.6)
    assert pd.isna(S.best_fe_at_stable_mu(trials, 0.9))  # none stable
    assert pd.isna(S.best_fe_at_stable_mu(trials, float("nan")))


def _runs(points: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    rows = [{"run_id": f"{m}-{k}", "status": "FINISHED", "kind": "trial", "scenario": "fictitious", "method": m,
             "split": "forget01", "trial_number": k, "lr": 1e-4 * (k + 1), "model_utility": mu, "forget_efficacy": fe}
            for m, xy in points.items() for k, (mu, fe) in enumerate(xy)]
    return runs_frame(rows)


def test_method_and_coverage_tables_on_known_fronts(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    runs = _runs({"GA+GD": [(0.2, 0.8), (0.5, 0.5), (0.4, 0.3)], "ME+GD": [(0.3, 0.9), (0.6, 0.6)],
                  "NPO+GD": [(0.0, 0.95), (0.1, 0.1)]})
    paths = S.write_sensitivity(runs, tmp_path, target_mu=0.5, note="hand-made")
    methods = pd.read_csv(paths["methods"]).set_index("method")
    # ME+GD: 0.3 x 0.9 + 0.3 x 0.6 = 0.45; GA+GD 0.31 (above); NPO+GD: (0.1, 0.1) is dominated by
    # nothing ((0, 0.95) has lower MU), so 0.0 x 0.95 + 0.1 x 0.1 = 0.01.
    assert list(methods.index) == ["ME+GD", "GA+GD", "NPO+GD"]
    assert methods["hypervolume"].tolist() == pytest.approx([0.45, 0.31, 0.01])
    assert methods.loc["GA+GD", "trials"] == 3 and methods.loc["GA+GD", "front"] == 2
    # Stable MU: >= 0.45. GA+GD's (0.5, 0.5) and ME+GD's (0.6, 0.6); NPO+GD has none.
    assert methods.loc["GA+GD", "best_FE_at_stable_MU"] == pytest.approx(0.5)
    assert methods.loc["ME+GD", "best_FE_at_stable_MU"] == pytest.approx(0.6)
    assert pd.isna(methods.loc["NPO+GD", "best_FE_at_stable_MU"])
    cover = pd.read_csv(paths["coverage"], index_col=0)
    assert cover.loc["ME+GD", "GA+GD"] == 1.0 and cover.loc["GA+GD", "ME+GD"] == 0.0
    # NPO+GD's (0, 0.95) has the highest FE of all: nobody covers it, and it covers nobody's front.
    assert cover.loc["ME+GD", "NPO+GD"] == 0.5 and cover.loc["NPO+GD", "ME+GD"] == 0.0
    assert len(pd.read_csv(paths["fronts"])) == 2 + 2 + 2
    text = paths["readme"].read_text()
    assert "hand-made" in text and "ME+GD's front covers GA+GD's" in text
    assert "GA+GD's front covers" not in text
    assert paths["pareto"].stat().st_size > 1000 and paths["sensitivity"].stat().st_size > 1000


def _reproduce():
    return load("reproduce")  # tests/experiment_scripts.py: experiments/reproduce.py by its path


def test_reproduce_sensitivity_dry_run_gives_every_method_the_same_budget(capsys):
    assert _reproduce().main(["--preset", "smoke", "--sensitivity", "3", "--methods", "GA+GD", "ME+GD",
                              "--seeds", "7", "8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 trials per method" in out and "6 trials (2 methods, seeds 7)" in out
    assert "study sens-smoke-fictitious-forget01-s7" in out and "docs/results/smoke-sensitivity" in out  # its own folder


@pytest.mark.slow
def test_reproduce_sensitivity_end_to_end_on_smoke(tmp_path, capsys):
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    argv = ["--preset", "smoke", "--sensitivity", "2", "--methods", "GA+GD", "ME+GD", "--seeds", "3",
            "--set", "train.epochs=1", "--tracking-uri", f"sqlite:///{store}/mlflow.db",
            "--storage", f"sqlite:///{store}/optuna.db", "--out", str(out)]
    assert _reproduce().main(argv) == 0
    trials = pd.read_csv(out / "trials.csv")
    # The same budget for both methods, and the learning rate searched: each of a method's trials its own
    # (the studies share the seed, so two methods may draw the same values: a paired random search).
    assert trials.groupby("method").size().to_dict() == {"GA+GD": 2, "ME+GD": 2}
    assert (trials.groupby("method")["lr"].nunique() == 2).all()
    methods = pd.read_csv(out / "methods.csv")
    assert set(methods["method"]) == {"GA+GD", "ME+GD"}
    # The smoke model knows nothing (MU 0), so the hypervolume is 0; the best FE is each method's
    # highest, read back from the trials here.
    best = methods.set_index("method")["best_FE"]
    assert best.to_dict() == pytest.approx(trials.groupby("method")["forget_efficacy"].max().to_dict())
    assert ((methods["hypervolume"] >= 0) & (methods["hypervolume"] <= methods["best_MU"] * methods["best_FE"] + 1e-12)).all()
    assert "Rebuilt by `python experiments/reproduce.py --preset smoke --sensitivity 2" in (out / "README.md").read_text()
    assert (out / "pareto.png").stat().st_size > 1000
    # Rebuilt for one of the methods, the tables hold that method only, though the store has both.
    one = tmp_path / "one"
    rebuild = argv[:-2] + ["--skip-runs", "--out", str(one)]  # argv ends with --out OUT
    rebuild[rebuild.index("--methods"):rebuild.index("--methods") + 3] = ["--methods", "GA+GD"]
    assert _reproduce().main(rebuild) == 0
    assert set(pd.read_csv(one / "trials.csv")["method"]) == {"GA+GD"}
