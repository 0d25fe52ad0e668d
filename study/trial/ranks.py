"""A study whose trials each run over the processes ``torchrun`` starts (DeepSpeed ZeRO-3): rank 0 leads,
the other ranks follow.

    torchrun --nproc_per_node 2 experiments/sweep.py --preset paper-fictitious --method NPO+GD

Rank 0 owns everything that has state outside the job: the Optuna study (it asks and tells), the MLflow
runs, the target and reference models' preparation, evaluation, checkpoints. The other ranks hold no
store; they take part in each task's training, where every rank must run the same collective calls
(``study.training.zero.train_with_deepspeed``). Rank 0 says what comes next over a control channel
(small pickled messages broadcast from rank 0 on a gloo group of their own, so they travel the same on
GPUs and on CPUs):

- :class:`Trial`: a trial starts: its whole configuration (the sampled settings in place) and the model it
  starts from; every rank builds the same task data from it and loads the same model;
- :class:`Train`: train the next task (every rank enters ``train_with_deepspeed`` together);
- :class:`End`: the trial is over on rank 0 (finished, failed, or stopped between tasks): wait for the next;
- :class:`Stop`: the studies are done: leave.

Between messages the followers wait as long as rank 0 needs (evaluation, logging, preparing a target):
the control group's timeout is a week. Inside training the collectives time out after the study's
``collective_timeout`` (a rank stuck in a collective is an error, not a hang). A diverging loss is seen by
every rank at the same step (the loop all-reduces its finiteness), so every rank drops the trial and the
study goes on. Any other failure on a follower ends that process: rank 0's next collective call fails
(the trial ends FAILED in MLflow, FAIL in Optuna) or ``torchrun``'s SIGTERM reaches it first (KILLED),
whichever comes first; a rank 0 killed outright leaves its trial to the heartbeat: the next worker to
start a trial fails it in both stores. Evaluation runs on rank 0 alone, as in one process (the other
ranks wait). :func:`run` is a command's whole life under torchrun (``sweep.py``, ``study.trial.distributed``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import faulthandler
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from . import runner
from ..config import RunConfig
from ..errors import StudyInputError, interrupt_exit_code
from ..training import train, zero

CONTROL_TIMEOUT = datetime.timedelta(days=7)
"""How long a follower waits for rank 0's next message (rank 0 may evaluate or prepare a model for hours)."""


@dataclass(frozen=True)
class Trial:
    config: dict
    """``RunConfig.to_dict()`` of the trial: the preset with the sampled settings in place."""
    target: str
    """The model the trial starts from (a cached fine-tuned target's folder, a hub id, a checkpoint)."""


@dataclass(frozen=True)
class Train:
    pass


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Stop:
    pass


class TrialOver(Exception):
    """Rank 0 ended the trial between two tasks (it failed evaluating, or was stopped): the follower drops it."""


class Channel:
    """The control channel: rank 0 sends, every other rank receives the same message, in order."""

    def __init__(self, env: zero.DistEnv):
        import torch.distributed as dist

        self.env = env
        self.group = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)

    @property
    def is_leader(self) -> bool:
        return self.env.is_main

    def send(self, message) -> None:
        if not self.is_leader:
            raise RuntimeError("only rank 0 sends on the control channel")
        self._broadcast(message)

    def receive(self):
        if self.is_leader:
            raise RuntimeError("rank 0 sends on the control channel, it does not receive")
        return self._broadcast(None)

    def _broadcast(self, message):  # rank 0's message, on every rank
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree(self, settings: dict, error: str | None = None) -> str | None:
        """Whether every rank may start: each rank's settings (a JSON-able dict) and the error its own checks
        raised (None: none), gathered on rank 0. Returns, on every rank, the same verdict: None (go), or
        one line: the first rank's error, else the first rank whose settings differ from rank 0's and the
        first setting where. Collective: every rank calls it, before any training."""
        import torch.distributed as dist

        mine = (json.loads(json.dumps(settings, sort_keys=True, default=str)), error)
        everyone = [None] * self.env.world_size
        dist.all_gather_object(everyone, mine, group=self.group)
        verdict = None
        if self.is_leader:
            failed = [(rank, theirs[1]) for rank, theirs in enumerate(everyone) if theirs[1] is not None]
            differs = [(rank, theirs[0]) for rank, theirs in enumerate(everyone) if theirs[0] != mine[0]]
            if failed:
                rank, message = failed[0]
                verdict = message if rank == 0 else f"rank {rank}: {message}"
            elif differs:
                rank, theirs = differs[0]
                verdict = (f"rank {rank} has other settings than rank 0 ({_first_difference(mine[0], theirs)}): "
                           "start every process with the same command, presets and environment")
        return self._broadcast(verdict) if self.env.world_size > 1 else verdict


