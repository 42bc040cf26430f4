"""Chapter 5's editing pipeline on the real default model (no mocks; small inputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import neuron_editing as ne
from analysis_lib.attribution import dataset_attribution
from analysis_lib.commonwords import load_commonwords, to_frame
from analysis_lib.editing import EditSpec, apply_edit, load_edit, save_edit
from analysis_lib.errors import EditError, NeuronIdError
from analysis_lib.scoring import target_logprobs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_words():
    words = to_frame(load_commonwords(0))
    return ne.subset_words(words[words.split == "train"], 5, 0)


@pytest.fixture(scope="module")
def small_attribution(model, train_words):
    prompts = train_words.prompt.tolist()[:3]
    targets = ne.biased_targets(model, prompts)
    return dataset_attribution(model, prompts, targets, top_k=8, words=train_words.word.tolist()[:3], progress=False)


def test_subset_words_is_stratified_and_seeded(train_words):
    assert len(train_words) == 5
    assert train_words.category.nunique() == 5
    words = to_frame(load_commonwords(0))
    again = ne.subset_words(words[words.split == "train"], 5, 0)
    assert again.word.tolist() == train_words.word.tolist()


def test_start_position_candidates_are_dropped(small_attribution):
    cands = ne.candidates(small_attribution, 8)
    assert cands.neuron.is_unique
    # every table's top-8 is represented
    for kind, df in small_attribution.tables.items():
        assert set(df.sort_values("rank").neuron.astype(str).head(8)) <= set(cands.neuron)
    kept, dropped = ne.drop_start(cands)
    assert len(kept) + len(dropped) == len(cands)
    assert (kept.important_position != "start").all()
    assert (dropped.important_position == "start").all()
    # the real attribution has start-position query neurons (the general-neuron candidates)
    q = small_attribution.tables["ffn_query"]
    start_q = set(q[q.important_position == "start"].neuron.astype(str))
    assert start_q, "expected at least one start-position FFN query neuron"
    assert start_q <= set(dropped.neuron)
    assert not start_q & set(kept.neuron)
    # FFN value neurons are scored at the last position and never dropped on their own
    assert (dropped.kinds != "ffn_value").all()


def test_baselines(model, small_attribution):
    lo = ne.logit_only(small_attribution, 6)
    assert len(lo) == 6 and len(set(lo)) == 6
    firsts = {str(df.sort_values("rank").neuron.iloc[0]) for df in small_attribution.tables.values()}
    assert firsts <= set(lo)


def test_saved_edit_round_trips_and_refuses_wrong_model(model, tmp_path):
    path = save_edit(tmp_path / "e.json", ["ffnL3N5", "attnL2H1D3"], model=model, selection="test")
    spec = load_edit(path)
    assert spec.neurons == ["ffnL3N5", "attnL2H1D3"] and spec.model == model.study_name
    assert spec.start_token == model.start_token
    prompts = ["The nurse is a"]
    before = target_logprobs(model, prompts, [" man", " woman"])
    with apply_edit(model, path):
        during = target_logprobs(model, prompts, [" man", " woman"])
    assert torch.equal(before, target_logprobs(model, prompts, [" man", " woman"]))
    assert not torch.equal(before, during)
    other = EditSpec(neurons=spec.neurons, model="gemma3-270m", start_token=spec.start_token)
    with pytest.raises(EditError, match="gemma3-270m"):
        with apply_edit(model, other):
            pass
    big = EditSpec(neurons=["ffnL99N0"], model=model.study_name, start_token=model.start_token)
    with pytest.raises(NeuronIdError, match="out of range"):
        with apply_edit(model, big):
            pass


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "analysis_lib", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_cli_edit_commonwords(model, tmp_path):
    path = save_edit(tmp_path / "tiny.json", ["ffnL25N9", "ffnL29N561"], model=model, selection="tiny test edit",
                     metadata={"strategy": "joint_greedy", "k": 2, "val_mean_abs_b": 0.5})
    out = _cli("edit", "--edit", str(path), "--eval", "commonwords", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["chosen"] == {"strategy": "joint_greedy", "k": 2, "val_mean_abs_b": 0.5}
    assert "strategy joint_greedy, K = 2" in ne.edit_text(payload)
    metrics = {r["metric"]: r for r in payload["rows"]}
    assert set(metrics) == {"mean_abs_b", "share_strong"}
    assert metrics["mean_abs_b"]["value_before"] > 0
    assert metrics["mean_abs_b"]["diff"] != 0


def _one_paragraph(err: str) -> None:
    # library warnings may precede it; the error itself is one line starting "error: "
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0])


def test_cli_edit_bad_file_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = _cli("edit", "--edit", str(bad), "--eval", "commonwords")
    assert out.returncode == 2
    _one_paragraph(out.stderr)
    assert "not valid JSON" in out.stderr
    out = _cli("edit", "--edit", str(tmp_path / "missing.json"))
    assert out.returncode == 2 and "No edit file" in out.stderr
    out = _cli("edit", "--edit", str(bad), "--eval", "commonwords,nonsense")
    assert out.returncode == 2 and "nonsense" in out.stderr


def test_cli_edit_out_of_range_exits_2(model, tmp_path):
    spec = EditSpec(neurons=["ffnL99N0"], model=model.study_name, start_token=model.start_token)
    path = save_edit(tmp_path / "oor.json", spec)
    out = _cli("edit", "--edit", str(path), "--eval", "commonwords")
    assert out.returncode == 2
    _one_paragraph(out.stderr)
    assert "out of range" in out.stderr


def test_evaluate_conditions_accepts_edited_models(model):
    # a condition may be an already edited model (e.g. a fine-tuned copy): evaluated as is,
    # with the same numbers as masking the same neurons in place
    import copy

    from analysis_lib.editing import masked_copy

    words = to_frame(load_commonwords(0))
    test = ne.subset_words(words[words.split == "test"], 5, 0)
    texts = ne.guard_and_eval_texts(1, 1)[1]
    ids = ["ffnL27N336", "attnL22H3D40"]
    conditions = {"original": [], "masked": ids, "copy": masked_copy(model, ids), "plain copy": copy.deepcopy(model)}
    table, items = ne.evaluate_conditions(model, conditions, test, texts, n_boot=50)
    t = table.set_index("condition")
    cols = [c for c in t.columns if c not in ("group", "seconds")]
    pd.testing.assert_series_equal(t.loc["masked", cols], t.loc["copy", cols], check_names=False)
    assert items["masked"].b.tolist() == items["copy"].b.tolist()
    assert items["plain copy"].b.tolist() == items["original"].b.tolist()
    assert t.loc["copy", "n_neurons"] == 2 and pd.isna(t.loc["plain copy", "n_neurons"])
    assert t.loc["masked", "mean_abs_b"] != t.loc["original", "mean_abs_b"]


def test_headline_numbers_hand_computed():
    from types import SimpleNamespace

    from analysis_lib.neuron_editing import headline_numbers

    orig = SimpleNamespace(mean_abs_b=0.8)
    r = SimpleNamespace(mean_abs_b=0.6, d_mean_abs_b=-0.2, d_mean_abs_b_low=-0.31, d_mean_abs_b_high=-0.05,
                        share_strong=0.25, d_ppl_pct=1.234, d_ppl_pct_low=-0.5, d_ppl_pct_high=2.0)
    h = headline_numbers(r, orig)
    assert h["rel"] == ("-25", None) and h["share"] == ("25", None)
    assert h["d"] == (-0.2, "+.3f") and h["d_ci"] == ("[-0.310, -0.050]", None)
    assert h["dppl"] == ("+1.23", None) and h["verdict"][0] == "reduces"
    r.d_mean_abs_b_high = 0.01
    assert headline_numbers(r, orig)["verdict"][0] == "does not significantly change"
    r.d_mean_abs_b_low, r.d_mean_abs_b_high = 0.02, 0.3
    assert headline_numbers(r, orig)["verdict"][0] == "increases"
    r.d_mean_abs_b_low = 0.0  # an interval touching zero is not significant
    assert headline_numbers(r, orig)["verdict"][0] == "does not significantly change"


def test_signed_lean_and_its_text_hand_computed():
    from analysis_lib.neuron_editing import lean_text, signed_lean

    words = ["nurse", "pilot", "tree", "soup"]
    items = {
        "original": pd.DataFrame({"word": words, "b": [-0.5, 1.5, 0.5, 0.5]}),     # mean +0.5
        "overshoot": pd.DataFrame({"word": words[::-1], "b": [-1.0, -1.0, 0.5, -1.5]}),  # soup, tree, pilot, nurse
        "crosses": pd.DataFrame({"word": words, "b": [-0.5, 0.5, -0.2, -0.2]}),
        "keeps": pd.DataFrame({"word": words, "b": [0.0, 1.0, 0.5, 0.5]}),
    }
    lean = signed_lean(items).set_index("condition")
    assert lean.loc["original", "mean_b"] == pytest.approx(0.5)
    assert lean.loc["overshoot", "mean_b"] == pytest.approx(-0.75)
    # by word: nurse -1.5 (same sign as -0.5), pilot +0.5 (same), tree -1.0 (flipped), soup -1.0 (flipped)
    assert lean.loc["overshoot", "share_flipped"] == pytest.approx(0.5)
    assert lean.loc["overshoot", "share_female"] == pytest.approx(0.75)
    assert lean.loc["keeps", "share_flipped"] == pytest.approx(0.25)  # b = 0 counts as a change of sign
    assert lean.loc["original", "share_flipped"] == 0.0
    text, short = lean_text(lean.reset_index(), "overshoot")
    assert short == "mean b +0.500 → -0.750, 50 % of the words change sign"
    assert "overshoots into a stronger female one" in text and "$" not in text
    assert "crosses zero into a weaker female one" in lean_text(lean.reset_index(), "crosses")[0]
    assert "keeps its direction" in lean_text(lean.reset_index(), "keeps")[0]
    with pytest.raises(ValueError, match="lacks words"):
        signed_lean({"original": items["original"], "short": items["original"].head(2)})
    with pytest.raises(KeyError, match="reference="):
        signed_lean(items, reference="edited")


def test_replicate_runs_the_recipe_on_a_named_model(model):
    from analysis_lib.capability import neutral_texts

    words = to_frame(load_commonwords(0))
    train = ne.subset_words(words[words.split == "train"], 8, 0)
    test = ne.subset_words(words[words.split == "test"], 5, 0)
    texts = neutral_texts()
    rep = ne.replicate("smollm2-135m-instruct", train, test, texts[-1:], texts[:1], top_n=4, ks=[2], n_val=3,
                       n_causal=5, n_random=1, guard_tol=0.05, seed=0)
    t = rep["table"].set_index("condition")
    assert t.index[0] == "original" and t.index[-1] == "general neurons"
    assert (rep["table"].model == "smollm2-135m-instruct").all()
    assert len(rep["general"]) == 2
    # the original row is the plain evaluation of the same model
    direct, _ = ne.evaluate_conditions(model, {"original": []}, test, texts[:1])
    row = t.loc["original"]
    assert row.mean_abs_b == pytest.approx(direct.mean_abs_b.iloc[0], abs=1e-6)
    assert row.ppl == pytest.approx(direct.ppl.iloc[0], rel=1e-6)
    text = ne.replicate_text(rep["table"])
    assert text.startswith("On smollm2-135m-instruct the original model") and f"{row.mean_abs_b:.3f}" in text
    assert "`" not in text and "$" not in text  # glued as plain text
    if rep["edit"]:
        chosen = t[t.group == "edit (chosen)"].iloc[0]
        ed, _ = ne.evaluate_conditions(model, {"original": [], "edit": rep["edit"]}, test, texts[:1])
        assert chosen.d_mean_abs_b == pytest.approx(ed.d_mean_abs_b.iloc[1], abs=1e-6)
        assert len(t[t.group.str.startswith("random")]) == 1
        change = ("a significant reduction" if chosen.d_mean_abs_b_high < 0 else
                  "a significant increase" if chosen.d_mean_abs_b_low > 0 else "no significant change")
        assert f"({change})" in text
    else:
        assert "chooses none" in text


def test_split_validation_is_disjoint_stratified_and_seeded():
    words = to_frame(load_commonwords(0))
    train = words[words.split == "train"]
    sel, val = ne.split_validation(train, 100, 0)
    assert len(val) == 100 and len(sel) == len(train) - 100
    assert not set(sel.word) & set(val.word)
    assert val.category.value_counts().tolist() == [20] * 5  # 100 over 5 categories
    again = ne.split_validation(train, 100, 0)[1]
    assert again.word.tolist() == val.word.tolist()
    with pytest.raises(ne.ParameterError, match="n_val"):
        ne.split_validation(train, len(train), 0)


def test_add_controls_and_texts_hand_computed():
    table = pd.DataFrame({"condition": ["original", "e"], "n_neurons": [0, 2], "mean_abs_b": [1.0, 0.6],
                          "d_mean_abs_b": [0.0, -0.4], "d_mean_abs_b_low": [0.0, -0.5],
                          "d_mean_abs_b_high": [0.0, -0.3], "d_ppl_pct": [0.0, 0.5], "d_ppl_pct_low": [0.0, 0.1],
                          "d_ppl_pct_high": [0.0, 0.9], "share_strong": [0.5, 0.2], "mean_b": [0.8, 0.1],
                          "share_flipped": [0.0, 0.25]})
    controls = pd.DataFrame({"control_for": ["e", "e", "e"], "draw": [0, 1, 2], "d_mean_abs_b": [0.02, -0.1, 0.0],
                             "d_ppl_pct": [0.1, 0.3, 0.2]})
    out = ne.add_controls(table, controls).set_index("condition")
    assert out.loc["e", "random_n"] == 3 and out.loc["e", "random_d_min"] == -0.1
    assert out.loc["e", "random_d_max"] == 0.02 and out.loc["e", "random_d_median"] == 0.0
    assert out.loc["e", "random_dppl_median"] == pytest.approx(0.2)
    assert np.isnan(out.loc["original", "random_d_min"])
    # -0.4 < -0.1: beyond every draw; a uniform shift could remove at most 0.3 here
    text = ne.held_out_text(out.reset_index(), "e", None, 0.3)
    assert "reduces mean |b|: 1.000 → 0.600" in text and "beyond every one of them" in text
    assert "mean signed b moves from +0.800 to +0.100" in text and "25 % of the words" in text
    assert "does more than push every word one way" in text
    # -0.05 is beaten by draw 1 (-0.1 <= -0.05): 2 of 3 beaten, the draw named with its mean b; the
    # other edit "f" (-0.4 < its only draw's -0.2, interval below 0) goes beyond every draw of its size
    weak = table.assign(d_mean_abs_b=[0.0, -0.05], mean_abs_b=[1.0, 0.95])
    weak = pd.concat([weak, weak.iloc[[1]].assign(condition="f", d_mean_abs_b=-0.4)], ignore_index=True)
    ctl = pd.concat([controls.assign(mean_b=[0.8, 0.3, 0.7]),
                     pd.DataFrame({"control_for": ["f"], "draw": [0], "d_mean_abs_b": [-0.2], "d_ppl_pct": [0.0],
                                   "mean_b": [0.5]})], ignore_index=True)
    out = ne.add_controls(weak, ctl)
    text = ne.held_out_text(out, "e", None, 0.3, ctl)
    assert "It beats 2 of the 3; the draw that does as well moves the mean signed b to +0.300 (unedited +0.800)" in text
    assert "go beyond every draw of their own size: f (-0.400, draws -0.200 to -0.200)." in text


def test_choice_text_names_the_edge():
    vt = pd.DataFrame({"edit": ["one_shot K=10"], "strategy": ["one_shot"], "k": [10], "val_mean_abs_b": [0.5]})
    vt.attrs["val_mean_abs_b_original"] = 0.8
    edge = ne.choice_text({"edit": "one_shot K=10", "strategy": "one_shot", "k": 10, "val_mean_abs_b": 0.5,
                           "at_edge": "largest"}, vt, [5, 10])
    assert "0.800 → 0.500" in edge and "largest size of the grid, so a larger edit was not tried" in edge
    walk = ne.choice_text({"edit": "joint_greedy K=7", "strategy": "joint_greedy", "k": 7, "val_mean_abs_b": 0.5,
                           "at_edge": False}, vt, [5, 10])
    assert "own stopping point" in walk
    none = ne.choice_text({"edit": None, "strategy": None, "k": 0, "val_mean_abs_b": 0.8, "at_edge": False}, vt, [5])
    assert "chooses none" in none


def test_paper_comparison_text_follows_the_numbers():
    values = {"edit_name": "joint_greedy K=24", "chosen_strategy": "joint greedy", "edit_verdict": "reduces",
              "edit_d": -0.3, "random_d": "-0.08 to +0.10", "edit_dppl": "+2.50", "one_shot_name": "one_shot K=50",
              "orig_mean_b": 0.571, "one_shot_mean_b": -1.289, "one_shot_d": 0.565}
    text = ne.paper_comparison_text(values)
    assert "chose joint_greedy K=24 (strategy joint greedy); it reduces held-out" in text
    assert "from +0.571 to -1.289: its neurons each push every word" in text  # |-1.289| > 0.571, other sign
    # a one-shot edit that keeps the lean's direction is not called an overshoot
    mild = ne.paper_comparison_text({**values, "one_shot_mean_b": 0.3})
    assert "overshoot" not in mild and mild.endswith("to +0.300.")
    # when the one-shot edit is the chosen one it is not described twice
    same = ne.paper_comparison_text({**values, "edit_name": "one_shot K=50"})
    assert "Read one neuron at a time" not in same
    assert "not reproduced" in ne.paper_comparison_text({**values, "edit_name": "no edit"})
    # a small one-shot edit chosen, the K = 50 one overshooting: the reading fails only at size
    small = ne.paper_comparison_text({**values, "edit_name": "one_shot K=5", "chosen_strategy": "one shot",
                                      "edit_beyond_random": True, "edit_random_beaten": "10 of 10"})
    assert "draws -0.08 to +0.10, beyond every one) for" in small
    assert "works only while K is small enough" in small and "not to the idea" not in small
    assert "draws -0.08 to +0.10, it beats 9 of 10) for" in ne.paper_comparison_text(
        {**values, "edit_beyond_random": False, "edit_random_beaten": "9 of 10"})


def test_kv_text_and_runner_up_by_hand():
    kv = pd.DataFrame({"neurons": ["attnL0H6D51, attnL0H7D51, attnL0H8D51"], "n": [3], "n_kept_one_shot": [2],
                       "single_ppl_ratio_max": [1.004], "joint_ppl_ratio": [1.42]})
    text = ne.kv_text(kv, 0.01)
    assert "the largest change of the guard perplexity by any one of them is +0.4 %" in text and "together they change it by +42.0 %" in text
    assert "a one-neuron guard of 1 % would pass each of them, the joint guard kept 2 of the 3" in text
    cheap = ne.kv_text(kv.assign(single_ppl_ratio_max=0.92, joint_ppl_ratio=0.95), 0.01)
    assert "would pass each" not in cheap and "kept 2 of the 3" in cheap
    assert "No two attention neurons" in ne.kv_text(kv.iloc[:0], 0.01)
    vt = pd.DataFrame({"edit": ["joint_greedy K=10", "joint_greedy K=19", "one_shot K=10"], "strategy": "x",
                       "k": [10, 19, 10], "val_mean_abs_b": [0.6279, 0.6284, 0.7388]})
    vt.attrs["val_mean_abs_b_original"] = 0.7799
    text = ne.choice_text({"edit": "joint_greedy K=10", "strategy": "joint_greedy", "k": 10, "val_mean_abs_b": 0.6279,
                           "at_edge": False}, vt, [10, 25, 50])
    assert "The runner-up, joint_greedy K=19, is within 0.01 (0.628)" in text


def test_edit_command_honours_the_edits_start_token(model, tmp_path):
    # an edit found with <|endoftext|> at position 0 is evaluated under that start token, not the default
    spec = EditSpec(neurons=["ffnL25N9"], model=model.study_name, start_token="<|endoftext|>")
    path = tmp_path / "eot.json"
    path.write_text(json.dumps(spec.to_dict()))
    own = ne.edit_command(None, str(path), "commonwords")
    default = ne.edit_command(None, str(path), "commonwords", start_token="default")
    b_own = {r["metric"]: r["value_before"] for r in own["rows"]}["mean_abs_b"]
    b_default = {r["metric"]: r["value_before"] for r in default["rows"]}["mean_abs_b"]
    assert b_own != pytest.approx(b_default, abs=1e-6)  # the start token changes the unedited model's numbers


def test_replicate_text_flags_general_neurons_that_lower_perplexity():
    # Qwen2.5 under <|endoftext|> (the full run): perplexity 82.5 unedited, 19.1 with its two
    # "general neurons" masked; 19.1 < 82.5 / 2, so the text says they harm rather than carry
    table = pd.DataFrame({"model": "q", "condition": ["original", "general neurons"],
                          "group": ["original", "general neurons"], "n_neurons": [0, 2],
                          "mean_abs_b": [1.166, 1.654], "d_mean_abs_b": [0.0, 0.488], "ppl": [82.5, 19.1],
                          "d_ppl_pct": [0.0, 100 * (19.1 / 82.5 - 1)]})
    text = ne.replicate_text(table)
    assert "its own general neurons by +0.488 (-76.8 % perplexity). Masking those neurons lowers" in text
    assert "from 82.5 to 19.1" in text and text.endswith("not the general neurons of paper 1.")
    # a general-neuron mask that raises perplexity gets no such sentence
    assert "Masking those neurons" not in ne.replicate_text(table.assign(ppl=[13.1, 13.5], d_ppl_pct=[0.0, 2.8]))
