# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-model)=
# # The model and the start token
#
# This chapter introduces the models of the study and the token that sits at position 0 of
# every prompt. Paper 1 {cite}`yu2025understanding` finds "general neurons" that fire at the
# `<start>` token, so which token occupies position 0 is a choice we make explicitly and report.
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 00 --profile full -p model=gemma3-270m` executes it with
# papermill on another model; `-p device=cuda -p model=meta-llama/Llama-2-7b-hf` on a GPU.
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
compare_models = None  # models whose tokenizers and start tokens are compared (None: the profile's)
professions = ["nurse", "engineer", "secretary", "mechanic", "teacher", "doctor"]  # professions of the he/she probe

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("00_model_and_start_token", globals()))  # the sizes left None, from the profile

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from analysis_lib import checks, models, plots, probes
from analysis_lib.results import Results

torch.manual_seed(seed)
plots.setup()
results = Results("00_model_and_start_token", dict(model=model, device=device, dtype=dtype, profile=profile,
                                                    seed=seed, compare_models=compare_models,
                                                    professions=professions))

# %% [markdown]
# ## Loading the default model
#
# `analysis_lib.models.load_model` returns a TransformerLens 4 `TransformerBridge`. The
# built-in models ship as GGUF files inside PyPI packages; the first load dequantizes them
# and caches float32 safetensors, so later loads take seconds.

# %%
lm = models.load_model(model, device=device, dtype=dtype)
print(f"{lm.study_name}: loaded from {lm.load_info.source} in {lm.load_info.seconds:.1f} s; "
      f"start token {lm.start_token!r} (id {lm.start_token_id})")

# %% [markdown]
# The tokens of the paper's running example. Position 0 holds the start token; the word
# under study is read at its own position and the prediction at the last one.
#
# Tokens are shown in quotes, as Python writes a string (`' nurse'`), throughout the book:
# most tokens of a sentence start with the space before their word, and that space is part
# of the token. `' nurse'` and `'nurse'` are two different tokens with two different ids, so
# without the quotes the leading space, and with it the difference, would be invisible.

# %%
tokens = models.str_tokens(lm, "The nurse is a")
pd.DataFrame({"position": range(len(tokens)), "token": [repr(t) for t in tokens]}).set_index("position").T

# %% tags=["remove-cell"]
results.add("nurse_tokens", tokens)
results.add("start_token", lm.start_token)
results.add("n_tokens_nurse", len(tokens))

# %% [markdown]
# ## The models side by side
#
# The study's offline models: the full profile compares the three that `make install` brings,
# the gpu profile adds Qwen2.5-Coder 1.5B (the optional `large` extra) and the quick profile
# shows only the default. Parameter counts include the embeddings.

# %%
arch_rows, probe_frames = [], []
for name in compare_models:
    m = lm if name == model else models.load_model(name, device=device, dtype=dtype)
    arch_rows.append(models.describe(m))
    probe_frames.append(probes.gender_probe(m, professions))
    if m is not lm:
        del m
architecture = pd.DataFrame(arch_rows).set_index("model").drop(columns=["load_seconds", "load_source"])
probe = pd.concat(probe_frames, ignore_index=True)
architecture.T

# %% tags=["remove-cell"]
results.add("architecture", architecture.reset_index().to_dict(orient="records"))
results.table("probe", probe)
default_probe = probe[probe.model == model]
nurse = default_probe[(default_probe.word == "nurse")]
p_she_nurse = float(nurse[(nurse.target == " she")].prob.iloc[0])
p_he_nurse = float(nurse[(nurse.target == " he")].prob.iloc[0])
pf_noun = default_probe[default_probe.kind == "noun"].groupby("word").p_female.first()
results.add("p_she_nurse", p_she_nurse, fmt=".3f")
results.add("p_he_nurse", p_he_nurse, fmt=".3f")
results.add("n_layers", int(architecture.loc[model, "layers"]))
results.add("n_ffn_neurons", int(architecture.loc[model, "ffn_neurons"]), fmt=",")
results.add("p_female_noun_nurse", float(pf_noun["nurse"]), fmt=".2f")
results.add("p_female_noun_engineer", float(pf_noun["engineer"]), fmt=".2f")

# %% [markdown]
# The default model has {glue:text}`n_layers` layers and {glue:text}`n_ffn_neurons` FFN
# neurons. After "The nurse said that" it gives *she* a probability of
# {glue:text}`p_she_nurse` and *he* {glue:text}`p_he_nurse`. Restricted to the pair
# *man*/*woman* after "The nurse is a", the share of *woman* is
# {glue:text}`p_female_noun_nurse`, against {glue:text}`p_female_noun_engineer` for
# "The engineer is a".

# %% tags=["remove-cell"]
fig, axes = plt.subplots(1, 2, figsize=(8, 4.4), sharey=True)
for ax, kind in zip(axes, ["noun", "pronoun"]):
    sub = probe[(probe.kind == kind) & (probe.gender == "female")]
    sns.barplot(data=sub, x="word", y="p_female", hue="model", ax=ax)
    ax.axhline(0.5, color="grey", lw=1, ls="--")
    pair = "woman / (man + woman)" if kind == "noun" else "she / (he + she)"
    plots.label(ax, "profession", f"share of the female token:\n{pair}", f"{kind} targets")
    ax.tick_params(axis="x", rotation=30)
    ax.set_ylim(0, 1)
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend():
        ax.get_legend().remove()
fig.tight_layout()
# one legend for both panels, above them, so that it hides no bar whatever the number of models
fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
plots.glue_figure("fig_probe", fig)

# %% [markdown]
# ```{glue:figure} fig_probe
# :name: fig-start-probe
#
# Share of the female token in the gendered pair after "The {profession} is a" (left) and
# "The {profession} said that" (right). Bars above the dashed line favour the female token.
# Stereotypically female professions (nurse, secretary, teacher) lean female more than
# stereotypically male ones. The overall level differs by model and by template, because the
# two target pairs have different base rates ({ref}`ch-measuring`).
# ```
#
# {numref}`fig-start-probe` previews the question of the next chapters: where inside the
# model does this preference come from?

