"""The models every trial is compared with: the target model (fine-tuned on all the data; the trial
starts from it) and, per task, the retain model (fine-tuned on the retain set alone; its forget-set
truth ratios R give Forget Quality, its ``mia_auc/*`` give PrivLeak).

Each is fine-tuned once (cached on disk by ``study.trial.runner``), evaluated once per tracking store (one
``target`` / ``retain_model`` MLflow run, created by one worker even when several need it together:
``study.trial.claims.once``) and held in memory for the rest of the process. Trial runs point at them
through the tags ``study.target_run_id`` and ``study.retain_run_id``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ..inputs import models
from .claims import once
from ..config import RunConfig


class ReferenceModels:
    """The target and retain models of one configuration, and the metric models that evaluate them and
    the trials (loaded once, on first use)."""

    def __init__(self, cfg: RunConfig, tracker, storage, device=None, progress: bool = True, log=print):
        """``tracker``: a ``study.trial.tracking.Tracker``; ``storage``: the Optuna storage the workers share
        (their claims on creating a run); ``device``: where models run (None: the default device)."""
        self.cfg, self.tracker, self.storage, self.progress, self.log = cfg, tracker, storage, progress, log
        self.device_name = device
        self.metric_models = None
        self._targets: dict[str, tuple] = {}  # "target" -> (PreparedModel, run id)
        self._retain_r: dict = {}  # task -> (forget-set R per item, retain run id)

    def device(self):
        import torch

        return torch.device(self.device_name) if self.device_name else models.default_device()

    def metric_models_on(self, device):
        """The embedder and NLI model of ``cfg.eval``, loaded on first use."""
        from ..evaluation import evaluate as ev

        if self.metric_models is None:
            self.metric_models = ev.load_metric_models(self.cfg.eval.embedder, self.cfg.eval.nli, device)
            if self.metric_models.nli is None:
                self.log(f"warning: Entailment is missing ({self.metric_models.nli_error}); "
                         "Model Utility and Forget Efficacy are computed without it (pass --nli MODEL)")
        return self.metric_models

    def eval_key(self) -> str:
        """What a reference evaluation depends on besides the model: the evaluation settings, set size and
        precision (a ready target, e.g. TOFU's Llama-2, is evaluated in bf16 on one machine, fp32 on another),
        and the rows a known-rows file keeps (its content, not its name)."""
        from ..inputs.data import KnownRows
        from .runner import content_hash, run_dtype

        settings = dataclasses.asdict(self.cfg.eval)
        if settings["known_rows"]:
            settings["known_rows"] = KnownRows.read(settings["known_rows"]).sets
        else:
            del settings["known_rows"]  # the key of every run made before the field existed
        return content_hash(settings | {"ds_size": self.cfg.data.ds_size, "dtype": str(run_dtype(self.cfg, self.device()))})

    def _evaluate_path(self, path: str, data, device):
        from ..evaluation import evaluate as ev
        from .runner import run_dtype

        lm = models.load(path, device=device, dtype=run_dtype(self.cfg, device))
        return ev.evaluate(lm.model, lm.tokenizer, lm.prompt, data.eval_sets, self.cfg.data.scenario,
                           self.metric_models_on(device), batch_size=self.cfg.eval.batch_size,
                           max_length=self.cfg.eval.max_length, progress=self.progress)

    def _finish(self, run_id: str, result) -> str:
        """A reference model's run gets its evaluation (summary metrics, per-item table) and ends."""
        self.tracker.metrics(run_id, result.summary)
        self.tracker.table_artifact(run_id, "eval/items.csv", result.items)
        self.tracker.end(run_id)
        return run_id

    def _evaluated_run(self, kind: str, run_id: str, evaluate) -> str:
        """``_finish(run_id, evaluate())``; a run stopped on the way (Ctrl-C, SIGTERM, an error) is ended
        KILLED or FAILED with the reason instead of left RUNNING. Runs of the same ``kind`` and key still
        RUNNING were left by a worker that died holding the claim (only the claim's holder gets here):
        ended FAILED."""
        from ..errors import interrupt_reason
        from .runs import end_if_running

        key = self.tracker.client.get_run(run_id).data.tags
        for run in self.tracker.find(kind, **{k[len("study."):]: v for k, v in key.items()
                                              if k in ("study.key", "study.eval_key", "study.task")}):
            if run.info.run_id != run_id and run.info.status == "RUNNING":
                end_if_running(self.tracker, run.info.run_id, "FAILED", "its worker stopped (killed or crashed) "
                               "while evaluating; another worker took over")
        try:
            return self._finish(run_id, evaluate())
        except KeyboardInterrupt as stop:
            end_if_running(self.tracker, run_id, "KILLED", interrupt_reason(stop))
            raise
        except Exception as error:
            end_if_running(self.tracker, run_id, "FAILED", f"{type(error).__name__}: {error}"[:1000])
            raise

    def prepare_target(self):
        """The target model (fine-tuned once, cached) and its MLflow run with its evaluation."""
        from .runner import scenario_data, target_model, tasks_of

        if "target" in self._targets:
            return self._targets["target"]
        device, task, cfg = self.device(), tasks_of(self.cfg)[0], self.cfg
        data = scenario_data(cfg, task)
        self.log(f"target model: from {cfg.model.target or cfg.model.name} ...")
        prepared = target_model(cfg, data, device, self.progress)
        self.log(f"target model: {prepared.path} ({'cached' if prepared.cached else f'fine-tuned in {prepared.seconds:.0f} s'})")

        def find():
            runs = self.tracker.find("target", key=prepared.key, eval_key=self.eval_key(), task=task)
            return next((r.info.run_id for r in runs if r.info.status == "FINISHED"), None)

        def create():
            run_id = self.tracker.start(f"target-{prepared.key}", "target", {
                "key": prepared.key, "eval_key": self.eval_key(), "model": cfg.model.name, "path": prepared.path,
                "scenario": cfg.data.scenario, "split": cfg.data.split, "task": task, "data_source": cfg.data.source})
            self.tracker.params(run_id, {f"finetune.{k}": v for k, v in dataclasses.asdict(cfg.finetune).items()})
            self.tracker.params(run_id, {"model.name": cfg.model.name, "finetune.seconds": round(prepared.seconds, 1)})
            self.log("target model: evaluating (once per target) ...")
            return self._evaluated_run("target", run_id, lambda: self._evaluate_path(prepared.path, data, device))

        # One target run per tracking store, even when workers reach this together.
        run_id = once(self.storage, f"#target-{prepared.key}-{self.eval_key()}-task{task}", find, create,
                      log=self.log, what="the target model's evaluation")
        self._targets["target"] = (prepared, run_id)
        return prepared, run_id

    def retain_truth_ratios(self, task):
        """The retain model's forget-set truth ratios R for ``task`` (fine-tuned and evaluated once);
        None without a retain model (``finetune.retain_model`` off)."""
        from .runner import finetuned_model, scenario_data

        if not self.cfg.finetune.retain_model:
            return None
        if task in self._retain_r:
            return self._retain_r[task][0]
        device = self.device()
        data = scenario_data(self.cfg, task)
        prepared = finetuned_model(self.cfg, data.retain, "retain_model", device, self.progress)
        cache = Path(prepared.path) / f"forget_truth_ratio-{self.eval_key()}-task{task}.json"

        def find():
            runs = [r for r in self.tracker.find("retain_model", key=prepared.key, task=task) if r.info.status == "FINISHED"]
            return runs[0].info.run_id if runs and cache.exists() else None

        def create():
            self.log(f"retain model (for Forget Quality, task {task}): evaluating ...")
            result = self._evaluate_path(prepared.path, data, device)
            forget = result.items[result.items["set"] == "forget"]
            values = forget["truth_ratio_raw"].to_numpy(dtype=float)
            partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")  # atomic: workers share the cache
            partial.write_text(json.dumps(values.tolist()))
            partial.replace(cache)
            run_id = self.tracker.start(f"retain-model-{prepared.key}", "retain_model", {
                "key": prepared.key, "model": self.cfg.model.name, "path": prepared.path, "task": task,
                "scenario": self.cfg.data.scenario, "split": self.cfg.data.split})
            return self._finish(run_id, result)

        # One retain run per tracking store, even when workers reach this together.
        run_id = once(self.storage, f"#retain-{prepared.key}-{self.eval_key()}-task{task}", find, create,
                      log=self.log, what=f"the retain model's evaluation (task {task})")
        values = np.array(json.loads(cache.read_text()))
        self._retain_r[task] = (values, run_id)
        return values

    def retain_run_id(self, task) -> str | None:
        """The run of the retain model whose R gave ``task``'s Forget Quality; None before (or without) it."""
        return self._retain_r[task][1] if task in self._retain_r else None

    def retain_mia_aucs(self, task):
        """The retain model's ``mia_auc/<attack>`` for ``task`` (PrivLeak), read back from its run; None
        without a holdout evaluation or a retain model."""
        if not self.cfg.eval.holdout or self.retain_truth_ratios(task) is None:
            return None
        logged = self.tracker.client.get_run(self._retain_r[task][1]).data.metrics
        return {k: v for k, v in logged.items() if k.startswith("mia_auc/")} or None
