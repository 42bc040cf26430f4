"""Neuron edits: exact restoration, exact effect of an ablation, attention neurons under GQA,
positional attention neurons, copies, and saved edits."""

from __future__ import annotations

import json

import pytest
import torch

from analysis_lib import editing
from analysis_lib.editing import (
    EditSpec,
    apply_edit,
    has_position_hooks,
    load_edit,
    mask_neurons,
    masked_copy,
    save_edit,
    scale_neurons,
)
from analysis_lib.errors import EditError, NeuronIdError
from analysis_lib.models import encode, kv_cache_kwargs, kv_cache_of
from analysis_lib.neurons import NeuronId, hf_layer, unwrap

PROMPTS = ["The nurse is a", "3+5=", "The capital of France is"]
FFN = "ffnL2N703"
ATTN = "attnL3H4D17"  # SmolLM2: 9 query heads, 3 KV heads -> head 4 reads KV head 1 with heads 3 and 5


@pytest.fixture(scope="module")
def enc(model):
    return encode(model, PROMPTS)


def _logits(model, tokens):
    with torch.inference_mode():
        return model(tokens).clone()


def _weights(model, layer):
    lay = hf_layer(model, layer)
    attn, mlp = unwrap(lay.self_attn), unwrap(lay.mlp)
    return {name: unwrap(getattr(mod, name)).weight.detach().clone()
            for mod, names in ((attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                               (mlp, ("gate_proj", "up_proj", "down_proj")))
            for name in names}


def test_mask_restores_bit_exact(model, enc):
    before = _logits(model, enc.tokens)
    w2, w3 = _weights(model, 2), _weights(model, 3)
    with mask_neurons(model, [FFN, ATTN, "attnL3H4D17P0"]) as ids:
        assert [str(i) for i in ids] == [FFN, ATTN, "attnL3H4D17P0"]
        inside = _logits(model, enc.tokens)
        assert not torch.equal(inside, before)
    assert torch.equal(_logits(model, enc.tokens), before)
    for layer, saved in ((2, w2), (3, w3)):
        now = _weights(model, layer)
        assert all(torch.equal(now[k], saved[k]) for k in saved), layer
    assert not has_position_hooks(model)


def test_restores_after_exception(model, enc):
    before = _logits(model, enc.tokens)
    hp = model.hook_dict["blocks.5.attn.hook_z"]
    n_hooks = len(hp.fwd_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with mask_neurons(model, [FFN, "ffnL10N5", "attnL5H0D1", "attnL5H1D2P1"]):
            assert has_position_hooks(model)
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, enc.tokens), before)
    assert len(hp.fwd_hooks) == n_hooks and not has_position_hooks(model)


def test_nested_and_repeated_edits_restore(model, enc):
    before = _logits(model, enc.tokens)
    with mask_neurons(model, [FFN, FFN, "ffnl2n703"]) as ids:  # duplicates and case are folded
        assert ids == [NeuronId.parse(FFN)]
        with scale_neurons(model, [FFN, "ffnL2N5"], 3.0):
            with mask_neurons(model, [ATTN]):
                pass
    assert torch.equal(_logits(model, enc.tokens), before)


def test_ffn_mask_removes_exactly_its_contribution(model, enc):
    n = NeuronId.parse(FFN)
    layer, i = n.layer, n.index
    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.hook_resid_mid"]
    names += [f"blocks.{k}.hook_resid_post" for k in range(layer)]
    with torch.inference_mode():
        _, clean = model.run_with_cache(enc.tokens, names_filter=names)
        with mask_neurons(model, [n]):
            _, edited = model.run_with_cache(enc.tokens, names_filter=names)
    m_i = clean[f"blocks.{layer}.mlp.hook_post"][..., i]  # [batch, pos]
    w_i = unwrap(hf_layer(model, layer).mlp).down_proj.weight[:, i].detach()
    expected = clean[f"blocks.{layer}.hook_mlp_out"] - m_i[..., None] * w_i
    err = (edited[f"blocks.{layer}.hook_mlp_out"] - expected).abs()
    # float32 rounding grows with the value: hook_mlp_out reaches ~480 at the start token, where
    # one ulp is 3.05e-5, and torch builds differ there by that ulp (torch 2.11's CPU kernels
    # gave 3.05e-5 against an absolute 1e-5). So each element is bounded by 1e-5 plus 1e-6 of
    # its own magnitude (8-17 ulps): at ordinary positions (|value| of a few units) the bound
    # stays ~1e-5, far below |m_i w_i|, so a wrong or missing mask still fails everywhere.
    bound = 1e-5 + 1e-6 * clean[f"blocks.{layer}.hook_mlp_out"].abs()
    assert (err <= bound).all(), (err.max().item(), (err - bound).max().item())
    assert m_i.abs().max().item() > 1e-3  # the neuron is active, so the check has teeth
    # the coefficient itself and everything upstream are untouched
    for name in names:
        if name != f"blocks.{layer}.hook_mlp_out":
            assert torch.equal(clean[name], edited[name]), name


