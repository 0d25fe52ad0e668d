#!/usr/bin/env python
"""Where a trial's wall time goes: one whole trial of a preset, split into phases.

    python benchmarks/bench_trial.py                          # the default preset (SmolLM2, ME+GD)
    python benchmarks/bench_trial.py --preset smoke           # tiny random Llama, seconds
    python benchmarks/bench_trial.py --no-checkpoint

Runs ``study.trial.runner.run_trial`` on the preset's configuration in a fresh process, as one trial of
``experiments/sweep.py`` does, and writes what the sweep writes for a trial through the same
``study.trial.runs.TrialRun`` (run, tags, parameters, version tags, ``config.json``, the task's sets as inputs,
per-step metrics, per-task metrics and the per-item table, the checkpoint) on a temporary sqlite store. The phases are timed by wrapping the library functions that ``run_trial`` calls (the library code
is unchanged); each phase's time is exclusive of the phases nested in it:

- fine-tune: ``runner.target_model``, a cache hit (a cold fine-tune, if the cache is empty, is run and
  reported before the trial, not in it);
- load model: ``runner.load_for_training`` (weights and tokenizer of the target);
- metric models: ``evaluate.load_metric_models``, cold (the process-wide cache is cleared first; a
  sweep loads them once per process, so later trials of a sweep do not pay this);
- unlearning: tokenising the training items (``train.unlearning_dataset``) and ``train.train_loop``;
- evaluation: generation, scoring, embedding (cosine), NLI, and the rest (ROUGE, token entropy,
  tables), from ``EvalResult.timings``;
- logging: MLflow writes (run start, parameters, tags, ``config.json``, dataset inputs, step and task
  metrics, the per-item table, run end); the checkpoint (``TrialRun.keep_checkpoint``:
  ``models.save_checkpoint`` + ``log_artifacts`` + the logged model, what ``--keep-checkpoints best|all``
  does for every trial) is its own phase;
- other: the rest of ``run_trial`` (reading the scenario data, ...).

Not in the trial, printed apart: the imports of transformers and sentence-transformers and the tracker
set-up (MLflow import, sqlite store creation): a sweep pays them once per process, not per trial.

Target (the brief sets none for this script; chosen before measuring): the pure bookkeeping, that is the
fine-tune cache hit plus the MLflow writes (checkpoint excluded), at most 5% of the trial.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import add_device_arg, machine, resolve_device, result_line, sync  # noqa: E402

TARGET = 0.05
BOOKKEEPING = ("fine-tune (cache hit)", "logging (MLflow)")


class PhaseTimer:
    """Exclusive wall and CPU seconds per phase: a phase nested in another is subtracted from its parent."""

    def __init__(self, device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [name, wall start, cpu start, nested wall, nested cpu]

    @contextmanager
    def phase(self, name: str):
        sync(self.device)
        self._stack.append([name, time.perf_counter(), time.process_time(), 0.0, 0.0])
        try:
            yield
        finally:
            sync(self.device)
            _, wall0, cpu0, nested_wall, nested_cpu = self._stack.pop()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            self.seconds[name] += wall - nested_wall
            self.cpu[name] += cpu - nested_cpu
            if self._stack:
                self._stack[-1][3] += wall
                self._stack[-1][4] += cpu

    def add(self, name: str, seconds: float) -> None:
        """Wall seconds measured inside the current phase (moved out of it; its CPU time stays there)."""
        self.seconds[name] += seconds
        if self._stack:
            self._stack[-1][3] += seconds

    def wrap(self, module, attribute: str, name: str, after=None):
        """Time every call of ``module.attribute`` as phase ``name`` (``after(result)`` may split it)."""
        original = getattr(module, attribute)

        def timed(*args, **kwargs):
            with self.phase(name):
                result = original(*args, **kwargs)
                if after is not None:
                    after(result)
            return result

        setattr(module, attribute, timed)


class TimedCallback:
    """A training callback whose calls count as a phase (the MLflow step logger)."""

    def __init__(self, inner, timer: PhaseTimer, name: str):
        self.inner, self.timer, self.name = inner, timer, name

    def on_step(self, event) -> None:
        with self.timer.phase(self.name):
            self.inner.on_step(event)


def main(argv=None) -> int:  # long: one linear script (set-up, one timed trial, the report), read top to bottom
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="preset to run one trial of (default: %(default)s)")
    parser.add_argument("--model", default=None, help="override the preset's model (e.g. tiny-llama)")
    parser.add_argument("--no-checkpoint", action="store_true", help="skip the checkpoint artifact (--keep-checkpoints none)")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)

    from study.evaluation import evaluate as ev
    from study import presets
    from study.trial import runner
    from study.training import train
    from study.trial.runs import TrialRun, trial_tags
    from study.trial.tracking import Tracker

    cfg = presets.run_config(args.preset, settings=[f"model.name={json.dumps(args.model)}"] if args.model else ())
    method = cfg.method.method()
    print(f"bench_trial: {machine()}; device {device}; preset {args.preset}: {cfg.model.name}, {method}, "
          f"{cfg.data.n_authors} built-in authors, {cfg.train.epochs:g} epochs of batch "
          f"{cfg.train.batch_size}x{cfg.train.grad_accum}, eval max_length {cfg.eval.max_length}", flush=True)

    # The target model is fine-tuned once per (model, data, settings) and cached: make sure it is, outside
    # the trial, so the trial measures what every trial but the very first sees.
    started = time.perf_counter()
    import sentence_transformers  # noqa: F401  (the embedder's library)
    import transformers

    for name in ("AutoTokenizer", "AutoModelForCausalLM", "GenerationMixin", "LlamaForCausalLM"):
        getattr(transformers, name)  # transformers imports lazily: pull in what loading and generating use
    imports_s = time.perf_counter() - started

    first = runner.scenario_data(cfg, runner.tasks_of(cfg)[0])
    started = time.perf_counter()
    prepared = runner.target_model(cfg, first, device, progress=False)
    if not prepared.cached:
        print(f"  (target not cached: fine-tuned once in {time.perf_counter() - started:.1f} s, before the trial)")

    timer = PhaseTimer(device)
    evaluation_parts = ("generation", "scoring", "embedding", "nli")

    def split_evaluation(result) -> None:
        for part in evaluation_parts:
            timer.add(f"evaluation: {part}", result.timings.get(part, 0.0))

    timer.wrap(runner, "target_model", "fine-tune (cache hit)")
    timer.wrap(runner, "load_for_training", "load model")
    timer.wrap(ev, "load_metric_models", "metric models (embedder)")
    timer.wrap(train, "unlearning_dataset", "unlearning: tokenise")
    timer.wrap(train, "train_loop", "unlearning: train loop")
    timer.wrap(ev, "evaluate", "evaluation: metrics, tables", after=split_evaluation)
    ev.clear_metric_model_cache()

    with tempfile.TemporaryDirectory(prefix="bench_trial_") as tmp:
        setup_started = time.perf_counter()
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", "bench-trial")
        setup_s = time.perf_counter() - setup_started

        trial_started = time.perf_counter()
        log = "logging (MLflow)"
        with timer.phase(log):  # the trial's run as the sweep starts it (study.trial.runs.TrialRun)
            run = TrialRun.start(tracker, cfg, "bench trial", trial_tags(cfg, str(method), "bench", 0))
            run.log_config()

        def logged(write):
            """A TrialRun hook whose calls count as MLflow logging."""
            def timed(*args) -> None:
                with timer.phase(log):
                    write(*args)
            return timed

        hooks = runner.TrialHooks(callbacks=[TimedCallback(run.steps, timer, log)], on_task=logged(run.on_task),
                                  on_data=logged(run.on_data))
        with timer.phase("other (run_trial)"):
            result = runner.run_trial(cfg, hooks, device=device, progress=False)

        if not args.no_checkpoint:
            with timer.phase("checkpoint artifact"):
                run.keep_checkpoint(result)
        with timer.phase(log):
            run.log_time()
            run.end()
        total = time.perf_counter() - trial_started

    order = ["fine-tune (cache hit)", "load model", "metric models (embedder)", "unlearning: tokenise",
             "unlearning: train loop", *[f"evaluation: {p}" for p in evaluation_parts], "evaluation: metrics, tables",
             "logging (MLflow)", "checkpoint artifact", "other (run_trial)"]
    print(f"  trial wall time {total:.1f} s; {result.final.steps} unlearning steps; "
          f"MU {result.final.summary.get('model_utility', float('nan')):.3f}, "
          f"FE {result.final.summary.get('forget_efficacy', float('nan')):.3f}")
    print(f"  {'phase':30s} {'wall s':>8s} {'share':>7s} {'cpu s':>8s}")
    for name in order + sorted(set(timer.seconds) - set(order)):
        if name in timer.seconds:
            cpu = f"{timer.cpu[name]:8.2f}" if name in timer.cpu else f"{'-':>8s}"
            note = "  (cpu: the whole evaluation)" if name == "evaluation: metrics, tables" else ""
            print(f"  {name:30s} {timer.seconds[name]:8.2f} {timer.seconds[name] / total:7.1%} {cpu}{note}")
    accounted = sum(timer.seconds.values())
    print(f"  {'(sum of phases)':30s} {accounted:8.2f} {accounted / total:7.1%} {sum(timer.cpu.values()):8.2f}")
    print(f"  not in the trial (once per process or sweep): imports of transformers and sentence-transformers "
          f"{imports_s:.2f} s; tracker setup (MLflow import, sqlite store creation) {setup_s:.2f} s")

    bookkeeping = sum(timer.seconds[name] for name in BOOKKEEPING)
    share = bookkeeping / total
    big = sorted(timer.seconds.items(), key=lambda kv: -kv[1])[:3]
    details = (f"cache hit + MLflow writes / trial = {bookkeeping:.1f} s / {total:.1f} s; largest: "
               + ", ".join(f"{n} {s / total:.0%}" for n, s in big) + f"; {args.preset} preset, {device.type}")
    result_line("trial", share, details, f"<= {TARGET:.2f} of the trial", share <= TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
