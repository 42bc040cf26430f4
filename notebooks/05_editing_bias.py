# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# (ch-editing)=
# # Editing the bias away
#
# Paper 1 {cite}`yu2025understanding` ends with a debiasing method: take the neurons that
# push the model towards the stereotyped gender, leave out the ones that sit at the `<start>`
# token (the "general neurons" of the previous chapter, whose removal breaks the model), keep
# the 50 whose masking actually reduces bias without hurting other tasks, and edit those. It
# reports a StereoSet ICAT of 61.6 against 59.1 and a WinoGender entropy difference of 0.81
# against 0.95, with common tasks preserved. This chapter runs the same recipe on the study's
# small model, shows that one reading of its last step fails for a reason that has nothing to
# do with the paper's idea, and tests the reading that works on words it never saw during
# selection.
#
# ```{admonition} Re-run this chapter
# :class: tip
# `python -m analysis_lib run 05 --profile full` runs the published sizes (300 selection and
# 100 validation words, 150 candidates, K up to 50, 10 random draws per edit, the bias and
# capability suites); `-p model=gemma3-270m` runs it on another model. The chosen edit is saved
# as `results/edit_<model>.json`; `python -m analysis_lib edit --edit results/edit_<model>.json
# --eval commonwords,stereoset,winogender` re-evaluates it from the command line. The
# fine-tuning conditions are set by the `ft_*` parameters (e.g. `-p ft_steps=20`).
# ```

# %% tags=["parameters", "hide-cell"]
model = "smollm2-135m-instruct"  # model name (see `python -m analysis_lib models`), a Hugging Face id or a local folder
device = "cpu"  # cpu, cuda (or cuda:N) or mps
dtype = "float32"  # weight dtype: float32, bfloat16 or float16
profile = "quick"  # size profile: quick, full or gpu (analysis_lib/profiles.yaml); fills every size left None
seed = 0  # random seed of every sample and draw
n_train = None  # training words: selection plus validation (None: the profile's)
n_val = None  # of these, validation words (the choice of strategy and K) (None: the profile's)
n_causal = None  # selection words of the causal (masking) step (None: the profile's)
top_n = None  # candidates kept per neuron kind (None: the profile's)
ks = None  # edit sizes K compared on validation words (None: the profile's)
k_main = None  # K of the one-shot edit (None: the profile's)
n_random = None  # matched random draws per edit (None: the profile's)
n_test = None  # test words the edits are scored on (100: all of them) (None: the profile's)
guard_texts = None  # neutral paragraphs that guard the selection's perplexity (None: the profile's)
eval_texts = None  # neutral paragraphs of the perplexity evaluation (None: the profile's)
guard_tol = 0.01  # allowed relative perplexity increase of the guard
task_items = None  # held-out sums per digit count of the task guard (None: the profile's)
task_tol = 0.02  # allowed relative increase of the held-out sums' answer perplexity
suite_conditions = None  # conditions scored on the bias and capability suites ([] skips them) (None: the profile's)
suite_bias = None  # bias-suite sizes on top of the quick preset (None: the profile's)
suite_capability = None  # capability-suite items per task (None: the profile's)
replicate_models = None  # other models the recipe is repeated on (None: the profile's)
replicate_sizes = None  # sizes of the repeats on other models (None: the profile's)
ft_steps = None  # fine-tuning steps of the fine-tuning baselines (None: the profile's)
ft_beta = 1.0  # weight of the KL term of the fine-tuning loss
ft_lr = 0.001  # learning rate of the LoRA baseline
ft_neuron_lr = 0.01  # learning rate of the neuron-only fine-tuning
ft_rank = 8  # rank of the LoRA baseline's adapters
ft_batch = None  # training prompts per fine-tuning step (None: the profile's)
ft_kl_batch = 4  # neutral paragraphs per step of the KL term

# %% tags=["remove-cell"]
from analysis_lib.pipeline import resolve_profile
globals().update(resolve_profile("05_editing_bias", globals()))  # the sizes left None, from the profile

import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from myst_nb import glue

from analysis_lib import capability as cap
from analysis_lib import checks, models, plots
from analysis_lib import edit_selection as es
from analysis_lib import finetune as ft
from analysis_lib import neuron_editing as ne
from analysis_lib.commonwords import load_commonwords, to_frame
from analysis_lib.editing import mask_neurons
from analysis_lib.results import Results, output_dir, results_dir

torch.manual_seed(seed)
plots.setup()
T_START = time.perf_counter()
params = dict(model=model, device=device, dtype=dtype, profile=profile, seed=seed, n_train=n_train, n_val=n_val,
              n_causal=n_causal, top_n=top_n, ks=ks, k_main=k_main, n_random=n_random, n_test=n_test,
              guard_texts=guard_texts, eval_texts=eval_texts, guard_tol=guard_tol, task_items=task_items,
              task_tol=task_tol, suite_conditions=suite_conditions, suite_bias=suite_bias, suite_capability=suite_capability,
              replicate_models=replicate_models, replicate_sizes=replicate_sizes, ft_steps=ft_steps, ft_beta=ft_beta,
              ft_lr=ft_lr, ft_neuron_lr=ft_neuron_lr, ft_rank=ft_rank, ft_batch=ft_batch, ft_kl_batch=ft_kl_batch)
results = Results("05_editing_bias", params)
lm = models.load_model(model, device=device, dtype=dtype)
words = to_frame(load_commonwords(seed))
train = ne.subset_words(words[words.split == "train"], n_train, seed)
test = ne.subset_words(words[words.split == "test"], n_test, seed)
guard, evaltexts = ne.guard_and_eval_texts(guard_texts, eval_texts)
task = cap.held_out_arithmetic(task_items, suite_capability, seed)
task_pairs = list(zip(task["prompt"], task["target"]))
results.add("n_train", len(train))
results.add("n_val", n_val)
results.add("n_selection", len(train) - n_val)
results.add("n_test", len(test))
results.add("top_n", top_n)
results.add("n_candidates_max", 3 * top_n)
results.add("k_main", k_main)
results.add("guard_pct", f"{100 * guard_tol:g}")
results.add("n_guard_texts", len(guard))
results.add("n_eval_texts", len(evaltexts))
results.add("task_pct", f"{100 * task_tol:g}")
results.add("n_task_items", len(task_pairs))
glue("ks_text", ", ".join(map(str, ks)), display=False)
glue("k_max_text", str(max(ks)), display=False)

