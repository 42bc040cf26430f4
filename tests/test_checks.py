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
