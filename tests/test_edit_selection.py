"""Chapter 5's selection strategies: a hand-built additive toy, the batched scorer against the
slow reference on the real default model, and the joint guard on one key/value group."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_lib import edit_selection as es
from analysis_lib import reference
from analysis_lib.capability import arithmetic_items, held_out_arithmetic, neutral_texts
from analysis_lib.neurons import NeuronId, arch, sample_matched

#: The batched scorer runs the same float32 products in other batch shapes and from cached
#: residuals; it agrees with the one-prompt-at-a-time float64-softmax reference to ~1e-5 in b
#: (measured 1.1e-5 at most); a mask on the wrong row or column moves b by > 1e-3.
B_TOL = 5e-5
#: Pooled perplexity: float32 log-softmax summed per text vs float64 per text, ~1e-5 relative.
PPL_RTOL = 5e-5


# ----------------------------------------------------------------------------- a toy with exact arithmetic


class AdditiveToy:
    """b(w) = b0 + the sum of each masked neuron's shift; perplexity ratio = 1 + summed costs,
    plus an interaction for neurons that stand in for each other (cost only when all are masked);
    task (answer-perplexity) ratio = 1 + summed task costs."""

    def __init__(self, b0, shifts, costs=None, together=None, task_costs=None):
        self.b0 = np.asarray(b0, float)
        self.task_costs = task_costs or {}  # answer-perplexity cost of each neuron (task guard)
        self.shifts = {k: np.asarray(v, float) for k, v in shifts.items()}
        self.costs = costs or {}
        self.together = together or []  # [(set of neurons, cost when all are masked)]
        self.base: list[str] = []
        self.calls = 0

    def bias(self, extras):
        self.calls += 1
        return np.stack([self.b0 + sum((self.shifts[n] for n in self.base + list(e)), np.zeros_like(self.b0))
                         for e in extras])

    def ppl_ratio(self, extra):
        masked = set(self.base) | set(extra)
        r = 1.0 + sum(self.costs.get(n, 0.0) for n in masked)
        r += sum(c for group, c in self.together if group <= masked)
        return r

    def task_ratio(self, extra):
        masked = set(self.base) | set(extra)
        return 1.0 + sum(self.task_costs.get(n, 0.0) for n in masked)

    def commit(self, neurons):
        self.base = list(neurons)


# four words: three lean male (+1), one female (-1); mean |b| = 1.0
B0 = [1.0, 1.0, 1.0, -1.0]
# "push" neurons move every word by -0.5 towards "woman": alone each lowers mean |b| to
# (0.5*3 + 1.5)/4 = 0.75, but two give (0*3 + 2)/4 = 0.5 and three (0.5*3 + 2.5)/4 = 1.0.
# "fix" moves only the male words by -0.4: alone (0.6*3 + 1)/4 = 0.7, so it ranks first;
# "fix2" moves word 0 only by -0.2: alone (0.8 + 1 + 1 + 1)/4 = 0.95.
SHIFTS = {
    "fix": [-0.4, -0.4, -0.4, 0.0],
    "push1": [-0.5, -0.5, -0.5, -0.5],
    "push2": [-0.5, -0.5, -0.5, -0.5],
    "push3": [-0.5, -0.5, -0.5, -0.5],
    "fix2": [-0.2, 0.0, 0.0, 0.0],
}


def _ranking(toy):
    singles, _ = es.single_effects(toy, list(SHIFTS))
    pos = singles[singles.effect > 0].sort_values("effect", ascending=False, kind="stable")
    return singles, pos.neuron.tolist()


def test_single_effects_by_hand():
    toy = AdditiveToy(B0, SHIFTS)
    singles, B = _ranking(toy)[0], es.single_effects(toy, list(SHIFTS))[1]
    s = singles.set_index("neuron")
    assert s.loc["fix", "effect"] == pytest.approx(1.0 - 0.7)
    assert s.loc["push1", "effect"] == pytest.approx(1.0 - 0.75)
    assert s.loc["fix2", "effect"] == pytest.approx(0.2 / 4)
    # push: male words 1 -> 0.5 (drop 0.5), the female word 1 -> 1.5 (rise 0.5)
    assert s.loc["push1", "effect_male"] == pytest.approx(0.5)
    assert s.loc["push1", "effect_female"] == pytest.approx(-0.5)
    assert s.loc["push1", "shift"] == pytest.approx(-0.5)
    assert B.shape == (5, 4)


def test_one_shot_overshoots_and_joint_greedy_does_not():
    toy = AdditiveToy(B0, SHIFTS)
    singles, ranking = _ranking(toy)
    assert ranking == ["fix", "push1", "push2", "push3", "fix2"]
    one = es.one_shot(toy, ranking, k_max=4, guard_tol=0.01)
    assert one.neurons == ["fix", "push1", "push2", "push3"]
    # masked together: each male word 1 - 0.4 - 1.5 = -0.9, the female word -2.5 -> mean |b| 1.3 > 1.0
    toy.commit([])
    joint = toy.bias([one.neurons])[0]
    assert np.abs(joint).mean() == pytest.approx((0.9 * 3 + 2.5) / 4)
    assert np.abs(joint).mean() > np.abs(B0).mean()
    # the joint walk: fix (0.7), push1 -> b = [0.1, 0.1, 0.1, -1.5], mean |b| 0.45 < 0.7: kept;
    # push2 -> [-0.4, -0.4, -0.4, -2.0] = 0.8 > 0.45: refused; push3 the same; fix2 -> word 0 at
    # -0.1: (0.1 + 0.1 + 0.1 + 1.5)/4 = 0.45, equal, not lower: refused
    jg = es.joint_greedy(toy, ranking, k_max=4, guard_tol=0.01)
    assert jg.neurons == ["fix", "push1"]
    t = jg.trace.set_index("neuron")
    assert t.loc["push2", "reason"] == "bias not lower" and t.loc["push2", "mean_abs_b"] == pytest.approx(0.8)
    assert t.loc["fix2", "reason"] == "bias not lower"
    toy.commit([])
    assert np.abs(toy.bias([jg.neurons])[0]).mean() == pytest.approx(0.45)
    # sign-aware: only candidates that shrink |b| on both genders' words (none of the pushes;
    # fix and fix2 leave the female word alone: effect_female = 0, not > 0) -> nothing
    sa = es.sign_aware(toy, ranking, singles, k_max=4, guard_tol=0.01)
    assert sa.neurons == [] and sa.strategy == "sign_aware"


def test_sign_aware_keeps_neurons_that_move_words_towards_zero():
    shifts = {"push": [-0.5, -0.5, -0.5, -0.5], "squeeze": [-0.3, -0.3, -0.3, 0.3]}
    toy = AdditiveToy(B0, shifts)
    singles, _ = es.single_effects(toy, list(shifts))
    # push: male words 1 -> 0.5, the female word 1 -> 1.5 (filtered out); squeeze: every word 0.3
    # closer to zero (kept: mean |b| 1.0 -> 0.7, neither group rises)
    ranking = ["squeeze", "push"]
    sa = es.sign_aware(toy, ranking, singles, k_max=5, guard_tol=0.01)
    assert sa.neurons == ["squeeze"]


def test_joint_guard_catches_neurons_that_stand_in_for_each_other():
    # three heads of one key/value group: each alone costs nothing, all three together 42 %
    heads = {"h6": [-0.1] * 4, "h7": [-0.1] * 4, "h8": [-0.1] * 4}
    toy = AdditiveToy([1.0, 1.0, 1.0, 1.0], heads, together=[({"h6", "h7", "h8"}, 0.42)])
    assert all(toy.ppl_ratio([h]) == 1.0 for h in heads)  # a one-neuron guard passes each
    one = es.one_shot(toy, list(heads), k_max=3, guard_tol=0.01)
    assert one.neurons == ["h6", "h7"]
    assert one.trace.set_index("neuron").loc["h8", "reason"] == "guard"
    assert one.trace.set_index("neuron").loc["h8", "ppl_ratio"] == pytest.approx(1.42)


def test_task_guard_refuses_what_neutral_text_misses():
    # "fix" costs nothing on neutral text but +15 % on the sums' answers (as attnL0H6D51 does);
    # push1 costs +1 % there: within a 2 % task tolerance alone, and with fix2 (+1.5 %) together
    # 2.5 % > 2 %: refused jointly
    toy = AdditiveToy(B0, SHIFTS, task_costs={"fix": 0.15, "push1": 0.01, "fix2": 0.015})
    singles, ranking = _ranking(toy)
    assert es.joint_guard(toy, ["fix"], 0.01, None) == (1.0, pytest.approx(np.nan, nan_ok=True), None)
    assert es.joint_guard(toy, ["fix"], 0.01, 0.02)[1:] == (pytest.approx(1.15), "task guard")
    # without the task check the walk keeps fix + push1 (see above); with it fix is refused, then
    # push1 (0.75 < 1.0) kept at 1.01, push2 -> [0, 0, 0, -2] = 0.5 kept (task 1.01), push3 ->
    # [-0.5]*3, -2.5 = 1.0 not lower, fix2 -> word 0 at -0.2: 0.55 not lower
    jg = es.joint_greedy(toy, ranking, k_max=4, guard_tol=0.01, task_tol=0.02)
    t = jg.trace.set_index("neuron")
    assert t.loc["fix", "reason"] == "task guard" and t.loc["fix", "task_ratio"] == pytest.approx(1.15)
    assert jg.neurons == ["push1", "push2"]
    one = es.one_shot(toy, ranking, k_max=4, guard_tol=0.01, task_tol=0.02)
    # one-shot: fix refused; push1 (1.01), push2, push3 kept (1.01 each: pushes cost once);
    # fix2: 1.01 + 0.015 = 1.025 > 1.02: refused jointly
    assert one.neurons == ["push1", "push2", "push3"]
    assert one.trace.set_index("neuron").loc["fix2", "task_ratio"] == pytest.approx(1.025)
    assert one.trace.set_index("neuron").loc["fix2", "reason"] == "task guard"


def test_candidate_edits_validation_and_choice_by_hand():
    toy = AdditiveToy(B0, SHIFTS)
    singles, ranking = _ranking(toy)
    sels = {"one_shot": es.one_shot(toy, ranking, k_max=4, guard_tol=0.01),
            "joint_greedy": es.joint_greedy(toy, ranking, k_max=4, guard_tol=0.01)}
    edits = es.candidate_edits(sels, [1, 3, 10])
    # one-shot: K = 1, 3 and its whole selection (4; 10 not reached); joint: K = 1 and its whole selection (2)
    assert edits.edit.tolist() == ["one_shot K=1", "one_shot K=3", "one_shot K=4", "joint_greedy K=1",
                                   "joint_greedy K=2"]
    vt = es.validation_table(toy, edits)
    got = dict(zip(vt.edit, vt.val_mean_abs_b))
    # fix: 0.7; fix+push1+push2: [-0.4]*3, -2.0 -> 0.8; + push3: [-0.9]*3, -2.5 -> 1.3; fix+push1: 0.45
    assert got == pytest.approx({"one_shot K=1": 0.7, "one_shot K=3": 0.8, "one_shot K=4": 1.3,
                                 "joint_greedy K=1": 0.7, "joint_greedy K=2": 0.45})
    choice = es.choose_edit(vt, [1, 3, 10])
    assert choice == {"edit": "joint_greedy K=2", "strategy": "joint_greedy", "k": 2,
                      "val_mean_abs_b": pytest.approx(0.45), "at_edge": False}
    # ties go to the smaller edit; nothing below the original -> no edit
    vt2 = vt.copy()
    vt2["val_mean_abs_b"] = [0.5, 0.5, 0.9, 0.9, 0.9]
    vt2.attrs = vt.attrs
    assert es.choose_edit(vt2, [1, 3])["edit"] == "one_shot K=1"
    assert es.choose_edit(vt2.iloc[[1]], [1, 3])["at_edge"] == "largest"
    assert es.choose_edit(vt2.iloc[[0]], [1, 3])["at_edge"] is False  # one neuron: no smaller edit exists
    assert es.choose_edit(vt2.iloc[[1]], [3, 10])["at_edge"] == "smallest"
    assert es.choose_edit(vt2.iloc[[0]], [0, 1, 3])["at_edge"] is False
    vt2["val_mean_abs_b"] = 1.0
    assert es.choose_edit(vt2, [1, 3])["edit"] is None


def test_additivity_on_the_toy_is_exact():
    toy = AdditiveToy(B0, SHIFTS)
    singles, B = es.single_effects(toy, list(SHIFTS))
    add = es.additivity(toy, B, list(SHIFTS), ["fix", "push1", "push2"], [1, 3])
    assert add.k.tolist() == [1, 3]
    assert add.predicted_shift.tolist() == pytest.approx(add.joint_shift.tolist())
    # K = 3: shift (-0.4*3 + 0)/4 + 2 * -0.5 = -0.3 - 1.0
    assert add.joint_shift.iloc[1] == pytest.approx(-1.3)
    assert add.predicted_mean_abs_b.tolist() == pytest.approx(add.joint_mean_abs_b.tolist())


# ----------------------------------------------------------------------------- the real model


PROMPTS = ["The nurse is a", "The engineer is a", "The teacher is a", "The mechanic is a",
           "The secretary is a", "The pilot is a", "The babysitter is a"]


@pytest.fixture(scope="module")
def scorer(model):
    return es.SetScorer(model, PROMPTS, neutral_texts()[-2:])


def test_batched_scorer_equals_slow_reference(model, scorer):
    sets = [[], ["ffnL3N5"], ["attnL0H6D51", "attnL0H7D51"], ["ffnL20N100", "attnL25H2D3"], ["ffnL29N1"],
            ["ffnL11N1229"]]
    got = scorer.bias(sets)
    assert scorer.fast  # the batched path itself, not its fallback
    for s, b in zip(sets, got):
        want = reference.masked_bias(model, PROMPTS, s)
        assert np.abs(b - want).max() < B_TOL, s
    # the general neuron really moves b: the tolerance is far below a real effect
    assert np.abs(got[-1] - got[0]).max() > 100 * B_TOL
    texts = neutral_texts()[-2:]
    for s in sets[:4]:
        assert scorer.ppl_ratio(s) * scorer.ppl0 == pytest.approx(reference.masked_perplexity(model, texts, s),
                                                                  rel=PPL_RTOL)


def test_scorer_refuses_positional_neurons(scorer):
    # a positional attention neuron is a hook, not a weight column: masking its aggregated
    # column instead would be silently wrong
    with pytest.raises(es.ParameterError, match="positional"):
        scorer.bias([["attnL3H2D17P1"]])


def test_scorer_base_is_applied_and_restored(model, scorer):
    base = ["ffnL1N7", "attnL5H1D2"]
    scorer.commit(base)
    got = scorer.bias([["ffnL3N5"], []])
    scorer.commit([])
    assert np.abs(got[0] - reference.masked_bias(model, PROMPTS, base + ["ffnL3N5"])).max() < B_TOL
    assert np.abs(got[1] - reference.masked_bias(model, PROMPTS, base)).max() < B_TOL
    # two commits with no read between: the streams are recomputed once, when read, from the
    # shallower of the two changed layers (L20 first, then L2: reading from L20 would be wrong)
    scorer.bias([[]]), scorer.ppl_ratio([])  # both streams read: none stale
    assert scorer._bias.stale is None and scorer._guard.stale is None
    scorer.commit(["ffnL20N100"])
    scorer.commit(["ffnL20N100", "ffnL2N5"])
    assert scorer._bias.stale == 2 and scorer._guard.stale == 2
    got = scorer.bias([["ffnL3N5"]])[0]
    assert scorer._bias.stale is None and scorer._guard.stale == 2  # only the stream read is recomputed
    assert np.abs(got - reference.masked_bias(model, PROMPTS, ["ffnL20N100", "ffnL2N5", "ffnL3N5"])).max() < B_TOL
    scorer.commit([])
    # back on an empty base: the unedited numbers, and the model itself is unedited
    assert np.array_equal(scorer.bias([[]])[0], scorer.b0)
    assert np.abs(scorer.b0 - reference.masked_bias(model, PROMPTS, [])).max() < B_TOL


def test_joint_guard_catches_three_heads_of_one_kv_group(model):
    # attnL0H6D51, H7 and H8 read value dimension 51 of key/value group 2 of layer 0
    heads = ["attnL0H6D51", "attnL0H7D51", "attnL0H8D51"]
    assert es.shared_value_groups(model, heads + ["attnL0H5D51", "ffnL0N3"]) == [heads]
    texts = neutral_texts()[-4:]
    sc = es.SetScorer(model, PROMPTS[:2], texts)
    singles = [sc.ppl_ratio([h]) for h in heads]
    joint = sc.ppl_ratio(heads)
    assert max(singles) - 1 <= 0.01  # each passes a one-neuron 1 % guard
    assert joint - 1 > 0.2  # together they cost more than 20 %
    sel = es.one_shot(sc, heads, k_max=3, guard_tol=0.01)
    assert len(sel.neurons) < 3 and sel.trace.reason.tolist()[-1] == "guard"
    with_ref = reference.masked_perplexity(model, texts, heads) / reference.masked_perplexity(model, texts, [])
    assert joint == pytest.approx(with_ref, rel=PPL_RTOL)


def test_task_guard_batched_equals_reference_and_catches_the_layer0_heads(model):
    # held-out sums (none of them among the capability suite's 50 + 50) scored on their answers
    items = held_out_arithmetic(30, {"arithmetic_1digit": 50, "arithmetic_2digit": 50}, 0)
    suite = [arithmetic_items(50, d, 0) for d in (1, 2)]
    for d, used in zip((1, 2), suite):
        mine = items[items.task == f"arithmetic_{d}digit"]
        assert len(mine) == 30 and not set(zip(mine.a, mine.b)) & set(zip(used.a, used.b))
    pairs = list(zip(items.prompt, items.target))
    sc = es.SetScorer(model, PROMPTS[:2], neutral_texts()[-2:], pairs)
    assert sc.task_ppl0 == pytest.approx(reference.masked_answer_perplexity(model, pairs, []), rel=PPL_RTOL)
    sc.commit(["ffnL1N7"])
    for extra in (["attnL0H6D51"], ["ffnL20N100", "attnL0H8D51"]):
        want = reference.masked_answer_perplexity(model, pairs, ["ffnL1N7"] + extra)
        assert sc.task_ratio(extra) * sc.task_ppl0 == pytest.approx(want, rel=PPL_RTOL)
    sc.commit([])
    # the heads that cut one-digit addition: neutral text barely notices one of them (it even
    # falls), the sums' answers do
    r, t, refusal = es.joint_guard(sc, ["attnL0H6D51"], 0.01, 0.02)
    assert r - 1 <= 0.01 and t - 1 > 0.05 and refusal == "task guard"
    assert es.joint_guard(sc, ["ffnL20N100"], 0.01, 0.02)[2] is None


def test_sample_matched_keeps_number_kind_and_layer(model):
    edit = ["ffnL3N5", "ffnL3N6", "ffnL20N1", "attnL0H6D51", "attnL25H2D3", "attnL25H2D4"]
    a = sample_matched(model, edit, seed=4)
    assert a == sample_matched(model, edit, seed=4) and a != sample_matched(model, edit, seed=5)
    assert not set(a) & set(edit) and len(set(a)) == len(edit)

    def profile(ids):
        return sorted((NeuronId.parse(n).kind, NeuronId.parse(n).layer) for n in ids)

    assert profile(a) == profile(edit)
    ar = arch(model)
    for n in map(NeuronId.parse, a):
        assert (n.index < ar.d_mlp) if n.kind == "ffn" else (n.head < ar.n_heads and n.dim < ar.d_head)


def test_strategy_by_name_and_unknown():
    toy = AdditiveToy(B0, SHIFTS)
    singles, ranking = _ranking(toy)
    for name in es.STRATEGIES:
        assert es.select(name, toy, ranking, singles, k_max=2, guard_tol=0.01).strategy == name
    with pytest.raises(es.ParameterError, match="joint_greedy"):
        es.select("greedy", toy, ranking, singles, k_max=2, guard_tol=0.01)
    assert isinstance(es.select("one_shot", toy, ranking, singles, k_max=2, guard_tol=0.01).trace, pd.DataFrame)
