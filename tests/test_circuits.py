"""Chapter-3 computations (``analysis_lib.circuits``) against plain slow references. Real model.

The reference below reads the bridge's cache and the Hugging Face weights and scores each
neuron with a full log-softmax, one vector at a time, as the authors' notebook does. It does
not use ``analysis_lib.attribution``'s readout or scorers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import circuits
from analysis_lib.attribution import POSITION_CATEGORIES, attribute, shared_frequency, vocab_projection
from analysis_lib.models import encode, single_token_id
from analysis_lib.neurons import NeuronId

PROMPTS = ["The nurse is a", "The person who enjoys gardening is a"]
WORDS = ["nurse", "gardening"]
TARGETS = [" woman", " man"]
FFN = ["ffnL25N9", "ffnL29N561", "ffnL11N1229", "ffnL3N7", "ffnL29N573"]
ATTN = ["attnL22H7D58", "attnL25H1D28", "attnL1H3D59", "attnL14H2D5"]
TOL = 2e-5


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _layers(model):
    return [l for l in model.original_model.model.layers]


def _unwrap(m):
    while hasattr(m, "_original_component"):
        m = m._original_component
    return m


@pytest.fixture(scope="module")
def reference(model):
    """Per prompt: everything the slow reference needs, straight from the bridge cache."""
    hf = model.original_model
    W = hf.lm_head.weight.detach()
    g = _unwrap(hf.model.norm).weight.detach()
    out = []
    for prompt, target in zip(PROMPTS, TARGETS):
        toks = encode(model, prompt).tokens
        with torch.inference_mode():
            _, cache = model.run_with_cache(toks)
        T = toks.shape[1]
        L = len(_layers(model))
        out.append({
            "T": T,
            "t": single_token_id(model, target),
            "scale": cache["ln_final.hook_scale"][0, -1, 0].float(),
            "x_mid": [cache[f"blocks.{l}.hook_resid_mid"][0].float() for l in range(L)],
            "x_pre": [cache[f"blocks.{l}.hook_resid_pre"][0].float() for l in range(L)],
            "m": [cache[f"blocks.{l}.mlp.hook_post"][0].float() for l in range(L)],
            "alpha": [cache[f"blocks.{l}.attn.hook_pattern"][0, :, -1, :].float() for l in range(L)],
            "v": [cache[f"blocks.{l}.attn.hook_v"][0].float() for l in range(L)],
        })
    return {"W": W, "g": g, "prompts": out}


def _lp(ref, x, t):
    z = ((x * ref["g"]) / ref["scale_now"]) @ ref["W"].T
    return torch.log_softmax(z.double(), -1)[..., t]


def _imp(ref, p, x, s):
    ref["scale_now"] = p["scale"]
    return float(_lp(ref, x + s, p["t"]) - _lp(ref, x, p["t"]))


def _weights(model, l):
    lay = _unwrap(_layers(model)[l])
    return _unwrap(lay.mlp), _unwrap(lay.self_attn), _unwrap(lay.input_layernorm)


def _ref_ffn(model, ref, p, nid):
    mlp, _, _ = _weights(model, nid.layer)
    s = p["m"][nid.layer][-1, nid.index] * mlp.down_proj.weight[:, nid.index]
    return _imp(ref, p, p["x_mid"][nid.layer][-1], s)


def _ref_attn_positions(model, ref, p, nid):
    _, attn, _ = _weights(model, nid.layer)
    grp = model.cfg.n_heads // model.cfg.n_key_value_heads
    dh = model.cfg.d_head
    col = attn.o_proj.weight[:, nid.head * dh + nid.dim]
    vals = []
    for q in range(p["T"]):
        coef = p["alpha"][nid.layer][nid.head, q] * p["v"][nid.layer][q, nid.head // grp, nid.dim]
        vals.append(_imp(ref, p, p["x_pre"][nid.layer][-1], coef * col))
    return vals


def _categories(model, prompt, word):
    from analysis_lib.attribution import position_category, word_positions

    T = encode(model, prompt).tokens.shape[1]
    wp = word_positions(model, prompt, word)
    return [POSITION_CATEGORIES.index(position_category(q, T, wp, True)) for q in range(T)]


@pytest.fixture(scope="module")
def attn_top(model):
    """Each prompt's top-30 attention neurons from the engine (the input of the query scores)."""
    return [list(attribute(model, pr, t, top_k=30, kinds=("attn_value",)).top("attn_value").id) for pr, t in zip(PROMPTS, TARGETS)]