def test_scale_factor_one_is_identity_and_two_doubles(model, enc):
    before = _logits(model, enc.tokens)
    with scale_neurons(model, [FFN, ATTN], 1.0):
        assert torch.equal(_logits(model, enc.tokens), before)
    n = NeuronId.parse(FFN)
    name = f"blocks.{n.layer}.hook_mlp_out"
    with torch.inference_mode():
        _, clean = model.run_with_cache(enc.tokens, names_filter=[name, f"blocks.{n.layer}.mlp.hook_post"])
        with scale_neurons(model, [n], 2.0):
            _, edited = model.run_with_cache(enc.tokens, names_filter=[name])
    w_i = unwrap(hf_layer(model, n.layer).mlp).down_proj.weight[:, n.index].detach()
    m_i = clean[f"blocks.{n.layer}.mlp.hook_post"][..., n.index]
    err = (edited[name] - clean[name] - m_i[..., None] * w_i).abs()
    # bounded relative to each element's magnitude, as in test_ffn_mask_removes_exactly_its_contribution
    # (one float32 ulp of the ~480 start-token value is 3.05e-5 and differs between torch builds)
    bound = 1e-5 + 1e-6 * clean[name].abs()
    assert (err <= bound).all(), (err.max().item(), (err - bound).max().item())


def test_attention_mask_equals_zeroing_hook_z(model, enc):
    n = NeuronId.parse(ATTN)

    def zero(z, hook):
        z = z.clone()
        z[:, :, n.head, n.dim] = 0.0
        return z

    with torch.inference_mode():
        hooked = model.run_with_hooks(enc.tokens, fwd_hooks=[(f"blocks.{n.layer}.attn.hook_z", zero)])
    before = _logits(model, enc.tokens)
    with mask_neurons(model, [n]):
        masked = _logits(model, enc.tokens)
    assert (masked - hooked).abs().max().item() <= 1e-5
    assert (masked - before).abs().max().item() > 1e-4


def test_attention_mask_removes_exactly_its_contribution(model, enc):
    """Under GQA the value row is shared by 3 query heads: v_proj stays as it is, and the
    attention output loses exactly z[..., h, j] * o_proj[:, h*d_head + j]."""
    n = NeuronId.parse(ATTN)
    attn = unwrap(hf_layer(model, n.layer).self_attn)
    v_before = attn.v_proj.weight.detach().clone()
    names = [f"blocks.{n.layer}.attn.hook_z", f"blocks.{n.layer}.hook_attn_out"]
    with torch.inference_mode():
        _, clean = model.run_with_cache(enc.tokens, names_filter=names)
        with mask_neurons(model, [n]):
            assert torch.equal(attn.v_proj.weight, v_before)
            _, edited = model.run_with_cache(enc.tokens, names_filter=names)
    z = clean[names[0]]
    assert torch.equal(z, edited[names[0]])  # upstream of o_proj: every head's z is intact
    col = attn.o_proj.weight[:, n.head * model.cfg.d_head + n.dim].detach()
    expected = clean[names[1]] - z[:, :, n.head, n.dim, None] * col
    assert (edited[names[1]] - expected).abs().max().item() <= 1e-5
    assert z[:, :, n.head, n.dim].abs().max().item() > 1e-3


