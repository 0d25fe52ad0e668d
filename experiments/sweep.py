#!/usr/bin/env python
"""Run an unlearning study: Optuna over β, α and learning rates, every trial an MLflow run.

    python experiments/sweep.py                      # the offline default (SmolLM2, built-in authors, ME+GD)
    python experiments/sweep.py --preset smoke       # one minute on a tiny random model
    python experiments/sweep.py --preset paper-fictitious --dry-run

Re-running the same command resumes the study and runs only the missing trials; several processes
(or machines) started with the same --study-name and --storage share one study.

    torchrun --nproc_per_node 2 experiments/sweep.py --preset paper-fictitious --method NPO+GD

runs every trial over the processes torchrun starts (DeepSpeed ZeRO-3, train.deepspeed): rank 0 runs
the study and writes the runs, the other ranks train with it (study/trial/ranks.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import presets  # noqa: E402  (after the path; imports no torch)
from study.methods.hyperparams import SEARCHABLE_SETTINGS, SETTINGS  # noqa: E402
from study.inputs.data import SPLITS  # noqa: E402
from study.paths import repository_file  # noqa: E402
from study.inputs.scenarios import SCENARIOS, scenario  # noqa: E402
from study.config import (  # noqa: E402  (torch-free)
    COLLECTIVE_TIMEOUT_S, DEFAULT_EXPERIMENT, DEFAULT_STORAGE, DEFAULT_TRACKING_URI, KEEP, OBJECTIVES, SAMPLERS,
    SYSTEM_METRICS_S,
)


def build_parser() -> argparse.ArgumentParser:
    names = presets.available()
    lines = "\n".join(f"  {n:<18} {presets.read(p)['description']}" for n, p in names.items())
    parser = argparse.ArgumentParser(
        prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"presets:\n{lines}\n\nResults: the MLflow UI command is printed at the end.")
    a = parser.add_argument
    a("--preset", default="default", metavar="NAME|FILE.toml",
      help=f"settings to start from: {', '.join(names)}, or a preset file (default: %(default)s)")
    a("--scenario", choices=list(SCENARIOS), help="what is unlearned (docs/science.md §1)")
    a("--method", nargs="+", metavar="M", help="one or several methods, e.g. ME+GD IDK+AP NPO+GD (forget loss + regularizer)")
    a("--split", choices=SPLITS, help="TOFU forget split")
    a("--tasks", nargs="+", type=int, metavar="K", help="tasks to unlearn in order (continual), e.g. 1 2 3")
    a("--model", help="model family (llama2-7b, llama3-8b, smollm2-135m, tiny-llama), Hugging Face id or local path")
    a("--target", help="a ready target model (skips fine-tuning one), e.g. locuslab/tofu_ft_llama2-7b or a checkpoint")
    a("--data-dir", help="directory of TOFU-format JSON-lines files (default: the preset's source, e.g. built-in authors); "
                         "'hub' reads locuslab/TOFU online")
    a("--n-trials", type=int, help="finished trials wanted per method (resuming counts earlier ones)")
    a("--sampler", choices=SAMPLERS, help="tpe (Bayesian), grid, or paper: the paper's exact settings (docs/science.md §4)")
    a("--objective", choices=OBJECTIVES,
      help="pareto: maximise Model Utility and Forget Efficacy together (default); or one scalar")
    a("--prune", action="store_true", help="evaluate after every epoch and prune poor trials (needs a single --objective)")
    a("--storage", help="Optuna storage: sqlite:///..., postgresql+psycopg2://user@host/db, or journal:<file> "
                        f"(default: $OPTUNA_STORAGE, else {DEFAULT_STORAGE}). Pass a URL with a password in "
                        "$OPTUNA_STORAGE, not here: a command line is readable by every local user")
    a("--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}; "
                             "or http://host:5000). Credentials: in $MLFLOW_TRACKING_URI (or MLflow's "
                             "$MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD), not here")
    a("--experiment", help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")
    a("--study-name", help="Optuna study name (default: derived from preset, scenario, split and model)")
    a("--seed", type=int, help="training seed (default 1001, docs/science.md §4); the sampler's seed too")
    a("--keep-checkpoints", choices=KEEP, help="which trials keep their checkpoint in MLflow (default: best = Pareto-best)")
    a("--system-metrics", type=float, metavar="SECONDS", help="MLflow's system metrics (system/*: CPU, memory, disk, "
      f"network, GPU) on each trial's run, one sample every SECONDS (default {SYSTEM_METRICS_S:g}; 0 = off)")
    a("--fix-ref-model", action="store_true", help="continual: keep the original model as NPO/DPO/KL reference")
    a("--nli", help="NLI model for Entailment (the paper's: sileod/deberta-v3-base-tasksource-nli); none = reported missing")
    a("--embedder", help="sentence embedder for Cosine Similarity (default: all-MiniLM-L6-v2 shipped on PyPI)")
    a("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    a("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
      help="any other setting, e.g. --set train.max_length=256 --set eval.batch_size=8 (TOML value syntax)")
    a("--dry-run", action="store_true", help="print the plan (every setting) and exit")
    a("--no-progress", action="store_true", help="no progress bars")
    a("--heartbeat", type=int, metavar="SECONDS", help="seconds between a running trial's heartbeats in the Optuna storage "
      "(default 30); a trial silent for twice as long (its worker was killed) is failed, and its MLflow run ended FAILED, "
      "by the next worker that starts a trial")
    a("--max-failures", type=int, metavar="N", help="stop a study after N failed trials in a row, e.g. a setting whose "
      "loss always turns NaN (default 5)")
    a("--collective-timeout", type=int, metavar="SECONDS", help="under torchrun: seconds a training collective waits "
      f"for the other ranks before the trial fails (default {COLLECTIVE_TIMEOUT_S})")
    return parser


def world_size() -> int:
    """How many processes torchrun started for this command (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def plan(args) -> tuple[object, object, dict]:
    """The run configuration and study settings from preset + options (all validated, nothing written)."""
    from study.search import search_space

    preset = presets.read(args.preset)
    config, study = preset["config"], preset["study"]
    args.needs = []  # what a real run needs that this machine or command lacks: a dry run lists it, a run fails on it
    fixed = apply_options(config, args)
    methods = args.method or study.get("methods", ["ME+GD"])
    if methods == "paper":  # a preset's shorthand for the paper's nine methods
        from study.paper import PAPER_METHODS

        methods = list(PAPER_METHODS)
    config.setdefault("method", {}).setdefault("name", methods[0])
    if "name" in config["method"] and args.method:
        config["method"]["name"] = methods[0]
    cfg = presets.build(config)
    check_inputs(cfg, args.device, args.needs if args.dry_run else None, world_size())
    settings = study_settings(args, cfg, study, list(methods), fixed)
    spaces = {m: search_space(m, scenario(cfg.data.scenario).name, settings.sampler, settings.space, settings.fixed) for m in settings.methods}
    return cfg, settings, spaces


def apply_options(config: dict, args) -> list[str]:
    """sweep.py's options (and ``--set``) written into a preset's ``config`` tables, in place; returns
    the searched hyper-parameters that ``--set`` fixed for the study."""
    from study.errors import StudyInputError

    put = lambda section, key, value: config.setdefault(section, {}).__setitem__(key, value)  # noqa: E731
    if args.scenario:
        put("data", "scenario", args.scenario)
        chosen = scenario(args.scenario)
        # Without --tasks the scenario's own tasks replace a preset's single task (and, for real-world,
        # whose people are not TOFU's tasks, any preset tasks).
        if not args.tasks and (not chosen.has_splits or config["data"].get("tasks", [1]) == [1]):
            put("data", "tasks", list(chosen.default_tasks))
    if args.split:
        put("data", "split", args.split)
    if args.tasks:
        put("data", "tasks", args.tasks)
    if args.model is not None:
        put("model", "name", args.model)
    if args.target is not None:
        put("model", "target", args.target)
    if args.data_dir is not None:
        if not args.data_dir.strip():
            raise StudyInputError("--data-dir must name a directory (or hub), got an empty string")
        try:
            source = args.data_dir if args.data_dir == "hub" else str(Path(args.data_dir).expanduser().resolve())
        except (OSError, RuntimeError) as error:  # missing, a symlink loop, no permission
            raise StudyInputError(f"--data-dir {args.data_dir}: not a readable folder ({type(error).__name__}: {error})") from None
        put("data", "source", source)
    if config.get("data", {}).get("source", "builtin") == "":
        from study.errors import Unavailable

        files = "forget01.json, retain90.json, retain_perturbed.json, ..." \
            if scenario(config.get("data", {}).get("scenario", "fictitious")).has_splits else "forget.json, neighbor.json, ..."
        needs = f"preset {args.preset} needs data: pass --data-dir DIR (a folder with {files})"
        if not args.dry_run:
            raise Unavailable(needs)
        args.needs.append(needs)
    if args.seed is not None:
        put("train", "seed", args.seed)
    if args.fix_ref_model:
        put("method", "fix_ref_model", True)
    if args.nli is not None:
        put("eval", "nli", None if args.nli == "none" else args.nli)
    if args.embedder is not None:
        put("eval", "embedder", args.embedder)
    if args.prune:
        put("eval", "per_epoch", True)
    # searchable hyper-parameters given with --set: fixed for the study, not searched (study/methods/hyperparams.py)
    return sorted(SEARCHABLE_SETTINGS[key] for key in presets.apply_settings(config, args.set) if key in SEARCHABLE_SETTINGS)


def check_inputs(cfg, device: str | None, needs: list | None = None, world: int = 1) -> None:
    """What would fail every trial, reported before anything is written: the device, the model names,
    the embedder, the DeepSpeed file and its agreement with the run (batch geometry over ``world``
    processes, precision, optimizer), the data (files, tasks, refusals, perturbed answers) and the
    sequence lengths against the data's longest prompts. What this machine lacks (CUDA) is appended to
    ``needs`` where given (a dry run), else raised."""
    from study.inputs import models
    from study.trial import runner
    from study.errors import StudyInputError, Unavailable

    checked, available = None, True
    if device is not None:
        try:
            checked = models.check_device(device)  # an unknown device, or CUDA on a machine without it
        except Unavailable as missing:
            if needs is None:
                raise
            needs.append(str(missing))
            available = False
    if needs is not None and cfg.train.deepspeed is not None and not models.torch.cuda.is_available():
        needs.append(f"train.deepspeed {cfg.train.deepspeed}: CUDA GPUs (DeepSpeed ZeRO-3); this machine has none")
    if available:  # the precision on the device the run would use (not knowable for a device this machine lacks)
        runner.run_dtype(cfg, checked)  # float16 on a CPU is refused; bfloat16 on a CPU without native bf16 warns (one line)
    for name in (cfg.model.name, cfg.model.target):
        if name is not None:
            models.resolve(name)  # an unknown model name or a folder that holds none is reported now
    window = models.context_window(cfg.model.name)
    for name, value in (("train.max_length", cfg.train.max_length), ("finetune.max_length", cfg.finetune.max_length),
                        ("eval.max_length", cfg.eval.max_length)):
        if window is not None and value > window[0]:
            raise StudyInputError(f"{name} {value} is beyond the model's context window, {window[0]} tokens "
                                  f"({window[1]}): at most {window[0]}")
    if cfg.eval.embedder != "builtin":
        models.check_loadable(cfg.eval.embedder, "embedder")
    if cfg.train.deepspeed is not None and not repository_file(cfg.train.deepspeed).is_file():
        raise StudyInputError(f"train.deepspeed {cfg.train.deepspeed!r}: no such file")
    from study.trial import ranks

    ranks.check_world(cfg, world, checked if available else None)  # DeepSpeed, per-epoch evaluation, the processes
    if cfg.data.source and not cfg.data.source.startswith("hub"):  # the hub is read only when the study runs
        from study.inputs.data import check_eval_sets
        from study.trial.runner import scenario_data, source_for, tasks_of

        source = source_for(cfg)
        for task in tasks_of(cfg):
            data = scenario_data(cfg, task, source)
            check_eval_sets(data)
            _check_lengths(cfg, data)


def study_settings(args, cfg, study: dict, methods: list[str], fixed: list[str]):
    """The study's settings: each from its option, else the environment (stores), else the preset's
    ``[study]`` table, else the default."""
    from study.config import StudySettings

    sc = scenario(cfg.data.scenario)
    split = sc.split_label(cfg.data.split)
    preset = Path(args.preset).stem  # a name, or a preset file's
    parts = [preset] + [p for p in (sc.name, split) if p not in preset] + [Path(cfg.model.name).name]
    default_name = "-".join(dict.fromkeys(parts))
    if sc.sequential and cfg.method.fix_ref_model:
        default_name += "-fixref"
    if args.study_name is None:  # a model or preset name can make an invalid default: say which, and the way out
        from study.errors import StudyInputError
        from study.config import check_study_name

        try:
            check_study_name(default_name)
        except StudyInputError as error:
            raise StudyInputError(f"the default study name, made of the preset, scenario, split and model name "
                                  f"({cfg.model.name!r}), is not valid ({error}); pass --study-name NAME") from None
    return StudySettings(
        study_name=args.study_name if args.study_name is not None else default_name,
        methods=methods,
        n_trials=args.n_trials if args.n_trials is not None else study.get("n_trials", 4),
        sampler=args.sampler or study.get("sampler", "tpe"),
        objective=args.objective or study.get("objective", "pareto"),
        storage=_first(args.storage, os.environ.get("OPTUNA_STORAGE"), study.get("storage"), DEFAULT_STORAGE),
        tracking_uri=_first(args.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), study.get("tracking_uri"),
                            DEFAULT_TRACKING_URI),
        experiment=args.experiment if args.experiment is not None else study.get("experiment", DEFAULT_EXPERIMENT),
        seed=cfg.train.seed if args.seed is not None else study.get("seed", 0),
        keep_checkpoints=args.keep_checkpoints or study.get("keep_checkpoints", "best"),
        prune=args.prune,
        preset=args.preset,
        space={k: list(v) for k, v in study.get("space", {}).items()},
        heartbeat=args.heartbeat if args.heartbeat is not None else study.get("heartbeat", 30),
        max_failures=args.max_failures if args.max_failures is not None else study.get("max_failures", 5),
        fixed=fixed,
        system_metrics=args.system_metrics if args.system_metrics is not None else study.get("system_metrics", SYSTEM_METRICS_S),
        collective_timeout=_first(args.collective_timeout, study.get("collective_timeout"), COLLECTIVE_TIMEOUT_S),
    )




