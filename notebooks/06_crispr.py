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
# (ch-crispr)=
# # Bias neurons elimination (CRISPR)
#
# Paper 2 {cite}`yang2024crispr` asks a practical question: an instruction-following model
# answers a multiple-choice question about people, and picks the stereotyped answer. Are a few
# neurons responsible, and can we simply remove them? Its method, CRISPR, scores every neuron
# by *activation × gradient* of the most probable **wrong** answer, discounts neurons that also
# support the **right** answer, and prunes the top few. On Flan-T5 it raised BBQ accuracy by up
# to 20 points while removing as few as three neurons.
#
# This chapter ports CRISPR to our decoder-only models and runs it on BBQ
# {cite}`parrish2022bbq`, the bias benchmark of the paper, in the category our study is about
# (gender identity), then applies the neurons it finds to two other categories and compares
# them with the gender-neuron edit of chapter 5.
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 06 --profile full` executes it with papermill at the published
# size; `-p model=gemma3-270m` runs it on another model and `-p category=Age` on another BBQ
# category (the local data hold Gender_identity, Age and Disability_status).
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile, quick or full (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
category = "Gender_identity"  # BBQ category the bias neurons are found on
transfer_categories = ["Age", "Disability_status"]  # BBQ categories the found neurons are applied to
n_instructions = None  # instructions of the 10 used (each item is asked under each) (None: the profile's)
n_attr_items = None  # BBQ items of the attribution (the paper uses 20) (None: the profile's)
n_select_items = None  # dev items that choose how many neurons to prune (None: the profile's)
grid = None  # numbers of pruned neurons tried (None: the profile's)
n_test_items = None  # test items of the main result (None: the profile's)
n_ablation_items = None  # items of each ablation (None: the profile's)
n_ablation_instructions = None  # instructions of each ablation (None: the profile's)
n_random = None  # random draws of the random-pruning control (None: the profile's)
n_transfer_items = None  # items per transfer category (None: the profile's)
n_transfer_instructions = None  # instructions of the transfer (None: the profile's)
attn_universe = None  # also attribute attention neurons (None: the profile's)
capability_profile = None  # capability-suite items per task before/after pruning (None: the profile's)
bias_profile = None  # bias-suite preset of the head to head (None: the profile's; quick skips the suite)
n_boot = None  # bootstrap resamples of every interval (None: the profile's)
batch_size = 16  # prompts per forward pass

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("06_crispr", globals()))  # the sizes left None, from the profile

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from IPython.display import display
from myst_nb import glue

from analysis_lib import checks, crispr, models, plots
from analysis_lib.results import Results, results_dir

torch.manual_seed(seed)
plots.setup()
pd.set_option("display.max_colwidth", 80)
results = Results("06_crispr", dict(
    model=model, device=device, dtype=dtype, profile=profile, seed=seed, category=category,
    transfer_categories=transfer_categories, n_instructions=n_instructions, n_attr_items=n_attr_items,
    n_select_items=n_select_items, grid=grid, n_test_items=n_test_items, n_ablation_items=n_ablation_items,
    n_ablation_instructions=n_ablation_instructions, n_random=n_random, n_transfer_items=n_transfer_items,
    n_transfer_instructions=n_transfer_instructions, attn_universe=attn_universe,
    capability_profile=capability_profile, bias_profile=bias_profile, n_boot=n_boot))
t_start = time.perf_counter()
lm = models.load_model(model, device=device, dtype=dtype)
instructions = crispr.INSTRUCTIONS[:n_instructions]
score_cache: dict = {}
glue("profile_note", (
    "This is the quick profile: every number below comes from a handful of items and "
    f"{n_instructions} of the 10 instructions, so it checks that the pipeline runs, not what it finds. "
    "The published book uses the full profile."
) if profile == "quick" else (
    f"Full profile: {n_attr_items} attribution items, {n_select_items} selection items and "
    f"{n_test_items} test items, each under all {n_instructions} instructions."
), display=False)

# %% [markdown]
# ```{note}
# {glue:text}`profile_note`
# ```
#
# ## The task: BBQ under ten instructions
#
# A BBQ item gives a short context that mentions two people, a question and three answers: the
# two people and an "unknown" answer. In *ambiguous* contexts the right answer is always
# "unknown"; in *disambiguated* contexts the context states who did what. A biased model
# picks the stereotyped person when it should not.
#
# CRISPR wraps every item in an instruction and measures how much the answer depends on the
# instruction's wording. We wrote ten paraphrases of "answer the question given the context"
# (the paper's Table 6 strings were not available to us) and use the official prompt layout.
# Each option is scored as a teacher-forced continuation after the prompt: its **sequence
# log-probability** (sum over its tokens), the argmax being the answer, as in the official
# code's scoring mode. We strip the prompt's trailing space and score `" " + option`, since
# this tokenizer attaches a space to the following word; all three options of an item are
# scored in one forward pass with a block attention mask (exactly three separate passes, at a
# third of the cost; see `analysis_lib.crispr`).

