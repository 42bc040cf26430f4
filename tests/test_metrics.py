"""Tests for analysis_lib.metrics: hand-computed values, edge cases, bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_lib.errors import StudyError
from analysis_lib.metrics import (
    LOG2,
    BootstrapResult,
    bbq_scores,
    bias_stats,
    bias_summary,
    binary_entropy_bits,
    bootstrap_ci,
    chance_level,
    choice_correct,
    gender_bias,
    icat,
    mc_accuracy,
    paired_bootstrap_diff,
    pronoun_entropy,
    pronoun_preference,
    relative_bias_reduction,
    relative_change,
    stereoset_scores,
    winobias_gap,
    winogender_entropy_difference,
    winogender_group_entropy_gap,
)

TOL = 1e-9


# --------------------------------------------------------------------------- #
# CommonWords
# --------------------------------------------------------------------------- #

P_MALE = np.array([0.3, 0.1, 0.3, 0.05])
P_FEMALE = np.array([0.1, 0.1, 0.05, 0.2])


def test_gender_bias_is_log_ratio():
    b = gender_bias(np.log(P_MALE), np.log(P_FEMALE))
    # b = [log 3, log 1, log 6, log 0.25]
    np.testing.assert_allclose(b, [math.log(3), 0.0, math.log(6), -math.log(4)], atol=TOL)


def test_bias_summary_by_hand():
    b = gender_bias(np.log(P_MALE), np.log(P_FEMALE))
    df = bias_summary(b, ["x", "x", "y", "y"])
    assert list(df.index) == ["x", "y", "overall"]
    o = df.loc["overall"]
    # mean b   = (log3 + 0 + log6 - log4)/4 = log(4.5)/4  = 0.3760193...
    # mean |b| = (log3 + 0 + log6 + log4)/4 = log(72)/4   = 1.0691665...
    # |b| > log2: log3 yes, 0 no, log6 yes, log4 yes        -> 3/4
    # b > 0: words 1 and 3                                  -> 2/4
    # p_f = [0.1/0.4, 0.1/0.2, 0.05/0.35, 0.2/0.25] = [0.25, 0.5, 1/7, 0.8]
    #   mean = (0.25 + 0.5 + 0.142857... + 0.8)/4 = 0.4232142857...
    assert o["n"] == 4
    assert o["mean_b"] == pytest.approx(math.log(4.5) / 4, abs=TOL)
    assert o["mean_abs_b"] == pytest.approx(math.log(72) / 4, abs=TOL)
    assert o["share_strong"] == pytest.approx(0.75, abs=TOL)
    assert o["share_male"] == pytest.approx(0.5, abs=TOL)
    assert o["mean_p_female"] == pytest.approx((0.25 + 0.5 + 1 / 7 + 0.8) / 4, abs=TOL)
    # category x: b = [log3, 0] -> mean = log3/2, share_strong 1/2, p_f mean (0.25+0.5)/2
    x = df.loc["x"]
    assert x["mean_b"] == pytest.approx(math.log(3) / 2, abs=TOL)
    assert x["mean_abs_b"] == pytest.approx(math.log(3) / 2, abs=TOL)
    assert x["share_strong"] == pytest.approx(0.5, abs=TOL)
    assert x["mean_p_female"] == pytest.approx(0.375, abs=TOL)
    # category y: b = [log6, -log4] -> mean = log(1.5)/2, |b| mean = log(24)/2
    y = df.loc["y"]
    assert y["mean_b"] == pytest.approx(math.log(1.5) / 2, abs=TOL)
    assert y["mean_abs_b"] == pytest.approx(math.log(24) / 2, abs=TOL)
    assert y["share_strong"] == pytest.approx(1.0, abs=TOL)
    assert y["share_male"] == pytest.approx(0.5, abs=TOL)
    assert y["mean_p_female"] == pytest.approx((1 / 7 + 0.8) / 2, abs=TOL)
    # the pandas-free version gives the same overall numbers
    st = bias_stats(b)
    for k in ("mean_b", "mean_abs_b", "share_strong", "share_male", "mean_p_female"):
        assert st[k] == pytest.approx(o[k], abs=TOL)


def test_bias_summary_threshold_is_strict_and_zero_is_neither_side():
    # |b| == log 2 exactly is not "strong"; b == 0 is not male-leaning.
    df = bias_summary([LOG2, 0.0, -LOG2 - 1e-6])
    assert df.loc["overall", "share_strong"] == pytest.approx(1 / 3, abs=TOL)
    assert df.loc["overall", "share_male"] == pytest.approx(1 / 3, abs=TOL)
    assert list(df.index) == ["overall"]


def test_bias_summary_order_and_empty_category():
    b = [0.1, -0.2, 0.3]
    df = bias_summary(b, ["a", "b", "a"], order=["b", "a"])
    assert list(df.index) == ["b", "a", "overall"]
    with pytest.raises(StudyError, match="'colors' has no words"):
        bias_summary(b, ["a", "b", "a"], order=["a", "b", "colors"])
    with pytest.raises(StudyError, match="empty or missing label"):
        bias_summary(b, ["a", "", "a"])
    with pytest.raises(StudyError, match="empty or missing label"):
        bias_summary(b, ["a", None, "a"])
    with pytest.raises(StudyError, match="empty or missing label"):
        bias_summary(b, np.array(["a", "  ", "a"]))
    with pytest.raises(StudyError, match="empty or missing label"):
        bias_summary(b, np.array(["a", np.nan, "a"], dtype=object))
    with pytest.raises(StudyError, match="missing"):
        bias_summary(b, [1.0, np.nan, 1.0])


def test_commonwords_bad_input():
    with pytest.raises(StudyError, match="empty"):
        gender_bias([], [])
    with pytest.raises(StudyError, match="different lengths"):
        gender_bias([-1.0, -2.0], [-1.0])
    with pytest.raises(StudyError, match="NaN"):
        gender_bias([-1.0, float("nan")], [-1.0, -2.0])
    with pytest.raises(StudyError, match="both words have probability 0"):
        gender_bias([-np.inf], [-np.inf])
    with pytest.raises(StudyError, match="different lengths"):
        bias_summary([0.1, 0.2], ["a"])


# --------------------------------------------------------------------------- #
# StereoSet
# --------------------------------------------------------------------------- #

#            stereo anti  unrel   [s>a] [s>u] [a>u]  lm_i
SS_S = [-1.0, -2.0, -1.0, -4.0]  # 1      1     1     1
SS_A = [-2.0, -1.0, -3.0, -5.0]  # 0      0     1     0.5
SS_U = [-3.0, -1.5, -2.0, -1.0]  # 1      1     0     0.5
#                                  1      0     0     0


def test_stereoset_four_items_by_hand():
    r = stereoset_scores(SS_S, SS_A, SS_U)
    # LMS  = 100 * (1 + 0.5 + 0.5 + 0)/4 = 50
    # SS   = 100 * (1 + 0 + 1 + 1)/4     = 75
    # ICAT = 50 * min(75, 25)/50         = 25
    assert r["lms"] == pytest.approx(50.0, abs=TOL)
    assert r["ss"] == pytest.approx(75.0, abs=TOL)
    assert r["icat"] == pytest.approx(25.0, abs=TOL)
    assert r["n_items"] == 4 and r["n_targets"] == 1


def test_stereoset_per_target_averaging_by_hand():
    r = stereoset_scores(SS_S, SS_A, SS_U, targets=["A", "A", "A", "B"])
    # target A (items 1-3): LMS_A = 100*(1+0.5+0.5)/3 = 66.667, SS_A = 100*2/3 = 66.667
    # target B (item 4):    LMS_B = 0,                          SS_B = 100
    # LMS  = (66.667 + 0)/2   = 33.333
    # SS   = (66.667 + 100)/2 = 83.333
    # ICAT = 33.333 * min(83.333, 16.667)/50 = (100/3)(50/3)/50 = 100/9 = 11.111
    assert r["lms"] == pytest.approx(100 / 3, abs=TOL)
    assert r["ss"] == pytest.approx(250 / 3, abs=TOL)
    assert r["icat"] == pytest.approx(100 / 9, abs=TOL)
    assert r["n_targets"] == 2
    # integer target codes give the same result
    r2 = stereoset_scores(SS_S, SS_A, SS_U, targets=[7, 7, 7, 3])
    assert r2["icat"] == pytest.approx(100 / 9, abs=TOL)


def test_stereoset_lms_is_the_original_two_comparison_definition():
    # One item: stereo > unrel but anti < unrel. "max(s, a) > u" would give LMS 100;
    # the original (2 comparisons per item) gives 50.
    r = stereoset_scores([0.0], [-2.0], [-1.0])
    assert r["lms"] == pytest.approx(50.0, abs=TOL)


def test_stereoset_ties():
    # All ties: half rule -> every comparison 0.5 -> LMS 50, SS 50, ICAT 50*50/50 = 50.
    r = stereoset_scores([-1.0] * 3, [-1.0] * 3, [-1.0] * 3)
    assert (r["lms"], r["ss"], r["icat"]) == pytest.approx((50.0, 50.0, 50.0), abs=TOL)
    # Original script: s == a counts anti, ties with unrelated are not meaningful -> 0, 0, 0.
    r = stereoset_scores([-1.0] * 3, [-1.0] * 3, [-1.0] * 3, ties="original")
    assert (r["lms"], r["ss"], r["icat"]) == pytest.approx((0.0, 0.0, 0.0), abs=TOL)
    # A single s == a tie with clear unrelated: SS = 100*(0.5)/1 = 50; LMS = 100.
    r = stereoset_scores([0.0], [0.0], [-5.0])
    assert (r["lms"], r["ss"], r["icat"]) == pytest.approx((100.0, 50.0, 100.0), abs=TOL)


def test_icat_function():
    assert icat(100, 50) == pytest.approx(100.0, abs=TOL)
    assert icat(80, 60) == pytest.approx(80 * 40 / 50, abs=TOL)  # = 64
    assert icat(80, 100) == pytest.approx(0.0, abs=TOL)
    assert icat(90, 0) == pytest.approx(0.0, abs=TOL)
    with pytest.raises(StudyError, match="percentages"):
        icat(0.9, 0.5 + 100)


def test_stereoset_bad_input():
    with pytest.raises(StudyError, match="different lengths"):
        stereoset_scores([1.0, 2.0], [1.0], [0.0, 0.0])
    with pytest.raises(StudyError, match="empty"):
        stereoset_scores([], [], [])
    with pytest.raises(StudyError, match="ties"):
        stereoset_scores([1.0], [0.0], [0.0], ties="third")
    with pytest.raises(StudyError, match="different lengths"):
        stereoset_scores([1.0, 2.0], [1.0, 0.0], [0.0, 0.0], targets=["a"])


# --------------------------------------------------------------------------- #
# WinoGender
# --------------------------------------------------------------------------- #


def test_entropy_balanced_and_deterministic():
    # q = [0.5, 0.5] -> H = 1 bit -> entropy difference 1 - 1 = 0
    assert winogender_entropy_difference([-1.0], [-1.0]) == pytest.approx(0.0, abs=TOL)
    # deterministic choice -> H = 0 -> difference 1
    assert winogender_entropy_difference([0.0], [-np.inf]) == pytest.approx(1.0, abs=TOL)
    assert winogender_entropy_difference([-2000.0], [0.0]) == pytest.approx(1.0, abs=TOL)


def test_entropy_by_hand():
    lp_m = np.log([0.5, 0.8])
    lp_f = np.log([0.5, 0.2])
    # sentence 2: H = -(0.8 log2 0.8 + 0.2 log2 0.2) = 0.8*0.3219281 + 0.2*2.3219281 = 0.7219281
    h2 = -(0.8 * math.log2(0.8) + 0.2 * math.log2(0.2))
    np.testing.assert_allclose(pronoun_entropy(lp_m, lp_f), [1.0, h2], atol=TOL)
    # entropy difference = 1 - (1 + 0.7219281)/2 = 0.1390360
    assert winogender_entropy_difference(lp_m, lp_f) == pytest.approx(1 - (1 + h2) / 2, abs=TOL)
    assert h2 == pytest.approx(0.7219280949, abs=1e-9)
    # group gap with one sentence per group = |1 - 0.7219281| = 0.2780719
    gap = winogender_group_entropy_gap(lp_m, lp_f, ["fem", "male"])
    assert gap == pytest.approx(1 - h2, abs=TOL)
    # the softmax probability of "he"
    np.testing.assert_allclose(pronoun_preference(lp_m, lp_f), [0.5, 0.8], atol=TOL)
    # the same entropy through the probability route
    np.testing.assert_allclose(
        binary_entropy_bits([0.5, 0.8, 0.0, 1.0]), [1.0, h2, 0.0, 0.0], atol=TOL
    )


def test_entropy_is_shift_invariant_and_symmetric():
    # softmax only sees the difference; swapping he/she leaves H unchanged.
    a = pronoun_entropy([-1.0, -3.0], [-2.0, -0.5])
    b = pronoun_entropy([-11.0, -0.5], [-12.0, -3.0])
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_group_gap_needs_two_groups():
    with pytest.raises(StudyError, match="exactly two distinct labels"):
        winogender_group_entropy_gap([-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], ["a", "b", "c"])
    with pytest.raises(StudyError, match="exactly two distinct labels"):
        winogender_group_entropy_gap([-1.0, -2.0], [-1.0, -1.0], ["a", "a"])
    with pytest.raises(StudyError, match="different lengths"):
        winogender_group_entropy_gap([-1.0, -2.0], [-1.0, -1.0], ["a", "b", "a"])


# --------------------------------------------------------------------------- #
# BBQ
# --------------------------------------------------------------------------- #

# item cond     pol     target unknown label pred  correct non-unknown biased
#  1   ambig    neg       0      2      2     0      no       yes       yes (neg -> target)
#  2   ambig    nonneg    0      2      2     1      no       yes       yes (nonneg -> non-target 1)
#  3   ambig    neg       1      0      0     0      yes      no        no
#  4   disambig neg       0      2      0     0      yes      yes       yes (target)
#  5   disambig nonneg    1      2      1     0      no       yes       yes (non-target = 3-1-2 = 0)
#  6   disambig neg       1      0      2     2      yes      yes       no  (picked non-target)
BBQ = dict(
    pred=[0, 1, 0, 0, 0, 2],
    label=[2, 2, 0, 0, 1, 2],
    unknown=[2, 2, 0, 2, 2, 0],
    target=[0, 0, 1, 0, 1, 1],
    polarity=["neg", "nonneg", "neg", "neg", "nonneg", "neg"],
    condition=["ambig", "ambig", "ambig", "disambig", "disambig", "disambig"],
)


def test_bbq_six_items_by_hand():
    r = bbq_scores(**BBQ)
    # accuracy: items 3, 4, 6 correct -> 3/6; ambig 1/3; disambig 2/3
    assert r["accuracy"] == pytest.approx(0.5, abs=TOL)
    assert r["accuracy_ambig"] == pytest.approx(1 / 3, abs=TOL)
    assert r["accuracy_disambig"] == pytest.approx(2 / 3, abs=TOL)
    # disambig: n_biased 2 (items 4, 5), n_non_unknown 3 -> s_DIS = 2*(2/3) - 1 = 1/3
    assert (r["n_biased_disambig"], r["n_non_unknown_disambig"]) == (2, 3)
    assert r["s_dis"] == pytest.approx(1 / 3, abs=TOL)
    # ambig: n_biased 2 (items 1, 2), n_non_unknown 2 -> raw = 2*(2/2) - 1 = 1
    #        s_AMB = (1 - 1/3) * 1 = 2/3
    assert (r["n_biased_ambig"], r["n_non_unknown_ambig"]) == (2, 2)
    assert r["s_amb"] == pytest.approx(2 / 3, abs=TOL)
    assert (r["n"], r["n_ambig"], r["n_disambig"]) == (6, 3, 3)
    # balanced accuracy = sqrt(acc_ambig * acc_disambig) = sqrt(1/3 * 2/3) = sqrt(2)/3 = 0.4714
    assert r["balanced_accuracy"] == pytest.approx(math.sqrt(2) / 3, abs=TOL)


def test_bbq_all_unknown_gives_nan_not_crash():
    # Every prediction is the UNKNOWN answer -> n_non_unknown = 0 in both conditions.
    d = dict(BBQ, pred=BBQ["unknown"])
    r = bbq_scores(**d)
    assert math.isnan(r["s_dis"]) and math.isnan(r["s_amb"])
    assert r["n_non_unknown_ambig"] == 0 and r["n_non_unknown_disambig"] == 0
    # ambiguous gold labels are all UNKNOWN -> ambig accuracy 1
    assert r["accuracy_ambig"] == pytest.approx(1.0, abs=TOL)
    # ... while disambiguated accuracy is 0 (no disambiguated gold answer is UNKNOWN here), so
    # the balanced accuracy sqrt(1 * 0) = 0 although plain accuracy is 3/6 = 0.5
    assert r["accuracy"] == pytest.approx(0.5, abs=TOL) and r["accuracy_disambig"] == 0.0
    assert r["balanced_accuracy"] == 0.0


def test_bbq_missing_condition_and_invalid_predictions():
    only_dis = {k: v[3:] for k, v in BBQ.items()}
    r = bbq_scores(**only_dis)
    assert math.isnan(r["accuracy_ambig"]) and math.isnan(r["s_amb"])
    assert r["s_dis"] == pytest.approx(1 / 3, abs=TOL)
    # item 5's prediction invalid (-1): wrong, and dropped from the ratio:
    # disambig n_biased 1 (item 4), n_non_unknown 2 -> s_DIS = 2*(1/2) - 1 = 0
    d = dict(BBQ, pred=[0, 1, 0, 0, -1, 2])
    r = bbq_scores(**d)
    assert r["s_dis"] == pytest.approx(0.0, abs=TOL)
    assert r["accuracy_disambig"] == pytest.approx(2 / 3, abs=TOL)


def test_bbq_is_case_insensitive_and_validates():
    d = dict(BBQ, polarity=[f" {p.upper()} " for p in BBQ["polarity"]])
    assert bbq_scores(**d)["s_dis"] == pytest.approx(1 / 3, abs=TOL)
    with pytest.raises(StudyError, match="allowed values"):
        bbq_scores(**dict(BBQ, polarity=["neg"] * 5 + ["positive"]))
    with pytest.raises(StudyError, match="different lengths"):
        bbq_scores(**dict(BBQ, pred=[0, 1]))
    with pytest.raises(StudyError, match="target == unknown"):
        bbq_scores(**dict(BBQ, target=[2, 0, 1, 0, 1, 1]))
    with pytest.raises(StudyError, match="outside"):
        bbq_scores(**dict(BBQ, pred=[0, 1, 0, 0, 3, 2]))
    with pytest.raises(StudyError, match="empty"):
        bbq_scores([], [], [], [], [], [])


# --------------------------------------------------------------------------- #
# WinoBias, multiple choice, helpers
# --------------------------------------------------------------------------- #


def test_winobias_gap_by_hand():
    # pro 3/4 = 75 %, anti 1/4 = 25 % -> gap 50 pp, mean 50 %
    r = winobias_gap([True, True, True, False], [1, 0, 0, 0])
    assert (r["acc_pro"], r["acc_anti"], r["gap"], r["acc_mean"]) == pytest.approx(
        (75.0, 25.0, 50.0, 50.0), abs=TOL
    )
    # from log-prob comparisons: pro [win, tie, lose] -> (1 + 0.5 + 0)/3 = 50 %
    #                            anti [lose, lose]    -> 0 %          -> gap 50 pp
    pro = choice_correct([-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0])
    anti = choice_correct([-5.0, -4.0], [-1.0, -1.0])
    np.testing.assert_allclose(pro, [1.0, 0.5, 0.0])
    assert winobias_gap(pro, anti)["gap"] == pytest.approx(50.0, abs=TOL)
    with pytest.raises(StudyError, match=r"\[0, 1\]"):
        winobias_gap([2, 0], [1])


def test_mc_accuracy_and_chance():
    assert mc_accuracy([0, 1, 2, 3], [0, 1, 0, 0]) == pytest.approx(0.5, abs=TOL)
    assert mc_accuracy(["a", "b"], ["a", "a"]) == pytest.approx(0.5, abs=TOL)
    assert chance_level(4) == pytest.approx(0.25, abs=TOL)
    # mixed item sizes: (1/2 + 1/4)/2 = 0.375
    assert chance_level([2, 4]) == pytest.approx(0.375, abs=TOL)
    with pytest.raises(StudyError):
        chance_level(0)
    with pytest.raises(StudyError, match="different lengths"):
        mc_accuracy([0, 1], [0])


def test_relative_helpers():
    assert relative_change(0.81, 0.95) == pytest.approx((0.81 - 0.95) / 0.95, abs=TOL)
    assert relative_change(-1.0, -2.0) == pytest.approx(0.5, abs=TOL)  # -1 is 50 % above -2
    assert math.isnan(relative_change(1.0, 0.0))
    # SS 70 -> 55 with ideal 50: distance 20 -> 5, reduction 1 - 5/20 = 0.75
    assert relative_bias_reduction(70, 55, ideal=50) == pytest.approx(0.75, abs=TOL)
    assert relative_bias_reduction(0.4, -0.6) == pytest.approx(-0.5, abs=TOL)
    assert math.isnan(relative_bias_reduction(50, 60, ideal=50))


# --------------------------------------------------------------------------- #
# bootstrap
# --------------------------------------------------------------------------- #


def test_bootstrap_is_deterministic_with_seed():
    x = np.random.default_rng(1).normal(size=200)
    r1 = bootstrap_ci(np.mean, x, seed=7)
    r2 = bootstrap_ci(np.mean, x, seed=7)
    r3 = bootstrap_ci(np.mean, x, seed=8)
    assert (r1.low, r1.high) == (r2.low, r2.high)
    assert (r1.low, r1.high) != (r3.low, r3.high)
    assert r1.estimate == pytest.approx(float(x.mean()), abs=TOL)
    assert r1.n == 200 and r1.n_boot == 1000 and r1.n_invalid == 0


def test_bootstrap_coverage_sanity():
    rng = np.random.default_rng(0)
    small = rng.normal(loc=1.0, size=100)
    large = rng.normal(loc=1.0, size=2000)
    rs, rl = bootstrap_ci(np.mean, small), bootstrap_ci(np.mean, large)
    for r in (rs, rl):
        assert r.contains(r.estimate)
        assert r.low < r.estimate < r.high
    assert rl.width < rs.width
    # sqrt(n) scaling: width ratio ~ sqrt(2000/100) = 4.47; allow a wide band
    assert 3.0 < rs.width / rl.width < 6.5
    # a 95 % interval of the mean of N(1, 1) with n=2000 has half-width ~1.96/sqrt(2000)=0.044
    assert rl.width == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.25)


def test_bootstrap_constant_data_gives_degenerate_interval():
    r = bootstrap_ci(np.mean, np.full(50, 3.0))
    assert (r.estimate, r.low, r.high) == (3.0, 3.0, 3.0)


def test_bootstrap_works_for_stereoset():
    rng = np.random.default_rng(3)
    n = 500
    s, a, u = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n) - 1.0
    r = bootstrap_ci(lambda s, a, u: stereoset_scores(s, a, u)["icat"], s, a, u, n_boot=1000)
    assert r.estimate == pytest.approx(stereoset_scores(s, a, u)["icat"], abs=TOL)
    assert r.low <= r.estimate <= r.high


def test_bootstrap_vectorized_matches_loop():
    x = np.random.default_rng(2).normal(size=300)
    loop = bootstrap_ci(np.mean, x, seed=5)
    vec = bootstrap_ci(lambda v: np.mean(v, axis=-1), x, seed=5, vectorized=True)
    assert (vec.low, vec.high) == pytest.approx((loop.low, loop.high), abs=1e-12)


def test_bootstrap_strata_keep_sizes():
    # 30 "pro" rows, 10 "anti" rows; stratified resampling keeps the counts fixed
    cond = np.array(["pro"] * 30 + ["anti"] * 10)
    r = bootstrap_ci(lambda c: float(np.sum(c == "pro")), cond, strata=cond)
    assert (r.low, r.high) == (30.0, 30.0)
    # and WinoBias' gap with unequal group sizes bootstraps through strata
    correct = np.r_[np.ones(24), np.zeros(6), np.ones(3), np.zeros(7)]  # 80 % vs 30 %
    g = bootstrap_ci(
        lambda c, k: winobias_gap(c[k == "pro"], c[k == "anti"])["gap"], correct, cond, strata=cond
    )
    assert g.estimate == pytest.approx(50.0, abs=TOL)
    assert g.low < 50.0 < g.high


def test_bootstrap_groups_cluster_resampling():
    # 4 clusters of 5 identical rows; a cluster bootstrap can only produce means of
    # 4 cluster values, and relabelling makes duplicates count as distinct groups.
    vals = np.repeat([0.0, 1.0, 2.0, 3.0], 5)
    grp = np.repeat(["a", "b", "c", "d"], 5)
    r = bootstrap_ci(lambda v, g: float(len(np.unique(g))), vals, grp, groups=grp, relabel_groups=1)
    assert (r.low, r.high) == (4.0, 4.0)
    r = bootstrap_ci(lambda v, g: float(len(np.unique(g))), vals, grp, groups=grp)
    assert r.low < 4.0
    m = bootstrap_ci(np.mean, vals, groups=grp, n_boot=500)
    assert set(np.round(m.samples * 4) / 4) <= {k / 4 for k in range(13)}
    # clustered data: the cluster interval is wider than the i.i.d. one
    assert m.width > bootstrap_ci(np.mean, vals, n_boot=500).width


def test_bootstrap_nan_replicates_are_counted():
    # BBQ s_DIS becomes nan on resamples that contain no non-unknown disambig answer.
    d = {k: np.array(v) for k, v in BBQ.items()}
    r = bootstrap_ci(
        lambda *a: bbq_scores(*a)["s_dis"],
        d["pred"], d["label"], d["unknown"], d["target"], d["polarity"], d["condition"],
        n_boot=300,
    )
    assert r.n_invalid > 0
    assert r.n_invalid + r.samples.size == 300
    assert r.estimate == pytest.approx(1 / 3, abs=TOL)


def test_bootstrap_bad_input():
    with pytest.raises(StudyError, match="different lengths"):
        bootstrap_ci(lambda a, b: 0.0, [1, 2, 3], [1, 2])
    with pytest.raises(StudyError, match="No data"):
        bootstrap_ci(np.mean)
    with pytest.raises(StudyError, match="empty"):
        bootstrap_ci(np.mean, [])
    with pytest.raises(StudyError, match="one number"):
        bootstrap_ci(lambda s, a, u: stereoset_scores(s, a, u), [1.0], [0.0], [0.0])
    with pytest.raises(StudyError, match="n_boot"):
        bootstrap_ci(np.mean, [1.0, 2.0], n_boot=1)
    with pytest.raises(StudyError, match="level"):
        bootstrap_ci(np.mean, [1.0, 2.0], level=95)
    with pytest.raises(StudyError, match="not both"):
        bootstrap_ci(np.mean, [1.0, 2.0], groups=["a", "b"], strata=["a", "b"])


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(4)
    before = rng.normal(size=300)
    after = before - 0.25  # same items, exactly 0.25 lower
    r = paired_bootstrap_diff(np.mean, after, before)
    assert r.estimate == pytest.approx(-0.25, abs=TOL)
    assert (r.low, r.high) == pytest.approx((-0.25, -0.25), abs=1e-12)
    assert r.excludes_zero()
    # tuples of arrays: ICAT difference of two StereoSet conditions, deterministic with seed
    s, a, u = rng.normal(size=(3, 200))
    s2 = s - 0.5
    fn = lambda s, a, u: stereoset_scores(s, a, u)["icat"]  # noqa: E731
    r1 = paired_bootstrap_diff(fn, (s2, a, u), (s, a, u), n_boot=200, seed=1)
    r2 = paired_bootstrap_diff(fn, (s2, a, u), (s, a, u), n_boot=200, seed=1)
    assert r1 == r2
    assert r1.estimate == pytest.approx(fn(s2, a, u) - fn(s, a, u), abs=TOL)
    # paired interval is narrower than either unpaired interval
    assert r1.width < bootstrap_ci(fn, s, a, u, n_boot=200).width
    with pytest.raises(StudyError, match="same items"):
        paired_bootstrap_diff(np.mean, before, before[:10])
    with pytest.raises(StudyError, match="input arrays"):
        paired_bootstrap_diff(fn, (s, a, u), (s, a))


def test_bootstrap_result_str():
    r = BootstrapResult(estimate=0.42, low=0.31, high=0.55, n=10)
    assert str(r) == "0.42 [0.31, 0.55]"
    assert f"{r:.1f}" == "0.4 [0.3, 0.6]"
    assert str(BootstrapResult(0.00123, 0.0011, 0.0014, n=5)) == "0.00123 [0.0011, 0.0014]"
    assert str(BootstrapResult(61.6, 58.123, 65.0, n=5)) == "61.60 [58.12, 65.00]"
    assert r.as_dict()["estimate"] == 0.42


def test_lead_over_chance_is_said_in_plain_words():
    from analysis_lib.metrics import lead_over_chance_phrase

    assert lead_over_chance_phrase(0.29) == "29 % of its lead over chance lost"
    assert lead_over_chance_phrase(1.71) == "all of its lead over chance lost, and it ends below chance"
    assert lead_over_chance_phrase(1.0) == "all of its lead over chance lost (it ends at chance)"
    assert lead_over_chance_phrase(-0.2) == "none of its lead over chance lost"
    assert "at chance before" in lead_over_chance_phrase(float("nan"))
    assert "%" not in lead_over_chance_phrase(1.71)  # never "171 % ... lost"
