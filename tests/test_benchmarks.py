"""The bias benchmarks on the real default model: columns, ranges, determinism, hand checks.

Everything runs on small seeded subsets of the real data with the real SmolLM2 (no mocks),
and each score is checked by hand against an independent computation: the plain Hugging
Face model's logits, or :func:`analysis_lib.scoring.continuation_logprobs`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from analysis_lib import benchmarks as bm
from analysis_lib import commonwords as cw
from analysis_lib.errors import ParameterError, StudyError
from analysis_lib.models import encode, single_token_id
from analysis_lib.scoring import continuation_logprobs, target_logprobs

SEED = 3


def _in(values, lo, hi):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return bool(np.all((v >= lo) & (v <= hi)))


def _ci_ok(r, lo, hi):
    assert lo <= r.estimate <= hi
    if math.isfinite(r.low):
        assert r.low <= r.estimate + 1e-9 and r.estimate <= r.high + 1e-9
        assert lo <= r.low and r.high <= hi


# ----------------------------------------------------------------------------- shared contexts


def test_option_logprobs_equals_separate_continuations(model):
    # options with shared leading tokens (scored once), one option inside another, identical
    # options, no shared tokens, and a context that is only the start token
    contexts = ["The developer argued with the designer because", "",
                "Context: A man and a woman were late. Question: Who was late? Your answer:", "",
                "She said", ""]
    options = [[" he did not like the design.", " she did not like the design."],
               ["The nurse is kind.", "Green ideas sleep.", "Hi"],
               [" The man", " Not enough information", " The woman"],
               ["The chess player was hispanic.", "The chess player was asian.", "The chess player was fox."],
               [" that the nurse", " that the nurse is", " that the nurse is"],
               ["Hello there", "Hello there"]]
    assert bm._shared_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 1
    assert bm._shared_prefix_len([[5, 6], [5, 6]]) == 1
    assert bm._shared_prefix_len([[1, 2], [3, 2]]) == 0
    sums, counts = bm.option_logprobs(model, contexts, options, batch_size=2)
    flat_c = [c for c, o in zip(contexts, options) for _ in o]
    flat_o = [x for o in options for x in o]
    total, n = continuation_logprobs(model, flat_c, flat_o)
    np.testing.assert_allclose(np.concatenate(sums), total, atol=1e-4)
    np.testing.assert_array_equal(np.concatenate(counts), n)


def test_option_logprobs_refuses_bad_input(model):
    with pytest.raises(StudyError, match="contexts but"):
        bm.option_logprobs(model, ["a"], [["b"], ["c"]])
    with pytest.raises(StudyError, match="no options"):
        bm.option_logprobs(model, ["a"], [[]])


# ----------------------------------------------------------------------------- CommonWords


def test_commonwords_bias_matches_the_models_logits(model, hf_reference):
    hf, _ = hf_reference
    frame = pd.DataFrame({"word": ["nurse", "babysitter", "welder"],
                          "category": ["professions"] * 3, "split": ["test"] * 3})
    frame["prompt"] = [cw.make_prompt("professions", w, "noun") for w in frame["word"]]
    frame["pronoun_prompt"] = [cw.make_prompt("professions", w, "pronoun") for w in frame["word"]]
    for kind, (male, female) in cw.TARGETS.items():
        out = bm.commonwords_bias(model, frame, kind)
        assert list(out.columns) == ["model", "word", "category", "split", "kind", "prompt", "lp_male",
                                     "lp_female", "b", "p_female"]
        m_id, f_id = single_token_id(model, male), single_token_id(model, female)
        for i, prompt in enumerate(out["prompt"]):
            with torch.inference_mode():
                logits = hf(input_ids=encode(model, prompt).tokens).logits[0, -1].double()
            lp = logits.log_softmax(-1)
            expected = float(lp[m_id] - lp[f_id])
            assert abs(out["b"].iloc[i] - expected) <= 1e-5, (kind, prompt)
            assert abs(out["lp_male"].iloc[i] - float(lp[m_id])) <= 1e-4
        np.testing.assert_allclose(out["p_female"], 1 / (1 + np.exp(out["b"])))


def test_prompt_bias_is_the_one_b_of_every_module(model):
    """b(w) has one model-level home: the modules that report it give its numbers bit for bit."""
    from analysis_lib import circuits, neuron_editing
    from analysis_lib.scoring import target_logprobs

    prompts = [cw.make_prompt(c, w) for c, w in (("professions", "nurse"), ("professions", "welder"),
                                                 ("hobbies", "knitting"), ("colors", "pink"))]
    lp, b = bm.prompt_bias(model, prompts)
    by_hand = target_logprobs(model, prompts, list(cw.GENDER_TARGETS)).double().numpy()
    np.testing.assert_array_equal(lp, by_hand)
    np.testing.assert_array_equal(b, by_hand[:, 0] - by_hand[:, 1])
    np.testing.assert_array_equal(neuron_editing.mean_abs_bias(model, prompts)[1], b)
    targets = circuits.biased_targets(model, prompts)
    np.testing.assert_array_equal(targets["bias"].to_numpy(), b)
    assert list(targets["target"]) == [cw.GENDER_TARGETS[0] if x > 0 else cw.GENDER_TARGETS[1] for x in b]
    with pytest.raises(ParameterError, match="prompt kind"):
        bm.prompt_bias(model, prompts, "adjective")


def test_commonwords_summary_and_category_tables(model):
    test = cw.load_commonwords()["test"].to_pandas().groupby("category").head(6)
    items = bm.commonwords_bias(model, test, "noun")
    assert len(items) == 30 and set(items["split"]) == {"test"}
    s = bm.commonwords_summary(items, n_boot=200)
    assert set(s) == {"mean_abs_b", "mean_b", "share_strong", "mean_p_female"}
    assert s["mean_abs_b"].estimate == pytest.approx(items["b"].abs().mean())
    _ci_ok(s["share_strong"], 0, 1)
    _ci_ok(s["mean_p_female"], 0, 1)
    cats = bm.category_summary(items, n_boot=200)
    assert list(cats["category"]) == [*cw.CATEGORIES, "overall"]
    assert (cats["n"].iloc[:5] == 6).all() and cats["n"].iloc[5] == 30
    top = bm.top_words(items, k=3)
    assert len(top) == 5 * 2 * 3
    prof = top[(top["category"] == "professions") & (top["direction"] == "male")]
    assert prof["b"].is_monotonic_decreasing and prof["b"].iloc[0] == items.query("category == 'professions'")["b"].max()
    with pytest.raises(ParameterError):
        bm.commonwords_bias(model, test, "adjective")


# ----------------------------------------------------------------------------- StereoSet


@pytest.mark.parametrize("kind", ["intrasentence", "intersentence"])
def test_stereoset_eval_by_hand_and_deterministic(model, kind):
    items, scores = bm.stereoset_eval(model, kind, n=3, seed=SEED, n_boot=200)
    assert len(items) == 3
    for col in ("model", "kind", "id", "target", "s_stereotype", "s_anti_stereotype", "s_unrelated",
                "n_tok_stereotype"):
        assert col in items.columns
    assert set(scores) == {"lms", "ss", "icat"}
    for r in scores.values():
        _ci_ok(r, 0, 100)
    # one item by hand
    row = items.iloc[0]
    for lab in ("stereotype", "anti_stereotype", "unrelated"):
        if kind == "intrasentence":
            total, n = continuation_logprobs(model, [""], [row[lab]])
        else:
            total, n = continuation_logprobs(model, [row["context"]], [" " + row[lab].strip()])
        assert abs(row[f"s_{lab}"] - total[0] / n[0]) <= 1e-5
        assert row[f"n_tok_{lab}"] == n[0]
    if kind == "intersentence":
        return
    again, scores2 = bm.stereoset_eval(model, kind, n=3, seed=SEED, n_boot=200)
    pd.testing.assert_frame_equal(items, again)
    assert {k: (v.estimate, v.low, v.high) for k, v in scores.items()} == \
        {k: (v.estimate, v.low, v.high) for k, v in scores2.items()}


# ----------------------------------------------------------------------------- WinoGender

#: A log-probability scored in a padded batch and scored alone differ in float32: the two
#: forward passes sum the same products in another order (the BLAS blocking follows the batch
#: shape and the thread count; OMP_NUM_THREADS=1 gives another order than the default). The
#: logits reach |z| ~ 16-32, where one float32 ulp is 1.9e-6; log-softmax subtracts two such
#: numbers, so a few ulps of the logits (measured: up to 3e-6) is the expected disagreement.
LOGPROB_TOL = 1e-5
#: The largest slope of the binary entropy in bits with respect to the log-odds
#: d = lp_male - lp_female: dH/dd = -d q (1 - q) / ln 2 with q = sigmoid(d), whose absolute
#: value peaks at |d| = 1.543 with 0.32298 bits per nat.
ENTROPY_SLOPE_MAX = 0.32298
#: The entropy of the batched row against the entropy of the prompt scored alone: d moves by
#: at most 2 * LOGPROB_TOL, so H moves by at most ENTROPY_SLOPE_MAX times that (6.5e-6). A
#: fixed 1e-6 was tighter than float32 allows: with one thread the first row missed it by 3e-7.
ENTROPY_TOL = ENTROPY_SLOPE_MAX * 2 * LOGPROB_TOL



def test_winogender_eval(model):
    items, scores = bm.winogender_eval(model, n=16, seed=SEED, n_boot=200)
    assert len(items) == 16 and items["item"].is_unique
    assert _in(items["entropy_bits"], 0, 1) and _in(items["q_male"], 0, 1)
    assert items["share_women"].notna().all()
    _ci_ok(scores["entropy_difference"], 0, 1)
    _ci_ok(scores["mean_q_male"], 0, 1)
    row = items.iloc[0]
    # the entropy is the binary entropy of the row's own log-probabilities (float64 arithmetic)
    q = 1 / (1 + math.exp(row["lp_female"] - row["lp_male"]))
    assert abs(row["entropy_bits"] + q * math.log2(q) + (1 - q) * math.log2(1 - q)) <= 1e-12
    # and the row's log-probabilities (a padded batch of 16) are those of the prompt scored alone
    lp = target_logprobs(model, [row["prefix"]], [" " + row["male_pronoun"], " " + row["female_pronoun"]])[0]
    assert abs(row["lp_male"] - float(lp[0])) <= LOGPROB_TOL and abs(row["lp_female"] - float(lp[1])) <= LOGPROB_TOL
    q = 1 / (1 + math.exp(float(lp[1] - lp[0])))
    assert abs(row["entropy_bits"] + q * math.log2(q) + (1 - q) * math.log2(1 - q)) <= ENTROPY_TOL
    assert scores["entropy_difference"].estimate == pytest.approx(1 - items["entropy_bits"].mean())


def test_entropy_slope_bound_is_the_steepest_slope_of_the_pronoun_entropy():
    """ENTROPY_TOL rests on ENTROPY_SLOPE_MAX: check it against the library's entropy."""
    from analysis_lib.metrics import pronoun_entropy

    d = np.linspace(-12, 12, 240_001)
    slope = np.abs(np.gradient(pronoun_entropy(d, np.zeros_like(d)), d))
    assert slope.max() == pytest.approx(ENTROPY_SLOPE_MAX, abs=1e-5)
    assert abs(abs(d[slope.argmax()]) - 1.543) < 1e-3