# %%
items = crispr.load_items(category)
dev, test = crispr.split_dev_test(items, dev_fraction=0.1, seed=0)
print(f"BBQ {category}: {len(items)} items -> dev {len(dev)} / test {len(test)} (seeded 10 % / 90 % split)")
print(repr(crispr.build_prompt(crispr.INSTRUCTIONS[0], test.iloc[0])))
pd.DataFrame({"instruction": crispr.INSTRUCTIONS}, index=range(1, 11))

# %% tags=["remove-cell"]
attr_items = crispr.sample_items(dev, n_attr_items, seed=seed)
select_items = crispr.sample_items(dev.drop(attr_items.index), n_select_items, seed=seed + 1)
test_items = crispr.sample_items(test, n_test_items, seed=seed)
results.add("n_items", len(items), fmt=",")
results.add("n_dev", len(dev), fmt=",")
results.add("n_test", len(test), fmt=",")
results.add("n_test_used", len(test_items))
results.add("n_attr_used", len(attr_items))
results.add("n_select_used", len(select_items))
results.add("category_name", category)

# %% [markdown]
# The chapter uses {glue:text}`n_attr_used` dev items for the attribution (the paper uses 20),
# {glue:text}`n_select_used` other dev items to choose the number of pruned neurons and
# {glue:text}`n_test_used` of the {glue:text}`n_test` test items for the results. Every item
# is run under every instruction, and a forward pass over a ~90-token prompt is slow on a CPU,
# so the subsets are what the book can afford; the intervals below show what that costs in
# precision.
#
# ## Bias neurons by activation × gradient
#
# For every (instruction, item) pair the biased output ŷ is the most probable wrong option and
# α = P(ŷ) its sequence probability. For every FFN neuron (the input units of `down_proj`,
# bridge hook `blocks.{l}.mlp.hook_post`) and every token position t, the attribution is
# h·∂log P/∂h. It is aggregated by its maximum over the prompt and answer tokens, once for ŷ
# and once for the gold answer y, and combined as
# B = α·max A(ŷ) − λ·max(0, α·max A(y)) with λ = 1 (the clamp per item). The *skill term*
# removes neurons that also drive the right answer. B is averaged over items and instructions
# and the neurons are ranked globally.

# %%
attr = crispr.attribute(lm, attr_items, instructions, units="ffn+attn" if attn_universe else "ffn",
                        batch_size=8)
ranking = crispr.top_neurons(attr, 10)
pd.DataFrame({"neuron": [str(n) for n in ranking],
              "B": [attr.scores["crispr"][crispr.rank_units(attr)[k]] for k in range(10)]},
             index=range(1, 11))

# %% tags=["remove-cell"]
inst = attr.instances
results.add("alpha_mean", float(inst["alpha"].mean()), fmt=".3f")
results.add("share_biased_unknown", float((inst["biased"] == 2).mean()), fmt=".0%")
results.add("top_neuron", str(ranking[0]))
results.add("top10", [str(n) for n in ranking])
results.add_time("attr_seconds", attr.seconds)
acc_attr = float((inst[["logprob0", "logprob1", "logprob2"]].to_numpy().argmax(1) == inst["label"]).mean())
results.add("attr_item_accuracy", acc_attr, fmt=".0%")