def _first(*values):
    """The first value that is not None or empty (option, environment variable, preset, default)."""
    return next(v for v in values if v)


def _check_lengths(cfg, data) -> None:
    """Each sequence length holds the longest prompt it must (training: the forget and retain prompts
    plus one answer token; generation: the evaluation prompts plus one new token), or every trial would
    fail (or train on no label). Needs the tokenizer, so it runs only where that is at hand locally."""
    from study.inputs import models
    from study.errors import StudyInputError

    spec = models.resolve(cfg.model.name)
    local = Path(spec.tokenizer).is_dir() or (spec.tokenizer == "builtin:smollm2" and (
        models.cache_dir() / "models" / "smollm2-135m-instruct" / "tokenizer.json").exists())
    if not local:
        return
    try:
        tokenizer = models.load_tokenizer(spec, cfg.model.trust_remote_code)
        prompt = models.prompt_format(spec, tokenizer)
    except Exception:  # the trial will say why it cannot load; this check is only a shortcut
        return

    def longest(rows) -> int:
        texts = sorted({prompt.prompt(row["question"]) for row in rows})
        return max(map(len, tokenizer(texts, add_special_tokens=True)["input_ids"]), default=0) if texts else 0

    trained = longest(data.forget + data.retain)
    evaluated = longest([row for eval_set in data.eval_sets for row in eval_set.rows])
    for name, value, needed in (("train.max_length", cfg.train.max_length, trained + 1),
                                ("finetune.max_length", cfg.finetune.max_length, longest(data.full) + 1),
                                ("eval.max_length", cfg.eval.max_length, evaluated + 1)):
        if value < needed:
            raise StudyInputError(f"{name} must be at least {needed} tokens to hold the longest prompt of "
                                  f"{data.source} with {cfg.model.name}, got {value}")


