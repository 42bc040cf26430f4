"""Cross-device check: the study's code on a GPU against the same code on the CPU (not a test).

    python bench/gpu_check.py --device cuda --out gpu_out          # default model
    python bench/gpu_check.py --device cuda --model meta-llama/Llama-2-7b-hf --no-cpu --out out7b

Loads the model with :func:`analysis_lib.models.load_model` on ``--device`` (and, unless
``--no-cpu``, a second copy on the CPU), then checks what the tests in ``tests/`` check, on
the device:

a. ``logits``: bridge logits on the device against the same model on the CPU (max |Δ| over the
   real tokens of five prompts, and the top-1 token), and bridge against its own Hugging Face
   module on the device (``tests/test_models.py``: 1e-4).
b. ``attribution``: :func:`analysis_lib.attribution.attribute` (exact top-50 and bottom-50 FFN
   value, attention value and FFN query neurons) on the device against a dense reference on
   the device (every neuron read out through the full vocabulary; the reference of
   ``tests/test_attribution.py``, made device-aware here), with that test's tolerances: every
   reported score within 1e-5 of the dense one, 100 % top-50 recall (ties within 1e-5 of the
   50th excepted), sorted. Also: the slow literal reference
   :func:`analysis_lib.reference.ffn_log_prob_increase` for the top-3 FFN neurons (1e-5, as
   ``tests/test_checks.py``), and the device's neuron lists and scores against the CPU's.
c. ``editing``: :func:`analysis_lib.editing.mask_neurons` changes the logits, the model is
   bit-identical after the ``with`` block (logits and weights), an FFN mask removes exactly its
   neuron's contribution (1e-5), and :func:`~analysis_lib.editing.masked_copy` leaves the
   original bit-identical while giving the masked logits bit for bit (``tests/test_editing.py``).
d. ``capability``: RACE scoring with ``kv_cache=True`` equals ``kv_cache=False`` (1e-4) and
   predicts the known answers; KV-cached greedy decoding equals full-pass greedy decoding
   (``tests/test_capability.py``).
e. ``dataset_attribution``: :func:`analysis_lib.attribution.dataset_attribution` on four
   prompts, device against CPU (same top-20 lists, scores within their certified errors).
f. ``timings``: a forward pass, ``run_with_cache`` and ``attribute`` on the device against the
   same calls on this machine's CPU (all its cores, and ``attribute``'s default 2 threads).

Prints a JSON summary and writes it to ``<out>/gpu_check.json``. Each check records
``passed`` and its numbers; an exception in one check is recorded (``error``) and the others
still run. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from analysis_lib import attribution as at  # noqa: E402
from analysis_lib import capability as cap  # noqa: E402
from analysis_lib import models  # noqa: E402
from analysis_lib.editing import has_position_hooks, mask_neurons, masked_copy  # noqa: E402
from analysis_lib.neurons import NeuronId, hf_layer, unwrap  # noqa: E402
from analysis_lib.reference import ffn_log_prob_increase  # noqa: E402
from analysis_lib.scoring import greedy_generate  # noqa: E402

# tests/test_models.py
PROMPTS = [
    "The nurse is a",
    "The capital of France is",
    "The person who enjoys knitting is a",
    "3+5=",
    "After a long day at the hospital, the surgeon said that",
]
# tests/test_attribution.py
CASES = [
    ("Hello", " world"),
    ("The nurse is a", " woman"),
    ("The capital of France is", " Paris"),
    ("She went to the market and bought", " a"),
    ("After a long day, the surgeon said that", " he"),
]
K = 50
N_QUERY = 30
TOL_ABS = 1e-5
# tests/test_editing.py
EDIT_PROMPTS = ["The nurse is a", "3+5=", "The capital of France is"]
# tests/test_capability.py
RACE_ITEMS = pd.DataFrame(
    {
        "id": ["p1-0", "p1-1", "p2-0"],
        "example_id": ["p1", "p1", "p2"],
        "context": [
            "Paris is the capital of France. Berlin is the capital of Germany.",
            "Paris is the capital of France. Berlin is the capital of Germany.",
            "The cat sat on the mat all afternoon, sleeping in the warm sun.",
        ],
        "question": ["What is the capital of France?", "What is the capital of Germany?", "Where did the cat sit?"],
        "choices": [["Paris", "banana", "a purple umbrella", "seventeen"],
                    ["banana", "Berlin", "a purple umbrella", "seventeen"],
                    ["on the mat", "in the ocean, swimming with whales", "banana", "seventeen"]],
        "label": [0, 1, 0],
    }
)
GREEDY_PROMPTS = ["3+5=", "12+30=", "The capital of France is", "7+1="]
# bench/bench_attribution.py
TIMING_PROMPTS = [
    ("The nurse is a", " woman"),
    ("The capital of France is", " Paris"),
    ("The person who enjoys knitting is a", " woman"),
    ("After a long day at the hospital, the surgeon said that", " he"),
    ("The person whose favorite color is pink is a", " woman"),
    ("3+5=", "8"),
]


# ----------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def logits_of(model, tokens) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens).clone()


def edit_ids(model) -> tuple[str, str]:
    """The neurons of tests/test_editing.py, or same-shaped ones where the model is smaller."""
    a = at.arch(model)
    ffn, attn = "ffnL2N703", "attnL3H4D17"
    try:
        NeuronId.parse(ffn).validate(model)
        NeuronId.parse(attn).validate(model)
        return ffn, attn
    except Exception:
        L = a.n_layers
        return (f"ffnL{min(2, L - 1)}N{703 % a.d_mlp}",
                f"attnL{min(3, L - 1)}H{min(4, a.n_heads - 1)}D{min(17, a.d_head - 1)}")


# ----------------------------------------------------------------------------- the dense reference


def _log_softmax_at(z: torch.Tensor, t: int) -> torch.Tensor:
    mx = z.amax(-1, keepdim=True)
    return z[..., t] - (mx[..., 0] + torch.log(torch.exp(z - mx).sum(-1, dtype=torch.float64)))


def _lp_increase(z0: torch.Tensor, dz: torch.Tensor, t: int) -> torch.Tensor:
    return _log_softmax_at(z0 + dz, t) - _log_softmax_at(z0, t)


def dense_reference(model, cases, chunk: int = 128) -> list[dict]:
    """tests/test_attribution.py's dense reference, with every tensor on the model's device."""
    hf = model.original_model
    dev = next(hf.parameters()).device
    W = hf.lm_head.weight.detach()
    b = hf.lm_head.bias
    b = torch.zeros(W.shape[0], device=dev) if b is None else b.detach()
    g = hf.model.norm.weight.detach()
    L = model.cfg.n_layers
    n_heads, n_kv = model.cfg.n_heads, model.cfg.n_key_value_heads
    dh, dm = model.cfg.d_head, model.cfg.d_mlp
    runs = []
    with torch.inference_mode():
        for prompt, target in cases:
            enc = models.encode(model, prompt)
            _, cache = model.run_with_cache(enc.tokens)
            runs.append(dict(
                t=models.single_token_id(model, target),
                cache={k: v[0] for k, v in cache.items() if any(s in k for s in (
                    "resid_pre", "resid_mid", "mlp.hook_post", "hook_pattern", "attn.hook_v", "ln_final.hook_scale"))},
                T=enc.tokens.shape[1],
            ))
        out = [dict(ffn=torch.zeros(L, dm, device=dev), attn=torch.zeros(L, n_heads, dh, r["T"], device=dev)) for r in runs]
        for l in range(L):
            layer = hf.model.layers[l]
            down = layer.mlp.down_proj.weight.detach()
            o = layer.self_attn.o_proj.weight.detach()
            P_ffn = (down.T * g) @ W.T
            P_attn = (o.T * g) @ W.T
            for r, res in zip(runs, out):
                c, t = r["cache"], r["t"]
                scale = c["ln_final.hook_scale"][-1, 0]
                z0 = (g * c[f"blocks.{l}.hook_resid_mid"][-1] / scale) @ W.T + b
                m = c[f"blocks.{l}.mlp.hook_post"][-1]
                for s in range(0, dm, chunk):
                    dz = m[s : s + chunk, None] * P_ffn[s : s + chunk] / scale
                    res["ffn"][l, s : s + chunk] = _lp_increase(z0, dz, t)
                z0 = (g * c[f"blocks.{l}.hook_resid_pre"][-1] / scale) @ W.T + b
                alpha = c[f"blocks.{l}.attn.hook_pattern"][:, -1, :]
                v = c[f"blocks.{l}.attn.hook_v"]
                T = r["T"]
                for h in range(n_heads):
                    kv = h // (n_heads // n_kv)
                    coef = alpha[h][None, :] * v[:, kv, :].T
                    rows = P_attn[h * dh : (h + 1) * dh]
                    dz = (coef[:, :, None] * rows[:, None, :] / scale).reshape(dh * T, -1)
                    for s in range(0, dh * T, chunk):
                        res["attn"][l, h].view(-1)[s : s + chunk] = _lp_increase(z0, dz[s : s + chunk], t)
        for r, res in zip(runs, out):
            c = r["cache"]
            flat = res["attn"].flatten()
            top = torch.topk(flat, N_QUERY).indices
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


def id_to_flat(n: NeuronId, shape) -> int:
    if n.kind == "ffn":
        return int(np.ravel_multi_index((n.layer, n.index), shape))
    return int(np.ravel_multi_index((n.layer, n.head, n.dim, n.position), shape))


def compare_to_dense(table, ref_scores, id_of, side) -> dict:
    """tests/test_attribution.py::_check as numbers: max |error|, top-K recall, order."""
    rows = table[table.side == side]
    flat = ref_scores.flatten().double()
    order = torch.sort(flat, descending=(side == "top")).indices
    ref_ids = [id_of(int(i)) for i in order[: K + 5]]
    ref_vals = flat[order[: K + 5]]
    errs = [abs(float(flat[id_to_flat(n, ref_scores.shape)]) - s) for n, s in zip(rows.neuron, rows.score)]
    kth = float(ref_vals[K - 1])
    reported = set(str(n) for n in rows.neuron)
    need = [nid for nid, val in zip(ref_ids[:K], ref_vals[:K].tolist()) if abs(val - kth) > TOL_ABS]
    missing = [nid for nid in need if nid not in reported]
    sc = rows.score.to_numpy()
    ordered = bool(np.all(np.diff(sc) <= 1e-12) if side == "top" else np.all(np.diff(sc) >= -1e-12))
    return {
        "n": int(len(rows)),
        "max_abs_error": float(max(errs)) if errs else math.nan,
        "recall": (len(need) - len(missing)) / len(need) if need else 1.0,
        "missing": missing[:5],
        "sorted": ordered,
    }


# ----------------------------------------------------------------------------- the checks


def check_logits(model, ref, report) -> dict:
    enc = models.encode(model, PROMPTS)
    got = logits_of(model, enc.tokens)
    with torch.inference_mode():
        hf_logits = model.original_model(input_ids=enc.tokens).logits
    per_prompt, bridge_hf = [], []
    top1_same = True
    want = None
    if ref is not None:
        enc_ref = models.encode(ref, PROMPTS)
        want = logits_of(ref, enc_ref.tokens)
        assert torch.equal(enc_ref.tokens.cpu(), enc.tokens.cpu())
    for i, n in enumerate(enc.lengths.tolist()):
        bridge_hf.append((got[i, :n] - hf_logits[i, :n]).abs().max().item())
        if want is not None:
            a, b = got[i, :n].float().cpu(), want[i, :n].float()
            per_prompt.append({"prompt": PROMPTS[i], "max_abs_diff": (a - b).abs().max().item(),
                               "max_abs_logit": b.abs().max().item()})
            top1_same &= bool(torch.equal(a.argmax(-1), b.argmax(-1)))
    res = {"bridge_vs_hf_on_device_max_abs": max(bridge_hf), "tolerance_bridge_vs_hf": 1e-4}
    ok = max(bridge_hf) <= 1e-4
    if want is not None:
        worst = max(p["max_abs_diff"] for p in per_prompt)
        res.update(device_vs_cpu_max_abs=worst, per_prompt=per_prompt, top1_same_all_positions=top1_same,
                   tolerance_device_vs_cpu=1e-3)
        ok = ok and worst <= 1e-3 and top1_same
    res["passed"] = bool(ok)
    return res


def check_attribution(model, ref, report, dense_chunk: int) -> dict:
    t0 = time.perf_counter()
    fast = [at.attribute(model, p, t, top_k=K, bottom_k=K) for p, t in CASES]
    t_fast = time.perf_counter() - t0
    sync(str(model.cfg.device))
    t0 = time.perf_counter()
    dense = dense_reference(model, CASES, chunk=dense_chunk)
    sync(str(model.cfg.device))
    t_dense = time.perf_counter() - t0
    per_case = []
    worst_err, worst_recall, all_sorted = 0.0, 1.0, True
    for (prompt, target), res, d in zip(CASES, fast, dense):
        L, dm = d["ffn"].shape
        shape_a = d["attn"].shape

        def ffn_id(ix, L=L, dm=dm):
            l, i = np.unravel_index(ix, (L, dm))
            return str(NeuronId("ffn", layer=int(l), index=int(i)))

        def attn_id(ix, shape_a=shape_a):
            l, h, j, p = np.unravel_index(ix, shape_a)
            return str(NeuronId("attn", layer=int(l), head=int(h), dim=int(j), position=int(p)))

        row = {"prompt": prompt, "target": target, "target_id_matches": res.target_id == d["t"]}
        for kind, scores, id_of in (("ffn_value", d["ffn"], ffn_id), ("attn_value", d["attn"], attn_id),
                                    ("ffn_query", d["query"], ffn_id)):
            for side in ("top", "bottom"):
                c = compare_to_dense(res.tables[kind], scores, id_of, side)
                row[f"{kind}_{side}"] = c
                worst_err = max(worst_err, c["max_abs_error"])
                worst_recall = min(worst_recall, c["recall"])
                all_sorted &= c["sorted"] and c["n"] == K
        per_case.append(row)
    # the slow literal reference (tests/test_checks.py)
    ref_errs = []
    for prompt, target in CASES:
        top = at.attribute(model, prompt, target, top_k=3, kinds=("ffn_value",)).top("ffn_value", 3)
        for _, r in top.iterrows():
            want = ffn_log_prob_increase(model, prompt, target, r.neuron.layer, r.neuron.index)
            ref_errs.append(abs(r.score - want))
    out = {
        "tolerance_abs": TOL_ABS, "k": K,
        "max_abs_error_vs_dense": worst_err,
        "min_recall_vs_dense": worst_recall,
        "all_sorted_and_complete": all_sorted,
        "all_targets_match": all(r["target_id_matches"] for r in per_case),
        "reference_py_top3_ffn_max_abs_error": max(ref_errs),
        "seconds_attribute_5_prompts": round(t_fast, 3),
        "seconds_dense_reference_5_prompts": round(t_dense, 3),
        "per_case": per_case,
    }
    ok = worst_err <= TOL_ABS and worst_recall == 1.0 and all_sorted and out["all_targets_match"] \
        and max(ref_errs) <= TOL_ABS
    if ref is not None:  # the same neurons on the CPU
        cmp = []
        for (prompt, target), res in zip(CASES, fast):
            rc = at.attribute(ref, prompt, target, top_k=K, bottom_k=K)
            for kind in at.KINDS:
                for side in ("top", "bottom"):
                    a = res.tables[kind][res.tables[kind].side == side]
                    b = rc.tables[kind][rc.tables[kind].side == side]
                    sa, sb = set(a.id), set(b.id)
                    common = sorted(sa & sb)
                    da = dict(zip(a.id, a.score))
                    db = dict(zip(b.id, b.score))
                    cmp.append({"prompt": prompt, "kind": kind, "side": side,
                                "same_set": sa == sb, "overlap": len(common) / max(1, len(sb)),
                                "max_abs_score_diff": max((abs(da[i] - db[i]) for i in common), default=0.0)})
        out["device_vs_cpu"] = {
            "lists_identical": all(c["same_set"] for c in cmp),
            "min_overlap": min(c["overlap"] for c in cmp),
            "max_abs_score_diff": max(c["max_abs_score_diff"] for c in cmp),
            "differing": [c for c in cmp if not c["same_set"]][:10],
        }
    out["passed"] = bool(ok)
    return out


def _weights(model, layer):
    lay = hf_layer(model, layer)
    attn, mlp = unwrap(lay.self_attn), unwrap(lay.mlp)
    return {name: unwrap(getattr(mod, name)).weight.detach().clone()
            for mod, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                               (mlp, ("gate_proj", "up_proj", "down_proj")))
            for name in names}


def check_editing(model, report) -> dict:
    FFN, ATTN = edit_ids(model)
    attn_pos = f"{ATTN}P0"
    enc = models.encode(model, EDIT_PROMPTS)
    before = logits_of(model, enc.tokens)
    again = logits_of(model, enc.tokens)
    nf, na = NeuronId.parse(FFN), NeuronId.parse(ATTN)
    saved = {l: _weights(model, l) for l in sorted({nf.layer, na.layer})}
    with mask_neurons(model, [FFN, ATTN, attn_pos]) as ids:
        inside = logits_of(model, enc.tokens)
    after = logits_of(model, enc.tokens)
    weights_same = all(torch.equal(_weights(model, l)[k], w[k]) for l, w in saved.items() for k in w)
    res = {
        "neurons": [str(i) for i in ids],
        "repeat_forward_bit_identical": bool(torch.equal(before, again)),
        "masked_max_abs_change": (inside - before).abs().max().item(),
        "restored_bit_identical": bool(torch.equal(after, before)),
        "weights_restored_bit_identical": bool(weights_same),
        "no_position_hooks_left": not has_position_hooks(model),
    }
    # an FFN mask removes exactly m_i * w_i from the MLP output (tests/test_editing.py)
    layer, i = nf.layer, nf.index
    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out"]
    with torch.inference_mode():
        _, clean = model.run_with_cache(enc.tokens, names_filter=names)
        with mask_neurons(model, [nf]):
            _, edited = model.run_with_cache(enc.tokens, names_filter=names)
    m_i = clean[names[0]][..., i]
    w_i = unwrap(hf_layer(model, layer).mlp).down_proj.weight[:, i].detach()
    expected = clean[names[1]] - m_i[..., None] * w_i
    err = (edited[names[1]] - expected).abs().max().item()
    scale = clean[names[1]].abs().max().item()
    res["ffn_mask_contribution_max_abs_error"] = err
    res["mlp_out_max_abs"] = scale
    res["ffn_mask_contribution_error_in_float32_ulps_of_max"] = err / float(np.spacing(np.float32(scale)))
    # tests/test_editing.py asks for 1e-5 absolute; the MLP output reaches several hundred at the
    # start token, where one float32 ulp is 3e-5, so the bound here is 1e-5 relative to it
    res["ffn_mask_contribution_tolerance"] = 1e-5 * max(1.0, scale)
    # masked_copy
    copy_ = masked_copy(model, [FFN, ATTN, attn_pos])
    try:
        orig_after_copy = logits_of(model, enc.tokens)
        copy_logits = logits_of(copy_, enc.tokens)
        res["masked_copy_original_bit_identical"] = bool(torch.equal(orig_after_copy, before))
        res["masked_copy_equals_masked_bit_identical"] = bool(torch.equal(copy_logits, inside))
        res["masked_copy_vs_masked_max_abs"] = (copy_logits - inside).abs().max().item()
        res["copy_device"] = str(next(copy_.original_model.parameters()).device)
    finally:
        del copy_
    res["passed"] = bool(
        res["masked_max_abs_change"] > 1e-4 and res["restored_bit_identical"] and res["weights_restored_bit_identical"]
        and res["no_position_hooks_left"] and err <= res["ffn_mask_contribution_tolerance"]
        and res["masked_copy_original_bit_identical"] and res["masked_copy_equals_masked_bit_identical"]
    )
    return res


def check_capability(model, ref, report, expect_known: bool) -> dict:
    cols = [f"score_{j}" for j in range(4)]
    cached = cap.race_task(model, items=RACE_ITEMS, kv_cache=True)
    full = cap.race_task(model, items=RACE_ITEMS, kv_cache=False)
    diff = float(np.abs(cached.records[cols].to_numpy() - full.records[cols].to_numpy()).max())
    g_cached = cap._greedy_cached(model, GREEDY_PROMPTS, 4, batch_size=2)
    g_full = greedy_generate(model, GREEDY_PROMPTS, max_new_tokens=4)
    res = {
        "race_kv_cache_vs_full_max_abs": diff, "tolerance": 1e-4,
        "race_pred_cached": cached.records["pred"].tolist(), "race_pred_full": full.records["pred"].tolist(),
        "race_value": cached.summary["value"],
        "greedy_cached": g_cached, "greedy_full": g_full, "greedy_equal": g_cached == g_full,
    }
    ok = diff <= 1e-4 and res["greedy_equal"] and res["race_pred_cached"] == res["race_pred_full"]
    if expect_known:
        ok = ok and res["race_pred_cached"] == [0, 1, 0] and res["race_value"] == 1.0
    if ref is not None:
        on_cpu = cap.race_task(ref, items=RACE_ITEMS, kv_cache=True)
        res["race_device_vs_cpu_max_abs"] = float(np.abs(cached.records[cols].to_numpy() - on_cpu.records[cols].to_numpy()).max())
        res["greedy_cpu"] = cap._greedy_cached(ref, GREEDY_PROMPTS, 4, batch_size=2)
        res["greedy_device_equals_cpu"] = res["greedy_cpu"] == g_cached
        ok = ok and res["race_device_vs_cpu_max_abs"] <= 1e-3
    res["passed"] = bool(ok)
    return res


def check_dataset_attribution(model, ref, report) -> dict:
    cases = CASES[1:]
    args = ([p for p, _ in cases], [t for _, t in cases])
    ds = at.dataset_attribution(model, *args, top_k=20, progress=False)
    res = {"kinds": list(ds.tables), "seconds_device": round(ds.seconds["total"], 3)}
    ok = all(len(df) == 20 for df in ds.tables.values())
    if ref is not None:
        dc = at.dataset_attribution(ref, *args, top_k=20, progress=False)
        res["seconds_cpu"] = round(dc.seconds["total"], 3)
        per_kind = {}
        for kind, df in ds.tables.items():
            other = dc.tables[kind]
            a = dict(zip(df.id, df.score))
            b = dict(zip(other.id, other.score))
            ea = dict(zip(df.id, df.error))
            eb = dict(zip(other.id, other.error))
            common = set(a) & set(b)
            gap = max((abs(a[i] - b[i]) - ea[i] - eb[i] for i in common), default=0.0)
            per_kind[kind] = {"same_set": set(a) == set(b), "overlap": len(common) / max(1, len(b)),
                              "max_abs_score_diff": max((abs(a[i] - b[i]) for i in common), default=0.0),
                              "max_diff_beyond_errors": gap}
            ok = ok and per_kind[kind]["overlap"] >= 0.9 and gap <= 4 * TOL_ABS
        res["device_vs_cpu"] = per_kind
        for i, (x, y) in enumerate(zip(ds.per_prompt_topk["ffn_value"], dc.per_prompt_topk["ffn_value"])):
            res.setdefault("per_prompt_ffn_top20_identical", []).append([str(n) for n in x] == [str(n) for n in y])
    res["passed"] = bool(ok)
    return res


def measure_timings(model, ref, repeats: int, cpu_threads: int) -> dict:
    dev = str(model.cfg.device)
    out: dict = {"repeats": repeats, "statistic": "median seconds after one warm-up"}

    def fwd_fn(m, toks):
        def f():
            with torch.inference_mode():
                m(toks)
        return f

    def hf_fn(m, toks):
        def f():
            with torch.inference_mode():
                m.original_model(input_ids=toks)
        return f

    def cache_fn(m, toks):
        def f():
            with torch.inference_mode():
                m.run_with_cache(toks)
        return f

    batch = [p for p, _ in TIMING_PROMPTS] * 11  # 66 prompts
    rows = []
    targets = [(model, dev, None)]
    if ref is not None:
        targets += [(ref, "cpu", cpu_threads), (ref, "cpu", at.DEFAULT_THREADS)]
    for m, d, threads in targets:
        label = d if threads is None else f"cpu_{threads}threads"
        old = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            one = models.encode(m, "The nurse is a").tokens
            many = models.encode(m, batch).tokens
            row = {"where": label,
                   "forward_1_prompt": statistics.median(timed(fwd_fn(m, one), d, repeats)),
                   "forward_66_prompts": statistics.median(timed(fwd_fn(m, many), d, repeats)),
                   "hf_forward_1_prompt": statistics.median(timed(hf_fn(m, one), d, repeats)),
                   "hf_forward_66_prompts": statistics.median(timed(hf_fn(m, many), d, repeats)),
                   "run_with_cache_1_prompt": statistics.median(timed(cache_fn(m, one), d, repeats))}
            per, split = [], []
            for p, t in TIMING_PROMPTS:
                ts = timed(lambda p=p, t=t: at.attribute(m, p, t, top_k=K, bottom_k=K, threads=threads), d, repeats)
                per.append(statistics.median(ts))
                split.append(at.attribute(m, p, t, top_k=K, bottom_k=K, threads=threads).seconds)
            row["attribute_top50_bottom50_median_over_prompts"] = statistics.median(per)
            row["attribute_per_prompt"] = per
            row["attribute_forward_median"] = statistics.median(x["forward"] for x in split)
            row["attribute_scoring_median"] = statistics.median(x["scoring"] for x in split)
            rows.append(row)
        finally:
            torch.set_num_threads(old)
    out["rows"] = rows
    if len(rows) >= 2:
        g, c = rows[0], rows[1]
        out["speedup_device_vs_cpu_all_threads"] = {
            k: c[k] / g[k] for k in ("forward_1_prompt", "forward_66_prompts", "hf_forward_1_prompt",
                                     "hf_forward_66_prompts", "run_with_cache_1_prompt",
                                     "attribute_top50_bottom50_median_over_prompts", "attribute_scoring_median")}
    return out


# ----------------------------------------------------------------------------- main


def environment(device: str) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        import transformer_lens

        env["transformer_lens"] = getattr(transformer_lens, "__version__", None)
        if env["transformer_lens"] is None:
            import importlib.metadata

            env["transformer_lens"] = importlib.metadata.version("transformer-lens")
    except Exception as exc:  # pragma: no cover
        env["transformer_lens"] = repr(exc)
    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   float32_matmul_precision=torch.get_float32_matmul_precision())
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=models.DEFAULT_MODEL, help="built-in name, HF id or local HF directory")
    ap.add_argument("--out", default="gpu_check_out", help="directory for gpu_check.json")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU copy (and every device-vs-CPU comparison)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    ap.add_argument("--cpu-threads", type=int, default=os.cpu_count(), help="CPU threads for the CPU side")
    ap.add_argument("--dense-chunk", type=int, default=None, help="rows per dense-reference readout (default 512 on GPU, 128 on CPU)")
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: logits,attribution,editing,capability,dataset,timings")
    args = ap.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / "gpu_check.json"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    torch.set_num_threads(args.cpu_threads)
    torch.manual_seed(0)
    summary: dict = {"argv": sys.argv[1:], "device": args.device, "model": args.model,
                     "environment": environment(args.device), "checks": {}}

    def save():
        out_file.write_text(json.dumps(summary, indent=1, default=str))

    def report(msg):
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t0 = time.perf_counter()
    model = models.load_model(args.model, device=args.device, dtype=torch.float32)
    summary["load_device_seconds"] = round(time.perf_counter() - t0, 2)
    summary["load_info"] = {"source": model.load_info.source, "path": model.load_info.path, "sha256": model.load_info.sha256}
    summary["model_device"] = str(next(model.original_model.parameters()).device)
    summary["cfg_device"] = str(model.cfg.device)
    report(f"model on {summary['model_device']} in {summary['load_device_seconds']} s")
    ref = None
    if not args.no_cpu:
        t0 = time.perf_counter()
        ref = models.load_model(args.model, device="cpu", dtype=torch.float32)
        summary["load_cpu_seconds"] = round(time.perf_counter() - t0, 2)
    save()
    expect_known = args.model == models.DEFAULT_MODEL
    dense_chunk = args.dense_chunk or (512 if args.device.startswith("cuda") else 128)
    plan = [
        ("logits", lambda: check_logits(model, ref, report)),
        ("attribution", lambda: check_attribution(model, ref, report, dense_chunk)),
        ("editing", lambda: check_editing(model, report)),
        ("capability", lambda: check_capability(model, ref, report, expect_known)),
        ("dataset", lambda: check_dataset_attribution(model, ref, report)),
        ("timings", lambda: measure_timings(model, ref, args.repeats, args.cpu_threads)),
    ]
    for name, fn in plan:
        if name in skip:
            continue
        report(f"{name} ...")
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:
            res = {"passed": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(res["traceback"], file=sys.stderr, flush=True)
        res["check_seconds"] = round(time.perf_counter() - t0, 2)
        summary["checks"][name] = res
        report(f"{name}: passed={res.get('passed', '-')} ({res['check_seconds']} s)")
        save()
    failed = [n for n, r in summary["checks"].items() if r.get("passed") is False]
    summary["failed"] = failed
    summary["all_passed"] = not failed
    save()
    print(json.dumps(summary, indent=1, default=str))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