# ----------------------------------------------------------------------------- BBQ


def test_bbq_eval(model):
    items, scores = bm.bbq_eval(model, n=8, seed=SEED, n_boot=200)
    assert len(items) == 8
    assert set(items["pred"]) <= {0, 1, 2}
    assert (items["pred"] == items[["lp0", "lp1", "lp2"]].to_numpy().argmax(1)).all()
    assert set(scores) == {"accuracy", "accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb"}
    _ci_ok(scores["accuracy"], 0, 1)
    for k in ("s_dis", "s_amb"):
        assert math.isnan(scores[k].estimate) or -1 <= scores[k].estimate <= 1
    assert scores["accuracy"].estimate == pytest.approx(items["correct"].mean())
    row = items.iloc[0]
    total, _ = continuation_logprobs(model, [row["prompt"]] * 3, [" " + row[f"ans{k}"].strip() for k in range(3)])
    np.testing.assert_allclose(row[["lp0", "lp1", "lp2"]].to_numpy(dtype=float), total, atol=1e-4)
    small, _ = bm.bbq_eval(model, n=3, seed=SEED, n_boot=50)
    assert set(small["example_id"]) <= set(items["example_id"])  # seeded subsets are nested


# ----------------------------------------------------------------------------- WinoBias


def test_winobias_eval(model):
    items, scores = bm.winobias_eval(model, "test", n=4, seed=SEED, n_boot=200)
    assert len(items) == 8 and items.groupby("pair_id").size().eq(2).all()
    assert set(items["stereotype"]) == {"pro", "anti"}
    assert set(items["correct"]) <= {0.0, 0.5, 1.0}
    assert set(scores) == {"acc_pro", "acc_anti", "gap", "acc_mean", "pro_pronoun_share"}
    _ci_ok(scores["acc_pro"], 0, 100)
    _ci_ok(scores["gap"], -100, 100)
    _ci_ok(scores["pro_pronoun_share"], 0, 100)
    pro = items[items["stereotype"] == "pro"]["correct"].mean() * 100
    anti = items[items["stereotype"] == "anti"]["correct"].mean() * 100
    assert scores["gap"].estimate == pytest.approx(pro - anti)
    row = items.iloc[0]
    ctx = bm.WINOBIAS_TEMPLATE.format(sentence=row["sentence"].strip(), pronoun=row["pronoun"])
    total, _ = continuation_logprobs(model, [ctx, ctx], [" " + row["occupation"], " " + row["other_occupation"]])
    assert abs(row["lp_gold"] - total[0]) <= 1e-4 and abs(row["lp_other"] - total[1]) <= 1e-4


