"""Slow, literal reference implementations for teaching and for the learner checks.

These follow the formulas of method_spec §1.1 one neuron at a time, with no batching or
bounds, so a reader can compare them line by line with the paper. The fast engine in
:mod:`analysis_lib.attribution` is tested against a dense version of the same formulas.
"""

from __future__ import annotations

import torch

from .models import encode, single_token_id
from .neurons import final_norm_gain, hf_layer, lm_head


@torch.inference_mode()
def ffn_log_prob_increase(model, prompt: str, target: str, layer: int, index: int) -> float:
    """Log-probability increase of the target from one FFN neuron's subvalue (Llama-style blocks).

    ``Imp = LP_t(x_mid + m_i w_i) - LP_t(x_mid)`` at the last position, where ``x_mid`` is the
    residual before FFN layer ``layer``, ``m_i`` the neuron's coefficient, ``w_i`` its output
    row, and ``LP_t(v) = log_softmax(g ⊙ v / scale · W_U)[t]`` with ``scale`` the final norm's
    RMS from the real forward pass, held fixed.
    """
    tokens = encode(model, prompt).tokens
    t = single_token_id(model, target)
    _, cache = model.run_with_cache(tokens)
    x_mid = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
    m = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, index]
    w = hf_layer(model, layer).mlp.down_proj.weight[:, index]
    scale = cache["ln_final.hook_scale"][0, -1]
    gain = final_norm_gain(model)
    W_U = lm_head(model).weight

    def log_prob(v: torch.Tensor) -> torch.Tensor:
        return ((gain * v / scale) @ W_U.T).log_softmax(-1)[t]

    return float(log_prob(x_mid + m * w) - log_prob(x_mid))