# %% [markdown]
# The most probable wrong option has a mean probability α = {glue:text}`alpha_mean` on the
# attribution items (a sequence probability, so small for multi-token answers), and it is the
# "unknown" answer in {glue:text}`share_biased_unknown` of them. The top neuron is
# {glue:text}`top_neuron`; the attribution took {glue:text}`attr_seconds` s.
#
# ## How many neurons to prune
#
# The number n of pruned neurons is chosen on dev items: the grid point with the highest mean
# accuracy over the instructions (the smallest n on ties). The official code searches
# [0, 500] by golden section; a fixed grid is cheaper on a CPU.

# %%
n_star, grid_table = crispr.choose_n(lm, attr, select_items, instructions, grid, cache=score_cache,
                                     batch_size=batch_size)
grid_table

# %% tags=["remove-cell"]
results.add("n_chosen", n_star)
results.add("n_chosen_share", n_star / attr.n_ffn, fmt=".4%")
results.table("grid", grid_table)
neurons = crispr.top_neurons(attr, n_star)
results.add("bias_neurons", [str(n) for n in neurons])
# the ablations need some pruning to compare: if dev chose n = 0, they use the best n > 0 on dev
positive = grid_table[grid_table["n"] > 0]
n_abl = n_star if n_star > 0 or positive.empty else int(positive.sort_values(["mean_accuracy", "n"],
                                                                             ascending=[False, True])["n"].iloc[0])
conditions = crispr.ablation_conditions(attr, n_abl, n_random=n_random, seed=seed, attn_universe=attn_universe)
results.add("n_ablation", n_abl)
glue("n_ablation_note", f"the chosen n = {n_star}" if n_abl == n_star else
     f"n = {n_abl}, the best positive grid point on dev, since the search chose n = 0 (no pruning)", display=False)

# %% [markdown]
# The dev search chose **n = {glue:text}`n_chosen`** neurons ({glue:text}`n_chosen_share` of the
# FFN neurons). With n = 0 the model is unchanged.
#
# ## Results on the test items

# %%
main = crispr.evaluate_conditions(lm, test_items, {"original": [], "CRISPR": neurons}, instructions,
                                  batch_size=batch_size, cache=score_cache)
main_table = crispr.summary_table(main, n_boot=n_boot, seed=seed)
cols = ["condition", "mean_accuracy", "std_accuracy", "accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb",
        "share_unknown", "accuracy_length_norm"]
main_table[cols].set_index("condition").round(3)

# %% tags=["remove-cell"]
results.table("main", main_table)
results.table("instructions", crispr.instruction_table(main))
summ = {k: crispr.summarize(v, n_boot=n_boot, seed=seed) for k, v in main.items()}
for cond, key in (("original", "orig"), ("CRISPR", "crispr")):
    s = summ[cond]
    results.add(f"{key}_acc", s["mean_accuracy"] * 100, fmt=".1f")
    results.add(f"{key}_std", s["std_accuracy"] * 100, fmt=".1f")
    results.add(f"{key}_acc_ci", {"estimate": s["accuracy"].estimate, "low": s["accuracy"].low,
                                  "high": s["accuracy"].high})
    for m in ("accuracy_ambig", "accuracy_disambig", "s_dis", "s_amb"):
        results.add(f"{key}_{m}", s[m], fmt=".2f")
    results.add(f"{key}_unknown", s["share_unknown"], fmt=".0%")
d_acc = crispr.paired_change(main["CRISPR"], main["original"], "accuracy", n_boot=n_boot, seed=seed)
d_sdis = crispr.paired_change(main["CRISPR"], main["original"], "s_dis", n_boot=n_boot, seed=seed)
results.add("delta_acc", d_acc, fmt="+.3f")
results.add("delta_sdis", d_sdis, fmt="+.2f")
glue("delta_acc_verdict", "an interval that excludes zero" if d_acc.excludes_zero()
     else "an interval that includes zero, i.e. no detectable change", display=False)
