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
# (ch-circuits)=
# # Tracing gender circuits
#
# Paper 1 {cite}`yu2025understanding` traces the prediction "The nurse is a" → *woman* back
# to individual neurons. Its Figure 1 has two circuits. *Gender neurons* fire on the
# stereotyped word ("nurse"). *General neurons* fire on the `<start>` token. Attention
# neurons carry both to the last position, where deep FFN "value" neurons raise the
# probability of *woman*. This chapter runs the same analysis on the CommonWords training
# words with the exact attribution engine of `analysis_lib.attribution`. It ranks the
# neurons, names the ones whose vocabulary projection is about gender, follows the nurse
# example from shallow to deep layers, and measures how much of the attribution sits at
# the word and how much at the start token.
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 03 --profile full` attributes all 400 training words (about
# half an hour on two CPU cores); the quick profile uses a seeded subset.
# `-p n_prompts=100 -p seed=1` draws another subset. Parameters: `n_prompts` training
# prompts attributed (400: all of them), `n_heldout` test-split prompts for the held-out check
# (100: all of them), `top_k` neurons per kind (50 as in the paper), `shared_ks` the K values of the
# shared-frequency analysis, `n_boot` bootstrap resamples.
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
n_prompts = None  # training prompts attributed (400: all of them) (None: the profile's)
n_heldout = None  # test-split prompts of the held-out check (100: all of them) (None: the profile's)
top_k = 50  # neurons kept per kind (50 as in the paper)
shared_ks = [10, 50]  # K values of the shared-frequency analysis
n_boot = 1000  # bootstrap resamples of every interval

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("03_tracing_gender_circuits", globals()))  # the sizes left None, from the profile

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from analysis_lib import checks, circuits, models, plots
from analysis_lib import commonwords as cw
from analysis_lib.attribution import dataset_attribution
from analysis_lib.metrics import BootstrapResult
from analysis_lib.results import Results

torch.manual_seed(seed)
plots.setup()
results = Results("03_tracing_gender_circuits", dict(model=model, device=device, dtype=dtype, profile=profile, seed=seed,
                                                     n_prompts=n_prompts, n_heldout=n_heldout, top_k=top_k,
                                                     shared_ks=shared_ks, n_boot=n_boot))
KIND_NAMES = {"ffn_value": "FFN value", "attn_value": "attention value", "ffn_query": "FFN query"}

# %% [markdown]
# ## Prompts and the biased token
#
# Each CommonWords word fills its category template ("The nurse is a", "The person who
# enjoys gardening is a", …). The paper does not say which token it attributes, so we
# make a choice ({ref}`methods-target`). For each word the target is the **biased token**: the more
# probable of *man* and *woman* after the prompt. Every score below is the exact increase in
# the log-probability of that token (in nats) that one neuron causes, with the final norm's
# scale held at its value in the real forward pass (see {ref}`ch-model` for the start
# token). The quick profile attributes a seeded subset of the 400 training words; the full
# profile attributes all of them.

# %%
lm = models.load_model(model, device=device, dtype=dtype)
ds = cw.load_commonwords(seed=seed)
train = circuits.prompt_subset(ds["train"].to_pandas(), n_prompts, seed)
train = pd.concat([train, circuits.biased_targets(lm, train.prompt)], axis=1)
heldout = circuits.prompt_subset(ds["test"].to_pandas(), n_heldout, seed)
heldout = pd.concat([heldout, circuits.biased_targets(lm, heldout.prompt)], axis=1)
P, T, W = list(train.prompt), list(train.target), list(train.word)
pd.crosstab(train.category, train.target.str.strip(), margins=True,
            margins_name="all")

# %% tags=["remove-cell"]
nurse_prompt = "The nurse is a"
nurse = circuits.biased_targets(lm, [nurse_prompt]).iloc[0]
results.add("n_prompts", len(train))
results.add("n_heldout", len(heldout))
results.add("n_target_woman", int((train.target == circuits.FEMALE).sum()))
results.add("share_target_man", float((train.target == circuits.MALE).mean()), fmt=".0%")
results.add("nurse_target", nurse.target.strip())
results.add("nurse_bias", float(nurse.bias), fmt=".2f")
results.add("nurse_p_woman", float(np.exp(nurse.lp_woman)), fmt=".2g")
results.add("nurse_p_man", float(np.exp(nurse.lp_man)), fmt=".2g")
results.table("prompts", train.drop(columns=["template", "pronoun_template", "pronoun_prompt"]))

# %% [markdown]
# The biased token is *man* for {glue:text}`share_target_man` of the
# {glue:text}`n_prompts` training prompts and *woman* for {glue:text}`n_target_woman`.
# For the paper's example, "The nurse is a", it is *{glue:text}`nurse_target`*
# (p(woman) = {glue:text}`nurse_p_woman`, p(man) = {glue:text}`nurse_p_man`).
#
# ## The top neurons of each kind
#
# `dataset_attribution` scores every neuron on every prompt and sums the scores over the
# prompts ({ref}`methods-aggregation`). Its top-50 of each kind is exact: bounds on every other
# neuron's sum show that none can enter the list. There are three kinds:
#
# * **FFN value neurons**: FFN units at the last position, scored by what their output adds to
#   the biased token's log-probability.
# * **attention value neurons** `attnL{l}H{h}D{d}`: one dimension of one head's value, summed
#   over the source positions it reads.
# * **FFN query neurons**: FFN units scored by how much they write into the values of the
#   prompt's top-30 attention neurons, at those neurons' source positions. These are the
#   shallow neurons that *activate* the attention neurons.

# %%
t0 = time.perf_counter()
da = dataset_attribution(lm, P, T, top_k=top_k, words=W,
                         per_prompt_k=max(shared_ks), progress=False)
results.time("dataset_attribution", time.perf_counter() - t0)
KINDS = circuits.KINDS
top = {k: list(da.tables[k].id) for k in KINDS}
cols = ["id", "score", "mean", "important_position"]
pd.concat({KIND_NAMES[k]: da.tables[k].head(8).set_index("rank")[cols] for k in KINDS},
          names=["kind"])  # one block of rows per kind: a narrow table

# %% [markdown]
# `score` is the sum over the prompts, `mean` the average per prompt, and
# `important_position` the position category that carries most of the score. Is the top-50
# more than a sample of large but arbitrary neurons? We compare the summed score of the
# top-50 of each kind with the summed score of 50 random neurons of the same kind (seeded).
# We do this on the training prompts and, for the value kinds, on held-out test-split words
# that played no part in the ranking.

# %%
t1 = time.perf_counter()
rand = {k: circuits.random_neurons(lm, k, top_k, seed, exclude=top[k]) for k in KINDS}
static = circuits.static_gender_neurons(lm, 12)  # for the gender-neuron section
scored = {k: top[k] + rand[k] for k in KINDS}
scored["ffn_value"] += list(static.id)
scores = circuits.neuron_scores(lm, P, T, scored, words=W,
                                attn_top=da.per_prompt_topk["attn_value"],
                                contrasts=circuits.other_gender(T))
vk = value_kinds = ["ffn_value", "attn_value"]
held = circuits.neuron_scores(lm, list(heldout.prompt), list(heldout.target),
                              {k: scored[k] for k in vk}, words=list(heldout.word))
results.time("neuron_scores", time.perf_counter() - t1)
boot = dict(n_boot=n_boot, seed=seed)
ctl = circuits.control_summary
control = {k: ctl(scores, k, top[k], rand[k], **boot) for k in KINDS}
control_held = {k: ctl(held, k, top[k], rand[k], **boot) for k in vk}
circuits.control_frame(control, control_held, KIND_NAMES).round(3)

# %% tags=["remove-cell"]
for k in circuits.KINDS:
    results.add(f"top_sum_{k}", control[k]["top"], fmt=".2f")
    results.add(f"random_sum_{k}", control[k]["random"], fmt=".3f")
for k in value_kinds:
    results.add(f"heldout_top_sum_{k}", control_held[k]["top"], fmt=".2f")
    results.add(f"heldout_random_sum_{k}", control_held[k]["random"], fmt=".3f")
results.add("mean_lp_target", float(np.maximum(train.lp_man, train.lp_woman).mean()), fmt=".2f")
results.table("rankings", circuits.ranking_frame(da.tables))
results.table("per_prompt_topk", circuits.per_prompt_frame(da.per_prompt_topk, train))
results.table("control", circuits.control_frame(control, control_held, KIND_NAMES).reset_index())
for k in circuits.KINDS:
    results.add(f"top1_{k}", top[k][0])

# %% [markdown]
# Per prompt, the 50 top FFN value neurons together add
# {glue:text}`top_sum_ffn_value` {glue:text}`top_sum_ffn_value_ci` nats to the log-probability
# of the biased token, against {glue:text}`random_sum_ffn_value`
# {glue:text}`random_sum_ffn_value_ci` for 50 random FFN neurons. The top attention value
# neurons add {glue:text}`top_sum_attn_value` {glue:text}`top_sum_attn_value_ci` (random:
# {glue:text}`random_sum_attn_value`). The top query neurons' scores sum to
# {glue:text}`top_sum_ffn_query` {glue:text}`top_sum_ffn_query_ci` (random:
# {glue:text}`random_sum_ffn_query`). Intervals are 95% bootstrap intervals over prompts. On
# the held-out words the top-50 still add {glue:text}`heldout_top_sum_ffn_value`
# {glue:text}`heldout_top_sum_ffn_value_ci` (FFN value) and
# {glue:text}`heldout_top_sum_attn_value` {glue:text}`heldout_top_sum_attn_value_ci`
# (attention value), so the ranking carries over to words it was not fitted on. Random
# neurons contribute close to nothing. These are sums of single-neuron effects, not the
# effect of removing all 50 together; the editing chapter measures that.
#
# ## Where the top neurons sit
#
# The paper's picture is query neurons in shallow layers, attention neurons in the middle
# and value neurons in deep layers.

# %% tags=["remove-cell"]
n_layers = int(lm.cfg.n_layers)
counts = circuits.layer_counts(da.tables, top_k, n_layers)
lsum = circuits.layer_summary(da.tables, top_k, n_layers).set_index("kind")
fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.4), sharey=True)
for ax, (k, color) in zip(axes, zip(circuits.KINDS, sns.color_palette("colorblind"))):
    sub = counts[counts.kind == k]
    ax.bar(sub.layer, sub["count"], color=color, width=0.85)
    ax.axvline(lsum.loc[k, "median_layer"], color="black", ls="--", lw=1)
    plots.label(ax, "layer", f"neurons among\nthe top {top_k}" if ax is axes[0] else "", KIND_NAMES[k])
    ax.set_xlim(-1, n_layers)
fig.tight_layout()
plots.glue_figure("fig_layers", fig)
for k in circuits.KINDS:
    results.add(f"median_layer_{k}", float(lsum.loc[k, "median_layer"]), fmt=".0f")
    results.add(f"deep_share_{k}", float(lsum.loc[k, "deep_share"]), fmt=".0%")
    results.add(f"shallow_share_{k}", float(lsum.loc[k, "shallow_share"]), fmt=".0%")
results.add("n_layers_model", n_layers)

# %% [markdown]
# ```{glue:figure} fig_layers
# :name: fig-circuits-layers
#
# Layers of the top-50 neurons of each kind (dashed line: median layer). FFN value neurons
# crowd into the last layers. Query neurons always sit below the attention neurons they
# feed; many are in the first layers.
# ```
#
# The median layer is {glue:text}`median_layer_ffn_value` for FFN value neurons
# ({glue:text}`deep_share_ffn_value` in the last third of the
# {glue:text}`n_layers_model` layers), {glue:text}`median_layer_attn_value` for attention
# value neurons and {glue:text}`median_layer_ffn_query` for query neurons
# ({glue:text}`shallow_share_ffn_query` in the first third).
#
# ## Gender-specific or generic?
#
# A neuron can raise the log-probability of *man* because it pushes toward "a noun for a
# person" in general, raising *woman* as much, or because it separates the genders. For each
# neuron and prompt we also compute its **direct log-odds effect**: how much it raises
# log p(biased token) − log p(other gender's token), the signed variant described in
# {ref}`methods-target`. It is exactly linear in the neuron's output (the softmax normalizer
# cancels), so we can compute it for every value neuron. Dividing the summed log-odds
# effect of the top-50 by their summed log-probability increase gives their *gender
# specificity*. It is about 0 for generic neurons and about 1 for neurons that act only on
# the gap.

