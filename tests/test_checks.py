"""The learner checks: each passes a right answer and fails a wrong one with one sentence."""

from __future__ import annotations

import math
import re

import numpy as np

from analysis_lib import checks


def _one_sentence(result) -> bool:
    return "\n" not in result.message and result.message.endswith(".")


def test_bias_score_check():
    assert checks.check_bias_score(lambda m, w: m - w)
    wrong = checks.check_bias_score(lambda m, w: w - m)
    assert not wrong and _one_sentence(wrong) and "reference gives" in wrong.message


def test_icat_check():
    assert checks.check_icat(lambda lms, ss: lms * min(ss, 100 - ss) / 50)
    wrong = checks.check_icat(lambda lms, ss: lms * ss / 100)
    assert not wrong and _one_sentence(wrong)
    crashing = checks.check_icat(lambda lms, ss: 1 / 0)
    assert not crashing and "ZeroDivisionError" in crashing.message


def test_entropy_difference_check():
    def right(lp_he, lp_she):
        q = 1 / (1 + np.exp(np.asarray(lp_she) - np.asarray(lp_he)))
        h = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
        return 1 - h.mean()

    def natural_log(lp_he, lp_she):
        q = 1 / (1 + np.exp(np.asarray(lp_she) - np.asarray(lp_he)))
        return 1 - (-(q * np.log(q) + (1 - q) * np.log(1 - q))).mean()

    assert checks.check_entropy_difference(right)
    wrong = checks.check_entropy_difference(natural_log)
    assert not wrong and _one_sentence(wrong)


def test_neuron_name_and_position_checks():
    def name(kind, layer, idx, dim=None, position=None):
        if kind == "ffn":
            return f"ffnL{layer}N{idx}"
        return f"attnL{layer}H{idx}D{dim}P{position}"

    assert checks.check_neuron_name(name)
    assert not checks.check_neuron_name(lambda kind, layer, idx, dim=None, position=None: f"{kind}_{layer}_{idx}")
    assert checks.check_start_position(lambda s: int(re.search(r"P(\d+)$", s).group(1)))
    wrong = checks.check_start_position(lambda s: int(re.search(r"D(\d+)", s).group(1)))
    assert not wrong and "expected" in wrong.message


def test_log_prob_increase_check(model):
    import torch

    from analysis_lib.models import encode, single_token_id
    from analysis_lib.neurons import final_norm_gain, hf_layer, lm_head

    def learner(model, prompt, target, layer, index):
        with torch.inference_mode():
            _, cache = model.run_with_cache(encode(model, prompt).tokens)
            x = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
            s = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, index] * hf_layer(model, layer).mlp.down_proj.weight[:, index]
            scale = cache["ln_final.hook_scale"][0, -1]
            t = single_token_id(model, target)

            def lp(v):
                return ((final_norm_gain(model) * v / scale) @ lm_head(model).weight.T).log_softmax(-1)[t]

            return (lp(x + s) - lp(x)).item()

    def recomputes_norm(model, prompt, target, layer, index):  # a classic mistake
        with torch.inference_mode():
            _, cache = model.run_with_cache(encode(model, prompt).tokens)
            x = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
            s = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, index] * hf_layer(model, layer).mlp.down_proj.weight[:, index]
            t = single_token_id(model, target)
            norm = model.original_model.model.norm

            def lp(v):
                return (norm(v) @ lm_head(model).weight.T).log_softmax(-1)[t]

            return (lp(x + s) - lp(x)).item()

    assert checks.check_log_prob_increase(learner, model, neuron="ffnL25N9")
    wrong = checks.check_log_prob_increase(recomputes_norm, model, neuron="ffnL25N9")
    assert not wrong and "held fixed" in wrong.message


def test_reference_matches_the_fast_engine(model):
    from analysis_lib.attribution import attribute
    from analysis_lib.reference import ffn_log_prob_increase

    top = attribute(model, "The nurse is a", " woman", top_k=3, kinds=("ffn_value",)).top("ffn_value", 3)
    for _, row in top.iterrows():
        ref = ffn_log_prob_increase(model, "The nurse is a", " woman", row.neuron.layer, row.neuron.index)
        assert math.isclose(row.score, ref, abs_tol=1e-5), row.id


def test_single_token_check(model):
    from analysis_lib.models import token_ids

    assert checks.check_single_token(lambda m, text: len(token_ids(m, text)) == 1, model)
    counts_start = checks.check_single_token(lambda m, text: len(token_ids(m, text)) + 1 == 1, model)
    assert not counts_start and _one_sentence(counts_start) and "start token" in counts_start.message
    splits_on_space = checks.check_single_token(lambda m, text: len(text.split()) == 1, model)
    assert not splits_on_space and "saxophone" in splits_on_space.message


