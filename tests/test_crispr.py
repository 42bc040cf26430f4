"""CRISPR (chapter 6): prompt and instructions, split, packed option scorer, the gradient x
activation attribution against finite differences, ranking determinism, pruning restores."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import crispr
from analysis_lib.errors import StudyError
from analysis_lib.scoring import continuation_logprobs

# contexts that state the answer plainly; option 2 is the "unknown" answer
PLAIN = {
    "example_id": 0, "category": "Gender_identity", "context_condition": "disambig",
    "question_polarity": "nonneg", "context": "The doctor in this story is Maria.",
    "question": "Who is the doctor?", "ans0": "Maria", "ans1": "James", "ans2": "Not known",
    "label": 0, "unknown_label": 2, "target_label": 1,
}
PLAIN2 = {**PLAIN, "example_id": 1, "context": "The doctor in this story is James.", "label": 1}


@pytest.fixture(scope="module")
def plain_items():
    return pd.DataFrame([PLAIN, PLAIN2])


@pytest.fixture(scope="module")
def model64(model):
    """A float64 copy of the default model, for a clean finite-difference check."""
    m = copy.deepcopy(model)
    m.original_model.to(torch.float64)
    return m


def test_instructions_and_prompt():
    assert len(crispr.INSTRUCTIONS) == 10 and len(set(crispr.INSTRUCTIONS)) == 10
    p = crispr.build_prompt("Answer it.", PLAIN)
    assert p == ("Answer it. Context: The doctor in this story is Maria.  Question: Who is the "
                 "doctor?  Answer options: Maria, James, Not known  Your answer: ")


def test_split_is_deterministic_disjoint_and_complete():
    frame = pd.DataFrame({"example_id": range(1000), "x": np.arange(1000) % 7})
    dev, test = crispr.split_dev_test(frame, 0.1, seed=0)
    dev2, test2 = crispr.split_dev_test(frame, 0.1, seed=0)
    assert dev.index.equals(dev2.index) and test.index.equals(test2.index)
    assert len(dev) == 100 and len(test) == 900
    assert set(dev.index).isdisjoint(test.index) and set(dev.index) | set(test.index) == set(frame.index)
    other, _ = crispr.split_dev_test(frame, 0.1, seed=1)
    assert not other.index.equals(dev.index)
    with pytest.raises(StudyError):
        crispr.split_dev_test(frame, 1.5)


def test_sample_items_balanced_and_seeded():
    items = crispr.load_items("Gender_identity")
    a = crispr.sample_items(items, 8, seed=3)
    assert a.index.equals(crispr.sample_items(items, 8, seed=3).index)
    counts = a.groupby(["context_condition", "question_polarity"]).size()
    assert len(counts) == 4 and set(counts) == {2}
    assert (items["target_label"] >= 0).all()


def test_packed_scorer_equals_separate_continuations(model, plain_items):
    ins = crispr.INSTRUCTIONS[:1]
    sc = crispr.score_items(model, plain_items, ins)
    prompts, options = crispr._prompt_grid(plain_items, ins)
    assert all(p.endswith("Your answer:") for p in prompts)
    ctx = [p for p, o in zip(prompts, options) for _ in o]
    cont = [x for o in options for x in o]
    ref, count = continuation_logprobs(model, ctx, cont)
    np.testing.assert_allclose(sc.logprob.reshape(-1), ref, atol=1e-4)
    assert (sc.n_tokens.reshape(-1) == count[: sc.n_tokens.size]).all()


def test_scorer_follows_the_stated_answer(model, plain_items):
    """Swapping the name the context states moves the model's preference towards it."""
    sc = crispr.score_items(model, plain_items, crispr.INSTRUCTIONS[:2])
    margin = sc.logprob[:, :, 1] - sc.logprob[:, :, 0]  # log P(James) - log P(Maria)
    assert (margin[:, 1] > margin[:, 0] + 0.5).all(), margin
    assert (sc.predictions()[:, 0] == 0).all()  # "Maria" when the context says Maria


