"""Chapter 5: fine-tuning the bias away (method_spec §4 baseline (2) and §6 A5 reading (ii)).

Two ways of *training* a debiased model, both with the same objective and both on a **copy**
of the caller's model (``copy.deepcopy`` of the bridge, as :func:`analysis_lib.editing.edited_copy`
does; the caller's model is only read, never written):

* :func:`finetune_lora` is the **fine-tuning baseline**: low-rank adapters (LoRA, Hu et al.
  2022) on every attention and MLP projection of every layer, hand-written (no ``peft``):
  each adapted linear map ``y = W x`` becomes ``y = W x + (alpha / r) B A x`` with ``A``
  (``r x d_in``) drawn from a seeded generator and ``B`` (``d_out x r``) zero, so training
  starts exactly at the original model. After training ``(alpha / r) B A`` is added into
  ``W`` and the adapters are removed: the result is a plain model of the same shape.
* :func:`finetune_neurons` is the **neuron-restricted fine-tuning** variant of the edit: the
  weight matrices that hold the selected neurons are trained with a gradient mask, so only
  the neurons' own entries can change. FFN neuron ``ffnL{l}N{i}``: column ``i`` of
  ``down_proj`` and row ``i`` of ``gate_proj`` and ``up_proj``; aggregated attention neuron
  ``attnL{l}H{h}D{j}``: column ``h * d_head + j`` of ``o_proj`` (never the grouped-query
  ``v_proj`` row, §6 A6). Adam without weight decay turns a gradient that is always exactly
  zero into an update that is exactly zero, and the function checks after training that every
  masked entry is bit-identical to the original.

**The objective** (both functions), for training prompts ``w`` and neutral texts ``x``::

    loss = mean_w (log p(man | w) - log p(woman | w))^2
           + beta * mean_{tokens t of x} KL(p_orig(. | x_<t) || p_tuned(. | x_<t))

The first term is method_spec §4 (2)'s balanced objective on the *training* words only; the
second keeps the model's next-token distribution on neutral text where it was. The original
model's distributions on the neutral texts are computed once, before training (texts are cut
to ``max_kl_tokens`` tokens). Prompts are scored exactly as :mod:`analysis_lib.scoring` scores
them (start token, right padding, last real position); KL positions are the positions
:func:`analysis_lib.capability.perplexity_task` scores.

Training is deterministic for a given ``seed`` (seeded adapter initialisation and
mini-batches, no dropout: the model stays in eval mode) on a given machine and thread count.

Example::

    res = finetune_lora(model, train_prompts, guard_texts, steps=20, lr=2e-3, beta=1.0)
    tuned = res.model                      # evaluate like any other model
    res.history                            # loss per step
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .commonwords import GENDER_TARGETS
from .editing import has_position_hooks, resolve_neurons
from .errors import EditError, ParameterError
from .models import Encoded, encode, single_token_id
from .neurons import arch, clear_model_cache, hf_layer, hf_model, unwrap
from .scoring import unembed

__all__ = [
    "LORA_MODULES",
    "FinetuneResult",
    "bias_objective",
    "finetune_lora",
    "finetune_neurons",
    "neuron_masks",
]

#: The targets of b (:data:`analysis_lib.commonwords.GENDER_TARGETS`).
TARGETS = GENDER_TARGETS

#: The projections LoRA adapts, per layer (attention, then MLP), as in most LoRA recipes for Llama.
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class FinetuneResult:
    """A fine-tuned copy of a model and how it was trained.

    Attributes:
        model: the fine-tuned copy (a bridge like the input; the input is untouched). It
            carries ``finetune_method`` and, for :func:`finetune_neurons`, ``edit_neurons``.
        method: ``"lora"`` or ``"neurons"``.
        history: one row per step: ``step``, ``loss``, ``bias_loss`` (mean ``b^2`` on the
            step's prompts), ``kl`` (mean per-token KL on the neutral texts), all measured
            *before* that step's update; a last row (``step = steps``) after the final update.
        n_trainable: number of trainable parameter entries (adapter entries for LoRA, unmasked
            weight entries for the neuron variant).
        seconds: wall time of the training (copy and teacher pass included).
        settings: every setting used (steps, lr, beta, ...), for the chapter to state.
    """

    model: Any
    method: str
    history: pd.DataFrame
    n_trainable: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- forward passes


def _bias_values(model: Any, enc, ids: Sequence[int]) -> torch.Tensor:
    """``b = log p(man) - log p(woman)`` (:data:`TARGETS`) at the last real position (differentiable)."""
    hidden = hf_model(model).model(input_ids=enc.tokens, use_cache=False).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), enc.last_index]
    lp = unembed(model, last).float().log_softmax(-1)[:, list(ids)]
    return lp[:, 0] - lp[:, 1]


def _text_logprobs(model: Any, enc) -> torch.Tensor:
    """Log-probabilities ``[batch, pos - 1, vocab]`` of the next token at every position but the last."""
    hidden = hf_model(model).model(input_ids=enc.tokens, use_cache=False).last_hidden_state
    return unembed(model, hidden[:, :-1]).float().log_softmax(-1)


def _kl_mask(enc) -> torch.Tensor:
    """``[batch, pos - 1]``: 1 where position ``t`` predicts a real token ``t + 1``."""
    pos = torch.arange(enc.tokens.shape[1] - 1, device=enc.tokens.device)
    return (pos[None, :] < (enc.lengths[:, None] - 1)).float()


def _encode_texts(model: Any, texts: Sequence[str], max_tokens: int):
    """Neutral texts encoded like :func:`~analysis_lib.models.encode`, each cut to ``max_tokens`` tokens."""
    enc = encode(model, list(texts))
    keep = int(min(enc.tokens.shape[1], max_tokens))
    enc.tokens = enc.tokens[:, :keep]
    enc.lengths = enc.lengths.clamp(max=keep)
    return enc


def _rows(enc, idx: torch.Tensor):
    """The rows ``idx`` of an encoded batch, trimmed to their longest row."""
    lengths = enc.lengths[idx]
    width = int(lengths.max())
    return Encoded(enc.tokens[idx, :width], lengths, enc.pad_id)


def _kl(model: Any, enc, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``KL(teacher || model)`` (teacher given as log-probabilities)."""
    student = _text_logprobs(model, enc)
    width = student.shape[1]
    teacher, mask = teacher[:, :width], mask[:, :width]
    per_tok = (teacher.exp() * (teacher - student)).sum(-1)
    return (per_tok * mask).sum() / mask.sum()


def bias_objective(model: Any, prompts: Sequence[str], *, batch_size: int = 64) -> float:
    """The balanced objective ``mean_w b(w)^2`` on ``prompts`` (no gradient), ``b`` as in chapter 5.

    Args:
        model: a loaded bridge (or a fine-tuned copy).
        prompts: CommonWords-style prompts (``"The nurse is a"``).
        batch_size: prompts per forward pass.
    """
    ids = [single_token_id(model, t) for t in TARGETS]
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            enc = encode(model, list(prompts[s : s + batch_size]))
            total += float((_bias_values(model, enc, ids).double() ** 2).sum())
    return total / len(prompts)


# ----------------------------------------------------------------------------- shared training loop


def _check_inputs(model: Any, prompts: Sequence[str], kl_texts: Sequence[str], steps: int, lr: float,
                  beta: float, batch_size: int | None, kl_batch: int | None) -> None:
    if not len(prompts):
        raise ParameterError("Fine-tuning needs at least one training prompt.")
    if beta > 0 and not len(kl_texts):
        raise ParameterError("beta > 0 needs neutral texts for the KL term (or pass beta=0).")
    if int(steps) < 0 or not math.isfinite(lr) or lr <= 0 or not math.isfinite(beta) or beta < 0:
        raise ParameterError(f"Need steps >= 0, lr > 0 and beta >= 0 (got steps={steps}, lr={lr}, beta={beta}).")
    for name, v in (("batch_size", batch_size), ("kl_batch", kl_batch)):
        if v is not None and int(v) < 1:
            raise ParameterError(f"{name} must be a positive integer or None, got {v!r}.")
    if has_position_hooks(model):
        raise EditError("Fine-tune outside the `with` block of a positional attention-neuron edit.")


def _copy(model: Any) -> Any:
    new = copy.deepcopy(model)
    for p in hf_model(new).parameters():
        p.requires_grad_(False)
    return new


class _Batches:
    """Seeded mini-batches of indices: successive passes over a random permutation of ``n`` items."""

    def __init__(self, n: int, size: int | None, rng: np.random.Generator):
        self.n, self.size, self.rng = n, (n if size is None else min(int(size), n)), rng
        self.queue: list[int] = []

    def next(self) -> list[int]:
        if self.size == self.n:
            return list(range(self.n))
        take, self.queue = self.queue[: self.size], self.queue[self.size :]
        if len(take) < self.size:  # the pass ends: fill up from a new pass, no item twice in a batch
            perm = self.rng.permutation(self.n).tolist()
            fill = [i for i in perm if i not in take][: self.size - len(take)]
            take += fill
            self.queue = [i for i in perm if i not in fill]
        return sorted(take)


def _train(original: Any, tuned: Any, params: list[torch.Tensor], prompts: Sequence[str], kl_texts: Sequence[str], *,
           steps: int, lr: float, beta: float, batch_size: int | None, kl_batch: int | None, seed: int,
           max_kl_tokens: int, progress: bool | None, desc: str) -> pd.DataFrame:
    """Adam on ``params`` (no weight decay) for ``steps`` steps of the objective; returns the history.

    Each step uses ``batch_size`` prompts and ``kl_batch`` neutral texts (``None``: all), drawn
    as seeded passes; the last history row scores all prompts and all texts after training.
    """
    ids = [single_token_id(original, t) for t in TARGETS]
    prompts = list(prompts)
    use_kl = beta > 0 and len(kl_texts) > 0
    if use_kl:
        enc_t = _encode_texts(original, kl_texts, max_kl_tokens)
        mask = _kl_mask(enc_t)
        with torch.no_grad():
            teacher = _text_logprobs(original, enc_t)
    rng = np.random.default_rng([int(seed), 17])
    pbatch = _Batches(len(prompts), batch_size, rng)
    tbatch = _Batches(len(kl_texts), kl_batch, rng)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    rows = []
    tuned.eval()
    for step in tqdm(range(steps + 1), disable=None if progress is None else not progress, desc=desc):
        last = step == steps
        pi = list(range(len(prompts))) if last else pbatch.next()
        with torch.no_grad() if last else torch.enable_grad():
            b = _bias_values(tuned, encode(tuned, [prompts[i] for i in pi]), ids)
            bias_loss = (b**2).mean()
            ti: list[int] = []
            kl = torch.zeros((), device=b.device)
            if use_kl:
                ti = list(range(len(kl_texts))) if last else tbatch.next()
                sub = torch.tensor(ti, dtype=torch.long, device=enc_t.tokens.device)
                kl = _kl(tuned, _rows(enc_t, sub), teacher[sub], mask[sub])
            loss = bias_loss + beta * kl
        rows.append({"step": step, "loss": loss.item(), "bias_loss": bias_loss.item(), "kl": kl.item(),
                     "n_prompts": len(pi), "n_kl_texts": len(ti)})
        if last:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    clear_model_cache(tuned)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- LoRA baseline


class _LoRA:
    """A low-rank adapter attached to one ``nn.Linear`` through a forward hook."""

    def __init__(self, linear: torch.nn.Linear, rank: int, alpha: float, gen: torch.Generator):
        w = linear.weight
        self.linear = linear
        self.scale = float(alpha) / rank
        a = torch.empty(rank, w.shape[1], dtype=torch.float32)
        # kaiming-uniform bound of nn.Linear (a = sqrt(5)): 1 / sqrt(fan_in); B = 0
        bound = 1.0 / math.sqrt(w.shape[1])
        a.uniform_(-bound, bound, generator=gen)
        self.A = torch.nn.Parameter(a.to(w.device))
        self.B = torch.nn.Parameter(torch.zeros(w.shape[0], rank, dtype=torch.float32, device=w.device))
        self.handle = linear.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        x = args[0]
        delta = (x.to(self.A.dtype) @ self.A.T) @ self.B.T
        return out + (self.scale * delta).to(out.dtype)

    def merge(self) -> None:
        """Add ``scale * B A`` into the weight and remove the hook."""
        self.handle.remove()
        with torch.no_grad():
            w = self.linear.weight
            w.add_((self.scale * (self.B @ self.A)).to(w.dtype))


def _linear(model: Any, layer: int, name: str) -> torch.nn.Linear:
    lay = hf_layer(model, layer)
    parent = unwrap(lay.self_attn) if name in ("q_proj", "k_proj", "v_proj", "o_proj") else unwrap(lay.mlp)
    return unwrap(getattr(parent, name))


def finetune_lora(model: Any, prompts: Sequence[str], kl_texts: Sequence[str], *, steps: int, lr: float,
                  beta: float, rank: int = 8, alpha: float | None = None,
                  modules: Sequence[str] = LORA_MODULES, batch_size: int | None = None,
                  kl_batch: int | None = None, seed: int = 0, max_kl_tokens: int = 64,
                  progress: bool | None = None) -> FinetuneResult:
    """The fine-tuning baseline: LoRA on a copy of ``model`` with the balanced objective + β·KL.

    Args:
        model: a loaded bridge; only read.
        prompts: training prompts (CommonWords *train* words, e.g. ``"The nurse is a"``).
        kl_texts: neutral texts for the KL term (chapter 5: the guard paragraphs).
        steps: optimizer steps (Adam, no weight decay).
        lr: learning rate of the adapters.
        beta: weight of the KL term.
        rank: adapter rank ``r``.
        alpha: adapter scale numerator (the update is ``(alpha / r) B A``); default ``2 * rank``.
        modules: projection names to adapt in every layer (default :data:`LORA_MODULES`).
        batch_size: prompts per step (``None``: all of them every step); mini-batches are
            seeded passes over the prompts.
        kl_batch: neutral texts per step for the KL term (``None``: all of them every step).
        seed: seeds the adapter initialisation and the mini-batches.
        max_kl_tokens: neutral texts are cut to this many tokens (start token included).
        progress: tqdm bar; ``None`` shows it only on an interactive terminal.

    Returns:
        :class:`FinetuneResult`; its ``model`` has the adapters merged into the weights.
    """
    _check_inputs(model, prompts, kl_texts, steps, lr, beta, batch_size, kl_batch)
    if int(rank) < 1:
        raise ParameterError(f"LoRA rank must be >= 1, got {rank!r}.")
    bad = [m for m in modules if m not in LORA_MODULES]
    if bad or not len(modules):
        raise ParameterError(f"Unknown LoRA module(s) {bad or list(modules)}; choose from {', '.join(LORA_MODULES)}.")
    alpha = float(2 * rank if alpha is None else alpha)
    t0 = time.perf_counter()
    tuned = _copy(model)
    gen = torch.Generator().manual_seed(int(seed))
    adapters = [_LoRA(_linear(tuned, l, name), int(rank), alpha, gen)
                for l in range(arch(tuned).n_layers) for name in modules]
    params = [p for ad in adapters for p in (ad.A, ad.B)]
    try:
        history = _train(model, tuned, params, prompts, kl_texts, steps=int(steps), lr=lr, beta=beta,
                         batch_size=batch_size, kl_batch=kl_batch, seed=seed, max_kl_tokens=max_kl_tokens,
                         progress=progress, desc="LoRA fine-tuning")
    finally:
        for ad in adapters:
            ad.merge()
    clear_model_cache(tuned)
    object.__setattr__(tuned, "finetune_method", "lora")
    settings = {"steps": int(steps), "lr": lr, "beta": beta, "rank": int(rank), "alpha": alpha,
                "modules": list(modules), "n_layers": arch(tuned).n_layers, "batch_size": batch_size,
                "kl_batch": kl_batch, "n_prompts": len(prompts), "n_kl_texts": len(kl_texts),
                "max_kl_tokens": max_kl_tokens,
                "seed": seed, "optimizer": "Adam (no weight decay)"}
    return FinetuneResult(tuned, "lora", history, int(sum(p.numel() for p in params)),
                          time.perf_counter() - t0, settings)


# ----------------------------------------------------------------------------- neuron-restricted variant


def neuron_masks(model: Any, neurons: Any) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor]]:
    """Which weight entries belong to ``neurons``: ``{parameter name: (parameter, bool mask)}``.

    FFN ``ffnL{l}N{i}``: ``down_proj`` column ``i``, ``gate_proj`` and ``up_proj`` row ``i``
    of layer ``l``. Aggregated attention ``attnL{l}H{h}D{j}``: ``o_proj`` column
    ``h * d_head + j``. Names are ``"L{l}.{projection}"``.

    Raises:
        NeuronIdError: an id is malformed or out of range.
        EditError: a positional attention neuron (``...P{p}``), which has no weights of its own.
    """
    ids = resolve_neurons(model, neurons)
    a = arch(model)
    out: dict[str, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    def entry(layer: int, name: str):
        key = f"L{layer}.{name}"
        if key not in out:
            w = _linear(model, layer, name).weight
            out[key] = (w, torch.zeros(w.shape, dtype=torch.bool, device=w.device))
        return out[key][1]

    for n in ids:
        if n.kind == "ffn":
            entry(n.layer, "down_proj")[:, int(n.index)] = True
            entry(n.layer, "gate_proj")[int(n.index), :] = True
            entry(n.layer, "up_proj")[int(n.index), :] = True
        elif n.position is None:
            entry(n.layer, "o_proj")[:, int(n.head) * a.d_head + int(n.dim)] = True
        else:
            raise EditError(f"{n} is a positional attention neuron: it has no weights of its own to fine-tune. "
                            f"Use the aggregated neuron {n.aggregated} instead.")
    return out


def finetune_neurons(model: Any, neurons: Any, prompts: Sequence[str], kl_texts: Sequence[str], *, steps: int,
                     lr: float, beta: float, batch_size: int | None = None, kl_batch: int | None = None,
                     seed: int = 0, max_kl_tokens: int = 64, progress: bool | None = None) -> FinetuneResult:
    """Neuron-restricted fine-tuning (method_spec §6 A5 (ii)) of a copy of ``model``.

    Only the selected neurons' own weight entries (see :func:`neuron_masks`) may change; they
    start from their original values. Same objective and arguments as :func:`finetune_lora`.

    Returns:
        :class:`FinetuneResult` whose ``model`` carries ``edit_neurons`` (the ids).

    Raises:
        EditError: an entry outside the mask changed (a bug guard; cannot happen with Adam and
            exact zero gradients), or a positional attention neuron was given.
    """
    _check_inputs(model, prompts, kl_texts, steps, lr, beta, batch_size, kl_batch)
    t0 = time.perf_counter()
    ids = resolve_neurons(model, neurons)
    if not ids:
        raise ParameterError("finetune_neurons needs at least one neuron.")
    tuned = _copy(model)
    masks = neuron_masks(tuned, ids)
    params, handles = [], []
    for w, m in masks.values():
        w.requires_grad_(True)
        handles.append(w.register_hook(lambda g, m=m: torch.where(m, g, torch.zeros((), dtype=g.dtype, device=g.device))))
        params.append(w)
    try:
        history = _train(model, tuned, params, prompts, kl_texts, steps=int(steps), lr=lr, beta=beta,
                         batch_size=batch_size, kl_batch=kl_batch, seed=seed, max_kl_tokens=max_kl_tokens,
                         progress=progress, desc="neuron fine-tuning")
    finally:
        for h in handles:
            h.remove()
        for w in params:
            w.requires_grad_(False)
            w.grad = None
    orig = neuron_masks(model, ids)
    for key, (w, m) in masks.items():
        if not torch.equal(w.detach()[~m], orig[key][0].detach()[~m]):
            raise EditError(f"Fine-tuning changed weights of {key} outside the selected neurons.")
    clear_model_cache(tuned)
    object.__setattr__(tuned, "finetune_method", "neurons")
    object.__setattr__(tuned, "edit_neurons", [str(n) for n in ids])
    settings = {"steps": int(steps), "lr": lr, "beta": beta, "n_neurons": len(ids),
                "matrices": sorted(masks), "batch_size": batch_size, "kl_batch": kl_batch,
                "n_prompts": len(prompts), "n_kl_texts": len(kl_texts), "max_kl_tokens": max_kl_tokens,
                "seed": seed,
                "optimizer": "Adam (no weight decay), gradient-masked"}
    n_train = int(sum(int(m.sum()) for _, m in masks.values()))
    return FinetuneResult(tuned, "neurons", history, n_train, time.perf_counter() - t0, settings)