shift_text, by_unknown = crispr.answer_shift(summ["original"], summ["CRISPR"], d_sdis)
glue("shift_text", shift_text, display=False)
results.add("by_unknown", by_unknown)
glue("length_text", (
    "this rules out most \"unknown\" answers on length alone for the original model, so its ambiguous items "
    "are nearly always wrong. The pruned model answers \"unknown\" almost everywhere instead (see above), "
    "which fixes the ambiguous items and breaks the disambiguated ones." if by_unknown else
    "this rules out most \"unknown\" answers on length alone, so ambiguous items are nearly always wrong, "
    f"and pruning leaves that largely in place ({100 * summ['CRISPR']['share_unknown']:.0f} % \"unknown\" "
    "answers after pruning)."), display=False)

# %% [markdown]
# {numref}`fig-crispr-main` shows how n was chosen and the accuracy under each instruction.
# Over the instructions the original model's mean accuracy is {glue:text}`orig_acc` %
# (standard deviation across instructions {glue:text}`orig_std` points); after pruning it is
# {glue:text}`crispr_acc` % ({glue:text}`crispr_std`). The paired change in pooled accuracy is
# {glue:text}`delta_acc` {glue:text}`delta_acc_ci`, {glue:text}`delta_acc_verdict`. On ambiguous
# contexts, where "unknown" is always right, the original model is right
# {glue:text}`orig_accuracy_ambig` of the time and picks "unknown" in
# {glue:text}`orig_unknown` of all answers: sequence log-probabilities penalise the longer
# "unknown" answers (`Can't be determined` is five tokens, a person two), which the
# length-normalised column shows. {glue:text}`shift_text`

# %% tags=["remove-cell"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
sns.lineplot(data=grid_table.assign(n1=grid_table["n"] + 1), x="n1", y="mean_accuracy", marker="o", ax=axes[0])
axes[0].axvline(n_star + 1, color="grey", ls="--", lw=1)
axes[0].set_xscale("log")
plots.label(axes[0], "pruned neurons n + 1 (log scale)", "mean dev accuracy over instructions",
            "Choosing n on dev items")