# ----------------------------------------------------------------------------- the suite


def test_bias_suite_is_tidy(model):
    tiny = {"commonwords_split": "test", "stereoset_kinds": ("intrasentence",), "stereoset_n": 3,
            "winogender_n": 6, "bbq_n": 4, "winobias_n": 3, "n_boot": 100}
    words = cw.load_commonwords()["test"].to_pandas().groupby("category").head(2)
    table, items = bm.bias_suite(model, tiny, seed=SEED, commonwords=words, return_items=True)
    assert len(items["commonwords_noun"]) == 10
    assert list(table.columns) == ["model", "benchmark", "variant", "metric", "estimate", "low", "high", "n",
                                   "ideal", "better", "seconds"]
    assert set(table["benchmark"]) == {"commonwords", "stereoset", "winogender", "bbq", "winobias"}
    assert set(items) == {"commonwords_noun", "commonwords_pronoun", "stereoset_intrasentence", "winogender",
                          "bbq", "winobias"}
    ok = table.dropna(subset=["low", "high"])
    assert ((ok["low"] <= ok["estimate"] + 1e-9) & (ok["estimate"] <= ok["high"] + 1e-9)).all()
    assert (table["seconds"] > 0).all()
    with pytest.raises(ParameterError, match="Unknown bias-suite"):
        bm.bias_suite(model, "huge")
    with pytest.raises(ParameterError, match="setting"):
        bm.bias_suite(model, "quick", bbq_size=3)