# %%
spec = {k: circuits.gender_specificity(scores, k, top[k], **boot) for k in value_kinds}
lo_rank = {k: circuits.logodds_ranking(scores, k, top_k) for k in value_kinds}
overlap = {k: len(set(top[k]) & set(lo_rank[k].id)) for k in value_kinds}
cols = ["id", "mean", "important_position"]
pd.concat({KIND_NAMES[k]: lo_rank[k].head(8).set_index("rank")[cols] for k in vk}, names=["kind"])

# %% tags=["remove-cell"]
for k in value_kinds:
    results.add(f"specificity_{k}", spec[k], fmt=".2f")
    results.add(f"overlap_logodds_{k}", overlap[k])
    results.add(f"logodds_top1_{k}", lo_rank[k].id.iloc[0])
    results.add(f"logodds_top1_mean_{k}", float(lo_rank[k]["mean"].iloc[0]), fmt=".3f")
results.table("ranking_logodds", pd.concat(lo_rank.values(), ignore_index=True))

# %% [markdown]
# The gender specificity of the top-50 FFN value neurons is {glue:text}`specificity_ffn_value`
# {glue:text}`specificity_ffn_value_ci`, and that of the top-50 attention value neurons
# {glue:text}`specificity_attn_value` {glue:text}`specificity_attn_value_ci`. The neurons that
# contribute most to the biased token mostly raise *man* and *woman* together: they predict
# "a person", not a gender. The table ranks neurons by their summed log-odds effect instead.
# Only {glue:text}`overlap_logodds_ffn_value` of its top-50 FFN value neurons (and
# {glue:text}`overlap_logodds_attn_value` attention neurons) are in the log-probability
# top-50. Each log-odds effect is small: the strongest, {glue:text}`logodds_top1_ffn_value`,
# moves the log-odds by {glue:text}`logodds_top1_mean_ffn_value` nats per prompt on
# average. The editing chapter can use this ranking as a second candidate list.
#
# ## Interpretable gender neurons
#
# A neuron's output vector, read through the unembedding, ranks the vocabulary. The *top*
# tokens are those it promotes when its coefficient is positive; the *last* tokens are those
# it promotes when the coefficient is negative. The paper's Table 2 lists neurons such as
# `ffnL11N17` with top tokens [herself, woman, actress] and last tokens [himself, male, boy].
# We call a neuron *gendered* when at least two of its 10 top and 10 last tokens are
# gendered words (she, her, woman, girl, actress, …; he, his, man, boy, male, …; the list is
# `circuits.FEMALE_WORDS` / `MALE_WORDS`). The baseline is the same count for 500 random
# neurons of each family.

