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
1-4 (``paper-*``: 1-10) without and with ``--fix-ref-model``, real-world (``paper-*``: each scenario on
its own paper preset, real-world on Llama-3-8B-Instruct). Each study is one in-process call of
``sweep.main(argv)`` with every method (sweep.py runs them one after another, an Optuna study
``<name>/<method>`` each), the command users run; a re-run resumes (finished trials are reused).
``--reuse-export FOLDER`` copies the studies another results folder's export holds in full instead of
running them again (the continual trials a fixed-reference comparison shares with the continual folder).

As each study finishes, its runs (every setting, every metric per task, every per-item table) are
written into the export ``<out>/export/`` (``study.reporting.exports``; a lost machine loses at most the study
that was running). Then ``study.reporting.results.write_results`` writes ``summary.csv``, ``seeds.csv``,
``claims.csv``, ``README.md`` and a figure into ``--out`` (default: ``docs/results/<scenario>``,
``docs/results/all`` for every scenario), and each scenario's notebook is executed there on the export,
given this command's studies. ``--from-exports`` rebuilds all of it from ``<out>/export/`` alone, with no
MLflow store (the same CSVs, byte for byte).

Sensitivity, beyond the paper (``--sensitivity N``): instead of the released settings, every method gets
an Optuna study of N trials (the same budget for all) over its own hyper-parameter space (the preset's
ranges: ``lr`` in the preset's ``[study] space``, the method's α / β in the ranges its loss declares), on
fictitious ``--splits``' first split with the first of ``--seeds``, in experiment ``sensitivity``; then
``study.reporting.sensitivity.write_sensitivity`` compares the methods' Pareto fronts in ``docs/results/sensitivity``.

    python experiments/reproduce.py --sensitivity 6 --methods GA+GD NPO+GD IDK+AP ME+GD
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
from study.inputs.scenarios import CONTINUAL, FICTITIOUS, SCENARIOS, scenario  # noqa: E402

DEFAULT_SEEDS = (1001, 1002, 1003)
DEFAULT_EXPERIMENT = "reproduce"
SENSITIVITY_EXPERIMENT = "sensitivity"
SENSITIVITY_PREFIX = "sens"
RESULTS = "docs/results"
SPLITS = ("forget01", "forget05", "forget10")
CONTINUAL_TASKS = (1, 2, 3, 4)

SECONDS_PER_TRIAL = {"smoke": 10.0, "default": 112.0, "tofu-cpu": 463.0}
"""Assumed seconds per forget01 trial on 2 CPU cores (a continual trial costs one per task, :data:`EARLIER_SET_SHARE`):
smoke measured at ~10 s; default (SmolLM2-135M, 20 items per evaluation set) measured on 2026-12-03:
the nine methods of one fictitious forget01 seed took 1007 s, 2 cores shared with a test run; tofu-cpu
(TOFU's forget01 task 1, 40 items per set): seed 1002's nine trials took 4163 s on a quiet machine,
2026-12-05 (a trial: 287 s training, 171 s evaluation on average; docs/results/tofu-cpu-fictitious/export,
``time/*``). Other presets: :data:`OTHER_SECONDS`.
An assumption for the estimate only."""
OTHER_SECONDS = 600.0
REAL_WORLD_FACTOR = 3.5
"""A real-world trial costs about this many fictitious ones: it unlearns the 6 built-in people at once (60
questions, 6x forget01's steps) and evaluates 60 forget items. Measured on 2026-12-03: the nine methods of
one real-world seed took 59 min on 2 cores shared with other work (the fictitious forget01 seed: 17 min)."""
TOFU_SPLIT_COST = {"forget01": 1.0, "forget05": 2.41, "forget10": 4.2}
"""A fictitious trial on TOFU's files (a split's task is 40, 200 or 400 QA: training grows with it, the
evaluation does not, ``data.ds_size`` caps each set) in forget01 trials. forget05 measured: seed 1001's nine
trials (2026-12-07, docs/results/tofu-cpu-fictitious-forget05/export, ``time/*``) took 10000 s, 2.41 × the
4154 s of forget01's seed 1002 (training 3.32 ×, evaluation 0.86 ×).
forget10, not run, extrapolated from them: training linear in the task's QA (1 + 9 × 0.58 = 6.2 ×), evaluation
as forget05's, weighted by forget01's share of training (0.62): 4.2. Checked against the exports by
``tests/test_results.py``. The built-in set's splits are one author each: a trial there costs 1."""
EARLIER_SET_SHARE = 0.12
"""Continual with ``eval.earlier_tasks`` (beyond the paper): task k also evaluates the forget sets of the k - 1
tasks before it, each about this share of a forget01 trial. Measured on tofu-cpu, seed 1001's GA+KL
(2026-12-06, quiet machine; docs/results/tofu-cpu-continual/export, ``time/eval_s``): a task's evaluation took
204 s with no earlier set, 324 s with two and 356 s with three, ~51-60 s a set of 40 rows, of a 463 s trial.
A continual trial of n tasks costs ``n + EARLIER_SET_SHARE * n (n - 1) / 2`` forget01 trials."""


