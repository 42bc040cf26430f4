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
# (ch-reproduced)=
# # What reproduced
#
# This chapter puts every headline claim of paper 1 {cite}`yu2025understanding` and paper 2
# {cite}`yang2024crispr` beside what this study found, claim by claim, with a verdict and a
# one-line reason. It runs no model: it reads the machine-readable results that chapters 0–6
# wrote into `results/` (`results/<chapter>.json` and their parquet tables), through
# `analysis_lib.reproduction.compare`. The papers' values come from the summaries the study
# works from ({ref}`methods-sources`); where a summary gives no number the table says "not reported".
#
# ```{admonition} Re-run this chapter
# :class: tip
# Run chapters 0–6 first, then `python -m analysis_lib run 07 --profile full`; it takes
# seconds. To read another results directory (for instance a full-profile run kept
# elsewhere), set `GENDER_NEURONS_RESULTS=/path/to/results` for both the chapters and this
# one. A chapter that has not run, or ran in a profile without the part a claim needs, makes
# that claim "not tested" instead of failing.
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from analysis_lib import plots, reproduction
from analysis_lib.reproduction import VERDICTS
from analysis_lib.results import Results

plots.setup()
results = Results("07_what_reproduced", dict(model=model, device=device, dtype=dtype, profile=profile, seed=seed))
status = reproduction.chapter_status()
table = reproduction.compare()
counts = reproduction.verdict_counts(table)

# %% [markdown]
# ## How to read a verdict
#
# Each row states one claim, the paper's value, our value (with its 95 % bootstrap interval
# where the chapter recorded one), the model and chapter it comes from, and one of four
# verdicts:
#
# * **reproduced**: our result agrees with the claim, by the rule named in the row's reason;
# * **partly**: the direction or part of the claim holds, but not all of it, or not as strongly;
# * **not reproduced**: our result contradicts the claim, or cannot be told from no effect;
# * **not tested**: the study does not test it (the reason says so), or the chapter that would
#   test it did not run, or ran in a profile without that part ("not tested in this run").
#
# Where a chapter already states a verdict (chapter 4's `verdict_*`, chapter 5's
# `edit_verdict`, chapter 2's interval verdicts) the table takes it as is; the other rules are
# small functions of `analysis_lib.reproduction` (`interval_verdict`, `change_verdict`,
# `capability_verdict`), and the exercises at the end rebuild two of them. Two caveats apply
# to every row. Our models have 135–500M parameters, the papers' 250M–7B. And where the papers'
# exact definitions are unknown (the shared frequency, the entropy difference), only the
# direction of a result is comparable, not its value.
#
# ## Which results this chapter read

# %% tags=["remove-cell"]
glue("profile_text", reproduction.profile_summary(status), display=False)

# %% tags=["remove-input"]
status.style.hide(axis="index")

# %% [markdown]
# {glue:text}`profile_text` Quick-profile numbers come from small subsets and are there to
# show that the machinery runs; only full-profile verdicts should be quoted.
#
# ## The verdicts at a glance

# %% tags=["remove-cell"]
for verdict, n in counts.items():
    results.add(f"n_{verdict.replace(' ', '_')}", int(n))
n_tested = int(counts.drop("not tested").sum())
results.add("n_claims", len(table))
results.add("n_tested", n_tested)
results.add("share_reproduced_of_tested", float(counts["reproduced"] / max(n_tested, 1)), fmt=".0%")
results.add("verdicts", dict(zip(table.id, table.verdict)))
for verdict in VERDICTS:
    glue(f"list_{verdict.replace(' ', '_')}", reproduction.verdict_list(table, verdict), display=False)
results.table("comparison", table)

# %% tags=["remove-cell"]
fig, ax = plt.subplots(figsize=(7, 4.4))
reproduction.plot_verdicts(table, ax=ax)
fig.tight_layout()
plots.glue_figure("fig_verdicts", fig)

