"""study/reporting/results.py: intervals against hand-derived values, the claims' verdicts on hand-made run
frames with known outcomes, table shapes; and experiments/reproduce.py end to end on the smoke preset."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from study.evaluation import metrics as M
from study.reporting import results
from study.reporting.analysis import runs_frame
from study.paper import PAPER_METHODS
from study.reporting.results import FAILS, HOLDS, UNSURE

from conftest import ROOT
from experiment_scripts import load

# --------------------------------------------------------------------------------------------------
# Hand-made run frames


def _trial(scenario: str, setting: str, method: str, seed: int, mu: float, fe: float, rouge: float = 0.5,
           fix: bool = False) -> dict:
    retain = "neighbor" if scenario == "real-world" else "retain"
    return {"run_id": f"{scenario}-{setting}-{method}-{seed}", "status": "FINISHED", "kind": "trial",
            "study_name": results.study_name("smoke", scenario, setting, seed) + f"/{method}",
            "scenario": scenario, "method": method, "split": setting, "fix_ref_model": fix,
            "model_utility": mu, "forget_efficacy": fe, f"{retain}/rouge": rouge}


def _target(scenario: str, mu: float, rouge: float = 0.9) -> dict:
    return {"run_id": f"target-{scenario}", "status": "FINISHED", "kind": "target", "scenario": scenario,
            "model_utility": mu, "forget_efficacy": 0.1, "retain/rouge": rouge}


SEEDS = (1, 2, 3)
JITTER = (-0.01, 0.0, 0.01)


def _frame(values: dict[str, tuple[float, float]], scenario: str = "fictitious", setting: str = "forget01",
           jitter=JITTER, rouge: dict[str, float] | None = None) -> pd.DataFrame:
    """Trials of each method at (MU, FE) ± jitter over three seeds (``jitter``: one tuple for every
    method, or one per method; retain ROUGE gets the same jitter)."""
    shift = lambda m: jitter.get(m, JITTER) if isinstance(jitter, dict) else jitter  # noqa: E731
    rows = [_trial(scenario, setting, m, s, mu + j, fe + j, (rouge or {}).get(m, 0.5) + j)
            for m, (mu, fe) in values.items() for s, j in zip(SEEDS, shift(m))]
    return runs_frame(rows)


TARGETS = runs_frame([_target("fictitious", 0.6), _target("continual", 0.6)])


def _verdict(runs: pd.DataFrame, claim: str) -> str:
    claims = results.claims_table(results.summary_table(runs, TARGETS), results.seed_table(runs))
    return claims.set_index("claim").loc[claim, "verdict"]


# --------------------------------------------------------------------------------------------------
# Intervals


def test_interval_is_the_t_interval_derived_by_hand():
    # 0.5, 0.6, 0.7: mean 0.6, s = 0.1, t_{0.975, 2} = 4.302653 → half = 4.302653 · 0.1 / √3 = 0.248414
    mean, half = results.interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert half == pytest.approx(0.248414, abs=1e-6)
    # two values 0.2, 0.4: s = 0.141421, t_{0.975,1} = 12.7062 → half = 12.7062 · 0.141421 / √2 = 1.27062
    assert results.interval([0.2, 0.4])[1] == pytest.approx(1.270620, abs=1e-5)
    one = results.interval([0.3])
    assert one[0] == 0.3 and math.isnan(one[1])
    assert all(math.isnan(v) for v in results.interval([]))
    assert results.interval([0.5, float("nan"), 0.7])[0] == pytest.approx(0.6)  # non-finite values skipped


def test_summary_averages_within_a_seed_first_and_adds_target_and_published_rows():
    rows = [_trial("fictitious", "forget01", "ME+GD", 1, 0.50, 0.9), _trial("fictitious", "forget01", "ME+GD", 1, 0.70, 0.9),
            _trial("fictitious", "forget01", "ME+GD", 2, 0.70, 0.9), _trial("fictitious", "forget01", "ME+GD", 3, 0.80, 0.9),
            {**_trial("fictitious", "forget01", "ME+GD", 4, 0.0, 0.0), "status": "FAILED"},
            {**_trial("fictitious", "forget01", "GA+GD", 1, 0.1, 0.1), "study_name": "some-other-study/GA+GD"}]
    table = results.summary_table(runs_frame(rows), TARGETS)
    assert list(table.columns) == list(results.SUMMARY_COLUMNS)
    assert list(table["method"]) == [results.TARGET_ROW, "ME+GD"]  # the failed and foreign runs are left out
    me = table.set_index("method").loc["ME+GD"]
    assert me["n_seeds"] == 3
    assert me["MU"] == pytest.approx(np.mean([0.6, 0.7, 0.8]))  # seed 1's two trials average to 0.6 first
    assert (me["MU_lo"], me["MU_hi"]) == pytest.approx(results.seed_interval([0.6, 0.7, 0.8])[1:])
    assert (me["other_MU"], me["other_FE"]) == (0.727, 0.920)  # study.paper.PUBLISHED, forget01
    assert "DualOptim re-run" in me["other_source"] and "Llama-2-7B" in me["other_source"]
    assert table.set_index("method").loc[results.TARGET_ROW, "MU"] == pytest.approx(0.6)
    assert results.summary_table(runs_frame(rows), TARGETS, preset="default").empty  # another preset's runs
    assert results.summary_table(runs_frame(rows), TARGETS, seeds=[2, 3]).set_index("method").loc["ME+GD", "n_seeds"] == 2


def test_study_names_round_trip():
    name = results.study_name("default", "real-world", "real-world", 1002)
    assert results.parse_study_name(name + "/ME+GD") == {"preset": "default", "scenario": "real-world",
                                                         "setting": "real-world", "seed": 1002}
    assert results.parse_study_name("smoke-fictitious-forget01-tiny-llama/ME+GD") is None


# --------------------------------------------------------------------------------------------------
# Claims on frames with known outcomes

UNTARGETED_BASE = {"GA+GD": (0.58, 0.50), "NPO+GD": (0.57, 0.40)}


def test_claim_a_holds_when_me_gd_clearly_wins():
    runs = _frame({**UNTARGETED_BASE, "ME+GD": (0.58, 0.90)})  # FE far above, MU 0.58 ≥ 0.9 × 0.6
    assert _verdict(runs, "a") == HOLDS


def test_claim_a_inconclusive_when_intervals_overlap():
    # FE differences ME+GD - GA+GD over the seeds: -0.08, 0.02, 0.12: mean 0.02, not significant
    runs = _frame({**UNTARGETED_BASE, "ME+GD": (0.58, 0.52)}, jitter={"ME+GD": (-0.05, 0.0, 0.05), "GA+GD": (0.03, 0.0, -0.07),
                                                                       "NPO+GD": (0.0, 0.0, 0.0)})
    assert _verdict(runs, "a") == UNSURE


def test_claim_a_does_not_hold_when_me_gd_loses():
    runs = _frame({**UNTARGETED_BASE, "ME+GD": (0.58, 0.20)})
    assert _verdict(runs, "a") == FAILS


def test_claim_a_does_not_hold_when_me_gd_wins_but_mu_collapses():
    runs = _frame({**UNTARGETED_BASE, "ME+GD": (0.20, 0.90)})
    assert _verdict(runs, "a") == FAILS


def test_claims_b_c_d_g_on_known_frames():
    collapsed = _frame({"GA+GD": (0.05, 0.9), "NPO+GD": (0.5, 0.3), "ME+GD": (0.58, 0.9)}, setting="forget05")
    assert _verdict(collapsed, "b") == HOLDS  # decided at forget05, where the DualOptim re-run collapses
    assert _verdict(collapsed, "c") == HOLDS  # NPO+GD's FE 0.3 well below ME+GD's 0.9
    assert _verdict(_frame({"GA+GD": (0.55, 0.9)}, setting="forget05"), "b") == FAILS
    assert _verdict(_frame({"GA+GD": (0.30, 0.9)}, setting="forget05", jitter=(-0.1, 0.0, 0.1)), "b") == UNSURE  # straddles 0.3
    # forget01 alone decides nothing: the re-run does not collapse there either
    assert _verdict(_frame({"GA+GD": (0.05, 0.9)}), "b") == UNSURE
    targeted = {"IDK+AP": (0.58, 0.7), "DPO+GD": (0.1, 0.8), "IDK+GD": (0.2, 0.7)}
    assert _verdict(_frame(targeted), "d") == HOLDS
    assert _verdict(_frame({**targeted, "DPO+GD": (0.59, 0.8)}), "d") == FAILS  # another stable targeted method
    assert _verdict(_frame({"IDK+AP": (0.58, 0.7)}), "d") == UNSURE  # nothing to compare with


def test_claim_g_compares_targeted_with_untargeted_methods():
    methods = {"GA+GD": (0.5, 0.5), "ME+GD": (0.5, 0.5), "IDK+AP": (0.5, 0.5), "DPO+GD": (0.5, 0.5)}
    noisy = {"GA+GD": (0.02, -0.01, 0.0), "ME+GD": (0.0, 0.01, -0.01), "IDK+AP": (-0.02, 0.0, 0.03), "DPO+GD": (0.01, 0.0, -0.02)}
    lower = {"GA+GD": 0.8, "ME+GD": 0.7, "IDK+AP": 0.4, "DPO+GD": 0.3}  # targeted 0.35 vs untargeted 0.75
    assert _verdict(_frame(methods, rouge=lower, jitter=noisy), "g") == HOLDS
    assert _verdict(_frame(methods, rouge={m: 1.1 - r for m, r in lower.items()}, jitter=noisy), "g") == FAILS
    # the same retain ROUGE in both groups (below the target's 0.9, the old rule's point): no effect
    assert _verdict(_frame(methods, rouge={m: 0.5 for m in methods}, jitter=noisy), "g") == UNSURE
    assert _verdict(_frame({"IDK+AP": (0.5, 0.5)}), "g") == UNSURE  # no control group


def test_claims_outside_their_scenario_are_not_applicable():
    fictitious = _frame({**UNTARGETED_BASE, "ME+GD": (0.58, 0.90)})
    claims = results.claims_table(results.summary_table(fictitious, TARGETS), results.seed_table(fictitious)).set_index("claim")
    assert list(claims.loc[["e", "f"], "verdict"]) == [results.NOT_APPLICABLE] * 2
    continual = _frame({"ME+GD": (0.58, 0.9)}, scenario="continual", setting="tasks1-4")
    claims = results.claims_table(results.summary_table(continual, TARGETS), results.seed_table(continual)).set_index("claim")
    assert set(claims.loc[list("abcdg"), "verdict"]) == {results.NOT_APPLICABLE}
    assert "Holm" in claims.loc["a", "rule"] and "ALPHA (0.05)" in claims.loc["a", "rule"]  # the rule, printed


def test_continual_claims_e_f():
    def continual(values, setting):
        return _frame(values, scenario="continual", setting=setting)

    plain = continual({"NPO+GD": (0.05, 0.9), "GA+GD": (0.02, 0.9), "ME+GD": (0.58, 0.9), "IDK+AP": (0.57, 0.7)},
                      "tasks1-4")
    fixed = _frame({"NPO+GD": (0.50, 0.8)}, scenario="continual", setting="tasks1-4-fixref", jitter=(0.02, -0.01, 0.0))
    both = pd.concat([plain, fixed], ignore_index=True)
    assert _verdict(both, "e") == HOLDS
    assert _verdict(both, "f") == HOLDS
    worse = pd.concat([continual({"NPO+GD": (0.40, 0.9)}, "tasks1-4"),
                       _frame({"NPO+GD": (0.10, 0.9)}, scenario="continual", setting="tasks1-4-fixref", jitter=(0.02, -0.01, 0.0))],
                      ignore_index=True)
    assert _verdict(worse, "f") == FAILS
    assert _verdict(plain, "f") == UNSURE  # no fixed-reference runs
    holding = continual({"GA+GD": (0.58, 0.9), "ME+GD": (0.58, 0.9), "IDK+AP": (0.57, 0.7)}, "tasks1-4")
    assert _verdict(holding, "e") == FAILS  # a baseline did not collapse


def test_continual_borrows_the_fictitious_targets_utility():
    runs = _frame({"ME+GD": (0.58, 0.9)}, scenario="continual", setting="tasks1-2")
    table = results.summary_table(runs, runs_frame([_target("fictitious", 0.6)])).set_index("method")
    target = table.loc[results.TARGET_ROW]
    assert target["MU"] == pytest.approx(0.6) and math.isnan(target["FE"])  # FE was on another forget set


def test_a_target_rebuilt_under_its_key_counts_once():
    # A new machine fine-tunes the same target again (same cache key, so the same run name): one model, not
    # two seeds of targets; distinct keys (targets fine-tuned per seed) stay distinct.
    runs = _frame({"ME+GD": (0.58, 0.9)})
    same = [{**_target("fictitious", mu), "run_id": f"t{k}", "run_name": "target-abc"} for k, mu in enumerate((0.6, 0.6))]
    row = results.summary_table(runs, runs_frame(same)).set_index("method").loc[results.TARGET_ROW]
    assert row["n_seeds"] == 1 and row["MU"] == pytest.approx(0.6) and math.isnan(row["MU_lo"])
    apart = [{**_target("fictitious", mu), "run_id": f"t{k}", "run_name": f"target-{k}"} for k, mu in enumerate((0.5, 0.7))]
    row = results.summary_table(runs, runs_frame(apart)).set_index("method").loc[results.TARGET_ROW]
    assert row["n_seeds"] == 2 and row["MU"] == pytest.approx(0.6)


def test_a_target_without_utility_decides_nothing():
    # The smoke preset's random model: target MU 0, so "stable" and "collapsed" are both meaningless.
    runs = _frame({"GA+GD": (0.0, 0.9)}, setting="forget05")
    targets = runs_frame([_target("fictitious", 0.0)])
    claims = results.claims_table(results.summary_table(runs, targets), results.seed_table(runs)).set_index("claim")
    assert claims.loc["b", "verdict"] == UNSURE


def test_claims_table_shape_and_missing_data():
    claims = results.claims_table(results.summary_table(runs_frame([]), None))
    assert list(claims.columns) == list(results.CLAIM_COLUMNS)
    assert list(claims["claim"]) == list("abcdefg")
    assert set(claims["verdict"]) == {results.NOT_APPLICABLE}  # no scenario at all
    one_seed = runs_frame([_trial("fictitious", "forget01", m, 1, 0.6, fe) for m, fe in (("GA+GD", 0.1), ("ME+GD", 0.9))])
    assert _verdict(one_seed, "a") == UNSURE  # one seed: no interval, nothing decided
    for rule in claims["rule"]:
        assert rule  # every verdict states its rule


def test_write_results_writes_tables_readme_and_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    runs = _frame({**UNTARGETED_BASE, "ME+GD": (0.58, 0.90)})
    paths = results.write_results(runs, TARGETS, tmp_path, note="hand-made")
    summary = pd.read_csv(paths["summary"])
    assert len(summary) == 4 and list(summary.columns) == list(results.SUMMARY_COLUMNS)
    assert len(pd.read_csv(paths["claims"])) == 7
    text = paths["readme"].read_text()
    assert "## fictitious, forget01" in text and "0.580 [" in text and "| a |" in text and "DualOptim re-run MU" in text
    assert len(pd.read_csv(paths["seeds"])) == 9
    assert paths["figure"].stat().st_size > 1000


def test_privacy_columns_and_methods_beyond_the_paper(tmp_path):
    """A method outside the paper is named so in the README; a trial's forget-vs-holdout AUCs and PrivLeak
    are averaged within and then over seeds; the README's privacy table appears only when some were logged."""
    import matplotlib

    matplotlib.use("Agg")
    runs = _frame({"GA+GD": (0.5, 0.6), "SimNPO+GD": (0.4, 0.7)})
    leaks = {1: -90.0, 2: -60.0, 3: -30.0}
    for key in [M.mia_auc_key(a) for a in M.MIA_ATTACKS]:
        runs[key] = 0.75
    for a in M.MIA_ATTACKS:
        runs[M.privleak_key(a)] = [leaks[int(r.split("-")[-1])] for r in runs["run_id"]]
    table = results.summary_table(runs)
    simnpo = table.set_index("method").loc["SimNPO+GD"]
    assert simnpo[M.mia_auc_key(M.MIA_MIN_K)] == pytest.approx(0.75)
    assert simnpo[M.privleak_key(M.MIA_MIN_K)] == pytest.approx(-60.0)
    assert -90.0 <= simnpo["privleak_lo"] < -60.0 < simnpo["privleak_hi"] <= -30.0
    text = results.write_results(runs, TARGETS, tmp_path)["readme"].read_text()
    assert "| SimNPO+GD (beyond the paper) |" in text and "| GA+GD |" in text
    assert "| method | seeds | AUC loss | AUC zlib | AUC min_k | AUC min_k_plus_plus | PrivLeak min_k % [95% CI] |" in text
    assert "-60.0 [" in text
    # Without holdout metrics there is no privacy table.
    plain = results.write_results(_frame({"GA+GD": (0.5, 0.6)}), TARGETS, tmp_path / "plain")["readme"].read_text()
    assert "AUC min_k" not in plain and "membership inference" not in plain