@dataclass(frozen=True)
class Unit:
    """One sweep.py call: a (scenario, setting, seed) study, one trial per method."""

    scenario: str
    setting: str
    seed: int
    methods: tuple[str, ...]
    study: str
    argv: tuple[str, ...]
    cost: float
    """A trial's cost in fictitious forget01 trials (continual: the tasks unlearned; real-world: more data)."""


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


def settings_of(scenario_name: str, splits: tuple[str, ...], tasks: tuple[int, ...], fix_ref: str = "both",
                tofu_files: bool = False, earlier_tasks: bool = False) -> list[tuple[str, list[str], float]]:
    """(setting, sweep options, cost of a trial in fictitious trials: the tasks it unlearns, with
    ``earlier_tasks`` their earlier forget sets evaluated (:data:`EARLIER_SET_SHARE`); on TOFU's files a
    split's size, :data:`TOFU_SPLIT_COST`) per setting."""
    from study.reporting.results import setting_name

    sc = scenario(scenario_name)
    if sc.sequential:  # one task list, each task's start the next reference unless --fix-ref-model
        options = ["--split", splits[0], "--tasks", *map(str, tasks)]
        n = len(tasks)
        cost = n + (EARLIER_SET_SHARE * n * (n - 1) / 2 if earlier_tasks else 0)
        return [(setting_name(scenario_name, splits[0], tasks, fix), options + (["--fix-ref-model"] if fix else []),
                 cost) for fix in {"both": (False, True), "no": (False,), "yes": (True,)}[fix_ref]]
    if sc.has_splits:
        return [(setting_name(scenario_name, split), ["--split", split],
                 TOFU_SPLIT_COST[split] if tofu_files else 1) for split in splits]
    return [(setting_name(scenario_name), [], REAL_WORLD_FACTOR)]


def _common_options(args, replaced: tuple[str, ...]) -> list[str]:
    """What every sweep.py call of this command ends with: the user's ``--set`` items other than the
    ``replaced`` keys (which the caller sets itself), the experiment, no progress bars, the stores."""
    argv = [w for item in args.set if not item.startswith(tuple(f"{key}=" for key in replaced)) for w in ("--set", item)]
    # Every trial of a reproduction is its study's Pareto-best (one trial per method), so sweep.py's default
    # policy would keep a checkpoint and a registered model of each (~1 GB for SmolLM2): 55 trials filled a
    # 100 GB disk. The results are the export; checkpoints only where asked for.
    argv += ["--experiment", experiment_of(args), "--no-progress", "--keep-checkpoints", args.keep_checkpoints]
    for option, value in (("--tracking-uri", args.tracking_uri), ("--storage", args.storage), ("--device", args.device),
                          ("--data-dir", args.data_dir)):
        if value:
            argv += [option, value]
    return argv


