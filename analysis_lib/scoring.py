"""Batched scoring with a loaded model: next-token log-probabilities and continuations.

Every function here batches prompts (sorted by length, right-padded) and reads only the
positions it needs, so scoring 500 prompts costs about as much as plain batched forward
passes over them. All functions run under ``torch.inference_mode()`` and go through the
model's modules, so hooks and weight edits applied to the model are honoured.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .errors import StudyError
from .models import check_finite, encode, single_token_id, token_ids


def final_hidden(model, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """Residual stream after the final norm (the input of the unembedding)."""
    return model.original_model.model(input_ids=tokens).last_hidden_state


def unembed(model, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Logits from final hidden states; NaN or infinite logits are refused (every scorer,
    benchmark, capability task and edit evaluation reads its logits here). Not to be confused
    with :func:`analysis_lib.neurons.unembed`, which returns the unembedding's weights."""
    logits = model.original_model.lm_head(hidden)
    cap = getattr(model.original_model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    check_finite(logits.detach(), model, "the logits (scoring, benchmarks, capability or edit evaluation)")
    return logits


def _batches(order: np.ndarray, batch_size: int):
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def next_token_logprobs(
    model,
    prompts: Sequence[str],
    target_ids: Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> Float[Tensor, "n k"]:
    """Log-probabilities of the next token after each prompt.

    Args:
        model: a loaded bridge.
        prompts: texts; the model's start token is prepended.
        target_ids: token ids to return; ``None`` returns the whole vocabulary.
        batch_size: prompts per forward pass.
        progress: show a tqdm bar.

    Returns:
        ``[len(prompts), len(target_ids)]`` (or ``[n, vocab]``) float32 log-probabilities,
        normalised over the full vocabulary.
    """
    if len(prompts) == 0:
        raise StudyError("No prompts to score.")
    lengths = np.array([len(token_ids(model, p)) for p in prompts])
    order = np.argsort(-lengths, kind="stable")
    out: Tensor | None = None
    with torch.inference_mode():
        for idx in tqdm(list(_batches(order, batch_size)), disable=not progress, desc="scoring"):
            enc = encode(model, [prompts[i] for i in idx])
            hidden = final_hidden(model, enc.tokens)
            last = hidden[torch.arange(len(idx)), enc.last_index]
            lp = unembed(model, last).float().log_softmax(-1)
            if target_ids is not None:
                lp = lp[:, list(target_ids)]
            if out is None:
                out = torch.empty((len(prompts), lp.shape[1]), dtype=torch.float32)
            out[torch.as_tensor(idx)] = lp.cpu()
    assert out is not None
    check_finite(out, model, "next-token scoring")
    return out


def target_logprobs(model, prompts: Sequence[str], targets: Sequence[str], **kwargs) -> Float[Tensor, "n k"]:
    """Log-probabilities of single-token ``targets`` (e.g. :data:`analysis_lib.commonwords.GENDER_TARGETS`)
    after each prompt.

    Raises:
        TokenizationError: a target is not a single token for this model.
    """
    ids = [single_token_id(model, t) for t in targets]
    return next_token_logprobs(model, prompts, ids, **kwargs)


def continuation_logprobs(
    model,
    contexts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced log-probability of each continuation given its context.

    The context is tokenized on its own and the continuation's tokens are appended, so
    the continuation's log-probability does not depend on how the two would merge.
    An empty context means the continuation follows the start token alone (a whole
    sentence's likelihood); that needs a start token.

    Returns:
        ``(sum_logprob, n_tokens)``, two arrays of length ``len(contexts)``.
    """
    if len(contexts) != len(continuations):
        raise StudyError(f"{len(contexts)} contexts but {len(continuations)} continuations.")
    if len(contexts) == 0:
        raise StudyError("Nothing to score.")
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    rows, starts = [], []
    for c, x in zip(contexts, continuations):
        ctx = prefix + (token_ids(model, c) if c else [])
        cont = token_ids(model, x)
        if not ctx:
            raise StudyError("An empty context needs a start token to condition on.")
        if not cont:
            raise StudyError(f"Continuation {x!r} has no tokens.")
        rows.append(ctx + cont)
        starts.append(len(ctx))
    lengths = np.array([len(r) for r in rows])
    order = np.argsort(-lengths, kind="stable")
    total = np.zeros(len(rows))
    count = np.array([len(r) - s for r, s in zip(rows, starts)])
    pad = model.tokenizer.pad_token_id or 0
    device = model.cfg.device or "cpu"
    with torch.inference_mode():
        for idx in tqdm(list(_batches(order, batch_size)), disable=not progress, desc="scoring"):
            width = int(lengths[idx].max())
            toks = torch.full((len(idx), width), pad, dtype=torch.long)
            for b, i in enumerate(idx):
                toks[b, : lengths[i]] = torch.tensor(rows[i])
            toks = toks.to(device)
            hidden = final_hidden(model, toks)
            for b, i in enumerate(idx):
                s, n = starts[i], lengths[i]
                lp = unembed(model, hidden[b, s - 1 : n - 1]).float().log_softmax(-1)
                tgt = toks[b, s:n]
                total[i] = lp.gather(-1, tgt[:, None]).sum().item()
    check_finite(total, model, "continuation scoring")
    return total, count


def multiple_choice_predictions(
    model,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    normalize: str = "length",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick an answer per item by (length-normalised) log-likelihood of each choice.

    Args:
        contexts: one context per item (e.g. ``"Question: ...\\nAnswer:"``).
        choices: the answer strings of each item (each is scored as a continuation).
        normalize: ``"length"`` divides by the number of tokens (lm-eval-harness's
            ``acc_norm`` uses characters; tokens are used here and stated in the chapter),
            ``"none"`` uses the summed log-probability.

    Returns:
        ``(predictions, scores)``: the argmax index per item and an object array of scores.
    """
    if normalize not in ("length", "none"):
        raise StudyError(f"normalize must be 'length' or 'none', not {normalize!r}.")
    flat_ctx, flat_cont, owner = [], [], []
    for i, (c, opts) in enumerate(zip(contexts, choices)):
        for o in opts:
            flat_ctx.append(c)
            flat_cont.append(o)
            owner.append(i)
    total, count = continuation_logprobs(model, flat_ctx, flat_cont, batch_size=batch_size, progress=progress)
    value = total / count if normalize == "length" else total
    scores = np.empty(len(contexts), dtype=object)
    owner_arr = np.array(owner)
    for i in range(len(contexts)):
        scores[i] = value[owner_arr == i]
    preds = np.array([int(np.argmax(s)) for s in scores])
    return preds, scores


def greedy_generate(
    model, prompts: Sequence[str], *, max_new_tokens: int = 3, batch_size: int = 64, progress: bool = False
) -> list[str]:
    """Greedy continuation of each prompt by ``max_new_tokens`` tokens, decoded as text.

    Generated ids are appended to the prompt's ids (never re-tokenized), so the result is
    exactly the model's greedy path.
    """
    prefix = [model.start_token_id] if model.start_token_id is not None else []
    rows = [prefix + token_ids(model, p) for p in prompts]
    n0 = [len(r) for r in rows]
    pad = model.tokenizer.pad_token_id or 0
    device = model.cfg.device or "cpu"
    with torch.inference_mode():
        for _ in tqdm(range(max_new_tokens), disable=not progress, desc="generating"):
            lengths = np.array([len(r) for r in rows])
            order = np.argsort(-lengths, kind="stable")
            for idx in _batches(order, batch_size):
                width = int(lengths[idx].max())
                toks = torch.full((len(idx), width), pad, dtype=torch.long)
                for b, i in enumerate(idx):
                    toks[b, : lengths[i]] = torch.tensor(rows[i])
                hidden = final_hidden(model, toks.to(device))
                last = hidden[torch.arange(len(idx)), torch.as_tensor(lengths[idx] - 1)]
                nxt = unembed(model, last).argmax(-1).tolist()
                for b, i in enumerate(idx):
                    rows[i] = rows[i] + [nxt[b]]
    return [model.tokenizer.decode(r[n:]) for r, n in zip(rows, n0)]
