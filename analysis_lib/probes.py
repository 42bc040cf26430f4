"""Small probes of next-token gender preferences used by the early chapters."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .commonwords import TARGETS
from .scoring import target_logprobs


def gender_probe(model, words: Sequence[str], templates: dict[str, str] | None = None) -> pd.DataFrame:
    """Next-token probabilities of the gendered targets after templated prompts.

    Args:
        model: a loaded bridge.
        words: the words to fill in (e.g. professions).
        templates: ``{"noun": "The {} is a", "pronoun": "The {} said that"}`` by default;
            each key picks the target pair of :data:`analysis_lib.commonwords.TARGETS`.

    Returns:
        One row per word and target token: model, word, prompt, target, kind (noun/pronoun),
        gender (male/female), logprob, prob, and ``p_female`` = p(female)/(p(male)+p(female)).
    """
    templates = templates or {"noun": "The {} is a", "pronoun": "The {} said that"}
    rows = []
    for kind, template in templates.items():
        male, female = TARGETS[kind]
        prompts = [template.format(w) for w in words]
        lp = target_logprobs(model, prompts, [male, female]).numpy()
        p_f = 1.0 / (1.0 + np.exp(lp[:, 0] - lp[:, 1]))
        for i, w in enumerate(words):
            for j, (tok, gender) in enumerate([(male, "male"), (female, "female")]):
                rows.append({"model": model.study_name, "word": w, "prompt": prompts[i], "target": tok,
                             "kind": kind, "gender": gender, "logprob": float(lp[i, j]),
                             "prob": float(np.exp(lp[i, j])), "p_female": float(p_f[i])})
    return pd.DataFrame(rows)