# %%
tables_all = {**da.tables, **{f"logodds_{k}": lo_rank[k] for k in value_kinds}}
names_all = {**KIND_NAMES, **{f"logodds_{k}": f"{KIND_NAMES[k]} (log-odds)"
                              for k in value_kinds}}
proj = {k: circuits.projection_table(lm, t.id) for k, t in tables_all.items()}
rnd500 = {"ffn": circuits.random_neurons(lm, "ffn_value", 500, seed + 1),
          "attn": circuits.random_neurons(lm, "attn_value", 500, seed + 1)}
proj_rand = {fam: circuits.projection_table(lm, ids) for fam, ids in rnd500.items()}
gshare = {k: circuits.gendered_share(p.gendered, **boot) for k, p in proj.items()}
gbase = {f: circuits.gendered_share(p.gendered, **boot) for f, p in proj_rand.items()}
table2 = circuits.gender_neuron_table(proj, tables_all, names_all, n_tokens=5)
table2.drop(columns=["score"])

# %% tags=["remove-cell"]
for k in proj:
    results.add(f"n_gendered_{k}", int(proj[k].gendered.sum()))
    results.add(f"share_gendered_{k}", gshare[k], fmt=".0%")
for fam in proj_rand:
    results.add(f"share_gendered_random_{fam}", gbase[fam], fmt=".0%")