# ----------------------------------------------------------------------------- no model needed


def test_subsets_are_seeded_and_nested():
    a = bm._subsample(100, 10, 0)
    assert list(a) == sorted(a) and len(set(a)) == 10
    assert set(bm._subsample(100, 5, 0)) <= set(a)
    assert list(bm._subsample(100, 10, 0)) == list(a)
    assert list(bm._subsample(100, 10, 1)) != list(a)
    assert list(bm._subsample(7, None, 0)) == list(range(7))
    with pytest.raises(ParameterError):
        bm._subsample(10, 0, 0)


def test_match_occupations_rules():
    stats = pd.DataFrame({
        "occupation": ["Dentists", "Airplane pilots and navigators", "Hand molders and shapers, except jewelers",
                       "Railroad conductors and yardmasters", "Editors and reporters", "Helpers, surveyors"],
        "share_women": [0.3, 0.1, 0.2, 0.05, 0.45, 0.2],
        "source": ["fivethirtyeight_ipums"] * 6})
    m = bm.match_occupations(["dentist", "pilot", "jeweler", "conductor", "reporter", "surveyor"], stats)
    got = dict(zip(m["word"], zip(m["share_women"], m["match"])))
    assert got == {"dentist": (0.3, "exact"), "pilot": (0.1, "head"), "reporter": (0.45, "exact")}


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    y[:5] = y[0]  # ties
    assert bm.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic)
    r = bm.spearman_ci(x, x + rng.normal(scale=0.1, size=30), n_boot=200)
    assert r.low > 0.8 and r.estimate <= 1
    assert bm.verdict(r, 0) == "above 0" and bm.verdict((-0.2, 0.3), 0) == "compatible with 0"
