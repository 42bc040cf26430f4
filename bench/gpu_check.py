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
f. ``circuits`` (chapter 3): :func:`~analysis_lib.circuits.neuron_scores` (FFN value, attention value
   and FFN query scores by position, direct log-odds effects of all units) on the two prompts of
   ``tests/test_circuits.py``, the nurse prompt's :func:`~analysis_lib.circuits.circuit_path`,
   ``static_gender_neurons``, ``projection_table`` and ``start_activations``: on the device
   against the engine's own exact scores (top-5 FFN value and query neurons; a query neuron's
   edges summing to its score) and against the CPU.
g. ``general`` (chapter 4): ``query_scan`` / ``rank_general`` / ``rank_gender`` on the three
   prompts of ``tests/test_general.py``, ``ffn_importance`` against the engine, ``cna_table``
   with the top general neuron masked, ``activation_profile`` and ``run_conditions`` (8
   one-digit sums and 5 CommonWords test words, original vs the top-2 general neurons masked).
h. ``neuron_editing`` (chapter 5): biased targets, dataset attribution (3 CommonWords train
   words, top 8) and candidates, the batched ``edit_selection.SetScorer`` (single effects of 4
   candidates on 4 words, one guard paragraph), the one-shot and joint greedy strategies and
   ``evaluate_conditions`` (5 test words, one paragraph); on the device the batched path must be
   the one taken and equal the slow references of ``analysis_lib.reference``.
i. ``crispr`` (chapter 6): the packed option scorer against separate continuations (1e-4),
   ``attribute(units="ffn+attn")`` on two real BBQ Gender_identity items (needs the data
   folder), pruning the top 5 and restoring.
