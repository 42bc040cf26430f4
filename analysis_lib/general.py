"""General neurons: finding them, masking them, and what masking does inside (chapter 4).

Paper 1 {Yu & Ananiadou 2025} reports two FFN neurons in layer 2 of Llama (``ffnL2N7003``,
``ffnL2N4090``) with exceptionally high *query* scores at the ``<start>`` position. Masking just
those two collapses arithmetic (51.9 % → 7.5 %) and RACE (63.5 % → 31.5 %) and reverses the
coefficient signs of deeper arithmetic neurons for "3+5=" (its Table 3). This module holds all
the computation of the chapter that tests the claim (method_spec §1.1-1.3, §2.2 P1-C/P1-D, §6 A3).

**Finding general neurons from data** (:func:`query_scan`, :func:`rank_general`). For every
probe prompt (CommonWords noun prompts with the stereotyped target, 3-shot arithmetic and
truncated RACE questions with the correct answer's first token as target) we take the exact
top-30 attention value neurons (:func:`analysis_lib.attribution.attribute`) and split the FFN
query score of every FFN neuron by the source position of the attention neurons it feeds
(:func:`analysis_lib.attribution.query_scores`). ``q_start`` is the part at position 0 (the
start token), ``q_word`` the part at the CommonWords word's tokens. A neuron's *start score*
is the mean over the three prompt sets of its per-set mean ``q_start`` (so every set weighs the
same); general neurons are the top start scores among neurons whose summed query score is at
least half at the start token (``share_start >= 0.5``). Gender neurons (the control) are the
top neurons by summed ``q_word`` over the CommonWords prompts.

**The ablation experiment** (:func:`run_conditions`). Conditions: the model as is, the top-2
general neurons masked, 2 random neurons from the same layer(s) masked (seeded draws,
:func:`random_same_layer`), the top-2 gender neurons masked. Masking is
:func:`analysis_lib.editing.mask_neurons` (``down_proj`` column zeroed, restored bit-exactly).
Every condition is scored on the same items of the capability tasks of
:mod:`analysis_lib.capability` and on CommonWords (``mean |b|``, :mod:`analysis_lib.benchmarks`).

**The mechanism** (:func:`cna_table`). Comparative neuron analysis (method_spec §1.2): for a
sum such as "3+5=" the exact importance ``Imp(l, i) = LP_t(x_mid + s) - LP_t(x_mid)`` of FFN
value neurons in the clean run and with the general neurons masked, both read out with the
*original* final-norm scale (the clean run's ``rms(x_final[T-1])``), and the coefficients
``m[l, T-1, i]`` before and after. :func:`ffn_importance` takes the scale explicitly;
``attribution.attribute`` always uses the run's own scale, so it is used only to shortlist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import attribution as A
from . import benchmarks
from .capability import CHANCE, DEFAULT_SHOTS, capability_delta, capability_suite
from .commonwords import GENDER_TARGETS, load_commonwords, to_frame
from .data import arithmetic_problems, load_race
from .editing import mask_neurons
from .errors import StudyError
from .metrics import bootstrap_ci, paired_bootstrap_diff
from .models import load_model, token_ids
from .neurons import NeuronId, arch, as_neuron, hf_layer, hf_model, unwrap

__all__ = [
    "PROBE_SETS",
    "QueryScan",
    "activation_profile",
    "bias_wide",
    "cna_table",
    "cna_summary",
    "collapse_verdict",
    "condition_table",
    "ffn_importance",
    "general_vs_random",
    "massive_activations",
    "metric_scale",
    "probe_prompts",
    "prompt_query_positions",
    "query_scan",
    "random_same_layer",
    "replicate",
    "replicate_text",
    "rank_gender",
    "rank_general",
    "run_conditions",
    "start_token_comparison",
    "start_token_policy",
    "sum_answer",
    "sum_prompts",
    "verdict",
    "start_residual",
    "norm_profile",
    "find_sinks",
    "sink_writers",
    "shallow_verdict",
]

PROBE_SETS = ("commonwords", "arithmetic", "race")
N_QUERY_ATTN = A.N_QUERY_ATTN


# ----------------------------------------------------------------------------- probe prompts


def _first_token(model, text: str) -> int:
    ids = token_ids(model, text)
    if not ids:
        raise StudyError(f"{text!r} has no tokens.")
    return int(ids[0])


def probe_prompts(
    model,
    n_commonwords: int = 10,
    n_arithmetic: int = 5,
    n_race: int = 5,
    seed: int = 0,
    *,
    race_words: int = 50,
    shots: int = DEFAULT_SHOTS,
    commonwords_bias: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The prompts the general-neuron scan runs on, with their targets.

    * ``commonwords``: a seeded sample of the training words, spread over the five categories;
      noun prompt ("The nurse is a"); target = the stereotyped token (the more probable of the
      two :data:`analysis_lib.commonwords.GENDER_TARGETS` for this model, method_spec §6 A1).
    * ``arithmetic``: ``shots``-shot one-digit sums as in :func:`analysis_lib.capability.arithmetic_task`;
      target = the first token of the correct answer.
    * ``race``: RACE-middle questions from distinct passages, the article cut to its first
      ``race_words`` words (to keep attribution cheap), ``"Article: ...\\nQuestion: ...\\nAnswer:"``;
      target = the first token of the correct option.

    Args:
        commonwords_bias: per-word bias table of :func:`analysis_lib.benchmarks.commonwords_bias`
            for this model (its ``b`` fixes the targets); computed for the sampled words if absent.

    Returns:
        DataFrame ``set, prompt, target`` (token string), ``target_id``, ``word`` (CommonWords
        only, else ``None``).
    """
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng([int(seed), 4])
    if n_commonwords:
        frame = to_frame(load_commonwords(seed))
        train = frame[frame["split"] == "train"]
        cats = list(pd.unique(train["category"]))
        per = -(-n_commonwords // len(cats))
        picks = []
        for c in cats:
            sub = train[train["category"] == c]
            picks.append(sub.iloc[np.sort(rng.choice(len(sub), size=min(per, len(sub)), replace=False))])
        # interleave categories so that a prefix of the list still covers them
        inter = pd.concat([p.assign(_k=np.arange(len(p))) for p in picks]).sort_values(["_k"], kind="stable")
        sample = inter.head(n_commonwords).drop(columns="_k").reset_index(drop=True)
        if commonwords_bias is not None:
            b = commonwords_bias.set_index("word")["b"]
            bias = sample["word"].map(b)
            if bias.isna().any():
                bias = None
        else:
            bias = None
        if bias is None:
            bias = benchmarks.commonwords_bias(model, sample)["b"].to_numpy()
        for (_, r), bb in zip(sample.iterrows(), np.asarray(bias, dtype=float)):
            tgt = GENDER_TARGETS[0] if bb > 0 else GENDER_TARGETS[1]
            rows.append({"set": "commonwords", "prompt": r["prompt"], "target": tgt,
                         "target_id": _first_token(model, tgt), "word": r["word"]})
    if n_arithmetic:
        ar = arithmetic_problems(n_arithmetic, digits=(1,), seed=seed, shots=shots).to_pandas()
        for r in ar.itertuples():
            tid = _first_token(model, str(r.answer))
            rows.append({"set": "arithmetic", "prompt": r.prompt, "target": model.tokenizer.decode([tid]),
                         "target_id": tid, "word": None})
    if n_race:
        race = load_race("middle").to_pandas()
        passages = pd.unique(race["example_id"])
        order = rng.permutation(len(passages))[:n_race]
        for j in order:
            q = race[race["example_id"] == passages[j]].iloc[0]
            article = " ".join(str(q["context"]).split()[:race_words])
            prompt = f"Article: {article}\nQuestion: {str(q['question']).strip()}\nAnswer:"
            tid = _first_token(model, " " + str(q["choices"][int(q["label"])]).strip())
            rows.append({"set": "race", "prompt": prompt, "target": model.tokenizer.decode([tid]),
                         "target_id": tid, "word": None})
    if not rows:
        raise StudyError("No probe prompts: give at least one of n_commonwords, n_arithmetic, n_race.")
    return pd.DataFrame(rows)


def sum_answer(model, s: str) -> int:
    """The first token of the correct answer of a sum such as ``"3+5="``."""
    a, b = s.rstrip("=").split("+")
    return _first_token(model, str(int(a) + int(b)))


def sum_prompts(sums: Sequence[str], seed: int = 0, *, shots: int = DEFAULT_SHOTS) -> list[str]:
    """Sums such as ``"3+5="`` behind the same ``shots`` solved examples as the arithmetic task."""
    prefix = ""
    if shots:
        p = arithmetic_problems(1, digits=(1,), seed=seed, shots=shots).to_pandas().iloc[0]
        prefix = p["prompt"][: -len(f"{p['a']}+{p['b']}=")]
    return [prefix + s for s in sums]


# ----------------------------------------------------------------------------- start-token policy


@contextlib.contextmanager
def start_token_policy(model, token: str | None) -> Iterator[Any]:
    """Temporarily run ``model`` with another start token (``None``/``"none"``: no start token).

    Equivalent to ``load_model(name, start_token=token)`` (which only sets these attributes
    after building the bridge) without loading the weights again.
    """
    old = (model.start_token, model.start_token_id)
    if token is None or (isinstance(token, str) and token.lower() == "none"):
        new: tuple[str | None, int | None] = (None, None)
    else:
        tok = model.tokenizer
        tid = tok.convert_tokens_to_ids(token)
        if tid is None or (tid == tok.unk_token_id and token != tok.unk_token):
            ids = token_ids(model, token)
            if len(ids) != 1:
                raise StudyError(f"Start token {token!r} is not a single token for this tokenizer.")
            tid = ids[0]
        new = (token, int(tid))
    object.__setattr__(model, "start_token", new[0])
    object.__setattr__(model, "start_token_id", new[1])
    try:
        yield model
    finally:
        object.__setattr__(model, "start_token", old[0])
        object.__setattr__(model, "start_token_id", old[1])


# ----------------------------------------------------------------------------- query scores by position


def prompt_query_positions(
    model,
    prompt: str,
    target: Any,
    *,
    word: str | None = None,
    n_attn: int = N_QUERY_ATTN,
) -> dict[str, Any]:
    """FFN query scores of one prompt split by source position.

    Returns:
        dict with ``q_start`` / ``q_word`` / ``q_total`` (``[L, d_mlp]`` float64: the query
        score at position 0, at the word's positions (position 0 excluded), in total),
        ``m_start`` (``[L, d_mlp]`` coefficients at position 0), ``attn`` (the top-``n_attn``
        attention value neurons, a DataFrame), ``attn_share_start`` (share of their summed
        score read from position 0), ``data`` (the :class:`~analysis_lib.attribution.PromptData`),
        ``target_id``, ``lp_target``, ``n_tokens``, ``word_positions``.
    """
    res = A.attribute(model, prompt, target, top_k=n_attn, kinds=("attn_value",))
    data = A.forward_data(model, prompt, res.target_id)[0]
    tab = res.top("attn_value")
    neur = [(n.layer, n.head, n.dim, n.position) for n in tab.neuron]
    Q, Qp = A.query_scores(model, data, neur, tab.score.to_numpy(dtype=np.float64).copy())
    wp = [p for p in A.word_positions(model, prompt, word) if p != 0] if word else []
    q_word = Qp[..., wp].sum(-1) if wp else torch.zeros_like(Q)
    tot = float(tab.score.sum())
    return {
        "q_start": Qp[..., 0].cpu().numpy(),
        "q_word": q_word.cpu().numpy(),
        "q_total": Q.cpu().numpy(),
        "m_start": data.m[:, 0, :].cpu().numpy(),
        "attn": tab,
        "attn_share_start": float(tab.score[tab.position == 0].sum() / tot) if tot else float("nan"),
        "data": data,
        "target_id": res.target_id,
        "lp_target": res.lp_target,
        "n_tokens": data.T,
        "word_positions": wp,
    }


@dataclass
class QueryScan:
    """Per-prompt FFN query scores split by position, over a set of probe prompts.

    Attributes:
        prompts: the probe prompts with ``n_tokens``, ``lp_target``, ``attn_share_start``.
        q_start, q_word, q_total: ``[n_prompts, L, d_mlp]`` float32.
        m_start: ``[n_prompts, L, d_mlp]`` coefficients at position 0.
        start_token: the start token the scan ran with (``None``: none).
        seconds: wall time.
    """

    prompts: pd.DataFrame
    q_start: np.ndarray
    q_word: np.ndarray
    q_total: np.ndarray
    m_start: np.ndarray
    start_token: str | None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.q_start.shape[1], self.q_start.shape[2]

    def per_prompt(self, neurons: Sequence[str | NeuronId], which: str = "q_start") -> pd.DataFrame:
        """Long table of one score per (neuron, prompt): ``id``, ``set``, ``prompt``, ``which``."""
        arr = getattr(self, which)
        parts = []
        for nid in neurons:
            n = NeuronId.parse(nid)
            parts.append(pd.DataFrame({"id": str(n), "set": self.prompts["set"], "prompt": self.prompts["prompt"],
                                       which: arr[:, n.layer, n.index]}))
        return pd.concat(parts, ignore_index=True)

    def set_mean(self, which: str = "q_start") -> pd.DataFrame:
        """Per prompt set, the mean of ``which`` over its prompts, as ``[sets, L*d_mlp]``."""
        arr = getattr(self, which).reshape(len(self.prompts), -1)
        sets = self.prompts["set"].to_numpy()
        names = [s for s in PROBE_SETS if s in set(sets)] + sorted(set(sets) - set(PROBE_SETS))
        return pd.DataFrame({s: arr[sets == s].mean(0) for s in names})


def query_scan(model, prompts: pd.DataFrame, *, n_attn: int = N_QUERY_ATTN, progress: bool = False) -> QueryScan:
    """Run :func:`prompt_query_positions` on every probe prompt (see :func:`probe_prompts`)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    qs, qw, qt, ms, meta = [], [], [], [], []
    for r in tqdm(list(prompts.itertuples(index=False)), disable=not progress, desc="query scan"):
        word = getattr(r, "word", None)
        out = prompt_query_positions(model, r.prompt, int(r.target_id), word=word if isinstance(word, str) else None,
                                     n_attn=n_attn)
        qs.append(out["q_start"].astype(np.float32))
        qw.append(out["q_word"].astype(np.float32))
        qt.append(out["q_total"].astype(np.float32))
        ms.append(out["m_start"].astype(np.float32))
        meta.append({"n_tokens": out["n_tokens"], "lp_target": out["lp_target"],
                     "attn_share_start": out["attn_share_start"]})
    df = pd.concat([prompts.reset_index(drop=True), pd.DataFrame(meta)], axis=1)
    return QueryScan(df, np.stack(qs), np.stack(qw), np.stack(qt), np.stack(ms), model.start_token,
                     time.perf_counter() - t0)


def _ids(L: int, D: int, flat: np.ndarray) -> list[str]:
    return [f"ffnL{int(i) // D}N{int(i) % D}" for i in flat]


def rank_general(scan: QueryScan, *, min_share: float = 0.5, top: int = 20) -> pd.DataFrame:
    """General-neuron ranking: mean start query score, per set and overall.

    Columns: ``rank``, ``id``, ``layer``, ``index``, ``start_score`` (mean over prompt sets of the
    per-set mean ``q_start``), ``start_<set>`` (per-set means), ``share_start`` (summed
    ``q_start`` / summed ``q_total`` over all prompts), ``frac_top10`` (share of prompts whose
    own top-10 by ``q_start`` holds the neuron), ``m_start`` (coefficient at position 0, mean
    over prompts), ``general`` (``share_start >= min_share`` and a positive start score).
    Sorted by ``start_score`` among the general ones first.
    """
    L, D = scan.shape
    per_set = scan.set_mean("q_start")
    score = per_set.mean(axis=1).to_numpy()
    n = len(scan.prompts)
    s_start = scan.q_start.reshape(n, -1).sum(0).astype(np.float64)
    s_total = scan.q_total.reshape(n, -1).sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(s_total != 0, s_start / s_total, np.nan)
    ok = (share >= min_share) & (score > 0)
    key = np.where(ok, score, -np.inf)
    cand = np.argsort(-key, kind="stable")[:top]
    flat = scan.q_start.reshape(n, -1)
    k10 = np.argpartition(-flat, 10, axis=1)[:, :10]
    in10 = np.zeros(flat.shape[1])
    for r, row in enumerate(k10):
        in10[row[flat[r, row] > 0]] += 1  # a prompt with no start score has no top 10
    df = pd.DataFrame({
        "id": _ids(L, D, cand),
        "layer": cand // D,
        "index": cand % D,
        "start_score": score[cand],
        **{f"start_{s}": per_set[s].to_numpy()[cand] for s in per_set.columns},
        "share_start": share[cand],
        "frac_top10": in10[cand] / n,
        "m_start": scan.m_start.reshape(n, -1).mean(0)[cand],
        "general": ok[cand],
    })
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def rank_gender(scan: QueryScan, *, top: int = 20, exclude: Sequence[str] = (), min_share: float = 0.5) -> pd.DataFrame:
    """Gender-neuron ranking: summed query score at the CommonWords word's positions.

    Gender neurons are query neurons whose score sits mostly at the word (method_spec §1.3):
    neurons with ``share_word >= min_share`` ranked by their mean word score.

    Columns: ``rank``, ``id``, ``layer``, ``index``, ``word_score`` (mean ``q_word`` over the
    CommonWords prompts), ``share_word`` (summed ``q_word`` / summed ``q_total`` over them).
    """
    L, D = scan.shape
    sel = (scan.prompts["set"] == "commonwords").to_numpy()
    if not sel.any():
        raise StudyError("The scan has no CommonWords prompts; gender neurons are ranked on them.")
    qw = scan.q_word[sel].reshape(int(sel.sum()), -1).astype(np.float64)
    qt = scan.q_total[sel].reshape(int(sel.sum()), -1).astype(np.float64)
    score = qw.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_all = np.where(qt.sum(0) != 0, qw.sum(0) / qt.sum(0), np.nan)
    key = np.where((share_all >= min_share) & (score > 0), score, -np.inf)
    ex = {str(NeuronId.parse(e)) for e in exclude}
    order = [i for i in np.argsort(-key, kind="stable")[: top + len(ex)] if _ids(L, D, [i])[0] not in ex][:top]
    order = np.asarray(order, dtype=int)
    share = share_all[order]
    df = pd.DataFrame({"id": _ids(L, D, order), "layer": order // D, "index": order % D,
                       "word_score": score[order], "share_word": share})
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def massive_activations(scan: QueryScan, k: int = 10) -> pd.DataFrame:
    """The FFN neurons with the largest |coefficient| at position 0 (``rank``, ``id``, ``layer``, ``m_start``)."""
    L, D = scan.shape
    m = scan.m_start.mean(0).reshape(-1)
    order = np.argsort(-np.abs(m), kind="stable")[:k]
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "id": _ids(L, D, order), "layer": order // D,
                         "m_start": m[order]})


# ----------------------------------------------------------------------------- activations


def activation_profile(model, groups: Mapping[str, Sequence[str]], prompts: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coefficients of FFN neurons at the start token and elsewhere, over prompts.

    Args:
        groups: ``{group name: [neuron ids]}`` (e.g. general, gender, random same-layer).
        prompts: texts (run with the model's start-token policy).

    Returns:
        ``(long, summary)``: ``long`` has one row per (neuron, prompt, position) with ``group``,
        ``id``, ``prompt``, ``position``, ``at_start`` and ``m``; ``summary`` one row per neuron:
        ``group``, ``id``, ``layer``, ``m_start`` (mean over prompts), ``sd_start`` (its standard
        deviation over prompts), ``mean_abs_other`` / ``max_abs_other`` (|m| at the other
        positions), ``ratio`` (|m_start| / mean |m| elsewhere) and ``pct_layer`` (percentile of
        |m_start| among all neurons of its layer).
    """
    datas = A.forward_data(model, list(prompts), None)
    rows, summ = [], []
    for g, ids in groups.items():
        for nid in ids:
            n = as_neuron(nid, model)
            starts, others = [], []
            for k, d in enumerate(datas):
                act = d.m[n.layer, :, n.index].cpu().numpy()
                for p, v in enumerate(act):
                    rows.append({"group": g, "id": str(n), "prompt": k, "position": p, "at_start": p == 0, "m": float(v)})
                starts.append(float(act[0]))
                others.extend(np.abs(act[1:]).tolist())
            layer_abs = np.abs(datas[0].m[n.layer, 0, :].cpu().numpy())
            mo = float(np.mean(others)) if others else float("nan")
            summ.append({
                "group": g, "id": str(n), "layer": n.layer,
                "m_start": float(np.mean(starts)), "sd_start": float(np.std(starts)),
                "mean_abs_other": mo, "max_abs_other": float(np.max(others)) if others else float("nan"),
                "ratio": abs(float(np.mean(starts))) / mo if mo else float("nan"),
                "pct_layer": float((layer_abs < abs(starts[0])).mean() * 100),
            })
    return pd.DataFrame(rows), pd.DataFrame(summ)


# ----------------------------------------------------------------------------- sinks


def start_residual(model, prompts: Sequence[str]) -> dict[str, np.ndarray]:
    """The residual stream of every prompt across depth, and the FFN coefficients at position 0.

    Runs each prompt (with the model's start token) once, with forward hooks on the decoder
    layers and on the input of every ``down_proj``. A model run without a start token
    (``start_token="none"``) has each prompt's first token at position 0.

    Returns:
        ``norm_start`` ``[L + 1]`` (the L2 norm of the residual at position 0 after the
        embedding, depth 0, and after every block l, depth l + 1; the same in every prompt when
        position 0 is a start token, since attention is causal, and the median over prompts
        without one), ``norm_other`` ``[n_prompts, L + 1]`` (median norm over the other
        positions of each prompt), ``resid_start`` ``[L + 1, d_model]`` and ``m_start``
        ``[L, d_mlp]`` (FFN coefficients at position 0), from the first prompt.
    """
    hf = hf_model(model)
    L = arch(model).n_layers
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    grabbed: dict[str, Any] = {}
    handles = []
    for l in range(L):
        handles.append(hf_layer(model, l).register_forward_hook(
            lambda mod, inp, out, l=l: grabbed.__setitem__(("out", l), (out[0] if isinstance(out, tuple) else out).detach())))
        down = unwrap(unwrap(hf_layer(model, l).mlp).down_proj)
        handles.append(down.register_forward_hook(
            lambda mod, inp, out, l=l: grabbed.__setitem__(("m", l), inp[0].detach())))
    emb = unwrap(hf.model.embed_tokens)
    handles.append(emb.register_forward_hook(lambda mod, inp, out: grabbed.__setitem__(("emb",), out.detach())))
    norm_start, norm_other, resid0, m0 = [], [], None, None
    try:
        for k, prompt in enumerate(prompts):
            grabbed.clear()
            ids = torch.tensor([prefix + token_ids(model, prompt)], device=model.cfg.device or "cpu")
            with torch.inference_mode():
                hf.model(input_ids=ids, use_cache=False)
            emb_out = grabbed[("emb",)]
            scale = getattr(unwrap(hf.model.embed_tokens), "embed_scale", None)
            if scale is not None:  # Gemma scales the embedding inside the model, not in embed_tokens
                emb_out = emb_out * scale.to(emb_out.dtype) if torch.is_tensor(scale) else emb_out * float(scale)
            stack = torch.stack([emb_out[0]] + [grabbed[("out", l)][0] for l in range(L)]).float()  # [L+1, T, d]
            norms = stack.norm(dim=-1).cpu().numpy()
            norm_other.append(np.median(norms[:, 1:], axis=1) if norms.shape[1] > 1 else np.full(L + 1, np.nan))
            norm_start.append(norms[:, 0])
            if k == 0:
                resid0 = stack[:, 0].cpu().numpy()
                m0 = torch.stack([grabbed[("m", l)][0, 0] for l in range(L)]).float().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    start = norm_start[0] if prefix else np.median(np.stack(norm_start), axis=0)
    return {"norm_start": start, "norm_other": np.stack(norm_other), "resid_start": resid0, "m_start": m0}


def norm_profile(res: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per depth (0 = embedding, l + 1 = after block l): ``depth``, ``block`` (l, or -1
    for the embedding), ``norm_start``, ``norm_other`` (median over prompts of each prompt's
    median over its other positions) and ``ratio`` = norm_start / norm_other."""
    ns = np.asarray(res["norm_start"], dtype=float)
    no = np.nanmedian(np.asarray(res["norm_other"], dtype=float), axis=0)
    return pd.DataFrame({"depth": np.arange(len(ns)), "block": np.arange(len(ns)) - 1, "norm_start": ns,
                         "norm_other": no, "ratio": ns / no})


def find_sinks(profile: pd.DataFrame, factor: float = 2.0, min_ratio: float = 5.0) -> pd.DataFrame:
    """The attention sinks of a norm profile: where the start token's residual grows away from
    the other positions, and where that growth is erased again.

    A block *writes* when it multiplies the start-to-other norm ratio by at least ``factor``;
    consecutive writing blocks form one sink, kept when the ratio after it is at least
    ``min_ratio``. A later block that divides the ratio by at least ``factor`` *erases* it.

    Returns:
        One row per sink: ``sink`` (1, 2, ...), ``first_block``, ``last_block``, ``layers``
        (``"L1–L2"``), ``norm_before`` / ``norm_after`` (start-token norm before the first and
        after the last writing block), ``ratio_before`` / ``ratio_after``, ``erased_at`` (the
        first erasing block after the sink, or -1).
    """
    p = profile.sort_values("depth").reset_index(drop=True)
    r = p["ratio"].to_numpy(float)
    ns = p["norm_start"].to_numpy(float)
    blocks = p["block"].to_numpy(int)
    writes = [i for i in range(1, len(r)) if r[i] >= factor * r[i - 1]]
    erases = [i for i in range(1, len(r)) if r[i] * factor <= r[i - 1]]
    groups: list[list[int]] = []
    for i in writes:
        if groups and i == groups[-1][-1] + 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    rows = []
    for g in groups:
        a, b = g[0], g[-1]
        if r[b] < min_ratio:
            continue
        er = [e for e in erases if e > b]
        first, last = int(blocks[a]), int(blocks[b])
        rows.append({"sink": len(rows) + 1, "first_block": first, "last_block": last,
                     "layers": f"L{first}" if first == last else f"L{first}–L{last}",
                     "norm_before": float(ns[a - 1]), "norm_after": float(ns[b]),
                     "ratio_before": float(r[a - 1]), "ratio_after": float(r[b]),
                     "erased_at": int(blocks[er[0]]) if er else -1})
    return pd.DataFrame(rows, columns=["sink", "first_block", "last_block", "layers", "norm_before", "norm_after",
                                       "ratio_before", "ratio_after", "erased_at"])


def sink_writers(model, res: Mapping[str, np.ndarray], sink: Mapping[str, Any], *, cover: float = 0.5,
                 max_writers: int = 5) -> pd.DataFrame:
    """The FFN neurons that write one sink: their write onto the start token's residual.

    For each block l of the sink, neuron i adds ``m_i * w_i`` (``w_i`` = column i of
    ``down_proj``) to the residual at position 0; its *write* is that vector's component along
    the start residual after the sink's last block, ``m_i (w_i · u)``. Neurons are ranked by
    write over the sink's blocks; the writers are the fewest top ones whose writes sum to at
    least ``cover`` of the sink's summed positive FFN write (at most ``max_writers``). In a
    model that normalises the FFN output before adding it (Gemma), the write is measured before
    that norm and is a ranking, not an exact share.

    Returns:
        Columns ``id``, ``layer``, ``m_start``, ``write``, ``share`` (of the summed positive write),
        ``writer`` (True for the chosen ones), the top ``max_writers`` rows.
    """
    u = np.asarray(res["resid_start"][int(sink["last_block"]) + 1], dtype=np.float64)
    u = u / np.linalg.norm(u)
    rows = []
    for l in range(int(sink["first_block"]), int(sink["last_block"]) + 1):
        W = unwrap(unwrap(hf_layer(model, l).mlp).down_proj).weight.detach().double().cpu().numpy()  # [d_model, d_mlp]
        m = np.asarray(res["m_start"][l], dtype=np.float64)
        write = m * (u @ W)
        for i in np.argsort(-write)[:max_writers]:
            rows.append({"id": f"ffnL{l}N{int(i)}", "layer": l, "m_start": float(m[i]), "write": float(write[i]),
                         "total_positive": float(write[write > 0].sum())})
    df = pd.DataFrame(rows)
    total = df.groupby("layer")["total_positive"].first().sum()
    df = df.drop(columns="total_positive").sort_values("write", ascending=False).head(max_writers).reset_index(drop=True)
    df["share"] = df["write"] / total if total > 0 else np.nan
    cum = df["share"].cumsum().to_numpy()
    k = int(np.searchsorted(cum, cover) + 1) if np.isfinite(cum).all() else 1
    df["writer"] = np.arange(len(df)) < min(k, max_writers)
    return df


@dataclass
class SinkSurvey:
    """The sinks of one model under several start-token policies (:func:`sink_survey`).

    Attributes:
        profiles: :func:`norm_profile` rows with ``start`` (the policy: the token at position 0,
            or ``"first word"`` without a start token).
        sinks: :func:`find_sinks` rows with ``start``.
        writers: :func:`sink_writers` rows of every sink with ``start`` and ``sink`` (its layers).
        masking: :func:`run_conditions` rows (conditions ``"<start> sink <layers>"`` and their
            ``random`` draws) with ``start``; empty when no task sizes were given.
    """

    profiles: pd.DataFrame
    sinks: pd.DataFrame
    writers: pd.DataFrame
    masking: pd.DataFrame


#: the name of the "no start token" policy in tables and text: position 0 holds each prompt's first word
FIRST_WORD = "first word"


def sink_survey(model, prompts: Sequence[str], *, starts: Sequence[str | None] = ("default", None),
                sizes: Mapping[str, int | None] | None = None, n_random: int = 0, seed: int = 0,
                cover: float = 0.8) -> SinkSurvey:
    """Norm profile, sinks, sink writers and (with ``sizes``) the masking of each sink's writers
    against ``n_random`` random same-layer draws, for one model under several start-token policies.

    Args:
        starts: start-token policies: ``"default"`` (the model's own), ``None`` (no start token:
            position 0 holds each prompt's first word, where a model without a BOS token of its own
            may build its sink) or a token string.
        sizes: capability task sizes for the masking (:func:`run_conditions`); ``None`` skips it.
            The tasks run under the same start-token policy as the sink.
    """
    profiles, sinks, writers, masking = [], [], [], []
    for start in starts:
        policy = model.start_token if start == "default" else start
        with start_token_policy(model, policy):
            label = model.start_token or FIRST_WORD
            res = start_residual(model, list(prompts))
            prof = norm_profile(res)
            found = find_sinks(prof)
            profiles.append(prof.assign(start=label))
            sinks.append(found.assign(start=label))
            conditions, kinds = {"original": []}, {"original": "original"}
            for srow in found.to_dict("records"):
                w = sink_writers(model, res, srow, cover=cover)
                writers.append(w.assign(start=label, sink=srow["layers"]))
                name = f"{label} sink {srow['layers']}"
                conditions[name], kinds[name] = w[w.writer]["id"].tolist(), name
                for k, d in enumerate(random_same_layer(model, conditions[name], n_random, seed=seed + 2000 + srow["sink"])):
                    conditions[f"{name} random {k + 1}"], kinds[f"{name} random {k + 1}"] = d, f"random {name}"
            if sizes and len(conditions) > 1:
                table, _ = run_conditions(model, conditions, sizes, seed, kinds=kinds)
                masking.append(table.assign(start=label))
    cat = lambda xs: pd.concat(xs, ignore_index=True) if xs else pd.DataFrame()  # noqa: E731
    return SinkSurvey(cat(profiles), cat(sinks), cat(writers), cat(masking))


def shallow_verdict(sinks: pd.DataFrame, general_layers: Sequence[int], n_layers: int, *,
                    shallow_depth: float = 0.125) -> dict[str, Any]:
    """Verdict on "general neurons sit in a shallow layer" (the paper: layer 2 of 32).

    A sink is *shallow* when its last block is within the first ``shallow_depth`` of the layers
    (at most layer ``max(2, n_layers // 8)``, as for the chapter's layer verdict). ``reproduced``
    when the query score's general neurons sit in a shallow sink; ``partly reproduced`` when the
    model has a shallow sink but the general neurons sit deeper; ``not reproduced`` when it has
    no shallow sink.

    Returns:
        ``{"verdict", "shallow" (list of layer labels), "deep" (list), "general_sink" (label or
        None)}``.
    """
    limit = max(2, int(n_layers * shallow_depth))
    shallow = [r.layers for r in sinks.itertuples() if r.last_block <= limit]
    deep = [r.layers for r in sinks.itertuples() if r.last_block > limit]
    gl = {int(x) for x in general_layers}
    home = [r.layers for r in sinks.itertuples() if any(r.first_block <= g <= r.last_block for g in gl)]
    general_sink = home[0] if home else None
    if general_sink is not None and general_sink in shallow:
        v = "reproduced"
    elif shallow:
        v = "partly reproduced"
    else:
        v = "not reproduced"
    return {"verdict": v, "shallow": shallow, "deep": deep, "general_sink": general_sink, "limit": limit}


# ----------------------------------------------------------------------------- random control


def random_same_layer(model, neurons: Sequence[str], n_draws: int, seed: int = 0) -> list[list[str]]:
    """Seeded draws of random FFN neurons from the same layers as ``neurons``.

    Draw ``k`` replaces each neuron by a uniformly random neuron of its layer (never one of
    ``neurons``, never twice in one draw), with ``numpy.random.default_rng([seed, k])``: the
    same arguments always give the same draws, and draw ``k`` does not depend on ``n_draws``.
    """
    ids = [as_neuron(n, model) for n in neurons]
    if any(n.kind != "ffn" for n in ids):
        raise StudyError("random_same_layer draws FFN neurons; pass FFN ids.")
    d_mlp = arch(model).d_mlp
    taken = {(n.layer, n.index) for n in ids}
    draws = []
    for k in range(int(n_draws)):
        rng = np.random.default_rng([int(seed), int(k)])
        chosen: set[tuple[int, int]] = set()
        out = []
        for n in ids:
            while True:
                i = int(rng.integers(d_mlp))
                if (n.layer, i) not in taken and (n.layer, i) not in chosen:
                    break
            chosen.add((n.layer, i))
            out.append(f"ffnL{n.layer}N{i}")
        draws.append(out)
    return draws


# ----------------------------------------------------------------------------- the experiment


def _cw_rows(items: pd.DataFrame, seed: int, n_boot: int = 1000) -> list[dict[str, Any]]:
    b = items["b"].to_numpy(dtype=float)
    ci = bootstrap_ci(lambda x: np.abs(x).mean(-1), b, seed=seed, n_boot=n_boot, strata=items["category"].to_numpy(),
                      vectorized=True)
    return [{"task": "commonwords", "metric": "mean |b|", "n": len(b), "value": float(ci.estimate),
             "ci_low": float(ci.low), "ci_high": float(ci.high), "chance": 0.0, "seconds": float("nan"),
             "note": "mean |log p(man) - log p(woman)|; 0 = unbiased"}]


def run_conditions(
    model,
    conditions: Mapping[str, Sequence[str]],
    sizes: Mapping[str, int | None],
    seed: int = 0,
    *,
    commonwords: pd.DataFrame | None = None,
    kinds: Mapping[str, str] | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, dict[str, pd.DataFrame]]]:
    """Score every condition (a list of neurons to mask) on the same capability items.

    Args:
        conditions: ``{name: [neuron ids]}``; ``[]`` = the model as is.
        sizes: items per capability task (see :data:`analysis_lib.capability.PROFILES`); only
            the tasks named here run, and a size of 0 skips the task.
        commonwords: CommonWords rows to score ``mean |b|`` on (``None``: skip the bias metric).
        kinds: ``{name: kind}`` labels (e.g. "original", "general", "random", "gender").

    Returns:
        ``(table, records)``: ``table`` has one row per condition and task (``condition``,
        ``kind``, ``neurons``, ``task``, ``metric``, ``n``, ``value``, ``ci_low``, ``ci_high``,
        ``chance``, ``seconds``); ``records[name][task]`` the per-item records (the CommonWords
        item table under ``"commonwords"``).
    """
    from tqdm.auto import tqdm

    kinds = dict(kinds or {})
    tasks = [t for t, n in sizes.items() if n != 0]
    run_sizes = {t: sizes[t] for t in tasks}
    rows, records = [], {}
    for name, neurons in tqdm(list(conditions.items()), disable=not progress, desc="conditions"):
        t0 = time.perf_counter()
        with mask_neurons(model, list(neurons)):
            table, recs = capability_suite(model, run_sizes, seed, tasks=tasks, return_records=True)
            if commonwords is not None:
                cw = benchmarks.commonwords_bias(model, commonwords)
                recs["commonwords"] = cw
                table = pd.concat([table, pd.DataFrame(_cw_rows(cw, seed))], ignore_index=True)
        table.insert(0, "condition", name)
        table.insert(1, "kind", kinds.get(name, name))
        table.insert(2, "neurons", ", ".join(map(str, neurons)) or "(none)")
        table["condition_seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(table)
        records[name] = recs
    return pd.concat(rows, ignore_index=True), records


def metric_scale(metric: str) -> tuple[int, int]:
    """How a task's metric is shown: ``(scale, decimals)``; accuracy as a percentage with one
    decimal (0.281 -> 28.1), other metrics (perplexity, mean |b|) as they are with two."""
    return (100, 1) if metric == "accuracy" else (1, 2)


def condition_table(table: pd.DataFrame, conditions: Sequence[str] | None = None) -> pd.DataFrame:
    """A wide display table: one row per condition, ``value [low, high]`` per task, chance row."""
    t = table if conditions is None else table[table.condition.isin(conditions)]
    order = list(dict.fromkeys(t["task"]))

    def cell(r):
        k, dp = metric_scale(r["metric"])
        return f"{k * r['value']:.{dp}f} [{k * r['ci_low']:.{dp}f}, {k * r['ci_high']:.{dp}f}]"

    wide = t.assign(cell=t.apply(cell, axis=1)).pivot(index="condition", columns="task", values="cell")
    wide = wide.reindex(index=list(dict.fromkeys(t["condition"])), columns=order)
    chance = t.drop_duplicates("task").set_index("task")
    wide.loc["chance"] = [
        (f"{100 * chance.loc[c, 'chance']:.0f}" if chance.loc[c, "metric"] == "accuracy" else "–") for c in order
    ]
    return wide


def bias_wide(table: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """The bias suite's tidy table as ``estimate [low, high]`` per condition (one row per metric)."""
    t = table.copy()
    t["cell"] = [f"{e:.3g} [{lo:.3g}, {hi:.3g}]" for e, lo, hi in zip(t.estimate, t.low, t.high)]
    t["ideal"] = t["ideal"].astype(str) if "ideal" in t else ""
    wide = t.pivot_table(index=["benchmark", "variant", "metric", "ideal"], columns="condition", values="cell",
                         aggfunc="first", dropna=False)
    return wide[[c for c in conditions if c in wide.columns]].dropna(how="all")


def paired_deltas(records: Mapping[str, Mapping[str, pd.DataFrame]], base: str, others: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap differences ``other - base`` per task (capability and CommonWords |b|)."""
    out = []
    for o in others:
        cap_b = {k: v for k, v in records[base].items() if k != "commonwords"}
        cap_o = {k: v for k, v in records[o].items() if k != "commonwords"}
        d = capability_delta(cap_b, cap_o, seed=seed)
        if "commonwords" in records[base] and "commonwords" in records[o]:
            bb = np.abs(records[base]["commonwords"]["b"].to_numpy(float))
            bo = np.abs(records[o]["commonwords"]["b"].to_numpy(float))
            r = paired_bootstrap_diff(np.mean, bo, bb, seed=seed)
            d = pd.concat([d, pd.DataFrame([{"task": "commonwords", "metric": "mean |b|", "before": bb.mean(),
                                             "after": bo.mean(), "diff": float(r.estimate), "ci_low": float(r.low),
                                             "ci_high": float(r.high)}])], ignore_index=True)
        d.insert(0, "condition", o)
        out.append(d)
    return pd.concat(out, ignore_index=True)


def general_vs_random(table: pd.DataFrame, target: str, random_kind: str = "random", base: str = "original") -> pd.DataFrame:
    """Per task: the target condition's value against the distribution of the random draws.

    Columns: ``task``, ``metric``, ``original``, ``target``, ``random_median``, ``random_min``,
    ``random_max``, ``n_random``, ``frac_random_as_extreme`` (share of random draws whose change
    from the original is at least as large in the same direction as the target's; an empirical
    p-value, with the +1 correction).
    """
    rows = []
    for task, sub in table.groupby("task", sort=False):
        orig = float(sub[sub.condition == base].value.iloc[0])
        tgt = float(sub[sub.condition == target].value.iloc[0])
        rnd = sub[sub.kind == random_kind].value.to_numpy(float)
        delta = tgt - orig
        if len(rnd):
            dr = rnd - orig
            extreme = (np.sign(delta) * dr >= abs(delta) - 1e-12).sum() if delta != 0 else len(rnd)
            p = (extreme + 1) / (len(rnd) + 1)
        else:
            p = float("nan")
        rows.append({"task": task, "metric": sub.metric.iloc[0], "original": orig, "target": tgt,
                     "random_median": float(np.median(rnd)) if len(rnd) else float("nan"),
                     "random_min": float(rnd.min()) if len(rnd) else float("nan"),
                     "random_max": float(rnd.max()) if len(rnd) else float("nan"),
                     "n_random": int(len(rnd)), "frac_random_as_extreme": float(p)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- CNA


def ffn_importance(
    model,
    data: A.PromptData,
    neurons: Sequence[str | NeuronId],
    *,
    scale: float | torch.Tensor | None = None,
    target_id: int | None = None,
) -> np.ndarray:
    """Exact ``Imp(l, i) = LP_t(x_mid[l] + s_i) - LP_t(x_mid[l])`` of FFN value neurons.

    Args:
        data: one prompt's forward data (:func:`analysis_lib.attribution.forward_data`).
        neurons: FFN neuron ids.
        scale: the final-norm scale ``rms(x_final[T-1])`` to read out with (default: this
            run's own, as :func:`analysis_lib.attribution.attribute`); CNA passes the clean
            run's scale for the intervened run (method_spec §1.2).
        target_id: the target token (default ``data.target_id``).

    Returns:
        float64 array of importances, one per neuron.
    """
    ids = [as_neuron(n, model) for n in neurons]
    if any(n.kind != "ffn" for n in ids):
        raise StudyError("ffn_importance scores FFN neurons only.")
    d = data if scale is None else dataclasses.replace(
        data, scale=torch.as_tensor(scale, dtype=data.scale.dtype, device=data.scale.device))
    t = data.target_id if target_id is None else int(target_id)
    out = np.zeros(len(ids))
    with torch.inference_mode():
        for layer in sorted({n.layer for n in ids}):
            pos = [k for k, n in enumerate(ids) if n.layer == layer]
            idx = torch.tensor([ids[k].index for k in pos], device=d.m.device)
            sub = A.ffn_subvalues(model, d, layer)[idx]  # [k, d_model]
            base = d.x_mid[layer]
            z0 = A.readout(model, d, base[None])  # [1, V]
            z = A.readout(model, d, base[None] + sub)  # [k, V]
            lp0 = torch.log_softmax(z0.double(), -1)[:, t]
            lp = torch.log_softmax(z.double(), -1)[:, t]
            out[pos] = (lp - lp0).cpu().numpy()
    return out


def cna_table(
    model,
    prompt: str,
    masked: Sequence[str],
    *,
    n_top: int = 20,
    n_shortlist: int = 20,
    label: str | None = None,
    target: Any = None,
) -> pd.DataFrame:
    """Comparative neuron analysis of one prompt: clean run versus ``masked`` neurons zeroed.

    The target t is ``target`` (a single-token string or an id; default: the clean run's top-1
    token, as in the authors' notebook). Neurons: the clean run's exact top-``n_top``
    FFN value neurons (the "arithmetic neurons") and the masked run's top-``n_shortlist`` (by
    its own readout, only to shortlist); both importances are then computed with the clean
    run's final-norm scale (:func:`ffn_importance`).

    Returns:
        One row per neuron: ``prompt`` (``label`` or the prompt), ``id``, ``layer``,
        ``rank_orig`` (rank by clean importance among the scored neurons), ``imp_orig``,
        ``imp_masked``, ``cna`` (= ``imp_orig - imp_masked``), ``coef_orig``, ``coef_masked``
        (``m[l, T-1, i]``), ``sign_flip`` (the coefficient changed sign), ``top_orig`` (in the
        clean top-``n_top``), ``target``, ``p_target_orig``, ``p_target_masked``,
        ``top1_orig`` / ``top1_masked`` (the top-1 token of each run).
    """
    with torch.inference_mode():
        clean = A.forward_data(model, prompt, target)[0]
        t = clean.target_id
        top_o = A.attribute(model, prompt, t, top_k=n_top, kinds=("ffn_value",))
        with mask_neurons(model, list(masked)):
            mdata = A.forward_data(model, prompt, t)[0]
            top_m = A.attribute(model, prompt, t, top_k=n_shortlist, kinds=("ffn_value",)) if n_shortlist else None
    ids = list(dict.fromkeys([str(n) for n in top_o.neurons("ffn_value")]
                             + ([str(n) for n in top_m.neurons("ffn_value")] if top_m is not None else [])))
    neurons = [NeuronId.parse(i) for i in ids]
    imp_o = ffn_importance(model, clean, neurons)
    imp_m = ffn_importance(model, mdata, neurons, scale=clean.scale)
    co = np.array([float(clean.m[n.layer, -1, n.index]) for n in neurons])
    cm = np.array([float(mdata.m[n.layer, -1, n.index]) for n in neurons])
    p_o = float(torch.softmax(clean.logits, -1)[t])
    p_m = float(torch.softmax(mdata.logits, -1)[t])
    top_set = {str(n) for n in top_o.neurons("ffn_value")}
    df = pd.DataFrame({
        "prompt": label or prompt, "id": ids, "layer": [n.layer for n in neurons],
        "imp_orig": imp_o, "imp_masked": imp_m, "cna": imp_o - imp_m,
        "coef_orig": co, "coef_masked": cm, "sign_flip": np.sign(co) != np.sign(cm),
        "top_orig": [i in top_set for i in ids],
        "target": model.tokenizer.decode([t]), "p_target_orig": p_o, "p_target_masked": p_m,
        "top1_orig": model.tokenizer.decode([int(clean.logits.argmax())]),
        "top1_masked": model.tokenizer.decode([int(mdata.logits.argmax())]),
    })
    df = df.sort_values("imp_orig", ascending=False, kind="stable").reset_index(drop=True)
    df.insert(2, "rank_orig", np.arange(1, len(df) + 1))
    return df


def cna_summary(tables: pd.DataFrame, by: str = "prompt") -> pd.DataFrame:
    """Per prompt: how many of the clean top neurons flip the sign of their coefficient, the
    summed clean importance that is lost, and the target probability before and after."""
    top = tables[tables.top_orig]
    g = top.groupby(by, sort=False)
    return pd.DataFrame({
        "target": g.target.first(),
        "p_target_orig": g.p_target_orig.first(),
        "p_target_masked": g.p_target_masked.first(),
        "top1_orig": g.top1_orig.first(),
        "top1_masked": g.top1_masked.first(),
        "n_top": g.size(),
        "n_sign_flips": g.sign_flip.sum().astype(int),
        "imp_orig_sum": g.imp_orig.sum(),
        "imp_masked_sum": g.imp_masked.sum(),
    }).reset_index()


# ----------------------------------------------------------------------------- start-token sensitivity


def start_token_comparison(rankings: Mapping[str, pd.DataFrame], reference: str, k: int = 10, n_general: int = 2) -> pd.DataFrame:
    """Compare general-neuron rankings found with different start tokens.

    Args:
        rankings: ``{start-token label: rank_general(...) table}``.
        reference: the label of the default start token.

    Returns:
        One row per label: ``start_token``, ``top`` (its top-``n_general`` general neurons),
        ``overlap_topk`` (|top-k ∩ reference top-k| / k), ``ref_ranks`` (the ranks of the
        reference's top-``n_general`` in this ranking, ``None`` when outside it), ``same_top``.
    """
    ref = rankings[reference]
    ref_top = list(ref[ref.general].id.head(n_general))
    ref_k = set(ref[ref.general].id.head(k))
    rows = []
    for lab, r in rankings.items():
        g = r[r.general]
        ids = list(g.id)
        rows.append({
            "start_token": lab,
            "top": ", ".join(ids[:n_general]),
            "top_layers": ", ".join(str(x) for x in g.layer.head(n_general)),
            "overlap_topk": len(set(ids[:k]) & ref_k) / max(1, min(k, len(ref_k))),
            "ref_ranks": ", ".join(str(ids.index(x) + 1) if x in ids else "–" for x in ref_top),
            "same_top": set(ids[:n_general]) == set(ref_top),
            "top_start_score": float(g.start_score.iloc[0]) if len(g) else float("nan"),
        })
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- second architecture


def replicate(
    name: str,
    *,
    probes: Sequence[int] = (2, 1, 1),
    n_general: int = 2,
    n_random: int = 5,
    sizes: Mapping[str, int | None],
    seed: int = 0,
    commonwords: pd.DataFrame | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """The chapter's scan and masking experiment on another model, in one call.

    Loads ``name``, scans ``probes = (n_commonwords, n_arithmetic, n_race)`` probe prompts,
    masks its top-``n_general`` general neurons and ``n_random`` seeded same-layer random draws,
    and scores every condition on the capability tasks of ``sizes`` (and CommonWords).

    Returns:
        ``{"ranking", "massive", "general", "table", "vs_random", "verdict", "summary"}``:
        ``summary`` is one flat dict (model, layers, general ids, their share at the start
        token, whether they are the largest start activations, each task before → after and
        the random range) for a comparison table.
    """
    m = load_model(name, device=device, dtype=dtype)
    try:
        pr = probe_prompts(m, *probes, seed=seed)
        scan = query_scan(m, pr)
        rk = rank_general(scan)
        gen = rk[rk.general].reset_index(drop=True)
        ids = list(gen.id.head(n_general))
        massive = massive_activations(scan, 10)
        draws = random_same_layer(m, ids, n_random, seed)
        massive_ids = list(massive.id.head(n_general))
        conds = {"original": [], "general": ids, **{f"random {k + 1}": d for k, d in enumerate(draws)}}
        kinds = {"original": "original", "general": "general", **{f"random {k + 1}": "random" for k in range(n_random)}}
        if set(massive_ids) != set(ids):  # the largest start-token activations, when they differ
            conds["massive"], kinds["massive"] = massive_ids, "massive"
        table, _ = run_conditions(m, conds, sizes, seed, commonwords=commonwords, kinds=kinds)
        n_layers = arch(m).n_layers
    finally:
        del m
    vs = general_vs_random(table, "general")
    summary: dict[str, Any] = {
        "model": name, "layers": n_layers, "general": ", ".join(ids),
        "general_layers": ", ".join(str(x) for x in gen.layer.head(n_general)),
        "share_start": float(gen.share_start.iloc[0]) if len(gen) else float("nan"),
        "m_start": float(gen.m_start.iloc[0]) if len(gen) else float("nan"),
        "are_massive": bool(set(ids) <= set(massive.id)),
        "top_massive": ", ".join(massive.id.head(n_general)),
    }
    vm = general_vs_random(table, "massive") if "massive" in conds else None
    for k, r in enumerate(vs.itertuples()):
        scale, dp = metric_scale(r.metric)
        f = lambda v: f"{scale * v:.{dp}f}"  # noqa: E731
        summary[f"{r.task}: as is → masked"] = f"{f(r.original)} → {f(r.target)}"
        summary[f"{r.task}: random draws"] = f"{f(r.random_min)}–{f(r.random_max)}"
        if vm is not None:
            summary[f"{r.task}: largest start activations masked"] = f(vm.iloc[k].target)
    return {"ranking": rk, "massive": massive, "general": ids, "table": table.assign(model=name), "vs_random": vs,
            "verdict": collapse_verdict(vs), "summary": summary}


def _coefficient_text(x: float) -> str:
    """3064.8 -> "3,064.8"; -0.0123456 -> "-0.0123" (never "-0")."""
    return f"{x:,.1f}" if abs(x) >= 1 else f"{x:.3g}"


def replicate_text(summary: Mapping[str, Any]) -> str:
    """The chapter's paragraph on a second model, from :func:`replicate`'s ``summary``.

    Plain text (it is glued into Markdown, which does not parse it): the general neurons,
    their share of query score at the start token and coefficient there (a tiny coefficient
    keeps three significant digits instead of printing as "-0"), whether they are the model's
    largest start-token activations, and every task as is → masked beside the random draws.
    """
    s = summary

    def tasks(suffix: str) -> str:
        return "; ".join(f"{k.split(':')[0]} {v}" for k, v in s.items() if k.endswith(suffix))

    text = (f"In {s['model']} ({s['layers']} layers) the top general neurons are {s['general']} (layers "
            f"{s['general_layers']}); {s['share_start']:.0%} of the first one's query score sits at the start token, "
            f"where its coefficient is {_coefficient_text(s['m_start'])}. ")
    text += ("They are also the model's largest start-token activations. " if s["are_massive"] else
             f"The model's largest start-token activation belongs to {s['top_massive']} instead. ")
    text += f"Masking them: {tasks('as is → masked')} (random draws of two same-layer neurons: {tasks('random draws')})."
    if any(k.endswith("largest start activations masked") for k in s):
        text += (f" Masking the two largest start-token activations instead ({s['top_massive']}): "
                 f"{tasks('largest start activations masked')}.")
    return text


# ----------------------------------------------------------------------------- verdicts


def collapse_verdict(vs_random: pd.DataFrame, main: pd.DataFrame | None = None, *, condition: str = "general",
                     full: float = 0.6, partial: float = 0.25) -> dict[str, Any]:
    """Verdict on "masking the general neurons collapses arithmetic and RACE".

    The effect on each task is the share of the model's headroom that is lost:
    ``(original - masked) / (original - chance)`` (one-digit arithmetic: chance 0; RACE:
    25 %). A task counts only when its change is more extreme than that of every random draw
    (``frac_random_as_extreme == 1 / (n_random + 1)``).

    Args:
        vs_random: :func:`general_vs_random` (the control-size subsets, where the random
            draws ran): decides whether a task's change is beyond every random draw.
        main: the main conditions' table (columns ``task``, ``condition``, ``value``), on
            larger subsets than the control; when given, the headroom lost is computed from
            its ``"original"`` and ``condition`` rows, so that it matches the accuracies a
            chapter quotes. Without it, from ``vs_random``.
        condition: the masked condition's name in ``main``.

    Returns:
        ``{"verdict", "arith_drop", "race_drop", "arith_p", "race_p"}``: "reproduced" when both
        tasks lose at least ``full`` of their headroom, "partly reproduced" when one loses at
        least ``partial``, else "not reproduced".
    """
    out: dict[str, Any] = {}
    for task, key, chance in (("arithmetic_1digit", "arith", CHANCE["arithmetic"]), ("race", "race", CHANCE["race"])):
        r = vs_random[vs_random.task == task]
        if r.empty:
            out[f"{key}_drop"], out[f"{key}_p"] = float("nan"), float("nan")
            continue
        r = r.iloc[0]
        before, after = float(r.original), float(r.target)
        if main is not None:
            m = main[main.task == task].set_index("condition")["value"]
            if "original" not in m.index or condition not in m.index:
                raise StudyError(f"The main table has no 'original' and {condition!r} rows for {task}.")
            before, after = float(m["original"]), float(m[condition])
        head = before - chance
        drop = (before - after) / head if head > 0 else float("nan")
        out[f"{key}_drop"], out[f"{key}_p"] = float(drop), float(r.frac_random_as_extreme)
        out[f"{key}_beyond_random"] = bool(r.frac_random_as_extreme <= 1 / (r.n_random + 1) + 1e-9)
    eff = [out[f"{k}_drop"] if (np.isfinite(out[f"{k}_drop"]) and out.get(f"{k}_beyond_random")) else 0.0
           for k in ("arith", "race")]
    if all(e >= full for e in eff):
        out["verdict"] = "reproduced"
    elif max(eff) >= partial:
        out["verdict"] = "partly reproduced"
    else:
        out["verdict"] = "not reproduced"
    return out


def verdict(effect: float, threshold_full: float, threshold_partial: float) -> str:
    """``"reproduced"`` when ``effect >= threshold_full``, ``"partly reproduced"`` when
    ``>= threshold_partial``, else ``"not reproduced"`` (effects oriented so larger = closer
    to the paper's claim)."""
    if not np.isfinite(effect):
        return "not tested"
    if effect >= threshold_full:
        return "reproduced"
    if effect >= threshold_partial:
        return "partly reproduced"
    return "not reproduced"