def sensitivity_unit(args) -> Unit:
    """One sweep.py call: an Optuna study of ``args.sensitivity`` trials per method over its own space
    (``--sampler tpe``; epochs fixed to the preset's, the learning rate searched), fictitious, first split."""
    from study.reporting.results import setting_name

    _, epochs = preset_training(args.preset, args.set)
    split, seed = args.splits[0], args.seeds[0]
    name = f"{SENSITIVITY_PREFIX}-{args.preset}-{FICTITIOUS.name}-{split}-s{seed}"
    argv = ["--preset", args.preset, "--scenario", FICTITIOUS.name, "--split", split, "--method", *args.methods,
            "--sampler", "tpe", "--n-trials", str(args.sensitivity), "--seed", str(seed), "--study-name", name,
            "--set", f"train.epochs={epochs!r}", *_common_options(args, ("train.epochs",))]
    return Unit(FICTITIOUS.name, setting_name(FICTITIOUS.name, split), seed, tuple(args.methods), name, tuple(argv), 1)


def experiment_of(args) -> str:
    return args.experiment or (SENSITIVITY_EXPERIMENT if args.sensitivity else DEFAULT_EXPERIMENT)


def out_of(args) -> Path:
    """``--out``, else ``docs/results/<scenario folder>`` (``all``, ``sensitivity``) for the default preset and
    ``docs/results/<preset>-<scenario folder>`` for any other (a TOFU study never writes over the built-in
    one's folder; one level, as every results folder), relative to the repository."""
    if args.out:
        out = Path(args.out)
    else:
        name = "sensitivity" if args.sensitivity else ("all" if args.scenario == "all" else scenario(args.scenario).folder)
        out = Path(RESULTS) / (name if args.preset == "default" else f"{Path(args.preset).stem}-{name}")
    return out if out.is_absolute() else ROOT / out


def preset_of(preset: str, scenario_name: str) -> str:
    """The preset of a scenario's studies: a ``paper-*`` preset stands for the paper's settings of every
    scenario (``paper-fictitious``, ``paper-continual``: tasks 1-10, ``paper-real-world``:
    Llama-3-8B-Instruct); any other preset is used as given."""
    from study import presets

    own = f"paper-{scenario_name}"
    return own if preset.startswith("paper-") and own in presets.available() else preset


def tasks_of(args) -> tuple[int, ...]:
    """Continual tasks: ``--tasks``, else the continual preset's own (a continual preset's ``data.tasks``),
    else :data:`CONTINUAL_TASKS`."""
    from study import presets

    if args.tasks:
        return tuple(args.tasks)
    data = presets.read(preset_of(args.preset, CONTINUAL.name))["config"].get("data", {})
    return tuple(data["tasks"]) if data.get("scenario") == CONTINUAL.name and data.get("tasks") else CONTINUAL_TASKS


