"""Capability tasks: answer parsing, scorers on hand-made items, caching, perplexity, the suite."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from analysis_lib import capability as cap
from analysis_lib.editing import mask_neurons
from analysis_lib.errors import ParameterError, StudyError
from analysis_lib.models import encode
from analysis_lib.scoring import greedy_generate


@pytest.mark.parametrize(
    "text, expected",
    [("8", 8), (" 8\n", 8), ("10+", 10), ("-", None), ("", None), ("-3", -3), ("x8", None),
     ("\n\n 12 apples", 12), ("007", 7), ("1,000", 1), ("12<|im_end|>", 12), (None, None)],
)
def test_parse_answer(text, expected):
    assert cap.parse_answer(text) == expected


def test_chance_levels():
    assert cap.CHANCE == {"arithmetic": 0.0, "race": 0.25, "piqa": 0.5}


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


def test_race_scorer_on_known_items(model):
    res = cap.race_task(model, items=RACE_ITEMS, kv_cache=True)
    assert res.records["pred"].tolist() == [0, 1, 0]
    assert res.summary["value"] == 1.0 and res.summary["chance"] == 0.25 and res.summary["n"] == 3
    # the shared key/value cache gives the same scores as running every row in full
    full = cap.race_task(model, items=RACE_ITEMS, kv_cache=False)
    cols = [f"score_{j}" for j in range(4)]
    diff = np.abs(res.records[cols].to_numpy() - full.records[cols].to_numpy()).max()
    assert diff <= 1e-4, diff


def test_race_cache_is_off_under_positional_edit(model):
    """A positional attention edit cannot see cached values: 'auto' runs without the cache."""
    with mask_neurons(model, ["attnL3H4D17P0", "ffnL2N703"]):
        auto = cap.race_task(model, items=RACE_ITEMS.iloc[:2])
        full = cap.race_task(model, items=RACE_ITEMS.iloc[:2], kv_cache=False)
    cols = [f"score_{j}" for j in range(4)]
    assert np.array_equal(auto.records[cols].to_numpy(), full.records[cols].to_numpy())


def test_piqa_scorer_on_known_items(model):
    items = pd.DataFrame(
        {
            "id": ["0", "1"],
            "question": ["What is the capital of France?", "What do you use to cut paper?"],
            "choices": [["Paris.", "A banana."], ["A bowl of soup.", "A pair of scissors."]],
            "label": [0, 1],
        }
    )
    res = cap.piqa_task(model, items=items)
    assert res.records["pred"].tolist() == [0, 1]
    assert res.records["correct"].tolist() == [1, 1]
    assert res.summary["chance"] == 0.5
    with pytest.raises(StudyError, match="lacks the column"):
        cap.piqa_task(model, items=items.drop(columns="label"))


def test_cached_greedy_equals_scoring_greedy(model):
    prompts = ["3+5=", "12+30=", "The capital of France is", "7+1="]
    assert cap._greedy_cached(model, prompts, 4, batch_size=2) == greedy_generate(model, prompts, max_new_tokens=4)


def test_arithmetic_task_records_and_determinism(model):
    a = cap.arithmetic_task(model, 12, digits=1, seed=3)
    b = cap.arithmetic_task(model, 12, digits=1, seed=3)
    pd.testing.assert_frame_equal(a.records, b.records)
    assert a.summary["value"] == b.summary["value"] and a.summary["chance"] == 0.0
    r = a.records
    assert len(r) == 12 and r[["a", "b"]].drop_duplicates().shape[0] == 12  # no repeats
    assert (r["answer"] == r["a"] + r["b"]).all() and r["a"].between(0, 9).all()
    expected = [int(p is not pd.NA and p == ans) for p, ans in zip(r["parsed"], r["answer"])]
    assert r["correct"].tolist() == expected
    assert all(p.count("\n") == cap.DEFAULT_SHOTS for p in r["prompt"])
    c = cap.arithmetic_task(model, 12, digits=1, seed=4)
    assert set(zip(c.records["a"], c.records["b"])) != set(zip(r["a"], r["b"]))
    two = cap.arithmetic_task(model, 6, digits=2, seed=0, shots=0)
    assert two.records["a"].between(10, 99).all() and not two.records["prompt"].str.contains("\n").any()
    assert re.match(r"^\d+\+\d+=$", two.records["prompt"][0])


def test_perplexity_matches_direct_computation(model):
    text = "Water boils at 100 degrees Celsius at sea level."
    res = cap.perplexity_task(model, [text, "The Moon reflects light from the Sun."])
    enc = encode(model, text)
    with torch.inference_mode():
        lp = model(enc.tokens)[0].float().log_softmax(-1)
    tgt = enc.tokens[0, 1:]
    nll = -lp[:-1].gather(-1, tgt[:, None]).squeeze(-1)
    direct = math.exp(nll.mean().item())
    row = res.records.iloc[0]
    assert row["n_tokens"] == len(tgt)
    assert abs(row["ppl"] - direct) / direct <= 1e-4
    pooled = math.exp(res.records["nll"].sum() / res.records["n_tokens"].sum())
    assert abs(res.summary["value"] - pooled) <= 1e-9 * pooled
    assert res.summary["metric"] == "perplexity" and math.isnan(res.summary["chance"])


def test_neutral_texts_are_neutral():
    texts = cap.neutral_texts()
    assert len(texts) == 40 and len(set(texts)) == 40
    gendered = re.compile(r"\b(he|she|him|her|his|hers|man|men|woman|women|boy|girl|mother|father|"
                          r"son|daughter|husband|wife|king|queen|mr|mrs|ms|sir|lady|gentleman)\b", re.I)
    assert not [t for t in texts if gendered.search(t)]


def test_suite_table(model):
    sizes = {"arithmetic_1digit": 4, "arithmetic_2digit": 3, "race": 2, "piqa": 4, "neutral": 3}
    table, records = cap.capability_suite(model, sizes, seed=1, return_records=True)
    assert table["task"].tolist() == list(cap.TASKS)
    assert list(table.columns) == ["task", "metric", "n", "value", "ci_low", "ci_high", "chance", "seconds", "note"]
    assert table.set_index("task").loc["race", "chance"] == 0.25
    assert table.set_index("task").loc["neutral", "n"] == 3
    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert set(records) == set(cap.TASKS)
    again = cap.capability_suite(model, sizes, seed=1, tasks=["arithmetic_1digit", "piqa"])
    pd.testing.assert_frame_equal(
        again.drop(columns="seconds").reset_index(drop=True),
        table.drop(columns="seconds").iloc[[0, 3]].reset_index(drop=True),
    )
    same = cap.capability_delta(records, records)
    assert (same["diff"] == 0).all() and len(same) == 5


def test_capability_delta_paired():
    before = {"piqa": pd.DataFrame({"correct": [1, 1, 0, 0]})}
    after = {"piqa": pd.DataFrame({"correct": [1, 0, 0, 0]})}
    d = cap.capability_delta(before, after).iloc[0]
    assert d["before"] == 0.5 and d["after"] == 0.25 and d["diff"] == -0.25
    with pytest.raises(StudyError, match="same profile"):
        cap.capability_delta(before, {"piqa": pd.DataFrame({"correct": [1]})})


def test_bad_profile_and_task(model):
    with pytest.raises(ParameterError, match="quick"):
        cap.capability_suite(model, "medium")
    with pytest.raises(ParameterError, match="Unknown capability task"):
        cap.capability_suite(model, "quick", tasks=["hellaswag"])
    with pytest.raises(ParameterError, match="digits"):
        cap.arithmetic_task(model, 3, digits=0)
