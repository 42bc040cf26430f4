"""Which candidate neurons become the edit: the selection strategies of chapter 5.

Paper 1's third step masks the candidates and keeps "the final 50 neurons" whose masking
reduces bias without harming other tasks. Read one way, each candidate is judged **alone**
and the best 50 are then masked **together**; read the other way, the 50 are judged **as a
set**. The two differ whenever the neurons' effects add up: most CommonWords words lean male,
so any neuron that shifts every ``b(w)`` towards the female target lowers mean ``|b|`` on its own, and
fifty such shifts push the words past zero into a female lean. The strategies, one interface
(``strategy(scorer, ranking, k_max=..., guard_tol=...) -> Selection``):

* :func:`one_shot` ranks candidates by their single-mask drop of mean ``|b|`` on the training
  words and keeps them in that order (the reading chapter 5 first published; kept to show how
  it fails). Its perplexity guard is joint (below), but bias is never measured for the set.
* :func:`joint_greedy` walks down the same ranking and keeps a candidate only if masking it
  *together with the neurons kept so far* lowers the training mean ``|b|`` (method_spec §6 A4's
  "greedy cumulative selection") and passes the joint guard.
* :func:`sign_aware` first keeps only candidates whose single mask shrinks ``|b|`` on both the
  male-leaning and the female-leaning training words (neurons that move words towards zero,
  not every word one way), then walks them like :func:`joint_greedy`, also requiring that
  neither group's mean ``|b|`` rises.

**Guards are always joint**: a candidate passes when masking it together with the neurons kept
so far raises the pooled perplexity of the guard paragraphs by at most ``guard_tol`` (relative).
A one-neuron guard misses neurons that stand in for each other, such as the query heads of one
key/value group under grouped-query attention reading the same value dimension. A second,
optional check (:func:`joint_guard`'s ``task_tol``) bounds the rise of the answer perplexity of
held-out task items (arithmetic problems the capability suite does not score): neutral text can
hardly notice a neuron that arithmetic depends on.

**Speed** (:class:`SetScorer`): the residual stream entering every layer is kept for the
selection prompts and the guard paragraphs, computed with the neurons kept so far masked (the
*base*); a candidate set then only runs the layers from its first edited layer, and many sets
share one forward pass (each set owns a block of batch rows; its neurons are removed by
multiplying the rows' ``down_proj`` / ``o_proj`` inputs by 0, which equals zeroing the weight
columns as :func:`analysis_lib.editing.mask_neurons` does). :func:`analysis_lib.reference.masked_bias`
is the slow reference (one full pass per set).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch

from .benchmarks import prompt_bias
from .capability import perplexity_task
from .commonwords import GENDER_TARGETS
from .editing import edit_column, edit_module, has_position_hooks, mask_neurons
from .errors import ParameterError
from .models import encode, single_token_id, token_ids
from .neurons import NeuronId, arch
from .scoring import continuation_logprobs, unembed

__all__ = [
    "STRATEGIES",
    "Selection",
    "SetScorer",
    "single_effects",
    "one_shot",
    "joint_greedy",
    "sign_aware",
    "select",
    "candidate_edits",
    "validation_table",
    "choose_edit",
    "CHOICE_RULE",
    "additivity",
    "shared_value_groups",
    "joint_guard",
]

#: The strategies in the order the chapter presents them (the paper's one-shot reading first).
STRATEGIES = ("one_shot", "joint_greedy", "sign_aware")

#: b(w) = log p(male) - log p(female) of :data:`analysis_lib.commonwords.GENDER_TARGETS`, as everywhere in the study.
TARGETS = GENDER_TARGETS

#: Rows (set x prompt, or set x paragraph) per batched forward pass: big enough to amortise the
#: per-call overhead on a CPU, small enough that the activations of one pass stay < ~0.5 GB.
ROWS_PER_PASS = 1024

#: Selection prompts per length bucket, at least: each bucket is one pass per candidate set, and
#: a pass through the bridge's modules costs ~10 ms of Python per layer whatever its size.
MIN_BUCKET = 48

#: The batched scorer must reproduce a full masked pass to this (absolute, in b): float32
#: products summed in another blocking order differ by ~1e-6; a wrong mask moves b by > 1e-3.
CHECK_TOL = 1e-4

#: The rule that chooses the edit on the validation words, stated before any number is seen.
CHOICE_RULE = (
    "Among the edits the strategies produce (each strategy's selection cut at every K of the grid, "
    "and its whole selection when it stops short of the largest K), choose the one with the lowest mean |b| on the "
    "validation words; every candidate already satisfies the joint guard (both checks). An edit must "
    "lower validation mean |b| below the unedited model's to be chosen; equal values go to the "
    "smaller edit. The test words are used once, for the final table."
)


# ----------------------------------------------------------------------------- batched scoring


class _Stream:
    """Token batches and the residual stream entering each layer under the current base edit."""

    def __init__(self, model, batches: list[tuple[torch.Tensor, list[int]]]):
        self.model = model
        self.inner = model.original_model.model
        self.batches = batches  # (tokens [B, T], lengths)
        self.store: list[dict[int, torch.Tensor]] = [{} for _ in batches]
        self.stale: int | None = 0  # the first layer whose stored input is out of date (None: none)

    def _run(self, start: int, hidden: torch.Tensor | None, tokens: torch.Tensor | None,
             capture: dict[int, torch.Tensor] | None) -> torch.Tensor:
        layers = self.inner.layers
        handles = []
        try:
            sliced = list(layers)[start:]
            self.inner.layers = torch.nn.ModuleList(sliced)
            if capture is not None:
                for i, layer in enumerate(sliced):
                    def grab(mod, args, kwargs, i=start + i):
                        h = args[0] if args else kwargs["hidden_states"]
                        capture[i] = h.detach().clone()
                    handles.append(layer.register_forward_pre_hook(grab, with_kwargs=True))
            with torch.inference_mode():
                if hidden is None:
                    out = self.inner(input_ids=tokens, use_cache=False)
                else:
                    out = self.inner(inputs_embeds=hidden, use_cache=False)
            return out.last_hidden_state
        finally:
            for h in handles:
                h.remove()
            self.inner.layers = layers

    def capture(self, start: int = 0) -> None:
        """Recompute the stored inputs of layers ``start..L-1`` (the model's weights as they are now)."""
        for b, (toks, _) in enumerate(self.batches):
            hidden = None if start == 0 else self.store[b][start]
            new: dict[int, torch.Tensor] = {}
            self._run(start, hidden, toks if start == 0 else None, new)
            self.store[b].update(new)

    def forward(self, b: int, start: int, repeat: int) -> torch.Tensor:
        """Final hidden states of batch ``b`` repeated ``repeat`` times, from layer ``start``."""
        h = self.store[b][start]
        if repeat > 1:
            h = h.repeat(repeat, 1, 1)
        return self._run(start, h, None, None)


class _SequenceStream(_Stream):
    """Token rows scored from a per-row start (16 per batch, longest first, right-padded)."""

    def __init__(self, model, rows: list[list[int]], starts: list[int]):
        order = np.argsort([-len(r) for r in rows], kind="stable")
        pad = model.tokenizer.pad_token_id or 0
        device = model.cfg.device or "cpu"
        batches, self.starts = [], []
        for s0 in range(0, len(order), 16):
            idx = order[s0 : s0 + 16]
            toks = torch.full((len(idx), len(rows[idx[0]])), pad, dtype=torch.long)
            for r, i in enumerate(idx):
                toks[r, : len(rows[i])] = torch.tensor(rows[i])
            batches.append((toks.to(device), [len(rows[i]) for i in idx]))
            self.starts.append([starts[i] for i in idx])
        super().__init__(model, batches)
        self.n_scored = float(sum(len(r) - s for r, s in zip(rows, starts)))


@contextlib.contextmanager
def _row_masks(model, sets: Sequence[Sequence[NeuronId]], rows_per_set: int) -> Iterator[None]:
    """Remove set ``s``'s neurons from batch rows ``s*rows_per_set .. (s+1)*rows_per_set - 1``.

    Multiplies the input of ``down_proj`` (FFN neuron ``i``: feature ``i``) or ``o_proj``
    (attention neuron ``(h, j)``: feature ``h*d_head + j``) by 0 in those rows: the same as
    zeroing the weight column for those rows only.
    """
    n = len(sets) * rows_per_set
    per_module: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for s, neurons in enumerate(sets):
        for nid in neurons:
            where = edit_column(model, nid)
            if where is None:
                raise ParameterError(f"{nid} is a positional attention neuron; the batched scorer masks weight columns only.")
            per_module.setdefault(where[0], []).append((s, where[1]))
    handles = []
    try:
        for (layer, which), cells in per_module.items():
            mod = edit_module(model, layer, which)
            width = mod.weight.shape[1]
            mask = torch.ones((n, 1, width), dtype=mod.weight.dtype, device=mod.weight.device)
            for s, col in cells:
                mask[s * rows_per_set : (s + 1) * rows_per_set, 0, col] = 0.0

            def hook(module, args, mask=mask):
                return (args[0] * mask,) + tuple(args[1:])

            handles.append(mod.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


class SetScorer:
    """``b(w)`` on fixed prompts and the guard perplexity, for neuron sets on top of a base edit.

    Args:
        model: a loaded bridge (never left edited).
        prompts: the selection prompts (each is scored at its last token).
        guard_texts: neutral paragraphs for the perplexity guard (may be empty: no guard).
        task_items: ``(context, answer)`` pairs for the task guard, scored on the answer's tokens
            (may be empty: no task guard).
        check: compare the batched path with one full masked pass on first use and fall back to
            full passes if they differ by more than :data:`CHECK_TOL` (an architecture the layer
            slicing does not fit).

    The base (:meth:`commit`) is the set every evaluation starts from, e.g. the neurons a walk
    has kept; :meth:`bias`, :meth:`ppl_ratio` and :meth:`task_ratio` take the *extra* neurons on
    top of it.
    """

    def __init__(self, model, prompts: Sequence[str], guard_texts: Sequence[str] = (),
                 task_items: Sequence[tuple[str, str]] = (), *, check: bool = True):
        self.model = model
        self.prompts = list(prompts)
        self.guard_texts = list(guard_texts)
        self.task_items = [(str(c), str(a)) for c, a in task_items]
        self.ids = [single_token_id(model, t) for t in TARGETS]
        self.base: list[str] = []
        self.fast = not has_position_hooks(model)
        # selection prompts: sorted by token length and cut into buckets of at least
        # MIN_BUCKET prompts, each right-padded to its longest (few pads, few passes)
        enc = encode(model, self.prompts)
        lengths = enc.last_index.cpu().numpy() + 1
        order = np.argsort(lengths, kind="stable")
        self._groups = []
        start = 0
        for n in sorted(set(lengths.tolist())):
            end = int(np.searchsorted(lengths[order], n, side="right"))
            if end - start >= MIN_BUCKET or end == len(order):
                self._groups.append(order[start:end])
                start = end
        if start < len(order):  # a short tail joins the last bucket
            tail = order[start:]
            self._groups = self._groups[:-1] + [np.concatenate([self._groups[-1], tail])] if self._groups else [tail]
        self._bias = _Stream(model, [(enc.tokens[g][:, : int(lengths[g].max())], lengths[g].tolist())
                                     for g in self._groups])
        # guard paragraphs: the batches of analysis_lib.capability.perplexity_task (16, longest
        # first), every token after the first scored; task items: context + answer, the answer's
        # tokens scored (the rows of analysis_lib.scoring.continuation_logprobs)
        prefix = [model.start_token_id] if model.start_token_id is not None else []
        self._guard = None
        if self.guard_texts:
            rows = [prefix + token_ids(model, t) for t in self.guard_texts]
            self._guard = _SequenceStream(model, rows, [1] * len(rows))
        self._task = None
        if self.task_items:
            rows, starts = [], []
            for ctx, ans in self.task_items:
                c = prefix + token_ids(model, ctx)
                rows.append(c + token_ids(model, ans))
                starts.append(len(c))
            self._task = _SequenceStream(model, rows, starts)
        self._checked = not check
        self._capture(0)
        self.b0 = self.bias([[]])[0]
        self.ppl0 = self._ppl([]) if self._guard is not None else float("nan")
        self.task_ppl0 = self._task_ppl([]) if self._task is not None else float("nan")

    # -- base
    def _capture(self, start: int) -> None:
        """Mark every stream's stored inputs of layers ``start..`` stale; each is recomputed when
        it is next used (:meth:`_fresh`), so a walk that never reads one stream (the one-shot walk
        reads no bias) never pays for it."""
        for stream in (self._bias, self._guard, self._task):
            if stream is not None:
                stream.stale = start if stream.stale is None else min(stream.stale, start)

    def _fresh(self, stream: "_Stream") -> "_Stream":
        """``stream`` with its stored inputs recomputed under the current base where stale."""
        if self.fast and stream.stale is not None:
            with mask_neurons(self.model, self.base) if self.base else contextlib.nullcontext():
                stream.capture(stream.stale)
            stream.stale = None
        return stream

    def commit(self, neurons: Sequence[str]) -> None:
        """Make ``neurons`` the base edit (the stored residual streams are updated from the first
        layer where the old and the new base differ)."""
        new = [str(n) for n in neurons]
        changed = set(new) ^ set(self.base)
        self.base = new
        if changed:
            self._capture(min(NeuronId.parse(n).layer for n in changed))

    # -- scores
    def _start(self, extras: Sequence[Sequence[NeuronId]]) -> int:
        layers = [n.layer for ex in extras for n in ex]
        return min(layers) if layers else arch(self.model).n_layers - 1

    def bias(self, extras: Sequence[Sequence[str]]) -> np.ndarray:
        """``b`` per prompt (``[len(extras), n_prompts]``, float64) with base + each extra set masked."""
        sets = [[NeuronId.parse(str(n)) for n in ex] for ex in extras]
        if not self.fast:
            return np.stack([self._slow_bias(s) for s in sets])
        if not self._checked and any(sets):
            self._checked = True
            probe = next(s for s in sets if s)
            got, want = self._fast_bias([probe])[0], self._slow_bias(probe)
            if not np.allclose(got, want, atol=CHECK_TOL, rtol=0):
                self.fast = False
                return self.bias(extras)
        return self._fast_bias(sets)

    def _fast_bias(self, sets: list[list[NeuronId]]) -> np.ndarray:
        out = np.empty((len(sets), len(self.prompts)))
        self._fresh(self._bias)
        # sets that start at the same layer share passes (a pass runs from its shallowest set)
        by_start: dict[int, list[int]] = {}
        for i, s in enumerate(sets):
            by_start.setdefault(self._start([s]), []).append(i)
        with mask_neurons(self.model, self.base) if self.base else contextlib.nullcontext():
            for start, members in sorted(by_start.items()):
                for g, idx in enumerate(self._groups):
                    per = max(1, ROWS_PER_PASS // max(1, len(idx)))
                    for s0 in range(0, len(members), per):
                        rows = members[s0 : s0 + per]
                        chunk = [sets[i] for i in rows]
                        with _row_masks(self.model, chunk, len(idx)), torch.inference_mode():
                            hid = self._bias.forward(g, start, len(chunk))
                            last = torch.as_tensor(self._bias.batches[g][1], device=hid.device).repeat(len(chunk)) - 1
                            hid = hid[torch.arange(hid.shape[0], device=hid.device), last]
                            lp = unembed(self.model, hid).float().log_softmax(-1)[:, self.ids]
                        # b of the row-masked batch (not benchmarks.prompt_bias: checked against it, CHECK_TOL)
                        b = (lp[:, 0] - lp[:, 1]).double().cpu().numpy().reshape(len(chunk), len(idx))
                        out[np.ix_(rows, idx)] = b
        return out

    def _slow_bias(self, extra: Sequence[NeuronId]) -> np.ndarray:
        """Full batched passes with the weights edited (the path of analysis_lib.scoring)."""
        with mask_neurons(self.model, self.base + [str(n) for n in extra]):
            _, b = prompt_bias(self.model, self.prompts)  # b of TARGETS
        return b

    def _nll(self, stream: "_SequenceStream", extra: Sequence[NeuronId]) -> float:
        """Summed NLL of the stream's scored tokens with base + ``extra`` masked (batched path)."""
        total = 0.0
        self._fresh(stream)
        with mask_neurons(self.model, self.base) if self.base else contextlib.nullcontext():
            for b, (toks, lengths) in enumerate(stream.batches):
                with _row_masks(self.model, [list(extra)], len(lengths)), torch.inference_mode():
                    hid = stream.forward(b, self._start([list(extra)]), 1)
                    for r, (n, s) in enumerate(zip(lengths, stream.starts[b])):
                        lp = unembed(self.model, hid[r, s - 1 : n - 1]).float().log_softmax(-1)
                        total += -lp.gather(-1, toks[r, s:n, None]).sum().item()
        return total

    def _ppl(self, extra: Sequence[NeuronId]) -> float:
        if self._guard is None:
            raise ParameterError("This scorer has no guard paragraphs to measure perplexity on.")
        if not self.fast:
            with mask_neurons(self.model, self.base + [str(n) for n in extra]):
                rec = perplexity_task(self.model, self.guard_texts).records
            return float(np.exp(rec["nll"].sum() / rec["n_tokens"].sum()))
        return float(np.exp(self._nll(self._guard, extra) / self._guard.n_scored))

    def _task_ppl(self, extra: Sequence[NeuronId]) -> float:
        if self._task is None:
            raise ParameterError("This scorer has no task items to measure answer perplexity on.")
        if not self.fast:
            with mask_neurons(self.model, self.base + [str(n) for n in extra]):
                lp, n = continuation_logprobs(self.model, *zip(*self.task_items))
            return float(np.exp(-lp.sum() / n.sum()))
        return float(np.exp(self._nll(self._task, extra) / self._task.n_scored))

    def ppl_ratio(self, extra: Sequence[str]) -> float:
        """Guard perplexity with base + ``extra`` masked, over the unedited model's."""
        return self._ppl([NeuronId.parse(str(n)) for n in extra]) / self.ppl0

    def task_ratio(self, extra: Sequence[str]) -> float:
        """Answer perplexity of the task items (tokens of the answers only) with base + ``extra``
        masked, over the unedited model's."""
        return self._task_ppl([NeuronId.parse(str(n)) for n in extra]) / self.task_ppl0


# ----------------------------------------------------------------------------- strategies


class Scorer(Protocol):
    """What a strategy needs (a :class:`SetScorer`, or a hand-built toy in the tests)."""

    b0: np.ndarray

    def bias(self, extras: Sequence[Sequence[str]]) -> np.ndarray: ...

    def ppl_ratio(self, extra: Sequence[str]) -> float: ...

    def task_ratio(self, extra: Sequence[str]) -> float: ...

    def commit(self, neurons: Sequence[str]) -> None: ...


@dataclass
class Selection:
    """One strategy's result.

    Attributes:
        strategy: its name (one of :data:`STRATEGIES`).
        neurons: the kept neurons, in the order they were kept (the edit of size K is the
            first K).
        trace: one row per candidate examined: ``neuron``, ``step`` (1-based order examined),
            ``mean_abs_b`` (training mean |b| with the kept set plus this candidate masked; NaN
            where not measured), ``ppl_ratio`` and ``task_ratio`` (the two checks of
            :func:`joint_guard`; NaN where not reached), ``kept``
            (1-based order kept, 0 = not kept) and ``reason``.
    """

    strategy: str
    neurons: list[str]
    trace: pd.DataFrame = field(repr=False)


def single_effects(scorer: Scorer, neurons: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Mask each neuron alone (on an empty base) and re-score the prompts.

    Returns:
        ``(table, B)``: ``B[i]`` is ``b`` per prompt with neuron ``i`` masked; ``table`` has per
        neuron ``effect`` (drop of mean |b|; > 0 = less bias), ``effect_male`` and
        ``effect_female`` (the same drop over the words leaning male, ``b0 > 0``, and female,
        ``b0 < 0``, only), ``shift`` (change of the mean signed b; < 0 = towards the female target) and
        ``mean_abs_b`` (masked).
    """
    scorer.commit([])
    neurons = [str(n) for n in neurons]
    b0 = scorer.b0
    B = scorer.bias([[n] for n in neurons]) if neurons else np.empty((0, len(b0)))
    male, female = b0 > 0, b0 < 0

    def drop(mask):
        if not mask.any():
            return np.full(len(neurons), np.nan)
        return np.abs(b0[mask]).mean() - np.abs(B[:, mask]).mean(1)

    table = pd.DataFrame({"neuron": neurons, "mean_abs_b": np.abs(B).mean(1) if len(B) else [],
                          "effect": np.abs(b0).mean() - np.abs(B).mean(1) if len(B) else [],
                          "effect_male": drop(male), "effect_female": drop(female),
                          "shift": B.mean(1) - b0.mean() if len(B) else []})
    return table, B


def _trace(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["neuron", "step", "mean_abs_b", "ppl_ratio", "task_ratio", "kept", "reason"])


def joint_guard(scorer: Scorer, extra: Sequence[str], guard_tol: float | None,
                task_tol: float | None = None) -> tuple[float, float, str | None]:
    """The joint guard for base + ``extra``: ``(ppl_ratio, task_ratio, refusal)``.

    Refused (``"guard"``) when the guard paragraphs' perplexity rises by more than ``guard_tol``
    (relative), else (``"task guard"``) when the task items' answer perplexity rises by more than
    ``task_tol``; ``refusal`` is None when it passes. A tolerance of None skips that check (its
    ratio is NaN); the task check is only measured once the perplexity check passes.
    """
    r = scorer.ppl_ratio(extra) if guard_tol is not None else float("nan")
    if guard_tol is not None and r - 1.0 > guard_tol:
        return r, float("nan"), "guard"
    t = scorer.task_ratio(extra) if task_tol is not None else float("nan")
    if task_tol is not None and t - 1.0 > task_tol:
        return r, t, "task guard"
    return r, t, None


def one_shot(scorer: Scorer, ranking: Sequence[str], *, k_max: int, guard_tol: float | None,
             task_tol: float | None = None) -> Selection:
    """Keep candidates in ranking order (single-mask effect), each subject to the joint guard.

    Bias is not re-measured for the set: the paper's "causal masking" read as judging each
    neuron alone. ``ranking`` should hold only candidates with a positive single effect.
    """
    scorer.commit([])
    kept: list[str] = []
    rows = []
    for step, c in enumerate(ranking, 1):
        if len(kept) >= k_max:
            break
        r, t, refusal = joint_guard(scorer, [c], guard_tol, task_tol)
        if refusal is None:
            kept.append(c)
            scorer.commit(kept)
        rows.append({"neuron": c, "step": step, "mean_abs_b": np.nan, "ppl_ratio": r, "task_ratio": t,
                     "kept": len(kept) if refusal is None else 0, "reason": refusal or "kept"})
    return Selection("one_shot", kept, _trace(rows))


def joint_greedy(scorer: Scorer, ranking: Sequence[str], *, k_max: int, guard_tol: float | None,
                 task_tol: float | None = None, by_group: bool = False, chunk: int = 4,
                 strategy: str = "joint_greedy") -> Selection:
    """Walk down ``ranking``; keep a candidate only if masking it together with the kept set
    lowers the training mean |b| (with ``by_group``, also without raising the mean |b| of the
    male-leaning or of the female-leaning words) and passes the joint guard.

    ``chunk`` candidates are scored against the current kept set in one batched pass; a keep
    changes the set, so the rest of the chunk is scored again.
    """
    scorer.commit([])
    b0 = scorer.b0
    groups = [b0 > 0, b0 < 0] if by_group else []

    def stats(b):
        return float(np.abs(b).mean()), [float(np.abs(b[g]).mean()) if g.any() else 0.0 for g in groups]

    cur, cur_g = stats(b0)
    kept: list[str] = []
    rows = []
    i = 0
    ranking = [str(c) for c in ranking]
    while i < len(ranking) and len(kept) < k_max:
        batch = ranking[i : i + chunk]
        B = scorer.bias([[c] for c in batch])
        for j, c in enumerate(batch):
            i += 1
            new, new_g = stats(B[j])
            row = {"neuron": c, "step": i, "mean_abs_b": new, "ppl_ratio": np.nan, "task_ratio": np.nan, "kept": 0}
            rows.append(row)
            if not (new < cur and all(n <= o for n, o in zip(new_g, cur_g))):
                row["reason"] = "bias not lower" if not new < cur else "one gender's |b| rises"
                continue
            row["ppl_ratio"], row["task_ratio"], refusal = joint_guard(scorer, [c], guard_tol, task_tol)
            if refusal is not None:
                row["reason"] = refusal
                continue
            kept.append(c)
            row["kept"], row["reason"] = len(kept), "kept"
            cur, cur_g = new, new_g
            scorer.commit(kept)
            break  # the rest of the batch was scored against the old set
    return Selection(strategy, kept, _trace(rows))


def sign_aware(scorer: Scorer, ranking: Sequence[str], singles: pd.DataFrame, *, k_max: int,
               guard_tol: float | None, task_tol: float | None = None, chunk: int = 4) -> Selection:
    """:func:`joint_greedy` over the candidates whose single mask shrinks |b| on both the
    male-leaning and the female-leaning words (``singles`` from :func:`single_effects`)."""
    s = singles.set_index("neuron")
    pool = [c for c in ranking if s.loc[c, "effect_male"] > 0 and s.loc[c, "effect_female"] > 0]
    return joint_greedy(scorer, pool, k_max=k_max, guard_tol=guard_tol, task_tol=task_tol, by_group=True,
                        chunk=chunk, strategy="sign_aware")


def select(strategy: str, scorer: Scorer, ranking: Sequence[str], singles: pd.DataFrame, *, k_max: int,
           guard_tol: float | None, task_tol: float | None = None) -> Selection:
    """Run one of :data:`STRATEGIES` by name."""
    kw = dict(k_max=k_max, guard_tol=guard_tol, task_tol=task_tol)
    if strategy == "one_shot":
        return one_shot(scorer, ranking, **kw)
    if strategy == "joint_greedy":
        return joint_greedy(scorer, ranking, **kw)
    if strategy == "sign_aware":
        return sign_aware(scorer, ranking, singles, **kw)
    raise ParameterError(f"Unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")


# ----------------------------------------------------------------------------- choosing K and strategy


def candidate_edits(selections: Mapping[str, Selection], ks: Sequence[int]) -> pd.DataFrame:
    """The edits the validation step chooses from: every strategy's selection cut at each K of
    ``ks`` it reaches, plus its whole selection when that stops short of the largest K.

    Returns:
        One row per edit: ``edit`` (e.g. ``"one_shot K=50"``), ``strategy``, ``k`` and ``neurons``.
    """
    rows = []
    for name, sel in selections.items():
        n = len(sel.neurons)
        sizes = [k for k in sorted(set(ks)) if k <= n]
        if n and n not in sizes:  # the whole selection, when it stops short of the largest K
            sizes.append(n)
        for k in sizes:
            rows.append({"edit": f"{name} K={k}", "strategy": name, "k": k, "neurons": sel.neurons[:k]})
    return pd.DataFrame(rows, columns=["edit", "strategy", "k", "neurons"])


def validation_table(scorer: Scorer, edits: pd.DataFrame) -> pd.DataFrame:
    """Each edit's mean |b| and mean signed b on the validation words (``scorer`` holds them)."""
    scorer.commit([])
    B = scorer.bias([list(n) for n in edits["neurons"]]) if len(edits) else np.empty((0, len(scorer.b0)))
    b0 = scorer.b0
    out = edits.drop(columns="neurons").copy()
    out["val_mean_abs_b"] = np.abs(B).mean(1) if len(B) else []
    out["val_d_mean_abs_b"] = out["val_mean_abs_b"] - float(np.abs(b0).mean())
    out["val_mean_b"] = B.mean(1) if len(B) else []
    out.attrs["val_mean_abs_b_original"] = float(np.abs(b0).mean())
    out.attrs["val_mean_b_original"] = float(b0.mean())
    return out


def choose_edit(table: pd.DataFrame, ks: Sequence[int]) -> dict[str, Any]:
    """Apply :data:`CHOICE_RULE` to a :func:`validation_table`.

    Returns:
        ``{"edit", "strategy", "k", "val_mean_abs_b", "at_edge"}``; ``edit`` is None when no
        edit lowers validation mean |b|. ``at_edge`` is ``"largest"`` or ``"smallest"`` when the
        chosen K is that end of the grid (a larger or smaller K was not tried; K = 1 has no
        smaller edit), else False.
    """
    base = table.attrs.get("val_mean_abs_b_original", np.inf)
    ok = table[table["val_mean_abs_b"] < base]
    if not len(ok):
        return {"edit": None, "strategy": None, "k": 0, "val_mean_abs_b": base, "at_edge": False}
    best = ok.sort_values(["val_mean_abs_b", "k"], kind="stable").iloc[0]
    k = int(best["k"])
    # a walk's own stopping point (a K off the grid) is not a choice at the grid's edge, nor is
    # K = 1 (no smaller edit exists)
    edge = (False if k not in set(ks) else "largest" if k >= max(ks) else "smallest" if 1 < k <= min(ks)
            else False)
    return {"edit": str(best["edit"]), "strategy": str(best["strategy"]), "k": k,
            "val_mean_abs_b": float(best["val_mean_abs_b"]), "at_edge": edge}


# ----------------------------------------------------------------------------- diagnostics


def additivity(scorer: Scorer, singles_b: np.ndarray, neurons: Sequence[str], order: Sequence[str],
               ks: Sequence[int]) -> pd.DataFrame:
    """Do single-mask shifts add up? For the first K of ``order`` (K in ``ks``): the mean signed
    b shift predicted by adding the single shifts, and the one measured with all K masked.

    Args:
        singles_b: ``B`` of :func:`single_effects` (rows in the order of ``neurons``).

    Returns:
        Rows ``k``, ``predicted_shift``, ``joint_shift`` (mean signed b, masked minus
        unedited), ``predicted_mean_abs_b`` (|b0 + summed single changes| averaged) and
        ``joint_mean_abs_b``.
    """
    scorer.commit([])
    b0 = scorer.b0
    row = {n: i for i, n in enumerate(neurons)}
    sizes = [k for k in sorted(set(ks)) if k <= len(order)]
    if not sizes:
        return pd.DataFrame(columns=["k", "predicted_shift", "joint_shift", "predicted_mean_abs_b", "joint_mean_abs_b"])
    J = scorer.bias([list(order[:k]) for k in sizes])
    rows = []
    for k, bj in zip(sizes, J):
        delta = (singles_b[[row[n] for n in order[:k]]] - b0).sum(0)
        rows.append({"k": k, "predicted_shift": float(delta.mean()), "joint_shift": float(bj.mean() - b0.mean()),
                     "predicted_mean_abs_b": float(np.abs(b0 + delta).mean()),
                     "joint_mean_abs_b": float(np.abs(bj).mean())})
    return pd.DataFrame(rows)


def shared_value_groups(model, neurons: Sequence[str]) -> list[list[str]]:
    """Attention neurons of ``neurons`` that read the same value dimension of one key/value
    group (same layer, same ``h // group`` and same ``dim``), groups of two or more, in order."""
    a = arch(model)
    size = a.n_heads // a.n_kv_heads
    groups: dict[tuple[int, int, int], list[str]] = {}
    for n in neurons:
        nid = NeuronId.parse(str(n))
        if nid.kind == "attn":
            groups.setdefault((nid.layer, nid.head // size, nid.dim), []).append(str(nid))
    return [g for g in groups.values() if len(g) > 1]
