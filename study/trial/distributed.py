"""The entry point that ``torchrun`` launches for ONE trial with DeepSpeed ZeRO-3 across its processes
(docs/science.md §4: the paper's two A100-40GB, bf16), logged to MLflow as a sweep's trial is; a study of
such trials is ``torchrun ... experiments/sweep.py`` (``study.trial.ranks``).

    torchrun --nproc_per_node 2 -m study.trial.distributed --preset paper-fictitious --method NPO+GD
    torchrun --nproc_per_node 2 -m study.trial.distributed --preset smoke --train-only --out /tmp/ds   # CPU, gloo

Rank 0 leads (``study.trial.ranks.Leader``): it prepares the target, writes the MLflow run (every setting as
a parameter, ``train/*`` per step, the evaluation per task with its per-item table, the checkpoint under
``--keep-checkpoints``), evaluates, and with ``--out`` also writes ``history.json`` (every step's losses),
``summary.json`` (evaluation per task) and, with ``--save-model``, ``model/``. The other ranks follow it
(``study.trial.ranks.follow``): they train each task with it and nothing else. Training goes through
``study.training.zero`` when ``train.deepspeed`` is set (this entry point sets it unless told
``--deepspeed none``, one process only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..inputs import models
from .. import presets
from . import ranks, runner
from ..config import COLLECTIVE_TIMEOUT_S, DEFAULT_TRACKING_URI, KEEP
from ..errors import StudyInputError, interrupt_exit_code, interrupt_reason, sigterm_as_interrupt
from ..training.zero import DEFAULT_CONFIG, DistEnv, init_distributed, load_config

EXPERIMENT = "distributed"
"""The MLflow experiment of this entry point's runs, unless ``--experiment`` names another."""


