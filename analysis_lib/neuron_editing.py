"""Chapter 5: editing the bias away (paper 1's neuron-editing method, method_spec §2.2 P1-E).

The pipeline, with every choice the paper leaves open stated:

1. **Candidates** (:func:`candidates`). Dataset-level logit-based importance
   (:func:`analysis_lib.attribution.dataset_attribution`) summed over CommonWords *training*
   words, target per word = the more probable of the two :data:`TARGETS` under the original
   model (method_spec §6 A1). The top ``top_n`` FFN value, attention value and FFN query
   neurons (paper: 50 of each, 150). An FFN unit can rank both as a value and as a query
   neuron; it is then one candidate (kinds joined with ``+``). Attention value neurons are the
   position-aggregated ids ``attnL{l}H{h}D{j}`` (edited through ``o_proj``, §6 A6).
2. **Start filter** (:func:`drop_start`). A candidate is dropped when its important position
   is the start token: the position category with the largest share of its summed score is
   ``"start"``. FFN value neurons are scored at the last position only (§6 A7), so the filter
   never drops them; a unit that is both value and query is dropped when either reading says
   ``"start"`` (the conservative choice).
3. **Causal masking**: the candidates' single-mask effects on mean ``|b|`` (``b = log p(man) -
   log p(woman)``) rank them; a selection strategy of :mod:`analysis_lib.edit_selection`
   (one-shot, joint greedy, sign-aware) turns the ranking into an edit under the **joint**
   perplexity guard (masking the candidate together with the neurons kept so far must not raise
   the pooled perplexity of held-out neutral paragraphs by more than ``guard_tol``, nor, with task
   items, the answer perplexity of held-out sums by more than ``task_tol``). The guard
   texts (the last paragraphs of ``neutral_text.txt``) are disjoint from the paragraphs the
   evaluation measures perplexity on (the first ones). The training words are split first
   (:func:`split_validation`): selection words for steps 1-3, validation words for choosing the
   strategy and K (:data:`analysis_lib.edit_selection.CHOICE_RULE`).
4. **The edit** is the zero-ablation of the chosen neurons (§6 A5 reading (i)), saved with
   :func:`analysis_lib.editing.save_edit`. Neuron-restricted fine-tuning (reading (ii)) is
   :func:`analysis_lib.finetune.finetune_neurons`; the fine-tuning baseline (LoRA, method_spec
   §4 (2)) is :func:`analysis_lib.finetune.finetune_lora`.

Baselines: the model as is; logit-only top-K (:func:`logit_only`: no start filter, no causal
step: the three kinds' rankings interleaved by rank, first K distinct ids); random draws matched
to each edit in number, kind and layer (:func:`random_controls`,
:func:`analysis_lib.neurons.sample_matched`); the two general neurons (:func:`general_neurons`:
chapter 4's if saved, else the top-2 FFN query neurons of our attribution whose important
position is the start token).

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

from . import benchmarks as bm
from . import edit_selection as es
from . import metrics
from .attribution import DatasetAttribution, dataset_attribution
from .benchmarks import bias_suite, commonwords_bias
from .capability import capability_suite, neutral_texts, perplexity_task
from .commonwords import load_commonwords, to_frame
from .editing import apply_edit, load_edit, mask_neurons, save_edit
from .errors import ParameterError, StudyError
from .models import load_model
from .neurons import NeuronId, sample_matched
from .results import results_dir

__all__ = [
    "KINDS",
    "headline_numbers",
    "signed_lean",
    "lean_text",
    "biased_targets",
    "candidates",
    "drop_start",
    "logit_only",
    "split_validation",
    "control_draw",
    "random_controls",
    "general_neurons",
    "condition_model",
    "evaluate_conditions",
    "suite_rows",
    "select_and_save",
    "replicate",
    "replicate_text",
    "edit_command",
    "parse_tasks",
]

KINDS = ("ffn_value", "attn_value", "ffn_query")
TARGETS = es.TARGETS


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
    texts = neutral_texts()
    if n_guard + n_eval > len(texts):
        raise ParameterError(f"guard_texts + eval_texts = {n_guard + n_eval} > the {len(texts)} neutral paragraphs.")
    return texts[len(texts) - n_guard:], texts[:n_eval]


def mean_abs_bias(model, prompts: Sequence[str], *, batch_size: int = 64) -> tuple[float, np.ndarray]:
    """``(mean |b|, b)`` over prompts, ``b = log p(man) - log p(woman)`` (:data:`TARGETS`)."""
    _, b = bm.prompt_bias(model, list(prompts), batch_size=batch_size)
    return float(np.abs(b).mean()), b


def biased_targets(model, prompts: Sequence[str]) -> list[str]:
    """Per prompt, the more probable of the two :data:`TARGETS` (the biased token, §6 A1)."""
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


def add_controls(table: pd.DataFrame, controls: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each condition's matched random draws summarised beside it:
    ``random_n``, ``random_d_min``, ``random_d_median``, ``random_d_max`` (change of mean |b|)
    and ``random_dppl_median`` (NaN for conditions without draws)."""
    if not len(controls):
        out = table.copy()
        for c in ("random_n", "random_d_min", "random_d_median", "random_d_max", "random_dppl_median"):
            out[c] = np.nan
        return out
    g = controls.groupby("control_for", sort=False)
    summary = pd.DataFrame({"random_n": g.size(), "random_d_min": g.d_mean_abs_b.min(),
                            "random_d_median": g.d_mean_abs_b.median(), "random_d_max": g.d_mean_abs_b.max()})
    summary["random_dppl_median"] = g.d_ppl_pct.median() if "d_ppl_pct" in controls else np.nan
    return table.merge(summary, left_on="condition", right_index=True, how="left")


