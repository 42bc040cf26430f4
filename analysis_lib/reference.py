"""Slow, literal reference implementations for teaching and for the learner checks.

These follow the formulas of method_spec §1.1 one neuron at a time, with no batching or
bounds, so a reader can compare them line by line with the paper. The fast engine in
:mod:`analysis_lib.attribution` is tested against :func:`dense_attribution`, a dense version of
the same formulas that shares no code with it (it reads the bridge's cache and the Hugging Face
weights directly); ``bench/gpu_check.py`` runs the same comparison on a GPU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .commonwords import GENDER_TARGETS
from .editing import mask_neurons
from .models import encode, single_token_id, token_ids
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


# ----------------------------------------------------------------------------- dense reference


def _log_softmax_at(z: torch.Tensor, t: int) -> torch.Tensor:
    """log_softmax(z)[..., t] over the full vocabulary (max-shifted, float64 sum).

    Works in place on ``z`` (the caller's scratch rows): torch's own log_softmax and
    out-of-place temporaries of 16 x 49152 rows cost several times more on CPU.
    """
    mx = z.amax(-1, keepdim=True)
    zt = z[..., t] - mx[..., 0]
    return zt - torch.log(z.sub_(mx).exp_().sum(-1, dtype=torch.float64))


def _lp_increase(z0: torch.Tensor, dz: torch.Tensor, t: int) -> torch.Tensor:
    """LP_t(z0 + dz) - LP_t(z0) for rows of dz, the authors' way (full log-softmax of z0 + dz).

    ``dz`` is overwritten.
    """
    return _log_softmax_at(dz.add_(z0), t) - _log_softmax_at(z0.clone(), t)


def dense_attribution(model, cases: Sequence[tuple[str, str]], *, chunk: int = 16,
                      n_query: int = 30) -> list[dict]:
    """Every FFN value and attention value neuron of every prompt, scored densely.

    Each neuron's subvalue is added to the residual stream it writes to and read out through
    the full vocabulary (in chunks of ``chunk`` neurons, as the authors' notebook does); the score
    is the exact log-probability increase of the target at the last position, with the final
    norm's scale from the real forward pass held fixed. FFN query scores come from the dense
    top-``n_query`` attention value neurons (method_spec §1.1). Llama-style blocks only (the
    final norm is ``weight * x / rms``): the default model. Tensors are created on the model's
    device; the results are returned on the CPU.

    Args:
        model: a loaded bridge (:func:`analysis_lib.models.load_model`).
        cases: ``(prompt, target)`` pairs; each target must be one token.

    Returns:
        One dict per prompt: ``ffn`` [L, d_mlp] and ``attn`` [L, H, d_head, T] exact scores,
        ``query`` [L, d_mlp] (float64) and ``t`` (the target's token id).
    """
    hf = model.original_model
    dev = next(hf.parameters()).device
    W = hf.lm_head.weight.detach()
    b = hf.lm_head.bias
    b = torch.zeros(W.shape[0], device=dev) if b is None else b.detach()
    g = hf.model.norm.weight.detach()  # Llama RMSNorm: weight * x / rms (checked in a test)
    L = model.cfg.n_layers
    n_heads, n_kv = model.cfg.n_heads, model.cfg.n_key_value_heads
    dh, dm = model.cfg.d_head, model.cfg.d_mlp
    keep = ("resid_pre", "resid_mid", "mlp.hook_post", "hook_pattern", "attn.hook_v", "ln_final.hook_scale")
    runs = []
    with torch.inference_mode():
        for prompt, target in cases:
            enc = encode(model, prompt)
            _, cache = model.run_with_cache(enc.tokens)
            runs.append(dict(t=single_token_id(model, target), T=enc.tokens.shape[1],
                             cache={k: v[0] for k, v in cache.items() if any(s in k for s in keep)}))
        out = [dict(ffn=torch.zeros(L, dm, device=dev), attn=torch.zeros(L, n_heads, dh, r["T"], device=dev))
               for r in runs]
        for l in range(L):
            layer = hf.model.layers[l]
            down = layer.mlp.down_proj.weight.detach()  # [d_model, d_mlp]
            o = layer.self_attn.o_proj.weight.detach()  # [d_model, H*dh]
            P_ffn = (down.T * g) @ W.T  # [d_mlp, V]: each FFN neuron's output vector, read out
            P_attn = (o.T * g) @ W.T  # [H*dh, V]
            for r, res in zip(runs, out):
                c, t = r["cache"], r["t"]
                scale = c["ln_final.hook_scale"][-1, 0]
                # FFN value neurons: subvalue m_i * w_i on top of resid_mid[l]
                z0 = (g * c[f"blocks.{l}.hook_resid_mid"][-1] / scale) @ W.T + b
                m = c[f"blocks.{l}.mlp.hook_post"][-1]
                for s in range(0, dm, chunk):
                    dz = m[s : s + chunk, None] * P_ffn[s : s + chunk] / scale
                    res["ffn"][l, s : s + chunk] = _lp_increase(z0, dz, t)
                # attention value neurons: alpha[h, -1, p] * v[p, h // group, j] * W_O row (h, j)
                z0 = (g * c[f"blocks.{l}.hook_resid_pre"][-1] / scale) @ W.T + b
                alpha = c[f"blocks.{l}.attn.hook_pattern"][:, -1, :]  # [H, T]
                v = c[f"blocks.{l}.attn.hook_v"]  # [T, n_kv, dh]
                T = r["T"]
                for h in range(n_heads):
                    kv = h // (n_heads // n_kv)
                    coef = alpha[h][None, :] * v[:, kv, :].T  # [dh, T]
                    rows = P_attn[h * dh : (h + 1) * dh]  # [dh, V]
                    flat_coef = coef.reshape(-1) / scale  # row-major (j, p)
                    for s in range(0, dh * T, chunk):
                        e = min(s + chunk, dh * T)
                        j = torch.arange(s, e, device=dev) // T
                        dz = flat_coef[s:e, None] * rows[j]
                        res["attn"][l, h].view(-1)[s:e] = _lp_increase(z0, dz, t)
        # query FFN neurons from the dense top attention value neurons
        for r, res in zip(runs, out):
            c = r["cache"]
            flat = res["attn"].flatten()
            top = torch.topk(flat, n_query).indices
            Q = torch.zeros(L, dm, dtype=torch.float64, device=dev)
            for ix in top.tolist():
                La, h, j, p = np.unravel_index(ix, res["attn"].shape)
                kv = h // (n_heads // n_kv)
                layer = hf.model.layers[int(La)]
                key = layer.self_attn.v_proj.weight.detach()[kv * dh + j] * layer.input_layernorm.weight.detach()
                D = c[f"blocks.{La}.hook_resid_pre"][p] @ key
                for l in range(int(La)):
                    down = hf.model.layers[l].mlp.down_proj.weight.detach()
                    ci = c[f"blocks.{l}.mlp.hook_post"][p] * (key @ down) / D
                    Q[l] += ci.double() * float(flat[ix])
            res["query"] = Q
            res["t"] = r["t"]
    return [{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in res.items()} for res in out]


def flat_index(neuron, shape: Sequence[int]) -> int:
    """Index of a :class:`~analysis_lib.neurons.NeuronId` in a flattened dense score tensor
    (``ffn`` [L, d_mlp] or ``attn`` [L, H, d_head, T] of :func:`dense_attribution`)."""
    if neuron.kind == "ffn":
        return int(np.ravel_multi_index((neuron.layer, neuron.index), shape))
    return int(np.ravel_multi_index((neuron.layer, neuron.head, neuron.dim, neuron.position), shape))


# ----------------------------------------------------------------------------- chapter 5 references


def _softcapped(model, logits: torch.Tensor) -> torch.Tensor:
    """Gemma's final logit soft-capping ``cap * tanh(z / cap)`` where the config sets it."""
    cap = getattr(model.original_model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def masked_bias(model, prompts: Sequence[str], neurons: Sequence[str]) -> np.ndarray:
    """``b = log p(man) - log p(woman)`` (:data:`analysis_lib.commonwords.GENDER_TARGETS`) per
    prompt with ``neurons`` zero-masked, one full forward pass per prompt (no batching, no cached
    layers): the reference for :class:`analysis_lib.edit_selection.SetScorer`."""
    ids = [single_token_id(model, t) for t in GENDER_TARGETS]
    out = np.empty(len(prompts))
    with mask_neurons(model, list(neurons)), torch.inference_mode():
        for i, p in enumerate(prompts):
            tokens = encode(model, p).tokens
            hidden = model.original_model.model(input_ids=tokens).last_hidden_state[0, -1]
            lp = _softcapped(model, model.original_model.lm_head(hidden)).double().log_softmax(-1)
            out[i] = float(lp[ids[0]] - lp[ids[1]])
    return out


def masked_perplexity(model, texts: Sequence[str], neurons: Sequence[str]) -> float:
    """Pooled perplexity of ``texts`` (start token prepended) with ``neurons`` zero-masked: the
    summed next-token negative log-likelihood over all texts divided by their token count, one
    text per forward pass."""
    total, count = 0.0, 0
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    with mask_neurons(model, list(neurons)), torch.inference_mode():
        for t in texts:
            ids = torch.tensor([prefix + token_ids(model, t)])
            hidden = model.original_model.model(input_ids=ids).last_hidden_state[0, :-1]
            lp = _softcapped(model, model.original_model.lm_head(hidden)).double().log_softmax(-1)
            total -= float(lp.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
    return float(np.exp(total / count))


def masked_answer_perplexity(model, items: Sequence[tuple[str, str]], neurons: Sequence[str]) -> float:
    """Pooled perplexity of the answers of ``(context, answer)`` items with ``neurons``
    zero-masked: the context (start token prepended) is tokenized on its own, the answer's tokens
    appended, and only those are scored; one item per forward pass, float64 log-softmax."""
    total, count = 0.0, 0
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    with mask_neurons(model, list(neurons)), torch.inference_mode():
        for context, answer in items:
            ctx, ans = prefix + token_ids(model, context), token_ids(model, answer)
            ids = torch.tensor([ctx + ans])
            hidden = model.original_model.model(input_ids=ids).last_hidden_state[0, len(ctx) - 1 : -1]
            lp = _softcapped(model, model.original_model.lm_head(hidden)).double().log_softmax(-1)
            total -= float(lp.gather(-1, torch.tensor(ans)[:, None]).sum())
            count += len(ans)
    return float(np.exp(total / count))
