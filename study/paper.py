"""The paper's facts, each stated once: its nine methods, the released scripts' hyper-parameters per
scenario, and the published figures this study compares against (docs/science.md §3, §4, §5).

Read by the losses (the default method set), the ``paper`` sampler (``study.search``), the analysis
(table order, ``pick="paper"``, the published tables) and the tests.
"""

from __future__ import annotations

from .errors import StudyInputError
from .inputs.scenarios import scenario

PAPER_METHODS: tuple[str, ...] = ("GA+GD", "GA+KL", "NPO+GD", "NPO+KL", "DPO+GD", "DPO+KL", "IDK+GD", "IDK+AP",
                                  "ME+GD")
"""The paper's nine methods in the order of its tables (docs/science.md §3)."""

PAPER_BETA = 0.1
"""β of NPO, DPO and AP in every released script."""
PAPER_REGULARIZATION_COEFF = 1.0
"""The regularizer's weight in every released script."""
PAPER_EPOCHS = 5.0
"""Epochs of every released script except the real-world baselines' grid."""

RELEASED: dict[str, dict[str, list[dict[str, float]]]] = {
    # docs/science.md §4: scenario -> method ("*" = every other method) -> the settings it was run at.
    "fictitious": {"ME+GD": [{"lr": 1e-5, "forget_coeff": 0.1}], "*": [{"lr": 1e-5, "forget_coeff": 1.0}]},
    "continual": {"*": [{"lr": 1e-5, "forget_coeff": 1.0}]},
    "real-world": {
        "ME+GD": [{"lr": 5e-6, "forget_coeff": 0.5}],
        "IDK+AP": [{"lr": 1e-5, "forget_coeff": 1.0}],
        "*": [{"lr": lr, "forget_coeff": 1.0, "epochs": epochs} for lr in (1e-5, 2e-6, 5e-6) for epochs in (5, 3)],
    },
}
"""The released scripts' lr, forget_coeff and (where they vary it) epochs; the rest is
:data:`PAPER_BETA`, :data:`PAPER_REGULARIZATION_COEFF` and :data:`PAPER_EPOCHS`."""


def released(scenario_name: str, method: str) -> list[dict[str, float]]:
    """The released settings of ``method`` in a scenario, as :data:`RELEASED` states them.

    Raises:
        StudyInputError: a scenario the paper did not run has none (the ``paper`` sampler cannot run it).
    """
    name = scenario(scenario_name).name
    if name not in RELEASED:
        raise StudyInputError(f"the paper released no settings for the {name} scenario (study/paper.py RELEASED "
                              f"has {', '.join(RELEASED)}): search it with --sampler tpe or grid")
    table = RELEASED[name]
    return [dict(row) for row in table.get(method, table["*"])]


PUBLISHED_SOURCE = ("DualOptim (arXiv 2504.15827), Table 4: a re-run of the reference code "
                    "(sail-sg/closer-look-LLM-unlearning) on Llama-2-7b, as quoted in docs/science.md §5. "
                    "The paper's own tables were not available in text form.")
"""Where :data:`PUBLISHED`'s numbers come from."""

PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    # method: {split: (MU, FE)}, typed in from docs/science.md §5 (DualOptim Table 4).
    "GA+GD": {"forget01": (0.670, 0.591), "forget05": (0.000, 0.877), "forget10": (0.559, 0.935)},
    "NPO+GD": {"forget01": (0.641, 0.611), "forget05": (0.547, 0.692), "forget10": (0.565, 0.767)},
    "ME+GD": {"forget01": (0.727, 0.920), "forget05": (0.747, 0.931), "forget10": (0.736, 0.949)},
    "DPO+GD": {"forget01": (0.756, 0.534), "forget05": (0.000, 0.824), "forget10": (0.000, 0.804)},
    "IDK+AP": {"forget01": (0.758, 0.763), "forget05": (0.753, 0.748), "forget10": (0.747, 0.743)},
}
"""Published fictitious-scenario MU / FE per method and split (:data:`PUBLISHED_SOURCE`)."""

REAL_WORLD_QUOTED: dict[str, dict[str, float]] = {
    # Llama-3-8B-Instruct, quoted from a review of the paper (docs/science.md §5). IDK+AP's FE was
    # not quoted.
    "before unlearning": {"MU": 0.6145},
    "ME+GD": {"MU": 0.4901, "FE": 0.9312},
    "IDK+AP": {"MU": 0.5311},
}
"""Real-world figures quoted in docs/science.md §5 (MU, FE where given)."""
