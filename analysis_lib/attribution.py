"""Neuron attribution by the exact log-probability increase (method_spec §1.1-1.3, §2.1-2.2).

**Readout.** For a prompt with target token t, every vector v in the residual stream is read out
with the final norm's scale *held fixed* at its value in the real forward pass::

    N(v)    = g_final * v / rms(x_final[T-1])        # rms = ln_final.hook_scale[T-1]
    z(v)    = N(v) @ lm_head.weight.T  (+ lm_head.bias)
    LP_t(v) = log_softmax(z(v))[t]
    Imp(s | x) = LP_t(x + s) - LP_t(x)

``ln_final.hook_scale`` of the bridge is ``sqrt(mean(x**2) + eps)`` (not its inverse; checked in
the tests), and ``g_final`` is the *effective* gain (``weight`` for Llama/Qwen, ``1 + weight``
for Gemma, see :func:`analysis_lib.neurons.final_norm_gain`): the bridge keeps raw HF weights,
so the gain is not folded into the unembedding.

**Neurons** (the subvalue s, always at the last position T-1):

* FFN value neuron (l, i): ``s = m[l, T-1, i] * down_proj.weight[:, i]`` with
  ``m = act(gate(x)) * up(x)`` (bridge hook ``blocks.l.mlp.hook_post``), baseline
  ``x = resid_mid[l][T-1]``. The subvalues of a layer sum to its MLP output.
* attention value neuron (l, h, j, p): ``s = alpha[l, h, T-1, p] * v[l, p, g(h), j] *
  o_proj.weight[:, h*d_head + j]`` with ``g(h) = h // (n_heads / n_kv_heads)``; baseline
  ``x = resid_pre[l][T-1]``. ``v`` includes the v_proj bias (Qwen2), so the subvalues of a layer
  sum to its attention output (minus an o_proj bias, if any).
* FFN query neuron (l, i): for each of the top-30 attention value neurons a = (L, h, j, p) with
  exact score s_a, the share of a's value activation written by FFN neuron (l < L) at the
  source position p: ``c_i(a) = m[l, p, i] * <down[:, i], k_a> / (rms_in[L, p] * v_a)`` with key
  ``k_a = v_proj.weight[g(h)*d_head + j] * input_layernorm gain``; ``Q(l, i) = sum_a c_i(a) s_a``.
  Without a v_proj bias the denominator ``rms_in * v_a`` equals the spec's ``<x_pre[L][p], k_a>``;
  with a bias (Qwen2) ``v_a = <x, k_a>/rms_in + b``: the bias keeps its own share
  ``b / v_a`` and the FFN neurons' shares are fractions of the full value (documented choice).

**Sandwich norms** (Gemma 3). The block adds ``post_norm(out) = g_post * out / rms(out)`` to
the residual, which is not linear in ``out``. We linearize with the *actual* rms of the real
output at that position (bridge hooks ``ln1_post.hook_scale`` / ``ln2_post.hook_scale``):
``subvalue_i = g_post * m_i w_i / rms(mlp_out[T-1])``, so the subvalues still sum exactly to the
block's contribution, but a neuron's subvalue is its share under the real normalization (an
approximation of what the neuron alone would add). Final logit soft-capping (Gemma 2) makes the
readout non-convex; the fast path then raises ``NotImplementedError``.

**Exact top-k fast (the "bound then certify" scheme).** With ``d = N(s) @ W_U.T`` and
``p = softmax(z0)``, ``Imp = d_t - log E_p[exp(d)]``. By Jensen, ``Imp <= d_t - p.d`` (the
first-order score, an upper bound). With ``d`` in ``[d_min, d_max]`` the two-point bound
``log E_p[exp d] <= log(theta e^{d_max} + (1-theta) e^{d_min})``, ``theta = (p.d - d_min) /
(d_max - d_min)``, gives a lower bound (tighter than both ``d_t - max d`` and Hoeffding).
Both factorize: ``p.d = s . (g * (W_U.T p)) / rms`` needs one vector per baseline (all neurons
of a layer share it), and ``d_max, d_min`` are the neuron's vocabulary extrema (precomputed
once per model, cached on disk). Selection (:class:`_Select`) takes two rounds: round 1 scores
the k + k/25 best neurons by the first-order score exactly; round 2 scores every other neuron
whose bound can still reach the k-th best exact score, after tightening those few bounds on the
head of the baseline distribution (the 512, then 4096 most probable tokens exactly, the tail
by Jensen / the two-point bound: :meth:`_Scorer.refine`; a baseline's head is only built when
at least ``REFINE_MIN`` candidates share it, since building it costs about as much as a few
exact rescorings). The returned top-k and bottom-k are
then certified: every unscored neuron's bound is worse than the k-th exact score (up to
``TOL`` = 2e-5, which covers float32 rounding of the bounds). Exact scores are computed as
``d_t - log(sum_v p_v exp(d_v))`` with float64 accumulation (about 1e-7 from a float64
reference). The dataset-level ranking (:func:`dataset_attribution`) sums per-prompt bounds
the same way and tightens only the units that can still reach the k-th summed lower bound.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .errors import NeuronIdError, StudyError, TokenizationError
from .models import DEFAULT_MODEL, cache_root, check_finite, encode, load_model, single_token_id, token_ids
from .neurons import (
    Arch,
    NeuronId,
    arch,
    as_neuron,
    final_norm_gain,
    layer_weights,
    model_cache,
    output_vector,
    unembed,
    weights_version,
)

KINDS = ("ffn_value", "attn_value", "ffn_query")
N_QUERY_ATTN = 30  # top attention value neurons used for query FFN neurons (authors' notebook)
DEFAULT_THREADS = 2  # see bench/README.md "Attribution"
TOL = 2e-5  # numerical slack of the certification (fp32 bounds vs exact scores)
POSITION_CATEGORIES = ("start", "word", "last", "other")
CARD_PROMPTS = (
    "The nurse is a",
    "The capital of France is",
    "3+5=",
    "She went to the market and bought",
    "After a long day at work, the engineer said that",
)


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)`` (``None``: leave as is), then restore."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- forward data


def _hook_names(a: Arch) -> set[str]:
    names = {"ln_final.hook_scale"}
    for l in range(a.n_layers):
        names |= {
            f"blocks.{l}.hook_resid_pre",
            f"blocks.{l}.hook_resid_mid",
            f"blocks.{l}.mlp.hook_post",
            f"blocks.{l}.attn.hook_pattern",
            f"blocks.{l}.attn.hook_v",
            f"blocks.{l}.ln1.hook_scale",
        }
        if a.sandwich:
            names |= {f"blocks.{l}.ln1_post.hook_scale", f"blocks.{l}.ln2_post.hook_scale"}
    names.add(f"blocks.{a.n_layers - 1}.hook_resid_post")
    return names


@dataclass
class PromptData:
    """What one prompt's forward pass leaves for attribution (all float32, one prompt).

    Attributes:
        token_ids: ``[T]`` ids, start token at position 0 when the model uses one.
        target_id: the target token.
        scale: ``rms(x_final[T-1])`` (bridge ``ln_final.hook_scale``).
        x_pre, x_mid: ``[L, d_model]`` residual before attention / before the MLP, last position.
        x_final: ``[d_model]`` residual after the last block, last position.
        m: ``[L, T, d_mlp]`` FFN coefficients ``act(gate)*up`` at every position.
        alpha: ``[L, n_heads, T]`` attention weights of the last query.
        v: ``[L, T, n_kv, d_head]`` value vectors (bias included).
        rms_in: ``[L, T]`` rms of the pre-attention norm input (``ln1.hook_scale``).
        r_attn, r_mlp: ``[L, T]`` rms of the raw attention / MLP outputs (sandwich norms only).
        logits: ``[d_vocab]`` the model's logits at the last position.
    """

    token_ids: Int[Tensor, "T"]
    target_id: int
    scale: Float[Tensor, ""]
    x_pre: Float[Tensor, "L d_model"]
    x_mid: Float[Tensor, "L d_model"]
    x_final: Float[Tensor, "d_model"]
    m: Float[Tensor, "L T d_mlp"]
    alpha: Float[Tensor, "L n_heads T"]
    v: Float[Tensor, "L T n_kv d_head"]
    rms_in: Float[Tensor, "L T"]
    r_attn: Float[Tensor, "L T"] | None
    r_mlp: Float[Tensor, "L T"] | None
    logits: Float[Tensor, "d_vocab"]

    @property
    def T(self) -> int:
        return int(self.token_ids.shape[0])


def _resolve_target(model, target, logits_last: Tensor) -> int:
    if target is None:
        return int(logits_last.argmax())
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        t = int(target)
        if not 0 <= t < logits_last.shape[-1]:
            raise TokenizationError(f"Target id {t} is outside the vocabulary (0..{logits_last.shape[-1] - 1}).")
        return t
    return single_token_id(model, str(target))


def forward_data(
    model,
    prompts: str | Sequence[str],
    targets: Any = None,
    *,
    start: bool = True,
) -> list[PromptData]:
    """Run prompts (batched, right-padded) and keep what attribution needs.

    Args:
        model: a loaded bridge (float32).
        prompts: one text or several (the model's start token is prepended when ``start``).
        targets: one target per prompt (a single-token string such as a token of
            :data:`analysis_lib.commonwords.GENDER_TARGETS`, a token id, or ``None`` for the
            model's top-1 prediction), or one target for all.
        start: prepend the model's start token.
    """
    single = isinstance(prompts, str)
    texts = [prompts] if single else list(prompts)
    if isinstance(targets, (list, tuple)):
        if len(targets) != len(texts):
            raise StudyError(f"{len(texts)} prompts but {len(targets)} targets.")
        tlist = list(targets)
    else:
        tlist = [targets] * len(texts)
    a = arch(model)
    if a.softcap is not None:
        raise NotImplementedError(
            f"This model soft-caps its final logits (final_logit_softcapping={a.softcap}): the "
            "log-probability readout is then not convex in the logits, so the certified fast "
            "attribution does not apply. Use a model without logit soft-capping."
        )
    p = next(model.original_model.parameters())
    if p.dtype != torch.float32:
        raise StudyError(f"Attribution needs a float32 model (method_spec §6 A10); this one is {p.dtype}.")
    enc = encode(model, texts, start=start)
    names = _hook_names(a)
    with torch.inference_mode():
        logits, cache = model.run_with_cache(enc.tokens, names_filter=lambda n: n in names)
    for b, n in enumerate(enc.lengths.tolist()):
        check_finite(logits[b, :n], model, "the attribution's forward pass")
    L = a.n_layers
    out = []
    for b, n in enumerate(enc.lengths.tolist()):
        last = n - 1

        def st(fmt, pos=slice(None)):
            return torch.stack([cache[fmt.format(l)][b, pos] for l in range(L)]).float()

        lg = logits[b, last].float()
        sandwich = a.sandwich
        out.append(
            PromptData(
                token_ids=enc.tokens[b, :n].clone(),
                target_id=_resolve_target(model, tlist[b], lg),
                scale=cache["ln_final.hook_scale"][b, last, 0].float(),
                x_pre=st("blocks.{}.hook_resid_pre", last),
                x_mid=st("blocks.{}.hook_resid_mid", last),
                x_final=cache[f"blocks.{L - 1}.hook_resid_post"][b, last].float(),
                m=st("blocks.{}.mlp.hook_post", slice(0, n)),
                alpha=torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][b, :, last, :n] for l in range(L)]).float(),
                v=st("blocks.{}.attn.hook_v", slice(0, n)),
                rms_in=st("blocks.{}.ln1.hook_scale", slice(0, n))[..., 0],
                r_attn=st("blocks.{}.ln1_post.hook_scale", slice(0, n))[..., 0] if sandwich else None,
                r_mlp=st("blocks.{}.ln2_post.hook_scale", slice(0, n))[..., 0] if sandwich else None,
                logits=lg,
            )
        )
    return out


# ----------------------------------------------------------------------------- readout & subvalues


def readout(
    model, data: PromptData, vectors: Float[Tensor, "... d_model"], *, bias: bool = True
) -> Float[Tensor, "... d_vocab"]:
    """Logits of residual vectors with the final norm scale fixed: ``N(v) @ W_U.T (+ b)``."""
    W, b = unembed(model)
    z = (vectors * (final_norm_gain(model) / data.scale)) @ W.T
    return z + b if (bias and b is not None) else z


def ffn_subvalues(model, data: PromptData, layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """The vectors FFN neurons of ``layer`` add to the residual at the last position."""
    w = layer_weights(model, layer)
    s = data.m[layer, -1][:, None] * w.down.T
    if w.post_mlp is not None:
        s = s * (w.post_mlp / data.r_mlp[layer, -1])
    return s


def attn_subvalues(model, data: PromptData, layer: int) -> Float[Tensor, "n_heads d_head T d_model"]:
    """The vectors attention value neurons (h, j, p) of ``layer`` add at the last position."""
    a = arch(model)
    w = layer_weights(model, layer)
    kappa = _attn_coef(a, data, layer)  # [H, dh, T]
    rows = w.o.T.reshape(a.n_heads, a.d_head, a.d_model)
    s = kappa[..., None] * rows[:, :, None, :]
    if w.post_attn is not None:
        s = s * (w.post_attn / data.r_attn[layer, -1])
    return s


def _attn_coef(a: Arch, data: PromptData, layer: int) -> Float[Tensor, "n_heads d_head T"]:
    """alpha[h, T-1, p] * v[p, g(h), j] as [H, d_head, T]."""
    g = torch.arange(a.n_heads, device=data.v.device) // a.group
    v = data.v[layer][:, g, :]  # [T, H, dh]
    return data.alpha[layer][:, None, :] * v.permute(1, 2, 0)


# ----------------------------------------------------------------------------- vocabulary extrema


def _fingerprint(model) -> str:
    """A content hash of the weights the extrema depend on (for the disk cache)."""
    a = arch(model)
    W, _ = unembed(model)
    parts = [final_norm_gain(model), W]
    for l in range(a.n_layers):
        w = layer_weights(model, l)
        parts += [w.down, w.o] + [t for t in (w.post_mlp, w.post_attn) if t is not None]
    h = hashlib.sha256(repr((getattr(model, "study_name", ""), a)).encode())
    for t in parts:
        h.update(repr(tuple(t.shape)).encode())
        h.update(np.float64(t.sum(dtype=torch.float64).item()).tobytes())
        h.update(np.float64(torch.linalg.vector_norm(t, dtype=torch.float64).item()).tobytes())
    return h.hexdigest()[:20]


def vocab_extrema(model, *, progress: bool = False, disk: bool = True) -> dict[str, Tensor]:
    """Per-neuron max and min over the vocabulary of ``(w * g_final) @ W_U.T``.

    ``w`` is the neuron's output vector (:func:`analysis_lib.neurons.output_vector`). Computed
    once per model (about 30 s for SmolLM2 on 2 CPU cores), kept on the model object and cached
    on disk under ``<cache>/derived/`` keyed by a content hash of the weights.

    Returns:
        ``{"ffn_max", "ffn_min": [L, d_mlp], "attn_max", "attn_min": [L, n_heads*d_head]}``.
    """
    mc = model_cache(model)
    ver = weights_version(model)
    hit = mc.get("extrema")
    if hit is not None and hit[0] == ver:
        return hit[1]
    fp = _fingerprint(model)
    path = cache_root() / "derived" / f"vocab-extrema-{fp}.pt"
    ext = None
    if disk and path.is_file():
        try:
            ext = torch.load(path, map_location="cpu")
        except Exception:  # a damaged file is rebuilt
            ext = None
    if ext is None:
        ext = _compute_extrema(model, progress)
        if disk:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".extrema-", suffix=".pt")
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(ext, fh)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    dev = next(model.original_model.parameters()).device
    ext = {k: v.to(dev) for k, v in ext.items()}
    mc["extrema"] = (ver, ext)
    return ext


def _compute_extrema(model, progress: bool) -> dict[str, Tensor]:
    a = arch(model)
    W, _ = unembed(model)
    g = final_norm_gain(model)
    out = {k: torch.empty(a.n_layers, n) for k, n in
           [("ffn_max", a.d_mlp), ("ffn_min", a.d_mlp), ("attn_max", a.n_heads * a.d_head), ("attn_min", a.n_heads * a.d_head)]}
    chunk = max(16, int(2**25 // W.shape[0]))  # ~128 MB of logits per chunk
    with torch.inference_mode():
        for l in tqdm(range(a.n_layers), disable=not progress, desc="vocab extrema"):
            w = layer_weights(model, l)
            for fam, mat, post in (("ffn", w.down, w.post_mlp), ("attn", w.o, w.post_attn)):
                gain = g * post if post is not None else g
                rows = mat.T * gain  # [n, d]
                for s in range(0, rows.shape[0], chunk):
                    z = rows[s : s + chunk] @ W.T
                    mn, mx = torch.aminmax(z, dim=-1)
                    out[f"{fam}_max"][l, s : s + chunk] = mx.cpu()
                    out[f"{fam}_min"][l, s : s + chunk] = mn.cpu()
    return out


# ----------------------------------------------------------------------------- the per-prompt scorer


class _Scorer:
    """Bounds and exact scores of one prompt's FFN and attention value neurons.

    Every neuron's subvalue is ``e * r`` with a scalar coefficient ``e`` (FFN: m at the last
    position; attention: alpha * v) and a fixed row ``r`` (the output column of down_proj or
    o_proj, times the sandwich output-norm gain). Its logit change is ``d = e * (r * g / scale) @ W_U.T``.
    """

    def __init__(self, model, data: PromptData, *, need_lower: bool, layers: Sequence[int] | None = None):
        """``layers``: compute the baselines of these layers only (the bounds of neurons in
        other layers are then meaningless; used to rescore a few candidates cheaply)."""
        self.model, self.data = model, data
        self.a = a = arch(model)
        W, b = unembed(model)
        self.W, self.b = W, b
        self.g = final_norm_gain(model)
        self.gs = self.g / data.scale
        L, t = a.n_layers, data.target_id
        self.t = t
        # baselines: FFN of layer l -> resid_mid[l] (row l); attention of layer l -> resid_pre[l] (row L+l)
        xb = torch.cat([data.x_mid, data.x_pre]) * self.gs  # [2L, d]
        if layers is None:
            self.z0, self.p, self.lse0, self.u = baseline_readout(xb, W, b)
        else:  # rows of other layers stay NaN: their bounds must not be used
            rows = torch.tensor(sorted({int(l) for l in layers} | {int(l) + L for l in layers}), dtype=torch.long,
                                device=W.device)
            z0, p, lse0, u = (torch.full(shape, float("nan"), device=W.device)
                              for shape in ((2 * L, W.shape[0]), (2 * L, W.shape[0]), (2 * L,), (2 * L, W.shape[1])))
            if rows.numel():
                z0[rows], p[rows], lse0[rows], u[rows] = baseline_readout(xb[rows], W, b)
            self.z0, self.p, self.lse0, self.u = z0, p, lse0, u
        ct = self.gs * W[t]  # [d]
        cmu = self.gs * self.u  # [2L, d]
        self.lw = [layer_weights(model, l) for l in range(L)]
        at_f, amu_f, at_a, amu_a = [], [], [], []
        for l in range(L):
            w = self.lw[l]
            c2 = torch.stack([ct, cmu[l]])
            if w.post_mlp is not None:
                c2 = c2 * w.post_mlp
            pr = c2 @ w.down
            at_f.append(pr[0]), amu_f.append(pr[1])
            c2 = torch.stack([ct, cmu[L + l]])
            if w.post_attn is not None:
                c2 = c2 * w.post_attn
            pr = c2 @ w.o
            at_a.append(pr[0]), amu_a.append(pr[1])
        e_f = data.m[:, -1, :].clone()  # FFN: e[l, i]
        if data.r_mlp is not None:
            e_f = e_f / data.r_mlp[:, -1:]
        e_a = torch.stack([_attn_coef(a, data, l) for l in range(L)])  # attention: e[l, h, j, p]
        if data.r_attn is not None:
            e_a = e_a / data.r_attn[:, -1, None, None, None]
        H, dh, T = a.n_heads, a.d_head, data.T
        self.fam = {
            "ffn": dict(e=e_f.double(), at=torch.stack(at_f).double(), amu=torch.stack(amu_f).double(), shape=(L, a.d_mlp)),
            "attn": dict(
                e=e_a.double(),
                at=torch.stack(at_a).double().reshape(L, H, dh, 1),
                amu=torch.stack(amu_a).double().reshape(L, H, dh, 1),
                shape=(L, H, dh, T),
            ),
        }
        for f in self.fam.values():
            f["dt"] = (f["e"] * f["at"]).flatten()  # d_t
            f["mu"] = (f["e"] * f["amu"]).flatten()  # p . d
            f["ub"] = f["dt"] - f["mu"]  # Jensen: Imp <= d_t - p.d
            f["e"] = f["e"].flatten()
        self.n_exact = 0
        self.n_refined = 0
        self.has_lower = need_lower
        self._heads: dict[tuple[int, int], tuple] = {}
        self._order: dict[int, Any] = {}
        if need_lower:
            ext = vocab_extrema(model)
            for name, f in self.fam.items():
                if name == "ffn":
                    pmax, pmin = ext["ffn_max"].double(), ext["ffn_min"].double()
                else:
                    pmax = ext["attn_max"].double().reshape(L, H, dh, 1).expand(L, H, dh, T)
                    pmin = ext["attn_min"].double().reshape(L, H, dh, 1).expand(L, H, dh, T)
                es = f["e"] / float(data.scale)
                pmax, pmin = pmax.flatten(), pmin.flatten()
                f["hi"] = torch.where(es >= 0, es * pmax, es * pmin)  # max over the vocabulary of d
                f["lo"] = torch.where(es >= 0, es * pmin, es * pmax)
                f["lb"] = f["dt"] - _two_point(f["mu"], f["lo"], f["hi"])

    # -- neuron geometry

    def locate(self, family: str, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(layer, unit column, baseline row) of flat neuron indices."""
        a = self.a
        idx = np.unravel_index(flat.cpu().numpy(), self.fam[family]["shape"])
        layer = torch.as_tensor(idx[0], dtype=torch.long, device=flat.device)
        if family == "ffn":
            return layer, torch.as_tensor(idx[1], dtype=torch.long, device=flat.device), layer
        unit = torch.as_tensor(idx[1] * a.d_head + idx[2], dtype=torch.long, device=flat.device)
        return layer, unit, layer + a.n_layers

    def unit_rows(self, family: str, layer: Tensor, unit: Tensor) -> Float[Tensor, "n d_model"]:
        """``r * g_final / scale`` for units (output column times the sandwich gain)."""
        out = torch.empty(layer.numel(), self.a.d_model, device=self.W.device)
        for l in layer.unique().tolist():
            sel = (layer == l).nonzero()[:, 0]
            w = self.lw[l]
            mat, post = (w.down, w.post_mlp) if family == "ffn" else (w.o, w.post_attn)
            gain = self.gs * post if post is not None else self.gs
            out[sel] = mat[:, unit[sel]].T * gain
        return out

    # -- exact scores

    def exact_many(self, reqs: Sequence[tuple[str, Tensor]]) -> list[Tensor]:
        """Exact Imp for several (family, flat indices) requests, in one batched readout."""
        sizes = [int(f.numel()) for _, f in reqs]
        if sum(sizes) == 0:
            return [torch.empty(0, dtype=torch.float64) for _ in reqs]
        keys, es, bases = [], [], []
        for fi, (family, flat) in enumerate(reqs):
            if flat.numel() == 0:
                continue
            layer, unit, base = self.locate(family, flat)
            fid = 0 if family == "ffn" else 1
            keys.append(torch.stack([torch.full_like(layer, fid), layer, unit], 1))
            es.append(self.fam[family]["e"][flat].float())
            bases.append(base)
        keys_t, e, base = torch.cat(keys), torch.cat(es), torch.cat(bases)
        # attention neurons at different positions share their unit row: one readout per unit
        ukeys, inv = torch.unique(keys_t, dim=0, return_inverse=True)
        rows = torch.empty(ukeys.shape[0], self.a.d_model, device=self.W.device)
        for fid, family in ((0, "ffn"), (1, "attn")):
            sel = (ukeys[:, 0] == fid).nonzero()[:, 0]
            if sel.numel():
                rows[sel] = self.unit_rows(family, ukeys[sel, 1], ukeys[sel, 2])
        # Imp = d_t - log E_p[exp d], with log E_p[exp d] = mx + log sum_v p_v exp(d_v - mx).
        # The readout runs over vocabulary chunks with a running maximum (an online
        # log-sum-exp): each chunk's logit changes stay in cache instead of an [n, V] tensor,
        # which makes the matrix products 25-35 % faster on CPU (bench/README.md, "Attribution").
        # Each chunk's terms are a float32 cascade sum (~1e-7 relative), the chunks add in float64.
        W, p = self.W, self.p
        n = e.numel()
        mx = torch.full((n,), float("-inf"), device=W.device)
        S = torch.zeros(n, dtype=torch.float64, device=W.device)
        step = vocab_chunk(W, n)
        for s in range(0, W.shape[0], step):
            d = torch.index_select(rows @ W[s : s + step].T, 0, inv).mul_(e[:, None])  # [n, chunk]
            new = torch.maximum(mx, d.amax(-1))
            S.mul_(torch.exp((mx - new).double()))
            d.sub_(new[:, None]).exp_().mul_(torch.index_select(p[:, s : s + step], 0, base))
            S.add_(d.sum(-1).double())
            mx = new
        dt = torch.index_select(rows @ W[self.t], 0, inv).mul_(e).double()
        out = dt - (mx.double() + torch.log(S))
        self.n_exact += int(e.numel())
        return list(torch.split(out, sizes))

    def exact(self, family: str, flat: Tensor) -> Tensor:
        """Exact Imp of the given neurons (flat indices into the family's shape)."""
        return self.exact_many([(family, flat)])[0]

    # -- refined bounds from the head of the baseline distribution

    def _head(self, base: int, M: int):
        key = (base, M)
        if key not in self._heads:
            z0 = self.z0[base]
            m = min(M, z0.numel() - 1)
            top = self._order.get(base)
            if top is None or top.values.numel() < m:  # a sorted top list serves every smaller head
                top = self._order[base] = torch.topk(z0, m)
            pH = torch.exp(top.values[:m].double() - self.lse0[base].double())
            pT = max(0.0, 1.0 - float(pH.sum()))
            WH = torch.index_select(self.W, 0, top.indices[:m])
            uH = (pH.float() @ WH)  # head part of p @ W
            self._heads[key] = (pH, pT, WH, uH)
        return self._heads[key]

    def refine(self, family: str, flat: Tensor, M: int) -> tuple[Tensor, Tensor | None]:
        """Tighter (upper, lower) bounds: exact over the M most probable baseline tokens.

        ``log E_p[e^d] = log(sum_head p_v e^{d_v} + p_T E_tail[e^d])``; on the tail, Jensen gives
        ``E_tail[e^d] >= e^{mu_T}`` (an upper bound of Imp) and the two-point bound gives
        ``E_tail[e^d] <= theta e^{hi} + (1 - theta) e^{lo}`` (a lower bound of Imp, needs the
        vocabulary extrema). ``mu_T`` carries an explicit allowance for float32 rounding.
        """
        f = self.fam[family]
        n = flat.numel()
        ub = torch.empty(n, dtype=torch.float64, device=flat.device)
        lb = torch.empty(n, dtype=torch.float64, device=flat.device) if self.has_lower else None
        if n == 0:
            return ub, lb
        layer, unit, base = self.locate(family, flat)
        e = f["e"][flat]
        rows = self.unit_rows(family, layer, unit)
        for b in base.unique().tolist():
            sel = (base == b).nonzero()[:, 0]
            pH, pT, WH, uH = self._head(b, M)
            r = rows[sel]
            dH = (r @ WH.T).double() * e[sel, None]  # [n_b, M]
            mx = dH.max(-1, keepdim=True).values
            SH = (pH * torch.exp(dH - mx)).sum(-1)  # head sum, scaled by e^-mx
            ru = (r @ (self.u[b] - uH)).double() * e[sel]  # sum_tail p_v d_v (float32 estimate)
            err = 1e-5 * (r.abs() @ (self.u[b].abs() + uH.abs())).double() * e[sel].abs() + 1e-12
            dt = f["dt"][flat[sel]]
            if pT > 1e-300:
                lo_t = torch.exp(((ru - err) / pT).clamp(max=700.0) - mx[:, 0])
                log_lo = mx[:, 0] + torch.log(SH + pT * lo_t)
            else:
                log_lo = mx[:, 0] + torch.log(SH)
            ub[sel] = torch.minimum(dt - log_lo, f["ub"][flat[sel]])
            if lb is not None:
                lo, hi = f["lo"][flat[sel]], f["hi"][flat[sel]]
                if pT > 1e-300:
                    muT = ((ru + err) / pT).clamp(min=lo, max=hi)
                    tail = _two_point(muT, lo, hi)
                    log_hi = torch.logaddexp(mx[:, 0] + torch.log(SH), math.log(pT) + tail)
                else:
                    log_hi = mx[:, 0] + torch.log(SH)
                lb[sel] = torch.maximum(dt - log_hi, f["lb"][flat[sel]])
        self.n_refined += int(n)
        return ub, lb


def baseline_readout(
    x: Float[Tensor, "n d_model"], W: Float[Tensor, "d_vocab d_model"], b: Float[Tensor, "d_vocab"] | None = None
) -> tuple[Float[Tensor, "n d_vocab"], Float[Tensor, "n d_vocab"], Float[Tensor, "n"], Float[Tensor, "n d_model"]]:
    """Logits ``z0 = x @ W.T (+ b)``, ``p = softmax(z0)``, ``logsumexp(z0)`` and ``u = p @ W``
    of baseline rows in one pass over the vocabulary.

    Each chunk of :func:`vocab_chunk` rows of ``W`` is read once for both products (an online
    softmax: ``u`` and the normalizer are rescaled when the running maximum grows), instead of
    one pass for ``z0`` and another for ``u``: ~15 % faster for this step on CPU, 4-8 % of the
    whole scoring (bench/README.md, "Attribution"). ``u`` and the normalizer accumulate the
    chunks in float64 (a chunk's own float32 product sums only that chunk's terms): against
    float64 arithmetic on the same logits, ``u`` is within ~4e-7 relative and ``p`` within ~2e-6
    (the float32 exponential).
    """
    n, V = x.shape[0], W.shape[0]
    z0 = torch.empty(n, V, device=W.device)
    p = torch.empty(n, V, device=W.device)
    mx = torch.full((n,), float("-inf"), device=W.device)
    S = torch.zeros(n, dtype=torch.float64, device=W.device)
    u = torch.zeros(n, W.shape[1], dtype=torch.float64, device=W.device)
    step = vocab_chunk(W, n)
    marks = []
    for s in range(0, V, step):
        Wc = W[s : s + step]
        zc = x @ Wc.T
        if b is not None:
            zc += b[s : s + step]
        z0[:, s : s + step] = zc
        new = torch.maximum(mx, zc.amax(-1))
        shrink = torch.exp((mx - new).double())
        ec = zc.sub_(new[:, None]).exp_()  # (torch.logsumexp is several times slower on CPU)
        S.mul_(shrink).add_(ec.sum(-1).double())
        u.mul_(shrink[:, None]).add_((ec @ Wc).double())
        p[:, s : s + step] = ec
        marks.append(new)
        mx = new
    for s, m in zip(range(0, V, step), marks):  # p from each chunk's maximum to the final one
        p[:, s : s + step] *= (torch.exp((m - mx).double()) / S).float()[:, None]
    lse0 = (mx.double() + torch.log(S)).float()
    return z0, p, lse0, (u / S[:, None]).float()


def _two_point(mu: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Upper bound of log E[exp d] for d in [lo, hi] with mean mu (two-point distribution)."""
    width = hi - lo
    theta = ((mu - lo) / torch.where(width > 0, width, torch.ones_like(width))).clamp(0.0, 1.0)
    val = torch.logaddexp(torch.log(theta) + hi, torch.log1p(-theta) + lo)
    return torch.where(width > 1e-12, torch.maximum(val, mu), mu)


def vocab_chunk(W: Tensor, n: int) -> int:
    """Vocabulary rows per chunk of the exact readout of ``n`` neurons: :data:`VOCAB_CHUNK` on
    CPU; on an accelerator the whole vocabulary (one large product is fastest there) unless the
    ``[n, chunk]`` temporaries would pass 2**26 elements (256 MB each in float32)."""
    if W.device.type == "cpu":
        return VOCAB_CHUNK
    return max(VOCAB_CHUNK, min(W.shape[0], 2**26 // max(n, 1)))


VOCAB_CHUNK = 2048  # CPU; 1024-4096 are equally fast; one [n, V] product makes the scoring ~13 % slower (bench/README.md)
HEAD_CASCADE = (512, 4096)  # head sizes of the refined bounds
REFINE_MIN = {512: 3, 4096: 16}  # candidates on one baseline worth computing its head (bench/README.md)


class _Select:
    """Certified top-k (``largest``) or bottom-k of exact scores.

    Round 1 scores the k + margin best neurons by the first-order estimate (the upper bound).
    Round 2 scores every other neuron whose bound (upper for the top, lower for the bottom)
    can still reach the k-th best exact score, after tightening those bounds on the head of the
    baseline distribution (:meth:`_Scorer.refine`). After round 2 the selection is certified:
    every unscored neuron's bound is worse than the k-th best exact score (by ``TOL``).
    """

    def __init__(self, scorer: _Scorer, family: str, k: int, largest: bool, margin: int | None = None):
        f = scorer.fam[family]
        self.scorer, self.family = scorer, family
        self.sign = 1.0 if largest else -1.0
        self.largest = largest
        self.est = f["ub"] * self.sign
        self.bound = f["ub"] if largest else -f["lb"]  # larger = could still be selected
        n = self.est.numel()
        self.k = min(k, n)
        self.scored = torch.zeros(n, dtype=torch.bool, device=self.est.device)
        self.idx: list[Tensor] = []
        self.val: list[Tensor] = []
        self.margin = margin if margin is not None else max(2, k // 25)
        self.rounds = 0
        self.done = self.k == 0

    def request(self) -> Tensor:
        if self.done:
            return torch.empty(0, dtype=torch.long, device=self.est.device)
        self.rounds += 1
        if self.rounds == 1:
            req = torch.topk(self.est, min(self.est.numel(), self.k + self.margin)).indices
        else:
            kth = self.kth()
            cand = ((self.bound >= kth - TOL) & ~self.scored).nonzero()[:, 0]
            for M in HEAD_CASCADE:
                if cand.numel() == 0:
                    break
                # a head costs about as much as a few exact rescorings: refine only the
                # baselines with enough candidates, pass the others straight to exact scoring
                base = self.scorer.locate(self.family, cand)[2]
                ub_, cnt = torch.unique(base, return_counts=True)
                many = torch.isin(base, ub_[cnt >= REFINE_MIN[M]])
                if not bool(many.any()):
                    continue
                ub, lb = self.scorer.refine(self.family, cand[many], M)
                key = ub if self.largest else -lb
                cand = torch.cat([cand[~many], cand[many][key >= kth - TOL]])
            req = cand
        self.scored[req] = True
        return req

    def kth(self) -> float:
        vals = torch.cat(self.val) * self.sign
        return float(torch.topk(vals, self.k).values[-1])

    def feed(self, idx: Tensor, val: Tensor) -> None:
        if idx.numel():
            self.idx.append(idx)
            self.val.append(val)
        if self.rounds >= 2 or bool(self.scored.all()):
            self.done = True

    def result(self) -> tuple[Tensor, Tensor]:
        idx, val = torch.cat(self.idx), torch.cat(self.val)
        top = torch.topk(val * self.sign, self.k).indices
        return idx[top], val[top]


def _run_selects(scorer: _Scorer, jobs: dict[tuple[str, str], _Select]) -> None:
    """Drive several selections, scoring all requests of a round in one batched readout."""
    while not all(s.done for s in jobs.values()):
        reqs = {key: s.request() for key, s in jobs.items() if not s.done}
        # a neuron requested by two selections (top and bottom of tiny sets) is scored once
        flat_by_fam: dict[str, Tensor] = {}
        for fam in ("ffn", "attn"):
            parts = [r for k, r in reqs.items() if k[0] == fam]
            if parts:
                flat_by_fam[fam] = torch.unique(torch.cat(parts))
        fams = list(flat_by_fam)
        vals = scorer.exact_many([(f, flat_by_fam[f]) for f in fams])
        lookup = {}
        for f, v in zip(fams, vals):
            lookup[f] = (flat_by_fam[f], v)
        for key, r in reqs.items():
            u, v = lookup[key[0]] if key[0] in lookup else (torch.empty(0, dtype=torch.long), torch.empty(0))
            pos = torch.searchsorted(u, r)
            jobs[key].feed(r, v[pos] if r.numel() else torch.empty(0, dtype=torch.float64))


# ----------------------------------------------------------------------------- query FFN neurons


def query_scores(
    model,
    data: PromptData,
    attn_neurons: Sequence[tuple[int, int, int, int]],
    attn_scores: Sequence[float] | Tensor,
) -> tuple[Float[Tensor, "L d_mlp"], Float[Tensor, "L d_mlp T"]]:
    """FFN query scores Q(l, i) from attention value neurons (l, h, j, p) and their scores.

    Returns:
        ``(Q [L, d_mlp], Q_by_position [L, d_mlp, T])`` with ``Q = Q_by_position.sum(-1)``;
        the position is the source position p of the attention neurons each score comes from.
    """
    a = arch(model)
    L, T = a.n_layers, data.T
    dev = data.v.device
    Q = torch.zeros(L, a.d_mlp, T, dtype=torch.float64, device=dev)
    if len(attn_neurons) == 0:
        return Q.sum(-1), Q
    la = torch.tensor([n[0] for n in attn_neurons], device=dev)
    ha = torch.tensor([n[1] for n in attn_neurons], device=dev)
    ja = torch.tensor([n[2] for n in attn_neurons], device=dev)
    pa = torch.tensor([n[3] for n in attn_neurons], device=dev)
    s = torch.as_tensor(attn_scores, dtype=torch.float64).to(dev)
    ga = ha // a.group
    lws = {l: layer_weights(model, l) for l in range(a.n_layers)}
    keys = torch.stack([
        lws[int(l)].v[int(g) * a.d_head + int(j)] * lws[int(l)].ln_attn for l, g, j in zip(la, ga, ja)
    ])  # [na, d]
    value = data.v[la, pa, ga, ja]  # includes the bias
    den = (data.rms_in[la, pa] * value).double()
    weight = s / den  # [na]
    for l in range(int(la.max())):
        sel = (la > l).nonzero()[:, 0]
        if sel.numel() == 0:
            continue
        w = lws[l]
        K = keys[sel]
        if w.post_mlp is not None:
            K = K * w.post_mlp / data.r_mlp[l, pa[sel]][:, None]
        proj = (K @ w.down).double()  # [na_l, d_mlp]
        contrib = proj * data.m[l, pa[sel]].double() * weight[sel][:, None]
        Q[l].index_add_(1, pa[sel], contrib.T)
    return Q.sum(-1), Q


# ----------------------------------------------------------------------------- results


@dataclass
class AttributionResult:
    """The attribution of one prompt.

    Attributes:
        prompt: the text (without the start token).
        tokens: the tokens as strings (start token first when used).
        token_ids: their ids.
        target: the target token as a string; ``target_id`` its id.
        lp_target: the model's log-probability of the target at the last position.
        tables: kind -> DataFrame with columns ``neuron`` (:class:`NeuronId`), ``id``, ``kind``,
            ``side`` ("top"/"bottom"), ``rank``, ``score`` (exact log-probability increase; for
            ffn_query the Q score), ``position``, ``layer``, ``coefficient``.
        seconds: ``{"forward", "scoring", "total"}``.
        stats: numbers of exact rescorings etc. (for the benchmark).
    """

    prompt: str
    tokens: list[str]
    token_ids: list[int]
    target: str
    target_id: int
    lp_target: float
    tables: dict[str, pd.DataFrame]
    seconds: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)

    def top(self, kind: str, n: int | None = None, side: str = "top") -> pd.DataFrame:
        df = self.tables[kind]
        df = df[df.side == side]
        return df if n is None else df.head(n)

    def neurons(self, kind: str, side: str = "top") -> list[NeuronId]:
        return list(self.top(kind, side=side).neuron)


def _table(kind: str, side: str, neurons: list[NeuronId], scores, positions, coefs) -> pd.DataFrame:
    return pd.DataFrame({
        "neuron": neurons,
        "id": [str(n) for n in neurons],
        "kind": kind,
        "side": side,
        "rank": np.arange(1, len(neurons) + 1),
        "score": np.asarray(scores, dtype=np.float64),
        "position": np.asarray(positions, dtype=np.int64),
        "layer": [n.layer for n in neurons],
        "coefficient": np.asarray(coefs, dtype=np.float64),
    })


def _check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise StudyError(f"Unknown attribution kind(s) {bad}; choose from {list(KINDS)}.")
    return kinds


def _per_prompt(
    model,
    data: PromptData,
    top_k: int,
    bottom_k: int,
    kinds: tuple[str, ...],
    *,
    n_query_attn: int = N_QUERY_ATTN,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any], _Scorer]:
    a = arch(model)
    scorer = _Scorer(model, data, need_lower=bottom_k > 0)
    jobs: dict[tuple[str, str], _Select] = {}
    if "ffn_value" in kinds and top_k:
        jobs[("ffn", "top")] = _Select(scorer, "ffn", top_k, True)
    k_attn = max(top_k if "attn_value" in kinds else 0, n_query_attn if "ffn_query" in kinds else 0)
    if k_attn:
        jobs[("attn", "top")] = _Select(scorer, "attn", k_attn, True)
    if bottom_k:
        if "ffn_value" in kinds:
            jobs[("ffn", "bottom")] = _Select(scorer, "ffn", bottom_k, False)
        if "attn_value" in kinds:
            jobs[("attn", "bottom")] = _Select(scorer, "attn", bottom_k, False)
    _run_selects(scorer, jobs)
    T = data.T
    tables: dict[str, pd.DataFrame] = {}
    stats = {"exact_rescored": scorer.n_exact, "rounds": {f"{k[0]}_{k[1]}": s.rounds for k, s in jobs.items()}}
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in kinds}
    attn_top = None
    for (fam, side), sel in jobs.items():
        idx, val = (x.cpu() for x in sel.result())
        f = scorer.fam[fam]
        ui = np.unravel_index(idx.numpy(), f["shape"])
        coef = f["e"].reshape(-1).cpu()[idx].numpy()
        if fam == "ffn":
            neurons = [NeuronId("ffn", layer=int(l), index=int(i)) for l, i in zip(*ui)]
            parts["ffn_value"].append(_table("ffn_value", side, neurons, val, [T - 1] * len(neurons), coef))
        else:
            neurons = [NeuronId("attn", layer=int(l), head=int(h), dim=int(j), position=int(p)) for l, h, j, p in zip(*ui)]
            if side == "top":
                attn_top = (list(zip(*[u.tolist() for u in ui])), val)
            if "attn_value" in kinds:
                k = top_k if side == "top" else bottom_k
                parts["attn_value"].append(
                    _table("attn_value", side, neurons[:k], val[:k], ui[3][:k], coef[:k])
                )
    if "ffn_query" in kinds:
        assert attn_top is not None
        nq = min(n_query_attn, len(attn_top[0]))
        Q, Qp = (x.cpu() for x in query_scores(model, data, attn_top[0][:nq], attn_top[1][:nq]))
        flatQ = Q.flatten()
        for side, k in (("top", top_k), ("bottom", bottom_k)):
            if not k:
                continue
            order = torch.topk(flatQ, min(k, flatQ.numel()), largest=side == "top").indices
            li, ii = np.unravel_index(order.numpy(), Q.shape)
            neurons = [NeuronId("ffn", layer=int(l), index=int(i)) for l, i in zip(li, ii)]
            qp = Qp[torch.as_tensor(li), torch.as_tensor(ii)]  # [k, T]
            pos = qp.abs().argmax(-1).numpy()
            coef = data.m.cpu()[torch.as_tensor(li), torch.as_tensor(pos), torch.as_tensor(ii)].numpy()
            parts["ffn_query"].append(_table("ffn_query", side, neurons, flatQ[order].numpy(), pos, coef))
        stats["query_from"] = [str(NeuronId("attn", layer=l, head=h, dim=j, position=p)) for l, h, j, p in attn_top[0][:nq]]
    for k in kinds:
        tables[k] = pd.concat(parts[k], ignore_index=True) if parts[k] else _table(k, "top", [], [], [], [])
    return tables, stats, scorer


def attribute(
    model,
    prompt: str,
    target: Any = None,
    top_k: int = 50,
    bottom_k: int = 0,
    kinds: Sequence[str] = KINDS,
    *,
    start: bool = True,
    n_query_attn: int = N_QUERY_ATTN,
    threads: int | None = DEFAULT_THREADS,
) -> AttributionResult:
    """Exact top-k (and bottom-k) neurons of one prompt by log-probability increase.

    Args:
        model: a loaded bridge (float32).
        prompt: the text; the model's start token is prepended (``start=False`` to skip it).
        target: a single-token string (e.g. a token of :data:`analysis_lib.commonwords.GENDER_TARGETS`),
            a token id, or ``None`` for the model's top-1 prediction (the authors' notebook default).
        top_k: neurons with the largest scores, per kind.
        bottom_k: neurons with the most negative scores, per kind (needs the vocabulary
            extrema, computed once per model and cached).
        kinds: any of ``"ffn_value"``, ``"attn_value"``, ``"ffn_query"``.
        n_query_attn: attention value neurons that define the query scores (30 as the authors).
        threads: torch threads during the call (``None``: leave the global setting).

    Returns:
        An :class:`AttributionResult`; every score is exact (certified top/bottom sets).
    """
    kinds = _check_kinds(kinds)
    if top_k < 0 or bottom_k < 0:
        raise StudyError("top_k and bottom_k must be >= 0.")
    with torch_threads(threads), torch.inference_mode():
        t0 = time.perf_counter()
        data = forward_data(model, prompt, target, start=start)[0]
        most = max(neuron_counts(model, len(data.token_ids))[k] for k in kinds)
        top_k, bottom_k = min(top_k, most), min(bottom_k, most)  # k beyond every neuron of a kind means all
        t1 = time.perf_counter()
        tables, stats, _ = _per_prompt(model, data, top_k, bottom_k, kinds, n_query_attn=n_query_attn)
        t2 = time.perf_counter()
    for kind, table in tables.items():
        check_finite(table["score"].to_numpy(dtype=float), model, f"attribution scores ({kind})")
    tok = model.tokenizer
    lp = torch.log_softmax(data.logits, -1)[data.target_id].item()
    return AttributionResult(
        prompt=prompt,
        tokens=[tok.decode([i]) for i in data.token_ids.tolist()],
        token_ids=data.token_ids.tolist(),
        target=tok.decode([data.target_id]),
        target_id=data.target_id,
        lp_target=lp,
        tables=tables,
        seconds={"forward": t1 - t0, "scoring": t2 - t1, "total": t2 - t0},
        stats=stats,
    )


def neuron_counts(model, n_positions: int) -> dict[str, int]:
    """How many neurons of each kind a prompt of ``n_positions`` tokens has (the most a
    top-k or bottom-k can return)."""
    a = arch(model)
    ffn = a.n_layers * a.d_mlp
    return {"ffn_value": ffn, "ffn_query": ffn, "attn_value": a.n_layers * a.n_heads * a.d_head * n_positions}


def attribution_json(result: AttributionResult) -> dict[str, Any]:
    """A JSON-ready dict: ``{"tokens", "target", "neurons": [{"id", "kind", "score", ...}], "seconds"}``."""
    rows = []
    for kind, df in result.tables.items():
        for r in df.itertuples():
            rows.append({"id": r.id, "kind": kind, "score": float(r.score), "side": r.side, "position": int(r.position)})
    return {
        "tokens": result.tokens,
        "target": result.target,
        "target_id": result.target_id,
        "lp_target": result.lp_target,
        "neurons": rows,
        "seconds": round(result.seconds["total"], 4),
    }


# ----------------------------------------------------------------------------- positions


def position_category(pos: int, T: int, word_positions: Sequence[int] = (), has_start: bool = True) -> str:
    """``"start"`` (p = 0 with a start token), ``"word"``, ``"last"`` (T-1) or ``"other"``."""
    if has_start and pos == 0:
        return "start"
    if pos in word_positions:
        return "word"
    if pos == T - 1:
        return "last"
    return "other"


def word_positions(model, prompt: str, word: str | None, *, start: bool = True) -> list[int]:
    """Token positions of ``word`` inside the encoded prompt (start token counted); [] if absent."""
    if not word:
        return []
    ids = encode(model, prompt, start=start).tokens[0].tolist()
    for variant in (" " + word.strip(), word.strip(), word):
        w = token_ids(model, variant)
        if not w:
            continue
        for s in range(len(ids) - len(w) + 1):
            if ids[s : s + len(w)] == w:
                return list(range(s, s + len(w)))
    return []


def _positions_of(model, prompt: str, word, start: bool) -> list[int]:
    if word is None:
        return []
    if isinstance(word, str):
        return word_positions(model, prompt, word, start=start)
    return [int(x) for x in word]


def important_position(result: "AttributionResult | DatasetAttribution", neuron: "str | NeuronId", kind: str | None = None):
    """The important position of a neuron (method_spec §1.3).

    For an :class:`AttributionResult`: attention value neuron -> its source position p; FFN value
    neuron -> the last position; FFN query neuron -> the source position carrying the largest
    share of its score. For a :class:`DatasetAttribution`: the position category (``"start"``,
    ``"word"``, ``"last"``, ``"other"``) with the largest share of the neuron's summed score.
    """
    n = NeuronId.parse(neuron)
    if isinstance(result, DatasetAttribution):
        kinds = [kind] if kind else [k for k in result.tables if (n.aggregated if k == "attn_value" else n) in set(result.tables[k].neuron)]
        if not kinds:
            raise NeuronIdError(f"{n} is not among the dataset's top neurons.")
        df = result.tables[kinds[0]]
        row = df[df.neuron == (n.aggregated if kinds[0] == "attn_value" else n)].iloc[0]
        return row["important_position"]
    if n.kind == "attn":
        if n.position is None:
            raise NeuronIdError(f"{n} has no position; pass the positioned id (…P{{p}}).")
        return n.position
    kinds = [kind] if kind else [k for k in ("ffn_query", "ffn_value") if k in result.tables]
    for k in kinds:
        df = result.tables[k]
        hit = df[df.neuron == n]
        if len(hit):
            return int(hit.position.iloc[0])
    return len(result.tokens) - 1


# ----------------------------------------------------------------------------- dataset level


@dataclass
class DatasetAttribution:
    """Attribution summed over a dataset of prompts.

    Attributes:
        tables: kind -> DataFrame of the certified top-k neurons by summed score, columns
            ``neuron``, ``id``, ``kind``, ``rank``, ``score`` (sum over prompts), ``mean``,
            ``error`` (certified bound on |score - exact sum|), ``share_start``, ``share_word``,
            ``share_last``, ``share_other`` (fractions of the score by position category),
            ``important_position`` (the category with the largest share). Attention neurons are
            aggregated over positions (``attnL{l}H{h}D{d}``).
        per_prompt_topk: kind -> one list per prompt of that prompt's exact top-K neurons
            (attention neurons with their position).
        prompts: DataFrame with ``prompt``, ``target``, ``target_id``, ``n_tokens``,
            ``lp_target``.
        seconds: wall time by stage.
        stats: rescoring counts.
    """

    tables: dict[str, pd.DataFrame]
    per_prompt_topk: dict[str, list[list[NeuronId]]]
    prompts: pd.DataFrame
    seconds: dict[str, float]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)


@dataclass
class _Compact:
    """What dataset certification keeps of one prompt (enough to rebound and rescore)."""

    data: PromptData
    cats: np.ndarray  # [T] position category index
    exact: dict[str, dict[int, float]]


def dataset_attribution(
    model,
    prompts: Sequence[str],
    targets: Any = None,
    top_k: int = 50,
    kinds: Sequence[str] = KINDS,
    *,
    words: Sequence[str | Sequence[int] | None] | None = None,
    per_prompt_k: int | None = None,
    batch_size: int = 8,
    start: bool = True,
    n_query_attn: int = N_QUERY_ATTN,
    entry_tol: float = 1e-7,
    progress: bool = True,
    threads: int | None = DEFAULT_THREADS,
) -> DatasetAttribution:
    """Neuron scores summed over prompts, with a certified exact top-k per kind.

    Each prompt is attributed as in :func:`attribute` (its exact top-``per_prompt_k`` lists
    are kept for :func:`shared_frequency`). Summed bounds then bracket every neuron's summed
    score; only neurons whose summed upper bound can reach the k-th summed lower bound are
    rescored, and only in the prompts (and positions) where their bounds are wider than
    ``entry_tol``. The reported ``error`` column is the remaining certified half-width.

    Args:
        model: a loaded bridge.
        prompts: texts.
        targets: per-prompt targets (strings, ids or ``None`` for top-1), or one for all.
        top_k: neurons per kind in the dataset ranking.
        kinds: any of ``"ffn_value"``, ``"attn_value"``, ``"ffn_query"``.
        words: per prompt, the word whose token positions form the "word" category (a string,
            located in the prompt's tokens), or those positions themselves (a list of ints,
            e.g. from :func:`analysis_lib.commonwords.word_positions`), or ``None``.
        per_prompt_k: size of the per-prompt top lists (default ``top_k``).
        batch_size: prompts per forward pass.
        progress: tqdm progress bars.
    """
    kinds = _check_kinds(kinds)
    prompts = list(prompts)
    if not prompts:
        raise StudyError("No prompts to attribute.")
    if words is not None and len(words) != len(prompts):
        raise StudyError(f"{len(prompts)} prompts but {len(words)} words.")
    K = per_prompt_k or top_k
    tlist = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(prompts)
    if len(tlist) != len(prompts):
        raise StudyError(f"{len(prompts)} prompts but {len(tlist)} targets.")
    a = arch(model)
    L, H, dh, dm = a.n_layers, a.n_heads, a.d_head, a.d_mlp
    has_start = start and model.start_token_id is not None
    t0 = time.perf_counter()
    with torch_threads(threads), torch.inference_mode():
        need_sum = {"ffn_value", "attn_value"} & set(kinds)
        if need_sum:
            vocab_extrema(model, progress=progress)
        t_ext = time.perf_counter()
        dev = next(model.original_model.parameters()).device
        s_ub = {"ffn": torch.zeros(L * dm, dtype=torch.float64, device=dev),
                "attn": torch.zeros(L * H * dh, dtype=torch.float64, device=dev)}
        s_lb = {k: v.clone() for k, v in s_ub.items()}
        q_sum = torch.zeros(L, dm, len(POSITION_CATEGORIES), dtype=torch.float64, device=dev)
        per_prompt_topk: dict[str, list[list[NeuronId]]] = {k: [] for k in kinds}
        compact: list[_Compact] = []
        meta = []
        n_exact = 0
        bar = tqdm(total=len(prompts), disable=not progress, desc="attribution")
        for s in range(0, len(prompts), batch_size):
            chunk = list(range(s, min(s + batch_size, len(prompts))))
            datas = forward_data(model, [prompts[i] for i in chunk], [tlist[i] for i in chunk], start=start)
            for i, data in zip(chunk, datas):
                T = data.T
                wp = _positions_of(model, prompts[i], words[i] if words else None, start)
                cats = np.array([POSITION_CATEGORIES.index(position_category(p, T, wp, has_start)) for p in range(T)])
                scorer = _Scorer(model, data, need_lower=bool(need_sum))
                jobs: dict[tuple[str, str], _Select] = {}
                if "ffn_value" in kinds:
                    jobs[("ffn", "top")] = _Select(scorer, "ffn", K, True)
                k_attn = max(K if "attn_value" in kinds else 0, n_query_attn if "ffn_query" in kinds else 0)
                if k_attn:
                    jobs[("attn", "top")] = _Select(scorer, "attn", k_attn, True)
                _run_selects(scorer, jobs)
                n_exact += scorer.n_exact
                if "ffn_value" in kinds:
                    idx, _ = jobs[("ffn", "top")].result()
                    ui = np.unravel_index(idx.cpu().numpy(), (L, dm))
                    per_prompt_topk["ffn_value"].append([NeuronId("ffn", layer=int(l), index=int(n)) for l, n in zip(*ui)])
                if k_attn:
                    idx, val = jobs[("attn", "top")].result()
                    ui = np.unravel_index(idx.cpu().numpy(), (L, H, dh, T))
                    att = list(zip(*[u.tolist() for u in ui]))
                    if "attn_value" in kinds:
                        per_prompt_topk["attn_value"].append(
                            [NeuronId("attn", layer=l, head=h, dim=j, position=p) for l, h, j, p in att[:K]]
                        )
                    if "ffn_query" in kinds:
                        nq = min(n_query_attn, len(att))
                        Q, Qp = query_scores(model, data, att[:nq], val[:nq])
                        _add_query(q_sum, Qp, cats, per_prompt_topk, Q, K)
                if need_sum:
                    exact: dict[str, dict[int, float]] = {"ffn": {}, "attn": {}}
                    for (fam, _), sel in jobs.items():
                        for ix, vv in zip(torch.cat(sel.idx).tolist(), torch.cat(sel.val).tolist()):
                            exact[fam][ix] = vv
                    for fam in ("ffn", "attn"):
                        f = scorer.fam[fam]
                        ub, lb = f["ub"].clone(), f["lb"].clone()
                        if exact[fam]:
                            ix = torch.tensor(list(exact[fam].keys()), device=ub.device)
                            vv = torch.tensor(list(exact[fam].values()), dtype=torch.float64, device=ub.device)
                            ub[ix] = vv
                            lb[ix] = vv
                        if fam == "attn":  # aggregate over positions
                            ub = ub.reshape(-1, T).sum(-1)
                            lb = lb.reshape(-1, T).sum(-1)
                        s_ub[fam] += ub
                        s_lb[fam] += lb
                    compact.append(_Compact(data=_slim(data), cats=cats, exact=exact))
                meta.append({
                    "prompt": prompts[i],
                    "target": model.tokenizer.decode([data.target_id]),
                    "target_id": data.target_id,
                    "n_tokens": T,
                    "lp_target": float(torch.log_softmax(data.logits, -1)[data.target_id]),
                })
                bar.update(1)
        bar.close()
        t_pass1 = time.perf_counter()
        tables: dict[str, pd.DataFrame] = {}
        stats: dict[str, Any] = {"exact_rescored_pass1": n_exact}
        fams = [f for f, kd in (("ffn", "ffn_value"), ("attn", "attn_value")) if kd in kinds]
        if fams:
            got = _certify_sums(model, {f: (s_ub[f], s_lb[f]) for f in fams}, compact, top_k, entry_tol, progress)
            for f in fams:
                kd = "ffn_value" if f == "ffn" else "attn_value"
                tables[kd], stats[kd] = got[f]
        if "ffn_query" in kinds:
            tot = q_sum.sum(-1).flatten().cpu()
            order = torch.topk(tot, min(top_k, tot.numel())).indices
            li, ii = np.unravel_index(order.numpy(), (L, dm))
            neurons = [NeuronId("ffn", layer=int(l), index=int(i)) for l, i in zip(li, ii)]
            shares = q_sum.reshape(-1, len(POSITION_CATEGORIES)).cpu()[order]
            tables["ffn_query"] = _dataset_table("ffn_query", neurons, tot[order], torch.zeros(len(order), dtype=torch.float64), shares, len(prompts))
        t_end = time.perf_counter()
    return DatasetAttribution(
        tables=tables,
        per_prompt_topk=per_prompt_topk,
        prompts=pd.DataFrame(meta),
        seconds={"extrema": t_ext - t0, "per_prompt": t_pass1 - t_ext, "certify": t_end - t_pass1, "total": t_end - t0},
        stats=stats,
    )


def _add_query(q_sum: Tensor, Qp: Tensor, cats: np.ndarray, per_prompt_topk, Q: Tensor, K: int) -> None:
    for c in range(len(POSITION_CATEGORIES)):
        sel = torch.as_tensor(np.nonzero(cats == c)[0])
        if sel.numel():
            q_sum[:, :, c] += Qp[:, :, sel].sum(-1)
    if per_prompt_topk is not None:
        flat = Q.flatten()
        order = torch.topk(flat, min(K, flat.numel())).indices
        li, ii = np.unravel_index(order.cpu().numpy(), Q.shape)
        per_prompt_topk["ffn_query"].append([NeuronId("ffn", layer=int(l), index=int(i)) for l, i in zip(li, ii)])


def _slim(data: PromptData) -> PromptData:
    """Drop what dataset certification does not need (FFN coefficients at early positions)."""
    return PromptData(
        token_ids=data.token_ids, target_id=data.target_id, scale=data.scale, x_pre=data.x_pre,
        x_mid=data.x_mid, x_final=data.x_final, m=data.m[:, -1:].clone(), alpha=data.alpha, v=data.v,
        rms_in=data.rms_in[:, -1:], r_attn=None if data.r_attn is None else data.r_attn[:, -1:].clone(),
        r_mlp=None if data.r_mlp is None else data.r_mlp[:, -1:].clone(), logits=data.logits[:0],
    )


def _np64(x) -> np.ndarray:
    """A float64 NumPy array of a tensor on any device, or of an array-like."""
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def _dataset_table(kind, neurons, score, error, shares, n_prompts) -> pd.DataFrame:
    score = _np64(score)
    shares = _np64(shares)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = shares / score[:, None]
    df = pd.DataFrame({
        "neuron": neurons,
        "id": [str(n) for n in neurons],
        "kind": kind,
        "rank": np.arange(1, len(neurons) + 1),
        "score": score,
        "mean": score / n_prompts,
        "error": _np64(error),
        "layer": [n.layer for n in neurons],
    })
    for c, name in enumerate(POSITION_CATEGORIES):
        df[f"share_{name}"] = frac[:, c] if len(neurons) else []
    df["important_position"] = [POSITION_CATEGORIES[int(np.nanargmax(r))] if np.isfinite(r).any() else "last" for r in frac] if len(neurons) else []
    return df


def _unit_shape(a: Arch, fam: str) -> tuple[int, ...]:
    return (a.n_layers, a.d_mlp) if fam == "ffn" else (a.n_layers, a.n_heads, a.d_head)


def _certify_sums(model, sums: dict[str, tuple[Tensor, Tensor]], compact: list[_Compact], k: int, entry_tol: float, progress: bool):
    """Certified top-k of summed scores per family.

    Candidates are the units whose summed upper bound reaches the k-th summed lower bound; they
    are tightened (entries rescored exactly where their bounds are wider than ``entry_tol``),
    which raises the k-th lower bound, and the loop repeats until no untightened unit can reach
    it. All families are tightened in the same pass over the prompts.
    """
    a = arch(model)
    state = {}
    for fam, (ub, lb) in sums.items():
        n = ub.numel()
        state[fam] = dict(ub=ub.clone(), lb=lb.clone(), tight=torch.zeros(n, dtype=torch.bool, device=ub.device), shares={},
                          k=min(k, n), rescored=0, rounds=0)
    first = True
    while True:
        cands = {}
        for fam, st in state.items():
            kth = float(torch.topk(st["lb"], st["k"]).values[-1])
            c = ((st["ub"] >= kth - TOL) & ~st["tight"]).nonzero()[:, 0]
            if c.numel():
                cands[fam] = c
                st["rounds"] += 1
        if not cands:
            break
        got = _tighten(model, cands, compact, entry_tol, progress and first)
        first = False
        for fam, (ub_c, lb_c, sh, nr) in got.items():
            st = state[fam]
            c = cands[fam]
            st["ub"][c], st["lb"][c] = ub_c, lb_c
            for j, u in enumerate(c.tolist()):
                st["shares"][u] = sh[j]
            st["tight"][c] = True
            st["rescored"] += nr
    out = {}
    for fam, st in state.items():
        mid = (st["ub"] + st["lb"]) / 2
        top = torch.topk(torch.where(st["tight"], mid, torch.full_like(mid, -math.inf)), st["k"]).indices
        ui = np.unravel_index(top.cpu().numpy(), _unit_shape(a, fam))
        if fam == "ffn":
            neurons = [NeuronId("ffn", layer=int(l), index=int(i)) for l, i in zip(*ui)]
        else:
            neurons = [NeuronId("attn", layer=int(l), head=int(h), dim=int(j)) for l, h, j in zip(*ui)]
        sh = torch.stack([st["shares"][int(c)] for c in top]) if len(top) else torch.zeros(0, len(POSITION_CATEGORIES))
        err = (st["ub"][top] - st["lb"][top]) / 2
        outside = torch.ones(mid.numel(), dtype=torch.bool, device=mid.device)
        outside[top] = False
        # certificate: the k-th listed lower bound minus the best upper bound outside the list
        gap = float(st["lb"][top].min() - st["ub"][outside].max()) if outside.any() and len(top) else math.inf
        kind = "ffn_value" if fam == "ffn" else "attn_value"
        table = _dataset_table(kind, neurons, mid[top], err, sh, len(compact))
        out[fam] = (table, {"candidates_tightened": int(st["tight"].sum()), "entries_rescored": st["rescored"],
                            "rounds": st["rounds"], "certificate_gap": gap})
    return out


def _tighten(model, cands: dict[str, Tensor], compact: list[_Compact], entry_tol: float, progress: bool):
    """Summed scores of candidate units with every entry exact or bracketed within ``entry_tol``."""
    acc = {}
    for fam, cand in cands.items():
        nc, dev = cand.numel(), cand.device
        acc[fam] = [torch.zeros(nc, dtype=torch.float64, device=dev), torch.zeros(nc, dtype=torch.float64, device=dev),
                    torch.zeros(nc, len(POSITION_CATEGORIES), dtype=torch.float64, device=dev), 0]
    a = arch(model)
    per_layer = {"ffn": a.d_mlp, "attn": a.n_heads * a.d_head}
    layers = sorted({int(x) for fam, cand in cands.items() for x in (cand // per_layer[fam]).tolist()})
    for c in tqdm(compact, disable=not progress, desc="certify"):
        d = c.data
        T = d.T
        scorer = _Scorer(model, d, need_lower=True, layers=layers)
        for fam, cand in cands.items():
            nc, dev = cand.numel(), cand.device
            f = scorer.fam[fam]
            if fam == "ffn":
                flat = cand
                cat = torch.full((nc,), int(c.cats[-1]), dtype=torch.long, device=dev)
                unit = torch.arange(nc, device=dev)
            else:
                flat = (cand[:, None] * T + torch.arange(T, device=dev)[None, :]).reshape(-1)
                cat = torch.as_tensor(c.cats, dtype=torch.long).to(dev).repeat(nc)
                unit = torch.arange(nc, device=dev).repeat_interleave(T)
            ub, lb = f["ub"][flat].clone(), f["lb"][flat].clone()
            known = c.exact[fam]
            if known:
                kk = [(j, known[x]) for j, x in enumerate(flat.tolist()) if x in known]
                if kk:
                    jj = torch.tensor([j for j, _ in kk], device=dev)
                    vv = torch.tensor([v for _, v in kk], dtype=torch.float64, device=dev)
                    ub[jj] = vv
                    lb[jj] = vv
            wide = ((ub - lb) > entry_tol).nonzero()[:, 0]
            if wide.numel():  # tighter bounds from the head of the distribution first
                rub, rlb = scorer.refine(fam, flat[wide], HEAD_CASCADE[-1])
                ub[wide], lb[wide] = torch.minimum(ub[wide], rub), torch.maximum(lb[wide], rlb)
                wide = wide[(ub[wide] - lb[wide]) > entry_tol]
            if wide.numel():
                vv = scorer.exact(fam, flat[wide])
                ub[wide] = vv
                lb[wide] = vv
                for j, x in zip(wide.tolist(), vv.tolist()):
                    known[int(flat[j])] = x
                acc[fam][3] += int(wide.numel())
            acc[fam][0].index_add_(0, unit, ub)
            acc[fam][1].index_add_(0, unit, lb)
            acc[fam][2].index_put_((unit, cat), (ub + lb) / 2, accumulate=True)
    return {fam: tuple(v) for fam, v in acc.items()}


# ----------------------------------------------------------------------------- shared frequency


def shared_frequency(
    per_prompt_topk: Sequence[Sequence["NeuronId | str"]], K: int | None = None, *, aggregate_positions: bool = True
) -> pd.Series:
    """Fraction of prompts in which each neuron is in that prompt's top-K.

    Args:
        per_prompt_topk: one ranked list per prompt (e.g. ``DatasetAttribution.per_prompt_topk[kind]``).
        K: use each list's first K entries (default: whole lists).
        aggregate_positions: count attention neurons without their position (prompts differ in
            length, so only p = 0 means the same token everywhere).

    Returns:
        A Series indexed by neuron id string, sorted by decreasing frequency.
    """
    n = len(per_prompt_topk)
    if n == 0:
        return pd.Series(dtype=float)
    counts: dict[str, int] = {}
    for lst in per_prompt_topk:
        seen = set()
        for x in list(lst)[: K if K is not None else None]:
            nid = NeuronId.parse(x)
            seen.add(str(nid.aggregated if aggregate_positions else nid))
        for s in seen:
            counts[s] = counts.get(s, 0) + 1
    ser = pd.Series(counts, dtype=float) / n
    return ser.sort_values(ascending=False, kind="stable")


def shared_frequency_curve(
    per_prompt_topk: Sequence[Sequence["NeuronId | str"]], Ks: Sequence[int] = (1, 5, 10, 20, 50), **kwargs
) -> pd.DataFrame:
    """"Shared frequency vs K": for each K, statistics of :func:`shared_frequency`.

    Columns: ``K``, ``max_frequency`` (the most shared neuron), ``top1_neuron``,
    ``mean_top_K`` (mean frequency of the K most shared neurons), ``n_in_all`` (neurons in every
    prompt's top-K), ``n_in_half`` (in at least half of the prompts).
    """
    rows = []
    for K in Ks:
        f = shared_frequency(per_prompt_topk, K, **kwargs)
        rows.append({
            "K": K,
            "max_frequency": float(f.iloc[0]) if len(f) else 0.0,
            "top1_neuron": f.index[0] if len(f) else None,
            "mean_top_K": float(f.iloc[:K].mean()) if len(f) else 0.0,
            "n_in_all": int((f >= 1.0 - 1e-12).sum()),
            "n_in_half": int((f >= 0.5).sum()),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- neuron inspection


def vocab_projection(model, neuron: "str | NeuronId", k: int = 10, *, with_values: bool = False):
    """Top and last tokens of a neuron's output vector read through ``g_final ⊙ · W_U``.

    Returns:
        ``(top_tokens, last_tokens)``: lists of token strings (or ``(token, value)`` pairs with
        ``with_values``), the most promoted first / the most suppressed first. A positive
        coefficient promotes the top tokens, a negative one the last tokens.
    """
    n = as_neuron(neuron, model)
    W, _ = unembed(model)
    with torch.inference_mode():
        z = (output_vector(model, n) * final_norm_gain(model)) @ W.T
        top = torch.topk(z, k)
        last = torch.topk(z, k, largest=False)
    dec = model.tokenizer.decode

    def fmt(res):
        toks = [dec([int(i)]) for i in res.indices]
        return [(t, float(v)) for t, v in zip(toks, res.values)] if with_values else toks

    return fmt(top), fmt(last)


def neuron_card(model, neuron: "str | NeuronId", prompts: Sequence[str] = CARD_PROMPTS, k: int = 10) -> dict[str, Any]:
    """A JSON-ready summary of one neuron.

    Keys: ``id``, ``kind``, ``layer`` (and ``index`` or ``head``/``kv_head``/``dim``),
    ``top_tokens``/``last_tokens`` (vocabulary projection), ``start_activation`` (mean activation
    at the start token over ``prompts``: FFN coefficient m, or for attention the value
    component v), ``other_activation_abs`` (mean |activation| at the other positions),
    ``start_attention`` (attention neurons: mean weight of the last query on the start token).
    """
    n = as_neuron(neuron, model)
    a = arch(model)
    if n.position is not None:
        lengths = [len(encode(model, p).tokens[0]) for p in prompts]
        if n.position >= min(lengths):
            raise NeuronIdError(
                f"Neuron {n} names source position {n.position}, but the card's prompts have only "
                f"{min(lengths)}-{max(lengths)} tokens (positions 0-{min(lengths) - 1}, 0 = the start token). Drop "
                f"the P{n.position} suffix for the neuron summed over positions, or use a position below {min(lengths)}."
            )
    top, last = vocab_projection(model, n, k)
    card: dict[str, Any] = {"id": str(n), "kind": "ffn" if n.kind == "ffn" else "attn", "layer": n.layer}
    if n.kind == "ffn":
        card["index"] = n.index
    else:
        card.update(head=n.head, kv_head=n.head // a.group, dim=n.dim)
        if n.position is not None:
            card["position"] = n.position
    card["top_tokens"], card["last_tokens"] = top, last
    card["model"] = getattr(model, "study_name", None)
    card["start_token"] = model.start_token
    with torch.inference_mode():
        datas = forward_data(model, list(prompts), None)
    start_vals, other_vals, attn0, pos_vals = [], [], [], []
    for d in datas:
        if n.kind == "ffn":
            act = d.m[n.layer, :, n.index]
        else:
            act = d.v[n.layer, :, n.head // a.group, n.dim]
            attn0.append(float(d.alpha[n.layer, n.head, 0]))
        start_vals.append(float(act[0]))
        other_vals.extend(act[1:].abs().tolist())
        if n.position is not None:
            pos_vals.append(float(act[n.position]))
    card["start_activation"] = float(np.mean(start_vals))
    if n.position is not None:
        card["position_activation"] = float(np.mean(pos_vals))
    card["other_activation_abs"] = float(np.mean(other_vals)) if other_vals else 0.0
    if attn0:
        card["start_attention"] = float(np.mean(attn0))
    card["card_prompts"] = list(prompts)
    return card


# ----------------------------------------------------------------------------- command-line helpers


def attribute_command(
    model_name: str | None,
    prompt: str,
    target: str | None,
    *,
    start_token: str | None = "default",
    top_k: int = 50,
    bottom_k: int = 0,
    model=None,
) -> dict[str, Any]:
    """``python -m analysis_lib attribute ...`` without argparse: the JSON payload."""
    if model is None:
        model = load_model(model_name or DEFAULT_MODEL, start_token=start_token)
    return attribution_json(attribute(model, prompt, target, top_k=top_k, bottom_k=bottom_k))


def neuron_command(neuron_id: str, model_name: str | None = None, *, model=None) -> dict[str, Any]:
    """``python -m analysis_lib neuron ID --model NAME`` without argparse: the neuron card."""
    n = NeuronId.parse(neuron_id)  # a format error before loading the model
    if model is None:
        model = load_model(model_name or DEFAULT_MODEL)
    return neuron_card(model, n)