def print_plan(cfg, settings, spaces) -> None:
    from study.search import describe_space
    from study.credentials import redact

    print(f"study        {settings.study_name}  (preset {settings.preset})")
    print(f"methods      {' '.join(settings.methods)}")
    print(f"sampler      {settings.sampler}, objective {settings.objective}, {settings.n_trials} trial(s) per method"
          + (", pruning on" if settings.prune else ""))
    print(f"storage      {redact(settings.storage)}")
    print(f"tracking     {redact(settings.tracking_uri)}  experiment {settings.experiment}")
    print(f"checkpoints  keep {settings.keep_checkpoints}")
    print("system       MLflow system metrics " + (f"every {settings.system_metrics:g} s" if settings.system_metrics else "off"))
    for name in settings.fixed:
        key = SETTINGS[name]
        print(f"fixed        {key} = {cfg.flat()[key]} (given with --set: not searched)")
    for method, space in spaces.items():
        print(f"space {method:<8} {describe_space(space)}")
    print("settings:")
    for key, value in cfg.flat().items():
        shown = '""' if value == "" else value  # an empty setting as the --set value it is
        print(f"  {key} = {shown}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from study.errors import sigterm_as_interrupt

    with sigterm_as_interrupt():  # Slurm, Kubernetes and `timeout` send SIGTERM: handled like Ctrl-C
        return _main(args)


def _main(args) -> int:
    if world_size() > 1:
        return _main_ranks(args)
    return _main_leader(args)


def _main_ranks(args) -> int:
    """Under torchrun: every rank checks the same plan, rank 0 says in one line what is wrong with it (its
    own error, another rank's, or ranks whose settings differ) before anything trains; then rank 0 runs the
    studies (:func:`_main_leader`) and the other ranks follow its trials (``study.trial.ranks.run``)."""
    import dataclasses

    from study.credentials import redact
    from study.errors import StudyInputError
    from study.trial import ranks

    error, agreed, planned = None, {}, None
    try:
        planned = plan(args)
        cfg, settings, _ = planned
        stores = {"storage": redact(settings.storage), "tracking_uri": redact(settings.tracking_uri)}  # never a password
        agreed = {"config": cfg.to_dict(), "study": {**dataclasses.asdict(settings), **stores}}
    except StudyInputError as failure:
        error = str(failure)
    timeout = planned[1].collective_timeout if planned else None
    return ranks.run(agreed, error, timeout, lambda leader: _main_leader(args, leader, planned))


def _main_leader(args, leader=None, planned=None) -> int:
    """The studies in this process (rank 0 under torchrun, with its ``leader``); ``planned``: what
    :func:`plan` gave already, if it ran."""
    from study.errors import StudyFault, StudyInputError, interrupt_exit_code, interrupt_reason

    try:
        cfg, settings, spaces = planned or plan(args)
        from study.credentials import redact

        for option, url in (("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
            if url and redact(url) != url:
                variable = "OPTUNA_STORAGE" if option == "--storage" else "MLFLOW_TRACKING_URI"
                print(f"warning: {option} holds a credential, readable by every local user in /proc/<pid>/cmdline; "
                      f"pass the URL in ${variable} instead", file=sys.stderr)
        if args.dry_run:
            print_plan(cfg, settings, spaces)
            if leader is not None:
                print(f"processes    {leader.channel.env.world_size} (torchrun): every trial trains over all of them")
            for need in args.needs:
                print(f"a real run needs: {need}")
            return 0
        os.chdir(ROOT)  # default stores (mlruns/) are relative to the repository
        from study.search import Sweep, checkpoint_estimate, pareto_table
        from study.trial.tracking import ui_command, ui_url

        print_plan(cfg, settings, spaces)
        print(checkpoint_estimate(cfg, settings))
        sweep = Sweep(cfg, settings, progress=not args.no_progress, device=args.device, leader=leader)
        studies = sweep.run()
    except StudyInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except StudyFault as error:  # the study's and trial's MLflow runs were ended FAILED with the reason
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the machine or a store failed outside a trial (disk full, read-only, network)
        from study.search import environment_cause, one_line
        from study.credentials import scrub

        cause = environment_cause(error)
        if cause is None:
            raise  # a bug: its traceback
        stores = (args.storage, args.tracking_uri, os.environ.get("OPTUNA_STORAGE"), os.environ.get("MLFLOW_TRACKING_URI"))
        print(f"error: {scrub(one_line(cause), *stores)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:
        print(f"\n{interrupt_reason(stop)}: the running trial was ended as KILLED in MLflow and FAIL in Optuna. "
              "Run the same command again to resume; finished trials are kept.", file=sys.stderr)
        return interrupt_exit_code(stop)
    rows = pareto_table(studies)
    print("\nPareto-best trials (Model Utility vs Forget Efficacy):")
    if rows:
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
            print(pd.DataFrame(rows).drop(columns=["run_id"]).to_string(index=False))
    else:
        print("  (no finished trial)")
    print(f"\nBrowse the runs:  {ui_command(settings.tracking_uri)}")
    print(f"  then open {ui_url(settings.tracking_uri, sweep.tracker.experiment_id)}  (the Pareto-best: "
          f"{ui_url(settings.tracking_uri, sweep.tracker.experiment_id, 'pareto')})")
    print("Analyse them:     notebooks/fictitious.ipynb, continual.ipynb, real_world.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