@pytest.fixture(scope="module")
def scores(model, attn_top):
    return circuits.neuron_scores(model, PROMPTS, TARGETS, {"ffn_value": FFN, "attn_value": ATTN, "ffn_query": FFN},
                                  words=WORDS, attn_top=attn_top, contrasts=circuits.other_gender(TARGETS))


# ----------------------------------------------------------------------------- exact scores


def test_ffn_value_scores_match_reference(model, reference, scores):
    for i, p in enumerate(reference["prompts"]):
        for j, x in enumerate(FFN):
            want = _ref_ffn(model, reference, p, NeuronId.parse(x))
            got = scores.by_position["ffn_value"][i, j]
            assert got[POSITION_CATEGORIES.index("last")] == pytest.approx(want, abs=TOL)
            assert np.delete(got, POSITION_CATEGORIES.index("last")).tolist() == [0.0, 0.0, 0.0]


def test_attn_value_scores_by_position_match_reference(model, reference, scores):
    for i, (p, prompt, word) in enumerate(zip(reference["prompts"], PROMPTS, WORDS)):
        cats = _categories(model, prompt, word)
        for j, x in enumerate(ATTN):
            per_pos = _ref_attn_positions(model, reference, p, NeuronId.parse(x))
            want = np.zeros(len(POSITION_CATEGORIES))
            for q, v in enumerate(per_pos):
                want[cats[q]] += v
            np.testing.assert_allclose(scores.by_position["attn_value"][i, j], want, atol=TOL)