results.table("gender_neurons", table2)
results.table("projections", circuits.projection_frame(proj))

# %% [markdown]
# Among the top-50 by log-probability, {glue:text}`n_gendered_ffn_value` FFN value neurons
# ({glue:text}`share_gendered_ffn_value` {glue:text}`share_gendered_ffn_value_ci`),
# {glue:text}`n_gendered_attn_value` attention value neurons and
# {glue:text}`n_gendered_ffn_query` query neurons are gendered. In the log-odds top-50 the
# counts are {glue:text}`n_gendered_logodds_ffn_value` (FFN) and
# {glue:text}`n_gendered_logodds_attn_value` (attention). For random neurons the rate is
# {glue:text}`share_gendered_random_ffn` {glue:text}`share_gendered_random_ffn_ci` (FFN)
# and {glue:text}`share_gendered_random_attn` {glue:text}`share_gendered_random_attn_ci`
# (attention). The table lists the gendered ones with their first five top and last tokens.
# `direction` is the gender a neuron promotes when its coefficient is positive (female:
# female words on top or male words last).
#
# Gender neurons as clean as the paper's do exist in this model, but the attribution
# barely finds them. We rank all FFN neurons by how far their output vector separates
# *woman* from *man* in the vocabulary (`gender_z`, in standard deviations of the neuron's
# projection; this depends only on the weights). Then we ask what these neurons do on the
# CommonWords prompts.

# %%
activity = circuits.neuron_activity(scores, "ffn_value", list(static.id), **boot)
static_view = static.merge(activity, on="id")
static_view["top"] = static_view.top_tokens.map(circuits.fmt_tokens)
static_view["last"] = static_view.last_tokens.map(circuits.fmt_tokens)
cols = ["id", "gender_z", "top", "last", "mean_score", "mean_logodds", "abs_rank"]
static_view[cols].round(3)

# %% tags=["remove-cell"]
results.table("weight_gender_neurons", static_view.drop(columns=["top_tokens", "last_tokens"]))
results.add("n_static_gendered", int(static_view.gendered.sum()))
results.add("static_max_abs_score", float(static_view.mean_score.abs().max()), fmt=".3f")
results.add("n_ffn_in_top_static", int(sum(x in set(top["ffn_value"]) for x in static.id)))
best = static_view.sort_values("abs_rank").iloc[0]
results.add("static_best_id", best.id)
results.add("static_best_abs_rank", int(best.abs_rank))
results.add("static_best_logodds", float(best.mean_logodds), fmt=".2f")
results.add("n_static_top100", int((static_view.abs_rank <= 100).sum()))
results.add("n_static_top100_against", int(((static_view.abs_rank <= 100) & (static_view.mean_logodds < 0)).sum()))

