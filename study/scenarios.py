"""The three unlearning scenarios as data (docs/science.md §1): what each evaluates, how its splits and
tasks are named, and how the metrics read it. Everything else asks a :class:`Scenario` instead of
comparing scenario names.

Two spellings of a name are accepted wherever a scenario is looked up: the one the command line,
the configuration and the MLflow ``study.scenario`` tag use (``"real-world"``) and the identifier
spelling of :mod:`study.metrics` (``"real_world"``). Runs written by earlier versions carry either.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import one_of

# Evaluation set names (the ``set`` column of the tidy table; :mod:`study.metrics` re-exports them).
FORGET = "forget"
RETAIN = "retain"
REAL_AUTHORS = "real_authors"
WORLD_FACTS = "world_facts"
NEIGHBOR = "neighbor"
HOLDOUT = "holdout"


@dataclass(frozen=True)
class Scenario:
    """One scenario: its names, its task and split structure, and its evaluation sets."""

    name: str
    """The spelling of ``--scenario``, ``data.scenario`` and the MLflow ``study.scenario`` tag."""
    key: str
    """The identifier spelling :mod:`study.metrics` and notebooks use (``real_world``)."""
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
    """The evaluation sets, in order, without the optional ``holdout`` set."""
    utility_sets: tuple[str, ...]
    """The sets whose metrics enter Model Utility (docs/science.md §5)."""
    retain_set: str
    """The set Model Utility (retain only) reads."""
    tofu_utility: bool
    """TOFU's own three-metric Model Utility applies (its sets exist)."""
    generation_premise_sets: tuple[str, ...]
    """Sets whose NLI check takes the generation as premise and the truth as hypothesis (does the
    output state the fact?); the others take the truth as premise (reference ``get_entailment_results``)."""

    def split_label(self, split: str) -> str:
        """The ``study.split`` tag of a run on ``split`` (real-world: ``"real-world"``)."""
        return split if self.has_splits else self.name

    def nli_direction(self, set_name: str) -> str:
        """``"generation->truth"`` or ``"truth->generation"`` for ``set_name``."""
        return "generation->truth" if set_name in self.generation_premise_sets else "truth->generation"


_TOFU_UTILITY = (RETAIN, REAL_AUTHORS, WORLD_FACTS)

FICTITIOUS = Scenario(
    name="fictitious", key="fictitious", has_splits=True, one_task=True, sequential=False, default_tasks=(1,),
    capped_eval=True, eval_sets=(FORGET, *_TOFU_UTILITY), utility_sets=_TOFU_UTILITY, retain_set=RETAIN,
    tofu_utility=True, generation_premise_sets=(FORGET,),
)
CONTINUAL = Scenario(
    name="continual", key="continual", has_splits=True, one_task=False, sequential=True, default_tasks=(1, 2, 3),
    capped_eval=True, eval_sets=(FORGET, *_TOFU_UTILITY), utility_sets=_TOFU_UTILITY, retain_set=RETAIN,
    tofu_utility=True, generation_premise_sets=(FORGET,),
)
REAL_WORLD = Scenario(
    name="real-world", key="real_world", has_splits=False, one_task=False, sequential=False, default_tasks=(),
    capped_eval=False, eval_sets=(FORGET, NEIGHBOR), utility_sets=(NEIGHBOR,), retain_set=NEIGHBOR,
    tofu_utility=False, generation_premise_sets=(FORGET, NEIGHBOR),
)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (FICTITIOUS, CONTINUAL, REAL_WORLD)}
"""The scenarios by name, in the order of docs/science.md §1."""

_BY_SPELLING: dict[str, Scenario] = {**SCENARIOS, **{s.key: s for s in SCENARIOS.values()}}


def scenario(name: str | Scenario) -> Scenario:
    """The scenario called ``name`` in either spelling (``real-world`` or ``real_world``)."""
    if isinstance(name, Scenario):
        return name
    try:
        return _BY_SPELLING[name]
    except (KeyError, TypeError):
        raise one_of("scenario", name, SCENARIOS) from None


def tag_spelling(value: str | None) -> str | None:
    """A stored ``study.scenario`` value in today's spelling; None and unknown values unchanged."""
    found = _BY_SPELLING.get(value) if isinstance(value, str) else None
    return found.name if found else value