def test_positional_attention_mask(model, enc):
    n = NeuronId.parse(ATTN)
    layer, h, j = n.layer, n.head, n.dim
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    store = {}

    def keep(key):
        def hook(t, hook):
            store[key] = t.clone()
        return hook

    def remove_p0(z, hook):
        z = z.clone()
        z[:, :, h, j] -= store["pattern"][:, h, :, 0] * store["v"][:, 0, h // group, j][:, None]
        return z

    with torch.inference_mode():
        manual = model.run_with_hooks(enc.tokens, fwd_hooks=[
            (f"blocks.{layer}.attn.hook_v", keep("v")),
            (f"blocks.{layer}.attn.hook_pattern", keep("pattern")),
            (f"blocks.{layer}.attn.hook_z", remove_p0),
        ])
    with mask_neurons(model, [n.at(0)]):
        assert has_position_hooks(model)
        model.reset_hooks()  # the edit's hooks are permanent: they survive this
        pos0 = _logits(model, enc.tokens)
    assert (pos0 - manual).abs().max().item() <= 1e-5
    # all positions together equal the aggregated (weight) edit
    T = enc.tokens.shape[1]
    with mask_neurons(model, [n.at(p) for p in range(T)]):
        every = _logits(model, enc.tokens)
    with mask_neurons(model, [n]):
        aggregated = _logits(model, enc.tokens)
    assert (every - aggregated).abs().max().item() <= 1e-4
    # a position beyond the prompt does not exist: no change
    before = _logits(model, enc.tokens)
    with mask_neurons(model, [n.at(T + 5)]):
        assert torch.equal(_logits(model, enc.tokens), before)


def test_positional_mask_refuses_kv_cache(model):
    hf = model.original_model
    ids = encode(model, "The nurse is a").tokens
    with mask_neurons(model, [NeuronId.parse(ATTN).at(0)]):
        with torch.inference_mode():
            out = hf.model(input_ids=ids, use_cache=True)
            with pytest.raises(EditError, match="KV cache"):
                hf.model(input_ids=ids[:, :1], **kv_cache_kwargs(hf.model, kv_cache_of(out, ids.shape[1])))
    assert not has_position_hooks(model)


def test_masked_copy_leaves_original(model, enc):
    before = _logits(model, enc.tokens)
    copy_ = masked_copy(model, [FFN, ATTN, "attnL3H4D17P0"])
    try:
        assert torch.equal(_logits(model, enc.tokens), before)
        assert copy_.study_name == model.study_name and copy_.start_token_id == model.start_token_id
        assert copy_.edit_neurons == [FFN, ATTN, "attnL3H4D17P0"]
        with mask_neurons(model, [FFN, ATTN, "attnL3H4D17P0"]):
            masked = _logits(model, enc.tokens)
        assert torch.equal(_logits(copy_, enc.tokens), masked)
        assert not has_position_hooks(model)
    finally:
        del copy_


def test_no_copy_inside_positional_edit(model):
    with mask_neurons(model, ["attnL3H4D17P0"]):
        with pytest.raises(EditError, match="outside"):
            masked_copy(model, [FFN])
    assert not has_position_hooks(model)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("ffnL30N0", "valid layers are 0..29"),
        ("ffnL2N1536", "0..1535"),
        ("attnL3H9D0", "0..8"),
        ("attnL3H0D64", "0..63"),
        ("ffn2_703", "Cannot parse"),
        ("attnL3N5", "Cannot parse"),
    ],
)
def test_bad_ids_raise_with_ranges(model, bad, needle):
    before = unwrap(hf_layer(model, 2).mlp).down_proj.weight.detach().clone()
    with pytest.raises(NeuronIdError, match=needle) as info:
        with mask_neurons(model, [FFN, bad]):
            pass
    assert "entry 1" in str(info.value)
    assert torch.equal(unwrap(hf_layer(model, 2).mlp).down_proj.weight, before)  # nothing applied


def test_bad_factor(model):
    with pytest.raises(EditError, match="finite"):
        with scale_neurons(model, [FFN], float("nan")):
            pass


def test_edit_roundtrip_and_apply(model, enc, tmp_path):
    path = save_edit(tmp_path / "edit.json", [FFN, ATTN], model=model, selection="test",
                     metadata={"k": 2, "scores": torch.tensor([1.5, 2.0])})
    data = json.loads(path.read_text())
    assert data["model"] == "smollm2-135m-instruct" and data["start_token"] == "<|im_start|>"
    assert data["neurons"] == [FFN, ATTN] and data["metadata"]["scores"] == [1.5, 2.0]
    spec = load_edit(path)
    assert spec == EditSpec([FFN, ATTN], "smollm2-135m-instruct", "<|im_start|>", 0.0, "test",
                            {"k": 2, "scores": [1.5, 2.0]})
    before = _logits(model, enc.tokens)
    with mask_neurons(model, [FFN, ATTN]):
        masked = _logits(model, enc.tokens)
    with apply_edit(model, path) as applied:
        assert applied == spec
        assert torch.equal(_logits(model, enc.tokens), masked)
    assert torch.equal(_logits(model, enc.tokens), before)


def test_apply_edit_refuses_mismatch(model, tmp_path):
    wrong_model = EditSpec([FFN], "gemma3-270m", "<bos>")
    with pytest.raises(EditError, match="made for model 'gemma3-270m'"):
        with apply_edit(model, wrong_model):
            pass
    wrong_start = EditSpec([FFN], "smollm2-135m-instruct", "<|endoftext|>")
    with pytest.raises(EditError, match="start token"):
        with apply_edit(model, wrong_start):
            pass
    with apply_edit(model, wrong_start, check_start_token=False):
        pass
    out_of_range = EditSpec(["ffnL99N0"], "smollm2-135m-instruct", "<|im_start|>")
    with pytest.raises(NeuronIdError, match="valid layers"):
        with apply_edit(model, out_of_range):
            pass
    with pytest.raises(NeuronIdError, match="Cannot parse"):
        EditSpec(["nonsense"], "smollm2-135m-instruct", None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EditError, match="not valid JSON"):
        load_edit(bad)
    with pytest.raises(EditError, match="No edit file"):
        load_edit(tmp_path / "missing.json")
    bad.write_text(json.dumps({"format": editing.EDIT_FORMAT, "neurons": [FFN]}))
    with pytest.raises(EditError, match="lacks"):
        load_edit(bad)
    with pytest.raises(EditError, match="needs the loaded model"):
        save_edit(tmp_path / "x.json", [FFN])
