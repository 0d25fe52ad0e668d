"""Hand-derived checks of study.evaluation.metrics: every expected number is computed here with plain math."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from study.evaluation import metrics as M


# ---------------------------------------------------------------------------- registry / names

def test_registry_has_the_six_metrics_with_fe_membership():
    assert list(M.METRICS) == ["rouge", "probability", "truth_ratio", "token_entropy", "cosine", "entailment"]
    assert all(name == spec.name for name, spec in M.METRICS.items())
    assert all(spec.higher_is_better for spec in M.METRICS.values())
    fe = tuple(n for n, s in M.METRICS.items() if s.in_forget_efficacy)
    assert fe == M.FE_METRICS == ("rouge", "probability", "truth_ratio", "cosine", "entailment")
    assert M.summary_key("retain", "rouge") == "retain/rouge"


def test_item_columns_apply_each_registered_metric_to_its_sets():
    """The registry computes the table's metric columns from a set's outputs: two items, values by hand."""
    x = M.ItemInputs(
        kind="retain", truths=["the cat sat", "a dog"],
        answer_nll=np.array([2.0, 3.0]), answer_tokens=np.array([2, 3]), answer_avg_nll=np.array([1.0, 1.0]),
        answer_token_logprobs=[np.array([-0.5, -1.5]), np.array([-1.0, -1.0, -1.0])],
        answer_token_matches=[np.array([False, True]), np.array([True, True, True])],
        generations=["the cat sat", "no"], generation_tokens=[[1, 2, 3], [4]],
        paraphrased_avg_nll=np.array([1.0, 1.0]), perturbed_avg_nll=np.array([[2.0], [1.0]]),
        truth_ratio_raw=np.array([math.e, 1.0]),
        generation_embeddings=np.array([[1.0, 0.0], [0.0, 1.0]]), reference_embeddings=np.array([[1.0, 0.0], [1.0, 0.0]]),
        nli_labels=["entailment", "entailment"],
    )
    got = M.item_columns(M.METRICS, x)
    assert list(got) == list(M.METRICS)
    assert got[M.ROUGE].tolist() == [1.0, 0.0]
    assert got[M.PROBABILITY] == pytest.approx([math.exp(-1.0), math.exp(-1.0)])
    assert got[M.TRUTH_RATIO] == pytest.approx([1 - 1 / math.e, 0.0])  # max(0, 1 - 1/R) off the forget set
    assert got[M.TOKEN_ENTROPY].tolist() == [1.0, 0.0]
    assert got[M.COSINE].tolist() == [1.0, 0.0]
    assert got[M.ENTAILMENT].tolist() == [1.0, 0.0]  # the second item's ROUGE is below 0.1
    privacy = M.item_columns(M.PRIVACY_METRICS, x)
    assert privacy[M.MIA_LOSS].tolist() == [1.0, 1.0]
    # The last scored token (the EOS label) is dropped: [False] and [True, True] remain. ES of a wrong
    # one-token answer is 1/n = 1 (OpenUnlearning's loop stops at k = n - 1).
    assert privacy[M.EXACT_MEMORIZATION].tolist() == [0.0, 1.0]
    assert privacy[M.EXTRACTION_STRENGTH].tolist() == [1.0, 1.0]
    assert np.isnan(privacy[M.MIA_MIN_K_PLUS_PLUS]).all()  # no vocabulary moments given
    # No NLI labels: entailment NaN. A score-only set: the paper's metrics NaN, the privacy ones computed.
    assert np.isnan(M.item_columns(M.METRICS, dataclasses.replace(x, nli_labels=[None, None]))[M.ENTAILMENT]).all()
    holdout = M.ItemInputs("holdout", x.truths, x.answer_nll, x.answer_tokens, x.answer_avg_nll,
                           x.answer_token_logprobs, x.answer_token_matches)
    assert all(np.isnan(v).all() for v in M.item_columns(M.METRICS, holdout).values())
    assert M.item_columns(M.PRIVACY_METRICS, holdout)[M.MIA_LOSS].tolist() == [1.0, 1.0]
    assert M.MU_METRICS == tuple(M.METRICS)  # MU and FE membership are read off the registry


# ---------------------------------------------------------------------------- ROUGE

def test_rouge_l_recall_hand_values():
    gens = ["the cat sat", "a dog", "", "running dogs"]
    refs = ["the cat sat on the mat", "the cat", "the cat", "run dog"]
    # LCS 3 of 6 reference tokens; no overlap; empty generation; Porter stemmer maps both to "run dog".
    assert M.rouge_l_recall(gens, refs) == pytest.approx([3 / 6, 0.0, 0.0, 1.0])


def test_rouge_length_mismatch_raises():
    with pytest.raises(ValueError):
        M.rouge_l_recall(["a"], ["a", "b"])


# ---------------------------------------------------------------------------- probability

def test_probability_is_exp_of_minus_average_nll():
    nll_sum = np.array([0.0, 3 * math.log(2), 2.0])
    n_tok = np.array([5, 3, 4])
    out = M.probability(nll_sum, n_tok)
    assert out == pytest.approx([1.0, 0.5, math.exp(-0.5)])


def test_probability_zero_tokens_is_nan():
    assert math.isnan(M.probability([1.0], [0])[0])


def test_normalised_probability_with_k_perturbed():
    # item 0: P(a)=1/2, perturbed P = 1/4, 1/4, 1/8 (K=3) -> 0.5 / (0.5 + 0.625) = 4/9
    # item 1: P(a)=1/4, perturbed P = 1/4 each -> 1/4 / (4 * 1/4) = 1/4
    answer = [math.log(2), math.log(4)]
    perturbed = [[math.log(4), math.log(4), math.log(8)], [math.log(4)] * 3]
    assert M.normalised_probability(answer, perturbed) == pytest.approx([4 / 9, 1 / 4])


def test_normalised_probability_survives_large_nll():
    # exp(-800) underflows to 0 in float64, the ratio must not become 0/0
    out = M.normalised_probability([800.0], [[800.0, 800.0]])
    assert out == pytest.approx([1 / 3])


# ---------------------------------------------------------------------------- truth ratio

def test_truth_ratio_raw_uses_mean_of_average_nlls():
    # mean(1.5, 2.5) - 1.0 = 1.0 -> R = e
    assert M.truth_ratio_raw([1.0], [[1.5, 2.5]]) == pytest.approx([math.e])


def test_forget_truth_ratio_is_symmetric_in_r_and_inverse():
    # item 0: R = e; item 1: mean(1, 1) - 2 = -1 -> R = 1/e
    cols = M.truth_ratio_columns([1.0, 2.0], [[1.5, 2.5], [1.0, 1.0]], "forget")
    assert cols["truth_ratio_raw"] == pytest.approx([math.e, 1 / math.e])
    assert cols["truth_ratio_min"] == pytest.approx([1 / math.e, 1 / math.e])
    assert cols["truth_ratio"] == pytest.approx([1 - 1 / math.e, 1 - 1 / math.e])
    # set value 1 - mean(min(R, 1/R)) is the plain mean of the stored per-item values
    assert cols["truth_ratio"].mean() == pytest.approx(1 - 1 / math.e)


def test_non_forget_truth_ratio_clips_at_zero():
    cols = M.truth_ratio_columns([1.0, 2.0], [[1.5, 2.5], [1.0, 1.0]], "retain")
    assert cols["truth_ratio"] == pytest.approx([1 - 1 / math.e, 0.0])  # max(0, 1 - e) = 0


def test_truth_ratio_unknown_set_raises():
    with pytest.raises(ValueError, match="valid"):
        M.truth_ratio_item([1.0], "holdout")


# ---------------------------------------------------------------------------- token entropy

def test_token_entropy_hand_values():
    h_112 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    out = M.token_entropy([[1, 2, 3, 4], [1, 1, 2, 2], [5, 5, 5], [1, 1, 2], [7], []])
    assert out == pytest.approx([2 / 2, 1 / 2, 0.0, h_112 / math.log2(3), 0.0, 0.0])


# ---------------------------------------------------------------------------- cosine

def test_cosine_similarity_rowwise_and_clipped():
    gen = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    ref = np.array([[1.0, 1.0], [-1.0, 0.0], [1.0, 2.0], [6.0, 8.0]])
    # 1/sqrt(2); cos = -1 clipped to 0; zero vector -> 0; parallel -> 1
    assert M.cosine_similarity(gen, ref) == pytest.approx([1 / math.sqrt(2), 0.0, 0.0, 1.0])


def test_cosine_similarity_accepts_torch_and_returns_floats():
    torch = pytest.importorskip("torch")
    out = M.cosine_similarity(torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, -1.0]]))
    assert out == [0.0] and isinstance(out[0], float)
    assert M.cosine_similarity(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx([1 / math.sqrt(2)])


# ---------------------------------------------------------------------------- entailment

def test_entailment_requires_label_and_rouge():
    labels = ["entailment", "entailment", "neutral", "entailment", "contradiction"]
    rouge = [0.5, 0.05, 0.9, 0.1, 0.0]
    # ROUGE 0.05 < 0.1 forces non-entailment despite the label; 0.1 itself passes
    assert M.entailment_scores(labels, rouge) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_nli_pairs_direction_per_set_and_scenario():
    gens, truths = ["g1", "g2"], ["t1", "t2"]
    assert M.nli_pairs("forget", "fictitious", gens, truths) == [("g1", "t1"), ("g2", "t2")]
    for s in ("retain", "real_authors", "world_facts"):
        assert M.nli_pairs(s, "continual", gens, truths) == [("t1", "g1"), ("t2", "g2")]
    for s in ("forget", "neighbor"):
        assert M.nli_pairs(s, "real-world", gens, truths) == [("g1", "t1"), ("g2", "t2")]
    with pytest.raises(ValueError, match="valid"):
        M.nli_direction("retain", "tofu")


# ---------------------------------------------------------------------------- harmonic mean

def test_harmonic_mean_values_zero_and_missing():
    agg = M.harmonic_mean([1.0, 0.5])
    assert agg.value == pytest.approx(2 / (1 / 1.0 + 1 / 0.5))
    assert agg.parts == ["0", "1"] and agg.missing == [] and agg.complete
    assert M.harmonic_mean([0.9, 0.0, 0.8]).value == 0.0
    agg = M.harmonic_mean({"a": 0.5, "b": None, "c": float("nan"), "d": 0.25})
    assert agg.value == pytest.approx(2 / (2 + 4))
    assert agg.parts == ["a", "d"] and agg.missing == ["b", "c"] and not agg.complete
    assert math.isnan(M.harmonic_mean([None]).value)
    with pytest.raises(ValueError):
        M.harmonic_mean([0.5, -0.1])


# ---------------------------------------------------------------------------- model utility

SETS = ("retain", "real_authors", "world_facts")


def _set_metrics(entailment=0.5):
    # distinct, easy numbers: value = 0.1 * (k + 1) for the k-th (set, metric) pair, k = 0..17
    out, k = {}, 0
    for s in SETS:
        out[s] = {}
        for m in M.MU_METRICS:
            out[s][m] = 0.1 * (k % 9 + 1)
            k += 1
        out[s]["entailment"] = entailment
    return out


def _hmean(xs):
    return len(xs) / sum(1 / x for x in xs)


def test_model_utility_is_hmean_of_18_values():
    sm = _set_metrics()
    expected = _hmean([sm[s][m] for s in SETS for m in M.MU_METRICS])
    agg = M.model_utility(sm)
    assert agg.value == pytest.approx(expected)
    assert len(agg.parts) == 18 and agg.missing == []
    assert "world_facts/token_entropy" in agg.parts


def test_model_utility_without_entailment_uses_15_values_and_lists_missing():
    sm = _set_metrics(entailment=None)
    expected = _hmean([sm[s][m] for s in SETS for m in M.MU_METRICS if m != "entailment"])
    agg = M.model_utility(sm)
    assert agg.value == pytest.approx(expected)
    assert len(agg.parts) == 15
    assert agg.missing == ["retain/entailment", "real_authors/entailment", "world_facts/entailment"]


def test_model_utility_absent_set_is_missing_and_zero_gives_zero():
    sm = _set_metrics()
    del sm["world_facts"]
    agg = M.model_utility(sm)
    assert len(agg.parts) == 12 and len(agg.missing) == 6
    sm["retain"]["cosine"] = 0.0
    assert M.model_utility(sm).value == 0.0


def test_model_utility_retain_and_real_world():
    sm = _set_metrics()
    retain_vals = [sm["retain"][m] for m in M.MU_METRICS]
    assert M.model_utility_retain(sm).value == pytest.approx(_hmean(retain_vals))
    rw = {"neighbor": dict(sm["retain"]), "forget": {m: 0.01 for m in M.MU_METRICS}}
    agg = M.model_utility(rw, sets=M.UTILITY_SETS["real-world"])
    assert agg.value == pytest.approx(_hmean(retain_vals)) and len(agg.parts) == 6


def test_tofu_model_utility_uses_nine_values():
    sm = _set_metrics()
    expected = _hmean([sm[s][m] for s in SETS for m in ("probability", "rouge", "truth_ratio")])
    agg = M.tofu_model_utility(sm)
    assert agg.value == pytest.approx(expected) and len(agg.parts) == 9


# ---------------------------------------------------------------------------- forget efficacy

def test_forget_efficacy_formula_excludes_token_entropy():
    fm = {"rouge": 0.4, "probability": 0.2, "truth_ratio": 0.3, "cosine": 0.6, "entailment": 0.5,
          "token_entropy": 0.9}
    agg = M.forget_efficacy(fm)
    assert agg.value == pytest.approx(1 - (0.4 + 0.2 + 0.3 + 0.6 + 0.5) / 5)
    assert "forget/token_entropy" not in agg.parts and len(agg.parts) == 5
    fm["entailment"] = None
    agg = M.forget_efficacy(fm)
    assert agg.value == pytest.approx(1 - (0.4 + 0.2 + 0.3 + 0.6) / 4)
    assert agg.missing == ["forget/entailment"]


# ---------------------------------------------------------------------------- forget quality

def test_forget_quality_identical_samples_is_one():
    x = [0.2, 0.5, 0.9, 0.4]
    assert M.forget_quality(x, x) == 1.0


def test_forget_quality_exact_small_sample():
    # fully separated samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(2 / math.comb(6, 3))


def test_forget_quality_statistic_choice():
    r = np.array([0.5, 2.0, 4.0])
    assert M.forget_quality_statistic(r, "ratio") == pytest.approx([0.5, 2.0, 4.0])
    assert M.forget_quality_statistic(r, "min_ratio") == pytest.approx([0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="valid"):
        M.forget_quality_statistic(r, "log")
    # R = (0.5, 0.6) vs (2, 1/0.6): fully separated, exact p = 2 / C(4, 2) = 1/3; folded by
    # min(R, 1/R) both samples become (0.5, 0.6), so p = 1. The choice of statistic matters.
    a, b = np.array([0.5, 0.6]), np.array([2.0, 1 / 0.6])
    assert M.forget_quality(a, b) == pytest.approx(2 / math.comb(4, 2))
    assert M.forget_quality(M.forget_quality_statistic(a, "min_ratio"),
                            M.forget_quality_statistic(b, "min_ratio")) == pytest.approx(1.0)
    # KS is invariant under a monotone map of both samples: R and 1/R give the same p-value
    assert M.forget_quality(1 / a, 1 / b) == pytest.approx(M.forget_quality(a, b))


# ------------------------------------------- beyond the paper: privacy (docs/science-beyond-paper.md)


def test_min_k_score_by_hand():
    eos = -9.0  # the last scored token (the EOS label): dropped unless with_eos
    lp = [-1.0, -4.0, -2.0, -3.0, -0.5, eos]
    # k = 0.4 of the 5 answer tokens = 2 lowest log-probs: -4 and -3 -> statistic -mean = 3.5
    assert M.min_k_score([lp])[0] == pytest.approx(3.5)
    assert M.MIN_K_FRACTION == 0.4
    # with the EOS: 6 tokens, floor(2.4) = 2 lowest: -9 and -4 -> 6.5
    assert M.min_k_score([lp], with_eos=True)[0] == pytest.approx(6.5)
    # k = 0.1 of 5 = 0.5 tokens -> at least one: the lowest, -4
    assert M.min_k_score([lp], k=0.1)[0] == pytest.approx(4.0)
    # k = 1: the plain mean of the 5 answer tokens
    assert M.min_k_score([lp], k=1.0)[0] == pytest.approx(10.5 / 5)
    # 7 answer tokens at k = 0.4: floor(2.8) = 2 -> -(-7 - 6) / 2
    assert M.min_k_score([[-7.0, -1, -1, -1, -1, -6.0, -1, eos]])[0] == pytest.approx(6.5)
    # No token left (an empty answer scores only its EOS label; or nothing at all): 0, as OpenUnlearning.
    assert M.min_k_score([[eos], []]).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        M.min_k_score([lp], k=0.0)


def test_min_k_plus_plus_by_hand_on_a_three_token_vocabulary():
    # One answer token then the EOS label; the next-token distributions over V = 3 by hand.
    # Position 0: p = (1/2, 1/4, 1/4), the answer token is v = 1 (log p = -log 4).
    l2, l4 = math.log(2), math.log(4)
    mu0 = -(0.5 * l2 + 0.25 * l4 + 0.25 * l4)               # Σ p log p = -1.5 log 2
    var0 = 0.5 * l2**2 + 0.25 * l4**2 + 0.25 * l4**2 - mu0**2  # = 2.5 (log 2)² - 2.25 (log 2)² = 0.25 (log 2)²
    assert var0 == pytest.approx(0.25 * l2**2)
    z0 = (-l4 - mu0) / math.sqrt(var0)                        # (-2 + 1.5) log 2 / (0.5 log 2) = -1
    assert z0 == pytest.approx(-1.0)
    # Position 1 (the EOS label): uniform, variance 0 -> floored at 1e-6; dropped from the statistic anyway.
    mu1, var1 = -math.log(3), 0.0
    z = M.min_k_plus_plus_token_scores([[-l4, -math.log(3)]], [[mu0, mu1]], [[var0, var1]])[0]
    assert z == pytest.approx([-1.0, 0.0])
    assert M.min_k_plus_plus_score([z])[0] == pytest.approx(1.0)  # max(1, floor(0.4)) = 1 token: -(-1)
    assert M.min_k_plus_plus_score([z], with_eos=True, k=1.0)[0] == pytest.approx(0.5)  # -mean(-1, 0)
    # A tiny variance is floored at 1e-6 (OpenUnlearning's clamp): z = 0.001 / 1e-3 = 1
    assert M.min_k_plus_plus_token_scores([[-1.0]], [[-1.001]], [[1e-9]])[0] == pytest.approx([1.0])
    # Through the registry, with the moments the evaluation stores; an empty answer scores 0.
    x = M.ItemInputs("forget", ["a", ""], np.array([3.0, 1.0]), np.array([2, 1]), np.array([1.5, 1.0]),
                     [np.array([-l4, -math.log(3)]), np.array([-1.0])], [np.array([False, True]), np.array([True])],
                     answer_token_vocab_mean=[np.array([mu0, mu1]), np.array([-1.0])],
                     answer_token_vocab_var=[np.array([var0, var1]), np.array([0.5])])
    assert M.item_columns(M.PRIVACY_METRICS, x)[M.MIA_MIN_K_PLUS_PLUS].tolist() == pytest.approx([1.0, 0.0])
    assert M.MIA_MIN_K_PLUS_PLUS in M.MIA_ATTACKS and M.PRIVACY_METRICS[M.MIA_MIN_K_PLUS_PLUS].key == "min_k++"


def test_zlib_ratio_by_hand():
    import zlib

    texts = ["aaaaaaaaaaaaaaaaaaaa", "The quick brown fox."]
    lengths = [len(zlib.compress(t.encode("utf-8"))) for t in texts]
    # a repetitive text compresses better: same loss, higher statistic
    assert lengths[0] < lengths[1]
    got = M.zlib_ratio([2.0, 2.0], texts)
    assert got.tolist() == pytest.approx([2.0 / lengths[0], 2.0 / lengths[1]])
    assert got[0] > got[1]
    # the length is of the UTF-8 bytes ("é" is two bytes)
    assert M.zlib_length("ab") == len(zlib.compress(b"ab")) and M.zlib_length("é") == len(zlib.compress("é".encode()))


@pytest.mark.parametrize("matches, expected", [
    # Each row ends with the EOS label's match (the last scored token), which is dropped by default.
    ([True, True, True, True, True], 1.0),     # k* = 0: the whole answer from the question alone
    ([False, True, True, True, False], 0.75),  # k* = 1 (the EOS label's miss does not count)
    ([True, False, True, True, True], 0.5),    # k* = 2: the wrong token at 1 breaks every longer suffix
    ([True, True, True, False, True], 0.25),   # no suffix matches: OpenUnlearning's loop ends at k = n - 1 = 3
    ([True, True], 1.0),
    ([False, True], 1.0),                      # one token, wrong: k = n - 1 = 0 again, ES = 1/n = 1
    ([True], 0.0),                             # an empty answer (only the EOS label): 0, as OpenUnlearning
    ([], 0.0),
])
def test_extraction_strength_by_hand(matches, expected):
    assert M.extraction_strength([matches])[0] == pytest.approx(expected)


def test_extraction_strength_options_by_hand():
    row = [True, True, True, False, True]  # answer tokens 0..3, then the EOS label
    # empty_suffix: k = n qualifies, so an answer whose last token is missed scores 0, not 1/n.
    assert M.extraction_strength([row], empty_suffix=True)[0] == 0.0
    # with_eos: the EOS label is the 5th token and is reproduced: k* = 4 of n = 5.
    assert M.extraction_strength([row], with_eos=True)[0] == pytest.approx(0.2)
    # Missing the EOS (the model does not stop) costs the whole answer with it, with empty_suffix.
    assert M.extraction_strength([[True, True, False]], with_eos=True, empty_suffix=True)[0] == 0.0
    assert M.extraction_strength([[True, True, False]], with_eos=True)[0] == pytest.approx(1 / 3)
    assert M.extraction_strength([[True, True, False]])[0] == 1.0


def test_exact_memorization_by_hand():
    # The last entry of each row is the EOS label, dropped by default.
    got = M.exact_memorization([[True, False, True, True, False], [False, False, True], [True], []])
    assert got[:2].tolist() == pytest.approx([0.75, 0.0])
    assert math.isnan(got[2]) and math.isnan(got[3])  # no answer token: NaN (OpenUnlearning's None)
    assert M.exact_memorization([[True, False, True, True, False]], with_eos=True)[0] == pytest.approx(0.6)


def test_mia_auc_by_hand_and_against_sklearn():
    from sklearn.metrics import roc_auc_score

    members, nonmembers = [1.0, 2.0, 3.0], [2.0, 4.0]
    # pairs (non-member > member): 2>1, 2=2 (half), 2<3 ; 4 > all three -> (1 + 0.5 + 3) / 6
    assert M.mia_auc(members, nonmembers) == pytest.approx(4.5 / 6)
    labels = [0] * 3 + [1] * 2  # OpenUnlearning: forget (members) 0, holdout 1, score = statistic
    assert M.mia_auc(members, nonmembers) == pytest.approx(roc_auc_score(labels, members + nonmembers))
    assert M.mia_auc([1.0, 1.0], [5.0]) == 1.0 and M.mia_auc([5.0], [1.0, 2.0]) == 0.0
    assert math.isnan(M.mia_auc([], [1.0])) and math.isnan(M.mia_auc([1.0, math.nan], [2.0]))


def test_privleak_by_hand():
    # MUSE's PrivLeak in percent, on AUCs where 1 = forget items look seen: (A_r - A_u) / (1 - A_r) * 100.
    # A model that has not unlearned at all (A_u = 0.999) against a retain model's 0.5228:
    # (0.5228 - 0.999) / 0.4772 * 100 = -0.4762 / 0.4772 * 100 = -99.79 (MUSE prints about -99.8 here).
    assert M.privleak(0.999, 0.5228) == pytest.approx(-47.62 / 0.4772, rel=1e-12)
    assert round(M.privleak(0.999, 0.5228), 1) == -99.8
    # The former formula (A_u - A_r) / A_r gave +91.1 there: the sign and the denominator both differ.
    assert (0.999 - 0.5228) / 0.5228 * 100 == pytest.approx(91.08, abs=0.01)
    # At A_r = 0.5 the two are exact negatives: (0.5 - A_u) / 0.5 vs (A_u - 0.5) / 0.5.
    for a_u in (0.8, 0.4, 0.999):
        assert M.privleak(a_u, 0.5) == pytest.approx(-(a_u - 0.5) / 0.5 * 100, rel=1e-12)
    assert M.privleak(0.8, 0.5) == pytest.approx(-60.0)   # under-unlearned: forget still looks seen
    assert M.privleak(0.4, 0.5) == pytest.approx(20.0)    # over-unlearned
    assert M.privleak(0.5, 0.5) == 0.0
    assert math.isnan(M.privleak(math.nan, 0.5)) and math.isnan(M.privleak(0.7, None))
    assert math.isnan(M.privleak(0.7, 1.0))  # no room above the retain model's AUC


def test_privacy_metrics_stay_out_of_mu_and_fe():
    assert not set(M.PRIVACY_METRICS) & (set(M.METRICS) | set(M.MU_METRICS) | set(M.FE_METRICS))
    assert not any(spec.in_forget_efficacy for spec in M.PRIVACY_METRICS.values())
    assert M.HOLDOUT not in {s for sets in M.UTILITY_SETS.values() for s in sets}