# %% [markdown]
# {glue:text}`n_static_gendered` of these 12 neurons pass the gendered-token test. Among
# them are neurons with *woman, women, girl* or *her, she, herself* on one side and
# *himself, his, he* on the other: the paper's Table 2 pattern. None of them raises the
# biased token much. The largest mean log-probability increase among them is
# {glue:text}`static_max_abs_score` nats, and {glue:text}`n_ffn_in_top_static` of them are
# in the top-50. Some of them do act on the gender gap: {glue:text}`n_static_top100` are
# among the 100 FFN neurons with the largest absolute log-odds effect, and
# {glue:text}`n_static_top100_against` of these push *against* the biased token. The
# strongest, {glue:text}`static_best_id` (rank {glue:text}`static_best_abs_rank`), changes
# log p(biased) − log p(other) by {glue:text}`static_best_logodds` nats per prompt on
# average (negative: toward the other gender). A ranking by the increase of the biased
# token cannot surface such counter-bias neurons: it only lists neurons that raise the
# biased token.
#
# ## The nurse example: from the word to the prediction
#
# The paper's Figure 1 follows one prompt. We attribute "The nurse is a" with its biased
# token and keep the top-8 neurons of each kind. Query neurons are placed at the position
# where they write into an attention neuron's value. Attention neurons are placed at the
# source position they read, with a dashed arrow to the last position that they write to.
# Value neurons sit at the last position. A grey arrow links a query neuron to the attention
# neurons it feeds most: the part of its score that comes through that attention neuron.

# %%
path = circuits.circuit_path(lm, nurse_prompt, nurse.target, word="nurse")
pd.crosstab(path.nodes.stage, path.nodes.category)

# %% tags=["remove-cell"]
fig, ax = plt.subplots(figsize=(8, 5.4))
plots.label(ax, "layer", "source position (token)", f"\"{nurse_prompt}\" → \"{nurse.target.strip()}\"")
circuits.plot_path(ax, path, n_layers=n_layers)
plots.glue_figure("fig_nurse_path", fig)
pn = path.nodes
qn, an, vn = (pn[pn.stage == s] for s in ("query FFN", "attention", "value FFN"))
results.add("nurse_query_median_layer", float(qn.layer.median()), fmt=".0f")
results.add("nurse_attn_median_layer", float(an.layer.median()), fmt=".0f")
results.add("nurse_value_median_layer", float(vn.layer.median()), fmt=".0f")
results.add("nurse_n_attn_start", int((an.category == "start").sum()))
results.add("nurse_n_attn_word", int((an.category == "word").sum()))
results.add("nurse_n_query_start", int((qn.category == "start").sum()))
results.add("nurse_n_query_word", int((qn.category == "word").sum()))
results.add("nurse_top_query", qn.id.iloc[0])
results.add("nurse_top_attn", an.id.iloc[0])
results.add("nurse_top_value", vn.id.iloc[0])
word_route = circuits.word_route(path)
for key, val in word_route.items():
    results.add(f"nurse_word_{key}", val)
results.table("nurse_path", pn)
results.table("nurse_edges", path.edges)

# %% [markdown]
# ```{glue:figure} fig_nurse_path
# :name: fig-circuits-nurse
#
# The top-8 query FFN (triangles), attention (circles) and value FFN (squares) neurons for
# "The nurse is a"; marker area ~ score. Most attention neurons read the start token
# (position 0) and the query neurons that feed them sit at position 0 as well. The word
# "nurse" (position 2) has its own, smaller route.
# ```
#
# The top query neuron is {glue:text}`nurse_top_query`, the top attention neuron
# {glue:text}`nurse_top_attn` and the top value neuron {glue:text}`nurse_top_value`.
# The median layers rise from {glue:text}`nurse_query_median_layer` (query) to
# {glue:text}`nurse_attn_median_layer` (attention) and {glue:text}`nurse_value_median_layer`
# (value). Of the 8 attention neurons, {glue:text}`nurse_n_attn_start` read the start token
# and {glue:text}`nurse_n_attn_word` the word; of the 8 query neurons,
# {glue:text}`nurse_n_query_start` sit at the start and {glue:text}`nurse_n_query_word` at
# the word. The word's own route runs from query neuron {glue:text}`nurse_word_query`
# (layer {glue:text}`nurse_word_query_layer`, at the word) into attention neuron
# {glue:text}`nurse_word_attn`, which reads the word and carries it to the last position.
# This is the paper's gender-neuron route, next to a stronger route from the start token.

# %%
cols = ["id", "layer", "position", "token", "score"]
path.nodes.set_index(["stage", "rank"])[cols]

# %% [markdown]
# ## Gender neurons at the word, general neurons at the start
#
# The paper separates neurons by the position they work at. We split each attention
# neuron's score by the source position it reads, and each query neuron's score by the
# position where it writes into an attention neuron's value. The categories are the start
# token, the word's tokens, the last token and the other template tokens ("The", "is",
# "person who", …). Scores are signed, so a share can be slightly negative, but the four
# shares sum to one.

# %%
shares = pd.concat({KIND_NAMES[k]: circuits.position_shares(scores, k, top[k], **boot)
                    for k in ("attn_value", "ffn_query")}, names=["kind"])
shares = shares.reset_index(level=0)
shares.pivot_table(index="kind", columns="position", values="share").round(3)

# %% tags=["remove-cell"]
for r in shares.itertuples():
    k = "attn_value" if r.kind == KIND_NAMES["attn_value"] else "ffn_query"
    results.add(f"share_{r.position}_{k}", BootstrapResult(r.share, r.low, r.high, len(train)), fmt=".0%")
