"""Fine-tuning baseline and neuron-restricted fine-tuning on the real default model (few steps)."""

from __future__ import annotations

import pytest
import torch

from analysis_lib import finetune as ft
from analysis_lib import neuron_editing as ne
from analysis_lib.commonwords import load_commonwords, to_frame
from analysis_lib.errors import EditError, ParameterError
from analysis_lib.neurons import hf_model, weights_version
from analysis_lib.scoring import next_token_logprobs

# late layers: the backward pass stops at layer 26, which keeps the restricted test fast
NEURONS = ["ffnL27N336", "ffnL29N561", "attnL28H3D35"]
PROBE = ["The nurse is a", "The engineer is a", "Once upon a time there was"]


@pytest.fixture(scope="module")
def prompts():
    words = to_frame(load_commonwords(0))
    return ne.subset_words(words[words.split == "train"], 4, 0).prompt.tolist()


@pytest.fixture(scope="module")
def kl_texts():
    return ne.guard_and_eval_texts(1, 1)[0]


@pytest.fixture(scope="module")
def before(model):
    """The caller's model before any fine-tuning: full next-token log-probs and weight versions."""
    return next_token_logprobs(model, PROBE), weights_version(model)


@pytest.fixture(scope="module")
def lora(model, prompts, kl_texts, before):
    return ft.finetune_lora(model, prompts, kl_texts, steps=3, lr=1e-3, beta=1.0, rank=4, seed=0, progress=False)


@pytest.fixture(scope="module")
def restricted(model, prompts, kl_texts, before):
    return ft.finetune_neurons(model, NEURONS, prompts, kl_texts, steps=3, lr=3e-3, beta=1.0, seed=0,
                               progress=False)


def test_original_model_untouched(model, before, lora, restricted):
    logp, version = before
    assert torch.equal(next_token_logprobs(model, PROBE), logp)  # bit-identical
    assert weights_version(model) == version  # no parameter replaced or modified in place
    assert all(p.grad is None for p in hf_model(model).parameters())
    for res in (lora, restricted):
        assert res.model is not model
        assert not torch.equal(next_token_logprobs(res.model, PROBE), logp)


def test_lora_lowers_the_objective(model, prompts, lora):
    h = lora.history
    assert list(h.step) == [0, 1, 2, 3]
    assert h.kl.iloc[0] == pytest.approx(0.0, abs=1e-6)  # B = 0: training starts at the original
    assert h.bias_loss.iloc[0] == pytest.approx(ft.bias_objective(model, prompts), rel=1e-4)
    assert h.bias_loss.iloc[-1] < h.bias_loss.iloc[0]
    assert ft.bias_objective(lora.model, prompts) == pytest.approx(h.bias_loss.iloc[-1], rel=1e-3)
    assert lora.n_trainable > 0 and lora.settings["rank"] == 4
    # adapters are merged: the copy has no hooks left on its linear layers
    lin = ft._linear(lora.model, 0, "q_proj")
    assert not lin._forward_hooks


def test_restricted_changes_only_the_selected_entries(model, prompts, restricted):
    masks = ft.neuron_masks(model, NEURONS)
    assert sorted(masks) == ["L27.down_proj", "L27.gate_proj", "L27.up_proj", "L28.o_proj",
                             "L29.down_proj", "L29.gate_proj", "L29.up_proj"]
    assert masks["L28.o_proj"][1].sum() == 576  # one column of o_proj (d_model entries)
    assert masks["L27.down_proj"][1][:, 336].all() and masks["L27.gate_proj"][1][336].all()
    allowed = {id(w): m for w, m in masks.values()}
    changed = 0
    pairs = zip(hf_model(model).named_parameters(), hf_model(restricted.model).named_parameters())
    for (name, p0), (name1, p1) in pairs:
        assert name == name1
        m = allowed.get(id(p0))
        if m is None:
            assert torch.equal(p0, p1), name
        else:
            assert torch.equal(p0[~m], p1[~m]), name
            changed += int((p0[m] != p1[m]).sum())
    assert changed > 0
    assert restricted.n_trainable == sum(int(m.sum()) for _, m in masks.values())
    assert restricted.model.edit_neurons == NEURONS
    h = restricted.history
    assert h.bias_loss.iloc[-1] < h.bias_loss.iloc[0]
    assert ft.bias_objective(restricted.model, prompts) < ft.bias_objective(model, prompts)


def test_restricted_is_deterministic(model, prompts, kl_texts, restricted):
    again = ft.finetune_neurons(model, NEURONS, prompts, kl_texts, steps=3, lr=3e-3, beta=1.0, seed=0,
                                progress=False)
    assert again.history[["loss", "bias_loss", "kl"]].equals(restricted.history[["loss", "bias_loss", "kl"]])
    w1 = ft._linear(restricted.model, 27, "down_proj").weight
    w2 = ft._linear(again.model, 27, "down_proj").weight
    assert torch.equal(w1, w2)


def test_minibatches_are_seeded_passes():
    import numpy as np

    def draws(seed):
        b = ft._Batches(5, 2, np.random.default_rng(seed))
        return [b.next() for _ in range(5)]

    drawn = draws(0)
    assert all(len(x) == 2 and len(set(x)) == 2 for x in drawn)
    assert len(set(drawn[0] + drawn[1])) == 4  # within a pass, no prompt repeats
    assert sorted(i for x in drawn for i in x) == sorted(list(range(5)) * 2)  # two full passes
    assert draws(0) == drawn and draws(1) != drawn
    assert ft._Batches(5, None, np.random.default_rng(0)).next() == [0, 1, 2, 3, 4]


def test_bad_inputs_are_refused(model, prompts, kl_texts):
    with pytest.raises(EditError, match="positional"):
        ft.neuron_masks(model, ["attnL3H2D17P0"])
    with pytest.raises(ParameterError, match="beta"):
        ft.finetune_lora(model, prompts, [], steps=1, lr=1e-3, beta=1.0)
    with pytest.raises(ParameterError, match="rank"):
        ft.finetune_lora(model, prompts, kl_texts, steps=1, lr=1e-3, beta=1.0, rank=0)
    with pytest.raises(ParameterError, match="LoRA module"):
        ft.finetune_lora(model, prompts, kl_texts, steps=1, lr=1e-3, beta=1.0, modules=["nope"])
    with pytest.raises(ParameterError, match="lr"):
        ft.finetune_neurons(model, NEURONS, prompts, kl_texts, steps=1, lr=0.0, beta=1.0)
