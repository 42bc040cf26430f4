"""Neuron attribution: exactness of the fast path against a plain dense reference, decomposition
identities, and neuron ids. Real model, no mocks.

The dense reference (``analysis_lib.reference.dense_attribution``) is written independently of
``analysis_lib.attribution``: it reads the bridge's cache and the Hugging Face weights, reads
*every* neuron out through the full vocabulary in chunks (as the authors' notebook does) and
ranks by the exact log-probability increase. The fast path must agree with it to 1e-5 with
100% top-50 recall, for FFN value, attention value and FFN query neurons, top and bottom, on
four prompts of different lengths. The per-layer projections ``(w * g_final) @ W_U.T`` are
shared across the prompts; the reference still takes about two minutes on two CPU cores.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from analysis_lib import attribution
from analysis_lib.attribution import (
    attribute,
    attribution_json,
    attn_subvalues,
    dataset_attribution,
    ffn_subvalues,
    forward_data,
    important_position,
    neuron_card,
    readout,
    shared_frequency,
    shared_frequency_curve,
    vocab_projection,
)
from analysis_lib.errors import NeuronIdError
from analysis_lib.models import encode
from analysis_lib.neurons import NeuronId, final_norm_gain
from analysis_lib.reference import dense_attribution, flat_index

# four prompts of different lengths (2 to 10 tokens with the start token), with targets; the
# dense reference's cost grows with the total length (a fifth prompt of 8 tokens cost ~35 s)
CASES = [
    ("Hello", " world"),
    ("The nurse is a", " woman"),
    ("The capital of France is", " Paris"),
    ("After a long day, the surgeon said that", " he"),
]
K = 50
N_QUERY = 30
TOL_ABS = 1e-5


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dense(model):
    t0 = time.perf_counter()
    ref = dense_attribution(model, CASES, n_query=N_QUERY)
    print(f"\ndense reference: {time.perf_counter() - t0:.1f}s for {len(CASES)} prompts")
    return ref


@pytest.fixture(scope="module")
def fast(model):
    return [attribute(model, p, t, top_k=K, bottom_k=K) for p, t in CASES]


# ----------------------------------------------------------------------------- exactness


def _check(kind, table, ref_scores, id_of, side):
    """Scores equal the dense ones (1e-5) and the top-K set equals the dense top-K."""
    rows = table[table.side == side]
    assert len(rows) == K
    flat = ref_scores.flatten().double()
    order = torch.sort(flat, descending=(side == "top")).indices
    ref_ids = [id_of(int(i)) for i in order[: K + 5]]
    ref_vals = flat[order[: K + 5]]
    # 1) every reported score equals the dense score of that neuron
    for n, s in zip(rows.neuron, rows.score):
        ix = flat_index(n, ref_scores.shape)
        assert abs(float(flat[ix]) - s) <= TOL_ABS, (kind, side, str(n), float(flat[ix]), s)
    # 2) recall: every dense top-K neuron is reported (neurons tied with the K-th within 1e-5 excepted)
    kth = float(ref_vals[K - 1])
    reported = set(str(n) for n in rows.neuron)
    for nid, val in zip(ref_ids[:K], ref_vals[:K].tolist()):
        if abs(val - kth) > TOL_ABS:
            assert nid in reported, (kind, side, nid, val)
    # 3) order: reported scores are sorted
    sc = rows.score.to_numpy()
    assert np.all(np.diff(sc) <= 1e-12) if side == "top" else np.all(np.diff(sc) >= -1e-12)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_fast_path_matches_dense_reference(case, fast, dense):
    res, ref = fast[case], dense[case]
    assert res.target_id == ref["t"]
    L, dm = ref["ffn"].shape
    Lh = ref["attn"].shape

    def ffn_id(ix):
        l, i = np.unravel_index(ix, (L, dm))
        return str(NeuronId("ffn", layer=int(l), index=int(i)))

    def attn_id(ix):
        l, h, j, p = np.unravel_index(ix, Lh)
        return str(NeuronId("attn", layer=int(l), head=int(h), dim=int(j), position=int(p)))

    for side in ("top", "bottom"):
        _check("ffn_value", res.tables["ffn_value"], ref["ffn"], ffn_id, side)
        _check("attn_value", res.tables["attn_value"], ref["attn"], attn_id, side)
        _check("ffn_query", res.tables["ffn_query"], ref["query"], ffn_id, side)


def test_prompts_have_different_lengths(fast):
    assert len({len(r.tokens) for r in fast}) == len(CASES)


@pytest.mark.parametrize("chunk", [None, 2048, 1000])
def test_chunked_exact_readout_matches_float64(model, monkeypatch, chunk):
    """The online log-sum-exp over vocabulary chunks (whole vocabulary, the CPU default, and a
    chunk that does not divide the vocabulary) equals a float64 one-shot readout."""
    data = forward_data(model, "The person who enjoys knitting is a", " woman")[0]
    W = model.original_model.lm_head.weight.detach()
    monkeypatch.setattr(attribution, "VOCAB_CHUNK", chunk or W.shape[0])
    sc = attribution._Scorer(model, data, need_lower=False)
    for family in ("ffn", "attn"):
        flat = torch.topk(sc.fam[family]["ub"], 40).indices
        got = sc.exact(family, flat)
        layer, unit, base = sc.locate(family, flat)
        rows = sc.unit_rows(family, layer, unit).double()
        d = sc.fam[family]["e"][flat][:, None] * (rows @ W.double().T)  # [n, V] logit changes
        logp = torch.log_softmax(sc.z0[base].double(), -1)
        want = d[:, sc.t] - torch.logsumexp(logp + d, -1)
        assert (got - want).abs().max().item() <= 1e-6, (family, chunk)


@pytest.mark.parametrize("chunk", [None, 2048, 1000])
def test_baseline_readout_matches_float64(model, monkeypatch, chunk):
    """The one-pass baselines (an online softmax over vocabulary chunks) equal float64
    ``softmax``, ``logsumexp`` and ``p @ W_U`` of the same float32 logits (fails when the
    running rescale is dropped); a scorer restricted to some layers has the same baselines
    there and NaN elsewhere."""
    data = forward_data(model, "After a long day at the hospital, the surgeon said that", " he")[0]
    W = model.original_model.lm_head.weight.detach()
    monkeypatch.setattr(attribution, "VOCAB_CHUNK", chunk or W.shape[0])
    x = torch.cat([data.x_mid, data.x_pre]) * (final_norm_gain(model) / data.scale)
    # frequent tokens have small ids, so every row's maximum sits in the first chunk; the
    # reversed vocabulary makes the running maximum grow (the rescaling is then exercised)
    for Wv in (W.flip(0), W):
        z0, p, lse0, u = attribution.baseline_readout(x, Wv)
        assert (z0.double() - x.double() @ Wv.double().T).abs().max().item() <= 1e-4
        z = z0.double()
        p64 = torch.softmax(z, -1)
        assert ((p.double() - p64).abs() / p64).max().item() <= 1e-5
        assert (lse0.double() - torch.logsumexp(z, -1)).abs().max().item() <= 1e-5
        u64 = p64 @ Wv.double()
        assert ((u.double() - u64).norm(dim=-1) / u64.norm(dim=-1)).max().item() <= 1e-5
    sc = attribution._Scorer(model, data, need_lower=False, layers=[3, 17])
    L = model.cfg.n_layers
    for row in range(2 * L):
        if row % L in (3, 17):
            assert torch.allclose(sc.p[row], p[row], rtol=1e-5, atol=0) and torch.allclose(sc.u[row], u[row], rtol=1e-5, atol=1e-7)
        else:
            assert sc.p[row].isnan().all() and sc.u[row].isnan().all() and sc.lse0[row].isnan()


# ----------------------------------------------------------------------------- decomposition identities


def test_readout_reproduces_logits_and_hook_scale_is_rms(model):
    data = forward_data(model, [p for p, _ in CASES], [t for _, t in CASES])
    for d in data:
        rms = torch.sqrt(d.x_final.pow(2).mean() + model.original_model.model.norm.variance_epsilon)
        assert abs(float(d.scale) - float(rms)) <= 1e-5 * float(rms)
        z = readout(model, d, d.x_final)
        assert (z - d.logits).abs().max().item() <= 1e-4
    # the Llama final norm's effective gain is its weight
    assert torch.equal(final_norm_gain(model), model.original_model.model.norm.weight.detach())


def test_subvalues_sum_to_block_outputs(model):
    names = lambda n: n.endswith(("hook_mlp_out", "hook_attn_out"))  # noqa: E731
    for prompt, target in CASES[1:4]:
        d = forward_data(model, prompt, target)[0]
        with torch.inference_mode():
            _, cache = model.run_with_cache(encode(model, prompt).tokens, names_filter=names)
        for l in (0, 7, 15, 29):
            mlp = cache[f"blocks.{l}.hook_mlp_out"][0, -1]
            att = cache[f"blocks.{l}.hook_attn_out"][0, -1]
            s_ffn = ffn_subvalues(model, d, l).sum(0)
            s_att = attn_subvalues(model, d, l).sum((0, 1, 2))
            assert (s_ffn - mlp).norm() <= 1e-4 * mlp.norm(), (l, "mlp")
            assert (s_att - att).norm() <= 1e-4 * att.norm(), (l, "attn")


def test_hook_post_is_gated_coefficient(model):
    hf = model.original_model
    enc = encode(model, CASES[2][0])
    with torch.inference_mode():
        _, cache = model.run_with_cache(enc.tokens, names_filter=lambda n: "resid_mid" in n or "mlp.hook_post" in n)
        for l in (0, 29):
            layer = hf.model.layers[l]
            h = layer.post_attention_layernorm(cache[f"blocks.{l}.hook_resid_mid"][0])
            mlp = layer.mlp
            m = mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h)
            assert (m - cache[f"blocks.{l}.mlp.hook_post"][0]).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- neuron ids


def test_neuron_id_format_and_round_trip(model):
    n = NeuronId("ffn", layer=2, index=7003)
    assert str(n) == "ffnL2N7003"
    assert NeuronId.parse("ffnL2N7003") == n
    a = NeuronId("attn", layer=21, head=0, dim=79, position=3)
    assert str(a) == "attnL21H0D79P3" and NeuronId.parse(str(a)) == a
    agg = NeuronId.parse("attnL21H0D79")
    assert agg.position is None and a.aggregated == agg and str(agg) == "attnL21H0D79"
    rng = np.random.default_rng(0)
    cfg = model.cfg
    for _ in range(200):
        if rng.random() < 0.5:
            x = NeuronId("ffn", layer=int(rng.integers(cfg.n_layers)), index=int(rng.integers(cfg.d_mlp)))
        else:
            x = NeuronId("attn", layer=int(rng.integers(cfg.n_layers)), head=int(rng.integers(cfg.n_heads)),
                         dim=int(rng.integers(cfg.d_head)), position=int(rng.integers(20)) if rng.random() < 0.8 else None)
        assert NeuronId.parse(str(x)) == x
        x.validate(model)
    with pytest.raises(Exception):
        n.layer = 3  # frozen


@pytest.mark.parametrize("bad", ["ffnL30N0", "ffnL0N1536", "attnL0H9D0P0", "attnL0H0D64P0", "attnL30H0D0"])
def test_out_of_range_ids_raise(model, bad):
    with pytest.raises(NeuronIdError, match="out of range"):
        NeuronId.parse(bad).validate(model)


@pytest.mark.parametrize("bad", ["ffn2_7003", "ffnL2", "attnL1H2P3", "L2N7003", "", "ffnL-1N3", "attnL1H2D3P"])
def test_bad_strings_raise_with_format(bad):
    with pytest.raises(NeuronIdError, match=r"ffnL\{layer\}N\{index\}"):
        NeuronId.parse(bad)


def test_bad_fields_raise():
    with pytest.raises(NeuronIdError):
        NeuronId("ffn", layer=1)
    with pytest.raises(NeuronIdError):
        NeuronId("attn", layer=1, head=2)
    with pytest.raises(NeuronIdError):
        NeuronId("mlp", layer=1, index=2)
    with pytest.raises(NeuronIdError):
        NeuronId("ffn", layer=1, index=-2)


# ----------------------------------------------------------------------------- inspection & aggregation


def test_vocab_projection_and_card(model):
    top, last = vocab_projection(model, "ffnL29N922", k=5, with_values=True)
    assert len(top) == 5 and len(last) == 5 and top[0][1] >= top[-1][1] >= last[-1][1] >= last[0][1]
    card = neuron_card(model, "attnL22H7D58P0")
    assert card["kind"] == "attn" and card["kv_head"] == 7 // 3 and "start_activation" in card
    import json

    json.dumps(card)
    with pytest.raises(NeuronIdError):
        neuron_card(model, "ffnL99N0")


def test_json_and_positions(fast):
    res = fast[1]
    js = attribution_json(res)
    assert js["tokens"][0] == "<|im_start|>" and js["target"] == " woman"
    assert {r["kind"] for r in js["neurons"]} == {"ffn_value", "attn_value", "ffn_query"}
    att = res.neurons("attn_value")[0]
    assert important_position(res, att) == att.position
    ffn = res.neurons("ffn_value")[0]
    assert important_position(res, ffn, "ffn_value") == len(res.tokens) - 1


def test_dataset_attribution_and_shared_frequency(model, fast, dense):
    """The summed ranking equals the dense sums; per-prompt lists equal the per-prompt results."""
    cases = CASES[1:]
    ds = dataset_attribution(model, [p for p, _ in cases], [t for _, t in cases], top_k=20, progress=False)
    ref = dense[1:]
    tot_ffn = sum(r["ffn"] for r in ref).flatten().double()
    tot_att = sum(r["attn"].sum(-1) for r in ref).flatten().double()
    for kind, tot, shape in (("ffn_value", tot_ffn, ref[0]["ffn"].shape), ("attn_value", tot_att, ref[0]["attn"].shape[:3])):
        df = ds.tables[kind]
        top = torch.topk(tot, 20)
        for n, s, e in zip(df.neuron, df.score, df.error):
            key = (n.layer, n.index) if n.kind == "ffn" else (n.layer, n.head, n.dim)
            assert abs(float(tot[int(np.ravel_multi_index(key, shape))]) - s) <= 4 * TOL_ABS + e, (kind, str(n))
        kth = float(top.values[-1])
        got = set(str(n) for n in df.neuron)
        for ix, v in zip(top.indices.tolist(), top.values.tolist()):
            if v - kth > 4 * TOL_ABS:
                key = np.unravel_index(ix, shape)
                nid = NeuronId("ffn", layer=int(key[0]), index=int(key[1])) if kind == "ffn_value" else \
                    NeuronId("attn", layer=int(key[0]), head=int(key[1]), dim=int(key[2]))
                assert str(nid) in got, (kind, str(nid))
        shares = df[[f"share_{c}" for c in ("start", "word", "last", "other")]].sum(axis=1)
        assert np.allclose(shares, 1.0, atol=1e-6)
    for i, res in enumerate(fast[1:]):
        assert [str(n) for n in ds.per_prompt_topk["ffn_value"][i]] == [str(n) for n in res.neurons("ffn_value")[:20]]
    assert (ds.tables["ffn_value"].share_last == 1.0).all()
    f = shared_frequency(ds.per_prompt_topk["ffn_value"], 10)
    assert f.iloc[0] <= 1.0 and f.is_monotonic_decreasing
    curve = shared_frequency_curve(ds.per_prompt_topk["attn_value"], (1, 5, 10))
    assert list(curve.K) == [1, 5, 10] and (curve.max_frequency <= 1).all()


# ----------------------------------------------------------------------------- another architecture


def _gemma_cached() -> bool:
    from analysis_lib.errors import StudyError
    from analysis_lib.models import model_cache_dir

    try:
        return (model_cache_dir("gemma3-270m") / "study_cache.json").is_file()
    except (StudyError, ImportError):
        return False


@pytest.mark.skipif(not _gemma_cached(), reason="gemma3-270m is not installed or its float cache is not built")
def test_gemma_sandwich_norms_and_gain():
    """Gemma 3: (1 + w) norm gains, 4 heads on 1 KV head, post-norms linearized exactly."""
    from analysis_lib.models import load_model
    from analysis_lib.neurons import arch

    gm = load_model("gemma3-270m")
    a = arch(gm)
    assert a.sandwich and a.n_kv_heads == 1 and a.group == 4 and a.softcap is None
    gain = final_norm_gain(gm)
    assert torch.allclose(gain, 1 + gm.original_model.model.norm.weight.detach())
    prompt, target = "The nurse is a", " woman"
    d = forward_data(gm, prompt, target)[0]
    z = readout(gm, d, d.x_final)
    assert (z - d.logits).abs().max().item() <= 1e-4 * max(1.0, d.logits.abs().max().item())
    names = lambda n: n.endswith(("hook_mlp_out", "hook_attn_out"))  # noqa: E731
    with torch.inference_mode():
        _, cache = gm.run_with_cache(encode(gm, prompt).tokens, names_filter=names)
    for l in (0, 9, a.n_layers - 1):
        mlp, att = cache[f"blocks.{l}.hook_mlp_out"][0, -1], cache[f"blocks.{l}.hook_attn_out"][0, -1]
        assert (ffn_subvalues(gm, d, l).sum(0) - mlp).norm() <= 1e-4 * mlp.norm()
        assert (attn_subvalues(gm, d, l).sum((0, 1, 2)) - att).norm() <= 1e-4 * att.norm()
    res = attribute(gm, prompt, target, top_k=5)
    # each reported FFN value score is the log-prob increase of its (linearized) subvalue
    for n, s in zip(res.top("ffn_value").neuron, res.top("ffn_value").score):
        sv = ffn_subvalues(gm, d, n.layer)[n.index]
        z0 = readout(gm, d, d.x_mid[n.layer]).double()
        dz = readout(gm, d, sv, bias=False).double()  # the authors' z0 + dZ, in float64
        t = d.target_id
        ref = (torch.log_softmax(z0 + dz, -1)[t] - torch.log_softmax(z0, -1)[t]).item()
        assert abs(ref - s) <= TOL_ABS
    assert len(res.top("ffn_query")) == 5 and len(res.top("attn_value")) == 5


def test_top_k_is_capped_at_the_number_of_neurons_of_the_kind(model):
    res = attribute(model, "The nurse said", " she", top_k=10**9, kinds=("ffn_query",))
    counts = attribution.neuron_counts(model, len(res.tokens))
    assert counts["ffn_query"] == model.cfg.n_layers * model.cfg.d_mlp
    assert len(res.tables["ffn_query"]) == counts["ffn_query"]


def test_neuron_card_refuses_a_position_the_prompts_lack(model):
    with pytest.raises(NeuronIdError, match=r"names source position 999, but the card's prompts have only"):
        neuron_card(model, "attnL3H2D17P999")
    card = neuron_card(model, "attnL3H2D17P2")
    assert card["position"] == 2 and np.isfinite(card["position_activation"])