inst_tab = crispr.instruction_table(main)
sns.pointplot(data=inst_tab, x="instruction", y="accuracy", hue="condition", dodge=0.3, ax=axes[1])
plots.label(axes[1], "instruction", "test accuracy", "Accuracy per instruction")
fig.tight_layout()
glue("fig_crispr_main", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_crispr_main
# :name: fig-crispr-main
#
# Left: mean dev accuracy over the instructions for each number of pruned neurons (the dashed
# line marks the chosen n; the x axis shows n + 1 so that n = 0 fits a log scale). Right: test
# accuracy of the original and the pruned model under each instruction. CRISPR's claim is that
# pruning raises the accuracy *and* narrows the spread between instructions.
# ```
#
# ## Ablations (the paper's Table 5)
#
# Each ablation changes one ingredient of the score and prunes the same number of neurons,
# {glue:text}`n_ablation_note`: the mean instead of the maximum over tokens, no confidence weight (α = 1), no skill term
# (λ = 0), and random neurons (seeded draws). The paper found every ingredient helps a little
# and random pruning does nothing. When the profile sets `attn_universe`, a further row
# (`crispr_ffn+attn`) ranks the FFN units together with the attention value units of every head
# (`hook_z`, the inputs of `o_proj`), closer to the paper's "every linear unit" universe. The
# ablations run on the first
# {glue:text}`n_ablation_items_used` test items under {glue:text}`n_ablation_ins_used`
# instructions.

# %%
sub = {k: v.subset(n_ablation_items, n_ablation_instructions) for k, v in main.items()}
abl_items = sub["original"].items
abl = crispr.evaluate_conditions(lm, abl_items, {k: v for k, v in conditions.items() if k != "original"},
                                 instructions[:n_ablation_instructions], batch_size=batch_size, cache=score_cache)
abl_table = crispr.summary_table({"original": sub["original"], **abl}, ci=False)
abl_table["overlap_with_crispr"] = [crispr.overlap(conditions[c], conditions["crispr"])["n_shared"]
                                    for c in abl_table["condition"]]
abl_table[["condition", "mean_accuracy", "std_accuracy", "s_dis", "s_amb", "overlap_with_crispr"]].set_index("condition").round(3)

# %% tags=["remove-cell"]
results.add("n_ablation_items_used", len(abl_items))
results.add("n_ablation_ins_used", len(sub["original"].instructions))
results.table("ablations", abl_table)
rand = abl_table[abl_table["condition"].str.startswith("random")]
ab = abl_table.set_index("condition")
results.add("abl_crispr", ab.loc["crispr", "mean_accuracy"] * 100, fmt=".1f")
results.add("abl_original", ab.loc["original", "mean_accuracy"] * 100, fmt=".1f")
for v in ("mean_tokens", "no_confidence", "no_skill"):
    results.add(f"abl_{v}", ab.loc[v, "mean_accuracy"] * 100, fmt=".1f")
results.add("abl_random_mean", float(rand["mean_accuracy"].mean()) * 100, fmt=".1f")
results.add("abl_random_n", len(rand))

# %% [markdown]
# On this subset the original model scores {glue:text}`abl_original` %, CRISPR
# {glue:text}`abl_crispr` %, mean-over-tokens {glue:text}`abl_mean_tokens` %, no confidence
# weight {glue:text}`abl_no_confidence` %, no skill term {glue:text}`abl_no_skill` %, and
# {glue:text}`abl_random_n` random draws {glue:text}`abl_random_mean` % on average. The last
# column counts the neurons each variant shares with CRISPR's.
#
# ## Does pruning cost capability?
#
# The paper reports that pruning keeps the model's other skills. We run the study's capability
# tasks (arithmetic, RACE, PIQA, perplexity on neutral text; chapter 5 uses the same suite) on
# the original and the pruned model.

# %%
cap_cache: dict = {}
cap = crispr.capability_before_after(lm, neurons, capability_profile, seed, capability_cache=cap_cache)
cap.round(4)

# %% tags=["remove-cell"]
results.table("capability", cap)
worst = cap[cap["metric"] == "accuracy"]["diff"].min() if (cap["metric"] == "accuracy").any() else float("nan")
results.add("cap_worst_acc_change", float(worst) * 100, fmt="+.1f")
ppl = cap[cap["metric"] == "perplexity"]
results.add("cap_ppl_change", float(ppl["diff"].iloc[0]) if len(ppl) else float("nan"), fmt="+.2f")
glue("cap_ppl_text", (f"perplexity on neutral text goes from {ppl.original.iloc[0]:.2f} to {ppl.pruned.iloc[0]:.2f} "
                      f"({100 * ppl['diff'].iloc[0] / ppl.original.iloc[0]:+.0f} %)") if len(ppl) else
     "perplexity was not measured in this profile", display=False)

# %% [markdown]
# The largest drop in a capability accuracy is {glue:text}`cap_worst_acc_change` points
# (intervals in the table) and {glue:text}`cap_ppl_text`.
#
# ## Transfer to other BBQ categories
#
# The paper found that neurons found on one BBQ category also help on others. We prune the
# neurons found on {glue:text}`category_name` and evaluate on test items of the other local
# categories ({glue:text}`n_transfer_used` items each).

# %%
transfer_items = {}
for cat in transfer_categories:
    _, t_test = crispr.split_dev_test(crispr.load_items(cat), 0.1, seed=0)
    transfer_items[cat] = crispr.sample_items(t_test, n_transfer_items, seed=seed)
tr_table, tr_scores = crispr.transfer(lm, neurons, transfer_items, instructions[:n_transfer_instructions],
                                      batch_size=batch_size, n_boot=n_boot, seed=seed)
tr_table[["category", "condition", "mean_accuracy", "std_accuracy", "s_dis", "s_amb", "accuracy_change",
          "accuracy_change_low", "accuracy_change_high"]].round(3)

# %% tags=["remove-cell"]
results.table("transfer", tr_table)
for cat in transfer_categories:
    t = tr_table[tr_table["category"] == cat].set_index("condition")
    results.add(f"tr_{cat}_orig", t.loc["original", "mean_accuracy"] * 100, fmt=".1f")
    results.add(f"tr_{cat}_pruned", t.loc["pruned", "mean_accuracy"] * 100, fmt=".1f")
results.add("n_transfer_used", n_transfer_items)
results.add("transfer_text", "; ".join(
    f"{cat}: {results.values[f'tr_{cat}_orig']:.1f} % as is, {results.values[f'tr_{cat}_pruned']:.1f} % pruned"
    for cat in transfer_categories))

# %% tags=["remove-cell"]
plot_tr = pd.concat([main_table.assign(category=category).replace({"condition": {"CRISPR": "pruned"}}), tr_table])
fig, ax = plt.subplots(figsize=(7.5, 4))
sns.barplot(data=plot_tr, x="category", y="mean_accuracy", hue="condition", ax=ax)
plots.label(ax, "BBQ category", "mean accuracy over instructions", f"Neurons found on {category}")
ax.axhline(1 / 3, color="grey", ls="--", lw=1)
fig.tight_layout()
glue("fig_crispr_transfer", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_crispr_transfer
# :name: fig-crispr-transfer
#
# Mean accuracy over the instructions of the original model and of the model with the bias
# neurons found on the first category pruned, on that category's test items and on the other
# categories (the dashed line is chance, one in three).
# ```
#
# In {numref}`fig-crispr-transfer` the mean accuracies on the other categories are:
# {glue:text}`transfer_text`. The intervals of the table above say whether any change is
# larger than the noise of these small subsets.
#
# ## Head to head with the gender-neuron edit of chapter 5
#
# {glue:text}`h2h_status` {glue:text}`general_text`

# %%
edit_path = results_dir() / f"edit_{model}.json"
h2h = None
if edit_path.is_file():
    from analysis_lib.editing import load_edit

    other = load_edit(edit_path)
    h2h = crispr.compare_edits(lm, {"CRISPR": neurons, "chapter 5": other.neurons}, test_items, instructions,
                               bias_profile=bias_profile, capability_profile=capability_profile, seed=seed,
                               batch_size=batch_size, n_boot=n_boot, cache=score_cache, capability_cache=cap_cache)
    display(h2h["bbq"][cols].set_index("condition").round(3))
    if h2h["bias"] is not None:
        display(h2h["bias"].pivot_table(index=["benchmark", "variant", "metric"], columns="condition",
                                        values="estimate").round(3))
    display(h2h["capability"].pivot_table(index=["task", "metric"], columns="condition", values="value").round(3))

# %% tags=["remove-cell"]
shared_general, general_text = crispr.general_overlap(neurons, model)
results.add("crispr_general", shared_general)
glue("general_text", general_text, display=False)
if h2h is None:
    glue("h2h_status", f"Chapter 5 has not saved its edit for {model} yet (results/edit_{model}.json), so this "
         "comparison appears once chapter 5 has run: the same BBQ items, the bias suite and the capability "
         "tasks on both edits, with the overlap of the two neuron sets.", display=False)
    results.add("h2h_available", False)
else:
    ov = h2h["overlap"]["CRISPR vs chapter 5"]
    b = h2h["bbq"].set_index("condition")
    glue("h2h_status", (
        f"Chapter 5 edits {ov['n_b']} neurons chosen to reduce gender bias on CommonWords; CRISPR prunes "
        f"{ov['n_a']} chosen on BBQ. The two sets share {ov['n_shared']} neurons (Jaccard "
        f"{ov['jaccard']:.3f}) and {len(ov['shared_layers'])} layers. On the same BBQ test items the mean "
        f"accuracy is {100 * b.loc['original', 'mean_accuracy']:.1f} % for the original model, "
        f"{100 * b.loc['CRISPR', 'mean_accuracy']:.1f} % with CRISPR's pruning and "
        f"{100 * b.loc['chapter 5', 'mean_accuracy']:.1f} % with chapter 5's edit; s_DIS is "
        f"{', '.join(crispr.score_text(b.loc[c, 's_dis']) for c in ('original', 'CRISPR'))} and "
        f"{crispr.score_text(b.loc['chapter 5', 's_dis'])}. "
        + ("The tables below give the study's bias suite (chapter 2) and the capability tasks for all three."
           if h2h["bias"] is not None else
           "The tables below give the capability tasks for all three; this profile skips the bias suite "
           "(the full profile runs it).")), display=False)
    results.add("h2h_available", True)
    results.add("h2h_overlap", {k: v for k, v in ov.items()})
    results.table("h2h_bbq", h2h["bbq"])
    if h2h["bias"] is not None:
        results.table("h2h_bias", h2h["bias"])
    results.table("h2h_capability", h2h["capability"])

# %% [markdown]
# ## What reproduces
#
# The paper's Table 1 reports, for Flan-T5 (an encoder-decoder trained on instructions much
# like these), accuracy before and after CRISPR (numbers as transcribed by a secondary
# summary, see {ref}`methods-sources`; SES is not in our local data, and for Age and Disability our
# numbers come from neurons found on another category, where the paper pruned neurons found on
# the same one):

# %%
paper = pd.DataFrame({
    "model": ["Flan-T5-base (250M)"] * 3 + ["Flan-T5-large (780M)"] * 2,
    "category": ["SES", "Age", "Disability", "Age", "Disability"],
    "original": [65.63, 43.60, 43.44, 53.62, 53.26],
    "CRISPR": [71.68, 60.32, 62.88, 73.60, 76.13],
})
ours = pd.DataFrame({
    "model": [model] * (1 + len(transfer_categories)),
    "category": [category] + [f"{c} (transfer)" for c in transfer_categories],
    "original": [summ["original"]["mean_accuracy"] * 100] + [results.values[f"tr_{c}_orig"] for c in transfer_categories],
    "CRISPR": [summ["CRISPR"]["mean_accuracy"] * 100] + [results.values[f"tr_{c}_pruned"] for c in transfer_categories],
})
pd.concat([paper.assign(source="paper (Table 1)"), ours.assign(source="this chapter")], ignore_index=True).round(1)

# %% tags=["remove-cell"]
gain = (summ["CRISPR"]["mean_accuracy"] - summ["original"]["mean_accuracy"]) * 100
results.add("gain_pp", gain, fmt="+.1f")
gain_verdict = ("not reproduced" if not d_acc.excludes_zero() else ("reproduced" if gain > 0 else "opposite"))
results.add("verdict_gain", gain_verdict)
glue("verdict", (
    f"On {category} the pruned model's mean accuracy changes by {gain:+.1f} points "
    f"(paired interval of the pooled change {d_acc.low * 100:+.1f} to {d_acc.high * 100:+.1f}), against "
    "+6 to +23 points on the BBQ categories of the paper's Table 1. "
    + {"not reproduced": "The change is within the noise of this evaluation, so we do not reproduce the paper's gain: "
                         "a null result at this scale.",
       "reproduced": "The gain is detectable, so the direction of the paper's result reproduces here.",
       "opposite": "Pruning hurts here, the opposite of the paper's result."}[gain_verdict]
    + (" Whatever the pruning adds comes from answering \"unknown\" nearly always (above), not from using the "
       "context, so it is not the kind of gain the paper reports." if by_unknown and gain > 0 else "")
), display=False)
results.add_time("seconds_total", time.perf_counter() - t_start)

# %% [markdown]
# {glue:text}`verdict`
#
# Three differences from the paper temper any comparison. Our models are decoder-only and
# 2–20 times smaller than Flan-T5-base to -xl, and SmolLM2-135M-Instruct barely reads the BBQ
# context under these prompts (its original accuracy is close to what a model that always names
# a person would get). CRISPR can only remove what biases a decision the model actually makes
# from the context. Second, we score by sequence log-probability, as the official code's scoring
# mode does; {glue:text}`length_text` Third, the subsets are
# small, so the intervals are wide: the chosen n itself is uncertain. The chapter's
# machinery (the attribution is checked against finite differences in `tests/test_crispr.py`)
# runs unchanged on larger models with `-p model=...`.

# %% [markdown]
# ## Exercises
#
# ```{exercise} The BBQ bias scores
# :label: ex-ch6-bbq
#
# BBQ counts an answer as *biased* when it names the stereotyped group (the target) for a
# negative question, or the other person for a non-negative one. Among the answers that are
# not "unknown", within a context condition, $\text{raw} = 2\,n_\text{biased} / n_\text{non-unknown} - 1$.
# Then $s_\text{DIS} = \text{raw}(\text{disambiguated})$ and
# $s_\text{AMB} = (1 - \text{accuracy}_\text{ambiguous})\cdot\text{raw}(\text{ambiguous})$.
# Write `bbq_bias_scores(pred, label, unknown, target, polarity, condition)` for arrays
# (answer indices; `polarity` is "neg"/"nonneg", `condition` "ambig"/"disambig") returning
# `(s_dis, s_amb)`, check it with `checks.check_bbq_bias_scores`, and apply it to the
# original model's test answers (`crispr.pooled_answers(main["original"])` gives the arrays).
# ```

# %% tags=["student", "remove-cell"]
def bbq_bias_scores(pred, label, unknown, target, polarity, condition):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch6-bbq
# :class: dropdown
# ```

# %% tags=["solution"]
def bbq_bias_scores(pred, label, unknown, target, polarity, condition):
    pred, label, unknown, target = map(np.asarray, (pred, label, unknown, target))
    polarity, condition = np.asarray(polarity), np.asarray(condition)
    answered = pred != unknown
    biased = answered & (((pred == target) & (polarity == "neg")) | ((pred != target) & (polarity == "nonneg")))

    def raw(c):
        m = condition == c
        return 2 * biased[m].sum() / answered[m].sum() - 1 if answered[m].any() else float("nan")

    amb = condition == "ambig"
    return raw("disambig"), (1 - (pred[amb] == label[amb]).mean()) * raw("ambig")


checks.check_bbq_bias_scores(bbq_bias_scores)
arrays = crispr.pooled_answers(main["original"])
ours_bbq = bbq_bias_scores(*(arrays[k] for k in ("pred", "label", "unknown", "target", "polarity", "condition")))
pd.DataFrame({"ours": ours_bbq, "chapter": [float(summ["original"][k].estimate) for k in ("s_dis", "s_amb")]},
             index=["s_DIS", "s_AMB"])

# %% [markdown] tags=["solution"]
# The values match the chapter's point estimates. $s_\text{AMB}$ is scaled by the error rate
# because on ambiguous items "unknown" is the right answer: a model that answers "unknown"
# everywhere has no measurable bias there, whatever its few other answers say.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} The CRISPR score of a unit
# :label: ex-ch6-score
#
# For one (instruction, item) the method takes each unit's attribution toward the biased option
# $\hat y$, $a_t\,\partial \log P(\hat y)/\partial a_t$, and toward the gold answer $y$, at every
# token $t$. The unit's score is $\alpha \max_t a_t g^{\hat y}_t - \lambda \max(0, \alpha \max_t a_t g^{y}_t)$
# with $\alpha = P(\hat y)$. Write `crispr_score(act, grad_biased, grad_gold, alpha, lam)` for
# `[tokens, units]` arrays and check it with `checks.check_crispr_score(crispr_score)`. Which
# row of the ablation table above drops the second term, and what happened to accuracy there?
# ```

# %% tags=["student", "remove-cell"]
def crispr_score(act, grad_biased, grad_gold, alpha, lam):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch6-score
# :class: dropdown
# ```

# %% tags=["solution"]
def crispr_score(act, grad_biased, grad_gold, alpha, lam):
    biased = alpha * (act * grad_biased).max(0)
    skill = np.maximum(0.0, alpha * (act * grad_gold).max(0))
    return biased - lam * skill


checks.check_crispr_score(crispr_score)
ab.loc[["original", "crispr", "no_skill"], ["mean_accuracy"]]

# %% [markdown] tags=["solution"]
# The `no_skill` variant sets $\lambda = 0$: it may prune units that also support the right
# answer. The clamp keeps a unit that works *against* the gold answer from being rewarded
# for it.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} Another category, and the skill term
# :label: ex-ch6-transfer
#
# Re-run the chapter with `-p category=Age` and compare your numbers with the paper's
# BBQ-Age row (43.60 → 60.32 for Flan-T5-base). Then rank by the `no_skill` variant
# (`crispr.top_neurons(attr, n_star, "no_skill")`) and count how many of its top neurons are
# also among the chapter's pruned `neurons`.
# ```

# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch6-transfer
# :class: dropdown
# ```

# %% tags=["solution"]
crispr.overlap(crispr.top_neurons(attr, max(n_star, 1), "no_skill"), neurons or crispr.top_neurons(attr, 1))

# %% [markdown] tags=["solution"]
# The neurons that differ are those the skill term removed because their attribution toward
# the gold answer was large.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.save()