def _first_difference(ours, theirs, prefix: str = "") -> str:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(set(ours) | set(theirs)):
            if ours.get(key) != theirs.get(key):
                return _first_difference(ours.get(key), theirs.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {ours!r} on rank 0, {theirs!r} there"


def check_world(cfg: RunConfig, world: int, device=None) -> None:
    """What stops ``cfg`` from running over ``world`` processes, raised (``StudyInputError``) before any
    starts: no DeepSpeed config, per-epoch evaluation (one process only), and a DeepSpeed config that
    contradicts the run (``study.training.zero.fill_config``: the batch geometry over the processes, the
    precision on ``device``, the optimizer)."""
    if world > 1 and not cfg.train.deepspeed:
        raise StudyInputError(f"torchrun started {world} processes, which train each trial together with DeepSpeed "
                              "ZeRO-3: set train.deepspeed (e.g. --set train.deepspeed=experiments/deepspeed/zero3.json)")
    if world > 1 and cfg.eval.per_epoch:
        raise StudyInputError("per-epoch evaluation (--prune, eval.per_epoch) runs in one process: drop it under torchrun")
    if cfg.train.deepspeed:
        zero.fill_config(zero.load_config(cfg.train.deepspeed), cfg.train, world_size=world,
                         dtype=runner.run_dtype(cfg, device))


def run(settings: dict, error: str | None, timeout_s: float | None, lead: Callable[["Leader"], int]) -> NoReturn:
    """A command's whole life under torchrun, on every rank: it ends the process with the command's exit
    status (:func:`_end_process`), or raises what ``lead`` raised. Each rank's
    ``settings`` and the ``error`` its own checks raised are compared (:meth:`Channel.agree`): a verdict
    is one ``error:`` line on rank 0 and status 2 everywhere, before anything trains. Then rank 0 runs
    ``lead(leader)`` and the other ranks :func:`follow` it until it stops them, when ``lead`` returns or
    raises, except on an interrupt (status 130 / 143, ``study.errors.interrupt_exit_code``): Ctrl-C and
    torchrun's SIGTERM reach every rank, so then no rank waits for another."""
    faulthandler.enable()  # a native crash (SIGABRT, SIGSEGV) prints every thread's Python stack to the rank's log
    channel = open_channel(timeout_s)
    code = None
    try:
        code = _run(channel, settings, error, lead)
    finally:
        if code not in (None, 130, 143):  # an interrupt or a failure leaves the group to the process's end
            _leave()
    _end_process(code)


def _run(channel: Channel, settings: dict, error: str | None, lead: Callable[["Leader"], int]) -> int:
    verdict = channel.agree(settings, error)
    if verdict is not None:
        if channel.is_leader:
            print(f"error: {verdict}", file=sys.stderr)
        return 2
    if not channel.is_leader:
        try:
            follow(channel, channel.env.device)
        except KeyboardInterrupt as stop:  # rank 0 reports the trial
            return interrupt_exit_code(stop)
        return 0
    leader, interrupted = Leader(channel), False
    try:
        code = lead(leader)
        interrupted = code in (130, 143)
        return code
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if not interrupted:
            leader.stop()


def _leave() -> None:
    """Takes the process group down before the interpreter does: left to the interpreter's end, gloo's threads
    may be torn down while joinable, and the process prints ``terminate called without an active exception``
    (seen on a busy machine, about one run in five) after its one ``error:`` line."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _end_process(code: int) -> NoReturn:
    """Ends the process with ``code`` without the interpreter's teardown: the standard streams flushed and the
    ``atexit`` handlers run (MLflow's, logging's, temporary folders'), then ``os._exit``. With the process
    group destroyed first (:func:`_leave`), CI still saw a rank 0 that had finished its study and printed its
    summary die with ``terminate called without an active exception`` (SIGABRT, in the two-worker ZeRO-3
    test: four processes on two busy cores; not reproduced in 12 runs of one worker): a native object of gloo
    or DeepSpeed torn down with the interpreter. Nothing is left to run here, so the teardown is skipped."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def open_channel(timeout_s: float | None = None) -> Channel:
    """The process group torchrun describes (``study.training.zero.init_distributed``, its collectives timing out
    after ``timeout_s``) and the control channel over it."""
    return Channel(zero.init_distributed(timeout_s))


class Leader:
    """Rank 0's side: wraps each trial (:meth:`trial`) and each task's training (:meth:`fit`, a
    ``study.training.train.Fit`` for ``TrialHooks.fit``)."""

    def __init__(self, channel: Channel):
        self.channel = channel

    @contextlib.contextmanager
    def trial(self, cfg: RunConfig, target: str) -> Iterator[None]:
        """The followers join a trial while the block runs and are told it ended when it leaves, however it
        leaves, except by an interrupt (Ctrl-C reaches every rank; SIGTERM from torchrun or a scheduler
        stops every rank): then no rank waits for another."""
        if not cfg.train.deepspeed:
            raise StudyInputError("a trial over several processes trains with DeepSpeed: set train.deepspeed")
        self.channel.send(Trial(cfg.to_dict(), str(target)))
        interrupted = False
        try:
            yield
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:
                self.channel.send(End())

    def fit(self, model, dataset, make_loss_fn, train_cfg, **kwargs) -> train.TrainResult:
        self.channel.send(Train())
        return zero.train_with_deepspeed(model, dataset, make_loss_fn, train_cfg, **kwargs)

    def stop(self) -> None:
        """The followers leave their loop (:func:`follow` returns)."""
        self.channel.send(Stop())


def follow(channel: Channel, device) -> int:
    """A follower's whole life: take part in every trial rank 0 announces until it says :class:`Stop`.
    Returns the number of trials it trained in. A failure other than a diverging loss propagates (the
    process ends; torchrun stops the job)."""
    trials = 0
    while True:
        message = channel.receive()
        if isinstance(message, Stop):
            return trials
        if isinstance(message, End):
            continue  # a trial rank 0 ended before its first task trained
        if not isinstance(message, Trial):
            raise RuntimeError(f"control channel: unexpected message {message!r}")
        trials += 1
        _follow_trial(channel, message, device)


def _follow_trial(channel: Channel, message: Trial, device) -> None:
    def fit(model, dataset, make_loss_fn, train_cfg, **kwargs) -> train.TrainResult:
        step = channel.receive()
        if isinstance(step, End):
            raise TrialOver()
        if not isinstance(step, Train):
            raise RuntimeError(f"control channel: expected Train or End, got {step!r}")
        return zero.train_with_deepspeed(model, dataset, make_loss_fn, train_cfg, **{**kwargs, "progress": False})

    cfg = RunConfig.from_dict(message.config)
    lm = runner.load_for_training(message.target, cfg, device)
    try:
        for _ in runner.unlearn_tasks(cfg, lm, runner.TrialHooks(fit=fit), progress=False):
            pass  # rank 0 evaluates between tasks
    except TrialOver:
        return
    except train.NonFiniteLoss as diverged:  # every rank saw it at the same step: rank 0 fails the trial
        print(f"rank {channel.env.rank}: {diverged}", file=sys.stderr)
    ending = channel.receive()
    if not isinstance(ending, End):
        raise RuntimeError(f"control channel: expected End after the last task, got {ending!r}")