def choice_text(choice: Mapping[str, Any], vtable: pd.DataFrame, ks: Sequence[int]) -> str:
    """The validation rule's outcome in one or two sentences (plain text, for glue)."""
    base = vtable.attrs.get("val_mean_abs_b_original", float("nan"))
    if not choice["edit"]:
        return (f"No edit lowers mean |b| on the validation words below the unedited {base:.3f}, so the rule "
                "chooses none; the held-out table below reports every edit, and the chapter's 'edit' is the "
                "unedited model.")
    text = (f"The rule chooses {choice['edit']} ({choice['k']} neurons, strategy "
            f"{str(choice['strategy']).replace('_', ' ')}): validation mean |b| {base:.3f} → "
            f"{choice['val_mean_abs_b']:.3f}.")
    others = vtable[vtable["edit"] != choice["edit"]].sort_values("val_mean_abs_b", kind="stable")
    if len(others) and float(others["val_mean_abs_b"].iloc[0]) - choice["val_mean_abs_b"] < 0.01:
        r = others.iloc[0]
        text += (f" The runner-up, {r['edit']}, is within 0.01 ({float(r['val_mean_abs_b']):.3f}): the validation "
                 "words do not separate the two.")
    if choice["at_edge"]:
        more = "larger" if choice["at_edge"] == "largest" else "smaller"
        text += (f" K = {choice['k']} is the {choice['at_edge']} size of the grid, so a {more} edit was not tried "
                 "and the optimum may lie beyond it.")
    elif choice["strategy"] != "one_shot" and choice["k"] not in set(ks):
        text += " That is the walk's own stopping point: no further candidate lowered the joint bias and passed the guard."
    return text


def additivity_text(row: Any, k: int, mean_abs_b0: float, mean_b0: float) -> str:
    """How far the first ``k`` one-shot neurons' single shifts add up (a row of
    :func:`analysis_lib.edit_selection.additivity`), in plain text for glue."""
    pred, joint = float(row.predicted_shift), float(row.joint_shift)
    ratio = joint / pred if pred else float("nan")
    text = (f"Masked together, the first {k} one-shot neurons move the mean signed b of the selection words by "
            f"{joint:+.2f}; adding their single shifts predicts {pred:+.2f}")
    if np.isfinite(ratio) and 0.7 <= ratio <= 1.3:
        text += f" (the joint shift is {100 * ratio:.0f} % of the sum: the pushes add up nearly linearly)"
    else:
        text += " (the pushes do not add up linearly here)"
    text += f". Mean |b| on the same words goes from {mean_abs_b0:.2f} to {float(row.joint_mean_abs_b):.2f}"
    if float(row.joint_mean_abs_b) > mean_abs_b0:
        text += ": the edit chosen for lowering bias raises it on the very words it was chosen on"
    if np.sign(mean_b0 + joint) != np.sign(mean_b0):
        text += f", and the mean signed b ({mean_b0:+.2f} unedited) changes sign"
    return text + "."