def test_same_word_check():
    from analysis_lib.commonwords import word_variants

    assert checks.check_same_word(lambda w, t: bool(word_variants(w) & word_variants(t)))
    wrong = checks.check_same_word(lambda w, t: w.lower() == t.lower())
    assert not wrong and _one_sentence(wrong) and "Nurses" in wrong.message
    substring = checks.check_same_word(lambda w, t: w.lower() in t.lower())
    assert not substring


def test_empirical_p_check():
    assert checks.check_empirical_p(lambda obs, r: (1 + sum(x >= obs for x in r)) / (1 + len(r)))
    no_plus_one = checks.check_empirical_p(lambda obs, r: sum(x >= obs for x in r) / len(r))
    assert not no_plus_one and "add 1" in no_plus_one.message
    strict = checks.check_empirical_p(lambda obs, r: (1 + sum(x > obs for x in r)) / (1 + len(r)))
    assert not strict and _one_sentence(strict)


def test_masked_logits_check(model):
    import torch

    from analysis_lib.models import encode

    def right(m, prompt, neurons):
        def zero(index):
            def hook(act, hook):
                act[..., index] = 0.0
                return act

            return hook

        hooks = [(f"blocks.{layer}.mlp.hook_post", zero(index)) for layer, index in neurons]
        with torch.inference_mode(), m.hooks(fwd_hooks=hooks):
            return m(encode(m, prompt).tokens)[0, -1]

    def unmasked(m, prompt, neurons):
        with torch.inference_mode():
            return m(encode(m, prompt).tokens)[0, -1]

    assert checks.check_masked_logits(right, model)
    wrong = checks.check_masked_logits(unmasked, model)
    assert not wrong and "nothing was masked" in wrong.message

    def leaks(m, prompt, neurons):  # edits the weights and never restores them
        w = m.original_model.model.layers[11].mlp.down_proj.weight
        saved = w.detach().clone()
        with torch.no_grad():
            for layer, index in neurons:
                m.original_model.model.layers[layer].mlp.down_proj.weight[:, index] = 0.0
        out = unmasked(m, prompt, neurons)
        leaks.restore = lambda: w.data.copy_(saved)
        return out

    try:
        leaked = checks.check_masked_logits(leaks, model)
    finally:
        leaks.restore()
    assert not leaked and "changed" in leaked.message


def test_relative_reduction_check():
    assert checks.check_relative_reduction(lambda b, a, ideal=0.0: 1 - abs(a - ideal) / abs(b - ideal))
    no_ideal = checks.check_relative_reduction(lambda b, a, ideal=0.0: 1 - abs(a) / abs(b))
    assert not no_ideal and _one_sentence(no_ideal)


def test_predict_joint_check():
    assert checks.check_predict_joint(lambda b0, a, b: b0 + (a - b0) + (b - b0))
    # forgetting to subtract b0 once double-counts the unedited lean
    wrong = checks.check_predict_joint(lambda b0, a, b: a + b)
    assert not wrong and "expected" in wrong.message and _one_sentence(wrong)
    assert not checks.check_predict_joint(lambda b0, a, b: "b")


def test_kv_group_check():
    assert checks.check_kv_group(lambda h, n, kv: h // (n // kv))
    wrong = checks.check_kv_group(lambda h, n, kv: h % kv)  # interleaved instead of blocked
    assert not wrong and "expected" in wrong.message


def test_bbq_bias_scores_check():
    from analysis_lib.metrics import bbq_scores

    def right(*args):
        s = bbq_scores(*args)
        return s["s_dis"], s["s_amb"]

    assert checks.check_bbq_bias_scores(right)
    unscaled = checks.check_bbq_bias_scores(lambda *a: (right(*a)[0], right(*a)[1] / (1 - bbq_scores(*a)["accuracy_ambig"])))
    assert not unscaled and "1 − ambiguous accuracy" in unscaled.message
    swapped = checks.check_bbq_bias_scores(lambda *a: right(*a)[::-1])
    assert not swapped and "s_DIS" in swapped.message


def test_crispr_score_check():
    def right(act, gb, gg, alpha, lam):
        return alpha * (act * gb).max(0) - lam * np.maximum(0, alpha * (act * gg).max(0))

    def mean_tokens(act, gb, gg, alpha, lam):
        return alpha * (act * gb).mean(0) - lam * np.maximum(0, alpha * (act * gg).mean(0))

    assert checks.check_crispr_score(right)
    wrong = checks.check_crispr_score(mean_tokens)
    assert not wrong and "maximum over tokens" in wrong.message
    no_clamp = checks.check_crispr_score(lambda a, gb, gg, al, lam: al * (a * gb).max(0) - lam * al * (a * gg).max(0))
    assert not no_clamp and _one_sentence(no_clamp)
