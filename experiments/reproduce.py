#!/usr/bin/env python
"""Reproduce the paper's three comparison tables from seeded runs, then build them with intervals.

    python experiments/reproduce.py --dry-run                       # the plan and its estimated cost
    python experiments/reproduce.py                                 # everything on the default preset
    python experiments/reproduce.py --scenario fictitious --seeds 1001 1002 1003

The paper's protocol on a small model: all nine methods with the same budget (one trial each, the
``paper`` sampler: the released α and β of docs/science.md §4), at ONE stated learning rate for every
method, the preset's ``train.lr`` (the released 1e-5 is for 7B models; a small model barely moves at
it), and the preset's ``train.epochs`` (the real-world baselines' released 3/5-epoch grid is fixed to
it, so every method trains alike). Both are passed to sweep.py as ``--set train.lr=... --set
train.epochs=...``, which the paper sampler respects: a value given with ``--set`` is fixed, not
searched. One Optuna study per (scenario, setting, seed), the seed in its name
(``repro-<preset>-<scenario>-<setting>-s<seed>``): fictitious over forget01/05/10, continual over tasks
1-4 without and with ``--fix-ref-model``, real-world. Each study is one in-process call of
``sweep.main(argv)`` with every method (sweep.py runs them one after another, an Optuna study
``<name>/<method>`` each), the command users run; a re-run resumes (finished trials are reused).

Then the runs are read back (``study.analysis.fetch_runs``) and ``study.results.write_results`` writes
``summary.csv``, ``claims.csv``, ``README.md`` and a figure into ``--out``.
"""

import argparse
import contextlib
import importlib.util
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.paper import PAPER_METHODS  # noqa: E402  (after the path)
from study.scenarios import CONTINUAL, FICTITIOUS, SCENARIOS  # noqa: E402

DEFAULT_SEEDS = (1001, 1002, 1003)
DEFAULT_EXPERIMENT = "reproduce"
SPLITS = ("forget01", "forget05", "forget10")
CONTINUAL_TASKS = (1, 2, 3, 4)

SECONDS_PER_TRIAL = {"smoke": 10.0, "default": 112.0}
"""Assumed seconds per trial and task unlearned on 2 CPU cores (continual trials cost one per task):
smoke measured at ~10 s; default (SmolLM2-135M, 20 items per evaluation set) measured on 2026-12-03:
the nine methods of one fictitious forget01 seed took 1007 s, 2 cores shared with a test run.
Other presets: :data:`OTHER_SECONDS`. An assumption for the estimate only."""
OTHER_SECONDS = 600.0