# %% [markdown]
# ## Exercises
#
# ```{exercise} The bias score of a word
# :label: ex-ch0-bias-score
#
# *Difficulty: ★☆☆, about 10 minutes.*
#
# The study measures a word's gender lean as $b(w) = \log p(\text{" man"}) - \log p(\text{" woman"})$
# after the word's prompt. Write `bias_score(logp_man, logp_woman)` and check it with
# `checks.check_bias_score(bias_score)`. Then compute $b$ for "nurse" from the table
# `probe` above: is it positive or negative, and what does that mean?
#
# :::{admonition} Hint
# :class: dropdown
# `bias_score` is one subtraction. For "nurse", keep the rows of `probe` with this chapter's
# `model`, `word == "nurse"` and `kind == "noun"`; indexed by `target`, their `logprob` column
# holds $\log p(\text{" man"})$ and $\log p(\text{" woman"})$.
# :::
# ```

# %% tags=["student", "remove-cell"]
def bias_score(logp_man, logp_woman):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch0-bias-score
# :class: dropdown
# ```
# A difference of log-probabilities (a log odds ratio between the two targets):

# %% tags=["solution"]
def bias_score(logp_man, logp_woman):
    return logp_man - logp_woman


checks.check_bias_score(bias_score)
nurse_noun = probe[(probe.model == model) & (probe.word == "nurse") & (probe.kind == "noun")]
bias_score(*nurse_noun.set_index("target").logprob[[" man", " woman"]])

# %% [markdown] tags=["solution"]
# A negative $b$ means " woman" is the likelier of the two continuations.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} What sits at position 0?
# :label: ex-ch0-start
#
# *Difficulty: ★☆☆, about 10 minutes.*
#
# Load the default model with `start_token="none"` and with `start_token="<|endoftext|>"`
# (`models.load_model(model, start_token=...)`) and print `models.str_tokens(m, "The nurse is a")`
# for each. How many tokens does each prompt have, and which token does the last position
# attend to first? Why does paper 1 care which token sits at position 0?
#
# :::{admonition} Hint
# :class: dropdown
# Each `load_model` call with another `start_token` takes a few seconds (the weights come from
# the cache). `models.str_tokens` lists the tokens as strings, position 0 first; under causal
# masking every position can attend to position 0.
# :::
# ```

# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch0-start
# :class: dropdown
# ```

# %% tags=["solution"]
for policy in ["none", "<|endoftext|>"]:
    print(policy, models.str_tokens(models.load_model(model, device=device, dtype=dtype, start_token=policy),
                                    "The nurse is a"))

# %% [markdown] tags=["solution"]
# Without a start token the prompt has four tokens and "The" sits at position 0; with
# `<|endoftext|>` there are five. Whatever token occupies position 0 tends to become the
# attention sink, and the paper's *general neurons* live there: chapter 4 asks whether the same
# neurons appear whichever start token is used.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.save()
