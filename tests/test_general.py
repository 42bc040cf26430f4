"""General neurons (chapter 4): the finder's building blocks against a slow reference, the
seeded random control, and CNA importance with the original final-norm scale. Real default
model, no mocks.

The slow references here are written from the formulas of method_spec §1.1-1.2 and read the
bridge's cache and the Hugging Face weights directly; they share nothing with
``analysis_lib.general`` except the list of top attention neurons (whose exactness
``tests/test_attribution.py`` checks against a dense reference).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import general
from analysis_lib.attribution import attribute, forward_data
from analysis_lib.editing import mask_neurons
from analysis_lib.errors import StudyError
from analysis_lib.models import encode, single_token_id
from analysis_lib.neurons import NeuronId

CASES = [("The nurse is a", " woman", "nurse"), ("The engineer is a", " man", "engineer")]


# ----------------------------------------------------------------------------- slow references


def _cache(model, prompt, masked=()):
    toks = encode(model, prompt).tokens
    with mask_neurons(model, list(masked)), torch.inference_mode():
        logits, cache = model.run_with_cache(toks)
    return logits[0, -1], cache


@torch.no_grad()
def slow_query_by_position(model, prompt, target, attn_table):
    """Q(l, i) split by source position, one attention neuron at a time (method_spec §1.1).

    ``c_i(a) = m[l, p, i] <w_i, k_a> / <x_pre[L][p], k_a>`` with ``k_a = v_proj row (g(h), j) *
    input_layernorm.weight``; ``Q_p(l, i) = sum over a at position p of c_i(a) s_a``.
    """
    hf = model.original_model
    _, cache = _cache(model, prompt)
    L, dm = model.cfg.n_layers, model.cfg.d_mlp
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    dh = model.cfg.d_head
    T = cache["blocks.0.hook_resid_pre"].shape[1]
    out = torch.zeros(L, dm, T, dtype=torch.float64)
    for row in attn_table.itertuples():
        n = row.neuron
        lay = hf.model.layers[n.layer]
        g = n.head // group
        key = (lay.self_attn.v_proj.weight[g * dh + n.dim] * lay.input_layernorm.weight).double()
        den = float(cache[f"blocks.{n.layer}.hook_resid_pre"][0, n.position].double() @ key)
        for l in range(n.layer):
            w = hf.model.layers[l].mlp.down_proj.weight.double()  # [d_model, d_mlp]
            m = cache[f"blocks.{l}.mlp.hook_post"][0, n.position].double()  # [d_mlp]
            out[l, :, n.position] += m * (key @ w) / den * float(row.score)
    return out


@torch.no_grad()
def slow_importance(model, prompt, neuron, target_id, *, masked=(), scale_from_clean=True):
    """LP_t(x_mid + m w) - LP_t(x_mid) from raw hooks, read out with the clean run's final scale."""
    hf = model.original_model
    _, clean = _cache(model, prompt)
    _, run = _cache(model, prompt, masked)
    scale = (clean if scale_from_clean else run)["ln_final.hook_scale"][0, -1, 0].double()
    W = hf.lm_head.weight.double()
    g = hf.model.norm.weight.double()
    x = run[f"blocks.{neuron.layer}.hook_resid_mid"][0, -1].double()
    m = run[f"blocks.{neuron.layer}.mlp.hook_post"][0, -1, neuron.index].double()
    s = m * hf.model.layers[neuron.layer].mlp.down_proj.weight[:, neuron.index].double()

    def lp(v):
        return torch.log_softmax((v * g / scale) @ W.T, -1)[target_id]

    return float(lp(x + s) - lp(x))


# ----------------------------------------------------------------------------- finder building blocks