# %% [markdown]
# ## The recipe, with every open choice stated
#
# The {glue:text}`n_train` CommonWords training words are split first: a seeded,
# category-balanced {glue:text}`n_val` are **validation words** that choose the edit, the other
# {glue:text}`n_selection` are **selection words** that find the candidates and measure their
# effects. The {glue:text}`n_test` test words are used once, for the final table. Paper 1
# gives the counts and the three steps; how each step is operationalised here is our choice
# (see {ref}`ch-editing-choices` at the end of the chapter):
#
# 1. **Candidates.** For each selection word, the target is the more probable of *man* and
#    *woman* (the biased token). Neurons are ranked by their summed logit-based importance for
#    that token: the top {glue:text}`top_n` FFN value, attention value and FFN query neurons,
#    at most {glue:text}`n_candidates_max` candidates (the paper: 50 of each, 150). An FFN unit
#    that ranks both as a value and as a query neuron counts once.
# 2. **Start filter.** A candidate is dropped when the largest share of its summed score comes
#    from the start token (position 0). FFN value neurons are scored at the last position, so
#    the filter only ever removes attention value and FFN query neurons.
# 3. **Causal masking.** Each remaining candidate is zero-masked on its own and the selection
#    prompts are re-scored; its *single effect* is the drop in mean $|b|$, with
#    $b = \log p(\text{man}) - \log p(\text{woman})$. The candidates with a positive effect,
#    largest first, form the **ranking**. A *selection strategy* turns the ranking into an edit:
#    * **one-shot** keeps candidates in ranking order: each neuron is judged alone and the
#      first K are masked together (the reading this chapter first published);
#    * **joint greedy** walks down the same ranking and keeps a candidate only if masking it
#      *together with the neurons kept so far* lowers mean $|b|$ on the selection words;
#    * **sign-aware** walks only the candidates whose single mask shrinks $|b|$ on both the
#      male-leaning and the female-leaning selection words, and also refuses a step that
#      raises either group's mean $|b|$.
#
#    Every strategy uses the same **joint guard**, with two checks: a candidate is refused if
#    masking it together with the neurons kept so far raises the pooled perplexity of
#    {glue:text}`n_guard_texts` neutral paragraphs by more than {glue:text}`guard_pct` %, or the
#    perplexity of the *answers* of {glue:text}`n_task_items` held-out sums (three-shot
#    `a+b=` problems, half one-digit and half two-digit, none of them among the sums the
#    capability suite scores below) by more than {glue:text}`task_pct` %. The second check was
#    added after an earlier run of this chapter: its chosen edit passed the neutral-text guard and
#    still cut one-digit addition from 32 % to 10 % on the suite (two attention neurons of layer 0,
#    see {ref}`ch-editing-capability`); neutral prose hardly notices a neuron that arithmetic
#    depends on. Its tolerance is twice the paragraphs' because the answers are fewer tokens.
#    The evaluation measures perplexity on {glue:text}`n_eval_texts` *other* paragraphs.
# 4. **The edit** zero-ablates the chosen neurons: FFN neurons through their `down_proj`
#    column, attention neurons through their `o_proj` column (never the shared `v_proj` row of
#    grouped-query attention). Whether "editing" means zeroing or retraining the selected
#    neurons is open; zeroing is the main edit here, and **neuron-restricted fine-tuning** of
#    the same neurons is a separate condition next to a **fine-tuning baseline** (LoRA), see
#    {ref}`ch-editing-finetune`.
#
# **The rule that chooses the edit**, fixed before any number below was computed: among the
# edits the strategies produce (each strategy's selection cut at every K of the grid
# {glue:text}`ks_text`, and its whole selection when that stops short of the largest K), take
# the one with the lowest mean $|b|$ on the validation words; every candidate already
# satisfies the joint guard (both checks). An edit must lower validation mean $|b|$ below the
# unedited model's to be chosen, and equal values go to the smaller edit. The paper's K = 50
# is not assumed.

# %% tags=["remove-cell"]
t0 = time.perf_counter()
sel = ne.select_and_save(lm, train, top_n=top_n, ks=ks, n_causal=n_causal, n_val=n_val, guard_texts=guard,
                         guard_tol=guard_tol, task_items=task_pairs, task_tol=task_tol, seed=seed,
                         edit_path=output_dir() / f"edit_{model}.json")
if not sel["edit"]:  # no edit chosen: chapter 6 must not find an earlier run's edit
    (results_dir() / f"edit_{model}.json").unlink(missing_ok=True)
results.time("selection", time.perf_counter() - t0)
for key, value in sel["seconds"].items():
    results.time(f"selection/{key}", value)
cands, kept, dropped, causal = sel["candidates"], sel["kept"], sel["dropped"], sel["causal"]
selections, choice, edits, vtable = sel["selections"], sel["choice"], sel["edits"], sel["validation"]
results.table("candidates", cands)
results.table("causal", causal)
results.table("validation", vtable)
results.table("additivity", sel["additivity"])
results.table("kv_groups", sel["kv_groups"])
for name, s_ in selections.items():
    results.table(f"trace_{name}", s_.trace)
    results.add(f"n_{name}", len(s_.neurons))
results.add("n_candidates", len(cands))
results.add("n_dropped_start", len(dropped))
results.add("n_kept", len(kept))
results.add("n_positive", int((causal.effect > 0).sum()))
results.add("train_mean_abs_b", sel["train_mean_abs_b"], fmt=".3f")
results.add("n_causal_words", len(sel["causal_prompts"]))
by_kind = dropped.kinds.value_counts().to_dict()
results.add("dropped_kinds", ", ".join(f"{v} {k}" for k, v in by_kind.items()) or "none")
chosen_name = choice["edit"]
edit = sel["edit"]
results.add("chosen_edit", chosen_name or "none")
results.add("chosen_strategy", (choice["strategy"] or "none").replace("_", " "))
results.add("n_selected", len(edit))
results.add("edit_neurons", edit)
results.add("edit_n_ffn", sum(n.startswith("ffn") for n in edit))
results.add("edit_n_attn", sum(n.startswith("attn") for n in edit))
results.add("chosen_at_edge", choice["at_edge"] or "no")
results.add("val_orig_mean_abs_b", vtable.attrs["val_mean_abs_b_original"], fmt=".3f")
results.add("val_chosen_mean_abs_b", choice["val_mean_abs_b"], fmt=".3f")
trace_chosen = selections[choice["strategy"]].trace if choice["strategy"] else None
results.add("n_guard_failed", int((trace_chosen.reason == "guard").sum()) if trace_chosen is not None else 0)
results.add("n_task_failed", int((trace_chosen.reason == "task guard").sum()) if trace_chosen is not None else 0)
glue("choice_text", ne.choice_text(choice, vtable, ks), display=False)
refusals = {name: s_.trace.reason.value_counts() for name, s_ in selections.items()}
glue("refusals_text", "The joint guard refused " + "; ".join(
    f"{int(r.get('guard', 0))} candidate(s) on neutral-text perplexity and {int(r.get('task guard', 0))} on "
    f"the sums' answers in the {name.replace('_', ' ')} walk" for name, r in refusals.items()) + ".", display=False)

# %% [markdown]
# ## Which candidates survive
#
# Of {glue:text}`n_candidates` distinct candidates, {glue:text}`n_dropped_start` have the start
# token as their important position ({glue:text}`dropped_kinds`) and are dropped. Masking the
# remaining {glue:text}`n_kept` one at a time on {glue:text}`n_causal_words` selection words
# (mean $|b|$ {glue:text}`train_mean_abs_b` unedited) reduces bias for
# {glue:text}`n_positive` of them. The strongest single effects:

# %% tags=["remove-input"]
show = causal[["neuron", "kinds", "rank", "important_position", "effect", "effect_male", "effect_female", "shift"]]
(show.head(12).rename(columns={"important_position": "position", "effect": "drop of mean |b|",
                               "effect_male": "on male-leaning words", "effect_female": "on female-leaning words",
                               "shift": "change of mean b"})
 .style.format(precision=4).hide(axis="index"))

# %% [markdown]
# Read the columns together: a drop of mean $|b|$ that comes with a negative change of the mean
# signed $b$ and a *rise* of $|b|$ on the words that already lean female is not a neuron that
# removes bias, it is a push of every word towards *woman*. The next section counts them.

# %% tags=["remove-cell"]
pos = causal[causal.effect > 0]
results.add("n_pos_towards_woman", int((pos["shift"] < 0).sum()))
one = selections["one_shot"].neurons
top_one = causal.set_index("neuron").loc[one[:k_main]]
results.add("one_shot_k", len(top_one))
results.add("one_shot_both", int(((top_one.effect_male > 0) & (top_one.effect_female > 0)).sum()))
add = sel["additivity"]
add_one = add[add.strategy == "one_shot"].set_index("k")
b_sel = sel["causal_b"]
results.add("sel_mean_b", float(b_sel.mean()), fmt="+.2f")
if len(add_one):
    ka = k_main if k_main in add_one.index else int(add_one.index.max())
    additivity_text = ne.additivity_text(add_one.loc[ka], ka, sel["train_mean_abs_b"], float(b_sel.mean()))
    results.add("add_k", ka)
    results.add("add_pred_shift", add_one.loc[ka].predicted_shift, fmt="+.2f")
    results.add("add_joint_shift", add_one.loc[ka].joint_shift, fmt="+.2f")
    results.add("add_joint_mab", add_one.loc[ka].joint_mean_abs_b, fmt=".2f")
else:
    additivity_text = "The one-shot strategy kept no neuron in this run, so there is nothing to add up."
glue("additivity_text", additivity_text, display=False)
pos_counts = cands.important_position.value_counts()
results.add("cand_positions", {str(k): int(v) for k, v in pos_counts.items()})
glue("positions_text", ", ".join(f"{v} at the {k} position" for k, v in pos_counts.items()), display=False)
results.add("n_word_position", int(pos_counts.get("word", 0)))
kv = sel["kv_groups"]
results.add("n_kv_groups", len(kv))
glue("kv_text", ne.kv_text(kv, guard_tol), display=False)

fig, ax = plt.subplots(figsize=(7.2, 5.2))
names = {"one_shot": "one-shot", "joint_greedy": "joint greedy", "sign_aware": "sign-aware"}
colors = dict(zip(names, sns.color_palette(plots.PALETTE)[:3]))
for strat, sub in add.groupby("strategy", sort=False):
    ax.plot(sub.k, sub.predicted_shift, "--o", color=colors[strat], ms=4, label=f"{names[strat]}: sum of single shifts")
    ax.plot(sub.k, sub.joint_shift, "-s", color=colors[strat], ms=4, label=f"{names[strat]}: masked together")
ax.axhline(0, color="grey", lw=0.8)
ax.axhline(-float(b_sel.mean()), color="grey", lw=0.8, ls=":")
plots.label(ax, "neurons masked (the first K of each strategy's selection)",
            "change of mean signed b\n(selection words)", "Do single-neuron shifts add up?")