def plan_units(args) -> list[Unit]:
    from study import presets
    from study.reporting.results import study_name

    if args.sensitivity:
        return [sensitivity_unit(args)]
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    units = []
    for sc in scenarios:
        preset = preset_of(args.preset, sc)
        lr, epochs = preset_training(preset, args.set)
        cfg = presets.run_config(preset, settings=args.set)
        for setting, options, cost in settings_of(sc, tuple(args.splits), tasks_of(args), args.fix_ref_model,
                                                  cfg.data.source != "builtin", cfg.eval.earlier_tasks):
            for seed in args.seeds:
                name = study_name(args.preset, sc, setting, seed)
                argv = ["--preset", preset, "--scenario", sc, *options, "--method", *args.methods,
                        "--sampler", "paper", "--n-trials", "1", "--seed", str(seed), "--study-name", name,
                        "--set", f"train.lr={lr!r}", "--set", f"train.epochs={epochs!r}",
                        *_common_options(args, ("train.lr", "train.epochs"))]
                units.append(Unit(sc, setting, seed, tuple(args.methods), name, tuple(argv), cost))
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
    a("--tasks", nargs="+", type=int, metavar="K",
      help="continual tasks (default: the continual preset's, paper-continual: 1-10; else 1 2 3 4)")
    a("--fix-ref-model", choices=["both", "no", "yes"], default="both",
      help="continual: run without and with sweep.py's --fix-ref-model (default: %(default)s)")
    a("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
      help="passed to sweep.py for every study; train.lr / train.epochs replace the preset's for every method")
    a("--out", help="where the tables, README.md, figures and notebooks go (default: docs/results/<scenario>, "
                    "docs/results/all for every scenario, docs/results/sensitivity; another preset than default: "
                    "docs/results/<preset>-...)")
    a("--data-dir", help="passed to sweep.py: a TOFU-format folder (e.g. ../shared/data/tofu) for presets that need "
                         "data (tofu-cpu, paper-*)")
    a("--keep-checkpoints", choices=["none", "best", "all"], default="none",
      help="passed to sweep.py: which trials keep their checkpoint and registered model (default: %(default)s; "
           "the export holds the results, and one trial per method makes every trial Pareto-best)")
    a("--tracking-uri", help="MLflow tracking URI (sweep.py's default when omitted)")
    a("--storage", help="Optuna storage (sweep.py's default when omitted)")
    a("--experiment", help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT}; with --sensitivity {SENSITIVITY_EXPERIMENT})")
    a("--device", help="cpu, cuda ... (sweep.py's default when omitted)")
    a("--seconds-per-trial", type=float, help="for the --dry-run estimate (default: an assumption per preset)")
    a("--sensitivity", type=int, metavar="N", default=0,
      help="instead of the paper's settings: N trials per method over its own space (Optuna), then the "
           "methods' Pareto fronts compared (see above)")
    a("--dry-run", action="store_true", help="print the plan and the estimated cost, run nothing")
    a("--reuse-export", action="append", default=[], metavar="FOLDER",
      help="a results folder whose export holds some of this command's studies in full: those are copied from "
           "it into --out's export instead of run again (e.g. the continual folder's trials into a folder that "
           "compares them with --fix-ref-model); repeatable")
    a("--skip-runs", action="store_true", help="only rebuild the export and the tables from the runs already in the store")
    a("--from-exports", action="store_true",
      help="rebuild the tables, figures, claims and notebooks from <out>/export/ alone (no store, no runs)")
    a("--no-notebooks", action="store_true",
      help="do not execute the scenarios' notebooks into --out (by default each scenario with runs gets "
           "notebooks/<scenario>.ipynb executed on the export of this command's studies, outputs kept)")
    return parser


def _cost_notes(units: list[Unit], tasks: tuple[int, ...]) -> str:
    """How the estimate counts the trials of ``units`` that cost more than one forget01 trial: continual
    (each task in turn, and where evaluated the earlier tasks' forget sets), real-world (more data), TOFU's
    larger fictitious splits (their task's training); and what it leaves out (the fine-tunes)."""
    notes = []
    for u in {u.setting: u for u in units}.values():
        if u.scenario == CONTINUAL.name:
            notes.append(f"a {u.setting} trial counts {u.cost:.2f}: its {len(tasks)} tasks in turn"
                         + (", each also evaluating the earlier tasks' forget sets" if u.cost > len(tasks) else ""))
        elif u.scenario != FICTITIOUS.name:
            notes.append(f"a {u.setting} trial counts {u.cost:g}: more data")
        elif u.cost != 1:
            notes.append(f"a {u.setting} trial counts {u.cost:.1f}: its task's training")
    return "; ".join([*notes, "the target's and retain models' fine-tunes are not counted (each is cached by content)"])