@pytest.mark.parametrize("prompt,target,word", CASES)
def test_query_positions_match_slow_reference(model, prompt, target, word):
    out = general.prompt_query_positions(model, prompt, target, word=word)
    ref = slow_query_by_position(model, prompt, target, out["attn"])
    assert out["target_id"] == single_token_id(model, target)
    np.testing.assert_allclose(out["q_start"], ref[..., 0].numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(out["q_total"], ref.sum(-1).numpy(), rtol=1e-4, atol=1e-7)
    wp = out["word_positions"]
    assert wp and 0 not in wp
    np.testing.assert_allclose(out["q_word"], ref[..., wp].sum(-1).numpy(), rtol=1e-4, atol=1e-7)
    # the coefficient at position 0 is the cache's
    _, cache = _cache(model, prompt)
    np.testing.assert_allclose(out["m_start"][3], cache["blocks.3.mlp.hook_post"][0, 0].numpy(), rtol=1e-6)
    # share of the attention score read from the start token, from the table
    tab = out["attn"]
    assert out["attn_share_start"] == pytest.approx(tab.score[tab.position == 0].sum() / tab.score.sum())


def test_scan_ranking_consistent_with_per_prompt_scores(model):
    prompts = pd.DataFrame({
        "set": ["commonwords", "commonwords", "race"],
        "prompt": ["The nurse is a", "The engineer is a", "Article: Tom has a dog.\nQuestion: What does Tom have?\nAnswer:"],
        "target": [" woman", " man", " a"],
        "word": ["nurse", "engineer", None],
    })
    prompts["target_id"] = [single_token_id(model, t) for t in prompts.target]
    scan = general.query_scan(model, prompts)
    assert scan.q_start.shape == (3, model.cfg.n_layers, model.cfg.d_mlp)
    one = general.prompt_query_positions(model, prompts.prompt[1], " man", word="engineer")
    np.testing.assert_allclose(scan.q_start[1], one["q_start"], rtol=1e-5, atol=1e-8)
    rk = general.rank_general(scan, top=10)
    # start score = mean over sets of the per-set mean
    L, D = scan.shape
    top = rk.iloc[0]
    q = scan.q_start[:, top.layer, top["index"]]
    assert top.start_score == pytest.approx((q[:2].mean() + q[2]) / 2, rel=1e-5)
    assert top.general and top.share_start >= 0.5
    assert rk.start_score[rk.general].is_monotonic_decreasing
    # the activation at the start token is identical in every prompt (causal attention)
    # (up to float32 rounding: a prompt of another length runs other matmul blockings, and the rounding of
    # the massive start activations (|m| up to ~3000) carries through 30 layers. With torch 2.11's CPU
    # kernels the longer RACE prompt differed by up to 7e-4 (at |m| ~ 3064) and exceeded rtol=1e-5 by up to 1.5e-5
    # (np.allclose's default atol is 1e-8); atol=1e-4 is still ~1000x below the typical
    # |m| of 0.1-1 that a start position seeing later tokens would change)
    assert np.allclose(scan.m_start[0], scan.m_start[1], rtol=1e-5, atol=1e-4)
    assert np.allclose(scan.m_start[0], scan.m_start[2], rtol=1e-5, atol=1e-4)
    gd = general.rank_gender(scan, exclude=list(rk.id[:2]))
    assert not set(gd.id) & set(rk.id[:2])
    # per-prompt long table: one row per (neuron, prompt), values read from the scan
    long = scan.per_prompt(list(rk.id[:2]))
    assert len(long) == 2 * len(prompts) and list(long.set[:3]) == list(prompts.set)
    n = NeuronId.parse(rk.id[1])
    np.testing.assert_array_equal(long[long.id == rk.id[1]].q_start.to_numpy(), scan.q_start[:, n.layer, n.index])


def test_bias_wide_formats_intervals():
    table = pd.DataFrame({
        "condition": ["original", "general", "original"], "benchmark": ["stereoset", "stereoset", "bbq"],
        "variant": ["intrasentence"] * 2 + ["Gender_identity"], "metric": ["ss", "ss", "s_dis"],
        "ideal": [50.0, 50.0, 0.0], "estimate": [61.234, 55.0, 0.1], "low": [58.0, 51.5, -0.05], "high": [64.5, 58.25, 0.2],
    })
    wide = general.bias_wide(table, ["original", "general", "absent"])
    assert list(wide.columns) == ["original", "general"]
    assert wide.loc[("stereoset", "intrasentence", "ss", "50.0"), "original"] == "61.2 [58, 64.5]"
    assert pd.isna(wide.loc[("bbq", "Gender_identity", "s_dis", "0.0"), "general"])


def test_start_token_policy_restores(model):
    before = (model.start_token, model.start_token_id)
    with general.start_token_policy(model, "<|endoftext|>"):
        assert model.start_token_id == 0
        assert encode(model, "Hi").tokens[0, 0].item() == 0
    with general.start_token_policy(model, "none"):
        assert model.start_token_id is None
    assert (model.start_token, model.start_token_id) == before


# ----------------------------------------------------------------------------- random control


def test_random_draws_seeded_and_deterministic(model):
    gen = ["ffnL11N1229", "ffnL2N430"]
    a = general.random_same_layer(model, gen, 20, seed=0)
    b = general.random_same_layer(model, gen, 20, seed=0)
    assert a == b and len(a) == 20
    # draw k does not depend on how many draws are asked for
    assert general.random_same_layer(model, gen, 5, seed=0) == a[:5]
    assert general.random_same_layer(model, gen, 5, seed=1) != a[:5]
    for d in a:
        assert [x.split("N")[0] for x in d] == ["ffnL11", "ffnL2"]  # same layers, same order
        assert not set(d) & set(gen)
        assert len(set(d)) == len(d)
    # two neurons of one layer: two distinct draws from that layer
    for d in general.random_same_layer(model, ["ffnL11N1229", "ffnL11N1487"], 10, seed=3):
        assert d[0] != d[1] and all(x.startswith("ffnL11N") for x in d)


def test_general_vs_random_empirical_p():
    rows = [("original", "original", 0.5), ("general", "general", 0.1)] + [(f"r{k}", "random", 0.5 - 0.01 * k) for k in range(9)]
    t = pd.DataFrame([{"condition": c, "kind": k, "task": "x", "metric": "accuracy", "value": v} for c, k, v in rows])
    r = general.general_vs_random(t, "general").iloc[0]
    assert r.frac_random_as_extreme == pytest.approx(1 / 10)
    assert r.random_min == pytest.approx(0.42) and r.n_random == 9


# ----------------------------------------------------------------------------- CNA


def test_cna_importance_uses_original_scale(model):
    prompt, masked = "3+5=", ["ffnL11N1229", "ffnL11N1487"]
    clean = forward_data(model, prompt, None)[0]
    t = clean.target_id
    with mask_neurons(model, masked):
        mdata = forward_data(model, prompt, t)[0]
    neuron = attribute(model, prompt, t, top_k=3, kinds=("ffn_value",)).neurons("ffn_value")[0]
    # the masked run's scale really differs, so the test can tell the two readouts apart
    assert abs(float(mdata.scale) / float(clean.scale) - 1) > 1e-3
    got = general.ffn_importance(model, mdata, [neuron], scale=clean.scale)[0]
    ref = slow_importance(model, prompt, neuron, t, masked=masked)
    assert got == pytest.approx(ref, abs=1e-5)
    own = general.ffn_importance(model, mdata, [neuron])[0]
    assert own == pytest.approx(slow_importance(model, prompt, neuron, t, masked=masked, scale_from_clean=False), abs=1e-5)
    assert abs(own - got) > 1e-4
    # unmasked, with its own scale: the attribution engine's exact score
    res = attribute(model, prompt, t, top_k=3, kinds=("ffn_value",))
    np.testing.assert_allclose(general.ffn_importance(model, clean, res.neurons("ffn_value")),
                               res.top("ffn_value").score.to_numpy(), atol=1e-5)


def test_cna_table_columns(model):
    tab = general.cna_table(model, "3+5=", ["ffnL11N1229"], n_top=5, n_shortlist=0)
    assert len(tab) == 5 and tab.top_orig.all()
    np.testing.assert_allclose(tab.cna, tab.imp_orig - tab.imp_masked)
    assert (tab.sign_flip == (np.sign(tab.coef_orig) != np.sign(tab.coef_masked))).all()
    assert tab.imp_orig.is_monotonic_decreasing
    # masking nothing changes nothing
    same = general.cna_table(model, "3+5=", [], n_top=5, n_shortlist=0)
    np.testing.assert_allclose(same.imp_orig, same.imp_masked, atol=1e-9)
    assert not same.sign_flip.any()


def test_collapse_verdict_hand_computed():
    # control subsets: 20 random draws; the general condition beyond all of them on both tasks
    rows = [("arithmetic_1digit", "original", "base", 0.325), ("arithmetic_1digit", "general", "general", 0.025),
            ("race", "original", "base", 0.30), ("race", "general", "general", 0.20)]
    rows += [(t, f"random {i}", "random", v) for i in range(20) for t, v in (("arithmetic_1digit", 0.33), ("race", 0.30))]
    control = pd.DataFrame(rows, columns=["task", "condition", "kind", "value"]).assign(metric="accuracy")
    vs = general.general_vs_random(control, "general")
    assert vs.set_index("task").frac_random_as_extreme.tolist() == pytest.approx([1 / 21, 1 / 21])
    # from the control subsets: arithmetic loses 0.3/0.325 = 92 %; RACE (chance 1/4) 0.1/0.05 = 200 %
    cv = general.collapse_verdict(vs)
    assert cv["arith_drop"] == pytest.approx(0.3 / 0.325) and cv["race_drop"] == pytest.approx(2.0)
    assert cv["verdict"] == "reproduced"
    # from the main subsets the chapter quotes: 28 % -> 8 % loses 20/28 = 71 %; RACE 38.1 -> 28.6 %
    # loses (0.381 - 0.286) / (0.381 - 0.25) = 72.5 %
    main = pd.DataFrame([("arithmetic_1digit", "original", 0.28), ("arithmetic_1digit", "general", 0.08),
                         ("race", "original", 0.381), ("race", "general", 0.286)], columns=["task", "condition", "value"])
    cv = general.collapse_verdict(vs, main)
    assert cv["arith_drop"] == pytest.approx(20 / 28) and cv["race_drop"] == pytest.approx(0.095 / 0.131)
    assert cv["verdict"] == "reproduced"
    # a RACE drop of 20 % of the headroom and arithmetic at 71 %: partly
    main.loc[3, "value"] = 0.381 - 0.2 * 0.131
    assert general.collapse_verdict(vs, main)["verdict"] == "partly reproduced"
    # a drop that some random draw matches does not count, however large
    control.loc[control.condition == "random 3", "value"] = 0.0
    assert general.collapse_verdict(general.general_vs_random(control, "general"), main)["verdict"] == "not reproduced"
    with pytest.raises(StudyError, match="no 'original' and 'masked'"):
        general.collapse_verdict(vs, main, condition="masked")


def test_replicate_text_reads_the_summary():
    s = {"model": "gemma3-270m", "layers": 18, "general": "ffnL10N1386, ffnL7N1455", "general_layers": "10, 7",
         "share_start": 0.9996, "m_start": -0.0123456, "are_massive": False, "top_massive": "ffnL0N1405, ffnL0N1702",
         "race: as is → masked": "20.0 → 20.0", "race: random draws": "20.0–20.0",
         "race: largest start activations masked": "30.0"}
    text = general.replicate_text(s)
    assert text == ("In gemma3-270m (18 layers) the top general neurons are ffnL10N1386, ffnL7N1455 (layers 10, 7); "
                    "100% of the first one's query score sits at the start token, where its coefficient is -0.0123. "
                    "The model's largest start-token activation belongs to ffnL0N1405, ffnL0N1702 instead. "
                    "Masking them: race 20.0 → 20.0 (random draws of two same-layer neurons: race 20.0–20.0). "
                    "Masking the two largest start-token activations instead (ffnL0N1405, ffnL0N1702): race 30.0.")
    s.update(are_massive=True, m_start=3064.8)
    del s["race: largest start activations masked"]
    text = general.replicate_text(s)
    assert "coefficient is 3,064.8." in text and "They are also the model's largest" in text
    assert "instead" not in text and "`" not in text and "$" not in text


def test_metric_scale_and_condition_table_hand_computed():
    assert general.metric_scale("accuracy") == (100, 1)
    assert general.metric_scale("perplexity") == (1, 2)
    table = pd.DataFrame([
        ("original", "race", "accuracy", 0.381, 0.3, 0.45, 0.25),
        ("original", "neutral", "perplexity", 28.044, 27.1, 29.0, float("nan")),
        ("general", "race", "accuracy", 0.286, 0.2125, 0.36, 0.25),
        ("general", "neutral", "perplexity", 363.0, 300.456, 420.0, float("nan")),
    ], columns=["condition", "task", "metric", "value", "ci_low", "ci_high", "chance"])
    wide = general.condition_table(table)
    assert wide.loc["original", "race"] == "38.1 [30.0, 45.0]"
    assert wide.loc["general", "neutral"] == "363.00 [300.46, 420.00]"
    assert wide.loc["chance"].tolist() == ["25", "–"]


# ----------------------------------------------------------------------------- sinks


def test_start_residual_matches_the_hidden_states(model):
    """The hook-read residual at every depth equals Hugging Face's hidden states (which hold the
    embedding and the output of every block but the last, whose entry is after the final norm),
    and the start token's norm is the same whatever follows it (attention is causal)."""
    prompts = ["The nurse said that", "3+5="]
    res = general.start_residual(model, prompts)
    ids = torch.tensor([[model.start_token_id] + general.token_ids(model, prompts[0])])
    with torch.inference_mode():
        hs = model.original_model(input_ids=ids, output_hidden_states=True).hidden_states
    L = len(hs) - 1
    ref = torch.stack([h[0, 0] for h in hs[:L]]).float().numpy()  # depths 0 .. L-1
    np.testing.assert_allclose(res["resid_start"][:L], ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(res["norm_start"][:L], np.linalg.norm(ref, axis=-1), rtol=1e-5)
    other = general.start_residual(model, prompts[1:])
    np.testing.assert_allclose(other["norm_start"], res["norm_start"], rtol=1e-4)
    assert res["m_start"].shape == (L, model.cfg.d_mlp) and res["norm_other"].shape == (2, L + 1)


def test_find_sinks_and_the_shallow_verdict_by_hand():
    """Ratios 1, 2.5, 5, 11, 10, 1.2, 180, 170 over depths 0-7 (blocks -1..6). Writing blocks
    multiply the ratio by >= 2: block 0 (2.5), block 1 (2.0), block 2 (2.2) -> one sink L0-L2
    (ratio 11 >= 5), and block 5 (150x) -> a second sink L5; block 4 divides 10 by 8.3 >= 2, so
    it erases the first sink. With 40 layers the shallow limit is max(2, 40 // 8) = 5: both are
    shallow; with 8 layers the limit is 2 and only L0-L2 is."""
    ratio = np.array([1, 2.5, 5, 11, 10, 1.2, 180, 170])
    other = np.full(8, 10.0)
    prof = pd.DataFrame({"depth": np.arange(8), "block": np.arange(8) - 1, "norm_start": ratio * other,
                         "norm_other": other, "ratio": ratio})
    s = general.find_sinks(prof)
    assert list(s.layers) == ["L0–L2", "L5"]
    assert s.loc[0, "erased_at"] == 4 and s.loc[1, "erased_at"] == -1
    assert s.loc[0, "norm_before"] == 10.0 and s.loc[0, "norm_after"] == 110.0
    v = general.shallow_verdict(s, general_layers=[5], n_layers=8)
    assert v["verdict"] == "partly reproduced" and v["shallow"] == ["L0–L2"] and v["general_sink"] == "L5"
    assert general.shallow_verdict(s, [1], 8)["verdict"] == "reproduced"
    assert general.shallow_verdict(s.iloc[1:], [5], 8)["verdict"] == "not reproduced"


def test_sink_writers_sum_to_the_ffn_write(model):
    """Each writer's write m·(w·u) is recomputed from the weights, and the FFN output at the start
    token projected on u equals the sum of all neurons' writes (down_proj has no bias here)."""
    res = general.start_residual(model, ["The nurse said that"])
    prof = general.norm_profile(res)
    sinks = general.find_sinks(prof)
    assert len(sinks) >= 1
    row = sinks.iloc[-1].to_dict()
    w = general.sink_writers(model, res, row, cover=0.8)
    assert w["writer"].iloc[0] and w["write"].is_monotonic_decreasing
    u = res["resid_start"][row["last_block"] + 1]
    u = u / np.linalg.norm(u)
    l = int(w.layer.iloc[0])
    W = model.original_model.model.layers[l].mlp.down_proj.weight.detach().double().numpy()
    i = NeuronId.parse(w.id.iloc[0]).index
    assert w.write.iloc[0] == pytest.approx(res["m_start"][l][i] * (u @ W[:, i]), rel=1e-6)
    writes = res["m_start"][l].astype(np.float64) * (u @ W)
    ffn_out = W @ res["m_start"][l].astype(np.float64)
    assert writes.sum() == pytest.approx(ffn_out @ u, rel=1e-6)


def test_start_residual_without_a_start_token(model):
    """With no start token, position 0 is each prompt's first word: the norm there is the median
    over prompts of Hugging Face's hidden-state norms at position 0, and the policy is restored."""
    prompts = ["The nurse said that", "3+5=", "My neighbour is"]
    start_id = model.start_token_id
    with general.start_token_policy(model, None):
        res = general.start_residual(model, prompts)
    assert model.start_token_id == start_id
    norms = []
    for p in prompts:
        ids = torch.tensor([general.token_ids(model, p)])
        with torch.inference_mode():
            hs = model.original_model(input_ids=ids, output_hidden_states=True).hidden_states
        norms.append([float(h[0, 0].float().norm()) for h in hs[:-1]])
    L = len(norms[0])
    np.testing.assert_allclose(res["norm_start"][:L], np.median(np.array(norms), axis=0), rtol=1e-5)


def test_sink_survey_repeats_the_steps(model):
    """One start policy, no masking: the survey's profile, sinks and writers are those of the
    steps run by hand, labelled with the start token."""
    prompts = ["The nurse said that", "3+5="]
    sv = general.sink_survey(model, prompts, starts=("default",))
    res = general.start_residual(model, prompts)
    prof = general.norm_profile(res)
    sinks = general.find_sinks(prof)
    assert set(sv.profiles.start) == {model.start_token} and sv.masking.empty
    pd.testing.assert_frame_equal(sv.profiles.drop(columns="start"), prof)
    pd.testing.assert_frame_equal(sv.sinks.drop(columns="start"), sinks)
    by_hand = pd.concat([general.sink_writers(model, res, r, cover=0.8).assign(sink=r["layers"])
                         for r in sinks.to_dict("records")], ignore_index=True)
    pd.testing.assert_frame_equal(sv.writers.drop(columns="start"), by_hand)
