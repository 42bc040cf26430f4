"""The comparison table of the final chapter (analysis_lib.reproduction), on hand-written results.

No model is involved: the module only reads ``results/<chapter>.json`` and parquet tables.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis_lib import reproduction as rp
from analysis_lib.reproduction import NOT_TESTED, VERDICTS


def _write(directory, chapter, values, **params):
    payload = {"chapter": chapter, "parameters": {"model": "tiny-model", "profile": "quick", **params},
               "results": values}
    (directory / f"{chapter}.json").write_text(json.dumps(payload))


def ci(estimate, low, high, n=16):
    return {"estimate": estimate, "low": low, "high": high, "n": n}


CH4 = {
    "verdict_exist": "reproduced", "verdict_layer": "not reproduced", "verdict_collapse": "partly reproduced",
    "verdict_mechanism": "reproduced", "verdict_start": "reproduced", "verdict_replicate": "not tested",
    "general_ids": ["ffnL3N7", "ffnL3N9"], "general_1_share_start": 0.99, "general_1_m_start": 812.0,
    "general_1_layer": 3, "n_layers": 30, "general_1_depth": 0.13,
    "original_arithmetic_1digit": 50.0, "original_arithmetic_1digit_ci": "[40.0, 60.0]",
    "general_arithmetic_1digit": 5.0, "general_arithmetic_1digit_ci": "[0.0, 10.0]",
    "original_race": 60.0, "original_race_ci": "[55.0, 65.0]", "general_race": 50.0, "general_race_ci": "[45.0, 55.0]",
    "arith_relative_drop": 0.9, "race_drop_share_above_chance": 0.29,
    "random_range_arithmetic_1digit": "48.0–51.0", "random_range_race": "59.0–61.0",
    "cna_flip_share": 0.4, "cna_n_top": 20, "cna_flip_share_random": 0.05, "cna_imp_kept": 0.3,
    "start_token": "<|im_start|>", "start_eot_same": True, "start_eot_top": "ffnL3N7, ffnL3N9",
}
CH3 = {
    "shared_mean_ffn_value_K10": ci(0.74, 0.73, 0.81), "shared_mean_ffn_value_K50": ci(0.69, 0.6, 0.7),
    "shared_mean_attn_value_K10": ci(0.60, 0.55, 0.67), "shared_mean_attn_value_K50": ci(0.65, 0.6, 0.7),
    "shared_mean_ffn_query_K10": ci(0.30, 0.25, 0.35), "shared_mean_ffn_query_K50": ci(0.2, 0.1, 0.3),
}
CH5 = {
    "edit_verdict": "reduces", "orig_mean_abs_b": 0.8, "edit_mean_abs_b": 0.6, "edit_d": -0.2,
    "edit_d_ci": "[-0.300, -0.100]", "edit_rel": "-25", "random_d": "-0.015 to +0.009", "logit_d": 0.5,
    "edit_dppl": "+1.50", "edit_dppl_ci": "[+0.50, +2.50]", "general_dppl": "+1200.5", "logit_dppl": "+900.00",
    "logit_only_n_start": 2, "icat_orig": 60.0, "icat_edit": 62.0, "ent_orig": 0.2, "ent_edit": 0.19,
    "n_candidates_max": 150, "n_dropped_start": 9, "n_guard_failed": 3, "n_selected": 50, "top_n": 50, "k_main": 50,
    "edit_name": "joint_greedy K=50", "edit_beyond_random": True, "chosen_strategy": "joint greedy",
    "one_shot_name": "one_shot K=50", "one_shot_d": 0.4, "one_shot_mean_b": -1.2, "orig_mean_b": 0.6,
}
CH6 = {
    "delta_acc": ci(0.08, 0.03, 0.13, 96), "orig_acc": 40.0, "crispr_acc": 48.0, "gain_pp": 8.0,
    "category_name": "Gender_identity", "orig_std": 4.0, "crispr_std": 1.0, "n_chosen": 5, "n_chosen_share": 1e-4,
    "abl_crispr": 48.0, "abl_random_mean": 41.0, "abl_original": 40.0, "abl_random_n": 5,
    "abl_mean_tokens": 47.0, "abl_no_confidence": 49.0, "abl_no_skill": 45.0,
    "tr_Age_orig": 30.0, "tr_Age_pruned": 35.0, "h2h_available": False,
}


@pytest.fixture
def results(tmp_path):
    _write(tmp_path, "03_tracing_gender_circuits", CH3)
    _write(tmp_path, "04_general_neurons", CH4)
    _write(tmp_path, "05_editing_bias", CH5)
    _write(tmp_path, "06_crispr", CH6, transfer_categories=["Age"])
    _write(tmp_path, "02_measuring_bias", {
        "cw_noun_mean_b": ci(0.59, 0.54, 0.64, 500), "cw_noun_share_strong": ci(0.48, 0.44, 0.52, 500),
        "cw_noun_mean_b_verdict": "above 0", "ss_intra_ss": ci(58.8, 45.7, 70.6, 50),
        "ss_intra_icat": ci(70.4, 52.6, 87.0, 50), "ss_intra_ss_verdict": "compatible with 50",
    })
    cats = pd.DataFrame({"model": "tiny-model", "kind": "noun", "category": ["traits", "colors", "hobbies"],
                         "n": 100, "mean_b": [0.56, -0.24, 0.1], "share_strong": [0.41, 0.18, 0.2],
                         "share_strong_low": [0.32, 0.11, 0.12], "share_strong_high": [0.5, 0.26, 0.28],
                         "share_male": [0.81, 0.29, 0.55]})
    cats.to_parquet(tmp_path / "02_measuring_bias__categories.parquet")
    suite = pd.DataFrame({"model": "other-model", "benchmark": ["commonwords"] * 2 + ["stereoset"] * 2,
                          "variant": ["noun"] * 2 + ["intrasentence"] * 2, "metric": ["mean_b", "share_strong", "ss", "icat"],
                          "estimate": [0.05, 0.3, 60.0, 70.0], "low": [-0.02, 0.25, 55.0, 60.0],
                          "high": [0.1, 0.35, 65.0, 80.0]})
    suite.to_parquet(tmp_path / "02_measuring_bias__suite.parquet")
    pd.DataFrame({"condition": ["original", "edit K=50", "fine-tuned (LoRA)"], "d_mean_abs_b": [0.0, -0.2, -0.1]}
                 ).to_parquet(tmp_path / "05_editing_bias__evaluation.parquet")
    return tmp_path


def _rows(table):
    return table.set_index("id")


def test_verdicts_from_hand_written_results(results):
    t = _rows(rp.compare(results))
    expected = {
        # chapter 4's own verdict strings, normalised
        "p1-general-exist": "reproduced", "p1-general-layer": "not reproduced", "p1-general-collapse": "partly",
        "p1-general-signs": "reproduced", "p1-general-start-token": "reproduced",
        "p1-general-second-arch": "not tested",
        # chapter 3: 60 % ± 10 points, partly within 20 points; K = 10 vs K = 50
        "p1-shared-ffn_value": "partly", "p1-shared-attn_value": "reproduced", "p1-shared-ffn_query": "not reproduced",
        "p1-shared-k": "partly",
        # chapter 5
        "p1-edit-reduces": "reproduced", "p1-edit-capability": "reproduced", "p1-edit-icat": "reproduced",
        "p1-edit-entropy": "partly", "p1-edit-baselines": "reproduced", "p1-start-filter": "reproduced",
        "p1-edit-size": "reproduced", "p1-edit-second-arch": "not tested",
        # chapter 6
        "p2-gain": "reproduced", "p2-std": "reproduced", "p2-few": "reproduced", "p2-ablation-random": "reproduced",
        "p2-ablation-ingredients": "partly", "p2-transfer": "reproduced", "p2-nlu": "not tested",
        "p2-calibration": "not tested", "h2h-bbq": "not tested", "h2h-capability": "not tested",
        # chapter 2: interval verdicts and per-category leans
        "p1-cw-bias": "reproduced", "p1-cw-bias:other-model": "not reproduced", "base-stereoset": "not reproduced",
        "base-stereoset:other-model": "reproduced",
        "p1-cw-traits": "reproduced", "p1-cw-colors": "partly", "p1-cw-hobbies": "not reproduced",
    }
    assert {k: t.loc[k, "verdict"] for k in expected} == expected
    assert t.loc["p1-general-second-arch", "our_value"] == NOT_TESTED
    assert t.loc["p1-general-collapse", "our_value"] == (
        "arithmetic 50.0 % [40.0, 60.0] → 5.0 % [0.0, 10.0]; RACE 60.0 % [55.0, 65.0] → 50.0 % [45.0, 55.0]")
    assert t.loc["p1-shared-ffn_value", "our_value"] == "74 % [73, 81]"
    assert t.loc["p2-gain", "our_value"] == "40.0 % → 48.0 % (+8.0 points); paired change +8.0 [+3.0, +13.0] points"
    assert t.loc["p1-edit-reduces", "our_value"] == (
        "joint_greedy K=50: mean |b| 0.800 → 0.600; change -0.200 [-0.300, -0.100] (-25 %)")
    assert ("(one_shot K=50) the edit changes mean |b| by +0.400 with mean b -1.200: single pushes towards 'woman' "
            "add up past zero") in t.loc["p1-edit-reduces", "reason"]
    assert t.loc["p1-edit-baselines", "our_value"].endswith("fine-tuned (LoRA) -0.100")
    assert t.loc["p1-cw-bias:other-model", "model"] == "other-model"
    assert t.loc["p1-cw-bias", "model"] == "tiny-model"
    assert t.loc["base-stereoset:other-model", "reason"] == "the SS interval is above 50 (intrasentence gender items)"
    assert "base-winobias:other-model" not in t.index  # no suite rows for that model: no row
    assert t.loc["p1-general-exist", "profile"] == "quick"


def test_paper_values_are_the_summaries_numbers(results):
    t = _rows(rp.compare(results))
    assert t.loc["p1-general-collapse", "paper_value"] == "arithmetic 51.9 % → 7.5 %; RACE 63.5 % → 31.5 %"
    assert t.loc["p1-edit-icat", "paper_value"] == "59.1 → 61.6"
    assert t.loc["p1-edit-entropy", "paper_value"] == "0.95 → 0.81"
    assert t.loc["p1-shared-attn_value", "paper_value"] == "≈60 % at K = 10"
    assert t.loc["p1-general-layer", "paper_value"] == "FFN layer 2 (of 32)"
    assert t.loc["p2-gain", "paper_value"].startswith("+6.1 to +22.9 points (Table 1")
    assert t.loc["p2-ablation-random", "paper_value"] == "random 65.62 vs full 71.68 % (base, SES; original 65.63)"
    assert t.loc["p2-few", "paper_value"].startswith("3 to 170 neurons")
    assert t.loc["p1-edit-reduces", "paper_value"].startswith("not reported")
    assert min(rp.P2_GAINS) == pytest.approx(71.68 - 65.63)
    assert max(rp.P2_GAINS) == pytest.approx(76.13 - 53.26)


def test_crispr_gain_by_answering_unknown_is_only_partly(results):
    # the same significant gain, but the pruned model answers "unknown" nearly always
    _write(results, "06_crispr", {**CH6, "by_unknown": True, "orig_unknown": 0.04, "crispr_unknown": 0.95},
           transfer_categories=["Age"])
    row = _rows(rp.compare(results)).loc["p2-gain"]
    assert row["verdict"] == "partly"
    assert row["our_value"].endswith('; "unknown" answers 4 % → 95 %')
    assert "not from reading the context" in row["reason"]


def test_crispr_gain_is_judged_on_balanced_accuracy(results):
    # plain accuracy rises detectably (+8 points, [+3, +13]) but the balanced accuracy
    # sqrt(acc_ambig * acc_disambig) does not (+1 point, [-2, +4]): the "unknown" artefact
    _write(results, "06_crispr", {**CH6, "delta_bal": ci(0.01, -0.02, 0.04, 96), "orig_balanced_accuracy": 0.30,
                                  "crispr_balanced_accuracy": 0.31, "orig_unknown": 0.04, "crispr_unknown": 0.60,
                                  "selection_scoring": "official"}, transfer_categories=["Age"])
    row = _rows(rp.compare(results)).loc["p2-gain"]
    assert row["verdict"] == "not reproduced"
    assert "balanced accuracy 0.30 → 0.31 (paired +1.0 [-2.0, +4.0] points)" in row["our_value"]
    assert row["reason"].startswith("judged on balanced accuracy: its paired interval includes zero")
    assert 'the plain-accuracy gain is the "unknown" artefact' in row["reason"]
    assert "official option scoring" in row["reason"]
    # a balanced gain of 8 points ([+3, +13]) reaches the paper's smallest (+6.05): reproduced, no artefact
    _write(results, "06_crispr", {**CH6, "delta_bal": ci(0.08, 0.03, 0.13, 96), "orig_balanced_accuracy": 0.30,
                                  "crispr_balanced_accuracy": 0.38}, transfer_categories=["Age"])
    row = _rows(rp.compare(results)).loc["p2-gain"]
    assert row["verdict"] == "reproduced" and "artefact" not in row["reason"]


def test_general_layer_is_judged_on_both_sinks(results):
    _write(results, "04_general_neurons", {**CH4, "sink_layers": ["L2", "L11"], "sink_1_layers": "L2",
                                           "sink_1_writers": ["ffnL2N90", "ffnL2N430"], "sink_2_layers": "L11",
                                           "sink_2_writers": ["ffnL11N1229", "ffnL11N1487"],
                                           "verdict_shallow_sink": "partly reproduced"})
    row = _rows(rp.compare(results)).loc["p1-general-layer"]
    assert row["verdict"] == "partly"
    assert row["our_value"].endswith("start-token sinks at L2 (ffnL2N90, ffnL2N430); L11 (ffnL11N1229, ffnL11N1487)")
    assert "a shallow sink exists but the query score's general neurons sit in a deeper one" in row["reason"]


def test_missing_chapters_and_keys_are_not_tested(results):
    t = _rows(rp.compare(results))
    # chapters 0 and 1 did not run
    for cid in ("p1-nurse", "p1-commonwords"):
        assert t.loc[cid, "verdict"] == "not tested"
        assert t.loc[cid, "our_value"] == NOT_TESTED
        assert "has no results" in t.loc[cid, "reason"]
        assert t.loc[cid, "model"] == "–"
    # chapter 3 ran, but without the position shares
    assert t.loc["p1-start-route", "verdict"] == "not tested"
    assert "share_start_ffn_query" in t.loc["p1-start-route", "reason"]
    # chapter 6 ran without the head-to-head, and its capability table is missing
    assert "head-to-head" in t.loc["h2h-bbq", "reason"]
    assert t.loc["p2-capability", "verdict"] == "not tested"


def test_an_empty_directory_gives_a_full_table_of_not_tested(tmp_path):
    t = rp.compare(tmp_path)
    assert len(t) == len(rp.CLAIMS)
    assert set(t.verdict) == {"not tested"}
    assert rp.verdict_counts(t)["not tested"] == len(t)
    status = rp.chapter_status(tmp_path)
    assert not status.ran.any()
    assert "every claim is not tested" in rp.profile_summary(status)


def test_real_results_directory():
    """Whatever the chapters wrote so far (nothing in a fresh clone), every row has a verdict."""
    t = rp.compare()
    assert len(t) >= len(rp.CLAIMS)
    assert list(t.columns) == rp.COLUMNS
    assert t.verdict.isin(VERDICTS).all()
    assert t.reason.str.len().gt(0).all() and t.our_value.str.len().gt(0).all()
    assert t.id.is_unique


def test_claims_are_well_formed():
    ids = [c.id for c in rp.CLAIMS]
    assert len(ids) == len(set(ids))
    assert all(c.chapter in rp.CHAPTERS.values() for c in rp.CLAIMS)
    assert {c.paper for c in rp.CLAIMS} == {rp.PAPER1, rp.PAPER2, rp.BASELINE, rp.HEAD2HEAD}


def test_interval_formats(tmp_path):
    _write(tmp_path, "05_editing_bias", {
        "a": ci(1.0, 0.5, 1.5), "b": 2.0, "b_ci": "[+1.0, +3.0]", "c": 25.0, "c_ci": {"estimate": 0.25, "low": 0.2,
                                                                                       "high": 0.3},
        "d": "+5.36", "e": 4.0, "f": None, "g": "-0.015 to +0.009"})
    v = rp.ResultsDir(tmp_path)
    assert v.interval("05_editing_bias", "a") == rp.Interval(1.0, 0.5, 1.5)
    assert v.interval("05_editing_bias", "b") == rp.Interval(2.0, 1.0, 3.0)
    assert v.interval("05_editing_bias", "c") == rp.Interval(25.0, 0.2, 0.3)
    assert v.interval("05_editing_bias", "d") == rp.Interval(5.36)
    assert v.interval("05_editing_bias", "e").text(".1f") == "4.0"
    assert v.num("05_editing_bias", "g") == -0.015
    with pytest.raises(rp.Missing):
        v.num("05_editing_bias", "f")
    with pytest.raises(rp.Missing):
        v.get("05_editing_bias", "absent")
    with pytest.raises(rp.Missing):
        v.get("06_crispr", "anything")
    assert rp.Interval(0.5, 0.4, 0.6).scaled(100).text(".0f", " %") == "50 % [40, 60]"


def test_verdict_rules():
    assert rp.interval_verdict(0.55, 0.67, 0.6, 0.1) == "reproduced"
    assert rp.interval_verdict(0.73, 0.81, 0.6, 0.1) == "partly"
    assert rp.interval_verdict(0.85, 0.95, 0.6, 0.1) == "not reproduced"
    assert rp.interval_verdict(0.81, 0.73, 0.6, 0.1) == "partly"  # order of the bounds does not matter
    assert rp.change_verdict(8.0, 3.0, 13.0, 6.05) == "reproduced"
    assert rp.change_verdict(2.0, 0.5, 3.5, 6.05) == "partly"
    assert rp.change_verdict(0.0, -4.0, 4.0, 6.05) == "not reproduced"
    assert rp.change_verdict(-5.0, -9.0, -1.0, 6.05) == "not reproduced"
    assert rp.change_verdict(-0.2, -0.3, -0.1, -0.14) == "reproduced"
    assert rp.level_verdict(0.8, 0.75, 0.6) == "reproduced"
    assert rp.level_verdict(0.7, 0.75, 0.6) == "partly"
    assert rp.level_verdict(0.5, 0.75, 0.6) == "not reproduced"
    assert rp.capability_verdict(-1.0, 1.0) == "reproduced"
    assert rp.capability_verdict(None, 5.0) == "partly"
    assert rp.capability_verdict(-20.0, 1.0) == "not reproduced"
    assert rp._chapter_verdict("partly reproduced") == "partly"
    assert rp._chapter_verdict("Not tested") == "not tested"
    with pytest.raises(ValueError):
        rp._chapter_verdict("maybe")
    with pytest.raises(ValueError):
        rp.Outcome("x", "probably", "y")


def test_learner_checks_accept_right_and_refuse_wrong_answers():
    assert rp.check_interval_verdict(rp.interval_verdict)
    assert not rp.check_interval_verdict(lambda lo, hi, t, tol: "reproduced" if lo <= t <= hi else "not reproduced")
    assert not rp.check_interval_verdict(lambda *a: 1 / 0)
    assert rp.check_change_verdict(rp.change_verdict)
    assert not rp.check_change_verdict(lambda est, lo, hi, p: "reproduced" if lo > 0 else "not reproduced")


def test_figure_and_styled_table(results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = rp.compare(results)
    ax = rp.plot_verdicts(t)
    assert ax.get_xlabel() == "number of claims" and ax.get_ylabel() == "chapter"
    assert [x.get_text() for x in ax.get_legend().get_texts()] == list(VERDICTS)[::-1]
    plt.close(ax.figure)
    html = rp.style(t, chapters=["04"]).to_html()
    assert "p1-general-collapse" in html and "p2-gain" not in html
    assert list(rp.verdict_counts(t, by="paper").columns) == list(VERDICTS)
    # the lists name claims in words (their texts from CLAIMS), not ids
    listed = rp.verdict_list(t, "not tested")
    assert listed.startswith(rp.CLAIMS[0].claim) and "p1-" not in listed
    assert listed.split("; ")[:2] == list(t.claim[t.verdict == "not tested"][:2])
    assert rp.verdict_list(t.iloc[:0], "reproduced") == "none"


def test_second_architecture_edit_claim(tmp_path):
    # the chapter stores the interval as a two-number list; a reduction needs it below zero
    _write(tmp_path, "05_editing_bias", {**CH5, "replicate_gemma3-270m_d": -0.2, "replicate_gemma3-270m_d_ci": [-0.3, -0.05]},
           replicate_models=["gemma3-270m"])
    row = _rows(rp.compare(tmp_path)).loc["p1-edit-second-arch"]
    assert row.verdict == "reproduced"
    assert row.our_value == "gemma3-270m: change in mean |b| -0.200 [-0.300, -0.050]"
    _write(tmp_path, "05_editing_bias", {**CH5, "replicate_gemma3-270m_d": -0.05, "replicate_gemma3-270m_d_ci": [-0.2, 0.1]},
           replicate_models=["gemma3-270m"])
    assert _rows(rp.compare(tmp_path)).loc["p1-edit-second-arch", "verdict"] == "not reproduced"
    # listed as replicated but without its numbers: not tested, never a verdict
    _write(tmp_path, "05_editing_bias", CH5, replicate_models=["gemma3-270m"])
    assert _rows(rp.compare(tmp_path)).loc["p1-edit-second-arch", "verdict"] == "not tested"
    # two models, one without a chosen edit: partly
    _write(tmp_path, "05_editing_bias", {**CH5, "replicate_gemma3-270m_d": -0.2, "replicate_gemma3-270m_d_ci": [-0.3, -0.05],
                                         "replicate_q_choice": "none"}, replicate_models=["gemma3-270m", "q"])
    row = _rows(rp.compare(tmp_path)).loc["p1-edit-second-arch"]
    assert row.verdict == "partly" and row.our_value.endswith("q: no edit chosen")


@pytest.mark.parametrize("n_selected, verdict, text", [
    (50, "reproduced", "150 candidates → 9 start-position dropped → joint greedy: 50 edited (3 refused by the joint guard)"),
    (24, "partly", "→ joint greedy: 24 edited"),
])
def test_edit_size_counts_the_chosen_edit(results, n_selected, verdict, text):
    _write(results, "05_editing_bias", {**CH5, "n_selected": n_selected})
    row = _rows(rp.compare(results)).loc["p1-edit-size"]
    assert row.verdict == verdict
    assert text in row.our_value


def test_edit_reduces_needs_to_beat_its_random_draws(results):
    _write(results, "05_editing_bias", {**CH5, "edit_beyond_random": False, "edit_random_beaten": "9 of 10"})
    row = _rows(rp.compare(results)).loc["p1-edit-reduces"]
    assert row.verdict == "partly" and "(it beats 9 of 10)" in row.reason
    _write(results, "05_editing_bias", {**CH5, "edit_name": "no edit", "random_d": "n/a"})
    rows = _rows(rp.compare(results))
    for claim in ("p1-edit-reduces", "p1-edit-baselines"):
        assert rows.loc[claim, "verdict"] == "not reproduced"
        assert rows.loc[claim, "our_value"] == "the validation rule chose no edit"


def test_edit_capability_judges_the_task_accuracies(results):
    # perplexity +1.5 % alone: kept (the CH5 fixture has no suite numbers)
    row = _rows(rp.compare(results)).loc["p1-edit-capability"]
    assert row.verdict == "reproduced" and "perplexity only" in row.reason
    # arithmetic -22 points with perplexity +1.5 %: 22 > ACC_PARTIAL_PP (10) -> not reproduced,
    # and the reason says that neutral text does not see it
    _write(results, "05_editing_bias", {**CH5, "cap_changes_pp": {"arithmetic_1digit": -22.0, "race": -1.0}})
    row = _rows(rp.compare(results)).loc["p1-edit-capability"]
    assert row.verdict == "not reproduced"
    assert "arithmetic_1digit -22.0 points" in row.our_value and "does not see the loss" in row.reason
    # -1.5 points at most (<= ACC_TOL_PP = 2): kept
    _write(results, "05_editing_bias", {**CH5, "cap_changes_pp": {"arithmetic_1digit": -1.5, "piqa": 0.5}})
    assert _rows(rp.compare(results)).loc["p1-edit-capability", "verdict"] == "reproduced"