def print_plan(args, units: list[Unit]) -> None:
    lr, epochs = preset_training(args.preset, args.set)
    studies = sorted({u.study for u in units})
    per_trial = args.seconds_per_trial or SECONDS_PER_TRIAL.get(args.preset, OTHER_SECONDS)
    per_study = args.sensitivity or 1
    trials = sum(len(u.methods) for u in units) * per_study
    seconds = sum(u.cost * len(u.methods) for u in units) * per_study * per_trial
    if args.sensitivity:
        print(f"preset {args.preset}: sensitivity, {args.sensitivity} trials per method (sampler tpe) over each "
              f"method's space, epochs {epochs}")
    else:
        print(f"preset {args.preset}: lr {lr:g} for every method (the preset's train.lr, in place of the released "
              f"1e-5), epochs {epochs}, released α/β (sampler paper), one trial per method per study")
    print(f"{len(studies)} studies (scenario × setting × seed), {trials} trials "
          f"({len(args.methods)} methods, seeds {' '.join(map(str, sorted({u.seed for u in units})))})")
    cost = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
    print(f"estimate: {cost} at an assumed {per_trial:g} s per forget01 trial ({_cost_notes(units, tasks_of(args))})")
    for k, u in enumerate(units, 1):
        print(f"  [{k}/{len(units)}] {u.scenario} {u.setting} {' '.join(u.methods)} seed {u.seed}  study {u.study}")
    print(f"each study into {out_of(args) / 'export'} as it finishes; then: tables, README.md, figures and notebooks in "
          f"{out_of(args)}")