def test_every_method_keeps_its_marker_and_colour_whatever_else_is_drawn():
    from study.reporting import analysis as A

    alone, crowd = A.method_markers(["NPO+GD", "NPO+KL"]), A.method_markers([*PAPER_METHODS, "SimNPO+GD", "RMU"])
    assert alone["NPO+GD"] == crowd["NPO+GD"] != crowd["NPO+KL"] == alone["NPO+KL"]
    assert len(set(crowd.values())) == len(crowd) == 11
    assert A.method_palette(["NPO+GD"])["NPO+GD"] == A.method_palette(crowd)["NPO+GD"]


# --------------------------------------------------------------------------------------------------
# experiments/reproduce.py end to end


def _reproduce():
    return load("reproduce")  # tests/experiment_scripts.py: experiments/reproduce.py by its path


def test_reproduce_dry_run_plans_every_study(capsys):
    code = _reproduce().main(["--preset", "smoke", "--dry-run", "--seeds", "1", "2"])
    out = capsys.readouterr().out
    assert code == 0
    # fictitious 3 splits + continual 2 (with / without a fixed reference) + real-world 1, per seed
    assert "12 studies" in out and "108 trials" in out and "estimate:" in out
    assert "--dry-run" in out or "checked" in out


def test_the_dry_runs_cost_of_a_larger_tofu_split_is_the_one_the_committed_runs_measured():
    """``--dry-run`` counts a forget05 trial on TOFU's files as the committed runs measured it (the nine trials
    of forget05's seed against forget01's seed 1002, the estimate's own reference) and a forget10 one as
    extrapolated from them (training linear in the task's QA, evaluation as forget05's): a re-run that moves
    the times, or a constant edited by hand, fails here."""
    cost = _reproduce().TOFU_SPLIT_COST

    def seconds(folder: str, seed: str) -> pd.Series:
        runs = _export(ROOT / "docs" / "results" / folder).query(f"kind == 'trial' and `param/train.seed` == '{seed}'")
        per_method = runs.groupby("method")[["time/train_s", "time/eval_s", "time/trial_s"]].max()
        assert len(per_method) == len(PAPER_METHODS), folder
        return per_method.sum()

    forget01, forget05 = seconds("tofu-cpu-fictitious", "1002"), seconds("tofu-cpu-fictitious-forget05", "1001")
    assert cost["forget01"] == 1.0
    assert round(forget05["time/trial_s"] / forget01["time/trial_s"], 2) == cost["forget05"]
    train_per_block = (forget05["time/train_s"] / forget01["time/train_s"] - 1) / 4  # forget05 = 5 blocks of forget01's
    train_share = forget01["time/train_s"] / forget01["time/trial_s"]
    forget10 = (train_share * (1 + 9 * train_per_block)
                + (1 - train_share) * forget05["time/eval_s"] / forget01["time/eval_s"])
    assert round(forget10, 1) == cost["forget10"]