# %% [markdown]
# ```{glue:figure} fig_verdicts
# :name: fig-reproduced-verdicts
#
# How many claims of each chapter got each verdict, stacked from "reproduced" (left) to "not
# tested" (right). Chapter 2 holds the CommonWords rows (per
# category, and per model where the chapter compared models) and the baselines of the
# standard benchmarks; chapter 6 holds CRISPR and the head-to-head with chapter 5's edit.
# ```
#
# Of the {glue:text}`n_claims` rows of the table, {glue:text}`n_tested` were tested in this run:
# {glue:text}`n_reproduced` reproduced ({glue:text}`share_reproduced_of_tested` of those
# tested), {glue:text}`n_partly` partly and {glue:text}`n_not_reproduced` not; the other
# {glue:text}`n_not_tested` were not tested. {numref}`fig-reproduced-verdicts` breaks the
# counts down by chapter; the tables below give every row.

# %% tags=["remove-input"]
reproduction.verdict_counts(table, by="paper")

# %% [markdown]
# ## Paper 1: the running example, CommonWords and the benchmarks
#
# Chapters 0–2. The benchmark rows are the baselines both papers start from: the unedited
# model's bias on StereoSet, WinoGender, BBQ and WinoBias (chapter 2).

# %% tags=["remove-input"]
reproduction.style(table, chapters=["00", "01", "02"])

# %% [markdown]
# ## Paper 1: gender circuits and general neurons
#
# Chapters 3 and 4: which neurons carry the prediction, where they sit, how widely the prompts
# share them, and what masking the two general neurons does.

# %% tags=["remove-input"]
reproduction.style(table, chapters=["03", "04"])

# %% [markdown]
# ## Paper 1: the editing method
#
# Chapter 5: does the combined logit + causal selection with the start-position filter reduce
# bias on held-out words, at what cost, and against which baselines? The verdicts judge the
# edit that chapter 5's validation rule chose, the faithful set-wise reading of the causal
# step; the reason column says in one line why the one-shot reading (each neuron judged alone,
# fifty masked together) fails: its neurons each push every word towards *woman*, and together
# they overshoot. The StereoSet and WinoGender rows need the bias suite, which only the full
# profile runs.

# %% tags=["remove-input"]
reproduction.style(table, chapters=["05"])

# %% [markdown]
# ## Paper 2: CRISPR, and the head-to-head
#
# Chapter 6: the accuracy gain, the spread across instructions, the number of pruned neurons,
# the ablations of the paper's Table 5, transfer to other BBQ categories, the capability cost,
# and the two `h2h-*` rows that put CRISPR's pruning and chapter 5's gender edit on the same
# BBQ items and capability tasks. Paper 2's numbers were transcribed by a secondary summary
# ({ref}`methods-sources`), and its models (Flan-T5, T0) are encoder-decoders.

# %% tags=["remove-input"]
reproduction.style(table, chapters=["06"])

# %% [markdown]
# ## In short
#
# * **Reproduced:** {glue:text}`list_reproduced`.
# * **Partly:** {glue:text}`list_partly`.
# * **Not reproduced:** {glue:text}`list_not_reproduced`.
# * **Not tested:** {glue:text}`list_not_tested`.
#
# The lists are read off the table of this run, so they change with the profile. Read each
# row's reason before quoting a verdict: a "not reproduced" on a 135M model with a few dozen
# items says that the effect is not visible at this size, not that the paper is wrong. The
# whole table is saved as `results/07_what_reproduced__comparison.parquet`, and the counts and
# each claim's verdict in `results/07_what_reproduced.json`.

# %% [markdown]
# ## Exercises
#
# ```{exercise} A verdict from an interval and a tolerance
# :label: ex-ch7-interval
#
# *Difficulty: ★☆☆, about 15 minutes.*
#
# Paper 1 says the most shared neurons appear in about 60 % of the prompts at K = 10. Our
# chapter 3 gives an interval $[\ell, h]$ for the same statistic. Call the claim
# *reproduced* when the interval overlaps the band $[0.6 - \tau, 0.6 + \tau]$, *partly* when it
# misses the band but comes within $2\tau$ of 0.6, and *not reproduced* otherwise. Write
# `interval_verdict(low, high, target, tol)` returning one of these three strings, check it with
# `reproduction.check_interval_verdict(interval_verdict)`, and apply it with $\tau = 0.1$ to the
# three `shared_mean_*_K10` intervals of `results/03_tracing_gender_circuits.json`. Which
# verdicts change with $\tau = 0.05$?
#
# :::{admonition} Hint
# :class: dropdown
# The distance from the target to the interval is `max(low - target, target - high, 0.0)`:
# zero when the interval contains the target. `reproduction.ResultsDir().interval(chapter,
# key)` reads an interval with its `low` and `high`.
# :::
# ```