qpos = circuits.neuron_position_table(da.tables["ffn_query"], top_k)
apos = circuits.neuron_position_table(da.tables["attn_value"], top_k)
for name, tab in (("ffn_query", qpos), ("attn_value", apos)):
    for c in ("start", "word", "other"):
        results.add(f"n_{c}_dominated_{name}", int((tab.dominant == c).sum()))
results.add("median_layer_other_query", float(qpos[qpos.dominant == "other"].layer.median()), fmt=".0f")
results.add("median_layer_other_attn", float(apos[apos.dominant == "other"].layer.median()), fmt=".0f")
results.table("query_positions", qpos)
results.table("attention_positions", apos)

# %% tags=["remove-cell"]
fig, axes = plt.subplots(2, 1, figsize=(7.4, 8.2), gridspec_kw={"height_ratios": [1, 1.25]})
circuits.plot_shares(axes[0], shares)
plots.label(axes[0], "position category", "share of the summed score", f"top-{top_k} neurons")
circuits.plot_neuron_shares(axes[1], qpos.head(15))
plots.label(axes[1], "FFN query neuron (rank order)", "share of its score", "top-15 query neurons")
fig.tight_layout()
plots.glue_figure("fig_positions", fig)

# %% [markdown]
# ```{glue:figure} fig_positions
# :name: fig-circuits-positions
#
# Top: share of the summed score of the top-50 attention value and FFN query neurons by
# source position, with 95% bootstrap intervals over prompts. Bottom: the same split for each
# of the top-15 query neurons. Most of the query score comes from the start token; most of
# the attention score comes from the start token and the other template tokens. The word's
# own positions carry a small share of both.
# ```
#
# The start token carries {glue:text}`share_start_ffn_query`
# {glue:text}`share_start_ffn_query_ci` of the top query neurons' score and the word
# {glue:text}`share_word_ffn_query` {glue:text}`share_word_ffn_query_ci`. For attention value
# neurons the shares are {glue:text}`share_start_attn_value`
# {glue:text}`share_start_attn_value_ci` (start), {glue:text}`share_word_attn_value`
# {glue:text}`share_word_attn_value_ci` (word), {glue:text}`share_last_attn_value` (last)
# and {glue:text}`share_other_attn_value` (other template tokens). Of the top-50 query
# neurons, {glue:text}`n_start_dominated_ffn_query` have more than half of their score at the
# start token and {glue:text}`n_word_dominated_ffn_query` at the word. For attention neurons
# the counts are {glue:text}`n_start_dominated_attn_value` and
# {glue:text}`n_word_dominated_attn_value`.
#
# A third group, which the paper does not describe, works at the *other* template tokens
# ("The", "is", "person who", …). {glue:text}`n_other_dominated_ffn_query` of the top query
# neurons are dominated by them (median layer {glue:text}`median_layer_other_query`), and so
# are {glue:text}`n_other_dominated_attn_value` attention neurons (median layer
# {glue:text}`median_layer_other_attn`). The template decides much of the man/woman choice,
# whatever the word.
#
# The start-dominated query neurons are the paper's *general neurons*. Because attention is
# causal, the start token's residual stream is the same in every prompt, so these neurons
# fire identically whatever the word is. Several of them have very large coefficients
# there (*massive activations*), far above their typical size at other positions:

# %%
start_q = qpos[qpos.dominant == "start"].head(6)
general = circuits.start_activations(lm, list(start_q.id), P[:4])
general = general.merge(start_q[["id", "rank", "share_start"]], on="id")
general.drop(columns=["ratio"]).set_index("id").round(4)

# %% tags=["remove-cell"]
results.table("general_neurons", general)
if len(general):
    results.add("top_general", general.id.iloc[0])
    results.add("top_general_coef", float(general.start_coef.iloc[0]), fmt=".0f")
    results.add("top_general_other", float(general.other_abs.iloc[0]), fmt=".2g")
    results.add("general_layers", ", ".join(str(circuits.NeuronId.parse(x).layer) for x in general.id))
else:
    for key in ("top_general", "top_general_coef", "top_general_other", "general_layers"):
        results.add(key, "n/a")

# %% [markdown]
# The strongest, {glue:text}`top_general`, has coefficient {glue:text}`top_general_coef`
# at the start token, against a mean absolute coefficient of {glue:text}`top_general_other`
# at the other positions. The paper's two general neurons sit in FFN layer 2 of Llama; ours
# sit in layers {glue:text}`general_layers`. Chapter 4 tests what happens when they are
# masked.
#
# ## Shared frequency versus K
#
# How many neurons do the prompts share? For each prompt we take its own top-K neurons of
# each kind. A neuron's *shared frequency* at K is the fraction of prompts whose top-K
# contains it; attention neurons are counted without their position. The paper reports that
# at K = 10 the most shared neurons appear in about 60% of the cases. We read this claim as
# the mean shared frequency of the K most shared neurons, and give the maximum as well.

# %%
sf_table, curves, sf = circuits.shared_frequency_report(da.per_prompt_topk, shared_ks,
                                                        names=KIND_NAMES, **boot)
sf_table

