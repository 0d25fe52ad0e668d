"""The entry point that ``torchrun`` launches: one trial with DeepSpeed ZeRO-3 across its processes
(docs/science.md §4: the paper's two A100-40GB, bf16).

    torchrun --nproc_per_node 2 -m study.trial.distributed --preset paper-fictitious --method NPO+GD --out runs/npo
    torchrun --nproc_per_node 2 -m study.trial.distributed --preset smoke --train-only --out /tmp/ds   # CPU, gloo

Every rank runs the same program: the task loop of ``study.trial.runner`` (``run_trial``, or ``unlearn_tasks``
alone with ``--train-only``), whose training goes through ``study.training.zero`` when ``train.deepspeed`` is set
(this entry point sets it unless told ``--deepspeed none``). ``study.training.zero`` holds the DeepSpeed pieces
(process group, config filling, engines) and how ``W`` processes take the steps of one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from ..inputs import models
from .. import presets
from . import runner
from ..errors import StudyInputError, interrupt_exit_code, interrupt_reason, sigterm_as_interrupt
from ..training.zero import DEFAULT_CONFIG, DistEnv, barrier, init_distributed, load_config


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
        description="Unlearn with DeepSpeed ZeRO-3 across the processes torchrun starts (one per GPU; "
                    "on CPU, gloo). Rank 0 writes history.json (every step's losses), summary.json "
                    "(evaluation per task) and, with --save-model, model/.")
    a = parser.add_argument
    a("--preset", default="default", help="preset name in experiments/presets or a .toml path (default: %(default)s)")
    a("--method", help="method, e.g. NPO+GD (default: the preset's)")
    a("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a setting (TOML value)")
    a("--deepspeed", help="DeepSpeed config (default: train.deepspeed of the preset, else "
                          "experiments/deepspeed/zero3.json); 'none' = plain PyTorch (one process only)")
    a("--train-only", action="store_true", help="skip evaluation (losses and the model only)")
    a("--out", type=Path, help="output directory (rank 0)")
    a("--save-model", action="store_true", help="save the final model to OUT/model (safetensors)")
    a("--no-progress", action="store_true", help="no progress bars")
    return parser


def _quiet_deepspeed() -> None:
    import logging

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # torch deprecates the collective names DeepSpeed 0.19 still calls, warning at every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_as_interrupt():  # torchrun, Slurm and `timeout` send SIGTERM: handled like Ctrl-C
        try:
            return _main(args)
        except KeyboardInterrupt as stop:
            print(f"\n{interrupt_reason(stop)}: stopped before the end (the run is incomplete)", file=sys.stderr)
            return interrupt_exit_code(stop)


def _main(args) -> int:
    try:
        cfg = presets.run_config(args.preset, args.method, args.set)
        deepspeed_path = args.deepspeed or cfg.train.deepspeed or str(DEFAULT_CONFIG)
        cfg = cfg.replace(train={"deepspeed": None if deepspeed_path == "none" else deepspeed_path})
        if cfg.train.deepspeed:
            load_config(cfg.train.deepspeed)  # fail before starting anything
    except StudyInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if cfg.train.deepspeed:
        _quiet_deepspeed()
        env = init_distributed()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("error: --deepspeed none runs in one process; drop torchrun or give a DeepSpeed config", file=sys.stderr)
        return 2
    else:
        env = DistEnv(0, 1, 0, models.default_device())
    progress = env.is_main and not args.no_progress
    # The target model (fine-tuned and cached on first use) is made once, by rank 0.
    first = runner.scenario_data(cfg, runner.tasks_of(cfg)[0])
    if env.is_main:
        target = runner.target_model(cfg, first, env.device, progress)
    barrier()
    if not env.is_main:
        target = runner.target_model(cfg, first, env.device, progress=False)
    recorder = StepRecorder(runner.tasks_of(cfg))
    summaries: list[dict] = []
    if args.train_only:
        lm = runner.load_for_training(target.path, cfg, env.device)
        for _ in runner.unlearn_tasks(cfg, lm, runner.TrialHooks(callbacks=[recorder]), first=first, progress=progress):
            pass  # training only: nothing to do between tasks
        model, tokenizer, prompt = lm.model, lm.tokenizer, lm.prompt
    else:
        # Every rank evaluates (the same numbers): simple, and the other GPUs would idle meanwhile.
        def on_task(result):
            summaries.append({"task": result.task, "steps": result.steps, "train_seconds": result.train_seconds,
                              "eval_seconds": result.eval_seconds, **result.summary})

        hooks = runner.TrialHooks(callbacks=[recorder], on_task=on_task)
        trial = runner.run_trial(cfg, hooks, device=env.device, progress=progress, target=target)
        model, tokenizer, prompt = trial.model, trial.tokenizer, trial.prompt
    if env.is_main:
        for row in summaries:
            print(json.dumps({k: row[k] for k in row if not k.startswith("n_items")}, default=str))
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            meta = {"world_size": env.world_size, "config": cfg.to_dict(),
                    "deepspeed": load_config(cfg.train.deepspeed) if cfg.train.deepspeed else None}
            (args.out / "history.json").write_text(json.dumps({**meta, "steps": recorder.steps}, indent=1, default=str))
            if summaries:
                (args.out / "summary.json").write_text(json.dumps({**meta, "tasks": summaries}, indent=1, default=str))
            if args.save_model:
                models.save_checkpoint(model, tokenizer, prompt, args.out / "model", {"config": cfg.to_dict()})
    barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
