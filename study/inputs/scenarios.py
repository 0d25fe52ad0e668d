"""The unlearning scenarios, a registry (docs/science.md §1): what each loads and evaluates, how its splits
and tasks are named, and how the metrics read it. Everything else asks a :class:`Scenario` (or iterates
:data:`SCENARIOS`) instead of comparing scenario names, so a new scenario is one entry here, a preset and
a notebook (docs/extending.md).

One spelling per name (``"real-world"``): the command line, the configuration, the metrics, the MLflow
``study.scenario`` tag and the exports. Runs stored by earlier versions may carry ``"real_world"``;
:func:`tag_spelling`, used where stored runs are read, is the one place that maps it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .data import DS_SIZE, KnownRows, ScenarioData, Source, load_real_world, load_tofu
from ..errors import one_of

# Evaluation set names (the ``set`` column of the tidy table; :mod:`study.evaluation.metrics` re-exports them).
FORGET = "forget"
RETAIN = "retain"
REAL_AUTHORS = "real_authors"
WORLD_FACTS = "world_facts"
NEIGHBOR = "neighbor"
HOLDOUT = "holdout"
EARLIER_FORGET = "earlier_forget"


@dataclass(frozen=True)
class Scenario:
    """One scenario: its names, its task and split structure, and its evaluation sets."""

    name: str
    """The scenario's one spelling: ``--scenario``, ``data.scenario``, the metrics, the ``study.scenario`` tag."""
    loader: Callable[..., ScenarioData]
    """Builds one task's rows from a source (:func:`study.inputs.data.load_tofu`, :func:`study.inputs.data.load_real_world`);
    called by :meth:`load`."""
    has_splits: bool
    """TOFU's forget01 / forget05 / forget10 files apply; without them there is one forget file and
    the ``study.split`` tag holds the scenario name (:meth:`split_label`)."""
    one_task: bool
    """Unlearns exactly one task (fictitious); a task list is an error."""
    sequential: bool
    """Unlearns a list of tasks one after another, each task's start being the next reference model
    unless ``fix_ref_model`` (continual)."""
    default_tasks: tuple[int, ...]
    """Tasks unlearned when ``--scenario`` is given without ``--tasks``; () = every task at once."""
    capped_eval: bool
    """Evaluation reads the first ``ds_size`` rows of each set (TOFU); False = every row (real-world)."""
    eval_sets: tuple[str, ...]
    """The evaluation sets, in order, without the optional ones (``holdout``; continual's ``earlier_forget``)."""
    utility_sets: tuple[str, ...]
    """The sets whose metrics enter Model Utility (docs/science.md §5)."""
    retain_set: str
    """The set Model Utility (retain only) reads."""
    tofu_utility: bool
    """TOFU's own three-metric Model Utility applies (its sets exist)."""
    generation_premise_sets: tuple[str, ...]
    """Sets whose NLI check takes the generation as premise and the truth as hypothesis (does the
    output state the fact?); the others take the truth as premise (reference ``get_entailment_results``)."""

    @property
    def folder(self) -> str:
        """The file-name stem of its notebook and results folder (``notebooks/real_world.ipynb``,
        ``docs/results/real_world``): the name with ``-`` as ``_``, a path, not a second name."""
        return self.name.replace("-", "_")

    def load(self, source: Source, split: str = "forget01", task: int | None = 1, ds_size: int | None = DS_SIZE,
             holdout: bool = False, retain_authors: int = 0, last_task: int | None = None,
             earlier_tasks: Sequence[int] = (), known: KnownRows | None = None) -> ScenarioData:
        """What one run of this scenario reads: the task's forget and retain rows, the evaluation sets
        (capped at ``ds_size`` rows where :attr:`capped_eval`), the refusals (``study.inputs.data.ScenarioData``).
        ``earlier_tasks`` (a sequential scenario): the tasks whose forget sets are also evaluated. ``known``:
        the general-set rows an untuned model answers (``study.inputs.data.KnownRows``), the others dropped."""
        if earlier_tasks and not self.sequential:
            raise ValueError(f"earlier_tasks applies to a sequential scenario, not {self.name}")
        return self.loader(source, self.name, self.split_label(split), task, ds_size if self.capped_eval else None,
                           holdout, retain_authors, last_task, tuple(earlier_tasks), known)

    def split_label(self, split: str) -> str:
        """The ``study.split`` tag of a run on ``split`` (real-world: ``"real-world"``)."""
        return split if self.has_splits else self.name

    def nli_direction(self, set_name: str) -> str:
        """``"generation->truth"`` or ``"truth->generation"`` for ``set_name``."""
        return "generation->truth" if set_name in self.generation_premise_sets else "truth->generation"


_TOFU_UTILITY = (RETAIN, REAL_AUTHORS, WORLD_FACTS)

FICTITIOUS = Scenario(
    name="fictitious", loader=load_tofu, has_splits=True, one_task=True, sequential=False, default_tasks=(1,),
    capped_eval=True, eval_sets=(FORGET, *_TOFU_UTILITY), utility_sets=_TOFU_UTILITY, retain_set=RETAIN,
    tofu_utility=True, generation_premise_sets=(FORGET,),
)
CONTINUAL = Scenario(
    name="continual", loader=load_tofu, has_splits=True, one_task=False, sequential=True, default_tasks=(1, 2, 3),
    capped_eval=True, eval_sets=(FORGET, *_TOFU_UTILITY), utility_sets=_TOFU_UTILITY, retain_set=RETAIN,
    tofu_utility=True, generation_premise_sets=(FORGET, EARLIER_FORGET),
)
REAL_WORLD = Scenario(
    name="real-world", loader=load_real_world, has_splits=False, one_task=False, sequential=False, default_tasks=(),
    capped_eval=False, eval_sets=(FORGET, NEIGHBOR), utility_sets=(NEIGHBOR,), retain_set=NEIGHBOR,
    tofu_utility=False, generation_premise_sets=(FORGET, NEIGHBOR),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (FICTITIOUS, CONTINUAL, REAL_WORLD)}
"""The scenarios by name, in the order of docs/science.md §1."""

_STORED_SPELLINGS: dict[str, str] = {"real_world": REAL_WORLD.name}
"""Spellings earlier versions stored in runs and exports, read back by :func:`tag_spelling` only."""


def scenario(name: str | Scenario) -> Scenario:
    """The scenario called ``name``."""
    if isinstance(name, Scenario):
        return name
    try:
        return SCENARIOS[name]
    except (KeyError, TypeError):
        raise one_of("scenario", name, SCENARIOS) from None


def load_scenario(source: Source, name: str | Scenario, *args: Any, **kwargs: Any) -> ScenarioData:
    """``scenario(name).load(source, ...)``: one task of scenario ``name`` (arguments of :meth:`Scenario.load`)."""
    return scenario(name).load(source, *args, **kwargs)


def tag_spelling(value: str | None) -> str | None:
    """A stored ``study.scenario`` value in today's spelling; None and unknown values unchanged."""
    return _STORED_SPELLINGS.get(value, value) if isinstance(value, str) else value