@dataclass(frozen=True)
class Unit:
    """One sweep.py call: a (scenario, setting, seed) study, one trial per method."""

    scenario: str
    setting: str
    seed: int
    methods: tuple[str, ...]
    study: str
    argv: tuple[str, ...]
    tasks: int


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep_entry", ROOT / "experiments" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _call(sweep, argv: list[str]) -> tuple[int, str, str]:
    """``sweep.main(argv)`` in this process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = sweep.main(argv)
    return code, out.getvalue(), err.getvalue()


def preset_training(preset: str, sets: list[str] = ()) -> tuple[float, float]:
    """(train.lr, train.epochs) for every method: ``--set train.lr=...`` / ``train.epochs=...`` where
    given, else the preset's own values, else the configuration's defaults."""
    from study import presets

    train = presets.run_config(preset, settings=sets).train
    return float(train.lr), train.epochs


def settings_of(scenario_name: str, splits: tuple[str, ...], tasks: tuple[int, ...],
                fix_ref: str = "both") -> list[tuple[str, list[str], int]]:
    """(setting, sweep options, tasks unlearned) per setting of a scenario."""
    from study.results import setting_name

    if scenario_name == FICTITIOUS.name:
        return [(setting_name(scenario_name, split), ["--split", split], 1) for split in splits]
    if scenario_name == CONTINUAL.name:
        options = ["--split", splits[0], "--tasks", *map(str, tasks)]
        return [(setting_name(scenario_name, splits[0], tasks, fix), options + (["--fix-ref-model"] if fix else []),
                 len(tasks)) for fix in {"both": (False, True), "no": (False,), "yes": (True,)}[fix_ref]]
    return [(setting_name(scenario_name), [], 1)]


def plan_units(args) -> list[Unit]:
    from study.results import study_name

    lr, epochs = preset_training(args.preset, args.set)
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    units = []
    for sc in scenarios:
        for setting, options, n_tasks in settings_of(sc, tuple(args.splits), tuple(args.tasks), args.fix_ref_model):
            for seed in args.seeds:
                name = study_name(args.preset, sc, setting, seed)
                argv = ["--preset", args.preset, "--scenario", sc, *options, "--method", *args.methods,
                        "--sampler", "paper", "--n-trials", "1", "--seed", str(seed), "--study-name", name,
                        "--set", f"train.lr={lr!r}", "--set", f"train.epochs={epochs!r}",
                        *[w for item in args.set if not item.startswith(("train.lr=", "train.epochs="))
                          for w in ("--set", item)],
                        "--experiment", args.experiment, "--no-progress"]
                for option, value in (("--tracking-uri", args.tracking_uri), ("--storage", args.storage),
                                      ("--device", args.device)):
                    if value:
                        argv += [option, value]
                units.append(Unit(sc, setting, seed, tuple(args.methods), name, tuple(argv), n_tasks))
    return units


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reproduce.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    a = parser.add_argument
    a("--scenario", default="all", choices=["all", *SCENARIOS], help="which table(s) (default: all)")
    a("--preset", default="default", help="sweep.py preset (default: %(default)s; tests use smoke)")
    a("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), metavar="SEED", help="training seeds (default: %(default)s)")
    a("--methods", nargs="+", default=list(PAPER_METHODS), metavar="M", help="methods (default: the paper's nine)")
    a("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="fictitious splits (continual uses the first)")
    a("--tasks", nargs="+", type=int, default=list(CONTINUAL_TASKS), metavar="K", help="continual tasks (default: 1 2 3 4)")
    a("--fix-ref-model", choices=["both", "no", "yes"], default="both",
      help="continual: run without and with sweep.py's --fix-ref-model (default: %(default)s)")
    a("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
      help="passed to sweep.py for every study; train.lr / train.epochs replace the preset's for every method")
    a("--out", default="docs/results", help="where the tables, README.md and figure go (default: %(default)s)")
    a("--tracking-uri", help="MLflow tracking URI (sweep.py's default when omitted)")
    a("--storage", help="Optuna storage (sweep.py's default when omitted)")
    a("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    a("--device", help="cpu, cuda ... (sweep.py's default when omitted)")
    a("--seconds-per-trial", type=float, help="for the --dry-run estimate (default: an assumption per preset)")
    a("--dry-run", action="store_true", help="print the plan and the estimated cost, run nothing")
    a("--skip-runs", action="store_true", help="only rebuild the tables from the runs already in the store")
    a("--no-notebooks", action="store_true",
      help="do not execute the scenarios' notebooks into --out (by default each scenario with runs gets "
           "notebooks/<scenario>.ipynb executed on this store, outputs kept)")
    return parser


def print_plan(args, units: list[Unit]) -> None:
    lr, epochs = preset_training(args.preset, args.set)
    studies = sorted({u.study for u in units})
    per_trial = args.seconds_per_trial or SECONDS_PER_TRIAL.get(args.preset, OTHER_SECONDS)
    trials = sum(len(u.methods) for u in units)
    seconds = sum(u.tasks * len(u.methods) for u in units) * per_trial
    print(f"preset {args.preset}: lr {lr:g} for every method (the preset's train.lr, in place of the released "
          f"1e-5), epochs {epochs}, released α/β (sampler paper), one trial per method per study")
    print(f"{len(studies)} studies (scenario × setting × seed), {trials} trials "
          f"({len(args.methods)} methods, seeds {' '.join(map(str, args.seeds))})")
    cost = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    print(f"estimate: {cost} at an assumed {per_trial:g} s per trial and task "
          "(continual trials unlearn each task in turn)")
    for k, u in enumerate(units, 1):
        print(f"  [{k}/{len(units)}] {u.scenario} {u.setting} {' '.join(u.methods)} seed {u.seed}  study {u.study}")
    print(f"then: tables, README.md and a figure in {args.out}")


def rebuild_command(argv) -> str:
    """The command that rebuilds these results on the default stores: ``argv`` without the store and
    output options (where a user's stores are is theirs) and without ``--skip-runs``."""
    drop_with_value = {"--tracking-uri", "--storage", "--out", "--experiment", "--device"}
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in drop_with_value:
            skip = True
        elif word != "--skip-runs" and not word.startswith(tuple(f"{o}=" for o in drop_with_value)):
            words.append(word)
    return " ".join(["python experiments/reproduce.py", *words])


def trial_items(uri: str, run_ids) -> dict:
    """Each trial's per-item table of its last task (``eval/items_task<k>.csv``, k largest), by run id:
    what the item bootstrap of :func:`study.results.item_bootstrap` resamples. Trials without one are
    left out."""
    import re

    import mlflow
    import pandas as pd

    client = mlflow.MlflowClient(uri)
    items = {}
    for run_id in run_ids:
        names = [a.path for a in client.list_artifacts(run_id, "eval") if re.search(r"items(_task\d+)?\.csv$", a.path)]
        if not names:
            continue
        last = max(names, key=lambda n: int(m.group(1)) if (m := re.search(r"_task(\d+)", n)) else 0)
        items[run_id] = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=last,
                                                                        tracking_uri=uri))
    return items


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [m for m in args.methods if m not in PAPER_METHODS]
    if unknown:
        print(f"note: {', '.join(unknown)} are not among the paper's methods (sweep.py checks the names)", file=sys.stderr)
    units = plan_units(args)
    sweep = _sweep()
    if args.dry_run:
        print_plan(args, units)
        # Each setting's first command through sweep.py's own --dry-run: a bad option, preset, task or
        # store is reported now rather than hours into the run.
        for unit in {(u.scenario, u.setting): u for u in reversed(units)}.values():
            code, out, err = _call(sweep, [*unit.argv, "--dry-run"])
            if code != 0:
                print(f"error: sweep.py {' '.join(unit.argv)} --dry-run exited {code}:\n{err[-2000:]}", file=sys.stderr)
                return code
        print("checked: each setting's sweep.py command passes its --dry-run")
        return 0
    if not args.skip_runs:
        started = time.monotonic()
        for k, unit in enumerate(units, 1):
            t0 = time.monotonic()
            code, out, err = _call(sweep, list(unit.argv))
            if code != 0:
                print(f"[{k}/{len(units)}] {unit.scenario} {unit.setting} {' '.join(unit.methods)} seed {unit.seed} failed "
                      f"(exit {code}):\n{out[-2000:]}\n{err[-3000:]}", file=sys.stderr)
                return code
            resumed = out.count("1/1 trials finished, resuming") == len(unit.methods)
            print(f"[{k}/{len(units)}] {unit.scenario} {unit.setting} {' '.join(unit.methods)} seed {unit.seed} "
                  f"{'reused' if resumed else 'done'} in {time.monotonic() - t0:.0f} s "
                  f"(total {time.monotonic() - started:.0f} s)", flush=True)
    from study.analysis import fetch_runs, resolve_tracking_uri, scenario_runs
    from study.results import write_results
    from study.tracking import DEFAULT_TRACKING_URI

    uri = resolve_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    runs = fetch_runs(uri, args.experiment, kind="trial")
    targets = fetch_runs(uri, args.experiment, kind="target")
    if args.scenario != "all":  # one scenario's tables and notebook, though the store may hold the others
        runs = scenario_runs(runs, args.scenario)
        targets = scenario_runs(targets, args.scenario) if "scenario" in targets else targets
    lr, epochs = preset_training(args.preset, args.set)
    note = (f"Preset `{args.preset}`, seeds {', '.join(map(str, args.seeds))}; every method one trial per seed at "
            f"lr {lr:g} (in place of the released 1e-5) and {epochs} epochs, the released α/β. Rebuilt by "
            f"`{rebuild_command(argv if argv is not None else sys.argv[1:])}`.")
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    paths = write_results(runs, targets, out, note, preset=args.preset, seeds=args.seeds,
                          items=trial_items(uri, runs["run_id"]) if "run_id" in runs else None)
    if not args.no_notebooks:
        paths.update(execute_notebooks(uri, args.experiment, out, sorted(set(runs["scenario"].dropna()))))
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def execute_notebooks(uri: str, experiment: str, out: Path, scenarios) -> dict[str, Path]:
    """Each scenario's notebook (``notebooks/<key>.ipynb``) executed with papermill on this store and
    experiment, the paper's released setting picked per method, written with its outputs into
    ``out/<key>.ipynb`` (its figures as PNG files beside it); returns the notebooks' paths by scenario key."""
    from study.analysis import run_notebook
    from study.scenarios import scenario

    written = {}
    for name in scenarios:
        key = scenario(name).key
        written[key] = out / f"{key}.ipynb"
        run_notebook(ROOT / "notebooks" / f"{key}.ipynb",
                     {"tracking_uri": uri, "experiment": experiment, "pick": "paper", "figures_dir": str(out)}, written[key])
    return written


if __name__ == "__main__":
    sys.exit(main())