def kv_text(kv: pd.DataFrame, guard_tol: float) -> str:
    """The grouped-query attention finding in plain text (``kv`` from :func:`select_and_save`)."""
    if not len(kv):
        return ("No two attention neurons that the one-shot walk examined read the same value dimension of one "
                "key/value group in this run.")
    g = kv.sort_values("joint_ppl_ratio").iloc[-1]
    single, joint = 100 * (g.single_ppl_ratio_max - 1), 100 * (g.joint_ppl_ratio - 1)
    text = (f"{len(kv)} group(s) of attention neurons that the one-shot walk examined read the same value dimension "
            f"of one key/value group. The costliest: {g.neurons}. Masked alone, the largest change of the guard "
            f"perplexity by any one of them is {single:+.1f} %; masked together they change it by {joint:+.1f} %")
    if single <= 100 * guard_tol < joint:
        text += (f": a one-neuron guard of {100 * guard_tol:g} % would pass each of them, the joint guard kept "
                 f"{int(g.n_kept_one_shot)} of the {int(g.n)}")
    else:
        text += f"; the joint guard kept {int(g.n_kept_one_shot)} of the {int(g.n)}"
    text += "."
    if "joint_task_ratio" in g and np.isfinite(g.joint_task_ratio):
        text += (f" The answers of the held-out sums notice them more: their perplexity changes by up to "
                 f"{100 * (g.single_task_ratio_max - 1):+.1f} % for one of them alone and "
                 f"{100 * (g.joint_task_ratio - 1):+.1f} % for all of them together.")
    return text


