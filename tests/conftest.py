"""Shared fixtures: the real embedded default model, loaded once per test session."""

from __future__ import annotations

import os

# Tests never touch the network: the hub is disabled before anything imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def model():
    """The default model (SmolLM2-135M-Instruct) as a TransformerBridge, fp32 on the CPU."""
    from analysis_lib.models import load_model

    torch.manual_seed(0)
    return load_model()


@pytest.fixture(scope="session")
def hf_reference():
    """A separate plain Hugging Face instance of the default model, from the same cache."""
    from analysis_lib.models import load_hf

    hf, tok, _ = load_hf("smollm2-135m-instruct")
    hf.eval()
    return hf, tok