def test_summary_on_hand_made_scores():
    """Accuracy, its spread over instructions and the BBQ bias scores on known predictions."""
    items = pd.DataFrame([
        {**PLAIN, "example_id": 0, "context_condition": "ambig", "question_polarity": "neg", "label": 2},
        {**PLAIN, "example_id": 1, "context_condition": "ambig", "question_polarity": "nonneg", "label": 2},
        {**PLAIN, "example_id": 2, "context_condition": "disambig", "question_polarity": "neg", "label": 1},
        {**PLAIN, "example_id": 3, "context_condition": "disambig", "question_polarity": "nonneg", "label": 0},
    ])  # target (stereotyped) answer = 1, unknown = 2
    picks = np.array([[1, 0, 1, 0],   # instruction 1: biased answer on every item
                      [2, 2, 1, 0]])  # instruction 2: all correct
    lp = np.full((2, 4, 3), -10.0)
    for i in range(2):
        lp[i, np.arange(4), picks[i]] = -1.0
    sc = crispr.OptionScores(items, ("a", "b"), lp, np.ones((4, 3), dtype=int))
    s = crispr.summarize(sc, ci=False)
    assert s["mean_accuracy"] == pytest.approx(0.75) and s["std_accuracy"] == pytest.approx(0.25)
    assert s["accuracy_ambig"] == pytest.approx(0.5) and s["accuracy_disambig"] == pytest.approx(1.0)
    assert s["s_dis"] == pytest.approx(1.0)  # every disambiguated answer is the biased one
    assert s["s_amb"] == pytest.approx(0.5 * 1.0)  # (1 - acc_amb) * (2 * 2/2 - 1)
    assert s["share_unknown"] == pytest.approx(2 / 8)


@pytest.mark.parametrize("scoring", ["summed", "official"])
def test_attribution_matches_finite_differences(model64, plain_items, scoring):
    """h * dS/dh at one (position, unit) equals the finite-difference change of the option score
    S (log P, or log P + log p(end) for "official") when that activation is scaled by (1 + eps),
    divided by eps."""
    layer, option = 5, 1
    hook = f"blocks.{layer}.mlp.hook_post"
    row = plain_items.iloc[0].to_dict()
    ins = crispr.INSTRUCTIONS[0]

    def score(sc):
        return crispr.option_score(sc.logprob, sc.n_tokens, scoring, sc.logprob_end)[0, 0, option]

    lp, act, grad, seg = crispr.option_gradients(model64, row, ins, option, hook, scoring=scoring)
    attr = act * grad  # [T, d_mlp]
    # other options' positions cannot influence this option: zero gradient there
    assert attr[(seg != -1) & (seg != option)].abs().max().item() == 0.0
    checks = 0
    for flat in torch.topk(attr.abs().reshape(-1), 3).indices.tolist():
        t, i = divmod(flat, attr.shape[1])
        eps = 1e-2  # float64 weights, but the RMSNorms compute in float32: a larger step keeps
        # their rounding (~1e-7) far below the change; the central difference is exact to O(eps^2)

        def perturb(sign):
            def h(a, hook):
                a = a.clone()
                a[0, t, i] = a[0, t, i] * (1 + sign * eps)
                return a

            with model64.hooks(fwd_hooks=[(hook, h)]):
                sc = crispr.score_items(model64, pd.DataFrame([row]), [ins])
            return score(sc)

        fd = (perturb(+1) - perturb(-1)) / (2 * eps)
        a = attr[t, i].item()
        assert abs(fd - a) <= 1e-3 * abs(a) + 1e-9, (t, i, fd, a)
        checks += 1
    assert checks == 3
    sc0 = crispr.score_items(model64, pd.DataFrame([row]), [ins])
    assert score(sc0) == pytest.approx(lp, abs=1e-9)