def draws_beaten(controls: pd.DataFrame, edit: str, d_mean_abs_b: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the random draws of ``edit`` (the per-draw table of :func:`random_controls`) into
    ``(beaten, as_good)``: the draws whose change of mean |b| is above the edit's, and the rest."""
    own = controls[controls.control_for == edit]
    return own[own.d_mean_abs_b > d_mean_abs_b], own[own.d_mean_abs_b <= d_mean_abs_b]


def _draws_as_good(t: pd.DataFrame, controls: pd.DataFrame, chosen: str) -> str:
    """The sentences of :func:`held_out_text` for an edit that some of its random draws match."""
    beaten, good = draws_beaten(controls, chosen, t.loc[chosen].d_mean_abs_b)
    text = (f" It beats {len(beaten)} of the {len(beaten) + len(good)}; the "
            + ("draw that does as well moves" if len(good) == 1 else f"{len(good)} draws that do as well move")
            + f" the mean signed b to {', '.join(f'{m:+.3f}' for m in good.mean_b)} "
            f"(unedited {t.loc['original'].mean_b:+.3f})")
    rest = [c for c in t.index if c not in ("original", chosen) and pd.notna(t.loc[c].get("random_n", np.nan))
            and t.loc[c].d_mean_abs_b_high < 0 and t.loc[c].d_mean_abs_b < t.loc[c].random_d_min]
    text += "." if not rest else (
        "; the edits of the grid that do go beyond every draw of their own size: "
        + ", ".join(f"{c} ({t.loc[c].d_mean_abs_b:+.3f}, draws {t.loc[c].random_d_min:+.3f} to "
                    f"{t.loc[c].random_d_max:+.3f})" for c in rest) + ".")
    return text


def held_out_text(table: pd.DataFrame, chosen: str | None, one_shot: str | None, ceiling: float,
                  controls: pd.DataFrame | None = None) -> str:
    """The held-out section's main paragraph: the chosen edit against its matched random draws,
    its signed lean, and the one-shot reading beside it (plain text, for glue).

    With ``controls`` (the per-draw table of :func:`random_controls`), an edit that does not go
    beyond every draw is told how many it beats, what the draws that do as well do to the mean
    signed b, and which other edits of the grid go beyond every draw of their own size.
    """
    t = table.set_index("condition")
    orig = t.loc["original"]
    parts = []
    if chosen:
        e = t.loc[chosen]
        verdict = headline_numbers(e, orig)["verdict"][0]
        if pd.notna(e.get("random_n", np.nan)):
            beyond = e.d_mean_abs_b < e.random_d_min
            random = (f" Its {int(e.random_n)} random draws matched in number, kind and layer change mean |b| by "
                      f"{e.random_d_min:+.3f} to {e.random_d_max:+.3f}, "
                      + ("so the edit goes beyond every one of them." if beyond else
                         "so the edit does not go beyond all of them."))
            if not beyond and controls is not None and len(controls):
                random += _draws_as_good(t, controls, chosen)
        else:
            random = " No random draws were made for it."
        parts.append(
            f"The chosen edit ({chosen}) {verdict} mean |b|: {orig.mean_abs_b:.3f} → {e.mean_abs_b:.3f}, a paired "
            f"difference of {e.d_mean_abs_b:+.3f} [{e.d_mean_abs_b_low:+.3f}, {e.d_mean_abs_b_high:+.3f}] "
            f"({100 * e.d_mean_abs_b / orig.mean_abs_b:+.0f} %), for {e.d_ppl_pct:+.2f} % "
            f"[{e.d_ppl_pct_low:+.2f}, {e.d_ppl_pct_high:+.2f}] perplexity." + random
            + f" The mean signed b moves from {orig.mean_b:+.3f} to {e.mean_b:+.3f} and "
            f"{100 * e.share_flipped:.0f} % of the words change sign.")
        if abs(e.d_mean_abs_b) > ceiling and e.d_mean_abs_b < 0:
            parts.append(f"A shift that moved every word by the same amount could lower mean |b| by at most "
                         f"{ceiling:.3f} (the mean distance to the median); the edit goes further, so it does more "
                         "than push every word one way.")
        else:
            parts.append(f"A shift that moved every word by the same amount could lower mean |b| by at most "
                         f"{ceiling:.3f} (the mean distance to the median)"
                         + ("; the edit stays within that bound, so moving every word's lean the same way could "
                            "explain all of its effect." if e.d_mean_abs_b < 0 else "."))
    else:
        parts.append("The validation rule chose no edit, so the chosen edit is the unedited model.")
    if one_shot and one_shot != chosen:
        o = t.loc[one_shot]
        parts.append(
            f"The one-shot reading ({one_shot}) changes mean |b| by {o.d_mean_abs_b:+.3f} "
            f"[{o.d_mean_abs_b_low:+.3f}, {o.d_mean_abs_b_high:+.3f}] for {o.d_ppl_pct:+.1f} % perplexity, with the "
            f"mean signed b at {o.mean_b:+.3f} and {100 * o.share_flipped:.0f} % of the words flipped"
            + (": it overshoots into a female lean, as the additivity section predicts." if np.sign(o.mean_b) !=
               np.sign(orig.mean_b) and abs(o.mean_b) > abs(orig.mean_b) else "."))
    return " ".join(parts)


def paper_comparison_text(values: Mapping[str, Any]) -> str:
    """The 'Direction' bullet of 'How this compares with the paper', from the chapter's results
    (plain text, for glue): the chosen edit's verdict, and what the one-shot reading does."""
    name = values.get("edit_name", "no edit")
    one = values.get("one_shot_name")
    if one:
        m0, m1 = float(values["orig_mean_b"]), float(values["one_shot_mean_b"])
        overshoot = np.sign(m1) != np.sign(m0) and abs(m1) > abs(m0)
        one_text = (f" Read one neuron at a time ({one}), the edit changes mean |b| by "
                    f"{float(values['one_shot_d']):+.3f} and moves the mean signed b from {m0:+.3f} to {m1:+.3f}"
                    + (": its neurons each push every word towards 'woman', and together they overshoot into a "
                       "female lean. " + (
                           "The one-neuron reading works only while K is small enough that the summed pushes stop "
                           "short of the average lean; at the paper's size it fails." if
                           str(values.get("chosen_strategy", "")).replace("_", " ") == "one shot" else
                           "That failure belongs to the one-neuron reading, not to the idea of editing bias "
                           "neurons.") if overshoot else "."))
    else:
        one_text = ""
    if name == "no edit":
        return ("No strategy produced an edit that lowers mean |b| on the validation words, so the paper's claim "
                "that editing reduces bias is not reproduced here by any reading of its method." + one_text)
    strategy = str(values.get("chosen_strategy", ""))
    return (f"Paper 1 reports that the edit reduces bias and keeps common tasks. The validation rule chose {name} "
            f"(strategy {strategy}); it {values.get('edit_verdict')} held-out CommonWords bias "
            f"({float(values.get('edit_d')):+.3f} in mean |b|; matched random draws {values.get('random_d')}"
            + ("" if "edit_random_beaten" not in values else
               f", {'beyond every one' if values.get('edit_beyond_random') is True else 'it beats '}"
               f"{'' if values.get('edit_beyond_random') is True else values['edit_random_beaten']}")
            + ") for "
            f"{values.get('edit_dppl')} % perplexity." + ("" if name == one else one_text))


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


def split_validation(train: pd.DataFrame, n_val: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(selection, validation)``: a seeded, category-stratified ``n_val`` of the training words
    for choosing the strategy and K, the rest for attribution and the causal step."""
    if n_val <= 0 or n_val >= len(train):
        raise ParameterError(f"n_val = {n_val} must be between 1 and the {len(train) - 1} training words "
                             "it leaves at least one of; lower n_val or raise n_train.")
    val = subset_words(train, n_val, seed + 1)
    sel = train[~train["word"].isin(set(val["word"]))].reset_index(drop=True)
    return sel, val


def select_and_save(model, train: pd.DataFrame, *, top_n: int, ks: Sequence[int], n_causal: int | None,
                    n_val: int, guard_texts, guard_tol: float, seed: int, edit_path: str | Path | None,
                    task_items: Sequence[tuple[str, str]] = (), task_tol: float | None = None,
                    strategies: Sequence[str] = es.STRATEGIES, progress: bool = False) -> dict[str, Any]:
    """Steps 1-4 on the training words, every selection strategy, and the validation choice.

    The training words are split (:func:`split_validation`): attribution and the causal step use
    the selection words, the choice of strategy and K (:data:`analysis_lib.edit_selection.CHOICE_RULE`)
    uses the validation words. The chosen edit is saved to ``edit_path`` (if any). With
    ``task_items`` (``(context, answer)`` pairs, e.g. :func:`analysis_lib.capability.held_out_arithmetic`)
    and ``task_tol``, every strategy's joint guard also bounds their answer perplexity
    (:func:`analysis_lib.edit_selection.joint_guard`).

    Returns:
        A dict: ``attribution``, ``candidates``, ``kept``, ``dropped``, ``causal`` (the kept
        candidates with their single-mask effects, largest first), ``selections``
        (strategy -> :class:`~analysis_lib.edit_selection.Selection`), ``edits`` (the candidate
        edits with their validation numbers), ``choice`` (:func:`~analysis_lib.edit_selection.choose_edit`),
        ``edit`` (the chosen neurons, ``[]`` if none), ``additivity``, ``kv_groups`` (attention
        neurons the one-shot walk examined that share one value dimension of a key/value group:
        how many it kept, the largest single guard ratio and the joint one, the same for the task
        guard's answer perplexity, NaN without task items),
        ``causal_prompts``, ``causal_b`` (the unedited b of each causal prompt),
        ``selection_words``, ``validation_words``, ``train_mean_abs_b``, ``seconds``.
    """
    from tqdm.auto import tqdm

    secs = {}
    t0 = time.perf_counter()
    sel_words, val_words = split_validation(train, n_val, seed)
    prompts = sel_words["prompt"].tolist()
    targets = biased_targets(model, prompts)
    da = dataset_attribution(model, prompts, targets, top_k=top_n, words=sel_words["word"].tolist(), progress=progress)
    secs["attribution"] = time.perf_counter() - t0
    cands = candidates(da, top_n)
    kept, dropped = drop_start(cands)
    t1 = time.perf_counter()
    causal_prompts = subset_words(sel_words, n_causal, seed)["prompt"].tolist()
    if (task_tol is None) != (not len(task_items)):
        raise ParameterError("The task guard needs both task items and a tolerance (task_tol); give both or neither.")
    scorer = es.SetScorer(model, causal_prompts, guard_texts, task_items)
    singles, singles_b = es.single_effects(scorer, kept["neuron"].tolist())
    causal = kept.merge(singles, on="neuron").sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    ranking = causal.loc[causal["effect"] > 0, "neuron"].tolist()
    secs["single_effects"] = time.perf_counter() - t1
    selections = {}
    for name in tqdm(list(strategies), disable=not progress, desc="strategies"):
        t1 = time.perf_counter()
        selections[name] = es.select(name, scorer, ranking, singles, k_max=max(ks), guard_tol=guard_tol,
                                     task_tol=task_tol)
        secs[f"strategy/{name}"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    order = {name: s.neurons for name, s in selections.items()}
    additivity = pd.concat([es.additivity(scorer, singles_b, singles["neuron"].tolist(), o,
                                          sorted(set(ks) | ({len(o)} if o else set()))).assign(strategy=n)
                            for n, o in order.items() if o], ignore_index=True)
    # one-shot attention neurons reading one value dimension of one key/value group
    # attention neurons the one-shot walk examined (kept or refused) that read one value
    # dimension of one key/value group: each alone against all of them together
    kv = []
    scorer.commit([])
    one_trace = selections["one_shot"].trace if "one_shot" in selections else None
    examined = one_trace["neuron"].tolist() if one_trace is not None else ranking[: max(ks)]
    kept_one = set(order.get("one_shot", []))
    for group in es.shared_value_groups(model, examined):
        kv.append({"neurons": ", ".join(group), "n": len(group),
                   "n_kept_one_shot": sum(n in kept_one for n in group),
                   "single_ppl_ratio_max": max(scorer.ppl_ratio([n]) for n in group),
                   "joint_ppl_ratio": scorer.ppl_ratio(group),
                   "single_task_ratio_max": max(scorer.task_ratio([n]) for n in group) if task_items else np.nan,
                   "joint_task_ratio": scorer.task_ratio(group) if task_items else np.nan})
    secs["diagnostics"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    edits = es.candidate_edits(selections, ks)
    val_scorer = es.SetScorer(model, val_words["prompt"].tolist())
    vtable = es.validation_table(val_scorer, edits)
    choice = es.choose_edit(vtable, ks)
    edit = list(edits.set_index("edit").loc[choice["edit"], "neurons"]) if choice["edit"] else []
    secs["validation"] = time.perf_counter() - t1
    if edit_path is not None and not edit and Path(edit_path).exists():
        Path(edit_path).unlink()  # no edit chosen: never leave an earlier run's edit behind
    if edit_path is not None and edit:
        save_edit(edit_path, edit, model=model,
                  selection=(f"Chapter 5: top-{top_n} FFN value / attention value / FFN query neurons by summed "
                             f"logit importance for the biased token on {len(sel_words)} CommonWords train words; "
                             f"start-position candidates dropped ({len(dropped)}); strategy {choice['strategy']} "
                             f"on {len(causal_prompts)} train words with the joint perplexity guard "
                             f"(<= {100 * guard_tol:g}% on neutral paragraphs"
                             + (f", <= {100 * task_tol:g}% answer perplexity on {len(task_items)} held-out "
                                "arithmetic problems" if task_tol is not None else "")
                             + f"); K = {choice['k']} chosen on "
                             f"{len(val_words)} validation words by the lowest mean |b|; zero ablation; seed {seed}"),
                  metadata={"top_n": top_n, "n_train": len(train), "n_selection": len(sel_words),
                            "n_validation": len(val_words), "n_causal": len(causal_prompts), "guard_tol": guard_tol,
                            "task_tol": task_tol, "n_task_items": len(task_items),
                            "seed": seed, "strategy": choice["strategy"], "k": choice["k"],
                            "val_mean_abs_b": choice["val_mean_abs_b"], "rule": es.CHOICE_RULE,
                            "effects": {r.neuron: float(r.effect) for r in causal.itertuples() if r.neuron in edit}})
    scorer.commit([])
    return {"attribution": da, "targets": targets, "candidates": cands, "kept": kept, "dropped": dropped,
            "causal": causal, "selections": selections, "edits": edits, "validation": vtable, "choice": choice,
            "edit": edit, "additivity": additivity, "kv_groups": pd.DataFrame(kv, columns=["neurons", "n",
            "n_kept_one_shot", "single_ppl_ratio_max", "joint_ppl_ratio", "single_task_ratio_max", "joint_task_ratio"]),
            "causal_prompts": causal_prompts,
            "selection_words": sel_words, "validation_words": val_words,
            "causal_b": scorer.b0, "train_mean_abs_b": float(np.abs(scorer.b0).mean()), "seconds": secs}


def control_draw(model, neurons: Sequence[str], seed: int, edit_index: int, draw: int) -> list[str]:
    """Random control ``draw`` of the ``edit_index``-th edit: neurons matched to ``neurons`` in
    number, kind and layer (:func:`analysis_lib.neurons.sample_matched`), seeded by
    ``(seed, edit_index, draw)`` so that every caller draws the same control."""
    return sample_matched(model, list(neurons), seed=[int(seed), 7, int(edit_index), int(draw)])


def random_controls(model, edits: Mapping[str, Sequence[str]], test: pd.DataFrame, n_random: int, seed: int,
                    eval_texts: Sequence[str] = (), ppl_for: Sequence[str] | None = None) -> pd.DataFrame:
    """``n_random`` draws matched to each edit in number, kind and layer
    (:func:`analysis_lib.neurons.sample_matched`), scored on the test words (batched).

    Returns:
        One row per draw: ``control_for`` (the edit's name), ``draw``, ``n_neurons``,
        ``mean_abs_b``, ``d_mean_abs_b`` (minus the unedited model's), ``mean_b`` and
        ``share_flipped`` (words whose sign of b differs from the unedited model's), plus
        ``d_ppl_pct`` on ``eval_texts`` for the edits named in ``ppl_for`` (all if None; NaN
        for the others: perplexity costs a pass over the paragraphs per draw).
    """
    scorer = es.SetScorer(model, test["prompt"].tolist(), eval_texts)
    b0 = scorer.b0
    names, draws = [], []
    for e, (name, neurons) in enumerate(edits.items()):
        for r in range(n_random):
            names.append((name, r))
            draws.append(control_draw(model, neurons, seed, e, r))
    B = scorer.bias(draws) if draws else np.empty((0, len(b0)))
    with_ppl = None if ppl_for is None else set(ppl_for)
    rows = []
    for (name, r), d, b in zip(names, draws, B):
        row = {"control_for": name, "draw": r, "n_neurons": len(d), "mean_abs_b": float(np.abs(b).mean()),
               "d_mean_abs_b": float(np.abs(b).mean() - np.abs(b0).mean()), "mean_b": float(b.mean()),
               "share_flipped": float((np.sign(b) != np.sign(b0)).mean())}
        if len(eval_texts):
            wanted = with_ppl is None or name in with_ppl
            row["d_ppl_pct"] = 100.0 * (scorer.ppl_ratio(d) - 1.0) if wanted else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def replicate(name: str, train: pd.DataFrame, test: pd.DataFrame, guard_texts: Sequence[str],
              eval_texts: Sequence[str], *, top_n: int, ks: Sequence[int], n_val: int, n_causal: int | None,
              n_random: int, guard_tol: float, seed: int, task_items: Sequence[tuple[str, str]] = (),
              task_tol: float | None = None, device: str = "cpu", dtype: str = "float32",
              progress: bool = False) -> dict[str, Any]:
    """The chapter's recipe, the validation rule and the main comparison on another model.

    Loads ``name``, selects on ``train`` (:func:`select_and_save`, nothing saved) and evaluates
    the original model, the validation-chosen edit, the one-shot edit of the largest K it
    reached, ``n_random`` draws matched to the chosen edit (kind and layer) and that model's own
    general neurons (:func:`general_neurons`) on ``test`` and ``eval_texts``.

    Returns:
        ``{"table", "edit", "choice", "general", "general_source", "counts", "seconds"}``;
        ``table`` has a ``model`` column; ``counts`` holds the selection's numbers.
    """
    t0 = time.perf_counter()
    m = load_model(name, device=device, dtype=dtype)
    try:
        sel = select_and_save(m, train, top_n=top_n, ks=ks, n_causal=n_causal, n_val=n_val,
                              guard_texts=guard_texts, guard_tol=guard_tol, seed=seed, edit_path=None,
                              task_items=task_items, task_tol=task_tol, progress=progress)
        edit, da, choice = sel["edit"], sel["attribution"], sel["choice"]
        gen, gen_source = general_neurons(da, model_name=name)
        conds: dict[str, Any] = {"original": []}
        groups = {"original": "original"}
        if edit:
            conds[f"chosen: {choice['edit']}"] = edit
            groups[f"chosen: {choice['edit']}"] = "edit (chosen)"
        one = sel["selections"]["one_shot"].neurons
        if one:
            conds[f"one_shot K={len(one)}"], groups[f"one_shot K={len(one)}"] = one, "one-shot"
        for r in range(n_random if edit else 0):
            conds[f"random #{r}"] = control_draw(m, edit, seed, 0, r)
            groups[f"random #{r}"] = f"random ({len(edit)})"
        conds["general neurons"], groups["general neurons"] = gen, "general neurons"
        table, _ = evaluate_conditions(m, conds, test, eval_texts, seed=seed, groups=groups)
    finally:
        del m
    counts = {"candidates": len(sel["candidates"]), "dropped_start": len(sel["dropped"]), "kept": len(sel["kept"]),
              "positive": int((sel["causal"].effect > 0).sum()),
              **{f"selected_{k}": len(v.neurons) for k, v in sel["selections"].items()}}
    return {"table": table.assign(model=name), "edit": edit, "choice": choice, "general": gen,
            "general_source": gen_source, "counts": counts, "seconds": {**sel["seconds"], "total": time.perf_counter() - t0}}


def replicate_text(table: pd.DataFrame) -> str:
    """One paragraph summarising a :func:`replicate` table (for the chapter's text)."""
    t = table.set_index("condition")
    name = str(table["model"].iloc[0])
    orig = t.loc["original"]
    parts = [f"On {name} the original model has a mean |b| of {orig.mean_abs_b:.3f} on the test words. "]
    chosen = t[t.group == "edit (chosen)"]
    if len(chosen):
        ed = chosen.iloc[0]
        change = ("a significant reduction" if ed.d_mean_abs_b_high < 0 else
                  "a significant increase" if ed.d_mean_abs_b_low > 0 else "no significant change")
        parts.append(f"The validation rule chooses {chosen.index[0].removeprefix('chosen: ')} "
                     f"({int(ed.n_neurons)} neurons), which changes it by {ed.d_mean_abs_b:+.3f} "
                     f"[{ed.d_mean_abs_b_low:+.3f}, {ed.d_mean_abs_b_high:+.3f}] ({change}) "
                     f"for {ed.d_ppl_pct:+.2f} % perplexity")
    else:
        parts.append("No edit lowers mean |b| on its validation words, so the rule chooses none")
    rnd = t[t.group.str.startswith("random")]
    if len(rnd):
        parts.append(f"; {len(rnd)} random draws matched in kind and layer change it by "
                     f"{rnd.d_mean_abs_b.min():+.3f} to {rnd.d_mean_abs_b.max():+.3f}")
    one = t[t.group == "one-shot"]
    if len(one):
        parts.append(f"; the one-shot reading ({int(one.n_neurons.iloc[0])} neurons) changes it by "
                     f"{one.d_mean_abs_b.iloc[0]:+.3f} ({one.d_ppl_pct.iloc[0]:+.1f} % perplexity)")
    if "general neurons" in t.index:
        g = t.loc["general neurons"]
        parts.append(f"; its own general neurons by {g.d_mean_abs_b:+.3f} ({g.d_ppl_pct:+.1f} % perplexity)")
        if g.ppl < orig.ppl / 2:
            parts.append(f". Masking those neurons lowers neutral-text perplexity, from {orig.ppl:.1f} to "
                         f"{g.ppl:.1f}: under this model's start-token policy they harm the text rather than "
                         "carry it, so here they are not the general neurons of paper 1")
    return "".join(parts) + "."


# ----------------------------------------------------------------------------- CLI


EVAL_TASKS = ("commonwords", "stereoset", "winogender", "bbq", "winobias", "arithmetic", "race", "piqa", "perplexity")


def parse_tasks(text: str) -> list[str]:
    """The ``edit`` subcommand's comma list of :data:`EVAL_TASKS` (checked before a model loads)."""
    tasks = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in tasks if t not in EVAL_TASKS]
    if not tasks or bad:
        raise ParameterError(f"Unknown evaluation task(s) {bad or [text]}; choose a comma list of {', '.join(EVAL_TASKS)}.")
    return tasks


def _eval_tasks(model, tasks: Sequence[str], profile: str, seed: int) -> list[dict[str, Any]]:
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
            ct = capability_suite(model, profile, seed, tasks=names)
            for r in ct.itertuples():
                rows.append({"task": r.task, "metric": r.metric, "value": float(r.value), "low": float(r.ci_low),
                             "high": float(r.ci_high), "better": "lower" if r.metric == "perplexity" else "higher"})
    return rows


def edit_command(model_name: str | None, edit_file: str, tasks_text: str, *, profile: str = "quick",
                 seed: int = 0, start_token: str | None = "edit") -> dict[str, Any]:
    """The ``edit`` subcommand: evaluate ``tasks`` before and after applying a saved edit.

    The edit file is read and checked (model name, start token, id ranges) before anything is
    evaluated. ``start_token="edit"`` loads the model with the start token the edit was found
    with; any other value (a token, ``"none"``, ``"default"``) is used as given, and the edit is
    then applied under it without the start-token check. Raises a :class:`StudyError` subclass
    for every user error.
    """
    tasks = parse_tasks(tasks_text)
    if profile not in bm.SUITE_PROFILES:  # the suites' presets (profiles.yaml): quick, full
        raise ParameterError(f"Unknown profile {profile!r}; use {' or '.join(bm.SUITE_PROFILES)}.")
    spec = load_edit(edit_file)
    own = start_token == "edit"
    model = load_model(model_name or spec.model, start_token=spec.start_token if own else start_token)
    with apply_edit(model, spec, check_start_token=own):  # checks model, start token and ranges up front
        pass
    t0 = time.perf_counter()
    before = _eval_tasks(model, tasks, profile, seed)
    with apply_edit(model, spec, check_start_token=own):
        after = _eval_tasks(model, tasks, profile, seed)
    rows = [{**b, "value_before": b["value"], "value_after": a["value"], "diff": a["value"] - b["value"],
             "ci_before": [b["low"], b["high"]], "ci_after": [a["low"], a["high"]]} for b, a in zip(before, after)]
    for r in rows:
        for k in ("value", "low", "high"):
            r.pop(k)
    chosen = {k: spec.metadata[k] for k in ("strategy", "k", "val_mean_abs_b") if k in spec.metadata}
    return {"model": model.study_name, "edit": str(edit_file), "n_neurons": len(spec.neurons),
            "selection": spec.selection, "chosen": chosen, "profile": profile, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def edit_text(payload: Mapping[str, Any]) -> str:
    """The ``edit`` subcommand's table as text."""
    chosen = payload.get("chosen") or {}
    how = (f", chosen on validation words: strategy {chosen['strategy']}, K = {chosen['k']}"
           if "strategy" in chosen and "k" in chosen else "")
    lines = [f"model {payload['model']}, edit {payload['edit']} ({payload['n_neurons']} neurons{how}), "
             f"profile {payload['profile']}",
             f"{'task':20s} {'metric':20s} {'before':>10s} {'after':>10s} {'diff':>10s}  better"]
    for r in payload["rows"]:
        lines.append(f"{r['task']:20s} {r['metric']:20s} {r['value_before']:10.4g} {r['value_after']:10.4g} "
                     f"{r['diff']:+10.4g}  {r['better']}")
    return "\n".join(lines)