def test_ffn_query_scores_match_reference(model, reference, scores, attn_top):
    """Q(l, i) = sum_a m[l, p_a, i] <down_i, k_a> / <x_pre[L_a][p_a], k_a> * s_a, split by p_a."""
    grp = model.cfg.n_heads // model.cfg.n_key_value_heads
    dh = model.cfg.d_head
    for i, (p, prompt, word) in enumerate(zip(reference["prompts"], PROMPTS, WORDS)):
        cats = _categories(model, prompt, word)
        want = np.zeros((len(FFN), len(POSITION_CATEGORIES)))
        for a_id in attn_top[i][:30]:
            a = NeuronId.parse(a_id)
            s_a = _ref_attn_positions(model, reference, p, a)[a.position]
            _, attn, ln1 = _weights(model, a.layer)
            key = attn.v_proj.weight[(a.head // grp) * dh + a.dim] * ln1.weight
            den = float(p["x_pre"][a.layer][a.position] @ key)
            for j, x in enumerate(FFN):
                n = NeuronId.parse(x)
                if n.layer >= a.layer:
                    continue
                mlp, _, _ = _weights(model, n.layer)
                c = float(p["m"][n.layer][a.position, n.index] * (mlp.down_proj.weight[:, n.index] @ key)) / den
                want[j, cats[a.position]] += c * s_a
        np.testing.assert_allclose(scores.by_position["ffn_query"][i], want, atol=1e-5, rtol=1e-4)


def test_logodds_effects_match_reference(model, reference, scores):
    """Direct log-odds effect = change of (z_t - z_c), i.e. of log p(t) - log p(c)."""
    c_ids = [single_token_id(model, c) for c in circuits.other_gender(TARGETS)]
    for i, p in enumerate(reference["prompts"]):
        reference["scale_now"] = p["scale"]

        def lo(x):
            z = ((x * reference["g"]) / p["scale"]) @ reference["W"].T
            return float(z[p["t"]] - z[c_ids[i]])

        for j, x in enumerate(FFN):
            n = NeuronId.parse(x)
            mlp, _, _ = _weights(model, n.layer)
            base = p["x_mid"][n.layer][-1]
            want = lo(base + p["m"][n.layer][-1, n.index] * mlp.down_proj.weight[:, n.index]) - lo(base)
            assert scores.logodds_prompt["ffn_value"][i, j] == pytest.approx(want, abs=1e-4)
    total = scores.logodds["ffn_value"].sum(-1)
    for j, x in enumerate(FFN):
        n = NeuronId.parse(x)
        assert total[n.layer, n.index] == pytest.approx(scores.logodds_prompt["ffn_value"][:, j].sum(), abs=1e-9)
    at = scores.logodds["attn_value"].sum(-1)
    for j, x in enumerate(ATTN):
        n = NeuronId.parse(x)
        assert at[n.layer, n.head, n.dim] == pytest.approx(scores.logodds_prompt["attn_value"][:, j].sum(), abs=1e-9)


def test_logodds_ranking_is_sorted_and_consistent(scores):
    r = circuits.logodds_ranking(scores, "attn_value", 20)
    assert list(r["rank"]) == list(range(1, 21))
    assert (np.diff(r.score) <= 1e-12).all()
    shares = r[[f"share_{c}" for c in POSITION_CATEGORIES]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=1e-9)
    for row in r.itertuples():
        n = NeuronId.parse(row.id)
        assert n.layer == row.layer
        assert scores.logodds["attn_value"][n.layer, n.head, n.dim].sum() == pytest.approx(row.score)


# ----------------------------------------------------------------------------- summaries


def test_position_shares_sum_to_one(scores):
    for kind in ("attn_value", "ffn_query"):
        sh = circuits.position_shares(scores, kind, n_boot=50, seed=0)
        assert list(sh.position) == list(POSITION_CATEGORIES)
        assert sh.share.sum() == pytest.approx(1.0, abs=1e-9)
        bp = scores.by_position[kind].sum((0, 1))
        np.testing.assert_allclose(sh.share, bp / bp.sum(), atol=1e-12)


def test_neuron_position_table_dominant():
    t = pd.DataFrame({"id": ["a", "b"], "rank": [1, 2], "layer": [1, 2], "score": [1.0, 1.0],
                      "share_start": [0.9, 0.4], "share_word": [0.1, 0.3], "share_last": [0.0, 0.2],
                      "share_other": [0.0, 0.1], "important_position": ["start", "start"]})
    out = circuits.neuron_position_table(t)
    assert list(out.dominant) == ["start", "mixed"]


def test_control_summary_is_seeded_and_matches_means(scores):
    a = circuits.control_summary(scores, "ffn_value", FFN[:2], FFN[2:], n_boot=200, seed=3)
    b = circuits.control_summary(scores, "ffn_value", FFN[:2], FFN[2:], n_boot=200, seed=3)
    assert (a["top"].low, a["top"].high) == (b["top"].low, b["top"].high)
    tot = scores.total("ffn_value")
    assert a["top"].estimate == pytest.approx(tot[:, :2].sum(1).mean())
    assert a["random"].estimate == pytest.approx(tot[:, 2:].sum(1).mean())


def test_random_neurons_seeded_distinct_and_excluding(model):
    a = circuits.random_neurons(model, "ffn_value", 50, 7, exclude=FFN)
    assert a == circuits.random_neurons(model, "ffn_value", 50, 7, exclude=FFN)
    assert a != circuits.random_neurons(model, "ffn_value", 50, 8, exclude=FFN)
    assert len(set(a)) == 50 and not set(a) & set(FFN)
    for x in a:
        NeuronId.parse(x).validate(model)
    b = circuits.random_neurons(model, "attn_value", 30, 0, exclude=ATTN)
    assert len(set(b)) == 30 and not set(b) & set(ATTN)
    assert all(NeuronId.parse(x).position is None for x in b)


# ----------------------------------------------------------------------------- one prompt's path


def test_circuit_path_layers_and_edges(model):
    path = circuits.circuit_path(model, "The nurse is a", " woman", word="nurse", n_edges=1000)
    T = len(path.tokens)
    for r in path.nodes.itertuples():
        n = NeuronId.parse(r.id)
        assert n.layer == r.layer
        assert 0 <= r.position < T and r.token == path.tokens[r.position]
        if r.stage == "value FFN":
            assert r.position == T - 1
        if r.stage == "attention":
            assert n.position == r.position and n.head == r.head
    assert (path.edges.source_layer < path.edges.target_layer).all()
    for e in path.edges.itertuples():
        assert NeuronId.parse(e.source).layer == e.source_layer
        assert NeuronId.parse(e.target).layer == e.target_layer
        assert NeuronId.parse(e.target).position == e.position
    # with every edge kept, a query neuron's edges add up to its query score
    q = path.result.top("ffn_query", 8)
    sums = path.edges.groupby("source").weight.sum()
    for r in q.itertuples():
        assert sums.get(r.id, 0.0) == pytest.approx(r.score, rel=1e-5, abs=1e-8)
    # the word route: the strongest query neuron at the word and the attention neuron it feeds most
    route = circuits.word_route(path)
    at_word = path.nodes[(path.nodes.stage == "query FFN") & (path.nodes.category == "word")]
    if len(at_word):
        best = at_word.sort_values("score", ascending=False).iloc[0]
        assert route["query"] == best.id and route["query_layer"] == NeuronId.parse(best.id).layer
        fed = path.edges[path.edges.source == best.id]
        assert route["attn"] == (fed.sort_values("weight", ascending=False).target.iloc[0] if len(fed) else "none")
    else:
        assert route == {"query": "none", "query_layer": -1, "attn": "none"}


# ----------------------------------------------------------------------------- shared frequency


def test_shared_frequency_matches_engine():
    lists = [["ffnL1N1", "attnL2H0D3P1", "ffnL3N3"], ["ffnL1N1", "attnL2H0D3P4"], ["ffnL3N3", "ffnL4N4", "ffnL1N1"]]
    for K in (1, 2, 3):
        mine = circuits.shared_frequency_table(lists, K).set_index("id").frequency
        eng = shared_frequency(lists, K)
        pd.testing.assert_series_equal(mine.sort_index(), eng.sort_index(), check_names=False)
    s = circuits.shared_frequency_summary(lists, 3, n_boot=100, seed=0)
    # K = 3: ffnL1N1 in 3/3, attnL2H0D3 in 2/3 (positions dropped), ffnL3N3 in 2/3, ffnL4N4 in 1/3
    assert s["max"].estimate == pytest.approx(1.0)
    assert s["mean_top_K"].estimate == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)
    assert s["top_id"] == "ffnL1N1" and s["n_half"] == 3
    # K = 2: ffnL1N1 and the attention neuron in 2/3 each
    s1 = circuits.shared_frequency_summary(lists, 2, n_boot=100, seed=0)
    assert s1["max"].estimate == pytest.approx(2 / 3) and s1["mean_top_K"].estimate == pytest.approx(2 / 3)
    s2 = circuits.shared_frequency_summary(lists, 3, n_boot=100, seed=0)
    assert (s["mean_top_K"].low, s["mean_top_K"].high) == (s2["mean_top_K"].low, s2["mean_top_K"].high)
    # the chapter's report: one row per (kind, K), curves of the first K ranks
    table, curves, stats = circuits.shared_frequency_report({"ffn_value": lists}, [2, 3], names={"ffn_value": "FFN value"},
                                                            n_boot=100, seed=0)
    assert list(table.index) == [("FFN value", 2), ("FFN value", 3)]
    assert table.loc[("FFN value", 3), "neuron"] == "ffnL1N1" and table.loc[("FFN value", 3), "in ≥ half"] == 3
    assert table.loc[("FFN value", 3), "mean of K most shared"].startswith(f"{(1.0 + 2 / 3 + 2 / 3) / 3:.2f} [")
    assert stats[("ffn_value", 3)]["mean_top_K"].estimate == pytest.approx(s["mean_top_K"].estimate)
    assert len(curves[curves.K == 2]) == 2 and set(curves.kind) == {"FFN value"}


# ----------------------------------------------------------------------------- vocabulary projection


def test_projection_table_matches_vocab_projection(model):
    ids = ["ffnL29N573", "attnL25H1D28", "ffnL0N1"]
    p = circuits.projection_table(model, ids, k=6).set_index("id")
    for x in ids:
        top, last = vocab_projection(model, x, 6)
        assert p.loc[x, "top_tokens"] == top
        assert p.loc[x, "last_tokens"] == last


def test_token_gender():
    assert circuits.token_gender(" Woman") == "female"
    assert circuits.token_gender("herself") == "female"
    assert circuits.token_gender(" MEN") == "male"
    assert circuits.token_gender(" nurse") is None


def test_static_gender_neurons_score(model):
    st = circuits.static_gender_neurons(model, 3)
    assert (np.diff(st.gender_z.abs()) <= 1e-6).all()
    W = model.original_model.lm_head.weight.detach()
    g = _unwrap(model.original_model.model.norm).weight.detach()
    for r in st.itertuples():
        n = NeuronId.parse(r.id)
        mlp, _, _ = _weights(model, n.layer)
        z = (mlp.down_proj.weight[:, n.index] * g) @ W.T
        want = (z[single_token_id(model, " woman")] - z[single_token_id(model, " man")]) / z.std()
        assert r.gender_z == pytest.approx(float(want), rel=1e-4)