def rebuild_command(argv) -> str:
    """The command that rebuilds these results on the default stores: ``argv`` without the store and
    output options (where a user's stores are is theirs; a relative ``--out`` is the repository's and
    stays) and without ``--skip-runs`` / ``--from-exports`` / ``--reuse-export`` (a re-run keeps what the
    export holds, wherever it came from)."""
    drop_with_value = {"--tracking-uri", "--storage", "--out", "--experiment", "--device", "--reuse-export"}
    dropped = {"--skip-runs", "--from-exports"}
    words, skip = [], None
    for word in argv:
        if skip:
            if skip == "--out" and not Path(word).is_absolute():
                words += [skip, word]
            skip = None
        elif word in drop_with_value:
            skip = word
        elif word not in dropped and not word.startswith(tuple(f"{o}=" for o in drop_with_value)):
            words.append(word)
    return " ".join(["python experiments/reproduce.py", *words])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from study.errors import StudyInputError, interrupt_exit_code, interrupt_reason, sigterm_as_interrupt

    with sigterm_as_interrupt():  # Slurm, Kubernetes and `timeout` send SIGTERM: handled like Ctrl-C
        try:
            return _main(args, argv)
        except StudyInputError as error:  # a preset, an --out, a setting: one line (sweep.py reports its own)
            print(f"error: {_shown(str(error), args)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as stop:  # between studies or while the tables are built
            print(f"\n{interrupt_reason(stop)}: stopped. Run the same command again to resume; finished studies "
                  "are reused.", file=sys.stderr)
            return interrupt_exit_code(stop)


def _shown(text: str, args) -> str:
    """``text`` (a command line, a sweep's output) with no credential of the stores in it."""
    from study.credentials import scrub

    return scrub(text, args.storage, args.tracking_uri, os.environ.get("OPTUNA_STORAGE"), os.environ.get("MLFLOW_TRACKING_URI"))


def check_args(args) -> None:
    """What sweep.py does not check: the estimate's ``--seconds-per-trial`` and an ``--out`` that can be
    created (checked before any store is written)."""
    import math

    from study.errors import StudyInputError

    if args.seconds_per_trial is not None and not (math.isfinite(args.seconds_per_trial) and args.seconds_per_trial > 0):
        raise StudyInputError(f"--seconds-per-trial must be a positive number of seconds, got {args.seconds_per_trial!r}")
    out = out_of(args)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "is not a folder" if existing is not None and not existing.is_dir() else "is not writable"
        raise StudyInputError(f"--out {out}: cannot be created ({existing} {why})")


def _main(args, argv) -> int:
    check_args(args)
    unknown = [m for m in args.methods if m not in PAPER_METHODS]
    if unknown:
        print(f"note: {', '.join(unknown)} are not among the paper's methods (sweep.py checks the names)", file=sys.stderr)
    units = plan_units(args)
    sweep = _sweep()
    if args.dry_run:
        print_plan(args, units)
        # Each setting's first command through sweep.py's own --dry-run: a bad option, preset, task or
        # store is reported now rather than hours into the run.
        needs: dict[str, list[str]] = {}  # what a real run needs -> the settings that need it
        for unit in {(u.scenario, u.setting): u for u in units}.values():
            code, out, err = _call(sweep, [*unit.argv, "--dry-run"])
            for line in out.splitlines():
                if line.startswith("a real run needs: "):
                    needs.setdefault(line.removeprefix("a real run needs: "), []).append(f"{unit.scenario} {unit.setting}")
            if code != 0:
                print(_shown(f"error: sweep.py {' '.join(unit.argv)} --dry-run exited {code}:\n{err[-2000:]}", args),
                      file=sys.stderr)
                return code
        for need, where in needs.items():
            print(f"a real run needs: {need} ({', '.join(where)})")
        print("checked: each setting's sweep.py command passes its --dry-run")
        return 0
    command = rebuild_command(argv if argv is not None else sys.argv[1:])
    from study.reporting.exports import ExportError

    uri = None
    if not args.from_exports:
        from study.reporting.analysis import resolve_tracking_uri
        from study.config import DEFAULT_TRACKING_URI

        uri = resolve_tracking_uri(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    if not args.skip_runs and not args.from_exports:
        started = time.monotonic()
        try:
            # Where a study's trials are already held in full: this folder's export (a re-run keeps them),
            # else a --reuse-export folder's (copied into this one).
            sources = [(folder, *exported_trials(folder, required=folder != out_of(args)))
                       for folder in (out_of(args), *(ROOT / f for f in args.reuse_export))]
        except ExportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for k, unit in enumerate(units, 1):
            t0 = time.monotonic()
            held = next(((folder, digests) for folder, found, digests in sources
                         if all(found.get(name, 0) >= (args.sensitivity or 1) for name in unit_studies([unit]))), None)
            if held:
                folder, digests = held
                stale = other_data(args, sweep, unit, digests, folder)
                if stale:
                    print(_shown(f"error: {stale}", args), file=sys.stderr)
                    return 2
                if folder != out_of(args):
                    copy_units(args, folder, [unit], command)
                print(f"[{k}/{len(units)}] {unit.scenario} {unit.setting} {' '.join(unit.methods)} seed {unit.seed} "
                      f"{'kept' if folder == out_of(args) else 'taken'} from {_portable(folder / 'export')}", flush=True)
                continue
            code, out, err = _call(sweep, list(unit.argv))
            if code in (130, 143):  # sweep.py was interrupted: its message says what happened
                print(_shown(err.strip(), args), file=sys.stderr)
                return code
            if code != 0:
                print(_shown(f"[{k}/{len(units)}] {unit.scenario} {unit.setting} {' '.join(unit.methods)} seed {unit.seed} "
                             f"failed (exit {code}):\n{out[-2000:]}\n{err[-3000:]}", args), file=sys.stderr)
                return code
            n = args.sensitivity or 1
            resumed = out.count(f"{n}/{n} trials finished, resuming") == len(unit.methods)
            export_units(args, [unit], uri, command)  # the study's runs join the export as soon as it finishes
            print(f"[{k}/{len(units)}] {unit.scenario} {unit.setting} {' '.join(unit.methods)} seed {unit.seed} "
                  f"{'reused' if resumed else 'done'} in {time.monotonic() - t0:.0f} s "
                  f"(total {time.monotonic() - started:.0f} s)", flush=True)
    import matplotlib

    matplotlib.use("Agg")

    try:
        # Each study that ran joined the export as it finished, and a kept one is there already: only
        # --skip-runs exports here (a re-run that keeps everything leaves the export as it was).
        export = export_units(args, units, uri, command) if args.skip_runs else read_export_of(args)
        paths = (build_sensitivity(args, export, command) if args.sensitivity
                 else build_tables(args, units, export, command))
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def unit_studies(units) -> set[str]:
    """The Optuna studies of ``units``: ``<study>/<method>``, the trials' ``study_name``."""
    return {f"{u.study}/{m}" for u in units for m in u.methods}


def target_scenarios(units) -> set[str]:
    """The scenarios whose target runs an export of ``units`` carries: theirs, and for continual the
    fictitious one it reuses."""
    return {u.scenario for u in units} | ({FICTITIOUS.name} if any(u.scenario == CONTINUAL.name for u in units) else set())


def export_units(args, units, uri: str, command: str):
    """The runs of ``units`` read from the store into ``<out>/export/`` (``study.reporting.exports.write_export``,
    merged with what is there), with the target runs of their scenarios (continual: the fictitious one
    it reuses); returns the export written."""
    from study.reporting.analysis import export_frames
    from study.reporting.exports import write_export

    scenarios = target_scenarios(units)
    runs, items = export_frames(uri, experiment_of(args), unit_studies(units), scenarios)
    return write_export(out_of(args), runs, items, command, {u.study for u in units})


def exported_trials(folder: Path, required: bool = False) -> tuple[dict[str, int], dict[str, set[str]]]:
    """FINISHED trials per ``<study>/<method>`` in ``folder``'s export (none when there is no export, unless
    ``required``: then :class:`~study.reporting.exports.ExportError`, one line naming the file), and
    the data digests they recorded: a study the export already holds in full is not run again (a
    reproduction that lost its machine and store resumes from its export; ``--reuse-export`` copies it from
    another folder's), if it ran on the data the unit reads now."""
    from study.reporting.exports import finished_trials, has_export, read_export, trial_digests

    export = read_export(folder) if required or has_export(folder) else None
    return finished_trials(export).to_dict(), trial_digests(export)


def copy_units(args, source: Path, units, command: str):
    """The runs of ``units`` in ``source``'s export (every step, their per-item tables), with the target runs
    of their scenarios there (as :func:`export_units` takes them from a store), merged into ``<out>/export/``;
    returns the export written."""
    from study.reporting.exports import read_export, write_export

    export = read_export(source)
    runs = export.runs
    scenarios = target_scenarios(units)
    chosen = runs[runs["study_name"].isin(unit_studies(units))
                  | ((runs["kind"] == "target") & runs["scenario"].isin(scenarios))]
    items = export.items[export.items["run_id"].isin(set(chosen["run_id"]))] if not export.items.empty else export.items
    return write_export(out_of(args), chosen, items, command, {u.study for u in units})


def other_data(args, sweep, unit: Unit, digests: dict[str, set[str]], folder: Path) -> str | None:
    """Why ``unit``'s trials in ``folder``'s export cannot be kept: one of its studies ran on other data than
    its settings read now (``study.trial.runner.data_digest``: the files, or the code that builds them,
    changed); None when they can (the same digest, or runs made before digests were recorded)."""
    recorded = {name: digests[name] for name in sorted(unit_studies([unit])) if name in digests}
    if not recorded:
        return None
    from study.trial.runner import data_digest

    now = data_digest(sweep.plan(sweep.build_parser().parse_args([*unit.argv, "--dry-run"]))[0])
    for name, seen in recorded.items():
        if seen - {now}:
            return (f"{_portable(folder / 'export')}: study {name} was run on other data (digest "
                    f"{', '.join(sorted(seen))}; the data now gives {now}): move that folder aside, or pass "
                    "another --out, to run it on this data")
    return None


def read_export_of(args):
    from study.reporting.exports import read_export

    return read_export(out_of(args))


def build_tables(args, units, export, command: str) -> dict[str, Path]:
    """The paper's tables (``study.reporting.results.write_results``) and the scenarios' executed notebooks, from
    the export's runs of ``units`` (store and ``--from-exports`` alike)."""
    from study.reporting.analysis import scenario_runs
    from study.reporting.exports import items_of, last_step
    from study.reporting.results import write_results

    every = last_step(export.runs)
    studies = unit_studies(units)
    runs = every[(every["kind"] == "trial") & every["study_name"].isin(studies)].reset_index(drop=True)
    targets = every[every["kind"] == "target"].reset_index(drop=True)
    if args.scenario != "all":  # one scenario's tables and notebook, though the export may hold others
        runs = scenario_runs(runs, args.scenario)
    lr, epochs = preset_training(args.preset, args.set)
    note = (f"Preset `{args.preset}`, seeds {', '.join(map(str, args.seeds))}; every method one trial per seed at "
            f"lr {lr:g} (in place of the released 1e-5) and {epochs} epochs, the released α/β. Rebuilt by "
            f"`{command}`; every run is in `export/` (`--from-exports` rebuilds this folder from it alone).")
    out = out_of(args)
    items = {r: f for r in runs["run_id"] if (f := items_of(export.items, r)) is not None}
    paths = write_results(runs, targets, out, note, preset=args.preset, seeds=args.seeds, items=items)
    if not args.no_notebooks:
        paths.update(execute_notebooks(export.folder, out, sorted(set(runs["scenario"].dropna())), sorted({u.study for u in units})))
    return paths


def build_sensitivity(args, export, command: str) -> dict[str, Path]:
    """The sensitivity study's fronts compared (``study.reporting.sensitivity.write_sensitivity``), from its export."""
    from study.reporting.exports import last_step
    from study.reporting.sensitivity import write_sensitivity

    unit = sensitivity_unit(args)
    every = last_step(export.runs)
    # This command's methods only (``<study>/<method>``): the export may hold other methods' studies.
    runs = every[(every["kind"] == "trial") & every["study_name"].isin(unit_studies([unit]))].reset_index(drop=True)
    targets = every[every["kind"] == "target"]
    target_mu = float(targets["model_utility"].iloc[0]) if len(targets) else float("nan")
    _, epochs = preset_training(args.preset, args.set)
    note = (f"Preset `{args.preset}`, fictitious {unit.setting}, seed {unit.seed}: every method {args.sensitivity} "
            f"trials of its own Optuna study (sampler tpe; Optuna's TPE samples its first 10 trials at random, so "
            f"with 10 or fewer this is a seeded random search), {epochs} epochs, lr and the method's α / β searched "
            f"over the preset's ranges (`python experiments/sweep.py --preset {args.preset} --dry-run` prints "
            f"them). Rebuilt by `{command}`; every run is in `export/`.")
    return write_sensitivity(runs, out_of(args), target_mu, note)


def _portable(path: Path) -> str:
    """``path`` relative to the repository when inside it (what a committed notebook may carry), else as is."""
    path = Path(path).resolve()
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def _scrub_paths(notebook: Path) -> None:
    """Remove the machine's absolute paths an executed notebook picked up: papermill's input / output paths
    and warnings that quote the repository's or the interpreter's files, made relative."""
    text = notebook.read_text()
    prefixes = {str(ROOT), sys.prefix, sys.base_prefix, os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    for prefix in sorted((p + "/" for p in prefixes), key=len, reverse=True):
        text = text.replace(prefix, "")
    notebook.write_text(text)


def execute_notebooks(export_dir: Path, out: Path, scenarios, studies) -> dict[str, Path]:
    """Each scenario's notebook (``notebooks/<key>.ipynb``) executed with papermill on the export and the
    ``studies`` this command ran (each method's median seed by (MU+FE)/2 represents it in the per-trial cells,
    ``pick="median"``; the summary cell shows the means of ``summary.csv``), written with its outputs into ``out/<key>.ipynb`` (its
    figures as PNG files beside it), paths relative to the repository; returns the notebooks' paths by
    scenario folder."""
    from study.reporting.analysis import run_notebook

    written = {}
    for name in scenarios:
        key = scenario(name).folder
        written[key] = out / f"{key}.ipynb"
        run_notebook(ROOT / "notebooks" / f"{key}.ipynb",
                     {"export_dir": _portable(export_dir), "studies": list(studies), "pick": "median",
                      "figures_dir": _portable(out)}, written[key])
        _scrub_paths(written[key])
    return written


if __name__ == "__main__":
    sys.exit(main())