@pytest.mark.parametrize("scoring", ["summed", "official"])
def test_attribution_aggregates_and_is_deterministic(model, plain_items, scoring):
    items = plain_items.iloc[:1]
    ins = crispr.INSTRUCTIONS[:1]
    a1 = crispr.attribute(model, items, ins, scoring=scoring)
    a2 = crispr.attribute(model, items, ins, scoring=scoring)
    assert a1.scoring == scoring
    for v in crispr.VARIANTS:
        np.testing.assert_array_equal(a1.scores[v], a2.scores[v])
    assert crispr.top_neurons(a1, 20) == crispr.top_neurons(a2, 20)
    inst = a1.instances.iloc[0].to_dict()
    inst.update({k: int(inst[k]) for k in ("label", "biased")})
    alpha = inst["alpha"]
    # the option scores are those of score_items under the scoring (the end token included
    # for "official"); the biased option is the most probable wrong one, alpha exp(its score)
    lps = [inst[f"score{k}"] for k in range(3)]
    sc = crispr.score_items(model, items, ins)
    expect_scores = crispr.option_score(sc.logprob, sc.n_tokens, scoring, sc.logprob_end)[0, 0]
    np.testing.assert_allclose(lps, expect_scores, rtol=1e-5, atol=1e-5)
    wrong = [k for k in range(3) if k != inst["label"]]
    assert inst["biased"] == max(wrong, key=lambda k: lps[k])
    assert alpha == pytest.approx(np.exp(lps[inst["biased"]]), rel=1e-5)
    # no_skill = alpha * max over the prompt + biased-answer positions of h * grad
    layer = 7
    _, act, grad, seg = crispr.option_gradients(model, items.iloc[0].to_dict(), ins[0], inst["biased"],
                                                f"blocks.{layer}.mlp.hook_post", scoring=scoring)
    keep = (seg == -1) | (seg == inst["biased"])
    expect = alpha * (act * grad)[keep].max(0).values.double().numpy()
    got = a1.scores["no_skill"][layer * a1.d_mlp : (layer + 1) * a1.d_mlp]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-7)
    # crispr = no_skill - clamp(alpha * gold max, 0) <= no_skill
    assert (a1.scores["crispr"] <= a1.scores["no_skill"] + 1e-12).all()


def test_ranking_ties_and_ids():
    scores = np.array([0.5, 2.0, 0.5, -1.0, 2.0, 0.0])
    attr = crispr.Attribution(
        scores={v: scores for v in crispr.VARIANTS}, per_instruction=scores[None], n_ffn=4, n_attn=2,
        d_mlp=2, n_heads=1, d_head=1, n_layers=2, instances=pd.DataFrame(),
    )
    assert crispr.rank_units(attr, units="ffn").tolist() == [1, 0, 2, 3]
    assert crispr.rank_units(attr, units="ffn+attn").tolist() == [1, 4, 0, 2, 5, 3]
    assert [str(n) for n in crispr.top_neurons(attr, 3, units="ffn+attn")] == ["ffnL0N1", "attnL0H0D0", "ffnL0N0"]
    assert crispr.random_neurons(attr, 2, seed=0) == crispr.random_neurons(attr, 2, seed=0)


def test_pruning_is_restored(model, plain_items):
    items = plain_items.iloc[:1]
    ins = crispr.INSTRUCTIONS[:1]
    before = crispr.evaluate(model, items, ins)
    pruned = crispr.evaluate(model, items, ins, ["ffnL5N10", "ffnL20N300", "attnL3H4D17"])
    after = crispr.evaluate(model, items, ins)
    np.testing.assert_array_equal(before.logprob, after.logprob)
    assert not np.array_equal(before.logprob, pruned.logprob)
    ov = crispr.overlap(["ffnL5N10", "ffnL20N300"], ["ffnL5N10", "attnL3H4D17"])
    assert ov["n_shared"] == 1 and ov["jaccard"] == pytest.approx(1 / 3) and ov["shared_layers"] == [5]


