"""Capability tasks shared by the editing chapters: arithmetic, RACE-middle, PIQA, perplexity.

Paper 1 checks that its edit keeps "common capabilities" (arithmetic, RACE, PIQA, ...;
method_spec §3.4). Each task here returns a :class:`TaskResult`: per-item ``records`` (a
DataFrame with ``correct`` 0/1, or the per-text negative log-likelihood) and a ``summary``
(the score, its 95 % bootstrap interval, the chance level and the time taken).
:func:`capability_suite` runs them all at a profile's size and returns one tidy table. Every
task goes through the model's Hugging Face modules, so weight edits and bridge hooks apply::

    with mask_neurons(model, general_neurons):
        edited = capability_suite(model, "quick")

**Arithmetic.** ``a+b=`` prompts from :func:`analysis_lib.data.arithmetic_problems`, one- and
two-digit operands scored separately (1-digit: 0-9, 2-digit: 10-99). The model continues
greedily for ``len(answer tokens of the longest answer) + 1`` tokens; the answer is the
integer the continuation starts with (:func:`parse_answer`; leading spaces are skipped), and
it is correct if it equals ``a + b`` as a number. The extra token matters: ``"100"`` for
``10`` is wrong, not a prefix match. Zero-shot, SmolLM2-135M-Instruct mostly continues
``"53+5="`` with an unrelated number or repeats the prompt, so by default each prompt is
preceded by ``DEFAULT_SHOTS`` = 3 solved examples ``"x+y=z\\n"`` (the same for all prompts,
drawn from a generator seeded apart from the problems, so the problems do not depend on the
number of shots). Pass ``shots=0`` for the paper's zero-shot ``"3+5="`` format. Measured on
SmolLM2 (all 100 one-digit problems / 100 two-digit ones, seeds 0-2, which also change the
examples): 0-shot 6 % / 0 %, 3-shot 27-39 % / 5-20 %, 5-shot 15-32 % / 0-3 %. So one-digit
addition is the arithmetic task with room to fall; two-digit addition sits near the floor and
depends on the examples, as method_spec §3.4 expected for a 135M model. The answer is
free-form, so there is no chance level in the multiple-choice sense; ``chance`` is reported as
0 (a uniform guess over the possible sums would score 1/19 for one digit, 1/179 for two).

**RACE-middle** (test, 1,436 questions over 362 passages) and **PIQA** (validation, 1,838
items): multiple choice by length-normalised log-likelihood (mean log-probability per token of
each option; lm-eval-harness's ``acc_norm`` divides by characters instead). Prompts:
``"Article: {article}\\nQuestion: {question}\\nAnswer:"`` → ``" {option}"`` and
``"Question: {goal}\\nAnswer:"`` → ``" {solution}"``. The options' tokens are appended to the
context's tokens (never merged across the boundary). For RACE the context is tokenized as two
pieces, ``"Article: {article}"`` and ``"\\nQuestion: {question}\\nAnswer:"`` (for SmolLM2's
tokenizer this is identical to tokenizing it whole, since ``"\\n"`` is always its own token), so
that a passage is run once and its key/value cache shared by all its questions and options
(exact; turned off automatically while a positional attention-neuron edit is active, see
:mod:`analysis_lib.editing`). RACE subsets are whole passages (seeded), and RACE intervals
are cluster bootstraps over passages, since questions on one passage are not independent.
Chance: 25 % (RACE), 50 % (PIQA).

**Perplexity** on ``neutral_text.txt`` (40 short neutral factual paragraphs written for this
study, no people or gendered words): token-level perplexity ``exp(Σ nll / Σ tokens)`` over
all texts, each text scored after the start token. The interval resamples texts.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import arithmetic_problems, load_piqa, load_race
from .editing import has_position_hooks
from .errors import ParameterError, StudyError
from .metrics import bootstrap_ci, chance_level, paired_bootstrap_diff
from .models import kv_cache_kwargs, kv_cache_of, token_ids
from .pipeline import suite_presets
from .scoring import final_hidden, greedy_generate, multiple_choice_predictions, unembed

__all__ = [
    "CHANCE",
    "DEFAULT_SHOTS",
    "PROFILES",
    "TaskResult",
    "arithmetic_items",
    "arithmetic_task",
    "capability_delta",
    "capability_suite",
    "held_out_arithmetic",
    "neutral_texts",
    "parse_answer",
    "perplexity_task",
    "piqa_task",
    "race_task",
]

#: Chance accuracy of each task (arithmetic: free-form answer, reported as 0).
CHANCE = {"arithmetic": 0.0, "race": chance_level(4), "piqa": chance_level(2)}

#: Solved examples before each arithmetic prompt (see the module docstring).
DEFAULT_SHOTS = 3

#: Items per task and profile. ``None`` = the whole set. RACE counts are questions, drawn as
#: whole passages until at least that many questions are in. The sizes live in
#: ``profiles.yaml`` (``suites: capability:``), the only source of sizes.
PROFILES: dict[str, dict[str, int | None]] = suite_presets("capability")

TASKS = ("arithmetic_1digit", "arithmetic_2digit", "race", "piqa", "neutral")

_INT_RE = re.compile(r"\s*(-?\d+)")


# ----------------------------------------------------------------------------- results


@dataclass
class TaskResult:
    """One task's outcome.

    Attributes:
        task: task key (``"arithmetic_1digit"``, ``"race"``, ``"piqa"``, ``"neutral"``...).
        records: one row per item (``correct`` 0/1) or per text (``nll``, ``n_tokens``).
        summary: ``task, metric, n, value, ci_low, ci_high, chance, seconds, note``.
    """

    task: str
    records: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (f"TaskResult({self.task}: {s.get('metric')} {s.get('value', float('nan')):.4g} "
                f"[{s.get('ci_low', float('nan')):.4g}, {s.get('ci_high', float('nan')):.4g}], n={s.get('n')})")


def _accuracy_summary(task: str, correct: np.ndarray, chance: float, seed: int, seconds: float,
                      note: str, groups: Any = None) -> dict[str, Any]:
    ci = bootstrap_ci(lambda c: c.mean(-1), correct.astype(float), seed=seed, groups=groups,
                      vectorized=groups is None)
    return {
        "task": task, "metric": "accuracy", "n": int(len(correct)), "value": float(ci.estimate),
        "ci_low": float(ci.low), "ci_high": float(ci.high), "chance": float(chance),
        "seconds": round(float(seconds), 2), "note": note,
    }


# ----------------------------------------------------------------------------- arithmetic


def parse_answer(text: str) -> int | None:
    """The integer a generated continuation starts with, or ``None``.

    Leading whitespace is skipped and a minus sign is kept; digits run until the first
    non-digit. Examples: ``"8"`` → 8, ``" 8\\n"`` → 8, ``"10+"`` → 10, ``"-3"`` → -3,
    ``"-"`` → None, ``""`` → None, ``"x8"`` → None.
    """
    if not isinstance(text, str):
        return None
    m = _INT_RE.match(text)
    return int(m.group(1)) if m else None


def _greedy_cached(model, prompts: Sequence[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding with a KV cache, prompts grouped by token length (so no padding).

    Gives the same tokens as :func:`analysis_lib.scoring.greedy_generate` (which reruns the
    whole sequence at every step) up to float rounding, in a fraction of the time.
    """
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    rows = [prefix + token_ids(model, p) for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    out: list[list[int]] = [[] for _ in rows]
    device = model.cfg.device or "cpu"
    hf = model.original_model
    with torch.inference_mode():
        for _, members in sorted(by_len.items()):
            for start in range(0, len(members), batch_size):
                idx = members[start : start + batch_size]
                toks = torch.tensor([rows[i] for i in idx], dtype=torch.long, device=device)
                res = hf.model(input_ids=toks, use_cache=True)
                cache = kv_cache_of(res, toks.shape[1])
                nxt = unembed(model, res.last_hidden_state[:, -1]).argmax(-1)
                for step in range(max_new_tokens):
                    for b, i in enumerate(idx):
                        out[i].append(int(nxt[b]))
                    if step == max_new_tokens - 1:
                        break
                    res = hf.model(input_ids=nxt[:, None], **kv_cache_kwargs(hf.model, cache), use_cache=True)
                    cache = kv_cache_of(res, toks.shape[1] + step + 1)
                    nxt = unembed(model, res.last_hidden_state[:, -1]).argmax(-1)
    return [model.tokenizer.decode(o) for o in out]


def _use_cache(model, cache: bool | str) -> bool:
    if cache == "auto":
        return not has_position_hooks(model)
    return bool(cache)


def arithmetic_items(n: int | None, digits: int, seed: int, *, shots: int = DEFAULT_SHOTS) -> pd.DataFrame:
    """The problems :func:`arithmetic_task` scores (the one place that draws them).

    ``digits=1``: ``n`` of the 100 pairs 0-9 x 0-9 without replacement (``None`` or ``n >= 100``:
    all, in order); otherwise :func:`~analysis_lib.data.arithmetic_problems` with this seed.
    Columns as :func:`~analysis_lib.data.arithmetic_problems`.
    """
    if not isinstance(digits, int) or digits < 1:
        raise ParameterError(f"digits must be a positive integer, got {digits!r}.")
    if digits == 1:
        grid = arithmetic_problems(None, digits=(1,), seed=seed, shots=shots).to_pandas()
        if n is not None and n < len(grid):
            pick = np.random.default_rng(seed).choice(len(grid), size=n, replace=False)
            grid = grid.iloc[np.sort(pick)]
        return grid.reset_index(drop=True)
    if n is None:
        raise ParameterError("n=None (all problems) is only offered for digits=1; give a number.")
    return arithmetic_problems(n, digits=(digits,), seed=seed, shots=shots).to_pandas()


def held_out_arithmetic(n: int, suite_sizes: Mapping[str, int | None], seed: int, *,
                        shots: int = DEFAULT_SHOTS) -> pd.DataFrame:
    """Arithmetic problems disjoint from the ones :func:`capability_suite` scores at ``suite_sizes``
    and ``seed``: up to ``n`` one-digit pairs the suite leaves out and ``n`` two-digit problems
    drawn with another seed, minus any pair the suite scores (same prompts, same shots).

    Used as validation items (a guard while choosing an edit) so that the suite's items stay
    for the test. Columns as :func:`arithmetic_items` plus ``task``.
    """
    if n < 1:
        raise ParameterError(f"n = {n} held-out arithmetic problems: give at least 1.")
    parts = []
    for digits in (1, 2):
        task = f"arithmetic_{digits}digit"
        size = suite_sizes.get(task, PROFILES["quick"][task])
        if digits > 1 and size is None:
            size = PROFILES["full"][task]
        used = arithmetic_items(size, digits, seed, shots=shots)
        pool = arithmetic_items(None if digits == 1 else n + len(used), digits,
                                seed if digits == 1 else seed + 1, shots=shots)
        pairs = set(zip(used["a"], used["b"]))
        free = pool[[(a, b) not in pairs for a, b in zip(pool["a"], pool["b"])]]
        parts.append(free.head(n).assign(task=task))
    return pd.concat(parts, ignore_index=True)


def arithmetic_task(
    model,
    n: int | None = 100,
    digits: int = 1,
    seed: int = 0,
    *,
    shots: int = DEFAULT_SHOTS,
    batch_size: int = 64,
    kv_cache: bool | str = "auto",
) -> TaskResult:
    """Greedy ``a+b=`` accuracy for one operand length.

    Args:
        model: a loaded bridge.
        n: number of problems. For ``digits=1`` they are drawn without replacement from the
            100 pairs 0-9 x 0-9 (``None`` or ``n >= 100``: all of them, in order); otherwise
            :func:`~analysis_lib.data.arithmetic_problems` with this seed.
        digits: operand length (1: 0-9, 2: 10-99, ...).
        seed: problem and bootstrap seed.
        shots: solved examples before each prompt (0 = the paper's bare ``"3+5="``).
        batch_size: prompts per forward pass.
        kv_cache: ``"auto"`` (cache unless a positional attention edit is active), True, False.

    Returns:
        :class:`TaskResult` with records ``prompt, a, b, answer, carry, output, parsed,
        correct``.
    """
    if not isinstance(digits, int) or digits < 1:
        raise ParameterError(f"digits must be a positive integer, got {digits!r}.")
    t0 = time.perf_counter()
    df = arithmetic_items(n, digits, seed, shots=shots)
    if len(df) == 0:
        raise ParameterError("No arithmetic problems to score (n=0).")
    max_new = max(len(token_ids(model, str(a))) for a in df["answer"]) + 1
    prompts = df["prompt"].tolist()
    if _use_cache(model, kv_cache):
        outputs = _greedy_cached(model, prompts, max_new, batch_size)
    else:
        outputs = greedy_generate(model, prompts, max_new_tokens=max_new, batch_size=batch_size)
    parsed = [parse_answer(o) for o in outputs]
    records = df[["prompt", "a", "b", "answer", "carry"]].copy()
    records["output"] = outputs
    records["parsed"] = pd.array(parsed, dtype="Int64")
    records["correct"] = [int(p is not None and p == a) for p, a in zip(parsed, df["answer"])]
    task = f"arithmetic_{digits}digit"
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    note = (f"{shots}-shot greedy, {max_new} new tokens; chance 0 (free-form answer; a uniform "
            f"guess over the {2 * (hi - lo) + 1} possible sums would score {1 / (2 * (hi - lo) + 1):.3f})")
    summary = _accuracy_summary(task, records["correct"].to_numpy(), CHANCE["arithmetic"], seed,
                                time.perf_counter() - t0, note)
    return TaskResult(task, records, summary)


# ----------------------------------------------------------------------------- shared-prefix multiple choice


def _shared_prefix_logprobs(
    model,
    groups: Sequence[tuple[list[int], list[tuple[list[int], list[list[int]]]]]],
    *,
    batch_size: int = 32,
    kv_cache: bool = True,
    progress: bool = False,
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Log-probabilities of options below a shared prefix.

    ``groups`` is a list of ``(prefix_ids, items)``; each item is ``(middle_ids, [option_ids,
    ...])``. The text scored is ``prefix + middle + option`` and only the option's tokens count.
    With ``kv_cache`` the prefix runs once per group and its cache is shared by every
    ``middle + option`` row (exact up to float rounding); without it every row runs in full.

    Returns:
        For each group, for each item: ``(sum_logprob[options], n_tokens[options])``.
    """
    device = model.cfg.device or "cpu"
    pad = model.tokenizer.pad_token_id or 0
    hf = model.original_model
    result: list[list[tuple[np.ndarray, np.ndarray]]] = [
        [(np.zeros(len(opts)), np.array([len(o) for o in opts], dtype=float)) for _, opts in items]
        for _, items in groups
    ]
    for g, (prefix, items) in enumerate(groups):
        if not prefix:
            raise StudyError("A shared-prefix group needs a non-empty prefix (the start token at least).")
        for k, (mid, opts) in enumerate(items):
            if any(len(o) == 0 for o in opts):
                raise StudyError(f"An option of group {g}, item {k} has no tokens.")

    def score_rows(hidden_rows, rows_meta):
        for h, (g, k, o, start, opt) in zip(hidden_rows, rows_meta):
            lp = unembed(model, h[start - 1 : start - 1 + len(opt)]).float().log_softmax(-1)
            tgt = torch.tensor(opt, device=lp.device)
            result[g][k][0][o] = lp.gather(-1, tgt[:, None]).sum().item()

    with torch.inference_mode():
        if kv_cache:
            for g, (prefix, items) in enumerate(tqdm(groups, disable=not progress, desc="scoring")):
                res = hf.model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
                last = res.last_hidden_state[0, -1:]
                base = kv_cache_of(res, len(prefix))
                rows = [(k, o, mid + opt, len(mid), opt) for k, (mid, opts) in enumerate(items)
                        for o, opt in enumerate(opts)]
                rows.sort(key=lambda r: -len(r[2]))
                for s in range(0, len(rows), batch_size):
                    chunk = rows[s : s + batch_size]
                    width = len(chunk[0][2])
                    toks = torch.full((len(chunk), width), pad, dtype=torch.long)
                    for b, r in enumerate(chunk):
                        toks[b, : len(r[2])] = torch.tensor(r[2])
                    # the forward pass extends the cache in place: copy it unless used once
                    cache = base if len(rows) <= batch_size else copy.deepcopy(base)
                    cache.batch_repeat_interleave(len(chunk))
                    hid = hf.model(input_ids=toks.to(device), **kv_cache_kwargs(hf.model, cache),
                                   use_cache=True).last_hidden_state
                    # position j of a row is predicted by hidden j-1; j = 0 by the prefix's last
                    full = torch.cat([last.expand(len(chunk), 1, -1), hid], dim=1)
                    score_rows(full, [(g, r[0], r[1], r[3] + 1, r[4]) for r in chunk])
        else:
            rows = [(g, k, o, prefix + mid + opt, len(prefix) + len(mid), opt)
                    for g, (prefix, items) in enumerate(groups)
                    for k, (mid, opts) in enumerate(items) for o, opt in enumerate(opts)]
            rows.sort(key=lambda r: -len(r[3]))
            for s in tqdm(range(0, len(rows), batch_size), disable=not progress, desc="scoring"):
                chunk = rows[s : s + batch_size]
                width = len(chunk[0][3])
                toks = torch.full((len(chunk), width), pad, dtype=torch.long)
                for b, r in enumerate(chunk):
                    toks[b, : len(r[3])] = torch.tensor(r[3])
                hid = final_hidden(model, toks.to(device))
                score_rows(hid, [(r[0], r[1], r[2], r[4], r[5]) for r in chunk])
    return result


def _check_items(items: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(items, pd.DataFrame) or len(items) == 0:
        raise StudyError("items must be a non-empty DataFrame of multiple-choice rows.")
    missing = [c for c in columns if c not in items.columns]
    if missing:
        raise StudyError(f"items lacks the column(s) {missing}; it needs {list(columns)}.")
    return items.reset_index(drop=True)


def _pick_passages(ds: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """Whole passages in a seeded order until at least ``n`` questions (``None``: all)."""
    if n is None or n >= len(ds):
        return ds
    passages = pd.unique(ds["example_id"])
    order = np.random.default_rng(seed).permutation(len(passages))
    counts = ds.groupby("example_id").size()
    chosen, total = [], 0
    for j in order:
        chosen.append(passages[j])
        total += int(counts[passages[j]])
        if total >= n:
            break
    keep = set(chosen)
    return ds[ds["example_id"].isin(keep)]


def race_task(
    model,
    n: int | None = 60,
    seed: int = 0,
    *,
    items: pd.DataFrame | None = None,
    batch_size: int = 32,
    kv_cache: bool | str = "auto",
    progress: bool = False,
) -> TaskResult:
    """RACE-middle accuracy by length-normalised log-likelihood (chance 25 %).

    Args:
        n: at least this many questions, as whole passages in a seeded order (``None``: all
            1,436).
        seed: passage order and bootstrap seed.
        items: score these rows instead (columns of :func:`~analysis_lib.data.load_race`:
            ``id, example_id, context, question, choices, label``); ``n`` is then ignored.
        batch_size: option rows per forward pass.
        kv_cache: share each passage's key/value cache among its questions (``"auto"``: unless
            a positional attention edit is active). The scores are the same either way up to
            float rounding.

    Returns:
        :class:`TaskResult`; records ``id, example_id, label, pred, correct, score_0..3``.
    """
    t0 = time.perf_counter()
    if items is None:
        ds = _pick_passages(load_race("middle").to_pandas(), n, seed)
    else:
        ds = _check_items(items, ("id", "example_id", "context", "question", "choices", "label"))
    prefix0 = [model.start_token_id] if model.start_token_id is not None else []
    groups, order = [], []
    for ex, sub in ds.groupby("example_id", sort=False):
        prefix = prefix0 + token_ids(model, "Article: " + sub["context"].iloc[0].strip())
        items = []
        for _, r in sub.iterrows():
            mid = token_ids(model, "\nQuestion: " + r["question"].strip() + "\nAnswer:")
            items.append((mid, [token_ids(model, " " + str(o).strip()) for o in r["choices"]]))
            order.append(r.name)
        groups.append((prefix, items))
    scored = _shared_prefix_logprobs(model, groups, batch_size=batch_size,
                                     kv_cache=_use_cache(model, kv_cache), progress=progress)
    flat = [s / c for grp in scored for s, c in grp]
    records = ds.loc[order, ["id", "example_id", "label"]].reset_index(drop=True)
    records["pred"] = [int(np.argmax(v)) for v in flat]
    records["correct"] = (records["pred"] == records["label"]).astype(int)
    for j in range(4):
        records[f"score_{j}"] = [float(v[j]) if j < len(v) else np.nan for v in flat]
    note = (f"{records['example_id'].nunique()} passages; mean log-prob per option token; "
            "CI: cluster bootstrap over passages")
    summary = _accuracy_summary("race", records["correct"].to_numpy(), CHANCE["race"], seed,
                                time.perf_counter() - t0, note, groups=records["example_id"].to_numpy())
    return TaskResult("race", records, summary)


def piqa_task(
    model,
    n: int | None = 100,
    seed: int = 0,
    *,
    items: pd.DataFrame | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> TaskResult:
    """PIQA accuracy by length-normalised log-likelihood (chance 50 %).

    Args:
        n: a seeded subset of this many items, in dataset order (``None``: all 1,838).
        seed: subset and bootstrap seed.
        items: score these rows instead (columns ``id, question, choices, label`` as in
            :func:`~analysis_lib.data.load_piqa`); ``n`` is then ignored.

    Returns:
        :class:`TaskResult`; records ``id, label, pred, correct, score_0, score_1``.
    """
    t0 = time.perf_counter()
    if items is None:
        ds = load_piqa().to_pandas()
        if n is not None and n < len(ds):
            pick = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
            ds = ds.iloc[pick]
    else:
        ds = _check_items(items, ("id", "question", "choices", "label"))
    contexts = [f"Question: {q.strip()}\nAnswer:" for q in ds["question"]]
    choices = [[" " + str(c).strip() for c in cs] for cs in ds["choices"]]
    preds, scores = multiple_choice_predictions(model, contexts, choices, normalize="length",
                                                batch_size=batch_size, progress=progress)
    records = ds[["id", "label"]].reset_index(drop=True)
    records["pred"] = preds
    records["correct"] = (records["pred"] == records["label"]).astype(int)
    records["score_0"] = [float(s[0]) for s in scores]
    records["score_1"] = [float(s[1]) for s in scores]
    summary = _accuracy_summary("piqa", records["correct"].to_numpy(), CHANCE["piqa"], seed,
                                time.perf_counter() - t0, "mean log-prob per option token")
    return TaskResult("piqa", records, summary)


# ----------------------------------------------------------------------------- perplexity


def neutral_texts() -> list[str]:
    """The neutral paragraphs of ``analysis_lib/neutral_text.txt`` (blank-line separated)."""
    text = resources.files("analysis_lib").joinpath("neutral_text.txt").read_text(encoding="utf-8")
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return [p for p in paras if p and not p.startswith("#")]


def perplexity_task(model, texts: Sequence[str] | None = None, seed: int = 0, *, batch_size: int = 16) -> TaskResult:
    """Token-level perplexity ``exp(Σ nll / Σ tokens)`` over ``texts`` (default: neutral text).

    Each text is run after the model's start token and every text token is scored; with no
    start token the first token of each text is context only.

    Returns:
        :class:`TaskResult`; records ``text, n_tokens, nll`` (summed over the text's tokens)
        and ``ppl`` (that text's own perplexity). The summary's ``value`` is the pooled
        perplexity, ``chance`` is NaN (there is none).
    """
    t0 = time.perf_counter()
    texts = list(neutral_texts() if texts is None else texts)
    if not texts:
        raise StudyError("No texts to score for perplexity.")
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    rows = [prefix + token_ids(model, t) for t in texts]
    if any(len(r) < 2 for r in rows):
        raise StudyError("Every perplexity text needs at least one token to predict.")
    first = 1  # positions >= 1 are predicted
    nll = np.zeros(len(rows))
    count = np.array([len(r) - first for r in rows], dtype=float)
    order = np.argsort([-len(r) for r in rows], kind="stable")
    pad = model.tokenizer.pad_token_id or 0
    device = model.cfg.device or "cpu"
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = len(rows[idx[0]])
            toks = torch.full((len(idx), width), pad, dtype=torch.long)
            for b, i in enumerate(idx):
                toks[b, : len(rows[i])] = torch.tensor(rows[i])
            toks = toks.to(device)
            hid = final_hidden(model, toks)
            for b, i in enumerate(idx):
                n = len(rows[i])
                lp = unembed(model, hid[b, first - 1 : n - 1]).float().log_softmax(-1)
                nll[i] = -lp.gather(-1, toks[b, first:n, None]).sum().item()
    records = pd.DataFrame({"text": texts, "n_tokens": count.astype(int), "nll": nll})
    records["ppl"] = np.exp(records["nll"] / records["n_tokens"])

    def pooled(a, c):
        return float(np.exp(a.sum() / c.sum()))

    ci = bootstrap_ci(pooled, nll, count, seed=seed)
    summary = {
        "task": "neutral", "metric": "perplexity", "n": len(texts), "value": ci.estimate,
        "ci_low": ci.low, "ci_high": ci.high, "chance": float("nan"),
        "seconds": round(time.perf_counter() - t0, 2),
        "note": f"{int(count.sum())} tokens; exp(sum nll / sum tokens); CI resamples texts; lower is better",
    }
    return TaskResult("neutral", records, summary)


# ----------------------------------------------------------------------------- suite


def _profile_sizes(profile: str | dict[str, int | None]) -> dict[str, int | None]:
    if isinstance(profile, dict):
        unknown = sorted(set(profile) - set(TASKS))
        if unknown:
            raise ParameterError(f"Unknown capability task(s) {unknown}; the tasks are {list(TASKS)}.")
        return {**PROFILES["quick"], **profile}
    if profile not in PROFILES:
        raise ParameterError(f"Unknown capability profile {profile!r}; use one of {list(PROFILES)} or a dict of sizes.")
    return dict(PROFILES[profile])


def capability_suite(
    model,
    profile: str | dict[str, int | None] = "quick",
    seed: int = 0,
    *,
    tasks: Sequence[str] | None = None,
    shots: int = DEFAULT_SHOTS,
    kv_cache: bool | str = "auto",
    return_records: bool = False,
    progress: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Run every capability task at the profile's size and return one tidy table.

    Args:
        model: a loaded (possibly edited) bridge.
        profile: ``"quick"`` (≈ 1 min on 2 CPU cores for SmolLM2), ``"full"``, or a dict of
            sizes overriding ``quick`` (keys from ``TASKS``; ``None`` = whole set).
        seed: subset and bootstrap seed (the same seed gives the same items and numbers).
        tasks: a subset of ``TASKS`` to run (default all).
        shots: solved examples before each arithmetic prompt.
        kv_cache: key/value caching in arithmetic decoding and RACE passages: ``"auto"`` (on
            unless a positional attention edit is active), True or False. Pass False when
            your own bridge hooks depend on token positions.
        return_records: also return ``{task: per-item records}``.
        progress: show progress bars for the slower tasks.

    Returns:
        A DataFrame with one row per task: ``task, metric, n, value, ci_low, ci_high, chance,
        seconds, note`` (and the per-item records if asked).
    """
    sizes = _profile_sizes(profile)
    todo = list(TASKS if tasks is None else tasks)
    unknown = sorted(set(todo) - set(TASKS))
    if unknown:
        raise ParameterError(f"Unknown capability task(s) {unknown}; the tasks are {list(TASKS)}.")
    results: list[TaskResult] = []
    for task in todo:
        n = sizes[task]
        if task.startswith("arithmetic_"):
            digits = int(task.split("_")[1][0])
            if digits > 1 and n is None:
                n = PROFILES["full"][task]
            results.append(arithmetic_task(model, n, digits, seed, shots=shots, kv_cache=kv_cache))
        elif task == "race":
            results.append(race_task(model, n, seed, kv_cache=kv_cache, progress=progress))
        elif task == "piqa":
            results.append(piqa_task(model, n, seed, progress=progress))
        else:
            texts = None if n is None else neutral_texts()[:n]
            results.append(perplexity_task(model, texts, seed))
    table = pd.DataFrame([r.summary for r in results])
    if return_records:
        return table, {r.task: r.records for r in results}
    return table


def capability_delta(
    before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame], seed: int = 0
) -> pd.DataFrame:
    """Paired differences ``after - before`` per task, from two runs' records on the same items.

    Accuracy tasks: difference in accuracy (paired bootstrap over items; RACE over passages).
    Perplexity: difference in pooled perplexity (paired over texts).

    Args:
        before, after: the ``records`` dicts of two :func:`capability_suite` runs with the same
            profile and seed (``return_records=True``).

    Returns:
        A DataFrame ``task, metric, before, after, diff, ci_low, ci_high``.
    """
    rows = []
    for task, a in after.items():
        if task not in before:
            continue
        b = before[task]
        if len(a) != len(b):
            raise StudyError(f"Task {task!r} has {len(b)} items before and {len(a)} after; run both with the same profile and seed.")
        if "correct" in a:
            groups = a["example_id"].to_numpy() if "example_id" in a else None
            res = paired_bootstrap_diff(np.mean, a["correct"].to_numpy(float), b["correct"].to_numpy(float),
                                        seed=seed, groups=groups)
            metric, va, vb = "accuracy", a["correct"].mean(), b["correct"].mean()
        else:
            def pooled(nll, cnt):
                return float(np.exp(nll.sum() / cnt.sum()))

            cnt = a["n_tokens"].to_numpy(float)
            res = paired_bootstrap_diff(pooled, (a["nll"].to_numpy(), cnt), (b["nll"].to_numpy(), cnt), seed=seed)
            metric, va, vb = "perplexity", pooled(a["nll"].to_numpy(), cnt), pooled(b["nll"].to_numpy(), cnt)
        rows.append({"task": task, "metric": metric, "before": float(vb), "after": float(va),
                     "diff": float(res.estimate), "ci_low": float(res.low), "ci_high": float(res.high)})
    return pd.DataFrame(rows)