# %% tags=["remove-cell"]
for (k, K), st in sf.items():
    results.add(f"shared_mean_{k}_K{K}", st["mean_top_K"], fmt=".0%")
    results.add(f"shared_max_{k}_K{K}", st["max"], fmt=".0%")
results.table("shared_frequency", curves)
fig, ax = plt.subplots(figsize=(8, 4.2))
sns.lineplot(data=curves, x="rank", y="frequency", hue="kind", style="K", ax=ax, marker="o", markersize=3)
ax.axhline(0.6, color="grey", ls=":", lw=1)
ax.text(1, 0.61, "paper: ~60% at K = 10", fontsize=plots.MIN_FONT_PT, color="grey")
ax.set_xscale("log")
ax.set_ylim(0, 1.02)
plots.label(ax, "neuron rank by shared frequency (log scale)", "fraction of prompts with\nthe neuron in their top-K",
            "Shared frequency versus K")
fig.tight_layout()
plots.glue_figure("fig_shared", fig)

# %% [markdown]
# ```{glue:figure} fig_shared
# :name: fig-circuits-shared
#
# Shared frequency of the n-th most shared neuron for K = 10 (solid) and K = 50 (dashed).
# A few neurons of every kind sit in the top-K of most prompts. Frequency falls off quickly
# with rank, so the per-prompt top lists share a small core and differ in the rest.
# ```
#
# In {numref}`fig-circuits-shared`, at K = 10 the 10 most shared FFN value neurons appear on average in
# {glue:text}`shared_mean_ffn_value_K10` {glue:text}`shared_mean_ffn_value_K10_ci` of the
# prompts' top-10 lists (the most shared one in {glue:text}`shared_max_ffn_value_K10`). For
# attention value neurons the figure is {glue:text}`shared_mean_attn_value_K10`
# {glue:text}`shared_mean_attn_value_K10_ci`, and for query neurons
# {glue:text}`shared_mean_ffn_query_K10` {glue:text}`shared_mean_ffn_query_K10_ci`. At K = 50
# the same statistic is {glue:text}`shared_mean_ffn_value_K50`,
# {glue:text}`shared_mean_attn_value_K50` and {glue:text}`shared_mean_ffn_query_K50`.
#
# ## Verdict
#
# What carries over from the paper to this 135M model:
#
# * **Layer roles.** Value neurons sit in the deepest layers and query neurons in shallower
#   ones ({numref}`fig-circuits-layers`). The nurse prediction runs from query neurons
#   through attention neurons to deep value neurons, as in Figure 1
#   ({numref}`fig-circuits-nurse`).
# * **General neurons at the start token.** A few FFN query neurons have massive,
#   prompt-independent activations at the start token and take the largest share of the query
#   scores ({glue:text}`share_start_ffn_query` of the top-50's score). They are the
#   counterpart of the paper's two layer-2 general neurons, though ours sit in different
#   layers ({glue:text}`general_layers`).
# * **A shared core.** At K = 10 the most shared neurons appear in
#   {glue:text}`shared_mean_ffn_value_K10` (FFN value), {glue:text}`shared_mean_attn_value_K10`
#   (attention) and {glue:text}`shared_mean_ffn_query_K10` (query) of the prompts' top
#   lists. That is close to the paper's "about 60%", although the paper's exact definition is
#   not known.
# * **Gender neurons exist.** The weights hold neurons with the paper's Table-2 pattern
#   (*woman, women, girl* against *man, men*; *her, she, herself* against *himself, his, he*).
#
# What does not, or only partly:
#
# * **The top neurons are generic, not gendered.** The top-50 by log-probability increase
#   raise *man* and *woman* almost equally (gender specificity
#   {glue:text}`specificity_ffn_value` for FFN value neurons). Gendered projections are rare
#   among them ({glue:text}`share_gendered_ffn_value`, against
#   {glue:text}`share_gendered_random_ffn` for random neurons). The clearest gender neurons
#   are not in the top-50, and the strongest of them push against the biased token.
# * **The word carries little.** The paper's gender neurons work at the stereotyped word.
#   Here the word's tokens carry {glue:text}`share_word_ffn_query` of the top query neurons'
#   score and {glue:text}`share_word_attn_value` of the attention neurons' score. The rest
#   goes to the start token and to the template tokens shared by all prompts. A word route
#   exists (the nurse example shows one), but it is the smaller one.
# * **Caveats.** With one template per category, the "other tokens" route is partly a
#   template effect. The top lists depend on the word sample; compare the quick profile
#   (a seeded subset) with the full one (all 400 words).
#
# The rankings are saved for the next chapters in `results/`:
# `03_tracing_gender_circuits__rankings.parquet` (the top-50 per kind by summed
# log-probability increase, with position shares and important positions),
# `__ranking_logodds.parquet` (the top-50 value neurons by log-odds effect) and
# `__per_prompt_topk.parquet` (each prompt's own top lists).