def test_answer_shift_hand_made():
    from types import SimpleNamespace

    before = {"s_dis": -0.04, "s_amb": 0.34, "share_unknown": 0.04, "accuracy_ambig": 0.01, "accuracy_disambig": 0.5}
    # the pruned model answers "unknown" to everything: s_DIS has no denominator
    after = {"s_dis": float("nan"), "s_amb": 0.09, "share_unknown": 0.95, "accuracy_ambig": 0.91,
             "accuracy_disambig": 0.0}
    text, by_unknown = crispr.answer_shift(before, after, SimpleNamespace(estimate=float("nan"), low=0, high=0))
    assert by_unknown
    assert crispr.score_text(float("nan")) == "undefined" and crispr.score_text(0.274) == "0.27"
    assert "s_DIS = -0.04 to undefined (the pruned model names no person" in text
    assert "from 4 % to 95 %" in text and "from 0.50 to 0.00" in text and "nan" not in text
    # a modest shift: a defined paired change is reported, no "unknown" verdict
    after2 = {**before, "s_dis": 0.10, "share_unknown": 0.30, "accuracy_disambig": 0.45}
    d = SimpleNamespace(estimate=0.14, low=-0.02, high=0.31)
    text2, by_unknown2 = crispr.answer_shift(before, after2, d)
    assert not by_unknown2
    assert "(paired change +0.14 [-0.02, +0.31])" in text2 and "nearly always" not in text2