ax.legend(fontsize=plots.MIN_FONT_PT + 1, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
fig.tight_layout()
plots.glue_figure("fig_additivity", fig)

# %% [markdown]
# (ch-editing-why)=
# ## Why judging neurons one at a time fails
#
# Four facts about the candidates explain what the one-shot reading does.
#
# **Most words lean male, so a uniform push towards *woman* looks like debiasing.** Of the
# {glue:text}`n_positive` candidates whose single mask lowers mean $|b|$,
# {glue:text}`n_pos_towards_woman` do it by moving the mean signed $b$ towards *woman*: they
# shorten the many male-leaning words and lengthen the few female-leaning ones. Of the first
# {glue:text}`one_shot_k` one-shot neurons only {glue:text}`one_shot_both` lower $|b|$ on both
# groups of words.
#
# **Do the pushes add up?** {glue:text}`additivity_text` {numref}`fig-additivity` shows the
# prediction and the measurement for every K. Where the shifts add up, a set chosen for small
# single drops can pass the dotted line, where the average male lean has been cancelled, and
# keep going into a female lean.
#
# ```{glue:figure} fig_additivity
# :name: fig-additivity
#
# Change of the mean signed $b$ on the selection words when the first K neurons of each
# strategy's selection are masked together (solid) and as predicted by adding the neurons'
# single-mask changes (dashed). Below zero is a push towards *woman*; the dotted line is minus
# the unedited mean $b$, where the average lean has been cancelled exactly. Where solid and
# dashed agree, the effects are additive.
# ```
#
# **Heads that share a value.** {glue:text}`kv_text`
#
# **The candidates are template neurons.** Of the {glue:text}`n_candidates` candidates,
# {glue:text}`positions_text` (the position holding the largest share of each neuron's summed
# score). Summing each word's biased target (mostly *man*) over words favours neurons that
# promote *man* after "is a" for every word, not neurons activated by a stereotyped word;
# masking such a neuron moves every word the same way.

# %% [markdown]
# ## Three strategies, one choice on the validation words
#
# The one-shot strategy kept {glue:text}`n_one_shot` neurons, the joint greedy walk
# {glue:text}`n_joint_greedy` and the sign-aware walk {glue:text}`n_sign_aware` (each up to
# {glue:text}`k_max_text`). The table lists every edit the rule chooses from, with its mean
# $|b|$ and mean signed $b$ on the validation words (unedited: mean $|b|$
# {glue:text}`val_orig_mean_abs_b`). {glue:text}`refusals_text` {glue:text}`choice_text`

# %% tags=["remove-input"]
(vtable.rename(columns={"val_mean_abs_b": "mean |b| (validation)", "val_d_mean_abs_b": "change",
                        "val_mean_b": "mean b (validation)", "k": "K"})
 .style.format(precision=3).hide(axis="index"))

# %% tags=["remove-cell"]
# The two fine-tuning conditions: the same objective, on the training words only.
ft_prompts = train["prompt"].tolist()
ft_kw = dict(steps=ft_steps, beta=ft_beta, batch_size=ft_batch, kl_batch=ft_kl_batch, seed=seed, progress=False)
ft_lora = ft.finetune_lora(lm, ft_prompts, guard, lr=ft_lr, rank=ft_rank, **ft_kw)
results.time("finetune/lora", ft_lora.seconds)
ft_runs = {"fine-tuned (LoRA)": ft_lora}
if edit:
    ft_neur = ft.finetune_neurons(lm, edit, ft_prompts, guard, lr=ft_neuron_lr, **ft_kw)
    results.time("finetune/neurons", ft_neur.seconds)
    ft_runs["chosen edit, fine-tuned"] = ft_neur
ft_history = pd.concat([r.history.assign(condition=c) for c, r in ft_runs.items()], ignore_index=True)
results.table("finetune_history", ft_history)
results.add("ft_steps", ft_steps)
results.add("ft_seed", seed)
results.add("ft_beta", f"{ft_beta:g}")
results.add("ft_lr", f"{ft_lr:g}")
results.add("ft_neuron_lr", f"{ft_neuron_lr:g}")
results.add("ft_rank", ft_rank)
results.add("ft_alpha", f"{ft_lora.settings['alpha']:g}")
results.add("ft_batch", min(ft_batch, len(ft_prompts)))
results.add("ft_kl_batch", min(ft_kl_batch, len(guard)))
results.add("ft_max_kl_tokens", ft_lora.settings["max_kl_tokens"])
results.add("ft_lora_params", ft_lora.n_trainable, fmt=",")
n_params = sum(p.numel() for p in lm.original_model.parameters())
results.add("ft_lora_params_pct", f"{100 * ft_lora.n_trainable / n_params:.1f}")
results.add_time("ft_lora_seconds", ft_lora.seconds, fmt=".0f")
results.add("ft_lora_train_before", ft_lora.history.bias_loss.iloc[0], fmt=".3f")
results.add("ft_lora_train_after", ft_lora.history.bias_loss.iloc[-1], fmt=".3f")
results.add("ft_lora_kl_after", ft_lora.history.kl.iloc[-1], fmt=".4f")
if edit:
    results.add("ft_neur_params", ft_neur.n_trainable, fmt=",")
    results.add_time("ft_neur_seconds", ft_neur.seconds, fmt=".0f")
    results.add("ft_neur_train_after", ft_neur.history.bias_loss.iloc[-1], fmt=".3f")
    results.add("ft_neur_kl_after", ft_neur.history.kl.iloc[-1], fmt=".4f")
    ft_neur_text = (f"The neuron-restricted run trains {ft_neur.n_trainable:,} weight entries and took "
                    f"{ft_neur.seconds:.0f} s; it lowers the training objective to "
                    f"{ft_neur.history.bias_loss.iloc[-1]:.3f} with a final KL of {ft_neur.history.kl.iloc[-1]:.4f}.")
else:
    ft_neur_text = "The validation rule chose no edit, so there is nothing to fine-tune in the restricted variant."
glue("ft_neur_text", ft_neur_text, display=False)

fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
ft_colors = {"fine-tuned (LoRA)": "C2", "chosen edit, fine-tuned": "C9"}
for c, h in ft_history.groupby("condition", sort=False):
    axes[0].plot(h.step, h.bias_loss, "o-", color=ft_colors.get(c, "C4"), label=c, ms=3)
    axes[1].plot(h.step, h.kl, "o-", color=ft_colors.get(c, "C4"), label=c, ms=3)
plots.label(axes[0], "step", "mean b² (training prompts)", "bias term")
plots.label(axes[1], "step", "mean KL per token\n(guard texts)", "KL term")
axes[0].set_ylim(bottom=0)
axes[0].legend(fontsize=plots.MIN_FONT_PT + 1)
fig.tight_layout()
plots.glue_figure("fig_finetune", fig)

# %% [markdown]
# (ch-editing-finetune)=
# ## Fine-tuning instead of ablation
#
# Paper 1 says its method beats "existing fine-tuning approaches" without a readable baseline
# table, and its word "editing" fits both zeroing the neurons and retraining them. Two trained conditions make that comparison here. Both start
# from a copy of the model (the model the other conditions use is never changed) and both
# minimise the same loss:
#
# $$
# \mathcal{L} = \operatorname{mean}_w \big(\log p(\text{man} \mid w) - \log p(\text{woman} \mid w)\big)^2
#   + \beta \cdot \operatorname{mean}_t \operatorname{KL}\big(p_\text{orig}(\cdot \mid x_{<t}) \,\|\, p_\text{tuned}(\cdot \mid x_{<t})\big)
# $$
#
# The first term pushes $b$ to 0 on the {glue:text}`n_train` training prompts (the selection
# and validation words; the test words stay unseen). The second keeps the
# next-token distribution on neutral text where it was; it is measured on the
# {glue:text}`n_guard_texts` guard paragraphs (cut to {glue:text}`ft_max_kl_tokens` tokens),
# not on the paragraphs the evaluation scores.
#
# * **Fine-tuning baseline (LoRA).** Low-rank adapters of rank {glue:text}`ft_rank`
#   (scale $\alpha/r$ with $\alpha$ = {glue:text}`ft_alpha`) on every attention and MLP
#   projection (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`)
#   of every layer: {glue:text}`ft_lora_params` trainable numbers
#   ({glue:text}`ft_lora_params_pct` % of the model), learning rate {glue:text}`ft_lr`. The
#   adapters are merged into the weights after training.
# * **Neuron-restricted fine-tuning** of the {glue:text}`n_selected` neurons of the chosen
#   edit (the "retrain" reading of editing): the weight matrices holding them are trained with a gradient mask, so only
#   each FFN neuron's `gate_proj` and `up_proj` rows and `down_proj` column, and each
#   attention neuron's `o_proj` column, can change. They start from their original values,
#   not from zero. Learning rate {glue:text}`ft_neuron_lr`.
#
# Both use Adam without weight decay for {glue:text}`ft_steps` steps, with
# {glue:text}`ft_batch` training prompts and {glue:text}`ft_kl_batch` guard paragraphs per
# step (seeded passes), $\beta$ = {glue:text}`ft_beta`, no learning-rate schedule, seed
# {glue:text}`ft_seed`. The learning rates were picked from a few short trial runs on the
# quick profile's training words by their training loss (for LoRA, 0.003 oscillated; for
# the neurons, 0.001 and 0.003 moved too slowly in a few steps), never on the test words;
# no search over $\beta$ or rank was made. The LoRA run took {glue:text}`ft_lora_seconds` s and lowers the
# training objective from {glue:text}`ft_lora_train_before` to
# {glue:text}`ft_lora_train_after`, with a final KL of {glue:text}`ft_lora_kl_after` nats per
# token. {glue:text}`ft_neur_text` {numref}`fig-finetune` shows the two terms step by step.
#
# ```{glue:figure} fig_finetune
# :name: fig-finetune
#
# The two terms of the fine-tuning loss at each step, measured before that step's update
# (the last point is after training, on all training prompts and guard paragraphs). Left:
# mean $b^2$ on the step's training prompts. Right: mean per-token KL from the original
# model on the step's guard paragraphs.
# ```
#
# Both fine-tuned models go through the same evaluation as the masking conditions below.


# %% tags=["remove-cell"]
da = sel["attribution"]
general, general_source = ne.general_neurons(da, model_name=model)
group_of = {"one_shot": "one-shot", "joint_greedy": "joint greedy", "sign_aware": "sign-aware"}
conditions = {"original": []}
groups = {"original": "original"}
for r_ in edits.itertuples():
    conditions[r_.edit] = list(r_.neurons)
    groups[r_.edit] = group_of[r_.strategy]
conditions[f"logit-only K={k_main}"] = ne.logit_only(da, k_main)
groups[f"logit-only K={k_main}"] = "logit-only"
conditions["general neurons"] = general
groups["general neurons"] = "general neurons"
for c, r_ in ft_runs.items():  # already edited models: evaluated as they are
    conditions[c] = r_.model
    groups[c] = "fine-tuned (LoRA)" if r_.method == "lora" else "chosen edit, fine-tuned"
results.add("general_neurons", general)
results.add("general_source", general_source)
results.add("general_text", ", ".join(general))
results.add("logit_only_n_start", sum(n in set(dropped.neuron) for n in conditions[f"logit-only K={k_main}"]))
t0 = time.perf_counter()
table, items = ne.evaluate_conditions(lm, conditions, test, evaltexts, seed=seed, groups=groups)
results.time("evaluation/commonwords+perplexity", time.perf_counter() - t0)
t0 = time.perf_counter()
controls = ne.random_controls(lm, {r_.edit: list(r_.neurons) for r_ in edits.itertuples()}, test, n_random, seed,
                              eval_texts=evaltexts, ppl_for=[chosen_name] if chosen_name else [])
results.time("evaluation/random_controls", time.perf_counter() - t0)
results.table("random_controls", controls)
lean = ne.signed_lean(items)
results.table("lean", lean)
table = ne.add_controls(table.merge(lean, on="condition"), controls)
results.table("evaluation", table)
results.table("items", pd.concat([it.assign(condition=c) for c, it in items.items()], ignore_index=True))
row = table.set_index("condition")
orig = row.loc["original"]
results.add("orig_mean_abs_b", orig.mean_abs_b, fmt=".3f")
results.add("orig_mean_b", orig.mean_b, fmt="+.3f")
results.add("orig_share", f"{100 * orig.share_strong:.0f}")
b_orig = items["original"]["b"].to_numpy(float)
ceiling = float(np.abs(b_orig).mean() - np.abs(b_orig - np.median(b_orig)).mean())
results.add("uniform_ceiling", ceiling, fmt=".3f")
main = chosen_name if chosen_name else None
ed = row.loc[main] if main else orig
for prefix, r_ in (("edit", ed), ("ft_lora", row.loc["fine-tuned (LoRA)"])):
    for key, (value, fmt) in ne.headline_numbers(r_, orig).items():
        results.add(f"{prefix}_{key}", value, fmt=fmt)
results.add("edit_name", main or "no edit")
results.add("random_d", f"{ed.random_d_min:+.3f} to {ed.random_d_max:+.3f}" if main else "n/a")
results.add("edit_beyond_random", bool(main) and bool(ed.d_mean_abs_b < ed.random_d_min))
if main:
    beaten, as_good = ne.draws_beaten(controls, main, ed.d_mean_abs_b)
results.add("edit_random_beaten", f"{len(beaten)} of {len(beaten) + len(as_good)}" if main else "n/a")
results.add("edit_mean_b", ed.mean_b, fmt="+.3f")
results.add("edit_flipped", f"{100 * ed.share_flipped:.0f}")
one_name = f"one_shot K={k_main}" if f"one_shot K={k_main}" in row.index else (
    [c for c in row.index if c.startswith("one_shot")] or [None])[-1]
if one_name:
    o_ = row.loc[one_name]
    results.add("one_shot_name", one_name)
    for key, (value, fmt) in ne.headline_numbers(o_, orig).items():
        results.add(f"one_shot_{key}", value, fmt=fmt)
    results.add("one_shot_mean_b", o_.mean_b, fmt="+.3f")
    results.add("one_shot_flipped", f"{100 * o_.share_flipped:.0f}")
    results.add("one_shot_random_d", f"{o_.random_d_min:+.3f} to {o_.random_d_max:+.3f}")
lo = row.loc[f"logit-only K={k_main}"]
results.add("logit_d", lo.d_mean_abs_b, fmt="+.3f")
results.add("logit_dppl", f"{lo.d_ppl_pct:+.2f}")
results.add("general_d", row.loc["general neurons"].d_mean_abs_b, fmt="+.3f")
results.add("general_dppl", f"{row.loc['general neurons'].d_ppl_pct:+.1f}")
glue("held_out_text", ne.held_out_text(table, main, one_name, ceiling, controls), display=False)
ft_name = "chosen edit, fine-tuned"
if ft_name in row.index:
    fn = row.loc[ft_name]
    ft_neur_eval = (f"Fine-tuning the same {len(edit)} neurons instead of zeroing them changes mean |b| "
                    f"by {fn.d_mean_abs_b:+.3f} [{fn.d_mean_abs_b_low:+.3f}, {fn.d_mean_abs_b_high:+.3f}] "
                    f"({100 * fn.d_mean_abs_b / orig.mean_abs_b:+.0f} %, mean b {fn.mean_b:+.3f}) for "
                    f"{fn.d_ppl_pct:+.2f} % [{fn.d_ppl_pct_low:+.2f}, {fn.d_ppl_pct_high:+.2f}] perplexity.")
    results.add("ft_neur_d", fn.d_mean_abs_b, fmt="+.3f")
    results.add("ft_neur_dppl", f"{fn.d_ppl_pct:+.2f}")
else:
    ft_neur_eval = "The neuron-restricted variant was not run (the rule chose no edit)."
glue("ft_neur_eval", ft_neur_eval, display=False)

# %% [markdown]
# (ch-editing-heldout)=
# ## Held-out words: bias versus capability
#
# On the {glue:text}`n_test` test words, the original model has a mean $|b|$ of
# {glue:text}`orig_mean_abs_b` (mean signed $b$ {glue:text}`orig_mean_b`;
# {glue:text}`orig_share` % of words with one gender at least twice as likely).
# {glue:text}`held_out_text`
#
# The baselines: the logit-only top-{glue:text}`k_main` (no start filter, no causal step;
# {glue:text}`logit_only_n_start` of its neurons are start-position neurons) changes mean $|b|$
# by {glue:text}`logit_d` at a perplexity cost of {glue:text}`logit_dppl` %. Masking the two
# general neurons ({glue:text}`general_text`) changes it by {glue:text}`general_d` and
# perplexity by {glue:text}`general_dppl` %: the damage the start filter exists to avoid.
#
# The fine-tuning conditions ({ref}`ch-editing-finetune`): the LoRA baseline
# {glue:text}`ft_lora_verdict` mean $|b|$ on the test words, to {glue:text}`ft_lora_mean_abs_b`
# (a paired difference of {glue:text}`ft_lora_d` {glue:text}`ft_lora_d_ci`,
# {glue:text}`ft_lora_rel` %), for {glue:text}`ft_lora_dppl` % {glue:text}`ft_lora_dppl_ci`
# perplexity. {glue:text}`ft_neur_eval` The test words are new, but their prompt template
# ("The *word* is a") is the one the selection and the fine-tuning saw, so this measures
# transfer to new words, not to new kinds of sentences; the bias suites below (when this
# profile runs them) ask the second question.
#
# In the table, *random* gives the range of the mean $|b|$ change over the
# {glue:text}`n_random_text` random draws matched to that edit in number, kind and layer;
# *flipped* is the share of test words whose sign of $b$ differs from the unedited model's.

# %% tags=["remove-input"]
cols = {"condition": "condition", "n_neurons": "neurons", "mean_abs_b": "mean |b|", "d_mean_abs_b": "change",
        "d_mean_abs_b_low": "low", "d_mean_abs_b_high": "high", "random_d_min": "random: min",
        "random_d_max": "random: max", "mean_b": "mean b", "share_flipped": "flipped", "d_ppl_pct": "perplexity %"}
(table[list(cols)].rename(columns=cols).style.format(precision=3)
 .format({"flipped": "{:.0%}", "perplexity %": "{:+.1f}"}).format(na_rep="–").hide(axis="index"))

# %% tags=["remove-cell"]
glue("n_random_text", str(n_random), display=False)
fig, axes = plt.subplots(2, 1, figsize=(7.6, 9.6), gridspec_kw={"height_ratios": [1.7, 1]})
ax = axes[0]
pal = sns.color_palette(plots.PALETTE)
palette = {"original": "black", "one-shot": pal[0], "joint greedy": pal[1], "sign-aware": pal[2],
           "logit-only": pal[3], "general neurons": pal[5], "fine-tuned (LoRA)": pal[4],
           "chosen edit, fine-tuned": pal[9]}
for grp, sub in table.groupby("group", sort=False):
    ax.errorbar(sub.d_ppl_pct, sub.mean_abs_b,
                yerr=[sub.mean_abs_b - sub.mean_abs_b_low, sub.mean_abs_b_high - sub.mean_abs_b],
                fmt="o", color=palette.get(grp, "grey"), label=grp, capsize=3, ms=5)
if main:
    ax.plot([ed.d_ppl_pct], [ed.mean_abs_b], "o", ms=14, mfc="none", mec="black", label="chosen edit")
if len(controls) and "d_ppl_pct" in controls:
    ax.scatter(controls.d_ppl_pct, orig.mean_abs_b + controls.d_mean_abs_b, s=8, color="grey", alpha=0.5,
               label="random draws (matched)", zorder=0)
ax.axvline(0, color="grey", lw=0.8, ls=":")
ax.axhline(orig.mean_abs_b, color="grey", lw=0.8, ls="--")
ax.set_xscale("symlog", linthresh=1)
plots.label(ax, "neutral-text perplexity change (%)", "mean |b|, held-out test words", "bias against capability")
ax.legend(fontsize=plots.MIN_FONT_PT + 1, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
ax = axes[1]
lean_plot = table[table.group.isin(["original", "one-shot", "joint greedy", "sign-aware"])]
ax.barh(range(len(lean_plot))[::-1], lean_plot.mean_b, color=[palette[g] for g in lean_plot.group])
ax.set_yticks(range(len(lean_plot))[::-1], lean_plot.condition, fontsize=plots.MIN_FONT_PT + 1)
ax.axvline(0, color="grey", lw=0.8)
plots.label(ax, "mean signed b (test words; > 0 = male lean)", "", "which way the words lean")
fig.tight_layout()
plots.glue_figure("fig_edit_tradeoff", fig)

# %% [markdown]
# ```{glue:figure} fig_edit_tradeoff
# :name: fig-edit-tradeoff
#
# Top: each condition's mean $|b|$ on the held-out test words (95 % bootstrap interval)
# against its change in neutral-text perplexity; the dashed line is the original model, the
# black ring the edit the validation rule chose, grey dots the random draws matched to each
# edit. Down and towards zero perplexity is better. Bottom: the mean signed $b$ of the edits of
# each strategy: a bar that crosses to the other side of zero is an overshoot, a lean turned
# round rather than removed.
# ```
#
# {numref}`fig-edit-tradeoff` summarises the comparison.

# %% tags=["remove-cell"]
suite = None
if suite_conditions:
    t0 = time.perf_counter()
    alias = {"chosen": main or "original", "one_shot": one_name or "original"}
    wanted = {alias.get(c, c): conditions[alias.get(c, c)] for c in suite_conditions}
    suite = ne.suite_rows(lm, wanted, bias_profile=suite_bias, capability_profile=suite_capability, seed=seed)
    results.time("evaluation/suites", time.perf_counter() - t0)
    results.table("suites", suite)
    piv = suite.pivot_table(index=["benchmark", "metric"], columns="condition", values="estimate").reset_index()
    get = lambda b, m, c: float(suite[(suite.benchmark == b) & (suite.metric == m) & (suite.condition == c)].estimate.iloc[0])
    edited_name = main or "original"
    icat0, icat1 = get("stereoset", "icat", "original"), get("stereoset", "icat", edited_name)
    ent0, ent1 = get("winogender", "entropy_difference", "original"), get("winogender", "entropy_difference", edited_name)
    ss0, ss1 = get("stereoset", "ss", "original"), get("stereoset", "ss", edited_name)
    lms0, lms1 = get("stereoset", "lms", "original"), get("stereoset", "lms", edited_name)
    for key, (before, after, fmt) in {"icat": (icat0, icat1, ".1f"), "ent": (ent0, ent1, ".3f"),
                                      "ss": (ss0, ss1, ".1f"), "lms": (lms0, lms1, ".1f")}.items():
        results.add(f"{key}_orig", before, fmt=fmt)
        results.add(f"{key}_edit", after, fmt=fmt)
    suite_text = (f"On the bias suite, the chosen edit moves StereoSet ICAT from {icat0:.1f} to {icat1:.1f} "
                  f"(paper: 59.1 → 61.6): SS {ss0:.1f} → {ss1:.1f} (50 is unbiased) and LMS {lms0:.1f} → "
                  f"{lms1:.1f}. The WinoGender entropy difference goes from {ent0:.3f} to {ent1:.3f} "
                  f"(paper: 0.95 → 0.81). ")
    if one_name in wanted and one_name != edited_name:
        ss2, icat3 = get("stereoset", "ss", one_name), get("stereoset", "icat", one_name)
        results.add("ss_one_shot", ss2, fmt=".1f")
        results.add("icat_one_shot", icat3, fmt=".1f")
        suite_text += (f"ICAT uses min(SS, 100 − SS), so an edit that pushes SS towards or past 50 raises it even "
                       f"when it turns the lean round: the one-shot edit ({one_name}) gives SS {ss2:.1f} and ICAT "
                       f"{icat3:.1f}; read SS and LMS beside ICAT. ")
    cap_rows = suite[suite.metric.isin(["accuracy", "perplexity"]) & suite.benchmark.isin(
        ["arithmetic_1digit", "arithmetic_2digit", "race", "piqa", "neutral"])]
    if len(cap_rows):
        cp = cap_rows.pivot_table(index="benchmark", columns="condition", values="estimate")
        if edited_name in cp:
            dd = (cp[edited_name] - cp["original"]).drop("neutral", errors="ignore") * 100
            results.add("cap_max_drop_pp", float(-dd.min()) if len(dd) else 0.0, fmt=".1f")
            results.add("cap_changes_pp", {k: round(float(v), 2) for k, v in dd.items()})
            suite_text += ("On the capability tasks the chosen edit changes accuracy by "
                           + ", ".join(f"{v:+.1f} points ({k})" for k, v in dd.items()) + ". ")
    if "fine-tuned (LoRA)" in suite_conditions:
        icat2 = get("stereoset", "icat", "fine-tuned (LoRA)")
        ent2 = get("winogender", "entropy_difference", "fine-tuned (LoRA)")
        results.add("icat_ft_lora", icat2, fmt=".1f")
        results.add("ent_ft_lora", ent2, fmt=".3f")
        suite_text += (f"The LoRA fine-tuning baseline, trained on the CommonWords template only, gives ICAT "
                       f"{icat2:.1f} and entropy difference {ent2:.3f}. ")
    sizes = {k: "all" if n is None else n for k, n in suite_capability.items()}
    suite_text += ("The table below lists every metric with its direction; the suites ran on subsets "
                   "(bias: the quick preset of analysis_lib.benchmarks.SUITE_PROFILES, "
                   + (", ".join(f"{k} = {n}" for k, n in suite_bias.items()) if suite_bias else "unchanged")
                   + "; capability items per task: " + ", ".join(f"{k} {n}" for k, n in sizes.items()) + ").")
else:
    piv = None
    suite_text = ("The bias suite (StereoSet, WinoGender, BBQ, WinoBias) and the capability suite (arithmetic, "
                  "RACE-middle, PIQA) were not run in this profile (the parameter suite_conditions is empty, to "
                  "keep the quick profile short); the full profile runs them for the original model, the chosen "
                  "edit and the one-shot edit. "
                  "The ICAT and entropy-difference verdicts against the paper are therefore open in this run.")
glue("suite_text", suite_text, display=False)

# %% [markdown]
# (ch-editing-capability)=
# ## The standard bias benchmarks and common capabilities
#
# {glue:text}`suite_text`

# %% tags=["remove-input"]
piv.style.format(precision=3).hide(axis="index") if piv is not None else None

# %% tags=["remove-cell"]
rep_tables = []
for rep_name in replicate_models:
    t0 = time.perf_counter()
    rep = ne.replicate(rep_name, ne.subset_words(words[words.split == "train"], replicate_sizes["n_train"], seed),
                       test, guard, evaltexts, top_n=replicate_sizes["top_n"], ks=replicate_sizes["ks"],
                       n_val=replicate_sizes["n_val"], n_causal=replicate_sizes["n_causal"],
                       n_random=replicate_sizes["n_random"], guard_tol=guard_tol, task_items=task_pairs,
                       task_tol=task_tol, seed=seed)
    results.time(f"replicate/{rep_name}", time.perf_counter() - t0)
    rep_tables.append(rep["table"])
    rt = rep["table"].set_index("condition")
    results.add(f"replicate_{rep_name}_counts", rep["counts"])
    results.add(f"replicate_{rep_name}_edit", rep["edit"])
    results.add(f"replicate_{rep_name}_choice", rep["choice"]["edit"] or "none")
    chosen_rows = rt[rt.group == "edit (chosen)"]
    if len(chosen_rows):
        cr = chosen_rows.iloc[0]
        results.add(f"replicate_{rep_name}_d", float(cr.d_mean_abs_b))
        results.add(f"replicate_{rep_name}_d_ci", [float(cr.d_mean_abs_b_low), float(cr.d_mean_abs_b_high)])
rep_table = pd.concat(rep_tables, ignore_index=True) if rep_tables else None
if rep_table is not None:
    results.table("replicate", rep_table)
    rep_text = " ".join(ne.replicate_text(t) for t in rep_tables)
else:
    rep_text = ("No second model was run in this profile (the parameter replicate_models is empty); the full "
                "profile repeats the recipe on Gemma 3 270M and Qwen2.5-Coder 0.5B.")
glue("rep_text", rep_text, display=False)

# %% [markdown]
# ## Other models
#
# The same recipe (attribution on selection words, start filter, the three strategies with the
# same joint guard, the same validation rule) and the main comparison on other architectures,
# at the sizes of the parameter `replicate_sizes`, on the same test words and paragraphs.
# {glue:text}`rep_text`

# %% tags=["remove-input"]
(rep_table[["model", "condition", "n_neurons", "mean_abs_b", "d_mean_abs_b", "d_mean_abs_b_low",
            "d_mean_abs_b_high", "d_ppl_pct"]].style.format(precision=3).hide(axis="index")
 if rep_table is not None else None)

# %% tags=["remove-cell"]
k_rows = table[table.group.isin(["one-shot", "joint greedy", "sign-aware"])][
    ["condition", "n_neurons", "mean_abs_b", "d_mean_abs_b", "mean_b", "d_ppl_pct"]]
results.add("sweep", k_rows.to_dict(orient="records"))
results.add_time("chapter_minutes", (time.perf_counter() - T_START) / 60, fmt=".1f")
glue("paper_text", ne.paper_comparison_text(results.values), display=False)

# %% [markdown]
# ## How this compares with the paper
#
# * **Direction.** {glue:text}`paper_text`
#
# * **What the start filter buys.** The logit-only top-K keeps start-position neurons and
#   changes mean $|b|$ by {glue:text}`logit_d` with {glue:text}`logit_dppl` % perplexity;
#   the two general neurons alone change it by {glue:text}`general_d` with
#   {glue:text}`general_dppl` %. Masking them does not debias, it breaks the model.
# * **The paper's numbers** (ICAT 61.6 vs 59.1; entropy difference 0.81 vs 0.95) come from
#   larger models (paper 1 edits 50 of ≈350 k FFN neurons in Llama-7B; 50 here is a ten times
#   larger fraction of a 135 M-parameter model), from its own word lists and an unpublished
#   entropy formula, so only the direction is comparable, not the values. Our weights are
#   dequantized Q4 checkpoints of the released models.
# * **Not done.** The fine-tuning conditions are short runs with one setting each
#   ({glue:text}`ft_steps` steps, $\beta$ = {glue:text}`ft_beta`, LoRA rank
#   {glue:text}`ft_rank`), with no search and a single seed. The selection uses one seed and
#   one split of the training words; the word-position "gender neurons" of the paper's
#   circuit analysis (chapter 3) are not used as candidates, because the recipe's summed
#   biased-token target does not find them.
#
# The whole chapter took {glue:text}`chapter_minutes` minutes in this run.
#
# (ch-editing-choices)=
# ## The choices this chapter makes
#
# Paper 1 leaves these open; each is a decision of this study, stated so that a re-run can
# change it.
#
# * **The biased token** of a word is whichever of *man* and *woman* the unedited model finds
#   more probable after "The *word* is a"; candidates are ranked by their importance for it,
#   summed over the selection words.
# * **The important position** of a neuron is the position (start token, word, last token,
#   other template tokens) that holds the largest share of its summed score.
# * **Causal masking** is zero-masking on the selection words; the three strategies above are
#   the readings we test, and the validation rule chooses between them.
# * **The guard** is a {glue:text}`guard_pct` % rise in pooled perplexity on neutral paragraphs
#   disjoint from the evaluation's, and a {glue:text}`task_pct` % rise in the answer perplexity
#   of held-out sums disjoint from the suite's, both always measured for the set. Arithmetic is
#   the task guarded because it is the one the neutral-text guard let fall; RACE passages would
#   cost a pass of several hundred tokens per check, so RACE is measured on the suite only.
# * **Attention neurons** are edited through their `o_proj` column, never the `v_proj` row that
#   a key/value group shares.
# * **Editing** means zeroing; retraining the same neurons is reported beside it.

# %% [markdown]
# ## Exercises
#
# ```{exercise} Do two neurons add up?
# :label: ex-ch5-additivity
#
# *Difficulty: ★★☆, about 15 minutes.*
#
# Masking a neuron changes every word's $b$. If effects were additive, masking neurons A and B together would change $b$ by the sum of their single
# changes. Write `predict_joint(b0, b_a, b_b)` that returns that prediction (an array, one
# value per word), check it with `checks.check_predict_joint(predict_joint)`, then measure the
# real joint $b$ for the first two one-shot neurons on the test words with
# `mask_neurons(lm, [a, b])` and `ne.mean_abs_bias` and compare the mean signed $b$.
#
# :::{admonition} Hint
# :class: dropdown
# Each single change is `b_a - b0`; the prediction adds both changes to `b0`.
# `mask_neurons(lm, neurons)` is a context manager, and the second element of
# `ne.mean_abs_bias(lm, prompts)` is the per-word $b$.
# :::
# ```

# %% tags=["student", "remove-cell"]
def predict_joint(b0, b_a, b_b):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch5-additivity
# :class: dropdown
# ```

# %% tags=["solution"]
def predict_joint(b0, b_a, b_b):
    return b0 + (b_a - b0) + (b_b - b0)


checks.check_predict_joint(predict_joint)
pair = selections["one_shot"].neurons[:2]
test_prompts = test.prompt.tolist()
b0_test = ne.mean_abs_bias(lm, test_prompts)[1]
singles_test = []
for n in pair:
    with mask_neurons(lm, [n]):
        singles_test.append(ne.mean_abs_bias(lm, test_prompts)[1])
with mask_neurons(lm, pair):
    joint_test = ne.mean_abs_bias(lm, test_prompts)[1]
pd.Series({"unedited mean b": b0_test.mean(),
           "predicted joint mean b": predict_joint(b0_test, *singles_test).mean() if len(pair) == 2 else np.nan,
           "measured joint mean b": joint_test.mean()})

# %% [markdown] tags=["solution"]
# For two neurons the prediction and the measurement are close: the neurons sit in different
# places and mostly write into different directions, so their pushes add. That is why fifty of
# them, each chosen for a small single push towards *woman*, overshoot.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} Heads that share a value
# :label: ex-ch5-gqa
#
# *Difficulty: ★★★, about 25 minutes.*
#
# Under grouped-query attention, query head $h$ reads the values of key/value group $h \,//\, (n_\text{heads} / n_\text{kv})$. Write
# `kv_group(head, n_heads, n_kv_heads)` returning that group, check it with
# `checks.check_kv_group(kv_group)`, and use it to find, in the one-shot selection, attention
# neurons `attnL{l}H{h}D{j}` that share layer, group and dimension. For such a set, compare the
# guard perplexity change of each neuron alone with that of the set (`es.SetScorer(lm, [], guard)`
# has `ppl_ratio`).
#
# :::{admonition} Hint
# :class: dropdown
# `ne` and `es` are imported, and `sel["kv_groups"]` is the chapter's answer to compare with.
# Each key/value group serves `n_heads // n_kv_heads` query heads, so integer division gives
# the group.
# :::
# ```

# %% tags=["student", "remove-cell"]
def kv_group(head, n_heads, n_kv_heads):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch5-gqa
# :class: dropdown
# ```

# %% tags=["solution"]
def kv_group(head, n_heads, n_kv_heads):
    return head // (n_heads // n_kv_heads)


checks.check_kv_group(kv_group)
sel["kv_groups"]

# %% [markdown] tags=["solution"]
# Heads reading the same value dimension of one key/value group carry copies of the same
# information, so removing one can cost little while removing all of them costs much more (or,
# as the table may show, the costs need not add at all). A guard must judge the set, as the
# chapter's does.
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise} How much of the bias went away?
# :label: ex-ch5-reduction
#
# *Difficulty: ★☆☆, about 10 minutes.*
#
# A change in a bias metric is easiest to read as the share of the distance to the ideal value that was removed:
# $1 - |\text{after} - \text{ideal}| / |\text{before} - \text{ideal}|$ (1 = all bias removed,
# 0 = no change, negative = worse). Write `relative_reduction(before, after, ideal=0.0)`, check
# it with `checks.check_relative_reduction(relative_reduction)`, and compute it for the chosen
# edit and for the best random draw matched to it.
#
# :::{admonition} Hint
# :class: dropdown
# The table `table` has `mean_abs_b` (before and after the edit), and `controls` holds the
# random draws, with the change `d_mean_abs_b` of each; keep the draws whose `control_for` is
# the chosen edit.
# :::
# ```

# %% tags=["student", "remove-cell"]
def relative_reduction(before, after, ideal=0.0):
    ...  # your code here


# %% [markdown] tags=["solution"]
# ```{solution-start} ex-ch5-reduction
# :class: dropdown
# ```

# %% tags=["solution"]
def relative_reduction(before, after, ideal=0.0):
    return 1 - abs(after - ideal) / abs(before - ideal)


checks.check_relative_reduction(relative_reduction)
mine = controls[controls.control_for == main] if main else controls.iloc[:0]
pd.Series({"chosen edit": relative_reduction(orig.mean_abs_b, ed.mean_abs_b),
           "best matched random draw": (max(relative_reduction(orig.mean_abs_b, orig.mean_abs_b + d)
                                            for d in mine.d_mean_abs_b) if len(mine) else np.nan)})

# %% [markdown] tags=["solution"]
# Put the edit beside the best random draw of its own size and make-up before reading anything
# into its number: a reduction that a random draw also reaches is not evidence for the
# selection method.
# ```{solution-end}
# ```

# %% tags=["remove-cell"]
results.add("ks", ks)
results.save()