def test_a_tofu_reproduction_reads_its_folder_and_writes_its_own(shared_data, capsys):
    """``--data-dir`` reaches every study's sweep.py (the preset needs data); a preset other than default
    writes under docs/results/<preset>-<scenario>/, never over the built-in study's folder."""
    reproduce = _reproduce()
    argv = ["--preset", "tofu-cpu", "--scenario", "fictitious", "--splits", "forget01", "--seeds", "1001"]
    args = reproduce.build_parser().parse_args([*argv, "--data-dir", str(shared_data / "tofu")])
    (unit,) = reproduce.plan_units(args)
    assert unit.argv[unit.argv.index("--data-dir") + 1] == str(shared_data / "tofu")
    assert reproduce.out_of(args) == reproduce.ROOT / "docs/results/tofu-cpu-fictitious"
    assert reproduce.out_of(reproduce.build_parser().parse_args(["--scenario", "continual"])) == \
        reproduce.ROOT / "docs/results/continual"
    assert reproduce.main([*argv, "--data-dir", str(shared_data / "tofu"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "docs/results/tofu-cpu-fictitious" in out and "a real run needs" not in out


@pytest.mark.slow
def test_reproduce_end_to_end_on_smoke(tmp_path, capsys):
    import contextlib
    import io

    store, out_dir = tmp_path / "store", tmp_path / "out"
    argv = ["--preset", "smoke", "--methods", "GA+GD", "ME+GD", "--seeds", "1", "2", "--splits", "forget01",
            "--tasks", "1", "2", "--fix-ref-model", "no", "--set", "train.epochs=1", "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage",
            f"sqlite:///{store}/optuna.db", "--out", str(out_dir)]
    store.mkdir()
    assert _reproduce().main(argv) == 0
    printed = capsys.readouterr().out
    assert "[6/6] real-world real-world GA+GD ME+GD seed 2" in printed
    summary = pd.read_csv(out_dir / "summary.csv")
    methods = summary[summary["method"] != results.TARGET_ROW]
    # fictitious forget01, continual tasks1-2 (without a fixed reference: the dry-run test plans both),
    # real-world: 3 settings × 2 methods. ~8 min with both continual settings on the shared 2 cores.
    assert len(methods) == 6
    assert set(methods["setting"]) == {"forget01", "tasks1-2", "real-world"}
    assert (methods["n_seeds"] == 2).all()
    assert np.isfinite(methods[["MU", "MU_lo", "MU_hi", "FE", "FE_lo", "FE_hi"]].to_numpy()).all()
    assert ((methods[["MU_lo", "FE_lo"]] >= 0).all(axis=None) and (methods[["MU_hi", "FE_hi"]] <= 1).all(axis=None))
    claims = pd.read_csv(out_dir / "claims.csv")
    assert list(claims["claim"]) == list("abcdefg")
    assert set(claims["verdict"]) <= set(results.VERDICTS)
    assert (out_dir / "README.md").read_text().startswith("# The paper's comparison tables")
    assert (out_dir / "mu_fe_fictitious_forget01.png").stat().st_size > 1000
    # Each scenario's notebook executed on the export of this command's studies, outputs kept, every code
    # cell run without error, the summary cell showing summary.csv's numbers.
    for key in ("fictitious", "continual", "real_world"):
        notebook = json.loads((out_dir / f"{key}.ipynb").read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert code and all(c["execution_count"] for c in code), key
        assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"], key
        assert_shows_values(notebook, summary[summary["scenario"] == {"real_world": "real-world"}.get(key, key)], key)
        assert str(out_dir / "export") in json.dumps(notebook["cells"]), key  # the injected export
        assert str(store) not in json.dumps(notebook), key  # never the store's URI
    # The export: every run of the command, per task, with its per-item tables and provenance.
    from study.reporting import exports

    export = exports.read_export(out_dir)
    trials = export.runs[export.runs["kind"] == "trial"]
    assert trials["run_id"].nunique() == 12  # 3 settings x 2 methods x 2 seeds
    continual = trials[trials["scenario"] == "continual"]
    scored = continual[continual["model_utility"].notna()]  # one row per task (step 0: what is logged before task 1)
    assert sorted(set(scored["step"])) == [1, 2] and (scored.groupby("run_id").size() == 2).all()
    assert {"retain/rouge", "forget/truth_ratio", "param/train.lr"} <= set(trials.columns)
    assert set(export.items["run_id"]) >= set(trials["run_id"])
    assert export.provenance["command"].startswith("python experiments/reproduce.py --preset smoke")
    # --from-exports: the same tables from the export alone (a copy, no store), byte for byte.
    import shutil

    again_dir = tmp_path / "again"
    shutil.copytree(out_dir / "export", again_dir / "export")
    no_store = [w for w in argv if not w.startswith("sqlite")]
    no_store = [w for i, w in enumerate(no_store) if w not in ("--tracking-uri", "--storage")]
    no_store[no_store.index("--out") + 1] = str(again_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        assert _reproduce().main([*no_store, "--from-exports"]) == 0
    for name in ("summary.csv", "seeds.csv", "claims.csv"):
        assert (again_dir / name).read_bytes() == (out_dir / name).read_bytes(), name
    for key in ("fictitious", "continual", "real_world"):
        assert (again_dir / f"{key}.ipynb").exists()
    # A re-run reuses every finished study (checked on one scenario: each call still plans its study).
    exported = {f.name: f.read_bytes() for f in (out_dir / "export").iterdir()}
    with contextlib.redirect_stdout(io.StringIO()) as again:
        assert _reproduce().main([*argv, "--scenario", "fictitious", "--no-notebooks"]) == 0
    # (the export holds both studies in full, so they are not even asked of the store: a reproduction whose
    # machine and store were lost resumes from its export), and leaves the export as it was, byte for byte
    assert again.getvalue().count("kept from") == 2 and "done in" not in again.getvalue()
    assert {f.name: f.read_bytes() for f in (out_dir / "export").iterdir()} == exported
    # --reuse-export: another folder takes the studies this export holds in full from it instead of running
    # them again (a fixed-reference comparison shares the continual trials): the trials, their items and
    # the target a continual study borrows are copied, and the tables are the ones this folder had.
    other = tmp_path / "other"
    with contextlib.redirect_stdout(io.StringIO()) as taken:
        assert _reproduce().main([*argv[:-1], str(other), "--scenario", "continual", "--no-notebooks",
                                  "--reuse-export", str(out_dir)]) == 0
    assert taken.getvalue().count("taken from") == 2 and "done in" not in taken.getvalue()
    copied = exports.read_export(other)
    assert set(copied.runs.query("kind == 'trial'")["run_id"]) == set(continual["run_id"])
    assert set(copied.items["run_id"]) >= set(continual["run_id"])
    assert set(copied.runs.query("kind == 'target'")["scenario"]) == {"fictitious"}
    pd.testing.assert_frame_equal(pd.read_csv(other / "summary.csv"),
                                  summary[summary["scenario"] == "continual"].reset_index(drop=True),
                                  check_dtype=False)  # a column empty in every continual row reads back as float
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as refused:
        assert _reproduce().main([*argv, "--scenario", "continual", "--reuse-export", str(tmp_path / "none")]) == 2
    assert "provenance.json: missing" in refused.getvalue() and len(refused.getvalue().strip().splitlines()) == 1
    # ... but not on other data: another draw of the built-in authors (as if the code that builds them had
    # changed) under the same study names ends in one line, before anything runs.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as refused:
        assert _reproduce().main([*argv, "--scenario", "fictitious", "--no-notebooks", "--set", "data.data_seed=7"]) == 2
    assert "was run on other data" in refused.getvalue() and len(refused.getvalue().strip().splitlines()) == 1
    # --scenario builds that scenario's tables only, though the store holds all three.
    assert set(pd.read_csv(out_dir / "summary.csv")["setting"]) == {"forget01"}


def assert_shows_values(notebook: dict, summary: pd.DataFrame, name: str) -> None:
    """An executed notebook shows its study: no empty frame anywhere, and the summary cell's table holds
    ``summary``'s MU and FE (3 decimals), none of them NaN."""
    texts = ["".join(o.get("data", {}).get("text/plain", "")) + "".join(o.get("text", ""))
             for c in notebook["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [t for t in texts if "Empty DataFrame" in t], f"{name}: an empty table"
    cell = next(c for c in notebook["cells"] if c.get("id") == "summary")
    shown = "".join("".join(o.get("data", {}).get("text/plain", "")) for o in cell["outputs"])
    assert shown and "No reproduction study" not in shown, f"{name}: the summary cell shows nothing"
    methods = summary[summary["method"] != results.TARGET_ROW]
    assert not methods.empty and methods[["MU", "FE"]].notna().all(axis=None), name
    for value in methods[["MU", "FE"]].to_numpy().ravel():
        assert f"{value:.3f}".rstrip("0").rstrip(".") in shown, f"{name}: {value:.3f} not shown"


def _items_frame(rouge_forget):
    """Per-item frames: every metric constant except the forget set's ROUGE."""
    from study.evaluation import metrics as M

    rows = []
    for name in ("forget", "retain", "real_authors", "world_facts"):
        n = len(rouge_forget) if name == "forget" else 30
        for i in range(n):
            row = {"set": name, **{m: 0.5 for m in M.METRICS}}
            if name == "forget":
                row[M.ROUGE] = rouge_forget[i]
            rows.append(row)
    return pd.DataFrame(rows)


def test_item_bootstrap_is_zero_for_constant_items_and_the_binomial_width_otherwise():
    from study.reporting.results import item_bootstrap

    mu_lo, mu_hi, fe_lo, fe_hi = item_bootstrap([_items_frame([0.5] * 40)], "fictitious", n_boot=300)
    assert mu_hi - mu_lo == pytest.approx(0.0, abs=1e-12) and fe_hi - fe_lo == pytest.approx(0.0, abs=1e-12)
    # Forget ROUGE half 0s, half 1s over n items: FE = 1 - mean of its 5 metrics, so its 95% half-width is
    # 1.96 * sqrt(p(1-p)/n) / 5 (normal approximation); MU does not read the forget set.
    n = 200
    mu_lo, mu_hi, fe_lo, fe_hi = item_bootstrap([_items_frame([0.0, 1.0] * (n // 2))], "fictitious", n_boot=2000, seed=1)
    assert mu_hi - mu_lo == pytest.approx(0.0, abs=1e-12)
    fe_half = (fe_hi - fe_lo) / 2
    assert fe_half == pytest.approx(1.96 * (0.25 / n) ** 0.5 / 5, rel=0.15)
    assert fe_lo < 1 - 0.5 * 4 / 5 - 0.5 / 5 < fe_hi  # the point estimate FE = 0.5 inside
    # Two seeds scored on the same items: the same items are drawn for both, so two identical seeds give
    # the width of one (drawing per seed independently would shrink it by about sqrt(2)).
    _, _, lo2, hi2 = item_bootstrap([_items_frame([0.0, 1.0] * (n // 2))] * 2, "fictitious", n_boot=2000, seed=1)
    assert (hi2 - lo2) / 2 == pytest.approx(fe_half, rel=1e-9)


def test_paired_item_bootstrap_of_a_constant_shift_is_that_shift():
    from study.reporting.results import paired_item_bootstrap

    n = 40
    a = _items_frame([0.25, 0.75] * (n // 2))
    b = _items_frame([0.0, 0.5] * (n // 2))  # every forget ROUGE 0.25 lower: FE(b) - FE(a) = 0.25 / 5
    diff = paired_item_bootstrap([a, a], [b, b], "fictitious", n_boot=500)
    assert diff["FE"] == pytest.approx((-0.05, -0.05, -0.05), abs=1e-12)  # same items for both: no spread
    assert diff["MU"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_paired_t_and_wilcoxon_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641 with 2 df; the t(2) CDF is
    # 1/2 + t / (2 sqrt(2 + t^2)) = 1/2 + 3.4641 / (2 · 3.7417) = 0.962910, so p = 2 (1 - 0.962910) = 0.074180.
    test = results.paired_test([1.0, 2.0, 4.0], [0.0, 0.0, 1.0])
    assert test["n"] == 3 and test["diff"] == pytest.approx(2.0) and test["dz"] == pytest.approx(2.0)
    assert test["p"] == pytest.approx(0.074180, abs=1e-6)
    assert test["half"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # t_{0.975,2} · 1 / sqrt 3
    assert test["p_wilcoxon"] == pytest.approx(0.25)  # all 3 signs positive: 2 · (1/2)^3
    assert results.paired_test([0.2, 0.3], [0.1, 0.2])["p"] == 0.0  # every seed agrees exactly
    assert math.isnan(results.paired_test([0.2], [0.1])["p"])  # one seed: no test
    assert results.paired_test([0.2, float("nan"), 0.5], [0.1, 0.3, 0.3])["n"] == 2  # pairs with a NaN dropped


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; running max 0.03, 0.06, 0.06
    assert results.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert results.holm([0.5, float("nan")])[0] == 0.5 and math.isnan(results.holm([0.5, float("nan")])[1])
    assert results.holm([0.4, 0.6]) == pytest.approx([0.8, 0.8])
    assert results.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_bounded_intervals_stay_in_the_unit_interval_and_zero_seeds_are_counted():
    mean, lo, hi = results.seed_interval([0.0, 0.0, 0.33])
    assert mean == pytest.approx(0.11) and 0.0 <= lo <= mean <= hi <= 0.33
    assert results.interval([0.0, 0.0, 0.33])[0] - results.interval([0.0, 0.0, 0.33])[1] < 0  # the t interval would not
    rows = [{**_trial("fictitious", "forget01", "GA+KL", s, mu, 0.5), "retain/rouge": 0.4, "retain/truth_ratio": tr,
             "real_authors/rouge": 0.3, "model_utility_retain": 0.2}
            for s, mu, tr in ((1, 0.0, 0.0), (2, 0.0, 0.0), (3, 0.33, 0.5))]
    row = results.summary_table(runs_frame(rows), TARGETS).set_index("method").loc["GA+KL"]
    assert row["MU_zero_seeds"] == 2 and row["MU_lo"] >= 0
    assert row["MU_zero_terms"] == "retain/truth_ratio 2/3"  # which term was 0, in how many seeds
    assert row["MU_terms"] == 3 and row["MU_retain"] == pytest.approx(0.2) and row["rouge_real_authors"] == pytest.approx(0.3)


# --------------------------------------------------------------------------------------------------
# Exports


def _export_frames():
    from study.reporting.exports import PARAM_PREFIX

    runs = _frame({"GA+GD": (0.5, 0.6), "ME+GD": (0.58, 0.9)})
    runs["step"] = 0
    runs[PARAM_PREFIX + "train.lr"] = "0.0001"
    items = pd.concat([_items_frame([0.5] * 4).assign(run_id=r, file="items_task1.csv") for r in runs["run_id"]],
                      ignore_index=True)
    return runs, items[["run_id", "file", *[c for c in items.columns if c not in ("run_id", "file")]]]


def test_an_export_reads_back_what_was_written(tmp_path):
    from study.reporting import exports

    runs, items = _export_frames()
    written = exports.write_export(tmp_path, runs, items, "python experiments/reproduce.py", ["s1"])
    back = exports.read_export(tmp_path)
    pd.testing.assert_frame_equal(back.runs, runs)
    pd.testing.assert_frame_equal(back.items, items)
    assert back.provenance["format_version"] == exports.FORMAT_VERSION and back.provenance["studies"] == ["s1"]
    assert {"commit", "date", "packages", "cpu", "gpu", "command"} <= set(back.provenance)
    assert exports.has_export(tmp_path) and written.folder == tmp_path / "export"
    pd.testing.assert_frame_equal(exports.last_step(back.runs), runs.drop(columns=["step", "param/train.lr"]))
    one = exports.items_of(back.items, runs["run_id"][0])
    assert len(one) == len(_items_frame([0.5] * 4)) and "run_id" not in one
    # Growing: another study's runs join; the first study's stay.
    more = runs.assign(run_id=runs["run_id"] + "-b", study_name=runs["study_name"].str.replace("forget01", "forget05"))
    exports.write_export(tmp_path, more, items.iloc[:0], "again", ["s2"])
    grown = exports.read_export(tmp_path)
    assert len(grown.runs) == 2 * len(runs) and grown.provenance["studies"] == ["s1", "s2"]
    # The same study from other runs (a store that is not the one the export came from): refused.
    with pytest.raises(exports.ExportError, match="runs.parquet: study repro-smoke-fictitious-forget01-s1/GA\\+GD holds runs"):
        exports.write_export(tmp_path, runs.assign(run_id=runs["run_id"] + "-c"), items.iloc[:0], "other store")
    assert len(exports.read_export(tmp_path).runs) == 2 * len(runs)  # nothing written


def test_bad_exports_end_in_one_line_naming_the_file(tmp_path):
    import json as json_

    from study.reporting import exports

    runs, items = _export_frames()
    folder = exports.write_export(tmp_path, runs, items, "cmd").folder
    with pytest.raises(exports.ExportError, match="runs.parquet: run .* has model_utility .* in the store"):
        exports.write_export(tmp_path, runs.assign(model_utility=runs["model_utility"] + 0.1), items, "cmd")
    data = (folder / exports.RUNS_FILE).read_bytes()
    (folder / exports.RUNS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(exports.ExportError, match=r"runs\.parquet: truncated or changed") as err:
        exports.read_export(tmp_path)
    assert "\n" not in str(err.value)
    (folder / exports.RUNS_FILE).unlink()
    with pytest.raises(exports.ExportError, match=r"runs\.parquet: missing"):
        exports.read_export(tmp_path)
    record = json_.loads((folder / exports.MARKER).read_text())
    (folder / exports.MARKER).write_text(json_.dumps({**record, "format_version": 0}))
    with pytest.raises(exports.ExportError, match=r"provenance\.json: export format version 0, this code reads 1"):
        exports.read_export(tmp_path)
    (folder / exports.MARKER).write_text('{"format": ')
    with pytest.raises(exports.ExportError, match=r"provenance\.json: not valid JSON"):
        exports.read_export(tmp_path)
    (folder / exports.MARKER).unlink()
    with pytest.raises(exports.ExportError, match=r"provenance\.json: missing"):
        exports.read_export(tmp_path)


def test_the_rebuild_command_drops_where_the_stores_are():
    command = _reproduce().rebuild_command(
        ["--scenario", "fictitious", "--tracking-uri", "sqlite:////tmp/m.db", "--storage=sqlite:////tmp/o.db",
         "--seeds", "1", "2", "--out", "/tmp/out", "--skip-runs"])
    assert command == "python experiments/reproduce.py --scenario fictitious --seeds 1 2"
    # A folder inside the repository is the repository's: it stays, so the command rebuilds that folder.
    command = _reproduce().rebuild_command(["--scenario", "continual", "--out", "docs/results/continual", "--skip-runs"])
    assert command == "python experiments/reproduce.py --scenario continual --out docs/results/continual"


def _markdown_rows(table: str) -> list[list[str]]:
    """The cells of a markdown table's rows (header first, the ``|---|`` line dropped)."""
    lines = [line for line in table.strip().splitlines() if not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]


README_TOFU_COLUMNS = ("method", "seeds", "MU [95% CI]", "MU = 0 (seeds)", "FE [95% CI]", "forget ROUGE",
                       "retain ROUGE")
"""The columns of the TOFU table the README shows (the folder's README has every term)."""


def test_the_readme_shows_the_committed_tofu_table():
    """README.md's Results lead with TOFU (issue 26): its table is the one experiments/reproduce.py wrote into
    docs/results/tofu-cpu-fictitious/README.md, cut to a few columns, and the seeds the README says it has
    are that table's."""
    import re

    folder = ROOT / "docs" / "results" / "tofu-cpu-fictitious"
    committed = (folder / "README.md").read_text()
    table = committed[committed.index("| method |"):]
    rows = _markdown_rows(table[:table.index("\n\n")])
    keep = [rows[0].index(column) for column in README_TOFU_COLUMNS]
    expected = [[row[k] for k in keep] for row in rows]
    readme = (ROOT / "README.md").read_text()
    results = readme[readme.index("## Results"):]
    shown = results.split("<!-- results table: docs/results/tofu-cpu-fictitious/README.md's, cut to its main columns -->\n", 1)[1]
    shown = _markdown_rows(shown.split("\n<!-- end of results table -->", 1)[0])
    text = "\n".join("| " + " | ".join(row) + " |" for row in expected)
    assert shown == expected, f"README.md's TOFU table should read:\n{text}"
    seeds = {int(row[1]) for row in expected[1:] if row[0] != "before unlearning"}
    said = re.search(r"over \*\*(\d) seeds\*\*", results)
    assert said is not None and {int(said.group(1))} == seeds
    assert (folder / "mu_fe_fictitious_forget01.png").stat().st_size > 10_000


def test_every_committed_results_folder_names_the_command_that_writes_it():
    """Each folder of docs/results says in its README which reproduce.py command rebuilt it; that command
    parses, and its --out (given or default) is that very folder; the index links every folder."""
    import re
    import shlex

    reproduce = _reproduce()
    folders = sorted(p for p in (ROOT / "docs" / "results").iterdir() if p.is_dir())
    assert {"fictitious", "continual", "real_world"} <= {p.name for p in folders}
    index = (ROOT / "docs" / "results" / "README.md").read_text()
    for folder in folders:
        assert f"]({folder.name}/README.md)" in index, f"docs/results/README.md does not link {folder.name}/"
        text = (folder / "README.md").read_text()
        found = re.search(r"Rebuilt by `python experiments/reproduce\.py([^`]*)`", text)
        assert found, f"{folder.name}/README.md names no reproduce.py command"
        args = reproduce.build_parser().parse_args(shlex.split(found.group(1)))
        assert reproduce.out_of(args) == folder, f"{found.group(0)} writes to {reproduce.out_of(args)}, not {folder}"


def test_every_committed_folder_is_what_the_code_makes_of_its_export(tmp_path):
    """Each committed folder's tables (its CSVs and the tables of its README) are what the current code
    makes of its committed export under its own "Rebuilt by" command (``--from-exports`` into a copy):
    a change to the statistics or the tables that leaves a committed folder stale fails here, not in a
    reader's hands."""
    import contextlib
    import io
    import re
    import shlex
    import shutil

    folders = sorted(p for p in (ROOT / "docs" / "results").iterdir() if (p / "export").is_dir())
    assert {"fictitious", "tofu-cpu-fictitious", "tofu-cpu-continual", "real_world"} <= {p.name for p in folders}
    tables = lambda path: [line for line in path.read_text().splitlines() if line.startswith("|")]  # noqa: E731
    stale = []
    for folder in folders:
        words = shlex.split(re.search(r"Rebuilt by `python experiments/reproduce\.py([^`]*)`",
                                      (folder / "README.md").read_text()).group(1))
        if "--out" in words:
            del words[words.index("--out"):words.index("--out") + 2]
        out = tmp_path / folder.name
        shutil.copytree(folder / "export", out / "export")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert _reproduce().main([*words, "--out", str(out), "--from-exports", "--no-notebooks"]) == 0, folder.name
        stale += [f"{folder.name}/{p.name}" for p in sorted(folder.glob("*.csv"))
                  if not (out / p.name).exists() or (out / p.name).read_bytes() != p.read_bytes()]
        if tables(out / "README.md") != tables(folder / "README.md"):
            stale.append(f"{folder.name}/README.md")
    assert not stale, f"committed tables the current code does not make from their exports: {stale}"


def test_every_seed_of_a_committed_setting_was_evaluated_on_the_same_items():
    """Within each committed export, the trials of one setting (every seed and method) were evaluated on the
    same questions with the same reference answers, item by item: the per-item tables tie together seeds a
    data digest cannot (tofu-cpu-fictitious' seeds 1001-1003 ran before ``data_digest`` was recorded), and a
    seed run on other files, or on another draw of items, fails here."""
    folders = sorted(p for p in (ROOT / "docs" / "results").iterdir() if (p / "export").is_dir())
    assert {"tofu-cpu-fictitious", "tofu-cpu-continual", "real_world"} <= {p.name for p in folders}
    differing, checked = [], 0
    for folder in folders:
        runs = results.label_runs(_export(folder))[["run_id", "preset", "scenario", "setting", "seed"]].drop_duplicates()
        items = pd.read_parquet(folder / "export" / "items.parquet").merge(runs, on="run_id")
        keys = ["preset", "scenario", "setting", "file", "set", "item"]
        texts = items.groupby(keys)[["question", "reference"]].nunique()
        differing += [f"{folder.name}: {' '.join(map(str, key))}" for key in texts.index[(texts > 1).any(axis=1)]]
        seeds = items.groupby(["preset", "scenario", "setting"])["seed"].nunique()
        checked += int((seeds > 1).sum())
    assert not differing, f"items whose question or reference differs between seeds or methods: {differing[:5]}"
    assert checked >= 5  # settings run at more than one seed, compared above


def test_every_committed_notebook_ran_to_the_end_on_its_folders_export():
    """Each committed folder's executed notebook ran every cell without an error, on the export committed
    beside it: the trial count it printed is the one its parameters (export, studies) give now, so a
    notebook left from an earlier export fails here. (The figures a README shows: test_readme's link test.)"""
    import ast
    import json
    import re

    from study.reporting import analysis as A

    notebooks = sorted((ROOT / "docs" / "results").glob("*/*.ipynb"))
    assert {p.parent.name for p in notebooks} >= {"fictitious", "continual", "real_world", "tofu-cpu-fictitious"}
    wrong = []
    for path in notebooks:
        name = f"{path.parent.name}/{path.name}"
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        if any(c["execution_count"] is None or any(o["output_type"] == "error" for o in c["outputs"]) for c in cells):
            wrong.append(f"{name}: a cell not run or ended in an error")
            continue
        parameters = next(c for c in cells if "".join(c["source"]).startswith("# Parameters"))
        given = {node.targets[0].id: ast.literal_eval(node.value)
                 for node in ast.parse("".join(parameters["source"])).body if isinstance(node, ast.Assign)}
        assert given["export_dir"] == f"docs/results/{path.parent.name}/export", name
        printed = "".join("".join(o["text"]) for c in cells for o in c["outputs"] if o["output_type"] == "stream")
        found = re.search(r"(\d+) ([\w-]+) trials in the export", printed)
        assert found, f"{name} printed no trial count"
        runs = A.scenario_runs(A.Source(export_dir=given["export_dir"], studies=given.get("studies")).runs(), found.group(2))
        if len(runs) != int(found.group(1)):
            wrong.append(f"{name}: printed {found.group(1)} trials, its export and studies give {len(runs)}")
    assert not wrong, wrong


def test_from_exports_without_an_export_ends_in_one_line(tmp_path, capsys):
    code = _reproduce().main(["--preset", "smoke", "--scenario", "fictitious", "--out", str(tmp_path), "--from-exports"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'export' / 'provenance.json'}: missing")


def test_an_export_names_no_folder_of_the_machine_it_was_made_on(tmp_path):
    """sweep.py records ``--data-dir ../shared/data/tofu`` resolved; the committed export says it relative to
    the repository again (and leaves paths elsewhere, and other cells, as they are)."""
    import pandas as pd

    from study.reporting.exports import portable

    root = tmp_path / "repo"
    runs = pd.DataFrame({"run_id": ["a", "b"], "data_source": [f"{tmp_path}/shared/data/tofu", "builtin"],
                         "param/data.source": [f"{tmp_path}/shared/data/tofu", "builtin"],
                         "param/model.target": ["/elsewhere/ckpt", None], "MU": [0.5, 0.25]})
    out = portable(runs, root)
    assert list(out["data_source"]) == ["../shared/data/tofu", "builtin"]
    assert list(out["param/data.source"]) == ["../shared/data/tofu", "builtin"]
    assert out["param/model.target"].equals(runs["param/model.target"]) and list(out["MU"]) == [0.5, 0.25]
    assert list(runs["data_source"])[0].startswith(str(tmp_path))  # the input is not modified


def test_the_claims_at_each_scale_are_the_folders_verdicts():
    """docs/results/README.md's claims table says, per claim and scale, the verdict of the folder it links:
    each cell's verdict is that folder's claims.csv verdict for the claim (a re-run that changes one fails
    here until the index says so)."""
    import re

    index = (ROOT / "docs" / "results" / "README.md").read_text()
    section = index[index.index("## The paper's claims at each scale"):]
    section = section[:section.index("\n## ")]
    rows = [line for line in section.splitlines() if re.match(r"\| [a-g] \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == list("abcdefg")
    cited = 0
    for row in rows:
        claim = row.split("|")[1].strip()
        for cell in row.split("|")[3:5]:
            found = re.fullmatch(r"\s*(holds|does not hold|inconclusive|not applicable) \(\[[^]]+\]\(([^)]+)/README\.md\)\)\s*",
                                 cell)
            if found is None:
                assert cell.strip() == "not run yet", (claim, cell)
                continue
            verdict, folder = found.groups()
            claims = pd.read_csv(ROOT / "docs" / "results" / folder / "claims.csv").set_index("claim")
            assert claims.loc[claim, "verdict"] == verdict, (claim, folder)
            cited += 1
    assert cited >= 10


def test_continual_readme_shows_the_earlier_tasks_forget_rouge_only_when_logged(tmp_path):
    """Continual with ``eval.earlier_tasks`` (beyond the paper): the README table gains a column with the
    mean ROUGE on the earlier tasks' forget sets over seeds, labelled; runs without it keep the paper's
    columns."""
    import matplotlib

    matplotlib.use("Agg")
    runs = _frame({"GA+GD": (0.5, 0.6), "ME+GD": (0.58, 0.9)}, scenario="continual", setting="tasks1-2")
    header = "earlier tasks' forget ROUGE (beyond the paper)"
    assert header not in results.write_results(runs, TARGETS, tmp_path / "without")["readme"].read_text()
    runs["earlier_forget/rouge"] = [{"GA+GD": 0.2, "ME+GD": 0.4}[m] + 0.01 * int(r.split("-")[-1])
                                    for m, r in zip(runs["method"], runs["run_id"])]
    text = results.write_results(runs, TARGETS, tmp_path / "with")["readme"].read_text()
    columns = [c.strip() for c in text[text.index("| method |"):].splitlines()[0].split("|")]
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if line.startswith("| GA+GD") or line.startswith("| ME+GD")}
    where = columns.index(header)
    assert rows["GA+GD"][where].strip() == "0.220" and rows["ME+GD"][where].strip() == "0.420"  # (x+.01+x+.02+x+.03)/3


# --------------------------------------------------------------------------------------------------
# The index's prose: every number it prints comes from the folder it cites

NUMBER = r"(?<![\w.])\d+\.\d+"
"""A decimal as the index prints it (``0.481``, ``1.000``; not ``1e-4``)."""


def _tables_values(folder) -> np.ndarray:
    """Every decimal in a results folder's tables and README (summary, seeds, claims and their evidence)."""
    import re

    texts = [(folder / name).read_text() for name in ("summary.csv", "seeds.csv", "claims.csv", "README.md")
             if (folder / name).exists()]
    return np.array([float(x) for text in texts for x in re.findall(NUMBER, text)])


def _export(folder) -> pd.DataFrame:
    return pd.read_parquet(folder / "export" / "runs.parquet")


def _summary(folder, method: str, column: str) -> float:
    table = pd.read_csv(folder / "summary.csv")
    return table.loc[table["method"] == method, column].iloc[0]


def _continual_run(folder, method: str, fixed: bool = False, seed: int = 1001) -> pd.DataFrame:
    """Seed ``seed``'s finished continual run of ``method`` in the folder's export, a row per task;
    ``fixed``: the run with ``--fix-ref-model``."""
    runs = results.label_runs(_export(folder), seeds=[seed]).query(f"method == '{method}' and kind == 'trial'")
    runs = runs[runs["setting"].str.endswith("-fixref") == fixed]
    assert runs["run_id"].nunique() == 1, f"{folder.name}: {method} seed {seed}: {runs['run_id'].nunique()} runs"
    return runs


def _task_mu(folder, method: str, step: int, fixed: bool = False, seed: int = 1001) -> float:
    """``method``'s MU after task ``step`` (:func:`_continual_run`), at two decimals."""
    (mu,) = _continual_run(folder, method, fixed, seed).query(f"step == {step}")["model_utility"]
    return round(mu, 2)


def _task_mus(folder, methods, steps, seeds=(1001, 1002), fixed: bool = False) -> list[float]:
    """MU after each of ``steps`` of each of ``methods`` in each of ``seeds`` (:func:`_task_mu`)."""
    return [_task_mu(folder, m, step, fixed, seed) for m in methods for step in steps for seed in seeds]


def _last_task(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["step"] == runs["step"].max()]


def _holm_ps(folder, claim: str) -> list[float]:
    import re

    evidence = pd.read_csv(folder / "claims.csv").set_index("claim").loc[claim, "evidence"]
    return [float(p) for p in re.findall(r"\(Holm ([\d.e-]+)\)", evidence)]


def _share_of_target(folder, method: str) -> float:
    """``method``'s mean MU as a share of the target's, at two decimals."""
    return round(_summary(folder, method, "MU") / _summary(folder, results.TARGET_ROW, "MU"), 2)


DERIVED = {
    # (folder, number as printed): whether the folder's export or tables give it, for the numbers of the
    # index that no table prints as such (a ratio, a bound, a run's setting, one task of a continual run)
    ("tofu-cpu-fictitious", "0.40"):  # ME+GD's lowest Forget Quality over the seeds ("0.40-0.77")
        lambda f: round(_export(f).query("kind == 'trial' and method == 'ME+GD'")["forget_quality"].min(), 2) == 0.40,
    ("fictitious", "0.0005"):  # "Holm-corrected p ≤ 0.0005" over claim (a)'s FE comparisons
        lambda f: max(_holm_ps(f, "a")) <= 0.0005,
    ("fictitious", "0.89"): lambda f: _share_of_target(f, "ME+GD") == 0.89,
    ("tofu-cpu-fictitious-forget05", "0.89"): lambda f: _share_of_target(f, "ME+GD") == 0.89,
    ("tofu-cpu-fictitious-forget05", "0.720"):  # IDK+AP's forget-set probability (an FE term no table prints)
        lambda f: round(_export(f).query("method == 'IDK+AP'")["forget/probability"].iloc[0], 3) == 0.720,
    ("tofu-cpu-fictitious-forget05", "0.001"):  # GA+GD's and ME+GD's forget-set probability: below it
        lambda f: _export(f).query("method in ['GA+GD', 'ME+GD']")["forget/probability"].max() < 0.001,
    ("fictitious", "4.5"): lambda f: set(_export(f).query("method == 'SimNPO+GD'")["param/method.beta"]) == {"4.5"},
    ("fictitious", "0.125"):
        lambda f: set(_export(f).query("method == 'SimNPO+GD'")["param/method.forget_coeff"]) == {"0.125"},
    ("fictitious", "6.5"):
        lambda f: set(_export(f).query("method == 'RMU'")["param/method.rmu_steering_coeff"]) == {"6.5"},
    ("continual", "0.77"):  # GA+GD's MU after four tasks as a share of the target's
        lambda f: round(_last_task(_export(f).query("method == 'GA+GD'"))["model_utility"].mean()
                        / _summary(f, results.TARGET_ROW, "MU"), 2) == 0.77,
    ("continual", "0.33"):  # ME+GD after task 1: its MU and its Real Authors ROUGE
        lambda f: [round(x, 2) for x in _export(f).query("method == 'ME+GD' and step == 1")
                   [["model_utility", "real_authors/rouge"]].iloc[0]] == [0.33, 0.33],
    ("continual", "0.18"):  # ME+GD's MU after task 2
        lambda f: _task_mu(f, "ME+GD", 2) == 0.18,
    # TOFU continual, seeds 1001 and 1002: ranges of MU after a task over both seeds ("0.40-0.48 after task 1")
    ("tofu-cpu-continual", "0.40"): lambda f: min(_task_mus(f, ("NPO+GD", "NPO+KL"), (1,))) == 0.40,
    ("tofu-cpu-continual", "0.48"): lambda f: max(_task_mus(f, ("NPO+GD", "NPO+KL"), (1,))) == 0.48,
    ("tofu-cpu-continual", "0.10"): lambda f: min(_task_mus(f, ("NPO+GD", "NPO+KL"), (2,))) == 0.10,
    ("tofu-cpu-continual", "0.31"): lambda f: max(_task_mus(f, ("NPO+GD", "NPO+KL"), (2,))) == 0.31,
    ("tofu-cpu-continual", "0.07"): lambda f: max(_task_mus(f, ("NPO+GD", "NPO+KL"), (3, 4))) == 0.07,
    ("tofu-cpu-continual", "0.28"): lambda f: min(_task_mus(f, ("ME+GD",), (1, 2, 3, 4))) == 0.28,
    ("tofu-cpu-continual", "0.47"): lambda f: max(_task_mus(f, ("ME+GD",), (1, 2, 3, 4))) == 0.47,
    ("tofu-cpu-continual", "0.77"):  # ME+GD's MU after four tasks (mean over seeds) as a share of the target's
        lambda f: round(_summary(f, "ME+GD", "MU") / _summary(f, results.TARGET_ROW, "MU"), 2) == 0.77,
    # TOFU continual with and without the fixed reference, seeds 1001 and 1002: the lowest and highest MU after
    # a task with it, the highest from task 3 without it, NPO+GD's MU after task 1 in seed 1002 in both settings
    ("tofu-cpu-continual_fixref", "0.19"): lambda f: min(_task_mus(f, ("NPO+GD", "NPO+KL"), (1, 2, 3, 4), fixed=True)) == 0.19,
    ("tofu-cpu-continual_fixref", "0.48"): lambda f: max(_task_mus(f, ("NPO+GD", "NPO+KL"), (1, 2, 3, 4), fixed=True)) == 0.48,
    ("tofu-cpu-continual_fixref", "0.07"): lambda f: max(_task_mus(f, ("NPO+GD", "NPO+KL"), (3, 4))) == 0.07,
    ("tofu-cpu-continual_fixref", "0.454"):
        lambda f: {round(_continual_run(f, "NPO+GD", fixed, seed=1002).query("step == 1")["model_utility"].iloc[0], 3)
                   for fixed in (False, True)} == {0.454},
    ("real_world", "0.055"):  # the target's neighbour truth-ratio term
        lambda f: round(_export(f).query("kind == 'target'")["neighbor/truth_ratio"].iloc[0], 3) == 0.055,
}
"""The index's numbers that are computed from a folder rather than printed by it, each checked here."""


def _index_paragraphs() -> list[tuple[str, str]]:
    """(folder, text) for each paragraph of the index's "What the committed studies show" (the folder its
    first link names) and each row of the claims table's TOFU column (the folder its verdict links)."""
    import re

    index = (ROOT / "docs" / "results" / "README.md").read_text()
    shows = index[index.index("## What the committed studies show"):]
    shows = shows[:shows.index("\n## ", 1)]
    found = [(re.search(r"\]\(([^)/]+)/README\.md\)", para).group(1), para)
             for para in re.split(r"\n(?=\*\*)", shows) if para.startswith("**")]
    claims = index[index.index("## The paper's claims at each scale"):]
    for row in (row for row in claims.splitlines() if re.match(r"\| [a-g] \|", row)):
        cited = re.search(r"\]\(([^)/]+)/README\.md\)", row.split("|")[4])  # the folder of the TOFU verdict
        found.append((cited.group(1) if cited else "tofu-cpu-fictitious", row.split("|")[5]))
    return found


def test_every_number_of_the_index_prose_is_in_the_folder_it_cites():
    """docs/results/README.md's account of each study prints numbers by hand: each must be one of the cited
    folder's table values at the printed precision, or one of ``DERIVED`` (computed here from that folder's
    export or tables). A re-run that moves a number, or a number copied from elsewhere, fails here."""
    import re

    paragraphs = _index_paragraphs()
    assert {folder for folder, _ in paragraphs} >= {"tofu-cpu-fictitious", "fictitious", "continual", "real_world"}
    used, wrong = set(), []
    for name, text in paragraphs:
        folder = ROOT / "docs" / "results" / name
        values = np.abs(_tables_values(folder))
        for printed in re.findall(NUMBER, text):
            if (name, printed) in DERIVED:
                used.add((name, printed))
                if not DERIVED[name, printed](folder):
                    wrong.append(f"{name}: {printed} (DERIVED)")
            elif not np.any(np.isclose(np.round(values, len(printed.split(".")[1])), float(printed))):
                wrong.append(f"{name}: {printed}")
    assert not wrong, f"numbers of docs/results/README.md that their folder does not give: {wrong}"
    assert used == set(DERIVED), f"DERIVED entries the index no longer prints: {set(DERIVED) - used}"