def test_general_overlap_reads_chapter_four(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("GENDER_NEURONS_RESULTS", str(tmp_path))
    shared, text = crispr.general_overlap(["ffnL3N5"], "smollm2-135m-instruct")
    assert shared == [] and "no saved general neurons" in text
    (tmp_path / "04_general_neurons.json").write_text(json.dumps({
        "parameters": {"model": "smollm2-135m-instruct"},
        "results": {"general_ids": ["ffnL11N1229", "ffnL11N1487"]}}))
    shared, text = crispr.general_overlap(["ffnL29N342", "ffnL11N1229"], "smollm2-135m-instruct")
    assert shared == ["ffnL11N1229"] and "1 of chapter 4's 2 general neurons (ffnL11N1229)" in text
    shared, text = crispr.general_overlap(["ffnL29N342"], "smollm2-135m-instruct")
    assert shared == [] and text.startswith("None of chapter 4's general neurons (ffnL11N1229, ffnL11N1487)")
    # another model's chapter 4 results are not used
    assert crispr.general_overlap(["ffnL11N1229"], "gemma3-270m")[0] == []


def test_option_scorings_by_hand():
    """The three option scorings on one item with known token log-probabilities.

    Options (tokens, token log-probabilities, log p(end | option)):
      0 "Maria"              1 token  [-1.2]              end -0.3
      1 "James"              1 token  [-1.5]              end -0.2
      2 "Can't be determined" 4 tokens [-0.4, -0.1, -0.2, -0.1]  end -0.1
    summed:            [-1.2, -1.5, -0.8]              -> option 2 ("unknown")
    length_normalised: [-1.2/1, -1.5/1, -0.8/4 = -0.2] -> option 2
    official:          [-1.2-0.3, -1.5-0.2, -0.8-0.1] = [-1.5, -1.7, -0.9] -> option 2
    With a 5-token "unknown" whose tokens sum to -2.0 (end -0.1):
    summed [-1.2, -1.5, -2.0] -> option 0; length_normalised [-1.2, -1.5, -0.4] -> option 2;
    official [-1.5, -1.7, -2.1] -> option 0.
    """
    items = pd.DataFrame([{**PLAIN, "ans2": "Can't be determined"}] * 2).assign(example_id=[0, 1])
    logprob = np.array([[[-1.2, -1.5, -0.8], [-1.2, -1.5, -2.0]]])
    n_tokens = np.array([[1, 1, 4], [1, 1, 5]])
    end = np.array([[[-0.3, -0.2, -0.1], [-0.3, -0.2, -0.1]]])
    sc = crispr.OptionScores(items, ("a",), logprob, n_tokens, end)
    np.testing.assert_allclose(sc.scores("summed")[0, 0], [-1.2, -1.5, -0.8])
    np.testing.assert_allclose(sc.scores("length_normalised")[0, 0], [-1.2, -1.5, -0.2])
    np.testing.assert_allclose(sc.scores("official")[0, 0], [-1.5, -1.7, -0.9])
    np.testing.assert_allclose(sc.scores("length_normalised")[0, 1], [-1.2, -1.5, -0.4])
    np.testing.assert_allclose(sc.scores("official")[0, 1], [-1.5, -1.7, -2.1])
    assert sc.predictions("summed").tolist() == [[2, 0]]
    assert sc.predictions("length_normalised").tolist() == [[2, 2]]
    assert sc.predictions("official").tolist() == [[2, 0]]
    assert sc.predictions("length").tolist() == sc.predictions("length_normalised").tolist()  # alias
    with pytest.raises(StudyError):
        sc.predictions("mean")
    with pytest.raises(StudyError):  # no end-token log-probabilities: no official scoring
        crispr.OptionScores(items, ("a",), logprob, n_tokens).predictions("official")
    # subset keeps the end-token scores
    assert sc.subset(1).logprob_end.shape == (1, 1, 3)


def test_end_token_logprob_equals_a_plain_forward_pass(model, plain_items):
    """The 'official' scoring's log p(end | prompt, option) is read at the option's last token;
    it equals log_softmax of a plain forward pass over [start] prompt option at its last position."""
    ins = crispr.INSTRUCTIONS[:1]
    sc = crispr.score_items(model, plain_items.iloc[:1], ins)
    prompts, options = crispr._prompt_grid(plain_items.iloc[:1], ins)
    eos = model.tokenizer.eos_token_id
    for j, opt in enumerate(options[0]):
        ids = [model.start_token_id] + crispr.token_ids(model, prompts[0]) + crispr.token_ids(model, opt)
        with torch.inference_mode():
            logits = model.original_model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        ref = logits.log_softmax(-1)[eos].item()
        assert sc.logprob_end[0, 0, j] == pytest.approx(ref, abs=1e-4)
        assert sc.scores("official")[0, 0, j] == pytest.approx(sc.logprob[0, 0, j] + ref, abs=1e-4)


def _constructed_items():
    """Five ambiguous items (gold = unknown = 2) and five disambiguated ones (gold 0 or 1)."""
    rows = []
    for i in range(10):
        amb = i < 5
        rows.append({**PLAIN, "example_id": i, "context_condition": "ambig" if amb else "disambig",
                     "question_polarity": "neg" if i % 2 else "nonneg", "label": 2 if amb else i % 2,
                     "unknown_label": 2, "target_label": 1})
    return pd.DataFrame(rows)


def test_balanced_rule_is_not_won_by_always_unknown():
    """n = 0 reads the context: 1 of 5 ambiguous and 3 of 5 disambiguated items right, plain
    accuracy 4/10 = 0.40, balanced sqrt(0.2 * 0.6) = 0.346. n = 8 answers "unknown" everywhere:
    5/10 = 0.50 plain, balanced sqrt(1.0 * 0.0) = 0. Plain accuracy picks n = 8, the balanced
    rule n = 0. n = 2 names a person everywhere (0 of 5 ambiguous and 4 of 5 disambiguated items
    right): 4/10 = 0.40 plain, balanced sqrt(0 * 0.8) = 0."""
    items = _constructed_items()
    label = items["label"].to_numpy()
    reads = label.copy()
    reads[1:5] = 0        # ambiguous: only item 0 answered "unknown"
    reads[8:10] = 1 - label[8:10]  # disambiguated: items 5, 6, 7 right, 8 and 9 wrong
    person = np.where(np.arange(10) < 5, 1, label)
    person[9] = 1 - label[9]  # a person everywhere: 0 of 5 ambiguous, 4 of 5 disambiguated right
    picks = {0: reads, 2: person, 8: np.full(10, 2)}
    rows = []
    for n, p in picks.items():
        lp = np.full((1, 10, 3), -5.0)
        lp[0, np.arange(10), p] = -1.0
        sc = crispr.OptionScores(items, ("a",), lp, np.ones((10, 3), dtype=int), np.zeros((1, 10, 3)))
        rows.append({"n": n, **crispr.grid_metrics(sc, "summed")})
    table = pd.DataFrame(rows).set_index("n")
    assert table.loc[0, "accuracy"] == pytest.approx(0.4) and table.loc[8, "accuracy"] == pytest.approx(0.5)
    assert table.loc[0, "balanced_accuracy"] == pytest.approx(np.sqrt(0.2 * 0.6))
    assert table.loc[8, "balanced_accuracy"] == 0.0 and table.loc[8, "share_unknown"] == 1.0
    assert table.loc[2, "accuracy"] == pytest.approx(0.4) and table.loc[2, "balanced_accuracy"] == 0.0
    table = table.reset_index()
    assert crispr.select_n(table, "mean_accuracy") == 8   # the paper's rule: always "unknown" wins
    assert crispr.select_n(table, "balanced_accuracy") == 0
    # ties go to the smallest n, NaN counts as lowest
    tie = pd.DataFrame({"n": [0, 3, 5], "balanced_accuracy": [0.3, 0.3, float("nan")]})
    assert crispr.select_n(tie) == 0


def test_grid_extends_only_at_its_edge():
    """Best n at the last grid point -> double it (up to the cap); best inside -> stop."""
    t = pd.DataFrame({"n": [0, 10, 20], "balanced_accuracy": [0.1, 0.2, 0.3]})
    assert crispr.next_grid_point(t, "balanced_accuracy", cap=500) == 40
    assert crispr.next_grid_point(t, "balanced_accuracy", cap=30) == 30
    assert crispr.next_grid_point(t, "balanced_accuracy", cap=20) is None
    t2 = pd.concat([t, pd.DataFrame({"n": [40], "balanced_accuracy": [0.25]})])
    assert crispr.next_grid_point(t2, "balanced_accuracy", cap=500) is None


def test_choose_n_reports_every_scoring_and_excludes(model, plain_items):
    """choose_n on the real model: one row per (n, scoring), exactly one chosen row; the
    ranking skips excluded ids; the bottom of the ranking is its reverse."""
    scores = np.arange(int(model.cfg.n_layers) * int(model.cfg.d_mlp), dtype=float)[::-1].copy()
    attr = crispr.Attribution(scores={v: scores for v in crispr.VARIANTS}, per_instruction=scores[None],
                              n_ffn=scores.size, n_attn=0, d_mlp=int(model.cfg.d_mlp), n_heads=1, d_head=1,
                              n_layers=int(model.cfg.n_layers), instances=pd.DataFrame())
    n, table = crispr.choose_n(model, attr, plain_items.iloc[:1], crispr.INSTRUCTIONS[:1], [0, 1, 2], extend_to=2)
    assert set(table["scoring"]) == set(crispr.SCORINGS) and len(table) == 9
    assert table["chosen"].sum() == 1 and int(table.loc[table["chosen"], "n"].iloc[0]) == n
    assert (table.loc[table["chosen"], "scoring"] == "summed").all()
    top = [str(x) for x in crispr.top_neurons(attr, 3, exclude=["ffnL0N1"])]
    assert top == ["ffnL0N0", "ffnL0N2", "ffnL0N3"]
    last = int(model.cfg.n_layers) - 1
    d = int(model.cfg.d_mlp)
    assert [str(x) for x in crispr.bottom_neurons(attr, 2)] == [f"ffnL{last}N{d - 1}", f"ffnL{last}N{d - 2}"]