# %% tags=["student", "remove-cell"]
def interval_verdict(low, high, target, tol):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch7-interval
# :class: dropdown
# ```
# The distance from the target to the interval is 0 when the interval contains it:

# %% tags=["solution"]
def interval_verdict(low, high, target, tol):
    distance = max(low - target, target - high, 0.0)
    return "reproduced" if distance <= tol else "partly" if distance <= 2 * tol else "not reproduced"


reproduction.check_interval_verdict(interval_verdict)
view = reproduction.ResultsDir()
shared = {k: view.interval("03_tracing_gender_circuits", f"shared_mean_{k}_K10") for k in reproduction.KIND_NAMES}
pd.DataFrame({"low": [iv.low for iv in shared.values()], "high": [iv.high for iv in shared.values()],
              **{f"tau = {tau}": [interval_verdict(iv.low, iv.high, 0.6, tau) for iv in shared.values()]
                 for tau in (0.1, 0.05)}}, index=list(shared))

# %% [markdown] tags=["solution"]
# A narrower tolerance turns some verdicts into "partly": the verdict depends on a choice the
# paper does not make for us, which is why the table states the band in the row's reason.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} A verdict from a paired change
# :label: ex-ch7-change
#
# *Difficulty: ★★☆, about 20 minutes.*
#
# CRISPR raised BBQ accuracy by between +6.1 and +22.9 points in the paper's Table 1. Chapter 6
# records the paired change in pooled accuracy, `delta_acc`, with its 95 % interval (as a
# fraction). Call the claim *reproduced* when the interval excludes 0 on the paper's side and
# the estimate reaches the paper's smallest change, *partly* when the interval excludes 0 on
# that side but the estimate is smaller, and *not reproduced* otherwise (a change the interval
# cannot tell from 0, or one in the wrong direction). Write
# `change_verdict(estimate, low, high, paper_change)` (a negative `paper_change` means the paper
# reported a decrease), check it with `reproduction.check_change_verdict(change_verdict)`, and
# apply it to `delta_acc` in points.
#
# :::{admonition} Hint
# :class: dropdown
# Multiply the estimate and both ends by the sign of `paper_change`, so that one rule covers
# increases and decreases; then the interval excludes 0 on the paper's side when its lower end
# is above 0. `delta_acc` is a fraction: multiply by 100 for points.
# :::
# ```

# %% tags=["student", "remove-cell"]
def change_verdict(estimate, low, high, paper_change):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch7-change
# :class: dropdown
# ```
# Flip the sign when the paper reported a decrease, so that one rule covers both directions:

# %% tags=["solution"]
def change_verdict(estimate, low, high, paper_change):
    sign = 1.0 if paper_change >= 0 else -1.0
    lo = min(sign * low, sign * high)
    if lo <= 0:
        return "not reproduced"
    return "reproduced" if sign * estimate >= abs(paper_change) else "partly"


reproduction.check_change_verdict(change_verdict)
if view.has("06_crispr"):
    d = view.interval("06_crispr", "delta_acc").scaled(100)
    print(f"delta_acc = {d.text('+.1f')} points -> {change_verdict(d.estimate, d.low, d.high, min(reproduction.P2_GAINS))}")

# %% [markdown] tags=["solution"]
# The same rule, with `paper_change = -0.14`, would judge the edit's WinoGender entropy
# difference (0.95 → 0.81 in paper 1) if chapter 5 recorded an interval for it.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.save()