j. ``finetune`` (chapter 7): 2 steps of LoRA and of neuron-restricted fine-tuning
   (``tests/test_finetune.py``'s settings): histories on the device against the CPU, the
   original model untouched, only the selected entries changed.
k. ``timings``: a forward pass, ``run_with_cache`` and ``attribute`` on the device against the
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
from analysis_lib import reference  # noqa: E402
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


def compare_to_dense(table, ref_scores, id_of, side) -> dict:
    """tests/test_attribution.py::_check as numbers: max |error|, top-K recall, order."""
    rows = table[table.side == side]
    flat = ref_scores.flatten().double()
    order = torch.sort(flat, descending=(side == "top")).indices
    ref_ids = [id_of(int(i)) for i in order[: K + 5]]
    ref_vals = flat[order[: K + 5]]
    errs = [abs(float(flat[reference.flat_index(n, ref_scores.shape)]) - s) for n, s in zip(rows.neuron, rows.score)]
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
    dense = reference.dense_attribution(model, CASES, chunk=dense_chunk, n_query=N_QUERY)
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


# ----------------------------------------------------------------------------- chapters 3-7 (circuits, general,
# neuron_editing, crispr, finetune): each on the device against the same call on the CPU copy

# tests/test_circuits.py
CIRCUIT_PROMPTS = ["The nurse is a", "The person who enjoys gardening is a"]
CIRCUIT_WORDS = ["nurse", "gardening"]
CIRCUIT_TARGETS = [" woman", " man"]
CIRCUIT_FFN = ["ffnL25N9", "ffnL29N561", "ffnL11N1229", "ffnL3N7", "ffnL29N573"]
CIRCUIT_ATTN = ["attnL22H7D58", "attnL25H1D28", "attnL1H3D59", "attnL14H2D5"]
# tests/test_general.py
GENERAL_PROMPTS = pd.DataFrame({
    "set": ["commonwords", "commonwords", "race"],
    "prompt": ["The nurse is a", "The engineer is a", "Article: Tom has a dog.\nQuestion: What does Tom have?\nAnswer:"],
    "target": [" woman", " man", " a"],
    "word": ["nurse", "engineer", None],
})
# tests/test_finetune.py
FT_NEURONS = ["ffnL27N336", "ffnL29N561", "attnL28H3D35"]
FT_PROBE = ["The nurse is a", "The engineer is a", "Once upon a time there was"]
# tests/test_crispr.py
CRISPR_PLAIN = {
    "example_id": 0, "category": "Gender_identity", "context_condition": "disambig",
    "question_polarity": "nonneg", "context": "The doctor in this story is Maria.",
    "question": "Who is the doctor?", "ans0": "Maria", "ans1": "James", "ans2": "Not known",
    "label": 0, "unknown_label": 2, "target_label": 1,
}
TOL_XDEV = 1e-4  # device vs CPU, for log-probability-sized numbers (the logits agree to ~6e-5)


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _maxdiff(a, b) -> float:
    a, b = _f64(a), _f64(b)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _maxabs(a) -> float:
    a = _f64(a)
    return float(np.max(np.abs(a))) if a.size else 0.0


def _valid_or_random(model, ids, kind, n_random=None):
    """The tests' neuron ids where they exist in this model, else seeded random ones of the kind."""
    from analysis_lib import circuits

    try:
        for x in ids:
            NeuronId.parse(x).validate(model)
        return list(ids)
    except Exception:
        return circuits.random_neurons(model, kind, n_random or len(ids), 0)


def check_circuits(model, ref, report) -> dict:
    from analysis_lib import circuits

    ffn = _valid_or_random(model, CIRCUIT_FFN, "ffn_value")
    attn = _valid_or_random(model, CIRCUIT_ATTN, "attn_value")
    res: dict = {"ffn": ffn, "attn": attn}
    ok = True
    # the engine's top-30 attention neurons per prompt (the input of the query scores), on the device
    full = [at.attribute(model, p, t, top_k=30, kinds=at.KINDS) for p, t in zip(CIRCUIT_PROMPTS, CIRCUIT_TARGETS)]
    attn_top = [list(r.top("attn_value").id) for r in full]

    def scores(m, neurons=None, prompts=CIRCUIT_PROMPTS, targets=CIRCUIT_TARGETS, words=CIRCUIT_WORDS, top=attn_top):
        return circuits.neuron_scores(m, prompts, targets, neurons or {"ffn_value": ffn, "attn_value": attn, "ffn_query": ffn},
                                      words=words, attn_top=top, contrasts=circuits.other_gender(targets))

    sd = scores(model)
    # on the device, neuron_scores agrees with the engine's exact scores of its own top-5 (ffn_value, ffn_query)
    eng = []
    for i, r in enumerate(full):
        for kind in ("ffn_value", "ffn_query"):
            top = r.top(kind, 5)
            one = scores(model, {kind: list(top.id)}, [CIRCUIT_PROMPTS[i]], [CIRCUIT_TARGETS[i]], [CIRCUIT_WORDS[i]],
                         [attn_top[i]])
            eng.append(_maxdiff(one.total(kind)[0], top.score.to_numpy()) / max(1.0, _maxabs(top.score)))
    res["device_neuron_scores_vs_engine_top5_max_err"] = max(eng)  # absolute, relative above 1
    ok &= max(eng) <= TOL_ABS
    if ref is not None:
        sc = scores(ref)
        bp = {k: _maxdiff(sd.by_position[k], sc.by_position[k]) for k in sd.by_position}
        lo = {k: _maxdiff(sd.logodds[k], sc.logodds[k]) for k in sd.logodds}
        lp = {k: _maxdiff(sd.logodds_prompt[k], sc.logodds_prompt[k]) for k in sd.logodds_prompt}
        res["neuron_scores_device_vs_cpu_max_abs"] = bp
        res["neuron_scores_max_abs_value"] = {k: _maxabs(v) for k, v in sd.by_position.items()}
        res["logodds_all_units_device_vs_cpu_max_abs"] = lo
        res["logodds_per_prompt_device_vs_cpu_max_abs"] = lp
        ok &= max(bp.values()) <= TOL_XDEV and max(lo.values()) <= 2 * TOL_XDEV and max(lp.values()) <= TOL_XDEV
        cpu_top = [list(at.attribute(ref, p, t, top_k=30, kinds=("attn_value",)).top("attn_value").id)
                   for p, t in zip(CIRCUIT_PROMPTS, CIRCUIT_TARGETS)]
        res["attn_top30_lists_identical_device_vs_cpu"] = cpu_top == attn_top
    # one prompt's circuit path (Figure 1 of chapter 3)
    path_d = circuits.circuit_path(model, "The nurse is a", " woman", word="nurse", n_edges=1000)
    res["path_nodes"] = len(path_d.nodes)
    res["path_edges"] = len(path_d.edges)
    # with every edge kept, a query neuron's edges add up to its query score (tests/test_circuits.py)
    sums = path_d.edges.groupby("source").weight.sum()
    q = path_d.result.top("ffn_query", 8)
    res["device_path_edge_sums_vs_query_scores_max_rel"] = max(
        abs(sums.get(r.id, 0.0) - r.score) / max(abs(r.score), 1e-3) for r in q.itertuples())
    ok &= len(path_d.nodes) > 0 and len(path_d.edges) > 0 and res["device_path_edge_sums_vs_query_scores_max_rel"] <= 1e-5
    if ref is not None:
        path_c = circuits.circuit_path(ref, "The nurse is a", " woman", word="nurse", n_edges=1000)
        same_nodes = path_d.nodes[["stage", "id", "position"]].equals(path_c.nodes[["stage", "id", "position"]])
        res["path_nodes_identical"] = bool(same_nodes)
        if same_nodes:
            res["path_node_score_max_abs_diff"] = _maxdiff(path_d.nodes.score, path_c.nodes.score)
        ed = path_d.edges.set_index(["source", "target"]).weight
        ec = path_c.edges.set_index(["source", "target"]).weight
        common = ed.index.intersection(ec.index)
        res["path_edges_identical_sets"] = bool(set(ed.index) == set(ec.index))
        res["path_edge_overlap"] = len(common) / max(1, len(ec))
        res["path_edge_weight_max_abs_diff"] = _maxdiff(ed.loc[common], ec.loc[common])
        res["path_edge_weight_max_abs"] = _maxabs(ec)
        ok &= same_nodes and res["path_node_score_max_abs_diff"] <= TOL_XDEV and res["path_edge_overlap"] >= 0.95 \
            and res["path_edge_weight_max_abs_diff"] <= TOL_XDEV * max(1.0, res["path_edge_weight_max_abs"])
    # weight-only tables and start activations
    st_d = circuits.static_gender_neurons(model, 3)
    pj_d = circuits.projection_table(model, ffn + attn, k=6)
    sa_d = circuits.start_activations(model, ffn, CIRCUIT_PROMPTS)
    res["static_gender_neurons"] = list(st_d.id)
    if ref is not None:
        st_c = circuits.static_gender_neurons(ref, 3)
        pj_c = circuits.projection_table(ref, ffn + attn, k=6)
        sa_c = circuits.start_activations(ref, ffn, CIRCUIT_PROMPTS)
        res["static_gender_ids_identical"] = list(st_d.id) == list(st_c.id)
        res["static_gender_z_max_abs_diff"] = _maxdiff(st_d.gender_z, st_c.gender_z)
        res["projection_tokens_identical"] = bool(pj_d.top_tokens.tolist() == pj_c.top_tokens.tolist()
                                                  and pj_d.last_tokens.tolist() == pj_c.last_tokens.tolist())
        res["start_activations_max_abs_diff"] = max(_maxdiff(sa_d[c], sa_c[c]) for c in ("start_coef", "other_abs"))
        res["start_activations_max_abs"] = _maxabs(sa_c.start_coef)
        ok &= res["static_gender_ids_identical"] and res["static_gender_z_max_abs_diff"] <= 1e-3 \
            and res["start_activations_max_abs_diff"] <= 1e-4 * max(1.0, res["start_activations_max_abs"])
    res["passed"] = bool(ok)
    return res


def check_general(model, ref, report) -> dict:
    from analysis_lib import general
    from analysis_lib.commonwords import load_commonwords, to_frame
    from analysis_lib import neuron_editing as ne

    prompts = GENERAL_PROMPTS.copy()
    prompts["target_id"] = [models.single_token_id(model, t) for t in prompts.target]
    res: dict = {}
    scan_d = general.query_scan(model, prompts)
    one = general.prompt_query_positions(model, prompts.prompt[1], " man", word="engineer")
    res["device_scan_vs_single_prompt_max_abs"] = _maxdiff(scan_d.q_start[1], one["q_start"])
    ok = res["device_scan_vs_single_prompt_max_abs"] <= 1e-5 * max(1.0, _maxabs(one["q_start"]))
    rk_d = general.rank_general(scan_d, top=10)
    gen2 = list(rk_d[rk_d.general].id[:2])
    res["general_top2_device"] = gen2
    ok &= len(gen2) == 2
    # CNA: importance with the clean run's scale; exact against the engine when unmasked
    clean = at.forward_data(model, "3+5=", None)[0]
    r = at.attribute(model, "3+5=", clean.target_id, top_k=3, kinds=("ffn_value",))
    res["device_ffn_importance_vs_engine_max_abs"] = _maxdiff(general.ffn_importance(model, clean, r.neurons("ffn_value")),
                                                               r.top("ffn_value").score.to_numpy())
    ok &= res["device_ffn_importance_vs_engine_max_abs"] <= TOL_ABS
    masked = gen2[:1]
    cna_d = general.cna_table(model, "3+5=", masked, n_top=5, n_shortlist=3)
    ap_d = general.activation_profile(model, {"general": gen2}, list(prompts.prompt[:2]))[1]
    words = to_frame(load_commonwords(0))
    cw = ne.subset_words(words[words.split == "test"], 5, 0)
    sizes = {"arithmetic_1digit": 8}
    conds = {"original": [], "general": gen2}
    tab_d, _ = general.run_conditions(model, conds, sizes, 0, commonwords=cw)
    res["run_conditions_device"] = tab_d[["condition", "task", "value"]].to_dict("records")
    if ref is not None:
        scan_c = general.query_scan(ref, prompts)
        for name in ("q_start", "q_word", "q_total", "m_start"):
            a, b = getattr(scan_d, name), getattr(scan_c, name)
            res[f"scan_{name}_device_vs_cpu_max_abs"] = _maxdiff(a, b)
            res[f"scan_{name}_max_abs"] = _maxabs(b)
            ok &= res[f"scan_{name}_device_vs_cpu_max_abs"] <= 1e-4 * max(1.0, res[f"scan_{name}_max_abs"])
        rk_c = general.rank_general(scan_c, top=10)
        res["rank_general_top10_identical"] = list(rk_d.id) == list(rk_c.id)
        res["rank_general_top2_identical"] = list(rk_c[rk_c.general].id[:2]) == gen2
        res["rank_general_start_score_max_abs_diff"] = _maxdiff(rk_d.start_score, rk_c.start_score) \
            if res["rank_general_top10_identical"] else None
        gd_d = general.rank_gender(scan_d, exclude=gen2, top=10)
        gd_c = general.rank_gender(scan_c, exclude=gen2, top=10)
        res["rank_gender_top10_identical"] = list(gd_d.id) == list(gd_c.id)
        ok &= res["rank_general_top2_identical"]
        cna_c = general.cna_table(ref, "3+5=", masked, n_top=5, n_shortlist=3)
        res["cna_ids_identical"] = list(cna_d.id) == list(cna_c.id)
        if res["cna_ids_identical"]:
            for c in ("imp_orig", "imp_masked", "coef_orig", "coef_masked", "p_target_orig", "p_target_masked"):
                res[f"cna_{c}_max_abs_diff"] = _maxdiff(cna_d[c], cna_c[c])
            res["cna_sign_flips_identical"] = bool((cna_d.sign_flip == cna_c.sign_flip).all())
            ok &= max(res[f"cna_{c}_max_abs_diff"] for c in ("imp_orig", "imp_masked", "p_target_orig", "p_target_masked")) <= TOL_XDEV
        else:
            ok = False
        ap_c = general.activation_profile(ref, {"general": gen2}, list(prompts.prompt[:2]))[1]
        res["activation_profile_max_abs_diff"] = max(_maxdiff(ap_d[c], ap_c[c]) for c in ("m_start", "mean_abs_other", "max_abs_other"))
        res["activation_profile_m_start"] = ap_d.m_start.tolist()
        ok &= res["activation_profile_max_abs_diff"] <= 1e-3 * max(1.0, _maxabs(ap_c.m_start))
        tab_c, _ = general.run_conditions(ref, conds, sizes, 0, commonwords=cw)
        res["run_conditions_cpu"] = tab_c[["condition", "task", "value"]].to_dict("records")
        acc = (tab_d.metric == "accuracy").to_numpy()
        res["run_conditions_accuracy_identical"] = bool((tab_d.value.to_numpy()[acc] == tab_c.value.to_numpy()[acc]).all())
        res["run_conditions_mean_abs_b_max_abs_diff"] = _maxdiff(tab_d.value.to_numpy()[~acc], tab_c.value.to_numpy()[~acc])
        ok &= res["run_conditions_accuracy_identical"] and res["run_conditions_mean_abs_b_max_abs_diff"] <= TOL_XDEV
    res["passed"] = bool(ok)
    return res


def check_neuron_editing(model, ref, report) -> dict:
    from analysis_lib import edit_selection as es
    from analysis_lib import neuron_editing as ne
    from analysis_lib import reference
    from analysis_lib.capability import neutral_texts
    from analysis_lib.commonwords import load_commonwords, to_frame

    words = to_frame(load_commonwords(0))
    train = ne.subset_words(words[words.split == "train"], 5, 0)
    test = ne.subset_words(words[words.split == "test"], 5, 0)
    guard = neutral_texts()[-1:]
    eval_texts = ne.guard_and_eval_texts(1, 1)[1]
    prompts4 = train.prompt.tolist()[:4]
    res: dict = {}

    def pipeline(m):
        out = {}
        prompts = train.prompt.tolist()[:3]
        targets = ne.biased_targets(m, prompts)
        da = at.dataset_attribution(m, prompts, targets, top_k=8, words=train.word.tolist()[:3], progress=False)
        out["candidates"] = ne.candidates(da, 8)
        kept = ne.drop_start(out["candidates"])[0].head(4)
        sc = es.SetScorer(m, prompts4, guard)
        out["singles"], _ = es.single_effects(sc, kept.neuron.tolist())
        ranking = out["singles"].sort_values("effect", ascending=False, kind="stable").neuron.tolist()
        out["one_shot"] = es.one_shot(sc, ranking, k_max=4, guard_tol=0.002).neurons
        out["joint"] = es.joint_greedy(sc, ranking, k_max=4, guard_tol=0.002).neurons
        out["fast"], out["ppl0"], out["targets"] = sc.fast, sc.ppl0, targets
        out["ranking"] = ranking
        return out

    pd_ = pipeline(model)
    # the batched fast path must be the one taken on the device (it falls back silently to full passes)
    res["device_scorer_fast"] = pd_["fast"]
    sc = es.SetScorer(model, prompts4, guard)
    probe = pd_["ranking"][:2]
    res["device_scorer_vs_reference_max_abs"] = float(max(
        np.abs(sc.bias([[n]])[0] - reference.masked_bias(model, prompts4, [n])).max() for n in probe))
    res["device_guard_vs_reference_rel"] = abs(sc.ppl_ratio(probe) * sc.ppl0
                                               / reference.masked_perplexity(model, guard, probe) - 1)
    res["one_shot_device"], res["joint_device"] = pd_["one_shot"], pd_["joint"]
    ok = pd_["fast"] and res["device_scorer_vs_reference_max_abs"] <= 5e-5 and res["device_guard_vs_reference_rel"] < 5e-5
    conds = {"original": [], "masked": pd_["joint"] or probe}
    ev_d, it_d = ne.evaluate_conditions(model, conds, test, eval_texts, n_boot=50)
    res["evaluate_device"] = ev_d[["condition", "mean_abs_b", "d_mean_abs_b", "ppl", "d_ppl_pct"]].to_dict("records")
    if ref is not None:
        pc = pipeline(ref)
        res["targets_identical"] = pd_["targets"] == pc["targets"]
        res["candidate_overlap"] = len(set(pd_["candidates"].neuron) & set(pc["candidates"].neuron)) / max(1, len(pc["candidates"]))
        same = pd_["singles"].neuron.tolist() == pc["singles"].neuron.tolist()
        res["single_effect_max_abs_diff"] = _maxdiff(pd_["singles"].effect, pc["singles"].effect) if same else float("inf")
        res["one_shot_cpu"], res["joint_cpu"] = pc["one_shot"], pc["joint"]
        res["guard_ppl_rel_diff"] = abs(pd_["ppl0"] / pc["ppl0"] - 1)
        ev_c, it_c = ne.evaluate_conditions(ref, conds, test, eval_texts, n_boot=50)
        res["evaluate_cpu"] = ev_c[["condition", "mean_abs_b", "d_mean_abs_b", "ppl", "d_ppl_pct"]].to_dict("records")
        res["evaluate_b_max_abs_diff"] = max(_maxdiff(it_d[k].b, it_c[k].b) for k in conds)
        res["evaluate_ppl_rel_diff"] = float(np.max(np.abs(ev_d.ppl.to_numpy() / ev_c.ppl.to_numpy() - 1)))
        ok &= res["targets_identical"] and res["candidate_overlap"] >= 0.9 \
            and res["single_effect_max_abs_diff"] <= TOL_XDEV and res["one_shot_cpu"] == res["one_shot_device"] \
            and res["joint_cpu"] == res["joint_device"] and res["guard_ppl_rel_diff"] <= TOL_XDEV \
            and res["evaluate_b_max_abs_diff"] <= TOL_XDEV and res["evaluate_ppl_rel_diff"] <= TOL_XDEV
    res["passed"] = bool(ok)
    return res


def check_crispr(model, ref, report) -> dict:
    from analysis_lib import crispr
    from analysis_lib.scoring import continuation_logprobs

    plain = pd.DataFrame([CRISPR_PLAIN, {**CRISPR_PLAIN, "example_id": 1, "context": "The doctor in this story is James.",
                                          "label": 1}])
    ins = crispr.INSTRUCTIONS[:1]
    res: dict = {}
    # the packed option scorer against separate continuations, on the device (tests/test_crispr.py: 1e-4)
    sc = crispr.score_items(model, plain, ins)
    prompts, options = crispr._prompt_grid(plain, ins)
    ctx = [p for p, o in zip(prompts, options) for _ in o]
    cont = [x for o in options for x in o]
    want, count = continuation_logprobs(model, ctx, cont)
    res["device_packed_vs_continuations_max_abs"] = _maxdiff(sc.logprob.reshape(-1), want)
    res["device_token_counts_match"] = bool((sc.n_tokens.reshape(-1) == count[: sc.n_tokens.size]).all())
    ok = res["device_packed_vs_continuations_max_abs"] <= 1e-4 and res["device_token_counts_match"]
    # two real BBQ items (Gender_identity), attribution over FFN and attention units
    items = crispr.sample_items(crispr.load_items("Gender_identity"), 2, seed=0)
    res["bbq_example_ids"] = items.example_id.tolist()
    t0 = time.perf_counter()
    a_d = crispr.attribute(model, items, ins, units="ffn+attn")
    res["seconds_attribute_device"] = round(time.perf_counter() - t0, 3)
    top_d = [str(n) for n in crispr.top_neurons(a_d, 20, units="ffn+attn")]
    res["top5_device"] = top_d[:5]
    ev = crispr.evaluate_conditions(model, items, {"original": None, "pruned": top_d[:5]}, ins)
    again = crispr.evaluate(model, items, ins)
    res["prune_restored_bit_identical"] = bool(np.array_equal(ev["original"].logprob, again.logprob))
    res["prune_changes_logprobs"] = bool(not np.array_equal(ev["original"].logprob, ev["pruned"].logprob))
    ok &= res["prune_restored_bit_identical"] and res["prune_changes_logprobs"]
    if ref is not None:
        sc_c = crispr.score_items(ref, plain, ins)
        res["packed_scores_device_vs_cpu_max_abs"] = _maxdiff(sc.logprob, sc_c.logprob)
        t0 = time.perf_counter()
        a_c = crispr.attribute(ref, items, ins, units="ffn+attn")
        res["seconds_attribute_cpu"] = round(time.perf_counter() - t0, 3)
        top_c = [str(n) for n in crispr.top_neurons(a_c, 20, units="ffn+attn")]
        res["top20_identical"] = top_d == top_c
        res["top20_overlap"] = len(set(top_d) & set(top_c)) / 20
        for v in crispr.VARIANTS:
            res[f"scores_{v}_max_abs_diff"] = _maxdiff(a_d.scores[v], a_c.scores[v])
            res[f"scores_{v}_max_abs"] = _maxabs(a_c.scores[v])
        cols = ["label", "biased"]
        res["instances_biased_identical"] = a_d.instances[cols].equals(a_c.instances[cols])
        res["instances_alpha_max_abs_diff"] = _maxdiff(a_d.instances.alpha, a_c.instances.alpha)
        ev_c = crispr.evaluate_conditions(ref, items, {"original": None, "pruned": top_d[:5]}, ins)
        res["evaluate_device_vs_cpu_max_abs"] = max(_maxdiff(ev[k].logprob, ev_c[k].logprob) for k in ev)
        ok &= res["packed_scores_device_vs_cpu_max_abs"] <= TOL_XDEV and res["top20_overlap"] >= 0.9 \
            and all(res[f"scores_{v}_max_abs_diff"] <= 1e-3 * max(1e-3, res[f"scores_{v}_max_abs"]) for v in crispr.VARIANTS) \
            and res["instances_biased_identical"] and res["instances_alpha_max_abs_diff"] <= TOL_XDEV \
            and res["evaluate_device_vs_cpu_max_abs"] <= TOL_XDEV
    res["passed"] = bool(ok)
    return res


def check_finetune(model, ref, report) -> dict:
    from analysis_lib import finetune as ft
    from analysis_lib import neuron_editing as ne
    from analysis_lib.commonwords import load_commonwords, to_frame
    from analysis_lib.neurons import hf_model, weights_version
    from analysis_lib.scoring import next_token_logprobs

    words = to_frame(load_commonwords(0))
    prompts = ne.subset_words(words[words.split == "train"], 4, 0).prompt.tolist()
    kl_texts = ne.guard_and_eval_texts(1, 1)[0]
    neurons = _valid_or_random(model, FT_NEURONS[:2], "ffn_value") + _valid_or_random(model, FT_NEURONS[2:], "attn_value")
    steps = 2
    res: dict = {"steps": steps, "neurons": neurons}

    def run(m):
        lo = ft.finetune_lora(m, prompts, kl_texts, steps=steps, lr=1e-3, beta=1.0, rank=4, seed=0, progress=False)
        rs = ft.finetune_neurons(m, neurons, prompts, kl_texts, steps=steps, lr=3e-3, beta=1.0, seed=0, progress=False)
        return lo, rs

    before = next_token_logprobs(model, FT_PROBE)
    version = weights_version(model)
    lo_d, rs_d = run(model)
    res["original_untouched_bit_identical"] = bool(torch.equal(next_token_logprobs(model, FT_PROBE), before)) \
        and weights_version(model) == version and all(p.grad is None for p in hf_model(model).parameters())
    res["tuned_device"] = sorted({str(next(hf_model(r.model).parameters()).device) for r in (lo_d, rs_d)})
    res["lora_history_device"] = lo_d.history[["step", "loss", "bias_loss", "kl"]].to_dict("records")
    res["restricted_history_device"] = rs_d.history[["step", "loss", "bias_loss", "kl"]].to_dict("records")
    h = lo_d.history
    res["lora_kl_step0"] = float(h.kl.iloc[0])
    res["lora_bias_loss_step0_vs_objective_rel"] = abs(h.bias_loss.iloc[0] / ft.bias_objective(model, prompts) - 1)
    ok = res["original_untouched_bit_identical"] and abs(res["lora_kl_step0"]) <= 1e-5 \
        and res["lora_bias_loss_step0_vs_objective_rel"] <= 1e-4 \
        and h.bias_loss.iloc[-1] < h.bias_loss.iloc[0] and rs_d.history.bias_loss.iloc[-1] < rs_d.history.bias_loss.iloc[0]
    # the restricted copy changed only the selected entries (checked inside finetune_neurons too)
    masks = ft.neuron_masks(model, neurons)
    allowed = {id(w): m for w, m in masks.values()}
    outside_changed, changed = 0, 0
    for (_, p0), (_, p1) in zip(hf_model(model).named_parameters(), hf_model(rs_d.model).named_parameters()):
        m = allowed.get(id(p0))
        if m is None:
            outside_changed += int((p0 != p1).sum())
        else:
            outside_changed += int((p0[~m] != p1[~m]).sum())
            changed += int((p0[m] != p1[m]).sum())
    res["restricted_entries_changed"] = changed
    res["restricted_entries_changed_outside_mask"] = outside_changed
    ok &= changed > 0 and outside_changed == 0
    if ref is not None:
        lo_c, rs_c = run(ref)
        for name, a, b in (("lora", lo_d, lo_c), ("restricted", rs_d, rs_c)):
            cols = ["loss", "bias_loss", "kl"]
            res[f"{name}_history_cpu"] = b.history[["step"] + cols].to_dict("records")
            x, y = a.history[cols].to_numpy(float), b.history[cols].to_numpy(float)
            res[f"{name}_history_max_abs_diff"] = _maxdiff(x, y)
            # losses after Adam steps on gradients that differ in the last float32 bits: 1e-3 relative + 1e-5
            ok &= bool((np.abs(x - y) <= 1e-3 * np.abs(y) + 1e-5).all())
            res[f"{name}_probe_logprobs_device_vs_cpu_max_abs"] = _maxdiff(next_token_logprobs(a.model, FT_PROBE),
                                                                           next_token_logprobs(b.model, FT_PROBE))
            ok &= res[f"{name}_probe_logprobs_device_vs_cpu_max_abs"] <= 1e-3
        del lo_c, rs_c
    del lo_d, rs_d
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
    ap.add_argument("--skip", default="", help="comma-separated checks to skip: logits,attribution,editing,capability,"
                    "dataset,circuits,general,neuron_editing,crispr,finetune,timings")
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
        ("circuits", lambda: check_circuits(model, ref, report)),
        ("general", lambda: check_general(model, ref, report)),
        ("neuron_editing", lambda: check_neuron_editing(model, ref, report)),
        ("crispr", lambda: check_crispr(model, ref, report)),
        ("finetune", lambda: check_finetune(model, ref, report)),
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
