"""Reproduce TOFU's published Model Utility and Forget Quality from TOFU's per-item evaluation logs.

The logs (TOFU's released ``eval_results`` of the fine-tuned "full" models and of the retain models)
live outside the repository, in the shared data directory: ``$UNLEARNING_SHARED_DATA`` or, by
default, ``shared/data`` beside the repository checkout. They are never copied into the repo.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from study.evaluation import metrics as M

LOG_DIR_NAME = "tofu_reference_logs"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared data directory: ``$UNLEARNING_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("UNLEARNING_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tofu_logs(shared_data_dir: Path):
    """Loader of one TOFU log by stem (e.g. ``"phi_full_wd0.01"``); skips when it is absent."""
    cache: dict[str, dict] = {}

    def load(stem: str) -> dict:
        path = shared_data_dir / LOG_DIR_NAME / f"{stem}.json"
        if not path.is_file():
            pytest.skip(f"TOFU reference log {path} not found (set UNLEARNING_SHARED_DATA to the "
                        f"directory holding {LOG_DIR_NAME}/)")
        if stem not in cache:
            cache[stem] = json.loads(path.read_text())
        return cache[stem]

    return load


# (model, published Model Utility, published Forget Quality on forget10 vs the retain90 model)
PUBLISHED = [
    ("llama2-7b", 0.6227, 1.83e-21),
    ("phi", 0.5221, 2.19e-16),
]


@pytest.mark.parametrize(("model", "mu", "fq"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_reproduces_tofu_published_numbers(tofu_logs, model, mu, fq):
    summary = M.tofu_summary_from_logs(tofu_logs(f"{model}_full_wd0.01"),
                                       tofu_logs(f"{model}_retain90_wd0.01"))
    assert summary["n_items/forget"] == 300  # ds_size = 300 rows of forget10
    assert summary["tofu_model_utility"] == pytest.approx(mu, abs=5e-5)
    assert summary["forget_quality"] == pytest.approx(fq, rel=0.01)
    for s in ("retain", "real_authors", "world_facts"):
        for m in ("probability", "rouge", "truth_ratio"):
            assert 0.0 < summary[f"{s}/{m}"] <= 1.0


def test_min_ratio_statistic_gives_a_different_forget_quality(tofu_logs):
    """A common reading words FQ on min(R, 1/R) (docs/science.md §6); TOFU's code (and its published numbers) use R."""
    full, retain = tofu_logs("llama2-7b_full_wd0.01"), tofu_logs("llama2-7b_retain90_wd0.01")
    tofu = M.tofu_summary_from_logs(full, retain)["forget_quality"]
    folded = M.tofu_summary_from_logs(full, retain, fq_statistic="min_ratio")["forget_quality"]
    assert folded == pytest.approx(7.38e-15, rel=0.01)
    assert abs(math.log10(folded) - math.log10(tofu)) > 5


def test_retain_model_against_itself_has_forget_quality_one(tofu_logs):
    retain = tofu_logs("llama2-7b_retain90_wd0.01")
    assert M.tofu_summary_from_logs(retain, retain)["forget_quality"] == 1.0


def test_per_item_functions_match_the_logged_fields(tofu_logs):
    """Traceability: our per-item values reproduce TOFU's own per-item fields."""
    log = tofu_logs("llama2-7b_full_wd0.01")
    for file_name, set_name in M.TOFU_LOG_SETS.items():
        set_log = log[file_name]
        order = sorted(set_log["rougeL_recall"], key=int)
        gens = [set_log["generated_text"][i][1] for i in order]
        truths = [set_log["generated_text"][i][2] for i in order]
        logged_rouge = [set_log["rougeL_recall"][i] for i in order]
        assert M.rouge_l_recall(gens, truths) == pytest.approx(logged_rouge, abs=1e-12)

        items = M.tofu_items_from_log(set_log, set_name)
        # TOFU logs truth_ratio = exp(avg paraphrased NLL - mean avg perturbed NLL) = 1 / R
        logged_tr = np.array([set_log["truth_ratio"][i] for i in order])
        assert items["truth_ratio_raw"] == pytest.approx(1 / logged_tr, rel=1e-5)
        if set_name in ("real_authors", "world_facts"):
            # TOFU logs normalized_gt_loss = -log(normalised probability)
            logged = np.exp(-np.array([set_log["normalized_gt_loss"][i] for i in order]))
            assert items["probability"] == pytest.approx(logged, rel=1e-5)
        else:
            logged = np.exp(-np.array([set_log["avg_gt_loss"][i] for i in order]))
            assert items["probability"] == pytest.approx(logged, rel=1e-5)
