"""Chapter 5: editing the bias away (paper 1's neuron-editing method, method_spec §2.2 P1-E).

The pipeline, with every choice the paper leaves open stated:

1. **Candidates** (:func:`candidates`). Dataset-level logit-based importance
   (:func:`analysis_lib.attribution.dataset_attribution`) summed over CommonWords *training*
   words, target per word = the more probable of ``" man"`` / ``" woman"`` under the original
   model (method_spec §6 A1). The top ``top_n`` FFN value, attention value and FFN query
   neurons (paper: 50 of each, 150). An FFN unit can rank both as a value and as a query
   neuron; it is then one candidate (kinds joined with ``+``). Attention value neurons are the
   position-aggregated ids ``attnL{l}H{h}D{j}`` (edited through ``o_proj``, §6 A6).
2. **Start filter** (:func:`drop_start`). A candidate is dropped when its important position
   is the start token: the position category with the largest share of its summed score is
   ``"start"``. FFN value neurons are scored at the last position only (§6 A7), so the filter
   never drops them; a unit that is both value and query is dropped when either reading says
   ``"start"`` (the conservative choice).
3. **Causal masking** (:func:`causal_select`). Each remaining candidate is zero-masked alone
   and the training prompts are re-scored; its *effect* is the drop of mean ``|b|`` (``b = log
   p(man) - log p(woman)``). Candidates are taken in order of effect (largest first; only
   positive effects qualify) and each must pass a **capability guard**: masking it alone must
   not raise the pooled perplexity of held-out neutral paragraphs by more than ``guard_tol``
   (default 1 %). The guard texts (the last paragraphs of ``neutral_text.txt``) are disjoint
   from the paragraphs the evaluation measures perplexity on (the first ones). The guard is
   checked lazily, down the ranking, until ``k_max`` candidates passed (same result as
   checking all of them first). The variant :func:`cumulative_guard` (method_spec §6 A4) keeps
   a candidate only if masking it together with every neuron kept so far stays within the
   tolerance, so the tolerance bounds the whole edit.
4. **The edit** is the zero-ablation of the first ``K`` selected neurons (§6 A5 reading (i)),
   saved with :func:`analysis_lib.editing.save_edit`. Neuron-restricted fine-tuning (reading
   (ii)) is :func:`analysis_lib.finetune.finetune_neurons`; the fine-tuning baseline (LoRA,
   method_spec §4 (2)) is :func:`analysis_lib.finetune.finetune_lora`.

Baselines (:func:`baseline_conditions`): the model as is; logit-only top-K (no start filter,
no causal step: the three kinds' rankings interleaved by rank, first K distinct ids); K random
neurons with the same FFN/attention mix as the edit, drawn uniformly over all units (seeded
draws); the two general neurons (chapter 4's if saved, else the top-2 FFN query neurons of
our attribution whose important position is the start token).

Evaluation (:func:`evaluate_conditions`): a condition is a list of neurons to mask, or an
already edited model (e.g. a fine-tuned copy; :func:`condition_model`). CommonWords **test**
words (held out from selection):
mean ``|b|`` and share ``|b| > log 2`` with bootstrap intervals (words resampled within
category) and a paired bootstrap difference against the original model; neutral-text
perplexity on the evaluation paragraphs. :func:`suite_rows` adds ``bias_suite`` and
``capability_suite`` headline metrics for chosen conditions. :func:`edit_command` is the CLI
``edit`` subcommand.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import metrics
from .attribution import DatasetAttribution, dataset_attribution
from .editing import load_edit, mask_neurons, resolve_neurons, save_edit, apply_edit
from .errors import ParameterError, StudyError
from .neurons import NeuronId, arch
from .scoring import target_logprobs

__all__ = [
    "KINDS",
    "PROFILES",
    "headline_numbers",
    "signed_lean",
    "lean_text",
    "biased_targets",
    "candidates",
    "drop_start",
    "mask_effects",
    "causal_select",
    "cumulative_guard",
    "logit_only",
    "random_neurons",
    "general_neurons",
    "condition_model",
    "evaluate_conditions",
    "suite_rows",
    "select_and_save",
    "replicate",
    "replicate_text",
    "edit_command",
]

KINDS = ("ffn_value", "attn_value", "ffn_query")
TARGETS = (" man", " woman")

#: Parameters of the chapter per profile (the notebook's parameters cell mirrors these).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"n_train": 16, "n_causal": 16, "top_n": 10, "ks": [5, 10], "k_main": 10, "n_random": 3,
              "n_test": 40, "guard_texts": 4, "eval_texts": 8, "guard_tol": 0.01,
              "ft_steps": 6, "ft_beta": 1.0, "ft_lr": 1e-3, "ft_neuron_lr": 1e-2, "ft_rank": 8, "ft_batch": 16,
              "ft_kl_batch": 4},
    "full": {"n_train": 400, "n_causal": 120, "top_n": 50, "ks": [10, 25, 50, 100], "k_main": 50, "n_random": 10,
             "n_test": None, "guard_texts": 20, "eval_texts": 20, "guard_tol": 0.01,
             "ft_steps": 30, "ft_beta": 1.0, "ft_lr": 1e-3, "ft_neuron_lr": 1e-2, "ft_rank": 8, "ft_batch": 32,
             "ft_kl_batch": 4},
}


# ----------------------------------------------------------------------------- data


def subset_words(frame: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A seeded subset of ``n`` words, spread evenly over the categories (all if ``n`` is None)."""
    if n is None or n >= len(frame):
        return frame.reset_index(drop=True)
    rng = np.random.default_rng([int(seed), 5])
    cats = list(dict.fromkeys(frame["category"]))
    per = {c: n // len(cats) + (1 if i < n % len(cats) else 0) for i, c in enumerate(cats)}
    parts = []
    for c in cats:
        sub = frame[frame["category"] == c]
        take = rng.permutation(len(sub))[: per[c]]
        parts.append(sub.iloc[np.sort(take)])
    return pd.concat(parts).reset_index(drop=True)


def guard_and_eval_texts(n_guard: int, n_eval: int) -> tuple[list[str], list[str]]:
    """Disjoint neutral paragraphs: the guard uses the last ``n_guard``, evaluation the first ``n_eval``."""
    from .capability import neutral_texts

    texts = neutral_texts()
    if n_guard + n_eval > len(texts):
        raise ParameterError(f"guard_texts + eval_texts = {n_guard + n_eval} > the {len(texts)} neutral paragraphs.")
    return texts[len(texts) - n_guard:], texts[:n_eval]


def mean_abs_bias(model, prompts: Sequence[str], *, batch_size: int = 64) -> tuple[float, np.ndarray]:
    """``(mean |b|, b)`` over prompts, ``b = log p(" man") - log p(" woman")``."""
    lp = target_logprobs(model, list(prompts), list(TARGETS), batch_size=batch_size).double().numpy()
    b = lp[:, 0] - lp[:, 1]
    return float(np.abs(b).mean()), b


def biased_targets(model, prompts: Sequence[str]) -> list[str]:
    """Per prompt, the more probable of ``" man"`` / ``" woman"`` (the biased token, §6 A1)."""
    _, b = mean_abs_bias(model, prompts)
    return [TARGETS[0] if x > 0 else TARGETS[1] for x in b]


# ----------------------------------------------------------------------------- candidates


def candidates(da: DatasetAttribution, top_n: int) -> pd.DataFrame:
    """The top ``top_n`` neurons of each kind as one table (one row per distinct id).

    Columns: ``neuron`` (id string), ``kinds`` (e.g. ``"ffn_value+ffn_query"``), ``rank`` (best
    rank over its kinds), ``score`` (its score in its first kind), ``share_start``,
    ``important_position`` (``"start"`` if any of its kinds says so, else the first kind's),
    ``positions`` (per kind).
    """
    rows: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        if kind not in da.tables:
            continue
        df = da.tables[kind].sort_values("rank").head(top_n)
        for r in df.itertuples():
            nid = str(r.neuron)
            pos = str(r.important_position)
            if nid not in rows:
                rows[nid] = {"neuron": nid, "kinds": kind, "rank": int(r.rank), "score": float(r.score),
                             "share_start": float(r.share_start), "important_position": pos,
                             "positions": f"{kind}:{pos}"}
            else:
                row = rows[nid]
                row["kinds"] += "+" + kind
                row["rank"] = min(row["rank"], int(r.rank))
                row["positions"] += f", {kind}:{pos}"
                row["share_start"] = max(row["share_start"], float(r.share_start))
                if pos == "start":
                    row["important_position"] = "start"
    return pd.DataFrame(list(rows.values()))


def drop_start(cands: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(kept, dropped)``: candidates whose important position is the start token are dropped."""
    is_start = cands["important_position"] == "start"
    return cands[~is_start].reset_index(drop=True), cands[is_start].reset_index(drop=True)


def logit_only(da: DatasetAttribution, k: int) -> list[str]:
    """The logit-only ablation baseline: the three kinds' rankings interleaved by rank
    (rank 1 of each kind, then rank 2, ...), first ``k`` distinct ids; no start filter."""
    lists = [da.tables[kd].sort_values("rank")["neuron"].astype(str).tolist() for kd in KINDS if kd in da.tables]
    out: list[str] = []
    for i in range(max(len(x) for x in lists)):
        for lst in lists:
            if i < len(lst) and lst[i] not in out:
                out.append(lst[i])
            if len(out) == k:
                return out
    return out


def random_neurons(model, n_ffn: int, n_attn: int, seed: int) -> list[str]:
    """``n_ffn`` FFN and ``n_attn`` aggregated attention neurons drawn uniformly (without
    replacement) over all units of the model, from ``numpy.random.default_rng(seed)``."""
    a = arch(model)
    rng = np.random.default_rng(seed)
    ffn = rng.choice(a.n_layers * a.d_mlp, size=n_ffn, replace=False)
    att = rng.choice(a.n_layers * a.n_heads * a.d_head, size=n_attn, replace=False)
    out = [str(NeuronId("ffn", layer=int(i // a.d_mlp), index=int(i % a.d_mlp))) for i in ffn]
    for i in att:
        l, rest = divmod(int(i), a.n_heads * a.d_head)
        h, j = divmod(rest, a.d_head)
        out.append(str(NeuronId("attn", layer=l, head=h, dim=j)))
    return out


def general_neurons(da: DatasetAttribution | None = None, n: int = 2, *, model_name: str | None = None) -> tuple[list[str], str]:
    """The general neurons: chapter 4's saved ones if its results exist for the same model,
    else the top-``n`` FFN query neurons of ``da`` whose important position is the start token.

    Args:
        da: this chapter's dataset attribution (the fallback).
        n: how many.
        model_name: the model the neurons are for; chapter 4's results are used only when they
            were computed on this model (``None``: on the model ``da`` came from, if known,
            else any).

    Returns:
        ``(ids, source)`` with ``source`` saying where they came from.
    """
    import json

    from .results import results_dir

    want = model_name if model_name is not None else getattr(da, "model_name", None)
    for path in sorted(results_dir().glob("04_general_neurons*.json")):
        try:
            payload = json.loads(path.read_text())
            data = payload.get("results", {})
        except (OSError, ValueError):
            continue
        if want is not None and payload.get("parameters", {}).get("model") != want:
            continue
        for key, value in data.items():
            if "general" in key and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                try:
                    ids = [str(NeuronId.parse(v)) for v in value][:n]
                except StudyError:
                    continue
                return ids, f"chapter 4 ({path.name}: {key})"
    if da is None or "ffn_query" not in da.tables:
        raise StudyError("No general neurons: chapter 4 has no saved results and no query attribution was given.")
    q = da.tables["ffn_query"].sort_values("rank")
    q = q[q["important_position"] == "start"]
    return q["neuron"].astype(str).head(n).tolist(), "top FFN query neurons at the start token (this chapter's attribution)"


# ----------------------------------------------------------------------------- causal step


def _pooled_ppl(model, texts: Sequence[str]) -> float:
    from .capability import perplexity_task

    rec = perplexity_task(model, list(texts)).records
    return float(np.exp(rec["nll"].sum() / rec["n_tokens"].sum()))


class _LayerCache:
    """The residual stream entering every layer for a fixed batch of prompts (unedited model).

    A neuron of layer ``l`` cannot change anything before layer ``l``, so its masked scores
    only need layers ``l..L-1``: the decoder runs on the cached input of layer ``l`` with the
    earlier layers taken out of the layer list. Exact (same modules, same positions); right
    padding keeps every read position unaffected by the pads.
    """

    def __init__(self, model, prompts: Sequence[str]):
        from .models import encode, single_token_id

        self.model = model
        self.inner = model.original_model.model
        self.enc = encode(model, list(prompts))
        self.ids = [single_token_id(model, t) for t in TARGETS]
        store: dict[int, torch.Tensor] = {}
        handles = []
        for i, layer in enumerate(self.inner.layers):
            def grab(mod, args, kwargs, i=i):
                h = args[0] if args else kwargs["hidden_states"]
                store[i] = h.detach().clone()
            handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
        try:
            with torch.inference_mode():
                self.inner(input_ids=self.enc.tokens, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.store = store

    def bias(self, start_layer: int) -> np.ndarray:
        from .scoring import _unembed

        layers = self.inner.layers
        try:
            self.inner.layers = torch.nn.ModuleList(list(layers)[start_layer:])
            with torch.inference_mode():
                hid = self.inner(inputs_embeds=self.store[start_layer], use_cache=False).last_hidden_state
                last = hid[torch.arange(hid.shape[0], device=hid.device), self.enc.last_index]
                lp = _unembed(self.model, last).float().log_softmax(-1)[:, self.ids].double().cpu().numpy()
        finally:
            self.inner.layers = layers
        return lp[:, 0] - lp[:, 1]


class _GuardCache:
    """Pooled perplexity of fixed texts with a masked neuron, starting at the neuron's layer.

    The same batches as :func:`analysis_lib.capability.perplexity_task` (start token, longest
    first, right padding, ``batch_size`` 16); the residual stream entering every layer is kept
    from one unedited pass, so a masked run only executes layers ``l..L-1`` (exact for the same
    reason as :class:`_LayerCache`). :meth:`ppl` with ``start_layer=0`` equals the full pass.
    """

    def __init__(self, model, texts: Sequence[str], batch_size: int = 16):
        from .models import token_ids

        self.model = model
        self.inner = model.original_model.model
        prefix = [model.start_token_id] if model.start_token_id is not None else []
        rows = [prefix + token_ids(model, t) for t in texts]
        order = np.argsort([-len(r) for r in rows], kind="stable")
        pad = model.tokenizer.pad_token_id or 0
        device = model.cfg.device or "cpu"
        self.batches = []
        for s0 in range(0, len(order), batch_size):
            idx = order[s0 : s0 + batch_size]
            toks = torch.full((len(idx), len(rows[idx[0]])), pad, dtype=torch.long)
            for b, i in enumerate(idx):
                toks[b, : len(rows[i])] = torch.tensor(rows[i])
            toks = toks.to(device)  # the model's device (on CUDA the CPU ids failed and the guard fell back to full passes)
            store: dict[int, torch.Tensor] = {}
            handles = []
            for i, layer in enumerate(self.inner.layers):
                def grab(mod, args, kwargs, i=i, store=store):
                    h = args[0] if args else kwargs["hidden_states"]
                    store[i] = h.detach().clone()
                handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
            try:
                with torch.inference_mode():
                    self.inner(input_ids=toks, use_cache=False)
            finally:
                for h in handles:
                    h.remove()
            self.batches.append((toks, [len(rows[i]) for i in idx], store))
        self.n_tokens = float(sum(len(r) - 1 for r in rows))

    def ppl(self, start_layer: int) -> float:
        from .scoring import _unembed

        layers = self.inner.layers
        total = 0.0
        try:
            self.inner.layers = torch.nn.ModuleList(list(layers)[start_layer:])
            with torch.inference_mode():
                for toks, lengths, store in self.batches:
                    hid = self.inner(inputs_embeds=store[start_layer], use_cache=False).last_hidden_state
                    for b, n in enumerate(lengths):
                        lp = _unembed(self.model, hid[b, : n - 1]).float().log_softmax(-1)
                        total += -lp.gather(-1, toks[b, 1:n, None]).sum().item()
        finally:
            self.inner.layers = layers
        return float(np.exp(total / self.n_tokens))


def _guard_ppl_fn(model, texts: Sequence[str]):
    """``f(neurons) -> pooled guard perplexity with those neurons masked``: layer-skipping
    (:class:`_GuardCache`) when it reproduces the full pass on the unedited model to 1e-6
    (relative), otherwise the full :func:`_pooled_ppl` every time."""
    from .editing import has_position_hooks

    def slow(neurons):
        with mask_neurons(model, list(neurons)):
            return _pooled_ppl(model, texts)

    if has_position_hooks(model):
        return slow
    try:
        cache = _GuardCache(model, texts)
        ok = abs(cache.ppl(0) / _pooled_ppl(model, texts) - 1.0) < 1e-6
    except Exception:  # an architecture the layer slicing does not fit
        ok = False
    if not ok:
        return slow

    def fast(neurons):
        neurons = list(neurons)
        if not neurons:
            return cache.ppl(0)
        with mask_neurons(model, neurons):
            return cache.ppl(min(NeuronId.parse(n).layer for n in neurons))

    return fast


def mask_effects(model, neurons: Sequence[str], prompts: Sequence[str], *, batch_size: int = 64,
                 progress: bool = False, fast: bool = True) -> tuple[float, pd.DataFrame]:
    """Mask each neuron alone and re-score ``prompts``.

    With ``fast`` (default), each masked run starts at the neuron's layer from the cached
    residual stream (:class:`_LayerCache`); the first neuron is also scored the slow way (a
    full :func:`analysis_lib.scoring.target_logprobs` pass) and the fast path is only used if
    both agree to 1e-4 (otherwise every neuron is scored the slow way).

    Returns:
        ``(mean |b| of the original model, table)`` with one row per neuron: ``neuron``,
        ``mean_abs_b`` (masked) and ``effect`` (original minus masked; > 0 = less bias).
    """
    from tqdm.auto import tqdm

    from .editing import has_position_hooks

    neurons = [str(n) for n in neurons]
    base, _ = mean_abs_bias(model, prompts, batch_size=batch_size)
    cache = None
    if fast and neurons and not has_position_hooks(model):
        try:
            cache = _LayerCache(model, prompts)
            first = NeuronId.parse(neurons[0])
            with mask_neurons(model, [first]):
                ok = abs(float(np.abs(cache.bias(first.layer)).mean()) - mean_abs_bias(model, prompts)[0]) < 1e-4
            if not ok:
                cache = None
        except Exception:  # an architecture the layer slicing does not fit: use the slow path
            cache = None
    rows = []
    for nid in tqdm(neurons, disable=not progress, desc="masking"):
        with mask_neurons(model, [nid]):
            if cache is not None:
                m = float(np.abs(cache.bias(NeuronId.parse(nid).layer)).mean())
            else:
                m, _ = mean_abs_bias(model, prompts, batch_size=batch_size)
        rows.append({"neuron": nid, "mean_abs_b": m, "effect": base - m})
    return base, pd.DataFrame(rows, columns=["neuron", "mean_abs_b", "effect"])


def causal_select(model, cands: pd.DataFrame, prompts: Sequence[str], guard_texts: Sequence[str], k_max: int,
                  *, guard_tol: float = 0.01, progress: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The causal-masking step: rank candidates by masking effect and apply the guard.

    Returns:
        ``(table, info)``: ``cands`` with ``mean_abs_b``, ``effect``, ``ppl_ratio`` (masked /
        original guard perplexity; NaN where the guard was not needed), ``passed`` and
        ``selected`` (1-based order of selection, 0 = not selected), sorted by effect; ``info``
        holds the original ``mean_abs_b`` and guard perplexity.
    """
    base, eff = mask_effects(model, cands["neuron"].tolist(), prompts, progress=progress)
    table = cands.merge(eff, on="neuron").sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    ppl0 = _pooled_ppl(model, guard_texts) if len(guard_texts) else float("nan")
    guard_ppl = _guard_ppl_fn(model, guard_texts) if len(guard_texts) else None
    ratio = np.full(len(table), np.nan)
    passed = np.zeros(len(table), bool)
    selected = np.zeros(len(table), int)
    n_sel = 0
    for i, r in enumerate(table.itertuples()):
        if n_sel >= k_max or r.effect <= 0:
            break
        if guard_ppl is not None:
            ratio[i] = guard_ppl([r.neuron]) / ppl0
            passed[i] = ratio[i] - 1.0 <= guard_tol
        else:
            passed[i] = True
        if passed[i]:
            n_sel += 1
            selected[i] = n_sel
    table["ppl_ratio"], table["passed"], table["selected"] = ratio, passed, selected
    return table, {"mean_abs_b": base, "guard_ppl": ppl0, "guard_tol": guard_tol, "n_selected": n_sel}


def selected_neurons(table: pd.DataFrame, k: int, column: str = "selected") -> list[str]:
    """The first ``k`` neurons chosen by :func:`causal_select` (fewer if fewer passed).

    ``column="joint_selected"`` reads the cumulative guard's choice (:func:`cumulative_guard`).
    """
    sel = table[table[column] > 0].sort_values(column)
    return sel["neuron"].head(k).tolist()


def cumulative_guard(model, table: pd.DataFrame, guard_texts: Sequence[str], k_max: int, *,
                     guard_tol: float = 0.01, progress: bool = False) -> pd.DataFrame:
    """The cumulative (greedy joint) variant of the guard (method_spec §6 A4).

    Goes through the candidates of a :func:`causal_select` table in the same order (decreasing
    single-mask effect, stopping at the first non-positive effect or at ``k_max``), but a
    candidate is kept only if masking it *together with every neuron kept so far* raises the
    guard perplexity by at most ``guard_tol``: the tolerance then bounds the edit as a whole,
    not each neuron alone.

    Returns:
        A copy of ``table`` with ``joint_ppl_ratio`` (guard perplexity with the kept set plus this
        candidate masked, over the original; NaN where not reached) and ``joint_selected``
        (1-based order, 0 = not selected).
    """
    from tqdm.auto import tqdm

    if not len(guard_texts):
        raise ParameterError("The cumulative guard needs guard texts (neutral paragraphs) to measure perplexity on.")
    out = table.copy()
    ppl0 = _pooled_ppl(model, guard_texts)
    guard_ppl = _guard_ppl_fn(model, guard_texts)
    ratio = np.full(len(out), np.nan)
    selected = np.zeros(len(out), int)
    kept: list[str] = []
    for i, r in enumerate(tqdm(list(out.itertuples()), disable=not progress, desc="joint guard")):
        if len(kept) >= k_max or r.effect <= 0:
            break
        ratio[i] = guard_ppl(kept + [r.neuron]) / ppl0
        if ratio[i] - 1.0 <= guard_tol:
            kept.append(r.neuron)
            selected[i] = len(kept)
    out["joint_ppl_ratio"], out["joint_selected"] = ratio, selected
    return out


# ----------------------------------------------------------------------------- evaluation


def _is_model(condition: Any) -> bool:
    return hasattr(condition, "original_model") or isinstance(condition, torch.nn.Module)


@contextlib.contextmanager
def condition_model(model, condition: Any) -> Iterator[Any]:
    """The model a condition is evaluated on, inside a ``with`` block.

    Args:
        model: the loaded bridge the neuron conditions edit.
        condition: a list of neuron ids (masked in ``model`` for the block and restored after;
            ``[]`` = ``model`` as is) or an already edited model, such as a copy from
            :func:`analysis_lib.editing.edited_copy` or :mod:`analysis_lib.finetune`
            (yielded as is).
    """
    if _is_model(condition):
        yield condition
    elif len(condition):
        with mask_neurons(model, list(condition)):
            yield model
    else:
        yield model


def _n_neurons(condition: Any) -> Any:
    """Neurons a condition edits: the list's length, a model's ``edit_neurons``, else NA."""
    if _is_model(condition):
        ids = getattr(condition, "edit_neurons", None)
        return len(ids) if ids is not None else pd.NA
    return len(condition)


def _condition_items(model, condition: Any, test: pd.DataFrame, eval_texts: Sequence[str]):
    from .benchmarks import commonwords_bias
    from .capability import perplexity_task

    with condition_model(model, condition) as m:
        it = commonwords_bias(m, test, "noun")
        pp = perplexity_task(m, list(eval_texts)).records if len(eval_texts) else None
    return it, pp


def headline_numbers(r: Any, orig: Any) -> dict[str, tuple[Any, str | None]]:
    """The chapter's glued numbers for one condition row of :func:`evaluate_conditions`.

    Args:
        r: the condition's row (``mean_abs_b``, ``d_mean_abs_b`` with ``_low``/``_high``,
            ``share_strong``, ``d_ppl_pct`` with ``_low``/``_high``).
        orig: the original model's row.

    Returns:
        ``suffix -> (value, fmt)`` for :meth:`Results.add`: ``mean_abs_b``, ``d``, ``d_ci``,
        ``rel`` (percent of the original mean |b|), ``share`` (percent strongly gendered),
        ``dppl``, ``dppl_ci`` and ``verdict``: "reduces" when the paired interval lies below 0,
        "increases" when it lies above 0, else "does not significantly change".
    """
    return {
        "mean_abs_b": (float(r.mean_abs_b), ".3f"),
        "d": (float(r.d_mean_abs_b), "+.3f"),
        "d_ci": (f"[{r.d_mean_abs_b_low:+.3f}, {r.d_mean_abs_b_high:+.3f}]", None),
        "rel": (f"{100 * r.d_mean_abs_b / orig.mean_abs_b:+.0f}", None),
        "share": (f"{100 * r.share_strong:.0f}", None),
        "dppl": (f"{r.d_ppl_pct:+.2f}", None),
        "dppl_ci": (f"[{r.d_ppl_pct_low:+.2f}, {r.d_ppl_pct_high:+.2f}]", None),
        "verdict": ("reduces" if r.d_mean_abs_b_high < 0 else
                    "increases" if r.d_mean_abs_b_low > 0 else "does not significantly change", None),
    }


def signed_lean(items: Mapping[str, pd.DataFrame], reference: str = "original") -> pd.DataFrame:
    """Which way each condition leans: the signed bias, not only its size.

    Mean $|b|$ cannot tell a model that lost its bias from one whose bias flipped to the other
    gender. With $b = \\log p(\\text{man}) - \\log p(\\text{woman})$ (positive = male lean),
    this reports per condition the mean signed ``b`` over the reference's words, the share of
    words with ``b < 0`` and the share whose sign differs from the reference's (a word with
    ``b == 0`` has sign 0, so it counts as changed against any non-zero reference).

    Args:
        items: ``condition -> per-word table`` with ``word`` and ``b`` (the second return value
            of :func:`evaluate_conditions`).
        reference: the condition to compare signs with.

    Returns:
        One row per condition: ``condition``, ``mean_b``, ``share_female``, ``share_flipped``.
    """
    if reference not in items:
        raise KeyError(f"No condition {reference!r} among {list(items)}; pass reference= one of them.")
    ref = items[reference].set_index("word")["b"]
    rows = []
    for cond, it in items.items():
        b = it.set_index("word")["b"].reindex(ref.index)
        if b.isna().any():
            raise ValueError(f"Condition {cond!r} lacks words of {reference!r}: {list(ref.index[b.isna()][:5])}")
        rows.append({"condition": cond, "mean_b": float(b.mean()), "share_female": float((b < 0).mean()),
                     "share_flipped": float((np.sign(b) != np.sign(ref)).mean())})
    return pd.DataFrame(rows)


def lean_text(lean: pd.DataFrame, condition: str, reference: str = "original") -> tuple[str, str]:
    """A sentence (and a short form) on how ``condition`` moved the signed lean of ``reference``.

    The verdict: *overshoots* when the mean signed ``b`` changes sign and ends larger in size
    than it started, *crosses zero* when it changes sign but ends smaller, else *keeps its
    direction*.

    Returns:
        ``(sentence, short)``, plain text (glued text is not parsed as Markdown), e.g.
        ``"mean b +0.571 → -1.264, 72 % of the words change sign"``.
    """
    t = lean.set_index("condition")
    m0, m1 = float(t.loc[reference, "mean_b"]), float(t.loc[condition, "mean_b"])
    flipped = float(t.loc[condition, "share_flipped"])

    def side(m: float) -> str:
        return "male" if m > 0 else "female" if m < 0 else "neither"

    # plain text: glued text is not parsed as Markdown, so no $...$ here
    short = f"mean b {m0:+.3f} → {m1:+.3f}, {100 * flipped:.0f} % of the words change sign"
    start = (f"On average the test words lean {side(m0)} under the {reference} model (mean signed b {m0:+.3f}; "
             f"b > 0 is a male lean); {condition} moves them to {m1:+.3f} and changes the sign of b for "
             f"{100 * flipped:.0f} % of them")
    if np.sign(m1) != np.sign(m0) and abs(m1) > abs(m0):
        end = (f": it does not remove the lean, it overshoots into a stronger {side(m1)} one. Each neuron was "
               "chosen because masking it alone lowered mean |b| on the training words; masked together, "
               "their pushes in the same direction add up past zero.")
    elif np.sign(m1) != np.sign(m0):
        end = f": the average lean crosses zero into a weaker {side(m1)} one."
    else:
        end = ": the average lean keeps its direction."
    return start + end, short


def evaluate_conditions(model, conditions: Mapping[str, Any], test: pd.DataFrame, eval_texts: Sequence[str],
                        *, seed: int = 0, n_boot: int = 1000, reference: str = "original",
                        groups: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Evaluate each condition: a list of neurons to mask (``[]`` = the model as is) or an
    already edited model (e.g. a fine-tuned copy), see :func:`condition_model`.

    Returns:
        ``(table, items)``. ``table``: one row per condition with ``condition``, ``group``,
        ``n_neurons`` (NA for a model that is not a neuron edit), ``mean_abs_b`` (+ ``_low``/``_high``), ``share_strong`` (+ CI),
        ``d_mean_abs_b`` (paired difference vs ``reference``, + CI), ``ppl`` (+ CI) and
        ``d_ppl_pct`` (relative change vs ``reference`` in %, + CI), ``seconds``. ``items``:
        per condition the CommonWords test items (``b`` per word) and perplexity records.
    """
    if reference not in conditions:
        raise ParameterError(f"The reference condition {reference!r} is not among the conditions.")
    items: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]] = {}
    secs = {}
    for name, neurons in conditions.items():
        t0 = time.perf_counter()
        items[name] = _condition_items(model, neurons, test, eval_texts)
        secs[name] = time.perf_counter() - t0
    ref_b = items[reference][0]["b"].to_numpy(float)
    ref_pp = items[reference][1]
    cat = test["category"].to_numpy()
    kw = dict(n_boot=n_boot, seed=seed, strata=cat)
    rows = []
    for name, (it, pp) in items.items():
        b = it["b"].to_numpy(float)
        mab = metrics.bootstrap_ci(lambda x: np.abs(x).mean(-1), b, vectorized=True, **kw)
        ss = metrics.bootstrap_ci(lambda x: (np.abs(x) > metrics.LOG2).mean(-1), b, vectorized=True, **kw)
        d = metrics.paired_bootstrap_diff(lambda x: float(np.abs(x).mean()), b, ref_b, **kw)
        row = {"condition": name, "group": (groups or {}).get(name, name), "n_neurons": _n_neurons(conditions[name]),
               "mean_abs_b": mab.estimate, "mean_abs_b_low": mab.low, "mean_abs_b_high": mab.high,
               "share_strong": ss.estimate, "share_strong_low": ss.low, "share_strong_high": ss.high,
               "d_mean_abs_b": d.estimate, "d_mean_abs_b_low": d.low, "d_mean_abs_b_high": d.high}
        if pp is not None:
            nll, cnt = pp["nll"].to_numpy(float), pp["n_tokens"].to_numpy(float)

            def pooled(a, c):
                return float(np.exp(a.sum() / c.sum()))

            pci = metrics.bootstrap_ci(pooled, nll, cnt, n_boot=n_boot, seed=seed)
            rnll = ref_pp["nll"].to_numpy(float)
            # 100 * (ppl - ppl_ref) / ppl_ref, paired over texts
            dp = metrics.paired_bootstrap_diff(lambda a, c: 100.0 * pooled(a, c), (nll, cnt), (rnll, cnt),
                                               n_boot=n_boot, seed=seed)
            ref_ppl = pooled(rnll, cnt)
            row.update({"ppl": pci.estimate, "ppl_low": pci.low, "ppl_high": pci.high,
                        "d_ppl_pct": dp.estimate / ref_ppl, "d_ppl_pct_low": dp.low / ref_ppl,
                        "d_ppl_pct_high": dp.high / ref_ppl})
        row["seconds"] = round(secs[name], 2)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["n_neurons"] = table["n_neurons"].astype("Int64")
    return table, {n: v[0] for n, v in items.items()}


def suite_rows(model, conditions: Mapping[str, Any], *, bias_profile: Any = "quick",
               capability_profile: Any = "quick", seed: int = 0, capability_tasks: Sequence[str] | None = None,
               bias: bool = True) -> pd.DataFrame:
    """``bias_suite`` and ``capability_suite`` headline metrics for each condition (long table:
    ``condition, benchmark, metric, estimate, low, high, n, better``). A condition is a neuron
    list or an edited model, as in :func:`evaluate_conditions`."""
    from .benchmarks import bias_suite
    from .capability import capability_suite

    keep = {("commonwords", "mean_abs_b"), ("stereoset", "lms"), ("stereoset", "ss"), ("stereoset", "icat"),
            ("winogender", "entropy_difference"), ("bbq", "s_amb"), ("bbq", "s_dis"), ("bbq", "accuracy"),
            ("winobias", "gap")}
    frames = []
    for name, condition in conditions.items():
        with condition_model(model, condition) as m:
            if bias:
                bt = bias_suite(m, bias_profile, seed=seed)
                bt = bt[[(b, m) in keep for b, m in zip(bt.benchmark, bt.metric)]]
                bt = bt[(bt.benchmark != "commonwords") | (bt.variant == "noun")]
                bt = bt[(bt.benchmark != "stereoset") | (bt.variant == "intrasentence")]
                frames.append(pd.DataFrame({"condition": name, "benchmark": bt.benchmark, "metric": bt.metric,
                                            "estimate": bt.estimate, "low": bt.low, "high": bt.high, "n": bt.n,
                                            "better": bt.better}))
            ct = capability_suite(m, capability_profile, seed, tasks=capability_tasks)
            frames.append(pd.DataFrame({"condition": name, "benchmark": ct.task, "metric": ct.metric,
                                        "estimate": ct.value, "low": ct.ci_low, "high": ct.ci_high, "n": ct.n,
                                        "better": ["lower" if m == "perplexity" else "higher" for m in ct.metric]}))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- whole pipeline


def select_and_save(model, train: pd.DataFrame, *, top_n: int, k_max: int, n_causal: int | None, guard_texts,
                    guard_tol: float, seed: int, edit_path: str | Path | None, k_edit: int,
                    progress: bool = False) -> dict[str, Any]:
    """Steps 1-4 on the training words; returns everything the chapter reports.

    Keys: ``attribution`` (:class:`DatasetAttribution`), ``candidates``, ``kept``,
    ``dropped``, ``causal`` (table of :func:`causal_select`), ``causal_info``, ``edit``
    (the selected ids), ``seconds`` (per step).
    """
    secs = {}
    t0 = time.perf_counter()
    prompts = train["prompt"].tolist()
    targets = biased_targets(model, prompts)
    da = dataset_attribution(model, prompts, targets, top_k=top_n, words=train["word"].tolist(), progress=progress)
    secs["attribution"] = time.perf_counter() - t0
    cands = candidates(da, top_n)
    kept, dropped = drop_start(cands)
    t1 = time.perf_counter()
    causal_prompts = subset_words(train, n_causal, seed)["prompt"].tolist()
    table, info = causal_select(model, kept, causal_prompts, guard_texts, k_max, guard_tol=guard_tol, progress=progress)
    secs["causal"] = time.perf_counter() - t1
    edit = selected_neurons(table, k_edit)
    if edit_path is not None and edit:
        save_edit(edit_path, edit, model=model,
                  selection=(f"Chapter 5: top-{top_n} FFN value / attention value / FFN query neurons by summed "
                             f"logit importance for the biased token on {len(train)} CommonWords train words; "
                             f"start-position candidates dropped ({len(dropped)}); the {len(edit)} with the largest "
                             f"single-mask drop of mean |b| on {len(causal_prompts)} train words whose masking raises "
                             f"neutral perplexity by <= {100 * guard_tol:g}% ; zero ablation; seed {seed}"),
                  metadata={"top_n": top_n, "n_train": len(train), "n_causal": len(causal_prompts),
                            "guard_tol": guard_tol, "seed": seed,
                            "effects": {r.neuron: float(r.effect) for r in table.itertuples() if r.neuron in edit}})
    return {"attribution": da, "targets": targets, "candidates": cands, "kept": kept, "dropped": dropped,
            "causal": table, "causal_info": info, "edit": edit, "causal_prompts": causal_prompts, "seconds": secs}


def replicate(name: str, train: pd.DataFrame, test: pd.DataFrame, guard_texts: Sequence[str],
              eval_texts: Sequence[str], *, top_n: int, k: int, n_causal: int | None, n_random: int,
              guard_tol: float, seed: int, device: str = "cpu", dtype: str = "float32",
              progress: bool = False) -> dict[str, Any]:
    """The chapter's recipe and its main comparison on another model, in one call.

    Loads ``name``, selects the edit on ``train`` (:func:`select_and_save`, nothing saved) and
    evaluates the original model, the K = ``k`` edit, the logit-only top-``k``, ``n_random``
    random draws of the edit's FFN/attention mix and that model's own general neurons (the top
    start-position FFN query neurons of its attribution, or chapter 4's if they were computed on
    this model) on ``test`` and ``eval_texts`` (:func:`evaluate_conditions`).

    Returns:
        ``{"table", "edit", "general", "general_source", "counts", "seconds"}``; ``table`` has a
        ``model`` column; ``counts`` holds the selection's numbers (candidates, dropped, kept,
        selected).
    """
    from .models import load_model

    t0 = time.perf_counter()
    m = load_model(name, device=device, dtype=dtype)
    try:
        sel = select_and_save(m, train, top_n=top_n, k_max=k, n_causal=n_causal, guard_texts=guard_texts,
                              guard_tol=guard_tol, seed=seed, edit_path=None, k_edit=k, progress=progress)
        edit, da = sel["edit"], sel["attribution"]
        n_ffn = sum(x.startswith("ffn") for x in edit)
        gen, gen_source = general_neurons(da, model_name=name)
        conds: dict[str, Any] = {"original": [], f"edit K={k}": edit, f"logit-only K={k}": logit_only(da, k)}
        groups = {"original": "original", f"edit K={k}": "edit (ours)", f"logit-only K={k}": "logit-only"}
        for r in range(n_random):
            conds[f"random #{r}"] = random_neurons(m, n_ffn, len(edit) - n_ffn, seed * 1000 + r)
            groups[f"random #{r}"] = f"random ({k})"
        conds["general neurons"], groups["general neurons"] = gen, "general neurons"
        table, _ = evaluate_conditions(m, conds, test, eval_texts, seed=seed, groups=groups)
    finally:
        del m
    causal = sel["causal"]
    counts = {"candidates": len(sel["candidates"]), "dropped_start": len(sel["dropped"]), "kept": len(sel["kept"]),
              "positive": int((causal.effect > 0).sum()), "selected": int((causal.selected > 0).sum())}
    return {"table": table.assign(model=name), "edit": edit, "general": gen, "general_source": gen_source,
            "counts": counts, "seconds": {**sel["seconds"], "total": time.perf_counter() - t0}}


def replicate_text(table: pd.DataFrame) -> str:
    """One paragraph summarising a :func:`replicate` table (for the chapter's text)."""
    t = table.set_index("condition")
    name = str(table["model"].iloc[0])
    orig, ed = t.loc["original"], t[t.group == "edit (ours)"].iloc[0]
    rnd = t[t.group.str.startswith("random")]
    change = ("a significant reduction" if ed.d_mean_abs_b_high < 0 else
              "a significant increase" if ed.d_mean_abs_b_low > 0 else "no significant change")
    parts = [f"On {name} the original model has a mean |b| of {orig.mean_abs_b:.3f} on the test words. "
             f"Its edit ({int(ed.n_neurons)} neurons) changes it by {ed.d_mean_abs_b:+.3f} "
             f"[{ed.d_mean_abs_b_low:+.3f}, {ed.d_mean_abs_b_high:+.3f}] "
             f"({change}) "
             f"for {ed.d_ppl_pct:+.2f} % perplexity"]
    if len(rnd):
        parts.append(f"; {len(rnd)} random draws of the same mix change it by {rnd.d_mean_abs_b.min():+.3f} to "
                     f"{rnd.d_mean_abs_b.max():+.3f}")
    lo = t[t.group == "logit-only"]
    if len(lo):
        parts.append(f"; the logit-only top-K by {lo.d_mean_abs_b.iloc[0]:+.3f} ({lo.d_ppl_pct.iloc[0]:+.1f} % perplexity)")
    if "general neurons" in t.index:
        g = t.loc["general neurons"]
        parts.append(f"; its own general neurons by {g.d_mean_abs_b:+.3f} ({g.d_ppl_pct:+.1f} % perplexity)")
    return "".join(parts) + "."


# ----------------------------------------------------------------------------- CLI


EVAL_TASKS = ("commonwords", "stereoset", "winogender", "bbq", "winobias", "arithmetic", "race", "piqa", "perplexity")


def _parse_tasks(text: str) -> list[str]:
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in EVAL_TASKS]
    if not tasks or bad:
        raise ParameterError(f"Unknown evaluation task(s) {bad or [text]}; choose a comma list of {', '.join(EVAL_TASKS)}.")
    return tasks


def _eval_tasks(model, tasks: Sequence[str], profile: str, seed: int) -> list[dict[str, Any]]:
    from . import benchmarks as bm
    from . import capability as cap
    from .commonwords import load_commonwords, to_frame

    s = dict(bm.SUITE_PROFILES[profile])
    rows = []

    def add(task, metric, r, better):
        rows.append({"task": task, "metric": metric, "value": float(r.estimate), "low": float(r.low),
                     "high": float(r.high), "better": better})

    for t in tasks:
        if t == "commonwords":
            frame = to_frame(load_commonwords(seed))
            frame = frame[frame["split"] == "test"].reset_index(drop=True)
            sc = bm.commonwords_summary(bm.commonwords_bias(model, frame, "noun"), seed=seed)
            add(t, "mean_abs_b", sc["mean_abs_b"], "lower")
            add(t, "share_strong", sc["share_strong"], "lower")
        elif t == "stereoset":
            _, sc = bm.stereoset_eval(model, "intrasentence", s["stereoset_n"], seed)
            for k in ("lms", "ss", "icat"):
                add(t, k, sc[k], {"lms": "higher", "ss": "closer to 50", "icat": "higher"}[k])
        elif t == "winogender":
            _, sc = bm.winogender_eval(model, s["winogender_n"], seed)
            add(t, "entropy_difference", sc["entropy_difference"], "lower")
        elif t == "bbq":
            _, sc = bm.bbq_eval(model, "Gender_identity", s["bbq_n"], seed)
            for k in ("accuracy", "s_amb", "s_dis"):
                add(t, k, sc[k], "higher" if k == "accuracy" else "closer to 0")
        elif t == "winobias":
            _, sc = bm.winobias_eval(model, "test", s["winobias_n"], seed)
            add(t, "gap", sc["gap"], "closer to 0")
        else:
            names = {"arithmetic": ["arithmetic_1digit", "arithmetic_2digit"], "race": ["race"], "piqa": ["piqa"],
                     "perplexity": ["neutral"]}[t]
            ct = cap.capability_suite(model, profile, seed, tasks=names)
            for r in ct.itertuples():
                rows.append({"task": r.task, "metric": r.metric, "value": float(r.value), "low": float(r.ci_low),
                             "high": float(r.ci_high), "better": "lower" if r.metric == "perplexity" else "higher"})
    return rows


def edit_command(model_name: str | None, edit_file: str, tasks_text: str, *, profile: str = "quick",
                 seed: int = 0) -> dict[str, Any]:
    """The ``edit`` subcommand: evaluate ``tasks`` before and after applying a saved edit.

    The edit file is read and checked (model name, start token, id ranges) before anything is
    evaluated. Raises a :class:`StudyError` subclass for every user error.
    """
    from .models import load_model

    tasks = _parse_tasks(tasks_text)
    if profile not in PROFILES:
        raise ParameterError(f"Unknown profile {profile!r}; use quick or full.")
    spec = load_edit(edit_file)
    model = load_model(model_name or spec.model)
    with apply_edit(model, spec):  # checks model, start token and ranges up front
        pass
    t0 = time.perf_counter()
    before = _eval_tasks(model, tasks, profile, seed)
    with apply_edit(model, spec):
        after = _eval_tasks(model, tasks, profile, seed)
    rows = [{**b, "value_before": b["value"], "value_after": a["value"], "diff": a["value"] - b["value"],
             "ci_before": [b["low"], b["high"]], "ci_after": [a["low"], a["high"]]} for b, a in zip(before, after)]
    for r in rows:
        for k in ("value", "low", "high"):
            r.pop(k)
    return {"model": model.study_name, "edit": str(edit_file), "n_neurons": len(spec.neurons),
            "selection": spec.selection, "profile": profile, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def edit_text(payload: Mapping[str, Any]) -> str:
    """The ``edit`` subcommand's table as text."""
    lines = [f"model {payload['model']}, edit {payload['edit']} ({payload['n_neurons']} neurons), "
             f"profile {payload['profile']}",
             f"{'task':20s} {'metric':20s} {'before':>10s} {'after':>10s} {'diff':>10s}  better"]
    for r in payload["rows"]:
        lines.append(f"{r['task']:20s} {r['metric']:20s} {r['value_before']:10.4g} {r['value_after']:10.4g} "
                     f"{r['diff']:+10.4g}  {r['better']}")
    return "\n".join(lines)
