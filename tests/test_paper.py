"""study.paper: the paper's facts stated once, and every reader agreeing with them."""

from __future__ import annotations

import math

import pytest

from study.reporting import analysis
from study import paper, search
from study.inputs.scenarios import SCENARIOS


def test_old_names_are_the_paper_modules():
    assert paper.PAPER_METHODS is analysis.PAPER_METHODS
    assert analysis._PUBLISHED is paper.PUBLISHED
    assert analysis.PUBLISHED_SOURCE is paper.PUBLISHED_SOURCE and analysis.REAL_WORLD_QUOTED is paper.REAL_WORLD_QUOTED
    assert len(set(paper.PAPER_METHODS)) == 9 and set(paper.PUBLISHED) <= set(paper.PAPER_METHODS)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("method", paper.PAPER_METHODS)
def test_sampler_rows_and_analysis_pick_agree(scenario, method):
    """The ``paper`` sampler's settings are exactly the ones ``pick="paper"`` accepts."""
    rows = search.paper_settings(scenario, method)
    allowed = analysis.paper_settings(scenario, method)
    for key in ("lr", "forget_coeff", "epochs"):
        sampled = {float(row.get(key, paper.PAPER_EPOCHS)) for row in rows}
        assert sampled == set(allowed[key]), key
    assert all(math.isclose(row.get("beta", paper.PAPER_BETA), paper.PAPER_BETA) for row in rows)
    assert allowed["beta"] == (paper.PAPER_BETA,) and allowed["regularization_coeff"] == (1.0,)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_simnpo_fixed_settings_are_open_unlearnings(scenario):
    """SimNPO is not in the paper: its fixed-setting runs take OpenUnlearning's configs/trainer/SimNPO.yaml
    (beta 4.5, forget weight 0.125) in place of the paper's β 0.1 and weight 1, in the sampler and in the
    analysis' ``pick="paper"`` alike; the learning rates stay the scenario's released ones."""
    rows = search.paper_settings(scenario, "SimNPO+GD")
    assert {row["beta"] for row in rows} == {4.5} and {row["forget_coeff"] for row in rows} == {0.125}
    assert {row["lr"] for row in rows} == {row["lr"] for row in paper.released(scenario, "GA+GD")}
    allowed = analysis.paper_settings(scenario, "SimNPO+GD")
    assert allowed["beta"] == (4.5,) and allowed["forget_coeff"] == (0.125,)
    # RMU has no shipped values: the paper's weight, and its own c / α (not β) stay as configured.
    assert {row["forget_coeff"] for row in search.paper_settings(scenario, "RMU")} == {1.0}


def test_released_settings_follow_section_4():
    assert paper.released("fictitious", "ME+GD") == [{"lr": 1e-5, "forget_coeff": 0.1}]
    assert paper.released("continual", "ME+GD") == [{"lr": 1e-5, "forget_coeff": 1.0}]
    assert paper.released("real-world", "ME+GD") == [{"lr": 5e-6, "forget_coeff": 0.5}]
    assert len(paper.released("real-world", "NPO+KL")) == 6