# %% [markdown]
# ## Exercises
#
# ```{exercise} The log-probability increase of one FFN neuron
# :label: ex-ch3-lpi
#
# *Difficulty: ★★★, about 30 minutes.*
#
# Write `log_prob_increase(model, prompt, target, layer, index)` for an FFN value neuron
# ({ref}`methods-readout`): run the prompt with a cache; take the residual stream before the layer's
# FFN at the last position, $x$ = `blocks.{layer}.hook_resid_mid`; the neuron's subvalue is
# its coefficient `blocks.{layer}.mlp.hook_post[..., index]` times its output row (column
# `index` of the layer's `mlp.down_proj.weight`). Return
# $\log p(t \mid x + v) - \log p(t \mid x)$, where both are read through the final norm with its
# scale held fixed at the real forward pass's value (`ln_final.hook_scale`) and the gain
# `neurons.final_norm_gain(model)`, then the unembedding `neurons.lm_head(model)`. Check it on
# the chapter's strongest FFN value neuron with
# `checks.check_log_prob_increase(log_prob_increase, lm, prompt=nurse_prompt, target=nurse.target, neuron=top_ffn)`.
#
# :::{admonition} Hint
# :class: dropdown
# `model.run_with_cache(models.encode(model, prompt).tokens)` gives the cache. Write one inner
# function `logp(h)` that maps a residual vector to the target's log-probability
# (`final_norm_gain(model) * h / scale`, times the transposed weight of `lm_head(model)`, then
# `log_softmax`) and call it on $x + v$ and on $x$. The output row is `neurons.hf_layer(model,
# layer).mlp.down_proj.weight[:, index]`.
# :::
# ```

# %% tags=["remove-cell"]
top_ffn = str(da.tables["ffn_value"].id.iloc[0])

# %% tags=["student", "remove-cell"]
def log_prob_increase(model, prompt, target, layer, index):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch3-lpi
# :class: dropdown
# ```

# %% tags=["solution"]
from analysis_lib.neurons import final_norm_gain, hf_layer, lm_head


def log_prob_increase(model, prompt, target, layer, index):
    with torch.inference_mode():
        _, cache = model.run_with_cache(models.encode(model, prompt).tokens)
        x = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
        v = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, index] * hf_layer(model, layer).mlp.down_proj.weight[:, index]
        scale = cache["ln_final.hook_scale"][0, -1]
        t = models.single_token_id(model, target)

        def logp(h):
            return ((final_norm_gain(model) * h / scale) @ lm_head(model).weight.T).log_softmax(-1)[t]

        return float(logp(x + v) - logp(x))


checks.check_log_prob_increase(log_prob_increase, lm, prompt=nurse_prompt, target=nurse.target, neuron=top_ffn)

# %% [markdown] tags=["solution"]
# Holding the norm's scale fixed makes the score a property of the neuron's direction and
# size alone. Recomputing the norm on $x + v$ would also credit the neuron with the change of
# the whole residual's length; the check's message points at that mistake.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} Reading a neuron's name
# :label: ex-ch3-names
#
# *Difficulty: ★☆☆, about 15 minutes.*
#
# The study names neurons like the paper: `ffnL2N7003` is FFN neuron 7003 of layer 2, and
# `attnL18H7D40P0` is dimension 40 of head 7's value vector in layer 18, read at source
# position 0. Write `neuron_name(kind, layer, index_or_head, dim=None, position=None)` and
# `position(neuron_id)`, check them with `checks.check_neuron_name` and
# `checks.check_start_position`. Then use `position` on the prompts' own top attention value
# neurons (`da.per_prompt_topk["attn_value"]`, one list of ids per prompt; the dataset-level
# ranking sums a neuron over positions, so its ids carry no position) to find the share that
# read from position 0, the start token.
#
# :::{admonition} Hint
# :class: dropdown
# f-strings build the names; a regular expression such as `r"P(\d+)$"` reads the position
# back. Flatten `da.per_prompt_topk["attn_value"]` into one list of ids before counting.
# :::
# ```

# %% tags=["student", "remove-cell"]
def neuron_name(kind, layer, index_or_head, dim=None, position=None):
    ...  # your code here


def position(neuron_id):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch3-names
# :class: dropdown
# ```

# %% tags=["solution"]
import re


def neuron_name(kind, layer, index_or_head, dim=None, position=None):
    if kind == "ffn":
        return f"ffnL{layer}N{index_or_head}"
    return f"attnL{layer}H{index_or_head}D{dim}P{position}"


def position(neuron_id):
    return int(re.search(r"P(\d+)$", neuron_id).group(1))


checks.check_neuron_name(neuron_name)
checks.check_start_position(position)
attn_positions = pd.Series([position(str(n)) for top_list in da.per_prompt_topk["attn_value"] for n in top_list])
pd.Series({"per-prompt top attention value neurons": len(attn_positions),
           "share reading position 0": float((attn_positions == 0).mean())})

# %% [markdown] tags=["solution"]
# An attention value neuron of one prompt is tied to one source position, so its name carries
# it. Compare the share with the position shares of {numref}`fig-circuits-positions`, which
# weigh each neuron by its score rather than counting it once.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.time("total", time.perf_counter() - t0)
results.save()