class StepRecorder:
    """A callback keeping every step of every task as plain dicts (what ``history.json`` holds). The
    step counter restarts at 1 with each task, which is how steps are matched to ``tasks``."""

    def __init__(self, tasks: Sequence[int | None]):
        self.tasks = list(tasks)
        self.steps: list[dict] = []
        self._task = -1

    def on_step(self, event) -> None:
        if event.step == 1:
            self._task += 1
        self.steps.append({"task": self.tasks[self._task], **asdict(event)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m study.trial.distributed",
        description="One unlearning trial with DeepSpeed ZeRO-3 across the processes torchrun starts (one per GPU; "
                    "on CPU, gloo), logged to MLflow by rank 0 as a sweep's trial is. With --out, rank 0 also "
                    "writes history.json (every step's losses), summary.json (evaluation per task) and, with "
                    "--save-model, model/.")
    a = parser.add_argument
    a("--preset", default="default", help="preset name in experiments/presets or a .toml path (default: %(default)s)")
    a("--method", help="method, e.g. NPO+GD (default: the preset's)")
    a("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a setting (TOML value)")
    a("--deepspeed", help="DeepSpeed config (default: train.deepspeed of the preset, else "
                          "experiments/deepspeed/zero3.json); 'none' = plain PyTorch (one process only)")
    a("--train-only", action="store_true", help="skip evaluation (losses and the model only)")
    a("--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI}); "
                             "'none': no MLflow run")
    a("--experiment", default=EXPERIMENT, help="MLflow experiment (default: %(default)s)")
    a("--keep-checkpoints", choices=KEEP, default="best", help="keep the trained model in the run (best, all: a "
      "single run is its own Pareto front; none: not kept) (default: %(default)s)")
    a("--collective-timeout", type=int, default=COLLECTIVE_TIMEOUT_S, metavar="SECONDS",
      help="seconds a training collective waits for the other ranks before the run fails (default: %(default)s)")
    a("--out", type=Path, help="output directory (rank 0)")
    a("--save-model", action="store_true", help="save the final model to OUT/model (safetensors)")
    a("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_as_interrupt():  # torchrun, Slurm and `timeout` send SIGTERM: handled like Ctrl-C
        try:
            return _main(args)
        except KeyboardInterrupt as stop:
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"\n{interrupt_reason(stop)}: stopped before the end (the run is incomplete)", file=sys.stderr)
            return interrupt_exit_code(stop)


def _configure(args):
    """The run's configuration (preset, method, ``--set``, the DeepSpeed config) and the tracking URI,
    checked against the number of processes; a bad one raises ``StudyInputError``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = presets.run_config(args.preset, args.method, args.set)
    deepspeed_path = args.deepspeed or cfg.train.deepspeed or str(DEFAULT_CONFIG)
    cfg = cfg.replace(train={"deepspeed": None if deepspeed_path == "none" else deepspeed_path})
    if not cfg.train.deepspeed and world > 1:
        raise StudyInputError("--deepspeed none runs in one process; drop torchrun or give a DeepSpeed config")
    ranks.check_world(cfg, world)  # the DeepSpeed config against the run, per-epoch evaluation: before anything runs
    tracking = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    return cfg, (None if tracking == "none" else tracking)


def _main(args) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    error, cfg, tracking = None, None, None
    try:
        cfg, tracking = _configure(args)
    except StudyInputError as failure:
        error = str(failure)
    if world == 1:
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            return 2
        env = DistEnv(0, 1, 0, models.default_device())
        if cfg.train.deepspeed:
            env = init_distributed(args.collective_timeout)
        return _lead(args, cfg, tracking, env, None)
    settings = {"config": cfg.to_dict() if cfg else None, "tracking": tracking}
    return ranks.run(settings, error, args.collective_timeout,
                     lambda leader: _lead(args, cfg, tracking, leader.channel.env, leader))


def _lead(args, cfg, tracking: str | None, env: DistEnv, leader: ranks.Leader | None) -> int:
    """Rank 0 (or the only process): the target, the MLflow run, the trial (its training over every rank),
    the outputs."""
    progress = env.is_main and not args.no_progress
    tasks = runner.tasks_of(cfg)
    first = runner.scenario_data(cfg, tasks[0])
    target = runner.target_model(cfg, first, env.device, progress)  # fine-tuned and cached on first use
    recorder = StepRecorder(tasks)
    summaries: list[dict] = []
    run = _start_run(cfg, tracking, args.experiment, env.world_size)

    def on_task(result):
        summaries.append({"task": result.task, "steps": result.steps, "train_seconds": result.train_seconds,
                          "eval_seconds": result.eval_seconds, **result.summary})
        if run is not None:
            run.on_task(result)

    hooks = runner.TrialHooks(callbacks=[recorder] + ([run.steps] if run is not None else []), on_task=on_task,
                              on_data=run.on_data if run is not None else None,
                              fit=leader.fit if leader is not None else None)
    together = leader.trial(cfg, target.path) if leader is not None else contextlib.nullcontext()
    try:
        with together:
            if args.train_only:
                lm = runner.load_for_training(target.path, cfg, env.device)
                for done in runner.unlearn_tasks(cfg, lm, hooks, first=first, progress=progress):
                    if run is not None:  # training only: the next task's steps continue the step axis
                        run.next_task(done.trained.steps)
                result = runner.TrialResult([], lm.model, lm.tokenizer, lm.prompt, target)
            else:
                result = runner.run_trial(cfg, hooks, device=env.device, progress=progress, target=target)
    except KeyboardInterrupt as stop:
        if run is not None:
            run.end("KILLED", interrupt_reason(stop))
        raise
    except Exception as failure:
        if run is not None:
            run.end("FAILED", f"{type(failure).__name__}: {failure}\n{traceback.format_exc()[-3000:]}")
        raise
    if run is not None:
        run.log_time()
        if args.keep_checkpoints != "none":
            run.keep_checkpoint(result)
        run.end()
    for row in summaries:
        print(json.dumps({k: row[k] for k in row if not k.startswith("n_items")}, default=str))
    if args.out:
        _write_outputs(args, cfg, env, recorder, summaries, result)
    if run is not None:
        from ..credentials import redact

        print(f"MLflow run {run.run_id} in {redact(run.tracker.uri)}, experiment {args.experiment}")
    return 0


def _start_run(cfg, tracking: str | None, experiment: str, world_size: int):
    """The trial's MLflow run (a ``study.trial.runs.TrialRun`` without a study), or None (``--tracking-uri none``)."""
    if tracking is None:
        return None
    from .runs import TrialRun, trial_tags
    from .tracking import Tracker

    name = cfg.method.name
    tags = {**trial_tags(cfg, name, EXPERIMENT, 0), "world_size": world_size}
    run = TrialRun.start(Tracker(tracking, experiment), cfg, f"{name} (ZeRO-3 x{world_size})" if cfg.train.deepspeed
                         else name, tags, about={"entry": "study.trial.distributed", "world_size": world_size})
    run.log_config()
    return run


def _write_outputs(args, cfg, env: DistEnv, recorder: StepRecorder, summaries: list[dict], result) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"world_size": env.world_size, "config": cfg.to_dict(),
            "deepspeed": load_config(cfg.train.deepspeed) if cfg.train.deepspeed else None}
    (args.out / "history.json").write_text(json.dumps({**meta, "steps": recorder.steps}, indent=1, default=str))
    if summaries:
        (args.out / "summary.json").write_text(json.dumps({**meta, "tasks": summaries}, indent=1, default=str))
    if args.save_model:
        models.save_checkpoint(result.model, result.tokenizer, result.prompt, args.out / "model", {"config": cfg.to_dict()})


if __name__ == "__main__":
    sys.exit(main())
