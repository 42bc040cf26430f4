"""Chapter 3, "Tracing gender circuits": what the chapter computes beyond one call of the engine.

The attribution itself (exact log-probability increases, certified dataset top-k, query
scores) is :mod:`analysis_lib.attribution`. This module adds what the chapter needs around it:

* :func:`biased_targets`: per prompt, the *biased* token, the more probable of the two
  :data:`analysis_lib.commonwords.GENDER_TARGETS` (method_spec §6 A1).
* :func:`neuron_scores`: exact per-prompt scores of a *given* list of neurons, split by the
  position category of the source token (start / word / last / other). The engine only keeps
  dataset sums of its top-k; per-prompt values are what bootstrap intervals over prompts and
  random-neuron controls need. Scores use the engine's readout (final norm scale fixed at its
  value in the real forward pass) and are checked against a plain full-log-softmax reference
  in ``tests/test_circuits.py``.
* :func:`random_neurons`: a seeded random control set of one kind.
* :func:`control_summary` / :func:`position_shares`: top-k versus random sums and per-position
  shares with bootstrap intervals over prompts.
* :func:`projection_table`: the vocabulary projection (top and last tokens) of many neurons at
  once, with the gendered words found among them (the paper's Table 2).
* :func:`circuit_path`: the query -> attention -> value path of one prompt (Figure 1 of the
  paper), with the edge weights from each query FFN neuron to the attention neurons it feeds.
* :func:`shared_frequency_table` / :func:`shared_frequency_summary`: "shared frequency versus K"
  from the per-prompt top-K lists, vectorized so that it can be bootstrapped.

Kinds follow :data:`analysis_lib.attribution.KINDS`: ``ffn_value`` (FFN neurons scored at the
last position), ``attn_value`` (attention neurons ``attnL{l}H{h}D{d}``, summed over source
positions) and ``ffn_query`` (FFN neurons scored by what they write into the values of the
prompt's top-30 attention neurons, at those neurons' source positions).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .attribution import (
    KINDS,
    N_QUERY_ATTN,
    POSITION_CATEGORIES,
    AttributionResult,
    PromptData,
    attribute,
    forward_data,
    position_category,
    query_scores,
    readout,
    torch_threads,
    word_positions,
)
from .benchmarks import prompt_bias
from .commonwords import FEMALE_WORDS, GENDER_TARGETS, MALE_WORDS
from .errors import StudyError
from .metrics import BootstrapResult, bootstrap_ci
from .models import single_token_id
from .neurons import NeuronId, arch, final_norm_gain, layer_weights, output_vector, unembed
from .plots import MIN_FONT_PT

#: The noun pair of b(w) (:data:`analysis_lib.commonwords.GENDER_TARGETS`); the gendered word
#: lists FEMALE_WORDS / MALE_WORDS are imported from there too.
MALE, FEMALE = GENDER_TARGETS


def token_gender(token: str) -> str | None:
    """``"female"``, ``"male"`` or ``None`` for a decoded token (case and spaces ignored)."""
    t = re.sub(r"[^a-z]", "", token.strip().lower())
    if t in FEMALE_WORDS:
        return "female"
    if t in MALE_WORDS:
        return "male"
    return None


# ----------------------------------------------------------------------------- targets


def biased_targets(model, prompts: Sequence[str], *, batch_size: int = 64) -> pd.DataFrame:
    """Per prompt, the biased token: the more probable of ``MALE`` / ``FEMALE`` (§6 A1).

    Returns:
        A frame with ``lp_man``, ``lp_woman``, ``bias`` (= lp_man - lp_woman, > 0 male-leaning)
        and ``target`` (``MALE`` or ``FEMALE``), one row per prompt in order.
    """
    lp, b = prompt_bias(model, list(prompts), batch_size=batch_size)  # the targets (MALE, FEMALE)
    df = pd.DataFrame({"lp_man": lp[:, 0], "lp_woman": lp[:, 1]})
    df["bias"] = b
    df["target"] = np.where(df.bias > 0, MALE, FEMALE)
    return df


def prompt_subset(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of ``n`` rows (all rows if ``n`` is None or >= len), in file order."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frame), size=int(n), replace=False))
    return frame.iloc[keep].reset_index(drop=True)


# ----------------------------------------------------------------------------- neuron lists


def _family(kind: str) -> str:
    if kind not in KINDS:
        raise StudyError(f"Unknown kind {kind!r}; choose from {list(KINDS)}.")
    return "attn" if kind == "attn_value" else "ffn"


def random_neurons(model, kind: str, n: int, seed: int, exclude: Sequence["str | NeuronId"] = ()) -> list[str]:
    """``n`` distinct random neurons of a kind (uniform over all units), seeded and deterministic.

    FFN kinds draw ``ffnL{l}N{i}``; ``attn_value`` draws aggregated ``attnL{l}H{h}D{d}``.
    Neurons in ``exclude`` are never drawn.
    """
    a = arch(model)
    fam = _family(kind)
    shape = (a.n_layers, a.d_mlp) if fam == "ffn" else (a.n_layers, a.n_heads, a.d_head)
    total = int(np.prod(shape))
    bad = set()
    for x in exclude:
        nid = NeuronId.parse(x).aggregated
        if nid.kind != fam:
            continue
        bad.add(int(np.ravel_multi_index((nid.layer, nid.index) if fam == "ffn" else (nid.layer, nid.head, nid.dim), shape)))
    if n > total - len(bad):
        raise StudyError(f"Cannot draw {n} random {kind} neurons: only {total - len(bad)} are left.")
    rng = np.random.default_rng(seed)
    out: list[int] = []
    seen = set(bad)
    while len(out) < n:
        for f in rng.choice(total, size=n - len(out), replace=False).tolist():
            if f not in seen:
                seen.add(f)
                out.append(f)
    ids = []
    for f in out:
        u = np.unravel_index(f, shape)
        if fam == "ffn":
            ids.append(str(NeuronId("ffn", layer=int(u[0]), index=int(u[1]))))
        else:
            ids.append(str(NeuronId("attn", layer=int(u[0]), head=int(u[1]), dim=int(u[2]))))
    return ids


# ----------------------------------------------------------------------------- exact per-prompt scores


@dataclass
class NeuronScores:
    """Exact per-prompt scores of given neurons, split by position category.

    Attributes:
        ids: kind -> neuron ids (FFN ids or aggregated attention ids), the columns.
        by_position: kind -> ``[n_prompts, n_neurons, 4]`` scores by position category
            (:data:`~analysis_lib.attribution.POSITION_CATEGORIES`: start, word, last, other).
            FFN value neurons sit at the last position; attention value neurons are split by
            source position; FFN query neurons by the source position of the attention
            neurons they feed.
        prompts: ``prompt``, ``target``, ``n_tokens``, ``word_positions`` per prompt.
        logodds: with contrast tokens only: kind (``ffn_value``, ``attn_value``) -> the direct
            log-odds effect ``d_t - d_c`` of *every* unit summed over prompts, by position
            category: ``[L, d_mlp, 4]`` or ``[L, n_heads, d_head, 4]`` (see :func:`neuron_scores`).
        logodds_prompt: kind -> ``[n_prompts, n_neurons]`` log-odds effects of the listed neurons.
    """

    ids: dict[str, list[str]]
    by_position: dict[str, np.ndarray]
    prompts: pd.DataFrame
    logodds: dict[str, np.ndarray] | None = None
    logodds_prompt: dict[str, np.ndarray] | None = None

    def total(self, kind: str) -> np.ndarray:
        """``[n_prompts, n_neurons]`` scores summed over positions."""
        return self.by_position[kind].sum(-1)

    def column(self, kind: str, neuron: "str | NeuronId") -> np.ndarray:
        """``[n_prompts]`` total score of one neuron."""
        return self.total(kind)[:, self.ids[kind].index(str(NeuronId.parse(neuron).aggregated))]


class _Units:
    """Fixed vocabulary rows ``(w * g_final) @ W_U.T`` of a list of units (prompt-independent)."""

    def __init__(self, model, ids: Sequence[str]):
        self.ids = [NeuronId.parse(x).aggregated for x in ids]
        W, _ = unembed(model)
        g = final_norm_gain(model)
        if self.ids:
            rows = torch.stack([output_vector(model, n) for n in self.ids]) * g
            self.G = rows @ W.T  # [n, V]
        else:
            self.G = torch.zeros(0, W.shape[0], device=W.device)
        self.layer = torch.tensor([n.layer for n in self.ids], dtype=torch.long, device=W.device)


def _exact(z0: Tensor, lse0: Tensor, base: Tensor, G: Tensor, coef: Tensor, t: int, rows: Tensor | None = None,
           step: int = 128) -> Tensor:
    """Imp = d_t - (logsumexp(z0[base] + d) - logsumexp(z0[base])) with ``d = coef * G[rows]``."""
    out = torch.empty(coef.numel(), dtype=torch.float64, device=G.device)
    for s in range(0, coef.numel(), step):
        g = G[s : s + step] if rows is None else G[rows[s : s + step]]
        d = g * coef[s : s + step, None]
        b = base[s : s + step]
        dt = d[:, t].clone()
        d += z0[b]
        lse = torch.logsumexp(d, -1)
        out[s : s + step] = dt.double() - (lse.double() - lse0[b].double())
    return out


def _prompt_scores(model, data: PromptData, cats: np.ndarray, units: dict[str, _Units], attn_top, a) -> dict[str, np.ndarray]:
    """Scores of one prompt: kind -> ``[n_neurons, 4]``."""
    L, T, t = a.n_layers, data.T, data.target_id
    z0 = readout(model, data, torch.cat([data.x_mid, data.x_pre]))  # FFN of l -> row l; attention of l -> L + l
    lse0 = torch.logsumexp(z0, -1)
    inv = 1.0 / data.scale
    dev = data.m.device
    cat_t = torch.as_tensor(cats, dtype=torch.long, device=dev)
    out: dict[str, np.ndarray] = {}
    if "ffn_value" in units:
        u = units["ffn_value"]
        idx = torch.tensor([n.index for n in u.ids], dtype=torch.long, device=dev)
        coef = data.m[u.layer, -1, idx]
        if data.r_mlp is not None:
            coef = coef / data.r_mlp[u.layer, -1]
        sc = _exact(z0, lse0, u.layer, u.G, coef * inv, t)
        res = np.zeros((len(u.ids), len(POSITION_CATEGORIES)))
        res[:, int(cats[-1])] = sc.cpu().numpy()
        out["ffn_value"] = res
    need_attn = [k for k in ("attn_value",) if k in units]
    if need_attn:
        u = units["attn_value"]
        n = len(u.ids)
        h = torch.tensor([x.head for x in u.ids], dtype=torch.long, device=dev)
        j = torch.tensor([x.dim for x in u.ids], dtype=torch.long, device=dev)
        coef = data.alpha[u.layer, h, :] * data.v[u.layer, :, h // a.group, j].reshape(n, T) if n else torch.zeros(0, T, device=dev)
        # data.v[layer, :, g, j] with tensor indices -> [n, T]
        if data.r_attn is not None:
            coef = coef / data.r_attn[u.layer, -1][:, None]
        rows = torch.arange(n, device=dev).repeat_interleave(T)
        sc = _exact(z0, lse0, (u.layer + L).repeat_interleave(T), u.G, (coef * inv).reshape(-1), t, rows=rows)
        res = np.zeros((n, len(POSITION_CATEGORIES)))
        np.add.at(res, (rows.cpu().numpy(), np.tile(cats, n)), sc.cpu().numpy())
        out["attn_value"] = res
    if "ffn_query" in units:
        u = units["ffn_query"]
        top = [NeuronId.parse(x) for x in attn_top][:N_QUERY_ATTN]
        if any(x.position is None for x in top):
            raise StudyError("The query scores need positioned attention neurons (attnL{l}H{h}D{d}P{p}).")
        tu = _Units(model, [str(x) for x in top])
        h = torch.tensor([x.head for x in top], dtype=torch.long, device=dev)
        j = torch.tensor([x.dim for x in top], dtype=torch.long, device=dev)
        p = torch.tensor([x.position for x in top], dtype=torch.long, device=dev)
        coef = data.alpha[tu.layer, h, p] * data.v[tu.layer, p, h // a.group, j]
        if data.r_attn is not None:
            coef = coef / data.r_attn[tu.layer, -1]
        s_a = _exact(z0, lse0, tu.layer + L, tu.G, coef * inv, t)
        _, Qp = query_scores(model, data, [(x.layer, x.head, x.dim, x.position) for x in top], s_a)
        idx = torch.tensor([x.index for x in u.ids], dtype=torch.long, device=dev)
        qp = Qp[u.layer, idx]  # [n, T]
        res = torch.zeros(len(u.ids), len(POSITION_CATEGORIES), dtype=torch.float64, device=dev)
        res.index_add_(1, cat_t, qp)
        out["ffn_query"] = res.cpu().numpy()
    return out


def _logodds_rows(model, a, diff: Tensor) -> tuple[Tensor, Tensor]:
    """``<w * g_final, diff>`` for every FFN unit ``[L, d_mlp]`` and attention unit ``[L, H, dh]``."""
    v = diff * final_norm_gain(model)
    rf, ra = [], []
    for l in range(a.n_layers):
        w = layer_weights(model, l)
        vf = v * w.post_mlp if w.post_mlp is not None else v
        va = v * w.post_attn if w.post_attn is not None else v
        rf.append(vf @ w.down)
        ra.append((va @ w.o).reshape(a.n_heads, a.d_head))
    return torch.stack(rf), torch.stack(ra)


def _prompt_logodds(data: PromptData, cats: np.ndarray, rows: tuple[Tensor, Tensor], a) -> tuple[Tensor, Tensor]:
    """Direct log-odds effects of all value units of one prompt, by position category.

    Returns ``([L, d_mlp, 4], [L, H, dh, 4])`` float64.
    """
    rf, ra = rows
    inv = 1.0 / data.scale
    e_f = data.m[:, -1, :]
    if data.r_mlp is not None:
        e_f = e_f / data.r_mlp[:, -1:]
    dev = data.m.device
    ffn = torch.zeros(a.n_layers, a.d_mlp, len(POSITION_CATEGORIES), dtype=torch.float64, device=dev)
    ffn[:, :, int(cats[-1])] = (e_f * rf * inv).double()
    g = torch.arange(a.n_heads, device=dev) // a.group
    coef = data.alpha[:, :, None, :] * data.v[:, :, g, :].permute(0, 2, 3, 1)  # [L, H, dh, T]
    if data.r_attn is not None:
        coef = coef / data.r_attn[:, -1, None, None, None]
    eff = (coef * ra[..., None] * inv).double()
    attn = torch.zeros(a.n_layers, a.n_heads, a.d_head, len(POSITION_CATEGORIES), dtype=torch.float64, device=dev)
    attn.index_add_(3, torch.as_tensor(cats, dtype=torch.long, device=dev), eff)
    return ffn, attn


def neuron_scores(
    model,
    prompts: Sequence[str],
    targets: Sequence[Any],
    neurons: Mapping[str, Sequence["str | NeuronId"]],
    *,
    words: Sequence[str | None] | None = None,
    attn_top: Sequence[Sequence["str | NeuronId"]] | None = None,
    contrasts: Sequence[str] | None = None,
    batch_size: int = 8,
    start: bool = True,
    threads: int | None = 2,
) -> NeuronScores:
    """Exact per-prompt scores of given neurons (the engine's formulas, for a fixed neuron list).

    Args:
        model: a loaded bridge (float32).
        prompts, targets: as for :func:`analysis_lib.attribution.dataset_attribution`.
        neurons: kind -> neuron ids; attention ids may carry a position (it is dropped: the
            neuron is scored at every source position).
        words: per prompt, the word whose tokens form the "word" position category.
        attn_top: per prompt, the prompt's top attention value neurons (positioned ids, best
            first, at least 30, e.g. ``DatasetAttribution.per_prompt_topk["attn_value"]``);
            needed for ``ffn_query``.
        contrasts: per prompt, a contrast token (e.g. the other gender's token). Then the
            *direct log-odds effect* of every FFN and attention value unit is accumulated:
            ``(LP_t - LP_c)(x + s) - (LP_t - LP_c)(x) = z_t(s) - z_c(s)``, the signed-target
            ablation of method_spec §6 A1. It is exactly linear in the subvalue (the
            normalizer cancels), so it is computed for all units at little cost.

    Returns:
        :class:`NeuronScores`.
    """
    prompts = list(prompts)
    targets = list(targets)
    if len(targets) != len(prompts):
        raise StudyError(f"{len(prompts)} prompts but {len(targets)} targets.")
    if words is not None and len(words) != len(prompts):
        raise StudyError(f"{len(prompts)} prompts but {len(words)} words.")
    if "ffn_query" in neurons and (attn_top is None or len(attn_top) != len(prompts)):
        raise StudyError("ffn_query scores need attn_top: one list of top attention neurons per prompt.")
    a = arch(model)
    has_start = start and model.start_token_id is not None
    ids = {k: [str(NeuronId.parse(x).aggregated) for x in v] for k, v in neurons.items()}
    for k in ids:
        _family(k)
    res = {k: np.zeros((len(prompts), len(v), len(POSITION_CATEGORIES))) for k, v in ids.items()}
    if contrasts is not None and len(contrasts) != len(prompts):
        raise StudyError(f"{len(prompts)} prompts but {len(contrasts)} contrast tokens.")
    lo_sum = lo_prompt = None
    if contrasts is not None:
        dev = next(model.original_model.parameters()).device
        lo_sum = {"ffn_value": torch.zeros(a.n_layers, a.d_mlp, len(POSITION_CATEGORIES), dtype=torch.float64, device=dev),
                  "attn_value": torch.zeros(a.n_layers, a.n_heads, a.d_head, len(POSITION_CATEGORIES), dtype=torch.float64,
                                            device=dev)}
        lo_prompt = {k: np.zeros((len(prompts), len(v))) for k, v in ids.items() if k in lo_sum}
    lo_rows: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    meta = []
    with torch_threads(threads), torch.inference_mode():
        units = {k: _Units(model, v) for k, v in ids.items()}
        for s in range(0, len(prompts), batch_size):
            chunk = list(range(s, min(s + batch_size, len(prompts))))
            datas = forward_data(model, [prompts[i] for i in chunk], [targets[i] for i in chunk], start=start)
            for i, data in zip(chunk, datas):
                T = data.T
                wp = word_positions(model, prompts[i], words[i] if words else None, start=start)
                cats = np.array([POSITION_CATEGORIES.index(position_category(p, T, wp, has_start)) for p in range(T)])
                got = _prompt_scores(model, data, cats, units, attn_top[i] if attn_top is not None else None, a)
                for k, v in got.items():
                    res[k][i] = v
                if contrasts is not None:
                    c = _resolve_token(model, contrasts[i])
                    key = (data.target_id, c)
                    if key not in lo_rows:
                        W, _ = unembed(model)
                        lo_rows[key] = _logodds_rows(model, a, W[data.target_id] - W[c])
                    ffn, attn = _prompt_logodds(data, cats, lo_rows[key], a)
                    lo_sum["ffn_value"] += ffn
                    lo_sum["attn_value"] += attn
                    for k in lo_prompt:
                        u = units[k]
                        if k == "ffn_value":
                            idx = torch.tensor([n.index for n in u.ids], dtype=torch.long, device=ffn.device)
                            lo_prompt[k][i] = ffn[u.layer, idx].sum(-1).cpu().numpy()
                        else:
                            h = torch.tensor([n.head for n in u.ids], dtype=torch.long, device=attn.device)
                            j = torch.tensor([n.dim for n in u.ids], dtype=torch.long, device=attn.device)
                            lo_prompt[k][i] = attn[u.layer, h, j].sum(-1).cpu().numpy()
                meta.append({"prompt": prompts[i], "target": model.tokenizer.decode([data.target_id]),
                             "n_tokens": T, "word_positions": wp})
    return NeuronScores(ids=ids, by_position=res, prompts=pd.DataFrame(meta),
                        logodds=None if lo_sum is None else {k: v.cpu().numpy() for k, v in lo_sum.items()},
                        logodds_prompt=lo_prompt)


def _resolve_token(model, token: Any) -> int:
    if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
        return int(token)
    return single_token_id(model, str(token))


def other_gender(targets: Sequence[str]) -> list[str]:
    """The contrast token of each biased token: ``FEMALE`` for ``MALE`` and vice versa."""
    return [FEMALE if t == MALE else MALE for t in targets]


def logodds_ranking(scores: NeuronScores, kind: str, k: int = 50) -> pd.DataFrame:
    """Top-``k`` value neurons by their summed direct log-odds effect (biased vs other token).

    Columns as the engine's dataset tables: ``id``, ``kind``, ``rank``, ``score`` (sum over
    prompts of the log-odds effect, nats), ``mean``, ``layer``, ``share_{start,word,last,other}``,
    ``important_position``.
    """
    if scores.logodds is None:
        raise StudyError("No log-odds sums: run neuron_scores with contrasts=...")
    arr = scores.logodds[kind]
    tot = arr.sum(-1).reshape(-1)
    order = np.argsort(-tot, kind="stable")[:k]
    shape = arr.shape[:-1]
    rows = []
    n = len(scores.prompts)
    for r, f in enumerate(order, 1):
        u = np.unravel_index(f, shape)
        nid = NeuronId("ffn", layer=int(u[0]), index=int(u[1])) if kind == "ffn_value" else \
            NeuronId("attn", layer=int(u[0]), head=int(u[1]), dim=int(u[2]))
        sh = arr[u] / tot[f] if tot[f] != 0 else np.full(len(POSITION_CATEGORIES), np.nan)
        row = {"id": str(nid), "kind": kind, "rank": r, "score": float(tot[f]), "mean": float(tot[f]) / n,
               "layer": nid.layer}
        row.update({f"share_{c}": float(x) for c, x in zip(POSITION_CATEGORIES, sh)})
        row["important_position"] = POSITION_CATEGORIES[int(np.nanargmax(sh))] if np.isfinite(sh).any() else "last"
        rows.append(row)
    return pd.DataFrame(rows)


def gender_specificity(scores: NeuronScores, kind: str, neurons: Sequence[str], *, n_boot: int = 1000, seed: int = 0):
    """How much of a neuron set's log-probability increase is gender-specific.

    Ratio of the summed direct log-odds effect (biased token versus the other gender's token)
    to the summed log-probability increase of the biased token, over prompts and neurons, with
    a bootstrap interval over prompts. About 0: the neurons raise *man* and *woman* alike
    (generic "person" neurons); about 1 or more: they separate the genders.
    """
    col = {x: i for i, x in enumerate(scores.ids[kind])}
    sel = [col[str(NeuronId.parse(x).aggregated)] for x in neurons]
    lo = scores.logodds_prompt[kind][:, sel].sum(1)
    imp = scores.total(kind)[:, sel].sum(1)
    return bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), lo, imp, n_boot=n_boot, seed=seed, vectorized=True)


# ----------------------------------------------------------------------------- summaries with CIs


def _mean_ci(x: np.ndarray, n_boot: int, seed: int):
    return bootstrap_ci(lambda v: v.mean(-1), np.asarray(x, dtype=float), n_boot=n_boot, seed=seed, vectorized=True)


def control_summary(
    scores: NeuronScores, kind: str, top: Sequence[str], control: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Mean per-prompt summed score of a top set versus a random control set of the same kind.

    Returns:
        ``{"top": BootstrapResult, "random": BootstrapResult, "n_prompts": int, "n_top": int,
        "n_random": int}``: the means over prompts of the summed scores (log-probability
        increase of the biased token, summed over neurons), each with a bootstrap interval over
        prompts.
    """
    tot = scores.total(kind)
    col = {x: i for i, x in enumerate(scores.ids[kind])}
    st = tot[:, [col[str(NeuronId.parse(x).aggregated)] for x in top]].sum(1)
    sr = tot[:, [col[str(NeuronId.parse(x).aggregated)] for x in control]].sum(1)
    return {
        "top": _mean_ci(st, n_boot, seed),
        "random": _mean_ci(sr, n_boot, seed),
        "n_prompts": int(tot.shape[0]),
        "n_top": len(top),
        "n_random": len(control),
    }


def position_shares(scores: NeuronScores, kind: str, neurons: Sequence[str] | None = None, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Share of the summed score of ``neurons`` (default: all columns) per position category.

    The share of category c is ``sum_prompts sum_neurons score_c / sum_prompts sum_neurons
    score``; scores are signed, so a share can fall outside [0, 1], but the shares sum to 1.
    The interval resamples prompts.

    Returns:
        One row per category: ``position``, ``share``, ``low``, ``high``.
    """
    bp = scores.by_position[kind]
    if neurons is not None:
        col = {x: i for i, x in enumerate(scores.ids[kind])}
        bp = bp[:, [col[str(NeuronId.parse(x).aggregated)] for x in neurons]]
    per = bp.sum(1)  # [n_prompts, 4]
    tot = per.sum(1)
    rows = []
    for c, name in enumerate(POSITION_CATEGORIES):
        ci = bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), per[:, c], tot, n_boot=n_boot, seed=seed, vectorized=True)
        rows.append({"position": name, "share": ci.estimate, "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows)


def neuron_position_table(table: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """The engine's dataset table reduced to its position columns, with a ``dominant`` label.

    ``dominant`` is the important position (the category with the largest share) when that
    share exceeds one half, else ``"mixed"``.
    """
    df = table.head(n) if n is not None else table
    cols = [f"share_{c}" for c in POSITION_CATEGORIES]
    out = df[["id", "rank", "layer", "score"] + cols + ["important_position"]].copy()
    top_share = out[cols].max(axis=1)
    out["dominant"] = np.where(top_share > 0.5, out["important_position"], "mixed")
    return out.reset_index(drop=True)


def start_activations(model, neurons: Sequence[str], prompts: Sequence[str]) -> pd.DataFrame:
    """FFN coefficients at the start position versus elsewhere, over ``prompts``.

    With causal attention the start position's residual stream is the same in every prompt,
    so its coefficient is prompt-independent (``start_sd`` is zero up to float noise).

    Returns:
        One row per FFN neuron: ``id``, ``start_coef`` (mean coefficient at position 0),
        ``start_sd``, ``other_abs`` (mean |coefficient| at the other positions), ``ratio``.
    """
    with torch.inference_mode():
        datas = forward_data(model, list(prompts), None)
    rows = []
    for x in neurons:
        n = NeuronId.parse(x)
        if n.kind != "ffn":
            raise StudyError(f"start_activations takes FFN neurons; got {n}.")
        st = np.array([float(d.m[n.layer, 0, n.index]) for d in datas])
        other = np.concatenate([d.m[n.layer, 1:, n.index].abs().cpu().numpy() for d in datas])
        oa = float(other.mean()) if other.size else float("nan")
        rows.append({"id": str(n), "start_coef": float(st.mean()), "start_sd": float(st.std()),
                     "other_abs": oa, "ratio": abs(float(st.mean())) / oa if oa else float("inf")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- vocabulary projection


def projection_table(model, neurons: Sequence["str | NeuronId"], k: int = 10, *, min_gendered: int = 2,
                     chunk: int = 256) -> pd.DataFrame:
    """Top and last ``k`` tokens of many neurons' output vectors read through ``g_final * W_U``.

    The same readout as :func:`analysis_lib.attribution.vocab_projection`, batched. Gendered
    tokens are those of :data:`analysis_lib.commonwords.FEMALE_WORDS` / ``MALE_WORDS``.

    Returns:
        One row per neuron: ``id``, ``top_tokens``, ``last_tokens`` (lists of strings, most
        promoted / most suppressed first), ``female_top``, ``male_top``, ``female_last``,
        ``male_last`` (counts), ``gendered`` (at least ``min_gendered`` gendered tokens among the
        ``2k``; one alone is often a pronoun among function words) and
        ``direction``: ``"female"`` when the top side is female or the last side male (and
        not the reverse), ``"male"`` for the mirror case, ``"mixed"`` or ``""``.
    """
    ids = [NeuronId.parse(x).aggregated for x in neurons]
    W, _ = unembed(model)
    g = final_norm_gain(model)
    dec = model.tokenizer.decode
    rows = []
    with torch.inference_mode():
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            z = (torch.stack([output_vector(model, n) for n in part]) * g) @ W.T
            top = torch.topk(z, k, dim=-1).indices
            last = torch.topk(z, k, dim=-1, largest=False).indices
            for n, ti, li in zip(part, top.tolist(), last.tolist()):
                tt = [dec([i]) for i in ti]
                lt = [dec([i]) for i in li]
                gt = [token_gender(x) for x in tt]
                gl = [token_gender(x) for x in lt]
                fem = gt.count("female") + gl.count("male")
                mal = gt.count("male") + gl.count("female")
                direction = "" if fem + mal == 0 else ("female" if mal == 0 else ("male" if fem == 0 else "mixed"))
                rows.append({
                    "id": str(n), "top_tokens": tt, "last_tokens": lt,
                    "female_top": gt.count("female"), "male_top": gt.count("male"),
                    "female_last": gl.count("female"), "male_last": gl.count("male"),
                    "gendered": fem + mal >= min_gendered, "direction": direction,
                })
    return pd.DataFrame(rows)


def gendered_share(flags: Sequence[bool], *, n_boot: int = 1000, seed: int = 0):
    """Share of neurons whose projection mentions a gendered token, with a bootstrap interval."""
    return _mean_ci(np.asarray(flags, dtype=float), n_boot, seed)


def fmt_tokens(tokens: Sequence[str], n: int = 5) -> str:
    """``[herself, woman, actress]``-style display of the first ``n`` tokens."""
    return "[" + ", ".join(repr(t.strip()) if t.strip() != t or not t.strip() else t for t in tokens[:n]) + "]"


# ----------------------------------------------------------------------------- one prompt's path


@dataclass
class CircuitPath:
    """The neuron path of one prompt.

    Attributes:
        result: the engine's :class:`~analysis_lib.attribution.AttributionResult`.
        tokens: the prompt's tokens (start token first).
        nodes: one row per shown neuron: ``stage`` ("query FFN", "attention", "value FFN"),
            ``rank``, ``id``, ``layer``, ``head`` (attention), ``position`` (source position
            for attention, important position for query neurons, last for value neurons),
            ``token``, ``category`` (start/word/last/other), ``score``.
        edges: query FFN neuron -> attention neuron edges: ``source``, ``target``,
            ``source_layer``, ``target_layer``, ``position``, ``weight`` (the part of the query
            neuron's score that comes through that attention neuron, ``c_i(a) * s_a``).
    """

    result: AttributionResult
    tokens: list[str]
    nodes: pd.DataFrame
    edges: pd.DataFrame


def circuit_path(
    model, prompt: str, target: Any, *, word: str | None = None, n_query: int = 8, n_attn: int = 8,
    n_value: int = 8, n_edges: int = 3, threads: int | None = 2,
) -> CircuitPath:
    """Query FFN neurons (shallow) -> attention neurons -> value FFN neurons (deep) of one prompt.

    The query scores come from the prompt's top-30 attention neurons (as in the engine); each
    query neuron's score is split over those attention neurons by scoring them one at a time
    (``query_scores`` is linear in the attention scores), which gives the edges. Each query
    neuron keeps its ``n_edges`` strongest edges.
    """
    res = attribute(model, prompt, target, top_k=max(n_query, n_attn, n_value, N_QUERY_ATTN),
                    kinds=KINDS, threads=threads)
    T = len(res.tokens)
    wp = word_positions(model, prompt, word)
    has_start = model.start_token_id is not None

    def cat(p: int) -> str:
        return position_category(int(p), T, wp, has_start)

    nodes = []
    for stage, kind, n in (("query FFN", "ffn_query", n_query), ("attention", "attn_value", n_attn), ("value FFN", "ffn_value", n_value)):
        for r in res.top(kind, n).itertuples():
            nid = r.neuron
            nodes.append({"stage": stage, "rank": int(r.rank), "id": r.id, "layer": nid.layer,
                          "head": nid.head if nid.kind == "attn" else None, "position": int(r.position),
                          "token": res.tokens[int(r.position)], "category": cat(r.position), "score": float(r.score)})
    nodes = pd.DataFrame(nodes)
    with torch_threads(threads), torch.inference_mode():
        data = forward_data(model, prompt, res.target_id)[0]
        att = res.top("attn_value", N_QUERY_ATTN)
        qn = [x for x in res.top("ffn_query", n_query).neuron]
        edges = []
        for r in att.itertuples():
            a = r.neuron
            Q, _ = query_scores(model, data, [(a.layer, a.head, a.dim, a.position)], [float(r.score)])
            for q in qn:
                w = float(Q[q.layer, q.index])
                if q.layer < a.layer and w != 0.0:
                    edges.append({"source": str(q), "target": r.id, "source_layer": q.layer, "target_layer": a.layer,
                                  "position": int(a.position), "weight": w})
    edges = pd.DataFrame(edges, columns=["source", "target", "source_layer", "target_layer", "position", "weight"])
    if len(edges):
        edges = (edges.sort_values("weight", ascending=False, kind="stable").groupby("source", sort=False)
                 .head(n_edges).reset_index(drop=True))
    return CircuitPath(result=res, tokens=res.tokens, nodes=nodes, edges=edges)


def plot_path(ax, path: CircuitPath, n_labels: int = 2, min_edge: float = 0.05, n_layers: int | None = None) -> None:
    """Draw a :class:`CircuitPath`: layer on x, token position on y, marker area ~ score.

    The ``n_labels`` best neurons of each stage are named; a label that would overlap one
    already placed moves up or down a line at a time until it is free. Edges weaker than
    ``min_edge`` times the strongest are left out; attention neurons that a drawn edge feeds
    but that are not among the shown nodes appear as open circles. The legend sits under the
    axes, so that the figure keeps the page's width. Label the axes before calling this: the
    figure's layout is fixed (``tight_layout``) before the labels are placed, and the x axis
    spans ``n_layers`` layers when given.
    """
    import seaborn as sns

    pal = sns.color_palette("colorblind")
    style = {"query FFN": ("^", pal[0]), "attention": ("o", pal[1]), "value FFN": ("s", pal[2])}
    nodes = path.nodes
    smax = float(nodes.score.abs().max()) if len(nodes) else 1.0
    T = len(path.tokens)
    pos_of = {(r.stage, r.id): r for r in nodes.itertuples()}
    edges = path.edges
    if len(edges):
        edges = edges[edges.weight >= min_edge * edges.weight.max()]
    shown = set(nodes[nodes.stage == "attention"].id)
    extra = edges[~edges.target.isin(shown)].drop_duplicates("target")
    ax.scatter(extra.target_layer, extra.position, s=30, facecolors="none", edgecolors=pal[1], linewidth=1.0,
               zorder=3, label="attention (fed, not top-8)")
    for e in edges.itertuples():
        s = pos_of.get(("query FFN", e.source))
        if s is None:
            continue
        ax.annotate("", xy=(e.target_layer, e.position), xytext=(s.layer, s.position),
                    arrowprops=dict(arrowstyle="->", color="dimgrey", lw=1.0, alpha=0.7,
                                    connectionstyle="arc3,rad=-0.1"))
    for r in nodes[nodes.stage == "attention"].itertuples():  # attention carries p -> last position
        ax.annotate("", xy=(r.layer, T - 1), xytext=(r.layer, r.position),
                    arrowprops=dict(arrowstyle="->", color=pal[1], lw=0.8, alpha=0.5, ls="--"))
    for stage, (marker, color) in style.items():
        sub = nodes[nodes.stage == stage]
        ax.scatter(sub.layer, sub.position, s=40 + 400 * sub.score.abs() / smax, marker=marker, color=color,
                   edgecolor="black", linewidth=0.5, label=stage, alpha=0.85, zorder=3)
    ax.set_yticks(range(T))
    ax.set_yticklabels([f"{i}: {t!r}" for i, t in enumerate(path.tokens)])
    ax.set_ylim(-0.6, T - 0.1 + 0.4)  # room above the last row for its labels
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=MIN_FONT_PT + 1, markerscale=0.6,
              frameon=False)
    if n_layers is not None:
        ax.set_xlim(-1, n_layers)
    ax.figure.tight_layout()
    renderer = ax.figure.canvas.get_renderer()
    placed = []  # window extents of the labels so far
    line = MIN_FONT_PT + 3  # points between two stacked labels
    top = max(1, int(nodes.layer.max())) if len(nodes) else 1
    for stage, (_, color) in style.items():
        for r in nodes[nodes.stage == stage].head(n_labels).itertuples():
            right = r.layer > 0.75 * top
            ann = ax.annotate(r.id, (r.layer, r.position), textcoords="offset points", xytext=(0, 0),
                              ha="right" if right else "left", fontsize=MIN_FONT_PT, color=color,
                              fontweight="bold", zorder=4)
            dx = -8 if right else 6
            for dy in (8, -16, 8 + line, -16 - line, 8 + 2 * line, -16 - 2 * line):
                ann.set_position((dx, dy))
                box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
                if not any(box.overlaps(b) for b in placed):
                    break
            placed.append(ann.get_window_extent(renderer))


# ----------------------------------------------------------------------------- shared frequency


def incidence(lists: Sequence[Sequence["str | NeuronId"]], K: int | None = None, *, aggregate_positions: bool = True):
    """The prompt x neuron membership matrix of per-prompt top-K lists.

    Returns:
        ``(ids, M)``: neuron id strings (sorted) and a boolean ``[n_prompts, n_ids]`` matrix,
        ``M[p, n]`` = neuron n is in prompt p's top-K.
    """
    names = []
    for lst in lists:
        ks = set()
        for x in list(lst)[: K if K is not None else None]:
            nid = NeuronId.parse(x)
            ks.add(str(nid.aggregated if aggregate_positions else nid))
        names.append(ks)
    ids = sorted(set().union(*names)) if names else []
    col = {x: i for i, x in enumerate(ids)}
    M = np.zeros((len(lists), len(ids)), dtype=bool)
    for p, ks in enumerate(names):
        M[p, [col[x] for x in ks]] = True
    return ids, M


def shared_frequency_table(lists: Sequence[Sequence["str | NeuronId"]], K: int) -> pd.DataFrame:
    """Every neuron's shared frequency at K (fraction of prompts whose top-K holds it), sorted.

    Columns ``rank`` (1 = most shared), ``id``, ``frequency``. Ties keep id order.
    """
    ids, M = incidence(lists, K)
    f = M.mean(0) if len(lists) else np.zeros(0)
    order = np.argsort(-f, kind="stable")
    return pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "id": [ids[i] for i in order], "frequency": f[order]})


def shared_frequency_summary(lists: Sequence[Sequence["str | NeuronId"]], K: int, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Shared frequency at K with bootstrap intervals over prompts.

    Returns:
        ``{"mean_top_K": BootstrapResult}`` (mean shared frequency of the K most shared
        neurons, re-selected in each replicate), ``"max"`` (the most shared neuron's
        frequency), ``"n_half"`` (neurons in at least half of the prompts), ``"top_id"``.
    """
    ids, M = incidence(lists, K)
    n = M.shape[0]
    Mf = M.astype(np.float32)
    k = min(K, M.shape[1])

    def stats(w: np.ndarray) -> np.ndarray:  # w: [B, n] resampling counts
        f = (w @ Mf) / n
        part = -np.partition(-f, k - 1, axis=1)[:, :k]
        return np.stack([part.mean(1), part.max(1), (f >= 0.5).sum(1)], 1)

    est = stats(np.ones((1, n), dtype=np.float32))[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n), dtype=np.float32)
    np.add.at(w, (np.repeat(np.arange(n_boot), n), idx.ravel()), 1.0)
    reps = stats(w)
    def res(j):
        lo, hi = np.quantile(reps[:, j], [0.025, 0.975])
        return BootstrapResult(estimate=float(est[j]), low=float(lo), high=float(hi), n=n, n_boot=n_boot, samples=reps[:, j])

    f0 = M.mean(0)
    return {"mean_top_K": res(0), "max": res(1), "n_half": int(est[2]), "top_id": ids[int(np.argmax(f0))] if ids else None}


# ----------------------------------------------------------------------------- tables for saving


def ranking_frame(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The engine's dataset tables as one parquet-ready frame (the ``neuron`` objects dropped)."""
    parts = [df.drop(columns=["neuron"]) for k, df in tables.items()]
    return pd.concat(parts, ignore_index=True)


def per_prompt_frame(per_prompt_topk: Mapping[str, Sequence[Sequence["NeuronId | str"]]], prompts: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt top-K lists as a long parquet-ready frame.

    Columns: ``kind``, ``prompt_index``, ``word``, ``target``, ``rank``, ``id`` (attention ids
    with their source position), ``aggregated_id``, ``position`` (attention only, else -1).
    """
    rows = []
    for kind, lists in per_prompt_topk.items():
        for p, lst in enumerate(lists):
            for r, x in enumerate(lst, 1):
                n = NeuronId.parse(x)
                rows.append((kind, p, prompts.word.iloc[p], prompts.target.iloc[p], r, str(n), str(n.aggregated),
                             -1 if n.position is None else n.position))
    return pd.DataFrame(rows, columns=["kind", "prompt_index", "word", "target", "rank", "id", "aggregated_id", "position"])


def layer_counts(tables: Mapping[str, pd.DataFrame], n: int, n_layers: int) -> pd.DataFrame:
    """Counts of the top-``n`` neurons per kind and layer (every layer listed, zeros included)."""
    rows = []
    for kind, df in tables.items():
        c = df.head(n).layer.value_counts()
        for l in range(n_layers):
            rows.append({"kind": kind, "layer": l, "count": int(c.get(l, 0))})
    return pd.DataFrame(rows)


def layer_summary(tables: Mapping[str, pd.DataFrame], n: int, n_layers: int) -> pd.DataFrame:
    """Median layer and share in the first / last third of the layers of the top-``n`` per kind."""
    rows = []
    for kind, df in tables.items():
        ly = df.head(n).layer.to_numpy()
        rows.append({"kind": kind, "median_layer": float(np.median(ly)), "shallow_share": float((ly < n_layers / 3).mean()),
                     "deep_share": float((ly >= 2 * n_layers / 3).mean())})
    return pd.DataFrame(rows)


def control_frame(control: Mapping[str, dict], heldout: Mapping[str, dict] | None = None,
                  names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Top-k versus random sums (from :func:`control_summary`) as one table, one row per kind.

    Columns ``top``, ``top_low``, ``top_high``, ``random``, ``random_low``, ``random_high`` and the
    same with a ``heldout_`` prefix (NaN where no held-out check was run); ``n_prompts``.
    """
    rows = []
    for k, c in control.items():
        row = {"kind": (names or {}).get(k, k), "n_prompts": c["n_prompts"]}
        for prefix, src in (("", c), ("heldout_", (heldout or {}).get(k))):
            for side in ("top", "random"):
                b = src[side] if src else None
                row[f"{prefix}{side}"] = b.estimate if b else np.nan
                row[f"{prefix}{side}_low"] = b.low if b else np.nan
                row[f"{prefix}{side}_high"] = b.high if b else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("kind")


def gender_neuron_table(proj: Mapping[str, pd.DataFrame], tables: Mapping[str, pd.DataFrame],
                        names: Mapping[str, str] | None = None, n_tokens: int = 5) -> pd.DataFrame:
    """The gendered neurons among the top lists, like the paper's Table 2.

    Args:
        proj: kind -> :func:`projection_table` of that kind's top neurons.
        tables: kind -> the engine's dataset table (for rank, layer and score).

    Returns:
        One row per gendered neuron: ``kind``, ``rank``, ``id``, ``layer``, ``score``,
        ``direction``, ``top`` and ``last`` (the first ``n_tokens`` tokens, as text).
    """
    rows = []
    for k, p in proj.items():
        t = tables[k].set_index("id")
        for r in p[p.gendered].itertuples():
            rows.append({"kind": (names or {}).get(k, k), "rank": int(t.loc[r.id, "rank"]), "id": r.id,
                         "layer": int(t.loc[r.id, "layer"]), "score": float(t.loc[r.id, "score"]),
                         "direction": r.direction, "top": fmt_tokens(r.top_tokens, n_tokens),
                         "last": fmt_tokens(r.last_tokens, n_tokens)})
    cols = ["kind", "rank", "id", "layer", "score", "direction", "top", "last"]
    return pd.DataFrame(rows, columns=cols)


def projection_frame(proj: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """All projection tables in one parquet-ready frame with a ``kind`` column."""
    return pd.concat([p.assign(kind=k) for k, p in proj.items()], ignore_index=True)


def plot_shares(ax, shares: pd.DataFrame) -> None:
    """Bars of :func:`position_shares` (a ``kind`` column for the hue) with their intervals."""
    import seaborn as sns

    cats = list(POSITION_CATEGORIES)
    kinds = list(dict.fromkeys(shares["kind"]))
    pal = sns.color_palette("colorblind")
    width = 0.8 / max(1, len(kinds))
    x = np.arange(len(cats))
    for i, k in enumerate(kinds):
        sub = shares[shares["kind"] == k].set_index("position").loc[cats]
        err = np.vstack([sub.share - sub.low, sub.high - sub.share]).clip(min=0)
        ax.bar(x + (i - (len(kinds) - 1) / 2) * width, sub.share, width, yerr=err, capsize=3, label=k,
               color=pal[i + 1])
    ax.set_xticks(x)
    ax.set_xticklabels(cats)
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=10)


def plot_neuron_shares(ax, table: pd.DataFrame) -> None:
    """Stacked bars of each neuron's position shares (a :func:`neuron_position_table`)."""
    import seaborn as sns

    pal = sns.color_palette("colorblind")
    colors = {"start": pal[0], "word": pal[3], "last": pal[2], "other": pal[7]}
    x = np.arange(len(table))
    pos_base = np.zeros(len(table))
    neg_base = np.zeros(len(table))
    for c in POSITION_CATEGORIES:
        v = table[f"share_{c}"].to_numpy(dtype=float)
        base = np.where(v >= 0, pos_base, neg_base)
        ax.bar(x, v, bottom=base, color=colors[c], label=c, width=0.8)
        pos_base += np.where(v >= 0, v, 0)
        neg_base += np.where(v < 0, v, 0)
    ax.set_xticks(x)
    ax.set_xticklabels(table["id"], rotation=60, ha="right", fontsize=10)
    ax.axhline(0, color="black", lw=0.8)
    ax.legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="position", frameon=False)


# ----------------------------------------------------------------------------- weight-level gender neurons


def static_gender_neurons(model, n: int = 12, *, female: str = FEMALE, male: str = MALE, k: int = 8) -> pd.DataFrame:
    """FFN neurons whose output vector best separates ``female`` from ``male`` in the vocabulary.

    The score is a z-score: ``(z[female] - z[male]) / std_v z[v]`` with ``z = (w * g_final) @ W_U.T``
    the neuron's vocabulary projection; it does not depend on any prompt. Positive: the neuron
    promotes the female token over the male one when its coefficient is positive.

    Returns:
        The ``n`` neurons with the largest ``|gender_z|``: ``id``, ``layer``, ``gender_z`` and
        the :func:`projection_table` columns (``k`` tokens per side).
    """
    a = arch(model)
    W, _ = unembed(model)
    g = final_norm_gain(model)
    f, m = single_token_id(model, female), single_token_id(model, male)
    zs = []
    with torch.inference_mode():
        # std over the vocabulary of z = u @ W.T is sqrt(u C u) with C the covariance of W's rows
        Wc = W - W.mean(0)
        C = (Wc.T @ Wc) / (W.shape[0] - 1)
        for l in range(a.n_layers):
            w = layer_weights(model, l)
            rows = w.down.T * (g * w.post_mlp if w.post_mlp is not None else g)  # [d_mlp, d]
            sd = ((rows @ C) * rows).sum(1).clamp(min=0).sqrt()
            zs.append((rows @ (W[f] - W[m])) / sd)
    zf = torch.stack(zs).flatten()
    order = torch.topk(zf.abs(), n).indices
    ids = [str(NeuronId("ffn", layer=int(i) // a.d_mlp, index=int(i) % a.d_mlp)) for i in order]
    p = projection_table(model, ids, k)
    p.insert(1, "layer", [NeuronId.parse(x).layer for x in ids])
    p.insert(2, "gender_z", zf[order].cpu().numpy())
    return p


def neuron_activity(scores: NeuronScores, kind: str, neurons: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """What given value neurons do on the scored prompts.

    Returns:
        One row per neuron: ``id``, ``mean_score`` with ``low``/``high`` (mean log-probability
        increase of the biased token per prompt, bootstrap interval), ``mean_logodds`` (mean
        direct log-odds effect, biased versus other token) and ``logodds_rank`` (rank of its
        summed log-odds effect among all units of the kind, 1 = most bias-raising) and
        ``abs_rank`` (the same by absolute value, either direction).
    """
    col = {x: i for i, x in enumerate(scores.ids[kind])}
    tot = scores.total(kind)
    lo_all = scores.logodds[kind].sum(-1).reshape(-1) if scores.logodds is not None else None
    shape = scores.logodds[kind].shape[:-1] if scores.logodds is not None else None
    rows = []
    for x in neurons:
        nid = NeuronId.parse(x).aggregated
        c = col[str(nid)]
        ci = _mean_ci(tot[:, c], n_boot, seed)
        row = {"id": str(nid), "mean_score": ci.estimate, "low": ci.low, "high": ci.high}
        if lo_all is not None:
            f = np.ravel_multi_index((nid.layer, nid.index) if nid.kind == "ffn" else (nid.layer, nid.head, nid.dim), shape)
            row["mean_logodds"] = float(scores.logodds_prompt[kind][:, c].mean())
            row["logodds_rank"] = int((lo_all > lo_all[f]).sum()) + 1
            row["abs_rank"] = int((np.abs(lo_all) > abs(lo_all[f])).sum()) + 1
        rows.append(row)
    return pd.DataFrame(rows)


def word_route(path: CircuitPath) -> dict[str, Any]:
    """The strongest query neuron at the word in a :class:`CircuitPath` and the attention neuron
    it feeds most: ``{"query", "query_layer", "attn"}`` (``"none"`` / -1 where absent)."""
    q = path.nodes[(path.nodes.stage == "query FFN") & (path.nodes.category == "word")]
    if not len(q):
        return {"query": "none", "query_layer": -1, "attn": "none"}
    qid = q.sort_values("score", ascending=False).id.iloc[0]
    e = path.edges[path.edges.source == qid].sort_values("weight", ascending=False)
    return {"query": qid, "query_layer": int(NeuronId.parse(qid).layer), "attn": e.target.iloc[0] if len(e) else "none"}


def shared_frequency_report(per_prompt_topk: Mapping[str, Sequence[Sequence[Any]]], Ks: Sequence[int], *,
                            names: Mapping[str, str] | None = None, n_boot: int = 1000, seed: int = 0):
    """Shared frequency at each K for each kind, for the chapter's table, figure and numbers.

    Returns:
        ``(table, curves, stats)``: ``table`` has one row per (kind, K) with the mean shared
        frequency of the K most shared neurons and its interval, the maximum, the most shared
        neuron and the number of neurons in at least half of the prompts; ``curves`` is
        :func:`shared_frequency_table` (first K rows) for every (kind, K) with ``kind`` and
        ``K`` columns; ``stats[(kind, K)]`` is :func:`shared_frequency_summary`'s dict.
    """
    rows, curves, stats = [], [], {}
    for kind, lists in per_prompt_topk.items():
        label = (names or {}).get(kind, kind)
        for K in Ks:
            s = shared_frequency_summary(lists, K, n_boot=n_boot, seed=seed)
            stats[(kind, K)] = s
            rows.append({"kind": label, "K": K, "mean of K most shared": f"{s['mean_top_K']:.2f}",
                         "most shared": f"{s['max']:.2f}", "neuron": s["top_id"], "in ≥ half": s["n_half"]})
            curves.append(shared_frequency_table(lists, K).head(K).assign(kind=label, K=K))
    return pd.DataFrame(rows).set_index(["kind", "K"]), pd.concat(curves, ignore_index=True), stats
